//! `podium forecast …`: avails forecasts for booking guaranteed campaigns, learned from the
//! decision log, and backtests of the forecaster on a log.

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use podium_forecast::{AvailsQuery, BacktestConfig, Cap, ModelConfig, Targeting, Window};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Forecast commands.
#[derive(Subcommand, Debug)]
pub enum ForecastCommand {
    /// Forecast the opportunities of a targeting over a window, what booked guaranteed line
    /// items are already promised, and what is left to book, with an 80 % band.
    ///
    /// An opportunity is a request with a break that can hold the creative (a line item plays
    /// at most one ad per request). Learned from the decision log: the same hour of the week
    /// over the last four weeks, weekly growth, and the live events of the calendar
    /// (events.toml beside the log, or --events). Prints a JSON object.
    ///
    /// Example:
    ///   podium forecast avails --log ./podium-data/logs --marketplace ./podium-data/marketplace.json \
    ///       --targeting "country=US, device=tv, genre=sports, position=preroll, duration=30" \
    ///       --start 2026-12-07 --end 2026-12-14 --cap 3/day --impressions 2000000
    #[command(verbatim_doc_comment)]
    Avails(AvailsArgs),
    /// Learn on days 1..N of a log, forecast days N+1..N+7, and report the error per slice
    /// (weekly error, daily MAPE, bias, whether the 80 % band held the actual). Prints a JSON
    /// summary line; --output writes the whole report, --plot an HTML page of forecast against
    /// actual for the largest slices.
    ///
    /// Example:
    ///   podium forecast backtest --log ./traffic/logs --train-days 21 --plot backtest.html
    #[command(verbatim_doc_comment)]
    Backtest(BacktestArgs),
}

/// What both commands read.
#[derive(Args, Debug)]
pub struct LogArgs {
    /// Decision log: a directory (with decisions/ or .parquet files) or one file.
    #[arg(long)]
    log: PathBuf,
    /// Live-event calendar (TOML); events.toml beside the log when absent.
    #[arg(long)]
    events: Option<PathBuf>,
    /// Share of viewers whose requests are kept whole (frequency caps, contention).
    #[arg(long, default_value_t = 0.125)]
    sample: f64,
}

/// Options of `podium forecast avails`.
#[derive(Args, Debug)]
pub struct AvailsArgs {
    #[command(flatten)]
    log: LogArgs,
    /// Targeting: `country=US|CA, device=tv, genre=sports, live=true, daypart=primetime,
    /// position=preroll, duration=30` (also hours=18-23, days=sat|sun); `*` for all traffic.
    #[arg(long, default_value = "*")]
    targeting: String,
    /// Window start: RFC 3339 or a date (UTC midnight).
    #[arg(long)]
    start: String,
    /// Window end (exclusive).
    #[arg(long)]
    end: String,
    /// The booking's frequency cap: N/day, N/week or N/hour.
    #[arg(long)]
    cap: Option<String>,
    /// Impressions the booking would ask for: the answer says whether they fit.
    #[arg(long)]
    impressions: Option<u64>,
    /// Marketplace (JSON) whose guaranteed line items are booked and compete for supply.
    #[arg(long)]
    marketplace: Option<PathBuf>,
    /// Also write an HTML chart of the slice's history and forecast here.
    #[arg(long)]
    plot: Option<PathBuf>,
}

/// Options of `podium forecast backtest`.
#[derive(Args, Debug)]
pub struct BacktestArgs {
    #[command(flatten)]
    log: LogArgs,
    /// Days learned from, counted from the log's first UTC day.
    #[arg(long, default_value_t = 21)]
    train_days: u32,
    /// Days forecast after them.
    #[arg(long, default_value_t = 7)]
    horizon_days: u32,
    /// Slices judged against --target: those with at least this many opportunities a day.
    #[arg(long, default_value_t = 10_000.0)]
    min_daily: f64,
    /// Weekly error the judged slices must stay within.
    #[arg(long, default_value_t = 0.10)]
    target: f64,
    /// Write the whole report (JSON) here.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Write an HTML page of forecast against actual here.
    #[arg(long)]
    plot: Option<PathBuf>,
}

/// Runs a forecast command.
pub fn run(cmd: ForecastCommand) -> anyhow::Result<()> {
    match cmd {
        ForecastCommand::Avails(a) => avails(a),
        ForecastCommand::Backtest(a) => backtest(a),
    }
}

fn model_config(log: &LogArgs) -> anyhow::Result<ModelConfig> {
    if !(log.sample > 0.0 && log.sample <= 1.0) {
        bail!("--sample {} is not a share in (0, 1]", log.sample);
    }
    Ok(ModelConfig {
        sample_rate: log.sample,
        ..Default::default()
    })
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("{}: cannot write", path.display()))
}

fn avails(a: AvailsArgs) -> anyhow::Result<()> {
    // Everything the caller typed is checked before the log is read.
    let targeting =
        Targeting::parse(&a.targeting).map_err(|e| anyhow::anyhow!("--targeting: {e}"))?;
    let start =
        podium_forecast::parse_time(&a.start).map_err(|e| anyhow::anyhow!("--start: {e}"))?;
    let end = podium_forecast::parse_time(&a.end).map_err(|e| anyhow::anyhow!("--end: {e}"))?;
    let cap = a
        .cap
        .as_deref()
        .map(Cap::parse)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--cap: {e}"))?;
    let market = a
        .marketplace
        .as_deref()
        .map(podium_auction::Marketplace::read)
        .transpose()?;
    let t = Instant::now();
    let loaded = podium_forecast::load(
        &a.log.log,
        a.log.events.as_deref(),
        model_config(&a.log)?,
        None,
    )
    .map_err(anyhow::Error::msg)?;
    let learn_s = t.elapsed().as_secs_f64();
    let query = AvailsQuery {
        targeting,
        window: Window {
            start_ms: start,
            end_ms: end,
        },
        cap,
        impressions: a.impressions,
    };
    let answer = podium_forecast::avails(
        &loaded.model,
        &query,
        market.as_ref().map(|m| m.line_items.as_slice()),
    )?;
    let mut json = serde_json::to_value(&answer)?;
    json["cap"] = serde_json::json!(a.cap);
    json["log_files"] = serde_json::json!(loaded.files);
    json["requests_learned"] = serde_json::json!(loaded.model.requests());
    json["calendar"] = serde_json::json!(loaded.calendar.map(|p| p.display().to_string()));
    json["problems"] = serde_json::to_value(&loaded.problems)?;
    json["learn_s"] = serde_json::json!((learn_s * 100.0).round() / 100.0);
    if let Some(path) = &a.plot {
        let chart = podium_forecast::forecast_chart(&loaded.model, &query.targeting, query.window)?;
        let intro = format!(
            "<p>Forecast {} – {}: {:.0} opportunities (80 % band {:.0} – {:.0}); promised {:.0}; available {:.0}.</p>",
            answer.start, answer.end, answer.opportunities, answer.opportunities_low,
            answer.opportunities_high, answer.promised, answer.available
        );
        write(path, &chart.page(&intro))?;
    }
    // A reader that closed the pipe early (`| head`) is not an error.
    let _ = writeln!(std::io::stdout(), "{json}");
    problems_exit(&loaded.problems)
}

/// Results are printed first; a refused file still makes the command fail, naming it.
fn problems_exit(problems: &[podium_forecast::ReadProblem]) -> anyhow::Result<()> {
    match problems.first() {
        Some(p) => bail!(
            "{}: {} ({} problem(s) in the log; the rest was read)",
            p.file,
            p.error,
            problems.len()
        ),
        None => Ok(()),
    }
}

fn backtest(a: BacktestArgs) -> anyhow::Result<()> {
    if a.train_days == 0 || a.horizon_days == 0 {
        bail!("--train-days and --horizon-days must be at least 1");
    }
    let cfg = model_config(&a.log)?;
    let t = Instant::now();
    let calendar_path = a
        .log
        .events
        .clone()
        .or_else(|| podium_forecast::find_calendar(&a.log.log));
    let calendar = match &calendar_path {
        Some(p) => podium_pacing::Calendar::read(p).map_err(anyhow::Error::msg)?,
        None => podium_pacing::Calendar::default(),
    };
    let mut builder = podium_forecast::ModelBuilder::new(cfg.clone());
    let (_, problems) = podium_forecast::read_each(&a.log.log, cfg.sample_rate, |o| builder.add(o))
        .map_err(anyhow::Error::msg)?;
    let report = podium_forecast::backtest_built(
        builder,
        calendar,
        &BacktestConfig {
            train_days: a.train_days,
            horizon_days: a.horizon_days,
            min_daily: a.min_daily,
            target_error: a.target,
        },
    )
    .with_context(|| a.log.log.display().to_string())?;
    if let Some(path) = &a.output {
        write(path, &serde_json::to_string_pretty(&report)?)?;
    }
    if let Some(path) = &a.plot {
        write(path, &report.html(6))?;
    }
    let judged: Vec<serde_json::Value> = report
        .slices
        .iter()
        .filter(|s| s.no_forecast.is_none() && s.daily_actual >= a.min_daily)
        .map(|s| {
            serde_json::json!({"slice": s.slice, "daily_actual": s.daily_actual.round(),
                "weekly_error": (s.weekly_error * 1e4).round() / 1e4,
                "daily_mape": (s.daily_mape * 1e4).round() / 1e4,
                "bias": (s.bias * 1e4).round() / 1e4, "in_band": s.in_band})
        })
        .collect();
    let summary = serde_json::json!({
        "requests": report.requests,
        "train_start": report.train_start,
        "origin": report.origin,
        "horizon_end": report.horizon_end,
        "slices": report.slices.len(),
        "judged": report.judged,
        "within_target": report.within_target,
        "max_weekly_error": report.max_weekly_error,
        "median_weekly_error": report.median_weekly_error,
        "band_coverage": report.band_coverage,
        "min_daily": a.min_daily,
        "target": a.target,
        "judged_slices": judged,
        "calendar": calendar_path.map(|p| p.display().to_string()),
        "problems": problems,
        "elapsed_s": (t.elapsed().as_secs_f64() * 100.0).round() / 100.0,
    });
    let _ = writeln!(std::io::stdout(), "{summary}");
    problems_exit(&problems)
}
