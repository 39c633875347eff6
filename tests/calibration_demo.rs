//! The acceptance experiment of calibrated abstention and prediction sets, on the shipped demo
//! CLIP and freshly generated shapes, through the command line.
//!
//! `cliplabel calibrate` at target precision 0.95 (delta 0.1) with sets at 0.9 on one generated
//! set, then `cliplabel label --calibration` on 20 fresh sets from other seeds: the accepted
//! images' precision must reach 0.95 in at least 18 of the 20, and the sets must contain the
//! truth for at least 0.87 of fresh images. A second test checks that `label` refuses a
//! calibration made for another class list.
//!
//! Images come from the `shapes` example, which `cargo test` builds with the tests.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::shapes_bin;

use cliplabel::classify::calibration::Calibration;
use cliplabel::jobs::rows::read_label_rows;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn cliplabel() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cliplabel"));
    c.env("HF_HUB_OFFLINE", "1");
    c
}

fn run(c: &mut Command) -> String {
    let o = c.output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{c:?} failed: {err}");
    err
}

fn generate(out: &Path, per_class: usize, seed: u64) {
    let o = std::process::Command::new(shapes_bin())
        .args(["--out", out.to_str().unwrap()])
        .args(["--per-class", &per_class.to_string()])
        .args(["--seed", &seed.to_string(), "--format", "mixed"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// The true class of a generated image: its folder name.
fn truth_of(path: &str) -> String {
    Path::new(path)
        .parent()
        .and_then(Path::file_name)
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

fn model_args(c: &mut Command) -> &mut Command {
    let model = repo().join("models/shapes-clip");
    c.arg("--model")
        .arg(&model)
        .arg("--classes")
        .arg(model.join("classes.txt"))
        .args(["--templates", "photo", "--no-cache", "--quiet"])
}

#[test]
fn calibrated_precision_and_set_coverage_hold_on_fresh_seeds() {
    let tmp = tempfile::tempdir().unwrap();
    let cal_dir = tmp.path().join("cal");
    generate(&cal_dir, 20, 4100);
    let cal_path = tmp.path().join("cal.json");
    run(model_args(cliplabel().arg("calibrate"))
        .arg("--data")
        .arg(&cal_dir)
        .args([
            "--target-precision",
            "0.95",
            "--delta",
            "0.1",
            "--sets",
            "0.9",
        ])
        .arg("--out")
        .arg(&cal_path));
    let cal = Calibration::load(&cal_path).unwrap();
    assert!(tmp.path().join("cal.report/calibration.md").is_file());
    println!(
        "calibrated on {} images: threshold {:.3}, coverage {:.1}%, calibration precision {:.2}%, set quantile {:.4}",
        cal.n,
        cal.threshold.threshold,
        100.0 * cal.threshold.coverage,
        100.0 * cal.threshold.precision,
        cal.sets.as_ref().unwrap().quantile
    );

    let (mut seeds_ok, mut covered, mut total, mut set_size, mut accepted_all) =
        (0usize, 0usize, 0usize, 0usize, 0usize);
    for seed in 0..20u64 {
        let dir = tmp.path().join(format!("fresh{seed}"));
        generate(&dir, 10, 5000 + seed);
        let out = tmp.path().join(format!("fresh{seed}.csv"));
        run(model_args(cliplabel().arg("label"))
            .arg("--calibration")
            .arg(&cal_path)
            .arg("--out")
            .arg(&out)
            .arg(&dir));
        assert!(!tmp
            .path()
            .join(format!("fresh{seed}.csv.failed.jsonl"))
            .exists());
        let rows = read_label_rows(&out).unwrap();
        let n_images = cliplabel::collect_images(std::slice::from_ref(&dir))
            .unwrap()
            .len();
        assert_eq!(rows.len(), n_images, "every image has a row");
        let (mut acc, mut right) = (0usize, 0usize);
        for r in &rows {
            let y = truth_of(&r.path);
            if !r.abstained {
                acc += 1;
                right += usize::from(r.label == y);
            }
            let set = r.set.as_ref().expect("a prediction set on every row");
            covered += usize::from(set.contains(&y));
            set_size += set.len();
            total += 1;
        }
        let precision = right as f64 / acc.max(1) as f64;
        println!(
            "seed {}: accepted {acc} of {}, precision {:.2}%",
            5000 + seed,
            rows.len(),
            100.0 * precision
        );
        assert!(acc > 0, "seed {}: nothing accepted", 5000 + seed);
        seeds_ok += usize::from(precision >= 0.95);
        accepted_all += acc;
        std::fs::remove_dir_all(&dir).unwrap();
    }
    let coverage = covered as f64 / total as f64;
    println!(
        "precision >= 0.95 on {seeds_ok} of 20 fresh seeds; accepted {:.1}% overall; sets contain the truth for {:.2}% of {total} images, mean size {:.2}",
        100.0 * accepted_all as f64 / total as f64,
        100.0 * coverage,
        set_size as f64 / total as f64
    );
    assert!(
        seeds_ok >= 18,
        "precision reached 0.95 on only {seeds_ok} of 20 seeds"
    );
    assert!(coverage >= 0.87, "set coverage {coverage}");

    // A calibration made for another class list is refused, naming the field.
    let model = repo().join("models/shapes-clip");
    let o = cliplabel()
        .arg("label")
        .arg("--model")
        .arg(&model)
        .args([
            "--class",
            "red circle",
            "--class",
            "blue square",
            "--no-cache",
        ])
        .arg("--calibration")
        .arg(&cal_path)
        .arg("--out")
        .arg(tmp.path().join("other.csv"))
        .arg(&cal_dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success(),
        "a mismatching calibration was accepted"
    );
    assert!(err.contains("cal.json"), "{err}");
}
