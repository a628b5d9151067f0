//! A model slot: one stage's model with its fallback tiers, run on the compute pool under the
//! request's deadline.
//!
//! Tier 0 is the primary model, tiers 1… the lighter fallback models in order, and the last tier
//! the primary bundle's constant prior. A tier is skipped when it errors, returns a non-finite
//! value, or does not answer before the deadline; the answer says which tier served and why the
//! ones before it did not.

use crate::bound::BoundModel;
use crate::pool::ComputePool;
use podium_core::{Deadline, FeatureFrame};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The outcome of scoring one batch in one slot.
#[derive(Clone, Debug, PartialEq)]
pub struct Scored {
    /// One prediction per row.
    pub values: Vec<f32>,
    /// Which tier served: 0 = the primary model; `tiers.len()` = the constant prior.
    pub tier: u8,
    /// Name and version of the model that served (the primary's, when the prior served).
    pub model: (String, String),
    /// Why earlier tiers did not serve, one reason per skipped tier.
    pub fallback_reasons: Vec<String>,
    /// Wall time spent, in microseconds.
    pub micros: u64,
}

/// A stage's model and its fallbacks.
#[derive(Debug, Clone)]
pub struct ModelSlot {
    tiers: Vec<Arc<BoundModel>>,
    /// Fault injection: the primary model sleeps this long before scoring (tests and drills of
    /// the fallback path; never set in production configs).
    inject_delay: Option<Duration>,
}

impl ModelSlot {
    /// A slot of a primary model and its fallbacks, tried in order.
    pub fn new(primary: BoundModel, fallbacks: Vec<BoundModel>) -> Self {
        Self {
            tiers: std::iter::once(primary)
                .chain(fallbacks)
                .map(Arc::new)
                .collect(),
            inject_delay: None,
        }
    }

    /// Makes the primary model stall for `delay` before every batch (fault injection).
    pub fn with_injected_delay(mut self, delay: Option<Duration>) -> Self {
        self.inject_delay = delay;
        self
    }

    /// The primary model.
    pub fn primary(&self) -> &BoundModel {
        &self.tiers[0]
    }

    /// Every model of the slot, primary first.
    pub fn models(&self) -> impl Iterator<Item = &BoundModel> {
        self.tiers.iter().map(|m| m.as_ref())
    }

    /// The prior tier's answer.
    fn prior(&self, rows: usize, reasons: Vec<String>, started: Instant) -> Scored {
        let p = self.primary();
        Scored {
            values: vec![p.prior(); rows],
            tier: self.tiers.len() as u8,
            model: (
                p.model().name().to_string(),
                p.model().version().to_string(),
            ),
            fallback_reasons: reasons,
            micros: started.elapsed().as_micros() as u64,
        }
    }

    /// Scores `frame` on `pool`, falling through the tiers; never waits past `deadline` less
    /// `reserve` (the time the rest of the request needs after scoring).
    pub async fn run(
        &self,
        pool: &ComputePool,
        frame: Arc<FeatureFrame>,
        deadline: Deadline,
        reserve: Duration,
    ) -> Scored {
        let started = Instant::now();
        let mut reasons = Vec::new();
        for (tier, model) in self.tiers.iter().enumerate() {
            let budget = deadline.remaining().saturating_sub(reserve);
            if budget.is_zero() {
                reasons.push(format!(
                    "{}: no time left before the deadline",
                    model.model().name()
                ));
                break;
            }
            let (job_model, job_frame) = (model.clone(), frame.clone());
            let delay = if tier == 0 { self.inject_delay } else { None };
            let job = pool.run(move || {
                // A job that starts after its deadline is not worth running: its caller has gone.
                if deadline.remaining().is_zero() {
                    return Err("started after the deadline".to_string());
                }
                if let Some(d) = delay {
                    std::thread::sleep(d);
                }
                job_model.try_score(&job_frame)
            });
            match tokio::time::timeout(budget, job).await {
                Ok(Ok(values)) => {
                    return Scored {
                        values,
                        tier: tier as u8,
                        model: (
                            model.model().name().to_string(),
                            model.model().version().to_string(),
                        ),
                        fallback_reasons: reasons,
                        micros: started.elapsed().as_micros() as u64,
                    }
                }
                Ok(Err(e)) => reasons.push(format!("{}: {e}", model.model().name())),
                Err(_) => reasons.push(format!(
                    "{}: no answer within {} µs",
                    model.model().name(),
                    budget.as_micros()
                )),
            }
        }
        self.prior(frame.rows(), reasons, started)
    }
}
