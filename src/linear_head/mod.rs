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
//!
//! This module holds the head, the fit entry points and the helpers on logits; its parts are
//! `matrix` (the data: [`Matrix`], [`Dataset`]), `objective` (loss and gradient kernels),
//! `lbfgs` (the solver) and `cv` (cross-validation). It uses nothing from the rest of cliplabel
//! but the seeded generator of `util::rng`, so it could become a crate of its own.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::ops::{Add, Mul, Sub};

use crate::util::rng::SplitMix64;

mod cv;
mod lbfgs;
mod matrix;
mod objective;

pub use cv::*;
use lbfgs::*;
pub use matrix::*;
pub use objective::*;

/// Mixed into `--seed` for fold assignment, so folds and k-shot draws of one seed differ.
const FOLD_SEED_MIX: u64 = 0x6A09_E667_F3BC_C909;

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
        let mut rng = SplitMix64::new(seed ^ FOLD_SEED_MIX);
        let mut gauss = move || {
            let u1 = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
            let u2 = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
            (-2.0 * (1.0 - u1).ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
        };
        let centres: Vec<f64> = (0..k * d).map(|_| sep * gauss()).collect();
        let mut rng2 = SplitMix64::new(seed.wrapping_add(17) ^ FOLD_SEED_MIX);
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
            crate::util::testing::skipped("portable_kernels_match_simd_kernels: this CPU lacks AVX2/FMA: the comparison with the SIMD kernels (the portable kernels are checked alone)");
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
