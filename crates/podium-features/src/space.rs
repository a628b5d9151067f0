//! The feature space: every feature a model may read, where its value comes from, and its default.

use crate::definitions::{Definitions, Entity};
use podium_core::FrameSchema;
use std::sync::Arc;
use std::time::Duration;

/// Where a feature's value comes from at request time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    /// Derived from the request itself (device, live, …).
    Context,
    /// Stored in the online store under `"<entity>:<id>"`: the viewer and the content are keyed by
    /// the request, line items and advertisers by each candidate.
    Stored(Entity),
    /// Per candidate line item, supplied by the retrieval stage (marketplace attributes).
    Candidate,
    /// Returned per request by a real-time signal source (`[[source]]` of the definitions).
    Signal,
}

impl Source {
    /// Whether the value differs per candidate row (as opposed to once per request).
    pub fn per_candidate(self) -> bool {
        matches!(
            self,
            Source::Candidate
                | Source::Stored(Entity::LineItem)
                | Source::Stored(Entity::Advertiser)
        )
    }
}

/// One feature.
#[derive(Clone, Debug, PartialEq)]
pub struct FeatureSpec {
    /// Name models refer to it by.
    pub name: String,
    /// Where its value comes from.
    pub source: Source,
    /// Value used when it is missing, stale, or its fetch ran out of time.
    pub default: f32,
    /// Freshness bound of a stored value: older than this (by its as-of time), it reads as the
    /// default. `None`: never stale.
    pub ttl: Option<Duration>,
}

impl FeatureSpec {
    /// A feature with no freshness bound.
    pub fn new(name: impl Into<String>, source: Source, default: f32) -> Self {
        Self {
            name: name.into(),
            source,
            default,
            ttl: None,
        }
    }
}

/// The ordered set of features a frame holds: context, then stored request-level (user, content,
/// device), then per-candidate columns.
///
/// A stored entity's vector holds its features in the order they were given to
/// [`FeatureSpace::new`] (the *slot*); a space built [`with_definitions`](Self::with_definitions)
/// uses the definitions' order, which is the order the stream aggregator writes.
#[derive(Clone, Debug)]
pub struct FeatureSpace {
    specs: Vec<FeatureSpec>,
    slots: Vec<usize>,
    schema: Arc<FrameSchema>,
}

fn rank(s: Source) -> u8 {
    match s {
        Source::Context => 0,
        s if !s.per_candidate() => 1,
        _ => 2,
    }
}

impl FeatureSpace {
    /// A space of these features; they are reordered by source so that request-level columns come
    /// first and broadcast as one block. Slots (positions within a stored vector, or within a
    /// candidate's supplied row) follow the given order per source.
    pub fn new(specs: Vec<FeatureSpec>) -> Self {
        let mut counters: std::collections::HashMap<Source, usize> = Default::default();
        let mut with_slots: Vec<(FeatureSpec, usize)> = specs
            .into_iter()
            .map(|s| {
                let c = counters.entry(s.source).or_default();
                *c += 1;
                (s, *c - 1)
            })
            .collect();
        with_slots.sort_by_key(|(s, _)| rank(s.source));
        let schema = Arc::new(FrameSchema::new(
            with_slots.iter().map(|s| s.0.name.clone()),
        ));
        let (specs, slots) = with_slots.into_iter().unzip();
        Self {
            specs,
            slots,
            schema,
        }
    }

    /// This space's context and candidate features with the stored features of `defs` in place of
    /// its own stored ones: the definitions then say what every entity's stored vector holds.
    /// Errors on a name defined twice.
    pub fn with_definitions(&self, defs: &Definitions) -> Result<Self, String> {
        let mut specs: Vec<FeatureSpec> = self
            .specs
            .iter()
            .filter(|s| !matches!(s.source, Source::Stored(_) | Source::Signal))
            .cloned()
            .collect();
        for f in defs.features() {
            if specs.iter().any(|s| s.name == f.name) {
                return Err(format!(
                    "feature {:?} is defined by the definitions and by the world",
                    f.name
                ));
            }
            specs.push(FeatureSpec {
                name: f.name.clone(),
                source: Source::Stored(f.entity),
                default: f.default,
                // A stored vector older than the feature's ttl (by its as-of time) is stale.
                ttl: Some(f.ttl),
            });
        }
        for source in defs.sources() {
            for f in &source.features {
                if specs.iter().any(|s| s.name == f.name) {
                    return Err(format!(
                        "feature {:?} of signal source {:?} is defined by the world too",
                        f.name, source.name
                    ));
                }
                // Freshness is the source's (cache ttl, max_age), judged when it answers.
                specs.push(FeatureSpec::new(f.name.clone(), Source::Signal, f.default));
            }
        }
        Ok(Self::new(specs))
    }

    /// The frame schema (column order of every frame built from this space).
    pub fn schema(&self) -> &Arc<FrameSchema> {
        &self.schema
    }

    /// All features in column order.
    pub fn specs(&self) -> &[FeatureSpec] {
        &self.specs
    }

    /// The slot of the feature in column `col`: its position in its entity's stored vector, or in
    /// a candidate's supplied row.
    pub fn slot(&self, col: usize) -> usize {
        self.slots[col]
    }

    /// Features of one source, in column order, with their columns.
    pub fn of(&self, source: Source) -> impl Iterator<Item = (usize, &FeatureSpec)> {
        self.specs
            .iter()
            .enumerate()
            .filter(move |(_, s)| s.source == source)
    }

    /// Names of an entity's stored features, in the order its stored vector keeps them.
    pub fn stored_names(&self, entity: Entity) -> Vec<String> {
        let mut v: Vec<(usize, String)> = self
            .of(Source::Stored(entity))
            .map(|(c, s)| (self.slots[c], s.name.clone()))
            .collect();
        v.sort();
        v.into_iter().map(|x| x.1).collect()
    }

    /// Names of the stored user features, in the order the store keeps their values.
    pub fn user_names(&self) -> Vec<String> {
        self.stored_names(Entity::User)
    }

    /// Names of the candidate features, in the order callers supply them.
    pub fn candidate_names(&self) -> Vec<String> {
        let mut v: Vec<(usize, String)> = self
            .of(Source::Candidate)
            .map(|(c, s)| (self.slots[c], s.name.clone()))
            .collect();
        v.sort();
        v.into_iter().map(|x| x.1).collect()
    }

    /// For writers that produce an entity's features in an order of their own (`names`): per
    /// slot of the entity's stored vector, the index in `names` to take, or the default.
    pub fn layout_of(&self, entity: Entity, names: &[String]) -> Vec<(Option<usize>, f32)> {
        let mut out: Vec<(usize, Option<usize>, f32)> = self
            .of(Source::Stored(entity))
            .map(|(c, s)| {
                (
                    self.slots[c],
                    names.iter().position(|n| *n == s.name),
                    s.default,
                )
            })
            .collect();
        out.sort_by_key(|x| x.0);
        out.into_iter().map(|x| (x.1, x.2)).collect()
    }

    /// Re-lays `values` (named by `names`) in `entity`'s stored order, with defaults where absent.
    pub fn lay_out(&self, entity: Entity, names: &[String], values: &[f32]) -> Vec<f32> {
        relay(&self.layout_of(entity, names), values)
    }
}

/// Applies a [`FeatureSpace::layout_of`] mapping to one writer's row.
pub fn relay(layout: &[(Option<usize>, f32)], values: &[f32]) -> Vec<f32> {
    layout
        .iter()
        .map(|&(i, d)| i.and_then(|i| values.get(i).copied()).unwrap_or(d))
        .collect()
}
