//! The distributed online store: feature vectors in Redis, standalone or Redis Cluster.
//!
//! # Key layout
//!
//! The entity key `"<entity>:<id>"` is stored under `podium:f:{<entity>:<id>}`. The braces are a
//! Redis Cluster hash tag: the slot is computed from the entity key alone, so every key Podium
//! may later keep for one entity (under another `podium:<kind>:` prefix) lands in the same slot
//! and can be read or written together atomically, and the prefix can change without moving data
//! between slots.
//!
//! # One round trip per request
//!
//! Against a standalone Redis, [`RedisStore::get_many`](OnlineStore::get_many) is one `MGET` of
//! all of a request's keys and [`put_many`](OnlineStore::put_many) one pipeline of `SET`s: one
//! round trip each, whatever the number of keys. Against a cluster (`redis+cluster://` URLs) the
//! keys of one request hash to many slots, which a single `MGET` may not span; the cluster client
//! splits the `MGET` per slot, sends the parts to their nodes concurrently over its multiplexed
//! connections and reassembles the answers in key order: one round trip per node, in parallel.
//!
//! # Values
//!
//! A value is `as_of_ms` as an i64 then the features as f32s, all little-endian, with no other
//! framing: `8 + 4 × n` bytes. A value of any other length (written by something else, or
//! damaged) reads as missing and is counted ([`RedisStore::corrupt_values`]) rather than failing
//! the whole request.
//!
//! # Failures
//!
//! Connections are re-established by themselves (the redis crate's `ConnectionManager`, or the
//! cluster client's own reconnection). Every call has a short connect and response timeout and an
//! overall deadline, so a dead or hung Redis answers `Err` within that bound instead of hanging
//! the request; the caller (hydration) then falls back to defaults. TLS (`rediss://`) is not
//! built in.

use crate::store::{OnlineStore, StoreError, StoredValue};
use async_trait::async_trait;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisError, RedisFuture, RedisResult, Value};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Backend name in errors and health reports.
const BACKEND: &str = "redis";

/// Prefix of every feature key Podium writes to Redis.
const KEY_PREFIX: &str = "podium:f:";

/// How [`RedisStore`] connects and how long it waits.
#[derive(Clone, Debug)]
pub struct RedisOptions {
    /// Limit on establishing one TCP connection (and its handshake).
    pub connect_timeout: Duration,
    /// Limit on waiting for the answer to one command or pipeline.
    pub response_timeout: Duration,
}

impl Default for RedisOptions {
    /// 250 ms each: far above a healthy Redis's sub-millisecond answers, far below the time a
    /// caller can afford to wait on a dead one.
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_millis(250),
            response_timeout: Duration::from_millis(250),
        }
    }
}

/// An [`OnlineStore`] in Redis (standalone, or Redis Cluster with a `redis+cluster://` URL).
pub struct RedisStore {
    conn: Conn,
    /// The URL without its password, for errors.
    shown: String,
    /// Bound on one whole call, retry included: a call never outlives it.
    deadline: Duration,
    expiry: Option<Duration>,
    corrupt: AtomicU64,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field(
                "mode",
                &match self.conn {
                    Conn::Standalone(_) => "standalone",
                    Conn::Cluster(_) => "cluster",
                },
            )
            .field("url", &self.shown)
            .field("deadline", &self.deadline)
            .field("expiry", &self.expiry)
            .finish()
    }
}

impl RedisStore {
    /// Connects with [`RedisOptions::default`]. `url` is `redis://[:password@]host:port[/db]`
    /// for a standalone server or `redis+cluster://[:password@]host:port[,host:port…]` with
    /// one or more seed nodes of a cluster. Fails (fast) when the server does not answer.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(url, RedisOptions::default()).await
    }

    /// Connects with explicit timeouts; see [`RedisStore::connect`] for the URL forms.
    pub async fn connect_with(url: &str, options: RedisOptions) -> Result<Self, StoreError> {
        let shown = redact(url);
        let failed = |e: RedisError| store_error(format!("connecting to {shown}: {e}"));
        let conn = if let Some(rest) = url.strip_prefix("redis+cluster://") {
            let nodes = cluster_nodes(rest).map_err(|m| store_error(format!("{shown}: {m}")))?;
            let client = redis::cluster::ClusterClientBuilder::new(nodes)
                .connection_timeout(options.connect_timeout)
                .response_timeout(options.response_timeout)
                .retries(1)
                .build()
                .map_err(failed)?;
            let connecting = client.get_async_connection();
            let limit = options.connect_timeout + options.response_timeout;
            let conn = tokio::time::timeout(limit, connecting)
                .await
                .map_err(|_| {
                    store_error(format!("connecting to {shown}: no answer within {limit:?}"))
                })?
                .map_err(failed)?;
            Conn::Cluster(conn)
        } else if url.starts_with("rediss+cluster://") {
            return Err(store_error(format!(
                "{shown}: TLS is not built into this Podium; use redis+cluster:// on a private network"
            )));
        } else {
            let client = redis::Client::open(url).map_err(failed)?;
            // No retries inside the manager: a reconnect in progress would make every call wait
            // through its back-off. Instead each call that meets a broken connection starts one
            // fresh attempt (see `call`), so recovery is driven by traffic and never waits long.
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(options.connect_timeout))
                .set_response_timeout(Some(options.response_timeout))
                .set_number_of_retries(0);
            let manager = ConnectionManager::new_with_config(client, config)
                .await
                .map_err(failed)?;
            Conn::Standalone(manager)
        };
        Ok(Self {
            conn,
            shown,
            // A call may wait on one connection attempt and one command, twice (the retry).
            deadline: 2 * (options.connect_timeout + options.response_timeout),
            expiry: None,
            corrupt: AtomicU64::new(0),
        })
    }

    /// Makes every write expire after `ttl`, so that entities no longer written (ended line
    /// items, users gone quiet) age out of Redis instead of accumulating.
    pub fn with_expiry(mut self, ttl: Duration) -> Self {
        self.expiry = Some(ttl);
        self
    }

    /// Values read that were not of the encoded form (`8 + 4 × n` bytes) and so were read as
    /// missing, since this store was connected.
    pub fn corrupt_values(&self) -> u64 {
        self.corrupt.load(Ordering::Relaxed)
    }

    /// Runs one idempotent operation within the deadline. An operation that fails because the
    /// connection broke is tried once more: the failure has just started a reconnect, and
    /// waiting on it is what lets the first request after Redis comes back succeed.
    async fn call<T, F, Fut>(&self, what: &str, op: F) -> Result<T, StoreError>
    where
        F: Fn(Conn) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let attempts = async {
            match op(self.conn.clone()).await {
                Err(e) if is_connection_failure(&e) => op(self.conn.clone()).await,
                result => result,
            }
        };
        match tokio::time::timeout(self.deadline, attempts).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(store_error(format!("{what} on {}: {e}", self.shown))),
            Err(_) => Err(store_error(format!(
                "{what} on {}: no answer within {:?}",
                self.shown, self.deadline
            ))),
        }
    }

    fn decode(&self, key: &str, reply: Value) -> Option<StoredValue> {
        match reply {
            Value::Nil => None,
            Value::BulkString(bytes) => {
                let decoded = decode_value(&bytes);
                if decoded.is_none() {
                    self.corrupt.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(key, len = bytes.len(), "corrupt feature value in Redis");
                }
                decoded
            }
            other => {
                self.corrupt.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(key, reply = ?other, "unexpected reply for a feature value");
                None
            }
        }
    }
}

#[async_trait]
impl OnlineStore for RedisStore {
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<StoredValue>>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut mget = redis::cmd("MGET");
        for key in keys {
            mget.arg(redis_key(key));
        }
        let mget = &mget;
        let replies: Vec<Value> = self
            .call(
                "MGET",
                |mut c| async move { mget.query_async(&mut c).await },
            )
            .await?;
        if replies.len() != keys.len() {
            return Err(store_error(format!(
                "MGET of {} keys on {} answered {} values",
                keys.len(),
                self.shown,
                replies.len()
            )));
        }
        Ok(keys
            .iter()
            .zip(replies)
            .map(|(key, reply)| self.decode(key, reply))
            .collect())
    }

    async fn put_many(&self, entries: Vec<(String, StoredValue)>) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let expiry_ms = self.expiry.map(|t| t.as_millis().max(1) as u64);
        let set = |key: &str, value: &StoredValue| {
            let mut cmd = redis::cmd("SET");
            cmd.arg(redis_key(key)).arg(encode_value(value));
            if let Some(ms) = expiry_ms {
                cmd.arg("PX").arg(ms);
            }
            cmd
        };
        match &self.conn {
            Conn::Standalone(_) => {
                let mut pipe = redis::pipe();
                for (key, value) in &entries {
                    pipe.add_command(set(key, value)).ignore();
                }
                let pipe = &pipe;
                self.call("SET pipeline", |mut c| async move {
                    pipe.query_async::<()>(&mut c).await
                })
                .await
            }
            Conn::Cluster(_) => {
                // A cluster pipeline must stay within one slot; independent SETs on the
                // multiplexed cluster connection are pipelined per node all the same.
                let sets: Vec<Cmd> = entries.iter().map(|(k, v)| set(k, v)).collect();
                let sets = &sets;
                self.call("SET", |c| async move {
                    let writes = sets.iter().map(|cmd| {
                        let mut c = c.clone();
                        async move { cmd.query_async::<()>(&mut c).await }
                    });
                    futures::future::try_join_all(writes).await.map(drop)
                })
                .await
            }
        }
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let ping = redis::cmd("PING");
        let ping = &ping;
        self.call("PING", |mut c| async move {
            ping.query_async::<String>(&mut c).await
        })
        .await
        .map(drop)
    }

    fn backend(&self) -> &'static str {
        BACKEND
    }
}

/// The Redis key of an entity key: `podium:f:{<entity>:<id>}`.
pub(crate) fn redis_key(key: &str) -> String {
    let mut k = String::with_capacity(KEY_PREFIX.len() + key.len() + 2);
    k.push_str(KEY_PREFIX);
    k.push('{');
    k.push_str(key);
    k.push('}');
    k
}

/// `as_of_ms` (i64) then each value (f32), little-endian.
fn encode_value(value: &StoredValue) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(8 + 4 * value.values.len());
    bytes.extend_from_slice(&value.as_of_ms.to_le_bytes());
    for x in value.values.iter() {
        bytes.extend_from_slice(&x.to_le_bytes());
    }
    bytes
}

/// The inverse of [`encode_value`]; `None` for a length no encoded value has.
fn decode_value(bytes: &[u8]) -> Option<StoredValue> {
    let (as_of, values) = bytes.split_first_chunk::<8>()?;
    if values.len() % 4 != 0 {
        return None;
    }
    Some(StoredValue {
        as_of_ms: i64::from_le_bytes(*as_of),
        values: values
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("chunks of 4")))
            .collect(),
    })
}

/// Errors after which the connection is being replaced, so that one more try may succeed.
fn is_connection_failure(e: &RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal()
}

fn store_error(message: String) -> StoreError {
    StoreError {
        backend: BACKEND,
        message,
    }
}

/// The URL with any password replaced, fit for errors and logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

/// Seed-node URLs from the part of a `redis+cluster://` URL after the scheme.
fn cluster_nodes(rest: &str) -> Result<Vec<String>, String> {
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((user, hosts)) => (Some(user), hosts),
        None => (None, authority),
    };
    let nodes: Vec<String> = hosts
        .split(',')
        .filter(|h| !h.is_empty())
        .map(|h| match userinfo {
            Some(user) => format!("redis://{user}@{h}"),
            None => format!("redis://{h}"),
        })
        .collect();
    if nodes.is_empty() {
        return Err("a cluster URL needs at least one host:port".into());
    }
    Ok(nodes)
}

/// A connection of either kind; both are cheap handles onto shared multiplexed connections.
#[derive(Clone)]
enum Conn {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Standalone(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Standalone(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Standalone(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_hash_tagged_by_the_whole_entity_key() {
        assert_eq!(redis_key("line_item:42"), "podium:f:{line_item:42}");
    }

    #[test]
    fn values_round_trip_and_bad_lengths_decode_to_none() {
        let v = StoredValue::new(vec![1.5f32, -2.0, f32::MAX], 1_700_000_000_123);
        let bytes = encode_value(&v);
        assert_eq!(bytes.len(), 8 + 3 * 4);
        assert_eq!(decode_value(&bytes), Some(v));
        assert_eq!(
            decode_value(&7i64.to_le_bytes()),
            Some(StoredValue::new(Vec::<f32>::new(), 7))
        );
        assert_eq!(decode_value(&bytes[..bytes.len() - 1]), None);
        assert_eq!(decode_value(&bytes[..7]), None);
        assert_eq!(decode_value(b""), None);
    }

    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(redact("redis://:s3cret@h:6379/2"), "redis://***@h:6379/2");
        assert_eq!(redact("redis://h:6379"), "redis://h:6379");
    }

    #[test]
    fn cluster_urls_name_every_seed_node() {
        assert_eq!(
            cluster_nodes("a:7000,b:7001/").unwrap(),
            vec!["redis://a:7000", "redis://b:7001"]
        );
        assert_eq!(
            cluster_nodes(":pw@a:7000,b:7001").unwrap(),
            vec!["redis://:pw@a:7000", "redis://:pw@b:7001"]
        );
        assert!(cluster_nodes("").is_err());
    }
}
