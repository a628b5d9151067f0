//! `podium sim …`: generate the standard workload, and measure its compute floor.

use anyhow::Context;
use clap::{Args, Subcommand};
use podium_engine::{FloorSample, StandardWorld};
use podium_sim::standard;
use podium_sim::traffic::{RequestGen, TrafficConfig};
use std::path::PathBuf;
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

/// Runs a `podium sim` subcommand.
pub fn run(cmd: SimCommand) -> anyhow::Result<()> {
    match cmd {
        SimCommand::Gen(args) => gen(args),
        SimCommand::Floor(args) => floor(args),
    }
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
