//! The two vector operations every classifier shares: L2 normalisation and softmax, both
//! accumulated in f64 so that results do not depend on the embedding width's rounding.

/// L2-normalises `v` in place (left as is when its norm is zero). The sum of squares is
/// accumulated in f64.
pub fn l2_normalize(v: &mut [f32]) {
    let n = v
        .iter()
        .map(|x| (*x as f64) * (*x as f64))
        .sum::<f64>()
        .sqrt() as f32;
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
}

/// L2-normalises each `dim`-wide row of `rows` in place.
pub fn l2_normalize_rows(rows: &mut [f32], dim: usize) {
    for r in rows.chunks_exact_mut(dim.max(1)) {
        l2_normalize(r);
    }
}

/// A numerically stable softmax: the maximum is subtracted and the exponentials are summed in
/// f64.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let mut out = logits.to_vec();
    softmax_in_place(&mut out);
    out
}

/// [`softmax`] in place.
pub fn softmax_in_place(v: &mut [f32]) {
    let m = v.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let s: f64 = v.iter().map(|&l| ((l - m) as f64).exp()).sum();
    for x in v.iter_mut() {
        *x = ((((*x - m) as f64).exp()) / s) as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn l2_normalize_gives_unit_rows_and_keeps_zero_rows() {
        let mut rows = vec![3.0, 4.0, 0.0, 0.0];
        l2_normalize_rows(&mut rows, 2);
        assert_eq!(rows, vec![0.6, 0.8, 0.0, 0.0]);
    }

    #[test]
    fn softmax_is_stable_and_sums_to_one() {
        // Large logits do not overflow: only their differences matter.
        let (a, b) = (1000.0f32, 1000.0f32 + 2f32.ln());
        let p = softmax(&[a, b, -1e30]);
        let e = ((b - a) as f64).exp();
        assert!((p[0] as f64 - 1.0 / (1.0 + e)).abs() < 1e-7, "{p:?}");
        assert!((p[1] as f64 - e / (1.0 + e)).abs() < 1e-7, "{p:?}");
        assert_eq!(p[2], 0.0);
        let q = softmax(&[0.5, -1.0, 2.0, 0.0]);
        assert!((q.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(q[2] > q[0] && q[0] > q[3] && q[3] > q[1]);
    }
}
