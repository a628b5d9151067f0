//! ONNX models, run by tract (pure Rust) with Podium's ONNX-ML kernels registered in it.
//!
//! Loading reads the `.onnx` file, refuses any operator that neither tract nor [`ops`] implements
//! (naming it, before tract sees the graph), fixes the input to `[batch, features]` f32 (or f64
//! where the graph declares double) with the batch symbolic unless the graph fixes it, keeps only
//! the output the manifest names, then lets tract type, prune and optimise the graph once. Scoring
//! gathers Podium's column-major batch into the row-major tensor the graph takes, runs the plan,
//! and reads one column of the chosen output. A graph with a fixed batch size is run in chunks of
//! that size, the last one padded with zero rows whose scores are dropped.
//!
//! A dense MLP (MatMul/Gemm layers with ReLU, sigmoid, tanh or softmax, as scikit-learn's
//! exporters write them) does not run through tract's plan: [`dense`] recognises its layers at
//! load and scores them with Podium's own kernels, after checking on a few rows that it agrees
//! with tract's plan. Every other graph runs through the plan.
//!
//! An ONNX file does not name Podium's features: `model.toml`'s `inputs` give their names and
//! order, and the graph's input width must equal their number. This module does not support
//! graphs with several inputs, string or integer inputs, or outputs that are not numeric tensors
//! (ZipMap's sequence of maps is read as the probability tensor it wraps, see [`ops`]).

pub mod dense;
pub mod ops;

use crate::error::ModelError;
use crate::manifest::OutputSpec;
use crate::{Columns, Runtime};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tract_onnx::pb::{self, type_proto, GraphProto, ModelProto};
use tract_onnx::tract_hir::internal as tract;
use tract_onnx::tract_hir::internal::{
    DatumExt, DimLike, Framework, InferenceModelExt, IntoRunnable, IntoTValue, TValue, TVec,
    Tensor, TypedFact,
};
use tract_onnx::Onnx;

/// ONNX `TensorProto.DataType` codes Podium reads as scores or feeds as input.
const ONNX_FLOAT: i32 = 1;
const ONNX_FLOAT16: i32 = 10;
const ONNX_DOUBLE: i32 = 11;
const ONNX_BFLOAT16: i32 = 16;

/// Operator domains tract and Podium implement: the standard one, ONNX-ML, and the Microsoft
/// contrib operators tract ships.
const DOMAINS: &[&str] = &["", "ai.onnx", "ai.onnx.ml", "com.microsoft"];

/// tract's ONNX front end with Podium's kernels registered, replacing tract's of the same name.
pub fn framework() -> Onnx {
    let mut onnx = tract_onnx::onnx();
    ops::register(&mut onnx.op_register);
    onnx
}

/// Most plan states kept per runtime: about one per thread of a compute pool.
const STATES: usize = 64;

/// How the graph's batch dimension is declared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Batch {
    /// Any number of rows per run.
    Symbolic,
    /// Exactly this many rows per run.
    Fixed(usize),
}

/// Element type of the graph's input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum InputType {
    F32,
    F64,
}

/// A loaded ONNX graph, bound to `width` inputs and one output column.
pub struct OnnxRuntime {
    plan: Arc<tract::TypedSimplePlan>,
    /// Run states of the plan, kept between runs instead of built afresh by each (up to
    /// [`STATES`]; a run takes one out while it computes, so threads never share one).
    states: Mutex<Vec<tract::TypedSimpleState>>,
    source: PathBuf,
    width: usize,
    input_type: InputType,
    batch: Batch,
    output: String,
    output_width: usize,
    column: usize,
    /// The dense fast path, where the graph is one [`dense`] recognises; otherwise why not.
    dense: Result<dense::DenseGraph, String>,
}

impl std::fmt::Debug for OnnxRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxRuntime")
            .field("source", &self.source)
            .field("width", &self.width)
            .field("input_type", &self.input_type)
            .field("batch", &self.batch)
            .field("output", &self.output)
            .field("column", &self.column)
            .field("nodes", &self.plan.model().nodes().len())
            .field("dense", &self.dense.as_ref().map(|d| d.shape()))
            .finish()
    }
}

/// Loads `path` for a manifest with `inputs` features and this output reading.
pub fn read(path: &Path, inputs: usize, output: &OutputSpec) -> Result<OnnxRuntime, ModelError> {
    let bytes = std::fs::read(path).map_err(|e| ModelError::io(path, e))?;
    let onnx = framework();
    let proto = onnx
        .proto_model_for_read(&mut &bytes[..])
        .map_err(|e| ModelError::parse(path, format!("not an ONNX model: {e:#}")))?;
    let graph = proto
        .graph
        .as_ref()
        .filter(|g| !g.node.is_empty() || !g.output.is_empty())
        .ok_or_else(|| ModelError::parse(path, "not an ONNX model: it holds no graph"))?;
    check_operators(path, &onnx, graph)?;
    check_outputs_defined(path, graph)?;
    let source = GraphInput::find(path, graph, inputs)?;
    let output_name = choose_output(path, graph, output)?;
    guarded(path, "loading", || {
        build(path, &onnx, &proto, source, output_name, output.column)
    })
}

/// Runs tract code that may panic on inputs it did not expect (it indexes maps by names taken
/// from the file), turning a panic into an error that names the file.
fn guarded<T>(
    path: &Path,
    what: &str,
    f: impl FnOnce() -> Result<T, ModelError>,
) -> Result<T, ModelError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".to_string());
        Err(ModelError::parse(
            path,
            format!("tract failed while {what} the graph: {message}"),
        ))
    })
}

/// Refuses a graph output that no node, input or initializer defines (tract would panic on it).
fn check_outputs_defined(path: &Path, graph: &GraphProto) -> Result<(), ModelError> {
    for output in &graph.output {
        let defined = graph.input.iter().any(|i| i.name == output.name)
            || graph.initializer.iter().any(|t| t.name == output.name)
            || graph
                .node
                .iter()
                .any(|n| n.output.iter().any(|o| o == &output.name));
        if !defined {
            return Err(ModelError::parse(
                path,
                format!("graph output {:?} is not produced by any node", output.name),
            ));
        }
    }
    Ok(())
}

/// Refuses the first node (searching subgraphs too) whose operator nothing implements.
fn check_operators(path: &Path, onnx: &Onnx, graph: &GraphProto) -> Result<(), ModelError> {
    for node in &graph.node {
        let domain = if node.domain.is_empty() {
            "ai.onnx"
        } else {
            node.domain.as_str()
        };
        if !DOMAINS.contains(&node.domain.as_str())
            || !onnx.op_register.0.contains_key(&node.op_type)
        {
            return Err(ModelError::Unsupported(format!(
                "{}: node {:?} uses operator {}:{}, which Podium's ONNX runtime does not implement",
                path.display(),
                node.name,
                domain,
                node.op_type
            )));
        }
        for attribute in &node.attribute {
            if let Some(g) = &attribute.g {
                check_operators(path, onnx, g)?;
            }
        }
    }
    Ok(())
}

/// The graph's single fed input: its name, element type and declared batch.
#[derive(Debug)]
struct GraphInput {
    name: String,
    input_type: InputType,
    batch: Batch,
    width: usize,
}

impl GraphInput {
    fn find(path: &Path, graph: &GraphProto, inputs: usize) -> Result<Self, ModelError> {
        // Initializers may also be listed as inputs (IR < 4); they are weights, not features.
        let fed: Vec<&pb::ValueInfoProto> = graph
            .input
            .iter()
            .filter(|i| !graph.initializer.iter().any(|t| t.name == i.name))
            .collect();
        let [input] = fed.as_slice() else {
            let names: Vec<&str> = fed.iter().map(|i| i.name.as_str()).collect();
            return Err(ModelError::Unsupported(format!(
                "{}: the graph takes {} inputs ({}); Podium feeds exactly one [batch, features] tensor",
                path.display(),
                fed.len(),
                names.join(", ")
            )));
        };
        let Some(type_proto::Value::TensorType(tensor)) =
            input.r#type.as_ref().and_then(|t| t.value.as_ref())
        else {
            return Err(ModelError::Unsupported(format!(
                "{}: graph input {:?} is not a tensor",
                path.display(),
                input.name
            )));
        };
        let input_type = match tensor.elem_type {
            ONNX_FLOAT => InputType::F32,
            ONNX_DOUBLE => InputType::F64,
            other => {
                return Err(ModelError::Unsupported(format!(
                "{}: graph input {:?} has ONNX element type {other}; Podium feeds float or double",
                path.display(),
                input.name
            )))
            }
        };
        let dims: Vec<Option<i64>> = tensor
            .shape
            .as_ref()
            .map(|s| {
                s.dim
                    .iter()
                    .map(|d| match d.value {
                        Some(pb::tensor_shape_proto::dimension::Value::DimValue(v)) => Some(v),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let [batch, width] = dims.as_slice() else {
            return Err(ModelError::Unsupported(format!(
                "{}: graph input {:?} has rank {}; Podium feeds [batch, features]",
                path.display(),
                input.name,
                dims.len()
            )));
        };
        let batch = match *batch {
            Some(b) if b > 0 => Batch::Fixed(b as usize),
            _ => Batch::Symbolic,
        };
        let width = match *width {
            Some(w) if w != inputs as i64 => {
                return Err(ModelError::Schema(format!(
                    "{}: graph input {:?} has {w} features, but model.toml lists {inputs} inputs",
                    path.display(),
                    input.name
                )))
            }
            _ => inputs,
        };
        Ok(Self {
            name: input.name.clone(),
            input_type,
            batch,
            width,
        })
    }
}

/// The output named in the manifest, or the first one that can hold scores.
fn choose_output(path: &Path, graph: &GraphProto, spec: &OutputSpec) -> Result<String, ModelError> {
    let names = || {
        graph
            .output
            .iter()
            .map(|o| o.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if let Some(name) = &spec.tensor {
        return if graph.output.iter().any(|o| &o.name == name) {
            Ok(name.clone())
        } else {
            Err(ModelError::Schema(format!(
                "{}: model.toml reads output {name:?}, but the graph's outputs are: {}",
                path.display(),
                names()
            )))
        };
    }
    // A declared integer, string or boolean tensor is a label; an undeclared type is ZipMap's
    // sequence of maps (which prost cannot represent), read as the probabilities it wraps.
    graph
        .output
        .iter()
        .find(|o| match o.r#type.as_ref().and_then(|t| t.value.as_ref()) {
            Some(type_proto::Value::TensorType(t)) => matches!(
                t.elem_type,
                ONNX_FLOAT | ONNX_FLOAT16 | ONNX_DOUBLE | ONNX_BFLOAT16
            ),
            None => true,
        })
        .map(|o| o.name.clone())
        .ok_or_else(|| {
            ModelError::Schema(format!(
                "{}: no graph output holds floating-point scores (outputs: {}); set output.tensor",
                path.display(),
                names()
            ))
        })
}

/// Types, prunes and optimises the graph for the chosen input and output, and plans it.
fn build(
    path: &Path,
    onnx: &Onnx,
    proto: &ModelProto,
    input: GraphInput,
    output: String,
    column: Option<usize>,
) -> Result<OnnxRuntime, ModelError> {
    let fail = |what: &str, e: tract::TractError| {
        ModelError::parse(
            path,
            format!("{what} (input {:?}, output {output:?}): {e:#}", input.name),
        )
    };
    let dir = path.parent().and_then(Path::to_str);
    let parsed = onnx
        .parse(proto, dir)
        .map_err(|e| fail("cannot read the graph", e))?;
    if !parsed.unresolved_inputs.is_empty() {
        return Err(ModelError::parse(
            path,
            format!(
                "the graph reads values nothing defines: {}",
                parsed.unresolved_inputs.join(", ")
            ),
        ));
    }
    let mut model = parsed.model;
    let batch_dim = match input.batch {
        Batch::Symbolic => tract::TDim::from(model.sym("N")),
        Batch::Fixed(b) => tract::TDim::from(b),
    };
    let shape = [batch_dim.clone(), tract::TDim::from(input.width)];
    let fact = match input.input_type {
        InputType::F32 => f32::fact(shape),
        InputType::F64 => f64::fact(shape),
    };
    let outlet = *parsed
        .outlets_by_name
        .get(&output)
        .ok_or_else(|| ModelError::parse(path, format!("output {output:?} is not wired")))?;
    model
        .set_input_fact(0, fact.into())
        .and_then(|_| model.select_output_outlets(&[outlet]))
        .map_err(|e| fail("cannot bind the input", e))?;
    let typed = model.into_optimized().map_err(|e| {
        fail(
            &format!(
                "cannot type the graph for {} features (the inputs model.toml lists)",
                input.width
            ),
            e,
        )
    })?;
    let out_fact: TypedFact = typed
        .output_fact(0)
        .map_err(|e| fail("cannot read the output type", e))?
        .clone();
    let (output_width, column) = output_column(path, &output, &out_fact, &batch_dim, column)?;
    let plan = typed
        .into_runnable()
        .map_err(|e| fail("cannot plan the graph", e))?;
    let mut runtime = OnnxRuntime {
        plan,
        source: path.to_path_buf(),
        width: input.width,
        input_type: input.input_type,
        batch: input.batch,
        output,
        output_width,
        column,
        dense: Err("double-precision input".into()),
        states: Mutex::new(Vec::new()),
    };
    if let (InputType::F32, Some(graph)) = (input.input_type, &proto.graph) {
        runtime.dense =
            dense::DenseGraph::recognise(graph, &input.name, input.width, &runtime.output, column)
                .and_then(|d| {
                    if runtime.agrees_with_plan(&d) {
                        Ok(d)
                    } else {
                        Err("it disagreed with tract's plan on probe rows".into())
                    }
                });
    }
    Ok(runtime)
}

/// Checks the output is `[batch]` or `[batch, K]` of floats; returns K and the column to read.
fn output_column(
    path: &Path,
    name: &str,
    fact: &TypedFact,
    batch: &tract::TDim,
    column: Option<usize>,
) -> Result<(usize, usize), ModelError> {
    let err =
        |what: String| ModelError::Schema(format!("{}: output {name:?} {what}", path.display()));
    if !fact.datum_type.is_float() {
        return Err(err(format!(
            "holds {:?} values, not scores; set output.tensor",
            fact.datum_type
        )));
    }
    let shape: Vec<tract::TDim> = fact.shape.iter().cloned().collect();
    if shape.first() != Some(batch) || shape.len() > 2 {
        return Err(err(format!(
            "has shape {:?}; Podium reads [batch] or [batch, columns]",
            shape
        )));
    }
    let width = match shape.get(1) {
        None => 1,
        Some(d) => d
            .to_usize()
            .map_err(|_| err(format!("has a symbolic column count {d}")))?,
    };
    let column = match column {
        Some(c) if c < width => c,
        Some(c) => {
            return Err(err(format!(
                "has {width} columns; output.column = {c} is out of range"
            )))
        }
        None if width == 1 => 0,
        None if width == 2 => 1,
        None => {
            return Err(err(format!(
                "has {width} columns; set output.column to choose one"
            )))
        }
    };
    Ok((width, column))
}

impl OnnxRuntime {
    /// The model file this runtime was loaded from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// Name of the graph output read.
    pub fn output_name(&self) -> &str {
        &self.output
    }

    /// Index into the output's last dimension that is read.
    pub fn column(&self) -> usize {
        self.column
    }

    /// The layers of the dense fast path (`64 → 256 relu → 128 relu → 1 sigmoid`), if the graph
    /// runs on it.
    pub fn dense_layers(&self) -> Option<String> {
        self.dense.as_ref().ok().map(|d| d.shape())
    }

    /// Runs rows `start..start + rows` of `input`, padded with zero rows to `run_rows`.
    fn run_chunk(
        &self,
        input: &Columns<'_>,
        start: usize,
        rows: usize,
        run_rows: usize,
        out: &mut [f32],
    ) -> Result<(), ModelError> {
        let w = self.width;
        // Gathered straight into the tensor's (zeroed, so padding rows are zero) buffer.
        let tensor = match self.input_type {
            InputType::F32 => Self::gathered::<f32>(input, start, rows, run_rows, w, |v| v),
            InputType::F64 => Self::gathered::<f64>(input, start, rows, run_rows, w, f64::from),
        }
        .map_err(|e| self.run_error(e))?;
        let inputs: TVec<TValue> = std::iter::once(tensor.into_tvalue()).collect();
        let outputs = guarded(&self.source, "running", || {
            self.run_plan_state(inputs).map_err(|e| self.run_error(e))
        })?;
        let result = outputs[0].cast_to::<f32>().map_err(|e| self.run_error(e))?;
        let values = result
            .try_as_plain_ram()
            .and_then(|v| v.as_slice::<f32>())
            .map_err(|e| self.run_error(e))?;
        if values.len() != run_rows * self.output_width {
            return Err(ModelError::Input(format!(
                "{}: output {:?} has shape {:?} for {run_rows} rows",
                self.source.display(),
                self.output,
                result.shape()
            )));
        }
        for (r, o) in out.iter_mut().enumerate() {
            *o = values[r * self.output_width + self.column];
        }
        Ok(())
    }

    /// Whether the dense fast path computes what the plan does, to 1e-4 (relative above 1), on
    /// a few pseudo-random rows: a guard against a graph it misreads, not the parity test.
    fn agrees_with_plan(&self, dense: &dense::DenseGraph) -> bool {
        const ROWS: usize = 7;
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let columns: Vec<Vec<f32>> = (0..self.width)
            .map(|_| {
                (0..ROWS)
                    .map(|_| {
                        state = state
                            .wrapping_mul(6_364_136_223_846_793_005)
                            .wrapping_add(1_442_695_040_888_963_407);
                        ((state >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
                    })
                    .collect()
            })
            .collect();
        let slices: Vec<&[f32]> = columns.iter().map(Vec::as_slice).collect();
        let Ok(input) = Columns::new(&slices, ROWS) else {
            return false;
        };
        let (mut want, mut got) = (vec![0.0f32; ROWS], vec![0.0f32; ROWS]);
        if self.run_plan(&input, &mut want).is_err() {
            return false;
        }
        if dense.predict(&input, &mut got).is_err() {
            return false;
        }
        want.iter()
            .zip(&got)
            .all(|(&w, &g)| (w.is_nan() && g.is_nan()) || (w - g).abs() <= 1e-4 * w.abs().max(1.0))
    }

    /// Scores `input` with tract's plan.
    fn run_plan(&self, input: &Columns<'_>, out: &mut [f32]) -> Result<(), ModelError> {
        let rows = input.rows();
        match self.batch {
            Batch::Symbolic => self.run_chunk(input, 0, rows, rows, out),
            Batch::Fixed(b) => {
                for (i, chunk) in out.chunks_mut(b).enumerate() {
                    let n = chunk.len();
                    self.run_chunk(input, i * b, n, b, chunk)?;
                }
                Ok(())
            }
        }
    }

    /// Rows `start..start + rows` of `input` as a row-major `[run_rows, w]` tensor, zero-padded.
    fn gathered<T: tract::Datum + Copy + tract::tract_num_traits::Zero>(
        input: &Columns<'_>,
        start: usize,
        rows: usize,
        run_rows: usize,
        w: usize,
        convert: impl Fn(f32) -> T,
    ) -> tract::TractResult<Tensor> {
        let mut tensor = Tensor::zero::<T>(&[run_rows, w])?;
        {
            let mut view = tensor.try_as_plain_ram_mut()?;
            let data = view.as_slice_mut::<T>()?;
            for c in 0..w {
                for (r, &v) in input.column(c)[start..start + rows].iter().enumerate() {
                    data[r * w + c] = convert(v);
                }
            }
        }
        Ok(tensor)
    }

    /// Runs the plan in a kept state (or a new one when none is free). A state is kept again only
    /// after a run that succeeded.
    fn run_plan_state(&self, inputs: TVec<TValue>) -> tract::TractResult<TVec<TValue>> {
        let kept = self.states.lock().ok().and_then(|mut s| s.pop());
        let mut state = match kept {
            Some(state) => state,
            None => self.plan.spawn()?,
        };
        let outputs = state.run(inputs)?;
        if let Ok(mut states) = self.states.lock() {
            if states.len() < STATES {
                states.push(state);
            }
        }
        Ok(outputs)
    }

    fn run_error(&self, e: tract::TractError) -> ModelError {
        ModelError::Input(format!("{}: {e:#}", self.source.display()))
    }
}

impl Runtime for OnnxRuntime {
    fn num_inputs(&self) -> usize {
        self.width
    }

    fn predict_raw(&self, input: &Columns<'_>, out: &mut [f32]) -> Result<(), ModelError> {
        if input.width() != self.width || out.len() != input.rows() {
            return Err(ModelError::Input(format!(
                "{}: takes {} inputs and one output per row, got {} inputs, {} rows, {} outputs",
                self.source.display(),
                self.width,
                input.width(),
                input.rows(),
                out.len()
            )));
        }
        if input.rows() == 0 {
            return Ok(());
        }
        match &self.dense {
            Ok(dense) => dense
                .predict(input, out)
                .map_err(|e| ModelError::Input(format!("{}: {e}", self.source.display()))),
            Err(_) => self.run_plan(input, out),
        }
    }

    fn describe(&self) -> String {
        match &self.dense {
            Ok(d) => format!("ONNX dense MLP {} (Podium kernels)", d.shape()),
            Err(why) => format!(
                "ONNX graph, {} nodes, run by tract (not on the dense MLP path: {why})",
                self.plan.model().nodes().len()
            ),
        }
    }
}
