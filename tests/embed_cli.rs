//! End-to-end tests of `cliplabel embed`, model loading errors, and the library's classifier.

mod common;

use std::path::Path;

use candle_core::Device;
use cliplabel::clip::engine::Engine;
use cliplabel::util::atomic::read_embeddings;
use cliplabel::classify::classes::{ClassList, Templates};
use cliplabel::classify::zeroshot::ZeroShotClassifier;
use common::*;

fn embed(tmp: &Path, extra: &[&str]) -> std::process::Output {
    let mut c = cliplabel(&tmp.join("cache"));
    c.arg("embed").arg("--model").arg(tiny_model()).args(extra);
    run(&mut c)
}

#[test]
fn embeds_images_in_sorted_order_and_lists_failures() {
    let tmp = tempfile::tempdir().unwrap();
    let imgs = tmp.path().join("imgs");
    let mut good = image_folder(&imgs, 1);
    std::fs::create_dir_all(imgs.join("sub")).unwrap();
    std::fs::copy(fixtures().join("bad/empty.jpg"), imgs.join("sub/empty.JPG")).unwrap();
    std::fs::write(imgs.join("notes.txt"), "ignored: not an image extension").unwrap();
    let out = tmp.path().join("e.safetensors");
    let o = embed(
        tmp.path(),
        &[
            "--out",
            out.to_str().unwrap(),
            "--normalize",
            imgs.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("1 failed"), "{}", stderr(&o));
    let (rows, side) = read_embeddings(&out).unwrap();
    good.sort();
    let want: Vec<String> = good.iter().map(|p| p.display().to_string()).collect();
    assert_eq!(side.items, want);
    assert_eq!(side.kind, "image");
    assert_eq!(side.dim, 16);
    assert_eq!(side.failed.len(), 1);
    assert!(side.failed[0].path.ends_with("empty.JPG") && side.failed[0].error.contains("empty"));
    for r in rows.chunks_exact(side.dim) {
        let n: f32 = r.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((n - 1.0).abs() < 1e-5);
    }
    // --strict: same output, non-zero exit.
    let o = embed(
        tmp.path(),
        &[
            "--strict",
            "--out",
            out.to_str().unwrap(),
            imgs.to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    // No temporary files are left beside the output.
    let names: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.contains(".tmp-")), "{names:?}");
}

#[test]
fn thread_counts_and_batch_sizes_agree() {
    let tmp = tempfile::tempdir().unwrap();
    let imgs = tmp.path().join("imgs");
    image_folder(&imgs, 1);
    let mut results = Vec::new();
    for (threads, bs) in [("1", "8"), ("2", "8"), ("2", "1")] {
        let out = tmp.path().join(format!("e{threads}-{bs}.safetensors"));
        let o = embed(
            tmp.path(),
            &[
                "--threads",
                threads,
                "--batch-size",
                bs,
                "--out",
                out.to_str().unwrap(),
                imgs.to_str().unwrap(),
            ],
        );
        assert!(o.status.success(), "{}", stderr(&o));
        results.push(read_embeddings(&out).unwrap());
    }
    // The thread count must not change results beyond 1e-6; a different batch size changes
    // the matrix-multiply blocking, hence float rounding, slightly more.
    for ((rows, side), tol) in results[1..].iter().zip([1e-6, 1e-5]) {
        assert_eq!(side.items, results[0].1.items);
        let d = rows
            .iter()
            .zip(&results[0].0)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        println!("max difference {d:.2e} (tolerance {tol:.0e})");
        assert!(d <= tol, "max difference {d}");
    }
}

#[test]
fn text_file_rows_match_the_library() {
    let tmp = tempfile::tempdir().unwrap();
    let prompts = tmp.path().join("p.txt");
    std::fs::write(
        &prompts,
        "a photo of a cat.\n\na very long prompt about a dog that runs across a field\nCAFÉ\n",
    )
    .unwrap();
    let out = tmp.path().join("t.safetensors");
    let o = embed(
        tmp.path(),
        &[
            "--text-file",
            prompts.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let (rows, side) = read_embeddings(&out).unwrap();
    assert_eq!(side.kind, "text");
    assert_eq!(
        side.items.len(),
        4,
        "an empty line is an (empty) prompt too"
    );
    let e = Engine::load(&tiny_model(), &Device::Cpu).unwrap();
    let want: Vec<f32> = e
        .embed_texts(&side.items, 1)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let d = rows
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(d <= 1e-5, "{d}");
}

#[test]
fn bad_inputs_fail_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("e.safetensors");
    let o = embed(
        tmp.path(),
        &[
            "--out",
            out.to_str().unwrap(),
            tmp.path().join("missing").to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("missing"), "{}", stderr(&o));
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let o = embed(
        tmp.path(),
        &["--out", out.to_str().unwrap(), empty.to_str().unwrap()],
    );
    assert!(
        !o.status.success() && stderr(&o).contains("no images found"),
        "{}",
        stderr(&o)
    );
    assert!(!out.exists());
    // --max-pixels refuses before decoding.
    let imgs = tmp.path().join("imgs");
    std::fs::create_dir_all(&imgs).unwrap();
    std::fs::copy(fixtures().join("images/rgb.png"), imgs.join("rgb.png")).unwrap();
    let o = embed(
        tmp.path(),
        &[
            "--max-pixels",
            "1000",
            "--out",
            out.to_str().unwrap(),
            imgs.to_str().unwrap(),
        ],
    );
    assert!(o.status.success());
    let (_, side) = read_embeddings(&out).unwrap();
    assert!(side.items.is_empty() && side.failed[0].error.contains("exceeds the limit"));
}

/// Copies the tiny model into `dir` so a test can damage it.
fn model_copy(dir: &Path) -> std::path::PathBuf {
    let m = dir.join("model");
    std::fs::create_dir_all(&m).unwrap();
    for f in std::fs::read_dir(fixtures().join("tiny-clip")).unwrap() {
        let f = f.unwrap().path();
        if f.file_name().unwrap() != "reference.safetensors" {
            std::fs::copy(&f, m.join(f.file_name().unwrap())).unwrap();
        }
    }
    m
}

fn load_err(m: &Path) -> String {
    match Engine::load(m.to_str().unwrap(), &Device::Cpu) {
        Ok(_) => panic!("{} loaded", m.display()),
        Err(e) => e.to_string(),
    }
}

/// Rewrites model.safetensors through `f`, which may drop or replace tensors.
fn rewrite_weights(
    m: &Path,
    f: impl Fn(&str, Vec<usize>, Vec<u8>) -> Option<(Vec<usize>, Vec<u8>)>,
) {
    let path = m.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut kept: Vec<(String, Vec<usize>, Vec<u8>, safetensors::Dtype)> = Vec::new();
    for (name, v) in st.tensors() {
        if let Some((shape, data)) = f(&name, v.shape().to_vec(), v.data().to_vec()) {
            kept.push((name, shape, data, v.dtype()));
        }
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = kept
        .iter()
        .map(|(n, s, d, t)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*t, s.clone(), d).unwrap(),
            )
        })
        .collect();
    let out = safetensors::tensor::serialize(views, None).unwrap();
    std::fs::write(&path, out).unwrap();
}

#[test]
fn wrong_model_directories_name_the_file_and_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let m = model_copy(&tmp.path().join("missing-tensor"));
    rewrite_weights(&m, |n, s, d| {
        (n != "vision_model.embeddings.class_embedding").then_some((s, d))
    });
    let e = load_err(&m);
    assert!(
        e.contains("model.safetensors") && e.contains("vision_model.embeddings.class_embedding"),
        "{e}"
    );

    let m = model_copy(&tmp.path().join("no-logit-scale"));
    rewrite_weights(&m, |n, s, d| (n != "logit_scale").then_some((s, d)));
    assert!(load_err(&m).contains("logit_scale"));

    let m = model_copy(&tmp.path().join("shape"));
    rewrite_weights(&m, |n, s, d| {
        if n == "text_projection.weight" {
            Some((vec![s[1], s[0]], d))
        } else {
            Some((s, d))
        }
    });
    let e = load_err(&m);
    assert!(
        e.contains("text_projection.weight") && e.contains("shape"),
        "{e}"
    );

    let m = model_copy(&tmp.path().join("type"));
    let cfg = std::fs::read_to_string(m.join("config.json"))
        .unwrap()
        .replace("\"clip\"", "\"siglip\"");
    std::fs::write(m.join("config.json"), cfg).unwrap();
    let e = load_err(&m);
    assert!(e.contains("config.json") && e.contains("model_type"), "{e}");

    let m = model_copy(&tmp.path().join("tok"));
    std::fs::remove_file(m.join("tokenizer.json")).unwrap();
    assert!(load_err(&m).contains("tokenizer.json"));

    let m = model_copy(&tmp.path().join("weights"));
    std::fs::remove_file(m.join("model.safetensors")).unwrap();
    assert!(load_err(&m).contains("model.safetensors"));

    let m = model_copy(&tmp.path().join("garbage"));
    std::fs::write(m.join("model.safetensors"), b"not safetensors").unwrap();
    assert!(load_err(&m).contains("model.safetensors"));

    // Through the CLI: a clean message and exit code 2, never a panic.
    let o = run(cliplabel(tmp.path()).args([
        "embed",
        "--model",
        m.to_str().unwrap(),
        "--out",
        "x.safetensors",
        ".",
    ]));
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).starts_with("error:") && !stderr(&o).contains("panicked"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn synonym_class_is_the_mean_of_its_prompts() {
    let e = Engine::load(&tiny_model(), &Device::Cpu).unwrap();
    let classes = ClassList::parse("cat: cat | kitten\ndog\n", Path::new("c.txt")).unwrap();
    let templates =
        Templates::from_strings(&["a photo of a {}.".into(), "a drawing of a {}.".into()]).unwrap();
    let clf = ZeroShotClassifier::build(&e, &classes, &templates).unwrap();
    let prompts: Vec<String> = [
        "a photo of a cat.",
        "a drawing of a cat.",
        "a photo of a kitten.",
        "a drawing of a kitten.",
    ]
    .map(String::from)
    .to_vec();
    let rows: Vec<f32> = e
        .embed_texts(&prompts, 4)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let dim = clf.dim;
    let mut mean = vec![0f32; dim];
    for r in rows.chunks_exact(dim) {
        let n = r.iter().map(|v| v * v).sum::<f32>().sqrt();
        for (m, v) in mean.iter_mut().zip(r) {
            *m += v / n;
        }
    }
    let n = mean.iter().map(|v| v * v).sum::<f32>().sqrt();
    for (a, b) in clf.weights[..dim].iter().zip(&mean) {
        assert!((a - b / n).abs() < 1e-5);
    }
    assert_eq!(clf.classes, ["cat", "dog"]);
    assert!((clf.logit_scale - e.model.logit_scale()).abs() < 1e-6);
}
