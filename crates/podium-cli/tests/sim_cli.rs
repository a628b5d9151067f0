//! `podium sim gen` end to end: the real binary writes a directory that validates, and refuses to
//! write over one.

use std::path::Path;
use std::process::{Command, Output};

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

#[test]
fn sim_gen_writes_a_standard_directory_and_never_overwrites_it() {
    let tmp = tempfile::tempdir().unwrap();
    let out = podium(&["sim", "gen", "--seed", "3", "--out", "std"], tmp.path());
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("seed 3"), "{}", text(&out));
    let spec: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(tmp.path().join("std/workload.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(spec["seed"], 3);
    assert_eq!(spec["viewers"], 1_000_000);

    let out = podium(&["model", "validate", "std/models/ctr_mlp"], tmp.path());
    assert!(out.status.success(), "{}", text(&out));

    let out = podium(&["sim", "gen", "--out", "std"], tmp.path());
    assert!(!out.status.success());
    assert!(text(&out).contains("never overwrites"), "{}", text(&out));

    let help = podium(&["sim", "gen", "--help"], tmp.path());
    assert!(
        text(&help).contains("podium sim gen --seed 1 --out"),
        "{}",
        text(&help)
    );
}

#[test]
fn sim_reserve_compares_static_floors_with_the_learned_reserve() {
    let tmp = tempfile::tempdir().unwrap();
    let out = podium(
        &[
            "sim",
            "reserve",
            "--data-dir",
            "demo",
            "--requests",
            "400",
            "--output",
            "r.json",
        ],
        tmp.path(),
    );
    assert!(out.status.success(), "{}", text(&out));
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("r.json")).unwrap()).unwrap();
    assert_eq!(r["requests"], 400);
    let names: Vec<&str> = r["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["static_floors", "dynamic_reserve"]);
    for v in r["variants"].as_array().unwrap() {
        assert!(v["all"]["revenue"].as_f64().unwrap() > 0.0, "{v}");
        let fill = v["all"]["fill"].as_f64().unwrap();
        assert!(fill > 0.0 && fill <= 1.0, "{v}");
    }
    // 400 requests teach no segment its 200 observations: both variants decide alike.
    assert_eq!(r["revenue_lift"], 0.0, "{r}");
    assert!(!r["learned_reserves"].as_array().unwrap().is_empty());

    let out = podium(&["sim", "reserve", "--requests", "1"], tmp.path());
    assert!(!out.status.success());
    assert!(text(&out).contains("--requests"), "{}", text(&out));
}

fn report(dir: &Path, name: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join(name)).unwrap()).unwrap()
}

/// A small market at a low rate, so a day runs in seconds in a debug build.
const SMALL: [&str; 6] = ["--peak-rate", "6", "--line-items", "12", "--tick-s", "60"];

#[test]
fn sim_pacing_reports_delivery_and_never_overspends() {
    let tmp = tempfile::tempdir().unwrap();
    for scenario in ["steady", "budget-change", "live-event"] {
        let out_name = format!("{scenario}.json");
        let mut args = vec![
            "sim",
            "pacing",
            "--scenario",
            scenario,
            "--output",
            &out_name,
        ];
        args.extend(SMALL);
        let out = podium(&args, tmp.path());
        assert!(out.status.success(), "{}", text(&out));
        let r = report(tmp.path(), &out_name);
        let items = r["line_items"].as_array().unwrap();
        assert_eq!(items.len(), 12);
        for li in items {
            for field in ["id", "budget", "spent", "delivery_ratio", "max_overspend"] {
                assert!(li.get(field).is_some(), "{field} missing: {li}");
            }
            if let Some(o) = li["max_overspend"].as_f64() {
                assert!(o <= 0.01, "{scenario}: overspend {li}");
            }
        }
        assert!(items.iter().any(|li| li["goal_attainment"].is_number()));
        assert!(items.iter().any(
            |li| li["pid"]["settling_time_s"].is_number() || li["pid"]["overshoot"].is_number()
        ));
        assert!(
            r["summary"]["max_overspend"].as_f64().unwrap() <= 0.01,
            "{}",
            r["summary"]
        );
        let html = std::fs::read_to_string(tmp.path().join(format!("{scenario}.html"))).unwrap();
        assert!(html.contains("<svg") && html.contains("li-0"), "plot");
        if scenario == "budget-change" {
            assert!(
                items.iter().any(|li| li["cut_below_spend"] == true),
                "a budget is cut below its spend at noon"
            );
        }
    }

    let out = podium(&["sim", "pacing", "--scenario", "moonlight"], tmp.path());
    assert!(!out.status.success());
    assert!(text(&out).contains("steady, live-event"), "{}", text(&out));
}

#[test]
fn sim_pacing_multi_server_shares_budgets_in_redis() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = tempfile::tempdir().unwrap();
    let mut redis = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .arg("--dir")
        .arg(dir.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("this test needs `redis-server` on PATH (Debian: apt-get install redis-server)");
    let started = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed().as_secs() < 10,
            "redis-server never listened"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let url = format!("redis://127.0.0.1:{port}");
    let mut args = vec![
        "sim",
        "pacing",
        "--scenario",
        "multi-server",
        "--ledger",
        &url,
        "--output",
        "multi.json",
    ];
    args.extend(SMALL);
    let out = podium(&args, dir.path());
    let _ = redis.kill();
    let _ = redis.wait();
    assert!(out.status.success(), "{}", text(&out));
    let r = report(dir.path(), "multi.json");
    assert_eq!(r["servers"], 4);
    assert_eq!(r["ledger"], url.as_str());
    assert!(
        r["summary"]["max_overspend"].as_f64().unwrap() <= 0.01,
        "{}",
        r["summary"]
    );
    let delivered: f64 = r["line_items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|li| li["spent"].as_f64())
        .sum();
    assert!(delivered > 0.0);

    // No Redis there: a clear error, not a hang.
    let out = podium(
        &[
            "sim",
            "pacing",
            "--scenario",
            "multi-server",
            "--ledger",
            "redis://127.0.0.1:1",
        ],
        dir.path(),
    );
    assert!(!out.status.success());
    assert!(text(&out).contains("--ledger"), "{}", text(&out));
}
