//! End-to-end tests of `cliplabel fit`, `predict` and `compare` with the tiny fixture model.

mod common;

use std::path::{Path, PathBuf};

use common::*;

/// An ImageFolder with two classes built from the fixture PNGs, plus one corrupt file.
fn image_folder_classes(root: &Path) -> PathBuf {
    let mut srcs: Vec<PathBuf> = std::fs::read_dir(fixtures().join("images"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    srcs.sort();
    for (i, s) in srcs.iter().enumerate() {
        let class = if i % 2 == 0 { "alpha" } else { "beta" };
        let d = root.join(class);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::copy(s, d.join(s.file_name().unwrap())).unwrap();
    }
    root.to_path_buf()
}

fn cli(tmp: &Path, args: &[&str]) -> std::process::Output {
    run(cliplabel(&tmp.join("cache")).args(args))
}

#[test]
fn fit_predict_and_refuse_other_models() {
    let tmp = tempfile::tempdir().unwrap();
    let train = image_folder_classes(&tmp.path().join("train"));
    std::fs::copy(
        fixtures().join("bad/empty.jpg"),
        train.join("alpha/broken.jpg"),
    )
    .unwrap();
    let head = tmp.path().join("head.safetensors");
    let o = cli(
        tmp.path(),
        &[
            "fit",
            "--model",
            &tiny_model(),
            "--train",
            train.to_str().unwrap(),
            "--out",
            head.to_str().unwrap(),
            "--cv",
            "3",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("broken.jpg") && stderr(&o).contains("CV accuracy"),
        "{}",
        stderr(&o)
    );
    let failed = std::fs::read_to_string(tmp.path().join("head.safetensors.failed.jsonl")).unwrap();
    assert!(failed.contains("broken.jpg"));
    let h = cliplabel::classify::head::Head::load(&head).unwrap();
    assert_eq!(h.meta.classes, ["alpha", "beta"]);
    assert_eq!(h.meta.dim, 16);
    assert_eq!(h.meta.cv_folds, 3);
    assert!(h.meta.c.is_some() && h.meta.cv_accuracy.is_some());
    assert_eq!(h.meta.examples_per_class.iter().sum::<usize>(), 13);
    // A second fit reuses the embedding cache and refuses to overwrite without --force.
    let o = cli(
        tmp.path(),
        &[
            "fit",
            "--model",
            &tiny_model(),
            "--train",
            train.to_str().unwrap(),
            "--out",
            head.to_str().unwrap(),
        ],
    );
    assert!(!o.status.success() && stderr(&o).contains("--force"));
    let o = cli(
        tmp.path(),
        &[
            "fit",
            "--model",
            &tiny_model(),
            "--train",
            train.to_str().unwrap(),
            "--out",
            head.to_str().unwrap(),
            "--force",
            "--cv",
            "3",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("0 encoded, 13 from cache"),
        "{}",
        stderr(&o)
    );

    let out = tmp.path().join("pred.jsonl");
    let o = cli(
        tmp.path(),
        &[
            "predict",
            "--model",
            &tiny_model(),
            "--head",
            head.to_str().unwrap(),
            "--top-k",
            "2",
            "--out",
            out.to_str().unwrap(),
            train.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        rows.len(),
        14 - 1,
        "13 images labelled, the broken one failed"
    );
    assert!(
        stderr(&o).contains("(13 from the embedding cache)"),
        "fit's embeddings are reused: {}",
        stderr(&o)
    );
    assert!(rows
        .iter()
        .all(|r| ["alpha", "beta"].contains(&r["label"].as_str().unwrap())));

    // The same head on another model is refused with a clear message.
    let other = fixtures().join("tiny-clip-gelu-f16");
    let o = cli(
        tmp.path(),
        &[
            "predict",
            "--model",
            other.to_str().unwrap(),
            "--head",
            head.to_str().unwrap(),
            "--out",
            tmp.path().join("x.csv").to_str().unwrap(),
            train.to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("trained for model"), "{}", stderr(&o));
    assert!(!tmp.path().join("x.csv").exists());
}

#[test]
fn fit_with_a_csv_and_both_combined_methods() {
    let tmp = tempfile::tempdir().unwrap();
    let train = image_folder_classes(&tmp.path().join("train"));
    let csv = tmp.path().join("train.csv");
    let mut text = String::from("path,label\n");
    for class in ["alpha", "beta"] {
        for f in std::fs::read_dir(train.join(class)).unwrap() {
            let p = f.unwrap().path();
            text.push_str(&format!(
                "{},{class}\n",
                p.strip_prefix(tmp.path()).unwrap().display()
            ));
        }
    }
    std::fs::write(&csv, text).unwrap();
    for (flag, method) in [
        ("--init=zero-shot", "zero-shot-init"),
        ("--interpolate", "interpolate"),
    ] {
        let head = tmp.path().join(format!("{method}.safetensors"));
        let o = cli(
            tmp.path(),
            &[
                "fit",
                "--model",
                &tiny_model(),
                "--train-csv",
                csv.to_str().unwrap(),
                flag,
                "--templates",
                "imagenet7",
                "--out",
                head.to_str().unwrap(),
            ],
        );
        assert!(o.status.success(), "{flag}: {}", stderr(&o));
        let h = cliplabel::classify::head::Head::load(&head).unwrap();
        assert_eq!(serde_json::to_value(h.meta.method).unwrap(), method);
        assert_eq!(h.meta.templates.as_deref(), Some("imagenet7"));
        if method == "interpolate" {
            assert!(h.meta.alpha.is_some());
        }
    }
    // Classes with a single example cannot be cross-validated by a plain probe.
    let one = tmp.path().join("one");
    for c in ["x", "y"] {
        std::fs::create_dir_all(one.join(c)).unwrap();
        std::fs::copy(fixtures().join("images/rgb.png"), one.join(c).join("a.png")).unwrap();
    }
    std::fs::copy(
        fixtures().join("images/gray.png"),
        one.join("x").join("b.png"),
    )
    .unwrap();
    let o = cli(
        tmp.path(),
        &[
            "fit",
            "--model",
            &tiny_model(),
            "--train",
            one.to_str().unwrap(),
            "--out",
            tmp.path().join("h1.safetensors").to_str().unwrap(),
        ],
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("class `y` has 1 example"),
        "{}",
        stderr(&o)
    );
    let o = cli(
        tmp.path(),
        &[
            "fit",
            "--model",
            &tiny_model(),
            "--train",
            one.to_str().unwrap(),
            "--c-grid",
            "0.5",
            "--out",
            tmp.path().join("h1.safetensors").to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "a single C needs no CV: {}", stderr(&o));
    assert_eq!(
        cliplabel::classify::head::Head::load(&tmp.path().join("h1.safetensors"))
            .unwrap()
            .meta
            .c,
        Some(0.5)
    );
    // An empty class folder is named.
    std::fs::create_dir_all(one.join("z")).unwrap();
    let o = cli(
        tmp.path(),
        &[
            "fit",
            "--model",
            &tiny_model(),
            "--train",
            one.to_str().unwrap(),
            "--out",
            tmp.path().join("h2.safetensors").to_str().unwrap(),
        ],
    );
    assert!(
        !o.status.success() && stderr(&o).contains("class folder has no images"),
        "{}",
        stderr(&o)
    );
}

fn mean_std(xs: &[f64]) -> (f64, f64) {
    let m = xs.iter().sum::<f64>() / xs.len() as f64;
    let v = if xs.len() > 1 {
        xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (xs.len() - 1) as f64
    } else {
        0.0
    };
    (m, v.sqrt())
}

#[test]
fn compare_writes_a_report_that_agrees_with_results_json() {
    let tmp = tempfile::tempdir().unwrap();
    let train = image_folder_classes(&tmp.path().join("train"));
    let test = image_folder_classes(&tmp.path().join("test"));
    let report = tmp.path().join("report");
    let o = cli(
        tmp.path(),
        &[
            "compare",
            "--model",
            &tiny_model(),
            "--train",
            train.to_str().unwrap(),
            "--test",
            test.to_str().unwrap(),
            "--templates",
            "photo",
            "--templates",
            "imagenet7",
            "--shots",
            "1,2,all",
            "--seeds",
            "2",
            "--cv",
            "2",
            "--report",
            report.to_str().unwrap(),
            "-q",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    for f in ["report.md", "results.json", "shots.svg", "shots.png"] {
        assert!(report.join(f).is_file(), "{f} missing");
    }
    let printed = String::from_utf8_lossy(&o.stdout);
    assert!(
        printed.contains("zero-shot: ensemble") && printed.contains("linear probe"),
        "{printed}"
    );
    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(report.join("results.json")).unwrap()).unwrap();
    let md = std::fs::read_to_string(report.join("report.md")).unwrap();
    let runs = results["runs"].as_array().unwrap();
    // zero-shot x3 (photo, imagenet7, ensemble) + 3 methods x 3 shot counts.
    assert_eq!(runs.len(), 3 + 9);
    for run in runs {
        let top1: Vec<f64> = run["per_seed"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["top1"].as_f64().unwrap() * 100.0)
            .collect();
        let (m, s) = mean_std(&top1);
        let cell = if top1.len() > 1 {
            format!("{m:.2} ± {s:.2}")
        } else {
            format!("{m:.2}")
        };
        let method = run["method"].as_str().unwrap();
        let shots = run["shots"].as_u64().map_or_else(
            || {
                if run["family"] == "zero-shot" {
                    "0".into()
                } else {
                    "all".into()
                }
            },
            |k| k.to_string(),
        );
        let found = md.lines().any(|l| {
            l.starts_with(&format!("| {method} |"))
                && l.contains(&format!("| {shots} |"))
                && l.contains(&format!("| {cell} |"))
        });
        assert!(
            found,
            "no report row for {method} at {shots} shots with top-1 {cell}"
        );
    }
}
