//! A model served by another process over the Open Inference Protocol (KServe v2 REST): Triton,
//! MLServer, KServe, or another Podium. It takes a tier in a slot like a local model, under the
//! same deadline and fallbacks, but its batch travels over HTTP instead of running on the pool.

use crate::tensor::TensorData;
use podium_core::{FeatureFrame, FrameSchema};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::time::Duration;

/// Where and how to call a remote model, as `models.toml` gives it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteConfig {
    /// Base URL of the inference server, e.g. `http://10.0.0.5:8080`.
    pub url: String,
    /// Model name on that server.
    pub model: String,
    /// Model version to call; the server's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Feature names, in the order of the input tensor's columns.
    pub inputs: Vec<String>,
    /// What the model predicts (`ctr`, `completion`, …).
    pub task: String,
    /// Prediction served when every tier fails.
    pub fallback_prior: f64,
    /// Name of the input tensor.
    #[serde(default = "default_input_name")]
    pub input_name: String,
    /// Output tensor to read; the first one when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// Column of a `[N, k]` output; 1 for two columns (positive class), else 0, when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
}

fn default_input_name() -> String {
    "input-0".to_string()
}

/// A remote model bound to the serving schema.
#[derive(Debug)]
pub struct RemoteModel {
    config: RemoteConfig,
    columns: Vec<usize>,
    infer_url: String,
    client: reqwest::Client,
}

/// A remote model's input the schema lacks, or a malformed URL.
#[derive(Debug, thiserror::Error)]
#[error("remote model {model:?} at {url}: {message}")]
pub struct RemoteError {
    /// Model name.
    pub model: String,
    /// Server URL.
    pub url: String,
    /// What is wrong.
    pub message: String,
}

impl RemoteModel {
    /// Resolves the inputs against `schema`; makes no network call (a server that is down at
    /// start-up must not stop the rest from serving: its slot falls back until it returns).
    pub fn bind(config: RemoteConfig, schema: &FrameSchema) -> Result<Self, RemoteError> {
        let err = |message: String| RemoteError {
            model: config.model.clone(),
            url: config.url.clone(),
            message,
        };
        let base = reqwest::Url::parse(&config.url).map_err(|e| err(format!("not a URL: {e}")))?;
        if config.inputs.is_empty() {
            return Err(err("inputs must list at least one feature".into()));
        }
        let columns = config
            .inputs
            .iter()
            .map(|n| {
                schema.column(n).ok_or_else(|| {
                    err(format!(
                        "input {n:?} is not a feature of the serving schema"
                    ))
                })
            })
            .collect::<Result<_, _>>()?;
        let path = match &config.version {
            Some(v) => format!("v2/models/{}/versions/{v}/infer", config.model),
            None => format!("v2/models/{}/infer", config.model),
        };
        let infer_url = base
            .join(&path)
            .map_err(|e| err(e.to_string()))?
            .to_string();
        let client = reqwest::Client::builder()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(256)
            .build()
            .map_err(|e| err(e.to_string()))?;
        Ok(Self {
            config,
            columns,
            infer_url,
            client,
        })
    }

    /// The frame columns sent, in the input tensor's column order.
    pub fn columns(&self) -> &[usize] {
        &self.columns
    }

    /// The configuration.
    pub fn config(&self) -> &RemoteConfig {
        &self.config
    }

    /// Name shown in decisions: `model@url`.
    pub fn label(&self) -> String {
        format!("{}@{}", self.config.model, self.config.url)
    }

    /// Scores every row of `frame` remotely, giving up after `budget`.
    pub async fn score(&self, frame: &FeatureFrame, budget: Duration) -> Result<Vec<f32>, String> {
        let rows = frame.rows();
        let width = self.columns.len();
        // Written by hand: a batch is rows × features numbers and serde_json's Value would
        // allocate per number. Missing values go as null.
        let mut body = String::with_capacity(96 + rows * width * 10);
        let _ = write!(
            body,
            r#"{{"inputs":[{{"name":{},"shape":[{rows},{width}],"datatype":"FP32","data":["#,
            serde_json::to_string(&self.config.input_name).expect("a string serialises")
        );
        for r in 0..rows {
            for (j, &c) in self.columns.iter().enumerate() {
                if r + j > 0 {
                    body.push(',');
                }
                let v = frame.get(c, r);
                if v.is_finite() {
                    let _ = write!(body, "{v}");
                } else {
                    body.push_str("null");
                }
            }
        }
        body.push_str("]}]}");
        let response = self
            .client
            .post(&self.infer_url)
            .header("content-type", "application/json")
            .body(body)
            .timeout(budget)
            .send()
            .await
            .map_err(|e| {
                if e.is_timeout() {
                    format!("no answer within {} µs", budget.as_micros())
                } else {
                    format!("request failed: {e}")
                }
            })?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&bytes);
            return Err(format!(
                "HTTP {status}: {}",
                text.chars().take(200).collect::<String>()
            ));
        }
        self.read_output(&bytes, rows)
    }

    fn read_output(&self, bytes: &[u8], rows: usize) -> Result<Vec<f32>, String> {
        #[derive(Deserialize)]
        struct Output {
            name: String,
            shape: Vec<usize>,
            data: TensorData,
        }
        #[derive(Deserialize)]
        struct Answer {
            outputs: Vec<Output>,
        }
        let answer: Answer =
            serde_json::from_slice(bytes).map_err(|e| format!("malformed answer: {e}"))?;
        let output = match &self.config.output {
            Some(name) => answer
                .outputs
                .iter()
                .find(|o| &o.name == name)
                .ok_or_else(|| format!("answer has no output {name:?}"))?,
            None => answer.outputs.first().ok_or("answer has no outputs")?,
        };
        let flat = &output.data.0;
        let width = if output.shape.len() >= 2 {
            output.shape[1..].iter().product::<usize>().max(1)
        } else {
            1
        };
        if flat.len() != rows * width {
            return Err(format!(
                "output {:?} holds {} values for {rows} rows (shape {:?})",
                output.name,
                flat.len(),
                output.shape
            ));
        }
        let column = self.config.column.unwrap_or(if width == 2 { 1 } else { 0 });
        if column >= width {
            return Err(format!(
                "column {column} is outside output {:?} of width {width}",
                output.name
            ));
        }
        let values: Vec<f32> = (0..rows).map(|r| flat[r * width + column]).collect();
        match values.iter().position(|v| !v.is_finite()) {
            Some(r) => Err(format!("non-finite prediction at row {r}")),
            None => Ok(values),
        }
    }
}
