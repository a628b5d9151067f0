//! Reserve prices: static floors per inventory, per-second floors (in the pod rules), and a
//! dynamic reserve per segment learned from recent winning bids.
//!
//! The dynamic reserve estimates a segment's value distribution F from its recent winning bids
//! and sets the reserve Myerson's way: the price r maximising r·(1 − F(r)), which for regular
//! distributions is the optimal reserve of a second-price auction whatever the number of bidders.
//! A winning bid is the highest of the n values that competed, so the winning bids are drawn from
//! F^n, not F: the estimate is F(v) = F_win(v)^(1/n), with n the segment's mean number of
//! competitors (taking the winners' distribution for F would price for a lone bidder and set the
//! reserve far too high). The reserve is clamped to a quantile of the recent winning bids so that
//! a thin or shifting segment cannot price itself out of fill, and it is 0 until a segment has
//! enough observations.

use crate::marketplace::Marketplace;
use podium_core::{AdBreak, AdRequest, Micros};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// The highest of the marketplace reserve and every floor rule the request and break match.
pub fn static_floor(m: &Marketplace, req: &AdRequest, brk: &AdBreak) -> Micros {
    m.floors
        .iter()
        .filter(|f| {
            (f.countries.is_empty() || f.countries.iter().any(|c| c == &req.user.country))
                && (f.devices.is_empty() || f.devices.contains(&req.user.device))
                && (f.genres.is_empty() || f.genres.iter().any(|g| g == &req.content.genre))
                && (f.positions.is_empty() || f.positions.contains(&brk.position))
                && f.live.is_none_or(|l| l == req.content.live)
        })
        .map(|f| f.cpm)
        .fold(m.reserve_cpm, Micros::max)
}

/// How the dynamic reserve learns.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DynamicReserveConfig {
    /// Winning bids remembered per segment (a sliding window).
    #[serde(default = "default_window")]
    pub window: usize,
    /// Observations a segment needs before its reserve is used.
    #[serde(default = "default_min_samples")]
    pub min_samples: usize,
    /// The reserve never exceeds this quantile of the remembered winning bids.
    #[serde(default = "default_max_quantile")]
    pub max_quantile: f64,
    /// Observations between recomputations of a segment's reserve.
    #[serde(default = "default_recompute")]
    pub recompute_every: usize,
}

fn default_window() -> usize {
    2000
}
fn default_min_samples() -> usize {
    200
}
fn default_max_quantile() -> f64 {
    0.5
}
fn default_recompute() -> usize {
    100
}

impl Default for DynamicReserveConfig {
    fn default() -> Self {
        Self {
            window: default_window(),
            min_samples: default_min_samples(),
            max_quantile: default_max_quantile(),
            recompute_every: default_recompute(),
        }
    }
}

impl DynamicReserveConfig {
    /// Checks ranges.
    pub fn check(&self) -> Result<(), String> {
        if self.window < 10 || self.window > 1_000_000 {
            return Err("window must be between 10 and 1,000,000".into());
        }
        if self.min_samples == 0 || self.min_samples > self.window {
            return Err("min_samples must be between 1 and window".into());
        }
        if !(0.0..=1.0).contains(&self.max_quantile) {
            return Err("max_quantile must be between 0 and 1".into());
        }
        if self.recompute_every == 0 {
            return Err("recompute_every must be positive".into());
        }
        Ok(())
    }
}

/// The reserve maximising `r × (1 − F(r))` for values drawn from the empirical distribution of
/// `samples`, clamped to the `max_quantile` sample. `samples` need not be sorted; empty gives
/// zero.
pub fn myerson_reserve(samples: &[Micros], max_quantile: f64) -> Micros {
    myerson_reserve_from_winners(samples, 1.0, max_quantile)
}

/// As [`myerson_reserve`], where each sample is the highest of `competitors` i.i.d. values: the
/// value distribution is estimated as `F_win^(1/competitors)`.
pub fn myerson_reserve_from_winners(
    samples: &[Micros],
    competitors: f64,
    max_quantile: f64,
) -> Micros {
    if samples.is_empty() {
        return Micros::ZERO;
    }
    let mut v: Vec<i64> = samples.iter().map(|m| m.0.max(0)).collect();
    v.sort_unstable();
    let n = v.len() as f64;
    let root = 1.0 / competitors.max(1.0);
    let mut best = (0.0f64, 0i64);
    for (i, &r) in v.iter().enumerate() {
        // Equal values: the first of a run counts every sample at or above it.
        if i > 0 && v[i - 1] == r {
            continue;
        }
        let below = (i as f64 / n).powf(root);
        let revenue = r as f64 * (1.0 - below);
        if revenue > best.0 {
            best = (revenue, r);
        }
    }
    let cap = v[((v.len() - 1) as f64 * max_quantile).floor() as usize];
    Micros(best.1.min(cap))
}

struct Segment {
    /// Winning bids, observations since the last recomputation, and the competitors summed
    /// over the remembered window (for their mean).
    samples: Mutex<Window>,
    reserve: AtomicI64,
}

#[derive(Default)]
struct Window {
    bids: VecDeque<(Micros, u32)>,
    since: usize,
    competitors: u64,
}

/// Per-segment dynamic reserves, shared by every request of a server.
pub struct DynamicReserve {
    cfg: DynamicReserveConfig,
    segments: RwLock<HashMap<String, Arc<Segment>>>,
}

impl DynamicReserve {
    /// An empty learner.
    pub fn new(cfg: DynamicReserveConfig) -> Self {
        Self {
            cfg,
            segments: RwLock::new(HashMap::new()),
        }
    }

    /// The segment a break sells in: device × genre × break position.
    pub fn segment(req: &AdRequest, brk: &AdBreak) -> String {
        format!(
            "{}|{}|{:?}",
            req.user.device.as_str(),
            req.content.genre,
            brk.position
        )
    }

    /// The learned reserve of a segment (zero until it has `min_samples` observations).
    pub fn reserve(&self, segment: &str) -> Micros {
        let segments = self.segments.read().unwrap_or_else(|e| e.into_inner());
        segments
            .get(segment)
            .map_or(Micros::ZERO, |s| Micros(s.reserve.load(Ordering::Relaxed)))
    }

    /// Records the winning eCPM of a break sold in `segment` among `competitors` candidates.
    pub fn observe(&self, segment: &str, winning: Micros, competitors: u32) {
        let existing = self
            .segments
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(segment)
            .cloned();
        let seg = existing.unwrap_or_else(|| {
            self.segments
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .entry(segment.to_string())
                .or_insert_with(|| {
                    Arc::new(Segment {
                        samples: Mutex::new(Window::default()),
                        reserve: AtomicI64::new(0),
                    })
                })
                .clone()
        });
        let mut w = seg.samples.lock().unwrap_or_else(|e| e.into_inner());
        let competitors = competitors.max(1);
        w.bids.push_back((winning, competitors));
        w.competitors += u64::from(competitors);
        if w.bids.len() > self.cfg.window {
            if let Some((_, n)) = w.bids.pop_front() {
                w.competitors -= u64::from(n);
            }
        }
        w.since += 1;
        if w.bids.len() >= self.cfg.min_samples && w.since >= self.cfg.recompute_every {
            w.since = 0;
            let v: Vec<Micros> = w.bids.iter().map(|b| b.0).collect();
            let mean = w.competitors as f64 / w.bids.len() as f64;
            let r = myerson_reserve_from_winners(&v, mean, self.cfg.max_quantile);
            seg.reserve.store(r.0, Ordering::Relaxed);
        }
    }

    /// Every segment with its current reserve and number of remembered observations.
    pub fn snapshot(&self) -> Vec<(String, Micros, usize)> {
        let segments = self.segments.read().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<_> = segments
            .iter()
            .map(|(k, s)| {
                let n = s
                    .samples
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .bids
                    .len();
                (k.clone(), Micros(s.reserve.load(Ordering::Relaxed)), n)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values uniform on [0, 100]: revenue r(1 − r/100) peaks at r = 50 (Myerson's φ(r) = 0).
    #[test]
    fn finds_the_optimal_reserve_of_a_uniform_distribution() {
        let samples: Vec<Micros> = (0..=1000)
            .map(|i| Micros::from_units(i as f64 / 10.0))
            .collect();
        let r = myerson_reserve(&samples, 1.0);
        assert!((r.as_units() - 50.0).abs() < 0.5, "{r:?}");
        // Clamped to the 30th percentile.
        let r = myerson_reserve(&samples, 0.3);
        assert!((r.as_units() - 30.0).abs() < 0.2, "{r:?}");
    }

    /// Exponential values with mean 10: the optimal reserve is the mean (φ(r) = r − 10).
    #[test]
    fn finds_the_optimal_reserve_of_an_exponential_distribution() {
        let n = 20_000;
        let samples: Vec<Micros> = (0..n)
            .map(|i| {
                let u = (i as f64 + 0.5) / n as f64;
                Micros::from_units(-10.0 * (1.0 - u).ln())
            })
            .collect();
        let r = myerson_reserve(&samples, 1.0);
        assert!((r.as_units() - 10.0).abs() < 0.6, "{r:?}");
    }

    /// Values uniform on [0, 100], three bidders: winning bids are the maximum of three, yet the
    /// estimated reserve is still the values' optimum, 50, not the winners' (about 63).
    #[test]
    fn corrects_winning_bids_for_the_number_of_competitors() {
        let mut x: u64 = 17;
        let mut u = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 11) as f64 / (1u64 << 53) as f64 * 100.0
        };
        let winners: Vec<Micros> = (0..30_000)
            .map(|_| Micros::from_units(u().max(u()).max(u())))
            .collect();
        let r = myerson_reserve_from_winners(&winners, 3.0, 1.0).as_units();
        assert!((r - 50.0).abs() < 2.0, "{r}");
        let naive = myerson_reserve(&winners, 1.0).as_units();
        assert!(naive > 60.0, "{naive}");
    }

    #[test]
    fn learns_per_segment_after_enough_observations() {
        let d = DynamicReserve::new(DynamicReserveConfig {
            window: 1000,
            min_samples: 200,
            max_quantile: 1.0,
            recompute_every: 50,
        });
        for i in 0..199 {
            d.observe("tv|drama|Midroll", Micros::from_units((i % 100) as f64), 1);
        }
        assert_eq!(d.reserve("tv|drama|Midroll"), Micros::ZERO, "too few yet");
        for i in 199..1000 {
            d.observe("tv|drama|Midroll", Micros::from_units((i % 100) as f64), 1);
        }
        let r = d.reserve("tv|drama|Midroll").as_units();
        assert!((45.0..=55.0).contains(&r), "{r}");
        assert_eq!(d.reserve("mobile|news|Preroll"), Micros::ZERO);
        assert_eq!(d.snapshot().len(), 1);
    }
}
