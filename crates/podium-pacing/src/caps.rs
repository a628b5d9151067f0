//! Frequency caps: how often each viewer has seen a line item, its campaign and its advertiser.
//!
//! Impressions arrive from the event path (after deduplication by event id), are kept per viewer
//! as (key, time) pairs over the longest cap window, and are counted per request against each
//! candidate's caps. One read per request fetches a viewer's whole history, whatever the number
//! of capped candidates.

use dashmap::DashMap;

/// Most impressions remembered per viewer; a viewer past it forgets the oldest first.
pub const MAX_HISTORY: usize = 2048;

/// A frequency-cap counter key: a scope tag and an id, hashed (FNV-1a, stable across processes).
pub fn cap_key(scope: &str, id: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in scope.bytes().chain([0xff]).chain(id.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Where viewers' impressions are counted. The embedded store is in memory; the Redis one is
/// shared by a fleet.
#[async_trait::async_trait]
pub trait FrequencyStore: Send + Sync {
    /// Records one impression of `user` under each of `keys` at `ts_ms`. `event_id` names the
    /// impression, so that a shared store counts it once however many servers record it. Never
    /// blocks: a remote store writes behind.
    fn record(&self, user: &str, keys: &[u64], ts_ms: i64, event_id: &str);

    /// The viewer's remembered impressions, (key, time), oldest first; an error when the store
    /// cannot be read (the caller then treats every capped line item as capped).
    async fn history(&self, user: &str) -> Result<Vec<(u64, i64)>, String>;

    /// Where the counts live, for status pages: `memory` or `redis`.
    fn backend(&self) -> &'static str {
        "memory"
    }

    /// Impressions recorded but not yet written to the store (a remote store writes behind).
    fn pending_writes(&self) -> u64 {
        0
    }
}

/// The embedded frequency store: a concurrent map of viewer → recent impressions.
pub struct MemoryFrequencyStore {
    horizon_ms: i64,
    users: DashMap<String, Vec<(u64, i64)>>,
}

impl MemoryFrequencyStore {
    /// A store that forgets impressions older than `horizon_ms` (the longest cap window).
    pub fn new(horizon_ms: i64) -> Self {
        Self {
            horizon_ms,
            users: DashMap::new(),
        }
    }

    /// Viewers with remembered impressions.
    pub fn users(&self) -> usize {
        self.users.len()
    }
}

#[async_trait::async_trait]
impl FrequencyStore for MemoryFrequencyStore {
    fn record(&self, user: &str, keys: &[u64], ts_ms: i64, _event_id: &str) {
        let mut h = self.users.entry(user.to_string()).or_default();
        // Events arrive nearly in order; insert keeps the list sorted by time when they do not.
        let at = h.partition_point(|&(_, t)| t <= ts_ms);
        h.splice(at..at, keys.iter().map(|&k| (k, ts_ms)));
        let newest = h.last().map_or(ts_ms, |&(_, t)| t);
        let keep_from = h.partition_point(|&(_, t)| t < newest - self.horizon_ms);
        let over = h.len().saturating_sub(MAX_HISTORY);
        h.drain(..keep_from.max(over));
    }

    async fn history(&self, user: &str) -> Result<Vec<(u64, i64)>, String> {
        Ok(self.history_now(user))
    }
}

impl MemoryFrequencyStore {
    /// A viewer's impressions, without the async wrapper.
    pub fn history_now(&self, user: &str) -> Vec<(u64, i64)> {
        self.users.get(user).map_or_else(Vec::new, |h| h.clone())
    }
}

/// Frequency caps in Redis, shared by a fleet: one sorted set per viewer,
/// `podium:caps:{<user>}`, whose members are `<key>:<event id>` scored by time. Adding the same
/// impression twice (every server of a fleet records what the event stream carries) leaves one
/// member, so each impression counts once. Writes go behind through a bounded queue drained by
/// one task in pipelines; while Redis is down they wait in the queue and are retried, and past
/// the queue's size the newest are dropped (and counted).
pub struct RedisFrequencyStore {
    conn: redis::aio::ConnectionManager,
    horizon_ms: i64,
    deadline: std::time::Duration,
    writes: tokio::sync::mpsc::Sender<(String, Vec<u64>, i64, String)>,
    dropped: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Impressions queued and impressions written, for [`FrequencyStore::pending_writes`].
    queued: std::sync::atomic::AtomicU64,
    written: std::sync::Arc<std::sync::atomic::AtomicU64>,
    shown: String,
}

impl RedisFrequencyStore {
    /// Connects to `redis://host:port[/db]`; impressions older than `horizon_ms` are forgotten.
    /// Starts the write-behind task on the current tokio runtime.
    pub async fn connect(url: &str, horizon_ms: i64) -> Result<Self, String> {
        let timeout = std::time::Duration::from_millis(250);
        let (conn, shown) = crate::ledger::connect_manager(url, timeout, timeout).await?;
        let (writes, rx) = tokio::sync::mpsc::channel(100_000);
        let dropped = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let written = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        tokio::spawn(write_behind(
            conn.clone(),
            rx,
            horizon_ms,
            shown.clone(),
            written.clone(),
        ));
        Ok(Self {
            conn,
            horizon_ms,
            deadline: std::time::Duration::from_millis(250),
            writes,
            dropped,
            queued: std::sync::atomic::AtomicU64::new(0),
            written,
            shown,
        })
    }

    /// Impressions dropped because the write queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn key(user: &str) -> String {
        format!("podium:caps:{{{user}}}")
    }
}

/// Drains the write queue into Redis, a pipeline per batch; a failed batch is retried (after a
/// pause) until it lands, so an outage delays impressions rather than losing them.
async fn write_behind(
    mut conn: redis::aio::ConnectionManager,
    mut rx: tokio::sync::mpsc::Receiver<(String, Vec<u64>, i64, String)>,
    horizon_ms: i64,
    shown: String,
    written: std::sync::Arc<std::sync::atomic::AtomicU64>,
) {
    let mut batch = Vec::with_capacity(256);
    while rx.recv_many(&mut batch, 256).await > 0 {
        let mut pipe = redis::pipe();
        for (user, keys, ts_ms, event_id) in &batch {
            let key = RedisFrequencyStore::key(user);
            for k in keys {
                pipe.zadd(&key, format!("{k:016x}:{event_id}"), *ts_ms)
                    .ignore();
            }
            pipe.cmd("ZREMRANGEBYSCORE")
                .arg(&key)
                .arg("-inf")
                .arg(format!("({}", ts_ms - horizon_ms))
                .ignore();
            pipe.cmd("ZREMRANGEBYRANK")
                .arg(&key)
                .arg(0)
                .arg(-(MAX_HISTORY as i64) - 1)
                .ignore();
            pipe.cmd("PEXPIRE")
                .arg(&key)
                .arg(horizon_ms.max(1))
                .ignore();
        }
        let mut pause = std::time::Duration::from_millis(50);
        loop {
            let sent = tokio::time::timeout(
                std::time::Duration::from_secs(1),
                pipe.query_async::<()>(&mut conn),
            )
            .await;
            match sent {
                Ok(Ok(())) => break,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, redis = %shown, pending = batch.len(), "frequency caps: write failed; retrying")
                }
                Err(_) => {
                    tracing::warn!(redis = %shown, pending = batch.len(), "frequency caps: write timed out; retrying")
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(std::time::Duration::from_secs(2));
        }
        written.fetch_add(batch.len() as u64, std::sync::atomic::Ordering::Release);
        batch.clear();
    }
}

#[async_trait::async_trait]
impl FrequencyStore for RedisFrequencyStore {
    fn record(&self, user: &str, keys: &[u64], ts_ms: i64, event_id: &str) {
        if keys.is_empty() {
            return;
        }
        let item = (user.to_string(), keys.to_vec(), ts_ms, event_id.to_string());
        match self.writes.try_send(item) {
            Ok(()) => {
                self.queued
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Err(_) => {
                self.dropped
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }

    fn backend(&self) -> &'static str {
        "redis"
    }

    fn pending_writes(&self) -> u64 {
        let written = self.written.load(std::sync::atomic::Ordering::Acquire);
        self.queued
            .load(std::sync::atomic::Ordering::Relaxed)
            .saturating_sub(written)
    }

    async fn history(&self, user: &str) -> Result<Vec<(u64, i64)>, String> {
        let mut conn = self.conn.clone();
        let read = redis::cmd("ZRANGE")
            .arg(Self::key(user))
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .to_owned();
        let got = tokio::time::timeout(self.deadline, async move {
            read.query_async::<Vec<(String, i64)>>(&mut conn).await
        })
        .await
        .map_err(|_| {
            format!(
                "frequency caps on {}: no answer within {:?}",
                self.shown, self.deadline
            )
        })?
        .map_err(|e| format!("frequency caps on {}: {e}", self.shown))?;
        let newest = got.last().map_or(0, |(_, t)| *t);
        Ok(got
            .into_iter()
            .filter(|(_, t)| *t >= newest - self.horizon_ms)
            .filter_map(|(member, t)| {
                let hex = member.split(':').next()?;
                u64::from_str_radix(hex, 16).ok().map(|k| (k, t))
            })
            .collect())
    }
}

/// Impressions under `key` at or after `since_ms` in a viewer's history.
pub fn count_since(history: &[(u64, i64)], key: u64, since_ms: i64) -> u32 {
    let from = history.partition_point(|&(_, t)| t < since_ms);
    history[from..].iter().filter(|&&(k, _)| k == key).count() as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_within_the_window_and_forgets_past_the_horizon() {
        let s = MemoryFrequencyStore::new(86_400_000);
        let li = cap_key("line_item", "li-1");
        let adv = cap_key("advertiser", "adv-1");
        assert_ne!(li, cap_key("advertiser", "li-1"), "scopes do not collide");
        s.record("u1", &[li, adv], 1_000, "e1");
        s.record("u1", &[li, adv], 5_000, "e2");
        // Out of order: still counted at its own time.
        s.record("u1", &[adv], 3_000, "e3");
        let h = s.history_now("u1");
        assert_eq!(count_since(&h, li, 0), 2);
        assert_eq!(count_since(&h, adv, 0), 3);
        assert_eq!(count_since(&h, adv, 2_000), 2);
        assert!(s.history_now("u2").is_empty());
        // A day later the first three are past the horizon.
        s.record("u1", &[li], 86_400_000 + 4_000, "e4");
        let h = s.history_now("u1");
        assert_eq!(count_since(&h, adv, 0), 1);
        assert_eq!(count_since(&h, li, 0), 2);
    }
}
