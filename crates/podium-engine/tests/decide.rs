//! The pipeline end to end on the demo world, without HTTP.

use podium_core::{AdBreak, AdRequest, BreakPosition, Content, Device, User};
use podium_engine::{build_demo, Engine, EngineConfig};
use podium_log::MemoryLog;
use podium_serving::ComputePool;
use podium_sim::demo::DemoConfig;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn request(id: &str, breaks: &[(u32, u32)]) -> AdRequest {
    AdRequest {
        request_id: id.into(),
        user: User {
            id: "u-42".into(),
            country: "US".into(),
            device: Device::Tv,
            region: None,
            segments: Vec::new(),
            utc_offset_min: None,
        },
        content: Content {
            id: "title-42".into(),
            genre: "drama".into(),
            live: false,
            rating: None,
            event_id: None,
        },
        breaks: breaks
            .iter()
            .enumerate()
            .map(|(i, &(max_ads, max_duration_s))| AdBreak {
                id: format!("b{i}").as_str().into(),
                position: BreakPosition::Midroll,
                max_ads,
                max_duration_s,
                rules: Default::default(),
            })
            .collect(),
        tmax: Some(Duration::from_millis(500)),
        blocked_categories: Vec::new(),
        blocked_advertisers: Vec::new(),
    }
    .validate()
    .unwrap()
}

async fn engine(dir: &std::path::Path) -> (Engine, MemoryLog) {
    let log = MemoryLog::spawn(100);
    let cfg = DemoConfig {
        users: 500,
        training_impressions: 5_000,
        ..Default::default()
    };
    let engine = build_demo(
        dir,
        &cfg,
        EngineConfig::default(),
        Arc::new(log.clone()),
        ComputePool::new(2),
    )
    .unwrap();
    (engine, log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fills_breaks_within_their_constraints_and_logs_the_decision() {
    let tmp = tempfile::tempdir().unwrap();
    let (engine, log) = engine(tmp.path()).await;
    engine.warm_up(1).await;
    let d = engine
        .decide(request("r-1", &[(4, 90), (2, 30)]), Instant::now())
        .await;
    assert_eq!(d.request_id.as_str(), "r-1");
    assert_eq!(d.breaks.len(), 2);
    assert!(d.eligible > 0);
    let mut line_items = HashSet::new();
    for (b, (max_ads, max_s)) in d.breaks.iter().zip([(4, 90), (2, 30)]) {
        assert!(!b.ads.is_empty(), "break {} has no fill", b.break_id);
        assert!(b.ads.len() <= max_ads);
        assert!(b.ads.iter().map(|a| a.duration_s).sum::<u32>() <= max_s);
        for a in &b.ads {
            assert!(line_items.insert(a.line_item_id.clone()));
            assert!(a.price_cpm <= a.ecpm);
        }
    }
    let names: Vec<_> = d.model_versions.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["early_ranker", "ctr", "completion"]);
    assert!(
        d.model_versions.iter().all(|m| m.tier == 0),
        "{:?}",
        d.degraded
    );
    assert!(d.timings.total_us > 0 && d.timings.total_us >= d.timings.score_us);

    let logged = log.recent(10).await;
    assert_eq!(logged.len(), 1, "warm-up must not log");
    assert_eq!(logged[0].decision, d);
    assert!(logged[0]
        .features
        .iter()
        .any(|(n, v)| n == "ctx_device_tv" && *v == 1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_start_reuses_the_cached_models_and_decides_the_same() {
    let tmp = tempfile::tempdir().unwrap();
    let (first, _) = engine(tmp.path()).await;
    let modified = std::fs::metadata(tmp.path().join("models/ctr/model.toml"))
        .unwrap()
        .modified()
        .unwrap();
    let a = first.decide(request("r", &[(3, 60)]), Instant::now()).await;
    let (second, _) = engine(tmp.path()).await;
    assert_eq!(
        std::fs::metadata(tmp.path().join("models/ctr/model.toml"))
            .unwrap()
            .modified()
            .unwrap(),
        modified
    );
    let b = second
        .decide(request("r", &[(3, 60)]), Instant::now())
        .await;
    assert_eq!(a.breaks, b.breaks);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_deadline_still_answers_with_a_well_formed_decision() {
    let tmp = tempfile::tempdir().unwrap();
    let (engine, _) = engine(tmp.path()).await;
    let received = Instant::now() - Duration::from_secs(1);
    let d = engine.decide(request("late", &[(4, 90)]), received).await;
    assert_eq!(d.breaks.len(), 1);
    assert!(d.model_versions.iter().all(|m| m.tier == 1));
    assert!(
        d.degraded.iter().any(|s| s.contains("deadline")),
        "{:?}",
        d.degraded
    );
}

/// The demo engine with every line item's daily budget set to `budget`.
async fn engine_with_budgets(
    dir: &std::path::Path,
    budget: podium_core::Micros,
) -> (Engine, MemoryLog) {
    drop(engine(dir).await);
    let path = dir.join("marketplace.json");
    let mut market = podium_auction::Marketplace::read(&path).unwrap();
    for li in &mut market.line_items {
        li.daily_budget = budget;
    }
    market.write(&path).unwrap();
    engine(dir).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_item_never_reserves_more_than_its_daily_budget() {
    let tmp = tempfile::tempdir().unwrap();
    // Budgets of 5 cents: one or two impressions each at the demo's prices.
    let budget = podium_core::Micros::from_units(0.05);
    let (engine, _) = engine_with_budgets(tmp.path(), budget).await;
    let mut reserved: std::collections::HashMap<_, podium_core::Micros> = Default::default();
    let mut filled = 0;
    for i in 0..8 {
        let d = engine
            .decide(request(&format!("r-{i}"), &[(4, 90)]), Instant::now())
            .await;
        for a in &d.breaks[0].ads {
            filled += 1;
            *reserved.entry(a.line_item_id.clone()).or_default() +=
                a.price_cpm.cpm_to_impression_cost();
        }
    }
    assert!(filled > 0, "small budgets still buy an impression");
    for (li, spent) in &reserved {
        assert!(
            *spent <= budget,
            "{li} reserved {spent:?} of a {budget:?} budget"
        );
    }
    // An impression confirms spend; its line item closes once its budget is spent.
    let (li, _) = reserved.iter().next().unwrap();
    assert!(engine.record_impression("u-42", li.as_str(), 1, Some(50.0), None, "e1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decide_at_runs_on_the_simulated_clock_and_each_simulated_day_has_its_budget() {
    let tmp = tempfile::tempdir().unwrap();
    let budget = podium_core::Micros::from_units(0.05);
    let (engine, log) = engine_with_budgets(tmp.path(), budget).await;
    // A wall-clock decision first, then simulated days in the past, the later one first: each
    // day counts its own budgets whatever the order.
    engine.warm_up(1).await;
    const DAY: u64 = 86_400_000;
    let oct_5 = 1_791_158_400_000 + 10 * 3_600_000;
    let mut spent: Vec<std::collections::HashMap<String, podium_core::Micros>> = Vec::new();
    for day in [oct_5 + DAY, oct_5] {
        let mut today: std::collections::HashMap<String, podium_core::Micros> = Default::default();
        for i in 0..40u64 {
            let now = day + i * 60_000;
            let mut req = request(&format!("r-{day}-{i}"), &[(4, 90)]);
            req.user.id = format!("u-{i}").as_str().into();
            let d = engine.decide_at(req, Instant::now(), now).await;
            let record = log.recent(1).await.pop().unwrap();
            assert_eq!(record.ts_ms, now);
            assert_eq!(record.decision.request_id, d.request_id);
            for a in &d.breaks[0].ads {
                let cost = a.price_cpm.cpm_to_impression_cost();
                *today.entry(a.line_item_id.to_string()).or_default() += cost;
                engine.record_impression(
                    &format!("u-{i}"),
                    a.line_item_id.as_str(),
                    now as i64,
                    Some(a.price_cpm.as_units()),
                    None,
                    "",
                );
            }
        }
        for (li, s) in &today {
            assert!(
                *s <= budget,
                "{li} spent {s:?} of a {budget:?} budget in a day"
            );
        }
        spent.push(today);
    }
    // Line items that reached their budget on the later day served again on the earlier one.
    let again = spent[0]
        .iter()
        .filter(|(li, s)| {
            s.0 * 2 > budget.0 && spent[1].get(*li).is_some_and(|t| t.0 * 2 > budget.0)
        })
        .count();
    assert!(again > 0, "{spent:?}");
}
