//! `podium features` end to end: a known event stream goes through the real online path (the
//! `Aggregator` flushing into a `MemoryStore`, requests reading the store between flushes), both
//! logs are written with the rolling writers, and the real binary's `features consistency` must
//! find the served values consistent with the backfill, every mismatch explained by lag. Bad
//! inputs must fail with the file and the problem named.

use podium_features::definitions::EventType;
use podium_features::offline::{read_records, write_records, BackfillRow, QueryPoint, RollPolicy};
use podium_features::stream::Event;
use podium_features::{
    Aggregator, Definitions, Entity, EventLogWriter, MemoryStore, OnlineStore, ServedLogWriter,
    ServedRow,
};
use rand::{Rng, SeedableRng};
use std::path::Path;
use std::process::{Command, Output};
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
name = "user_spend_1d"
entity = "user"
aggregation = "sum"
event = "completion"
field = "value"
window = "1d"
default = 0.0
ttl = "1d"

[[feature]]
name = "user_watch_mean_1h"
entity = "user"
aggregation = "mean"
event = "play"
field = "value"
window = "1h"
default = 0.5
ttl = "1d"

[[feature]]
name = "user_last_click_1d"
entity = "user"
aggregation = "last"
event = "click"
field = "value"
window = "1d"
default = -1.0
ttl = "1d"

[[feature]]
name = "user_distinct_content_1d"
entity = "user"
aggregation = "distinct"
event = "play"
field = "content_id"
window = "1d"
default = 0.0
ttl = "1d"

[[feature]]
name = "li_impressions_1d"
entity = "line_item"
aggregation = "count"
event = "impression"
window = "1d"
default = 0.0
ttl = "1d"

[[feature]]
name = "li_clicks_1h"
entity = "line_item"
aggregation = "count"
event = "click"
window = "1h"
default = 0.0
ttl = "1d"
"#;

const T0: i64 = 1_700_000_000_000;
const LATENESS: Duration = Duration::from_secs(3600);

fn podium(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_podium"))
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The stream in arrival order: about five events a second over 3,000 viewers (and 1 % new ones)
/// and 1,000 line items, 0.3 % arriving up to 2 min late (within the lateness), 2 % redelivered.
fn stream(seed: u64, n: usize) -> Vec<Event> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let kinds = ["impression", "click", "completion", "play"];
    let mut clock = T0;
    let mut out: Vec<Event> = Vec::with_capacity(n);
    for i in 0..n {
        if out.len() > 200 && rng.random_bool(0.02) {
            let k = rng.random_range(out.len() - 200..out.len());
            out.push(out[k].clone());
            continue;
        }
        clock += rng.random_range(0..400);
        let ts = if rng.random_bool(0.003) {
            clock - rng.random_range(1_000..120_000)
        } else {
            clock
        };
        // 1 % are a new viewer's first event.
        let user = if rng.random_bool(0.01) {
            format!("new{i}")
        } else {
            format!("u{}", rng.random_range(0..3_000))
        };
        let mut json = format!(
            r#"{{"id":"e{i}","type":"{}","ts_ms":{ts},"user_id":"{user}""#,
            kinds[rng.random_range(0..4)],
        );
        if rng.random_bool(0.8) {
            json += &format!(r#","line_item_id":"l{}""#, rng.random_range(0..1_000));
        }
        if rng.random_bool(0.8) {
            json += &format!(r#","content_id":"c{}""#, rng.random_range(0..50));
        }
        if rng.random_bool(0.9) {
            json += &format!(r#","value":{}"#, rng.random_range(0..1_000) as f64 / 100.0);
        }
        json += "}";
        out.push(Event::from_json(json.as_bytes()).unwrap());
    }
    out
}

/// Runs the online path over `events` and logs what it consumed and served into `dir`: the
/// real aggregator flushes into a `MemoryStore` about every second of event time, and after each
/// flush, before the next event arrives, a few requests read the store.
async fn simulate_online(defs: &Arc<Definitions>, events: &[Event], dir: &Path) -> usize {
    let store = MemoryStore::new();
    let mut agg = Aggregator::new(defs.clone(), LATENESS);
    let policy = RollPolicy {
        max_rows: 5_000,
        max_age: Duration::from_secs(3600),
    };
    let mut event_log = EventLogWriter::create(&dir.join("events"), "events", policy).unwrap();
    let mut served_log = ServedLogWriter::create(&dir.join("served"), "served", policy).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(99);
    let mut last_flush = i64::MIN;
    let mut batch: Vec<&Event> = Vec::new();
    let mut all_users: Vec<&str> = Vec::new();
    let mut served_rows = 0;
    for (i, e) in events.iter().enumerate() {
        if agg.apply(e).is_ok() {
            batch.push(e);
            all_users.push(e.entity_id(Entity::User).unwrap());
        }
        event_log.push(e.clone()).unwrap();
        let clock = agg.now_ms().unwrap();
        if clock < last_flush + 1_000 {
            continue;
        }
        agg.flush(&store).await.unwrap();
        last_flush = clock;
        let flushed = std::mem::take(&mut batch);
        let Some(next) = events.get(i + 1) else {
            break;
        };
        for r in 0..3 {
            // Served between this flush and the next event's time.
            let ts = clock + rng.random_range(0..=(next.ts_ms - clock).clamp(0, 1_000));
            // Mostly the viewer of an event just flushed (a viewer who is watching); sometimes
            // the viewer of the event in flight, one idle for a while, or one never seen. The
            // exact rate depends on this mix: a stored vector is as of its entity's last event,
            // so reading idle entities mostly yields (explained) lag, not exact values.
            let recent = flushed[rng.random_range(0..flushed.len())];
            let pick = rng.random_range(0..1_000);
            let in_flight = next.entity_id(Entity::User).unwrap();
            // A new viewer's first request can come before their first event is flushed.
            let new_viewer = r == 0 && !agg.knows(Entity::User, in_flight) && rng.random_bool(0.04);
            // The viewer of the event in flight is served at that event's time.
            let ts = if pick < 1 || new_viewer {
                ts.max(next.ts_ms)
            } else {
                ts
            };
            let user = match pick {
                _ if new_viewer => in_flight,
                0..1 => in_flight,
                1..2 => all_users[rng.random_range(0..all_users.len())],
                2..10 => "u_never_seen",
                _ => recent.entity_id(Entity::User).unwrap(),
            };
            let mut entities = vec![(Entity::User, user)];
            // The line item of an ad just shown. (A line item no event touched for a while is
            // served its vector as of its last event: its windows do not slide online, which
            // the report shows as lag; the request mix here keeps that rare.)
            let shown = flushed.iter().filter(|e| e.kind == EventType::Impression);
            if let Some(li) = shown
                .filter_map(|e| e.entity_id(Entity::LineItem))
                .next_back()
            {
                entities.push((Entity::LineItem, li));
            }
            for (entity, id) in entities {
                let key = format!("{}:{id}", entity.as_str());
                let stored = store.get_many(&[key]).await.unwrap().pop().flatten();
                for (k, f) in defs.of(entity).enumerate() {
                    served_log
                        .push(ServedRow {
                            request_id: format!("r{i}-{r}"),
                            ts_ms: ts,
                            entity,
                            entity_id: id.to_owned(),
                            feature: f.name.clone(),
                            value: stored.as_ref().map_or(f.default, |s| s.values[k]),
                            as_of_ms: stored.as_ref().map(|s| s.as_of_ms),
                        })
                        .unwrap();
                    served_rows += 1;
                }
            }
        }
    }
    event_log.finish().unwrap();
    served_log.finish().unwrap();
    served_rows
}

#[tokio::test]
async fn served_values_are_consistent_with_the_backfill_and_mismatches_are_lag() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("features.toml"), DEFS).unwrap();
    let defs = Arc::new(Definitions::parse(DEFS, Path::new("features.toml")).unwrap());
    let events = stream(7, 40_000);
    let served_rows = simulate_online(&defs, &events, dir).await;
    let files = std::fs::read_dir(dir.join("events")).unwrap().count();
    assert!(files >= 7, "the event log rolled into {files} files");

    let out = podium(
        &[
            "features",
            "consistency",
            "--definitions",
            "features.toml",
            "--events",
            "events",
            "--served",
            "served",
            "--output",
            "report.json",
        ],
        dir,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", text(&out));
    let summary: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("report.json")).unwrap()).unwrap();
    eprintln!("{stdout}");
    let rows = summary["rows"].as_u64().unwrap();
    let not_backfillable = report["not_backfillable_rows"].as_u64().unwrap();
    assert_eq!(rows + not_backfillable, served_rows as u64);
    assert!(
        summary["exact_rate"].as_f64().unwrap() >= 0.999,
        "{summary}"
    );
    assert_eq!(summary["unexplained"], 0, "{stdout}");
    // The stream did lag: there were mismatches, and each cause of lag occurred.
    assert!(summary["mismatches"].as_u64().unwrap() > 0, "{summary}");
    let cause = |c: &str| -> u64 {
        report["features"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["lag_causes"][c].as_u64().unwrap())
            .sum()
    };
    assert!(cause("as_of") > 0 && cause("late_arrival") > 0, "{stdout}");
    assert!(cause("not_yet_written") > 0, "{stdout}");
    assert_eq!(report["features"][0]["status"], "not_backfillable");
    assert!(report["events"]["duplicates"].as_u64().unwrap() > 100);
    assert!(stdout.contains("user_impressions_1h") && stdout.contains("not backfillable"));

    // Backfill at the served points writes one row per (point, aggregated feature).
    let out = podium(
        &[
            "features",
            "backfill",
            "--definitions",
            "features.toml",
            "--events",
            "events",
            "--served",
            "served",
            "--output",
            "backfill.parquet",
        ],
        dir,
    );
    assert!(out.status.success(), "{}", text(&out));
    let rows: Vec<BackfillRow> = read_records(&dir.join("backfill.parquet")).unwrap();
    assert!(rows.iter().all(|r| r.feature != "user_segment"));
    assert!(rows.iter().any(|r| r.value > 0.0));
    let summary: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap();
    assert_eq!(summary["rows"], rows.len());
    assert_eq!(summary["not_backfillable"][0], "user_segment");
}

#[test]
fn bad_inputs_fail_naming_the_file_and_the_problem() {
    use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray};
    use arrow_schema::{DataType, Field, Schema};

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("features.toml"), DEFS).unwrap();
    let run = |events: &str| {
        podium(
            &[
                "features",
                "consistency",
                "--definitions",
                "features.toml",
                "--events",
                events,
                "--served",
                "served.parquet",
            ],
            dir,
        )
    };
    write_records::<ServedRow>(&dir.join("served.parquet"), &[]).unwrap();

    let out = run("missing.parquet");
    assert!(!out.status.success());
    assert!(
        text(&out).contains("missing.parquet") && text(&out).contains("cannot read"),
        "{}",
        text(&out)
    );

    // Query points where events are expected: wrong columns.
    let q = QueryPoint {
        entity: Entity::User,
        entity_id: "u1".into(),
        ts_ms: T0,
    };
    write_records(&dir.join("queries.parquet"), &[q]).unwrap();
    let out = run("queries.parquet");
    assert!(!out.status.success());
    assert!(
        text(&out).contains("queries.parquet") && text(&out).contains("missing column `id`"),
        "{}",
        text(&out)
    );

    // An event type Podium does not know, written by some other tool.
    let schema = Arc::new(Schema::new(
        ["id", "type", "ts_ms"]
            .into_iter()
            .map(|n| {
                let t = if n == "ts_ms" {
                    DataType::Int64
                } else {
                    DataType::Utf8
                };
                Field::new(n, t, false)
            })
            .chain(
                [
                    "user_id",
                    "device_id",
                    "line_item_id",
                    "advertiser_id",
                    "content_id",
                ]
                .into_iter()
                .map(|n| Field::new(n, DataType::Utf8, true)),
            )
            .chain(std::iter::once(Field::new(
                "value",
                DataType::Float64,
                true,
            )))
            .collect::<Vec<_>>(),
    ));
    let none = || Arc::new(StringArray::from(vec![None::<&str>])) as ArrayRef;
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from(vec!["e1"])),
            Arc::new(StringArray::from(vec!["view"])),
            Arc::new(Int64Array::from(vec![T0])),
            none(),
            none(),
            none(),
            none(),
            none(),
            Arc::new(arrow_array::Float64Array::from(vec![None::<f64>])),
        ],
    )
    .unwrap();
    let file = std::fs::File::create(dir.join("views.parquet")).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(file, schema, None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    let out = run("views.parquet");
    assert!(!out.status.success());
    assert!(
        text(&out).contains("views.parquet")
            && text(&out).contains("row 0")
            && text(&out).contains("unknown event type `view`"),
        "{}",
        text(&out)
    );
    assert!(!text(&out).contains("panicked"), "{}", text(&out));

    let out = podium(
        &[
            "features",
            "backfill",
            "--definitions",
            "nope.toml",
            "--events",
            "views.parquet",
            "--queries",
            "queries.parquet",
            "--output",
            "out.parquet",
        ],
        dir,
    );
    assert!(!out.status.success());
    assert!(text(&out).contains("nope.toml"), "{}", text(&out));

    let help = podium(&["features", "consistency", "--help"], dir);
    assert!(
        text(&help).contains("podium features consistency --definitions"),
        "{}",
        text(&help)
    );
}
