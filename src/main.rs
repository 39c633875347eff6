//! The `cliplabel` command line: argument parsing only; the library does the work.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use cliplabel::clip::engine::{Engine, Features};
use cliplabel::jobs::pipeline::embed_images;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use cliplabel::classify::classes::ClassList;
use cliplabel::classify::scores::Abstention;
use cliplabel::classify::templates::Templates;
use cliplabel::classify::zeroshot::ZeroShotClassifier;
use cliplabel::jobs::embed::{write_embeddings, EmbeddingsSidecar};
use cliplabel::jobs::label::{run_job, JobOptions, RunInfo, Summary};
use cliplabel::jobs::organize::LinkMode;
use cliplabel::jobs::writers::Failure;

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
    /// Compute CLIP embeddings of images or prompts into a safetensors file (+ JSON sidecar).
    Embed(EmbedArgs),
    /// Merge a sharded run's outputs (OUT.shard-I-of-N.*) into OUT, checking that every image
    /// was processed exactly once.
    #[command(long_about = MERGE_ABOUT)]
    Merge(MergeArgs),
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
    #[arg(long, value_name = "P")]
    min_score: Option<f32>,
    /// Label `unknown` when the top-1 probability minus the top-2 is below D.
    #[arg(long, value_name = "D")]
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

impl OutputArgs {
    fn job_options(&self, batch_size: usize) -> anyhow::Result<JobOptions> {
        for (flag, v) in [
            ("--min-score", self.min_score),
            ("--min-margin", self.min_margin),
        ] {
            if let Some(v) = v {
                if !(0.0..=1.0).contains(&v) {
                    anyhow::bail!("{flag} must be between 0 and 1, got {v}");
                }
            }
        }
        Ok(JobOptions {
            out: self.out.clone(),
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
            quiet: self.quiet,
        })
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
    shard: ShardArgs,
}

fn print_summary(s: &Summary, out: &std::path::Path, quiet: bool) {
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
    eprintln!("{line}");
    if s.failed > 0 {
        eprintln!(
            "failures listed in {}",
            cliplabel::jobs::writers::failed_path(out).display()
        );
    }
}

fn run_label(a: LabelArgs) -> anyhow::Result<ExitCode> {
    let classes = a.classes.class_list()?;
    let templates = a.classes.templates()?;
    let opts = a.output.job_options(a.model.batch_size)?;
    let paths = cliplabel::images::inputs::collect_images(&a.output.inputs)?;
    let (paths, out) = a
        .shard
        .apply(&a.output.inputs, paths, &opts.out, opts.quiet)?;
    let opts = JobOptions { out, ..opts };
    let engine = load_engine(&a.model)?;
    let cache = a.classes.cache.dir();
    let (clf, _cached) =
        ZeroShotClassifier::load_or_build(&engine, &classes, &templates, cache.as_deref())?;
    let info = RunInfo {
        model: engine.source.clone(),
        model_fingerprint: engine.fingerprint.clone(),
        method: "zero-shot".into(),
        scorer_key: ZeroShotClassifier::cache_key(&engine, &classes, &templates),
        classes: clf.classes.clone(),
        top_k: opts.top_k,
    };
    let summary = run_job(&engine, &clf, &info, paths, &opts, None)?;
    print_summary(&summary, &opts.out, opts.quiet);
    Ok(ExitCode::SUCCESS)
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
    #[arg(long, default_value_t = cliplabel::images::limits::DEFAULT_MAX_PIXELS, value_name = "N")]
    max_pixels: u64,
    /// Arithmetic of the encoders' linear layers: fp32 (exact, the default), bf16 or int8
    /// (faster, approximate; falls back to the next precision, with a note, where this CPU
    /// lacks the instructions).
    #[arg(long, default_value = "fp32", value_name = "fp32|bf16|int8")]
    precision: cliplabel::clip::kernels::precision::Precision,
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

fn load_engine(m: &ModelArgs) -> anyhow::Result<Engine> {
    cliplabel::configure_threads(m.threads)?;
    let mut engine =
        Engine::load_with_precision(&m.model, &cliplabel::default_device(), m.precision)?;
    if let Some(note) = engine.model.precision_note() {
        eprintln!("note: {note}");
    }
    engine.max_pixels = m.max_pixels;
    Ok(engine)
}

fn run_embed(a: EmbedArgs) -> anyhow::Result<ExitCode> {
    let start = std::time::Instant::now();
    let engine = load_engine(&a.model)?;
    let features: Features = a.features.into();
    let feature_name = match a.features {
        FeatureArg::Projected => "projected",
        FeatureArg::Pooled => "pooled",
    };
    let mut out = a.out.clone();
    let (mut rows, items, failed, kind) = if let Some(tf) = &a.text_file {
        if a.shard.is_set() {
            anyhow::bail!("sharding applies to images, not to --text-file");
        }
        if matches!(features, Features::Pooled) {
            anyhow::bail!("--features pooled is only available for images");
        }
        let prompts = cliplabel::images::inputs::read_lines(tf)?;
        if prompts.is_empty() {
            anyhow::bail!("{}: no prompts (the file is empty)", tf.display());
        }
        let t = engine.embed_texts(&prompts, a.model.batch_size.max(1) * 8)?;
        let rows: Vec<f32> = t.flatten_all()?.to_vec1()?;
        (rows, prompts, Vec::new(), "text")
    } else {
        let paths = cliplabel::images::inputs::collect_images(&a.inputs)?;
        let paths = {
            let (paths, shard_out) = a.shard.apply(&a.inputs, paths, &a.out, a.quiet)?;
            out = shard_out;
            paths
        };
        let total = paths.len();
        let mut rows = Vec::new();
        let mut items = Vec::new();
        let mut failed = Vec::new();
        let mut done = 0usize;
        embed_images(&engine, paths, a.model.batch_size, features, |b| {
            done += b.ok.len() + b.failed.len();
            if let Some(t) = &b.embeddings {
                rows.extend(t.flatten_all()?.to_vec1::<f32>()?);
            }
            items.extend(b.ok.iter().map(|p| p.display().to_string()));
            for (p, e) in b.failed {
                if !a.quiet {
                    eprintln!("warning: {}: {e}", p.display());
                }
                failed.push(Failure {
                    path: p.display().to_string(),
                    error: e,
                });
            }
            if !a.quiet {
                eprintln!("embedded {done}/{total}");
            }
            Ok(())
        })?;
        (rows, items, failed, "image")
    };
    let dim = engine.dim(features, kind == "image");
    if a.normalize {
        for r in rows.chunks_exact_mut(dim) {
            let n = r.iter().map(|v| v * v).sum::<f32>().sqrt();
            if n > 0.0 {
                r.iter_mut().for_each(|v| *v /= n);
            }
        }
    }
    let n_items = items.len();
    let n_failed = failed.len();
    let sidecar = EmbeddingsSidecar {
        model: engine.source.clone(),
        model_fingerprint: engine.fingerprint.clone(),
        kind: kind.into(),
        dim,
        normalized: a.normalize,
        features: feature_name.into(),
        items,
        failed,
    };
    write_embeddings(&out, &rows, &sidecar)
        .with_context(|| format!("writing {}", out.display()))?;
    if !a.quiet {
        let secs = start.elapsed().as_secs_f64();
        eprintln!(
            "{n_items} {kind}s embedded, {n_failed} failed, {secs:.1} s ({:.1}/s) -> {}",
            n_items as f64 / secs.max(1e-9),
            out.display()
        );
    }
    Ok(if a.strict && n_failed > 0 {
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
    shard: Option<cliplabel::jobs::cluster::shard::Shard>,
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

fn parse_shard(s: &str) -> Result<cliplabel::jobs::cluster::shard::Shard, String> {
    cliplabel::jobs::cluster::shard::Shard::parse(s).map_err(|e| e.to_string())
}

impl ShardArgs {
    fn is_set(&self) -> bool {
        self.shard.is_some() || self.shard_from_env || self.shard_count.is_some()
    }

    /// Narrows `paths` (collected from `roots`) to this task's shard, writes the shard's
    /// manifest, and returns the shard's images and output path; unchanged when not sharded.
    fn apply(
        &self,
        roots: &[PathBuf],
        paths: Vec<PathBuf>,
        out: &std::path::Path,
        quiet: bool,
    ) -> anyhow::Result<(Vec<PathBuf>, PathBuf)> {
        use cliplabel::jobs::cluster::shard::{unsharded_note, Shard, ShardPlan};
        let in_slurm_array = std::env::var("SLURM_ARRAY_TASK_ID")
            .is_ok_and(|v| !v.trim().is_empty())
            && unsharded_note(|k| std::env::var(k).ok()).is_some();
        let auto = !self.no_shard && !self.is_set() && in_slurm_array;
        let shard = if auto {
            let s = Shard::from_env(None, true, None)?;
            if let Some(s) = s {
                eprintln!(
                    "note: shard {s} taken from the Slurm array (SLURM_ARRAY_TASK_ID); pass --no-shard to process every input"
                );
            }
            s
        } else if self.no_shard {
            None
        } else {
            Shard::from_env(self.shard, self.shard_from_env, self.shard_count)?
        };
        let Some(shard) = shard else {
            if !self.no_shard {
                if let Some(note) = unsharded_note(|k| std::env::var(k).ok()) {
                    eprintln!("{note}");
                }
            }
            return Ok((paths, out.to_path_buf()));
        };
        let plan = ShardPlan::new(shard, roots, &paths, out);
        plan.write_manifest()?;
        if !quiet {
            eprintln!(
                "shard {shard}: {} of {} images -> {}",
                plan.paths.len(),
                paths.len(),
                plan.out.display()
            );
        }
        Ok((plan.paths, plan.out))
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
    use cliplabel::jobs::cluster::merge::{merge, MergeOptions, MergedKind};
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
            eprintln!(
                "failures listed in {}",
                cliplabel::jobs::writers::failed_path(&r.out).display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
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

#[derive(Args)]
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
    fn dir(&self) -> Option<PathBuf> {
        if self.no_cache {
            None
        } else {
            self.cache_dir
                .clone()
                .or_else(cliplabel::classify::zeroshot::default_cache_dir)
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

fn write_failures(path: &std::path::Path, failures: &[Failure]) -> anyhow::Result<()> {
    let mut buf = Vec::new();
    for f in failures {
        serde_json::to_writer(&mut buf, f)?;
        buf.push(b'\n');
    }
    cliplabel::util::atomic::write_atomic(path, &buf)?;
    Ok(())
}

fn run_fit(a: FitArgs) -> anyhow::Result<ExitCode> {
    use cliplabel::classify::head::{train, Head, HeadMeta, Method, TrainOptions};
    if a.out.exists() && !a.force {
        anyhow::bail!(
            "{}: already exists (pass --force to overwrite it)",
            a.out.display()
        );
    }
    let method = match (a.init, a.interpolate) {
        (_, true) => Method::Interpolate,
        (InitArg::ZeroShot, false) => Method::ZeroShotInit,
        (InitArg::Zero, false) => Method::Probe,
    };
    let features: Features = a.features.into();
    if features == Features::Pooled && method != Method::Probe {
        anyhow::bail!("--features pooled works only with the plain linear probe (zero-shot weights live in the projected space)");
    }
    let set = match (&a.train, &a.train_csv) {
        (Some(d), _) => cliplabel::eval::dataset::LabelledSet::from_image_folder(d)?,
        (None, Some(f)) => cliplabel::eval::dataset::LabelledSet::from_csv(f)?,
        (None, None) => anyhow::bail!("give --train DIR or --train-csv FILE"),
    };
    let engine = load_engine(&a.model)?;
    let start = std::time::Instant::now();
    let mut cache =
        cliplabel::jobs::cache::EmbeddingCache::open(a.cache.dir().as_deref(), &engine, features)?;
    let cliplabel::jobs::cache::Embeddings {
        rows,
        failures,
        encoded,
    } = cache.embed(&engine, &set.paths, a.model.batch_size)?;
    for f in &failures {
        if !a.quiet {
            eprintln!("warning: {}: {}", f.path, f.error);
        }
    }
    let dim = engine.dim(features, true);
    let data = cliplabel::eval::compare::Embedded::new(rows, &set.labels, dim)?;
    let counts = {
        let mut c = vec![0usize; set.classes.len()];
        for &l in &data.labels {
            c[l] += 1;
        }
        c
    };
    let (templates, template_spec) = a.templates.resolve()?;
    let zs = if method == Method::Probe {
        None
    } else {
        let classes = ClassList::from_names(&set.classes)?;
        Some(ZeroShotClassifier::build(&engine, &classes, &templates)?)
    };
    let opts = TrainOptions {
        method,
        folds: a.cv,
        c_grid: (!a.c_grid.is_empty()).then(|| a.c_grid.clone()),
        balanced: a.balanced,
        seed: a.seed,
        fallback_c: None,
        ..TrainOptions::default()
    };
    let t = train(&data.x, &data.labels, &set.classes, zs.as_ref(), &opts)?;
    let head = Head {
        linear: t.linear,
        meta: HeadMeta {
            classes: set.classes.clone(),
            model: engine.source.clone(),
            model_fingerprint: engine.fingerprint.clone(),
            dim,
            features: match features {
                Features::Projected => "projected".into(),
                Features::Pooled => "pooled".into(),
            },
            normalization: "l2".into(),
            method,
            c: t.c,
            cv_accuracy: t.cv_accuracy,
            cv_folds: t.folds,
            alpha: t.alpha,
            examples_per_class: counts.clone(),
            templates: zs.as_ref().map(|_| template_spec),
            balanced: a.balanced,
            seed: a.seed,
        },
    };
    head.save(&a.out)?;
    let failed_path = cliplabel::jobs::writers::failed_path(&a.out);
    if failures.is_empty() {
        let _ = std::fs::remove_file(&failed_path);
    } else {
        write_failures(&failed_path, &failures)?;
    }
    if !a.quiet {
        eprintln!(
            "{}: {} on {} images of {} classes ({} encoded, {} from cache, {} failed) in {:.1} s",
            a.out.display(),
            method.name(),
            data.labels.len(),
            set.classes.len(),
            encoded,
            data.labels.len() - encoded,
            failures.len(),
            start.elapsed().as_secs_f64()
        );
        let mut line = String::new();
        if let Some(c) = t.c {
            line.push_str(&format!("C = {c:.3e}"));
        }
        if let Some(acc) = t.cv_accuracy {
            line.push_str(&format!(
                ", {}-fold CV accuracy {:.1}%",
                t.folds,
                acc * 100.0
            ));
        } else {
            line.push_str(" (too few examples per class for cross-validation)");
        }
        if let Some(al) = t.alpha {
            line.push_str(&format!(", alpha (zero-shot weight) {al:.1}"));
        }
        eprintln!("{line}");
        if !failures.is_empty() {
            eprintln!("failures listed in {}", failed_path.display());
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
    shard: ShardArgs,
    #[command(flatten)]
    cache: CacheArgs,
}

fn run_predict(a: PredictArgs) -> anyhow::Result<ExitCode> {
    let head = cliplabel::classify::head::Head::load(&a.head)?;
    let opts = a.output.job_options(a.model.batch_size)?;
    let paths = cliplabel::images::inputs::collect_images(&a.output.inputs)?;
    let (paths, out) = a
        .shard
        .apply(&a.output.inputs, paths, &opts.out, opts.quiet)?;
    let opts = JobOptions { out, ..opts };
    let engine = load_engine(&a.model)?;
    head.check_model(&engine, &a.head)?;
    let key = {
        let bytes =
            std::fs::read(&a.head).with_context(|| format!("reading {}", a.head.display()))?;
        format!(
            "{:016x}",
            cliplabel::util::hash::fnv1a(&bytes, cliplabel::util::hash::FNV_START)
        )
    };
    let info = RunInfo {
        model: engine.source.clone(),
        model_fingerprint: engine.fingerprint.clone(),
        method: "head".into(),
        scorer_key: key,
        classes: head.meta.classes.clone(),
        top_k: opts.top_k,
    };
    let mut cache = match a.cache.dir() {
        Some(d) => Some(cliplabel::jobs::cache::EmbeddingCache::open(
            Some(&d),
            &engine,
            head.features(),
        )?),
        None => None,
    };
    let summary = run_job(&engine, &head, &info, paths, &opts, cache.as_mut())?;
    print_summary(&summary, &opts.out, opts.quiet);
    Ok(ExitCode::SUCCESS)
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
    #[arg(long, value_delimiter = ',', default_values_t = vec!["1".to_string(), "2".into(), "4".into(), "8".into(), "16".into(), "all".into()])]
    shots: Vec<String>,
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

fn run_compare(a: CompareArgs) -> anyhow::Result<ExitCode> {
    use cliplabel::eval::compare::{compare, embed_set, CompareOptions};
    let shots = a
        .shots
        .iter()
        .map(|s| {
            if s.eq_ignore_ascii_case("all") {
                Ok(None)
            } else {
                s.trim()
                    .parse::<usize>()
                    .ok()
                    .filter(|&k| k > 0)
                    .map(Some)
                    .ok_or_else(|| {
                        anyhow::anyhow!("--shots: `{s}` is not a positive number or `all`")
                    })
            }
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let train_set = cliplabel::eval::dataset::LabelledSet::from_image_folder(&a.train)?;
    let test_set = cliplabel::eval::dataset::LabelledSet::from_image_folder(&a.test)?;
    let test_labels = test_set.align_to(
        &train_set.classes,
        &format!("test set {}", a.test.display()),
    )?;
    std::fs::create_dir_all(&a.report)
        .with_context(|| format!("creating {}", a.report.display()))?;
    let engine = load_engine(&a.model)?;
    let mut cache = cliplabel::jobs::cache::EmbeddingCache::open(
        a.cache.dir().as_deref(),
        &engine,
        Features::Projected,
    )?;
    let (train, f1, _) = embed_set(
        &engine,
        &mut cache,
        &train_set,
        &train_set.labels,
        a.model.batch_size,
    )?;
    let (test, f2, _) = embed_set(
        &engine,
        &mut cache,
        &test_set,
        &test_labels,
        a.model.batch_size,
    )?;
    for f in f1.iter().chain(&f2) {
        if !a.quiet {
            eprintln!("warning: {}: {} (skipped)", f.path, f.error);
        }
    }
    let opts = CompareOptions {
        templates: a.templates.clone(),
        shots,
        seeds: a.seeds,
        folds: a.cv,
    };
    let quiet = a.quiet;
    let results = compare(&engine, &train_set.classes, &train, &test, &opts, |m| {
        if !quiet {
            eprintln!("{m}");
        }
    })?;
    cliplabel::eval::report::write_report(&a.report, &results)?;
    println!("{}", cliplabel::eval::report::summary_table(&results));
    if !a.quiet {
        eprintln!("report written to {}", a.report.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Label(a) => run_label(a),
        Command::Fit(a) => run_fit(a),
        Command::Predict(a) => run_predict(a),
        Command::Compare(a) => run_compare(a),
        Command::Embed(a) => run_embed(a),
        Command::Merge(a) => run_merge(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
