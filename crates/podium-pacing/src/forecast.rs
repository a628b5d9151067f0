//! Traffic forecast: when in the day requests come, learned as a day-of-week × hour profile, so
//! that pacing can spend in step with traffic instead of with the clock.
//!
//! The 168 buckets are hours of the week in the *local time of the forecast's zone* (the zone of
//! the audience): daily rhythms follow local wall clocks, so a UTC bucket would drift by an hour
//! at every DST change. Queries about any span (a budget day in another zone included) integrate
//! over absolute time, accounting for hours that a DST change skips or repeats.
//!
//! Learning: each completed hour's request count is folded into its bucket with exponential
//! decay across weeks (half-life configurable), and into a pooled hour-of-day profile that learns
//! in one day. A bucket's rate blends its own estimate, the pooled hour-of-day one and a flat
//! prior, weighted by how much evidence each has, so a fresh forecast answers clock time and
//! moves smoothly towards the learned shape. Cumulative shares are recomputed once per completed
//! hour, so queries cost a few offset look-ups and no loops over buckets.
//!
//! It does not predict spikes (a live event): the controllers and leases absorb those.

use crate::budget::{LocalDay, TimeZone};

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;
const WEEK_MS: i64 = 7 * DAY_MS;
const BUCKETS: usize = 168;
/// The epoch (1970-01-01) was a Thursday; weeks start on Monday, three days earlier.
const WEEK_ORIGIN_SHIFT_MS: i64 = 3 * DAY_MS;
/// Evidence (in decayed observations) at which a level's own estimate and the one below it weigh
/// the same.
const PRIOR_STRENGTH: f64 = 1.0;

/// Decayed sums of one bucket: `sum` of counts and `weight` (effective number of observations).
#[derive(Clone, Copy, Default, Debug)]
struct Decayed {
    sum: f64,
    weight: f64,
}

impl Decayed {
    fn fold(&mut self, value: f64, keep: f64) {
        self.sum = self.sum * keep + value;
        self.weight = self.weight * keep + 1.0;
    }

    fn mean(&self) -> Option<f64> {
        (self.weight > 0.0).then(|| self.sum / self.weight)
    }
}

/// A learned weekly traffic profile in the local time of one zone.
#[derive(Clone, Debug)]
pub struct TrafficForecast {
    tz: TimeZone,
    /// Per-observation decay of the weekly buckets (one observation a week).
    keep_week: f64,
    /// Per-observation decay of the hour-of-day buckets (one observation a day).
    keep_day: f64,
    weekly: [Decayed; BUCKETS],
    daily: [Decayed; 24],
    overall: Decayed,
    /// The local hour being counted (hours since the epoch in local wall time) and its count;
    /// `None` until the first hour boundary is crossed, since the first hour seen is partial.
    current: Option<(i64, f64)>,
    started_hour: Option<i64>,
    /// Blended requests per hour of each bucket, and cumulative sums (`cum[0] = 0`).
    rate: [f64; BUCKETS],
    cum: [f64; BUCKETS + 1],
}

impl TrafficForecast {
    /// A forecast in `tz` with no data (it answers clock time) and a two-week half-life.
    pub fn new(tz: TimeZone) -> Self {
        Self::with_half_life(tz, 2.0)
    }

    /// A forecast whose observations lose half their weight after `half_life_weeks` weeks.
    pub fn with_half_life(tz: TimeZone, half_life_weeks: f64) -> Self {
        let half_life_weeks = half_life_weeks.max(1e-3);
        let mut f = Self {
            tz,
            keep_week: 0.5f64.powf(1.0 / half_life_weeks),
            keep_day: 0.5f64.powf(1.0 / (7.0 * half_life_weeks)),
            weekly: [Decayed::default(); BUCKETS],
            daily: [Decayed::default(); 24],
            overall: Decayed::default(),
            current: None,
            started_hour: None,
            rate: [1.0; BUCKETS],
            cum: [0.0; BUCKETS + 1],
        };
        f.recompute();
        f
    }

    /// The zone whose local hours the buckets are.
    pub fn time_zone(&self) -> TimeZone {
        self.tz
    }

    /// Records `n` requests seen at `now_ms`. Call it at least once an hour (with 0 when quiet):
    /// an hour with no call at all is treated as unknown, not as an hour without traffic.
    pub fn observe(&mut self, now_ms: i64, n: u64) {
        let hour = (now_ms + self.tz.offset_ms(now_ms)).div_euclid(HOUR_MS);
        match self.current {
            Some((h, ref mut count)) if h == hour => *count += n as f64,
            Some((h, count)) => {
                self.fold(h, count);
                self.current = Some((hour, n as f64));
            }
            None => match self.started_hour {
                // The hour in which observation began is partial: skip it.
                Some(h) if h != hour => self.current = Some((hour, n as f64)),
                Some(_) => {}
                None => self.started_hour = Some(hour),
            },
        }
    }

    fn fold(&mut self, local_hour: i64, count: f64) {
        let bucket = Self::bucket_of_local(local_hour * HOUR_MS);
        self.weekly[bucket].fold(count, self.keep_week);
        self.daily[bucket % 24].fold(count, self.keep_day);
        self.overall.fold(count, self.keep_day.powf(1.0 / 24.0));
        self.recompute();
    }

    fn bucket_of_local(local_ms: i64) -> usize {
        ((local_ms + WEEK_ORIGIN_SHIFT_MS).rem_euclid(WEEK_MS) / HOUR_MS) as usize
    }

    /// Blends each bucket's estimate with the pooled hour-of-day one and the flat level.
    fn recompute(&mut self) {
        let flat = self.overall.mean().unwrap_or(1.0).max(1e-9);
        let blend = |d: &Decayed, below: f64| match d.mean() {
            Some(m) => {
                let w = d.weight / (d.weight + PRIOR_STRENGTH);
                w * m + (1.0 - w) * below
            }
            None => below,
        };
        for b in 0..BUCKETS {
            let hour_of_day = blend(&self.daily[b % 24], flat);
            // A bucket that saw no traffic still gets a trickle, so no span forecasts zero.
            self.rate[b] = blend(&self.weekly[b], hour_of_day).max(flat * 1e-4);
            self.cum[b + 1] = self.cum[b] + self.rate[b];
        }
    }

    /// Forecast requests per hour in the local hour of the week `bucket` (0 = Monday 00:00).
    pub fn hourly_rate(&self, bucket: usize) -> f64 {
        self.rate[bucket % BUCKETS]
    }

    /// Cumulative forecast volume up to local wall time `local_ms` (from an arbitrary origin).
    fn cumulative_local(&self, local_ms: i64) -> f64 {
        let shifted = local_ms + WEEK_ORIGIN_SHIFT_MS;
        let weeks = shifted.div_euclid(WEEK_MS);
        let within = shifted.rem_euclid(WEEK_MS);
        let bucket = (within / HOUR_MS) as usize;
        let frac = (within % HOUR_MS) as f64 / HOUR_MS as f64;
        weeks as f64 * self.cum[BUCKETS] + self.cum[bucket] + frac * self.rate[bucket]
    }

    /// Forecast requests in `[from_ms, to_ms)` of absolute time. A span is split where the zone's
    /// offset changes, so a skipped hour counts nothing and a repeated one counts twice.
    pub fn volume(&self, from_ms: i64, to_ms: i64) -> f64 {
        if to_ms <= from_ms {
            return 0.0;
        }
        let off = self.tz.offset_ms(from_ms);
        if to_ms - from_ms <= MINUTE_SPLIT_MS
            || (to_ms - from_ms <= WEEK_MS && off == self.tz.offset_ms(to_ms - 1))
        {
            return self.cumulative_local(to_ms + off) - self.cumulative_local(from_ms + off);
        }
        let mid = from_ms + (to_ms - from_ms) / 2;
        self.volume(from_ms, mid) + self.volume(mid, to_ms)
    }

    /// The share of `day`'s forecast traffic that has passed by `now_ms` (0–1), interpolated
    /// within the hour; clock time while nothing has been learned.
    pub fn fraction_elapsed(&self, day: &LocalDay, now_ms: i64) -> f64 {
        self.expected(day, day.start_ms, now_ms)
    }

    /// The share of `day`'s forecast traffic that falls in `[from_ms, to_ms)` (0–1).
    pub fn expected(&self, day: &LocalDay, from_ms: i64, to_ms: i64) -> f64 {
        let total = self.volume(day.start_ms, day.end_ms);
        let from = from_ms.clamp(day.start_ms, day.end_ms);
        let to = to_ms.clamp(day.start_ms, day.end_ms);
        if total <= 0.0 {
            return day.clock_fraction(to) - day.clock_fraction(from);
        }
        (self.volume(from, to) / total).clamp(0.0, 1.0)
    }
}

/// Spans shorter than this are not split further when looking for an offset change.
const MINUTE_SPLIT_MS: i64 = 60_000;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::local_day;

    /// Traffic with a daily shape: three times busier at 20:00 than at 08:00.
    fn shape(local_hour: i64) -> u64 {
        let h = local_hour.rem_euclid(24) as f64;
        (1000.0 * (2.0 + (std::f64::consts::TAU * (h - 20.0) / 24.0).cos())) as u64
    }

    fn train(f: &mut TrafficForecast, from_ms: i64, days: i64) {
        let tz = f.time_zone();
        // One observe call per minute with a 60th of the hour's traffic.
        for m in 0..days * 24 * 60 {
            let t = from_ms + m * 60_000;
            let local_hour = (t + tz.offset_ms(t)).div_euclid(HOUR_MS);
            f.observe(t, shape(local_hour) / 60);
        }
    }

    #[test]
    fn a_fresh_forecast_is_clock_time() {
        let f = TrafficForecast::new(TimeZone::UTC);
        let day = local_day(10 * DAY_MS, TimeZone::UTC);
        let q = f.fraction_elapsed(&day, day.start_ms + 6 * HOUR_MS);
        assert!((q - 0.25).abs() < 1e-9, "{q}");
        let paris = TimeZone::parse("Europe/Paris").unwrap();
        let f = TrafficForecast::new(paris);
        // On the 23 h day, noon local is 11 h of 23 in.
        let day = local_day(1_774_778_400_000, paris); // 2026-03-29T10:00Z
        assert_eq!(day.len_ms(), 23 * HOUR_MS);
        let noon = day.start_ms + 11 * HOUR_MS;
        let q = f.fraction_elapsed(&day, noon);
        assert!((q - 11.0 / 23.0).abs() < 1e-9, "{q}");
    }

    #[test]
    fn learns_the_daily_shape_and_interpolates() {
        let tz = TimeZone::parse("America/New_York").unwrap();
        let mut f = TrafficForecast::new(tz);
        let start = 1_767_225_600_000; // 2026-01-01T00:00Z
        train(&mut f, start, 21);
        let day = local_day(start + 25 * DAY_MS, tz);
        let true_total: u64 = (0..24).map(shape).sum();
        let true_by_noon: u64 = (0..12).map(shape).sum();
        let noon = day.start_ms + 12 * HOUR_MS;
        let q = f.fraction_elapsed(&day, noon);
        let want = true_by_noon as f64 / true_total as f64;
        assert!((q - want).abs() < 0.01, "{q} vs {want}");
        assert!(q < 0.4, "mornings are quiet: {q}");
        // Half an hour into an hour is half that hour's share further.
        let half = f.fraction_elapsed(&day, noon + HOUR_MS / 2);
        let hour_share = shape(12) as f64 / true_total as f64;
        assert!((half - q - hour_share / 2.0).abs() < 0.003, "{half} {q}");
        assert!((f.fraction_elapsed(&day, day.end_ms) - 1.0).abs() < 1e-12);
        let e = f.expected(&day, noon, noon + HOUR_MS);
        assert!((e - hour_share).abs() < 0.003, "{e}");
    }

    #[test]
    fn dst_days_are_complete_and_monotone() {
        let paris = TimeZone::parse("Europe/Paris").unwrap();
        let mut f = TrafficForecast::new(paris);
        let start = 1_759_276_800_000; // 2025-10-01T00:00Z
        train(&mut f, start, 28);
        let day = local_day(1_761_480_000_000, paris); // 2025-10-26T12:00Z, the 25 h day
        assert_eq!(day.len_ms(), 25 * HOUR_MS);
        let mut last = 0.0;
        for m in 0..=25 * 60 {
            let q = f.fraction_elapsed(&day, day.start_ms + m * 60_000);
            assert!(
                q + 1e-12 >= last,
                "not monotone at minute {m}: {q} < {last}"
            );
            last = q;
        }
        assert!((last - 1.0).abs() < 1e-12);
    }
}
