//! Publishing events into NATS JetStream, with a disk spool for when NATS is away.
//!
//! A fleet's servers take tracking pixels and posted events and publish them to the stream that
//! every server consumes. [`Publisher::publish`] returns once each event is either acknowledged
//! by JetStream or appended (and synced) to the spool file, so an accepted event is never only
//! in memory. While the spool holds anything, new events go behind it, keeping their order, and
//! a background task drains it oldest first once NATS answers again.
//!
//! Every message carries `Nats-Msg-Id` = the event's id, so a message published twice (a lost
//! acknowledgement, a spool batch re-sent after a crash) is stored once within the stream's
//! duplicate window; past it, consumers drop the repeat by the same id (the aggregator's dedupe
//! memory), and frequency caps and spend are idempotent by event id. None is lost, none counts
//! twice.

use crate::stream::{ensure_stream, NatsConfig};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;

/// Longest wait for JetStream's acknowledgement before an event goes to the spool instead.
const ACK_TIMEOUT: Duration = Duration::from_secs(2);

/// Events sent per batch when the spool drains.
const DRAIN_BATCH: usize = 512;

/// Counters of a publisher.
#[derive(Debug, Default)]
pub struct PublishStats {
    /// Events acknowledged by JetStream (directly or from the spool).
    pub published: AtomicU64,
    /// Events written to the spool because NATS did not acknowledge them in time.
    pub spooled: AtomicU64,
    /// Spooled events since delivered from the spool.
    pub drained: AtomicU64,
    /// Failed publish attempts (each failed event counted once per attempt).
    pub errors: AtomicU64,
}

struct Spool {
    file: std::fs::File,
    offset_path: PathBuf,
    /// Bytes of the file already delivered.
    offset: u64,
    len: u64,
}

impl Spool {
    fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("events.spool");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)?;
        let len = file.metadata()?.len();
        let offset_path = dir.join("events.spool.offset");
        let offset = std::fs::read_to_string(&offset_path)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0);
        // An offset past the end (a torn write of the spool) restarts at 0: a repeat is
        // harmless (deduplicated by id), a loss is not.
        let offset = if offset > len { 0 } else { offset };
        Ok(Self {
            file,
            offset_path,
            offset,
            len,
        })
    }

    fn pending(&self) -> u64 {
        self.len - self.offset
    }

    fn append(&mut self, events: &[Vec<u8>]) -> std::io::Result<()> {
        let mut buf = Vec::with_capacity(events.iter().map(|e| e.len() + 1).sum());
        for e in events {
            buf.extend_from_slice(e);
            buf.push(b'\n');
        }
        self.file.write_all(&buf)?;
        self.file.sync_data()?;
        self.len += buf.len() as u64;
        Ok(())
    }

    /// Up to `n` events from the offset, with the offset after them.
    fn read(&mut self, n: usize) -> std::io::Result<(Vec<Vec<u8>>, u64)> {
        let mut f = self.file.try_clone()?;
        f.seek(SeekFrom::Start(self.offset))?;
        let mut buf = Vec::new();
        f.take((self.len - self.offset).min(16 * 1024 * 1024))
            .read_to_end(&mut buf)?;
        let mut events = Vec::new();
        let mut used = 0usize;
        for line in buf.split_inclusive(|&b| b == b'\n') {
            if events.len() == n || !line.ends_with(b"\n") {
                break;
            }
            used += line.len();
            let body = &line[..line.len() - 1];
            if !body.is_empty() {
                events.push(body.to_vec());
            }
        }
        Ok((events, self.offset + used as u64))
    }

    fn advance(&mut self, to: u64) -> std::io::Result<()> {
        self.offset = to;
        if self.offset == self.len {
            // Everything delivered: start the file over.
            self.file.set_len(0)?;
            self.len = 0;
            self.offset = 0;
        }
        let tmp = self.offset_path.with_extension("tmp");
        std::fs::write(&tmp, self.offset.to_string())?;
        std::fs::rename(&tmp, &self.offset_path)
    }
}

/// Publishes events to JetStream, spooling to disk what NATS does not take.
pub struct Publisher {
    cfg: NatsConfig,
    js: Mutex<Option<async_nats::jetstream::Context>>,
    spool: Mutex<Spool>,
    /// Set after a failure: new events go to the spool until it has drained.
    behind: AtomicBool,
    stats: PublishStats,
}

impl Publisher {
    /// Opens the spool under `spool_dir` and starts the task that drains it; NATS need not be
    /// up yet.
    pub fn start(cfg: NatsConfig, spool_dir: &Path) -> std::io::Result<Arc<Self>> {
        let spool = Spool::open(spool_dir)?;
        let behind = spool.pending() > 0;
        let publisher = Arc::new(Self {
            cfg,
            js: Mutex::new(None),
            spool: Mutex::new(spool),
            behind: AtomicBool::new(behind),
            stats: PublishStats::default(),
        });
        let weak = Arc::downgrade(&publisher);
        tokio::spawn(async move {
            let mut pause = Duration::from_millis(100);
            loop {
                tokio::time::sleep(pause).await;
                let Some(p) = weak.upgrade() else { return };
                pause = match p.drain_once().await {
                    Ok(true) => Duration::from_millis(1),
                    Ok(false) => Duration::from_millis(100),
                    Err(e) => {
                        tracing::warn!(error = %e, "event spool: NATS not reachable; retrying");
                        (pause * 2).clamp(Duration::from_millis(200), Duration::from_secs(2))
                    }
                };
            }
        });
        Ok(publisher)
    }

    /// The publisher's counters.
    pub fn stats(&self) -> &PublishStats {
        &self.stats
    }

    /// Bytes in the spool not yet delivered.
    pub async fn spool_pending_bytes(&self) -> u64 {
        self.spool.lock().await.pending()
    }

    /// Publishes `events` (each one JSON object); returns once each is acknowledged by JetStream
    /// or synced to the spool. Fails only when the spool cannot be written.
    pub async fn publish(&self, events: Vec<Vec<u8>>) -> std::io::Result<()> {
        let events: Vec<Vec<u8>> = events.into_iter().map(one_line).collect();
        if !self.behind.load(Ordering::Acquire) {
            let failed = match self.context().await {
                Ok(js) => self.send(&js, &events).await,
                Err(_) => (0..events.len()).collect(),
            };
            if failed.is_empty() {
                return Ok(());
            }
            self.behind.store(true, Ordering::Release);
            let left: Vec<Vec<u8>> = failed.into_iter().map(|i| events[i].clone()).collect();
            return self.to_spool(&left).await;
        }
        self.to_spool(&events).await
    }

    async fn to_spool(&self, events: &[Vec<u8>]) -> std::io::Result<()> {
        self.spool.lock().await.append(events)?;
        self.stats
            .spooled
            .fetch_add(events.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    async fn context(&self) -> Result<async_nats::jetstream::Context, String> {
        let mut slot = self.js.lock().await;
        if let Some(js) = &*slot {
            return Ok(js.clone());
        }
        let client = tokio::time::timeout(
            Duration::from_secs(1),
            async_nats::ConnectOptions::new()
                .connection_timeout(Duration::from_secs(1))
                .connect(&self.cfg.url),
        )
        .await
        .map_err(|_| format!("connecting to {}: timed out", self.cfg.url))?
        .map_err(|e| format!("connecting to {}: {e}", self.cfg.url))?;
        let mut js = async_nats::jetstream::new(client);
        js.set_timeout(ACK_TIMEOUT);
        ensure_stream(&js, &self.cfg)
            .await
            .map_err(|e| e.to_string())?;
        *slot = Some(js.clone());
        Ok(js)
    }

    /// Sends `events` and waits for their acknowledgements; the indices of those not taken.
    async fn send(&self, js: &async_nats::jetstream::Context, events: &[Vec<u8>]) -> Vec<usize> {
        let mut acks = Vec::with_capacity(events.len());
        let mut failed = Vec::new();
        for (i, e) in events.iter().enumerate() {
            let mut publish =
                async_nats::jetstream::context::Publish::build().payload(e.clone().into());
            if let Some(id) = event_id(e) {
                publish = publish.message_id(id);
            }
            match js.send_publish(self.cfg.subject.clone(), publish).await {
                Ok(ack) => acks.push((i, ack)),
                Err(_) => failed.push(i),
            }
        }
        for (i, ack) in acks {
            match tokio::time::timeout(ACK_TIMEOUT, std::future::IntoFuture::into_future(ack)).await
            {
                Ok(Ok(_)) => {
                    self.stats.published.fetch_add(1, Ordering::Relaxed);
                }
                _ => failed.push(i),
            }
        }
        if !failed.is_empty() {
            self.stats
                .errors
                .fetch_add(failed.len() as u64, Ordering::Relaxed);
            failed.sort_unstable();
        }
        failed
    }

    /// Delivers one batch from the spool; whether there may be more.
    async fn drain_once(&self) -> Result<bool, String> {
        let (events, next) = {
            let mut spool = self.spool.lock().await;
            if spool.pending() == 0 {
                self.behind.store(false, Ordering::Release);
                return Ok(false);
            }
            spool.read(DRAIN_BATCH).map_err(|e| e.to_string())?
        };
        let js = match self.context().await {
            Ok(js) => js,
            Err(e) => return Err(e),
        };
        let failed = self.send(&js, &events).await;
        if !failed.is_empty() {
            // The connection may be stale: reconnect next time, and re-send the whole batch
            // (repeats are dropped by id).
            *self.js.lock().await = None;
            return Err(format!(
                "{} of {} spooled events not acknowledged",
                failed.len(),
                events.len()
            ));
        }
        self.stats
            .drained
            .fetch_add(events.len() as u64, Ordering::Relaxed);
        let mut spool = self.spool.lock().await;
        spool.advance(next).map_err(|e| e.to_string())?;
        let more = spool.pending() > 0;
        if !more {
            self.behind.store(false, Ordering::Release);
            tracing::info!("event spool drained into NATS");
        }
        Ok(more)
    }
}

/// The event's `id`, its message id in JetStream.
fn event_id(event: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Id {
        id: Option<String>,
    }
    serde_json::from_slice::<Id>(event)
        .ok()
        .and_then(|i| i.id)
        .filter(|id| !id.is_empty())
}

/// The event on one line (the spool's framing), re-serialized only if it spans several.
fn one_line(event: Vec<u8>) -> Vec<u8> {
    if !event.contains(&b'\n') {
        return event;
    }
    serde_json::from_slice::<serde_json::Value>(&event)
        .ok()
        .and_then(|v| serde_json::to_vec(&v).ok())
        .unwrap_or_else(|| {
            event
                .into_iter()
                .map(|b| if b == b'\n' { b' ' } else { b })
                .collect()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spool_hands_out_events_in_order_and_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path()).unwrap();
        let events: Vec<Vec<u8>> = (0..5)
            .map(|i| format!("{{\"id\":\"e{i}\"}}").into())
            .collect();
        s.append(&events).unwrap();
        let (first, next) = s.read(2).unwrap();
        assert_eq!(first, events[..2]);
        s.advance(next).unwrap();
        drop(s);
        // A restart resumes after what was delivered.
        let mut s = Spool::open(dir.path()).unwrap();
        let (rest, next) = s.read(10).unwrap();
        assert_eq!(rest, events[2..]);
        s.advance(next).unwrap();
        assert_eq!(s.pending(), 0);
        assert_eq!(
            std::fs::metadata(dir.path().join("events.spool"))
                .unwrap()
                .len(),
            0
        );
    }

    #[test]
    fn a_torn_last_line_waits_and_multi_line_events_are_flattened() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path()).unwrap();
        s.append(&[b"{\"id\":\"a\"}".to_vec()]).unwrap();
        s.file.write_all(b"{\"id\":\"b").unwrap();
        s.len += 8;
        let (events, _) = s.read(10).unwrap();
        assert_eq!(events, vec![b"{\"id\":\"a\"}".to_vec()]);
        assert_eq!(
            one_line(b"{\"id\":\n\"c\"}".to_vec()),
            b"{\"id\":\"c\"}".to_vec()
        );
        assert_eq!(
            event_id(b"{\"id\":\"c\",\"type\":\"click\"}").as_deref(),
            Some("c")
        );
        assert_eq!(event_id(b"not json"), None);
    }
}
