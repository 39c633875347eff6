//! TIFF through the `tiff` crate (raw, LZW, deflate, PackBits, JPEG, CCITT fax; strips and
//! tiles; contiguous and planar; BigTIFF), first page only, with Pillow's modes
//! (TiffImagePlugin's `OPEN_INFO`): 1-bit grey is `1`, 2/4-bit grey `L` scaled, 16-bit grey
//! `I;16`, 32-bit integer grey `I`, float grey `F`, 16-bit colour keeps the high byte, an
//! associated alpha (ExtraSamples = 1) is `RGBa`, palettes are `P` with the colour map's high
//! bytes. The Orientation tag is returned and applied by the caller, as Pillow 13 applies it
//! to TIFFs when loading.
//!
//! The `tiff` crate does not decode palette images; the Photometric tag of a palette file is
//! therefore read here and rewritten to BlackIsZero in a copy of the header, so the crate
//! returns the indices and the colour map is applied here (a small, checked patch of one tag
//! value rather than a hand-written TIFF decoder).
//!
//! Written here because no crate decodes them (see each function): CCITT Group 3 strips
//! (1-D through the `fax` crate's decoder, 2-D by glue around `fax`'s code tables and Group 4
//! decoder), and the strips/tiles of 12-bit grey and of packed tiled LZW files, which the
//! `tiff` crate refuses (LZW through `weezl`, the codec the `tiff` crate uses itself).

use std::io::Cursor;

use tiff::decoder::{Decoder, DecodingResult, Limits};
use tiff::tags::Tag;

use super::convert::{PilImage, Samples};
use super::limits::DecodeLimits;
use super::{refuse, DecodeError};

fn terr(e: tiff::TiffError) -> DecodeError {
    refuse(format!("cannot decode TIFF: {e}"))
}

/// Finds the byte offset of the Photometric tag's value in the first IFD, if it is stored inline.
fn photometric_value_offset(b: &[u8]) -> Option<(usize, bool)> {
    let le = match b.get(0..2)? {
        b"II" => true,
        b"MM" => false,
        _ => return None,
    };
    let u16_at = |o: usize| -> Option<u16> {
        let s: [u8; 2] = b.get(o..o + 2)?.try_into().ok()?;
        Some(if le {
            u16::from_le_bytes(s)
        } else {
            u16::from_be_bytes(s)
        })
    };
    let u32_at = |o: usize| -> Option<u32> {
        let s: [u8; 4] = b.get(o..o + 4)?.try_into().ok()?;
        Some(if le {
            u32::from_le_bytes(s)
        } else {
            u32::from_be_bytes(s)
        })
    };
    let u64_at = |o: usize| -> Option<u64> {
        let s: [u8; 8] = b.get(o..o + 8)?.try_into().ok()?;
        Some(if le {
            u64::from_le_bytes(s)
        } else {
            u64::from_be_bytes(s)
        })
    };
    let (big, ifd) = match u16_at(2)? {
        42 => (false, u32_at(4)? as u64),
        43 => (true, u64_at(8)?),
        _ => return None,
    };
    let ifd = usize::try_from(ifd).ok()?;
    let (count, first, size) = if big {
        (u64_at(ifd)? as usize, ifd + 8, 20)
    } else {
        (u16_at(ifd)? as usize, ifd + 2, 12)
    };
    for i in 0..count.min(4096) {
        let e = first.checked_add(i.checked_mul(size)?)?;
        if u16_at(e)? == 262 && u16_at(e + 2)? == 3 {
            return Some((e + if big { 12 } else { 8 }, le));
        }
    }
    None
}

/// Decodes the first page; returns it with its Orientation tag (1-8), which Pillow applies
/// when it loads a TIFF (checked against Pillow 13: orientation 3 and 6 files come out rotated).
pub(super) fn decode(bytes: &[u8], limits: &DecodeLimits) -> Result<(PilImage, u16), DecodeError> {
    let tl = {
        let mut l = Limits::default();
        l.decoding_buffer_size = limits.max_alloc;
        l.intermediate_buffer_size = limits.max_alloc.min(128 << 20);
        l.ifd_value_size = 16 << 20;
        l
    };
    let mut dec = Decoder::new(Cursor::new(bytes))
        .map_err(terr)?
        .with_limits(tl.clone());
    let (w, h) = dec.dimensions().map_err(terr)?;
    limits.check_dimensions(w, h)?;
    let photometric: u16 = dec
        .find_tag_unsigned(Tag::PhotometricInterpretation)
        .map_err(terr)?
        .ok_or_else(|| refuse("TIFF without a PhotometricInterpretation tag"))?;
    let extra: Vec<u16> = dec
        .find_tag_unsigned_vec(Tag::ExtraSamples)
        .map_err(terr)?
        .unwrap_or_default();
    let compression: u16 = dec
        .find_tag_unsigned(Tag::Compression)
        .map_err(terr)?
        .unwrap_or(1);
    let fill_order: u16 = dec
        .find_tag_unsigned(Tag::FillOrder)
        .map_err(terr)?
        .unwrap_or(1);
    if fill_order == 2 && (!matches!(photometric, 0..=3) || !extra.is_empty()) {
        // Pillow has FillOrder-2 modes for bilevel, grey, palette and RGB only.
        return Err(refuse(
            "TIFF with FillOrder 2 is supported for bilevel, grey, palette and RGB only (as Pillow)",
        ));
    }
    let mut reversed = Vec::new();
    if fill_order == 2 {
        // The tiff crate ignores FillOrder; like libtiff, reverse the bits of every byte of
        // the strips or tiles (before decompression) in a copy, then decode that.
        let mut copy = bytes.to_vec();
        let (offs, lens) = if dec.find_tag(Tag::TileOffsets).map_err(terr)?.is_some() {
            (Tag::TileOffsets, Tag::TileByteCounts)
        } else {
            (Tag::StripOffsets, Tag::StripByteCounts)
        };
        let offs: Vec<u64> = dec
            .find_tag_unsigned_vec(offs)
            .map_err(terr)?
            .unwrap_or_default();
        let lens: Vec<u64> = dec
            .find_tag_unsigned_vec(lens)
            .map_err(terr)?
            .unwrap_or_default();
        for (&o, &l) in offs.iter().zip(&lens) {
            let start = (o as usize).min(copy.len());
            let end = (o.saturating_add(l) as usize).min(copy.len());
            for b in &mut copy[start..end] {
                *b = b.reverse_bits();
            }
        }
        reversed = copy;
        dec = Decoder::new(Cursor::new(&reversed[..]))
            .map_err(terr)?
            .with_limits(tl.clone());
    }
    let orientation: u16 = dec
        .find_tag_unsigned(Tag::Orientation)
        .map_err(terr)?
        .unwrap_or(1);
    let planar: u16 = dec
        .find_tag_unsigned(Tag::PlanarConfiguration)
        .map_err(terr)?
        .unwrap_or(1);
    if compression == 3 {
        let src: &[u8] = if fill_order == 2 { &reversed } else { bytes };
        let bits = g3_strips(src, &mut dec, w, h, limits)?;
        // Group 3 codes fax white as bit 0; WhiteIsZero (0) shows bit 0 as white.
        let white_is_zero = photometric == 0;
        let px = bits
            .into_iter()
            .map(|black| if black == white_is_zero { 0 } else { 255 })
            .collect();
        return Ok((
            PilImage {
                width: w as usize,
                height: h as usize,
                samples: Samples::Bilevel(px),
                transparency: None,
            },
            orientation,
        ));
    }
    if compression == 7 && planar == 1 && matches!(photometric, 1 | 2 | 6) && fill_order == 1 {
        let rgb = jpeg_chunks(bytes, &mut dec, w, h, limits)?;
        let samples = if photometric == 1 {
            Samples::L(rgb.data.chunks_exact(3).map(|p| p[0]).collect())
        } else {
            Samples::Rgb(rgb.data)
        };
        return Ok((
            PilImage {
                width: w as usize,
                height: h as usize,
                samples,
                transparency: None,
            },
            orientation,
        ));
    }
    let mut colormap: Option<Vec<u16>> = None;
    let patched;
    if photometric == 3 {
        colormap = Some(
            dec.find_tag_unsigned_vec(Tag::ColorMap)
                .map_err(terr)?
                .ok_or_else(|| refuse("TIFF palette image without a ColorMap"))?,
        );
        let (off, le) = photometric_value_offset(bytes)
            .ok_or_else(|| refuse("TIFF palette image: cannot locate its Photometric tag"))?;
        let mut copy = if fill_order == 2 {
            reversed.to_vec()
        } else {
            bytes.to_vec()
        };
        let one: [u8; 2] = if le {
            1u16.to_le_bytes()
        } else {
            1u16.to_be_bytes()
        };
        copy[off..off + 2].copy_from_slice(&one);
        patched = copy;
        dec = Decoder::new(Cursor::new(&patched[..]))
            .map_err(terr)?
            .with_limits(tl);
    }
    let bps: u16 = dec
        .find_tag_unsigned_vec::<u16>(Tag::BitsPerSample)
        .map_err(terr)?
        .and_then(|v| v.first().copied())
        .unwrap_or(1);
    let spp_tag: u16 = dec
        .find_tag_unsigned(Tag::SamplesPerPixel)
        .map_err(terr)?
        .unwrap_or(1);
    let tiled = dec.find_tag(Tag::TileOffsets).map_err(terr)?.is_some();
    if bps == 12 || (compression == 5 && tiled && bps < 8 && spp_tag == 1) {
        return by_hand(
            if fill_order == 2 { &reversed } else { bytes },
            &mut dec,
            (w, h, bps, spp_tag),
            (photometric, compression, fill_order, planar),
            colormap,
            limits,
        )
        .map(|im| (im, orientation));
    }
    let ct = dec.colortype().map_err(terr)?;
    let bits = ct.bit_depth() as usize;
    let mut result = DecodingResult::U8(Vec::new());
    let layout = dec.read_image_to_buffer(&mut result).map_err(terr)?;
    if result.as_buffer(0).as_bytes().len() < layout.complete_len {
        return Err(refuse("TIFF planes do not fit the allocation limit"));
    }
    let (w, h) = (w as usize, h as usize);
    let spp = match ct {
        tiff::ColorType::Gray(_) | tiff::ColorType::Palette(_) => 1,
        tiff::ColorType::GrayA(_) => 2,
        tiff::ColorType::RGB(_) | tiff::ColorType::YCbCr(_) | tiff::ColorType::Lab(_) => 3,
        tiff::ColorType::RGBA(_) | tiff::ColorType::CMYK(_) => 4,
        tiff::ColorType::CMYKA(_) => 5,
        tiff::ColorType::Multiband { num_samples, .. } => num_samples as usize,
        _ => return Err(refuse(format!("unsupported TIFF colour type {ct:?}"))),
    };
    // Samples as f64-free integer/float vectors, interleaved.
    let planes = layout.planes.max(1);
    let interleave = |n: usize| -> Vec<usize> {
        // index map: interleaved position -> source position
        if planes == 1 {
            (0..n).collect()
        } else {
            let plane = n / spp;
            (0..n).map(|i| (i % spp) * plane + i / spp).collect()
        }
    };
    let n = w * h * spp;
    if bits < 8 {
        // Packed, byte-aligned rows of one sample a pixel (grey or palette).
        let DecodingResult::U8(buf) = &result else {
            return Err(refuse("unexpected TIFF sample type"));
        };
        // Pillow reads 1, 2 and 4 bits a sample (modes 1, L, P), one sample a pixel.
        if spp != 1 || !matches!(bits, 1 | 2 | 4) {
            return Err(refuse(format!(
                "TIFF with {spp} samples of {bits} bits is not supported"
            )));
        }
        return Ok((packed_image(buf, w, h, bits, colormap)?, orientation));
    }
    macro_rules! take {
        ($v:expr, $f:expr) => {{
            let v = $v;
            if v.len() < n {
                return Err(refuse("TIFF data shorter than the image"));
            }
            let map = interleave(n);
            map.into_iter().map(|i| $f(v[i])).collect::<Vec<_>>()
        }};
    }
    let to8: Vec<u8> = match &result {
        DecodingResult::U8(v) => take!(v, |x: u8| x),
        DecodingResult::U16(v) => take!(v, |x: u16| (x >> 8) as u8),
        _ => Vec::new(),
    };
    let is_grey = matches!(ct, tiff::ColorType::Gray(_)) && colormap.is_none();
    let samples = match (&result, ct) {
        (DecodingResult::U8(_), _) if colormap.is_some() => {
            Samples::P(to8, palette(colormap.as_ref().unwrap())?)
        }
        (DecodingResult::U8(_), tiff::ColorType::Gray(_)) => Samples::L(to8),
        (DecodingResult::U16(v), tiff::ColorType::Gray(_)) => Samples::I16(take!(v, |x: u16| x)),
        // Pillow reads signed 8-bit grey as `L` with the bytes unchanged (-128 is 128).
        (DecodingResult::I8(v), _) if is_grey => Samples::L(take!(v, |x: i8| x as u8)),
        (DecodingResult::I16(v), _) if is_grey => Samples::I32(take!(v, |x: i16| x as i32)),
        (DecodingResult::I32(v), _) if is_grey => Samples::I32(take!(v, |x: i32| x)),
        (DecodingResult::U32(v), _) if is_grey => {
            Samples::I32(take!(v, |x: u32| x.min(i32::MAX as u32) as i32))
        }
        (DecodingResult::F32(v), _) if is_grey => Samples::F32(take!(v, |x: f32| x)),
        (DecodingResult::F64(v), _) if is_grey => Samples::F32(take!(v, |x: f64| x as f32)),
        (DecodingResult::U8(_) | DecodingResult::U16(_), tiff::ColorType::Multiband { .. })
            if spp == 2 && photometric <= 1 =>
        {
            Samples::La(to8)
        }
        (DecodingResult::U8(_) | DecodingResult::U16(_), tiff::ColorType::RGB(_)) => {
            Samples::Rgb(to8)
        }
        (DecodingResult::U8(_), tiff::ColorType::YCbCr(_)) if compression == 7 => {
            // JPEG-compressed YCbCr: the tiff crate returns the JPEG's (upsampled) YCbCr; Pillow
            // has libjpeg convert it to RGB (JPEGCOLORMODE_RGB), so apply libjpeg's formula.
            Samples::Rgb(ycc_to_rgb(&to8))
        }
        (DecodingResult::U8(_) | DecodingResult::U16(_), tiff::ColorType::RGBA(_)) => {
            let alpha = extra.first().copied().unwrap_or(0);
            let d: Vec<u8> = to8
                .chunks_exact(spp)
                .flat_map(|p| [p[0], p[1], p[2], p[3]])
                .collect();
            match alpha {
                1 => Samples::RgbaPremultiplied(d),
                2 => Samples::Rgba(d),
                // Unspecified extra sample: Pillow reads RGBX, i.e. RGB.
                _ => Samples::Rgb(d.chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect()),
            }
        }
        (DecodingResult::U8(_), tiff::ColorType::CMYK(_)) => Samples::Cmyk(to8),
        _ => {
            return Err(refuse(format!(
                "unsupported TIFF layout: photometric {photometric}, {ct:?}"
            )))
        }
    };
    Ok((
        PilImage {
            width: w,
            height: h,
            samples,
            transparency: None,
        },
        orientation,
    ))
}

/// A TIFF colour map (all reds, then greens, then blues, 16 bits each) as Pillow's palette:
/// the high byte of each value (`b // 256`).
fn palette(map: &[u16]) -> Result<Vec<[u8; 4]>, DecodeError> {
    let n = map.len() / 3;
    if n == 0 {
        return Err(refuse("TIFF colour map is empty"));
    }
    let mut pal: Vec<[u8; 4]> = (0..n.min(256))
        .map(|i| {
            [
                (map[i] >> 8) as u8,
                (map[n + i] >> 8) as u8,
                (map[2 * n + i] >> 8) as u8,
                255,
            ]
        })
        .collect();
    pal.resize(256, [0, 0, 0, 255]);
    Ok(pal)
}

/// libjpeg's `ycc_rgb_convert`: JFIF YCbCr to RGB in 16-bit fixed point, rounded as its tables.
fn ycc_to_rgb(ycc: &[u8]) -> Vec<u8> {
    const SCALEBITS: i32 = 16;
    const ONE_HALF: i64 = 1 << (SCALEBITS - 1);
    let fix = |x: f64| -> i64 { (x * (1i64 << SCALEBITS) as f64 + 0.5) as i64 };
    let clamp = |v: i64| v.clamp(0, 255) as u8;
    ycc.chunks_exact(3)
        .flat_map(|p| {
            let (y, cb, cr) = (p[0] as i64, p[1] as i64 - 128, p[2] as i64 - 128);
            let r = y + ((fix(1.40200) * cr + ONE_HALF) >> SCALEBITS);
            let g = y + ((-fix(0.34414) * cb + ONE_HALF - fix(0.71414) * cr) >> SCALEBITS);
            let b = y + ((fix(1.77200) * cb + ONE_HALF) >> SCALEBITS);
            [clamp(r), clamp(g), clamp(b)]
        })
        .collect()
}

/// Where an image's chunks are and how large each is: `(tiled, offsets tag, byte counts tag,
/// chunk width, chunk height)` for tiles, or for strips (the image's width, RowsPerStrip rows).
fn chunk_layout(
    dec: &mut Decoder<Cursor<&[u8]>>,
    w: u32,
    h: u32,
) -> Result<(bool, Tag, Tag, u32, u32), DecodeError> {
    let tiled = dec.find_tag(Tag::TileOffsets).map_err(terr)?.is_some();
    Ok(if tiled {
        (
            true,
            Tag::TileOffsets,
            Tag::TileByteCounts,
            dec.get_tag_u32(Tag::TileWidth).map_err(terr)?,
            dec.get_tag_u32(Tag::TileLength).map_err(terr)?,
        )
    } else {
        let rps = dec
            .find_tag_unsigned::<u32>(Tag::RowsPerStrip)
            .map_err(terr)?
            .unwrap_or(h)
            .min(h);
        (false, Tag::StripOffsets, Tag::StripByteCounts, w, rps)
    })
}

/// JPEG-compressed strips or tiles (grey, RGB or YCbCr): each chunk, with the JPEGTables
/// prepended, is decoded by [`crate::images::jpeg`] (libjpeg-turbo, colour conversion and
/// upsampling as libtiff's JPEGCOLORMODE_RGB asks of libjpeg for Pillow), then placed in the
/// image.
fn jpeg_chunks(
    bytes: &[u8],
    dec: &mut Decoder<Cursor<&[u8]>>,
    w: u32,
    h: u32,
    limits: &DecodeLimits,
) -> Result<crate::images::resize::Rgb8, DecodeError> {
    let tables = match dec.find_tag(Tag::JPEGTables).map_err(terr)? {
        Some(v) => v.into_u8_vec().map_err(terr)?,
        None => Vec::new(),
    };
    let (_, offs, lens, cw, ch) = chunk_layout(dec, w, h)?;
    if cw == 0 || ch == 0 {
        return Err(refuse("TIFF chunk of zero size"));
    }
    let offs: Vec<u64> = dec
        .find_tag_unsigned_vec(offs)
        .map_err(terr)?
        .unwrap_or_default();
    let lens: Vec<u64> = dec
        .find_tag_unsigned_vec(lens)
        .map_err(terr)?
        .unwrap_or_default();
    let across = w.div_ceil(cw) as usize;
    let down = h.div_ceil(ch) as usize;
    if offs.len() < across * down || lens.len() < across * down {
        return Err(refuse("TIFF has fewer chunks than its size needs"));
    }
    let (w, h) = (w as usize, h as usize);
    limits.check_alloc(w * h * 3)?;
    let mut out = vec![0u8; w * h * 3];
    for i in 0..across * down {
        let (o, l) = (offs[i] as usize, lens[i] as usize);
        let data = bytes
            .get(o..o.saturating_add(l))
            .ok_or_else(|| refuse("TIFF chunk lies outside the file"))?;
        let mut stream = Vec::with_capacity(tables.len() + data.len());
        if tables.len() >= 4 && data.len() >= 2 {
            stream.extend_from_slice(&tables[..tables.len() - 2]);
            stream.extend_from_slice(&data[2..]);
        } else {
            stream.extend_from_slice(data);
        }
        let tile =
            crate::images::jpeg::decode_rgb(&stream, std::path::Path::new(""), limits.max_pixels)
                .map_err(|e| match e {
                crate::error::Error::Image { message, .. } => {
                    refuse(format!("cannot decode TIFF JPEG chunk {i}: {message}"))
                }
                other => refuse(format!("cannot decode TIFF JPEG chunk {i}: {other}")),
            })?;
        let (x0, y0) = ((i % across) * cw as usize, (i / across) * ch as usize);
        for ty in 0..tile.height.min(h.saturating_sub(y0)) {
            let n = tile.width.min(w - x0);
            let src = &tile.data[ty * tile.width * 3..(ty * tile.width + n) * 3];
            let d = ((y0 + ty) * w + x0) * 3;
            out[d..d + n * 3].copy_from_slice(src);
        }
    }
    Ok(crate::images::resize::Rgb8 {
        width: w,
        height: h,
        data: out,
    })
}

/// CCITT Group 3 1-D strips (the `tiff` crate decodes only Group 4) through the `fax` crate's
/// Group 3 decoder, which the `tiff` crate already depends on. Returns one bool a pixel, true
/// for a fax-black run. 2-D coding (T4Options bit 0) goes to [`g3_2d_strip`].
fn g3_strips(
    bytes: &[u8],
    dec: &mut Decoder<Cursor<&[u8]>>,
    w: u32,
    h: u32,
    limits: &DecodeLimits,
) -> Result<Vec<bool>, DecodeError> {
    let t4: u32 = dec
        .find_tag_unsigned(Tag::Unknown(292))
        .map_err(terr)?
        .unwrap_or(0);
    let two_d = t4 & 1 != 0;
    let width = u16::try_from(w).map_err(|_| refuse("fax image wider than 65535 pixels"))?;
    let rps = dec
        .find_tag_unsigned::<u32>(Tag::RowsPerStrip)
        .map_err(terr)?
        .unwrap_or(h)
        .clamp(1, h);
    let offs: Vec<u64> = dec
        .find_tag_unsigned_vec(Tag::StripOffsets)
        .map_err(terr)?
        .unwrap_or_default();
    let lens: Vec<u64> = dec
        .find_tag_unsigned_vec(Tag::StripByteCounts)
        .map_err(terr)?
        .unwrap_or_default();
    let strips = h.div_ceil(rps) as usize;
    if offs.len() < strips || lens.len() < strips {
        return Err(refuse("TIFF has fewer strips than its size needs"));
    }
    let (w, h) = (w as usize, h as usize);
    limits.check_alloc(w * h)?;
    let mut out = Vec::with_capacity(w * h);
    for i in 0..strips {
        let (o, l) = (offs[i] as usize, lens[i] as usize);
        let data = bytes
            .get(o..o.saturating_add(l))
            .ok_or_else(|| refuse("TIFF strip lies outside the file"))?;
        let rows = (rps as usize).min(h - out.len() / w);
        if two_d {
            out.extend(
                g3_2d_strip(data, width, rows)
                    .map_err(|e| refuse(format!("TIFF Group 3 2-D strip {i}: {e}")))?,
            );
            continue;
        }
        let mut got = 0usize;
        fax::decoder::decode_g3(data.iter().copied(), |line| {
            if got < rows {
                out.extend(fax::decoder::pels(line, width).map(|c| c == fax::Color::Black));
                got += 1;
            }
        });
        if got < rows {
            return Err(refuse(format!(
                "TIFF Group 3 strip {i} has {got} of {rows} rows"
            )));
        }
    }
    Ok(out)
}

/// Packed rows (1, 2 or 4 bits, one sample a pixel, rows padded to a byte) as Pillow's `1`,
/// `L` (scaled) or `P` image.
fn packed_image(
    buf: &[u8],
    w: usize,
    h: usize,
    bits: usize,
    colormap: Option<Vec<u16>>,
) -> Result<PilImage, DecodeError> {
    let stride = (w * bits).div_ceil(8);
    let mut vals = Vec::with_capacity(w * h);
    for y in 0..h {
        let row = buf
            .get(y * stride..(y + 1) * stride)
            .ok_or_else(|| refuse("TIFF data shorter than the image"))?;
        for x in 0..w {
            let per = 8 / bits;
            let shift = 8 - bits * (x % per + 1);
            vals.push((row[x / per] >> shift) & ((1u8 << bits) - 1));
        }
    }
    let samples = if let Some(map) = colormap {
        Samples::P(vals, palette(&map)?)
    } else if bits == 1 {
        Samples::Bilevel(vals.into_iter().map(|v| v * 255).collect())
    } else {
        let scale = 255 / ((1u8 << bits) - 1);
        Samples::L(vals.into_iter().map(|v| v * scale).collect())
    };
    Ok(PilImage {
        width: w,
        height: h,
        samples,
        transparency: None,
    })
}

/// The two layouts the `tiff` crate does not read, decoded here from the strip or tile bytes:
/// 12-bit grey (the crate refuses the depth; Pillow 13 reads only BlackIsZero, unsigned, one
/// sample, FillOrder 1 as `I;16` holding the 12-bit values unscaled, its `I;12` unpacker) and
/// packed (< 8-bit) tiles with LZW (tiff 0.11.3 sizes the LZW output of such tiles wrongly
/// and fails with "no lzw end code" on files libtiff reads). Chunks are uncompressed or LZW
/// (through `weezl`, the LZW codec the `tiff` crate itself uses, in TIFF's MSB mode); the
/// output of each chunk is capped at the size the chunk must have, so a crafted stream
/// cannot expand further.
fn by_hand(
    bytes: &[u8],
    dec: &mut Decoder<Cursor<&[u8]>>,
    (w, h, bps, spp): (u32, u32, u16, u16),
    (photometric, compression, fill_order, planar): (u16, u16, u16, u16),
    colormap: Option<Vec<u16>>,
    limits: &DecodeLimits,
) -> Result<PilImage, DecodeError> {
    let sample_format: u16 = dec
        .find_tag_unsigned(Tag::SampleFormat)
        .map_err(terr)?
        .unwrap_or(1);
    let predictor: u16 = dec
        .find_tag_unsigned(Tag::Predictor)
        .map_err(terr)?
        .unwrap_or(1);
    if bps == 12 && (photometric != 1 || spp != 1 || sample_format != 1 || fill_order != 1) {
        return Err(refuse(format!(
            "12-bit TIFF with photometric {photometric}, {spp} samples, sample format \
             {sample_format}, fill order {fill_order}: Pillow reads only 12-bit BlackIsZero grey"
        )));
    }
    if spp != 1 || planar != 1 || predictor != 1 || !matches!(bps, 1 | 2 | 4 | 12) {
        return Err(refuse(format!(
            "TIFF with {spp} samples of {bps} bits, planar {planar}, predictor {predictor} \
             is not supported"
        )));
    }
    if !matches!(compression, 1 | 5) {
        return Err(refuse(format!(
            "{bps}-bit TIFF with compression {compression} is not supported (raw and LZW are)"
        )));
    }
    let bpp = bps as usize;
    let (tiled, offs, lens, cw, ch) = chunk_layout(dec, w, h)?;
    if cw == 0 || ch == 0 || (tiled && !(cw as usize * bpp).is_multiple_of(8)) {
        return Err(refuse("TIFF chunk size is zero or not byte-aligned"));
    }
    let offs: Vec<u64> = dec
        .find_tag_unsigned_vec(offs)
        .map_err(terr)?
        .unwrap_or_default();
    let lens: Vec<u64> = dec
        .find_tag_unsigned_vec(lens)
        .map_err(terr)?
        .unwrap_or_default();
    let across = w.div_ceil(cw) as usize;
    let down = h.div_ceil(ch) as usize;
    if offs.len() < across * down || lens.len() < across * down {
        return Err(refuse("TIFF has fewer chunks than its size needs"));
    }
    let (w, h, cw, ch) = (w as usize, h as usize, cw as usize, ch as usize);
    let stride = (w * bpp).div_ceil(8);
    let cstride = (cw * bpp).div_ceil(8);
    let need = cstride
        .checked_mul(ch)
        .ok_or_else(|| refuse("TIFF chunk too large"))?;
    limits.check_alloc(stride.saturating_mul(h).saturating_add(need))?;
    let mut out = vec![0u8; stride * h];
    let mut chunk = vec![0u8; need];
    for i in 0..across * down {
        let (o, l) = (offs[i] as usize, lens[i] as usize);
        let data = bytes
            .get(o..o.saturating_add(l))
            .ok_or_else(|| refuse("TIFF chunk lies outside the file"))?;
        let (x0, y0) = ((i % across) * cw, (i / across) * ch);
        let rows = ch.min(h - y0);
        // A strip holds only the rows the image has left; a tile is always whole.
        let want = if tiled { need } else { cstride * rows };
        let got = if compression == 1 {
            let n = data.len().min(want);
            chunk[..n].copy_from_slice(&data[..n]);
            n
        } else {
            lzw(data, &mut chunk[..want])
                .map_err(|e| refuse(format!("cannot decode TIFF LZW chunk {i}: {e}")))?
        };
        if got < want {
            return Err(refuse(format!(
                "TIFF chunk {i} holds {got} of its {want} bytes"
            )));
        }
        let xb = x0 * bpp / 8;
        let n = cstride.min(stride - xb);
        for r in 0..rows {
            let d = (y0 + r) * stride + xb;
            out[d..d + n].copy_from_slice(&chunk[r * cstride..r * cstride + n]);
        }
    }
    if bps < 8 {
        return packed_image(&out, w, h, bpp, colormap);
    }
    // Pillow's `I;12` unpacker: two samples in three bytes, most significant bits first.
    let mut vals = Vec::with_capacity(w * h);
    for y in 0..h {
        let row = &out[y * stride..(y + 1) * stride];
        for x in 0..w {
            let b = x * 3 / 2;
            vals.push(if x % 2 == 0 {
                (row[b] as u16) << 4 | (row[b + 1] as u16) >> 4
            } else {
                ((row[b] & 0x0F) as u16) << 8 | row[b + 1] as u16
            });
        }
    }
    Ok(PilImage {
        width: w,
        height: h,
        samples: Samples::I16(vals),
        transparency: None,
    })
}

/// TIFF LZW (MSB first, early code-size switch) into `out`, stopping when `out` is full or the
/// stream ends; returns the bytes written.
fn lzw(data: &[u8], out: &mut [u8]) -> Result<usize, weezl::LzwError> {
    let mut d = weezl::decode::Decoder::with_tiff_size_switch(weezl::BitOrder::Msb, 8);
    let (mut i, mut o) = (0, 0);
    while o < out.len() {
        let r = d.decode_bytes(&data[i..], &mut out[o..]);
        i += r.consumed_in;
        o += r.consumed_out;
        let status = r.status?;
        if matches!(status, weezl::LzwStatus::Done) || (r.consumed_in == 0 && r.consumed_out == 0) {
            break;
        }
    }
    Ok(o)
}

/// A bit string (MSB first) read through the `fax` crate's code tables.
struct BitCursor<'a> {
    bits: &'a [bool],
    pos: usize,
}

impl fax::BitReader for BitCursor<'_> {
    type Error = ();
    fn peek(&self, n: u8) -> Option<u16> {
        let n = n as usize;
        let s = self.bits.get(self.pos..self.pos + n)?;
        Some(s.iter().fold(0u16, |a, &b| a << 1 | b as u16))
    }
    fn consume(&mut self, n: u8) -> Result<(), ()> {
        self.pos += n as usize;
        if self.pos > self.bits.len() {
            return Err(());
        }
        Ok(())
    }
    fn bits_to_byte_boundary(&self) -> u8 {
        ((8 - self.pos % 8) % 8) as u8
    }
}

/// Collects the `fax` encoder's output as bits.
struct BitSink(Vec<bool>);

impl fax::BitWriter for BitSink {
    type Error = std::convert::Infallible;
    fn write(&mut self, bits: fax::Bits) -> Result<(), Self::Error> {
        self.0
            .extend((0..bits.len).rev().map(|i| (bits.data >> i) & 1 == 1));
        Ok(())
    }
}

/// One CCITT Group 3 2-D (T.4 MR) strip: `rows` lines, one bool a pixel (true = fax black).
///
/// Neither the `tiff` nor the `fax` crate decodes MR, but it is built from parts `fax` has:
/// every line follows an EOL (eleven or more 0 bits, then 1) and a tag bit; a tag of 1 means a
/// 1-D (MH) line, decoded here with `fax`'s white/black run tables; a tag of 0 means a 2-D
/// line coded exactly as a Group 4 line against the line above. For such a line the line
/// above is re-encoded with `fax`'s Group 4 encoder, the MR line's bits appended, and `fax`'s
/// Group 4 decoder reads the two lines back (hand-written glue rather than a second fax codec).
/// Zero bits after a line's last code cannot be told apart from EOL fill, so each line's bits
/// are padded with zeros; a line ends at the image width, so the padding is never read as data.
fn g3_2d_strip(data: &[u8], width: u16, rows: usize) -> Result<Vec<bool>, String> {
    use fax::Color;
    let w = width as usize;
    let bits: Vec<bool> = data
        .iter()
        .flat_map(|&b| (0..8).rev().map(move |i| (b >> i) & 1 == 1))
        .collect();
    // Lines: the bits between EOLs (without the zeros before each EOL).
    let mut segments = Vec::new();
    let (mut start, mut zeros) = (0usize, 0usize);
    for (i, &b) in bits.iter().enumerate() {
        if !b {
            zeros += 1;
            continue;
        }
        if zeros >= 11 {
            segments.push(&bits[start..i - zeros]);
            start = i + 1;
        }
        zeros = 0;
    }
    segments.push(&bits[start..bits.len() - zeros]);
    let mut out = Vec::with_capacity(w * rows);
    let mut above = vec![false; w];
    for seg in segments.into_iter().filter(|s| s.len() > 1) {
        if out.len() == w * rows {
            break;
        }
        let mut padded = seg[1..].to_vec();
        padded.extend([false; 32]);
        let line: Vec<bool> = if seg[0] {
            let mut r = BitCursor {
                bits: &padded,
                pos: 0,
            };
            let mut line = vec![false; w];
            let (mut x, mut black) = (0usize, false);
            while x < w {
                let mut run = 0usize;
                loop {
                    let n = if black {
                        fax::maps::black::decode(&mut r)
                    } else {
                        fax::maps::white::decode(&mut r)
                    }
                    .ok_or("invalid 1-D code")?;
                    run += n as usize;
                    if n < 64 {
                        break;
                    }
                }
                if black {
                    line[x..(x + run).min(w)].fill(true);
                }
                x += run;
                black = !black;
            }
            line
        } else {
            let mut enc = fax::encoder::Encoder::new(BitSink(Vec::new()));
            let pels = above
                .iter()
                .map(|&b| if b { Color::Black } else { Color::White });
            enc.encode_line(pels, width).unwrap_or_else(|e| match e {});
            let mut sink = enc.finish().unwrap_or_else(|e| match e {});
            // Drop the end-of-block code the encoder closes with (two 12-bit EOLs).
            sink.0.truncate(sink.0.len().saturating_sub(24));
            sink.0.extend_from_slice(&padded);
            let mut bytes = Vec::with_capacity(sink.0.len() / 8 + 1);
            for c in sink.0.chunks(8) {
                bytes.push(
                    c.iter()
                        .enumerate()
                        .fold(0u8, |a, (i, &b)| a | (b as u8) << (7 - i)),
                );
            }
            let mut g4 = fax::decoder::Group4Decoder::new(
                bytes.into_iter().map(Ok::<u8, std::convert::Infallible>),
                width,
            )
            .unwrap_or_else(|e| match e {});
            for _ in 0..2 {
                match g4.advance() {
                    Ok(fax::decoder::DecodeStatus::Incomplete) => {}
                    _ => return Err("invalid 2-D line".into()),
                }
            }
            g4.line().pels().map(|c| c == Color::Black).collect()
        };
        if line.len() != w {
            return Err("line of the wrong width".into());
        }
        above.clone_from(&line);
        out.extend(line);
    }
    if out.len() < w * rows {
        return Err(format!("{} of {rows} rows", out.len() / w));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus(name: &str) -> Vec<u8> {
        std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/corpus")
                .join(name),
        )
        .unwrap()
    }

    #[test]
    fn tiled_lzw_tile_is_a_complete_stream() {
        // tiffcp_1_tiled_lzw.tif, tile 0 (tiffinfo: offset 8, 18 bytes; 16x16 1-bit = 32 bytes).
        // The stream ends with its end code after exactly 32 bytes: the file is sound, and the
        // "no lzw end code" of tiff 0.11.3 is the crate's.
        let b = corpus("tiffcp_1_tiled_lzw.tif");
        let tile = &b[8..8 + 18];
        let full = weezl::decode::Decoder::with_tiff_size_switch(weezl::BitOrder::Msb, 8)
            .decode(tile)
            .unwrap();
        assert_eq!(full.len(), 32);
        let mut out = [0u8; 32];
        assert_eq!(lzw(tile, &mut out).unwrap(), 32);
        assert_eq!(&out[..], &full[..]);
        // Capped: a stream cannot write past the size its chunk must have.
        let mut small = [0u8; 5];
        assert_eq!(lzw(tile, &mut small).unwrap(), 5);
        assert_eq!(&small[..], &full[..5]);
    }

    #[test]
    fn g3_2d_lines_are_counted_and_garbage_is_refused() {
        // An all-white 1-D line of width 8 is EOL, tag 1, white run 8 (10011), black run 0
        // (0000110111); a 2-D line copying it is EOL, tag 0, V0 (1).
        let mut bits = String::new();
        bits += "000000000001";
        bits += "1";
        bits += "10011";
        bits += "0000110111";
        bits += "000000000001";
        bits += "0";
        bits += "1";
        bits += "000000000001";
        while !bits.len().is_multiple_of(8) {
            bits.push('0');
        }
        let bytes: Vec<u8> = bits
            .as_bytes()
            .chunks(8)
            .map(|c| c.iter().fold(0u8, |a, &b| a << 1 | (b == b'1') as u8))
            .collect();
        assert_eq!(g3_2d_strip(&bytes, 8, 2).unwrap(), vec![false; 16]);
        assert!(g3_2d_strip(&bytes, 8, 3)
            .unwrap_err()
            .contains("2 of 3 rows"));
        assert!(g3_2d_strip(&[0xFF; 40], 8, 2).is_err());
        assert!(g3_2d_strip(&[], 8, 1).is_err());
    }
}
