//! Linear heads on CLIP image embeddings: training (linear probe, zero-shot initialisation,
//! interpolation with zero-shot), the head file, and scoring new images with it.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::classify::scores::{Scorer, Scores};
use crate::classify::zeroshot::ZeroShotClassifier;
use crate::clip::engine::{Engine, Features};
use crate::error::{Error, ModelIdentity, Result};
use crate::linear_head::{
    choose_alpha, default_alpha_grid, fit, fit_cv, softmax_rows, CvOptions, Dataset, FitOptions,
    LinearHead, Matrix,
};
use crate::util::hash::{fnv1a, FNV_START};
use crate::util::math::l2_normalize;
use crate::util::safetensors_io::{write_f32, F32Tensor, SafetensorsFile};

/// How a head is trained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Logistic regression regularised toward zero (the CLIP paper's linear probe).
    #[default]
    Probe,
    /// Starts from the zero-shot classifier and is regularised toward it.
    ZeroShotInit,
    /// A linear probe whose logits are mixed with zero-shot logits, `alpha` chosen on held-out data.
    Interpolate,
}

impl Method {
    /// The name used in reports and head files.
    pub fn name(self) -> &'static str {
        match self {
            Method::Probe => "linear probe",
            Method::ZeroShotInit => "zero-shot init",
            Method::Interpolate => "interpolation",
        }
    }
}

/// Why a head cannot be trained with these examples or settings.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FitError {
    /// The method starts from, or blends with, the zero-shot classifier, and none was given.
    #[error("{} needs the zero-shot classifier (class prompts)", .method.name())]
    NeedsZeroShot { method: Method },
    /// Cross-validating C needs two examples in every class; `class` has `examples`.
    #[error("class `{class}` has {examples} example{}; cross-validating C needs at least 2 per class (and --cv of at least 2); add examples, or pass a single --c-grid value to fit without cross-validation", if *.examples == 1 { "" } else { "s" })]
    TooFewToCrossValidate { class: String, examples: usize },
    /// No training examples at all.
    #[error("no training examples")]
    NoExamples,
    /// Some class has no example (and there is no zero-shot prior to fall back on).
    #[error("every class needs at least one example")]
    EmptyClass,
}

/// Training settings.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// Which method.
    pub method: Method,
    /// Cross-validation folds (reduced automatically when classes have fewer examples).
    pub folds: usize,
    /// `C` grid; `None` for the default coarse-to-fine search.
    pub c_grid: Option<Vec<f64>>,
    /// Weight classes inversely to their frequency.
    pub balanced: bool,
    /// Seed of the fold assignment.
    pub seed: u64,
    /// Solver tolerance on the scaled gradient. Tighter than scikit-learn's default 1e-4, which
    /// stops early on L2-normalised embeddings at large `C` (few-shot probes then lose half
    /// their accuracy on 100-class data).
    pub tol: f64,
    /// `C` to use when some class has fewer than two examples, so cross-validation cannot run;
    /// `None` makes that an error naming the class.
    pub fallback_c: Option<f64>,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            method: Method::Probe,
            folds: 5,
            c_grid: None,
            balanced: false,
            seed: 0,
            tol: 1e-6,
            fallback_c: None,
        }
    }
}

/// The normalisation applied to embeddings before a head (`normalization` in the head file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Normalization {
    /// Unit L2 norm.
    #[default]
    #[serde(rename = "l2")]
    L2,
}

/// Metadata stored with a head.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HeadMeta {
    /// Class labels in row order.
    pub classes: Vec<String>,
    /// The model as given when training.
    pub model: String,
    /// Fingerprint of the model's files (config and sampled weights).
    pub model_fingerprint: String,
    /// Embedding width.
    pub dim: usize,
    /// `projected` or `pooled`.
    pub features: Features,
    /// Input normalisation applied before the head (`l2`).
    pub normalization: Normalization,
    /// Training method.
    pub method: Method,
    /// Chosen inverse regularisation strength (`None` when no fit was needed).
    pub c: Option<f64>,
    /// Cross-validated accuracy at the chosen `C`, when CV ran.
    pub cv_accuracy: Option<f64>,
    /// Folds used for cross-validation (0 when it could not run).
    pub cv_folds: usize,
    /// Weight of the zero-shot logits (interpolation only).
    pub alpha: Option<f64>,
    /// Examples per class used for training.
    pub examples_per_class: Vec<usize>,
    /// Template set used for the zero-shot part, if any.
    pub templates: Option<String>,
    /// Whether classes were balanced.
    pub balanced: bool,
    /// Seed of the fold assignment.
    pub seed: u64,
}

/// A trained head: weights, bias and metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct Head {
    /// The linear map on L2-normalised embeddings.
    pub linear: LinearHead,
    /// What it is and how it was made.
    pub meta: HeadMeta,
}

/// L2-normalises the rows of a matrix.
pub fn normalize_rows(m: &mut Matrix) {
    let cols = m.cols();
    let mut data = std::mem::replace(m, Matrix::zeros(0, cols)).into_vec();
    for r in data.chunks_exact_mut(cols.max(1)) {
        l2_normalize(r);
    }
    *m = Matrix::new(data.len() / cols.max(1), cols, data)
        .unwrap_or_else(|_| Matrix::zeros(0, cols));
}

/// The zero-shot classifier as a linear head: `logit_scale * T` with no bias.
pub fn zero_shot_head(zs: &ZeroShotClassifier) -> Result<LinearHead> {
    let w: Vec<f32> = zs.weights.iter().map(|v| v * zs.logit_scale).collect();
    let m = Matrix::new(zs.classes.len(), zs.dim, w)?;
    Ok(LinearHead::new(m, vec![0.0; zs.classes.len()])?)
}

/// The result of [`train`]: the head and what the search found.
pub struct Trained {
    /// The head (for interpolation, the combined map).
    pub linear: LinearHead,
    /// Chosen `C`.
    pub c: Option<f64>,
    /// Cross-validated accuracy.
    pub cv_accuracy: Option<f64>,
    /// Folds used.
    pub folds: usize,
    /// Interpolation weight.
    pub alpha: Option<f64>,
}

/// Trains a head on L2-normalised embeddings `x` with `labels` over `n_classes` classes.
/// `zero_shot` is required for [`Method::ZeroShotInit`] and [`Method::Interpolate`].
pub fn train(
    x: &Matrix,
    labels: &[usize],
    class_names: &[String],
    zero_shot: Option<&ZeroShotClassifier>,
    opts: &TrainOptions,
) -> Result<Trained> {
    let n_classes = class_names.len();
    let weights = if opts.balanced {
        Some(crate::linear_head::balanced_weights(labels, n_classes)?)
    } else {
        None
    };
    let mut data = Dataset::new(x, labels, n_classes)?;
    if let Some(w) = weights.as_deref() {
        data = data.with_weights(w)?;
    }
    let prior = match (opts.method, zero_shot) {
        (Method::Probe, _) => None,
        (_, Some(zs)) => Some(zero_shot_head(zs)?),
        (_, None) => {
            return Err(FitError::NeedsZeroShot {
                method: opts.method,
            }
            .into())
        }
    };
    let counts = data.class_counts();
    let min_count = counts.iter().copied().min().unwrap_or(0);
    // A single C needs no cross-validation.
    let single_c = opts.c_grid.as_ref().filter(|g| g.len() == 1).map(|g| g[0]);
    let folds = if single_c.is_some() {
        0
    } else {
        opts.folds.min(min_count)
    };
    if folds < 2 && single_c.is_none() && opts.fallback_c.is_none() {
        let (c, n) = counts
            .iter()
            .enumerate()
            .min_by_key(|(_, &n)| n)
            .map(|(c, &n)| (c, n))
            .unwrap_or((0, 0));
        return Err(FitError::TooFewToCrossValidate {
            class: class_names.get(c).map_or("?", String::as_str).to_string(),
            examples: n,
        }
        .into());
    }
    let cv_prior = if opts.method == Method::ZeroShotInit {
        prior.as_ref()
    } else {
        None
    };
    if x.rows() == 0 {
        return match cv_prior {
            Some(p) => Ok(Trained {
                linear: p.clone(),
                c: None,
                cv_accuracy: None,
                folds: 0,
                alpha: None,
            }),
            None => Err(FitError::NoExamples.into()),
        };
    }
    // With a single C, or fewer than two examples in some class, fit once without cross-validation.
    let (linear, c, cv_accuracy, cv) = if folds >= 2 {
        let cvo = CvOptions {
            folds,
            c_grid: opts.c_grid.clone(),
            seed: opts.seed,
            tol: opts.tol,
            ..CvOptions::default()
        };
        let (cv, f) = fit_cv(&data, cv_prior, &cvo, Some(class_names))?;
        let (c, acc) = (cv.best_c, cv.best_accuracy);
        (f.head, Some(c), Some(acc), Some(cv))
    } else {
        if cv_prior.is_none() && min_count < 1 {
            return Err(FitError::EmptyClass.into());
        }
        let c = opts
            .c_grid
            .as_ref()
            .and_then(|g| g.first().copied())
            .unwrap_or(1.0);
        let f = fit(
            &data,
            cv_prior,
            &FitOptions {
                c,
                tol: opts.tol,
                ..FitOptions::default()
            },
        )?;
        (f.head, Some(c), None, None)
    };
    if opts.method != Method::Interpolate {
        return Ok(Trained {
            linear,
            c,
            cv_accuracy,
            folds: if cv.is_some() { folds } else { 0 },
            alpha: None,
        });
    }
    // Interpolation: choose alpha on out-of-fold probe logits (or, without CV, on the training
    // data itself), then fold both linear maps into one.
    let zs = prior.as_ref().ok_or(FitError::NeedsZeroShot {
        method: opts.method,
    })?;
    let zs_logits = zs.predict_logits(x)?;
    let probe_logits = match &cv {
        Some(cv) => cv.oof_logits.clone(),
        None => linear.predict_logits(x)?,
    };
    let choice = choose_alpha(&zs_logits, &probe_logits, labels, &default_alpha_grid())?;
    let a = choice.alpha as f32;
    let w: Vec<f32> = zs
        .weights()
        .as_slice()
        .iter()
        .zip(linear.weights().as_slice())
        .map(|(z, p)| a * z + (1.0 - a) * p)
        .collect();
    let b: Vec<f32> = linear.bias().iter().map(|p| (1.0 - a) * p).collect();
    Ok(Trained {
        linear: LinearHead::new(Matrix::new(n_classes, x.cols(), w)?, b)?,
        c,
        cv_accuracy,
        folds: if cv.is_some() { folds } else { 0 },
        alpha: Some(choice.alpha),
    })
}

impl Head {
    /// Saves the head as safetensors (`weight` `[classes, dim]`, `bias` `[classes]`) with its
    /// metadata as JSON under the `cliplabel_head` key.
    pub fn save(&self, path: &Path) -> Result<()> {
        let (c, d) = (self.linear.n_classes(), self.linear.dim());
        let meta = serde_json::to_string(&self.meta).map_err(|source| Error::Serialize {
            path: path.to_path_buf(),
            source,
        })?;
        let tensors = [
            F32Tensor {
                name: "weight",
                shape: vec![c, d],
                values: self.linear.weights().as_slice(),
            },
            F32Tensor {
                name: "bias",
                shape: vec![c],
                values: self.linear.bias(),
            },
        ];
        write_f32(
            path,
            &tensors,
            &BTreeMap::from([("cliplabel_head".to_string(), meta)]),
        )?;
        Ok(())
    }

    /// A key of a head file's contents (FNV-1a of its bytes, 16 hex digits), recorded in a run's
    /// `OUT.run.json` so that `--resume` and `merge` refuse outputs of another head.
    pub fn file_key(path: &Path) -> Result<String> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Ok(format!("{:016x}", fnv1a(&bytes, FNV_START)))
    }

    /// Loads a head file, checking that its tensors agree with its metadata.
    pub fn load(path: &Path) -> Result<Self> {
        let file = SafetensorsFile::read(path)?;
        let meta: HeadMeta = file
            .meta("cliplabel_head")
            .ok_or_else(|| file.error("not a cliplabel head (no `cliplabel_head` metadata)".into()))
            .and_then(|s| {
                serde_json::from_str(s).map_err(|e| file.error(format!("bad head metadata: {e}")))
            })?;
        let (w_shape, w) = file.f32_tensor("weight")?;
        let (b_shape, b) = file.f32_tensor("bias")?;
        let c = meta.classes.len();
        if w_shape != [c, meta.dim] || b_shape != [c] {
            return Err(Error::from(file.error(format!(
                "weight {w_shape:?} / bias {b_shape:?} do not match {c} classes of dimension {}",
                meta.dim
            ))));
        }
        let linear = LinearHead::new(Matrix::new(c, meta.dim, w)?, b)?;
        Ok(Head { linear, meta })
    }

    /// Refuses a head trained for another model or embedding size.
    pub fn check_model(&self, engine: &Engine, path: &Path) -> Result<()> {
        let features = self.features();
        let dim = engine.dim(features, true);
        if self.meta.model_fingerprint != engine.fingerprint || self.meta.dim != dim {
            return Err(Error::HeadModelMismatch {
                path: path.to_path_buf(),
                trained: Box::new(ModelIdentity {
                    model: self.meta.model.clone(),
                    fingerprint: self.meta.model_fingerprint.clone(),
                    features: self.meta.features,
                    dim: self.meta.dim,
                }),
                given: Box::new(ModelIdentity {
                    model: engine.source.clone(),
                    fingerprint: engine.fingerprint.clone(),
                    features,
                    dim,
                }),
            });
        }
        Ok(())
    }

    /// Which image features the head was trained on.
    pub fn features(&self) -> Features {
        self.meta.features
    }
}

impl Scorer for Head {
    fn classes(&self) -> &[String] {
        &self.meta.classes
    }

    fn score(&self, embeddings: &[f32]) -> crate::error::Result<Vec<Scores>> {
        let d = self.meta.dim;
        let mut rows = embeddings.to_vec();
        for r in rows.chunks_exact_mut(d) {
            l2_normalize(r);
        }
        let n = rows.len() / d;
        let x = Matrix::new(n, d, rows)?;
        let logits = self.linear.predict_logits(&x)?;
        let p = softmax_rows(&logits);
        Ok((0..n)
            .map(|i| Scores {
                probs: p.row(i).to_vec(),
                cosines: Vec::new(),
            })
            .collect())
    }

    fn features(&self) -> Features {
        Head::features(self)
    }
}
