//! Image files to model pixels: finding the images to process ([`inputs`]), the
//! decompression-bomb guard every decoder applies ([`limits`]), decoding ([`decode`], the one
//! panic-safe entry for every format, with [`jpeg`] for Pillow-identical JPEG pixels), resizing
//! as Pillow does ([`resize`]) and CLIP's image preprocessing ([`preprocess`]).

pub mod decode;
pub mod inputs;
pub mod jpeg;
pub mod limits;
pub mod preprocess;
pub mod resize;
