//! Online stores: where stored feature values live, behind one trait.

use async_trait::async_trait;
use dashmap::DashMap;
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

    /// Checks that the backend answers.
    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// The backend's name, for health reports.
    fn backend(&self) -> &'static str {
        "memory"
    }
}

/// The embedded store: a sharded concurrent map in process memory.
#[derive(Default)]
pub struct MemoryStore {
    map: DashMap<String, StoredValue>,
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
}
