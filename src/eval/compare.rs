//! `compare`: zero-shot prompts against linear heads trained on k labelled images per class,
//! and the two combined, evaluated on the user's own test set.

use crate::classify::classes::ClassList;
use crate::classify::head::{train, Method, TrainOptions};
use crate::classify::templates::Templates;
use crate::classify::zeroshot::ZeroShotClassifier;
use crate::jobs::tally::Tally;
use crate::jobs::writers::write_failures_file;
use std::path::{Path, PathBuf};

use crate::classify::embedded::Embedded;
use crate::clip::engine::{Engine, Features};
use crate::error::{Error, Result};
use crate::eval::metrics::{evaluate, Metrics};
use crate::eval::report::{CompareResults, MethodRun};
use crate::images::dataset::LabelledSet;
use crate::jobs::cache::EmbeddingCache;
use crate::jobs::writers::Failure;
use crate::linear_head::Matrix;
use crate::util::rng::SplitMix64;

/// A requested number of labelled examples per class (`--shots`): a positive count or `all`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shots {
    /// `k` examples per class.
    K(usize),
    /// Every training example.
    All,
}

impl Shots {
    /// `Some(k)`, or `None` for all.
    pub fn count(self) -> Option<usize> {
        match self {
            Shots::K(k) => Some(k),
            Shots::All => None,
        }
    }
}

impl std::str::FromStr for Shots {
    type Err = String;
    /// A positive number or `all` (any case).
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if s.eq_ignore_ascii_case("all") {
            return Ok(Shots::All);
        }
        s.trim()
            .parse::<usize>()
            .ok()
            .filter(|&k| k > 0)
            .map(Shots::K)
            .ok_or_else(|| format!("`{s}` is not a positive number or `all`"))
    }
}

impl std::fmt::Display for Shots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Shots::K(k) => write!(f, "{k}"),
            Shots::All => f.write_str("all"),
        }
    }
}

/// Settings of a comparison.
#[derive(Debug, Clone)]
pub struct CompareOptions {
    /// Template sets to evaluate zero-shot (names or files); their union forms the ensemble.
    pub templates: Vec<String>,
    /// Labelled examples per class to train with.
    pub shots: Vec<Shots>,
    /// Random draws of the k examples per shot count.
    pub seeds: usize,
    /// Cross-validation folds for the heads.
    pub folds: usize,
}

/// Draws up to `k` examples of each class (deterministic for `seed`), in index order.
pub fn sample_k_shot(labels: &[usize], n_classes: usize, k: usize, seed: u64) -> Vec<usize> {
    let mut rng = SplitMix64::new(seed ^ 0x5eed_0000_0000_0000);
    let mut out = Vec::new();
    for c in 0..n_classes {
        let mut idx: Vec<usize> = labels
            .iter()
            .enumerate()
            .filter(|(_, &l)| l == c)
            .map(|(i, _)| i)
            .collect();
        for i in (1..idx.len()).rev() {
            let j = (rng.next_u64() % (i as u64 + 1)) as usize;
            idx.swap(i, j);
        }
        idx.truncate(k);
        out.extend(idx);
    }
    out.sort_unstable();
    out
}

fn scores_of(logits: &Matrix) -> Vec<Vec<f32>> {
    (0..logits.rows()).map(|i| logits.row(i).to_vec()).collect()
}

fn zero_shot_metrics(zs: &ZeroShotClassifier, test: &Embedded, n_classes: usize) -> Metrics {
    let scores: Vec<Vec<f32>> = zs
        .score(test.x.as_slice())
        .into_iter()
        .map(|s| s.probs)
        .collect();
    evaluate(&scores, &test.labels, n_classes)
}

/// The shot counts to run for the requested ones (`None`: every training image), in request
/// order, with a note for every requested value that is run differently or skipped.
///
/// `k` images per class of a training set whose largest class has `max_count` images is, when
/// `k >= max_count`, every image of every class: the same training set as `all`. Such a `k` is
/// run as `all` (once: its seeds would all draw the same set), or skipped when `all` is run
/// anyway; a value requested twice is run once.
pub fn plan_shots(requested: &[Shots], max_count: usize) -> (Vec<Option<usize>>, Vec<String>) {
    let all_requested = requested.contains(&Shots::All);
    let mut plan: Vec<Option<usize>> = Vec::new();
    let mut notes = Vec::new();
    for &s in requested {
        let run = match s {
            Shots::K(k) if k >= max_count => {
                let why = format!(
                    "no class has more than {max_count} training images, so {k} per class is every image"
                );
                if all_requested {
                    notes.push(format!("shots {k}: {why}, the same as `all`; skipped"));
                    continue;
                }
                if plan.contains(&None) {
                    notes.push(format!("shots {k}: {why}, already run as `all`; skipped"));
                    continue;
                }
                notes.push(format!("shots {k}: {why}; run as `all`"));
                None
            }
            other => other.count(),
        };
        if plan.contains(&run) {
            notes.push(format!("shots {s}: requested twice; run once"));
            continue;
        }
        plan.push(run);
    }
    (plan, notes)
}

/// Runs the comparison on embedded train and test sets; `progress` is told what runs.
pub fn compare(
    engine: &Engine,
    classes: &[String],
    train_set: &Embedded,
    test_set: &Embedded,
    opts: &CompareOptions,
    mut progress: impl FnMut(&str),
) -> Result<CompareResults> {
    let n_classes = classes.len();
    if test_set.labels.is_empty() {
        return Err(Error::NoUsableTestImages);
    }
    let class_list = ClassList::from_names(classes)?;
    let mut runs = Vec::new();
    let mut all_templates: Vec<String> = Vec::new();
    let mut last_zs = None;
    for spec in &opts.templates {
        let t = Templates::resolve(spec)?;
        progress(&format!("zero-shot with templates `{spec}`"));
        let zs = ZeroShotClassifier::build(engine, &class_list, &t)?;
        runs.push(MethodRun {
            method: format!("zero-shot: {spec}"),
            family: "zero-shot".into(),
            shots: None,
            per_seed: vec![zero_shot_metrics(&zs, test_set, n_classes)],
            details: serde_json::json!({ "templates": t.templates.len() }),
        });
        for tpl in t.templates {
            if !all_templates.contains(&tpl) {
                all_templates.push(tpl);
            }
        }
        last_zs = Some(zs);
    }
    let zs = if opts.templates.len() > 1 {
        progress("zero-shot ensemble of all template sets");
        let t = Templates::from_strings(&all_templates)?;
        let zs = ZeroShotClassifier::build(engine, &class_list, &t)?;
        runs.push(MethodRun {
            method: "zero-shot: ensemble".into(),
            family: "zero-shot".into(),
            shots: None,
            per_seed: vec![zero_shot_metrics(&zs, test_set, n_classes)],
            details: serde_json::json!({ "templates": all_templates.len() }),
        });
        zs
    } else {
        last_zs.ok_or(Error::NoTemplateSets)?
    };
    let counts = {
        let mut c = vec![0usize; n_classes];
        for &l in &train_set.labels {
            c[l] += 1;
        }
        c
    };
    let max_count = counts.iter().copied().max().unwrap_or(0);
    let (plan, notes) = plan_shots(&opts.shots, max_count);
    for note in &notes {
        progress(&format!("note: {note}"));
    }
    for shot in plan {
        let seeds = if shot.is_some() { opts.seeds.max(1) } else { 1 };
        for method in [Method::Probe, Method::ZeroShotInit, Method::Interpolate] {
            let mut per_seed = Vec::new();
            let mut details = Vec::new();
            for seed in 0..seeds as u64 {
                let sub = match shot {
                    Some(k) => {
                        train_set.subset(&sample_k_shot(&train_set.labels, n_classes, k, seed))?
                    }
                    None => train_set.subset(&(0..train_set.labels.len()).collect::<Vec<_>>())?,
                };
                progress(&format!(
                    "{} with {} per class, seed {seed}",
                    method.name(),
                    shot.map_or("all".to_string(), |k| k.to_string())
                ));
                let opts = TrainOptions {
                    method,
                    folds: opts.folds,
                    seed,
                    // One example per class cannot be cross-validated: fit at C = 1.
                    fallback_c: Some(1.0),
                    ..TrainOptions::default()
                };
                let t = train(&sub.x, &sub.labels, classes, Some(&zs), &opts)?;
                let logits = t.linear.predict_logits(&test_set.x)?;
                per_seed.push(evaluate(&scores_of(&logits), &test_set.labels, n_classes));
                details.push(serde_json::json!({ "seed": seed, "c": t.c, "cv_accuracy": t.cv_accuracy, "alpha": t.alpha, "train_examples": sub.labels.len() }));
            }
            let family = match method {
                Method::Probe => "probe",
                Method::ZeroShotInit => "zero-shot-init",
                Method::Interpolate => "interpolation",
            };
            runs.push(MethodRun {
                method: method.name().into(),
                family: family.into(),
                shots: shot,
                per_seed,
                details: serde_json::Value::Array(details),
            });
        }
    }
    Ok(CompareResults {
        model: engine.source.clone(),
        classes: classes.to_vec(),
        n_train: train_set.labels.len(),
        n_test: test_set.labels.len(),
        seeds: opts.seeds,
        runs,
        notes,
    })
}

/// The labelled sets of a comparison, read and checked before the model is loaded.
pub struct CompareSets {
    /// The training set (its class folders define the classes).
    pub train: LabelledSet,
    /// The test set.
    pub test: LabelledSet,
    /// The test labels as indices into the training set's classes.
    pub test_labels: Vec<usize>,
    /// Where the images that could not be embedded are listed (`REPORT/failed.jsonl`).
    pub failed_list: PathBuf,
}

impl CompareSets {
    /// Reads the ImageFolder training and test sets, checks that the test classes are training
    /// classes, and creates the report directory.
    pub fn load(train: &Path, test: &Path, report_dir: &Path) -> Result<Self> {
        let train_set = LabelledSet::from_image_folder(train)?;
        let test_set = LabelledSet::from_image_folder(test)?;
        let test_labels =
            test_set.align_to(&train_set.classes, &format!("test set {}", test.display()))?;
        std::fs::create_dir_all(report_dir).map_err(|e| Error::io(report_dir, e))?;
        Ok(CompareSets {
            train: train_set,
            test: test_set,
            test_labels,
            failed_list: report_dir.join("failed.jsonl"),
        })
    }
}

/// `compare`: embeds both sets through the embedding cache in `cache_dir` (failures go to
/// `on_failure` and are skipped) and runs the comparison; `progress` is told what runs.
pub fn compare_sets(
    engine: &Engine,
    sets: &CompareSets,
    opts: &CompareOptions,
    cache_dir: Option<&Path>,
    batch_size: usize,
    on_failure: &mut dyn FnMut(&Failure),
    mut progress: impl FnMut(&str),
) -> Result<CompareResults> {
    let mut cache = EmbeddingCache::open(cache_dir, engine, Features::Projected)?;
    let (train, f1, _) = embed_set(
        engine,
        &mut cache,
        &sets.train,
        &sets.train.labels,
        batch_size,
    )?;
    let (test, f2, _) = embed_set(
        engine,
        &mut cache,
        &sets.test,
        &sets.test_labels,
        batch_size,
    )?;
    for f in f1.iter().chain(&f2) {
        on_failure(f);
    }
    for (what, set, used, failed) in [
        ("compare --train", &sets.train, train.labels.len(), &f1),
        ("compare --test", &sets.test, test.labels.len(), &f2),
    ] {
        Tally {
            inputs: set.paths.len(),
            done: used,
            failed: failed.len(),
            ..Tally::default()
        }
        .check(what)?;
    }
    // Images that could not be embedded are listed beside the report, with the reason.
    let all_failed: Vec<Failure> = f1.iter().chain(&f2).cloned().collect();
    write_failures_file(&sets.failed_list, &all_failed)?;
    progress(&format!(
        "train: {} used, {} failed; test: {} used, {} failed",
        train.labels.len(),
        f1.len(),
        test.labels.len(),
        f2.len()
    ));
    compare(engine, &sets.train.classes, &train, &test, opts, progress)
}

/// Embeds a labelled set through the cache, reporting failures; returns the usable examples.
pub fn embed_set(
    engine: &Engine,
    cache: &mut EmbeddingCache,
    set: &LabelledSet,
    labels: &[usize],
    batch_size: usize,
) -> Result<(Embedded, Vec<Failure>, usize)> {
    let e = cache.embed(engine, &set.paths, batch_size)?;
    let dim = engine.model.config.projection_dim;
    Ok((Embedded::new(e.rows, labels, dim)?, e.failures, e.encoded))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--shots 1,2,4,8,16` on 16 images per class used to report 1-8 only: 16 was dropped
    /// without a word. It is every image, so it runs as `all`, with a note.
    #[test]
    fn a_shot_count_that_takes_every_image_runs_as_all_with_a_note() {
        let k = |v: &[usize]| v.iter().map(|&k| Shots::K(k)).collect::<Vec<_>>();
        let (plan, notes) = plan_shots(&k(&[1, 2, 4, 8, 16]), 16);
        assert_eq!(plan, vec![Some(1), Some(2), Some(4), Some(8), None]);
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(notes[0].starts_with("shots 16:") && notes[0].ends_with("run as `all`"));

        // With `all` requested too, 16 and 32 are skipped, each with its note.
        let mut req = k(&[1, 16, 32]);
        req.push(Shots::All);
        let (plan, notes) = plan_shots(&req, 16);
        assert_eq!(plan, vec![Some(1), None]);
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(notes[0].starts_with("shots 16:") && notes[0].ends_with("skipped"));
        assert!(notes[1].starts_with("shots 32:") && notes[1].ends_with("skipped"));

        // A second value that means every image, and a repeated value, are skipped with notes.
        let (plan, notes) = plan_shots(&k(&[4, 20, 16, 4]), 16);
        assert_eq!(plan, vec![Some(4), None]);
        assert_eq!(notes.len(), 3, "{notes:?}");
        assert!(notes[1].contains("already run as `all`"));
        assert!(notes[2].starts_with("shots 4: requested twice"));

        // Below the largest class, k is a real subset and runs as asked.
        let (plan, notes) = plan_shots(&k(&[15]), 16);
        assert_eq!((plan, notes.len()), (vec![Some(15)], 0));
        assert_eq!("all".parse::<Shots>(), Ok(Shots::All));
        assert_eq!(" 8".parse::<Shots>(), Ok(Shots::K(8)));
        assert!("0".parse::<Shots>().is_err() && "x".parse::<Shots>().is_err());
    }

    #[test]
    fn k_shot_draws_are_deterministic_and_stratified() {
        let labels: Vec<usize> = (0..100).map(|i| i % 4).collect();
        let a = sample_k_shot(&labels, 4, 3, 7);
        assert_eq!(a, sample_k_shot(&labels, 4, 3, 7));
        assert_ne!(a, sample_k_shot(&labels, 4, 3, 8));
        assert_eq!(a.len(), 12);
        for c in 0..4 {
            assert_eq!(a.iter().filter(|&&i| labels[i] == c).count(), 3);
        }
    }
}
