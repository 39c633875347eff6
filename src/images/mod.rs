//! Image files to model pixels: finding the images to process ([`inputs`]), the
//! decompression-bomb guard every decoder applies ([`limits`]), decoding ([`jpeg`] for
//! Pillow-identical JPEG pixels; other formats in [`preprocess`]), resizing as Pillow does
//! ([`resize`]) and CLIP's image preprocessing ([`preprocess`]).

pub mod inputs;
pub mod jpeg;
pub mod limits;
pub mod preprocess;
pub mod resize;
