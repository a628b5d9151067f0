//! Guaranteed delivery: what share of a guaranteed line item's eligible requests it should take
//! to meet its daily goal.
//!
//! The rule is the high-water-mark one, per line item: the allocation rate is the remaining goal
//! over the forecast of the remaining eligible supply, the forecast being today's eligible supply
//! so far extrapolated over the rest of the day. A request picks a guaranteed line item when a
//! hash of (request, line item) falls under the rate, so delivery spreads over the day instead of
//! front-loading. HWM's contention ordering (least-supplied line items allocate first) is not
//! modelled; each line item's rate is computed from its own supply.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Below this much observed supply the forecast is noise: serve every eligible request.
pub const MIN_FORECAST_SUPPLY: u64 = 100;
/// Over-allocation that absorbs forecast error and impressions lost in the auction.
pub const SAFETY: f64 = 1.15;

/// The allocation rate for a goal of `goal` impressions with `delivered` done, `supply_so_far`
/// eligible requests seen, and `day_elapsed` (0–1) of the day gone.
pub fn allocation_rate(goal: u64, delivered: u64, supply_so_far: u64, day_elapsed: f64) -> f64 {
    let remaining = goal.saturating_sub(delivered);
    if remaining == 0 {
        return 0.0;
    }
    if supply_so_far < MIN_FORECAST_SUPPLY || day_elapsed <= 0.0 {
        return 1.0;
    }
    let elapsed = day_elapsed.clamp(1e-6, 1.0);
    let forecast = supply_so_far as f64 / elapsed * (1.0 - elapsed);
    if forecast <= 0.0 {
        return 1.0;
    }
    (remaining as f64 / forecast * SAFETY).min(1.0)
}

/// A uniform draw in [0, 1) from a request id and a line item index, the same on every server.
pub fn draw(request_id: &str, line_item: u32) -> f64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in request_id.bytes().chain(line_item.to_le_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // Finalise (splitmix64) so that nearby ids spread over the whole range.
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// Today's supply and delivery of each guaranteed line item (by marketplace position).
pub struct Delivery {
    day: AtomicU32,
    supply: Vec<AtomicU64>,
    delivered: Vec<AtomicU64>,
}

impl Delivery {
    /// Counters for `n` line items.
    pub fn new(n: usize) -> Self {
        Self {
            day: AtomicU32::new(u32::MAX),
            supply: (0..n).map(|_| AtomicU64::new(0)).collect(),
            delivered: (0..n).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Starts a new day's counts when `day` changes.
    pub fn roll(&self, day: crate::Day) {
        let prev = self.day.swap(day.0, Ordering::AcqRel);
        if prev != day.0 {
            for c in self.supply.iter().chain(&self.delivered) {
                c.store(0, Ordering::Relaxed);
            }
        }
    }

    /// Counts a request for which line item `i` was eligible.
    pub fn saw(&self, i: u32) {
        self.supply[i as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an impression delivered by line item `i`.
    pub fn delivered(&self, i: u32) {
        self.delivered[i as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// (supply, delivered) of line item `i` today.
    pub fn counts(&self, i: u32) -> (u64, u64) {
        (
            self.supply[i as usize].load(Ordering::Relaxed),
            self.delivered[i as usize].load(Ordering::Relaxed),
        )
    }

    /// The allocation rate of line item `i` with a daily goal of `goal`.
    pub fn rate(&self, i: u32, goal: u64, day_elapsed: f64) -> f64 {
        let (supply, delivered) = self.counts(i);
        allocation_rate(goal, delivered, supply, day_elapsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_is_remaining_goal_over_forecast_supply() {
        // Half the day gone, 10,000 eligible so far (20,000 forecast for the day), 4,000 of a
        // 10,000 goal delivered: 6,000 of the 10,000 still to come, with the safety margin.
        let r = allocation_rate(10_000, 4_000, 10_000, 0.5);
        assert!((r - 0.6 * SAFETY).abs() < 1e-9, "{r}");
        assert_eq!(allocation_rate(10_000, 10_000, 10_000, 0.5), 0.0);
        assert_eq!(allocation_rate(10_000, 0, 50, 0.5), 1.0, "no forecast yet");
        assert_eq!(
            allocation_rate(1_000_000, 0, 10_000, 0.5),
            1.0,
            "under-supplied"
        );
    }

    #[test]
    fn draws_are_uniform_and_stable() {
        let n = 100_000;
        let under = (0..n).filter(|i| draw(&format!("r-{i}"), 7) < 0.3).count();
        assert!((under as f64 / n as f64 - 0.3).abs() < 0.01, "{under}");
        assert_eq!(draw("r-1", 3), draw("r-1", 3));
        assert_ne!(draw("r-1", 3), draw("r-1", 4));
    }

    /// Over a simulated day of even supply, pacing by the rate delivers the goal, not all of it
    /// in the morning.
    #[test]
    fn delivers_the_goal_over_the_day() {
        let d = Delivery::new(1);
        d.roll(crate::Day(1));
        let (requests, goal) = (100_000u64, 20_000u64);
        let mut by_noon = 0;
        for k in 0..requests {
            let elapsed = k as f64 / requests as f64;
            d.saw(0);
            if draw(&format!("r-{k}"), 0) < d.rate(0, goal, elapsed) {
                d.delivered(0);
            }
            if k == requests / 2 {
                by_noon = d.counts(0).1;
            }
        }
        let delivered = d.counts(0).1;
        assert!(
            (goal..=goal + goal / 50).contains(&delivered),
            "{delivered}"
        );
        assert!(by_noon < goal * 6 / 10, "front-loaded: {by_noon} by noon");
        d.roll(crate::Day(2));
        assert_eq!(d.counts(0), (0, 0));
    }
}
