//! `podium sim traffic`: weeks of simulated ad traffic (`podium_sim::weeks`: daily and weekly
//! shapes, growth, noise, live events) decided by the real demo engine at their simulated times,
//! and written as a real decision log with the calendar of the live events. Avails forecasting
//! learns from such a log and is backtested on it.
//!
//! Ads placed play (97 % of them), so spend and frequency caps count and roll over per simulated
//! day. Clicks and completions are not simulated: `podium sim market` does that.

use anyhow::Context;
use clap::Args;
use podium_engine::{build_demo, Engine, EngineConfig};
use podium_features::offline::{DecisionRow, RollPolicy};
use podium_log::{DecisionLogSink, DecisionSink, ParquetLog};
use podium_sim::weeks::{parse_rfc3339, rfc3339, TimedRequest, Weeks, WeeksConfig};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Share of placed ads that play (the viewer stays): their impressions count spend and caps.
const PLAY_RATE: f64 = 0.97;
/// Rows per log file: a file's row group is held in memory until it closes, and readers (pyarrow)
/// load row groups whole, so files stay at a few hundred MB.
const ROWS_PER_FILE: usize = 100_000;
/// Rows at most queued for the log writer: the log drops rows past its queue (8,192), and a
/// simulation must lose none, so deciding waits for the writer instead.
const LOG_BACKLOG: u64 = 4_096;

/// Options of `podium sim traffic`.
#[derive(Args, Debug)]
pub struct TrafficArgs {
    /// Directory to write: logs/decisions/ (the decision log) and events.toml (the calendar of
    /// live events). Must not exist or be empty.
    #[arg(long)]
    out: PathBuf,
    /// Days simulated.
    #[arg(long, default_value_t = 28)]
    days: u32,
    /// Average requests per day over a week (before growth and live events).
    #[arg(long, default_value_t = 20_000)]
    requests_per_day: u32,
    /// Viewers (`u-0` …); the demo audience has stored features for the first 10,000.
    #[arg(long, default_value_t = 20_000)]
    users: usize,
    /// Seed of the traffic and of the live events.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// First simulated instant, RFC 3339 (a Monday midnight gives whole weeks).
    #[arg(long, default_value = "2026-10-05T00:00:00Z", value_parser = parse_rfc3339)]
    start: i64,
    /// Decisions in flight at once. The requests and their times do not depend on it; with more
    /// than one, the engine's state (pacing, caps, learned reserves) sees neighbouring requests
    /// in an order that may vary, and so may their ads, and the log's row order.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Simulated seconds between steps of the pacing control loop (live, about one second: a
    /// few requests apart; here a minute is a few dozen requests apart at 20,000 a day).
    #[arg(long, default_value_t = 60)]
    tick_s: u32,
    /// Demo data directory whose marketplace and models decide (created if absent).
    #[arg(long, default_value = "./podium-data")]
    data_dir: PathBuf,
    /// Seed of the demo world, when --data-dir is created.
    #[arg(long, default_value_t = 1)]
    world_seed: u64,
}

/// The engine keeps nothing but the log: the log sink's inner sink drops every record.
struct Discard;

impl DecisionSink for Discard {
    fn submit(&self, _: podium_log::DecisionRecord) {}
}

/// What the run decided.
#[derive(Default)]
struct Counts {
    requests: u64,
    event_requests: u64,
    ads: u64,
    impressions: u64,
}

impl Counts {
    /// Counts a finished decision.
    fn add(&mut self, done: Result<Outcome, tokio::task::JoinError>, bar: &indicatif::ProgressBar) {
        // A decision that panicked is a bug to see, not a row to skip.
        let o = done.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        self.requests += 1;
        self.event_requests += u64::from(o.event);
        self.ads += o.ads;
        self.impressions += o.impressions;
        bar.inc(1);
    }
}

/// What one decision did.
struct Outcome {
    event: bool,
    ads: u64,
    impressions: u64,
}

/// Refuses an `--out` that is a file or a directory with something in it; creates it otherwise.
fn fresh_dir(out: &Path) -> anyhow::Result<()> {
    if out.exists() {
        anyhow::ensure!(
            out.is_dir(),
            "--out {}: exists and is not a directory",
            out.display()
        );
        let mut entries = std::fs::read_dir(out)
            .with_context(|| format!("--out {}: cannot read it", out.display()))?;
        anyhow::ensure!(
            entries.next().is_none(),
            "--out {}: exists and is not empty; name a new or empty directory",
            out.display()
        );
    }
    std::fs::create_dir_all(out)
        .with_context(|| format!("--out {}: cannot create it", out.display()))
}

/// Runs `podium sim traffic`.
pub fn run(args: TrafficArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=3_660).contains(&args.days),
        "--days must be between 1 and 3660"
    );
    anyhow::ensure!(
        args.requests_per_day >= 1,
        "--requests-per-day must be positive"
    );
    anyhow::ensure!(args.users >= 1, "--users must be positive");
    anyhow::ensure!(
        (1..=1_024).contains(&args.concurrency),
        "--concurrency must be between 1 and 1024"
    );
    anyhow::ensure!(
        (1..=3_600).contains(&args.tick_s),
        "--tick-s must be between 1 and 3600"
    );
    fresh_dir(&args.out)?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let _entered = rt.enter();
    let config = EngineConfig {
        // Offline: every model answers, however loaded this machine is.
        default_tmax: Duration::from_secs(5),
        monitoring: false,
        ..EngineConfig::default()
    };
    let log_dir = args.out.join("logs");
    let sink = DecisionLogSink::decisions(
        Arc::new(Discard),
        &log_dir.join("decisions"),
        RollPolicy {
            max_rows: ROWS_PER_FILE,
            ..RollPolicy::default()
        },
    )
    .context("--out: the decision log")?;
    let log = sink.log().clone();
    let world = crate::sim::DemoWorld {
        data_dir: args.data_dir.clone(),
        seed: args.world_seed,
    };
    let engine = build_demo(
        &world.data_dir,
        &world.config(),
        config,
        Arc::new(sink),
        podium_serving::ComputePool::new(0),
    )
    .with_context(|| format!("loading the demo world in {}", world.data_dir.display()))?;

    let weeks = Weeks::new(WeeksConfig::demo(
        args.start,
        args.days,
        f64::from(args.requests_per_day),
        args.users,
        args.seed,
    ));
    let calendar = args.out.join("events.toml");
    std::fs::write(&calendar, weeks.calendar().to_toml())
        .with_context(|| format!("writing {}", calendar.display()))?;

    let bar = if std::io::stderr().is_terminal() {
        indicatif::ProgressBar::with_draw_target(
            Some(u64::from(args.requests_per_day) * u64::from(args.days)),
            indicatif::ProgressDrawTarget::stderr_with_hz(4),
        )
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} decisions, {per_sec} · {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let started = Instant::now();
    let tick_ms = i64::from(args.tick_s) * 1000;
    let counts = rt.block_on(drive(
        &engine,
        &weeks,
        &log,
        args.concurrency,
        tick_ms,
        &bar,
    ));
    let decided_s = started.elapsed().as_secs_f64();
    bar.finish_and_clear();

    // Every row to the writer, then the open file closed: the files are complete Parquet.
    while log.written() + log.dropped() < counts.requests {
        std::thread::sleep(Duration::from_millis(10));
    }
    log.flush();
    anyhow::ensure!(
        log.dropped() == 0 && log.failed() == 0,
        "the decision log lost rows: {} dropped, {} writes failed",
        log.dropped(),
        log.failed()
    );
    let decisions = log_dir.join("decisions");
    let files = std::fs::read_dir(&decisions)
        .with_context(|| format!("reading {}", decisions.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".parquet"))
        .count();
    let elapsed = started.elapsed().as_secs_f64();
    let summary = serde_json::json!({
        "days": args.days,
        "start": rfc3339(args.start),
        "end": rfc3339(weeks.config().end_ms()),
        "requests": counts.requests,
        "event_requests": counts.event_requests,
        "events": weeks.calendar().events.len(),
        "ads": counts.ads,
        "impressions": counts.impressions,
        "files": files,
        "elapsed_s": elapsed,
        "decisions_per_s": counts.requests as f64 / decided_s.max(1e-9),
        "log": log_dir.display().to_string(),
        "calendar": calendar.display().to_string(),
    });
    println!("{summary}");
    Ok(())
}

/// Decides every hour's requests in order of simulated time, `concurrency` at once, stepping
/// pacing every `tick_ms` of simulated time and never letting the log writer fall behind its
/// queue.
async fn drive(
    engine: &Engine,
    weeks: &Weeks,
    log: &ParquetLog<DecisionRow>,
    concurrency: usize,
    tick_ms: i64,
    bar: &indicatif::ProgressBar,
) -> Counts {
    let mut counts = Counts::default();
    let mut inflight = tokio::task::JoinSet::new();
    let mut next_tick = weeks.config().start_ms;
    for h in 0..weeks.hours() {
        bar.set_message(rfc3339(
            weeks.config().start_ms + i64::from(h) * podium_sim::weeks::HOUR_MS,
        ));
        for t in weeks.hour(h) {
            while next_tick <= t.ts_ms {
                engine.pacing_tick(next_tick).await;
                next_tick += tick_ms;
            }
            while inflight.len() >= concurrency {
                if let Some(done) = inflight.join_next().await {
                    counts.add(done, bar);
                }
            }
            while counts.requests > log.written() + log.dropped() + LOG_BACKLOG {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            inflight.spawn(decide(engine.clone(), t));
        }
    }
    while let Some(done) = inflight.join_next().await {
        counts.add(done, bar);
    }
    counts
}

/// Decides one request at its simulated time; the ads that play count as impressions then.
async fn decide(engine: Engine, t: TimedRequest) -> Outcome {
    let event = t.request.content.event_id.is_some();
    let (user, request_id) = (t.request.user.id.clone(), t.request.request_id.clone());
    let d = engine
        .decide_at(t.request, Instant::now(), t.ts_ms.max(0) as u64)
        .await;
    let (mut ads, mut impressions) = (0, 0);
    for ad in d.breaks.iter().flat_map(|b| &b.ads) {
        ads += 1;
        let key = format!("{}/{}", request_id.as_str(), ad.line_item_id.as_str());
        if podium_pacing::draw(&key, 0x9A7) < PLAY_RATE {
            impressions += 1;
            engine.record_impression(
                user.as_str(),
                ad.line_item_id.as_str(),
                t.ts_ms,
                Some(ad.price_cpm.as_units()),
                None,
                "",
            );
        }
    }
    Outcome {
        event,
        ads,
        impressions,
    }
}
