//! The decompression-bomb guard every decoder applies before decoding a pixel: an image whose
//! header declares no pixels, or more than `--max-pixels`, is refused with the reason.

use std::path::Path;

use crate::error::{Error, Result};

/// Pillow's decompression-bomb limit (twice `Image.MAX_IMAGE_PIXELS`): larger images are refused.
pub const DEFAULT_MAX_PIXELS: u64 = 178_956_970;

/// The decompression-bomb guard: refuses an image whose header declares no pixels or more
/// than `max_pixels`, before any pixel is decoded.
pub fn check_dimensions(path: &Path, w: u32, h: u32, max_pixels: u64) -> Result<()> {
    let pixels = w as u64 * h as u64;
    if pixels == 0 {
        return Err(image_err(path, format!("image has no pixels ({w}x{h})")));
    }
    if pixels > max_pixels {
        return Err(image_err(
            path,
            format!(
                "image of {w}x{h} = {pixels} pixels exceeds the limit of {max_pixels} (possible decompression bomb; raise --max-pixels to allow it)"
            ),
        ));
    }
    Ok(())
}

fn image_err(path: &Path, message: impl Into<String>) -> Error {
    Error::Image {
        path: path.to_path_buf(),
        message: message.into(),
    }
}
