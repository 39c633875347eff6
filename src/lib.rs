//! cliplabel labels images with CLIP: zero-shot from text prompts, or with a linear head
//! trained on frozen CLIP image embeddings, and compares the two on the user's own data.
//!
//! The engine ([`clip::model`], [`clip::tokenizer`], [`images::preprocess`]) reproduces Hugging
//! Face transformers' `CLIPModel`, `CLIPTokenizerFast` and PIL-based CLIP image processor for any
//! CLIP ViT checkpoint; [`Engine`] embeds prompts and pixels with it.
//!
//! # Public API
//!
//! The items re-exported here are what a library user needs; the modules hold the rest.
//!
//! - **The model**: [`Engine`], built only by [`Engine::try_new`] from [`EngineOptions`]
//!   (model directory or hub id with [`HubOptions`], device, threads, [`Kernels`], pixel limit),
//!   embeds prompts ([`Engine::embed_texts`]) and images ([`Engine::load_pixels`],
//!   [`Engine::embed_pixels`]) as [`Features`].
//! - **Classifying**: [`ClassList`] and [`Templates`] make a [`ZeroShotClassifier`]; [`Head`] is a
//!   head trained by `fit`; both are [`Scorer`]s giving [`Scores`]; [`top_k`] and [`Abstention`]
//!   turn scores into labels.
//! - **The commands' entry points**, which report progress through callbacks and print nothing:
//!   [`label_zero_shot`] and [`predict_with_head`] ([`JobOptions`], [`JobEvent`], [`Summary`]);
//!   [`embed_image_files`] and [`embed_text_file`] ([`EmbedOptions`], [`EmbedEvent`]), and
//!   [`embed_image_rows`] ([`ImageEmbeddings`]) for embeddings kept in memory;
//!   [`fit_head`] ([`FitHeadOptions`]); [`compare_sets`] ([`CompareSets`], [`CompareOptions`],
//!   [`Shots`]) with [`write_report`]; [`merge`] of a sharded run; [`collect_images`] and
//!   [`ShardRequest::select`] choose a task's images.
//! - **Trust**: [`in_isolation`] tells a panic hook that a panic is being caught and reported
//!   as one image's failure; [`path_text`] and [`text_path`] are the reversible text form of a
//!   path that every output file uses (names that are not UTF-8 are escaped, not lost).
//! - **Errors**: every function returns [`Result`]; [`Error`]'s variants name the file, line,
//!   field or tensor at fault.
//!
//! The library reads no environment variable and prints nothing: the `cliplabel` binary reads
//! flags and environment once and passes them in as options. cliplabel's CPU kernels
//! (`clip::kernels`) are private (they assume checked arguments); the `internals` feature
//! exposes them for `examples/bench_gemm.rs`.

pub mod classify;
pub mod clip;
pub mod error;
pub mod eval;
pub mod images;
pub mod jobs;
pub mod linear_head;
pub mod review;
pub(crate) mod util;

pub use classify::classes::ClassList;
pub use classify::head::{Head, Method};
pub use classify::scores::{top_k, Abstention, Scorer, Scores};
pub use classify::templates::Templates;
pub use classify::zeroshot::ZeroShotClassifier;
pub use clip::engine::{Engine, EngineOptions, Features};
pub use clip::hub::HubOptions;
pub use clip::kernels::precision::Precision;
pub use clip::model::Kernels;
pub use error::{Error, ErrorKind, ModelIdentity, ModelInputError, OptionError, Remedy, Result};
pub use eval::compare::{compare_sets, CompareOptions, CompareSets, Shots};
pub use eval::report::{summary_table, write_report, CompareResults};
pub use images::dataset::LabelledSet;
pub use images::inputs::collect_images;
pub use jobs::cluster::merge::{merge, MergeOptions, MergeReport};
pub use jobs::cluster::shard::{Selection, Shard, ShardRequest};
pub use jobs::embed::{
    embed_image_files, embed_image_rows, embed_text_file, read_embeddings, EmbedEvent,
    EmbedOptions, EmbedSummary, EmbeddingKind, EmbeddingsSidecar, ImageEmbeddings,
};
pub use jobs::fit::{fit_head, FitHeadOptions, FitSummary};
pub use jobs::label::{label_zero_shot, predict_with_head, JobEvent, JobOptions, Summary};
pub use jobs::organize::LinkMode;
pub use jobs::writers::Failure;
pub use util::isolate::in_isolation;
pub use util::pathtext::{path_text, text_path};

/// The device cliplabel computes on: the first CUDA GPU when built with the `cuda` feature
/// and one is present, otherwise the CPU.
pub fn default_device() -> candle_core::Device {
    #[cfg(feature = "cuda")]
    if let Ok(d) = candle_core::Device::new_cuda(0) {
        return d;
    }
    candle_core::Device::Cpu
}
