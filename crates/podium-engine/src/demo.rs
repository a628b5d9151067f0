//! Assembling an engine on the embedded defaults: the demo marketplace and audience from the
//! simulator, demo models trained at first start and cached as bundles under the data directory.

use crate::features::{prepare, FeatureSetup};
use crate::pipeline::{Engine, EngineConfig, MarketSnapshot};
use podium_auction::{Marketplace, MarketplaceError};
use podium_features::Definitions;
use podium_log::DecisionSink;
use podium_model::ModelError;
use podium_pacing::MemorySpendStore;
use podium_serving::{ComputePool, ConfigError, ModelSetConfig, SlotConfig};
use podium_sim::demo::{self, DemoConfig};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why the demo engine could not be built.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The data directory could not be created.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The marketplace file is unusable.
    #[error(transparent)]
    Marketplace(#[from] MarketplaceError),
    /// A model bundle is unusable.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The model set could not be loaded.
    #[error(transparent)]
    ModelSet(#[from] ConfigError),
    /// The feature space is inconsistent.
    #[error("feature space: {0}")]
    Features(String),
}

/// Full-scoring candidates per request of the demo set.
const DEMO_TOP_K: usize = 100;

/// Builds the demo engine over `data_dir`: reads `marketplace.json` there (writing the generated
/// one first if absent, so operators can edit it), loads or trains the models under `models/`,
/// and fills the embedded feature store with the generated audience.
pub fn build_demo(
    data_dir: &Path,
    cfg: &DemoConfig,
    config: EngineConfig,
    sink: Arc<dyn DecisionSink>,
    pool: ComputePool,
) -> Result<Engine, DemoError> {
    build_demo_with(data_dir, cfg, config, sink, pool, &FeatureSetup::default()).map(|b| b.0)
}

/// As [`build_demo`], with the features set up as `features` says; also returns the feature
/// definitions (for the stream aggregator).
pub fn build_demo_with(
    data_dir: &Path,
    cfg: &DemoConfig,
    config: EngineConfig,
    sink: Arc<dyn DecisionSink>,
    pool: ComputePool,
    features: &FeatureSetup,
) -> Result<(Engine, Arc<Definitions>), DemoError> {
    let mk = |p: &Path| {
        std::fs::create_dir_all(p).map_err(|e| DemoError::DataDir {
            path: p.to_path_buf(),
            source: e,
        })
    };
    mk(data_dir)?;
    let market_path = data_dir.join("marketplace.json");
    if !market_path.exists() {
        demo::marketplace(cfg).write(&market_path)?;
    }
    let marketplace = Marketplace::read(&market_path)?;

    let world_space = demo::feature_space();
    let prepared = prepare(
        data_dir,
        features,
        &world_space,
        || podium_sim::default_definitions(&world_space),
        demo::audience(cfg)
            .into_iter()
            .map(|(k, v)| (k, v.to_vec())),
        cfg.users,
    )
    .map_err(DemoError::Features)?;
    let space = prepared.hydrator.space().clone();
    let models_dir = data_dir.join("models");
    mk(&models_dir)?;
    demo::ensure_models(cfg, &marketplace, &models_dir)?;
    // The model set is a file beside the bundles, so an operator can add fallbacks or drills.
    let set_path = data_dir.join("models.toml");
    if !set_path.exists() {
        let names = demo::model_names();
        ModelSetConfig {
            top_k: DEMO_TOP_K,
            ranker: SlotConfig::of(names[0]),
            scorers: names[1..].iter().map(|n| SlotConfig::of(n)).collect(),
            serve_only: Vec::new(),
            micro_batching: Default::default(),
        }
        .write(&set_path)?;
    }
    let models = ModelSetConfig::read(&set_path)?.load(&models_dir, space.schema())?;

    let market = MarketSnapshot::new(marketplace, demo::candidate_features);
    let engine = Engine::new(
        config,
        market,
        models,
        prepared.hydrator,
        Arc::new(MemorySpendStore::new()),
        sink,
        pool,
    );
    Ok((engine, prepared.definitions))
}
