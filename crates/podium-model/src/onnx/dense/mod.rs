//! A fast path for dense MLP graphs: the layers are recognised in the ONNX graph at load, their
//! weights packed once, and scoring runs them with Podium's own kernels ([`gemm`]) instead of
//! tract's plan.
//!
//! tract runs such a graph correctly, but on one thread it loses to onnxruntime: at batch 100 its
//! matmul packs the activations on every run and picks its tiles for an unknown batch, and at
//! batch 1 the plan's per-run bookkeeping costs more than the arithmetic. Here a batch is
//! gathered once into a row-major buffer (imputing missing values on the way when the graph starts
//! with an `Imputer`), each layer is one call to a kernel that reads the rows in place and adds
//! bias and ReLU in its epilogue, and the scratch buffers are kept per thread between calls.
//!
//! What is recognised, walking back from the output the manifest reads: `MatMul` by a constant
//! `[k, n]` matrix, optionally followed by `Add` of a constant bias; `Gemm` with constant `B` and
//! `C` (`transA = 0`); `Relu`, `Sigmoid`, `Tanh` and `Softmax` (last axis) on a layer's output;
//! `Identity`, `Cast` to float, a `Reshape` that keeps `[batch, width]` (or flattens one column
//! to `[batch]`); an `Imputer` on the graph input; and, on a layer's columns, `Concat` along
//! columns and subtracting from or adding a constant scalar (skl2onnx's binary head: `[1 - p, p]`).
//! Anything else, a double-precision graph, or weights held outside the file, and the graph is
//! left to tract. [`DenseGraph::recognise`] only builds the program; `onnx::build` also checks it
//! against tract's plan on a few rows before using it.

pub mod gemm;

use crate::Columns;
use gemm::{floats_mut, padded, Dense, Line, NR};
use std::cell::RefCell;
use std::collections::HashMap;
use tract_onnx::pb::{tensor_proto, GraphProto, NodeProto, TensorProto};
use tract_onnx::prelude::tract_linalg::{element_wise::ElementWise, Func};

const ONNX_FLOAT: i32 = 1;
const ONNX_INT64: i32 = 7;

/// Rows scored per pass: bounds the per-thread scratch (`BLOCK` rows of every layer's output:
/// 464 KiB for the standard MLP, kept for the thread's life) and keeps a pass's activations in
/// L2.
const BLOCK: usize = 256;

/// What follows a layer's `A · W + b`.
#[derive(Debug)]
enum Act {
    None,
    /// Fused into the kernel's epilogue.
    Relu,
    /// tract's vectorised routine (the one its plan runs for `Sigmoid` and `Tanh`).
    Routine(&'static str, Box<dyn ElementWise<f32>>),
    Softmax,
}

/// One buffer of `[rows, width]` values: the (imputed) input, or a layer's output.
#[derive(Debug)]
struct Slot {
    width: usize,
    /// Row stride in the scratch buffer: `width` rounded up to whole panels.
    stride: usize,
    /// Where the slot starts, in floats per row of the block (the sum of the earlier strides).
    base: usize,
    /// The layer computing it from an earlier slot, none for the input.
    layer: Option<(usize, Dense)>,
    act: Act,
}

/// One output column as a function of one slot column: `offset + x` or `offset - x`.
#[derive(Clone, Copy, Debug, PartialEq)]
struct ColExpr {
    slot: usize,
    col: usize,
    negate: bool,
    offset: f32,
}

impl ColExpr {
    fn eval(&self, x: f32) -> f32 {
        match (self.negate, self.offset == 0.0) {
            (false, true) => x,
            (false, false) => self.offset + x,
            (true, _) => self.offset - x,
        }
    }
}

/// A graph value while recognising: a whole slot, or columns derived from slots.
#[derive(Clone, Debug)]
enum Value {
    Slot(usize),
    Cols(Vec<ColExpr>),
}

/// How missing inputs are replaced before the first layer, as the `Imputer` kernel does.
#[derive(Clone, Debug)]
struct Impute {
    replaced: f32,
    /// One value per input column.
    values: Vec<f32>,
}

impl Impute {
    fn apply(&self, col: usize, v: f32) -> f32 {
        if (v.is_nan() && self.replaced.is_nan()) || v == self.replaced {
            self.values[col]
        } else {
            v
        }
    }
}

/// A dense MLP recognised in an ONNX graph, ready to score.
#[derive(Debug)]
pub struct DenseGraph {
    impute: Option<Impute>,
    /// Slot 0 is the input; every later slot is a layer over an earlier one, in order.
    slots: Vec<Slot>,
    read: ColExpr,
    /// Floats per row of a block, all slots together.
    row_floats: usize,
}

thread_local! {
    /// Per-thread scratch for [`DenseGraph::predict`], shared by every graph run on the thread.
    static SCRATCH: RefCell<Vec<Line>> = const { RefCell::new(Vec::new()) };
}

impl DenseGraph {
    /// Recognises the computation of column `column` of `output` from the graph's one `input`
    /// (`width` floats per row), or says why not.
    pub fn recognise(
        graph: &GraphProto,
        input: &str,
        width: usize,
        output: &str,
        column: usize,
    ) -> Result<Self, String> {
        let mut r = Recogniser::new(graph, input, width);
        let read = match r.value(output)? {
            Value::Slot(s) => {
                if column >= r.slots[s].width {
                    return Err(format!(
                        "column {column} of a {}-wide value",
                        r.slots[s].width
                    ));
                }
                ColExpr {
                    slot: s,
                    col: column,
                    negate: false,
                    offset: 0.0,
                }
            }
            Value::Cols(cols) => *cols
                .get(column)
                .ok_or_else(|| format!("column {column} of a {}-wide value", cols.len()))?,
        };
        if r.slots.len() < 2 {
            return Err("no dense layer".into());
        }
        let row_floats = r.slots.iter().map(|s| s.stride).sum();
        Ok(Self {
            impute: r.impute,
            slots: r.slots,
            read,
            row_floats,
        })
    }

    /// The layers' widths and activations, input first (`64 → 256 relu → 128 relu → 1 sigmoid`).
    pub fn shape(&self) -> String {
        self.slots
            .iter()
            .map(|s| match &s.act {
                Act::None => s.width.to_string(),
                Act::Relu => format!("{} relu", s.width),
                Act::Routine(name, _) => format!("{} {name}", s.width),
                Act::Softmax => format!("{} softmax", s.width),
            })
            .collect::<Vec<_>>()
            .join(" → ")
    }

    /// Scores every row of `input` into `out` (one value per row).
    pub fn predict(&self, input: &Columns<'_>, out: &mut [f32]) -> Result<(), String> {
        SCRATCH.with(|cell| match cell.try_borrow_mut() {
            Ok(mut scratch) => self.predict_with(&mut scratch, input, out),
            // Only reachable if scoring re-entered itself on this thread; never share then.
            Err(_) => self.predict_with(&mut Vec::new(), input, out),
        })
    }

    fn predict_with(
        &self,
        scratch: &mut Vec<Line>,
        input: &Columns<'_>,
        out: &mut [f32],
    ) -> Result<(), String> {
        let rows = input.rows();
        let lines = rows.min(BLOCK) * self.row_floats / NR;
        if scratch.len() < lines {
            scratch.resize(lines, Line::default());
        }
        let buf = floats_mut(scratch);
        let mut start = 0;
        while start < rows {
            let m = (rows - start).min(BLOCK);
            self.gather(input, start, m, buf);
            for slot in &self.slots[1..] {
                let (before, rest) = buf.split_at_mut(slot.base * m);
                let dst = &mut rest[..slot.stride * m];
                if let Some((src, dense)) = &slot.layer {
                    let src = &self.slots[*src];
                    let a = &before[src.base * m..(src.base + src.stride) * m];
                    dense.run(a, src.stride, m, dst, slot.stride);
                }
                match &slot.act {
                    Act::None | Act::Relu => {}
                    // Over the padding columns too, which nothing reads.
                    Act::Routine(name, routine) => routine
                        .run(dst)
                        .map_err(|e| format!("{name} routine: {e}"))?,
                    Act::Softmax => dst
                        .chunks_exact_mut(slot.stride)
                        .for_each(|row| softmax(&mut row[..slot.width])),
                }
            }
            let slot = &self.slots[self.read.slot];
            let values = &buf[slot.base * m..(slot.base + slot.stride) * m];
            for (o, row) in out[start..start + m]
                .iter_mut()
                .zip(values.chunks_exact(slot.stride))
            {
                *o = self.read.eval(row[self.read.col]);
            }
            start += m;
        }
        Ok(())
    }

    /// Writes rows `start..start + m` of the column-major input, row-major, into slot 0.
    fn gather(&self, input: &Columns<'_>, start: usize, m: usize, buf: &mut [f32]) {
        let stride = self.slots[0].stride;
        let dst = &mut buf[..stride * m];
        for c in 0..input.width() {
            let column = &input.column(c)[start..start + m];
            match &self.impute {
                None => {
                    for (row, &v) in dst.chunks_exact_mut(stride).zip(column) {
                        row[c] = v;
                    }
                }
                Some(impute) => {
                    for (row, &v) in dst.chunks_exact_mut(stride).zip(column) {
                        row[c] = impute.apply(c, v);
                    }
                }
            }
        }
    }
}

/// onnxruntime's softmax: shift by the maximum, exponentiate, scale by the reciprocal sum.
fn softmax(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let scale = 1.0 / sum;
    row.iter_mut().for_each(|v| *v *= scale);
}

/// Walks the graph back from the output, building slots.
struct Recogniser<'g> {
    input: &'g str,
    producers: HashMap<&'g str, &'g NodeProto>,
    initializers: HashMap<&'g str, &'g TensorProto>,
    consumers: HashMap<&'g str, usize>,
    memo: HashMap<String, Value>,
    slots: Vec<Slot>,
    impute: Option<Impute>,
    /// Slots whose layer has neither bias nor activation yet, so an `Add` may still fold in.
    bare: Vec<usize>,
    depth: usize,
}

impl<'g> Recogniser<'g> {
    fn new(graph: &'g GraphProto, input: &'g str, width: usize) -> Self {
        let mut producers = HashMap::new();
        let mut consumers: HashMap<&str, usize> = HashMap::new();
        for node in &graph.node {
            for o in &node.output {
                producers.insert(o.as_str(), node);
            }
            for i in &node.input {
                *consumers.entry(i.as_str()).or_default() += 1;
            }
        }
        for o in &graph.output {
            *consumers.entry(o.name.as_str()).or_default() += 1;
        }
        let initializers = graph
            .initializer
            .iter()
            .map(|t| (t.name.as_str(), t))
            .collect();
        Self {
            input,
            producers,
            initializers,
            consumers,
            memo: HashMap::new(),
            slots: vec![Slot {
                width,
                stride: padded(width),
                base: 0,
                layer: None,
                act: Act::None,
            }],
            impute: None,
            bare: Vec::new(),
            depth: 0,
        }
    }

    fn value(&mut self, name: &str) -> Result<Value, String> {
        if let Some(v) = self.memo.get(name) {
            return Ok(v.clone());
        }
        self.depth += 1;
        if self.depth > 256 {
            return Err("graph too deep".into());
        }
        let v = self.compute(name)?;
        self.depth -= 1;
        self.memo.insert(name.to_string(), v.clone());
        Ok(v)
    }

    /// Whether `name` is read by exactly one node (so a later op may be folded into it).
    fn single_use(&self, name: &str) -> bool {
        self.consumers.get(name) == Some(&1)
    }

    fn compute(&mut self, name: &str) -> Result<Value, String> {
        if name == self.input {
            return Ok(Value::Slot(0));
        }
        let node = *self
            .producers
            .get(name)
            .ok_or_else(|| format!("{name:?} is not computed from the input"))?;
        let op = node.op_type.as_str();
        let domain = node.domain.as_str();
        let inputs: Vec<&str> = node.input.iter().map(String::as_str).collect();
        if node.output.first().map(String::as_str) != Some(name) {
            return Err(format!("{op} output {name:?} is not its first"));
        }
        let arity = |n: usize| -> Result<(), String> {
            if inputs.len() == n && inputs.iter().all(|i| !i.is_empty()) {
                Ok(())
            } else {
                Err(format!("{op} with {} inputs", inputs.len()))
            }
        };
        match (domain, op) {
            ("" | "ai.onnx", "Identity") => {
                arity(1)?;
                self.value(inputs[0])
            }
            ("" | "ai.onnx", "Cast") => {
                arity(1)?;
                match int_attr(node, "to") {
                    Some(i) if i == i64::from(ONNX_FLOAT) => self.value(inputs[0]),
                    _ => Err("Cast to a type other than float".into()),
                }
            }
            ("ai.onnx.ml", "Imputer") => {
                arity(1)?;
                self.imputer(node, inputs[0])
            }
            ("" | "ai.onnx", "MatMul") => {
                arity(2)?;
                let x = self.slot_input(inputs[0])?;
                let k = self.slots[x].width;
                let (dims, w) = self.floats(inputs[1])?;
                let &[rows, n] = dims.as_slice() else {
                    return Err(format!("MatMul by a constant of shape {dims:?}"));
                };
                if rows != k {
                    return Err(format!("MatMul of a {k}-wide value by {dims:?}"));
                }
                let s = self.push_layer(x, Dense::new(&w, k, n, None, false));
                self.bare.push(s);
                Ok(Value::Slot(s))
            }
            ("" | "ai.onnx", "Gemm") => self.gemm(node, &inputs),
            ("" | "ai.onnx", "Add" | "Sub") => {
                arity(2)?;
                self.add_or_sub(op == "Sub", inputs[0], inputs[1])
            }
            ("" | "ai.onnx", "Relu" | "Sigmoid" | "Tanh" | "Softmax") => {
                arity(1)?;
                if op == "Softmax" && !matches!(int_attr(node, "axis"), None | Some(1) | Some(-1)) {
                    return Err("Softmax along the batch".into());
                }
                let s = self.slot_input(inputs[0])?;
                if s == 0 || !matches!(self.slots[s].act, Act::None) || !self.single_use(inputs[0])
                {
                    return Err(format!("{op} that is not a layer's only activation"));
                }
                self.bare.retain(|&b| b != s);
                self.slots[s].act = match op {
                    "Relu" => {
                        if let Some((_, dense)) = &mut self.slots[s].layer {
                            dense.set_relu();
                        }
                        Act::Relu
                    }
                    "Softmax" => Act::Softmax,
                    "Sigmoid" => routine("sigmoid", Func::Sigmoid)?,
                    _ => routine("tanh", Func::Tanh)?,
                };
                self.memo.remove(inputs[0]);
                Ok(Value::Slot(s))
            }
            ("" | "ai.onnx", "Reshape") => {
                if inputs.len() != 2 {
                    return Err("Reshape without a shape".into());
                }
                let v = self.value(inputs[0])?;
                let w = self.width(&v);
                let shape = self.ints(inputs[1])?;
                let allow_zero = int_attr(node, "allowzero").unwrap_or(0) != 0;
                let keeps = match shape.as_slice() {
                    [b, c] => {
                        (*b == -1 || (*b == 0 && !allow_zero))
                            && (*c == w as i64 || (*c == -1 && *b == 0 && !allow_zero))
                    }
                    [b] => *b == -1 && w == 1,
                    _ => false,
                };
                if keeps {
                    Ok(v)
                } else {
                    Err(format!("Reshape of a {w}-wide value to {shape:?}"))
                }
            }
            ("" | "ai.onnx", "Concat") => {
                if !matches!(int_attr(node, "axis"), Some(1) | Some(-1)) {
                    return Err("Concat along the batch".into());
                }
                let mut cols = Vec::new();
                for i in &inputs {
                    let v = self.value(i)?;
                    cols.extend(self.columns(&v));
                }
                Ok(Value::Cols(cols))
            }
            _ => Err(format!("operator {domain}:{op}")),
        }
    }

    fn width(&self, v: &Value) -> usize {
        match v {
            Value::Slot(s) => self.slots[*s].width,
            Value::Cols(c) => c.len(),
        }
    }

    fn columns(&self, v: &Value) -> Vec<ColExpr> {
        match v {
            Value::Slot(s) => (0..self.slots[*s].width)
                .map(|col| ColExpr {
                    slot: *s,
                    col,
                    negate: false,
                    offset: 0.0,
                })
                .collect(),
            Value::Cols(c) => c.clone(),
        }
    }

    /// The value named `name`, which must be a whole slot (the input of a layer).
    fn slot_input(&mut self, name: &str) -> Result<usize, String> {
        match self.value(name)? {
            Value::Slot(s) => Ok(s),
            Value::Cols(_) => Err(format!("{name:?} feeds a layer but is not one")),
        }
    }

    fn push_layer(&mut self, src: usize, dense: Dense) -> usize {
        let last = self.slots.last().expect("the input slot");
        let base = last.base + last.stride;
        self.slots.push(Slot {
            width: dense.n(),
            stride: padded(dense.n()),
            base,
            layer: Some((src, dense)),
            act: Act::None,
        });
        self.slots.len() - 1
    }

    fn imputer(&mut self, node: &NodeProto, x: &str) -> Result<Value, String> {
        // Imputing while gathering the input is right only if every read of the input goes
        // through this Imputer: a chain of single-use values (Cast, Identity) from the input.
        let through = matches!(self.value(x)?, Value::Slot(0));
        if !through || !self.only_path_from_input(x) || self.impute.is_some() {
            return Err("an Imputer that is not the graph input's only reader".into());
        }
        let attr = |n: &str| node.attribute.iter().find(|a| a.name == n);
        let values = attr("imputed_value_floats")
            .map(|a| a.floats.clone())
            .filter(|v| !v.is_empty())
            .ok_or("an Imputer without float values")?;
        if attr("imputed_value_int64s").is_some_and(|a| !a.ints.is_empty()) {
            return Err("an Imputer with both float and integer values".into());
        }
        let replaced = attr("replaced_value_float").map_or(0.0, |a| a.f);
        let width = self.slots[0].width;
        // As Podium's Imputer kernel (and onnxruntime): per-column values only when there is
        // exactly one per column, otherwise the first everywhere.
        let values = if values.len() == width {
            values
        } else {
            vec![values[0]; width]
        };
        self.impute = Some(Impute { replaced, values });
        Ok(Value::Slot(0))
    }

    /// Whether `name` is the input, or reached from it only through single-use `Cast` and
    /// `Identity` nodes, each value on the way read once.
    fn only_path_from_input(&self, name: &str) -> bool {
        if !self.single_use(name) {
            return false;
        }
        let mut producer = self.producers.get(name).copied();
        if name == self.input {
            return true;
        }
        while let Some(node) = producer {
            let [from] = node.input.as_slice() else {
                return false;
            };
            if !matches!(node.op_type.as_str(), "Cast" | "Identity") || !self.single_use(from) {
                return false;
            }
            if from == self.input {
                return true;
            }
            producer = self.producers.get(from.as_str()).copied();
        }
        false
    }

    fn gemm(&mut self, node: &NodeProto, inputs: &[&str]) -> Result<Value, String> {
        if !(inputs.len() == 2 || inputs.len() == 3) || inputs[..2].iter().any(|i| i.is_empty()) {
            return Err("Gemm without A and B".into());
        }
        if int_attr(node, "transA").unwrap_or(0) != 0 {
            return Err("Gemm with transA".into());
        }
        let alpha = float_attr(node, "alpha").unwrap_or(1.0);
        let beta = float_attr(node, "beta").unwrap_or(1.0);
        let x = self.slot_input(inputs[0])?;
        let k = self.slots[x].width;
        let (dims, mut w) = self.floats(inputs[1])?;
        let n = if int_attr(node, "transB").unwrap_or(0) != 0 {
            if dims.len() != 2 || dims[1] != k {
                return Err(format!("Gemm of a {k}-wide value by {dims:?}ᵀ"));
            }
            let n = dims[0];
            let mut t = vec![0.0; w.len()];
            for j in 0..n {
                for kk in 0..k {
                    t[kk * n + j] = w[j * k + kk];
                }
            }
            w = t;
            n
        } else {
            if dims.len() != 2 || dims[0] != k {
                return Err(format!("Gemm of a {k}-wide value by {dims:?}"));
            }
            dims[1]
        };
        if n == 0 {
            return Err("Gemm with no output".into());
        }
        if alpha != 1.0 {
            w.iter_mut().for_each(|v| *v *= alpha);
        }
        let bias = match inputs.get(2).filter(|c| !c.is_empty()) {
            Some(c) => {
                let mut b = self.bias(c, n)?;
                if beta != 1.0 {
                    b.iter_mut().for_each(|v| *v *= beta);
                }
                Some(b)
            }
            None => None,
        };
        let s = self.push_layer(x, Dense::new(&w, k, n, bias.as_deref(), false));
        if bias.is_none() {
            self.bare.push(s);
        }
        Ok(Value::Slot(s))
    }

    /// `Add` (either order) or `Sub` (`x - c` or `c - x`) of a value and a constant.
    fn add_or_sub(&mut self, sub: bool, left: &str, right: &str) -> Result<Value, String> {
        let (x, c, c_first) = if self.initializers.contains_key(right) {
            (left, right, false)
        } else if self.initializers.contains_key(left) {
            (right, left, true)
        } else {
            return Err("Add or Sub of two computed values".into());
        };
        let v = self.value(x)?;
        // A bias folded into the layer it follows.
        if let Value::Slot(s) = v {
            if !sub && self.bare.contains(&s) && self.single_use(x) {
                let n = self.slots[s].width;
                let bias = self.bias(c, n)?;
                if let Some((_, dense)) = &mut self.slots[s].layer {
                    dense.set_bias(&bias);
                }
                self.bare.retain(|&b| b != s);
                self.memo.remove(x);
                return Ok(Value::Slot(s));
            }
        }
        // A scalar on derived columns (the binary head's `1 - p`).
        let (dims, values) = self.floats(c)?;
        if dims.iter().product::<usize>() != 1 || dims.len() > 2 {
            return Err(format!(
                "Add or Sub of a {dims:?} constant to a finished layer"
            ));
        }
        let c = values[0];
        let mut cols = self.columns(&v);
        for col in &mut cols {
            if col.offset != 0.0 || col.negate {
                return Err("two constants on one column".into());
            }
            // x + c, c + x, x - c (= x + (-c), exactly), c - x.
            col.offset = if sub && !c_first { -c } else { c };
            col.negate = sub && c_first;
        }
        Ok(Value::Cols(cols))
    }

    /// A constant bias broadcast to `n` columns: shape `[n]`, `[1, n]`, `[1]`, `[1, 1]` or `[]`.
    fn bias(&self, name: &str, n: usize) -> Result<Vec<f32>, String> {
        let (dims, values) = self.floats(name)?;
        match dims.as_slice() {
            [] | [1] | [1, 1] => Ok(vec![values[0]; n]),
            [len] | [1, len] if *len == n => Ok(values),
            _ => Err(format!("a bias of shape {dims:?} for {n} columns")),
        }
    }

    fn tensor(&self, name: &str) -> Result<&'g TensorProto, String> {
        let t = *self
            .initializers
            .get(name)
            .ok_or_else(|| format!("{name:?} is not a constant"))?;
        if t.data_location == Some(tensor_proto::DataLocation::External as i32) {
            return Err(format!("{name:?} is held outside the file"));
        }
        Ok(t)
    }

    fn dims(t: &TensorProto) -> Result<Vec<usize>, String> {
        t.dims
            .iter()
            .map(|&d| usize::try_from(d).map_err(|_| format!("dimension {d}")))
            .collect()
    }

    /// A float constant: its shape and values.
    fn floats(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>), String> {
        let t = self.tensor(name)?;
        if t.data_type != ONNX_FLOAT {
            return Err(format!("{name:?} is not a float constant"));
        }
        let dims = Self::dims(t)?;
        let len: usize = dims.iter().product();
        let values: Vec<f32> = if !t.raw_data.is_empty() {
            t.raw_data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()
        } else {
            t.float_data.clone()
        };
        if values.len() != len || len == 0 {
            return Err(format!(
                "{name:?} holds {} values for {dims:?}",
                values.len()
            ));
        }
        Ok((dims, values))
    }

    /// An int64 constant's values.
    fn ints(&self, name: &str) -> Result<Vec<i64>, String> {
        let t = self.tensor(name)?;
        if t.data_type != ONNX_INT64 {
            return Err(format!("{name:?} is not an int64 constant"));
        }
        let len: usize = Self::dims(t)?.iter().product();
        let values: Vec<i64> = if !t.raw_data.is_empty() {
            t.raw_data
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
                .collect()
        } else {
            t.int64_data.clone()
        };
        if values.len() != len {
            return Err(format!("{name:?} holds {} values", values.len()));
        }
        Ok(values)
    }
}

fn routine(name: &'static str, func: Func) -> Result<Act, String> {
    func.ew_f32()
        .map(|r| Act::Routine(name, r))
        .map_err(|e| format!("no {name} routine: {e}"))
}

fn int_attr(node: &NodeProto, name: &str) -> Option<i64> {
    node.attribute.iter().find(|a| a.name == name).map(|a| a.i)
}

fn float_attr(node: &NodeProto, name: &str) -> Option<f32> {
    node.attribute.iter().find(|a| a.name == name).map(|a| a.f)
}
