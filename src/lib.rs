//! cliplabel labels images with CLIP: zero-shot from text prompts, or with a linear head
//! trained on frozen CLIP image embeddings, and compares the two on the user's own data.
//!
//! The engine ([`clip::model`], [`clip::tokenizer`], [`images::preprocess`]) reproduces Hugging Face transformers'
//! `CLIPModel`, `CLIPTokenizerFast` and PIL-based CLIP image processor for any CLIP ViT
//! checkpoint; [`clip::engine`] batches work over it.

pub mod classify;
pub mod clip;
pub mod error;
pub mod eval;
pub mod images;
pub mod jobs;
pub mod linear_head;
pub mod review;
pub mod util;

pub use error::{Error, Result};

/// The device cliplabel computes on: the first CUDA GPU when built with the `cuda` feature
/// and one is present, otherwise the CPU.
pub fn default_device() -> candle_core::Device {
    #[cfg(feature = "cuda")]
    if let Ok(d) = candle_core::Device::new_cuda(0) {
        return d;
    }
    candle_core::Device::Cpu
}

/// Sets the number of worker threads for preprocessing and the model's matrix multiplies.
///
/// Call once, before any parallel work; `None` uses every core.
pub fn configure_threads(threads: Option<usize>) -> Result<()> {
    if let Some(n) = threads {
        if n == 0 {
            return Err(Error::Input("--threads must be at least 1".into()));
        }
        // candle's CPU kernels size their work by RAYON_NUM_THREADS.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .map_err(|e| Error::Input(format!("cannot configure {n} threads: {e}")))?;
    }
    Ok(())
}
