//! The remote (Open Inference Protocol) tier against real servers: MLServer serving a LightGBM
//! model (parity with LightGBM's own predictions), a closed port, and a server that never answers.

use podium_core::{Deadline, FeatureFrame, FrameSchema};
use podium_model::package::{package, PackageOptions};
use podium_model::{load_bundle, ModelKind};
use podium_serving::{BoundModel, ComputePool, ModelSlot, RemoteConfig, RemoteModel, Tier};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../podium-model/tests/fixtures")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The fixture rows without missing values (JSON has no NaN), with the library's predictions.
fn complete_rows() -> (Vec<String>, Vec<Vec<f32>>, Vec<f64>) {
    let input = std::fs::read_to_string(fixtures().join("lightgbm_input.csv")).unwrap();
    let expected =
        std::fs::read_to_string(fixtures().join("lightgbm_binary_expected.csv")).unwrap();
    let mut lines = input.lines();
    let names: Vec<String> = lines.next().unwrap().split(',').map(String::from).collect();
    let mut rows = Vec::new();
    let mut want = Vec::new();
    for (line, e) in lines.zip(expected.lines().skip(1)) {
        let cells: Vec<&str> = line.split(',').collect();
        if cells.iter().any(|c| c.is_empty()) {
            continue;
        }
        let row: Vec<f32> = cells.iter().map(|c| c.parse().unwrap()).collect();
        if row.iter().any(|v| !v.is_finite()) {
            continue;
        }
        rows.push(row);
        want.push(e.parse().unwrap());
    }
    (names, rows, want)
}

fn frame(schema: &Arc<FrameSchema>, rows: &[Vec<f32>]) -> Arc<FeatureFrame> {
    let mut f = FeatureFrame::new(schema.clone(), rows.len());
    for (r, row) in rows.iter().enumerate() {
        for (c, &v) in row.iter().enumerate() {
            f.set(c, r, v);
        }
    }
    Arc::new(f)
}

fn remote(url: String, model: &str, inputs: &[String]) -> RemoteConfig {
    RemoteConfig {
        url,
        model: model.to_string(),
        version: None,
        inputs: inputs.to_vec(),
        task: "ctr".into(),
        fallback_prior: 0.01,
        input_name: "input-0".into(),
        output: None,
        column: None,
    }
}

struct MlServer(Child);

impl Drop for MlServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts MLServer on free ports serving the LightGBM fixture; `None` when MLServer is not
/// installed and this is not CI (CI installs it, so there its absence is a failure).
fn start_mlserver(dir: &Path) -> Option<(MlServer, String)> {
    let installed = Command::new("python3")
        .args(["-c", "import mlserver, mlserver_lightgbm"])
        .status()
        .is_ok_and(|s| s.success());
    if !installed {
        assert!(
            std::env::var("CI").is_err(),
            "CI must install mlserver and mlserver-lightgbm (pip)"
        );
        eprintln!("skipping: MLServer is not installed (pip install mlserver mlserver-lightgbm)");
        return None;
    }
    let model_dir = dir.join("ctr-lgb");
    std::fs::create_dir_all(&model_dir).unwrap();
    std::fs::copy(
        fixtures().join("lightgbm_binary.txt"),
        model_dir.join("model.txt"),
    )
    .unwrap();
    std::fs::write(
        model_dir.join("model-settings.json"),
        r#"{"name": "ctr-lgb", "implementation": "mlserver_lightgbm.LightGBMModel", "parameters": {"uri": "./model.txt", "version": "v1"}}"#,
    )
    .unwrap();
    let http = free_port();
    std::fs::write(
        dir.join("settings.json"),
        format!(r#"{{"http_port": {http}, "grpc_port": {}, "metrics_port": {}, "parallel_workers": 0}}"#, free_port(), free_port()),
    )
    .unwrap();
    let child = Command::new("python3")
        .args(["-m", "mlserver.cli.main", "start"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mlserver starts");
    let server = MlServer(child);
    let url = format!("http://127.0.0.1:{http}");
    let ready = format!("{url}/v2/models/ctr-lgb/ready");
    let started = Instant::now();
    loop {
        let ok = Command::new("python3")
            .args(["-c", &format!("import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('{ready}', timeout=1).status == 200 else 1)")])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "MLServer never became ready"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    Some((server, url))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scores_through_mlserver_exactly_as_lightgbm_does() {
    let tmp = tempfile::tempdir().unwrap();
    let Some((_server, url)) = start_mlserver(tmp.path()) else {
        return;
    };
    let (names, rows, want) = complete_rows();
    assert!(rows.len() > 50, "the fixture has enough complete rows");
    let schema = Arc::new(FrameSchema::new(names.clone()));
    let model = RemoteModel::bind(remote(url, "ctr-lgb", &names), &schema).unwrap();
    let got = model
        .score(&frame(&schema, &rows), Duration::from_secs(10))
        .await
        .unwrap();
    for (r, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(
            (*g as f64 - w).abs() <= 1e-5,
            "row {r}: MLServer via Podium {g}, LightGBM {w}"
        );
    }

    // As a slot's first tier it serves, tier 0, under the deadline.
    let slot = ModelSlot::of_tiers(vec![Tier::Remote(Arc::new(model))]);
    let s = slot
        .run(
            &ComputePool::new(1),
            frame(&schema, &rows[..10]),
            Deadline::after(Duration::from_secs(5)),
            Duration::ZERO,
        )
        .await;
    assert_eq!(s.tier, 0, "{:?}", s.fallback_reasons);
    assert!(s.model.0.starts_with("ctr-lgb@"));
}

fn local_fallback(dir: &Path, names: &[String]) -> BoundModel {
    let report = package(&PackageOptions {
        kind: ModelKind::Lightgbm,
        weights: fixtures().join("lightgbm_binary.txt"),
        name: "ctr_local".into(),
        version: "1".into(),
        task: "ctr".into(),
        features: None,
        link: None,
        output: None,
        golden: None,
        calibration: None,
        fallback_prior: Some(0.02),
        latency_budget_us: 1_000_000,
        out: dir.join("local"),
    })
    .unwrap();
    BoundModel::bind(
        load_bundle(&report.dir).unwrap(),
        &FrameSchema::new(names.to_vec()),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_or_silent_server_falls_back_within_the_deadline() {
    let tmp = tempfile::tempdir().unwrap();
    let (names, rows, want) = complete_rows();
    let schema = Arc::new(FrameSchema::new(names.clone()));
    let pool = ComputePool::new(2);
    let local = Arc::new(local_fallback(tmp.path(), &names));

    // Nothing listens on this port.
    let closed = format!("http://127.0.0.1:{}", free_port());
    let slot = ModelSlot::of_tiers(vec![
        Tier::Remote(Arc::new(
            RemoteModel::bind(remote(closed, "ctr", &names), &schema).unwrap(),
        )),
        Tier::Local(local.clone()),
    ]);
    let s = slot
        .run(
            &pool,
            frame(&schema, &rows[..20]),
            Deadline::after(Duration::from_secs(2)),
            Duration::ZERO,
        )
        .await;
    assert_eq!(
        (s.tier, s.model.0.as_str()),
        (1, "ctr_local"),
        "{:?}",
        s.fallback_reasons
    );
    assert!(
        s.fallback_reasons[0].contains("request failed"),
        "{:?}",
        s.fallback_reasons
    );
    for (g, w) in s.values.iter().zip(&want) {
        assert!((*g as f64 - w).abs() <= 1e-5);
    }

    // A server that accepts the connection and never answers is abandoned at the deadline.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    let slot = ModelSlot::of_tiers(vec![Tier::Remote(Arc::new(
        RemoteModel::bind(remote(url, "ctr", &names), &schema).unwrap(),
    ))]);
    let started = Instant::now();
    let s = slot
        .run(
            &pool,
            frame(&schema, &rows[..5]),
            Deadline::after(Duration::from_millis(60)),
            Duration::from_millis(5),
        )
        .await;
    assert!(
        started.elapsed() < Duration::from_millis(150),
        "waited {:?}",
        started.elapsed()
    );
    assert_eq!((s.tier, s.values[0]), (1, 0.01));
    assert!(
        s.fallback_reasons[0].contains("no answer within"),
        "{:?}",
        s.fallback_reasons
    );
    drop(silent);
}

#[test]
fn a_remote_input_the_schema_lacks_is_refused_at_load() {
    let schema = FrameSchema::new(["a"]);
    let err = RemoteModel::bind(
        remote(
            "http://127.0.0.1:1".into(),
            "m",
            &["a".into(), "zzz".into()],
        ),
        &schema,
    )
    .unwrap_err();
    assert!(err.to_string().contains("zzz"));
    let err =
        RemoteModel::bind(remote("not a url".into(), "m", &["a".into()]), &schema).unwrap_err();
    assert!(err.to_string().contains("not a URL"));
}
