//! int8 packed matrix multiply with `vpdpbusd` (four u8 x s8 multiply-adds per 32-bit lane,
//! four times fp32's per instruction): AVX512-VNNI on 16 lanes with the AVX-512 kernels, or
//! AVX-VNNI on 8 lanes with the AVX2 kernels (Intel Alder Lake and later client parts, Sierra
//! Forest: AVX2 machines with the int8 dot product but no AVX-512). Both compute the same exact
//! int32 sums and the same fp32 epilogue, so they give bit-identical results.
//!
//! Weights: one symmetric scale per output channel, `s_w[j] = max|W[j,:]| / 127`, and
//! `q_w = round(W / s_w)` in -127..=127, packed once at load in 32-column panels of four
//! consecutive input features per 32-bit lane. Activations: one symmetric scale per row
//! (token), computed at each multiply, `q_x = round(x / s_x)` in -127..=127.
//!
//! `vpdpbusd` multiplies unsigned by signed bytes, so the kernel feeds `u = q_x + 128`
//! (1..=255) and removes the shift exactly: `Σ u·q_w = Σ q_x·q_w + 128·Σ_k q_w[j,k]`, the last
//! term precomputed per column. Every product (at most 255·127) and sum (at most
//! `k`·255·127, under 2³¹ for `k` < 66 000) is exact in int32, so the only rounding is the
//! quantisation itself and the final `s_x·s_w·(Σ − 128·colsum) + b` in fp32.
//! The whole depth is summed in registers (no blocking over `k`), since int32 partial sums of
//! different blocks could not be scaled before they are complete.

use rayon::prelude::*;

use crate::clip::kernels::gemm::Epilogue;
use crate::clip::kernels::gemm_bf16::{for_each_tile, row_stride, SendPtr, MR, NR};
use crate::clip::kernels::ops::filled_by;
use crate::clip::kernels::precision::{Caps, PackedLinear};
use crate::clip::kernels::simd::Isa;

/// Rows per call of the AVX-VNNI kernel: twelve 8-lane accumulators (6 rows x 16 columns), two
/// registers of weights and one broadcast input, 15 of the 16 `ymm` registers. A 12 x 32 tile
/// takes four calls.
const MR_AVX2: usize = 6;

/// Whether this CPU can run the int8 kernels of `isa`: AVX-512F, BW and AVX512-VNNI, or AVX2,
/// FMA and AVX-VNNI.
pub fn available_for(isa: Isa) -> bool {
    let caps = Caps::detect();
    match isa {
        Isa::Avx512 => caps.vnni,
        Isa::Avx2 => caps.avx_vnni,
    }
}

/// Whether this CPU can run either version of the int8 kernels.
#[cfg(any(test, feature = "internals"))]
pub fn available() -> bool {
    best().is_some()
}

/// The version of the int8 kernels this CPU runs best, if any.
#[cfg(any(test, feature = "internals"))]
fn best() -> Option<Isa> {
    Isa::ALL.into_iter().find(|&i| available_for(i))
}

/// Symmetric int8 quantisation of `v`: the scale `max|v| / 127` and `round(v / scale)`
/// (ties to even) written to `out` through `map`. A row of zeros (or one with a non-finite
/// maximum) gets scale 0 and all-zero codes.
#[inline]
pub fn quantise<T>(v: &[f32], out: &mut [T], map: impl Fn(i32) -> T) -> f32 {
    let amax = v.iter().fold(0f32, |a, &x| a.max(x.abs()));
    let inv = if amax > 0.0 && amax.is_finite() {
        127.0 / amax
    } else {
        0.0
    };
    for (o, &x) in out.iter_mut().zip(v) {
        *o = map(((x * inv).round_ties_even() as i32).clamp(-127, 127));
    }
    if inv == 0.0 {
        0.0
    } else {
        amax / 127.0
    }
}

/// A `[n, k]` weight matrix (PyTorch's `Linear` layout) and optional bias, quantised per
/// output channel and packed for [`PackedInt8::matmul`].
pub struct PackedInt8 {
    /// The kernels' instruction set (the packing is the same for both).
    isa: Isa,
    n: usize,
    k: usize,
    /// Input features in groups of four, `ceil(k / 4)`.
    k4: usize,
    /// `ceil(n / NR)` panels of `k4 * NR` lanes: panel `p`, group `kk`, column `j` holds
    /// `q_w[p*NR+j][4kk..4kk+4]` as four bytes, lowest first (zero past the ends).
    panels: Vec<i32>,
    /// Per column, padded to whole panels: the weight scale.
    scale: Vec<f32>,
    /// Per column, padded: `128 * Σ_k q_w[j, k]`, the contribution of the +128 shift.
    shift: Vec<i32>,
    /// The bias padded to whole panels.
    bias: Vec<f32>,
}

impl PackedInt8 {
    /// Quantises and packs `weight` (`n * k` values, row-major `[n, k]`) and `bias` (`n` values)
    /// for the best int8 kernels this CPU has.
    #[cfg(any(test, feature = "internals"))]
    pub fn new(weight: &[f32], bias: Option<&[f32]>, n: usize, k: usize) -> Self {
        Self::new_for(best().unwrap_or(Isa::Avx512), weight, bias, n, k)
    }

    /// [`PackedInt8::new`] for the kernels of `isa`.
    pub fn new_for(isa: Isa, weight: &[f32], bias: Option<&[f32]>, n: usize, k: usize) -> Self {
        assert_eq!(weight.len(), n * k, "weight must hold n * k values");
        let k4 = k.div_ceil(4);
        let np = n.div_ceil(NR);
        let mut q = vec![0i8; n * k4 * 4];
        let mut scale = vec![0f32; np * NR];
        let mut shift = vec![0i32; np * NR];
        q.par_chunks_mut((k4 * 4).max(1))
            .zip(scale.par_iter_mut().zip(shift.par_iter_mut()))
            .zip(weight.par_chunks(k.max(1)))
            .for_each(|((q, (s, c)), w)| {
                *s = quantise(w, q, |v| v as i8);
                *c = 128 * q.iter().map(|&v| v as i32).sum::<i32>();
            });
        let mut panels = vec![0i32; np * k4 * NR];
        panels
            .par_chunks_mut((k4 * NR).max(1))
            .enumerate()
            .for_each(|(p, panel)| {
                for j in 0..NR.min(n - p * NR) {
                    let row = &q[(p * NR + j) * k4 * 4..(p * NR + j + 1) * k4 * 4];
                    for (kk, g) in row.chunks_exact(4).enumerate() {
                        panel[kk * NR + j] =
                            i32::from_le_bytes([g[0] as u8, g[1] as u8, g[2] as u8, g[3] as u8]);
                    }
                }
            });
        let mut padded = vec![0f32; np * NR];
        if let Some(b) = bias {
            assert_eq!(b.len(), n, "bias must hold n values");
            padded[..n].copy_from_slice(b);
        }
        PackedInt8 {
            isa,
            n,
            k,
            k4,
            panels,
            scale,
            shift,
            bias: padded,
        }
    }

    /// `out ≈ x · Wᵀ + b`, then `epilogue`, for `x` of `m` rows of `k` values, with both
    /// operands quantised as the module describes.
    ///
    /// Panics if the CPU lacks the instructions of the kernels `self` was packed for (check
    /// [`available_for`]) or the lengths disagree.
    #[cfg(any(test, feature = "internals"))]
    pub fn matmul(&self, x: &[f32], m: usize, out: &mut [f32], epilogue: Epilogue) {
        assert_eq!(out.len(), m * self.n, "output must hold m * n values");
        // SAFETY: `out` holds m * n values.
        unsafe { self.matmul_into(x, m, out.as_mut_ptr(), epilogue) }
    }

    /// Writes all `m * n` results to `out`, as [`PackedInt8::matmul`] describes.
    ///
    /// # Safety
    /// `out` must be valid for writes of `m * n` values, and not overlap `x`.
    unsafe fn matmul_into(&self, x: &[f32], m: usize, out: *mut f32, epilogue: Epilogue) {
        let isa = self.isa;
        assert!(
            available_for(isa),
            "the int8 kernels for {} need {}",
            isa.name(),
            match isa {
                Isa::Avx512 => "AVX512-VNNI",
                Isa::Avx2 => "AVX-VNNI",
            }
        );
        let (n, k, k4) = (self.n, self.k, self.k4);
        assert_eq!(x.len(), m * k, "input must hold m * k values");
        if m == 0 || n == 0 {
            return;
        }
        let gelu = epilogue == Epilogue::QuickGelu;
        // The input rows quantised and shifted to u8 (padding: 128, a zero), four per lane.
        let lda = row_stride(k4.max(1) * 4, 1);
        let mut a = vec![128u8; m * lda];
        let mut sx = vec![0f32; m.div_ceil(MR) * MR];
        a.par_chunks_mut(lda)
            .zip(sx.par_iter_mut())
            .zip(x.par_chunks(k.max(1)))
            // SAFETY: `available_for(isa)` was asserted above; `d` has room for the row.
            .for_each(|((d, s), x)| {
                *s = unsafe {
                    match isa {
                        Isa::Avx512 => x86::quantise_row(x, d),
                        Isa::Avx2 => x86::quantise_row_avx2(x, d),
                    }
                }
            });
        let out_ptr = SendPtr(out);
        for_each_tile(m, n, |q, rows, p, cols| {
            let out_ptr = &out_ptr;
            let c = p * NR..(p + 1) * NR;
            let panel = self.panels[p * k4 * NR..(p + 1) * k4 * NR].as_ptr();
            let tile = out_ptr.0.wrapping_add(q * MR * n + p * NR);
            let a = a[q * MR * lda..].as_ptr().cast::<u32>();
            let epi = |r0: usize, c0: usize| Epi {
                row_scale: &sx[q * MR + r0..(q + 1) * MR],
                scale: &self.scale[c.start + c0..c.end],
                shift: &self.shift[c.start + c0..c.end],
                bias: &self.bias[c.start + c0..c.end],
                gelu,
            };
            // SAFETY: tile (q, p) of `out` lies within its m * n values and belongs to this
            // call alone; `a` holds `rows` rows of `k4` groups from row `q * MR`; the panel
            // holds `k4 * NR` lanes; `sx` is padded to whole row panels. The AVX2 kernel's
            // blocks (`r0`, `c0`) lie within the tile, and its slices start at the block.
            unsafe {
                match isa {
                    Isa::Avx512 => {
                        dispatch(isa, rows, k4, a, lda / 4, panel, tile, n, cols, epi(0, 0))
                    }
                    Isa::Avx2 => {
                        for r0 in (0..rows).step_by(MR_AVX2) {
                            for c0 in (0..cols).step_by(NR / 2) {
                                dispatch(
                                    isa,
                                    MR_AVX2.min(rows - r0),
                                    k4,
                                    a.add(r0 * lda / 4),
                                    lda / 4,
                                    panel.add(c0),
                                    tile.add(r0 * n + c0),
                                    n,
                                    (NR / 2).min(cols - c0),
                                    epi(r0, c0),
                                );
                            }
                        }
                    }
                }
            }
        });
    }
}

impl PackedLinear for PackedInt8 {
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

/// What turns one tile's int32 sums into fp32 results.
struct Epi<'a> {
    /// Activation scales of the tile's `MR` rows.
    row_scale: &'a [f32],
    /// Weight scales, shift terms and bias of the tile's `NR` columns.
    scale: &'a [f32],
    shift: &'a [i32],
    bias: &'a [f32],
    gelu: bool,
}

/// Runs `isa`'s kernel for `rows` rows (1..=MR with AVX-512; 1..=6 with AVX2, whose `cols`
/// are at most 16).
///
/// # Safety
/// As [`x86::kernel`] or [`x86::kernel_avx2`].
#[allow(clippy::too_many_arguments)]
unsafe fn dispatch(
    isa: Isa,
    rows: usize,
    k4: usize,
    a: *const u32,
    lda: usize,
    b: *const i32,
    c: *mut f32,
    ldc: usize,
    cols: usize,
    e: Epi,
) {
    #[cfg(target_arch = "x86_64")]
    {
        use x86::{kernel, kernel_avx2};
        macro_rules! go {
            ($f:ident: $($r:literal)*) => {
                match rows {
                    $($r => $f::<$r>(k4, a, lda, b, c, ldc, cols, &e),)*
                    _ => unreachable!("{isa:?} int8 blocks do not hold {rows} rows"),
                }
            };
        }
        match isa {
            Isa::Avx512 => go!(kernel: 1 2 3 4 5 6 7 8 9 10 11 12),
            Isa::Avx2 => go!(kernel_avx2: 1 2 3 4 5 6),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (isa, rows, k4, a, lda, b, c, ldc, cols, e);
        unreachable!("the int8 kernels are only built for x86_64")
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Epi, NR};
    use crate::clip::kernels::simd::{avx2, avx512::quick_gelu};
    use std::arch::x86_64::*;

    /// [`super::quantise`] of `x` shifted by +128 into `out`, 16 lanes at a time (the scalar
    /// version calls `rintf` per value where SSE4.1 is not enabled at build time). Same codes
    /// for every finite input: the same f32 maximum, reciprocal, product and rounding to even.
    ///
    /// # Safety
    /// AVX-512F and BW available; `out` at least as long as `x`.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn quantise_row(x: &[f32], out: &mut [u8]) -> f32 {
        assert!(out.len() >= x.len());
        let (k, xp, op) = (x.len(), x.as_ptr(), out.as_mut_ptr());
        let tail = k % 16;
        let tmask: __mmask16 = ((1u32 << tail) - 1) as u16;
        let mut m = _mm512_setzero_ps();
        for c in 0..k / 16 {
            m = _mm512_max_ps(m, _mm512_abs_ps(_mm512_loadu_ps(xp.add(16 * c))));
        }
        m = _mm512_max_ps(
            m,
            _mm512_abs_ps(_mm512_maskz_loadu_ps(tmask, xp.add(k - tail))),
        );
        let amax = _mm512_reduce_max_ps(m);
        let inv = if amax > 0.0 && amax.is_finite() {
            127.0 / amax
        } else {
            0.0
        };
        let vinv = _mm512_set1_ps(inv);
        let code = |v: __m512| {
            let q = _mm512_cvtps_epi32(_mm512_mul_ps(v, vinv));
            let q = _mm512_max_epi32(
                _mm512_min_epi32(q, _mm512_set1_epi32(127)),
                _mm512_set1_epi32(-127),
            );
            _mm512_add_epi32(q, _mm512_set1_epi32(128))
        };
        for c in 0..k / 16 {
            let q = code(_mm512_loadu_ps(xp.add(16 * c)));
            _mm_storeu_si128(op.add(16 * c).cast(), _mm512_cvtepi32_epi8(q));
        }
        let q = code(_mm512_maskz_loadu_ps(tmask, xp.add(k - tail)));
        _mm512_mask_cvtepi32_storeu_epi8(op.add(k - tail).cast(), tmask, q);
        if inv == 0.0 {
            0.0
        } else {
            amax / 127.0
        }
    }

    /// [`quantise_row`] with AVX2: the same codes and scale (the same f32 maximum, reciprocal,
    /// product and rounding to even), 8 lanes at a time and the last `k % 8` values in scalar.
    ///
    /// # Safety
    /// AVX2 and FMA available; `out` at least as long as `x`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn quantise_row_avx2(x: &[f32], out: &mut [u8]) -> f32 {
        assert!(out.len() >= x.len());
        let (k, xp, op) = (x.len(), x.as_ptr(), out.as_mut_ptr());
        let body = k - k % 8;
        let sign = _mm256_set1_ps(-0.0);
        let mut m = _mm256_setzero_ps();
        for c in (0..body).step_by(8) {
            m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(xp.add(c))));
        }
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), m);
        let amax = (lanes.iter().chain(&x[body..])).fold(0f32, |a, &v| a.max(v.abs()));
        let inv = if amax > 0.0 && amax.is_finite() {
            127.0 / amax
        } else {
            0.0
        };
        let vinv = _mm256_set1_ps(inv);
        // Byte 0 of each 32-bit lane to the first four bytes of its 128-bit half, then the two
        // halves' first four bytes side by side.
        let pick = _mm256_setr_epi8(
            0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, //
            0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
        );
        let join = _mm256_setr_epi32(0, 4, 0, 0, 0, 0, 0, 0);
        for c in (0..body).step_by(8) {
            let q = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xp.add(c)), vinv));
            let q = _mm256_max_epi32(
                _mm256_min_epi32(q, _mm256_set1_epi32(127)),
                _mm256_set1_epi32(-127),
            );
            let q = _mm256_add_epi32(q, _mm256_set1_epi32(128));
            let bytes = _mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(q, pick), join);
            _mm_storel_epi64(op.add(c).cast(), _mm256_castsi256_si128(bytes));
        }
        for (o, &v) in out[body..k].iter_mut().zip(&x[body..]) {
            *o = (((v * inv).round_ties_even() as i32).clamp(-127, 127) + 128) as u8;
        }
        if inv == 0.0 {
            0.0
        } else {
            amax / 127.0
        }
    }

    /// `C[R x cols] = s_x[i]·s_w[j]·(A[R x k4] · B[k4 x NR] − shift[j]) + bias[j]` (then
    /// `quick_gelu` with `e.gelu`), `A` as u8 quads rows `lda` lanes apart, `B` as s8 quads
    /// packed `kk * NR + j`.
    ///
    /// # Safety
    /// AVX-512F, BW and VNNI available; `a` readable for `R` rows of `k4` lanes, `b` for
    /// `k4 * NR` lanes, `c` valid for `R` rows of stride `ldc` and `cols` columns; the slices
    /// in `e` hold `NR` columns and at least `R` rows.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn kernel<const R: usize>(
        k4: usize,
        a: *const u32,
        lda: usize,
        b: *const i32,
        c: *mut f32,
        ldc: usize,
        cols: usize,
        e: &Epi,
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
        let mut acc = [[_mm512_setzero_si512(); 2]; R];
        let mut ap = a;
        let mut bp = b;
        for _ in 0..k4 {
            let b0 = _mm512_loadu_si512(bp.cast());
            let b1 = _mm512_loadu_si512(bp.add(16).cast());
            for (i, row) in acc.iter_mut().enumerate() {
                let av = _mm512_set1_epi32(ap.add(i * lda).read_unaligned() as i32);
                row[0] = _mm512_dpbusd_epi32(row[0], av, b0);
                row[1] = _mm512_dpbusd_epi32(row[1], av, b1);
            }
            ap = ap.add(1);
            bp = bp.add(NR);
        }
        let shift = [
            _mm512_loadu_si512(e.shift.as_ptr().cast()),
            _mm512_loadu_si512(e.shift.as_ptr().add(16).cast()),
        ];
        let scale = [
            _mm512_loadu_ps(e.scale.as_ptr()),
            _mm512_loadu_ps(e.scale.as_ptr().add(16)),
        ];
        let bias = [
            _mm512_loadu_ps(e.bias.as_ptr()),
            _mm512_loadu_ps(e.bias.as_ptr().add(16)),
        ];
        for (i, row) in acc.iter().enumerate() {
            let sx = _mm512_set1_ps(e.row_scale[i]);
            let p = c.add(i * ldc);
            for (h, mask) in [(0, m0), (1, m1)] {
                let v = _mm512_cvtepi32_ps(_mm512_sub_epi32(row[h], shift[h]));
                let mut v = _mm512_fmadd_ps(v, _mm512_mul_ps(sx, scale[h]), bias[h]);
                if e.gelu {
                    v = quick_gelu(v);
                }
                _mm512_mask_storeu_ps(p.add(16 * h), mask, v);
            }
        }
    }

    /// [`kernel`] on 8-lane registers with AVX-VNNI: `R` rows and the 16 columns of half a
    /// panel (`b` points at the half's first lane, still `NR` lanes per group), `cols` of them
    /// stored. The same int32 sums and fp32 epilogue as [`kernel`], so the same results.
    ///
    /// # Safety
    /// AVX2, FMA and AVX-VNNI available; `a` readable for `R` rows of `k4` lanes, `b` for
    /// `k4` groups of `NR` lanes (16 used), `c` valid for `R` rows of stride `ldc` and `cols`
    /// (1..=16) columns; the slices in `e` hold at least 16 columns and `R` rows.
    #[target_feature(enable = "avx2,fma,avxvnni")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn kernel_avx2<const R: usize>(
        k4: usize,
        a: *const u32,
        lda: usize,
        b: *const i32,
        c: *mut f32,
        ldc: usize,
        cols: usize,
        e: &Epi,
    ) {
        let full = cols >= 16;
        let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let masks = [
            _mm256_cmpgt_epi32(_mm256_set1_epi32(cols as i32), lanes),
            _mm256_cmpgt_epi32(_mm256_set1_epi32(cols as i32 - 8), lanes),
        ];
        let mut acc = [[_mm256_setzero_si256(); 2]; R];
        let mut ap = a;
        let mut bp = b;
        for _ in 0..k4 {
            let b0 = _mm256_loadu_si256(bp.cast());
            let b1 = _mm256_loadu_si256(bp.add(8).cast());
            for (i, row) in acc.iter_mut().enumerate() {
                let av = _mm256_set1_epi32(ap.add(i * lda).read_unaligned() as i32);
                row[0] = _mm256_dpbusd_avx_epi32(row[0], av, b0);
                row[1] = _mm256_dpbusd_avx_epi32(row[1], av, b1);
            }
            ap = ap.add(1);
            bp = bp.add(NR);
        }
        let shift = [
            _mm256_loadu_si256(e.shift.as_ptr().cast()),
            _mm256_loadu_si256(e.shift.as_ptr().add(8).cast()),
        ];
        let scale = [
            _mm256_loadu_ps(e.scale.as_ptr()),
            _mm256_loadu_ps(e.scale.as_ptr().add(8)),
        ];
        let bias = [
            _mm256_loadu_ps(e.bias.as_ptr()),
            _mm256_loadu_ps(e.bias.as_ptr().add(8)),
        ];
        for (i, row) in acc.iter().enumerate() {
            let sx = _mm256_set1_ps(e.row_scale[i]);
            let p = c.add(i * ldc);
            for h in 0..2 {
                let v = _mm256_cvtepi32_ps(_mm256_sub_epi32(row[h], shift[h]));
                let mut v = _mm256_fmadd_ps(v, _mm256_mul_ps(sx, scale[h]), bias[h]);
                if e.gelu {
                    v = avx2::quick_gelu(v);
                }
                if full {
                    _mm256_storeu_ps(p.add(8 * h), v);
                } else {
                    _mm256_maskstore_ps(p.add(8 * h), masks[h], v);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clip::kernels::gemm_bf16::tests::{check_product, values};

    /// The versions of the int8 kernels this CPU runs; each one it lacks is reported skipped.
    fn isas() -> Vec<Isa> {
        Isa::ALL
            .into_iter()
            .filter(|&isa| {
                let ok = available_for(isa);
                if !ok {
                    crate::util::testing::skipped(&format!(
                        "this CPU cannot run the {} int8 kernels",
                        isa.name()
                    ));
                }
                ok
            })
            .collect()
    }

    /// The codes and scale of each row, computed here from the definition (in the same f32
    /// operations, so that values near a rounding boundary get the kernel's codes).
    fn reference_quant(v: &[f32], rows: usize, k: usize) -> (Vec<f64>, Vec<f64>) {
        let mut codes = Vec::new();
        let mut scales = Vec::new();
        for r in v.chunks(k.max(1)).take(rows) {
            let amax = r.iter().map(|x| x.abs()).fold(0f32, f32::max);
            let (inv, s) = if amax > 0.0 {
                (127.0 / amax, amax / 127.0)
            } else {
                (0.0, 0.0)
            };
            scales.push(s as f64);
            codes.extend(r.iter().map(|&x| (x * inv).round_ties_even() as f64));
        }
        if k == 0 {
            scales.resize(rows, 0.0);
        }
        (codes, scales)
    }

    #[test]
    fn vector_quantisation_matches_the_scalar_one() {
        for (isa, k) in isas()
            .into_iter()
            .flat_map(|isa| [0, 1, 7, 8, 9, 15, 16, 17, 100, 768].map(|k| (isa, k)))
        {
            let mut x = values(k, k as u64);
            if k > 3 {
                x[3] = -7.0;
                x[1] = 0.5 * 7.0 / 127.0; // exactly half a step
            }
            let mut want = vec![0u8; k];
            let sw = quantise(&x, &mut want, |v| (v + 128) as u8);
            let mut got = vec![9u8; k + 5];
            let sg = unsafe {
                match isa {
                    Isa::Avx512 => x86::quantise_row(&x, &mut got),
                    Isa::Avx2 => x86::quantise_row_avx2(&x, &mut got),
                }
            };
            assert_eq!(sg, sw, "{isa:?} k={k}");
            assert_eq!(&got[..k], &want[..], "{isa:?} k={k}");
            assert_eq!(&got[k..], &[9u8; 5], "{isa:?} k={k}: wrote past the row");
        }
    }

    #[test]
    fn quantisation_is_symmetric_and_spans_the_range() {
        let v = [0.5f32, -1.0, 0.25, 0.0, 0.003];
        let mut q = [0i8; 5];
        let s = quantise(&v, &mut q, |c| c as i8);
        assert_eq!(s, 1.0 / 127.0);
        assert_eq!(q, [64, -127, 32, 0, 0]);
        let mut z = [1i8; 3];
        assert_eq!(quantise(&[0.0; 3], &mut z, |c| c as i8), 0.0);
        assert_eq!(z, [0; 3]);
    }

    #[test]
    fn matches_an_f64_product_of_the_quantised_inputs() {
        let isas = isas();
        for &(m, n, k) in &[
            (1, 1, 1),
            (13, 33, 7),
            (12, 32, 768),
            (25, 17, 769),
            (50, 64, 3072),
            (7, 100, 2),
            (3, 31, 0),
        ] {
            let w = values(n * k, 1 + m as u64);
            let b = values(n, 2);
            let mut x = values(m * k, 3 + n as u64);
            // One all-zero row and one with an outlier.
            if m > 2 && k > 0 {
                x[..k].iter_mut().for_each(|v| *v = 0.0);
                x[k] = 30.0;
            }
            let (qx, sx) = reference_quant(&x, m, k);
            let (qw, sw) = reference_quant(&w, n, k);
            for (&isa, bias) in isas
                .iter()
                .flat_map(|i| [(i, None), (i, Some(b.as_slice()))])
            {
                let p = PackedInt8::new_for(isa, &w, bias, n, k);
                let mut out = vec![f32::NAN; m * n];
                p.matmul(&x, m, &mut out, Epilogue::None);
                check_product(&out, &qx, &qw, |i, j| sx[i] * sw[j], bias, m, n, k);
            }
        }
    }

    /// The AVX-VNNI kernel computes the same int32 sums and fp32 epilogue as the AVX-512 one,
    /// so every result is the same bit for bit, with and without the fused `quick_gelu`, for
    /// tiles cut short in rows and columns.
    #[test]
    fn both_versions_give_identical_results() {
        let isas = isas();
        if isas.len() < 2 {
            crate::util::testing::skipped("only one int8 kernel here: nothing to compare");
            return;
        }
        for &(m, n, k) in &[
            (1, 1, 1),
            (5, 9, 3),
            (13, 33, 7),
            (12, 48, 768),
            (25, 17, 769),
            (50, 2304, 768),
            (7, 100, 3072),
        ] {
            let w = values(n * k, 7 + m as u64);
            let b = values(n, 8);
            let x = values(m * k, 9 + n as u64);
            let packed = isas
                .iter()
                .map(|&isa| PackedInt8::new_for(isa, &w, Some(&b), n, k))
                .collect::<Vec<_>>();
            for epilogue in [Epilogue::None, Epilogue::QuickGelu] {
                let outs: Vec<Vec<u32>> = packed
                    .iter()
                    .map(|p| {
                        let mut out = vec![f32::NAN; m * n];
                        p.matmul(&x, m, &mut out, epilogue);
                        out.iter().map(|v| v.to_bits()).collect()
                    })
                    .collect();
                assert!(
                    outs[0] == outs[1],
                    "{m}x{n}x{k} {epilogue:?}: the int8 kernels differ"
                );
            }
        }
    }

    #[test]
    fn close_to_fp32_and_fused_gelu_agrees() {
        if !available() {
            crate::util::testing::skipped(
                "this CPU has no int8 dot product (AVX512-VNNI or AVX-VNNI)",
            );
            return;
        }
        let (m, n, k) = (30, 70, 512);
        let w = values(n * k, 4);
        let b = values(n, 5);
        let x = values(m * k, 6);
        let p = PackedInt8::new(&w, Some(&b), n, k);
        let mut plain = vec![0f32; m * n];
        p.matmul(&x, m, &mut plain, Epilogue::None);
        let mut fused = vec![0f32; m * n];
        p.matmul(&x, m, &mut fused, Epilogue::QuickGelu);
        let (mut err, mut norm) = (0f64, 0f64);
        for i in 0..m {
            for j in 0..n {
                let exact: f64 = (0..k)
                    .map(|kk| x[i * k + kk] as f64 * w[j * k + kk] as f64)
                    .sum::<f64>()
                    + b[j] as f64;
                err += (plain[i * n + j] as f64 - exact).powi(2);
                norm += exact * exact;
                let y = plain[i * n + j];
                let want = y / (1.0 + (-1.702 * y).exp());
                let g = fused[i * n + j];
                assert!(
                    (g - want).abs() <= 2e-7 * want.abs().max(1.0),
                    "{y}: {g} vs {want}"
                );
            }
        }
        // Uniform inputs: each code carries about 1/(127·√12) relative noise.
        let rel = (err / norm).sqrt();
        assert!(rel < 0.01, "relative error {rel}");
    }
}
