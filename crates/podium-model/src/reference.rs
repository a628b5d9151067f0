//! Reference histograms of a model's inputs and output, stored in the bundle as `reference.json`
//! when it is packaged, so that drift monitoring has a baseline from the model's own data.

use serde::{Deserialize, Serialize};

/// Number of quantile bins of a reference histogram.
pub const REFERENCE_BINS: usize = 10;

/// A histogram over quantile bins of reference data, plus the count of missing values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Histogram {
    /// Feature name, or `prediction` for the output.
    pub name: String,
    /// Bin edges, ascending; bin `i` holds values in `[edges[i], edges[i+1])`, the last bin is closed.
    pub edges: Vec<f64>,
    /// Values per bin.
    pub counts: Vec<u64>,
    /// Missing (NaN) values.
    pub missing: u64,
}

impl Histogram {
    /// A histogram of `values` over (at most) [`REFERENCE_BINS`] quantile bins; repeated
    /// quantiles collapse, so a binary feature gets one or two bins.
    pub fn of(name: &str, values: impl Iterator<Item = f64>) -> Self {
        let mut present = Vec::new();
        let mut missing = 0;
        for v in values {
            if v.is_nan() {
                missing += 1;
            } else {
                present.push(v);
            }
        }
        present.sort_by(f64::total_cmp);
        let mut edges: Vec<f64> = if present.is_empty() {
            Vec::new()
        } else {
            (0..=REFERENCE_BINS)
                .map(|q| present[(q * (present.len() - 1)) / REFERENCE_BINS])
                .collect()
        };
        edges.dedup();
        if edges.len() == 1 {
            edges.push(edges[0]);
        }
        let bins = edges.len().saturating_sub(1);
        let mut counts = vec![0u64; bins];
        for v in &present {
            let i = edges
                .partition_point(|e| e <= v)
                .saturating_sub(1)
                .min(bins - 1);
            counts[i] += 1;
        }
        Self {
            name: name.to_string(),
            edges,
            counts,
            missing,
        }
    }
}

/// The reference distributions of a bundle.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reference {
    /// Rows the histograms were computed from.
    pub rows: usize,
    /// One histogram per input, in manifest order.
    pub inputs: Vec<Histogram>,
    /// The model's output over the same rows.
    pub output: Histogram,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_every_value_once() {
        let h = Histogram::of("x", (0..1000).map(|i| i as f64).chain([f64::NAN]));
        assert_eq!(h.counts.iter().sum::<u64>(), 1000);
        assert_eq!(h.missing, 1);
        assert_eq!(h.counts.len(), REFERENCE_BINS);
        let flag = Histogram::of("flag", [0.0, 1.0, 1.0, 0.0].into_iter());
        assert_eq!(flag.counts.iter().sum::<u64>(), 4);
        let constant = Histogram::of("c", [3.0, 3.0].into_iter());
        assert_eq!(constant.counts, vec![2]);
    }
}
