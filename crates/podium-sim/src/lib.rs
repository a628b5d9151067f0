//! The simulator: deterministic marketplaces, audiences and impression histories generated from a
//! seed, and demo models trained on those histories.
//!
//! `podium serve` with no configuration runs on [`demo`]: a generated marketplace, a generated
//! audience in the embedded feature store, and three models trained at first start (an early
//! ranker, a CTR model and a completion model) against a known ground truth.

pub mod demo;
pub mod traffic;
