//! Online stores: where stored feature values live, behind one trait, and the embedded
//! in-memory store with its snapshot file.
//!
//! The distributed store ([`crate::RedisStore`]) and the read-through cache
//! ([`crate::CachedStore`]) live in their own modules; this module does not know about either.

use async_trait::async_trait;
use dashmap::DashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A failed store read (the backend is down, a value is corrupt, …).
#[derive(Debug, thiserror::Error)]
#[error("online store {backend}: {message}")]
pub struct StoreError {
    /// Which backend failed.
    pub backend: &'static str,
    /// What went wrong.
    pub message: String,
}

/// One entity's feature vector as stored, with the time its values are as of.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredValue {
    /// The entity's features, in the order its definitions list them.
    pub values: Arc<[f32]>,
    /// Milliseconds since the Unix epoch at which the values were computed (the stream's clock
    /// for aggregations, the write time for stored values); freshness is judged against it.
    pub as_of_ms: i64,
}

impl StoredValue {
    /// A value as of `as_of_ms`.
    pub fn new(values: impl Into<Arc<[f32]>>, as_of_ms: i64) -> Self {
        Self {
            values: values.into(),
            as_of_ms,
        }
    }
}

/// Wall-clock milliseconds since the Unix epoch, the time axis of [`StoredValue::as_of_ms`].
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A key → feature-vector store read on the hot path. Keys are `"<entity>:<id>"`.
#[async_trait]
pub trait OnlineStore: Send + Sync {
    /// Reads many keys in one round trip; `None` for a key the store does not hold.
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<StoredValue>>, StoreError>;

    /// Writes many entities' values in one round trip.
    async fn put_many(&self, entries: Vec<(String, StoredValue)>) -> Result<(), StoreError>;

    /// Writes one entity's values.
    async fn put(&self, key: String, value: StoredValue) -> Result<(), StoreError> {
        self.put_many(vec![(key, value)]).await
    }

    /// Checks that the backend answers (a readiness probe); an embedded store always does.
    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Short name of the backend for health reports, metrics and errors (`memory`, `redis`, …).
    /// Implementations should override it; the default is for test doubles.
    fn backend(&self) -> &'static str {
        "custom"
    }
}

/// The embedded store: a sharded concurrent map in process memory.
#[derive(Default)]
pub struct MemoryStore {
    map: DashMap<String, StoredValue>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("len", &self.map.len())
            .finish()
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store with room for `capacity` keys, so that a bulk load at start-up does not
    /// rehash the map again and again as it grows.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            map: DashMap::with_capacity(capacity),
        }
    }

    /// Number of keys held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Writes without going through the async trait (bulk loading at start-up).
    pub fn insert(&self, key: String, value: StoredValue) {
        self.map.insert(key, value);
    }
}

#[async_trait]
impl OnlineStore for MemoryStore {
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<StoredValue>>, StoreError> {
        Ok(keys
            .iter()
            .map(|k| self.map.get(k).map(|v| v.value().clone()))
            .collect())
    }

    async fn put_many(&self, entries: Vec<(String, StoredValue)>) -> Result<(), StoreError> {
        for (k, v) in entries {
            self.map.insert(k, v);
        }
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "memory"
    }
}

/// Magic bytes that open a feature snapshot file.
const SNAPSHOT_MAGIC: &[u8; 8] = b"PODIUMFS";
/// Snapshot format version this build writes and reads.
pub const SNAPSHOT_VERSION: u32 = 1;
/// Magic, version (u32) and entry count (u64).
const SNAPSHOT_HEADER_LEN: usize = 8 + 4 + 8;
/// The trailing CRC32 of everything before it.
const SNAPSHOT_CHECKSUM_LEN: usize = 4;
/// Smallest entry: key length, empty key, as-of, value count, no values.
const SNAPSHOT_MIN_ENTRY_LEN: usize = 4 + 8 + 4;

/// A snapshot file that could not be written or read; names the file and what was wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// No file at the path.
    #[error("feature snapshot {}: not found", path.display())]
    NotFound {
        /// The snapshot file.
        path: PathBuf,
    },
    /// Reading or writing the file failed.
    #[error("feature snapshot {}: {source}", path.display())]
    Io {
        /// The snapshot file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file does not start with the snapshot magic: it is some other file.
    #[error(
        "feature snapshot {}: not a Podium feature snapshot (it does not start with PODIUMFS)",
        path.display()
    )]
    BadMagic {
        /// The snapshot file.
        path: PathBuf,
    },
    /// A snapshot of a format version this build does not read.
    #[error(
        "feature snapshot {}: format version {found} is not supported (this build reads version {supported})",
        path.display()
    )]
    UnsupportedVersion {
        /// The snapshot file.
        path: PathBuf,
        /// Version in the file.
        found: u32,
        /// Version this build reads.
        supported: u32,
    },
    /// The file ends before the entries its header announces and the checksum.
    #[error(
        "feature snapshot {}: truncated: the file ends after {len} bytes, before the end of its entries and checksum",
        path.display()
    )]
    Truncated {
        /// The snapshot file.
        path: PathBuf,
        /// Length of the file in bytes.
        len: u64,
    },
    /// The bytes are all there but do not match the stored checksum: the file is corrupt.
    #[error(
        "feature snapshot {}: checksum mismatch (stored {stored:08x}, computed {computed:08x}): the file is corrupt",
        path.display()
    )]
    ChecksumMismatch {
        /// The snapshot file.
        path: PathBuf,
        /// CRC32 stored at the end of the file.
        stored: u32,
        /// CRC32 of the bytes before it.
        computed: u32,
    },
    /// The checksum matches but the content is not a valid snapshot (a writer bug).
    #[error("feature snapshot {}: malformed: {detail}", path.display())]
    Malformed {
        /// The snapshot file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
}

impl MemoryStore {
    /// Writes every entry to a snapshot file at `path` and returns how many it wrote.
    ///
    /// The file is written beside the target as `<path>.tmp`, fsynced and renamed over `path`, so
    /// a crash leaves either the old snapshot or the new one, never half of one. Entries are
    /// written sorted by key, so the same contents give the same bytes. Concurrent writers are
    /// not stopped: each entry is consistent, but a write racing the snapshot may or may not be
    /// in it.
    pub fn save_snapshot(&self, path: &Path) -> Result<usize, SnapshotError> {
        let mut entries: Vec<(String, StoredValue)> = self
            .map
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect();
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let tmp = snapshot_tmp_path(path);
        let written = write_snapshot(&tmp, &entries).and_then(|()| std::fs::rename(&tmp, path));
        if let Err(source) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(SnapshotError::Io {
                path: path.to_owned(),
                source,
            });
        }
        sync_parent_dir(path);
        Ok(entries.len())
    }

    /// Reads a snapshot written by [`MemoryStore::save_snapshot`] into a new store.
    ///
    /// The whole file is read and its checksum verified before any entry is trusted, so a
    /// corrupt file is refused whole rather than loaded in part.
    pub fn load_snapshot(path: &Path) -> Result<MemoryStore, SnapshotError> {
        let bytes = std::fs::read(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                SnapshotError::NotFound {
                    path: path.to_owned(),
                }
            } else {
                SnapshotError::Io {
                    path: path.to_owned(),
                    source,
                }
            }
        })?;
        decode_snapshot(path, &bytes)
    }
}

/// `<path>.tmp`: beside the target, so that the rename stays on one file system.
fn snapshot_tmp_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".tmp");
    PathBuf::from(name)
}

fn write_snapshot(tmp: &Path, entries: &[(String, StoredValue)]) -> std::io::Result<()> {
    let too_long = |what: &str, key: &str| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("entry {key:?}: {what} does not fit the format's u32 length"),
        )
    };
    let mut out = BufWriter::with_capacity(1 << 20, File::create(tmp)?);
    let mut crc = crc32fast::Hasher::new();
    let mut buf = Vec::with_capacity(4096);
    buf.extend_from_slice(SNAPSHOT_MAGIC);
    buf.extend_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
    buf.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    for (key, value) in entries {
        let key_len = u32::try_from(key.len()).map_err(|_| too_long("key", key))?;
        let n_values =
            u32::try_from(value.values.len()).map_err(|_| too_long("value count", key))?;
        buf.extend_from_slice(&key_len.to_le_bytes());
        buf.extend_from_slice(key.as_bytes());
        buf.extend_from_slice(&value.as_of_ms.to_le_bytes());
        buf.extend_from_slice(&n_values.to_le_bytes());
        for x in value.values.iter() {
            buf.extend_from_slice(&x.to_le_bytes());
        }
        // One checksum update and one copy per entry, not per field.
        crc.update(&buf);
        out.write_all(&buf)?;
        buf.clear();
    }
    crc.update(&buf);
    out.write_all(&buf)?;
    out.write_all(&crc.finalize().to_le_bytes())?;
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()
}

/// Makes the rename durable; best effort, as not every platform can open a directory.
fn sync_parent_dir(path: &Path) {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Why a structural read of the entries stopped.
enum ParseFailure {
    /// The bytes ran out.
    Short,
    /// The bytes are there but do not make an entry.
    Invalid(String),
}

/// Reads `count` entries starting at the end of the header; returns them and where they ended.
fn parse_entries(
    bytes: &[u8],
    count: u64,
) -> Result<(Vec<(String, StoredValue)>, usize), ParseFailure> {
    fn take<'a>(bytes: &'a [u8], at: &mut usize, n: usize) -> Result<&'a [u8], ParseFailure> {
        let end = at.checked_add(n).ok_or(ParseFailure::Short)?;
        let slice = bytes.get(*at..end).ok_or(ParseFailure::Short)?;
        *at = end;
        Ok(slice)
    }
    fn le<const N: usize>(bytes: &[u8], at: &mut usize) -> Result<[u8; N], ParseFailure> {
        let slice = take(bytes, at, N)?;
        Ok(slice.try_into().expect("take returns exactly N bytes"))
    }
    let mut at = SNAPSHOT_HEADER_LEN;
    // A corrupt count must not reserve more than the file could hold.
    let room = bytes.len().saturating_sub(at) / SNAPSHOT_MIN_ENTRY_LEN;
    let mut entries = Vec::with_capacity(usize::try_from(count).map_or(room, |c| c.min(room)));
    for i in 0..count {
        let key_len = u32::from_le_bytes(le(bytes, &mut at)?) as usize;
        let key = std::str::from_utf8(take(bytes, &mut at, key_len)?)
            .map_err(|_| ParseFailure::Invalid(format!("entry {i}: key is not UTF-8")))?
            .to_owned();
        let as_of_ms = i64::from_le_bytes(le(bytes, &mut at)?);
        let n_values = u32::from_le_bytes(le(bytes, &mut at)?) as usize;
        let raw = take(
            bytes,
            &mut at,
            n_values.checked_mul(4).ok_or(ParseFailure::Short)?,
        )?;
        let values: Arc<[f32]> = raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("chunks of 4")))
            .collect();
        entries.push((key, StoredValue { values, as_of_ms }));
    }
    Ok((entries, at))
}

fn decode_snapshot(path: &Path, bytes: &[u8]) -> Result<MemoryStore, SnapshotError> {
    let path_buf = || path.to_owned();
    let len = bytes.len() as u64;
    let magic_len = bytes.len().min(SNAPSHOT_MAGIC.len());
    if bytes[..magic_len] != SNAPSHOT_MAGIC[..magic_len] {
        return Err(SnapshotError::BadMagic { path: path_buf() });
    }
    if bytes.len() < SNAPSHOT_HEADER_LEN {
        return Err(SnapshotError::Truncated {
            path: path_buf(),
            len,
        });
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version != SNAPSHOT_VERSION {
        return Err(SnapshotError::UnsupportedVersion {
            path: path_buf(),
            found: version,
            supported: SNAPSHOT_VERSION,
        });
    }
    let count = u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes"));
    let truncated = || SnapshotError::Truncated {
        path: path_buf(),
        len,
    };
    if bytes.len() < SNAPSHOT_HEADER_LEN + SNAPSHOT_CHECKSUM_LEN {
        return Err(truncated());
    }
    let (body, tail) = bytes.split_at(bytes.len() - SNAPSHOT_CHECKSUM_LEN);
    let stored = u32::from_le_bytes(tail.try_into().expect("4 bytes"));
    let computed = crc32fast::hash(body);
    let parsed = parse_entries(bytes, count);
    if stored != computed {
        // Tell a cut-short file (an interrupted copy) from one whose bytes changed.
        return Err(match parsed {
            Err(ParseFailure::Short) => truncated(),
            Ok((_, end)) if end + SNAPSHOT_CHECKSUM_LEN > bytes.len() => truncated(),
            _ => SnapshotError::ChecksumMismatch {
                path: path_buf(),
                stored,
                computed,
            },
        });
    }
    let malformed = |detail: String| SnapshotError::Malformed {
        path: path_buf(),
        detail,
    };
    let (entries, end) = match parsed {
        Ok(parsed) => parsed,
        Err(ParseFailure::Short) => {
            return Err(malformed(format!(
                "the header announces {count} entries but the file holds fewer"
            )))
        }
        Err(ParseFailure::Invalid(detail)) => return Err(malformed(detail)),
    };
    if end != body.len() {
        return Err(malformed(format!(
            "the {count} entries end at byte {end} but the checksum is at byte {}",
            body.len()
        )));
    }
    let store = MemoryStore::with_capacity(entries.len());
    for (key, value) in entries {
        store.insert(key, value);
    }
    Ok(store)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled(n: usize) -> MemoryStore {
        let store = MemoryStore::with_capacity(n);
        for i in 0..n {
            let values: Vec<f32> = (0..i % 7).map(|j| i as f32 * 0.5 - j as f32).collect();
            store.insert(
                format!("user:{i}"),
                StoredValue::new(values, i as i64 * 1000 - 5),
            );
        }
        store
    }

    fn saved(n: usize) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("features.snap");
        assert_eq!(filled(n).save_snapshot(&path).unwrap(), n);
        (dir, path)
    }

    #[test]
    fn a_snapshot_round_trips_every_entry() {
        let (_dir, path) = saved(10_000);
        let loaded = MemoryStore::load_snapshot(&path).unwrap();
        let original = filled(10_000);
        assert_eq!(loaded.len(), 10_000);
        for e in original.map.iter() {
            assert_eq!(
                loaded.map.get(e.key()).as_deref(),
                Some(e.value()),
                "{}",
                e.key()
            );
        }
        assert!(!snapshot_tmp_path(&path).exists());
    }

    #[test]
    fn an_empty_store_round_trips() {
        let (_dir, path) = saved(0);
        assert!(MemoryStore::load_snapshot(&path).unwrap().is_empty());
    }

    #[test]
    fn saving_replaces_the_previous_snapshot() {
        let (_dir, path) = saved(10);
        assert_eq!(filled(3).save_snapshot(&path).unwrap(), 3);
        assert_eq!(MemoryStore::load_snapshot(&path).unwrap().len(), 3);
    }

    #[test]
    fn a_truncated_snapshot_is_refused_as_truncated() {
        let (_dir, path) = saved(100);
        let bytes = std::fs::read(&path).unwrap();
        for cut in [
            bytes.len() - 1,
            bytes.len() - 4,
            bytes.len() / 2,
            21,
            20,
            12,
            3,
            0,
        ] {
            std::fs::write(&path, &bytes[..cut]).unwrap();
            let err = MemoryStore::load_snapshot(&path).unwrap_err();
            assert!(
                matches!(err, SnapshotError::Truncated { len, .. } if len == cut as u64),
                "cut at {cut}: {err}"
            );
            assert!(err.to_string().contains("features.snap"), "{err}");
        }
    }

    #[test]
    fn a_flipped_byte_is_a_checksum_mismatch() {
        let (_dir, path) = saved(100);
        let bytes = std::fs::read(&path).unwrap();
        // The last byte of the last value, the count's top byte, and the checksum itself.
        let count_top = 12 + 7;
        for at in [bytes.len() - 5, count_top, bytes.len() - 1] {
            let mut flipped = bytes.clone();
            flipped[at] ^= 0x40;
            std::fs::write(&path, &flipped).unwrap();
            let err = MemoryStore::load_snapshot(&path).unwrap_err();
            assert!(
                matches!(
                    err,
                    SnapshotError::ChecksumMismatch { .. } | SnapshotError::Truncated { .. }
                ),
                "flip at {at}: {err}"
            );
            if at != count_top {
                assert!(
                    matches!(err, SnapshotError::ChecksumMismatch { .. }),
                    "{err}"
                );
            }
        }
    }

    #[test]
    fn a_file_that_is_not_a_snapshot_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("features.toml");
        std::fs::write(&path, "[[feature]]\nname = \"user_ctr\"\n").unwrap();
        let err = MemoryStore::load_snapshot(&path).unwrap_err();
        assert!(matches!(err, SnapshotError::BadMagic { .. }), "{err}");
        assert!(err.to_string().contains("features.toml"), "{err}");
    }

    #[test]
    fn another_format_version_is_refused() {
        let (_dir, path) = saved(1);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[8..12].copy_from_slice(&2u32.to_le_bytes());
        std::fs::write(&path, &bytes).unwrap();
        let err = MemoryStore::load_snapshot(&path).unwrap_err();
        assert!(
            matches!(
                err,
                SnapshotError::UnsupportedVersion {
                    found: 2,
                    supported: 1,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn a_missing_file_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let err = MemoryStore::load_snapshot(&dir.path().join("nope.snap")).unwrap_err();
        assert!(matches!(err, SnapshotError::NotFound { .. }), "{err}");
        assert!(err.to_string().contains("nope.snap"), "{err}");
    }

    #[test]
    fn a_failed_save_names_the_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-dir").join("features.snap");
        let err = filled(3).save_snapshot(&path).unwrap_err();
        assert!(matches!(err, SnapshotError::Io { .. }), "{err}");
        assert!(err.to_string().contains("features.snap"), "{err}");
    }

    #[tokio::test]
    async fn the_memory_store_is_always_healthy() {
        let store = MemoryStore::new();
        store.ping().await.unwrap();
        assert_eq!(store.backend(), "memory");
    }
}
