//! Hydration: fetch a request's stored features in one batched read under a deadline, derive its
//! context features, and lay both out with the candidates' features as a column-major frame.

use crate::definitions::Entity;
use crate::signals::{Fallback, Signals};
use crate::space::{FeatureSpace, Source};
use crate::store::{now_ms, OnlineStore, StoredValue};
use arc_swap::ArcSwap;
use podium_core::{AdRequest, Device, FeatureFrame};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A context feature, parsed from its name once when the hydrator is built.
#[derive(Clone, Debug, PartialEq)]
enum ContextFeature {
    DeviceIs(Device),
    Live,
    GenreIs(String),
    CountryIs(String),
    Breaks,
}

impl ContextFeature {
    fn parse(name: &str) -> Option<Self> {
        if name == "ctx_live" {
            return Some(Self::Live);
        }
        if name == "ctx_breaks" {
            return Some(Self::Breaks);
        }
        if let Some(d) = name.strip_prefix("ctx_device_") {
            return Device::ALL
                .into_iter()
                .find(|x| x.as_str() == d)
                .map(Self::DeviceIs);
        }
        if let Some(g) = name.strip_prefix("ctx_genre_") {
            return Some(Self::GenreIs(g.to_string()));
        }
        if let Some(c) = name.strip_prefix("ctx_country_") {
            return Some(Self::CountryIs(c.to_ascii_uppercase()));
        }
        None
    }

    fn value(&self, req: &AdRequest) -> f32 {
        let flag = |b: bool| if b { 1.0 } else { 0.0 };
        match self {
            Self::DeviceIs(d) => flag(req.user.device == *d),
            Self::Live => flag(req.content.live),
            Self::GenreIs(g) => flag(req.content.genre == *g),
            Self::CountryIs(c) => flag(req.user.country == *c),
            Self::Breaks => req.breaks.len() as f32,
        }
    }
}

/// A context feature name the hydrator cannot derive from a request.
#[derive(Debug, thiserror::Error)]
#[error("context feature {0:?} is not derivable from a request (known: ctx_live, ctx_breaks, ctx_device_*, ctx_genre_*, ctx_country_*)")]
pub struct UnknownContextFeature(pub String);

/// The stored entities a candidate brings: its line item and its advertiser.
#[derive(Clone, Copy, Debug)]
pub struct CandidateKeys<'a> {
    /// The caller's handle for the candidate (e.g. its index in the marketplace).
    pub handle: u32,
    /// Line item id.
    pub line_item: &'a str,
    /// Advertiser id.
    pub advertiser: &'a str,
}

/// What was served for one stored entity: the values given to the models, in
/// `names` order, and the as-of time of the stored vector they came from.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ServedEntity {
    /// Entity kind.
    pub entity: Entity,
    /// Entity id.
    pub id: String,
    /// As-of time of the stored vector served; `None` when the defaults were served (unknown
    /// entity, store error or timeout).
    pub as_of_ms: Option<i64>,
    /// The features' names, in `values` order (shared by every entity of the kind).
    pub names: Arc<[String]>,
    /// Per feature: the value served, and whether it was the stored value (`false`: default,
    /// because absent or older than its ttl).
    pub values: Vec<(f32, bool)>,
}

/// The feature values of one request: request-level columns, and the candidate table pinned when
/// it was hydrated.
#[derive(Clone, Debug)]
pub struct Hydrated {
    /// Context then request-level stored values, in column order.
    pub request_values: Vec<f32>,
    /// Whether the store held the viewer.
    pub user_found: bool,
    /// Set when the fetch failed or ran out of time and defaults were served instead.
    pub degraded: Option<String>,
    /// The request's own stored entities (viewer, content), with what was served for each.
    pub served: Vec<ServedEntity>,
    /// Wall-clock time of the fetch (ms since the epoch): freshness was judged against it.
    pub at_ms: i64,
    /// The signal sources that served their defaults to this request, and why.
    pub signal_fallbacks: Vec<(Arc<str>, Fallback)>,
    table: Arc<CandidateTable>,
}

/// Counters of hydration outcomes since start.
#[derive(Debug, Default, serde::Serialize)]
pub struct HydrationStats {
    /// Requests hydrated.
    pub requests: AtomicU64,
    /// Fetches that failed (store error): defaults served.
    pub store_errors: AtomicU64,
    /// Fetches that ran out of time: defaults served.
    pub timeouts: AtomicU64,
    /// Entities asked for.
    pub entities: AtomicU64,
    /// Entities the store did not hold.
    pub entities_missing: AtomicU64,
    /// Feature values found but older than their ttl, served as their default.
    pub values_stale: AtomicU64,
    /// Bulk reads of every candidate's line item and advertiser.
    pub candidate_refreshes: AtomicU64,
    /// Bulk reads that failed (the previous table kept serving).
    pub candidate_refresh_errors: AtomicU64,
}

/// One stored entity's columns: (column, slot in the stored vector, default, ttl in ms).
#[derive(Clone, Debug)]
struct Plan {
    entity: Entity,
    cols: Vec<(usize, usize, f32, Option<i64>)>,
    names: Arc<[String]>,
}

impl Plan {
    fn of(space: &FeatureSpace, entity: Entity) -> Option<Self> {
        let cols: Vec<_> = space
            .of(Source::Stored(entity))
            .map(|(c, s)| {
                (
                    c,
                    space.slot(c),
                    s.default,
                    s.ttl.map(|t| t.as_millis() as i64),
                )
            })
            .collect();
        let names = cols
            .iter()
            .map(|c| space.specs()[c.0].name.clone())
            .collect();
        (!cols.is_empty()).then_some(Self {
            entity,
            cols,
            names,
        })
    }

    /// The served values of one entity from its stored vector (if any) at `now`, counting stale
    /// values.
    fn serve(
        &self,
        id: &str,
        stored: Option<&StoredValue>,
        now: i64,
        stale: &mut u64,
    ) -> ServedEntity {
        let values = self
            .cols
            .iter()
            .map(|&(_, slot, default, ttl)| {
                let found = stored.and_then(|v| Some((v.values.get(slot).copied()?, v.as_of_ms)));
                let served = fresh(found, default, ttl, now);
                *stale += u64::from(is_stale(found, ttl, now));
                served
            })
            .collect();
        ServedEntity {
            entity: self.entity,
            id: id.to_owned(),
            as_of_ms: stored.map(|v| v.as_of_ms),
            names: self.names.clone(),
            values,
        }
    }

    /// The stored values in column order (NaN where absent), without judging freshness.
    fn raw(&self, stored: Option<&StoredValue>, out: &mut Vec<f32>) {
        out.extend(self.cols.iter().map(|&(_, slot, _, _)| {
            stored
                .and_then(|v| v.values.get(slot).copied())
                .unwrap_or(f32::NAN)
        }));
    }
}

/// Every candidate's stored line-item and advertiser features, read in one bulk `get_many` and
/// refreshed in the background. These entities change slowly and a request has a thousand of
/// them, so looking each up per request would cost more than the whole rest of hydration; the
/// table bounds their staleness by the refresh interval, and each value's ttl is still judged at
/// request time against its as-of time.
#[derive(Debug, Default)]
pub struct CandidateTable {
    /// Row `h` (by candidate handle), width = the candidate stored columns: raw values, NaN where
    /// the store held none.
    values: Vec<f32>,
    /// Per handle: as-of of its line item's and its advertiser's vectors (`i64::MIN`: absent).
    as_of: Vec<(i64, i64)>,
    /// Per handle: (line item id, advertiser id), for the feature log.
    ids: Vec<(Arc<str>, Arc<str>)>,
    loaded: Option<Instant>,
}

/// Fetches a request's stored features and builds frames for one feature space.
pub struct Hydrator {
    space: Arc<FeatureSpace>,
    store: Arc<dyn OnlineStore>,
    context: Vec<(usize, ContextFeature)>,
    request_width: usize,
    user: Option<Plan>,
    content: Option<Plan>,
    line_item: Option<Plan>,
    advertiser: Option<Plan>,
    /// Per-candidate stored columns in table order (line item's, then advertiser's): (column,
    /// from the advertiser, default, ttl ms).
    candidate_stored: Vec<(usize, bool, f32, Option<i64>)>,
    candidate_columns: Vec<(usize, usize)>,
    table: ArcSwap<CandidateTable>,
    /// Real-time signal sources, and per source the columns of its features (in its order).
    signals: Signals,
    signal_cols: Vec<(Arc<str>, Vec<usize>)>,
    refreshing: AtomicBool,
    refresh_every: Duration,
    stats: Arc<HydrationStats>,
}

/// A space the hydrator cannot serve.
#[derive(Debug, thiserror::Error)]
pub enum SpaceError {
    /// A context feature name the hydrator cannot derive from a request.
    #[error("context feature {0:?} is not derivable from a request (known: ctx_live, ctx_breaks, ctx_device_*, ctx_genre_*, ctx_country_*)")]
    UnknownContextFeature(String),
    /// Features keyed by an entity whose id requests do not carry.
    #[error("feature {0:?} is keyed by the device, and requests carry no device id; key it by the user instead")]
    NoDeviceId(String),
    /// A signal source's feature the space does not hold as a signal.
    #[error(
        "feature {feature:?} of signal source {source_name:?} is not a signal feature of the space"
    )]
    SignalFeature {
        /// The source.
        source_name: String,
        /// The feature.
        feature: String,
    },
}

/// How often the candidate table is re-read from the store by default.
pub const DEFAULT_CANDIDATE_REFRESH: Duration = Duration::from_secs(1);

impl Hydrator {
    /// A hydrator over `space`, reading stored features from `store`.
    pub fn new(space: Arc<FeatureSpace>, store: Arc<dyn OnlineStore>) -> Result<Self, SpaceError> {
        let context = space
            .of(Source::Context)
            .map(|(c, s)| {
                ContextFeature::parse(&s.name)
                    .map(|f| (c, f))
                    .ok_or_else(|| SpaceError::UnknownContextFeature(s.name.clone()))
            })
            .collect::<Result<_, _>>()?;
        if let Some((_, s)) = space.of(Source::Stored(Entity::Device)).next() {
            return Err(SpaceError::NoDeviceId(s.name.clone()));
        }
        let request_width = space
            .specs()
            .iter()
            .take_while(|s| !s.source.per_candidate())
            .count();
        let line_item = Plan::of(&space, Entity::LineItem);
        let advertiser = Plan::of(&space, Entity::Advertiser);
        let candidate_stored = line_item
            .iter()
            .chain(advertiser.iter())
            .flat_map(|p| {
                p.cols
                    .iter()
                    .map(move |c| (c.0, p.entity == Entity::Advertiser, c.2, c.3))
            })
            .collect();
        let candidate_columns = space
            .of(Source::Candidate)
            .map(|(c, _)| (c, space.slot(c)))
            .collect();
        Ok(Self {
            context,
            request_width,
            user: Plan::of(&space, Entity::User),
            content: Plan::of(&space, Entity::Content),
            line_item,
            advertiser,
            candidate_stored,
            candidate_columns,
            table: ArcSwap::default(),
            signals: Signals::default(),
            signal_cols: Vec::new(),
            refreshing: AtomicBool::new(false),
            refresh_every: DEFAULT_CANDIDATE_REFRESH,
            space,
            store,
            stats: Arc::default(),
        })
    }

    /// Calls these real-time signal sources on every request, beside the store read; their
    /// features must be signal features of the space ([`FeatureSpace::with_definitions`] makes
    /// them so).
    pub fn with_signals(mut self, signals: Signals) -> Result<Self, SpaceError> {
        let mut cols = Vec::with_capacity(signals.sources().len());
        for s in signals.sources() {
            let def = s.def();
            let of_source = def
                .features
                .iter()
                .map(|f| {
                    self.space
                        .of(Source::Signal)
                        .find(|(_, spec)| spec.name == f.name)
                        .map(|(c, _)| c)
                        .ok_or_else(|| SpaceError::SignalFeature {
                            source_name: def.name.clone(),
                            feature: f.name.clone(),
                        })
                })
                .collect::<Result<Vec<_>, _>>()?;
            cols.push((Arc::from(def.name.as_str()), of_source));
        }
        self.signals = signals;
        self.signal_cols = cols;
        Ok(self)
    }

    /// The real-time signal sources called per request.
    pub fn signals(&self) -> &Signals {
        &self.signals
    }

    /// Re-reads the candidate table every `every` instead of every second.
    pub fn with_candidate_refresh(mut self, every: Duration) -> Self {
        self.refresh_every = every;
        self
    }

    /// The feature space.
    pub fn space(&self) -> &Arc<FeatureSpace> {
        &self.space
    }

    /// The online store read.
    pub fn store(&self) -> &Arc<dyn OnlineStore> {
        &self.store
    }

    /// Outcome counters since start.
    pub fn stats(&self) -> &Arc<HydrationStats> {
        &self.stats
    }

    /// The store key of a viewer's features.
    pub fn user_key(user_id: &str) -> String {
        key(Entity::User, user_id)
    }

    /// Whether any feature is stored per candidate (line item or advertiser), so that the
    /// candidate table is kept.
    pub fn wants_candidates(&self) -> bool {
        !self.candidate_stored.is_empty()
    }

    /// Whether the candidate table is due for a refresh; a `true` answer is given to one caller
    /// only, who must then call [`refresh_candidates`](Self::refresh_candidates).
    pub fn candidates_due(&self) -> bool {
        if !self.wants_candidates() {
            return false;
        }
        let due = self
            .table
            .load()
            .loaded
            .is_none_or(|t| t.elapsed() >= self.refresh_every);
        due && self
            .refreshing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }

    /// Reads every candidate's line item and advertiser in one `get_many` and publishes the new
    /// table (handles index it: give them densely from 0). On an error the previous table keeps
    /// serving.
    pub async fn refresh_candidates(
        &self,
        candidates: &[CandidateKeys<'_>],
    ) -> Result<usize, crate::StoreError> {
        let result = self.read_table(candidates).await;
        match &result {
            Ok(table) => {
                self.stats
                    .candidate_refreshes
                    .fetch_add(1, Ordering::Relaxed);
                self.table.store(table.clone());
            }
            Err(_) => {
                self.stats
                    .candidate_refresh_errors
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        self.refreshing.store(false, Ordering::Release);
        result.map(|t| t.as_of.len())
    }

    async fn read_table(
        &self,
        candidates: &[CandidateKeys<'_>],
    ) -> Result<Arc<CandidateTable>, crate::StoreError> {
        if !self.wants_candidates() {
            return Ok(Arc::default());
        }
        let mut keys = Vec::new();
        let mut advertisers: HashMap<&str, usize> = HashMap::new();
        let mut at: Vec<(Option<usize>, Option<usize>)> = Vec::with_capacity(candidates.len());
        for c in candidates {
            let li = self.line_item.as_ref().map(|p| {
                keys.push(key(p.entity, c.line_item));
                keys.len() - 1
            });
            let adv = self.advertiser.as_ref().map(|p| {
                *advertisers.entry(c.advertiser).or_insert_with(|| {
                    keys.push(key(p.entity, c.advertiser));
                    keys.len() - 1
                })
            });
            at.push((li, adv));
        }
        let rows = self.store.get_many(&keys).await?;
        let rows_n = candidates
            .iter()
            .map(|c| c.handle as usize + 1)
            .max()
            .unwrap_or(0);
        let width = self.candidate_stored.len();
        let mut table = CandidateTable {
            values: vec![f32::NAN; rows_n * width],
            as_of: vec![(i64::MIN, i64::MIN); rows_n],
            ids: vec![(Arc::from(""), Arc::from("")); rows_n],
            loaded: Some(Instant::now()),
        };
        let mut row = Vec::with_capacity(width);
        for (c, (li, adv)) in candidates.iter().zip(at) {
            let h = c.handle as usize;
            row.clear();
            let li_v = li.and_then(|i| rows.get(i)).and_then(|r| r.as_ref());
            let adv_v = adv.and_then(|i| rows.get(i)).and_then(|r| r.as_ref());
            if let Some(p) = &self.line_item {
                p.raw(li_v, &mut row);
            }
            if let Some(p) = &self.advertiser {
                p.raw(adv_v, &mut row);
            }
            table.values[h * width..(h + 1) * width].copy_from_slice(&row);
            table.as_of[h] = (
                li_v.map_or(i64::MIN, |v| v.as_of_ms),
                adv_v.map_or(i64::MIN, |v| v.as_of_ms),
            );
            table.ids[h] = (Arc::from(c.line_item), Arc::from(c.advertiser));
        }
        Ok(Arc::new(table))
    }

    /// Fetches the request's stored features (viewer, content) in one batched read within
    /// `budget`, and pins the current candidate table; on a miss, an error, a stale value or a
    /// timeout the defaults are used and the result says why.
    pub async fn hydrate(&self, req: &AdRequest, budget: Duration) -> Hydrated {
        let mut values = vec![f32::NAN; self.request_width];
        for (col, f) in &self.context {
            values[*col] = f.value(req);
        }
        let entities: Vec<(&Plan, &str)> = [
            (&self.user, req.user.id.as_str()),
            (&self.content, req.content.id.as_str()),
        ]
        .into_iter()
        .filter_map(|(p, id)| p.as_ref().map(|p| (p, id)))
        .collect();
        let keys: Vec<String> = entities.iter().map(|(p, id)| key(p.entity, id)).collect();

        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        self.stats
            .entities
            .fetch_add(keys.len() as u64, Ordering::Relaxed);
        // The signal sources are called in parallel with the store read, under the same budget.
        let store_read = async {
            if keys.is_empty() {
                return (Vec::new(), None);
            }
            match tokio::time::timeout(budget, self.store.get_many(&keys)).await {
                Ok(Ok(rows)) if rows.len() == keys.len() => (rows, None),
                Ok(Ok(rows)) => {
                    self.stats.store_errors.fetch_add(1, Ordering::Relaxed);
                    (
                        Vec::new(),
                        Some(format!(
                            "store answered {} values for {} keys",
                            rows.len(),
                            keys.len()
                        )),
                    )
                }
                Ok(Err(e)) => {
                    self.stats.store_errors.fetch_add(1, Ordering::Relaxed);
                    (Vec::new(), Some(format!("store error: {e}")))
                }
                Err(_) => {
                    self.stats.timeouts.fetch_add(1, Ordering::Relaxed);
                    (
                        Vec::new(),
                        Some(format!("store read exceeded {} µs", budget.as_micros())),
                    )
                }
            }
        };
        let ((rows, degraded), signals) = if self.signals.is_empty() {
            (store_read.await, Vec::new())
        } else {
            tokio::join!(store_read, self.signals.fetch(req, budget))
        };
        let mut signal_fallbacks = Vec::new();
        for ((name, cols), outcome) in self.signal_cols.iter().zip(signals) {
            for (&c, v) in cols.iter().zip(outcome.values) {
                values[c] = v;
            }
            if let Some(why) = outcome.fallback {
                signal_fallbacks.push((name.clone(), why));
            }
        }
        if degraded.is_none() {
            let missing = rows.iter().filter(|r| r.is_none()).count();
            self.stats
                .entities_missing
                .fetch_add(missing as u64, Ordering::Relaxed);
        }

        let now = now_ms();
        let mut stale = 0u64;
        let mut user_found = false;
        let mut served = Vec::with_capacity(entities.len());
        for (i, (plan, id)) in entities.iter().enumerate() {
            let row = rows.get(i).and_then(|r| r.as_ref());
            if plan.entity == Entity::User {
                user_found = row.is_some();
            }
            let s = plan.serve(id, row, now, &mut stale);
            for (c, v) in plan.cols.iter().zip(&s.values) {
                values[c.0] = v.0;
            }
            served.push(s);
        }
        self.stats.values_stale.fetch_add(stale, Ordering::Relaxed);
        Hydrated {
            request_values: values,
            user_found,
            degraded,
            served,
            at_ms: now,
            signal_fallbacks,
            table: self.table.load_full(),
        }
    }

    /// What the candidates `handles` were served from the table pinned in `hydrated`: one
    /// entry per line item and per distinct advertiser (for the feature log).
    pub fn served_candidates(&self, hydrated: &Hydrated, handles: &[u32]) -> Vec<ServedEntity> {
        let t = &hydrated.table;
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for &h in handles {
            let h = h as usize;
            let Some((li_id, adv_id)) = t.ids.get(h) else {
                continue;
            };
            for (plan, id, adv) in [
                (&self.line_item, li_id, false),
                (&self.advertiser, adv_id, true),
            ] {
                let Some(plan) = plan else { continue };
                if adv && !seen.insert(adv_id.clone()) {
                    continue;
                }
                let as_of = if adv { t.as_of[h].1 } else { t.as_of[h].0 };
                let values = self
                    .candidate_stored
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| c.1 == adv)
                    .map(|(j, _)| self.candidate_value(t, h, j, hydrated.at_ms))
                    .collect();
                out.push(ServedEntity {
                    entity: plan.entity,
                    id: id.to_string(),
                    as_of_ms: (as_of != i64::MIN).then_some(as_of),
                    names: plan.names.clone(),
                    values,
                });
            }
        }
        out
    }

    /// Candidate `h`'s stored column `j` from table `t` at `now`: the value and whether it was
    /// the stored one (else the default: absent, or older than the feature's ttl).
    fn candidate_value(&self, t: &CandidateTable, h: usize, j: usize, now: i64) -> (f32, bool) {
        let (_, adv, default, ttl) = self.candidate_stored[j];
        let width = self.candidate_stored.len();
        let found = t.as_of.get(h).and_then(|&(li, ad)| {
            let as_of = if adv { ad } else { li };
            (as_of != i64::MIN).then(|| (t.values[h * width + j], as_of))
        });
        fresh(found, default, ttl, now)
    }

    /// Builds the frame of every column: request-level values broadcast to every row, then each
    /// candidate's supplied values (in [`FeatureSpace::candidate_names`] order) in its row.
    pub fn frame(&self, hydrated: &Hydrated, candidates: &[&[f32]]) -> FeatureFrame {
        let all: Vec<usize> = (0..self.space.schema().len()).collect();
        self.frame_of(hydrated, candidates, &[], &all)
    }

    /// As [`frame`](Self::frame), building only the columns `present` (those a stage's models
    /// read; the others read as missing). `handles` names each row's candidate in the candidate
    /// table, for its stored line-item and advertiser features; rows beyond `handles` read those
    /// as their defaults.
    pub fn frame_of(
        &self,
        hydrated: &Hydrated,
        candidates: &[&[f32]],
        handles: &[u32],
        present: &[usize],
    ) -> FeatureFrame {
        self.build_frame(
            &hydrated.request_values,
            candidates,
            handles.len(),
            present,
            |r, j| {
                self.candidate_value(&hydrated.table, handles[r] as usize, j, hydrated.at_ms)
                    .0
            },
        )
    }

    /// The stored line-item and advertiser values candidates were served, candidate by candidate
    /// (as [`frame_replayed`](Self::frame_replayed) takes them), read back from the entities a
    /// decision logged ([`served_candidates`](Self::served_candidates)): `ids` gives each
    /// candidate's line item and advertiser; an entity not logged served its defaults.
    pub fn candidate_stored_from(&self, served: &[ServedEntity], ids: &[(&str, &str)]) -> Vec<f32> {
        let find = |entity: Entity, id: &str| {
            served
                .iter()
                .find(|e| e.entity == entity && e.id == id)
                .map(|e| e.values.as_slice())
        };
        let mut out = Vec::with_capacity(ids.len() * self.candidate_stored.len());
        for &(li, adv) in ids {
            let (li, adv) = (find(Entity::LineItem, li), find(Entity::Advertiser, adv));
            // An entity's values are its columns in table order: the k-th of its side.
            let (mut k_li, mut k_adv) = (0, 0);
            for &(_, from_adv, default, _) in &self.candidate_stored {
                let (values, k) = if from_adv {
                    (adv, &mut k_adv)
                } else {
                    (li, &mut k_li)
                };
                out.push(values.and_then(|v| v.get(*k)).map_or(default, |v| v.0));
                *k += 1;
            }
        }
        out
    }

    /// As [`frame_of`](Self::frame_of) from logged values: the request-level values, each
    /// candidate's supplied values and its stored values (`stored`, as
    /// [`candidate_stored_from`](Self::candidate_stored_from) gives them). Rows beyond `stored`
    /// read the stored columns as their defaults.
    pub fn frame_replayed(
        &self,
        request_values: &[f32],
        candidates: &[&[f32]],
        stored: &[f32],
        present: &[usize],
    ) -> FeatureFrame {
        let width = self.candidate_stored.len();
        let rows = stored.len().checked_div(width).unwrap_or(0);
        self.build_frame(request_values, candidates, rows, present, |r, j| {
            stored[r * width + j]
        })
    }

    fn build_frame(
        &self,
        request_values: &[f32],
        candidates: &[&[f32]],
        stored_rows: usize,
        present: &[usize],
        stored: impl Fn(usize, usize) -> f32,
    ) -> FeatureFrame {
        let rows = candidates.len();
        let mut frame = FeatureFrame::with_columns(self.space.schema().clone(), rows, present);
        for (col, &v) in request_values.iter().enumerate() {
            if frame.has_column(col) {
                frame.fill_column(col, v);
            }
        }
        for &(col, slot) in &self.candidate_columns {
            if !frame.has_column(col) {
                continue;
            }
            let column = frame.column_mut(col);
            for (cell, cand) in column.iter_mut().zip(candidates) {
                *cell = cand.get(slot).copied().unwrap_or(f32::NAN);
            }
        }
        for (j, &(col, _, default, _)) in self.candidate_stored.iter().enumerate() {
            if !frame.has_column(col) {
                continue;
            }
            let column = frame.column_mut(col);
            column.fill(default);
            for (r, cell) in column.iter_mut().enumerate().take(stored_rows) {
                *cell = stored(r, j);
            }
        }
        frame
    }
}

/// The one freshness rule: a stored value (value, as-of) is served unless absent, NaN, or older
/// than its ttl at `now`; otherwise the default. Returns the value and whether it was the stored.
fn fresh(found: Option<(f32, i64)>, default: f32, ttl: Option<i64>, now: i64) -> (f32, bool) {
    match found {
        Some((v, _)) if !v.is_nan() && !is_stale(found, ttl, now) => (v, true),
        _ => (default, false),
    }
}

/// Whether a present, non-NaN value is older than its ttl (counted as stale).
fn is_stale(found: Option<(f32, i64)>, ttl: Option<i64>, now: i64) -> bool {
    matches!((found, ttl), (Some((v, as_of)), Some(ttl)) if !v.is_nan() && now - as_of > ttl)
}

fn key(entity: Entity, id: &str) -> String {
    let e = entity.as_str();
    let mut k = String::with_capacity(e.len() + 1 + id.len());
    k.push_str(e);
    k.push(':');
    k.push_str(id);
    k
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::space::FeatureSpec;
    use crate::store::{MemoryStore, StoreError, StoredValue};
    use async_trait::async_trait;
    use podium_core::{AdBreak, BreakPosition, Content, User};

    fn space() -> Arc<FeatureSpace> {
        let spec = FeatureSpec::new;
        Arc::new(FeatureSpace::new(vec![
            spec("li_ctr", Source::Candidate, 0.01),
            spec("user_ctr", Source::Stored(Entity::User), 0.02),
            spec("ctx_device_tv", Source::Context, 0.0),
            spec("ctx_live", Source::Context, 0.0),
        ]))
    }

    fn request(user: &str) -> AdRequest {
        AdRequest {
            request_id: "r".into(),
            user: User {
                id: user.into(),
                country: "US".into(),
                device: Device::Tv,
                region: None,
                segments: Vec::new(),
                utc_offset_min: None,
            },
            content: Content {
                id: "c".into(),
                genre: "drama".into(),
                live: true,
                rating: None,
                event_id: None,
            },
            breaks: vec![AdBreak {
                id: "b".into(),
                position: BreakPosition::Midroll,
                max_ads: 2,
                max_duration_s: 30,
                rules: Default::default(),
            }],
            tmax: None,
            blocked_categories: Vec::new(),
            blocked_advertisers: Vec::new(),
        }
    }

    #[tokio::test]
    async fn lays_out_request_and_candidate_columns() {
        let store = Arc::new(MemoryStore::new());
        store.insert("user:u1".into(), StoredValue::new(vec![0.5f32], 0));
        let h = Hydrator::new(space(), store).unwrap();
        let hy = h.hydrate(&request("u1"), Duration::from_millis(5)).await;
        assert!(hy.user_found && hy.degraded.is_none());
        let frame = h.frame(&hy, &[&[0.1], &[0.2]]);
        let s = frame.schema().clone();
        assert_eq!(
            frame.column(s.column("ctx_device_tv").unwrap()),
            &[1.0, 1.0]
        );
        assert_eq!(frame.column(s.column("ctx_live").unwrap()), &[1.0, 1.0]);
        assert_eq!(frame.column(s.column("user_ctr").unwrap()), &[0.5, 0.5]);
        assert_eq!(frame.column(s.column("li_ctr").unwrap()), &[0.1, 0.2]);
    }

    #[tokio::test]
    async fn unknown_user_gets_defaults() {
        let h = Hydrator::new(space(), Arc::new(MemoryStore::new())).unwrap();
        let hy = h
            .hydrate(&request("nobody"), Duration::from_millis(5))
            .await;
        assert!(!hy.user_found);
        let col = h.space().schema().column("user_ctr").unwrap();
        assert_eq!(hy.request_values[col], 0.02);
    }

    struct SlowStore;

    #[async_trait]
    impl OnlineStore for SlowStore {
        async fn get_many(&self, _: &[String]) -> Result<Vec<Option<StoredValue>>, StoreError> {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Ok(vec![])
        }
        async fn put_many(&self, _: Vec<(String, StoredValue)>) -> Result<(), StoreError> {
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_store_falls_back_to_defaults_within_budget() {
        let h = Hydrator::new(space(), Arc::new(SlowStore)).unwrap();
        let hy = h.hydrate(&request("u1"), Duration::from_millis(2)).await;
        assert!(hy.degraded.unwrap().contains("exceeded"));
        let col = h.space().schema().column("user_ctr").unwrap();
        assert_eq!(hy.request_values[col], 0.02);
    }

    /// A space with stored line-item and advertiser features besides the supplied ones.
    fn candidate_space() -> Arc<FeatureSpace> {
        let mut ttl = FeatureSpec::new("user_imps_1h", Source::Stored(Entity::User), 0.0);
        ttl.ttl = Some(Duration::from_secs(60));
        Arc::new(FeatureSpace::new(vec![
            FeatureSpec::new("li_prior", Source::Candidate, 0.5),
            FeatureSpec::new("li_clicks_1d", Source::Stored(Entity::LineItem), -1.0),
            FeatureSpec::new("adv_spend_1d", Source::Stored(Entity::Advertiser), -2.0),
            ttl,
        ]))
    }

    #[tokio::test]
    async fn candidates_come_from_the_bulk_table_and_stale_values_are_defaults() {
        let store = Arc::new(MemoryStore::new());
        let now = now_ms();
        store.insert("line_item:l1".into(), StoredValue::new(vec![3.0], now));
        store.insert("advertiser:a1".into(), StoredValue::new(vec![7.0], now));
        // Two minutes old with a one-minute ttl: stale.
        store.insert("user:u1".into(), StoredValue::new(vec![9.0], now - 120_000));
        let h = Hydrator::new(candidate_space(), store.clone()).unwrap();
        assert!(h.wants_candidates());
        assert!(h.candidates_due());
        assert!(!h.candidates_due(), "one caller refreshes");
        let cands = [
            CandidateKeys {
                handle: 0,
                line_item: "l1",
                advertiser: "a1",
            },
            CandidateKeys {
                handle: 1,
                line_item: "l2",
                advertiser: "a1",
            },
        ];
        assert_eq!(h.refresh_candidates(&cands).await.unwrap(), 2);
        assert!(!h.candidates_due(), "fresh for a second");
        let hy = h.hydrate(&request("u1"), Duration::from_millis(5)).await;
        assert!(hy.degraded.is_none());
        assert_eq!(h.stats().values_stale.load(Ordering::Relaxed), 1);
        assert_eq!(
            h.stats().entities.load(Ordering::Relaxed),
            1,
            "only the viewer per request"
        );
        let s = h.space().schema().clone();
        assert_eq!(hy.request_values[s.column("user_imps_1h").unwrap()], 0.0);
        // Rows in another order than the table's, as after ranking.
        let frame = h.frame_of(&hy, &[&[0.1], &[0.2]], &[1, 0], &[0, 1, 2, 3]);
        assert_eq!(
            frame.column(s.column("li_clicks_1d").unwrap()),
            &[-1.0, 3.0]
        );
        assert_eq!(frame.column(s.column("adv_spend_1d").unwrap()), &[7.0, 7.0]);
        assert_eq!(frame.column(s.column("li_prior").unwrap()), &[0.1, 0.2]);
        // The log sees each line item, and each advertiser once.
        let served = h.served_candidates(&hy, &[1, 0]);
        assert_eq!(served.len(), 3);
        let li2 = served.iter().find(|e| e.id == "l2").unwrap();
        assert_eq!(
            (li2.as_of_ms, li2.values.clone()),
            (None, vec![(-1.0, false)])
        );
        let li1 = served.iter().find(|e| e.id == "l1").unwrap();
        assert_eq!(
            (li1.as_of_ms, li1.values.clone()),
            (Some(now), vec![(3.0, true)])
        );
        let user = hy.served.iter().find(|e| e.entity == Entity::User).unwrap();
        assert_eq!(user.values, vec![(0.0, false)]);

        // A request pins the table it started with; a refresh publishes the next one.
        store.insert("line_item:l2".into(), StoredValue::new(vec![5.0], now));
        h.refresh_candidates(&cands).await.unwrap();
        let old = h.frame_of(&hy, &[&[0.1]], &[1], &[2]);
        assert_eq!(old.column(s.column("li_clicks_1d").unwrap()), &[-1.0]);
        let hy = h.hydrate(&request("u1"), Duration::from_millis(5)).await;
        let new = h.frame_of(&hy, &[&[0.1]], &[1], &[2]);
        assert_eq!(new.column(s.column("li_clicks_1d").unwrap()), &[5.0]);
    }

    #[test]
    fn refuses_device_keyed_features() {
        let s = Arc::new(FeatureSpace::new(vec![FeatureSpec::new(
            "dev_imps",
            Source::Stored(Entity::Device),
            0.0,
        )]));
        assert!(Hydrator::new(s, Arc::new(MemoryStore::new())).is_err());
    }

    #[test]
    fn refuses_an_underivable_context_feature() {
        let s = Arc::new(FeatureSpace::new(vec![FeatureSpec::new(
            "ctx_weather",
            Source::Context,
            0.0,
        )]));
        assert!(Hydrator::new(s, Arc::new(MemoryStore::new())).is_err());
    }
}
