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
pub use backtest::{backtest, BacktestConfig, BacktestReport, SliceResult};
pub use model::{ForecastError, ModelConfig, TrafficModel, VolumeForecast, Window};
pub use opportunity::Opportunity;
pub use query::Targeting;
pub use read::{read_log, LogRead, ReadProblem};

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
