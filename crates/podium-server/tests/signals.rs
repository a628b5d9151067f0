//! Real-time signal sources against real local services (the demo signal service, over HTTP and
//! gRPC), slow, failing and flapping: each request gets the source's answer or its defaults,
//! within its budget, and the breaker, cache, freshness bound and hedging do what they say.

use podium_core::AdRequest;
use podium_features::signals::{BreakerState, Fallback, SignalOutcome};
use podium_features::{Definitions, Signals};
use podium_server::signal_demo::{demo_values, DemoSignalServer};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

async fn demo() -> DemoSignalServer {
    let any = "127.0.0.1:0".parse().unwrap();
    DemoSignalServer::start(any, any).await.unwrap()
}

fn request(user: &str) -> AdRequest {
    let text = serde_json::json!({
        "request_id": format!("r-{user}"),
        "user": {"id": user, "country": "US", "device": "tv"},
        "content": {"id": "match-7", "genre": "sports", "live": true, "event_id": "final"},
        "breaks": [{"id": "b1", "position": "midroll", "max_ads": 2, "max_duration_s": 60}],
        "tmax": 100
    });
    serde_json::from_value::<AdRequest>(text)
        .unwrap()
        .validate()
        .unwrap()
}

/// One source named `name` over `protocol` at the demo, returning session_depth and event_minute,
/// with `extra` settings (TOML lines).
fn source(server: &DemoSignalServer, name: &str, protocol: &str, extra: &str) -> String {
    let url = match protocol {
        "http" => format!("http://{}/signals", server.http),
        _ => format!("http://{}", server.grpc),
    };
    format!(
        r#"
[[source]]
name = "{name}"
protocol = "{protocol}"
url = "{url}"
fields = {{ "user.id" = "user.id", "content.id" = "content.id", "content.live" = "content.live", "content.event_id" = "content.event_id" }}
{extra}
[[source.feature]]
name = "{name}_depth"
field = "session_depth"
default = -1.0
[[source.feature]]
name = "{name}_minute"
field = "event_minute"
default = -2.0
[[source.feature]]
name = "{name}_seen"
field = "fields_seen"
default = -3.0
"#
    )
}

fn signals(toml: &str) -> Signals {
    let defs = Definitions::parse(toml, Path::new("signals.toml")).unwrap();
    Signals::new(defs.sources()).unwrap()
}

/// What the demo answers for `req`, as the three features of [`source`].
fn expected(req: &AdRequest) -> Vec<f32> {
    let mut fields = BTreeMap::new();
    fields.insert("user.id".to_string(), req.user.id.as_str().to_string());
    fields.insert(
        "content.id".to_string(),
        req.content.id.as_str().to_string(),
    );
    fields.insert("content.live".to_string(), req.content.live.to_string());
    fields.insert(
        "content.event_id".to_string(),
        req.content.event_id.clone().unwrap(),
    );
    let v = demo_values(&fields);
    vec![
        v["session_depth"] as f32,
        v["event_minute"] as f32,
        v["fields_seen"] as f32,
    ]
}

const DEFAULTS: [f32; 3] = [-1.0, -2.0, -3.0];

fn answered(o: &SignalOutcome, req: &AdRequest) {
    assert_eq!(o.fallback, None, "{o:?}");
    assert_eq!(o.values, expected(req), "{o:?}");
}

fn defaulted(o: &SignalOutcome, why: Fallback) {
    assert_eq!(o.fallback, Some(why), "{o:?}");
    assert_eq!(o.values, DEFAULTS, "{o:?}");
}

#[tokio::test]
async fn http_and_grpc_sources_answer_from_the_fields_they_are_sent() {
    let server = demo().await;
    let s = signals(&format!(
        "{}{}",
        source(&server, "web", "http", "timeout = \"2s\""),
        source(&server, "rpc", "grpc", "timeout = \"2s\"")
    ));
    for user in ["u1", "u2", "u3"] {
        let req = request(user);
        let out = s.fetch(&req, Duration::from_secs(2)).await;
        assert_eq!(out.len(), 2);
        answered(&out[0], &req);
        answered(&out[1], &req);
        // Four fields sent, and the demo saw all four, over both protocols.
        assert_eq!(out[0].values[2], 4.0);
    }
    assert_eq!(server.control.calls(), 6);
}

#[tokio::test]
async fn a_slow_source_serves_its_defaults_within_the_budget_and_the_others_still_answer() {
    let slow = demo().await;
    let fast = demo().await;
    slow.control.set_delay(Duration::from_millis(300));
    let s = signals(&format!(
        "{}{}",
        source(
            &slow,
            "slow",
            "http",
            "timeout = \"1s\"\ncache_ttl = \"10s\""
        ),
        source(&fast, "fast", "grpc", "timeout = \"1s\"")
    ));
    // Connections are opened once, before the timed requests.
    s.fetch(&request("warm"), Duration::from_secs(1)).await;
    let budget = Duration::from_millis(10);
    for user in ["a", "b", "c"] {
        let req = request(user);
        let t = Instant::now();
        let out = s.fetch(&req, budget).await;
        let took = t.elapsed();
        // Not the slow source's 300 ms: the budget, and some scheduling on a busy machine.
        assert!(
            took < budget + Duration::from_millis(100),
            "waited {took:?} on a {budget:?} budget"
        );
        defaulted(&out[0], Fallback::Late);
        answered(&out[1], &req);
    }
    assert_eq!(s.sources()[0].stats().late.load(Ordering::Relaxed), 3);
    // The late answers still arrived, were cached, and now serve at once.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let req = request("a");
    let out = s.fetch(&req, budget).await;
    answered(&out[0], &req);
    assert!(out[0].cached);
}

#[tokio::test]
async fn a_failing_source_opens_its_breaker_is_skipped_and_closes_after_a_good_probe() {
    let server = demo().await;
    let s = signals(&source(
        &server,
        "flaky",
        "grpc",
        "timeout = \"500ms\"\nbreaker_failures = 3\nbreaker_cooldown = \"300ms\"",
    ));
    let src = &s.sources()[0];
    server.control.set_failing(true);
    for user in ["a", "b", "c"] {
        let out = s.fetch(&request(user), Duration::from_secs(1)).await;
        defaulted(&out[0], Fallback::Error);
    }
    assert_eq!(src.status().breaker, BreakerState::Open);
    assert!(src
        .status()
        .last_error
        .unwrap()
        .contains("demo source failing"));
    // Open: skipped without a call.
    let calls = server.control.calls();
    for user in ["d", "e", "f", "g"] {
        let out = s.fetch(&request(user), Duration::from_secs(1)).await;
        defaulted(&out[0], Fallback::Open);
    }
    assert_eq!(server.control.calls(), calls, "an open breaker called");
    assert_eq!(src.stats().skipped.load(Ordering::Relaxed), 4);

    // After the cool-down a failed probe opens it again at once.
    tokio::time::sleep(Duration::from_millis(350)).await;
    let out = s.fetch(&request("h"), Duration::from_secs(1)).await;
    defaulted(&out[0], Fallback::Error);
    assert_eq!(server.control.calls(), calls + 1);
    assert_eq!(src.status().breaker, BreakerState::Open);

    // The source recovers: after the next cool-down one probe closes the breaker.
    server.control.set_failing(false);
    tokio::time::sleep(Duration::from_millis(350)).await;
    let req = request("i");
    let out = s.fetch(&req, Duration::from_secs(1)).await;
    answered(&out[0], &req);
    assert_eq!(src.status().breaker, BreakerState::Closed);
    assert_eq!(src.stats().breaker_opened.load(Ordering::Relaxed), 2);
    for user in ["j", "k"] {
        let req = request(user);
        answered(&s.fetch(&req, Duration::from_secs(1)).await[0], &req);
    }
}

#[tokio::test]
async fn a_flapping_source_gives_each_request_its_answer_or_its_defaults_never_a_mix() {
    let server = demo().await;
    server.control.set_flapping(true);
    let s = signals(&source(
        &server,
        "flap",
        "http",
        "timeout = \"1s\"\nbreaker_failures = 1000",
    ));
    let (mut ok, mut failed) = (0, 0);
    for i in 0..40 {
        let req = request(&format!("u{i}"));
        let out = s.fetch(&req, Duration::from_secs(1)).await;
        match out[0].fallback {
            None => {
                answered(&out[0], &req);
                ok += 1;
            }
            Some(why) => {
                defaulted(&out[0], why);
                assert_eq!(why, Fallback::Error);
                failed += 1;
            }
        }
    }
    assert_eq!((ok, failed), (20, 20));
}

#[tokio::test]
async fn cached_answers_expire_and_answers_past_their_freshness_bound_are_never_served() {
    let server = demo().await;
    let s = signals(&source(
        &server,
        "cached",
        "http",
        "timeout = \"1s\"\ncache_ttl = \"300ms\"\nmax_age = \"1s\"",
    ));
    let req = request("u1");
    answered(&s.fetch(&req, Duration::from_secs(1)).await[0], &req);
    let o = &s.fetch(&req, Duration::from_secs(1)).await[0];
    answered(o, &req);
    assert!(o.cached);
    assert_eq!(server.control.calls(), 1);
    // Another key is another entry.
    let other = request("u2");
    answered(&s.fetch(&other, Duration::from_secs(1)).await[0], &other);
    assert_eq!(server.control.calls(), 2);
    // Past the cache ttl: called again.
    tokio::time::sleep(Duration::from_millis(350)).await;
    let o = &s.fetch(&req, Duration::from_secs(1)).await[0];
    assert!(!o.cached);
    assert_eq!(server.control.calls(), 3);

    // Answers claiming to be 5 s old, with a 1 s freshness bound: defaults, and nothing cached.
    let stale = signals(&source(
        &server,
        "stale",
        "grpc",
        "timeout = \"1s\"\ncache_ttl = \"10s\"\nmax_age = \"1s\"",
    ));
    server.control.set_as_of_lag(Duration::from_secs(5));
    for _ in 0..2 {
        defaulted(
            &stale.fetch(&req, Duration::from_secs(1)).await[0],
            Fallback::Stale,
        );
    }
    assert_eq!(server.control.calls(), 5);
    // 800 ms old with a 1 s bound: served, and cached for the 200 ms left, not the 10 s ttl.
    server.control.set_as_of_lag(Duration::from_millis(800));
    answered(&stale.fetch(&req, Duration::from_secs(1)).await[0], &req);
    assert!(stale.fetch(&req, Duration::from_secs(1)).await[0].cached);
    tokio::time::sleep(Duration::from_millis(250)).await;
    let o = &stale.fetch(&req, Duration::from_secs(1)).await[0];
    assert!(!o.cached, "an answer was served past its freshness bound");
}

#[tokio::test]
async fn a_hedged_call_answers_when_the_first_call_stalls() {
    let server = demo().await;
    // Every other call stalls for 300 ms; the hedge, sent after 10 ms, does not.
    server.control.set_delay(Duration::from_millis(300));
    server.control.set_slow_every(2);
    let s = signals(&source(
        &server,
        "hedged",
        "http",
        "timeout = \"1s\"\nidempotent = true\nhedge_after = \"10ms\"",
    ));
    for i in 0..6 {
        let req = request(&format!("h{i}"));
        let t = Instant::now();
        let out = s.fetch(&req, Duration::from_secs(1)).await;
        answered(&out[0], &req);
        assert!(
            t.elapsed() < Duration::from_millis(200),
            "{:?}",
            t.elapsed()
        );
    }
    let st = s.sources()[0].stats();
    assert!(st.hedge_wins.load(Ordering::Relaxed) >= 1);
    assert!(st.hedges.load(Ordering::Relaxed) >= st.hedge_wins.load(Ordering::Relaxed));
}

#[tokio::test]
async fn calls_beyond_the_in_flight_bound_serve_defaults_at_once() {
    let server = demo().await;
    server.control.set_delay(Duration::from_millis(100));
    let s = signals(&source(
        &server,
        "narrow",
        "grpc",
        "timeout = \"1s\"\nmax_in_flight = 1",
    ));
    let (a, b) = (request("a"), request("b"));
    let (x, y) = tokio::join!(
        s.fetch(&a, Duration::from_secs(1)),
        s.fetch(&b, Duration::from_secs(1))
    );
    let mut whys: Vec<_> = [&x[0], &y[0]].iter().map(|o| o.fallback).collect();
    whys.sort_by_key(|w| w.is_some());
    assert_eq!(whys, vec![None, Some(Fallback::Shed)]);
}

#[tokio::test]
async fn an_unreachable_source_is_an_error_not_a_hang() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let toml = format!(
        r#"
[[source]]
name = "gone"
protocol = "http"
url = "http://127.0.0.1:{port}/x"
timeout = "500ms"
[[source.feature]]
name = "gone_score"
default = 0.25
"#
    );
    let s = signals(&toml);
    let out = s.fetch(&request("u"), Duration::from_secs(1)).await;
    assert_eq!(out[0].fallback, Some(Fallback::Error));
    assert_eq!(out[0].values, vec![0.25]);
    let err = s.sources()[0].status().last_error.unwrap();
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
}

#[tokio::test]
async fn no_time_left_serves_defaults_without_a_call() {
    let server = demo().await;
    let s = signals(&source(&server, "any", "grpc", "timeout = \"1s\""));
    let out = s.fetch(&request("u"), Duration::ZERO).await;
    defaulted(&out[0], Fallback::Late);
    assert_eq!(server.control.calls(), 0);
    let req = request("u");
    answered(&s.fetch(&req, Duration::from_secs(1)).await[0], &req);
    assert_eq!(server.control.calls(), 1);
}
