//! AVX-512 vector math for the fused CPU kernels: `e^x` and `quick_gelu` on 16 lanes at once.
//!
//! Used by [`crate::clip::kernels::gemm`] (activation fused into the matrix multiply's stores) and
//! [`crate::clip::kernels::attention`] (softmax); both fall back to scalar code on other CPUs.

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

/// `x = e^x` for every value, 16 at a time with AVX-512 where the CPU has it.
pub fn exp_in_place(x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512F is available.
        unsafe { exp_in_place_avx512(x) };
        return;
    }
    for v in x.iter_mut() {
        *v = v.exp();
    }
}

#[cfg(target_arch = "x86_64")]
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vector_exp_is_accurate_over_the_whole_range() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            eprintln!("skipped: this CPU has no AVX-512");
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
    fn exp_in_place_handles_tails_and_large_negatives() {
        let mut x: Vec<f32> = (0..37).map(|i| i as f32 * 0.5 - 10.0).collect();
        x.push(-1e30);
        let want: Vec<f32> = x.iter().map(|v| v.exp()).collect();
        exp_in_place(&mut x);
        for (g, w) in x.iter().zip(&want) {
            assert!((g - w).abs() <= 3e-7 * w.abs().max(1e-30), "{g} vs {w}");
        }
    }
}
