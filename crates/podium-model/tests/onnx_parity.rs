//! Parity of Podium's ONNX runtime with onnxruntime, on fixtures made by
//! `scripts/make_onnx_fixtures.py`: scikit-learn pipelines (skl2onnx, with and without ZipMap),
//! an MLP, LightGBM and XGBoost ensembles (onnxmltools), and hand-built tree ensembles that reach
//! every node mode and post-transform. Every row must match to 1e-5. Broken and unsupported graphs
//! must be refused with an error naming the file, never a panic.

use podium_model::manifest::{InputSpec, Link, Manifest, ModelKind, OutputSpec, ServingSpec};
use podium_model::onnx::{self, OnnxRuntime};
use podium_model::{load_bundle, BundleWriter, Columns, GoldenRow, ModelError, Runtime};
use std::path::{Path, PathBuf};

const TOLERANCE: f64 = 1e-5;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/onnx")
        .join(name)
}

/// A fixture input file, column-major; empty cells are NaN.
struct Inputs {
    names: Vec<String>,
    columns: Vec<Vec<f32>>,
    rows: usize,
}

impl Inputs {
    fn read(name: &str) -> Self {
        let text = std::fs::read_to_string(fixture(name)).unwrap();
        let mut lines = text.lines();
        let names: Vec<String> = lines
            .next()
            .unwrap()
            .split(',')
            .map(str::to_string)
            .collect();
        let mut columns = vec![Vec::new(); names.len()];
        let mut rows = 0;
        for line in lines {
            for (column, cell) in columns.iter_mut().zip(line.split(',')) {
                // The script wrote the shortest text of each f32, so this is exact.
                column.push(if cell.is_empty() {
                    f32::NAN
                } else {
                    cell.parse().unwrap()
                });
            }
            rows += 1;
        }
        Self {
            names,
            columns,
            rows,
        }
    }

    fn slices(&self) -> Vec<&[f32]> {
        self.columns.iter().map(Vec::as_slice).collect()
    }

    fn row(&self, r: usize) -> Vec<f32> {
        self.columns.iter().map(|c| c[r]).collect()
    }
}

fn expected(model: &str) -> Vec<f64> {
    let text = std::fs::read_to_string(fixture(&format!("{model}_expected.csv"))).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("prediction"));
    lines.map(|l| l.parse().unwrap()).collect()
}

fn output(tensor: Option<&str>, column: Option<usize>) -> OutputSpec {
    OutputSpec {
        link: Link::Identity,
        tensor: tensor.map(str::to_string),
        column,
    }
}

fn scores(runtime: &OnnxRuntime, inputs: &Inputs, rows: std::ops::Range<usize>) -> Vec<f32> {
    let columns: Vec<&[f32]> = inputs.columns.iter().map(|c| &c[rows.clone()]).collect();
    let mut out = vec![f32::NAN; rows.len()];
    runtime
        .predict_raw(&Columns::new(&columns, rows.len()).unwrap(), &mut out)
        .unwrap();
    out
}

/// (model, input file, output tensor, column), as MANIFEST.txt lists them.
const CASES: &[(&str, &str, &str, usize)] = &[
    ("logreg_zipmap", "ads_input.csv", "output_probability", 1),
    ("logreg", "ads_input.csv", "probabilities", 1),
    ("normalizer_linreg", "ads_input.csv", "variable", 0),
    ("normalizer_linreg_batch1", "ads_input.csv", "variable", 0),
    ("mlp", "mlp_input.csv", "probabilities", 1),
    ("lightgbm_binary", "gbdt_input.csv", "probabilities", 1),
    ("lightgbm_regressor", "gbdt_input.csv", "variable", 0),
    ("xgboost_binary", "gbdt_input.csv", "probabilities", 1),
    ("xgboost_regressor", "gbdt_input.csv", "variable", 0),
    (
        "trees_binary_logistic",
        "hand_input.csv",
        "probabilities",
        1,
    ),
    (
        "trees_binary_positive",
        "hand_input.csv",
        "probabilities",
        1,
    ),
    (
        "trees_multiclass_softmax",
        "hand_input.csv",
        "probabilities",
        2,
    ),
    ("trees_regressor_average", "hand_input.csv", "variable", 0),
    ("trees_regressor_max", "hand_input.csv", "variable", 1),
];

fn assert_parity(model: &str, runtime: &OnnxRuntime, inputs: &Inputs) {
    let want = expected(model);
    assert_eq!(want.len(), inputs.rows, "{model}: expected rows");
    let got = scores(runtime, inputs, 0..inputs.rows);
    let mut worst = (0.0f64, 0);
    let mut failures = Vec::new();
    for (r, (&g, &w)) in got.iter().zip(&want).enumerate() {
        let diff = (f64::from(g) - w).abs();
        if diff > worst.0 {
            worst = (diff, r);
        }
        if diff > TOLERANCE || diff.is_nan() {
            failures.push(format!(
                "row {}: {:?} -> podium {g}, onnxruntime {w}",
                r + 1,
                inputs.row(r)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{model}: {} of {} rows differ by more than {TOLERANCE}:\n{}",
        failures.len(),
        inputs.rows,
        failures[..failures.len().min(10)].join("\n")
    );
    eprintln!(
        "{model}: {} rows, worst difference {:e} (row {})",
        inputs.rows,
        worst.0,
        worst.1 + 1
    );
}

#[test]
fn every_fixture_matches_onnxruntime_on_every_row() {
    for &(model, input, tensor, column) in CASES {
        let inputs = Inputs::read(input);
        let runtime = onnx::read(
            &fixture(&format!("{model}.onnx")),
            inputs.names.len(),
            &output(Some(tensor), Some(column)),
        )
        .unwrap_or_else(|e| panic!("{model}: {e}"));
        assert_eq!(runtime.num_inputs(), inputs.names.len());
        assert_parity(model, &runtime, &inputs);
    }
}

#[test]
fn the_default_output_is_the_positive_class_probability() {
    // skl2onnx and onnxmltools put the integer label first; the default skips it and reads
    // column 1 of the [N, 2] probabilities (through ZipMap where the export kept it).
    for &(model, input, tensor, column) in CASES {
        if model.starts_with("trees_") {
            continue; // hand-built: several columns or a column other than the default
        }
        let inputs = Inputs::read(input);
        let runtime = onnx::read(
            &fixture(&format!("{model}.onnx")),
            inputs.names.len(),
            &output(None, None),
        )
        .unwrap_or_else(|e| panic!("{model}: {e}"));
        assert_eq!(runtime.output_name(), tensor, "{model}");
        assert_eq!(runtime.column(), column, "{model}");
        assert_parity(model, &runtime, &inputs);
    }
}

#[test]
fn batches_of_any_size_score_like_the_whole() {
    for (model, input) in [
        ("lightgbm_binary", "gbdt_input.csv"),
        ("mlp", "mlp_input.csv"),
        ("normalizer_linreg_batch1", "ads_input.csv"),
        ("logreg_zipmap", "ads_input.csv"),
    ] {
        let inputs = Inputs::read(input);
        let runtime = onnx::read(
            &fixture(&format!("{model}.onnx")),
            inputs.names.len(),
            &output(None, None),
        )
        .unwrap();
        let whole = scores(&runtime, &inputs, 0..inputs.rows);
        let mut start = 0;
        for size in [1, 2, 7, 64, 1].into_iter().cycle() {
            if start >= inputs.rows {
                break;
            }
            let end = (start + size).min(inputs.rows);
            let part = scores(&runtime, &inputs, start..end);
            for (i, (&a, &b)) in part.iter().zip(&whole[start..end]).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-6,
                    "{model}: row {} scores {a} in a batch of {size}, {b} in the whole",
                    start + i + 1
                );
            }
            start = end;
        }
        let mut empty: [f32; 0] = [];
        let no_columns: Vec<&[f32]> = vec![&[]; inputs.names.len()];
        runtime
            .predict_raw(&Columns::new(&no_columns, 0).unwrap(), &mut empty)
            .unwrap();
    }
}

fn manifest(names: &[String], weights: &str, out: OutputSpec) -> Manifest {
    Manifest {
        name: "ctr".into(),
        version: "onnx-1".into(),
        kind: ModelKind::Onnx,
        task: "ctr".into(),
        weights: weights.into(),
        inputs: names
            .iter()
            .map(|n| InputSpec {
                name: n.clone(),
                kind: "f32".into(),
                default: None,
            })
            .collect(),
        output: out,
        serving: ServingSpec {
            latency_budget_us: 2_000,
            fallback_prior: 0.01,
        },
        calibration: None,
    }
}

fn write_bundle(dir: &Path, model: &str, input: &str, names: &[String], out: OutputSpec) {
    let inputs = Inputs::read(input);
    let want = expected(model);
    let golden: Vec<GoldenRow> = (0..inputs.rows)
        .step_by(5)
        .map(|r| GoldenRow {
            inputs: inputs.row(r),
            expected: want[r],
        })
        .collect();
    let weights = format!("weights/{model}.onnx");
    BundleWriter::new(dir, manifest(names, &weights, out))
        .weights(std::fs::read(fixture(&format!("{model}.onnx"))).unwrap())
        .golden(&golden)
        .write()
        .unwrap();
}

#[test]
fn onnx_bundles_load_and_pass_their_golden_rows() {
    for (model, input, out) in [
        ("logreg_zipmap", "ads_input.csv", output(None, None)),
        ("lightgbm_binary", "gbdt_input.csv", output(None, None)),
        (
            "trees_multiclass_softmax",
            "hand_input.csv",
            output(Some("probabilities"), Some(2)),
        ),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let names = Inputs::read(input).names;
        write_bundle(tmp.path(), model, input, &names, out);
        let loaded = load_bundle(tmp.path()).unwrap_or_else(|e| panic!("{model}: {e}"));
        assert_eq!(loaded.manifest().kind, ModelKind::Onnx);
        // model.toml round-trips the new output fields.
        let text = std::fs::read_to_string(tmp.path().join("model.toml")).unwrap();
        let reread: Manifest = toml::from_str(&text).unwrap();
        assert_eq!(&reread, loaded.manifest());
    }
}

#[test]
fn a_manifest_without_the_onnx_fields_still_parses() {
    let text = r#"
name = "ctr"
version = "1"
kind = "linear"
task = "ctr"
weights = "weights/linear.json"

[[inputs]]
name = "a"

[output]
link = "logistic"

[serving]
fallback_prior = 0.01
"#;
    let m: Manifest = toml::from_str(text).unwrap();
    assert_eq!(m.output.tensor, None);
    assert_eq!(m.output.column, None);
}

fn assert_error_names_file(err: &ModelError, path: &Path, what: &str) {
    let text = err.to_string();
    assert!(
        text.contains(&path.display().to_string()),
        "{what}: error does not name {}: {text}",
        path.display()
    );
}

#[test]
fn a_wrong_input_width_names_both_numbers() {
    let path = fixture("logreg.onnx");
    for width in [7, 9] {
        let err = onnx::read(&path, width, &output(None, None)).unwrap_err();
        assert!(matches!(err, ModelError::Schema(_)), "{err}");
        assert_error_names_file(&err, &path, "wrong width");
        let text = err.to_string();
        assert!(
            text.contains("has 8 features") && text.contains(&format!("lists {width} inputs")),
            "{text}"
        );
    }
    // Through a bundle: a manifest listing one input too few.
    let tmp = tempfile::tempdir().unwrap();
    let mut names = Inputs::read("ads_input.csv").names;
    names.pop();
    let inputs = Inputs::read("ads_input.csv");
    let golden: Vec<GoldenRow> = Vec::new();
    BundleWriter::new(
        tmp.path(),
        manifest(&names, "weights/logreg.onnx", output(None, None)),
    )
    .weights(std::fs::read(&path).unwrap())
    .golden(&golden)
    .write()
    .unwrap();
    assert_eq!(inputs.names.len(), 8);
    let err = load_bundle(tmp.path()).unwrap_err();
    assert!(err.to_string().contains("lists 7 inputs"), "{err}");
}

#[test]
fn operators_nobody_implements_are_named() {
    for (file, op) in [
        ("unknown_op.onnx", "ai.onnx.ml:SVMClassifier"),
        ("custom_domain.onnx", "com.example.ads:FancyScore"),
    ] {
        let path = fixture(file);
        let err = onnx::read(&path, 4, &output(None, None)).unwrap_err();
        assert!(matches!(err, ModelError::Unsupported(_)), "{file}: {err}");
        assert_error_names_file(&err, &path, file);
        assert!(err.to_string().contains(op), "{file}: {err}");
    }
}

#[test]
fn garbage_and_truncated_files_are_errors_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let garbage = tmp.path().join("model.onnx");
    std::fs::write(&garbage, b"this is not a protobuf \xff\xfe\x00\x01 at all").unwrap();
    let err = onnx::read(&garbage, 8, &output(None, None)).unwrap_err();
    assert!(matches!(err, ModelError::Parse { .. }), "{err}");
    assert_error_names_file(&err, &garbage, "garbage");

    let empty = tmp.path().join("empty.onnx");
    std::fs::write(&empty, b"").unwrap();
    let err = onnx::read(&empty, 8, &output(None, None)).unwrap_err();
    assert_error_names_file(&err, &empty, "empty");

    let missing = tmp.path().join("absent.onnx");
    assert!(matches!(
        onnx::read(&missing, 8, &output(None, None)),
        Err(ModelError::Io { .. })
    ));

    let bytes = std::fs::read(fixture("lightgbm_binary.onnx")).unwrap();
    let cut_path = tmp.path().join("cut.onnx");
    for cut in [1, 10, bytes.len() / 3, bytes.len() / 2, bytes.len() - 3] {
        std::fs::write(&cut_path, &bytes[..cut]).unwrap();
        let err = onnx::read(&cut_path, 8, &output(None, None)).unwrap_err();
        assert_error_names_file(&err, &cut_path, &format!("cut to {cut} bytes"));
    }
}

#[test]
fn outputs_that_are_not_there_or_not_scores_are_refused() {
    let path = fixture("logreg.onnx");
    let err = onnx::read(&path, 8, &output(Some("proba"), None)).unwrap_err();
    assert!(matches!(err, ModelError::Schema(_)), "{err}");
    assert!(err.to_string().contains("probabilities"), "{err}");

    let err = onnx::read(&path, 8, &output(Some("probabilities"), Some(2))).unwrap_err();
    assert!(err.to_string().contains("out of range"), "{err}");

    let err = onnx::read(&path, 8, &output(Some("label"), None)).unwrap_err();
    assert!(err.to_string().contains("not scores"), "{err}");

    let path = fixture("trees_multiclass_softmax.onnx");
    let err = onnx::read(&path, 4, &output(None, None)).unwrap_err();
    assert!(err.to_string().contains("set output.column"), "{err}");
}

/// A small deterministic generator, so a failure reproduces.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn garbled_graphs_never_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let mut rng = SplitMix(0x0_4e4e_5800);
    for (model, input) in [
        ("logreg_zipmap", "ads_input.csv"),
        ("trees_binary_logistic", "hand_input.csv"),
        ("normalizer_linreg", "ads_input.csv"),
    ] {
        let inputs = Inputs::read(input);
        let original = std::fs::read(fixture(&format!("{model}.onnx"))).unwrap();
        let path = tmp.path().join(format!("{model}.onnx"));
        let (mut loaded, mut refused) = (0, 0);
        for _ in 0..150 {
            let mut bytes = original.clone();
            for _ in 0..1 + rng.below(3) {
                let at = rng.below(bytes.len());
                match rng.below(3) {
                    0 => bytes[at] = rng.next() as u8,
                    1 => {
                        bytes.remove(at);
                    }
                    _ => bytes.insert(at, rng.next() as u8),
                }
            }
            std::fs::write(&path, &bytes).unwrap();
            match onnx::read(&path, inputs.names.len(), &output(None, None)) {
                Ok(runtime) => {
                    // Whatever loads must score (or refuse to) without panicking.
                    let mut out = vec![0.0; inputs.rows];
                    let _ = runtime.predict_raw(
                        &Columns::new(&inputs.slices(), inputs.rows).unwrap(),
                        &mut out,
                    );
                    loaded += 1;
                }
                Err(err) => {
                    assert_error_names_file(&err, &path, model);
                    refused += 1;
                }
            }
        }
        eprintln!("{model}: {loaded} garbled copies loaded, {refused} refused");
        assert!(refused > 0, "{model}: no garbled copy was refused");
    }
}
