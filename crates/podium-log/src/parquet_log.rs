//! A Parquet log written by a thread of its own: callers queue rows without waiting, and a full
//! queue drops them (counted) rather than slow a request down.

use crate::{DecisionRecord, DecisionSink};
use podium_features::offline::{LogRecord, OfflineError, RollPolicy, RollingWriter};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

/// Batches of rows queued before further ones are dropped.
const QUEUE: usize = 8_192;

/// Rows to write, built on the writer thread so that callers on the request path only queue.
type MakeRows<R> = Box<dyn FnOnce() -> Vec<R> + Send>;

enum Message<R> {
    Rows(MakeRows<R>),
    Flush(std::sync::mpsc::Sender<()>),
}

/// A rolling Parquet log directory (`podium_features::offline::RollingWriter`) fed through a
/// bounded queue. Files close by the roll policy, on [`flush`](Self::flush), and when the last
/// handle is dropped.
pub struct ParquetLog<R: LogRecord + Send + 'static> {
    tx: SyncSender<Message<R>>,
    dropped: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    written: Arc<AtomicU64>,
}

impl<R: LogRecord + Send + 'static> ParquetLog<R> {
    /// Starts the writer thread over `dir` (created if missing), files named `<prefix>-….parquet`.
    pub fn start(dir: &Path, prefix: &str, policy: RollPolicy) -> Result<Self, OfflineError> {
        let mut writer = RollingWriter::<R>::create(dir, prefix, policy)?;
        let (tx, rx) = sync_channel::<Message<R>>(QUEUE);
        let failed = Arc::new(AtomicU64::new(0));
        let written = Arc::new(AtomicU64::new(0));
        let (fails, count) = (failed.clone(), written.clone());
        std::thread::Builder::new()
            .name(format!("podium-log-{prefix}"))
            .spawn(move || {
                let fail = |r: Result<(), OfflineError>| {
                    if let Err(e) = r {
                        fails.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(error = %e, "log write failed");
                    }
                };
                loop {
                    match rx.recv_timeout(Duration::from_secs(1)) {
                        Ok(Message::Rows(make)) => {
                            let rows = make();
                            let n = rows.len() as u64;
                            fail(writer.extend(rows));
                            count.fetch_add(n, Ordering::Relaxed);
                        }
                        Ok(Message::Flush(done)) => {
                            fail(writer.roll().map(|_| ()));
                            let _ = done.send(());
                        }
                        Err(RecvTimeoutError::Timeout) => fail(writer.roll_if_due().map(|_| ())),
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
                fail(writer.finish());
            })
            .map_err(|e| OfflineError::Io {
                path: dir.to_path_buf(),
                action: "start the writer thread for",
                source: e,
            })?;
        Ok(Self {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
            failed,
            written,
        })
    }

    /// Queues rows; never blocks. A full queue drops them and counts it.
    pub fn submit(&self, rows: Vec<R>) {
        if !rows.is_empty() {
            self.submit_with(move || rows);
        }
    }

    /// Queues the making of rows: `make` runs on the writer thread, so the caller pays for one
    /// queued closure, not for building the rows. A full queue drops it and counts it (as one).
    pub fn submit_with(&self, make: impl FnOnce() -> Vec<R> + Send + 'static) {
        if let Err(TrySendError::Full(_)) = self.tx.try_send(Message::Rows(Box::new(make))) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Closes the current file so that everything queued so far is readable; waits for it (at
    /// most 10 s).
    pub fn flush(&self) {
        let (done, wait) = std::sync::mpsc::channel();
        if self.tx.send(Message::Flush(done)).is_ok() {
            let _ = wait.recv_timeout(Duration::from_secs(10));
        }
    }

    /// Submissions dropped because the writer fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Failed writes.
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// Rows handed to the writer.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }
}

/// What a log sink queues for one decision: the making of its rows (run on the writer thread),
/// or nothing.
pub type RowsOf<R> = Option<Box<dyn FnOnce() -> Vec<R> + Send>>;

/// A decision sink that passes every record on to `inner` and queues rows made from it for a
/// Parquet log. A full queue drops the rows (counted), never the decision. The served-feature
/// log ([`LogSink::served_features`]) and the decision log ([`LogSink::decisions`]) are two.
pub struct LogSink<R: LogRecord + Send + 'static> {
    inner: Arc<dyn DecisionSink>,
    log: Arc<ParquetLog<R>>,
    rows: fn(&DecisionRecord) -> RowsOf<R>,
}

impl<R: LogRecord + Send + 'static> LogSink<R> {
    /// Logs into `dir` (files `<prefix>-….parquet`), rolled by `policy`, the rows `rows` makes.
    pub fn start(
        inner: Arc<dyn DecisionSink>,
        dir: &Path,
        prefix: &str,
        policy: RollPolicy,
        rows: fn(&DecisionRecord) -> RowsOf<R>,
    ) -> Result<Self, OfflineError> {
        Ok(Self {
            inner,
            log: Arc::new(ParquetLog::start(dir, prefix, policy)?),
            rows,
        })
    }

    /// The log, for flushing and its counters.
    pub fn log(&self) -> &Arc<ParquetLog<R>> {
        &self.log
    }
}

impl<R: LogRecord + Send + 'static> DecisionSink for LogSink<R> {
    fn submit(&self, record: DecisionRecord) {
        if let Some(make) = (self.rows)(&record) {
            self.log.submit_with(make);
        }
        self.inner.submit(record);
    }
}
