//! `compare`: zero-shot prompts against linear heads trained on k labelled images per class,
//! and the two combined, evaluated on the user's own test set.

use crate::eval::dataset::LabelledSet;
use crate::clip::engine::Engine;
use crate::error::{Error, Result};
use crate::eval::metrics::{evaluate, Metrics};
use crate::classify::head::{train, Method, TrainOptions};
use crate::linear_head::Matrix;
use crate::classify::classes::{ClassList, Templates};
use crate::eval::report::{CompareResults, MethodRun};
use crate::classify::zeroshot::{normalize_in_place, ZeroShotClassifier};

/// Settings of a comparison.
#[derive(Debug, Clone)]
pub struct CompareOptions {
    /// Template sets to evaluate zero-shot (names or files); their union forms the ensemble.
    pub templates: Vec<String>,
    /// Labelled examples per class to train with; `None` means all.
    pub shots: Vec<Option<usize>>,
    /// Random draws of the k examples per shot count.
    pub seeds: usize,
    /// Cross-validation folds for the heads.
    pub folds: usize,
}

/// Embedded, labelled examples: L2-normalised rows.
pub struct Embedded {
    /// `n × dim` normalised embeddings.
    pub x: Matrix,
    /// Class index of each row.
    pub labels: Vec<usize>,
}

impl Embedded {
    /// Builds the matrix from per-example embeddings, dropping failed ones (`None`).
    pub fn new(rows: Vec<Option<Vec<f32>>>, labels: &[usize], dim: usize) -> Result<Self> {
        let mut data = Vec::new();
        let mut kept = Vec::new();
        for (r, &l) in rows.into_iter().zip(labels) {
            if let Some(mut r) = r {
                normalize_in_place(&mut r);
                data.extend(r);
                kept.push(l);
            }
        }
        Ok(Embedded {
            x: Matrix::new(kept.len(), dim, data)?,
            labels: kept,
        })
    }

    fn subset(&self, idx: &[usize]) -> Result<Embedded> {
        Ok(Embedded {
            x: self.x.select_rows(idx)?,
            labels: idx.iter().map(|&i| self.labels[i]).collect(),
        })
    }
}

/// SplitMix64, a small deterministic generator for drawing k-shot subsets.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Draws up to `k` examples of each class (deterministic for `seed`), in index order.
pub fn sample_k_shot(labels: &[usize], n_classes: usize, k: usize, seed: u64) -> Vec<usize> {
    let mut rng = SplitMix(seed ^ 0x5eed_0000_0000_0000);
    let mut out = Vec::new();
    for c in 0..n_classes {
        let mut idx: Vec<usize> = labels
            .iter()
            .enumerate()
            .filter(|(_, &l)| l == c)
            .map(|(i, _)| i)
            .collect();
        for i in (1..idx.len()).rev() {
            let j = (rng.next() % (i as u64 + 1)) as usize;
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
        return Err(Error::Input("the test set has no usable images".into()));
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
        last_zs.ok_or_else(|| Error::Input("give at least one template set".into()))?
    };
    let counts = {
        let mut c = vec![0usize; n_classes];
        for &l in &train_set.labels {
            c[l] += 1;
        }
        c
    };
    let max_count = counts.iter().copied().max().unwrap_or(0);
    for &shot in &opts.shots {
        if let Some(k) = shot {
            if k == 0 || k >= max_count {
                continue;
            }
        }
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
    })
}

/// Embeds a labelled set through the cache, reporting failures; returns the usable examples.
pub fn embed_set(
    engine: &Engine,
    cache: &mut crate::jobs::cache::EmbeddingCache,
    set: &LabelledSet,
    labels: &[usize],
    batch_size: usize,
) -> Result<(Embedded, Vec<crate::util::atomic::Failure>, usize)> {
    let e = cache.embed(engine, &set.paths, batch_size)?;
    let dim = engine.model.config.projection_dim;
    Ok((Embedded::new(e.rows, labels, dim)?, e.failures, e.encoded))
}

#[cfg(test)]
mod tests {
    use super::*;

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
