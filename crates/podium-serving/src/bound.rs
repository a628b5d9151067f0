//! A model bound to a frame schema: its input columns are resolved once, at load.

use podium_core::{FeatureFrame, FrameSchema};
use podium_model::{Columns, Model};
use std::time::Instant;

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

/// The outcome of scoring one batch with one model.
#[derive(Clone, Debug, PartialEq)]
pub struct Scored {
    /// One prediction per row.
    pub values: Vec<f32>,
    /// 0 when the model answered, 1 when its fallback prior did.
    pub tier: u8,
    /// Why the fallback served, if it did.
    pub fallback_reason: Option<String>,
    /// Time spent, in microseconds.
    pub micros: u64,
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

    /// The model.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Scores every row of `frame`. A model error or a NaN output serves the bundle's fallback
    /// prior for the whole batch, so the auction never sees a hole.
    pub fn score(&self, frame: &FeatureFrame) -> Scored {
        let started = Instant::now();
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
        let outcome = Columns::new(&slices, rows)
            .and_then(|cols| self.model.predict(&cols, &mut values))
            .map_err(|e| e.to_string())
            .and_then(|()| match values.iter().position(|v| !v.is_finite()) {
                Some(r) => Err(format!("non-finite prediction at row {r}")),
                None => Ok(()),
            });
        let (tier, fallback_reason) = match outcome {
            Ok(()) => (0, None),
            Err(reason) => {
                values.fill(self.model.manifest().serving.fallback_prior as f32);
                (1, Some(reason))
            }
        };
        Scored {
            values,
            tier,
            fallback_reason,
            micros: started.elapsed().as_micros() as u64,
        }
    }

    /// The fallback prior for `rows` rows, for when there is no time left to run the model.
    pub fn prior(&self, rows: usize, reason: String) -> Scored {
        Scored {
            values: vec![self.model.manifest().serving.fallback_prior as f32; rows],
            tier: 1,
            fallback_reason: Some(reason),
            micros: 0,
        }
    }
}
