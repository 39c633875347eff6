//! The zero-shot classifier: one L2-normalised text embedding per class, built from prompt
//! templates as in the CLIP paper (§3.1.4), cached on disk, and scored against image embeddings.

use std::path::{Path, PathBuf};

use crate::clip::engine::{fnv1a, Engine, FNV_START};
use crate::error::{Error, Result};
use crate::util::atomic::{f32_to_le_bytes, write_atomic, SafetensorsFile};
use crate::classify::classes::{ClassList, Templates};

/// A class-by-dimension matrix of normalised text embeddings, with the model's logit scale.
#[derive(Debug, Clone, PartialEq)]
pub struct ZeroShotClassifier {
    /// Class labels, in row order.
    pub classes: Vec<String>,
    /// `classes.len() * dim` values; each row has unit L2 norm.
    pub weights: Vec<f32>,
    /// Embedding width.
    pub dim: usize,
    /// `exp(logit_scale)` of the model: cosine similarities are multiplied by it before the softmax.
    pub logit_scale: f32,
}

/// Scores of one image against every class.
#[derive(Debug, Clone, PartialEq)]
pub struct Scores {
    /// Softmax probabilities over classes.
    pub probs: Vec<f32>,
    /// Cosine similarity with each class embedding (empty for scorers without one).
    pub cosines: Vec<f32>,
}

/// L2-normalises a vector in place (left as is when its norm is zero).
pub fn normalize_in_place(v: &mut [f32]) {
    let n = v
        .iter()
        .map(|x| (*x as f64) * (*x as f64))
        .sum::<f64>()
        .sqrt() as f32;
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
}

/// A numerically stable softmax.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let m = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f64> = logits.iter().map(|&l| ((l - m) as f64).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|&x| (x / s) as f32).collect()
}

impl ZeroShotClassifier {
    /// Builds the ensemble from prompt embeddings: for each class, the mean of its prompts'
    /// normalised embeddings, re-normalised. `class_of[i]` is the class of row `i` of `rows`.
    pub fn from_prompt_embeddings(
        classes: Vec<String>,
        class_of: &[usize],
        rows: &[f32],
        dim: usize,
        logit_scale: f32,
    ) -> Self {
        let mut weights = vec![0f32; classes.len() * dim];
        for (i, row) in rows.chunks_exact(dim).enumerate() {
            let mut r = row.to_vec();
            normalize_in_place(&mut r);
            let c = class_of[i];
            for (w, x) in weights[c * dim..(c + 1) * dim].iter_mut().zip(&r) {
                *w += x;
            }
        }
        for c in 0..classes.len() {
            normalize_in_place(&mut weights[c * dim..(c + 1) * dim]);
        }
        ZeroShotClassifier {
            classes,
            weights,
            dim,
            logit_scale,
        }
    }

    /// Encodes every (template, name) prompt with the model and builds the ensemble.
    pub fn build(engine: &Engine, classes: &ClassList, templates: &Templates) -> Result<Self> {
        let pairs = templates.prompts(classes);
        let prompts: Vec<String> = pairs.iter().map(|(_, p)| p.clone()).collect();
        let class_of: Vec<usize> = pairs.iter().map(|(c, _)| *c).collect();
        let emb = engine.embed_texts(&prompts, 256)?;
        let rows: Vec<f32> = emb.flatten_all()?.to_vec1()?;
        Ok(Self::from_prompt_embeddings(
            classes.names().into_iter().map(str::to_string).collect(),
            &class_of,
            &rows,
            engine.model.config.projection_dim,
            engine.model.logit_scale(),
        ))
    }

    /// The cache key of a classifier: the model's fingerprint, the classes with their prompt
    /// names, and the templates.
    pub fn cache_key(engine: &Engine, classes: &ClassList, templates: &Templates) -> String {
        let mut h = fnv1a(engine.fingerprint.as_bytes(), FNV_START);
        for (c, p) in templates.prompts(classes) {
            h = fnv1a(&(c as u64).to_le_bytes(), h);
            h = fnv1a(p.as_bytes(), h);
            h = fnv1a(&[0], h);
        }
        for n in classes.names() {
            h = fnv1a(n.as_bytes(), h);
            h = fnv1a(&[1], h);
        }
        format!("{h:016x}")
    }

    /// Loads the classifier from `cache_dir` if present, otherwise builds and stores it there.
    /// Returns whether it came from the cache.
    pub fn load_or_build(
        engine: &Engine,
        classes: &ClassList,
        templates: &Templates,
        cache_dir: Option<&Path>,
    ) -> Result<(Self, bool)> {
        let Some(dir) = cache_dir else {
            return Ok((Self::build(engine, classes, templates)?, false));
        };
        let path = dir.join(format!(
            "zeroshot-{}.safetensors",
            Self::cache_key(engine, classes, templates)
        ));
        if let Ok(c) = Self::load(&path) {
            let names: Vec<&str> = classes.names();
            if c.classes
                .iter()
                .map(String::as_str)
                .eq(names.iter().copied())
                && c.dim == engine.model.config.projection_dim
            {
                return Ok((c, true));
            }
        }
        let c = Self::build(engine, classes, templates)?;
        // A cache that cannot be written is not an error: the classifier is still correct.
        if std::fs::create_dir_all(dir).is_ok() {
            let _ = c.save(&path);
        }
        Ok((c, false))
    }

    /// Saves the classifier as safetensors (`weights`, `logit_scale`) with the class names in the metadata.
    pub fn save(&self, path: &Path) -> Result<()> {
        let wbytes = f32_to_le_bytes(&self.weights);
        let sbytes = self.logit_scale.to_le_bytes().to_vec();
        let err = |m: String| Error::Output {
            path: path.to_path_buf(),
            message: m,
        };
        let w = safetensors::tensor::TensorView::new(
            safetensors::Dtype::F32,
            vec![self.classes.len(), self.dim],
            &wbytes,
        )
        .map_err(|e| err(e.to_string()))?;
        let s = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![], &sbytes)
            .map_err(|e| err(e.to_string()))?;
        let classes = serde_json::to_string(&self.classes).map_err(|e| err(e.to_string()))?;
        let meta = std::collections::HashMap::from([("classes".to_string(), classes)]);
        let data = safetensors::tensor::serialize([("weights", w), ("logit_scale", s)], Some(meta))
            .map_err(|e| err(e.to_string()))?;
        write_atomic(path, &data)
    }

    /// Loads a classifier written by [`ZeroShotClassifier::save`].
    pub fn load(path: &Path) -> Result<Self> {
        let file = SafetensorsFile::read(path)?;
        let classes: Vec<String> = file
            .meta("classes")
            .and_then(|c| serde_json::from_str(c).ok())
            .ok_or_else(|| file.error("no class names in metadata".into()))?;
        let (shape, weights) = file.f32_tensor("weights")?;
        let (_, scale) = file.f32_tensor("logit_scale")?;
        if shape.len() != 2 || shape[0] != classes.len() || scale.len() != 1 {
            return Err(file.error(format!("unexpected shapes {shape:?}")));
        }
        Ok(ZeroShotClassifier {
            classes,
            weights,
            dim: shape[1],
            logit_scale: scale[0],
        })
    }

    /// Scores image embeddings (`n * dim` values, normalised here) against every class.
    pub fn score(&self, embeddings: &[f32]) -> Vec<Scores> {
        embeddings
            .chunks_exact(self.dim)
            .map(|row| {
                let mut x = row.to_vec();
                normalize_in_place(&mut x);
                let cosines: Vec<f32> = self
                    .weights
                    .chunks_exact(self.dim)
                    .map(|w| w.iter().zip(&x).map(|(a, b)| a * b).sum())
                    .collect();
                let logits: Vec<f32> = cosines.iter().map(|c| c * self.logit_scale).collect();
                Scores {
                    probs: softmax(&logits),
                    cosines,
                }
            })
            .collect()
    }
}

/// The default directory for caches: `$CLIPLABEL_CACHE`, else `$XDG_CACHE_HOME/cliplabel`,
/// else `~/.cache/cliplabel`.
pub fn default_cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("CLIPLABEL_CACHE").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d).join("cliplabel"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").join("cliplabel"))
}

/// The indices and values of the `k` largest entries, largest first (ties: lower index first).
pub fn top_k(values: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    idx.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
    idx.into_iter().take(k).map(|i| (i, values[i])).collect()
}

/// When to abstain: a top-1 probability below `min_score`, or a top-1 minus top-2 margin
/// below `min_margin`, turns the label into `unknown`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Abstention {
    /// Minimum top-1 probability.
    pub min_score: Option<f32>,
    /// Minimum difference between the top two probabilities.
    pub min_margin: Option<f32>,
}

impl Abstention {
    /// Whether a prediction with these probabilities should be labelled `unknown`.
    pub fn abstains(&self, probs: &[f32]) -> bool {
        let top = top_k(probs, 2);
        let p1 = top.first().map_or(0.0, |t| t.1);
        let p2 = top.get(1).map_or(0.0, |t| t.1);
        self.min_score.is_some_and(|m| p1 < m) || self.min_margin.is_some_and(|m| p1 - p2 < m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ensemble_matches_hand_computation() {
        // Class 0 has prompts (3,4) and (0,2); class 1 has (1,0).
        let rows = [3.0, 4.0, 0.0, 2.0, 1.0, 0.0];
        let c = ZeroShotClassifier::from_prompt_embeddings(
            vec!["a".into(), "b".into()],
            &[0, 0, 1],
            &rows,
            2,
            100.0,
        );
        // normalised: (0.6, 0.8) and (0, 1); mean (0.3, 0.9); norm sqrt(0.9).
        let n = (0.9f32).sqrt();
        assert!((c.weights[0] - 0.3 / n).abs() < 1e-6);
        assert!((c.weights[1] - 0.9 / n).abs() < 1e-6);
        assert_eq!(&c.weights[2..], &[1.0, 0.0]);
        // An image along (1, 0): cosines 0.3/n and 1; probabilities softmax(100 * cos).
        let s = &c.score(&[2.0, 0.0])[0];
        assert!((s.cosines[0] - 0.3 / n).abs() < 1e-6 && (s.cosines[1] - 1.0).abs() < 1e-6);
        let e = (100.0 * (0.3 / n - 1.0) as f64).exp();
        assert!((s.probs[0] as f64 - e / (1.0 + e)).abs() < 1e-6);
    }

    #[test]
    fn top_k_and_abstention() {
        assert_eq!(top_k(&[0.1, 0.6, 0.3], 2), vec![(1, 0.6), (2, 0.3)]);
        let a = Abstention {
            min_score: Some(0.5),
            min_margin: None,
        };
        assert!(!a.abstains(&[0.1, 0.6, 0.3]));
        assert!(a.abstains(&[0.4, 0.35, 0.25]));
        let m = Abstention {
            min_score: None,
            min_margin: Some(0.4),
        };
        assert!(m.abstains(&[0.1, 0.6, 0.3]));
        assert!(!m.abstains(&[0.05, 0.9, 0.05]));
    }

    #[test]
    fn save_load_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let c = ZeroShotClassifier {
            classes: vec!["x".into(), "y, z".into()],
            weights: vec![1.0, 0.0, 0.0, 1.0],
            dim: 2,
            logit_scale: 100.0,
        };
        let p = d.path().join("c.safetensors");
        c.save(&p).unwrap();
        assert_eq!(ZeroShotClassifier::load(&p).unwrap(), c);
    }
}
