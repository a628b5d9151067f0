//! The feature space: every feature a model may read, where its value comes from, and its default.

use podium_core::FrameSchema;
use std::sync::Arc;

/// Where a feature's value comes from at request time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// Derived from the request itself (device, live, …).
    Context,
    /// Stored per viewer in the online store under `user:{id}`.
    User,
    /// Per candidate line item, supplied by the retrieval stage.
    Candidate,
}

/// One feature.
#[derive(Clone, Debug, PartialEq)]
pub struct FeatureSpec {
    /// Name models refer to it by.
    pub name: String,
    /// Where its value comes from.
    pub source: Source,
    /// Value used when it is missing or its fetch ran out of time.
    pub default: f32,
}

/// The ordered set of features a frame holds: context, then user, then candidate columns.
#[derive(Clone, Debug)]
pub struct FeatureSpace {
    specs: Vec<FeatureSpec>,
    schema: Arc<FrameSchema>,
}

impl FeatureSpace {
    /// A space of these features; they are reordered by source so that request-level columns come
    /// first and broadcast as one block.
    pub fn new(mut specs: Vec<FeatureSpec>) -> Self {
        specs.sort_by_key(|s| match s.source {
            Source::Context => 0,
            Source::User => 1,
            Source::Candidate => 2,
        });
        let schema = Arc::new(FrameSchema::new(specs.iter().map(|s| s.name.clone())));
        Self { specs, schema }
    }

    /// The frame schema (column order of every frame built from this space).
    pub fn schema(&self) -> &Arc<FrameSchema> {
        &self.schema
    }

    /// All features in column order.
    pub fn specs(&self) -> &[FeatureSpec] {
        &self.specs
    }

    /// Features of one source, in column order, with their columns.
    pub fn of(&self, source: Source) -> impl Iterator<Item = (usize, &FeatureSpec)> {
        self.specs
            .iter()
            .enumerate()
            .filter(move |(_, s)| s.source == source)
    }

    /// Names of the stored user features, in the order the store keeps their values.
    pub fn user_names(&self) -> Vec<String> {
        self.of(Source::User).map(|(_, s)| s.name.clone()).collect()
    }

    /// Names of the candidate features, in the order callers supply them.
    pub fn candidate_names(&self) -> Vec<String> {
        self.of(Source::Candidate)
            .map(|(_, s)| s.name.clone())
            .collect()
    }
}
