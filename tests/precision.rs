//! Fidelity of the bf16 and int8 encoders against fp32: cosine of image and text features on
//! the tiny fixture models and the shipped demo model, and top-1 agreement of `label` on
//! freshly generated shapes images (with each precision's zero-shot accuracy printed).
//!
//! On a CPU without AVX512-BF16 / VNNI the requested precision falls back; the tests then check
//! the fallback note instead, and say so.

mod common;

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use cliplabel::clip::engine::{Engine, EngineOptions, Features};
use cliplabel::{Kernels, Precision};
use common::*;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Whether this CPU (with the packed kernels) runs `p` natively.
fn native(p: Precision) -> bool {
    p.native()
}

/// The engine for `spec` in precision `p`, on the CPU.
fn engine(spec: &str, p: Precision) -> Engine {
    engine_on(spec, p, Kernels::Auto)
}

/// The engine for `spec` in precision `p`, on the CPU, with `kernels` forced.
fn engine_on(spec: &str, p: Precision, kernels: Kernels) -> Engine {
    Engine::try_new(
        EngineOptions::new(spec)
            .device(Device::Cpu)
            .precision(p)
            .kernels(kernels),
    )
    .unwrap()
}

/// The smallest cosine similarity between corresponding rows of `a` and `b`.
fn min_row_cosine(a: &Tensor, b: &Tensor) -> f64 {
    let a = a.to_vec2::<f32>().unwrap();
    let b = b.to_vec2::<f32>().unwrap();
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(&b)
        .map(|(x, y)| {
            let dot: f64 = x.iter().zip(y).map(|(p, q)| *p as f64 * *q as f64).sum();
            let nx: f64 = x.iter().map(|p| (*p as f64).powi(2)).sum::<f64>().sqrt();
            let ny: f64 = y.iter().map(|p| (*p as f64).powi(2)).sum::<f64>().sqrt();
            dot / (nx * ny)
        })
        .fold(f64::INFINITY, f64::min)
}

/// Every fixture image the processor opens, preprocessed for `engine`.
fn fixture_pixels(engine: &Engine) -> Vec<cliplabel::images::preprocess::Pixels> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(fixtures().join("images"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    let pixels: Vec<_> = paths
        .iter()
        .filter_map(|p| engine.load_pixels(p).ok())
        .collect();
    assert!(
        pixels.len() >= 20,
        "only {} fixture images opened",
        pixels.len()
    );
    pixels
}

fn prompts() -> Vec<String> {
    let classes = std::fs::read_to_string(repo().join("models/shapes-clip/classes.txt")).unwrap();
    let mut p: Vec<String> = classes
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|c| format!("a photo of a {}.", c.trim()))
        .collect();
    p.push("a blurry photo of something".into());
    p.push("an image".into());
    p
}

#[test]
fn features_stay_close_to_fp32() {
    for (dir, name) in [
        (fixtures().join("tiny-clip"), "tiny-clip"),
        (fixtures().join("tiny-clip-gelu-f16"), "tiny-clip-gelu-f16"),
        (repo().join("models/shapes-clip"), "shapes-clip"),
    ] {
        let spec = dir.to_str().unwrap();
        let base = engine(spec, Precision::Fp32);
        assert_eq!(base.precision_note(), None);
        let pixels = fixture_pixels(&base);
        let texts = prompts();
        let img0 = base.embed_pixels(&pixels, Features::Projected).unwrap();
        let txt0 = base.embed_texts(&texts, 64).unwrap();
        // int8 also on the AVX2 kernels (AVX-VNNI), where this CPU has AVX2.
        let avx2 = (Kernels::Avx2.resolve().0 == Kernels::Avx2).then_some((
            Precision::Int8,
            0.99,
            Kernels::Avx2,
        ));
        for (p, target, kernels) in [
            (Precision::Bf16, 0.999, Kernels::Auto),
            (Precision::Int8, 0.99, Kernels::Auto),
        ]
        .into_iter()
        .chain(avx2)
        {
            let e = engine_on(spec, p, kernels);
            if !kernels.runs_natively(p) {
                skipped(&format!(
                    "{name}: this CPU cannot run {p} on the {kernels} kernels; the fallback \
                     note is checked instead"
                ));
                assert_ne!(e.precision(), p);
                assert!(e.precision_note().is_some());
                continue;
            }
            assert_eq!(e.precision(), p);
            assert_ne!(
                e.run_fingerprint(),
                base.run_fingerprint(),
                "caches must keep precisions apart"
            );
            let img = min_row_cosine(
                &e.embed_pixels(&pixels, Features::Projected).unwrap(),
                &img0,
            );
            let txt = min_row_cosine(&e.embed_texts(&texts, 64).unwrap(), &txt0);
            println!(
                "{name} {p} ({kernels} kernels): min cosine to fp32 over {} images {img:.6}, \
                 over {} prompts {txt:.6}",
                pixels.len(),
                texts.len()
            );
            assert!(img >= target, "{name} {p}: image cosine {img} < {target}");
            assert!(txt >= target, "{name} {p}: text cosine {txt} < {target}");
            assert!(
                img < 1.0 - 1e-9 || txt < 1.0 - 1e-9,
                "{name} {p}: identical to fp32?"
            );
        }
    }
}

/// `(path, label)` rows of a label CSV, sorted by path.
fn labels(csv: &Path) -> Vec<(String, String)> {
    let mut rows: Vec<(String, String)> = read_csv(csv)[1..]
        .iter()
        .map(|r| (r[0].clone(), r[1].clone()))
        .collect();
    rows.sort();
    rows
}

fn truth(path: &str) -> String {
    Path::new(path)
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

#[test]
fn demo_top1_agrees_with_fp32() {
    let tmp = tempfile::tempdir().unwrap();
    let imgs = tmp.path().join("imgs");
    let o = run(std::process::Command::new(shapes_bin()).args([
        "--out",
        imgs.to_str().unwrap(),
        "--per-class",
        "5",
        "--seed",
        "4242",
        "--format",
        "mixed",
    ]));
    assert!(o.status.success(), "{}", stderr(&o));
    let model = repo().join("models/shapes-clip");
    let label = |p: Precision| {
        let out = tmp.path().join(format!("{p}.csv"));
        let o = run(cliplabel(&tmp.path().join("cache")).args([
            "label",
            "--model",
            model.to_str().unwrap(),
            "--classes",
            model.join("classes.txt").to_str().unwrap(),
            "--precision",
            p.name(),
            "--out",
            out.to_str().unwrap(),
            imgs.to_str().unwrap(),
        ]));
        assert!(o.status.success(), "{p}: {}", stderr(&o));
        (labels(&out), stderr(&o))
    };
    let (base, _) = label(Precision::Fp32);
    assert!(base.len() >= 200, "{} images labelled", base.len());
    let acc = |rows: &[(String, String)]| {
        rows.iter().filter(|(p, l)| truth(p) == *l).count() as f64 / rows.len() as f64
    };
    println!(
        "fp32: zero-shot top-1 {:.1}% of {}",
        100.0 * acc(&base),
        base.len()
    );
    for (p, target) in [(Precision::Bf16, 0.995), (Precision::Int8, 0.98)] {
        let (rows, err) = label(p);
        if !native(p) {
            skipped(&format!(
                "this CPU cannot run {p}; the fallback note is checked instead"
            ));
            assert!(err.contains(": running "), "{err}");
            continue;
        }
        assert!(!err.contains(": running "), "{err}");
        assert_eq!(rows.len(), base.len());
        let same = rows
            .iter()
            .zip(&base)
            .filter(|(a, b)| {
                assert_eq!(a.0, b.0);
                a.1 == b.1
            })
            .count() as f64
            / base.len() as f64;
        println!(
            "{p}: zero-shot top-1 {:.1}%, agreement with fp32 {:.2}% of {}",
            100.0 * acc(&rows),
            100.0 * same,
            base.len()
        );
        assert!(same >= target, "{p}: top-1 agreement {same} < {target}");
    }
}
