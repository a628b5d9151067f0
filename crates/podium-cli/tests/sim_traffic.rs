//! `podium sim traffic` end to end: days of simulated traffic decided by the real binary at their
//! simulated times, read back as a decision log, with the calendar of their live events.

mod common;

use common::podium;
use podium_pacing::calendar::Calendar;
use podium_sim::weeks::{parse_rfc3339, DAY_MS};
use std::collections::HashSet;

#[test]
fn sim_traffic_logs_days_of_decisions_at_simulated_times_and_refuses_a_used_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let args = [
        "sim",
        "traffic",
        "--days",
        "3",
        "--requests-per-day",
        "1500",
        "--users",
        "2000",
        "--seed",
        "2",
        "--data-dir",
        "world",
        "--out",
        "traffic",
    ];
    let (ok, v, stderr) = podium(&args, tmp.path());
    assert!(ok, "{stderr}");
    let out = tmp.path().join("traffic");
    assert_eq!(v["days"], 3, "{v}");
    assert_eq!(v["log"], "traffic/logs", "{v}");
    assert_eq!(v["calendar"], "traffic/events.toml", "{v}");
    assert!(v["files"].as_u64().unwrap() >= 1, "{v}");
    assert!(v["decisions_per_s"].as_f64().unwrap() > 0.0, "{v}");
    let requests = v["requests"].as_u64().unwrap();
    // 4,500 baseline requests give or take noise and growth, and the live events on top.
    assert!((4_000..6_500).contains(&requests), "{v}");

    let calendar = Calendar::read(&out.join("events.toml")).unwrap();
    let start = parse_rfc3339("2026-10-05T00:00:00Z").unwrap();
    let end = start + 3 * DAY_MS;
    // The calendar also lists the events of the two weeks after the span, and none later.
    let starts: Vec<i64> = calendar
        .events
        .iter()
        .map(|e| e.span_ms().unwrap().0)
        .collect();
    assert!(starts.iter().any(|&s| s >= end), "{calendar:?}");
    assert!(
        starts.iter().all(|&s| s < end + 14 * DAY_MS),
        "{calendar:?}"
    );

    let records = podium_log::read_decision_log(&out.join("logs/decisions")).unwrap();
    assert_eq!(records.len() as u64, requests);
    let mut ids = HashSet::new();
    let (mut events, mut with_ads) = (0, [0u32; 3]);
    for r in &records {
        let ts = r.ts_ms as i64;
        assert!(
            (start..end).contains(&ts),
            "{ts} outside the simulated span"
        );
        assert!(ids.insert(r.request.request_id.clone()));
        if let Some(id) = &r.request.content.event_id {
            let event = calendar
                .get(id)
                .unwrap_or_else(|| panic!("{id} is no event"));
            let (from, to) = event.span_ms().unwrap();
            assert!((from..to).contains(&ts), "{id}'s request at {ts}");
            assert!(r.request.content.live);
            events += 1;
        }
        if r.decision.breaks.iter().any(|b| !b.ads.is_empty()) {
            with_ads[((ts - start) / DAY_MS) as usize] += 1;
        }
    }
    assert_eq!(v["event_requests"], events, "{v}");
    assert!(
        events > 100,
        "seed 2 has a live event in its first three days: {v}"
    );
    // The engine served ads on every simulated day.
    assert!(with_ads.iter().all(|&n| n > 100), "{with_ads:?}");

    let (ok, _, stderr) = podium(&args, tmp.path());
    assert!(!ok);
    assert!(stderr.contains("not empty"), "{stderr}");
    assert_eq!(
        podium_log::read_decision_log(&out.join("logs/decisions"))
            .unwrap()
            .len() as u64,
        requests
    );
}
