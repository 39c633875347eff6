//! Outliers: images far from every class and from their neighbours.
//!
//! Two scores per image, both cosines of L2-normalised embeddings: the largest cosine to any
//! class centroid (the normalised mean embedding of the images given that class), and the
//! k-NN density (mean cosine to its `k` nearest other images, from the duplicate search). Each
//! becomes a robust z-score, `(score - median) / (1.4826 * MAD)` over the set (1.4826 * MAD
//! estimates the standard deviation of a normal distribution; Rousseeuw and Croux, JASA 1993).
//! An image is flagged when *both* are below `-cutoff`: far from every class and without close
//! neighbours. Either alone flags too much: on the demo shapes the centroid cosines have a long
//! left tail of ordinary but busy images, and a small cluster of unusual images (several shots
//! of one odd scene) is far from the centroids yet dense. Flagged images are ranked by the
//! higher (less extreme) of the two z-scores, most extreme first.

use serde::{Deserialize, Serialize};

/// One flagged image.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Outlier {
    /// Row in the audited set.
    pub index: usize,
    /// The class whose centroid is nearest.
    pub nearest_class: usize,
    /// Cosine to that centroid.
    pub centroid_cosine: f32,
    /// Mean cosine to the `k` nearest other images.
    pub knn_density: f32,
    /// The higher of the two robust z-scores (both are below `-cutoff`).
    pub robust_z: f64,
}

/// Normalised mean embedding of each class (a zero row for a class without images).
pub fn centroids(x: &[f32], d: usize, labels: &[usize], n_classes: usize) -> Vec<f32> {
    let mut c = vec![0f64; n_classes * d];
    for (row, &l) in x.chunks_exact(d).zip(labels) {
        for (a, &v) in c[l * d..(l + 1) * d].iter_mut().zip(row) {
            *a += v as f64;
        }
    }
    let mut out = vec![0f32; n_classes * d];
    for (o, s) in out.chunks_mut(d).zip(c.chunks(d)) {
        let norm = s.iter().map(|v| v * v).sum::<f64>().sqrt();
        if norm > 0.0 {
            for (o, v) in o.iter_mut().zip(s) {
                *o = (v / norm) as f32;
            }
        }
    }
    out
}

/// For each row of `x`, the nearest centroid and its cosine.
pub fn nearest_centroid(x: &[f32], d: usize, centroids: &[f32]) -> Vec<(usize, f32)> {
    x.chunks_exact(d)
        .map(|row| {
            let mut best = (0usize, f32::NEG_INFINITY);
            for (c, w) in centroids.chunks_exact(d).enumerate() {
                let s: f32 = row.iter().zip(w).map(|(a, b)| a * b).sum();
                if s > best.1 {
                    best = (c, s);
                }
            }
            best
        })
        .collect()
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// Robust z-scores `(v - median) / (1.4826 * MAD)` (0 everywhere when the MAD is 0).
pub fn robust_z(values: &[f32]) -> Vec<f64> {
    let mut v: Vec<f64> = values.iter().map(|&x| x as f64).collect();
    let med = median(&mut v);
    let mut dev: Vec<f64> = values.iter().map(|&x| (x as f64 - med).abs()).collect();
    let scale = 1.4826 * median(&mut dev);
    values
        .iter()
        .map(|&x| {
            if scale > 0.0 {
                (x as f64 - med) / scale
            } else {
                0.0
            }
        })
        .collect()
}

/// Flags rows whose centroid cosine and k-NN density both have a robust z-score below
/// `-cutoff`, most extreme first (ties by row).
pub fn find_outliers(nearest: &[(usize, f32)], density: &[f32], cutoff: f64) -> Vec<Outlier> {
    let cos: Vec<f32> = nearest.iter().map(|n| n.1).collect();
    let zc = robust_z(&cos);
    let zd = robust_z(density);
    let mut out: Vec<Outlier> = (0..nearest.len())
        .filter_map(|i| {
            let z = zc[i].max(zd[i]);
            (z < -cutoff).then(|| Outlier {
                index: i,
                nearest_class: nearest[i].0,
                centroid_cosine: nearest[i].1,
                knn_density: density[i],
                robust_z: z,
            })
        })
        .collect();
    out.sort_by(|a, b| {
        a.robust_z
            .total_cmp(&b.robust_z)
            .then(a.index.cmp(&b.index))
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn centroids_are_normalised_means() {
        let x = [1.0f32, 0.0, 0.0, 1.0, 1.0, 0.0];
        let c = centroids(&x, 2, &[0, 0, 1], 3);
        let h = std::f32::consts::FRAC_1_SQRT_2;
        assert!((c[0] - h).abs() < 1e-6 && (c[1] - h).abs() < 1e-6);
        assert_eq!(&c[2..4], &[1.0, 0.0]);
        assert_eq!(&c[4..6], &[0.0, 0.0]);
        let near = nearest_centroid(&[0.0, 1.0], 2, &c);
        assert_eq!(near[0].0, 0);
        assert!((near[0].1 - h).abs() < 1e-6);
    }

    #[test]
    fn a_far_point_is_flagged_and_typical_ones_are_not() {
        // Centroid cosines 0.90..0.99 and one 0.2; densities flat except the same row.
        let mut cos: Vec<(usize, f32)> = (0..20).map(|i| (0, 0.90 + 0.005 * i as f32)).collect();
        cos[7] = (1, 0.2);
        let mut dens: Vec<f32> = (0..20).map(|i| 0.8 + 0.004 * i as f32).collect();
        dens[7] = 0.1;
        // Row 12 is far from the centroids but has close neighbours: not flagged.
        cos[12] = (0, 0.3);
        let out = find_outliers(&cos, &dens, 3.0);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].index, out[0].nearest_class), (7, 1));
        assert!(out[0].robust_z < -3.0);
        // Median of 0,1,2,3,10 is 2, MAD is 1: z of 10 is 8 / 1.4826.
        let z = robust_z(&[0.0, 1.0, 2.0, 3.0, 10.0]);
        assert!((z[4] - 8.0 / 1.4826).abs() < 1e-9);
    }
}
