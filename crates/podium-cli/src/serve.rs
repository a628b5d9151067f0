//! `podium serve`: bind, load (or train) the demo world, or load (or generate) the standard
//! workload, in the background, then become ready.

use anyhow::Context;
use clap::{Args, ValueEnum};
use podium_engine::{build_demo_with, build_standard_with, Engine, EngineConfig, FeatureSetup};
use podium_features::offline::DecisionRow;
use podium_features::offline::RollPolicy;
use podium_features::stream::Event;
use podium_features::ServedRow;
use podium_features::{
    Aggregator, CacheConfig, CachedStore, Definitions, MemoryStore, NatsConfig, OnlineStore,
    RedisStore,
};
use podium_log::MemoryLog;
use podium_log::{DecisionLogSink, DecisionSink, FeatureLogSink, ParquetLog};
use podium_server::{AdmissionConfig, AppState};
use podium_serving::ComputePool;
use podium_sim::demo::DemoConfig;
use podium_sim::standard;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Options of `podium serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// A TOML file of these options (keys in snake_case; a `[fleet]` table with `redis`,
    /// `nats` and `object_store` switches every backend to its distributed form; see
    /// deploy/podium.toml). Flags on the command line override it. Also PODIUM_CONFIG.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address of the decision listener (decide, OpenRTB, VAST, events, inference, metrics).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Address of the admin listener (publish, promote, rollback, forecasts, the audit trail):
    /// admin routes are served here only, never on --listen. The default is loopback on a free
    /// port, printed at start; set a fixed one in production.
    #[arg(long, default_value = "127.0.0.1:0")]
    admin_listen: SocketAddr,
    /// The admin audit trail (JSON Lines, one record per change, synced before the answer)
    /// [default: <data-dir>/admin-audit.jsonl].
    #[arg(long)]
    audit_log: Option<PathBuf>,
    /// Where viewers' impressions are counted for frequency caps: `memory` (this process) or
    /// `redis://host:port[/db]`, shared by a fleet so that a cap holds across servers.
    #[arg(long, default_value = "memory")]
    frequency_store: String,
    /// This server's name in the fleet: its NATS consumer (`podium-features-<id>`) is durable
    /// under it, so a restart resumes where it stopped; letters, digits, `-` and `_`
    /// [default: <hostname>-<listen port>].
    #[arg(long, env = "PODIUM_SERVER_ID")]
    server_id: Option<String>,
    /// Which world to serve. Unset: the standard workload if --data-dir holds a workload.json
    /// (as `podium sim gen` writes), else the demo.
    #[arg(long, value_enum)]
    workload: Option<ServeWorkload>,
    /// Directory for the marketplace file and model bundles; created and filled at first start
    /// [default: ./podium-data, or ./podium-data-standard with --workload standard].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Where budgets are shared: `memory` (this process) or `redis://host:port`, the ledger a
    /// fleet of servers takes budget leases from, so that together they cannot overspend.
    #[arg(long, default_value = "memory")]
    budget_ledger: String,
    /// Servers in the fleet sharing the budget ledger (sizes the leases each takes).
    #[arg(long, default_value_t = 1)]
    fleet_size: u32,
    /// This server's address as players and exchanges reach it, for the tracking and notice
    /// URLs in VAST documents and bid responses [default: http://<listen address>].
    #[arg(long)]
    public_url: Option<String>,
    /// Where creatives without a `media_url` of their own are served from
    /// (`<base>/<creative id>.mp4`) [default: <public url>/creatives].
    #[arg(long)]
    creative_base_url: Option<String>,
    /// Default request deadline in milliseconds, for requests that set no `tmax_ms`.
    #[arg(long, default_value_t = 20)]
    tmax_ms: u64,
    /// Async I/O threads for HTTP and store calls (0 = one per core).
    #[arg(long, default_value_t = 0)]
    io_threads: usize,
    /// Compute threads for model scoring (0 = one per core).
    #[arg(long, default_value_t = 0)]
    compute_threads: usize,
    /// Seed of the generated world [default: 1, or the seed in workload.json].
    #[arg(long)]
    seed: Option<u64>,
    /// Decisions processed at once; more wait in a bounded queue or are shed (0 = 4 per
    /// compute thread).
    #[arg(long, default_value_t = 0)]
    max_in_flight: usize,
    /// Requests allowed to wait for a slot; beyond it they are shed at once (0 with
    /// --max-in-flight 0 = four times the in-flight limit).
    #[arg(long)]
    max_queue: Option<usize>,
    /// Longest wait for a slot before a request is shed, in milliseconds (never more than half
    /// the request's deadline).
    #[arg(long, default_value_t = 5)]
    max_queue_wait_ms: u64,
    /// Decision records kept in memory for `GET /v1/decisions/recent`.
    #[arg(long, default_value_t = 10_000)]
    log_capacity: usize,
    /// Model registry to serve from (`file:///path`, a path, or `s3://bucket/prefix`): every
    /// model with a production version serves it, with its canary and shadow beside it; new
    /// versions load in the background and swap in without a pause.
    #[arg(long, env = "PODIUM_REGISTRY")]
    registry: Option<String>,
    /// How often the registry is read, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    registry_poll_ms: u64,
    /// Bearer token of the admin API (`/v1/admin/...`); without one the admin API is off.
    #[arg(long, env = "PODIUM_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Canary regression rules (TOML: `min_batches` and `[[rule]]` entries of metric latency |
    /// latency_p99 | errors | score_shift | calibration, alpha, threshold, action rollback |
    /// alert; see docs/monitoring.md) [default: the built-in rules].
    #[arg(long)]
    monitor_rules: Option<PathBuf>,
    /// Canary guardrail: batches a canary (and production) score before it is judged
    /// [default: 200, or the rule file's min_batches].
    #[arg(long)]
    guardrail_min_batches: Option<u64>,
    /// Canary guardrail: largest prediction shift (PSI) against production before rollback
    /// (the score_shift rules' threshold) [default: 0.25, or the rule file's].
    #[arg(long)]
    guardrail_max_psi: Option<f64>,
    /// Promote a canary after this many seconds without a breach (0 = never automatically).
    #[arg(long, default_value_t = 0)]
    canary_promote_after_s: u64,
    /// A/B experiments and holdouts (TOML: layers of arms that serve other model versions or
    /// auction parameters; see docs/registry.md).
    #[arg(long)]
    experiments: Option<PathBuf>,
    /// Feature definitions (TOML; docs/features.md) [default: <data-dir>/features.toml, written
    /// with the world's defaults at first start].
    #[arg(long)]
    features: Option<PathBuf>,
    /// Where feature events come from: `http` (POST /v1/events into the in-process bus) or a
    /// NATS JetStream server, `nats://host:port` (durable consumer `podium-features` on subject
    /// `podium.events`).
    #[arg(long, default_value = "http")]
    events: String,
    /// Online feature store: `memory` (embedded, snapshot to --feature-snapshot), or Redis:
    /// `redis://host:port[/db]`, `redis+cluster://host:port[,host:port…]`.
    #[arg(long, default_value = "memory")]
    feature_store: String,
    /// Snapshot file of the embedded store: loaded at start when present (a warm restart),
    /// written every --feature-snapshot-interval-s and at shutdown; `off` to keep none
    /// [default: <data-dir>/features.snapshot].
    #[arg(long)]
    feature_snapshot: Option<String>,
    /// Seconds between snapshots of the embedded store.
    #[arg(long, default_value_t = 60)]
    feature_snapshot_interval_s: u64,
    /// With Redis: how long line items', advertisers' and content's features are cached in
    /// process, in milliseconds (0: no cache).
    #[arg(long, default_value_t = 30_000)]
    feature_cache_ttl_ms: u64,
    /// Directory of the Parquet logs: `decisions/` (every decision: request, features, models,
    /// ads, prices, timings; docs/decision-log.md), `features/` (the stored feature values
    /// served with each decision) and `events/` (the events the stream read), for `podium
    /// features consistency`; `off` for none; or object storage, `s3://bucket/prefix` (AWS_*
    /// environment for credentials and endpoint) or `file:///path`: files are written under
    /// <data-dir>/logs-spool and each, once closed, uploaded there and removed (a failed upload
    /// is retried every 10 s) [default: <data-dir>/logs].
    #[arg(long)]
    log_dir: Option<String>,
    /// Decision log the avails forecast (`/v1/admin/forecast/...`) learns from: a directory
    /// holding `decisions/` (e.g. the fleet's logs gathered in one place) [default: this
    /// server's --log-dir when it is local]. Its live-event calendar is `events.toml` of the
    /// data directory, else beside the log.
    #[arg(long)]
    forecast_log: Option<PathBuf>,
    /// Export decision traces (a `decide` span with a span per stage) over OTLP/HTTP (JSON) to
    /// this collector: a base URL (`http://collector:4318`) or the full traces URL.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// Share of decisions whose traces are exported (with --otlp-endpoint).
    #[arg(long, default_value_t = 0.01)]
    otlp_sample_ratio: f64,
    /// Events more than this many seconds behind the newest are rejected as late.
    #[arg(long, default_value_t = 3600)]
    event_lateness_s: u64,
    /// Exploration: the share of ad breaks whose lead ad is drawn at random among the allowed
    /// best-effort candidates, each lead's propensity logged for counterfactual estimates
    /// (`podium replay`); 0 = off.
    #[arg(long, default_value_t = 0.0)]
    exploration: f64,
}

/// The worlds `podium serve` can serve.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServeWorkload {
    /// 400 line items, 10,000 viewers, three small models trained at first start.
    Demo,
    /// ARCHITECTURE.md §7: 5,000 line items, 1,000,000 viewers, a linear ranker, five 300-tree
    /// GBDTs and three MLPs, generated from --seed at first start.
    Standard,
}

/// The world to serve, with its directory, once the options are resolved.
pub(crate) enum World {
    Demo { dir: PathBuf, seed: u64 },
    Standard { dir: PathBuf, seed: u64 },
}

impl World {
    fn resolve(args: &ServeArgs) -> anyhow::Result<Self> {
        Self::of(args.workload, args.data_dir.clone(), args.seed)
    }

    /// The world `podium serve` would serve with these options.
    pub(crate) fn of(
        workload: Option<ServeWorkload>,
        data_dir: Option<PathBuf>,
        seed: Option<u64>,
    ) -> anyhow::Result<Self> {
        let dir = |default: &str| data_dir.clone().unwrap_or_else(|| PathBuf::from(default));
        Ok(match workload {
            Some(ServeWorkload::Demo) => World::Demo {
                dir: dir("./podium-data"),
                seed: seed.unwrap_or(1),
            },
            Some(ServeWorkload::Standard) => World::Standard {
                dir: dir("./podium-data-standard"),
                seed: seed.unwrap_or(1),
            },
            None => {
                let dir = dir("./podium-data");
                match standard::read_spec(&dir)? {
                    Some(spec) => World::Standard {
                        seed: seed.unwrap_or(spec.seed),
                        dir,
                    },
                    None => World::Demo {
                        dir,
                        seed: seed.unwrap_or(1),
                    },
                }
            }
        })
    }

    pub(crate) fn dir(&self) -> &Path {
        match self {
            World::Demo { dir, .. } | World::Standard { dir, .. } => dir,
        }
    }

    /// Builds the engine; blocking (reads files, may train or generate, fills the store).
    /// Returns it with its feature definitions.
    pub(crate) fn build(
        &self,
        config: EngineConfig,
        sink: Arc<dyn DecisionSink>,
        pool: ComputePool,
        features: &FeatureSetup,
    ) -> anyhow::Result<(Engine, Arc<Definitions>)> {
        match self {
            World::Demo { dir, seed } => {
                let demo = DemoConfig {
                    seed: *seed,
                    ..DemoConfig::default()
                };
                Ok(build_demo_with(dir, &demo, config, sink, pool, features)?)
            }
            World::Standard { dir, seed } => {
                let started = Instant::now();
                let (spec, generated) = standard::ensure(dir, *seed)?;
                if generated {
                    tracing::info!(
                        seed = spec.seed,
                        dir = %dir.display(),
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "generated the standard workload"
                    );
                }
                Ok(build_standard_with(
                    dir, None, config, sink, pool, features,
                )?)
            }
        }
    }
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    if !(0.0..=1.0).contains(&args.exploration) {
        anyhow::bail!(
            "--exploration must be between 0 and 1, got {}",
            args.exploration
        );
    }
    if args.tmax_ms == 0 || args.tmax_ms > 10_000 {
        anyhow::bail!(
            "--tmax-ms must be between 1 and 10000, got {}",
            args.tmax_ms
        );
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if args.io_threads > 0 {
        builder.worker_threads(args.io_threads);
    }
    let runtime = builder
        .enable_all()
        .thread_name("podium-io")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(args))
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let world = World::resolve(&args)?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    let admin_listener = tokio::net::TcpListener::bind(args.admin_listen)
        .await
        .with_context(|| format!("binding the admin listener {}", args.admin_listen))?;
    let admin_addr = admin_listener.local_addr()?;
    let pool = ComputePool::new(args.compute_threads);
    let mut admission = AdmissionConfig::for_threads(pool.threads());
    if args.max_in_flight > 0 {
        admission = AdmissionConfig {
            max_in_flight: args.max_in_flight,
            reserved_for_priority: args.max_in_flight / 4,
            max_queue: args.max_in_flight * 4,
            max_wait: admission.max_wait,
        };
    }
    if let Some(q) = args.max_queue {
        admission.max_queue = q;
    }
    admission.max_wait = Duration::from_millis(args.max_queue_wait_ms);
    let state = AppState::new(admission, Duration::from_millis(args.tmax_ms));
    if let Some(endpoint) = &args.otlp_endpoint {
        let tracer = podium_server::otlp::DecisionTracer::start(&podium_server::otlp::OtlpConfig {
            endpoint: endpoint.clone(),
            sample_ratio: args.otlp_sample_ratio,
        })
        .map_err(|e| anyhow::anyhow!(e))?;
        state.set_tracer(tracer);
    }
    state.set_admin_url(format!("http://{admin_addr}"));
    let log = MemoryLog::spawn(args.log_capacity.max(1));
    state.set_log(log.clone());
    let public = args
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{addr}"));
    if !(public.starts_with("http://") || public.starts_with("https://")) {
        anyhow::bail!("--public-url must start with http:// or https://, got {public:?}");
    }
    state.set_public_urls(podium_server::adserving::PublicUrls::new(
        &public,
        args.creative_base_url.as_deref(),
    ));

    // Print before loading so a caller learns the port at once; /readyz turns 200 when warm.
    // Write errors are ignored: a caller that closed our stdout must not take the server down.
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "podium listening on http://{addr}");
    let _ = writeln!(out, "podium admin API on http://{admin_addr}");
    let _ = writeln!(
        out,
        "try: curl -s http://{addr}/v1/decide -H 'content-type: application/json' -d '{{\"request_id\":\"r-1\",\"user\":{{\"id\":\"u-123\",\"country\":\"US\",\"device\":\"tv\"}},\"content\":{{\"id\":\"title-42\",\"genre\":\"drama\",\"live\":false}},\"breaks\":[{{\"id\":\"b1\",\"position\":\"midroll\",\"max_ads\":4,\"max_duration_s\":90}}]}}'"
    );
    let _ = out.flush();
    drop(out);

    let loader_state = state.clone();
    let settings_state = state.clone();
    let traces = state.clone();
    let data_dir = world.dir().to_path_buf();
    let config = EngineConfig {
        default_tmax: Duration::from_millis(args.tmax_ms),
        exploration: args.exploration,
        ..EngineConfig::default()
    };
    let registry = match &args.registry {
        Some(url) => Some(
            podium_registry::Registry::open(url).with_context(|| format!("--registry {url}"))?,
        ),
        None => None,
    };
    let admin = match (&registry, &args.admin_token) {
        (Some(r), Some(token)) if !token.is_empty() => {
            podium_server::admin_router(r.clone(), token.clone())
        }
        _ => axum::Router::new(),
    };
    // Avails forecasts read the server's own decision log and calendar (`events.toml` of the
    // data directory); behind the admin token when there is one.
    let admin = match args
        .forecast_log
        .clone()
        .or_else(|| log_dir_of(&args, world.dir()))
    {
        Some(log_dir) => admin.merge(podium_server::forecast_router(
            state.clone(),
            podium_server::ForecastConfig {
                calendar: Some(world.dir().join("events.toml")).filter(|p| p.is_file()),
                log_dir,
                token: args.admin_token.clone().filter(|t| !t.is_empty()),
            },
        )),
        None => admin,
    };
    let experiments = match &args.experiments {
        Some(path) => Some(podium_engine::Experiments::read(path)?),
        None => None,
    };
    let watch = podium_lifecycle::WatchConfig {
        experiment_versions: experiments
            .as_ref()
            .map(|e| e.model_versions())
            .unwrap_or_default(),
        poll: Duration::from_millis(args.registry_poll_ms.max(10)),
        cache_dir: data_dir.join("registry-cache"),
        guardrails: podium_lifecycle::Guardrails {
            rules: monitor_rules(&args)?,
            promote_after: (args.canary_promote_after_s > 0)
                .then(|| Duration::from_secs(args.canary_promote_after_s)),
        },
    };
    let events = EventSource::parse(&args.events)?;
    let budget_ledger: Option<Arc<dyn podium_pacing::BudgetLedger>> =
        match args.budget_ledger.as_str() {
            "memory" => None,
            url if url.starts_with("redis://") => Some(Arc::new(
                podium_pacing::RedisLedger::connect(url)
                    .await
                    .with_context(|| format!("--budget-ledger {url}: is Redis running?"))?,
            )),
            other => anyhow::bail!(
                "--budget-ledger must be `memory` or redis://host:port, got {other:?}"
            ),
        };
    // Run-time settings (budgets, experiments) live beside the budget ledger: shared in a fleet.
    let settings: Arc<dyn podium_pacing::settings::SettingsStore> =
        if args.budget_ledger.starts_with("redis://") {
            Arc::new(
                podium_pacing::settings::RedisSettings::connect(&args.budget_ledger)
                    .await
                    .map_err(|e| anyhow::anyhow!("--budget-ledger: {e}"))?,
            )
        } else {
            Arc::new(podium_pacing::settings::MemorySettings::default())
        };
    let startup_experiments = match &args.experiments {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading --experiments {}", path.display()))?,
        ),
        None => None,
    };
    anyhow::ensure!(
        (1..=10_000).contains(&args.fleet_size),
        "--fleet-size must be between 1 and 10000"
    );
    let fleet_size = args.fleet_size;
    let fleet = StreamLocal::of(&args, &data_dir, addr.port())?;
    let frequency_store: Option<Arc<dyn podium_pacing::FrequencyStore>> =
        match args.frequency_store.as_str() {
            "memory" => None,
            url if url.starts_with("redis://") => Some(Arc::new(
                podium_pacing::RedisFrequencyStore::connect(
                    url,
                    podium_auction::MAX_CAP_WINDOW_S as i64 * 1000,
                )
                .await
                .map_err(|e| anyhow::anyhow!("--frequency-store: {e}: is Redis running?"))?,
            )),
            other => anyhow::bail!(
                "--frequency-store must be `memory` or redis://host:port, got {other:?}"
            ),
        };
    let (store, snapshot) = open_store(&args, &data_dir).await?;
    let logs = open_logs(&args, &data_dir, log)?;
    let features = FeatureSetup {
        definitions: args.features.clone(),
        store: Some(store),
    };
    let lateness = Duration::from_secs(args.event_lateness_s);
    let (sink, events_log, served_log, decision_log, shipper) = logs;
    if let Some(s) = &shipper {
        s.spawn(Duration::from_secs(10));
    }
    if let Some(log) = &decision_log {
        state.set_decision_log(log.clone());
    }
    let flush_logs = (served_log, events_log.clone(), decision_log);
    let (follow_settings, follow_experiments) = (settings.clone(), startup_experiments.clone());
    let loader = tokio::spawn(async move {
        let started = Instant::now();
        let (engine, definitions) =
            tokio::task::spawn_blocking(move || world.build(config, sink, pool, &features))
                .await
                .context("loading the world")??;
        if let Some(store) = frequency_store {
            engine.use_frequency_store(store);
        }
        start_stream(
            &loader_state,
            &engine,
            definitions,
            lateness,
            events,
            events_log,
            &fleet,
        );
        engine.warm_up(20).await;
        tracing::info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "models loaded and warm; ready"
        );
        if let Some(e) = experiments {
            engine.set_experiments(e);
        }
        if let Some(registry) = registry {
            let lifecycle = podium_lifecycle::spawn(
                engine.clone(),
                registry,
                (*engine.models()).clone(),
                watch,
            )
            .context("starting the registry watcher")?;
            // Ready once the registry's versions serve (or it proved unreachable: then the
            // world's own models serve and /readyz says why).
            let waiting = Instant::now();
            while lifecycle.status().swaps == 0
                && lifecycle.status().last_error.is_none()
                && waiting.elapsed() < Duration::from_secs(60)
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            loader_state.set_lifecycle(lifecycle);
        }
        if let Some(ledger) = budget_ledger {
            engine.use_budget_ledger(ledger, fleet_size);
        }
        // The pacing control loop: leases, spend reports and controllers, every second.
        let pacer = engine.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(1));
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                every.tick().await;
                pacer.pacing_tick(podium_features::now_ms()).await;
            }
        });
        engine.pacing_tick(podium_features::now_ms()).await;
        tokio::spawn(podium_server::settings::follow(
            engine.clone(),
            follow_settings,
            follow_experiments,
        ));
        loader_state.set_engine(engine);
        anyhow::Ok(())
    });

    // The admin API on its own socket: nothing under /v1/admin answers on the decision one.
    let audit_path = args
        .audit_log
        .clone()
        .unwrap_or_else(|| data_dir.join("admin-audit.jsonl"));
    let audit = podium_server::AuditLog::open(&audit_path, args.admin_token.clone())
        .with_context(|| format!("opening the admin audit trail {}", audit_path.display()))?;
    let admin = admin.merge(podium_server::settings::settings_router(
        podium_server::settings::SettingsAdmin {
            app: settings_state,
            store: settings,
            token: args.admin_token.clone().filter(|t| !t.is_empty()),
            startup_experiments,
        },
    ));
    let admin_server = axum::serve(
        admin_listener,
        podium_server::admin_app(admin, audit).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown_signal());
    let admin_task = tokio::spawn(async move {
        if let Err(e) = admin_server.await {
            tracing::error!(error = %e, "the admin listener stopped");
        }
    });
    let mut server = std::pin::pin!(podium_server::serve_with(
        listener,
        state,
        axum::Router::new(),
        shutdown_signal()
    ));
    tokio::select! {
        served = &mut server => return served.context("serving HTTP"),
        loaded = loader => {
            // A failed load stops the process with the reason, rather than serving 503s forever.
            loaded
                .context("loader task")?
                .with_context(|| format!("starting on data directory {}", data_dir.display()))?;
        }
    }
    let served = server.await.context("serving HTTP");
    admin_task.abort();
    let _ = tokio::task::spawn_blocking(move || traces.flush_traces()).await;
    stop_stream().await;
    if let Some(s) = &snapshot {
        s.save_now().await;
    }
    let _ = tokio::task::spawn_blocking(move || {
        if let Some(l) = &flush_logs.0 {
            l.flush();
        }
        if let Some(l) = &flush_logs.1 {
            l.flush();
        }
        if let Some(l) = &flush_logs.2 {
            l.flush();
        }
    })
    .await;
    // What the stop closed goes to the store before the process ends.
    if let Some(s) = &shipper {
        match s.ship_once().await {
            Ok(n) => tracing::info!(files = n, "logs shipped at shutdown"),
            Err(e) => {
                tracing::warn!(error = %e, "log upload at shutdown failed; the files stay in the spool")
            }
        }
    }
    served
}

type Logs = (
    Arc<dyn DecisionSink>,
    Option<Arc<ParquetLog<Event>>>,
    Option<Arc<ParquetLog<ServedRow>>>,
    Option<Arc<ParquetLog<DecisionRow>>>,
    Option<Arc<podium_log::ship::Shipper>>,
);

/// The local directory the decision log is written to (`None` when logs are off).
fn log_dir_of(args: &ServeArgs, data_dir: &Path) -> Option<PathBuf> {
    match args.log_dir.as_deref() {
        Some("off") => None,
        Some(url) if podium_log::ship::is_object_store(url) => None,
        Some(d) => Some(PathBuf::from(d)),
        None => Some(data_dir.join("logs")),
    }
}

/// The decision sink (the in-memory ring, behind the served-feature log unless logs are off)
/// and the event log.
fn open_logs(args: &ServeArgs, data_dir: &Path, memory: MemoryLog) -> anyhow::Result<Logs> {
    let (dir, shipper) = match args.log_dir.as_deref() {
        Some("off") => return Ok((Arc::new(memory), None, None, None, None)),
        Some(url) if podium_log::ship::is_object_store(url) => {
            // Written locally as ever, then shipped: a store that is away costs disk, not rows.
            let spool = data_dir.join("logs-spool");
            let store = podium_log::ship::LogStore::open(url)
                .map_err(|e| anyhow::anyhow!("--log-dir: {e}"))?;
            (
                spool.clone(),
                Some(Arc::new(podium_log::ship::Shipper::new(store, &spool))),
            )
        }
        Some(d) => (PathBuf::from(d), None),
        None => (data_dir.join("logs"), None),
    };
    let policy = RollPolicy::default();
    let features = FeatureLogSink::served_features(Arc::new(memory), &dir.join("features"), policy)
        .context("--log-dir: the served-feature log")?;
    let served = features.log().clone();
    let decisions = DecisionLogSink::decisions(Arc::new(features), &dir.join("decisions"), policy)
        .context("--log-dir: the decision log")?;
    let decision_log = decisions.log().clone();
    let events = ParquetLog::start(&dir.join("events"), "events", policy)
        .context("--log-dir: the event log")?;
    Ok((
        Arc::new(decisions),
        Some(Arc::new(events)),
        Some(served),
        Some(decision_log),
        shipper,
    ))
}

/// The embedded store and where it is snapshotted.
#[derive(Clone)]
struct Snapshots {
    store: Arc<MemoryStore>,
    path: PathBuf,
}

impl Snapshots {
    async fn save_now(&self) {
        let this = self.clone();
        let saved = tokio::task::spawn_blocking(move || this.store.save_snapshot(&this.path)).await;
        match saved {
            Ok(Ok(n)) => {
                tracing::info!(entries = n, path = %self.path.display(), "feature snapshot written")
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "feature snapshot failed"),
            Err(e) => tracing::warn!(error = %e, "feature snapshot task failed"),
        }
    }
}

/// Opens the online store the options name: Redis (behind the in-process cache of slow-changing
/// entities), or the embedded store, warm from its snapshot when there is one.
async fn open_store(
    args: &ServeArgs,
    data_dir: &Path,
) -> anyhow::Result<(Arc<dyn OnlineStore>, Option<Snapshots>)> {
    let url = args.feature_store.as_str();
    if url.starts_with("redis://") || url.starts_with("redis+cluster://") {
        let redis: Arc<dyn OnlineStore> = Arc::new(
            RedisStore::connect(url)
                .await
                .with_context(|| format!("--feature-store {url}"))?,
        );
        if args.feature_cache_ttl_ms == 0 {
            return Ok((redis, None));
        }
        let cache = CacheConfig {
            ttl: Duration::from_millis(args.feature_cache_ttl_ms),
            ..CacheConfig::default()
        };
        return Ok((Arc::new(CachedStore::new(redis, cache)), None));
    }
    if url != "memory" {
        anyhow::bail!(
            "--feature-store must be `memory`, `redis://host:port[/db]` or \
             `redis+cluster://host:port[,host:port…]`, got {url:?}"
        );
    }
    let path = match args.feature_snapshot.as_deref() {
        Some("off") => None,
        Some(p) => Some(PathBuf::from(p)),
        None => Some(data_dir.join("features.snapshot")),
    };
    let Some(path) = path else {
        return Ok((Arc::new(MemoryStore::new()), None));
    };
    let store = if path.exists() {
        let p = path.clone();
        let store = tokio::task::spawn_blocking(move || MemoryStore::load_snapshot(&p))
            .await
            .context("loading the feature snapshot")?
            .with_context(|| "--feature-snapshot: delete the file or pass `off` to start cold")?;
        tracing::info!(entries = store.len(), path = %path.display(), "feature snapshot loaded");
        Arc::new(store)
    } else {
        Arc::new(MemoryStore::new())
    };
    let snapshots = Snapshots {
        store: store.clone(),
        path,
    };
    let periodic = snapshots.clone();
    let every = Duration::from_secs(args.feature_snapshot_interval_s.max(1));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tick.tick().await;
            periodic.save_now().await;
        }
    });
    Ok((store, Some(snapshots)))
}

/// Where feature events come from.
#[derive(Clone, Debug)]
enum EventSource {
    /// `POST /v1/events` into the in-process bus.
    Http,
    /// A NATS JetStream server.
    Nats(String),
}

impl EventSource {
    fn parse(s: &str) -> anyhow::Result<Self> {
        if s == "http" {
            return Ok(Self::Http);
        }
        if s.starts_with("nats://") {
            return Ok(Self::Nats(s.to_string()));
        }
        anyhow::bail!("--events must be `http` or `nats://host:port`, got {s:?}")
    }
}

/// This server's own part of the event stream: its name in the fleet (its durable consumer),
/// where it spools events NATS did not take, and where it keeps its aggregator's tiles.
struct StreamLocal {
    server_id: String,
    spool_dir: PathBuf,
    tiles: PathBuf,
}

impl StreamLocal {
    fn of(args: &ServeArgs, data_dir: &Path, port: u16) -> anyhow::Result<Self> {
        let server_id = match &args.server_id {
            Some(id) => id.clone(),
            None => {
                let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .ok()
                    .or_else(|| std::env::var("HOSTNAME").ok())
                    .map(|h| h.trim().to_string())
                    .filter(|h| !h.is_empty())
                    .unwrap_or_else(|| "podium".into());
                // Host names have dots (`ip-10-0-0-1.ec2.internal`), consumer names may not.
                let host: String = host
                    .chars()
                    .map(|c| {
                        if c.is_ascii_alphanumeric() || c == '-' {
                            c
                        } else {
                            '_'
                        }
                    })
                    .collect();
                format!("{host}-{port}")
            }
        };
        // NATS consumer names allow no whitespace, dots, `*` or `>`.
        anyhow::ensure!(
            !server_id.is_empty()
                && server_id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "--server-id must be letters, digits, '-' or '_', got {server_id:?}"
        );
        Ok(Self {
            server_id,
            spool_dir: data_dir.join("events-spool"),
            tiles: data_dir.join("features.tiles.json"),
        })
    }
}

/// Starts the stream aggregator that folds events into the engine's online store.
fn start_stream(
    state: &AppState,
    engine: &Engine,
    definitions: Arc<Definitions>,
    lateness: Duration,
    source: EventSource,
    log: Option<Arc<ParquetLog<Event>>>,
    fleet: &StreamLocal,
) {
    let tiles = fleet.tiles.clone();
    // Accepted impressions (once per event id) count toward the viewer's frequency caps.
    let caps = |a: Aggregator| {
        let engine = engine.clone();
        a.with_applied(Box::new(move |e: &Event| {
            // Tracking events name the ad they report on (`trk:<request>:<break>:<seq>:<event>`):
            // impressions and outcomes join the models' predictions for it.
            let ad =
                e.id.strip_prefix("trk:")
                    .and(e.id.rsplit_once(':'))
                    .map(|(ad, _)| ad);
            if let Some(ad) = ad {
                let calibration = engine.calibration();
                match e.kind {
                    podium_features::EventType::Impression => calibration.impression(ad, e.ts_ms),
                    podium_features::EventType::Click => calibration.outcome(ad, "ctr", e.ts_ms),
                    podium_features::EventType::Completion => {
                        calibration.outcome(ad, "completion", e.ts_ms)
                    }
                    _ => {}
                }
            }
            if e.kind == podium_features::EventType::Impression {
                if let (Some(user), Some(li)) = (
                    e.entity_id(podium_features::Entity::User),
                    e.entity_id(podium_features::Entity::LineItem),
                ) {
                    engine.record_impression(user, li, e.ts_ms, e.value, ad, &e.id);
                }
            }
        }))
    };
    let mut aggregator = caps(Aggregator::new(definitions.clone(), lateness));
    if let Some(log) = &log {
        let log = log.clone();
        aggregator = aggregator.with_tap(Box::new(move |e: &Event| log.submit(vec![e.clone()])));
    }
    let stats = aggregator.stats();
    let store = engine.hydrator().store().clone();
    match source {
        EventSource::Http => {
            // Tiles survive a restart beside the data: without them the first event after a
            // restart would rewrite an entity's windows from that event alone.
            if tiles.exists() {
                let fresh = Aggregator::new(definitions.clone(), lateness);
                match fresh.load_state(&tiles) {
                    Ok(restored) => {
                        tracing::info!(path = %tiles.display(), "aggregator state restored");
                        aggregator = caps(restored);
                        if let Some(log) = log {
                            aggregator = aggregator
                                .with_tap(Box::new(move |e: &Event| log.submit(vec![e.clone()])));
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "aggregator state not restored; windows start empty")
                    }
                }
            }
            let stats = aggregator.stats();
            // Bounded: a flood of posted events waits for the aggregator instead of growing.
            let (sender, rx) = tokio::sync::mpsc::channel(16_384);
            state.set_event_ingest(podium_server::events::EventIngest {
                sink: podium_server::events::EventSink::InProcess(sender),
                stats,
            });
            let (stop_tx, stop) = tokio::sync::watch::channel(false);
            let task = tokio::spawn(podium_features::stream::run_in_process_saving(
                aggregator,
                rx,
                store,
                tiles,
                Duration::from_secs(10),
                stop,
            ));
            if let Ok(mut slot) = STREAM_STOP.lock() {
                *slot = Some((stop_tx, task));
            }
        }
        EventSource::Nats(url) => {
            // Every server reads the whole stream (its own durable consumer), so each has every
            // viewer's windows; effects that must happen once are idempotent by event id (caps)
            // or owned by the server that placed the ad (spend).
            let mut consume = NatsConfig::new(url.clone());
            consume.durable = format!("podium-features-{}", fleet.server_id);
            engine.confirm_own_ads_only();
            match podium_features::Publisher::start(NatsConfig::new(url), &fleet.spool_dir) {
                Ok(publisher) => state.set_event_ingest(podium_server::events::EventIngest {
                    sink: podium_server::events::EventSink::Nats(publisher),
                    stats,
                }),
                Err(e) => tracing::error!(
                    error = %e,
                    dir = %fleet.spool_dir.display(),
                    "event spool unusable: this server takes no events over HTTP"
                ),
            }
            let (stop_tx, stop) = tokio::sync::watch::channel(false);
            let task = tokio::spawn(podium_features::stream::run_nats(
                aggregator, consume, store, stop,
            ));
            if let Ok(mut slot) = STREAM_STOP.lock() {
                *slot = Some((stop_tx, task));
            }
        }
    }
}

/// The NATS consumer's stop switch and task, so that shutdown ends it between batches (every
/// applied batch flushed and acked) rather than mid-batch.
type StreamStop = (
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<Aggregator>,
);
static STREAM_STOP: std::sync::Mutex<Option<StreamStop>> = std::sync::Mutex::new(None);

async fn stop_stream() {
    let stop = STREAM_STOP.lock().ok().and_then(|mut s| s.take());
    if let Some((tx, task)) = stop {
        let _ = tx.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    tracing::info!("shutting down");
}

/// The canary rules: the file's or the built-in ones, with the command line's overrides.
fn monitor_rules(args: &ServeArgs) -> anyhow::Result<podium_monitor::Rules> {
    let mut rules = match &args.monitor_rules {
        Some(path) => {
            podium_monitor::Rules::read(path).map_err(|e| anyhow::anyhow!("--monitor-rules {e}"))?
        }
        None => podium_monitor::Rules::default(),
    };
    if let Some(n) = args.guardrail_min_batches {
        rules.min_batches = n;
    }
    if let Some(max) = args.guardrail_max_psi {
        anyhow::ensure!(
            max.is_finite() && max > 0.0,
            "--guardrail-max-psi must be a number above 0"
        );
        for r in &mut rules.rules {
            if r.metric == podium_monitor::regression::Metric::ScoreShift {
                r.threshold = max;
            }
        }
    }
    Ok(rules)
}
