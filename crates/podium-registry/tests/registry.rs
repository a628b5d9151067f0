//! The registry on a temporary local directory, with real bundles.

mod common;

use common::bundle;
use podium_registry::{Action, Registry, RegistryError, Share, Stage};
use std::path::Path;

fn open(dir: &Path) -> Registry {
    Registry::open(&format!("file://{}", dir.join("registry").display())).unwrap()
}

#[tokio::test]
async fn publishes_lists_and_refuses_republish() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = open(tmp.path());
    assert!(reg.list().await.unwrap().is_empty());
    for v in ["2", "10", "1"] {
        let p = reg
            .publish(&bundle(tmp.path(), "ctr", v), "alice")
            .await
            .unwrap();
        assert_eq!((p.name.as_str(), p.version.as_str()), ("ctr", v));
        assert!(p.files >= 4 && p.bytes > 0, "{p:?}");
    }
    reg.publish(&bundle(tmp.path(), "vtr", "1"), "bob")
        .await
        .unwrap();
    let root = tmp.path().join("registry/models/ctr/versions/10");
    assert!(root.join("PUBLISHED.json").exists() && root.join("model.toml").exists());

    let list = reg.list().await.unwrap();
    let names: Vec<_> = list.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["ctr", "vtr"]);
    assert_eq!(list[0].versions, ["1", "2", "10"]);
    assert_eq!(list[0].stages, Default::default());

    let again = bundle(&tmp.path().join("again"), "ctr", "2");
    match reg.publish(&again, "alice").await {
        Err(e @ RegistryError::AlreadyPublished { .. }) => {
            let m = e.to_string();
            assert!(m.contains("ctr") && m.contains("version 2"), "{m}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn refuses_a_corrupt_bundle_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = open(tmp.path());
    let dir = bundle(tmp.path(), "ctr", "1");
    let weights = dir.join("weights/ranker.json");
    let mut bytes = std::fs::read(&weights).unwrap();
    bytes[5] ^= 0x01;
    std::fs::write(&weights, bytes).unwrap();
    match reg.publish(&dir, "alice").await {
        Err(e @ RegistryError::InvalidBundle { .. }) => {
            let m = e.to_string();
            assert!(m.contains("ranker.json") && m.contains("checksum"), "{m}");
        }
        other => panic!("{other:?}"),
    }
    assert!(reg.list().await.unwrap().is_empty(), "nothing published");
}

#[tokio::test]
async fn promotes_validates_and_rolls_back_with_history() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = open(tmp.path());
    for v in ["1", "2", "3"] {
        reg.publish(&bundle(tmp.path(), "ctr", v), "alice")
            .await
            .unwrap();
    }
    let err = reg
        .promote("ctr", "9", Stage::Production, None, "alice", "")
        .await
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::NotFound(_)) && err.to_string().contains("version 9"),
        "{err}"
    );
    let err = reg
        .promote("nope", "1", Stage::Production, None, "alice", "")
        .await
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::NotFound(_)) && err.to_string().contains("nope"),
        "{err}"
    );
    for bad in [None, Some(0.0), Some(101.0)] {
        let err = reg
            .promote("ctr", "2", Stage::Canary, bad, "alice", "")
            .await
            .unwrap_err();
        assert!(matches!(err, RegistryError::BadRequest(_)), "{err}");
    }
    let err = reg.rollback("ctr", "alice", "").await.unwrap_err();
    assert!(matches!(err, RegistryError::BadRequest(_)), "{err}");

    reg.promote("ctr", "1", Stage::Production, Some(50.0), "alice", "first")
        .await
        .unwrap();
    reg.promote("ctr", "2", Stage::Production, None, "alice", "better auc")
        .await
        .unwrap();
    reg.promote("ctr", "3", Stage::Canary, Some(5.0), "bob", "try 3")
        .await
        .unwrap();
    reg.promote("ctr", "1", Stage::Shadow, Some(100.0), "bob", "compare")
        .await
        .unwrap();
    let stages = reg.stages().await.unwrap();
    let s = &stages["ctr"];
    assert_eq!(s.production.as_deref(), Some("2"));
    assert_eq!(
        s.canary,
        Some(Share {
            version: "3".into(),
            percent: 5.0
        })
    );
    assert_eq!(
        s.shadow,
        Some(Share {
            version: "1".into(),
            percent: 100.0
        })
    );

    // A running canary: rollback stops it, production stays.
    let e = reg.rollback("ctr", "carol", "canary errors").await.unwrap();
    assert_eq!(
        (e.action, e.stage, e.version.as_str()),
        (Action::Rollback, Stage::Canary, "3")
    );
    assert_eq!(
        reg.stages().await.unwrap()["ctr"].production.as_deref(),
        Some("2")
    );
    assert_eq!(reg.stages().await.unwrap()["ctr"].canary, None);
    // No canary: production goes back to 1.
    let e = reg.rollback("ctr", "carol", "bad").await.unwrap();
    assert_eq!((e.stage, e.version.as_str()), (Stage::Production, "1"));
    let s = &reg.stages().await.unwrap()["ctr"];
    assert_eq!(s.production.as_deref(), Some("1"));
    assert!(s.shadow.is_some());
    assert!(
        reg.rollback("ctr", "carol", "").await.is_err(),
        "nothing before 1"
    );

    // A fresh handle (no cache) reads the same history from the store.
    let h = open(tmp.path()).history("ctr").await.unwrap();
    let seqs: Vec<u64> = h.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5, 6]);
    assert_eq!(h[0].percent, None, "production ignores percent");
    assert_eq!(
        (h[1].by.as_str(), h[1].why.as_str()),
        ("alice", "better auc")
    );
    assert_eq!(h[2].percent, Some(5.0));
    assert!(h[0].at.ends_with('Z'));
    assert!(tmp
        .path()
        .join("registry/models/ctr/history/00000006.json")
        .exists());
    let list = reg.list().await.unwrap();
    assert_eq!(list[0].stages.production.as_deref(), Some("1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_promotes_are_all_recorded() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = open(tmp.path());
    reg.publish(&bundle(tmp.path(), "ctr", "1"), "a")
        .await
        .unwrap();
    reg.publish(&bundle(tmp.path(), "ctr", "2"), "a")
        .await
        .unwrap();
    let n = 12;
    let tasks: Vec<_> = (1..=n)
        .map(|i| {
            // Separate handles, as separate processes would be: no shared cache.
            let r = open(tmp.path());
            tokio::spawn(async move {
                r.promote(
                    "ctr",
                    "2",
                    Stage::Shadow,
                    Some(i as f64),
                    "w",
                    &format!("writer {i}"),
                )
                .await
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let h = reg.history("ctr").await.unwrap();
    assert_eq!(h.len(), n);
    let seqs: Vec<u64> = h.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=n as u64).collect::<Vec<_>>());
    let mut whys: Vec<String> = h.iter().map(|e| e.why.clone()).collect();
    whys.sort();
    whys.dedup();
    assert_eq!(whys.len(), n, "every writer's entry is there once");
}

#[tokio::test]
async fn fetch_round_trips_and_reuses_a_good_copy() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = open(tmp.path());
    reg.publish(&bundle(tmp.path(), "ctr", "4"), "a")
        .await
        .unwrap();
    let cache = tmp.path().join("cache");
    let dir = reg.fetch("ctr", "4", &cache).await.unwrap();
    assert_eq!(dir, cache.join("ctr/4"));
    let model = podium_model::load_bundle(&dir).unwrap();
    assert_eq!((model.name(), model.version()), ("ctr", "4"));

    // Tamper with the local copy: the next fetch notices and downloads again.
    let weights = dir.join("weights/ranker.json");
    std::fs::write(&weights, b"{}").unwrap();
    let again = reg.fetch("ctr", "4", &cache).await.unwrap();
    podium_model::load_bundle(&again).unwrap();

    let err = reg.fetch("ctr", "5", &cache).await.unwrap_err();
    assert!(matches!(err, RegistryError::NotFound(_)), "{err}");

    // A store file altered after publishing is refused, naming it.
    let stored = tmp
        .path()
        .join("registry/models/ctr/versions/4/weights/ranker.json");
    std::fs::write(&stored, b"{\"intercept\": 3}").unwrap();
    std::fs::remove_dir_all(cache.join("ctr/4")).unwrap();
    let err = reg.fetch("ctr", "4", &cache).await.unwrap_err();
    assert!(
        matches!(err, RegistryError::Corrupt { .. }) && err.to_string().contains("ranker.json"),
        "{err}"
    );
    assert!(!cache.join("ctr/4").exists());
}

#[tokio::test]
async fn a_plain_path_opens_as_a_file_url() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::open(tmp.path().join("r").to_str().unwrap()).unwrap();
    assert!(reg.url().starts_with("file:///"), "{}", reg.url());
    assert!(tmp.path().join("r").is_dir());
}
