//! The aggregator end to end: JSON events through a bus into a `MemoryStore`, and the NATS
//! JetStream consumer stopped and restarted midway.

use podium_features::stream::{run_in_process, run_nats, Rejection};
use podium_features::{
    Aggregator, Definitions, MemoryStore, NatsConfig, OnlineStore, StoredValue, StreamStats,
};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

const DEFS: &str = r#"
[[feature]]
name = "user_segment"
entity = "user"
default = -1.0
ttl = "30d"

[[feature]]
name = "user_impressions_1h"
entity = "user"
aggregation = "count"
event = "impression"
window = "1h"
default = 0.0
ttl = "1d"

[[feature]]
name = "user_watch_mean_1d"
entity = "user"
aggregation = "mean"
event = "completion"
field = "value"
window = "1d"
default = 0.5
ttl = "1d"

[[feature]]
name = "li_clicks_7d"
entity = "line_item"
aggregation = "count"
event = "click"
window = "7d"
default = 0.0
ttl = "7d"
"#;

const T0: i64 = 1_700_000_000_000;

fn defs() -> Arc<Definitions> {
    Arc::new(Definitions::parse(DEFS, Path::new("test.toml")).unwrap())
}

fn ev(id: &str, kind: &str, ts: i64, extra: &str) -> Vec<u8> {
    format!(r#"{{"id":"{id}","type":"{kind}","ts_ms":{ts}{extra}}}"#).into_bytes()
}

async fn get(store: &MemoryStore, key: &str) -> Option<Vec<f32>> {
    store.get_many(&[key.to_owned()]).await.unwrap()[0]
        .as_ref()
        .map(|v| v.values.to_vec())
}

#[tokio::test]
async fn in_process_bus_into_memory_store() {
    let store = Arc::new(MemoryStore::new());
    // A stored feature already there must survive the aggregator's writes.
    store.insert("user:u1".into(), StoredValue::new(vec![7.0, 0.0, 0.5], 0));
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let agg = Aggregator::new(defs(), Duration::from_secs(3600));
    let stats = agg.stats();
    let task = tokio::spawn(run_in_process(agg, rx, store.clone()));

    let events = vec![
        ev("a", "impression", T0, r#","user_id":"u1""#),
        ev(
            "b",
            "impression",
            T0 + 1000,
            r#","user_id":"u1","line_item_id":"L""#,
        ),
        ev("b", "impression", T0 + 1000, r#","user_id":"u1""#), // duplicate
        ev(
            "c",
            "completion",
            T0 + 2000,
            r#","user_id":"u1","value":0.2"#,
        ),
        ev(
            "d",
            "completion",
            T0 + 3000,
            r#","user_id":"u1","value":0.6"#,
        ),
        ev(
            "e",
            "click",
            T0 + 4000,
            r#","user_id":"u2","line_item_id":"L""#,
        ),
        ev("f", "impression", T0 + 5000, r#","user_id":"u2""#),
        ev("g", "impression", T0 - 2 * 3_600_000, r#","user_id":"u2""#), // late
        ev("h", "view", T0, r#","user_id":"u1""#),                       // unknown type
        ev("i", "impression", 1_700_000, r#","user_id":"u1""#),          // seconds, not ms
        br#"{"id":"j","type":"impression","user_id":"u1"}"#.to_vec(),    // no ts
        ev("k", "impression", T0, r#","device_id":"d""#),                // no user key
        b"not json".to_vec(),
        br#"{"id":"l","type":"click","ts_ms":"soon","line_item_id":"L"}"#.to_vec(),
    ];
    for e in events {
        tx.send(e).await.unwrap();
    }
    drop(tx);
    let agg = task.await.unwrap();

    assert_eq!(get(&store, "user:u1").await, Some(vec![7.0, 2.0, 0.4]));
    assert_eq!(get(&store, "user:u2").await, Some(vec![-1.0, 1.0, 0.5]));
    assert_eq!(get(&store, "line_item:L").await, Some(vec![1.0]));
    let n = StreamStats::get;
    assert_eq!(n(&stats.applied), 6);
    assert_eq!(n(&stats.duplicate), 1);
    assert_eq!(n(&stats.late), 1);
    assert_eq!(n(&stats.unknown_type), 1);
    assert_eq!(n(&stats.bad_timestamp), 3);
    assert_eq!(n(&stats.missing_entity), 1);
    assert_eq!(n(&stats.malformed), 1);

    // Windows move on with the clock (the oldest tile is kept whole until the window leaves it),
    // and values older than their ttl fall back to defaults.
    let user = podium_features::Entity::User;
    assert_eq!(agg.vector(user, "u1", T0 + 3_600_000), vec![-1.0, 2.0, 0.4]);
    assert_eq!(agg.vector(user, "u1", T0 + 3_900_000), vec![-1.0, 0.0, 0.4]);
    assert_eq!(
        agg.vector(user, "u1", T0 + 3 * 86_400_000),
        vec![-1.0, 0.0, 0.5]
    );
}

#[test]
fn malformed_input_never_panics() {
    let mut agg = Aggregator::new(defs(), Duration::from_secs(3600));
    for bytes in [
        &b""[..],
        b"{}",
        b"[]",
        b"null",
        br#"{"id":1,"type":"click","ts_ms":1}"#,
        br#"{"id":"x","type":null,"ts_ms":1}"#,
        br#"{"id":"x","type":"click","ts_ms":1e300,"line_item_id":"L"}"#,
        br#"{"id":"x","type":"click","ts_ms":-5,"line_item_id":"L"}"#,
        br#"{"id":"x","type":"completion","ts_ms":1700000000000,"user_id":"u","value":"a"}"#,
    ] {
        assert!(agg.apply_json(bytes).is_err());
    }
    assert_eq!(
        agg.apply_json(br#"{"id":"x","type":"click","ts_ms":-5,"line_item_id":"L"}"#),
        Err(Rejection::BadTimestamp)
    );
}

fn nats_up() -> bool {
    std::net::TcpStream::connect_timeout(
        &"127.0.0.1:4222".parse().unwrap(),
        Duration::from_millis(300),
    )
    .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_consumer_restart_counts_every_event_once() {
    if !nats_up() {
        if std::env::var_os("CI").is_some() {
            panic!("NATS JetStream is not listening on 127.0.0.1:4222 (CI must start it)");
        }
        eprintln!("SKIPPED: nothing listens on 127.0.0.1:4222 (start `nats-server -js`)");
        return;
    }
    let unique = format!(
        "{}{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let mut cfg = NatsConfig::new("nats://127.0.0.1:4222");
    cfg.stream = format!("PODIUM_TEST_{unique}");
    cfg.subject = format!("podium.test.{unique}");
    cfg.durable = "features".into();
    cfg.batch = 10;

    let client = async_nats::connect(&cfg.url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    js.get_or_create_stream(async_nats::jetstream::stream::Config {
        name: cfg.stream.clone(),
        subjects: vec![cfg.subject.clone()],
        ..Default::default()
    })
    .await
    .unwrap();
    let publish = |range: std::ops::Range<i64>| {
        let js = js.clone();
        let subject = cfg.subject.clone();
        async move {
            for i in range {
                let user = i % 4;
                let e = ev(
                    &format!("e{i}"),
                    "impression",
                    T0 + i,
                    &format!(r#","user_id":"u{user}""#),
                );
                js.publish(subject.clone(), e.into())
                    .await
                    .unwrap()
                    .await
                    .unwrap();
            }
        }
    };

    let store = Arc::new(MemoryStore::new());
    let agg = Aggregator::new(defs(), Duration::from_secs(3600));
    let stats = agg.stats();
    publish(0..100).await;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(run_nats(agg, cfg.clone(), store.clone(), stop_rx));
    wait_for(|| StreamStats::get(&stats.applied) >= 30).await;
    stop_tx.send(true).unwrap();
    let agg = task.await.unwrap();
    let applied_at_stop = StreamStats::get(&stats.applied);
    assert!(applied_at_stop < 200);

    // Published while no consumer runs, and one redelivery-like republish of an applied id.
    publish(100..200).await;
    publish(0..1).await;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(run_nats(agg, cfg.clone(), store.clone(), stop_rx));
    wait_for(|| StreamStats::get(&stats.applied) + StreamStats::get(&stats.duplicate) >= 201).await;
    stop_tx.send(true).unwrap();
    task.await.unwrap();

    assert_eq!(StreamStats::get(&stats.applied), 200);
    assert_eq!(StreamStats::get(&stats.duplicate), 1);
    let mut total = 0.0;
    for u in 0..4 {
        let v = get(&store, &format!("user:u{u}")).await.unwrap();
        assert_eq!(v[1], 50.0, "user u{u}");
        total += v[1];
    }
    assert_eq!(total, 200.0);
    js.delete_stream(&cfg.stream).await.unwrap();
}

async fn wait_for(cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn an_idle_entity_s_window_slides_in_the_store_when_its_tiles_leave_it() {
    let defs = Arc::new(
        Definitions::parse(
            r#"
[[feature]]
name = "user_imps_1h"
entity = "user"
aggregation = "count"
event = "impression"
window = "1h"
tile = "5m"
default = 0.0
ttl = "7d"
"#,
            Path::new("idle.toml"),
        )
        .unwrap(),
    );
    let store = MemoryStore::new();
    let mut agg = Aggregator::new(defs, Duration::from_secs(3600));
    let t0 = 1_800_000_000_000;
    for i in 0..3 {
        agg.apply_json(&ev(
            &format!("a{i}"),
            "impression",
            t0 + i,
            r#","user_id":"idle""#,
        ))
        .unwrap();
    }
    agg.flush(&store).await.unwrap();
    assert_eq!(get(&store, "user:idle").await, Some(vec![3.0]));
    // Only another viewer has events from now on; two hours later the idle viewer's hour is
    // empty, and the store says so without an event of its own.
    agg.apply_json(&ev(
        "b",
        "impression",
        t0 + 2 * 3_600_000,
        r#","user_id":"busy""#,
    ))
    .unwrap();
    agg.flush(&store).await.unwrap();
    assert_eq!(get(&store, "user:idle").await, Some(vec![0.0]));
    assert_eq!(get(&store, "user:busy").await, Some(vec![1.0]));
}

#[test]
fn aggregator_state_round_trips_and_is_refused_for_other_definitions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiles.json");
    let mut agg = Aggregator::new(defs(), Duration::from_secs(3600));
    let t0 = 1_800_000_000_000;
    for i in 0..5 {
        agg.apply_json(&ev(
            &format!("e{i}"),
            "impression",
            t0 + i,
            r#","user_id":"u1""#,
        ))
        .unwrap();
    }
    assert_eq!(agg.save_state(&path).unwrap(), 1);
    let restored = Aggregator::new(defs(), Duration::from_secs(3600))
        .load_state(&path)
        .unwrap();
    assert_eq!(
        restored.vector(podium_features::Entity::User, "u1", t0 + 10),
        agg.vector(podium_features::Entity::User, "u1", t0 + 10)
    );
    // The dedupe memory came back too: a redelivery is still a duplicate.
    let mut restored = restored;
    assert!(restored
        .apply_json(&ev("e0", "impression", t0, r#","user_id":"u1""#))
        .is_err());

    let other = Arc::new(
        Definitions::parse(
            "[[feature]]\nname = \"x\"\nentity = \"user\"\ndefault = 0.0\nttl = \"1d\"\n",
            Path::new("other.toml"),
        )
        .unwrap(),
    );
    let refused = Aggregator::new(other, Duration::from_secs(3600)).load_state(&path);
    assert!(refused.err().unwrap().contains("other feature definitions"));
}
