//! The pacing simulator: a simulated day of ad traffic, fast, through the real targeting index,
//! pod optimiser, pacing controllers, guaranteed-delivery plan, budget ledger and lease books.
//!
//! Time is simulated (every component takes `now_ms`), so a day runs in about a minute. Requests
//! arrive second by second (Poisson around a diurnal curve, or a live-event burst), each with one
//! ad break; line items take part as their pacing allows (throttle draw, bid multiplier), only
//! within what their server's lease covers, and pay a second price. Impressions come back after a
//! delay (most of them: some ads never play, and their reservations expire), and only then count
//! as spend. Each server runs its own control loop every `tick_s` over the global spend it reads
//! from the shared ledger.

use podium_auction::{
    solve_pod, AuctionType, Bid, Creative, Goal, LineItem, LineItemPriors, PodCandidate,
    PodCreative, Targeting, TargetingIndex,
};
use podium_core::{AdBreak, AdRequest, BreakPosition, Content, Device, Micros, SlotPosition, User};
use podium_pacing::{
    hwm_plan, local_day, BudgetLedger, BudgetSpec, Contract, Controller, LeaseBook, LeaseConfig,
    LocalDay, MemoryLedger, PacingMode, PacingState, PidParams, PidTarget, Plan, SupplySample,
    TimeZone, TrafficForecast,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::Arc;

/// What the simulated day goes through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// A diurnal traffic curve, nothing else.
    Steady,
    /// At 20:00 traffic rises ×20 within 60 s and stays there for two hours.
    LiveEvent,
    /// At noon budgets are edited: some raised, some lowered, one below what it has spent.
    BudgetChange,
    /// Four servers share the budget ledger (Redis when given), requests spread over them.
    MultiServer,
}

impl Scenario {
    /// Parses `steady`, `live-event`, `budget-change`, `multi-server`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "steady" => Some(Self::Steady),
            "live-event" => Some(Self::LiveEvent),
            "budget-change" => Some(Self::BudgetChange),
            "multi-server" => Some(Self::MultiServer),
            _ => None,
        }
    }

    /// Every scenario's name.
    pub const NAMES: [&'static str; 4] = ["steady", "live-event", "budget-change", "multi-server"];
}

/// Settings of a run.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// The scenario.
    pub scenario: Scenario,
    /// Seed of the market, the traffic and every draw.
    pub seed: u64,
    /// Line items in the simulated market.
    pub line_items: usize,
    /// Requests per second at the daily peak (before any live event).
    pub peak_rate: f64,
    /// Seconds between two runs of each server's control loop.
    pub tick_s: u64,
    /// Servers sharing the budgets (4 for `multi-server`, else 1 unless set).
    pub servers: usize,
    /// Days simulated; the forecast learns from the first ones.
    pub days: u32,
    /// `redis://…` for a shared Redis ledger; the embedded ledger otherwise.
    pub redis: Option<String>,
}

impl SimConfig {
    /// The defaults for a scenario.
    pub fn new(scenario: Scenario, seed: u64) -> Self {
        Self {
            scenario,
            seed,
            line_items: 48,
            peak_rate: 40.0,
            tick_s: 10,
            servers: if scenario == Scenario::MultiServer {
                4
            } else {
                1
            },
            days: 2,
            redis: None,
        }
    }
}

/// Simulated time starts on Monday 2026-11-23 00:00 UTC.
pub const START_MS: i64 = 1_795_392_000_000;
const DAY_MS: i64 = 86_400_000;
/// Impressions arrive this long after the decision, at most.
const MAX_RENDER_DELAY_S: i64 = 90;
/// Share of placed ads that play (the rest never report; their reservations expire).
const RENDER_RATE: f64 = 0.97;

const COUNTRIES: [&str; 3] = ["US", "CA", "GB"];
const GENRES: [&str; 4] = ["drama", "sports", "news", "comedy"];
const DEVICES: [Device; 3] = [Device::Tv, Device::Mobile, Device::Desktop];

/// Relative traffic by hour of the day (UTC): a night trough and an evening peak, as streaming
/// services see.
const DIURNAL: [f64; 24] = [
    0.35, 0.25, 0.18, 0.14, 0.12, 0.13, 0.18, 0.28, 0.38, 0.42, 0.45, 0.48, 0.52, 0.52, 0.5, 0.52,
    0.58, 0.66, 0.78, 0.9, 1.0, 0.97, 0.82, 0.58,
];

/// Requests per second at `t` (ms since the epoch), before any live event.
pub fn diurnal_rate(peak: f64, t_ms: i64) -> f64 {
    let day_ms = t_ms.rem_euclid(DAY_MS);
    let h = (day_ms / 3_600_000) as usize;
    let frac = (day_ms % 3_600_000) as f64 / 3_600_000.0;
    // Linear between hour marks, so the curve has no steps for the controllers to chase.
    let (a, b) = (DIURNAL[h], DIURNAL[(h + 1) % 24]);
    peak * (a + (b - a) * frac)
}

/// The live event's multiplier at `t`: ×20 reached within 60 s of 20:00 on the last day, for
/// two hours, and back within 60 s.
fn event_multiplier(scenario: Scenario, last_day_start: i64, t_ms: i64) -> f64 {
    if scenario != Scenario::LiveEvent {
        return 1.0;
    }
    let start = last_day_start + 20 * 3_600_000;
    let end = start + 2 * 3_600_000;
    let ramp = 60_000.0;
    if t_ms < start || t_ms >= end + 60_000 {
        1.0
    } else if t_ms < start + 60_000 {
        1.0 + 19.0 * (t_ms - start) as f64 / ramp
    } else if t_ms < end {
        20.0
    } else {
        20.0 - 19.0 * (t_ms - end) as f64 / ramp
    }
}

/// A simulated line item with its pacing.
#[derive(Clone, Debug)]
struct SimItem {
    li: LineItem,
    /// What one impression is worth to it, CPM (its bid before the multiplier).
    value: Micros,
    mode: PacingMode,
    budget: BudgetSpec,
    /// Daily impression goal of a guaranteed line item.
    goal: Option<u64>,
}

fn mode_name(m: &PacingMode) -> &'static str {
    match m {
        PacingMode::Even => "even",
        PacingMode::Asap => "asap",
        PacingMode::Pid(p) if p.target == PidTarget::BidMultiplier => "pid-multiplier",
        PacingMode::Pid(_) => "pid-throttle",
    }
}

fn pid(target: PidTarget) -> PacingMode {
    PacingMode::Pid(PidParams {
        target,
        ..PidParams::default()
    })
}

fn pick<T: Clone>(r: &mut ChaCha8Rng, all: &[T], any_share: f64) -> Vec<T> {
    if r.random_bool(any_share) {
        return Vec::new();
    }
    let n = r.random_range(1..=all.len().min(2));
    let mut idx: Vec<usize> = (0..all.len()).collect();
    for i in 0..n {
        let j = r.random_range(i..all.len());
        idx.swap(i, j);
    }
    idx[..n].iter().map(|&i| all[i].clone()).collect()
}

fn log_normal(r: &mut ChaCha8Rng, median: f64, sigma: f64) -> f64 {
    let (a, b): (f64, f64) = (r.random::<f64>().max(1e-12), r.random());
    let z = (-2.0 * a.ln()).sqrt() * (2.0 * std::f64::consts::PI * b).cos();
    median * (sigma * z).exp()
}

/// One request of the simulated traffic.
fn request(r: &mut ChaCha8Rng, id: u64) -> (AdRequest, Micros) {
    let req = AdRequest {
        request_id: format!("s-{id}").as_str().into(),
        user: User {
            id: format!("u-{}", r.random_range(0..100_000)).as_str().into(),
            country: COUNTRIES[r.random_range(0..COUNTRIES.len())].into(),
            device: DEVICES[r.random_range(0..DEVICES.len())],
            region: None,
            segments: Vec::new(),
            utc_offset_min: None,
        },
        content: Content {
            id: "c".into(),
            genre: GENRES[r.random_range(0..GENRES.len())].into(),
            live: false,
            rating: None,
            event_id: None,
        },
        breaks: vec![AdBreak {
            id: "b".into(),
            position: BreakPosition::Midroll,
            max_ads: r.random_range(2..=4),
            max_duration_s: [60, 90, 120][r.random_range(0..3)],
            rules: Default::default(),
        }],
        tmax: None,
        blocked_categories: Vec::new(),
        blocked_advertisers: Vec::new(),
    };
    // Outside demand: an ad of ours must beat it to play.
    let floor = Micros::from_units(log_normal(r, 6.0, 0.5));
    (req, floor)
}

/// Offset added to a guaranteed candidate's value: the pod takes it before any best-effort ad.
const GUARANTEED_VALUE: i64 = 1 << 50;

fn pod_candidate(i: u32, li: &LineItem, bid: Micros, guaranteed: bool) -> PodCandidate {
    PodCandidate {
        line_item: i,
        value: if guaranteed {
            GUARANTEED_VALUE + bid.0
        } else {
            bid.0
        },
        ecpm: bid,
        guaranteed,
        creatives: li
            .creatives
            .iter()
            .enumerate()
            .map(|(c, cr)| PodCreative {
                index: c as u32,
                duration_s: cr.duration_s,
                key: u64::from(i) << 8 | c as u64,
            })
            .collect(),
        advertiser: u64::from(i),
        category: u64::from(i) % 17,
        position: SlotPosition::Any,
    }
}

/// The simulated market: line items of every pacing mode, a few guaranteed, budgets calibrated
/// by a pilot run so that most of them must be paced (their unpaced spend exceeds the budget).
fn market(cfg: &SimConfig) -> (Vec<SimItem>, TargetingIndex) {
    let mut r = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x9ACE);
    let modes = [
        PacingMode::Even,
        PacingMode::Asap,
        pid(PidTarget::BidMultiplier),
        pid(PidTarget::Throttle),
    ];
    let mut items: Vec<SimItem> = (0..cfg.line_items)
        .map(|i| {
            let value =
                Micros::from_units((log_normal(&mut r, 12.0, 0.35) * 100.0).round() / 100.0);
            let guaranteed = i % 8 == 5;
            let li = LineItem {
                id: format!("li-{i}").as_str().into(),
                advertiser_id: format!("adv-{i}").as_str().into(),
                category: format!("cat-{}", i % 17),
                bid: Bid::Cpm { cpm: value },
                targeting: Targeting {
                    countries: pick(&mut r, &COUNTRIES.map(String::from), 0.5),
                    devices: pick(&mut r, &DEVICES, 0.5),
                    genres: pick(&mut r, &GENRES.map(String::from), 0.4),
                    ..Default::default()
                },
                creatives: vec![Creative {
                    id: format!("cr-{i}").as_str().into(),
                    duration_s: if r.random_bool(0.6) { 15 } else { 30 },
                    media_url: None,
                }],
                daily_budget: Micros::ZERO,
                priors: LineItemPriors::default(),
                goal: Goal::NonGuaranteed,
                iab_categories: Vec::new(),
                campaign_id: None,
                domain: None,
                caps: Vec::new(),
                position: SlotPosition::Any,
                pacing: Default::default(),
                budget: Default::default(),
            };
            SimItem {
                li,
                value,
                mode: if guaranteed {
                    PacingMode::Even
                } else {
                    modes[i % 4]
                },
                budget: BudgetSpec::default(),
                goal: guaranteed.then_some(0),
            }
        })
        .collect();
    let lis: Vec<LineItem> = items.iter().map(|s| s.li.clone()).collect();
    let index = TargetingIndex::build(&lis);

    // Pilot: unpaced, unlimited spend and impressions per request of each line item.
    let pilot = 60_000u64;
    let mut spend = vec![0f64; items.len()];
    let mut imps = vec![0f64; items.len()];
    let mut pr = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x9170);
    for k in 0..pilot {
        let (req, floor) = request(&mut pr, k);
        let eligible = index.eligible(&req, START_MS);
        let cands: Vec<PodCandidate> = eligible
            .iter()
            .filter(|&&i| items[i as usize].value >= floor)
            .map(|&i| pod_candidate(i, &items[i as usize].li, items[i as usize].value, false))
            .collect();
        let out = solve_pod(
            &req.breaks[0],
            floor,
            &cands,
            |_| true,
            AuctionType::SecondPrice,
        );
        for p in out.placements {
            let i = cands[p.candidate].line_item as usize;
            spend[i] += p.price_cpm.as_units() / 1000.0;
            imps[i] += 1.0;
        }
    }
    let day_requests: f64 = (0..24 * 60)
        .map(|m| diurnal_rate(cfg.peak_rate, m as i64 * 60_000) * 60.0)
        .sum();
    let scale = day_requests / pilot as f64;
    for (i, it) in items.iter_mut().enumerate() {
        let unpaced = spend[i] * scale;
        if it.goal.is_some() {
            // Guaranteed: a goal of half what it would win unpaced, at its contract CPM.
            it.goal = Some(((imps[i] * scale * 0.5) as u64).max(1));
            it.li.goal = Goal::Guaranteed {
                impressions_per_day: it.goal.unwrap_or(1),
            };
            it.budget.daily = None;
        } else {
            // Most must be paced; every fifth has more budget than it can spend.
            let f = if i % 5 == 4 {
                1.6
            } else {
                r.random_range(0.3..0.75)
            };
            // A line item that hardly wins unpaced still gets a budget worth pacing; the report
            // flags it supply-limited if it cannot spend it.
            let budget = Micros::from_units((unpaced * f * 100.0).round() / 100.0)
                .max(Micros::from_units(20.0));
            it.budget.daily = Some(budget);
            it.li.daily_budget = budget;
        }
    }
    (items, index)
}

/// One decision server: its lease book, forecast and per-line-item controllers.
struct Server {
    book: LeaseBook,
    forecast: TrafficForecast,
    controllers: Vec<Controller>,
    states: Vec<PacingState>,
}

/// An impression on its way back from the player.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Pending {
    at_ms: i64,
    seq: u64,
    server: usize,
    item: usize,
    cost: i64,
}

/// What one line item did over the reported day.
#[derive(Clone, Debug, Serialize)]
pub struct ItemReport {
    /// Line item id.
    pub id: String,
    /// Pacing mode.
    pub mode: String,
    /// The day's budget at the end of the day (currency units); `null` for guaranteed ones.
    pub budget: Option<f64>,
    /// Spend confirmed by impressions (currency units).
    pub spent: f64,
    /// Spent ÷ budget.
    pub delivery_ratio: Option<f64>,
    /// Spend beyond the budget, as a fraction of it (0 when within).
    pub max_overspend: Option<f64>,
    /// Largest gap, over the day, between the share of the budget spent and the share of the
    /// day's forecast traffic gone (even and PID line items).
    pub curve_deviation: Option<f64>,
    /// Impressions delivered ÷ goal (guaranteed line items).
    pub goal_attainment: Option<f64>,
    /// Impressions delivered.
    pub impressions: u64,
    /// It could not spend its budget even at full participation and the highest multiplier.
    pub supply_limited: bool,
    /// Its budget was cut below what it had already spent (`max_overspend` is then its spend
    /// after the cut, as a share of the new budget).
    pub cut_below_spend: bool,
    /// PID settling after the scenario's disturbance: the largest relative error and the
    /// seconds until the error stays within 5%.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<Settling>,
}

/// How a PID controller settled.
#[derive(Clone, Debug, Serialize)]
pub struct Settling {
    /// When the disturbance came (seconds into the day).
    pub disturbance_s: i64,
    /// Largest |error| after it, in hours of average spend ahead of or behind plan.
    pub overshoot: f64,
    /// Seconds after it until |error| stays within [`SETTLED_BAND_H`] (`null`: it never did).
    pub settling_time_s: Option<i64>,
}

/// The report of one run.
#[derive(Clone, Debug, Serialize)]
pub struct SimReport {
    /// The scenario.
    pub scenario: Scenario,
    /// Seed.
    pub seed: u64,
    /// Servers.
    pub servers: usize,
    /// The ledger (`memory` or the Redis URL).
    pub ledger: String,
    /// Requests decided on the reported day.
    pub requests: u64,
    /// Impressions confirmed on the reported day.
    pub impressions: u64,
    /// Per line item.
    pub line_items: Vec<ItemReport>,
    /// Targets of the issue, checked.
    pub summary: Summary,
    /// Every 5 minutes: (seconds into the day, requests per second, per line item share of
    /// budget or goal done, per line item target share) for the plot.
    #[serde(skip)]
    pub series: Vec<(i64, f64, Vec<f64>, f64)>,
}

/// The targets, checked over the line items they apply to.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// Budget-constrained line items (not supply-limited) delivered within ±2%.
    pub delivered_within_2pct: usize,
    /// Line items the ±2% target applies to.
    pub budget_constrained: usize,
    /// Largest overspend of any line item, as a fraction of its budget.
    pub max_overspend: f64,
    /// Guaranteed line items at ≥ 99% of goal.
    pub guaranteed_met: usize,
    /// Guaranteed line items whose goal the plan found feasible.
    pub guaranteed_feasible: usize,
    /// Whether every target holds.
    pub pass: bool,
}

/// Requests arriving in one second at mean rate `lambda`.
fn poisson(r: &mut ChaCha8Rng, lambda: f64) -> u64 {
    if lambda <= 0.0 {
        return 0;
    }
    if lambda > 30.0 {
        let (a, b): (f64, f64) = (r.random::<f64>().max(1e-12), r.random());
        let z = (-2.0 * a.ln()).sqrt() * (2.0 * std::f64::consts::PI * b).cos();
        return (lambda + lambda.sqrt() * z).round().max(0.0) as u64;
    }
    let l = (-lambda).exp();
    let (mut k, mut p) = (0, 1.0);
    loop {
        p *= r.random::<f64>();
        if p <= l {
            return k;
        }
        k += 1;
    }
}

/// The ledger key of a line item's budget for a day: the run's namespace keeps runs sharing a
/// Redis apart.
fn key(ns: &str, item: &SimItem, day: &LocalDay) -> String {
    format!(
        "{ns}{}",
        podium_pacing::budget_key(item.li.id.as_str(), Some(day))
    )
}

/// Runs a scenario and reports on its last day. Ledger keys are prefixed with `namespace`.
pub fn run(cfg: &SimConfig, ledger: Arc<dyn BudgetLedger>, namespace: &str) -> SimReport {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime");
    let key = |item: &SimItem, day: &LocalDay| key(namespace, item, day);
    let (mut items, index) = market(cfg);
    let n = items.len();
    let mut r = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x5EED);
    let mut servers: Vec<Server> = (0..cfg.servers.max(1))
        .map(|_| Server {
            book: LeaseBook::new(LeaseConfig {
                servers: cfg.servers.max(1) as u32,
                ..LeaseConfig::default()
            }),
            forecast: TrafficForecast::new(TimeZone::UTC),
            controllers: items.iter().map(|it| Controller::new(it.mode)).collect(),
            states: vec![PacingState::OPEN; n],
        })
        .collect();
    let last_day = START_MS + DAY_MS * i64::from(cfg.days.max(1) - 1);

    // Earlier days teach the forecast the shape of the traffic; only the last is simulated in
    // full (their auctions would change nothing the report reads).
    for t_s in 0..(last_day - START_MS) / 1000 {
        let t = START_MS + t_s * 1000;
        let arrivals = poisson(&mut r, diurnal_rate(cfg.peak_rate, t));
        for (k, s) in servers.iter_mut().enumerate() {
            let share =
                arrivals / servers_len(cfg) + u64::from((arrivals % servers_len(cfg)) > k as u64);
            s.forecast.observe(t, share);
        }
    }

    let day = local_day(last_day, TimeZone::UTC);
    let mut spent = vec![0i64; n];
    let mut impressions = vec![0u64; n];
    // Guaranteed impressions placed and not yet back.
    let mut in_flight = vec![0u64; n];
    let mut heap: BinaryHeap<Reverse<Pending>> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut requests = 0u64;
    let mut supply: VecDeque<(i64, Vec<u32>)> = VecDeque::new();
    let mut plan: Option<Plan<u32>> = None;
    let mut series = Vec::new();
    let mut errors: Vec<Vec<(i64, f64)>> = vec![Vec::new(); n];
    // What the PID loops are judged settling after: the live event, the budget edit, or the
    // start of the day (a cold start: the controllers have not run before).
    let disturbance_s = match cfg.scenario {
        Scenario::LiveEvent => 20 * 3600,
        Scenario::BudgetChange => 12 * 3600,
        _ => 0,
    };
    // The guaranteed plan's first supply: a sample of requests like the day's, as yesterday's
    // traffic would have given it.
    let mut sample_rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x5A9);
    for k in 0..2_000u64 {
        let (req, _) = request(&mut sample_rng, k);
        let g: Vec<u32> = index
            .eligible(&req, last_day)
            .into_iter()
            .filter(|&i| items[i as usize].goal.is_some())
            .collect();
        supply.push_back((last_day, g));
    }
    // Line items whose budget was cut below what they had spent, with that spend: from then on
    // only impressions already on their way may still count.
    let mut cut_below_spend: Vec<(usize, i64)> = Vec::new();

    for t_s in 0..DAY_MS / 1000 {
        let t = last_day + t_s * 1000;
        // Impressions that came back by now: spend, confirmed once.
        while heap.peek().is_some_and(|p| p.0.at_ms <= t) {
            let Reverse(p) = heap.pop().expect("peeked");
            in_flight[p.item] = in_flight[p.item].saturating_sub(1);
            let k = key(&items[p.item], &day);
            // The lease book reports confirmed spend to the ledger at its next refill.
            servers[p.server].book.confirm(&k, Micros(p.cost));
            spent[p.item] += p.cost;
            impressions[p.item] += 1;
        }

        if cfg.scenario == Scenario::BudgetChange && t_s == 12 * 3600 {
            // Budgets edited mid-flight: some raised, some cut, one below what it has spent.
            for (i, it) in items.iter_mut().enumerate() {
                let Some(b) = it.budget.daily else { continue };
                let new = match i % 6 {
                    0 => Micros(b.0 * 3 / 2),
                    1 => Micros(b.0 * 7 / 10),
                    _ => continue,
                };
                it.budget.daily = Some(new);
            }
            if let Some((i, it)) = items
                .iter_mut()
                .enumerate()
                .find(|(i, it)| it.budget.daily.is_some() && spent[*i] > 0)
            {
                it.budget.daily = Some(Micros(spent[i] / 2));
            }
            for (i, it) in items.iter().enumerate() {
                if it.budget.daily.is_some_and(|b| b.0 <= spent[i]) {
                    cut_below_spend.push((i, spent[i]));
                }
            }
            for s in servers.iter_mut() {
                for it in &items {
                    if let Some(b) = it.budget.daily {
                        s.book.set_limit(&key(it, &day), b);
                    }
                }
            }
        }

        // A lease running low is topped up at once, as a server's refill task would, not only at
        // the next control tick.
        if t_s % cfg.tick_s as i64 != 0 {
            for s in servers.iter() {
                for it in &items {
                    if let Some(budget) = it.budget.daily {
                        let k = key(it, &day);
                        if s.book.needs(&k).is_some() {
                            let _ = rt.block_on(s.book.refill(ledger.as_ref(), &k, budget, t));
                        }
                    }
                }
            }
        }

        if t_s % cfg.tick_s as i64 == 0 {
            for s in servers.iter_mut() {
                s.book.expire(t);
                let target = s.forecast.fraction_elapsed(&day, t);
                for (i, it) in items.iter().enumerate() {
                    let Some(budget) = it.budget.daily else {
                        s.states[i] = PacingState::OPEN;
                        continue;
                    };
                    let k = key(it, &day);
                    // Each server paces on the fleet's spend as the ledger has it (what the
                    // others reported at their last refill), falling back to its own view.
                    let _ = rt.block_on(s.book.refill(ledger.as_ref(), &k, budget, t));
                    let global = rt.block_on(ledger.spent(&k)).unwrap_or(Micros(spent[i]));
                    s.states[i] = s.controllers[i].update(t, global, budget, target);
                }
            }
            for (i, it) in items.iter().enumerate() {
                if matches!(it.mode, PacingMode::Pid { .. }) && it.budget.daily.is_some() {
                    errors[i].push((t_s, servers[0].controllers[i].error()));
                }
            }
        }

        // The guaranteed plan, every 15 minutes, from the last hour's supply scaled to what the
        // forecast says is left of the day.
        if t_s % 900 == 0 {
            while supply.len() > 2_000 && supply.front().is_some_and(|(at, _)| *at < t - 3_600_000)
            {
                supply.pop_front();
            }
            // Each sampled request stands for an equal share of the traffic still to come.
            let remaining: f64 = servers
                .iter()
                .map(|s| s.forecast.volume(t, day.end_ms))
                .sum();
            let weight = if supply.is_empty() {
                0.0
            } else {
                remaining / supply.len() as f64
            };
            let samples: Vec<SupplySample<u32>> = supply
                .iter()
                .map(|(_, e)| SupplySample {
                    eligible: e.clone(),
                    weight,
                })
                .collect();
            let contracts: Vec<Contract<u32>> = items
                .iter()
                .enumerate()
                .filter_map(|(i, it)| {
                    it.goal.map(|g| Contract {
                        id: i as u32,
                        demand: g.saturating_sub(impressions[i]) as f64,
                    })
                })
                .collect();
            plan = Some(hwm_plan(&contracts, &samples));
        }

        let rate = diurnal_rate(cfg.peak_rate, t) * event_multiplier(cfg.scenario, last_day, t);
        for _ in 0..poisson(&mut r, rate) {
            requests += 1;
            let server = (requests % servers.len() as u64) as usize;
            let (req, floor) = request(&mut r, requests);
            let s = &mut servers[server];
            s.forecast.observe(t, 1);
            let eligible = index.eligible(&req, t);
            let guaranteed: Vec<u32> = eligible
                .iter()
                .copied()
                .filter(|&i| items[i as usize].goal.is_some())
                .collect();
            if requests.is_multiple_of(8) {
                supply.push_back((t, guaranteed.clone()));
            }
            let chosen = plan.as_ref().and_then(|p| p.serve(&guaranteed, r.random()));
            let mut cands = Vec::new();
            for &i in &eligible {
                let it = &items[i as usize];
                if let Some(goal) = it.goal {
                    // Delivered (or on its way) is enough: the plan is only refreshed every 15
                    // minutes, the goal is checked on every request.
                    if chosen == Some(i) && impressions[i as usize] + in_flight[i as usize] < goal {
                        cands.push(pod_candidate(i, &it.li, it.value, true));
                    }
                    continue;
                }
                let st = s.states[i as usize];
                if r.random::<f64>() >= st.throttle {
                    continue;
                }
                let bid = Micros((it.value.0 as f64 * st.multiplier).round() as i64);
                // Outside demand takes the slot unless we beat it; the lease must cover the bid.
                let available = s
                    .book
                    .status(&key(it, &day))
                    .map_or(Micros::ZERO, |st| st.available);
                if bid < floor || available.0 < bid.0 / 1000 {
                    continue;
                }
                cands.push(pod_candidate(i, &it.li, bid, false));
            }
            if cands.is_empty() {
                continue;
            }
            let out = solve_pod(
                &req.breaks[0],
                Micros::ZERO,
                &cands,
                |_| true,
                AuctionType::SecondPrice,
            );
            for p in out.placements {
                let c = &cands[p.candidate];
                let i = c.line_item as usize;
                let price = if c.guaranteed {
                    c.ecpm
                } else {
                    p.price_cpm.max(floor).min(c.ecpm)
                };
                let cost = price.0 / 1000;
                let k = key(&items[i], &day);
                if !c.guaranteed && !s.book.reserve(&k, Micros(cost), t) {
                    continue;
                }
                if r.random_bool(RENDER_RATE) {
                    in_flight[i] += 1;
                    seq += 1;
                    heap.push(Reverse(Pending {
                        at_ms: t + r.random_range(5..=MAX_RENDER_DELAY_S) * 1000,
                        seq,
                        server,
                        item: i,
                        cost,
                    }));
                }
            }
        }

        if t_s % 300 == 0 {
            let target = servers[0].forecast.fraction_elapsed(&day, t);
            let done: Vec<f64> = items
                .iter()
                .enumerate()
                .map(|(i, it)| match (it.budget.daily, it.goal) {
                    (Some(b), _) => spent[i] as f64 / b.0.max(1) as f64,
                    (None, Some(g)) => impressions[i] as f64 / g.max(1) as f64,
                    _ => 0.0,
                })
                .collect();
            series.push((t_s, rate, done, target));
        }
    }
    // Impressions of the day's last ads still count.
    while let Some(Reverse(p)) = heap.pop() {
        spent[p.item] += p.cost;
        impressions[p.item] += 1;
        servers[p.server]
            .book
            .confirm(&key(&items[p.item], &day), Micros(p.cost));
    }
    for s in &servers {
        let _ = rt.block_on(s.book.settle(ledger.as_ref()));
    }

    let reports: Vec<ItemReport> = items
        .iter()
        .enumerate()
        .map(|(i, it)| {
            let budget = it.budget.daily;
            let ratio = budget.map(|b| spent[i] as f64 / b.0.max(1) as f64);
            let paced = !matches!(it.mode, PacingMode::Asap) && it.goal.is_none();
            let curve_deviation = (paced && budget.is_some()).then(|| {
                series
                    .iter()
                    .map(|(_, _, done, target)| (done[i] - target).abs())
                    .fold(0.0, f64::max)
            });
            let st = servers[0].states[i];
            let top = match it.mode {
                PacingMode::Pid(p) if p.target == PidTarget::BidMultiplier => p.max_multiplier,
                _ => 1.0,
            };
            let supply_limited = ratio.is_some_and(|x| x < 0.98)
                && st.throttle >= 0.99
                && st.multiplier >= top * 0.99;
            let pid = matches!(it.mode, PacingMode::Pid { .. })
                .then(|| settling(&errors[i], disturbance_s));
            // Cut below its spend: what counts is what it spent after the cut, as a share of the
            // new budget (impressions already on their way when the cut came).
            let after_cut = cut_below_spend
                .iter()
                .find(|(j, _)| *j == i)
                .map(|&(_, at)| (spent[i] - at) as f64 / budget.map_or(1, |b| b.0.max(1)) as f64);
            ItemReport {
                id: it.li.id.to_string(),
                mode: if it.goal.is_some() {
                    "guaranteed".into()
                } else {
                    mode_name(&it.mode).into()
                },
                budget: budget.map(Micros::as_units),
                spent: Micros(spent[i]).as_units(),
                delivery_ratio: ratio,
                max_overspend: after_cut.or(ratio.map(|x| (x - 1.0).max(0.0))),
                cut_below_spend: after_cut.is_some(),
                curve_deviation,
                goal_attainment: it.goal.map(|g| impressions[i] as f64 / g.max(1) as f64),
                impressions: impressions[i],
                supply_limited,
                pid: pid.filter(|_| budget.is_some()),
            }
        })
        .collect();
    let constrained: Vec<&ItemReport> = reports
        .iter()
        .filter(|x| x.budget.is_some() && !x.supply_limited && !x.cut_below_spend)
        .collect();
    let within = constrained
        .iter()
        .filter(|x| x.delivery_ratio.is_some_and(|d| (d - 1.0).abs() <= 0.02))
        .count();
    let infeasible: Vec<u32> = plan
        .as_ref()
        .map(|p| p.infeasible.clone())
        .unwrap_or_default();
    let guaranteed: Vec<&ItemReport> = reports
        .iter()
        .enumerate()
        .filter(|(i, x)| x.goal_attainment.is_some() && !infeasible.contains(&(*i as u32)))
        .map(|(_, x)| x)
        .collect();
    let met = guaranteed
        .iter()
        .filter(|x| x.goal_attainment.is_some_and(|g| g >= 0.99))
        .count();
    let max_overspend = reports
        .iter()
        .filter_map(|x| x.max_overspend)
        .fold(0.0, f64::max);
    let summary = Summary {
        delivered_within_2pct: within,
        budget_constrained: constrained.len(),
        max_overspend,
        guaranteed_met: met,
        guaranteed_feasible: guaranteed.len(),
        pass: within == constrained.len() && max_overspend <= 0.01 && met == guaranteed.len(),
    };
    SimReport {
        scenario: cfg.scenario,
        seed: cfg.seed,
        servers: servers.len(),
        ledger: cfg.redis.clone().unwrap_or_else(|| "memory".into()),
        requests,
        impressions: impressions.iter().sum(),
        line_items: reports,
        summary,
        series,
    }
}

fn servers_len(cfg: &SimConfig) -> u64 {
    cfg.servers.max(1) as u64
}

/// A PID loop has settled once its error (hours of average spend behind plan) stays within this.
pub const SETTLED_BAND_H: f64 = 0.1;

/// Overshoot and settling time of a controller's error series after `from_s`.
fn settling(errors: &[(i64, f64)], from_s: i64) -> Settling {
    let after: Vec<&(i64, f64)> = errors.iter().filter(|(t, _)| *t >= from_s).collect();
    let overshoot = after.iter().map(|(_, e)| e.abs()).fold(0.0, f64::max);
    let settled = after
        .iter()
        .rposition(|(_, e)| e.abs() > SETTLED_BAND_H)
        .map_or(Some(0), |last| after.get(last + 1).map(|(t, _)| t - from_s));
    Settling {
        disturbance_s: from_s,
        overshoot,
        settling_time_s: settled,
    }
}

/// The embedded ledger, for runs without Redis.
pub fn memory_ledger() -> Arc<dyn BudgetLedger> {
    Arc::new(MemoryLedger::new())
}

fn polyline(points: impl Iterator<Item = (f64, f64)>, w: f64, h: f64, ymax: f64) -> String {
    points
        .map(|(x, y)| {
            format!(
                "{:.1},{:.1}",
                x / 86_400.0 * w,
                h - (y / ymax).clamp(0.0, 1.0) * h
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The report as an HTML page: traffic over the day, then each line item's share of budget (or
/// goal) done against the forecast target, one small chart each, as inline SVG.
pub fn html(report: &SimReport) -> String {
    let (w, h) = (360.0, 120.0);
    let mut out = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>podium sim pacing</title>\
         <style>body{font:13px sans-serif;margin:20px}figure{display:inline-block;margin:6px}\
         svg{background:#fafafa;border:1px solid #ddd}figcaption{font-size:12px}</style></head><body>",
    );
    out.push_str(&format!(
        "<h1>Pacing: {:?}, seed {}, {} server(s), ledger {}</h1><p>{} requests, {} impressions. \
         Within ±2%: {}/{}; largest overspend {:.3}%; guaranteed at ≥ 99%: {}/{}; pass: {}.</p>",
        report.scenario,
        report.seed,
        report.servers,
        report.ledger,
        report.requests,
        report.impressions,
        report.summary.delivered_within_2pct,
        report.summary.budget_constrained,
        report.summary.max_overspend * 100.0,
        report.summary.guaranteed_met,
        report.summary.guaranteed_feasible,
        report.summary.pass
    ));
    let peak = report.series.iter().map(|s| s.1).fold(1e-9, f64::max);
    out.push_str(&format!(
        "<figure><svg width=\"{}\" height=\"{h}\"><polyline fill=\"none\" stroke=\"#555\" \
         points=\"{}\"/></svg><figcaption>requests/s over the day (peak {:.0})</figcaption></figure><br>",
        w * 2.0,
        polyline(report.series.iter().map(|s| (s.0 as f64, s.1)), w * 2.0, h, peak),
        peak
    ));
    for (i, item) in report.line_items.iter().enumerate() {
        let done = polyline(
            report.series.iter().map(|s| (s.0 as f64, s.2[i])),
            w,
            h,
            1.2,
        );
        let target = polyline(report.series.iter().map(|s| (s.0 as f64, s.3)), w, h, 1.2);
        let full = h - h / 1.2;
        out.push_str(&format!(
            "<figure><svg width=\"{w}\" height=\"{h}\">\
             <line x1=\"0\" x2=\"{w}\" y1=\"{full:.1}\" y2=\"{full:.1}\" stroke=\"#c33\" stroke-dasharray=\"2 3\"/>\
             <polyline fill=\"none\" stroke=\"#999\" stroke-dasharray=\"4 3\" points=\"{target}\"/>\
             <polyline fill=\"none\" stroke=\"#1565c0\" stroke-width=\"1.5\" points=\"{done}\"/></svg>\
             <figcaption>{} ({}): {}</figcaption></figure>",
            item.id,
            item.mode,
            match (item.delivery_ratio, item.goal_attainment) {
                (Some(d), _) => format!("delivered {:.1}% of budget", d * 100.0),
                (None, Some(g)) => format!("{:.1}% of goal", g * 100.0),
                _ => String::new(),
            }
        ));
    }
    out.push_str(
        "<p>Blue: share of the budget (or goal) done; grey dashed: share of the day's forecast \
         traffic gone (the even-pacing target); red dotted: 100%.</p></body></html>",
    );
    out
}
