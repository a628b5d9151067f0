//! `models.toml`: which bundles serve at which stage, with their fallback tiers.
//!
//! ```toml
//! top_k = 100                     # candidates the early ranker passes to full scoring
//!
//! [ranker]
//! model = "early_ranker"          # bundle directory name under the bundles directory
//!
//! [[scorer]]
//! model = "ctr"
//! fallbacks = ["ctr_light"]       # tried in order when the model fails or runs late
//!
//! [[scorer]]
//! model = "completion"
//! inject_delay_ms = 50            # fault injection for drills: the model stalls this long
//!
//! serve_only = ["gbdt300"]        # bundles served over the Open Inference Protocol only
//!
//! [micro_batching]                # batch small OIP calls of these models across requests
//! gbdt300 = { max_rows = 64, max_wait_us = 0 }
//!
//! [[scorer]]                      # a model on another server (Triton, MLServer, KServe, Podium)
//! remote = { url = "http://10.0.0.5:8080", model = "brand_safety", task = "brand_safety",
//!            inputs = ["user_ctr_7d", "li_ctr_7d"], fallback_prior = 0.9 }
//! fallbacks = ["brand_safety_cpu"]
//! ```
//!
//! A slot's tiers are: `remote` (when given), then `model` (when given), then `fallbacks` in
//! order, then the first tier's constant prior.

use crate::bound::{BindError, BoundModel};
use crate::remote::{RemoteConfig, RemoteError, RemoteModel};
use crate::set::ModelSet;
use crate::slot::{ModelSlot, Tier};
use podium_core::FrameSchema;
use podium_model::{load_bundle, ModelError};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// One stage's model and its fallbacks, as configured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotConfig {
    /// A model served by another server over the Open Inference Protocol, tried first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<RemoteConfig>,
    /// Primary local model: the name of a bundle directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Lighter models tried in order when the primary fails or runs late.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallbacks: Vec<String>,
    /// Fault injection: the primary stalls this many milliseconds per batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inject_delay_ms: Option<u64>,
}

impl SlotConfig {
    /// A slot of one model with no fallbacks.
    pub fn of(model: &str) -> Self {
        Self {
            remote: None,
            model: Some(model.to_string()),
            fallbacks: Vec::new(),
            inject_delay_ms: None,
        }
    }
}

/// The parsed `models.toml`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSetConfig {
    /// Candidates passed from the early ranker to full scoring.
    pub top_k: usize,
    /// The early ranker.
    pub ranker: SlotConfig,
    /// The full-scoring models.
    #[serde(rename = "scorer", default)]
    pub scorers: Vec<SlotConfig>,
    /// Bundles served only over the Open Inference Protocol, not used by decisions (their
    /// features need not be in the serving schema).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub serve_only: Vec<String>,
    /// Cross-request micro-batching of Open Inference Protocol calls, per model name; off for
    /// models not listed.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub micro_batching: std::collections::BTreeMap<String, crate::batcher::BatchConfig>,
}

/// Why a model set could not be loaded; names the file or model.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read or parsed.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },
    /// A bundle failed to load.
    #[error("model {model:?}: {source}")]
    Model {
        /// The model name.
        model: String,
        /// Cause.
        source: ModelError,
    },
    /// A model reads a feature the serving schema lacks.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// A remote model is misconfigured.
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// A slot names no model.
    #[error("{0}")]
    Slot(String),
}

impl ModelSetConfig {
    /// Reads and checks a `models.toml`.
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let err = |message: String| ConfigError::File {
            path: path.to_path_buf(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let config: Self = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
        if config.top_k == 0 {
            return Err(err("top_k must be at least 1".into()));
        }
        Ok(config)
    }

    /// Writes the config as TOML.
    pub fn write(&self, path: &Path) -> Result<(), ConfigError> {
        let text = toml::to_string_pretty(self).expect("config serialises");
        std::fs::write(path, text).map_err(|e| ConfigError::File {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    /// Loads every bundle the config names from `bundles/<name>` and binds it to `schema`.
    pub fn load(&self, bundles: &Path, schema: &FrameSchema) -> Result<ModelSet, ConfigError> {
        let bind = |name: &str| -> Result<BoundModel, ConfigError> {
            let model = load_bundle(&bundles.join(name)).map_err(|source| ConfigError::Model {
                model: name.to_string(),
                source,
            })?;
            Ok(BoundModel::bind(model, schema)?)
        };
        let slot = |c: &SlotConfig| -> Result<ModelSlot, ConfigError> {
            let mut tiers = Vec::new();
            if let Some(r) = &c.remote {
                tiers.push(Tier::Remote(Arc::new(RemoteModel::bind(
                    r.clone(),
                    schema,
                )?)));
            }
            for name in c.model.iter().chain(&c.fallbacks) {
                tiers.push(Tier::Local(Arc::new(bind(name)?)));
            }
            if tiers.is_empty() {
                return Err(ConfigError::Slot(
                    "a slot must name a `model` or a `remote`".into(),
                ));
            }
            Ok(ModelSlot::of_tiers(tiers)
                .with_injected_delay(c.inject_delay_ms.map(Duration::from_millis)))
        };
        Ok(ModelSet {
            ranker: slot(&self.ranker)?,
            scorers: self.scorers.iter().map(slot).collect::<Result<_, _>>()?,
            top_k: self.top_k,
            micro_batching: self.micro_batching.clone(),
            stats: Arc::default(),
            serve_only: self
                .serve_only
                .iter()
                .map(|name| {
                    load_bundle(&bundles.join(name)).map_err(|source| ConfigError::Model {
                        model: name.clone(),
                        source,
                    })
                })
                .collect::<Result<_, _>>()?,
        })
    }
}
