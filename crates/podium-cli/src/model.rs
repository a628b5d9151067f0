//! `podium model …`: package, validate, inspect, score and benchmark model bundles, and publish,
//! list, promote and roll them back in a model registry (`docs/registry.md`).

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use podium_model::manifest::Link;
use podium_model::package::{package, validate, PackageOptions, VALIDATE_BATCH};
use podium_model::{load_bundle, Columns, FeatureTable, ModelKind};
use podium_registry::{Registry, Stage};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Model bundle tools.
#[derive(Subcommand, Debug)]
pub enum ModelCommand {
    /// Build a bundle from a model file as the training library wrote it.
    ///
    /// Copies the weights, writes model.toml, golden rows (checked against the library's own
    /// `prediction` column when the CSV has one), reference histograms and SHA256SUMS, then
    /// loads the bundle as serving would. Never overwrites an existing bundle.
    ///
    /// Example:
    ///   podium model package --kind lightgbm --weights model.txt --name ctr --version 3 \
    ///       --golden rows.csv --out bundles/ctr-3
    Package(PackageArgs),
    /// Check a bundle: checksums, schema, golden rows, and the latency budget on this machine.
    ///
    /// Exits non-zero, naming the file and the problem, if any check fails.
    ///
    /// Example:
    ///   podium model validate bundles/ctr-3
    Validate {
        /// Bundle directory.
        dir: PathBuf,
    },
    /// Describe what a bundle holds, in words.
    ///
    /// Example:
    ///   podium model inspect bundles/ctr-3
    Inspect {
        /// Bundle directory.
        dir: PathBuf,
    },
    /// Score a CSV of feature rows; writes a CSV with the header `prediction`.
    ///
    /// The input header names the features (columns the model does not read are ignored); an
    /// empty cell is a missing value. Classifiers give the positive-class probability.
    ///
    /// Example:
    ///   podium model score bundles/ctr-3 --input rows.csv --output preds.csv
    Score {
        /// Bundle directory.
        dir: PathBuf,
        /// Feature rows.
        #[arg(long)]
        input: PathBuf,
        /// Where to write predictions (standard output when absent).
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Time scoring on one thread; the last line is JSON: {"batch": N, "us_per_row": …}.
    ///
    /// Example:
    ///   podium model bench bundles/ctr-3 --input rows.csv --batch 100
    Bench {
        /// Bundle directory.
        dir: PathBuf,
        /// Feature rows to score, cycled in batches.
        #[arg(long)]
        input: PathBuf,
        /// Rows per batch.
        #[arg(long, default_value_t = 100)]
        batch: usize,
        /// How long to measure, in seconds.
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
    },
    /// Validate a bundle and upload it to a registry as a new, immutable version.
    ///
    /// The name and version come from the bundle's model.toml. Refuses an invalid bundle and a
    /// version that is already published.
    ///
    /// Example:
    ///   podium model publish bundles/ctr-3 --registry s3://models/podium
    Publish {
        /// Bundle directory.
        dir: PathBuf,
        #[command(flatten)]
        registry: RegistryArg,
        /// Who publishes (default: $USER, else "cli").
        #[arg(long)]
        by: Option<String>,
    },
    /// List the registry's models, their published versions and current stages.
    ///
    /// Example:
    ///   podium model list --registry file:///srv/podium/registry --json
    List {
        #[command(flatten)]
        registry: RegistryArg,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Put a published version on a stage: production, or canary / shadow for a percent of traffic.
    ///
    /// Example:
    ///   podium model promote ctr 4 --stage canary --percent 5 --why "offline AUC +0.4%"
    Promote {
        /// Model name.
        name: String,
        /// Published version.
        version: String,
        /// Stage to put it on.
        #[arg(long, value_enum)]
        stage: StageArg,
        /// Percent of traffic for canary or shadow, in (0, 100].
        #[arg(long)]
        percent: Option<f64>,
        #[command(flatten)]
        registry: RegistryArg,
        /// Who promotes (default: $USER, else "cli").
        #[arg(long)]
        by: Option<String>,
        /// Why, recorded in the history.
        #[arg(long, default_value = "")]
        why: String,
    },
    /// Roll a model back: stops a running canary; without one, production returns to the
    /// version that was production before.
    ///
    /// Example:
    ///   podium model rollback ctr --why "CTR dropped 8% after 4"
    Rollback {
        /// Model name.
        name: String,
        #[command(flatten)]
        registry: RegistryArg,
        /// Who rolls back (default: $USER, else "cli").
        #[arg(long)]
        by: Option<String>,
        /// Why, recorded in the history.
        #[arg(long, default_value = "")]
        why: String,
    },
    /// Print a model's stage changes, oldest first.
    ///
    /// Example:
    ///   podium model history ctr --registry s3://models/podium
    History {
        /// Model name.
        name: String,
        #[command(flatten)]
        registry: RegistryArg,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Where the registry is: `--registry`, else `$PODIUM_REGISTRY`; there is no default, so a
/// command never writes to a registry nobody named.
#[derive(Args, Debug)]
pub struct RegistryArg {
    /// Registry URL: file:///abs/path, a path, or s3://bucket/prefix [env: PODIUM_REGISTRY].
    #[arg(long = "registry", value_name = "URL")]
    url: Option<String>,
}

impl RegistryArg {
    fn open(&self) -> anyhow::Result<Registry> {
        let url = match &self.url {
            Some(u) => u.clone(),
            None => std::env::var("PODIUM_REGISTRY").map_err(|_| {
                anyhow::anyhow!("no registry: pass --registry URL or set PODIUM_REGISTRY")
            })?,
        };
        Ok(Registry::open(&url)?)
    }
}

/// A registry stage, as `--stage` names it.
#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum StageArg {
    /// All traffic not given to a canary.
    Production,
    /// A percent of traffic served by this version instead of production.
    Canary,
    /// A percent of traffic also scored by this version, logged but never served.
    Shadow,
}

impl From<StageArg> for Stage {
    fn from(s: StageArg) -> Self {
        match s {
            StageArg::Production => Stage::Production,
            StageArg::Canary => Stage::Canary,
            StageArg::Shadow => Stage::Shadow,
        }
    }
}

fn by_or_user(by: Option<String>) -> String {
    by.or_else(|| std::env::var("USER").ok().filter(|u| !u.is_empty()))
        .unwrap_or_else(|| "cli".to_string())
}

/// Registry calls are a handful of requests: a current-thread runtime per command is enough.
fn block_on<T>(f: impl std::future::Future<Output = T>) -> anyhow::Result<T> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    Ok(rt.block_on(f))
}

/// Model file format, as `--kind` names it.
#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum KindArg {
    /// LightGBM text model (Booster.save_model).
    Lightgbm,
    /// XGBoost JSON model (save_model("x.json")).
    Xgboost,
    /// ONNX graph.
    Onnx,
    /// Podium linear weights JSON.
    Linear,
}

impl From<KindArg> for ModelKind {
    fn from(k: KindArg) -> Self {
        match k {
            KindArg::Lightgbm => ModelKind::Lightgbm,
            KindArg::Xgboost => ModelKind::Xgboost,
            KindArg::Onnx => ModelKind::Onnx,
            KindArg::Linear => ModelKind::Linear,
        }
    }
}

/// Link of a linear model, as `--link` names it.
#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum LinkArg {
    /// Raw sum.
    Identity,
    /// Sigmoid of the sum.
    Logistic,
}

/// Options of `podium model package`.
#[derive(Args, Debug)]
pub struct PackageArgs {
    /// Model file format.
    #[arg(long, value_enum)]
    kind: KindArg,
    /// The model file.
    #[arg(long)]
    weights: PathBuf,
    /// Model name ([A-Za-z0-9._-]).
    #[arg(long)]
    name: String,
    /// Model version.
    #[arg(long)]
    version: String,
    /// What it predicts (ctr, completion, conversion, rank, …).
    #[arg(long, default_value = "ctr")]
    task: String,
    /// Input features in model order; needed where the file names none (ONNX).
    #[arg(long, value_delimiter = ',')]
    features: Option<Vec<String>>,
    /// ONNX output to serve: TENSOR or TENSOR:COLUMN (e.g. probabilities:1).
    #[arg(long)]
    output: Option<String>,
    /// Link of a linear model.
    #[arg(long, value_enum)]
    link: Option<LinkArg>,
    /// Golden rows: features and, ideally, the library's own `prediction` column.
    #[arg(long)]
    golden: Option<PathBuf>,
    /// Calibration map (JSON or TOML): {"kind": "platt", "a": …, "b": …} or
    /// {"kind": "isotonic", "x": […], "y": […]}.
    #[arg(long)]
    calibration: Option<PathBuf>,
    /// Prediction served when the model fails (default: mean golden prediction).
    #[arg(long)]
    fallback_prior: Option<f64>,
    /// Time budget for one request's batch, in microseconds.
    #[arg(long, default_value_t = 5_000)]
    latency_budget_us: u64,
    /// Bundle directory to create.
    #[arg(long)]
    out: PathBuf,
}

/// Runs a `podium model` subcommand.
pub fn run(cmd: ModelCommand) -> anyhow::Result<()> {
    match cmd {
        ModelCommand::Package(args) => run_package(args),
        ModelCommand::Validate { dir } => run_validate(&dir),
        ModelCommand::Inspect { dir } => run_inspect(&dir),
        ModelCommand::Score { dir, input, output } => run_score(&dir, &input, output.as_deref()),
        ModelCommand::Bench {
            dir,
            input,
            batch,
            seconds,
        } => run_bench(&dir, &input, batch, seconds),
        ModelCommand::Publish { dir, registry, by } => {
            let reg = registry.open()?;
            let p = block_on(reg.publish(&dir, &by_or_user(by)))??;
            println!(
                "published {} {} to {} ({} files, {} bytes)",
                p.name,
                p.version,
                reg.url(),
                p.files,
                p.bytes
            );
            Ok(())
        }
        ModelCommand::List { registry, json } => run_list(&registry.open()?, json),
        ModelCommand::Promote {
            name,
            version,
            stage,
            percent,
            registry,
            by,
            why,
        } => {
            let reg = registry.open()?;
            let e = block_on(reg.promote(
                &name,
                &version,
                stage.into(),
                percent,
                &by_or_user(by),
                &why,
            ))??;
            match e.percent {
                Some(p) => println!(
                    "{name} {version} is now {} at {p}% (history #{})",
                    e.stage, e.seq
                ),
                None => println!("{name} {version} is now {} (history #{})", e.stage, e.seq),
            }
            Ok(())
        }
        ModelCommand::Rollback {
            name,
            registry,
            by,
            why,
        } => {
            let reg = registry.open()?;
            let e = block_on(reg.rollback(&name, &by_or_user(by), &why))??;
            match e.stage {
                Stage::Production => println!(
                    "{name}: production rolled back to {} (history #{})",
                    e.version, e.seq
                ),
                _ => println!(
                    "{name}: {} of {} stopped (history #{})",
                    e.stage, e.version, e.seq
                ),
            }
            Ok(())
        }
        ModelCommand::History {
            name,
            registry,
            json,
        } => run_history(&registry.open()?, &name, json),
    }
}

fn run_list(reg: &Registry, json: bool) -> anyhow::Result<()> {
    let models = block_on(reg.list())??;
    if json {
        println!("{}", serde_json::to_string_pretty(&models)?);
        return Ok(());
    }
    if models.is_empty() {
        println!("no models in {}", reg.url());
        return Ok(());
    }
    let share = |s: &Option<podium_registry::Share>| {
        s.as_ref().map_or("-".to_string(), |s| {
            format!("{} ({}%)", s.version, s.percent)
        })
    };
    println!(
        "{:<24} {:<12} {:<16} {:<16} VERSIONS",
        "MODEL", "PRODUCTION", "CANARY", "SHADOW"
    );
    for m in models {
        println!(
            "{:<24} {:<12} {:<16} {:<16} {}",
            m.name,
            m.stages.production.as_deref().unwrap_or("-"),
            share(&m.stages.canary),
            share(&m.stages.shadow),
            m.versions.join(", ")
        );
    }
    Ok(())
}

fn run_history(reg: &Registry, name: &str, json: bool) -> anyhow::Result<()> {
    let history = block_on(reg.history(name))??;
    if json {
        println!("{}", serde_json::to_string_pretty(&history)?);
        return Ok(());
    }
    if history.is_empty() {
        println!("{name}: no stage changes yet");
        return Ok(());
    }
    println!(
        "{:>5}  {:<24} {:<9} {:<10} {:<10} {:>7}  {:<12} WHY",
        "SEQ", "AT", "ACTION", "STAGE", "VERSION", "PERCENT", "BY"
    );
    for e in history {
        let action = match e.action {
            podium_registry::Action::Promote => "promote",
            podium_registry::Action::Rollback => "rollback",
        };
        println!(
            "{:>5}  {:<24} {:<9} {:<10} {:<10} {:>7}  {:<12} {}",
            e.seq,
            e.at,
            action,
            e.stage,
            e.version,
            e.percent.map_or("-".to_string(), |p| p.to_string()),
            e.by,
            e.why
        );
    }
    Ok(())
}

fn run_package(a: PackageArgs) -> anyhow::Result<()> {
    let kind: ModelKind = a.kind.into();
    if a.output.is_some() && kind != ModelKind::Onnx {
        bail!("--output selects an ONNX output tensor; a {kind:?} model has one output");
    }
    if a.link.is_some() && kind != ModelKind::Linear {
        bail!("--link applies to linear models; GBDT links follow the training objective");
    }
    let opts = PackageOptions {
        kind,
        weights: a.weights,
        name: a.name,
        version: a.version,
        task: a.task,
        features: a.features,
        link: a.link.map(|l| match l {
            LinkArg::Identity => Link::Identity,
            LinkArg::Logistic => Link::Logistic,
        }),
        output: a.output,
        golden: a.golden,
        calibration: a.calibration,
        fallback_prior: a.fallback_prior,
        latency_budget_us: a.latency_budget_us,
        out: a.out,
    };
    let report = package(&opts).context("packaging failed")?;
    let m = &report.manifest;
    println!(
        "packaged {} {} ({:?}, {} inputs) into {}",
        m.name,
        m.version,
        m.kind,
        m.inputs.len(),
        report.dir.display()
    );
    match (report.golden_rows, report.golden_from_library) {
        (0, _) => println!("warning: no golden rows (--golden); the bundle cannot prove it scores like the library"),
        (n, true) => println!("golden: {n} rows match the library's predictions to 1e-5"),
        (n, false) => println!(
            "warning: {n} golden rows carry Podium's own predictions (the CSV has no `prediction` column); they pin behaviour but prove no parity"
        ),
    }
    Ok(())
}

fn run_validate(dir: &Path) -> anyhow::Result<()> {
    let r = validate(dir).with_context(|| format!("bundle {} is invalid", dir.display()))?;
    let m = r.model.manifest();
    println!("checksums: ok");
    println!(
        "schema: ok ({} {}, {:?}, {} inputs)",
        m.name,
        m.version,
        m.kind,
        m.inputs.len()
    );
    if r.golden_rows == 0 {
        println!("golden: none (the bundle has no golden.csv)");
    } else {
        println!("golden: {} rows match to 1e-5", r.golden_rows);
    }
    let budget = Duration::from_micros(m.serving.latency_budget_us);
    println!(
        "latency: {VALIDATE_BATCH} rows in {} µs on this machine, one thread (budget {} µs)",
        r.batch_time.as_micros(),
        budget.as_micros()
    );
    if !r.within_budget {
        bail!(
            "bundle {}: a {VALIDATE_BATCH}-row batch takes {} µs, over the {} µs latency budget of model.toml",
            dir.display(),
            r.batch_time.as_micros(),
            budget.as_micros()
        );
    }
    println!("valid");
    Ok(())
}

fn run_inspect(dir: &Path) -> anyhow::Result<()> {
    let model = load_bundle(dir).with_context(|| format!("bundle {} is invalid", dir.display()))?;
    let m = model.manifest();
    println!(
        "{} version {} — a {:?} model predicting {:?}",
        m.name, m.version, m.kind, m.task
    );
    let structure = model.describe();
    if !structure.is_empty() {
        println!("structure: {structure}");
    }
    println!("weights: {}", m.weights);
    println!("inputs ({}, in model order):", m.inputs.len());
    for i in &m.inputs {
        match i.default {
            Some(d) => println!("  {:<32} {} (default {d} when missing)", i.name, i.kind),
            None => println!("  {:<32} {} (missing stays missing)", i.name, i.kind),
        }
    }
    println!("output: link {:?}", m.output.link);
    match &m.calibration {
        Some(c) => println!("calibration: {c:?}"),
        None => println!("calibration: none"),
    }
    println!(
        "serving: latency budget {} µs per batch; fallback prior {}",
        m.serving.latency_budget_us, m.serving.fallback_prior
    );
    let golden = dir.join("golden.csv");
    if golden.exists() {
        let rows = std::fs::read_to_string(&golden)
            .map(|t| t.lines().count().saturating_sub(1))
            .unwrap_or(0);
        println!("golden rows: {rows} (all match)");
    } else {
        println!("golden rows: none");
    }
    println!(
        "reference histograms: {}",
        if dir.join("reference.json").exists() {
            "yes"
        } else {
            "no"
        }
    );
    println!("checksums: every file in SHA256SUMS matches");
    Ok(())
}

fn read_rows(dir: &Path, input: &Path) -> anyhow::Result<(podium_model::Model, FeatureTable)> {
    let model = load_bundle(dir).with_context(|| format!("bundle {} is invalid", dir.display()))?;
    let names: Vec<String> = model
        .manifest()
        .inputs
        .iter()
        .map(|i| i.name.clone())
        .collect();
    let table = FeatureTable::read(input, &names, false)?;
    Ok((model, table))
}

fn run_score(dir: &Path, input: &Path, output: Option<&Path>) -> anyhow::Result<()> {
    let (model, table) = read_rows(dir, input)?;
    let predictions = model.predict_columns(table.columns, table.rows)?;
    let mut text = String::with_capacity(predictions.len() * 12 + 11);
    text.push_str("prediction\n");
    for p in predictions {
        text.push_str(&format!("{p:?}\n"));
    }
    match output {
        Some(path) => {
            std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?
        }
        None => std::io::stdout().lock().write_all(text.as_bytes())?,
    }
    Ok(())
}

fn run_bench(dir: &Path, input: &Path, batch: usize, seconds: f64) -> anyhow::Result<()> {
    if batch == 0 {
        bail!("--batch must be at least 1");
    }
    if !(seconds > 0.0 && seconds <= 600.0) {
        bail!("--seconds must be in (0, 600]");
    }
    let (model, table) = read_rows(dir, input)?;
    if table.rows == 0 {
        bail!("{}: no data rows to score", input.display());
    }
    // Cycle the rows so a batch larger than the file is still a batch of distinct-enough rows.
    let rows = table.rows.max(batch);
    let columns: Vec<Vec<f32>> = table
        .columns
        .iter()
        .map(|c| (0..rows).map(|r| c[r % table.rows]).collect())
        .collect();
    let chunks = rows / batch;
    let mut out = vec![0.0f32; batch];
    let budget = Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let mut scored = 0usize;
    let mut i = 0usize;
    while started.elapsed() < budget || scored == 0 {
        let start = (i % chunks) * batch;
        let slices: Vec<&[f32]> = columns.iter().map(|c| &c[start..start + batch]).collect();
        model.predict(&Columns::new(&slices, batch)?, &mut out)?;
        scored += batch;
        i += 1;
    }
    let elapsed = started.elapsed();
    let us_per_row = elapsed.as_secs_f64() * 1e6 / scored as f64;
    println!(
        "{} {}: {scored} rows in {:.2} s, batch {batch}, one thread",
        model.name(),
        model.version(),
        elapsed.as_secs_f64()
    );
    println!(
        "{}",
        serde_json::json!({"batch": batch, "us_per_row": us_per_row, "rows": scored, "model": model.name(), "version": model.version()})
    );
    Ok(())
}
