//! The AVX2 + FMA micro-kernel of the packed fp32 matrix multiply, for x86 CPUs without
//! AVX-512 (AMD Zen 2/3, Intel before Ice Lake, many cloud machines).
//!
//! [`crate::clip::kernels::gemm::PackedWeight`] owns the packing, blocking and threading; this
//! module computes one 6x16 block of the output: twelve 8-lane accumulators (6 rows x 2
//! registers), two registers of packed weights and one broadcast input value, 15 of the 16
//! `ymm` registers. The bias is loaded into the accumulators and `quick_gelu` applied before
//! the store, as in the AVX-512 kernel. Hand-written for the same reason as that one: candle's
//! matmul cannot fuse the bias and activation, and repacks its operands on every call.

use super::gemm::A;

/// Columns of the output computed by one kernel call (two 8-lane registers); the panel width
/// of weights packed for [`crate::clip::kernels::simd::Isa::Avx2`].
pub(super) const NR: usize = 16;
/// Rows of the output computed by one kernel call.
pub(super) const MR: usize = 6;
/// Depth of one pass: a 256 x 16 block of weights (16 KiB) and 6 input rows of 256 values
/// (6 KiB) fit a 32 KiB L1 (Zen 2/3, Skylake). 768 (the AVX-512 depth) measured about 10%
/// slower here (`bench_gemm`, one thread: 63-67 against 70-77 GFLOP per CPU-second), 384 the same.
pub(super) const KC: usize = 256;
/// Most column panels one task computes (768 columns, as before the AVX-512 split was tuned).
pub(super) const NC: usize = 48;

/// Runs the kernel for a block of `rows` (1..=MR) rows.
///
/// # Safety
/// `c` must be valid for `rows` rows of stride `ldc` and `cols` (1..=NR) columns; `a` for
/// `rows` rows of `kc` values; `b` holds `kc * NR` values and `bias` (if any) `NR`; the CPU has
/// AVX2 and FMA.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn dispatch(
    rows: usize,
    kc: usize,
    a: A,
    b: &[f32],
    c: *mut f32,
    ldc: usize,
    cols: usize,
    bias: Option<&[f32]>,
    gelu: bool,
) {
    #[cfg(target_arch = "x86_64")]
    {
        use x86::kernel;
        match rows {
            6 => kernel::<6>(kc, a, b, c, ldc, cols, bias, gelu),
            5 => kernel::<5>(kc, a, b, c, ldc, cols, bias, gelu),
            4 => kernel::<4>(kc, a, b, c, ldc, cols, bias, gelu),
            3 => kernel::<3>(kc, a, b, c, ldc, cols, bias, gelu),
            2 => kernel::<2>(kc, a, b, c, ldc, cols, bias, gelu),
            1 => kernel::<1>(kc, a, b, c, ldc, cols, bias, gelu),
            _ => unreachable!("row blocks hold 1..=MR rows"),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (rows, kc, a, b, c, ldc, cols, bias, gelu);
        unreachable!("the packed kernels are only built for x86_64")
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{A, NR};
    use crate::clip::kernels::simd::avx2::quick_gelu;
    use std::arch::x86_64::*;

    /// `C[R x cols] (+)= A[R x kc] · B[kc x NR]`, with `A` read in place (rows `row_stride` apart)
    /// and `B` packed as `kk * NR + j`. With `bias`, `C` is overwritten with the product plus the
    /// bias; without, the product is added to `C`. With `gelu`, `quick_gelu` is applied to the
    /// result before it is stored.
    ///
    /// # Safety
    /// AVX2 and FMA must be available; `c` valid for `R` rows of stride `ldc` and `cols` columns.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn kernel<const R: usize>(
        kc: usize,
        a: A,
        b: &[f32],
        c: *mut f32,
        ldc: usize,
        cols: usize,
        bias: Option<&[f32]>,
        gelu: bool,
    ) {
        debug_assert!(b.len() >= kc * NR && (1..=NR).contains(&cols));
        // Lane masks for a panel cut short by the matrix's last column (all lanes otherwise).
        let full = cols == NR;
        let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let m0 = _mm256_cmpgt_epi32(_mm256_set1_epi32(cols as i32), lanes);
        let m1 = _mm256_cmpgt_epi32(_mm256_set1_epi32(cols as i32 - 8), lanes);
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        match bias {
            Some(bias) => {
                let b0 = _mm256_loadu_ps(bias.as_ptr());
                let b1 = _mm256_loadu_ps(bias.as_ptr().add(8));
                for row in acc.iter_mut() {
                    *row = [b0, b1];
                }
            }
            None => {
                for (i, row) in acc.iter_mut().enumerate() {
                    let p = c.add(i * ldc);
                    if full {
                        row[0] = _mm256_loadu_ps(p);
                        row[1] = _mm256_loadu_ps(p.add(8));
                    } else {
                        row[0] = _mm256_maskload_ps(p, m0);
                        row[1] = _mm256_maskload_ps(p.add(8), m1);
                    }
                }
            }
        }
        let mut ap = a.ptr;
        let mut bp = b.as_ptr();
        for _ in 0..kc {
            let b0 = _mm256_loadu_ps(bp);
            let b1 = _mm256_loadu_ps(bp.add(8));
            for (i, row) in acc.iter_mut().enumerate() {
                let av = _mm256_broadcast_ss(&*ap.add(i * a.row_stride));
                row[0] = _mm256_fmadd_ps(av, b0, row[0]);
                row[1] = _mm256_fmadd_ps(av, b1, row[1]);
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
            if full {
                _mm256_storeu_ps(p, row[0]);
                _mm256_storeu_ps(p.add(8), row[1]);
            } else {
                _mm256_maskstore_ps(p, m0, row[0]);
                _mm256_maskstore_ps(p.add(8), m1, row[1]);
            }
        }
    }
}
