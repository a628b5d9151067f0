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
use podium_core::{
    AdBreak, AdRequest, BreakPosition, Content, Device, Micros, SlotPosition, User,
};
use podium_pacing::{
    hwm_plan, local_day, BudgetLedger, BudgetSpec, Contract, Controller, LeaseBook, LocalDay,
    MemoryLedger, PacingMode, PacingState, PidTarget, Plan, SupplySample, TrafficForecast,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
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
            servers: if scenario == Scenario::MultiServer { 4 } else { 1 },
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
