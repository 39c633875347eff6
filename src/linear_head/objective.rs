//! The regularised cross-entropy objective and its gradient: loss and gradient run over fixed
//! row chunks in parallel (rayon) with blocked f32 kernels (portable, and AVX2/FMA where the
//! CPU has it) and an ordered f64 reduction, so results are bit-identical for any thread count.
//! When the requested tolerance is below what f32 kernels resolve, the solver finishes in f64.
//!
//! Hand-written rather than built on a linear-algebra crate because the fused forward/softmax/
//! backward pass over padded class blocks, with a reduction order fixed independently of the
//! thread count, is what makes fits both fast and reproducible.

use super::*;

/// The objective of [`fit`] as a function of the parameters, for checking optimality or
/// driving another optimiser. Parameters are `W` row-major (classes × dim) then `b`.
pub struct Objective<'a> {
    pub(crate) problem: Problem<'a>,
}

impl<'a> Objective<'a> {
    /// The scaled objective (`objective / (C · Σ w_i)`) of `data` at `c`, with an optional prior.
    pub fn new(data: &Dataset<'a>, prior: Option<&LinearHead>, c: f64) -> Result<Self, HeadError> {
        FitOptions {
            c,
            ..FitOptions::default()
        }
        .validate()?;
        if data.is_empty() {
            return Err(HeadError::NoExamples);
        }
        if let Some(p) = prior {
            p.check_against("the prior", data.n_classes, data.dim())?;
        }
        let prior_theta = prior.map(head_to_theta);
        let all: Vec<usize> = (0..data.len()).collect();
        Ok(Objective {
            problem: Problem::new(data, &all, prior_theta.as_deref(), c),
        })
    }

    /// Number of parameters, `classes · (dim + 1)`.
    pub fn n_params(&self) -> usize {
        self.problem.n_params()
    }

    /// Parameters of a head, in this objective's layout.
    pub fn params_of(&self, head: &LinearHead) -> Result<Vec<f64>, HeadError> {
        head.check_against("the head", self.problem.k, self.problem.d)?;
        Ok(head_to_theta(head))
    }

    /// Value and gradient with f64 kernels. Panics if `theta.len() != n_params()`.
    pub fn value_and_gradient(&self, theta: &[f64]) -> (f64, Vec<f64>) {
        assert_eq!(theta.len(), self.n_params(), "parameter vector length");
        self.problem.eval(theta, Precision::Double)
    }

    /// Value and gradient with the faster f32 kernels (f64 reductions). Panics if
    /// `theta.len() != n_params()`.
    pub fn value_and_gradient_fast(&self, theta: &[f64]) -> (f64, Vec<f64>) {
        assert_eq!(theta.len(), self.n_params(), "parameter vector length");
        self.problem.eval(theta, Precision::Single)
    }
}

/// Largest absolute entry of a vector (the gradient norm the solver stops on).
pub fn max_abs(v: &[f64]) -> f64 {
    v.iter().fold(0.0f64, |a, b| a.max(b.abs()))
}

// ---------------------------------------------------------------------------
// The objective: fused loss + gradient over row chunks
// ---------------------------------------------------------------------------

/// Rows per work item; fixed so that results do not depend on the thread count.
pub(crate) const CHUNK: usize = 240;
/// Chunks per reduction batch (bounds the memory of partial gradients).
pub(crate) const BATCH: usize = 16;
/// Classes are padded to a multiple of this in the packed weights.
pub(crate) const KPAD: usize = 16;
/// With a tolerance below this, the solver confirms and finishes in f64 kernels.
pub(crate) const SINGLE_PRECISION_TOL: f64 = 1e-5;
/// scikit-learn's `ftol` for L-BFGS-B.
pub(crate) const FTOL: f64 = 64.0 * f64::EPSILON;
/// Line-search evaluations per iteration in f32 kernels, before continuing in f64.
pub(crate) const SINGLE_MAX_LS: usize = 10;
/// L-BFGS memory (scipy's default `maxcor`).
pub(crate) const MEMORY: usize = 10;
/// Line-search evaluations per iteration (scikit-learn's `maxls`).
pub(crate) const MAX_LS: usize = 50;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Precision {
    Single,
    Double,
}

pub(crate) struct Problem<'a> {
    pub(crate) x: &'a [f32],
    pub(crate) d: usize,
    pub(crate) k: usize,
    pub(crate) rows: Vec<u32>,
    pub(crate) labels: Vec<u32>,
    pub(crate) weights: Option<Vec<f64>>,
    pub(crate) weight_sum: f64,
    pub(crate) c: f64,
    pub(crate) prior: Option<Vec<f64>>,
}

impl<'a> Problem<'a> {
    pub(crate) fn new(data: &Dataset<'a>, rows: &[usize], prior: Option<&[f64]>, c: f64) -> Self {
        let labels = rows.iter().map(|&i| data.labels[i] as u32).collect();
        let weights: Option<Vec<f64>> = data.weights.map(|w| rows.iter().map(|&i| w[i]).collect());
        let weight_sum = match &weights {
            Some(w) => w.iter().sum(),
            None => rows.len() as f64,
        };
        Problem {
            x: &data.x.data,
            d: data.dim(),
            k: data.n_classes,
            rows: rows.iter().map(|&i| i as u32).collect(),
            labels,
            weights,
            weight_sum: if weight_sum > 0.0 { weight_sum } else { 1.0 },
            c,
            prior: prior.map(|p| p.to_vec()),
        }
    }

    pub(crate) fn n_params(&self) -> usize {
        self.k * (self.d + 1)
    }

    /// Scaled objective `(C Σ w CE + ½‖θ_W − θ0_W‖² [+ ½‖b − b0‖² with a prior]) / (C Σ w)` and its gradient.
    pub(crate) fn eval(&self, theta: &[f64], precision: Precision) -> (f64, Vec<f64>) {
        self.eval_with(theta, precision, simd_available())
    }

    /// [`Problem::eval`] with the SIMD kernels on or off (off: the portable kernels).
    pub(crate) fn eval_with(
        &self,
        theta: &[f64],
        precision: Precision,
        simd: bool,
    ) -> (f64, Vec<f64>) {
        let (mut loss, mut grad) = match precision {
            Precision::Single => self.data_term::<f32>(theta, simd),
            Precision::Double => self.data_term::<f64>(theta, simd),
        };
        let inv_s = 1.0 / self.weight_sum;
        loss *= inv_s;
        grad.iter_mut().for_each(|g| *g *= inv_s);
        let lambda = 1.0 / (self.c * self.weight_sum);
        let n_pen = match &self.prior {
            Some(_) => self.n_params(),
            None => self.k * self.d,
        };
        let mut pen = 0.0f64;
        for i in 0..n_pen {
            let diff = theta[i] - self.prior.as_ref().map_or(0.0, |p| p[i]);
            pen += diff * diff;
            grad[i] += lambda * diff;
        }
        (loss + 0.5 * lambda * pen, grad)
    }

    /// Unscaled `Σ w_i CE_i` and its gradient.
    pub(crate) fn data_term<T: Real>(&self, theta: &[f64], simd: bool) -> (f64, Vec<f64>) {
        let (k, d) = (self.k, self.d);
        let kp = k.div_ceil(KPAD) * KPAD;
        let mut wt = vec![T::ZERO; d * kp];
        for c in 0..k {
            for j in 0..d {
                wt[j * kp + c] = T::from_f64(theta[c * d + j]);
            }
        }
        let mut bias = vec![T::ZERO; kp];
        for c in 0..k {
            bias[c] = T::from_f64(theta[k * d + c]);
        }
        let n = self.rows.len();
        let nchunks = n.div_ceil(CHUNK);
        let mut loss = 0.0f64;
        let mut grad = vec![0.0f64; k * (d + 1)];
        let mut bufs: Vec<ChunkBuf<T>> = (0..BATCH.min(nchunks))
            .map(|_| ChunkBuf {
                z: vec![T::ZERO; CHUNK * kp],
                gw: vec![T::ZERO; kp * d],
                gb: vec![0.0; k],
                loss: 0.0,
            })
            .collect();
        let ctx = Ctx {
            p: self,
            wt: &wt,
            bias: &bias,
            kp,
        };
        for b0 in (0..nchunks).step_by(BATCH) {
            let nb = BATCH.min(nchunks - b0);
            bufs[..nb].par_iter_mut().enumerate().for_each(|(o, buf)| {
                let ci = b0 + o;
                let (start, end) = (ci * CHUNK, ((ci + 1) * CHUNK).min(n));
                run_chunk(&ctx, start, end, buf, simd);
            });
            // Ordered reduction: each element sums chunks in chunk order.
            for buf in &bufs[..nb] {
                loss += buf.loss;
                for c in 0..k {
                    grad[k * d + c] += buf.gb[c];
                }
            }
            let parts = &bufs[..nb];
            grad[..k * d]
                .par_chunks_mut(4096)
                .enumerate()
                .for_each(|(bi, out)| {
                    let off = bi * 4096;
                    let len = out.len();
                    for buf in parts {
                        for (o, v) in out.iter_mut().zip(&buf.gw[off..off + len]) {
                            *o += v.to_f64();
                        }
                    }
                });
        }
        (loss, grad)
    }
}

pub(crate) struct ChunkBuf<T> {
    pub(crate) z: Vec<T>,
    pub(crate) gw: Vec<T>,
    pub(crate) gb: Vec<f64>,
    pub(crate) loss: f64,
}

pub(crate) struct Ctx<'p, 'a, T> {
    pub(crate) p: &'p Problem<'a>,
    pub(crate) wt: &'p [T],
    pub(crate) bias: &'p [T],
    pub(crate) kp: usize,
}

pub(crate) fn simd_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static SIMD: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *SIMD.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

pub(crate) fn run_chunk<T: Real>(
    ctx: &Ctx<'_, '_, T>,
    start: usize,
    end: usize,
    buf: &mut ChunkBuf<T>,
    simd: bool,
) {
    chunk_body::<T>(ctx, start, end, buf, simd);
}

/// Whether the portable kernels may use `mul_add` (fast only where FMA is baseline).
pub(crate) const PORTABLE_FMA: bool = cfg!(target_arch = "aarch64");

/// Forward (logits), softmax/cross-entropy, and backward (`Gᵀ X`) for rows `start..end`.
pub(crate) fn chunk_body<T: Real>(
    ctx: &Ctx<'_, '_, T>,
    start: usize,
    end: usize,
    buf: &mut ChunkBuf<T>,
    simd: bool,
) {
    let p = ctx.p;
    let (k, d, kp) = (p.k, p.d, ctx.kp);
    let b = end - start;
    let rows: Vec<&[f32]> = p.rows[start..end]
        .iter()
        .map(|&r| &p.x[r as usize * d..(r as usize + 1) * d])
        .collect();
    let z = &mut buf.z[..b * kp];
    if simd {
        // SAFETY: `simd` is true only when the CPU reports AVX2 and FMA.
        unsafe { T::forward_simd(&rows, d, ctx.wt, ctx.bias, kp, z) };
    } else {
        forward::<T, PORTABLE_FMA>(&rows, d, ctx.wt, ctx.bias, kp, z);
    }

    // Softmax, weighted cross-entropy, and G = w (p − y) in place of the logits.
    buf.loss = 0.0;
    buf.gb.iter_mut().for_each(|g| *g = 0.0);
    for i in 0..b {
        let y = p.labels[start + i] as usize;
        let w = p.weights.as_ref().map_or(1.0, |ws| ws[start + i]);
        let zi = &mut z[i * kp..(i + 1) * kp];
        let mut m = zi[0];
        for &v in &zi[1..k] {
            if v > m {
                m = v;
            }
        }
        let zy = (zi[y] - m).to_f64();
        let mut s = 0.0f64;
        for v in zi[..k].iter_mut() {
            let e = (*v - m).exp();
            *v = e;
            s += e.to_f64();
        }
        buf.loss += w * (s.ln() - zy);
        let inv = 1.0 / s;
        for (c, v) in zi[..k].iter_mut().enumerate() {
            let g = w * (v.to_f64() * inv - if c == y { 1.0 } else { 0.0 });
            *v = T::from_f64(g);
            buf.gb[c] += g;
        }
        for v in zi[k..].iter_mut() {
            *v = T::ZERO;
        }
    }
    if simd {
        // SAFETY: as above.
        unsafe { T::backward_simd(&rows, d, z, kp, k, &mut buf.gw) };
    } else {
        backward::<T, PORTABLE_FMA>(&rows, d, z, kp, k, &mut buf.gw);
    }
}

#[inline(always)]
pub(crate) fn madd<T: Real, const FMA: bool>(a: T, b: T, c: T) -> T {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// `z[i, c] = x_i · w_c + b_c` for all rows and padded classes (`wt` is dim × kp).
#[inline(always)]
pub(crate) fn forward<T: Real, const FMA: bool>(
    rows: &[&[f32]],
    d: usize,
    wt: &[T],
    bias: &[T],
    kp: usize,
    z: &mut [T],
) {
    const MR: usize = 6;
    let b = rows.len();
    let full = b / MR * MR;
    if std::mem::size_of::<T>() == 4 {
        let mut r0 = 0;
        while r0 < full {
            fwd_rows::<T, FMA, MR, 16>(&rows[r0..r0 + MR], d, wt, bias, kp, &mut z[r0 * kp..]);
            r0 += MR;
        }
        for r in full..b {
            fwd_rows::<T, FMA, 1, 16>(&rows[r..r + 1], d, wt, bias, kp, &mut z[r * kp..]);
        }
    } else {
        let mut r0 = 0;
        while r0 < full {
            fwd_rows::<T, FMA, MR, 8>(&rows[r0..r0 + MR], d, wt, bias, kp, &mut z[r0 * kp..]);
            r0 += MR;
        }
        for r in full..b {
            fwd_rows::<T, FMA, 1, 8>(&rows[r..r + 1], d, wt, bias, kp, &mut z[r * kp..]);
        }
    }
}

#[inline(always)]
pub(crate) fn fwd_rows<T: Real, const FMA: bool, const MR: usize, const NR: usize>(
    rows: &[&[f32]],
    d: usize,
    wt: &[T],
    bias: &[T],
    kp: usize,
    z: &mut [T],
) {
    let xr: [&[f32]; MR] = std::array::from_fn(|r| &rows[r][..d]);
    let mut c0 = 0;
    while c0 < kp {
        let mut acc = [[T::ZERO; NR]; MR];
        for j in 0..d {
            let w: &[T; NR] = wt[j * kp + c0..j * kp + c0 + NR].try_into().expect("tile");
            for r in 0..MR {
                let xv = T::from_f32(xr[r][j]);
                for l in 0..NR {
                    acc[r][l] = madd::<T, FMA>(xv, w[l], acc[r][l]);
                }
            }
        }
        for r in 0..MR {
            for l in 0..NR {
                z[r * kp + c0 + l] = acc[r][l] + bias[c0 + l];
            }
        }
        c0 += NR;
    }
}

/// `gw[c, j] = Σ_i g[i, c] x_i[j]` for the real classes (`gw` is kp × dim; rows ≥ k untouched).
#[inline(always)]
pub(crate) fn backward<T: Real, const FMA: bool>(
    rows: &[&[f32]],
    d: usize,
    g: &[T],
    kp: usize,
    k: usize,
    gw: &mut [T],
) {
    const CB: usize = 4;
    let kb = k.div_ceil(CB) * CB; // ≤ kp since kp is a multiple of 16
    let b = rows.len();
    let (main, nl) = if std::mem::size_of::<T>() == 4 {
        (d / 16 * 16, 16)
    } else {
        (d / 8 * 8, 8)
    };
    let mut j0 = 0;
    while j0 < main {
        let mut c0 = 0;
        while c0 < kb {
            if nl == 16 {
                bwd_tile::<T, FMA, CB, 16>(rows, g, kp, c0, j0, b, d, gw);
            } else {
                bwd_tile::<T, FMA, CB, 8>(rows, g, kp, c0, j0, b, d, gw);
            }
            c0 += CB;
        }
        j0 += nl;
    }
    // Remaining columns, one at a time.
    for j in main..d {
        for c in 0..k {
            let mut acc = T::ZERO;
            for (i, r) in rows.iter().enumerate() {
                acc = madd::<T, FMA>(g[i * kp + c], T::from_f32(r[j]), acc);
            }
            gw[c * d + j] = acc;
        }
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn bwd_tile<T: Real, const FMA: bool, const CB: usize, const NL: usize>(
    rows: &[&[f32]],
    g: &[T],
    kp: usize,
    c0: usize,
    j0: usize,
    b: usize,
    d: usize,
    gw: &mut [T],
) {
    let mut acc = [[T::ZERO; NL]; CB];
    for i in 0..b {
        let x: &[f32; NL] = rows[i][j0..j0 + NL].try_into().expect("tile");
        let gi: &[T; CB] = g[i * kp + c0..i * kp + c0 + CB].try_into().expect("tile");
        let xv: [T; NL] = std::array::from_fn(|l| T::from_f32(x[l]));
        for cb in 0..CB {
            for l in 0..NL {
                acc[cb][l] = madd::<T, FMA>(gi[cb], xv[l], acc[cb][l]);
            }
        }
    }
    for (cb, a) in acc.iter().enumerate() {
        let row = (c0 + cb) * d + j0;
        gw[row..row + NL].copy_from_slice(a);
    }
}

/// Logits for `idx` rows of `x` under f64 parameters (computed with f32 kernels).
pub(crate) fn logits_for_rows(x: &Matrix, idx: &[u32], w: &[f64], b: &[f64], k: usize) -> Matrix {
    logits_for_rows_with(x, idx, w, b, k, simd_available())
}

pub(crate) fn logits_for_rows_with(
    x: &Matrix,
    idx: &[u32],
    w: &[f64],
    b: &[f64],
    k: usize,
    simd: bool,
) -> Matrix {
    let d = x.cols;
    let kp = k.div_ceil(KPAD) * KPAD;
    let mut wt = vec![0f32; d * kp];
    for c in 0..k {
        for j in 0..d {
            wt[j * kp + c] = w[c * d + j] as f32;
        }
    }
    let mut bias = vec![0f32; kp];
    for c in 0..k {
        bias[c] = b[c] as f32;
    }
    let mut out = vec![0f32; idx.len() * k];
    out.par_chunks_mut(CHUNK * k.max(1))
        .zip(idx.par_chunks(CHUNK))
        .for_each(|(o, rows_idx)| {
            let rows: Vec<&[f32]> = rows_idx
                .iter()
                .map(|&r| &x.data[r as usize * d..(r as usize + 1) * d])
                .collect();
            let mut z = vec![0f32; rows.len() * kp];
            predict_chunk(&rows, d, &wt, &bias, kp, &mut z, simd);
            for (i, orow) in o.chunks_mut(k).enumerate() {
                orow.copy_from_slice(&z[i * kp..i * kp + k]);
            }
        });
    Matrix {
        rows: idx.len(),
        cols: k,
        data: out,
    }
}

pub(crate) fn predict_chunk(
    rows: &[&[f32]],
    d: usize,
    wt: &[f32],
    bias: &[f32],
    kp: usize,
    z: &mut [f32],
    simd: bool,
) {
    if simd {
        // SAFETY: `simd` is true only when the CPU reports AVX2 and FMA.
        unsafe { f32::forward_simd(rows, d, wt, bias, kp, z) };
    } else {
        forward::<f32, PORTABLE_FMA>(rows, d, wt, bias, kp, z);
    }
}

/// Scalar type of the kernels (f32 or f64).
pub(crate) trait Real:
    Copy
    + Send
    + Sync
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + 'static
{
    const ZERO: Self;
    fn from_f32(x: f32) -> Self;
    fn from_f64(x: f64) -> Self;
    fn to_f64(self) -> f64;
    fn mul_add(self, a: Self, b: Self) -> Self;
    fn exp(self) -> Self;
    /// [`forward`] with AVX2/FMA kernels.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    unsafe fn forward_simd(
        rows: &[&[f32]],
        d: usize,
        wt: &[Self],
        bias: &[Self],
        kp: usize,
        z: &mut [Self],
    );
    /// [`backward`] with AVX2/FMA kernels.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    unsafe fn backward_simd(
        rows: &[&[f32]],
        d: usize,
        g: &[Self],
        kp: usize,
        k: usize,
        gw: &mut [Self],
    );
}

impl Real for f32 {
    const ZERO: Self = 0.0;
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        x
    }
    #[inline(always)]
    fn from_f64(x: f64) -> Self {
        x as f32
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self as f64
    }
    #[inline(always)]
    fn mul_add(self, a: Self, b: Self) -> Self {
        f32::mul_add(self, a, b)
    }
    #[inline(always)]
    fn exp(self) -> Self {
        f32::exp(self)
    }
    unsafe fn forward_simd(
        rows: &[&[f32]],
        d: usize,
        wt: &[Self],
        bias: &[Self],
        kp: usize,
        z: &mut [Self],
    ) {
        #[cfg(target_arch = "x86_64")]
        avx2::forward_f32(rows, d, wt, bias, kp, z);
        #[cfg(not(target_arch = "x86_64"))]
        forward::<f32, PORTABLE_FMA>(rows, d, wt, bias, kp, z);
    }
    unsafe fn backward_simd(
        rows: &[&[f32]],
        d: usize,
        g: &[Self],
        kp: usize,
        k: usize,
        gw: &mut [Self],
    ) {
        #[cfg(target_arch = "x86_64")]
        avx2::backward_f32(rows, d, g, kp, k, gw);
        #[cfg(not(target_arch = "x86_64"))]
        backward::<f32, PORTABLE_FMA>(rows, d, g, kp, k, gw);
    }
}

impl Real for f64 {
    const ZERO: Self = 0.0;
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        x as f64
    }
    #[inline(always)]
    fn from_f64(x: f64) -> Self {
        x
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self
    }
    #[inline(always)]
    fn mul_add(self, a: Self, b: Self) -> Self {
        f64::mul_add(self, a, b)
    }
    #[inline(always)]
    fn exp(self) -> Self {
        f64::exp(self)
    }
    unsafe fn forward_simd(
        rows: &[&[f32]],
        d: usize,
        wt: &[Self],
        bias: &[Self],
        kp: usize,
        z: &mut [Self],
    ) {
        #[cfg(target_arch = "x86_64")]
        avx2::forward_f64(rows, d, wt, bias, kp, z);
        #[cfg(not(target_arch = "x86_64"))]
        forward::<f64, PORTABLE_FMA>(rows, d, wt, bias, kp, z);
    }
    unsafe fn backward_simd(
        rows: &[&[f32]],
        d: usize,
        g: &[Self],
        kp: usize,
        k: usize,
        gw: &mut [Self],
    ) {
        #[cfg(target_arch = "x86_64")]
        avx2::backward_f64(rows, d, g, kp, k, gw);
        #[cfg(not(target_arch = "x86_64"))]
        backward::<f64, PORTABLE_FMA>(rows, d, g, kp, k, gw);
    }
}

/// AVX2/FMA kernels for the two products of the objective. Same contracts as the portable
/// [`forward`] and [`backward`]: `wt` is dim × kp, `z`/`g` are rows × kp, `gw` is kp × dim,
/// and kp is a multiple of 16.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    const MR: usize = 6;

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn forward_f32(
        rows: &[&[f32]],
        d: usize,
        wt: &[f32],
        bias: &[f32],
        kp: usize,
        z: &mut [f32],
    ) {
        assert!(
            kp.is_multiple_of(16)
                && wt.len() >= d * kp
                && bias.len() >= kp
                && z.len() >= rows.len() * kp
        );
        assert!(rows.iter().all(|r| r.len() >= d));
        let b = rows.len();
        let mut r0 = 0;
        while r0 + MR <= b {
            fwd_f32::<MR>(&rows[r0..r0 + MR], d, wt, bias, kp, &mut z[r0 * kp..]);
            r0 += MR;
        }
        while r0 < b {
            fwd_f32::<1>(&rows[r0..r0 + 1], d, wt, bias, kp, &mut z[r0 * kp..]);
            r0 += 1;
        }
    }

    #[inline(always)]
    unsafe fn fwd_f32<const R: usize>(
        rows: &[&[f32]],
        d: usize,
        wt: &[f32],
        bias: &[f32],
        kp: usize,
        z: &mut [f32],
    ) {
        let xp: [*const f32; R] = std::array::from_fn(|r| rows[r].as_ptr());
        let w = wt.as_ptr();
        let mut c0 = 0;
        while c0 < kp {
            let mut a0 = [_mm256_setzero_ps(); R];
            let mut a1 = [_mm256_setzero_ps(); R];
            for j in 0..d {
                let wj = w.add(j * kp + c0);
                let w0 = _mm256_loadu_ps(wj);
                let w1 = _mm256_loadu_ps(wj.add(8));
                for r in 0..R {
                    let xv = _mm256_broadcast_ss(&*xp[r].add(j));
                    a0[r] = _mm256_fmadd_ps(xv, w0, a0[r]);
                    a1[r] = _mm256_fmadd_ps(xv, w1, a1[r]);
                }
            }
            let b0 = _mm256_loadu_ps(bias.as_ptr().add(c0));
            let b1 = _mm256_loadu_ps(bias.as_ptr().add(c0 + 8));
            for r in 0..R {
                let o = z.as_mut_ptr().add(r * kp + c0);
                _mm256_storeu_ps(o, _mm256_add_ps(a0[r], b0));
                _mm256_storeu_ps(o.add(8), _mm256_add_ps(a1[r], b1));
            }
            c0 += 16;
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn forward_f64(
        rows: &[&[f32]],
        d: usize,
        wt: &[f64],
        bias: &[f64],
        kp: usize,
        z: &mut [f64],
    ) {
        assert!(
            kp.is_multiple_of(16)
                && wt.len() >= d * kp
                && bias.len() >= kp
                && z.len() >= rows.len() * kp
        );
        assert!(rows.iter().all(|r| r.len() >= d));
        let b = rows.len();
        let mut r0 = 0;
        while r0 + MR <= b {
            fwd_f64::<MR>(&rows[r0..r0 + MR], d, wt, bias, kp, &mut z[r0 * kp..]);
            r0 += MR;
        }
        while r0 < b {
            fwd_f64::<1>(&rows[r0..r0 + 1], d, wt, bias, kp, &mut z[r0 * kp..]);
            r0 += 1;
        }
    }

    #[inline(always)]
    unsafe fn fwd_f64<const R: usize>(
        rows: &[&[f32]],
        d: usize,
        wt: &[f64],
        bias: &[f64],
        kp: usize,
        z: &mut [f64],
    ) {
        let xp: [*const f32; R] = std::array::from_fn(|r| rows[r].as_ptr());
        let w = wt.as_ptr();
        let mut c0 = 0;
        while c0 < kp {
            let mut a0 = [_mm256_setzero_pd(); R];
            let mut a1 = [_mm256_setzero_pd(); R];
            for j in 0..d {
                let wj = w.add(j * kp + c0);
                let w0 = _mm256_loadu_pd(wj);
                let w1 = _mm256_loadu_pd(wj.add(4));
                for r in 0..R {
                    let xv = _mm256_set1_pd(*xp[r].add(j) as f64);
                    a0[r] = _mm256_fmadd_pd(xv, w0, a0[r]);
                    a1[r] = _mm256_fmadd_pd(xv, w1, a1[r]);
                }
            }
            let b0 = _mm256_loadu_pd(bias.as_ptr().add(c0));
            let b1 = _mm256_loadu_pd(bias.as_ptr().add(c0 + 4));
            for r in 0..R {
                let o = z.as_mut_ptr().add(r * kp + c0);
                _mm256_storeu_pd(o, _mm256_add_pd(a0[r], b0));
                _mm256_storeu_pd(o.add(4), _mm256_add_pd(a1[r], b1));
            }
            c0 += 8;
        }
    }

    const CB: usize = 4;

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn backward_f32(
        rows: &[&[f32]],
        d: usize,
        g: &[f32],
        kp: usize,
        k: usize,
        gw: &mut [f32],
    ) {
        let b = rows.len();
        let kb = k.div_ceil(CB) * CB;
        assert!(kp.is_multiple_of(16) && kb <= kp && g.len() >= b * kp && gw.len() >= kb * d);
        assert!(rows.iter().all(|r| r.len() >= d));
        let main = d / 16 * 16;
        let gp = g.as_ptr();
        let mut j0 = 0;
        while j0 < main {
            let mut c0 = 0;
            while c0 < kb {
                let mut a0 = [_mm256_setzero_ps(); CB];
                let mut a1 = [_mm256_setzero_ps(); CB];
                for (i, r) in rows.iter().enumerate() {
                    let xp = r.as_ptr().add(j0);
                    let x0 = _mm256_loadu_ps(xp);
                    let x1 = _mm256_loadu_ps(xp.add(8));
                    let gi = gp.add(i * kp + c0);
                    for c in 0..CB {
                        let gv = _mm256_broadcast_ss(&*gi.add(c));
                        a0[c] = _mm256_fmadd_ps(gv, x0, a0[c]);
                        a1[c] = _mm256_fmadd_ps(gv, x1, a1[c]);
                    }
                }
                for c in 0..CB {
                    let o = gw.as_mut_ptr().add((c0 + c) * d + j0);
                    _mm256_storeu_ps(o, a0[c]);
                    _mm256_storeu_ps(o.add(8), a1[c]);
                }
                c0 += CB;
            }
            j0 += 16;
        }
        for j in main..d {
            for c in 0..k {
                let mut acc = 0.0f32;
                for (i, r) in rows.iter().enumerate() {
                    acc = g[i * kp + c].mul_add(r[j], acc);
                }
                gw[c * d + j] = acc;
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn backward_f64(
        rows: &[&[f32]],
        d: usize,
        g: &[f64],
        kp: usize,
        k: usize,
        gw: &mut [f64],
    ) {
        let b = rows.len();
        let kb = k.div_ceil(CB) * CB;
        assert!(kp.is_multiple_of(16) && kb <= kp && g.len() >= b * kp && gw.len() >= kb * d);
        assert!(rows.iter().all(|r| r.len() >= d));
        let main = d / 8 * 8;
        let gp = g.as_ptr();
        let mut j0 = 0;
        while j0 < main {
            let mut c0 = 0;
            while c0 < kb {
                let mut a0 = [_mm256_setzero_pd(); CB];
                let mut a1 = [_mm256_setzero_pd(); CB];
                for (i, r) in rows.iter().enumerate() {
                    let xp = r.as_ptr().add(j0);
                    let x0 = _mm256_cvtps_pd(_mm_loadu_ps(xp));
                    let x1 = _mm256_cvtps_pd(_mm_loadu_ps(xp.add(4)));
                    let gi = gp.add(i * kp + c0);
                    for c in 0..CB {
                        let gv = _mm256_broadcast_sd(&*gi.add(c));
                        a0[c] = _mm256_fmadd_pd(gv, x0, a0[c]);
                        a1[c] = _mm256_fmadd_pd(gv, x1, a1[c]);
                    }
                }
                for c in 0..CB {
                    let o = gw.as_mut_ptr().add((c0 + c) * d + j0);
                    _mm256_storeu_pd(o, a0[c]);
                    _mm256_storeu_pd(o.add(4), a1[c]);
                }
                c0 += CB;
            }
            j0 += 8;
        }
        for j in main..d {
            for c in 0..k {
                let mut acc = 0.0f64;
                for (i, r) in rows.iter().enumerate() {
                    acc = g[i * kp + c].mul_add(r[j] as f64, acc);
                }
                gw[c * d + j] = acc;
            }
        }
    }
}
