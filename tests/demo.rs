//! The shipped demo CLIP on freshly generated shapes: zero-shot accuracy on seen and held-out
//! colour-shape combinations, and `compare` (linear probe and zero-shot init vs zero-shot).
//!
//! Images come from the `shapes` example, which `cargo test` builds with the tests.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use common::*;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn demo_model() -> PathBuf {
    repo().join("models/shapes-clip")
}

fn holdout() -> Vec<String> {
    std::fs::read_to_string(demo_model().join("holdout.txt"))
        .unwrap()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

fn generate(out: &Path, per_class: usize, seed: u64, extra: &[&str]) {
    let o = run(std::process::Command::new(shapes_bin())
        .args([
            "--out",
            out.to_str().unwrap(),
            "--per-class",
            &per_class.to_string(),
            "--seed",
            &seed.to_string(),
            "--format",
            "mixed",
        ])
        .args(extra));
    assert!(o.status.success(), "{}", stderr(&o));
}

/// Top-1 accuracy of a label CSV against the class folder of each image.
fn accuracy_by_group(csv: &Path, held: &[String]) -> (f64, f64, usize, usize) {
    let rows = read_csv(csv);
    let (mut seen, mut seen_ok, mut ho, mut ho_ok) = (0, 0, 0, 0);
    for r in &rows[1..] {
        let truth = Path::new(&r[0])
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let ok = r[1] == truth;
        if held.contains(&truth) {
            ho += 1;
            ho_ok += ok as usize;
        } else {
            seen += 1;
            seen_ok += ok as usize;
        }
    }
    (
        seen_ok as f64 / seen as f64,
        ho_ok as f64 / ho as f64,
        seen,
        ho,
    )
}

#[test]
fn zero_shot_labels_seen_and_held_out_combinations() {
    let tmp = tempfile::tempdir().unwrap();
    let imgs = tmp.path().join("imgs");
    let held = holdout();
    assert!(
        held.len() >= 4,
        "the demo model holds out combinations: {held:?}"
    );
    generate(&imgs, 6, 777, &["--max-aspect", "1.5"]);
    generate(
        &imgs,
        20,
        778,
        &[
            "--holdout",
            &held.join(","),
            "--only-holdout",
            "--max-aspect",
            "1.5",
        ],
    );
    let out = tmp.path().join("labels.csv");
    let o = run(cliplabel(&tmp.path().join("cache")).args([
        "label",
        "--model",
        demo_model().to_str().unwrap(),
        "--classes",
        demo_model().join("classes.txt").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        imgs.to_str().unwrap(),
    ]));
    assert!(o.status.success(), "{}", stderr(&o));
    let (seen, ho, n_seen, n_ho) = accuracy_by_group(&out, &held);
    println!(
        "zero-shot top-1: seen {:.1}% of {n_seen}, held-out {:.1}% of {n_ho}",
        seen * 100.0,
        ho * 100.0
    );
    assert!(n_seen >= 200 && n_ho >= 80);
    assert!(seen >= 0.90, "seen combinations: {seen}");
    assert!(ho >= 0.60, "held-out combinations: {ho} (chance is 1/48)");
}

#[test]
fn compare_probe_beats_zero_shot_and_zero_shot_init_keeps_it() {
    let tmp = tempfile::tempdir().unwrap();
    let held = holdout();
    let (train, test) = (tmp.path().join("train"), tmp.path().join("test"));
    // Seen combinations only: the probe needs examples of every class.
    generate(&train, 40, 901, &["--holdout", &held.join(",")]);
    generate(&test, 10, 902, &["--holdout", &held.join(",")]);
    let report = tmp.path().join("report");
    let o = run(cliplabel(&tmp.path().join("cache")).args([
        "compare",
        "--model",
        demo_model().to_str().unwrap(),
        "--train",
        train.to_str().unwrap(),
        "--test",
        test.to_str().unwrap(),
        "--shots",
        "1,4,all",
        "--seeds",
        "3",
        "--cv",
        "3",
        "--report",
        report.to_str().unwrap(),
        "-q",
    ]));
    assert!(o.status.success(), "{}", stderr(&o));
    println!("{}", String::from_utf8_lossy(&o.stdout));
    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(report.join("results.json")).unwrap()).unwrap();
    let mut top1: HashMap<(String, String), f64> = HashMap::new();
    for run in results["runs"].as_array().unwrap() {
        let per: Vec<f64> = run["per_seed"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["top1"].as_f64().unwrap())
            .collect();
        let shots = run["shots"]
            .as_u64()
            .map_or("all".to_string(), |k| k.to_string());
        top1.insert(
            (run["family"].as_str().unwrap().to_string(), shots),
            per.iter().sum::<f64>() / per.len() as f64,
        );
    }
    let zs = top1[&("zero-shot".to_string(), "all".to_string())];
    let probe_all = top1[&("probe".to_string(), "all".to_string())];
    let init_1 = top1[&("zero-shot-init".to_string(), "1".to_string())];
    println!("zero-shot {zs:.3}, probe (all) {probe_all:.3}, zero-shot init (1 shot) {init_1:.3}");
    assert!(
        probe_all > zs,
        "the linear probe on all examples ({probe_all}) should beat zero-shot ({zs})"
    );
    assert!(
        init_1 >= zs - 0.02,
        "zero-shot init at 1 shot ({init_1}) fell more than 2 points below zero-shot ({zs})"
    );
}
