//! Reference histograms of a model's inputs and output, stored in the bundle as `reference.json`
//! when it is packaged, so that drift monitoring has a baseline from the model's own data.

use crate::error::ModelError;
use serde::{Deserialize, Serialize};
use std::path::Path;

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
    /// A histogram of `values` over (at most) [`REFERENCE_BINS`] quantile bins (repeated
    /// quantiles collapse); a feature with at most that many distinct values gets one bin per
    /// value, so that a flag's share is followed.
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
        // Edges from the finite values (JSON has no infinities); an infinite value counts in
        // the end bin on its side.
        let finite: Vec<f64> = present.iter().copied().filter(|v| v.is_finite()).collect();
        let mut distinct = finite.clone();
        distinct.dedup();
        let edges: Vec<f64> = if finite.is_empty() {
            Vec::new()
        } else if distinct.len() <= REFERENCE_BINS {
            // A discrete feature (a flag, a category code): one bin per value, the last closed.
            let last = distinct[distinct.len() - 1];
            distinct.push(last);
            distinct
        } else {
            let mut edges: Vec<f64> = (0..=REFERENCE_BINS)
                .map(|q| finite[(q * (finite.len() - 1)) / REFERENCE_BINS])
                .collect();
            edges.dedup();
            if edges.len() == 1 {
                edges.push(edges[0]);
            }
            edges
        };
        let bins = edges.len().saturating_sub(1);
        let mut h = Self {
            name: name.to_string(),
            edges,
            counts: vec![0u64; bins],
            missing,
        };
        for &v in &present {
            if let Some(i) = h.bin(v) {
                h.counts[i] += 1;
            }
        }
        h
    }

    /// The bin a value falls in: values below the first edge count in the first bin, above
    /// the last in the last, as when the histogram was built. `None` for a missing value or a
    /// histogram without bins.
    pub fn bin(&self, v: f64) -> Option<usize> {
        let bins = self.counts.len();
        if v.is_nan() || bins == 0 {
            return None;
        }
        Some(
            self.edges
                .partition_point(|e| *e <= v)
                .saturating_sub(1)
                .min(bins - 1),
        )
    }

    fn check(&self, what: &str) -> Result<(), String> {
        let ascending = self.edges.windows(2).all(|w| w[0] <= w[1]);
        if self.edges.iter().any(|e| !e.is_finite()) || !ascending {
            return Err(format!("{what}: edges must be finite and ascending"));
        }
        if !self.counts.is_empty() && self.edges.len() != self.counts.len() + 1 {
            return Err(format!(
                "{what}: {} edges for {} counts (want one more edge than counts)",
                self.edges.len(),
                self.counts.len()
            ));
        }
        Ok(())
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

impl Reference {
    /// Histograms of reference rows (inputs in `names` order) and of the model's output on them.
    pub fn of_rows(names: &[String], rows: &[Vec<f32>], outputs: &[f64]) -> Self {
        Self {
            rows: rows.len(),
            inputs: names
                .iter()
                .enumerate()
                .map(|(i, n)| Histogram::of(n, rows.iter().map(|r| r[i] as f64)))
                .collect(),
            output: Histogram::of("prediction", outputs.iter().copied()),
        }
    }

    /// Reads a bundle's `reference.json`, checking that it covers the model's inputs in order
    /// and that every histogram is well formed; errors name the file and the problem.
    pub fn read(path: &Path, inputs: &[String]) -> Result<Self, ModelError> {
        let parse = |message: String| ModelError::Parse {
            path: path.to_path_buf(),
            message,
        };
        let text = std::fs::read(path).map_err(|e| ModelError::io(path, e))?;
        let reference: Reference =
            serde_json::from_slice(&text).map_err(|e| parse(e.to_string()))?;
        let names: Vec<&str> = reference.inputs.iter().map(|h| h.name.as_str()).collect();
        if names != inputs.iter().map(String::as_str).collect::<Vec<_>>() {
            return Err(parse(format!(
                "histograms for {names:?} but the model's inputs are {inputs:?}"
            )));
        }
        for h in reference.inputs.iter().chain([&reference.output]) {
            h.check(&h.name).map_err(parse)?;
        }
        Ok(reference)
    }
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
        let flag = Histogram::of("flag", [0.0, 1.0, 1.0, 1.0].into_iter());
        assert_eq!(flag.counts, vec![1, 3]);
        assert_eq!((flag.bin(0.0), flag.bin(1.0)), (Some(0), Some(1)));
        let codes = Histogram::of("code", [2.0, 0.0, 1.0, 2.0].into_iter());
        assert_eq!(codes.counts, vec![1, 1, 2]);
        // Infinities count in the end bins; the edges stay finite (JSON has no infinity).
        let wide = Histogram::of(
            "w",
            (0..100)
                .map(|i| i as f64)
                .chain([f64::NEG_INFINITY, f64::INFINITY]),
        );
        assert!(wide.edges.iter().all(|e| e.is_finite()));
        assert_eq!(wide.counts.iter().sum::<u64>(), 102);
        let json = serde_json::to_string(&wide).unwrap();
        assert_eq!(serde_json::from_str::<Histogram>(&json).unwrap(), wide);
        let constant = Histogram::of("c", [3.0, 3.0].into_iter());
        assert_eq!(constant.counts, vec![2]);
    }

    #[test]
    fn bins_a_value_as_the_histogram_was_built() {
        let values: Vec<f64> = (0..100).map(|i| (i * i) as f64).collect();
        let h = Histogram::of("x", values.iter().copied());
        let mut recount = vec![0u64; h.counts.len()];
        for &v in &values {
            recount[h.bin(v).unwrap()] += 1;
        }
        assert_eq!(recount, h.counts);
        assert_eq!(h.bin(-5.0), Some(0));
        assert_eq!(h.bin(1e9), Some(h.counts.len() - 1));
        assert_eq!(h.bin(f64::NAN), None);
    }

    #[test]
    fn reading_names_the_file_and_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reference.json");
        let names = vec!["a".to_string()];
        let good = Reference::of_rows(&names, &[vec![1.0], vec![2.0]], &[0.1, 0.2]);
        std::fs::write(&path, serde_json::to_vec(&good).unwrap()).unwrap();
        assert_eq!(Reference::read(&path, &names).unwrap(), good);
        let err = Reference::read(&path, &["b".to_string()])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("reference.json") && err.contains("inputs"),
            "{err}"
        );
        std::fs::write(&path, b"{\"rows\": 1").unwrap();
        let err = Reference::read(&path, &names).unwrap_err().to_string();
        assert!(err.contains("reference.json"), "{err}");
        let mut bad = good.clone();
        bad.inputs[0].edges = vec![2.0, 1.0];
        std::fs::write(&path, serde_json::to_vec(&bad).unwrap()).unwrap();
        let err = Reference::read(&path, &names).unwrap_err().to_string();
        assert!(err.contains("ascending"), "{err}");
    }
}
