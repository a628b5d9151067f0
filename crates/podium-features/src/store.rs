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

/// A key → feature-vector store read on the hot path. Values are the entity's stored features in
/// the order the feature space lists them for that entity.
#[async_trait]
pub trait OnlineStore: Send + Sync {
    /// Reads many keys in one round trip; `None` for a key the store does not hold.
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Arc<[f32]>>>, StoreError>;

    /// Writes one entity's values.
    async fn put(&self, key: String, values: Arc<[f32]>) -> Result<(), StoreError>;
}

/// The embedded store: a sharded concurrent map in process memory.
#[derive(Default)]
pub struct MemoryStore {
    map: DashMap<String, Arc<[f32]>>,
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
    pub fn insert(&self, key: String, values: Arc<[f32]>) {
        self.map.insert(key, values);
    }
}

#[async_trait]
impl OnlineStore for MemoryStore {
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Arc<[f32]>>>, StoreError> {
        Ok(keys
            .iter()
            .map(|k| self.map.get(k).map(|v| v.value().clone()))
            .collect())
    }

    async fn put(&self, key: String, values: Arc<[f32]>) -> Result<(), StoreError> {
        self.map.insert(key, values);
        Ok(())
    }
}
