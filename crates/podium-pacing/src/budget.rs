//! Budgets and time: a line item's daily and lifetime budgets, its flight, and the local
//! calendar days of its time zone (23 h and 25 h days at DST changes included).
//!
//! Everything takes the time as an argument (`now_ms`, ms since the Unix epoch) so that the
//! simulator can drive it with a simulated clock; nothing here reads the system clock. This
//! module says how much may be spent today; it does not decide when in the day to spend it (that
//! is the forecast's and the controllers' job) nor count spend (the ledger's).

use crate::forecast::TrafficForecast;
use chrono::{Datelike, NaiveDate, NaiveDateTime, Offset, TimeZone as _, Utc};
use chrono_tz::Tz;
use podium_core::Micros;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

const MINUTE_MS: i64 = 60_000;

/// What is wrong with a budget as configured.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BudgetError {
    /// The time zone is not an IANA name chrono-tz knows.
    #[error("unknown time zone {0:?} (expected an IANA name such as \"Europe/Paris\" or \"UTC\")")]
    UnknownTimeZone(String),
    /// The flight ends before it starts.
    #[error("flight ends ({end_ms}) before it starts ({start_ms})")]
    FlightReversed {
        /// Flight start, ms since the epoch.
        start_ms: i64,
        /// Flight end, ms since the epoch.
        end_ms: i64,
    },
    /// A budget amount is negative.
    #[error("{which} budget is negative: {amount}")]
    Negative {
        /// `daily` or `lifetime`.
        which: &'static str,
        /// The amount given.
        amount: Micros,
    },
}

/// An IANA time zone, parsed once at the edge; serialized as its name (`"Europe/Paris"`).
///
/// Kept as a parsed zone rather than a string so that a budget that deserialized is known to
/// have a valid zone: an unknown name fails marketplace loading with an error naming it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TimeZone(Tz);

impl TimeZone {
    /// Coordinated Universal Time, the default.
    pub const UTC: TimeZone = TimeZone(Tz::UTC);

    /// Parses an IANA name; an unknown one is an error naming it.
    pub fn parse(name: &str) -> Result<TimeZone, BudgetError> {
        Tz::from_str(name)
            .map(TimeZone)
            .map_err(|_| BudgetError::UnknownTimeZone(name.to_string()))
    }

    /// The IANA name.
    pub fn name(&self) -> &'static str {
        self.0.name()
    }

    /// The chrono-tz zone.
    pub fn tz(&self) -> Tz {
        self.0
    }

    /// The offset from UTC in ms at an instant (positive east of Greenwich).
    pub fn offset_ms(&self, now_ms: i64) -> i64 {
        let utc = utc_naive(now_ms);
        i64::from(
            self.0
                .offset_from_utc_datetime(&utc)
                .fix()
                .local_minus_utc(),
        ) * 1000
    }
}

impl Default for TimeZone {
    fn default() -> Self {
        TimeZone::UTC
    }
}

impl TryFrom<String> for TimeZone {
    type Error = BudgetError;
    fn try_from(name: String) -> Result<Self, Self::Error> {
        TimeZone::parse(&name)
    }
}

impl From<TimeZone> for String {
    fn from(tz: TimeZone) -> String {
        tz.name().to_string()
    }
}

impl fmt::Display for TimeZone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A calendar day in some time zone: `[start_ms, end_ms)`, 23, 24 or 25 hours long.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LocalDay {
    /// The first instant of the day (local midnight, or the first instant after it when a DST
    /// change skips midnight), ms since the epoch.
    pub start_ms: i64,
    /// The first instant of the next day.
    pub end_ms: i64,
    /// The local date, `YYYY-MM-DD`; used in budget keys.
    pub key: String,
}

impl LocalDay {
    /// How long the day is, in ms.
    pub fn len_ms(&self) -> i64 {
        self.end_ms - self.start_ms
    }

    /// The share of the day's clock time that has passed by `now_ms`, clamped to 0–1.
    pub fn clock_fraction(&self, now_ms: i64) -> f64 {
        ((now_ms - self.start_ms) as f64 / self.len_ms() as f64).clamp(0.0, 1.0)
    }
}

fn utc_naive(ms: i64) -> NaiveDateTime {
    Utc.timestamp_millis_opt(ms)
        .single()
        .map_or(NaiveDateTime::MIN, |d| d.naive_utc())
}

/// The first instant of a local date. Midnight normally; where a DST change skips midnight (a
/// few zones change at 00:00) the first local time that exists, found in 15-minute steps.
fn start_of_date(date: NaiveDate, tz: Tz) -> i64 {
    let midnight = date.and_hms_opt(0, 0, 0).expect("midnight is a valid time");
    for step in 0..=(4 * 4) {
        let local = midnight + chrono::Duration::minutes(15 * step);
        if let Some(t) = tz.from_local_datetime(&local).earliest() {
            return t.timestamp_millis();
        }
    }
    // No zone skips four hours; treat the date as UTC rather than fail.
    midnight.and_utc().timestamp_millis()
}

/// The local calendar day of `tz` that contains `now_ms`.
pub fn local_day(now_ms: i64, tz: TimeZone) -> LocalDay {
    let date = utc_naive(now_ms)
        .checked_add_signed(chrono::Duration::milliseconds(tz.offset_ms(now_ms)))
        .map_or(NaiveDate::MIN, |d| d.date());
    let start_ms = start_of_date(date, tz.tz());
    let end_ms = start_of_date(date.succ_opt().unwrap_or(date), tz.tz());
    LocalDay {
        start_ms,
        end_ms: end_ms.max(start_ms + MINUTE_MS),
        key: format!("{:04}-{:02}-{:02}", date.year(), date.month(), date.day()),
    }
}

/// How a lifetime budget is spread over the remaining days of its flight.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LifetimeSpread {
    /// In proportion to each remaining day's share of the flight's remaining traffic (clock time
    /// without a forecast), so every day of the flight gets its fair part.
    #[default]
    Even,
    /// All of what is left may be spent today.
    Asap,
}

/// A line item's (or campaign's) budgets: a daily cap, a lifetime budget, or both, within an
/// optional flight, in a time zone. Missing fields take their defaults (no cap, no flight, UTC).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BudgetSpec {
    /// At most this much per local day.
    pub daily: Option<Micros>,
    /// At most this much over the whole flight.
    pub lifetime: Option<Micros>,
    /// Delivery starts at this instant (ms since the epoch); none: already started.
    pub flight_start_ms: Option<i64>,
    /// Delivery ends at this instant (exclusive); none: open-ended.
    pub flight_end_ms: Option<i64>,
    /// The zone whose calendar days the daily budget follows.
    pub time_zone: TimeZone,
    /// How the lifetime budget is spread over the flight's days.
    pub lifetime_spread: LifetimeSpread,
}

impl BudgetSpec {
    /// Checks what serde cannot: a flight that ends before it starts, negative amounts.
    pub fn validate(&self) -> Result<(), BudgetError> {
        if let (Some(start_ms), Some(end_ms)) = (self.flight_start_ms, self.flight_end_ms) {
            if end_ms < start_ms {
                return Err(BudgetError::FlightReversed { start_ms, end_ms });
            }
        }
        for (which, amount) in [("daily", self.daily), ("lifetime", self.lifetime)] {
            if let Some(amount) = amount.filter(|a| a.0 < 0) {
                return Err(BudgetError::Negative { which, amount });
            }
        }
        Ok(())
    }

    /// Whether `now_ms` falls within the flight (start inclusive, end exclusive).
    pub fn in_flight(&self, now_ms: i64) -> bool {
        self.flight_start_ms.is_none_or(|s| now_ms >= s)
            && self.flight_end_ms.is_none_or(|e| now_ms < e)
    }

    /// The local day of this budget's time zone that contains `now_ms`.
    pub fn day(&self, now_ms: i64) -> LocalDay {
        local_day(now_ms, self.time_zone)
    }

    /// What may be spent today (the local day containing `now_ms`); `None` when nothing limits
    /// it. `spent_lifetime_before_today` is the lifetime spend up to the start of today, so that
    /// the answer does not move during the day as today's spend comes in.
    ///
    /// The rule: zero outside the flight; otherwise the smaller of the daily cap and today's part
    /// of the remaining lifetime budget `R = lifetime − spent_lifetime_before_today`. With
    /// [`LifetimeSpread::Asap`], or without a flight end, today's part is all of `R`. With
    /// [`LifetimeSpread::Even`] it is `R × w(today) / w(today … flight end)`, `w` being clock time
    /// within the flight: a partial first or last day gets its partial share, and each day
    /// recomputes from what is actually left, so a day that underdelivers spreads its shortfall
    /// over the days after it. [`BudgetSpec::day_budget_forecast`] weighs by forecast traffic.
    pub fn day_budget(&self, spent_lifetime_before_today: Micros, now_ms: i64) -> Option<Micros> {
        self.day_budget_weighted(spent_lifetime_before_today, now_ms, |from, to| {
            (to - from).max(0) as f64
        })
    }

    /// As [`BudgetSpec::day_budget`], weighing the remaining days by the forecast's expected
    /// traffic instead of clock time (a weekend with half the traffic gets half the budget).
    pub fn day_budget_forecast(
        &self,
        spent_lifetime_before_today: Micros,
        now_ms: i64,
        forecast: &TrafficForecast,
    ) -> Option<Micros> {
        self.day_budget_weighted(spent_lifetime_before_today, now_ms, |from, to| {
            forecast.volume(from, to)
        })
    }

    /// [`BudgetSpec::day_budget`] with the weight of a span `[from_ms, to_ms)` given.
    pub fn day_budget_weighted(
        &self,
        spent_lifetime_before_today: Micros,
        now_ms: i64,
        weight: impl Fn(i64, i64) -> f64,
    ) -> Option<Micros> {
        if !self.in_flight(now_ms) {
            return Some(Micros::ZERO);
        }
        let lifetime_part = self.lifetime.map(|lifetime| {
            let remaining = Micros((lifetime - spent_lifetime_before_today).0.max(0));
            let end = match (self.lifetime_spread, self.flight_end_ms) {
                (LifetimeSpread::Even, Some(end)) => end,
                _ => return remaining,
            };
            let day = self.day(now_ms);
            let from = self
                .flight_start_ms
                .map_or(day.start_ms, |s| s.max(day.start_ms));
            let today = weight(from, day.end_ms.min(end));
            let rest = weight(from, end);
            if rest <= 0.0 || today >= rest {
                return remaining;
            }
            Micros((remaining.0 as f64 * (today / rest)).floor() as i64)
        });
        match (self.daily, lifetime_part) {
            (Some(d), Some(l)) => Some(d.min(l)),
            (d, l) => d.or(l),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000;
    const DAY: i64 = 24 * HOUR;

    fn ms(rfc3339: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(rfc3339)
            .unwrap()
            .timestamp_millis()
    }

    #[test]
    fn local_days_follow_the_zone_and_dst() {
        let paris = TimeZone::parse("Europe/Paris").unwrap();
        // 2026-03-29: clocks go 02:00 → 03:00 in Paris, a 23 h day.
        let d = local_day(ms("2026-03-29T12:00:00+02:00"), paris);
        assert_eq!(d.key, "2026-03-29");
        assert_eq!(d.start_ms, ms("2026-03-29T00:00:00+01:00"));
        assert_eq!(d.len_ms(), 23 * HOUR);
        // 2026-10-25: 03:00 → 02:00, a 25 h day.
        let d = local_day(ms("2026-10-25T23:59:00+01:00"), paris);
        assert_eq!(d.len_ms(), 25 * HOUR);
        assert_eq!(d.end_ms, ms("2026-10-26T00:00:00+01:00"));
        // Just before local midnight is still the previous local day, whatever UTC says.
        let ny = TimeZone::parse("America/New_York").unwrap();
        let d = local_day(ms("2026-11-27T23:30:00-05:00"), ny);
        assert_eq!(d.key, "2026-11-27");
        assert_eq!(d.len_ms(), DAY);
        // Santiago skips midnight (00:00 → 01:00) on 2026-09-06: the day starts at 01:00.
        let scl = TimeZone::parse("America/Santiago").unwrap();
        let d = local_day(ms("2026-09-06T12:00:00-03:00"), scl);
        assert_eq!(d.start_ms, ms("2026-09-06T01:00:00-03:00"));
        assert_eq!(d.len_ms(), 23 * HOUR);
        assert_eq!(local_day(0, TimeZone::UTC).key, "1970-01-01");
    }

    #[test]
    fn unknown_time_zones_are_named_in_the_error() {
        let err = TimeZone::parse("Europe/Pariss").unwrap_err();
        assert!(err.to_string().contains("Europe/Pariss"), "{err}");
        let err = serde_json::from_str::<BudgetSpec>(r#"{"time_zone":"Mars/Olympus"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("Mars/Olympus"), "{err}");
        let spec: BudgetSpec = serde_json::from_str(r#"{"daily":5000000}"#).unwrap();
        assert_eq!(spec.time_zone, TimeZone::UTC);
        assert_eq!(spec.daily, Some(Micros(5_000_000)));
        assert_eq!(
            serde_json::to_value(&spec).unwrap()["time_zone"],
            serde_json::json!("UTC")
        );
    }

    #[test]
    fn day_budget_is_the_daily_cap_or_the_lifetime_spread_over_the_flight() {
        let start = ms("2026-11-23T00:00:00Z");
        let mut spec = BudgetSpec {
            daily: Some(Micros(100)),
            flight_start_ms: Some(start),
            flight_end_ms: Some(start + 10 * DAY),
            ..BudgetSpec::default()
        };
        assert!(spec.validate().is_ok());
        assert_eq!(spec.day_budget(Micros::ZERO, start - 1), Some(Micros::ZERO));
        assert!(!spec.in_flight(start + 10 * DAY));
        assert_eq!(
            spec.day_budget(Micros::ZERO, start + HOUR),
            Some(Micros(100))
        );
        // Lifetime 1000 over 10 days, 400 spent by day 5 (of 10): 600 over the 5 left → 120,
        // capped by the daily 100.
        spec.lifetime = Some(Micros(1000));
        let day5 = start + 5 * DAY + HOUR;
        assert_eq!(spec.day_budget(Micros(400), day5), Some(Micros(100)));
        spec.daily = None;
        assert_eq!(spec.day_budget(Micros(400), day5), Some(Micros(120)));
        // The answer does not move during the day.
        assert_eq!(
            spec.day_budget(Micros(400), day5 + 20 * HOUR),
            Some(Micros(120))
        );
        spec.lifetime_spread = LifetimeSpread::Asap;
        assert_eq!(spec.day_budget(Micros(400), day5), Some(Micros(600)));
        // Overspent lifetime: nothing left.
        assert_eq!(spec.day_budget(Micros(1200), day5), Some(Micros::ZERO));
        // A flight that starts at noon: the first day gets its half-day share.
        let spec = BudgetSpec {
            lifetime: Some(Micros(1000)),
            flight_start_ms: Some(start + 12 * HOUR),
            flight_end_ms: Some(start + 12 * HOUR + 2 * DAY),
            ..BudgetSpec::default()
        };
        assert_eq!(
            spec.day_budget(Micros::ZERO, start + 13 * HOUR),
            Some(Micros(250))
        );
        assert_eq!(BudgetSpec::default().day_budget(Micros(5), 0), None);
        let reversed = BudgetSpec {
            flight_start_ms: Some(10),
            flight_end_ms: Some(5),
            ..BudgetSpec::default()
        };
        assert!(reversed.validate().is_err());
    }
}
