//! Embedded, labelled examples as a head trains on them: L2-normalised rows and their class
//! indices. Shared by `fit` (`jobs/`) and `compare` (`eval/`), so it lives in `classify/`,
//! below both.

use crate::error::Result;
use crate::linear_head::Matrix;
use crate::util::math::l2_normalize;

/// Embedded, labelled examples: L2-normalised rows.
pub struct Embedded {
    /// `n × dim` normalised embeddings.
    pub x: Matrix,
    /// Class index of each row.
    pub labels: Vec<usize>,
}

impl Embedded {
    /// Builds the matrix from per-example embeddings, dropping failed ones (`None`).
    pub fn new(rows: Vec<Option<Vec<f32>>>, labels: &[usize], dim: usize) -> Result<Self> {
        let mut data = Vec::new();
        let mut kept = Vec::new();
        for (r, &l) in rows.into_iter().zip(labels) {
            if let Some(mut r) = r {
                l2_normalize(&mut r);
                data.extend(r);
                kept.push(l);
            }
        }
        Ok(Embedded {
            x: Matrix::new(kept.len(), dim, data)?,
            labels: kept,
        })
    }

    /// The rows `idx`, in that order.
    pub fn subset(&self, idx: &[usize]) -> Result<Embedded> {
        Ok(Embedded {
            x: self.x.select_rows(idx)?,
            labels: idx.iter().map(|&i| self.labels[i]).collect(),
        })
    }
}
