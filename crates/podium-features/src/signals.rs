//! Real-time signal sources: remote services (HTTP with JSON, or gRPC) called on the hot path
//! beside the feature store, for values the store cannot hold (device and session state, content
//! context, fraud or brand-safety scores, a viewer's position in a live event).
//!
//! Every source of a request is called in parallel with the store read and shares the hydration
//! budget: whatever has not answered when the budget (or the source's own timeout) runs out is
//! served as its defaults, and counted. A source that keeps failing is skipped for a cool-down by
//! its circuit breaker, then probed again. Answers are cached per (source, key) for the source's
//! TTL and never served past their freshness bound. Calls run as tasks of their own, so an answer
//! that arrives after the request gave up still warms the cache; a per-source bound on calls in
//! flight keeps a stalled source from piling them up.
//!
//! Wire contracts (docs/features.md "Signal sources"):
//! - HTTP: `POST <url>` with a JSON object of the request fields the source names, answered by a
//!   2xx JSON object holding the features' fields (numbers or booleans; `null` or absent: the
//!   default) and optionally `as_of_ms`, when the values were true.
//! - gRPC: unary `podium.signals.v1.SignalSource/Fetch` (proto/podium/signals/v1/signals.proto):
//!   the fields as strings in, values as doubles out.

use crate::definitions::parse_duration;
use crate::store::now_ms;
use podium_core::AdRequest;
use serde::Deserialize;
use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, OnceCell, Semaphore};

/// How a source is called.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// `POST` a JSON object, read a JSON object.
    Http,
    /// Unary `podium.signals.v1.SignalSource/Fetch`.
    Grpc,
}

/// A request field a source may be sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestField {
    /// `request_id`.
    RequestId,
    /// `user.id`.
    UserId,
    /// `user.country`.
    Country,
    /// `user.region` (absent when the request has none).
    Region,
    /// `user.device`.
    Device,
    /// `user.segments`: an array in JSON, comma-separated in gRPC.
    Segments,
    /// `user.utc_offset_min`.
    UtcOffset,
    /// `content.id`.
    ContentId,
    /// `content.genre`.
    Genre,
    /// `content.live`.
    Live,
    /// `content.rating`.
    Rating,
    /// `content.event_id`.
    EventId,
}

impl RequestField {
    /// Every field, with its name in definitions.
    pub const ALL: [(&'static str, RequestField); 12] = [
        ("request_id", Self::RequestId),
        ("user.id", Self::UserId),
        ("user.country", Self::Country),
        ("user.region", Self::Region),
        ("user.device", Self::Device),
        ("user.segments", Self::Segments),
        ("user.utc_offset_min", Self::UtcOffset),
        ("content.id", Self::ContentId),
        ("content.genre", Self::Genre),
        ("content.live", Self::Live),
        ("content.rating", Self::Rating),
        ("content.event_id", Self::EventId),
    ];

    /// Parses a field's name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
    }

    /// The field's value in `req` as JSON; `None` when the request does not carry it.
    pub fn json(self, req: &AdRequest) -> Option<serde_json::Value> {
        use serde_json::Value;
        let s = |v: &str| Some(Value::String(v.to_owned()));
        match self {
            Self::RequestId => s(req.request_id.as_str()),
            Self::UserId => s(req.user.id.as_str()),
            Self::Country => s(&req.user.country),
            Self::Region => req.user.region.as_deref().and_then(s),
            Self::Device => s(req.user.device.as_str()),
            Self::Segments => Some(Value::from(req.user.segments.clone())),
            Self::UtcOffset => req.user.utc_offset_min.map(Value::from),
            Self::ContentId => s(req.content.id.as_str()),
            Self::Genre => s(&req.content.genre),
            Self::Live => Some(Value::Bool(req.content.live)),
            Self::Rating => req.content.rating.as_deref().and_then(s),
            Self::EventId => req.content.event_id.as_deref().and_then(s),
        }
    }

    /// The field's value in `req` as text (gRPC, cache keys); `None` when absent.
    pub fn text(self, req: &AdRequest) -> Option<String> {
        match self {
            Self::Segments => Some(req.user.segments.join(",")),
            Self::UtcOffset => req.user.utc_offset_min.map(|m| m.to_string()),
            Self::Live => Some(req.content.live.to_string()),
            _ => match self.json(req)? {
                serde_json::Value::String(s) => Some(s),
                other => Some(other.to_string()),
            },
        }
    }
}

/// A feature a source returns.
#[derive(Clone, Debug, PartialEq)]
pub struct SignalFeature {
    /// Name models refer to it by.
    pub name: String,
    /// Where the answer holds it: a top-level key, or a JSON pointer (`/a/b`) into an HTTP
    /// answer.
    pub field: String,
    /// Served when the source does not answer in time, fails, is skipped, or leaves it out.
    pub default: f32,
}

/// A source's circuit breaker settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BreakerConfig {
    /// Consecutive failed calls (errors, or no answer within the source's timeout) that open it.
    pub failures: u32,
    /// How long an open breaker skips the source before one probe call may close it again.
    pub cooldown: Duration,
}

/// One signal source, checked.
#[derive(Clone, Debug, PartialEq)]
pub struct SourceDef {
    /// Name in metrics, `/readyz` and the decisions' `degraded` notes.
    pub name: String,
    /// How it is called.
    pub protocol: Protocol,
    /// `http://host:port/path` (HTTP) or `http://host:port` (gRPC).
    pub url: String,
    /// The request fields sent: (name on the wire, field).
    pub fields: Vec<(String, RequestField)>,
    /// Longest a call may take; capped per request by what is left of the hydration budget.
    pub timeout: Duration,
    /// How long an answer is reused for the same key; `None`: every request calls.
    pub cache_ttl: Option<Duration>,
    /// Freshness bound of an answer that carries `as_of_ms`: older than this, it is never served.
    pub max_age: Option<Duration>,
    /// A second call is sent when the first has not answered after this long (idempotent
    /// sources only); the first answer wins.
    pub hedge_after: Option<Duration>,
    /// Circuit breaking.
    pub breaker: BreakerConfig,
    /// Most calls in flight at once; beyond it requests serve the defaults.
    pub max_in_flight: usize,
    /// The features it returns, in file order.
    pub features: Vec<SignalFeature>,
}

/// A source as written in the definitions file (`[[source]]`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSource {
    name: String,
    protocol: Protocol,
    url: String,
    #[serde(default)]
    fields: RawFields,
    timeout: String,
    #[serde(default)]
    cache_ttl: Option<String>,
    #[serde(default)]
    max_age: Option<String>,
    #[serde(default)]
    idempotent: bool,
    #[serde(default)]
    hedge_after: Option<String>,
    #[serde(default)]
    breaker_failures: Option<u32>,
    #[serde(default)]
    breaker_cooldown: Option<String>,
    #[serde(default)]
    max_in_flight: Option<usize>,
    #[serde(default, rename = "feature")]
    features: Vec<RawSignalFeature>,
}

/// `fields = ["user.id"]` sends each under its own name; `fields = { uid = "user.id" }` renames.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawFields {
    List(Vec<String>),
    Map(std::collections::BTreeMap<String, String>),
}

impl Default for RawFields {
    fn default() -> Self {
        Self::List(Vec::new())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSignalFeature {
    name: String,
    #[serde(default)]
    field: Option<String>,
    default: f32,
}

/// Consecutive failures that open a breaker unless the source says otherwise.
pub const DEFAULT_BREAKER_FAILURES: u32 = 5;
/// Cool-down of an open breaker unless the source says otherwise.
pub const DEFAULT_BREAKER_COOLDOWN: Duration = Duration::from_secs(5);
/// Calls in flight per source unless the source says otherwise.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 256;
/// Entries a source's cache holds at most.
const CACHE_CAPACITY: u64 = 200_000;

impl RawSource {
    /// Checks a source; errors name the field and say what is wrong.
    pub(crate) fn check(self) -> Result<SourceDef, (String, &'static str, String)> {
        let name = self.name.clone();
        let invalid = |field: &'static str, m: String| (name.clone(), field, m);
        if name.is_empty() {
            return Err(invalid("name", "is empty".into()));
        }
        match self.protocol {
            Protocol::Http | Protocol::Grpc => {
                let Some(rest) = self.url.strip_prefix("http://") else {
                    return Err(invalid(
                        "url",
                        format!(
                            "`{}` must start with http:// (TLS is not built in: put a local proxy in front)",
                            self.url
                        ),
                    ));
                };
                let host = rest.split('/').next().unwrap_or("");
                if host.is_empty() || host.parse::<http::uri::Authority>().is_err() {
                    return Err(invalid("url", format!("`{}` names no host", self.url)));
                }
                if self.protocol == Protocol::Grpc && rest.contains('/') && !rest.ends_with('/') {
                    return Err(invalid(
                        "url",
                        format!(
                            "`{}`: a gRPC source is `http://host:port`, the method is fixed",
                            self.url
                        ),
                    ));
                }
            }
        }
        let pairs: Vec<(String, String)> = match self.fields {
            RawFields::List(v) => v.into_iter().map(|f| (f.clone(), f)).collect(),
            RawFields::Map(m) => m.into_iter().collect(),
        };
        let mut fields = Vec::with_capacity(pairs.len());
        for (wire, f) in pairs {
            let Some(field) = RequestField::parse(&f) else {
                let known: Vec<&str> = RequestField::ALL.iter().map(|(n, _)| *n).collect();
                return Err(invalid(
                    "fields",
                    format!("unknown request field `{f}` (known: {})", known.join(", ")),
                ));
            };
            fields.push((wire, field));
        }
        let duration = |field: &'static str, v: &Option<String>| {
            v.as_deref()
                .map(parse_duration)
                .transpose()
                .map_err(|m| invalid(field, m))
        };
        let timeout = parse_duration(&self.timeout).map_err(|m| invalid("timeout", m))?;
        let cache_ttl = duration("cache_ttl", &self.cache_ttl)?;
        let max_age = duration("max_age", &self.max_age)?;
        let hedge_after = duration("hedge_after", &self.hedge_after)?;
        if hedge_after.is_some() && !self.idempotent {
            return Err(invalid(
                "hedge_after",
                "hedged calls are sent twice: only for a source marked `idempotent = true`".into(),
            ));
        }
        if hedge_after.is_some_and(|h| h >= timeout) {
            return Err(invalid(
                "hedge_after",
                "must be shorter than the timeout, or the hedge never goes".into(),
            ));
        }
        let cooldown = duration("breaker_cooldown", &self.breaker_cooldown)?
            .unwrap_or(DEFAULT_BREAKER_COOLDOWN);
        let failures = self.breaker_failures.unwrap_or(DEFAULT_BREAKER_FAILURES);
        if failures == 0 {
            return Err(invalid("breaker_failures", "must be at least 1".into()));
        }
        let max_in_flight = self.max_in_flight.unwrap_or(DEFAULT_MAX_IN_FLIGHT);
        if max_in_flight == 0 {
            return Err(invalid("max_in_flight", "must be at least 1".into()));
        }
        if self.features.is_empty() {
            return Err(invalid(
                "feature",
                "a source returns at least one feature ([[source.feature]])".into(),
            ));
        }
        let mut seen = HashSet::new();
        let mut features = Vec::with_capacity(self.features.len());
        for f in self.features {
            if f.name.is_empty() || !seen.insert(f.name.clone()) {
                return Err(invalid(
                    "feature.name",
                    format!("`{}` is empty or named twice", f.name),
                ));
            }
            if !f.default.is_finite() {
                return Err(invalid(
                    "feature.default",
                    format!("`{}`: not a finite number", f.name),
                ));
            }
            features.push(SignalFeature {
                field: f.field.unwrap_or_else(|| f.name.clone()),
                name: f.name,
                default: f.default,
            });
        }
        Ok(SourceDef {
            name: self.name,
            protocol: self.protocol,
            url: self.url.trim_end_matches('/').to_owned(),
            fields,
            timeout,
            cache_ttl,
            max_age,
            hedge_after,
            breaker: BreakerConfig { failures, cooldown },
            max_in_flight,
            features,
        })
    }
}

/// The gRPC contract, as prost messages (the same as `proto/podium/signals/v1/signals.proto`).
pub mod proto {
    /// What a source is asked.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct FetchRequest {
        /// The source's name in Podium's definitions.
        #[prost(string, tag = "1")]
        pub source: String,
        /// The request fields the source named, as text.
        #[prost(map = "string, string", tag = "2")]
        pub fields: std::collections::HashMap<String, String>,
    }

    /// What a source answers.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct FetchResponse {
        /// Feature fields and their values; one left out serves its default.
        #[prost(map = "string, double", tag = "1")]
        pub values: std::collections::HashMap<String, f64>,
        /// When the values were true (ms since the epoch); 0: now.
        #[prost(int64, tag = "2")]
        pub as_of_ms: i64,
    }

    /// The method's path.
    pub const FETCH_PATH: &str = "/podium.signals.v1.SignalSource/Fetch";
}

/// Why a source's defaults were served to a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fallback {
    /// No answer within the source's timeout or what was left of the hydration budget.
    Late,
    /// The call failed (connection, status, malformed answer).
    Error,
    /// The breaker is open: the source is skipped until its cool-down ends.
    Open,
    /// Too many calls to the source in flight.
    Shed,
    /// The answer was older than the source's freshness bound.
    Stale,
}

impl Fallback {
    /// A short name, for notes and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Late => "late",
            Self::Error => "error",
            Self::Open => "breaker open",
            Self::Shed => "too many calls in flight",
            Self::Stale => "stale",
        }
    }
}

/// What one source gave one request.
#[derive(Clone, Debug, PartialEq)]
pub struct SignalOutcome {
    /// The features' values in the source's feature order (defaults where not served).
    pub values: Vec<f32>,
    /// `None`: answered (fresh call or cache); else why the defaults were served.
    pub fallback: Option<Fallback>,
    /// Whether the values came from the cache.
    pub cached: bool,
}

/// Counters of one source since start.
#[derive(Debug, Default, serde::Serialize)]
pub struct SignalStats {
    /// Requests that asked the source.
    pub requests: AtomicU64,
    /// Requests served from the cache.
    pub cache_hits: AtomicU64,
    /// Calls made (hedges not counted).
    pub calls: AtomicU64,
    /// Calls answered in time and well-formed.
    pub answered: AtomicU64,
    /// Requests served defaults: no answer in time.
    pub late: AtomicU64,
    /// Requests served defaults: the call failed.
    pub errors: AtomicU64,
    /// Requests served defaults: breaker open.
    pub skipped: AtomicU64,
    /// Requests served defaults: too many calls in flight.
    pub shed: AtomicU64,
    /// Requests served defaults: the answer was past its freshness bound.
    pub stale: AtomicU64,
    /// Calls that failed or took longer than the source's timeout (what the breaker counts).
    pub call_failures: AtomicU64,
    /// Hedge calls sent.
    pub hedges: AtomicU64,
    /// Hedge calls that answered first.
    pub hedge_wins: AtomicU64,
    /// Times the breaker opened.
    pub breaker_opened: AtomicU64,
    /// Fields absent from answers (their defaults served).
    pub values_missing: AtomicU64,
}

/// A breaker's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls are skipped until the cool-down ends.
    Open,
    /// One probe call is in flight; the others are skipped until it answers.
    HalfOpen,
}

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

/// Consecutive-failure circuit breaker. Lock-free: a closed breaker costs one atomic load.
#[derive(Debug)]
struct Breaker {
    config: BreakerConfig,
    state: AtomicU8,
    failures: AtomicU32,
    /// When an open breaker may let a probe through, µs since `epoch`.
    open_until_us: AtomicU64,
    epoch: Instant,
}

/// Whether a call may go, and whether it is the half-open probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Admit {
    Call { probe: bool },
    Skip,
}

impl Breaker {
    fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            state: AtomicU8::new(CLOSED),
            failures: AtomicU32::new(0),
            open_until_us: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    fn admit(&self) -> Admit {
        match self.state.load(Ordering::Acquire) {
            CLOSED => Admit::Call { probe: false },
            OPEN if self.now_us() >= self.open_until_us.load(Ordering::Acquire) => {
                // One caller wins the probe; the rest keep skipping until it answers.
                match self.state.compare_exchange(
                    OPEN,
                    HALF_OPEN,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => Admit::Call { probe: true },
                    Err(_) => Admit::Skip,
                }
            }
            _ => Admit::Skip,
        }
    }

    /// Records a call's result; returns whether the breaker opened.
    fn record(&self, ok: bool, probe: bool) -> bool {
        if ok {
            self.failures.store(0, Ordering::Release);
            if probe {
                self.state.store(CLOSED, Ordering::Release);
            }
            return false;
        }
        let trip =
            probe || self.failures.fetch_add(1, Ordering::AcqRel) + 1 >= self.config.failures;
        if !trip {
            return false;
        }
        let from = if probe { HALF_OPEN } else { CLOSED };
        self.open_until_us.store(
            self.now_us() + self.config.cooldown.as_micros() as u64,
            Ordering::Release,
        );
        let opened = self
            .state
            .compare_exchange(from, OPEN, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if opened {
            self.failures.store(0, Ordering::Release);
        }
        opened
    }

    /// A probe that did not go: the next request may probe instead.
    fn release_probe(&self) {
        let _ = self
            .state
            .compare_exchange(HALF_OPEN, OPEN, Ordering::AcqRel, Ordering::Acquire);
    }

    fn state(&self) -> BreakerState {
        match self.state.load(Ordering::Acquire) {
            CLOSED => BreakerState::Closed,
            OPEN => BreakerState::Open,
            _ => BreakerState::HalfOpen,
        }
    }
}

/// A cached answer and the instant past which it must not be served.
#[derive(Debug)]
struct Cached {
    values: Vec<f32>,
    good_until: Instant,
}

/// What a call brings back: values per feature (NaN where the answer left one out), as-of.
struct Answer {
    values: Vec<f32>,
    as_of_ms: Option<i64>,
}

enum Client {
    Http(reqwest::Client),
    Grpc(Box<OnceCell<tonic::client::Grpc<tonic::transport::Channel>>>),
}

/// One source, ready to call.
pub struct SignalSource {
    def: SourceDef,
    client: Client,
    cache: Option<moka::sync::Cache<String, Arc<Cached>>>,
    breaker: Breaker,
    in_flight: Arc<Semaphore>,
    stats: SignalStats,
    last_error: Mutex<Option<(i64, String)>>,
}

/// A source's state for `/readyz` and metrics.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SourceStatus {
    /// Name.
    pub name: String,
    /// Protocol.
    pub protocol: Protocol,
    /// Address.
    pub url: String,
    /// Breaker state.
    pub breaker: BreakerState,
    /// The latest failure, with when (ms since the epoch).
    pub last_error: Option<String>,
    /// When the latest failure happened.
    pub last_error_ms: Option<i64>,
}

/// A call that failed, in words.
type CallError = String;

impl SignalSource {
    fn new(def: SourceDef) -> Result<Self, String> {
        let client = match def.protocol {
            Protocol::Http => Client::Http(
                reqwest::Client::builder()
                    .tcp_nodelay(true)
                    .pool_max_idle_per_host(def.max_in_flight)
                    .build()
                    .map_err(|e| format!("signal source `{}`: {e}", def.name))?,
            ),
            Protocol::Grpc => Client::Grpc(Box::default()),
        };
        let cache = def.cache_ttl.map(|ttl| {
            moka::sync::Cache::builder()
                .max_capacity(CACHE_CAPACITY)
                .time_to_live(ttl)
                .build()
        });
        Ok(Self {
            breaker: Breaker::new(def.breaker),
            in_flight: Arc::new(Semaphore::new(def.max_in_flight)),
            client,
            cache,
            stats: SignalStats::default(),
            last_error: Mutex::new(None),
            def,
        })
    }

    /// Its definition.
    pub fn def(&self) -> &SourceDef {
        &self.def
    }

    /// Its counters.
    pub fn stats(&self) -> &SignalStats {
        &self.stats
    }

    /// Its state.
    pub fn status(&self) -> SourceStatus {
        let last = self
            .last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        SourceStatus {
            name: self.def.name.clone(),
            protocol: self.def.protocol,
            url: self.def.url.clone(),
            breaker: self.breaker.state(),
            last_error_ms: last.as_ref().map(|l| l.0),
            last_error: last.map(|l| l.1),
        }
    }

    fn defaults(&self, why: Fallback) -> SignalOutcome {
        SignalOutcome {
            values: self.def.features.iter().map(|f| f.default).collect(),
            fallback: Some(why),
            cached: false,
        }
    }

    /// The values to serve from an answer's raw values (NaN: the default).
    fn served(&self, raw: &[f32], cached: bool) -> SignalOutcome {
        SignalOutcome {
            values: raw
                .iter()
                .zip(&self.def.features)
                .map(|(&v, f)| if v.is_nan() { f.default } else { v })
                .collect(),
            fallback: None,
            cached,
        }
    }

    fn key(&self, req: &AdRequest) -> String {
        let mut k = String::new();
        for (_, f) in &self.def.fields {
            if let Some(v) = f.text(req) {
                k.push_str(&v);
            }
            k.push('\u{1f}');
        }
        k
    }

    /// Serves one request: from the cache, or a call awaited at most `wait`.
    async fn fetch(self: &Arc<Self>, req: &AdRequest, wait: Duration) -> SignalOutcome {
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let key = self.cache.as_ref().map(|_| self.key(req));
        if let (Some(cache), Some(key)) = (&self.cache, &key) {
            if let Some(hit) = cache.get(key) {
                if hit.good_until > Instant::now() {
                    self.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
                    return self.served(&hit.values, true);
                }
                cache.invalidate(key);
            }
        }
        if wait.is_zero() {
            // No time left: a call would only add load.
            self.stats.late.fetch_add(1, Ordering::Relaxed);
            return self.defaults(Fallback::Late);
        }
        let Admit::Call { probe } = self.breaker.admit() else {
            self.stats.skipped.fetch_add(1, Ordering::Relaxed);
            return self.defaults(Fallback::Open);
        };
        let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
            if probe {
                self.breaker.release_probe();
            }
            self.stats.shed.fetch_add(1, Ordering::Relaxed);
            return self.defaults(Fallback::Shed);
        };
        self.stats.calls.fetch_add(1, Ordering::Relaxed);
        // The call is a task of its own: when this request stops waiting, a late answer still
        // reaches the cache and the breaker.
        let (tx, rx) = oneshot::channel();
        let me = self.clone();
        let body = self.body(req);
        tokio::spawn(async move {
            let started = Instant::now();
            let result = match tokio::time::timeout(me.def.timeout, me.call_hedged(&body)).await {
                Ok(r) => r,
                Err(_) => Err(format!(
                    "no answer within the source's timeout of {} ms",
                    me.def.timeout.as_millis()
                )),
            };
            drop(permit);
            let ok = result.is_ok();
            if me.breaker.record(ok, probe) {
                me.stats.breaker_opened.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(source = %me.def.name, cooldown_ms = me.def.breaker.cooldown.as_millis() as u64, "signal source breaker opened");
            }
            let outcome = match result {
                Ok(answer) => me.keep(answer, key, started),
                Err(e) => {
                    me.stats.call_failures.fetch_add(1, Ordering::Relaxed);
                    *me.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some((now_ms(), e));
                    Err(Fallback::Error)
                }
            };
            let _ = tx.send(outcome);
        });
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(Ok(values))) => {
                self.stats.answered.fetch_add(1, Ordering::Relaxed);
                self.served(&values, false)
            }
            Ok(Ok(Err(Fallback::Stale))) => {
                self.stats.stale.fetch_add(1, Ordering::Relaxed);
                self.defaults(Fallback::Stale)
            }
            Ok(Ok(Err(why))) => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                self.defaults(why)
            }
            // A task that vanished (runtime shutting down) is as good as late.
            Ok(Err(_)) | Err(_) => {
                self.stats.late.fetch_add(1, Ordering::Relaxed);
                self.defaults(Fallback::Late)
            }
        }
    }

    /// Judges an answer's freshness and caches it; the raw values to serve.
    fn keep(
        &self,
        answer: Answer,
        key: Option<String>,
        started: Instant,
    ) -> Result<Vec<f32>, Fallback> {
        let missing = answer.values.iter().filter(|v| v.is_nan()).count();
        self.stats
            .values_missing
            .fetch_add(missing as u64, Ordering::Relaxed);
        // Time left before the values pass their freshness bound, from when they were asked.
        let left = match (self.def.max_age, answer.as_of_ms) {
            (Some(max), Some(as_of)) => {
                let age = now_ms().saturating_sub(as_of).max(0) as u64;
                let max = max.as_millis() as u64;
                if age > max {
                    return Err(Fallback::Stale);
                }
                Some(Duration::from_millis(max - age))
            }
            _ => None,
        };
        if let (Some(cache), Some(key), Some(ttl)) = (&self.cache, key, self.def.cache_ttl) {
            let life = left.map_or(ttl, |l| l.min(ttl));
            cache.insert(
                key,
                Arc::new(Cached {
                    values: answer.values.clone(),
                    good_until: started + life,
                }),
            );
        }
        Ok(answer.values)
    }

    fn body(&self, req: &AdRequest) -> Body {
        match self.def.protocol {
            Protocol::Http => {
                let mut m = serde_json::Map::with_capacity(self.def.fields.len());
                for (wire, f) in &self.def.fields {
                    if let Some(v) = f.json(req) {
                        m.insert(wire.clone(), v);
                    }
                }
                Body::Json(serde_json::Value::Object(m).to_string())
            }
            Protocol::Grpc => Body::Grpc(proto::FetchRequest {
                source: self.def.name.clone(),
                fields: self
                    .def
                    .fields
                    .iter()
                    .filter_map(|(wire, f)| Some((wire.clone(), f.text(req)?)))
                    .collect(),
            }),
        }
    }

    /// One call, or with hedging two: the first answer wins; a failure waits for the other.
    async fn call_hedged(&self, body: &Body) -> Result<Answer, CallError> {
        let Some(after) = self.def.hedge_after else {
            return self.call(body).await;
        };
        let first = self.call(body);
        tokio::pin!(first);
        tokio::select! {
            r = &mut first => return r,
            _ = tokio::time::sleep(after) => {}
        }
        self.stats.hedges.fetch_add(1, Ordering::Relaxed);
        let second = self.call(body);
        tokio::pin!(second);
        tokio::select! {
            r = &mut first => match r {
                Ok(a) => Ok(a),
                Err(_) => second.await,
            },
            r = &mut second => match r {
                Ok(a) => {
                    self.stats.hedge_wins.fetch_add(1, Ordering::Relaxed);
                    Ok(a)
                }
                Err(_) => first.await,
            },
        }
    }

    async fn call(&self, body: &Body) -> Result<Answer, CallError> {
        match (&self.client, body) {
            (Client::Http(client), Body::Json(json)) => {
                let resp = client
                    .post(&self.def.url)
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .body(json.clone())
                    .send()
                    .await
                    .map_err(|e| format!("POST {}: {}", self.def.url, error_chain(&e)))?;
                let status = resp.status();
                let bytes = resp
                    .bytes()
                    .await
                    .map_err(|e| format!("POST {}: reading the answer: {e}", self.def.url))?;
                if !status.is_success() {
                    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned();
                    return Err(format!("POST {}: HTTP {status}: {text}", self.def.url));
                }
                self.read_json(&bytes)
            }
            (Client::Grpc(cell), Body::Grpc(msg)) => {
                let grpc = cell
                    .get_or_try_init(|| async {
                        let endpoint =
                            tonic::transport::Endpoint::from_shared(self.def.url.clone())
                                .map_err(|e| format!("{}: {e}", self.def.url))?
                                .tcp_nodelay(true);
                        Ok::<_, CallError>(tonic::client::Grpc::new(endpoint.connect_lazy()))
                    })
                    .await?;
                let mut grpc = grpc.clone();
                grpc.ready()
                    .await
                    .map_err(|e| format!("gRPC {}: not ready: {e}", self.def.url))?;
                let codec =
                    tonic_prost::ProstCodec::<proto::FetchRequest, proto::FetchResponse>::default();
                let path = http::uri::PathAndQuery::from_static(proto::FETCH_PATH);
                let mut request = tonic::Request::new(msg.clone());
                // `grpc-timeout`: the source may give up when Podium will have.
                request.set_timeout(self.def.timeout);
                let resp = grpc
                    .unary(request, path, codec)
                    .await
                    .map_err(|s| format!("gRPC {}: {:?}: {}", self.def.url, s.code(), s.message()))?
                    .into_inner();
                let values = self
                    .def
                    .features
                    .iter()
                    .map(|f| resp.values.get(&f.field).map_or(f32::NAN, |&v| v as f32))
                    .collect();
                Ok(Answer {
                    values,
                    as_of_ms: (resp.as_of_ms != 0).then_some(resp.as_of_ms),
                })
            }
            _ => Err("internal: the body does not match the protocol".into()),
        }
    }

    fn read_json(&self, bytes: &[u8]) -> Result<Answer, CallError> {
        let v: serde_json::Value = serde_json::from_slice(bytes)
            .map_err(|e| format!("POST {}: the answer is not JSON: {e}", self.def.url))?;
        if !v.is_object() {
            return Err(format!(
                "POST {}: the answer is not a JSON object",
                self.def.url
            ));
        }
        let mut values = Vec::with_capacity(self.def.features.len());
        for f in &self.def.features {
            let x = if f.field.starts_with('/') {
                v.pointer(&f.field)
            } else {
                v.get(&f.field)
            };
            values.push(match x {
                None | Some(serde_json::Value::Null) => f32::NAN,
                Some(serde_json::Value::Bool(b)) => f32::from(u8::from(*b)),
                Some(serde_json::Value::Number(n)) => n.as_f64().map_or(f32::NAN, |x| x as f32),
                Some(other) => {
                    return Err(format!(
                        "POST {}: field `{}` is {other}, not a number",
                        self.def.url, f.field
                    ))
                }
            });
        }
        let as_of_ms = match v.get("as_of_ms") {
            None | Some(serde_json::Value::Null) => None,
            Some(x) => Some(x.as_i64().ok_or_else(|| {
                format!("POST {}: `as_of_ms` is {x}, not an integer", self.def.url)
            })?),
        };
        Ok(Answer { values, as_of_ms })
    }
}

enum Body {
    Json(String),
    Grpc(proto::FetchRequest),
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Every signal source of a feature space.
#[derive(Clone, Default)]
pub struct Signals {
    sources: Vec<Arc<SignalSource>>,
}

impl std::fmt::Debug for Signals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.sources.iter().map(|s| &s.def.name))
            .finish()
    }
}

impl Signals {
    /// Clients for these sources (connections open on first use).
    pub fn new(defs: &[SourceDef]) -> Result<Self, String> {
        let sources = defs
            .iter()
            .cloned()
            .map(|d| SignalSource::new(d).map(Arc::new))
            .collect::<Result<_, _>>()?;
        Ok(Self { sources })
    }

    /// Whether there is any source.
    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    /// The sources, in definitions order.
    pub fn sources(&self) -> &[Arc<SignalSource>] {
        &self.sources
    }

    /// Every source's values for one request, in definitions order; no source is waited on
    /// longer than `budget` (nor its own timeout).
    pub async fn fetch(&self, req: &AdRequest, budget: Duration) -> Vec<SignalOutcome> {
        let calls = self
            .sources
            .iter()
            .map(|s| s.fetch(req, s.def.timeout.min(budget)));
        futures::future::join_all(calls).await
    }
}

/// Checks the sources of a definitions file against each other and the file's features.
pub(crate) fn check_sources(
    raw: Vec<RawSource>,
    feature_names: &HashSet<String>,
    file: &Path,
) -> Result<Vec<SourceDef>, crate::definitions::DefinitionError> {
    let mut out: Vec<SourceDef> = Vec::with_capacity(raw.len());
    let mut names: HashSet<String> = feature_names.clone();
    for r in raw {
        let def = r.check().map_err(|(source, field, message)| {
            crate::definitions::DefinitionError::Source {
                file: file.to_owned(),
                source_name: source,
                field,
                message,
            }
        })?;
        let invalid =
            |field: &'static str, message: String| crate::definitions::DefinitionError::Source {
                file: file.to_owned(),
                source_name: def.name.clone(),
                field,
                message,
            };
        if out.iter().any(|d| d.name == def.name) {
            return Err(invalid("name", "is defined twice".into()));
        }
        for f in &def.features {
            if !names.insert(f.name.clone()) {
                return Err(invalid(
                    "feature.name",
                    format!("`{}` is defined twice in the file", f.name),
                ));
            }
        }
        out.push(def);
    }
    Ok(out)
}
