//! SIGTERM while requests are in flight: a graceful drain answers them all, then flushes the
//! logs and exits 0.

mod common;

use common::Server;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_answers_what_is_in_flight_flushes_the_logs_and_exits_cleanly() {
    // The CTR model takes 300 ms a batch, so requests are still in flight when the signal
    // comes.
    let mut server = Server::start_with_args(
        |dir| {
            std::fs::write(
                dir.join("models.toml"),
                "top_k = 100\n[ranker]\nmodel = \"early_ranker\"\n[[scorer]]\nmodel = \"ctr\"\ninject_delay_ms = 300\n[[scorer]]\nmodel = \"completion\"\n",
            )
            .unwrap();
        },
        &[
            "--tmax-ms",
            "2000",
            "--max-in-flight",
            "32",
            "--max-queue",
            "64",
            "--max-queue-wait-ms",
            "1000",
        ],
    )
    .await;
    let client = reqwest::Client::new();
    let mut inflight = Vec::new();
    for i in 0..8 {
        let body = json!({
            "request_id": format!("drain-{i}"),
            "user": {"id": format!("u-{i}"), "country": "US", "device": "tv"},
            "content": {"id": "title-42", "genre": "drama", "live": false},
            "breaks": [{"id": "b1", "position": "midroll", "max_ads": 4, "max_duration_s": 90}],
            "tmax_ms": 2000
        });
        let (client, url) = (client.clone(), server.url("/v1/decide"));
        inflight.push(tokio::spawn(async move {
            let r = client.post(url).json(&body).send().await?;
            let status = r.status().as_u16();
            Ok::<_, reqwest::Error>((status, r.json::<Value>().await.unwrap_or(Value::Null)))
        }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let signalled = Instant::now();
    let pid = server.child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());

    // Every request in flight is answered in full: ads, no shedding, no error.
    for (i, h) in inflight.into_iter().enumerate() {
        let (status, d) = h
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("request {i} lost in the drain: {e}"));
        assert_eq!(status, 200, "{d}");
        assert!(!d["breaks"][0]["ads"].as_array().unwrap().is_empty(), "{d}");
        let degraded = d["degraded"].as_array().unwrap();
        assert!(
            degraded
                .iter()
                .all(|r| !r.as_str().unwrap().starts_with("shed")),
            "{d}"
        );
    }
    // New connections are refused once the listener has closed.
    let started = Instant::now();
    loop {
        match reqwest::get(server.url("/healthz")).await {
            Err(_) => break,
            Ok(_) => {
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "still accepting"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    // The process exits 0 after the drain.
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(20),
            "no exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "exit status {status}");
    let drained_in = signalled.elapsed();

    // The decision log holds every answered decision: flushed, not lost with the process.
    let records =
        podium_log::read_decision_log(&server.data.path().join("logs/decisions")).unwrap();
    let logged = records
        .iter()
        .filter(|r| r.decision.request_id.as_str().starts_with("drain-"))
        .count();
    assert_eq!(logged, 8, "decisions logged of the 8 answered");
    eprintln!("drain: 8 in flight answered, exited 0 {drained_in:?} after SIGTERM, 8 logged");
}
