//! Packed single-precision matrix multiply for the transformers' linear layers.
//!
//! candle's CPU matmul (the `gemm` crate) runs generic AVX2 kernels on stable Rust, even on CPUs
//! with AVX-512. [`PackedWeight`] repacks each weight matrix once, at load time, into column
//! panels sized for one instruction set ([`Isa`]), and multiplies with a register-blocked kernel
//! that reads the input rows in place and adds the bias (and `quick_gelu`) in the same pass:
//! 12x32 with AVX-512F (below), 6x16 with AVX2 + FMA ([`super::gemm_avx2`]). The blocking
//! (passes of a fixed depth, a few column panels per task, sized to stay in L2) and the rayon
//! split ([`column_chunks`]) are shared.
//! CPUs with neither keep candle's matmul.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape};
use rayon::prelude::*;

pub use crate::clip::kernels::simd::Isa;

/// Columns of the output computed by one AVX-512 kernel call (two 16-lane registers).
const NR: usize = 32;
/// Rows of the output computed by one AVX-512 kernel call; `MR * 2` accumulators stay in
/// registers.
const MR: usize = 12;
/// Depth of one pass over the packed weights (AVX-512).
const KC: usize = 768;
/// Most column panels one AVX-512 task computes: 8 panels of a 768-deep pass are 768 KiB of
/// packed weights, which stay in a 1 MiB (Zen 4) or 2 MiB (Sapphire Rapids) L2 while the task
/// sweeps every row panel over them. 24 (2.3 MiB) spilled to L3 on the Xeon: fc1 and QKV of
/// ViT-B/32 ran 9-21% slower (README "Performance").
const NC: usize = 8;

impl Isa {
    /// `(rows, columns)` of the output one kernel call computes (columns: the panel width),
    /// the depth of one pass and the most column panels one task computes.
    fn block(self) -> (usize, usize, usize, usize) {
        use super::gemm_avx2 as avx2;
        match self {
            Isa::Avx512 => (MR, NR, KC, NC),
            Isa::Avx2 => (avx2::MR, avx2::NR, avx2::KC, avx2::NC),
        }
    }
}

/// Whether this CPU can run the packed fp32 kernels ([`Isa::best`] is not `None`).
pub fn available() -> bool {
    Isa::best().is_some()
}

/// What happens to each result of a packed matrix multiply before it is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Epilogue {
    /// Stored as computed.
    None,
    /// `x * sigmoid(1.702 x)` (CLIP's `quick_gelu`), fused so the activation costs no extra pass.
    QuickGelu,
}

/// A `[n, k]` weight matrix (PyTorch's `Linear` layout) and optional bias, repacked into
/// column panels for one [`Isa`]'s kernel; computes `x · Wᵀ + b`.
pub struct PackedWeight {
    n: usize,
    k: usize,
    /// The kernel the panels are laid out for.
    isa: Isa,
    /// `ceil(n / nr)` panels of `nr` columns (32 for AVX-512, 16 for AVX2), each `k * nr`
    /// values: panel `p`, depth `kk`, column `j` holds `W[p * nr + j][kk]` (zero past `n`).
    panels: Vec<f32>,
    /// The bias padded to whole panels (zeros when the layer has none).
    bias: Vec<f32>,
}

impl PackedWeight {
    /// Packs `weight` (`n * k` values, row-major `[n, k]`) and `bias` (`n` values) for the best
    /// kernel this CPU has ([`Isa::best`]; AVX-512's layout where it has none, which
    /// [`PackedWeight::matmul`] then refuses).
    pub fn new(weight: &[f32], bias: Option<&[f32]>, n: usize, k: usize) -> Self {
        Self::new_for(Isa::best().unwrap_or(Isa::Avx512), weight, bias, n, k)
    }

    /// Packs `weight` and `bias` as [`PackedWeight::new`] does, for `isa`'s kernel.
    pub fn new_for(isa: Isa, weight: &[f32], bias: Option<&[f32]>, n: usize, k: usize) -> Self {
        assert_eq!(weight.len(), n * k, "weight must hold n * k values");
        let nr = isa.block().1;
        let np = n.div_ceil(nr);
        let mut panels = vec![0f32; np * k * nr];
        panels
            .par_chunks_mut((k * nr).max(1))
            .enumerate()
            .for_each(|(p, panel)| {
                for j in 0..nr.min(n - p * nr) {
                    let row = &weight[(p * nr + j) * k..(p * nr + j + 1) * k];
                    for (kk, &w) in row.iter().enumerate() {
                        panel[kk * nr + j] = w;
                    }
                }
            });
        let mut padded = vec![0f32; np * nr];
        if let Some(b) = bias {
            assert_eq!(b.len(), n, "bias must hold n values");
            padded[..n].copy_from_slice(b);
        }
        PackedWeight {
            n,
            k,
            isa,
            panels,
            bias: padded,
        }
    }

    /// The instruction set the weights are packed for.
    #[cfg(any(test, feature = "internals"))]
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// `out = x · Wᵀ + b` for `x` of `m` rows of `k` values; `out` holds `m * n` values.
    ///
    /// Panics if the CPU lacks the weights' [`Isa`] or the lengths disagree.
    #[cfg(any(test, feature = "internals"))]
    pub fn matmul(&self, x: &[f32], m: usize, out: &mut [f32]) {
        self.matmul_then(x, m, out, Epilogue::None)
    }

    /// As `PackedWeight::matmul`, applying `epilogue` to each result as it is stored.
    #[cfg(any(test, feature = "internals"))]
    pub fn matmul_then(&self, x: &[f32], m: usize, out: &mut [f32], epilogue: Epilogue) {
        assert_eq!(out.len(), m * self.n, "output must hold m * n values");
        // SAFETY: `out` holds m * n values.
        unsafe { self.matmul_into(x, m, out.as_mut_ptr(), epilogue) }
    }

    /// Allocates the `m * n` output and fills it, without zeroing it first.
    fn matmul_vec(&self, x: &[f32], m: usize, epilogue: Epilogue) -> Vec<f32> {
        // SAFETY: `matmul_into` writes all m * n values.
        unsafe {
            crate::clip::kernels::ops::filled_by(m * self.n, |out| {
                self.matmul_into(x, m, out, epilogue)
            })
        }
    }

    /// Writes all `m * n` results to `out`.
    ///
    /// # Safety
    /// `out` must be valid for writes of `m * n` values, and not overlap `x`.
    unsafe fn matmul_into(&self, x: &[f32], m: usize, out: *mut f32, epilogue: Epilogue) {
        assert!(
            self.isa.available(),
            "weights packed for {} on a CPU without it",
            self.isa.name()
        );
        let (n, k, isa) = (self.n, self.k, self.isa);
        let (mr, nr, kc_max, nc) = isa.block();
        assert_eq!(x.len(), m * k, "input must hold m * k values");
        if m == 0 || n == 0 {
            return;
        }
        let gelu = epilogue == Epilogue::QuickGelu;
        if k == 0 {
            for i in 0..m {
                for (j, &b) in self.bias[..n].iter().enumerate() {
                    let v = if gelu {
                        b / (1.0 + (-1.702 * b).exp())
                    } else {
                        b
                    };
                    // SAFETY: i * n + j < m * n.
                    unsafe { out.add(i * n + j).write(v) };
                }
            }
            return;
        }
        // Rows a multiple of 4 KiB apart map to the same L1 sets, and the kernel reads 12 rows
        // at once: copy such inputs to rows padded by one cache line.
        let padded;
        let (x, lda) = if (k * 4).is_multiple_of(4096) {
            let lda = k + 16;
            let mut buf = vec![0f32; m * lda];
            buf.par_chunks_mut(lda)
                .zip(x.par_chunks(k))
                .for_each(|(d, s)| d[..k].copy_from_slice(s));
            padded = buf;
            (&padded[..], lda)
        } else {
            (x, k)
        };
        let out_ptr = SendPtr(out);
        let mp = m.div_ceil(mr);
        let np = n.div_ceil(nr);
        let chunks = column_chunks(np, nc);
        chunks.into_par_iter().for_each(|(p0, p1)| {
            let out_ptr = &out_ptr;
            // Passes of equal depth: 1,024 features make two of 512, not 768 and a short 256
            // that pays a whole pass's loads and stores of the output for a quarter of the work
            // (ViT-L's QKV: about 15% faster). The sums run in the same order either way.
            let kc_max = k.div_ceil(k.div_ceil(kc_max));
            let mut k0 = 0;
            while k0 < k {
                let kc = kc_max.min(k - k0);
                for q in 0..mp {
                    let rows = mr.min(m - q * mr);
                    let a = A {
                        ptr: x[q * mr * lda + k0..].as_ptr(),
                        row_stride: lda,
                    };
                    for p in p0..p1 {
                        let cols = nr.min(n - p * nr);
                        let panel = &self.panels[p * k * nr..(p + 1) * k * nr];
                        let bias = &self.bias[p * nr..(p + 1) * nr];
                        let b = &panel[k0 * nr..(k0 + kc) * nr];
                        // SAFETY: each task writes only columns `p0 * nr .. p1 * nr` (clipped to
                        // `n`) of `out` (m * n values); tasks own disjoint column ranges; the
                        // CPU has `isa` (asserted above).
                        unsafe {
                            let c = out_ptr.0.add(q * mr * n + p * nr);
                            let bias = (k0 == 0).then_some(bias);
                            let last = k0 + kc == k;
                            match isa {
                                Isa::Avx512 => {
                                    dispatch(rows, kc, a, b, c, n, cols, bias, gelu && last)
                                }
                                Isa::Avx2 => super::gemm_avx2::dispatch(
                                    rows,
                                    kc,
                                    a,
                                    b,
                                    c,
                                    n,
                                    cols,
                                    bias,
                                    gelu && last,
                                ),
                            }
                        }
                    }
                }
                k0 += kc;
            }
        });
    }
}

/// `np` column panels split into ranges for the rayon tasks: a whole number of ranges per
/// thread, each at most `most` panels, sizes differing by at most one panel (72 panels over 2
/// threads, at most 8 each: ten ranges of 7 or 8, five per thread, not nine of 8 that leave
/// one thread a range more than the other).
pub(crate) fn column_chunks(np: usize, most: usize) -> Vec<(usize, usize)> {
    let threads = rayon::current_num_threads().max(1);
    let chunks = (threads * np.div_ceil(threads * most.max(1))).clamp(1, np.max(1));
    (0..chunks)
        .map(|i| (i * np / chunks, (i + 1) * np / chunks))
        .filter(|(a, b)| a < b)
        .collect()
}

/// Where a kernel reads its rows of the input: value `(i, kk)` is at `ptr + i * row_stride + kk`.
#[derive(Clone, Copy)]
pub(super) struct A {
    pub(super) ptr: *const f32,
    pub(super) row_stride: usize,
}

struct SendPtr(*mut f32);
// SAFETY: the pointer is only used for the disjoint writes described in `matmul`.
unsafe impl Sync for SendPtr {}
unsafe impl Send for SendPtr {}

/// Runs the AVX-512 kernel for a panel of `rows` (1..=MR) rows.
///
/// # Safety
/// `c` must be valid for `rows` rows of stride `ldc` and `cols` columns; AVX-512F available.
#[allow(clippy::too_many_arguments)]
unsafe fn dispatch(
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
            12 => kernel::<12>(kc, a, b, c, ldc, cols, bias, gelu),
            11 => kernel::<11>(kc, a, b, c, ldc, cols, bias, gelu),
            10 => kernel::<10>(kc, a, b, c, ldc, cols, bias, gelu),
            9 => kernel::<9>(kc, a, b, c, ldc, cols, bias, gelu),
            8 => kernel::<8>(kc, a, b, c, ldc, cols, bias, gelu),
            7 => kernel::<7>(kc, a, b, c, ldc, cols, bias, gelu),
            6 => kernel::<6>(kc, a, b, c, ldc, cols, bias, gelu),
            5 => kernel::<5>(kc, a, b, c, ldc, cols, bias, gelu),
            4 => kernel::<4>(kc, a, b, c, ldc, cols, bias, gelu),
            3 => kernel::<3>(kc, a, b, c, ldc, cols, bias, gelu),
            2 => kernel::<2>(kc, a, b, c, ldc, cols, bias, gelu),
            1 => kernel::<1>(kc, a, b, c, ldc, cols, bias, gelu),
            _ => unreachable!("row panels hold 1..=MR rows"),
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
    use crate::clip::kernels::simd::avx512::quick_gelu;
    use std::arch::x86_64::*;

    /// `C[R x cols] (+)= A[R x kc] · B[kc x NR]`, with `A` read in place (rows `row_stride` apart)
    /// and `B` packed as `kk * NR + j`. With `bias`, `C` is overwritten with the product plus the
    /// bias; without, the product is added to `C`. With `gelu`, `quick_gelu` is applied to the
    /// result before it is stored.
    ///
    /// # Safety
    /// AVX-512F must be available; `c` valid for `R` rows of stride `ldc` and `cols` columns.
    #[target_feature(enable = "avx512f")]
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
        debug_assert!(b.len() >= kc * NR);
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
        let mut ap = a.ptr;
        let mut bp = b.as_ptr();
        for _ in 0..kc {
            let b0 = _mm512_loadu_ps(bp);
            let b1 = _mm512_loadu_ps(bp.add(16));
            for (i, row) in acc.iter_mut().enumerate() {
                let av = _mm512_set1_ps(*ap.add(i * a.row_stride));
                row[0] = _mm512_fmadd_ps(av, b0, row[0]);
                row[1] = _mm512_fmadd_ps(av, b1, row[1]);
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

/// [`PackedWeight`] as a candle operation on a contiguous f32 CPU tensor whose last dimension
/// is the input features; see [`PackedWeight::op`].
pub struct PackedOp<'a> {
    weight: &'a PackedWeight,
    epilogue: Epilogue,
}

impl PackedWeight {
    /// The multiply (and `epilogue`) as a candle operation: `x.apply_op1_no_bwd(&w.op(e))`.
    pub fn op(&self, epilogue: Epilogue) -> PackedOp<'_> {
        PackedOp {
            weight: self,
            epilogue,
        }
    }
}

impl CustomOp1 for PackedOp<'_> {
    fn name(&self) -> &'static str {
        "packed-linear"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let data = crate::clip::kernels::ops::contiguous_f32(storage, layout, self.name())?;
        let dims = layout.dims();
        match dims.last() {
            Some(&k) if k == self.weight.k => {}
            _ => candle_core::bail!(
                "packed-linear: input {:?} does not end in {} features",
                dims,
                self.weight.k
            ),
        }
        let m = dims[..dims.len() - 1].iter().product();
        let out = self.weight.matmul_vec(data, m, self.epilogue);
        let mut shape = dims.to_vec();
        if let Some(last) = shape.last_mut() {
            *last = self.weight.n;
        }
        Ok((CpuStorage::F32(out), Shape::from(shape)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn column_chunks_cover_every_panel_once_evenly_per_thread() {
        for threads in [1, 2, 3, 8] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            for (np, most) in [(72, 8), (96, 8), (24, 8), (1, 8), (5, 8), (72, 24), (0, 8)] {
                let chunks = pool.install(|| column_chunks(np, most));
                let covered: Vec<usize> = chunks.iter().flat_map(|&(a, b)| a..b).collect();
                assert_eq!(
                    covered,
                    (0..np).collect::<Vec<_>>(),
                    "{threads} {np} {most}"
                );
                let sizes: Vec<usize> = chunks.iter().map(|(a, b)| b - a).collect();
                let (lo, hi) = (sizes.iter().min(), sizes.iter().max());
                if let (Some(lo), Some(hi)) = (lo, hi) {
                    assert!(
                        hi - lo <= 1 && *hi <= most,
                        "{threads} {np} {most}: {sizes:?}"
                    );
                }
                if np >= threads * most {
                    assert_eq!(
                        chunks.len() % threads,
                        0,
                        "{threads} {np} {most}: {sizes:?}"
                    );
                }
            }
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        assert_eq!(pool.install(|| column_chunks(72, 8)).len(), 10);
    }

    fn reference(
        w: &[f32],
        b: Option<&[f32]>,
        x: &[f32],
        m: usize,
        n: usize,
        k: usize,
    ) -> Vec<f32> {
        let mut out = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = b.map_or(0.0, |b| b[j] as f64);
                for kk in 0..k {
                    s += x[i * k + kk] as f64 * w[j * k + kk] as f64;
                }
                out[i * n + j] = s as f32;
            }
        }
        out
    }

    fn values(len: usize, seed: u64) -> Vec<f32> {
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

    /// The instruction sets this CPU has; the packed tests run for each one.
    fn isas() -> Vec<Isa> {
        let isas: Vec<Isa> = Isa::ALL.into_iter().filter(|i| i.available()).collect();
        if isas.is_empty() {
            crate::util::testing::skipped("this CPU has neither AVX-512 nor AVX2/FMA");
        }
        isas
    }

    fn worst(a: &[f32], b: &[f32]) -> f32 {
        a.iter()
            .zip(b)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max)
    }

    #[test]
    fn matches_a_plain_product_for_awkward_sizes() {
        // Row counts around both kernels' blocks (6 and 12 rows), column counts around both
        // panel widths (16 and 32), depths around the 768-deep pass, and m = 1.
        for isa in isas() {
            for &(m, n, k) in &[
                (1, 1, 1),
                (1, 40, 770),
                (5, 15, 9),
                (6, 16, 16),
                (7, 17, 3),
                (13, 33, 7),
                (12, 32, 384),
                (25, 17, 385),
                (50, 64, 800),
                (19, 48, 1537),
                (7, 100, 1),
                (3, 31, 0),
            ] {
                let w = values(n * k, 1 + m as u64);
                let b = values(n, 2);
                let x = values(m * k, 3 + n as u64);
                for bias in [None, Some(b.as_slice())] {
                    let p = PackedWeight::new_for(isa, &w, bias, n, k);
                    assert_eq!(p.isa(), isa);
                    let mut out = vec![f32::NAN; m * n];
                    p.matmul(&x, m, &mut out);
                    let r = reference(&w, bias, &x, m, n, k);
                    let d = worst(&out, &r);
                    assert!(d < 1e-4, "{isa:?} m={m} n={n} k={k}: max diff {d}");
                    // The fused activation on the same shapes: the f64 product, then the
                    // scalar formula.
                    let mut fused = vec![f32::NAN; m * n];
                    p.matmul_then(&x, m, &mut fused, Epilogue::QuickGelu);
                    let r: Vec<f32> = r.iter().map(|&y| y / (1.0 + (-1.702 * y).exp())).collect();
                    let d = worst(&fused, &r);
                    assert!(d < 1e-4, "{isa:?} gelu m={m} n={n} k={k}: max diff {d}");
                }
            }
        }
    }

    #[test]
    fn rows_a_multiple_of_4_kib_apart_are_read_correctly() {
        // k = 1024 and 2048: the input is copied to padded rows first.
        for isa in isas() {
            for &(m, n, k) in &[(13, 20, 1024), (7, 35, 2048)] {
                let w = values(n * k, 11);
                let b = values(n, 12);
                let x = values(m * k, 13);
                let p = PackedWeight::new_for(isa, &w, Some(&b), n, k);
                let mut out = vec![f32::NAN; m * n];
                p.matmul(&x, m, &mut out);
                let d = worst(&out, &reference(&w, Some(&b), &x, m, n, k));
                assert!(d < 1e-4, "{isa:?} m={m} n={n} k={k}: max diff {d}");
            }
        }
    }

    #[test]
    fn fused_quick_gelu_matches_the_scalar_formula() {
        for isa in isas() {
            let (m, n, k) = (30, 70, 50);
            let w = values(n * k, 4);
            let b = values(n, 5);
            let x: Vec<f32> = values(m * k, 6).iter().map(|v| v * 40.0).collect();
            let p = PackedWeight::new_for(isa, &w, Some(&b), n, k);
            let mut plain = vec![0f32; m * n];
            p.matmul(&x, m, &mut plain);
            let mut fused = vec![0f32; m * n];
            p.matmul_then(&x, m, &mut fused, Epilogue::QuickGelu);
            assert!(plain.iter().any(|&v| v < -20.0) && plain.iter().any(|&v| v > 20.0));
            for (&y, &g) in plain.iter().zip(&fused) {
                let want = y / (1.0 + (-1.702 * y).exp());
                assert!(
                    (g - want).abs() <= 2e-7 * want.abs().max(1.0),
                    "{isa:?} {y}: {g} vs {want}"
                );
            }
        }
    }

    #[test]
    fn both_instruction_sets_give_the_same_products() {
        let isas = isas();
        if isas.len() < 2 {
            crate::util::testing::skipped("this CPU lacks AVX-512 or AVX2/FMA");
            return;
        }
        let (m, n, k) = (37, 2304 / 8, 768);
        let w = values(n * k, 20);
        let b = values(n, 21);
        let x = values(m * k, 22);
        let outs: Vec<Vec<f32>> = isas
            .iter()
            .map(|&isa| {
                let mut out = vec![0f32; m * n];
                let p = PackedWeight::new_for(isa, &w, Some(&b), n, k);
                p.matmul_then(&x, m, &mut out, Epilogue::QuickGelu);
                out
            })
            .collect();
        // Both sum each product in the same order with FMAs: equal to the last bit.
        assert_eq!(outs[0], outs[1]);
    }

    #[test]
    fn new_packs_for_the_best_instruction_set() {
        if let Some(best) = Isa::best() {
            assert_eq!(PackedWeight::new(&[1.0], None, 1, 1).isa(), best);
        }
        assert_eq!(available(), Isa::best().is_some());
    }

    #[test]
    fn custom_op_keeps_leading_dimensions() {
        for isa in isas() {
            use candle_core::{Device, Tensor};
            let (n, k) = (40, 24);
            let w = values(n * k, 9);
            let x = Tensor::from_vec(values(2 * 5 * k, 10), (2, 5, k), &Device::Cpu).unwrap();
            let p = PackedWeight::new_for(isa, &w, None, n, k);
            let y = x.apply_op1_no_bwd(&p.op(Epilogue::None)).unwrap();
            assert_eq!(y.dims(), &[2, 5, n]);
            let wt = Tensor::from_vec(w, (n, k), &Device::Cpu).unwrap();
            let r = x.broadcast_matmul(&wt.t().unwrap()).unwrap();
            let d = (y - r)
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(d < 1e-5, "{isa:?}: {d}");
        }
    }
}
