//! Real bundles for registry tests, built with `podium_model::package` from a linear model.

use podium_model::package::{package, PackageOptions};
use podium_model::ModelKind;
use std::path::{Path, PathBuf};

/// Packages linear model `name` at `version` under `dir` and returns the bundle directory.
pub fn bundle(dir: &Path, name: &str, version: &str) -> PathBuf {
    let work = dir.join(format!("src-{name}-{version}"));
    std::fs::create_dir_all(&work).unwrap();
    let weights = work.join("ranker.json");
    std::fs::write(
        &weights,
        format!(r#"{{"intercept": -1.0, "weights": {{"a": 0.5, "b": {version}.0}}}}"#),
    )
    .unwrap();
    let golden = work.join("rows.csv");
    std::fs::write(&golden, "a,b\n1,2\n0,\n3,1\n").unwrap();
    let report = package(&PackageOptions {
        kind: ModelKind::Linear,
        weights,
        name: name.into(),
        version: version.into(),
        task: "ctr".into(),
        features: None,
        link: None,
        output: None,
        golden: Some(golden),
        calibration: None,
        fallback_prior: None,
        latency_budget_us: 1_000_000,
        out: dir.join(format!("bundle-{name}-{version}")),
    })
    .unwrap();
    report.dir
}
