//! Image files to model pixels: finding the images to process ([`inputs`]), decoding
//! ([`decode`], the one entry; [`jpeg`] for Pillow-identical JPEG pixels), resizing as Pillow does ([`resize`]) and CLIP's
//! image preprocessing ([`preprocess`]).

pub mod decode;
pub mod inputs;
pub mod jpeg;
pub mod preprocess;
pub mod resize;
