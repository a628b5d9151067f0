//! Model bundles and the runtimes that score them.
//!
//! A [`Runtime`] scores a column-major batch: one slice per model input, each as long as the
//! batch. Each model kind (linear, GBDT, ONNX) implements that one trait, and a
//! [`Model`] wraps a runtime with its bundle's manifest (name, version, inputs, link, fallback).
//! This crate does not decide which model runs when: that is `podium-serving`'s job.

pub mod bundle;
pub mod calibration;
pub mod error;
pub mod gbdt;
pub mod linear;
pub mod manifest;
pub mod onnx;
pub mod package;
pub mod reference;
pub mod table;

pub use bundle::{load_bundle, BundleWriter, GoldenRow};
pub use calibration::Calibration;
pub use error::ModelError;
pub use manifest::{InputSpec, Link, Manifest, ModelKind};
pub use table::FeatureTable;

use std::sync::Arc;

/// Column-major input to a runtime: `columns[i][r]` is input `i` of row `r`; NaN is missing.
#[derive(Clone, Copy, Debug)]
pub struct Columns<'a> {
    columns: &'a [&'a [f32]],
    rows: usize,
}

impl<'a> Columns<'a> {
    /// Wraps column slices; every column must hold `rows` values.
    pub fn new(columns: &'a [&'a [f32]], rows: usize) -> Result<Self, ModelError> {
        if let Some((i, c)) = columns.iter().enumerate().find(|(_, c)| c.len() != rows) {
            return Err(ModelError::Input(format!(
                "column {i} holds {} values, expected {rows}",
                c.len()
            )));
        }
        Ok(Self { columns, rows })
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns.
    pub fn width(&self) -> usize {
        self.columns.len()
    }

    /// One column.
    pub fn column(&self, i: usize) -> &'a [f32] {
        self.columns[i]
    }
}

/// What every model kind implements: score a batch, writing one raw output per row.
///
/// Raw means before the manifest's link function and calibration: a GBDT margin, a linear sum.
pub trait Runtime: Send + Sync + std::fmt::Debug {
    /// Number of inputs the runtime reads, in the order of its columns.
    fn num_inputs(&self) -> usize;

    /// Scores `input`, writing `input.rows()` raw values into `out`.
    fn predict_raw(&self, input: &Columns<'_>, out: &mut [f32]) -> Result<(), ModelError>;

    /// A few words on the runtime's structure (`300 trees, 7,912 nodes`), for `podium model inspect`.
    fn describe(&self) -> String {
        String::new()
    }
}

/// A loaded model: its manifest and the runtime that scores it.
#[derive(Debug, Clone)]
pub struct Model {
    manifest: Arc<Manifest>,
    runtime: Arc<dyn Runtime>,
    reference: Option<Arc<reference::Reference>>,
}

impl Model {
    /// Pairs a manifest with a runtime, checking that they agree on the number of inputs.
    pub fn new(manifest: Manifest, runtime: Arc<dyn Runtime>) -> Result<Self, ModelError> {
        if manifest.inputs.len() != runtime.num_inputs() {
            return Err(ModelError::Schema(format!(
                "model {:?}: model.toml lists {} inputs but the weights read {}",
                manifest.name,
                manifest.inputs.len(),
                runtime.num_inputs()
            )));
        }
        Ok(Self {
            manifest: Arc::new(manifest),
            runtime,
            reference: None,
        })
    }

    /// The same model with reference distributions of its inputs and output (the bundle's
    /// `reference.json`), the baseline drift monitoring compares live traffic with.
    pub fn with_reference(mut self, reference: reference::Reference) -> Self {
        self.reference = Some(Arc::new(reference));
        self
    }

    /// The reference distributions, when the bundle has them.
    pub fn reference(&self) -> Option<&Arc<reference::Reference>> {
        self.reference.as_ref()
    }

    /// The bundle's manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Model name.
    pub fn name(&self) -> &str {
        &self.manifest.name
    }

    /// Model version.
    pub fn version(&self) -> &str {
        &self.manifest.version
    }

    /// Scores a batch: raw runtime output, then the link function. Missing inputs that the
    /// manifest gives a default for must already be filled by the caller (see [`Model::defaults`]).
    pub fn predict(&self, input: &Columns<'_>, out: &mut [f32]) -> Result<(), ModelError> {
        if input.width() != self.manifest.inputs.len() {
            return Err(ModelError::Input(format!(
                "model {:?} takes {} inputs, got {}",
                self.manifest.name,
                self.manifest.inputs.len(),
                input.width()
            )));
        }
        if out.len() != input.rows() {
            return Err(ModelError::Input(format!(
                "output buffer holds {} values for {} rows",
                out.len(),
                input.rows()
            )));
        }
        self.runtime.predict_raw(input, out)?;
        let link = self.manifest.output.link;
        match &self.manifest.calibration {
            None => out.iter_mut().for_each(|v| *v = link.apply(*v)),
            Some(c) => out.iter_mut().for_each(|v| *v = c.apply(link.apply(*v))),
        }
        Ok(())
    }

    /// Scores owned columns after replacing missing values by the manifest's defaults, as
    /// serving does; for tools that score files rather than request frames.
    pub fn predict_columns(
        &self,
        mut columns: Vec<Vec<f32>>,
        rows: usize,
    ) -> Result<Vec<f32>, ModelError> {
        for (col, d) in columns.iter_mut().zip(self.defaults()) {
            if !d.is_nan() {
                col.iter_mut().filter(|v| v.is_nan()).for_each(|v| *v = d);
            }
        }
        let slices: Vec<&[f32]> = columns.iter().map(Vec::as_slice).collect();
        let mut out = vec![0.0f32; rows];
        self.predict(&Columns::new(&slices, rows)?, &mut out)?;
        Ok(out)
    }

    /// What the runtime says of its structure.
    pub fn describe(&self) -> String {
        self.runtime.describe()
    }

    /// Per-input default used when a feature is missing, or NaN to leave it missing.
    pub fn defaults(&self) -> Vec<f32> {
        self.manifest
            .inputs
            .iter()
            .map(|i| i.default.map_or(f32::NAN, |d| d as f32))
            .collect()
    }
}
