//! Measures what the near-duplicate threshold of `cliplabel audit` has to separate: the cosine
//! between an image and its edited copies (resized, re-encoded as JPEG, slightly cropped)
//! versus the cosine between distinct images, through a given model.
//!
//! ```text
//! cargo run --release --example shapes -- --out /tmp/thr --per-class 20 --seed 5 --format mixed
//! cargo run --release --example audit_threshold -- models/shapes-clip /tmp/thr 200
//! ```
//! Arguments: model, an image folder (ImageFolder layout), how many images get copies.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use cliplabel::clip::engine::{Engine, EngineOptions, Features};
use cliplabel::eval::dataset::LabelledSet;
use cliplabel::jobs::cache::EmbeddingCache;
use image::codecs::jpeg::JpegEncoder;
use image::imageops::FilterType;
use image::{DynamicImage, ImageEncoder};

/// The edits applied to make copies.
const EDITS: &[&str] = &[
    "resize-0.5",
    "resize-1.5",
    "jpeg-q50",
    "crop-96",
    "crop-90",
    "resize-0.75+jpeg-q70",
];

fn jpeg(img: &DynamicImage, q: u8) -> Vec<u8> {
    let rgb = img.to_rgb8();
    let mut buf = Vec::new();
    JpegEncoder::new_with_quality(Cursor::new(&mut buf), q)
        .write_image(
            &rgb,
            rgb.width(),
            rgb.height(),
            image::ExtendedColorType::Rgb8,
        )
        .unwrap();
    buf
}

fn resize(img: &DynamicImage, f: f64) -> DynamicImage {
    let w = ((img.width() as f64 * f).round() as u32).max(1);
    let h = ((img.height() as f64 * f).round() as u32).max(1);
    img.resize_exact(w, h, FilterType::Lanczos3)
}

/// Writes the copy of `src` made by `edit` under `dir`, returning its path.
fn make_copy(src: &Path, edit: &str, dir: &Path, tag: usize) -> PathBuf {
    let img = image::open(src).unwrap();
    let out = dir.join(format!("{tag:05}-{edit}"));
    let (bytes, ext) = match edit {
        "resize-0.5" => (png(&resize(&img, 0.5)), "png"),
        "resize-1.5" => (png(&resize(&img, 1.5)), "png"),
        "jpeg-q50" => (jpeg(&img, 50), "jpg"),
        "crop-96" | "crop-90" => {
            // Keep the central 96% (or 90%) of each side.
            let keep = if edit == "crop-96" { 0.96 } else { 0.90 };
            let (w, h) = (img.width(), img.height());
            let dx = ((w as f64 * (1.0 - keep) / 2.0).round() as u32).max(1);
            let dy = ((h as f64 * (1.0 - keep) / 2.0).round() as u32).max(1);
            (png(&img.crop_imm(dx, dy, w - 2 * dx, h - 2 * dy)), "png")
        }
        "resize-0.75+jpeg-q70" => (jpeg(&resize(&img, 0.75), 70), "jpg"),
        _ => unreachable!(),
    };
    let p = out.with_extension(ext);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn png(img: &DynamicImage) -> Vec<u8> {
    let mut buf = Vec::new();
    img.write_to(&mut Cursor::new(&mut buf), image::ImageFormat::Png)
        .unwrap();
    buf
}

fn unit(mut v: Vec<f32>) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= n);
    v
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn quantiles(mut v: Vec<f32>, qs: &[f64]) -> String {
    v.sort_by(f32::total_cmp);
    qs.iter()
        .map(|&q| {
            let i = ((v.len() - 1) as f64 * q).round() as usize;
            format!("q{:.3}={:.4}", q, v[i])
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let model = &args[1];
    let data = Path::new(&args[2]);
    let n_copy: usize = args[3].parse().unwrap();
    let engine = Engine::try_new(EngineOptions::new(model.to_string())).unwrap();
    let set = LabelledSet::from_image_folder(data).unwrap();
    let mut cache = EmbeddingCache::open(None, &engine, Features::Projected).unwrap();
    let e = cache.embed(&engine, &set.paths, 64).unwrap();
    assert!(e.failures.is_empty());
    let x: Vec<Vec<f32>> = e.rows.into_iter().map(|r| unit(r.unwrap())).collect();
    let n = x.len();
    // Distinct images: each one's largest cosine to any other, and to another of its class.
    let mut nn_any = Vec::new();
    let mut nn_same = Vec::new();
    for i in 0..n {
        let (mut a, mut s) = (f32::MIN, f32::MIN);
        for j in 0..n {
            if i != j {
                let c = dot(&x[i], &x[j]);
                a = a.max(c);
                if set.labels[i] == set.labels[j] {
                    s = s.max(c);
                }
            }
        }
        nn_any.push(a);
        nn_same.push(s);
    }
    let qs = [0.0, 0.01, 0.05, 0.5, 0.99, 0.999, 1.0];
    println!("{n} distinct images, {} classes", set.classes.len());
    println!(
        "distinct, nearest other image:       {}",
        quantiles(nn_any.clone(), &qs)
    );
    println!(
        "distinct, nearest other of its class: {}",
        quantiles(nn_same, &qs)
    );
    let tmp = tempfile::tempdir().unwrap();
    let step = (n / n_copy.max(1)).max(1);
    let picks: Vec<usize> = (0..n).step_by(step).take(n_copy).collect();
    let mut all_copy = Vec::new();
    let mut per_edit = Vec::new();
    for edit in EDITS {
        let copies: Vec<PathBuf> = picks
            .iter()
            .map(|&i| make_copy(&set.paths[i], edit, tmp.path(), i))
            .collect();
        let ce = cache.embed(&engine, &copies, 64).unwrap();
        let cos: Vec<f32> = ce
            .rows
            .into_iter()
            .zip(&picks)
            .map(|(r, &i)| dot(&unit(r.unwrap()), &x[i]))
            .collect();
        println!("copy {edit:>22}: {}", quantiles(cos.clone(), &qs));
        all_copy.extend(cos.iter().copied());
        per_edit.push((edit, cos));
    }
    println!(
        "copies, all edits:                   {}",
        quantiles(all_copy.clone(), &qs)
    );
    for t in [0.95f32, 0.98, 0.99, 0.995, 0.996, 0.997, 0.998, 0.999] {
        let recall = all_copy.iter().filter(|&&c| c >= t).count() as f64 / all_copy.len() as f64;
        let fp = nn_any.iter().filter(|&&c| c >= t).count() as f64 / n as f64;
        println!(
            "threshold {t:.3}: copies found {:.1}%, distinct images with a neighbour above {:.2}%",
            recall * 100.0,
            fp * 100.0
        );
        let per: Vec<String> = per_edit
            .iter()
            .map(|(e, c)| {
                let r = c.iter().filter(|&&v| v >= t).count() as f64 / c.len() as f64;
                format!("{e} {:.1}%", r * 100.0)
            })
            .collect();
        println!("  {}", per.join(", "));
    }
}
