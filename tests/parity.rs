//! Parity with Hugging Face transformers: token ids, pixel values and features of the fixture
//! models, against reference outputs made by `scripts/make_fixtures.py`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::Device;
use cliplabel::clip::engine::{Engine, EngineOptions, Features};
use cliplabel::images::limits::DEFAULT_MAX_PIXELS;
use cliplabel::images::preprocess::{load_rgb, normalize, resize_and_crop};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

struct Reference {
    tensors: HashMap<String, (Vec<usize>, Vec<u8>)>,
}

impl Reference {
    fn load(model: &str) -> Self {
        let bytes = std::fs::read(model_dir(model).join("reference.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let tensors = st
            .tensors()
            .into_iter()
            .map(|(k, v)| (k, (v.shape().to_vec(), v.data().to_vec())))
            .collect();
        Reference { tensors }
    }
    fn f32(&self, key: &str) -> (Vec<usize>, Vec<f32>) {
        let (s, d) = &self.tensors[key];
        (
            s.clone(),
            d.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        )
    }
    fn u8(&self, key: &str) -> (Vec<usize>, Vec<u8>) {
        self.tensors[key].clone()
    }
    fn images(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .tensors
            .keys()
            .filter_map(|k| k.strip_prefix("crop_u8.").map(str::to_string))
            .collect();
        v.sort();
        v
    }
}

#[derive(serde::Deserialize)]
struct TokenCase {
    text: String,
    ids: Vec<u32>,
    ids_ctx32: Vec<u32>,
}

fn token_cases() -> Vec<TokenCase> {
    serde_json::from_slice(&std::fs::read(fixtures().join("tokens.json")).unwrap()).unwrap()
}

/// A fixture model by name, or any model directory by absolute path.
fn model_dir(model: &str) -> PathBuf {
    if Path::new(model).is_absolute() {
        PathBuf::from(model)
    } else {
        fixtures().join(model)
    }
}

fn engine(model: &str) -> Engine {
    Engine::try_new(EngineOptions::new(model_dir(model).to_str().unwrap()).device(Device::Cpu))
        .unwrap()
}

/// Maps a reference key (file name with '.' replaced by '_') back to the image file.
fn image_file(key: &str) -> PathBuf {
    let dir = fixtures().join("images");
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.file_name().unwrap().to_string_lossy().replace('.', "_") == key {
            return p;
        }
    }
    panic!("no image for key {key}");
}

fn is_jpeg(path: &Path) -> bool {
    cliplabel::images::jpeg::is_jpeg(&std::fs::read(path).unwrap())
}

#[test]
fn token_ids_match_transformers() {
    for (model, ctx32) in [("tiny-clip", false), ("tiny-clip-gelu-f16", true)] {
        let e = engine(model);
        for case in token_cases() {
            let want = if ctx32 { &case.ids_ctx32 } else { &case.ids };
            let got = e.tokenizer().encode_padded(&case.text, want.len()).unwrap();
            assert_eq!(&got, want, "{model}: {:?}", case.text);
        }
    }
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

#[test]
fn text_features_match_transformers() {
    for model in ["tiny-clip", "tiny-clip-gelu-f16"] {
        text_parity(model);
    }
}

fn text_parity(model: &str) {
    {
        let e = engine(model);
        let r = Reference::load(model);
        let texts: Vec<String> = token_cases().into_iter().map(|c| c.text).collect();
        let (shape, want) = r.f32("text_features");
        // A small batch size mixes prompts of different lengths across batches.
        for bs in [1, 7, 64] {
            let got: Vec<f32> = e
                .embed_texts(&texts, bs)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            assert_eq!(got.len(), shape[0] * shape[1]);
            let d = max_abs(&got, &want);
            println!("{model} batch {bs}: text features max abs diff {d:.2e}");
            assert!(d <= 1e-4, "{model} batch {bs}: max abs diff {d}");
        }
        let (_, ls) = r.f32("logit_scale_exp");
        assert!((e.model().logit_scale() - ls[0]).abs() <= 1e-4 * ls[0]);
    }
}

/// Every fixture image, JPEG included, must give exactly Pillow's 8-bit crop (decode, RGB
/// conversion, resize and crop all bit-exact), hence the processor's pixel values and, up to
/// float summation order in the model, its image features.
#[test]
fn pixels_and_image_features_match_transformers() {
    for model in ["tiny-clip", "tiny-clip-gelu-f16"] {
        image_parity(model);
    }
}

/// Full-size ViT-B/32 parity (151M random parameters, not committed): make the model and its
/// reference with `scripts/make_fixtures.py --full`, then run
/// `cargo test --release --test parity -- --ignored --nocapture`.
#[test]
#[ignore = "needs scratch/full-vit-b32 from scripts/make_fixtures.py --full"]
fn full_size_vit_b32_matches_transformers() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scratch/full-vit-b32");
    assert!(
        dir.join("reference.safetensors").is_file(),
        "run `python scripts/make_fixtures.py --full` first"
    );
    let dir = dir.to_str().unwrap();
    text_parity(dir);
    image_parity(dir);
}

fn image_parity(model: &str) {
    {
        let e = engine(model);
        let r = Reference::load(model);
        let images = r.images();
        assert!(
            images.iter().filter(|k| k.ends_with("_jpg")).count() >= 8,
            "{model}: the reference lacks the JPEG cases"
        );
        for key in images {
            let path = image_file(&key);
            let rgb = load_rgb(&path, DEFAULT_MAX_PIXELS).unwrap();
            let crop = resize_and_crop(&rgb, e.preprocess_config());
            let (shape, want) = r.u8(&format!("crop_u8.{key}"));
            assert_eq!(shape, vec![crop.height, crop.width, 3], "{key}");
            let diffs: Vec<u8> = crop
                .data
                .iter()
                .zip(&want)
                .map(|(a, b)| a.abs_diff(*b))
                .collect();
            let max = diffs.iter().copied().max().unwrap_or(0);
            let n_diff = diffs.iter().filter(|&&d| d > 0).count();
            let jpeg = is_jpeg(&path);
            println!(
                "{model} {key}: {} of {} values differ, max {max} levels{}",
                n_diff,
                diffs.len(),
                if jpeg { " (JPEG)" } else { "" }
            );
            assert_eq!(
                n_diff, 0,
                "{model} {key}: {n_diff} crop values differ from Pillow's (max {max} levels)"
            );
            let px = normalize(&crop, e.preprocess_config());
            if r.tensors.contains_key(&format!("pixel_values.{key}")) {
                let (_, want_px) = r.f32(&format!("pixel_values.{key}"));
                let d = max_abs(&px.data, &want_px);
                assert!(d <= 1e-6, "{model} {key}: pixel values differ by {d}");
            }
            let feats: Vec<f32> = e
                .embed_pixels(&[px], Features::Projected)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let (_, want_f) = r.f32(&format!("image_features.{key}"));
            let d = max_abs(&feats, &want_f);
            let c = cosine(&feats, &want_f);
            println!("{model} {key}: feature max abs diff {d:.2e}, cosine {c:.7}");
            assert!(d <= 1e-4, "{model} {key}: feature max abs diff {d}");
            assert!(c >= 0.9999, "{model} {key}: feature cosine {c}");
        }
    }
}
