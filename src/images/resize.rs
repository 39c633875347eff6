//! Pillow-exact image resampling for 8-bit RGB images.
//!
//! This reproduces Pillow's `Image.resize` (its `Resample.c`): a separable convolution,
//! horizontal pass first, with the filter's support widened by the scale factor when
//! downscaling (antialiasing), per-pixel coefficients normalised to sum to one and converted
//! to 22-bit fixed point, each pass rounded and clamped to 0..=255. Matching it bit for bit is
//! what makes cliplabel's pixel values equal to transformers' PIL-based CLIP image processor.

use crate::images::settings::Resample;

const PRECISION_BITS: u32 = 32 - 8 - 2;

fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

fn bilinear(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        1.0 - x
    } else {
        0.0
    }
}

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else {
        let x = x * std::f64::consts::PI;
        x.sin() / x
    }
}

fn lanczos(x: f64) -> f64 {
    if (-3.0..3.0).contains(&x) {
        sinc(x) * sinc(x / 3.0)
    } else {
        0.0
    }
}

fn filter_of(resample: Resample) -> (fn(f64) -> f64, f64) {
    match resample {
        Resample::Bicubic => (bicubic, 2.0),
        Resample::Bilinear => (bilinear, 1.0),
        Resample::Lanczos => (lanczos, 3.0),
    }
}

/// Fixed-point coefficients of one resampling pass: for each output pixel, the first input
/// index and the weights of the inputs it reads.
struct Coeffs {
    ksize: usize,
    bounds: Vec<(usize, usize)>,
    weights: Vec<i32>,
}

fn precompute(in_size: usize, out_size: usize, resample: Resample) -> Coeffs {
    let (filter, base_support) = filter_of(resample);
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = base_support * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * ksize];
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // Pillow truncates toward zero with a C cast after adding 0.5.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let n = xmax.saturating_sub(xmin);
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(n) {
            let w = filter((x as f64 + xmin as f64 - center + 0.5) * ss);
            *kx = w;
            ww += w;
        }
        let row = &mut weights[xx * ksize..xx * ksize + ksize];
        for (x, out) in row.iter_mut().enumerate().take(n) {
            let w = if ww != 0.0 { k[x] / ww } else { k[x] };
            let scaled = w * (1u32 << PRECISION_BITS) as f64;
            *out = if w < 0.0 {
                (-0.5 + scaled) as i32
            } else {
                (0.5 + scaled) as i32
            };
        }
        bounds.push((xmin, n));
    }
    Coeffs {
        ksize,
        bounds,
        weights,
    }
}

#[inline]
fn clip8(v: i32) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// An 8-bit interleaved RGB image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rgb8 {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// `height * width * 3` bytes, row-major, RGB interleaved.
    pub data: Vec<u8>,
}

fn horizontal(src: &Rgb8, out_w: usize, c: &Coeffs) -> Rgb8 {
    let mut data = vec![0u8; src.height * out_w * 3];
    for y in 0..src.height {
        let row = &src.data[y * src.width * 3..(y + 1) * src.width * 3];
        let out_row = &mut data[y * out_w * 3..(y + 1) * out_w * 3];
        for xx in 0..out_w {
            let (xmin, n) = c.bounds[xx];
            let k = &c.weights[xx * c.ksize..xx * c.ksize + n];
            let init = 1i32 << (PRECISION_BITS - 1);
            let (mut s0, mut s1, mut s2) = (init, init, init);
            for (i, &w) in k.iter().enumerate() {
                let p = &row[(xmin + i) * 3..(xmin + i) * 3 + 3];
                s0 += p[0] as i32 * w;
                s1 += p[1] as i32 * w;
                s2 += p[2] as i32 * w;
            }
            out_row[xx * 3] = clip8(s0);
            out_row[xx * 3 + 1] = clip8(s1);
            out_row[xx * 3 + 2] = clip8(s2);
        }
    }
    Rgb8 {
        width: out_w,
        height: src.height,
        data,
    }
}

fn vertical(src: &Rgb8, out_h: usize, c: &Coeffs) -> Rgb8 {
    let stride = src.width * 3;
    let mut data = vec![0u8; out_h * stride];
    let mut acc = vec![0i32; stride];
    for yy in 0..out_h {
        let (ymin, n) = c.bounds[yy];
        let k = &c.weights[yy * c.ksize..yy * c.ksize + n];
        acc.fill(1i32 << (PRECISION_BITS - 1));
        for (i, &w) in k.iter().enumerate() {
            let row = &src.data[(ymin + i) * stride..(ymin + i + 1) * stride];
            for (a, &p) in acc.iter_mut().zip(row) {
                *a += p as i32 * w;
            }
        }
        for (o, &a) in data[yy * stride..(yy + 1) * stride].iter_mut().zip(&acc) {
            *o = clip8(a);
        }
    }
    Rgb8 {
        width: src.width,
        height: out_h,
        data,
    }
}

/// Resizes like Pillow's `Image.resize((width, height), resample)` on an RGB image.
///
/// A pass whose size does not change is skipped, as in Pillow.
pub fn resize(src: &Rgb8, width: usize, height: usize, resample: Resample) -> Rgb8 {
    let mut img = if width != src.width {
        horizontal(src, width, &precompute(src.width, width, resample))
    } else {
        src.clone()
    };
    if height != img.height {
        img = vertical(&img, height, &precompute(img.height, height, resample));
    }
    img
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(w: usize, h: usize) -> Rgb8 {
        let mut data = Vec::with_capacity(w * h * 3);
        for y in 0..h {
            for x in 0..w {
                data.extend([
                    (x * 255 / w.max(1)) as u8,
                    (y * 255 / h.max(1)) as u8,
                    ((x + y) % 256) as u8,
                ]);
            }
        }
        Rgb8 {
            width: w,
            height: h,
            data,
        }
    }

    #[test]
    fn identity_size_is_a_copy() {
        let g = gradient(17, 9);
        assert_eq!(resize(&g, 17, 9, Resample::Bicubic), g);
    }

    #[test]
    fn constant_image_stays_constant() {
        let img = Rgb8 {
            width: 50,
            height: 30,
            data: vec![200; 50 * 30 * 3],
        };
        for (w, h) in [(224, 134), (7, 5), (1, 1)] {
            let out = resize(&img, w, h, Resample::Bicubic);
            assert!(out.data.iter().all(|&v| v == 200), "{w}x{h}");
        }
    }

    #[test]
    fn coefficients_sum_to_one_in_fixed_point() {
        for (i, o) in [(1000, 224), (7, 224), (224, 224), (3, 2)] {
            let c = precompute(i, o, Resample::Bicubic);
            for xx in 0..o {
                let s: i32 = c.weights[xx * c.ksize..(xx + 1) * c.ksize].iter().sum();
                assert!(
                    (s - (1 << PRECISION_BITS)).abs() <= c.ksize as i32,
                    "{i}->{o} at {xx}: {s}"
                );
            }
        }
    }
}
