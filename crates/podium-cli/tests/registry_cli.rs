//! `podium model publish | list | promote | rollback | history` end to end: the real binary on a
//! temporary local registry.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn podium(args: &[&str], cwd: &Path, registry_env: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_podium"));
    cmd.args(args)
        .current_dir(cwd)
        .env_remove("PODIUM_REGISTRY");
    if let Some(r) = registry_env {
        cmd.env("PODIUM_REGISTRY", r);
    }
    cmd.output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn ok(o: Output) -> String {
    assert!(o.status.success(), "{}", text(&o));
    text(&o)
}

fn fails(o: Output, needles: &[&str]) {
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(!t.contains("panicked"), "{t}");
    for n in needles {
        assert!(t.contains(n), "expected {n:?} in: {t}");
    }
}

fn package_linear(dir: &Path, version: &str) -> PathBuf {
    let weights = dir.join(format!("w{version}.json"));
    std::fs::write(
        &weights,
        r#"{"intercept": -1.0, "weights": {"a": 0.5, "b": 2.0}}"#,
    )
    .unwrap();
    let out = format!("bundle-{version}");
    ok(podium(
        &[
            "model",
            "package",
            "--kind",
            "linear",
            "--weights",
            weights.to_str().unwrap(),
            "--name",
            "ctr",
            "--version",
            version,
            "--fallback-prior",
            "0.1",
            "--out",
            &out,
        ],
        dir,
        None,
    ));
    dir.join(out)
}

#[test]
fn publish_list_promote_rollback_and_history() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let url = format!("file://{}", dir.join("registry").display());
    let r = ["--registry", url.as_str()];
    for v in ["1", "2"] {
        let b = package_linear(dir, v);
        let out = ok(podium(
            &[
                &["model", "publish", b.to_str().unwrap(), "--by", "alice"],
                &r[..],
            ]
            .concat(),
            dir,
            None,
        ));
        assert!(out.contains(&format!("published ctr {v}")), "{out}");
    }
    // Republishing is refused, naming model and version.
    fails(
        podium(
            &[&["model", "publish", "bundle-2"], &r[..]].concat(),
            dir,
            None,
        ),
        &["ctr", "version 2", "already published"],
    );

    ok(podium(
        &[
            &[
                "model",
                "promote",
                "ctr",
                "1",
                "--stage",
                "production",
                "--why",
                "launch",
            ],
            &r[..],
        ]
        .concat(),
        dir,
        None,
    ));
    fails(
        podium(
            &[
                &["model", "promote", "ctr", "9", "--stage", "production"],
                &r[..],
            ]
            .concat(),
            dir,
            None,
        ),
        &["ctr", "version 9"],
    );
    fails(
        podium(
            &[
                &["model", "promote", "ctr", "2", "--stage", "canary"],
                &r[..],
            ]
            .concat(),
            dir,
            None,
        ),
        &["percent"],
    );
    fails(
        podium(
            &[
                &[
                    "model",
                    "promote",
                    "ctr",
                    "2",
                    "--stage",
                    "shadow",
                    "--percent",
                    "150",
                ],
                &r[..],
            ]
            .concat(),
            dir,
            None,
        ),
        &["150", "(0, 100]"],
    );
    // The env variable stands in for --registry.
    let out = ok(podium(
        &[
            "model",
            "promote",
            "ctr",
            "2",
            "--stage",
            "canary",
            "--percent",
            "5",
            "--by",
            "bob",
        ],
        dir,
        Some(&url),
    ));
    assert!(out.contains("canary at 5%"), "{out}");

    let table = ok(podium(&[&["model", "list"], &r[..]].concat(), dir, None));
    let row = table.lines().find(|l| l.starts_with("ctr")).unwrap();
    assert!(row.contains("2 (5%)") && row.contains("1, 2"), "{table}");
    let json: serde_json::Value = serde_json::from_str(
        &String::from_utf8(
            podium(&[&["model", "list", "--json"], &r[..]].concat(), dir, None).stdout,
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(json[0]["stages"]["production"], "1");
    assert_eq!(json[0]["stages"]["canary"]["percent"], 5.0);

    let out = ok(podium(
        &[&["model", "rollback", "ctr", "--why", "errors"], &r[..]].concat(),
        dir,
        None,
    ));
    assert!(out.contains("canary of 2 stopped"), "{out}");
    fails(
        podium(&[&["model", "rollback", "ctr"], &r[..]].concat(), dir, None),
        &["ctr", "no production version before 1"],
    );

    let history = ok(podium(
        &[&["model", "history", "ctr"], &r[..]].concat(),
        dir,
        None,
    ));
    let lines: Vec<&str> = history.lines().collect();
    assert_eq!(lines.len(), 4, "{history}");
    assert!(
        lines[1].contains("promote") && lines[1].contains("launch"),
        "{history}"
    );
    assert!(
        lines[2].contains("bob") && lines[2].contains("canary"),
        "{history}"
    );
    assert!(
        lines[3].contains("rollback") && lines[3].contains("errors"),
        "{history}"
    );
}

#[test]
fn errors_name_the_problem_and_exit_non_zero() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    fails(
        podium(&["model", "list"], dir, None),
        &["no registry", "PODIUM_REGISTRY"],
    );
    let url = format!("file://{}", dir.join("registry").display());
    let r = ["--registry", url.as_str()];
    fails(
        podium(&[&["model", "history", "nope"], &r[..]].concat(), dir, None),
        &["no model nope"],
    );
    // A corrupted bundle is refused, naming the file.
    let b = package_linear(dir, "1");
    let w = b.join("weights/w1.json");
    let mut bytes = std::fs::read(&w).unwrap();
    bytes[3] ^= 0x20;
    std::fs::write(&w, bytes).unwrap();
    fails(
        podium(
            &[&["model", "publish", b.to_str().unwrap()], &r[..]].concat(),
            dir,
            None,
        ),
        &["w1.json", "checksum"],
    );
    // A registry path blocked by a file is unreachable, and says which.
    std::fs::write(dir.join("blocker"), "x").unwrap();
    fails(
        podium(&["model", "list", "--registry", "blocker/sub"], dir, None),
        &["unreachable", "blocker"],
    );
}
