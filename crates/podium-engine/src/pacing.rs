//! Pacing in the live engine: each line item's pacing state (throttle, bid multiplier) read on
//! the request path, budget leases that every placed ad reserves against, and the control loop
//! that refills leases and updates the controllers.
//!
//! Spend is counted from impressions: a decision reserves an ad's cost against this server's
//! lease; the impression event confirms it (the ad played); a reservation never confirmed expires
//! back into the lease. The ledger (embedded, or Redis shared by a fleet) never allocates past a
//! budget, and nothing is reserved outside a lease, so servers together cannot overspend.

use crate::pipeline::MarketSnapshot;
use arc_swap::ArcSwap;
use podium_core::Micros;
use podium_pacing::{
    budget_key, local_day, BudgetLedger, Controller, LeaseBook, LeaseConfig, LocalDay,
    MemoryLedger, PacingState, TimeZone, TrafficForecast,
};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The keys and states of one market snapshot on one local day.
struct Period {
    /// The market snapshot they belong to (its address: a new snapshot is a new period).
    market: usize,
    /// From when every key is today's (the latest start of day over the line items' zones): a
    /// caller whose clock goes back (a simulation started in the past) gets the keys of its day.
    valid_from_ms: i64,
    /// Until when every key is today's (the earliest end of day over the line items' zones).
    valid_until_ms: i64,
    /// Day key of each line item (line items may sit in different time zones).
    keys: Vec<String>,
    states: Vec<PacingState>,
}

impl AsRef<[PacingState]> for Period {
    fn as_ref(&self) -> &[PacingState] {
        &self.states
    }
}

/// One line item's pacing at the last control step, for monitoring.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct PacingView {
    /// Line item id.
    pub line_item: String,
    /// Campaign id, when it has one.
    pub campaign: Option<String>,
    /// Whether it is a guaranteed line item.
    pub guaranteed: bool,
    /// Today's budget, micros.
    pub budget_micros: i64,
    /// Spent today (the ledger's, across the fleet), micros.
    pub spent_micros: i64,
    /// Where even delivery along the traffic forecast would have spend now, micros.
    pub target_micros: i64,
    /// Bid multiplier.
    pub multiplier: f64,
    /// Share of requests the line item may take part in.
    pub throttle: f64,
}

/// Pacing of one engine.
pub struct Pacing {
    ledger: Arc<dyn BudgetLedger>,
    /// The embedded ledger answers without I/O: leases are taken on the request path when
    /// missing, instead of waiting for the control loop.
    local: bool,
    book: LeaseBook,
    period: ArcSwap<Period>,
    controllers: Mutex<Vec<Controller>>,
    forecast: Mutex<TrafficForecast>,
    requests: AtomicU64,
    ledger_up: AtomicBool,
    /// Minute of the last guaranteed-delivery plan.
    planned_minute: AtomicU64,
    /// Every line item at the last control step.
    view: Mutex<Vec<PacingView>>,
}

impl Pacing {
    /// Pacing over the embedded ledger.
    pub fn embedded() -> Self {
        Self::new(Arc::new(MemoryLedger::new()), true, 1)
    }

    /// Pacing over a shared ledger, for a fleet of about `servers`.
    pub fn shared(ledger: Arc<dyn BudgetLedger>, servers: u32) -> Self {
        Self::new(ledger, false, servers)
    }

    fn new(ledger: Arc<dyn BudgetLedger>, local: bool, servers: u32) -> Self {
        Self {
            ledger,
            local,
            book: LeaseBook::new(LeaseConfig {
                servers: servers.max(1),
                ..LeaseConfig::default()
            }),
            period: ArcSwap::from_pointee(Period {
                market: 0,
                valid_from_ms: i64::MAX,
                valid_until_ms: i64::MIN,
                keys: Vec::new(),
                states: Vec::new(),
            }),
            controllers: Mutex::new(Vec::new()),
            forecast: Mutex::new(TrafficForecast::new(TimeZone::UTC)),
            requests: AtomicU64::new(0),
            ledger_up: AtomicBool::new(true),
            planned_minute: AtomicU64::new(u64::MAX),
            view: Mutex::new(Vec::new()),
        }
    }

    /// Every line item's pacing at the last control step.
    pub fn view(&self) -> Vec<PacingView> {
        self.view.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// Whether the last ledger call succeeded.
    pub fn ledger_up(&self) -> bool {
        self.ledger_up.load(Ordering::Relaxed)
    }

    fn day_of(market: &MarketSnapshot, i: usize, now_ms: i64) -> LocalDay {
        market.marketplace.line_items.get(i).map_or_else(
            || local_day(now_ms, TimeZone::UTC),
            |li| li.budget.day(now_ms),
        )
    }

    /// The day budget of line item `i` (its daily cap, or its lifetime budget's share).
    fn day_budget(market: &MarketSnapshot, i: usize, now_ms: i64) -> Micros {
        if market.budget_overridden(i) {
            return market.daily_budget(i);
        }
        let li = &market.marketplace.line_items[i];
        let mut spec = li.budget.clone();
        if spec.daily.is_none() {
            spec.daily = Some(li.daily_budget);
        }
        // Lifetime spend before today is not tracked per day yet: the daily cap applies.
        spec.day_budget(Micros::ZERO, now_ms)
            .unwrap_or(li.daily_budget)
    }

    /// The keys and states for `market` today: one load and a few comparisons when they are
    /// current, rebuilt (time zones resolved) only when the market or a day changes.
    fn period(&self, market: &MarketSnapshot, now_ms: i64) -> Arc<Period> {
        let p = self.period.load_full();
        let id = market as *const MarketSnapshot as usize;
        let n = market.marketplace.line_items.len();
        if p.market == id
            && p.keys.len() == n
            && now_ms < p.valid_until_ms
            && now_ms >= p.valid_from_ms
        {
            return p;
        }
        let days: Vec<LocalDay> = (0..n).map(|i| Self::day_of(market, i, now_ms)).collect();
        let keys = market
            .marketplace
            .line_items
            .iter()
            .zip(&days)
            .map(|(li, day)| budget_key(li.id.as_str(), Some(day)))
            .collect();
        let mut controllers = self.controllers.lock().unwrap_or_else(|e| e.into_inner());
        if controllers.len() != n || p.market != id {
            *controllers = market
                .marketplace
                .line_items
                .iter()
                .map(|li| Controller::starting_open(li.pacing))
                .collect();
        }
        // A new day keeps the controllers' states; a new market starts open.
        let states = if p.market == id && p.states.len() == n {
            p.states.clone()
        } else {
            vec![PacingState::OPEN; n]
        };
        let period = Arc::new(Period {
            market: id,
            valid_from_ms: days.iter().map(|d| d.start_ms).max().unwrap_or(now_ms),
            valid_until_ms: days
                .iter()
                .map(|d| d.end_ms)
                .min()
                .unwrap_or(now_ms + 60_000),
            keys,
            states,
        });
        self.period.store(period.clone());
        period
    }

    /// The pacing states of every line item of `market` now, for one request to read.
    pub fn states(&self, market: &MarketSnapshot, now_ms: i64) -> Arc<impl AsRef<[PacingState]>> {
        self.period(market, now_ms)
    }

    /// Whether the guaranteed-delivery plan is due (once a minute); claims it when it is.
    pub fn replan_due(&self, now_ms: i64) -> bool {
        let minute = (now_ms / 60_000).max(0) as u64;
        self.planned_minute.swap(minute, Ordering::Relaxed) != minute
    }

    /// Requests the forecast expects on this server for the rest of the day.
    pub fn remaining_requests(&self, market: &MarketSnapshot, now_ms: i64) -> f64 {
        let day = Self::day_of(market, 0, now_ms);
        self.forecast
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .volume(now_ms, day.end_ms)
    }

    /// Counts a request for the traffic forecast.
    pub fn saw_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// What this server's lease for line item `i` may still hand out, asking for at least
    /// `want` (a bid's cost): a lease too small for it records the refusal, so the next refill
    /// covers one impression whatever the lease sizing says. With the embedded ledger the refill
    /// happens here; with a shared one, at the next control step.
    pub async fn available(
        &self,
        market: &MarketSnapshot,
        i: u32,
        now_ms: i64,
        want: Micros,
    ) -> Micros {
        let p = self.period(market, now_ms);
        let key = &p.keys[i as usize];
        let avail = || self.book.status(key).map_or(Micros::ZERO, |s| s.available);
        if self.local && (self.book.status(key).is_none() || self.book.needs(key).is_some()) {
            let limit = Self::day_budget(market, i as usize, now_ms);
            let _ = self
                .book
                .refill(self.ledger.as_ref(), key, limit, now_ms)
                .await;
        }
        if avail() < want && self.book.status(key).is_some() {
            // Fails (the lease is short) and remembers the cost it could not cover.
            let _ = self.book.reserve(key, want, now_ms);
            if self.local {
                let limit = Self::day_budget(market, i as usize, now_ms);
                let _ = self
                    .book
                    .refill(self.ledger.as_ref(), key, limit, now_ms)
                    .await;
            }
        }
        avail()
    }

    /// Reserves an ad's cost against line item `i`'s lease; false if the lease does not cover it.
    pub fn reserve(&self, market: &MarketSnapshot, i: u32, cost: Micros, now_ms: i64) -> bool {
        let p = self.period(market, now_ms);
        self.book.reserve(&p.keys[i as usize], cost, now_ms)
    }

    /// An impression of line item `i` that cost `cost` played.
    pub fn confirm(&self, market: &MarketSnapshot, i: u32, cost: Micros, now_ms: i64) {
        let p = self.period(market, now_ms);
        self.book.confirm(&p.keys[i as usize], cost);
    }

    /// The control loop's step: expire stale reservations, report spend and refill leases,
    /// learn the traffic, and update every controller from the fleet's spend.
    pub async fn tick(&self, market: &MarketSnapshot, now_ms: i64) {
        let p = self.period(market, now_ms);
        self.book.expire(now_ms);
        let seen = self.requests.swap(0, Ordering::Relaxed);
        let target = {
            let mut f = self.forecast.lock().unwrap_or_else(|e| e.into_inner());
            f.observe(now_ms, seen);
            f.fraction_elapsed(&Self::day_of(market, 0, now_ms), now_ms)
        };
        let mut up = true;
        for (i, key) in p.keys.iter().enumerate() {
            let limit = Self::day_budget(market, i, now_ms);
            if self
                .book
                .refill(self.ledger.as_ref(), key, limit, now_ms)
                .await
                .is_err()
            {
                up = false;
            }
        }
        // The fleet's spend of every line item in one read; this server's own when the ledger
        // does not answer.
        let spent = match self.ledger.spent_many(&p.keys).await {
            Ok(s) => s,
            Err(_) => {
                up = false;
                p.keys
                    .iter()
                    .map(|key| self.book.status(key).map_or(Micros::ZERO, |s| s.spent))
                    .collect()
            }
        };
        self.ledger_up.store(up, Ordering::Relaxed);
        let states: Vec<PacingState> = {
            let mut controllers = self.controllers.lock().unwrap_or_else(|e| e.into_inner());
            controllers
                .iter_mut()
                .enumerate()
                .map(|(i, c)| {
                    let limit = Self::day_budget(market, i, now_ms);
                    c.update(now_ms, spent[i], limit, target)
                })
                .collect()
        };
        let view = market
            .marketplace
            .line_items
            .iter()
            .zip(&states)
            .zip(&spent)
            .enumerate()
            .map(|(i, ((li, state), spent))| {
                let budget = Self::day_budget(market, i, now_ms).0;
                PacingView {
                    line_item: li.id.as_str().to_string(),
                    campaign: li.campaign_id.clone(),
                    guaranteed: matches!(li.goal, podium_auction::Goal::Guaranteed { .. }),
                    budget_micros: budget,
                    spent_micros: spent.0,
                    target_micros: (budget as f64 * target) as i64,
                    multiplier: state.multiplier,
                    throttle: state.throttle,
                }
            })
            .collect();
        *self.view.lock().unwrap_or_else(|e| e.into_inner()) = view;
        self.period.store(Arc::new(Period {
            market: p.market,
            valid_from_ms: p.valid_from_ms,
            valid_until_ms: p.valid_until_ms,
            keys: p.keys.clone(),
            states,
        }));
    }
}
