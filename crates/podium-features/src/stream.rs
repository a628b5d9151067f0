//! Streaming aggregation: events (JSON) are checked, folded into tiles per (entity key, feature),
//! and each touched entity's feature vector is written to an [`OnlineStore`] under
//! `"<entity>:<id>"`. Events arrive on a bus: an in-process channel by default, NATS JetStream
//! (durable pull consumer, ack after apply) when configured.
//!
//! The tile state lives in process memory: a consumer restarted within the process keeps it (and
//! JetStream's durable position makes it resume without loss), but a new process starts with
//! empty tiles; rebuilding them by replaying the stream's retained window is not done here.

use crate::definitions::{Definitions, Entity, EventField, EventType, FeatureKind, WindowSpec};
use crate::store::{OnlineStore, StoredValue};
use crate::tiles::{stable_hash, Admission, EventGate, Observation, TiledSeries};
use futures::StreamExt;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// A checked event.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// Unique id (dedupe key).
    pub id: String,
    /// Kind of event.
    pub kind: EventType,
    /// Event time, ms since the UTC epoch.
    pub ts_ms: i64,
    /// Entity ids, by entity; absent ones are `None`.
    pub ids: [Option<String>; 5],
    /// Numeric payload.
    pub value: Option<f64>,
}

/// Why an event was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// Not JSON, or `id` missing / not a string.
    Malformed,
    /// `type` is not one Podium knows.
    UnknownType,
    /// `ts_ms` missing, not an integer, or out of range.
    BadTimestamp,
    /// None of the entity ids its features are keyed by is present.
    MissingEntity,
    /// Behind the allowed lateness.
    Late,
    /// Already applied (same id).
    Duplicate,
}

#[derive(Deserialize)]
struct RawEvent {
    id: Option<serde_json::Value>,
    #[serde(rename = "type")]
    kind: Option<serde_json::Value>,
    ts_ms: Option<serde_json::Value>,
    user_id: Option<String>,
    device_id: Option<String>,
    line_item_id: Option<String>,
    advertiser_id: Option<String>,
    content_id: Option<String>,
    value: Option<f64>,
}

fn entity_index(e: Entity) -> usize {
    Entity::ALL.iter().position(|x| *x == e).expect("listed")
}

impl Event {
    /// Parses and checks one JSON event; never panics on any input.
    pub fn from_json(bytes: &[u8]) -> Result<Event, Rejection> {
        let raw: RawEvent = serde_json::from_slice(bytes).map_err(|_| Rejection::Malformed)?;
        let id = match raw.id {
            Some(serde_json::Value::String(s)) if !s.is_empty() => s,
            _ => return Err(Rejection::Malformed),
        };
        let kind = match raw.kind {
            Some(serde_json::Value::String(s)) => {
                EventType::parse(&s).ok_or(Rejection::UnknownType)?
            }
            _ => return Err(Rejection::UnknownType),
        };
        // Before 2000 or after 2200 is a unit mistake (seconds, µs), not an event time.
        let ts_ms = raw
            .ts_ms
            .and_then(|v| v.as_i64())
            .filter(|t| (946_684_800_000..7_258_118_400_000).contains(t))
            .ok_or(Rejection::BadTimestamp)?;
        Ok(Event {
            id,
            kind,
            ts_ms,
            ids: [
                raw.user_id,
                raw.device_id,
                raw.line_item_id,
                raw.advertiser_id,
                raw.content_id,
            ],
            value: raw.value.filter(|v| v.is_finite()),
        })
    }

    /// The id of this event for an entity, if present.
    pub fn entity_id(&self, e: Entity) -> Option<&str> {
        self.ids[entity_index(e)].as_deref()
    }

    fn observation(&self, field: Option<EventField>) -> Option<Observation> {
        let id = |e| {
            self.entity_id(e)
                .map(|s| Observation::Hash(stable_hash(s.as_bytes())))
        };
        match field {
            None => Some(Observation::Unit),
            Some(EventField::Value) => self.value.map(Observation::Number),
            Some(EventField::UserId) => id(Entity::User),
            Some(EventField::DeviceId) => id(Entity::Device),
            Some(EventField::LineItemId) => id(Entity::LineItem),
            Some(EventField::AdvertiserId) => id(Entity::Advertiser),
            Some(EventField::ContentId) => id(Entity::Content),
        }
    }
}

/// Counters of what happened to events, readable while the aggregator runs.
#[derive(Debug, Default)]
pub struct StreamStats {
    /// Events folded.
    pub applied: AtomicU64,
    /// Rejected: not JSON or no id.
    pub malformed: AtomicU64,
    /// Rejected: unknown type.
    pub unknown_type: AtomicU64,
    /// Rejected: bad or missing timestamp.
    pub bad_timestamp: AtomicU64,
    /// Rejected: no entity key its features need.
    pub missing_entity: AtomicU64,
    /// Rejected: too late.
    pub late: AtomicU64,
    /// Dropped: duplicate id (including bus redeliveries).
    pub duplicate: AtomicU64,
    /// Store writes that failed (retried at the next flush).
    pub store_errors: AtomicU64,
}

impl StreamStats {
    fn count(&self, r: Rejection) {
        let c = match r {
            Rejection::Malformed => &self.malformed,
            Rejection::UnknownType => &self.unknown_type,
            Rejection::BadTimestamp => &self.bad_timestamp,
            Rejection::MissingEntity => &self.missing_entity,
            Rejection::Late => &self.late,
            Rejection::Duplicate => &self.duplicate,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Reads one counter.
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// Folds events into tiles and writes feature vectors. Owned by one task (no locks).
pub struct Aggregator {
    defs: Arc<Definitions>,
    gate: EventGate,
    /// Per (entity, id): one series per feature of that entity (None for stored features).
    series: HashMap<(Entity, String), Vec<Option<TiledSeries>>>,
    dirty: BTreeSet<(Entity, String)>,
    stats: Arc<StreamStats>,
    /// Sees every well-formed event before it is folded (the serving side's event log).
    tap: Option<EventTap>,
    /// Sees each event once, when it is accepted (not late, not a duplicate): what counts
    /// impressions toward frequency caps.
    applied: Option<EventTap>,
    /// When a tile leaves a window, by stream time: the entities to rewrite then, so that an
    /// idle entity's windows slide in the store too (not only when it next has an event).
    expiries: BTreeMap<i64, Vec<(Entity, String)>>,
}

/// A callback given each well-formed event an aggregator reads.
pub type EventTap = Box<dyn FnMut(&Event) + Send>;

impl Aggregator {
    /// An aggregator over these definitions, accepting events up to `lateness` behind the newest.
    pub fn new(defs: Arc<Definitions>, lateness: Duration) -> Self {
        Self {
            defs,
            gate: EventGate::new(lateness.as_millis() as i64),
            series: HashMap::new(),
            dirty: BTreeSet::new(),
            stats: Arc::default(),
            tap: None,
            applied: None,
            expiries: BTreeMap::new(),
        }
    }

    /// Calls `tap` with every well-formed event read through [`apply_json`](Self::apply_json),
    /// duplicates and late ones included (a log of what the stream carried).
    pub fn with_tap(mut self, tap: EventTap) -> Self {
        self.tap = Some(tap);
        self
    }

    /// Calls `hook` with every event accepted, once per event id (duplicates and late events
    /// are not passed on).
    pub fn with_applied(mut self, hook: EventTap) -> Self {
        self.applied = Some(hook);
        self
    }

    /// The shared counters.
    pub fn stats(&self) -> Arc<StreamStats> {
        self.stats.clone()
    }

    /// The stream's clock: the newest event time accepted.
    pub fn now_ms(&self) -> Option<i64> {
        self.gate.max_seen()
    }

    /// Parses and folds one JSON event; rejections are counted.
    pub fn apply_json(&mut self, bytes: &[u8]) -> Result<(), Rejection> {
        let r = Event::from_json(bytes).and_then(|e| {
            if let Some(tap) = &mut self.tap {
                tap(&e);
            }
            self.apply(&e)
        });
        if let Err(r) = r {
            self.stats.count(r);
        }
        r
    }

    /// Folds one checked event (rejections are counted by [`Aggregator::apply_json`] only).
    pub fn apply(&mut self, e: &Event) -> Result<(), Rejection> {
        let defs = self.defs.clone();
        let wanted = |f: &crate::definitions::FeatureDef| match &f.kind {
            FeatureKind::Aggregation(w) if w.event == e.kind => Some(w.clone()),
            _ => None,
        };
        let relevant = defs.features().iter().filter(|f| wanted(f).is_some());
        let mut any_key = false;
        let mut any_feature = false;
        for f in relevant {
            any_feature = true;
            any_key |= e.entity_id(f.entity).is_some();
        }
        if any_feature && !any_key {
            return Err(Rejection::MissingEntity);
        }
        match self.gate.admit(&e.id, e.ts_ms) {
            Admission::Accepted => {}
            Admission::Late => return Err(Rejection::Late),
            Admission::Duplicate => return Err(Rejection::Duplicate),
        }
        if let Some(hook) = &mut self.applied {
            hook(e);
        }
        for entity in Entity::ALL {
            let Some(id) = e.entity_id(entity) else {
                continue;
            };
            let feats: Vec<_> = defs.of(entity).collect();
            if !feats.iter().any(|f| wanted(f).is_some()) {
                continue;
            }
            let key = (entity, id.to_owned());
            let series = self.series.entry(key.clone()).or_insert_with(|| {
                feats
                    .iter()
                    .map(|f| match &f.kind {
                        FeatureKind::Aggregation(w) => Some(new_series(w)),
                        FeatureKind::Stored => None,
                    })
                    .collect()
            });
            for (f, s) in feats.iter().zip(series.iter_mut()) {
                if let (Some(w), Some(s)) = (wanted(f), s.as_mut()) {
                    if let Some(obs) = e.observation(w.field) {
                        if let Some(leaves) = s.add(e.ts_ms, obs) {
                            self.expiries.entry(leaves).or_default().push(key.clone());
                        }
                    }
                }
            }
            self.dirty.insert(key);
        }
        self.stats.applied.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Whether any event for this entity has been folded: the online store holds a vector for it
    /// after the next flush. Offline consistency uses it to tell a default served for an entity
    /// nothing is known about from one served for an entity the store should have held.
    pub fn knows(&self, entity: Entity, id: &str) -> bool {
        self.series.contains_key(&(entity, id.to_owned()))
    }

    /// The aggregated features of one entity at time `t`, in definitions order; stored features
    /// (and aggregations with nothing known or stale beyond their ttl) read as their default.
    pub fn vector(&self, entity: Entity, id: &str, t: i64) -> Vec<f32> {
        let series = self.series.get(&(entity, id.to_owned()));
        self.defs
            .of(entity)
            .enumerate()
            .map(|(i, f)| {
                let s = series.and_then(|v| v[i].as_ref());
                let fresh = s
                    .and_then(TiledSeries::last_event_ts)
                    .is_some_and(|l| t - l <= f.ttl.as_millis() as i64);
                match s {
                    Some(s) if fresh => s.read(t).map_or(f.default, |x| x as f32),
                    _ => f.default,
                }
            })
            .collect()
    }

    /// Writes the vectors of entities touched since the last flush, at the stream's clock.
    /// Stored features keep the values already in the store. On a store error the entities stay
    /// pending for the next flush.
    pub async fn flush(&mut self, store: &dyn OnlineStore) -> Result<usize, crate::StoreError> {
        let Some(t) = self.now_ms() else {
            return Ok(0);
        };
        // Entities whose windows lost a tile by now are rewritten too, event or not.
        let later = self.expiries.split_off(&(t + 1));
        for (_, keys) in std::mem::replace(&mut self.expiries, later) {
            self.dirty
                .extend(keys.into_iter().filter(|k| self.series.contains_key(k)));
        }
        if self.dirty.is_empty() {
            return Ok(0);
        }
        let pending: Vec<_> = self.dirty.iter().cloned().collect();
        let keys: Vec<String> = pending
            .iter()
            .map(|(e, id)| format!("{}:{id}", e.as_str()))
            .collect();
        let existing = match store.get_many(&keys).await {
            Ok(v) => v,
            Err(err) => {
                self.stats.store_errors.fetch_add(1, Ordering::Relaxed);
                return Err(err);
            }
        };
        let mut writes = Vec::with_capacity(keys.len());
        for (((entity, id), key), old) in pending.iter().zip(keys).zip(existing) {
            let mut v = self.vector(*entity, id, t);
            if let Some(old) = old.filter(|o| o.values.len() == v.len()) {
                for (i, f) in self.defs.of(*entity).enumerate() {
                    if f.kind == FeatureKind::Stored {
                        v[i] = old.values[i];
                    }
                }
            }
            writes.push((key, StoredValue::new(v, t)));
        }
        if let Err(err) = store.put_many(writes).await {
            self.stats.store_errors.fetch_add(1, Ordering::Relaxed);
            return Err(err);
        }
        self.dirty.clear();
        Ok(pending.len())
    }
}

/// An entity kind and id.
type EntityKey = (Entity, String);

/// An aggregator's state on disk: its tiles, dedupe memory and scheduled rewrites, with the
/// feature names it was built for (a state from other definitions is refused).
#[derive(serde::Serialize, serde::Deserialize)]
struct SavedState {
    features: Vec<String>,
    gate: EventGate,
    series: Vec<(EntityKey, Vec<Option<TiledSeries>>)>,
    expiries: Vec<(i64, Vec<(Entity, String)>)>,
}

impl Aggregator {
    fn feature_names(&self) -> Vec<String> {
        self.defs
            .features()
            .iter()
            .map(|f| f.name.clone())
            .collect()
    }

    /// Writes the tiles, the dedupe memory and the scheduled rewrites to `path` (JSON, written
    /// to `path.tmp` and renamed), so that a restart continues every window where it was.
    /// Returns the entities saved.
    pub fn save_state(&self, path: &std::path::Path) -> Result<usize, String> {
        let state = SavedState {
            features: self.feature_names(),
            gate: self.gate.clone_state(),
            series: self
                .series
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            expiries: self.expiries.iter().map(|(t, v)| (*t, v.clone())).collect(),
        };
        let err = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
        let tmp = path.with_extension("tmp");
        let file = std::fs::File::create(&tmp).map_err(|e| err(&e))?;
        let mut w = std::io::BufWriter::new(file);
        serde_json::to_writer(&mut w, &state).map_err(|e| err(&e))?;
        let file = w.into_inner().map_err(|e| err(&e))?;
        file.sync_all().map_err(|e| err(&e))?;
        std::fs::rename(&tmp, path).map_err(|e| err(&e))?;
        Ok(state.series.len())
    }

    /// Restores a state [`save_state`](Self::save_state) wrote. Refuses (naming the file) one
    /// that cannot be read or was saved for other feature definitions.
    pub fn load_state(mut self, path: &std::path::Path) -> Result<Self, String> {
        let err = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
        let file = std::fs::File::open(path).map_err(|e| err(&e))?;
        let state: SavedState =
            serde_json::from_reader(std::io::BufReader::new(file)).map_err(|e| err(&e))?;
        if state.features != self.feature_names() {
            return Err(err(&"saved for other feature definitions"));
        }
        let widths: HashMap<Entity, usize> = Entity::ALL
            .into_iter()
            .map(|e| (e, self.defs.of(e).count()))
            .collect();
        if let Some(((e, id), _)) = state
            .series
            .iter()
            .find(|((e, _), v)| widths.get(e) != Some(&v.len()))
        {
            return Err(err(&format!(
                "{}:{id} has the wrong number of features",
                e.as_str()
            )));
        }
        self.gate = state.gate;
        self.series = state.series.into_iter().collect();
        self.expiries = state.expiries.into_iter().collect();
        Ok(self)
    }
}

fn new_series(w: &WindowSpec) -> TiledSeries {
    TiledSeries::new(
        w.aggregation,
        w.window.as_millis() as i64,
        w.tile.as_millis() as i64,
    )
}

/// The in-process bus's sending side: clone it to every producer.
pub type EventSender = mpsc::Sender<Vec<u8>>;

/// Runs the aggregator over an in-process channel until every sender is dropped, flushing to
/// `store` after each received batch; returns the aggregator.
pub async fn run_in_process(
    mut agg: Aggregator,
    mut rx: mpsc::Receiver<Vec<u8>>,
    store: Arc<dyn OnlineStore>,
) -> Aggregator {
    let mut batch = Vec::with_capacity(256);
    while rx.recv_many(&mut batch, 256).await > 0 {
        for bytes in batch.drain(..) {
            let _ = agg.apply_json(&bytes);
        }
        if let Err(e) = agg.flush(store.as_ref()).await {
            tracing::warn!(error = %e, "feature store write failed; retrying at the next batch");
        }
    }
    let _ = agg.flush(store.as_ref()).await;
    agg
}

/// As [`run_in_process`], until `stop` turns true (or every sender is dropped), also saving the
/// aggregator's state to `state` ([`Aggregator::save_state`]) after a batch when `every` has
/// passed since the last save, and once more at the end: a restart then continues every window.
pub async fn run_in_process_saving(
    mut agg: Aggregator,
    mut rx: mpsc::Receiver<Vec<u8>>,
    store: Arc<dyn OnlineStore>,
    state: std::path::PathBuf,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) -> Aggregator {
    let mut batch = Vec::with_capacity(256);
    let mut saved = std::time::Instant::now();
    let mut unsaved = false;
    let save = |agg: &Aggregator| {
        // Saving is file I/O and serialisation: keep it off the other tasks of this worker.
        let r = tokio::task::block_in_place(|| agg.save_state(&state));
        if let Err(e) = r {
            tracing::warn!(error = %e, "saving the aggregator state failed");
        }
    };
    while !*stop.borrow() {
        tokio::select! {
            n = rx.recv_many(&mut batch, 256) => {
                if n == 0 {
                    break;
                }
                for bytes in batch.drain(..) {
                    let _ = agg.apply_json(&bytes);
                }
                if let Err(e) = agg.flush(store.as_ref()).await {
                    tracing::warn!(error = %e, "feature store write failed; retrying at the next batch");
                }
                unsaved = true;
                if saved.elapsed() >= every {
                    save(&agg);
                    saved = std::time::Instant::now();
                    unsaved = false;
                }
            }
            _ = stop.changed() => {}
        }
    }
    let _ = agg.flush(store.as_ref()).await;
    if unsaved {
        save(&agg);
    }
    agg
}

/// Where to consume events from NATS JetStream.
#[derive(Clone, Debug)]
pub struct NatsConfig {
    /// Server URL, e.g. `nats://127.0.0.1:4222`.
    pub url: String,
    /// Stream name (created if missing).
    pub stream: String,
    /// Subject the events are published on.
    pub subject: String,
    /// Durable consumer name: its position survives consumer restarts.
    pub durable: String,
    /// Messages fetched per pull.
    pub batch: usize,
}

impl NatsConfig {
    /// A config with the usual names for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            stream: "PODIUM_EVENTS".into(),
            subject: "podium.events".into(),
            durable: "podium-features".into(),
            batch: 256,
        }
    }
}

/// A NATS failure while setting up the stream or consumer.
#[derive(Debug, thiserror::Error)]
#[error("nats {what}: {message}")]
pub struct NatsError {
    /// Which step failed.
    pub what: &'static str,
    /// The client's message.
    pub message: String,
}

async fn open_consumer(
    cfg: &NatsConfig,
) -> Result<async_nats::jetstream::consumer::PullConsumer, NatsError> {
    use async_nats::jetstream;
    let err = |what| {
        move |e: &dyn std::fmt::Display| NatsError {
            what,
            message: e.to_string(),
        }
    };
    let client = async_nats::connect(&cfg.url)
        .await
        .map_err(|e| err("connect")(&e))?;
    let js = jetstream::new(client);
    let stream = ensure_stream(&js, cfg).await?;
    stream
        .get_or_create_consumer(
            &cfg.durable,
            jetstream::consumer::pull::Config {
                durable_name: Some(cfg.durable.clone()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(30),
                // A server gone for good (a replaced pod) leaves its consumer behind; JetStream
                // removes it after a day without a pull.
                inactive_threshold: Duration::from_secs(86_400),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| err("consumer")(&e))
}

/// The event stream, created when missing: events are kept a week (longer than any feature
/// window a new server must rebuild from them), duplicates by `Nats-Msg-Id` dropped within two
/// minutes.
pub async fn ensure_stream(
    js: &async_nats::jetstream::Context,
    cfg: &NatsConfig,
) -> Result<async_nats::jetstream::stream::Stream, NatsError> {
    js.get_or_create_stream(async_nats::jetstream::stream::Config {
        name: cfg.stream.clone(),
        subjects: vec![cfg.subject.clone()],
        max_age: Duration::from_secs(7 * 86_400),
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .map_err(|e| NatsError {
        what: "stream",
        message: e.to_string(),
    })
}

/// Consumes events from JetStream until `stop` turns true, then returns the aggregator.
///
/// Each pulled batch is applied, flushed to the store, and only then acked, so a consumer that
/// stops (or dies) resumes from its durable position without losing events; an event applied but
/// not acked is redelivered and dropped as a duplicate by id. Stops are checked between batches,
/// so no message is left fetched and unacked. Connection and pull errors are logged and retried
/// with a back-off; the loop never ends on an error.
pub async fn run_nats(
    mut agg: Aggregator,
    cfg: NatsConfig,
    store: Arc<dyn OnlineStore>,
    mut stop: watch::Receiver<bool>,
) -> Aggregator {
    let mut backoff = Duration::from_millis(100);
    let mut consumer = None;
    while !*stop.borrow() {
        let c = match &consumer {
            Some(c) => c,
            None => match open_consumer(&cfg).await {
                Ok(c) => {
                    backoff = Duration::from_millis(100);
                    consumer.insert(c)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "feature stream: NATS not ready; retrying");
                    sleep_or_stop(&mut stop, backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            },
        };
        let batch = c
            .batch()
            .max_messages(cfg.batch)
            .expires(Duration::from_millis(500))
            .messages()
            .await;
        let mut batch = match batch {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "feature stream: pull failed; reopening");
                consumer = None;
                sleep_or_stop(&mut stop, backoff).await;
                continue;
            }
        };
        let mut msgs = Vec::new();
        while let Some(m) = batch.next().await {
            match m {
                Ok(m) => msgs.push(m),
                Err(e) => {
                    tracing::warn!(error = %e, "feature stream: message error");
                    break;
                }
            }
        }
        for m in &msgs {
            let _ = agg.apply_json(&m.payload);
        }
        let flushed = agg.flush(store.as_ref()).await;
        for m in &msgs {
            let ack = if flushed.is_ok() {
                m.ack().await
            } else {
                m.ack_with(async_nats::jetstream::AckKind::Nak(Some(backoff)))
                    .await
            };
            if let Err(e) = ack {
                // Unacked messages come back after ack_wait; dedupe drops them.
                tracing::warn!(error = %e, "feature stream: ack failed");
            }
        }
    }
    agg
}

async fn sleep_or_stop(stop: &mut watch::Receiver<bool>, d: Duration) {
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = stop.changed() => {}
    }
}
