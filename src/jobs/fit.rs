//! The `fit` command: embeds a labelled set through the embedding cache, trains a head on it,
//! and saves the head file (with its training metadata) and the list of images that failed.

use std::path::PathBuf;
use std::time::Instant;

use crate::classify::classes::ClassList;
use crate::classify::embedded::Embedded;
use crate::classify::head::{train, Head, HeadMeta, Method, Normalization, TrainOptions};
use crate::classify::templates::Templates;
use crate::classify::zeroshot::ZeroShotClassifier;
use crate::clip::engine::{Engine, Features};
use crate::error::{Error, Result};
use crate::images::dataset::LabelledSet;
use crate::jobs::cache::{EmbeddingCache, Embeddings};
use crate::jobs::tally::Tally;
use crate::jobs::writers::{failed_path, write_failure_list, Failure};

/// Options of a `fit` run.
#[derive(Debug, Clone)]
pub struct FitHeadOptions {
    /// The head file to write.
    pub out: PathBuf,
    /// How the head is trained.
    pub method: Method,
    /// Which image features it is trained on.
    pub features: Features,
    /// Cross-validation folds for choosing `C`.
    pub folds: usize,
    /// `C` values to try (`None`: the default coarse-to-fine search).
    pub c_grid: Option<Vec<f64>>,
    /// Weight classes inversely to their frequency.
    pub balanced: bool,
    /// Seed of the cross-validation folds.
    pub seed: u64,
    /// The prompt templates of the zero-shot part (used unless the method is the plain probe),
    /// and how they were given (recorded in the head file).
    pub templates: (Templates, String),
    /// The embedding cache directory, if any.
    pub cache_dir: Option<PathBuf>,
    /// Images per model batch.
    pub batch_size: usize,
}

impl FitHeadOptions {
    /// Refuses what cannot be trained before anything is loaded: an existing head file
    /// (without `force`) and pooled features with a method that needs the zero-shot weights.
    pub fn check(&self, force: bool) -> Result<()> {
        if self.out.exists() && !force {
            return Err(Error::OutputExists {
                path: self.out.clone(),
                remedy: crate::error::Remedy::Force,
            });
        }
        if self.features == Features::Pooled && self.method != Method::Probe {
            return Err(crate::error::OptionError::PooledWithZeroShot.into());
        }
        Ok(())
    }
}

/// What a `fit` run did.
#[derive(Debug, Clone)]
pub struct FitSummary {
    /// The method.
    pub method: Method,
    /// Images trained on.
    pub images: usize,
    /// Classes.
    pub classes: usize,
    /// Images encoded by the model (the rest came from the cache).
    pub encoded: usize,
    /// Images that failed (listed in [`FitSummary::failed_path`]).
    pub failed: usize,
    /// Where the failures are listed.
    pub failed_path: PathBuf,
    /// Chosen `C`.
    pub c: Option<f64>,
    /// Cross-validated accuracy at the chosen `C`, when cross-validation could run.
    pub cv_accuracy: Option<f64>,
    /// Folds used.
    pub folds: usize,
    /// Weight of the zero-shot logits (interpolation).
    pub alpha: Option<f64>,
    /// Seconds from the start of embedding to the saved head.
    pub seconds: f64,
}

/// Trains a head on `set` and writes it to `opts.out`, with `OUT.failed.jsonl` listing the
/// images that could not be read (each is also passed to `on_failure` as it is found).
pub fn fit_head(
    engine: &Engine,
    set: &LabelledSet,
    opts: &FitHeadOptions,
    on_failure: &mut dyn FnMut(&Failure),
) -> Result<FitSummary> {
    let start = Instant::now();
    let mut cache = EmbeddingCache::open(opts.cache_dir.as_deref(), engine, opts.features)?;
    let Embeddings {
        rows,
        failures,
        encoded,
    } = cache.embed(engine, &set.paths, opts.batch_size)?;
    for f in &failures {
        on_failure(f);
    }
    let dim = engine.dim(opts.features, true);
    let data = Embedded::new(rows, &set.labels, dim)?;
    Tally {
        inputs: set.paths.len(),
        done: data.labels.len(),
        failed: failures.len(),
        ..Tally::default()
    }
    .check("fit (training images)")?;
    let mut counts = vec![0usize; set.classes.len()];
    for &l in &data.labels {
        counts[l] += 1;
    }
    let (templates, template_spec) = &opts.templates;
    let zs = if opts.method == Method::Probe {
        None
    } else {
        let classes = ClassList::from_names(&set.classes)?;
        Some(ZeroShotClassifier::build(engine, &classes, templates)?)
    };
    let train_opts = TrainOptions {
        method: opts.method,
        folds: opts.folds,
        c_grid: opts.c_grid.clone(),
        balanced: opts.balanced,
        seed: opts.seed,
        fallback_c: None,
        ..TrainOptions::default()
    };
    let t = train(
        &data.x,
        &data.labels,
        &set.classes,
        zs.as_ref(),
        &train_opts,
    )?;
    let head = Head {
        linear: t.linear,
        meta: HeadMeta {
            classes: set.classes.clone(),
            model: engine.source.clone(),
            model_fingerprint: engine.fingerprint.clone(),
            dim,
            features: opts.features,
            normalization: Normalization::L2,
            method: opts.method,
            c: t.c,
            cv_accuracy: t.cv_accuracy,
            cv_folds: t.folds,
            alpha: t.alpha,
            examples_per_class: counts,
            templates: zs.as_ref().map(|_| template_spec.clone()),
            balanced: opts.balanced,
            seed: opts.seed,
        },
    };
    head.save(&opts.out)?;
    write_failure_list(&opts.out, &failures)?;
    Ok(FitSummary {
        method: opts.method,
        images: data.labels.len(),
        classes: set.classes.len(),
        encoded,
        failed: failures.len(),
        failed_path: failed_path(&opts.out),
        c: t.c,
        cv_accuracy: t.cv_accuracy,
        folds: t.folds,
        alpha: t.alpha,
        seconds: start.elapsed().as_secs_f64(),
    })
}
