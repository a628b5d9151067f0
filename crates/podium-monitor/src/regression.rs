//! Regression detection, canary against production: per metric a statistical test, and a rule
//! list (from config) that says when a difference is a breach and what to do about it.
//!
//! ```toml
//! min_batches = 200            # batches each side must have scored before any verdict
//!
//! [[rule]]
//! metric = "latency"           # Mann–Whitney U on batch latencies, canary slower
//! alpha = 0.001                # significance level of the test
//! threshold = 1.5              # and the canary's median at least 1.5 × production's
//! floor_us = 250               # medians below this are scheduling noise, never a breach
//! action = "rollback"          # or "alert"
//!
//! [[rule]]
//! metric = "errors"            # two-proportion z-test, canary's failure rate higher
//! threshold = 0.02             # by at least 2 points
//!
//! [[rule]]
//! metric = "score_shift"       # PSI between the prediction histograms (χ² test beside it)
//! threshold = 0.25
//!
//! [[rule]]
//! metric = "calibration"       # observed ÷ predicted, canary vs production (rate-ratio test)
//! threshold = 1.2              # ratio of the two calibration ratios outside [1/1.2, 1.2]
//! ```

use crate::stat::{
    chi_square_homogeneity, mann_whitney_greater, poisson_rate_ratio, psi, two_proportion_greater,
};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The metric a rule watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Batch latency (Mann–Whitney U).
    Latency,
    /// P99 batch latency ratio (no test: a hard limit).
    LatencyP99,
    /// Failed batches (two-proportion z-test).
    Errors,
    /// Prediction distribution (PSI, with a χ² homogeneity test).
    ScoreShift,
    /// Calibration against observed outcomes (conditional Poisson rate-ratio test).
    Calibration,
}

impl Metric {
    /// The name alerts and the lifecycle history use for a breach of this metric.
    pub fn rule_name(self) -> &'static str {
        match self {
            Metric::Latency => "latency",
            Metric::LatencyP99 => "latency_p99",
            Metric::Errors => "error_rate",
            Metric::ScoreShift => "psi",
            Metric::Calibration => "calibration",
        }
    }
}

/// What a breach does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Roll the canary back.
    Rollback,
    /// Record an alert only.
    Alert,
}

/// One rule.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// What it watches.
    pub metric: Metric,
    /// Significance level of the test (ignored by `latency_p99`).
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// Smallest difference that counts, in the metric's own terms (see the module docs).
    pub threshold: f64,
    /// Latency below which differences are noise, µs (latency rules).
    #[serde(default = "default_floor_us")]
    pub floor_us: f64,
    /// Least observed outcomes on each side (calibration).
    #[serde(default = "default_min_outcomes")]
    pub min_outcomes: f64,
    /// What a breach does.
    #[serde(default = "default_action")]
    pub action: Action,
}

fn default_alpha() -> f64 {
    0.01
}
fn default_floor_us() -> f64 {
    250.0
}
fn default_min_outcomes() -> f64 {
    50.0
}
fn default_action() -> Action {
    Action::Rollback
}

impl Rule {
    /// A rule with the default significance, floors and action.
    pub fn new(metric: Metric, threshold: f64) -> Self {
        Self {
            metric,
            alpha: default_alpha(),
            threshold,
            floor_us: default_floor_us(),
            min_outcomes: default_min_outcomes(),
            action: default_action(),
        }
    }
}

/// The rule list.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Rules {
    /// Batches each side must have scored in the window before any verdict.
    #[serde(default = "default_min_batches")]
    pub min_batches: u64,
    /// The rules, judged in order; the first breach decides the action.
    #[serde(rename = "rule", default)]
    pub rules: Vec<Rule>,
}

fn default_min_batches() -> u64 {
    200
}

impl Default for Rules {
    fn default() -> Self {
        let mut latency = Rule::new(Metric::Latency, 1.5);
        latency.alpha = 0.001;
        let mut p99 = Rule::new(Metric::LatencyP99, 3.0);
        p99.floor_us = 1_000.0;
        let mut calibration = Rule::new(Metric::Calibration, 1.2);
        calibration.alpha = 0.001;
        Self {
            min_batches: default_min_batches(),
            rules: vec![
                Rule::new(Metric::ScoreShift, 0.25),
                Rule::new(Metric::Errors, 0.02),
                latency,
                p99,
                calibration,
            ],
        }
    }
}

impl Rules {
    /// Reads a rule file (TOML, as in the module docs); errors name the file and the field.
    pub fn read(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let rules: Rules = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        for (i, r) in rules.rules.iter().enumerate() {
            let bad = |what: &str| Err(format!("{}: rule[{i}]: {what}", path.display()));
            if !(r.alpha > 0.0 && r.alpha < 1.0) {
                return bad("alpha must be between 0 and 1");
            }
            if !r.threshold.is_finite() || r.threshold < 0.0 {
                return bad("threshold must be a number ≥ 0");
            }
            if matches!(
                r.metric,
                Metric::Latency | Metric::LatencyP99 | Metric::Calibration
            ) && r.threshold < 1.0
            {
                return bad("a latency or calibration threshold is a ratio ≥ 1");
            }
        }
        Ok(rules)
    }
}

/// What one side of the comparison did over the window.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Side {
    /// Batches scored.
    pub batches: u64,
    /// Batches that failed.
    pub failures: u64,
    /// Recent batch latencies, µs.
    pub latencies_us: Vec<f64>,
    /// P99 batch latency, µs.
    pub p99_us: f64,
    /// Prediction counts over shared bins.
    pub bins: Vec<u64>,
    /// Observed outcomes and Σ predicted for them, when outcomes have been joined.
    pub outcomes: Option<(f64, f64)>,
}

/// One test's result.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TestResult {
    /// The metric.
    pub metric: Metric,
    /// The rule name a breach is recorded under.
    pub rule: &'static str,
    /// The test: `mann_whitney`, `two_proportion`, `psi`, `rate_ratio`, `limit`.
    pub test: &'static str,
    /// The canary's figure (median µs, P99 µs, error rate, PSI, calibration ratio).
    pub canary: Option<f64>,
    /// Production's figure.
    pub production: Option<f64>,
    /// The test statistic.
    pub statistic: Option<f64>,
    /// The test's p-value.
    pub p_value: Option<f64>,
    /// Whether the rule is breached.
    pub breach: bool,
    /// The action a breach calls for.
    pub action: Action,
    /// The figures in words.
    pub detail: String,
}

fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    Some(s[s.len() / 2])
}

/// Runs every rule on a canary and production. Rules whose data is missing (no outcomes yet)
/// give a result with `breach: false` that says so.
pub fn evaluate(rules: &Rules, canary: &Side, production: &Side) -> Vec<TestResult> {
    rules
        .rules
        .iter()
        .map(|r| judge(r, canary, production))
        .collect()
}

fn judge(rule: &Rule, c: &Side, p: &Side) -> TestResult {
    let mut t = TestResult {
        metric: rule.metric,
        rule: rule.metric.rule_name(),
        test: "",
        canary: None,
        production: None,
        statistic: None,
        p_value: None,
        breach: false,
        action: rule.action,
        detail: String::new(),
    };
    match rule.metric {
        Metric::Latency => {
            t.test = "mann_whitney";
            let (mc, mp) = (median(&c.latencies_us), median(&p.latencies_us));
            t.canary = mc;
            t.production = mp;
            if let (Some(mc), Some(mp), Some(o)) = (
                mc,
                mp,
                mann_whitney_greater(&c.latencies_us, &p.latencies_us),
            ) {
                t.statistic = Some(o.statistic);
                t.p_value = Some(o.p_value);
                t.breach = o.p_value < rule.alpha
                    && mc >= rule.floor_us
                    && mc > rule.threshold * mp.max(1.0);
                t.detail = format!(
                    "median batch {mc:.0} µs vs production {mp:.0} µs (limit {}×), Mann–Whitney p={:.2e} over {} and {} batches",
                    rule.threshold,
                    o.p_value,
                    c.latencies_us.len(),
                    p.latencies_us.len()
                );
            } else {
                t.detail = "no latency samples yet".into();
            }
        }
        Metric::LatencyP99 => {
            t.test = "limit";
            t.canary = Some(c.p99_us);
            t.production = Some(p.p99_us);
            t.breach = c.p99_us >= rule.floor_us && c.p99_us > rule.threshold * p.p99_us.max(1.0);
            t.detail = format!(
                "P99 {:.0} µs vs production {:.0} µs (limit {}×)",
                c.p99_us, p.p99_us, rule.threshold
            );
        }
        Metric::Errors => {
            t.test = "two_proportion";
            let rate = |s: &Side| {
                if s.batches == 0 {
                    0.0
                } else {
                    s.failures as f64 / s.batches as f64
                }
            };
            let (rc, rp) = (rate(c), rate(p));
            t.canary = Some(rc);
            t.production = Some(rp);
            if let Some(o) = two_proportion_greater(c.failures, c.batches, p.failures, p.batches) {
                t.statistic = Some(o.statistic);
                t.p_value = Some(o.p_value);
                t.breach = o.p_value < rule.alpha && rc - rp > rule.threshold;
            }
            t.detail = format!(
                "error rate {:.2} % vs production {:.2} %",
                rc * 100.0,
                rp * 100.0
            );
        }
        Metric::ScoreShift => {
            t.test = "psi";
            let shift = psi(&p.bins, &c.bins);
            t.canary = shift;
            t.production = Some(0.0);
            if let Some(shift) = shift {
                let chi = chi_square_homogeneity(&p.bins, &c.bins);
                t.statistic = chi.map(|o| o.statistic);
                t.p_value = chi.map(|o| o.p_value);
                // PSI alone decides: with thousands of rows any difference is "significant".
                t.breach = shift > rule.threshold;
                t.detail = format!(
                    "prediction shift PSI {shift:.3} against production (limit {}) over {} canary batches",
                    rule.threshold, c.batches
                );
            } else {
                t.detail = "no predictions yet".into();
            }
        }
        Metric::Calibration => {
            t.test = "rate_ratio";
            let ratio =
                |o: Option<(f64, f64)>| o.and_then(|(obs, pred)| (obs > 0.0).then(|| pred / obs));
            t.canary = ratio(c.outcomes);
            t.production = ratio(p.outcomes);
            match (c.outcomes, p.outcomes) {
                (Some((oc, ec)), Some((op, ep)))
                    if oc >= rule.min_outcomes && op >= rule.min_outcomes =>
                {
                    if let Some(o) = poisson_rate_ratio(oc, ec, op, ep) {
                        t.statistic = Some(o.statistic);
                        t.p_value = Some(o.p_value);
                        let relative = (ec / oc) / (ep / op);
                        t.breach = o.p_value < rule.alpha
                            && (relative > rule.threshold || relative < 1.0 / rule.threshold);
                        t.detail = format!(
                            "calibration ratio {:.3} vs production {:.3} (Σ predicted ÷ Σ observed over {oc:.0} and {op:.0} outcomes), rate-ratio p={:.2e}",
                            ec / oc,
                            ep / op,
                            o.p_value
                        );
                    }
                }
                _ => {
                    t.detail = format!(
                        "fewer than {} observed outcomes on a side",
                        rule.min_outcomes
                    );
                }
            }
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn side(seed: u64, n: usize, latency: f64, failures: u64, bins: Vec<u64>) -> Side {
        let mut x = seed;
        let latencies_us = (0..n)
            .map(|_| {
                x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                latency * (0.8 + 0.4 * ((x >> 11) as f64 / (1u64 << 53) as f64))
            })
            .collect();
        Side {
            batches: n as u64,
            failures,
            latencies_us,
            p99_us: latency * 1.2,
            bins,
            outcomes: None,
        }
    }

    fn breaches(results: &[TestResult]) -> Vec<&'static str> {
        results
            .iter()
            .filter(|r| r.breach)
            .map(|r| r.rule)
            .collect()
    }

    #[test]
    fn a_healthy_canary_breaches_nothing() {
        let rules = Rules::default();
        let prod = side(1, 2000, 400.0, 2, vec![700, 200, 80, 20]);
        let canary = side(2, 500, 410.0, 1, vec![175, 50, 20, 5]);
        assert!(breaches(&evaluate(&rules, &canary, &prod)).is_empty());
    }

    #[test]
    fn added_latency_is_flagged_by_the_u_test() {
        let rules = Rules::default();
        let prod = side(1, 2000, 400.0, 0, vec![700, 200, 80, 20]);
        let slow = side(2, 500, 900.0, 0, vec![175, 50, 20, 5]);
        let r = evaluate(&rules, &slow, &prod);
        assert_eq!(breaches(&r), vec!["latency"]);
        let latency = r.iter().find(|t| t.rule == "latency").unwrap();
        assert!(latency.p_value.unwrap() < 1e-10, "{latency:?}");
        // The same slowdown below the noise floor is not a breach.
        let prod = side(1, 2000, 40.0, 0, vec![1]);
        let slow = side(2, 500, 90.0, 0, vec![1]);
        assert!(breaches(&evaluate(&rules, &slow, &prod)).is_empty());
    }

    #[test]
    fn errors_shift_and_calibration_each_breach_their_rule() {
        let rules = Rules::default();
        let prod = side(1, 2000, 400.0, 2, vec![700, 200, 80, 20]);
        let failing = side(2, 500, 400.0, 40, vec![175, 50, 20, 5]);
        assert_eq!(
            breaches(&evaluate(&rules, &failing, &prod)),
            vec!["error_rate"]
        );
        let shifted = side(3, 500, 400.0, 0, vec![5, 20, 50, 175]);
        assert_eq!(breaches(&evaluate(&rules, &shifted, &prod)), vec!["psi"]);
        // Canary predicts 1.3× what happens; production is calibrated.
        let mut over = side(4, 500, 400.0, 0, vec![175, 50, 20, 5]);
        over.outcomes = Some((400.0, 520.0));
        let mut calibrated = prod.clone();
        calibrated.outcomes = Some((1600.0, 1600.0));
        let r = evaluate(&rules, &over, &calibrated);
        assert_eq!(breaches(&r), vec!["calibration"]);
        let c = r.iter().find(|t| t.rule == "calibration").unwrap();
        assert!((c.canary.unwrap() - 1.3).abs() < 1e-9);
    }

    #[test]
    fn rule_files_parse_and_bad_ones_name_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rules.toml");
        std::fs::write(
            &path,
            "min_batches = 50\n[[rule]]\nmetric = \"latency\"\nthreshold = 2.0\naction = \"alert\"\n",
        )
        .unwrap();
        let rules = Rules::read(&path).unwrap();
        assert_eq!(rules.min_batches, 50);
        assert_eq!(rules.rules[0].action, Action::Alert);
        assert_eq!(rules.rules[0].alpha, 0.01);
        std::fs::write(&path, "[[rule]]\nmetric = \"latency\"\nthreshold = 0.5\n").unwrap();
        let err = Rules::read(&path).unwrap_err();
        assert!(
            err.contains("rules.toml") && err.contains("rule[0]"),
            "{err}"
        );
        std::fs::write(&path, "[[rule]]\nmetric = \"speed\"\nthreshold = 2\n").unwrap();
        let err = Rules::read(&path).unwrap_err();
        assert!(err.contains("rules.toml") && err.contains("speed"), "{err}");
    }
}
