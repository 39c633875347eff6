//! Every file of tests/fixtures/corpus/ (made by scripts/make_corpus.py) against Pillow: a file
//! Pillow opens must decode to Pillow + `convert_to_rgb`'s pixels exactly, or, for the files
//! listed in `KNOWN_DIFFERENT` (a different but conforming decoder), to an image embedding with
//! cosine >= 0.9999 on the tiny fixture model; a file Pillow refuses must be refused with an
//! error. Prints the coverage figures.

use std::path::{Path, PathBuf};

use candle_core::Device;
use cliplabel::clip::engine::{Engine, EngineOptions, Features};
use cliplabel::images::decode::{decode_rgb, DecodeLimits};
use cliplabel::images::preprocess::preprocess;
use cliplabel::images::resize::Rgb8;
use serde::Deserialize;

/// Files whose pixels legitimately differ from Pillow's (another decoder of a lossy codec),
/// each with the reason; they must still reach cosine >= 0.9999.
const KNOWN_DIFFERENT: &[(&str, &str)] = &[(
    "tiffcp_cmyk_jpeg_tiled.tif",
    "CMYK JPEG-in-TIFF tiles go through the tiff crate's zune-jpeg, not libjpeg: 1 level",
)];

/// Files Pillow opens that cliplabel still refuses (listed in the README's "Image formats"),
/// each with the reason. The test fails if one of them decodes (then remove it from here) or if
/// any other Pillow-openable file is refused.
const KNOWN_REFUSED: &[(&str, &str)] = &[];

#[derive(Deserialize)]
struct Entry {
    file: String,
    tool: String,
    pillow_opens: bool,
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    size: Option<[usize; 2]>,
    #[serde(default)]
    expected: Option<String>,
}

#[derive(Deserialize)]
struct Manifest {
    files: Vec<Entry>,
}

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/corpus")
}

fn embed(e: &Engine, img: &Rgb8) -> Vec<f32> {
    let px = preprocess(img, e.preprocess_config());
    e.embed_pixels(&[px], Features::Projected)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

#[test]
fn corpus_decodes_as_pillow_does() {
    let m: Manifest =
        serde_json::from_slice(&std::fs::read(corpus().join("manifest.json")).unwrap()).unwrap();
    assert!(m.files.len() >= 100, "corpus too small: {}", m.files.len());
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-clip");
    let engine =
        Engine::try_new(EngineOptions::new(model.to_str().unwrap()).device(Device::Cpu)).unwrap();
    let limits = DecodeLimits::default();
    let (mut opened, mut decoded, mut identical, mut refused_ok) = (0, 0, 0, 0);
    let mut min_cos = 1f64;
    let mut failures = Vec::new();
    for e in &m.files {
        let path = corpus().join(&e.file);
        let bytes = std::fs::read(&path).unwrap();
        let got = decode_rgb(&bytes, &path, &limits);
        if !e.pillow_opens {
            match got {
                Err(_) => refused_ok += 1,
                Ok(_) => failures.push(format!(
                    "{}: Pillow refuses it, cliplabel decoded it",
                    e.file
                )),
            }
            continue;
        }
        opened += 1;
        let [w, h] = e.size.unwrap();
        let want = Rgb8 {
            width: w,
            height: h,
            data: std::fs::read(corpus().join(e.expected.as_ref().unwrap())).unwrap(),
        };
        let got = match got {
            Ok(g) => g,
            Err(err) if KNOWN_REFUSED.iter().any(|(f, _)| *f == e.file) => {
                println!("{}: refused (known): {err}", e.file);
                continue;
            }
            Err(err) => {
                failures.push(format!(
                    "{} ({}, mode {:?}): refused: {err}",
                    e.file,
                    e.tool,
                    e.mode.as_deref().unwrap_or("?")
                ));
                continue;
            }
        };
        decoded += 1;
        if KNOWN_REFUSED.iter().any(|(f, _)| *f == e.file) {
            failures.push(format!("{} is listed as refused but decodes now", e.file));
        }
        if (got.width, got.height) != (w, h) {
            failures.push(format!(
                "{}: size {}x{}, Pillow {w}x{h}",
                e.file, got.width, got.height
            ));
            continue;
        }
        let n_diff = got
            .data
            .iter()
            .zip(&want.data)
            .filter(|(a, b)| a != b)
            .count();
        let max = got
            .data
            .iter()
            .zip(&want.data)
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap_or(0);
        if n_diff == 0 {
            identical += 1;
            continue;
        }
        let first = got
            .data
            .iter()
            .zip(&want.data)
            .position(|(a, b)| a != b)
            .unwrap()
            / 3;
        println!(
            "{}: first differing pixel ({}, {}): cliplabel {:?}, Pillow {:?}",
            e.file,
            first % w,
            first / w,
            &got.data[first * 3..first * 3 + 3],
            &want.data[first * 3..first * 3 + 3]
        );
        let c = cosine(&embed(&engine, &got), &embed(&engine, &want));
        min_cos = min_cos.min(c);
        let known = KNOWN_DIFFERENT.iter().any(|(f, _)| *f == e.file);
        println!(
            "{} (mode {:?}): {n_diff} values differ (max {max}), cosine {c:.6}{}",
            e.file,
            e.mode.as_deref().unwrap_or("?"),
            if known { " [known]" } else { "" }
        );
        if !known || c < 0.9999 {
            failures.push(format!(
                "{} (mode {:?}): {n_diff} values differ from Pillow's (max {max} levels), cosine {c:.6}",
                e.file,
                e.mode.as_deref().unwrap_or("?")
            ));
        }
    }
    println!(
        "corpus: {} files; Pillow opens {opened}; cliplabel decodes {decoded} ({:.1}%); identical {identical}; \
         min cosine of the others {min_cos:.6}; Pillow-refused files refused {refused_ok}",
        m.files.len(),
        100.0 * decoded as f64 / opened as f64
    );
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
