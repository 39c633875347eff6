//! Dataset audit (`cliplabel audit`): likely mislabels, exact and near-duplicates, train/test
//! leakage and outliers, all from CLIP image embeddings.
//!
//! [`audit_embeddings`] is the pure core: embeddings, labels and (optionally) file digests and
//! zero-shot probabilities in, an [`AuditResult`] out. [`run_audit`] is the thin layer that gets
//! the embeddings through the embedding cache (as `fit` and `compare` do), hashes the files and
//! scores zero-shot, then calls it. [`report::write_report`] writes `report.md` and one CSV per
//! finding type. [`job::audit_dataset`] is the whole `audit` command (options checked, classes
//! aligned, report and review page written, every image accounted for) as one call.
//!
//! - [`mislabels`]: out-of-fold probabilities from the cross-validated linear head
//!   ([`crate::linear_head::cross_validate`]), optionally blended with zero-shot, then confident
//!   learning (Northcutt et al., JAIR 2021).
//! - [`duplicates`]: SHA-256 content groups and an exact blocked k-NN search on the project's
//!   SGEMM; near-duplicate pairs grouped by union-find. Pairs crossing train and test are leakage.
//! - [`outliers`]: low cosine to every class centroid or low k-NN density.

pub mod duplicates;
pub mod job;
pub mod mislabels;
pub mod outliers;
pub mod report;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::classify::zeroshot::ZeroShotClassifier;
use crate::clip::engine::Engine;
use crate::eval::dataset::LabelledSet;
use crate::jobs::cache::EmbeddingCache;
use crate::jobs::writers::Failure;
use crate::linear_head::{self, CvOptions, HeadError, Matrix};

pub use duplicates::{Neighbours, Pair, UnionFind};
pub use mislabels::{ConfidentLearning, LabelIssue, RankBy};
pub use outliers::Outlier;

/// The default near-duplicate cosine threshold; see README "Auditing a dataset" for the
/// measurement behind it (generated copies vs distinct images through the demo model).
pub const DEFAULT_DUPLICATE_THRESHOLD: f32 = 0.997;

/// Why an audit could not run.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// An input has the wrong number of values.
    #[error("{what}: expected {expected} values, found {found}")]
    Shape {
        what: String,
        expected: usize,
        found: usize,
    },
    /// A label is not a class index.
    #[error("row {row}: label {label} is not one of the {n_classes} classes")]
    LabelOutOfRange {
        row: usize,
        label: usize,
        n_classes: usize,
    },
    /// An input holds NaN or infinity.
    #[error("{what}: row {row} is not finite")]
    NonFinite { what: String, row: usize },
    /// An option is out of range.
    #[error("audit option `{option}`: {message}")]
    BadOption {
        option: &'static str,
        message: String,
    },
    /// The cross-validated head could not be trained.
    #[error("cross-validating the linear head: {0}")]
    Head(#[from] HeadError),
    /// A matrix product on the portable path failed.
    #[error("matrix product: {0}")]
    Candle(#[from] candle_core::Error),
}

/// Settings of an audit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditOptions {
    /// Stratified folds of the cross-validated head that gives out-of-fold probabilities.
    pub folds: usize,
    /// Seed of the fold assignment.
    pub seed: u64,
    /// `C` values tried for the head; the one with the lowest out-of-fold log-loss is used
    /// (`None`: [`default_audit_c_grid`]).
    pub c_grid: Option<Vec<f64>>,
    /// How likely mislabels are ranked.
    pub rank_by: RankBy,
    /// Weight `w` of zero-shot probabilities in `(1 - w) * head + w * zero-shot`, in `[0, 1]`;
    /// used only when zero-shot probabilities are given.
    pub zero_shot_weight: f64,
    /// Cosine at or above which two images are near-duplicates.
    pub duplicate_threshold: f32,
    /// Neighbours of each image for the k-NN density.
    pub k: usize,
    /// Robust z-score below `-outlier_cutoff` flags an outlier.
    pub outlier_cutoff: f64,
    /// Query rows per block of the neighbour search (memory: `block_rows * n` floats).
    pub block_rows: usize,
}

impl Default for AuditOptions {
    fn default() -> Self {
        AuditOptions {
            folds: 5,
            seed: 0,
            c_grid: None,
            rank_by: RankBy::SelfConfidence,
            zero_shot_weight: 0.5,
            duplicate_threshold: DEFAULT_DUPLICATE_THRESHOLD,
            k: 10,
            outlier_cutoff: 4.0,
            block_rows: 96,
        }
    }
}

/// Which side of the audit an image is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// The labelled set being audited.
    Train,
    /// The held-out set checked for leakage.
    Test,
}

/// Embedded images of one split.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AuditSet {
    /// Path of each image as it should appear in the report.
    pub paths: Vec<PathBuf>,
    /// `paths.len() * dim` embedding values (normalised by the audit).
    pub embeddings: Vec<f32>,
    /// Class index of each image (required for the train split; ignored for test).
    pub labels: Vec<usize>,
    /// SHA-256 of each file, or `None` (not hashed or unreadable): exact duplicates.
    pub digests: Vec<Option<[u8; 32]>>,
}

/// Audit stages, reported through the progress callback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuditProgress {
    /// Embedding images (through the cache).
    Embedding,
    /// Cross-validating the head for out-of-fold probabilities.
    CrossValidating,
    /// Neighbour search: `done` of `total` rows.
    Neighbours { done: usize, total: usize },
    /// Outliers and grouping.
    Summarising,
}

/// An image of a train/test pair that is a near or exact duplicate.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Leak {
    /// Row of the train image.
    pub train: usize,
    /// Row of the test image.
    pub test: usize,
    /// Their cosine.
    pub cosine: f32,
    /// Whether the files are byte-identical.
    pub exact: bool,
}

/// Everything an audit found. Rows index `paths` (train rows first, then test).
#[derive(Clone, Debug, PartialEq)]
pub struct AuditResult {
    /// Class names.
    pub classes: Vec<String>,
    /// Every audited image, train first.
    pub paths: Vec<PathBuf>,
    /// Split of each row.
    pub splits: Vec<Split>,
    /// Given label of each train row.
    pub labels: Vec<usize>,
    /// Number of train rows.
    pub n_train: usize,
    /// The `C` of the head with the lowest out-of-fold log-loss against the given labels.
    pub cv_c: f64,
    /// Cross-validated accuracy at `cv_c`.
    pub cv_accuracy: f64,
    /// Mean out-of-fold log-loss at `cv_c` (the selection criterion).
    pub cv_log_loss: f64,
    /// Out-of-fold probabilities used (`n_train * classes`, after any zero-shot blend).
    pub probs: Vec<f32>,
    /// Whether zero-shot probabilities were blended in.
    pub zero_shot_blended: bool,
    /// Confident learning on them.
    pub mislabels: ConfidentLearning,
    /// Groups of byte-identical files.
    pub exact_groups: Vec<Vec<usize>>,
    /// Pairs with cosine at or above the threshold.
    pub near_pairs: Vec<Pair>,
    /// Connected groups of those pairs.
    pub near_groups: Vec<Vec<usize>>,
    /// Train/test pairs (near or exact), listed first in the report.
    pub leakage: Vec<Leak>,
    /// Flagged outliers among the train rows.
    pub outliers: Vec<Outlier>,
    /// Images that could not be audited, with reasons.
    pub failures: Vec<Failure>,
    /// The options used.
    pub options: AuditOptions,
}

/// The default `C` grid of the audit's head: 1e-2 to 1e4, half a decade apart.
pub fn default_audit_c_grid() -> Vec<f64> {
    (-4..=8).map(|e| 10f64.powf(e as f64 / 2.0)).collect()
}

/// Mean negative log-probability of the given labels (probabilities floored at 1e-12).
fn log_loss(probs: &[f32], labels: &[usize], k: usize) -> f64 {
    let total: f64 = probs
        .chunks_exact(k)
        .zip(labels)
        .map(|(row, &l)| -(row[l] as f64).max(1e-12).ln())
        .sum();
    total / labels.len().max(1) as f64
}

fn check_set(set: &AuditSet, dim: usize, what: &str) -> Result<(), AuditError> {
    let n = set.paths.len();
    if set.embeddings.len() != n * dim {
        return Err(AuditError::Shape {
            what: format!("{what} embeddings"),
            expected: n * dim,
            found: set.embeddings.len(),
        });
    }
    if !set.digests.is_empty() && set.digests.len() != n {
        return Err(AuditError::Shape {
            what: format!("{what} digests"),
            expected: n,
            found: set.digests.len(),
        });
    }
    if let Some(i) = set.embeddings.iter().position(|v| !v.is_finite()) {
        return Err(AuditError::NonFinite {
            what: format!("{what} embeddings"),
            row: i / dim,
        });
    }
    Ok(())
}

fn normalised(v: &[f32], dim: usize) -> Vec<f32> {
    let mut out = v.to_vec();
    crate::util::math::l2_normalize_rows(&mut out, dim);
    out
}

/// Audits embedded images: `train` (labelled) and optionally `test`; `zero_shot` holds
/// zero-shot probabilities of the train rows (`n_train * classes`) to blend in.
pub fn audit_embeddings(
    classes: &[String],
    dim: usize,
    train: &AuditSet,
    test: Option<&AuditSet>,
    zero_shot: Option<&[f32]>,
    opts: &AuditOptions,
    mut progress: impl FnMut(AuditProgress),
) -> Result<AuditResult, AuditError> {
    let k = classes.len();
    if !(0.0..=1.0).contains(&opts.zero_shot_weight) {
        return Err(AuditError::BadOption {
            option: "zero_shot_weight",
            message: format!("{} is not in [0, 1]", opts.zero_shot_weight),
        });
    }
    if !(opts.duplicate_threshold.is_finite() && opts.duplicate_threshold <= 1.0) {
        return Err(AuditError::BadOption {
            option: "duplicate_threshold",
            message: format!("{} is not a cosine", opts.duplicate_threshold),
        });
    }
    if !(opts.outlier_cutoff.is_finite() && opts.outlier_cutoff > 0.0) {
        return Err(AuditError::BadOption {
            option: "outlier_cutoff",
            message: format!("{} is not a positive number", opts.outlier_cutoff),
        });
    }
    check_set(train, dim, "train")?;
    if train.labels.len() != train.paths.len() {
        return Err(AuditError::Shape {
            what: "train labels".into(),
            expected: train.paths.len(),
            found: train.labels.len(),
        });
    }
    if let Some(t) = test {
        check_set(t, dim, "test")?;
    }
    let n_train = train.paths.len();
    let n_test = test.map_or(0, |t| t.paths.len());

    // 1. Out-of-fold probabilities and confident learning.
    progress(AuditProgress::CrossValidating);
    let xt = normalised(&train.embeddings, dim);
    let xm = Matrix::new(n_train, dim, xt)?;
    let data = linear_head::Dataset::new(&xm, &train.labels, k)?;
    // C is chosen by out-of-fold log-loss, not accuracy: confident learning needs the
    // probabilities, and accuracy saturates at small C (ties go to the smaller C), whose
    // probabilities are nearly flat.
    let grid = opts.c_grid.clone().unwrap_or_else(default_audit_c_grid);
    let mut best: Option<(f64, f64, f64, Matrix)> = None; // (log-loss, C, accuracy, probs)
    for &c in &grid {
        let cv = linear_head::cross_validate(
            &data,
            None,
            &CvOptions {
                folds: opts.folds,
                c_grid: Some(vec![c]),
                seed: opts.seed,
                ..CvOptions::default()
            },
            Some(classes),
        )?;
        let p = linear_head::softmax_rows(&cv.oof_logits);
        let loss = log_loss(p.as_slice(), &train.labels, k);
        if best.as_ref().is_none_or(|b| loss < b.0) {
            best = Some((loss, c, cv.best_accuracy, p));
        }
    }
    let (cv_log_loss, cv_c, cv_accuracy, p) = best.ok_or(AuditError::BadOption {
        option: "c_grid",
        message: "is empty".into(),
    })?;
    let mut probs = p.into_vec();
    if let Some(zs) = zero_shot {
        if zs.len() != n_train * k {
            return Err(AuditError::Shape {
                what: "zero-shot probabilities".into(),
                expected: n_train * k,
                found: zs.len(),
            });
        }
        let w = opts.zero_shot_weight as f32;
        for (p, z) in probs.iter_mut().zip(zs) {
            *p = (1.0 - w) * *p + w * z;
        }
    }
    let mislabels = mislabels::confident_learning(&probs, k, &train.labels, opts.rank_by)?;

    // 2. Neighbours over train and test together.
    let mut all = xm.into_vec();
    if let Some(t) = test {
        all.extend(normalised(&t.embeddings, dim));
    }
    let n = n_train + n_test;
    let nb = duplicates::neighbours(
        &all,
        dim,
        opts.duplicate_threshold,
        opts.k,
        opts.block_rows,
        |done, total| progress(AuditProgress::Neighbours { done, total }),
    )?;
    progress(AuditProgress::Summarising);
    let mut digests: Vec<Option<[u8; 32]>> = Vec::with_capacity(n);
    for set in std::iter::once(train).chain(test) {
        if set.digests.is_empty() {
            digests.extend(std::iter::repeat_n(None, set.paths.len()));
        } else {
            digests.extend(set.digests.iter().copied());
        }
    }
    let exact_groups = duplicates::exact_groups(&digests);
    let mut uf = UnionFind::new(n);
    for p in &nb.pairs {
        uf.union(p.a, p.b);
    }
    let near_groups = uf.groups();
    let splits: Vec<Split> = (0..n)
        .map(|i| {
            if i < n_train {
                Split::Train
            } else {
                Split::Test
            }
        })
        .collect();

    // 3. Leakage: exact groups and near pairs that cross the split.
    let same_digest = |a: usize, b: usize| digests[a].is_some() && digests[a] == digests[b];
    let cosine = |a: usize, b: usize| -> f32 {
        all[a * dim..(a + 1) * dim]
            .iter()
            .zip(&all[b * dim..(b + 1) * dim])
            .map(|(x, y)| x * y)
            .sum()
    };
    let mut leakage: Vec<Leak> = nb
        .pairs
        .iter()
        .filter(|p| p.a < n_train && p.b >= n_train)
        .map(|p| Leak {
            train: p.a,
            test: p.b,
            cosine: p.cosine,
            exact: same_digest(p.a, p.b),
        })
        .collect();
    for g in &exact_groups {
        for &a in g.iter().filter(|&&a| a < n_train) {
            for &b in g.iter().filter(|&&b| b >= n_train) {
                if !leakage.iter().any(|l| l.train == a && l.test == b) {
                    leakage.push(Leak {
                        train: a,
                        test: b,
                        cosine: cosine(a, b),
                        exact: true,
                    });
                }
            }
        }
    }
    leakage.sort_by_key(|x| (x.train, x.test));

    // 4. Outliers among the train rows.
    let cents = outliers::centroids(&all[..n_train * dim], dim, &train.labels, k);
    let nearest = outliers::nearest_centroid(&all[..n_train * dim], dim, &cents);
    let density = nb.density();
    let outliers = outliers::find_outliers(&nearest, &density[..n_train], opts.outlier_cutoff);

    let mut paths = train.paths.clone();
    if let Some(t) = test {
        paths.extend(t.paths.iter().cloned());
    }
    Ok(AuditResult {
        classes: classes.to_vec(),
        paths,
        splits,
        labels: train.labels.clone(),
        n_train,
        cv_c,
        cv_accuracy,
        cv_log_loss,
        probs,
        zero_shot_blended: zero_shot.is_some() && opts.zero_shot_weight > 0.0,
        mislabels,
        exact_groups,
        near_pairs: nb.pairs,
        near_groups,
        leakage,
        outliers,
        failures: Vec::new(),
        options: opts.clone(),
    })
}

/// Embeds `set` through `cache` and hashes its files; failed images go to `failures`.
fn embed_split(
    engine: &Engine,
    cache: &mut EmbeddingCache,
    set: &LabelledSet,
    labels: Option<&[usize]>,
    batch_size: usize,
    failures: &mut Vec<Failure>,
) -> crate::Result<AuditSet> {
    use rayon::prelude::*;
    let e = cache.embed(engine, &set.paths, batch_size)?;
    failures.extend(e.failures);
    let digests: Vec<std::io::Result<[u8; 32]>> = set
        .paths
        .par_iter()
        .map(|p| duplicates::sha256_file(p))
        .collect();
    let mut out = AuditSet::default();
    for (i, (row, digest)) in e.rows.into_iter().zip(digests).enumerate() {
        let Some(row) = row else { continue };
        let path = &set.paths[i];
        match digest {
            Ok(d) => out.digests.push(Some(d)),
            Err(err) => {
                failures.push(Failure {
                    path: crate::util::pathtext::path_text(path),
                    error: format!("cannot hash the file: {err}"),
                });
                continue;
            }
        }
        out.paths.push(path.clone());
        out.embeddings.extend(row);
        if let Some(l) = labels {
            out.labels.push(l[i]);
        }
    }
    Ok(out)
}

/// What [`run_audit`] audits.
#[derive(Clone, Copy)]
pub struct AuditSources<'a> {
    /// The labelled set.
    pub train: &'a LabelledSet,
    /// A held-out set to check for leakage (its labels are not used).
    pub test: Option<&'a LabelledSet>,
    /// A zero-shot classifier for `train.classes`, whose probabilities are blended into the
    /// head's with [`AuditOptions::zero_shot_weight`].
    pub zero_shot: Option<&'a ZeroShotClassifier>,
    /// Images per batch of the encoder.
    pub batch_size: usize,
}

/// Reads a held-out set for the leakage check: the ImageFolder layout (`DIR/<class>/<image>`)
/// or a plain folder of images (walked recursively), since leakage uses no test labels. A plain
/// folder's images all get class 0 of the single class `unlabelled`.
pub fn load_test_set(dir: &std::path::Path) -> crate::Result<LabelledSet> {
    let has_class_dirs = std::fs::read_dir(dir)
        .map_err(|e| crate::Error::io(dir, e))?
        .filter_map(|e| e.ok())
        .any(|e| e.path().is_dir() && !e.file_name().to_string_lossy().starts_with('.'));
    if has_class_dirs {
        return LabelledSet::from_image_folder(dir);
    }
    let paths = crate::images::inputs::collect_images(&[dir.to_path_buf()])?;
    Ok(LabelledSet {
        classes: vec!["unlabelled".into()],
        labels: vec![0; paths.len()],
        paths,
    })
}

/// Audits `src.train` (and `src.test`) with `engine`, getting embeddings through `cache` as
/// `fit` and `compare` do. Every image ends in the result or in its `failures`.
pub fn run_audit(
    engine: &Engine,
    cache: &mut EmbeddingCache,
    src: AuditSources<'_>,
    opts: &AuditOptions,
    mut progress: impl FnMut(AuditProgress),
) -> crate::Result<AuditResult> {
    let AuditSources {
        train,
        test,
        zero_shot,
        batch_size,
    } = src;
    progress(AuditProgress::Embedding);
    let mut failures = Vec::new();
    let tr = embed_split(
        engine,
        cache,
        train,
        Some(&train.labels),
        batch_size,
        &mut failures,
    )?;
    let te = match test {
        Some(t) => Some(embed_split(
            engine,
            cache,
            t,
            None,
            batch_size,
            &mut failures,
        )?),
        None => None,
    };
    let dim = engine.model.config.projection_dim;
    let zs: Option<Vec<f32>> = match zero_shot {
        Some(z) => {
            if z.classes != train.classes {
                return Err(AuditError::BadOption {
                    option: "zero_shot",
                    message: "the zero-shot classifier's classes differ from the set's".into(),
                }
                .into());
            }
            Some(
                z.score(&tr.embeddings)
                    .into_iter()
                    .flat_map(|s| s.probs)
                    .collect(),
            )
        }
        None => None,
    };
    let mut r = audit_embeddings(
        &train.classes,
        dim,
        &tr,
        te.as_ref(),
        zs.as_deref(),
        opts,
        progress,
    )?;
    r.failures = failures;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three tight clusters (one per class) of 12 points in 8 dimensions, a test set with one
    /// byte-identical copy of train row 4 (a little moved in embedding space) and one distinct
    /// point, and train row 7 labelled with the wrong class.
    fn synthetic() -> (Vec<String>, AuditSet, AuditSet) {
        let d = 8;
        let mut train = AuditSet::default();
        let mut s = 5u64;
        let mut noise = || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) as f32 / (1u64 << 31) as f32 - 0.5) * 0.2
        };
        for i in 0..36 {
            let c = i % 3;
            let mut row = vec![0f32; d];
            row[c] = 1.0;
            for v in row.iter_mut() {
                *v += noise();
            }
            train.paths.push(PathBuf::from(format!("train/{i}.png")));
            train.embeddings.extend(row);
            train.labels.push(if i == 7 { (c + 1) % 3 } else { c });
            train.digests.push(Some([i as u8; 32]));
        }
        let mut test = AuditSet::default();
        let mut copy = train.embeddings[4 * d..5 * d].to_vec();
        copy[7] += 0.01;
        test.embeddings.extend(copy);
        test.paths.push(PathBuf::from("test/copy.png"));
        test.digests.push(Some([4u8; 32]));
        let mut other = vec![0f32; d];
        other[5] = 1.0;
        test.embeddings.extend(other);
        test.paths.push(PathBuf::from("test/other.png"));
        test.digests.push(Some([200u8; 32]));
        let classes = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        (classes, train, test)
    }

    #[test]
    fn synthetic_audit_finds_the_flip_and_the_leak() {
        let (classes, train, test) = synthetic();
        let opts = AuditOptions {
            folds: 3,
            duplicate_threshold: 0.999,
            ..AuditOptions::default()
        };
        let mut stages = Vec::new();
        let r = audit_embeddings(&classes, 8, &train, Some(&test), None, &opts, |p| {
            stages.push(p)
        })
        .unwrap();
        assert_eq!(stages[0], AuditProgress::CrossValidating);
        assert_eq!(
            stages.last(),
            Some(&AuditProgress::Summarising),
            "{stages:?}"
        );
        let flagged: Vec<usize> = r.mislabels.issues.iter().map(|i| i.index).collect();
        assert_eq!(flagged, vec![7]);
        assert_eq!(r.mislabels.issues[0].suggested, 7 % 3);
        assert_eq!(r.exact_groups, vec![vec![4, 36]]);
        assert_eq!(r.leakage.len(), 1);
        assert_eq!((r.leakage[0].train, r.leakage[0].test), (4, 36));
        assert!(r.leakage[0].exact);
        assert_eq!(r.splits[36], Split::Test);
        assert!(!r.zero_shot_blended);
    }

    #[test]
    fn bad_inputs_are_errors_not_panics() {
        let (classes, train, test) = synthetic();
        let opts = AuditOptions::default();
        let zs = vec![0.5f32; 10];
        assert!(matches!(
            audit_embeddings(&classes, 8, &train, Some(&test), Some(&zs), &opts, |_| {}),
            Err(AuditError::Shape { .. })
        ));
        let bad = AuditOptions {
            zero_shot_weight: 1.5,
            ..AuditOptions::default()
        };
        assert!(matches!(
            audit_embeddings(&classes, 8, &train, None, None, &bad, |_| {}),
            Err(AuditError::BadOption {
                option: "zero_shot_weight",
                ..
            })
        ));
        let mut short = train.clone();
        short.embeddings.pop();
        assert!(matches!(
            audit_embeddings(&classes, 8, &short, None, None, &opts, |_| {}),
            Err(AuditError::Shape { .. })
        ));
        let mut nan = train.clone();
        nan.embeddings[9] = f32::NAN;
        assert!(matches!(
            audit_embeddings(&classes, 8, &nan, None, None, &opts, |_| {}),
            Err(AuditError::NonFinite { row: 1, .. })
        ));
    }
}
