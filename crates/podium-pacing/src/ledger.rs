//! The shared budget ledger: per budget key, how much has been handed out in leases
//! (`allocated`) and how much has been confirmed spent (`spent`).
//!
//! `allocate` is the one operation that must be atomic across a fleet: it never lets `allocated`
//! exceed the limit the caller passes, however many servers ask at once. Servers spend only from
//! what they were allocated (see [`crate::lease`]), so the fleet cannot overspend. The embedded
//! [`MemoryLedger`] serves one process; [`RedisLedger`] shares the ledger through Redis with a
//! Lua script per operation. Neither decides lease sizes nor knows about days: callers build the
//! keys per budget period ([`budget_key`]).

use async_trait::async_trait;
use dashmap::DashMap;
use podium_core::Micros;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;
use std::time::Duration;

/// The ledger could not answer.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum LedgerError {
    /// The shared store failed or did not answer in time; the message names the store and the
    /// operation.
    #[error("budget ledger unavailable: {0}")]
    Unavailable(String),
}

/// The ledger key of a budget period: `"{line_item}:{period}"`, the period being a local day's
/// key (`2026-11-27`, see [`crate::LocalDay::key`]) for a daily budget or `life` for a lifetime one.
pub fn budget_key(line_item: &str, period: Option<&crate::LocalDay>) -> String {
    match period {
        Some(day) => format!("{line_item}:{}", day.key),
        None => format!("{line_item}:life"),
    }
}

/// The shared counters of budget periods.
#[async_trait]
pub trait BudgetLedger: Send + Sync {
    /// Hands out up to `want` of the budget `key`, never letting its allocated total exceed
    /// `limit`; returns what was granted (0 ..= `want`).
    async fn allocate(&self, key: &str, limit: Micros, want: Micros)
        -> Result<Micros, LedgerError>;

    /// Gives back `amount` of a lease that will not be spent (allocated never goes below 0).
    async fn release(&self, key: &str, amount: Micros) -> Result<(), LedgerError>;

    /// Adds confirmed spend (the lease it came from stays allocated).
    async fn record_spent(&self, key: &str, amount: Micros) -> Result<(), LedgerError>;

    /// Confirmed spend of `key` across the fleet.
    async fn spent(&self, key: &str) -> Result<Micros, LedgerError>;

    /// Confirmed spend of each of `keys`, in order: the control loop reads every line item's
    /// each second, so a remote ledger answers them in one round trip.
    async fn spent_many(&self, keys: &[String]) -> Result<Vec<Micros>, LedgerError> {
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            out.push(self.spent(k).await?);
        }
        Ok(out)
    }

    /// What is allocated of `key`: spent plus leases outstanding.
    async fn allocated(&self, key: &str) -> Result<Micros, LedgerError>;
}

/// The embedded ledger: a concurrent map in this process.
#[derive(Default, Debug)]
pub struct MemoryLedger {
    /// (allocated, spent) per key; an entry's lock makes allocate atomic for that key.
    entries: DashMap<String, (i64, i64)>,
}

impl MemoryLedger {
    /// An empty ledger.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl BudgetLedger for MemoryLedger {
    async fn allocate(
        &self,
        key: &str,
        limit: Micros,
        want: Micros,
    ) -> Result<Micros, LedgerError> {
        let mut e = self.entries.entry(key.to_string()).or_default();
        let grant = want.0.min(limit.0 - e.0).max(0);
        e.0 += grant;
        Ok(Micros(grant))
    }

    async fn release(&self, key: &str, amount: Micros) -> Result<(), LedgerError> {
        if let Some(mut e) = self.entries.get_mut(key) {
            e.0 = (e.0 - amount.0.max(0)).max(0);
        }
        Ok(())
    }

    async fn record_spent(&self, key: &str, amount: Micros) -> Result<(), LedgerError> {
        self.entries.entry(key.to_string()).or_default().1 += amount.0.max(0);
        Ok(())
    }

    async fn spent(&self, key: &str) -> Result<Micros, LedgerError> {
        Ok(Micros(self.entries.get(key).map_or(0, |e| e.1)))
    }

    async fn allocated(&self, key: &str) -> Result<Micros, LedgerError> {
        Ok(Micros(self.entries.get(key).map_or(0, |e| e.0)))
    }
}

/// Grants `min(want, limit − allocated)` (not below 0) and adds it, atomically: Redis runs a
/// script without interleaving other commands, which is what keeps concurrent servers under the
/// limit. Amounts stay below 2^53 micros, exact in Lua's doubles.
const ALLOCATE: &str = r"
local allocated = tonumber(redis.call('GET', KEYS[1]) or '0')
local grant = math.min(tonumber(ARGV[2]), tonumber(ARGV[1]) - allocated)
if grant < 0 then grant = 0 end
if grant > 0 then redis.call('INCRBY', KEYS[1], grant) end
if tonumber(ARGV[3]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
return grant
";

/// Lowers allocated by `amount`, not below 0.
const RELEASE: &str = r"
local allocated = tonumber(redis.call('GET', KEYS[1]) or '0')
local left = allocated - tonumber(ARGV[1])
if left < 0 then left = 0 end
redis.call('SET', KEYS[1], left)
if tonumber(ARGV[2]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return left
";

/// Adds to spent.
const RECORD: &str = r"
local spent = redis.call('INCRBY', KEYS[1], ARGV[1])
if tonumber(ARGV[2]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return spent
";

/// Timeouts and key expiry of a [`RedisLedger`].
#[derive(Clone, Copy, Debug)]
pub struct RedisLedgerOptions {
    /// Most time to (re)connect.
    pub connect_timeout: Duration,
    /// Most time to wait for one reply.
    pub response_timeout: Duration,
    /// Keys expire this long after their last write (none: never); daily keys need not outlive
    /// reporting, e.g. 40 days. Lifetime keys need a ledger without expiry, or a long one.
    pub expiry: Option<Duration>,
}

impl Default for RedisLedgerOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_millis(250),
            response_timeout: Duration::from_millis(250),
            expiry: None,
        }
    }
}

/// The ledger in Redis: `podium:budget:{key}:allocated` and `podium:budget:{key}:spent`.
///
/// The braces make `{key}` a hash tag, so both counters of a key live in the same slot of a
/// Redis Cluster. Redis should persist (AOF): a restart that loses `allocated` would let the
/// fleet allocate the budget a second time. Operations are not retried here: a reply lost after
/// an `allocate` ran would grant twice; the caller's next refill tries again instead.
#[derive(Clone)]
pub struct RedisLedger {
    conn: ConnectionManager,
    shown: String,
    deadline: Duration,
    expiry_ms: i64,
    /// The allocate, release and record scripts.
    scripts: std::sync::Arc<(Script, Script, Script)>,
}

impl RedisLedger {
    /// Connects to `redis://host:port[/db]` with default timeouts; fails fast when the server
    /// does not answer.
    pub async fn connect(url: &str) -> Result<Self, LedgerError> {
        Self::connect_with(url, RedisLedgerOptions::default()).await
    }

    /// Connects with explicit timeouts and expiry.
    pub async fn connect_with(url: &str, options: RedisLedgerOptions) -> Result<Self, LedgerError> {
        let (conn, shown) = connect_manager(url, options.connect_timeout, options.response_timeout)
            .await
            .map_err(LedgerError::Unavailable)?;
        Ok(Self {
            conn,
            shown,
            deadline: options.connect_timeout + options.response_timeout,
            expiry_ms: options.expiry.map_or(0, |d| d.as_millis() as i64),
            scripts: std::sync::Arc::new((
                Script::new(ALLOCATE),
                Script::new(RELEASE),
                Script::new(RECORD),
            )),
        })
    }

    fn allocated_key(key: &str) -> String {
        format!("podium:budget:{{{key}}}:allocated")
    }

    fn spent_key(key: &str) -> String {
        format!("podium:budget:{{{key}}}:spent")
    }

    async fn run<T: redis::FromRedisValue>(
        &self,
        what: &str,
        key: &str,
        script: &Script,
        redis_key: String,
        args: &[i64],
    ) -> Result<T, LedgerError> {
        let mut conn = self.conn.clone();
        let mut invocation = script.key(redis_key);
        for &arg in args {
            invocation.arg(arg);
        }
        let call = invocation.invoke_async::<T>(&mut conn);
        self.finish(what, key, call).await
    }

    async fn finish<T>(
        &self,
        what: &str,
        key: &str,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, LedgerError> {
        match tokio::time::timeout(self.deadline, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(LedgerError::Unavailable(format!(
                "{what} {key} on {}: {e}",
                self.shown
            ))),
            Err(_) => Err(LedgerError::Unavailable(format!(
                "{what} {key} on {}: no answer within {:?}",
                self.shown, self.deadline
            ))),
        }
    }

    async fn get(&self, what: &str, key: &str, redis_key: String) -> Result<Micros, LedgerError> {
        let mut conn = self.conn.clone();
        let cmd = redis::cmd("GET").arg(redis_key).to_owned();
        let call = async move { cmd.query_async::<Option<i64>>(&mut conn).await };
        Ok(Micros(self.finish(what, key, call).await?.unwrap_or(0)))
    }

    /// Adds a positive `amount` to a counter with `script` (release or confirmed spend).
    async fn add(
        &self,
        what: &str,
        script: &Script,
        redis_key: String,
        key: &str,
        amount: Micros,
    ) -> Result<(), LedgerError> {
        if amount.0 <= 0 {
            return Ok(());
        }
        let _: i64 = self
            .run(what, key, script, redis_key, &[amount.0, self.expiry_ms])
            .await?;
        Ok(())
    }
}

#[async_trait]
impl BudgetLedger for RedisLedger {
    async fn allocate(
        &self,
        key: &str,
        limit: Micros,
        want: Micros,
    ) -> Result<Micros, LedgerError> {
        if want.0 <= 0 {
            return Ok(Micros::ZERO);
        }
        let scripts = self.scripts.clone();
        let args = [limit.0, want.0, self.expiry_ms];
        let granted: i64 = self
            .run("allocate", key, &scripts.0, Self::allocated_key(key), &args)
            .await?;
        Ok(Micros(granted))
    }

    async fn release(&self, key: &str, amount: Micros) -> Result<(), LedgerError> {
        let script = self.scripts.1.clone();
        self.add("release", &script, Self::allocated_key(key), key, amount)
            .await
    }

    async fn record_spent(&self, key: &str, amount: Micros) -> Result<(), LedgerError> {
        let script = self.scripts.2.clone();
        self.add("record_spent", &script, Self::spent_key(key), key, amount)
            .await
    }

    async fn spent(&self, key: &str) -> Result<Micros, LedgerError> {
        self.get("spent", key, Self::spent_key(key)).await
    }

    async fn spent_many(&self, keys: &[String]) -> Result<Vec<Micros>, LedgerError> {
        let mut out = Vec::with_capacity(keys.len());
        // MGET in chunks: one round trip per 1,000 keys rather than one per key.
        for chunk in keys.chunks(1000) {
            let mut conn = self.conn.clone();
            let mut cmd = redis::cmd("MGET");
            for k in chunk {
                cmd.arg(Self::spent_key(k));
            }
            let call = async move { cmd.query_async::<Vec<Option<i64>>>(&mut conn).await };
            let what = format!("{} keys", chunk.len());
            let values = self.finish("spent", &what, call).await?;
            out.extend(values.into_iter().map(|v| Micros(v.unwrap_or(0))));
        }
        Ok(out)
    }

    async fn allocated(&self, key: &str) -> Result<Micros, LedgerError> {
        self.get("allocated", key, Self::allocated_key(key)).await
    }
}

/// The URL without its password, for error messages.
/// A Redis connection manager for this crate's stores, with the URL as shown in messages
/// (password hidden). No retries inside the manager: a caller waits at most one attempt, and its
/// own next call (a tick or a batch later) is the retry. Fails fast when Redis does not answer.
pub(crate) async fn connect_manager(
    url: &str,
    connect_timeout: Duration,
    response_timeout: Duration,
) -> Result<(ConnectionManager, String), String> {
    let shown = redact(url);
    let client = redis::Client::open(url).map_err(|e| format!("connecting to {shown}: {e}"))?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(connect_timeout))
        .set_response_timeout(Some(response_timeout))
        .set_number_of_retries(0);
    let limit = 2 * (connect_timeout + response_timeout);
    let conn = tokio::time::timeout(limit, ConnectionManager::new_with_config(client, config))
        .await
        .map_err(|_| format!("connecting to {shown}: no answer within {limit:?}"))?
        .map_err(|e| format!("connecting to {shown}: {e}"))?;
    Ok((conn, shown))
}

fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***{}", &url[..scheme], &url[at..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_the_line_item_and_period() {
        let day = crate::local_day(1_795_780_800_000, crate::TimeZone::UTC);
        assert_eq!(budget_key("li-7", Some(&day)), "li-7:2026-11-27");
        assert_eq!(budget_key("li-7", None), "li-7:life");
        assert_eq!(
            RedisLedger::allocated_key("li-7:life"),
            "podium:budget:{li-7:life}:allocated"
        );
        assert_eq!(redact("redis://:pw@h:1"), "redis://***@h:1");
    }

    #[tokio::test]
    async fn memory_ledger_grants_up_to_the_limit() {
        let l = MemoryLedger::new();
        assert_eq!(
            l.allocate("k", Micros(100), Micros(60)).await,
            Ok(Micros(60))
        );
        assert_eq!(
            l.allocate("k", Micros(100), Micros(60)).await,
            Ok(Micros(40))
        );
        assert_eq!(l.allocate("k", Micros(100), Micros(1)).await, Ok(Micros(0)));
        l.release("k", Micros(30)).await.unwrap();
        assert_eq!(l.allocated("k").await, Ok(Micros(70)));
        // A limit lowered below what is allocated grants nothing.
        assert_eq!(l.allocate("k", Micros(50), Micros(10)).await, Ok(Micros(0)));
        l.record_spent("k", Micros(25)).await.unwrap();
        assert_eq!(l.spent("k").await, Ok(Micros(25)));
        assert_eq!(l.spent("other").await, Ok(Micros(0)));
    }
}
