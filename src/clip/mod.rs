//! The CLIP model and everything needed to run it: `config.json` and the model files
//! ([`config`], [`hub`]), the tokenizer ([`tokenizer`]), the checkpoint on disk
//! ([`checkpoint`]), the text and vision transformers ([`model`]), and the [`engine`] that ties
//! them to the image preprocessing. [`kernels`] holds the hand-written CPU kernels the
//! transformers run on.

pub mod checkpoint;
pub mod config;
pub mod engine;
pub mod hub;
// Private: the kernels assume checked arguments and panic otherwise. The `internals` feature
// exposes them for the kernel benchmarks (examples/bench_gemm.rs, bench_attention.rs, ...).
#[cfg(feature = "internals")]
pub mod kernels;
#[cfg(not(feature = "internals"))]
pub(crate) mod kernels;
pub mod model;
pub mod tokenizer;
