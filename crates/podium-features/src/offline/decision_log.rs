//! The decision log's Parquet layout: one row per decision, its scalar facts as typed columns
//! (for queries in pandas, pyarrow or DuckDB) and the structured parts as JSON text (the
//! validated request, the request-level features, the hydrated entities, the whole decision),
//! so that a decision can be read back whole. The columns are documented in
//! `docs/decision-log.md`.

use super::sealed::{BatchError, Sealed};
use super::{cached_schema, checked_ts, int64_col, required_i64, StrCol};
use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef, BooleanArray, Int64Array, RecordBatch, StringArray};
use arrow_schema::{ArrowError, DataType, Field, SchemaRef};
use std::sync::{Arc, OnceLock};

/// The layout version this build writes; files from a newer one are refused by name.
pub const DECISION_LOG_VERSION: i64 = 1;

/// One decision as logged.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DecisionRow {
    /// Layout version ([`DECISION_LOG_VERSION`] when written by this build).
    pub schema_version: i64,
    /// The request's id.
    pub request_id: String,
    /// When the request was admitted, ms since the UTC epoch.
    pub ts_ms: i64,
    /// Viewer id.
    pub user_id: String,
    /// Viewer country (ISO 3166-1 alpha-2).
    pub country: String,
    /// Viewer device (`tv`, `mobile`, `tablet`, `desktop`).
    pub device: String,
    /// Content id.
    pub content_id: String,
    /// Content genre.
    pub genre: String,
    /// Whether the content is live.
    pub live: bool,
    /// Line items that passed targeting and budget checks.
    pub eligible: i64,
    /// Ads placed over all breaks.
    pub ads: i64,
    /// Σ of the placed ads' prices per impression (CPM ÷ 1000), micros.
    pub revenue_micros: i64,
    /// Stage timings, µs: whole decision, then each stage.
    pub timings_us: [i64; 8],
    /// `[{"name", "version", "tier"}]`: the model versions that scored, and their tiers.
    pub model_versions: String,
    /// `["stage: reason", …]`: stages that fell back.
    pub degraded: String,
    /// `["layer:arm", …]` or `["holdout"]`.
    pub experiments: String,
    /// The validated request (JSON).
    pub request: String,
    /// Request-level feature values served to the models (JSON object).
    pub features: String,
    /// Every stored entity hydrated, with the values served and their as-of times (JSON).
    pub served: String,
    /// The whole decision: breaks, ads, prices, model versions, timings (JSON).
    pub decision: String,
}

/// Names of the timing columns, in [`DecisionRow::timings_us`] order.
pub const TIMING_COLUMNS: [&str; 8] = [
    "total_us",
    "admit_us",
    "retrieve_us",
    "hydrate_us",
    "rank_us",
    "score_us",
    "value_us",
    "pod_us",
];

const TEXT: [&str; 7] = [
    "model_versions",
    "degraded",
    "experiments",
    "request",
    "features",
    "served",
    "decision",
];

impl DecisionRow {
    fn texts(&self) -> [&str; 7] {
        [
            &self.model_versions,
            &self.degraded,
            &self.experiments,
            &self.request,
            &self.features,
            &self.served,
            &self.decision,
        ]
    }
}

impl Sealed for DecisionRow {
    fn schema() -> SchemaRef {
        static S: OnceLock<SchemaRef> = OnceLock::new();
        cached_schema(&S, || {
            let mut f = vec![
                Field::new("schema_version", DataType::Int64, false),
                Field::new("request_id", DataType::Utf8, false),
                Field::new("ts_ms", DataType::Int64, false),
                Field::new("user_id", DataType::Utf8, false),
                Field::new("country", DataType::Utf8, false),
                Field::new("device", DataType::Utf8, false),
                Field::new("content_id", DataType::Utf8, false),
                Field::new("genre", DataType::Utf8, false),
                Field::new("live", DataType::Boolean, false),
                Field::new("eligible", DataType::Int64, false),
                Field::new("ads", DataType::Int64, false),
                Field::new("revenue_micros", DataType::Int64, false),
            ];
            f.extend(
                TIMING_COLUMNS
                    .iter()
                    .map(|c| Field::new(*c, DataType::Int64, false)),
            );
            f.extend(TEXT.iter().map(|c| Field::new(*c, DataType::Utf8, false)));
            f
        })
    }

    fn to_batch(rows: &[Self]) -> Result<RecordBatch, ArrowError> {
        let text = |f: fn(&Self) -> &str| -> ArrayRef {
            Arc::new(StringArray::from_iter_values(rows.iter().map(f)))
        };
        let int = |f: fn(&Self) -> i64| -> ArrayRef {
            Arc::new(Int64Array::from_iter_values(rows.iter().map(f)))
        };
        let mut cols: Vec<ArrayRef> = vec![
            int(|r| r.schema_version),
            text(|r| &r.request_id),
            int(|r| r.ts_ms),
            text(|r| &r.user_id),
            text(|r| &r.country),
            text(|r| &r.device),
            text(|r| &r.content_id),
            text(|r| &r.genre),
            Arc::new(BooleanArray::from_iter(rows.iter().map(|r| Some(r.live)))),
            int(|r| r.eligible),
            int(|r| r.ads),
            int(|r| r.revenue_micros),
        ];
        for k in 0..TIMING_COLUMNS.len() {
            cols.push(Arc::new(Int64Array::from_iter_values(
                rows.iter().map(|r| r.timings_us[k]),
            )));
        }
        for k in 0..TEXT.len() {
            cols.push(Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.texts()[k]),
            )));
        }
        RecordBatch::try_new(Self::schema(), cols)
    }

    fn read_batch(batch: &RecordBatch, out: &mut Vec<Self>) -> Result<(), BatchError> {
        let version = int64_col(batch, "schema_version")?;
        let ts = int64_col(batch, "ts_ms")?;
        let strings = [
            "request_id",
            "user_id",
            "country",
            "device",
            "content_id",
            "genre",
        ]
        .map(|c| StrCol::of(batch, c));
        let [request_id, user_id, country, device, content_id, genre] = strings;
        let (request_id, user_id, country, device, content_id, genre) = (
            request_id?,
            user_id?,
            country?,
            device?,
            content_id?,
            genre?,
        );
        let live = batch
            .column_by_name("live")
            .ok_or_else(|| BatchError::Column("missing column `live`".into()))?;
        let live = live.as_boolean_opt().ok_or_else(|| {
            BatchError::Column(format!(
                "column `live` is {}, expected boolean",
                live.data_type()
            ))
        })?;
        let ints = ["eligible", "ads", "revenue_micros"]
            .map(|c| int64_col(batch, c))
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?;
        let timings = TIMING_COLUMNS
            .map(|c| int64_col(batch, c))
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?;
        let texts = TEXT
            .map(|c| StrCol::of(batch, c))
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?;
        out.reserve(batch.num_rows());
        for i in 0..batch.num_rows() {
            let schema_version = required_i64(version, i, "schema_version")?;
            if schema_version > DECISION_LOG_VERSION {
                return Err(BatchError::Row(
                    i,
                    format!(
                        "written by a newer Podium (decision log schema version {schema_version}; this build reads up to {DECISION_LOG_VERSION})"
                    ),
                ));
            }
            let text = |k: usize| texts[k].get(i).unwrap_or_default().to_owned();
            out.push(DecisionRow {
                schema_version,
                request_id: request_id.required(i, "request_id")?.to_owned(),
                ts_ms: checked_ts(required_i64(ts, i, "ts_ms")?, i, "ts_ms")?,
                user_id: user_id.get(i).unwrap_or_default().to_owned(),
                country: country.get(i).unwrap_or_default().to_owned(),
                device: device.get(i).unwrap_or_default().to_owned(),
                content_id: content_id.get(i).unwrap_or_default().to_owned(),
                genre: genre.get(i).unwrap_or_default().to_owned(),
                live: live.is_valid(i) && live.value(i),
                eligible: required_i64(ints[0], i, "eligible")?,
                ads: required_i64(ints[1], i, "ads")?,
                revenue_micros: required_i64(ints[2], i, "revenue_micros")?,
                timings_us: std::array::from_fn(|k| {
                    if timings[k].is_valid(i) {
                        timings[k].value(i)
                    } else {
                        0
                    }
                }),
                model_versions: text(0),
                degraded: text(1),
                experiments: text(2),
                request: text(3),
                features: text(4),
                served: text(5),
                decision: text(6),
            });
        }
        Ok(())
    }
}
