//! Small numeric helpers of the standard-workload generator: normal draws, a stable string hash,
//! and ridge regression for the layers that are fitted rather than drawn.
//!
//! Everything here is deterministic given its inputs, so the same seed writes byte-identical
//! model files on every run. Nothing here is meant for training real models.

use rand::Rng;

/// A standard normal draw (Box–Muller), so the generator needs no distribution crate.
pub(crate) fn normal(rng: &mut impl Rng) -> f64 {
    // 1 - u keeps the logarithm's argument in (0, 1].
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// Two independent standard normal draws from one Box–Muller step (both its branches).
pub(crate) fn normal_pair(rng: &mut impl Rng) -> (f64, f64) {
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random();
    let r = (-2.0 * u1.ln()).sqrt();
    let (sin, cos) = (std::f64::consts::TAU * u2).sin_cos();
    (r * cos, r * sin)
}

/// SplitMix64 (Steele, Lea and Flood, 2014): a generator whose whole state is one `u64` and whose
/// algorithm is fixed here, so that a viewer's features are cheap to seed (a million viewers at
/// start-up) and never change with a dependency's release.
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator for one of many independent streams: the stream number is mixed into the
    /// seed, so consecutive streams do not overlap the way consecutive raw states would.
    pub(crate) fn stream(seed: u64, stream: u64) -> Self {
        Self(seed ^ mix(stream.wrapping_add(0x9e37_79b9_7f4a_7c15)))
    }
}

/// SplitMix64's output function.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl rand::RngCore for SplitMix64 {
    fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }

    fn fill_bytes(&mut self, dst: &mut [u8]) {
        for chunk in dst.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

/// A log-normal draw with this median and log-space spread, clamped to `[lo, hi]`.
pub(crate) fn log_normal(rng: &mut impl Rng, median: f64, sigma: f64, lo: f64, hi: f64) -> f64 {
    (median * (sigma * normal(rng)).exp()).clamp(lo, hi)
}

/// FNV-1a, 64 bit: a hash that is the same on every platform and release, unlike std's.
pub(crate) fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // Separate the parts so that ("ab", "c") and ("a", "bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Mean and standard deviation of each column of a row-major `n × d` matrix; a constant column
/// gets deviation 1 so that standardising it is harmless.
pub(crate) fn column_moments(x: &[f64], d: usize) -> (Vec<f64>, Vec<f64>) {
    let n = (x.len() / d).max(1) as f64;
    let mut mean = vec![0.0; d];
    for row in x.chunks_exact(d) {
        for (m, v) in mean.iter_mut().zip(row) {
            *m += v;
        }
    }
    mean.iter_mut().for_each(|m| *m /= n);
    let mut var = vec![0.0; d];
    for row in x.chunks_exact(d) {
        for ((s, v), m) in var.iter_mut().zip(row).zip(&mean) {
            *s += (v - m) * (v - m);
        }
    }
    let sd = var
        .iter()
        .map(|s| {
            let sd = (s / n).sqrt();
            if sd > 1e-9 {
                sd
            } else {
                1.0
            }
        })
        .collect();
    (mean, sd)
}

/// Ridge regression of `y` on the columns of row-major `x` (`n × d`), on standardised columns
/// with penalty `lambda × n`. Returns the intercept and `d` weights on the original scale.
pub(crate) fn ridge(x: &[f64], y: &[f64], d: usize, lambda: f64) -> (f64, Vec<f64>) {
    let n = y.len();
    assert_eq!(x.len(), n * d, "x must be n × d");
    let (mean, sd) = column_moments(x, d);
    let y_mean = y.iter().sum::<f64>() / n.max(1) as f64;
    // Normal equations on standardised columns: (ZᵀZ + λn·I) w = Zᵀ(y − ȳ).
    let mut a = vec![0.0; d * d];
    let mut b = vec![0.0; d];
    let mut z = vec![0.0; d];
    for (row, &yi) in x.chunks_exact(d).zip(y) {
        for j in 0..d {
            z[j] = (row[j] - mean[j]) / sd[j];
        }
        for i in 0..d {
            b[i] += z[i] * (yi - y_mean);
            for j in 0..=i {
                a[i * d + j] += z[i] * z[j];
            }
        }
    }
    for i in 0..d {
        a[i * d + i] += lambda * n as f64;
        for j in 0..i {
            a[j * d + i] = a[i * d + j];
        }
    }
    let w_std = cholesky_solve(&mut a, &b, d);
    let weights: Vec<f64> = w_std.iter().zip(&sd).map(|(w, s)| w / s).collect();
    let intercept = y_mean - weights.iter().zip(&mean).map(|(w, m)| w * m).sum::<f64>();
    (intercept, weights)
}

/// Solves `a x = b` for a symmetric positive definite `a` (overwritten by its Cholesky factor).
fn cholesky_solve(a: &mut [f64], b: &[f64], d: usize) -> Vec<f64> {
    for j in 0..d {
        let mut s = a[j * d + j];
        for k in 0..j {
            s -= a[j * d + k] * a[j * d + k];
        }
        // The ridge penalty keeps the diagonal positive; the floor only guards rounding.
        let l = s.max(1e-12).sqrt();
        a[j * d + j] = l;
        for i in j + 1..d {
            let mut s = a[i * d + j];
            for k in 0..j {
                s -= a[i * d + k] * a[j * d + k];
            }
            a[i * d + j] = s / l;
        }
    }
    let mut y = vec![0.0; d];
    for i in 0..d {
        let mut s = b[i];
        for k in 0..i {
            s -= a[i * d + k] * y[k];
        }
        y[i] = s / a[i * d + i];
    }
    let mut x = vec![0.0; d];
    for i in (0..d).rev() {
        let mut s = y[i];
        for k in i + 1..d {
            s -= a[k * d + i] * x[k];
        }
        x[i] = s / a[i * d + i];
    }
    x
}

/// The logistic function.
pub(crate) fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn ridge_recovers_a_linear_function() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let (n, d) = (500, 4);
        let x: Vec<f64> = (0..n * d)
            .map(|i| normal(&mut rng) * (1 + i % d) as f64 + 5.0)
            .collect();
        let y: Vec<f64> = x
            .chunks_exact(d)
            .map(|r| 0.5 + 2.0 * r[0] - r[1] + 0.25 * r[3])
            .collect();
        let (b, w) = ridge(&x, &y, d, 1e-9);
        assert!((b - 0.5).abs() < 1e-4, "{b}");
        for (got, want) in w.iter().zip([2.0, -1.0, 0.0, 0.25]) {
            assert!((got - want).abs() < 1e-6, "{w:?}");
        }
    }

    #[test]
    fn normal_draws_have_unit_variance() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let v: Vec<f64> = (0..20_000).map(|_| normal(&mut rng)).collect();
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / v.len() as f64;
        assert!(
            mean.abs() < 0.03 && (var - 1.0).abs() < 0.05,
            "{mean} {var}"
        );
    }

    #[test]
    fn splitmix_matches_the_reference_sequence_and_streams_differ() {
        use rand::RngCore;
        // First outputs of SplitMix64 seeded with 0 (the reference implementation's).
        let mut g = SplitMix64(0);
        assert_eq!(g.next_u64(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(g.next_u64(), 0x6e78_9e6a_a1b9_65f4);
        let a: Vec<u64> = (0..4)
            .map(|_| SplitMix64::stream(1, 7).next_u64())
            .collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        assert_ne!(
            SplitMix64::stream(1, 7).next_u64(),
            SplitMix64::stream(1, 8).next_u64()
        );
        let (x, y) = normal_pair(&mut SplitMix64(3));
        assert!(x.is_finite() && y.is_finite() && x != y);
    }

    #[test]
    fn hash_is_stable_and_separates_parts() {
        assert_eq!(fnv1a(&[b"li-1"]), fnv1a(&[b"li-1"]));
        assert_ne!(fnv1a(&[b"ab", b"c"]), fnv1a(&[b"a", b"bc"]));
    }
}
