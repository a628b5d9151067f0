//! `podium model …`: package, validate, inspect, score and benchmark model bundles.

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use podium_model::manifest::Link;
use podium_model::package::{package, validate, PackageOptions, VALIDATE_BATCH};
use podium_model::{load_bundle, Columns, FeatureTable, ModelKind};
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
    }
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
