//! Building a bundle from a model file as the training library wrote it, and checking a bundle
//! the way an operator would before publishing it (`podium model package` / `validate`).

use crate::bundle::{load_bundle, read_golden, BundleWriter, GoldenRow, GOLDEN_TOLERANCE};
use crate::calibration::Calibration;
use crate::error::ModelError;
use crate::gbdt;
use crate::linear::LinearWeights;
use crate::manifest::{InputSpec, Link, Manifest, ModelKind, OutputSpec, ServingSpec};
use crate::reference::Reference;
use crate::table::FeatureTable;
use crate::{Columns, Model};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What `package` needs to know that the model file may not say.
#[derive(Clone, Debug)]
pub struct PackageOptions {
    /// Weights format.
    pub kind: ModelKind,
    /// The model file as the library wrote it.
    pub weights: PathBuf,
    /// Model name.
    pub name: String,
    /// Version.
    pub version: String,
    /// What it predicts.
    pub task: String,
    /// Input feature names in model order; required where the file names none.
    pub features: Option<Vec<String>>,
    /// Link for linear models (GBDT links follow the objective; ONNX outputs are final).
    pub link: Option<Link>,
    /// ONNX output to serve: `TENSOR` or `TENSOR:COLUMN`.
    pub output: Option<String>,
    /// Golden rows: a CSV with the features and, ideally, the library's own `prediction`.
    pub golden: Option<PathBuf>,
    /// Calibration map, as a JSON or TOML file.
    pub calibration: Option<PathBuf>,
    /// Constant served when the model fails; defaults to the mean golden prediction.
    pub fallback_prior: Option<f64>,
    /// Time budget for one request's batch.
    pub latency_budget_us: u64,
    /// Bundle directory to create; must not exist or be empty.
    pub out: PathBuf,
}

/// What `package` did.
#[derive(Clone, Debug)]
pub struct PackageReport {
    /// The bundle directory.
    pub dir: PathBuf,
    /// The manifest written.
    pub manifest: Manifest,
    /// Golden rows written.
    pub golden_rows: usize,
    /// Whether the golden rows carry the training library's predictions (checked to 1e-5), or
    /// Podium's own (the file had no `prediction` column), which only pin future behaviour.
    pub golden_from_library: bool,
}

fn file_name(path: &Path) -> Result<String, ModelError> {
    path.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string)
        .ok_or_else(|| ModelError::parse(path, "not a file name"))
}

/// Input names and link the model file implies, before the caller's overrides.
fn read_model_file(opts: &PackageOptions) -> Result<(Option<Vec<String>>, Link), ModelError> {
    let path = &opts.weights;
    Ok(match opts.kind {
        ModelKind::Lightgbm => {
            let m = gbdt::lightgbm::read(path)?;
            (m.feature_names().map(<[String]>::to_vec), m.link())
        }
        ModelKind::Xgboost => {
            let m = gbdt::xgboost::read(path)?;
            (m.feature_names().map(<[String]>::to_vec), m.link())
        }
        ModelKind::Linear => {
            let w = LinearWeights::read(path)?;
            (
                Some(w.weights.keys().cloned().collect()),
                opts.link.unwrap_or(Link::Logistic),
            )
        }
        ModelKind::Onnx => (None, Link::Identity),
    })
}

/// Builds a bundle: copies the weights, writes `model.toml`, golden rows, reference histograms
/// and `SHA256SUMS`, then loads the result as serving would. Refuses to overwrite anything.
pub fn package(opts: &PackageOptions) -> Result<PackageReport, ModelError> {
    if opts.out.exists()
        && std::fs::read_dir(&opts.out)
            .map_err(|e| ModelError::io(&opts.out, e))?
            .next()
            .is_some()
    {
        return Err(ModelError::parse(
            &opts.out,
            "already exists and is not empty; bundles are never overwritten",
        ));
    }
    let (file_features, link) = read_model_file(opts)?;
    let features = opts.features.clone().or(file_features).ok_or_else(|| {
        ModelError::parse(
            &opts.weights,
            "the model file names no features: pass them with --features a,b,c",
        )
    })?;
    let calibration = opts
        .calibration
        .as_deref()
        .map(read_calibration)
        .transpose()?;
    let weights_name = format!("weights/{}", file_name(&opts.weights)?);
    let mut manifest = Manifest {
        name: opts.name.clone(),
        version: opts.version.clone(),
        kind: opts.kind,
        task: opts.task.clone(),
        weights: weights_name.clone(),
        inputs: features
            .iter()
            .map(|n| InputSpec {
                name: n.clone(),
                kind: "f32".into(),
                default: None,
            })
            .collect(),
        output: output_spec(link, opts.output.as_deref(), &opts.weights)?,
        serving: ServingSpec {
            latency_budget_us: opts.latency_budget_us,
            fallback_prior: opts.fallback_prior.unwrap_or(0.0),
        },
        calibration,
    };
    let weights = std::fs::read(&opts.weights).map_err(|e| ModelError::io(&opts.weights, e))?;

    // Score the golden rows in a scratch bundle first, so the final one is written whole or not at all.
    let scratch = tempdir_beside(&opts.out)?;
    let result = (|| {
        let staged = BundleWriter::new(scratch.join("b"), manifest.clone())
            .weights(weights.clone())
            .write()?;
        let model = load_bundle(&staged)?;
        let (golden, from_library) = match &opts.golden {
            Some(path) => golden_rows(&model, path, &features)?,
            None => (Vec::new(), false),
        };
        if opts.fallback_prior.is_none() && !golden.is_empty() {
            manifest.serving.fallback_prior =
                golden.iter().map(|r| r.expected).sum::<f64>() / golden.len() as f64;
        }
        let inputs: Vec<Vec<f32>> = golden.iter().map(|r| r.inputs.clone()).collect();
        let outputs: Vec<f64> = golden.iter().map(|r| r.expected).collect();
        let reference = Reference::of_rows(&features, &inputs, &outputs);
        let mut writer = BundleWriter::new(&opts.out, manifest.clone()).weights(weights.clone());
        if !golden.is_empty() {
            writer = writer.golden(&golden).file(
                "reference.json",
                serde_json::to_vec_pretty(&reference).expect("reference serialises"),
            );
        }
        let dir = writer.write()?;
        load_bundle(&dir)?;
        Ok(PackageReport {
            dir,
            manifest: manifest.clone(),
            golden_rows: golden.len(),
            golden_from_library: from_library,
        })
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

/// Parses `TENSOR[:COLUMN]` into the manifest's output section.
fn output_spec(link: Link, output: Option<&str>, weights: &Path) -> Result<OutputSpec, ModelError> {
    let Some(output) = output else {
        return Ok(OutputSpec {
            link,
            ..OutputSpec::default()
        });
    };
    let (tensor, column) = match output.rsplit_once(':') {
        Some((t, c)) => {
            let c: usize = c.parse().map_err(|_| {
                ModelError::parse(
                    weights,
                    format!("--output {output:?}: column {c:?} is not a non-negative integer"),
                )
            })?;
            (t, Some(c))
        }
        None => (output, None),
    };
    if tensor.is_empty() {
        return Err(ModelError::parse(
            weights,
            format!("--output {output:?} names no tensor"),
        ));
    }
    Ok(OutputSpec {
        link,
        tensor: Some(tensor.to_string()),
        column,
    })
}

fn tempdir_beside(out: &Path) -> Result<PathBuf, ModelError> {
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| ModelError::io(parent, e))?;
    let dir = parent.join(format!(".podium-package-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| ModelError::io(&dir, e))?;
    Ok(dir)
}

/// Golden rows from a CSV: checked against its `prediction` column when it has one.
fn golden_rows(
    model: &Model,
    path: &Path,
    features: &[String],
) -> Result<(Vec<GoldenRow>, bool), ModelError> {
    let table = FeatureTable::read(path, features, true)?;
    let slices: Vec<&[f32]> = table.columns.iter().map(Vec::as_slice).collect();
    let mut out = vec![0.0f32; table.rows];
    model.predict(&Columns::new(&slices, table.rows)?, &mut out)?;
    let from_library = table.prediction.is_some();
    if let Some(expected) = &table.prediction {
        for (r, (&e, &a)) in expected.iter().zip(&out).enumerate() {
            if (e - a as f64).abs() > GOLDEN_TOLERANCE || e.is_nan() != a.is_nan() {
                return Err(ModelError::Golden {
                    path: path.to_path_buf(),
                    row: r + 1,
                    expected: e,
                    actual: a as f64,
                });
            }
        }
    }
    let rows = (0..table.rows)
        .map(|r| GoldenRow {
            inputs: table.columns.iter().map(|c| c[r]).collect(),
            expected: table.prediction.as_ref().map_or(out[r] as f64, |p| p[r]),
        })
        .collect();
    Ok((rows, from_library))
}

fn read_calibration(path: &Path) -> Result<Calibration, ModelError> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
    let c: Calibration = if path.extension().is_some_and(|e| e == "toml") {
        toml::from_str(&text).map_err(|e| ModelError::parse(path, e))?
    } else {
        serde_json::from_str(&text).map_err(|e| ModelError::parse(path, e))?
    };
    c.check().map_err(|m| ModelError::parse(path, m))?;
    Ok(c)
}

/// Rows per batch when `validate` times a bundle against its latency budget.
pub const VALIDATE_BATCH: usize = 100;

/// What `validate` found.
#[derive(Clone, Debug)]
pub struct ValidationReport {
    /// The loaded model (checksums, schema and golden rows all passed).
    pub model: Model,
    /// Golden rows checked.
    pub golden_rows: usize,
    /// Median time of one batch of [`VALIDATE_BATCH`] rows on this machine, one thread.
    pub batch_time: Duration,
    /// Whether that is within the manifest's latency budget.
    pub within_budget: bool,
}

/// Checks a bundle as serving would, then times a batch against its latency budget.
pub fn validate(dir: &Path) -> Result<ValidationReport, ModelError> {
    let model = load_bundle(dir)?;
    let names: Vec<String> = model
        .manifest()
        .inputs
        .iter()
        .map(|i| i.name.clone())
        .collect();
    let golden_path = dir.join("golden.csv");
    let golden = if golden_path.exists() {
        read_golden(&golden_path, &names)?
    } else {
        Vec::new()
    };
    // Time on golden rows when there are some (realistic paths through trees), else all-missing rows.
    let columns: Vec<Vec<f32>> = (0..names.len())
        .map(|c| {
            (0..VALIDATE_BATCH)
                .map(|r| {
                    golden
                        .get(r % golden.len().max(1))
                        .map_or(f32::NAN, |g| g.inputs[c])
                })
                .collect()
        })
        .collect();
    let slices: Vec<&[f32]> = columns.iter().map(Vec::as_slice).collect();
    let cols = Columns::new(&slices, VALIDATE_BATCH)?;
    let mut out = vec![0.0f32; VALIDATE_BATCH];
    let mut times = Vec::with_capacity(31);
    for _ in 0..31 {
        let t = Instant::now();
        model.predict(&cols, &mut out)?;
        times.push(t.elapsed());
    }
    times.sort();
    let batch_time = times[times.len() / 2];
    let within_budget =
        batch_time <= Duration::from_micros(model.manifest().serving.latency_budget_us);
    Ok(ValidationReport {
        golden_rows: golden.len(),
        model,
        batch_time,
        within_budget,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn linear_file(dir: &Path) -> PathBuf {
        let path = dir.join("ranker.json");
        std::fs::write(
            &path,
            r#"{"intercept": -1.0, "weights": {"a": 0.5, "b": 2.0}}"#,
        )
        .unwrap();
        path
    }

    fn options(dir: &Path) -> PackageOptions {
        PackageOptions {
            kind: ModelKind::Linear,
            weights: linear_file(dir),
            name: "ranker".into(),
            version: "1".into(),
            task: "rank".into(),
            features: None,
            link: None,
            output: None,
            golden: None,
            calibration: None,
            fallback_prior: None,
            latency_budget_us: 1_000_000,
            out: dir.join("bundle"),
        }
    }

    #[test]
    fn packages_a_linear_model_with_library_golden_rows() {
        let tmp = tempfile::tempdir().unwrap();
        let p = |a: f64, b: f64| 1.0 / (1.0 + (-(-1.0 + 0.5 * a + 2.0 * b)).exp());
        let golden = tmp.path().join("rows.csv");
        std::fs::write(
            &golden,
            format!("b,a,prediction\n1,2,{}\n0,,{}\n", p(2.0, 1.0), p(0.0, 0.0)),
        )
        .unwrap();
        let mut opts = options(tmp.path());
        opts.golden = Some(golden);
        let report = package(&opts).unwrap();
        assert!(report.golden_from_library);
        assert_eq!(report.golden_rows, 2);
        assert!(report.dir.join("reference.json").exists());
        let v = validate(&report.dir).unwrap();
        assert_eq!(v.golden_rows, 2);
        assert!(v.within_budget);
        // Never overwritten.
        assert!(package(&opts)
            .unwrap_err()
            .to_string()
            .contains("never overwritten"));
    }

    #[test]
    fn refuses_golden_rows_the_model_does_not_reproduce() {
        let tmp = tempfile::tempdir().unwrap();
        let golden = tmp.path().join("rows.csv");
        std::fs::write(&golden, "a,b,prediction\n1,1,0.999\n").unwrap();
        let mut opts = options(tmp.path());
        opts.golden = Some(golden);
        let err = package(&opts).unwrap_err().to_string();
        assert!(
            err.contains("rows.csv") && err.contains("golden row 1"),
            "{err}"
        );
        assert!(!opts.out.exists() || std::fs::read_dir(&opts.out).unwrap().next().is_none());
    }

    #[test]
    fn applies_declared_calibration() {
        let tmp = tempfile::tempdir().unwrap();
        let calib = tmp.path().join("calib.json");
        std::fs::write(
            &calib,
            r#"{"kind": "isotonic", "x": [0.0, 1.0], "y": [0.0, 0.5]}"#,
        )
        .unwrap();
        let mut opts = options(tmp.path());
        opts.calibration = Some(calib);
        let report = package(&opts).unwrap();
        let model = load_bundle(&report.dir).unwrap();
        let out = model
            .predict_columns(vec![vec![0.0], vec![0.0]], 1)
            .unwrap();
        let raw = 1.0 / (1.0 + 1f32.exp());
        assert!((out[0] - raw * 0.5).abs() < 1e-6);
    }
}
