//! Calibration declared in a bundle: a monotone map applied after the link, so that served
//! probabilities match observed rates (Platt scaling or isotonic regression).

use serde::{Deserialize, Serialize};

/// A calibration map from the model's prediction to a calibrated probability.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Calibration {
    /// Platt scaling: `p = 1 / (1 + exp(a·s + b))` of the prediction `s` (scikit-learn's
    /// `CalibratedClassifierCV(method="sigmoid")` convention, where `a` is usually negative).
    Platt {
        /// Slope.
        a: f64,
        /// Offset.
        b: f64,
    },
    /// Isotonic regression: piecewise-linear interpolation through the points `(x[i], y[i])`,
    /// constant beyond the ends (`numpy.interp`, as scikit-learn's `IsotonicRegression` predicts
    /// with `out_of_bounds="clip"`).
    Isotonic {
        /// Thresholds, ascending.
        x: Vec<f64>,
        /// Calibrated values at the thresholds, non-decreasing.
        y: Vec<f64>,
    },
}

impl Calibration {
    /// Checks the parameters; the message names what is wrong.
    pub fn check(&self) -> Result<(), String> {
        match self {
            Calibration::Platt { a, b } => {
                if !a.is_finite() || !b.is_finite() {
                    return Err("calibration: platt a and b must be finite".into());
                }
            }
            Calibration::Isotonic { x, y } => {
                if x.is_empty() || x.len() != y.len() {
                    return Err(format!(
                        "calibration: isotonic x and y must be non-empty and of one length (x has {}, y has {})",
                        x.len(),
                        y.len()
                    ));
                }
                if x.iter().chain(y).any(|v| !v.is_finite()) {
                    return Err("calibration: isotonic points must be finite".into());
                }
                if x.windows(2).any(|w| w[1] < w[0]) {
                    return Err("calibration: isotonic x must be ascending".into());
                }
                if y.windows(2).any(|w| w[1] < w[0]) {
                    return Err("calibration: isotonic y must be non-decreasing".into());
                }
            }
        }
        Ok(())
    }

    /// Calibrates one prediction; NaN stays NaN so that serving's fallback sees it.
    pub fn apply(&self, s: f32) -> f32 {
        if s.is_nan() {
            return s;
        }
        let s = s as f64;
        let p = match self {
            Calibration::Platt { a, b } => 1.0 / (1.0 + (a * s + b).exp()),
            Calibration::Isotonic { x, y } => interpolate(x, y, s),
        };
        p as f32
    }
}

fn interpolate(x: &[f64], y: &[f64], s: f64) -> f64 {
    let last = x.len() - 1;
    if s <= x[0] {
        return y[0];
    }
    if s >= x[last] {
        return y[last];
    }
    // First threshold strictly above s; s lies in [x[i-1], x[i]).
    let i = x.partition_point(|&t| t <= s);
    let (x0, x1, y0, y1) = (x[i - 1], x[i], y[i - 1], y[i]);
    if x1 == x0 {
        return y1;
    }
    y0 + (s - x0) * (y1 - y0) / (x1 - x0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platt_follows_the_sklearn_sign_convention() {
        let c = Calibration::Platt { a: -2.0, b: 1.0 };
        let expected = 1.0 / (1.0 + (-2.0f64 * 0.5 + 1.0).exp());
        assert!((c.apply(0.5) as f64 - expected).abs() < 1e-7);
        assert!(c.apply(0.9) > c.apply(0.1));
    }

    #[test]
    fn isotonic_interpolates_and_clips() {
        let c = Calibration::Isotonic {
            x: vec![0.1, 0.3, 0.3, 0.8],
            y: vec![0.0, 0.2, 0.4, 0.9],
        };
        c.check().unwrap();
        assert_eq!(c.apply(0.0), 0.0);
        assert_eq!(c.apply(1.0), 0.9);
        assert!((c.apply(0.2) - 0.1).abs() < 1e-6);
        assert!((c.apply(0.55) - 0.65).abs() < 1e-6);
        assert!(c.apply(f32::NAN).is_nan());
    }

    #[test]
    fn refuses_broken_parameters() {
        assert!(Calibration::Isotonic {
            x: vec![0.3, 0.1],
            y: vec![0.0, 0.1]
        }
        .check()
        .is_err());
        assert!(Calibration::Isotonic {
            x: vec![0.1],
            y: vec![]
        }
        .check()
        .is_err());
        assert!(Calibration::Platt {
            a: f64::NAN,
            b: 0.0
        }
        .check()
        .is_err());
    }
}
