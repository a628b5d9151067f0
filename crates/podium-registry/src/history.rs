//! Stages and their history: the append-only entries and the fold that turns them into the
//! current stages. Pure functions only; reading and writing the entries is `lib.rs`'s job.

use crate::RegistryError;
use serde::{Deserialize, Serialize};

/// A serving stage a version can be promoted to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// Takes all traffic not given to a canary.
    Production,
    /// Takes `percent` of traffic instead of production.
    Canary,
    /// Scores `percent` of traffic beside production; its answers are logged, never served.
    Shadow,
}

impl Stage {
    /// The lowercase name, as on the wire and in history files.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Production => "production",
            Stage::Canary => "canary",
            Stage::Shadow => "shadow",
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Stage {
    type Err = RegistryError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "production" => Ok(Stage::Production),
            "canary" => Ok(Stage::Canary),
            "shadow" => Ok(Stage::Shadow),
            other => Err(RegistryError::BadRequest(format!(
                "unknown stage {other:?}: expected production, canary or shadow"
            ))),
        }
    }
}

/// A version and the share of traffic it gets.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Share {
    /// The version.
    pub version: String,
    /// Percent of traffic, in (0, 100].
    pub percent: f64,
}

/// The current stages of one model.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Stages {
    /// The production version, if any was ever promoted.
    pub production: Option<String>,
    /// The running canary.
    pub canary: Option<Share>,
    /// The running shadow.
    pub shadow: Option<Share>,
}

/// What a history entry did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Put `version` on `stage`.
    Promote,
    /// Undid something: `stage` production means production went back to `version`; `stage`
    /// canary means the canary of `version` was stopped.
    Rollback,
}

/// One stage change, stored as `history/<seq:08>.json` and never rewritten.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// Position in the model's history, from 1.
    pub seq: u64,
    /// When, RFC 3339 UTC.
    pub at: String,
    /// Who (CLI user, "admin-api", …).
    pub by: String,
    /// Why, in the operator's words.
    pub why: String,
    /// Promote or rollback.
    pub action: Action,
    /// The stage changed.
    pub stage: Stage,
    /// For a promote, the version promoted; for a rollback, see [`Action::Rollback`].
    pub version: String,
    /// Traffic share of a canary or shadow promote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
}

/// The state a history folds into: the stages plus the production versions in promotion order,
/// which is what a production rollback walks back through.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Folded {
    pub stages: Stages,
    /// Production versions, oldest first; the last is the current one.
    pub production_stack: Vec<String>,
}

/// Folds entries (in seq order) into the current stages.
pub(crate) fn fold(entries: &[HistoryEntry]) -> Folded {
    let mut f = Folded::default();
    for e in entries {
        match (e.action, e.stage) {
            (Action::Promote, Stage::Production) => {
                f.production_stack.push(e.version.clone());
                // A canary or shadow of the version now in production has nothing left to compare.
                if f.stages
                    .canary
                    .as_ref()
                    .is_some_and(|c| c.version == e.version)
                {
                    f.stages.canary = None;
                }
                if f.stages
                    .shadow
                    .as_ref()
                    .is_some_and(|s| s.version == e.version)
                {
                    f.stages.shadow = None;
                }
            }
            (Action::Promote, Stage::Canary) => {
                f.stages.canary = Some(Share {
                    version: e.version.clone(),
                    percent: e.percent.unwrap_or(0.0),
                })
            }
            (Action::Promote, Stage::Shadow) => {
                f.stages.shadow = Some(Share {
                    version: e.version.clone(),
                    percent: e.percent.unwrap_or(0.0),
                })
            }
            (Action::Rollback, Stage::Production) => {
                f.production_stack.pop();
                if f.production_stack.last() != Some(&e.version) {
                    f.production_stack.push(e.version.clone());
                }
                f.stages.canary = None;
            }
            (Action::Rollback, Stage::Canary) => f.stages.canary = None,
            (Action::Rollback, Stage::Shadow) => f.stages.shadow = None,
        }
        f.stages.production = f.production_stack.last().cloned();
    }
    f
}

/// Checks a promote against the current state; returns the percent to record.
pub(crate) fn check_promote(
    name: &str,
    version: &str,
    stage: Stage,
    percent: Option<f64>,
    current: &Folded,
) -> Result<Option<f64>, RegistryError> {
    let production = current.stages.production.as_deref();
    match stage {
        Stage::Production => {
            if production == Some(version) {
                return Err(RegistryError::BadRequest(format!(
                    "model {name} version {version} is already in production"
                )));
            }
            Ok(None)
        }
        Stage::Canary | Stage::Shadow => {
            let p = percent.ok_or_else(|| {
                RegistryError::BadRequest(format!(
                    "promoting model {name} version {version} to {stage} needs a percent in (0, 100]"
                ))
            })?;
            if !(p > 0.0 && p <= 100.0) {
                return Err(RegistryError::BadRequest(format!(
                    "percent {p} for {stage} of model {name} version {version} is outside (0, 100]"
                )));
            }
            if production == Some(version) {
                return Err(RegistryError::BadRequest(format!(
                    "model {name} version {version} is the production version; a {stage} of it compares it with itself"
                )));
            }
            Ok(Some(p))
        }
    }
}

/// Decides what a rollback of `name` does, as (stage, version) of the rollback entry.
pub(crate) fn plan_rollback(
    name: &str,
    current: &Folded,
) -> Result<(Stage, String), RegistryError> {
    if let Some(canary) = &current.stages.canary {
        return Ok((Stage::Canary, canary.version.clone()));
    }
    let n = current.production_stack.len();
    if n < 2 {
        return Err(RegistryError::BadRequest(match n {
            0 => format!("model {name} has no production version to roll back"),
            _ => format!(
                "model {name} has no production version before {} to roll back to",
                current.production_stack[0]
            ),
        }));
    }
    Ok((Stage::Production, current.production_stack[n - 2].clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(
        seq: u64,
        action: Action,
        stage: Stage,
        version: &str,
        percent: Option<f64>,
    ) -> HistoryEntry {
        HistoryEntry {
            seq,
            at: "2024-01-01T00:00:00Z".into(),
            by: "t".into(),
            why: String::new(),
            action,
            stage,
            version: version.into(),
            percent,
        }
    }

    #[test]
    fn promotes_and_rolls_back_through_production_versions() {
        use Action::*;
        let mut h = vec![
            entry(1, Promote, Stage::Production, "1", None),
            entry(2, Promote, Stage::Production, "2", None),
            entry(3, Promote, Stage::Canary, "3", Some(5.0)),
            entry(4, Promote, Stage::Shadow, "4", Some(50.0)),
        ];
        let f = fold(&h);
        assert_eq!(f.stages.production.as_deref(), Some("2"));
        assert_eq!(
            f.stages.canary,
            Some(Share {
                version: "3".into(),
                percent: 5.0
            })
        );
        assert_eq!(
            f.stages.shadow,
            Some(Share {
                version: "4".into(),
                percent: 50.0
            })
        );
        // With a canary running, a rollback stops the canary and leaves production alone.
        assert_eq!(plan_rollback("m", &f).unwrap(), (Stage::Canary, "3".into()));
        h.push(entry(5, Rollback, Stage::Canary, "3", None));
        let f = fold(&h);
        assert_eq!(f.stages.canary, None);
        assert_eq!(f.stages.production.as_deref(), Some("2"));
        assert_eq!(
            plan_rollback("m", &f).unwrap(),
            (Stage::Production, "1".into())
        );
        h.push(entry(6, Rollback, Stage::Production, "1", None));
        let f = fold(&h);
        assert_eq!(f.stages.production.as_deref(), Some("1"));
        assert!(
            f.stages.shadow.is_some(),
            "rollback never touches the shadow"
        );
        assert!(plan_rollback("m", &f)
            .unwrap_err()
            .to_string()
            .contains("no production version before 1"));
    }

    #[test]
    fn production_promote_ends_a_canary_of_the_same_version() {
        use Action::*;
        let f = fold(&[
            entry(1, Promote, Stage::Production, "1", None),
            entry(2, Promote, Stage::Canary, "2", Some(10.0)),
            entry(3, Promote, Stage::Production, "2", None),
        ]);
        assert_eq!(f.stages.canary, None);
        assert_eq!(f.stages.production.as_deref(), Some("2"));
    }

    #[test]
    fn percent_must_be_in_range_for_canary_and_shadow() {
        let f = Folded::default();
        for bad in [None, Some(0.0), Some(-1.0), Some(100.5), Some(f64::NAN)] {
            assert!(matches!(
                check_promote("m", "1", Stage::Canary, bad, &f),
                Err(RegistryError::BadRequest(_))
            ));
            assert!(check_promote("m", "1", Stage::Shadow, bad, &f).is_err());
        }
        assert_eq!(
            check_promote("m", "1", Stage::Canary, Some(100.0), &f).unwrap(),
            Some(100.0)
        );
        assert_eq!(
            check_promote("m", "1", Stage::Production, Some(3.0), &f).unwrap(),
            None
        );
    }
}
