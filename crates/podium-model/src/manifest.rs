//! `model.toml`: what a bundle holds and how to serve it.

use crate::error::ModelError;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The model file format of a bundle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// LightGBM text model (`Booster.save_model`).
    Lightgbm,
    /// XGBoost JSON model (`save_model("x.json")`).
    Xgboost,
    /// ONNX graph, including ONNX-ML operators.
    Onnx,
    /// Linear or logistic model with named weights (Podium's JSON format).
    Linear,
}

/// Function from the runtime's raw output to the served prediction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Link {
    /// The raw output is the prediction.
    #[default]
    Identity,
    /// The raw output is a log-odds margin: prediction = 1 / (1 + e^-raw).
    Logistic,
}

impl Link {
    /// Applies the link to one raw value.
    #[inline]
    pub fn apply(self, raw: f32) -> f32 {
        match self {
            Link::Identity => raw,
            Link::Logistic => 1.0 / (1.0 + (-raw).exp()),
        }
    }
}

/// One model input, in the order the model reads them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InputSpec {
    /// Feature name, as the feature store and request frame name it.
    pub name: String,
    /// Value type; every input is read as f32 (`f32` or `bool`, kept for documentation).
    #[serde(default = "default_type", rename = "type")]
    pub kind: String,
    /// Value used when the feature is missing; absent means the model sees a missing value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<f64>,
}

fn default_type() -> String {
    "f32".to_string()
}

/// How the model's output is read.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OutputSpec {
    /// Link from raw output to prediction.
    #[serde(default)]
    pub link: Link,
    /// ONNX only: the graph output to read, by name. Unset means the first output that holds
    /// scores (classifier exporters put an integer label output first; it is skipped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tensor: Option<String>,
    /// ONNX only: the index into the output's last dimension, e.g. 1 for the positive class of a
    /// `[N, 2]` probability output. Unset means 1 for two columns and 0 for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
}

/// Serving parameters of a model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServingSpec {
    /// Time the model may take for one request's batch, in microseconds.
    #[serde(default = "default_latency_budget_us")]
    pub latency_budget_us: u64,
    /// Constant prediction served when the model fails, overruns or returns NaN.
    pub fallback_prior: f64,
}

fn default_latency_budget_us() -> u64 {
    5_000
}

/// The parsed `model.toml`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Model name, unique in a registry (`ctr`, `completion`, …).
    pub name: String,
    /// Version string; never reused for different weights.
    pub version: String,
    /// Weights format.
    pub kind: ModelKind,
    /// What the model predicts (`ctr`, `completion`, `rank`, …).
    pub task: String,
    /// Path of the weights file inside the bundle.
    pub weights: String,
    /// Inputs in the order the model reads them.
    pub inputs: Vec<InputSpec>,
    /// Output reading.
    #[serde(default)]
    pub output: OutputSpec,
    /// Serving parameters.
    pub serving: ServingSpec,
    /// Calibration applied after the link, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<crate::calibration::Calibration>,
}

impl Manifest {
    /// Reads and checks `model.toml`.
    pub fn read(path: &Path) -> Result<Self, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        let m: Manifest = toml::from_str(&text).map_err(|e| ModelError::parse(path, e))?;
        m.check().map_err(|msg| ModelError::parse(path, msg))?;
        Ok(m)
    }

    fn check(&self) -> Result<(), String> {
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(format!(
                "name {:?} must be non-empty ASCII letters, digits, '-', '_' or '.'",
                self.name
            ));
        }
        if self.version.is_empty() {
            return Err("version must not be empty".into());
        }
        if self.inputs.is_empty() {
            return Err("inputs must list at least one feature".into());
        }
        let mut seen = std::collections::HashSet::new();
        for i in &self.inputs {
            if !seen.insert(i.name.as_str()) {
                return Err(format!("input {:?} is listed twice", i.name));
            }
        }
        if !self.serving.fallback_prior.is_finite() {
            return Err("serving.fallback_prior must be a finite number".into());
        }
        if let Some(c) = &self.calibration {
            c.check()?;
        }
        if self.weights.contains("..") || Path::new(&self.weights).is_absolute() {
            return Err(format!(
                "weights path {:?} must stay inside the bundle",
                self.weights
            ));
        }
        Ok(())
    }

    /// Writes the manifest as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("manifest serialises")
    }
}
