//! Hydration: fetch a request's stored features in one batched read under a deadline, derive its
//! context features, and lay both out with the candidates' features as a column-major frame.

use crate::definitions::Entity;
use crate::space::{FeatureSpace, Source};
use crate::store::{now_ms, OnlineStore, StoredValue};
use podium_core::{AdRequest, Device, FeatureFrame};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

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

/// The feature values of one request: request-level columns, and stored per-candidate ones.
#[derive(Clone, Debug)]
pub struct Hydrated {
    /// Context then request-level stored values, in column order.
    pub request_values: Vec<f32>,
    /// Whether the store held the viewer.
    pub user_found: bool,
    /// Set when the fetch failed or ran out of time and defaults were served instead.
    pub degraded: Option<String>,
    /// Stored per-candidate values: row `k` (of width [`Hydrator::candidate_stored_width`]) is
    /// the candidate whose handle maps to `k` in `candidate_rows`.
    candidate_values: Vec<f32>,
    candidate_rows: HashMap<u32, u32>,
    /// Every stored entity fetched, with what was served for it (for the feature log).
    pub served: Vec<ServedEntity>,
    /// Wall-clock time of the fetch (ms since the epoch): freshness was judged against it.
    pub at_ms: i64,
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
                let Some(v) = stored else {
                    return (default, false);
                };
                let Some(x) = v.values.get(slot).copied().filter(|x| !x.is_nan()) else {
                    return (default, false);
                };
                if ttl.is_some_and(|ttl| now - v.as_of_ms > ttl) {
                    *stale += 1;
                    return (default, false);
                }
                (x, true)
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
    /// Per-candidate stored columns, in the order of a candidate row: line item's, then
    /// advertiser's.
    candidate_stored: Vec<usize>,
    candidate_columns: Vec<(usize, usize)>,
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
}

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
            .flat_map(|p| p.cols.iter().map(|c| c.0))
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
            space,
            store,
            stats: Arc::default(),
        })
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

    /// Whether any model-visible feature is stored per candidate (line item or advertiser), so
    /// that [`hydrate`](Self::hydrate) wants the candidates' keys.
    pub fn wants_candidates(&self) -> bool {
        !self.candidate_stored.is_empty()
    }

    /// Number of stored per-candidate columns.
    pub fn candidate_stored_width(&self) -> usize {
        self.candidate_stored.len()
    }

    /// Names of an entity's served features, in [`ServedEntity::values`] order.
    pub fn served_names(&self, entity: Entity) -> Vec<String> {
        let plan = match entity {
            Entity::User => &self.user,
            Entity::Content => &self.content,
            Entity::LineItem => &self.line_item,
            Entity::Advertiser => &self.advertiser,
            Entity::Device => &None,
        };
        plan.iter()
            .flat_map(|p| p.cols.iter())
            .map(|c| self.space.specs()[c.0].name.clone())
            .collect()
    }

    /// Fetches the request's and its candidates' stored features in one batched read within
    /// `budget`; on a miss, an error, a stale value or a timeout the defaults are used and the
    /// result says why.
    pub async fn hydrate(
        &self,
        req: &AdRequest,
        candidates: &[CandidateKeys<'_>],
        budget: Duration,
    ) -> Hydrated {
        let mut values = vec![f32::NAN; self.request_width];
        for (col, f) in &self.context {
            values[*col] = f.value(req);
        }
        // The keys, with the plan that reads each.
        let mut keys = Vec::new();
        let push = |plan: &'_ Option<Plan>, id: &str, keys: &mut Vec<String>| {
            if let Some(p) = plan {
                keys.push(key(p.entity, id));
            }
        };
        push(&self.user, req.user.id.as_str(), &mut keys);
        push(&self.content, req.content.id.as_str(), &mut keys);
        let request_keys = keys.len();
        let mut candidate_rows = HashMap::new();
        let mut advertisers: HashMap<&str, usize> = HashMap::new();
        // Per candidate: (line item key index, advertiser key index).
        let mut cand_keys: Vec<(Option<usize>, Option<usize>)> = Vec::new();
        if self.wants_candidates() {
            candidate_rows.reserve(candidates.len());
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
                candidate_rows.insert(c.handle, cand_keys.len() as u32);
                cand_keys.push((li, adv));
            }
        }

        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        self.stats
            .entities
            .fetch_add(keys.len() as u64, Ordering::Relaxed);
        let (rows, degraded) = if keys.is_empty() {
            (Vec::new(), None)
        } else {
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
        let row = |i: usize| rows.get(i).and_then(|r| r.as_ref());
        if degraded.is_none() {
            let missing = rows.iter().filter(|r| r.is_none()).count();
            self.stats
                .entities_missing
                .fetch_add(missing as u64, Ordering::Relaxed);
        }

        let now = now_ms();
        let mut stale = 0u64;
        let mut served = Vec::with_capacity(keys.len());
        let mut user_found = false;
        let mut k = 0;
        for (plan, id) in [
            (&self.user, req.user.id.as_str()),
            (&self.content, req.content.id.as_str()),
        ] {
            let Some(plan) = plan else { continue };
            if plan.entity == Entity::User {
                user_found = row(k).is_some();
            }
            let s = plan.serve(id, row(k), now, &mut stale);
            for (c, v) in plan.cols.iter().zip(&s.values) {
                values[c.0] = v.0;
            }
            served.push(s);
            k += 1;
        }
        debug_assert_eq!(k, request_keys);

        let width = self.candidate_stored.len();
        let mut candidate_values = Vec::with_capacity(width * cand_keys.len());
        let mut adv_served: HashMap<usize, usize> = HashMap::new();
        for (c, &(li, adv)) in candidates.iter().zip(&cand_keys) {
            if let (Some(p), Some(i)) = (&self.line_item, li) {
                let s = p.serve(c.line_item, row(i), now, &mut stale);
                candidate_values.extend(s.values.iter().map(|v| v.0));
                served.push(s);
            }
            if let (Some(p), Some(i)) = (&self.advertiser, adv) {
                let at = *adv_served.entry(i).or_insert_with(|| {
                    served.push(p.serve(c.advertiser, row(i), now, &mut stale));
                    served.len() - 1
                });
                candidate_values.extend(served[at].values.iter().map(|v| v.0));
            }
        }
        self.stats.values_stale.fetch_add(stale, Ordering::Relaxed);
        Hydrated {
            request_values: values,
            user_found,
            degraded,
            candidate_values,
            candidate_rows,
            served,
            at_ms: now,
        }
    }

    /// Builds the frame of every column: request-level values broadcast to every row, then each
    /// candidate's supplied values (in [`FeatureSpace::candidate_names`] order) in its row.
    pub fn frame(&self, hydrated: &Hydrated, candidates: &[&[f32]]) -> FeatureFrame {
        let all: Vec<usize> = (0..self.space.schema().len()).collect();
        self.frame_of(hydrated, candidates, &[], &all)
    }

    /// As [`frame`](Self::frame), building only the columns `present` (those a stage's models
    /// read; the others read as missing). `handles` names each row's candidate as given to
    /// [`hydrate`](Self::hydrate), for its stored line-item and advertiser features; rows beyond
    /// `handles` (or not hydrated) read those as missing.
    pub fn frame_of(
        &self,
        hydrated: &Hydrated,
        candidates: &[&[f32]],
        handles: &[u32],
        present: &[usize],
    ) -> FeatureFrame {
        let rows = candidates.len();
        let mut frame = FeatureFrame::with_columns(self.space.schema().clone(), rows, present);
        for (col, &v) in hydrated.request_values.iter().enumerate() {
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
        let width = self.candidate_stored.len();
        for (j, &col) in self.candidate_stored.iter().enumerate() {
            if !frame.has_column(col) {
                continue;
            }
            let column = frame.column_mut(col);
            for (cell, h) in column.iter_mut().zip(handles) {
                *cell = hydrated.candidate_rows.get(h).map_or(f32::NAN, |&r| {
                    hydrated.candidate_values[r as usize * width + j]
                });
            }
        }
        frame
    }
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
            },
            content: Content {
                id: "c".into(),
                genre: "drama".into(),
                live: true,
            },
            breaks: vec![AdBreak {
                id: "b".into(),
                position: BreakPosition::Midroll,
                max_ads: 2,
                max_duration_s: 30,
            }],
            tmax: None,
        }
    }

    #[tokio::test]
    async fn lays_out_request_and_candidate_columns() {
        let store = Arc::new(MemoryStore::new());
        store.insert("user:u1".into(), StoredValue::new(vec![0.5f32], 0));
        let h = Hydrator::new(space(), store).unwrap();
        let hy = h
            .hydrate(&request("u1"), &[], Duration::from_millis(5))
            .await;
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
            .hydrate(&request("nobody"), &[], Duration::from_millis(5))
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
        let hy = h
            .hydrate(&request("u1"), &[], Duration::from_millis(2))
            .await;
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
    async fn candidates_entities_come_in_the_same_read_and_stale_values_are_defaults() {
        let store = Arc::new(MemoryStore::new());
        let now = now_ms();
        store.insert("line_item:l1".into(), StoredValue::new(vec![3.0], now));
        store.insert("advertiser:a1".into(), StoredValue::new(vec![7.0], now));
        // Two minutes old with a one-minute ttl: stale.
        store.insert("user:u1".into(), StoredValue::new(vec![9.0], now - 120_000));
        let h = Hydrator::new(candidate_space(), store).unwrap();
        assert!(h.wants_candidates());
        let cands = [
            CandidateKeys {
                handle: 10,
                line_item: "l1",
                advertiser: "a1",
            },
            CandidateKeys {
                handle: 20,
                line_item: "l2",
                advertiser: "a1",
            },
        ];
        let hy = h
            .hydrate(&request("u1"), &cands, Duration::from_millis(5))
            .await;
        assert!(hy.degraded.is_none());
        assert_eq!(h.stats().values_stale.load(Ordering::Relaxed), 1);
        assert_eq!(
            h.stats().entities.load(Ordering::Relaxed),
            4,
            "u1, l1, l2, a1 once"
        );
        let s = h.space().schema().clone();
        assert_eq!(hy.request_values[s.column("user_imps_1h").unwrap()], 0.0);
        // Rows in a different order from the hydration, as after ranking.
        let frame = h.frame_of(&hy, &[&[0.1], &[0.2]], &[20, 10], &[0, 1, 2, 3]);
        assert_eq!(
            frame.column(s.column("li_clicks_1d").unwrap()),
            &[-1.0, 3.0]
        );
        assert_eq!(frame.column(s.column("adv_spend_1d").unwrap()), &[7.0, 7.0]);
        assert_eq!(frame.column(s.column("li_prior").unwrap()), &[0.1, 0.2]);
        // The log sees each entity once, with what was served and whether it was stored.
        let li2 = hy.served.iter().find(|e| e.id == "l2").unwrap();
        assert_eq!(
            (li2.as_of_ms, li2.values.clone()),
            (None, vec![(-1.0, false)])
        );
        let user = hy.served.iter().find(|e| e.entity == Entity::User).unwrap();
        assert_eq!(user.values, vec![(0.0, false)]);
        assert_eq!(hy.served.len(), 4);
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
