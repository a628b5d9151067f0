//! Model monitoring: whether what the models predicted for the ads that played matches what
//! viewers then did.
//!
//! [`Calibration`] joins each placed ad's predictions (pCTR, pCompletion, …) with the outcome
//! events of that ad — its impression, then a click or a completion — by the ad's tracking key,
//! and keeps, per model version, task, segment and hour: impressions, Σ predicted, Σ observed,
//! log loss, and a reliability histogram. From those it reports the calibration ratio
//! (Σ predicted ÷ Σ observed, ideal 1.0), normalised entropy (log loss ÷ the entropy of the
//! observed rate: below 1 the model beats predicting the average), binned expected calibration
//! error, and alerts when a model's ratio leaves its band.

pub mod calibration;

pub use calibration::{
    Calibration, CalibrationAlert, CalibrationConfig, CalibrationRow, Prediction, ReliabilityBin,
};
