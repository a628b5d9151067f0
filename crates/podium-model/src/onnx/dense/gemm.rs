//! `C = A · W + b` (optionally followed by ReLU) for the dense fast path, with `W` packed once at
//! load.
//!
//! `A` is row-major `[m, k]` with row stride `lda`; `C` is row-major `[m, n]` with row stride
//! `ldc`, which the caller rounds up to a multiple of [`NR`] so that whole panels can be stored.
//! How an output element is summed depends on the layer only (its width and the CPU), never on
//! the batch size or where the row sits in the batch, so a row scores the same in a batch of any
//! size: `+ b` comes after the whole sum, as in onnxruntime's MatMul then Add.
//!
//! Wide outputs (`n > NARROW`) keep `W` as panels of [`NR`] columns, each `k` lines of `NR`
//! floats, zero-padded, and compute tiles of up to 6 rows × 16 columns held in AVX2 registers
//! (the classic 6×16 layout: 12 accumulators, 2 weight vectors, 1 broadcast). Short batches
//! widen the tile across panels instead (1 row × 4 panels), so that a single row still keeps
//! 8 independent accumulators in flight. Narrow outputs (a classifier's last layer) keep `W`
//! transposed and take dot products along `k`, because a 16-wide panel would be mostly padding.
//!
//! The AVX2+FMA kernels run where the CPU has them (checked once, at load); elsewhere the same
//! loops run in plain Rust, with a separate multiply and add.

/// Columns per packed panel.
pub const NR: usize = 16;

/// Outputs up to this wide use the transposed (dot-product) layout.
const NARROW: usize = 4;

/// One cache line of floats: the unit packed weights and scratch buffers are allocated in, so
/// that panels, bias and buffer rows of a multiple of [`NR`] floats are 64-byte aligned.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default)]
pub struct Line(pub [f32; NR]);

/// Views `lines` as floats.
pub fn floats(lines: &[Line]) -> &[f32] {
    let n = lines.len() * NR;
    // SAFETY: `Line` is `repr(C)` over `[f32; NR]` and its alignment adds no padding (64 bytes
    // is exactly NR floats), so `lines` is `n` contiguous, initialised f32s.
    unsafe { std::slice::from_raw_parts(lines.as_ptr().cast::<f32>(), n) }
}

/// Views `lines` as mutable floats.
pub fn floats_mut(lines: &mut [Line]) -> &mut [f32] {
    let n = lines.len() * NR;
    // SAFETY: as in `floats`; the borrow is exclusive.
    unsafe { std::slice::from_raw_parts_mut(lines.as_mut_ptr().cast::<f32>(), n) }
}

/// `n` rounded up to a whole number of panels.
pub fn padded(n: usize) -> usize {
    n.div_ceil(NR) * NR
}

/// Weights and bias of one layer, packed for the kernels.
#[derive(Clone, Debug)]
pub struct Dense {
    k: usize,
    n: usize,
    layout: Layout,
    /// `n` biases, zero-padded to `padded(n)`.
    bias: Vec<Line>,
    relu: bool,
    /// Whether the AVX2+FMA kernels run (read on x86-64 only).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    simd: bool,
}

#[derive(Clone, Debug)]
enum Layout {
    /// `ceil(n / NR)` panels of `k` lines each.
    Panels(Vec<Line>),
    /// `W` transposed: `n` rows of `k`.
    Rows(Vec<f32>),
}

impl Dense {
    /// Packs row-major `w` (`[k, n]`) and `bias` (`n` values, or none).
    pub fn new(w: &[f32], k: usize, n: usize, bias: Option<&[f32]>, relu: bool) -> Self {
        assert!(
            k > 0 && n > 0 && w.len() == k * n,
            "a [{k}, {n}] weight matrix"
        );
        let mut b = vec![Line::default(); n.div_ceil(NR)];
        if let Some(bias) = bias {
            assert_eq!(bias.len(), n, "one bias per output");
            floats_mut(&mut b)[..n].copy_from_slice(bias);
        }
        let layout = if n <= NARROW {
            let mut rows = vec![0.0; n * k];
            for (kk, wrow) in w.chunks_exact(n).enumerate() {
                for (j, &v) in wrow.iter().enumerate() {
                    rows[j * k + kk] = v;
                }
            }
            Layout::Rows(rows)
        } else {
            let panels = n.div_ceil(NR);
            let mut lines = vec![Line::default(); panels * k];
            for (kk, wrow) in w.chunks_exact(n).enumerate() {
                for (j, &v) in wrow.iter().enumerate() {
                    lines[(j / NR) * k + kk].0[j % NR] = v;
                }
            }
            Layout::Panels(lines)
        };
        Self {
            k,
            n,
            layout,
            bias: b,
            relu,
            simd: simd_available(),
        }
    }

    /// Input width.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Output width.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Sets the bias (`n` values).
    pub fn set_bias(&mut self, bias: &[f32]) {
        assert_eq!(bias.len(), self.n, "one bias per output");
        floats_mut(&mut self.bias)[..self.n].copy_from_slice(bias);
    }

    /// Turns the ReLU epilogue on.
    pub fn set_relu(&mut self) {
        self.relu = true;
    }

    /// Whether the ReLU epilogue is on.
    pub fn relu(&self) -> bool {
        self.relu
    }

    /// Writes rows `0..m` of `C` (`padded(n)` columns of each, padding included) from rows
    /// `0..m` of `A`.
    pub fn run(&self, a: &[f32], lda: usize, m: usize, c: &mut [f32], ldc: usize) {
        let (k, n) = (self.k, self.n);
        assert!(lda >= k && ldc >= padded(n), "strides");
        if m == 0 {
            return;
        }
        assert!(a.len() >= (m - 1) * lda + k, "A holds {m} rows");
        assert!(c.len() >= m * ldc, "C holds {m} rows");
        let bias = floats(&self.bias);
        match &self.layout {
            Layout::Panels(lines) => {
                #[cfg(target_arch = "x86_64")]
                if self.simd {
                    // SAFETY: AVX2 and FMA were detected at construction; the asserts above
                    // bound every row and column the kernel touches.
                    unsafe {
                        avx2::panels(
                            k,
                            n.div_ceil(NR),
                            lines.as_ptr(),
                            bias.as_ptr(),
                            self.relu,
                            a.as_ptr(),
                            lda,
                            m,
                            c.as_mut_ptr(),
                            ldc,
                        )
                    };
                    return;
                }
                portable::panels(k, lines, bias, self.relu, a, lda, m, c, ldc);
            }
            Layout::Rows(rows) => {
                #[cfg(target_arch = "x86_64")]
                if self.simd {
                    // SAFETY: as above; `rows` holds `n * k` floats.
                    unsafe {
                        avx2::rows(
                            k,
                            n,
                            rows.as_ptr(),
                            bias.as_ptr(),
                            self.relu,
                            a.as_ptr(),
                            lda,
                            m,
                            c.as_mut_ptr(),
                            ldc,
                        )
                    };
                    return;
                }
                portable::rows(k, n, rows, bias, self.relu, a, lda, m, c, ldc);
            }
        }
    }
}

/// Whether the AVX2+FMA kernels can run here.
fn simd_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The same computation in plain Rust, for CPUs without AVX2+FMA.
mod portable {
    use super::{Line, NR};

    #[allow(clippy::too_many_arguments)]
    pub fn panels(
        k: usize,
        lines: &[Line],
        bias: &[f32],
        relu: bool,
        a: &[f32],
        lda: usize,
        m: usize,
        c: &mut [f32],
        ldc: usize,
    ) {
        for r in 0..m {
            let arow = &a[r * lda..r * lda + k];
            for (p, panel) in lines.chunks_exact(k).enumerate() {
                let mut acc = [0.0f32; NR];
                for (x, line) in arow.iter().zip(panel) {
                    for (s, w) in acc.iter_mut().zip(&line.0) {
                        *s += x * w;
                    }
                }
                let out = &mut c[r * ldc + p * NR..r * ldc + (p + 1) * NR];
                for ((o, s), b) in out.iter_mut().zip(acc).zip(&bias[p * NR..]) {
                    let v = s + b;
                    *o = if relu && v < 0.0 { 0.0 } else { v };
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub fn rows(
        k: usize,
        n: usize,
        rows: &[f32],
        bias: &[f32],
        relu: bool,
        a: &[f32],
        lda: usize,
        m: usize,
        c: &mut [f32],
        ldc: usize,
    ) {
        for r in 0..m {
            let arow = &a[r * lda..r * lda + k];
            for j in 0..n {
                let s: f32 = arow
                    .iter()
                    .zip(&rows[j * k..(j + 1) * k])
                    .map(|(x, w)| x * w)
                    .sum();
                let v = s + bias[j];
                c[r * ldc + j] = if relu && v < 0.0 { 0.0 } else { v };
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Line, NR};
    use std::arch::x86_64::*;

    /// One `k` step of a tile: `acc[r][p] += a[r][kk] * w[p][kk]`.
    ///
    /// # Safety
    /// As [`tile`], with `kk < k`.
    #[inline(always)]
    unsafe fn step<const R: usize, const P: usize>(
        acc: &mut [[[__m256; 2]; P]; R],
        k: usize,
        w: *const Line,
        a: *const f32,
        lda: usize,
        kk: usize,
    ) {
        for p in 0..P {
            let line = w.add(p * k + kk).cast::<f32>();
            let w0 = _mm256_load_ps(line);
            let w1 = _mm256_load_ps(line.add(8));
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = _mm256_broadcast_ss(&*a.add(r * lda + kk));
                acc[p][0] = _mm256_fmadd_ps(x, w0, acc[p][0]);
                acc[p][1] = _mm256_fmadd_ps(x, w1, acc[p][1]);
            }
        }
    }

    /// `R` rows × `P` consecutive panels of `C`. `w` is the first panel, `bias` its first bias.
    ///
    /// # Safety
    /// AVX2 and FMA are available; `a` holds `R` rows of `k` at stride `lda`; `w` holds `P`
    /// panels of `k` lines; `bias` holds `P * NR` floats; `c` holds `R` rows of `P * NR` at
    /// stride `ldc`.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile<const R: usize, const P: usize>(
        k: usize,
        w: *const Line,
        bias: *const f32,
        relu: bool,
        a: *const f32,
        lda: usize,
        c: *mut f32,
        ldc: usize,
    ) {
        let mut acc = [[[_mm256_setzero_ps(); 2]; P]; R];
        let mut kk = 0;
        while kk + 4 <= k {
            step(&mut acc, k, w, a, lda, kk);
            step(&mut acc, k, w, a, lda, kk + 1);
            step(&mut acc, k, w, a, lda, kk + 2);
            step(&mut acc, k, w, a, lda, kk + 3);
            kk += 4;
        }
        while kk < k {
            step(&mut acc, k, w, a, lda, kk);
            kk += 1;
        }
        let zero = _mm256_setzero_ps();
        for (r, acc) in acc.iter().enumerate() {
            for (p, acc) in acc.iter().enumerate() {
                for (h, &v) in acc.iter().enumerate() {
                    let col = p * NR + h * 8;
                    let mut v = _mm256_add_ps(v, _mm256_loadu_ps(bias.add(col)));
                    if relu {
                        // max(0, v) returns its second operand when either is NaN: NaN stays.
                        v = _mm256_max_ps(zero, v);
                    }
                    _mm256_storeu_ps(c.add(r * ldc + col), v);
                }
            }
        }
    }

    /// Panels `[p0, p1)` for all `m` rows: row blocks of `R`, `P` panels at a time, then the
    /// panels left over one at a time.
    ///
    /// # Safety
    /// As [`panels`].
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn rows_of<const R: usize, const P: usize>(
        k: usize,
        w: *const Line,
        panels: usize,
        bias: *const f32,
        relu: bool,
        a: *const f32,
        lda: usize,
        c: *mut f32,
        ldc: usize,
    ) {
        let mut p = 0;
        while p + P <= panels {
            tile::<R, P>(
                k,
                w.add(p * k),
                bias.add(p * NR),
                relu,
                a,
                lda,
                c.add(p * NR),
                ldc,
            );
            p += P;
        }
        while p < panels {
            tile::<R, 1>(
                k,
                w.add(p * k),
                bias.add(p * NR),
                relu,
                a,
                lda,
                c.add(p * NR),
                ldc,
            );
            p += 1;
        }
    }

    /// `C = A · W + b` (and ReLU) over all panels.
    ///
    /// # Safety
    /// AVX2 and FMA are available; `a` holds `m` rows of `k` at stride `lda`; `w` holds all
    /// `panels` panels of `k` lines and `bias` their `panels * NR` biases; `c` holds `m` rows of
    /// `panels * NR` at stride `ldc`.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn panels(
        k: usize,
        panels: usize,
        w: *const Line,
        bias: *const f32,
        relu: bool,
        a: *const f32,
        lda: usize,
        m: usize,
        c: *mut f32,
        ldc: usize,
    ) {
        // Blocks of 6 rows panel by panel, so that one panel's weights stay in L1 while the
        // rows stream past; the rows left over (and short batches) widen across panels.
        let full = m / 6 * 6;
        let mut p = 0;
        while p < panels && full > 0 {
            let wp = w.add(p * k);
            let mut r = 0;
            while r < full {
                tile::<6, 1>(
                    k,
                    wp,
                    bias.add(p * NR),
                    relu,
                    a.add(r * lda),
                    lda,
                    c.add(r * ldc + p * NR),
                    ldc,
                );
                r += 6;
            }
            p += 1;
        }
        let (a, c) = (a.add(full * lda), c.add(full * ldc));
        match m - full {
            0 => {}
            1 => rows_of::<1, 4>(k, w, panels, bias, relu, a, lda, c, ldc),
            2 => rows_of::<2, 2>(k, w, panels, bias, relu, a, lda, c, ldc),
            3 => rows_of::<3, 2>(k, w, panels, bias, relu, a, lda, c, ldc),
            4 => rows_of::<4, 1>(k, w, panels, bias, relu, a, lda, c, ldc),
            _ => rows_of::<5, 1>(k, w, panels, bias, relu, a, lda, c, ldc),
        }
    }

    /// Horizontal sum of the 8 lanes.
    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    /// Dot products of each row of `A` with each of the `n` rows of `W`ᵀ.
    ///
    /// # Safety
    /// AVX2 and FMA are available; `a` holds `m` rows of `k` at stride `lda`; `wt` holds `n`
    /// rows of `k`; `bias` holds `n` floats; `c` holds `m` rows of `n` at stride `ldc`.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn rows(
        k: usize,
        n: usize,
        wt: *const f32,
        bias: *const f32,
        relu: bool,
        a: *const f32,
        lda: usize,
        m: usize,
        c: *mut f32,
        ldc: usize,
    ) {
        for r in 0..m {
            let x = a.add(r * lda);
            for j in 0..n {
                let w = wt.add(j * k);
                let mut s = [_mm256_setzero_ps(); 4];
                let mut kk = 0;
                while kk + 32 <= k {
                    for (i, s) in s.iter_mut().enumerate() {
                        let o = kk + 8 * i;
                        *s = _mm256_fmadd_ps(
                            _mm256_loadu_ps(x.add(o)),
                            _mm256_loadu_ps(w.add(o)),
                            *s,
                        );
                    }
                    kk += 32;
                }
                while kk + 8 <= k {
                    s[0] = _mm256_fmadd_ps(
                        _mm256_loadu_ps(x.add(kk)),
                        _mm256_loadu_ps(w.add(kk)),
                        s[0],
                    );
                    kk += 8;
                }
                let mut sum = hsum(_mm256_add_ps(
                    _mm256_add_ps(s[0], s[1]),
                    _mm256_add_ps(s[2], s[3]),
                ));
                while kk < k {
                    sum = (*x.add(kk)).mul_add(*w.add(kk), sum);
                    kk += 1;
                }
                let v = sum + *bias.add(j);
                *c.add(r * ldc + j) = if relu && v < 0.0 { 0.0 } else { v };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `C` rows of `act(A · W + b)` in float64.
    fn reference(a: &[f32], w: &[f32], b: &[f32], k: usize, n: usize, relu: bool) -> Vec<f64> {
        a.chunks_exact(k)
            .flat_map(|row| {
                (0..n).map(move |j| {
                    let s: f64 = (0..k)
                        .map(|kk| f64::from(row[kk]) * f64::from(w[kk * n + j]))
                        .sum::<f64>()
                        + f64::from(b[j]);
                    if relu {
                        s.max(0.0)
                    } else {
                        s
                    }
                })
            })
            .collect()
    }

    fn values(seed: &mut u64, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| {
                *seed = seed
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// Every row count a tile can end on, widths on both sides of a panel and of the narrow
    /// limit, `k` on both sides of a vector: the SIMD and portable kernels agree with float64,
    /// and neither reads past a row's `k` values (NaN there would show).
    #[test]
    fn kernels_agree_with_float64_on_every_tile_shape() {
        let mut seed = 5;
        for (k, n) in [
            (1, 1),
            (3, 2),
            (5, 4),
            (8, 5),
            (9, 16),
            (17, 17),
            (33, 40),
            (64, 256),
        ] {
            for relu in [false, true] {
                let w = values(&mut seed, k * n);
                let b = values(&mut seed, n);
                let mut dense = Dense::new(&w, k, n, None, false);
                dense.set_bias(&b);
                if relu {
                    dense.set_relu();
                }
                for m in [1, 2, 3, 4, 5, 6, 7, 11, 12, 13, 25] {
                    let lda = k + 3;
                    let mut a = values(&mut seed, m * lda);
                    a.iter_mut().enumerate().for_each(|(i, v)| {
                        if i % lda >= k {
                            *v = f32::NAN; // past the row's end: must not be read
                        }
                    });
                    let packed: Vec<f32> =
                        a.chunks_exact(lda).flat_map(|r| r[..k].to_vec()).collect();
                    let want = reference(&packed, &w, &b, k, n, relu);
                    let ldc = padded(n);
                    for simd in [true, false] {
                        let mut d = dense.clone();
                        d.simd = d.simd && simd;
                        let mut c = vec![f32::NAN; m * ldc];
                        d.run(&a, lda, m, &mut c, ldc);
                        for r in 0..m {
                            for j in 0..n {
                                let (got, want) = (c[r * ldc + j], want[r * n + j]);
                                assert!(
                                    (f64::from(got) - want).abs() <= 1e-5 * want.abs().max(1.0),
                                    "k {k} n {n} m {m} relu {relu} simd {simd}: [{r}, {j}] {got} vs {want}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn relu_keeps_nan_as_onnxruntime_does() {
        for n in [2, 16] {
            for simd in [true, false] {
                let mut dense = Dense::new(&vec![1.0; 2 * n], 2, n, None, true);
                dense.simd = dense.simd && simd;
                let a = [f32::NAN, 1.0, -3.0, 1.0];
                let mut c = vec![0.0; 2 * padded(n)];
                dense.run(&a, 2, 2, &mut c, padded(n));
                assert!(c[0].is_nan(), "n {n} simd {simd}");
                assert_eq!(c[padded(n)], 0.0, "n {n} simd {simd}");
            }
        }
    }
}
