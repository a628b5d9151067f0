//! `podium replay` end to end: a server with exploration on logs its decisions and the viewers'
//! outcomes; the log replays exactly, a candidate model and auction setting replay against it
//! with a report, and bad candidates and damaged files are refused by name.

mod common;

use common::{podium, Server};
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;

fn request(i: usize) -> String {
    let breaks: Vec<Value> = (0..1 + i % 3)
        .map(|b| {
            json!({"id": format!("b{b}"), "position": "midroll", "max_ads": 2 + b,
                   "max_duration_s": ([30, 60, 90])[b % 3]})
        })
        .collect();
    json!({"request_id": format!("rp-{i}"),
           "user": {"id": format!("u-{}", i % 50), "country": "US",
                    "device": (["tv", "mobile", "desktop"])[i % 3]},
           "content": {"id": "title-42", "genre": (["drama", "sports"])[i % 2], "live": i.is_multiple_of(4)},
           "breaks": breaks})
    .to_string()
}

/// Packages a linear CTR model from `weights` as bundle `out` (relative to `cwd`).
fn package(weights: &Path, version: &str, out: &str, cwd: &Path) {
    let args = [
        "model",
        "package",
        "--kind",
        "linear",
        "--weights",
        weights.to_str().unwrap(),
        "--name",
        "ctr",
        "--version",
        version,
        "--task",
        "ctr",
        "--link",
        "logistic",
        "--out",
        out,
    ];
    let (ok, _, err) = podium(&args, cwd);
    assert!(ok, "{err}");
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[tokio::test]
async fn a_served_log_replays_exactly_and_against_a_candidate() {
    let mut server = Server::start_with_args(|_| {}, &["--exploration", "0.2"]).await;
    let mut events = Vec::new();
    for i in 0..60 {
        let (status, body) = server.post("/v1/decide", request(i)).await;
        assert_eq!(status, 200, "{body}");
        // Every placed ad is seen; the first ad of every third decision is clicked.
        for (b, brk) in body["breaks"].as_array().unwrap().iter().enumerate() {
            for (k, ad) in brk["ads"].as_array().unwrap().iter().enumerate() {
                let base = json!({"ts_ms": now_ms(), "user_id": format!("u-{}", i % 50),
                                  "line_item_id": ad["line_item_id"],
                                  "advertiser_id": ad["advertiser_id"], "content_id": "title-42"});
                let mut imp = base.clone();
                imp["id"] = json!(format!("imp-{i}-{b}-{k}"));
                imp["type"] = json!("impression");
                events.push(imp);
                if i.is_multiple_of(3) && k == 0 {
                    let mut click = base;
                    click["id"] = json!(format!("clk-{i}-{b}"));
                    click["type"] = json!("click");
                    events.push(click);
                }
            }
        }
    }
    let (status, body) = server
        .post("/v1/events", Value::Array(events).to_string())
        .await;
    assert_eq!(status, 202, "{body}");
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    server.stop_gracefully().await;
    let data = server.data.path().to_path_buf();
    let logs = data.join("logs");
    let log = logs.to_str().unwrap();

    // Exact: every decision (warm-up ones included) reproduces, its scores bit for bit.
    let (ok, v, err) = podium(&["replay", "--log", log, "--rescore", "1"], &data);
    assert!(ok, "{err}\n{v}");
    let n = v["decisions"].as_u64().unwrap();
    assert!(n >= 60, "{v}");
    assert_eq!(v["reproduced"], n, "{v}");
    assert_eq!(v["scores_checked"], n, "{v}");
    assert_eq!(v["scores_reproduced"], n, "{v}");

    // A candidate CTR model (the production one with a higher intercept) under first price.
    let weights = data.join("models/ctr/weights/linear.json");
    let mut w: Value = serde_json::from_str(&std::fs::read_to_string(&weights).unwrap()).unwrap();
    w["intercept"] = json!(w["intercept"].as_f64().unwrap() + 0.7);
    let cand = data.join("cand-weights.json");
    std::fs::write(&cand, w.to_string()).unwrap();
    package(&cand, "cand-2", "candidate/ctr", &data);
    std::fs::write(data.join("auction.toml"), "auction = \"first_price\"\n").unwrap();
    let (ok, v, err) = podium(
        &[
            "replay",
            "--log",
            log,
            "--models",
            "candidate",
            "--config",
            "auction.toml",
            "--report",
            "report.html",
        ],
        &data,
    );
    assert!(ok, "{err}\n{v}");
    assert_eq!(v["replayed"], n, "{v}");
    let shift = &v["score_shifts"][0];
    assert_eq!(shift["model"], "ctr", "{v}");
    assert!(shift["mean_shift"].as_f64().unwrap() > 0.0, "{v}");
    // Higher predicted CTR and first price: CPC bids value higher, and winners pay their bids.
    assert!(
        v["candidate"]["revenue"].as_f64().unwrap() > v["logged"]["revenue"].as_f64().unwrap(),
        "{v}"
    );
    let ctr = &v["calibration"]["ctr"];
    assert!(ctr["shown"].as_u64().unwrap() > 50, "{v}");
    assert!(ctr["observed_rate"].as_f64().unwrap() > 0.0, "{v}");
    assert!(
        ctr["candidate_predicted"].as_f64().unwrap() > ctr["logged_predicted"].as_f64().unwrap(),
        "{v}"
    );
    assert!(v["counterfactual"]["samples"].as_u64().unwrap() > 0, "{v}");
    assert!(v["counterfactual"]["ips"]["value"].is_number(), "{v}");
    let report = std::fs::read_to_string(data.join("report.html")).unwrap();
    assert!(
        report.contains("<svg") && report.contains("ctr cand-2"),
        "report"
    );

    // A candidate reading a feature the log does not have: refused, naming it.
    w["weights"]["user_new_signal"] = json!(1.0);
    std::fs::write(&cand, w.to_string()).unwrap();
    package(&cand, "cand-3", "candidate-3/ctr", &data);
    let (ok, _, err) = podium(&["replay", "--log", log, "--models", "candidate-3"], &data);
    assert!(!ok);
    assert!(
        err.contains("candidate-3/ctr") && err.contains("user_new_signal"),
        "{err}"
    );

    // A truncated file beside an intact one: the intact one's results, and the damaged one named.
    let damaged = data.join("damaged");
    std::fs::create_dir(&damaged).unwrap();
    let file = std::fs::read_dir(logs.join("decisions"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "parquet"))
        .unwrap();
    std::fs::copy(&file, damaged.join("a.parquet")).unwrap();
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(damaged.join("b.parquet"), &bytes[..bytes.len() / 2]).unwrap();
    let (ok, v, err) = podium(
        &[
            "replay",
            "--log",
            damaged.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ],
        &data,
    );
    assert!(!ok);
    assert!(err.contains("b.parquet"), "{err}");
    assert_eq!(v["reproduced"], v["decisions"], "{v}");
    assert!(v["decisions"].as_u64().unwrap() >= 60, "{v}");
}

/// A free port on loopback.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn a_log_shipped_to_s3_replays_from_there() {
    use std::io::{Read, Write};
    if Command::new("python3")
        .args(["-c", "import moto.server"])
        .status()
        .map_or(true, |s| !s.success())
    {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but moto is not importable: python3 -m pip install 'moto[server]'"
        );
        eprintln!("note: skipped: moto is not installed (python3 -m pip install 'moto[server]')");
        return;
    }
    let port = free_port();
    let moto = Moto(
        Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let started = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(started.elapsed().as_secs() < 30, "moto did not start");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // A bare PUT creates the bucket (moto accepts it unsigned; object_store has no bucket API).
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "PUT /logs HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    assert!(reply.contains(" 200 "), "{reply}");
    for (k, v) in [
        ("AWS_ENDPOINT", format!("http://127.0.0.1:{port}")),
        ("AWS_ALLOW_HTTP", "true".into()),
        ("AWS_ACCESS_KEY_ID", "test".into()),
        ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ("AWS_REGION", "us-east-1".into()),
    ] {
        std::env::set_var(k, v);
    }

    let mut server = Server::start_with_args(|_| {}, &["--log-dir", "s3://logs/podium/prod"]).await;
    for i in 0..30 {
        let (status, body) = server.post("/v1/decide", request(i)).await;
        assert_eq!(status, 200, "{body}");
    }
    server.stop_gracefully().await;
    let data = server.data.path().to_path_buf();
    // Shipped and gone from the spool.
    let left: Vec<_> = walk(&data.join("logs-spool"));
    assert!(left.is_empty(), "{left:?}");
    let (ok, v, err) = podium(
        &[
            "replay",
            "--log",
            "s3://logs/podium/prod",
            "--data-dir",
            data.to_str().unwrap(),
            "--rescore",
            "1",
        ],
        &data,
    );
    drop(moto);
    assert!(ok, "{err}\n{v}");
    assert!(v["decisions"].as_u64().unwrap() >= 30, "{v}");
    assert_eq!(v["reproduced"], v["decisions"], "{v}");
    assert_eq!(v["scores_reproduced"], v["decisions"], "{v}");
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// The moto server, stopped when dropped (a failing test included).
struct Moto(std::process::Child);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
