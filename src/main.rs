//! The `cliplabel` command line: argument parsing only; the library does the work.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use cliplabel::embed::{embed_images, Engine, Features};
use cliplabel::job::{run_job, JobOptions, RunInfo, Summary};
use cliplabel::organize::LinkMode;
use cliplabel::output::{write_embeddings, EmbeddingsSidecar, Failure};
use cliplabel::prompts::{ClassList, Templates};
use cliplabel::zeroshot::{Abstention, ZeroShotClassifier};

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
    /// Compute CLIP embeddings of images or prompts into a safetensors file (+ JSON sidecar).
    Embed(EmbedArgs),
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
    /// Prompt templates: a file (one template with one `{}` per line) or a shipped set
    /// (photo, imagenet80, imagenet7, satellite, textures, food, pets, flowers, cars, aircraft,
    /// cifar, shapes). Default: photo ("a photo of a {}.").
    #[arg(long, value_name = "FILE|NAME", conflicts_with = "template")]
    templates: Option<String>,
    /// A template such as "a photo of a {}." (repeat to ensemble several).
    #[arg(long, value_name = "TEMPLATE")]
    template: Vec<String>,
    /// Where to cache class embeddings (default: $CLIPLABEL_CACHE, else ~/.cache/cliplabel).
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Do not read or write the class-embedding cache.
    #[arg(long)]
    no_cache: bool,
}

impl ClassArgs {
    fn class_list(&self) -> anyhow::Result<ClassList> {
        Ok(match &self.classes {
            Some(f) => ClassList::from_file(f)?,
            None => ClassList::from_names(&self.class)?,
        })
    }
    fn templates(&self) -> anyhow::Result<Templates> {
        Ok(if !self.template.is_empty() {
            Templates::from_strings(&self.template)?
        } else {
            Templates::resolve(self.templates.as_deref().unwrap_or("photo"))?
        })
    }
    fn cache(&self) -> Option<PathBuf> {
        if self.no_cache {
            None
        } else {
            self.cache_dir
                .clone()
                .or_else(cliplabel::zeroshot::default_cache_dir)
        }
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
    eprintln!("{line}");
    if s.failed > 0 {
        eprintln!(
            "failures listed in {}",
            cliplabel::labels::failed_path(out).display()
        );
    }
}

fn run_label(a: LabelArgs) -> anyhow::Result<ExitCode> {
    let classes = a.classes.class_list()?;
    let templates = a.classes.templates()?;
    let opts = a.output.job_options(a.model.batch_size)?;
    let paths = cliplabel::inputs::collect_images(&a.output.inputs)?;
    let engine = load_engine(&a.model)?;
    let cache = a.classes.cache();
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
    let summary = run_job(&engine, &clf, &info, paths, &opts)?;
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
    #[arg(long, default_value_t = cliplabel::preprocess::DEFAULT_MAX_PIXELS, value_name = "N")]
    max_pixels: u64,
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
    let mut engine = Engine::load(&m.model, &cliplabel::default_device())?;
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
    let (mut rows, items, failed, kind) = if let Some(tf) = &a.text_file {
        if matches!(features, Features::Pooled) {
            anyhow::bail!("--features pooled is only available for images");
        }
        let prompts = cliplabel::inputs::read_lines(tf)?;
        if prompts.is_empty() {
            anyhow::bail!("{}: no prompts (the file is empty)", tf.display());
        }
        let t = engine.embed_texts(&prompts, a.model.batch_size.max(1) * 8)?;
        let rows: Vec<f32> = t.flatten_all()?.to_vec1()?;
        (rows, prompts, Vec::new(), "text")
    } else {
        let paths = cliplabel::inputs::collect_images(&a.inputs)?;
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
    write_embeddings(&a.out, &rows, &sidecar)
        .with_context(|| format!("writing {}", a.out.display()))?;
    if !a.quiet {
        let secs = start.elapsed().as_secs_f64();
        eprintln!(
            "{n_items} {kind}s embedded, {n_failed} failed, {secs:.1} s ({:.1}/s) -> {}",
            n_items as f64 / secs.max(1e-9),
            a.out.display()
        );
    }
    Ok(if a.strict && n_failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Label(a) => run_label(a),
        Command::Embed(a) => run_embed(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
