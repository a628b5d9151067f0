//! The decision log's Parquet layout: one row per decision, its scalar facts as typed columns
//! (for queries in pandas, pyarrow or DuckDB) and the structured parts as JSON text (the
//! validated request, the request-level features, the hydrated entities, the whole decision),
//! so that a decision can be read back whole. The columns are documented in
//! `docs/decision-log.md`.

use super::sealed::{BatchError, Sealed};
use super::{cached_schema, checked_ts, int64_col, required_i64, StrCol};
use arrow_array::cast::AsArray;
use arrow_array::types::{ArrowPrimitiveType, Float32Type, Float64Type, Int32Type, Int64Type};
use arrow_array::{
    Array, ArrayRef, BooleanArray, Int64Array, ListArray, PrimitiveArray, RecordBatch, StringArray,
};
use arrow_schema::{ArrowError, DataType, Field, SchemaRef};
use std::sync::{Arc, OnceLock};

/// The layout version this build writes; files from a newer one are refused by name.
pub const DECISION_LOG_VERSION: i64 = 2;

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
    /// The replay state (layout 2 on; empty in rows of layout 1).
    pub state: ReplayColumns,
}

/// The auction's state at decision time, as typed columns (layout 2): what exact replay reads.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReplayColumns {
    /// Fingerprint of the marketplace (a u64's bits).
    pub market_fingerprint: i64,
    /// `["ctr", …]`: the task of each full-scoring model, in `scores` order (JSON).
    pub score_tasks: String,
    /// Candidates fully scored: positions in the marketplace.
    pub top: Vec<i32>,
    /// Scores of `top`, model by model.
    pub scores: Vec<f32>,
    /// Pacing bid multiplier of each candidate.
    pub multipliers: Vec<f64>,
    /// Budget lease available to each candidate, micros.
    pub available: Vec<i64>,
    /// Reserve of each break, CPM micros.
    pub reserves: Vec<i64>,
    /// Frequency-cap history read, flattened (counter key bits, time ms) pairs.
    pub cap_history: Vec<i64>,
    /// Line items dropped from a pod because their lease was lost to a race.
    pub lease_lost: Vec<i32>,
    /// `[{"break_id", "lead", "propensity", "explored", "choices"}]`: exploration (JSON).
    pub exploration: String,
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

/// The replay-state columns (layout 2): a layout-1 file lacks them and reads with none.
pub const STATE_COLUMNS: [&str; 10] = [
    "market_fingerprint",
    "score_tasks",
    "top",
    "scores",
    "multipliers",
    "available",
    "reserves",
    "cap_history",
    "lease_lost",
    "exploration",
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
            let list = |name: &str, t: DataType| {
                Field::new(
                    name,
                    DataType::List(Arc::new(Field::new_list_field(t, false))),
                    false,
                )
            };
            f.extend([
                Field::new("market_fingerprint", DataType::Int64, false),
                Field::new("score_tasks", DataType::Utf8, false),
                list("top", DataType::Int32),
                list("scores", DataType::Float32),
                list("multipliers", DataType::Float64),
                list("available", DataType::Int64),
                list("reserves", DataType::Int64),
                list("cap_history", DataType::Int64),
                list("lease_lost", DataType::Int32),
                Field::new("exploration", DataType::Utf8, false),
            ]);
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
        cols.push(int(|r| r.state.market_fingerprint));
        cols.push(text(|r| &r.state.score_tasks));
        cols.push(list::<Int32Type>(rows, |r| &r.state.top));
        cols.push(list::<Float32Type>(rows, |r| &r.state.scores));
        cols.push(list::<Float64Type>(rows, |r| &r.state.multipliers));
        cols.push(list::<Int64Type>(rows, |r| &r.state.available));
        cols.push(list::<Int64Type>(rows, |r| &r.state.reserves));
        cols.push(list::<Int64Type>(rows, |r| &r.state.cap_history));
        cols.push(list::<Int32Type>(rows, |r| &r.state.lease_lost));
        cols.push(text(|r| &r.state.exploration));
        RecordBatch::try_new(Self::schema(), cols)
    }

    fn optional_columns() -> &'static [&'static str] {
        &STATE_COLUMNS
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
        // A column absent here was skipped by the reader (its schema check made sure of it).
        let texts = TEXT
            .map(|c| {
                batch
                    .column_by_name(c)
                    .map(|_| StrCol::of(batch, c))
                    .transpose()
            })
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?;
        // Layout 1 has no replay state: its rows read with an empty one.
        let stateful = batch.column_by_name("market_fingerprint").is_some();
        let state_cols = if stateful {
            Some(StateCols::of(batch)?)
        } else {
            None
        };
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
            let text = |k: usize| {
                texts[k]
                    .as_ref()
                    .and_then(|c| c.get(i))
                    .unwrap_or_default()
                    .to_owned()
            };
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
                state: state_cols.as_ref().map(|c| c.row(i)).unwrap_or_default(),
            });
        }
        Ok(())
    }
}

/// A list column of one primitive type, one list per row.
fn list<T: ArrowPrimitiveType>(
    rows: &[DecisionRow],
    f: impl Fn(&DecisionRow) -> &Vec<T::Native>,
) -> ArrayRef {
    let mut offsets = Vec::with_capacity(rows.len() + 1);
    offsets.push(0i32);
    let mut values: Vec<T::Native> = Vec::new();
    for r in rows {
        values.extend_from_slice(f(r));
        offsets.push(values.len() as i32);
    }
    let field = Arc::new(Field::new_list_field(T::DATA_TYPE, false));
    Arc::new(ListArray::new(
        field,
        arrow_buffer::OffsetBuffer::new(offsets.into()),
        Arc::new(PrimitiveArray::<T>::from_iter_values(values)),
        None,
    ))
}

/// A list column read back: offsets and the flat values.
struct ListCol<'a, T: ArrowPrimitiveType> {
    offsets: &'a [i32],
    values: &'a [T::Native],
}

impl<'a, T: ArrowPrimitiveType> ListCol<'a, T> {
    fn of(batch: &'a RecordBatch, name: &str) -> Result<Self, BatchError> {
        let col = batch
            .column_by_name(name)
            .ok_or_else(|| BatchError::Column(format!("missing column `{name}`")))?;
        let bad = || {
            BatchError::Column(format!(
                "column `{name}` is {}, expected a list of {}",
                col.data_type(),
                T::DATA_TYPE
            ))
        };
        let list = col.as_list_opt::<i32>().ok_or_else(bad)?;
        let values = list.values().as_primitive_opt::<T>().ok_or_else(bad)?;
        Ok(Self {
            offsets: list.value_offsets(),
            values: values.values(),
        })
    }

    fn row(&self, i: usize) -> Vec<T::Native> {
        let (a, b) = (self.offsets[i] as usize, self.offsets[i + 1] as usize);
        self.values.get(a..b).map(<[_]>::to_vec).unwrap_or_default()
    }
}

/// The replay-state columns of a batch of layout 2.
struct StateCols<'a> {
    market: &'a Int64Array,
    tasks: StrCol<'a>,
    top: ListCol<'a, Int32Type>,
    scores: ListCol<'a, Float32Type>,
    multipliers: ListCol<'a, Float64Type>,
    available: ListCol<'a, Int64Type>,
    reserves: ListCol<'a, Int64Type>,
    history: ListCol<'a, Int64Type>,
    lease_lost: ListCol<'a, Int32Type>,
    exploration: StrCol<'a>,
}

impl<'a> StateCols<'a> {
    fn of(batch: &'a RecordBatch) -> Result<Self, BatchError> {
        Ok(Self {
            market: int64_col(batch, "market_fingerprint")?,
            tasks: StrCol::of(batch, "score_tasks")?,
            top: ListCol::of(batch, "top")?,
            scores: ListCol::of(batch, "scores")?,
            multipliers: ListCol::of(batch, "multipliers")?,
            available: ListCol::of(batch, "available")?,
            reserves: ListCol::of(batch, "reserves")?,
            history: ListCol::of(batch, "cap_history")?,
            lease_lost: ListCol::of(batch, "lease_lost")?,
            exploration: StrCol::of(batch, "exploration")?,
        })
    }

    fn row(&self, i: usize) -> ReplayColumns {
        ReplayColumns {
            market_fingerprint: if self.market.is_valid(i) {
                self.market.value(i)
            } else {
                0
            },
            score_tasks: self.tasks.get(i).unwrap_or_default().to_owned(),
            top: self.top.row(i),
            scores: self.scores.row(i),
            multipliers: self.multipliers.row(i),
            available: self.available.row(i),
            reserves: self.reserves.row(i),
            cap_history: self.history.row(i),
            lease_lost: self.lease_lost.row(i),
            exploration: self.exploration.get(i).unwrap_or_default().to_owned(),
        }
    }
}
