//! Image files to model pixels: finding the images to process ([`inputs`]) and labelled sets
//! of them ([`dataset`]: ImageFolder or `path,label` CSV), the
//! decompression-bomb guard every decoder applies ([`limits`]), decoding ([`decode`], the one
//! panic-safe entry for every format, with [`jpeg`] for Pillow-identical JPEG pixels), resizing
//! as Pillow does ([`resize`]) and CLIP's image preprocessing ([`preprocess`]) with its
//! settings ([`settings`], which `clip/config.rs` fills from `preprocessor_config.json`).
//!
//! `images/` sits below `clip/`: it knows nothing of models, so nothing here imports `clip`.

pub mod dataset;
pub mod decode;
pub mod inputs;
pub mod jpeg;
pub mod limits;
pub mod preprocess;
pub mod resize;
pub mod settings;
