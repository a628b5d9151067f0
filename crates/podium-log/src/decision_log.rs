//! The decision log: every decision as a Parquet row (`podium_features::offline::DecisionRow`),
//! written by a thread of its own from a bounded queue, in a rolling directory
//! (`decisions-….parquet`, by size and age). A full queue drops the row and counts it; the
//! request never waits. The layout is in `docs/decision-log.md`.

use crate::parquet_log::{LogSink, RowsOf};
use crate::{DecisionRecord, DecisionSink, ReplayState};
use podium_features::offline::{
    read_records, DecisionRow, OfflineError, ReplayColumns, RollPolicy, DECISION_LOG_VERSION,
};
use podium_features::ServedEntity;
use serde::Serialize;
use std::path::Path;
use std::sync::Arc;

/// The decision log's sink: every record passes on to `inner` and is queued for the log.
pub type DecisionLogSink = LogSink<DecisionRow>;

impl LogSink<DecisionRow> {
    /// Logs into `dir` (files `decisions-….parquet`), rolled by `policy`.
    pub fn decisions(
        inner: Arc<dyn DecisionSink>,
        dir: &Path,
        policy: RollPolicy,
    ) -> Result<Self, OfflineError> {
        LogSink::start(inner, dir, "decisions", policy, decision_row_of)
    }
}

/// The row (JSON of the request, features and decision) is built on the writer thread.
fn decision_row_of(record: &DecisionRecord) -> RowsOf<DecisionRow> {
    let copy = record.clone();
    Some(Box::new(move || vec![row_of(&copy)]))
}

fn json(value: &impl Serialize) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// The log row of a decision record.
pub fn row_of(r: &DecisionRecord) -> DecisionRow {
    let d = &r.decision;
    let t = &d.timings;
    DecisionRow {
        schema_version: DECISION_LOG_VERSION,
        request_id: d.request_id.to_string(),
        ts_ms: r.ts_ms as i64,
        user_id: r.request.user.id.to_string(),
        country: r.request.user.country.clone(),
        device: r.request.user.device.as_str().to_string(),
        content_id: r.request.content.id.to_string(),
        genre: r.request.content.genre.clone(),
        live: r.request.content.live,
        eligible: d.eligible as i64,
        ads: d.breaks.iter().map(|b| b.ads.len() as i64).sum(),
        revenue_micros: d
            .breaks
            .iter()
            .flat_map(|b| &b.ads)
            .map(|a| a.price_cpm.0 / 1000)
            .sum(),
        timings_us: [
            t.total_us,
            t.admit_us,
            t.retrieve_us,
            t.hydrate_us,
            t.rank_us,
            t.score_us,
            t.value_us,
            t.pod_us,
        ]
        .map(|v| v as i64),
        model_versions: json(&d.model_versions),
        degraded: json(&d.degraded),
        experiments: json(&d.experiments),
        request: json(&r.request),
        // Pairs in order; a missing (NaN) value is null.
        features: json(&r.features),
        served: json(&r.served),
        decision: json(d),
        state: state_columns(&r.replay),
    }
}

/// The replay state as the log's typed columns.
pub fn state_columns(s: &ReplayState) -> ReplayColumns {
    ReplayColumns {
        market_fingerprint: s.market as i64,
        score_tasks: json(&s.tasks),
        top: s.top.iter().map(|&i| i as i32).collect(),
        scores: s.scores.clone(),
        multipliers: s.multipliers.clone(),
        available: s.available.clone(),
        reserves: s.reserves.clone(),
        cap_history: s.history.iter().flat_map(|&(k, t)| [k as i64, t]).collect(),
        lease_lost: s.lease_lost.iter().map(|&i| i as i32).collect(),
        exploration: json(&s.explore),
    }
}

/// The replay state the typed columns hold.
pub fn replay_state(c: &ReplayColumns) -> Result<ReplayState, String> {
    let tasks = if c.score_tasks.is_empty() {
        Vec::new()
    } else {
        serde_json::from_str(&c.score_tasks).map_err(|e| format!("`score_tasks`: {e}"))?
    };
    let explore = if c.exploration.is_empty() {
        Vec::new()
    } else {
        serde_json::from_str(&c.exploration).map_err(|e| format!("`exploration`: {e}"))?
    };
    if !c.cap_history.len().is_multiple_of(2) {
        return Err("`cap_history`: an odd number of values (it holds key, time pairs)".into());
    }
    let positions = |v: &[i32], what: &str| {
        v.iter()
            .map(|&i| u32::try_from(i).map_err(|_| format!("`{what}`: negative position {i}")))
            .collect::<Result<Vec<u32>, String>>()
    };
    Ok(ReplayState {
        market: c.market_fingerprint as u64,
        tasks,
        top: positions(&c.top, "top")?,
        scores: c.scores.clone(),
        multipliers: c.multipliers.clone(),
        available: c.available.clone(),
        reserves: c.reserves.clone(),
        history: c
            .cap_history
            .chunks_exact(2)
            .map(|p| (p[0] as u64, p[1]))
            .collect(),
        lease_lost: positions(&c.lease_lost, "lease_lost")?,
        explore,
    })
}

/// A logged decision that could not be read back whole.
#[derive(Debug, thiserror::Error)]
pub enum DecisionLogError {
    /// The file, its layout, or a row's scalar columns.
    #[error(transparent)]
    Log(#[from] OfflineError),
    /// A row's JSON columns.
    #[error("{path}: decision {request_id}: {message}")]
    Json {
        /// The file or directory read.
        path: std::path::PathBuf,
        /// The request id of the row.
        request_id: String,
        /// What failed to parse.
        message: String,
    },
}

/// Reads a decision log (a file, or a directory of `*.parquet` in name order) back into records.
pub fn read_decision_log(path: &Path) -> Result<Vec<DecisionRecord>, DecisionLogError> {
    read_records::<DecisionRow>(path)?
        .into_iter()
        .map(|row| {
            record_of(&row).map_err(|message| DecisionLogError::Json {
                path: path.to_path_buf(),
                request_id: row.request_id.clone(),
                message,
            })
        })
        .collect()
}

/// The record a row holds.
pub fn record_of(row: &DecisionRow) -> Result<DecisionRecord, String> {
    let parse = |what: &str, text: &str| -> Result<serde_json::Value, String> {
        serde_json::from_str(text).map_err(|e| format!("`{what}`: {e}"))
    };
    let number = |v: &serde_json::Value| match v {
        serde_json::Value::Null => Some(f32::NAN),
        v => v.as_f64().map(|v| v as f32),
    };
    let pairs = parse("features", &row.features)?;
    let features = pairs
        .as_array()
        .ok_or("`features`: not a JSON array of [name, value] pairs")?
        .iter()
        .map(|p| match p.as_array().map(Vec::as_slice) {
            Some([name, value]) => match (name.as_str(), number(value)) {
                (Some(n), Some(v)) => Ok((n.to_string(), v)),
                _ => Err(format!("`features`: bad pair {p}")),
            },
            _ => Err(format!("`features`: bad pair {p}")),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let served = served_of(&row.served)?;
    Ok(DecisionRecord {
        ts_ms: row.ts_ms as u64,
        request: serde_json::from_value(parse("request", &row.request)?)
            .map_err(|e| format!("`request`: {e}"))?,
        features,
        decision: serde_json::from_value(parse("decision", &row.decision)?)
            .map_err(|e| format!("`decision`: {e}"))?,
        served: served.into(),
        replay: replay_state(&row.state)?,
    })
}

/// The hydrated entities of a row's `served` column.
pub fn served_of(text: &str) -> Result<Vec<ServedEntity>, String> {
    let number = |v: &serde_json::Value| match v {
        serde_json::Value::Null => Some(f32::NAN),
        v => v.as_f64().map(|v| v as f32),
    };
    serde_json::from_str::<serde_json::Value>(text)
        .map_err(|e| format!("`served`: {e}"))?
        .as_array()
        .ok_or("`served`: not a JSON array")?
        .iter()
        .map(|e| served_entity(e, &number))
        .collect()
}

/// A hydrated entity from its JSON, where a missing (NaN) value was written as null.
fn served_entity(
    e: &serde_json::Value,
    number: &impl Fn(&serde_json::Value) -> Option<f32>,
) -> Result<ServedEntity, String> {
    let bad = |what: &str| format!("`served`: {what} in {e}");
    let values = e["values"]
        .as_array()
        .ok_or_else(|| bad("no values"))?
        .iter()
        .map(|p| match p.as_array().map(Vec::as_slice) {
            Some([v, stored]) => Ok((
                number(v).ok_or_else(|| bad("a value that is not a number"))?,
                stored
                    .as_bool()
                    .ok_or_else(|| bad("a flag that is not a boolean"))?,
            )),
            _ => Err(bad("a value that is not a [value, stored] pair")),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ServedEntity {
        entity: serde_json::from_value(e["entity"].clone()).map_err(|x| bad(&x.to_string()))?,
        id: e["id"].as_str().ok_or_else(|| bad("no id"))?.to_string(),
        as_of_ms: e["as_of_ms"].as_i64(),
        names: serde_json::from_value::<Vec<String>>(e["names"].clone())
            .map_err(|x| bad(&x.to_string()))?
            .into(),
        values,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use podium_core::{AdBreak, AdRequest, BreakPosition, Content, Decision, Device, User};

    fn record() -> DecisionRecord {
        let request = AdRequest {
            request_id: "r-1".into(),
            user: User {
                id: "u-1".into(),
                country: "US".into(),
                device: Device::Tv,
                region: Some("US-CA".into()),
                segments: vec!["sports_fans".into()],
                utc_offset_min: Some(-480),
            },
            content: Content {
                id: "t-1".into(),
                genre: "drama".into(),
                live: true,
                rating: None,
                event_id: None,
            },
            breaks: vec![AdBreak {
                id: "b1".into(),
                position: BreakPosition::Midroll,
                max_ads: 2,
                max_duration_s: 60,
                rules: Default::default(),
            }],
            tmax: Some(std::time::Duration::from_millis(50)),
            blocked_categories: vec!["IAB7".into()],
            blocked_advertisers: Vec::new(),
        }
        .validate()
        .unwrap();
        let decision: Decision = serde_json::from_value(serde_json::json!({
            "request_id": "r-1",
            "breaks": [{"break_id": "b1", "ads": [
                {"line_item_id": "li-1", "creative_id": "cr-1", "advertiser_id": "adv-1",
                 "duration_s": 30, "price_cpm": 12500000, "ecpm": 14000000}]}],
            "model_versions": [{"name": "ctr", "version": "3", "tier": 0}],
            "timings": {"admit_us": 1, "hydrate_us": 2, "retrieve_us": 3, "rank_us": 4,
                        "score_us": 5, "value_us": 6, "pod_us": 7, "total_us": 30},
            "eligible": 12,
            "degraded": ["hydrate: store timeout"]
        }))
        .unwrap();
        DecisionRecord {
            ts_ms: 1_764_000_000_000,
            request,
            features: vec![("ctx_device_tv".into(), 1.0), ("user_ctr".into(), f32::NAN)],
            decision,
            served: vec![ServedEntity {
                entity: podium_features::Entity::User,
                id: "u-1".into(),
                as_of_ms: Some(1_763_999_000_000),
                names: vec!["ctr_7d".to_string(), "seen_1d".to_string()].into(),
                values: vec![(0.013, true), (f32::NAN, false)],
            }]
            .into(),
            replay: ReplayState {
                market: u64::MAX - 7,
                tasks: vec!["ctr".into(), "completion".into()],
                top: vec![3, 1],
                scores: vec![0.01, 0.02, 0.9, 0.8],
                multipliers: vec![1.0, 0.5],
                available: vec![i64::MAX, 12],
                reserves: vec![2_000_000],
                history: vec![(u64::MAX, 1_763_999_000_000)],
                lease_lost: vec![1],
                explore: vec![crate::Explored {
                    break_id: "b1".into(),
                    lead: Some("li-1".into()),
                    propensity: Some(0.95),
                    explored: false,
                    choices: 4,
                    rate: 0.05,
                }],
            },
        }
    }

    fn same(a: &DecisionRecord, b: &DecisionRecord) -> bool {
        // NaN != NaN: compare through the JSON both write.
        serde_json::to_string(a).unwrap() == serde_json::to_string(b).unwrap()
            && a.features.len() == b.features.len()
            && a.features[1].1.is_nan() == b.features[1].1.is_nan()
    }

    #[test]
    fn a_record_round_trips_through_a_parquet_file() {
        let dir = tempfile::tempdir().unwrap();
        let r = record();
        let row = row_of(&r);
        assert_eq!((row.ads, row.revenue_micros, row.eligible), (1, 12_500, 12));
        assert_eq!(row.timings_us[0], 30);
        assert!(row.live);
        let path = dir.path().join("d.parquet");
        podium_features::offline::write_records(&path, &[row]).unwrap();
        let back = read_decision_log(&path).unwrap();
        assert_eq!(back.len(), 1);
        assert!(same(&back[0], &r), "{:?}", back[0]);
        assert!(back[0].served[0].values[1].0.is_nan());
        let (got, want) = (&back[0].replay, &r.replay);
        assert_eq!(
            (got.market, &got.tasks, &got.top, &got.scores),
            (want.market, &want.tasks, &want.top, &want.scores)
        );
        assert_eq!(
            (&got.available, &got.history, &got.lease_lost, &got.explore),
            (
                &want.available,
                &want.history,
                &want.lease_lost,
                &want.explore
            )
        );
    }

    #[test]
    fn a_newer_layout_and_a_foreign_file_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let mut row = row_of(&record());
        row.schema_version = DECISION_LOG_VERSION + 1;
        let path = dir.path().join("new.parquet");
        podium_features::offline::write_records(&path, &[row]).unwrap();
        let err = read_decision_log(&path).unwrap_err().to_string();
        assert!(
            err.contains("new.parquet") && err.contains("newer"),
            "{err}"
        );

        let foreign = dir.path().join("events.parquet");
        podium_features::offline::write_events(&foreign, &[]).unwrap();
        let err = read_decision_log(&foreign).unwrap_err().to_string();
        assert!(
            err.contains("events.parquet") && err.contains("column"),
            "{err}"
        );

        let truncated = dir.path().join("cut.parquet");
        let good = dir.path().join("good.parquet");
        podium_features::offline::write_records(&good, &[row_of(&record())]).unwrap();
        let bytes = std::fs::read(&good).unwrap();
        std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
        let err = read_decision_log(&truncated).unwrap_err().to_string();
        assert!(err.contains("cut.parquet"), "{err}");
    }

    #[test]
    fn bad_json_in_a_row_names_the_decision() {
        let dir = tempfile::tempdir().unwrap();
        let mut row = row_of(&record());
        row.request = "{\"request_id\": 7}".into();
        let path = dir.path().join("d.parquet");
        podium_features::offline::write_records(&path, &[row]).unwrap();
        let err = read_decision_log(&path).unwrap_err().to_string();
        assert!(err.contains("r-1") && err.contains("`request`"), "{err}");
    }
}
