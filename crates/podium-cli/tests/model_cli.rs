//! `podium model …` end to end: the real binary on the parity fixtures of podium-model.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../podium-model/tests/fixtures")
}

fn podium(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_podium"))
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Joins the fixture inputs with the library's predictions into one golden CSV.
fn golden(dir: &Path, input: &str, expected: &str) -> PathBuf {
    let f = fixtures();
    let a = std::fs::read_to_string(f.join(input)).unwrap();
    let b = std::fs::read_to_string(f.join(expected)).unwrap();
    let joined: String = a
        .lines()
        .zip(b.lines())
        .map(|(x, y)| format!("{x},{y}\n"))
        .collect();
    let path = dir.join("golden.csv");
    std::fs::write(&path, joined).unwrap();
    path
}

fn package_lightgbm(dir: &Path) -> PathBuf {
    let g = golden(dir, "lightgbm_input.csv", "lightgbm_binary_expected.csv");
    let weights = fixtures().join("lightgbm_binary.txt");
    let out = podium(
        &[
            "model",
            "package",
            "--kind",
            "lightgbm",
            "--weights",
            weights.to_str().unwrap(),
            "--name",
            "ctr",
            "--version",
            "7",
            "--golden",
            g.to_str().unwrap(),
            "--out",
            "bundle",
        ],
        dir,
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("match the library's predictions"),
        "{}",
        text(&out)
    );
    dir.join("bundle")
}

#[test]
fn package_validate_inspect_score_and_bench_a_lightgbm_model() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = package_lightgbm(tmp.path());
    for f in [
        "model.toml",
        "golden.csv",
        "reference.json",
        "SHA256SUMS",
        "weights/lightgbm_binary.txt",
    ] {
        assert!(bundle.join(f).exists(), "bundle lacks {f}");
    }
    let v = podium(&["model", "validate", "bundle"], tmp.path());
    assert!(v.status.success(), "{}", text(&v));
    assert!(text(&v).contains("valid"));

    let i = podium(&["model", "inspect", "bundle"], tmp.path());
    assert!(i.status.success());
    assert!(
        text(&i).contains("trees") && text(&i).contains("ctr_7d"),
        "{}",
        text(&i)
    );

    let input = fixtures().join("lightgbm_input.csv");
    let s = podium(
        &[
            "model",
            "score",
            "bundle",
            "--input",
            input.to_str().unwrap(),
            "--output",
            "preds.csv",
        ],
        tmp.path(),
    );
    assert!(s.status.success(), "{}", text(&s));
    let preds = std::fs::read_to_string(tmp.path().join("preds.csv")).unwrap();
    let expected =
        std::fs::read_to_string(fixtures().join("lightgbm_binary_expected.csv")).unwrap();
    let mut lines = preds.lines();
    assert_eq!(lines.next(), Some("prediction"));
    let mut n = 0;
    for (got, want) in lines.zip(expected.lines().skip(1)) {
        let (g, w): (f64, f64) = (got.parse().unwrap(), want.parse().unwrap());
        assert!((g - w).abs() <= 1e-5, "row {n}: {g} vs {w}");
        n += 1;
    }
    assert_eq!(n, expected.lines().count() - 1);

    let b = podium(
        &[
            "model",
            "bench",
            "bundle",
            "--input",
            input.to_str().unwrap(),
            "--batch",
            "10",
            "--seconds",
            "0.2",
        ],
        tmp.path(),
    );
    assert!(b.status.success(), "{}", text(&b));
    let stdout = String::from_utf8_lossy(&b.stdout);
    let last: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(last["batch"], 10);
    assert!(last["us_per_row"].as_f64().unwrap() > 0.0);
}

#[test]
fn a_tampered_bundle_fails_validation_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = package_lightgbm(tmp.path());
    let weights = bundle.join("weights/lightgbm_binary.txt");
    let mut t = std::fs::read_to_string(&weights).unwrap();
    t = t.replacen("leaf_value=", "leaf_value=1", 1);
    std::fs::write(&weights, t).unwrap();
    let v = podium(&["model", "validate", "bundle"], tmp.path());
    assert!(!v.status.success());
    assert!(
        text(&v).contains("lightgbm_binary.txt") && text(&v).contains("checksum"),
        "{}",
        text(&v)
    );
}

#[test]
fn bad_inputs_are_refused_with_the_file_and_the_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();

    // A model file that does not parse.
    std::fs::write(
        dir.join("broken.txt"),
        "tree\nversion=v4\nnum_class=1\nTree=0\nsplit_feature=0 1\n",
    )
    .unwrap();
    let o = podium(
        &[
            "model",
            "package",
            "--kind",
            "lightgbm",
            "--weights",
            "broken.txt",
            "--name",
            "x",
            "--version",
            "1",
            "--out",
            "b1",
        ],
        dir,
    );
    assert!(!o.status.success());
    assert!(text(&o).contains("broken.txt"), "{}", text(&o));

    // A schema that disagrees with the model: the trees split on features --features omits.
    let weights = fixtures().join("lightgbm_binary.txt");
    let o = podium(
        &[
            "model",
            "package",
            "--kind",
            "lightgbm",
            "--weights",
            weights.to_str().unwrap(),
            "--name",
            "x",
            "--version",
            "1",
            "--features",
            "ctr_7d,bid_floor",
            "--out",
            "b2",
        ],
        dir,
    );
    assert!(!o.status.success());
    assert!(
        text(&o).contains("model.toml") || text(&o).contains("do not list"),
        "{}",
        text(&o)
    );

    // Scoring a CSV that lacks a column, or holds a non-numeric cell.
    package_lightgbm(dir);
    std::fs::write(dir.join("short.csv"), "ctr_7d,bid_floor\n0.1,0.2\n").unwrap();
    let o = podium(&["model", "score", "bundle", "--input", "short.csv"], dir);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("short.csv") && text(&o).contains("hour_of_day"),
        "{}",
        text(&o)
    );
    let input = std::fs::read_to_string(fixtures().join("lightgbm_input.csv")).unwrap();
    let mut lines: Vec<String> = input.lines().take(3).map(String::from).collect();
    lines[2] = lines[2].replacen("0", "zero", 1);
    std::fs::write(dir.join("bad.csv"), lines.join("\n")).unwrap();
    let o = podium(&["model", "score", "bundle", "--input", "bad.csv"], dir);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("bad.csv")
            && text(&o).contains("row 2")
            && text(&o).contains("not a number"),
        "{}",
        text(&o)
    );

    // Golden rows the library's file disagrees with.
    let g = golden(
        dir,
        "lightgbm_input.csv",
        "lightgbm_regression_expected.csv",
    );
    let o = podium(
        &[
            "model",
            "package",
            "--kind",
            "lightgbm",
            "--weights",
            weights.to_str().unwrap(),
            "--name",
            "x",
            "--version",
            "1",
            "--golden",
            g.to_str().unwrap(),
            "--out",
            "b3",
        ],
        dir,
    );
    assert!(!o.status.success());
    assert!(text(&o).contains("golden row"), "{}", text(&o));
    assert!(
        !dir.join("b3/model.toml").exists(),
        "a refused bundle must leave nothing behind"
    );
}

#[test]
fn packages_and_scores_an_skl2onnx_pipeline_exported_with_default_options() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let onnx = fixtures().join("onnx");
    let input = std::fs::read_to_string(onnx.join("ads_input.csv")).unwrap();
    let expected = std::fs::read_to_string(onnx.join("logreg_zipmap_expected.csv")).unwrap();
    let joined: String = input
        .lines()
        .zip(expected.lines())
        .map(|(x, y)| format!("{x},{y}\n"))
        .collect();
    std::fs::write(dir.join("golden.csv"), joined).unwrap();
    let features = input.lines().next().unwrap().to_string();
    let weights = onnx.join("logreg_zipmap.onnx");
    let o = podium(
        &[
            "model",
            "package",
            "--kind",
            "onnx",
            "--weights",
            weights.to_str().unwrap(),
            "--name",
            "ctr_lr",
            "--version",
            "1",
            "--features",
            &features,
            "--golden",
            "golden.csv",
            "--out",
            "lr",
        ],
        dir,
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("match the library's predictions"),
        "{}",
        text(&o)
    );
    let v = podium(&["model", "validate", "lr"], dir);
    assert!(v.status.success(), "{}", text(&v));

    // ONNX files name no features: leaving --features out is refused with a hint.
    let o = podium(
        &[
            "model",
            "package",
            "--kind",
            "onnx",
            "--weights",
            weights.to_str().unwrap(),
            "--name",
            "x",
            "--version",
            "1",
            "--out",
            "nf",
        ],
        dir,
    );
    assert!(!o.status.success());
    assert!(text(&o).contains("--features"), "{}", text(&o));

    // An operator nobody implements is refused naming the file and the operator.
    let unknown = onnx.join("unknown_op.onnx");
    let o = podium(
        &[
            "model",
            "package",
            "--kind",
            "onnx",
            "--weights",
            unknown.to_str().unwrap(),
            "--name",
            "x",
            "--version",
            "1",
            "--features",
            &features,
            "--out",
            "uk",
        ],
        dir,
    );
    assert!(!o.status.success());
    assert!(text(&o).contains("unknown_op.onnx"), "{}", text(&o));
}
