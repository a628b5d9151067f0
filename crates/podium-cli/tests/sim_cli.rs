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
