//! Linear and logistic models with named weights, and a small exact fitter for them.
//!
//! Weights file (`weights/linear.json`): `{"intercept": b, "weights": {"feature": w, …}}`, and/or
//! a hashed table `"hashed": {"buckets": N, "seed": s, "table": [w0, …]}` where an input named `n`
//! gets `table[murmur3_32(n, s) % N]` (the hashing trick, as Vowpal Wabbit stores weights) unless
//! `weights` names it explicitly. The raw output is `b + Σ w·x`; a missing input (NaN) contributes
//! nothing, the usual convention for sparse linear models. The manifest's link (logistic for CTR)
//! turns it into a probability.

use crate::error::ModelError;
use crate::{Columns, Runtime};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// The on-disk weights of a linear model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LinearWeights {
    /// The bias term.
    pub intercept: f64,
    /// One weight per named feature.
    #[serde(default)]
    pub weights: BTreeMap<String, f64>,
    /// Weights stored by hashed feature name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hashed: Option<HashedWeights>,
}

/// A weight table indexed by the MurmurHash3 (x86, 32-bit) of the feature name.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HashedWeights {
    /// Table size; the hash is reduced modulo this.
    pub buckets: u32,
    /// Hash seed.
    #[serde(default)]
    pub seed: u32,
    /// The weights, `buckets` of them.
    pub table: Vec<f64>,
}

impl HashedWeights {
    /// The bucket of a feature name.
    pub fn bucket(&self, name: &str) -> usize {
        let h = murmur3::murmur3_32(&mut std::io::Cursor::new(name.as_bytes()), self.seed)
            .expect("hashing an in-memory buffer cannot fail");
        (h % self.buckets) as usize
    }
}

impl LinearWeights {
    /// Reads a weights file.
    pub fn read(path: &Path) -> Result<Self, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        serde_json::from_str(&text).map_err(|e| ModelError::parse(path, e))
    }

    /// Weights aligned to `inputs`; a feature the model has but `inputs` lacks is an error, a
    /// listed input without a weight gets weight zero.
    pub fn into_runtime(self, inputs: &[String]) -> Result<LinearRuntime, ModelError> {
        if let Some(h) = &self.hashed {
            if h.buckets == 0 || h.table.len() != h.buckets as usize {
                return Err(ModelError::Schema(format!(
                    "hashed weights: table holds {} weights for {} buckets",
                    h.table.len(),
                    h.buckets
                )));
            }
        }
        for name in self.weights.keys() {
            if !inputs.contains(name) {
                return Err(ModelError::Schema(format!(
                    "weight for feature {name:?} which model.toml does not list as an input"
                )));
            }
        }
        let weights = inputs
            .iter()
            .map(|n| match (self.weights.get(n), &self.hashed) {
                (Some(&w), _) => w as f32,
                (None, Some(h)) => h.table[h.bucket(n)] as f32,
                (None, None) => 0.0,
            })
            .collect();
        Ok(LinearRuntime {
            intercept: self.intercept as f32,
            weights,
        })
    }
}

/// A linear model bound to its input order.
#[derive(Clone, Debug, PartialEq)]
pub struct LinearRuntime {
    intercept: f32,
    weights: Vec<f32>,
}

impl LinearRuntime {
    /// A runtime from an intercept and one weight per input.
    pub fn new(intercept: f32, weights: Vec<f32>) -> Self {
        Self { intercept, weights }
    }
}

impl Runtime for LinearRuntime {
    fn num_inputs(&self) -> usize {
        self.weights.len()
    }

    fn describe(&self) -> String {
        let nonzero = self.weights.iter().filter(|w| **w != 0.0).count();
        format!("{nonzero} non-zero weights, intercept {}", self.intercept)
    }

    fn predict_raw(&self, input: &Columns<'_>, out: &mut [f32]) -> Result<(), ModelError> {
        out.fill(self.intercept);
        // Column at a time: each pass is a contiguous multiply-add the compiler vectorises.
        for (i, &w) in self.weights.iter().enumerate() {
            if w == 0.0 {
                continue;
            }
            for (o, &x) in out.iter_mut().zip(input.column(i)) {
                if !x.is_nan() {
                    *o += w * x;
                }
            }
        }
        Ok(())
    }
}

/// Fits a logistic regression by iteratively reweighted least squares with an L2 penalty.
///
/// `x` is row-major (`rows × d`), `y` holds 0/1 labels. Returns the intercept and `d` weights.
/// Meant for demo and early-ranker models of a few dozen features, where the exact Newton step is
/// cheap and converges in a handful of iterations.
pub fn fit_logistic(x: &[f64], y: &[f64], d: usize, l2: f64, iterations: usize) -> (f64, Vec<f64>) {
    let n = y.len();
    assert_eq!(x.len(), n * d, "x must be rows × d");
    let p = d + 1; // parameter 0 is the intercept
    let mut beta = vec![0.0; p];
    let row = |i: usize, j: usize| if j == 0 { 1.0 } else { x[i * d + j - 1] };
    for _ in 0..iterations {
        let mut grad = vec![0.0; p];
        let mut hess = vec![0.0; p * p];
        for (i, &yi) in y.iter().enumerate() {
            let z: f64 = beta.iter().enumerate().map(|(j, b)| b * row(i, j)).sum();
            let mu = 1.0 / (1.0 + (-z).exp());
            let w = (mu * (1.0 - mu)).max(1e-9);
            for a in 0..p {
                let xa = row(i, a);
                grad[a] += (yi - mu) * xa;
                for b in a..p {
                    hess[a * p + b] += w * xa * row(i, b);
                }
            }
        }
        for a in 0..p {
            for b in 0..a {
                hess[a * p + b] = hess[b * p + a];
            }
            if a > 0 {
                grad[a] -= l2 * beta[a];
                hess[a * p + a] += l2;
            }
        }
        let step = solve(&mut hess, &mut grad, p);
        let mut moved = 0.0f64;
        for (b, s) in beta.iter_mut().zip(&step) {
            *b += s;
            moved = moved.max(s.abs());
        }
        if moved < 1e-8 {
            break;
        }
    }
    (beta[0], beta[1..].to_vec())
}

/// Solves `a · s = b` by Gaussian elimination with partial pivoting (a is small and dense).
fn solve(a: &mut [f64], b: &mut [f64], n: usize) -> Vec<f64> {
    for col in 0..n {
        let pivot = (col..n)
            .max_by(|&i, &j| a[i * n + col].abs().total_cmp(&a[j * n + col].abs()))
            .unwrap_or(col);
        if pivot != col {
            for k in 0..n {
                a.swap(col * n + k, pivot * n + k);
            }
            b.swap(col, pivot);
        }
        let diag = a[col * n + col];
        if diag.abs() < 1e-12 {
            continue;
        }
        for r in col + 1..n {
            let f = a[r * n + col] / diag;
            if f == 0.0 {
                continue;
            }
            for k in col..n {
                a[r * n + k] -= f * a[col * n + k];
            }
            b[r] -= f * b[col];
        }
    }
    let mut s = vec![0.0; n];
    for r in (0..n).rev() {
        let diag = a[r * n + r];
        if diag.abs() < 1e-12 {
            continue;
        }
        let tail: f64 = (r + 1..n).map(|k| a[r * n + k] * s[k]).sum();
        s[r] = (b[r] - tail) / diag;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_inputs_contribute_nothing() {
        let rt = LinearRuntime::new(0.5, vec![2.0, -1.0]);
        let a = [1.0, f32::NAN];
        let b = [3.0, 3.0];
        let cols = [&a[..], &b[..]];
        let mut out = [0.0; 2];
        rt.predict_raw(&Columns::new(&cols, 2).unwrap(), &mut out)
            .unwrap();
        assert_eq!(out, [0.5 + 2.0 - 3.0, 0.5 - 3.0]);
    }

    #[test]
    fn fit_recovers_known_coefficients() {
        // Labels drawn deterministically from a known logistic model.
        let (b0, w) = (-1.0, [2.0, -0.5]);
        let mut x = Vec::new();
        let mut y = Vec::new();
        let mut state = 42u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        for _ in 0..20_000 {
            let (x1, x2) = (next() * 2.0 - 1.0, next() * 4.0 - 2.0);
            let p = 1.0 / (1.0 + (-(b0 + w[0] * x1 + w[1] * x2)).exp());
            x.extend([x1, x2]);
            y.push(if next() < p { 1.0 } else { 0.0 });
        }
        let (ib, iw) = fit_logistic(&x, &y, 2, 1e-3, 25);
        assert!((ib - b0).abs() < 0.1, "intercept {ib}");
        assert!((iw[0] - w[0]).abs() < 0.15, "w0 {}", iw[0]);
        assert!((iw[1] - w[1]).abs() < 0.1, "w1 {}", iw[1]);
    }

    #[test]
    fn murmur3_matches_the_reference_vectors() {
        let h = |s: &str, seed| {
            HashedWeights {
                buckets: u32::MAX,
                seed,
                table: vec![],
            }
            .bucket(s) as u32
        };
        // Reference values of MurmurHash3_x86_32 (SMHasher).
        assert_eq!(h("", 0), 0);
        assert_eq!(h("", 1), 0x514E_28B7);
        assert_eq!(h("hello", 0), 0x248B_FA47);
        assert_eq!(
            h("The quick brown fox jumps over the lazy dog", 0),
            0x2E4F_F723
        );
    }

    #[test]
    fn hashed_weights_fill_inputs_not_named_explicitly() {
        let table: Vec<f64> = (0..16).map(|i| i as f64).collect();
        let hashed = HashedWeights {
            buckets: 16,
            seed: 7,
            table,
        };
        let a_bucket = hashed.bucket("a") as f32;
        let w = LinearWeights {
            intercept: 0.0,
            weights: [("b".to_string(), 100.0)].into_iter().collect(),
            hashed: Some(hashed),
        };
        let rt = w.into_runtime(&["a".to_string(), "b".to_string()]).unwrap();
        assert_eq!(rt.weights, vec![a_bucket, 100.0]);
    }

    #[test]
    fn a_hashed_table_of_the_wrong_size_is_refused() {
        let w = LinearWeights {
            intercept: 0.0,
            weights: BTreeMap::new(),
            hashed: Some(HashedWeights {
                buckets: 8,
                seed: 0,
                table: vec![0.0; 4],
            }),
        };
        assert!(w
            .into_runtime(&["a".to_string()])
            .unwrap_err()
            .to_string()
            .contains("8 buckets"));
    }

    #[test]
    fn unknown_weight_names_are_refused() {
        let w = LinearWeights {
            intercept: 0.0,
            weights: [("nope".to_string(), 1.0)].into_iter().collect(),
            hashed: None,
        };
        let err = w.into_runtime(&["a".to_string()]).unwrap_err();
        assert!(err.to_string().contains("nope"));
    }
}
