//! The model set: which models run at which stage. A request pins one set for its whole life.

use crate::bound::{BoundModel, Scored};
use podium_core::FeatureFrame;

/// The models of one serving configuration.
#[derive(Debug, Clone)]
pub struct ModelSet {
    /// Early ranker, run on every eligible candidate to pick the top K.
    pub ranker: BoundModel,
    /// Full-scoring models, run on the top K.
    pub scorers: Vec<BoundModel>,
    /// How many candidates go from the early ranker to full scoring.
    pub top_k: usize,
}

impl ModelSet {
    /// The scorer serving a task (`ctr`, `completion`, …), if the set has one.
    pub fn scorer_for(&self, task: &str) -> Option<usize> {
        self.scorers
            .iter()
            .position(|m| m.model().manifest().task == task)
    }

    /// Every model of the set, the ranker first.
    pub fn all(&self) -> impl Iterator<Item = &BoundModel> {
        std::iter::once(&self.ranker).chain(&self.scorers)
    }

    /// The model of a name, if the set has it.
    pub fn by_name(&self, name: &str) -> Option<&BoundModel> {
        self.all().find(|m| m.model().name() == name)
    }

    /// Scores `frame` with every full-scoring model, in parallel on the current rayon pool.
    pub fn score_all(&self, frame: &FeatureFrame) -> Vec<Scored> {
        use rayon::prelude::*;
        self.scorers.par_iter().map(|m| m.score(frame)).collect()
    }
}
