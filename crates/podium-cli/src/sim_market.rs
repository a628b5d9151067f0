//! `podium sim market`: the demo marketplace simulated end to end through the real engine, as
//! two arms side by side (control: the world as it is; treatment: other models, auction settings
//! or exploration), each arm an engine of its own with its own budgets, pacing and frequency
//! caps, so that the arms cannot take budget or supply from each other. Viewers respond by the
//! demo's ground truth.

use anyhow::Context;
use clap::{Args, ValueEnum};
use podium_core::AdRequest;
use podium_engine::{build_demo, Engine, EngineConfig};
use podium_log::MemoryLog;
use podium_sim::demo::true_response;
use podium_sim::traffic::{RequestGen, TrafficConfig};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How requests are split between the arms.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Design {
    /// Viewers are randomised to arms; every line item's budget is split between the arms in
    /// the same proportion, so that neither arm can spend the other's budget.
    BudgetSplit,
    /// Whole clusters of supply (country × genre) go to one arm; each arm's budgets are scaled
    /// to the share of traffic its clusters had, and intervals are computed over clusters.
    Cluster,
}

/// Options of `podium sim market`.
#[derive(Args, Debug)]
pub struct MarketArgs {
    /// The world the control arm serves.
    #[command(flatten)]
    world: crate::sim::DemoWorld,
    /// Requests over the simulated day (both arms together).
    #[arg(long, default_value_t = 20_000)]
    requests: usize,
    /// Seed of the traffic and of the viewers' responses.
    #[arg(long, default_value_t = 1)]
    traffic_seed: u64,
    /// How requests and budgets are split between the arms.
    #[arg(long, value_enum, default_value = "budget-split")]
    design: Design,
    /// Share of traffic in the treatment arm.
    #[arg(long, default_value_t = 0.5)]
    treatment_share: f64,
    /// Treatment models: a directory of model bundles, each replacing the bundle of its name.
    #[arg(long)]
    treatment_models: Option<PathBuf>,
    /// Treatment auction settings (TOML of marketplace fields, as `podium replay --config`).
    #[arg(long)]
    treatment_config: Option<PathBuf>,
    /// Treatment exploration rate (as `podium serve --exploration`).
    #[arg(long)]
    treatment_exploration: Option<f64>,
    /// Daily budgets are multiplied by this, so that they bind within a short run.
    #[arg(long, default_value_t = 0.002)]
    budget_scale: f64,
    /// No live-event burst (by default 20:00–22:00 carries ×8 traffic, all of it live sport).
    #[arg(long)]
    no_burst: bool,
    /// Also write the JSON report to this file.
    #[arg(long)]
    output: Option<PathBuf>,
}

/// Figures of one arm.
#[derive(Default)]
struct Arm {
    requests: u64,
    breaks: u64,
    filled: u64,
    ads: u64,
    impressions: u64,
    clicks: u64,
    completions: u64,
    /// Revenue of each request (units), for intervals.
    per_request: Vec<f64>,
    /// (revenue, clicks, requests) of each cluster.
    clusters: BTreeMap<String, (f64, f64, f64)>,
    clicks_per_request: Vec<f64>,
    /// Spend per line item (units), from played impressions.
    spend: BTreeMap<String, f64>,
    hourly: [(u64, f64); 24],
    explored: u64,
}

fn mean_se(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    if n < 2.0 {
        return (v.first().copied().unwrap_or(0.0), f64::NAN);
    }
    let m = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0);
    (m, (var / n).sqrt())
}

/// Per-request mean and standard error of a ratio of cluster totals (a / requests), by the
/// delta method over clusters.
fn cluster_ratio(clusters: &[(f64, f64)]) -> (f64, f64) {
    let k = clusters.len() as f64;
    let (sa, sn): (f64, f64) = clusters
        .iter()
        .fold((0.0, 0.0), |s, c| (s.0 + c.0, s.1 + c.1));
    if sn == 0.0 {
        return (0.0, f64::NAN);
    }
    let r = sa / sn;
    if k < 2.0 {
        return (r, f64::NAN);
    }
    let nbar = sn / k;
    let var = clusters
        .iter()
        .map(|c| (c.0 - r * c.1).powi(2))
        .sum::<f64>()
        / (k - 1.0);
    (r, (var / k).sqrt() / nbar)
}

impl Arm {
    fn summary(&self, design: Design, budgets: &BTreeMap<String, f64>) -> serde_json::Value {
        let (revenue, clicks) = self.per_request_stats(design);
        let overspent: Vec<_> = self
            .spend
            .iter()
            .filter(|(li, s)| budgets.get(*li).is_some_and(|b| **s > b * 1.01 + 1e-9))
            .map(|(li, s)| serde_json::json!({"line_item": li, "spent": s, "budget": budgets[li]}))
            .collect();
        let spend: f64 = self.spend.values().sum();
        serde_json::json!({
            "requests": self.requests,
            "breaks": self.breaks,
            "fill_rate": self.filled as f64 / self.breaks.max(1) as f64,
            "ads": self.ads,
            "impressions": self.impressions,
            "clicks": self.clicks,
            "completions": self.completions,
            "ctr": self.clicks as f64 / self.impressions.max(1) as f64,
            "completion_rate": self.completions as f64 / self.impressions.max(1) as f64,
            "revenue": self.per_request.iter().sum::<f64>(),
            "revenue_per_1000_requests": {"value": revenue.0 * 1000.0, "ci95": ci(revenue, 1000.0)},
            "clicks_per_1000_requests": {"value": clicks.0 * 1000.0, "ci95": ci(clicks, 1000.0)},
            "avg_price_cpm": self.per_request.iter().sum::<f64>() * 1000.0 / self.ads.max(1) as f64,
            "budget": budgets.values().sum::<f64>(),
            "spend": spend,
            "line_items_overspent": overspent,
            "explored_breaks": self.explored,
            "hourly": self.hourly.iter().enumerate().map(|(h, (n, r))| serde_json::json!({"hour": h, "requests": n, "revenue": r})).collect::<Vec<_>>(),
        })
    }

    /// (mean, standard error) per request of revenue and of clicks: over requests when viewers
    /// were randomised, over clusters when clusters were.
    fn per_request_stats(&self, design: Design) -> ((f64, f64), (f64, f64)) {
        match design {
            Design::BudgetSplit => (
                mean_se(&self.per_request),
                mean_se(&self.clicks_per_request),
            ),
            Design::Cluster => {
                let rev: Vec<(f64, f64)> = self.clusters.values().map(|c| (c.0, c.2)).collect();
                let clk: Vec<(f64, f64)> = self.clusters.values().map(|c| (c.1, c.2)).collect();
                (cluster_ratio(&rev), cluster_ratio(&clk))
            }
        }
    }
}

fn ci((m, se): (f64, f64), scale: f64) -> serde_json::Value {
    if se.is_finite() {
        serde_json::json!([(m - 1.96 * se) * scale, (m + 1.96 * se) * scale])
    } else {
        serde_json::Value::Null
    }
}

/// A stable draw in [0, 1) of a key.
fn draw(key: &str, salt: u32) -> f64 {
    podium_pacing::draw(key, salt)
}

/// Prepares an arm's data directory: the world's marketplace with budgets scaled (and the
/// treatment's settings), its models (with the treatment's bundles in place of those they name).
fn arm_dir(
    base: &Path,
    dir: &Path,
    budget_factor: f64,
    config: Option<&Path>,
    models: Option<&Path>,
) -> anyhow::Result<BTreeMap<String, f64>> {
    let mut market = podium_auction::Marketplace::read(&base.join("marketplace.json"))?;
    if let Some(path) = config {
        market = crate::replay::changed_marketplace(&market, path)?;
    }
    let mut budgets = BTreeMap::new();
    for li in &mut market.line_items {
        li.daily_budget =
            podium_core::Micros((li.daily_budget.0 as f64 * budget_factor).round() as i64);
        budgets.insert(li.id.to_string(), li.daily_budget.as_units());
    }
    market.write(&dir.join("marketplace.json"))?;
    std::fs::copy(base.join("models.toml"), dir.join("models.toml"))?;
    if base.join("features.toml").is_file() {
        std::fs::copy(base.join("features.toml"), dir.join("features.toml"))?;
    }
    let bundles = dir.join("models");
    std::fs::create_dir_all(&bundles)?;
    for e in std::fs::read_dir(base.join("models"))? {
        let p = std::fs::canonicalize(e?.path())?;
        std::os::unix::fs::symlink(&p, bundles.join(p.file_name().unwrap_or_default()))?;
    }
    if let Some(m) = models {
        let mut replaced = 0;
        for e in std::fs::read_dir(m).with_context(|| format!("reading {}", m.display()))? {
            let p = std::fs::canonicalize(e?.path())?;
            if !p.join("model.toml").is_file() {
                continue;
            }
            let bundle = podium_model::load_bundle(&p)
                .with_context(|| format!("treatment bundle {}", p.display()))?;
            let target = bundles.join(bundle.name());
            anyhow::ensure!(
                target.exists(),
                "treatment bundle {}: the world has no model named {}",
                p.display(),
                bundle.name()
            );
            std::fs::remove_file(&target)?;
            std::os::unix::fs::symlink(&p, &target)?;
            replaced += 1;
        }
        anyhow::ensure!(
            replaced > 0,
            "--treatment-models {}: no model bundles",
            m.display()
        );
    }
    Ok(budgets)
}

/// Runs `podium sim market`.
pub fn run(args: MarketArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.treatment_share > 0.0 && args.treatment_share < 1.0,
        "--treatment-share must be between 0 and 1 (exclusive)"
    );
    anyhow::ensure!(args.requests >= 100, "--requests must be at least 100");
    anyhow::ensure!(args.budget_scale > 0.0, "--budget-scale must be positive");
    if let Some(e) = args.treatment_exploration {
        anyhow::ensure!(
            (0.0..=1.0).contains(&e),
            "--treatment-exploration must be in [0, 1]"
        );
    }
    let demo = args.world.config();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let _entered = rt.enter();
    let pool = podium_serving::ComputePool::new(0);
    let offline = EngineConfig {
        // Offline: every model answers, however slow this machine.
        default_tmax: Duration::from_secs(5),
        monitoring: false,
        ..EngineConfig::default()
    };
    args.world.ensure(offline.clone(), pool.clone())?;

    // Cluster design: clusters (country × genre) drawn to arms; budgets follow traffic shares.
    let traffic = TrafficConfig::demo();
    let cluster_of = |req: &AdRequest| format!("{}/{}", req.user.country, req.content.genre);
    let in_treatment = |req: &AdRequest| match args.design {
        Design::BudgetSplit => draw(req.user.id.as_str(), 0xA4B) < args.treatment_share,
        Design::Cluster => draw(&cluster_of(req), 0xA4B) < args.treatment_share,
    };
    let requests = day_of_traffic(&args, &traffic);
    let treated =
        requests.iter().filter(|(_, r)| in_treatment(r)).count() as f64 / requests.len() as f64;
    anyhow::ensure!(
        treated > 0.0 && treated < 1.0,
        "every request fell in one arm: too few clusters for --treatment-share {}",
        args.treatment_share
    );
    let mut engines = Vec::new();
    let mut budgets = Vec::new();
    let dirs = [tempfile::tempdir()?, tempfile::tempdir()?];
    for (arm, dir) in dirs.iter().enumerate() {
        let share = if arm == 0 { 1.0 - treated } else { treated };
        let treatment = arm == 1;
        budgets.push(arm_dir(
            &args.world.data_dir,
            dir.path(),
            args.budget_scale * share,
            args.treatment_config.as_deref().filter(|_| treatment),
            args.treatment_models.as_deref().filter(|_| treatment),
        )?);
        let log = MemoryLog::spawn(4);
        let config = EngineConfig {
            exploration: if treatment {
                args.treatment_exploration.unwrap_or(0.0)
            } else {
                0.0
            },
            ..offline.clone()
        };
        let engine = build_demo(
            dir.path(),
            &demo,
            config,
            Arc::new(log.clone()),
            pool.clone(),
        )
        .with_context(|| format!("building the {} arm", ["control", "treatment"][arm]))?;
        rt.block_on(engine.warm_up(2));
        rt.block_on(engine.pacing_tick(podium_features::now_ms()));
        engines.push((engine, log));
    }

    let mut arms = [Arm::default(), Arm::default()];
    let started = Instant::now();
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(requests.len() as u64),
        indicatif::ProgressDrawTarget::stderr_with_hz(4),
    );
    for (k, (hour, req)) in requests.into_iter().enumerate() {
        let a = usize::from(in_treatment(&req));
        let (engine, log) = &engines[a];
        let arm = &mut arms[a];
        let cluster = cluster_of(&req);
        let d = rt.block_on(engine.decide(req.clone(), Instant::now()));
        let record = rt.block_on(log.recent(1)).pop();
        let (revenue, clicks) = respond(engine, &req, &d, record.as_ref(), arm, args.traffic_seed);
        arm.requests += 1;
        arm.per_request.push(revenue);
        arm.clicks_per_request.push(clicks);
        let c = arm.clusters.entry(cluster).or_default();
        c.0 += revenue;
        c.1 += clicks;
        c.2 += 1.0;
        arm.hourly[hour].0 += 1;
        arm.hourly[hour].1 += revenue;
        if k % 100 == 99 {
            for (e, _) in &engines {
                rt.block_on(e.pacing_tick(podium_features::now_ms()));
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let control = arms[0].summary(args.design, &budgets[0]);
    let treatment = arms[1].summary(args.design, &budgets[1]);
    let diff = |metric: usize| {
        let (c, t) = (
            arms[0].per_request_stats(args.design),
            arms[1].per_request_stats(args.design),
        );
        let (c, t) = if metric == 0 { (c.0, t.0) } else { (c.1, t.1) };
        let d = t.0 - c.0;
        let se = (t.1.powi(2) + c.1.powi(2)).sqrt();
        serde_json::json!({"value": d * 1000.0, "ci95": ci((d, se), 1000.0),
                           "relative": if c.0 != 0.0 { d / c.0 } else { f64::NAN }})
    };
    let report = serde_json::json!({
        "design": format!("{:?}", args.design),
        "requests": arms[0].requests + arms[1].requests,
        "treatment_share": treated,
        "clusters": if args.design == Design::Cluster {
            serde_json::json!([arms[0].clusters.len(), arms[1].clusters.len()])
        } else { serde_json::Value::Null },
        "control": control,
        "treatment": treatment,
        "treatment_minus_control": {
            "revenue_per_1000_requests": diff(0),
            "clicks_per_1000_requests": diff(1),
        },
        "elapsed_s": started.elapsed().as_secs_f64(),
    });
    if let Some(out) = &args.output {
        std::fs::write(out, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", out.display()))?;
    }
    println!("{report}");
    Ok(())
}

/// The requests of a simulated day, with their hours: a diurnal curve and, unless turned off,
/// a live-event burst at 20:00–22:00 (×8, all live sport).
fn day_of_traffic(args: &MarketArgs, traffic: &TrafficConfig) -> Vec<(usize, AdRequest)> {
    let weight = |h: usize| {
        let base = podium_sim::pacing::diurnal_rate(1.0, h as i64 * 3_600_000 + 1_800_000);
        if !args.no_burst && (20..22).contains(&h) {
            base * 8.0
        } else {
            base
        }
    };
    let total: f64 = (0..24).map(weight).sum();
    let mut gen = RequestGen::new(traffic.clone(), args.traffic_seed);
    let mut out = Vec::with_capacity(args.requests);
    let mut n = 0usize;
    for h in 0..24 {
        let count = if h == 23 {
            args.requests - n
        } else {
            ((args.requests as f64) * weight(h) / total).round() as usize
        };
        for _ in 0..count.min(args.requests - n) {
            let mut req = gen.next_request();
            req.request_id = format!("sim-{}", out.len()).as_str().into();
            if !args.no_burst && (20..22).contains(&h) {
                req.content.live = true;
                req.content.genre = "sports".into();
                req.content.event_id = Some("final".into());
            }
            if let Ok(req) = req.validate() {
                out.push((h, req));
            }
        }
        n += count;
    }
    out
}

/// Plays a decision's ads to the viewer by the ground truth; returns the revenue (units) and
/// clicks, recording impressions in the engine (spend, caps).
fn respond(
    engine: &Engine,
    req: &AdRequest,
    d: &podium_core::Decision,
    record: Option<&podium_log::DecisionRecord>,
    arm: &mut Arm,
    seed: u64,
) -> (f64, f64) {
    let frame = record
        .filter(|r| r.request.request_id == req.request_id)
        .and_then(|r| engine.replay_frame(r).ok().map(|f| (f, r)));
    let market = engine.market();
    let (mut revenue, mut clicks) = (0.0, 0.0);
    arm.explored += record.map_or(0, |r| {
        r.replay.explore.iter().filter(|e| e.explored).count() as u64
    });
    for b in &d.breaks {
        arm.breaks += 1;
        arm.filled += u64::from(!b.ads.is_empty());
        for ad in &b.ads {
            arm.ads += 1;
            let key = format!("{}/{}", req.request_id.as_str(), ad.line_item_id.as_str());
            let mut rng =
                ChaCha8Rng::seed_from_u64(seed ^ (draw(&key, 0xD1CE) * u64::MAX as f64) as u64);
            // Some ads never play (the viewer leaves): no impression, no spend.
            if rng.random::<f64>() >= 0.97 {
                continue;
            }
            let price = ad.price_cpm.0 as f64 / 1e6;
            arm.impressions += 1;
            revenue += price / 1000.0;
            *arm.spend.entry(ad.line_item_id.to_string()).or_default() += price / 1000.0;
            let now = podium_features::now_ms();
            engine.record_impression(
                req.user.id.as_str(),
                ad.line_item_id.as_str(),
                now,
                Some(price),
                None,
                "",
            );
            let (p_click, p_complete) = frame
                .as_ref()
                .and_then(|(f, r)| {
                    let pos = market.position(&ad.line_item_id)?;
                    let row = r.replay.top.iter().position(|&i| i == pos)?;
                    Some(true_response(|name| {
                        f.schema()
                            .column(name)
                            .map(|c| f64::from(f.column(c)[row]))
                            .filter(|v| v.is_finite())
                            .unwrap_or(0.0)
                    }))
                })
                .unwrap_or((0.0, 0.0));
            if rng.random::<f64>() < p_click {
                arm.clicks += 1;
                clicks += 1.0;
            }
            if rng.random::<f64>() < p_complete {
                arm.completions += 1;
            }
        }
    }
    (revenue, clicks)
}
