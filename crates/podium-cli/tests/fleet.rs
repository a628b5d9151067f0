//! A fleet: three `podium serve` processes on loopback sharing one Redis (features, budget
//! ledger, frequency caps) and one NATS JetStream (events), and the faults a fleet must survive.

mod common;

use common::{copy_dir, free_port, Nats, Redis, Server};
use serde_json::Value;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Every line item's daily budget in the test world: about three impressions at demo prices.
const BUDGET: i64 = 120_000;
/// Every line item's cap per viewer per day.
const CAP: u64 = 2;

/// A demo world made once (models trained), with tight budgets, and caps on every line item
/// (`cap_all`) or only where the demo has them.
async fn tight_world(cap_all: bool) -> tempfile::TempDir {
    let world = tempfile::tempdir().unwrap();
    let mut first = Server::start_in(world.path(), &["--log-dir", "off"]).await;
    first.stop_gracefully().await;
    let path = world.path().join("marketplace.json");
    let mut market: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    for li in market["line_items"].as_array_mut().unwrap() {
        li["daily_budget"] = BUDGET.into();
        if cap_all || li.get("caps").is_some() {
            li["caps"] = serde_json::json!([{"scope": "line_item", "max": CAP, "window_s": 86400}]);
        }
        // Spend as fast as it wins, so budgets run out within the test.
        li["pacing"] = serde_json::json!({"mode": "asap"});
    }
    std::fs::write(&path, serde_json::to_vec_pretty(&market).unwrap()).unwrap();
    for stale in [
        "features.snapshot",
        "features.tiles.json",
        "admin-audit.jsonl",
    ] {
        let _ = std::fs::remove_file(world.path().join(stale));
    }
    world
}

/// A fleet server on a copy of `world`, with every backend distributed.
async fn fleet_server(
    world: &std::path::Path,
    id: &str,
    redis: &str,
    nats: &str,
    extra: &[&str],
) -> Server {
    let mut args = vec![
        "--feature-store",
        redis,
        "--budget-ledger",
        redis,
        "--frequency-store",
        redis,
        "--events",
        nats,
        "--fleet-size",
        "3",
        "--server-id",
        id,
        "--log-dir",
        "off",
    ];
    args.extend_from_slice(extra);
    Server::start_with_args(|d| copy_dir(world, d), &args).await
}

/// The URLs of a VAST document's `<Impression>` elements.
fn impressions(doc: &str) -> Vec<String> {
    doc.split("<Impression><![CDATA[")
        .skip(1)
        .filter_map(|rest| rest.split("]]>").next())
        .map(str::to_string)
        .collect()
}

fn query_param<'a>(url: &'a str, key: &str) -> Option<&'a str> {
    url.split(['?', '&'])
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

/// Stream counters of a server: (events applied, cap writes pending).
async fn stream_state(server: &Server) -> (u64, u64) {
    let s = server.get_json("/v1/features/stats").await;
    (
        s["stream"]["applied"].as_u64().unwrap_or(0),
        s["frequency_caps"]["pending_writes"]
            .as_u64()
            .unwrap_or(u64::MAX),
    )
}

/// Waits until every server has applied `events` events and written their caps.
async fn settle(servers: &[&Server], events: u64) {
    let started = Instant::now();
    for s in servers {
        loop {
            let (applied, pending) = stream_state(s).await;
            if applied >= events && pending == 0 {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{}: applied {applied} of {events} events, {pending} cap writes pending",
                s.base
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The budget ledger in Redis: line item → (allocated, spent), micros.
async fn ledger(url: &str) -> HashMap<String, (i64, i64)> {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("podium:budget:*")
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut out: HashMap<String, (i64, i64)> = HashMap::new();
    for key in keys {
        let v: i64 = redis::cmd("GET")
            .arg(&key)
            .query_async::<Option<i64>>(&mut conn)
            .await
            .unwrap()
            .unwrap_or(0);
        // podium:budget:{<line item>:<period>}:allocated|spent
        let inner = key.split(['{', '}']).nth(1).unwrap();
        let li = inner.split(':').next().unwrap().to_string();
        let e = out.entry(li).or_default();
        if key.ends_with(":spent") {
            e.1 += v;
        } else {
            e.0 += v;
        }
    }
    out
}

/// What a fleet served, from the test's side.
#[derive(Default)]
struct Served {
    /// Impressions per (viewer, line item).
    per_viewer: HashMap<(String, String), u64>,
    /// Impression cost per line item, micros, as the ledger should count it.
    cost: HashMap<String, i64>,
    /// Distinct events fired.
    events: u64,
}

/// One ad request to `decider` for `viewer`; each impression is reported (twice, as a player
/// retrying would) to `reporter`, another server.
async fn serve_break(
    decider: &Server,
    reporter: &Server,
    viewer: &str,
    request: &str,
    served: &mut Served,
) -> usize {
    let r = reqwest::get(decider.url(&format!(
        "/v1/vast?user_id={viewer}&country=US&device=tv&genre=drama&max_ads=4&max_duration_s=120&request_id={request}"
    )))
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let doc = r.text().await.unwrap();
    let urls = impressions(&doc);
    for url in &urls {
        let li = query_param(url, "li").unwrap().to_string();
        let price: f64 = query_param(url, "p").unwrap().parse().unwrap();
        *served
            .per_viewer
            .entry((viewer.to_string(), li.clone()))
            .or_default() += 1;
        *served.cost.entry(li).or_default() += ((price * 1e6).round() as i64) / 1000;
        let moved = url.replacen(&decider.base, &reporter.base, 1);
        assert_ne!(&moved, url, "tracking URLs point at the deciding server");
        for _ in 0..2 {
            let r = reqwest::get(&moved).await.unwrap();
            assert_eq!(r.status(), 204, "{moved}");
        }
        served.events += 1;
    }
    urls.len()
}

/// Serves `n` viewers (`<prefix>-<k>`) once each through `decider`, reporting to `reporter`.
async fn serve_viewers(
    decider: &Server,
    reporter: &Server,
    prefix: &str,
    n: usize,
    tag: &str,
    served: &mut Served,
) {
    for k in 0..n {
        let (viewer, request) = (format!("{prefix}-{k}"), format!("{tag}-{k}"));
        serve_break(decider, reporter, &viewer, &request, served).await;
    }
}

/// Waits until the ledger's confirmed spend equals what was served, per line item.
async fn spend_matches(redis: &str, served: &Served) -> HashMap<String, (i64, i64)> {
    let started = Instant::now();
    loop {
        let l = ledger(redis).await;
        let exact = served
            .cost
            .iter()
            .all(|(li, c)| l.get(li).map_or(0, |e| e.1) == *c)
            && l.iter()
                .all(|(li, e)| e.1 == served.cost.get(li).copied().unwrap_or(0));
        if exact {
            return l;
        }
        if started.elapsed() > Duration::from_secs(20) {
            let mismatched: Vec<_> = served
                .cost
                .iter()
                .filter(|(li, c)| l.get(*li).map_or(0, |e| e.1) != **c)
                .map(|(li, c)| (li.clone(), *c, l.get(li).copied()))
                .collect();
            panic!("ledger spend differs from what was served: {mismatched:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_keep_budgets_caps_and_spend_exact_across_the_fleet() {
    let redis = Redis::start(free_port());
    let nats_dir = tempfile::tempdir().unwrap();
    let nats = Nats::start_in(free_port(), nats_dir.path());
    let world = tight_world(true).await;
    let mut servers = Vec::new();
    for i in 0..3 {
        let id = format!("fleet-{i}");
        servers.push(fleet_server(world.path(), &id, &redis.url(), &nats.url(), &[]).await);
    }
    for s in &servers {
        let ready = s.get_json("/readyz").await;
        assert_eq!(ready["features"]["backend"], "redis", "{ready}");
        let stats = s.get_json("/v1/features/stats").await;
        assert_eq!(stats["frequency_caps"]["backend"], "redis", "{stats}");
    }

    // Six viewers, each served in turn by a different server, impressions reported to yet
    // another: no server sees a viewer's whole history, or a line item's whole spend.
    let viewers: Vec<String> = (0..6).map(|k| format!("fleet-viewer-{k}")).collect();
    let mut served = Served::default();
    let mut ads = 0;
    for round in 0..10 {
        for (k, viewer) in viewers.iter().enumerate() {
            let decider = &servers[(round + k) % 3];
            let reporter = &servers[(round + k + 1) % 3];
            ads += serve_break(
                decider,
                reporter,
                viewer,
                &format!("f{round}-{k}"),
                &mut served,
            )
            .await;
        }
        // Every server has every impression (and its caps) before the viewers come back.
        settle(&servers.iter().collect::<Vec<_>>(), served.events).await;
    }
    assert!(ads > 100, "the fleet filled few breaks: {ads} ads");

    // Caps: no viewer saw a line item more than its cap, though three servers served them.
    let mut binding = 0;
    for ((viewer, li), n) in &served.per_viewer {
        assert!(*n <= CAP, "{viewer} saw {li} {n} times; the cap is {CAP}");
        binding += usize::from(*n == CAP);
    }
    assert!(binding > 0, "no cap was reached: the test proves nothing");

    // Spend: the ledger counts each impression once, by the server that placed it, and no
    // line item went over its budget however the three servers' leases raced.
    let l = spend_matches(&redis.url(), &served).await;
    let mut exhausted = 0;
    for (li, (allocated, spent)) in &l {
        assert!(*spent <= BUDGET, "{li} spent {spent} of {BUDGET}");
        assert!(
            *allocated <= BUDGET,
            "{li} allocated {allocated} of {BUDGET}"
        );
        exhausted += usize::from(*spent > BUDGET - 60_000);
    }
    assert!(exhausted > 0, "no budget ran out: the test proves nothing");
    // Each server counted every event once: repeats (the second report of each) were dropped.
    for s in &servers {
        let stats = s.get_json("/v1/features/stats").await;
        assert_eq!(stats["stream"]["applied"], served.events, "{stats}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_nats_down_events_are_spooled_to_disk_and_delivered_once_when_it_returns() {
    let redis = Redis::start(free_port());
    let nats_dir = tempfile::tempdir().unwrap();
    let nats_port = free_port();
    let nats = Nats::start_in(nats_port, nats_dir.path());
    let world = tight_world(true).await;
    let a = fleet_server(world.path(), "spool-a", &redis.url(), &nats.url(), &[]).await;
    let b = fleet_server(world.path(), "spool-b", &redis.url(), &nats.url(), &[]).await;
    let mut served = Served::default();
    serve_viewers(&a, &b, "spool-viewer", 4, "s", &mut served).await;
    settle(&[&a, &b], served.events).await;
    let before = served.events;

    // NATS dies. Ads are still decided, and their impressions accepted: to the spool.
    drop(nats);
    serve_viewers(&a, &b, "spool-viewer", 4, "d", &mut served).await;
    let during = served.events - before;
    assert!(during > 0);
    let stats = b.get_json("/v1/features/stats").await;
    let spooled = stats["publisher"]["spooled"].as_u64().unwrap();
    assert!(spooled >= during, "{stats}");
    assert!(
        stats["publisher"]["spool_pending_bytes"].as_u64().unwrap() > 0,
        "{stats}"
    );
    assert!(
        std::fs::metadata(b.data.path().join("events-spool/events.spool"))
            .unwrap()
            .len()
            > 0
    );

    // NATS returns (its stream on disk): the spool drains, every event is applied once by
    // each server, and spend is exact.
    let _nats = Nats::start_in(nats_port, nats_dir.path());
    settle(&[&a, &b], served.events).await;
    let stats = b.get_json("/v1/features/stats").await;
    assert_eq!(stats["publisher"]["spool_pending_bytes"], 0, "{stats}");
    for s in [&a, &b] {
        let stats = s.get_json("/v1/features/stats").await;
        assert_eq!(stats["stream"]["applied"], served.events, "{stats}");
    }
    spend_matches(&redis.url(), &served).await;
}

/// The reasons a `/v1/decide` answer gives for being degraded.
async fn degraded_reasons(server: &Server, request: &str) -> Vec<String> {
    let body = serde_json::json!({
        "request_id": request,
        "user": {"id": "redis-probe", "country": "US", "device": "tv"},
        "content": {"id": "title-42", "genre": "drama", "live": false},
        "breaks": [{"id": "b1", "position": "midroll", "max_ads": 4, "max_duration_s": 90}]
    });
    let (status, d) = server.post("/v1/decide", body.to_string()).await;
    assert_eq!(status, 200, "{d}");
    d["degraded"]
        .as_array()
        .map(|r| {
            r.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_killed_mid_load_decisions_go_on_degraded_nothing_overspends_and_it_recovers() {
    // Redis persists its ledger (append-only file, synced), as a fleet's must.
    let redis_dir = tempfile::tempdir().unwrap();
    let redis_port = free_port();
    let redis = Redis::start_in(redis_port, redis_dir.path(), true);
    let url = redis.url();
    let nats_dir = tempfile::tempdir().unwrap();
    let nats = Nats::start_in(free_port(), nats_dir.path());
    let world = tight_world(false).await;
    let a = fleet_server(world.path(), "redis-a", &url, &nats.url(), &[]).await;
    let b = fleet_server(world.path(), "redis-b", &url, &nats.url(), &[]).await;
    let mut served = Served::default();
    serve_viewers(&a, &b, "rk", 6, "before", &mut served).await;
    settle(&[&a, &b], served.events).await;

    // Redis dies mid-load: every request is still answered, degraded and saying why; line
    // items with caps sit out (their caps cannot be read), the others still fill breaks.
    drop(redis);
    let killed = Instant::now();
    let mut filled = 0;
    // Long enough for several pacing steps to find the ledger gone.
    let mut k = 0;
    while k < 6 || killed.elapsed() < Duration::from_secs(3) {
        k += 1;
        let decider = if k % 2 == 0 { &a } else { &b };
        let reporter = if k % 2 == 0 { &b } else { &a };
        let started = Instant::now();
        let viewer = format!("rk-{}", k % 6);
        filled += serve_break(
            decider,
            reporter,
            &viewer,
            &format!("down-{k}"),
            &mut served,
        )
        .await;
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "a request took {:?} with Redis down",
            started.elapsed()
        );
    }
    assert!(filled > 0, "no ad was served with Redis down");
    let reasons = degraded_reasons(&a, "probe-down").await;
    assert!(
        reasons.iter().any(|r| r.starts_with("hydrate: store")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.starts_with("frequency caps unreadable")),
        "{reasons:?}"
    );
    let down_for = killed.elapsed();

    // Redis returns with what it had: both servers recover by themselves, no restart.
    let _redis = Redis::start_in(redis_port, redis_dir.path(), true);
    let back = Instant::now();
    for (i, s) in [&a, &b].into_iter().enumerate() {
        loop {
            let reasons = degraded_reasons(s, &format!("probe-up-{i}")).await;
            if !reasons
                .iter()
                .any(|r| r.starts_with("hydrate") || r.starts_with("frequency caps"))
            {
                break;
            }
            assert!(
                back.elapsed() < Duration::from_secs(15),
                "{}: still degraded after Redis returned: {reasons:?}",
                s.base
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let recovered_in = back.elapsed();
    serve_viewers(&b, &a, "rk", 6, "after", &mut served).await;
    settle(&[&a, &b], served.events).await;

    // Spend: exact (what was confirmed during the outage reached the ledger after it) and
    // within every budget.
    let l = spend_matches(&url, &served).await;
    for (li, (allocated, spent)) in &l {
        assert!(*spent <= BUDGET, "{li} spent {spent} of {BUDGET}");
        assert!(
            *allocated <= BUDGET,
            "{li} allocated {allocated} of {BUDGET}"
        );
    }
    eprintln!(
        "redis fault: down {down_for:?}, {filled} ads served meanwhile, recovered {recovered_in:?} after its return, {} impressions, spend exact",
        served.events
    );
}

/// A decide request for one viewer; the answer.
async fn decide(server: &Server, request: &str, viewer: &str) -> Value {
    let body = serde_json::json!({
        "request_id": request,
        "user": {"id": viewer, "country": "US", "device": "tv"},
        "content": {"id": "title-42", "genre": "drama", "live": false},
        "breaks": [{"id": "b1", "position": "midroll", "max_ads": 4, "max_duration_s": 90}]
    });
    let (status, d) = server.post("/v1/decide", body.to_string()).await;
    assert_eq!(status, 200, "{d}");
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budgets_and_experiments_set_on_one_server_reach_the_whole_fleet() {
    let redis = Redis::start(free_port());
    let nats_dir = tempfile::tempdir().unwrap();
    let nats = Nats::start_in(free_port(), nats_dir.path());
    let world = tight_world(false).await;
    let token = ["--admin-token", "fleet-admin"];
    let a = fleet_server(
        world.path(),
        "settings-a",
        &redis.url(),
        &nats.url(),
        &token,
    )
    .await;
    let b = fleet_server(
        world.path(),
        "settings-b",
        &redis.url(),
        &nats.url(),
        &token,
    )
    .await;
    let client = reqwest::Client::new();

    // The line item b puts first for a viewer; its budget is set to 0 through a's admin API.
    let first = decide(&b, "s-0", "settings-viewer").await;
    let li = first["breaks"][0]["ads"][0]["line_item_id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = client
        .put(a.admin_url(&format!("/v1/admin/budgets/{li}")))
        .bearer_auth("fleet-admin")
        .json(&serde_json::json!({"daily_budget": 0.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let r = client
        .put(a.admin_url("/v1/admin/budgets/no-such-line-item"))
        .bearer_auth("fleet-admin")
        .json(&serde_json::json!({"daily_budget": 1.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = client
        .put(a.admin_url(&format!("/v1/admin/budgets/{li}")))
        .bearer_auth("fleet-admin")
        .json(&serde_json::json!({"daily_budget": -3}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // b applies it within a poll: its budget list says so, and it stops serving the line item.
    let started = Instant::now();
    loop {
        let budgets = b.admin_get_json("/v1/admin/budgets", "fleet-admin").await;
        let row = budgets["line_items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["line_item"] == li.as_str())
            .unwrap()
            .clone();
        if row["set_at_run_time"] == true {
            assert_eq!(row["daily_budget"], 0.0, "{row}");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "{row}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let again = decide(&b, "s-1", "settings-viewer").await;
    let served: Vec<&str> = again["breaks"][0]["ads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["line_item_id"].as_str().unwrap())
        .collect();
    assert!(!served.contains(&li.as_str()), "{li} still served: {again}");

    // An experiment set on a assigns b's viewers too; cleared, it stops.
    let experiments = "[[layer]]\nname = \"pricing\"\n[[layer.arm]]\nname = \"floor_up\"\npercent = 100.0\nauction = { reserve_multiplier = 1.2 }\n";
    let put = |body: &'static str| {
        client
            .put(a.admin_url("/v1/admin/experiments"))
            .bearer_auth("fleet-admin")
            .header("content-type", "application/toml")
            .body(body)
            .send()
    };
    assert_eq!(put("[[layer]]\nname = 3\n").await.unwrap().status(), 400);
    let r = put("[[layer]]\nname = \"m\"\n[[layer.arm]]\nname = \"x\"\npercent = 10.0\nmodels = { ctr = \"99\" }\n")
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("not loaded"));
    assert_eq!(put(experiments).await.unwrap().status(), 200);
    let arms = |d: &Value| d["experiments"].to_string();
    let started = Instant::now();
    let mut i = 0;
    loop {
        i += 1;
        let d = decide(&b, &format!("x-{i}"), &format!("exp-viewer-{i}")).await;
        if arms(&d).contains("pricing:floor_up") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "{d}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = client
        .delete(a.admin_url("/v1/admin/experiments"))
        .bearer_auth("fleet-admin")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let started = Instant::now();
    loop {
        i += 1;
        let d = decide(&b, &format!("x-{i}"), &format!("exp-viewer-{i}")).await;
        if !arms(&d).contains("pricing:floor_up") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "{d}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Every change is in a's audit trail; b has none (nothing was changed through it).
    let trail = std::fs::read_to_string(a.data.path().join("admin-audit.jsonl")).unwrap();
    assert_eq!(trail.lines().count(), 7, "{trail}");
    assert!(
        !b.data.path().join("admin-audit.jsonl").exists()
            || std::fs::read_to_string(b.data.path().join("admin-audit.jsonl"))
                .unwrap()
                .is_empty()
    );
}
