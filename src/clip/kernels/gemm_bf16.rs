//! bf16 packed matrix multiply: weights rounded to bf16 once at load and packed in 32-column
//! panels of bf16 pairs; each multiply rounds its input rows to bf16 (nearest, ties to even)
//! and sums the exact bf16 products in fp32 with AVX512-BF16's `vdpbf16ps` (two multiply-adds
//! per 32-bit lane, twice fp32's per instruction). The blocking follows [`super::gemm`]'s fp32
//! kernel (12 rows x 32 columns in registers, bias and `quick_gelu` fused into the stores).
//!
//! The bf16 rounding is written out (a few integer operations) rather than taken from the
//! `half` crate so that the activation pass vectorises; a test checks it against the definition.

use rayon::prelude::*;

use crate::clip::kernels::gemm::Epilogue;
use crate::clip::kernels::ops::filled_by;
use crate::clip::kernels::precision::PackedLinear;

/// Columns per kernel call (two 16-lane registers).
pub(crate) const NR: usize = 32;
/// Rows per kernel call.
pub(crate) const MR: usize = 12;
/// Depth of one pass over the packed weights, in bf16 pairs (768 input features).
const KC2: usize = 384;
/// Most column panels one task computes.
const NC: usize = 24;

/// Whether this CPU can run the bf16 kernels (AVX-512F, BW, VL and AVX512-BF16).
pub fn available() -> bool {
    crate::clip::kernels::precision::Caps::detect().bf16
}

/// `x` rounded to the nearest bf16 (ties to even), as its 16 bits; NaN stays NaN.
#[inline]
pub fn to_bf16(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) as u16) | 0x40;
    }
    (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

/// The value of the bf16 with bits `h`.
#[inline]
#[cfg(any(test, feature = "internals"))]
pub fn from_bf16(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// Splits an `m x n` product into tasks that each own a range of 32-column panels (a whole
/// number per thread, at most [`NC`] each, [`column_chunks`](crate::clip::kernels::gemm::column_chunks)) and calls `tile(q, rows, p, cols)` for every
/// `MR`-row panel `q` (with `rows` rows) and column panel `p` (with `cols` columns), row panels
/// outermost within a task so one block of input rows is reused across the task's panels.
pub(crate) fn for_each_tile(m: usize, n: usize, tile: impl Fn(usize, usize, usize, usize) + Sync) {
    let mp = m.div_ceil(MR);
    let np = n.div_ceil(NR);
    let chunks = crate::clip::kernels::gemm::column_chunks(np, NC);
    chunks.into_par_iter().for_each(|(p0, p1)| {
        for q in 0..mp {
            for p in p0..p1 {
                tile(q, MR.min(m - q * MR), p, NR.min(n - p * NR));
            }
        }
    });
}

/// A row stride (in elements of `bytes` bytes) of at least `len` that is not a multiple of
/// 4 KiB: rows that are map to the same L1 sets, and the kernels read 12 rows at once.
pub(crate) fn row_stride(len: usize, bytes: usize) -> usize {
    if (len * bytes).is_multiple_of(4096) {
        len + 64 / bytes
    } else {
        len
    }
}

pub(crate) struct SendPtr(pub(crate) *mut f32);
// SAFETY: used only for writes to disjoint tiles of the output.
unsafe impl Sync for SendPtr {}
unsafe impl Send for SendPtr {}

/// A `[n, k]` weight matrix (PyTorch's `Linear` layout) and optional bias, rounded to bf16 and
/// packed for [`PackedBf16::matmul`]; computes `bf16(x) · bf16(W)ᵀ + b` with fp32 sums.
pub struct PackedBf16 {
    n: usize,
    k: usize,
    /// Input features in pairs, `ceil(k / 2)`.
    k2: usize,
    /// `ceil(n / NR)` panels of `k2 * NR` pairs: panel `p`, pair `kk`, column `j` holds
    /// `W[p*NR+j][2kk]` in the low and `W[p*NR+j][2kk+1]` in the high 16 bits (zero past the ends).
    panels: Vec<u32>,
    /// The bias padded to whole panels.
    bias: Vec<f32>,
}

impl PackedBf16 {
    /// Rounds and packs `weight` (`n * k` values, row-major `[n, k]`) and `bias` (`n` values).
    pub fn new(weight: &[f32], bias: Option<&[f32]>, n: usize, k: usize) -> Self {
        assert_eq!(weight.len(), n * k, "weight must hold n * k values");
        let k2 = k.div_ceil(2);
        let np = n.div_ceil(NR);
        let mut panels = vec![0u32; np * k2 * NR];
        panels
            .par_chunks_mut((k2 * NR).max(1))
            .enumerate()
            .for_each(|(p, panel)| {
                for j in 0..NR.min(n - p * NR) {
                    let row = &weight[(p * NR + j) * k..(p * NR + j + 1) * k];
                    for (kk, pair) in row.chunks(2).enumerate() {
                        let lo = to_bf16(pair[0]) as u32;
                        let hi = pair.get(1).map_or(0, |&w| to_bf16(w) as u32);
                        panel[kk * NR + j] = lo | (hi << 16);
                    }
                }
            });
        let mut padded = vec![0f32; np * NR];
        if let Some(b) = bias {
            assert_eq!(b.len(), n, "bias must hold n values");
            padded[..n].copy_from_slice(b);
        }
        PackedBf16 {
            n,
            k,
            k2,
            panels,
            bias: padded,
        }
    }

    /// `out = bf16(x) · bf16(W)ᵀ + b`, then `epilogue`, for `x` of `m` rows of `k` values.
    ///
    /// Panics if the CPU lacks AVX512-BF16 (check [`available`]) or the lengths disagree.
    #[cfg(any(test, feature = "internals"))]
    pub fn matmul(&self, x: &[f32], m: usize, out: &mut [f32], epilogue: Epilogue) {
        assert_eq!(out.len(), m * self.n, "output must hold m * n values");
        // SAFETY: `out` holds m * n values.
        unsafe { self.matmul_into(x, m, out.as_mut_ptr(), epilogue) }
    }

    /// Writes all `m * n` results to `out`.
    ///
    /// # Safety
    /// `out` must be valid for writes of `m * n` values and not overlap `x`.
    unsafe fn matmul_into(&self, x: &[f32], m: usize, out: *mut f32, epilogue: Epilogue) {
        assert!(available(), "the bf16 kernels need AVX512-BF16");
        let (n, k, k2) = (self.n, self.k, self.k2);
        assert_eq!(x.len(), m * k, "input must hold m * k values");
        if m == 0 || n == 0 {
            return;
        }
        let gelu = epilogue == Epilogue::QuickGelu;
        // The input rows rounded to bf16, in pairs (the odd tail padded with zero).
        let lda = row_stride(k2.max(1), 4);
        let mut a = vec![0u32; m * lda];
        a.par_chunks_mut(lda)
            .zip(x.par_chunks(k.max(1)))
            // SAFETY: `available()` was asserted above; `d` holds `ceil(k / 2)` pairs.
            .for_each(|(d, s)| unsafe { x86::round_row(s, d) });
        let out_ptr = SendPtr(out);
        for_each_tile(m, n, |q, rows, p, cols| {
            let out_ptr = &out_ptr;
            let panel = &self.panels[p * k2 * NR..(p + 1) * k2 * NR];
            let bias = &self.bias[p * NR..(p + 1) * NR];
            let mut k0 = 0;
            loop {
                let kc = KC2.min(k2 - k0);
                let first = k0 == 0;
                let last = k0 + kc == k2;
                // SAFETY: tile (q, p) of `out` lies within its m * n values and belongs to
                // this call alone; the input and panel slices hold `kc` pairs from `k0`.
                unsafe {
                    dispatch(
                        rows,
                        kc,
                        a[q * MR * lda + k0..].as_ptr(),
                        lda,
                        panel[k0 * NR..].as_ptr(),
                        out_ptr.0.add(q * MR * n + p * NR),
                        n,
                        cols,
                        first.then_some(bias),
                        gelu && last,
                    );
                }
                k0 += kc;
                if k0 >= k2 {
                    break;
                }
            }
        });
    }
}

impl PackedLinear for PackedBf16 {
    fn in_features(&self) -> usize {
        self.k
    }
    fn out_features(&self) -> usize {
        self.n
    }
    fn matmul_vec(&self, x: &[f32], m: usize, epilogue: Epilogue) -> Vec<f32> {
        // SAFETY: `matmul_into` writes all m * n values.
        unsafe { filled_by(m * self.n, |out| self.matmul_into(x, m, out, epilogue)) }
    }
}

/// Runs the kernel for `rows` (1..=MR) rows.
///
/// # Safety
/// As [`x86::kernel`].
#[allow(clippy::too_many_arguments)]
unsafe fn dispatch(
    rows: usize,
    kc: usize,
    a: *const u32,
    lda: usize,
    b: *const u32,
    c: *mut f32,
    ldc: usize,
    cols: usize,
    bias: Option<&[f32]>,
    gelu: bool,
) {
    #[cfg(target_arch = "x86_64")]
    {
        use x86::kernel;
        macro_rules! go {
            ($($r:literal)*) => {
                match rows {
                    $($r => kernel::<$r>(kc, a, lda, b, c, ldc, cols, bias, gelu),)*
                    _ => unreachable!("row panels hold 1..=MR rows"),
                }
            };
        }
        go!(1 2 3 4 5 6 7 8 9 10 11 12)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (rows, kc, a, lda, b, c, ldc, cols, bias, gelu);
        unreachable!("the bf16 kernels are only built for x86_64")
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::NR;
    use crate::clip::kernels::simd::avx512::quick_gelu;
    use std::arch::x86_64::*;

    /// [`super::to_bf16`] of each value of `x`, written as consecutive 16-bit halves of `out`
    /// (an odd tail's high half left as it is), 16 lanes at a time.
    ///
    /// # Safety
    /// AVX-512F, BW and VL available; `out` holds at least `ceil(x.len() / 2)` pairs.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(super) unsafe fn round_row(x: &[f32], out: &mut [u32]) {
        assert!(out.len() * 2 >= x.len());
        let (k, xp, op) = (x.len(), x.as_ptr(), out.as_mut_ptr().cast::<u16>());
        let round = |v: __m512| {
            let b = _mm512_castps_si512(v);
            let odd = _mm512_and_si512(_mm512_srli_epi32::<16>(b), _mm512_set1_epi32(1));
            let r = _mm512_srli_epi32::<16>(_mm512_add_epi32(
                b,
                _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff)),
            ));
            let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
            let quiet = _mm512_or_si512(_mm512_srli_epi32::<16>(b), _mm512_set1_epi32(0x40));
            _mm512_cvtepi32_epi16(_mm512_mask_blend_epi32(nan, r, quiet))
        };
        for c in 0..k / 16 {
            _mm256_storeu_si256(
                op.add(16 * c).cast(),
                round(_mm512_loadu_ps(xp.add(16 * c))),
            );
        }
        let tail = k % 16;
        let tmask: __mmask16 = ((1u32 << tail) - 1) as u16;
        let r = round(_mm512_maskz_loadu_ps(tmask, xp.add(k - tail)));
        _mm256_mask_storeu_epi16(op.add(k - tail).cast(), tmask, r);
    }

    /// `C[R x cols] (+)= A[R x kc pairs] · B[kc pairs x NR]` in fp32 from bf16 pairs: `A` rows
    /// `lda` pairs apart, `B` packed as `kk * NR + j`. With `bias`, `C` is overwritten with the
    /// product plus the bias; without, the product is added to `C`. With `gelu`, `quick_gelu`
    /// is applied before the store.
    ///
    /// # Safety
    /// AVX-512F and AVX512-BF16 available; `a` readable for `R` rows of `kc` pairs, `b` for
    /// `kc * NR` pairs, `c` valid for `R` rows of stride `ldc` and `cols` columns.
    #[target_feature(enable = "avx512f,avx512bf16")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn kernel<const R: usize>(
        kc: usize,
        a: *const u32,
        lda: usize,
        b: *const u32,
        c: *mut f32,
        ldc: usize,
        cols: usize,
        bias: Option<&[f32]>,
        gelu: bool,
    ) {
        let m0: __mmask16 = if cols >= 16 {
            0xffff
        } else {
            (1u32 << cols) as u16 - 1
        };
        let m1: __mmask16 = if cols >= 32 {
            0xffff
        } else if cols > 16 {
            (1u32 << (cols - 16)) as u16 - 1
        } else {
            0
        };
        let mut acc = [[_mm512_setzero_ps(); 2]; R];
        match bias {
            Some(bias) => {
                let b0 = _mm512_loadu_ps(bias.as_ptr());
                let b1 = _mm512_loadu_ps(bias.as_ptr().add(16));
                for row in acc.iter_mut() {
                    *row = [b0, b1];
                }
            }
            None => {
                for (i, row) in acc.iter_mut().enumerate() {
                    let p = c.add(i * ldc);
                    row[0] = _mm512_maskz_loadu_ps(m0, p);
                    row[1] = _mm512_maskz_loadu_ps(m1, p.add(16));
                }
            }
        }
        let mut ap = a;
        let mut bp = b;
        for _ in 0..kc {
            let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp.cast()));
            let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp.add(16).cast()));
            for (i, row) in acc.iter_mut().enumerate() {
                let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(*ap.add(i * lda) as i32));
                row[0] = _mm512_dpbf16_ps(row[0], av, b0);
                row[1] = _mm512_dpbf16_ps(row[1], av, b1);
            }
            ap = ap.add(1);
            bp = bp.add(NR);
        }
        if gelu {
            for row in acc.iter_mut() {
                row[0] = quick_gelu(row[0]);
                row[1] = quick_gelu(row[1]);
            }
        }
        for (i, row) in acc.iter().enumerate() {
            let p = c.add(i * ldc);
            _mm512_mask_storeu_ps(p, m0, row[0]);
            _mm512_mask_storeu_ps(p.add(16), m1, row[1]);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..len)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect()
    }

    /// Checks `got` against an f64 product of `x` and `w` (already in the kernel's input
    /// precision): each entry within fp32 summation error, `k` roundings of the largest
    /// partial sum, of the exact value.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn check_product(
        got: &[f32],
        x: &[f64],
        w: &[f64],
        scale: impl Fn(usize, usize) -> f64,
        bias: Option<&[f32]>,
        m: usize,
        n: usize,
        k: usize,
    ) {
        for i in 0..m {
            for j in 0..n {
                let s = scale(i, j);
                let (mut sum, mut abs) = (0f64, 0f64);
                for kk in 0..k {
                    let t = x[i * k + kk] * w[j * k + kk];
                    sum += t;
                    abs += t.abs();
                }
                let b = bias.map_or(0.0, |b| b[j] as f64);
                let want = sum * s + b;
                let tol = (abs * s + b.abs()) * (k as f64 + 4.0) * f32::EPSILON as f64 + 1e-30;
                let g = got[i * n + j] as f64;
                assert!(
                    (g - want).abs() <= tol,
                    "m={m} n={n} k={k} at ({i},{j}): {g} vs {want} (tolerance {tol:e})"
                );
            }
        }
    }

    #[test]
    fn rounding_is_to_nearest_even() {
        // Exactly halfway between two bf16 values: ties go to the even one.
        assert_eq!(to_bf16(f32::from_bits(0x3f80_8000)), 0x3f80);
        assert_eq!(to_bf16(f32::from_bits(0x3f81_8000)), 0x3f82);
        // Just past halfway rounds up; just short rounds down.
        assert_eq!(to_bf16(f32::from_bits(0x3f80_8001)), 0x3f81);
        assert_eq!(to_bf16(f32::from_bits(0x3f80_7fff)), 0x3f80);
        assert_eq!(to_bf16(-1.0), 0xbf80);
        assert_eq!(to_bf16(f32::INFINITY), 0x7f80);
        assert_eq!(to_bf16(f32::MAX), 0x7f80, "rounds up past the largest bf16");
        assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
        // Against the definition: the nearer of the two neighbours, ties to the even one.
        for x in values(10_000, 7) {
            let x = x * 1e3;
            let h = to_bf16(x);
            let (lo, hi) = (
                x.to_bits() & 0xffff_0000,
                (x.to_bits() & 0xffff_0000) + 0x1_0000,
            );
            let (dl, dh) = (
                (x as f64 - f32::from_bits(lo) as f64).abs(),
                (x as f64 - f32::from_bits(hi) as f64).abs(),
            );
            let want = if dl < dh || (dl == dh && (lo >> 16) % 2 == 0) {
                lo
            } else {
                hi
            };
            assert_eq!(h as u32, want >> 16, "{x}");
        }
    }

    #[test]
    fn vector_rounding_matches_the_scalar_one() {
        if !available() {
            crate::util::testing::skipped("this CPU has no AVX512-BF16");
            return;
        }
        for k in [0, 1, 15, 16, 17, 33, 768] {
            let mut x: Vec<f32> = values(k, k as u64).iter().map(|v| v * 1e4).collect();
            if k > 4 {
                x[0] = f32::from_bits(0x3f80_8000);
                x[1] = f32::NAN;
                x[2] = f32::MAX;
                x[3] = -0.0;
            }
            let mut got = vec![0xdead_beefu32; k.div_ceil(2) + 2];
            unsafe { x86::round_row(&x, &mut got) };
            for (i, &v) in x.iter().enumerate() {
                let h = (got[i / 2] >> (16 * (i % 2))) as u16;
                assert_eq!(h, to_bf16(v), "k={k} at {i}: {v}");
            }
            if k % 2 == 1 {
                assert_eq!(got[k / 2] >> 16, 0xdead, "k={k}: wrote past the row");
            }
            assert_eq!(got[k.div_ceil(2)], 0xdead_beef, "k={k}: wrote past the row");
        }
    }

    #[test]
    fn matches_an_f64_product_of_the_rounded_inputs() {
        if !available() {
            crate::util::testing::skipped("this CPU has no AVX512-BF16");
            return;
        }
        for &(m, n, k) in &[
            (1, 1, 1),
            (13, 33, 7),
            (12, 32, 768),
            (25, 17, 769),
            (50, 64, 1600),
            (7, 100, 2),
            (3, 31, 0),
        ] {
            let w = values(n * k, 1 + m as u64);
            let b = values(n, 2);
            let x = values(m * k, 3 + n as u64);
            let r = |v: &[f32]| -> Vec<f64> {
                v.iter().map(|&v| from_bf16(to_bf16(v)) as f64).collect()
            };
            for bias in [None, Some(b.as_slice())] {
                let p = PackedBf16::new(&w, bias, n, k);
                let mut out = vec![f32::NAN; m * n];
                p.matmul(&x, m, &mut out, Epilogue::None);
                check_product(&out, &r(&x), &r(&w), |_, _| 1.0, bias, m, n, k);
            }
        }
    }

    #[test]
    fn fused_quick_gelu_matches_the_scalar_formula() {
        if !available() {
            crate::util::testing::skipped("this CPU has no AVX512-BF16");
            return;
        }
        let (m, n, k) = (30, 70, 50);
        let w = values(n * k, 4);
        let b = values(n, 5);
        let x: Vec<f32> = values(m * k, 6).iter().map(|v| v * 40.0).collect();
        let p = PackedBf16::new(&w, Some(&b), n, k);
        let mut plain = vec![0f32; m * n];
        p.matmul(&x, m, &mut plain, Epilogue::None);
        let mut fused = vec![0f32; m * n];
        p.matmul(&x, m, &mut fused, Epilogue::QuickGelu);
        assert!(plain.iter().any(|&v| v < -20.0) && plain.iter().any(|&v| v > 20.0));
        for (&y, &g) in plain.iter().zip(&fused) {
            let want = y / (1.0 + (-1.702 * y).exp());
            assert!(
                (g - want).abs() <= 2e-7 * want.abs().max(1.0),
                "{y}: {g} vs {want}"
            );
        }
    }
}
