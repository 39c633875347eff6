//! End-to-end tests of `cliplabel label` with the tiny fixture model.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

fn label(tmp: &Path, extra: &[&str]) -> std::process::Output {
    let mut c = cliplabel(&tmp.join("cache"));
    c.arg("label").arg("--model").arg(tiny_model());
    c.args(extra);
    run(&mut c)
}

#[test]
fn csv_and_jsonl_with_top_k_agree() {
    let tmp = tempfile::tempdir().unwrap();
    let imgs = tmp.path().join("imgs");
    let paths = image_folder(&imgs, 1);
    let csv = tmp.path().join("o.csv");
    let jsonl = tmp.path().join("o.jsonl");
    for out in [&csv, &jsonl] {
        let o = label(
            tmp.path(),
            &[
                "--class",
                "cat",
                "--class",
                "dog",
                "--class",
                "car",
                "--top-k",
                "3",
                "--out",
                out.to_str().unwrap(),
                imgs.to_str().unwrap(),
            ],
        );
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(
            stderr(&o).contains(&format!("labelled {}", paths.len())),
            "{}",
            stderr(&o)
        );
    }
    let rows = read_csv(&csv);
    assert_eq!(
        rows[0],
        [
            "path",
            "label",
            "score",
            "label2",
            "score2",
            "label3",
            "score3",
            "predicted",
            "cosine"
        ]
    );
    assert_eq!(rows.len(), paths.len() + 1);
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&jsonl)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), paths.len());
    for (r, j) in rows[1..].iter().zip(&lines) {
        assert_eq!(r[0], j["path"].as_str().unwrap());
        assert_eq!(r[1], j["label"].as_str().unwrap());
        let scores: Vec<f64> = [2, 4, 6].iter().map(|&i| r[i].parse().unwrap()).collect();
        assert!(scores[0] >= scores[1] && scores[1] >= scores[2], "{r:?}");
        assert!(
            (scores.iter().sum::<f64>() - 1.0).abs() < 1e-4,
            "three classes, top-3 sums to 1: {r:?}"
        );
        let top = j["top"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        assert!((top[0]["score"].as_f64().unwrap() - scores[0]).abs() < 1e-5);
        let cos: f64 = r[8].parse().unwrap();
        assert!((-1.0..=1.0).contains(&cos));
    }
}

#[test]
fn abstention_thresholds_write_unknown_and_keep_scores() {
    let tmp = tempfile::tempdir().unwrap();
    let imgs = tmp.path().join("imgs");
    image_folder(&imgs, 1);
    let base = tmp.path().join("base.csv");
    let o = label(
        tmp.path(),
        &[
            "--class",
            "cat",
            "--class",
            "dog",
            "--class",
            "car",
            "--out",
            base.to_str().unwrap(),
            imgs.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let base = read_csv(&base);
    // Choose thresholds between observed values so both outcomes occur.
    let mut scores: Vec<f64> = base[1..].iter().map(|r| r[2].parse().unwrap()).collect();
    scores.sort_by(f64::total_cmp);
    // Halfway between two neighbouring scores near the median that are clearly apart, so the
    // rounding of the written scores cannot put an image on the other side of the threshold.
    let i = (1..scores.len())
        .filter(|&i| scores[i] - scores[i - 1] > 1e-4)
        .min_by_key(|&i| i.abs_diff(scores.len() / 2))
        .expect("distinct scores");
    let mid = (scores[i - 1] + scores[i]) / 2.0;
    let out = tmp.path().join("abst.csv");
    let o = label(
        tmp.path(),
        &[
            "--class",
            "cat",
            "--class",
            "dog",
            "--class",
            "car",
            "--min-score",
            &mid.to_string(),
            "--out",
            out.to_str().unwrap(),
            imgs.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let rows = read_csv(&out);
    let mut unknown = 0;
    for (r, b) in rows[1..].iter().zip(&base[1..]) {
        let s: f64 = r[2].parse().unwrap();
        assert_eq!(r[2], b[2], "scores are kept");
        assert_eq!(r[3], b[1], "the predicted class is kept");
        if s < mid {
            assert_eq!(r[1], "unknown");
            unknown += 1;
        } else {
            assert_eq!(r[1], b[1]);
        }
    }
    assert!(unknown > 0 && unknown < rows.len() - 1);
    assert!(
        stderr(&o).contains(&format!("abstained {unknown}")),
        "{}",
        stderr(&o)
    );
    // Margin: with --top-k 2 the margin is score - score2.
    let out = tmp.path().join("margin.jsonl");
    let o = label(
        tmp.path(),
        &[
            "--class",
            "cat",
            "--class",
            "dog",
            "--class",
            "car",
            "--top-k",
            "2",
            "--min-margin",
            "0.3",
            "--out",
            out.to_str().unwrap(),
            imgs.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    for l in std::fs::read_to_string(&out).unwrap().lines() {
        let j: serde_json::Value = serde_json::from_str(l).unwrap();
        let t = j["top"].as_array().unwrap();
        let margin = t[0]["score"].as_f64().unwrap() - t[1]["score"].as_f64().unwrap();
        if (margin - 0.3).abs() < 1e-5 {
            continue; // too close to call from the written, rounded scores
        }
        assert_eq!(j["abstained"].as_bool().unwrap(), margin < 0.3, "{j}");
        assert_eq!(j["label"].as_str().unwrap() == "unknown", margin < 0.3);
    }
}

#[test]
fn class_list_and_template_errors_name_the_line() {
    let tmp = tempfile::tempdir().unwrap();
    let imgs = tmp.path().join("imgs");
    image_folder(&imgs, 1);
    let out = tmp.path().join("o.csv");
    let cases: [(&str, &str, &str); 4] = [
        ("dup.txt", "cat\ndog\n# comment\ncat\n", "dup.txt:4"),
        ("empty.txt", "cat\n: kitty\ndog\n", "empty.txt:2"),
        ("one.txt", "# only one\ncat\n", "one.txt"),
        ("syn.txt", "cat: kitty || tabby\ndog\n", "syn.txt:1"),
    ];
    for (name, text, want) in cases {
        let f = tmp.path().join(name);
        std::fs::write(&f, text).unwrap();
        let o = label(
            tmp.path(),
            &[
                "--classes",
                f.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
                imgs.to_str().unwrap(),
            ],
        );
        assert!(!o.status.success(), "{name} should fail");
        assert!(stderr(&o).contains(want), "{name}: {}", stderr(&o));
        assert!(!out.exists(), "no output for a failed start");
    }
    for (text, want) in [
        ("a photo of a {}.\na {} and {}\n", "t.txt:2"),
        ("no placeholder\n", "t.txt:1"),
    ] {
        let f = tmp.path().join("t.txt");
        std::fs::write(&f, text).unwrap();
        let o = label(
            tmp.path(),
            &[
                "--class",
                "a",
                "--class",
                "b",
                "--templates",
                f.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
                imgs.to_str().unwrap(),
            ],
        );
        assert!(!o.status.success());
        assert!(stderr(&o).contains(want), "{}", stderr(&o));
    }
    let o = label(
        tmp.path(),
        &[
            "--class",
            "a",
            "--class",
            "b",
            "--templates",
            "no-such-set",
            "--out",
            out.to_str().unwrap(),
            imgs.to_str().unwrap(),
        ],
    );
    assert!(
        !o.status.success() && stderr(&o).contains("imagenet80"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn synonyms_and_shipped_templates_run() {
    let tmp = tempfile::tempdir().unwrap();
    let imgs = tmp.path().join("imgs");
    image_folder(&imgs, 1);
    let classes = tmp.path().join("classes.txt");
    std::fs::write(
        &classes,
        "# pets\ncat: cat | kitten\ndog: dog | puppy | hound\n",
    )
    .unwrap();
    let out = tmp.path().join("o.csv");
    let o = label(
        tmp.path(),
        &[
            "--classes",
            classes.to_str().unwrap(),
            "--templates",
            "imagenet7",
            "--out",
            out.to_str().unwrap(),
            imgs.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let rows = read_csv(&out);
    assert!(rows[1..].iter().all(|r| r[1] == "cat" || r[1] == "dog"));
}

#[test]
fn corrupt_images_are_listed_and_good_ones_labelled() {
    let tmp = tempfile::tempdir().unwrap();
    let imgs = tmp.path().join("imgs");
    let good = image_folder(&imgs, 1);
    for f in std::fs::read_dir(fixtures().join("bad")).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, imgs.join(f.file_name().unwrap())).unwrap();
    }
    let out = tmp.path().join("o.csv");
    let o = label(
        tmp.path(),
        &[
            "--class",
            "a",
            "--class",
            "b",
            "--out",
            out.to_str().unwrap(),
            imgs.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let rows = read_csv(&out);
    let labelled: Vec<&str> = rows[1..].iter().map(|r| r[0].as_str()).collect();
    for g in &good {
        assert!(
            labelled.contains(&g.to_str().unwrap()),
            "{} not labelled",
            g.display()
        );
    }
    let failed: Vec<serde_json::Value> =
        std::fs::read_to_string(tmp.path().join("o.csv.failed.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
    let reasons: HashMap<String, String> = failed
        .iter()
        .map(|f| {
            let p = f["path"].as_str().unwrap();
            (
                Path::new(p)
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
                f["error"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(reasons["empty.jpg"].contains("empty"));
    assert!(reasons["not_an_image.png"].contains("not a supported image"));
    assert!(reasons["bomb_20000x20000.png"].contains("exceeds the limit"));
    assert_eq!(
        labelled.len() + failed.len(),
        good.len() + std::fs::read_dir(fixtures().join("bad")).unwrap().count()
    );
}

fn paths_in(out: &Path) -> Vec<String> {
    read_csv(out)[1..].iter().map(|r| r[0].clone()).collect()
}

#[test]
fn resume_after_kill_labels_every_image_exactly_once() {
    let tmp = tempfile::tempdir().unwrap();
    let imgs = tmp.path().join("imgs");
    let all = image_folder(&imgs, 12);
    let out = tmp.path().join("o.csv");
    let args = [
        "label",
        "--model",
        &tiny_model(),
        "--class",
        "a",
        "--class",
        "b",
        "--batch-size",
        "2",
        "--threads",
        "1",
        "--out",
        out.to_str().unwrap(),
        imgs.to_str().unwrap(),
    ];
    let mut child = cliplabel(&tmp.path().join("cache"))
        .args(args)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    // Kill once some but not all rows are out.
    loop {
        let n = std::fs::read_to_string(&out)
            .map(|s| s.lines().count())
            .unwrap_or(0);
        if n > 5 || t0.elapsed() > Duration::from_secs(60) {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let partial = paths_in(&out);
    assert!(
        !partial.is_empty() && partial.len() < all.len(),
        "killed after {} of {}",
        partial.len(),
        all.len()
    );
    // Also simulate a torn last row.
    let mut bytes = std::fs::read(&out).unwrap();
    bytes.extend_from_slice(b"/some/partial/row.png,a,0.5");
    std::fs::write(&out, bytes).unwrap();
    let o = run(cliplabel(&tmp.path().join("cache"))
        .args(args)
        .arg("--resume"));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("already labelled, skipped"),
        "{}",
        stderr(&o)
    );
    let mut got = paths_in(&out);
    got.sort();
    let mut want: Vec<String> = all.iter().map(|p| p.display().to_string()).collect();
    want.sort();
    assert_eq!(got, want, "every input exactly once");
    // A different class list refuses to resume into the same file.
    let o = label(
        tmp.path(),
        &[
            "--class",
            "x",
            "--class",
            "y",
            "--resume",
            "--out",
            out.to_str().unwrap(),
            imgs.to_str().unwrap(),
        ],
    );
    assert!(
        !o.status.success() && stderr(&o).contains("different run"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn organize_in_all_modes_with_a_name_clash() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("in/a"), tmp.path().join("in/b"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    std::fs::copy(fixtures().join("images/rgb.png"), a.join("x.png")).unwrap();
    std::fs::copy(fixtures().join("images/gray.png"), b.join("x.png")).unwrap();
    for mode in ["copy", "symlink", "hardlink"] {
        let dir = tmp.path().join(format!("sorted-{mode}"));
        let out = tmp.path().join(format!("{mode}.csv"));
        // Hostile class names must stay inside the folder.
        let o = label(
            tmp.path(),
            &[
                "--class",
                "../escape",
                "--class",
                "a/b",
                "--organize",
                dir.to_str().unwrap(),
                "--mode",
                mode,
                "--out",
                out.to_str().unwrap(),
                tmp.path().join("in").to_str().unwrap(),
            ],
        );
        assert!(o.status.success(), "{mode}: {}", stderr(&o));
        let mut placed = Vec::new();
        for sub in std::fs::read_dir(&dir).unwrap() {
            let sub = sub.unwrap().path();
            assert!(sub.is_dir());
            for f in std::fs::read_dir(&sub).unwrap() {
                placed.push(f.unwrap().path());
            }
        }
        assert_eq!(placed.len(), 2, "{mode}: {placed:?}");
        let mut contents: Vec<Vec<u8>> = placed.iter().map(|p| std::fs::read(p).unwrap()).collect();
        contents.sort();
        let mut want = vec![
            std::fs::read(a.join("x.png")).unwrap(),
            std::fs::read(b.join("x.png")).unwrap(),
        ];
        want.sort();
        assert_eq!(contents, want, "{mode}: nothing overwritten");
        if mode == "symlink" {
            assert!(placed
                .iter()
                .all(|p| p.symlink_metadata().unwrap().file_type().is_symlink()));
        }
        assert!(!tmp.path().join("escape").exists());
    }
}

#[test]
fn existing_output_needs_resume_or_force() {
    let tmp = tempfile::tempdir().unwrap();
    let imgs = tmp.path().join("imgs");
    image_folder(&imgs, 1);
    let out = tmp.path().join("o.jsonl");
    std::fs::write(&out, "precious\n").unwrap();
    let o = label(
        tmp.path(),
        &[
            "--class",
            "a",
            "--class",
            "b",
            "--out",
            out.to_str().unwrap(),
            imgs.to_str().unwrap(),
        ],
    );
    assert!(!o.status.success() && stderr(&o).contains("--force"));
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "precious\n");
    let o = label(
        tmp.path(),
        &[
            "--class",
            "a",
            "--class",
            "b",
            "--force",
            "--out",
            out.to_str().unwrap(),
            imgs.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!std::fs::read_to_string(&out).unwrap().contains("precious"));
}
