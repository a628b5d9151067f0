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

// --- The dense fast path -------------------------------------------------------------------
//
// Dense MLPs skip tract's plan (see `onnx::dense`). The fixture MLP above covers the standard
// workload's shape against onnxruntime; the graphs below are built here, in the other forms
// exporters write (Gemm with transB, alpha and beta; tanh, sigmoid and softmax; Reshape; narrow
// hidden layers; the binary head's `1 - p`), and checked against a float64 evaluation of the same
// network. Graphs the fast path must not take (an activation whose input is read twice, softmax
// along the batch, an operator it does not know) are checked to stay on tract and still score right.

use prost::Message;
use tract_onnx::pb;

impl SplitMix {
    /// Uniform in [-1, 1).
    fn uniform(&mut self) -> f32 {
        ((self.next() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    fn uniforms(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform() * scale).collect()
    }
}

fn float_tensor(name: &str, dims: &[i64], values: &[f32]) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: 1,
        float_data: values.to_vec(),
        ..Default::default()
    }
}

fn int_tensor(name: &str, values: &[i64]) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: vec![values.len() as i64],
        data_type: 7,
        int64_data: values.to_vec(),
        ..Default::default()
    }
}

enum Attr {
    I(i64),
    F(f32),
    Fs(Vec<f32>),
}

fn node(op: &str, inputs: &[&str], output: &str, attrs: Vec<(&str, Attr)>) -> pb::NodeProto {
    use pb::attribute_proto::AttributeType;
    pb::NodeProto {
        op_type: op.into(),
        domain: if op == "Imputer" {
            "ai.onnx.ml".into()
        } else {
            String::new()
        },
        name: format!("{op}_{output}"),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        attribute: attrs
            .into_iter()
            .map(|(name, a)| {
                let mut p = pb::AttributeProto {
                    name: name.into(),
                    ..Default::default()
                };
                match a {
                    Attr::I(i) => (p.i, p.r#type) = (i, AttributeType::Int as i32),
                    Attr::F(f) => (p.f, p.r#type) = (f, AttributeType::Float as i32),
                    Attr::Fs(f) => (p.floats, p.r#type) = (f, AttributeType::Floats as i32),
                }
                p
            })
            .collect(),
        ..Default::default()
    }
}

fn float_info(name: &str, dims: &[Option<i64>]) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{dimension, Dimension};
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: 1,
                shape: Some(pb::TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|d| Dimension {
                            value: d.map(dimension::Value::DimValue),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Writes a one-input, one-output graph (input "x", `width` features, batch `batch`).
fn write_graph(
    dir: &Path,
    width: usize,
    batch: Option<i64>,
    nodes: Vec<pb::NodeProto>,
    initializers: Vec<pb::TensorProto>,
    output: &str,
    output_dims: &[Option<i64>],
) -> PathBuf {
    let graph = pb::GraphProto {
        name: "dense".into(),
        node: nodes,
        initializer: initializers,
        input: vec![float_info("x", &[batch, Some(width as i64)])],
        output: vec![float_info(output, output_dims)],
        ..Default::default()
    };
    let model = pb::ModelProto {
        ir_version: 8,
        opset_import: vec![
            pb::OperatorSetIdProto {
                domain: String::new(),
                version: 15,
            },
            pb::OperatorSetIdProto {
                domain: "ai.onnx.ml".into(),
                version: 1,
            },
        ],
        graph: Some(graph),
        ..Default::default()
    };
    let path = dir.join(format!("{output}.onnx"));
    std::fs::write(&path, model.encode_to_vec()).unwrap();
    path
}

/// One layer of the float64 reference: `act(x · w + b)`, `w` row-major `[k, n]`.
struct RefLayer {
    w: Vec<f32>,
    b: Vec<f32>,
    n: usize,
    act: &'static str,
}

fn reference(layers: &[RefLayer], x: &[f32]) -> Vec<f64> {
    let mut h: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
    for l in layers {
        let k = h.len();
        let mut o: Vec<f64> = (0..l.n)
            .map(|j| {
                (0..k)
                    .map(|kk| h[kk] * f64::from(l.w[kk * l.n + j]))
                    .sum::<f64>()
                    + f64::from(l.b[j])
            })
            .collect();
        match l.act {
            "relu" => o.iter_mut().for_each(|v| *v = v.max(0.0)),
            "sigmoid" => o.iter_mut().for_each(|v| *v = 1.0 / (1.0 + (-*v).exp())),
            "tanh" => o.iter_mut().for_each(|v| *v = v.tanh()),
            "leaky" => o
                .iter_mut()
                .for_each(|v| *v = if *v < 0.0 { *v * 0.01 } else { *v }),
            "softmax" => {
                let max = o.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = o.iter().map(|v| (v - max).exp()).sum();
                o.iter_mut().for_each(|v| *v = (*v - max).exp() / sum);
            }
            _ => {}
        }
        h = o;
    }
    h
}

/// Random rows, column-major, with a few missing values when `missing`.
fn random_inputs(rng: &mut SplitMix, width: usize, rows: usize, missing: bool) -> Inputs {
    let columns = (0..width)
        .map(|_| {
            (0..rows)
                .map(|_| {
                    if missing && rng.below(10) == 0 {
                        f32::NAN
                    } else {
                        rng.uniform() * 2.0
                    }
                })
                .collect()
        })
        .collect();
    Inputs {
        names: (0..width).map(|i| format!("f{i}")).collect(),
        columns,
        rows,
    }
}

/// Scores `inputs` whole and in uneven batches, checks both against `want` to 1e-5 (relative
/// above 1) and the batches against the whole to 1e-6.
fn assert_scores(what: &str, runtime: &OnnxRuntime, inputs: &Inputs, want: &[f64]) {
    let whole = scores(runtime, inputs, 0..inputs.rows);
    for (r, (&g, &w)) in whole.iter().zip(want).enumerate() {
        let diff = (f64::from(g) - w).abs();
        assert!(
            diff <= TOLERANCE * w.abs().max(1.0),
            "{what}: row {r}: {:?} -> podium {g}, float64 {w}",
            inputs.row(r)
        );
    }
    let mut start = 0;
    for size in [1, 2, 3, 4, 5, 6, 7, 13, 300].into_iter().cycle() {
        if start >= inputs.rows {
            break;
        }
        let end = (start + size).min(inputs.rows);
        let part = scores(runtime, inputs, start..end);
        for (i, (&a, &b)) in part.iter().zip(&whole[start..end]).enumerate() {
            assert!(
                (a - b).abs() <= 1e-6,
                "{what}: row {} scores {a} in a batch of {size}, {b} in the whole",
                start + i
            );
        }
        start = end;
    }
}

#[test]
fn the_fixture_mlp_runs_on_the_dense_path() {
    let inputs = Inputs::read("mlp_input.csv");
    let runtime = onnx::read(&fixture("mlp.onnx"), 64, &output(None, None)).unwrap();
    assert_eq!(
        runtime.dense_layers().as_deref(),
        Some("64 → 256 relu → 128 relu → 1 sigmoid")
    );
    assert_parity("mlp", &runtime, &inputs);
    // The other fixtures are not MLPs and stay on tract.
    for &(model, input, tensor, column) in CASES {
        if model != "mlp" {
            let width = Inputs::read(input).names.len();
            let runtime = onnx::read(
                &fixture(&format!("{model}.onnx")),
                width,
                &output(Some(tensor), Some(column)),
            )
            .unwrap();
            assert_eq!(runtime.dense_layers(), None, "{model}");
        }
    }
}

#[test]
fn gemm_tanh_softmax_runs_on_the_dense_path() {
    // Gemm(transB, alpha, beta, C [1, n]) -> Tanh -> Gemm(C [n]) -> Softmax, 3 classes.
    let tmp = tempfile::tempdir().unwrap();
    let mut rng = SplitMix(11);
    let (w1t, c1) = (rng.uniforms(7 * 5, 1.0), rng.uniforms(7, 0.5));
    let (w2, c2) = (rng.uniforms(7 * 3, 1.0), rng.uniforms(3, 0.5));
    let path = write_graph(
        tmp.path(),
        5,
        None,
        vec![
            node(
                "Gemm",
                &["x", "w1", "c1"],
                "g1",
                vec![
                    ("transB", Attr::I(1)),
                    ("alpha", Attr::F(0.5)),
                    ("beta", Attr::F(2.0)),
                ],
            ),
            node("Tanh", &["g1"], "h1", vec![]),
            node("Gemm", &["h1", "w2", "c2"], "g2", vec![]),
            node("Softmax", &["g2"], "probs", vec![("axis", Attr::I(-1))]),
        ],
        vec![
            float_tensor("w1", &[7, 5], &w1t),
            float_tensor("c1", &[1, 7], &c1),
            float_tensor("w2", &[7, 3], &w2),
            float_tensor("c2", &[3], &c2),
        ],
        "probs",
        &[None, Some(3)],
    );
    // The reference applies transB, alpha and beta itself.
    let mut w1 = vec![0.0; 5 * 7];
    for j in 0..7 {
        for k in 0..5 {
            w1[k * 7 + j] = w1t[j * 5 + k] * 0.5;
        }
    }
    let layers = [
        RefLayer {
            w: w1,
            b: c1.iter().map(|c| c * 2.0).collect(),
            n: 7,
            act: "tanh",
        },
        RefLayer {
            w: w2,
            b: c2,
            n: 3,
            act: "softmax",
        },
    ];
    let inputs = random_inputs(&mut rng, 5, 600, false);
    for column in 0..3 {
        let runtime = onnx::read(&path, 5, &output(Some("probs"), Some(column))).unwrap();
        assert_eq!(
            runtime.dense_layers().as_deref(),
            Some("5 → 7 tanh → 3 softmax")
        );
        let want: Vec<f64> = (0..inputs.rows)
            .map(|r| reference(&layers, &inputs.row(r))[column])
            .collect();
        assert_scores("gemm_tanh_softmax", &runtime, &inputs, &want);
    }
}

#[test]
fn a_regressor_with_cast_bias_first_and_reshape_runs_on_the_dense_path() {
    // Cast -> MatMul -> Add(b, ·) -> Sigmoid -> MatMul -> Add -> Reshape [-1], as skl2onnx writes
    // MLPRegressor; the input's batch is fixed, which the fast path does not need.
    let tmp = tempfile::tempdir().unwrap();
    let mut rng = SplitMix(12);
    let (w1, b1) = (rng.uniforms(6 * 9, 1.0), rng.uniforms(9, 0.5));
    let (w2, b2) = (rng.uniforms(9, 1.0), rng.uniforms(1, 0.5));
    let path = write_graph(
        tmp.path(),
        6,
        Some(1),
        vec![
            node("Cast", &["x"], "xf", vec![("to", Attr::I(1))]),
            node("MatMul", &["xf", "w1"], "m1", vec![]),
            node("Add", &["b1", "m1"], "a1", vec![]),
            node("Sigmoid", &["a1"], "h1", vec![]),
            node("MatMul", &["h1", "w2"], "m2", vec![]),
            node("Add", &["m2", "b2"], "a2", vec![]),
            node("Reshape", &["a2", "shape"], "variable", vec![]),
        ],
        vec![
            float_tensor("w1", &[6, 9], &w1),
            float_tensor("b1", &[9], &b1),
            float_tensor("w2", &[9, 1], &w2),
            float_tensor("b2", &[1, 1], &b2),
            int_tensor("shape", &[-1]),
        ],
        "variable",
        &[Some(1)],
    );
    let runtime = onnx::read(&path, 6, &output(None, None)).unwrap();
    assert_eq!(runtime.dense_layers().as_deref(), Some("6 → 9 sigmoid → 1"));
    let layers = [
        RefLayer {
            w: w1,
            b: b1,
            n: 9,
            act: "sigmoid",
        },
        RefLayer {
            w: w2,
            b: b2,
            n: 1,
            act: "",
        },
    ];
    let inputs = random_inputs(&mut rng, 6, 301, false);
    let want: Vec<f64> = (0..inputs.rows)
        .map(|r| reference(&layers, &inputs.row(r))[0])
        .collect();
    assert_scores("regressor", &runtime, &inputs, &want);
}

#[test]
fn narrow_layers_and_the_binary_head_run_on_the_dense_path() {
    // Imputer -> [5 -> 3 relu -> 12 relu -> 2 relu -> 1 sigmoid] -> Concat(1 - p, p): layers
    // narrower than a panel, k not a multiple of 8, and both columns of the binary head.
    let tmp = tempfile::tempdir().unwrap();
    let mut rng = SplitMix(13);
    let imputed = rng.uniforms(5, 1.0);
    let dims = [5usize, 3, 12, 2, 1];
    let mut nodes = vec![node(
        "Imputer",
        &["x"],
        "l0",
        vec![
            ("imputed_value_floats", Attr::Fs(imputed.clone())),
            ("replaced_value_float", Attr::F(f32::NAN)),
        ],
    )];
    let mut inits = Vec::new();
    let mut layers = Vec::new();
    for l in 0..4 {
        let (k, n) = (dims[l], dims[l + 1]);
        let (w, b) = (rng.uniforms(k * n, 1.0), rng.uniforms(n, 0.3));
        let act = if l < 3 { "relu" } else { "sigmoid" };
        nodes.push(node(
            "MatMul",
            &[&format!("l{l}"), &format!("w{l}")],
            &format!("m{l}"),
            vec![],
        ));
        nodes.push(node(
            "Add",
            &[&format!("m{l}"), &format!("b{l}")],
            &format!("a{l}"),
            vec![],
        ));
        let op = if l < 3 { "Relu" } else { "Sigmoid" };
        nodes.push(node(
            op,
            &[&format!("a{l}")],
            &format!("l{}", l + 1),
            vec![],
        ));
        inits.push(float_tensor(&format!("w{l}"), &[k as i64, n as i64], &w));
        inits.push(float_tensor(&format!("b{l}"), &[1, n as i64], &b));
        layers.push(RefLayer { w, b, n, act });
    }
    nodes.push(node("Sub", &["unity", "l4"], "neg", vec![]));
    nodes.push(node(
        "Concat",
        &["neg", "l4"],
        "probabilities",
        vec![("axis", Attr::I(1))],
    ));
    inits.push(float_tensor("unity", &[], &[1.0]));
    let path = write_graph(
        tmp.path(),
        5,
        None,
        nodes,
        inits,
        "probabilities",
        &[None, Some(2)],
    );
    let inputs = random_inputs(&mut rng, 5, 257, true);
    for column in 0..2 {
        let runtime = onnx::read(&path, 5, &output(None, Some(column))).unwrap();
        assert_eq!(
            runtime.dense_layers().as_deref(),
            Some("5 → 3 relu → 12 relu → 2 relu → 1 sigmoid")
        );
        let want: Vec<f64> = (0..inputs.rows)
            .map(|r| {
                let x: Vec<f32> = inputs
                    .row(r)
                    .iter()
                    .zip(&imputed)
                    .map(|(&v, &i)| if v.is_nan() { i } else { v })
                    .collect();
                let p = reference(&layers, &x)[0];
                if column == 0 {
                    1.0 - p
                } else {
                    p
                }
            })
            .collect();
        assert_scores("binary head", &runtime, &inputs, &want);
    }
}

#[test]
fn graphs_the_dense_path_does_not_take_stay_on_tract() {
    let tmp = tempfile::tempdir().unwrap();
    let mut rng = SplitMix(14);
    let (w, b) = (rng.uniforms(4 * 3, 1.0), rng.uniforms(3, 0.3));
    let inits = || vec![float_tensor("w", &[4, 3], &w), float_tensor("b", &[3], &b)];
    let layer = |act| {
        [RefLayer {
            w: w.clone(),
            b: b.clone(),
            n: 3,
            act,
        }]
    };
    let inputs = random_inputs(&mut rng, 4, 40, false);
    let gemm = || node("Gemm", &["x", "w", "b"], "g", vec![]);

    // An operator the fast path does not know.
    let path = write_graph(
        tmp.path(),
        4,
        None,
        vec![
            gemm(),
            node("LeakyRelu", &["g"], "leaky", vec![("alpha", Attr::F(0.01))]),
        ],
        inits(),
        "leaky",
        &[None, Some(3)],
    );
    let runtime = onnx::read(&path, 4, &output(None, Some(1))).unwrap();
    assert_eq!(runtime.dense_layers(), None);
    let want: Vec<f64> = (0..inputs.rows)
        .map(|r| reference(&layer("leaky"), &inputs.row(r))[1])
        .collect();
    assert_scores("leaky relu", &runtime, &inputs, &want);

    // An activation whose input is also read elsewhere: relu(g) + sigmoid(g), side by side.
    let path = write_graph(
        tmp.path(),
        4,
        None,
        vec![
            gemm(),
            node("Relu", &["g"], "r", vec![]),
            node("Sigmoid", &["g"], "s", vec![]),
            node("Concat", &["r", "s"], "both", vec![("axis", Attr::I(1))]),
        ],
        inits(),
        "both",
        &[None, Some(6)],
    );
    for column in [1, 4] {
        let runtime = onnx::read(&path, 4, &output(None, Some(column))).unwrap();
        assert_eq!(runtime.dense_layers(), None);
        let (act, j) = if column < 3 {
            ("relu", column)
        } else {
            ("sigmoid", column - 3)
        };
        let want: Vec<f64> = (0..inputs.rows)
            .map(|r| reference(&layer(act), &inputs.row(r))[j])
            .collect();
        assert_scores("shared pre-activation", &runtime, &inputs, &want);
    }

    // Softmax along the batch: each row's score depends on the others, so score it whole only.
    let path = write_graph(
        tmp.path(),
        4,
        None,
        vec![
            gemm(),
            node("Softmax", &["g"], "over_batch", vec![("axis", Attr::I(0))]),
        ],
        inits(),
        "over_batch",
        &[None, Some(3)],
    );
    let runtime = onnx::read(&path, 4, &output(None, Some(2))).unwrap();
    assert_eq!(runtime.dense_layers(), None);
    let logits: Vec<f64> = (0..inputs.rows)
        .map(|r| reference(&layer(""), &inputs.row(r))[2])
        .collect();
    let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let sum: f64 = logits.iter().map(|v| (v - max).exp()).sum();
    let got = scores(&runtime, &inputs, 0..inputs.rows);
    for (r, (&g, &l)) in got.iter().zip(&logits).enumerate() {
        let w = (l - max).exp() / sum;
        assert!((f64::from(g) - w).abs() <= TOLERANCE, "row {r}: {g} vs {w}");
    }
}

#[test]
fn the_dense_path_scores_the_same_from_many_threads_at_once() {
    // One runtime shared by threads scoring different batch sizes at the same time: each thread
    // has its own scratch, so none sees another's rows.
    let inputs = Inputs::read("mlp_input.csv");
    let runtime = onnx::read(&fixture("mlp.onnx"), 64, &output(None, None)).unwrap();
    assert!(runtime.dense_layers().is_some());
    let whole = scores(&runtime, &inputs, 0..inputs.rows);
    std::thread::scope(|s| {
        for size in [1, 3, 7, 64] {
            let (runtime, inputs, whole) = (&runtime, &inputs, &whole);
            s.spawn(move || {
                for _ in 0..20 {
                    let mut start = 0;
                    while start < inputs.rows {
                        let end = (start + size).min(inputs.rows);
                        let part = scores(runtime, inputs, start..end);
                        assert_eq!(part, whole[start..end], "batch {size} at row {start}");
                        start = end;
                    }
                }
            });
        }
    });
}
