//! Decision records and where they go.
//!
//! The engine hands each record to a [`DecisionSink`] without waiting: sinks queue the record for a
//! task of their own and drop it (counting the drop) rather than slow a request down. The trunk's
//! sink keeps recent records in memory; [`FeatureLogSink`] adds the served features' Parquet log
//! in front of it, and [`DecisionLogSink`] the decision log (one Parquet row per decision).

pub mod decision_log;
pub mod feature_log;
pub mod parquet_log;
pub mod ship;

pub use decision_log::{read_decision_log, DecisionLogError, DecisionLogSink};
pub use feature_log::FeatureLogSink;
pub use parquet_log::{LogSink, ParquetLog, RowsOf};

use podium_core::{AdRequest, Decision};
use podium_features::ServedEntity;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// Everything needed to explain, and later replay, one decision.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DecisionRecord {
    /// Wall-clock time of admission, milliseconds since the Unix epoch.
    pub ts_ms: u64,
    /// The validated request.
    pub request: AdRequest,
    /// Request-level feature values served to the models, by name.
    pub features: Vec<(String, f32)>,
    /// The decision, with model versions and timings.
    pub decision: Decision,
    /// Every stored entity hydrated (viewer, content, candidates' line items and advertisers):
    /// the values served and the as-of time of the stored vector they came from.
    #[serde(default)]
    pub served: Arc<[ServedEntity]>,
    /// The state the auction read, for exact replay.
    #[serde(default)]
    pub replay: ReplayState,
}

/// What a decision's auction read beyond the request and the marketplace: enough to run the
/// same valuation, pricing and pod construction again and get the same answer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReplayState {
    /// Fingerprint of the marketplace the decision ran on (a replay against another one is
    /// refused row by row, with that as the reason).
    pub market: u64,
    /// Task of each full-scoring model (`ctr`, `completion`, …), in the order of `scores`.
    pub tasks: Vec<String>,
    /// The candidates fully scored (positions in the marketplace), in scoring order.
    pub top: Vec<u32>,
    /// Each scorer's answer for `top`, scorer by scorer: `scores[m * top.len() + r]`.
    pub scores: Vec<f32>,
    /// Each candidate's pacing bid multiplier.
    pub multipliers: Vec<f64>,
    /// What each candidate's budget lease could still hand out, micros.
    pub available: Vec<i64>,
    /// The reserve (floor) of each break, CPM micros, after learned reserves and experiments.
    pub reserves: Vec<i64>,
    /// The viewer's frequency-cap history read: (counter key, impression time ms).
    pub history: Vec<(u64, i64)>,
    /// Line items the pod placed whose budget lease was lost to a race (dropped from the pod).
    pub lease_lost: Vec<u32>,
    /// Exploration of each break, when it is on.
    pub explore: Vec<Explored>,
}

/// How a break's lead ad (its best-valued best-effort ad) was chosen, when exploration is on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Explored {
    /// The break.
    pub break_id: String,
    /// The lead ad's line item, if the break placed a best-effort ad.
    pub lead: Option<String>,
    /// Probability with which the policy chose that lead (None when it cannot be stated: an
    /// explored pick that the pod's rules kept out of the lead).
    pub propensity: Option<f64>,
    /// Whether this break explored (the lead was drawn at random).
    pub explored: bool,
    /// Candidates the exploration drew from.
    pub choices: u32,
    /// The exploration rate (epsilon) in force.
    pub rate: f64,
}

/// A destination for decision records.
pub trait DecisionSink: Send + Sync {
    /// Queues a record; never blocks the caller.
    fn submit(&self, record: DecisionRecord);
}

enum Command {
    Record(Box<DecisionRecord>),
    Recent(usize, oneshot::Sender<Vec<DecisionRecord>>),
}

/// The embedded sink: a task that keeps the most recent records in a ring.
#[derive(Clone)]
pub struct MemoryLog {
    tx: mpsc::Sender<Command>,
    dropped: Arc<AtomicU64>,
    written: Arc<AtomicU64>,
}

impl MemoryLog {
    /// Starts the ring-keeping task on the current tokio runtime; it keeps `capacity` records.
    pub fn spawn(capacity: usize) -> Self {
        let (tx, mut rx) = mpsc::channel::<Command>(4096);
        let written = Arc::new(AtomicU64::new(0));
        let counter = written.clone();
        tokio::spawn(async move {
            let mut ring: VecDeque<DecisionRecord> = VecDeque::with_capacity(capacity.min(1 << 16));
            while let Some(cmd) = rx.recv().await {
                match cmd {
                    Command::Record(r) => {
                        if ring.len() == capacity {
                            ring.pop_front();
                        }
                        ring.push_back(*r);
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                    Command::Recent(n, reply) => {
                        let skip = ring.len().saturating_sub(n);
                        let _ = reply.send(ring.iter().skip(skip).cloned().collect());
                    }
                }
            }
        });
        Self {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
            written,
        }
    }

    /// The last `n` records, oldest first.
    pub async fn recent(&self, n: usize) -> Vec<DecisionRecord> {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Command::Recent(n, reply)).await.is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    /// Records dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Records kept so far.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }
}

impl DecisionSink for MemoryLog {
    fn submit(&self, record: DecisionRecord) {
        if self.tx.try_send(Command::Record(Box::new(record))).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use podium_core::{AdBreak, BreakPosition, Content, Device, StageTimings, User};

    fn record(i: usize) -> DecisionRecord {
        let request = AdRequest {
            request_id: format!("r-{i}").as_str().into(),
            user: User {
                id: "u".into(),
                country: "US".into(),
                device: Device::Tv,
                region: None,
                segments: Vec::new(),
                utc_offset_min: None,
            },
            content: Content {
                id: "c".into(),
                genre: "drama".into(),
                live: false,
                rating: None,
                event_id: None,
            },
            breaks: vec![AdBreak {
                id: "b".into(),
                position: BreakPosition::Midroll,
                max_ads: 1,
                max_duration_s: 30,
                rules: Default::default(),
            }],
            tmax: None,
            blocked_categories: Vec::new(),
            blocked_advertisers: Vec::new(),
        };
        DecisionRecord {
            ts_ms: i as u64,
            features: vec![],
            served: Arc::default(),
            replay: ReplayState::default(),
            decision: Decision {
                request_id: request.request_id.clone(),
                breaks: vec![],
                model_versions: vec![],
                timings: StageTimings::default(),
                eligible: 0,
                degraded: vec![],
                experiments: vec![],
            },
            request,
        }
    }

    #[tokio::test]
    async fn keeps_the_most_recent_records_in_order() {
        let log = MemoryLog::spawn(3);
        for i in 0..5 {
            log.submit(record(i));
        }
        let recent = log.recent(10).await;
        let ids: Vec<_> = recent
            .iter()
            .map(|r| r.request.request_id.to_string())
            .collect();
        assert_eq!(ids, ["r-2", "r-3", "r-4"]);
        assert_eq!(log.written(), 5);
        assert_eq!(log.dropped(), 0);
    }
}
