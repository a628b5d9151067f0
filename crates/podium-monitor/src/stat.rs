//! The statistics behind drift and regression findings: distances between histograms and the
//! tests that say whether a canary differs from production by more than chance.

/// Share floor for empty bins, so that PSI stays finite.
const FLOOR: f64 = 1e-4;

fn shares(counts: &[u64]) -> Option<Vec<f64>> {
    let total = counts.iter().sum::<u64>() as f64;
    (total > 0.0).then(|| counts.iter().map(|&c| c as f64 / total).collect())
}

/// Population stability index of `actual` against `expected` (counts over the same bins).
/// Bands: below 0.1 stable, 0.1–0.25 moderate shift, above 0.25 major shift. `None` when
/// either side is empty or the bins differ.
pub fn psi(expected: &[u64], actual: &[u64]) -> Option<f64> {
    if expected.len() != actual.len() {
        return None;
    }
    let (e, a) = (shares(expected)?, shares(actual)?);
    Some(
        e.iter()
            .zip(&a)
            .map(|(&pe, &pa)| {
                let (pe, pa) = (pe.max(FLOOR), pa.max(FLOOR));
                (pa - pe) * (pa / pe).ln()
            })
            .sum(),
    )
}

/// Jensen–Shannon distance (the square root of the divergence, base 2): 0 for identical
/// distributions, 1 for disjoint ones; symmetric, and finite with empty bins.
pub fn js_distance(p: &[u64], q: &[u64]) -> Option<f64> {
    if p.len() != q.len() {
        return None;
    }
    let (p, q) = (shares(p)?, shares(q)?);
    let kl = |a: f64, m: f64| if a > 0.0 { a * (a / m).log2() } else { 0.0 };
    let divergence: f64 = p
        .iter()
        .zip(&q)
        .map(|(&a, &b)| {
            let m = (a + b) / 2.0;
            0.5 * kl(a, m) + 0.5 * kl(b, m)
        })
        .sum();
    Some(divergence.clamp(0.0, 1.0).sqrt())
}

/// The PSI band a value falls in.
pub fn band(psi: f64) -> &'static str {
    if psi < 0.1 {
        "stable"
    } else if psi <= 0.25 {
        "moderate"
    } else {
        "major"
    }
}

/// P(Z > z) for a standard normal Z (complementary error function, Numerical Recipes' erfcc,
/// relative error below 1.2e-7).
pub fn normal_sf(z: f64) -> f64 {
    let x = z / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.5 * x.abs());
    let poly = -x * x - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let erfc = t * poly.exp();
    let erfc = if x >= 0.0 { erfc } else { 2.0 - erfc };
    erfc / 2.0
}

/// A test's outcome: its statistic and one-sided p-value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TestOutcome {
    /// The statistic (z for the normal approximations).
    pub statistic: f64,
    /// The p-value of the one-sided alternative the test names.
    pub p_value: f64,
}

/// Mann–Whitney U test that `a` tends to be larger than `b` (normal approximation with the tie
/// correction and a continuity correction). `None` when either sample is empty.
pub fn mann_whitney_greater(a: &[f64], b: &[f64]) -> Option<TestOutcome> {
    let (n1, n2) = (a.len() as f64, b.len() as f64);
    if a.is_empty() || b.is_empty() {
        return None;
    }
    let mut all: Vec<(f64, bool)> = a
        .iter()
        .map(|&v| (v, true))
        .chain(b.iter().map(|&v| (v, false)))
        .collect();
    all.sort_by(|x, y| x.0.total_cmp(&y.0));
    // Average ranks over ties; Σ(t³ − t) for the variance correction.
    let (mut rank_sum_a, mut ties, mut i) = (0.0, 0.0, 0);
    while i < all.len() {
        let mut j = i;
        while j + 1 < all.len() && all[j + 1].0 == all[i].0 {
            j += 1;
        }
        let t = (j - i + 1) as f64;
        let rank = (i + j) as f64 / 2.0 + 1.0;
        rank_sum_a += rank * all[i..=j].iter().filter(|x| x.1).count() as f64;
        ties += t * t * t - t;
        i = j + 1;
    }
    let u = rank_sum_a - n1 * (n1 + 1.0) / 2.0;
    let n = n1 + n2;
    let mean = n1 * n2 / 2.0;
    let var = n1 * n2 / 12.0 * ((n + 1.0) - ties / (n * (n - 1.0)).max(1.0));
    if var <= 0.0 {
        return Some(TestOutcome {
            statistic: 0.0,
            p_value: 1.0,
        });
    }
    let z = (u - mean - 0.5) / var.sqrt();
    Some(TestOutcome {
        statistic: z,
        p_value: normal_sf(z),
    })
}

/// Two-proportion z-test that the first rate (`x1` of `n1`) is above the second (`x2` of `n2`).
pub fn two_proportion_greater(x1: u64, n1: u64, x2: u64, n2: u64) -> Option<TestOutcome> {
    if n1 == 0 || n2 == 0 {
        return None;
    }
    let (n1f, n2f) = (n1 as f64, n2 as f64);
    let (p1, p2) = (x1 as f64 / n1f, x2 as f64 / n2f);
    let pooled = (x1 + x2) as f64 / (n1f + n2f);
    let se = (pooled * (1.0 - pooled) * (1.0 / n1f + 1.0 / n2f)).sqrt();
    let z = if se == 0.0 {
        if p1 > p2 {
            f64::INFINITY
        } else {
            0.0
        }
    } else {
        (p1 - p2) / se
    };
    Some(TestOutcome {
        statistic: z,
        p_value: normal_sf(z),
    })
}

/// Whether two models' calibration differs: given each one's observed outcomes and Σ predicted,
/// the conditional test of equal observed-to-expected rates (the canary's outcomes among all
/// outcomes are binomial with share E₁ ÷ (E₁ + E₂) when both are equally calibrated). Two-sided.
pub fn poisson_rate_ratio(
    observed1: f64,
    expected1: f64,
    observed2: f64,
    expected2: f64,
) -> Option<TestOutcome> {
    let n = observed1 + observed2;
    if n <= 0.0 || expected1 <= 0.0 || expected2 <= 0.0 {
        return None;
    }
    let share = expected1 / (expected1 + expected2);
    let z = (observed1 - n * share) / (n * share * (1.0 - share)).sqrt();
    Some(TestOutcome {
        statistic: z,
        p_value: (2.0 * normal_sf(z.abs())).min(1.0),
    })
}

/// Chi-square test of homogeneity of two histograms over the same bins (Wilson–Hilferty
/// approximation of the chi-square tail).
pub fn chi_square_homogeneity(a: &[u64], b: &[u64]) -> Option<TestOutcome> {
    if a.len() != b.len() {
        return None;
    }
    let (ta, tb) = (a.iter().sum::<u64>() as f64, b.iter().sum::<u64>() as f64);
    if ta == 0.0 || tb == 0.0 {
        return None;
    }
    let total = ta + tb;
    let (mut chi2, mut used) = (0.0, 0usize);
    for (&x, &y) in a.iter().zip(b) {
        let col = (x + y) as f64;
        if col == 0.0 {
            continue;
        }
        used += 1;
        let (ex, ey) = (col * ta / total, col * tb / total);
        chi2 += (x as f64 - ex).powi(2) / ex + (y as f64 - ey).powi(2) / ey;
    }
    let k = used.saturating_sub(1) as f64;
    if k == 0.0 {
        return Some(TestOutcome {
            statistic: 0.0,
            p_value: 1.0,
        });
    }
    let z = ((chi2 / k).cbrt() - (1.0 - 2.0 / (9.0 * k))) / (2.0 / (9.0 * k)).sqrt();
    Some(TestOutcome {
        statistic: chi2,
        p_value: normal_sf(z),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances_are_zero_for_equal_histograms_and_grow_with_the_shift() {
        let a = [100, 200, 300, 400];
        assert!(psi(&a, &[10, 20, 30, 40]).unwrap().abs() < 1e-12);
        assert!(js_distance(&a, &[10, 20, 30, 40]).unwrap().abs() < 1e-6);
        let mild = psi(&a, &[120, 210, 290, 380]).unwrap();
        let major = psi(&a, &[400, 300, 200, 100]).unwrap();
        assert!(mild < 0.1 && major > 0.25, "{mild} {major}");
        assert_eq!(js_distance(&[1, 0], &[0, 1]).unwrap(), 1.0);
        assert!(psi(&a, &[0, 0, 0, 0]).is_none());
        assert!(js_distance(&a, &[1, 2]).is_none());
    }

    #[test]
    fn normal_tail_matches_known_values() {
        for (z, p) in [
            (0.0, 0.5),
            (1.0, 0.158_655),
            (1.959_964, 0.025),
            (-1.0, 0.841_345),
        ] {
            assert!((normal_sf(z) - p).abs() < 1e-5, "{z}: {}", normal_sf(z));
        }
        assert!(normal_sf(6.0) < 1e-8);
    }

    #[test]
    fn mann_whitney_finds_a_shift_and_not_noise() {
        // Deterministic pseudo-random samples from the same and from shifted distributions.
        let sample = |seed: u64, n: usize, shift: f64| -> Vec<f64> {
            let mut x = seed;
            (0..n)
                .map(|_| {
                    x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                    (x >> 11) as f64 / (1u64 << 53) as f64 * 100.0 + shift
                })
                .collect()
        };
        let base = sample(1, 500, 0.0);
        let same = mann_whitney_greater(&sample(2, 300, 0.0), &base).unwrap();
        assert!(same.p_value > 0.01, "{same:?}");
        let slower = mann_whitney_greater(&sample(3, 300, 15.0), &base).unwrap();
        assert!(slower.p_value < 1e-6, "{slower:?}");
        let faster = mann_whitney_greater(&sample(4, 300, -15.0), &base).unwrap();
        assert!(faster.p_value > 0.99, "{faster:?}");
        // U for a small worked example: a = {3, 4}, b = {1, 2}: U = 4 (all pairs), z > 0.
        let t = mann_whitney_greater(&[3.0, 4.0], &[1.0, 2.0]).unwrap();
        assert!(t.statistic > 0.0);
        // All ties: no evidence either way.
        assert_eq!(
            mann_whitney_greater(&[5.0; 10], &[5.0; 10])
                .unwrap()
                .p_value,
            1.0
        );
    }

    #[test]
    fn proportion_rate_and_homogeneity_tests() {
        assert!(two_proportion_greater(30, 300, 10, 1000).unwrap().p_value < 1e-6);
        assert!(two_proportion_greater(3, 300, 10, 1000).unwrap().p_value > 0.3);
        // 130 outcomes where 100 were expected vs production exactly calibrated.
        let off = poisson_rate_ratio(100.0, 130.0, 1000.0, 1000.0).unwrap();
        assert!(off.p_value < 0.05, "{off:?}");
        let fine = poisson_rate_ratio(100.0, 101.0, 1000.0, 1000.0).unwrap();
        assert!(fine.p_value > 0.5, "{fine:?}");
        let same = chi_square_homogeneity(&[100, 200, 300], &[10, 20, 30]).unwrap();
        assert!(same.p_value > 0.9, "{same:?}");
        let moved = chi_square_homogeneity(&[100, 200, 300], &[30, 20, 10]).unwrap();
        assert!(moved.p_value < 1e-6, "{moved:?}");
    }
}
