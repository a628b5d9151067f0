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
