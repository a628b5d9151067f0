//! Inventory (avails) forecasting: before a guaranteed campaign is booked, how many
//! opportunities its targeting will see, how many are already promised to booked guaranteed
//! line items, and what is left, learned from Podium's own decision logs.
//!
//! - [`opportunity`]: a logged request reduced to what the forecast counts;
//! - [`query`]: targeting queries (`country=US, device=tv, daypart=primetime, duration=30`);
//! - [`model`]: the traffic model (hourly counts by cell, live events apart, a viewer sample)
//!   and the seasonal forecast of a slice with its band;
//! - [`avails`]: the answer, with frequency caps and the contention of booked line items (the
//!   pacing plan's high-water-mark allocation);
//! - [`backtest`]: learn on days `1..N` of a log, forecast the next week, report the error per
//!   slice; [`plot`] draws forecast against actual;
//! - [`read`]: the decision log's columns the forecast reads.

pub mod avails;
pub mod backtest;
pub mod model;
pub mod opportunity;
pub mod plot;
pub mod query;
pub mod read;

pub use avails::{avails, Avails, AvailsQuery, Cap, Competitor};
pub use backtest::{backtest, backtest_built, BacktestConfig, BacktestReport, SliceResult};
pub use model::{ForecastError, ModelBuilder, ModelConfig, TrafficModel, VolumeForecast, Window};
pub use opportunity::Opportunity;
pub use query::Targeting;
pub use read::{read_each, ReadProblem};

/// Parses a window bound: RFC 3339 (`2026-12-01T00:00:00Z`) or a date (`2026-12-01`, UTC
/// midnight).
pub fn parse_time(text: &str) -> Result<i64, String> {
    let t = text.trim();
    if let Ok(d) = chrono::DateTime::parse_from_rfc3339(t) {
        return Ok(d.timestamp_millis());
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(t, "%Y-%m-%d") {
        return Ok(d
            .and_hms_opt(0, 0, 0)
            .map_or(0, |x| x.and_utc().timestamp_millis()));
    }
    Err(format!(
        "{text:?} is not a time (RFC 3339, 2026-12-01T00:00:00Z, or a date, 2026-12-01)"
    ))
}

/// A model learned from a log directory, with what reading it found.
pub struct Loaded {
    /// The model.
    pub model: TrafficModel,
    /// Decision files read.
    pub files: usize,
    /// Files or rows refused (the rest was read).
    pub problems: Vec<ReadProblem>,
    /// The calendar file used, if any.
    pub calendar: Option<std::path::PathBuf>,
}

/// The calendar beside a log when none is named: `events.toml` in the log directory or the
/// directory above it.
pub fn find_calendar(log: &std::path::Path) -> Option<std::path::PathBuf> {
    [log.join("events.toml"), log.join("../events.toml")]
        .into_iter()
        .find(|p| p.is_file())
}

/// Reads a log (and its calendar) and learns the traffic; forecasts start at `origin_ms` or
/// where the log ends.
pub fn load(
    log: &std::path::Path,
    calendar: Option<&std::path::Path>,
    cfg: ModelConfig,
    origin_ms: Option<i64>,
) -> Result<Loaded, String> {
    let calendar_path = calendar
        .map(std::path::Path::to_path_buf)
        .or_else(|| find_calendar(log));
    let cal = match &calendar_path {
        Some(p) => podium_pacing::Calendar::read(p)?,
        None => podium_pacing::Calendar::default(),
    };
    let mut builder = ModelBuilder::new(cfg.clone());
    let (files, problems) = read::read_each(log, cfg.sample_rate, |o| builder.add(o))?;
    let model = builder.finish(origin_ms, cal).map_err(|e| {
        let why = problems
            .first()
            .map_or(String::new(), |p| format!(" ({}: {})", p.file, p.error));
        format!("{}: {e}{why}", log.display())
    })?;
    Ok(Loaded {
        model,
        files,
        problems,
        calendar: calendar_path,
    })
}

/// A chart of a slice: the last two weeks of what happened, the last week as forecast a week
/// before it (forecast against actual), and the forecast of the window with its band.
pub fn forecast_chart(
    model: &TrafficModel,
    targeting: &Targeting,
    window: Window,
) -> Result<plot::Chart, ForecastError> {
    let q = model.compile(targeting)?;
    let vol = model.forecast(&q, window)?;
    let hour = 3_600_000;
    let first = model.first_hour;
    let origin = model.origin as i64;
    let past = (origin - 14 * 24).max(model.data_start as i64);
    let history = model.actual(&q, past, origin);
    let from = vol.from_ms / hour - first;
    let band = (
        vol.low / vol.total.max(1e-9),
        vol.high / vol.total.max(1e-9),
    );
    let at = |h: i64| (first + h) * hour;
    Ok(plot::Chart {
        title: format!(
            "{}: opportunities per hour, forecast against actual, and ahead",
            if targeting.text.is_empty() {
                "*"
            } else {
                &targeting.text
            }
        ),
        lines: [
            Some(plot::Line::of(
                "actual",
                "#1f77b4",
                (past..origin).map(at).zip(history),
            )),
            // The last week as forecast a week before: forecast against actual.
            model.hindcast(&q, 1).map(|(start, values)| {
                plot::Line::of(
                    "forecast a week before",
                    "#ff7f0e",
                    (start..).map(at).zip(values),
                )
            }),
            Some(plot::Line::of(
                "forecast",
                "#d62728",
                (from..).map(at).zip(vol.hourly.iter().copied()),
            )),
        ]
        .into_iter()
        .flatten()
        .collect(),
        band: Some(
            (from..)
                .map(at)
                .zip(&vol.hourly)
                .map(|(x, f)| (x, f * band.0, f * band.1))
                .collect(),
        ),
        marker_ms: Some(model.origin_ms()),
    })
}
