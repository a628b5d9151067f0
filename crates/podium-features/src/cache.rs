//! A read-through cache in front of an online store, for the entities that change slowly.
//!
//! A request reads about a hundred line items and advertisers whose stored features change a
//! few times a day, and one user whose features change by the second. [`CachedStore`] keeps the
//! former in process memory for a TTL and always reads the latter from the store beneath. It
//! does not invalidate across servers: another server's write is seen here when the cached copy
//! expires, so the TTL is the bound on staleness.

use crate::definitions::Entity;
use crate::store::{OnlineStore, StoreError, StoredValue};
use async_trait::async_trait;
use moka::future::Cache;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What [`CachedStore`] caches and for how long.
#[derive(Clone, Debug)]
pub struct CacheConfig {
    /// How long a value (or the fact that a key is absent) is served from the cache.
    pub ttl: Duration,
    /// Most keys held; the least useful are evicted beyond it.
    pub max_capacity: u64,
    /// Entities whose keys are cached; keys of other entities always go to the inner store.
    pub entities: Vec<Entity>,
}

impl Default for CacheConfig {
    /// 30 s for line items, advertisers and content, up to 100,000 keys (the standard
    /// workload's 5,000 line items and 300 advertisers fit many times over).
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(30),
            max_capacity: 100_000,
            entities: vec![Entity::LineItem, Entity::Advertiser, Entity::Content],
        }
    }
}

/// An [`OnlineStore`] that answers keys of slow-changing entities from memory and passes the
/// rest, in one call, to the store it wraps. Absent keys are cached too (as `None`), so an
/// unknown line item does not reach the inner store on every request.
pub struct CachedStore {
    inner: Arc<dyn OnlineStore>,
    cache: Cache<String, Option<StoredValue>>,
    entities: Vec<&'static str>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl CachedStore {
    /// Wraps `inner`, caching the entities `config` names.
    pub fn new(inner: Arc<dyn OnlineStore>, config: CacheConfig) -> Self {
        Self {
            inner,
            cache: Cache::builder()
                .max_capacity(config.max_capacity)
                .time_to_live(config.ttl)
                .build(),
            entities: config.entities.iter().map(|e| e.as_str()).collect(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// Reads of cacheable keys answered from the cache, since creation.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// Reads of cacheable keys that had to go to the inner store, since creation. Keys of
    /// uncached entities count as neither hits nor misses.
    pub fn misses(&self) -> u64 {
        self.misses.load(Ordering::Relaxed)
    }

    /// Whether `key` (`"<entity>:<id>"`) belongs to a cached entity.
    fn is_cached(&self, key: &str) -> bool {
        key.split_once(':')
            .is_some_and(|(entity, _)| self.entities.contains(&entity))
    }
}

#[async_trait]
impl OnlineStore for CachedStore {
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<StoredValue>>, StoreError> {
        let mut out: Vec<Option<StoredValue>> = vec![None; keys.len()];
        let mut fetch_at = Vec::new();
        let mut fetch_keys = Vec::new();
        let (mut hits, mut misses) = (0, 0);
        for (i, key) in keys.iter().enumerate() {
            if self.is_cached(key) {
                if let Some(cached) = self.cache.get(key).await {
                    out[i] = cached;
                    hits += 1;
                    continue;
                }
                misses += 1;
            }
            fetch_at.push(i);
            fetch_keys.push(key.clone());
        }
        self.hits.fetch_add(hits, Ordering::Relaxed);
        self.misses.fetch_add(misses, Ordering::Relaxed);
        if fetch_keys.is_empty() {
            return Ok(out);
        }
        let fetched = self.inner.get_many(&fetch_keys).await?;
        if fetched.len() != fetch_keys.len() {
            return Err(StoreError {
                backend: self.inner.backend(),
                message: format!(
                    "asked for {} keys, answered {}",
                    fetch_keys.len(),
                    fetched.len()
                ),
            });
        }
        for ((i, key), value) in fetch_at.into_iter().zip(fetch_keys).zip(fetched) {
            if self.is_cached(&key) {
                self.cache.insert(key, value.clone()).await;
            }
            out[i] = value;
        }
        Ok(out)
    }

    async fn put_many(&self, entries: Vec<(String, StoredValue)>) -> Result<(), StoreError> {
        let cached: Vec<(String, StoredValue)> = entries
            .iter()
            .filter(|(key, _)| self.is_cached(key))
            .cloned()
            .collect();
        let written = self.inner.put_many(entries).await;
        for (key, value) in cached {
            if written.is_ok() {
                self.cache.insert(key, Some(value)).await;
            } else {
                // The inner store may or may not hold the new value: read it again next time.
                self.cache.invalidate(&key).await;
            }
        }
        written
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }

    /// The inner store's backend: the cache is a layer, not a place values live.
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;
    use std::sync::Mutex;

    /// A memory store that records each `get_many` call's keys.
    #[derive(Default)]
    struct Recording {
        store: MemoryStore,
        calls: Mutex<Vec<Vec<String>>>,
    }

    impl Recording {
        fn calls(&self) -> Vec<Vec<String>> {
            self.calls.lock().unwrap().clone()
        }
    }

    #[async_trait]
    impl OnlineStore for Recording {
        async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<StoredValue>>, StoreError> {
            self.calls.lock().unwrap().push(keys.to_vec());
            self.store.get_many(keys).await
        }
        async fn put_many(&self, entries: Vec<(String, StoredValue)>) -> Result<(), StoreError> {
            self.store.put_many(entries).await
        }
    }

    fn value(x: f32) -> StoredValue {
        StoredValue::new(vec![x], 1)
    }

    fn keys(ks: &[&str]) -> Vec<String> {
        ks.iter().map(|k| k.to_string()).collect()
    }

    fn cached(inner: &Arc<Recording>, ttl: Duration) -> CachedStore {
        let config = CacheConfig {
            ttl,
            ..CacheConfig::default()
        };
        CachedStore::new(inner.clone(), config)
    }

    #[tokio::test]
    async fn a_second_read_is_served_from_the_cache() {
        let inner = Arc::new(Recording::default());
        inner.store.insert("line_item:1".into(), value(1.0));
        let store = cached(&inner, Duration::from_secs(60));
        let ks = keys(&["line_item:1", "advertiser:9"]);

        let first = store.get_many(&ks).await.unwrap();
        let second = store.get_many(&ks).await.unwrap();

        assert_eq!(first, vec![Some(value(1.0)), None]);
        assert_eq!(second, first);
        assert_eq!(
            inner.calls().len(),
            1,
            "the absent advertiser is cached too"
        );
        assert_eq!((store.hits(), store.misses()), (2, 2));
    }

    #[tokio::test]
    async fn entries_expire_after_the_ttl() {
        let inner = Arc::new(Recording::default());
        inner.store.insert("line_item:1".into(), value(1.0));
        let store = cached(&inner, Duration::from_millis(50));
        let ks = keys(&["line_item:1"]);

        store.get_many(&ks).await.unwrap();
        // Another server's write, invisible to this cache until the TTL passes.
        inner.store.insert("line_item:1".into(), value(2.0));
        assert_eq!(store.get_many(&ks).await.unwrap(), vec![Some(value(1.0))]);
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert_eq!(store.get_many(&ks).await.unwrap(), vec![Some(value(2.0))]);
        assert_eq!(inner.calls().len(), 2);
    }

    #[tokio::test]
    async fn user_and_device_keys_always_go_to_the_inner_store() {
        let inner = Arc::new(Recording::default());
        inner.store.insert("user:u1".into(), value(1.0));
        let store = cached(&inner, Duration::from_secs(60));
        let ks = keys(&["user:u1", "device:d1"]);

        store.get_many(&ks).await.unwrap();
        inner.store.insert("user:u1".into(), value(2.0));
        let again = store.get_many(&ks).await.unwrap();

        assert_eq!(again, vec![Some(value(2.0)), None]);
        assert_eq!(inner.calls(), vec![ks.clone(), ks]);
        assert_eq!((store.hits(), store.misses()), (0, 0));
    }

    #[tokio::test]
    async fn each_read_makes_at_most_one_inner_call_with_only_the_uncached_keys() {
        let inner = Arc::new(Recording::default());
        for i in 0..100 {
            inner
                .store
                .insert(format!("line_item:{i}"), value(i as f32));
        }
        let store = cached(&inner, Duration::from_secs(60));
        let warm: Vec<String> = (0..50).map(|i| format!("line_item:{i}")).collect();
        store.get_many(&warm).await.unwrap();

        let mut request = keys(&["user:u1", "device:d1", "content:c1"]);
        request.extend((0..100).map(|i| format!("line_item:{i}")));
        let got = store.get_many(&request).await.unwrap();

        let calls = inner.calls();
        assert_eq!(calls.len(), 2);
        let mut expected = keys(&["user:u1", "device:d1", "content:c1"]);
        expected.extend((50..100).map(|i| format!("line_item:{i}")));
        assert_eq!(calls[1], expected);
        assert_eq!(got.len(), request.len());
        for i in 0..100 {
            assert_eq!(got[3 + i], Some(value(i as f32)), "line_item:{i}");
        }
        assert!(store
            .get_many(&warm)
            .await
            .unwrap()
            .iter()
            .all(Option::is_some));
        assert_eq!(
            inner.calls().len(),
            2,
            "a fully cached read makes no inner call"
        );
    }

    #[tokio::test]
    async fn writes_go_through_and_refresh_the_cache() {
        let inner = Arc::new(Recording::default());
        let store = cached(&inner, Duration::from_secs(60));
        let ks = keys(&["line_item:1"]);
        assert_eq!(store.get_many(&ks).await.unwrap(), vec![None]);

        store.put("line_item:1".into(), value(3.0)).await.unwrap();

        assert_eq!(store.get_many(&ks).await.unwrap(), vec![Some(value(3.0))]);
        assert_eq!(
            inner.store.get_many(&ks).await.unwrap(),
            vec![Some(value(3.0))]
        );
        assert_eq!(
            inner.calls().len(),
            1,
            "the write replaced the cached absence"
        );
    }
}
