//! The pipeline itself.

use crate::experiments::{Assignment, Experiments};
use arc_swap::{ArcSwap, ArcSwapOption};
use podium_auction::pod::{solve_pod, PodCandidate, PodCreative, PodOutcome};
use podium_auction::{
    ecpm, static_floor, CapScope, DynamicReserve, Goal, Marketplace, TargetingIndex,
};
use podium_core::FeatureFrame;
use podium_core::{
    AdRequest, BreakDecision, Deadline, Decision, DedupeKey, LineItemId, Micros, ModelUse,
    PlacedAd, StageTimings,
};
use podium_features::{CandidateKeys, Hydrator};
use podium_log::{DecisionRecord, DecisionSink, Explored, ReplayState};
use podium_pacing::{
    cap_key, count_since, has_budget, Day, Delivery, FrequencyStore, MemoryFrequencyStore,
    SpendStore,
};
use podium_serving::{run_stage, ComputePool, ModelSet, Scored};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Tunables of the pipeline.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Deadline of a request that sets none.
    pub default_tmax: Duration,
    /// Most of the deadline hydration may take before defaults are served.
    pub hydrate_budget: Duration,
    /// Time kept back from model scoring for pricing, pod construction and the response.
    pub response_reserve: Duration,
    /// Model monitoring on the request path: predictions kept for calibration against
    /// outcomes, and sampled inputs and predictions for drift (off only to measure its cost).
    pub monitoring: bool,
    /// Share of ad breaks whose lead ad is drawn at random among the allowed best-effort
    /// candidates (epsilon-greedy), with each lead's propensity logged for counterfactual
    /// estimates; 0 = off.
    pub exploration: f64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            default_tmax: Duration::from_millis(20),
            hydrate_budget: Duration::from_millis(5),
            // Pricing, the exact pod optimiser and the lease checks of ~100 candidates: tens of
            // microseconds in release, a few milliseconds in a debug build on a busy machine.
            response_reserve: Duration::from_millis(3),
            monitoring: true,
            exploration: 0.0,
        }
    }
}

/// Added to a guaranteed candidate's value so that the pod takes it before any best-effort one
/// (priorities as in the ad server world), whatever the eCPMs.
const GUARANTEED_VALUE: i64 = 1 << 50;

/// What a line item's caps and deduplication are counted under, hashed once per market.
struct Keys {
    advertiser: u64,
    category: u64,
    /// Frequency-cap counters: line item, campaign, advertiser.
    caps: [u64; 3],
    /// The line item's creatives as pods take them (durations and dedupe keys).
    creatives: std::sync::Arc<[PodCreative]>,
}

fn stable_hash(s: &str) -> u64 {
    cap_key("dedupe", s)
}

/// The marketplace with what is derived from it once per change, never per request.
pub struct MarketSnapshot {
    /// The line items and reserve.
    pub marketplace: Marketplace,
    /// Targeting index over the line items.
    pub index: TargetingIndex,
    /// Each line item's candidate features, in the feature space's candidate order.
    pub candidate_features: Vec<Vec<f32>>,
    /// Each line item's completion prior, used to value candidates at the early-rank stage.
    completion_priors: Vec<f32>,
    keys: Vec<Keys>,
    by_id: HashMap<LineItemId, u32>,
    any_caps: bool,
    /// Daily impression goal of each guaranteed line item.
    goals: Vec<Option<u64>>,
    /// Today's supply and delivery of guaranteed line items.
    delivery: Delivery,
    /// Reserves learned from this market's winning bids, when the marketplace asks for them.
    dynamic_reserve: Option<DynamicReserve>,
    /// Eligible guaranteed line items of sampled requests (the supply the plan allocates).
    supply: std::sync::Mutex<std::collections::VecDeque<Vec<u32>>>,
    /// Requests that had a guaranteed line item eligible, and all requests.
    supply_seen: AtomicU64,
    requests_seen: AtomicU64,
    /// The high-water-mark plan, once the control loop has computed one.
    plan: ArcSwap<Option<podium_pacing::Plan<u32>>>,
    /// Daily budgets set at run time (the admin API, shared by the fleet), by line item index;
    /// they take the place of the marketplace's.
    budget_overrides: ArcSwap<HashMap<u32, Micros>>,
    /// Hash of the marketplace's JSON: decisions log it, replays check it.
    pub fingerprint: u64,
}

/// One request in this many with a guaranteed line item eligible is sampled for the plan.
const SUPPLY_SAMPLE_EVERY: u64 = 8;
/// Samples the plan is computed from (the latest).
const SUPPLY_SAMPLES: usize = 4096;

impl MarketSnapshot {
    /// Indexes a marketplace; `features` gives a line item's candidate feature values.
    pub fn new(
        marketplace: Marketplace,
        features: impl Fn(&podium_auction::LineItem) -> Vec<f32>,
    ) -> Self {
        let index = TargetingIndex::build(&marketplace.line_items);
        let items = &marketplace.line_items;
        let candidate_features = items.iter().map(&features).collect();
        let completion_priors = items
            .iter()
            .map(|li| li.priors.completion_rate_7d)
            .collect();
        let keys = items
            .iter()
            .map(|li| Keys {
                advertiser: stable_hash(li.domain()),
                // Separation and `poddedupe` compare what responses declare: the IAB code when
                // there is one (two internal categories may share it).
                category: stable_hash(&li.declared_categories()[0].to_ascii_lowercase()),
                caps: [
                    cap_key("line_item", li.id.as_str()),
                    cap_key("campaign", li.campaign()),
                    cap_key("advertiser", li.advertiser_id.as_str()),
                ],
                creatives: li
                    .creatives
                    .iter()
                    .enumerate()
                    .map(|(c, cr)| PodCreative {
                        index: c as u32,
                        duration_s: cr.duration_s,
                        key: stable_hash(cr.id.as_str()),
                    })
                    .collect(),
            })
            .collect();
        let by_id = items
            .iter()
            .enumerate()
            .map(|(i, li)| (li.id.clone(), i as u32))
            .collect();
        let goals = items
            .iter()
            .map(|li| match li.goal {
                Goal::Guaranteed {
                    impressions_per_day,
                } => Some(impressions_per_day),
                Goal::NonGuaranteed => None,
            })
            .collect();
        let fingerprint = stable_hash(&serde_json::to_string(&marketplace).unwrap_or_default());
        Self {
            fingerprint,
            any_caps: items.iter().any(|li| !li.caps.is_empty()),
            delivery: Delivery::new(items.len()),
            dynamic_reserve: marketplace.dynamic_reserve.clone().map(DynamicReserve::new),
            supply: Default::default(),
            supply_seen: AtomicU64::new(0),
            requests_seen: AtomicU64::new(0),
            plan: ArcSwap::from_pointee(None),
            budget_overrides: ArcSwap::default(),
            marketplace,
            index,
            candidate_features,
            completion_priors,
            keys,
            by_id,
            goals,
        }
    }

    /// The position of a line item in the marketplace.
    pub fn position(&self, id: &LineItemId) -> Option<u32> {
        self.by_id.get(id).copied()
    }

    /// The learned reserves per segment, if the marketplace learns them.
    pub fn dynamic_reserve(&self) -> Option<&DynamicReserve> {
        self.dynamic_reserve.as_ref()
    }

    /// Today's (eligible supply, delivered impressions) of a guaranteed line item.
    pub fn delivery(&self, line_item: u32) -> (u64, u64) {
        self.delivery.counts(line_item)
    }

    /// The early-rank cut: values every eligible line item roughly (its bid, with the early
    /// ranker's prediction as pCTR and its completion prior as pCompletion) and keeps the best
    /// `k`, ties going to the lower index; guaranteed line items (already allocated to this
    /// request) go first. The order of the result is unspecified.
    pub fn top_k(&self, eligible: &[u32], predictions: &[f32], k: usize) -> Vec<u32> {
        let line_items = &self.marketplace.line_items;
        let mut order: Vec<(bool, Micros, u32)> = eligible
            .iter()
            .zip(predictions)
            .map(|(&i, &p)| {
                let li = &line_items[i as usize];
                (
                    self.goals[i as usize].is_some(),
                    ecpm(
                        li.bid,
                        p,
                        self.completion_priors[i as usize],
                        li.priors.conversion_rate_7d,
                    ),
                    i,
                )
            })
            .collect();
        let k = k.min(order.len());
        if k < order.len() {
            order.select_nth_unstable_by(k, |a, b| {
                b.0.cmp(&a.0).then(b.1.cmp(&a.1)).then(a.2.cmp(&b.2))
            });
            order.truncate(k);
        }
        order.iter().map(|&(_, _, i)| i).collect()
    }

    /// Line item `i`'s daily budget: the one set at run time if any, else the marketplace's.
    pub fn daily_budget(&self, i: usize) -> Micros {
        self.budget_overrides
            .load()
            .get(&(i as u32))
            .copied()
            .unwrap_or(self.marketplace.line_items[i].daily_budget)
    }

    /// Whether line item `i`'s daily budget was set at run time.
    pub fn budget_overridden(&self, i: usize) -> bool {
        self.budget_overrides.load().contains_key(&(i as u32))
    }

    /// Removes from `eligible` what must not serve this request although its targeting admits it:
    /// blocked categories and advertisers, line items at a frequency cap, and guaranteed line
    /// items whose allocation does not pick this request. Counts guaranteed supply on the way.
    fn admit(
        &self,
        req: &AdRequest,
        eligible: &mut Vec<u32>,
        history: Result<Vec<(u64, i64)>, String>,
        now_ms: i64,
    ) -> Vec<(u64, i64)> {
        let items = &self.marketplace.line_items;
        self.requests_seen
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if !req.blocked_categories.is_empty() || !req.blocked_advertisers.is_empty() {
            eligible.retain(|&i| {
                let li = &items[i as usize];
                !li.blocked_by(&req.blocked_categories)
                    && !req.blocked_advertisers.iter().any(|a| {
                        a.eq_ignore_ascii_case(li.domain())
                            || a.eq_ignore_ascii_case(li.advertiser_id.as_str())
                    })
            });
        }
        let history = match history {
            Ok(h) => h,
            Err(_) => {
                // Caps that cannot be read are treated as reached: a capped line item sits the
                // request out rather than risk going over.
                let items = &self.marketplace.line_items;
                eligible.retain(|&i| items[i as usize].caps.is_empty());
                Vec::new()
            }
        };
        if !history.is_empty() {
            eligible.retain(|&i| !self.capped(i, &history, now_ms, &[]));
        }
        let (day, elapsed) = Day::of_ms(now_ms);
        self.delivery.roll(day);
        let guaranteed: Vec<u32> = eligible
            .iter()
            .copied()
            .filter(|&i| self.goals[i as usize].is_some())
            .collect();
        if guaranteed.is_empty() {
            return history;
        }
        for &i in &guaranteed {
            self.delivery.saw(i);
        }
        let n = self
            .supply_seen
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if n.is_multiple_of(SUPPLY_SAMPLE_EVERY) {
            let mut s = self.supply.lock().unwrap_or_else(|e| e.into_inner());
            s.push_back(guaranteed.clone());
            if s.len() > SUPPLY_SAMPLES {
                s.pop_front();
            }
        }
        let u = podium_pacing::draw(req.request_id.as_str(), u32::MAX);
        let plan = self.plan.load();
        match plan.as_ref() {
            // The high-water-mark plan picks at most one guaranteed line item per request.
            Some(plan) => {
                let chosen = plan.serve(&guaranteed, u);
                eligible.retain(|&i| self.goals[i as usize].is_none() || Some(i) == chosen);
            }
            // Before the first plan: each at its own rate (remaining goal ÷ forecast supply).
            None => eligible.retain(|&i| match self.goals[i as usize] {
                None => true,
                Some(goal) => {
                    podium_pacing::draw(req.request_id.as_str(), i)
                        < self.delivery.rate(i, goal, elapsed)
                }
            }),
        }
        history
    }

    /// Recomputes the guaranteed-delivery plan from the sampled supply: each sample stands for
    /// an equal share of the `remaining` requests the forecast expects today.
    pub(crate) fn replan(&self, remaining: f64) {
        let samples: Vec<podium_pacing::SupplySample<u32>> = {
            let s = self.supply.lock().unwrap_or_else(|e| e.into_inner());
            if s.is_empty() {
                return;
            }
            // Sampled among requests with a guaranteed line item eligible; scale to all traffic
            // by the share of requests that had one.
            let weight = remaining * self.guaranteed_share() / s.len() as f64;
            s.iter()
                .map(|e| podium_pacing::SupplySample {
                    eligible: e.clone(),
                    weight,
                })
                .collect()
        };
        let contracts: Vec<podium_pacing::Contract<u32>> = self
            .goals
            .iter()
            .enumerate()
            .filter_map(|(i, g)| {
                g.map(|goal| podium_pacing::Contract {
                    id: i as u32,
                    demand: goal.saturating_sub(self.delivery.counts(i as u32).1) as f64,
                })
            })
            .collect();
        self.plan.store(Arc::new(Some(podium_pacing::hwm_plan(
            &contracts, &samples,
        ))));
    }

    /// Share of requests that had a guaranteed line item eligible.
    fn guaranteed_share(&self) -> f64 {
        let with = self.supply_seen.load(std::sync::atomic::Ordering::Relaxed) as f64;
        let all = self
            .requests_seen
            .load(std::sync::atomic::Ordering::Relaxed) as f64;
        if all == 0.0 {
            1.0
        } else {
            (with / all).min(1.0)
        }
    }

    /// Whether line item `i` is at one of its caps, counting the viewer's history and the ads
    /// already placed in this request (`placed`).
    fn capped(&self, i: u32, history: &[(u64, i64)], now_ms: i64, placed: &[u32]) -> bool {
        let li = &self.marketplace.line_items[i as usize];
        li.caps.iter().any(|cap| {
            let slot = match cap.scope {
                CapScope::LineItem => 0,
                CapScope::Campaign => 1,
                CapScope::Advertiser => 2,
            };
            let key = self.keys[i as usize].caps[slot];
            let since = now_ms - (cap.window_s as i64) * 1000;
            let here = placed
                .iter()
                .filter(|&&p| self.keys[p as usize].caps[slot] == key)
                .count() as u32;
            count_since(history, key, since) + here >= cap.max
        })
    }
}

/// Which line items of one market snapshot may still serve today: a bit per line item, cleared
/// when a booking takes it to its daily budget and rebuilt from the spend store when the day
/// changes, so retrieval excludes spent line items with one AND per 64 instead of a spend-store
/// lookup per eligible line item.
struct OpenSet {
    market: Arc<MarketSnapshot>,
    day: AtomicU32,
    words: Vec<AtomicU64>,
}

impl OpenSet {
    const UNSET: u32 = u32::MAX;

    fn new(market: Arc<MarketSnapshot>) -> Self {
        let words = (0..market.marketplace.line_items.len().div_ceil(64))
            .map(|_| AtomicU64::new(0))
            .collect();
        Self {
            market,
            day: AtomicU32::new(Self::UNSET),
            words,
        }
    }

    /// Brings the bitmap to `day`. Racing rebuilders write the same bits, so no lock is needed.
    fn refresh(&self, day: Day, spend: &dyn SpendStore) {
        if self.day.load(Ordering::Acquire) == day.0 {
            return;
        }
        let line_items = &self.market.marketplace.line_items;
        for (w, word) in self.words.iter().enumerate() {
            let mut bits = 0u64;
            for (b, li) in line_items.iter().skip(w * 64).take(64).enumerate() {
                if has_budget(
                    spend.spent(day, &li.id),
                    self.market.daily_budget(w * 64 + b),
                ) {
                    bits |= 1 << b;
                }
            }
            word.store(bits, Ordering::Relaxed);
        }
        self.day.store(day.0, Ordering::Release);
    }

    fn word(&self, w: usize) -> u64 {
        self.words[w].load(Ordering::Relaxed)
    }

    fn close(&self, line_item: u32) {
        self.words[line_item as usize / 64].fetch_and(!(1 << (line_item % 64)), Ordering::Relaxed);
    }
}

/// A shadow model's scores beside those production served, for one request and one slot.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ShadowRecord {
    /// The request.
    pub request_id: String,
    /// The model (slot) name.
    pub model: String,
    /// The version that served (tier 0 or a fallback's name and version).
    pub production_version: String,
    /// The shadow's version.
    pub shadow_version: String,
    /// What served, one per candidate.
    pub production: Vec<f32>,
    /// What the shadow predicted, one per candidate.
    pub shadow: Vec<f32>,
}

/// A bounded ring of the latest shadow records.
#[derive(Default)]
struct ShadowLog {
    records: std::sync::Mutex<std::collections::VecDeque<ShadowRecord>>,
}

impl ShadowLog {
    const CAPACITY: usize = 1_000;

    fn push(&self, r: ShadowRecord) {
        if let Ok(mut q) = self.records.lock() {
            if q.len() == Self::CAPACITY {
                q.pop_front();
            }
            q.push_back(r);
        }
    }

    fn recent(&self, n: usize) -> Vec<ShadowRecord> {
        self.records
            .lock()
            .map(|q| q.iter().skip(q.len().saturating_sub(n)).cloned().collect())
            .unwrap_or_default()
    }
}

struct Inner {
    experiments: ArcSwap<Experiments>,
    shadow_log: Arc<ShadowLog>,
    config: EngineConfig,
    market: ArcSwap<MarketSnapshot>,
    open: ArcSwap<OpenSet>,
    models: ArcSwap<ModelSet>,
    hydrator: Hydrator,
    spend: Arc<dyn SpendStore>,
    freq: ArcSwap<Arc<dyn FrequencyStore>>,
    /// With a fleet's shared event stream every server sees every impression: only the server
    /// that placed an ad confirms its spend. Ads this server placed (tracking key → when), kept
    /// while their reservations may still be confirmed; `None` when this server confirms all.
    placed_ads: ArcSwapOption<dashmap::DashMap<String, i64>>,
    pacing: ArcSwap<crate::pacing::Pacing>,
    calibration: Arc<podium_monitor::Calibration>,
    sink: Arc<dyn DecisionSink>,
    pool: ComputePool,
}

/// The decision engine. Cloning is cheap and shares everything.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

/// What [`Engine::hydrate_only`] found for one request.
#[derive(Clone, Debug, serde::Serialize)]
pub struct HydrationReport {
    /// Time of the batched fetch and the frame's request-level values, in µs.
    pub hydrate_us: u64,
    /// Candidates retrieval admitted (their line items and advertisers were fetched too).
    pub eligible: usize,
    /// Stored entities fetched.
    pub entities: usize,
    /// Whether the store held the viewer.
    pub user_found: bool,
    /// Why defaults were served, if they were.
    pub degraded: Option<String>,
    /// Request-level features by name (context, viewer, content).
    pub features: Vec<(String, f32)>,
}

/// What the compute stages hand back to the async part of `decide`.
struct Computed {
    breaks: Vec<BreakDecision>,
    model_versions: Vec<ModelUse>,
    degraded: Vec<String>,
    rank_us: u64,
    score_us: u64,
    value_us: u64,
    pod_us: u64,
    bookings: Vec<(u32, Micros)>,
    /// The candidates fully scored (their served features go to the feature log).
    top: Vec<u32>,
    /// What the auction read, for the decision log.
    replay: ReplayState,
}

/// The full-scoring models' answers for the top candidates, by the task the valuation reads.
pub(crate) struct TaskScores<'a> {
    pub(crate) ctr: Option<&'a [f32]>,
    pub(crate) completion: Option<&'a [f32]>,
    pub(crate) conversion: Option<&'a [f32]>,
}

impl<'a> TaskScores<'a> {
    /// The first scorer of each task (`tasks[m]` is scorer `m`'s), whose answers `scores` gives.
    pub(crate) fn of(tasks: &[String], scores: impl Fn(usize) -> &'a [f32]) -> Self {
        let by = |task: &str| tasks.iter().position(|t| t == task).map(&scores);
        Self {
            ctr: by("ctr"),
            completion: by("completion"),
            conversion: by("conversion"),
        }
    }
}

/// Values the candidates `top` for the pod: eCPM from each line item's bid type and the
/// predictions (priors where a task has no model), times its pacing multiplier; guaranteed
/// line items ahead of every best-effort one.
pub(crate) fn value_candidates(
    market: &MarketSnapshot,
    top: &[u32],
    scores: &TaskScores<'_>,
    multipliers: &[f64],
) -> Vec<PodCandidate> {
    let line_items = &market.marketplace.line_items;
    top.iter()
        .enumerate()
        .map(|(r, &i)| {
            let li = &line_items[i as usize];
            let keys = &market.keys[i as usize];
            let p_click = scores.ctr.map_or(f32::NAN, |v| v[r]);
            let p_complete = scores
                .completion
                .map_or(market.completion_priors[i as usize], |v| v[r]);
            let p_conversion = scores
                .conversion
                .map_or(li.priors.conversion_rate_7d, |v| v[r]);
            let guaranteed = market.goals[i as usize].is_some();
            let raw = ecpm(li.bid, p_click, p_complete, p_conversion);
            let value = Micros((raw.0 as f64 * multipliers[r]).round() as i64);
            PodCandidate {
                line_item: i,
                value: if guaranteed {
                    GUARANTEED_VALUE + value.0
                } else {
                    value.0
                },
                ecpm: value,
                guaranteed,
                creatives: keys.creatives.clone(),
                advertiser: keys.advertiser,
                category: keys.category,
                position: li.position,
            }
        })
        .collect()
}

/// A break with the deduplication the marketplace always applies: an advertiser once per break,
/// and one category once per break when competitors are separated.
pub(crate) fn break_rules(
    marketplace: &Marketplace,
    b: &podium_core::AdBreak,
) -> podium_core::AdBreak {
    let mut brk = b.clone();
    let mut extra = vec![DedupeKey::Advertiser];
    if marketplace.competitive_separation {
        extra.push(DedupeKey::Category);
    }
    for k in extra {
        if !brk.rules.dedupe.contains(&k) {
            brk.rules.dedupe.push(k);
        }
    }
    brk
}

/// Whether candidate `c` may take part in a pod: its lease covers its bid, it is not placed yet
/// in this request, and it is within its caps counting what this request placed.
pub(crate) fn allowed_in_pod(
    market: &MarketSnapshot,
    candidates: &[PodCandidate],
    available: &[i64],
    placed: &[u32],
    history: &[(u64, i64)],
    now_ms: i64,
    c: usize,
) -> bool {
    let i = candidates[c].line_item;
    available[c] >= candidates[c].ecpm.cpm_to_impression_cost().0
        && !placed.contains(&i)
        && (market.marketplace.line_items[i as usize].caps.is_empty()
            || !market.capped(i, history, now_ms, placed))
}

/// The best-effort ad of highest value a pod placed (its lead), ties to the earlier candidate.
fn lead_of(outcome: &PodOutcome, candidates: &[PodCandidate]) -> Option<usize> {
    outcome
        .placements
        .iter()
        .map(|p| p.candidate)
        .filter(|&c| !candidates[c].guaranteed)
        .max_by_key(|&c| (candidates[c].value, std::cmp::Reverse(c)))
}

/// Solves one break. With exploration on (`epsilon` > 0) the break explores with probability
/// `epsilon` (a draw of the request and break ids, so replays draw the same): a best-effort
/// candidate drawn uniformly among those allowed whose creatives fit the break is valued above
/// every other best-effort one, so that it leads the pod; prices still come from eCPMs. The
/// lead's propensity is then `1 - ε + ε/n` for the greedy lead and `ε/n` for any other.
pub(crate) fn solve_break(
    market: &MarketSnapshot,
    request_id: &str,
    brk: &podium_core::AdBreak,
    reserve: Micros,
    candidates: &[PodCandidate],
    allowed: &dyn Fn(usize) -> bool,
    epsilon: f64,
) -> (PodOutcome, Option<Explored>) {
    let auction = market.marketplace.auction;
    let greedy = solve_pod(brk, reserve, candidates, allowed, auction);
    if epsilon <= 0.0 {
        return (greedy, None);
    }
    let choices: Vec<usize> = (0..candidates.len())
        .filter(|&c| {
            let cand = &candidates[c];
            !cand.guaranteed
                && cand.value > 0
                && cand
                    .creatives
                    .iter()
                    .any(|cr| cr.duration_s <= brk.max_duration_s)
                && allowed(c)
        })
        .collect();
    let n = choices.len();
    let greedy_lead = lead_of(&greedy, candidates);
    let key = format!("{request_id}\u{1f}{}", brk.id.as_str());
    let id_of = |c: usize| {
        market.marketplace.line_items[candidates[c].line_item as usize]
            .id
            .to_string()
    };
    let explores = n > 0 && podium_pacing::draw(&key, 0xE0) < epsilon;
    if !explores {
        let propensity = match greedy_lead {
            Some(_) if n > 0 => 1.0 - epsilon + epsilon / n as f64,
            None if n > 0 => 1.0 - epsilon,
            _ => 1.0,
        };
        let explored = Explored {
            break_id: brk.id.to_string(),
            lead: greedy_lead.map(id_of),
            propensity: Some(propensity),
            explored: false,
            choices: n as u32,
            rate: epsilon,
        };
        return (greedy, Some(explored));
    }
    let pick = choices[((podium_pacing::draw(&key, 0xE1) * n as f64) as usize).min(n - 1)];
    let mut boosted = candidates.to_vec();
    let others: i64 = candidates
        .iter()
        .filter(|c| !c.guaranteed && c.value > 0)
        .map(|c| c.value)
        .fold(0, i64::saturating_add);
    boosted[pick].value = others.saturating_add(1).min(GUARANTEED_VALUE - 1);
    let outcome = solve_pod(brk, reserve, &boosted, allowed, auction);
    let lead = lead_of(&outcome, &boosted);
    let propensity = (lead == Some(pick)).then(|| {
        if greedy_lead == Some(pick) {
            1.0 - epsilon + epsilon / n as f64
        } else {
            epsilon / n as f64
        }
    });
    let explored = Explored {
        break_id: brk.id.to_string(),
        lead: lead.map(id_of),
        propensity,
        explored: true,
        choices: n as u32,
        rate: epsilon,
    };
    (outcome, Some(explored))
}

/// The ad a placement serves.
pub(crate) fn placed_ad(
    market: &MarketSnapshot,
    b: &podium_core::AdBreak,
    cand: &PodCandidate,
    p: &podium_auction::pod::PodPlacement,
    multiplier: f64,
) -> PlacedAd {
    let li = &market.marketplace.line_items[cand.line_item as usize];
    let creative = &li.creatives[p.creative as usize];
    PlacedAd {
        line_item_id: li.id.clone(),
        creative_id: creative.id.clone(),
        advertiser_id: li.advertiser_id.clone(),
        duration_s: creative.duration_s,
        price_cpm: p.price_cpm,
        ecpm: cand.ecpm,
        slot: p.slot.map(|j| b.rules.slots[j].id.clone()),
        multiplier,
    }
}

fn us(d: Duration) -> u64 {
    d.as_micros() as u64
}

/// The stored-entity keys of every line item of the market (handle = its index), for the
/// hydrator's candidate table.
pub(crate) fn candidate_keys(market: &MarketSnapshot) -> Vec<CandidateKeys<'_>> {
    market
        .marketplace
        .line_items
        .iter()
        .enumerate()
        .map(|(i, li)| CandidateKeys {
            handle: i as u32,
            line_item: li.id.as_str(),
            advertiser: li.advertiser_id.as_str(),
        })
        .collect()
}

impl Engine {
    /// Assembles an engine from its parts.
    pub fn new(
        config: EngineConfig,
        market: MarketSnapshot,
        models: ModelSet,
        hydrator: Hydrator,
        spend: Arc<dyn SpendStore>,
        sink: Arc<dyn DecisionSink>,
        pool: ComputePool,
    ) -> Self {
        let market = Arc::new(market);
        models.stats.set_drift(config.monitoring);
        Self {
            inner: Arc::new(Inner {
                shadow_log: Arc::default(),
                experiments: ArcSwap::default(),
                config,
                open: ArcSwap::from_pointee(OpenSet::new(market.clone())),
                market: ArcSwap::new(market),
                models: ArcSwap::from_pointee(models),
                hydrator,
                spend,
                freq: ArcSwap::from_pointee(Arc::new(MemoryFrequencyStore::new(
                    podium_auction::MAX_CAP_WINDOW_S as i64 * 1000,
                ))),
                placed_ads: ArcSwapOption::empty(),
                pacing: ArcSwap::from_pointee(crate::pacing::Pacing::embedded()),
                calibration: Arc::new(podium_monitor::Calibration::new(Default::default())),
                sink,
                pool,
            }),
        }
    }

    /// An impression of a line item played (from the event path, after deduplication): it
    /// counts toward the viewer's frequency caps and, when the event carries its price (`value`,
    /// the CPM paid), confirms the spend reserved when it was decided. `ad` is the tracking key
    /// of the placed ad (`trk:<request>:<break>:<seq>`) and `event_id` the event's id. In a fleet
    /// ([`Engine::confirm_own_ads_only`]) only the server that placed `ad` confirms its spend. An
    /// id the marketplace does not know is ignored (it may be from before a marketplace
    /// change); returns whether it was counted.
    pub fn record_impression(
        &self,
        user: &str,
        line_item: &str,
        ts_ms: i64,
        price_cpm: Option<f64>,
        ad: Option<&str>,
        event_id: &str,
    ) -> bool {
        let market = self.inner.market.load();
        let Some(i) = market.position(&line_item.into()) else {
            return false;
        };
        self.inner
            .freq
            .load()
            .record(user, &market.keys[i as usize].caps, ts_ms, event_id);
        let mine = match &*self.inner.placed_ads.load() {
            Some(placed) => ad.is_some_and(|a| placed.remove(a).is_some()),
            None => true,
        };
        if let Some(price) = price_cpm.filter(|p| mine && p.is_finite() && *p >= 0.0) {
            let cost = Micros::from_units(price).cpm_to_impression_cost();
            self.inner.pacing.load().confirm(&market, i, cost, ts_ms);
            let li = &market.marketplace.line_items[i as usize];
            let (day, _) = Day::of_ms(ts_ms);
            let total = self.inner.spend.add(day, &li.id, cost);
            if !has_budget(total, market.daily_budget(i as usize)) {
                self.open_set(&market).close(i);
            }
        }
        true
    }

    /// Sets daily budgets at run time (line item id → budget), replacing those set before; ids
    /// the marketplace does not know are skipped (returned). Pacing, leases and the budget check
    /// use them from the next request on.
    pub fn set_budget_overrides(&self, budgets: &HashMap<String, Micros>) -> Vec<String> {
        let market = self.market();
        let mut by_index = HashMap::with_capacity(budgets.len());
        let mut unknown = Vec::new();
        for (id, budget) in budgets {
            match market.position(&id.as_str().into()) {
                Some(i) => {
                    by_index.insert(i, *budget);
                }
                None => unknown.push(id.clone()),
            }
        }
        if **market.budget_overrides.load() != by_index {
            market.budget_overrides.store(Arc::new(by_index));
            // Budgets changed mid-day: which line items are open is worked out again.
            self.inner
                .open
                .store(Arc::new(OpenSet::new(market.clone())));
        }
        unknown
    }

    /// Where frequency caps are counted.
    pub fn frequency_store(&self) -> Arc<dyn FrequencyStore> {
        self.inner.freq.load_full().as_ref().clone()
    }

    /// Counts frequency caps in `store` (a fleet's shared one) instead of this process.
    pub fn use_frequency_store(&self, store: Arc<dyn FrequencyStore>) {
        self.inner.freq.store(Arc::new(store));
    }

    /// For a fleet whose servers all read one event stream: confirm spend only for ads this
    /// server placed (each impression is then confirmed once, by the server that reserved it).
    pub fn confirm_own_ads_only(&self) {
        self.inner
            .placed_ads
            .store(Some(Arc::new(dashmap::DashMap::new())));
    }

    /// Uses a shared budget ledger (Redis) for a fleet of about `servers`: leases are then taken
    /// by the control loop ([`Engine::pacing_tick`]), never on the request path.
    pub fn use_budget_ledger(&self, ledger: Arc<dyn podium_pacing::BudgetLedger>, servers: u32) {
        self.inner
            .pacing
            .store(Arc::new(crate::pacing::Pacing::shared(ledger, servers)));
    }

    /// One step of the pacing control loop (every second or so): reports spend, refills budget
    /// leases, learns traffic and updates every line item's throttle and bid multiplier.
    pub async fn pacing_tick(&self, now_ms: i64) {
        if let Some(own) = &*self.inner.placed_ads.load() {
            // An ad unconfirmed this long never played: its reservation has expired too.
            own.retain(|_, placed| {
                *placed > now_ms - podium_pacing::LeaseConfig::default().pending_ttl_ms
            });
        }
        let market = self.market();
        let pacing = self.inner.pacing.load_full();
        pacing.tick(&market, now_ms).await;
        if pacing.replan_due(now_ms) {
            market.replan(pacing.remaining_requests(&market, now_ms));
        }
    }

    /// Calibration of the models against what viewers did with the ads they placed.
    pub fn calibration(&self) -> &Arc<podium_monitor::Calibration> {
        &self.inner.calibration
    }

    /// Every line item's pacing at the last control step: budget, spend, target, state.
    pub fn pacing_view(&self) -> Vec<crate::pacing::PacingView> {
        self.inner.pacing.load().view()
    }

    /// Whether the budget ledger answered at the last control step.
    pub fn budget_ledger_up(&self) -> bool {
        self.inner.pacing.load().ledger_up()
    }

    /// Scores the shadows whose share `req`'s user falls in, on the pool after the request's own
    /// work, never delaying it: their figures go to the live statistics and their scores, beside
    /// production's, to the shadow log.
    fn shadow(
        &self,
        req: &AdRequest,
        models: &ModelSet,
        frame: &Arc<FeatureFrame>,
        scores: &[Scored],
    ) {
        for (slot, served) in models.scorers.iter().zip(scores) {
            let Some(shadow) = slot.shadow() else {
                continue;
            };
            if !shadow.selects(req.user.id.as_str(), &slot.name(), "shadow") {
                continue;
            }
            let (model, frame, stats) = (
                shadow.model.clone(),
                frame.clone(),
                models.stats.of_model(shadow.model.model()),
            );
            let log = self.inner.shadow_log.clone();
            let record = ShadowRecord {
                request_id: req.request_id.to_string(),
                model: served.model.0.clone(),
                production_version: served.model.1.clone(),
                shadow_version: model.model().version().to_string(),
                production: served.values.clone(),
                shadow: Vec::new(),
            };
            self.inner.pool.spawn(move || {
                let t = Instant::now();
                let answer = model.try_score(&frame);
                stats.record_scored(t.elapsed(), &model, &frame, answer.as_deref().ok());
                if let Ok(values) = answer {
                    log.push(ShadowRecord {
                        shadow: values,
                        ..record
                    });
                }
            });
        }
    }

    /// Sets the experiments requests are assigned to from now on.
    pub fn set_experiments(&self, experiments: Experiments) {
        self.inner.experiments.store(Arc::new(experiments));
    }

    /// The frame schema models bind to.
    pub fn schema(&self) -> &Arc<podium_core::FrameSchema> {
        self.inner.hydrator.space().schema()
    }

    /// The most recent shadow scores, newest last.
    pub fn shadow_recent(&self, n: usize) -> Vec<ShadowRecord> {
        self.inner.shadow_log.recent(n)
    }

    /// Publishes a new model set: requests admitted from now on use it; requests in flight
    /// finish on the set they pinned, whose memory goes when the last of them ends. The live
    /// statistics carry over.
    pub fn set_models(&self, mut models: ModelSet) {
        models.stats = self.inner.models.load().stats.clone();
        self.inner.models.store(Arc::new(models));
    }

    /// The budget bitmap of `market`, made anew when the marketplace has been swapped.
    fn open_set(&self, market: &Arc<MarketSnapshot>) -> Arc<OpenSet> {
        let open = self.inner.open.load_full();
        if Arc::ptr_eq(&open.market, market) {
            return open;
        }
        let fresh = Arc::new(OpenSet::new(market.clone()));
        self.inner.open.store(fresh.clone());
        fresh
    }

    /// The model set requests admitted now will use.
    pub fn models(&self) -> Arc<ModelSet> {
        self.inner.models.load_full()
    }

    /// The hydrator: its feature space, online store and counters.
    pub fn hydrator(&self) -> &Hydrator {
        &self.inner.hydrator
    }

    /// Retrieval and hydration of one request, as [`decide`](Self::decide) runs them, without
    /// the models or the auction: what a request would be served, and how long the fetch took.
    pub async fn hydrate_only(&self, req: &AdRequest) -> HydrationReport {
        let inner = &self.inner;
        let market = inner.market.load_full();
        let open = self.open_set(&market);
        open.refresh(Day::today(), inner.spend.as_ref());
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let eligible = market.index.eligible_where(req, now_ms, |w| open.word(w));
        self.refresh_candidates_if_due(&market);
        let t = Instant::now();
        let hydrated = inner
            .hydrator
            .hydrate(
                req,
                inner
                    .config
                    .hydrate_budget
                    .min(req.tmax.unwrap_or(inner.config.default_tmax)),
            )
            .await;
        let hydrate_us = us(t.elapsed());
        let names = inner.hydrator.space().schema().names();
        HydrationReport {
            hydrate_us,
            eligible: eligible.len(),
            entities: hydrated.served.len() + eligible.len(),
            user_found: hydrated.user_found,
            degraded: hydrated.degraded,
            features: names
                .iter()
                .cloned()
                .zip(hydrated.request_values.iter().copied())
                .collect(),
        }
    }

    /// Starts a background refresh of the hydrator's candidate table when it is due (one at a
    /// time; requests meanwhile use the table they find).
    fn refresh_candidates_if_due(&self, market: &Arc<MarketSnapshot>) {
        if !self.inner.hydrator.candidates_due() {
            return;
        }
        let (engine, market) = (self.clone(), market.clone());
        tokio::spawn(async move {
            let keys = candidate_keys(&market);
            if let Err(e) = engine.inner.hydrator.refresh_candidates(&keys).await {
                tracing::warn!(error = %e, "candidate features refresh failed; the last table serves");
            }
        });
    }

    /// Reads the candidate table now (before serving, and after the marketplace changes).
    pub async fn refresh_candidates(&self) {
        let market = self.market();
        let keys = candidate_keys(&market);
        if let Err(e) = self.inner.hydrator.refresh_candidates(&keys).await {
            tracing::warn!(error = %e, "candidate features refresh failed");
        }
    }

    /// The marketplace requests admitted now will use.
    pub fn market(&self) -> Arc<MarketSnapshot> {
        self.inner.market.load_full()
    }

    /// The compute pool model scoring runs on.
    pub fn pool(&self) -> &ComputePool {
        &self.inner.pool
    }

    /// The pipeline's configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// Decides one validated request. `received` is when the request arrived, so that parsing
    /// counts against its deadline. Always answers: a stage that fails or runs late degrades
    /// (defaults, fallback priors, an empty pod) and says so in `degraded`.
    pub async fn decide(&self, req: AdRequest, received: Instant) -> Decision {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.decide_at(req, received, now_ms).await
    }

    /// Decides one validated request as [`decide`](Self::decide) does, at `now_ms` (ms since the
    /// UTC epoch) instead of the wall clock: the record's `ts_ms`, the day whose budgets and
    /// guaranteed delivery count, pacing and frequency caps all take this time, so a simulator
    /// can run days of traffic in minutes. `received` stays a real instant: the deadline is
    /// wall-clock time spent deciding. Stored feature values are still aged by the wall clock,
    /// the clock they were written by.
    pub async fn decide_at(&self, req: AdRequest, received: Instant, now_ms: u64) -> Decision {
        let inner = &self.inner;
        let deadline = Deadline::new(received, req.tmax.unwrap_or(inner.config.default_tmax));
        let ts_ms = now_ms;
        let market = inner.market.load_full();
        let models = inner.models.load_full();
        let assignment = inner.experiments.load().assign(req.user.id.as_str());
        let admit_us = us(deadline.elapsed());

        // Retrieval first: it needs no features, and it names the candidates whose stored
        // features join the viewer's in hydration's one batched read.
        let t = Instant::now();
        let (day, _) = Day::of_ms(ts_ms as i64);
        let open = self.open_set(&market);
        open.refresh(day, inner.spend.as_ref());
        let mut eligible = market
            .index
            .eligible_where(&req, ts_ms as i64, |w| open.word(w));
        let fetched = if market.any_caps {
            let freq = inner.freq.load_full();
            freq.history(req.user.id.as_str()).await
        } else {
            Ok(Vec::new())
        };
        let caps_down = fetched.as_ref().err().cloned();
        let history = market.admit(&req, &mut eligible, fetched, ts_ms as i64);
        let pacing = inner.pacing.load_full();
        pacing.saw_request();
        let states = pacing.states(&market, ts_ms as i64);
        let states = (*states).as_ref();
        // Pacing throttles best-effort line items: each takes part with its throttle probability
        // (a draw of its own, not the guaranteed allocation's).
        eligible.retain(|&i| {
            market.goals[i as usize].is_some() || {
                let t = states.get(i as usize).map_or(1.0, |s| s.throttle);
                t >= 1.0 || podium_pacing::draw(req.request_id.as_str(), i ^ 0x5A5A_0000) < t
            }
        });
        let retrieve_us = us(t.elapsed());
        let eligible_count = eligible.len();

        self.refresh_candidates_if_due(&market);
        let t = Instant::now();
        let hydrated = inner
            .hydrator
            .hydrate(&req, inner.config.hydrate_budget.min(deadline.remaining()))
            .await;
        let hydrate_us = us(t.elapsed());
        let mut degraded: Vec<String> = hydrated
            .degraded
            .iter()
            .map(|d| format!("hydrate: {d}"))
            .chain(
                hydrated.signal_fallbacks.iter().map(|(source, why)| {
                    format!("signal {source}: {}, defaults served", why.as_str())
                }),
            )
            .chain(
                caps_down
                    .map(|e| format!("frequency caps unreadable ({e}); capped line items skipped")),
            )
            .collect();

        let computed = self
            .select(
                &req,
                &market,
                &models,
                &hydrated,
                &eligible,
                deadline,
                &assignment,
                &history,
                ts_ms as i64,
            )
            .await;
        degraded.extend(computed.degraded);

        // Spend is counted when impressions confirm it; here the guaranteed delivery counters.
        for &(li, _) in &computed.bookings {
            if market.goals[li as usize].is_some() {
                market.delivery.delivered(li);
            }
        }

        let timings = StageTimings {
            admit_us,
            hydrate_us,
            retrieve_us,
            rank_us: computed.rank_us,
            score_us: computed.score_us,
            value_us: computed.value_us,
            pod_us: computed.pod_us,
            total_us: us(deadline.elapsed()),
        };
        let decision = Decision {
            request_id: req.request_id.clone(),
            breaks: computed.breaks,
            model_versions: computed.model_versions,
            timings,
            eligible: eligible_count,
            degraded,
            experiments: if assignment.holdout {
                vec!["holdout".to_string()]
            } else {
                assignment.arms
            },
        };
        let candidates = if inner.hydrator.wants_candidates() {
            inner.hydrator.served_candidates(&hydrated, &computed.top)
        } else {
            Vec::new()
        };
        let mut served = hydrated.served;
        served.extend(candidates);
        let served: Arc<[podium_features::ServedEntity]> = served.into();
        let names = inner.hydrator.space().schema().names();
        let features = names
            .iter()
            .cloned()
            .zip(hydrated.request_values.iter().copied())
            .collect();
        inner.sink.submit(DecisionRecord {
            ts_ms,
            request: req,
            features,
            decision: decision.clone(),
            served,
            replay: computed.replay,
        });
        decision
    }

    /// Rank, score, value and pod. Each model runs on the compute pool under the deadline, with
    /// its fallback tiers; valuation and pod construction are cheap and run inline.
    #[allow(clippy::too_many_arguments)]
    async fn select(
        &self,
        req: &AdRequest,
        market: &MarketSnapshot,
        models: &ModelSet,
        hydrated: &podium_features::Hydrated,
        eligible: &[u32],
        deadline: Deadline,
        assignment: &Assignment,
        history: &[(u64, i64)],
        now_ms: i64,
    ) -> Computed {
        let inner = &self.inner;
        let hydrator = &inner.hydrator;
        let reserve = inner.config.response_reserve;
        let placed_ads = inner.placed_ads.load_full();
        let mut degraded = Vec::new();
        let mut model_versions = Vec::new();
        let mut note = |s: &Scored| {
            model_versions.push(ModelUse {
                name: s.model.0.clone(),
                version: s.model.1.clone(),
                tier: s.tier,
            });
            degraded.extend(s.fallback_reasons.iter().map(|r| format!("model {r}")));
        };

        // Early rank: a light model on every eligible candidate, valued roughly, keeps the top K.
        let t = Instant::now();
        let rows: Vec<&[f32]> = eligible
            .iter()
            .map(|&i| market.candidate_features[i as usize].as_slice())
            .collect();
        let frame =
            Arc::new(hydrator.frame_of(hydrated, &rows, eligible, &models.ranker_columns()));
        let unit = req.user.id.as_str();
        let mut missing = Vec::new();
        let ranker = ModelSet::arrange(
            std::slice::from_ref(&models.ranker),
            unit,
            assignment.holdout,
            &assignment.models,
            &mut missing,
        );
        let ranked = run_stage(
            &ranker,
            &inner.pool,
            frame,
            deadline,
            reserve,
            &models.stats,
        )
        .await
        .pop()
        .expect("one slot, one answer");
        note(&ranked);
        let top_k = assignment.top_k.unwrap_or(models.top_k);
        let top = market.top_k(eligible, &ranked.values, top_k);
        let rank_us = us(t.elapsed());

        // Full scoring: every model on the top K, in parallel on the pool.
        let t = Instant::now();
        let rows: Vec<&[f32]> = top
            .iter()
            .map(|&i| market.candidate_features[i as usize].as_slice())
            .collect();
        let frame = Arc::new(hydrator.frame_of(hydrated, &rows, &top, &models.scorer_columns()));
        let scorers = ModelSet::arrange(
            &models.scorers,
            unit,
            assignment.holdout,
            &assignment.models,
            &mut missing,
        );

        let scores: Vec<Scored> = run_stage(
            &scorers,
            &inner.pool,
            frame.clone(),
            deadline,
            reserve,
            &models.stats,
        )
        .await;
        for s in &scores {
            note(s);
        }
        self.shadow(req, models, &frame, &scores);
        degraded.extend(
            missing
                .into_iter()
                .map(|m| format!("experiment: {m} is not loaded; served the usual version")),
        );
        let score_us = us(t.elapsed());

        // Value: eCPM from bid type and the calibrated predictions.
        let t = Instant::now();
        let pacing = inner.pacing.load_full();
        let states = pacing.states(market, now_ms);
        let states = (*states).as_ref();
        // Best-effort bids are the value times the pacing multiplier (clipped by the
        // controller); guaranteed ones bid their contract.
        let multipliers: Vec<f64> = top
            .iter()
            .map(|&i| {
                if market.goals[i as usize].is_some() {
                    1.0
                } else {
                    states.get(i as usize).map_or(1.0, |s| s.multiplier)
                }
            })
            .collect();
        // Shared by every placed ad's calibration record: one allocation per decision, not per ad.
        let model_of = |task: &str| {
            models.scorer_for(task).map(|i| {
                let (name, version) = &scores[i].model;
                (
                    Arc::<str>::from(name.as_str()),
                    Arc::<str>::from(version.as_str()),
                    Arc::<str>::from(task),
                )
            })
        };
        let (ctr_model, completion_model) = (model_of("ctr"), model_of("completion"));
        let tasks: Vec<String> = models
            .scorers
            .iter()
            .map(|s| s.task().to_string())
            .collect();
        let by_task = TaskScores::of(&tasks, |m| scores[m].values.as_slice());
        let candidates = value_candidates(market, &top, &by_task, &multipliers);
        // What each candidate's budget lease may still hand out on this server: an ad whose bid
        // it cannot cover does not take part.
        let mut available = Vec::with_capacity(candidates.len());
        for c in &candidates {
            let want = c.ecpm.cpm_to_impression_cost();
            available.push(pacing.available(market, c.line_item, now_ms, want).await.0);
        }
        let value_us = us(t.elapsed());

        // Pod: each break in playback order, solved exactly, a line item at most once per
        // request and within its caps counting what this request already placed.
        let t = Instant::now();
        let marketplace = &market.marketplace;
        let mut placed: Vec<u32> = Vec::new();
        let mut bookings = Vec::new();
        let mut breaks = Vec::with_capacity(req.breaks.len());
        let mut reserves = Vec::with_capacity(req.breaks.len());
        let mut lease_lost = Vec::new();
        let mut explore = Vec::new();
        for b in &req.breaks {
            let brk = break_rules(marketplace, b);
            let segment = DynamicReserve::segment(req, b);
            let learned = market
                .dynamic_reserve
                .as_ref()
                .map_or(Micros::ZERO, |d| d.reserve(&segment));
            let reserve = Micros(
                (static_floor(marketplace, req, b).max(learned).0 as f64
                    * assignment.reserve_multiplier)
                    .round() as i64,
            );
            reserves.push(reserve.0);
            let allowed = |c: usize| {
                allowed_in_pod(market, &candidates, &available, &placed, history, now_ms, c)
            };
            let (outcome, explored) = solve_break(
                market,
                req.request_id.as_str(),
                &brk,
                reserve,
                &candidates,
                &allowed,
                inner.config.exploration,
            );
            explore.extend(explored);
            if !outcome.exact {
                degraded.push(format!(
                    "pod {}: search limit reached, best pod found served",
                    b.id.as_str()
                ));
            }
            // The break's winning bid, with the number of candidates it beat: the learner
            // corrects for the winner being the best of many.
            if let Some(d) = &market.dynamic_reserve {
                let (mut top, mut competitors) = (None, 0u32);
                for (c, cand) in candidates.iter().enumerate() {
                    if cand.guaranteed || !allowed(c) {
                        continue;
                    }
                    competitors += 1;
                    if outcome.placements.iter().any(|p| p.candidate == c) {
                        top = top.max(Some(cand.ecpm));
                    }
                }
                if let Some(top) = top {
                    d.observe(&segment, top, competitors);
                }
            }
            let mut placed_here: Vec<usize> = Vec::new();
            let ads = outcome
                .placements
                .into_iter()
                .filter(|p| {
                    // The lease is this ad's right to spend; a race that lost it drops the ad.
                    let cand = &candidates[p.candidate];
                    let kept = pacing.reserve(
                        market,
                        cand.line_item,
                        p.price_cpm.cpm_to_impression_cost(),
                        now_ms,
                    );
                    if !kept {
                        lease_lost.push(cand.line_item);
                    }
                    kept
                })
                .map(|p| {
                    let cand = &candidates[p.candidate];
                    placed_here.push(p.candidate);
                    if let Some(own) = &placed_ads {
                        own.insert(
                            format!(
                                "trk:{}:{}:{}",
                                req.request_id.as_str(),
                                b.id.as_str(),
                                placed_here.len()
                            ),
                            now_ms,
                        );
                    }
                    placed.push(cand.line_item);
                    bookings.push((cand.line_item, p.price_cpm));
                    placed_ad(market, b, cand, &p, multipliers[p.candidate])
                })
                .collect();
            // What the models predicted for each ad that plays, under the key its tracking
            // events carry, so outcomes can be joined to it.
            let monitored = if inner.config.monitoring {
                placed_here.as_slice()
            } else {
                &[]
            };
            for (k, p) in monitored.iter().enumerate() {
                let (p_click, p_complete) = (
                    by_task.ctr.map_or(f32::NAN, |v| v[*p]),
                    by_task.completion.map(|v| v[*p]),
                );
                let mut preds = Vec::with_capacity(2);
                if let (Some((name, version, task)), false) = (&ctr_model, p_click.is_nan()) {
                    preds.push(podium_monitor::Prediction {
                        task: task.clone(),
                        model: name.clone(),
                        version: version.clone(),
                        p: p_click,
                    });
                }
                if let (Some((name, version, task)), Some(pc)) = (&completion_model, p_complete) {
                    preds.push(podium_monitor::Prediction {
                        task: task.clone(),
                        model: name.clone(),
                        version: version.clone(),
                        p: pc,
                    });
                }
                inner.calibration.predicted(
                    format!(
                        "trk:{}:{}:{}",
                        req.request_id.as_str(),
                        b.id.as_str(),
                        k + 1
                    ),
                    now_ms,
                    req.user.device.as_str(),
                    preds,
                );
            }
            breaks.push(BreakDecision {
                break_id: b.id.clone(),
                ads,
            });
        }
        let mut flat_scores = Vec::with_capacity(tasks.len() * top.len());
        for s in &scores {
            flat_scores.extend_from_slice(&s.values);
        }
        let replay = ReplayState {
            market: market.fingerprint,
            tasks,
            top: top.clone(),
            scores: flat_scores,
            multipliers,
            available,
            reserves,
            history: history.to_vec(),
            lease_lost,
            explore,
        };
        let pod_us = us(t.elapsed());

        Computed {
            breaks,
            model_versions,
            degraded,
            rank_us,
            score_us,
            value_us,
            pod_us,
            bookings,
            top,
            replay,
        }
    }
}

impl Engine {
    /// Runs the CPU stages on synthetic requests (one per device, live and not) without booking
    /// spend or logging, so that first real requests do not pay for cold caches and lazy setup.
    pub async fn warm_up(&self, rounds: usize) {
        use podium_core::{AdBreak, BreakPosition, Content, Device, User};
        if self.inner.hydrator.wants_candidates() {
            self.refresh_candidates().await;
        }
        for round in 0..rounds {
            for device in Device::ALL {
                let req = AdRequest {
                    request_id: "warm-up".into(),
                    user: User {
                        id: format!("u-{round}").as_str().into(),
                        country: "US".into(),
                        device,
                        region: None,
                        segments: Vec::new(),
                        utc_offset_min: None,
                    },
                    content: Content {
                        id: "warm-up".into(),
                        genre: "drama".into(),
                        live: round % 2 == 1,
                        rating: None,
                        event_id: None,
                    },
                    breaks: vec![AdBreak {
                        id: "b".into(),
                        position: BreakPosition::Midroll,
                        max_ads: 4,
                        max_duration_s: 90,
                        rules: Default::default(),
                    }],
                    tmax: None,
                    blocked_categories: Vec::new(),
                    blocked_advertisers: Vec::new(),
                };
                // Short, so that a model made to stall (a drill) is abandoned instead of waited on.
                let deadline = Deadline::after(
                    self.inner
                        .config
                        .default_tmax
                        .min(Duration::from_millis(50)),
                );
                let market = self.market();
                let models = self.models();
                let now_ms = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as i64);
                let eligible = market.index.eligible(&req, now_ms);
                let hydrated = self
                    .inner
                    .hydrator
                    .hydrate(&req, self.inner.config.hydrate_budget)
                    .await;
                self.select(
                    &req,
                    &market,
                    &models,
                    &hydrated,
                    &eligible,
                    deadline,
                    &Assignment::default(),
                    &[],
                    now_ms,
                )
                .await;
            }
        }
    }
}
