//! Image decoding and CLIP preprocessing, matching transformers' PIL-based image processor.
//!
//! The steps are those of `CLIPImageProcessorPil`: convert to RGB (compositing transparency
//! onto white, as `convert_to_rgb` does; decoding and conversion live in [`crate::images::decode`]), resize the shortest edge with Pillow's resampling,
//! centre crop, rescale by 1/255 and normalise with the configured mean and std.

use std::path::Path;

use crate::error::{Error, Result};
use crate::images::decode;
use crate::images::resize::{resize, Rgb8};
use crate::images::settings::{PreprocessConfig, ResizeTo};

pub use crate::images::decode::DEFAULT_MAX_PIXELS;

/// A preprocessed image: `channels * height * width` normalised floats, channel-first.
#[derive(Debug, Clone, PartialEq)]
pub struct Pixels {
    /// Height of the tensor.
    pub height: usize,
    /// Width of the tensor.
    pub width: usize,
    /// Channel-first values, `3 * height * width` of them.
    pub data: Vec<f32>,
}

/// Decodes an image file's bytes to the RGB Pillow + transformers' `convert_to_rgb` give,
/// refusing any image whose header declares more than `max_pixels` pixels; never panics
/// (see [`crate::images::decode`]).
pub fn decode_rgb(bytes: &[u8], path: &Path, max_pixels: u64) -> Result<Rgb8> {
    decode::decode_rgb(
        bytes,
        path,
        &decode::DecodeLimits::with_max_pixels(max_pixels),
    )
}

/// Reads and decodes an image file to RGB (see [`decode_rgb`]).
pub fn load_rgb(path: &Path, max_pixels: u64) -> Result<Rgb8> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode_rgb(&bytes, path, max_pixels)
}

/// The size `(width, height)` the processor resizes an image of `(w, h)` to.
pub fn resize_target(w: usize, h: usize, to: ResizeTo) -> (usize, usize) {
    match to {
        ResizeTo::Exact { height, width } => (width, height),
        ResizeTo::ShortestEdge(s) => {
            // transformers: short side to `s`, long side int(s * long / short).
            let (short, long) = if w <= h { (w, h) } else { (h, w) };
            let new_long = (s as f64 * long as f64 / short as f64) as usize;
            if w <= h {
                (s, new_long)
            } else {
                (new_long, s)
            }
        }
    }
}

/// Centre-crops (zero-padding if needed) as transformers' `center_crop` does.
pub fn center_crop(img: &Rgb8, crop_h: usize, crop_w: usize) -> Rgb8 {
    let (h, w) = (img.height as i64, img.width as i64);
    let (ch, cw) = (crop_h as i64, crop_w as i64);
    let top = (h - ch).div_euclid(2);
    let left = (w - cw).div_euclid(2);
    let mut data = vec![0u8; crop_h * crop_w * 3];
    for y in 0..ch {
        let sy = top + y;
        if sy < 0 || sy >= h {
            continue;
        }
        for x in 0..cw {
            let sx = left + x;
            if sx < 0 || sx >= w {
                continue;
            }
            let s = ((sy * w + sx) * 3) as usize;
            let d = ((y * cw + x) * 3) as usize;
            data[d..d + 3].copy_from_slice(&img.data[s..s + 3]);
        }
    }
    Rgb8 {
        width: crop_w,
        height: crop_h,
        data,
    }
}

/// Resizes and centre-crops an RGB image, returning the 8-bit result before normalisation.
pub fn resize_and_crop(img: &Rgb8, cfg: &PreprocessConfig) -> Rgb8 {
    let resized;
    let mut cur = img;
    if let Some(to) = cfg.resize {
        let (w, h) = resize_target(img.width, img.height, to);
        resized = resize(img, w.max(1), h.max(1), cfg.resample);
        cur = &resized;
    }
    match cfg.crop {
        Some((ch, cw)) if (ch, cw) != (cur.height, cur.width) => center_crop(cur, ch, cw),
        _ => cur.clone(),
    }
}

/// Rescales and normalises an 8-bit RGB image into channel-first floats.
///
/// The arithmetic follows transformers: rescale in f64 then cast to f32, normalise in f32.
pub fn normalize(img: &Rgb8, cfg: &PreprocessConfig) -> Pixels {
    let (h, w) = (img.height, img.width);
    let plane = h * w;
    let mut data = vec![0f32; 3 * plane];
    let lut: Vec<[f32; 3]> = (0..=255u8)
        .map(|v| {
            let x = match cfg.rescale {
                Some(s) => (v as f64 * s) as f32,
                None => v as f32,
            };
            match cfg.normalize {
                Some((mean, std)) => [0, 1, 2].map(|c| (x - mean[c]) / std[c]),
                None => [x; 3],
            }
        })
        .collect();
    for (i, px) in img.data.chunks_exact(3).enumerate() {
        for c in 0..3 {
            data[c * plane + i] = lut[px[c] as usize][c];
        }
    }
    Pixels {
        height: h,
        width: w,
        data,
    }
}

/// The whole preprocessing of one decoded image.
pub fn preprocess(img: &Rgb8, cfg: &PreprocessConfig) -> Pixels {
    normalize(&resize_and_crop(img, cfg), cfg)
}

/// Reads, decodes and preprocesses one image file.
pub fn preprocess_file(path: &Path, cfg: &PreprocessConfig, max_pixels: u64) -> Result<Pixels> {
    Ok(preprocess(&load_rgb(path, max_pixels)?, cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_target_matches_transformers() {
        assert_eq!(
            resize_target(640, 480, ResizeTo::ShortestEdge(224)),
            (298, 224)
        );
        assert_eq!(
            resize_target(1000, 10, ResizeTo::ShortestEdge(224)),
            (22400, 224)
        );
        assert_eq!(
            resize_target(7, 13, ResizeTo::ShortestEdge(224)),
            (224, 416)
        );
        assert_eq!(
            resize_target(
                5,
                5,
                ResizeTo::Exact {
                    height: 3,
                    width: 4
                }
            ),
            (4, 3)
        );
    }

    #[test]
    fn crop_pads_small_images_with_zeros() {
        let img = Rgb8 {
            width: 2,
            height: 2,
            data: vec![9; 12],
        };
        let c = center_crop(&img, 4, 4);
        assert_eq!(c.data.iter().filter(|&&v| v == 9).count(), 12);
        assert_eq!(c.data[0], 0);
        let c = center_crop(
            &Rgb8 {
                width: 5,
                height: 3,
                data: (0..45).collect(),
            },
            1,
            1,
        );
        assert_eq!(c.data, vec![21, 22, 23]);
    }

    #[test]
    fn bad_bytes_are_errors_not_panics() {
        let p = Path::new("x.png");
        assert!(decode_rgb(b"", p, DEFAULT_MAX_PIXELS)
            .unwrap_err()
            .to_string()
            .contains("empty"));
        assert!(decode_rgb(b"hello, not an image", p, DEFAULT_MAX_PIXELS).is_err());
        let mut png = Vec::new();
        image::RgbImage::new(4, 4)
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        assert!(decode_rgb(&png[..png.len() / 2], p, DEFAULT_MAX_PIXELS).is_err());
        assert!(decode_rgb(&png, p, 15)
            .unwrap_err()
            .to_string()
            .contains("exceeds the limit"));
        assert_eq!(decode_rgb(&png, p, 16).unwrap().width, 4);
    }
}
