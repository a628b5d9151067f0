//! What real-time signal sources add to hydration when they answer at once: three sources (two
//! HTTP, one gRPC, no cache: every request calls all three) served by the demo signal service on
//! a thread of its own, called closed loop from a one-thread runtime like a server's I/O worker.
//! Since sources are called in parallel with the store read, what they add to hydration is
//! their own latency beyond the read's; the store read alone is timed beside them.
//! `cargo bench -p podium-server --bench signals`.

use hdrhistogram::Histogram;
use podium_core::AdRequest;
use podium_features::{Definitions, MemoryStore, OnlineStore, Signals, StoredValue};
use podium_server::signal_demo::DemoSignalServer;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const CALLS: usize = 20_000;

fn request(i: usize) -> AdRequest {
    serde_json::from_value::<AdRequest>(serde_json::json!({
        "request_id": format!("r{i}"),
        "user": {"id": format!("u-{}", i % 100_000), "country": "US", "device": "tv"},
        "content": {"id": format!("c-{}", i % 500), "genre": "sports", "live": true},
        "breaks": [{"id": "b1", "position": "midroll", "max_ads": 2, "max_duration_s": 60}],
        "tmax": 20
    }))
    .unwrap()
    .validate()
    .unwrap()
}

fn sources(http: std::net::SocketAddr, grpc: std::net::SocketAddr, extra: &str) -> Signals {
    let toml = format!(
        r#"
[[source]]
name = "session"
protocol = "http"
url = "http://{http}/session"
fields = ["user.id", "user.device"]
timeout = "15ms"
{extra}
[[source.feature]]
name = "session_depth"
default = 0.0
[[source.feature]]
name = "fraud_score"
default = 0.0

[[source]]
name = "context"
protocol = "grpc"
url = "http://{grpc}"
fields = ["content.id", "content.live"]
timeout = "15ms"
{extra}
[[source.feature]]
name = "event_minute"
default = 0.0

[[source]]
name = "brand"
protocol = "http"
url = "http://{http}/brand"
fields = ["content.id"]
timeout = "15ms"
{extra}
[[source.feature]]
name = "brand_safety"
default = 1.0
"#
    );
    let defs = Definitions::parse(&toml, Path::new("bench.toml")).unwrap();
    Signals::new(defs.sources()).unwrap()
}

fn report(name: &str, h: &Histogram<u64>) {
    let us = |v: u64| v as f64 / 1e3;
    println!(
        "{name:<44} p50 {:>7.1} µs  p90 {:>7.1} µs  p99 {:>7.1} µs  p99.9 {:>7.1} µs  mean {:>7.1} µs",
        us(h.value_at_quantile(0.5)),
        us(h.value_at_quantile(0.9)),
        us(h.value_at_quantile(0.99)),
        us(h.value_at_quantile(0.999)),
        h.mean() / 1e3
    );
}

fn main() {
    // The demo service runs on its own thread, as a remote service would on its own machine.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let any = "127.0.0.1:0".parse().unwrap();
            let server = DemoSignalServer::start(any, any).await.unwrap();
            tx.send((server.http, server.grpc)).unwrap();
            std::future::pending::<()>().await;
        });
    });
    let (http, grpc) = rx.recv().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = MemoryStore::with_capacity(100_000);
        for u in 0..100_000 {
            store.insert(format!("user:u-{u}"), StoredValue::new(vec![0.5; 40], 0));
        }
        let store: Arc<dyn OnlineStore> = Arc::new(store);
        let mut h = Histogram::<u64>::new(3).unwrap();
        for i in 0..CALLS {
            let keys = [
                format!("user:u-{}", i % 100_000),
                format!("content:c-{}", i % 500),
            ];
            let t = Instant::now();
            let _ = store.get_many(&keys).await;
            h.record(t.elapsed().as_nanos() as u64).unwrap();
        }
        report("store read alone (embedded)", &h);

        for (name, extra) in [
            ("3 sources, no cache (every call remote)", ""),
            (
                "3 sources, cached (10 s ttl, 100k viewers)",
                "cache_ttl = \"10s\"",
            ),
        ] {
            let s = sources(http, grpc, extra);
            for i in 0..2_000 {
                s.fetch(&request(i), Duration::from_millis(5)).await;
            }
            let mut h = Histogram::<u64>::new(3).unwrap();
            let mut late = 0;
            for i in 0..CALLS {
                let req = request(i);
                let t = Instant::now();
                let out = s.fetch(&req, Duration::from_millis(5)).await;
                h.record(t.elapsed().as_nanos() as u64).unwrap();
                late += out.iter().filter(|o| o.fallback.is_some()).count();
            }
            report(name, &h);
            println!(
                "{:<44} {late} of {} source answers served defaults",
                "",
                3 * CALLS
            );
        }
    });
}
