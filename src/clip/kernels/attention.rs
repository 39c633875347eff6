//! Fused multi-head attention for the CPU path of the packed kernels.
//!
//! candle's composition (split Q/K/V into contiguous copies, batched matmul, softmax, a second
//! batched matmul, transpose back) makes five passes over memory and many small matrix
//! multiplies. Here each (sequence, head) pair is one task that reads Q, K and V in place from
//! the fused QKV projection's output and writes its slice of the result rows directly. The two
//! products (scores, weighted sum of values) have AVX-512 and AVX2 + FMA loops ([`Isa`]) and a
//! portable fallback. The vector loops take a block of query rows at a time (6 or 12 with
//! AVX-512, 3 with AVX2), like a matrix multiply's register tile, so each key and value loaded from the
//! cache serves every row of the block; one query row at a time, the products were bound by
//! cache bandwidth (at ViT-L/14-336's 577 tokens, attention ran at a fifth of the linear
//! layers' rate and took 31% of the encoder's time; README "Performance" has the figures).

use candle_core::{CpuStorage, CustomOp1, Layout, Shape};
use rayon::prelude::*;

use crate::clip::kernels::ops::filled_by;
use crate::clip::kernels::simd::{softmax_in_place_with, Isa};

/// Sizes of one attention call.
#[derive(Clone, Copy, Debug)]
pub struct AttentionShape {
    /// Sequences in the batch.
    pub batch: usize,
    /// Tokens per sequence.
    pub seq: usize,
    /// Attention heads.
    pub heads: usize,
    /// Values per head.
    pub head_dim: usize,
}

/// Which query rows of each sequence an attention call computes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Queries {
    /// Every row: the result has `seq` rows per sequence.
    All,
    /// Rows `p..seq` (the rows after a shared prefix): `seq - p` rows per sequence.
    From(usize),
    /// Row `rows[i]` of sequence `i` only: one row per sequence.
    Rows(Vec<usize>),
}

impl Queries {
    /// Result rows per sequence for sequences of `seq` tokens.
    pub fn per_sequence(&self, seq: usize) -> usize {
        match self {
            Queries::All => seq,
            Queries::From(p) => seq.saturating_sub(*p),
            Queries::Rows(_) => 1,
        }
    }

    /// `(query position, result row)` pairs for sequence `b` of `seq` tokens.
    fn of_sequence(&self, b: usize, seq: usize) -> Vec<(usize, usize)> {
        match self {
            Queries::All => (0..seq).map(|i| (i, b * seq + i)).collect(),
            Queries::From(p) => (*p..seq).map(|i| (i, b * (seq - p) + i - p)).collect(),
            Queries::Rows(r) => vec![(r[b], b)],
        }
    }

    /// Checks the queries against `batch` sequences of `seq` tokens.
    fn check(&self, batch: usize, seq: usize) -> Result<(), String> {
        match self {
            Queries::All => Ok(()),
            Queries::From(p) if *p < seq => Ok(()),
            Queries::From(p) => Err(format!("queries from row {p} of {seq}")),
            Queries::Rows(r) if r.len() == batch && r.iter().all(|&p| p < seq) => Ok(()),
            Queries::Rows(r) => Err(format!("query rows {r:?} for {batch} sequences of {seq}")),
        }
    }
}

/// Softmax attention over a fused QKV tensor laid out `[batch, seq, 3, heads, head_dim]`
/// (queries, then keys, then values of every head, as the fused projection writes them).
///
/// The result holds the rows chosen by `queries`, sequence by sequence:
/// `[batch * queries.per_sequence(seq), heads * head_dim]`. `causal` lets a query see only keys
/// at or before its own position. The loops are `isa`'s (`None`: portable).
///
/// Panics if the CPU lacks `isa`.
pub fn attention(
    qkv: &[f32],
    shape: AttentionShape,
    scale: f32,
    causal: bool,
    queries: &Queries,
    isa: Option<Isa>,
) -> Vec<f32> {
    if let Some(isa) = isa {
        assert!(
            isa.available(),
            "{} loops on a CPU without them",
            isa.name()
        );
    }
    let AttentionShape {
        batch,
        seq,
        heads,
        head_dim: hd,
    } = shape;
    let d = heads * hd;
    assert_eq!(
        qkv.len(),
        batch * seq * 3 * d,
        "qkv must be [batch, seq, 3, heads, head_dim]"
    );
    if let Err(e) = queries.check(batch, seq) {
        panic!("{e}");
    }
    let out_rows = batch * queries.per_sequence(seq);
    if out_rows * d == 0 {
        return Vec::new();
    }
    let fill = |out: *mut f32| {
        let out_ptr = SendPtr(out);
        (0..batch * heads).into_par_iter().for_each(|task| {
            let job = Task {
                qkv,
                shape,
                scale,
                causal,
                queries,
                b: task / heads,
                h: task % heads,
                out: &out_ptr,
            };
            match isa {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: the CPU has `isa` (asserted above).
                Some(isa) => unsafe { job.run_simd(isa) },
                _ => job.run(),
            }
        });
    };
    // SAFETY: task (b, h) writes head h's `hd` values of every result row of sequence b, so
    // the tasks together write all `out_rows * d` values.
    unsafe { filled_by(out_rows * d, fill) }
}

/// One (sequence, head) pair of [`attention`].
struct Task<'a> {
    qkv: &'a [f32],
    shape: AttentionShape,
    scale: f32,
    causal: bool,
    queries: &'a Queries,
    b: usize,
    h: usize,
    out: &'a SendPtr,
}

impl Task<'_> {
    /// [`Task::run`] with register-blocked vector loops (AVX-512 or AVX2) for the two
    /// products, several query rows at a time ([`Isa::attention_rows`]) so that each key and
    /// value loaded serves every row of the block.
    ///
    /// Each score and each output value is accumulated in the same order as for a single
    /// row, so the result does not depend on how rows are grouped (a row alone, as the pooled
    /// last layer computes it, equals the same row in a block).
    ///
    /// # Safety
    /// The CPU has `isa`.
    #[cfg(target_arch = "x86_64")]
    unsafe fn run_simd(&self, isa: Isa) {
        let (seq, hd, d, h) = (self.shape.seq, self.shape.head_dim, self.d(), self.h);
        let seq_base = self.b * seq * 3 * d;
        let at = |j: usize, part: usize| seq_base + j * 3 * d + part * d + h * hd;
        // Keys transposed into panels of 16 (zeros past the sequence): key `j`, value `t` at
        // `(j / 16) * hd * 16 + t * 16 + j % 16`, so a tile of keys reads each panel
        // front to back (one row of the transpose, 16 keys wide, was a stride of the whole
        // sequence apart).
        let sp = seq.div_ceil(16) * 16;
        let mut kt = vec![0f32; hd * sp];
        for j in 0..seq {
            let panel = &mut kt[(j / 16) * hd * 16..][..hd * 16];
            for (t, &k) in self.qkv[at(j, 1)..at(j, 1) + hd].iter().enumerate() {
                panel[t * 16 + j % 16] = k;
            }
        }
        // Values copied to consecutive rows, read front to back by the weighted sums.
        let mut vs = vec![0f32; seq * hd];
        for (j, row) in vs.chunks_exact_mut(hd.max(1)).enumerate() {
            row.copy_from_slice(&self.qkv[at(j, 2)..at(j, 2) + hd]);
        }
        let block = isa.attention_rows(seq);
        let mut scores = vec![0f32; block * sp];
        let mut o = vec![0f32; block * hd];
        let queries = self.queries();
        for rows in queries.chunks(block) {
            let visible = |i: usize| if self.causal { i + 1 } else { seq };
            // Keys every row of the block needs; a row's scores past its own visible keys are
            // computed, then replaced by zero weights (adding 0 · v leaves its sums unchanged).
            let n = rows.iter().map(|&(i, _)| visible(i)).max().unwrap_or(0);
            let q: Vec<*const f32> = rows
                .iter()
                .map(|&(i, _)| self.qkv[at(i, 0)..at(i, 0) + hd].as_ptr())
                .collect();
            // SAFETY: `kt` holds hd x sp keys and `vs` seq >= n rows of hd values; `scores`
            // holds `block` rows of sp >= n rounded up to 16 values and `o` `block` rows of hd;
            // query rows lie inside `qkv` (checked by `attention`); the CPU has `isa`.
            unsafe {
                let v0 = vs.as_ptr();
                match isa {
                    Isa::Avx512 => x86::scores_rows(&q, hd, &kt, sp, n, self.scale, &mut scores),
                    Isa::Avx2 => x86_avx2::scores_rows(&q, hd, &kt, sp, n, self.scale, &mut scores),
                }
                for (r, &(i, _)) in rows.iter().enumerate() {
                    let row = &mut scores[r * sp..r * sp + n];
                    softmax_in_place_with(&mut row[..visible(i)], Some(isa));
                    row[visible(i)..].fill(0.0);
                }
                match isa {
                    Isa::Avx512 => {
                        x86::weighted_sum_rows(rows.len(), &scores, sp, n, v0, hd, &mut o, hd)
                    }
                    Isa::Avx2 => {
                        x86_avx2::weighted_sum_rows(rows.len(), &scores, sp, n, v0, hd, &mut o, hd)
                    }
                }
                for (r, &(_, out_row)) in rows.iter().enumerate() {
                    std::ptr::copy_nonoverlapping(
                        o.as_ptr().add(r * hd),
                        self.out.0.add(out_row * d + h * hd),
                        hd,
                    );
                }
            }
        }
    }

    /// Portable version of [`Task::run_simd`].
    fn run(&self) {
        let (seq, hd, d, h) = (self.shape.seq, self.shape.head_dim, self.d(), self.h);
        let seq_base = self.b * seq * 3 * d;
        let row = |j: usize, part: usize| {
            let at = seq_base + j * 3 * d + part * d + h * hd;
            &self.qkv[at..at + hd]
        };
        let mut scores = vec![0f32; seq];
        let mut o = vec![0f32; hd];
        for (i, out_row) in self.queries() {
            let visible = if self.causal { i + 1 } else { seq };
            let q = row(i, 0);
            for (j, s) in scores[..visible].iter_mut().enumerate() {
                *s = q.iter().zip(row(j, 1)).map(|(a, b)| a * b).sum::<f32>() * self.scale;
            }
            softmax_in_place_with(&mut scores[..visible], None);
            o.fill(0.0);
            for (j, &p) in scores[..visible].iter().enumerate() {
                for (acc, &v) in o.iter_mut().zip(row(j, 2)) {
                    *acc += p * v;
                }
            }
            // SAFETY: task (b, h) alone writes columns h*hd..(h+1)*hd of its query rows, all
            // inside the output (out_rows * d values).
            unsafe {
                std::ptr::copy_nonoverlapping(o.as_ptr(), self.out.0.add(out_row * d + h * hd), hd);
            }
        }
    }

    /// Width of a token's attention output (`heads * head_dim`).
    fn d(&self) -> usize {
        self.shape.heads * self.shape.head_dim
    }

    /// `(query position, output row)` pairs this task computes.
    fn queries(&self) -> Vec<(usize, usize)> {
        self.queries.of_sequence(self.b, self.shape.seq)
    }
}

/// Dispatches `$f::<R>` for `R` = `$rows` (1 to 12) with the remaining arguments.
macro_rules! rows_dispatch {
    ($rows:expr, $f:ident, $($arg:expr),*) => {
        match $rows {
            1 => $f::<1>($($arg),*),
            2 => $f::<2>($($arg),*),
            3 => $f::<3>($($arg),*),
            4 => $f::<4>($($arg),*),
            5 => $f::<5>($($arg),*),
            6 => $f::<6>($($arg),*),
            7 => $f::<7>($($arg),*),
            8 => $f::<8>($($arg),*),
            9 => $f::<9>($($arg),*),
            10 => $f::<10>($($arg),*),
            11 => $f::<11>($($arg),*),
            12 => $f::<12>($($arg),*),
            r => unreachable!("attention blocks hold 1 to 12 rows, not {r}"),
        }
    };
}

/// Dispatches `$f::<R, C>` for `C` = `$cols` (1 to 4 registers) with the remaining arguments.
macro_rules! cols_dispatch {
    ($cols:expr, $f:ident::<$r:ident>, $($arg:expr),*) => {
        match $cols {
            1 => $f::<$r, 1>($($arg),*),
            2 => $f::<$r, 2>($($arg),*),
            3 => $f::<$r, 3>($($arg),*),
            _ => $f::<$r, 4>($($arg),*),
        }
    };
}

impl Isa {
    /// Query rows one register-blocked attention tile computes for sequences of `seq` tokens.
    /// AVX-512: from 128 tokens, 12 rows of two 16-lane registers (24 accumulators, 2 loaded
    /// vectors and a broadcast in 32 registers: 14% faster than 6 rows of four at 577 tokens),
    /// below it 6 rows of four (13% faster than 12 at 50 tokens, where 12-row blocks leave more
    /// of a short sequence to the tail). AVX2: 3 rows of up to four 8-lane registers (16
    /// registers; one may spill, still faster than 2 rows).
    fn attention_rows(self, seq: usize) -> usize {
        match self {
            Isa::Avx512 if seq >= 128 => 12,
            Isa::Avx512 => 6,
            Isa::Avx2 => 3,
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// 16-lane registers per row of a tile: 4 up to 6 rows, 2 above (`R * width` accumulators
    /// plus `width` loaded vectors and a broadcast stay within 32 registers).
    const fn width<const R: usize>() -> usize {
        if R > 6 {
            2
        } else {
            4
        }
    }

    /// `sc[r * sp + j] = scale * Σ_t q[r][t] · K[j][t]` for every row `r` of `q` (1 to
    /// 12 pointers to `hd` values) and `j < n`, 64 keys (32 above 6 rows) at a time in registers.
    ///
    /// # Safety
    /// AVX-512F; each `q[r]` valid for `hd` values; `kt` holds the keys in panels of 16
    /// (`K[j][t]` at `(j / 16) * hd * 16 + t * 16 + j % 16`, `hd * sp` values) and `sc`
    /// `q.len()` rows of `sp`, with `n` rounded up to 16 at most `sp`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn scores_rows(
        q: &[*const f32],
        hd: usize,
        kt: &[f32],
        sp: usize,
        n: usize,
        scale: f32,
        sc: &mut [f32],
    ) {
        debug_assert!(n.div_ceil(16) * 16 <= sp && kt.len() >= hd * sp);
        debug_assert!(sc.len() >= q.len() * sp);
        rows_dispatch!(q.len(), scores_r, q, hd, kt, sp, n, scale, sc)
    }

    #[inline(always)]
    unsafe fn scores_r<const R: usize>(
        q: &[*const f32],
        hd: usize,
        kt: &[f32],
        sp: usize,
        n: usize,
        scale: f32,
        sc: &mut [f32],
    ) {
        let q: [*const f32; R] = std::array::from_fn(|r| q[r]);
        let mut j0 = 0;
        while j0 < n {
            cols_dispatch!(
                (n - j0).div_ceil(16).min(width::<R>()),
                scores_tile::<R>,
                q,
                hd,
                kt,
                sp,
                j0,
                scale,
                sc
            );
            j0 += 16 * width::<R>();
        }
    }

    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn scores_tile<const R: usize, const C: usize>(
        q: [*const f32; R],
        hd: usize,
        kt: &[f32],
        sp: usize,
        j0: usize,
        scale: f32,
        sc: &mut [f32],
    ) {
        let mut acc = [[_mm512_setzero_ps(); C]; R];
        // Panels of 16 keys, `hd * 16` values each (see `Task::run_simd`); `j0` is a multiple
        // of 16.
        let base = kt.as_ptr().add(j0 / 16 * hd * 16);
        for t in 0..hd {
            let k: [__m512; C] =
                std::array::from_fn(|c| _mm512_loadu_ps(base.add(c * hd * 16 + t * 16)));
            for (qr, acc) in q.iter().zip(acc.iter_mut()) {
                let qv = _mm512_set1_ps(*qr.add(t));
                for (a, &kc) in acc.iter_mut().zip(&k) {
                    *a = _mm512_fmadd_ps(qv, kc, *a);
                }
            }
        }
        let s = _mm512_set1_ps(scale);
        for (r, acc) in acc.iter().enumerate() {
            for (c, a) in acc.iter().enumerate() {
                _mm512_storeu_ps(
                    sc.as_mut_ptr().add(r * sp + j0 + 16 * c),
                    _mm512_mul_ps(*a, s),
                );
            }
        }
    }

    /// `o[r * hd + t] = Σ_{j<n} p[r * sp + j] · v[j * stride + t]` for rows `r < rows`, 64
    /// values of each output row at a time in registers.
    ///
    /// # Safety
    /// AVX-512F; `rows` in 1..=12; `p` holds `rows` rows of `sp >= n` values, `o` `rows` rows
    /// of `hd`; `v` valid for `n` rows of `hd` values, `stride` apart.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn weighted_sum_rows(
        rows: usize,
        p: &[f32],
        sp: usize,
        n: usize,
        v: *const f32,
        stride: usize,
        o: &mut [f32],
        hd: usize,
    ) {
        debug_assert!(p.len() >= rows * sp && n <= sp && o.len() >= rows * hd);
        rows_dispatch!(rows, weighted_sum_r, p, sp, n, v, stride, o, hd)
    }

    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn weighted_sum_r<const R: usize>(
        p: &[f32],
        sp: usize,
        n: usize,
        v: *const f32,
        stride: usize,
        o: &mut [f32],
        hd: usize,
    ) {
        let mut t0 = 0;
        while t0 < hd {
            cols_dispatch!(
                (hd - t0).div_ceil(16).min(width::<R>()),
                sum_tile::<R>,
                p,
                sp,
                n,
                v,
                stride,
                t0,
                o,
                hd
            );
            t0 += 16 * width::<R>();
        }
    }

    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn sum_tile<const R: usize, const C: usize>(
        p: &[f32],
        sp: usize,
        n: usize,
        v: *const f32,
        stride: usize,
        t0: usize,
        o: &mut [f32],
        hd: usize,
    ) {
        let masks: [__mmask16; C] = std::array::from_fn(|c| {
            let left = hd.saturating_sub(t0 + 16 * c).min(16);
            ((1u32 << left) - 1) as u16
        });
        let mut acc = [[_mm512_setzero_ps(); C]; R];
        let pp = p.as_ptr();
        for j in 0..n {
            let row = v.add(j * stride + t0);
            let x: [__m512; C] =
                std::array::from_fn(|c| _mm512_maskz_loadu_ps(masks[c], row.add(16 * c)));
            for (r, acc) in acc.iter_mut().enumerate() {
                let pv = _mm512_set1_ps(*pp.add(r * sp + j));
                for (a, &xc) in acc.iter_mut().zip(&x) {
                    *a = _mm512_fmadd_ps(pv, xc, *a);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            for (c, a) in acc.iter().enumerate() {
                _mm512_mask_storeu_ps(o.as_mut_ptr().add(r * hd + t0 + 16 * c), masks[c], *a);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86_avx2 {
    use std::arch::x86_64::*;

    /// As [`super::x86::scores_rows`] with 8-lane registers, 32 keys at a time.
    ///
    /// # Safety
    /// AVX2 and FMA; each `q[r]` valid for `hd` values; `kt` holds the keys in panels of 16
    /// as for [`super::x86::scores_rows`] (`hd * sp` values) and `sc`
    /// `q.len()` rows of `sp`, with `n` rounded up to 8 at most `sp`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn scores_rows(
        q: &[*const f32],
        hd: usize,
        kt: &[f32],
        sp: usize,
        n: usize,
        scale: f32,
        sc: &mut [f32],
    ) {
        debug_assert!(n.div_ceil(8) * 8 <= sp && kt.len() >= hd * sp);
        debug_assert!(sc.len() >= q.len() * sp);
        rows_dispatch!(q.len(), scores_r, q, hd, kt, sp, n, scale, sc)
    }

    #[inline(always)]
    unsafe fn scores_r<const R: usize>(
        q: &[*const f32],
        hd: usize,
        kt: &[f32],
        sp: usize,
        n: usize,
        scale: f32,
        sc: &mut [f32],
    ) {
        let q: [*const f32; R] = std::array::from_fn(|r| q[r]);
        let mut j0 = 0;
        while j0 < n {
            cols_dispatch!(
                (n - j0).div_ceil(8),
                scores_tile::<R>,
                q,
                hd,
                kt,
                sp,
                j0,
                scale,
                sc
            );
            j0 += 32;
        }
    }

    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn scores_tile<const R: usize, const C: usize>(
        q: [*const f32; R],
        hd: usize,
        kt: &[f32],
        sp: usize,
        j0: usize,
        scale: f32,
        sc: &mut [f32],
    ) {
        let mut acc = [[_mm256_setzero_ps(); C]; R];
        // Panels of 16 keys (see `Task::run_simd`); `j0` is a multiple of 32, register `c`
        // holds keys `j0 + 8c ..`: half `c % 2` of panel `j0 / 16 + c / 2`.
        let base = kt.as_ptr().add(j0 / 16 * hd * 16);
        for t in 0..hd {
            let k: [__m256; C] = std::array::from_fn(|c| {
                _mm256_loadu_ps(base.add((c / 2) * hd * 16 + t * 16 + (c % 2) * 8))
            });
            for (qr, acc) in q.iter().zip(acc.iter_mut()) {
                let qv = _mm256_set1_ps(*qr.add(t));
                for (a, &kc) in acc.iter_mut().zip(&k) {
                    *a = _mm256_fmadd_ps(qv, kc, *a);
                }
            }
        }
        let s = _mm256_set1_ps(scale);
        for (r, acc) in acc.iter().enumerate() {
            for (c, a) in acc.iter().enumerate() {
                _mm256_storeu_ps(
                    sc.as_mut_ptr().add(r * sp + j0 + 8 * c),
                    _mm256_mul_ps(*a, s),
                );
            }
        }
    }

    /// As [`super::x86::weighted_sum_rows`] with 8-lane registers, 32 values of each output
    /// row at a time.
    ///
    /// # Safety
    /// AVX2 and FMA; `rows` in 1..=6; `p` holds `rows` rows of `sp >= n` values, `o` `rows`
    /// rows of `hd`; `v` valid for `n` rows of `hd` values, `stride` apart.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn weighted_sum_rows(
        rows: usize,
        p: &[f32],
        sp: usize,
        n: usize,
        v: *const f32,
        stride: usize,
        o: &mut [f32],
        hd: usize,
    ) {
        debug_assert!(p.len() >= rows * sp && n <= sp && o.len() >= rows * hd);
        rows_dispatch!(rows, weighted_sum_r, p, sp, n, v, stride, o, hd)
    }

    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn weighted_sum_r<const R: usize>(
        p: &[f32],
        sp: usize,
        n: usize,
        v: *const f32,
        stride: usize,
        o: &mut [f32],
        hd: usize,
    ) {
        let mut t0 = 0;
        while t0 < hd {
            cols_dispatch!(
                (hd - t0).div_ceil(8),
                sum_tile::<R>,
                p,
                sp,
                n,
                v,
                stride,
                t0,
                o,
                hd
            );
            t0 += 32;
        }
    }

    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn sum_tile<const R: usize, const C: usize>(
        p: &[f32],
        sp: usize,
        n: usize,
        v: *const f32,
        stride: usize,
        t0: usize,
        o: &mut [f32],
        hd: usize,
    ) {
        let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let masks: [__m256i; C] = std::array::from_fn(|c| {
            let left = hd.saturating_sub(t0 + 8 * c).min(8);
            _mm256_cmpgt_epi32(_mm256_set1_epi32(left as i32), lanes)
        });
        let full = t0 + 8 * C <= hd;
        let mut acc = [[_mm256_setzero_ps(); C]; R];
        let pp = p.as_ptr();
        for j in 0..n {
            let row = v.add(j * stride + t0);
            let x: [__m256; C] = std::array::from_fn(|c| {
                if full {
                    _mm256_loadu_ps(row.add(8 * c))
                } else {
                    _mm256_maskload_ps(row.add(8 * c), masks[c])
                }
            });
            for (r, acc) in acc.iter_mut().enumerate() {
                let pv = _mm256_set1_ps(*pp.add(r * sp + j));
                for (a, &xc) in acc.iter_mut().zip(&x) {
                    *a = _mm256_fmadd_ps(pv, xc, *a);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            for (c, a) in acc.iter().enumerate() {
                _mm256_maskstore_ps(o.as_mut_ptr().add(r * hd + t0 + 8 * c), masks[c], *a);
            }
        }
    }
}

struct SendPtr(*mut f32);
// SAFETY: used only for the disjoint writes described in `attention`.
unsafe impl Sync for SendPtr {}
unsafe impl Send for SendPtr {}

/// [`attention`] as a candle operation on a contiguous f32 `[batch, seq, 3 * heads * head_dim]`
/// CPU tensor; the result is `[batch, queries.per_sequence(seq), d]`.
pub struct FusedAttention {
    /// Attention heads.
    pub heads: usize,
    /// `1 / sqrt(head_dim)`.
    pub scale: f32,
    /// Whether queries only see earlier keys (the text tower).
    pub causal: bool,
    /// The query rows computed.
    pub queries: Queries,
    /// The vector loops used (`None`: portable); the CPU must have them.
    pub isa: Option<Isa>,
}

impl CustomOp1 for FusedAttention {
    fn name(&self) -> &'static str {
        "fused-attention"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let data = crate::clip::kernels::ops::contiguous_f32(storage, layout, self.name())?;
        let (batch, seq, d3) = layout.shape().dims3()?;
        if self.heads == 0 || d3 % (3 * self.heads) != 0 {
            candle_core::bail!(
                "fused-attention: {d3} values per token for {} heads",
                self.heads
            )
        }
        let d = d3 / 3;
        if let Err(e) = self.queries.check(batch, seq) {
            candle_core::bail!("fused-attention: {e}")
        }
        let shape = AttentionShape {
            batch,
            seq,
            heads: self.heads,
            head_dim: d / self.heads,
        };
        if let Some(isa) = self.isa.filter(|i| !i.available()) {
            candle_core::bail!("fused-attention: this CPU lacks {}", isa.name())
        }
        let out = attention(
            data,
            shape,
            self.scale,
            self.causal,
            &self.queries,
            self.isa,
        );
        let rows = self.queries.per_sequence(seq);
        Ok((CpuStorage::F32(out), Shape::from((batch, rows, d))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plain f64 attention for one query row.
    fn reference(
        qkv: &[f32],
        s: AttentionShape,
        scale: f32,
        causal: bool,
        b: usize,
        i: usize,
    ) -> Vec<f32> {
        let d = s.heads * s.head_dim;
        let at = |j: usize, part: usize, h: usize, t: usize| {
            qkv[((b * s.seq + j) * 3 + part) * d + h * s.head_dim + t] as f64
        };
        let mut out = vec![0f32; d];
        for h in 0..s.heads {
            let visible = if causal { i + 1 } else { s.seq };
            let sc: Vec<f64> = (0..visible)
                .map(|j| {
                    (0..s.head_dim)
                        .map(|t| at(i, 0, h, t) * at(j, 1, h, t))
                        .sum::<f64>()
                        * scale as f64
                })
                .collect();
            let max = sc.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = sc.iter().map(|v| (v - max).exp()).collect();
            let sum: f64 = e.iter().sum();
            for t in 0..s.head_dim {
                out[h * s.head_dim + t] = (0..visible)
                    .map(|j| e[j] / sum * at(j, 2, h, t))
                    .sum::<f64>() as f32;
            }
        }
        out
    }

    fn values(len: usize) -> Vec<f32> {
        (0..len)
            .map(|i| ((i * 7919 % 1000) as f32 / 250.0) - 2.0)
            .collect()
    }

    #[test]
    fn matches_plain_attention_for_all_rows_and_selected_rows() {
        for (shape, causal) in [
            (
                AttentionShape {
                    batch: 2,
                    seq: 50,
                    heads: 3,
                    head_dim: 64,
                },
                false,
            ),
            (
                AttentionShape {
                    batch: 2,
                    seq: 77,
                    heads: 2,
                    head_dim: 80,
                },
                true,
            ),
            (
                AttentionShape {
                    batch: 3,
                    seq: 13,
                    heads: 4,
                    head_dim: 8,
                },
                true,
            ),
            (
                AttentionShape {
                    batch: 1,
                    seq: 150,
                    heads: 2,
                    head_dim: 64,
                },
                false,
            ),
            (
                AttentionShape {
                    batch: 1,
                    seq: 1,
                    heads: 1,
                    head_dim: 5,
                },
                true,
            ),
        ] {
            let qkv = values(shape.batch * shape.seq * 3 * shape.heads * shape.head_dim);
            let scale = (shape.head_dim as f32).powf(-0.5);
            let d = shape.heads * shape.head_dim;
            let rows: Vec<usize> = (0..shape.batch).map(|b| (b * 5) % shape.seq).collect();
            let mut paths = vec![None];
            paths.extend(Isa::ALL.into_iter().filter(|i| i.available()).map(Some));
            for isa in paths {
                let all = attention(&qkv, shape, scale, causal, &Queries::All, isa);
                let picked = Queries::Rows(rows.clone());
                let some = attention(&qkv, shape, scale, causal, &picked, isa);
                let p = shape.seq / 2;
                let tail = attention(&qkv, shape, scale, causal, &Queries::From(p), isa);
                for b in 0..shape.batch {
                    for i in 0..shape.seq {
                        let want = reference(&qkv, shape, scale, causal, b, i);
                        let got = &all[(b * shape.seq + i) * d..][..d];
                        for (g, w) in got.iter().zip(&want) {
                            assert!(
                                (g - w).abs() < 1e-5,
                                "{isa:?} {shape:?} b={b} i={i}: {g} vs {w}"
                            );
                        }
                        if rows[b] == i {
                            assert_eq!(&some[b * d..(b + 1) * d], got, "selected row {i} of {b}");
                        }
                        if i >= p {
                            let r = b * (shape.seq - p) + i - p;
                            assert_eq!(&tail[r * d..(r + 1) * d], got, "row {i} of {b} after {p}");
                        }
                    }
                }
            }
        }
    }
}
