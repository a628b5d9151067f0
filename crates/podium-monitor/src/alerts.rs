//! The alert log: what monitoring found, once per condition while it lasts.

use serde::Serialize;
use std::collections::HashSet;
use std::sync::Mutex;

/// Alerts kept (oldest dropped first).
const KEEP: usize = 1_000;

/// One alert.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Alert {
    /// Unix time, milliseconds.
    pub at_ms: i64,
    /// Which monitor raised it: `drift`, `calibration`, `regression`, `guardrail`.
    pub source: String,
    /// Model name.
    pub model: String,
    /// Model version.
    pub version: String,
    /// The rule (`feature_drift`, `prediction_shift`, `missing_values`, `latency`, …).
    pub rule: String,
    /// The figures behind it.
    pub detail: String,
    /// What was done about it, if anything.
    pub action: Option<String>,
}

/// Alerts raised, and the conditions still active (so a lasting condition alerts once).
#[derive(Default)]
pub struct AlertLog {
    state: Mutex<(Vec<Alert>, HashSet<String>)>,
}

impl AlertLog {
    /// Records the conditions of one source and subject now active: each new one becomes an
    /// alert; conditions of that scope no longer listed are cleared, so they alert again if
    /// they return. `scope` names the source and subject (`drift/ctr/3`); each condition is
    /// `(key, alert)`.
    pub fn observe(&self, scope: &str, active: Vec<(String, Alert)>) -> Vec<Alert> {
        let Ok(mut state) = self.state.lock() else {
            return Vec::new();
        };
        let (log, open) = &mut *state;
        let prefix = format!("{scope}\u{1f}");
        let keys: HashSet<String> = active.iter().map(|(k, _)| format!("{prefix}{k}")).collect();
        open.retain(|k| !k.starts_with(&prefix) || keys.contains(k));
        let mut raised = Vec::new();
        for (key, alert) in active {
            if open.insert(format!("{prefix}{key}")) {
                raised.push(alert.clone());
                log.push(alert);
            }
        }
        let excess = log.len().saturating_sub(KEEP);
        log.drain(..excess);
        raised
    }

    /// Every alert kept, oldest first.
    pub fn all(&self) -> Vec<Alert> {
        self.state.lock().map(|s| s.0.clone()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(rule: &str) -> Alert {
        Alert {
            at_ms: 0,
            source: "drift".into(),
            model: "m".into(),
            version: "1".into(),
            rule: rule.into(),
            detail: String::new(),
            action: None,
        }
    }

    #[test]
    fn a_lasting_condition_alerts_once_and_again_after_it_clears() {
        let log = AlertLog::default();
        let a = || vec![("x".to_string(), alert("feature_drift"))];
        assert_eq!(log.observe("drift/m/1", a()).len(), 1);
        assert_eq!(log.observe("drift/m/1", a()).len(), 0);
        // Another scope is independent.
        assert_eq!(log.observe("drift/m/2", a()).len(), 1);
        assert_eq!(log.observe("drift/m/1", Vec::new()).len(), 0);
        assert_eq!(log.observe("drift/m/1", a()).len(), 1);
        assert_eq!(log.all().len(), 3);
    }
}
