//! Stratified K-fold cross-validation over a log-spaced `C` grid (the CLIP paper's
//! linear-probe protocol): coarse grid, then a finer one around the best value, each fold's fits
//! warm-started along increasing `C`, and the out-of-fold logits that choose `alpha` for
//! interpolation.

use super::*;

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
pub(crate) fn fine_grid(best: f64) -> Vec<f64> {
    [-1.0f64, -0.5, 0.5, 1.0]
        .iter()
        .map(|e| best * 10f64.powf(*e))
        .filter(|c| *c >= 1e-6 * (1.0 - 1e-9) && *c <= 1e6 * (1.0 + 1e-9))
        .collect()
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
    let mut rng = SplitMix64::new(seed ^ FOLD_SEED_MIX);
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

pub(crate) fn class_label(names: Option<&[String]>, c: usize) -> String {
    names
        .and_then(|n| n.get(c).cloned())
        .unwrap_or_else(|| c.to_string())
}

/// Returns the CV result and the mean of the fold solutions at the chosen C.
pub(crate) fn cross_validate_inner(
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
