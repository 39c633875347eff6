//! The limits every decode runs under, so that no file can make cliplabel hang or exhaust
//! memory: declared pixels (Pillow's decompression-bomb guard), bytes any one decoder may
//! allocate, and frames (only the first frame or page is ever decoded).

use super::{refuse, DecodeError};

pub use crate::images::limits::DEFAULT_MAX_PIXELS;

/// The most bytes one decoder may allocate by default: enough for the largest image the pixel
/// limit allows at 4 channels of 8 bits, plus working room.
pub const DEFAULT_MAX_ALLOC: usize = 1 << 30;

/// Limits applied to one decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Images declaring more pixels (width x height) than this are refused before decoding.
    pub max_pixels: u64,
    /// The most bytes a decoder may allocate for one image (pixel buffers and intermediates).
    pub max_alloc: usize,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self::with_max_pixels(DEFAULT_MAX_PIXELS)
    }
}

impl DecodeLimits {
    /// Limits with the given pixel limit and an allocation cap sized for it
    /// (16 bytes a pixel, at least 64 MiB, at most [`DEFAULT_MAX_ALLOC`] unless the pixel
    /// limit is raised above Pillow's).
    pub fn with_max_pixels(max_pixels: u64) -> Self {
        let by_pixels = max_pixels.saturating_mul(16).min(usize::MAX as u64) as usize;
        let max_alloc = if max_pixels > DEFAULT_MAX_PIXELS {
            by_pixels
        } else {
            by_pixels.clamp(64 << 20, DEFAULT_MAX_ALLOC)
        };
        Self {
            max_pixels,
            max_alloc,
        }
    }

    /// Refuses an image whose header declares no pixels or more than `max_pixels`.
    pub(crate) fn check_dimensions(&self, w: u32, h: u32) -> Result<(), DecodeError> {
        let pixels = w as u64 * h as u64;
        if pixels == 0 {
            return Err(refuse(format!("image has no pixels ({w}x{h})")));
        }
        if pixels > self.max_pixels {
            return Err(refuse(format!(
                "image of {w}x{h} = {pixels} pixels exceeds the limit of {} (possible decompression bomb; raise --max-pixels to allow it)",
                self.max_pixels
            )));
        }
        Ok(())
    }

    /// Refuses an allocation above `max_alloc`.
    pub(crate) fn check_alloc(&self, bytes: usize) -> Result<(), DecodeError> {
        if bytes > self.max_alloc {
            return Err(refuse(format!(
                "decoding needs {bytes} bytes, more than the limit of {} bytes",
                self.max_alloc
            )));
        }
        Ok(())
    }
}
