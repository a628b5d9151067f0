//! Offline feature data, as Chronon does it: the event log and the served-feature log as Parquet,
//! point-in-time backfill of the aggregated features from an event log, and the online/offline
//! consistency report that joins what was served with what the backfill says it should have been.
//!
//! The backfill folds events with the streaming code itself ([`Aggregator`] and its tiles), so the
//! window arithmetic exists once. This module does not serve, does not read the online store and
//! does not run a log-writing task: the serving side owns an [`EventLogWriter`] and a
//! [`ServedLogWriter`] in its own task and feeds them; everything here reads what they wrote.
//!
//! Both logs are directories of Parquet files whose name order is their write order, so the event
//! log read back is in the order the stream consumed it (its arrival order). The backfill does not
//! need that (it sorts by event time); the consistency report does, to tell an event that had not
//! yet arrived when the served value was computed from a real inconsistency.

mod decision_log;
pub use decision_log::{
    DecisionRow, ReplayColumns, DECISION_LOG_VERSION, STATE_COLUMNS, TIMING_COLUMNS,
};

use crate::definitions::{Definitions, Entity, EventType, FeatureKind};
use crate::stream::{Aggregator, Event, Rejection};
use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Float64Type, Int64Type};
use arrow_array::{
    Array, ArrayRef, Float32Array, Float64Array, Int64Array, LargeStringArray, PrimitiveArray,
    RecordBatch, StringArray, StringViewArray,
};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::{ArrowWriter, ProjectionMask};
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Rows handed to the Parquet writer at a time (one Arrow batch), and read back per batch.
const BATCH_ROWS: usize = 8192;

/// An offline file that could not be read or written; names the file and what was wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    /// The file or directory could not be opened, listed, written or renamed.
    #[error("{}: cannot {action}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done (read, write, list, rename).
        action: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not Parquet, or is damaged.
    #[error("{}: not a readable Parquet file: {message}", path.display())]
    Parquet {
        /// The file.
        path: PathBuf,
        /// The reader's message.
        message: String,
    },
    /// The file lacks a column, or a column has the wrong type.
    #[error("{}: {message}", path.display())]
    Schema {
        /// The file.
        path: PathBuf,
        /// Which column and what was expected of it.
        message: String,
    },
    /// A row holds a value that is not allowed (null id, unknown event type, timestamp in
    /// seconds, …).
    #[error("{}: row {row}: {message}", path.display())]
    Row {
        /// The file.
        path: PathBuf,
        /// Row number in the file, from 0.
        row: usize,
        /// What is wrong with it.
        message: String,
    },
    /// A directory holds no `*.parquet` file.
    #[error("{}: no *.parquet files in this directory", path.display())]
    EmptyDirectory {
        /// The directory.
        path: PathBuf,
    },
}

fn io_err<'a>(
    path: &'a Path,
    action: &'static str,
) -> impl FnOnce(std::io::Error) -> OfflineError + 'a {
    move |source| OfflineError::Io {
        path: path.to_owned(),
        action,
        source,
    }
}

fn parquet_err(path: &Path) -> impl FnOnce(parquet::errors::ParquetError) -> OfflineError + '_ {
    move |e| OfflineError::Parquet {
        path: path.to_owned(),
        message: e.to_string(),
    }
}

fn write_err(path: &Path) -> impl FnOnce(String) -> OfflineError + '_ {
    move |message| OfflineError::Io {
        path: path.to_owned(),
        action: "write",
        source: std::io::Error::other(message),
    }
}

mod sealed {
    use arrow_array::RecordBatch;
    use arrow_schema::{ArrowError, SchemaRef};

    /// What went wrong in one batch, before the file and row offset are known.
    pub enum BatchError {
        Column(String),
        Row(usize, String),
    }

    /// The Arrow conversions of a [`super::LogRecord`]; sealed so the file layouts stay ours.
    pub trait Sealed: Sized {
        fn schema() -> SchemaRef;
        fn to_batch(rows: &[Self]) -> Result<RecordBatch, ArrowError>;
        fn read_batch(batch: &RecordBatch, out: &mut Vec<Self>) -> Result<(), BatchError>;
        /// Columns an older layout of the file may lack (they read as empty).
        fn optional_columns() -> &'static [&'static str] {
            &[]
        }
    }
}
use sealed::{BatchError, Sealed};

/// A row type with a Parquet layout of its own: [`Event`] (the event log), [`ServedRow`] (the
/// served-feature log), [`QueryPoint`] (backfill queries), [`BackfillRow`] (backfill output) and
/// [`DecisionRow`] (the decision log).
pub trait LogRecord: Sealed {
    /// The Arrow schema the rows are written with (and the columns a reader requires).
    fn arrow_schema() -> SchemaRef {
        <Self as Sealed>::schema()
    }
}

impl<T: Sealed> LogRecord for T {}

// ---------------------------------------------------------------------------------------------
// Columns: writing is exact; reading accepts what other Parquet writers commonly produce for the
// same logical type (large and view strings from polars/pyarrow, float32 for float64), so that a
// log rewritten by a data scientist's tool still reads.

fn string_compatible(dt: &DataType) -> bool {
    matches!(
        dt,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
    )
}

fn compatible(expected: &DataType, found: &DataType) -> bool {
    match expected {
        DataType::Utf8 => string_compatible(found),
        DataType::Float64 | DataType::Float32 => {
            matches!(found, DataType::Float64 | DataType::Float32)
        }
        other => other == found,
    }
}

fn type_name(dt: &DataType) -> &'static str {
    match dt {
        DataType::Utf8 => "utf8",
        DataType::Int64 => "int64",
        DataType::Float64 => "float64",
        DataType::Float32 => "float32",
        _ => "other",
    }
}

/// Checks a file's schema against the expected one; returns the file's indices of the expected
/// columns (extra columns are allowed and not read).
fn check_schema(expected: &Schema, found: &Schema) -> Result<Vec<usize>, String> {
    let mut indices = Vec::with_capacity(expected.fields().len());
    for want in expected.fields() {
        let Some((i, got)) = found.column_with_name(want.name()) else {
            let names: Vec<&str> = found.fields().iter().map(|f| f.name().as_str()).collect();
            return Err(format!(
                "missing column `{}` ({}); the file has: {}",
                want.name(),
                type_name(want.data_type()),
                if names.is_empty() {
                    "no columns".to_owned()
                } else {
                    names.join(", ")
                }
            ));
        };
        if !compatible(want.data_type(), got.data_type()) {
            return Err(format!(
                "column `{}` is {}, expected {}",
                want.name(),
                got.data_type(),
                type_name(want.data_type())
            ));
        }
        indices.push(i);
    }
    Ok(indices)
}

fn column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a ArrayRef, BatchError> {
    batch
        .column_by_name(name)
        .ok_or_else(|| BatchError::Column(format!("missing column `{name}`")))
}

/// A string column of any of Arrow's string layouts.
enum StrCol<'a> {
    Utf8(&'a StringArray),
    Large(&'a LargeStringArray),
    View(&'a StringViewArray),
}

impl<'a> StrCol<'a> {
    fn of(batch: &'a RecordBatch, name: &str) -> Result<Self, BatchError> {
        let a = column(batch, name)?;
        if let Some(a) = a.as_string_opt::<i32>() {
            Ok(Self::Utf8(a))
        } else if let Some(a) = a.as_string_opt::<i64>() {
            Ok(Self::Large(a))
        } else if let Some(a) = a.as_string_view_opt() {
            Ok(Self::View(a))
        } else {
            Err(BatchError::Column(format!(
                "column `{name}` is {}, expected utf8",
                a.data_type()
            )))
        }
    }

    fn get(&self, i: usize) -> Option<&'a str> {
        match self {
            Self::Utf8(a) => a.is_valid(i).then(|| a.value(i)),
            Self::Large(a) => a.is_valid(i).then(|| a.value(i)),
            Self::View(a) => a.is_valid(i).then(|| a.value(i)),
        }
    }

    /// A value that must be present and non-empty.
    fn required(&self, i: usize, name: &str) -> Result<&'a str, BatchError> {
        self.get(i)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| BatchError::Row(i, format!("`{name}` is null or empty")))
    }
}

fn int64_col<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a Int64Array, BatchError> {
    let a = column(batch, name)?;
    a.as_primitive_opt::<Int64Type>().ok_or_else(|| {
        BatchError::Column(format!(
            "column `{name}` is {}, expected int64",
            a.data_type()
        ))
    })
}

/// A float column, float64 or float32.
enum FloatCol<'a> {
    F64(&'a PrimitiveArray<Float64Type>),
    F32(&'a PrimitiveArray<Float32Type>),
}

impl<'a> FloatCol<'a> {
    fn of(batch: &'a RecordBatch, name: &str) -> Result<Self, BatchError> {
        let a = column(batch, name)?;
        if let Some(a) = a.as_primitive_opt::<Float64Type>() {
            Ok(Self::F64(a))
        } else if let Some(a) = a.as_primitive_opt::<Float32Type>() {
            Ok(Self::F32(a))
        } else {
            Err(BatchError::Column(format!(
                "column `{name}` is {}, expected a float",
                a.data_type()
            )))
        }
    }

    fn get(&self, i: usize) -> Option<f64> {
        match self {
            Self::F64(a) => a.is_valid(i).then(|| a.value(i)),
            Self::F32(a) => a.is_valid(i).then(|| f64::from(a.value(i))),
        }
    }
}

fn opt_i64(a: &Int64Array, i: usize) -> Option<i64> {
    a.is_valid(i).then(|| a.value(i))
}

fn required_i64(a: &Int64Array, i: usize, name: &str) -> Result<i64, BatchError> {
    opt_i64(a, i).ok_or_else(|| BatchError::Row(i, format!("`{name}` is null")))
}

/// A time column's value, checked like an event time: window arithmetic on an absurd time would
/// overflow, and a time in seconds or µs is a unit mistake worth naming.
fn checked_ts(v: i64, i: usize, name: &str) -> Result<i64, BatchError> {
    if TS_RANGE.contains(&v) {
        Ok(v)
    } else {
        Err(BatchError::Row(
            i,
            format!("`{name}` {v} is not milliseconds between 2000 and 2200 (seconds or µs?)"),
        ))
    }
}

fn parse_entity(s: &str) -> Option<Entity> {
    Entity::ALL.into_iter().find(|e| e.as_str() == s)
}

fn required_entity(col: &StrCol<'_>, i: usize) -> Result<Entity, BatchError> {
    let s = col.required(i, "entity")?;
    parse_entity(s).ok_or_else(|| {
        BatchError::Row(
            i,
            format!("unknown entity `{s}` (known: user, device, line_item, advertiser, content)"),
        )
    })
}

fn event_type_name(t: EventType) -> &'static str {
    match t {
        EventType::Impression => "impression",
        EventType::Click => "click",
        EventType::Completion => "completion",
        EventType::Play => "play",
        EventType::Start => "start",
        EventType::FirstQuartile => "first_quartile",
        EventType::Midpoint => "midpoint",
        EventType::ThirdQuartile => "third_quartile",
        EventType::Error => "error",
    }
}

/// The event-time range `Event::from_json` accepts; outside it is a unit mistake (s, µs).
const TS_RANGE: std::ops::Range<i64> = 946_684_800_000..7_258_118_400_000;

fn id_column(e: Entity) -> &'static str {
    match e {
        Entity::User => "user_id",
        Entity::Device => "device_id",
        Entity::LineItem => "line_item_id",
        Entity::Advertiser => "advertiser_id",
        Entity::Content => "content_id",
    }
}

fn cached_schema(cell: &'static OnceLock<SchemaRef>, fields: fn() -> Vec<Field>) -> SchemaRef {
    cell.get_or_init(|| Arc::new(Schema::new(fields()))).clone()
}

// ---------------------------------------------------------------------------------------------
// The event log.

impl Sealed for Event {
    fn schema() -> SchemaRef {
        static S: OnceLock<SchemaRef> = OnceLock::new();
        cached_schema(&S, || {
            let mut f = vec![
                Field::new("id", DataType::Utf8, false),
                Field::new("type", DataType::Utf8, false),
                Field::new("ts_ms", DataType::Int64, false),
            ];
            f.extend(
                Entity::ALL
                    .iter()
                    .map(|e| Field::new(id_column(*e), DataType::Utf8, true)),
            );
            f.push(Field::new("value", DataType::Float64, true));
            f
        })
    }

    fn to_batch(rows: &[Self]) -> Result<RecordBatch, ArrowError> {
        let mut cols: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(rows.iter().map(|e| &e.id))),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|e| event_type_name(e.kind)),
            )),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|e| e.ts_ms))),
        ];
        for (i, _) in Entity::ALL.iter().enumerate() {
            cols.push(Arc::new(StringArray::from_iter(
                rows.iter().map(|e| e.ids[i].as_deref()),
            )));
        }
        cols.push(Arc::new(Float64Array::from_iter(
            rows.iter().map(|e| e.value),
        )));
        RecordBatch::try_new(Self::schema(), cols)
    }

    fn read_batch(batch: &RecordBatch, out: &mut Vec<Self>) -> Result<(), BatchError> {
        let id = StrCol::of(batch, "id")?;
        let kind = StrCol::of(batch, "type")?;
        let ts = int64_col(batch, "ts_ms")?;
        let ids = [
            StrCol::of(batch, "user_id")?,
            StrCol::of(batch, "device_id")?,
            StrCol::of(batch, "line_item_id")?,
            StrCol::of(batch, "advertiser_id")?,
            StrCol::of(batch, "content_id")?,
        ];
        let value = FloatCol::of(batch, "value")?;
        out.reserve(batch.num_rows());
        for i in 0..batch.num_rows() {
            let type_name = kind.required(i, "type")?;
            let kind = EventType::parse(type_name).ok_or_else(|| {
                BatchError::Row(
                    i,
                    format!(
                        "unknown event type `{type_name}` (known: impression, click, completion, play)"
                    ),
                )
            })?;
            let ts_ms = checked_ts(required_i64(ts, i, "ts_ms")?, i, "ts_ms")?;
            out.push(Event {
                id: id.required(i, "id")?.to_owned(),
                kind,
                ts_ms,
                ids: std::array::from_fn(|k| ids[k].get(i).map(str::to_owned)),
                // As on the stream: a non-finite value is no value.
                value: value.get(i).filter(|v| v.is_finite()),
            });
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The served-feature log.

/// One feature value served to one request, as logged by the serving side (long format: one row
/// per feature).
#[derive(Clone, Debug, PartialEq)]
pub struct ServedRow {
    /// The request it was served to.
    pub request_id: String,
    /// When it was served, ms since the UTC epoch (the time a backfill is asked about).
    pub ts_ms: i64,
    /// The entity the feature is keyed by.
    pub entity: Entity,
    /// The entity's id.
    pub entity_id: String,
    /// The feature's name.
    pub feature: String,
    /// The value served.
    pub value: f32,
    /// The `as_of_ms` of the stored vector the value came from; `None` when the default was
    /// served (entity not in the store, stale, or the store unavailable).
    pub as_of_ms: Option<i64>,
}

impl Sealed for ServedRow {
    fn schema() -> SchemaRef {
        static S: OnceLock<SchemaRef> = OnceLock::new();
        cached_schema(&S, || {
            vec![
                Field::new("request_id", DataType::Utf8, false),
                Field::new("ts_ms", DataType::Int64, false),
                Field::new("entity", DataType::Utf8, false),
                Field::new("entity_id", DataType::Utf8, false),
                Field::new("feature", DataType::Utf8, false),
                Field::new("value", DataType::Float32, false),
                Field::new("as_of_ms", DataType::Int64, true),
            ]
        })
    }

    fn to_batch(rows: &[Self]) -> Result<RecordBatch, ArrowError> {
        let cols: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| &r.request_id),
            )),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.ts_ms))),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.entity.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| &r.entity_id),
            )),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| &r.feature),
            )),
            Arc::new(Float32Array::from_iter_values(rows.iter().map(|r| r.value))),
            Arc::new(Int64Array::from_iter(rows.iter().map(|r| r.as_of_ms))),
        ];
        RecordBatch::try_new(Self::schema(), cols)
    }

    fn read_batch(batch: &RecordBatch, out: &mut Vec<Self>) -> Result<(), BatchError> {
        let request_id = StrCol::of(batch, "request_id")?;
        let ts = int64_col(batch, "ts_ms")?;
        let entity = StrCol::of(batch, "entity")?;
        let entity_id = StrCol::of(batch, "entity_id")?;
        let feature = StrCol::of(batch, "feature")?;
        let value = FloatCol::of(batch, "value")?;
        let as_of = int64_col(batch, "as_of_ms")?;
        out.reserve(batch.num_rows());
        for i in 0..batch.num_rows() {
            out.push(ServedRow {
                request_id: request_id.required(i, "request_id")?.to_owned(),
                ts_ms: checked_ts(required_i64(ts, i, "ts_ms")?, i, "ts_ms")?,
                entity: required_entity(&entity, i)?,
                entity_id: entity_id.required(i, "entity_id")?.to_owned(),
                feature: feature.required(i, "feature")?.to_owned(),
                value: value
                    .get(i)
                    .ok_or_else(|| BatchError::Row(i, "`value` is null".into()))?
                    as f32,
                as_of_ms: opt_i64(as_of, i)
                    .map(|t| checked_ts(t, i, "as_of_ms"))
                    .transpose()?,
            });
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Backfill queries and output.

/// A point-in-time question: the features of this entity as of `ts_ms`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct QueryPoint {
    /// The entity.
    pub entity: Entity,
    /// Its id.
    pub entity_id: String,
    /// The time, ms since the UTC epoch (files hold times between 2000 and 2200 only).
    pub ts_ms: i64,
}

impl Sealed for QueryPoint {
    fn schema() -> SchemaRef {
        static S: OnceLock<SchemaRef> = OnceLock::new();
        cached_schema(&S, || {
            vec![
                Field::new("entity", DataType::Utf8, false),
                Field::new("entity_id", DataType::Utf8, false),
                Field::new("ts_ms", DataType::Int64, false),
            ]
        })
    }

    fn to_batch(rows: &[Self]) -> Result<RecordBatch, ArrowError> {
        let cols: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.entity.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| &r.entity_id),
            )),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.ts_ms))),
        ];
        RecordBatch::try_new(Self::schema(), cols)
    }

    fn read_batch(batch: &RecordBatch, out: &mut Vec<Self>) -> Result<(), BatchError> {
        let entity = StrCol::of(batch, "entity")?;
        let entity_id = StrCol::of(batch, "entity_id")?;
        let ts = int64_col(batch, "ts_ms")?;
        for i in 0..batch.num_rows() {
            out.push(QueryPoint {
                entity: required_entity(&entity, i)?,
                entity_id: entity_id.required(i, "entity_id")?.to_owned(),
                ts_ms: checked_ts(required_i64(ts, i, "ts_ms")?, i, "ts_ms")?,
            });
        }
        Ok(())
    }
}

/// One backfilled value (long format): feature `feature` of the entity as of `ts_ms`.
#[derive(Clone, Debug, PartialEq)]
pub struct BackfillRow {
    /// The entity.
    pub entity: Entity,
    /// Its id.
    pub entity_id: String,
    /// The query time.
    pub ts_ms: i64,
    /// The feature's name.
    pub feature: String,
    /// Its point-in-time value (the default when nothing is known or it is stale).
    pub value: f32,
}

impl Sealed for BackfillRow {
    fn schema() -> SchemaRef {
        static S: OnceLock<SchemaRef> = OnceLock::new();
        cached_schema(&S, || {
            vec![
                Field::new("entity", DataType::Utf8, false),
                Field::new("entity_id", DataType::Utf8, false),
                Field::new("ts_ms", DataType::Int64, false),
                Field::new("feature", DataType::Utf8, false),
                Field::new("value", DataType::Float32, false),
            ]
        })
    }

    fn to_batch(rows: &[Self]) -> Result<RecordBatch, ArrowError> {
        let cols: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.entity.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| &r.entity_id),
            )),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.ts_ms))),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| &r.feature),
            )),
            Arc::new(Float32Array::from_iter_values(rows.iter().map(|r| r.value))),
        ];
        RecordBatch::try_new(Self::schema(), cols)
    }

    fn read_batch(batch: &RecordBatch, out: &mut Vec<Self>) -> Result<(), BatchError> {
        let entity = StrCol::of(batch, "entity")?;
        let entity_id = StrCol::of(batch, "entity_id")?;
        let ts = int64_col(batch, "ts_ms")?;
        let feature = StrCol::of(batch, "feature")?;
        let value = FloatCol::of(batch, "value")?;
        for i in 0..batch.num_rows() {
            out.push(BackfillRow {
                entity: required_entity(&entity, i)?,
                entity_id: entity_id.required(i, "entity_id")?.to_owned(),
                ts_ms: checked_ts(required_i64(ts, i, "ts_ms")?, i, "ts_ms")?,
                feature: feature.required(i, "feature")?.to_owned(),
                value: value
                    .get(i)
                    .ok_or_else(|| BatchError::Row(i, "`value` is null".into()))?
                    as f32,
            });
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Reading and writing files.

fn writer_properties() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build()
}

/// `x.parquet` is written as `x.parquet.tmp` and renamed when complete, so that a reader listing
/// `*.parquet` never opens half a file.
fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

/// A Parquet file being written under its temporary name.
struct OpenFile {
    tmp: PathBuf,
    path: PathBuf,
    writer: ArrowWriter<File>,
    rows: usize,
    opened: Instant,
}

impl OpenFile {
    fn create<R: LogRecord>(path: PathBuf) -> Result<Self, OfflineError> {
        let tmp = tmp_path(&path);
        let file = File::create(&tmp).map_err(io_err(&tmp, "create"))?;
        let writer = ArrowWriter::try_new(file, R::schema(), Some(writer_properties()))
            .map_err(|e| write_err(&tmp)(e.to_string()))?;
        Ok(Self {
            tmp,
            path,
            writer,
            rows: 0,
            opened: Instant::now(),
        })
    }

    fn write<R: LogRecord>(&mut self, rows: &[R]) -> Result<(), OfflineError> {
        for chunk in rows.chunks(BATCH_ROWS) {
            let batch = R::to_batch(chunk).map_err(|e| write_err(&self.tmp)(e.to_string()))?;
            self.writer
                .write(&batch)
                .map_err(|e| write_err(&self.tmp)(e.to_string()))?;
            self.rows += chunk.len();
        }
        Ok(())
    }

    /// Writes the footer, syncs, and renames the file to its final name.
    fn publish(self) -> Result<PathBuf, OfflineError> {
        let file = self
            .writer
            .into_inner()
            .map_err(|e| write_err(&self.tmp)(e.to_string()))?;
        file.sync_all().map_err(io_err(&self.tmp, "sync"))?;
        drop(file);
        std::fs::rename(&self.tmp, &self.path).map_err(io_err(&self.path, "rename into"))?;
        Ok(self.path)
    }
}

/// Writes `rows` to one Parquet file at `path` (through a temporary name).
pub fn write_records<R: LogRecord>(path: &Path, rows: &[R]) -> Result<(), OfflineError> {
    let mut f = OpenFile::create::<R>(path.to_owned())?;
    f.write(rows)?;
    f.publish().map(drop)
}

/// The `*.parquet` files of a directory in name order, or the file itself.
fn files_of(path: &Path) -> Result<Vec<PathBuf>, OfflineError> {
    let meta = std::fs::metadata(path).map_err(io_err(path, "read"))?;
    if !meta.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).map_err(io_err(path, "list"))? {
        let p = entry.map_err(io_err(path, "list"))?.path();
        // `.parquet.tmp` files are still being written; they are not part of the log yet.
        if p.extension().is_some_and(|e| e == "parquet") && p.is_file() {
            files.push(p);
        }
    }
    if files.is_empty() {
        return Err(OfflineError::EmptyDirectory {
            path: path.to_owned(),
        });
    }
    files.sort();
    Ok(files)
}

/// Reads one Parquet file into `out`. A file damaged so that the Parquet or Arrow decoder
/// panics (some corruptions of the embedded Arrow schema do, found by fuzzing) is an error
/// naming the file, like any other malformed file, not the end of the process.
fn read_file<R: LogRecord>(
    path: &Path,
    out: &mut Vec<R>,
    skip: &[&str],
) -> Result<(), OfflineError> {
    let kept = out.len();
    let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        read_file_unguarded(path, out, skip)
    }));
    read.unwrap_or_else(|panic| {
        out.truncate(kept);
        let why = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("the decoder failed");
        Err(OfflineError::Parquet {
            path: path.to_owned(),
            message: format!("malformed file: {why}"),
        })
    })
}

fn read_file_unguarded<R: LogRecord>(
    path: &Path,
    out: &mut Vec<R>,
    skip: &[&str],
) -> Result<(), OfflineError> {
    let file = File::open(path).map_err(io_err(path, "read"))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(parquet_err(path))?;
    // The columns read: all but those skipped, and those of a newer layout an older file lacks.
    let found = builder.schema().clone();
    let expected = Schema::new(
        R::schema()
            .fields()
            .iter()
            .filter(|f| {
                let name = f.name().as_str();
                let absent_optional =
                    R::optional_columns().contains(&name) && found.column_with_name(name).is_none();
                !(skip.contains(&name) || absent_optional)
            })
            .cloned()
            .collect::<Vec<_>>(),
    );
    let indices =
        check_schema(&expected, builder.schema()).map_err(|message| OfflineError::Schema {
            path: path.to_owned(),
            message,
        })?;
    let mask = ProjectionMask::roots(builder.parquet_schema(), indices);
    let reader = builder
        .with_projection(mask)
        .with_batch_size(BATCH_ROWS)
        .build()
        .map_err(parquet_err(path))?;
    let mut offset = 0;
    for batch in reader {
        let batch = batch.map_err(|e| OfflineError::Parquet {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        R::read_batch(&batch, out).map_err(|e| match e {
            BatchError::Column(message) => OfflineError::Schema {
                path: path.to_owned(),
                message,
            },
            BatchError::Row(i, message) => OfflineError::Row {
                path: path.to_owned(),
                row: offset + i,
                message,
            },
        })?;
        offset += batch.num_rows();
    }
    Ok(())
}

/// Reads a Parquet file, or every `*.parquet` file of a directory in name order (a rolling log's
/// write order), checking the schema and every row.
pub fn read_records<R: LogRecord>(path: &Path) -> Result<Vec<R>, OfflineError> {
    let mut out = Vec::new();
    for f in files_of(path)? {
        read_file(&f, &mut out, &[])?;
    }
    Ok(out)
}

/// As [`read_records`] for the decision log, without decoding the columns named in `skip`
/// (they read as empty): a replay that does not rebuild frames needs neither `served` nor
/// `features`.
pub fn read_decision_rows(path: &Path, skip: &[&str]) -> Result<Vec<DecisionRow>, OfflineError> {
    let mut out = Vec::new();
    for f in files_of(path)? {
        read_file(&f, &mut out, skip)?;
    }
    Ok(out)
}

/// Writes events to one Parquet file in the event-log layout.
pub fn write_events(path: &Path, events: &[Event]) -> Result<(), OfflineError> {
    write_records(path, events)
}

/// Reads an event log (a file, or a directory of `*.parquet` in name order), in log order.
pub fn read_events(path: &Path) -> Result<Vec<Event>, OfflineError> {
    read_records(path)
}

/// Reads a served-feature log (a file, or a directory of `*.parquet` in name order).
pub fn read_served(path: &Path) -> Result<Vec<ServedRow>, OfflineError> {
    read_records(path)
}

// ---------------------------------------------------------------------------------------------
// Rolling writer.

/// When a [`RollingWriter`] closes its file and starts the next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RollPolicy {
    /// At most this many rows per file.
    pub max_rows: usize,
    /// A file is closed once it has been open this long (checked on each write and by
    /// [`RollingWriter::roll_if_due`]), so a quiet log still becomes readable.
    pub max_age: Duration,
}

impl Default for RollPolicy {
    fn default() -> Self {
        Self {
            max_rows: 1_000_000,
            max_age: Duration::from_secs(300),
        }
    }
}

/// Appends rows to a directory of Parquet files, starting a new file every `max_rows` rows or
/// `max_age`. Files are named `<prefix>-<ms>-<seq>.parquet` (open time in ms since the epoch, 13
/// digits, never decreasing; a 6-digit sequence number), so that name order is write order, and
/// are written as `*.parquet.tmp` and renamed when complete. One writer per directory and prefix;
/// owned by one task (no locks). Dropping it closes the current file; [`RollingWriter::finish`]
/// does the same and reports errors.
pub struct RollingWriter<R: LogRecord> {
    dir: PathBuf,
    prefix: String,
    policy: RollPolicy,
    pending: Vec<R>,
    current: Option<OpenFile>,
    last_ms: i64,
    seq: u64,
}

/// The rolling writer of the event log (the events the stream consumed, in consumption order).
pub type EventLogWriter = RollingWriter<Event>;

/// The rolling writer of the served-feature log.
pub type ServedLogWriter = RollingWriter<ServedRow>;

impl<R: LogRecord> RollingWriter<R> {
    /// A writer into `dir` (created if missing) naming its files `<prefix>-….parquet`.
    pub fn create(dir: &Path, prefix: &str, policy: RollPolicy) -> Result<Self, OfflineError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir, "create"))?;
        Ok(Self {
            dir: dir.to_owned(),
            prefix: prefix.to_owned(),
            policy: RollPolicy {
                max_rows: policy.max_rows.max(1),
                ..policy
            },
            pending: Vec::new(),
            current: None,
            last_ms: 0,
            seq: 0,
        })
    }

    /// Appends one row.
    pub fn push(&mut self, row: R) -> Result<(), OfflineError> {
        self.pending.push(row);
        self.after_append()
    }

    /// Appends rows.
    pub fn extend(&mut self, rows: impl IntoIterator<Item = R>) -> Result<(), OfflineError> {
        for row in rows {
            self.pending.push(row);
            if self.pending.len() >= BATCH_ROWS {
                self.after_append()?;
            }
        }
        self.after_append()
    }

    fn rows_in_file(&self) -> usize {
        self.current.as_ref().map_or(0, |f| f.rows) + self.pending.len()
    }

    fn after_append(&mut self) -> Result<(), OfflineError> {
        // Full files are cut at exactly max_rows.
        while self.rows_in_file() >= self.policy.max_rows {
            let room = self.policy.max_rows - self.current.as_ref().map_or(0, |f| f.rows);
            let rest = self.pending.split_off(room);
            self.roll()?;
            self.pending = rest;
        }
        if self.pending.len() >= BATCH_ROWS {
            self.write_pending()?;
        }
        self.roll_if_due().map(drop)
    }

    fn write_pending(&mut self) -> Result<(), OfflineError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        if self.current.is_none() {
            let ms = crate::store::now_ms().max(self.last_ms);
            if ms > self.last_ms {
                self.seq = 0;
            }
            self.last_ms = ms;
            let name = format!("{}-{ms:013}-{:06}.parquet", self.prefix, self.seq);
            self.seq += 1;
            self.current = Some(OpenFile::create::<R>(self.dir.join(name))?);
        }
        let f = self.current.as_mut().expect("opened above");
        f.write(&self.pending)?;
        self.pending.clear();
        Ok(())
    }

    /// Closes the current file if it has been open longer than the policy's `max_age`; returns
    /// the path of the file closed. Call it periodically when rows may stop coming.
    pub fn roll_if_due(&mut self) -> Result<Option<PathBuf>, OfflineError> {
        let opened = match &self.current {
            Some(f) => f.opened,
            None if !self.pending.is_empty() => {
                // The file opens on the first batch; count its age from there.
                self.write_pending()?;
                return Ok(None);
            }
            None => return Ok(None),
        };
        if opened.elapsed() >= self.policy.max_age {
            self.roll()
        } else {
            Ok(None)
        }
    }

    /// Closes the current file now (writing what is buffered); the next row opens a new one.
    pub fn roll(&mut self) -> Result<Option<PathBuf>, OfflineError> {
        self.write_pending()?;
        match self.current.take() {
            Some(f) => f.publish().map(Some),
            None => Ok(None),
        }
    }

    /// Closes the current file and returns.
    pub fn finish(mut self) -> Result<(), OfflineError> {
        self.roll().map(drop)
    }
}

impl<R: LogRecord> Drop for RollingWriter<R> {
    fn drop(&mut self) {
        if let Err(e) = self.roll() {
            tracing::warn!(error = %e, "closing a log file failed");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Backfill.

/// The point-in-time values of one query point's entity.
#[derive(Clone, Debug, PartialEq)]
pub struct PointInTime {
    /// Whether any event for the entity was folded at or before the query time.
    pub known: bool,
    /// The entity's features in definitions order; `None` for a stored feature, which has no
    /// offline source (it is written by some other job).
    pub values: Vec<Option<f32>>,
}

/// What a backfill did with the events it was given.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BackfillStats {
    /// Events given.
    pub events: u64,
    /// Events folded (including those of a type no feature reads).
    pub applied: u64,
    /// Dropped: an event with the same id was folded already.
    pub duplicates: u64,
    /// Rejected: no entity key any feature of its type is keyed by.
    pub missing_entity: u64,
}

/// Point-in-time values for each query, in query order.
#[derive(Clone, Debug, PartialEq)]
pub struct Backfill {
    /// One per query.
    pub points: Vec<PointInTime>,
    /// What happened to the events.
    pub stats: BackfillStats,
}

/// Computes the features of each query point as of its time from `events` (any order): every
/// event with `ts_ms <= q.ts_ms` is folded, exactly as the stream folds it, and the entity's
/// vector is read at `q.ts_ms`. One pass: events and queries are sorted by time and one
/// aggregator is advanced through both, so the cost is O(events + queries · window tiles).
pub fn backfill(defs: &Definitions, events: &[Event], queries: &[QueryPoint]) -> Backfill {
    let keys: Vec<(Entity, &str, i64)> = queries
        .iter()
        .map(|q| (q.entity, q.entity_id.as_str(), q.ts_ms))
        .collect();
    sweep(&Arc::new(defs.clone()), events, &keys)
}

fn sweep(defs: &Arc<Definitions>, events: &[Event], queries: &[(Entity, &str, i64)]) -> Backfill {
    let stored: HashMap<Entity, Vec<bool>> = Entity::ALL
        .into_iter()
        .map(|e| {
            (
                e,
                defs.of(e).map(|f| f.kind == FeatureKind::Stored).collect(),
            )
        })
        .collect();
    // Stable sorts: events of equal time keep their log (arrival) order, which decides `last`
    // among ties exactly as on the stream.
    let mut order: Vec<u32> = (0..events.len() as u32).collect();
    order.sort_by_key(|&i| events[i as usize].ts_ms);
    let mut qorder: Vec<u32> = (0..queries.len() as u32).collect();
    qorder.sort_by_key(|&i| queries[i as usize].2);
    // In time order no event is ever behind the clock, so a lateness of zero rejects nothing,
    // and ids are still remembered for the whole hour of event time a duplicate falls in (the
    // gate's bucket), as on the stream; a longer lateness would only keep more ids in memory.
    let mut agg = Aggregator::new(defs.clone(), Duration::ZERO);
    let mut stats = BackfillStats {
        events: events.len() as u64,
        ..BackfillStats::default()
    };
    let mut points = vec![
        PointInTime {
            known: false,
            values: Vec::new(),
        };
        queries.len()
    ];
    let mut next = 0;
    for &qi in &qorder {
        let (entity, id, t) = queries[qi as usize];
        while let Some(&ei) = order.get(next) {
            let e = &events[ei as usize];
            if e.ts_ms > t {
                break;
            }
            match agg.apply(e) {
                Ok(()) => stats.applied += 1,
                Err(Rejection::Duplicate) => stats.duplicates += 1,
                Err(Rejection::MissingEntity) => stats.missing_entity += 1,
                Err(_) => {}
            }
            next += 1;
        }
        let values = agg
            .vector(entity, id, t)
            .into_iter()
            .zip(&stored[&entity])
            .map(|(v, &s)| (!s).then_some(v))
            .collect();
        points[qi as usize] = PointInTime {
            known: agg.knows(entity, id),
            values,
        };
    }
    // Events after the last query are not needed for any answer, but are counted so the stats
    // describe the whole log.
    for &ei in &order[next..] {
        match agg.apply(&events[ei as usize]) {
            Ok(()) => stats.applied += 1,
            Err(Rejection::Duplicate) => stats.duplicates += 1,
            Err(Rejection::MissingEntity) => stats.missing_entity += 1,
            Err(_) => {}
        }
    }
    Backfill { points, stats }
}

// ---------------------------------------------------------------------------------------------
// Consistency.

/// Options of [`consistency_with`].
#[derive(Clone, Debug, PartialEq)]
pub struct ConsistencyOptions {
    /// The lateness the online aggregator ran with: replaying the event log in arrival order
    /// with it reproduces what the stream had folded at each flush.
    pub lateness: Duration,
    /// Unexplained mismatches listed per feature.
    pub max_examples: usize,
}

impl Default for ConsistencyOptions {
    fn default() -> Self {
        Self {
            lateness: Duration::from_secs(3600),
            max_examples: 20,
        }
    }
}

/// Why a served value that differs from the point-in-time value is still what the online path
/// should have served: it was computed earlier than the request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LagCauses {
    /// The served value equals the backfill at its `as_of_ms`: newer events were not flushed
    /// yet, or the window slid over a tile boundary between `as_of_ms` and the request.
    pub as_of: u64,
    /// The served value equals what the stream had folded at the flush at `as_of_ms`: events
    /// with earlier timestamps arrived after that flush (late, within the lateness).
    pub late_arrival: u64,
    /// The default was served for an entity whose first event came after the newest flush seen
    /// before the request: the store did not hold it yet.
    pub not_yet_written: u64,
}

/// Distribution of how far behind the request a lag-explained value was.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct LagStats {
    /// Median, ms.
    pub p50_ms: i64,
    /// 99th percentile (nearest rank), ms.
    pub p99_ms: i64,
    /// Largest, ms.
    pub max_ms: i64,
}

/// A mismatch no lag explains.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MismatchExample {
    /// The request.
    pub request_id: String,
    /// Entity name.
    pub entity: &'static str,
    /// Entity id.
    pub entity_id: String,
    /// Request time.
    pub ts_ms: i64,
    /// As-of time of the served value (`None`: the default was served).
    pub as_of_ms: Option<i64>,
    /// Served value.
    pub online: f32,
    /// Point-in-time value at `ts_ms`.
    pub offline: f32,
    /// Point-in-time value at `as_of_ms`.
    pub offline_at_as_of: Option<f32>,
    /// The served value is what the stream had folded, but the stream had dropped events of
    /// this entity as later than its lateness: a permanent difference, not lag.
    pub dropped_late: bool,
}

/// Whether a feature could be compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureStatus {
    /// An aggregation: compared row by row.
    Compared,
    /// A stored feature: no offline source, rows counted only.
    NotBackfillable,
}

/// Consistency of one feature.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FeatureConsistency {
    /// Feature name.
    pub feature: String,
    /// Entity name.
    pub entity: &'static str,
    /// Compared, or not backfillable.
    pub status: FeatureStatus,
    /// Served rows of this feature.
    pub rows: u64,
    /// Rows where |online − offline| ≤ 1e-6 · max(1, |offline|).
    pub exact: u64,
    /// Rows that are not exact.
    pub mismatches: u64,
    /// Mismatches where the default was served (`as_of_ms` null) and offline has another value.
    pub missing: u64,
    /// Mismatches where a stored value was served but offline knows no event for the entity.
    pub extra: u64,
    /// exact / rows (`None` with no rows).
    pub exact_rate: Option<f64>,
    /// mismatches / rows.
    pub mismatch_rate: Option<f64>,
    /// missing / rows.
    pub missing_rate: Option<f64>,
    /// extra / rows.
    pub extra_rate: Option<f64>,
    /// Mean over rows of 2|online − offline| / (|online| + |offline|) (0 when both are 0), in
    /// [0, 2].
    pub smape: Option<f64>,
    /// Mismatches explained by lag, by cause.
    pub explained_by_lag: u64,
    /// The causes.
    pub lag_causes: LagCauses,
    /// request time − as-of time of lag-explained mismatches (for `not_yet_written`: request
    /// time − the entity's first event time).
    pub lag: Option<LagStats>,
    /// Mismatches no lag explains.
    pub unexplained: u64,
    /// Of those, values the stream computed without events it had dropped as too late.
    pub dropped_late: u64,
    /// Up to `max_examples` of them.
    pub examples: Vec<MismatchExample>,
}

/// Rows of the served log that were not compared.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct SkippedRows {
    /// Rows of features the definitions do not have, by name.
    pub unknown_feature: BTreeMap<String, u64>,
    /// Rows whose entity is not the feature's entity.
    pub wrong_entity: u64,
}

/// The online/offline consistency report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ConsistencyReport {
    /// Rows compared (served rows of aggregated features).
    pub rows: u64,
    /// Exact rows.
    pub exact: u64,
    /// exact / rows (`None` with no rows).
    pub exact_rate: Option<f64>,
    /// Rows that are not exact.
    pub mismatches: u64,
    /// Mismatches explained by lag.
    pub explained_by_lag: u64,
    /// Mismatches no lag explains.
    pub unexplained: u64,
    /// SMAPE over all compared rows.
    pub smape: Option<f64>,
    /// Served rows of stored features (not backfillable).
    pub not_backfillable_rows: u64,
    /// Per feature, in definitions order.
    pub features: Vec<FeatureConsistency>,
    /// Rows not compared.
    pub skipped: SkippedRows,
    /// What the backfill did with the event log.
    pub events: BackfillStats,
}

/// Joins served values with the point-in-time backfill of `events` and reports, per feature, how
/// often they agree and why they do not, with the default [`ConsistencyOptions`]. `events` must be
/// in the order the stream consumed them (as [`read_events`] returns an [`EventLogWriter`]'s
/// log).
pub fn consistency(
    defs: &Definitions,
    served: &[ServedRow],
    events: &[Event],
) -> ConsistencyReport {
    consistency_with(defs, served, events, &ConsistencyOptions::default())
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 * b.abs().max(1.0)
}

fn smape_term(online: f64, offline: f64) -> f64 {
    let d = online.abs() + offline.abs();
    if d == 0.0 {
        0.0
    } else {
        2.0 * (online - offline).abs() / d
    }
}

fn rate(n: u64, d: u64) -> Option<f64> {
    (d > 0).then(|| n as f64 / d as f64)
}

/// A mismatched row waiting for a verdict from the arrival-order replay.
struct Pending {
    row: usize,
    slot: usize,
    /// Index of the feature in its entity's vector.
    idx: usize,
    offline: f32,
    offline_at_as_of: Option<f32>,
    /// The flush clock it is judged at: the row's `as_of_ms`, or for a default served, the
    /// newest `as_of_ms` served before it (`None`: no served value proves any flush happened
    /// before the request, so nothing says the store should have held the entity).
    at: Option<i64>,
    /// A default served (judged by whether the entity was known) rather than a stored value
    /// (judged by its value).
    absent: bool,
}

#[derive(Default)]
struct Tally {
    rows: u64,
    exact: u64,
    missing: u64,
    extra: u64,
    smape_sum: f64,
    causes: LagCauses,
    lags: Vec<i64>,
    unexplained: u64,
    dropped_late: u64,
    examples: Vec<MismatchExample>,
}

/// [`consistency`] with explicit options.
pub fn consistency_with(
    defs: &Definitions,
    served: &[ServedRow],
    events: &[Event],
    opts: &ConsistencyOptions,
) -> ConsistencyReport {
    let defs = Arc::new(defs.clone());
    let feats = defs.features();
    // Feature name → (slot in the report, index in its entity's vector).
    let mut slot_of: HashMap<&str, (usize, usize)> = HashMap::new();
    let mut per_entity: HashMap<Entity, usize> = HashMap::new();
    for (slot, f) in feats.iter().enumerate() {
        let next = per_entity.entry(f.entity).or_default();
        slot_of.insert(f.name.as_str(), (slot, *next));
        *next += 1;
    }
    let mut tallies: Vec<Tally> = feats.iter().map(|_| Tally::default()).collect();
    let mut skipped = SkippedRows::default();

    // Served rows to compare, and the query points they need (request time and as-of time),
    // each point asked once however many features and rows share it.
    let mut point_index: HashMap<(Entity, &str, i64), usize> = HashMap::new();
    let mut points: Vec<(Entity, &str, i64)> = Vec::new();
    let mut intern = |k| {
        *point_index.entry(k).or_insert_with(|| {
            points.push(k);
            points.len() - 1
        })
    };
    struct Compared {
        row: usize,
        slot: usize,
        idx: usize,
        at: usize,
        as_of: Option<usize>,
    }
    let mut compared = Vec::new();
    for (r, row) in served.iter().enumerate() {
        let Some(&(slot, idx)) = slot_of.get(row.feature.as_str()) else {
            *skipped
                .unknown_feature
                .entry(row.feature.clone())
                .or_default() += 1;
            continue;
        };
        let f = &feats[slot];
        if f.entity != row.entity {
            skipped.wrong_entity += 1;
            continue;
        }
        tallies[slot].rows += 1;
        if f.kind == FeatureKind::Stored {
            continue;
        }
        compared.push(Compared {
            row: r,
            slot,
            idx,
            at: intern((row.entity, row.entity_id.as_str(), row.ts_ms)),
            as_of: row
                .as_of_ms
                .map(|w| intern((row.entity, row.entity_id.as_str(), w))),
        });
    }
    let bf = sweep(&defs, events, &points);

    // The newest flush that some served value proves had happened by a given request time.
    let mut flushes: Vec<(i64, i64)> = served
        .iter()
        .filter_map(|r| r.as_of_ms.map(|w| (r.ts_ms, w)))
        .collect();
    flushes.sort_unstable();
    let mut newest = i64::MIN;
    for f in &mut flushes {
        newest = newest.max(f.1);
        f.1 = newest;
    }
    let flushed_by = |t: i64| -> Option<i64> {
        let n = flushes.partition_point(|f| f.0 <= t);
        (n > 0).then(|| flushes[n - 1].1)
    };

    let mut pending: Vec<Pending> = Vec::new();
    for c in &compared {
        let row = &served[c.row];
        let t = &mut tallies[c.slot];
        let p = &bf.points[c.at];
        let offline = p.values[c.idx].expect("compared features are aggregations");
        let online = f64::from(row.value);
        t.smape_sum += smape_term(online, f64::from(offline));
        if close(online, f64::from(offline)) {
            t.exact += 1;
            continue;
        }
        let mut wait = Pending {
            row: c.row,
            slot: c.slot,
            idx: c.idx,
            offline,
            offline_at_as_of: None,
            at: row.as_of_ms,
            absent: false,
        };
        match (row.as_of_ms, c.as_of) {
            (Some(w), Some(a)) => {
                if !p.known {
                    t.extra += 1;
                }
                let at_as_of = bf.points[a].values[c.idx].expect("aggregation");
                if close(online, f64::from(at_as_of)) {
                    t.causes.as_of += 1;
                    t.lags.push(row.ts_ms - w);
                    continue;
                }
                wait.offline_at_as_of = Some(at_as_of);
            }
            _ => {
                t.missing += 1;
                wait.at = flushed_by(row.ts_ms);
                wait.absent = true;
            }
        }
        pending.push(wait);
    }

    let explained = replay_arrivals(&defs, events, served, &pending, opts.lateness);
    // The entity's first event time, for the lag of a default served before its first flush.
    let first_event = first_event_times(events, served, &pending);
    for (p, verdict) in pending.iter().zip(explained) {
        let row = &served[p.row];
        let t = &mut tallies[p.slot];
        if verdict == Verdict::Explained {
            if p.absent {
                t.causes.not_yet_written += 1;
                if let Some(first) = first_event.get(&(row.entity, row.entity_id.as_str())) {
                    t.lags.push(row.ts_ms - first);
                }
            } else {
                t.causes.late_arrival += 1;
                t.lags
                    .push(row.ts_ms - p.at.expect("value checks have an as-of"));
            }
            continue;
        }
        t.unexplained += 1;
        let dropped_late = verdict == Verdict::DroppedLate;
        t.dropped_late += u64::from(dropped_late);
        if t.examples.len() < opts.max_examples {
            t.examples.push(MismatchExample {
                request_id: row.request_id.clone(),
                entity: row.entity.as_str(),
                entity_id: row.entity_id.clone(),
                ts_ms: row.ts_ms,
                as_of_ms: row.as_of_ms,
                online: row.value,
                offline: p.offline,
                offline_at_as_of: p.offline_at_as_of,
                dropped_late,
            });
        }
    }

    let mut features = Vec::with_capacity(feats.len());
    let (mut rows, mut exact, mut unexplained, mut explained_total) = (0, 0, 0, 0);
    let (mut smape_sum, mut not_backfillable_rows) = (0.0, 0);
    for (f, mut t) in feats.iter().zip(tallies) {
        let stored = f.kind == FeatureKind::Stored;
        if stored {
            not_backfillable_rows += t.rows;
        } else {
            rows += t.rows;
            exact += t.exact;
            unexplained += t.unexplained;
            smape_sum += t.smape_sum;
        }
        let c = t.causes;
        let by_lag = c.as_of + c.late_arrival + c.not_yet_written;
        explained_total += by_lag;
        t.lags.sort_unstable();
        let pct = |q: f64| {
            let n = t.lags.len();
            t.lags[((q * n as f64).ceil() as usize).clamp(1, n) - 1]
        };
        let lag = (!t.lags.is_empty()).then(|| LagStats {
            p50_ms: pct(0.5),
            p99_ms: pct(0.99),
            max_ms: *t.lags.last().expect("non-empty"),
        });
        let n = if stored { 0 } else { t.rows };
        let mismatches = n - if stored { 0 } else { t.exact };
        features.push(FeatureConsistency {
            feature: f.name.clone(),
            entity: f.entity.as_str(),
            status: if stored {
                FeatureStatus::NotBackfillable
            } else {
                FeatureStatus::Compared
            },
            rows: t.rows,
            exact: t.exact,
            mismatches,
            missing: t.missing,
            extra: t.extra,
            exact_rate: rate(t.exact, n),
            mismatch_rate: rate(mismatches, n),
            missing_rate: rate(t.missing, n),
            extra_rate: rate(t.extra, n),
            smape: (n > 0).then(|| t.smape_sum / n as f64),
            explained_by_lag: by_lag,
            lag_causes: c,
            lag,
            unexplained: t.unexplained,
            dropped_late: t.dropped_late,
            examples: t.examples,
        });
    }
    ConsistencyReport {
        rows,
        exact,
        exact_rate: rate(exact, rows),
        mismatches: rows - exact,
        explained_by_lag: explained_total,
        unexplained,
        smape: (rows > 0).then(|| smape_sum / rows as f64),
        not_backfillable_rows,
        features,
        skipped,
        events: bf.stats,
    }
}

/// The replay's judgement of one pending row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Unexplained,
    /// The stream's state at the flush explains it.
    Explained,
    /// It does, but only because the stream dropped events of the entity as too late.
    DroppedLate,
}

/// Replays the event log in arrival order through an aggregator with the online lateness, and
/// for each pending row says whether the stream's state at the flush it is judged at explains
/// it. A flush at clock `w` happened at some point while the stream's clock read `w` (after the
/// event that moved it to `w`, before the one that moved it past), so a stored value is
/// explained if it equals the entity's vector at `w` at any point of that stretch; a default is
/// explained if the entity was still unknown when the clock first reached `w`.
fn replay_arrivals(
    defs: &Arc<Definitions>,
    events: &[Event],
    served: &[ServedRow],
    pending: &[Pending],
    lateness: Duration,
) -> Vec<Verdict> {
    // Without a flush to judge at, a default is explained; a stored value always has one.
    let mut verdict: Vec<Verdict> = pending
        .iter()
        .map(|p| match p.at {
            None => Verdict::Explained,
            Some(_) => Verdict::Unexplained,
        })
        .collect();
    let mut order: Vec<(i64, usize)> = pending
        .iter()
        .enumerate()
        .filter_map(|(i, p)| p.at.map(|w| (w, i)))
        .collect();
    if order.is_empty() {
        return verdict;
    }
    order.sort_unstable();
    let mut agg = Aggregator::new(defs.clone(), lateness);
    // Entities with an event the stream rejected as too late (rare: kept as owned keys).
    let mut dropped: std::collections::HashSet<(Entity, String)> = Default::default();
    let judge = |agg: &Aggregator,
                 dropped: &std::collections::HashSet<(Entity, String)>,
                 p: &Pending,
                 clock: i64| {
        let row = &served[p.row];
        let v = agg.vector(row.entity, &row.entity_id, clock)[p.idx];
        if !close(f64::from(row.value), f64::from(v)) {
            Verdict::Unexplained
        } else if dropped.contains(&(row.entity, row.entity_id.clone())) {
            Verdict::DroppedLate
        } else {
            Verdict::Explained
        }
    };
    let mut next = 0; // into `order`: checks whose clock has not been reached yet
    let mut active: Vec<usize> = Vec::new(); // value checks while the clock reads their flush
    for e in events {
        if agg.apply(e) == Err(Rejection::Late) {
            for entity in Entity::ALL {
                if let Some(id) = e.entity_id(entity) {
                    dropped.insert((entity, id.to_owned()));
                }
            }
        }
        let Some(clock) = agg.now_ms() else {
            continue;
        };
        // Value checks whose stretch ended keep their verdict.
        active.retain(|&i| pending[i].at == Some(clock));
        // Within the stretch only an event of the entity can change its vector.
        for &i in &active {
            let row = &served[pending[i].row];
            if verdict[i] != Verdict::Explained
                && e.entity_id(row.entity) == Some(row.entity_id.as_str())
            {
                verdict[i] = judge(&agg, &dropped, &pending[i], clock);
            }
        }
        while let Some(&(w, i)) = order.get(next) {
            if w > clock {
                break;
            }
            next += 1;
            let p = &pending[i];
            let row = &served[p.row];
            if p.absent {
                if !agg.knows(row.entity, &row.entity_id) {
                    verdict[i] = Verdict::Explained;
                }
            } else if w == clock {
                verdict[i] = judge(&agg, &dropped, p, clock);
                active.push(i);
            }
            // A value check whose clock the stream never read (it jumped past) stays
            // unexplained.
        }
    }
    verdict
}

fn first_event_times<'a>(
    events: &'a [Event],
    served: &'a [ServedRow],
    pending: &[Pending],
) -> HashMap<(Entity, &'a str), i64> {
    let mut first: HashMap<(Entity, &'a str), i64> = pending
        .iter()
        .filter(|p| p.absent)
        .map(|p| {
            let r = &served[p.row];
            ((r.entity, r.entity_id.as_str()), i64::MAX)
        })
        .collect();
    if first.is_empty() {
        return first;
    }
    for e in events {
        for entity in Entity::ALL {
            if let Some(id) = e.entity_id(entity) {
                if let Some(t) = first.get_mut(&(entity, id)) {
                    *t = (*t).min(e.ts_ms);
                }
            }
        }
    }
    first.retain(|_, t| *t != i64::MAX);
    first
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definitions::{Aggregation, EventField, FeatureDef, WindowSpec};
    use crate::tiles::{stable_hash, HyperLogLog};
    use rand::{Rng, SeedableRng};

    const DEFS: &str = r#"
[[feature]]
name = "user_segment"
entity = "user"
default = -1.0
ttl = "30d"

[[feature]]
name = "user_impressions_1h"
entity = "user"
aggregation = "count"
event = "impression"
window = "1h"
default = 0.0
ttl = "1d"

[[feature]]
name = "user_spend_1d"
entity = "user"
aggregation = "sum"
event = "completion"
field = "value"
window = "1d"
default = 0.0
ttl = "1d"

[[feature]]
name = "user_watch_mean_1h"
entity = "user"
aggregation = "mean"
event = "play"
field = "value"
window = "1h"
default = 0.5
ttl = "1d"

[[feature]]
name = "user_last_click_1d"
entity = "user"
aggregation = "last"
event = "click"
field = "value"
window = "1d"
default = -1.0
ttl = "2h"

[[feature]]
name = "user_distinct_content_1d"
entity = "user"
aggregation = "distinct"
event = "play"
field = "content_id"
window = "1d"
default = 0.0
ttl = "1d"

[[feature]]
name = "li_impressions_1h"
entity = "line_item"
aggregation = "count"
event = "impression"
window = "1h"
tile = "10m"
default = 0.0
ttl = "1d"

[[feature]]
name = "li_clickers_1d"
entity = "line_item"
aggregation = "count"
event = "click"
field = "user_id"
window = "1d"
default = 0.0
ttl = "1d"
"#;

    const T0: i64 = 1_700_000_123_457;
    const MIN: i64 = 60_000;

    fn defs() -> Definitions {
        Definitions::parse(DEFS, Path::new("test.toml")).unwrap()
    }

    fn ev(id: &str, kind: EventType, ts: i64, user: Option<&str>, value: Option<f64>) -> Event {
        Event {
            id: id.into(),
            kind,
            ts_ms: ts,
            ids: [user.map(Into::into), None, None, None, None],
            value,
        }
    }

    /// A random stream: out-of-order arrivals (within 30 min), exact duplicates, missing fields.
    fn random_events(seed: u64, n: usize) -> Vec<Event> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let kinds = [
            EventType::Impression,
            EventType::Click,
            EventType::Completion,
            EventType::Play,
        ];
        let mut clock = T0;
        let mut out: Vec<Event> = Vec::with_capacity(n);
        for i in 0..n {
            if !out.is_empty() && rng.random_bool(0.05) {
                let dup = out[rng.random_range(0..out.len())].clone();
                out.push(dup);
                continue;
            }
            clock += rng.random_range(0..90_000);
            let back = if rng.random_bool(0.1) {
                rng.random_range(0..30 * MIN)
            } else {
                0
            };
            let some =
                |rng: &mut rand::rngs::StdRng, p: f64, s: String| rng.random_bool(p).then_some(s);
            let user = format!("u{}", rng.random_range(0..8));
            let li = format!("l{}", rng.random_range(0..3));
            let content = format!("c{}", rng.random_range(0..30));
            out.push(Event {
                id: format!("e{i}"),
                kind: kinds[rng.random_range(0..4)],
                ts_ms: clock - back,
                ids: [
                    some(&mut rng, 0.9, user),
                    None,
                    some(&mut rng, 0.7, li),
                    None,
                    some(&mut rng, 0.8, content),
                ],
                value: rng
                    .random_bool(0.9)
                    .then(|| f64::from(rng.random_range(0..10_000)) / 100.0),
            });
        }
        out
    }

    /// The value of one feature at `t` from first principles (the tile boundary rule of
    /// `tiles`, dedupe by id, freshness by ttl), without tiles or the aggregator.
    fn brute(f: &FeatureDef, events: &[Event], entity_id: &str, t: i64) -> f32 {
        let FeatureKind::Aggregation(WindowSpec {
            aggregation,
            event,
            field,
            window,
            tile,
        }) = &f.kind
        else {
            unreachable!()
        };
        let (w, s) = (window.as_millis() as i64, tile.as_millis() as i64);
        let mut seen = std::collections::HashSet::new();
        let mut sorted: Vec<&Event> = events.iter().filter(|e| e.ts_ms <= t).collect();
        sorted.sort_by_key(|e| e.ts_ms);
        let relevant: Vec<(&Event, Option<f64>, Option<u64>)> = sorted
            .into_iter()
            .filter(|e| seen.insert(e.id.clone()))
            .filter(|e| e.kind == *event && e.entity_id(f.entity) == Some(entity_id))
            .filter_map(|e| {
                let hash = |en: Entity| e.entity_id(en).map(|x| stable_hash(x.as_bytes()));
                let (present, num, h) = match field {
                    None => (true, None, None),
                    Some(EventField::Value) => (e.value.is_some(), e.value, None),
                    Some(EventField::UserId) => {
                        let h = hash(Entity::User);
                        (h.is_some(), None, h)
                    }
                    Some(EventField::ContentId) => {
                        let h = hash(Entity::Content);
                        (h.is_some(), None, h)
                    }
                    Some(_) => unreachable!("not used in DEFS"),
                };
                present.then_some((e, num, h))
            })
            .collect();
        let Some(last) = relevant.iter().map(|r| r.0.ts_ms).max() else {
            return f.default;
        };
        if t - last > f.ttl.as_millis() as i64 {
            return f.default;
        }
        let (lo, hi) = ((t - w + 1).div_euclid(s), t.div_euclid(s));
        let inside: Vec<_> = relevant
            .iter()
            .filter(|r| (lo..=hi).contains(&r.0.ts_ms.div_euclid(s)))
            .collect();
        let nums = || inside.iter().filter_map(|r| r.1);
        let v = match aggregation {
            Aggregation::Count => Some(inside.len() as f64),
            Aggregation::Sum => Some(nums().sum()),
            Aggregation::Mean => {
                let n = nums().count();
                (n > 0).then(|| nums().sum::<f64>() / n as f64)
            }
            Aggregation::Last => inside
                .iter()
                .fold(None, |best: Option<(i64, f64)>, r| match (best, r.1) {
                    (Some((bt, _)), Some(x)) if r.0.ts_ms >= bt => Some((r.0.ts_ms, x)),
                    (None, Some(x)) => Some((r.0.ts_ms, x)),
                    (b, _) => b,
                })
                .map(|b| b.1),
            Aggregation::Distinct => {
                let mut h = HyperLogLog::default();
                inside.iter().filter_map(|r| r.2).for_each(|x| h.insert(x));
                Some(h.estimate())
            }
        };
        v.map_or(f.default, |x| x as f32)
    }

    #[test]
    fn backfill_equals_brute_force_on_random_streams() {
        let defs = defs();
        for seed in 0..6 {
            let events = random_events(seed, 700);
            let mut rng = rand::rngs::StdRng::seed_from_u64(100 + seed);
            let end = events.iter().map(|e| e.ts_ms).max().unwrap();
            let queries: Vec<QueryPoint> = (0..150)
                .map(|_| {
                    let (entity, id) = if rng.random_bool(0.7) {
                        (Entity::User, format!("u{}", rng.random_range(0..9)))
                    } else {
                        (Entity::LineItem, format!("l{}", rng.random_range(0..4)))
                    };
                    QueryPoint {
                        entity,
                        entity_id: id,
                        ts_ms: rng.random_range(T0 - 60 * MIN..end + 3 * 60 * MIN),
                    }
                })
                .collect();
            let bf = backfill(&defs, &events, &queries);
            assert!(bf.stats.duplicates > 10, "{:?}", bf.stats);
            let mut nonzero = 0;
            for (q, p) in queries.iter().zip(&bf.points) {
                for (f, got) in defs.of(q.entity).zip(&p.values) {
                    let Some(got) = got else {
                        assert_eq!(f.kind, FeatureKind::Stored);
                        continue;
                    };
                    let want = brute(f, &events, &q.entity_id, q.ts_ms);
                    assert!(
                        close(f64::from(*got), f64::from(want)),
                        "seed {seed} {} {} at {}: backfill {got} vs brute {want}",
                        f.name,
                        q.entity_id,
                        q.ts_ms
                    );
                    nonzero += usize::from(*got != f.default);
                }
                let known = events
                    .iter()
                    .any(|e| e.ts_ms <= q.ts_ms && e.entity_id(q.entity) == Some(&q.entity_id));
                // Known means folded into a series: an event of the entity whose type some of
                // its features read (here every type is read by some user and line-item feature
                // except play and completion for line items).
                if p.known {
                    assert!(known);
                }
            }
            assert!(nonzero > 200, "the queries hit data: {nonzero}");
        }
    }

    #[test]
    fn event_log_round_trips_through_parquet() {
        let dir = tempfile::tempdir().unwrap();
        let mut events = random_events(7, 300);
        events[3].value = None;
        events[4].ids = [None, Some("d1".into()), None, Some("a9".into()), None];
        let path = dir.path().join("events.parquet");
        write_events(&path, &events).unwrap();
        assert_eq!(read_events(&path).unwrap(), events);
        assert!(!tmp_path(&path).exists());
    }

    fn served(i: usize) -> ServedRow {
        let k = i as i64;
        ServedRow {
            request_id: format!("r{i}"),
            ts_ms: T0 + k,
            entity: [Entity::User, Entity::LineItem][i % 2],
            entity_id: format!("x{i}"),
            feature: "user_impressions_1h".into(),
            value: i as f32 / 3.0,
            // Every third row served the default.
            as_of_ms: (k % 3 != 0).then_some(T0 - k),
        }
    }

    #[test]
    fn rolling_writer_cuts_files_by_rows_and_age_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        let policy = RollPolicy {
            max_rows: 5,
            max_age: Duration::from_secs(3600),
        };
        let mut w = ServedLogWriter::create(dir.path(), "served", policy).unwrap();
        let rows: Vec<ServedRow> = (0..12).map(served).collect();
        w.extend(rows[..7].iter().cloned()).unwrap();
        for r in &rows[7..] {
            w.push(r.clone()).unwrap();
        }
        // Two full files are published; the third is still open under its temporary name.
        let names = |d: &Path| {
            let mut v: Vec<String> = std::fs::read_dir(d)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            v.sort();
            v
        };
        let n = names(dir.path());
        assert_eq!(
            n.iter().filter(|f| f.ends_with(".parquet")).count(),
            2,
            "{n:?}"
        );
        assert_eq!(read_served(dir.path()).unwrap(), rows[..10]);
        w.finish().unwrap();
        let n = names(dir.path());
        assert_eq!(n.len(), 3, "{n:?}");
        assert!(n
            .iter()
            .all(|f| f.starts_with("served-") && f.ends_with(".parquet")));
        assert_eq!(read_served(dir.path()).unwrap(), rows);

        // Age: a quiet file is closed by roll_if_due once old enough.
        let dir = tempfile::tempdir().unwrap();
        let policy = RollPolicy {
            max_rows: 1000,
            max_age: Duration::from_millis(30),
        };
        let mut w = EventLogWriter::create(dir.path(), "events", policy).unwrap();
        let events = random_events(1, 3);
        w.push(events[0].clone()).unwrap();
        assert_eq!(w.roll_if_due().unwrap(), None);
        std::thread::sleep(Duration::from_millis(40));
        let closed = w.roll_if_due().unwrap().expect("old enough");
        assert_eq!(read_events(&closed).unwrap(), events[..1]);
        w.extend(events[1..].iter().cloned()).unwrap();
        drop(w); // dropping publishes the open file
        assert_eq!(read_events(dir.path()).unwrap(), events);
    }

    fn write_batch(path: &Path, fields: Vec<Field>, cols: Vec<ArrayRef>) {
        let schema = Arc::new(Schema::new(fields));
        let batch = RecordBatch::try_new(schema.clone(), cols).unwrap();
        let mut w = ArrowWriter::try_new(File::create(path).unwrap(), schema, None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
    }

    fn event_columns(kind: &str, ts: i64) -> (Vec<Field>, Vec<ArrayRef>) {
        let mut fields = vec![
            Field::new("id", DataType::Utf8, true),
            Field::new("type", DataType::Utf8, true),
            Field::new("ts_ms", DataType::Int64, true),
        ];
        let mut cols: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(vec!["a", "b"])),
            Arc::new(StringArray::from(vec!["click", kind])),
            Arc::new(Int64Array::from(vec![T0, ts])),
        ];
        for e in Entity::ALL {
            fields.push(Field::new(id_column(e), DataType::LargeUtf8, true));
            cols.push(Arc::new(LargeStringArray::from(vec![Some("u1"), None])));
        }
        fields.push(Field::new("value", DataType::Float32, true));
        cols.push(Arc::new(Float32Array::from(vec![Some(1.5), None])));
        (fields, cols)
    }

    #[test]
    fn bad_files_are_errors_that_name_the_file_and_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let p = |name: &str| dir.path().join(name);
        let err = |path: &Path| read_events(path).unwrap_err().to_string();

        let e = err(&p("absent.parquet"));
        assert!(
            e.contains("absent.parquet") && e.contains("cannot read"),
            "{e}"
        );

        std::fs::write(p("text.parquet"), "id,type\n1,click\n").unwrap();
        let e = err(&p("text.parquet"));
        assert!(
            e.contains("text.parquet") && e.contains("not a readable Parquet"),
            "{e}"
        );

        // A served log read as an event log: the first missing column is named.
        write_records(&p("served.parquet"), &[served(1)]).unwrap();
        let e = err(&p("served.parquet"));
        assert!(
            e.contains("served.parquet") && e.contains("missing column `id`"),
            "{e}"
        );

        let (mut fields, mut cols) = event_columns("click", T0);
        fields[2] = Field::new("ts_ms", DataType::Utf8, true);
        cols[2] = Arc::new(StringArray::from(vec!["1", "2"]));
        write_batch(&p("ts_text.parquet"), fields, cols);
        let e = err(&p("ts_text.parquet"));
        assert!(
            e.contains("ts_text.parquet") && e.contains("`ts_ms` is Utf8, expected int64"),
            "{e}"
        );

        let (fields, cols) = event_columns("view", T0);
        write_batch(&p("view.parquet"), fields, cols);
        let e = err(&p("view.parquet"));
        assert!(
            e.contains("view.parquet") && e.contains("row 1") && e.contains("`view`"),
            "{e}"
        );

        let (fields, cols) = event_columns("click", T0 / 1000);
        write_batch(&p("seconds.parquet"), fields, cols);
        let e = err(&p("seconds.parquet"));
        assert!(e.contains("row 1") && e.contains("seconds or µs"), "{e}");

        // Large strings and float32 values, as other writers produce, read fine.
        let (fields, cols) = event_columns("play", T0 + 1);
        write_batch(&p("polars.parquet"), fields, cols);
        let read = read_events(&p("polars.parquet")).unwrap();
        assert_eq!(read[0].value, Some(1.5));
        assert_eq!(read[1].kind, EventType::Play);

        // A served log whose as-of times are in seconds.
        let mut row = served(1);
        row.as_of_ms = Some(1_700_000_000);
        write_records(&p("served_s.parquet"), &[served(2), row]).unwrap();
        let e = read_served(&p("served_s.parquet")).unwrap_err().to_string();
        assert!(
            e.contains("served_s.parquet") && e.contains("row 1: `as_of_ms` 1700000000"),
            "{e}"
        );

        let empty = p("empty");
        std::fs::create_dir(&empty).unwrap();
        std::fs::write(empty.join("half.parquet.tmp"), "").unwrap();
        let e = err(&empty);
        assert!(e.contains("empty") && e.contains("no *.parquet"), "{e}");
    }

    /// Served rows for `entity`'s features as online would have served them with a store
    /// written at `as_of` (`None`: default served), at request time `ts`.
    fn serve(
        defs: &Definitions,
        request: &str,
        entity: Entity,
        id: &str,
        ts: i64,
        values: Option<(&[f32], i64)>,
    ) -> Vec<ServedRow> {
        defs.of(entity)
            .enumerate()
            .map(|(i, f)| ServedRow {
                request_id: request.into(),
                ts_ms: ts,
                entity,
                entity_id: id.into(),
                feature: f.name.clone(),
                value: values.map_or(f.default, |(v, _)| v[i]),
                as_of_ms: values.map(|(_, w)| w),
            })
            .collect()
    }

    #[test]
    fn identical_online_and_offline_are_all_exact() {
        let defs = defs();
        let events = random_events(3, 500);
        let queries: Vec<QueryPoint> = (0..100)
            .map(|i| QueryPoint {
                entity: if i % 3 == 0 {
                    Entity::LineItem
                } else {
                    Entity::User
                },
                entity_id: if i % 3 == 0 {
                    format!("l{}", i % 4)
                } else {
                    format!("u{}", i % 9)
                },
                ts_ms: T0 + i * 7 * MIN,
            })
            .collect();
        let bf = backfill(&defs, &events, &queries);
        let mut rows = Vec::new();
        for (i, (q, p)) in queries.iter().zip(&bf.points).enumerate() {
            let values: Vec<f32> = p
                .values
                .iter()
                .zip(defs.of(q.entity))
                .map(|(v, f)| v.unwrap_or(f.default))
                .collect();
            let stored = p.known.then_some((values.as_slice(), q.ts_ms));
            rows.extend(serve(
                &defs,
                &format!("r{i}"),
                q.entity,
                &q.entity_id,
                q.ts_ms,
                stored,
            ));
        }
        rows.push(ServedRow {
            feature: "retired_feature".into(),
            ..rows[0].clone()
        });
        let r = consistency(&defs, &rows, &events);
        assert_eq!(r.exact_rate, Some(1.0), "{r:#?}");
        assert_eq!((r.mismatches, r.unexplained), (0, 0));
        assert_eq!(r.rows + r.not_backfillable_rows + 1, rows.len() as u64);
        assert_eq!(r.skipped.unknown_feature["retired_feature"], 1);
        let seg = &r.features[0];
        assert_eq!(seg.status, FeatureStatus::NotBackfillable);
        assert!(seg.rows > 0 && seg.exact_rate.is_none());
        assert!(r.features[1..].iter().all(|f| f.smape == Some(0.0)));
    }

    #[test]
    fn lag_late_arrivals_and_unflushed_entities_are_explained_and_the_rest_listed() {
        let defs = defs();
        use EventType::Impression as Imp;
        // Arrival order. The stream flushes after e2 (clock T0+5s) and after e5 (clock T0+60s).
        let events = vec![
            ev("e1", Imp, T0, Some("u1"), None),
            ev("e2", Imp, T0 + 5_000, Some("u1"), None),
            // flush at T0+5s: u1 has 2 impressions
            ev("e3", Imp, T0 + 1_000, Some("u1"), None), // late: arrives after that flush
            ev("e4", Imp, T0 + 30_000, Some("u2"), None), // u2's first event
            ev("e5", Imp, T0 + 60_000, Some("u1"), None),
            // flush at T0+60s
        ];
        let u1 = |count: f32| [-1.0, count, 0.0, 0.5, -1.0, 0.0];
        let mut rows = Vec::new();
        // 1. Served at T0+10s from the flush at T0+5s: 2, while offline at T0+10s has 3 (e3)
        //    and offline at T0+5s also 3: explained only by e3 arriving after the flush.
        rows.extend(serve(
            &defs,
            "r1",
            Entity::User,
            "u1",
            T0 + 10_000,
            Some((&u1(2.0), T0 + 5_000)),
        ));
        // 2. Served at T0+61s, still from the flush at T0+5s (the request raced the flush at
        //    T0+60s): 2, offline 4, offline at T0+5s 3; the stream at its flush had 2.
        rows.extend(serve(
            &defs,
            "r2",
            Entity::User,
            "u1",
            T0 + 61_000,
            Some((&u1(2.0), T0 + 5_000)),
        ));
        // 3. u2 at T0+40s: default served; its first event (T0+30s) is after the newest flush
        //    any request saw (T0+5s), so the store did not hold it yet.
        rows.extend(serve(&defs, "r3", Entity::User, "u2", T0 + 40_000, None));
        // 4. Served at T0+90s from the flush at T0+60s: 4 = offline: exact.
        rows.extend(serve(
            &defs,
            "r4",
            Entity::User,
            "u1",
            T0 + 90_000,
            Some((&u1(4.0), T0 + 60_000)),
        ));
        // 5. u1 at T0+2h, from the flush at T0+60s: 4 impressions in the last hour then, none
        //    now (the window slid): explained by the backfill at as_of.
        rows.extend(serve(
            &defs,
            "r5",
            Entity::User,
            "u1",
            T0 + 7_200_000,
            Some((&u1(4.0), T0 + 60_000)),
        ));
        // 6. A value that no point in time had: unexplained, listed.
        rows.extend(serve(
            &defs,
            "r6",
            Entity::User,
            "u1",
            T0 + 90_000,
            Some((&u1(7.0), T0 + 60_000)),
        ));
        // 7. u1 default served at T0+100s, though the flush at T0+60s (seen by r4) held it.
        rows.extend(serve(&defs, "r7", Entity::User, "u1", T0 + 100_000, None));

        let r = consistency(&defs, &rows, &events);
        let f = r
            .features
            .iter()
            .find(|f| f.feature == "user_impressions_1h")
            .unwrap();
        assert_eq!(f.rows, 7);
        assert_eq!(f.exact, 1, "{f:#?}");
        assert_eq!(f.mismatches, 6);
        assert_eq!(
            f.lag_causes,
            LagCauses {
                as_of: 1,
                late_arrival: 2,
                not_yet_written: 1
            },
            "{f:#?}"
        );
        assert_eq!(f.missing, 2);
        assert_eq!(f.unexplained, 2);
        let ex: Vec<&str> = f.examples.iter().map(|e| e.request_id.as_str()).collect();
        assert_eq!(ex, ["r6", "r7"]);
        assert_eq!(f.examples[0].offline, 4.0);
        assert_eq!(f.examples[0].offline_at_as_of, Some(4.0));
        let lag = f.lag.unwrap();
        // Lags: r1 5 s and r2 56 s (late arrival), r3 10 s (since u2's first event), r5 2 h − 60 s.
        assert_eq!((lag.p50_ms, lag.max_ms), (10_000, 7_140_000));
        assert_eq!(r.unexplained, 2);
        // The other features agree everywhere: u1 had only impressions.
        assert_eq!(r.mismatches, 6);
    }

    #[test]
    fn an_event_the_stream_dropped_as_too_late_is_unexplained_and_marked() {
        let defs = defs();
        let h = 3_600_000;
        let done =
            |id: &str, ts: i64, v: f64| ev(id, EventType::Completion, ts, Some("u9"), Some(v));
        // Arrival order; the stream (lateness 1 h) flushes after e1 and after e3.
        let events = vec![
            done("e1", T0 + 3 * h, 1.0),
            done("e2", T0 + h, 5.0), // two hours behind the clock: dropped online
            done("e3", T0 + 3 * h + 1, 2.0),
        ];
        let t = T0 + 3 * h + 10;
        let mut rows = serve(
            &defs,
            "r1",
            Entity::User,
            "u9",
            t,
            Some((&[-1.0, 0.0, 3.0, 0.5, -1.0, 0.0], T0 + 3 * h + 1)),
        );
        rows.retain(|r| r.feature == "user_spend_1d");
        let r = consistency(&defs, &rows, &events);
        let f = &r.features[2];
        assert_eq!(
            (f.mismatches, f.unexplained, f.dropped_late),
            (1, 1, 1),
            "{f:#?}"
        );
        assert_eq!(f.examples[0].offline, 8.0);
        assert!(f.examples[0].dropped_late);
    }
}
