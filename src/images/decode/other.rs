//! GIF, BMP, WebP and ICO through the `image` crate, under the allocation limit, first frame
//! only (`DynamicImage::from_decoder` reads one frame; animated GIF/WebP are never iterated).
//! The decoded buffer is handed on in the Pillow mode that holds the same values.

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits};

use super::convert::{PilImage, Samples};
use super::limits::DecodeLimits;
use super::{refuse, DecodeError, Format};

pub(super) fn decode(
    bytes: &[u8],
    format: Format,
    limits: &DecodeLimits,
) -> Result<PilImage, DecodeError> {
    let fmt = match format {
        Format::Gif => ImageFormat::Gif,
        Format::Bmp => ImageFormat::Bmp,
        Format::WebP => ImageFormat::WebP,
        Format::Ico => ImageFormat::Ico,
        _ => return Err(refuse("internal: format not handled by the image crate")),
    };
    let mut reader = ImageReader::with_format(Cursor::new(bytes), fmt);
    let mut il = Limits::default();
    il.max_alloc = Some(limits.max_alloc as u64);
    reader.limits(il.clone());
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| refuse(format!("cannot decode header: {e}")))?;
    let (w, h) = decoder.dimensions();
    limits.check_dimensions(w, h)?;
    limits.check_alloc(decoder.total_bytes() as usize)?;
    decoder
        .set_limits(il)
        .map_err(|e| refuse(format!("cannot decode: {e}")))?;
    let img =
        DynamicImage::from_decoder(decoder).map_err(|e| refuse(format!("cannot decode: {e}")))?;
    let (width, height) = (img.width() as usize, img.height() as usize);
    let samples = match img {
        DynamicImage::ImageRgb8(b) => Samples::Rgb(b.into_raw()),
        DynamicImage::ImageRgba8(b) => Samples::Rgba(b.into_raw()),
        DynamicImage::ImageLuma8(b) => Samples::L(b.into_raw()),
        DynamicImage::ImageLumaA8(b) => Samples::La(b.into_raw()),
        other => Samples::Rgba(other.to_rgba8().into_raw()),
    };
    Ok(PilImage {
        width,
        height,
        samples,
        transparency: None,
    })
}
