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
use crate::stats::ModelStats;
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
    /// A canary version: takes the primary's place for a sticky share of users.
    canary: Option<Variant>,
    /// A shadow version: scored beside the primary for a share of users, off the critical path.
    shadow: Option<Variant>,
    /// Other versions loaded for experiment arms that ask for them by version.
    alternates: Vec<Variant>,
}

/// Another version of a slot's primary model, served to a share of users.
#[derive(Debug, Clone)]
pub struct Variant {
    /// The model.
    pub model: Arc<BoundModel>,
    /// Share of users, 0–100.
    pub percent: f64,
    stalled: Arc<AtomicI64>,
}

impl Variant {
    /// A version for `percent` of users.
    pub fn new(model: BoundModel, percent: f64) -> Self {
        Self {
            model: Arc::new(model),
            percent: percent.clamp(0.0, 100.0),
            stalled: Arc::default(),
        }
    }

    /// Whether `unit` (a user id) falls in this variant's share of the slot named `slot`.
    pub fn selects(&self, unit: &str, slot: &str, role: &str) -> bool {
        self.percent > 0.0 && crate::stats::bucket(unit, &format!("{role}:{slot}")) < self.percent
    }
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
            canary: None,
            shadow: None,
            alternates: Vec::new(),
        }
    }

    /// Other versions experiment arms may ask for.
    pub fn with_alternates(mut self, alternates: Vec<BoundModel>) -> Self {
        self.alternates = alternates
            .into_iter()
            .map(|m| Variant::new(m, 0.0))
            .collect();
        self
    }

    /// The slot with the version `version` of its primary model as tier 0, if that version is
    /// loaded (the primary itself, its canary, shadow or an alternate).
    pub fn with_version(&self, version: &str) -> Option<ModelSlot> {
        if let Tier::Local(m) = &self.tiers[0] {
            if m.model().version() == version {
                return Some(self.clone());
            }
        }
        let found = self
            .variants()
            .chain(&self.alternates)
            .find(|v| v.model.model().version() == version)?
            .clone();
        let mut slot = self.clone();
        slot.tiers[0] = Tier::Local(found.model);
        slot.stalled[0] = found.stalled;
        slot.canary = None;
        Some(slot)
    }

    /// The primary tier's model, when it is scored here.
    pub fn primary(&self) -> Option<&BoundModel> {
        match &self.tiers[0] {
            Tier::Local(m) => Some(m),
            Tier::Remote(_) => None,
        }
    }

    /// The slot with `model` as its primary in place of the local one it had (a new production
    /// version); a remote primary is kept.
    pub fn with_primary(mut self, model: BoundModel) -> Self {
        if matches!(self.tiers[0], Tier::Local(_)) {
            self.tiers[0] = Tier::Local(Arc::new(model));
            self.stalled[0] = Arc::default();
        }
        self
    }

    /// Serves `canary` instead of the primary to its share of users.
    pub fn with_canary(mut self, canary: Option<Variant>) -> Self {
        self.canary = canary;
        self
    }

    /// Scores `shadow` beside the primary for its share of users.
    pub fn with_shadow(mut self, shadow: Option<Variant>) -> Self {
        self.shadow = shadow;
        self
    }

    /// The canary, if the slot has one.
    pub fn canary(&self) -> Option<&Variant> {
        self.canary.as_ref()
    }

    /// The shadow, if the slot has one.
    pub fn shadow(&self) -> Option<&Variant> {
        self.shadow.as_ref()
    }

    /// The name of the slot's primary model (the name canary and shadow shares are salted by).
    pub fn name(&self) -> String {
        self.tiers[0].name()
    }

    /// The slot as `unit` (a user id) sees it: with the canary in the primary's place when the
    /// user falls in the canary's share, else `None` (the slot as it is).
    pub fn assigned(&self, unit: &str) -> Option<ModelSlot> {
        let canary = self.canary.as_ref()?;
        if !matches!(self.tiers[0], Tier::Local(_)) || !canary.selects(unit, &self.name(), "canary")
        {
            return None;
        }
        let mut slot = self.clone();
        slot.tiers[0] = Tier::Local(canary.model.clone());
        slot.stalled[0] = canary.stalled.clone();
        slot.canary = None;
        Some(slot)
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

    /// The frame columns any tier, canary or shadow of the slot reads, sorted, without repeats.
    pub fn columns(&self) -> Vec<usize> {
        let mut cols: Vec<usize> = self
            .tiers
            .iter()
            .flat_map(|t| match t {
                Tier::Local(m) => m.columns(),
                Tier::Remote(r) => r.columns(),
            })
            .chain(
                self.variants()
                    .chain(&self.alternates)
                    .flat_map(|v| v.model.columns()),
            )
            .copied()
            .collect();
        cols.sort_unstable();
        cols.dedup();
        cols
    }

    /// The first in-process model of the slot, if it has one.
    pub fn first_local(&self) -> Option<&BoundModel> {
        self.models().next()
    }

    /// The canary and the shadow, those the slot has.
    pub fn variants(&self) -> impl Iterator<Item = &Variant> {
        self.canary.iter().chain(&self.shadow)
    }

    /// The versions loaded for experiments.
    pub fn alternates(&self) -> impl Iterator<Item = &Variant> {
        self.alternates.iter()
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

    /// Counts an answer served by a tier below the primary, by the tier that served.
    fn count_fallback(&self, tier: String) {
        metrics::counter!("podium_model_fallback_total", "model" => self.name(), "tier" => tier)
            .increment(1);
    }

    /// The prior tier's answer.
    fn prior(&self, rows: usize, reasons: Vec<String>, started: Instant) -> Scored {
        let first = &self.tiers[0];
        self.count_fallback("prior".to_string());
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
        self.run_from(
            0,
            Vec::new(),
            Instant::now(),
            pool,
            frame,
            deadline,
            reserve,
        )
        .await
    }

    /// As [`run`](Self::run), starting at `first` with the reasons earlier tiers gave.
    #[allow(clippy::too_many_arguments)]
    async fn run_from(
        &self,
        first: usize,
        mut reasons: Vec<String>,
        started: Instant,
        pool: &ComputePool,
        frame: Arc<FeatureFrame>,
        deadline: Deadline,
        reserve: Duration,
    ) -> Scored {
        for (tier, model) in self.tiers.iter().enumerate().skip(first) {
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
                Ok(values) => return self.served(tier, values, reasons, started),
                Err(e) => reasons.push(format!("{}: {e}", model.name())),
            }
        }
        self.prior(frame.rows(), reasons, started)
    }

    fn served(
        &self,
        tier: usize,
        values: Vec<f32>,
        reasons: Vec<String>,
        started: Instant,
    ) -> Scored {
        let model = &self.tiers[tier];
        if tier > 0 {
            self.count_fallback(model.name());
        }
        Scored {
            values,
            tier: tier as u8,
            model: (model.name(), model.version()),
            fallback_reasons: reasons,
            micros: started.elapsed().as_micros() as u64,
        }
    }
}

/// A tier's predictions, or why it gave none.
type Answer = Result<Vec<f32>, String>;

/// The primary jobs of one stage, started together. Each stores its answer; the last to end,
/// and any that fails (so that its fallback starts at once), wakes the stage, instead of every
/// model waking the async side on its own.
struct StageJobs {
    answers: Vec<std::sync::Mutex<Option<Answer>>>,
    states: Vec<AtomicU8>,
    remaining: std::sync::atomic::AtomicUsize,
    wake: tokio::sync::Notify,
}

impl StageJobs {
    fn take(&self, job: usize) -> Option<Answer> {
        self.answers[job].lock().expect("stage answer lock").take()
    }

    fn failed(&self, job: usize) -> bool {
        matches!(
            *self.answers[job].lock().expect("stage answer lock"),
            Some(Err(_))
        )
    }
}

/// How a slot of a stage gets its answer.
enum Route {
    /// From its primary's job in the batch.
    Batched(usize),
    /// Tier by tier from the start (remote primary, quarantined primary, fault drill).
    Alone,
}

/// Scores `frame` with every slot of a stage, in parallel on `pool`, each falling through its
/// tiers as [`ModelSlot::run`] does, under one deadline. On the healthy path the stage costs
/// one wake-up however many models it has: the slots' primary models start as one batch of
/// pool jobs and the stage waits for the last of them; a primary that fails starts its
/// fallback at once, one still running at the deadline is abandoned (and its slot quarantined
/// until it ends) for the constant prior.
pub async fn run_stage(
    slots: &[ModelSlot],
    pool: &ComputePool,
    frame: Arc<FeatureFrame>,
    deadline: Deadline,
    reserve: Duration,
    stats: &ModelStats,
) -> Vec<Scored> {
    let started = Instant::now();
    let budget = deadline.remaining().saturating_sub(reserve + TIMER_SLACK);
    let mut count = 0;
    let routes: Vec<Route> = slots
        .iter()
        .map(|slot| {
            let local = matches!(slot.tiers[0], Tier::Local(_));
            let quarantined = slot.stalled[0].load(Ordering::Acquire) > 0;
            let drill = slot.inject_delay.is_some();
            if local && !quarantined && !drill && !budget.is_zero() {
                count += 1;
                Route::Batched(count - 1)
            } else {
                Route::Alone
            }
        })
        .collect();
    let jobs = Arc::new(StageJobs {
        answers: (0..count).map(|_| std::sync::Mutex::new(None)).collect(),
        states: (0..count).map(|_| AtomicU8::new(RUNNING)).collect(),
        remaining: std::sync::atomic::AtomicUsize::new(count),
        wake: tokio::sync::Notify::new(),
    });
    for (slot, route) in slots.iter().zip(&routes) {
        let (Route::Batched(job), Tier::Local(model)) = (route, &slot.tiers[0]) else {
            continue;
        };
        let (job, jobs, model, frame, stalled) = (
            *job,
            jobs.clone(),
            model.clone(),
            frame.clone(),
            slot.stalled[0].clone(),
        );
        let version_stats = stats.of_model(model.model());
        pool.spawn(move || {
            // A job that starts after its deadline is not worth running: its caller has gone.
            let answer = if deadline.remaining().is_zero() {
                Err("started after the deadline".to_string())
            } else {
                let t = Instant::now();
                let answer = model.try_score(&frame);
                version_stats.record_scored(t.elapsed(), &model, &frame, answer.as_deref().ok());
                answer
            };
            let failed = answer.is_err();
            *jobs.answers[job].lock().expect("stage answer lock") = Some(answer);
            if jobs.states[job]
                .compare_exchange(RUNNING, DONE, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                stalled.fetch_sub(1, Ordering::AcqRel);
            }
            if jobs.remaining.fetch_sub(1, Ordering::AcqRel) == 1 || failed {
                jobs.wake.notify_one();
            }
        });
    }

    // Fallbacks run as tasks of their own so that they start while the batch still runs.
    let spawn_fallback = |slot: &ModelSlot, first: usize, reasons: Vec<String>| {
        let (slot, pool, frame) = (slot.clone(), pool.clone(), frame.clone());
        tokio::spawn(async move {
            slot.run_from(first, reasons, started, &pool, frame, deadline, reserve)
                .await
        })
    };
    let mut fallbacks: Vec<Option<tokio::task::JoinHandle<Scored>>> =
        slots.iter().map(|_| None).collect();
    let end = tokio::time::Instant::now() + budget;
    loop {
        for (i, (slot, route)) in slots.iter().zip(&routes).enumerate() {
            if let Route::Batched(job) = *route {
                if fallbacks[i].is_none() && jobs.failed(job) {
                    if let Some(Err(e)) = jobs.take(job) {
                        let reasons = vec![format!("{}: {e}", slot.tiers[0].name())];
                        fallbacks[i] = Some(spawn_fallback(slot, 1, reasons));
                    }
                }
            }
        }
        if count == 0
            || jobs.remaining.load(Ordering::Acquire) == 0
            || tokio::time::timeout_at(end, jobs.wake.notified())
                .await
                .is_err()
        {
            break;
        }
    }

    let jobs = &jobs;
    let finals = slots
        .iter()
        .zip(&routes)
        .zip(fallbacks)
        .map(|((slot, route), fallback)| {
            let frame = frame.clone();
            async move {
                if let Some(handle) = fallback {
                    return match handle.await {
                        Ok(scored) => scored,
                        Err(e) => {
                            slot.prior(frame.rows(), vec![format!("fallback task: {e}")], started)
                        }
                    };
                }
                let Route::Batched(job) = *route else {
                    return slot
                        .run_from(0, Vec::new(), started, pool, frame, deadline, reserve)
                        .await;
                };
                let name = slot.tiers[0].name();
                // Not answered at the deadline: abandon it and count it as stalled, unless it
                // finished in between (then its answer is there).
                if jobs.states[job]
                    .compare_exchange(RUNNING, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    slot.stalled[0].fetch_add(1, Ordering::AcqRel);
                    if let Tier::Local(m) = &slot.tiers[0] {
                        stats.of_model(m.model()).record(budget, None);
                        metrics::counter!("podium_model_timeouts_total", "model" => m.model().name().to_string())
                            .increment(1);
                    }
                }
                let reason = match jobs.take(job) {
                    Some(Ok(values)) => return slot.served(0, values, Vec::new(), started),
                    Some(Err(e)) => format!("{name}: {e}"),
                    None => format!("{name}: no answer within {} µs", budget.as_micros()),
                };
                slot.run_from(1, vec![reason], started, pool, frame, deadline, reserve)
                    .await
            }
        });
    futures::future::join_all(finals).await
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

    /// Scores a constant after sleeping: a model that stalls.
    #[derive(Debug)]
    struct Slow(f32, Duration);

    impl Runtime for Slow {
        fn num_inputs(&self) -> usize {
            1
        }
        fn predict_raw(&self, _: &Columns<'_>, out: &mut [f32]) -> Result<(), ModelError> {
            std::thread::sleep(self.1);
            out.fill(self.0);
            Ok(())
        }
    }

    fn model(name: &str, value: Option<f32>, schema: &FrameSchema) -> BoundModel {
        model_of(name, Arc::new(Constant(value)), schema)
    }

    fn model_of(name: &str, runtime: Arc<dyn Runtime>, schema: &FrameSchema) -> BoundModel {
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
        BoundModel::bind(Model::new(manifest, runtime).unwrap(), schema).unwrap()
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stage_serves_each_slot_from_its_own_best_tier() {
        let schema = Arc::new(FrameSchema::new(["x"]));
        let pool = ComputePool::new(2);
        let slots = vec![
            ModelSlot::new(model("healthy", Some(0.5), &schema), vec![]),
            ModelSlot::new(
                model("broken", None, &schema),
                vec![model("broken_light", Some(0.25), &schema)],
            ),
            ModelSlot::new(
                model_of(
                    "stuck",
                    Arc::new(Slow(0.9, Duration::from_millis(400))),
                    &schema,
                ),
                vec![model("stuck_light", Some(0.75), &schema)],
            ),
        ];
        let started = Instant::now();
        let deadline = Deadline::after(Duration::from_millis(60));
        let stats = ModelStats::default();
        let s = run_stage(
            &slots,
            &pool,
            frame(&schema),
            deadline,
            Duration::from_millis(5),
            &stats,
        )
        .await;
        assert!(
            started.elapsed() < Duration::from_millis(200),
            "waited {:?}",
            started.elapsed()
        );
        assert_eq!((s[0].tier, s[0].values[0]), (0, 0.5));
        assert_eq!((s[1].tier, s[1].values[0]), (1, 0.25));
        // Live figures: one healthy batch, one failure of each primary that did not serve.
        let healthy = stats.get("healthy", "1").unwrap();
        assert_eq!((healthy.batches, healthy.failures, healthy.rows), (1, 0, 3));
        assert_eq!(stats.get("broken", "1").unwrap().failures, 1);
        assert_eq!(stats.get("stuck", "1").unwrap().failures, 1);
        assert!(s[1].fallback_reasons[0].contains("broken on purpose"));
        // The stall used the stage's budget, so its slot serves the prior and says why.
        assert_eq!(s[2].tier, 2);
        assert!(
            s[2].fallback_reasons[0].contains("no answer within"),
            "{:?}",
            s[2].fallback_reasons
        );

        // While the stalled batch runs, its primary is skipped at once for the lighter model.
        let s = run_stage(
            &slots,
            &pool,
            frame(&schema),
            Deadline::after(Duration::from_millis(60)),
            Duration::from_millis(5),
            &ModelStats::default(),
        )
        .await;
        assert_eq!((s[0].tier, s[2].tier, s[2].values[0]), (0, 1, 0.75));
        assert!(s[2].fallback_reasons[0].contains("still running"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_canary_serves_its_sticky_share_of_users() {
        let schema = Arc::new(FrameSchema::new(["x"]));
        let pool = ComputePool::new(1);
        let slot = ModelSlot::new(model("ctr", Some(0.5), &schema), vec![])
            .with_canary(Some(Variant::new(model("ctr", Some(0.75), &schema), 30.0)));
        let slots = [slot];
        let mut canary_users = 0;
        for u in 0..400 {
            let unit = format!("u-{u}");
            let assigned = crate::set::ModelSet::assign(&slots, &unit);
            let s = run_stage(
                &assigned,
                &pool,
                frame(&schema),
                Deadline::after(Duration::from_secs(1)),
                Duration::ZERO,
                &ModelStats::default(),
            )
            .await;
            let again = crate::set::ModelSet::assign(&slots, &unit);
            assert_eq!(
                matches!(again, std::borrow::Cow::Owned(_)),
                matches!(assigned, std::borrow::Cow::Owned(_)),
                "assignment is sticky"
            );
            if s[0].values[0] == 0.75 {
                canary_users += 1;
            }
        }
        assert!((90..=150).contains(&canary_users), "{canary_users} of 400");
    }
}
