//! The acceptance experiment of calibrated abstention and prediction sets, on the shipped demo
//! CLIP and freshly generated shapes (library calls; the CLI will wrap the same functions).
//!
//! Calibrate at target precision 0.95 (delta 0.1) with sets at 0.9 on one generated set, then
//! label 20 fresh sets from other seeds: the accepted images' precision must reach 0.95 in at
//! least 18 of the 20, and the sets must contain the truth for at least 0.87 of fresh images.
//!
//! Images come from the `shapes` example, which `cargo test` builds with the tests.

use std::path::{Path, PathBuf};

use cliplabel::classify::calibration::{calibrate, CalibrateOptions, MadeFor};
use cliplabel::classify::classes::{ClassList, Templates};
use cliplabel::classify::zeroshot::ZeroShotClassifier;
use cliplabel::clip::engine::{embed_images, Engine, Features};
use cliplabel::eval::dataset::LabelledSet;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The generator built alongside this test (`target/<profile>/examples/shapes`).
fn shapes_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap();
    let bin = profile_dir
        .join("examples")
        .join(format!("shapes{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.is_file(),
        "{} missing: run the whole `cargo test --release` (or add `--example shapes`), which builds the examples",
        bin.display()
    );
    bin
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

/// Class probabilities (in `clf.classes` order) and true class indices of an ImageFolder set.
fn score_set(engine: &Engine, clf: &ZeroShotClassifier, dir: &Path) -> (Vec<Vec<f32>>, Vec<usize>) {
    // The generator also writes classes.txt and captions.jsonl, which are not images.
    let set = LabelledSet::from_image_folder(dir).unwrap();
    let truth = set.align_to(&clf.classes, "generated set").unwrap();
    let mut probs = Vec::new();
    let mut labels = Vec::new();
    let mut next = 0usize;
    embed_images(engine, set.paths.clone(), 64, Features::Projected, |b| {
        assert!(b.failed.is_empty(), "{:?}", b.failed);
        let e = b.embeddings.expect("embeddings");
        let flat: Vec<f32> = e.flatten_all()?.to_vec1()?;
        for (s, p) in clf.score(&flat).into_iter().zip(&b.ok) {
            assert_eq!(p, &set.paths[next]);
            probs.push(s.probs);
            labels.push(truth[next]);
            next += 1;
        }
        Ok(())
    })
    .unwrap();
    assert_eq!(next, set.paths.len());
    (probs, labels)
}

#[test]
fn calibrated_precision_and_set_coverage_hold_on_fresh_seeds() {
    let model = repo().join("models/shapes-clip");
    let engine = Engine::load(model.to_str().unwrap(), &cliplabel::default_device()).unwrap();
    let classes = ClassList::from_file(&model.join("classes.txt")).unwrap();
    let templates = Templates::resolve("photo").unwrap();
    let clf = ZeroShotClassifier::build(&engine, &classes, &templates).unwrap();
    let made_for = MadeFor {
        model: engine.source.clone(),
        model_fingerprint: engine.fingerprint.clone(),
        method: "zero-shot".into(),
        scorer_key: ZeroShotClassifier::cache_key(&engine, &classes, &templates),
        classes: clf.classes.clone(),
    };

    let tmp = tempfile::tempdir().unwrap();
    let cal_dir = tmp.path().join("cal");
    generate(&cal_dir, 20, 4100);
    let (cp, cl) = score_set(&engine, &clf, &cal_dir);
    let opts = CalibrateOptions {
        target_precision: 0.95,
        delta: 0.1,
        sets: Some(0.9),
        ..Default::default()
    };
    let (cal, _) = calibrate(&cp, &cl, made_for, &opts).unwrap();
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
        let (probs, labels) = score_set(&engine, &clf, &dir);
        let (mut acc, mut right) = (0usize, 0usize);
        for (p, &y) in probs.iter().zip(&labels) {
            let d = cal.decide(p);
            if !d.abstain {
                acc += 1;
                right += usize::from(d.predicted == y);
            }
            let set = d.set.unwrap();
            covered += usize::from(set.contains(&y));
            set_size += set.len();
            total += 1;
        }
        let precision = right as f64 / acc.max(1) as f64;
        println!(
            "seed {}: accepted {acc} of {}, precision {:.2}%",
            5000 + seed,
            probs.len(),
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
}
