//! Run-length-encoded BMP (BI_RLE8, BI_RLE4), decoded by hand as Pillow's `BmpRleDecoder`
//! does: the `image` crate refuses top-down RLE files and leaves pixels skipped by delta or
//! end-of-line codes black, where Pillow gives them palette index 0. The format is a few
//! dozen lines; Pillow's rules (pixels past the row end dropped, absolute runs word-aligned
//! by file offset, too little data refused) are followed to the letter. Other BMPs go to the
//! `image` crate; an OS/2 2.x file (64-byte info header, which the `image` crate refuses and
//! Pillow reads with the Windows fields, ignoring the 24 OS/2 ones) is first rewritten into a
//! copy with the equivalent 40-byte Windows header.

use super::convert::{PilImage, Samples};
use super::limits::DecodeLimits;
use super::{refuse, DecodeError};

fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
}

/// Whether the file is an RLE BMP this module decodes (a Windows header, RLE8 or RLE4).
pub(super) fn is_rle(b: &[u8]) -> bool {
    let header = u32_at(b, 14).unwrap_or(0);
    header >= 40
        && matches!(
            (u32_at(b, 30), u16_at(b, 28)),
            (Some(1), Some(8)) | (Some(2), Some(4))
        )
}

/// Whether the file has an OS/2 2.x info header (64 bytes).
pub(super) fn is_os2v2(b: &[u8]) -> bool {
    u32_at(b, 14) == Some(64)
}

/// An OS/2 2.x BMP as the same file with a 40-byte Windows info header: the first 40 bytes of
/// the header are the Windows fields; the 24 OS/2 fields after them (units, halftoning,
/// colour encoding) are dropped, and the pixel-data offset moves back by 24. Compressions
/// other than none, RLE8 and RLE4 mean OS/2 Huffman or RLE24 there, which are refused.
pub(super) fn os2v2_to_windows(b: &[u8]) -> Result<Vec<u8>, DecodeError> {
    let short = || refuse("BMP header is truncated");
    let compression = u32_at(b, 30).ok_or_else(short)?;
    if compression > 2 {
        return Err(refuse(format!(
            "OS/2 2.x BMP with compression {compression} (Huffman 1-D or RLE24) is not supported"
        )));
    }
    let offset = u32_at(b, 10).ok_or_else(short)?;
    if (offset as usize) < 14 + 64 || b.len() < 14 + 64 {
        return Err(short());
    }
    let mut out = Vec::with_capacity(b.len() - 24);
    out.extend_from_slice(&b[..14 + 40]);
    out.extend_from_slice(&b[14 + 64..]);
    out[10..14].copy_from_slice(&(offset - 24).to_le_bytes());
    out[14..18].copy_from_slice(&40u32.to_le_bytes());
    let size = u32_at(b, 2).ok_or_else(short)?.saturating_sub(24);
    out[2..6].copy_from_slice(&size.to_le_bytes());
    Ok(out)
}

pub(super) fn decode(b: &[u8], limits: &DecodeLimits) -> Result<PilImage, DecodeError> {
    let short = || refuse("BMP header is truncated");
    let header = u32_at(b, 14).ok_or_else(short)? as usize;
    let width = u32_at(b, 18).ok_or_else(short)? as i32;
    let height = u32_at(b, 22).ok_or_else(short)? as i32;
    let bits = u16_at(b, 28).ok_or_else(short)?;
    let rle4 = bits == 4;
    let colors_used = u32_at(b, 46).ok_or_else(short)? as usize;
    let data_offset = u32_at(b, 10).ok_or_else(short)? as usize;
    if width <= 0 || height == 0 || height == i32::MIN {
        return Err(refuse(format!("BMP has no pixels ({width}x{height})")));
    }
    let (w, h) = (width as u32, height.unsigned_abs());
    limits.check_dimensions(w, h)?;
    let (w, h) = (w as usize, h as usize);
    let colors = if colors_used == 0 || colors_used > 256 {
        1usize << bits
    } else {
        colors_used
    };
    let pal_start = 14usize.checked_add(header).ok_or_else(short)?;
    let mut palette: Vec<[u8; 4]> = (0..colors)
        .map_while(|i| {
            let p = b.get(pal_start + 4 * i..pal_start + 4 * i + 3)?;
            Some([p[2], p[1], p[0], 255])
        })
        .collect();
    if palette.len() < colors {
        return Err(refuse("BMP palette is truncated"));
    }
    palette.resize(256, [0, 0, 0, 255]);
    let need = w * h;
    limits.check_alloc(need)?;
    let mut data: Vec<u8> = Vec::with_capacity(need);
    let mut pos = data_offset;
    let mut x = 0usize;
    while data.len() < need {
        let (Some(&n), Some(&byte)) = (b.get(pos), b.get(pos + 1)) else {
            break;
        };
        pos += 2;
        if n != 0 {
            // Encoded run, cut at the row end.
            let n = (n as usize).min(w.saturating_sub(x));
            for i in 0..n {
                data.push(match (rle4, i % 2) {
                    (false, _) => byte,
                    (true, 0) => byte >> 4,
                    (true, _) => byte & 0x0F,
                });
            }
            x += n;
        } else {
            match byte {
                0 => {
                    // End of line: pad the row with index 0.
                    while !data.len().is_multiple_of(w) {
                        data.push(0);
                    }
                    x = 0;
                }
                1 => break,
                2 => {
                    let (Some(&right), Some(&up)) = (b.get(pos), b.get(pos + 1)) else {
                        break;
                    };
                    pos += 2;
                    let skip = right as usize + up as usize * w;
                    data.resize((data.len() + skip).min(need), 0);
                    x = data.len() % w;
                }
                count => {
                    // Absolute run: RLE4 reads count / 2 bytes of two pixels each (as Pillow).
                    let count = count as usize;
                    let nbytes = if rle4 { count / 2 } else { count };
                    let avail = b.get(pos..).map_or(0, |r| r.len()).min(nbytes);
                    for &v in &b[pos..pos + avail] {
                        if rle4 {
                            data.extend([v >> 4, v & 0x0F]);
                        } else {
                            data.push(v);
                        }
                    }
                    pos += avail;
                    if avail < nbytes {
                        break;
                    }
                    x += count;
                    if !pos.is_multiple_of(2) {
                        pos += 1;
                    }
                }
            }
        }
    }
    if data.len() < need {
        return Err(refuse("BMP RLE data ends before the image does"));
    }
    data.truncate(need);
    if height > 0 {
        // Bottom-up rows.
        let rows: Vec<&[u8]> = data.chunks_exact(w).rev().collect();
        data = rows.concat();
    }
    Ok(PilImage {
        width: w,
        height: h,
        samples: Samples::P(data, palette),
        transparency: None,
    })
}
