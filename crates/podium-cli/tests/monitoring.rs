//! Monitoring end to end, on the binary: a request feature whose distribution moves trips
//! feature drift against the models' references (API, alert log, /metrics), and the dashboard,
//! loaded in headless Chromium while the server is under load, draws real data.

mod common;

use common::Server;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const DEVICES: [&str; 6] = ["tv", "tv", "tv", "mobile", "tablet", "desktop"];

fn request(i: u64, device: &str) -> String {
    json!({"request_id": format!("m-{i}"),
           "user": {"id": format!("u-{}", i % 5_000), "country": "US", "device": device},
           "content": {"id": format!("t-{}", i % 300), "genre": "drama", "live": i.is_multiple_of(7)},
           "breaks": [{"id": "b1", "position": "midroll", "max_ads": 4, "max_duration_s": 90}]})
    .to_string()
}

/// Sends `n` decisions, `workers` at a time, with the device `device(i)`.
async fn send(server: &Server, first: u64, n: u64, device: fn(u64) -> &'static str) {
    let next = Arc::new(AtomicU64::new(first));
    let client = reqwest::Client::new();
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (next, client, url) = (next.clone(), client.clone(), server.url("/v1/decide"));
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= first + n {
                        break;
                    }
                    let r = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(request(i, device(i)))
                        .send()
                        .await
                        .expect("decide answers");
                    assert_eq!(r.status(), 200);
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
}

fn feature<'a>(drift: &'a Value, model: &str, name: &str) -> &'a Value {
    drift["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["model"] == model)
        .and_then(|m| {
            m["features"]
                .as_array()
                .unwrap()
                .iter()
                .find(|f| f["name"] == name)
        })
        .unwrap_or_else(|| panic!("no {model}/{name} in {drift}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_moved_feature_trips_drift_and_is_alerted() {
    let server = Server::start().await;
    // Traffic as the models were trained on: half the requests from TVs.
    send(&server, 0, 400, |i| DEVICES[(i % 6) as usize]).await;
    let drift = server.get_json("/v1/monitor/drift?minutes=60").await;
    let tv = feature(&drift, "ctr", "ctx_device_tv");
    assert_eq!(tv["band"], "stable", "{tv}");
    assert!(tv["sampled"].as_u64().unwrap() >= 1_000, "{tv}");
    assert_eq!(tv["missing_share"], 0.0);
    let ctr = drift["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["model"] == "ctr")
        .unwrap();
    assert_eq!(ctr["has_reference"], true);
    assert!(ctr["prediction"]["live"].as_array().unwrap().len() > 1);

    // Then the TVs go away: only phones.
    send(&server, 400, 1_200, |_| "mobile").await;
    let drift = server.get_json("/v1/monitor/drift?minutes=60").await;
    let tv = feature(&drift, "ctr", "ctx_device_tv");
    assert_eq!(tv["band"], "major", "{tv}");
    assert!(tv["psi"].as_f64().unwrap() > 0.25, "{tv}");
    assert!(tv["js"].as_f64().unwrap() > 0.1, "{tv}");

    // The monitor's loop raises it as an alert, once.
    let started = Instant::now();
    let alert = loop {
        let alerts = server.get_json("/v1/monitor/alerts").await;
        let found: Vec<Value> = alerts["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| {
                a["source"] == "drift"
                    && a["model"] == "ctr"
                    && a["rule"] == "feature_drift"
                    && a["detail"].as_str().unwrap().starts_with("ctx_device_tv ")
            })
            .cloned()
            .collect();
        if let Some(a) = found.first() {
            assert_eq!(found.len(), 1, "{alerts}");
            break a.clone();
        }
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "no drift alert: {alerts}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(alert["detail"].as_str().unwrap().contains("PSI"), "{alert}");
    let metrics = server.get_text("/metrics").await;
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("podium_model_feature_psi{")
                && l.contains("model=\"ctr\"")
                && l.contains("feature=\"ctx_device_tv\"")
        })
        .unwrap_or_else(|| panic!("no feature PSI for ctx_device_tv in /metrics"));
    let psi: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(psi > 0.25, "{line}");
    for name in [
        "podium_model_inference_duration_seconds_bucket",
        "podium_model_batch_rows_bucket",
        "podium_model_batches_total",
        "podium_model_prediction_psi",
        "podium_model_drift_alerts_total",
        "podium_pacing_budget_dollars",
        "podium_pacing_spent_ratio",
    ] {
        assert!(
            metrics.lines().any(|l| l.starts_with(name)),
            "{name} missing from /metrics"
        );
    }
}

/// The Chromium binary, or `None` (with the reason printed) when this machine has none and CI
/// did not ask for one.
fn chromium() -> Option<&'static str> {
    for path in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] {
        if std::path::Path::new(path).exists() {
            return Some(path);
        }
    }
    assert!(
        std::env::var_os("PODIUM_REQUIRE_BROWSER").is_none(),
        "PODIUM_REQUIRE_BROWSER is set but no Chromium is installed"
    );
    eprintln!("skipped: no Chromium at /usr/bin/chromium (apt-get install chromium)");
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dashboard_draws_live_data_in_a_browser() {
    let Some(browser) = chromium() else {
        return;
    };
    let server = Server::start().await;
    // Load that runs until the page has been read.
    let running = Arc::new(AtomicBool::new(true));
    let load = {
        let (running, url) = (running.clone(), server.url("/v1/decide"));
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut i = 0u64;
            while running.load(Ordering::Relaxed) {
                let _ = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(request(i, DEVICES[(i % 6) as usize]))
                    .send()
                    .await;
                i += 1;
            }
            i
        })
    };
    // Enough seconds of series and a model sample (every 5 s, a rate needs two) before the
    // page loads.
    let started = Instant::now();
    loop {
        let live = server.get_json("/v1/monitor/live?seconds=300").await;
        let sampled = live["models"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| !m["series"].as_array().unwrap().is_empty())
            .count();
        if sampled >= 3 && live["points"].as_array().unwrap().len() >= 3 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no model series yet: {live}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let url = server.url("/dashboard");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(browser)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--virtual-time-budget=8000",
                "--dump-dom",
                &url,
            ])
            .output()
            .expect("chromium runs")
    })
    .await
    .unwrap();
    running.store(false, Ordering::Relaxed);
    let sent = load.await.unwrap();
    assert!(sent > 20, "only {sent} decisions sent");
    let dom = String::from_utf8_lossy(&out.stdout);
    let start = dom
        .find("<pre id=\"render-check\"")
        .unwrap_or_else(|| panic!("no render check in the page: {dom}"));
    let body = &dom[start..];
    let body = &body[body.find('>').unwrap() + 1..body.find("</pre>").unwrap()];
    let body = body
        .replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&");
    let check: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert!(check["refreshes"].as_u64().unwrap() >= 2, "{check}");
    assert_eq!(check["errors"], json!([]), "{check}");
    let charts = &check["charts"];
    // Series with real points: decisions per second, latency, stages, models, predictions.
    for (name, points, series) in [
        ("rate", 3, 3),
        ("latency", 3, 3),
        ("stage_p99", 3, 7),
        ("model_p99", 1, 3),
        ("prediction_hist", 2, 2),
    ] {
        let c = &charts[name];
        assert!(c["points"].as_u64().unwrap() >= points, "{name}: {check}");
        assert!(c["series"].as_u64().unwrap() >= series, "{name}: {check}");
        assert!(c["nonzero"].as_u64().unwrap() > 0, "{name}: {check}");
        assert!(c["painted"].as_u64().unwrap() > 1_000, "{name}: {check}");
    }
    // Pacing curves of the largest line items.
    assert!(charts["pacing"]["series"].as_u64().unwrap() >= 2, "{check}");
}

/// A collector that answers 200 to every OTLP/HTTP export and keeps the JSON bodies.
fn collector() -> (String, Arc<std::sync::Mutex<Vec<Value>>>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let bodies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let kept = bodies.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; length];
            if reader.read_exact(&mut body).is_ok() {
                if let Ok(v) = serde_json::from_slice::<Value>(&body) {
                    kept.lock().unwrap().push(v);
                }
            }
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}");
        }
    });
    (url, bodies)
}

#[tokio::test]
async fn decisions_are_traced_over_otlp_with_a_span_per_stage() {
    let (url, bodies) = collector();
    let mut server = Server::start_with_args(
        |_| {},
        &["--otlp-endpoint", &url, "--otlp-sample-ratio", "1"],
    )
    .await;
    for i in 0..5 {
        let (status, _) = server.post("/v1/decide", request(9_000 + i, "tv")).await;
        assert_eq!(status, 200);
    }
    // The batch processor sends within its delay; a graceful stop flushes in any case.
    server.stop_gracefully().await;
    let started = Instant::now();
    let spans: Vec<Value> = loop {
        let spans: Vec<Value> = bodies
            .lock()
            .unwrap()
            .iter()
            .flat_map(|b| b["resourceSpans"].as_array().cloned().unwrap_or_default())
            .flat_map(|r| r["scopeSpans"].as_array().cloned().unwrap_or_default())
            .flat_map(|s| s["spans"].as_array().cloned().unwrap_or_default())
            .collect();
        if spans.iter().filter(|s| s["name"] == "decide").count() >= 5
            || started.elapsed() > Duration::from_secs(15)
        {
            break spans;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let roots: Vec<&Value> = spans.iter().filter(|s| s["name"] == "decide").collect();
    assert!(roots.len() >= 5, "{} spans: {spans:?}", spans.len());
    let root =
        roots
            .iter()
            .find(|r| {
                r["attributes"].as_array().unwrap().iter().any(|a| {
                    a["key"] == "podium.request_id" && a["value"]["stringValue"] == "m-9000"
                })
            })
            .unwrap_or_else(|| panic!("no trace of m-9000: {roots:?}"));
    let children: Vec<&str> = spans
        .iter()
        .filter(|s| s["traceId"] == root["traceId"] && s["parentSpanId"] == root["spanId"])
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    for stage in [
        "admit", "retrieve", "hydrate", "rank", "score", "value", "pod",
    ] {
        assert!(children.contains(&stage), "{stage} missing: {children:?}");
    }
}
