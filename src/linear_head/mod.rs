//! Linear classification head on frozen embeddings.
//!
//! Multinomial (softmax) logistic regression with a bias, L2-regularised with
//! scikit-learn's convention: it minimises
//! `C · Σ_i w_i · CE_i + ½‖W − W0‖²` (the bias is not penalised unless a prior is
//! given), solved to convergence with L-BFGS and stopped on the largest absolute
//! entry of the gradient of the objective divided by `C · Σ_i w_i` — the same
//! stopping rule as `LogisticRegression(solver="lbfgs", tol=...)`.
//!
//! Loss and gradient run over fixed row chunks in parallel (rayon) with blocked
//! f32 kernels and an ordered f64 reduction, so results are bit-identical for any
//! thread count. When the requested tolerance is below what f32 kernels resolve, the
//! solver finishes in f64 kernels.
//!
//! Also here: stratified K-fold cross-validation over a log-spaced `C` grid (the CLIP
//! paper's linear-probe protocol), an optional prior (for "zero-shot init": start at
//! the prompt classifier and regularise toward it), and the choice of an
//! interpolation weight between zero-shot and probe logits.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::ops::{Add, Mul, Sub};

/// Errors from fitting, cross-validating or applying a linear head.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HeadError {
    /// A matrix's data length does not match its shape.
    #[error("matrix data has {len} values, but {rows} rows × {cols} columns need {expected}")]
    MatrixShape {
        /// Rows claimed.
        rows: usize,
        /// Columns claimed.
        cols: usize,
        /// Values expected.
        expected: usize,
        /// Values given.
        len: usize,
    },
    /// Labels and embeddings differ in count.
    #[error("{labels} labels were given for {rows} embeddings")]
    LabelCount {
        /// Labels given.
        labels: usize,
        /// Embedding rows.
        rows: usize,
    },
    /// A label is not a valid class index.
    #[error("label {label} at row {row} is out of range: there are {n_classes} classes")]
    LabelOutOfRange {
        /// Row of the bad label.
        row: usize,
        /// The label.
        label: usize,
        /// Number of classes.
        n_classes: usize,
    },
    /// Fewer than two classes.
    #[error("a classifier needs at least 2 classes, got {0}")]
    TooFewClasses(usize),
    /// A row index past the end of a matrix.
    #[error("row {index} is out of range for a matrix of {rows} rows")]
    RowOutOfRange {
        /// The index.
        index: usize,
        /// Rows of the matrix.
        rows: usize,
    },
    /// Embeddings of zero width.
    #[error("embeddings have 0 dimensions")]
    ZeroDim,
    /// A NaN or infinity in the input.
    #[error("{what} contains a non-finite value (NaN or infinity) at row {row}")]
    NonFinite {
        /// Which input.
        what: &'static str,
        /// The row.
        row: usize,
    },
    /// Sample weights of the wrong count.
    #[error("{weights} sample weights were given for {rows} embeddings")]
    WeightCount {
        /// Weights given.
        weights: usize,
        /// Embedding rows.
        rows: usize,
    },
    /// A negative or non-finite sample weight.
    #[error("sample weight at row {row} is {value}; weights must be finite and ≥ 0")]
    BadWeight {
        /// The row.
        row: usize,
        /// The weight.
        value: f64,
    },
    /// All sample weights are zero.
    #[error("sample weights sum to zero: nothing to fit")]
    ZeroWeights,
    /// Invalid regularisation strength.
    #[error("C must be finite and > 0, got {0}")]
    BadC(f64),
    /// Invalid tolerance.
    #[error("tolerance must be finite and > 0, got {0}")]
    BadTolerance(f64),
    /// Zero iterations allowed.
    #[error("max_iter must be at least 1")]
    BadMaxIter,
    /// A prior or head does not fit the data's shape.
    #[error("{what} is {rows} classes × {cols} dimensions, but the data has {n_classes} classes × {dim} dimensions")]
    ShapeMismatch {
        /// Which object.
        what: &'static str,
        /// Its classes.
        rows: usize,
        /// Its dimensions.
        cols: usize,
        /// Classes of the data.
        n_classes: usize,
        /// Dimensions of the data.
        dim: usize,
    },
    /// A bias vector of the wrong length.
    #[error("bias has {got} entries for {n_classes} classes")]
    BiasLength {
        /// Entries given.
        got: usize,
        /// Classes.
        n_classes: usize,
    },
    /// Embeddings of the wrong width for a head.
    #[error("the head expects {expected}-dimensional embeddings, got {got}")]
    DimMismatch {
        /// Head's dimension.
        expected: usize,
        /// Input's dimension.
        got: usize,
    },
    /// No training data and no prior to fall back on.
    #[error("no training examples were given")]
    NoExamples,
    /// A class has no examples (and no prior keeps its bias finite).
    #[error(
        "class '{class}' has no examples; every class needs at least one (or fit with a prior)"
    )]
    EmptyClass {
        /// Class name, or its index when no names were given.
        class: String,
    },
    /// A class has too few examples for cross-validation.
    #[error("class '{class}' has {count} example{}; at least {needed} are needed for {folds}-fold cross-validation", if *.count == 1 { "" } else { "s" })]
    TooFewExamples {
        /// Class name, or its index when no names were given.
        class: String,
        /// Its examples.
        count: usize,
        /// Examples needed.
        needed: usize,
        /// Folds requested.
        folds: usize,
    },
    /// Invalid fold count.
    #[error("cross-validation needs at least 2 folds and at most one fold per example: got {folds} folds for {n} examples")]
    BadFolds {
        /// Folds requested.
        folds: usize,
        /// Examples.
        n: usize,
    },
    /// Invalid C grid.
    #[error("the C grid must be non-empty with finite values > 0")]
    BadGrid,
    /// Invalid interpolation grid or weight.
    #[error("interpolation weights must be non-empty and lie in [0, 1]")]
    BadAlpha,
    /// Class names of the wrong count.
    #[error("{names} class names were given for {n_classes} classes")]
    ClassNames {
        /// Names given.
        names: usize,
        /// Classes.
        n_classes: usize,
    },
    /// Two logit matrices that should match do not.
    #[error("logit matrices differ in shape: {a_rows}×{a_cols} vs {b_rows}×{b_cols}")]
    LogitShape {
        /// First rows.
        a_rows: usize,
        /// First columns.
        a_cols: usize,
        /// Second rows.
        b_rows: usize,
        /// Second columns.
        b_cols: usize,
    },
}

// ---------------------------------------------------------------------------
// Matrix
// ---------------------------------------------------------------------------

/// A dense row-major `f32` matrix (rows = examples or classes).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "MatrixRepr")]
pub struct Matrix {
    rows: usize,
    cols: usize,
    data: Vec<f32>,
}

#[derive(Deserialize)]
struct MatrixRepr {
    rows: usize,
    cols: usize,
    data: Vec<f32>,
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

    fn first_non_finite_row(&self) -> Option<usize> {
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
    x: &'a Matrix,
    labels: &'a [usize],
    n_classes: usize,
    weights: Option<&'a [f64]>,
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

fn class_counts(labels: &[usize], n_classes: usize) -> Vec<usize> {
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

/// A linear classifier: logits = `x · Wᵀ + b`, with `W` of shape classes × dim.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "HeadRepr")]
pub struct LinearHead {
    weights: Matrix,
    bias: Vec<f32>,
}

#[derive(Deserialize)]
struct HeadRepr {
    weights: Matrix,
    bias: Vec<f32>,
}

impl TryFrom<HeadRepr> for LinearHead {
    type Error = HeadError;
    fn try_from(r: HeadRepr) -> Result<Self, HeadError> {
        LinearHead::new(r.weights, r.bias)
    }
}

impl LinearHead {
    /// A head from a classes × dim weight matrix and one bias per class (all finite).
    pub fn new(weights: Matrix, bias: Vec<f32>) -> Result<Self, HeadError> {
        if weights.rows < 2 {
            return Err(HeadError::TooFewClasses(weights.rows));
        }
        if weights.cols == 0 {
            return Err(HeadError::ZeroDim);
        }
        if bias.len() != weights.rows {
            return Err(HeadError::BiasLength {
                got: bias.len(),
                n_classes: weights.rows,
            });
        }
        if let Some(row) = weights.first_non_finite_row() {
            return Err(HeadError::NonFinite {
                what: "the weight matrix",
                row,
            });
        }
        if let Some(row) = bias.iter().position(|b| !b.is_finite()) {
            return Err(HeadError::NonFinite {
                what: "the bias",
                row,
            });
        }
        Ok(LinearHead { weights, bias })
    }

    /// A head with zero weights and zero bias (every class equally likely).
    pub fn zeros(n_classes: usize, dim: usize) -> Self {
        LinearHead {
            weights: Matrix::zeros(n_classes, dim),
            bias: vec![0.0; n_classes],
        }
    }

    /// The classes × dim weight matrix.
    pub fn weights(&self) -> &Matrix {
        &self.weights
    }

    /// The per-class bias.
    pub fn bias(&self) -> &[f32] {
        &self.bias
    }

    /// Number of classes.
    pub fn n_classes(&self) -> usize {
        self.weights.rows
    }

    /// Embedding dimension.
    pub fn dim(&self) -> usize {
        self.weights.cols
    }

    /// Logits (`n × classes`) for the rows of `x`.
    pub fn predict_logits(&self, x: &Matrix) -> Result<Matrix, HeadError> {
        if x.cols != self.dim() {
            return Err(HeadError::DimMismatch {
                expected: self.dim(),
                got: x.cols,
            });
        }
        let idx: Vec<u32> = (0..x.rows as u32).collect();
        let w: Vec<f64> = self.weights.data.iter().map(|&v| v as f64).collect();
        let b: Vec<f64> = self.bias.iter().map(|&v| v as f64).collect();
        Ok(logits_for_rows(x, &idx, &w, &b, self.n_classes()))
    }

    /// Class probabilities (softmax of the logits), `n × classes`.
    pub fn predict_proba(&self, x: &Matrix) -> Result<Matrix, HeadError> {
        Ok(softmax_rows(&self.predict_logits(x)?))
    }

    /// The most likely class of each row.
    pub fn predict(&self, x: &Matrix) -> Result<Vec<usize>, HeadError> {
        Ok(argmax_rows(&self.predict_logits(x)?))
    }

    fn check_against(
        &self,
        what: &'static str,
        n_classes: usize,
        dim: usize,
    ) -> Result<(), HeadError> {
        if self.n_classes() != n_classes || self.dim() != dim {
            return Err(HeadError::ShapeMismatch {
                what,
                rows: self.n_classes(),
                cols: self.dim(),
                n_classes,
                dim,
            });
        }
        Ok(())
    }
}

/// Solver settings for one fit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FitOptions {
    /// Inverse regularisation strength (scikit-learn's `C`); larger means weaker.
    pub c: f64,
    /// Stop when the largest absolute gradient entry of the objective divided by
    /// `C · Σ w_i` is at most this (scikit-learn's `tol`, default 1e-4). On L2-normalised
    /// embeddings with a large `C` that gradient is small early on; 1e-6 trains
    /// few-shot heads further at about 2–3× the time.
    pub tol: f64,
    /// Maximum L-BFGS iterations (the CLIP paper used 1,000).
    pub max_iter: usize,
}

impl Default for FitOptions {
    fn default() -> Self {
        FitOptions {
            c: 1.0,
            tol: 1e-4,
            max_iter: 1000,
        }
    }
}

impl FitOptions {
    fn validate(&self) -> Result<(), HeadError> {
        if !(self.c.is_finite() && self.c > 0.0) {
            return Err(HeadError::BadC(self.c));
        }
        if !(self.tol.is_finite() && self.tol > 0.0) {
            return Err(HeadError::BadTolerance(self.tol));
        }
        if self.max_iter == 0 {
            return Err(HeadError::BadMaxIter);
        }
        Ok(())
    }
}

/// Why the solver stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StopReason {
    /// The gradient's largest entry fell to the tolerance.
    GradientTolerance,
    /// The objective stopped decreasing (relative change ≤ 64 machine epsilons, as in scikit-learn).
    RelativeReduction,
    /// The iteration limit was reached first.
    MaxIterations,
    /// No step along the search direction decreased the objective (precision limit).
    LineSearchFailed,
    /// There was nothing to fit: the result is the prior.
    NoData,
}

/// Diagnostics of one fit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FitReport {
    /// The `C` used.
    pub c: f64,
    /// L-BFGS iterations.
    pub iterations: usize,
    /// Loss/gradient evaluations.
    pub evaluations: usize,
    /// Final objective divided by `C · Σ w_i` (mean weighted cross-entropy plus scaled penalty).
    pub loss: f64,
    /// Final largest absolute gradient entry of that scaled objective.
    pub grad_norm: f64,
    /// Whether the gradient or relative-reduction criterion was met.
    pub converged: bool,
    /// Why the solver stopped.
    pub stop: StopReason,
}

/// A fitted head and how the fit went.
#[derive(Clone, Debug, PartialEq)]
pub struct Fit {
    /// The fitted classifier.
    pub head: LinearHead,
    /// Solver diagnostics.
    pub report: FitReport,
}

/// Cross-validation settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CvOptions {
    /// Number of stratified folds.
    pub folds: usize,
    /// `C` values to try; `None` runs the default coarse-to-fine search ([`default_c_grid`]
    /// then four values around the best).
    pub c_grid: Option<Vec<f64>>,
    /// Seed of the fold assignment.
    pub seed: u64,
    /// Solver tolerance for every fit (see [`FitOptions::tol`]).
    pub tol: f64,
    /// Iteration limit for every fit.
    pub max_iter: usize,
}

impl Default for CvOptions {
    fn default() -> Self {
        CvOptions {
            folds: 5,
            c_grid: None,
            seed: 0,
            tol: 1e-4,
            max_iter: 1000,
        }
    }
}

/// Cross-validated accuracy of one `C`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CvPoint {
    /// The `C`.
    pub c: f64,
    /// Mean of the per-fold held-out accuracies.
    pub mean_accuracy: f64,
    /// Held-out accuracy of each fold.
    pub fold_accuracies: Vec<f64>,
    /// Whether every fold's fit converged.
    pub converged: bool,
    /// L-BFGS iterations, summed over the folds.
    pub iterations: usize,
}

/// Result of cross-validation.
#[derive(Clone, Debug, PartialEq)]
pub struct CvResult {
    /// Every `C` tried, in increasing order.
    pub points: Vec<CvPoint>,
    /// The chosen `C`: highest mean accuracy, ties going to the smaller `C`.
    pub best_c: f64,
    /// Its mean accuracy.
    pub best_accuracy: f64,
    /// Out-of-fold logits (`n × classes`) at the chosen `C`: each row predicted by the
    /// model that did not see it (input for [`choose_alpha`]).
    pub oof_logits: Matrix,
    /// Fold of each row.
    pub fold_of: Vec<usize>,
}

/// The default coarse `C` grid: 1e-6, 1e-4, …, 1e6 (seven values, two decades apart),
/// the range of the CLIP paper's search.
pub fn default_c_grid() -> Vec<f64> {
    (-3..=3).map(|e| 100f64.powi(e)).collect()
}

/// Values the fine stage adds around the best coarse `C`: `C·10^±0.5` and `C·10^±1`,
/// kept inside 1e-6..1e6.
fn fine_grid(best: f64) -> Vec<f64> {
    [-1.0f64, -0.5, 0.5, 1.0]
        .iter()
        .map(|e| best * 10f64.powf(*e))
        .filter(|c| *c >= 1e-6 * (1.0 - 1e-9) && *c <= 1e6 * (1.0 + 1e-9))
        .collect()
}

// ---------------------------------------------------------------------------
// Small helpers on logits
// ---------------------------------------------------------------------------

/// Row-wise softmax of a logit matrix (computed in f64).
pub fn softmax_rows(logits: &Matrix) -> Matrix {
    let mut out = logits.clone();
    if logits.cols == 0 {
        return out;
    }
    out.data.par_chunks_mut(logits.cols).for_each(|row| {
        let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
        let mut s = 0.0f64;
        for v in row.iter() {
            s += ((*v as f64) - m).exp();
        }
        for v in row.iter_mut() {
            *v = (((*v as f64) - m).exp() / s) as f32;
        }
    });
    out
}

/// Index of the largest entry in each row (first one on ties).
pub fn argmax_rows(m: &Matrix) -> Vec<usize> {
    if m.cols == 0 {
        return vec![0; m.rows];
    }
    m.data
        .chunks(m.cols)
        .map(|r| {
            let mut best = 0;
            for (i, v) in r.iter().enumerate() {
                if *v > r[best] {
                    best = i;
                }
            }
            best
        })
        .collect()
}

/// Fraction of rows whose arg-max logit is the label (0 for no rows).
pub fn accuracy(logits: &Matrix, labels: &[usize]) -> Result<f64, HeadError> {
    if labels.len() != logits.rows {
        return Err(HeadError::LabelCount {
            labels: labels.len(),
            rows: logits.rows,
        });
    }
    if labels.is_empty() {
        return Ok(0.0);
    }
    let hits = argmax_rows(logits)
        .iter()
        .zip(labels)
        .filter(|(p, l)| p == l)
        .count();
    Ok(hits as f64 / labels.len() as f64)
}

/// `alpha · zero_shot + (1 − alpha) · probe`, element-wise.
pub fn interpolate_logits(
    zero_shot: &Matrix,
    probe: &Matrix,
    alpha: f64,
) -> Result<Matrix, HeadError> {
    same_shape(zero_shot, probe)?;
    if !(0.0..=1.0).contains(&alpha) {
        return Err(HeadError::BadAlpha);
    }
    let a = alpha as f32;
    let data = zero_shot
        .data
        .iter()
        .zip(&probe.data)
        .map(|(z, p)| a * z + (1.0 - a) * p)
        .collect();
    Ok(Matrix {
        rows: zero_shot.rows,
        cols: zero_shot.cols,
        data,
    })
}

fn same_shape(a: &Matrix, b: &Matrix) -> Result<(), HeadError> {
    if a.rows != b.rows || a.cols != b.cols {
        return Err(HeadError::LogitShape {
            a_rows: a.rows,
            a_cols: a.cols,
            b_rows: b.rows,
            b_cols: b.cols,
        });
    }
    Ok(())
}

/// The interpolation weight chosen by [`choose_alpha`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlphaChoice {
    /// The chosen weight of the zero-shot logits.
    pub alpha: f64,
    /// Accuracy at that weight.
    pub accuracy: f64,
    /// `(alpha, accuracy)` for every weight tried.
    pub scores: Vec<(f64, f64)>,
}

/// Eleven weights 0, 0.1, …, 1.
pub fn default_alpha_grid() -> Vec<f64> {
    (0..=10).map(|i| i as f64 / 10.0).collect()
}

/// Picks the `alpha` in `alphas` whose interpolated logits
/// `alpha · zero_shot + (1 − alpha) · probe` are most accurate on held-out `labels`;
/// ties go to the larger `alpha` (more weight on the zero-shot classifier).
pub fn choose_alpha(
    zero_shot: &Matrix,
    probe: &Matrix,
    labels: &[usize],
    alphas: &[f64],
) -> Result<AlphaChoice, HeadError> {
    same_shape(zero_shot, probe)?;
    if labels.len() != zero_shot.rows {
        return Err(HeadError::LabelCount {
            labels: labels.len(),
            rows: zero_shot.rows,
        });
    }
    if alphas.is_empty() || alphas.iter().any(|a| !(0.0..=1.0).contains(a)) {
        return Err(HeadError::BadAlpha);
    }
    let mut scores = Vec::with_capacity(alphas.len());
    let mut best: Option<(f64, f64)> = None;
    for &a in alphas {
        let acc = accuracy(&interpolate_logits(zero_shot, probe, a)?, labels)?;
        scores.push((a, acc));
        best = match best {
            Some((ba, bacc)) if bacc > acc || (bacc == acc && ba > a) => Some((ba, bacc)),
            _ => Some((a, acc)),
        };
    }
    let (alpha, accuracy) = best.ok_or(HeadError::BadAlpha)?;
    Ok(AlphaChoice {
        alpha,
        accuracy,
        scores,
    })
}

// ---------------------------------------------------------------------------
// Fitting
// ---------------------------------------------------------------------------

/// Fits the head at `opts.c`. With a `prior`, the solver starts at it and the penalty is
/// `½‖W − W_prior‖² + ½‖b − b_prior‖²` (so classes without examples keep the prior's
/// bias); with no examples the result is the prior itself.
pub fn fit(
    data: &Dataset<'_>,
    prior: Option<&LinearHead>,
    opts: &FitOptions,
) -> Result<Fit, HeadError> {
    fit_from(data, prior, opts, None)
}

/// Like [`fit`] but starting the solver at `init` (a warm start; the penalty still pulls
/// toward the prior or zero).
pub fn fit_from(
    data: &Dataset<'_>,
    prior: Option<&LinearHead>,
    opts: &FitOptions,
    init: Option<&LinearHead>,
) -> Result<Fit, HeadError> {
    opts.validate()?;
    if let Some(p) = prior {
        p.check_against("the prior", data.n_classes, data.dim())?;
    }
    if let Some(h) = init {
        h.check_against("the initial head", data.n_classes, data.dim())?;
    }
    let all: Vec<usize> = (0..data.len()).collect();
    if data.is_empty() || data.weights.is_some_and(|w| w.iter().all(|&v| v == 0.0)) {
        return match prior {
            Some(p) => Ok(Fit {
                head: p.clone(),
                report: FitReport {
                    c: opts.c,
                    iterations: 0,
                    evaluations: 0,
                    loss: 0.0,
                    grad_norm: 0.0,
                    converged: true,
                    stop: StopReason::NoData,
                },
            }),
            None => Err(HeadError::NoExamples),
        };
    }
    if prior.is_none() {
        let counts = data.class_counts();
        if let Some(c) = counts.iter().position(|&n| n == 0) {
            return Err(HeadError::EmptyClass {
                class: c.to_string(),
            });
        }
    }
    let prior_theta = prior.map(head_to_theta);
    let problem = Problem::new(data, &all, prior_theta.as_deref(), opts.c);
    let theta0 = match (init, &prior_theta) {
        (Some(h), _) => head_to_theta(h),
        (None, Some(p)) => p.clone(),
        (None, None) => vec![0.0; problem.n_params()],
    };
    let (theta, report) = lbfgs(&problem, theta0, opts);
    Ok(Fit {
        head: theta_to_head(&theta, data.n_classes, data.dim()),
        report,
    })
}

/// The objective of [`fit`] as a function of the parameters, for checking optimality or
/// driving another optimiser. Parameters are `W` row-major (classes × dim) then `b`.
pub struct Objective<'a> {
    problem: Problem<'a>,
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

fn head_to_theta(h: &LinearHead) -> Vec<f64> {
    h.weights
        .data
        .iter()
        .chain(&h.bias)
        .map(|&v| v as f64)
        .collect()
}

fn theta_to_head(theta: &[f64], k: usize, d: usize) -> LinearHead {
    LinearHead {
        weights: Matrix {
            rows: k,
            cols: d,
            data: theta[..k * d].iter().map(|&v| v as f32).collect(),
        },
        bias: theta[k * d..].iter().map(|&v| v as f32).collect(),
    }
}

// ---------------------------------------------------------------------------
// Cross-validation
// ---------------------------------------------------------------------------

/// Assigns each row to one of `folds` stratified folds: each class's rows are shuffled
/// with `seed` and dealt round-robin, continuing the deal across classes so folds differ
/// in size by at most one. Deterministic for a given seed.
pub fn stratified_folds(
    labels: &[usize],
    n_classes: usize,
    folds: usize,
    seed: u64,
) -> Result<Vec<usize>, HeadError> {
    if folds < 2 || folds > labels.len() {
        return Err(HeadError::BadFolds {
            folds,
            n: labels.len(),
        });
    }
    if let Some(row) = labels.iter().position(|&l| l >= n_classes) {
        return Err(HeadError::LabelOutOfRange {
            row,
            label: labels[row],
            n_classes,
        });
    }
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); n_classes];
    for (i, &l) in labels.iter().enumerate() {
        by_class[l].push(i);
    }
    let mut rng = SplitMix64::new(seed);
    let mut fold_of = vec![0usize; labels.len()];
    let mut deal = 0usize;
    for members in by_class.iter_mut() {
        // Fisher–Yates.
        for i in (1..members.len()).rev() {
            let j = rng.below(i + 1);
            members.swap(i, j);
        }
        for &m in members.iter() {
            fold_of[m] = deal % folds;
            deal += 1;
        }
    }
    Ok(fold_of)
}

/// Stratified K-fold cross-validation of the head over a `C` grid (see [`CvOptions`]).
/// Each fold's fits are warm-started along increasing `C`. Without a prior every class
/// needs at least 2 examples. `class_names` (one per class) only improves error messages.
pub fn cross_validate(
    data: &Dataset<'_>,
    prior: Option<&LinearHead>,
    opts: &CvOptions,
    class_names: Option<&[String]>,
) -> Result<CvResult, HeadError> {
    Ok(cross_validate_inner(data, prior, opts, class_names)?.0)
}

/// Cross-validates as [`cross_validate`], then refits on all the data at the chosen `C`
/// (warm-started from the mean of the fold solutions).
pub fn fit_cv(
    data: &Dataset<'_>,
    prior: Option<&LinearHead>,
    opts: &CvOptions,
    class_names: Option<&[String]>,
) -> Result<(CvResult, Fit), HeadError> {
    let (cv, init) = cross_validate_inner(data, prior, opts, class_names)?;
    let fit_opts = FitOptions {
        c: cv.best_c,
        tol: opts.tol,
        max_iter: opts.max_iter,
    };
    let init_head = theta_to_head(&init, data.n_classes, data.dim());
    let fit = fit_from(data, prior, &fit_opts, Some(&init_head))?;
    Ok((cv, fit))
}

fn class_label(names: Option<&[String]>, c: usize) -> String {
    names
        .and_then(|n| n.get(c).cloned())
        .unwrap_or_else(|| c.to_string())
}

/// Returns the CV result and the mean of the fold solutions at the chosen C.
fn cross_validate_inner(
    data: &Dataset<'_>,
    prior: Option<&LinearHead>,
    opts: &CvOptions,
    class_names: Option<&[String]>,
) -> Result<(CvResult, Vec<f64>), HeadError> {
    if let Some(names) = class_names {
        if names.len() != data.n_classes {
            return Err(HeadError::ClassNames {
                names: names.len(),
                n_classes: data.n_classes,
            });
        }
    }
    FitOptions {
        c: 1.0,
        tol: opts.tol,
        max_iter: opts.max_iter,
    }
    .validate()?;
    if let Some(p) = prior {
        p.check_against("the prior", data.n_classes, data.dim())?;
    }
    let n = data.len();
    if opts.folds < 2 || opts.folds > n {
        return Err(HeadError::BadFolds {
            folds: opts.folds,
            n,
        });
    }
    if prior.is_none() {
        for (c, &count) in data.class_counts().iter().enumerate() {
            if count < 2 {
                return Err(HeadError::TooFewExamples {
                    class: class_label(class_names, c),
                    count,
                    needed: 2,
                    folds: opts.folds,
                });
            }
        }
    }
    let grid: Vec<f64> = match &opts.c_grid {
        Some(g) => {
            if g.is_empty() || g.iter().any(|c| !(c.is_finite() && *c > 0.0)) {
                return Err(HeadError::BadGrid);
            }
            let mut g = g.clone();
            g.sort_by(f64::total_cmp);
            g.dedup();
            g
        }
        None => default_c_grid(),
    };

    let fold_of = stratified_folds(data.labels, data.n_classes, opts.folds, opts.seed)?;
    let (k, d) = (data.n_classes, data.dim());
    let prior_theta = prior.map(head_to_theta);
    let zero = vec![0.0; k * (d + 1)];
    let start = prior_theta.clone().unwrap_or(zero);

    struct FoldState<'p> {
        problem: Problem<'p>,
        test: Vec<u32>,
        test_labels: Vec<usize>,
        solutions: Vec<(f64, Vec<f64>)>,
    }
    let mut folds: Vec<FoldState<'_>> = (0..opts.folds)
        .map(|f| {
            let train: Vec<usize> = (0..n).filter(|&i| fold_of[i] != f).collect();
            let test: Vec<u32> = (0..n)
                .filter(|&i| fold_of[i] == f)
                .map(|i| i as u32)
                .collect();
            let test_labels = test.iter().map(|&i| data.labels[i as usize]).collect();
            FoldState {
                problem: Problem::new(data, &train, prior_theta.as_deref(), 1.0),
                test,
                test_labels,
                solutions: Vec::new(),
            }
        })
        .collect();

    let mut points: Vec<CvPoint> = Vec::new();
    let mut best: Option<(f64, f64)> = None; // (c, acc)
    let mut best_oof = vec![0f32; n * k];
    let mut oof = vec![0f32; n * k];

    let mut evaluate = |c: f64,
                        folds: &mut Vec<FoldState<'_>>,
                        points: &mut Vec<CvPoint>,
                        best: &mut Option<(f64, f64)>,
                        best_oof: &mut Vec<f32>| {
        let mut accs = Vec::with_capacity(folds.len());
        let mut converged = true;
        let mut iterations = 0;
        for fs in folds.iter_mut() {
            // Warm start from the nearest C already solved (prefer the smaller on a tie).
            let init = fs
                .solutions
                .iter()
                .min_by(|a, b| {
                    let da = (a.0.ln() - c.ln()).abs();
                    let db = (b.0.ln() - c.ln()).abs();
                    da.total_cmp(&db).then(a.0.total_cmp(&b.0))
                })
                .map(|s| s.1.clone())
                .unwrap_or_else(|| start.clone());
            fs.problem.c = c;
            let fit_opts = FitOptions {
                c,
                tol: opts.tol,
                max_iter: opts.max_iter,
            };
            let (theta, report) = lbfgs(&fs.problem, init, &fit_opts);
            converged &= report.converged;
            iterations += report.iterations;
            let logits = logits_for_rows(data.x, &fs.test, &theta[..k * d], &theta[k * d..], k);
            let preds = argmax_rows(&logits);
            let hits = preds
                .iter()
                .zip(&fs.test_labels)
                .filter(|(p, l)| p == l)
                .count();
            accs.push(hits as f64 / fs.test.len().max(1) as f64);
            for (r, &i) in fs.test.iter().enumerate() {
                let i = i as usize;
                oof[i * k..(i + 1) * k].copy_from_slice(logits.row(r));
            }
            fs.solutions.push((c, theta));
        }
        let mean = accs.iter().sum::<f64>() / accs.len() as f64;
        let better = match *best {
            None => true,
            Some((bc, bacc)) => mean > bacc || (mean == bacc && c < bc),
        };
        if better {
            *best = Some((c, mean));
            best_oof.copy_from_slice(&oof);
        }
        points.push(CvPoint {
            c,
            mean_accuracy: mean,
            fold_accuracies: accs,
            converged,
            iterations,
        });
    };

    for &c in &grid {
        evaluate(c, &mut folds, &mut points, &mut best, &mut best_oof);
    }
    if opts.c_grid.is_none() {
        if let Some((bc, _)) = best {
            for c in fine_grid(bc) {
                if !points.iter().any(|p| (p.c / c - 1.0).abs() < 1e-9) {
                    evaluate(c, &mut folds, &mut points, &mut best, &mut best_oof);
                }
            }
        }
    }
    let (best_c, best_accuracy) = best.ok_or(HeadError::BadGrid)?;
    points.sort_by(|a, b| a.c.total_cmp(&b.c));

    // Mean of the fold solutions at the chosen C, for a warm start of the refit.
    let mut mean_theta = vec![0.0f64; k * (d + 1)];
    for fs in &folds {
        if let Some((_, t)) = fs.solutions.iter().find(|s| s.0 == best_c) {
            for (m, v) in mean_theta.iter_mut().zip(t) {
                *m += v / opts.folds as f64;
            }
        }
    }
    Ok((
        CvResult {
            points,
            best_c,
            best_accuracy,
            oof_logits: Matrix {
                rows: n,
                cols: k,
                data: best_oof,
            },
            fold_of,
        },
        mean_theta,
    ))
}

// ---------------------------------------------------------------------------
// The objective: fused loss + gradient over row chunks
// ---------------------------------------------------------------------------

/// Rows per work item; fixed so that results do not depend on the thread count.
const CHUNK: usize = 240;
/// Chunks per reduction batch (bounds the memory of partial gradients).
const BATCH: usize = 16;
/// Classes are padded to a multiple of this in the packed weights.
const KPAD: usize = 16;
/// With a tolerance below this, the solver confirms and finishes in f64 kernels.
const SINGLE_PRECISION_TOL: f64 = 1e-5;
/// scikit-learn's `ftol` for L-BFGS-B.
const FTOL: f64 = 64.0 * f64::EPSILON;
/// Line-search evaluations per iteration in f32 kernels, before continuing in f64.
const SINGLE_MAX_LS: usize = 10;
/// L-BFGS memory (scipy's default `maxcor`).
const MEMORY: usize = 10;
/// Line-search evaluations per iteration (scikit-learn's `maxls`).
const MAX_LS: usize = 50;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Precision {
    Single,
    Double,
}

struct Problem<'a> {
    x: &'a [f32],
    d: usize,
    k: usize,
    rows: Vec<u32>,
    labels: Vec<u32>,
    weights: Option<Vec<f64>>,
    weight_sum: f64,
    c: f64,
    prior: Option<Vec<f64>>,
}

impl<'a> Problem<'a> {
    fn new(data: &Dataset<'a>, rows: &[usize], prior: Option<&[f64]>, c: f64) -> Self {
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

    fn n_params(&self) -> usize {
        self.k * (self.d + 1)
    }

    /// Scaled objective `(C Σ w CE + ½‖θ_W − θ0_W‖² [+ ½‖b − b0‖² with a prior]) / (C Σ w)` and its gradient.
    fn eval(&self, theta: &[f64], precision: Precision) -> (f64, Vec<f64>) {
        self.eval_with(theta, precision, simd_available())
    }

    /// [`Problem::eval`] with the SIMD kernels on or off (off: the portable kernels).
    fn eval_with(&self, theta: &[f64], precision: Precision, simd: bool) -> (f64, Vec<f64>) {
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
    fn data_term<T: Real>(&self, theta: &[f64], simd: bool) -> (f64, Vec<f64>) {
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

struct ChunkBuf<T> {
    z: Vec<T>,
    gw: Vec<T>,
    gb: Vec<f64>,
    loss: f64,
}

struct Ctx<'p, 'a, T> {
    p: &'p Problem<'a>,
    wt: &'p [T],
    bias: &'p [T],
    kp: usize,
}

fn simd_available() -> bool {
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

fn run_chunk<T: Real>(
    ctx: &Ctx<'_, '_, T>,
    start: usize,
    end: usize,
    buf: &mut ChunkBuf<T>,
    simd: bool,
) {
    chunk_body::<T>(ctx, start, end, buf, simd);
}

/// Whether the portable kernels may use `mul_add` (fast only where FMA is baseline).
const PORTABLE_FMA: bool = cfg!(target_arch = "aarch64");

/// Forward (logits), softmax/cross-entropy, and backward (`Gᵀ X`) for rows `start..end`.
fn chunk_body<T: Real>(
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
fn madd<T: Real, const FMA: bool>(a: T, b: T, c: T) -> T {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// `z[i, c] = x_i · w_c + b_c` for all rows and padded classes (`wt` is dim × kp).
#[inline(always)]
fn forward<T: Real, const FMA: bool>(
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
fn fwd_rows<T: Real, const FMA: bool, const MR: usize, const NR: usize>(
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
fn backward<T: Real, const FMA: bool>(
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
fn bwd_tile<T: Real, const FMA: bool, const CB: usize, const NL: usize>(
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
fn logits_for_rows(x: &Matrix, idx: &[u32], w: &[f64], b: &[f64], k: usize) -> Matrix {
    logits_for_rows_with(x, idx, w, b, k, simd_available())
}

fn logits_for_rows_with(
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

fn predict_chunk(
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
trait Real:
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

// ---------------------------------------------------------------------------
// L-BFGS with a strong-Wolfe line search
// ---------------------------------------------------------------------------

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

struct Memory {
    s: VecDeque<Vec<f64>>,
    y: VecDeque<Vec<f64>>,
    rho: VecDeque<f64>,
}

impl Memory {
    fn new() -> Self {
        Memory {
            s: VecDeque::new(),
            y: VecDeque::new(),
            rho: VecDeque::new(),
        }
    }

    fn clear(&mut self) {
        self.s.clear();
        self.y.clear();
        self.rho.clear();
    }

    fn push(&mut self, s: Vec<f64>, y: Vec<f64>) {
        let sy = dot(&s, &y);
        if sy.is_nan() || sy <= 1e-12 * dot(&y, &y).max(f64::MIN_POSITIVE) {
            return; // skip pairs that would break positive definiteness
        }
        if self.s.len() == MEMORY {
            self.s.pop_front();
            self.y.pop_front();
            self.rho.pop_front();
        }
        self.s.push_back(s);
        self.y.push_back(y);
        self.rho.push_back(1.0 / sy);
    }

    /// `−H·g` by the two-loop recursion.
    fn direction(&self, g: &[f64]) -> Vec<f64> {
        let mut q = g.to_vec();
        let m = self.s.len();
        let mut alpha = vec![0.0; m];
        for i in (0..m).rev() {
            let a = self.rho[i] * dot(&self.s[i], &q);
            alpha[i] = a;
            for (qj, yj) in q.iter_mut().zip(&self.y[i]) {
                *qj -= a * yj;
            }
        }
        if let (Some(s), Some(y)) = (self.s.back(), self.y.back()) {
            let gamma = dot(s, y) / dot(y, y);
            q.iter_mut().for_each(|v| *v *= gamma);
        }
        for (i, a) in alpha.iter().enumerate() {
            let beta = self.rho[i] * dot(&self.y[i], &q);
            for (qj, sj) in q.iter_mut().zip(&self.s[i]) {
                *qj += (a - beta) * sj;
            }
        }
        q.iter_mut().for_each(|v| *v = -*v);
        q
    }
}

struct Point {
    step: f64,
    f: f64,
    g: Vec<f64>,
    dg: f64,
}

/// Strong-Wolfe line search (Nocedal & Wright, Algorithms 3.5–3.6, cubic interpolation).
#[allow(clippy::too_many_arguments)]
fn line_search(
    problem: &Problem<'_>,
    precision: Precision,
    x: &[f64],
    f0: f64,
    dg0: f64,
    dir: &[f64],
    first_step: f64,
    evals: &mut usize,
) -> Option<Point> {
    const C1: f64 = 1e-4;
    const C2: f64 = 0.9;
    let eval_at = |a: f64, evals: &mut usize| -> Point {
        let xt: Vec<f64> = x.iter().zip(dir).map(|(xi, di)| xi + a * di).collect();
        let (f, g) = problem.eval(&xt, precision);
        *evals += 1;
        let dg = dot(&g, dir);
        Point { step: a, f, g, dg }
    };
    let mut prev = Point {
        step: 0.0,
        f: f0,
        g: Vec::new(),
        dg: dg0,
    };
    let mut a = first_step;
    let mut used = 0;
    let max_ls = match precision {
        Precision::Single => SINGLE_MAX_LS,
        Precision::Double => MAX_LS,
    };
    loop {
        if used >= max_ls {
            return None;
        }
        let cur = eval_at(a, evals);
        used += 1;
        if !cur.f.is_finite() || cur.f > f0 + C1 * a * dg0 || (used > 1 && cur.f >= prev.f) {
            return zoom(prev, cur, f0, dg0, &eval_at, evals, used, max_ls);
        }
        if cur.dg.abs() <= -C2 * dg0 {
            return Some(cur);
        }
        if cur.dg >= 0.0 {
            return zoom(cur, prev, f0, dg0, &eval_at, evals, used, max_ls);
        }
        let next = (a * 4.0).min(a + 1e6);
        prev = cur;
        a = next;
    }
}

fn cubic_min(a: &Point, b: &Point) -> Option<f64> {
    // Minimiser of the cubic interpolating (step, f, dg) at a and b.
    let d1 = a.dg + b.dg - 3.0 * (a.f - b.f) / (a.step - b.step);
    let disc = d1 * d1 - a.dg * b.dg;
    if disc < 0.0 {
        return None;
    }
    let d2 = disc.sqrt() * (b.step - a.step).signum();
    let t = b.step - (b.step - a.step) * (b.dg + d2 - d1) / (b.dg - a.dg + 2.0 * d2);
    t.is_finite().then_some(t)
}

#[allow(clippy::too_many_arguments)]
fn zoom<F: Fn(f64, &mut usize) -> Point>(
    mut lo: Point,
    mut hi: Point,
    f0: f64,
    dg0: f64,
    eval_at: &F,
    evals: &mut usize,
    mut used: usize,
    max_ls: usize,
) -> Option<Point> {
    const C1: f64 = 1e-4;
    const C2: f64 = 0.9;
    loop {
        if used >= max_ls || (hi.step - lo.step).abs() <= 1e-16 * lo.step.abs().max(1e-300) {
            // Accept the best point found if it decreased f at all.
            return (lo.step > 0.0 && lo.f < f0 && !lo.g.is_empty()).then_some(lo);
        }
        let (l, h) = if lo.step < hi.step {
            (lo.step, hi.step)
        } else {
            (hi.step, lo.step)
        };
        let width = h - l;
        let mut a = if hi.f.is_finite() {
            cubic_min(&lo, &hi).unwrap_or(0.5 * (l + h))
        } else {
            0.5 * (l + h)
        };
        // Keep the trial well inside the bracket.
        if a < l + 0.1 * width || a > h - 0.1 * width {
            a = 0.5 * (l + h);
        }
        let cur = eval_at(a, evals);
        used += 1;
        if !cur.f.is_finite() || cur.f > f0 + C1 * a * dg0 || cur.f >= lo.f {
            hi = cur;
        } else {
            if cur.dg.abs() <= -C2 * dg0 {
                return Some(cur);
            }
            if cur.dg * (hi.step - lo.step) >= 0.0 {
                hi = lo;
            }
            lo = cur;
        }
    }
}

fn lbfgs(problem: &Problem<'_>, mut x: Vec<f64>, opts: &FitOptions) -> (Vec<f64>, FitReport) {
    let mut precision = Precision::Single;
    let (mut f, mut g) = problem.eval(&x, precision);
    let mut evals = 1usize;
    let mut iters = 0usize;
    let mut mem = Memory::new();
    // Switch to f64 kernels; returns false if already there.
    let to_double = |precision: &mut Precision,
                     x: &[f64],
                     f: &mut f64,
                     g: &mut Vec<f64>,
                     evals: &mut usize|
     -> bool {
        if *precision == Precision::Double {
            return false;
        }
        *precision = Precision::Double;
        let (nf, ng) = problem.eval(x, Precision::Double);
        *f = nf;
        *g = ng;
        *evals += 1;
        true
    };
    let stop = loop {
        let gmax = max_abs(&g);
        if gmax <= opts.tol {
            if opts.tol < SINGLE_PRECISION_TOL
                && to_double(&mut precision, &x, &mut f, &mut g, &mut evals)
            {
                continue;
            }
            break StopReason::GradientTolerance;
        }
        if iters >= opts.max_iter {
            break StopReason::MaxIterations;
        }
        let mut dir = mem.direction(&g);
        let mut dg = dot(&dir, &g);
        if dg.is_nan() || dg >= 0.0 {
            mem.clear();
            dir = g.iter().map(|v| -v).collect();
            dg = dot(&dir, &g);
        }
        // f32 kernels resolve the objective to about 1e-7 of its size: when the expected
        // decrease is below that, continue in f64.
        if precision == Precision::Single
            && -dg < 1e-7 * f.abs().max(1.0)
            && to_double(&mut precision, &x, &mut f, &mut g, &mut evals)
        {
            continue;
        }
        let first_step = if mem.s.is_empty() {
            (1.0 / dot(&g, &g).sqrt()).min(1.0)
        } else {
            1.0
        };
        match line_search(problem, precision, &x, f, dg, &dir, first_step, &mut evals) {
            Some(pt) => {
                let s: Vec<f64> = dir.iter().map(|v| pt.step * v).collect();
                let y: Vec<f64> = pt.g.iter().zip(&g).map(|(a, b)| a - b).collect();
                let rel = (f - pt.f) / f.abs().max(pt.f.abs()).max(1.0);
                x.iter_mut().zip(&s).for_each(|(xi, si)| *xi += si);
                mem.push(s, y);
                f = pt.f;
                g = pt.g;
                iters += 1;
                if rel <= FTOL {
                    if to_double(&mut precision, &x, &mut f, &mut g, &mut evals) {
                        continue;
                    }
                    break StopReason::RelativeReduction;
                }
            }
            None => {
                if to_double(&mut precision, &x, &mut f, &mut g, &mut evals) {
                    mem.clear();
                    continue;
                }
                break StopReason::LineSearchFailed;
            }
        }
    };
    let grad_norm = max_abs(&g);
    let converged = match stop {
        StopReason::GradientTolerance | StopReason::RelativeReduction | StopReason::NoData => true,
        StopReason::MaxIterations => false,
        StopReason::LineSearchFailed => grad_norm <= opts.tol,
    };
    (
        x,
        FitReport {
            c: opts.c,
            iterations: iters,
            evaluations: evals,
            loss: f,
            grad_norm,
            converged,
            stop,
        },
    )
}

// ---------------------------------------------------------------------------
// Deterministic RNG for fold assignment
// ---------------------------------------------------------------------------

struct SplitMix64(u64);

impl SplitMix64 {
    fn new(seed: u64) -> Self {
        SplitMix64(seed ^ 0x6A09_E667_F3BC_C909)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0), by multiply-shift.
    fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Gaussian clusters: `k` centres at `sep` × N(0, I), points = centre + N(0, I),
    /// then a fraction `noise` of labels replaced by a random class.
    fn clusters(
        n: usize,
        d: usize,
        k: usize,
        sep: f64,
        noise: f64,
        seed: u64,
    ) -> (Matrix, Vec<usize>) {
        clusters_scaled(n, d, k, sep, noise, seed, &|_| 1.0)
    }

    /// Like [`clusters`] with a per-dimension noise scale.
    fn clusters_scaled(
        n: usize,
        d: usize,
        k: usize,
        sep: f64,
        noise: f64,
        seed: u64,
        scale: &dyn Fn(usize) -> f64,
    ) -> (Matrix, Vec<usize>) {
        let mut rng = SplitMix64::new(seed);
        let mut gauss = move || {
            let u1 = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
            let u2 = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
            (-2.0 * (1.0 - u1).ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
        };
        let centres: Vec<f64> = (0..k * d).map(|_| sep * gauss()).collect();
        let mut rng2 = SplitMix64::new(seed.wrapping_add(17));
        let mut x = Vec::with_capacity(n * d);
        let mut y = Vec::with_capacity(n);
        for i in 0..n {
            let c = i % k;
            for j in 0..d {
                x.push((centres[c * d + j] + scale(j) * gauss()) as f32);
            }
            let u = (rng2.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
            y.push(if u < noise { rng2.below(k) } else { c });
        }
        (Matrix::new(n, d, x).unwrap(), y)
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let (x, y) = clusters(300, 7, 4, 1.0, 0.0, 1);
        let w: Vec<f64> = (0..300).map(|i| 0.5 + (i % 3) as f64 * 0.5).collect();
        let data = Dataset::new(&x, &y, 4).unwrap().with_weights(&w).unwrap();
        let mut prior = LinearHead::zeros(4, 7);
        prior
            .weights
            .data
            .iter_mut()
            .enumerate()
            .for_each(|(i, v)| *v = ((i % 5) as f32 - 2.0) * 0.1);
        prior.bias = vec![0.1, -0.2, 0.0, 0.3];
        for p in [None, Some(&prior)] {
            let obj = Objective::new(&data, p, 0.7).unwrap();
            let theta: Vec<f64> = (0..obj.n_params())
                .map(|i| ((i * 37 % 11) as f64 - 5.0) * 0.05)
                .collect();
            let (_, g) = obj.value_and_gradient(&theta);
            for i in (0..obj.n_params()).step_by(3) {
                let h = 1e-5;
                let mut tp = theta.clone();
                tp[i] += h;
                let mut tm = theta.clone();
                tm[i] -= h;
                let fd =
                    (obj.value_and_gradient(&tp).0 - obj.value_and_gradient(&tm).0) / (2.0 * h);
                assert!(
                    (fd - g[i]).abs() < 1e-7,
                    "param {i}: finite difference {fd} vs gradient {}",
                    g[i]
                );
            }
            // The f32 kernels agree with the f64 ones to f32 precision.
            let (f1, g1) = obj.value_and_gradient_fast(&theta);
            let (f2, g2) = obj.value_and_gradient(&theta);
            assert!((f1 - f2).abs() < 1e-6 * f2.abs().max(1.0));
            let diff = g1
                .iter()
                .zip(&g2)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(diff < 1e-6, "f32 vs f64 gradient differ by {diff}");
        }
    }

    #[test]
    fn portable_kernels_match_simd_kernels() {
        // The AVX2/FMA kernels run only where the CPU has them; the portable kernels are
        // checked everywhere (single against double precision, logits against a direct sum).
        let simd = simd_available();
        if !simd {
            eprintln!("portable_kernels_match_simd_kernels: this CPU lacks AVX2/FMA: comparison with the SIMD kernels SKIPPED; portable kernels checked alone");
        }
        // Odd sizes: a partial row tile, a dimension remainder, classes not a multiple of 16.
        for (n, d, k) in [(250usize, 37usize, 5usize), (13, 16, 17), (7, 3, 2)] {
            let (x, y) = clusters(n, d, k, 1.0, 0.1, 21);
            let data = Dataset::new(&x, &y, k).unwrap();
            let all: Vec<usize> = (0..n).collect();
            let problem = Problem::new(&data, &all, None, 2.0);
            let theta: Vec<f64> = (0..k * (d + 1))
                .map(|i| ((i * 13 % 17) as f64 - 8.0) * 0.03)
                .collect();
            let (fs, gs) = problem.eval_with(&theta, Precision::Single, false);
            let (fd, gd) = problem.eval_with(&theta, Precision::Double, false);
            assert!(
                fs.is_finite() && (fs - fd).abs() <= 1e-5 * fd.abs().max(1.0),
                "{n}x{d}x{k} portable single vs double: {fs} vs {fd}"
            );
            let diff = gs
                .iter()
                .zip(&gd)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(
                diff <= 1e-5,
                "{n}x{d}x{k} portable gradients differ by {diff}"
            );
            for precision in [Precision::Single, Precision::Double] {
                if !simd {
                    break;
                }
                let (fa, ga) = problem.eval_with(&theta, precision, true);
                let (fb, gb) = problem.eval_with(&theta, precision, false);
                let tol = if precision == Precision::Single {
                    1e-5
                } else {
                    1e-12
                };
                assert!(
                    (fa - fb).abs() <= tol * fa.abs().max(1.0),
                    "{n}x{d}x{k} {precision:?}: {fa} vs {fb}"
                );
                let diff = ga
                    .iter()
                    .zip(&gb)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0, f64::max);
                assert!(
                    diff <= tol,
                    "{n}x{d}x{k} {precision:?}: gradients differ by {diff}"
                );
            }
            let idx: Vec<u32> = (0..n as u32).rev().collect();
            let (w, b) = theta.split_at(k * d);
            let lb = logits_for_rows_with(&x, &idx, w, b, k, false);
            for (i, &r) in idx.iter().enumerate() {
                let row = &x.data[r as usize * d..(r as usize + 1) * d];
                for c in 0..k {
                    let want: f64 = b[c]
                        + row
                            .iter()
                            .zip(&w[c * d..(c + 1) * d])
                            .map(|(&xv, &wv)| xv as f64 * wv)
                            .sum::<f64>();
                    let got = lb.as_slice()[i * k + c] as f64;
                    assert!((got - want).abs() <= 1e-4, "portable logit {got} vs {want}");
                }
            }
            if !simd {
                continue;
            }
            let la = logits_for_rows_with(&x, &idx, w, b, k, true);
            let diff = la
                .as_slice()
                .iter()
                .zip(lb.as_slice())
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(diff <= 1e-5, "logits differ by {diff}");
        }
    }

    #[test]
    fn separable_data_is_fit_perfectly_and_optimally() {
        let (x, y) = clusters(400, 10, 3, 4.0, 0.0, 2);
        let data = Dataset::new(&x, &y, 3).unwrap();
        let opts = FitOptions {
            c: 100.0,
            tol: 1e-6,
            max_iter: 1000,
        };
        let fit = fit(&data, None, &opts).unwrap();
        assert!(fit.report.converged, "{:?}", fit.report);
        let acc = accuracy(&fit.head.predict_logits(&x).unwrap(), &y).unwrap();
        assert_eq!(acc, 1.0);
        // Optimality: the gradient at the returned (f32) head is below the tolerance.
        let obj = Objective::new(&data, None, opts.c).unwrap();
        let (_, g) = obj.value_and_gradient(&obj.params_of(&fit.head).unwrap());
        assert!(fit.report.grad_norm <= opts.tol, "{:?}", fit.report);
        assert!(
            max_abs(&g) <= opts.tol,
            "gradient {} at the f32 head",
            max_abs(&g)
        );
    }

    #[test]
    fn tight_tolerance_is_reached_in_double_precision() {
        // f32 kernels alone stall near a gradient of 1e-5 on this problem.
        let (x, y) = clusters(500, 12, 4, 0.6, 0.0, 3);
        let data = Dataset::new(&x, &y, 4).unwrap();
        let opts = FitOptions {
            c: 10.0,
            tol: 1e-7,
            max_iter: 1000,
        };
        let fit = fit(&data, None, &opts).unwrap();
        let r = &fit.report;
        assert!(
            r.converged && r.stop == StopReason::GradientTolerance && r.grad_norm <= 1e-7,
            "{r:?}"
        );
        assert!(r.evaluations < 2 * r.iterations, "{r:?}");
    }

    #[test]
    fn sample_weights_act_like_repeated_rows() {
        let (x, y) = clusters(120, 5, 3, 1.0, 0.1, 4);
        // Weight 2 on the first 30 rows == those rows twice.
        let w: Vec<f64> = (0..120).map(|i| if i < 30 { 2.0 } else { 1.0 }).collect();
        let idx: Vec<usize> = (0..120).chain(0..30).collect();
        let x2 = x.select_rows(&idx).unwrap();
        let y2: Vec<usize> = idx.iter().map(|&i| y[i]).collect();
        let opts = FitOptions {
            c: 3.0,
            tol: 1e-8,
            max_iter: 1000,
        };
        let a = fit(
            &Dataset::new(&x, &y, 3).unwrap().with_weights(&w).unwrap(),
            None,
            &opts,
        )
        .unwrap();
        let b = fit(&Dataset::new(&x2, &y2, 3).unwrap(), None, &opts).unwrap();
        let diff = a
            .head
            .weights()
            .as_slice()
            .iter()
            .zip(b.head.weights().as_slice())
            .map(|(p, q)| (p - q).abs())
            .fold(0.0f32, f32::max);
        assert!(diff < 1e-4, "weights differ by {diff}");
    }

    #[test]
    fn balanced_weights_follow_sklearn() {
        let w = balanced_weights(&[0, 0, 0, 1], 2).unwrap();
        assert_eq!(w, vec![4.0 / 6.0, 4.0 / 6.0, 4.0 / 6.0, 2.0]);
        assert!(balanced_weights(&[0, 3], 2).is_err());
    }

    #[test]
    fn cv_prefers_stronger_regularisation_on_noisy_labels() {
        // High dimension for the sample size, a few low-noise dimensions: clean labels
        // want weak regularisation, 30% label noise wants strong regularisation.
        let grid = vec![1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1e3, 1e4];
        let opts = CvOptions {
            folds: 5,
            c_grid: Some(grid),
            seed: 0,
            tol: 1e-4,
            max_iter: 1000,
        };
        let scale = |j: usize| if j < 10 { 0.1 } else { 1.0 };
        let (xc, yc) = clusters_scaled(200, 60, 4, 0.3, 0.0, 100, &scale);
        let (xn, yn) = clusters_scaled(200, 60, 4, 0.3, 0.3, 100, &scale);
        let clean = cross_validate(&Dataset::new(&xc, &yc, 4).unwrap(), None, &opts, None).unwrap();
        let noisy = cross_validate(&Dataset::new(&xn, &yn, 4).unwrap(), None, &opts, None).unwrap();
        assert!(
            noisy.best_c < clean.best_c,
            "noisy C {} vs clean C {}: {:?} / {:?}",
            noisy.best_c,
            clean.best_c,
            noisy.points,
            clean.points
        );
    }

    #[test]
    fn cv_is_deterministic_for_a_seed_and_any_thread_count() {
        let (x, y) = clusters(2600, 9, 5, 0.7, 0.1, 8);
        let data = Dataset::new(&x, &y, 5).unwrap();
        let opts = CvOptions {
            folds: 3,
            c_grid: Some(vec![0.1, 10.0]),
            seed: 11,
            ..CvOptions::default()
        };
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| fit_cv(&data, None, &opts, None).unwrap())
        };
        let (cv1, fit1) = run(1);
        let (cv2, fit2) = run(2);
        let (cv3, fit3) = run(3);
        assert_eq!(fit1.head, fit2.head);
        assert_eq!(fit1.head, fit3.head);
        assert_eq!(cv1.points, cv2.points);
        assert_eq!(cv1.oof_logits, cv3.oof_logits);
        assert_eq!(fit1.report, fit2.report);
        // Same seed, same folds; another seed, other folds.
        assert_eq!(
            stratified_folds(&y, 5, 3, 11).unwrap(),
            stratified_folds(&y, 5, 3, 11).unwrap()
        );
        assert_ne!(
            stratified_folds(&y, 5, 3, 11).unwrap(),
            stratified_folds(&y, 5, 3, 12).unwrap()
        );
    }

    #[test]
    fn stratified_folds_are_balanced() {
        let labels: Vec<usize> = (0..103)
            .map(|i| {
                if i < 70 {
                    0
                } else if i < 95 {
                    1
                } else {
                    2
                }
            })
            .collect();
        let folds = stratified_folds(&labels, 3, 5, 3).unwrap();
        for f in 0..5 {
            let size = folds.iter().filter(|&&g| g == f).count();
            assert!((20..=21).contains(&size), "fold {f} has {size}");
            for (c, total) in [(0, 70), (1, 25), (2, 8)] {
                let in_fold = (0..103)
                    .filter(|&i| folds[i] == f && labels[i] == c)
                    .count();
                let lo = total / 5;
                assert!(
                    in_fold == lo || in_fold == lo + 1,
                    "class {c} fold {f}: {in_fold}"
                );
            }
        }
    }

    #[test]
    fn clear_errors() {
        let (x, mut y) = clusters(40, 4, 3, 1.0, 0.0, 9);
        y[0] = 2;
        let y: Vec<usize> = y.iter().map(|&l| if l == 2 { 1 } else { l }).collect();
        let mut y = y;
        y[5] = 2; // class 2 has exactly one example
        let data = Dataset::new(&x, &y, 3).unwrap();
        let names: Vec<String> = ["cat", "dog", "axolotl"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let err = cross_validate(&data, None, &CvOptions::default(), Some(&names)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "class 'axolotl' has 1 example; at least 2 are needed for 5-fold cross-validation"
        );
        assert!(matches!(
            Dataset::new(&x, &y[..10], 3),
            Err(HeadError::LabelCount {
                labels: 10,
                rows: 40
            })
        ));
        assert!(Dataset::new(&x, &y, 1).is_err());
        let bad = vec![7usize; 40];
        assert_eq!(
            Dataset::new(&x, &bad, 3).unwrap_err().to_string(),
            "label 7 at row 0 is out of range: there are 3 classes"
        );
        let mut xnan = x.clone();
        xnan.data[4 * 3 + 1] = f32::NAN;
        assert_eq!(
            Dataset::new(&xnan, &y, 3).unwrap_err().to_string(),
            "the embedding matrix contains a non-finite value (NaN or infinity) at row 3"
        );
        let opts = FitOptions {
            c: -1.0,
            ..FitOptions::default()
        };
        assert_eq!(fit(&data, None, &opts).unwrap_err(), HeadError::BadC(-1.0));
        let head = LinearHead::zeros(3, 5);
        assert_eq!(
            head.predict_logits(&x).unwrap_err().to_string(),
            "the head expects 5-dimensional embeddings, got 4"
        );
        assert!(matches!(
            fit(&data, Some(&head), &FitOptions::default()),
            Err(HeadError::ShapeMismatch { .. })
        ));
        assert!(Matrix::new(2, 3, vec![0.0; 5]).is_err());
        assert_eq!(
            x.select_rows(&[0, 40]).unwrap_err().to_string(),
            "row 40 is out of range for a matrix of 40 rows"
        );
        let w = vec![-1.0; 40];
        assert!(matches!(
            data.with_weights(&w),
            Err(HeadError::BadWeight { row: 0, .. })
        ));
        let y0: Vec<usize> = y.iter().map(|&l| l.min(1)).collect();
        assert_eq!(
            fit(
                &Dataset::new(&x, &y0, 3).unwrap(),
                None,
                &FitOptions::default()
            )
            .unwrap_err()
            .to_string(),
            "class '2' has no examples; every class needs at least one (or fit with a prior)"
        );
    }

    /// A "zero-shot" prior: class directions from the cluster centres, scaled like CLIP logits.
    fn prior_for(x: &Matrix, y: &[usize], k: usize, scale: f32) -> LinearHead {
        let d = x.cols();
        let mut w = vec![0f32; k * d];
        for (i, &l) in y.iter().enumerate() {
            for j in 0..d {
                w[l * d + j] += x.row(i)[j];
            }
        }
        for c in 0..k {
            let row = &mut w[c * d..(c + 1) * d];
            let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
            row.iter_mut().for_each(|v| *v *= scale / norm);
        }
        LinearHead::new(Matrix::new(k, d, w).unwrap(), vec![0.0; k]).unwrap()
    }

    #[test]
    fn zero_examples_reproduce_the_prior() {
        let (x, y) = clusters(200, 8, 4, 1.0, 0.0, 10);
        let prior = prior_for(&x, &y, 4, 3.0);
        let empty = Matrix::zeros(0, 8);
        let data = Dataset::new(&empty, &[], 4).unwrap();
        let fit = fit(&data, Some(&prior), &FitOptions::default()).unwrap();
        assert_eq!(fit.head, prior);
        assert_eq!(fit.report.stop, StopReason::NoData);
        assert_eq!(fit.head.predict(&x).unwrap(), prior.predict(&x).unwrap());
        // Without a prior there is nothing to fit.
        assert_eq!(
            super::fit(&data, None, &FitOptions::default()).unwrap_err(),
            HeadError::NoExamples
        );
    }

    #[test]
    fn prior_dominates_with_few_examples_and_yields_with_many() {
        let (k, d) = (4, 16);
        let (xall, yall) = clusters(4000, d, k, 0.5, 0.0, 12);
        // A deliberately imperfect prior: the true directions, rotated partly toward noise.
        let truth = prior_for(&xall, &yall, k, 1.0);
        let (xn, _) = clusters(k, d, k, 1.0, 0.0, 99);
        let mut w = truth.weights().as_slice().to_vec();
        w.iter_mut()
            .zip(xn.as_slice())
            .for_each(|(a, b)| *a = 2.0 * *a + 0.3 * b);
        let prior = LinearHead::new(Matrix::new(k, d, w).unwrap(), vec![0.0; k]).unwrap();
        let c = 0.05;
        let opts = FitOptions {
            c,
            tol: 1e-6,
            max_iter: 1000,
        };
        let dist = |a: &LinearHead, b: &LinearHead| -> f64 {
            a.weights()
                .as_slice()
                .iter()
                .zip(b.weights().as_slice())
                .map(|(p, q)| ((p - q) as f64).powi(2))
                .sum::<f64>()
                .sqrt()
        };
        let mut rel = Vec::new();
        for n in [8usize, 4000] {
            let x = xall.select_rows(&(0..n).collect::<Vec<_>>()).unwrap();
            let y = &yall[..n];
            let data = Dataset::new(&x, y, k).unwrap();
            let with_prior = fit(&data, Some(&prior), &opts).unwrap();
            let plain = fit(&data, None, &opts).unwrap();
            assert!(with_prior.report.converged && plain.report.converged);
            let to_prior = dist(&with_prior.head, &prior);
            let to_plain = dist(&with_prior.head, &plain.head);
            rel.push((to_prior, to_plain));
        }
        let (few_prior, few_plain) = rel[0];
        let (many_prior, many_plain) = rel[1];
        // Few examples: much closer to the prior than to the plain probe.
        assert!(few_prior < 0.2 * few_plain, "{rel:?}");
        // Many examples: it moved away from the prior, toward the plain probe.
        assert!(many_prior > 5.0 * few_prior, "{rel:?}");
        assert!(many_plain < many_prior, "{rel:?}");
    }

    #[test]
    fn choose_alpha_picks_the_better_mix() {
        // Zero-shot right on rows 0..6, probe right on rows 6..8: alpha near 1 wins.
        let labels = vec![0usize, 1, 0, 1, 0, 1, 0, 1];
        let zs: Vec<f32> = labels
            .iter()
            .enumerate()
            .flat_map(|(i, &l)| {
                let right = i < 6;
                let hot = if right { l } else { 1 - l };
                if hot == 0 {
                    [1.0, 0.0]
                } else {
                    [0.0, 1.0]
                }
            })
            .collect();
        let pr: Vec<f32> = labels
            .iter()
            .enumerate()
            .flat_map(|(i, &l)| {
                let right = i >= 6;
                let hot = if right { l } else { 1 - l };
                if hot == 0 {
                    [1.0, 0.0]
                } else {
                    [0.0, 1.0]
                }
            })
            .collect();
        let zs = Matrix::new(8, 2, zs).unwrap();
        let pr = Matrix::new(8, 2, pr).unwrap();
        let choice = choose_alpha(&zs, &pr, &labels, &default_alpha_grid()).unwrap();
        assert_eq!(choice.accuracy, 0.75);
        assert_eq!(choice.alpha, 1.0); // ties among alpha > 0.5 go to the largest
        assert_eq!(choice.scores.len(), 11);
        assert_eq!(choice.scores[0], (0.0, 0.25));
        assert!(choose_alpha(&zs, &pr, &labels, &[1.5]).is_err());
        let mixed = interpolate_logits(&zs, &pr, 0.25).unwrap();
        assert_eq!(
            mixed.row(0),
            &[0.25f32 * 1.0 + 0.75 * 0.0, 0.25 * 0.0 + 0.75 * 1.0][..]
        );
    }

    #[test]
    fn default_grid_and_refit() {
        assert_eq!(default_c_grid().len(), 7);
        assert_eq!(default_c_grid()[0], 1e-6);
        assert_eq!(default_c_grid()[6], 1e6);
        let (x, y) = clusters(150, 6, 3, 1.0, 0.05, 13);
        let data = Dataset::new(&x, &y, 3).unwrap();
        let (cv, fit) = fit_cv(&data, None, &CvOptions::default(), None).unwrap();
        assert_eq!(cv.points.len(), 7 + fine_grid(cv.best_c).len());
        assert!(cv.points.windows(2).all(|w| w[0].c < w[1].c));
        assert_eq!(fit.report.c, cv.best_c);
        assert!(cv.best_accuracy > 0.6, "{:?}", cv.points);
        let oof_acc = accuracy(&cv.oof_logits, &y).unwrap();
        let mean_fold = cv
            .points
            .iter()
            .find(|p| p.c == cv.best_c)
            .unwrap()
            .mean_accuracy;
        assert!((oof_acc - mean_fold).abs() < 0.02);
        let p = fit.head.predict_proba(&x).unwrap();
        assert!(p
            .as_slice()
            .chunks(3)
            .all(|r| (r.iter().sum::<f32>() - 1.0).abs() < 1e-5));
    }

    #[test]
    fn head_serde_round_trip_validates() {
        let head = LinearHead::zeros(2, 3);
        let json = serde_json::to_string(&head).unwrap();
        assert_eq!(serde_json::from_str::<LinearHead>(&json).unwrap(), head);
        let bad = r#"{"weights":{"rows":2,"cols":3,"data":[0,0,0]},"bias":[0,0]}"#;
        assert!(serde_json::from_str::<LinearHead>(bad).is_err());
    }

    #[derive(serde::Deserialize)]
    struct Fixture {
        sklearn_version: String,
        n_classes: usize,
        dim: usize,
        x_train: Vec<Vec<f64>>,
        y_train: Vec<usize>,
        x_test: Vec<Vec<f64>>,
        fits: Vec<FixtureFit>,
    }

    #[derive(serde::Deserialize)]
    struct FixtureFit {
        c: f64,
        coef: Vec<Vec<f64>>,
        intercept: Vec<f64>,
        test_pred: Vec<usize>,
    }

    fn to_matrix(rows: &[Vec<f64>]) -> Matrix {
        let f: Vec<Vec<f32>> = rows
            .iter()
            .map(|r| r.iter().map(|&v| v as f32).collect())
            .collect();
        Matrix::from_rows(&f).unwrap()
    }

    /// Same C, same data: predictions agree with scikit-learn's on ≥ 99% of test points and
    /// the coefficients match closely (fixture from `scripts/sklearn_reference.py`).
    #[test]
    fn agrees_with_sklearn() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/sklearn_logreg.json"
        );
        let text =
            std::fs::read_to_string(path).expect("fixture: run scripts/sklearn_reference.py");
        let fx: Fixture = serde_json::from_str(&text).unwrap();
        let xtr = to_matrix(&fx.x_train);
        let xte = to_matrix(&fx.x_test);
        assert_eq!(xtr.cols(), fx.dim);
        let data = Dataset::new(&xtr, &fx.y_train, fx.n_classes).unwrap();
        for f in &fx.fits {
            let opts = FitOptions {
                c: f.c,
                tol: 1e-8,
                max_iter: 1000,
            };
            let ours = fit(&data, None, &opts).unwrap();
            assert!(ours.report.converged, "C={}: {:?}", f.c, ours.report);
            let pred = ours.head.predict(&xte).unwrap();
            let agree = pred
                .iter()
                .zip(&f.test_pred)
                .filter(|(a, b)| a == b)
                .count() as f64
                / pred.len() as f64;
            let mut max_w = 0.0f64;
            let mut scale = 0.0f64;
            for c in 0..fx.n_classes {
                for j in 0..fx.dim {
                    let a = ours.head.weights().row(c)[j] as f64;
                    max_w = max_w.max((a - f.coef[c][j]).abs());
                    scale = scale.max(f.coef[c][j].abs());
                }
            }
            let max_b = (0..fx.n_classes)
                .map(|c| (ours.head.bias()[c] as f64 - f.intercept[c]).abs())
                .fold(0.0, f64::max);
            eprintln!(
                "sklearn {} C={}: agreement {:.4}, max |Δcoef| {:.2e} (max |coef| {:.3}), max |Δintercept| {:.2e}, iterations {}",
                fx.sklearn_version, f.c, agree, max_w, scale, max_b, ours.report.iterations
            );
            assert!(agree >= 0.99, "C={}: agreement {agree}", f.c);
            assert!(
                max_w < COEF_TOL * scale.max(1.0),
                "C={}: max coefficient difference {max_w}",
                f.c
            );
            assert!(
                max_b < COEF_TOL * scale.max(1.0),
                "C={}: max intercept difference {max_b}",
                f.c
            );
        }
    }

    /// Tolerance on coefficient differences relative to the largest coefficient; set from
    /// the measured differences (see the test's output) with margin.
    const COEF_TOL: f64 = 1e-4;
}
