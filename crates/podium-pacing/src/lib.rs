//! Budgets: how much each line item has spent today, and which line items may still serve.
//!
//! The trunk books spend when a decision places an ad (server-side insertion plays what it is
//! given) and stops a line item once its daily budget is reached. On this seam:
//!
//! - [`budget`]: daily and lifetime budgets, flights and local days in a time zone (DST aware);
//! - [`calendar`]: live events planners know in advance, with the requests they expect;
//! - [`forecast`]: when in the day traffic comes, learned per hour of the week;
//! - [`controller`]: pacing controllers (even throttling, ASAP, PID) that spread a day's budget
//!   along the forecast;
//! - [`hwm`]: high-water-mark allocation of guaranteed contracts over forecast supply;
//! - [`ledger`] and [`lease`]: budgets shared by a fleet of servers, each spending only from a
//!   lease it took from the shared ledger, so that together they never overspend.
//!
//! Everything takes the time as an argument (`now_ms`), so a simulator can drive it.

pub mod budget;
pub mod calendar;
pub mod caps;
pub mod controller;
pub mod forecast;
pub mod guaranteed;
pub mod hwm;
pub mod lease;
pub mod ledger;
pub mod settings;

pub use budget::{local_day, BudgetError, BudgetSpec, LifetimeSpread, LocalDay, TimeZone};
pub use calendar::{Calendar, LiveEvent};
pub use caps::{cap_key, count_since, FrequencyStore, MemoryFrequencyStore, RedisFrequencyStore};
pub use controller::{Controller, PacingMode, PacingState, PidParams, PidTarget};
pub use forecast::TrafficForecast;
pub use guaranteed::{allocation_rate, draw, Delivery};
pub use hwm::{hwm_plan, Contract, Plan, SupplySample};
pub use lease::{LeaseBook, LeaseConfig, LeaseStatus};
pub use ledger::{
    budget_key, BudgetLedger, LedgerError, MemoryLedger, RedisLedger, RedisLedgerOptions,
};

use dashmap::DashMap;
use podium_core::{LineItemId, Micros};
use std::time::{SystemTime, UNIX_EPOCH};

/// A UTC calendar day, counted from the Unix epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Day(pub u32);

impl Day {
    /// The day of a time in ms since the epoch, and how much of it has passed (0–1).
    pub fn of_ms(ms: i64) -> (Day, f64) {
        let day = ms.div_euclid(86_400_000);
        (
            Day(day as u32),
            ms.rem_euclid(86_400_000) as f64 / 86_400_000.0,
        )
    }

    /// Today, by the system clock.
    pub fn today() -> Day {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Day((secs / 86_400) as u32)
    }
}

/// Where spend is counted. The embedded store is in memory; a distributed one shares it.
pub trait SpendStore: Send + Sync {
    /// Spend of a line item on a day.
    fn spent(&self, day: Day, line_item: &LineItemId) -> Micros;

    /// Adds spend, returning the new total for that day.
    fn add(&self, day: Day, line_item: &LineItemId, amount: Micros) -> Micros;
}

/// The embedded spend store: a concurrent map of (day, line item) → micros.
#[derive(Default)]
pub struct MemorySpendStore {
    spend: DashMap<(Day, LineItemId), Micros>,
}

impl MemorySpendStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl SpendStore for MemorySpendStore {
    fn spent(&self, day: Day, line_item: &LineItemId) -> Micros {
        self.spend
            .get(&(day, line_item.clone()))
            .map_or(Micros::ZERO, |v| *v)
    }

    fn add(&self, day: Day, line_item: &LineItemId, amount: Micros) -> Micros {
        let mut entry = self.spend.entry((day, line_item.clone())).or_default();
        *entry += amount;
        *entry
    }
}

/// Whether a line item with `budget` may still serve after spending `spent`.
pub fn has_budget(spent: Micros, budget: Micros) -> bool {
    spent < budget
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spend_accumulates_per_day_and_line_item() {
        let s = MemorySpendStore::new();
        let li: LineItemId = "li-1".into();
        assert_eq!(s.add(Day(1), &li, Micros(5)), Micros(5));
        assert_eq!(s.add(Day(1), &li, Micros(7)), Micros(12));
        assert_eq!(s.spent(Day(2), &li), Micros::ZERO);
        assert_eq!(s.spent(Day(1), &"li-2".into()), Micros::ZERO);
        assert!(has_budget(Micros(11), Micros(12)));
        assert!(!has_budget(Micros(12), Micros(12)));
    }
}
