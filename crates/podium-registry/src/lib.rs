//! Podium's model registry: published model bundles and their serving stages on object storage
//! (a local directory or S3). Layout and rules: `docs/registry.md`.
//!
//! Publishing uploads a validated bundle, then writes `PUBLISHED.json` with a create-only put, so
//! a version is either complete or invisible. Stage changes are create-only history entries; the
//! current stages are their fold, so there is no mutable state file to lose an update to. This
//! crate does not load models for serving or watch for changes; callers poll [`Registry::stages`].

mod error;
mod history;

pub use error::RegistryError;
pub use history::{Action, HistoryEntry, Share, Stage, Stages};

use futures::stream::{StreamExt, TryStreamExt};
use history::{check_promote, fold, plan_rollback};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as Key;
use object_store::{ClientConfigKey, ObjectStore, ObjectStoreExt, PutMode, PutPayload};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Name of the marker that makes a version published.
pub const PUBLISHED_FILE: &str = "PUBLISHED.json";

/// How many times an append re-reads the history after losing a race for a sequence number.
const APPEND_ATTEMPTS: usize = 64;

/// A handle on one registry. Cheap to clone; clones share the store client and the cache of
/// history entries (which never change once written).
#[derive(Clone, Debug)]
pub struct Registry {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    url: String,
    store: Arc<dyn ObjectStore>,
    /// Key prefix under which `models/` lives (empty for a local directory: the store is rooted).
    root: Vec<String>,
    /// History entries already read, by key; entries are create-only so never stale.
    entries: Mutex<HashMap<String, HistoryEntry>>,
}

/// What [`Registry::publish`] uploaded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    /// Model name (from `model.toml`).
    pub name: String,
    /// Version (from `model.toml`).
    pub version: String,
    /// Files uploaded, `PUBLISHED.json` not counted.
    pub files: usize,
    /// Bytes uploaded, `PUBLISHED.json` not counted.
    pub bytes: u64,
}

/// One model as [`Registry::list`] sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// Model name.
    pub name: String,
    /// Published versions, numeric order where they are numbers, else lexical.
    pub versions: Vec<String>,
    /// Current stages.
    pub stages: Stages,
}

/// `PUBLISHED.json`: the version's file list, written last.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Marker {
    name: String,
    version: String,
    published_at: String,
    by: String,
    files: Vec<FileEntry>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct FileEntry {
    /// Relative path inside the bundle, `/`-separated.
    path: String,
    sha256: String,
    bytes: u64,
}

/// Orders versions numerically when both parse as numbers, else lexically (numbers first).
pub fn compare_versions(a: &str, b: &str) -> std::cmp::Ordering {
    match (a.parse::<f64>(), b.parse::<f64>()) {
        (Ok(x), Ok(y)) => x.total_cmp(&y).then_with(|| a.cmp(b)),
        (Ok(_), Err(_)) => std::cmp::Ordering::Less,
        (Err(_), Ok(_)) => std::cmp::Ordering::Greater,
        (Err(_), Err(_)) => a.cmp(b),
    }
}

/// Names and versions become key segments and cache directories, so they are kept to a safe set.
fn check_segment(what: &str, s: &str) -> Result<(), RegistryError> {
    let ok = !s.is_empty()
        && s != "."
        && s != ".."
        && s.len() <= 128
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(RegistryError::BadRequest(format!(
            "{what} {s:?} is not valid: use 1 to 128 of A-Z a-z 0-9 . _ -"
        )))
    }
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl Registry {
    /// Opens a registry: `file:///abs/path` (directory created if missing), a plain path, or
    /// `s3://bucket/prefix` (credentials, region and endpoint from the usual `AWS_*` variables,
    /// including `AWS_ENDPOINT_URL` and `AWS_ALLOW_HTTP` for S3-compatible servers).
    pub fn open(url: &str) -> Result<Registry, RegistryError> {
        let url = url.trim();
        if url.is_empty() {
            return Err(RegistryError::BadRequest("registry URL is empty".into()));
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            return Self::open_s3(url, rest);
        }
        let path = if url.starts_with("file:") {
            let parsed = url::Url::parse(url)
                .map_err(|e| RegistryError::BadRequest(format!("registry URL {url}: {e}")))?;
            parsed.to_file_path().map_err(|()| {
                RegistryError::BadRequest(format!(
                    "registry URL {url}: not an absolute local path (use file:///abs/path)"
                ))
            })?
        } else if url.contains("://") {
            return Err(RegistryError::BadRequest(format!(
                "registry URL {url}: unsupported scheme; use file:///path, a path, or s3://bucket/prefix"
            )));
        } else {
            std::path::absolute(url)
                .map_err(|e| RegistryError::BadRequest(format!("registry path {url}: {e}")))?
        };
        let display = url::Url::from_file_path(&path)
            .map(String::from)
            .unwrap_or_else(|()| url.to_string());
        let unreachable = |e: &dyn std::fmt::Display| RegistryError::Unreachable {
            url: display.clone(),
            message: e.to_string(),
        };
        std::fs::create_dir_all(&path)
            .map_err(|e| unreachable(&format!("{}: {e}", path.display())))?;
        let store = LocalFileSystem::new_with_prefix(&path).map_err(|e| unreachable(&e))?;
        Ok(Self::with_store(display, Arc::new(store), Vec::new()))
    }

    fn open_s3(url: &str, rest: &str) -> Result<Registry, RegistryError> {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(RegistryError::BadRequest(format!(
                "registry URL {url}: no bucket (use s3://bucket/prefix)"
            )));
        }
        let root: Vec<String> = prefix
            .split('/')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        // Short connect timeout and few retries: a registry that is down should be reported in
        // seconds, since callers (serving, CLI) keep going with what they have.
        let store = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_config(
                object_store::aws::AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout),
                "3s",
            )
            .with_config(
                object_store::aws::AmazonS3ConfigKey::Client(ClientConfigKey::Timeout),
                "120s",
            )
            .with_retry(object_store::RetryConfig {
                backoff: object_store::BackoffConfig {
                    init_backoff: Duration::from_millis(100),
                    max_backoff: Duration::from_secs(1),
                    base: 2.0,
                },
                max_retries: 2,
                retry_timeout: Duration::from_secs(10),
            })
            .build()
            .map_err(|e| RegistryError::BadRequest(format!("registry URL {url}: {e}")))?;
        let display = format!("s3://{bucket}/{}", root.join("/"));
        Ok(Self::with_store(display, Arc::new(store), root))
    }

    fn with_store(url: String, store: Arc<dyn ObjectStore>, root: Vec<String>) -> Registry {
        Registry {
            inner: Arc::new(Inner {
                url,
                store,
                root,
                entries: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The registry's URL (a plain path is shown as `file:///abs/path`).
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    fn key(&self, rest: &[&str]) -> Key {
        Key::from_iter(
            self.inner
                .root
                .iter()
                .map(String::as_str)
                .chain(rest.iter().copied())
                .flat_map(|s| s.split('/'))
                .filter(|s| !s.is_empty()),
        )
    }

    fn unreachable(&self, e: impl std::fmt::Display) -> RegistryError {
        RegistryError::Unreachable {
            url: self.inner.url.clone(),
            message: e.to_string(),
        }
    }

    fn corrupt(&self, key: &Key, e: impl std::fmt::Display) -> RegistryError {
        RegistryError::Corrupt {
            url: self.inner.url.clone(),
            path: key.to_string(),
            message: e.to_string(),
        }
    }

    /// The object at `key`, or `None` when there is none.
    async fn get_opt(&self, key: &Key) -> Result<Option<bytes::Bytes>, RegistryError> {
        match self.inner.store.get(key).await {
            Ok(r) => Ok(Some(r.bytes().await.map_err(|e| self.unreachable(e))?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.unreachable(e)),
        }
    }

    /// Immediate child "directories" of `rest`.
    async fn children(&self, rest: &[&str]) -> Result<Vec<String>, RegistryError> {
        let prefix = self.key(rest);
        let listed = self
            .inner
            .store
            .list_with_delimiter(Some(&prefix))
            .await
            .map_err(|e| self.unreachable(e))?;
        Ok(listed
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .collect())
    }

    async fn marker(&self, name: &str, version: &str) -> Result<Option<Marker>, RegistryError> {
        let key = self.key(&["models", name, "versions", version, PUBLISHED_FILE]);
        match self.get_opt(&key).await? {
            Some(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| self.corrupt(&key, e)),
            None => Ok(None),
        }
    }

    /// Validates the bundle first (refuses an invalid one, naming the problem), then uploads it;
    /// refuses to overwrite a published version.
    pub async fn publish(&self, bundle_dir: &Path, by: &str) -> Result<Published, RegistryError> {
        let dir = bundle_dir.to_path_buf();
        let invalid = |message: String| RegistryError::InvalidBundle {
            dir: bundle_dir.to_path_buf(),
            message,
        };
        // Validation scores golden rows and times batches: CPU work, off the async threads.
        let (name, version) = tokio::task::spawn_blocking(move || {
            podium_model::package::validate(&dir).map(|r| {
                let m = r.model.manifest();
                (m.name.clone(), m.version.clone())
            })
        })
        .await
        .map_err(|e| invalid(format!("validation did not finish: {e}")))?
        .map_err(|e| invalid(e.to_string()))?;
        check_segment("model name", &name).map_err(|e| invalid(format!("model.toml: {e}")))?;
        check_segment("version", &version).map_err(|e| invalid(format!("model.toml: {e}")))?;
        if self.marker(&name, &version).await?.is_some() {
            return Err(self.already_published(&name, &version));
        }
        let files = bundle_files(bundle_dir).map_err(invalid)?;
        let mut entries = Vec::with_capacity(files.len());
        let mut bytes = 0u64;
        for rel in &files {
            let local = bundle_dir.join(rel);
            let data = tokio::fs::read(&local)
                .await
                .map_err(|e| invalid(format!("{}: {e}", local.display())))?;
            let entry = FileEntry {
                path: rel.clone(),
                sha256: sha256_hex(&data),
                bytes: data.len() as u64,
            };
            bytes += entry.bytes;
            // Plain overwrite: until PUBLISHED.json exists these files are nobody's, and a
            // publish that died halfway must be retryable.
            let key = self.key(&["models", &name, "versions", &version, rel]);
            self.inner
                .store
                .put(&key, PutPayload::from(data))
                .await
                .map_err(|e| self.unreachable(format!("uploading {key}: {e}")))?;
            entries.push(entry);
        }
        let marker = Marker {
            name: name.clone(),
            version: version.clone(),
            published_at: now_rfc3339(),
            by: by.to_string(),
            files: entries,
        };
        let key = self.key(&["models", &name, "versions", &version, PUBLISHED_FILE]);
        let body = serde_json::to_vec_pretty(&marker).expect("marker serializes");
        match self
            .inner
            .store
            .put_opts(&key, PutPayload::from(body), PutMode::Create.into())
            .await
        {
            Ok(_) => Ok(Published {
                name,
                version,
                files: files.len(),
                bytes,
            }),
            Err(object_store::Error::AlreadyExists { .. }) => {
                Err(self.already_published(&name, &version))
            }
            Err(e) => Err(self.unreachable(format!("writing {key}: {e}"))),
        }
    }

    fn already_published(&self, name: &str, version: &str) -> RegistryError {
        RegistryError::AlreadyPublished {
            name: name.to_string(),
            version: version.to_string(),
            url: self.inner.url.clone(),
        }
    }

    async fn model_names(&self) -> Result<Vec<String>, RegistryError> {
        let mut names = self.children(&["models"]).await?;
        names.sort();
        Ok(names)
    }

    /// Published versions of `name`, sorted.
    async fn versions(&self, name: &str) -> Result<Vec<String>, RegistryError> {
        let prefix = self.key(&["models", name, "versions"]);
        let metas: Vec<object_store::ObjectMeta> = self
            .inner
            .store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| self.unreachable(e))?;
        let depth = prefix.parts().count();
        let mut versions: Vec<String> = metas
            .iter()
            .filter(|m| m.location.filename() == Some(PUBLISHED_FILE))
            .filter(|m| m.location.parts().count() == depth + 2)
            .filter_map(|m| {
                m.location
                    .parts()
                    .nth(depth)
                    .map(|p| p.as_ref().to_string())
            })
            .collect();
        versions.sort_by(|a, b| compare_versions(a, b));
        Ok(versions)
    }

    /// Every model: name, published versions and current stages.
    pub async fn list(&self) -> Result<Vec<ModelInfo>, RegistryError> {
        let names = self.model_names().await?;
        futures::stream::iter(names)
            .map(|name| async move {
                let versions = self.versions(&name).await?;
                let stages = fold(&self.entries(&name).await?).stages;
                Ok::<_, RegistryError>(ModelInfo {
                    name,
                    versions,
                    stages,
                })
            })
            .buffered(8)
            .try_collect()
            .await
    }

    /// Current stages of every model: one listing per model plus a read of each history entry
    /// not seen before, so cheap enough to poll every second.
    pub async fn stages(&self) -> Result<BTreeMap<String, Stages>, RegistryError> {
        let names = self.model_names().await?;
        futures::stream::iter(names)
            .map(|name| async move {
                let stages = fold(&self.entries(&name).await?).stages;
                Ok::<_, RegistryError>((name, stages))
            })
            .buffered(8)
            .try_collect()
            .await
    }

    /// History entries of `name` in seq order (empty when it has none).
    async fn entries(&self, name: &str) -> Result<Vec<HistoryEntry>, RegistryError> {
        let prefix = self.key(&["models", name, "history"]);
        let metas: Vec<object_store::ObjectMeta> = self
            .inner
            .store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| self.unreachable(e))?;
        let mut out = Vec::with_capacity(metas.len());
        for m in metas {
            let Some(file) = m.location.filename() else {
                continue;
            };
            // object_store's local backend stages writes in hidden files; only entries count.
            if !file.ends_with(".json") || file.starts_with('.') {
                continue;
            }
            let cache_key = m.location.to_string();
            let cached = self
                .inner
                .entries
                .lock()
                .expect("entry cache lock")
                .get(&cache_key)
                .cloned();
            let entry = match cached {
                Some(e) => e,
                None => {
                    let Some(b) = self.get_opt(&m.location).await? else {
                        continue;
                    };
                    let e: HistoryEntry =
                        serde_json::from_slice(&b).map_err(|e| self.corrupt(&m.location, e))?;
                    self.inner
                        .entries
                        .lock()
                        .expect("entry cache lock")
                        .insert(cache_key, e.clone());
                    e
                }
            };
            out.push(entry);
        }
        out.sort_by_key(|e| e.seq);
        Ok(out)
    }

    async fn require_model(&self, name: &str) -> Result<Vec<String>, RegistryError> {
        check_segment("model name", name)?;
        let versions = self.versions(name).await?;
        if versions.is_empty() {
            return Err(RegistryError::NotFound(format!(
                "no model {name} in registry {}",
                self.inner.url
            )));
        }
        Ok(versions)
    }

    /// Puts `version` of `name` on `stage`. `percent` must be in (0, 100] for canary and shadow
    /// and is ignored for production. Unknown model or version: [`RegistryError::NotFound`].
    pub async fn promote(
        &self,
        name: &str,
        version: &str,
        stage: Stage,
        percent: Option<f64>,
        by: &str,
        why: &str,
    ) -> Result<HistoryEntry, RegistryError> {
        check_segment("version", version)?;
        let versions = self.require_model(name).await?;
        if !versions.iter().any(|v| v == version) {
            return Err(RegistryError::NotFound(format!(
                "model {name} has no published version {version} in registry {} (published: {})",
                self.inner.url,
                versions.join(", ")
            )));
        }
        self.append(name, by, why, |current| {
            let percent = check_promote(name, version, stage, percent, current)?;
            Ok((Action::Promote, stage, version.to_string(), percent))
        })
        .await
    }

    /// Rolls `name` back. With a canary running, stops the canary and nothing else; otherwise
    /// production returns to the version that was production before the current one (an error
    /// if there is none). Shadows are never touched.
    pub async fn rollback(
        &self,
        name: &str,
        by: &str,
        why: &str,
    ) -> Result<HistoryEntry, RegistryError> {
        self.require_model(name).await?;
        self.append(name, by, why, |current| {
            let (stage, version) = plan_rollback(name, current)?;
            Ok((Action::Rollback, stage, version, None))
        })
        .await
    }

    /// Appends one history entry decided from the current state. On losing the race for the next
    /// sequence number, re-reads the history and decides again, so no entry is lost or applied
    /// to a state it was not checked against.
    async fn append(
        &self,
        name: &str,
        by: &str,
        why: &str,
        decide: impl Fn(&history::Folded) -> Result<(Action, Stage, String, Option<f64>), RegistryError>,
    ) -> Result<HistoryEntry, RegistryError> {
        for _ in 0..APPEND_ATTEMPTS {
            let entries = self.entries(name).await?;
            let (action, stage, version, percent) = decide(&fold(&entries))?;
            let entry = HistoryEntry {
                seq: entries.last().map_or(1, |e| e.seq + 1),
                at: now_rfc3339(),
                by: by.to_string(),
                why: why.to_string(),
                action,
                stage,
                version,
                percent,
            };
            let file = format!("{:08}.json", entry.seq);
            let key = self.key(&["models", name, "history", &file]);
            let body = serde_json::to_vec_pretty(&entry).expect("entry serializes");
            match self
                .inner
                .store
                .put_opts(&key, PutPayload::from(body), PutMode::Create.into())
                .await
            {
                Ok(_) => return Ok(entry),
                Err(object_store::Error::AlreadyExists { .. }) => continue,
                Err(e) => return Err(self.unreachable(format!("writing {key}: {e}"))),
            }
        }
        Err(RegistryError::Conflict(format!(
            "model {name}: {APPEND_ATTEMPTS} concurrent writers took every history slot; try again"
        )))
    }

    /// Stage changes of `name`, oldest first.
    pub async fn history(&self, name: &str) -> Result<Vec<HistoryEntry>, RegistryError> {
        self.require_model(name).await?;
        self.entries(name).await
    }

    /// Downloads a published version into `cache_dir/<name>/<version>/` (skipped when already
    /// there with matching checksums), verifies every file against `PUBLISHED.json`, and
    /// returns the directory.
    pub async fn fetch(
        &self,
        name: &str,
        version: &str,
        cache_dir: &Path,
    ) -> Result<PathBuf, RegistryError> {
        check_segment("model name", name)?;
        check_segment("version", version)?;
        let marker = self.marker(name, version).await?.ok_or_else(|| {
            RegistryError::NotFound(format!(
                "model {name} has no published version {version} in registry {}",
                self.inner.url
            ))
        })?;
        let marker_key = self.key(&["models", name, "versions", version, PUBLISHED_FILE]);
        for f in &marker.files {
            if !safe_relative(&f.path) {
                return Err(self.corrupt(&marker_key, format!("unsafe file path {:?}", f.path)));
            }
        }
        let dest = cache_dir.join(name).join(version);
        if local_copy_matches(&dest, &marker.files).await {
            return Ok(dest);
        }
        let local_err = |p: &Path, e: std::io::Error| RegistryError::Unreachable {
            url: format!("file://{}", p.display()),
            message: format!("cache directory {}: {e}", p.display()),
        };
        let parent = cache_dir.join(name);
        tokio::fs::create_dir_all(&parent)
            .await
            .map_err(|e| local_err(&parent, e))?;
        // Download beside the destination and rename into place, so a reader never sees a
        // half-fetched version and a crash leaves only a `.partial` directory behind.
        let staging = parent.join(format!(
            ".{version}.partial-{}-{}",
            std::process::id(),
            chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0)
        ));
        let result = self.download(name, version, &marker, &staging).await;
        if let Err(e) = result {
            let _ = tokio::fs::remove_dir_all(&staging).await;
            return Err(e);
        }
        if tokio::fs::metadata(&dest).await.is_ok() {
            if local_copy_matches(&dest, &marker.files).await {
                // Another fetcher finished first with the same bytes.
                let _ = tokio::fs::remove_dir_all(&staging).await;
                return Ok(dest);
            }
            tokio::fs::remove_dir_all(&dest)
                .await
                .map_err(|e| local_err(&dest, e))?;
        }
        tokio::fs::rename(&staging, &dest)
            .await
            .map_err(|e| local_err(&dest, e))?;
        Ok(dest)
    }

    async fn download(
        &self,
        name: &str,
        version: &str,
        marker: &Marker,
        staging: &Path,
    ) -> Result<(), RegistryError> {
        for f in &marker.files {
            let key = self.key(&["models", name, "versions", version, &f.path]);
            let data = self.get_opt(&key).await?.ok_or_else(|| {
                self.corrupt(&key, "listed in PUBLISHED.json but missing from the store")
            })?;
            let actual = sha256_hex(&data);
            if actual != f.sha256 || data.len() as u64 != f.bytes {
                return Err(self.corrupt(
                    &key,
                    format!(
                        "checksum mismatch: PUBLISHED.json says sha256 {} ({} bytes), store has {actual} ({} bytes)",
                        f.sha256,
                        f.bytes,
                        data.len()
                    ),
                ));
            }
            let local = staging.join(&f.path);
            if let Some(p) = local.parent() {
                tokio::fs::create_dir_all(p)
                    .await
                    .map_err(|e| RegistryError::Unreachable {
                        url: format!("file://{}", p.display()),
                        message: e.to_string(),
                    })?;
            }
            tokio::fs::write(&local, &data)
                .await
                .map_err(|e| RegistryError::Unreachable {
                    url: format!("file://{}", local.display()),
                    message: e.to_string(),
                })?;
        }
        Ok(())
    }
}

/// A relative path that stays inside the directory it is joined to.
fn safe_relative(p: &str) -> bool {
    !p.is_empty()
        && !p.starts_with('/')
        && p.split('/').all(|s| !s.is_empty() && s != "." && s != "..")
        && !p.contains('\\')
}

async fn local_copy_matches(dir: &Path, files: &[FileEntry]) -> bool {
    for f in files {
        match tokio::fs::read(dir.join(&f.path)).await {
            Ok(data) if data.len() as u64 == f.bytes && sha256_hex(&data) == f.sha256 => {}
            _ => return false,
        }
    }
    true
}

/// Every regular file under `dir`, as sorted `/`-separated relative paths.
fn bundle_files(dir: &Path) -> Result<Vec<String>, String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<(), String> {
        let rd = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for entry in rd {
            let entry = entry.map_err(|e| format!("{}: {e}", dir.display()))?;
            let path = entry.path();
            let meta = std::fs::metadata(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            if meta.is_dir() {
                walk(root, &path, out)?;
            } else if meta.is_file() {
                let rel = path.strip_prefix(root).expect("walked under root");
                let parts: Option<Vec<&str>> =
                    rel.components().map(|c| c.as_os_str().to_str()).collect();
                let parts =
                    parts.ok_or_else(|| format!("{}: file name is not UTF-8", path.display()))?;
                if path.file_name().and_then(|n| n.to_str()) == Some(PUBLISHED_FILE) {
                    return Err(format!(
                        "{}: a bundle may not contain {PUBLISHED_FILE}",
                        path.display()
                    ));
                }
                out.push(parts.join("/"));
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out)?;
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_sort_numerically_when_numbers() {
        let mut v = vec!["10", "9", "1.5", "b", "a", "2"];
        v.sort_by(|a, b| compare_versions(a, b));
        assert_eq!(v, ["1.5", "2", "9", "10", "a", "b"]);
    }

    #[test]
    fn rejects_unsafe_names_and_paths() {
        assert!(check_segment("model name", "ctr-v2.1_x").is_ok());
        for bad in ["", ".", "..", "a/b", "a b", "é"] {
            assert!(check_segment("model name", bad).is_err(), "{bad}");
        }
        assert!(safe_relative("weights/m.txt"));
        for bad in ["../x", "/etc/passwd", "a//b", "a/./b", ""] {
            assert!(!safe_relative(bad), "{bad}");
        }
    }

    #[test]
    fn open_reports_a_file_in_the_way_as_unreachable() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("not-a-dir");
        std::fs::write(&file, "x").unwrap();
        let url = format!("file://{}/sub", file.display());
        match Registry::open(&url) {
            Err(RegistryError::Unreachable { url: u, .. }) => {
                assert!(u.contains("not-a-dir"), "{u}")
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            Registry::open("ftp://x/y"),
            Err(RegistryError::BadRequest(_))
        ));
    }
}
