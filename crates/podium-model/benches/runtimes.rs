//! Per-row cost of each runtime at batch 1 and batch 100, one thread.
//!
//! Always benchmarks the committed parity fixtures. When `PODIUM_BENCH_MODELS` names the output
//! directory of `scripts/bench_models.py` (the standard workload's 300-tree GBDT and ~49k
//! multiply-add MLP bundles), those are benchmarked too; the script itself compares the same
//! models against LightGBM, lleaves and onnxruntime in one run. With the same variable, the
//! standard GBDT is also scored by both of Podium's GBDT engines (leaf masks, the default for
//! trees of up to 64 leaves, and the tree walk) in one run.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use podium_model::gbdt::{lightgbm, GbdtRuntime};
use podium_model::{load_bundle, Columns, FeatureTable, Model, Runtime};
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// A bundle made on the fly from a fixture model, golden rows included.
fn fixture_bundle(dir: &Path, kind: podium_model::ModelKind, weights: &str) -> Model {
    let opts = podium_model::package::PackageOptions {
        kind,
        weights: fixtures().join(weights),
        name: "bench".into(),
        version: "1".into(),
        task: "ctr".into(),
        features: None,
        link: None,
        output: None,
        golden: None,
        calibration: None,
        fallback_prior: Some(0.0),
        latency_budget_us: 1_000_000,
        out: dir.join(weights.replace('.', "_")),
    };
    let report = podium_model::package::package(&opts).expect("fixture packages");
    load_bundle(&report.dir).expect("fixture bundle loads")
}

fn bench_model(c: &mut Criterion, label: &str, model: &Model, rows: &Path) {
    let names: Vec<String> = model
        .manifest()
        .inputs
        .iter()
        .map(|i| i.name.clone())
        .collect();
    let table = FeatureTable::read(rows, &names, false).expect("rows read");
    let mut group = c.benchmark_group(label);
    for batch in [1usize, 100] {
        bench_batches(&mut group, "batch", batch, &table, |input, out| {
            model.predict(input, out).unwrap()
        });
    }
    group.finish();
}

/// Times `score` on consecutive batches of `batch` rows of `table`.
fn bench_batches(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    batch: usize,
    table: &FeatureTable,
    score: impl Fn(&Columns<'_>, &mut [f32]),
) {
    let n = table.rows.min(batch.max(100) * 10) / batch * batch;
    group.throughput(Throughput::Elements(batch as u64));
    group.bench_with_input(BenchmarkId::new(name, batch), &batch, |b, &batch| {
        let mut out = vec![0.0f32; batch];
        let mut start = 0;
        b.iter(|| {
            let slices: Vec<&[f32]> = table
                .columns
                .iter()
                .map(|c| &c[start..start + batch])
                .collect();
            score(&Columns::new(&slices, batch).unwrap(), &mut out);
            start = (start + batch) % n;
            black_box(&out);
        })
    });
}

/// The standard GBDT scored by each engine, same rows, same run.
fn bench_gbdt_engines(c: &mut Criterion, dir: &Path) {
    let model = match lightgbm::read(&dir.join("lgb300.txt")) {
        Ok(model) => model,
        Err(e) => return eprintln!("skipping the GBDT engines: {e}"),
    };
    let names: Vec<String> = model.feature_names().unwrap_or_default().to_vec();
    let table = FeatureTable::read(&dir.join("gbdt_rows.csv"), &names, false).expect("rows read");
    let masks: GbdtRuntime = model.into_runtime(&names).expect("model binds");
    let walk = masks.walking();
    let mut group = c.benchmark_group("standard_gbdt_engines");
    for batch in [1usize, 16, 100, 1000] {
        for (name, runtime) in [("leaf_masks", &masks), ("tree_walk", &walk)] {
            bench_batches(&mut group, name, batch, &table, |input, out| {
                runtime.predict_raw(input, out).unwrap()
            });
        }
    }
    group.finish();
}

fn runtimes(c: &mut Criterion) {
    let tmp = tempfile::tempdir().unwrap();
    let lgb = fixture_bundle(
        tmp.path(),
        podium_model::ModelKind::Lightgbm,
        "lightgbm_binary.txt",
    );
    bench_model(
        c,
        "fixture_lightgbm_30_trees",
        &lgb,
        &fixtures().join("lightgbm_input.csv"),
    );
    let xgb = fixture_bundle(
        tmp.path(),
        podium_model::ModelKind::Xgboost,
        "xgboost_binary.json",
    );
    bench_model(
        c,
        "fixture_xgboost",
        &xgb,
        &fixtures().join("xgboost_input.csv"),
    );

    if let Ok(dir) = std::env::var("PODIUM_BENCH_MODELS") {
        let dir = PathBuf::from(dir);
        for (label, bundle, rows) in [
            ("standard_gbdt_300_trees", "gbdt-bundle", "gbdt_rows.csv"),
            ("standard_mlp_49k_madds", "mlp-bundle", "mlp_rows.csv"),
        ] {
            match load_bundle(&dir.join(bundle)) {
                Ok(model) => bench_model(c, label, &model, &dir.join(rows)),
                Err(e) => eprintln!("skipping {label}: {e}"),
            }
        }
        bench_gbdt_engines(c, &dir);
    }
}

criterion_group!(benches, runtimes);
criterion_main!(benches);
