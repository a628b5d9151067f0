//! `podium sim market`: a simulated day through two real engines, side by side.

use serde_json::Value;
use std::process::Command;

fn sim(dir: &std::path::Path, extra: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_podium"))
        .args(["sim", "market", "--data-dir"])
        .arg(dir.join("world"))
        .args(["--requests", "600", "--budget-scale", "0.0005"])
        .args(extra)
        .current_dir(dir)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
}

#[test]
fn a_prohibitive_floor_loses_revenue_in_both_designs_and_no_arm_overspends() {
    let tmp = tempfile::tempdir().unwrap();
    // $500 CPM floor: the treatment can sell next to nothing.
    std::fs::write(tmp.path().join("floor.toml"), "reserve_cpm = 500000000\n").unwrap();
    for design in ["budget-split", "cluster"] {
        let v = sim(
            tmp.path(),
            &["--design", design, "--treatment-config", "floor.toml"],
        );
        let (c, t) = (&v["control"], &v["treatment"]);
        assert_eq!(v["requests"], 600, "{v}");
        assert!(c["requests"].as_u64().unwrap() > 100, "{v}");
        assert!(t["requests"].as_u64().unwrap() > 100, "{v}");
        assert!(
            c["ads"].as_u64().unwrap() > 100 && c["clicks"].as_u64().unwrap() > 0,
            "{v}"
        );
        assert!(
            t["fill_rate"].as_f64().unwrap() < 0.2 * c["fill_rate"].as_f64().unwrap(),
            "{v}"
        );
        let diff = &v["treatment_minus_control"]["revenue_per_1000_requests"];
        assert!(diff["ci95"][1].as_f64().unwrap() < 0.0, "{v}");
        for arm in [c, t] {
            assert!(
                arm["line_items_overspent"].as_array().unwrap().is_empty(),
                "{v}"
            );
            assert!(
                arm["spend"].as_f64().unwrap() <= arm["budget"].as_f64().unwrap() * 1.01,
                "{v}"
            );
        }
        // The live event's two hours carry more traffic than the small hours.
        let hour = |h: usize| {
            c["hourly"][h]["requests"].as_u64().unwrap()
                + t["hourly"][h]["requests"].as_u64().unwrap()
        };
        assert!(hour(20) > 3 * hour(4), "{v}");
        if design == "cluster" {
            assert!(v["clusters"][0].as_u64().unwrap() > 2, "{v}");
        }
    }
}
