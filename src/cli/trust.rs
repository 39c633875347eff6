//! Wiring of the trust commands: `calibrate`, `review`, and the `--calibration` / `--format`
//! options of `label` and `predict`. Flags in, library options out, one library call each.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;

use cliplabel::classify::calibration::{CalibrateOptions, Calibration};
use cliplabel::eval::calibrate::{calibrate_labelled_set, CalibrateJobOptions, CalibrationScorer};
use cliplabel::jobs::exports::{export, ExportFormat, ExportOptions, Origin};
use cliplabel::jobs::rows::read_label_rows;
use cliplabel::jobs::writers::Failure;
use cliplabel::review::{write_review, ReviewOptions};
use cliplabel::Head;

use crate::cli::env::Env;
use crate::{probability, ClassArgs, ModelArgs};

/// The annotation tool formats of `--format`.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum FormatArg {
    /// Label Studio: tasks.json (predictions or annotations) + config.xml.
    Labelstudio,
    /// CVAT for images 1.1: annotations.xml.
    Cvat,
    /// FiftyOne image classification dataset: labels.json + data/.
    Fiftyone,
}

impl FormatArg {
    fn format(self) -> ExportFormat {
        match self {
            FormatArg::Labelstudio => ExportFormat::LabelStudio,
            FormatArg::Cvat => ExportFormat::Cvat,
            FormatArg::Fiftyone => ExportFormat::FiftyOne,
        }
    }
    fn name(self) -> &'static str {
        match self {
            FormatArg::Labelstudio => "labelstudio",
            FormatArg::Cvat => "cvat",
            FormatArg::Fiftyone => "fiftyone",
        }
    }
}

/// `--calibration` and `--format` on `label` and `predict`.
#[derive(Args)]
#[command(next_help_heading = "Calibration and export")]
pub struct TrustArgs {
    /// A calibration file written by `cliplabel calibrate` for this model and class list (or
    /// head): rows whose confidence is below its threshold say `unknown`, and rows gain the
    /// prediction set (CSV column `set`, JSONL array `set`) when it calibrated sets. A file
    /// made for another model, class list, prompts or head is refused.
    #[arg(long, value_name = "CAL.json")]
    pub calibration: Option<PathBuf>,
    /// Also export the labels for an annotation tool, into OUT's name with the format as
    /// extension (labels.csv -> labels.labelstudio/), or into --export-dir.
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub format: Option<FormatArg>,
    /// Where --format writes (default: beside OUT, see --format).
    #[arg(long, value_name = "DIR", requires = "format")]
    pub export_dir: Option<PathBuf>,
}

impl TrustArgs {
    /// Reads the calibration file, if one was given (checked against the run by the library).
    pub fn calibration(&self) -> anyhow::Result<Option<(Calibration, PathBuf)>> {
        Ok(match &self.calibration {
            Some(p) => Some((Calibration::load(p)?, p.clone())),
            None => None,
        })
    }

    /// After a run that wrote `out`: exports it with `--format`. Returns whether every row
    /// was exported.
    pub fn export_after(&self, out: &Path, model: &str, quiet: bool) -> anyhow::Result<bool> {
        let Some(f) = self.format else {
            return Ok(true);
        };
        let dir = self
            .export_dir
            .clone()
            .unwrap_or_else(|| out.with_extension(f.name()));
        let opts = ExportOptions {
            model_version: model.to_string(),
            base_dir: std::env::current_dir()?,
            origin: Origin::Model,
            ..ExportOptions::default()
        };
        run_export(out, f, &dir, &opts, quiet)
    }
}

fn run_export(
    rows_path: &Path,
    f: FormatArg,
    dir: &Path,
    opts: &ExportOptions,
    quiet: bool,
) -> anyhow::Result<bool> {
    let rows = read_label_rows(rows_path)?;
    let s = export(&rows, f.format(), dir, opts)?;
    print_failures(&s.failed);
    if !quiet {
        eprintln!(
            "exported {} rows ({} unlabelled), {} not exported, as {} -> {}",
            s.exported,
            s.unlabelled,
            s.failed.len(),
            f.name(),
            dir.display()
        );
    }
    Ok(s.failed.is_empty())
}

fn print_failures(failed: &[Failure]) {
    for f in failed {
        eprintln!("error: {}: {}", f.path, f.error);
    }
}

const CALIBRATE_ABOUT: &str = "\
Measure, on labelled images, the confidence threshold that gives the precision you ask for.

The images are scored with exactly the scorer `label` (--classes/--templates) or `predict`
(--head) uses. With probability at least 1 - delta over the choice of the labelled set, the
images a run with --calibration CAL.json accepts (does not label `unknown`) on data like it are
at least --target-precision precise (Learn then Test: Clopper-Pearson bounds, fixed-sequence
testing). --sets L also calibrates split-conformal prediction sets that contain the true class
for at least L of images. Writes CAL.json, a report CAL.report/ (calibration.md, calibration.svg:
precision and coverage against the threshold, reliability diagram) and CAL.failed.jsonl listing
images that could not be read. Refuses, with the reason, a labelled set too small for the target.";

/// `cliplabel calibrate`.
#[derive(Args)]
#[command(long_about = CALIBRATE_ABOUT)]
pub struct CalibrateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Calibrate a head trained by `fit` (for `predict --head`) instead of zero-shot prompts.
    #[arg(long, value_name = "HEAD.safetensors", conflicts_with_all = ["classes", "class"])]
    head: Option<PathBuf>,
    /// Class list file (zero-shot; as for `label`).
    #[arg(long, value_name = "FILE", conflicts_with = "class")]
    classes: Option<PathBuf>,
    /// A class name (zero-shot; repeat for each class).
    #[arg(long, value_name = "NAME")]
    class: Vec<String>,
    #[command(flatten)]
    templates: crate::TemplateArgs,
    #[command(flatten)]
    cache: crate::CacheArgs,
    /// Labelled images in the ImageFolder layout (DIR/<class>/<image>).
    #[arg(
        long,
        value_name = "DIR",
        required_unless_present = "data_csv",
        conflicts_with = "data_csv"
    )]
    data: Option<PathBuf>,
    /// Labelled images as a CSV with `path,label` columns.
    #[arg(long, value_name = "FILE")]
    data_csv: Option<PathBuf>,
    /// Precision the accepted images must reach.
    #[arg(long, value_name = "P", value_parser = probability("--target-precision"))]
    target_precision: f32,
    /// Allowed probability that the guarantee fails.
    #[arg(long, default_value_t = 0.1, value_name = "D", value_parser = probability("--delta"))]
    delta: f32,
    /// Also give each predicted class with enough labelled images its own threshold.
    #[arg(long)]
    per_class: bool,
    /// Calibrate prediction sets containing the true class for at least this share of images.
    #[arg(long, value_name = "L", value_parser = probability("--sets"))]
    sets: Option<f32>,
    /// The calibration file to write (overwritten).
    #[arg(long, short = 'o', value_name = "CAL.json")]
    out: PathBuf,
    /// No progress or summary.
    #[arg(long, short = 'q')]
    quiet: bool,
}

impl CalibrateArgs {
    /// `--threads`, for the thread pool set up before the command runs.
    pub fn model_threads(&self) -> Option<usize> {
        self.model.threads
    }
}

pub fn run_calibrate(a: CalibrateArgs, env: &Env) -> anyhow::Result<ExitCode> {
    let set = crate::labelled_set(&a.data, &a.data_csv, "--data")?;
    let engine = a.model.engine(env)?;
    let opts = CalibrateJobOptions {
        out: a.out.clone(),
        batch_size: a.model.batch_size,
        cache_dir: a.cache.dir(env),
        calibrate: CalibrateOptions {
            target_precision: a.target_precision as f64,
            delta: a.delta as f64,
            per_class: a.per_class,
            sets: a.sets.map(f64::from),
            ..CalibrateOptions::default()
        },
    };
    let quiet = a.quiet;
    let mut on_failure = |f: &Failure| {
        if !quiet {
            eprintln!("warning: {}: {}", f.path, f.error)
        }
    };
    let head;
    let (classes, templates);
    let scorer = match &a.head {
        Some(p) => {
            head = Head::load(p)?;
            CalibrationScorer::Head {
                head: &head,
                path: p,
            }
        }
        None => {
            let ca = ClassArgs {
                classes: a.classes.clone(),
                class: a.class.clone(),
                templates: a.templates.clone(),
                cache: a.cache.clone(),
            };
            classes = ca.class_list()?;
            templates = ca.templates()?;
            CalibrationScorer::ZeroShot {
                classes: &classes,
                templates: &templates,
            }
        }
    };
    let s = calibrate_labelled_set(&engine, scorer, &set, &opts, &mut on_failure)?;
    if !quiet {
        let t = &s.calibration.threshold;
        eprintln!(
            "calibrated on {} images: threshold {:.4}, accepts {:.1}% of them at precision {:.1}% \
             (target {}, delta {}), {:.1} s -> {} (report in {})",
            s.images,
            t.threshold,
            100.0 * t.coverage,
            100.0 * t.precision,
            a.target_precision,
            a.delta,
            s.seconds,
            a.out.display(),
            s.report_dir.display()
        );
    }
    if s.failed > 0 {
        eprintln!(
            "{} labelled images could not be read and were left out: listed in {}",
            s.failed,
            s.failed_path.display()
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

const REVIEW_ABOUT: &str = "\
Write a static review page for a label output (no server: open DIR/index.html in a browser).

Cards are sorted by confidence, abstentions first; Enter accepts, 1-9 picks from the top-k,
/ types a class, x marks \"not any class\", u undoes. Decisions are kept in the browser's local
storage; Export CSV downloads path,label rows for `cliplabel fit --train-csv`.

With --format, the input is instead that exported corrections CSV (path,label), and --out
receives it in the annotation tool's format (the decisions as annotations, not predictions).";

/// `cliplabel review`.
#[derive(Args)]
#[command(long_about = REVIEW_ABOUT)]
pub struct ReviewArgs {
    /// A `label`/`predict` output (.csv or .jsonl), or with --format a corrections CSV.
    #[arg(value_name = "OUT.csv|OUT.jsonl")]
    input: PathBuf,
    /// The page's directory (index.html, review.js, review.css, data.js, thumbs/), or with
    /// --format the export directory.
    #[arg(long, short = 'o', value_name = "DIR")]
    out: PathBuf,
    /// Export the reviewed decisions (the corrections CSV) for an annotation tool instead of
    /// writing a page.
    #[arg(long, value_enum, value_name = "FORMAT")]
    format: Option<FormatArg>,
    /// Longest side of a thumbnail in pixels.
    #[arg(long, default_value_t = 256, value_name = "PX")]
    thumb_size: u32,
    /// A class list file: the classes offered when correcting (default: those in the rows).
    #[arg(long, value_name = "FILE")]
    classes: Option<PathBuf>,
    /// No summary.
    #[arg(long, short = 'q')]
    quiet: bool,
}

pub fn run_review(a: ReviewArgs) -> anyhow::Result<ExitCode> {
    let classes = match &a.classes {
        Some(f) => Some(
            cliplabel::ClassList::from_file(f)?
                .names()
                .into_iter()
                .map(String::from)
                .collect(),
        ),
        None => None,
    };
    if let Some(f) = a.format {
        let opts = ExportOptions {
            classes,
            base_dir: std::env::current_dir()?,
            origin: Origin::Review,
            ..ExportOptions::default()
        };
        let ok = run_export(&a.input, f, &a.out, &opts, a.quiet)?;
        return Ok(if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        });
    }
    let opts = ReviewOptions {
        thumb_size: a.thumb_size,
        base_dir: std::env::current_dir()?,
        classes,
        ..ReviewOptions::default()
    };
    let s = write_review(&a.input, &a.out, &opts, &|_, _| {})?;
    for f in &s.thumb_failures {
        eprintln!("warning: no thumbnail for {}: {}", f.path, f.error);
    }
    if !a.quiet {
        eprintln!(
            "{} cards ({} abstained), {} thumbnails, {} without -> {}",
            s.cards,
            s.abstained,
            s.thumbnails,
            s.thumb_failures.len(),
            s.index.display()
        );
    }
    Ok(if s.thumb_failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
