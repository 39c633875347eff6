//! Encoder-only throughput of cliplabel (development benchmark; `scripts/bench_vs_python.py`
//! drives it side by side with PyTorch and ONNX Runtime).
//!
//! Image mode (default): a batch of `--batch` random, CLIP-normalised 3×S×S pixel arrays goes
//! through `Engine::embed_pixels` (projected features) `--warmup` times untimed, then `--iters`
//! times timed. Decoding and preprocessing are not included.
//!
//! Text mode (`--text`): `--num-classes` class names × the templates of `--templates`
//! (default `prompts/imagenet80.txt`, lines starting with `#` are comments) go through
//! `Engine::embed_texts` once, timed (tokenisation included); a small untimed warm-up first.
//!
//! `--pixels FILE` takes the batch from a file of little-endian f32 (`--batch` × 3 × S × S,
//! already normalised) instead, and `--dump FILE` writes the projected features of the last
//! timed pass the same way, so that `scripts/bench_encoders.py` can time every contender on the
//! same pixels and compare their outputs.
//!
//! Prints one JSON object on stdout.
//!
//! ```text
//! cargo run --release --example bench_encoder -- scratch/full-vit-b32 --batch 32 --iters 4 --threads 2
//! cargo run --release --example bench_encoder -- models/shapes-clip --kernels avx2 --threads 2
//! cargo run --release --example bench_encoder -- scratch/full-vit-b32 --text --threads 2
//! ```

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use cliplabel::clip::engine::{Engine, EngineOptions, Features};
use cliplabel::images::preprocess::Pixels;

#[path = "support/timing.rs"]
mod timing;
use timing::cpu_ns;

#[derive(Parser, Debug)]
#[command(about = "Encoder-only throughput of cliplabel (images or prompts per second)")]
struct Args {
    /// Model directory (or anything `--model` accepts).
    model: String,
    /// Time the text encoder on class names × templates instead of the image encoder.
    #[arg(long)]
    text: bool,
    /// Images per forward pass (image mode).
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Timed forward passes (image mode).
    #[arg(long, default_value_t = 5)]
    iters: usize,
    /// Untimed warm-up passes (image mode).
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Class names, one per line (text mode; default: built-in synthetic names).
    #[arg(long)]
    classes: Option<PathBuf>,
    /// How many class names to use (text mode).
    #[arg(long, default_value_t = 1000)]
    num_classes: usize,
    /// Template file, `{}` marks the class name (text mode).
    #[arg(long, default_value = "prompts/imagenet80.txt")]
    templates: PathBuf,
    /// Arithmetic of the encoders' linear layers: fp32, bf16 or int8.
    #[arg(long, default_value = "fp32")]
    precision: cliplabel::Precision,
    /// Image mode: read the batch from this file of little-endian f32 pixels (batch × 3 × S × S).
    #[arg(long, value_name = "FILE")]
    pixels: Option<PathBuf>,
    /// Image mode: write the last pass's projected features here (little-endian f32, batch × D).
    #[arg(long, value_name = "FILE")]
    dump: Option<PathBuf>,
    /// Kernels for the linear layers and attention: auto, avx512, avx2 or candle (what
    /// `CLIPLABEL_KERNELS` sets for the binary).
    #[arg(long, default_value = "auto")]
    kernels: cliplabel::Kernels,
    /// Prompts per text batch (text mode; `cliplabel embed --text-file` uses 8 × --batch-size = 256).
    #[arg(long, default_value_t = 256)]
    text_batch: usize,
}

/// xorshift64*: deterministic pseudo-random numbers without another dependency.
struct Rng(u64);

impl Rng {
    fn next_f32(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let v = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        (v >> 40) as f32 / (1u64 << 24) as f32
    }
}

const ADJECTIVES: [&str; 40] = [
    "red",
    "small",
    "striped",
    "spotted",
    "giant",
    "wild",
    "golden",
    "black",
    "white",
    "green",
    "common",
    "northern",
    "southern",
    "european",
    "american",
    "african",
    "asian",
    "crested",
    "long-tailed",
    "short-haired",
    "pygmy",
    "great",
    "lesser",
    "desert",
    "mountain",
    "river",
    "sea",
    "snow",
    "wooden",
    "electric",
    "folding",
    "antique",
    "plastic",
    "steel",
    "paper",
    "glass",
    "leather",
    "rubber",
    "silver",
    "copper",
];

const NOUNS: [&str; 25] = [
    "fox",
    "owl",
    "beetle",
    "salamander",
    "terrier",
    "heron",
    "lizard",
    "frog",
    "shark",
    "moth",
    "chair",
    "kettle",
    "guitar",
    "umbrella",
    "bicycle",
    "lantern",
    "clock",
    "basket",
    "bottle",
    "boot",
    "telescope",
    "canoe",
    "trumpet",
    "sofa",
    "tractor",
];

fn synthetic_classes(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let a = ADJECTIVES[i % ADJECTIVES.len()];
            let b = NOUNS[(i / ADJECTIVES.len()) % NOUNS.len()];
            let round = i / (ADJECTIVES.len() * NOUNS.len());
            if round == 0 {
                format!("{a} {b}")
            } else {
                format!("{a} {b} {round}")
            }
        })
        .collect()
}

fn read_lines(path: &PathBuf) -> anyhow::Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect())
}

fn bench_images(engine: &Engine, a: &Args, threads: usize) -> anyhow::Result<serde_json::Value> {
    let size = engine.model().config.vision.image_size;
    // The CLIP mean/std (the values do not affect speed; they keep the inputs realistic).
    let (mean, std) = (
        cliplabel::clip::config::CLIP_MEAN,
        cliplabel::clip::config::CLIP_STD,
    );
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let from_file = match &a.pixels {
        Some(p) => {
            let bytes = std::fs::read(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
            let per = 3 * size * size * 4;
            anyhow::ensure!(
                bytes.len() == a.batch.max(1) * per,
                "{}: {} bytes, but --batch {} of 3x{size}x{size} f32 needs {}",
                p.display(),
                bytes.len(),
                a.batch,
                a.batch.max(1) * per
            );
            Some(bytes)
        }
        None => None,
    };
    let batch: Vec<Pixels> = (0..a.batch.max(1))
        .map(|i| {
            if let Some(bytes) = &from_file {
                let per = 3 * size * size;
                let data = bytes[i * per * 4..(i + 1) * per * 4]
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                return Pixels {
                    height: size,
                    width: size,
                    data,
                };
            }
            let mut data = Vec::with_capacity(3 * size * size);
            for c in 0..3 {
                for _ in 0..size * size {
                    data.push((rng.next_f32() - mean[c]) / std[c]);
                }
            }
            Pixels {
                height: size,
                width: size,
                data,
            }
        })
        .collect();
    for _ in 0..a.warmup {
        engine.embed_pixels(&batch, Features::Projected)?;
    }
    let mut per_iter = Vec::with_capacity(a.iters);
    let mut last = None;
    let cpu0 = cpu_ns();
    let start = Instant::now();
    for _ in 0..a.iters.max(1) {
        let t = Instant::now();
        let out = engine.embed_pixels(&batch, Features::Projected)?;
        // Make sure the result is materialised (candle is eager on CPU, but be explicit).
        let _ = out.dims();
        per_iter.push(t.elapsed().as_secs_f64());
        last = Some(out);
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu_secs = (cpu_ns() - cpu0) as f64 * 1e-9;
    if let (Some(path), Some(out)) = (&a.dump, last) {
        let values: Vec<f32> = out.flatten_all()?.to_vec1()?;
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(path, bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    }
    let images = batch.len() * per_iter.len();
    Ok(serde_json::json!({
        "mode": "image",
        "batch": batch.len(),
        "iters": per_iter.len(),
        "threads": threads,
        "seconds": secs,
        "images_per_s": images as f64 / secs,
        "ms_per_image": secs * 1e3 / images as f64,
        "cpu_seconds": cpu_secs,
        "images_per_cpu_s": images as f64 / cpu_secs,
        "seconds_per_iter": per_iter,
    }))
}

fn bench_text(engine: &Engine, a: &Args, threads: usize) -> anyhow::Result<serde_json::Value> {
    let mut classes = match &a.classes {
        Some(p) => read_lines(p)?,
        None => synthetic_classes(a.num_classes),
    };
    classes.truncate(a.num_classes);
    let templates = read_lines(&a.templates)?;
    anyhow::ensure!(!classes.is_empty(), "no class names");
    anyhow::ensure!(
        !templates.is_empty(),
        "no templates in {}",
        a.templates.display()
    );
    let prompts: Vec<String> = classes
        .iter()
        .flat_map(|c| templates.iter().map(move |t| t.replace("{}", c)))
        .collect();
    // Warm-up: one small batch (allocations, thread pool start-up).
    let warm: Vec<String> = prompts.iter().take(a.text_batch.min(32)).cloned().collect();
    engine.embed_texts(&warm, a.text_batch)?;
    let start = Instant::now();
    let out = engine.embed_texts(&prompts, a.text_batch)?;
    let secs = start.elapsed().as_secs_f64();
    anyhow::ensure!(out.dims()[0] == prompts.len(), "wrong number of rows");
    let tokens: usize = prompts
        .iter()
        .map(|p| engine.tokenizer().encode(p).map(|e| e.len()).unwrap_or(0))
        .sum();
    Ok(serde_json::json!({
        "mode": "text",
        "classes": classes.len(),
        "templates": templates.len(),
        "prompts": prompts.len(),
        "batch": a.text_batch,
        "threads": threads,
        "mean_tokens": tokens as f64 / prompts.len() as f64,
        "seconds": secs,
        "prompts_per_s": prompts.len() as f64 / secs,
    }))
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    if let Some(n) = a.threads.filter(|&n| n > 0) {
        // candle's CPU kernels size their work by RAYON_NUM_THREADS only (see EngineOptions::threads).
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    let load = Instant::now();
    let engine = Engine::try_new(
        EngineOptions::new(&a.model)
            .device(candle_core::Device::Cpu)
            .threads(a.threads)
            .kernels(a.kernels)
            .precision(a.precision),
    )?;
    let threads = a.threads.unwrap_or_else(rayon::current_num_threads);
    let load_s = load.elapsed().as_secs_f64();
    let mut v = if a.text {
        bench_text(&engine, &a, threads)?
    } else {
        bench_images(&engine, &a, threads)?
    };
    v["load_seconds"] = serde_json::json!(load_s);
    v["precision"] = serde_json::json!(engine.precision());
    v["kernels"] = serde_json::json!(engine.model().kernels().name());
    if let Some(note) = engine.model().kernels_note() {
        v["kernels_note"] = serde_json::json!(note);
    }
    if let Some(note) = engine.precision_note() {
        v["precision_note"] = serde_json::json!(note);
    }
    println!("{v}");
    Ok(())
}
