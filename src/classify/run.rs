//! What identifies a scorer run (`OUT.run.json`): the model, the kind of classifier, a key of
//! its classes and prompts or head weights, and `--top-k`. `jobs/label.rs` writes it and
//! checks `--resume` against it; `classify/calibration.rs` checks a calibration against it, so
//! it lives here, below both.

use serde::{Deserialize, Serialize};

/// Which kind of classifier labelled a run (`method` in `OUT.run.json`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum RunMethod {
    /// Zero-shot prompts (`label`).
    #[serde(rename = "zero-shot")]
    ZeroShot,
    /// A head trained by `fit` (`predict`).
    #[serde(rename = "head")]
    Head,
}

/// What identifies a run, stored as `OUT.run.json` so that `--resume` (and merging) can refuse
/// to mix outputs of different models or class lists.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunInfo {
    /// The model as given.
    pub model: String,
    /// Fingerprint of the model files.
    pub model_fingerprint: String,
    /// The scorer: `zero-shot` or `head`.
    pub method: RunMethod,
    /// A key of the classifier (classes, prompts, or head weights).
    pub scorer_key: String,
    /// Class labels in score order.
    pub classes: Vec<String>,
    /// Labels per row.
    pub top_k: usize,
}
