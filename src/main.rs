//! The `cliplabel` command line: argument parsing only; the library does the work.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use cliplabel::embed::{embed_images, Engine, Features};
use cliplabel::output::{write_embeddings, EmbeddingsSidecar, Failure};

#[derive(Parser)]
#[command(name = "cliplabel", version, about = "Label images with CLIP: zero-shot from text prompts, or with a linear head trained on a few examples.", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Compute CLIP embeddings of images or prompts into a safetensors file (+ JSON sidecar).
    Embed(EmbedArgs),
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
