//! A model slot: one stage's model with its fallback tiers, run on the compute pool under the
//! request's deadline.
//!
//! Tier 0 is the primary model, tiers 1… the lighter fallback models in order, and the last tier
//! the primary bundle's constant prior. A tier is skipped when it errors, returns a non-finite
//! value, or does not answer before the deadline; the answer says which tier served and why the
//! ones before it did not.

use crate::bound::BoundModel;
use crate::pool::ComputePool;
use crate::remote::RemoteModel;
use podium_core::{Deadline, FeatureFrame};
use std::sync::atomic::{AtomicI64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Job states for the stall accounting of a tier.
const RUNNING: u8 = 0;
const DONE: u8 = 1;
const ABANDONED: u8 = 2;

/// tokio's timers fire on millisecond ticks, so a timeout can end up to a tick late; waits are
/// shortened by this much so that a late tick still lands inside the deadline.
const TIMER_SLACK: Duration = Duration::from_millis(1);

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

/// One tier of a slot: a model in process, or one behind the Open Inference Protocol.
#[derive(Debug, Clone)]
pub enum Tier {
    /// Scored on the compute pool.
    Local(Arc<BoundModel>),
    /// Scored by another server.
    Remote(Arc<RemoteModel>),
}

impl Tier {
    fn name(&self) -> String {
        match self {
            Tier::Local(m) => m.model().name().to_string(),
            Tier::Remote(r) => r.label(),
        }
    }

    fn version(&self) -> String {
        match self {
            Tier::Local(m) => m.model().version().to_string(),
            Tier::Remote(r) => r
                .config()
                .version
                .clone()
                .unwrap_or_else(|| "remote".to_string()),
        }
    }
}

/// A stage's model and its fallbacks.
#[derive(Debug, Clone)]
pub struct ModelSlot {
    tiers: Vec<Tier>,
    /// Per tier, batches still running after their request gave up on them. While a tier has
    /// any, it is skipped: a stalled model must not take compute threads from the others.
    stalled: Vec<Arc<AtomicI64>>,
    /// Fault injection: the first tier, when local, sleeps this long before scoring (tests and
    /// drills of the fallback path; never set in production configs).
    inject_delay: Option<Duration>,
}

impl ModelSlot {
    /// A slot of a primary model and its fallbacks, tried in order.
    pub fn new(primary: BoundModel, fallbacks: Vec<BoundModel>) -> Self {
        Self::of_tiers(
            std::iter::once(primary)
                .chain(fallbacks)
                .map(|m| Tier::Local(Arc::new(m)))
                .collect(),
        )
    }

    /// A slot of these tiers, tried in order; the first names the slot, its task and prior.
    ///
    /// # Panics
    /// If `tiers` is empty (the config loader never builds one).
    pub fn of_tiers(tiers: Vec<Tier>) -> Self {
        assert!(!tiers.is_empty(), "a model slot needs at least one tier");
        Self {
            stalled: tiers.iter().map(|_| Arc::new(AtomicI64::new(0))).collect(),
            tiers,
            inject_delay: None,
        }
    }

    /// Makes the primary model stall for `delay` before every batch (fault injection).
    pub fn with_injected_delay(mut self, delay: Option<Duration>) -> Self {
        self.inject_delay = delay;
        self
    }

    /// What the slot predicts: the first tier's task.
    pub fn task(&self) -> &str {
        match &self.tiers[0] {
            Tier::Local(m) => &m.model().manifest().task,
            Tier::Remote(r) => &r.config().task,
        }
    }

    /// The constant served when every tier fails: the first tier's prior.
    pub fn prior_value(&self) -> f32 {
        match &self.tiers[0] {
            Tier::Local(m) => m.prior(),
            Tier::Remote(r) => r.config().fallback_prior as f32,
        }
    }

    /// The first in-process model of the slot, if it has one.
    pub fn first_local(&self) -> Option<&BoundModel> {
        self.models().next()
    }

    /// The in-process models of the slot, in tier order.
    pub fn models(&self) -> impl Iterator<Item = &BoundModel> {
        self.tiers.iter().filter_map(|t| match t {
            Tier::Local(m) => Some(m.as_ref()),
            Tier::Remote(_) => None,
        })
    }

    /// Runs a local tier on the pool, abandoning it at `budget` and skipping it while an earlier
    /// abandoned batch still runs.
    async fn run_local(
        &self,
        tier: usize,
        model: &Arc<BoundModel>,
        pool: &ComputePool,
        frame: &Arc<FeatureFrame>,
        deadline: Deadline,
        budget: Duration,
    ) -> Result<Vec<f32>, String> {
        let stalled = &self.stalled[tier];
        let overdue = stalled.load(Ordering::Acquire);
        if overdue > 0 {
            return Err(format!(
                "skipped, {overdue} earlier batch(es) still running past their deadline"
            ));
        }
        let (job_model, job_frame) = (model.clone(), frame.clone());
        let delay = if tier == 0 { self.inject_delay } else { None };
        let state = Arc::new(AtomicU8::new(RUNNING));
        let (job_state, job_stalled) = (state.clone(), stalled.clone());
        let job = pool.run(move || {
            // A job that starts after its deadline is not worth running: its caller has gone.
            let result = if deadline.remaining().is_zero() {
                Err("started after the deadline".to_string())
            } else {
                if let Some(d) = delay {
                    std::thread::sleep(d);
                }
                job_model.try_score(&job_frame)
            };
            if job_state
                .compare_exchange(RUNNING, DONE, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                job_stalled.fetch_sub(1, Ordering::AcqRel);
            }
            result
        });
        match tokio::time::timeout(budget, job).await {
            Ok(result) => result,
            Err(_) => {
                if state
                    .compare_exchange(RUNNING, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    stalled.fetch_add(1, Ordering::AcqRel);
                }
                Err(format!("no answer within {} µs", budget.as_micros()))
            }
        }
    }

    /// The prior tier's answer.
    fn prior(&self, rows: usize, reasons: Vec<String>, started: Instant) -> Scored {
        let first = &self.tiers[0];
        Scored {
            values: vec![self.prior_value(); rows],
            tier: self.tiers.len() as u8,
            model: (first.name(), first.version()),
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
            let budget = deadline.remaining().saturating_sub(reserve + TIMER_SLACK);
            if budget.is_zero() {
                reasons.push(format!(
                    "{}: no time left before the deadline",
                    model.name()
                ));
                break;
            }
            let answer = match model {
                Tier::Local(local) => {
                    self.run_local(tier, local, pool, &frame, deadline, budget)
                        .await
                }
                Tier::Remote(remote) => remote.score(&frame, budget).await,
            };
            match answer {
                Ok(values) => {
                    return Scored {
                        values,
                        tier: tier as u8,
                        model: (model.name(), model.version()),
                        fallback_reasons: reasons,
                        micros: started.elapsed().as_micros() as u64,
                    }
                }
                Err(e) => reasons.push(format!("{}: {e}", model.name())),
            }
        }
        self.prior(frame.rows(), reasons, started)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use podium_core::FrameSchema;
    use podium_model::manifest::{OutputSpec, ServingSpec};
    use podium_model::{Columns, InputSpec, Link, Manifest, Model, ModelError, ModelKind, Runtime};

    /// Scores a constant, or fails when told to.
    #[derive(Debug)]
    struct Constant(Option<f32>);

    impl Runtime for Constant {
        fn num_inputs(&self) -> usize {
            1
        }
        fn predict_raw(&self, _: &Columns<'_>, out: &mut [f32]) -> Result<(), ModelError> {
            match self.0 {
                Some(v) => {
                    out.fill(v);
                    Ok(())
                }
                None => Err(ModelError::Input("broken on purpose".into())),
            }
        }
    }

    fn model(name: &str, value: Option<f32>, schema: &FrameSchema) -> BoundModel {
        let manifest = Manifest {
            name: name.into(),
            version: "1".into(),
            kind: ModelKind::Linear,
            task: "ctr".into(),
            weights: "w".into(),
            inputs: vec![InputSpec {
                name: "x".into(),
                kind: "f32".into(),
                default: None,
            }],
            output: OutputSpec {
                link: Link::Identity,
                ..OutputSpec::default()
            },
            serving: ServingSpec {
                latency_budget_us: 100,
                fallback_prior: 0.125,
            },
            calibration: None,
        };
        BoundModel::bind(
            Model::new(manifest, Arc::new(Constant(value))).unwrap(),
            schema,
        )
        .unwrap()
    }

    fn frame(schema: &Arc<FrameSchema>) -> Arc<FeatureFrame> {
        Arc::new(FeatureFrame::new(schema.clone(), 3))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_primary_serves_when_healthy() {
        let schema = Arc::new(FrameSchema::new(["x"]));
        let slot = ModelSlot::new(model("main", Some(0.5), &schema), vec![]);
        let s = slot
            .run(
                &ComputePool::new(2),
                frame(&schema),
                Deadline::after(Duration::from_secs(1)),
                Duration::ZERO,
            )
            .await;
        assert_eq!(
            (s.values, s.tier, s.model.0.as_str()),
            (vec![0.5; 3], 0, "main")
        );
        assert!(s.fallback_reasons.is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_primary_falls_to_the_next_tier_then_the_prior() {
        let schema = Arc::new(FrameSchema::new(["x"]));
        let pool = ComputePool::new(2);
        let deadline = Deadline::after(Duration::from_secs(1));
        let slot = ModelSlot::new(
            model("main", None, &schema),
            vec![model("light", Some(0.25), &schema)],
        );
        let s = slot
            .run(&pool, frame(&schema), deadline, Duration::ZERO)
            .await;
        assert_eq!(
            (s.values, s.tier, s.model.0.as_str()),
            (vec![0.25; 3], 1, "light")
        );
        assert!(s.fallback_reasons[0].contains("broken on purpose"));

        let slot = ModelSlot::new(
            model("main", None, &schema),
            vec![model("light", None, &schema)],
        );
        let s = slot
            .run(&pool, frame(&schema), deadline, Duration::ZERO)
            .await;
        assert_eq!((s.values, s.tier), (vec![0.125; 3], 2));
        assert_eq!(s.fallback_reasons.len(), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stalled_primary_is_abandoned_at_the_deadline() {
        let schema = Arc::new(FrameSchema::new(["x"]));
        let pool = ComputePool::new(2);
        let slot = ModelSlot::new(
            model("main", Some(0.5), &schema),
            vec![model("light", Some(0.25), &schema)],
        )
        .with_injected_delay(Some(Duration::from_millis(300)));
        let started = Instant::now();
        let deadline = Deadline::after(Duration::from_millis(40));
        let s = slot
            .run(&pool, frame(&schema), deadline, Duration::from_millis(5))
            .await;
        assert!(
            started.elapsed() < Duration::from_millis(200),
            "waited {:?}",
            started.elapsed()
        );
        // The stall used the whole budget, so the prior serves; the reason names the stall.
        assert_eq!(s.tier, 2);
        assert!(
            s.fallback_reasons[0].contains("no answer within"),
            "{:?}",
            s.fallback_reasons
        );

        // While the stalled batch still runs, the primary is skipped at once for the fallback.
        let started = Instant::now();
        let s = slot
            .run(
                &pool,
                frame(&schema),
                Deadline::after(Duration::from_millis(40)),
                Duration::from_millis(5),
            )
            .await;
        assert!(started.elapsed() < Duration::from_millis(30));
        assert_eq!((s.tier, s.model.0.as_str()), (1, "light"));
        assert!(
            s.fallback_reasons[0].contains("still running"),
            "{:?}",
            s.fallback_reasons
        );

        // Once it ends, the primary is tried again.
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert_eq!(slot.stalled[0].load(Ordering::Acquire), 0);
    }
}
