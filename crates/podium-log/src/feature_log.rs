//! The served-feature log: the stored feature values served with each decision, as Parquet
//! (`podium_features::offline::ServedRow`, one row per feature), for the online/offline
//! consistency check (`podium features consistency`).

use crate::parquet_log::ParquetLog;
use crate::{DecisionRecord, DecisionSink};
use podium_features::offline::{OfflineError, RollPolicy, ServedRow};
use podium_features::ServedEntity;
use std::path::Path;
use std::sync::Arc;

/// A sink that passes every record on to `inner` and queues its served features for the log.
/// A full queue drops the features (counted), never the decision.
pub struct FeatureLogSink {
    inner: Arc<dyn DecisionSink>,
    log: Arc<ParquetLog<ServedRow>>,
}

impl FeatureLogSink {
    /// Logs into `dir` (files `served-….parquet`), rolled by `policy`.
    pub fn start(
        inner: Arc<dyn DecisionSink>,
        dir: &Path,
        policy: RollPolicy,
    ) -> Result<Self, OfflineError> {
        Ok(Self {
            inner,
            log: Arc::new(ParquetLog::start(dir, "served", policy)?),
        })
    }

    /// The log, for flushing and its counters.
    pub fn log(&self) -> &Arc<ParquetLog<ServedRow>> {
        &self.log
    }
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

impl DecisionSink for FeatureLogSink {
    fn submit(&self, record: DecisionRecord) {
        // The rows (hundreds per decision) are built on the writer thread from a shared copy.
        if !record.served.is_empty() {
            let (request_id, ts_ms, served) = (
                record.decision.request_id.to_string(),
                record.ts_ms as i64,
                record.served.clone(),
            );
            self.log
                .submit_with(move || served_rows(&request_id, ts_ms, &served));
        }
        self.inner.submit(record);
    }
}
