//! Calibration of predictions against outcomes, joined by the ad's tracking key.

use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

/// Bins of the reliability curve (predictions in [0, 1]).
const BINS: usize = 10;
const HOUR_MS: i64 = 3_600_000;
/// Predictions clamped away from 0 and 1 for the log loss.
const EPS: f64 = 1e-6;

/// One model's prediction for a placed ad.
#[derive(Clone, Debug, PartialEq)]
pub struct Prediction {
    /// What it predicts: `ctr` (a click follows) or `completion` (the ad plays to its end).
    pub task: Arc<str>,
    /// Model name.
    pub model: Arc<str>,
    /// Model version that served.
    pub version: Arc<str>,
    /// The probability predicted.
    pub p: f32,
}

/// Settings of the monitor.
#[derive(Clone, Copy, Debug)]
pub struct CalibrationConfig {
    /// How long a placed ad waits for its impression and outcomes before it is forgotten.
    pub outcome_window_ms: i64,
    /// Hours of statistics kept.
    pub keep_hours: i64,
    /// An alert needs at least this many observed outcomes.
    pub min_outcomes: f64,
    /// Alert when Σ predicted ÷ Σ observed is above this or below its inverse.
    pub max_ratio: f64,
    /// Most placed ads waiting for outcomes; beyond it the oldest waiting ad is forgotten
    /// (counted in [`Calibration::skipped`]), so memory stays bounded at any request rate (about
    /// 400 bytes an ad: 500,000 is ~200 MB) and a burst shortens the window instead of leaving
    /// the newest ads unfollowed.
    pub max_pending: usize,
}

impl Default for CalibrationConfig {
    fn default() -> Self {
        Self {
            outcome_window_ms: HOUR_MS,
            keep_hours: 48,
            min_outcomes: 50.0,
            max_ratio: 1.2,
            max_pending: 500_000,
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Stats {
    n: f64,
    predicted: f64,
    observed: f64,
    /// Σ −log(1 − p) + Σ over outcomes of (log(1 − p) − log p): the log loss, corrected as
    /// outcomes arrive.
    log_loss: f64,
    bins: [(f64, f64, f64); BINS],
}

impl Stats {
    fn add(&mut self, o: &Stats) {
        self.n += o.n;
        self.predicted += o.predicted;
        self.observed += o.observed;
        self.log_loss += o.log_loss;
        for (a, b) in self.bins.iter_mut().zip(&o.bins) {
            a.0 += b.0;
            a.1 += b.1;
            a.2 += b.2;
        }
    }
}

fn bin(p: f64) -> usize {
    ((p * BINS as f64) as usize).min(BINS - 1)
}

/// Key of a statistics cell: model, version, task, segment.
type Cell = (Arc<str>, Arc<str>, Arc<str>, Arc<str>);

struct PendingAd {
    segment: Arc<str>,
    predictions: Vec<Prediction>,
    /// Hour bucket of the impression, once it played.
    impressed: Option<i64>,
    /// Tasks whose outcome arrived.
    observed: Vec<String>,
}

impl PendingAd {
    /// The statistics cells of the ad's predictions (of one task, or all) with each prediction.
    fn cells(&self, task: Option<&str>) -> Vec<(Cell, f64)> {
        self.predictions
            .iter()
            .filter(|p| task.is_none_or(|t| *p.task == *t))
            .map(|p| {
                let cell = (
                    p.model.clone(),
                    p.version.clone(),
                    p.task.clone(),
                    self.segment.clone(),
                );
                (cell, f64::from(p.p).clamp(0.0, 1.0))
            })
            .collect()
    }
}

#[derive(Default)]
struct State {
    pending: HashMap<Arc<str>, PendingAd>,
    /// Arrival order of pending keys, for expiry.
    order: std::collections::VecDeque<(i64, Arc<str>)>,
    /// Placed ads not followed because too many were pending.
    skipped: u64,
    /// Segment names, shared by the ads in them.
    segments: std::collections::HashSet<Arc<str>>,
    cells: BTreeMap<(Cell, i64), Stats>,
    alerts: Vec<CalibrationAlert>,
}

/// Calibration of every model against what viewers did, per segment and hour.
pub struct Calibration {
    cfg: CalibrationConfig,
    state: Mutex<State>,
}

/// One reliability bin: predictions in [lo, hi), their mean and the observed rate.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReliabilityBin {
    /// Lower edge.
    pub lo: f64,
    /// Upper edge.
    pub hi: f64,
    /// Impressions in the bin.
    pub n: f64,
    /// Mean prediction.
    pub mean_predicted: f64,
    /// Observed rate.
    pub observed_rate: f64,
}

/// The calibration of one model version on one task and segment over a window.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CalibrationRow {
    /// Model name.
    pub model: String,
    /// Version.
    pub version: String,
    /// `ctr`, `completion`, …
    pub task: String,
    /// Segment (the viewer's device), or `all`.
    pub segment: String,
    /// Impressions with a prediction.
    pub impressions: f64,
    /// Σ predicted.
    pub predicted: f64,
    /// Σ observed.
    pub observed: f64,
    /// Σ predicted ÷ Σ observed (`null` with nothing observed).
    pub calibration_ratio: Option<f64>,
    /// Log loss ÷ the entropy of the observed rate (`null` when the rate is 0 or 1).
    pub normalized_entropy: Option<f64>,
    /// Expected calibration error over the bins (impression-weighted |mean p − rate|).
    pub ece: f64,
    /// The reliability curve.
    pub reliability: Vec<ReliabilityBin>,
}

/// A model whose predictions left their band.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CalibrationAlert {
    /// When, ms since the epoch.
    pub ts_ms: i64,
    /// Model.
    pub model: String,
    /// Version.
    pub version: String,
    /// Task.
    pub task: String,
    /// The ratio that tripped it.
    pub calibration_ratio: f64,
    /// Outcomes it was measured on.
    pub observed: f64,
}

impl Calibration {
    /// An empty monitor.
    pub fn new(cfg: CalibrationConfig) -> Self {
        Self {
            cfg,
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records the predictions made for a placed ad, under the key its tracking events carry.
    pub fn predicted(&self, key: String, ts_ms: i64, segment: &str, predictions: Vec<Prediction>) {
        if predictions.is_empty() {
            return;
        }
        let mut s = self.lock();
        // Forget what waited longer than the outcome window.
        while s
            .order
            .front()
            .is_some_and(|(t, _)| *t < ts_ms - self.cfg.outcome_window_ms)
        {
            if let Some((_, k)) = s.order.pop_front() {
                s.pending.remove(&*k);
            }
        }
        while s.pending.len() >= self.cfg.max_pending.max(1) {
            let Some((_, oldest)) = s.order.pop_front() else {
                break;
            };
            if s.pending.remove(&*oldest).is_some() {
                s.skipped += 1;
            }
        }
        let key: Arc<str> = Arc::from(key);
        let segment = match s.segments.get(segment) {
            Some(seg) => seg.clone(),
            None => {
                let seg: Arc<str> = Arc::from(segment);
                s.segments.insert(seg.clone());
                seg
            }
        };
        s.order.push_back((ts_ms, key.clone()));
        s.pending.insert(
            key,
            PendingAd {
                segment,
                predictions,
                impressed: None,
                observed: Vec::new(),
            },
        );
    }

    /// The ad under `key` played: its predictions count as exposures (once).
    pub fn impression(&self, key: &str, ts_ms: i64) {
        let mut s = self.lock();
        let Some(ad) = s.pending.get_mut(key) else {
            return;
        };
        if ad.impressed.is_some() {
            return;
        }
        let hour = ts_ms.div_euclid(HOUR_MS);
        ad.impressed = Some(hour);
        let cells = ad.cells(None);
        for (cell, p) in cells {
            let st = s.cells.entry((cell, hour)).or_default();
            st.n += 1.0;
            st.predicted += p;
            st.log_loss -= (1.0 - p).max(EPS).ln();
            let b = &mut st.bins[bin(p)];
            b.0 += 1.0;
            b.1 += p;
        }
        let oldest = hour - self.cfg.keep_hours;
        s.cells.retain(|(_, h), _| *h >= oldest);
    }

    /// The outcome `task` (`ctr` for a click, `completion`) happened for the ad under `key`
    /// (once; only after its impression).
    pub fn outcome(&self, key: &str, task: &str, ts_ms: i64) {
        let mut s = self.lock();
        let Some(ad) = s.pending.get_mut(key) else {
            return;
        };
        let Some(hour) = ad.impressed else {
            return;
        };
        if ad.observed.iter().any(|t| t == task) {
            return;
        }
        ad.observed.push(task.to_string());
        let hits = ad.cells(Some(task));
        for (cell, p) in hits {
            let st = s.cells.entry((cell.clone(), hour)).or_default();
            st.observed += 1.0;
            // The impression counted −log(1 − p); the outcome makes it −log p.
            st.log_loss += (1.0 - p).max(EPS).ln() - p.max(EPS).ln();
            st.bins[bin(p)].2 += 1.0;
            self.check(&mut s, &cell, ts_ms);
        }
    }

    /// Raises an alert when a model version's ratio over the last day leaves the band.
    fn check(&self, s: &mut State, cell: &Cell, ts_ms: i64) {
        let since = ts_ms.div_euclid(HOUR_MS) - 24;
        let mut total = Stats::default();
        for ((c, h), st) in s.cells.iter() {
            if c.0 == cell.0 && c.1 == cell.1 && c.2 == cell.2 && *h >= since {
                total.add(st);
            }
        }
        if total.observed < self.cfg.min_outcomes {
            return;
        }
        let ratio = total.predicted / total.observed;
        if ratio <= self.cfg.max_ratio && ratio >= 1.0 / self.cfg.max_ratio {
            return;
        }
        let already = s.alerts.iter().any(|a| {
            *a.model == *cell.0
                && *a.version == *cell.1
                && *a.task == *cell.2
                && a.ts_ms > ts_ms - HOUR_MS
        });
        if !already {
            s.alerts.push(CalibrationAlert {
                ts_ms,
                model: cell.0.to_string(),
                version: cell.1.to_string(),
                task: cell.2.to_string(),
                calibration_ratio: ratio,
                observed: total.observed,
            });
        }
    }

    /// Calibration over the last `hours` hours before `now_ms`, per model version, task and
    /// segment, plus each model version's total over all segments (`segment` = `all`).
    pub fn report(&self, now_ms: i64, hours: i64) -> Vec<CalibrationRow> {
        let s = self.lock();
        let since = now_ms.div_euclid(HOUR_MS) - hours + 1;
        let mut by: BTreeMap<Cell, Stats> = BTreeMap::new();
        for ((c, h), st) in s.cells.iter() {
            if *h < since {
                continue;
            }
            by.entry(c.clone()).or_default().add(st);
            let all = (c.0.clone(), c.1.clone(), c.2.clone(), Arc::from("all"));
            by.entry(all).or_default().add(st);
        }
        by.into_iter().map(|(c, st)| row(c, &st)).collect()
    }

    /// Alerts raised so far, oldest first.
    pub fn alerts(&self) -> Vec<CalibrationAlert> {
        self.lock().alerts.clone()
    }

    /// Placed ads still waiting for their outcomes.
    pub fn pending(&self) -> usize {
        self.lock().pending.len()
    }

    /// Placed ads forgotten before their window ended because `max_pending` were waiting.
    pub fn skipped(&self) -> u64 {
        self.lock().skipped
    }
}

fn row(c: Cell, st: &Stats) -> CalibrationRow {
    let rate = if st.n > 0.0 { st.observed / st.n } else { 0.0 };
    let entropy = if rate > 0.0 && rate < 1.0 {
        -(rate * rate.ln() + (1.0 - rate) * (1.0 - rate).ln())
    } else {
        0.0
    };
    let ece = if st.n > 0.0 {
        st.bins
            .iter()
            .filter(|b| b.0 > 0.0)
            .map(|b| (b.1 / b.0 - b.2 / b.0).abs() * b.0)
            .sum::<f64>()
            / st.n
    } else {
        0.0
    };
    CalibrationRow {
        model: c.0.to_string(),
        version: c.1.to_string(),
        task: c.2.to_string(),
        segment: c.3.to_string(),
        impressions: st.n,
        predicted: st.predicted,
        observed: st.observed,
        calibration_ratio: (st.observed > 0.0).then(|| st.predicted / st.observed),
        normalized_entropy: (entropy > 0.0 && st.n > 0.0).then(|| st.log_loss / st.n / entropy),
        ece,
        reliability: st
            .bins
            .iter()
            .enumerate()
            .filter(|(_, b)| b.0 > 0.0)
            .map(|(i, b)| ReliabilityBin {
                lo: i as f64 / BINS as f64,
                hi: (i + 1) as f64 / BINS as f64,
                n: b.0,
                mean_predicted: b.1 / b.0,
                observed_rate: b.2 / b.0,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uniforms(seed: u64) -> impl FnMut() -> f64 {
        let mut x = seed;
        move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    /// Ads whose true click rate is `truth`, predicted at `truth × scale`.
    fn run(scale: f64, n: usize) -> (Calibration, Vec<CalibrationRow>) {
        let c = Calibration::new(CalibrationConfig::default());
        let mut u = uniforms(5);
        let t0 = 1_795_746_600_000;
        for k in 0..n {
            let truth = 0.02 + 0.2 * u();
            let key = format!("trk:r{k}:b:1");
            let segment = if k % 2 == 0 { "tv" } else { "mobile" };
            c.predicted(
                key.clone(),
                t0,
                segment,
                vec![Prediction {
                    task: "ctr".into(),
                    model: "ctr".into(),
                    version: "7".into(),
                    p: (truth * scale) as f32,
                }],
            );
            c.impression(&key, t0 + 1000);
            c.impression(&key, t0 + 1000);
            if u() < truth {
                c.outcome(&key, "ctr", t0 + 2000);
                c.outcome(&key, "ctr", t0 + 2000);
            }
        }
        let rows = c.report(t0 + 3000, 1);
        (c, rows)
    }

    fn all(rows: &[CalibrationRow]) -> &CalibrationRow {
        rows.iter().find(|r| r.segment == "all").unwrap()
    }

    #[test]
    fn a_calibrated_model_has_ratio_one_and_no_alert() {
        let (c, rows) = run(1.0, 40_000);
        let r = all(&rows);
        assert_eq!(r.impressions, 40_000.0, "impressions count once");
        let ratio = r.calibration_ratio.unwrap();
        assert!((ratio - 1.0).abs() < 0.04, "{ratio}");
        assert!(r.ece < 0.02, "{}", r.ece);
        let ne = r.normalized_entropy.unwrap();
        assert!(ne < 1.0, "informative predictions beat the average: {ne}");
        assert!(c.alerts().is_empty());
        assert_eq!(rows.len(), 3, "tv, mobile and all");
    }

    #[test]
    fn predictions_scaled_by_1_3_show_ratio_1_3_and_alert() {
        let (c, rows) = run(1.3, 40_000);
        let r = all(&rows);
        let ratio = r.calibration_ratio.unwrap();
        assert!((ratio - 1.3).abs() < 0.05, "{ratio}");
        assert!(r.ece > 0.02, "{}", r.ece);
        let alerts = c.alerts();
        assert_eq!(alerts.len(), 1, "{alerts:?}");
        assert!(alerts[0].calibration_ratio > 1.2);
        // The reliability curve sits below the diagonal: observed < predicted in every bin.
        assert!(r
            .reliability
            .iter()
            .filter(|b| b.n > 500.0)
            .all(|b| b.observed_rate < b.mean_predicted));
    }

    #[test]
    fn outcomes_without_an_impression_or_a_prediction_are_ignored() {
        let c = Calibration::new(CalibrationConfig::default());
        c.outcome("trk:unknown:b:1", "ctr", 0);
        let p = vec![Prediction {
            task: "ctr".into(),
            model: "m".into(),
            version: "1".into(),
            p: 0.1,
        }];
        c.predicted("k".into(), 0, "tv", p);
        c.outcome("k", "ctr", 10);
        assert!(c.report(10, 1).is_empty(), "no impression yet");
        c.impression("k", 20);
        c.outcome("k", "completion", 30);
        let rows = c.report(30, 1);
        assert_eq!(all(&rows).observed, 0.0, "another task's outcome");
        assert_eq!(c.pending(), 1);
    }

    #[test]
    fn pending_ads_are_bounded() {
        let c = Calibration::new(CalibrationConfig {
            max_pending: 3,
            ..CalibrationConfig::default()
        });
        for i in 0..5 {
            let p = vec![Prediction {
                task: "ctr".into(),
                model: "m".into(),
                version: "1".into(),
                p: 0.1,
            }];
            c.predicted(format!("k{i}"), i, "tv", p);
        }
        assert_eq!((c.pending(), c.skipped()), (3, 2));
        // The oldest were forgotten; the newest still join their outcomes.
        c.impression("k0", 10);
        assert!(c.report(10, 1).is_empty());
        c.impression("k4", 10);
        assert_eq!(all(&c.report(10, 1)).impressions, 1.0);
    }
}
