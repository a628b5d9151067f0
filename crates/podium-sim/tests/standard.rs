//! The generated standard data directory: deterministic, complete, and every bundle valid.

use podium_model::package::validate;
use podium_serving::ModelSetConfig;
use podium_sim::standard::{self, WorkloadSpec};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::Path;

/// SHA-256 of every file under `dir`, by relative path.
fn checksums(dir: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let rel = path.strip_prefix(root).unwrap().display().to_string();
                out.insert(
                    rel,
                    hex::encode(Sha256::digest(std::fs::read(&path).unwrap())),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

#[test]
fn same_seed_same_files_and_every_bundle_validates() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let spec = standard::generate(&a, 1).unwrap();
    assert_eq!(
        spec,
        WorkloadSpec {
            workload: "standard".into(),
            generator: standard::GENERATOR.into(),
            seed: 1,
            viewers: 1_000_000,
        }
    );
    standard::generate(&b, 1).unwrap();
    let (sa, sb) = (checksums(&a), checksums(&b));
    assert_eq!(sa, sb, "the same seed must write byte-identical files");
    // Nothing but the data directory: no staging or packaging leftovers beside or inside it.
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 2);
    assert!(sa
        .keys()
        .all(|k| !k.contains("staging") && !k.contains(".podium")));
    for file in ["marketplace.json", "models.toml", "workload.json"] {
        assert!(sa.contains_key(file), "{file} missing: {:?}", sa.keys());
    }

    // Every model named by models.toml validates (checksums, golden rows) and binds to the space.
    let config = ModelSetConfig::read(&a.join("models.toml")).unwrap();
    assert_eq!(config.top_k, 100);
    assert_eq!(config.scorers.len(), 8);
    let mut kinds = BTreeMap::new();
    for slot in std::iter::once(&config.ranker).chain(&config.scorers) {
        let name = slot
            .model
            .as_deref()
            .expect("standard slots name a local model");
        let report = validate(&a.join("models").join(name)).unwrap();
        assert!(report.golden_rows >= 200, "{name}");
        let m = report.model.manifest();
        *kinds.entry(format!("{:?}", m.kind)).or_insert(0) += 1;
        match m.kind {
            podium_model::ModelKind::Lightgbm => assert_eq!(m.inputs.len(), 20),
            podium_model::ModelKind::Onnx => assert_eq!(m.inputs.len(), 64),
            _ => {}
        }
        // Sane fallback priors: the mean golden prediction is a probability away from 0 and 1.
        assert!(
            (0.0001..0.9999).contains(&m.serving.fallback_prior),
            "{} prior {}",
            m.name,
            m.serving.fallback_prior
        );
    }
    assert_eq!(
        kinds,
        BTreeMap::from([
            ("Lightgbm".to_string(), 5),
            ("Linear".to_string(), 1),
            ("Onnx".to_string(), 3)
        ])
    );
    let space = standard::feature_space();
    let set = config.load(&a.join("models"), space.schema()).unwrap();
    for task in ["ctr", "completion"] {
        assert!(set.scorer_for(task).is_some(), "{task}");
    }
    let text = std::fs::read_to_string(a.join("models/ctr_gbdt_a/weights/model.txt")).unwrap();
    assert_eq!(text.matches("\nTree=").count(), 300);
    assert!(text.contains("num_leaves=31\n"));
}

#[test]
fn ensure_reuses_refuses_and_never_overwrites() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("std");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("notes.txt"), "mine").unwrap();
    let err = standard::ensure(&dir, 1).unwrap_err().to_string();
    assert!(err.contains("not a standard workload directory"), "{err}");
    let err = standard::generate(&dir, 1).unwrap_err().to_string();
    assert!(err.contains("never overwrites"), "{err}");
    assert_eq!(
        std::fs::read_to_string(dir.join("notes.txt")).unwrap(),
        "mine"
    );

    // A directory written by hand with a workload.json is read, not regenerated.
    let other = tmp.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(
        other.join("workload.json"),
        format!(
            r#"{{"workload": "standard", "generator": "{}", "seed": 5, "viewers": 10}}"#,
            standard::GENERATOR
        ),
    )
    .unwrap();
    let (spec, generated) = standard::ensure(&other, 5).unwrap();
    assert!(!generated);
    assert_eq!(spec.viewers, 10);
    let err = standard::ensure(&other, 1).unwrap_err().to_string();
    assert!(err.contains("seed 5, not 1"), "{err}");
}
