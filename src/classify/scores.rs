//! Scores and what is made of them: the [`Scorer`] trait every classifier implements (the
//! zero-shot classifier, a trained head), one image's [`Scores`], the top-k labels and the
//! abstention rule that writes `unknown`.

use crate::clip::engine::Features;

/// Anything that turns image embeddings into class probabilities.
pub trait Scorer: Sync {
    /// Class labels, in score order.
    fn classes(&self) -> &[String];
    /// Scores `n * dim` embedding values: one [`Scores`] per embedding, or an error.
    fn score(&self, embeddings: &[f32]) -> crate::error::Result<Vec<Scores>>;
    /// Which image features the scorer expects.
    fn features(&self) -> Features {
        Features::Projected
    }
}

/// Scores of one image against every class.
#[derive(Debug, Clone, PartialEq)]
pub struct Scores {
    /// Softmax probabilities over classes.
    pub probs: Vec<f32>,
    /// Cosine similarity with each class embedding (empty for scorers without one).
    pub cosines: Vec<f32>,
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
}
