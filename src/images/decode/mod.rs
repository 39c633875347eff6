//! The one decode entry: image file bytes to the 8-bit RGB that Pillow's `open()` +
//! transformers' `convert_to_rgb` give, under limits, never panicking.
//!
//! Each format goes to a maintained decoder chosen for Pillow parity: JPEG to
//! [`crate::images::jpeg`] (libjpeg-turbo-derived, Pillow's pixels), PNG to the `png` crate
//! ([`png`]), TIFF to the `tiff` crate ([`tiff`]), RLE BMP to [`bmp`], GIF, other BMP, WebP and ICO to the `image` crate
//! ([`other`]); each yields a [`convert::PilImage`] in Pillow's mode, and [`convert`] applies
//! `convert_to_rgb`. The whole decode runs inside `catch_unwind`: a panic in any decoder
//! becomes an error whose message starts `decoder crashed: `, so one bad file cannot stop a
//! run. [`limits`] bounds pixels, allocation and frames.

mod bmp;
pub mod convert;
pub mod limits;
mod other;
mod png;
mod tiff;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use crate::error::{Error, Result};
use crate::images::resize::Rgb8;

pub use convert::{convert_to_rgb, PilImage};
pub use limits::{DecodeLimits, DEFAULT_MAX_PIXELS};

/// Why a format decoder refused a file (turned into [`Error::Image`] with the path).
#[derive(Debug)]
pub(crate) struct DecodeError(pub(crate) String);

pub(crate) fn refuse(message: impl Into<String>) -> DecodeError {
    DecodeError(message.into())
}

/// The prefix of the message of an image whose decoder panicked.
pub const CRASH_PREFIX: &str = "decoder crashed: ";

/// The file formats recognised by their signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// JPEG (`FF D8 FF`).
    Jpeg,
    /// PNG (including APNG).
    Png,
    /// TIFF and BigTIFF, either byte order.
    Tiff,
    /// GIF87a / GIF89a.
    Gif,
    /// Windows / OS/2 bitmap.
    Bmp,
    /// WebP (RIFF container).
    WebP,
    /// Windows icon.
    Ico,
}

/// Recognises a file's format by its first bytes, whatever its name.
pub fn sniff(bytes: &[u8]) -> Option<Format> {
    let starts = |s: &[u8]| bytes.starts_with(s);
    if crate::images::jpeg::is_jpeg(bytes) {
        Some(Format::Jpeg)
    } else if starts(b"\x89PNG\r\n\x1a\n") {
        Some(Format::Png)
    } else if starts(b"II*\0") || starts(b"MM\0*") || starts(b"II+\0") || starts(b"MM\0+") {
        Some(Format::Tiff)
    } else if starts(b"GIF87a") || starts(b"GIF89a") {
        Some(Format::Gif)
    } else if starts(b"BM") {
        Some(Format::Bmp)
    } else if starts(b"RIFF") && bytes.get(8..12) == Some(b"WEBP") {
        Some(Format::WebP)
    } else if starts(b"\0\0\x01\0") {
        Some(Format::Ico)
    } else {
        None
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-text payload".to_string()
    }
}

fn image_err(path: &Path, message: impl Into<String>) -> Error {
    Error::Image {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

fn decode_inner(bytes: &[u8], path: &Path, limits: &DecodeLimits) -> Result<Rgb8> {
    if bytes.is_empty() {
        return Err(image_err(path, "empty file (0 bytes)"));
    }
    let format = sniff(bytes)
        .ok_or_else(|| image_err(path, "not a supported image (unrecognised file signature)"))?;
    let pil = match format {
        Format::Jpeg => {
            return crate::images::jpeg::decode_rgb(bytes, path, limits.max_pixels);
        }
        Format::Png => png::decode(bytes, limits),
        Format::Tiff => {
            let (pil, orientation) =
                tiff::decode(bytes, limits).map_err(|e| image_err(path, e.0))?;
            return Ok(orient(convert_to_rgb(pil), orientation));
        }
        Format::Bmp if bmp::is_rle(bytes) => bmp::decode(bytes, limits),
        Format::Bmp if bmp::is_os2v2(bytes) => {
            let copy = bmp::os2v2_to_windows(bytes).map_err(|e| image_err(path, e.0))?;
            other::decode(&copy, format, limits)
        }
        Format::Gif | Format::Bmp | Format::WebP | Format::Ico => {
            other::decode(bytes, format, limits)
        }
    }
    .map_err(|e| image_err(path, e.0))?;
    Ok(convert_to_rgb(pil))
}

/// Applies a TIFF/EXIF Orientation value (1-8; others leave the image as it is) as Pillow's
/// `exif_transpose` does: 2 mirror, 3 rotate 180, 4 flip, 5 transpose, 6 rotate 270,
/// 7 transverse, 8 rotate 90.
pub fn orient(img: Rgb8, orientation: u16) -> Rgb8 {
    if !(2..=8).contains(&orientation) {
        return img;
    }
    let (w, h) = (img.width, img.height);
    let swap = orientation >= 5;
    let (ow, oh) = if swap { (h, w) } else { (w, h) };
    let mut data = vec![0u8; w * h * 3];
    for oy in 0..oh {
        for ox in 0..ow {
            // Source coordinates of output pixel (ox, oy).
            let (sx, sy) = match orientation {
                2 => (w - 1 - ox, oy),
                3 => (w - 1 - ox, h - 1 - oy),
                4 => (ox, h - 1 - oy),
                5 => (oy, ox),
                6 => (oy, h - 1 - ox),
                7 => (w - 1 - oy, h - 1 - ox),
                _ => (w - 1 - oy, ox),
            };
            let s = (sy * w + sx) * 3;
            let d = (oy * ow + ox) * 3;
            data[d..d + 3].copy_from_slice(&img.data[s..s + 3]);
        }
    }
    Rgb8 {
        width: ow,
        height: oh,
        data,
    }
}

/// Decodes an image file's bytes to the RGB Pillow + `convert_to_rgb` give, under `limits`.
///
/// Never panics: a panic inside a decoder is caught and returned as [`Error::Image`] whose
/// message starts with [`CRASH_PREFIX`] followed by the panic message.
pub fn decode_rgb(bytes: &[u8], path: &Path, limits: &DecodeLimits) -> Result<Rgb8> {
    match catch_unwind(AssertUnwindSafe(|| decode_inner(bytes, path, limits))) {
        Ok(r) => r,
        Err(payload) => Err(image_err(
            path,
            format!("{CRASH_PREFIX}{}", panic_message(payload.as_ref())),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panics_become_errors_with_the_crash_prefix() {
        let r = catch_unwind(|| -> Result<Rgb8> { panic!("boom {}", 7) });
        let msg = panic_message(r.unwrap_err().as_ref());
        assert_eq!(msg, "boom 7");
    }

    #[test]
    fn orientation_moves_pixels_as_pillow_exif_transpose() {
        // 2x1 image: pixel values 1 and 2.
        let img = Rgb8 {
            width: 2,
            height: 1,
            data: vec![1, 1, 1, 2, 2, 2],
        };
        let px = |r: &Rgb8| r.data.iter().step_by(3).copied().collect::<Vec<u8>>();
        assert_eq!(px(&orient(img.clone(), 1)), [1, 2]);
        assert_eq!(px(&orient(img.clone(), 2)), [2, 1]);
        assert_eq!(px(&orient(img.clone(), 3)), [2, 1]);
        let r6 = orient(img.clone(), 6);
        assert_eq!((r6.width, r6.height, px(&r6)), (1, 2, vec![1, 2]));
        let r8 = orient(img, 8);
        assert_eq!((r8.width, r8.height, px(&r8)), (1, 2, vec![2, 1]));
    }

    #[test]
    fn unknown_and_empty_bytes_are_refused() {
        let p = Path::new("x");
        let l = DecodeLimits::default();
        assert!(decode_rgb(b"", p, &l)
            .unwrap_err()
            .to_string()
            .contains("empty"));
        assert!(decode_rgb(b"hello", p, &l)
            .unwrap_err()
            .to_string()
            .contains("unrecognised"));
    }
}
