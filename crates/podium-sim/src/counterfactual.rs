//! Counterfactual estimates of a ranking policy's value from logged decisions: what a target
//! policy would have earned, from decisions a logging policy made while exploring.
//!
//! Each logged sample carries the probability with which the logging policy chose the shown
//! action (its propensity), the target policy's probability of the same action, the observed
//! reward, and — for the doubly robust estimator — a reward model's prediction for the shown
//! action and its expectation under the target policy. Three estimators, each with a 95 %
//! confidence interval from the normal approximation:
//!
//! - **IPS** (inverse propensity scoring, Horvitz–Thompson): mean of `w·r` with `w = π/p`;
//!   unbiased when every action the target takes has a logging propensity above zero.
//! - **SNIPS** (self-normalised IPS): `Σ w·r ÷ Σ w`; slightly biased, much lower variance when
//!   weights are large; interval by the delta method.
//! - **DR** (doubly robust, Dudík et al. 2011): the reward model's value under the target plus
//!   the IPS-weighted residual of the shown action; unbiased if either the propensities or the
//!   reward model are right, and lower variance than IPS when the model is good.

/// One logged decision, seen by the estimators.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    /// Probability with which the logging policy chose the shown action (0, 1].
    pub propensity: f64,
    /// Probability with which the target policy would choose the same action [0, 1].
    pub target: f64,
    /// The reward observed (a click, a completion, revenue).
    pub reward: f64,
    /// The reward model's prediction for the shown action (DR only).
    pub model_shown: f64,
    /// The reward model's expected reward under the target policy: Σₐ π(a|x)·q̂(x, a) (DR only).
    pub model_target: f64,
}

/// An estimate of a policy's mean reward per decision.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Estimate {
    /// The estimate.
    pub value: f64,
    /// Its standard error.
    pub std_error: f64,
    /// 95 % confidence interval (normal approximation).
    pub ci95: (f64, f64),
    /// Samples used.
    pub n: usize,
    /// Effective sample size of the importance weights, (Σw)² ÷ Σw²: how many on-policy samples
    /// the log is worth for this target.
    pub effective_n: f64,
}

/// Why an estimate could not be made.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum EstimateError {
    /// No samples.
    #[error("no logged samples")]
    Empty,
    /// A sample's propensity is not in (0, 1] or its target probability not in [0, 1].
    #[error("sample {index}: propensity {propensity} must be in (0, 1] and target probability {target} in [0, 1] (log the exploration probabilities)")]
    Probability {
        /// The sample's position.
        index: usize,
        /// Its propensity.
        propensity: f64,
        /// Its target probability.
        target: f64,
    },
    /// The target policy never takes an action the log shows: nothing to estimate from.
    #[error("the target policy gives zero probability to every logged action")]
    NoOverlap,
}

const Z95: f64 = 1.959_963_984_540_054;

fn check(samples: &[Sample]) -> Result<(), EstimateError> {
    if samples.is_empty() {
        return Err(EstimateError::Empty);
    }
    for (index, s) in samples.iter().enumerate() {
        let ok = s.propensity > 0.0
            && s.propensity <= 1.0
            && (0.0..=1.0).contains(&s.target)
            && s.reward.is_finite();
        if !ok {
            return Err(EstimateError::Probability {
                index,
                propensity: s.propensity,
                target: s.target,
            });
        }
    }
    Ok(())
}

fn weights(samples: &[Sample]) -> (Vec<f64>, f64) {
    let w: Vec<f64> = samples.iter().map(|s| s.target / s.propensity).collect();
    let (sum, sq) = w.iter().fold((0.0, 0.0), |(a, b), &x| (a + x, b + x * x));
    let effective = if sq > 0.0 { sum * sum / sq } else { 0.0 };
    (w, effective)
}

/// Mean, standard error and interval of per-sample terms.
fn mean_estimate(terms: &[f64], effective_n: f64) -> Estimate {
    let n = terms.len() as f64;
    let mean = terms.iter().sum::<f64>() / n;
    let var = if terms.len() > 1 {
        terms.iter().map(|t| (t - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    let se = (var / n).sqrt();
    Estimate {
        value: mean,
        std_error: se,
        ci95: (mean - Z95 * se, mean + Z95 * se),
        n: terms.len(),
        effective_n,
    }
}

/// Inverse propensity scoring.
pub fn ips(samples: &[Sample]) -> Result<Estimate, EstimateError> {
    check(samples)?;
    let (w, effective) = weights(samples);
    let terms: Vec<f64> = w.iter().zip(samples).map(|(w, s)| w * s.reward).collect();
    Ok(mean_estimate(&terms, effective))
}

/// Self-normalised inverse propensity scoring.
pub fn snips(samples: &[Sample]) -> Result<Estimate, EstimateError> {
    check(samples)?;
    let (w, effective) = weights(samples);
    let n = samples.len() as f64;
    let sum_w: f64 = w.iter().sum();
    if sum_w <= 0.0 {
        return Err(EstimateError::NoOverlap);
    }
    let value = w
        .iter()
        .zip(samples)
        .map(|(w, s)| w * s.reward)
        .sum::<f64>()
        / sum_w;
    // Delta method: the ratio's linearisation w·(r − V) ÷ mean(w).
    let mean_w = sum_w / n;
    let var = w
        .iter()
        .zip(samples)
        .map(|(w, s)| (w * (s.reward - value) / mean_w).powi(2))
        .sum::<f64>()
        / (n - 1.0).max(1.0);
    let se = (var / n).sqrt();
    Ok(Estimate {
        value,
        std_error: se,
        ci95: (value - Z95 * se, value + Z95 * se),
        n: samples.len(),
        effective_n: effective,
    })
}

/// Doubly robust estimation.
pub fn doubly_robust(samples: &[Sample]) -> Result<Estimate, EstimateError> {
    check(samples)?;
    let (w, effective) = weights(samples);
    let terms: Vec<f64> = w
        .iter()
        .zip(samples)
        .map(|(w, s)| s.model_target + w * (s.reward - s.model_shown))
        .collect();
    Ok(mean_estimate(&terms, effective))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    const CONTEXTS: usize = 20;
    const ACTIONS: usize = 5;

    /// A synthetic marketplace slot: per context and action a known click probability; a
    /// logging policy that explores (softmax of noisy scores, 10 % uniform); two target
    /// policies whose true values are computed exactly.
    struct World {
        ctr: Vec<[f64; ACTIONS]>,
        logging: Vec<[f64; ACTIONS]>,
        greedy: Vec<[f64; ACTIONS]>,
        soft: Vec<[f64; ACTIONS]>,
    }

    fn softmax(s: &[f64; ACTIONS], temperature: f64) -> [f64; ACTIONS] {
        let m = s.iter().cloned().fold(f64::MIN, f64::max);
        let e: Vec<f64> = s.iter().map(|x| ((x - m) / temperature).exp()).collect();
        let z: f64 = e.iter().sum();
        std::array::from_fn(|a| e[a] / z)
    }

    fn world(seed: u64) -> World {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let ctr: Vec<[f64; ACTIONS]> = (0..CONTEXTS)
            .map(|_| std::array::from_fn(|_| rng.random_range(0.01..0.2)))
            .collect();
        let logging = ctr
            .iter()
            .map(|c| {
                let noisy: [f64; ACTIONS] =
                    std::array::from_fn(|a| c[a] + rng.random_range(-0.05..0.05));
                let p = softmax(&noisy, 0.05);
                std::array::from_fn(|a| 0.9 * p[a] + 0.1 / ACTIONS as f64)
            })
            .collect();
        let greedy = ctr
            .iter()
            .map(|c| {
                let best = (0..ACTIONS).max_by(|&a, &b| c[a].total_cmp(&c[b])).unwrap();
                std::array::from_fn(|a| if a == best { 1.0 } else { 0.0 })
            })
            .collect();
        let soft = ctr.iter().map(|c| softmax(c, 0.03)).collect();
        World {
            ctr,
            logging,
            greedy,
            soft,
        }
    }

    impl World {
        /// The policy's true mean reward (contexts uniform).
        fn value(&self, policy: &[[f64; ACTIONS]]) -> f64 {
            policy
                .iter()
                .zip(&self.ctr)
                .map(|(p, c)| (0..ACTIONS).map(|a| p[a] * c[a]).sum::<f64>())
                .sum::<f64>()
                / CONTEXTS as f64
        }

        /// `n` logged decisions, with a reward model `q̂ = ctr × bias` for DR.
        fn log(
            &self,
            rng: &mut ChaCha8Rng,
            n: usize,
            target: &[[f64; ACTIONS]],
            bias: f64,
        ) -> Vec<Sample> {
            (0..n)
                .map(|_| {
                    let x = rng.random_range(0..CONTEXTS);
                    let u: f64 = rng.random();
                    let mut acc = 0.0;
                    let a = (0..ACTIONS)
                        .find(|&a| {
                            acc += self.logging[x][a];
                            u < acc
                        })
                        .unwrap_or(ACTIONS - 1);
                    let reward = if rng.random_bool(self.ctr[x][a]) {
                        1.0
                    } else {
                        0.0
                    };
                    let q = |a: usize| (self.ctr[x][a] * bias).min(1.0);
                    Sample {
                        propensity: self.logging[x][a],
                        target: target[x][a],
                        reward,
                        model_shown: q(a),
                        model_target: (0..ACTIONS).map(|b| target[x][b] * q(b)).sum(),
                    }
                })
                .collect()
        }
    }

    #[test]
    fn every_estimator_recovers_the_true_value_of_a_new_policy() {
        let w = world(1);
        let truth = w.value(&w.greedy);
        let logged = w.value(&w.logging);
        assert!(
            truth > logged * 1.1,
            "the target is better: {truth} vs {logged}"
        );
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let samples = w.log(&mut rng, 200_000, &w.greedy, 1.0);
        for (name, e) in [
            ("ips", ips(&samples).unwrap()),
            ("snips", snips(&samples).unwrap()),
            ("dr", doubly_robust(&samples).unwrap()),
        ] {
            assert!(
                (e.value - truth).abs() < 4.0 * e.std_error.max(1e-4),
                "{name}: {e:?} vs truth {truth}"
            );
            assert!(
                e.ci95.0 < truth && truth < e.ci95.1,
                "{name}: {e:?} vs {truth}"
            );
            assert!(e.effective_n < samples.len() as f64);
        }
        // A right reward model takes the expected reward out of DR's variance, leaving the
        // clicks' own noise (most of it at these rates): tighter than IPS, not by much.
        let (i, d) = (ips(&samples).unwrap(), doubly_robust(&samples).unwrap());
        assert!(d.std_error < i.std_error, "{d:?} vs {i:?}");
    }

    #[test]
    fn intervals_cover_the_truth_about_95_percent_of_the_time() {
        let w = world(3);
        let truth = w.value(&w.soft);
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let runs = 300;
        let mut covered = [0usize; 3];
        for _ in 0..runs {
            // A wrong reward model (30 % high): DR stays unbiased through the propensities.
            let samples = w.log(&mut rng, 4_000, &w.soft, 1.3);
            for (k, e) in [ips(&samples), snips(&samples), doubly_robust(&samples)]
                .into_iter()
                .enumerate()
            {
                let e = e.unwrap();
                covered[k] += (e.ci95.0 <= truth && truth <= e.ci95.1) as usize;
            }
        }
        for (name, c) in ["ips", "snips", "dr"].iter().zip(covered) {
            let share = c as f64 / runs as f64;
            assert!((0.90..=0.99).contains(&share), "{name}: coverage {share}");
        }
    }

    #[test]
    fn bad_logs_are_refused_with_the_reason() {
        assert_eq!(ips(&[]).unwrap_err(), EstimateError::Empty);
        let s = Sample {
            propensity: 0.0,
            target: 0.5,
            reward: 1.0,
            model_shown: 0.0,
            model_target: 0.0,
        };
        let err = snips(&[s]).unwrap_err().to_string();
        assert!(
            err.contains("sample 0") && err.contains("propensity"),
            "{err}"
        );
        let off = Sample {
            propensity: 0.5,
            target: 0.0,
            ..s
        };
        assert_eq!(snips(&[off]).unwrap_err(), EstimateError::NoOverlap);
    }
}
