//! Parity of Podium's GBDT runtimes with LightGBM's and XGBoost's own predictions, on the
//! fixtures `scripts/make_model_fixtures.py` writes (models, inputs with missing values and
//! values on and next to every kind of threshold, and the library's predictions), plus refusal of
//! damaged model files: an error naming the file, never a panic.

use podium_model::gbdt::{lightgbm, xgboost, GbdtModel};
use podium_model::manifest::{OutputSpec, ServingSpec};
use podium_model::{
    load_bundle, BundleWriter, Columns, GoldenRow, InputSpec, Link, Manifest, ModelError,
    ModelKind, Runtime,
};
use std::path::{Path, PathBuf};

/// The manifest's promise: every row within this of the library's prediction.
const TOLERANCE: f64 = 1e-5;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// An input CSV: header of feature names, one f32 per cell, empty = missing.
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
        for (r, line) in lines.enumerate() {
            let cells: Vec<&str> = line.split(',').collect();
            assert_eq!(cells.len(), names.len(), "{name} row {}", r + 1);
            for (column, cell) in columns.iter_mut().zip(cells) {
                // Straight to f32: the script wrote the shortest text of each f32 value.
                column.push(if cell.is_empty() {
                    f32::NAN
                } else {
                    cell.parse::<f32>().unwrap()
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

fn expected(name: &str) -> Vec<f64> {
    let text = std::fs::read_to_string(fixture(name)).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("prediction"));
    lines.map(|l| l.parse().unwrap()).collect()
}

fn raw_scores(runtime: &dyn Runtime, inputs: &Inputs, columns: &[&[f32]]) -> Vec<f32> {
    let mut out = vec![f32::NAN; inputs.rows];
    runtime
        .predict_raw(&Columns::new(columns, inputs.rows).unwrap(), &mut out)
        .unwrap();
    out
}

/// Scores every fixture row and compares it, after the model's link, with the library's value.
fn assert_parity(model: GbdtModel, input_file: &str, expected_file: &str) {
    let inputs = Inputs::read(input_file);
    let expected = expected(expected_file);
    assert_eq!(expected.len(), inputs.rows, "{expected_file}");
    let runtime = model.into_runtime(&inputs.names).unwrap();
    let raw = raw_scores(&runtime, &inputs, &inputs.slices());
    let mut worst = (0.0f64, 0);
    let mut failures = Vec::new();
    for (r, (&raw, &want)) in raw.iter().zip(&expected).enumerate() {
        let got = f64::from(model.link().apply(raw));
        let diff = (got - want).abs();
        if diff > worst.0 {
            worst = (diff, r);
        }
        if diff > TOLERANCE || diff.is_nan() {
            failures.push(format!(
                "row {}: {:?} -> podium {got}, library {want}",
                r + 1,
                inputs.row(r)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{expected_file}: {} of {} rows differ by more than {TOLERANCE}:\n{}",
        failures.len(),
        inputs.rows,
        failures[..failures.len().min(10)].join("\n")
    );
    eprintln!(
        "{expected_file}: {} rows, {} trees, worst difference {:e} (row {})",
        inputs.rows,
        runtime.num_trees(),
        worst.0,
        worst.1 + 1
    );
}

#[test]
fn lightgbm_binary_with_categorical_and_missing_matches_lightgbm() {
    let model = lightgbm::read(&fixture("lightgbm_binary.txt")).unwrap();
    assert_eq!(model.link(), Link::Logistic);
    assert_parity(model, "lightgbm_input.csv", "lightgbm_binary_expected.csv");
}

#[test]
fn lightgbm_regression_with_zero_as_missing_matches_lightgbm() {
    let model = lightgbm::read(&fixture("lightgbm_regression.txt")).unwrap();
    assert_eq!(model.link(), Link::Identity);
    assert_parity(
        model,
        "lightgbm_input.csv",
        "lightgbm_regression_expected.csv",
    );
}

#[test]
fn lightgbm_random_forest_averages_like_lightgbm() {
    let model = lightgbm::read(&fixture("lightgbm_rf.txt")).unwrap();
    assert_parity(model, "lightgbm_input.csv", "lightgbm_rf_expected.csv");
}

#[test]
fn xgboost_binary_matches_xgboost() {
    let model = xgboost::read(&fixture("xgboost_binary.json")).unwrap();
    assert_eq!(model.link(), Link::Logistic);
    assert_parity(model, "xgboost_input.csv", "xgboost_binary_expected.csv");
}

#[test]
fn xgboost_regression_matches_xgboost() {
    let model = xgboost::read(&fixture("xgboost_regression.json")).unwrap();
    assert_eq!(model.link(), Link::Identity);
    assert_parity(
        model,
        "xgboost_input.csv",
        "xgboost_regression_expected.csv",
    );
}

#[test]
fn the_manifest_input_order_is_what_the_runtime_reads() {
    let inputs = Inputs::read("lightgbm_input.csv");
    for model in [
        lightgbm::read(&fixture("lightgbm_binary.txt")).unwrap(),
        xgboost::read(&fixture("xgboost_regression.json")).unwrap(),
    ] {
        let straight = raw_scores(
            &model.into_runtime(&inputs.names).unwrap(),
            &inputs,
            &inputs.slices(),
        );
        // Reversed order, with an input the model never reads in the middle.
        let mut names: Vec<String> = inputs.names.iter().rev().cloned().collect();
        names.insert(2, "unused_feature".into());
        let noise = vec![12345.0f32; inputs.rows];
        let mut columns: Vec<&[f32]> = inputs.slices().into_iter().rev().collect();
        columns.insert(2, &noise);
        let runtime = model.into_runtime(&names).unwrap();
        assert_eq!(runtime.num_inputs(), names.len());
        let shuffled = raw_scores(&runtime, &inputs, &columns);
        assert!(
            straight
                .iter()
                .zip(&shuffled)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{}: reordering inputs changed scores",
            model.source().display()
        );
    }
}

#[test]
fn scores_do_not_depend_on_batch_size_or_position() {
    let inputs = Inputs::read("lightgbm_input.csv");
    for model in [
        lightgbm::read(&fixture("lightgbm_binary.txt")).unwrap(),
        xgboost::read(&fixture("xgboost_binary.json")).unwrap(),
    ] {
        let runtime = model.into_runtime(&inputs.names).unwrap();
        let whole = raw_scores(&runtime, &inputs, &inputs.slices());
        // Sizes around the scoring block (64 rows) and lockstep group (8 rows).
        for batch in [1, 7, 8, 9, 63, 64, 65, 200] {
            let mut start = 0;
            while start < inputs.rows {
                let end = (start + batch).min(inputs.rows);
                let columns: Vec<&[f32]> = inputs.columns.iter().map(|c| &c[start..end]).collect();
                let mut out = vec![f32::NAN; end - start];
                runtime
                    .predict_raw(&Columns::new(&columns, end - start).unwrap(), &mut out)
                    .unwrap();
                for (r, (a, b)) in out.iter().zip(&whole[start..end]).enumerate() {
                    assert_eq!(
                        a.to_bits(),
                        b.to_bits(),
                        "{}: batch {batch}, row {}",
                        model.source().display(),
                        start + r + 1
                    );
                }
                start = end;
            }
        }
    }
}

#[test]
fn a_model_feature_missing_from_the_manifest_is_named() {
    let names: Vec<String> = [
        "ctr_7d",
        "hour_of_day",
        "user_age_days",
        "tiny_signal",
        "placement",
    ]
    .map(String::from)
    .to_vec();
    for model in [
        lightgbm::read(&fixture("lightgbm_binary.txt")).unwrap(),
        xgboost::read(&fixture("xgboost_binary.json")).unwrap(),
    ] {
        let err = model.into_runtime(&names).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, ModelError::Schema(_)), "{text}");
        assert!(text.contains("\"bid_floor\""), "{text}");
        assert!(
            text.contains(&model.source().display().to_string()),
            "{text}"
        );
        assert!(text.contains("ctr_7d, hour_of_day"), "{text}");
    }
}

fn manifest(kind: ModelKind, weights: &str, names: &[String], link: Link) -> Manifest {
    Manifest {
        name: "ctr".into(),
        version: "7".into(),
        kind,
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
        output: OutputSpec {
            link,
            ..OutputSpec::default()
        },
        serving: ServingSpec {
            latency_budget_us: 2_000,
            fallback_prior: 0.01,
        },
        calibration: None,
    }
}

/// Writes a bundle of a fixture model whose golden rows are the fixture's first rows.
fn write_bundle(dir: &Path, kind: ModelKind, model_file: &str, case: &str, link: Link) {
    let input_file = match kind {
        ModelKind::Lightgbm => "lightgbm_input.csv",
        _ => "xgboost_input.csv",
    };
    let inputs = Inputs::read(input_file);
    let expected = expected(&format!("{case}_expected.csv"));
    let golden: Vec<GoldenRow> = (0..inputs.rows)
        .step_by(3)
        .map(|r| GoldenRow {
            inputs: inputs.row(r),
            expected: expected[r],
        })
        .collect();
    let weights = format!("weights/{model_file}");
    BundleWriter::new(dir, manifest(kind, &weights, &inputs.names, link))
        .weights(std::fs::read(fixture(model_file)).unwrap())
        .golden(&golden)
        .write()
        .unwrap();
}

#[test]
fn bundles_of_both_kinds_load_and_pass_their_golden_rows() {
    for (kind, file, case, link) in [
        (
            ModelKind::Lightgbm,
            "lightgbm_binary.txt",
            "lightgbm_binary",
            Link::Logistic,
        ),
        (
            ModelKind::Lightgbm,
            "lightgbm_regression.txt",
            "lightgbm_regression",
            Link::Identity,
        ),
        (
            ModelKind::Xgboost,
            "xgboost_binary.json",
            "xgboost_binary",
            Link::Logistic,
        ),
        (
            ModelKind::Xgboost,
            "xgboost_regression.json",
            "xgboost_regression",
            Link::Identity,
        ),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        write_bundle(tmp.path(), kind, file, case, link);
        let model = load_bundle(tmp.path()).unwrap_or_else(|e| panic!("{case}: {e}"));
        assert_eq!(model.manifest().kind, kind);
    }
}

#[test]
fn a_bundle_whose_link_disagrees_with_the_objective_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    write_bundle(
        tmp.path(),
        ModelKind::Xgboost,
        "xgboost_binary.json",
        "xgboost_binary",
        Link::Identity,
    );
    let err = load_bundle(tmp.path()).unwrap_err();
    assert!(matches!(err, ModelError::Schema(_)), "{err}");
    assert!(err.to_string().contains("logistic"), "{err}");
}

const MODEL_FILES: [&str; 5] = [
    "lightgbm_binary.txt",
    "lightgbm_regression.txt",
    "lightgbm_rf.txt",
    "xgboost_binary.json",
    "xgboost_regression.json",
];

fn parse(file: &str, text: &str, path: &Path) -> Result<GbdtModel, ModelError> {
    if file.ends_with(".txt") {
        lightgbm::parse(text, path)
    } else {
        xgboost::parse(text, path)
    }
}

fn assert_parse_error_naming(result: Result<GbdtModel, ModelError>, path: &Path, what: &str) {
    match result {
        Err(err @ ModelError::Parse { .. }) => {
            assert!(
                err.to_string().contains(&path.display().to_string()),
                "{what}: {err}"
            )
        }
        Err(other) => panic!("{what}: expected a parse error, got {other}"),
        Ok(_) => panic!("{what}: a damaged file loaded"),
    }
}

#[test]
fn truncated_model_files_are_parse_errors_naming_the_file() {
    for file in MODEL_FILES {
        let text = std::fs::read_to_string(fixture(file)).unwrap();
        // Everything after LightGBM's `end of trees` (importances, parameters) is not model.
        let model_end = text.find("end of trees").map_or(text.len(), |i| i + 11);
        let path = Path::new("bundle/weights").join(file);
        for cut in [
            0,
            1,
            model_end / 10,
            model_end / 3,
            model_end / 2,
            model_end * 9 / 10,
            model_end - 1,
        ] {
            let what = format!("{file} cut to {cut} bytes");
            assert_parse_error_naming(parse(file, &text[..cut], &path), &path, &what);
        }
    }
}

#[test]
fn foreign_and_binary_files_are_parse_errors_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let garbage = tmp.path().join("model.bin");
    std::fs::write(&garbage, [0x28u8, 0xb5, 0x2f, 0xfd, 0x00, 0xff, 0xfe, 0x80]).unwrap();
    assert_parse_error_naming(lightgbm::read(&garbage), &garbage, "binary as LightGBM");
    assert_parse_error_naming(xgboost::read(&garbage), &garbage, "binary as XGBoost");

    let lgb = fixture("lightgbm_binary.txt");
    let xgb = fixture("xgboost_binary.json");
    assert_parse_error_naming(xgboost::read(&lgb), &lgb, "LightGBM file as XGBoost");
    assert_parse_error_naming(lightgbm::read(&xgb), &xgb, "XGBoost file as LightGBM");

    let empty = tmp.path().join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    assert_parse_error_naming(lightgbm::read(&empty), &empty, "empty file");

    let missing = tmp.path().join("absent.json");
    assert!(matches!(
        xgboost::read(&missing),
        Err(ModelError::Io { .. })
    ));
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
fn garbled_model_files_never_panic() {
    // Characters that matter to either format's structure.
    const ALPHABET: &[u8] = b"0123456789-+.eE,[]{}\": =\nTrefal_";
    let lgb_inputs = Inputs::read("lightgbm_input.csv");
    let xgb_inputs = Inputs::read("xgboost_input.csv");
    let mut rng = SplitMix(0x5eed);
    for file in MODEL_FILES {
        let inputs = if file.ends_with(".txt") {
            &lgb_inputs
        } else {
            &xgb_inputs
        };
        let original = std::fs::read_to_string(fixture(file)).unwrap().into_bytes();
        let path = Path::new("weights").join(file);
        let (mut loaded, mut refused) = (0, 0);
        for _ in 0..300 {
            let mut bytes = original.clone();
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(bytes.len());
                match rng.below(3) {
                    0 => bytes[at] = ALPHABET[rng.below(ALPHABET.len())],
                    1 => {
                        bytes.remove(at);
                    }
                    _ => bytes.insert(at, ALPHABET[rng.below(ALPHABET.len())]),
                }
            }
            let text = String::from_utf8(bytes).unwrap();
            match parse(file, &text, &path) {
                Ok(model) => {
                    // Whatever loads must score without panicking or looping.
                    if let Ok(runtime) = model.into_runtime(&inputs.names) {
                        let scores = raw_scores(&runtime, inputs, &inputs.slices());
                        assert_eq!(scores.len(), inputs.rows);
                    }
                    loaded += 1;
                }
                Err(err) => {
                    assert!(
                        err.to_string().contains(&path.display().to_string()),
                        "{file}: error does not name the file: {err}"
                    );
                    refused += 1;
                }
            }
        }
        eprintln!("{file}: {loaded} garbled copies loaded, {refused} refused");
        assert!(refused > 0, "{file}: no garbled copy was refused");
    }
}

#[test]
fn both_engines_score_every_fixture_identically() {
    // The fixtures' trees are small, so they score by leaf masks; the tree walk is the other
    // engine (used for trees of more than 64 leaves).
    for (file, input_file) in [
        ("lightgbm_binary.txt", "lightgbm_input.csv"),
        ("lightgbm_regression.txt", "lightgbm_input.csv"),
        ("lightgbm_rf.txt", "lightgbm_input.csv"),
        ("xgboost_binary.json", "xgboost_input.csv"),
        ("xgboost_regression.json", "xgboost_input.csv"),
    ] {
        let text = std::fs::read_to_string(fixture(file)).unwrap();
        let model = parse(file, &text, &fixture(file)).unwrap();
        let inputs = Inputs::read(input_file);
        let runtime = model.into_runtime(&inputs.names).unwrap();
        assert!(runtime.describe().contains("leaf masks"), "{file}");
        let walking = runtime.walking();
        assert!(walking.describe().contains("tree walk"), "{file}");
        let masks = raw_scores(&runtime, &inputs, &inputs.slices());
        let walk = raw_scores(&walking, &inputs, &inputs.slices());
        for (r, (a, b)) in masks.iter().zip(&walk).enumerate() {
            assert_eq!(a.to_bits(), b.to_bits(), "{file} row {}", r + 1);
        }
    }
}
