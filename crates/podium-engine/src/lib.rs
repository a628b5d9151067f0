//! The decision pipeline of `ARCHITECTURE.md` §1 as one [`Engine::decide`]: admit, retrieve,
//! hydrate (the request's and its candidates' stored features in one read), rank, score, value,
//! pod, respond, log.
//!
//! This is the one place where features, serving, auction, pacing and logging meet. The HTTP
//! server only adapts wire formats to `decide`; replay ([`replay`]) runs the auction through the
//! very same valuation and pod functions, so a decision is never computed by two code paths.

mod demo;
pub mod experiments;
mod features;
mod pacing;
mod pipeline;
pub mod replay;
mod standard;

pub use demo::{build_demo, build_demo_with, DemoError};
pub use experiments::{Assignment, Experiments, ExperimentsError};
pub use features::{FeatureSetup, PreparedFeatures};
pub use pacing::PacingView;
pub use pipeline::{Engine, EngineConfig, HydrationReport, MarketSnapshot, ShadowRecord};
pub use standard::{
    build_standard, build_standard_with, FloorSample, LoadTimings, StandardWorld, WorkloadError,
};
