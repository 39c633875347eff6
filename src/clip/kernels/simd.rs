//! The instruction sets the packed CPU kernels are built for ([`Isa`]), and their vector math:
//! `e^x` and `quick_gelu` on 16 lanes (AVX-512) or 8 lanes (AVX2 + FMA) at once.
//!
//! Used by [`crate::clip::kernels::gemm`] (activation fused into the matrix multiply's stores) and
//! [`crate::clip::kernels::attention`] (softmax); both fall back to scalar code on other CPUs.
//! Written by hand because no stable crate offers a vectorised `exp` on `std::arch` registers.

/// An instruction set cliplabel's packed fp32 kernels have a version for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    /// AVX-512F: 16-lane registers, a 12x32 matrix-multiply kernel.
    Avx512,
    /// AVX2 and FMA: 8-lane registers, a 6x16 matrix-multiply kernel.
    Avx2,
}

impl Isa {
    /// Every instruction set, best first.
    pub const ALL: [Isa; 2] = [Isa::Avx512, Isa::Avx2];

    /// Whether this CPU has the instructions.
    pub fn available(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            match self {
                Isa::Avx512 => has!("avx512f"),
                Isa::Avx2 => has!("avx2") && has!("fma"),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }

    /// The best instruction set this CPU has, if any.
    pub fn best() -> Option<Isa> {
        Isa::ALL.into_iter().find(|i| i.available())
    }

    /// The name used by `CLIPLABEL_KERNELS` and in notes.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512 => "avx512",
            Isa::Avx2 => "avx2",
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512 {
    use std::arch::x86_64::*;

    /// `e^x` for 16 lanes: Cephes' `expf` range reduction and polynomial (about 1 ulp), with
    /// the power of two applied by `vscalefps`. Inputs are clamped to ±88.7.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(crate) fn exp(x: __m512) -> __m512 {
        let x = _mm512_min_ps(
            _mm512_max_ps(x, _mm512_set1_ps(-88.7)),
            _mm512_set1_ps(88.7),
        );
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
        );
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm512_set1_ps(1.987_569_1e-4);
        for c in [
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            0.166_666_65,
            0.5,
        ] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        let p = _mm512_fmadd_ps(
            p,
            _mm512_mul_ps(r, r),
            _mm512_add_ps(r, _mm512_set1_ps(1.0)),
        );
        _mm512_scalef_ps(p, n)
    }

    /// `x * sigmoid(1.702 x)`, computed as `x / (1 + e^(-1.702 x))` like the scalar kernel.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(crate) fn quick_gelu(x: __m512) -> __m512 {
        let e = exp(_mm512_mul_ps(x, _mm512_set1_ps(-1.702)));
        _mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.0), e))
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use std::arch::x86_64::*;

    /// `e^x` for 8 lanes: the same range reduction and polynomial as [`super::avx512::exp`],
    /// with the power of two built in the exponent field, in two halves so that every `n` of
    /// the clamped range (-128..=128) gives a normal or subnormal factor as `vscalefps` would.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(crate) fn exp(x: __m256) -> __m256 {
        let x = _mm256_min_ps(
            _mm256_max_ps(x, _mm256_set1_ps(-88.7)),
            _mm256_set1_ps(88.7),
        );
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
        );
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm256_set1_ps(1.987_569_1e-4);
        for c in [
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            0.166_666_65,
            0.5,
        ] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        let p = _mm256_fmadd_ps(
            p,
            _mm256_mul_ps(r, r),
            _mm256_add_ps(r, _mm256_set1_ps(1.0)),
        );
        // 2^n = 2^h * 2^(n - h) with h = n / 2 (rounded towards minus infinity): both factors
        // lie in 2^-64..=2^64.
        let ni = _mm256_cvtps_epi32(n);
        let h = _mm256_srai_epi32::<1>(ni);
        let pow2 = |e: __m256i| {
            _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
                e,
                _mm256_set1_epi32(127),
            )))
        };
        _mm256_mul_ps(_mm256_mul_ps(p, pow2(h)), pow2(_mm256_sub_epi32(ni, h)))
    }

    /// `x * sigmoid(1.702 x)`, computed as `x / (1 + e^(-1.702 x))` like the scalar kernel.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(crate) fn quick_gelu(x: __m256) -> __m256 {
        let e = exp(_mm256_mul_ps(x, _mm256_set1_ps(-1.702)));
        _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0), e))
    }
}

/// `x = e^x` for every value, with the vector loops of `isa` (`None`: scalar). The kernels
/// use the vector `exp` inside fused loops ([`softmax_in_place_with`], the GEMM's
/// `quick_gelu`); this whole-slice form is what the accuracy tests check it through.
///
/// Panics if the CPU lacks `isa`.
#[cfg(test)]
pub fn exp_in_place_with(x: &mut [f32], isa: Option<Isa>) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Some(Isa::Avx512) => {
            assert!(
                Isa::Avx512.available(),
                "AVX-512 loops on a CPU without AVX-512"
            );
            // SAFETY: AVX-512F is available.
            unsafe { exp_in_place_avx512(x) }
        }
        #[cfg(target_arch = "x86_64")]
        Some(Isa::Avx2) => {
            assert!(
                Isa::Avx2.available(),
                "AVX2 loops on a CPU without AVX2 and FMA"
            );
            // SAFETY: AVX2 and FMA are available.
            unsafe { exp_in_place_avx2(x) }
        }
        _ => {
            for v in x.iter_mut() {
                *v = v.exp();
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn exp_in_place_avx2(x: &mut [f32]) {
    use std::arch::x86_64::*;
    let mut chunks = x.chunks_exact_mut(8);
    for c in &mut chunks {
        // SAFETY: `c` holds 8 values.
        unsafe {
            let v = avx2::exp(_mm256_loadu_ps(c.as_ptr()));
            _mm256_storeu_ps(c.as_mut_ptr(), v);
        }
    }
    let tail = chunks.into_remainder();
    if !tail.is_empty() {
        let mut buf = [0f32; 8];
        buf[..tail.len()].copy_from_slice(tail);
        // SAFETY: `buf` holds 8 values.
        unsafe {
            let v = avx2::exp(_mm256_loadu_ps(buf.as_ptr()));
            _mm256_storeu_ps(buf.as_mut_ptr(), v);
        }
        let n = tail.len();
        tail.copy_from_slice(&buf[..n]);
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
#[target_feature(enable = "avx512f")]
fn exp_in_place_avx512(x: &mut [f32]) {
    use std::arch::x86_64::*;
    let mut chunks = x.chunks_exact_mut(16);
    for c in &mut chunks {
        // SAFETY: `c` holds 16 values.
        unsafe {
            let v = avx512::exp(_mm512_loadu_ps(c.as_ptr()));
            _mm512_storeu_ps(c.as_mut_ptr(), v);
        }
    }
    let tail = chunks.into_remainder();
    if !tail.is_empty() {
        let mask: __mmask16 = ((1u32 << tail.len()) - 1) as u16;
        // SAFETY: the masked load and store touch only the `tail.len()` values of `tail`.
        unsafe {
            let v = avx512::exp(_mm512_maskz_loadu_ps(mask, tail.as_ptr()));
            _mm512_mask_storeu_ps(tail.as_mut_ptr(), mask, v);
        }
    }
}

/// In-place softmax, `e^(x - max) / Σ e^(x - max)`, with the vector loops of `isa` (`None`:
/// scalar). The vector loops find the maximum and sum the exponentials in registers, lane by
/// lane, rather than one value at a time: a serial sum over a 577-key row (ViT-L/14-336) costs
/// as many cycles as that row's share of both attention products.
///
/// Panics if the CPU lacks `isa`.
pub fn softmax_in_place_with(x: &mut [f32], isa: Option<Isa>) {
    if x.is_empty() {
        return;
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        Some(Isa::Avx512) => {
            assert!(
                Isa::Avx512.available(),
                "AVX-512 loops on a CPU without AVX-512"
            );
            // SAFETY: AVX-512F is available.
            unsafe { softmax_avx512(x) }
        }
        #[cfg(target_arch = "x86_64")]
        Some(Isa::Avx2) => {
            assert!(
                Isa::Avx2.available(),
                "AVX2 loops on a CPU without AVX2 and FMA"
            );
            // SAFETY: AVX2 and FMA are available.
            unsafe { softmax_avx2(x) }
        }
        _ => {
            let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            for v in x.iter_mut() {
                *v = (*v - max).exp();
            }
            let sum: f32 = x.iter().sum();
            for v in x.iter_mut() {
                *v /= sum;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn softmax_avx512(x: &mut [f32]) {
    use std::arch::x86_64::*;
    let n = x.len();
    let full = n - n % 16;
    let mask: __mmask16 = ((1u32 << (n % 16)) - 1) as u16;
    let p = x.as_mut_ptr();
    // SAFETY: every unmasked access lies below `full` and the masked ones touch only the
    // `n % 16` values from `full` on.
    unsafe {
        let mut m = _mm512_set1_ps(f32::NEG_INFINITY);
        for i in (0..full).step_by(16) {
            m = _mm512_max_ps(m, _mm512_loadu_ps(p.add(i)));
        }
        m = _mm512_mask_max_ps(m, mask, m, _mm512_maskz_loadu_ps(mask, p.add(full)));
        let max = _mm512_set1_ps(_mm512_reduce_max_ps(m));
        let mut sum = _mm512_setzero_ps();
        for i in (0..full).step_by(16) {
            let e = avx512::exp(_mm512_sub_ps(_mm512_loadu_ps(p.add(i)), max));
            _mm512_storeu_ps(p.add(i), e);
            sum = _mm512_add_ps(sum, e);
        }
        if mask != 0 {
            let e = avx512::exp(_mm512_sub_ps(_mm512_maskz_loadu_ps(mask, p.add(full)), max));
            _mm512_mask_storeu_ps(p.add(full), mask, e);
            sum = _mm512_mask_add_ps(sum, mask, sum, e);
        }
        let sum = _mm512_set1_ps(_mm512_reduce_add_ps(sum));
        for i in (0..full).step_by(16) {
            _mm512_storeu_ps(p.add(i), _mm512_div_ps(_mm512_loadu_ps(p.add(i)), sum));
        }
        let t = _mm512_maskz_loadu_ps(mask, p.add(full));
        _mm512_mask_storeu_ps(p.add(full), mask, _mm512_div_ps(t, sum));
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn softmax_avx2(x: &mut [f32]) {
    use std::arch::x86_64::*;
    /// The eight lanes of `v` combined by `f`.
    #[target_feature(enable = "avx2,fma")]
    fn reduce(v: __m256, f: fn(__m128, __m128) -> __m128) -> f32 {
        let v = f(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let v = f(v, _mm_movehl_ps(v, v));
        _mm_cvtss_f32(f(v, _mm_movehdup_ps(v)))
    }
    let n = x.len();
    let full = n - n % 8;
    let p = x.as_mut_ptr();
    // SAFETY: every vector access lies below `full`; the tail is handled by `exp_in_place_avx2`
    // and scalar code.
    unsafe {
        let mut m = _mm256_set1_ps(f32::NEG_INFINITY);
        for i in (0..full).step_by(8) {
            m = _mm256_max_ps(m, _mm256_loadu_ps(p.add(i)));
        }
        let max = x[full..]
            .iter()
            .copied()
            .fold(reduce(m, |a, b| _mm_max_ps(a, b)), f32::max);
        let mv = _mm256_set1_ps(max);
        let mut sum = _mm256_setzero_ps();
        for i in (0..full).step_by(8) {
            let e = avx2::exp(_mm256_sub_ps(_mm256_loadu_ps(p.add(i)), mv));
            _mm256_storeu_ps(p.add(i), e);
            sum = _mm256_add_ps(sum, e);
        }
        let tail = &mut x[full..];
        for v in tail.iter_mut() {
            *v -= max;
        }
        exp_in_place_avx2(tail);
        let total = tail
            .iter()
            .fold(reduce(sum, |a, b| _mm_add_ps(a, b)), |s, &v| s + v);
        let sv = _mm256_set1_ps(total);
        for i in (0..full).step_by(8) {
            _mm256_storeu_ps(p.add(i), _mm256_div_ps(_mm256_loadu_ps(p.add(i)), sv));
        }
        for v in x[full..].iter_mut() {
            *v /= total;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vector_softmax_matches_the_scalar_one() {
        let mut paths = vec![];
        paths.extend(Isa::ALL.into_iter().filter(|i| i.available()));
        if paths.is_empty() {
            crate::util::testing::skipped("this CPU has neither AVX-512 nor AVX2 + FMA");
            return;
        }
        for n in [1, 7, 8, 15, 16, 17, 50, 197, 577] {
            let x: Vec<f32> = (0..n)
                .map(|i| ((i * 7919 % 1000) as f32 / 40.0) - 12.0)
                .collect();
            let mut want = x.clone();
            softmax_in_place_with(&mut want, None);
            for &isa in &paths {
                let mut got = x.clone();
                softmax_in_place_with(&mut got, Some(isa));
                let sum: f32 = got.iter().sum();
                assert!((sum - 1.0).abs() < 1e-5, "{isa:?} n={n}: sums to {sum}");
                for (g, w) in got.iter().zip(&want) {
                    assert!(
                        (g - w).abs() <= 1e-6 * w.max(1e-3),
                        "{isa:?} n={n}: {g} vs {w}"
                    );
                }
            }
        }
    }

    #[test]
    fn vector_exp_is_accurate_over_the_whole_range() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            crate::util::testing::skipped("this CPU has no AVX-512");
            return;
        }
        use std::arch::x86_64::*;
        let mut worst = 0f64;
        let mut i = -87.0f32;
        while i < 88.0 {
            let xs: [f32; 16] = std::array::from_fn(|j| i + j as f32 * 0.0137);
            let mut out = [0f32; 16];
            // SAFETY: AVX-512F is available (checked above).
            unsafe {
                let v = super::avx512::exp(_mm512_loadu_ps(xs.as_ptr()));
                _mm512_storeu_ps(out.as_mut_ptr(), v);
            }
            for (x, e) in xs.iter().zip(out) {
                let want = (*x as f64).exp();
                worst = worst.max(((e as f64 - want) / want).abs());
            }
            i += 0.219;
        }
        assert!(worst < 3e-7, "largest relative error {worst:e}");
    }

    #[test]
    fn avx2_exp_is_accurate_over_the_whole_range() {
        if !Isa::Avx2.available() {
            crate::util::testing::skipped("this CPU has no AVX2/FMA");
            return;
        }
        use std::arch::x86_64::*;
        let mut worst = 0f64;
        let mut i = -87.0f32;
        while i < 88.0 {
            let xs: [f32; 8] = std::array::from_fn(|j| i + j as f32 * 0.0137);
            let mut out = [0f32; 8];
            // SAFETY: AVX2 and FMA are available (checked above).
            unsafe {
                let v = super::avx2::exp(_mm256_loadu_ps(xs.as_ptr()));
                _mm256_storeu_ps(out.as_mut_ptr(), v);
            }
            for (x, e) in xs.iter().zip(out) {
                let want = (*x as f64).exp();
                worst = worst.max(((e as f64 - want) / want).abs());
            }
            i += 0.219;
        }
        assert!(worst < 3e-7, "largest relative error {worst:e}");
    }

    /// Both vector versions agree with `f32::exp` at the ends of the clamped range, where the
    /// power of two is largest and smallest (subnormal results included).
    #[test]
    fn vector_exp_handles_the_range_ends() {
        let xs = [-88.7f32, -88.0, -87.4, -80.0, 80.0, 88.0, 88.5, 88.7];
        for isa in Isa::ALL.into_iter().filter(|i| i.available()) {
            let mut got = xs.to_vec();
            exp_in_place_with(&mut got, Some(isa));
            for (x, g) in xs.iter().zip(&got) {
                let want = (*x as f64).exp();
                let rel = ((*g as f64 - want) / want).abs();
                // Subnormal results keep fewer bits: compare them in absolute terms.
                let ok = if want < f32::MIN_POSITIVE as f64 {
                    (*g as f64 - want).abs() <= 2.0 * 1.4e-45
                } else {
                    rel < 3e-7
                };
                assert!(ok, "{isa:?} e^{x}: {g} vs {want}");
            }
        }
    }

    #[test]
    fn exp_in_place_handles_tails_and_large_negatives() {
        let mut paths = vec![None];
        paths.extend(Isa::ALL.into_iter().filter(|i| i.available()).map(Some));
        for isa in paths {
            let mut x: Vec<f32> = (0..37).map(|i| i as f32 * 0.5 - 10.0).collect();
            x.push(-1e30);
            let want: Vec<f32> = x.iter().map(|v| v.exp()).collect();
            exp_in_place_with(&mut x, isa);
            for (g, w) in x.iter().zip(&want) {
                assert!(
                    (g - w).abs() <= 3e-7 * w.abs().max(1e-30),
                    "{isa:?}: {g} vs {w}"
                );
            }
        }
    }
}
