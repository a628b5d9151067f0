//! The served-feature log: the stored feature values served with each decision, as Parquet
//! (`podium_features::offline::ServedRow`, one row per feature), for the online/offline
//! consistency check (`podium features consistency`).

use crate::parquet_log::{LogSink, RowsOf};
use crate::{DecisionRecord, DecisionSink};
use podium_features::offline::{OfflineError, RollPolicy, ServedRow};
use podium_features::ServedEntity;
use std::path::Path;
use std::sync::Arc;

/// The served-feature log's sink: every record passes on to `inner`; its served features are
/// queued for the log, one row per feature.
pub type FeatureLogSink = LogSink<ServedRow>;

impl LogSink<ServedRow> {
    /// Logs into `dir` (files `served-….parquet`), rolled by `policy`.
    pub fn served_features(
        inner: Arc<dyn DecisionSink>,
        dir: &Path,
        policy: RollPolicy,
    ) -> Result<Self, OfflineError> {
        LogSink::start(inner, dir, "served", policy, served_rows_of)
    }
}

/// The rows (hundreds per decision) are built on the writer thread from a shared copy.
fn served_rows_of(record: &DecisionRecord) -> RowsOf<ServedRow> {
    if record.served.is_empty() {
        return None;
    }
    let (request_id, ts_ms, served) = (
        record.decision.request_id.to_string(),
        record.ts_ms as i64,
        record.served.clone(),
    );
    Some(Box::new(move || served_rows(&request_id, ts_ms, &served)))
}

/// One row per served feature; a default served reads with no as-of time.
pub fn served_rows(request_id: &str, ts_ms: i64, entities: &[ServedEntity]) -> Vec<ServedRow> {
    entities
        .iter()
        .flat_map(|e| {
            e.names
                .iter()
                .zip(&e.values)
                .map(move |(name, &(value, stored))| ServedRow {
                    request_id: request_id.to_owned(),
                    ts_ms,
                    entity: e.entity,
                    entity_id: e.id.clone(),
                    feature: name.clone(),
                    value,
                    as_of_ms: if stored { e.as_of_ms } else { None },
                })
        })
        .collect()
}
