//! The traffic model: hourly opportunity counts by targeting cell, learned from the log, and the
//! seasonal forecast of any slice of them.
//!
//! Every opportunity falls in one *cell* (country, device, genre, live, the viewer's UTC offset,
//! what its breaks can hold) and one hour; the model keeps the counts of each (cell, hour), with
//! the traffic of live events (requests carrying an event id) apart from the baseline. A query
//! adds up the cells and hours it matches (dayparts in each cell's local time) into one hourly
//! series and forecasts that series top-down, so a slice's forecast is as smooth as the slice is
//! large:
//!
//! - **baseline**: for each future hour, the average of the same hour of the week over the last
//!   `weeks` weeks (recent weeks weigh more, half-life `half_life_weeks`), times the traffic's
//!   weekly growth (a log-linear fit of the total's weekly counts, carried over the lag);
//! - **live events**: each calendar event in the window adds its expected requests, spread over
//!   its hours, shared among cells as past events of its genre were (or the genre's live traffic
//!   when no past event is in the log);
//! - **uncertainty**: the same forecast made from 1–4 weeks earlier origins for the same window
//!   shape, against what then happened, gives the slice's relative error; with Poisson noise and
//!   the error of past events' expected audiences, an 80 % band.
//!
//! A sample of viewers (a stable hash of the id) keeps its whole requests, for what counts cannot
//! tell: frequency caps (how many opportunities each viewer brings per day or week) and the
//! targeting of booked line items (contention).

use crate::opportunity::{user_draw, Opportunity};
use crate::query::Targeting;
use podium_core::{AdRequest, Device};
use podium_pacing::Calendar;
use serde::Serialize;
use std::collections::HashMap;

pub(crate) const HOUR_MS: i64 = 3_600_000;
pub(crate) const WEEK: usize = 168;
/// z of an 80 % two-sided normal band.
const Z80: f64 = 1.281_551_6;

/// How the model learns and how much history it asks for.
#[derive(Clone, Debug)]
pub struct ModelConfig {
    /// Past weeks averaged per hour of the week.
    pub weeks: usize,
    /// Half-life of a past week's weight, in weeks.
    pub half_life_weeks: f64,
    /// Share of viewers whose requests are kept whole (caps, contention).
    pub sample_rate: f64,
    /// Fewest days of history a forecast accepts.
    pub min_history_days: f64,
    /// Fewest opportunities a slice must have had over the weeks averaged.
    pub min_slice: f64,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            weeks: 4,
            half_life_weeks: 2.0,
            sample_rate: 0.125,
            min_history_days: 7.0,
            min_slice: 100.0,
        }
    }
}

/// Why a forecast cannot be given.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ForecastError {
    /// The log holds no usable request.
    #[error("the log holds no requests to learn traffic from")]
    Empty,
    /// The history is shorter than a week.
    #[error("the log covers {days:.1} days of traffic before {origin}; a forecast needs at least {needed} days (a week of every hour)")]
    TooLittleHistory {
        /// Days of history.
        days: f64,
        /// Days asked for.
        needed: f64,
        /// Where the history ends.
        origin: String,
    },
    /// The slice saw too few opportunities to forecast.
    #[error("too little history for this slice: {count} opportunities in the last {days} days (a forecast needs at least {needed}); no number is given")]
    SliceTooThin {
        /// Opportunities seen.
        count: u64,
        /// Over how many days.
        days: u64,
        /// Fewest accepted.
        needed: u64,
    },
    /// A targeting value the log never saw.
    #[error("{0}")]
    UnknownValue(String),
    /// The window is unusable.
    #[error("{0}")]
    BadWindow(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Cell {
    pub country: u16,
    pub device: u8,
    pub genre: u16,
    pub live: bool,
    pub offset_min: i16,
    pub fits: u32,
}

/// A sampled viewer's request.
pub(crate) struct SampleRow {
    pub hour: u32,
    pub user: u32,
    pub cell: u32,
    pub request: Box<AdRequest>,
}

/// A time window, ms since the UTC epoch, `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// First instant.
    pub start_ms: i64,
    /// First instant after it.
    pub end_ms: i64,
}

/// A targeting query checked against the model's vocabulary.
pub struct Compiled {
    pub(crate) targeting: Targeting,
    pub(crate) cell_ok: Vec<bool>,
    countries: Vec<usize>,
    devices: Vec<usize>,
    genres: Vec<usize>,
    mask: u32,
}

impl Compiled {
    /// Whether a cell's dimensions match (dayparts aside).
    fn cell_matches(&self, c: &Cell) -> bool {
        (self.countries.is_empty() || self.countries.contains(&usize::from(c.country)))
            && (self.devices.is_empty() || self.devices.contains(&usize::from(c.device)))
            && (self.genres.is_empty() || self.genres.contains(&usize::from(c.genre)))
            && self.targeting.live.is_none_or(|l| l == c.live)
            && c.fits & self.mask != 0
    }
}

/// The learned traffic.
pub struct TrafficModel {
    pub(crate) cfg: ModelConfig,
    /// Hour 0 of the model, hours since the epoch.
    pub(crate) first_hour: i64,
    /// Hours `[data_start, origin)` are history; forecasts start at `origin`.
    pub(crate) data_start: usize,
    pub(crate) origin: usize,
    /// Hours the model holds counts for (the log may run past the origin: backtests).
    pub(crate) hours: usize,
    pub(crate) countries: Vec<String>,
    pub(crate) genres: Vec<String>,
    pub(crate) devices: Vec<String>,
    pub(crate) cells: Vec<Cell>,
    /// (cell, hour, count) of the baseline, sorted.
    pub(crate) baseline: Vec<(u32, u32, u32)>,
    /// (event, cell, hour, count) of live-event traffic.
    pub(crate) event_counts: Vec<(u32, u32, u32, u32)>,
    pub(crate) event_ids: Vec<String>,
    /// All baseline traffic per hour (the growth fit reads it).
    pub(crate) total: Vec<f64>,
    pub(crate) sample: Vec<SampleRow>,
    pub(crate) calendar: Calendar,
    /// Requests read, and those of events.
    pub(crate) requests: u64,
}

fn intern(v: &mut Vec<String>, ix: &mut HashMap<String, usize>, s: &str) -> usize {
    if let Some(&i) = ix.get(s) {
        return i;
    }
    v.push(s.to_string());
    ix.insert(s.to_string(), v.len() - 1);
    v.len() - 1
}

/// RFC 3339 of an instant, for messages.
pub fn iso(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map_or_else(
        || ms.to_string(),
        |t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
    )
}

/// Learns a [`TrafficModel`] one opportunity at a time: memory holds the counts per (cell,
/// hour) and the sampled viewers' requests, not the log.
pub struct ModelBuilder {
    cfg: ModelConfig,
    countries: (Vec<String>, HashMap<String, usize>),
    genres: (Vec<String>, HashMap<String, usize>),
    devices: (Vec<String>, HashMap<String, usize>),
    cells: Vec<Cell>,
    cell_ix: HashMap<Cell, u32>,
    /// Counts by (cell, hour since the epoch).
    base: HashMap<(u32, i64), u32>,
    events: HashMap<(u32, u32, i64), u32>,
    event_ids: (Vec<String>, HashMap<String, usize>),
    sample: Vec<(i64, u32, u32, Box<AdRequest>)>,
    users: HashMap<String, u32>,
    first_ms: i64,
    last_ms: i64,
    requests: u64,
}

impl ModelBuilder {
    /// An empty model.
    pub fn new(cfg: ModelConfig) -> Self {
        Self {
            cfg,
            countries: Default::default(),
            genres: Default::default(),
            devices: Default::default(),
            cells: Vec::new(),
            cell_ix: HashMap::new(),
            base: HashMap::new(),
            events: HashMap::new(),
            event_ids: Default::default(),
            sample: Vec::new(),
            users: HashMap::new(),
            first_ms: i64::MAX,
            last_ms: i64::MIN,
            requests: 0,
        }
    }

    /// The earliest request seen, ms since the epoch (`None` before any).
    pub fn first_ms(&self) -> Option<i64> {
        (self.requests > 0).then_some(self.first_ms)
    }

    /// The latest request seen.
    pub fn last_ms(&self) -> Option<i64> {
        (self.requests > 0).then_some(self.last_ms)
    }

    /// Requests added.
    pub fn requests(&self) -> u64 {
        self.requests
    }

    /// Counts one opportunity.
    pub fn add(&mut self, o: Opportunity) {
        let cell = Cell {
            country: intern(&mut self.countries.0, &mut self.countries.1, &o.country) as u16,
            device: intern(&mut self.devices.0, &mut self.devices.1, &o.device) as u8,
            genre: intern(&mut self.genres.0, &mut self.genres.1, &o.genre) as u16,
            live: o.live,
            offset_min: o.utc_offset_min.clamp(-16 * 60, 16 * 60) as i16,
            fits: o.fits,
        };
        let cells = &mut self.cells;
        let c = *self.cell_ix.entry(cell).or_insert_with(|| {
            cells.push(cell);
            (cells.len() - 1) as u32
        });
        let hour = o.ts_ms.div_euclid(HOUR_MS);
        self.first_ms = self.first_ms.min(o.ts_ms);
        self.last_ms = self.last_ms.max(o.ts_ms);
        self.requests += 1;
        match &o.event_id {
            Some(id) => {
                let e = intern(&mut self.event_ids.0, &mut self.event_ids.1, id) as u32;
                *self.events.entry((e, c, hour)).or_default() += 1;
            }
            None => *self.base.entry((c, hour)).or_default() += 1,
        }
        if let Some(request) = o.request {
            let n = self.users.len() as u32;
            let user = *self.users.entry(o.user_id).or_insert(n);
            self.sample.push((hour, user, c, request));
        }
    }

    /// The model; forecasts start at `origin_ms` (rounded down to the hour), or after the last
    /// hour seen.
    pub fn finish(
        self,
        origin_ms: Option<i64>,
        calendar: Calendar,
    ) -> Result<TrafficModel, ForecastError> {
        if self.requests == 0 {
            return Err(ForecastError::Empty);
        }
        let first_hour = self.first_ms.div_euclid(HOUR_MS);
        let end_hour = self.last_ms.div_euclid(HOUR_MS) + 1;
        let origin_hour = origin_ms.map_or(end_hour, |o| o.div_euclid(HOUR_MS));
        let hours = (end_hour.max(origin_hour) - first_hour).max(0) as usize;
        let origin = (origin_hour - first_hour).max(0) as usize;
        // The first hour is partial unless the log starts on it.
        let data_start = usize::from(self.first_ms.rem_euclid(HOUR_MS) > 60_000);
        let at = |h: i64| (h - first_hour) as u32;
        let mut total = vec![0.0; hours];
        let mut baseline: Vec<(u32, u32, u32)> = self
            .base
            .into_iter()
            .map(|((c, h), n)| {
                total[at(h) as usize] += f64::from(n);
                (c, at(h), n)
            })
            .collect();
        baseline.sort_unstable();
        let mut event_counts: Vec<(u32, u32, u32, u32)> = self
            .events
            .into_iter()
            .map(|((e, c, h), n)| (e, c, at(h), n))
            .collect();
        event_counts.sort_unstable();
        let sample = self
            .sample
            .into_iter()
            .map(|(h, user, cell, request)| SampleRow {
                hour: at(h),
                user,
                cell,
                request,
            })
            .collect();
        Ok(TrafficModel {
            cfg: self.cfg,
            first_hour,
            data_start,
            origin,
            hours,
            countries: self.countries.0,
            genres: self.genres.0,
            devices: self.devices.0,
            cells: self.cells,
            baseline,
            event_counts,
            event_ids: self.event_ids.0,
            total,
            sample,
            calendar,
            requests: self.requests,
        })
    }
}

impl TrafficModel {
    /// Learns from opportunities (any order). Forecasts start at `origin_ms` (rounded down to
    /// the hour), or after the last hour of the log; opportunities after the origin are kept
    /// for backtests but never read by a forecast.
    pub fn train(
        opportunities: Vec<Opportunity>,
        origin_ms: Option<i64>,
        calendar: Calendar,
        cfg: ModelConfig,
    ) -> Result<Self, ForecastError> {
        let mut b = ModelBuilder::new(cfg);
        for o in opportunities {
            b.add(o);
        }
        b.finish(origin_ms, calendar)
    }

    /// Where forecasts start, ms since the epoch.
    pub fn origin_ms(&self) -> i64 {
        (self.first_hour + self.origin as i64) * HOUR_MS
    }

    /// Where the history starts, ms since the epoch.
    pub fn history_start_ms(&self) -> i64 {
        (self.first_hour + self.data_start as i64) * HOUR_MS
    }

    /// Days of history before the origin.
    pub fn history_days(&self) -> f64 {
        self.origin.saturating_sub(self.data_start) as f64 / 24.0
    }

    /// Requests the model learned from.
    pub fn requests(&self) -> u64 {
        self.requests
    }

    /// The calendar of live events.
    pub fn calendar(&self) -> &Calendar {
        &self.calendar
    }

    /// Values seen per dimension: (countries, devices, genres), sorted.
    pub fn vocabulary(&self) -> (Vec<String>, Vec<String>, Vec<String>) {
        let sorted = |v: &[String]| {
            let mut v = v.to_vec();
            v.sort();
            v
        };
        (
            sorted(&self.countries),
            sorted(&self.devices),
            sorted(&self.genres),
        )
    }

    /// Checks a query's values against what the log saw, and finds the cells it matches.
    pub fn compile(&self, t: &Targeting) -> Result<Compiled, ForecastError> {
        let ids = |what: &str, asked: &[String], seen: &[String]| {
            asked
                .iter()
                .map(|a| {
                    seen.iter().position(|s| s == a).ok_or_else(|| {
                        let mut known = seen.to_vec();
                        known.sort();
                        ForecastError::UnknownValue(format!(
                            "{what} {a:?} does not appear in the log (it has: {})",
                            known.join(", ")
                        ))
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        };
        for d in &t.devices {
            if !Device::ALL.iter().any(|x| x.as_str() == d) {
                let names: Vec<&str> = Device::ALL.iter().map(|x| x.as_str()).collect();
                return Err(ForecastError::UnknownValue(format!(
                    "device {d:?} is not a device ({})",
                    names.join(", ")
                )));
            }
        }
        let countries = ids("country", &t.countries, &self.countries)?;
        let devices = ids("device", &t.devices, &self.devices)?;
        let genres = ids("genre", &t.genres, &self.genres)?;
        let mut q = Compiled {
            targeting: t.clone(),
            cell_ok: Vec::new(),
            countries,
            devices,
            genres,
            mask: t.fits_mask(),
        };
        q.cell_ok = self.cells.iter().map(|c| q.cell_matches(c)).collect();
        Ok(q)
    }

    /// The local hour of the week of a model hour at a UTC offset.
    fn local_week_hour(&self, offset_min: i16, hour: i64) -> usize {
        let minutes = (self.first_hour + hour) * 60 + i64::from(offset_min);
        (minutes.div_euclid(60) + 72).rem_euclid(WEEK as i64) as usize
    }

    /// Whether opportunities of a cell at a model hour match the query.
    pub(crate) fn matches(&self, q: &Compiled, cell: u32, hour: u32) -> bool {
        q.cell_ok[cell as usize]
            && (q.targeting.week_hours.is_none()
                || q.targeting.at_hour(
                    self.local_week_hour(self.cells[cell as usize].offset_min, i64::from(hour)),
                ))
    }

    /// As [`matches`](Self::matches) for a cell given by value.
    fn matches_cell(&self, q: &Compiled, cell: &Cell, hour: i64) -> bool {
        q.cell_matches(cell)
            && (q.targeting.week_hours.is_none()
                || q.targeting
                    .at_hour(self.local_week_hour(cell.offset_min, hour)))
    }

    /// The query's baseline opportunities per model hour (live events apart).
    pub fn baseline_series(&self, q: &Compiled) -> Vec<f64> {
        let mut s = vec![0.0; self.hours];
        for &(c, h, n) in &self.baseline {
            if self.matches(q, c, h) {
                s[h as usize] += f64::from(n);
            }
        }
        s
    }

    /// The query's live-event opportunities per model hour.
    pub fn event_series(&self, q: &Compiled) -> Vec<f64> {
        let mut s = vec![0.0; self.hours];
        for &(_, c, h, n) in &self.event_counts {
            if self.matches(q, c, h) {
                s[h as usize] += f64::from(n);
            }
        }
        s
    }

    /// Model hours of a window: `[from, to)`, the window rounded out to whole hours.
    pub fn hours_of(&self, w: Window) -> (i64, i64) {
        (
            w.start_ms.div_euclid(HOUR_MS) - self.first_hour,
            (w.end_ms + HOUR_MS - 1).div_euclid(HOUR_MS) - self.first_hour,
        )
    }

    /// Weekly growth (log per week) of all baseline traffic over the weeks before `origin`.
    fn growth(&self, origin: usize) -> f64 {
        let mut weeks = Vec::new();
        for j in 1..=self.cfg.weeks.max(2) {
            let Some(from) = origin.checked_sub(j * WEEK) else {
                break;
            };
            // A partial first hour is 1/168 of a week: no reason to drop the week.
            if from + 1 < self.data_start {
                break;
            }
            let t: f64 = self.total[from..from + WEEK].iter().sum();
            if t <= 0.0 {
                break;
            }
            weeks.push((-(j as f64), t.ln()));
        }
        if weeks.len() < 3 {
            return 0.0;
        }
        let n = weeks.len() as f64;
        let mx = weeks.iter().map(|w| w.0).sum::<f64>() / n;
        let my = weeks.iter().map(|w| w.1).sum::<f64>() / n;
        let sxy: f64 = weeks.iter().map(|w| (w.0 - mx) * (w.1 - my)).sum();
        let sxx: f64 = weeks.iter().map(|w| (w.0 - mx).powi(2)).sum();
        (sxy / sxx).clamp(-0.1, 0.1)
    }

    /// The seasonal forecast of `series` for hours `[from, to)`, made at `origin` (reads only
    /// hours before it).
    pub(crate) fn seasonal(&self, series: &[f64], origin: usize, from: i64, to: i64) -> Vec<f64> {
        let growth = self.growth(origin);
        (from..to)
            .map(|t| {
                let lag0 = (t - origin as i64).max(0) / WEEK as i64 + 1;
                let (mut sum, mut wsum, mut lag) = (0.0, 0.0, 0.0);
                for j in 0..self.cfg.weeks as i64 {
                    let idx = t - WEEK as i64 * (lag0 + j);
                    if idx < self.data_start as i64 || idx >= origin as i64 {
                        break;
                    }
                    let w = 0.5f64.powf(j as f64 / self.cfg.half_life_weeks);
                    sum += w * series[idx as usize];
                    wsum += w;
                    lag += w * (lag0 + j) as f64;
                }
                if wsum == 0.0 {
                    return 0.0;
                }
                sum / wsum * (growth * lag / wsum).exp()
            })
            .collect()
    }

    /// Checks a window against the history, and its model hours.
    pub fn check_window(&self, w: Window) -> Result<(i64, i64, Vec<String>), ForecastError> {
        let mut notes = Vec::new();
        if w.end_ms <= w.start_ms {
            return Err(ForecastError::BadWindow(format!(
                "the window ends ({}) before it starts ({})",
                iso(w.end_ms),
                iso(w.start_ms)
            )));
        }
        if w.end_ms <= self.origin_ms() {
            return Err(ForecastError::BadWindow(format!(
                "the window {} – {} is entirely in the past: the log's traffic runs until {}, forecasts start there",
                iso(w.start_ms),
                iso(w.end_ms),
                iso(self.origin_ms())
            )));
        }
        let days = self.history_days();
        if days < self.cfg.min_history_days {
            return Err(ForecastError::TooLittleHistory {
                days,
                needed: self.cfg.min_history_days,
                origin: iso(self.origin_ms()),
            });
        }
        let (mut from, to) = self.hours_of(w);
        if from < self.origin as i64 {
            notes.push(format!(
                "the window starts before the log ends ({}); forecast from there on",
                iso(self.origin_ms())
            ));
            from = self.origin as i64;
        }
        if to - from > 366 * 24 {
            return Err(ForecastError::BadWindow(
                "the window is longer than a year".into(),
            ));
        }
        Ok((from, to, notes))
    }

    /// Forecasts a query's opportunities over a window (no caps, no contention).
    pub fn forecast(&self, q: &Compiled, w: Window) -> Result<VolumeForecast, ForecastError> {
        let (from, to, notes) = self.check_window(w)?;
        self.forecast_hours(q, from, to, notes)
    }

    pub(crate) fn forecast_hours(
        &self,
        q: &Compiled,
        from: i64,
        to: i64,
        mut notes: Vec<String>,
    ) -> Result<VolumeForecast, ForecastError> {
        let series = self.baseline_series(q);
        let span = (self.cfg.weeks * WEEK).min(self.origin - self.data_start);
        // Past live events count as history of the slice (their traffic forecasts events).
        let seen: f64 = series[self.origin - span..self.origin].iter().sum::<f64>()
            + self.event_series(q)[self.origin - span..self.origin]
                .iter()
                .sum::<f64>();
        if seen < self.cfg.min_slice {
            return Err(ForecastError::SliceTooThin {
                count: seen as u64,
                days: (span / 24) as u64,
                needed: self.cfg.min_slice as u64,
            });
        }
        let baseline = self.seasonal(&series, self.origin, from, to);
        let (events, listed) = self.event_forecast(q, self.origin, from, to);
        let base_total: f64 = baseline.iter().sum();
        let event_total: f64 = events.iter().sum();

        // The same forecast from earlier origins, against what then happened.
        let mut errors = Vec::new();
        for j in 1..=4usize {
            let Some(o) = self.origin.checked_sub(j * WEEK) else {
                break;
            };
            if o < self.data_start + WEEK {
                break;
            }
            let shift = (j * WEEK) as i64;
            let f: f64 = self
                .seasonal(&series, o, from - shift, to - shift)
                .iter()
                .sum();
            let a: f64 = ((from - shift).max(0)..(to - shift).min(self.origin as i64))
                .map(|h| series[h as usize])
                .sum();
            if a > 0.0 {
                errors.push((f - a) / a);
            }
        }
        let sigma_rel = (!errors.is_empty())
            .then(|| (errors.iter().map(|e| e * e).sum::<f64>() / errors.len() as f64).sqrt());
        if sigma_rel.is_none() {
            notes
                .push("under two weeks of history: the band holds sampling noise only".to_string());
        }
        let event_sigma = self.event_sigma();
        let var = (sigma_rel.unwrap_or(0.0) * base_total).powi(2)
            + base_total
            + (event_sigma * event_total).powi(2);
        let total = base_total + event_total;
        let half = Z80 * var.sqrt();
        Ok(VolumeForecast {
            from_ms: (self.first_hour + from) * HOUR_MS,
            to_ms: (self.first_hour + to) * HOUR_MS,
            hourly: baseline.iter().zip(&events).map(|(b, e)| b + e).collect(),
            baseline: base_total,
            events: event_total,
            total,
            low: (total - half).max(0.0),
            high: total + half,
            backtest_errors: errors,
            event_list: listed,
            history: seen,
            notes,
        })
    }

    /// Calendar events in `[from, to)` (model hours): their expected requests matching the
    /// query, per hour.
    fn event_forecast(
        &self,
        q: &Compiled,
        origin: usize,
        from: i64,
        to: i64,
    ) -> (Vec<f64>, Vec<String>) {
        let mut out = vec![0.0; (to - from).max(0) as usize];
        let mut listed = Vec::new();
        for ev in &self.calendar.events {
            let Ok((s, e)) = ev.span_ms() else { continue };
            let (eh0, eh1) = (
                s.div_euclid(HOUR_MS) - self.first_hour,
                (e + HOUR_MS - 1).div_euclid(HOUR_MS) - self.first_hour,
            );
            // Only events after the origin: earlier ones are in the history as they happened.
            let (a, b) = (eh0.max(from).max(origin as i64), eh1.min(to));
            if a >= b {
                continue;
            }
            let mix = self.event_mix(ev, origin);
            let mix_total: f64 = mix.iter().map(|m| m.1).sum();
            if mix_total <= 0.0 {
                continue;
            }
            let per_hour = ev.expected_requests as f64 / (eh1 - eh0) as f64;
            let mut added = 0.0;
            for h in a..b {
                for (c, n) in &mix {
                    if self.matches_cell(q, c, h) {
                        let v = per_hour * n / mix_total;
                        out[(h - from) as usize] += v;
                        added += v;
                    }
                }
            }
            if added > 0.0 {
                listed.push(ev.id.clone());
            }
        }
        (out, listed)
    }

    /// How an event's requests share out among cells: as past events of its genre before the
    /// origin did (else any past event, else the genre's live baseline traffic). When the
    /// calendar names the event's market, and past events' too, the share past events drew from
    /// their own market goes to this event's market (their cells moved there), the rest as
    /// their audiences elsewhere were.
    fn event_mix(&self, ev: &podium_pacing::LiveEvent, origin: usize) -> Vec<(Cell, f64)> {
        let genre_ix = ev
            .genre
            .as_deref()
            .and_then(|g| self.genres.iter().position(|x| x == g));
        let origin = origin as u32;
        let of_genre =
            |c: u32| genre_ix.is_none_or(|g| usize::from(self.cells[c as usize].genre) == g);
        let mut past: HashMap<(u32, u32), f64> = HashMap::new();
        for &(e, c, h, n) in &self.event_counts {
            if h < origin && of_genre(c) {
                *past.entry((e, c)).or_default() += f64::from(n);
            }
        }
        if past.is_empty() {
            for &(e, c, h, n) in &self.event_counts {
                if h < origin {
                    *past.entry((e, c)).or_default() += f64::from(n);
                }
            }
        }
        if past.is_empty() {
            let mut mix: HashMap<u32, f64> = HashMap::new();
            for &(c, h, n) in &self.baseline {
                if h < origin && self.cells[c as usize].live && of_genre(c) {
                    *mix.entry(c).or_default() += f64::from(n);
                }
            }
            return mix
                .into_iter()
                .map(|(c, n)| (self.cells[c as usize], n))
                .collect();
        }
        let home = ev
            .country
            .as_deref()
            .and_then(|c| self.countries.iter().position(|x| x == c));
        let home_of = |e: u32| {
            self.calendar
                .get(&self.event_ids[e as usize])
                .and_then(|p| p.country.as_deref())
                .and_then(|c| self.countries.iter().position(|x| x == c))
        };
        let all_cells = |past: &HashMap<(u32, u32), f64>| {
            let mut mix: HashMap<Cell, f64> = HashMap::new();
            for (&(_, c), &n) in past {
                *mix.entry(self.cells[c as usize]).or_default() += n;
            }
            mix
        };
        let Some(h) = home.filter(|_| past.keys().any(|&(e, _)| home_of(e).is_some())) else {
            return all_cells(&past).into_iter().collect();
        };
        // An event's audience: a share `s` from its own market, the rest as all traffic is
        // spread over markets (`g`). Past events with a known market give `s`.
        let mut g = vec![0.0; self.countries.len()];
        for &(c, hr, n) in &self.baseline {
            if hr < origin {
                g[usize::from(self.cells[c as usize].country)] += f64::from(n);
            }
        }
        let g_total: f64 = g.iter().sum::<f64>().max(1.0);
        g.iter_mut().for_each(|x| *x /= g_total);
        let mut sizes: HashMap<u32, (f64, f64, usize)> = HashMap::new();
        for (&(e, c), &n) in &past {
            if let Some(ph) = home_of(e) {
                let entry = sizes.entry(e).or_insert((0.0, 0.0, ph));
                entry.1 += n;
                if usize::from(self.cells[c as usize].country) == ph {
                    entry.0 += n;
                }
            }
        }
        let (mut s_sum, mut w_sum) = (0.0, 0.0);
        for &(at_home, total, ph) in sizes.values() {
            let own = (at_home / total - g[ph]) / (1.0 - g[ph]).max(1e-9);
            s_sum += own.clamp(0.0, 1.0) * total;
            w_sum += total;
        }
        let s = if w_sum > 0.0 { s_sum / w_sum } else { 0.0 };
        // Within a market, cells as past event audiences there were; a market no past event
        // reached takes the cells of all past audiences, moved there.
        let everywhere = all_cells(&past);
        let mut mix = Vec::new();
        for (k, &gk) in g.iter().enumerate() {
            let w = (1.0 - s) * gk + if k == h { s } else { 0.0 };
            if w <= 0.0 {
                continue;
            }
            let own: Vec<(Cell, f64)> = everywhere
                .iter()
                .filter(|(c, _)| usize::from(c.country) == k)
                .map(|(c, n)| (*c, *n))
                .collect();
            let cells = if own.is_empty() {
                let offset = self
                    .cells
                    .iter()
                    .find(|c| usize::from(c.country) == k)
                    .map_or(0, |c| c.offset_min);
                everywhere
                    .iter()
                    .map(|(c, n)| {
                        let moved = Cell {
                            country: k as u16,
                            offset_min: offset,
                            ..*c
                        };
                        (moved, *n)
                    })
                    .collect()
            } else {
                own
            };
            let total: f64 = cells.iter().map(|c| c.1).sum();
            mix.extend(cells.into_iter().map(|(c, n)| (c, w * n / total)));
        }
        mix
    }

    /// Relative error of the calendar's expected audiences, from past events in the log (0.25
    /// when fewer than two can be checked).
    fn event_sigma(&self) -> f64 {
        let mut logs = Vec::new();
        for (e, id) in self.event_ids.iter().enumerate() {
            let Some(ev) = self.calendar.get(id) else {
                continue;
            };
            let seen: f64 = self
                .event_counts
                .iter()
                .filter(|x| x.0 == e as u32 && x.2 < self.origin as u32)
                .map(|x| f64::from(x.3))
                .sum();
            if seen > 0.0 && ev.expected_requests > 0 {
                logs.push((seen / ev.expected_requests as f64).ln());
            }
        }
        if logs.len() < 2 {
            return 0.25;
        }
        (logs.iter().map(|l| l * l).sum::<f64>() / logs.len() as f64).sqrt()
    }

    /// The forecast of the last `weeks` weeks of history made at their start (from what was
    /// known then, the calendar's events included), to set against what happened: model hours
    /// `[from, origin)` and the hourly values. `None` without a week of history before them.
    pub fn hindcast(&self, q: &Compiled, weeks: usize) -> Option<(i64, Vec<f64>)> {
        let o = self.origin.checked_sub(weeks * WEEK)?;
        if o < self.data_start + WEEK {
            return None;
        }
        let series = self.baseline_series(q);
        let (from, to) = (o as i64, self.origin as i64);
        let base = self.seasonal(&series, o, from, to);
        let (events, _) = self.event_forecast(q, o, from, to);
        Some((from, base.iter().zip(&events).map(|(b, e)| b + e).collect()))
    }

    /// Opportunities that happened in `[from, to)` (model hours), events included: a
    /// backtest's actuals.
    pub fn actual(&self, q: &Compiled, from: i64, to: i64) -> Vec<f64> {
        let (b, e) = (self.baseline_series(q), self.event_series(q));
        (from..to)
            .map(|h| {
                if h < 0 || h as usize >= self.hours {
                    0.0
                } else {
                    b[h as usize] + e[h as usize]
                }
            })
            .collect()
    }

    /// Sampled rows of the `weeks` averaged before the origin.
    pub(crate) fn recent_sample(&self) -> impl Iterator<Item = &SampleRow> {
        let from = self
            .origin
            .saturating_sub(self.cfg.weeks * WEEK)
            .max(self.data_start) as u32;
        let origin = self.origin as u32;
        self.sample
            .iter()
            .filter(move |r| r.hour >= from && r.hour < origin)
    }

    /// With a frequency cap of `max` per `period_hours` (local periods), the share of a query's
    /// opportunities a capped line item can take, when only `keep` of each viewer's
    /// opportunities are left to it; and the sampled opportunities it rests on.
    pub fn cap_share(&self, q: &Compiled, max: u32, period_hours: i64, keep: f64) -> (f64, u64) {
        // Per (viewer, period): opportunities, and whether the period lies whole in the history.
        let mut per: HashMap<(u32, i64), (u32, bool)> = HashMap::new();
        // Weeks start on Monday: hour 0 of the epoch is hour 72 of its week.
        let shift = if period_hours >= WEEK as i64 { 72 } else { 0 };
        let from = self
            .origin
            .saturating_sub(self.cfg.weeks * WEEK)
            .max(self.data_start) as i64;
        for r in self.recent_sample() {
            if self.matches(q, r.cell, r.hour) {
                let offset_min = i64::from(self.cells[r.cell as usize].offset_min);
                let local_h = ((self.first_hour + i64::from(r.hour)) * 60 + offset_min)
                    .div_euclid(60)
                    + shift;
                let period = local_h.div_euclid(period_hours);
                let start =
                    period * period_hours - shift - offset_min.div_euclid(60) - self.first_hour;
                let whole = start >= from && start + period_hours <= self.origin as i64;
                let e = per.entry((r.user, period)).or_insert((0, whole));
                e.0 += 1;
            }
        }
        // Whole periods only, when there are enough: a partial one understates the cap.
        let whole: u64 = per.values().filter(|v| v.1).map(|v| u64::from(v.0)).sum();
        let use_all = whole < 30;
        let counted = || per.values().filter(|v| use_all || v.1).map(|v| v.0);
        let n: u64 = counted().map(u64::from).sum();
        if n == 0 {
            return (keep, 0);
        }
        let capped: f64 = counted()
            .map(|v| (f64::from(v) * keep).min(f64::from(max)))
            .sum();
        (capped / n as f64, n)
    }

    /// Distinct viewers a query reaches over a span of `hours` (the most recent such span of
    /// history, scaled up from the sample), and the viewers sampled.
    pub fn reach(&self, q: &Compiled, hours: usize) -> (f64, usize) {
        let hours = hours.min(self.origin - self.data_start);
        let from = (self.origin - hours) as u32;
        let mut seen = std::collections::HashSet::new();
        for r in self
            .sample
            .iter()
            .filter(|r| r.hour >= from && r.hour < self.origin as u32)
        {
            if self.matches(q, r.cell, r.hour) {
                seen.insert(r.user);
            }
        }
        (seen.len() as f64 / self.cfg.sample_rate, seen.len())
    }

    /// Whether a viewer is in the sample.
    pub fn sampled(&self, user_id: &str) -> bool {
        user_draw(user_id) < self.cfg.sample_rate
    }
}

/// A forecast of opportunities over a window.
#[derive(Clone, Debug, Serialize)]
pub struct VolumeForecast {
    /// Hours forecast, ms since the epoch.
    pub from_ms: i64,
    /// End of the hours forecast.
    pub to_ms: i64,
    /// Per hour, baseline and events.
    #[serde(skip)]
    pub hourly: Vec<f64>,
    /// Regular traffic.
    pub baseline: f64,
    /// Expected traffic of calendar events in the window.
    pub events: f64,
    /// Both.
    pub total: f64,
    /// 80 % band.
    pub low: f64,
    /// 80 % band.
    pub high: f64,
    /// Relative errors of the same forecast made 1, 2, … weeks earlier.
    pub backtest_errors: Vec<f64>,
    /// Calendar events counted.
    pub event_list: Vec<String>,
    /// The slice's opportunities over the weeks averaged.
    pub history: f64,
    /// What the reader should know.
    pub notes: Vec<String>,
}
