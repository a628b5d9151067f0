//! Feature preprocessing operators of scikit-learn pipelines: `Imputer`, `Scaler`, `Normalizer`,
//! `FeatureVectorizer`, and `ZipMap` read as the probability tensor it wraps.
//!
//! tract-onnx's own `Normalizer` divides by the largest absolute value for `MAX` and guards empty
//! rows with an epsilon; onnxruntime divides by the signed maximum and leaves a row whose norm is
//! zero unchanged, so Podium replaces it. The other four are missing from tract.

use super::{batch_dim, boxed, f32_rows, rows_and_columns, Kernel};
use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

/// `Imputer`: replaces every input equal to the replaced value (NaN matches NaN) with the imputed
/// value of its column, or the single imputed value for all columns.
#[derive(Clone, Debug, PartialEq)]
pub struct Imputer {
    imputed: Imputed,
}

#[derive(Clone, Debug, PartialEq)]
enum Imputed {
    Floats { values: Vec<f32>, replaced: f32 },
    Ints { values: Vec<i64>, replaced: i64 },
}

/// Builds an [`Imputer`] from its ONNX node.
pub fn imputer(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let floats = node.get_attr_opt_vec::<f32>("imputed_value_floats")?;
    let ints = node.get_attr_opt_vec::<i64>("imputed_value_int64s")?;
    let imputed = match (floats, ints) {
        (Some(values), None) if !values.is_empty() => Imputed::Floats {
            values,
            replaced: node.get_attr_opt("replaced_value_float")?.unwrap_or(0.0),
        },
        (None, Some(values)) if !values.is_empty() => Imputed::Ints {
            values,
            replaced: node.get_attr_opt("replaced_value_int64")?.unwrap_or(0),
        },
        _ => bail!(
            "Imputer needs exactly one non-empty imputed_value_floats or imputed_value_int64s"
        ),
    };
    boxed(Imputer { imputed })
}

impl Imputer {
    fn impute<T: Datum + Copy + PartialEq>(
        input: &Tensor,
        values: &[T],
        is_replaced: impl Fn(T) -> bool,
    ) -> TractResult<Tensor> {
        let (_, cols) = rows_and_columns(input.shape())?;
        let x = input.try_as_plain_ram()?.as_slice::<T>()?;
        // onnxruntime uses per-column values only when there is exactly one per column, and
        // otherwise the first value everywhere.
        let per_column = values.len() == cols;
        let out: Vec<T> = x
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                if is_replaced(v) {
                    values[if per_column { i % cols } else { 0 }]
                } else {
                    v
                }
            })
            .collect();
        Tensor::from_shape(input.shape(), &out)
    }
}

impl Kernel for Imputer {
    fn name(&self) -> &'static str {
        "Imputer"
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].datum_type, &inputs[0].datum_type)?;
        s.equals(&outputs[0].shape, &inputs[0].shape)?;
        Ok(())
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let dt = inputs[0].datum_type;
        match (&self.imputed, dt) {
            (Imputed::Floats { .. }, DatumType::F32) | (Imputed::Ints { .. }, DatumType::I64) => {}
            _ => bail!("Imputer with these imputed values does not take {dt:?} input"),
        }
        Ok(tvec!(dt.fact(inputs[0].shape.clone())))
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = &inputs[0];
        let out = match &self.imputed {
            Imputed::Floats { values, replaced } => {
                let replaced = *replaced;
                Self::impute(input, values, |v: f32| {
                    (v.is_nan() && replaced.is_nan()) || v == replaced
                })?
            }
            Imputed::Ints { values, replaced } => {
                let replaced = *replaced;
                Self::impute(input, values, |v: i64| v == replaced)?
            }
        };
        Ok(tvec!(out.into_tvalue()))
    }
}

/// `Scaler`: `y = (x - offset) * scale`, per column or with one offset and scale for all.
#[derive(Clone, Debug, PartialEq)]
pub struct Scaler {
    offset: Vec<f32>,
    scale: Vec<f32>,
}

/// Builds a [`Scaler`] from its ONNX node.
pub fn scaler(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let scale = node.get_attr_opt_vec::<f32>("scale")?.unwrap_or_default();
    let offset = node.get_attr_opt_vec::<f32>("offset")?.unwrap_or_default();
    node.expect(!scale.is_empty(), "a non-empty scale")?;
    node.expect(
        scale.len() == offset.len(),
        "scale and offset of the same length",
    )?;
    boxed(Scaler { offset, scale })
}

impl Scaler {
    fn at(&self, i: usize, cols: usize) -> TractResult<usize> {
        if self.scale.len() == cols {
            Ok(i % cols)
        } else if self.scale.len() == 1 {
            Ok(0)
        } else {
            bail!(
                "Scaler has {} offsets and scales for {cols} columns; it needs {cols} or 1",
                self.scale.len()
            )
        }
    }
}

impl Kernel for Scaler {
    fn name(&self) -> &'static str {
        "Scaler"
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].datum_type, f32::datum_type())?;
        s.equals(&outputs[0].shape, &inputs[0].shape)?;
        Ok(())
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(f32::fact(inputs[0].shape.clone())))
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = &inputs[0];
        let (_, cols) = rows_and_columns(input.shape())?;
        let out: Vec<f32> = if input.datum_type() == DatumType::F64 {
            // onnxruntime's double kernel subtracts and multiplies in double, then narrows.
            let x = input.try_as_plain_ram()?.as_slice::<f64>()?;
            let mut out = Vec::with_capacity(x.len());
            for (i, &v) in x.iter().enumerate() {
                let j = self.at(i, cols)?;
                out.push(((v - f64::from(self.offset[j])) * f64::from(self.scale[j])) as f32);
            }
            out
        } else {
            // Integers meet float offsets as floats in C++, so casting first is what it does.
            let (_, _, x) = f32_rows(input)?;
            let mut out = Vec::with_capacity(x.len());
            for (i, &v) in x.iter().enumerate() {
                let j = self.at(i, cols)?;
                out.push((v - self.offset[j]) * self.scale[j]);
            }
            out
        };
        Ok(tvec!(Tensor::from_shape(input.shape(), &out)?.into_tvalue()))
    }
}

/// `Normalizer`: each row divided by its maximum (signed, as onnxruntime), L1 or L2 norm; a row
/// whose divisor is zero is copied unchanged.
#[derive(Clone, Debug, PartialEq)]
pub struct Normalizer {
    norm: Norm,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Norm {
    Max,
    L1,
    L2,
}

/// Builds a [`Normalizer`] from its ONNX node.
pub fn normalizer(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let norm: Option<String> = node.get_attr_opt("norm")?;
    let norm = match norm.as_deref().unwrap_or("MAX") {
        "MAX" => Norm::Max,
        "L1" => Norm::L1,
        "L2" => Norm::L2,
        other => bail!("Normalizer: unknown norm {other:?}"),
    };
    boxed(Normalizer { norm })
}

impl Kernel for Normalizer {
    fn name(&self) -> &'static str {
        "Normalizer"
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].datum_type, f32::datum_type())?;
        s.equals(&outputs[0].shape, &inputs[0].shape)?;
        Ok(())
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        batch_dim(inputs[0])?;
        Ok(tvec!(f32::fact(inputs[0].shape.clone())))
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = &inputs[0];
        let (_, cols, x) = f32_rows(input)?;
        let mut out = x.to_vec();
        if cols > 0 {
            for row in out.chunks_mut(cols) {
                match self.norm {
                    Norm::Max => {
                        let max = row.iter().fold(f32::MIN, |m, &v| m.max(v));
                        if max != 0.0 {
                            row.iter_mut().for_each(|v| *v /= max);
                        }
                    }
                    Norm::L1 => {
                        let sum: f32 = row.iter().map(|v| v.abs()).sum();
                        if sum != 0.0 {
                            row.iter_mut().for_each(|v| *v /= sum);
                        }
                    }
                    Norm::L2 => {
                        let sum: f32 = row.iter().map(|v| v * v).sum();
                        if sum != 0.0 {
                            // onnxruntime takes sqrt(x² / Σx²) and restores the sign, rather
                            // than dividing by the norm; the two differ in the last bit.
                            for v in row.iter_mut() {
                                let r = (*v * *v / sum).sqrt();
                                *v = if *v < 0.0 { -r } else { r };
                            }
                        }
                    }
                }
            }
        }
        Ok(tvec!(Tensor::from_shape(input.shape(), &out)?.into_tvalue()))
    }
}

/// `FeatureVectorizer`: concatenates its inputs' rows into one f32 row, each input truncated or
/// zero-padded to its entry of `inputdimensions`.
#[derive(Clone, Debug, PartialEq)]
pub struct FeatureVectorizer {
    dims: Vec<usize>,
}

/// Builds a [`FeatureVectorizer`] from its ONNX node.
pub fn feature_vectorizer(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let dims = node.get_attr_vec::<usize>("inputdimensions")?;
    node.expect(
        dims.len() == node.input.len(),
        "one inputdimensions entry per input",
    )?;
    boxed(FeatureVectorizer { dims })
}

impl Kernel for FeatureVectorizer {
    fn name(&self) -> &'static str {
        "FeatureVectorizer"
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, self.dims.len())?;
        check_output_arity(outputs, 1)?;
        super::rows_rule(
            s,
            inputs,
            &outputs[0],
            f32::datum_type(),
            Some(self.dims.iter().sum()),
        )
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let n = batch_dim(inputs[0])?;
        let total: usize = self.dims.iter().sum();
        Ok(tvec!(f32::fact([n, total.to_dim()])))
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let n = if inputs[0].rank() == 1 {
            1
        } else {
            inputs[0].shape()[0]
        };
        let total: usize = self.dims.iter().sum();
        let mut out = vec![0.0f32; n * total];
        let mut offset = 0;
        for (input, &width) in inputs.iter().zip(&self.dims) {
            let shape = input.shape();
            let size = if shape.len() == 1 {
                shape[0]
            } else {
                shape[1..].iter().product()
            };
            let rows = if shape.len() == 1 { 1 } else { shape[0] };
            ensure!(
                rows == n,
                "FeatureVectorizer inputs disagree on the batch size ({rows} vs {n})"
            );
            let cast = input.cast_to::<f32>()?;
            let x = cast.try_as_plain_ram()?.as_slice::<f32>()?;
            let take = size.min(width);
            for r in 0..n {
                out[r * total + offset..][..take].copy_from_slice(&x[r * size..][..take]);
            }
            offset += width;
        }
        Ok(tvec!(Tensor::from_shape(&[n, total], &out)?.into_tvalue()))
    }
}

/// `ZipMap` turns a classifier's probability tensor into a sequence of maps from label to
/// probability, a type that neither tract nor a scoring runtime needs: Podium reads its output as
/// the probability tensor it was given, so models exported with skl2onnx's default options load.
#[derive(Clone, Debug, PartialEq)]
pub struct ZipMapAsTensor;

/// Builds [`ZipMapAsTensor`] from a `ZipMap` node.
pub fn zipmap(
    _ctx: &ParsingContext,
    _node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    Ok((expand(ZipMapAsTensor), vec![]))
}

impl Expansion for ZipMapAsTensor {
    fn name(&self) -> StaticName {
        "ZipMap".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].datum_type, &inputs[0].datum_type)?;
        s.equals(&outputs[0].shape, &inputs[0].shape)?;
        Ok(())
    }

    fn wire(
        &self,
        _prefix: &str,
        _model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        Ok(tvec!(inputs[0]))
    }
}
