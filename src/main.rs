//! The `cliplabel` command line: parses the arguments, reads the environment once, builds the
//! library's option structs, calls the library for each command, prints, and maps errors to
//! exit codes. The progress display and the environment live in `cli/`.

mod cli;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use cliplabel::images::limits::DEFAULT_MAX_PIXELS;
use cliplabel::jobs::cluster::merge::MergedKind;
use cliplabel::jobs::writers::failed_path;
use cliplabel::{
    collect_images, compare_sets, embed_image_files, embed_text_file, fit_head, label_zero_shot,
    merge, predict_with_head, summary_table, write_report, Abstention, ClassList, CompareOptions,
    CompareSets, EmbedEvent, EmbedOptions, Engine, EngineOptions, Features, FitHeadOptions, Head,
    JobOptions, LabelledSet, LinkMode, MergeOptions, Method, Selection, Shard, ShardRequest, Shots,
    Summary, Templates,
};

use cli::env::Env;
use cli::progress::Progress;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "cliplabel", version, about = "Label images with CLIP: zero-shot from text prompts, or with a linear head trained on a few examples.", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Label images zero-shot: score each image against prompts built from class names.
    Label(LabelArgs),
    /// Train a linear head on CLIP image embeddings of labelled images (ImageFolder or CSV).
    Fit(FitArgs),
    /// Label images with a head trained by `fit` (same outputs and options as `label`).
    Predict(PredictArgs),
    /// Compare zero-shot prompts with heads trained on k images per class, on a labelled test set.
    Compare(CompareArgs),
    /// Audit a labelled set: likely mislabels, exact and near-duplicates, train/test leakage and
    /// outliers, written to OUT/report.md and one CSV per finding.
    #[command(long_about = AUDIT_ABOUT)]
    Audit(AuditArgs),
    /// Compute CLIP embeddings of images or prompts into a safetensors file (+ JSON sidecar).
    Embed(EmbedArgs),
    /// Merge a sharded run's outputs (OUT.shard-I-of-N.*) into OUT, checking that every image
    /// was processed exactly once.
    #[command(long_about = MERGE_ABOUT)]
    Merge(MergeArgs),
    /// Measure, on labelled images, the confidence threshold that reaches a target precision
    /// (and calibrated prediction sets); writes CAL.json for `label`/`predict --calibration`.
    Calibrate(cli::trust::CalibrateArgs),
    /// Write a static review page for a label output, or export reviewed decisions (--format).
    Review(cli::trust::ReviewArgs),
}

#[derive(Args)]
struct ClassArgs {
    /// Class list file: one class per line, `#` comments, `name: synonym | synonym` for several
    /// prompt names of one class.
    #[arg(
        long,
        value_name = "FILE",
        required_unless_present = "class",
        conflicts_with = "class"
    )]
    classes: Option<PathBuf>,
    /// A class name (repeat for each class; at least two).
    #[arg(long, value_name = "NAME")]
    class: Vec<String>,
    #[command(flatten)]
    templates: TemplateArgs,
    #[command(flatten)]
    cache: CacheArgs,
}

impl ClassArgs {
    fn class_list(&self) -> anyhow::Result<ClassList> {
        Ok(match &self.classes {
            Some(f) => ClassList::from_file(f)?,
            None => ClassList::from_names(&self.class)?,
        })
    }
    fn templates(&self) -> anyhow::Result<Templates> {
        Ok(self.templates.resolve()?.0)
    }
}

#[derive(Args)]
struct OutputArgs {
    /// Output file: .csv (header path,label,score,label2,score2,...,predicted,cosine) or .jsonl.
    /// Rows are appended and flushed per batch; failures go to OUT.failed.jsonl.
    #[arg(long, short = 'o', value_name = "OUT.csv|OUT.jsonl")]
    out: PathBuf,
    /// Labels (with probabilities) per row.
    #[arg(long, default_value_t = 1, value_name = "K")]
    top_k: usize,
    /// Label `unknown` when the top-1 probability is below P.
    #[arg(long, value_name = "P", value_parser = probability("--min-score"))]
    min_score: Option<f32>,
    /// Label `unknown` when the top-1 probability minus the top-2 is below D.
    #[arg(long, value_name = "D", value_parser = probability("--min-margin"))]
    min_margin: Option<f32>,
    /// Continue an interrupted run: label only images not yet in OUT.
    #[arg(long)]
    resume: bool,
    /// Overwrite an existing OUT.
    #[arg(long, conflicts_with = "resume")]
    force: bool,
    /// Also lay the images out as DIR/<label>/<file> (unknown/ for abstentions); never overwrites.
    #[arg(long, value_name = "DIR")]
    organize: Option<PathBuf>,
    /// How --organize places files.
    #[arg(long, value_enum, default_value_t = ModeArg::Copy, requires = "organize")]
    mode: ModeArg,
    /// No progress bar or summary.
    #[arg(long, short = 'q')]
    quiet: bool,
    /// Image files and directories (walked recursively for jpg, jpeg, png, webp, bmp, gif, tif, tiff).
    #[arg(value_name = "IMAGES_OR_DIRS", required = true)]
    inputs: Vec<PathBuf>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ModeArg {
    /// Copy each file.
    Copy,
    /// Symbolic link to the original.
    Symlink,
    /// Hard link (same file system).
    Hardlink,
}

/// A value parser for a probability option: a number between 0 and 1.
fn probability(flag: &'static str) -> impl Fn(&str) -> Result<f32, String> + Clone {
    move |s| {
        let v: f32 = s.parse().map_err(|e| format!("{e}"))?;
        if (0.0..=1.0).contains(&v) {
            Ok(v)
        } else {
            Err(format!("{flag} must be between 0 and 1, got {v}"))
        }
    }
}

impl OutputArgs {
    fn job_options(
        &self,
        batch_size: usize,
        out: PathBuf,
        calibration: Option<(cliplabel::classify::calibration::Calibration, PathBuf)>,
    ) -> JobOptions {
        JobOptions {
            calibration,
            out,
            top_k: self.top_k,
            abstention: Abstention {
                min_score: self.min_score,
                min_margin: self.min_margin,
            },
            batch_size,
            resume: self.resume,
            force: self.force,
            organize: self.organize.clone().map(|d| {
                let mode = match self.mode {
                    ModeArg::Copy => LinkMode::Copy,
                    ModeArg::Symlink => LinkMode::Symlink,
                    ModeArg::Hardlink => LinkMode::Hardlink,
                };
                (d, mode)
            }),
        }
    }
}

#[derive(Args)]
struct LabelArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    classes: ClassArgs,
    #[command(flatten)]
    output: OutputArgs,
    #[command(flatten)]
    trust: cli::trust::TrustArgs,
    #[command(flatten)]
    shard: ShardArgs,
}

/// A labelled set from `FLAG DIR` (ImageFolder layout) or `FLAG-csv FILE` (clap requires one).
fn labelled_set(
    dir: &Option<PathBuf>,
    csv: &Option<PathBuf>,
    flag: &str,
) -> anyhow::Result<LabelledSet> {
    Ok(match (dir, csv) {
        (Some(d), _) => LabelledSet::from_image_folder(d)?,
        (None, Some(f)) => LabelledSet::from_csv(f)?,
        (None, None) => anyhow::bail!("give {flag} DIR or {flag}-csv FILE"),
    })
}

/// The end of `label` and `predict`: the summary, then any export the trust flags ask for
/// (exit status 1 when some row could not be exported).
fn finish_run(
    summary: &Summary,
    out: &Path,
    trust: &cli::trust::TrustArgs,
    model: &str,
    quiet: bool,
) -> anyhow::Result<ExitCode> {
    print_summary(summary, out, quiet);
    Ok(if trust.export_after(out, model, quiet)? {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn print_summary(s: &Summary, out: &Path, quiet: bool) {
    if quiet {
        return;
    }
    let mut line = format!(
        "labelled {}, abstained {}, failed {}, {:.1} s, {:.1} images/s -> {}",
        s.labelled,
        s.abstained,
        s.failed,
        s.seconds,
        s.rate(),
        out.display()
    );
    if s.skipped > 0 {
        line.push_str(&format!(" ({} already labelled, skipped)", s.skipped));
    }
    if s.cached > 0 {
        line.push_str(&format!(" ({} from the embedding cache)", s.cached));
    }
    if s.unplaced > 0 {
        line.push_str(&format!(" ({} labelled but not organised)", s.unplaced));
    }
    eprintln!("{line}");
    if s.failed + s.unplaced > 0 {
        eprintln!("failures listed in {}", failed_path(out).display());
    }
}

fn run_label(a: LabelArgs, env: &Env) -> anyhow::Result<ExitCode> {
    let classes = a.classes.class_list()?;
    let templates = a.classes.templates()?;
    let sel = a
        .shard
        .select(env, &a.output.inputs, &a.output.out, a.output.quiet)?;
    let opts = a
        .output
        .job_options(a.model.batch_size, sel.out, a.trust.calibration()?);
    let engine = a.model.engine(env)?;
    let cache = a.classes.cache.dir(env);
    let mut progress = Progress::new(a.output.quiet);
    let summary = label_zero_shot(
        &engine,
        &classes,
        &templates,
        cache.as_deref(),
        sel.paths,
        &opts,
        &mut |e| progress.event(e),
    )?;
    finish_run(
        &summary,
        &opts.out,
        &a.trust,
        &a.model.model,
        a.output.quiet,
    )
}

#[derive(Args)]
struct ModelArgs {
    /// A local Hugging Face CLIP model directory (config.json, model.safetensors, tokenizer.json),
    /// or a hub id such as openai/clip-vit-base-patch32 (looked up in the Hugging Face cache,
    /// downloaded when online; set HF_HUB_OFFLINE=1 to forbid downloads).
    #[arg(long, short = 'm', value_name = "DIR|ID")]
    model: String,
    /// Worker threads for decoding and the model (default: all cores).
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Images per model batch.
    #[arg(long, default_value_t = 32, value_name = "N")]
    batch_size: usize,
    /// Refuse images whose header declares more pixels than this, before decoding them
    /// (Pillow's decompression-bomb limit by default).
    #[arg(long, default_value_t = DEFAULT_MAX_PIXELS, value_name = "N")]
    max_pixels: u64,
    /// Arithmetic of the encoders' linear layers: fp32 (exact, the default), bf16 or int8
    /// (approximate; int8 runs 2-3x fp32 with AVX512-VNNI or AVX-VNNI, bf16 is faster only
    /// where the CPU's bf16 dot product runs at full rate, and a note says when it does not;
    /// falls back to the next precision, with a note, where the CPU lacks the instructions).
    #[arg(long, default_value = "fp32", value_name = "fp32|bf16|int8")]
    precision: cliplabel::Precision,
}

impl ModelArgs {
    /// Loads the model with these flags and the environment's settings.
    fn engine(&self, env: &Env) -> anyhow::Result<Engine> {
        let engine = Engine::try_new(
            EngineOptions::new(&self.model)
                .threads(self.threads)
                .kernels(env.kernels)
                .max_pixels(self.max_pixels)
                .precision(self.precision)
                .hub(env.hub.clone()),
        )?;
        if let Some(note) = engine.precision_note() {
            eprintln!("note: {note}");
        }
        Ok(engine)
    }
}

#[derive(Args)]
struct EmbedArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Output file (safetensors with one tensor `embeddings`); a sidecar OUT.json lists the rows.
    #[arg(long, short = 'o', value_name = "OUT.safetensors")]
    out: PathBuf,
    /// L2-normalise each embedding.
    #[arg(long)]
    normalize: bool,
    /// Exit non-zero (after writing the output) if any image failed.
    #[arg(long)]
    strict: bool,
    /// Embed the prompts of this file (one per line) instead of images.
    #[arg(long, value_name = "FILE", conflicts_with = "inputs")]
    text_file: Option<PathBuf>,
    /// Take the pooled pre-projection output instead of the projected embedding.
    #[arg(long, value_enum, default_value_t = FeatureArg::Projected)]
    features: FeatureArg,
    /// Do not print progress or the summary.
    #[arg(long, short = 'q')]
    quiet: bool,
    /// Image files and directories (walked recursively for jpg, jpeg, png, webp, bmp, gif, tif, tiff).
    #[arg(value_name = "IMAGES_OR_DIRS", required_unless_present = "text_file")]
    inputs: Vec<PathBuf>,
    #[command(flatten)]
    shard: ShardArgs,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum FeatureArg {
    /// The projected embedding, as get_image_features / get_text_features return it.
    Projected,
    /// The pooled output before the projection.
    Pooled,
}

impl From<FeatureArg> for Features {
    fn from(f: FeatureArg) -> Self {
        match f {
            FeatureArg::Projected => Features::Projected,
            FeatureArg::Pooled => Features::Pooled,
        }
    }
}

fn run_embed(a: EmbedArgs, env: &Env) -> anyhow::Result<ExitCode> {
    let start = std::time::Instant::now();
    let engine = a.model.engine(env)?;
    let mut opts = EmbedOptions {
        out: a.out.clone(),
        batch_size: a.model.batch_size,
        features: a.features.into(),
        normalize: a.normalize,
    };
    let summary = if let Some(tf) = &a.text_file {
        if a.shard.request().is_set() {
            anyhow::bail!("sharding applies to images, not to --text-file");
        }
        embed_text_file(&engine, tf, &opts)?
    } else {
        let sel = a.shard.select(env, &a.inputs, &a.out, a.quiet)?;
        opts.out = sel.out;
        let quiet = a.quiet;
        embed_image_files(&engine, sel.paths, &opts, &mut |e| match e {
            EmbedEvent::Failed(f) if !quiet => eprintln!("warning: {}: {}", f.path, f.error),
            EmbedEvent::Embedded { done, total } if !quiet => {
                eprintln!("embedded {done}/{total}")
            }
            _ => {}
        })?
    };
    if !a.quiet {
        let secs = start.elapsed().as_secs_f64();
        let kind = summary.kind.as_str();
        eprintln!(
            "{} {kind}s embedded, {} failed, {secs:.1} s ({:.1}/s) -> {}",
            summary.rows,
            summary.failed,
            summary.rows as f64 / secs.max(1e-9),
            opts.out.display()
        );
    }
    Ok(if a.strict && summary.failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Splitting a run over the tasks of a cluster array job (see docs/sharding.md).
#[derive(Args)]
#[command(next_help_heading = "Sharding (one task of a Slurm array or Kubernetes Indexed Job)")]
struct ShardArgs {
    /// Process only shard I of N (0-based): the images whose path relative to their input
    /// directory hashes to I. Output goes to OUT.shard-I-of-N.EXT (+ a .shard.json manifest);
    /// join the N shards with `cliplabel merge OUT`.
    #[arg(long, value_name = "I/N", value_parser = parse_shard,
          conflicts_with_all = ["shard_from_env", "shard_count"])]
    shard: Option<Shard>,
    /// Take the shard from the Slurm array task: index (SLURM_ARRAY_TASK_ID - MIN) / STEP of
    /// the array's task count. Rerunning one task alone makes a 1-task array: use
    /// --shard-count N instead to allow that.
    #[arg(long)]
    shard_from_env: bool,
    /// N shards, with the index from the scheduler: a Kubernetes Indexed Job's
    /// JOB_COMPLETION_INDEX (N = the Job's completions) or SLURM_ARRAY_TASK_ID (submit
    /// --array=0-(N-1); a task can then be resubmitted alone with --array=I).
    #[arg(long, value_name = "N")]
    shard_count: Option<usize>,
    /// Process every input even inside a Slurm array task (by default a Slurm array task with
    /// more than one task takes its shard from SLURM_ARRAY_TASK_ID, as --shard-from-env does).
    #[arg(long, conflicts_with_all = ["shard", "shard_from_env", "shard_count"])]
    no_shard: bool,
}

fn parse_shard(s: &str) -> Result<Shard, String> {
    Shard::parse(s).map_err(|e| e.to_string())
}

impl ShardArgs {
    fn request(&self) -> ShardRequest {
        ShardRequest {
            shard: self.shard,
            from_env: self.shard_from_env,
            count: self.shard_count,
            no_shard: self.no_shard,
        }
    }

    /// Collects the images under `roots` and narrows them to this task's shard (writing its
    /// manifest), printing the library's notes and, unless quiet, what the shard holds.
    fn select(
        &self,
        env: &Env,
        roots: &[PathBuf],
        out: &Path,
        quiet: bool,
    ) -> anyhow::Result<Selection> {
        let paths = collect_images(roots)?;
        let sel = self
            .request()
            .select(|k| env.scheduler_var(k), roots, paths, out)?;
        for note in &sel.notes {
            eprintln!("{note}");
        }
        if let (Some(shard), false) = (sel.shard, quiet) {
            eprintln!(
                "shard {shard}: {} of {} images -> {}",
                sel.paths.len(),
                sel.total,
                sel.out.display()
            );
        }
        Ok(sel)
    }
}

const MERGE_ABOUT: &str = "\
Merge the outputs of a sharded run into the file one process would have written.

Each task of a sharded run (--shard I/N, --shard-from-env or --shard-count N) writes
OUT.shard-I-of-N.EXT with a manifest of the images it was given. `cliplabel merge OUT` finds
those files beside OUT and checks that all N shards are there, that they come from the same run
(same .run.json for labels; same model, kind, width, normalisation and features for
embeddings), and that every image was processed exactly once: each has one row (or embedding)
or is listed as failed, and no shard has rows it was not given. Any gap or duplicate is an
error naming the shard and the images; rerun that shard (with --resume for labels) and merge
again. Nothing is written unless every check passes.

Labels (OUT.csv / OUT.jsonl) are merged with OUT.failed.jsonl and OUT.run.json; embeddings
(OUT.safetensors) with the OUT.json sidecar. Rows come out in input order, so the merged file
equals that of a single process. With --inputs, the images under those paths must also be
exactly the ones the shards processed (none added or removed since).";

#[derive(Args)]
struct MergeArgs {
    /// The merged output, as given to the shards' --out: OUT.csv, OUT.jsonl or OUT.safetensors.
    #[arg(value_name = "OUT")]
    out: PathBuf,
    /// The image files and directories the shards were given, in the same order: also check
    /// that they hold exactly the images the shards processed.
    #[arg(long, value_name = "IMAGES_OR_DIRS", num_args = 1..)]
    inputs: Vec<PathBuf>,
    /// Overwrite an existing OUT.
    #[arg(long)]
    force: bool,
    /// No summary.
    #[arg(long, short = 'q')]
    quiet: bool,
}

fn run_merge(a: MergeArgs) -> anyhow::Result<ExitCode> {
    let r = merge(
        &a.out,
        &MergeOptions {
            inputs: a.inputs,
            force: a.force,
        },
    )?;
    if !a.quiet {
        eprintln!(
            "merged {} shards: {} of {} images, {} failed -> {}",
            r.shards,
            r.rows,
            r.total,
            r.failed,
            r.out.display()
        );
        if r.failed > 0 && r.kind == MergedKind::Labels {
            eprintln!("failures listed in {}", failed_path(&r.out).display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args, Clone)]
struct TemplateArgs {
    /// Prompt templates: a file (one template with one `{}` per line) or a shipped set
    /// (photo, imagenet80, imagenet7, satellite, textures, food, pets, flowers, cars, aircraft,
    /// cifar, shapes). Default: photo ("a photo of a {}.").
    #[arg(long, value_name = "FILE|NAME", conflicts_with = "template")]
    templates: Option<String>,
    /// A template such as "a photo of a {}." (repeat to ensemble several).
    #[arg(long, value_name = "TEMPLATE")]
    template: Vec<String>,
}

impl TemplateArgs {
    fn resolve(&self) -> anyhow::Result<(Templates, String)> {
        Ok(if !self.template.is_empty() {
            (
                Templates::from_strings(&self.template)?,
                self.template.join(" | "),
            )
        } else {
            let spec = self.templates.clone().unwrap_or_else(|| "photo".into());
            (Templates::resolve(&spec)?, spec)
        })
    }
}

#[derive(Args, Clone)]
struct CacheArgs {
    /// Where to cache class and image embeddings (default: $CLIPLABEL_CACHE, else
    /// ~/.cache/cliplabel).
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Do not read or write the embedding caches.
    #[arg(long)]
    no_cache: bool,
}

impl CacheArgs {
    fn dir(&self, env: &Env) -> Option<PathBuf> {
        if self.no_cache {
            None
        } else {
            self.cache_dir.clone().or_else(|| env.cache_dir.clone())
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum InitArg {
    /// Start from zero and regularise toward zero (the linear probe).
    Zero,
    /// Start from the zero-shot classifier and regularise toward it.
    ZeroShot,
}

#[derive(Args)]
struct FitArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Training images in the ImageFolder layout: DIR/<class>/<image>.
    #[arg(
        long,
        value_name = "DIR",
        required_unless_present = "train_csv",
        conflicts_with = "train_csv"
    )]
    train: Option<PathBuf>,
    /// Training images as a CSV with `path` and `label` columns (paths relative to the CSV).
    #[arg(long, value_name = "FILE")]
    train_csv: Option<PathBuf>,
    /// Output head file (safetensors with the classes and training metadata).
    #[arg(long, short = 'o', value_name = "HEAD.safetensors")]
    out: PathBuf,
    /// Cross-validation folds for choosing the regularisation strength C.
    #[arg(long, default_value_t = 5, value_name = "K")]
    cv: usize,
    /// C values to try, comma-separated (default: a coarse-to-fine search over 1e-6..1e6, as in
    /// the CLIP paper's linear probe).
    #[arg(long, value_name = "C,C,...", value_delimiter = ',')]
    c_grid: Vec<f64>,
    /// Weight classes inversely to their frequency.
    #[arg(long)]
    balanced: bool,
    /// Where the head starts and what it is regularised toward.
    #[arg(long, value_enum, default_value_t = InitArg::Zero)]
    init: InitArg,
    /// Mix the probe's logits with zero-shot logits, alpha chosen on held-out folds.
    #[arg(long, conflicts_with = "init")]
    interpolate: bool,
    #[command(flatten)]
    templates: TemplateArgs,
    /// Seed of the cross-validation folds.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Train on the projected embedding or on the pooled output before the projection (what
    /// the CLIP paper's probe used; not with --init zero-shot or --interpolate).
    #[arg(long, value_enum, default_value_t = FeatureArg::Projected)]
    features: FeatureArg,
    #[command(flatten)]
    cache: CacheArgs,
    /// Overwrite an existing head file.
    #[arg(long)]
    force: bool,
    /// No progress output.
    #[arg(long, short = 'q')]
    quiet: bool,
}

fn run_fit(a: FitArgs, env: &Env) -> anyhow::Result<ExitCode> {
    let method = match (a.init, a.interpolate) {
        (_, true) => Method::Interpolate,
        (InitArg::ZeroShot, false) => Method::ZeroShotInit,
        (InitArg::Zero, false) => Method::Probe,
    };
    let opts = FitHeadOptions {
        out: a.out.clone(),
        method,
        features: a.features.into(),
        folds: a.cv,
        c_grid: (!a.c_grid.is_empty()).then(|| a.c_grid.clone()),
        balanced: a.balanced,
        seed: a.seed,
        templates: a.templates.resolve()?,
        cache_dir: a.cache.dir(env),
        batch_size: a.model.batch_size,
    };
    opts.check(a.force)?;
    let set = labelled_set(&a.train, &a.train_csv, "--train")?;
    let engine = a.model.engine(env)?;
    let quiet = a.quiet;
    let s = fit_head(&engine, &set, &opts, &mut |f| {
        if !quiet {
            eprintln!("warning: {}: {}", f.path, f.error);
        }
    })?;
    if !a.quiet {
        eprintln!(
            "{}: {} on {} images of {} classes ({} encoded, {} from cache, {} failed) in {:.1} s",
            a.out.display(),
            s.method.name(),
            s.images,
            s.classes,
            s.encoded,
            s.images - s.encoded,
            s.failed,
            s.seconds
        );
        let mut line = String::new();
        if let Some(c) = s.c {
            line.push_str(&format!("C = {c:.3e}"));
        }
        if let Some(acc) = s.cv_accuracy {
            line.push_str(&format!(
                ", {}-fold CV accuracy {:.1}%",
                s.folds,
                acc * 100.0
            ));
        } else {
            line.push_str(" (too few examples per class for cross-validation)");
        }
        if let Some(al) = s.alpha {
            line.push_str(&format!(", alpha (zero-shot weight) {al:.1}"));
        }
        eprintln!("{line}");
        if s.failed > 0 {
            eprintln!("failures listed in {}", s.failed_path.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
struct PredictArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// A head file written by `cliplabel fit` for this model.
    #[arg(long, value_name = "HEAD.safetensors")]
    head: PathBuf,
    #[command(flatten)]
    output: OutputArgs,
    #[command(flatten)]
    trust: cli::trust::TrustArgs,
    #[command(flatten)]
    shard: ShardArgs,
    #[command(flatten)]
    cache: CacheArgs,
}

fn run_predict(a: PredictArgs, env: &Env) -> anyhow::Result<ExitCode> {
    let head = Head::load(&a.head)?;
    let sel = a
        .shard
        .select(env, &a.output.inputs, &a.output.out, a.output.quiet)?;
    let opts = a
        .output
        .job_options(a.model.batch_size, sel.out, a.trust.calibration()?);
    let engine = a.model.engine(env)?;
    let cache = a.cache.dir(env);
    let mut progress = Progress::new(a.output.quiet);
    let summary = predict_with_head(
        &engine,
        &head,
        &a.head,
        cache.as_deref(),
        sel.paths,
        &opts,
        &mut |e| progress.event(e),
    )?;
    finish_run(
        &summary,
        &opts.out,
        &a.trust,
        &a.model.model,
        a.output.quiet,
    )
}

#[derive(Args)]
struct CompareArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Training images (ImageFolder layout DIR/<class>/<image>); k-shot subsets are drawn from it.
    #[arg(long, value_name = "DIR")]
    train: PathBuf,
    /// Test images (ImageFolder layout, the same class folder names).
    #[arg(long, value_name = "DIR")]
    test: PathBuf,
    /// Template sets to evaluate zero-shot (file or shipped name), repeatable; with several,
    /// their union is evaluated too as an ensemble.
    #[arg(long, value_name = "FILE|NAME", default_values_t = vec!["photo".to_string()])]
    templates: Vec<String>,
    /// Labelled images per class for the heads, comma-separated; `all` uses every one.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16,all")]
    shots: Vec<Shots>,
    /// Random draws of the k images per class for each shot count.
    #[arg(long, default_value_t = 3)]
    seeds: usize,
    /// Cross-validation folds for each head's regularisation strength.
    #[arg(long, default_value_t = 5, value_name = "K")]
    cv: usize,
    /// Directory for report.md, results.json, shots.svg and shots.png.
    #[arg(long, value_name = "DIR")]
    report: PathBuf,
    #[command(flatten)]
    cache: CacheArgs,
    /// No progress output.
    #[arg(long, short = 'q')]
    quiet: bool,
}

fn run_compare(a: CompareArgs, env: &Env) -> anyhow::Result<ExitCode> {
    let sets = CompareSets::load(&a.train, &a.test, &a.report)?;
    let engine = a.model.engine(env)?;
    let opts = CompareOptions {
        templates: a.templates.clone(),
        shots: a.shots.clone(),
        seeds: a.seeds,
        folds: a.cv,
    };
    let quiet = a.quiet;
    let cache = a.cache.dir(env);
    let results = compare_sets(
        &engine,
        &sets,
        &opts,
        cache.as_deref(),
        a.model.batch_size,
        &mut |f| {
            if !quiet {
                eprintln!("warning: {}: {} (skipped)", f.path, f.error);
            }
        },
        |m| {
            if !quiet {
                eprintln!("{m}");
            }
        },
    )?;
    write_report(&a.report, &results)?;
    println!("{}", summary_table(&results));
    if !a.quiet {
        if sets.failed_list.exists() {
            eprintln!("failures listed in {}", sets.failed_list.display());
        }
        eprintln!("report written to {}", a.report.display());
    }
    Ok(ExitCode::SUCCESS)
}

const AUDIT_ABOUT: &str = "Audit a labelled set from its CLIP embeddings (cached as for fit and \
compare). Writes, into --out: report.md (counts, then the top findings with thumbnails linked \
relative to the report; leakage first), leakage.csv, mislabels.csv, noise.csv, \
exact_duplicates.csv, near_duplicates.csv, outliers.csv and failures.csv (images that could not \
be read, with the reason; they are counted in the summary and left out of every finding).\n\n\
Mislabels: confident learning on 5-fold out-of-fold probabilities of a linear head (blended \
half and half with zero-shot probabilities when --templates or --classes is given). \
Near-duplicates: pairs of images whose embeddings have cosine >= --duplicate-threshold. \
Leakage: near or byte-identical copies between --data and --test. Outliers: far from every \
class centroid and from their nearest neighbours. See README \"Auditing a dataset\".";

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum RankByArg {
    /// p[given], the probability of the given label.
    SelfConfidence,
    /// (p[given] - max other p + 1) / 2.
    NormalizedMargin,
}

#[derive(Args)]
struct AuditArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The labelled set in the ImageFolder layout: DIR/<class>/<image>.
    #[arg(
        long,
        value_name = "DIR",
        required_unless_present = "data_csv",
        conflicts_with = "data_csv"
    )]
    data: Option<PathBuf>,
    /// The labelled set as a CSV with `path` and `label` columns (paths relative to the CSV).
    #[arg(long, value_name = "FILE")]
    data_csv: Option<PathBuf>,
    /// A held-out set to check for leakage (copies of training images): ImageFolder layout or a
    /// plain folder of images (its labels are not used).
    #[arg(long, value_name = "DIR")]
    test: Option<PathBuf>,
    /// Blend zero-shot probabilities into the mislabel search, with this class list (one class
    /// per line, `name: synonym | synonym`; the names must be the set's class names).
    #[arg(long, value_name = "FILE")]
    classes: Option<PathBuf>,
    #[command(flatten)]
    templates: TemplateArgs,
    /// Output directory (created; existing files of the same names are replaced).
    #[arg(long, short = 'o', value_name = "DIR")]
    out: PathBuf,
    /// Cosine at or above which two images are near-duplicates (and a train/test pair leaks).
    #[arg(long, default_value_t = cliplabel::eval::audit::DEFAULT_DUPLICATE_THRESHOLD, value_name = "COS")]
    duplicate_threshold: f32,
    /// How likely mislabels are ranked (the `score` column; lower is more suspicious).
    #[arg(long, value_enum, default_value_t = RankByArg::SelfConfidence)]
    rank_by: RankByArg,
    /// Cross-validation folds for the out-of-fold probabilities.
    #[arg(long, default_value_t = 5, value_name = "K")]
    folds: usize,
    /// Seed of the fold assignment.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    cache: CacheArgs,
    /// No progress or summary.
    #[arg(long, short = 'q')]
    quiet: bool,
}

fn run_audit_cmd(a: AuditArgs, env: &Env) -> anyhow::Result<ExitCode> {
    use cliplabel::eval::audit::job::{audit_dataset, AuditRequest};
    use cliplabel::eval::audit::{load_test_set, AuditOptions, AuditProgress, RankBy};

    let options = AuditOptions {
        folds: a.folds,
        seed: a.seed,
        rank_by: match a.rank_by {
            RankByArg::SelfConfidence => RankBy::SelfConfidence,
            RankByArg::NormalizedMargin => RankBy::NormalizedMargin,
        },
        duplicate_threshold: a.duplicate_threshold,
        ..AuditOptions::default()
    };
    options.check()?;
    let train = labelled_set(&a.data, &a.data_csv, "--data")?;
    let test = a.test.as_deref().map(load_test_set).transpose()?;
    let engine = a.model.engine(env)?;
    let want_zero_shot =
        a.classes.is_some() || a.templates.templates.is_some() || !a.templates.template.is_empty();
    let request = AuditRequest {
        train,
        test,
        classes: a.classes.as_deref().map(ClassList::from_file).transpose()?,
        templates: if want_zero_shot {
            Some(a.templates.resolve()?.0)
        } else {
            None
        },
        options,
        cache_dir: a.cache.dir(env),
        batch_size: a.model.batch_size,
        out: a.out.clone(),
        base_dir: std::env::current_dir()?,
    };
    let quiet = a.quiet;
    let total = request.train.paths.len() + request.test.as_ref().map_or(0, |t| t.paths.len());
    let start = std::time::Instant::now();
    let mut last_pct = usize::MAX;
    let folds = a.folds;
    let outcome = audit_dataset(&engine, request, |p| {
        if quiet {
            return;
        }
        match p {
            AuditProgress::Embedding => eprintln!("embedding {total} images"),
            AuditProgress::CrossValidating => {
                eprintln!("cross-validating the head ({folds} folds)")
            }
            AuditProgress::Neighbours { done, total } => {
                let pct = done * 10 / total.max(1);
                if pct != last_pct {
                    last_pct = pct;
                    eprintln!("neighbour search: {done}/{total} rows");
                }
            }
            AuditProgress::Summarising => eprintln!("grouping and outliers"),
        }
    })?;
    let s = &outcome.summary;
    if let Some(rv) = &outcome.review {
        for f in &rv.thumb_failures {
            eprintln!("warning: no thumbnail for {}: {}", f.path, f.error);
        }
    }
    if !quiet {
        for f in &outcome.failures {
            eprintln!("warning: {}: {} (not audited)", f.path, f.error);
        }
        eprintln!(
            "audited {} train + {} test images of {} ({} failed) in {:.1} s -> {}",
            s.train_images,
            s.test_images,
            outcome.total,
            s.failed,
            start.elapsed().as_secs_f64(),
            a.out.display()
        );
        eprintln!(
            "likely mislabels {}, exact-duplicate groups {}, near-duplicate pairs {} ({} groups), train/test leaks {}, outliers {}",
            s.mislabels,
            s.exact_duplicate_groups,
            s.near_duplicate_pairs,
            s.near_duplicate_groups,
            s.leakage,
            s.outliers
        );
        if s.failed > 0 {
            eprintln!(
                "failures listed in {}",
                a.out.join("failures.csv").display()
            );
        }
        if let Some(rv) = &outcome.review {
            eprintln!(
                "review the {} likely mislabels in {}",
                rv.cards,
                rv.index.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The `--threads` of the command, if it loads a model.
fn threads(c: &Command) -> Option<usize> {
    match c {
        Command::Label(a) => a.model.threads,
        Command::Fit(a) => a.model.threads,
        Command::Predict(a) => a.model.threads,
        Command::Compare(a) => a.model.threads,
        Command::Audit(a) => a.model.threads,
        Command::Embed(a) => a.model.threads,
        Command::Merge(_) => None,
        Command::Calibrate(a) => a.model_threads(),
        Command::Review(_) => None,
    }
}

fn main() -> ExitCode {
    // Panics caught per image (cliplabel::util::isolate) are reported as that image's failure;
    // every other panic is printed as usual.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !cliplabel::in_isolation() {
            default_hook(info);
        }
    }));
    let cli = Cli::parse();
    if let Some(n) = threads(&cli.command).filter(|&n| n > 0) {
        // candle's CPU kernels size their work by RAYON_NUM_THREADS and read nothing else, so
        // the count reaches them only through the environment; set before any thread starts.
        // (The library builds rayon's pool from the same count, passed as an option.)
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    let env = Env::read();
    let result = match cli.command {
        Command::Label(a) => run_label(a, &env),
        Command::Fit(a) => run_fit(a, &env),
        Command::Predict(a) => run_predict(a, &env),
        Command::Compare(a) => run_compare(a, &env),
        Command::Audit(a) => run_audit_cmd(a, &env),
        Command::Embed(a) => run_embed(a, &env),
        Command::Merge(a) => run_merge(a),
        Command::Calibrate(a) => cli::trust::run_calibrate(a, &env),
        Command::Review(a) => cli::trust::run_review(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", error_text(&e));
            ExitCode::from(2)
        }
    }
}

/// The error and the causes under it, each cause only where the text so far does not already
/// end with it (the library's errors name their cause in their own message, as in
/// "PATH: No such file or directory (os error 2)", where anyhow's `{:#}` would repeat it).
fn error_text(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !text.ends_with(&c) {
            text.push_str(": ");
            text.push_str(&c);
        }
    }
    text
}
