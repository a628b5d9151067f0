//! A model bound to a frame schema: its input columns are resolved once, at load.

use podium_core::{FeatureFrame, FrameSchema};
use podium_model::{Columns, Model};

/// A model input the frame schema does not provide.
#[derive(Debug, thiserror::Error)]
#[error("model {model:?} {version}: input {input:?} is not a feature of the serving schema")]
pub struct BindError {
    /// Model name.
    pub model: String,
    /// Model version.
    pub version: String,
    /// The input that has no column.
    pub input: String,
}

/// A model with its input columns resolved against one schema.
#[derive(Debug, Clone)]
pub struct BoundModel {
    model: Model,
    columns: Vec<usize>,
    defaults: Vec<f32>,
}

impl BoundModel {
    /// Resolves every model input to a frame column; fails naming the first input it lacks.
    pub fn bind(model: Model, schema: &FrameSchema) -> Result<Self, BindError> {
        let columns = model
            .manifest()
            .inputs
            .iter()
            .map(|i| {
                schema.column(&i.name).ok_or_else(|| BindError {
                    model: model.name().to_string(),
                    version: model.version().to_string(),
                    input: i.name.clone(),
                })
            })
            .collect::<Result<_, _>>()?;
        let defaults = model.defaults();
        Ok(Self {
            model,
            columns,
            defaults,
        })
    }

    /// The frame columns the model reads, in input order.
    pub fn columns(&self) -> &[usize] {
        &self.columns
    }

    /// The model.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Scores every row of `frame`, filling declared defaults for missing values. An error or a
    /// non-finite prediction is an `Err` naming it, so the caller can fall back to another tier.
    pub fn try_score(&self, frame: &FeatureFrame) -> Result<Vec<f32>, String> {
        let rows = frame.rows();
        // Copy only the columns where a default must replace a missing value.
        let patched: Vec<Option<Vec<f32>>> = self
            .columns
            .iter()
            .zip(&self.defaults)
            .map(|(&c, &d)| {
                let col = frame.column(c);
                (!d.is_nan() && col.iter().any(|v| v.is_nan())).then(|| {
                    col.iter()
                        .map(|&v| if v.is_nan() { d } else { v })
                        .collect()
                })
            })
            .collect();
        let slices: Vec<&[f32]> = self
            .columns
            .iter()
            .zip(&patched)
            .map(|(&c, p)| p.as_deref().unwrap_or_else(|| frame.column(c)))
            .collect();
        let mut values = vec![0.0f32; rows];
        Columns::new(&slices, rows)
            .and_then(|cols| self.model.predict(&cols, &mut values))
            .map_err(|e| e.to_string())?;
        match values.iter().position(|v| !v.is_finite()) {
            Some(r) => Err(format!("non-finite prediction at row {r}")),
            None => Ok(values),
        }
    }

    /// The bundle's fallback prior.
    pub fn prior(&self) -> f32 {
        self.model.manifest().serving.fallback_prior as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use podium_model::manifest::{OutputSpec, ServingSpec};
    use podium_model::{InputSpec, Link, Manifest, ModelError, ModelKind, Runtime};
    use std::sync::Arc;

    /// A runtime that echoes its first input, or fails when it is negative.
    #[derive(Debug)]
    struct Echo;

    impl Runtime for Echo {
        fn num_inputs(&self) -> usize {
            1
        }
        fn predict_raw(&self, input: &Columns<'_>, out: &mut [f32]) -> Result<(), ModelError> {
            if input.column(0).iter().any(|&v| v < 0.0) {
                return Err(ModelError::Input("negative".into()));
            }
            out.copy_from_slice(input.column(0));
            Ok(())
        }
    }

    fn bound(default: Option<f64>) -> (BoundModel, Arc<FrameSchema>) {
        let manifest = Manifest {
            name: "echo".into(),
            version: "1".into(),
            kind: ModelKind::Linear,
            task: "ctr".into(),
            weights: "w".into(),
            inputs: vec![InputSpec {
                name: "b".into(),
                kind: "f32".into(),
                default,
            }],
            output: OutputSpec {
                link: Link::Identity,
                ..OutputSpec::default()
            },
            serving: ServingSpec {
                latency_budget_us: 100,
                fallback_prior: 0.25,
            },
            calibration: None,
        };
        let schema = Arc::new(FrameSchema::new(["a", "b"]));
        let model = Model::new(manifest, Arc::new(Echo)).unwrap();
        (BoundModel::bind(model, &schema).unwrap(), schema)
    }

    fn frame(schema: &Arc<FrameSchema>, b: &[f32]) -> FeatureFrame {
        let mut f = FeatureFrame::new(schema.clone(), b.len());
        f.column_mut(1).copy_from_slice(b);
        f
    }

    #[test]
    fn reads_its_column_and_fills_declared_defaults() {
        let (m, schema) = bound(Some(0.5));
        assert_eq!(
            m.try_score(&frame(&schema, &[0.1, f32::NAN])),
            Ok(vec![0.1, 0.5])
        );
    }

    #[test]
    fn an_error_or_a_nan_is_reported() {
        let (m, schema) = bound(None);
        assert!(m
            .try_score(&frame(&schema, &[0.1, -1.0]))
            .unwrap_err()
            .contains("negative"));
        assert!(m
            .try_score(&frame(&schema, &[0.1, f32::NAN]))
            .unwrap_err()
            .contains("non-finite"));
        assert_eq!(m.prior(), 0.25);
    }

    #[test]
    fn binding_names_a_missing_feature() {
        let (m, _) = bound(None);
        let err = BoundModel::bind(m.model().clone(), &FrameSchema::new(["a"])).unwrap_err();
        assert_eq!(err.input, "b");
    }
}
