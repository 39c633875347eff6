//! Calibrated abstention and prediction sets: what `cliplabel calibrate` computes from a small
//! labelled set, the calibration file it writes, and how `label`/`predict` apply that file.
//!
//! **Abstention threshold with a finite-sample guarantee.** A row is accepted when its
//! confidence is at least the threshold `t`, otherwise it is labelled `unknown`. The confidence
//! is the top-1 probability by default ([`Confidence::Top1`]): it is the `score` every output row
//! already carries, the review page sorts by it, and `--min-score` users already read it; the
//! top-1 minus top-2 margin ([`Confidence::Margin`]) is available for scorers whose probabilities
//! are spread over near-synonym classes. The threshold is chosen by *Learn then Test* (Angelopoulos,
//! Bates, Candès, Jordan, Lei, arXiv:2110.01052) with fixed-sequence testing: candidate thresholds
//! on a fixed grid (`1.000, 0.999, ..., 0.000`) are tested from high to low; at each, the
//! calibration images it accepts give `k` errors out of `n`, and the one-sided Clopper-Pearson
//! upper bound on the error rate at level `delta` must stay at or below `1 - target`. The first
//! failure stops the sequence; the lowest threshold that passed is chosen. Then, over the draw
//! of the calibration set, `P(precision of accepted images >= target) >= 1 - delta` for images
//! from the same distribution (Bates et al., "Distribution-free, risk-controlling prediction
//! sets", JACM 2021, for the bound-per-threshold view). The sequence starts at the highest
//! threshold that accepts at least [`start_count`] calibration images: the larger of
//! [`min_images`] (fewer could never pass) and a tenth of the calibration set, because a start
//! on a handful of images stops the sequence at its first unlucky error. The start depends only
//! on the confidences, not on which predictions are right; the guarantee under this rule is
//! checked by simulation in this module's tests.
//!
//! **Per-class thresholds** (optional): each predicted class with at least
//! [`min_images`]`(target, delta / (K + 1))` calibration images gets its own threshold, tested at
//! `delta / (K + 1)` (Bonferroni over the `K` classes and the pool of the rest, so that all hold
//! at once with probability `1 - delta` and hence so does the overall precision); the other
//! classes share one threshold calibrated on their pooled images, or always abstain when that
//! pool cannot support the target.
//!
//! **Prediction sets**: split conformal (Angelopoulos & Bates, "A Gentle Introduction to
//! Conformal Prediction", arXiv:2107.07511): score `1 - p(true class)` on the `n` calibration
//! images, `q` = the `ceil((n + 1)(1 - alpha))`-th smallest; the set of an image is every class
//! with `1 - p <= q`. It contains the true class with probability at least `1 - alpha`. The top-1
//! class is always included (never an empty set; this can only raise coverage).
//!
//! The Clopper-Pearson bound is the `1 - delta` quantile of `Beta(k + 1, n - k)`, found by
//! bisection on statrs' regularised incomplete beta function (statrs has no Beta quantile
//! that is exact at these tails).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::classify::run::{RunInfo, RunMethod};
use crate::classify::scores::top_k;
use crate::error::Result;
use crate::util::atomic::write_atomic;

/// The version of the calibration file layout written by this module.
pub const FORMAT_VERSION: u32 = 1;

/// Candidate thresholds are `j / GRID` for `j = GRID, GRID - 1, ..., 0`.
pub const GRID: usize = 1000;

/// What an image's confidence is, for the abstention threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Confidence {
    /// The top-1 probability (the row's `score`).
    #[default]
    Top1,
    /// The top-1 minus the top-2 probability.
    Margin,
}

impl Confidence {
    /// The confidence of one row of class probabilities.
    pub fn of(self, probs: &[f32]) -> f32 {
        let top = top_k(probs, 2);
        let p1 = top.first().map_or(0.0, |t| t.1);
        match self {
            Confidence::Top1 => p1,
            Confidence::Margin => p1 - top.get(1).map_or(0.0, |t| t.1),
        }
    }
}

/// Why calibration refused, or why a calibration file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CalibrationError {
    /// A parameter is out of range.
    #[error("{name} must be {rule}, got {value}")]
    Parameter {
        name: &'static str,
        rule: &'static str,
        value: f64,
    },
    /// Probabilities and labels do not line up.
    #[error("image {row}: {message}")]
    Input { row: usize, message: String },
    /// Too few calibration images to show the target even if every prediction were right.
    #[error(
        "too few images{scope}: showing precision >= {target} with probability >= 1 - {delta} needs at least {needed} accepted images even if all are right, but there are {n}; label more images or lower --target-precision"
    )]
    TooFewImages {
        scope: String,
        n: usize,
        needed: usize,
        target: f64,
        delta: f64,
    },
    /// No threshold reaches the target.
    #[error(
        "no threshold reaches precision {target} with probability >= 1 - {delta} on these {n} images: at the strictest testable threshold {threshold:.3} ({accepted} images accepted, {errors} wrong) the error rate can only be bounded by {bound:.4} > {allowed:.4}; lower --target-precision or use a better scorer"
    )]
    Unreachable {
        target: f64,
        delta: f64,
        n: usize,
        threshold: f64,
        accepted: usize,
        errors: usize,
        bound: f64,
        allowed: f64,
    },
    /// Too few images for split-conformal sets at this level.
    #[error("too few images for prediction sets at {level}: at least {needed} are needed, there are {n}")]
    TooFewForSets { level: f64, n: usize, needed: usize },
    /// The calibration file was made for another model, class list, prompts or head.
    #[error("{path}: made for {field} {made_for}, but this run uses {this_run}; calibrate again for this run")]
    Mismatch {
        path: PathBuf,
        field: &'static str,
        made_for: String,
        this_run: String,
    },
    /// The calibration file is not one this version can read.
    #[error("{path}: not a cliplabel calibration file: {message}")]
    BadFile { path: PathBuf, message: String },
}

fn param(name: &'static str, rule: &'static str, value: f64) -> CalibrationError {
    CalibrationError::Parameter { name, rule, value }
}

/// The one-sided Clopper-Pearson upper confidence bound at level `1 - delta` on a binomial
/// proportion after `k` successes in `n` trials: the `1 - delta` quantile of `Beta(k+1, n-k)`
/// (1 when `k >= n`).
pub fn clopper_pearson_upper(k: usize, n: usize, delta: f64) -> f64 {
    if k >= n {
        return 1.0;
    }
    let (a, b) = ((k + 1) as f64, (n - k) as f64);
    let target = 1.0 - delta;
    // The regularised incomplete beta I_x(a, b) increases from 0 to 1 in x.
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if statrs::function::beta::beta_reg(a, b, mid) < target {
            lo = mid;
        } else {
            hi = mid;
        }
        if hi - lo < 1e-15 {
            break;
        }
    }
    0.5 * (lo + hi)
}

/// The fewest accepted images with which precision `target` can be shown at level `delta`
/// (all of them right): the smallest `n` with `1 - delta^(1/n) <= 1 - target`.
pub fn min_images(target: f64, delta: f64) -> usize {
    let mut n = ((delta.ln() / target.ln()).ceil() as usize).max(1);
    // Correct floating-point edge cases with the exact bound.
    while n > 1 && clopper_pearson_upper(0, n - 1, delta) <= 1.0 - target {
        n -= 1;
    }
    while clopper_pearson_upper(0, n, delta) > 1.0 - target {
        n += 1;
    }
    n
}

/// Share of the calibration images the fixed sequence starts with (see the module docs).
pub const START_FRACTION: f64 = 0.1;

/// How many of `n` calibration images the most confident threshold tested accepts at least.
pub fn start_count(n: usize, target: f64, delta: f64) -> usize {
    min_images(target, delta).max((n as f64 * START_FRACTION).ceil() as usize)
}

/// One candidate threshold as tested.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    /// The threshold (accept when confidence >= it).
    pub threshold: f64,
    /// Calibration images accepted.
    pub accepted: usize,
    /// Of those, wrongly predicted.
    pub errors: usize,
    /// Clopper-Pearson upper bound on the error rate (1 when nothing is accepted).
    pub error_bound: f64,
    /// Whether the fixed sequence reached this threshold and it passed.
    pub passed: bool,
}

impl CurvePoint {
    /// Precision of the accepted calibration images (`None` when none).
    pub fn precision(&self) -> Option<f64> {
        (self.accepted > 0).then(|| 1.0 - self.errors as f64 / self.accepted as f64)
    }
}

/// A threshold chosen by fixed-sequence testing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThresholdFit {
    /// The chosen threshold.
    pub threshold: f64,
    /// Calibration images it accepts.
    pub accepted: usize,
    /// Calibration images.
    pub n: usize,
    /// Accepted share of the calibration images.
    pub coverage: f64,
    /// Precision of the accepted calibration images.
    pub precision: f64,
    /// Upper bound on the error rate of accepted images at the chosen threshold.
    pub error_bound: f64,
}

fn check_target(target: f64, delta: f64) -> std::result::Result<(), CalibrationError> {
    if !(target > 0.0 && target < 1.0) {
        return Err(param(
            "the target precision",
            "strictly between 0 and 1",
            target,
        ));
    }
    if !(delta > 0.0 && delta < 1.0) {
        return Err(param("delta", "strictly between 0 and 1", delta));
    }
    Ok(())
}

/// Tests every grid threshold on `(confidence, correct)` pairs, high to low, and returns the
/// whole curve (for the report) with the chosen threshold, or the refusal.
pub fn fit_threshold(
    items: &[(f32, bool)],
    target: f64,
    delta: f64,
) -> std::result::Result<(ThresholdFit, Vec<CurvePoint>), CalibrationError> {
    check_target(target, delta)?;
    let needed = min_images(target, delta);
    let n = items.len();
    if n < needed {
        return Err(CalibrationError::TooFewImages {
            scope: String::new(),
            n,
            needed,
            target,
            delta,
        });
    }
    let start = start_count(n, target, delta);
    // Sort by confidence, high first, to count accepted images and errors per threshold.
    let mut sorted: Vec<(f32, bool)> = items.to_vec();
    sorted.sort_by(|a, b| b.0.total_cmp(&a.0));
    let allowed = 1.0 - target;
    let mut curve = Vec::with_capacity(GRID + 1);
    let (mut idx, mut errors) = (0usize, 0usize);
    let mut testing = true;
    let mut started = false;
    let mut chosen: Option<ThresholdFit> = None;
    let mut first_failure: Option<CurvePoint> = None;
    for j in (0..=GRID).rev() {
        let t = j as f64 / GRID as f64;
        while idx < n && sorted[idx].0 as f64 >= t {
            errors += usize::from(!sorted[idx].1);
            idx += 1;
        }
        let bound = if idx == 0 {
            1.0
        } else {
            clopper_pearson_upper(errors, idx, delta)
        };
        let mut point = CurvePoint {
            threshold: t,
            accepted: idx,
            errors,
            error_bound: bound,
            passed: false,
        };
        if testing && idx >= start {
            started = true;
            if bound <= allowed {
                point.passed = true;
                chosen = Some(ThresholdFit {
                    threshold: t,
                    accepted: idx,
                    n,
                    coverage: idx as f64 / n as f64,
                    precision: 1.0 - errors as f64 / idx as f64,
                    error_bound: bound,
                });
            } else {
                testing = false;
                first_failure = Some(point.clone());
            }
        }
        curve.push(point);
    }
    debug_assert!(started, "n >= needed, so threshold 0 accepts enough");
    match chosen {
        Some(c) => Ok((c, curve)),
        None => {
            let f = first_failure.unwrap_or_else(|| curve[curve.len() - 1].clone());
            Err(CalibrationError::Unreachable {
                target,
                delta,
                n,
                threshold: f.threshold,
                accepted: f.accepted,
                errors: f.errors,
                bound: f.error_bound,
                allowed,
            })
        }
    }
}

/// Split-conformal prediction sets, as stored in a calibration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SetCalibration {
    /// The coverage level `1 - alpha` the sets were calibrated for.
    pub level: f64,
    /// The conformal quantile `q` of `1 - p(true class)`: a set holds every class with
    /// `1 - p <= q` (and always the top-1 class).
    pub quantile: f64,
    /// Calibration images.
    pub n: usize,
    /// Share of calibration images whose set holds the true class.
    pub calibration_coverage: f64,
    /// Mean set size on the calibration images.
    pub mean_size: f64,
}

impl SetCalibration {
    /// The class indices of the prediction set for one row of probabilities, most probable first.
    pub fn set(&self, probs: &[f32]) -> Vec<usize> {
        let order = top_k(probs, probs.len());
        order
            .iter()
            .enumerate()
            .filter(|&(rank, &(_, p))| rank == 0 || 1.0 - p as f64 <= self.quantile)
            .map(|(_, &(i, _))| i)
            .collect()
    }
}

/// The fewest calibration images for split-conformal sets at `level = 1 - alpha`:
/// `ceil((n + 1) * level) <= n`.
pub fn min_images_for_sets(level: f64) -> usize {
    let mut n = 1;
    while ((n + 1) as f64 * level).ceil() as usize > n {
        n += 1;
    }
    n
}

/// Calibrates split-conformal prediction sets at `level` (e.g. 0.9).
pub fn fit_sets(
    probs: &[Vec<f32>],
    labels: &[usize],
    level: f64,
) -> std::result::Result<SetCalibration, CalibrationError> {
    if !(level > 0.0 && level < 1.0) {
        return Err(param("the set level", "strictly between 0 and 1", level));
    }
    let n = probs.len();
    let needed = min_images_for_sets(level);
    if n < needed {
        return Err(CalibrationError::TooFewForSets { level, n, needed });
    }
    let mut scores: Vec<f64> = probs
        .iter()
        .zip(labels)
        .map(|(p, &y)| 1.0 - p[y] as f64)
        .collect();
    scores.sort_by(f64::total_cmp);
    let rank = ((n + 1) as f64 * level).ceil() as usize;
    let mut cal = SetCalibration {
        level,
        quantile: scores[rank - 1],
        n,
        calibration_coverage: 0.0,
        mean_size: 0.0,
    };
    let (mut covered, mut size) = (0usize, 0usize);
    for (p, &y) in probs.iter().zip(labels) {
        let s = cal.set(p);
        covered += usize::from(s.contains(&y));
        size += s.len();
    }
    cal.calibration_coverage = covered as f64 / n as f64;
    cal.mean_size = size as f64 / n as f64;
    Ok(cal)
}

/// One class's own threshold (per-class calibration).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassThreshold {
    /// The class name.
    pub class: String,
    /// Accept this predicted class at confidence >= threshold; `None`: always abstain.
    pub threshold: Option<f64>,
    /// Calibration images predicted as this class.
    pub n: usize,
    /// Whether the threshold was calibrated on this class alone (`false`: on the pool of classes
    /// with too few images).
    pub own: bool,
}

/// What a calibration file was made for: a run must match every field to use it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MadeFor {
    /// The model as given (informative; not compared).
    pub model: String,
    /// Fingerprint of the model files.
    pub model_fingerprint: String,
    /// The scorer: `zero-shot` or `head`.
    pub method: RunMethod,
    /// The prompts key (zero-shot) or head key: the run's `scorer_key`.
    pub scorer_key: String,
    /// Class labels in score order.
    pub classes: Vec<String>,
}

impl MadeFor {
    /// The identity of a labelling run.
    pub fn from_run_info(info: &RunInfo) -> Self {
        MadeFor {
            model: info.model.clone(),
            model_fingerprint: info.model_fingerprint.clone(),
            method: info.method,
            scorer_key: info.scorer_key.clone(),
            classes: info.classes.clone(),
        }
    }
}

/// Options of [`calibrate`].
#[derive(Debug, Clone, PartialEq)]
pub struct CalibrateOptions {
    /// The precision the accepted images must reach (`--target-precision`).
    pub target_precision: f64,
    /// The allowed probability that they do not (`--delta`).
    pub delta: f64,
    /// What the threshold applies to.
    pub confidence: Confidence,
    /// Also calibrate per-class thresholds (`--per-class`).
    pub per_class: bool,
    /// Calibrate prediction sets at this level (`--sets 0.9`).
    pub sets: Option<f64>,
}

impl Default for CalibrateOptions {
    fn default() -> Self {
        CalibrateOptions {
            target_precision: 0.95,
            delta: 0.1,
            confidence: Confidence::Top1,
            per_class: false,
            sets: None,
        }
    }
}

/// A calibration, as written to `CAL.json` by `cliplabel calibrate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// [`FORMAT_VERSION`].
    pub format_version: u32,
    /// The run this calibration applies to.
    pub made_for: MadeFor,
    /// The calibration method, for readers: `learn-then-test/clopper-pearson/fixed-sequence`.
    pub method: String,
    /// What the threshold applies to.
    pub confidence: Confidence,
    /// Target precision of accepted images.
    pub target_precision: f64,
    /// Allowed failure probability of the guarantee.
    pub delta: f64,
    /// Calibration images.
    pub n: usize,
    /// The global threshold and what it achieved on the calibration images.
    pub threshold: ThresholdFit,
    /// Per-class thresholds, in class order, when calibrated with `per_class`.
    pub per_class: Option<Vec<ClassThreshold>>,
    /// Prediction sets, when calibrated.
    pub sets: Option<SetCalibration>,
}

/// What [`calibrate`] measured besides the file: the curves behind the report.
#[derive(Debug, Clone, PartialEq)]
pub struct CalibrationCurves {
    /// The global threshold's curve, high thresholds first.
    pub curve: Vec<CurvePoint>,
    /// Top-1 probability and correctness of each calibration image (the reliability diagram).
    pub top1: Vec<(f32, bool)>,
}

/// The method name stored in calibration files.
pub const METHOD: &str = "learn-then-test/clopper-pearson/fixed-sequence";

fn check_rows(
    probs: &[Vec<f32>],
    labels: &[usize],
    k: usize,
) -> std::result::Result<(), CalibrationError> {
    if probs.len() != labels.len() {
        return Err(CalibrationError::Input {
            row: probs.len().min(labels.len()),
            message: format!(
                "{} probability rows but {} labels",
                probs.len(),
                labels.len()
            ),
        });
    }
    for (i, (p, &y)) in probs.iter().zip(labels).enumerate() {
        if p.len() != k {
            return Err(CalibrationError::Input {
                row: i,
                message: format!("{} probabilities, expected {k} (one per class)", p.len()),
            });
        }
        if y >= k {
            return Err(CalibrationError::Input {
                row: i,
                message: format!("label {y} is not a class index (there are {k} classes)"),
            });
        }
        if p.iter().any(|v| !v.is_finite()) {
            return Err(CalibrationError::Input {
                row: i,
                message: "a probability is not finite".into(),
            });
        }
    }
    Ok(())
}

/// Calibrates the abstention threshold (and optionally per-class thresholds and prediction
/// sets) from class probabilities of labelled images, scored exactly as the run will score.
///
/// `probs[i]` are image `i`'s class probabilities in `made_for.classes` order; `labels[i]` its
/// true class index.
pub fn calibrate(
    probs: &[Vec<f32>],
    labels: &[usize],
    made_for: MadeFor,
    opts: &CalibrateOptions,
) -> std::result::Result<(Calibration, CalibrationCurves), CalibrationError> {
    let k = made_for.classes.len();
    check_rows(probs, labels, k)?;
    let (target, delta) = (opts.target_precision, opts.delta);
    check_target(target, delta)?;
    let predicted: Vec<usize> = probs
        .iter()
        .map(|p| top_k(p, 1).first().map_or(0, |t| t.0))
        .collect();
    let items: Vec<(f32, bool)> = probs
        .iter()
        .zip(labels)
        .zip(&predicted)
        .map(|((p, &y), &pred)| (opts.confidence.of(p), pred == y))
        .collect();
    let (threshold, curve) = fit_threshold(&items, target, delta)?;

    let per_class = opts
        .per_class
        .then(|| per_class_thresholds(&items, &predicted, &made_for.classes, target, delta));
    let sets = opts
        .sets
        .map(|level| fit_sets(probs, labels, level))
        .transpose()?;
    let top1 = probs
        .iter()
        .zip(labels)
        .zip(&predicted)
        .map(|((p, &y), &pred)| (p[pred], pred == y))
        .collect();
    Ok((
        Calibration {
            format_version: FORMAT_VERSION,
            made_for,
            method: METHOD.into(),
            confidence: opts.confidence,
            target_precision: target,
            delta,
            n: probs.len(),
            threshold,
            per_class,
            sets,
        },
        CalibrationCurves { curve, top1 },
    ))
}

fn per_class_thresholds(
    items: &[(f32, bool)],
    predicted: &[usize],
    classes: &[String],
    target: f64,
    delta: f64,
) -> Vec<ClassThreshold> {
    let k = classes.len();
    let level = delta / (k + 1) as f64;
    let needed = min_images(target, level);
    let mut by_class: Vec<Vec<(f32, bool)>> = vec![Vec::new(); k];
    for (&it, &c) in items.iter().zip(predicted) {
        by_class[c].push(it);
    }
    let mut out: Vec<ClassThreshold> = Vec::with_capacity(k);
    let mut pool: Vec<(f32, bool)> = Vec::new();
    for (c, its) in by_class.iter().enumerate() {
        let own = its.len() >= needed;
        let threshold = if own {
            fit_threshold(its, target, level)
                .ok()
                .map(|(f, _)| f.threshold)
        } else {
            pool.extend_from_slice(its);
            None
        };
        out.push(ClassThreshold {
            class: classes[c].clone(),
            threshold,
            n: its.len(),
            own,
        });
    }
    let pooled = fit_threshold(&pool, target, level)
        .ok()
        .map(|(f, _)| f.threshold);
    for t in out.iter_mut().filter(|t| !t.own) {
        t.threshold = pooled;
    }
    out
}

/// What a calibration says about one row.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The top-1 class index.
    pub predicted: usize,
    /// Whether to write `unknown`.
    pub abstain: bool,
    /// The prediction set (class indices, most probable first), when sets were calibrated.
    pub set: Option<Vec<usize>>,
}

impl Calibration {
    /// Whether a row with these probabilities is labelled `unknown`.
    pub fn abstains(&self, probs: &[f32]) -> bool {
        self.decide(probs).abstain
    }

    /// The decision for one row of class probabilities (in `made_for.classes` order).
    pub fn decide(&self, probs: &[f32]) -> Decision {
        let predicted = top_k(probs, 1).first().map_or(0, |t| t.0);
        let conf = self.confidence.of(probs) as f64;
        let threshold = match &self.per_class {
            Some(pc) => pc.get(predicted).and_then(|c| c.threshold),
            None => Some(self.threshold.threshold),
        };
        Decision {
            predicted,
            abstain: threshold.is_none_or(|t| conf < t),
            set: self.sets.as_ref().map(|s| s.set(probs)),
        }
    }

    /// The prediction set as class names, when sets were calibrated.
    pub fn set_names(&self, probs: &[f32]) -> Option<Vec<String>> {
        self.sets.as_ref().map(|s| {
            s.set(probs)
                .into_iter()
                .map(|i| self.made_for.classes[i].clone())
                .collect()
        })
    }

    /// Refuses (naming the field) when this calibration was made for another model, scorer kind,
    /// prompts/head or class list than `run`. `path` names the calibration file in the error.
    pub fn check(&self, run: &MadeFor, path: &Path) -> std::result::Result<(), CalibrationError> {
        let m = &self.made_for;
        let mismatch = |field: &'static str, a: String, b: String| CalibrationError::Mismatch {
            path: path.to_path_buf(),
            field,
            made_for: a,
            this_run: b,
        };
        if m.model_fingerprint != run.model_fingerprint {
            return Err(mismatch(
                "model",
                format!("`{}` (fingerprint {})", m.model, m.model_fingerprint),
                format!("`{}` (fingerprint {})", run.model, run.model_fingerprint),
            ));
        }
        if m.method != run.method {
            return Err(mismatch(
                "scorer",
                format!("`{}`", method_name(m.method)),
                format!("`{}`", method_name(run.method)),
            ));
        }
        if m.classes != run.classes {
            return Err(mismatch(
                "class list",
                format!("{:?}", m.classes),
                format!("{:?}", run.classes),
            ));
        }
        if m.scorer_key != run.scorer_key {
            let what = if m.method == RunMethod::Head {
                "head"
            } else {
                "prompts"
            };
            return Err(mismatch(
                what,
                format!("key `{}`", m.scorer_key),
                format!("key `{}`", run.scorer_key),
            ));
        }
        Ok(())
    }

    /// Writes the calibration as pretty JSON, atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut json =
            serde_json::to_string_pretty(self).map_err(|source| crate::Error::Serialize {
                path: path.to_path_buf(),
                source,
            })?;
        json.push('\n');
        write_atomic(path, json.as_bytes()).map_err(|e| crate::Error::io(path, e))
    }

    /// Reads a calibration file, refusing other layouts.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| crate::Error::io(path, e))?;
        let cal: Calibration =
            serde_json::from_slice(&bytes).map_err(|e| CalibrationError::BadFile {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        if cal.format_version != FORMAT_VERSION {
            return Err(CalibrationError::BadFile {
                path: path.to_path_buf(),
                message: format!(
                    "format_version {} (this cliplabel reads {FORMAT_VERSION})",
                    cal.format_version
                ),
            }
            .into());
        }
        if let Some(pc) = &cal.per_class {
            if pc.len() != cal.made_for.classes.len() {
                return Err(CalibrationError::BadFile {
                    path: path.to_path_buf(),
                    message: "per_class does not list every class".into(),
                }
                .into());
            }
        }
        Ok(cal)
    }
}

/// The name a run method has in files and messages.
pub fn method_name(m: RunMethod) -> &'static str {
    match m {
        RunMethod::ZeroShot => "zero-shot",
        RunMethod::Head => "head",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SplitMix64 (Steele, Lea, Flood 2014), for reproducible simulations in these tests.
    struct SplitMix64(u64);

    impl SplitMix64 {
        fn new(seed: u64) -> Self {
            SplitMix64(seed)
        }
        fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        fn next_f64(&mut self) -> f64 {
            (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    /// Reference values of `scipy.stats.beta.ppf(1 - delta, k + 1, n - k)` (SciPy 1.x), made by
    /// `tests/fixtures/calibration/clopper_pearson.py`; the file is `clopper_pearson.json`.
    #[test]
    fn clopper_pearson_matches_scipy() {
        let text = include_str!("../../tests/fixtures/calibration/clopper_pearson.json");
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        let rows = v["values"].as_array().unwrap();
        assert!(rows.len() >= 10);
        for r in rows {
            let (k, n, d, want) = (
                r["k"].as_u64().unwrap() as usize,
                r["n"].as_u64().unwrap() as usize,
                r["delta"].as_f64().unwrap(),
                r["upper"].as_f64().unwrap(),
            );
            let got = clopper_pearson_upper(k, n, d);
            assert!(
                (got - want).abs() < 1e-9,
                "k={k} n={n} delta={d}: {got} vs scipy {want}"
            );
        }
        // Closed form with no errors: 1 - delta^(1/n).
        let closed = 1.0 - 0.1f64.powf(1.0 / 50.0);
        assert!((clopper_pearson_upper(0, 50, 0.1) - closed).abs() < 1e-12);
        assert_eq!(clopper_pearson_upper(5, 5, 0.1), 1.0);
    }

    #[test]
    fn min_images_is_the_exact_boundary() {
        for (t, d) in [(0.95, 0.1), (0.9, 0.05), (0.99, 0.1), (0.8, 0.2)] {
            let n = min_images(t, d);
            assert!(clopper_pearson_upper(0, n, d) <= 1.0 - t);
            assert!(clopper_pearson_upper(0, n - 1, d) > 1.0 - t);
        }
        assert_eq!(min_images(0.95, 0.1), 45);
    }

    /// Two synthetic classifiers: confidence c ~ U(0,1), correct with probability `p_ok(c)`.
    /// `Hard`: `0.4 + 0.6 c^2` (precision reaches 0.9 only above t = 0.82, 18% coverage).
    /// `Easy`: `1 - (1 - c)^2 / 2` (precision 0.9 down to t = 0.23, 77% coverage).
    #[derive(Clone, Copy, Debug)]
    enum Synth {
        Hard,
        Easy,
    }

    impl Synth {
        fn p_ok(self, c: f64) -> f64 {
            match self {
                Synth::Hard => 0.4 + 0.6 * c * c,
                Synth::Easy => 1.0 - 0.5 * (1.0 - c) * (1.0 - c),
            }
        }

        fn draw(self, rng: &mut SplitMix64, n: usize) -> Vec<(f32, bool)> {
            (0..n)
                .map(|_| {
                    let c = rng.next_f64();
                    (c as f32, rng.next_f64() < self.p_ok(c))
                })
                .collect()
        }

        /// True precision at threshold t (midpoint rule).
        fn precision(self, t: f64) -> f64 {
            let steps = 20_000;
            (0..steps)
                .map(|i| self.p_ok(t + (1.0 - t) * (i as f64 + 0.5) / steps as f64))
                .sum::<f64>()
                / steps as f64
        }
    }

    #[test]
    fn guarantee_holds_by_simulation() {
        // Many calibration draws: whenever a threshold is returned, its true precision must
        // reach the target in at least 1 - delta of the draws (a refusal claims nothing, so it
        // counts as kept). 400 draws each: the simulation's own sd is 1.5 points.
        let (target, delta) = (0.9, 0.1);
        for synth in [Synth::Hard, Synth::Easy] {
            let mut rng = SplitMix64::new(7);
            let (mut kept, mut refused, mut coverage) = (0usize, 0usize, 0.0);
            let draws = 400;
            for _ in 0..draws {
                let cal = synth.draw(&mut rng, 500);
                match fit_threshold(&cal, target, delta) {
                    Ok((fit, _)) => {
                        kept += usize::from(synth.precision(fit.threshold) >= target);
                        coverage += fit.coverage;
                    }
                    Err(CalibrationError::Unreachable { .. }) => {
                        refused += 1;
                        kept += 1;
                    }
                    Err(e) => panic!("{e}"),
                }
            }
            let rate = kept as f64 / draws as f64;
            let mean_cov = coverage / (draws - refused).max(1) as f64;
            println!(
                "{synth:?}: precision >= {target} in {rate:.3} of {draws} draws ({refused} refused), mean coverage {mean_cov:.3}"
            );
            assert!(
                rate >= 1.0 - delta,
                "{synth:?}: guarantee held in only {rate}"
            );
            if let Synth::Easy = synth {
                // Not vacuous: where the target is comfortably reachable it rarely refuses and
                // accepts most of what the oracle threshold (77%) would.
                assert!(refused <= draws / 20, "refused {refused} of {draws}");
                assert!(mean_cov > 0.5, "mean coverage {mean_cov}");
            }
        }
    }

    #[test]
    fn fixed_sequence_picks_the_lowest_passing_threshold_and_stops_at_first_failure() {
        // 100 right at confidence 0.9, then 100 wrong at 0.5, then 100 right at 0.2.
        let mut items = vec![(0.9f32, true); 100];
        items.extend(vec![(0.5f32, false); 100]);
        items.extend(vec![(0.2f32, true); 100]);
        let (fit, curve) = fit_threshold(&items, 0.95, 0.1).unwrap();
        assert!((fit.threshold - 0.501).abs() < 1e-9, "{}", fit.threshold);
        assert_eq!(fit.accepted, 100);
        assert!((fit.coverage - 1.0 / 3.0).abs() < 1e-9);
        assert_eq!(curve.len(), GRID + 1);
        // Once the sequence failed at 0.5, lower thresholds are never marked as passed.
        assert!(curve
            .iter()
            .filter(|p| p.threshold <= 0.5)
            .all(|p| !p.passed));
    }

    #[test]
    fn refusals_name_the_reason() {
        let few = vec![(0.99f32, true); 20];
        let e = fit_threshold(&few, 0.95, 0.1).unwrap_err();
        assert!(
            matches!(
                e,
                CalibrationError::TooFewImages {
                    needed: 45,
                    n: 20,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("at least 45"), "{e}");
        // Enough images, but half are wrong everywhere.
        let bad: Vec<(f32, bool)> = (0..200).map(|i| (0.99, i % 2 == 0)).collect();
        let e = fit_threshold(&bad, 0.95, 0.1).unwrap_err();
        assert!(matches!(e, CalibrationError::Unreachable { .. }), "{e}");
        assert!(e
            .to_string()
            .contains("no threshold reaches precision 0.95"));
        assert!(fit_threshold(&bad, 1.0, 0.1).is_err());
        assert!(fit_threshold(&bad, 0.9, 0.0).is_err());
        let e = fit_sets(&vec![vec![0.5, 0.5]; 5], &[0; 5], 0.9).unwrap_err();
        assert!(
            matches!(e, CalibrationError::TooFewForSets { needed: 9, .. }),
            "{e}"
        );
    }

    /// Synthetic K-class probabilities: the true class gets a random boost over Dirichlet-like noise.
    fn synth_probs(rng: &mut SplitMix64, n: usize, k: usize) -> (Vec<Vec<f32>>, Vec<usize>) {
        let mut probs = Vec::with_capacity(n);
        let mut labels = Vec::with_capacity(n);
        for _ in 0..n {
            let y = (rng.next_u64() % k as u64) as usize;
            let strength = 6.0 * rng.next_f64();
            let logits: Vec<f32> = (0..k)
                .map(|c| {
                    let noise = -(rng.next_f64().max(1e-12)).ln();
                    (noise + if c == y { strength } else { 0.0 }) as f32
                })
                .collect();
            probs.push(crate::util::math::softmax(&logits));
            labels.push(y);
        }
        (probs, labels)
    }

    #[test]
    fn conformal_sets_cover_by_simulation() {
        let level = 0.9;
        let mut rng = SplitMix64::new(11);
        let (mut covered, mut total, mut size) = (0usize, 0usize, 0usize);
        for _ in 0..100 {
            let (cp, cl) = synth_probs(&mut rng, 200, 6);
            let sets = fit_sets(&cp, &cl, level).unwrap();
            let (tp, tl) = synth_probs(&mut rng, 200, 6);
            for (p, &y) in tp.iter().zip(&tl) {
                let s = sets.set(p);
                covered += usize::from(s.contains(&y));
                size += s.len();
                total += 1;
            }
        }
        let cov = covered as f64 / total as f64;
        let mean = size as f64 / total as f64;
        println!("coverage {cov:.4}, mean set size {mean:.2} of 6");
        // Marginal coverage is >= level; over 20,000 test images its sd is 0.2 points.
        assert!(cov >= level - 0.005, "coverage {cov}");
        // And not trivially all classes.
        assert!(mean < 5.0, "mean set size {mean}");
    }

    fn made_for() -> MadeFor {
        MadeFor {
            model: "m".into(),
            model_fingerprint: "f1".into(),
            method: RunMethod::ZeroShot,
            scorer_key: "k1".into(),
            classes: (0..6).map(|c| format!("c{c}")).collect(),
        }
    }

    #[test]
    fn calibrate_save_load_check_apply() {
        let mut rng = SplitMix64::new(3);
        let (probs, labels) = synth_probs(&mut rng, 6000, 6);
        let opts = CalibrateOptions {
            target_precision: 0.9,
            delta: 0.1,
            per_class: true,
            sets: Some(0.9),
            ..Default::default()
        };
        let (cal, curves) = calibrate(&probs, &labels, made_for(), &opts).unwrap();
        assert_eq!(curves.top1.len(), 6000);
        assert!(cal.threshold.coverage > 0.0 && cal.threshold.coverage < 1.0);
        let pc = cal.per_class.as_ref().unwrap();
        assert_eq!(pc.len(), 6);
        // 6,000 images: every class has enough of its own; a class whose threshold could not
        // reach the target at delta / 7 always abstains, the others accept a confident row.
        assert!(pc.iter().all(|c| c.own), "{pc:?}");
        assert!(pc.iter().any(|c| c.threshold.is_some()), "{pc:?}");
        for (c, t) in pc.iter().enumerate() {
            let mut row = [0.002f32; 6];
            row[c] = 0.99;
            assert_eq!(cal.abstains(&row), t.threshold.is_none(), "{t:?}");
        }
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("cal.json");
        cal.save(&path).unwrap();
        let back = Calibration::load(&path).unwrap();
        // serde_json parses floats to within an ulp, so compare what decisions depend on.
        assert_eq!(back.made_for, cal.made_for);
        assert_eq!(back.per_class, cal.per_class);
        assert_eq!(back.threshold.threshold, cal.threshold.threshold);
        assert_eq!(
            back.sets.as_ref().unwrap().quantile,
            cal.sets.as_ref().unwrap().quantile
        );
        back.check(&made_for(), &path).unwrap();
        for (field, change) in [
            (
                "model",
                Box::new(|m: &mut MadeFor| m.model_fingerprint = "f2".into())
                    as Box<dyn Fn(&mut MadeFor)>,
            ),
            (
                "scorer",
                Box::new(|m: &mut MadeFor| m.method = RunMethod::Head),
            ),
            (
                "class list",
                Box::new(|m: &mut MadeFor| m.classes.swap(0, 1)),
            ),
            (
                "prompts",
                Box::new(|m: &mut MadeFor| m.scorer_key = "k2".into()),
            ),
        ] {
            let mut other = made_for();
            change(&mut other);
            let e = back.check(&other, &path).unwrap_err();
            assert!(
                e.to_string().contains(&format!("made for {field}")),
                "{field}: {e}"
            );
            assert!(e.to_string().contains("cal.json"), "{e}");
        }
        // Applying: a confident row is accepted, a flat one abstains; sets hold the top-1.
        let sure = [0.95f32, 0.01, 0.01, 0.01, 0.01, 0.01];
        let flat = [0.2f32, 0.16, 0.16, 0.16, 0.16, 0.16];
        let global = Calibration {
            per_class: None,
            ..cal.clone()
        };
        assert!(!global.abstains(&sure));
        assert!(global.abstains(&flat));
        let s = global.decide(&flat).set.unwrap();
        assert_eq!(s[0], 0);
        assert!(s.len() > 1);
        assert_eq!(global.set_names(&sure).unwrap()[0], "c0");
        // A bad file is refused by name.
        std::fs::write(&path, b"{\"format_version\": 1}").unwrap();
        let e = Calibration::load(&path).unwrap_err();
        assert!(
            e.to_string().contains("not a cliplabel calibration file"),
            "{e}"
        );
    }

    #[test]
    fn calibrate_rejects_misaligned_input() {
        let e = calibrate(
            &[vec![0.5, 0.5]],
            &[0],
            made_for(),
            &CalibrateOptions::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("image 0"), "{e}");
        let e = calibrate(
            &[vec![0.5; 6]],
            &[9],
            made_for(),
            &CalibrateOptions::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("label 9"), "{e}");
    }
}
