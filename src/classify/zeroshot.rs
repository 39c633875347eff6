//! The zero-shot classifier: one L2-normalised text embedding per class, built from prompt
//! templates as in the CLIP paper (§3.1.4), cached on disk, and scored against image embeddings.

use std::collections::BTreeMap;
use std::path::Path;

use crate::classify::classes::ClassList;
use crate::classify::scores::{Scorer, Scores};
use crate::classify::templates::Templates;
use crate::clip::engine::Engine;
use crate::error::{Error, Result};
use crate::util::hash::{fnv1a, FNV_START};
use crate::util::math::{l2_normalize, softmax};
use crate::util::safetensors_io::{write_f32, F32Tensor, SafetensorsFile};

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
            l2_normalize(&mut r);
            let c = class_of[i];
            for (w, x) in weights[c * dim..(c + 1) * dim].iter_mut().zip(&r) {
                *w += x;
            }
        }
        for c in 0..classes.len() {
            l2_normalize(&mut weights[c * dim..(c + 1) * dim]);
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
        let mut h = fnv1a(engine.run_fingerprint.as_bytes(), FNV_START);
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
        let classes = serde_json::to_string(&self.classes).map_err(|source| Error::Serialize {
            path: path.to_path_buf(),
            source,
        })?;
        let tensors = [
            F32Tensor {
                name: "weights",
                shape: vec![self.classes.len(), self.dim],
                values: &self.weights,
            },
            F32Tensor {
                name: "logit_scale",
                shape: vec![],
                values: std::slice::from_ref(&self.logit_scale),
            },
        ];
        write_f32(
            path,
            &tensors,
            &BTreeMap::from([("classes".to_string(), classes)]),
        )?;
        Ok(())
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
            return Err(file.error(format!("unexpected shapes {shape:?}")).into());
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
                l2_normalize(&mut x);
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

impl Scorer for ZeroShotClassifier {
    fn classes(&self) -> &[String] {
        &self.classes
    }
    fn score(&self, embeddings: &[f32]) -> Result<Vec<Scores>> {
        Ok(ZeroShotClassifier::score(self, embeddings))
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
