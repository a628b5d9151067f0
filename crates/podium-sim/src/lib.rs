//! The simulator: deterministic marketplaces, audiences and impression histories generated from a
//! seed, and demo models trained on those histories.
//!
//! `podium serve` with no configuration runs on [`demo`]: a generated marketplace, a generated
//! audience in the embedded feature store, and three models trained at first start (an early
//! ranker, a CTR model and a completion model) against a known ground truth.
//!
//! Benchmarks and capacity figures run on [`standard`]: the standard workload of
//! `ARCHITECTURE.md` §7 (5,000 line items, 1,000,000 viewers, a linear ranker, five GBDTs and
//! three MLPs), generated from a seed by `podium sim gen`.

pub mod demo;
pub mod standard;
pub mod traffic;
