//! The labelling job shared by `label` (zero-shot) and `predict` (linear head): stream images
//! through the model in batches, score them, append rows, organise files, report progress.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::jobs::cache::EmbeddingCache;
use crate::clip::engine::{embed_images, Engine, Features};
use crate::error::{Error, Result};
use crate::jobs::writers::{FailedWriter, LabelRow, LabelWriter, UNKNOWN};
use crate::jobs::organize::{place, LinkMode};
use crate::util::atomic::{write_atomic, Failure};
use crate::classify::zeroshot::{top_k, Abstention, Scores, ZeroShotClassifier};

/// Anything that turns image embeddings into class probabilities.
pub trait Scorer: Sync {
    /// Class labels, in score order.
    fn classes(&self) -> &[String];
    /// Scores `n * dim` embedding values.
    fn score(&self, embeddings: &[f32]) -> Vec<Scores>;
    /// Which image features the scorer expects.
    fn features(&self) -> Features {
        Features::Projected
    }
}

impl Scorer for ZeroShotClassifier {
    fn classes(&self) -> &[String] {
        &self.classes
    }
    fn score(&self, embeddings: &[f32]) -> Vec<Scores> {
        ZeroShotClassifier::score(self, embeddings)
    }
}

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
    /// No progress output.
    pub quiet: bool,
}

/// What identifies a run, stored as `OUT.run.json` so that `--resume` (and merging) can refuse
/// to mix outputs of different models or class lists.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunInfo {
    /// The model as given.
    pub model: String,
    /// Fingerprint of the model files.
    pub model_fingerprint: String,
    /// The scorer: `zero-shot` or `head`.
    pub method: String,
    /// A key of the classifier (classes, prompts, or head weights).
    pub scorer_key: String,
    /// Class labels in score order.
    pub classes: Vec<String>,
    /// Labels per row.
    pub top_k: usize,
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
    /// Images that failed.
    pub failed: usize,
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

/// Turns scores into an output row.
pub fn make_row(
    path: &str,
    scores: &Scores,
    classes: &[String],
    k: usize,
    abstention: &Abstention,
) -> LabelRow {
    let top = top_k(&scores.probs, k.max(1));
    let (best, p) = top.first().copied().unwrap_or((0, 0.0));
    let abstained = abstention.abstains(&scores.probs);
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
    }
}

struct Progress {
    bar: Option<indicatif::ProgressBar>,
    quiet: bool,
    last: Instant,
    start: Instant,
    total: usize,
    done: usize,
}

impl Progress {
    fn new(total: usize, quiet: bool) -> Self {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let b = indicatif::ProgressBar::new(total as u64);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:40} {pos}/{len} images  {per_sec}  ETA {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b
        });
        Progress {
            bar,
            quiet,
            last: Instant::now(),
            start: Instant::now(),
            total,
            done: 0,
        }
    }

    fn add(&mut self, n: usize) {
        self.done += n;
        if let Some(b) = &self.bar {
            b.inc(n as u64);
        } else if !self.quiet
            && (self.last.elapsed() >= Duration::from_secs(10) || self.done == self.total)
        {
            self.last = Instant::now();
            let rate = self.done as f64 / self.start.elapsed().as_secs_f64().max(1e-9);
            let eta = (self.total - self.done) as f64 / rate.max(1e-9);
            eprintln!(
                "{}/{} images, {rate:.1} images/s, ETA {eta:.0} s",
                self.done, self.total
            );
        }
    }

    fn warn(&self, msg: &str) {
        if self.quiet {
            return;
        }
        match &self.bar {
            Some(b) => b.println(msg),
            None => eprintln!("{msg}"),
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
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
) -> Result<Summary> {
    let start = Instant::now();
    let classes = scorer.classes();
    if opts.top_k == 0 {
        return Err(Error::Input("--top-k must be at least 1".into()));
    }
    let k = opts.top_k.min(classes.len());
    if (opts.abstention.min_score.is_some() || opts.abstention.min_margin.is_some())
        && classes.iter().any(|c| c.eq_ignore_ascii_case(UNKNOWN))
    {
        return Err(Error::Input(format!(
            "a class is named `{UNKNOWN}`, which is also the abstention label: rename it or drop --min-score/--min-margin"
        )));
    }
    let info_path = run_info_path(&opts.out);
    if opts.resume && opts.out.exists() {
        if let Ok(bytes) = std::fs::read(&info_path) {
            let old: RunInfo = serde_json::from_slice(&bytes).map_err(|source| Error::Json {
                path: info_path.clone(),
                source,
            })?;
            let mut now = info.clone();
            now.top_k = k;
            if old != now {
                return Err(Error::Output {
                    path: opts.out.clone(),
                    message: format!(
                        "cannot resume: it was written by a different run (model, classes, prompts or --top-k differ; see {}); use --force to start over",
                        info_path.display()
                    ),
                });
            }
        }
    }
    let (mut writer, done) = LabelWriter::open(&opts.out, k, opts.resume, opts.force)?;
    let mut stored = info.clone();
    stored.top_k = k;
    let json = serde_json::to_vec_pretty(&stored).map_err(|e| Error::Output {
        path: info_path.clone(),
        message: e.to_string(),
    })?;
    write_atomic(&info_path, &json)?;
    let mut failed = FailedWriter::new(&opts.out)?;
    let total = paths.len();
    let todo: Vec<PathBuf> = paths
        .into_iter()
        .filter(|p| !done.contains(&p.display().to_string()))
        .collect();
    let mut summary = Summary {
        skipped: total - todo.len(),
        ..Summary::default()
    };
    let mut progress = Progress::new(todo.len(), opts.quiet);
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
                    path: p.display().to_string(),
                    error: e.clone(),
                })
                .collect();
            let scores = if ok.is_empty() {
                Vec::new()
            } else {
                scorer.score(values)
            };
            let mut rows = Vec::with_capacity(ok.len());
            for (p, s) in ok.iter().zip(&scores) {
                let row = make_row(&p.display().to_string(), s, classes, k, &opts.abstention);
                if let Some((dir, mode)) = &opts.organize {
                    if let Err(e) = place(p, dir, &row.label, *mode) {
                        failures.push(Failure {
                            path: p.display().to_string(),
                            error: format!("labelled `{}` but could not organise: {e}", row.label),
                        });
                    }
                }
                rows.push(row);
            }
            for f in &failures {
                progress.warn(&format!("warning: {}: {}", f.path, f.error));
            }
            summary.labelled += rows.len();
            summary.abstained += rows.iter().filter(|r| r.abstained).count();
            writer.write_batch(&rows)?;
            failed.write(&failures)?;
            progress.add(ok.len() + failed_now.len());
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
    embed_images(engine, todo, opts.batch_size, features, |batch| {
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
    })?;
    if let Some(c) = cache {
        for (p, row) in &fresh {
            c.insert(p, row);
        }
        c.save()?;
    }
    progress.finish();
    summary.failed = failed.count();
    summary.cached = n_cached;
    summary.seconds = start.elapsed().as_secs_f64();
    Ok(summary)
}
