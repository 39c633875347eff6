//! The data a head is fitted on: a dense row-major f32 [`Matrix`], a labelled [`Dataset`]
//! (embeddings, class indices and optional sample weights) and balanced class weights.

use super::*;

// ---------------------------------------------------------------------------
// Matrix
// ---------------------------------------------------------------------------

/// A dense row-major `f32` matrix (rows = examples or classes).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "MatrixRepr")]
pub struct Matrix {
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    pub(crate) data: Vec<f32>,
}

#[derive(Deserialize)]
pub(crate) struct MatrixRepr {
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    pub(crate) data: Vec<f32>,
}

impl TryFrom<MatrixRepr> for Matrix {
    type Error = HeadError;
    fn try_from(r: MatrixRepr) -> Result<Self, HeadError> {
        Matrix::new(r.rows, r.cols, r.data)
    }
}

impl Matrix {
    /// Wraps row-major `data` as a `rows × cols` matrix, checking the length.
    pub fn new(rows: usize, cols: usize, data: Vec<f32>) -> Result<Self, HeadError> {
        let expected = rows.checked_mul(cols);
        if expected != Some(data.len()) {
            return Err(HeadError::MatrixShape {
                rows,
                cols,
                expected: expected.unwrap_or(usize::MAX),
                len: data.len(),
            });
        }
        Ok(Matrix { rows, cols, data })
    }

    /// A `rows × cols` matrix of zeros.
    pub fn zeros(rows: usize, cols: usize) -> Self {
        Matrix {
            rows,
            cols,
            data: vec![0.0; rows * cols],
        }
    }

    /// Builds a matrix from equally long rows.
    pub fn from_rows<R: AsRef<[f32]>>(rows: &[R]) -> Result<Self, HeadError> {
        let cols = rows.first().map_or(0, |r| r.as_ref().len());
        let mut data = Vec::with_capacity(rows.len() * cols);
        for r in rows {
            let r = r.as_ref();
            if r.len() != cols {
                return Err(HeadError::MatrixShape {
                    rows: rows.len(),
                    cols,
                    expected: rows.len() * cols,
                    len: data.len() + r.len(),
                });
            }
            data.extend_from_slice(r);
        }
        Matrix::new(rows.len(), cols, data)
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The row-major values.
    pub fn as_slice(&self) -> &[f32] {
        &self.data
    }

    /// Consumes the matrix, returning its row-major values.
    pub fn into_vec(self) -> Vec<f32> {
        self.data
    }

    /// Row `i`. Panics if `i >= rows()`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }

    /// A new matrix with the rows at `idx`, in that order.
    pub fn select_rows(&self, idx: &[usize]) -> Result<Matrix, HeadError> {
        if let Some(&index) = idx.iter().find(|&&i| i >= self.rows) {
            return Err(HeadError::RowOutOfRange {
                index,
                rows: self.rows,
            });
        }
        let mut data = Vec::with_capacity(idx.len() * self.cols);
        for &i in idx {
            data.extend_from_slice(self.row(i));
        }
        Ok(Matrix {
            rows: idx.len(),
            cols: self.cols,
            data,
        })
    }

    pub(crate) fn first_non_finite_row(&self) -> Option<usize> {
        if self.cols == 0 {
            return None;
        }
        self.data
            .par_chunks(self.cols)
            .position_first(|r| r.iter().any(|v| !v.is_finite()))
    }
}

// ---------------------------------------------------------------------------
// Data, head, options, results
// ---------------------------------------------------------------------------

/// Labelled embeddings: an `n × d` matrix, a class index per row, and optional sample weights.
#[derive(Clone, Copy, Debug)]
pub struct Dataset<'a> {
    pub(crate) x: &'a Matrix,
    pub(crate) labels: &'a [usize],
    pub(crate) n_classes: usize,
    pub(crate) weights: Option<&'a [f64]>,
}

impl<'a> Dataset<'a> {
    /// Checks shapes, label range and finiteness; `n_classes` must be at least 2.
    /// Zero rows are allowed (fitting then needs a prior).
    pub fn new(x: &'a Matrix, labels: &'a [usize], n_classes: usize) -> Result<Self, HeadError> {
        if n_classes < 2 {
            return Err(HeadError::TooFewClasses(n_classes));
        }
        if x.cols == 0 {
            return Err(HeadError::ZeroDim);
        }
        if labels.len() != x.rows {
            return Err(HeadError::LabelCount {
                labels: labels.len(),
                rows: x.rows,
            });
        }
        if let Some(row) = labels.iter().position(|&l| l >= n_classes) {
            return Err(HeadError::LabelOutOfRange {
                row,
                label: labels[row],
                n_classes,
            });
        }
        if let Some(row) = x.first_non_finite_row() {
            return Err(HeadError::NonFinite {
                what: "the embedding matrix",
                row,
            });
        }
        Ok(Dataset {
            x,
            labels,
            n_classes,
            weights: None,
        })
    }

    /// Adds per-row sample weights (finite, ≥ 0, not all zero); see [`balanced_weights`].
    pub fn with_weights(mut self, weights: &'a [f64]) -> Result<Self, HeadError> {
        if weights.len() != self.x.rows {
            return Err(HeadError::WeightCount {
                weights: weights.len(),
                rows: self.x.rows,
            });
        }
        if let Some(row) = weights.iter().position(|w| !w.is_finite() || *w < 0.0) {
            return Err(HeadError::BadWeight {
                row,
                value: weights[row],
            });
        }
        if !weights.is_empty() && weights.iter().all(|&w| w == 0.0) {
            return Err(HeadError::ZeroWeights);
        }
        self.weights = Some(weights);
        Ok(self)
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.x.rows
    }

    /// Whether there are no examples.
    pub fn is_empty(&self) -> bool {
        self.x.rows == 0
    }

    /// Embedding dimension.
    pub fn dim(&self) -> usize {
        self.x.cols
    }

    /// Number of classes.
    pub fn n_classes(&self) -> usize {
        self.n_classes
    }

    /// Examples per class.
    pub fn class_counts(&self) -> Vec<usize> {
        class_counts(self.labels, self.n_classes)
    }
}

pub(crate) fn class_counts(labels: &[usize], n_classes: usize) -> Vec<usize> {
    let mut c = vec![0usize; n_classes];
    for &l in labels {
        c[l] += 1;
    }
    c
}

/// "Balanced" sample weights `n / (k · n_c)` for an example of class `c` (scikit-learn's
/// `class_weight="balanced"`); `k` counts only the classes present.
pub fn balanced_weights(labels: &[usize], n_classes: usize) -> Result<Vec<f64>, HeadError> {
    if let Some(row) = labels.iter().position(|&l| l >= n_classes) {
        return Err(HeadError::LabelOutOfRange {
            row,
            label: labels[row],
            n_classes,
        });
    }
    let counts = class_counts(labels, n_classes);
    let present = counts.iter().filter(|&&c| c > 0).count().max(1);
    let n = labels.len() as f64;
    Ok(labels
        .iter()
        .map(|&l| n / (present as f64 * counts[l] as f64))
        .collect())
}
