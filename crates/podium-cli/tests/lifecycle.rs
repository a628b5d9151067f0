//! Model rollout end to end: a registry on disk, the real `podium serve --registry`, versions
//! promoted and swapped under load, a bad canary rolled back by the guardrails.

use podium_model::bundle::read_golden;
use podium_model::linear::LinearWeights;
use podium_model::{BundleWriter, Manifest};
use podium_registry::{Registry, Stage};
use serde_json::{json, Value};

mod common;

use common::Server;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Resident memory of the server process, kB.
fn rss_kb(server: &Server) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// A data directory with the demo world's models trained (a first start of the server).
async fn demo_data() -> tempfile::TempDir {
    let data = tempfile::tempdir().unwrap();
    drop(Server::start_in(data.path(), &[]).await);
    data
}

/// A copy of a linear bundle as another version, its intercept moved by `shift` (golden rows
/// re-scored so that the bundle stays valid).
fn variant(src: &Path, out: &Path, version: &str, shift: f64) -> PathBuf {
    let mut manifest = Manifest::read(&src.join("model.toml")).unwrap();
    manifest.version = version.to_string();
    let mut weights = LinearWeights::read(&src.join(&manifest.weights)).unwrap();
    weights.intercept += shift;
    let names: Vec<String> = manifest.inputs.iter().map(|i| i.name.clone()).collect();
    let golden = read_golden(&src.join("golden.csv"), &names).unwrap();
    let dir = out.join(format!("{}-{version}", manifest.name));
    let model = podium_model::Model::new(
        manifest.clone(),
        std::sync::Arc::new(weights.clone().into_runtime(&names).unwrap()),
    )
    .unwrap();
    let golden: Vec<_> = golden
        .into_iter()
        .map(|mut g| {
            let cols: Vec<Vec<f32>> = g.inputs.iter().map(|&v| vec![v]).collect();
            let slices: Vec<&[f32]> = cols.iter().map(Vec::as_slice).collect();
            let mut out = [0.0f32];
            model
                .predict(&podium_model::Columns::new(&slices, 1).unwrap(), &mut out)
                .unwrap();
            g.expected = out[0] as f64;
            g
        })
        .collect();
    let mut writer = BundleWriter::new(&dir, manifest)
        .weights(serde_json::to_vec(&weights).unwrap())
        .golden(&golden);
    for extra in ["reference.json"] {
        if let Ok(bytes) = std::fs::read(src.join(extra)) {
            writer = writer.file(extra, bytes);
        }
    }
    writer.write().unwrap()
}

/// A registry on disk with `ctr` variants of the demo's model, `(version, intercept shift)`, the
/// first promoted to production.
struct CtrRegistry {
    bundles: tempfile::TempDir,
    dir: tempfile::TempDir,
    url: String,
    registry: Registry,
}

async fn ctr_registry(data: &Path, versions: &[(&str, f64)]) -> CtrRegistry {
    let bundles = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    let registry = Registry::open(&url).unwrap();
    let ctr = data.join("models/ctr");
    for (version, shift) in versions {
        let bundle = variant(&ctr, bundles.path(), version, *shift);
        registry.publish(&bundle, "test").await.unwrap();
    }
    registry
        .promote(
            "ctr",
            versions[0].0,
            Stage::Production,
            None,
            "test",
            "first",
        )
        .await
        .unwrap();
    CtrRegistry {
        bundles,
        dir,
        url,
        registry,
    }
}

fn decide_body(i: usize) -> String {
    json!({"request_id": format!("r-{i}"),
           "user": {"id": format!("u-{}", i % 5000), "country": "US", "device": "tv"},
           "content": {"id": "title-42", "genre": "drama", "live": false},
           "breaks": [{"id": "b1", "position": "midroll", "max_ads": 4, "max_duration_s": 90}],
           "tmax_ms": 200})
    .to_string()
}

/// Sends `rate` decisions per second for `duration` and returns every answer's status and body.
async fn load(server: &Server, rate: u64, duration: Duration) -> Vec<(u16, Value)> {
    let client = reqwest::Client::new();
    let total = (rate as f64 * duration.as_secs_f64()) as usize;
    let start = Instant::now();
    let mut handles = Vec::with_capacity(total);
    for i in 0..total {
        let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
        tokio::time::sleep_until(due.into()).await;
        let (client, url, body) = (client.clone(), server.url("/v1/decide"), decide_body(i));
        handles.push(tokio::spawn(async move {
            match client
                .post(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
            {
                Ok(r) => {
                    let status = r.status().as_u16();
                    (status, r.json().await.unwrap_or(Value::Null))
                }
                Err(e) => (0, json!({"error": e.to_string()})),
            }
        }));
    }
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

fn version_of(decision: &Value, model: &str) -> Option<String> {
    decision["model_versions"]
        .as_array()?
        .iter()
        .find(|m| m["name"] == model)
        .map(|m| m["version"].as_str().unwrap_or_default().to_string())
}

async fn wait_for(server: &Server, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let v = server.get_json("/v1/lifecycle").await;
        if ok(&v) {
            return v;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{what} never happened: {v}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn serving(v: &Value, model: &str) -> Value {
    v["registry"]["serving"][model].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_swap_under_load_without_a_failed_request_and_a_bad_canary_rolls_back() {
    let data = demo_data().await;
    let CtrRegistry {
        bundles: _bundles,
        dir: reg_dir,
        url,
        registry,
    } = ctr_registry(data.path(), &[("10", 0.0), ("11", 0.01), ("12", 4.0)]).await;

    let server = Server::start_in(
        data.path(),
        &[
            "--registry",
            &url,
            "--registry-poll-ms",
            "20",
            "--guardrail-min-batches",
            "40",
            "--admin-token",
            "s3cret",
        ],
    )
    .await;
    let ready = server.get_json("/readyz").await;
    assert_eq!(ready["registry"]["reachable"], true, "{ready}");
    let meta = server.get_json("/v2/models/ctr").await;
    assert_eq!(meta["versions"], json!(["10"]), "{meta}");

    // Twenty swaps between 10 and 11 while decisions flow: none fails, each names one of them.
    let swapper = {
        let registry = registry.clone();
        tokio::spawn(async move {
            for i in 0..20 {
                let v = if i % 2 == 0 { "11" } else { "10" };
                registry
                    .promote("ctr", v, Stage::Production, None, "test", "swap drill")
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        })
    };
    let answers = load(&server, 100, Duration::from_secs(4)).await;
    swapper.await.unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for (status, d) in &answers {
        assert_eq!(*status, 200, "{d}");
        assert!(d.get("degraded").is_some(), "{d}");
        let v = version_of(d, "ctr").unwrap_or_else(|| panic!("no ctr model: {d}"));
        assert!(v == "10" || v == "11", "served ctr {v}: {d}");
        assert!(
            d["degraded"]
                .as_array()
                .unwrap()
                .iter()
                .all(|x| !x.as_str().unwrap().starts_with("shed")),
            "{d}"
        );
        seen.insert(v);
    }
    assert_eq!(
        seen.len(),
        2,
        "both versions served during the swaps: {seen:?}"
    );
    let v = wait_for(&server, "the last swap", |v| {
        serving(v, "ctr")["production"] == "10"
    })
    .await;
    assert!(v["registry"]["swaps"].as_u64().unwrap() >= 2, "{v}");

    // A canary that predicts far higher than production: the guardrails roll it back.
    registry
        .promote(
            "ctr",
            "12",
            Stage::Canary,
            Some(50.0),
            "test",
            "bad on purpose",
        )
        .await
        .unwrap();
    wait_for(&server, "the canary", |v| {
        serving(v, "ctr")["canary"]["version"] == "12"
    })
    .await;
    let meta = server.get_json("/v2/models/ctr").await;
    assert_eq!(meta["versions"], json!(["10", "12"]), "{meta}");
    let answers = load(&server, 100, Duration::from_secs(2)).await;
    assert!(answers
        .iter()
        .any(|(_, d)| version_of(d, "ctr").as_deref() == Some("12")));
    let v = wait_for(&server, "the rollback", |v| {
        serving(v, "ctr").get("canary").is_none_or(Value::is_null)
    })
    .await;
    let alert = &v["registry"]["alerts"][0];
    assert_eq!(alert["rule"], "psi", "{v}");
    assert_eq!(alert["action"], "rollback", "{v}");
    let history = registry.history("ctr").await.unwrap();
    let last = history.last().unwrap();
    assert_eq!(last.by, "guardrail");
    assert!(last.why.contains("PSI"), "{last:?}");
    assert_eq!(serving(&v, "ctr")["production"], "10");

    // The admin API promotes too, with the token and only with it.
    let client = reqwest::Client::new();
    let promote = |token: &'static str| {
        client
            .post(server.admin_url("/v1/admin/models/ctr/promote"))
            .bearer_auth(token)
            .json(&json!({"version": "11", "stage": "production", "why": "over HTTP"}))
            .send()
    };
    assert_eq!(promote("wrong").await.unwrap().status(), 401);
    assert_eq!(promote("s3cret").await.unwrap().status(), 200);
    wait_for(&server, "the promotion over HTTP", |v| {
        serving(v, "ctr")["production"] == "11"
    })
    .await;

    // The registry goes away: the server keeps serving what it has and says so.
    std::fs::remove_dir_all(reg_dir.path()).unwrap();
    std::fs::write(reg_dir.path(), b"not a directory").unwrap();
    let started = Instant::now();
    loop {
        let r = server.get_json("/readyz").await;
        if r["registry"]["reachable"] == false {
            assert!(r["registry"]["last_error"].is_string(), "{r}");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{r}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let answers = load(&server, 50, Duration::from_secs(1)).await;
    // Every request is answered; those not shed (a busy CI machine may shed a few, with a
    // well-formed no-ads answer) are scored by the version it had.
    let shed = |d: &Value| {
        d["degraded"].as_array().is_some_and(|r| {
            r.iter()
                .any(|x| x.as_str().is_some_and(|x| x.starts_with("shed")))
        })
    };
    let mut scored = 0;
    let status = server.get_json("/v1/lifecycle").await;
    for (s, d) in &answers {
        assert_eq!(*s, 200, "{d}");
        if !shed(d) {
            assert_eq!(
                version_of(d, "ctr").as_deref(),
                Some("11"),
                "{d}\nlifecycle: {status}"
            );
            scored += 1;
        }
    }
    assert!(
        scored * 10 >= answers.len() * 9,
        "{scored} of {} scored",
        answers.len()
    );
    let _ = std::fs::remove_file(reg_dir.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_returns_after_fifty_swaps_of_a_large_model() {
    let data = demo_data().await;
    let bundles = tempfile::tempdir().unwrap();
    let reg_dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", reg_dir.path().display());
    let registry = Registry::open(&url).unwrap();
    // A serve-only model with a 2M-entry hashed weight table (16 MB of f64).
    let ctr = data.path().join("models/ctr");
    for version in ["1", "2"] {
        let mut manifest = Manifest::read(&ctr.join("model.toml")).unwrap();
        manifest.name = "big".into();
        manifest.version = version.into();
        let mut weights = LinearWeights::read(&ctr.join(&manifest.weights)).unwrap();
        let buckets = 1u32 << 21;
        weights.hashed = Some(podium_model::linear::HashedWeights {
            buckets,
            seed: 0,
            table: vec![0.0; buckets as usize],
        });
        let dir = bundles.path().join(format!("big-{version}"));
        BundleWriter::new(&dir, manifest)
            .weights(serde_json::to_vec(&weights).unwrap())
            .write()
            .unwrap();
        registry.publish(&dir, "test").await.unwrap();
    }
    registry
        .promote("big", "1", Stage::Production, None, "test", "first")
        .await
        .unwrap();
    let server = Server::start_in(
        data.path(),
        &["--registry", &url, "--registry-poll-ms", "20"],
    )
    .await;
    let swaps = |v: &Value| v["registry"]["swaps"].as_u64().unwrap_or(0);
    let mut count = swaps(&server.get_json("/v1/lifecycle").await);
    let mut after_first = 0;
    for i in 0..50 {
        let version = if i % 2 == 0 { "2" } else { "1" };
        registry
            .promote("big", version, Stage::Production, None, "test", "swap")
            .await
            .unwrap();
        wait_for(&server, "a swap", |v| swaps(v) > count).await;
        count += 1;
        let meta = server.get_json("/v2/models/big").await;
        assert_eq!(meta["versions"], json!([version]), "{meta}");
        if i == 0 {
            after_first = rss_kb(&server);
        }
    }
    let after_fifty = rss_kb(&server);
    assert!(
        (after_fifty as f64) < after_first as f64 * 1.10,
        "RSS {after_first} kB after the first swap, {after_fifty} kB after fifty"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn experiment_arms_serve_their_versions_and_prices_to_sticky_shares() {
    let data = demo_data().await;
    let CtrRegistry {
        bundles: _bundles,
        dir: _reg_dir,
        url,
        registry: _,
    } = ctr_registry(data.path(), &[("10", 0.0), ("11", 0.5)]).await;
    let experiments = data.path().join("experiments.toml");
    std::fs::write(
        &experiments,
        r#"
[holdout]
percent = 10.0
[[layer]]
name = "ranking"
[[layer.arm]]
name = "ctr_v11"
percent = 30.0
models = { ctr = "11" }
[[layer]]
name = "pricing"
[[layer.arm]]
name = "floor_x3"
percent = 50.0
auction = { reserve_multiplier = 3.0 }
"#,
    )
    .unwrap();
    let market: Value =
        serde_json::from_slice(&std::fs::read(data.path().join("marketplace.json")).unwrap())
            .unwrap();
    let reserve = market["reserve_cpm"].as_f64().unwrap() / 1e6;
    let server = Server::start_in(
        data.path(),
        &[
            "--registry",
            &url,
            "--experiments",
            experiments.to_str().unwrap(),
        ],
    )
    .await;
    let client = reqwest::Client::new();
    let (mut held, mut v11, mut floor) = (0, 0, 0);
    let users = 300;
    for u in 0..users {
        let body = json!({"request_id": format!("x-{u}"),
            "user": {"id": format!("viewer-{u}"), "country": "US", "device": "tv"},
            "content": {"id": "t", "genre": "drama", "live": false},
            "breaks": [{"id": "b1", "max_ads": 4, "max_duration_s": 90}], "tmax_ms": 500});
        let mut arms_seen = None;
        for _ in 0..2 {
            let d: Value = client
                .post(server.url("/v1/decide"))
                .json(&body)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let arms: Vec<String> = d
                .get("experiments")
                .and_then(Value::as_array)
                .map(|a| a.iter().map(|x| x.as_str().unwrap().to_string()).collect())
                .unwrap_or_default();
            // Sticky: the same user gets the same arms every time.
            if let Some(prev) = &arms_seen {
                assert_eq!(prev, &arms, "{d}");
            }
            let ctr_version = version_of(&d, "ctr").unwrap();
            if arms.contains(&"holdout".to_string()) {
                assert_eq!(arms.len(), 1);
                assert_eq!(ctr_version, "10", "{d}");
            }
            assert_eq!(
                ctr_version == "11",
                arms.contains(&"ranking:ctr_v11".to_string()),
                "{d}"
            );
            if arms.contains(&"pricing:floor_x3".to_string()) {
                for ad in d["breaks"][0]["ads"].as_array().unwrap() {
                    assert!(
                        ad["price_cpm"].as_f64().unwrap() >= 3.0 * reserve - 1e-6,
                        "{d}"
                    );
                }
            }
            arms_seen = Some(arms);
        }
        let arms = arms_seen.unwrap();
        held += arms.contains(&"holdout".to_string()) as u32;
        v11 += arms.contains(&"ranking:ctr_v11".to_string()) as u32;
        floor += arms.contains(&"pricing:floor_x3".to_string()) as u32;
    }
    let share = |n: u32| n as f64 / users as f64;
    assert!((0.04..0.17).contains(&share(held)), "holdout {held}");
    assert!((0.18..0.37).contains(&share(v11)), "ctr_v11 {v11}");
    assert!((0.36..0.55).contains(&share(floor)), "floor_x3 {floor}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_file_deleted_from_the_registry_mid_rollout_keeps_the_old_version_serving() {
    let data = demo_data().await;
    let CtrRegistry {
        bundles,
        dir: reg_dir,
        url,
        registry,
    } = ctr_registry(data.path(), &[("10", 0.0), ("11", 0.01)]).await;
    let server = Server::start_in(
        data.path(),
        &["--registry", &url, "--registry-poll-ms", "20"],
    )
    .await;

    // Version 11's weights vanish from the registry (an operator's mistake, a lifecycle rule on
    // the bucket) just as it is promoted, while decisions flow.
    let manifest = Manifest::read(&bundles.path().join("ctr-11/model.toml")).unwrap();
    let weights = reg_dir
        .path()
        .join("models/ctr/versions/11")
        .join(&manifest.weights);
    let kept = std::fs::read(&weights).unwrap();
    std::fs::remove_file(&weights).unwrap();
    let promoter = {
        let registry = registry.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            registry
                .promote("ctr", "11", Stage::Production, None, "test", "rollout")
                .await
                .unwrap();
        })
    };
    let answers = load(&server, 100, Duration::from_secs(2)).await;
    promoter.await.unwrap();
    for (status, d) in &answers {
        assert_eq!(*status, 200, "{d}");
        assert_eq!(version_of(d, "ctr").as_deref(), Some("10"), "{d}");
    }
    let v = wait_for(&server, "the failed load to be reported", |v| {
        v["registry"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("11"))
    })
    .await;
    let error = v["registry"]["last_error"].as_str().unwrap().to_string();
    assert!(
        error.contains(&manifest.weights)
            || error.contains("missing")
            || error.contains("not found"),
        "the error names what is missing: {error}"
    );
    let ready = reqwest::get(server.url("/readyz")).await.unwrap();
    assert_eq!(
        ready.status(),
        200,
        "the server stays ready on the version it has"
    );
    let (status, d) = server.post("/v1/decide", decide_body(9_999)).await;
    assert_eq!(status, 200, "{d}");
    assert_eq!(version_of(&d, "ctr").as_deref(), Some("10"), "{d}");

    // The file is put back: the watcher's retry loads 11 without a restart or a new promotion.
    std::fs::write(&weights, kept).unwrap();
    let started = Instant::now();
    loop {
        let (status, d) = server.post("/v1/decide", decide_body(10_000)).await;
        assert_eq!(status, 200, "{d}");
        if version_of(&d, "ctr").as_deref() == Some("11") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "version 11 never served after its file came back: {d}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let v = server.get_json("/v1/lifecycle").await;
    assert!(v["registry"]["last_error"].is_null(), "{v}");
}
