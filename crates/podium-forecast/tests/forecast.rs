//! The forecaster on a synthetic world whose true rates are known: hourly Poisson traffic with a
//! daily curve, weekends, weekly growth, live events, viewers of known habits, and a booked
//! guaranteed line item.

use podium_auction::LineItem;
use podium_core::AdRequest;
use podium_forecast::{
    avails, backtest, AvailsQuery, BacktestConfig, Cap, ForecastError, ModelConfig, Opportunity,
    Targeting, TrafficModel, Window,
};
use podium_pacing::{Calendar, LiveEvent};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;
/// Monday 2026-10-05 00:00 UTC.
const T0: i64 = 1_791_158_400_000;
const GROWTH: f64 = 1.03;
const US: f64 = 0.7;
const TV: f64 = 0.6;

/// Expected requests in hour `h` since T0 (baseline).
fn rate(h: i64) -> f64 {
    let hod = (h % 24) as f64;
    let dow = (h / 24) % 7;
    let curve = 0.3 + 0.7 * (std::f64::consts::PI * (hod - 2.0) / 24.0).sin().powi(2);
    let weekend = if dow >= 5 { 1.3 } else { 1.0 };
    200.0 * curve * weekend * GROWTH.powf(h as f64 / 168.0)
}

fn request(
    id: u64,
    user: &str,
    country: &str,
    device: &str,
    genre: &str,
    event: Option<&str>,
    preroll: bool,
) -> AdRequest {
    let brk = if preroll {
        serde_json::json!({"id": "b1", "position": "preroll", "max_ads": 2, "max_duration_s": 60})
    } else {
        serde_json::json!({"id": "b1", "position": "midroll", "max_ads": 1, "max_duration_s": 15})
    };
    serde_json::from_value(serde_json::json!({
        "request_id": format!("r{id}"),
        "user": {"id": user, "country": country, "device": device},
        "content": {"id": "c", "genre": genre, "live": event.is_some(), "event_id": event},
        "breaks": [brk],
        "tmax": null,
    }))
    .unwrap()
}

struct World {
    opps: Vec<Opportunity>,
    calendar: Calendar,
}

fn event(id: &str, day: i64, hour: i64, expected: u64, country: &str) -> LiveEvent {
    let iso = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms)
            .unwrap()
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string()
    };
    let start = T0 + day * DAY + hour * HOUR;
    LiveEvent {
        id: id.into(),
        name: None,
        start: iso(start),
        end: iso(start + 3 * HOUR),
        expected_requests: expected,
        genre: Some("sports".into()),
        country: Some(country.into()),
    }
}

/// `weeks` weeks of traffic; events on day 9 and day 17 happen, one on day 31 is planned.
fn world(weeks: i64, seed: u64) -> World {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut opps = Vec::new();
    let mut id = 0;
    let calendar = Calendar {
        events: vec![
            event("match-1", 9, 19, 3000, "US"),
            event("match-2", 17, 20, 4000, "US"),
            event("match-3", 31, 19, 5000, "CA"),
        ],
    };
    // An event draws 80 % of its audience from its own market, the rest as all traffic does.
    let mut push = |rng: &mut ChaCha8Rng, ts: i64, ev: Option<(&str, &str)>, genre: &str| {
        id += 1;
        let user = format!("u{}", rng.random_range(0..3000));
        let country = match ev {
            Some((_, home)) if rng.random::<f64>() < 0.8 => home,
            _ if rng.random::<f64>() < US => "US",
            _ => "CA",
        };
        let ev = ev.map(|e| e.0);
        let device = if rng.random::<f64>() < TV {
            "tv"
        } else {
            "mobile"
        };
        let preroll = rng.random::<f64>() < 0.5;
        let req = request(id, &user, country, device, genre, ev, preroll);
        opps.push(Opportunity::of(&req, ts, true));
    };
    for h in 0..weeks * 168 {
        let n = poisson(&mut rng, rate(h));
        for _ in 0..n {
            let ts = T0 + h * HOUR + rng.random_range(0..HOUR);
            let genre = if rng.random::<f64>() < 0.3 {
                "sports"
            } else {
                "drama"
            };
            push(&mut rng, ts, None, genre);
        }
    }
    for ev in calendar.events.clone() {
        let (s, e) = ev.span_ms().unwrap();
        if e > T0 + weeks * 168 * HOUR {
            continue;
        }
        // What happened: the expected audience, give or take 5 %.
        let n = (ev.expected_requests as f64 * rng.random_range(0.95..1.05)) as u64;
        for _ in 0..n {
            let ts = rng.random_range(s..e);
            let home = ev.country.clone().unwrap();
            push(&mut rng, ts, Some((&ev.id, &home)), "sports");
        }
    }
    World { opps, calendar }
}

fn poisson(rng: &mut ChaCha8Rng, mean: f64) -> u64 {
    // Normal approximation (means here are in the tens to hundreds).
    let z: f64 = (0..12).map(|_| rng.random::<f64>()).sum::<f64>() - 6.0;
    (mean + z * mean.sqrt()).round().max(0.0) as u64
}

fn exact_cfg() -> ModelConfig {
    ModelConfig {
        sample_rate: 1.0,
        ..Default::default()
    }
}

fn model(weeks: i64, origin_days: Option<i64>) -> TrafficModel {
    let w = world(weeks, 7);
    TrafficModel::train(
        w.opps,
        origin_days.map(|d| T0 + d * DAY),
        w.calendar,
        exact_cfg(),
    )
    .unwrap()
}

fn week(from_day: i64) -> Window {
    Window {
        start_ms: T0 + from_day * DAY,
        end_ms: T0 + (from_day + 7) * DAY,
    }
}

fn truth(from_day: i64, share: f64) -> f64 {
    (from_day * 24..(from_day + 7) * 24).map(rate).sum::<f64>() * share
}

fn query(m: &TrafficModel, t: &str, w: Window) -> Result<podium_forecast::Avails, ForecastError> {
    avails(
        m,
        &AvailsQuery {
            targeting: Targeting::parse(t).unwrap(),
            window: w,
            cap: None,
            impressions: None,
        },
        None,
    )
}

#[test]
fn weekly_forecast_follows_season_and_growth() {
    let m = model(4, None);
    for (t, share) in [
        ("*", 1.0),
        ("country=US", US),
        ("country=CA,device=mobile", (1.0 - US) * (1.0 - TV)),
    ] {
        let a = query(&m, t, week(28)).unwrap();
        let want = truth(28, share);
        let err = (a.opportunities - a.from_events - want) / want;
        assert!(
            err.abs() < 0.03,
            "{t}: forecast {} (events {}) against {want:.0}: {err:+.3}",
            a.opportunities,
            a.from_events
        );
        assert!(a.opportunities_low < a.opportunities && a.opportunities < a.opportunities_high);
    }
    // Without the growth term, the average of four weeks would be about 4.5 % short.
    let flat: f64 = (0..4).map(|w| truth(28 - 7 * (w + 1), 1.0)).sum::<f64>() / 4.0;
    assert!((flat - truth(28, 1.0)) / truth(28, 1.0) < -0.04);
}

#[test]
fn dayparts_and_positions_cut_the_slice() {
    let m = model(4, None);
    let all = query(&m, "*", week(28)).unwrap().opportunities
        - query(&m, "*", week(28)).unwrap().from_events;
    let prime = query(&m, "daypart=primetime", week(28)).unwrap();
    let want: f64 = (28 * 24..35 * 24).filter(|h| h % 24 >= 18).map(rate).sum();
    let err = (prime.opportunities - prime.from_events - want) / want;
    assert!(err.abs() < 0.04, "primetime {err:+.3}");
    assert!(prime.opportunities < all);
    // Half the requests have a 60 s preroll; a 30 s midroll never fits (the midroll holds 15 s).
    let pre = query(&m, "position=preroll,duration=30", week(28)).unwrap();
    let want = truth(28, 0.5);
    assert!(((pre.opportunities - pre.from_events) / want - 1.0).abs() < 0.04);
    let mid30 = query(&m, "position=midroll,duration=30", week(28));
    assert!(
        matches!(mid30, Err(ForecastError::SliceTooThin { .. })),
        "{mid30:?}"
    );
}

#[test]
fn live_events_are_spikes_the_calendar_announces() {
    let m = model(4, None);
    let sports = query(&m, "genre=sports,live=true", week(28)).unwrap();
    assert_eq!(sports.events, ["match-3"]);
    // Every event request is live sport: the whole expected audience lands in the slice.
    assert!(
        (sports.from_events - 5000.0).abs() < 1.0,
        "{}",
        sports.from_events
    );
    // Past events are not baseline: live sport has no regular traffic here.
    assert!(sports.opportunities - sports.from_events < 1.0);
    // A Canadian match: 80 % of its audience in Canada, the rest spread as all traffic is.
    let ca = query(&m, "country=CA,genre=sports,live=true", week(28)).unwrap();
    let share = ca.from_events / 5000.0;
    let want = 0.8 + 0.2 * (1.0 - US);
    assert!(
        (share - want).abs() < 0.03,
        "CA share of the event {share}, not {want}"
    );
    // A week without an event has none.
    let later = query(&m, "*", week(35)).unwrap();
    assert!(later.events.is_empty());
}

#[test]
fn a_frequency_cap_counts_each_viewer_at_most_so_often() {
    // 200 viewers, each with exactly 6 requests a day at distinct hours, for two weeks.
    let mut opps = Vec::new();
    let mut id = 0;
    for day in 0..14 {
        for u in 0..200 {
            for k in 0..6 {
                id += 1;
                let req = request(id, &format!("v{u}"), "US", "tv", "drama", None, true);
                opps.push(Opportunity::of(&req, T0 + day * DAY + 3 * k * HOUR, true));
            }
        }
    }
    let m =
        TrafficModel::train(opps, Some(T0 + 14 * DAY), Calendar::default(), exact_cfg()).unwrap();
    let q = |cap: &str| {
        avails(
            &m,
            &AvailsQuery {
                targeting: Targeting::parse("*").unwrap(),
                window: week(14),
                cap: Some(Cap::parse(cap).unwrap()),
                impressions: Some(3_000),
            },
            None,
        )
        .unwrap()
    };
    let a = q("3/day");
    assert!(
        (a.opportunities - 8_400.0).abs() < 1.0,
        "{}",
        a.opportunities
    );
    assert!((a.available - 4_200.0).abs() < 1.0, "{}", a.available);
    assert!(a.bookable.as_deref().unwrap().starts_with("yes"));
    assert!((q("10/day").available - 8_400.0).abs() < 1.0);
    assert!((q("21/week").available - 4_200.0).abs() < 1.0);
    assert!((a.unique_viewers - 200.0).abs() < 1.0);
    assert!(Cap::parse("3/fortnight").is_err() && Cap::parse("0/day").is_err());
}

fn guaranteed(id: &str, countries: &[&str], per_day: u64) -> LineItem {
    serde_json::from_value(serde_json::json!({
        "id": id, "advertiser_id": "a", "category": "auto",
        "bid": {"type": "cpm", "cpm": 20_000_000},
        "targeting": {"countries": countries, "devices": ["tv"]},
        "creatives": [{"id": "c30", "duration_s": 30}],
        "daily_budget": 1_000_000_000,
        "goal": {"type": "guaranteed", "impressions_per_day": per_day},
    }))
    .unwrap()
}

#[test]
fn booked_guaranteed_line_items_take_their_share_first() {
    let m = model(4, None);
    // US tv requests with a 60 s preroll (30 s creatives fit only there).
    let supply = truth(28, US * TV * 0.5);
    let per_day = (supply / 7.0 * 0.4) as u64;
    let market = vec![guaranteed("g-us", &["US"], per_day)];
    let ask = |t: &str| {
        avails(
            &m,
            &AvailsQuery {
                targeting: Targeting::parse(t).unwrap(),
                window: week(28),
                cap: None,
                impressions: None,
            },
            Some(&market),
        )
        .unwrap()
    };
    let us = ask("country=US,device=tv,position=preroll,duration=30");
    let share = us.promised / us.opportunities;
    assert!((share - 0.4).abs() < 0.05, "promised share {share}");
    assert_eq!(us.competing.len(), 1);
    assert_eq!(us.competing[0].line_item, "g-us");
    assert!((us.available - (us.opportunities - us.promised)).abs() <= 1.0);
    let ca = ask("country=CA,device=tv");
    assert_eq!(ca.promised, 0.0);
    assert!(ca.competing.is_empty());
}

#[test]
fn backtest_reports_error_per_slice() {
    let w = world(5, 11);
    let report = backtest(
        w.opps,
        w.calendar,
        &BacktestConfig {
            train_days: 28,
            horizon_days: 7,
            min_daily: 1_000.0,
            target_error: 0.10,
        },
        exact_cfg(),
    )
    .unwrap();
    let all = report.slices.iter().find(|s| s.slice == "*").unwrap();
    assert!(all.weekly_error < 0.03, "{all:?}");
    assert!(report.judged >= 5, "{}", report.judged);
    assert_eq!(
        report.within_target, report.judged,
        "{:?}",
        report.max_weekly_error
    );
    let html = report.html(3);
    assert!(html.contains("<svg") && html.contains("country=US"));
    // A slice that never happens says so.
    assert!(report
        .slices
        .iter()
        .filter(|s| s.slice == "position=midroll,duration=30")
        .all(|s| s
            .no_forecast
            .as_deref()
            .is_some_and(|e| e.contains("too little history"))));
}

#[test]
fn bad_queries_and_windows_are_refused_clearly() {
    let m = model(4, None);
    let e = query(&m, "country=FR", week(28)).unwrap_err().to_string();
    assert!(e.contains("\"FR\"") && e.contains("CA, US"), "{e}");
    let e = query(&m, "device=toaster", week(28))
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a device"), "{e}");
    let backwards = Window {
        start_ms: T0 + 30 * DAY,
        end_ms: T0 + 29 * DAY,
    };
    let e = query(&m, "*", backwards).unwrap_err().to_string();
    assert!(e.contains("ends") && e.contains("before it starts"), "{e}");
    let e = query(&m, "*", week(3)).unwrap_err().to_string();
    assert!(e.contains("entirely in the past"), "{e}");
    // Straddling the origin: forecast from the origin on, and say so.
    let a = query(&m, "*", week(25)).unwrap();
    assert!(a
        .notes
        .iter()
        .any(|n| n.contains("starts before the log ends")));

    let short = model(4, Some(5));
    let e = query(&short, "*", week(6)).unwrap_err();
    assert!(matches!(e, ForecastError::TooLittleHistory { .. }), "{e}");
    assert!(e.to_string().contains("5.0 days"), "{e}");
}

#[test]
fn the_plot_sets_last_weeks_forecast_against_what_happened() {
    let m = model(4, None);
    let t = Targeting::parse("country=US").unwrap();
    let chart = podium_forecast::forecast_chart(&m, &t, week(28)).unwrap();
    let names: Vec<&str> = chart.lines.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["actual", "forecast a week before", "forecast"]);
    // The week before the origin, as forecast from its start, against what happened.
    let sum = |k: usize, from: i64| -> f64 {
        chart.lines[k]
            .points
            .iter()
            .filter(|p| p.0 >= from && p.0 < T0 + 28 * DAY)
            .map(|p| p.1)
            .sum()
    };
    let (forecast, actual) = (sum(1, T0 + 21 * DAY), sum(0, T0 + 21 * DAY));
    assert!(
        ((forecast - actual) / actual).abs() < 0.03,
        "{forecast} against {actual}"
    );
    let page = chart.page("");
    assert!(page.contains("<svg") && page.contains("forecast a week before"));
}

#[test]
fn a_backtest_needs_a_week_of_history() {
    let w = world(2, 3);
    let e = backtest(
        w.opps,
        w.calendar,
        &BacktestConfig {
            train_days: 3,
            horizon_days: 1,
            ..Default::default()
        },
        exact_cfg(),
    )
    .unwrap_err();
    assert!(matches!(e, ForecastError::TooLittleHistory { .. }), "{e}");
}
