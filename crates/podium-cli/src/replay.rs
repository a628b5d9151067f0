//! `podium replay`: logged decisions run again, exactly (the same auction from the state the
//! log holds, and the logged model versions on the rebuilt frames), or against candidate models
//! and auction settings, with a JSON summary and an HTML report.

use crate::serve::{ServeWorkload, World};
use anyhow::Context;
use clap::Args;
use podium_core::{BreakDecision, FeatureFrame};
use podium_engine::replay::{bound_version, check_exact, parse_row, replay_auction, Unreplayable};
use podium_engine::{Engine, EngineConfig, FeatureSetup, MarketSnapshot};
use podium_features::offline::{read_decision_rows, read_records, DecisionRow};
use podium_features::stream::Event;
use podium_features::EventType;
use podium_log::{DecisionRecord, DecisionSink};
use podium_serving::{BoundModel, ComputePool, ModelSetConfig};
use podium_sim::counterfactual::{doubly_robust, ips, snips, Sample};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Options of `podium replay`.
#[derive(Args, Debug)]
pub struct ReplayArgs {
    /// The log: a `decisions` directory, a log directory holding one (`<data-dir>/logs`), one
    /// Parquet file, or a log in object storage (`s3://bucket/prefix`, `file:///path`, as
    /// `podium serve --log-dir` shipped it). Outcome events are read from the `events`
    /// directory beside `decisions`.
    #[arg(long)]
    log: PathBuf,
    /// The world the decisions were made in (marketplace, models, feature definitions)
    /// [default: the data directory the log is in, when it is `<data-dir>/logs`; else
    /// ./podium-data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Which world (as `podium serve --workload`).
    #[arg(long, value_enum)]
    workload: Option<ServeWorkload>,
    /// Seed of a generated world (as `podium serve --seed`).
    #[arg(long)]
    seed: Option<u64>,
    /// Candidate models: a `models.toml` (bundles beside it, or in `models/` beside it), or a
    /// directory of model bundles, each replacing the slot whose model has its name (or, failing
    /// that, its task).
    #[arg(long)]
    models: Option<PathBuf>,
    /// Candidate auction settings (TOML): marketplace fields to change, e.g. `auction =
    /// "first_price"`, `floor_cpm = 4.0`, `competitive_separation = false`.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Share of decisions whose model scores are recomputed and checked bit for bit in an exact
    /// replay (the auction is replayed for all of them).
    #[arg(long, default_value_t = 0.01)]
    rescore: f64,
    /// The HTML report of a candidate replay [default: replay-report.html].
    #[arg(long)]
    report: Option<PathBuf>,
    /// Replay at most this many decisions.
    #[arg(long)]
    limit: Option<usize>,
    /// Differences named in the summary (the first ones found).
    #[arg(long, default_value_t = 20)]
    examples: usize,
    /// Threads of an exact replay (0 = one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

/// Drops every record: replay decides nothing new.
struct Discard;

impl DecisionSink for Discard {
    fn submit(&self, _: podium_log::DecisionRecord) {}
}

/// The Parquet files of a log, in name order.
fn decision_files(log: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if log.is_file() {
        return Ok(vec![log.to_path_buf()]);
    }
    anyhow::ensure!(log.is_dir(), "{}: no such file or directory", log.display());
    let dir = if log.join("decisions").is_dir() {
        log.join("decisions")
    } else {
        log.to_path_buf()
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect();
    files.sort();
    anyhow::ensure!(
        !files.is_empty(),
        "{}: no decision log files (*.parquet)",
        dir.display()
    );
    Ok(files)
}

/// The data directory a log belongs to, when the log is `<data-dir>/logs[/decisions]`.
fn data_dir_of(log: &Path) -> Option<PathBuf> {
    let log = std::fs::canonicalize(log).ok()?;
    let logs = if log.file_name()? == "decisions" {
        log.parent()?
    } else {
        &log
    };
    (logs.file_name()? == "logs")
        .then(|| logs.parent().map(Path::to_path_buf))
        .flatten()
        .filter(|d| d.join("marketplace.json").is_file() || d.join("models.toml").is_file())
}

/// A candidate model and the scorer (by position) it replaces.
struct Candidate {
    scorer: usize,
    model: BoundModel,
}

/// Loads the candidate models and matches each to a logged scorer slot.
fn candidates(engine: &Engine, path: &Path) -> anyhow::Result<Vec<Candidate>> {
    let schema = engine.schema();
    let set = engine.models();
    let mut loaded: Vec<BoundModel> = Vec::new();
    let toml = if path.is_file() {
        Some(path.to_path_buf())
    } else if path.join("models.toml").is_file() {
        Some(path.join("models.toml"))
    } else {
        None
    };
    if let Some(toml) = toml {
        let dir = toml.parent().unwrap_or(Path::new("."));
        let bundles = if dir.join("models").is_dir() {
            dir.join("models")
        } else {
            dir.to_path_buf()
        };
        let candidate = ModelSetConfig::read(&toml)?
            .load(&bundles, schema)
            .with_context(|| {
                format!(
                    "{}: a candidate model's inputs must all be features the log holds",
                    toml.display()
                )
            })?;
        loaded.extend(
            candidate
                .scorers
                .iter()
                .filter_map(|s| s.primary().cloned()),
        );
    } else {
        anyhow::ensure!(
            path.is_dir(),
            "--models {}: no such file or directory",
            path.display()
        );
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("reading {}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.join("model.toml").is_file())
            .collect();
        dirs.sort();
        if dirs.is_empty() && path.join("model.toml").is_file() {
            dirs.push(path.to_path_buf());
        }
        anyhow::ensure!(
            !dirs.is_empty(),
            "--models {}: neither a models.toml nor a directory of model bundles",
            path.display()
        );
        for d in dirs {
            let model = podium_model::load_bundle(&d)
                .with_context(|| format!("candidate bundle {}", d.display()))?;
            let bound = BoundModel::bind(model, schema).map_err(|e| {
                anyhow::anyhow!(
                    "candidate bundle {}: {e}: the log does not hold that feature, so the model \
                     cannot be replayed on it",
                    d.display()
                )
            })?;
            loaded.push(bound);
        }
    }
    let mut out = Vec::new();
    for model in loaded {
        let (name, task) = (model.model().name(), &model.model().manifest().task);
        let scorer = set
            .scorers
            .iter()
            .position(|s| s.name() == name)
            .or_else(|| set.scorers.iter().position(|s| s.task() == task.as_str()))
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "candidate model {name} (task {task}) replaces no full-scoring model (they are: {})",
                    set.scorers
                        .iter()
                        .map(|s| format!("{} ({})", s.name(), s.task()))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })?;
        anyhow::ensure!(
            !out.iter().any(|c: &Candidate| c.scorer == scorer),
            "two candidate models replace {}",
            set.scorers[scorer].name()
        );
        out.push(Candidate { scorer, model });
    }
    Ok(out)
}

/// `base` with the marketplace settings of a TOML file changed (`auction = "first_price"`,
/// `reserve_cpm = …`, …); line items cannot change, their positions identifying logged
/// candidates.
pub(crate) fn changed_marketplace(
    base: &podium_auction::Marketplace,
    path: &Path,
) -> anyhow::Result<podium_auction::Marketplace> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let changes: toml::Table =
        toml::from_str(&text).with_context(|| format!("{}: not TOML", path.display()))?;
    anyhow::ensure!(
        !changes.contains_key("line_items"),
        "{}: line items cannot change (their positions identify the logged candidates)",
        path.display()
    );
    let mut market = serde_json::to_value(base)?;
    for (k, v) in changes {
        anyhow::ensure!(
            market.get(&k).is_some(),
            "{}: `{k}` is not a marketplace setting (settings: {})",
            path.display(),
            market
                .as_object()
                .map(|o| o
                    .keys()
                    .filter(|k| *k != "line_items")
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "))
                .unwrap_or_default()
        );
        market[&k] = serde_json::to_value(v)?;
    }
    serde_json::from_value(market)
        .with_context(|| format!("{}: the changed marketplace is not valid", path.display()))
}

/// The marketplace with the candidate auction settings applied.
fn candidate_market(base: &MarketSnapshot, path: &Path) -> anyhow::Result<MarketSnapshot> {
    let marketplace = changed_marketplace(&base.marketplace, path)?;
    Ok(MarketSnapshot::new(marketplace, |li| {
        base.position(&li.id)
            .map(|i| base.candidate_features[i as usize].clone())
            .unwrap_or_default()
    }))
}

/// What viewers did after a decision, per (user, line item): impression, click and completion
/// times.
#[derive(Default)]
struct Outcomes {
    by_ad: HashMap<(String, String), Vec<(EventType, i64)>>,
    events: usize,
}

/// How long after a decision its ad's events are credited to it.
const OUTCOME_WINDOW_MS: i64 = 3_600_000;

impl Outcomes {
    fn read(dir: &Path) -> (Self, Option<String>) {
        let mut out = Self::default();
        let any = std::fs::read_dir(dir).is_ok_and(|mut d| {
            d.any(|e| e.is_ok_and(|e| e.path().extension().is_some_and(|x| x == "parquet")))
        });
        if !any {
            return (out, None);
        }
        let events = match read_records::<Event>(dir) {
            Ok(e) => e,
            Err(e) => return (out, Some(e.to_string())),
        };
        for e in events {
            let (Some(u), Some(li)) = (
                e.entity_id(podium_features::Entity::User),
                e.entity_id(podium_features::Entity::LineItem),
            ) else {
                continue;
            };
            let (u, li) = (u.to_string(), li.to_string());
            if matches!(
                e.kind,
                EventType::Impression | EventType::Click | EventType::Completion
            ) {
                out.events += 1;
                out.by_ad
                    .entry((u, li))
                    .or_default()
                    .push((e.kind, e.ts_ms));
            }
        }
        (out, None)
    }

    /// Whether the ad shown at `ts` was (impressed, clicked, completed).
    fn of(&self, user: &str, line_item: &str, ts: i64) -> (bool, bool, bool) {
        let Some(v) = self.by_ad.get(&(user.to_string(), line_item.to_string())) else {
            return (false, false, false);
        };
        let seen = |k: EventType| {
            v.iter()
                .any(|&(kind, t)| kind == k && t >= ts - 1_000 && t <= ts + OUTCOME_WINDOW_MS)
        };
        (
            seen(EventType::Impression),
            seen(EventType::Click),
            seen(EventType::Completion),
        )
    }
}

/// Sums of one side (logged or candidate) of a candidate replay.
#[derive(Default, Clone)]
struct Side {
    breaks: u64,
    filled: u64,
    ads: u64,
    revenue: f64,
}

impl Side {
    fn add(&mut self, breaks: &[BreakDecision]) {
        for b in breaks {
            self.breaks += 1;
            self.filled += u64::from(!b.ads.is_empty());
            for a in &b.ads {
                self.ads += 1;
                self.revenue += a.price_cpm.0 as f64 / 1e9;
            }
        }
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "breaks": self.breaks,
            "fill_rate": ratio(self.filled as f64, self.breaks as f64),
            "ads": self.ads,
            "revenue": self.revenue,
            "avg_price_cpm": ratio(self.revenue * 1000.0, self.ads as f64),
        })
    }
}

fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0).then(|| a / b)
}

/// Score shift of one model: logged against candidate, over every fully scored candidate.
#[derive(Default, Clone)]
struct Shift {
    name: String,
    candidate: String,
    n: u64,
    logged_sum: f64,
    candidate_sum: f64,
    abs_sum: f64,
    max_abs: f64,
    logged_hist: [u64; 20],
    candidate_hist: [u64; 20],
    scoring_us: f64,
    baseline_us: f64,
    baseline_timed: u64,
}

fn bin(p: f32) -> usize {
    ((p.clamp(0.0, 1.0) * 20.0) as usize).min(19)
}

/// Predicted against observed on the logged ads that were shown.
#[derive(Default, Clone)]
struct Calib {
    shown: u64,
    observed: u64,
    logged_pred: f64,
    candidate_pred: f64,
}

/// Runs `podium replay`.
pub fn run(args: ReplayArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.rescore),
        "--rescore must be between 0 and 1, got {}",
        args.rescore
    );
    // A log in object storage is fetched first; the rest reads local files.
    let fetched = tempfile::tempdir()?;
    let log = match args.log.to_str() {
        Some(url) if podium_log::ship::is_object_store(url) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let n = rt
                .block_on(podium_log::ship::fetch(url, fetched.path()))
                .map_err(|e| anyhow::anyhow!("--log {url}: {e}"))?;
            anyhow::ensure!(n > 0, "--log {url}: no log files there");
            fetched.path().to_path_buf()
        }
        _ => args.log.clone(),
    };
    let files = decision_files(&log)?;
    let data_dir = args.data_dir.clone().or_else(|| data_dir_of(&log));
    let world = World::of(args.workload, data_dir, args.seed)?;
    let started = Instant::now();
    let config = EngineConfig {
        monitoring: false,
        ..EngineConfig::default()
    };
    let (engine, _) = world
        .build(
            config,
            Arc::new(Discard),
            ComputePool::new(1),
            &FeatureSetup::default(),
        )
        .with_context(|| format!("loading the world in {}", world.dir().display()))?;
    let load_s = started.elapsed().as_secs_f64();
    let candidates = match &args.models {
        Some(p) => candidates(&engine, p)?,
        None => Vec::new(),
    };
    let market = engine.market();
    let candidate_market = match &args.config {
        Some(p) => Some(candidate_market(&market, p)?),
        None => None,
    };
    if args.models.is_some() || args.config.is_some() {
        candidate_replay(
            &args,
            &engine,
            &files,
            &candidates,
            candidate_market.as_ref(),
            load_s,
        )
    } else {
        exact_replay(&args, &engine, &files, load_s)
    }
}

fn progress(files: &[PathBuf]) -> indicatif::ProgressBar {
    let bytes: u64 = files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum();
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(bytes),
        indicatif::ProgressDrawTarget::stderr_with_hz(4),
    );
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} replay [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

/// Columns a replay never reads (the decision's JSON holds the same).
const NOT_READ: [&str; 3] = ["model_versions", "degraded", "experiments"];

/// Reads one file of the log, `features` and `served` only when `frames` (frames are rebuilt
/// from them); an unreadable file is named in `errors` and skipped.
fn read_file(f: &Path, frames: bool, errors: &mut Vec<serde_json::Value>) -> Vec<DecisionRow> {
    let mut skip = NOT_READ.to_vec();
    if !frames {
        skip.extend(["features", "served"]);
    }
    match read_decision_rows(f, &skip) {
        Ok(rows) => rows,
        Err(e) => {
            errors
                .push(serde_json::json!({"file": f.display().to_string(), "error": e.to_string()}));
            Vec::new()
        }
    }
}

/// Whether a request falls in the rescored share (a hash of its id, so reruns check the same).
fn sampled(request_id: &str, share: f64) -> bool {
    share >= 1.0 || (share > 0.0 && podium_pacing::draw(request_id, 0x5C0E) < share)
}

/// What an exact replay of some rows found.
#[derive(Default)]
struct Tally {
    decisions: u64,
    reproduced: u64,
    reasons: BTreeMap<String, u64>,
    examples: Vec<serde_json::Value>,
    rescored: u64,
    scores_reproduced: u64,
    rescore_skipped: BTreeMap<String, u64>,
}

impl Tally {
    fn differ(&mut self, keep: usize, row: &DecisionRow, file: &Path, kind: &str, why: String) {
        *self.reasons.entry(kind.to_string()).or_default() += 1;
        if self.examples.len() < keep {
            self.examples.push(serde_json::json!({
                "request_id": row.request_id, "file": file.display().to_string(),
                "kind": kind, "difference": why}));
        }
    }

    fn merge(&mut self, other: Tally, keep: usize) {
        self.decisions += other.decisions;
        self.reproduced += other.reproduced;
        for (k, v) in other.reasons {
            *self.reasons.entry(k).or_default() += v;
        }
        let room = keep.saturating_sub(self.examples.len());
        self.examples.extend(other.examples.into_iter().take(room));
        self.rescored += other.rescored;
        self.scores_reproduced += other.scores_reproduced;
        for (k, v) in other.rescore_skipped {
            *self.rescore_skipped.entry(k).or_default() += v;
        }
    }
}

/// Replays rows exactly: the auction of each, and the models of the sampled ones.
fn replay_rows(args: &ReplayArgs, engine: &Engine, rows: &[DecisionRow], file: &Path) -> Tally {
    let market = engine.market();
    let models = engine.models();
    let keep = args.examples;
    let mut t = Tally::default();
    for row in rows {
        t.decisions += 1;
        let (req, decision, state) = match parse_row(row) {
            Ok(p) => p,
            Err(e) => {
                t.differ(keep, row, file, "unreadable_row", e);
                continue;
            }
        };
        match check_exact(&market, &req, row.ts_ms, &decision, &state) {
            Ok(()) => t.reproduced += 1,
            Err((kind, why)) => t.differ(keep, row, file, kind, why),
        }
        if !sampled(row.request_id.as_str(), args.rescore) || state.top.is_empty() {
            continue;
        }
        let record = match frame_record(row, req, decision, state) {
            Ok(r) => r,
            Err(e) => {
                t.differ(keep, row, file, "unreadable_row", e);
                continue;
            }
        };
        match rescore(engine, &models, &record) {
            Ok(None) => {
                t.rescored += 1;
                t.scores_reproduced += 1;
            }
            Ok(Some(diff)) => {
                t.rescored += 1;
                t.differ(keep, row, file, "scores_differ", diff);
            }
            Err(why) => *t.rescore_skipped.entry(why).or_default() += 1,
        }
    }
    t
}

fn exact_replay(
    args: &ReplayArgs,
    engine: &Engine,
    files: &[PathBuf],
    load_s: f64,
) -> anyhow::Result<()> {
    let threads = if args.threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        args.threads
    };
    let bar = progress(files);
    let mut errors = Vec::new();
    let mut total = Tally::default();
    let mut left = args.limit.unwrap_or(usize::MAX);
    let t = Instant::now();
    for f in files {
        if left == 0 {
            break;
        }
        let mut rows = read_file(f, args.rescore > 0.0, &mut errors);
        rows.truncate(left);
        left -= rows.len();
        // Rows are independent: each thread replays a contiguous share of the file.
        let chunk = rows.len().div_ceil(threads).max(1);
        let tallies: Vec<Tally> = std::thread::scope(|scope| {
            let handles: Vec<_> = rows
                .chunks(chunk)
                .map(|part| scope.spawn(move || replay_rows(args, engine, part, f)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_default())
                .collect()
        });
        for tally in tallies {
            total.merge(tally, args.examples);
        }
        bar.inc(std::fs::metadata(f).map_or(0, |m| m.len()));
        bar.set_message(format!(
            "{} decisions, {} reproduced",
            total.decisions, total.reproduced
        ));
    }
    bar.finish_and_clear();
    let elapsed = t.elapsed().as_secs_f64();
    let summary = serde_json::json!({
        "decisions": total.decisions,
        "reproduced": total.reproduced,
        "reproduced_share": ratio(total.reproduced as f64, total.decisions as f64),
        "differences": total.reasons,
        "examples": total.examples,
        "scores_checked": total.rescored,
        "scores_reproduced": total.scores_reproduced,
        "rescore_skipped": total.rescore_skipped,
        "files": files.len(),
        "file_errors": errors,
        "threads": threads,
        "load_s": load_s,
        "elapsed_s": elapsed,
        "decisions_per_s": ratio(total.decisions as f64, elapsed),
    });
    println!("{summary}");
    if !errors.is_empty() {
        anyhow::bail!(
            "{} of {} log files could not be read (results above are of the rest): {}",
            errors.len(),
            files.len(),
            errors[0]["file"].as_str().unwrap_or_default()
        );
    }
    Ok(())
}

/// The record a frame is rebuilt from: the parsed row with its features and served entities.
fn frame_record(
    row: &DecisionRow,
    request: podium_core::AdRequest,
    decision: podium_core::Decision,
    replay: podium_log::ReplayState,
) -> Result<DecisionRecord, String> {
    Ok(DecisionRecord {
        ts_ms: row.ts_ms as u64,
        features: features_of(&row.features)?,
        request,
        decision,
        served: podium_log::decision_log::served_of(&row.served)?.into(),
        replay,
    })
}

fn features_of(text: &str) -> Result<Vec<(String, f32)>, String> {
    let pairs: Vec<(String, Option<f32>)> =
        serde_json::from_str(text).map_err(|e| format!("`features`: {e}"))?;
    Ok(pairs
        .into_iter()
        .map(|(n, v)| (n, v.unwrap_or(f32::NAN)))
        .collect())
}

/// The logged model versions on the rebuilt frame: `Ok(None)` when every score is the same bit
/// for bit, `Ok(Some(difference))`, or `Err(why it could not be checked)`.
fn rescore(
    engine: &Engine,
    models: &podium_serving::ModelSet,
    record: &DecisionRecord,
) -> Result<Option<String>, String> {
    let frame = engine.replay_frame(record)?;
    let state = &record.replay;
    let k = state.top.len();
    for (m, used) in record.decision.model_versions.iter().skip(1).enumerate() {
        if m >= state.tasks.len() {
            break;
        }
        let logged = &state.scores[m * k..(m + 1) * k];
        // A slot whose every tier failed or ran late served its constant prior (named after the
        // primary): that is what the replay must find, not the model's answer.
        if used.tier > 0 {
            let prior = models
                .scorers
                .iter()
                .find(|s| s.name() == used.name)
                .map(|s| s.prior_value());
            if prior.is_some_and(|p| logged.iter().all(|v| v.to_bits() == p.to_bits())) {
                continue;
            }
        }
        let Some(model) = bound_version(models, &used.name, &used.version) else {
            return Err(format!(
                "{} version {} is not loaded",
                used.name, used.version
            ));
        };
        let again = model.try_score(&frame)?;
        if let Some(r) = again
            .iter()
            .zip(logged)
            .position(|(a, b)| a.to_bits() != b.to_bits())
        {
            return Ok(Some(format!(
                "{} {}: candidate {} scored {} again, {} logged",
                used.name, used.version, r, again[r], logged[r]
            )));
        }
    }
    Ok(None)
}

/// The best-effort ad of highest eCPM in a break (its lead).
fn lead(market: &MarketSnapshot, b: &BreakDecision) -> Option<String> {
    b.ads
        .iter()
        .filter(|a| {
            market.position(&a.line_item_id).is_some_and(|i| {
                matches!(
                    market.marketplace.line_items[i as usize].goal,
                    podium_auction::Goal::NonGuaranteed
                )
            })
        })
        .max_by_key(|a| a.ecpm)
        .map(|a| a.line_item_id.to_string())
}

fn score_with(model: &BoundModel, frame: &FeatureFrame) -> Result<Vec<f32>, String> {
    model.try_score(frame)
}

#[allow(clippy::too_many_lines)]
fn candidate_replay(
    args: &ReplayArgs,
    engine: &Engine,
    files: &[PathBuf],
    candidates: &[Candidate],
    candidate_market: Option<&MarketSnapshot>,
    load_s: f64,
) -> anyhow::Result<()> {
    let market = engine.market();
    let models = engine.models();
    let target_market = candidate_market.unwrap_or(&market);
    let events_dir = files[0]
        .parent()
        .and_then(Path::parent)
        .map(|p| p.join("events"))
        .unwrap_or_default();
    let (outcomes, events_error) = Outcomes::read(&events_dir);
    let bar = progress(files);
    let mut errors = Vec::new();
    if let Some(e) = events_error {
        errors.push(serde_json::json!({"file": events_dir.display().to_string(), "error": e}));
    }
    let (mut decisions, mut replayed_n, mut winners_changed) = (0u64, 0u64, 0u64);
    let mut skipped: BTreeMap<String, u64> = BTreeMap::new();
    let (mut logged_side, mut candidate_side) = (Side::default(), Side::default());
    let mut shifts: Vec<Shift> = candidates
        .iter()
        .map(|c| Shift {
            name: models.scorers[c.scorer].name(),
            candidate: format!("{} {}", c.model.model().name(), c.model.model().version()),
            ..Shift::default()
        })
        .collect();
    let mut calib: BTreeMap<&'static str, Calib> = BTreeMap::new();
    let mut timings = [0f64; 8];
    let mut samples: Vec<Sample> = Vec::new();
    let mut logged_reward = 0.0;
    let limit = args.limit.unwrap_or(usize::MAX);
    let t = Instant::now();
    'files: for f in files {
        let rows = read_file(f, !candidates.is_empty(), &mut errors);
        for row in &rows {
            if decisions as usize >= limit {
                break 'files;
            }
            decisions += 1;
            let mut skip = |why: String| *skipped.entry(why).or_default() += 1;
            let (req, decision, state) = match parse_row(row) {
                Ok(p) => p,
                Err(e) => {
                    skip(format!("unreadable row: {e}"));
                    continue;
                }
            };
            if state.market != market.fingerprint {
                skip(
                    Unreplayable::Marketplace {
                        logged: state.market,
                        here: market.fingerprint,
                    }
                    .to_string(),
                );
                continue;
            }
            let k = state.top.len();
            let mut scores = state.scores.clone();
            if !candidates.is_empty() && k > 0 {
                let record = match frame_record(row, req.clone(), decision.clone(), state.clone()) {
                    Ok(r) => r,
                    Err(e) => {
                        skip(format!("unreadable row: {e}"));
                        continue;
                    }
                };
                let frame = match engine.replay_frame(&record) {
                    Ok(f) => f,
                    Err(e) => {
                        skip(e);
                        continue;
                    }
                };
                let mut failed = None;
                for (c, shift) in candidates.iter().zip(&mut shifts) {
                    let Some(m) = state
                        .tasks
                        .iter()
                        .position(|t| *t == models.scorers[c.scorer].task())
                    else {
                        continue;
                    };
                    // The logged version on the same frame, timed alike, for a like-for-like cost.
                    if let Some(used) = decision.model_versions.get(m + 1) {
                        if let Some(base) = bound_version(&models, &used.name, &used.version) {
                            let tb = Instant::now();
                            if base.try_score(&frame).is_ok() {
                                shift.baseline_us += tb.elapsed().as_secs_f64() * 1e6;
                                shift.baseline_timed += 1;
                            }
                        }
                    }
                    let ts = Instant::now();
                    match score_with(&c.model, &frame) {
                        Ok(v) => {
                            shift.scoring_us += ts.elapsed().as_secs_f64() * 1e6;
                            for (r, &p) in v.iter().enumerate() {
                                let old = state.scores[m * k + r];
                                shift.n += 1;
                                shift.logged_sum += f64::from(old);
                                shift.candidate_sum += f64::from(p);
                                let d = f64::from((p - old).abs());
                                shift.abs_sum += d;
                                shift.max_abs = shift.max_abs.max(d);
                                shift.logged_hist[bin(old)] += 1;
                                shift.candidate_hist[bin(p)] += 1;
                            }
                            scores[m * k..(m + 1) * k].copy_from_slice(&v);
                        }
                        Err(e) => {
                            failed = Some(format!("candidate {} failed: {e}", shift.candidate))
                        }
                    }
                }
                if let Some(e) = failed {
                    skip(e);
                    continue;
                }
            }
            let mut greedy = state.clone();
            greedy.explore.clear();
            let replayed = match replay_auction(
                target_market,
                &req,
                row.ts_ms,
                &greedy,
                Some(&scores),
                candidate_market.is_none(),
            ) {
                Ok(r) => r,
                Err(e) => {
                    skip(e.to_string());
                    continue;
                }
            };
            replayed_n += 1;
            logged_side.add(&decision.breaks);
            candidate_side.add(&replayed.breaks);
            let winners = |bs: &[BreakDecision]| {
                bs.iter()
                    .map(|b| {
                        b.ads
                            .iter()
                            .map(|a| a.line_item_id.to_string())
                            .collect::<Vec<_>>()
                    })
                    .collect::<Vec<_>>()
            };
            winners_changed += u64::from(winners(&decision.breaks) != winners(&replayed.breaks));
            for (slot, v) in timings.iter_mut().zip(row.timings_us) {
                *slot += v as f64;
            }
            // Predicted against observed on the ads the log shows were played.
            for b in &decision.breaks {
                for a in &b.ads {
                    let Some(pos) = market.position(&a.line_item_id) else {
                        continue;
                    };
                    let Some(r) = state.top.iter().position(|&i| i == pos) else {
                        continue;
                    };
                    let (shown, clicked, completed) =
                        outcomes.of(req.user.id.as_str(), a.line_item_id.as_str(), row.ts_ms);
                    if !shown {
                        continue;
                    }
                    for (task, hit) in [("ctr", clicked), ("completion", completed)] {
                        let Some(m) = state.tasks.iter().position(|t| t == task) else {
                            continue;
                        };
                        let c = calib
                            .entry(if task == "ctr" { "ctr" } else { "completion" })
                            .or_default();
                        c.shown += 1;
                        c.observed += u64::from(hit);
                        c.logged_pred += f64::from(state.scores[m * k + r]);
                        c.candidate_pred += f64::from(scores[m * k + r]);
                    }
                }
            }
            // Counterfactual value of the candidate's lead choice, from logged propensities.
            for (e, (b, cb)) in state
                .explore
                .iter()
                .zip(decision.breaks.iter().zip(&replayed.breaks))
            {
                let (Some(p), Some(l)) = (e.propensity, &e.lead) else {
                    continue;
                };
                let clicked = outcomes.of(req.user.id.as_str(), l, row.ts_ms).1;
                let reward = f64::from(u8::from(clicked));
                logged_reward += reward;
                let target_lead = lead(target_market, cb);
                let pred = |li: &str| {
                    let m = state.tasks.iter().position(|t| t == "ctr")?;
                    let pos = market.position(&li.into())?;
                    let r = state.top.iter().position(|&i| i == pos)?;
                    Some(f64::from(scores[m * k + r]))
                };
                let _ = b;
                samples.push(Sample {
                    propensity: p,
                    target: f64::from(u8::from(target_lead.as_deref() == Some(l.as_str()))),
                    reward,
                    model_shown: pred(l).unwrap_or(0.0),
                    model_target: target_lead.as_deref().and_then(pred).unwrap_or(0.0),
                });
            }
        }
        bar.inc(std::fs::metadata(f).map_or(0, |m| m.len()));
        bar.set_message(format!("{decisions} decisions"));
    }
    bar.finish_and_clear();
    let n = replayed_n.max(1) as f64;
    let stage_names = podium_features::offline::TIMING_COLUMNS;
    let logged_latency: serde_json::Map<String, serde_json::Value> = stage_names
        .iter()
        .zip(timings)
        .map(|(s, v)| ((*s).to_string(), serde_json::json!(v / n)))
        .collect();
    let shift_json: Vec<serde_json::Value> = shifts
        .iter()
        .map(|s| {
            let m = s.n.max(1) as f64;
            serde_json::json!({
                "model": s.name, "candidate": s.candidate, "scores": s.n,
                "logged_mean": s.logged_sum / m, "candidate_mean": s.candidate_sum / m,
                "mean_shift": (s.candidate_sum - s.logged_sum) / m,
                "mean_abs_shift": s.abs_sum / m, "max_abs_shift": s.max_abs,
                "psi": podium_monitor::stat::psi(&s.logged_hist, &s.candidate_hist),
                "candidate_scoring_us_per_decision": s.scoring_us / n,
                "logged_version_scoring_us_per_decision":
                    ratio(s.baseline_us, s.baseline_timed as f64),
            })
        })
        .collect();
    let calib_json: serde_json::Map<String, serde_json::Value> = calib
        .iter()
        .map(|(task, c)| {
            let m = c.shown.max(1) as f64;
            (
                (*task).to_string(),
                serde_json::json!({
                    "shown": c.shown, "observed_rate": c.observed as f64 / m,
                    "logged_predicted": c.logged_pred / m, "candidate_predicted": c.candidate_pred / m,
                }),
            )
        })
        .collect();
    let counterfactual = if samples.is_empty() {
        serde_json::json!(null)
    } else {
        serde_json::json!({
            "reward": "click on the break's lead ad",
            "samples": samples.len(),
            "logged_value": logged_reward / samples.len() as f64,
            "ips": ips(&samples).ok(),
            "snips": snips(&samples).ok(),
            "doubly_robust": doubly_robust(&samples).ok(),
        })
    };
    let summary = serde_json::json!({
        "decisions": decisions,
        "replayed": replayed_n,
        "skipped": skipped,
        "winners_changed": winners_changed,
        "winners_changed_share": ratio(winners_changed as f64, replayed_n as f64),
        "logged": logged_side.json(),
        "candidate": candidate_side.json(),
        "score_shifts": shift_json,
        "calibration": calib_json,
        "outcome_events": outcomes.events,
        "logged_latency_us": logged_latency,
        "counterfactual": counterfactual,
        "file_errors": errors,
        "load_s": load_s,
        "elapsed_s": t.elapsed().as_secs_f64(),
    });
    let report = args
        .report
        .clone()
        .unwrap_or_else(|| PathBuf::from("replay-report.html"));
    std::fs::write(&report, html_report(&summary, &shifts))
        .with_context(|| format!("writing the report {}", report.display()))?;
    let mut summary = summary;
    summary["report"] = serde_json::json!(report.display().to_string());
    let mut out = std::io::stdout().lock();
    writeln!(out, "{summary}")?;
    if !errors.is_empty() {
        anyhow::bail!(
            "{} log files could not be read (results above are of the rest): {}",
            errors.len(),
            errors[0]["file"].as_str().unwrap_or_default()
        );
    }
    Ok(())
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Paired bars (logged, candidate) as an inline SVG.
fn bars(title: &str, labels: &[String], a: &[f64], b: &[f64]) -> String {
    let max = a.iter().chain(b).copied().fold(0.0f64, f64::max).max(1e-12);
    let (w, h, n) = (640.0, 200.0, labels.len().max(1) as f64);
    let step = w / n;
    let mut svg = format!(
        "<figure><figcaption>{}</figcaption><svg viewBox='0 0 {w} {}' width='{w}' height='{}'>",
        esc(title),
        h + 40.0,
        h + 40.0
    );
    for (i, l) in labels.iter().enumerate() {
        let x = i as f64 * step;
        for (j, (v, color)) in [(a[i], "#888"), (b[i], "#1f77b4")].iter().enumerate() {
            let bh = v / max * h;
            svg += &format!(
                "<rect x='{:.1}' y='{:.1}' width='{:.1}' height='{bh:.1}' fill='{color}'><title>{}: {v:.4}</title></rect>",
                x + 2.0 + j as f64 * (step - 4.0) / 2.0,
                h - bh,
                (step - 4.0) / 2.0,
                esc(l)
            );
        }
        svg += &format!(
            "<text x='{:.1}' y='{}' font-size='10' text-anchor='middle'>{}</text>",
            x + step / 2.0,
            h + 14.0,
            esc(l)
        );
    }
    svg + "</svg></figure>"
}

fn html_report(s: &serde_json::Value, shifts: &[Shift]) -> String {
    let num = |v: &serde_json::Value| v.as_f64().unwrap_or(0.0);
    let mut body = String::new();
    body +=
        "<h1>Podium candidate replay</h1><p>Grey: the logged baseline. Blue: the candidate.</p>";
    body += &format!(
        "<p>{} decisions replayed; winners changed in {} ({:.1} %).</p>",
        s["replayed"],
        s["winners_changed"],
        num(&s["winners_changed_share"]) * 100.0
    );
    let (l, c) = (&s["logged"], &s["candidate"]);
    body += "<table border='1' cellpadding='4'><tr><th></th><th>logged</th><th>candidate</th></tr>";
    for k in ["fill_rate", "ads", "revenue", "avg_price_cpm"] {
        body += &format!(
            "<tr><td>{k}</td><td>{:.4}</td><td>{:.4}</td></tr>",
            num(&l[k]),
            num(&c[k])
        );
    }
    body += "</table>";
    body += &bars(
        "Fill rate and average price (CPM)",
        &["fill rate".into(), "avg price".into()],
        &[num(&l["fill_rate"]), num(&l["avg_price_cpm"])],
        &[num(&c["fill_rate"]), num(&c["avg_price_cpm"])],
    );
    for sh in shifts {
        let labels: Vec<String> = (0..20).map(|i| format!("{:.2}", i as f64 / 20.0)).collect();
        let a: Vec<f64> = sh.logged_hist.iter().map(|&v| v as f64).collect();
        let b: Vec<f64> = sh.candidate_hist.iter().map(|&v| v as f64).collect();
        body += &bars(
            &format!("Scores of {}: logged against {}", sh.name, sh.candidate),
            &labels,
            &a,
            &b,
        );
    }
    if let Some(cal) = s["calibration"].as_object() {
        let labels: Vec<String> = cal.keys().cloned().collect();
        let obs: Vec<f64> = cal.values().map(|v| num(&v["observed_rate"])).collect();
        let lp: Vec<f64> = cal.values().map(|v| num(&v["logged_predicted"])).collect();
        let cp: Vec<f64> = cal
            .values()
            .map(|v| num(&v["candidate_predicted"]))
            .collect();
        body += &bars(
            "Predicted (grey: logged models, blue: candidate) on shown ads",
            &labels,
            &lp,
            &cp,
        );
        body += &format!(
            "<p>Observed on those ads: {}</p>",
            labels
                .iter()
                .zip(&obs)
                .map(|(l, o)| format!("{l} {o:.4}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if let Some(lat) = s["logged_latency_us"].as_object() {
        let labels: Vec<String> = lat.keys().cloned().collect();
        let v: Vec<f64> = lat.values().map(num).collect();
        body += &bars(
            "Logged latency per stage (µs, mean)",
            &labels,
            &v,
            &vec![0.0; v.len()],
        );
    }
    body += &format!(
        "<h2>Summary</h2><pre>{}</pre>",
        esc(&serde_json::to_string_pretty(s).unwrap_or_default())
    );
    format!(
        "<!doctype html><html><head><meta charset='utf-8'><title>Podium replay</title>\
         <style>body{{font-family:sans-serif;max-width:720px;margin:2em auto}}</style></head>\
         <body>{body}</body></html>"
    )
}
