//! The Open Inference Protocol (KServe v2) REST endpoints for every loaded model, so that other
//! services and standard clients (tritonclient, MLServer's client) can call Podium's models.
//!
//! Inputs come either as one `[N, F]` tensor in the model's input order, or as one tensor per
//! feature named as the model's inputs (`[N]` or `[N, 1]`); missing features get the model's
//! defaults. The output is one FP32 tensor `predict` of shape `[N]`.

use crate::api::ApiError;
use crate::app::AppState;
use crate::app::MAX_INFER_BODY_BYTES;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use podium_model::Model;
use podium_serving::tensor::{TensorData, MAX_TENSOR_VALUES};
use serde::Deserialize;
use serde_json::{json, Value};

/// Most values (rows × features) one infer request may carry.
pub const MAX_INFER_VALUES: usize = MAX_TENSOR_VALUES;

/// One input tensor of an infer request.
#[derive(Debug, Deserialize)]
pub struct InferInput {
    /// Tensor name: a feature name, or any name for a single `[N, F]` tensor.
    pub name: String,
    /// Dimensions.
    pub shape: Vec<i64>,
    /// `FP32`, `FP64`, `INT32`, `INT64`, … — read as numbers.
    pub datatype: String,
    /// Row-major values; `null` is a missing value. Absent when the tensor travels as binary
    /// data after the JSON header (the binary tensor extension).
    #[serde(default)]
    pub data: TensorData,
    /// Tensor parameters; `binary_data_size` marks a binary tensor.
    #[serde(default)]
    pub parameters: serde_json::Map<String, Value>,
}

/// A requested output.
#[derive(Debug, Deserialize)]
pub struct RequestedOutput {
    /// Output name.
    pub name: String,
    /// `binary_data: true` asks for the output as binary data.
    #[serde(default)]
    pub parameters: serde_json::Map<String, Value>,
}

/// An infer request body.
#[derive(Debug, Deserialize)]
pub struct InferRequest {
    /// Echoed in the answer.
    #[serde(default)]
    pub id: Option<String>,
    /// Input tensors.
    pub inputs: Vec<InferInput>,
    /// Outputs asked for; every output when absent.
    #[serde(default)]
    pub outputs: Vec<RequestedOutput>,
    /// Request parameters; `binary_data_output: true` asks for binary outputs.
    #[serde(default)]
    pub parameters: serde_json::Map<String, Value>,
}

impl InferRequest {
    /// Whether the client asked for the output as binary data.
    fn binary_output(&self) -> bool {
        let flag = |m: &serde_json::Map<String, Value>, k: &str| {
            m.get(k).and_then(Value::as_bool).unwrap_or(false)
        };
        flag(&self.parameters, "binary_data_output")
            || self
                .outputs
                .iter()
                .any(|o| flag(&o.parameters, "binary_data"))
    }
}

/// Header naming the length of the JSON part of a body that carries binary tensors.
const HEADER_LENGTH: &str = "inference-header-content-length";

/// Decodes binary tensors (the binary tensor data extension, as tritonclient sends by default)
/// into JSON arrays, so the rest of the handler sees one representation.
fn decode_binary(req: &mut InferRequest, mut blob: &[u8]) -> Result<(), ApiError> {
    for (i, t) in req.inputs.iter_mut().enumerate() {
        let Some(size) = t.parameters.get("binary_data_size").and_then(Value::as_u64) else {
            continue;
        };
        let size = size as usize;
        if size > blob.len() {
            return Err(ApiError::field(
                format!("inputs[{i}].parameters.binary_data_size"),
                format!("{size} bytes announced, {} left in the body", blob.len()),
            ));
        }
        let (bytes, rest) = blob.split_at(size);
        blob = rest;
        let width = match t.datatype.as_str() {
            "FP32" | "INT32" | "UINT32" => 4,
            "FP64" | "INT64" | "UINT64" => 8,
            "FP16" | "INT16" | "UINT16" => 2,
            "INT8" | "UINT8" | "BOOL" => 1,
            other => {
                return Err(ApiError::field(
                    format!("inputs[{i}].datatype"),
                    format!("{other:?} cannot travel as binary numbers"),
                ))
            }
        };
        if !size.is_multiple_of(width) {
            return Err(ApiError::field(
                format!("inputs[{i}].parameters.binary_data_size"),
                format!("{size} is not a multiple of {width}-byte {}", t.datatype),
            ));
        }
        let values: Vec<f32> = bytes
            .chunks_exact(width)
            .map(|b| {
                let v: f64 = match t.datatype.as_str() {
                    "FP32" => f32::from_le_bytes(b.try_into().expect("4 bytes")) as f64,
                    "FP64" => f64::from_le_bytes(b.try_into().expect("8 bytes")),
                    "INT32" => i32::from_le_bytes(b.try_into().expect("4 bytes")) as f64,
                    "UINT32" => u32::from_le_bytes(b.try_into().expect("4 bytes")) as f64,
                    "INT64" => i64::from_le_bytes(b.try_into().expect("8 bytes")) as f64,
                    "UINT64" => u64::from_le_bytes(b.try_into().expect("8 bytes")) as f64,
                    "INT16" => i16::from_le_bytes(b.try_into().expect("2 bytes")) as f64,
                    "UINT16" => u16::from_le_bytes(b.try_into().expect("2 bytes")) as f64,
                    "FP16" => half_to_f64(u16::from_le_bytes(b.try_into().expect("2 bytes"))),
                    "INT8" => b[0] as i8 as f64,
                    _ => b[0] as f64,
                };
                if v.is_finite() {
                    v as f32
                } else {
                    f32::NAN
                }
            })
            .collect();
        t.data = TensorData(values);
    }
    Ok(())
}

/// IEEE 754 half precision to double.
fn half_to_f64(h: u16) -> f64 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = ((h >> 10) & 0x1f) as i32;
    let frac = (h & 0x3ff) as f64;
    match exp {
        0 => sign * frac * 2f64.powi(-24),
        31 => {
            if frac == 0.0 {
                sign * f64::INFINITY
            } else {
                f64::NAN
            }
        }
        e => sign * (1.0 + frac / 1024.0) * 2f64.powi(e - 15),
    }
}

fn model_of(
    state: &AppState,
    params: &[(String, String)],
) -> Result<(Model, podium_serving::ComputePool, Vec<String>), ApiError> {
    let name = param(params, "name");
    let engine = state.engine().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "models are loading; retry shortly",
        )
    })?;
    let models = engine.models();
    let versions = models.versions_of(&name);
    let names: Vec<String> = versions.iter().map(|m| m.version().to_string()).collect();
    let wanted = params.iter().find(|(k, _)| k == "version").map(|(_, v)| v);
    let model = match wanted {
        None => versions.first(),
        Some(v) => versions.iter().find(|m| m.version() == v),
    };
    let model = model.map(|m| (*m).clone()).ok_or_else(|| match wanted {
        Some(v) if !names.is_empty() => ApiError::new(
            StatusCode::NOT_FOUND,
            format!("model {name:?} serves version(s) {names:?}, not {v:?}"),
        ),
        _ => ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no model named {name:?} is loaded"),
        ),
    })?;
    Ok((model, engine.pool().clone(), names))
}

/// Lays the request's tensors out as the model's input columns.
fn columns(model: &Model, req: &mut InferRequest) -> Result<(Vec<Vec<f32>>, usize), ApiError> {
    let names: Vec<&str> = model
        .manifest()
        .inputs
        .iter()
        .map(|i| i.name.as_str())
        .collect();
    if req.inputs.is_empty() {
        return Err(ApiError::field("inputs", "must hold at least one tensor"));
    }
    let mut tensors = Vec::with_capacity(req.inputs.len());
    for (i, t) in req.inputs.iter_mut().enumerate() {
        let field = format!("inputs[{i}].data");
        if !matches!(
            t.datatype.as_str(),
            "FP32"
                | "FP64"
                | "FP16"
                | "INT8"
                | "INT16"
                | "INT32"
                | "INT64"
                | "UINT8"
                | "UINT16"
                | "UINT32"
                | "UINT64"
                | "BOOL"
        ) {
            return Err(ApiError::field(
                format!("inputs[{i}].datatype"),
                format!("{:?} is not a numeric datatype", t.datatype),
            ));
        }
        if t.shape.iter().any(|&d| d < 0) {
            return Err(ApiError::field(
                format!("inputs[{i}].shape"),
                "dimensions must be non-negative",
            ));
        }
        let values = std::mem::take(&mut t.data.0);
        // Checked: a shape of huge dimensions must be a 400, not an overflow.
        let expected = t
            .shape
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(usize::try_from(d).ok()?))
            .filter(|&n| n <= MAX_TENSOR_VALUES)
            .ok_or_else(|| {
                ApiError::field(
                    format!("inputs[{i}].shape"),
                    format!(
                        "shape {:?} holds more than {MAX_TENSOR_VALUES} values",
                        t.shape
                    ),
                )
            })?;
        if expected != values.len() {
            return Err(ApiError::field(
                field,
                format!(
                    "shape {:?} needs {expected} values, got {}",
                    t.shape,
                    values.len()
                ),
            ));
        }
        tensors.push(values);
    }
    let single = &req.inputs[0];
    if req.inputs.len() == 1 && single.shape.len() == 2 && !names.contains(&single.name.as_str()) {
        let (rows, width) = (single.shape[0] as usize, single.shape[1] as usize);
        if width != names.len() {
            return Err(ApiError::field(
                "inputs[0].shape",
                format!(
                    "model {:?} reads {} features, the tensor has {width} columns",
                    model.name(),
                    names.len()
                ),
            ));
        }
        let data = &tensors[0];
        let cols = (0..width)
            .map(|c| (0..rows).map(|r| data[r * width + c]).collect())
            .collect();
        return Ok((cols, rows));
    }
    // One tensor per feature.
    let mut rows = None;
    let mut cols: Vec<Option<Vec<f32>>> = vec![None; names.len()];
    for (i, (t, values)) in req.inputs.iter().zip(tensors).enumerate() {
        let Some(c) = names.iter().position(|n| *n == t.name) else {
            return Err(ApiError::field(
                format!("inputs[{i}].name"),
                format!(
                    "model {:?} has no input {:?} (inputs: {})",
                    model.name(),
                    t.name,
                    names.join(", ")
                ),
            ));
        };
        if t.shape.len() > 2 || (t.shape.len() == 2 && t.shape[1] != 1) {
            return Err(ApiError::field(
                format!("inputs[{i}].shape"),
                "a per-feature tensor must be [N] or [N, 1]",
            ));
        }
        if *rows.get_or_insert(values.len()) != values.len() {
            return Err(ApiError::field(
                format!("inputs[{i}].shape"),
                "every per-feature tensor must have the same length",
            ));
        }
        cols[c] = Some(values);
    }
    let rows = rows.unwrap_or(0);
    Ok((
        cols.into_iter()
            .map(|c| c.unwrap_or_else(|| vec![f32::NAN; rows]))
            .collect(),
        rows,
    ))
}

/// `POST /v2/models/{name}/infer` (and the versioned path).
pub async fn infer(
    State(state): State<AppState>,
    Path(params): Path<Vec<(String, String)>>,
    headers: axum::http::HeaderMap,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|e| ApiError::body(e, MAX_INFER_BODY_BYTES))?;
    let (model, pool, _) = model_of(&state, &params)?;
    let json_len = match headers.get(HEADER_LENGTH) {
        Some(v) => {
            let n: usize = v
                .to_str()
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        format!("{HEADER_LENGTH} must be a byte count"),
                    )
                })?;
            if n > body.len() {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "{HEADER_LENGTH} {n} exceeds the body's {} bytes",
                        body.len()
                    ),
                ));
            }
            n
        }
        None => body.len(),
    };
    let de = &mut serde_json::Deserializer::from_slice(&body[..json_len]);
    let mut req: InferRequest = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        ApiError::field(
            if path == "." || path == "?" || path.is_empty() {
                "body".to_string()
            } else {
                path
            },
            e.into_inner(),
        )
    })?;
    decode_binary(&mut req, &body[json_len..])?;
    let (cols, rows) = columns(&model, &mut req)?;
    let batching = state
        .engine()
        .and_then(|e| e.models().micro_batching.get(model.name()).copied());
    let values = match batching {
        Some(config) => {
            let batcher = state.batcher(&model, &pool, config);
            batcher.predict(cols, rows).await
        }
        None => {
            let model = model.clone();
            pool.run(move || model.predict_columns(cols, rows))
                .await
                .map_err(|e| e.to_string())
        }
    }
    .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
    if req.binary_output() {
        let header = json!({
            "model_name": model.name(),
            "model_version": model.version(),
            "id": req.id,
            "outputs": [{"name": "predict", "datatype": "FP32", "shape": [rows], "parameters": {"binary_data_size": rows * 4}}],
        })
        .to_string();
        let mut out = Vec::with_capacity(header.len() + rows * 4);
        out.extend_from_slice(header.as_bytes());
        for v in &values {
            out.extend_from_slice(&v.to_le_bytes());
        }
        return Ok((
            [
                (
                    axum::http::header::CONTENT_TYPE,
                    "application/octet-stream".to_string(),
                ),
                (
                    axum::http::HeaderName::from_static(HEADER_LENGTH),
                    header.len().to_string(),
                ),
            ],
            out,
        )
            .into_response());
    }
    let data: Vec<Value> = values
        .iter()
        .map(|&v| if v.is_finite() { json!(v) } else { Value::Null })
        .collect();
    Ok(Json(json!({
        "model_name": model.name(),
        "model_version": model.version(),
        "id": req.id,
        "outputs": [{"name": "predict", "datatype": "FP32", "shape": [rows], "data": data}],
    }))
    .into_response())
}

fn param(params: &[(String, String)], key: &str) -> String {
    params
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

/// `GET /v2/models/{name}` (and the versioned path): model metadata.
pub async fn metadata(
    State(state): State<AppState>,
    Path(params): Path<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let (model, _, versions) = model_of(&state, &params)?;
    let m = model.manifest();
    let inputs: Vec<Value> = m
        .inputs
        .iter()
        .map(|i| json!({"name": i.name, "datatype": "FP32", "shape": [-1]}))
        .collect();
    Ok(Json(json!({
        "name": m.name,
        "versions": versions,
        "platform": format!("podium-{}", serde_json::to_value(m.kind).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()),
        "inputs": inputs,
        "outputs": [{"name": "predict", "datatype": "FP32", "shape": [-1]}],
        "parameters": {"task": m.task},
    }))
    .into_response())
}

/// `GET /v2/models/{name}/ready`: 200 when the model is loaded.
pub async fn model_ready(
    State(state): State<AppState>,
    Path(params): Path<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let (model, _, _) = model_of(&state, &params)?;
    Ok(Json(json!({"name": model.name(), "ready": true})).into_response())
}

/// `GET /v2`: server metadata.
pub async fn server_metadata() -> Json<Value> {
    Json(json!({"name": "podium", "version": env!("CARGO_PKG_VERSION"), "extensions": []}))
}

/// `GET /v2/health/live`.
pub async fn live() -> Json<Value> {
    Json(json!({"live": true}))
}

/// `GET /v2/health/ready`.
pub async fn ready(State(state): State<AppState>) -> Response {
    if state.ready() {
        Json(json!({"ready": true})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ready": false})),
        )
            .into_response()
    }
}
