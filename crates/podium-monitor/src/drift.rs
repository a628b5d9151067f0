//! Drift of a model version's inputs and predictions against its bundle's reference.
//!
//! A [`DriftSketch`] counts sampled rows of every batch the version scores into the reference
//! histograms' own bins (quantile bins of the training or golden data), per minute, over the
//! last hour. A report compares a window of those counts with the reference: population
//! stability index (PSI) and Jensen–Shannon distance per input and for the prediction, and each
//! input's share of missing values beside the reference's.

use crate::stat::{band, js_distance, psi};
use podium_model::reference::{Histogram, Reference};
use serde::Serialize;
use std::sync::{Arc, Mutex};

/// Minutes of counts kept.
pub const WINDOW_MINUTES: usize = 60;
/// Fewer sampled values than this in a window give no band ("too few rows").
pub const MIN_ROWS: u64 = 1_000;
const MINUTE_MS: i64 = 60_000;

#[derive(Clone, Default)]
struct Bucket {
    minute: i64,
    rows: u64,
    /// Per input: counts per reference bin.
    inputs: Vec<Vec<u64>>,
    /// Per input: missing values.
    missing: Vec<u64>,
    output: Vec<u64>,
    outputs: u64,
}

/// Live counts of one model version's inputs and predictions over its reference bins.
pub struct DriftSketch {
    reference: Arc<Reference>,
    rows_per_batch: usize,
    ring: Mutex<Vec<Bucket>>,
}

/// One input's drift over a window.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FeatureDrift {
    /// Input name.
    pub name: String,
    /// PSI of the present values against the reference.
    pub psi: Option<f64>,
    /// Jensen–Shannon distance against the reference.
    pub js: Option<f64>,
    /// `stable`, `moderate`, `major`, or `too few rows`.
    pub band: String,
    /// Share of sampled values missing.
    pub missing_share: f64,
    /// Share missing in the reference data.
    pub reference_missing_share: Option<f64>,
    /// Values sampled in the window (present and missing).
    pub sampled: u64,
}

/// The prediction's drift over a window.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OutputDrift {
    /// PSI against the reference output.
    pub psi_reference: Option<f64>,
    /// Jensen–Shannon distance against the reference output.
    pub js_reference: Option<f64>,
    /// Band of `psi_reference`.
    pub band: String,
    /// The reference bins' edges.
    pub edges: Vec<f64>,
    /// Reference counts per bin.
    pub reference: Vec<u64>,
    /// Live counts per bin over the window.
    pub live: Vec<u64>,
}

/// A version's drift over a window.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DriftReport {
    /// Rows sampled in the window.
    pub sampled_rows: u64,
    /// The prediction.
    pub prediction: OutputDrift,
    /// Each input, in the model's input order.
    pub features: Vec<FeatureDrift>,
}

fn grade(psi: Option<f64>, n: u64) -> String {
    match psi {
        Some(p) if n >= MIN_ROWS => band(p).to_string(),
        _ => "too few rows".to_string(),
    }
}

impl DriftSketch {
    /// A sketch over `reference`'s bins that samples at most `rows_per_batch` rows of each batch.
    pub fn new(reference: Arc<Reference>, rows_per_batch: usize) -> Self {
        Self {
            reference,
            rows_per_batch: rows_per_batch.max(1),
            ring: Mutex::new(vec![Bucket::default(); WINDOW_MINUTES]),
        }
    }

    /// The reference the sketch compares with.
    pub fn reference(&self) -> &Arc<Reference> {
        &self.reference
    }

    /// Records a batch: `inputs` holds one column per model input (as served, before defaults
    /// replace missing values), `outputs` the predictions. Rows are sampled at an even stride.
    pub fn record(&self, now_ms: i64, inputs: &[&[f32]], outputs: &[f32]) {
        let rows = outputs.len();
        if rows == 0 || inputs.len() != self.reference.inputs.len() {
            return;
        }
        let stride = rows.div_ceil(self.rows_per_batch);
        // Bin outside the lock; the lock only adds counts.
        let mut bins: Vec<Option<usize>> =
            Vec::with_capacity(inputs.len() * self.rows_per_batch + self.rows_per_batch);
        let mut sampled = 0u64;
        for r in (0..rows).step_by(stride) {
            sampled += 1;
            for (h, col) in self.reference.inputs.iter().zip(inputs) {
                bins.push(col.get(r).and_then(|&v| h.bin(v as f64)));
            }
            bins.push(self.reference.output.bin(outputs[r] as f64));
        }
        let width = inputs.len() + 1;
        let minute = now_ms.div_euclid(MINUTE_MS);
        let Ok(mut ring) = self.ring.lock() else {
            return;
        };
        let bucket = &mut ring[minute.rem_euclid(WINDOW_MINUTES as i64) as usize];
        if bucket.minute != minute || bucket.inputs.is_empty() {
            *bucket = Bucket {
                minute,
                rows: 0,
                inputs: self
                    .reference
                    .inputs
                    .iter()
                    .map(|h| vec![0; h.counts.len()])
                    .collect(),
                missing: vec![0; inputs.len()],
                output: vec![0; self.reference.output.counts.len()],
                outputs: 0,
            };
        }
        bucket.rows += sampled;
        for row in bins.chunks(width) {
            for (i, b) in row[..width - 1].iter().enumerate() {
                match b {
                    Some(b) => bucket.inputs[i][*b] += 1,
                    None => bucket.missing[i] += 1,
                }
            }
            if let Some(b) = row[width - 1] {
                bucket.output[b] += 1;
                bucket.outputs += 1;
            }
        }
    }

    /// Drift over the last `minutes` minutes (1 to [`WINDOW_MINUTES`]) before `now_ms`.
    pub fn report(&self, now_ms: i64, minutes: usize) -> DriftReport {
        let reference = &self.reference;
        let mut sum = Bucket {
            inputs: reference
                .inputs
                .iter()
                .map(|h| vec![0; h.counts.len()])
                .collect(),
            missing: vec![0; reference.inputs.len()],
            output: vec![0; reference.output.counts.len()],
            ..Bucket::default()
        };
        let now = now_ms.div_euclid(MINUTE_MS);
        let oldest = now - minutes.clamp(1, WINDOW_MINUTES) as i64 + 1;
        if let Ok(ring) = self.ring.lock() {
            for b in ring
                .iter()
                .filter(|b| !b.inputs.is_empty() && (oldest..=now).contains(&b.minute))
            {
                sum.rows += b.rows;
                sum.outputs += b.outputs;
                for (a, x) in sum.inputs.iter_mut().zip(&b.inputs) {
                    a.iter_mut().zip(x).for_each(|(a, x)| *a += x);
                }
                sum.missing
                    .iter_mut()
                    .zip(&b.missing)
                    .for_each(|(a, x)| *a += x);
                sum.output
                    .iter_mut()
                    .zip(&b.output)
                    .for_each(|(a, x)| *a += x);
            }
        }
        let features = reference
            .inputs
            .iter()
            .zip(&sum.inputs)
            .zip(&sum.missing)
            .map(|((h, live), &missing)| feature(h, live, missing, sum.rows))
            .collect();
        let psi_reference = psi(&reference.output.counts, &sum.output);
        DriftReport {
            sampled_rows: sum.rows,
            prediction: OutputDrift {
                psi_reference,
                js_reference: js_distance(&reference.output.counts, &sum.output),
                band: grade(psi_reference, sum.outputs),
                edges: reference.output.edges.clone(),
                reference: reference.output.counts.clone(),
                live: sum.output,
            },
            features,
        }
    }
}

fn feature(h: &Histogram, live: &[u64], missing: u64, sampled: u64) -> FeatureDrift {
    let present: u64 = live.iter().sum();
    let reference_total = h.counts.iter().sum::<u64>() + h.missing;
    let shift = psi(&h.counts, live);
    FeatureDrift {
        name: h.name.clone(),
        psi: shift,
        js: js_distance(&h.counts, live),
        band: grade(shift, present),
        missing_share: if sampled == 0 {
            0.0
        } else {
            missing as f64 / sampled as f64
        },
        reference_missing_share: (reference_total > 0)
            .then(|| h.missing as f64 / reference_total as f64),
        sampled,
    }
}

/// What in a drift report deserves an alert: `(rule, subject, detail)` for a prediction or an
/// input in the major band, or an input missing far more often than in the reference.
pub fn findings(report: &DriftReport, max_missing_rise: f64) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    if report.prediction.band == "major" {
        out.push((
            "prediction_shift".to_string(),
            "prediction".to_string(),
            format!(
                "prediction PSI {:.3} (JS {:.3}) against the reference over {} rows",
                report.prediction.psi_reference.unwrap_or_default(),
                report.prediction.js_reference.unwrap_or_default(),
                report.sampled_rows
            ),
        ));
    }
    for f in &report.features {
        if f.band == "major" {
            out.push((
                "feature_drift".to_string(),
                f.name.clone(),
                format!(
                    "{} PSI {:.3} (JS {:.3}) against the reference over {} values",
                    f.name,
                    f.psi.unwrap_or_default(),
                    f.js.unwrap_or_default(),
                    f.sampled
                ),
            ));
        }
        let baseline = f.reference_missing_share.unwrap_or(0.0);
        if f.sampled >= MIN_ROWS && f.missing_share - baseline > max_missing_rise {
            out.push((
                "missing_values".to_string(),
                f.name.clone(),
                format!(
                    "{} missing in {:.1} % of {} values vs {:.1} % in the reference",
                    f.name,
                    f.missing_share * 100.0,
                    f.sampled,
                    baseline * 100.0
                ),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: u64) -> impl FnMut() -> f32 {
        let mut x = seed;
        move || {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            (x >> 40) as f32 / (1u64 << 24) as f32
        }
    }

    fn reference() -> Arc<Reference> {
        let mut u = lcg(1);
        let rows: Vec<Vec<f32>> = (0..5000).map(|_| vec![u(), u() * 10.0]).collect();
        let outputs: Vec<f64> = rows.iter().map(|r| r[0] as f64 * 0.1).collect();
        let names = vec!["a".to_string(), "b".to_string()];
        Arc::new(Reference::of_rows(&names, &rows, &outputs))
    }

    fn feed(s: &DriftSketch, now: i64, seed: u64, shift_b: f32, missing_a: bool) {
        let mut u = lcg(seed);
        for _ in 0..400 {
            let a: Vec<f32> = (0..50)
                .map(|_| if missing_a { f32::NAN } else { u() })
                .collect();
            let b: Vec<f32> = (0..50).map(|_| u() * 10.0 + shift_b).collect();
            let out: Vec<f32> = (0..50).map(|_| u() * 0.1).collect();
            s.record(now, &[&a, &b], &out);
        }
    }

    #[test]
    fn same_distribution_is_stable_and_a_moved_feature_is_major() {
        let s = DriftSketch::new(reference(), 8);
        let now = 10 * MINUTE_MS;
        feed(&s, now, 7, 0.0, false);
        let r = s.report(now, 60);
        assert_eq!(r.sampled_rows, 400 * 8);
        assert_eq!(r.features[0].band, "stable", "{r:?}");
        assert_eq!(r.features[1].band, "stable", "{r:?}");
        assert_eq!(r.prediction.band, "stable", "{r:?}");
        assert!(findings(&r, 0.1).is_empty());

        // The next minute, b moves up by half its range and a goes missing.
        let later = now + MINUTE_MS;
        feed(&s, later, 8, 5.0, true);
        let r = s.report(later, 1);
        assert_eq!(r.features[1].band, "major", "{r:?}");
        assert!(r.features[1].js.unwrap() > 0.3);
        assert_eq!(r.features[0].missing_share, 1.0);
        let rules: Vec<String> = findings(&r, 0.1).into_iter().map(|f| f.0).collect();
        assert_eq!(rules, vec!["missing_values", "feature_drift"]);
        // The hour window still holds the clean minute.
        assert_eq!(s.report(later, 60).sampled_rows, 2 * 400 * 8);
    }

    #[test]
    fn old_minutes_leave_the_window_and_the_ring_reuses_buckets() {
        let s = DriftSketch::new(reference(), 4);
        feed(&s, 0, 1, 0.0, false);
        let hour_later = WINDOW_MINUTES as i64 * MINUTE_MS;
        assert_eq!(s.report(hour_later, 60).sampled_rows, 0);
        feed(&s, hour_later, 2, 0.0, false);
        assert_eq!(s.report(hour_later, 60).sampled_rows, 400 * 4);
        assert_eq!(s.report(hour_later, 60).prediction.band, "stable");
    }

    #[test]
    fn a_batch_whose_width_differs_from_the_reference_is_ignored() {
        let s = DriftSketch::new(reference(), 4);
        s.record(0, &[&[1.0]], &[0.5]);
        assert_eq!(s.report(0, 60).sampled_rows, 0);
    }
}
