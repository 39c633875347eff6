//! The labelling job shared by `label` (zero-shot) and `predict` (linear head): stream images
//! through the model in batches, score them, append rows, organise files, report progress.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::classify::calibration::{Calibration, MadeFor};
use crate::classify::classes::ClassList;
use crate::classify::head::Head;
/// The run identity is `classify/`'s (a calibration is checked against it); re-exported here
/// where `OUT.run.json` is written.
pub use crate::classify::run::{RunInfo, RunMethod};
use crate::classify::scores::{top_k, Abstention, Scorer, Scores};
use crate::classify::templates::Templates;
use crate::classify::zeroshot::ZeroShotClassifier;
use crate::clip::engine::Engine;
use crate::error::{Error, Result};
use crate::jobs::cache::EmbeddingCache;
use crate::jobs::organize::{place, LinkMode};
use crate::jobs::pipeline::embed_images;
use crate::jobs::tally::{stopped, Tally};
use crate::jobs::writers::Failure;
use crate::jobs::writers::{FailedWriter, LabelRow, LabelWriter, ResumeError, UNKNOWN};
use crate::util::atomic::write_atomic;
use crate::util::pathtext::path_text;

/// Options of a labelling run.
#[derive(Debug, Clone)]
pub struct JobOptions {
    /// The output file (`.csv` or `.jsonl`).
    pub out: PathBuf,
    /// How many labels per row.
    pub top_k: usize,
    /// When to write `unknown`.
    pub abstention: Abstention,
    /// Images per model batch.
    pub batch_size: usize,
    /// Continue an existing output.
    pub resume: bool,
    /// Overwrite an existing output.
    pub force: bool,
    /// Lay images out as `DIR/<label>/<file>`.
    pub organize: Option<(PathBuf, LinkMode)>,
    /// A calibration (`--calibration`) and the file it came from: rows below its threshold
    /// say `unknown`, and rows carry its prediction set. The run refuses a calibration made
    /// for another model, scorer or class list.
    pub calibration: Option<(Calibration, PathBuf)>,
}

/// The path of the run description for an output.
pub fn run_info_path(out: &Path) -> PathBuf {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    out.with_file_name(format!("{name}.run.json"))
}

/// Counts and timing of a finished run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    /// Images labelled in this run (abstentions included).
    pub labelled: usize,
    /// Of those, labelled `unknown`.
    pub abstained: usize,
    /// Images that failed (listed with the reason in the failure file).
    pub failed: usize,
    /// Labelled images that `--organize` could not place (also listed in the failure file).
    pub unplaced: usize,
    /// Images skipped because the output already had them (`--resume`).
    pub skipped: usize,
    /// Images scored from the embedding cache without running the model.
    pub cached: usize,
    /// Wall-clock seconds.
    pub seconds: f64,
}

impl Summary {
    /// Images per second over the run.
    pub fn rate(&self) -> f64 {
        (self.labelled + self.failed) as f64 / self.seconds.max(1e-9)
    }
}

/// Turns scores into an output row. With a calibration, the row also abstains below the
/// calibrated threshold and carries the prediction set (when sets were calibrated).
pub fn make_row(
    path: &str,
    scores: &Scores,
    classes: &[String],
    k: usize,
    abstention: &Abstention,
    calibration: Option<&Calibration>,
) -> LabelRow {
    let top = top_k(&scores.probs, k.max(1));
    let (best, p) = top.first().copied().unwrap_or((0, 0.0));
    let decision = calibration.map(|c| c.decide(&scores.probs));
    let abstained =
        abstention.abstains(&scores.probs) || decision.as_ref().is_some_and(|d| d.abstain);
    let set = decision
        .and_then(|d| d.set)
        .map(|s| s.into_iter().map(|i| classes[i].clone()).collect());
    LabelRow {
        path: path.to_string(),
        label: if abstained {
            UNKNOWN.to_string()
        } else {
            classes[best].clone()
        },
        score: p,
        top: top.iter().map(|&(i, s)| (classes[i].clone(), s)).collect(),
        cosine: scores.cosines.get(best).copied(),
        abstained,
        set,
    }
}

/// What a labelling run reports as it goes, for a progress display (the library prints
/// nothing; the binary draws a bar or prints lines).
#[derive(Debug)]
pub enum JobEvent<'a> {
    /// Labelling starts, with this many images to do (those already in a resumed output are
    /// not counted).
    Started {
        /// Images to label in this run.
        total: usize,
    },
    /// An image failed, or was labelled but could not be organised; it is listed in the
    /// failure file.
    Failed(&'a Failure),
    /// This many more images are done (labelled or failed).
    Advanced(usize),
    /// Every image is done and the cache is saved.
    Finished,
}

/// Labels `paths` with `scorer`, writing rows to `opts.out` as it goes. With an embedding
/// `cache`, cached images skip the model and new embeddings are added to it.
pub fn run_job(
    engine: &Engine,
    scorer: &dyn Scorer,
    info: &RunInfo,
    paths: Vec<PathBuf>,
    opts: &JobOptions,
    cache: Option<&mut EmbeddingCache>,
    progress: &mut dyn FnMut(JobEvent<'_>),
) -> Result<Summary> {
    let start = Instant::now();
    let classes = scorer.classes();
    if opts.top_k == 0 {
        return Err(crate::error::OptionError::TopKZero.into());
    }
    let k = opts.top_k.min(classes.len());
    let calibration = match &opts.calibration {
        Some((cal, path)) => {
            cal.check(&MadeFor::from_run_info(info), path)?;
            Some(cal)
        }
        None => None,
    };
    let with_set = calibration.is_some_and(|c| c.sets.is_some());
    if (opts.abstention.min_score.is_some()
        || opts.abstention.min_margin.is_some()
        || calibration.is_some())
        && classes.iter().any(|c| c.eq_ignore_ascii_case(UNKNOWN))
    {
        return Err(Error::ClassIsAbstentionLabel {
            name: UNKNOWN.to_string(),
        });
    }
    let info_path = run_info_path(&opts.out);
    if opts.resume && opts.out.exists() {
        if !info_path.exists() {
            return Err(ResumeError::NoRunInfo {
                path: opts.out.clone(),
                run_info: info_path,
            }
            .into());
        }
        if let Ok(bytes) = std::fs::read(&info_path) {
            let old: RunInfo = serde_json::from_slice(&bytes).map_err(|source| Error::Json {
                path: info_path.clone(),
                source,
            })?;
            let mut now = info.clone();
            now.top_k = k;
            if old != now {
                return Err(ResumeError::DifferentRun {
                    path: opts.out.clone(),
                    run_info: info_path,
                }
                .into());
            }
        }
    }
    let (mut writer, done) =
        LabelWriter::open_with_set(&opts.out, k, opts.resume, opts.force, with_set)?;
    let mut stored = info.clone();
    stored.top_k = k;
    let json = serde_json::to_vec_pretty(&stored).map_err(|source| Error::Serialize {
        path: info_path.clone(),
        source,
    })?;
    write_atomic(&info_path, &json).map_err(|e| Error::io(&info_path, e))?;
    let mut failed = FailedWriter::new(&opts.out)?;
    let total = paths.len();
    let todo: Vec<PathBuf> = paths
        .into_iter()
        .filter(|p| !done.contains(&path_text(p)))
        .collect();
    let mut summary = Summary {
        skipped: total - todo.len(),
        ..Summary::default()
    };
    let mut tally = Tally::new(total);
    tally.skipped = summary.skipped;
    progress(JobEvent::Started { total: todo.len() });
    let features = scorer.features();
    let dim = engine.dim(features, true);
    // Images whose embeddings are cached are scored without running the model.
    let (cached, todo): (Vec<PathBuf>, Vec<PathBuf>) = match cache.as_deref() {
        Some(c) => todo.into_iter().partition(|p| c.get(p).is_some()),
        None => (Vec::new(), todo),
    };
    let mut handle =
        |ok: &[PathBuf], values: &[f32], failed_now: &[(PathBuf, String)]| -> Result<()> {
            let mut failures: Vec<Failure> = failed_now
                .iter()
                .map(|(p, e)| Failure {
                    path: path_text(p),
                    error: e.clone(),
                })
                .collect();
            let scores = if ok.is_empty() {
                Vec::new()
            } else {
                scorer.score(values)?
            };
            if scores.len() != ok.len() {
                return Err(Error::ScorerCount {
                    results: scores.len(),
                    images: ok.len(),
                });
            }
            let mut rows = Vec::with_capacity(ok.len());
            for (p, s) in ok.iter().zip(&scores) {
                let row = make_row(&path_text(p), s, classes, k, &opts.abstention, calibration);
                if let Some((dir, mode)) = &opts.organize {
                    if let Err(e) = place(p, dir, &row.label, *mode) {
                        summary.unplaced += 1;
                        failures.push(Failure {
                            path: path_text(p),
                            error: format!("labelled `{}` but could not organise: {e}", row.label),
                        });
                    }
                }
                rows.push(row);
            }
            for f in &failures {
                progress(JobEvent::Failed(f));
            }
            summary.labelled += rows.len();
            summary.abstained += rows.iter().filter(|r| r.abstained).count();
            summary.failed += failed_now.len();
            writer.write_batch(&rows)?;
            failed.write(&failures)?;
            progress(JobEvent::Advanced(ok.len() + failed_now.len()));
            Ok(())
        };
    let n_cached = cached.len();
    if let Some(c) = cache.as_deref() {
        for chunk in cached.chunks(opts.batch_size.max(1)) {
            let mut values = Vec::with_capacity(chunk.len() * dim);
            for p in chunk {
                values.extend_from_slice(c.get(p).unwrap_or(&[]));
            }
            handle(chunk, &values, &[])?;
        }
    }
    let mut fresh: Vec<(PathBuf, Vec<f32>)> = Vec::new();
    let keep = cache.is_some();
    let run = embed_images(engine, todo, opts.batch_size, features, |batch| {
        let values: Vec<f32> = match &batch.embeddings {
            Some(t) => t.flatten_all()?.to_vec1()?,
            None => Vec::new(),
        };
        if keep {
            fresh.extend(
                batch
                    .ok
                    .iter()
                    .cloned()
                    .zip(values.chunks_exact(dim).map(<[f32]>::to_vec)),
            );
        }
        handle(&batch.ok, &values, &batch.failed)
    });
    if let Err(e) = run {
        // Rows written so far stay in the output; name what was not done.
        let done = summary.skipped + summary.labelled + summary.failed;
        return Err(stopped(done, total, e));
    }
    if let Some(c) = cache {
        for (p, row) in &fresh {
            c.insert(p, row);
        }
        c.save()?;
    }
    progress(JobEvent::Finished);
    summary.cached = n_cached;
    debug_assert_eq!(failed.count(), summary.failed + summary.unplaced);
    tally.done = summary.labelled;
    tally.abstained = summary.abstained;
    tally.failed = summary.failed;
    tally.check(match info.method {
        RunMethod::Head => "predict",
        RunMethod::ZeroShot => "label",
    })?;
    summary.seconds = start.elapsed().as_secs_f64();
    Ok(summary)
}

/// `label`: labels `paths` zero-shot with prompts made of `classes` and `templates`. The class
/// embeddings are loaded from, or saved to, `cache_dir` when one is given.
pub fn label_zero_shot(
    engine: &Engine,
    classes: &ClassList,
    templates: &Templates,
    cache_dir: Option<&Path>,
    paths: Vec<PathBuf>,
    opts: &JobOptions,
    progress: &mut dyn FnMut(JobEvent<'_>),
) -> Result<Summary> {
    let (clf, _cached) = ZeroShotClassifier::load_or_build(engine, classes, templates, cache_dir)?;
    let info = zero_shot_run_info(engine, classes, templates, &clf, opts.top_k);
    run_job(engine, &clf, &info, paths, opts, None, progress)
}

/// `predict`: labels `paths` with `head` (read from `head_path`), after checking that it was
/// trained for this engine's model. Image embeddings are read from and added to the embedding
/// cache in `cache_dir` when one is given.
pub fn predict_with_head(
    engine: &Engine,
    head: &Head,
    head_path: &Path,
    cache_dir: Option<&Path>,
    paths: Vec<PathBuf>,
    opts: &JobOptions,
    progress: &mut dyn FnMut(JobEvent<'_>),
) -> Result<Summary> {
    head.check_model(engine, head_path)?;
    let info = head_run_info(engine, head, head_path, opts.top_k)?;
    let mut cache = match cache_dir {
        Some(d) => Some(EmbeddingCache::open(Some(d), engine, head.features())?),
        None => None,
    };
    run_job(engine, head, &info, paths, opts, cache.as_mut(), progress)
}

/// The identity of a zero-shot run (`label`), as `OUT.run.json` and calibration files record it.
pub fn zero_shot_run_info(
    engine: &Engine,
    classes: &ClassList,
    templates: &Templates,
    clf: &ZeroShotClassifier,
    top_k: usize,
) -> RunInfo {
    RunInfo {
        model: engine.source.clone(),
        model_fingerprint: engine.run_fingerprint.clone(),
        method: RunMethod::ZeroShot,
        scorer_key: ZeroShotClassifier::cache_key(engine, classes, templates),
        classes: clf.classes.clone(),
        top_k,
    }
}

/// The identity of a head run (`predict`), as `OUT.run.json` and calibration files record it.
pub fn head_run_info(
    engine: &Engine,
    head: &Head,
    head_path: &Path,
    top_k: usize,
) -> Result<RunInfo> {
    Ok(RunInfo {
        model: engine.source.clone(),
        model_fingerprint: engine.run_fingerprint.clone(),
        method: RunMethod::Head,
        scorer_key: Head::file_key(head_path)?,
        classes: head.meta.classes.clone(),
        top_k,
    })
}
