//! End-to-end: start the real `podium` binary on a free port and drive it over HTTP.

mod common;

use common::{feature, Redis, Server};
use serde_json::{json, Value};
use std::process::Command;
use std::time::{Duration, Instant};

fn example() -> Value {
    json!({"request_id": "r-1",
           "user": {"id": "u-123", "country": "US", "device": "tv"},
           "content": {"id": "title-42", "genre": "drama", "live": false},
           "breaks": [{"id": "b1", "position": "midroll", "max_ads": 4, "max_duration_s": 90}]})
}

fn with(mut r: Value, edit: impl FnOnce(&mut Value)) -> String {
    edit(&mut r);
    r.to_string()
}

#[tokio::test]
async fn decides_the_readme_example_within_the_break_constraints() {
    let server = Server::start().await;
    let health = reqwest::get(server.url("/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);

    let req = with(example(), |r| {
        r["breaks"] = json!([
            {"id": "b1", "position": "preroll", "max_ads": 4, "max_duration_s": 90},
            {"id": "b2", "max_ads": 2, "max_duration_s": 30},
            {"id": "b3", "position": "postroll", "max_ads": 1, "max_duration_s": 15}
        ])
    });
    let (status, body) = server.post("/v1/decide", req).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["request_id"], "r-1");
    let breaks = body["breaks"].as_array().unwrap();
    assert_eq!(breaks.len(), 3);
    let mut line_items = std::collections::HashSet::new();
    for (b, (id, max_ads, max_s)) in
        breaks
            .iter()
            .zip([("b1", 4, 90), ("b2", 2, 30), ("b3", 1, 15)])
    {
        assert_eq!(b["break_id"], id);
        let ads = b["ads"].as_array().unwrap();
        assert!(ads.len() <= max_ads, "{b}");
        let total: u64 = ads.iter().map(|a| a["duration_s"].as_u64().unwrap()).sum();
        assert!(total <= max_s, "{b}");
        for a in ads {
            assert!(line_items.insert(a["line_item_id"].as_str().unwrap().to_string()));
            assert!(a["creative_id"].is_string());
            assert!(a["price_cpm"].as_f64().unwrap() > 0.0);
        }
    }
    assert!(
        !breaks[0]["ads"].as_array().unwrap().is_empty(),
        "the main break fills: {body}"
    );
    let versions = body["model_versions"].as_array().unwrap();
    assert!(versions
        .iter()
        .any(|m| m["name"] == "ctr" && m["version"] == "demo-1"));
    for stage in [
        "admit_us",
        "hydrate_us",
        "retrieve_us",
        "rank_us",
        "score_us",
        "value_us",
        "pod_us",
        "total_us",
    ] {
        assert!(
            body["timings_us"][stage].is_u64(),
            "missing {stage}: {body}"
        );
    }

    // The decision was logged.
    let recent: Value = reqwest::get(server.url("/v1/decisions/recent?limit=5"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(recent[0]["decision"]["request_id"], "r-1");
}

#[tokio::test]
async fn bad_input_gets_a_400_naming_the_field() {
    let server = Server::start().await;
    let cases: Vec<(String, Option<&str>)> = vec![
        ("{\"request_id\": \"r\", ".to_string(), None),
        ("[1, 2, 3]".to_string(), None),
        (
            with(example(), |r| {
                r.as_object_mut().unwrap().remove("breaks");
            }),
            Some("breaks"),
        ),
        (
            with(example(), |r| r["breaks"][0]["max_duration_s"] = json!(-30)),
            Some("breaks[0].max_duration_s"),
        ),
        (
            with(example(), |r| r["breaks"][0]["max_ads"] = json!("four")),
            Some("breaks[0].max_ads"),
        ),
        (
            with(example(), |r| r["user"]["country"] = json!(7)),
            Some("user.country"),
        ),
        (
            with(example(), |r| r["content"]["live"] = json!("yes")),
            Some("content.live"),
        ),
        (
            with(example(), |r| r["user"]["device"] = json!("toaster")),
            Some("user.device"),
        ),
        (
            with(example(), |r| r["tmax_ms"] = json!(0)),
            Some("tmax_ms"),
        ),
        (with(example(), |r| r["breaks"] = json!([])), Some("breaks")),
    ];
    for (body, field) in cases {
        let (status, answer) = server.post("/v1/decide", body.clone()).await;
        assert_eq!(status, 400, "{body} -> {answer}");
        let message = answer["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error message for {body}: {answer}"));
        if let Some(field) = field {
            assert!(
                message.contains(field),
                "{body}: error {message:?} does not name {field}"
            );
        }
    }

    // Unknown fields are ignored, not refused.
    let extended = with(example(), |r| r["ext"] = json!({"anything": [1, 2]}));
    assert_eq!(server.post("/v1/decide", extended).await.0, 200);

    // An oversized body is refused with 413 before it is parsed.
    let big = format!("{{\"pad\": \"{}\"}}", "x".repeat(200 * 1024));
    let (status, answer) = server.post("/v1/decide", big).await;
    assert_eq!(status, 413);
    assert!(answer["error"].as_str().unwrap().contains("larger than"));

    // Unknown paths answer JSON too, and the server is still alive after all of the above.
    let r = reqwest::get(server.url("/v1/nope")).await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        reqwest::get(server.url("/healthz")).await.unwrap().status(),
        200
    );
}

#[test]
fn help_explains_every_subcommand() {
    let out = Command::new(env!("CARGO_BIN_EXE_podium"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success());
    for flag in ["--listen", "--data-dir", "--tmax-ms", "Example"] {
        assert!(text.contains(flag), "serve --help lacks {flag}:\n{text}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_podium"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(String::from_utf8(out.stdout).unwrap().contains("serve"));
}

#[test]
fn an_unusable_data_dir_is_reported_and_the_process_exits() {
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("marketplace.json"), "{ not a marketplace").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_podium"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("marketplace.json"), "{err}");
}

#[tokio::test]
async fn serves_every_model_over_the_open_inference_protocol() {
    let server = Server::start().await;
    let get = |p: &str| reqwest::get(server.url(p));
    assert_eq!(get("/v2/health/ready").await.unwrap().status(), 200);
    assert_eq!(get("/v2/health/live").await.unwrap().status(), 200);
    assert_eq!(get("/v2/models/ctr/ready").await.unwrap().status(), 200);
    assert_eq!(get("/v2/models/nope/ready").await.unwrap().status(), 404);
    let meta: Value = get("/v2/models/ctr").await.unwrap().json().await.unwrap();
    assert_eq!(meta["name"], "ctr");
    let names: Vec<String> = meta["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_string())
        .collect();
    assert!(names.len() > 2);

    // Two rows as one [N, F] tensor, the second with a missing value.
    let width = names.len();
    let row0: Vec<Value> = (0..width).map(|i| json!(0.01 * (i as f64 + 1.0))).collect();
    let mut row1 = row0.clone();
    row1[0] = Value::Null;
    let flat: Vec<Value> = row0.iter().chain(row1.iter()).cloned().collect();
    let (status, out) = server
        .post("/v2/models/ctr/infer", json!({"id": "x", "inputs": [{"name": "input-0", "shape": [2, width], "datatype": "FP32", "data": flat}]}).to_string())
        .await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["model_name"], "ctr");
    assert_eq!(out["id"], "x");
    let p = out["outputs"][0]["data"].as_array().unwrap();
    assert_eq!(p.len(), 2);
    assert!(p
        .iter()
        .all(|v| v.as_f64().unwrap() > 0.0 && v.as_f64().unwrap() < 1.0));

    // The same rows as one tensor per feature give the same predictions.
    let per_feature: Vec<Value> = names
        .iter()
        .enumerate()
        .map(|(i, n)| json!({"name": n, "shape": [2], "datatype": "FP64", "data": [row0[i], row1[i]]}))
        .collect();
    let (status, out2) = server
        .post(
            "/v2/models/ctr/infer",
            json!({"inputs": per_feature}).to_string(),
        )
        .await;
    assert_eq!(status, 200, "{out2}");
    assert_eq!(out2["outputs"][0]["data"], out["outputs"][0]["data"]);

    // And the same as `podium model score` on the bundle the server loaded.
    let csv_path = server.data.path().join("rows.csv");
    let cell = |v: &Value| {
        if v.is_null() {
            String::new()
        } else {
            v.to_string()
        }
    };
    let csv = format!(
        "{}\n{}\n{}\n",
        names.join(","),
        row0.iter().map(cell).collect::<Vec<_>>().join(","),
        row1.iter().map(cell).collect::<Vec<_>>().join(",")
    );
    std::fs::write(&csv_path, csv).unwrap();
    let scored = Command::new(env!("CARGO_BIN_EXE_podium"))
        .args(["model", "score"])
        .arg(server.data.path().join("models/ctr"))
        .arg("--input")
        .arg(&csv_path)
        .output()
        .unwrap();
    let scored = String::from_utf8(scored.stdout).unwrap();
    let cli: Vec<f64> = scored.lines().skip(1).map(|l| l.parse().unwrap()).collect();
    for (a, b) in cli.iter().zip(p) {
        assert!((a - b.as_f64().unwrap()).abs() < 1e-6, "{cli:?} vs {p:?}");
    }

    // Bad requests name the problem.
    let (status, e) = server
        .post("/v2/models/ctr/infer", json!({"inputs": [{"name": "input-0", "shape": [2, 3], "datatype": "FP32", "data": [1, 2]}]}).to_string())
        .await;
    assert_eq!(status, 400);
    assert!(e["error"].as_str().unwrap().contains("shape"), "{e}");
    let (status, e) = server
        .post(
            "/v2/models/ctr/infer",
            json!({"inputs": [{"name": "bogus", "shape": [1], "datatype": "FP32", "data": [1]}]})
                .to_string(),
        )
        .await;
    assert_eq!(status, 400);
    assert!(e["error"].as_str().unwrap().contains("bogus"), "{e}");
    let (status, _) = server.post("/v2/models/ctr/infer", "{}").await;
    assert_eq!(status, 400);
    let (status, _) = server
        .post(
            "/v2/models/missing/infer",
            json!({"inputs": []}).to_string(),
        )
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_stalled_model_falls_back_and_the_request_still_meets_its_deadline() {
    let server = Server::start_with(|dir| {
        std::fs::write(
            dir.join("models.toml"),
            "top_k = 100\n[ranker]\nmodel = \"early_ranker\"\n[[scorer]]\nmodel = \"ctr\"\ninject_delay_ms = 200\n[[scorer]]\nmodel = \"completion\"\n",
        )
        .unwrap();
    })
    .await;
    let body = with(example(), |r| r["tmax_ms"] = json!(30));
    for _ in 0..3 {
        let started = Instant::now();
        let (status, d) = server.post("/v1/decide", body.clone()).await;
        let took = started.elapsed();
        assert_eq!(status, 200, "{d}");
        assert!(took < Duration::from_millis(150), "took {took:?}");
        assert!(
            d["timings_us"]["total_us"].as_u64().unwrap() <= 31_000,
            "{d}"
        );
        let ctr = d["model_versions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == "ctr")
            .unwrap()
            .clone();
        assert_eq!(ctr["tier"], 1, "{d}");
        let completion = d["model_versions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == "completion")
            .unwrap()
            .clone();
        assert_eq!(completion["tier"], 0, "{d}");
        assert!(
            d["degraded"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r.as_str().unwrap().contains("ctr")),
            "{d}"
        );
        // Priors still value and fill the break.
        assert!(!d["breaks"][0]["ads"].as_array().unwrap().is_empty(), "{d}");
    }
}

#[tokio::test]
async fn overload_is_shed_with_a_fast_well_formed_no_ads_answer() {
    // One decision at a time, no queue; a slow model keeps that one slot busy.
    let server = Server::start_with_args(
        |dir| {
            std::fs::write(
                dir.join("models.toml"),
                "top_k = 100\n[ranker]\nmodel = \"early_ranker\"\n[[scorer]]\nmodel = \"ctr\"\ninject_delay_ms = 400\n[[scorer]]\nmodel = \"completion\"\n",
            )
            .unwrap();
        },
        &["--max-in-flight", "1", "--max-queue", "0", "--tmax-ms", "2000"],
    )
    .await;
    // Warm-up abandons the stalled model and skips it until that batch ends; let it end.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let slow = with(example(), |r| r["request_id"] = json!("slow"));
    let client = reqwest::Client::new();
    let busy = tokio::spawn({
        let (client, url, body) = (client.clone(), server.url("/v1/decide"), slow.clone());
        async move { client.post(url).body(body).send().await.unwrap().status() }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let r = client
        .post(server.url("/v1/decide"))
        .body(with(example(), |r| r["request_id"] = json!("shed-me")))
        .send()
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("x-podium-shed"));
    let d: Value = r.json().await.unwrap();
    assert_eq!(d["request_id"], "shed-me");
    assert_eq!(d["breaks"][0]["break_id"], "b1");
    assert_eq!(d["breaks"][0]["ads"], json!([]));
    assert!(
        d["degraded"][0].as_str().unwrap().starts_with("shed"),
        "{d}"
    );
    assert!(took < Duration::from_millis(50), "shedding took {took:?}");

    // Model calls have limits of their own: a busy decision slot does not shed them.
    let infer = json!({"inputs": [{"name": "user_ctr_7d", "shape": [1], "datatype": "FP32", "data": [0.01]}]}).to_string();
    let r = client
        .post(server.url("/v2/models/ctr/infer"))
        .body(infer)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    assert_eq!(busy.await.unwrap(), 200);
    // Capacity is back once the slow request ends.
    let (status, d) = server
        .post(
            "/v1/decide",
            with(example(), |r| r["tmax_ms"] = json!(1000)),
        )
        .await;
    assert_eq!(status, 200);
    assert!(
        d["degraded"]
            .as_array()
            .unwrap()
            .iter()
            .all(|x| !x.as_str().unwrap().starts_with("shed")),
        "{d}"
    );
}

#[tokio::test]
async fn a_standard_triton_client_calls_podium_models() {
    let installed = Command::new("python3")
        .args(["-c", "import tritonclient.http"])
        .status()
        .is_ok_and(|s| s.success());
    if !installed {
        assert!(
            std::env::var("CI").is_err(),
            "CI must install tritonclient[http] (pip)"
        );
        eprintln!("skipping: tritonclient is not installed (pip install 'tritonclient[http]')");
        return;
    }
    let server = Server::start().await;
    let meta: Value = reqwest::get(server.url("/v2/models/ctr"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let width = meta["inputs"].as_array().unwrap().len();
    let script = format!(
        r#"
import numpy as np, tritonclient.http as http
c = http.InferenceServerClient(url="{host}")
assert c.is_server_live() and c.is_server_ready() and c.is_model_ready("ctr")
x = np.full((3, {width}), 0.02, dtype=np.float32)
inp = http.InferInput("input-0", list(x.shape), "FP32")
inp.set_data_from_numpy(x)
out = c.infer("ctr", [inp]).as_numpy("predict")
assert out.shape == (3,) and ((out > 0) & (out < 1)).all(), out
print("ok", out[0])
"#,
        host = server.base.trim_start_matches("http://"),
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ok"));
}

#[tokio::test]
async fn micro_batched_model_calls_each_get_their_own_rows() {
    let server = Server::start_with(|dir| {
        std::fs::write(
            dir.join("models.toml"),
            "top_k = 100\n[ranker]\nmodel = \"early_ranker\"\n[[scorer]]\nmodel = \"ctr\"\n[[scorer]]\nmodel = \"completion\"\n[micro_batching]\nctr = { max_rows = 32, max_wait_us = 2000 }\n",
        )
        .unwrap();
    })
    .await;
    let meta: Value = reqwest::get(server.url("/v2/models/ctr"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let width = meta["inputs"].as_array().unwrap().len();
    let row = |i: usize| -> Vec<Value> {
        (0..width)
            .map(|c| json!(0.001 * (i * width + c) as f64))
            .collect()
    };
    let body = |i: usize| {
        json!({"inputs": [{"name": "x", "shape": [1, width], "datatype": "FP32", "data": row(i)}]})
            .to_string()
    };
    // One at a time first, then all at once: every answer must be the row's own.
    let mut alone = Vec::new();
    for i in 0..24 {
        let (status, out) = server.post("/v2/models/ctr/infer", body(i)).await;
        assert_eq!(status, 200, "{out}");
        alone.push(out["outputs"][0]["data"][0].clone());
    }
    let together = futures_join(&server, (0..24).map(body).collect()).await;
    for (i, out) in together.iter().enumerate() {
        assert_eq!(out["outputs"][0]["data"][0], alone[i], "row {i}");
    }
}

async fn futures_join(server: &Server, bodies: Vec<String>) -> Vec<Value> {
    let client = reqwest::Client::new();
    let handles: Vec<_> = bodies
        .into_iter()
        .map(|b| {
            let (client, url) = (client.clone(), server.url("/v2/models/ctr/infer"));
            tokio::spawn(async move {
                client
                    .post(url)
                    .body(b)
                    .send()
                    .await
                    .unwrap()
                    .json::<Value>()
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test]
async fn events_posted_are_aggregated_and_served_with_the_next_decision() {
    let server = Server::start().await;
    let ready: Value = reqwest::get(server.url("/readyz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["features"]["reachable"], true, "{ready}");
    // The demo writes its definitions beside the marketplace, for operators to edit.
    let defs = std::fs::read_to_string(server.data.path().join("features.toml")).unwrap();
    assert!(defs.contains("user_impressions_1h"), "{defs}");

    let now = now_ms();
    let mut events: Vec<Value> = (0..3)
        .map(|i| {
            json!({"id": format!("e{i}"), "type": "impression", "ts_ms": now - 1_000 + i,
                   "user_id": "u-123", "line_item_id": "li-0", "advertiser_id": "adv-0",
                   "content_id": "title-42"})
        })
        .collect();
    // A duplicate, an unknown type and a bad timestamp: counted, never fatal.
    events.push(events[0].clone());
    events.push(json!({"id": "x1", "type": "teleport", "ts_ms": now, "user_id": "u-123"}));
    events.push(json!({"id": "x2", "type": "click", "ts_ms": "soon", "user_id": "u-123"}));
    let (status, body) = server
        .post("/v1/events", Value::Array(events).to_string())
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["queued"], 6);

    let started = Instant::now();
    let stats = loop {
        let s: Value = reqwest::get(server.url("/v1/features/stats"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if s["stream"]["applied"] == 3 && s["stream"]["duplicate"] == 1 {
            break s;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{s}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(stats["stream"]["rejected"]["unknown_type"], 1, "{stats}");
    assert_eq!(stats["stream"]["rejected"]["bad_timestamp"], 1, "{stats}");

    let (status, _) = server.post("/v1/decide", example().to_string()).await;
    assert_eq!(status, 200);
    let recent: Value = reqwest::get(server.url("/v1/decisions/recent?limit=1"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let served = recent[0]["served"].as_array().unwrap();
    let user = served
        .iter()
        .find(|e| e["entity"] == "user" && e["id"] == "u-123")
        .unwrap_or_else(|| panic!("{recent}"));
    // user_impressions_1h follows the four stored viewer features in the default definitions.
    assert_eq!(user["values"][4], json!([3.0, true]), "{user}");
    let content = served.iter().find(|e| e["entity"] == "content").unwrap();
    assert_eq!(content["id"], "title-42");
    let hydration = &stats["hydration"];
    assert!(hydration["requests"].as_u64().unwrap() >= 1, "{stats}");

    // The same counters, and the decision's latencies, in Prometheus text.
    let metrics = server.get_text("/metrics").await;
    for needle in [
        "podium_decision_duration_seconds_bucket",
        "podium_decision_stage_duration_seconds_bucket{stage=\"hydrate\"",
        "podium_features_events_total{outcome=\"applied\"} 3",
        "podium_features_events_total{outcome=\"duplicate\"} 1",
        "podium_features_store_up{backend=\"memory\"} 1",
        "podium_ready 1",
    ] {
        assert!(metrics.contains(needle), "no {needle} in\n{metrics}");
    }
    // Every metric the Grafana dashboard in deploy/ queries is one this server exports.
    let dashboard = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/grafana/podium.json"),
    )
    .unwrap();
    let mut queried: Vec<&str> = dashboard
        .match_indices("podium_")
        .map(|(i, _)| {
            let rest = &dashboard[i..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .filter(|m| *m != "podium_json")
        .collect();
    queried.sort();
    queried.dedup();
    assert!(queried.len() >= 10, "{queried:?}");
    // Where metrics are named: the exporter, and the serving tier's per-model recorders.
    let exporter: String = [
        "../podium-server/src/metrics.rs",
        "../podium-server/src/monitor.rs",
        "../podium-serving/src/stats.rs",
        "../podium-serving/src/slot.rs",
    ]
    .iter()
    .map(|f| {
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(f)).unwrap()
    })
    .collect();
    for m in queried {
        let base = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| m.strip_suffix(s))
            .unwrap_or(m);
        assert!(
            exporter.contains(&format!("\"{base}\"")),
            "the dashboard queries {m}, which Podium does not export"
        );
        // Registry metrics need --registry, degraded counts a degraded decision, calibration an
        // observed outcome: the rest are in this server's exposition now.
        // Fallbacks, timeouts and drift alerts count events this test does not cause.
        let conditional = base.starts_with("podium_registry")
            || base == "podium_decision_degraded_total"
            || base == "podium_model_calibration_ratio"
            || base == "podium_model_fallback_total"
            || base == "podium_model_timeouts_total"
            || base == "podium_model_drift_alerts_total";
        if !conditional {
            assert!(metrics.contains(m), "{m} not in\n{metrics}");
        }
    }

    // A body that is not JSON is refused whole, naming where.
    let (status, body) = server.post("/v1/events", "{\"id\": 1}\nnot json").await;
    assert_eq!(status, 400, "{body}");
    assert!(body["field"].as_str().unwrap().contains("line 2"), "{body}");
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[tokio::test]
async fn with_redis_down_decisions_go_on_with_defaults_and_recover_when_it_returns() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let redis = Redis::start(port);
    let url = format!("redis://127.0.0.1:{port}");
    let server = Server::start_with_args(|_| {}, &["--feature-store", &url]).await;
    let ready = server.get_json("/readyz").await;
    assert_eq!(ready["features"]["backend"], "redis", "{ready}");
    assert_eq!(ready["features"]["reachable"], true, "{ready}");

    // The audience was written to Redis at start: the viewer is found.
    let (status, hydration) = server
        .post("/v1/features/hydrate", example().to_string())
        .await;
    assert_eq!(status, 200, "{hydration}");
    assert_eq!(hydration["user_found"], true, "{hydration}");
    assert!(hydration["degraded"].is_null(), "{hydration}");

    // Redis dies: decisions are still answered in time, on defaults, and say so.
    drop(redis);
    for i in 0..5 {
        let req = with(example(), |r| r["request_id"] = json!(format!("down-{i}")));
        let (status, d) = server.post("/v1/decide", req).await;
        assert_eq!(status, 200, "{d}");
        let degraded = d["degraded"].as_array().unwrap();
        assert!(
            degraded
                .iter()
                .any(|x| x.as_str().unwrap().starts_with("hydrate: store")),
            "{d}"
        );
        assert!(!d["breaks"][0]["ads"].as_array().unwrap().is_empty(), "{d}");
    }
    let ready = server.get_json("/readyz").await;
    assert_eq!(ready["features"]["reachable"], false, "{ready}");
    let metrics = server.get_text("/metrics").await;
    assert!(
        metrics.contains("podium_features_store_up{backend=\"redis\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("podium_decision_degraded_total{reason=\"hydrate\"}"),
        "{metrics}"
    );
    let stats = server.get_json("/v1/features/stats").await;
    assert!(
        stats["hydration"]["store_errors"].as_u64().unwrap() >= 5,
        "{stats}"
    );

    // Redis returns (empty): hydration recovers by itself, without a restart.
    let _redis = Redis::start(port);
    let started = Instant::now();
    loop {
        let (_, h) = server
            .post("/v1/features/hydrate", example().to_string())
            .await;
        if h["degraded"].is_null() {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{h}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ready = server.get_json("/readyz").await;
    assert_eq!(ready["features"]["reachable"], true, "{ready}");
}

#[tokio::test]
async fn a_restart_is_warm_from_the_feature_snapshot() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_path_buf();
    let args = ["--feature-snapshot-interval-s", "1"];
    let first = Server::start_in(&dir, &args).await;
    let now = now_ms();
    let event = json!({"id": "s1", "type": "impression", "ts_ms": now, "user_id": "u-123"});
    let (status, _) = first.post("/v1/events", event.to_string()).await;
    assert_eq!(status, 202);
    // Wait for a snapshot written after the event was applied.
    let snapshot = dir.join("features.snapshot");
    let started = Instant::now();
    loop {
        let s = first.get_json("/v1/features/stats").await;
        if s["stream"]["applied"] == 1 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{s}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let applied_at = std::time::SystemTime::now();
    loop {
        let written = std::fs::metadata(&snapshot).and_then(|m| m.modified());
        if written.is_ok_and(|w| w > applied_at) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "no snapshot written"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A graceful stop also saves the aggregator's tiles.
    let mut first = first;
    first.stop_gracefully().await;
    assert!(dir.join("features.tiles.json").exists());

    let second = Server::start_in(&dir, &args).await;
    let (_, h) = second
        .post("/v1/features/hydrate", example().to_string())
        .await;
    assert_eq!(
        feature(&h, "user_impressions_1h"),
        1.0,
        "the aggregate survived the restart: {h}"
    );

    // The windows go on from where they were: a second impression makes two, not one.
    let event = json!({"id": "s2", "type": "impression", "ts_ms": now + 1, "user_id": "u-123"});
    let (status, _) = second.post("/v1/events", event.to_string()).await;
    assert_eq!(status, 202);
    let started = Instant::now();
    loop {
        let (_, h) = second
            .post("/v1/features/hydrate", example().to_string())
            .await;
        let imps = feature(&h, "user_impressions_1h");
        if imps != 1.0 {
            assert_eq!(imps, 2.0, "{h}");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{h}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_live_server_logs_what_it_served_and_the_backfill_agrees() {
    let mut server = Server::start().await;
    // Impressions and clicks for three viewers and two line items, stamped as they happen, then
    // decisions for the viewers.
    let mut n = 0;
    for round in 0..4 {
        let now = now_ms();
        let events: Vec<Value> = (0..30)
            .map(|i| {
                n += 1;
                json!({"id": format!("ev-{n}"),
                       "type": if i % 5 == 0 { "click" } else { "impression" },
                       "ts_ms": now + i,
                       "user_id": format!("u-{}", i % 3),
                       "line_item_id": format!("li-{}", i % 2),
                       "advertiser_id": "adv-0",
                       "content_id": "title-42"})
            })
            .collect();
        let (status, _) = server
            .post("/v1/events", Value::Array(events).to_string())
            .await;
        assert_eq!(status, 202);
        let started = Instant::now();
        while server.get_json("/v1/features/stats").await["stream"]["applied"] != n {
            assert!(started.elapsed() < Duration::from_secs(10));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Line items and advertisers are served from the candidate table, re-read every second:
        // wait for a read after these events, so that the decisions see them (a decision in the
        // second after an entity's first event is served its defaults, and the report would
        // count that as missing).
        let refreshes = |s: Value| s["hydration"]["candidate_refreshes"].as_u64().unwrap();
        let before = refreshes(server.get_json("/v1/features/stats").await);
        tokio::time::sleep(Duration::from_millis(1_050)).await;
        loop {
            server
                .post("/v1/features/hydrate", example().to_string())
                .await;
            if refreshes(server.get_json("/v1/features/stats").await) > before {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(10));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for u in 0..3 {
            let req = with(example(), |r| {
                r["request_id"] = json!(format!("live-{round}-{u}"));
                r["user"]["id"] = json!(format!("u-{u}"));
            });
            let (status, _) = server.post("/v1/decide", req).await;
            assert_eq!(status, 200);
        }
    }

    // A graceful stop flushes both logs.
    server.stop_gracefully().await;

    let data = server.data.path();
    let out = Command::new(env!("CARGO_BIN_EXE_podium"))
        .args(["features", "consistency", "--definitions"])
        .arg(data.join("features.toml"))
        .arg("--events")
        .arg(data.join("logs/events"))
        .arg("--served")
        .arg(data.join("logs/features"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert!(summary["rows"].as_u64().unwrap() > 0, "{stdout}");
    assert_eq!(summary["unexplained"], 0, "{stdout}");
    assert!(summary["exact_rate"].as_f64().unwrap() >= 0.999, "{stdout}");
}

#[tokio::test]
async fn oversized_targets_headers_and_bodies_are_refused_with_the_limit_named() {
    let server = Server::start().await;
    let client = reqwest::Client::new();
    let json_error = |status: u16, body: &Value, expected: u16, says: &str| {
        assert_eq!(status, expected, "{body}");
        assert!(
            body["error"].as_str().is_some_and(|e| e.contains(says)),
            "{body}"
        );
    };
    // A request target over 8 KiB.
    let r = client
        .get(server.url(&format!("/v1/vast?user_id={}", "u".repeat(9 * 1024))))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    json_error(status, &r.json().await.unwrap(), 414, "limit");
    // Too many header fields, and too many header bytes.
    let mut many = reqwest::header::HeaderMap::new();
    for i in 0..80 {
        many.insert(
            reqwest::header::HeaderName::from_bytes(format!("x-h{i}").as_bytes()).unwrap(),
            "1".parse().unwrap(),
        );
    }
    let r = client
        .get(server.url("/healthz"))
        .headers(many)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    json_error(status, &r.json().await.unwrap(), 431, "limits");
    let r = client
        .get(server.url("/healthz"))
        .header("cookie", "c".repeat(20 * 1024))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    json_error(status, &r.json().await.unwrap(), 431, "bytes");
    // Bodies over each endpoint's limit.
    for (path, size) in [
        ("/v1/decide", 65 * 1024),
        ("/openrtb2/auction", 65 * 1024),
        ("/v2/models/ctr/infer", 9 * 1024 * 1024),
    ] {
        let r = client
            .post(server.url(path))
            .header("content-type", "application/json")
            .body(vec![b' '; size])
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        json_error(status, &body, 413, "larger than");
    }
    // A shape whose value count overflows is a 400, not a crash.
    let (status, body) = server
        .post(
            "/v2/models/ctr/infer",
            r#"{"inputs":[{"name":"x","shape":[4294967296,4294967296],"datatype":"FP32","data":[]}]}"#,
        )
        .await;
    json_error(status, &body, 400, "more than");
    // Still serving.
    assert_eq!(
        reqwest::get(server.url("/healthz")).await.unwrap().status(),
        200
    );
}
