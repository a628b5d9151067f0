//! Live statistics per model version, as served: batches, failures, latency and the distribution
//! of predictions. Canary guardrails compare a canary's figures with production's.

use crate::BoundModel;
use dashmap::DashMap;
use hdrhistogram::Histogram;
use podium_core::FeatureFrame;
use podium_monitor::DriftSketch;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Bins of the prediction histogram: predictions are mostly probabilities, so 20 equal bins
/// over [0, 1]; values outside fall into the end bins.
pub const SCORE_BINS: usize = 20;
/// Batch latencies kept per version for the canary's rank test.
pub const RECENT_LATENCIES: usize = 2_048;
/// Rows of each batch whose inputs the drift sketch samples.
pub const DRIFT_ROWS_PER_BATCH: usize = 4;

#[derive(Debug)]
struct Latency {
    histogram: Histogram<u64>,
    /// The last [`RECENT_LATENCIES`] batch latencies, µs, as a ring.
    recent: Vec<u32>,
    next: usize,
}

/// Figures of one model version since it started serving (or since the last reset).
pub struct VersionStats {
    batches: AtomicU64,
    failures: AtomicU64,
    rows: AtomicU64,
    bins: [AtomicU64; SCORE_BINS],
    latency: Mutex<Latency>,
    drift: Option<DriftSketch>,
    inference_seconds: metrics::Histogram,
    batch_rows: metrics::Histogram,
}

impl std::fmt::Debug for VersionStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VersionStats")
            .field("batches", &self.batches)
            .field("failures", &self.failures)
            .field("drift", &self.drift.is_some())
            .finish_non_exhaustive()
    }
}

impl VersionStats {
    /// Empty figures for a version; `reference` (the bundle's) turns on drift sketching.
    pub fn new(
        name: &str,
        version: &str,
        reference: Option<Arc<podium_model::reference::Reference>>,
    ) -> Self {
        let labels = [
            ("model", name.to_string()),
            ("version", version.to_string()),
        ];
        Self {
            batches: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            rows: AtomicU64::new(0),
            bins: std::array::from_fn(|_| AtomicU64::new(0)),
            latency: Mutex::new(Latency {
                histogram: Histogram::new_with_bounds(1, 60_000_000, 2)
                    .expect("valid histogram bounds"),
                recent: Vec::new(),
                next: 0,
            }),
            drift: reference.map(|r| DriftSketch::new(r, DRIFT_ROWS_PER_BATCH)),
            inference_seconds: metrics::histogram!(
                "podium_model_inference_duration_seconds",
                &labels
            ),
            batch_rows: metrics::histogram!("podium_model_batch_rows", &labels),
        }
    }
}

/// A copy of a version's figures at one moment.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct StatsSnapshot {
    /// Batches scored (or attempted).
    pub batches: u64,
    /// Batches that failed: an error, a non-finite prediction, or no answer in time.
    pub failures: u64,
    /// Rows predicted.
    pub rows: u64,
    /// Share of failed batches.
    pub error_rate: f64,
    /// Median batch latency, µs.
    pub p50_us: u64,
    /// 99th percentile batch latency, µs.
    pub p99_us: u64,
    /// Prediction counts per bin of [0, 1].
    pub bins: Vec<u64>,
    /// The most recent batch latencies, µs (at most [`RECENT_LATENCIES`]).
    #[serde(skip)]
    pub recent_us: Vec<u32>,
}

impl VersionStats {
    /// Records one batch: its wall time and its predictions, or that it failed.
    pub fn record(&self, elapsed: Duration, predictions: Option<&[f32]>) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        let us = (elapsed.as_micros() as u64).max(1);
        self.inference_seconds.record(elapsed.as_secs_f64());
        if let Ok(mut l) = self.latency.lock() {
            let _ = l.histogram.record(us);
            let v = us.min(u32::MAX as u64) as u32;
            if l.recent.len() < RECENT_LATENCIES {
                l.recent.push(v);
            } else {
                let i = l.next;
                l.recent[i] = v;
            }
            l.next = (l.next + 1) % RECENT_LATENCIES;
        }
        match predictions {
            Some(values) => {
                self.batch_rows.record(values.len() as f64);
                self.rows.fetch_add(values.len() as u64, Ordering::Relaxed);
                let mut counts = [0u64; SCORE_BINS];
                for &v in values {
                    counts[bin_of(v)] += 1;
                }
                for (bin, n) in self.bins.iter().zip(counts) {
                    if n > 0 {
                        bin.fetch_add(n, Ordering::Relaxed);
                    }
                }
            }
            None => {
                self.failures.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Records one batch scored from `frame` by `model`: as [`record`](Self::record), and a
    /// sample of its inputs (as served, missing values included) and predictions for drift.
    pub fn record_scored(
        &self,
        elapsed: Duration,
        model: &BoundModel,
        frame: &FeatureFrame,
        predictions: Option<&[f32]>,
    ) {
        self.record(elapsed, predictions);
        if let (Some(sketch), Some(values)) = (&self.drift, predictions) {
            let inputs: Vec<&[f32]> = model.columns().iter().map(|&c| frame.column(c)).collect();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            sketch.record(now, &inputs, values);
        }
    }

    /// The drift sketch, when the version's bundle has a reference.
    pub fn drift(&self) -> Option<&DriftSketch> {
        self.drift.as_ref()
    }

    /// The figures now.
    pub fn snapshot(&self) -> StatsSnapshot {
        let batches = self.batches.load(Ordering::Relaxed);
        let failures = self.failures.load(Ordering::Relaxed);
        let (p50_us, p99_us, recent_us) = self
            .latency
            .lock()
            .map(|l| {
                (
                    l.histogram.value_at_quantile(0.5),
                    l.histogram.value_at_quantile(0.99),
                    l.recent.clone(),
                )
            })
            .unwrap_or_default();
        StatsSnapshot {
            batches,
            failures,
            rows: self.rows.load(Ordering::Relaxed),
            error_rate: if batches == 0 {
                0.0
            } else {
                failures as f64 / batches as f64
            },
            p50_us,
            p99_us,
            bins: self
                .bins
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
            recent_us,
        }
    }
}

fn bin_of(v: f32) -> usize {
    if v.is_nan() {
        return 0;
    }
    ((v.clamp(0.0, 1.0) * SCORE_BINS as f32) as usize).min(SCORE_BINS - 1)
}

/// Statistics of every model version an engine has served, shared across model-set swaps.
#[derive(Debug, Default)]
pub struct ModelStats {
    versions: DashMap<(String, String), Arc<VersionStats>>,
    no_drift: std::sync::atomic::AtomicBool,
}

impl ModelStats {
    /// The figures of a version, created empty on first use.
    pub fn of(&self, name: &str, version: &str) -> Arc<VersionStats> {
        let key = (name.to_string(), version.to_string());
        if let Some(s) = self.versions.get(&key) {
            return s.clone();
        }
        self.versions
            .entry(key)
            .or_insert_with(|| Arc::new(VersionStats::new(name, version, None)))
            .clone()
    }

    /// Turns drift sketching of versions created from now on (and those already created) on or
    /// off; off, only batches, failures, latency and the prediction histogram are recorded.
    pub fn set_drift(&self, on: bool) {
        self.no_drift.store(!on, Ordering::Relaxed);
        if !on {
            self.versions.clear();
        }
    }

    /// The figures of a model's version, created on first use with drift sketching against the
    /// bundle's reference when it has one.
    pub fn of_model(&self, model: &podium_model::Model) -> Arc<VersionStats> {
        let key = (model.name().to_string(), model.version().to_string());
        if let Some(s) = self.versions.get(&key) {
            return s.clone();
        }
        self.versions
            .entry(key)
            .or_insert_with(|| {
                let reference = if self.no_drift.load(Ordering::Relaxed) {
                    None
                } else {
                    model.reference().cloned()
                };
                Arc::new(VersionStats::new(model.name(), model.version(), reference))
            })
            .clone()
    }

    /// Every version's live figures, sorted by name and version.
    pub fn versions(&self) -> Vec<(String, String, Arc<VersionStats>)> {
        let mut out: Vec<_> = self
            .versions
            .iter()
            .map(|e| (e.key().0.clone(), e.key().1.clone(), e.value().clone()))
            .collect();
        out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        out
    }

    /// The figures of a version, if it has served.
    pub fn get(&self, name: &str, version: &str) -> Option<StatsSnapshot> {
        self.versions
            .get(&(name.to_string(), version.to_string()))
            .map(|s| s.snapshot())
    }

    /// Forgets a version (a canary that starts again starts from zero).
    pub fn reset(&self, name: &str, version: &str) {
        self.versions
            .remove(&(name.to_string(), version.to_string()));
    }

    /// Every version's figures, sorted by name and version.
    pub fn all(&self) -> Vec<(String, String, StatsSnapshot)> {
        let mut out: Vec<_> = self
            .versions
            .iter()
            .map(|e| (e.key().0.clone(), e.key().1.clone(), e.value().snapshot()))
            .collect();
        out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        out
    }
}

/// Population stability index between two histograms over the same bins (counts, not shares);
/// 0 when either is empty. Bands: < 0.1 stable, 0.1–0.25 moderate shift, > 0.25 major shift.
pub fn psi(expected: &[u64], actual: &[u64]) -> f64 {
    podium_monitor::stat::psi(expected, actual).unwrap_or(0.0)
}

/// Deterministic assignment of a unit (a user) to a bucket in [0, 100) per salt (a model, an
/// experiment layer): stable across processes, versions and machines, independent across salts.
pub fn bucket(unit: &str, salt: &str) -> f64 {
    // FNV-1a over salt, a separator and the unit, then a splitmix64 finaliser to spread the bits.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in salt.bytes().chain([0xff]).chain(unit.bytes()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    (h >> 11) as f64 / (1u64 << 53) as f64 * 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_batches_failures_and_the_score_distribution() {
        let s = VersionStats::new("m", "1", None);
        s.record(
            Duration::from_micros(100),
            Some(&[0.01, 0.5, 0.99, 2.0, f32::NAN]),
        );
        s.record(Duration::from_micros(300), None);
        let snap = s.snapshot();
        assert_eq!((snap.batches, snap.failures, snap.rows), (2, 1, 5));
        assert_eq!(snap.error_rate, 0.5);
        assert_eq!(snap.bins[0], 2);
        assert_eq!(snap.bins[10], 1);
        assert_eq!(snap.bins[19], 2);
        assert!(snap.p99_us >= 290);
    }

    #[test]
    fn psi_is_zero_for_the_same_distribution_and_large_for_a_shift() {
        let a = [10, 20, 30, 40];
        assert!(psi(&a, &[20, 40, 60, 80]).abs() < 1e-12);
        assert!(psi(&a, &[40, 30, 20, 10]) > 0.25);
        assert_eq!(psi(&a, &[0, 0, 0, 0]), 0.0);
    }

    #[test]
    fn buckets_are_stable_uniform_and_independent_across_salts() {
        assert_eq!(bucket("u-1", "ctr"), bucket("u-1", "ctr"));
        let users: Vec<String> = (0..20_000).map(|i| format!("u-{i}")).collect();
        let share = |salt: &str| {
            users.iter().filter(|u| bucket(u, salt) < 10.0).count() as f64 / users.len() as f64
        };
        assert!((share("ctr") - 0.10).abs() < 0.01, "{}", share("ctr"));
        let both = users
            .iter()
            .filter(|u| bucket(u, "a") < 50.0 && bucket(u, "b") < 50.0)
            .count() as f64
            / users.len() as f64;
        assert!((both - 0.25).abs() < 0.02, "{both}");
    }
}
