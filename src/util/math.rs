//! The two vector operations every classifier shares: L2 normalisation and softmax, both
//! accumulated in f64 so that results do not depend on the embedding width's rounding.
//!
//! One exception is kept on purpose: `embed --normalize` has always summed the squares in f32
//! (in input order), and its files must stay byte-identical to those of earlier versions, so it
//! uses [`l2_normalize_rows_f32_sum`]. The classifiers, heads, `compare` and `audit` always
//! summed in f64 and use [`l2_normalize`].

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

/// L2-normalises each `dim`-wide row of `rows` in place with the sum of squares accumulated in
/// f32, left to right: what `embed --normalize` has always written (rows differ from
/// [`l2_normalize_rows`] by up to a few 1e-8). Zero rows are left as they are.
pub fn l2_normalize_rows_f32_sum(rows: &mut [f32], dim: usize) {
    for r in rows.chunks_exact_mut(dim.max(1)) {
        let n = r.iter().map(|v| v * v).sum::<f32>().sqrt();
        if n > 0.0 {
            r.iter_mut().for_each(|v| *v /= n);
        }
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
    fn the_f32_sum_is_the_old_embed_normalisation() {
        // Squares summed in f32 in order, as `embed --normalize` always did; zero rows kept.
        let row: Vec<f32> = (0..512)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let mut rows = row.clone();
        rows.extend([0.0f32; 512]);
        l2_normalize_rows_f32_sum(&mut rows, 512);
        let mut n = 0f32;
        for v in &row {
            n += v * v;
        }
        let n = n.sqrt();
        for (a, b) in rows[..512].iter().zip(&row) {
            assert_eq!(a.to_bits(), (b / n).to_bits());
        }
        assert!(rows[512..].iter().all(|v| *v == 0.0));
        // The f64 sum rounds differently on some rows: that is why the two are kept apart.
        let differs = (1..200).any(|s| {
            let r: Vec<f32> = (0..512)
                .map(|i| ((i * s % 997) as f32).sin() * 3.3)
                .collect();
            let (mut a, mut b) = (r.clone(), r);
            l2_normalize_rows_f32_sum(&mut a, 512);
            l2_normalize_rows(&mut b, 512);
            a != b
        });
        assert!(differs);
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
