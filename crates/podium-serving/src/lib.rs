//! Executing models for a request: models bound to the frame schema at load, a model set pinned
//! per request, a dedicated compute pool, and fallback to each model's prior when it fails.
//!
//! Which features a frame holds is `podium-features`' business; what the scores are worth is
//! `podium-auction`'s. This crate only turns frames into scores, safely and on the right threads.

pub mod batcher;
pub mod bound;
pub mod config;
pub mod pool;
pub mod remote;
pub mod set;
pub mod slot;
pub mod stats;
pub mod tensor;

pub use batcher::{BatchConfig, MicroBatcher};
pub use bound::{BindError, BoundModel};
pub use config::{ConfigError, ModelSetConfig, SlotConfig};
pub use pool::ComputePool;
pub use remote::{RemoteConfig, RemoteModel};
pub use set::ModelSet;
pub use slot::{run_stage, ModelSlot, Scored, Tier, Variant};
pub use stats::{bucket, psi, ModelStats, StatsSnapshot, VersionStats, SCORE_BINS};
