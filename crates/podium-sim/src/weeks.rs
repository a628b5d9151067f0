//! Weeks of ad traffic with the structure real traffic has, for forecasting: an hour-of-day curve
//! in each country's local time, weekends higher, mild growth, Poisson noise per hour, a device
//! and genre mix that moves with the hour (TV in the evening, mobile by day, kids' shows in the
//! morning and afternoon, news in the morning, sport at weekends), heavy-tailed viewers, and live
//! events: one-off spikes of extra traffic listed in a [`Calendar`] with the requests planners
//! expect of them (the calendar also lists the events of the [`FUTURE_DAYS`] after the span).
//!
//! Everything is drawn from the seed; each hour and each week of events from a stream of its own,
//! so a longer run starts with the same traffic and events as a shorter one. Requests are built
//! by [`RequestGen`] (breaks, titles); like its requests, they carry no `utc_offset_min`: local
//! time shapes when viewers watch, not what the request says. What the engine decides, and what
//! viewers do with the ads, is not modelled here.

use crate::traffic::{Dims, RequestGen, TrafficConfig};
use podium_core::{AdRequest, Device};
use podium_pacing::calendar::{Calendar, LiveEvent};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// An hour, in ms.
pub const HOUR_MS: i64 = 3_600_000;
/// A day, in ms.
pub const DAY_MS: i64 = 24 * HOUR_MS;
/// A week, in ms.
pub const WEEK_MS: i64 = 7 * DAY_MS;
/// Days after the simulated span whose events the calendar lists (what planners already know).
pub const FUTURE_DAYS: u32 = 14;

/// Relative traffic by local hour of day: low at night, a peak in the evening.
const HOUR_CURVE: [f64; 24] = [
    0.45, 0.30, 0.20, 0.15, 0.12, 0.15, 0.30, 0.50, 0.65, 0.70, 0.72, 0.75, 0.80, 0.80, 0.78, 0.80,
    0.90, 1.05, 1.30, 1.60, 1.85, 1.80, 1.40, 0.85,
];
/// Devices viewers watch on, with their share of viewers.
const DEVICES: [(Device, f64); 4] = [
    (Device::Tv, 0.5),
    (Device::Mobile, 0.2),
    (Device::Tablet, 0.1),
    (Device::Desktop, 0.2),
];
/// Tail index of viewers' activity (Pareto): the top 1 % of viewers make about a fifth of the
/// requests, which is what frequency caps are for.
const ACTIVITY_ALPHA: f64 = 1.5;
/// The busiest viewer is at most this many times as active as the least.
const ACTIVITY_CAP: f64 = 200.0;
/// Spread (σ of the log) of an event's actual requests around the expected.
const EVENT_NOISE: f64 = 0.1;
/// Events ramp up over their first half hour.
const EVENT_RAMP_MS: i64 = 30 * 60_000;
/// Share of an event's requests from its home market.
const EVENT_HOME_SHARE: f64 = 0.7;

/// What to simulate.
#[derive(Clone, Debug)]
pub struct WeeksConfig {
    /// First instant, ms since the UTC epoch (midnight UTC, usually a Monday).
    pub start_ms: i64,
    /// Days simulated.
    pub days: u32,
    /// Average requests per day over a week, before growth and events.
    pub requests_per_day: f64,
    /// Seed of every draw.
    pub seed: u64,
    /// Growth per week (0.01: +1 % a week).
    pub weekly_growth: f64,
    /// Extra traffic of Saturday and Sunday evenings (0.25: +25 %).
    pub weekend_lift: f64,
    /// Viewers, countries (with the home market's extra share), genres and breaks; its `users`
    /// is the number of viewers.
    pub traffic: TrafficConfig,
}

impl WeeksConfig {
    /// The demo world's traffic: its countries and genres, `users` viewers.
    pub fn demo(start_ms: i64, days: u32, requests_per_day: f64, users: usize, seed: u64) -> Self {
        Self {
            start_ms,
            days,
            requests_per_day,
            seed,
            weekly_growth: 0.01,
            weekend_lift: 0.25,
            traffic: TrafficConfig {
                users,
                ..TrafficConfig::demo()
            },
        }
    }

    /// End of the span (exclusive), ms.
    pub fn end_ms(&self) -> i64 {
        self.start_ms + i64::from(self.days) * DAY_MS
    }
}

/// A request and the simulated time it arrives at.
#[derive(Clone, Debug, PartialEq)]
pub struct TimedRequest {
    /// Arrival, ms since the UTC epoch.
    pub ts_ms: i64,
    /// The validated request.
    pub request: AdRequest,
}

/// The viewers of one country on one device, with their cumulative activity for drawing.
#[derive(Default)]
struct Bucket {
    users: Vec<usize>,
    cumulative: Vec<f64>,
}

impl Bucket {
    fn weight(&self) -> f64 {
        self.cumulative.last().copied().unwrap_or(0.0)
    }

    fn draw(&self, r: &mut ChaCha8Rng) -> usize {
        let x = r.random::<f64>() * self.weight();
        let i = self.cumulative.partition_point(|&c| c <= x);
        self.users[i.min(self.users.len() - 1)]
    }
}

/// A live event inside the span, with the arrival times of its requests.
struct EventPlan {
    id: String,
    content_id: String,
    genre: String,
    home: usize,
    /// Sorted.
    arrivals: Vec<i64>,
}

/// The traffic of a span, hour by hour. Hours are independent of each other given the seed:
/// [`Weeks::hour`] may be called in any order, from any thread.
pub struct Weeks {
    cfg: WeeksConfig,
    /// Share of the traffic of each country of `cfg.traffic.countries`.
    shares: Vec<f64>,
    /// Offset of each country's prime time from UTC, minutes.
    offsets: Vec<i32>,
    /// Per country, per entry of [`DEVICES`].
    buckets: Vec<[Bucket; 4]>,
    /// Mean of the week's shape over its 168 hours, so that a day averages `requests_per_day`.
    norm: f64,
    calendar: Calendar,
    events: Vec<EventPlan>,
}

/// A well-mixed seed of one stream (`what`, `index`) of `seed` (SplitMix64's finaliser).
fn stream(seed: u64, what: u64, index: u64) -> u64 {
    let mut z = seed
        .wrapping_add(what.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add(index.wrapping_mul(0xBF58_476D_1CE4_E5B9))
        .wrapping_add(0x94D0_49BB_1331_11EB);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A Poisson draw of mean `mean` (Knuth's product of uniforms, in chunks whose `exp(-mean)` does
/// not underflow): exact, at the cost of about one uniform per unit of the mean.
pub fn poisson(r: &mut impl Rng, mean: f64) -> u64 {
    let mut left = mean.max(0.0);
    let mut n = 0;
    while left > 0.0 {
        let step = left.min(500.0);
        left -= step;
        let floor = (-step).exp();
        let mut p = r.random::<f64>();
        while p > floor {
            n += 1;
            p *= r.random::<f64>();
        }
    }
    n
}

/// A standard normal draw (Box–Muller).
fn normal(r: &mut impl Rng) -> f64 {
    let u1 = 1.0 - r.random::<f64>();
    let u2 = r.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// Draws an index with probability proportional to its weight.
fn pick(r: &mut impl Rng, weights: &[f64]) -> usize {
    let total: f64 = weights.iter().sum();
    let mut x = r.random::<f64>() * total;
    for (i, w) in weights.iter().enumerate() {
        if x < *w {
            return i;
        }
        x -= w;
    }
    weights.iter().rposition(|w| *w > 0.0).unwrap_or(0)
}

/// Offset of a country's prime time from UTC, minutes (its most populous time zone, standard
/// time); 0 for a country not listed.
pub fn prime_offset_min(country: &str) -> i32 {
    match country {
        "US" | "CA" | "CO" => -300,
        "MX" => -360,
        "BR" | "AR" => -180,
        "GB" => 0,
        "DE" | "FR" | "ES" | "IT" | "NL" | "SE" | "PL" => 60,
        "ZA" => 120,
        "IN" => 330,
        "JP" | "KR" => 540,
        "AU" => 600,
        "NZ" => 720,
        _ => 0,
    }
}

/// Local hour of day (0–23) and weekday (Monday = 0) at `ms` for a UTC offset.
fn local(ms: i64, offset_min: i32) -> (usize, usize) {
    let t = ms + i64::from(offset_min) * 60_000;
    let day = t.div_euclid(DAY_MS);
    // 1970-01-01 was a Thursday.
    (
        (t.rem_euclid(DAY_MS) / HOUR_MS) as usize,
        (day + 3).rem_euclid(7) as usize,
    )
}

/// How a device's share moves with the local hour: TV in the evening, mobile and desktop by day,
/// tablets in the afternoon.
fn device_factor(device: Device, hour: usize) -> f64 {
    let part = match hour {
        0..=5 => 0,
        6..=11 => 1,
        12..=16 => 2,
        _ => 3,
    };
    let table: [f64; 4] = match device {
        Device::Tv => [0.8, 0.6, 0.8, 1.6],
        Device::Mobile => [1.2, 1.5, 1.4, 0.7],
        Device::Tablet => [0.6, 1.0, 1.5, 0.9],
        _ => [0.7, 1.3, 1.3, 0.6],
    };
    table[part]
}

/// A genre's weight at a local hour: kids' shows in the morning and afternoon (most at weekend
/// mornings), news in the morning, sport at weekends and on weekday evenings, drama, action and
/// reality in prime time.
fn genre_weight(genre: &str, hour: usize, weekend: bool) -> f64 {
    let base = match genre {
        "drama" => 1.0,
        "comedy" => 0.9,
        "action" => 0.7,
        "sports" | "reality" => 0.6,
        "news" | "kids" => 0.5,
        "documentary" => 0.4,
        _ => 0.5,
    };
    let factor = match genre {
        "news" if (6..10).contains(&hour) => 3.0,
        "news" if (17..20).contains(&hour) => 1.5,
        "news" => 0.7,
        "kids" if !(6..21).contains(&hour) => 0.1,
        "kids" if weekend && (7..14).contains(&hour) => 4.0,
        "kids" if (7..9).contains(&hour) || (15..19).contains(&hour) => 3.0,
        "sports" if weekend && (12..23).contains(&hour) => 3.0,
        "sports" if (19..23).contains(&hour) => 1.3,
        "sports" => 0.8,
        "drama" | "action" | "reality" if hour >= 19 => 1.5,
        _ => 1.0,
    };
    base * factor
}

/// Share of a genre's streams that are live (about 10 % over the mix).
fn live_share(genre: &str) -> f64 {
    match genre {
        "sports" => 0.45,
        "news" => 0.4,
        _ => 0.03,
    }
}

/// RFC 3339 (UTC, seconds) of ms since the epoch.
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// Ms since the epoch of an RFC 3339 time.
pub fn parse_rfc3339(text: &str) -> Result<i64, String> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_millis())
        .map_err(|e| format!("{text:?} is not an RFC 3339 time: {e}"))
}

impl Weeks {
    /// The traffic of `cfg`: draws the viewers and the calendar of events.
    pub fn new(cfg: WeeksConfig) -> Self {
        let t = &cfg.traffic;
        let n = t.countries.len().max(1);
        let shares: Vec<f64> = t
            .countries
            .iter()
            .map(|c| {
                let home = if *c == t.home_country {
                    t.home_share
                } else {
                    0.0
                };
                home + (1.0 - t.home_share) / n as f64
            })
            .collect();
        let offsets = t.countries.iter().map(|c| prime_offset_min(c)).collect();

        let mut r = ChaCha8Rng::seed_from_u64(stream(cfg.seed, 1, 0));
        let mut buckets: Vec<[Bucket; 4]> =
            (0..t.countries.len()).map(|_| Default::default()).collect();
        let device_shares: Vec<f64> = DEVICES.iter().map(|d| d.1).collect();
        for u in 0..t.users {
            let c = pick(&mut r, &shares);
            let d = pick(&mut r, &device_shares);
            let activity = (1.0 - r.random::<f64>())
                .powf(-1.0 / ACTIVITY_ALPHA)
                .min(ACTIVITY_CAP);
            let b = &mut buckets[c][d];
            b.users.push(u);
            b.cumulative.push(b.weight() + activity);
        }

        let mut shape_sum = 0.0;
        for wd in 0..7 {
            for h in 0..24 {
                shape_sum += Self::shape(&cfg, h, wd);
            }
        }
        let mut weeks = Self {
            norm: shape_sum / 168.0,
            shares,
            offsets,
            buckets,
            calendar: Calendar::default(),
            events: Vec::new(),
            cfg,
        };
        weeks.plan_events();
        weeks
    }

    /// The configuration.
    pub fn config(&self) -> &WeeksConfig {
        &self.cfg
    }

    /// Hours in the span.
    pub fn hours(&self) -> u32 {
        self.cfg.days * 24
    }

    /// The live events of the span and of the [`FUTURE_DAYS`] after it, by start.
    pub fn calendar(&self) -> &Calendar {
        &self.calendar
    }

    /// Relative traffic at a local hour and weekday: the hour curve, Friday and weekend lifts.
    fn shape(cfg: &WeeksConfig, hour: usize, weekday: usize) -> f64 {
        let lift = match (weekday, hour) {
            (5 | 6, 17..) => 1.0 + cfg.weekend_lift,
            (5 | 6, 9..=16) => 1.0 + 0.6 * cfg.weekend_lift,
            (5 | 6, _) => 1.0 + 0.2 * cfg.weekend_lift,
            (4, 18..) => 1.0 + 0.4 * cfg.weekend_lift,
            _ => 1.0,
        };
        HOUR_CURVE[hour] * lift
    }

    /// Growth since the start at `ms`.
    fn growth(&self, ms: i64) -> f64 {
        (1.0 + self.cfg.weekly_growth).powf((ms - self.cfg.start_ms) as f64 / WEEK_MS as f64)
    }

    /// Expected baseline requests (no events) of country `c` in the hour starting at `ms`.
    fn expected(&self, c: usize, ms: i64) -> f64 {
        let (hour, weekday) = local(ms + HOUR_MS / 2, self.offsets[c]);
        self.cfg.requests_per_day / 24.0 * self.shares[c] * Self::shape(&self.cfg, hour, weekday)
            / self.norm
            * self.growth(ms + HOUR_MS / 2)
    }

    /// Expected baseline requests (no events) of the hour starting at `ms`, all countries.
    pub fn expected_baseline(&self, ms: i64) -> f64 {
        (0..self.shares.len()).map(|c| self.expected(c, ms)).sum()
    }

    /// Draws a viewer of country `c` for a local hour, its device by the hour's mix weighted by
    /// `tv_boost` for TV; `None` when the country has no viewers.
    fn viewer(
        &self,
        r: &mut ChaCha8Rng,
        c: usize,
        hour: usize,
        tv_boost: f64,
    ) -> Option<(usize, Device)> {
        let mut weights = [0.0; DEVICES.len()];
        for (w, ((d, _), b)) in weights.iter_mut().zip(DEVICES.iter().zip(&self.buckets[c])) {
            let boost = if *d == Device::Tv { tv_boost } else { 1.0 };
            *w = b.weight() * device_factor(*d, hour) * boost;
        }
        if weights.iter().all(|w| *w <= 0.0) {
            return None;
        }
        let d = pick(r, &weights);
        Some((self.buckets[c][d].draw(r), DEVICES[d].0))
    }

    /// The requests of hour `h` of the span (0-based), by arrival time: the baseline drawn from a
    /// Poisson around its expected count, and the requests of the live events on at that time.
    pub fn hour(&self, h: u32) -> Vec<TimedRequest> {
        let t = &self.cfg.traffic;
        let start = self.cfg.start_ms + i64::from(h) * HOUR_MS;
        let mut r = ChaCha8Rng::seed_from_u64(stream(self.cfg.seed, 2, u64::from(h)));
        let mut gen = RequestGen::new(t.clone(), stream(self.cfg.seed, 3, u64::from(h)));
        let mut out = Vec::new();
        for (c, country) in t.countries.iter().enumerate() {
            let n = poisson(&mut r, self.expected(c, start));
            let (hour, weekday) = local(start + HOUR_MS / 2, self.offsets[c]);
            let genres: Vec<f64> = t
                .genres
                .iter()
                .map(|g| genre_weight(g, hour, weekday >= 5))
                .collect();
            for _ in 0..n {
                let Some((user, device)) = self.viewer(&mut r, c, hour, 1.0) else {
                    break;
                };
                let genre = t.genres[pick(&mut r, &genres)];
                let dims = Dims {
                    user,
                    country,
                    device,
                    utc_offset_min: None,
                    genre,
                    live: r.random_bool(live_share(genre)),
                    content_id: None,
                    event_id: None,
                };
                let ts_ms = start + r.random_range(0..HOUR_MS);
                out.push((ts_ms, gen.request_with(&dims)));
            }
        }
        for e in &self.events {
            let from = e.arrivals.partition_point(|&a| a < start);
            let to = e.arrivals.partition_point(|&a| a < start + HOUR_MS);
            for &ts_ms in &e.arrivals[from..to] {
                let c = if r.random_bool(EVENT_HOME_SHARE) {
                    e.home
                } else {
                    pick(&mut r, &self.shares)
                };
                let (hour, _) = local(ts_ms, self.offsets[c]);
                let Some((user, device)) = self.viewer(&mut r, c, hour, 3.0) else {
                    continue;
                };
                let dims = Dims {
                    user,
                    country: t.countries[c],
                    device,
                    utc_offset_min: None,
                    genre: &e.genre,
                    live: true,
                    content_id: Some(e.content_id.as_str()),
                    event_id: Some(e.id.as_str()),
                };
                out.push((ts_ms, gen.request_with(&dims)));
            }
        }
        out.sort_by_key(|(ts, _)| *ts);
        out.into_iter()
            .enumerate()
            .filter_map(|(k, (ts_ms, mut request))| {
                request.request_id = format!("sim-{h}-{k}").as_str().into();
                request
                    .validate()
                    .ok()
                    .map(|request| TimedRequest { ts_ms, request })
            })
            .collect()
    }

    /// Draws the events of every week that overlaps the span and the [`FUTURE_DAYS`] after it:
    /// one or two a week on different days, sport (or now and then a concert) in the home
    /// market's afternoon or evening, 2–3 h long, expecting 5–20 % of a day's requests.
    fn plan_events(&mut self) {
        let cfg = &self.cfg;
        let t = &cfg.traffic;
        let horizon = cfg.end_ms() + i64::from(FUTURE_DAYS) * DAY_MS;
        let weeks = (horizon - cfg.start_ms + WEEK_MS - 1) / WEEK_MS;
        let home = t
            .countries
            .iter()
            .position(|c| *c == t.home_country)
            .unwrap_or(0);
        let mut calendar = Calendar::default();
        let mut events = Vec::new();
        for w in 0..weeks {
            let mut r = ChaCha8Rng::seed_from_u64(stream(cfg.seed, 4, w as u64));
            let week_start = cfg.start_ms + w * WEEK_MS;
            let count = r.random_range(1..=2);
            let mut days: Vec<i64> = Vec::new();
            while days.len() < count {
                let d = r.random_range(0..7);
                if !days.contains(&d) {
                    days.push(d);
                }
            }
            days.sort_unstable();
            for (j, d) in days.into_iter().enumerate() {
                let concert = r.random_bool(0.2);
                let c = if t.countries.is_empty() || r.random_bool(0.6) {
                    home
                } else {
                    r.random_range(0..t.countries.len())
                };
                let weekend = local(week_start + d * DAY_MS + 12 * HOUR_MS, 0).1 >= 5;
                let local_hour = match (concert, weekend) {
                    (true, _) => r.random_range(19..=21),
                    (false, true) => r.random_range(13..=20),
                    (false, false) => r.random_range(18..=21),
                };
                let minute = if r.random_bool(0.5) { 30 } else { 0 };
                let start = week_start + d * DAY_MS + local_hour * HOUR_MS + minute * 60_000
                    - i64::from(self.offsets.get(c).copied().unwrap_or(0)) * 60_000;
                let len = [2 * HOUR_MS, 5 * HOUR_MS / 2, 3 * HOUR_MS][r.random_range(0..3)];
                let share = r.random_range(0.05..=0.20);
                let expected = (share * cfg.requests_per_day * self.growth(start))
                    .round()
                    .max(1.0);
                let actual = (expected
                    * (EVENT_NOISE * normal(&mut r) - EVENT_NOISE * EVENT_NOISE / 2.0).exp())
                .round() as u64;
                let kind = if concert { "music" } else { "sports" };
                let country = t.countries.get(c).copied().unwrap_or("US");
                let id = format!("{kind}-w{w:02}-{}", j + 1);
                let name = if concert {
                    format!("Concert ({country}), week {}", w + 1)
                } else {
                    format!("Match ({country}), week {}", w + 1)
                };
                if start >= horizon {
                    continue;
                }
                calendar.events.push(LiveEvent {
                    id: id.clone(),
                    name: Some(name),
                    start: rfc3339(start),
                    end: rfc3339(start + len),
                    expected_requests: expected as u64,
                    genre: Some(kind.to_string()),
                    country: Some(country.to_string()),
                });
                if start >= cfg.end_ms() {
                    continue;
                }
                // Arrivals, from a stream of the event's own: density rising linearly over the
                // ramp, flat after it.
                let mut spread =
                    ChaCha8Rng::seed_from_u64(stream(cfg.seed, 5, (w * 8 + j as i64) as u64));
                let flat = (len - EVENT_RAMP_MS) as f64;
                let area = EVENT_RAMP_MS as f64 / 2.0 + flat;
                let mut arrivals: Vec<i64> = (0..actual)
                    .map(|_| {
                        let x = spread.random::<f64>() * area;
                        let at = if x < EVENT_RAMP_MS as f64 / 2.0 {
                            (2.0 * x * EVENT_RAMP_MS as f64).sqrt()
                        } else {
                            EVENT_RAMP_MS as f64 + (x - EVENT_RAMP_MS as f64 / 2.0)
                        };
                        start + (at as i64).min(len - 1)
                    })
                    .filter(|&a| a < cfg.end_ms())
                    .collect();
                arrivals.sort_unstable();
                events.push(EventPlan {
                    content_id: format!("event-{id}"),
                    id,
                    genre: kind.to_string(),
                    home: c,
                    arrivals,
                });
            }
        }
        calendar.events.sort_by(|a, b| a.start.cmp(&b.start));
        self.calendar = calendar;
        self.events = events;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-10-05T00:00:00Z, a Monday.
    const MONDAY: i64 = 1_791_158_400_000;

    fn weeks(days: u32, per_day: f64, seed: u64) -> Weeks {
        Weeks::new(WeeksConfig::demo(MONDAY, days, per_day, 3_000, seed))
    }

    #[test]
    fn the_start_used_in_tests_is_a_monday_midnight() {
        assert_eq!(parse_rfc3339("2026-10-05T00:00:00Z").unwrap(), MONDAY);
        assert_eq!(local(MONDAY, 0), (0, 0));
        assert_eq!(rfc3339(MONDAY), "2026-10-05T00:00:00Z");
    }

    #[test]
    fn same_seed_same_requests_and_a_longer_run_starts_alike() {
        let (a, b, longer) = (
            weeks(3, 2_000.0, 7),
            weeks(3, 2_000.0, 7),
            weeks(5, 2_000.0, 7),
        );
        for h in [0, 13, 40, 71] {
            let x = a.hour(h);
            assert!(!x.is_empty());
            assert_eq!(x, b.hour(h));
            assert_eq!(x, longer.hour(h));
        }
        assert_eq!(a.calendar(), b.calendar());
        let other = weeks(3, 2_000.0, 8);
        assert_ne!(a.hour(20), other.hour(20));
    }

    #[test]
    fn requests_are_valid_ordered_inside_their_hour_and_use_the_worlds_vocabulary() {
        let w = weeks(2, 5_000.0, 1);
        let cfg = &w.config().traffic;
        let mut ids = std::collections::HashSet::new();
        for h in 0..w.hours() {
            let reqs = w.hour(h);
            let start = MONDAY + i64::from(h) * HOUR_MS;
            assert!(reqs.windows(2).all(|p| p[0].ts_ms <= p[1].ts_ms));
            for t in &reqs {
                assert!((start..start + HOUR_MS).contains(&t.ts_ms));
                assert_eq!(t.request.clone().validate().unwrap(), t.request);
                assert!(ids.insert(t.request.request_id.clone()));
                assert!(cfg.countries.contains(&t.request.user.country.as_str()));
                let u: usize = t.request.user.id.as_str()[2..].parse().unwrap();
                assert!(u < cfg.users);
                if t.request.content.event_id.is_none() {
                    assert!(cfg.genres.contains(&t.request.content.genre.as_str()));
                }
            }
        }
    }

    #[test]
    fn a_viewer_keeps_a_country_and_a_device_and_some_watch_much_more() {
        let w = weeks(7, 20_000.0, 2);
        let mut seen: std::collections::HashMap<String, (String, Device, u32)> = Default::default();
        for h in (0..w.hours()).step_by(5) {
            for t in w.hour(h) {
                let u = &t.request.user;
                let e = seen
                    .entry(u.id.to_string())
                    .or_insert((u.country.clone(), u.device, 0));
                assert_eq!((e.0.as_str(), e.1), (u.country.as_str(), u.device));
                e.2 += 1;
            }
        }
        let mut counts: Vec<u32> = seen.values().map(|v| v.2).collect();
        counts.sort_unstable_by(|a, b| b.cmp(a));
        let total: u32 = counts.iter().sum();
        let top: u32 = counts[..30].iter().sum();
        // The top 1 % of 3,000 viewers make well over 1 % of the requests.
        assert!(top as f64 > 0.08 * total as f64, "{top} of {total}");
    }

    #[test]
    fn hourly_counts_follow_the_curve_the_week_and_the_growth() {
        // One country on UTC, so that local time is UTC; no events in the way.
        let mut cfg = WeeksConfig::demo(MONDAY, 28, 20_000.0, 2_000, 3);
        cfg.traffic.countries = &["GB"];
        cfg.traffic.home_country = "GB";
        let mut w = Weeks::new(cfg);
        w.events.clear();
        let counts: Vec<f64> = (0..w.hours()).map(|h| w.hour(h).len() as f64).collect();
        let at = |hours: &[usize]| -> f64 {
            counts
                .iter()
                .enumerate()
                .filter(|(h, _)| hours.contains(&(h % 24)))
                .map(|(_, n)| n)
                .sum()
        };
        assert!(at(&[19, 20, 21]) > 5.0 * at(&[2, 3, 4]));
        let day = |d: usize| counts[d * 24..(d + 1) * 24].iter().sum::<f64>();
        let weekdays: f64 = (0..28).filter(|d| d % 7 < 5).map(day).sum::<f64>() / 20.0;
        let weekends: f64 = (0..28).filter(|d| d % 7 >= 5).map(day).sum::<f64>() / 8.0;
        assert!(weekends > 1.1 * weekdays, "{weekends} vs {weekdays}");
        // Weeks average the configured volume, growing about 1 % a week.
        let week = |k: usize| (0..7).map(|d| day(7 * k + d)).sum::<f64>() / 7.0;
        assert!((week(0) / 20_000.0 - 1.0).abs() < 0.03, "{}", week(0));
        assert!(week(3) > week(0) * 1.01 && week(3) < week(0) * 1.06);
        // Poisson noise: hours differ from their expectation, by about its square root.
        let z: f64 = (0..w.hours())
            .map(|h| {
                let e = w.expected_baseline(MONDAY + i64::from(h) * HOUR_MS);
                (counts[h as usize] - e).powi(2) / e
            })
            .sum::<f64>()
            / f64::from(w.hours());
        assert!((0.7..1.3).contains(&z), "dispersion {z}");
    }

    #[test]
    fn slices_have_shapes_of_their_own() {
        let w = weeks(14, 20_000.0, 4);
        // Device or genre → requests of the US by local hour of day.
        let mut by: std::collections::HashMap<String, [f64; 24]> = Default::default();
        let (mut live, mut total, mut sports_we, mut sports_wd) = (0.0, 0.0, 0.0, 0.0);
        for h in 0..w.hours() {
            for t in w.hour(h) {
                let r = &t.request;
                total += 1.0;
                live += f64::from(u8::from(r.content.live && r.content.event_id.is_none()));
                if r.user.country != "US" || r.content.event_id.is_some() {
                    continue;
                }
                let (hour, weekday) = local(t.ts_ms, prime_offset_min("US"));
                for key in [r.user.device.as_str(), r.content.genre.as_str()] {
                    by.entry(key.to_string()).or_insert([0.0; 24])[hour] += 1.0;
                }
                if r.content.genre == "sports" {
                    *(if weekday >= 5 {
                        &mut sports_we
                    } else {
                        &mut sports_wd
                    }) += 1.0;
                }
            }
        }
        let share = |key: &str, hours: std::ops::Range<usize>| {
            let all: f64 = ["tv", "mobile", "tablet", "desktop"]
                .iter()
                .map(|d| by[*d][hours.clone()].iter().sum::<f64>())
                .sum();
            by[key][hours].iter().sum::<f64>() / all
        };
        assert!(share("tv", 19..23) > 1.5 * share("tv", 8..12));
        assert!(share("mobile", 8..12) > 1.5 * share("mobile", 19..23));
        assert!(share("kids", 7..9) > 3.0 * share("kids", 21..24));
        assert!(share("news", 6..10) > 2.0 * share("news", 12..16));
        // Weekends are 2 days of 7: sport there is well over 2/7 of the week's.
        assert!(sports_we / (sports_we + sports_wd) > 0.4);
        assert!((0.07..0.14).contains(&(live / total)), "{}", live / total);
    }

    #[test]
    fn events_carry_their_id_only_within_their_span_and_are_extra_traffic() {
        let w = weeks(14, 20_000.0, 5);
        let cal = w.calendar();
        let end = MONDAY + 14 * DAY_MS;
        let inside: Vec<&LiveEvent> = cal
            .events
            .iter()
            .filter(|e| e.span_ms().unwrap().0 < end)
            .collect();
        let future = cal.events.len() - inside.len();
        assert!((1..=4).contains(&inside.len()), "{cal:?}");
        assert!((1..=5).contains(&future), "{cal:?}");
        let mut ids = std::collections::HashSet::new();
        let mut counted: std::collections::HashMap<String, u64> = Default::default();
        for e in &cal.events {
            let (s, t) = e.span_ms().unwrap();
            assert!(s >= MONDAY && s < end + i64::from(FUTURE_DAYS) * DAY_MS);
            assert!((2 * HOUR_MS..=3 * HOUR_MS).contains(&(t - s)));
            assert!(ids.insert(e.id.clone()));
            assert!((1_000..=4_300).contains(&e.expected_requests), "{e:?}");
            assert!(matches!(e.genre.as_deref(), Some("sports" | "music")));
        }
        for h in 0..w.hours() {
            for t in w.hour(h) {
                let Some(id) = &t.request.content.event_id else {
                    continue;
                };
                let e = cal.get(id).expect("a calendar event");
                let (s, end) = e.span_ms().unwrap();
                assert!((s..end).contains(&t.ts_ms));
                assert!(t.request.content.live);
                assert_eq!(t.request.content.id.as_str(), format!("event-{id}"));
                assert_eq!(Some(&t.request.content.genre), e.genre.as_ref());
                *counted.entry(id.clone()).or_default() += 1;
            }
        }
        for e in inside.iter().filter(|e| e.span_ms().unwrap().1 <= end) {
            let n = counted[&e.id] as f64;
            let ratio = n / e.expected_requests as f64;
            assert!(
                (0.6..1.5).contains(&ratio),
                "{}: {n} for {}",
                e.id,
                e.expected_requests
            );
        }
    }

    #[test]
    fn the_calendar_round_trips_through_its_file() {
        let w = weeks(28, 20_000.0, 6);
        let text = w.calendar().to_toml();
        assert_eq!(&Calendar::parse(&text).unwrap(), w.calendar());
        assert!(w
            .calendar()
            .events
            .windows(2)
            .all(|p| p[0].start <= p[1].start));
    }

    #[test]
    fn poisson_draws_have_the_mean_and_variance() {
        let mut r = ChaCha8Rng::seed_from_u64(1);
        for mean in [3.0, 40.0, 1_700.0] {
            let n = 2_000;
            let draws: Vec<f64> = (0..n).map(|_| poisson(&mut r, mean) as f64).collect();
            let m = draws.iter().sum::<f64>() / n as f64;
            let v = draws.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1) as f64;
            assert!((m / mean - 1.0).abs() < 0.05, "{mean}: {m}");
            assert!((v / mean - 1.0).abs() < 0.15, "{mean}: {v}");
        }
    }
}
