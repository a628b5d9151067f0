//! Bid shading for first-price auctions: bid `b* = argmax (v − b) · P(win | b)` under a win-rate
//! model learned from win and loss notices.
//!
//! The win rate is logistic in the log of the bid, `P(win | b) = σ(α + β ln b)`, fitted online by
//! stochastic gradient descent on the log-loss of each outcome, one model per segment (device ×
//! genre, as the exchange's competition differs by inventory). Before a segment has seen enough
//! outcomes its bids are not shaded: overpaying a little is better than losing on a guess.

use podium_core::Micros;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

/// `P(win | bid) = σ(alpha + beta · ln(bid CPM in currency units))`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct WinRateModel {
    /// Intercept.
    pub alpha: f64,
    /// Slope in log bid; positive, as a higher bid never wins less often.
    pub beta: f64,
    /// Outcomes it has learned from.
    pub observations: u64,
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

impl WinRateModel {
    /// A prior that puts even odds at `median` CPM, with `beta` steepness.
    pub fn prior(median: Micros, beta: f64) -> Self {
        let m = median.as_units().max(1e-6);
        Self {
            alpha: -beta * m.ln(),
            beta,
            observations: 0,
        }
    }

    /// Probability that a bid of `bid` (CPM) wins.
    pub fn p_win(&self, bid: Micros) -> f64 {
        if bid <= Micros::ZERO {
            return 0.0;
        }
        sigmoid(self.alpha + self.beta * bid.as_units().ln())
    }

    /// Learns from one outcome: a bid of `bid` won or lost.
    pub fn update(&mut self, bid: Micros, won: bool, learning_rate: f64) {
        if bid <= Micros::ZERO {
            return;
        }
        let x = bid.as_units().ln();
        let err = self.p_win(bid) - if won { 1.0 } else { 0.0 };
        self.alpha -= learning_rate * err;
        // A win rate falling with the bid is never right; keep the slope positive.
        self.beta = (self.beta - learning_rate * err * x).max(0.05);
        self.observations += 1;
    }

    /// The bid in `(0, value]` maximising the expected surplus `(value − b) · P(win | b)`.
    pub fn shade(&self, value: Micros) -> Micros {
        if value <= Micros::ZERO {
            return Micros::ZERO;
        }
        let v = value.0 as f64;
        let surplus = |b: f64| (v - b) * self.p_win(Micros(b.round() as i64));
        // The surplus is unimodal in b for this model: a coarse grid finds the peak's bracket,
        // golden-section search refines it.
        let steps = 64;
        let (mut best_i, mut best) = (steps, 0.0);
        for i in 1..=steps {
            let s = surplus(v * i as f64 / steps as f64);
            if s > best {
                (best_i, best) = (i, s);
            }
        }
        let (mut lo, mut hi) = (
            v * (best_i - 1) as f64 / steps as f64,
            v * (best_i + 1).min(steps) as f64 / steps as f64,
        );
        let g = 0.618_033_988_75;
        for _ in 0..40 {
            let (a, b) = (hi - g * (hi - lo), lo + g * (hi - lo));
            if surplus(a) >= surplus(b) {
                hi = b;
            } else {
                lo = a;
            }
        }
        Micros(((lo + hi) / 2.0).round() as i64).min(value)
    }
}

/// How bids are shaded.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ShadingConfig {
    /// Where an unlearned segment's model starts: even odds at this CPM.
    pub prior_median: Micros,
    /// Steepness of the prior.
    pub prior_beta: f64,
    /// SGD step.
    pub learning_rate: f64,
    /// Outcomes a segment needs before its bids are shaded.
    pub min_observations: u64,
    /// Never bid below this share of the value (a model gone wrong cannot zero every bid).
    pub min_ratio: f64,
}

impl Default for ShadingConfig {
    fn default() -> Self {
        Self {
            prior_median: Micros::from_units(10.0),
            prior_beta: 3.0,
            learning_rate: 0.05,
            min_observations: 200,
            min_ratio: 0.3,
        }
    }
}

/// Win-rate models per segment, shared by a server's requests.
pub struct BidShader {
    cfg: ShadingConfig,
    models: RwLock<HashMap<String, Arc<Mutex<WinRateModel>>>>,
}

impl BidShader {
    /// A shader with no outcomes learned.
    pub fn new(cfg: ShadingConfig) -> Self {
        Self {
            cfg,
            models: RwLock::new(HashMap::new()),
        }
    }

    fn model(&self, segment: &str) -> Arc<Mutex<WinRateModel>> {
        if let Some(m) = self
            .models
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(segment)
        {
            return m.clone();
        }
        self.models
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(segment.to_string())
            .or_insert_with(|| {
                Arc::new(Mutex::new(WinRateModel::prior(
                    self.cfg.prior_median,
                    self.cfg.prior_beta,
                )))
            })
            .clone()
    }

    /// What to bid for an impression worth `value` in a first-price auction in `segment`.
    pub fn bid(&self, segment: &str, value: Micros) -> Micros {
        let m = *self
            .model(segment)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if m.observations < self.cfg.min_observations {
            return value;
        }
        let floor = Micros((value.0 as f64 * self.cfg.min_ratio).round() as i64);
        m.shade(value).max(floor)
    }

    /// Learns that a bid of `bid` in `segment` won or lost.
    pub fn observe(&self, segment: &str, bid: Micros, won: bool) {
        let m = self.model(segment);
        m.lock()
            .unwrap_or_else(|e| e.into_inner())
            .update(bid, won, self.cfg.learning_rate);
    }

    /// Every segment's model.
    pub fn snapshot(&self) -> Vec<(String, WinRateModel)> {
        let models = self.models.read().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<_> = models
            .iter()
            .map(|(k, m)| (k.clone(), *m.lock().unwrap_or_else(|e| e.into_inner())))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic stream of uniforms (xorshift), so the test is the same every run.
    fn uniforms(seed: u64) -> impl Iterator<Item = f64> {
        let mut x = seed;
        std::iter::from_fn(move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            Some((x >> 11) as f64 / (1u64 << 53) as f64)
        })
    }

    #[test]
    fn the_shaded_bid_maximises_expected_surplus() {
        let m = WinRateModel::prior(Micros::from_units(10.0), 4.0);
        let v = Micros::from_units(20.0);
        let b = m.shade(v);
        let surplus = |b: Micros| (v.0 - b.0) as f64 * m.p_win(b);
        assert!(b < v && b > Micros::ZERO);
        for cents in (1..2000).step_by(7) {
            assert!(
                surplus(Micros(cents * 10_000)) <= surplus(b) + 1.0,
                "{cents}"
            );
        }
    }

    #[test]
    fn learns_the_competition_and_bids_near_the_optimum() {
        // The highest competing bid is log-normal around $8 CPM.
        let mut u = uniforms(7);
        let mut competing = move || {
            let (a, b) = (u.next().unwrap().max(1e-12), u.next().unwrap());
            let z = (-2.0 * a.ln()).sqrt() * (2.0 * std::f64::consts::PI * b).cos();
            (8.0f64.ln() + 0.4 * z).exp()
        };
        let shader = BidShader::new(ShadingConfig::default());
        let v = Micros::from_units(15.0);
        assert_eq!(
            shader.bid("tv|drama", v),
            v,
            "unlearned segments bid their value"
        );
        // Explore bids across the range, as a live bidder's varied values would.
        let mut spread = uniforms(11);
        for _ in 0..40_000 {
            let bid = 2.0 + 18.0 * spread.next().unwrap();
            shader.observe("tv|drama", Micros::from_units(bid), bid > competing());
        }
        let b = shader.bid("tv|drama", v);
        // The true optimum against this competition, by simulation on a grid.
        let draws: Vec<f64> = (0..20_000).map(|_| competing()).collect();
        let expected = |b: f64| (15.0 - b) * draws.iter().filter(|&&c| b > c).count() as f64;
        let best = (100..1500)
            .map(|c| c as f64 / 100.0)
            .max_by(|a, b| expected(*a).total_cmp(&expected(*b)))
            .unwrap();
        assert!(b < v, "shaded below the value");
        // Near-optimal: expected surplus within 3% of the best bid's.
        assert!(
            expected(b.as_units()) >= 0.97 * expected(best),
            "bid {b:?}, optimum {best}"
        );
    }
}
