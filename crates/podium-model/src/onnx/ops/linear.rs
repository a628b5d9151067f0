//! `LinearClassifier` and `LinearRegressor` (ai.onnx.ml), as onnxruntime evaluates them.
//!
//! tract-onnx has both, but its outputs differ from onnxruntime's where exporters go: for a binary
//! classifier with one coefficient row onnxruntime writes `[1 - s, s]` (after the logistic for
//! LOGISTIC, untransformed for NONE and SOFTMAX), tract writes `[-s, s]` or a softmax of it; and a
//! single-target regressor ignores its post_transform in onnxruntime, but not in tract.
//! Scores are `intercept + Σ coefficient·x`, summed in f32 in feature order; onnxruntime's GEMM
//! sums in another order, which moves results by a few f32 ulps, not more.

use super::{batch_dim, boxed, f32_rows, logistic, PostTransform};
use super::{rows_rule, Kernel};
use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

/// Class labels of a classifier: integers or strings, in class order.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Labels {
    /// `classlabels_ints` / `classlabels_int64s`.
    Ints(Vec<i64>),
    /// `classlabels_strings`.
    Strings(Vec<String>),
}

impl Labels {
    /// Reads the labels attribute pair (`ints_name` differs between operators).
    pub(crate) fn parse(node: &NodeProto, ints_name: &str) -> TractResult<Self> {
        let ints = node.get_attr_opt_vec::<i64>(ints_name)?;
        let strings = node.get_attr_opt_vec::<String>("classlabels_strings")?;
        match (ints, strings) {
            (Some(ints), None) if !ints.is_empty() => Ok(Self::Ints(ints)),
            (None, Some(strings)) if !strings.is_empty() => Ok(Self::Strings(strings)),
            _ => bail!(
                "{}: needs exactly one non-empty {ints_name} or classlabels_strings",
                node.op_type
            ),
        }
    }

    pub(crate) fn len(&self) -> usize {
        match self {
            Self::Ints(v) => v.len(),
            Self::Strings(v) => v.len(),
        }
    }

    pub(crate) fn datum_type(&self) -> DatumType {
        match self {
            Self::Ints(_) => i64::datum_type(),
            Self::Strings(_) => String::datum_type(),
        }
    }

    /// The label tensor for per-row class picks. `Pick::Raw(v)` is onnxruntime's bare 0/1 label,
    /// used when a binary model's labels do not say which is positive.
    pub(crate) fn tensor(&self, picks: &[Pick]) -> TractResult<Tensor> {
        let n = picks.len();
        match self {
            Self::Ints(labels) => {
                let v: Vec<i64> = picks
                    .iter()
                    .map(|p| match *p {
                        Pick::Class(c) => labels[c],
                        Pick::Raw(v) => v,
                    })
                    .collect();
                Tensor::from_shape(&[n], &v)
            }
            Self::Strings(labels) => {
                let v: Vec<String> = picks
                    .iter()
                    .map(|p| match *p {
                        Pick::Class(c) => labels[c].clone(),
                        // onnxruntime numbers string labels by position, so a bare label is one.
                        Pick::Raw(v) => usize::try_from(v)
                            .ok()
                            .and_then(|i| labels.get(i).cloned())
                            .unwrap_or_else(|| v.to_string()),
                    })
                    .collect();
                Ok(tract_ndarray::Array1::from(v).into_tensor())
            }
        }
    }
}

/// A row's predicted label: an index into the labels, or a bare value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Pick {
    Class(usize),
    Raw(i64),
}

/// `LinearClassifier`: one score per class (or one score for a binary model), then the transform.
#[derive(Clone, Debug, PartialEq)]
pub struct LinearClassifier {
    coefficients: Vec<f32>,
    intercepts: Vec<f32>,
    labels: Labels,
    post_transform: PostTransform,
}

/// Builds a [`LinearClassifier`] from its ONNX node.
pub fn linear_classifier(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let coefficients = node.get_attr_vec::<f32>("coefficients")?;
    // onnxruntime counts one model per intercept; without intercepts it has no model at all.
    let intercepts = node
        .get_attr_opt_vec::<f32>("intercepts")?
        .unwrap_or_default();
    let labels = Labels::parse(node, "classlabels_ints")?;
    let post_transform = PostTransform::parse(node)?;
    node.expect(!intercepts.is_empty(), "intercepts (one per class)")?;
    node.expect(
        !coefficients.is_empty() && coefficients.len() % intercepts.len() == 0,
        "as many coefficient rows as intercepts",
    )?;
    if intercepts.len() == 1 {
        node.expect(
            labels.len() == 2,
            "exactly two class labels for one coefficient row",
        )?;
        // onnxruntime writes NaN and zeros here; no model worth serving depends on that.
        node.expect(
            post_transform != PostTransform::Probit,
            "a post_transform other than PROBIT for one coefficient row",
        )?;
    } else {
        node.expect(
            labels.len() == intercepts.len(),
            "one class label per coefficient row",
        )?;
    }
    boxed(LinearClassifier {
        coefficients,
        intercepts,
        labels,
        post_transform,
    })
}

impl LinearClassifier {
    fn models(&self) -> usize {
        self.intercepts.len()
    }

    fn width(&self) -> usize {
        if self.models() == 1 {
            2
        } else {
            self.models()
        }
    }
}

impl Kernel for LinearClassifier {
    fn name(&self) -> &'static str {
        "LinearClassifier"
    }

    fn outputs(&self) -> usize {
        2
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        check_output_arity(outputs, 2)?;
        s.equals(&outputs[0].datum_type, self.labels.datum_type())?;
        s.equals(&outputs[0].rank, 1)?;
        s.equals(&outputs[0].shape[0], &outputs[1].shape[0])?;
        rows_rule(
            s,
            inputs,
            &outputs[1],
            f32::datum_type(),
            Some(self.width()),
        )
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let n = batch_dim(inputs[0])?;
        Ok(tvec!(
            self.labels.datum_type().fact([n.clone()]),
            f32::fact([n, self.width().to_dim()])
        ))
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (rows, cols, x) = f32_rows(&inputs[0])?;
        let models = self.models();
        ensure!(
            cols * models == self.coefficients.len(),
            "LinearClassifier has {} coefficients per class but the input has {cols} columns",
            self.coefficients.len() / models
        );
        let width = self.width();
        let mut scores = vec![0.0f32; rows * width];
        let mut picks = Vec::with_capacity(rows);
        for r in 0..rows {
            let xr = &x[r * cols..][..cols];
            let out = &mut scores[r * width..][..width];
            for (k, o) in out.iter_mut().take(models).enumerate() {
                let w = &self.coefficients[k * cols..][..cols];
                *o = self.intercepts[k] + xr.iter().zip(w).map(|(a, b)| a * b).sum::<f32>();
            }
            if models == 1 {
                let s = out[0];
                picks.push(Pick::Class(usize::from(s > 0.0)));
                let p = match self.post_transform {
                    PostTransform::Logistic => logistic(s),
                    _ => s,
                };
                out[0] = 1.0 - p;
                out[1] = p;
            } else {
                // First strictly largest raw score, as onnxruntime picks the label.
                let mut best = 0;
                for k in 1..models {
                    if out[k] > out[best] {
                        best = k;
                    }
                }
                picks.push(Pick::Class(best));
                self.post_transform.apply_row(out);
            }
        }
        Ok(tvec!(
            self.labels.tensor(&picks)?.into_tvalue(),
            Tensor::from_shape(&[rows, width], &scores)?.into_tvalue()
        ))
    }
}

/// `LinearRegressor`: one score per target; with one target onnxruntime applies PROBIT and
/// ignores the other transforms.
#[derive(Clone, Debug, PartialEq)]
pub struct LinearRegressor {
    coefficients: Vec<f32>,
    intercepts: Vec<f32>,
    targets: usize,
    post_transform: PostTransform,
}

/// Builds a [`LinearRegressor`] from its ONNX node.
pub fn linear_regressor(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let coefficients = node.get_attr_vec::<f32>("coefficients")?;
    let targets = node.get_attr_opt::<usize>("targets")?.unwrap_or(1);
    node.expect(targets > 0, "targets > 0")?;
    node.expect(
        !coefficients.is_empty() && coefficients.len() % targets == 0,
        "coefficients a multiple of targets",
    )?;
    let intercepts = node
        .get_attr_opt_vec::<f32>("intercepts")?
        .unwrap_or_else(|| vec![0.0; targets]);
    node.expect(intercepts.len() == targets, "one intercept per target")?;
    boxed(LinearRegressor {
        coefficients,
        intercepts,
        targets,
        post_transform: PostTransform::parse(node)?,
    })
}

impl Kernel for LinearRegressor {
    fn name(&self) -> &'static str {
        "LinearRegressor"
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        check_output_arity(outputs, 1)?;
        rows_rule(
            s,
            inputs,
            &outputs[0],
            f32::datum_type(),
            Some(self.targets),
        )
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let n = batch_dim(inputs[0])?;
        Ok(tvec!(f32::fact([n, self.targets.to_dim()])))
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (rows, cols, x) = f32_rows(&inputs[0])?;
        let t = self.targets;
        ensure!(
            cols * t == self.coefficients.len(),
            "LinearRegressor has {} coefficients per target but the input has {cols} columns",
            self.coefficients.len() / t
        );
        let mut out = vec![0.0f32; rows * t];
        for r in 0..rows {
            let xr = &x[r * cols..][..cols];
            let row = &mut out[r * t..][..t];
            for (k, o) in row.iter_mut().enumerate() {
                let w = &self.coefficients[k * cols..][..cols];
                *o = self.intercepts[k] + xr.iter().zip(w).map(|(a, b)| a * b).sum::<f32>();
            }
            if t > 1 {
                self.post_transform.apply_row(row);
            } else if self.post_transform == PostTransform::Probit {
                row[0] = super::probit(row[0]);
            }
        }
        Ok(tvec!(Tensor::from_shape(&[rows, t], &out)?.into_tvalue()))
    }
}
