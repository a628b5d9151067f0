//! ONNX-ML operators that Podium registers with tract, each computing what onnxruntime computes.
//!
//! tract-onnx 0.23 ships `LinearClassifier`, `LinearRegressor`, `Normalizer` and
//! `TreeEnsembleClassifier`, but each of them disagrees with onnxruntime on inputs real exporters
//! produce (see the per-operator notes in [`linear`], [`preprocess`] and [`tree`]), and it has no
//! `Imputer`, `Scaler`, `ZipMap`, `FeatureVectorizer` or `TreeEnsembleRegressor` at all.
//! Podium therefore registers its own kernels under those names, replacing tract's. Each kernel is a
//! plain function of its input tensors ([`Kernel`]); [`MlExpansion`] adapts it to tract's inference
//! model and [`MlOp`] to tract's typed model, so tract can still type, prune and plan the graph
//! around it. Standard operators (MatMul, Gemm, Relu, Sigmoid, Softmax, Cast, Concat,
//! ArrayFeatureExtractor, …) stay tract's own.
//!
//! "What onnxruntime computes" is meant literally: where onnxruntime departs from the ONNX
//! specification (a single-target regressor ignores LOGISTIC, `Normalizer` MAX divides by the signed
//! maximum, a binary tree classifier writes `[1 - p, p]`), these kernels follow onnxruntime, because
//! Podium's parity target is onnxruntime's numbers. This module does not implement string
//! features, `LabelEncoder`, `OneHotEncoder`, `DictVectorizer`, SVMs or the opset-5 `TreeEnsemble`.

pub mod linear;
pub mod preprocess;
pub mod tree;

use tract_onnx::model::{OnnxOpRegister, ParsingContext};
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

/// Operators Podium registers with tract (domain `ai.onnx.ml`), replacing tract's where it has one.
pub const REGISTERED: &[&str] = &[
    "FeatureVectorizer",
    "Imputer",
    "LinearClassifier",
    "LinearRegressor",
    "Normalizer",
    "Scaler",
    "TreeEnsembleClassifier",
    "TreeEnsembleRegressor",
    "ZipMap",
];

/// Adds Podium's ONNX-ML kernels to a tract operator register.
pub fn register(reg: &mut OnnxOpRegister) {
    reg.insert("FeatureVectorizer", preprocess::feature_vectorizer);
    reg.insert("Imputer", preprocess::imputer);
    reg.insert("Normalizer", preprocess::normalizer);
    reg.insert("Scaler", preprocess::scaler);
    reg.insert("ZipMap", preprocess::zipmap);
    reg.insert("LinearClassifier", linear::linear_classifier);
    reg.insert("LinearRegressor", linear::linear_regressor);
    reg.insert("TreeEnsembleClassifier", tree::tree_ensemble_classifier);
    reg.insert("TreeEnsembleRegressor", tree::tree_ensemble_regressor);
}

/// An operator as a pure function of its inputs, with the type and shape rules tract needs.
pub trait Kernel: std::fmt::Debug + Clone + PartialEq + Send + Sync + 'static {
    /// The ONNX operator name, shown in tract's errors and dumps.
    fn name(&self) -> &'static str;

    /// Number of outputs.
    fn outputs(&self) -> usize {
        1
    }

    /// Inference rules: output types and shapes in terms of the inputs'.
    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult;

    /// Typed output facts for typed input facts.
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>>;

    /// Computes the outputs.
    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>>;
}

/// A [`Kernel`] as a node of tract's inference model; it wires itself as one [`MlOp`].
#[derive(Debug, Clone)]
pub struct MlExpansion<K: Kernel>(pub K);

impl<K: Kernel> Expansion for MlExpansion<K> {
    fn name(&self) -> StaticName {
        self.0.name().into()
    }

    fn nboutputs(&self) -> TractResult<usize> {
        Ok(self.0.outputs())
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        self.0.rules(s, inputs, outputs)
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        model.wire_node(prefix, MlOp(self.0.clone()), inputs)
    }
}

/// A [`Kernel`] as an operator of tract's typed model.
#[derive(Debug, Clone, PartialEq)]
pub struct MlOp<K: Kernel>(pub K);

// tract compares ops to merge identical nodes; kernels hold float attributes, and two kernels
// with the same attributes are the same operator, so equality is taken as total here.
impl<K: Kernel> Eq for MlOp<K> {}

impl<K: Kernel> Op for MlOp<K> {
    fn name(&self) -> StaticName {
        self.0.name().into()
    }

    fn as_typed(&self) -> Option<&dyn TypedOp> {
        Some(self)
    }
}

impl<K: Kernel> EvalOp for MlOp<K> {
    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        self.0.eval(inputs)
    }

    fn eval_out_of_plan(&self, inputs: TVec<TValue>) -> TractResult<Option<TVec<TValue>>> {
        Ok(Some(self.0.eval(inputs)?))
    }
}

impl<K: Kernel> TypedOp for MlOp<K> {
    fn as_op(&self) -> &dyn Op {
        self
    }

    fn as_op_mut(&mut self) -> &mut dyn Op {
        self
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        self.0.output_facts(inputs)
    }
}

/// Wraps a kernel for tract's ONNX parser.
fn boxed<K: Kernel>(kernel: K) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    Ok((expand(MlExpansion(kernel)), vec![]))
}

/// The `post_transform` attribute of the linear and tree operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PostTransform {
    /// Raw scores.
    None,
    /// Logistic function of each score.
    Logistic,
    /// Softmax over a row's scores.
    Softmax,
    /// Softmax over a row's non-zero scores; zeros stay (nearly) zero.
    SoftmaxZero,
    /// Probit (inverse normal CDF) of each score.
    Probit,
}

impl PostTransform {
    /// Reads the attribute; absent means `NONE`.
    fn parse(node: &NodeProto) -> TractResult<Self> {
        let text: Option<String> = node.get_attr_opt("post_transform")?;
        Ok(match text.as_deref().unwrap_or("NONE") {
            "NONE" => Self::None,
            "LOGISTIC" => Self::Logistic,
            "SOFTMAX" => Self::Softmax,
            "SOFTMAX_ZERO" => Self::SoftmaxZero,
            "PROBIT" => Self::Probit,
            other => bail!("{}: unknown post_transform {other:?}", node.op_type),
        })
    }

    /// Applies the transform to one row of two or more scores, as onnxruntime's `write_scores`.
    fn apply_row(self, row: &mut [f32]) {
        match self {
            Self::None => {}
            Self::Logistic => row.iter_mut().for_each(|v| *v = logistic(*v)),
            Self::Probit => row.iter_mut().for_each(|v| *v = probit(*v)),
            Self::Softmax => softmax(row),
            Self::SoftmaxZero => softmax_zero(row),
        }
    }
}

/// onnxruntime's `ComputeLogistic`: evaluated on |x| so that exp never overflows.
pub fn logistic(x: f32) -> f32 {
    let v = 1.0 / (1.0 + (-x.abs()).exp());
    if x < 0.0 {
        1.0 - v
    } else {
        v
    }
}

/// onnxruntime's `ComputeProbit`: √2 · erfinv(2x − 1) with its closed-form erfinv approximation.
pub fn probit(x: f32) -> f32 {
    let y = 2.0 * x - 1.0;
    let sgn = if y < 0.0 { -1.0f32 } else { 1.0 };
    let t = (1.0 - y) * (1.0 + y);
    let log = t.ln();
    let v = 2.0 / (std::f32::consts::PI * 0.147) + 0.5 * log;
    let v2 = 1.0 / 0.147 * log;
    let v3 = -v + (v * v - v2).sqrt();
    std::f32::consts::SQRT_2 * sgn * v3.sqrt()
}

/// onnxruntime's `ComputeSoftmax`: shifted by the row maximum, accumulated in f32.
fn softmax(row: &mut [f32]) {
    let max = row
        .iter()
        .fold(-f32::MAX, |m, &v| if v > m { v } else { m });
    let mut sum = 0.0f32;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    row.iter_mut().for_each(|v| *v /= sum);
}

/// onnxruntime's `ComputeSoftmaxZero`: scores within 1e-7 of zero are scaled, not exponentiated.
fn softmax_zero(row: &mut [f32]) {
    let max = row
        .iter()
        .fold(-f32::MAX, |m, &v| if v > m { v } else { m });
    let exp_neg_max = (-max).exp();
    let mut sum = 0.0f32;
    for v in row.iter_mut() {
        if *v > 0.000_000_1 || *v < -0.000_000_1 {
            *v = (*v - max).exp();
            sum += *v;
        } else {
            *v *= exp_neg_max;
        }
    }
    row.iter_mut().for_each(|v| *v /= sum);
}

/// A float list attribute, or its `*_as_tensor` double twin (opset 3), widened to f64.
fn floats_attr(
    ctx: &ParsingContext,
    node: &NodeProto,
    name: &str,
) -> TractResult<Option<Vec<f64>>> {
    if let Some(values) = node.get_attr_opt_slice::<f32>(name)? {
        return Ok(Some(values.iter().map(|&v| f64::from(v)).collect()));
    }
    let tensor_name = format!("{name}_as_tensor");
    match node.get_attr_opt::<&tract_onnx::pb::TensorProto>(&tensor_name)? {
        Some(proto) => {
            let tensor = ctx.load_tensor(proto)?;
            let tensor = tensor.cast_to::<f64>()?;
            Ok(Some(tensor.try_as_plain_ram()?.as_slice::<f64>()?.to_vec()))
        }
        None => Ok(None),
    }
}

/// An input as row-major f32 rows: (rows, columns, values). Rank 1 is one row, as onnxruntime reads it.
fn f32_rows(input: &TValue) -> TractResult<(usize, usize, Cow<'_, [f32]>)> {
    let (rows, cols) = rows_and_columns(input.shape())?;
    let values = match input.datum_type() {
        DatumType::F32 => Cow::Borrowed(input.try_as_plain_ram()?.as_slice::<f32>()?),
        _ => {
            let cast = input.cast_to::<f32>()?;
            Cow::Owned(cast.try_as_plain_ram()?.as_slice::<f32>()?.to_vec())
        }
    };
    Ok((rows, cols, values))
}

/// Rows and columns of a rank-1 or rank-2 input.
fn rows_and_columns(shape: &[usize]) -> TractResult<(usize, usize)> {
    match *shape {
        [c] => Ok((1, c)),
        [n, c] => Ok((n, c)),
        _ => bail!("expected a [N, C] or [C] input, got shape {shape:?}"),
    }
}

/// Rule shared by the row-wise operators: output `i` is `[N, width]` of `dt`, N from input 0.
fn rows_rule<'r, 'p: 'r>(
    s: &mut Solver<'r>,
    inputs: &'p [TensorProxy],
    output: &'p TensorProxy,
    dt: DatumType,
    width: Option<usize>,
) -> InferenceResult {
    s.equals(&output.datum_type, dt)?;
    s.equals(&output.rank, 2)?;
    s.given(&inputs[0].rank, move |s, rank| {
        if rank == 2 {
            s.equals(&output.shape[0], &inputs[0].shape[0])?;
        } else {
            s.equals(&output.shape[0], 1.to_dim())?;
        }
        Ok(())
    })?;
    if let Some(width) = width {
        s.equals(&output.shape[1], width.to_dim())?;
    }
    Ok(())
}

/// The batch dimension of a typed `[N, C]` or `[C]` fact.
fn batch_dim(fact: &TypedFact) -> TractResult<TDim> {
    match fact.rank() {
        1 => Ok(1.to_dim()),
        2 => Ok(fact.shape[0].clone()),
        r => bail!("expected a [N, C] or [C] input, got rank {r}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logistic_is_symmetric_and_saturates_without_nan() {
        assert_eq!(logistic(0.0), 0.5);
        assert!((logistic(2.0) + logistic(-2.0) - 1.0).abs() < 1e-7);
        assert_eq!(logistic(1e6), 1.0);
        assert_eq!(logistic(-1e6), 0.0);
    }

    #[test]
    fn softmax_rows_sum_to_one() {
        let mut row = [1.0, 2.0, 3.0];
        softmax(&mut row);
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(row[2] > row[1] && row[1] > row[0]);
    }

    #[test]
    fn probit_inverts_the_normal_cdf_roughly() {
        assert!(probit(0.5).abs() < 1e-6);
        // Φ(1) ≈ 0.8413; the approximation is good to about 1e-3.
        assert!((probit(0.841_344_7) - 1.0).abs() < 5e-3);
    }
}
