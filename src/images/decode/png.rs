//! PNG through the `png` crate without its transformations, so that the raw samples, palette
//! and tRNS chunk can be given Pillow's modes (PngImagePlugin's table): 1-bit grey is `1`,
//! 2/4-bit grey `L` (scaled by 85/17), 16-bit grey `I;16`, 16-bit colour keeps the high byte,
//! a tRNS grey level or RGB colour becomes `transparency`, palette tRNS becomes palette alpha.
//! Only the default image (frame 0 of an APNG) is decoded, as Pillow's `open()` shows.

use std::io::Cursor;

use png::{BitDepth, ColorType, Transformations};

use super::convert::{PilImage, Samples, Transparency};
use super::limits::DecodeLimits;
use super::{refuse, DecodeError};

pub(super) fn decode(bytes: &[u8], limits: &DecodeLimits) -> Result<PilImage, DecodeError> {
    let mut decoder = png::Decoder::new_with_limits(
        Cursor::new(bytes),
        png::Limits {
            bytes: limits.max_alloc,
        },
    );
    decoder.set_transformations(Transformations::IDENTITY);
    decoder.set_ignore_text_chunk(true);
    decoder.set_ignore_iccp_chunk(true);
    let mut reader = decoder
        .read_info()
        .map_err(|e| refuse(format!("cannot decode PNG header: {e}")))?;
    let info = reader.info();
    let (w, h) = (info.width, info.height);
    limits.check_dimensions(w, h)?;
    let (ct, bd) = (info.color_type, info.bit_depth);
    let palette = info.palette.as_ref().map(|p| p.to_vec());
    let trns = info.trns.as_ref().map(|t| t.to_vec());
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| refuse("PNG frame size overflows"))?;
    limits.check_alloc(size)?;
    let mut buf = vec![0u8; size];
    let out = reader
        .next_frame(&mut buf)
        .map_err(|e| refuse(format!("cannot decode PNG: {e}")))?;
    let (w, h) = (out.width as usize, out.height as usize);
    let stride = out.line_size;
    let bits = bd as u8 as usize;
    // Unpacked samples (one u16 per sample) of each row, big-endian for 16-bit.
    let channels = ct.samples();
    let sample = |row: &[u8], i: usize| -> u16 {
        match bits {
            16 => u16::from_be_bytes([row[2 * i], row[2 * i + 1]]),
            8 => row[i] as u16,
            b => {
                let per = 8 / b;
                let byte = row[i / per];
                let shift = 8 - b * (i % per + 1);
                ((byte >> shift) & ((1u8 << b) - 1)) as u16
            }
        }
    };
    let mut vals: Vec<u16> = Vec::with_capacity(w * h * channels);
    for y in 0..h {
        let row = &buf[y * stride..(y + 1) * stride];
        for i in 0..w * channels {
            vals.push(sample(row, i));
        }
    }
    let hi = |v: u16| -> u8 {
        if bits == 16 {
            (v >> 8) as u8
        } else {
            v as u8
        }
    };
    // The png crate keeps a grey tRNS level as 2 bytes at 16 bits, else as its low byte.
    let grey_trns = match trns.as_deref() {
        Some([hi, lo]) => Some(Transparency::Grey(u16::from_be_bytes([*hi, *lo]) as u32)),
        Some([v]) => Some(Transparency::Grey(*v as u32)),
        _ => None,
    };
    let (samples, transparency) = match (ct, bd) {
        // Pillow stores a 1-bit tRNS level as 255 if non-zero.
        (ColorType::Grayscale, BitDepth::One) => (
            Samples::Bilevel(vals.iter().map(|&v| if v != 0 { 255 } else { 0 }).collect()),
            grey_trns.map(|t| match t {
                Transparency::Grey(0) => Transparency::Grey(0),
                _ => Transparency::Grey(255),
            }),
        ),
        (ColorType::Grayscale, BitDepth::Sixteen) => (Samples::I16(vals), grey_trns),
        (ColorType::Grayscale, _) => {
            let scale = match bits {
                2 => 85,
                4 => 17,
                _ => 1,
            };
            (
                Samples::L(vals.iter().map(|&v| (v * scale) as u8).collect()),
                grey_trns,
            )
        }
        // A tRNS colour: Pillow keeps the 16-bit values; only their low bytes are compared.
        (ColorType::Rgb, _) => {
            let t = match trns.as_deref() {
                Some([r0, r1, g0, g1, b0, b1]) => Some(Transparency::Rgb(
                    [[*r0, *r1], [*g0, *g1], [*b0, *b1]].map(|v| u16::from_be_bytes(v) as u32),
                )),
                Some([r, g, b]) => Some(Transparency::Rgb([*r as u32, *g as u32, *b as u32])),
                _ => None,
            };
            (Samples::Rgb(vals.iter().map(|&v| hi(v)).collect()), t)
        }
        (ColorType::Indexed, _) => {
            let pal = palette.ok_or_else(|| refuse("PNG palette image without a PLTE chunk"))?;
            let alphas = trns.unwrap_or_default();
            let mut entries: Vec<[u8; 4]> = pal
                .chunks_exact(3)
                .enumerate()
                .map(|(i, c)| [c[0], c[1], c[2], alphas.get(i).copied().unwrap_or(255)])
                .collect();
            entries.resize(256, [0, 0, 0, 255]);
            (
                Samples::P(vals.iter().map(|&v| v as u8).collect(), entries),
                None,
            )
        }
        (ColorType::GrayscaleAlpha, BitDepth::Sixteen) => {
            // Pillow opens it as RGBA (rawmode LA;16B, high bytes).
            let mut d = Vec::with_capacity(w * h * 4);
            for p in vals.chunks_exact(2) {
                let (l, a) = (hi(p[0]), hi(p[1]));
                d.extend([l, l, l, a]);
            }
            (Samples::Rgba(d), None)
        }
        (ColorType::GrayscaleAlpha, _) => {
            (Samples::La(vals.iter().map(|&v| hi(v)).collect()), None)
        }
        (ColorType::Rgba, _) => (Samples::Rgba(vals.iter().map(|&v| hi(v)).collect()), None),
    };
    Ok(PilImage {
        width: w,
        height: h,
        samples,
        transparency,
    })
}
