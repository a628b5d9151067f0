//! `podium sim …`: generate the standard workload, and measure its compute floor.

use anyhow::Context;
use clap::{Args, Subcommand};
use podium_engine::{FloorSample, StandardWorld};
use podium_sim::standard;
use podium_sim::traffic::{RequestGen, TrafficConfig};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// Simulator commands.
#[derive(Subcommand, Debug)]
pub enum SimCommand {
    /// Generate the standard workload's data directory (ARCHITECTURE.md §7) from a seed.
    ///
    /// Writes marketplace.json (5,000 line items, 300 advertisers, 40 categories), models/ (a
    /// linear early ranker, five 300-tree LightGBM models, three ~49k multiply-add ONNX MLPs,
    /// each a validated bundle), models.toml and workload.json. The 1,000,000 viewers' features
    /// are regenerated from the seed when the server starts, not written. The same seed writes
    /// byte-identical files. Refuses a directory that exists and is not empty.
    ///
    /// Example:
    ///   podium sim gen --seed 1 --out ./podium-data-standard
    ///   podium serve --data-dir ./podium-data-standard
    #[command(verbatim_doc_comment)]
    Gen(GenArgs),
    /// Measure the compute floor of the standard workload: model compute per decision, one thread.
    ///
    /// For each request of standard traffic: the early ranker on every eligible line item, then
    /// each of the eight scorers on the top 100, timed one after another on this thread (no
    /// pool, no deadline, no HTTP). Generates the directory first if it is absent. Prints a table
    /// per model (stderr) and a JSON summary (stdout) whose `floor_us_p50` is the median summed
    /// model time of one decision.
    ///
    /// Example:
    ///   taskset -c 1 podium sim floor --data-dir ./podium-data-standard --requests 2000
    #[command(verbatim_doc_comment)]
    Floor(FloorArgs),
    /// Measure what the learned (Myerson) reserve does to revenue and fill on the demo world.
    ///
    /// Decides the same stream of demo traffic twice, in process, through the real engine: once
    /// with static floors only, once with the marketplace's dynamic reserve learning per segment
    /// from the winning bids as it goes. Reports revenue, fill and prices of both (over all
    /// requests and over the second half, once reserves have learned), and the learned reserve of
    /// each segment. Values are the models' eCPMs, so this is a counterfactual of the auction's
    /// own pricing, not of how real bidders would react to higher reserves.
    ///
    /// Example:
    ///   podium sim reserve --requests 20000 --output reserve.json
    #[command(verbatim_doc_comment)]
    Reserve(ReserveArgs),
    /// Simulate a day of traffic against the real pacing and auction code, and report delivery.
    ///
    /// Scenarios: steady (a diurnal curve), live-event (×20 within 60 s at 20:00 for two hours),
    /// budget-change (budgets edited at noon, one below what it has spent), multi-server (4
    /// servers sharing budgets in Redis). Time is simulated: a day takes about a minute. Writes a
    /// JSON report (per line item: budget, spent, delivery_ratio, max_overspend,
    /// curve_deviation, goal_attainment, PID settling) and an HTML page of spend against target.
    ///
    /// Example:
    ///   podium sim pacing --scenario live-event --seed 1 --output report.json
    #[command(verbatim_doc_comment)]
    Pacing(PacingArgs),
    /// Simulate the demo marketplace end to end through the real engine, two arms side by side.
    ///
    /// A simulated day of demo traffic (a diurnal curve and a live-event burst at 20:00–22:00)
    /// is decided by two engines: control (the world as it is) and treatment (other models,
    /// auction settings or exploration). Viewers play, click and complete the ads placed by the
    /// demo's ground truth, and impressions flow back as spend and frequency. Each arm has its
    /// own budgets, pacing and caps: with --design budget-split viewers are randomised and every
    /// budget is split by the arms' shares; with --design cluster whole clusters (country ×
    /// genre) go to an arm and intervals are over clusters. Ends with a JSON report: per arm
    /// fill, revenue, price, clicks, completions, spend against budget, and the treatment's
    /// difference with a 95 % interval.
    ///
    /// Example:
    ///   podium sim market --requests 20000 --treatment-config first-price.toml
    ///   podium sim market --design cluster --treatment-models ./candidate
    #[command(verbatim_doc_comment)]
    Market(crate::sim_market::MarketArgs),
    /// Simulate weeks of ad traffic through the demo engine and write them as a decision log.
    ///
    /// Traffic with the structure real traffic has (podium_sim::weeks): an hour-of-day curve in
    /// each country's local time, weekends higher, +1 % a week, Poisson noise per hour, a device
    /// and genre mix that moves with the hour, heavy-tailed viewers, and live events (one or two a
    /// week, 2–3 h, 5–20 % of a day's requests on top, their requests carrying content.event_id).
    /// Every request is decided by the real demo engine at its simulated time (budgets, pacing
    /// and caps run on simulated days; 97 % of placed ads play) and logged by the real decision
    /// log writer into <out>/logs/decisions/; <out>/events.toml is the calendar of the events,
    /// with those of the 14 days after the span. Ends with a JSON line {"days", "requests",
    /// "event_requests", "files", "elapsed_s", "decisions_per_s", "log", "calendar", …}.
    ///
    /// Example:
    ///   podium sim traffic --days 28 --requests-per-day 20000 --out ./traffic
    ///   podium sim traffic --days 35 --seed 2 --start 2026-11-02T00:00:00Z --out ./traffic-2
    #[command(verbatim_doc_comment)]
    Traffic(crate::sim_traffic::TrafficArgs),
}

/// Options of `podium sim gen`.
#[derive(Args, Debug)]
pub struct GenArgs {
    /// Seed of every draw; the same seed gives the same files.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Directory to write; must not exist or be empty.
    #[arg(long)]
    out: PathBuf,
}

/// Options of `podium sim floor`.
#[derive(Args, Debug)]
pub struct FloorArgs {
    /// Standard data directory (generated with --seed if absent).
    #[arg(long, default_value = "./podium-data-standard")]
    data_dir: PathBuf,
    /// Seed of the workload.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Requests to measure.
    #[arg(long, default_value_t = 1_000)]
    requests: usize,
    /// Requests run first and not counted (cold caches, lazy set-up).
    #[arg(long, default_value_t = 100)]
    warmup: usize,
    /// Seed of the request stream.
    #[arg(long, default_value_t = 1)]
    traffic_seed: u64,
}

/// The demo world an in-process simulation decides with.
#[derive(Args, Debug)]
pub struct DemoWorld {
    /// Demo data directory whose marketplace and models are used (created if absent).
    #[arg(long, default_value = "./podium-data")]
    pub data_dir: PathBuf,
    /// Seed of the demo world, when the directory is created.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

impl DemoWorld {
    /// The generator settings of this world.
    pub fn config(&self) -> podium_sim::demo::DemoConfig {
        podium_sim::demo::DemoConfig {
            seed: self.seed,
            ..Default::default()
        }
    }

    /// Creates the directory (marketplace, trained models) if it is absent, and checks that it
    /// loads; call inside a Tokio runtime.
    pub fn ensure(
        &self,
        config: podium_engine::EngineConfig,
        pool: podium_serving::ComputePool,
    ) -> anyhow::Result<()> {
        podium_engine::build_demo(
            &self.data_dir,
            &self.config(),
            config,
            Arc::new(podium_log::MemoryLog::spawn(1)),
            pool,
        )
        .with_context(|| format!("loading the demo world in {}", self.data_dir.display()))?;
        Ok(())
    }
}

/// Options of `podium sim reserve`.
#[derive(Args, Debug)]
pub struct ReserveArgs {
    #[command(flatten)]
    world: DemoWorld,
    /// Requests decided per variant.
    #[arg(long, default_value_t = 20_000)]
    requests: usize,
    /// Seed of the request stream.
    #[arg(long, default_value_t = 1)]
    traffic_seed: u64,
    /// Also write the JSON report to this file.
    #[arg(long)]
    output: Option<PathBuf>,
}

/// Options of `podium sim pacing`.
#[derive(Args, Debug)]
pub struct PacingArgs {
    /// steady, live-event, budget-change or multi-server.
    #[arg(long)]
    scenario: String,
    /// Seed of the market and the traffic.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where to write the JSON report (the HTML plot goes beside it, `.html`).
    #[arg(long, default_value = "pacing-report.json")]
    output: PathBuf,
    /// Shared budget ledger: `redis://host:port`, or `memory`. Default: Redis on
    /// 127.0.0.1:6379 for multi-server, memory otherwise.
    #[arg(long)]
    ledger: Option<String>,
    /// Requests per second at the daily peak.
    #[arg(long, default_value_t = 40.0)]
    peak_rate: f64,
    /// Line items in the simulated market.
    #[arg(long, default_value_t = 48)]
    line_items: usize,
    /// Servers sharing the budgets [default: 4 for multi-server, else 1].
    #[arg(long)]
    servers: Option<usize>,
    /// Seconds of simulated time between two runs of each server's control loop.
    #[arg(long, default_value_t = 10)]
    tick_s: u64,
}

/// Runs a `podium sim` subcommand.
pub fn run(cmd: SimCommand) -> anyhow::Result<()> {
    match cmd {
        SimCommand::Gen(args) => gen(args),
        SimCommand::Floor(args) => floor(args),
        SimCommand::Reserve(args) => reserve(args),
        SimCommand::Pacing(args) => pacing(args),
        SimCommand::Market(args) => crate::sim_market::run(args),
        SimCommand::Traffic(args) => crate::sim_traffic::run(args),
    }
}

fn pacing(args: PacingArgs) -> anyhow::Result<()> {
    use podium_sim::pacing::{html, memory_ledger, run, Scenario, SimConfig};
    let scenario = Scenario::parse(&args.scenario).ok_or_else(|| {
        anyhow::anyhow!(
            "--scenario {:?}: must be one of {}",
            args.scenario,
            Scenario::NAMES.join(", ")
        )
    })?;
    anyhow::ensure!(
        args.peak_rate > 0.0 && args.peak_rate <= 100_000.0,
        "--peak-rate must be between 0 and 100000 requests/s"
    );
    anyhow::ensure!(
        (2..=2000).contains(&args.line_items),
        "--line-items must be between 2 and 2000"
    );
    anyhow::ensure!(
        (1..=3600).contains(&args.tick_s),
        "--tick-s must be between 1 and 3600"
    );
    let mut cfg = SimConfig::new(scenario, args.seed);
    cfg.tick_s = args.tick_s;
    cfg.peak_rate = args.peak_rate;
    cfg.line_items = args.line_items;
    if let Some(n) = args.servers {
        anyhow::ensure!((1..=64).contains(&n), "--servers must be between 1 and 64");
        cfg.servers = n;
    }
    let ledger_url = args.ledger.clone().unwrap_or_else(|| {
        if scenario == Scenario::MultiServer {
            "redis://127.0.0.1:6379".into()
        } else {
            "memory".into()
        }
    });
    // Keys of this run apart from any other's in a shared Redis.
    let namespace = format!("sim-{}-{}-", std::process::id(), args.seed);
    let ledger = if ledger_url == "memory" {
        memory_ledger()
    } else {
        anyhow::ensure!(
            ledger_url.starts_with("redis://"),
            "--ledger must be `memory` or redis://host:port, got {ledger_url:?}"
        );
        cfg.redis = Some(ledger_url.clone());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let ledger = rt
            .block_on(podium_pacing::RedisLedger::connect(&ledger_url))
            .with_context(|| format!("--ledger {ledger_url}: is Redis running?"))?;
        Arc::new(ledger) as Arc<dyn podium_pacing::BudgetLedger>
    };
    let started = Instant::now();
    let report = run(&cfg, ledger, &namespace);
    let text = serde_json::to_string_pretty(&report)?;
    std::fs::write(&args.output, &text)
        .with_context(|| format!("writing {}", args.output.display()))?;
    let plot = args.output.with_extension("html");
    std::fs::write(&plot, html(&report)).with_context(|| format!("writing {}", plot.display()))?;
    let s = &report.summary;
    eprintln!(
        "{} ({} s): {} requests, {} impressions; within ±2%: {}/{}; max overspend {:.3}%; \
         guaranteed ≥ 99%: {}/{}; {}",
        args.scenario,
        started.elapsed().as_secs(),
        report.requests,
        report.impressions,
        s.delivered_within_2pct,
        s.budget_constrained,
        s.max_overspend * 100.0,
        s.guaranteed_met,
        s.guaranteed_feasible,
        if s.pass { "PASS" } else { "FAIL" }
    );
    println!("{}", args.output.display());
    Ok(())
}

/// Revenue and fill of one variant over a stretch of requests.
#[derive(Default)]
struct Takings {
    revenue: podium_core::Micros,
    ads: u64,
    slots: u64,
}

impl Takings {
    fn add(&mut self, req: &podium_core::AdRequest, d: &podium_core::Decision) {
        self.slots += req
            .breaks
            .iter()
            .map(|b| u64::from(b.max_ads) + b.rules.slots.len() as u64)
            .sum::<u64>();
        for a in d.breaks.iter().flat_map(|b| &b.ads) {
            self.ads += 1;
            self.revenue += a.price_cpm.cpm_to_impression_cost();
        }
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "revenue": self.revenue.as_units(),
            "ads": self.ads,
            "fill": if self.slots == 0 { 0.0 } else { self.ads as f64 / self.slots as f64 },
            "mean_price_cpm": if self.ads == 0 { 0.0 } else {
                self.revenue.as_units() * 1000.0 / self.ads as f64
            },
        })
    }
}

fn reserve(args: ReserveArgs) -> anyhow::Result<()> {
    use podium_engine::{build_demo, EngineConfig};

    anyhow::ensure!(args.requests >= 2, "--requests must be at least 2");
    let demo = args.world.config();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    // The decision log and the hydrator's tasks start on this runtime.
    let _entered = rt.enter();
    let pool = podium_serving::ComputePool::new(0);
    let config = EngineConfig {
        // Offline: every model answers, however slow this machine.
        default_tmax: std::time::Duration::from_secs(5),
        ..EngineConfig::default()
    };
    // The world's own directory supplies the marketplace and the trained models.
    args.world.ensure(config.clone(), pool.clone())?;
    let data_dir = &args.world.data_dir;
    let market_path = data_dir.join("marketplace.json");
    let base = podium_auction::Marketplace::read(&market_path)?;
    let learned = base.dynamic_reserve.clone().unwrap_or_default();
    let models = std::fs::canonicalize(data_dir.join("models"))?;

    let mut variants = Vec::new();
    let mut reserves = serde_json::Value::Null;
    for (name, dynamic) in [("static_floors", None), ("dynamic_reserve", Some(learned))] {
        let dir = tempfile::tempdir()?;
        let mut m = base.clone();
        m.dynamic_reserve = dynamic.clone();
        m.write(&dir.path().join("marketplace.json"))?;
        std::os::unix::fs::symlink(&models, dir.path().join("models"))?;
        std::fs::copy(data_dir.join("models.toml"), dir.path().join("models.toml"))?;
        let engine = build_demo(
            dir.path(),
            &demo,
            config.clone(),
            Arc::new(podium_log::MemoryLog::spawn(1)),
            pool.clone(),
        )?;
        let mut traffic = RequestGen::new(TrafficConfig::demo(), args.traffic_seed);
        let (mut all, mut late) = (Takings::default(), Takings::default());
        let started = Instant::now();
        for k in 0..args.requests {
            let req = traffic.next_request();
            let d = rt.block_on(engine.decide(req.clone(), Instant::now()));
            all.add(&req, &d);
            if k >= args.requests / 2 {
                late.add(&req, &d);
            }
        }
        eprintln!(
            "{name:<16} revenue ${:>10.2}  ads {:>7}  fill {:.3}  ({} requests in {:.1} s)",
            all.revenue.as_units(),
            all.ads,
            all.ads as f64 / all.slots.max(1) as f64,
            args.requests,
            started.elapsed().as_secs_f64()
        );
        if dynamic.is_some() {
            reserves = engine
                .market()
                .dynamic_reserve()
                .map(|d| {
                    d.snapshot()
                        .into_iter()
                        .map(|(segment, r, n)| {
                            serde_json::json!({"segment": segment, "reserve_cpm": r.as_units(),
                                               "observations": n})
                        })
                        .collect::<Vec<_>>()
                })
                .into();
        }
        variants.push((name, all, late));
    }
    let revenue = |i: usize, late: bool| {
        let t = if late { &variants[i].2 } else { &variants[i].1 };
        t.revenue.as_units()
    };
    let report = serde_json::json!({
        "requests": args.requests,
        "traffic_seed": args.traffic_seed,
        "variants": variants.iter().map(|(name, all, late)| serde_json::json!({
            "name": name, "all": all.json(), "second_half": late.json(),
        })).collect::<Vec<_>>(),
        "revenue_lift": revenue(1, false) / revenue(0, false).max(1e-9) - 1.0,
        "revenue_lift_second_half": revenue(1, true) / revenue(0, true).max(1e-9) - 1.0,
        "learned_reserves": reserves,
    });
    let text = serde_json::to_string_pretty(&report)?;
    if let Some(path) = &args.output {
        std::fs::write(path, &text).with_context(|| format!("writing {}", path.display()))?;
    }
    println!("{text}");
    Ok(())
}

fn gen(args: GenArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let spec = standard::generate(&args.out, args.seed)
        .with_context(|| format!("generating into {}", args.out.display()))?;
    println!(
        "wrote the standard workload (seed {}, generator {}) to {} in {} ms; {} viewers are \
         generated at serve time",
        spec.seed,
        spec.generator,
        args.out.display(),
        started.elapsed().as_millis(),
        spec.viewers
    );
    Ok(())
}

/// The `q` quantile of sorted values.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// Mean, median and P99 of a set of measurements.
#[derive(Clone, Copy, Debug)]
struct Stats {
    mean: f64,
    p50: f64,
    p99: f64,
}

impl Stats {
    fn of(mut v: Vec<f64>) -> Self {
        v.sort_by(f64::total_cmp);
        Self {
            mean: v.iter().sum::<f64>() / v.len().max(1) as f64,
            p50: quantile(&v, 0.5),
            p99: quantile(&v, 0.99),
        }
    }

    fn json(self) -> serde_json::Value {
        serde_json::json!({"mean": round1(self.mean), "p50": round1(self.p50), "p99": round1(self.p99)})
    }

    /// One table row: a label, then mean, P50 and P99 right-aligned.
    fn row(self, label: &str) -> String {
        format!(
            "{label:<46} {:>9.1} {:>9.1} {:>9.1}",
            self.mean, self.p50, self.p99
        )
    }
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn floor(args: FloorArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.requests > 0, "--requests must be at least 1");
    let t = Instant::now();
    let (_, generated) = standard::ensure(&args.data_dir, args.seed)
        .with_context(|| format!("data directory {}", args.data_dir.display()))?;
    if generated {
        eprintln!(
            "generated {} in {} ms",
            args.data_dir.display(),
            t.elapsed().as_millis()
        );
    }
    let t = Instant::now();
    let world = StandardWorld::load(&args.data_dir, None)
        .with_context(|| format!("loading {}", args.data_dir.display()))?;
    eprintln!(
        "loaded in {} ms (marketplace {} ms, models {} ms, {} viewers {} ms)",
        t.elapsed().as_millis(),
        world.timings.marketplace.as_millis(),
        world.timings.models.as_millis(),
        world.viewers,
        world.timings.audience.as_millis()
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let mut traffic = RequestGen::new(TrafficConfig::standard(), args.traffic_seed);
    let samples: Vec<FloorSample> = runtime.block_on(async {
        for _ in 0..args.warmup {
            world.compute_floor(&traffic.next_request()).await;
        }
        let mut out = Vec::with_capacity(args.requests);
        for _ in 0..args.requests {
            out.push(world.compute_floor(&traffic.next_request()).await);
        }
        out
    });
    let failures: usize = samples.iter().map(|s| s.failures).sum();
    anyhow::ensure!(
        failures == 0,
        "{failures} model runs failed: the workload is broken"
    );

    let mut models = vec![(
        world
            .models
            .ranker
            .first_local()
            .context("the ranker has no in-process model")?
            .model()
            .clone(),
        "eligible",
        Stats::of(samples.iter().map(|s| s.ranker_us).collect()),
    )];
    for (i, slot) in world.models.scorers.iter().enumerate() {
        models.push((
            slot.first_local()
                .context("a scorer has no in-process model")?
                .model()
                .clone(),
            "top 100",
            Stats::of(samples.iter().map(|s| s.scorer_us[i]).collect()),
        ));
    }
    let eligible = Stats::of(samples.iter().map(|s| s.eligible as f64).collect());
    let total = Stats::of(samples.iter().map(FloorSample::model_us).collect());
    let scorers = Stats::of(
        samples
            .iter()
            .map(|s| s.scorer_us.iter().sum::<f64>())
            .collect(),
    );
    let frames = Stats::of(samples.iter().map(|s| s.frame_us).collect());

    eprintln!(
        "\n{} requests; eligible per request: mean {:.0}, p50 {:.0}, p99 {:.0}",
        samples.len(),
        eligible.mean,
        eligible.p50,
        eligible.p99
    );
    eprintln!(
        "{:<20} {:<9} {:>6} {:<9} {:>9} {:>9} {:>9}",
        "model", "kind", "inputs", "rows", "mean µs", "p50 µs", "p99 µs"
    );
    let mut per_model = Vec::new();
    for (model, rows, s) in &models {
        let m = model.manifest();
        let kind = format!("{:?}", m.kind).to_lowercase();
        let label = format!(
            "{:<20} {:<9} {:>6} {:<9}",
            m.name,
            kind,
            m.inputs.len(),
            rows
        );
        eprintln!("{}", s.row(&label));
        per_model.push(serde_json::json!({
            "model": m.name,
            "kind": kind,
            "inputs": m.inputs.len(),
            "rows": rows,
            "us": s.json(),
        }));
    }
    eprintln!("{}", scorers.row("8 scorers on the top 100"));
    eprintln!("{}", total.row("all models (the compute floor)"));
    eprintln!("{}", frames.row("(building the two frames, not counted)"));
    println!(
        "{}",
        serde_json::json!({
            "requests": samples.len(),
            "seed": world.spec.seed,
            "eligible": eligible.json(),
            "models": per_model,
            "scorers_us": scorers.json(),
            "frame_us": frames.json(),
            "floor_us_mean": round1(total.mean),
            "floor_us_p50": round1(total.p50),
            "floor_us_p99": round1(total.p99),
        })
    );
    Ok(())
}
