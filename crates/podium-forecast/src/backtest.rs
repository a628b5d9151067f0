//! Backtests: learn from days `1..=N` of a log, forecast days `N+1..=N+H`, and compare with what
//! the log says happened, slice by slice.

use crate::model::{iso, ForecastError, ModelBuilder, ModelConfig, TrafficModel, HOUR_MS};
use crate::opportunity::Opportunity;
use crate::plot::{Chart, Line};
use crate::query::Targeting;
use podium_pacing::Calendar;
use serde::Serialize;

const DAY_MS: i64 = 24 * HOUR_MS;

/// What to backtest.
#[derive(Clone, Debug)]
pub struct BacktestConfig {
    /// Days learned from, counted from the log's first UTC day.
    pub train_days: u32,
    /// Days forecast after them.
    pub horizon_days: u32,
    /// Slices judged against the target: those with at least this many opportunities a day.
    pub min_daily: f64,
    /// Weekly error the judged slices must stay within.
    pub target_error: f64,
}

impl Default for BacktestConfig {
    fn default() -> Self {
        Self {
            train_days: 21,
            horizon_days: 7,
            min_daily: 10_000.0,
            target_error: 0.10,
        }
    }
}

/// One slice's result.
#[derive(Clone, Debug, Serialize)]
pub struct SliceResult {
    /// The slice, as a targeting query.
    pub slice: String,
    /// Opportunities per day that happened, on average over the horizon.
    pub daily_actual: f64,
    /// Over the horizon: forecast and what happened.
    pub forecast: f64,
    /// What happened.
    pub actual: f64,
    /// |forecast − actual| / actual over the horizon.
    pub weekly_error: f64,
    /// Mean of the days' |forecast − actual| / actual.
    pub daily_mape: f64,
    /// (forecast − actual) / actual over the horizon: positive is over-forecast.
    pub bias: f64,
    /// Whether the actual fell inside the 80 % band.
    pub in_band: bool,
    /// Daily forecasts and actuals.
    pub days: Vec<(String, f64, f64)>,
    /// Why there is no forecast, when there is none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_forecast: Option<String>,
    #[serde(skip)]
    chart: Option<Chart>,
}

/// The backtest's report.
#[derive(Clone, Debug, Serialize)]
pub struct BacktestReport {
    /// Where the training history starts and ends, and the horizon's end.
    pub train_start: String,
    /// End of the training history (the forecast origin).
    pub origin: String,
    /// End of the horizon.
    pub horizon_end: String,
    /// Requests read.
    pub requests: u64,
    /// Slices forecast.
    pub slices: Vec<SliceResult>,
    /// Slices with at least `min_daily` opportunities a day.
    pub judged: usize,
    /// Of them, those within `target_error` over the horizon.
    pub within_target: usize,
    /// Largest weekly error among the judged slices.
    pub max_weekly_error: f64,
    /// Median weekly error among the judged slices.
    pub median_weekly_error: f64,
    /// Share of forecast slices whose horizon total fell inside the 80 % band.
    pub band_coverage: f64,
    /// The thresholds used.
    pub min_daily: f64,
    /// Weekly error the judged slices must stay within.
    pub target_error: f64,
}

/// The slices a backtest reports: all traffic, each value of each dimension, and each country ×
/// device pair.
pub fn slices(model: &TrafficModel) -> Vec<String> {
    let (countries, devices, genres) = model.vocabulary();
    let mut out = vec!["*".to_string()];
    out.extend(countries.iter().map(|c| format!("country={c}")));
    out.extend(devices.iter().map(|d| format!("device={d}")));
    out.extend(genres.iter().map(|g| format!("genre={g}")));
    out.extend(["live=true".to_string(), "live=false".to_string()]);
    out.extend(["preroll", "midroll", "postroll"].map(|p| format!("position={p},duration=30")));
    for c in &countries {
        for d in &devices {
            out.push(format!("country={c},device={d}"));
        }
    }
    out
}

/// Runs a backtest over opportunities of a log.
pub fn backtest(
    opportunities: Vec<Opportunity>,
    calendar: Calendar,
    cfg: &BacktestConfig,
    model_cfg: ModelConfig,
) -> Result<BacktestReport, ForecastError> {
    let mut b = ModelBuilder::new(model_cfg);
    for o in opportunities {
        b.add(o);
    }
    backtest_built(b, calendar, cfg)
}

/// Runs a backtest over a log's opportunities gathered in a builder.
pub fn backtest_built(
    builder: ModelBuilder,
    calendar: Calendar,
    cfg: &BacktestConfig,
) -> Result<BacktestReport, ForecastError> {
    let (Some(first), Some(last)) = (builder.first_ms(), builder.last_ms()) else {
        return Err(ForecastError::Empty);
    };
    let day0 = first.div_euclid(DAY_MS) * DAY_MS;
    let origin = day0 + i64::from(cfg.train_days) * DAY_MS;
    let end = origin + i64::from(cfg.horizon_days) * DAY_MS;
    if last < end - HOUR_MS {
        return Err(ForecastError::BadWindow(format!(
            "the log runs from {} to {}: training on {} days and forecasting {} more needs it to run until {}",
            iso(first),
            iso(last),
            cfg.train_days,
            cfg.horizon_days,
            iso(end)
        )));
    }
    let requests = builder.requests();
    let model = builder.finish(Some(origin), calendar)?;
    // As a forecast would: every hour of the week must have been seen.
    if model.history_days() < model.cfg.min_history_days {
        return Err(ForecastError::TooLittleHistory {
            days: model.history_days(),
            needed: model.cfg.min_history_days,
            origin: iso(origin),
        });
    }
    let mut results = Vec::new();
    for text in slices(&model) {
        let Ok(t) = Targeting::parse(&text) else {
            continue;
        };
        let q = model.compile(&t)?;
        let (from, to) = (
            model.origin as i64,
            model.origin as i64 + i64::from(cfg.horizon_days) * 24,
        );
        let actual = model.actual(&q, from, to);
        let total_actual: f64 = actual.iter().sum();
        let days_actual: Vec<f64> = actual.chunks(24).map(|c| c.iter().sum()).collect();
        let day_names: Vec<String> = (0..cfg.horizon_days)
            .map(|d| iso(origin + i64::from(d) * DAY_MS)[..10].to_string())
            .collect();
        let vol = match model.forecast_hours(&q, from, to, Vec::new()) {
            Ok(v) => v,
            Err(e) => {
                results.push(SliceResult {
                    slice: text,
                    daily_actual: total_actual / f64::from(cfg.horizon_days),
                    forecast: f64::NAN,
                    actual: total_actual,
                    weekly_error: f64::NAN,
                    daily_mape: f64::NAN,
                    bias: f64::NAN,
                    in_band: false,
                    days: Vec::new(),
                    no_forecast: Some(e.to_string()),
                    chart: None,
                });
                continue;
            }
        };
        let days_forecast: Vec<f64> = vol.hourly.chunks(24).map(|c| c.iter().sum()).collect();
        let rel = |f: f64, a: f64| if a > 0.0 { (f - a) / a } else { f64::NAN };
        let mape = days_forecast
            .iter()
            .zip(&days_actual)
            .map(|(f, a)| rel(*f, *a).abs())
            .sum::<f64>()
            / days_actual.len().max(1) as f64;
        let history = model.actual(&q, (from - 14 * 24).max(model.data_start as i64), from);
        let hour_ms = |h: i64| (model.first_hour + h) * HOUR_MS;
        let band = (
            vol.low / vol.total.max(1e-9),
            vol.high / vol.total.max(1e-9),
        );
        let chart = Chart {
            title: format!("{text}: forecast against what happened"),
            lines: vec![
                Line::of(
                    "history",
                    "#888888",
                    (from - history.len() as i64..from)
                        .map(hour_ms)
                        .zip(history.iter().copied()),
                ),
                Line::of(
                    "actual",
                    "#1f77b4",
                    (from..to).map(hour_ms).zip(actual.iter().copied()),
                ),
                Line::of(
                    "forecast",
                    "#d62728",
                    (from..to).map(hour_ms).zip(vol.hourly.iter().copied()),
                ),
            ],
            band: Some(
                (from..to)
                    .map(hour_ms)
                    .zip(vol.hourly.iter().map(|f| (f * band.0, f * band.1)))
                    .map(|(x, (l, h))| (x, l, h))
                    .collect(),
            ),
            marker_ms: Some(origin),
        };
        results.push(SliceResult {
            slice: text,
            daily_actual: total_actual / f64::from(cfg.horizon_days),
            forecast: vol.total,
            actual: total_actual,
            weekly_error: rel(vol.total, total_actual).abs(),
            daily_mape: mape,
            bias: rel(vol.total, total_actual),
            in_band: (vol.low..=vol.high).contains(&total_actual),
            days: day_names
                .into_iter()
                .zip(days_forecast.into_iter().zip(days_actual))
                .map(|(d, (f, a))| (d, f, a))
                .collect(),
            no_forecast: None,
            chart: Some(chart),
        });
    }
    let judged: Vec<&SliceResult> = results
        .iter()
        .filter(|r| r.no_forecast.is_none() && r.daily_actual >= cfg.min_daily)
        .collect();
    let mut errs: Vec<f64> = judged.iter().map(|r| r.weekly_error).collect();
    errs.sort_by(f64::total_cmp);
    let forecast: Vec<&SliceResult> = results.iter().filter(|r| r.no_forecast.is_none()).collect();
    Ok(BacktestReport {
        train_start: iso(model.history_start_ms()),
        origin: iso(origin),
        horizon_end: iso(end),
        requests,
        judged: judged.len(),
        within_target: judged
            .iter()
            .filter(|r| r.weekly_error <= cfg.target_error)
            .count(),
        max_weekly_error: errs.last().copied().unwrap_or(f64::NAN),
        median_weekly_error: errs.get(errs.len() / 2).copied().unwrap_or(f64::NAN),
        band_coverage: forecast.iter().filter(|r| r.in_band).count() as f64
            / forecast.len().max(1) as f64,
        slices: results,
        min_daily: cfg.min_daily,
        target_error: cfg.target_error,
    })
}

impl BacktestReport {
    /// An HTML page: the summary table and a chart of forecast against actual for the largest
    /// slices.
    pub fn html(&self, charts: usize) -> String {
        let mut rows = String::new();
        for r in &self.slices {
            let pct = |x: f64| {
                if x.is_nan() {
                    "–".to_string()
                } else {
                    format!("{:.1} %", 100.0 * x)
                }
            };
            rows.push_str(&format!(
                "<tr><td>{}</td><td>{:.0}</td><td>{:.0}</td><td>{:.0}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
                crate::plot::escape(&r.slice),
                r.daily_actual,
                r.forecast,
                r.actual,
                pct(r.weekly_error),
                pct(r.daily_mape),
                pct(r.bias),
                r.no_forecast.as_deref().map_or(if r.in_band { "yes" } else { "no" }.to_string(), crate::plot::escape),
            ));
        }
        let mut by_size: Vec<&SliceResult> =
            self.slices.iter().filter(|r| r.chart.is_some()).collect();
        by_size.sort_by(|a, b| b.daily_actual.total_cmp(&a.daily_actual));
        let charts: String = by_size
            .iter()
            .take(charts)
            .filter_map(|r| r.chart.as_ref().map(Chart::svg))
            .collect();
        format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>Avails forecast backtest</title>\
             <style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:2px 8px;text-align:right}}td:first-child{{text-align:left}}</style></head><body>\
             <h1>Avails forecast backtest</h1>\
             <p>Trained on {} – {}, forecast until {}; {} requests. Slices with ≥ {:.0} opportunities a day: {} of {} within {:.0} % weekly error (largest {:.1} %, median {:.1} %); 80 % band held the actual for {:.0} % of slices.</p>\
             {charts}\
             <table><tr><th>slice</th><th>daily actual</th><th>forecast</th><th>actual</th><th>weekly error</th><th>daily MAPE</th><th>bias</th><th>in 80 % band</th></tr>\n{rows}</table></body></html>",
            self.train_start,
            self.origin,
            self.horizon_end,
            self.requests,
            self.min_daily,
            self.within_target,
            self.judged,
            100.0 * self.target_error,
            100.0 * self.max_weekly_error,
            100.0 * self.median_weekly_error,
            100.0 * self.band_coverage,
        )
    }
}
