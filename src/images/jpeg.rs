//! JPEG decoding that gives exactly Pillow's pixels.
//!
//! Pillow decodes JPEG with libjpeg-turbo at libjpeg's defaults (`JDCT_ISLOW`, fancy upsampling,
//! block smoothing on; see `JpegDecode.c`, which changes them only in draft mode). The `image`
//! crate's decoder rounds differently (up to 4 levels), so JPEG files are decoded here with
//! mozjpeg's copy of libjpeg-turbo's decoder (`mozjpeg-sys`, built from C without SIMD; its
//! output equals that of Pillow's SIMD build on every fixture in `tests/parity.rs`), then
//! converted to RGB as Pillow's `convert("RGB")` does:
//!
//! - 1 component: mode `L`, replicated to R, G and B;
//! - 3 components: mode `RGB`, libjpeg's YCbCr (or RGB, per the JFIF/Adobe markers) to RGB;
//! - 4 components: mode `CMYK` read with rawmode `CMYK;I` (Adobe's inverted convention, assumed
//!   for every 4-component file; YCCK is converted to CMYK by libjpeg first), then Pillow's
//!   `cmyk2rgb`.
//!
//! EXIF orientation is not applied (`Image.open` does not transpose). Errors never abort the
//! process: libjpeg's fatal errors unwind out of its error handler to [`decode_rgb`], which
//! returns them as [`Error::Image`]. A file that ends before its last scanline is an error
//! ("image file is truncated", as Pillow says without `LOAD_TRUNCATED_IMAGES`), although
//! libjpeg itself would only warn and pad the rest with gray; its other warnings (e.g. stray
//! bytes before a marker) are ignored, as Pillow ignores them.

use std::any::Any;
use std::os::raw::{c_int, c_ulong};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::path::Path;

use mozjpeg_sys as ffi;

use crate::error::{Error, Result};
use crate::images::limits::check_dimensions;
use crate::images::resize::Rgb8;

// libjpeg's errors reach us by unwinding through its C frames (mozjpeg-sys compiles them with
// -fexceptions); with panic = "abort" a corrupt JPEG would abort the whole process instead.
#[cfg(panic = "abort")]
compile_error!(
    "cliplabel's JPEG decoder reports libjpeg errors by unwinding: build with panic = \"unwind\""
);

/// `jpeg_read_header`'s return value for a header followed by an image.
const JPEG_HEADER_OK: c_int = 1;

/// Whether `bytes` start with a JPEG signature (SOI followed by a marker).
pub fn is_jpeg(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0xFF, 0xD8, 0xFF])
}

/// The payload libjpeg's fatal errors unwind with.
struct LibjpegError(String);

/// Formats libjpeg's current message (the one `msg_code` and `msg_parm` describe).
///
/// # Safety
/// `cinfo.err` must point to the error manager set up by [`Decompressor::new`].
unsafe fn libjpeg_message(cinfo: &mut ffi::jpeg_common_struct) -> String {
    let err = &*cinfo.err;
    match err.format_message {
        Some(format) => {
            // The binding declares the output buffer as `&[u8; 80]`, but libjpeg writes to it.
            let format: unsafe extern "C-unwind" fn(&mut ffi::jpeg_common_struct, *mut u8) =
                std::mem::transmute(format);
            let mut buf = [0u8; 80]; // JMSG_LENGTH_MAX
            format(cinfo, buf.as_mut_ptr());
            let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
            String::from_utf8_lossy(&buf[..end]).into_owned()
        }
        None => format!("libjpeg error code {}", err.msg_code),
    }
}

/// libjpeg's `error_exit`: must not return, so it unwinds to [`decode_rgb`]'s `catch_unwind`
/// (`resume_unwind` does not run the panic hook, so nothing is printed).
unsafe extern "C-unwind" fn error_exit(cinfo: &mut ffi::jpeg_common_struct) {
    let msg = libjpeg_message(cinfo);
    resume_unwind(Box::new(LibjpegError(msg)));
}

/// libjpeg's `emit_message`: trace messages are dropped, warnings counted, and the "premature
/// end of data" warning becomes an error (see the module documentation).
unsafe extern "C-unwind" fn emit_message(cinfo: &mut ffi::jpeg_common_struct, level: c_int) {
    if level >= 0 {
        return;
    }
    let err = &mut *cinfo.err;
    err.num_warnings += 1;
    if err.msg_code == ffi::JWRN_JPEG_EOF {
        resume_unwind(Box::new(LibjpegError(
            "image file is truncated (premature end of JPEG data)".into(),
        )));
    }
}

/// Owns a libjpeg decompressor and destroys it on drop, including while unwinding.
struct Decompressor {
    cinfo: Box<ffi::jpeg_decompress_struct>,
    // Referenced by `cinfo.common.err`; boxed so that it does not move.
    _err: Box<ffi::jpeg_error_mgr>,
}

impl Decompressor {
    /// Creates a decompressor reading from `bytes`, which must outlive it.
    fn new(bytes: &[u8]) -> Self {
        // SAFETY: both structs are plain C data for which all-zero is a valid (empty) value, as
        // libjpeg expects before `jpeg_std_error` / `jpeg_create_decompress`. If creation fails
        // it unwinds with `mem` still null, which `jpeg_destroy_decompress` (in drop) accepts.
        unsafe {
            let mut err: Box<ffi::jpeg_error_mgr> = Box::new(std::mem::zeroed());
            ffi::jpeg_std_error(&mut err);
            err.error_exit = Some(error_exit);
            err.emit_message = Some(emit_message);
            let mut d = Decompressor {
                cinfo: Box::new(std::mem::zeroed()),
                _err: err,
            };
            d.cinfo.common.err = &mut *d._err;
            ffi::jpeg_create_decompress(&mut *d.cinfo);
            ffi::jpeg_mem_src(&mut d.cinfo, bytes.as_ptr(), bytes.len() as c_ulong);
            d
        }
    }
}

impl Drop for Decompressor {
    fn drop(&mut self) {
        // SAFETY: `cinfo` was set up by `new` (or left zeroed, which destroy accepts).
        unsafe { ffi::jpeg_destroy_decompress(&mut self.cinfo) }
    }
}

/// `MULDIV255` from Pillow's `ImagingUtils.h`: `a * b / 255`, rounded.
#[inline]
fn muldiv255(a: i32, b: i32) -> i32 {
    let t = a * b + 128;
    ((t >> 8) + t) >> 8
}

/// One pixel of libjpeg's CMYK output to RGB as Pillow gets it: unpacked with rawmode `CMYK;I`
/// (every value inverted), then `cmyk2rgb`.
#[inline]
fn cmyk_to_rgb(raw: &[u8]) -> [u8; 3] {
    let [c, m, y, k] = [raw[0], raw[1], raw[2], raw[3]].map(|v| 255 - v as i32);
    let nk = 255 - k;
    [c, m, y].map(|v| (nk - muldiv255(v, nk)).clamp(0, 255) as u8)
}

/// Decodes with libjpeg; fatal libjpeg errors unwind out of this function.
fn decode_unwinding(bytes: &[u8], path: &Path, max_pixels: u64) -> Result<Rgb8> {
    let image_err = |message: String| Error::Image {
        path: path.to_path_buf(),
        message,
    };
    let mut d = Decompressor::new(bytes);
    let cinfo = &mut *d.cinfo;
    // SAFETY (all calls below): `cinfo` is a created decompressor whose source is `bytes`;
    // the calls are made in the order libjpeg requires.
    if unsafe { ffi::jpeg_read_header(cinfo, 1) } != JPEG_HEADER_OK {
        return Err(image_err("not a JPEG image (no image in the data)".into()));
    }
    let (w, h) = (cinfo.image_width, cinfo.image_height);
    // The decompression-bomb guard, before any pixel is decoded.
    check_dimensions(path, w, h, max_pixels)?;
    let components = cinfo.num_components;
    // Pillow's mode is chosen by the component count alone (JpegImagePlugin's SOF handler).
    cinfo.out_color_space = match components {
        1 => ffi::J_COLOR_SPACE::JCS_GRAYSCALE,
        3 => ffi::J_COLOR_SPACE::JCS_RGB,
        4 => ffi::J_COLOR_SPACE::JCS_CMYK,
        n => {
            return Err(image_err(format!(
                "cannot handle {n}-component JPEG images"
            )))
        }
    };
    // libjpeg's defaults, which Pillow keeps; set explicitly because parity depends on them.
    cinfo.dct_method = ffi::J_DCT_METHOD::JDCT_ISLOW;
    cinfo.do_fancy_upsampling = 1;
    cinfo.do_block_smoothing = 1;
    cinfo.scale_num = 1;
    cinfo.scale_denom = 1;
    cinfo.buffered_image = 0;
    cinfo.raw_data_out = 0;
    cinfo.quantize_colors = 0;
    if unsafe { ffi::jpeg_start_decompress(cinfo) } == 0 {
        return Err(image_err("JPEG decoder suspended unexpectedly".into()));
    }
    let n = components as usize;
    if (cinfo.output_width, cinfo.output_height) != (w, h) || cinfo.output_components as usize != n
    {
        return Err(image_err(format!(
            "unexpected JPEG output geometry {}x{}x{}",
            cinfo.output_width, cinfo.output_height, cinfo.output_components
        )));
    }
    let (w, h) = (w as usize, h as usize);
    let row_len = w * n;
    let mut raw: Vec<u8> = Vec::new();
    raw.try_reserve_exact(row_len * h)
        .map_err(|_| image_err(format!("out of memory for a {w}x{h} image")))?;
    raw.resize(row_len * h, 0);
    for row in raw.chunks_exact_mut(row_len) {
        let mut row_ptr = row.as_mut_ptr();
        if unsafe { ffi::jpeg_read_scanlines(cinfo, &mut row_ptr, 1) } != 1 {
            return Err(image_err("JPEG decoder returned no scanline".into()));
        }
    }
    // jpeg_finish_decompress is not called: it would only read on to the EOI marker, and Pillow
    // accepts a file whose scanlines are all decoded even if that marker is missing.
    drop(d);

    let data = match n {
        1 => raw.iter().flat_map(|&v| [v, v, v]).collect(),
        3 => raw,
        _ => raw.chunks_exact(4).flat_map(cmyk_to_rgb).collect(),
    };
    Ok(Rgb8 {
        width: w,
        height: h,
        data,
    })
}

/// Decodes a JPEG file's bytes to RGB exactly as Pillow's `Image.open(...).convert("RGB")`
/// does, refusing before decoding any image whose header declares more than `max_pixels`
/// pixels. Corrupt, truncated or unsupported files give [`Error::Image`].
pub fn decode_rgb(bytes: &[u8], path: &Path, max_pixels: u64) -> Result<Rgb8> {
    if bytes.is_empty() {
        return Err(Error::Image {
            path: path.to_path_buf(),
            message: "empty file (0 bytes)".into(),
        });
    }
    match catch_unwind(AssertUnwindSafe(|| {
        decode_unwinding(bytes, path, max_pixels)
    })) {
        Ok(result) => result,
        Err(payload) => Err(Error::Image {
            path: path.to_path_buf(),
            message: format!("cannot decode JPEG: {}", libjpeg_error(payload)),
        }),
    }
}

/// The message of a libjpeg error; any other panic continues unwinding.
fn libjpeg_error(payload: Box<dyn Any + Send>) -> String {
    match payload.downcast::<LibjpegError>() {
        Ok(e) => e.0,
        Err(other) => resume_unwind(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(rel: &str) -> Vec<u8> {
        std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures")
                .join(rel),
        )
        .unwrap()
    }

    fn err(bytes: &[u8], max_pixels: u64) -> String {
        decode_rgb(bytes, Path::new("x.jpg"), max_pixels)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn cmyk_matches_pillow_formula() {
        // Pillow: C, M, Y, K = 255 - raw; nk = 255 - K; out = nk - MULDIV255(C, nk), which
        // equals round((255 - C) * (255 - K) / 255) = round(raw_c * raw_k / 255).
        for rc in (0..=255u8).step_by(5) {
            for rk in (0..=255u8).step_by(3) {
                let got = cmyk_to_rgb(&[rc, rc, rc, rk])[0] as f64;
                let want = (rc as f64 * rk as f64 / 255.0).round();
                assert_eq!(got, want, "raw c {rc}, raw k {rk}");
            }
        }
        assert_eq!(cmyk_to_rgb(&[255, 0, 128, 255]), [255, 0, 128]);
        assert_eq!(cmyk_to_rgb(&[255, 255, 255, 0]), [0, 0, 0]);
    }

    #[test]
    fn decodes_fixtures_with_header_dimensions() {
        for (name, w, h) in [
            ("images/baseline_420.jpg", 400, 300),
            ("images/progressive.jpg", 400, 300),
            ("images/gray.jpg", 320, 240),
            ("images/cmyk.jpg", 320, 240),
            // EXIF orientation 6 is not applied: the stored 240x160, not 160x240.
            ("images/exif_orient6.jpg", 240, 160),
        ] {
            let img = decode_rgb(&fixture(name), Path::new(name), u64::MAX).unwrap();
            assert_eq!((img.width, img.height, img.data.len()), (w, h, w * h * 3));
        }
    }

    #[test]
    fn truncated_empty_and_garbage_jpegs_are_errors() {
        let photo = fixture("images/photo_500x375.jpg");
        assert!(err(b"", u64::MAX).contains("empty"));
        let truncated = fixture("bad/truncated.jpg");
        assert!(
            err(&truncated, u64::MAX).contains("truncated"),
            "{}",
            err(&truncated, u64::MAX)
        );
        // Cut inside the header, inside the scan data, and just before the EOI marker's end.
        for cut in [2, 3, 20, 200, photo.len() / 3, photo.len() - 40] {
            let e = err(&photo[..cut], u64::MAX);
            assert!(e.contains("cannot decode JPEG"), "cut at {cut}: {e}");
        }
        // A progressive file is fully read before the first scanline: cut it too.
        let prog = fixture("images/progressive.jpg");
        assert!(err(&prog[..prog.len() / 2], u64::MAX).contains("truncated"));
        // A JPEG signature followed by garbage, and garbage inside the entropy-coded data.
        let mut garbage = vec![0xFF, 0xD8, 0xFF];
        garbage.extend((0..2000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
        assert!(err(&garbage, u64::MAX).contains("cannot decode JPEG"));
        assert!(err(&[0xFF, 0xD8, 0xFF, 0xD9], u64::MAX).contains("cannot decode JPEG"));
        // Every error leaves the decoder usable (nothing leaked into global state).
        assert!(decode_rgb(&photo, Path::new("ok.jpg"), u64::MAX).is_ok());
    }

    #[test]
    fn missing_eoi_after_complete_data_is_accepted() {
        // Pillow accepts a file whose scanlines all decode even if the EOI marker is missing.
        let photo = fixture("images/photo_500x375.jpg");
        assert_eq!(&photo[photo.len() - 2..], &[0xFF, 0xD9]);
        let full = decode_rgb(&photo, Path::new("a.jpg"), u64::MAX).unwrap();
        let mut padded = photo[..photo.len() - 2].to_vec();
        // libjpeg reads ahead of the last MCU: without the marker it would hit the end of the
        // data, which is the truncation case; a few zero bytes of padding stand in for it.
        padded.extend([0u8; 8]);
        let got = decode_rgb(&padded, Path::new("b.jpg"), u64::MAX).unwrap();
        assert_eq!(got, full);
    }

    #[test]
    fn bomb_guard_refuses_before_decoding() {
        let photo = fixture("images/photo_500x375.jpg");
        let e = err(&photo, 500 * 375 - 1);
        assert!(e.contains("exceeds the limit"), "{e}");
        // Only the header is needed to refuse: the scan data is never read.
        let header_only = &photo[..photo.len() / 10];
        assert!(err(header_only, 100).contains("exceeds the limit"));
        assert!(decode_rgb(&photo, Path::new("x.jpg"), 500 * 375).is_ok());
    }
}
