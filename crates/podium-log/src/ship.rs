//! Logs in object storage. The logs are written locally (a spool directory), as ever, and every
//! file once closed is uploaded under the log URL with the same relative path
//! (`decisions/decisions-….parquet`, `events/…`, `features/…`), then removed locally. An upload
//! that fails leaves the file where it is, to be tried again at the next round: no row is lost
//! while the store is away, the spool only grows. [`fetch`] brings a log back for a replay.

use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Where logs go: an object store and a prefix in it.
#[derive(Clone)]
pub struct LogStore {
    url: String,
    store: Arc<dyn ObjectStore>,
    root: Vec<String>,
}

/// Whether a log destination names object storage (`s3://…`, `file://…`) rather than a
/// local directory.
pub fn is_object_store(url: &str) -> bool {
    url.starts_with("s3://") || url.starts_with("file://")
}

impl LogStore {
    /// Opens `s3://bucket/prefix` (credentials, region and endpoint from the usual `AWS_*`
    /// environment variables) or `file:///path`.
    pub fn open(url: &str) -> Result<Self, String> {
        let (store, root): (Arc<dyn ObjectStore>, &str) =
            if let Some(rest) = url.strip_prefix("s3://") {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    return Err(format!("log URL {url}: no bucket (use s3://bucket/prefix)"));
                }
                let s3 = AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .with_retry(object_store::RetryConfig {
                        backoff: object_store::BackoffConfig {
                            init_backoff: Duration::from_millis(100),
                            max_backoff: Duration::from_secs(2),
                            base: 2.0,
                        },
                        max_retries: 3,
                        retry_timeout: Duration::from_secs(30),
                    })
                    .build()
                    .map_err(|e| format!("log URL {url}: {e}"))?;
                (Arc::new(s3), prefix)
            } else if let Some(path) = url.strip_prefix("file://") {
                std::fs::create_dir_all(path).map_err(|e| format!("log URL {url}: {e}"))?;
                let local = LocalFileSystem::new_with_prefix(path)
                    .map_err(|e| format!("log URL {url}: {e}"))?;
                (Arc::new(local), "")
            } else {
                return Err(format!(
                    "log URL {url}: unsupported; use s3://bucket/prefix or file:///path"
                ));
            };
        Ok(Self {
            url: url.to_string(),
            store,
            root: root
                .split('/')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
        })
    }

    /// The URL it was opened with.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn key(&self, rel: &Path) -> Key {
        let parts: Vec<String> = self
            .root
            .iter()
            .cloned()
            .chain(rel.iter().map(|p| p.to_string_lossy().into_owned()))
            .collect();
        Key::from_iter(parts.iter().map(String::as_str))
    }
}

/// Uploads closed log files from a spool directory, and counts what it did.
pub struct Shipper {
    store: LogStore,
    spool: PathBuf,
    /// Files uploaded and removed from the spool.
    pub shipped: AtomicU64,
    /// Uploads that failed (the file stays, and is tried again).
    pub failed: AtomicU64,
}

impl Shipper {
    /// Ships what is closed under `spool` to `store`.
    pub fn new(store: LogStore, spool: &Path) -> Self {
        Self {
            store,
            spool: spool.to_path_buf(),
            shipped: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }

    /// The closed files under the spool (`*.parquet`; `*.parquet.tmp` are still being written).
    fn closed(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut dirs = vec![self.spool.clone()];
        while let Some(d) = dirs.pop() {
            let Ok(entries) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in entries.flatten() {
                let p = e.path();
                if p.is_dir() {
                    dirs.push(p);
                } else if p.extension().is_some_and(|x| x == "parquet") {
                    out.push(p);
                }
            }
        }
        out.sort();
        out
    }

    /// One round: uploads every closed file and removes it locally once the store has it.
    /// Returns the files shipped; the first failure's message, if any, after trying them all.
    pub async fn ship_once(&self) -> Result<usize, String> {
        let mut shipped = 0;
        let mut first_error = None;
        for path in self.closed() {
            let Ok(rel) = path.strip_prefix(&self.spool) else {
                continue;
            };
            let key = self.store.key(rel);
            let result = match tokio::fs::read(&path).await {
                Ok(bytes) => self
                    .store
                    .store
                    .put(&key, PutPayload::from(bytes))
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("{}: upload to {}: {e}", path.display(), self.store.url)),
                Err(e) => Err(format!("{}: {e}", path.display())),
            };
            match result {
                Ok(()) => {
                    let _ = tokio::fs::remove_file(&path).await;
                    shipped += 1;
                    self.shipped.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    self.failed.fetch_add(1, Ordering::Relaxed);
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(shipped),
        }
    }

    /// Ships every `every` on the current runtime, for as long as the process runs.
    pub fn spawn(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = this.ship_once().await {
                    tracing::warn!(error = %e, "log upload failed; the files stay in the spool and are retried");
                }
            }
        })
    }
}

/// Downloads every log file under `url` into `dir`, keeping their relative paths (for a
/// replay). Returns the number of files.
pub async fn fetch(url: &str, dir: &Path) -> Result<usize, String> {
    use futures::TryStreamExt;
    let store = LogStore::open(url)?;
    let prefix =
        (!store.root.is_empty()).then(|| Key::from_iter(store.root.iter().map(String::as_str)));
    let metas: Vec<object_store::ObjectMeta> = store
        .store
        .list(prefix.as_ref())
        .try_collect()
        .await
        .map_err(|e| format!("listing {url}: {e}"))?;
    let mut n = 0;
    for meta in metas {
        let parts: Vec<String> = meta
            .location
            .parts()
            .map(|p| p.as_ref().to_string())
            .collect();
        let rel: PathBuf = parts.iter().skip(store.root.len()).collect();
        if rel.extension().is_none_or(|x| x != "parquet") {
            continue;
        }
        let bytes = store
            .store
            .get(&meta.location)
            .await
            .map_err(|e| format!("{url}: {}: {e}", meta.location))?
            .bytes()
            .await
            .map_err(|e| format!("{url}: {}: {e}", meta.location))?;
        let dest = dir.join(&rel);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        std::fs::write(&dest, &bytes).map_err(|e| format!("{}: {e}", dest.display()))?;
        n += 1;
    }
    Ok(n)
}
