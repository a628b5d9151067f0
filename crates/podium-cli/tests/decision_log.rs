//! The decision log end to end: `podium serve` writes every decision to Parquet under
//! `<data-dir>/logs/decisions/`, and the files read back whole (Rust) and with pyarrow, as a
//! data scientist would read them.

mod common;

use common::Server;
use serde_json::{json, Value};
use std::process::Command;

fn request(i: usize) -> String {
    json!({"request_id": format!("dl-{i}"),
           "user": {"id": format!("u-{i}"), "country": "US", "device": if i.is_multiple_of(2) { "tv" } else { "mobile" }},
           "content": {"id": "title-42", "genre": "drama", "live": i.is_multiple_of(3)},
           "breaks": [{"id": "b1", "position": "midroll", "max_ads": 3, "max_duration_s": 60}]})
    .to_string()
}

#[tokio::test]
async fn every_decision_is_logged_to_parquet_and_reads_back() {
    let mut server = Server::start().await;
    let mut answers = Vec::new();
    for i in 0..20 {
        let (status, body) = server.post("/v1/decide", request(i)).await;
        assert_eq!(status, 200, "{body}");
        answers.push(body);
    }
    let metrics = server.get_text("/metrics").await;
    for name in [
        "podium_log_decisions_written_total",
        "podium_log_decisions_dropped_total",
    ] {
        assert!(metrics.contains(name), "{name} not in /metrics");
    }
    // A graceful stop flushes the log.
    server.stop_gracefully().await;
    let dir = server.data.path().join("logs/decisions");
    let records = podium_log::read_decision_log(&dir).unwrap();
    // Warm-up decisions come first; the test's are the last 20, in order.
    let ours: Vec<_> = records
        .iter()
        .filter(|r| r.decision.request_id.as_str().starts_with("dl-"))
        .collect();
    assert_eq!(ours.len(), 20);
    for (r, answer) in ours.iter().zip(&answers) {
        assert_eq!(r.decision.request_id.as_str(), answer["request_id"]);
        let logged: Vec<&str> = r.decision.breaks[0]
            .ads
            .iter()
            .map(|a| a.line_item_id.as_str())
            .collect();
        let answered: Vec<&str> = answer["breaks"][0]["ads"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["line_item_id"].as_str().unwrap())
            .collect();
        assert_eq!(logged, answered);
        assert!(!r.served.is_empty(), "hydrated entities are logged");
        assert!(!r.decision.model_versions.is_empty());
    }

    // pyarrow reads the directory as one table.
    if Command::new("python3")
        .args(["-c", "import pyarrow"])
        .status()
        .map_or(true, |s| !s.success())
    {
        assert!(
            std::env::var_os("PODIUM_REQUIRE_PYARROW").is_none(),
            "PODIUM_REQUIRE_PYARROW is set but pyarrow is not installed"
        );
        eprintln!("skipped the pyarrow read: pip install pyarrow");
        return;
    }
    let script = r#"
import json, sys
import pyarrow.parquet as pq
t = pq.read_table(sys.argv[1])
rows = [r for r in t.to_pylist() if r["request_id"].startswith("dl-")]
first = rows[0]
d = json.loads(first["decision"])
print(json.dumps({
    "rows": len(rows),
    "columns": t.column_names,
    "schema_version": first["schema_version"],
    "live": [r["live"] for r in rows[:3]],
    "ads": first["ads"],
    "decision_ads": len(d["breaks"][0]["ads"]),
    "revenue_micros": first["revenue_micros"],
    "total_us": first["total_us"],
    "model_versions": json.loads(first["model_versions"]),
}))
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["rows"], 20, "{v}");
    assert_eq!(v["schema_version"], 2);
    assert_eq!(v["live"], json!([true, false, false]));
    assert_eq!(v["ads"], v["decision_ads"], "{v}");
    assert!(v["total_us"].as_i64().unwrap() > 0, "{v}");
    let expected_revenue: i64 = answers[0]["breaks"][0]["ads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["price_cpm"].as_f64().unwrap() * 1e6).round() as i64 / 1000)
        .sum();
    assert_eq!(v["revenue_micros"], expected_revenue, "{v}");
    for column in [
        "request_id",
        "ts_ms",
        "user_id",
        "device",
        "request",
        "decision",
        "served",
        "top",
        "scores",
        "reserves",
        "market_fingerprint",
    ] {
        assert!(
            v["columns"].as_array().unwrap().iter().any(|c| c == column),
            "{column} missing: {v}"
        );
    }
}
