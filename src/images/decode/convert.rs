//! Pillow's images as opened (`mode` + samples + palette + `transparency`) and the RGB
//! conversion of transformers' PIL image processor on them: an image with an alpha band or a
//! `transparency` entry goes through Pillow's `convert("RGBA")` and is alpha-composited onto
//! white; any other goes through `convert("RGB")` (the same values for every mode here).
//!
//! Written by hand because the conversions must be Pillow's exactly (its C converters in
//! `Convert.c`: which modes clip and which scale, how `transparency` becomes alpha, CMYK's
//! integer formula); no crate reproduces them. Each one is checked against Pillow itself by
//! tests/decode_corpus.rs.

use crate::images::resize::Rgb8;

/// The samples of an image in one of Pillow's modes, row-major, one value per band.
#[derive(Debug, Clone, PartialEq)]
pub enum Samples {
    /// `1`: bilevel stored as 0 or 255 (Pillow's in-memory form).
    Bilevel(Vec<u8>),
    /// `L`: 8-bit grey.
    L(Vec<u8>),
    /// `LA`: grey + alpha.
    La(Vec<u8>),
    /// `P`: palette indices; the palette is `[r, g, b, a]` per entry (alpha 255 when opaque).
    P(Vec<u8>, Vec<[u8; 4]>),
    /// `RGB`.
    Rgb(Vec<u8>),
    /// `RGBA` (unassociated alpha).
    Rgba(Vec<u8>),
    /// `RGBa` (premultiplied alpha, e.g. TIFF ExtraSamples = 1).
    RgbaPremultiplied(Vec<u8>),
    /// `CMYK`.
    Cmyk(Vec<u8>),
    /// `I;16`: unsigned 16-bit grey.
    I16(Vec<u16>),
    /// `I`: signed 32-bit grey.
    I32(Vec<i32>),
    /// `F`: 32-bit float grey.
    F32(Vec<f32>),
}

/// Pillow's `info["transparency"]` for the single-colour forms (palette transparency is
/// folded into the palette's alpha instead).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Transparency {
    /// A grey level (modes `1`, `L`, `I;16`, `I`).
    Grey(u32),
    /// An RGB colour (mode `RGB`).
    Rgb([u32; 3]),
}

/// A decoded image as Pillow holds it after `open()` + `load()`.
#[derive(Debug, Clone, PartialEq)]
pub struct PilImage {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// The samples in Pillow's mode.
    pub samples: Samples,
    /// `info["transparency"]`, when the file declares a single transparent colour.
    pub transparency: Option<Transparency>,
}

/// Composites one RGBA pixel onto opaque white exactly as Pillow's `alpha_composite` does.
#[inline]
pub(crate) fn over_white(c: u8, a: u8) -> u8 {
    // With an opaque white destination, Pillow's integer formula reduces to these coefficients.
    const PRECISION_BITS: u32 = 7;
    let a = a as u32;
    let coef1 = a << PRECISION_BITS;
    let coef2 = (255 - a) << PRECISION_BITS;
    let tmp = c as u32 * coef1 + 255 * coef2 + (0x80 << PRECISION_BITS);
    ((((tmp >> 8) + tmp) >> 8) >> PRECISION_BITS) as u8
}

/// Pillow's `MULDIV255`.
#[inline]
fn muldiv255(a: u32, b: u32) -> u32 {
    let tmp = a * b + 128;
    ((tmp >> 8) + tmp) >> 8
}

#[inline]
fn clip8_i(v: i64) -> u8 {
    v.clamp(0, 255) as u8
}

/// Pillow's float-to-8-bit clip (`F` to `RGBA`): clipped to 0-255 then truncated, NaN gives 0.
#[inline]
fn clip8_f(v: f32) -> u8 {
    if v.is_nan() || v <= 0.0 {
        0
    } else if v >= 255.0 {
        255
    } else {
        v as u8
    }
}

fn push_composited(out: &mut Vec<u8>, r: u8, g: u8, b: u8, a: u8) {
    if a == 255 {
        out.extend([r, g, b]);
    } else {
        out.extend([over_white(r, a), over_white(g, a), over_white(b, a)]);
    }
}

/// transformers' RGB conversion of a Pillow image: 8-bit RGB, transparency on white.
pub fn convert_to_rgb(img: PilImage) -> Rgb8 {
    let (width, height) = (img.width, img.height);
    let n = width * height;
    let mut out = Vec::with_capacity(n * 3);
    // Pillow's convert_transparent compares the converted 8-bit grey with the low byte of the
    // transparency value (checked: a level of 300 makes nothing transparent in I;16).
    let grey_trns = match img.transparency {
        Some(Transparency::Grey(t)) => Some(t & 0xFF),
        _ => None,
    };
    match img.samples {
        Samples::Rgb(d) => match img.transparency {
            // Pillow's rgbT2rgba compares the low byte of each transparency value.
            Some(Transparency::Rgb(t)) => {
                let t = t.map(|v| (v & 0xFF) as u8);
                for p in d.chunks_exact(3) {
                    let a = if p == t { 0 } else { 255 };
                    push_composited(&mut out, p[0], p[1], p[2], a);
                }
            }
            _ => out = d,
        },
        Samples::Bilevel(d) | Samples::L(d) => {
            // convert_transparent compares the level with the converted grey: for mode 1 a
            // white pixel is 255, so a PNG tRNS level of 1 makes nothing transparent (as Pillow).
            let t = grey_trns;
            for v in d {
                let a = if t == Some(v as u32) { 0 } else { 255 };
                push_composited(&mut out, v, v, v, a);
            }
        }
        Samples::La(d) => {
            for p in d.chunks_exact(2) {
                push_composited(&mut out, p[0], p[0], p[0], p[1]);
            }
        }
        Samples::P(d, pal) => {
            for i in d {
                let [r, g, b, a] = pal.get(i as usize).copied().unwrap_or([0, 0, 0, 255]);
                push_composited(&mut out, r, g, b, a);
            }
        }
        Samples::Rgba(d) => {
            for p in d.chunks_exact(4) {
                push_composited(&mut out, p[0], p[1], p[2], p[3]);
            }
        }
        Samples::RgbaPremultiplied(d) => {
            // Pillow's RGBa -> RGBA unpremultiplies each channel (see `unpremultiply`).
            for p in d.chunks_exact(4) {
                let [r, g, b] = [p[0], p[1], p[2]].map(|c| unpremultiply(c, p[3]));
                push_composited(&mut out, r, g, b, p[3]);
            }
        }
        Samples::Cmyk(d) => {
            for p in d.chunks_exact(4) {
                let nk = 255 - p[3] as u32;
                let [r, g, b] =
                    [p[0], p[1], p[2]].map(|c| clip8_i(nk as i64 - muldiv255(c as u32, nk) as i64));
                out.extend([r, g, b]);
            }
        }
        Samples::I16(d) => {
            for v in d {
                let g = v.min(255) as u8;
                let a = if grey_trns == Some(g as u32) { 0 } else { 255 };
                push_composited(&mut out, g, g, g, a);
            }
        }
        Samples::I32(d) => {
            for v in d {
                let g = clip8_i(v as i64);
                let a = if grey_trns == Some(g as u32) { 0 } else { 255 };
                push_composited(&mut out, g, g, g, a);
            }
        }
        Samples::F32(d) => {
            for v in d {
                let g = clip8_f(v);
                out.extend([g, g, g]);
            }
        }
    }
    Rgb8 {
        width,
        height,
        data: out,
    }
}

/// Pillow's `RGBa` to `RGBA` for one channel: `CLIP8(255 * c / a)`, truncated (checked against
/// Pillow 13: 100 at alpha 128 gives 199); at alpha 0 the value does not matter (composited
/// to white).
#[inline]
fn unpremultiply(c: u8, a: u8) -> u8 {
    if a == 0 {
        0
    } else if a == 255 {
        c
    } else {
        clip8_i((c as i64 * 255) / a as i64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opaque_composite_is_identity_and_transparent_is_white() {
        for v in 0..=255u8 {
            assert_eq!(over_white(v, 255), v);
            assert_eq!(over_white(v, 0), 255);
        }
        assert_eq!(over_white(0, 128), 127);
    }

    fn one(samples: Samples, transparency: Option<Transparency>, w: usize) -> Vec<u8> {
        convert_to_rgb(PilImage {
            width: w,
            height: 1,
            samples,
            transparency,
        })
        .data
    }

    /// Values measured with Pillow 13.0.0 (`convert("RGBA")` of tiny images built in Python).
    #[test]
    fn conversions_match_pillow() {
        // CMYK (10, 200, 30, 40) -> (207, 46, 190).
        assert_eq!(
            one(Samples::Cmyk(vec![10, 200, 30, 40]), None, 1),
            [207, 46, 190]
        );
        // RGBa unpremultiplies with truncation: (100, 50, 10) at alpha 128 -> (199, 99, 19).
        let c = one(Samples::RgbaPremultiplied(vec![100, 50, 10, 128]), None, 1);
        assert_eq!(c, [199, 99, 19].map(|v| over_white(v, 128)));
        // I;16 clips; a transparency level compares with the clipped value's low byte.
        let d = one(
            Samples::I16(vec![0, 5, 255, 300, 65535]),
            Some(Transparency::Grey(5)),
            5,
        );
        assert_eq!(
            d,
            [0, 0, 0, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255]
        );
        let e = one(Samples::I16(vec![5, 255]), Some(Transparency::Grey(300)), 2);
        assert_eq!(e, [5, 5, 5, 255, 255, 255]);
        // F clips and truncates; NaN is 0.
        let f = one(
            Samples::F32(vec![-5.0, 5.7, 254.5, 300.0, f32::NAN]),
            None,
            5,
        );
        assert_eq!(
            f.iter().step_by(3).copied().collect::<Vec<_>>(),
            [0, 5, 254, 255, 0]
        );
        // Mode 1 with transparency 255 makes white transparent (composited to white).
        let g = one(
            Samples::Bilevel(vec![0, 255]),
            Some(Transparency::Grey(255)),
            2,
        );
        assert_eq!(g, [0, 0, 0, 255, 255, 255]);
        // An RGB transparency colour compares low bytes: (0, 0, 0x2828) matches (0, 0, 40).
        let h = one(
            Samples::Rgb(vec![0, 0, 40, 0, 0, 41]),
            Some(Transparency::Rgb([0, 0, 0x2828])),
            2,
        );
        assert_eq!(h, [255, 255, 255, 0, 0, 41]);
    }
}
