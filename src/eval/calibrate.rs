//! The `calibrate` job: scores a labelled set with exactly the scorer `label` (zero-shot
//! prompts) or `predict` (a head) uses, identified by the same `RunInfo`, then calibrates the
//! abstention threshold and prediction sets (`classify::calibration`) and writes `CAL.json`,
//! its report (`CAL.report/`) and the images that failed (`CAL.failed.jsonl`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::classify::calibration::{calibrate, CalibrateOptions, Calibration, MadeFor};
use crate::classify::classes::ClassList;
use crate::classify::head::Head;
use crate::classify::scores::Scorer;
use crate::classify::templates::Templates;
use crate::classify::zeroshot::ZeroShotClassifier;
use crate::clip::engine::Engine;
use crate::error::{Error, Result};
use crate::eval::report::calibration::write_calibration_report;
use crate::images::dataset::LabelledSet;
use crate::jobs::cache::{EmbeddingCache, Embeddings};
use crate::jobs::label::{head_run_info, zero_shot_run_info};
use crate::jobs::tally::Tally;
use crate::jobs::writers::{failed_path, write_failure_list, Failure};

/// The scorer to calibrate: the one a later `label` or `predict` run will use.
pub enum CalibrationScorer<'a> {
    /// Zero-shot prompts, as `label --classes --templates` builds them.
    ZeroShot {
        /// The class list.
        classes: &'a ClassList,
        /// The prompt templates.
        templates: &'a Templates,
    },
    /// A head trained by `fit`, as `predict --head` uses it.
    Head {
        /// The head.
        head: &'a Head,
        /// The file it was read from (its key identifies the run).
        path: &'a Path,
    },
}

/// Options of [`calibrate_labelled_set`].
#[derive(Debug, Clone)]
pub struct CalibrateJobOptions {
    /// The calibration file to write (`CAL.json`).
    pub out: PathBuf,
    /// Images per model batch.
    pub batch_size: usize,
    /// The cache directory for class and image embeddings (`None`: no cache).
    pub cache_dir: Option<PathBuf>,
    /// Target, delta, per-class thresholds, sets.
    pub calibrate: CalibrateOptions,
}

/// What [`calibrate_labelled_set`] did.
#[derive(Debug, Clone)]
pub struct CalibrateSummary {
    /// The calibration written to `out`.
    pub calibration: Calibration,
    /// The report directory (`CAL.report/`: `calibration.md`, `calibration.svg`).
    pub report_dir: PathBuf,
    /// Labelled images scored.
    pub images: usize,
    /// Images that could not be read (listed in `failed_path`).
    pub failed: usize,
    /// The failure list (`CAL.failed.jsonl`, written only when something failed).
    pub failed_path: PathBuf,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// The report directory of a calibration file: `cal.json` -> `cal.report/`.
pub fn report_dir(out: &Path) -> PathBuf {
    let stem = out
        .file_stem()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "calibration".into());
    out.with_file_name(format!("{stem}.report"))
}

/// Scores `set` with `scorer`, calibrates, and writes the calibration file, its report and the
/// failure list. Failed images are passed to `on_failure` and left out of the calibration.
pub fn calibrate_labelled_set(
    engine: &Engine,
    scorer: CalibrationScorer<'_>,
    set: &LabelledSet,
    opts: &CalibrateJobOptions,
    on_failure: &mut dyn FnMut(&Failure),
) -> Result<CalibrateSummary> {
    let start = Instant::now();
    if opts.out.exists() && opts.out.is_dir() {
        return Err(Error::OutputIsDirectory {
            path: opts.out.clone(),
            example: "cal.json".into(),
        });
    }
    let (zs, info);
    let scorer: &dyn Scorer = match scorer {
        CalibrationScorer::ZeroShot { classes, templates } => {
            let (clf, _) = ZeroShotClassifier::load_or_build(
                engine,
                classes,
                templates,
                opts.cache_dir.as_deref(),
            )?;
            info = zero_shot_run_info(engine, classes, templates, &clf, 1);
            zs = clf;
            &zs
        }
        CalibrationScorer::Head { head, path } => {
            head.check_model(engine, path)?;
            info = head_run_info(engine, head, path, 1)?;
            head
        }
    };
    let classes = scorer.classes().to_vec();
    let truth = set.align_to(&classes, "the labelled set")?;
    let mut cache = EmbeddingCache::open(opts.cache_dir.as_deref(), engine, scorer.features())?;
    let Embeddings { rows, failures, .. } = cache.embed(engine, &set.paths, opts.batch_size)?;
    for f in &failures {
        on_failure(f);
    }
    let dim = engine.dim(scorer.features(), true);
    let mut values = Vec::new();
    let mut labels = Vec::new();
    for (row, &t) in rows.iter().zip(&truth) {
        if let Some(r) = row {
            values.extend_from_slice(r);
            labels.push(t);
        }
    }
    Tally {
        inputs: set.paths.len(),
        done: labels.len(),
        failed: failures.len(),
        ..Tally::default()
    }
    .check("calibrate")?;
    let mut probs: Vec<Vec<f32>> = Vec::with_capacity(labels.len());
    for chunk in values.chunks(dim.max(1) * 256) {
        probs.extend(scorer.score(chunk)?.into_iter().map(|s| s.probs));
    }
    let (cal, curves) = calibrate(
        &probs,
        &labels,
        MadeFor::from_run_info(&info),
        &opts.calibrate,
    )?;
    cal.save(&opts.out)?;
    let report = report_dir(&opts.out);
    write_calibration_report(&report, &cal, &curves)?;
    write_failure_list(&opts.out, &failures)?;
    Ok(CalibrateSummary {
        calibration: cal,
        report_dir: report,
        images: labels.len(),
        failed: failures.len(),
        failed_path: failed_path(&opts.out),
        seconds: start.elapsed().as_secs_f64(),
    })
}
