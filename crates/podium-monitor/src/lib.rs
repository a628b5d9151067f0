//! Model monitoring: whether what the models predicted for the ads that played matches what
//! viewers then did, whether their inputs and predictions still look like the data they were
//! built on, and whether a canary is worse than production.
//!
//! [`Calibration`] joins each placed ad's predictions (pCTR, pCompletion, …) with the outcome
//! events of that ad — its impression, then a click or a completion — by the ad's tracking key,
//! and keeps, per model version, task, segment and hour: impressions, Σ predicted, Σ observed,
//! log loss, and a reliability histogram. From those it reports the calibration ratio
//! (Σ predicted ÷ Σ observed, ideal 1.0), normalised entropy (log loss ÷ the entropy of the
//! observed rate: below 1 the model beats predicting the average), binned expected calibration
//! error, and alerts when a model's ratio leaves its band.
//!
//! [`drift::DriftSketch`] counts sampled inputs and predictions of each version into its bundle's
//! reference bins and reports PSI, Jensen–Shannon distance and missing shares per window;
//! [`regression`] holds the canary-vs-production tests and the rule list the lifecycle
//! guardrails act on; [`stat`] the statistics behind both.

pub mod alerts;
pub mod calibration;
pub mod drift;
pub mod regression;
pub mod stat;

pub use alerts::{Alert, AlertLog};
pub use calibration::{
    Calibration, CalibrationAlert, CalibrationConfig, CalibrationRow, Prediction, ReliabilityBin,
};
pub use drift::{DriftReport, DriftSketch};
pub use regression::{Rules, Side, TestResult};
