//! Model rollout on a running server: serve what the registry says, swap without a pause, and
//! roll a bad canary back before it costs revenue.
//!
//! A watcher thread polls the registry's stages. When they change it fetches and loads the new
//! versions (checksums and golden rows, as `load_bundle` does), warms each one up until its
//! latency is steady, builds the new model set from the served world's own set — each slot's
//! primary replaced by its production version, with its canary and shadow beside it; registry
//! models no slot uses are served over the Open Inference Protocol only — and publishes it
//! atomically. Requests in flight finish on the set they pinned; the old versions' memory goes
//! with the last of them.
//!
//! The watcher runs on its own thread, at idle scheduling priority (SCHED_IDLE), one load at a
//! time, so loading does not take the serving cores from requests.
//!
//! Guardrails compare each canary with its production version over the canary's window: the
//! prediction distribution (PSI), the error rate and the P99 latency. A breach rolls the canary
//! back through the registry, with the reason in its history; a clean window promotes it when
//! configured.

use podium_core::FrameSchema;
use podium_engine::Engine;
use podium_model::bundle::read_golden;
use podium_model::{load_bundle, Columns, Model};
use podium_monitor::regression::{Action, Side, TestResult};
use podium_monitor::Rules;
use podium_registry::{Registry, Stage, Stages};
use podium_serving::{BoundModel, ModelSet, StatsSnapshot, Variant};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Canary guardrails: when a canary is worse than production, and when it has earned promotion.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Guardrails {
    /// The regression rules, each a statistical test of the canary against production over the
    /// canary's window (latency, errors, prediction shift, calibration), with its action.
    /// `rules.min_batches` is how many batches each side must have scored before a verdict.
    pub rules: Rules,
    /// Promote a canary to production after this long without a breach (never when `None`).
    pub promote_after: Option<Duration>,
}

/// How the watcher runs.
#[derive(Clone, Debug)]
pub struct WatchConfig {
    /// How often the registry is read.
    pub poll: Duration,
    /// Where fetched bundles are kept (`<dir>/<name>/<version>/`).
    pub cache_dir: PathBuf,
    /// Canary guardrails.
    pub guardrails: Guardrails,
    /// Versions experiment arms serve, `(model, version)`: loaded beside the stages' versions.
    pub experiment_versions: Vec<(String, String)>,
}

/// Something the guardrails did or saw.
#[derive(Clone, Debug, Serialize)]
pub struct Alert {
    /// Unix time, milliseconds.
    pub at_ms: u64,
    /// Model name.
    pub model: String,
    /// The canary version judged.
    pub version: String,
    /// Which rule: `psi` (prediction shift), `error_rate`, `latency`, `latency_p99`,
    /// `calibration`, or `clean` for a promotion.
    pub rule: String,
    /// The figures behind it.
    pub detail: String,
    /// What was done: `rollback`, `promote`, `alert` (a rule that only alerts), or why nothing
    /// could be.
    pub action: String,
}

/// What the watcher knows, for `/v1/lifecycle` and `/readyz`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Status {
    /// The registry's URL.
    pub registry: String,
    /// Whether the last read of the registry succeeded.
    pub reachable: bool,
    /// The last error reading the registry or loading a version.
    pub last_error: Option<String>,
    /// Unix time of the last successful read, milliseconds.
    pub last_sync_ms: Option<u64>,
    /// The stages now served, by model.
    pub serving: BTreeMap<String, Stages>,
    /// Model sets published since start.
    pub swaps: u64,
    /// Guardrail decisions, newest last (bounded).
    pub alerts: Vec<Alert>,
    /// Each canary now judged against production: the tests of the last poll.
    pub canaries: Vec<CanaryComparison>,
}

/// A canary against production over its window: every rule's test.
#[derive(Clone, Debug, Serialize)]
pub struct CanaryComparison {
    /// Model name.
    pub model: String,
    /// The canary version.
    pub canary_version: String,
    /// The production version it is compared with.
    pub production_version: String,
    /// Share of traffic the canary takes, %.
    pub percent: f64,
    /// Seconds since the canary started.
    pub window_s: f64,
    /// Batches each side scored in the window.
    pub batches: (u64, u64),
    /// `waiting` (too few batches), `ok`, or `breach`.
    pub verdict: String,
    /// One result per rule.
    pub tests: Vec<TestResult>,
}

/// A running watcher's shared status.
#[derive(Clone, Default)]
pub struct Lifecycle {
    status: Arc<RwLock<Status>>,
}

impl Lifecycle {
    /// The status now.
    pub fn status(&self) -> Status {
        self.status.read().map(|s| s.clone()).unwrap_or_default()
    }

    fn update(&self, f: impl FnOnce(&mut Status)) {
        if let Ok(mut s) = self.status.write() {
            f(&mut s);
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Starts the watcher on its own thread. `base` is the world's own model set: the template
/// whose slots registry versions replace. Returns at once; the first sync happens on the thread.
pub fn spawn(
    engine: Engine,
    registry: Registry,
    base: ModelSet,
    config: WatchConfig,
) -> std::io::Result<Lifecycle> {
    let lifecycle = Lifecycle::default();
    lifecycle.update(|s| s.registry = registry.url().to_string());
    map_large_allocations();
    let handle = lifecycle.clone();
    std::thread::Builder::new()
        .name("podium-lifecycle".into())
        .spawn(move || {
            lower_priority();
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    handle.update(|s| s.last_error = Some(format!("starting the watcher: {e}")));
                    return;
                }
            };
            let mut watcher = Watcher {
                schema: engine.schema().clone(),
                engine,
                registry,
                base,
                config,
                loaded: HashMap::new(),
                applied: None,
                canaries: HashMap::new(),
                lifecycle: handle,
                retry: None,
            };
            runtime.block_on(watcher.run());
        })?;
    Ok(lifecycle)
}

/// Loading runs below the serving threads' priority: SCHED_IDLE, so the watcher gets a core only
/// when no request wants it (nice +10 would still take scheduler slices of a few milliseconds
/// from requests on a busy core); nice +19 where SCHED_IDLE is refused.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: `param` outlives the call; on Linux these calls with pid/who 0 name the calling
    // thread only. A failure leaves the priority as it was, which is harmless.
    unsafe {
        let param = libc::sched_param { sched_priority: 0 };
        if libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) != 0 {
            libc::setpriority(libc::PRIO_PROCESS, 0, 19);
        }
    }
}

/// Hands freed heap pages back to the operating system. glibc keeps freed memory in its arenas
/// (a swapped-out model's tables among it) and reuses it rather than returning it, so without
/// this the resident size of a server that swaps large models only grows.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers and only releases free memory.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Makes every allocation of 1 MiB or more a mapping of its own, returned to the operating
/// system when freed. glibc otherwise raises its mapping threshold each time such a block is
/// freed (up to 32 MiB), after which model tables come from arenas, where the tables of
/// swapped-out versions fragment and stay resident. Requests allocate far smaller blocks.
fn map_large_allocations() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt takes no pointers; a refused setting leaves the default behaviour.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

/// A canary being watched: when it started and production's figures then.
struct CanaryWindow {
    version: String,
    percent: f64,
    started: Instant,
    production_version: String,
    production_at_start: Option<StatsSnapshot>,
    /// Alert-only rules already reported for this canary.
    alerted: Vec<&'static str>,
}

struct Watcher {
    engine: Engine,
    registry: Registry,
    base: ModelSet,
    schema: Arc<FrameSchema>,
    config: WatchConfig,
    loaded: HashMap<(String, String), Model>,
    applied: Option<BTreeMap<String, Stages>>,
    canaries: HashMap<String, CanaryWindow>,
    lifecycle: Lifecycle,
    /// When the versions that failed to load are tried again, and the pause after that.
    retry: Option<(Instant, Duration)>,
}

/// First pause before a version that failed to load is fetched again; it doubles up to
/// [`RETRY_MAX`] while the failure lasts.
const RETRY_FIRST: Duration = Duration::from_secs(1);
/// Longest pause between tries of a version that fails to load.
const RETRY_MAX: Duration = Duration::from_secs(60);

impl Watcher {
    async fn run(&mut self) {
        let mut trim = false;
        loop {
            if std::mem::take(&mut trim) {
                release_free_memory();
            }
            match self.registry.stages().await {
                Ok(stages) if self.vanished(&stages).is_some() => {
                    // Stages only ever grow: a model that disappears means the registry's
                    // content went away, not a rollout. Keep serving what is loaded.
                    let name = self.vanished(&stages).unwrap_or_default();
                    self.lifecycle.update(|s| {
                        s.reachable = false;
                        s.last_error = Some(format!(
                            "registry {} no longer lists model {name:?}; serving the versions loaded",
                            self.registry.url()
                        ));
                    });
                }
                Ok(stages) => {
                    self.lifecycle.update(|s| {
                        s.reachable = true;
                        s.last_sync_ms = Some(now_ms());
                    });
                    let retry_due = self.retry.is_some_and(|(at, _)| Instant::now() >= at);
                    if self.applied.as_ref() != Some(&stages) || retry_due {
                        self.apply(stages).await;
                        // The old versions are freed as their last requests end; give the
                        // pages back once they have.
                        trim = true;
                    }
                    self.guard().await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "registry unreachable; serving the models loaded");
                    self.lifecycle.update(|s| {
                        s.reachable = false;
                        s.last_error = Some(e.to_string());
                    });
                }
            }
            tokio::time::sleep(self.config.poll).await;
        }
    }

    /// A model served now that `stages` no longer has, if any.
    fn vanished(&self, stages: &BTreeMap<String, Stages>) -> Option<String> {
        self.applied
            .as_ref()?
            .keys()
            .find(|name| !stages.contains_key(*name))
            .cloned()
    }

    /// Loads what `stages` needs and publishes the model set it describes.
    async fn apply(&mut self, stages: BTreeMap<String, Stages>) {
        let mut errors = Vec::new();
        let mut wanted: Vec<(String, String)> = Vec::new();
        for (name, st) in &stages {
            let versions = st
                .production
                .iter()
                .chain(st.canary.iter().map(|c| &c.version))
                .chain(st.shadow.iter().map(|c| &c.version));
            for v in versions {
                wanted.push((name.clone(), v.clone()));
            }
        }
        for key in &self.config.experiment_versions {
            if !wanted.contains(key) {
                wanted.push(key.clone());
            }
        }
        for key in &wanted {
            if self.loaded.contains_key(key) {
                continue;
            }
            match self.load(&key.0, &key.1).await {
                Ok(model) => {
                    self.loaded.insert(key.clone(), model);
                }
                Err(e) => {
                    tracing::warn!(model = %key.0, version = %key.1, error = %e, "version not loaded; keeping what serves");
                    errors.push(e);
                }
            }
        }
        let set = self.build(&stages);
        // Versions no longer wanted are dropped here; their memory goes when the requests that
        // pinned the old set end.
        self.loaded.retain(|k, _| wanted.contains(k));
        self.track_canaries(&stages);
        self.engine.set_models(set);
        tracing::info!(models = stages.len(), "published a new model set");
        self.lifecycle.update(|s| {
            s.serving = stages.clone();
            s.swaps += 1;
            s.last_error = (!errors.is_empty()).then(|| errors.join("; "));
        });
        // A version that failed to load (a file missing or corrupt in the registry, a network
        // error) is tried again with a growing pause, so a repaired registry heals by itself.
        self.retry = if errors.is_empty() {
            None
        } else {
            let pause = self
                .retry
                .map_or(RETRY_FIRST, |(_, p)| (p * 2).min(RETRY_MAX));
            Some((Instant::now() + pause, pause))
        };
        self.applied = Some(stages);
    }

    /// Fetches, loads (checksums and golden rows) and warms up one version.
    async fn load(&self, name: &str, version: &str) -> Result<Model, String> {
        let dir = self
            .registry
            .fetch(name, version, &self.config.cache_dir)
            .await
            .map_err(|e| e.to_string())?;
        let model =
            load_bundle(&dir).map_err(|e| format!("{name} {version} ({}): {e}", dir.display()))?;
        warm_up(&model, &dir);
        Ok(model)
    }

    /// The world's model set with the registry's versions in place.
    fn build(&self, stages: &BTreeMap<String, Stages>) -> ModelSet {
        let loaded = |name: &str, version: &str| {
            self.loaded
                .get(&(name.to_string(), version.to_string()))
                .cloned()
        };
        let bind = |m: Model| BoundModel::bind(m, &self.schema).ok();
        // A slot whose production version is not loaded (it failed to load, or a registry read
        // mid-change no longer names it) keeps the primary it serves now, not the world's own.
        let serving = self.engine.models();
        let current = |name: &str| {
            std::iter::once(&serving.ranker)
                .chain(&serving.scorers)
                .find(|s| s.name() == name)
                .and_then(|s| s.primary().cloned())
        };
        let mut set = self.base.clone();
        let mut used = Vec::new();
        for slot in std::iter::once(&mut set.ranker).chain(set.scorers.iter_mut()) {
            let name = slot.name();
            let Some(st) = stages.get(&name) else {
                continue;
            };
            used.push(name.clone());
            let mut next = slot.clone();
            if let Some(m) = st
                .production
                .as_deref()
                .and_then(|v| loaded(&name, v))
                .and_then(bind)
                .or_else(|| current(&name))
            {
                next = next.with_primary(m);
            }
            let variant = |share: &Option<podium_registry::Share>| {
                share.as_ref().and_then(|c| {
                    loaded(&name, &c.version)
                        .and_then(bind)
                        .map(|m| Variant::new(m, c.percent))
                })
            };
            let alternates = self
                .config
                .experiment_versions
                .iter()
                .filter(|(m, _)| *m == name)
                .filter_map(|(_, v)| loaded(&name, v).and_then(bind))
                .collect();
            *slot = next
                .with_canary(variant(&st.canary))
                .with_shadow(variant(&st.shadow))
                .with_alternates(alternates);
        }
        // Registry models no slot uses are served over the Open Inference Protocol.
        for (name, st) in stages {
            if used.contains(name) {
                continue;
            }
            let versions = st
                .production
                .iter()
                .chain(st.canary.iter().map(|c| &c.version))
                .chain(st.shadow.iter().map(|c| &c.version));
            for v in versions {
                if let Some(m) = loaded(name, v) {
                    set.serve_only
                        .retain(|o| !(o.name() == name && o.version() == v));
                    set.serve_only.push(m);
                }
            }
        }
        set
    }

    fn track_canaries(&mut self, stages: &BTreeMap<String, Stages>) {
        let stats = self.engine.models().stats.clone();
        self.canaries.retain(|name, w| {
            stages
                .get(name)
                .and_then(|s| s.canary.as_ref())
                .is_some_and(|c| c.version == w.version)
        });
        for (name, st) in stages {
            let (Some(canary), Some(production)) = (&st.canary, &st.production) else {
                continue;
            };
            if self.canaries.contains_key(name) {
                continue;
            }
            stats.reset(name, &canary.version);
            self.canaries.insert(
                name.clone(),
                CanaryWindow {
                    version: canary.version.clone(),
                    percent: canary.percent,
                    alerted: Vec::new(),
                    started: Instant::now(),
                    production_version: production.clone(),
                    production_at_start: stats.get(name, production),
                },
            );
        }
    }

    /// Judges every canary against production over its window.
    async fn guard(&mut self) {
        let stats = self.engine.models().stats.clone();
        let rules = self.config.guardrails.rules.clone();
        let now = now_ms();
        let calibration = self.engine.calibration().report(now as i64, 1);
        let outcomes = |name: &str, version: &str| {
            let rows: Vec<_> = calibration
                .iter()
                .filter(|r| r.model == name && r.version == version && r.segment == "all")
                .collect();
            (!rows.is_empty()).then(|| {
                (
                    rows.iter().map(|r| r.observed).sum::<f64>(),
                    rows.iter().map(|r| r.predicted).sum::<f64>(),
                )
            })
        };
        let mut verdicts = Vec::new();
        let mut comparisons = Vec::new();
        for (name, w) in &mut self.canaries {
            let canary = stats.get(name, &w.version);
            let production = stats
                .get(name, &w.production_version)
                .map(|now| window(&now, w.production_at_start.as_ref()));
            let mut comparison = CanaryComparison {
                model: name.clone(),
                canary_version: w.version.clone(),
                production_version: w.production_version.clone(),
                percent: w.percent,
                window_s: w.started.elapsed().as_secs_f64(),
                batches: (
                    canary.as_ref().map_or(0, |c| c.batches),
                    production.as_ref().map_or(0, |p| p.batches),
                ),
                verdict: "waiting".into(),
                tests: Vec::new(),
            };
            let (Some(canary), Some(production)) = (canary, production) else {
                comparisons.push(comparison);
                continue;
            };
            if canary.batches < rules.min_batches || production.batches < rules.min_batches {
                comparisons.push(comparison);
                continue;
            }
            let tests = podium_monitor::regression::evaluate(
                &rules,
                &side(&canary, outcomes(name, &w.version)),
                &side(&production, outcomes(name, &w.production_version)),
            );
            let breach = tests
                .iter()
                .find(|t| t.breach && t.action == Action::Rollback);
            comparison.verdict = if tests.iter().any(|t| t.breach) {
                "breach".into()
            } else {
                "ok".into()
            };
            if let Some(t) = breach {
                verdicts.push((name.clone(), w.version.clone(), t.rule, t.detail.clone()));
            } else {
                for t in tests.iter().filter(|t| t.breach) {
                    if !w.alerted.contains(&t.rule) {
                        w.alerted.push(t.rule);
                        verdicts.push((
                            name.clone(),
                            w.version.clone(),
                            t.rule,
                            format!("alert only: {}", t.detail),
                        ));
                    }
                }
                match self.config.guardrails.promote_after {
                    Some(after) if w.started.elapsed() >= after => verdicts.push((
                        name.clone(),
                        w.version.clone(),
                        "clean",
                        format!(
                            "no breach in {} s over {} batches",
                            w.started.elapsed().as_secs(),
                            canary.batches
                        ),
                    )),
                    _ => {}
                }
            }
            comparison.tests = tests;
            comparisons.push(comparison);
        }
        comparisons.sort_by(|a, b| a.model.cmp(&b.model));
        self.lifecycle.update(|s| s.canaries = comparisons);
        for (name, version, rule, detail) in verdicts {
            let outcome = if rule == "clean" {
                self.registry
                    .promote(
                        &name,
                        &version,
                        Stage::Production,
                        None,
                        "guardrail",
                        &detail,
                    )
                    .await
                    .map(|_| "promote".to_string())
            } else if detail.starts_with("alert only") {
                Ok("alert".to_string())
            } else {
                self.registry
                    .rollback(&name, "guardrail", &format!("{rule}: {detail}"))
                    .await
                    .map(|_| "rollback".to_string())
            };
            let action = outcome.unwrap_or_else(|e| format!("failed: {e}"));
            tracing::warn!(model = %name, version = %version, rule = %rule, detail = %detail, action = %action, "canary guardrail");
            if action != "alert" {
                self.canaries.remove(&name);
            }
            self.lifecycle.update(|s| {
                if action != "alert" {
                    s.canaries.retain(|c| c.model != name);
                }
                s.alerts.push(Alert {
                    at_ms: now_ms(),
                    model: name.clone(),
                    version: version.clone(),
                    rule: rule.to_string(),
                    detail: detail.clone(),
                    action,
                });
                let excess = s.alerts.len().saturating_sub(200);
                s.alerts.drain(..excess);
            });
        }
    }
}

/// One side of a canary comparison from a version's live figures and its joined outcomes
/// (observed, Σ predicted).
fn side(s: &StatsSnapshot, outcomes: Option<(f64, f64)>) -> Side {
    Side {
        batches: s.batches,
        failures: s.failures,
        latencies_us: s.recent_us.iter().map(|&v| v as f64).collect(),
        p99_us: s.p99_us as f64,
        bins: s.bins.clone(),
        outcomes,
    }
}

/// Production's figures over a canary's window: now minus what they were when it started.
fn window(now: &StatsSnapshot, start: Option<&StatsSnapshot>) -> StatsSnapshot {
    let Some(start) = start else {
        return now.clone();
    };
    let batches = now.batches.saturating_sub(start.batches);
    let failures = now.failures.saturating_sub(start.failures);
    StatsSnapshot {
        batches,
        failures,
        rows: now.rows.saturating_sub(start.rows),
        error_rate: if batches == 0 {
            0.0
        } else {
            failures as f64 / batches as f64
        },
        p50_us: now.p50_us,
        p99_us: now.p99_us,
        bins: now
            .bins
            .iter()
            .zip(&start.bins)
            .map(|(a, b)| a.saturating_sub(*b))
            .collect(),
        recent_us: now.recent_us.clone(),
    }
}

/// Runs the bundle's golden rows, tiled to a batch of 100, until the batch time is steady: the
/// median of the last five within 10 % of the one before (at most 50 rounds), so that the first
/// requests do not pay for cold caches.
fn warm_up(model: &Model, dir: &std::path::Path) {
    let names: Vec<String> = model
        .manifest()
        .inputs
        .iter()
        .map(|i| i.name.clone())
        .collect();
    let golden = read_golden(&dir.join("golden.csv"), &names).unwrap_or_default();
    if golden.is_empty() {
        return;
    }
    let rows = 100;
    let columns: Vec<Vec<f32>> = (0..names.len())
        .map(|c| {
            (0..rows)
                .map(|r| golden[r % golden.len()].inputs[c])
                .collect()
        })
        .collect();
    let slices: Vec<&[f32]> = columns.iter().map(Vec::as_slice).collect();
    let Ok(cols) = Columns::new(&slices, rows) else {
        return;
    };
    let mut out = vec![0.0f32; rows];
    let mut times: Vec<Duration> = Vec::new();
    let mut last_median: Option<f64> = None;
    for _ in 0..50 {
        let t = Instant::now();
        if model.predict(&cols, &mut out).is_err() {
            return;
        }
        times.push(t.elapsed());
        if times.len() >= 5 {
            let mut recent = times[times.len() - 5..].to_vec();
            recent.sort();
            let median = recent[2].as_secs_f64();
            if let Some(prev) = last_median {
                if ((median - prev) / prev).abs() < 0.1 {
                    return;
                }
            }
            last_median = Some(median);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(batches: u64, failures: u64, bins: Vec<u64>) -> StatsSnapshot {
        StatsSnapshot {
            batches,
            failures,
            rows: bins.iter().sum(),
            error_rate: failures as f64 / batches as f64,
            p50_us: 250,
            p99_us: 500,
            bins,
            recent_us: vec![300; 10],
        }
    }

    /// Echoes its input after `delay` of work.
    #[derive(Debug)]
    struct Timed(Duration);

    impl podium_model::Runtime for Timed {
        fn num_inputs(&self) -> usize {
            1
        }
        fn predict_raw(
            &self,
            input: &Columns<'_>,
            out: &mut [f32],
        ) -> Result<(), podium_model::ModelError> {
            let t = Instant::now();
            while t.elapsed() < self.0 {
                std::hint::spin_loop();
            }
            out.copy_from_slice(input.column(0));
            Ok(())
        }
    }

    fn bound(version: &str, delay: Duration, schema: &FrameSchema) -> BoundModel {
        use podium_model::manifest::{OutputSpec, ServingSpec};
        let manifest = podium_model::Manifest {
            name: "m".into(),
            version: version.into(),
            kind: podium_model::ModelKind::Linear,
            task: "ctr".into(),
            weights: "w".into(),
            inputs: vec![podium_model::InputSpec {
                name: "x".into(),
                kind: "f32".into(),
                default: None,
            }],
            output: OutputSpec {
                link: podium_model::Link::Identity,
                ..OutputSpec::default()
            },
            serving: ServingSpec {
                latency_budget_us: 100_000,
                fallback_prior: 0.1,
            },
            calibration: None,
        };
        let model = Model::new(manifest, Arc::new(Timed(delay))).unwrap();
        BoundModel::bind(model, schema).unwrap()
    }

    #[test]
    fn a_canary_with_added_latency_is_flagged_from_its_live_figures() {
        let schema = Arc::new(FrameSchema::new(["x"]));
        let stats = podium_serving::ModelStats::default();
        let mut frame = podium_core::FeatureFrame::new(schema.clone(), 8);
        frame.column_mut(0).fill(0.1);
        let score = |m: &BoundModel, n: usize| {
            let s = stats.of_model(m.model());
            for _ in 0..n {
                let t = Instant::now();
                let answer = m.try_score(&frame);
                s.record_scored(t.elapsed(), m, &frame, answer.as_deref().ok());
            }
        };
        let production = bound("1", Duration::from_micros(300), &schema);
        let same = bound("2", Duration::from_micros(300), &schema);
        let slow = bound("3", Duration::from_micros(900), &schema);
        score(&production, 400);
        score(&same, 250);
        score(&slow, 250);
        let rules = Rules {
            min_batches: 200,
            ..Rules::default()
        };
        let snap = |v: &str| side(&stats.get("m", v).unwrap(), None);
        let judged = |v: &str| {
            podium_monitor::regression::evaluate(&rules, &snap(v), &snap("1"))
                .into_iter()
                .filter(|t| t.breach)
                .map(|t| t.rule)
                .collect::<Vec<_>>()
        };
        assert!(
            !judged("2").contains(&"latency"),
            "same speed flagged: {:?}",
            podium_monitor::regression::evaluate(&rules, &snap("2"), &snap("1"))
        );
        assert!(judged("3").contains(&"latency"), "{:?}", judged("3"));
    }

    #[test]
    fn production_is_judged_over_the_canary_window_only() {
        let start = snap(1000, 10, vec![100, 0]);
        let now = snap(1500, 10, vec![100, 500]);
        let w = window(&now, Some(&start));
        assert_eq!(
            (w.batches, w.failures, w.bins.clone()),
            (500, 0, vec![0, 500])
        );
        assert_eq!(w.recent_us, now.recent_us);
    }
}
