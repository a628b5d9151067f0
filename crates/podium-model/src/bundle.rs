//! Reading, verifying and writing model bundles (`model.toml`, `weights/`, `golden.csv`,
//! `SHA256SUMS`). Layout and rules: `docs/model-bundle.md`.

use crate::error::ModelError;
use crate::gbdt::{self, GbdtModel};
use crate::linear::LinearWeights;
use crate::manifest::{Link, Manifest, ModelKind};
use crate::onnx;
use crate::{Columns, Model};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Largest absolute difference between a golden row's expected output and Podium's.
pub const GOLDEN_TOLERANCE: f64 = 1e-5;

/// One row of `golden.csv`: inputs in manifest order (NaN = missing) and the expected output.
#[derive(Clone, Debug, PartialEq)]
pub struct GoldenRow {
    /// Input values in the manifest's input order.
    pub inputs: Vec<f32>,
    /// The prediction the training library gave.
    pub expected: f64,
}

/// Loads a bundle directory: verifies checksums, parses the manifest and weights, and scores the
/// golden rows. Returns the model only if every golden row matches.
pub fn load_bundle(dir: &Path) -> Result<Model, ModelError> {
    verify_checksums(dir)?;
    let manifest = Manifest::read(&dir.join("model.toml"))?;
    let weights_path = dir.join(&manifest.weights);
    let input_names: Vec<String> = manifest.inputs.iter().map(|i| i.name.clone()).collect();
    let runtime: Arc<dyn crate::Runtime> = match manifest.kind {
        ModelKind::Linear => {
            Arc::new(LinearWeights::read(&weights_path)?.into_runtime(&input_names)?)
        }
        ModelKind::Lightgbm => gbdt_runtime(
            gbdt::lightgbm::read(&weights_path)?,
            &manifest,
            &input_names,
        )?,
        ModelKind::Xgboost => {
            gbdt_runtime(gbdt::xgboost::read(&weights_path)?, &manifest, &input_names)?
        }
        ModelKind::Onnx => Arc::new(onnx::read(
            &weights_path,
            manifest.inputs.len(),
            &manifest.output,
        )?),
    };
    let mut model = Model::new(manifest, runtime)?;
    let reference_path = dir.join("reference.json");
    if reference_path.exists() {
        model = model.with_reference(crate::reference::Reference::read(
            &reference_path,
            &input_names,
        )?);
    }
    let golden_path = dir.join("golden.csv");
    if golden_path.exists() {
        let rows = read_golden(&golden_path, &input_names)?;
        check_golden(&model, &golden_path, &rows)?;
    }
    Ok(model)
}

/// Binds a tree ensemble to the manifest's inputs. The manifest must declare the link the
/// training objective implies: serving a logistic model's margin as a probability (or the reverse)
/// would pass no golden check worth having, so it is refused by name here.
fn gbdt_runtime(
    model: GbdtModel,
    manifest: &Manifest,
    inputs: &[String],
) -> Result<Arc<dyn crate::Runtime>, ModelError> {
    if manifest.output.link != model.link() {
        let name = |link: Link| match link {
            Link::Identity => "identity",
            Link::Logistic => "logistic",
        };
        return Err(ModelError::Schema(format!(
            "model {:?}: {} objective {:?} in {} needs output.link = \"{}\", but model.toml says \"{}\"",
            manifest.name,
            model.library(),
            model.objective(),
            model.source().display(),
            name(model.link()),
            name(manifest.output.link)
        )));
    }
    Ok(Arc::new(model.into_runtime(inputs)?))
}

fn verify_checksums(dir: &Path) -> Result<(), ModelError> {
    let sums_path = dir.join("SHA256SUMS");
    let text = std::fs::read_to_string(&sums_path).map_err(|e| ModelError::io(&sums_path, e))?;
    let mut listed = 0;
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let (digest, name) = line.split_once("  ").ok_or_else(|| {
            ModelError::parse(
                &sums_path,
                format!("line {}: expected `DIGEST  FILE`", n + 1),
            )
        })?;
        let name = name.trim_start_matches('*');
        if name.contains("..") || Path::new(name).is_absolute() {
            return Err(ModelError::parse(
                &sums_path,
                format!("line {}: path {name:?} leaves the bundle", n + 1),
            ));
        }
        let path = dir.join(name);
        let actual = sha256_file(&path)?;
        if !actual.eq_ignore_ascii_case(digest.trim()) {
            return Err(ModelError::Checksum {
                path,
                expected: digest.trim().to_string(),
                actual,
            });
        }
        listed += 1;
    }
    if listed == 0 {
        return Err(ModelError::parse(&sums_path, "lists no files"));
    }
    Ok(())
}

fn sha256_file(path: &Path) -> Result<String, ModelError> {
    let bytes = std::fs::read(path).map_err(|e| ModelError::io(path, e))?;
    Ok(hex::encode(Sha256::digest(&bytes)))
}

/// Reads `golden.csv`: a header naming every model input and `prediction`; empty cells are missing.
pub fn read_golden(path: &Path, inputs: &[String]) -> Result<Vec<GoldenRow>, ModelError> {
    let table = crate::table::FeatureTable::read(path, inputs, true)?;
    let expected = table
        .prediction
        .ok_or_else(|| ModelError::parse(path, "header lacks column \"prediction\""))?;
    Ok(expected
        .into_iter()
        .enumerate()
        .map(|(r, expected)| GoldenRow {
            inputs: table.columns.iter().map(|c| c[r]).collect(),
            expected,
        })
        .collect())
}

fn check_golden(model: &Model, path: &Path, rows: &[GoldenRow]) -> Result<(), ModelError> {
    if rows.is_empty() {
        return Ok(());
    }
    let width = model.manifest().inputs.len();
    let columns: Vec<Vec<f32>> = (0..width)
        .map(|c| rows.iter().map(|r| r.inputs[c]).collect())
        .collect();
    let slices: Vec<&[f32]> = columns.iter().map(Vec::as_slice).collect();
    let mut out = vec![0.0f32; rows.len()];
    model.predict(&Columns::new(&slices, rows.len())?, &mut out)?;
    for (i, (row, &actual)) in rows.iter().zip(&out).enumerate() {
        if (row.expected - actual as f64).abs() > GOLDEN_TOLERANCE
            || actual.is_nan() != row.expected.is_nan()
        {
            return Err(ModelError::Golden {
                path: path.to_path_buf(),
                row: i + 1,
                expected: row.expected,
                actual: actual as f64,
            });
        }
    }
    Ok(())
}

/// Writes a bundle directory: the manifest, the weights, golden rows, and `SHA256SUMS` over them.
pub struct BundleWriter {
    dir: PathBuf,
    manifest: Manifest,
    files: BTreeMap<String, Vec<u8>>,
}

impl BundleWriter {
    /// A writer for a bundle at `dir` with this manifest.
    pub fn new(dir: impl Into<PathBuf>, manifest: Manifest) -> Self {
        Self {
            dir: dir.into(),
            manifest,
            files: BTreeMap::new(),
        }
    }

    /// The weights file's bytes, stored at the manifest's `weights` path.
    pub fn weights(mut self, bytes: Vec<u8>) -> Self {
        self.files.insert(self.manifest.weights.clone(), bytes);
        self
    }

    /// Any other file of the bundle (`reference.json`, …), at a path inside it.
    pub fn file(mut self, name: &str, bytes: Vec<u8>) -> Self {
        self.files.insert(name.to_string(), bytes);
        self
    }

    /// Golden rows, stored as `golden.csv` with the manifest's input names as header.
    pub fn golden(mut self, rows: &[GoldenRow]) -> Self {
        let mut text = String::new();
        for i in &self.manifest.inputs {
            text.push_str(&i.name);
            text.push(',');
        }
        text.push_str("prediction\n");
        for r in rows {
            for v in &r.inputs {
                if !v.is_nan() {
                    text.push_str(&format!("{v:?}"));
                }
                text.push(',');
            }
            text.push_str(&format!("{:?}\n", r.expected));
        }
        self.files
            .insert("golden.csv".to_string(), text.into_bytes());
        self
    }

    /// Writes every file, then `SHA256SUMS`, into the bundle directory.
    pub fn write(mut self) -> Result<PathBuf, ModelError> {
        self.files.insert(
            "model.toml".to_string(),
            self.manifest.to_toml().into_bytes(),
        );
        let mut sums = String::new();
        for (name, bytes) in &self.files {
            let path = self.dir.join(name);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|e| ModelError::io(parent, e))?;
            }
            std::fs::write(&path, bytes).map_err(|e| ModelError::io(&path, e))?;
            sums.push_str(&format!("{}  {name}\n", hex::encode(Sha256::digest(bytes))));
        }
        let sums_path = self.dir.join("SHA256SUMS");
        std::fs::write(&sums_path, sums).map_err(|e| ModelError::io(&sums_path, e))?;
        Ok(self.dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{InputSpec, Link, OutputSpec, ServingSpec};

    fn manifest() -> Manifest {
        Manifest {
            name: "ctr".into(),
            version: "1".into(),
            kind: ModelKind::Linear,
            task: "ctr".into(),
            weights: "weights/linear.json".into(),
            inputs: vec![
                InputSpec {
                    name: "a".into(),
                    kind: "f32".into(),
                    default: None,
                },
                InputSpec {
                    name: "b".into(),
                    kind: "f32".into(),
                    default: Some(0.0),
                },
            ],
            output: OutputSpec {
                link: Link::Logistic,
                ..OutputSpec::default()
            },
            serving: ServingSpec {
                latency_budget_us: 1000,
                fallback_prior: 0.01,
            },
            calibration: None,
        }
    }

    fn write_bundle(dir: &Path, expected: f64) {
        let weights = LinearWeights {
            intercept: -1.0,
            weights: [("a".to_string(), 0.5), ("b".to_string(), 2.0)]
                .into_iter()
                .collect(),
            hashed: None,
        };
        BundleWriter::new(dir, manifest())
            .weights(serde_json::to_vec(&weights).unwrap())
            .golden(&[GoldenRow {
                inputs: vec![1.0, f32::NAN],
                expected,
            }])
            .write()
            .unwrap();
    }

    #[test]
    fn round_trips_and_checks_golden_rows() {
        let tmp = tempfile::tempdir().unwrap();
        let expected = 1.0 / (1.0 + (0.5f64).exp()); // sigmoid(-1 + 0.5)
        write_bundle(tmp.path(), expected);
        let model = load_bundle(tmp.path()).unwrap();
        assert_eq!(model.name(), "ctr");
        assert_eq!(model.defaults()[1], 0.0);
    }

    #[test]
    fn refuses_a_tampered_weights_file() {
        let tmp = tempfile::tempdir().unwrap();
        write_bundle(tmp.path(), 1.0 / (1.0 + (0.5f64).exp()));
        std::fs::write(tmp.path().join("weights/linear.json"), b"{}").unwrap();
        let err = load_bundle(tmp.path()).unwrap_err();
        assert!(matches!(err, ModelError::Checksum { .. }), "{err}");
        assert!(err.to_string().contains("linear.json"));
    }

    #[test]
    fn refuses_a_wrong_golden_row() {
        let tmp = tempfile::tempdir().unwrap();
        write_bundle(tmp.path(), 0.9);
        let err = load_bundle(tmp.path()).unwrap_err();
        assert!(err.to_string().contains("golden row 1"), "{err}");
    }
}
