//! A/B experiments and holdouts: deterministic, layered assignment of users to arms.
//!
//! ```toml
//! [holdout]
//! percent = 2.0                       # these users see no treatment: no arm, no canary
//!
//! [[layer]]
//! name = "ranking"                    # layers assign independently of each other
//! [[layer.arm]]
//! name = "ctr_v11"
//! percent = 10.0                      # arms of a layer take consecutive, disjoint ranges
//! models = { ctr = "11" }             # serve these model versions (published in the registry)
//! [[layer.arm]]
//! name = "floor_up"
//! percent = 10.0
//! auction = { reserve_multiplier = 1.2, top_k = 50 }
//! ```
//!
//! A user's bucket in a layer is `bucket(user id, "layer:" + name)` (the function canaries use),
//! so assignment is stable across requests, servers and restarts, and a user's arm in one layer
//! says nothing about their arm in another. The decision names the arms that applied.

use podium_serving::bucket;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The parsed experiments file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Experiments {
    /// Users held out of every treatment.
    #[serde(default)]
    pub holdout: Option<Holdout>,
    /// Independent layers of mutually exclusive arms.
    #[serde(default, rename = "layer")]
    pub layers: Vec<Layer>,
}

/// The global holdout.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Holdout {
    /// Share of users, 0–100.
    pub percent: f64,
}

/// A layer: its arms split the users between them; the rest get no arm of this layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Layer {
    /// Layer name, the salt of its assignment.
    pub name: String,
    /// The arms, taking consecutive bucket ranges in order.
    #[serde(default, rename = "arm")]
    pub arms: Vec<Arm>,
}

/// One treatment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Arm {
    /// Arm name.
    pub name: String,
    /// Share of users, 0–100.
    pub percent: f64,
    /// Model versions to serve, by model name.
    #[serde(default)]
    pub models: BTreeMap<String, String>,
    /// Auction parameters to change.
    #[serde(default)]
    pub auction: AuctionParams,
}

/// Auction parameters an arm may vary.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuctionParams {
    /// Multiplies the marketplace's reserve price.
    #[serde(default)]
    pub reserve_multiplier: Option<f64>,
    /// Candidates passed from the early ranker to full scoring.
    #[serde(default)]
    pub top_k: Option<usize>,
}

/// What a user gets.
#[derive(Clone, Debug, PartialEq)]
pub struct Assignment {
    /// In the holdout: no treatment at all.
    pub holdout: bool,
    /// `layer:arm` of each arm that applies.
    pub arms: Vec<String>,
    /// Model versions to serve, by model name.
    pub models: BTreeMap<String, String>,
    /// Reserve multiplier (1 when no arm sets one).
    pub reserve_multiplier: f64,
    /// Early-rank cut, when an arm sets one.
    pub top_k: Option<usize>,
}

impl Default for Assignment {
    /// No treatment: no arm, the usual models, the marketplace's own reserve.
    fn default() -> Self {
        Self {
            holdout: false,
            arms: Vec::new(),
            models: BTreeMap::new(),
            reserve_multiplier: 1.0,
            top_k: None,
        }
    }
}

/// Why an experiments file was refused; names the file.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ExperimentsError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong.
    pub message: String,
}

impl Experiments {
    /// Reads and checks an experiments file.
    pub fn read(path: &Path) -> Result<Self, ExperimentsError> {
        let err = |message: String| ExperimentsError {
            path: path.to_path_buf(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let parsed: Self = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
        parsed.check().map_err(err)?;
        Ok(parsed)
    }

    /// Parses and checks experiments from TOML text (the admin API's body).
    pub fn parse(text: &str) -> Result<Self, String> {
        let parsed: Self = toml::from_str(text).map_err(|e| e.to_string())?;
        parsed.check()?;
        Ok(parsed)
    }

    /// Checks shares and names.
    pub fn check(&self) -> Result<(), String> {
        let share = |p: f64, what: &str| {
            if (0.0..=100.0).contains(&p) {
                Ok(())
            } else {
                Err(format!("{what}: percent must be within 0–100, got {p}"))
            }
        };
        if let Some(h) = &self.holdout {
            share(h.percent, "holdout")?;
        }
        let mut names = std::collections::HashSet::new();
        for layer in &self.layers {
            if layer.name.is_empty() || !names.insert(&layer.name) {
                return Err(format!(
                    "layer names must be unique and non-empty: {:?}",
                    layer.name
                ));
            }
            let mut total = 0.0;
            for arm in &layer.arms {
                share(
                    arm.percent,
                    &format!("layer {:?} arm {:?}", layer.name, arm.name),
                )?;
                total += arm.percent;
                if let Some(m) = arm.auction.reserve_multiplier {
                    if !(m.is_finite() && m > 0.0) {
                        return Err(format!(
                            "layer {:?} arm {:?}: reserve_multiplier must be positive, got {m}",
                            layer.name, arm.name
                        ));
                    }
                }
                if arm.auction.top_k == Some(0) {
                    return Err(format!(
                        "layer {:?} arm {:?}: top_k must be at least 1",
                        layer.name, arm.name
                    ));
                }
            }
            if total > 100.0 + 1e-9 {
                return Err(format!(
                    "layer {:?}: arms add up to {total} %, more than 100",
                    layer.name
                ));
            }
        }
        Ok(())
    }

    /// Every `(model, version)` some arm serves: the versions the server must load.
    pub fn model_versions(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .layers
            .iter()
            .flat_map(|l| &l.arms)
            .flat_map(|a| a.models.iter().map(|(m, v)| (m.clone(), v.clone())))
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// The assignment of a user.
    pub fn assign(&self, user: &str) -> Assignment {
        let mut out = Assignment::default();
        if let Some(h) = &self.holdout {
            if bucket(user, "holdout") < h.percent {
                out.holdout = true;
                return out;
            }
        }
        for layer in &self.layers {
            let b = bucket(user, &format!("layer:{}", layer.name));
            let mut start = 0.0;
            for arm in &layer.arms {
                if b >= start && b < start + arm.percent {
                    out.arms.push(format!("{}:{}", layer.name, arm.name));
                    for (m, v) in &arm.models {
                        out.models.insert(m.clone(), v.clone());
                    }
                    if let Some(m) = arm.auction.reserve_multiplier {
                        out.reserve_multiplier *= m;
                    }
                    if let Some(k) = arm.auction.top_k {
                        out.top_k = Some(k);
                    }
                    break;
                }
                start += arm.percent;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn experiments() -> Experiments {
        toml::from_str(
            r#"
            [holdout]
            percent = 5.0
            [[layer]]
            name = "ranking"
            [[layer.arm]]
            name = "ctr_v11"
            percent = 20.0
            models = { ctr = "11" }
            [[layer.arm]]
            name = "k50"
            percent = 30.0
            auction = { top_k = 50 }
            [[layer]]
            name = "pricing"
            [[layer.arm]]
            name = "floor_up"
            percent = 50.0
            auction = { reserve_multiplier = 1.2 }
            "#,
        )
        .unwrap()
    }

    #[test]
    fn arms_get_their_shares_holdouts_get_nothing_and_layers_are_independent() {
        let e = experiments();
        e.check().unwrap();
        let n = 20_000;
        let (mut held, mut ctr, mut k50, mut floor, mut ctr_and_floor) = (0, 0, 0, 0, 0);
        for u in 0..n {
            let a = e.assign(&format!("u-{u}"));
            assert_eq!(a, e.assign(&format!("u-{u}")), "sticky");
            if a.holdout {
                held += 1;
                assert!(a.arms.is_empty() && a.models.is_empty() && a.reserve_multiplier == 1.0);
                continue;
            }
            let in_ctr = a.arms.contains(&"ranking:ctr_v11".to_string());
            let in_floor = a.arms.contains(&"pricing:floor_up".to_string());
            assert_eq!(
                in_ctr,
                a.models.get("ctr").map(String::as_str) == Some("11")
            );
            assert_eq!(in_floor, a.reserve_multiplier == 1.2);
            ctr += in_ctr as u32;
            floor += in_floor as u32;
            ctr_and_floor += (in_ctr && in_floor) as u32;
            k50 += (a.top_k == Some(50)) as u32;
            assert!(
                !(in_ctr && a.top_k.is_some()),
                "arms of a layer exclude each other"
            );
        }
        let share = |c: u32| c as f64 / n as f64;
        assert!((share(held) - 0.05).abs() < 0.01);
        assert!((share(ctr) - 0.95 * 0.20).abs() < 0.015);
        assert!((share(k50) - 0.95 * 0.30).abs() < 0.015);
        assert!((share(floor) - 0.95 * 0.50).abs() < 0.015);
        // Independent layers: the overlap is the product of the shares.
        assert!((share(ctr_and_floor) - 0.95 * 0.20 * 0.50).abs() < 0.015);
        assert_eq!(e.model_versions(), vec![("ctr".into(), "11".into())]);
    }

    #[test]
    fn bad_files_are_refused_naming_the_problem() {
        let mut e = experiments();
        e.layers[0].arms[1].percent = 90.0;
        assert!(e.check().unwrap_err().contains("more than 100"));
        let mut e = experiments();
        e.layers[1].arms[0].auction.reserve_multiplier = Some(-1.0);
        assert!(e.check().unwrap_err().contains("reserve_multiplier"));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("experiments.toml");
        std::fs::write(
            &path,
            "[[layer]]\nname = \"x\"\n[[layer.arm]]\nname = \"a\"\npercent = \"ten\"\n",
        )
        .unwrap();
        let err = Experiments::read(&path).unwrap_err().to_string();
        assert!(
            err.contains("experiments.toml") && err.contains("percent"),
            "{err}"
        );
    }
}
