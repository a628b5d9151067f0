//! `podium forecast` end to end on a decision log the real engine wrote (`podium sim traffic`):
//! avails with caps and contention, the backtest and its plot, bad input, and the same answer
//! over the admin API of a running server.

mod common;

use common::{podium, Server};
use serde_json::Value;

/// Eight simulated days (a week of every hour, and one more) of demo traffic.
fn traffic(dir: &std::path::Path) {
    let args = [
        "sim",
        "traffic",
        "--days",
        "8",
        "--requests-per-day",
        "700",
        "--users",
        "1500",
        "--data-dir",
        "world",
        "--out",
        "traffic",
    ];
    let (ok, v, stderr) = podium(&args, dir);
    assert!(ok, "{stderr}");
    assert_eq!(v["end"], "2026-10-13T00:00:00Z", "{v}");
}

fn num(v: &Value, k: &str) -> f64 {
    v[k].as_f64().unwrap_or_else(|| panic!("no {k} in {v}"))
}

#[tokio::test]
async fn forecasts_avails_backtests_and_answers_over_the_admin_api() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    traffic(dir);

    // All traffic next week, then a capped, contended slice with a chart.
    let week = ["--start", "2026-10-13", "--end", "2026-10-20"];
    let mut args = vec!["forecast", "avails", "--log", "traffic/logs"];
    args.extend(week);
    let (ok, all, stderr) = podium(&args, dir);
    assert!(ok, "{stderr}");
    let total = num(&all, "opportunities");
    // About 700 requests a day: the week ahead is ~4,900 give or take growth and noise.
    assert!((3_500.0..7_000.0).contains(&total), "{all}");
    assert!(num(&all, "opportunities_low") <= total && total <= num(&all, "opportunities_high"));
    assert_eq!(all["calendar"], "traffic/logs/../events.toml", "{all}");
    assert_eq!(
        num(&all, "promised"),
        0.0,
        "no marketplace: nothing promised"
    );

    let mut args = vec![
        "forecast",
        "avails",
        "--log",
        "traffic/logs",
        "--targeting",
        "country=US, device=tv, duration=30",
        "--cap",
        "2/day",
        "--marketplace",
        "world/marketplace.json",
        "--impressions",
        "100",
        "--plot",
        "slice.html",
    ];
    args.extend(week);
    let (ok, us, stderr) = podium(&args, dir);
    assert!(ok, "{stderr}");
    let opp = num(&us, "opportunities");
    assert!(opp > 0.0 && opp < total, "{us}");
    assert!(num(&us, "capped_opportunities") <= opp, "{us}");
    assert!(
        num(&us, "available") <= opp - num(&us, "promised") + 1.0,
        "{us}"
    );
    assert!(us["bookable"].is_string(), "{us}");
    // The demo marketplace books guaranteed line items; some compete for US TV.
    assert!(!us["competing"].as_array().unwrap().is_empty(), "{us}");
    let page = std::fs::read_to_string(dir.join("slice.html")).unwrap();
    assert!(page.contains("<svg") && page.contains("forecast"));

    // Bad input: named, non-zero exit.
    for (extra, says) in [
        (&["--targeting", "country=ZZ"][..], "\"ZZ\" does not appear"),
        (&["--targeting", "planet=mars"][..], "unknown targeting key"),
        (&["--cap", "3/fortnight"][..], "--cap"),
    ] {
        let mut args = vec!["forecast", "avails", "--log", "traffic/logs"];
        args.extend(week);
        args.extend(extra);
        let (ok, _, stderr) = podium(&args, dir);
        assert!(!ok && stderr.contains(says), "{extra:?}: {stderr}");
    }
    for (start, end, says) in [
        ("2026-10-20", "2026-10-13", "before it starts"),
        ("2026-10-01", "2026-10-03", "entirely in the past"),
        ("next week", "2026-10-20", "--start"),
    ] {
        let args = [
            "forecast",
            "avails",
            "--log",
            "traffic/logs",
            "--start",
            start,
            "--end",
            end,
        ];
        let (ok, _, stderr) = podium(&args, dir);
        assert!(!ok && stderr.contains(says), "{start}–{end}: {stderr}");
    }
    let (ok, _, stderr) = podium(
        &[
            "forecast",
            "avails",
            "--log",
            "nowhere",
            "--start",
            "2026-10-13",
            "--end",
            "2026-10-14",
        ],
        dir,
    );
    assert!(!ok && stderr.contains("nowhere"), "{stderr}");

    // Backtest: a week learned, the eighth day forecast, judged on slices of 100+ a day.
    let args = [
        "forecast",
        "backtest",
        "--log",
        "traffic/logs",
        "--train-days",
        "7",
        "--horizon-days",
        "1",
        "--min-daily",
        "100",
        "--output",
        "backtest.json",
        "--plot",
        "backtest.html",
    ];
    let (ok, bt, stderr) = podium(&args, dir);
    assert!(ok, "{stderr}");
    assert!(bt["judged"].as_u64().unwrap() >= 3, "{bt}");
    let all = bt["judged_slices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["slice"] == "*")
        .unwrap();
    assert!(num(all, "weekly_error") < 0.15, "{all}");
    assert!(std::fs::read_to_string(dir.join("backtest.html"))
        .unwrap()
        .contains("<svg"));
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("backtest.json")).unwrap()).unwrap();
    assert!(report["slices"].as_array().unwrap().len() > 10);
    // A horizon past the log's end, and under a week to learn from: refused, saying why.
    for (train, horizon, says) in [
        ("7", "7", "needs it to run until"),
        ("3", "1", "at least 7 days"),
    ] {
        let args = [
            "forecast",
            "backtest",
            "--log",
            "traffic/logs",
            "--train-days",
            train,
            "--horizon-days",
            horizon,
        ];
        let (ok, _, stderr) = podium(&args, dir);
        assert!(!ok && stderr.contains(says), "{train}+{horizon}: {stderr}");
    }

    // A truncated file is named; what the others hold is still forecast and printed.
    let logs = dir.join("traffic/logs/decisions");
    let first = std::fs::read_dir(&logs)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let bytes = std::fs::read(&first).unwrap();
    std::fs::write(logs.join("zz-truncated.parquet"), &bytes[..bytes.len() / 2]).unwrap();
    let mut args = vec!["forecast", "avails", "--log", "traffic/logs"];
    args.extend(week);
    let (ok, partial, stderr) = podium(&args, dir);
    assert!(!ok && stderr.contains("zz-truncated.parquet"), "{stderr}");
    assert_eq!(num(&partial, "opportunities"), total, "{partial}");
    std::fs::remove_file(logs.join("zz-truncated.parquet")).unwrap();

    // The admin API of a server reading the same log and marketplace.
    let logs_dir = dir.join("traffic/logs");
    let server = Server::start_in(
        &dir.join("world"),
        &["--forecast-log", logs_dir.to_str().unwrap()],
    )
    .await;
    let (status, body) = server
        .admin_post(
            "/v1/admin/forecast/avails",
            r#"{"targeting": "country=US, device=tv, duration=30", "start": "2026-10-13", "end": "2026-10-20", "cap": "2/day"}"#,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(num(&body, "opportunities"), opp, "{body}");
    let (status, body) = server
        .admin_post(
            "/v1/admin/forecast/avails",
            r#"{"targeting": "genre=opera", "start": "2026-10-13", "end": "2026-10-20"}"#,
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("opera"), "{body}");
    let (status, _) = server
        .admin_post("/v1/admin/forecast/avails", r#"{"start": "x"}"#)
        .await;
    assert_eq!(status, 400);
    let page = server
        .admin_get_text("/v1/admin/forecast/plot?targeting=device=tv")
        .await;
    assert!(
        page.contains("<svg") && page.contains("device=tv"),
        "{page}"
    );
    assert!(server
        .get_text("/dashboard")
        .await
        .contains("/v1/admin/forecast/plot"));
    // The decision listener has no admin route.
    let (status, _) = server
        .post("/v1/admin/forecast/avails", r#"{"start": "2026-10-13"}"#)
        .await;
    assert_eq!(status, 404);
}
