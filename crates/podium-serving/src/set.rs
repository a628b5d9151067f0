//! The model set: which models run at which stage. A request pins one set for its whole life.

use crate::bound::BoundModel;
use crate::slot::ModelSlot;
use podium_model::Model;

/// The models of one serving configuration.
#[derive(Debug, Clone)]
pub struct ModelSet {
    /// Early ranker, run on every eligible candidate to pick the top K.
    pub ranker: ModelSlot,
    /// Full-scoring models, run on the top K, in parallel.
    pub scorers: Vec<ModelSlot>,
    /// How many candidates go from the early ranker to full scoring.
    pub top_k: usize,
    /// Models served over the Open Inference Protocol only.
    pub serve_only: Vec<Model>,
    /// Micro-batching of Open Inference Protocol calls, by model name.
    pub micro_batching: std::collections::BTreeMap<String, crate::batcher::BatchConfig>,
    /// Live figures per model version; shared by the sets that replace this one.
    pub stats: std::sync::Arc<crate::stats::ModelStats>,
}

impl ModelSet {
    /// The scorer serving a task (`ctr`, `completion`, …), if the set has one.
    pub fn scorer_for(&self, task: &str) -> Option<usize> {
        self.scorers.iter().position(|s| s.task() == task)
    }

    /// The frame columns the early-rank stage reads (every tier of the ranker).
    pub fn ranker_columns(&self) -> Vec<usize> {
        self.ranker.columns()
    }

    /// The frame columns the full-scoring stage reads (every tier of every scorer).
    pub fn scorer_columns(&self) -> Vec<usize> {
        let mut cols: Vec<usize> = self.scorers.iter().flat_map(|s| s.columns()).collect();
        cols.sort_unstable();
        cols.dedup();
        cols
    }

    /// Every model of the set (fallbacks included), the ranker's first.
    pub fn all(&self) -> impl Iterator<Item = &BoundModel> {
        std::iter::once(&self.ranker)
            .chain(&self.scorers)
            .flat_map(|s| s.models())
    }

    /// The model of a name, if the set has it (decision models and serve-only ones): the
    /// version serving most traffic (the primary, not its canary or shadow).
    pub fn by_name(&self, name: &str) -> Option<&Model> {
        self.all()
            .map(BoundModel::model)
            .chain(&self.serve_only)
            .find(|m| m.name() == name)
    }

    /// Every loaded version of a model: the one [`by_name`](Self::by_name) gives first, then
    /// canaries and shadows.
    pub fn versions_of(&self, name: &str) -> Vec<&Model> {
        let slots = std::iter::once(&self.ranker).chain(&self.scorers);
        let mut out: Vec<&Model> = Vec::new();
        let candidates = self
            .all()
            .map(BoundModel::model)
            .chain(&self.serve_only)
            .chain(slots.flat_map(|s| s.variants().chain(s.alternates()).map(|v| v.model.model())));
        for m in candidates {
            if m.name() == name && !out.iter().any(|o| o.version() == m.version()) {
                out.push(m);
            }
        }
        out
    }

    /// The slots of a stage as a user is assigned: first the versions experiment arms ask for
    /// (`versions`, by model name; a version not loaded is named in the `Err` list and the slot
    /// serves as it would), then, unless `holdout`, canaries in their primaries' places where
    /// the user falls in their share. Borrows when nothing changes.
    pub fn arrange<'a>(
        slots: &'a [ModelSlot],
        unit: &str,
        holdout: bool,
        versions: &std::collections::BTreeMap<String, String>,
        missing: &mut Vec<String>,
    ) -> std::borrow::Cow<'a, [ModelSlot]> {
        let mut changed: Vec<Option<ModelSlot>> = Vec::with_capacity(slots.len());
        for s in slots {
            let pinned = versions.get(&s.name()).and_then(|v| {
                let slot = s.with_version(v);
                if slot.is_none() {
                    missing.push(format!("{} version {v}", s.name()));
                }
                slot
            });
            changed.push(match pinned {
                Some(p) => Some(p),
                None if holdout => None,
                None => s.assigned(unit),
            });
        }
        if changed.iter().all(Option::is_none) {
            return std::borrow::Cow::Borrowed(slots);
        }
        std::borrow::Cow::Owned(
            slots
                .iter()
                .zip(changed)
                .map(|(s, a)| a.unwrap_or_else(|| s.clone()))
                .collect(),
        )
    }

    /// The slots of a stage as `unit` (a user id) is assigned: canaries in their primaries'
    /// places where the user falls in their share. Borrows when no canary applies.
    pub fn assign<'a>(slots: &'a [ModelSlot], unit: &str) -> std::borrow::Cow<'a, [ModelSlot]> {
        let assigned: Vec<Option<ModelSlot>> = slots.iter().map(|s| s.assigned(unit)).collect();
        if assigned.iter().all(Option::is_none) {
            return std::borrow::Cow::Borrowed(slots);
        }
        std::borrow::Cow::Owned(
            slots
                .iter()
                .zip(assigned)
                .map(|(s, a)| a.unwrap_or_else(|| s.clone()))
                .collect(),
        )
    }
}
