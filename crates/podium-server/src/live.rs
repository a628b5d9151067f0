//! Live time series for the dashboard: per second, the decision rate, shed and degraded rates
//! and latency percentiles of the whole decision and each stage; every 5 s each model version's
//! rate and P99; every 10 s the pacing of the line items spending most. Kept in memory for the last
//! five minutes (pacing: the last hour).

use hdrhistogram::Histogram;
use podium_core::StageTimings;
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// Seconds of per-second points kept.
pub const KEEP_SECONDS: usize = 300;
/// `total`, then the stages in [`StageTimings::stages`] order.
const STAGES: [&str; 8] = [
    "total", "admit", "retrieve", "hydrate", "rank", "score", "value", "pod",
];
/// Line items whose pacing is followed.
const PACING_ITEMS: usize = 12;
const MODEL_EVERY_S: i64 = 5;
const PACING_EVERY_S: i64 = 10;
const PACING_KEEP: usize = 360;
const MODEL_KEEP: usize = KEEP_SECONDS / MODEL_EVERY_S as usize;

/// Percentiles of one stage over a second, µs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
}

/// One second.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Point {
    /// End of the second, Unix ms.
    pub t_ms: i64,
    /// Decisions per second.
    pub decisions: f64,
    /// Requests shed per second.
    pub shed: f64,
    /// Degraded decisions per second.
    pub degraded: f64,
    /// Latency percentiles per stage (`total` for the whole decision).
    pub latency_us: HashMap<&'static str, Percentiles>,
}

/// A model version every 5 s.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ModelPoint {
    /// Unix ms.
    pub t_ms: i64,
    /// Batches per second over the interval.
    pub batches_per_s: f64,
    /// Rows per second over the interval.
    pub rows_per_s: f64,
    /// P99 over the version's most recent batches, µs.
    pub p99_us: u64,
}

/// A line item's spend every 10 s.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PacingPoint {
    /// Unix ms.
    pub t_ms: i64,
    /// Spent today, micros.
    pub spent_micros: i64,
    /// Where even delivery would have spend, micros.
    pub target_micros: i64,
}

struct Window {
    histograms: Vec<Histogram<u64>>,
    decisions: u64,
    degraded: u64,
}

impl Window {
    fn new() -> Self {
        Self {
            histograms: STAGES
                .iter()
                .map(|_| Histogram::new_with_bounds(1, 60_000_000, 2).expect("valid bounds"))
                .collect(),
            decisions: 0,
            degraded: 0,
        }
    }
}

/// A version's counters at its last sample (batches, rows, Unix ms) and its samples.
type VersionSeries = ((u64, u64, i64), VecDeque<ModelPoint>);

struct Series {
    last_tick_ms: i64,
    last_shed: u64,
    points: VecDeque<Point>,
    /// Per version: the counters at the last sample, and the samples.
    models: HashMap<(String, String), VersionSeries>,
    pacing: HashMap<String, VecDeque<PacingPoint>>,
}

/// The live recorder. Decisions record into one of several windows, picked by thread, so that
/// request threads on many cores do not queue on one lock; the tick merges them.
pub struct Live {
    windows: Vec<Mutex<Window>>,
    series: Mutex<Series>,
}

/// This thread's window, as an index taken once per thread.
fn shard(count: usize) -> usize {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    SHARD.with(|s| *s) % count
}

impl Default for Live {
    fn default() -> Self {
        Self {
            windows: (0..std::thread::available_parallelism().map_or(1, |n| n.get().min(64)))
                .map(|_| Mutex::new(Window::new()))
                .collect(),
            series: Mutex::new(Series {
                last_tick_ms: 0,
                last_shed: 0,
                points: VecDeque::new(),
                models: HashMap::new(),
                pacing: HashMap::new(),
            }),
        }
    }
}

impl Live {
    /// Records one decision.
    pub fn record(&self, t: &StageTimings, degraded: bool) {
        let Ok(mut w) = self.windows[shard(self.windows.len())].lock() else {
            return;
        };
        w.decisions += 1;
        w.degraded += degraded as u64;
        let values = std::iter::once(t.total_us).chain(t.stages().map(|(_, us)| us));
        for (h, v) in w.histograms.iter_mut().zip(values) {
            let _ = h.record(v.max(1));
        }
    }

    /// Closes the current second (called once a second): `shed_total` is the admission's
    /// counter of shed requests.
    pub fn tick(&self, now_ms: i64, shed_total: u64) {
        let mut w = Window::new();
        for shard in &self.windows {
            let Ok(mut s) = shard.lock() else {
                continue;
            };
            w.decisions += std::mem::take(&mut s.decisions);
            w.degraded += std::mem::take(&mut s.degraded);
            for (total, h) in w.histograms.iter_mut().zip(s.histograms.iter_mut()) {
                let _ = total.add(&*h);
                h.reset();
            }
        }
        let Ok(mut s) = self.series.lock() else {
            return;
        };
        let seconds = if s.last_tick_ms == 0 {
            1.0
        } else {
            ((now_ms - s.last_tick_ms) as f64 / 1000.0).max(0.001)
        };
        let shed = shed_total.saturating_sub(s.last_shed);
        s.last_shed = shed_total;
        s.last_tick_ms = now_ms;
        let latency_us = STAGES
            .iter()
            .zip(&w.histograms)
            .map(|(stage, h)| {
                let p = |q| {
                    if h.is_empty() {
                        0
                    } else {
                        h.value_at_quantile(q)
                    }
                };
                (
                    *stage,
                    Percentiles {
                        p50: p(0.5),
                        p90: p(0.9),
                        p99: p(0.99),
                    },
                )
            })
            .collect();
        s.points.push_back(Point {
            t_ms: now_ms,
            decisions: w.decisions as f64 / seconds,
            shed: shed as f64 / seconds,
            degraded: w.degraded as f64 / seconds,
            latency_us,
        });
        while s.points.len() > KEEP_SECONDS {
            s.points.pop_front();
        }
    }

    /// Whether model and pacing samples are due at this tick.
    pub fn due(now_ms: i64) -> (bool, bool) {
        let second = now_ms / 1000;
        (second % MODEL_EVERY_S == 0, second % PACING_EVERY_S == 0)
    }

    /// Samples model versions: `(model, version, batches, rows, p99 µs)` each.
    pub fn sample_models(&self, now_ms: i64, versions: Vec<(String, String, u64, u64, u64)>) {
        let Ok(mut s) = self.series.lock() else {
            return;
        };
        let live: Vec<(String, String)> = versions
            .iter()
            .map(|v| (v.0.clone(), v.1.clone()))
            .collect();
        s.models.retain(|k, _| live.contains(k));
        for (model, version, batches, rows, p99_us) in versions {
            let entry = s
                .models
                .entry((model, version))
                .or_insert_with(|| ((batches, rows, now_ms), VecDeque::new()));
            let (b0, r0, t0) = entry.0;
            let dt = ((now_ms - t0) as f64 / 1000.0).max(0.001);
            if now_ms > t0 {
                entry.1.push_back(ModelPoint {
                    t_ms: now_ms,
                    batches_per_s: batches.saturating_sub(b0) as f64 / dt,
                    rows_per_s: rows.saturating_sub(r0) as f64 / dt,
                    p99_us,
                });
            }
            entry.0 = (batches, rows, now_ms);
            while entry.1.len() > MODEL_KEEP {
                entry.1.pop_front();
            }
        }
    }

    /// Samples pacing: the line items spending most.
    pub fn sample_pacing(&self, now_ms: i64, view: &[podium_engine::PacingView]) {
        let Ok(mut s) = self.series.lock() else {
            return;
        };
        for li in spending_most(view) {
            let series = s.pacing.entry(li.line_item.clone()).or_default();
            series.push_back(PacingPoint {
                t_ms: now_ms,
                spent_micros: li.spent_micros,
                target_micros: li.target_micros,
            });
            while series.len() > PACING_KEEP {
                series.pop_front();
            }
        }
    }

    /// The last `seconds` per-second points, oldest first.
    pub fn points(&self, seconds: usize) -> Vec<Point> {
        self.series
            .lock()
            .map(|s| {
                let skip = s.points.len().saturating_sub(seconds);
                s.points.iter().skip(skip).cloned().collect()
            })
            .unwrap_or_default()
    }

    /// A version's samples and latest rates.
    pub fn model_series(&self, model: &str, version: &str) -> Vec<ModelPoint> {
        self.series
            .lock()
            .ok()
            .and_then(|s| {
                s.models
                    .get(&(model.to_string(), version.to_string()))
                    .map(|m| m.1.iter().cloned().collect())
            })
            .unwrap_or_default()
    }

    /// A line item's spend samples.
    pub fn pacing_series(&self, line_item: &str) -> Vec<PacingPoint> {
        self.series
            .lock()
            .ok()
            .and_then(|s| s.pacing.get(line_item).map(|p| p.iter().cloned().collect()))
            .unwrap_or_default()
    }
}

/// The line items with budgets that spent most today, then the largest budgets.
pub fn spending_most(view: &[podium_engine::PacingView]) -> Vec<&podium_engine::PacingView> {
    let mut items: Vec<_> = view.iter().filter(|v| v.budget_micros > 0).collect();
    items.sort_by(|a, b| {
        b.spent_micros
            .cmp(&a.spent_micros)
            .then_with(|| b.budget_micros.cmp(&a.budget_micros))
            .then_with(|| a.line_item.cmp(&b.line_item))
    });
    items.truncate(PACING_ITEMS);
    items
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_of_decisions_becomes_one_point_with_rates_and_percentiles() {
        let live = Live::default();
        live.tick(1_000, 0);
        for i in 1..=100u64 {
            let t = StageTimings {
                total_us: i * 10,
                score_us: i,
                ..StageTimings::default()
            };
            live.record(&t, i % 10 == 0);
        }
        live.tick(2_000, 7);
        let points = live.points(10);
        assert_eq!(points.len(), 2);
        let p = &points[1];
        assert_eq!((p.decisions, p.degraded, p.shed), (100.0, 10.0, 7.0));
        let total = p.latency_us["total"];
        assert!((495..=505).contains(&total.p50), "{total:?}");
        assert!((985..=1000).contains(&total.p99), "{total:?}");
        assert_eq!(live.points(1).len(), 1);
    }

    #[test]
    fn model_samples_give_rates_between_samples() {
        let live = Live::default();
        live.sample_models(0, vec![("m".into(), "1".into(), 100, 1000, 50)]);
        live.sample_models(5_000, vec![("m".into(), "1".into(), 600, 6000, 60)]);
        let s = live.model_series("m", "1");
        assert_eq!(s.len(), 1);
        assert_eq!((s[0].batches_per_s, s[0].rows_per_s), (100.0, 1000.0));
        // A version no longer served is forgotten.
        live.sample_models(10_000, Vec::new());
        assert!(live.model_series("m", "1").is_empty());
    }
}
