#!/usr/bin/env python3
"""Writes tests/fixtures/corpus/: small images in every variant of every format cliplabel
supports that Pillow, libtiff's tools (tiffcp) or this script's own minimal writers produce,
plus manifest.json with, per file: the tool that made it, whether Pillow opens it, Pillow's
mode and size, and the expected RGB (Pillow + transformers' convert_to_rgb) as raw bytes in
NAME.rgb (height x width x 3, row-major).

Needs: pip install pillow numpy; apt-get install -y libtiff-tools (tiffcp).
Run from the repository root: python3 scripts/make_corpus.py
"""
import io
import json
import os
import shutil
import struct
import subprocess
import zlib

import numpy as np
import PIL
from PIL import Image

OUT = os.path.join("tests", "fixtures", "corpus")
W, H = 40, 30


def convert_to_rgb(im):
    """The RGB conversion of transformers 5.x's PIL image processor, as scripts/make_fixtures.py
    (rgb_like_transformers) restates it and tests/parity.rs checks it against transformers: an
    alpha band or a `transparency` entry means convert("RGBA") + alpha_composite over white,
    otherwise plain convert("RGB")."""
    if "A" in im.getbands() or im.info.get("transparency") is not None:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


def base_rgb():
    y, x = np.mgrid[0:H, 0:W]
    r = (x * 255 // (W - 1)).astype(np.uint8)
    g = (y * 255 // (H - 1)).astype(np.uint8)
    b = np.where((x // 8 + y // 8) % 2 == 0, 40, 220).astype(np.uint8)
    b[10:20, 15:25] = 255 - b[10:20, 15:25]
    return np.stack([r, g, b], -1)


def base_alpha():
    y, x = np.mgrid[0:H, 0:W]
    a = ((x + y) * 255 // (W + H - 2)).astype(np.uint8)
    a[:, :4] = 0
    return a


def grey():
    return base_rgb()[..., 0] // 2 + base_rgb()[..., 1] // 2


files = []  # (name, tool, bytes)


def add(name, tool, data):
    files.append((name, tool, data))


def pil_save(img, fmt, **kw):
    b = io.BytesIO()
    img.save(b, fmt, **kw)
    return b.getvalue()


# ---- minimal writers for variants Pillow cannot write -----------------------------------
def png_chunk(t, d):
    return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)


def png_raw(width, height, bitdepth, colortype, rows, plte=None, trns=None):
    """rows: list of bytes (packed samples per row, without filter byte)."""
    out = b"\x89PNG\r\n\x1a\n" + png_chunk(
        b"IHDR", struct.pack(">IIBBBBB", width, height, bitdepth, colortype, 0, 0, 0)
    )
    if plte is not None:
        out += png_chunk(b"PLTE", plte)
    if trns is not None:
        out += png_chunk(b"tRNS", trns)
    out += png_chunk(b"IDAT", zlib.compress(b"".join(b"\0" + r for r in rows)))
    return out + png_chunk(b"IEND", b"")


def pack_bits(vals, bits):
    out, acc, n = bytearray(), 0, 0
    for v in vals:
        acc = (acc << bits) | int(v)
        n += bits
        while n >= 8:
            out.append((acc >> (n - 8)) & 0xFF)
            n -= 8
            acc &= (1 << n) - 1
    if n:
        out.append(acc << (8 - n))
    return bytes(out)


def tiff_raw(width, height, bps, spp, photometric, data, sampleformat=1, extra=None, planar=1,
             strips=None):
    """Little-endian uncompressed TIFF: one strip, or `strips` = (rows per strip, [(start,
    length) in data]) as declared (which may disagree with the image, for crafted files)."""
    entries = []

    def e(tag, typ, vals):
        entries.append((tag, typ, vals))

    e(256, 4, [width])
    e(257, 4, [height])
    e(258, 3, [bps] * spp)
    e(259, 3, [1])
    e(262, 3, [photometric])
    rps, spans = strips if strips else (height, [(0, len(data))])
    e(273, 4, [start for start, _ in spans])  # relative to the data; made absolute below
    e(277, 3, [spp])
    e(278, 4, [rps])
    e(279, 4, [length for _, length in spans])
    e(284, 3, [planar])
    if extra is not None:
        e(338, 3, extra)
    e(339, 3, [sampleformat] * spp)
    entries.sort()
    n = len(entries)
    ifd_off = 8
    extra_off = ifd_off + 2 + 12 * n + 4
    blob = bytearray()
    raw = []
    data_off = extra_off + sum(
        (lambda n: n + n % 2)(len(v) * {3: 2, 4: 4}[t]) for _, t, v in entries
        if len(v) * {3: 2, 4: 4}[t] > 4)
    for tag, typ, vals in entries:
        if tag == 273:
            vals = [data_off + v for v in vals]
        size = {3: 2, 4: 4}[typ]
        payload = b"".join(struct.pack("<H" if size == 2 else "<I", v) for v in vals)
        if len(payload) <= 4:
            raw.append((tag, typ, len(vals), payload.ljust(4, b"\0"), None))
        else:
            raw.append((tag, typ, len(vals), None, len(blob)))
            blob += payload
            if len(blob) % 2:
                blob += b"\0"
    assert data_off == extra_off + len(blob)
    out = bytearray(b"II*\0" + struct.pack("<I", ifd_off) + struct.pack("<H", n))
    for tag, typ, count, inline, off in raw:
        if inline is None:
            inline = struct.pack("<I", extra_off + off)
        out += struct.pack("<HHI", tag, typ, count) + inline
    out += struct.pack("<I", 0) + blob + data
    return bytes(out)


def bmp_rle(width, height, bits, indices, palette, topdown=False):
    """BMP with BI_RLE8 (bits 8) or BI_RLE4 (bits 4), encoded runs plus a delta code."""
    rows = []
    for y in range(height):
        row = indices[y]
        enc = bytearray()
        x = 0
        while x < width:
            run = 1
            while x + run < width and run < 254 and row[x + run] == row[x]:
                run += 1
            v = row[x] if bits == 8 else (row[x] << 4) | row[x]
            enc += bytes([run, v])
            x += run
        enc += b"\0\0"
        rows.append(bytes(enc))
    order = rows if topdown else rows[::-1]
    body = b"".join(order) + b"\0\1"
    pal = b"".join(bytes([b, g, r, 0]) for r, g, b in palette)
    hdr_size = 40
    off = 14 + hdr_size + len(pal)
    h = -height if topdown else height
    info = struct.pack("<IiiHHIIiiII", hdr_size, width, h, 1, bits, 1 if bits == 8 else 2,
                       len(body), 2835, 2835, len(palette), 0)
    return b"BM" + struct.pack("<IHHI", off + len(body), 0, 0, off) + info + pal + body


def bmp_rle_delta(width, height, palette):
    """RLE8 that skips pixels with a delta code (Pillow leaves them index 0)."""
    rows = []
    for y in range(height):
        enc = bytearray([10, (y % 5) + 1])
        if y % 3 == 0:
            enc += b"\0\2" + bytes([5, 0])  # delta: 5 right, 0 down
            enc += bytes([width - 15, 3])
        else:
            enc += bytes([width - 10, 4])
        enc += b"\0\0"
        rows.append(bytes(enc))
    body = b"".join(rows[::-1]) + b"\0\1"
    pal = b"".join(bytes([b, g, r, 0]) for r, g, b in palette)
    off = 14 + 40 + len(pal)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(body), 2835, 2835,
                       len(palette), 0)
    return b"BM" + struct.pack("<IHHI", off + len(body), 0, 0, off) + info + pal + body


def bmp_bitfields_alpha(rgba):
    h, w, _ = rgba.shape
    rows = [rgba[y][:, [2, 1, 0, 3]].tobytes() for y in range(h)][::-1]
    body = b"".join(rows)
    hdr = struct.pack("<IiiHHIIiiII", 56, w, h, 1, 32, 3, len(body), 2835, 2835, 0, 0)
    hdr += struct.pack("<IIII", 0x00FF0000, 0x0000FF00, 0x000000FF, 0xFF000000)
    off = 14 + 56
    return b"BM" + struct.pack("<IHHI", off + len(body), 0, 0, off) + hdr + body


def bmp_os2v1(rgb):
    h, w, _ = rgb.shape
    stride = (w * 3 + 3) & ~3
    rows = [rgb[y][:, ::-1].tobytes().ljust(stride, b"\0") for y in range(h)][::-1]
    body = b"".join(rows)
    hdr = struct.pack("<IHHHH", 12, w, h, 1, 24)
    off = 14 + 12
    return b"BM" + struct.pack("<IHHI", off + len(body), 0, 0, off) + hdr + body


def bmp_os2v2(rgb, palette=None, indices=None):
    """OS/2 2.x BMP: a 64-byte info header (the 40 Windows fields + 24 OS/2 fields, here zero),
    4-byte palette entries; 24-bit or, with a palette, 8-bit. No tool at hand writes it."""
    h, w, _ = rgb.shape
    if palette is None:
        bits, pal = 24, b""
        stride = (w * 3 + 3) & ~3
        rows = [rgb[y][:, ::-1].tobytes().ljust(stride, b"\0") for y in range(h)][::-1]
    else:
        bits = 8
        pal = b"".join(bytes([b, g, r, 0]) for r, g, b in palette)
        stride = (w + 3) & ~3
        rows = [bytes(indices[y]).ljust(stride, b"\0") for y in range(h)][::-1]
    body = b"".join(rows)
    hdr = struct.pack("<IiiHHIIiiII", 64, w, h, 1, bits, 0, len(body), 2835, 2835,
                      len(palette or []), 0) + b"\0" * 24
    off = 14 + 64 + len(pal)
    return b"BM" + struct.pack("<IHHI", off + len(body), 0, 0, off) + hdr + pal + body


# ---- the variants -----------------------------------------------------------------------
rgb = base_rgb()
alpha = base_alpha()
rgba = np.dstack([rgb, alpha])
L = grey()
im_rgb = Image.fromarray(rgb)
im_rgba = Image.fromarray(rgba)
im_l = Image.fromarray(L)
im_la = Image.fromarray(np.dstack([L, alpha]).astype(np.uint8)).convert("RGBA").convert("LA")
im_1 = im_l.point(lambda v: 255 if v > 100 else 0).convert("1")
im_p = im_rgb.quantize(16)
im_p256 = im_rgb.quantize(200)
im_i16 = Image.fromarray(L.astype(np.uint16) * 3)
im_i = Image.fromarray(L.astype(np.int32) * 2 - 60)
im_f = Image.fromarray(L.astype(np.float32) * 1.3 - 20.5)
im_cmyk = im_rgb.convert("CMYK")
# A bilevel page with more structure for the fax codings: odd width, diagonals, rings, text-like bars.
_fy, _fx = np.mgrid[0:57, 0:83]
im_fax = Image.fromarray((((_fx + 2 * _fy) % 11 < 3) | (((_fx - 40) ** 2 + (_fy - 28) ** 2) // 60 % 3 == 0)
                          | ((_fy % 9 < 2) & (_fx % 13 < 9))).astype(np.uint8) * 255).convert("1")

# PNG by Pillow
for nm, im in [("rgb", im_rgb), ("rgba", im_rgba), ("l", im_l), ("la", im_la), ("1", im_1),
               ("p", im_p), ("i16", im_i16)]:
    add(f"png_{nm}.png", "Pillow", pil_save(im, "PNG"))
add("png_p_trns.png", "Pillow", pil_save(im_p, "PNG", transparency=3))
add("png_l_trns.png", "Pillow", pil_save(im_l, "PNG", transparency=int(L[5, 5])))
add("png_rgb_trns.png", "Pillow", pil_save(im_rgb, "PNG", transparency=tuple(int(v) for v in rgb[0, 0])))
add("png_interlaced.png", "Pillow", pil_save(im_rgba, "PNG", optimize=False) )
# PNG by this script (bit depths / tRNS Pillow does not write)
for bits in (1, 2, 4, 8, 16):
    maxv = (1 << bits) - 1
    vals = (L.astype(np.uint32) * maxv // 255)
    if bits == 16:
        rows = [b"".join(struct.pack(">H", int(v)) for v in r) for r in vals]
    elif bits == 8:
        rows = [bytes(r.astype(np.uint8)) for r in vals]
    else:
        rows = [pack_bits(r, bits) for r in vals]
    t = int(vals[5, 5])
    add(f"png_grey{bits}.png", "make_corpus.py", png_raw(W, H, bits, 0, rows))
    add(f"png_grey{bits}_trns.png", "make_corpus.py",
        png_raw(W, H, bits, 0, rows, trns=struct.pack(">H", t)))
rgb16 = rgb.astype(np.uint16) * 257 + np.arange(W, dtype=np.uint16)[None, :, None]
rows16 = [r.astype(">u2").tobytes() for r in rgb16]
add("png_rgb16.png", "make_corpus.py", png_raw(W, H, 16, 2, rows16))
add("png_rgb16_trns.png", "make_corpus.py",
    png_raw(W, H, 16, 2, rows16, trns=struct.pack(">HHH", *[int(v) for v in rgb16[0, 0]])))
rgba16 = np.dstack([rgb16, alpha.astype(np.uint16) * 257])
add("png_rgba16.png", "make_corpus.py", png_raw(W, H, 16, 6, [r.astype(">u2").tobytes() for r in rgba16]))
la16 = np.dstack([L.astype(np.uint16) * 257, alpha.astype(np.uint16) * 257])
add("png_la16.png", "make_corpus.py", png_raw(W, H, 16, 4, [r.astype(">u2").tobytes() for r in la16]))
idx = (L // 64).astype(np.uint8)
plte = bytes([10, 20, 30, 200, 100, 50, 0, 255, 0])  # 3 entries; index 3 is past the palette
add("png_p_short_palette.png", "make_corpus.py",
    png_raw(W, H, 2, 3, [pack_bits(r, 2) for r in idx], plte=plte, trns=bytes([0, 128])))

# GIF
add("gif_p.gif", "Pillow", pil_save(im_p, "GIF"))
add("gif_l.gif", "Pillow", pil_save(im_l, "GIF"))
add("gif_trns.gif", "Pillow", pil_save(im_p, "GIF", transparency=2))
frames = [im_p, im_rgb.rotate(90).quantize(16), im_rgb.rotate(180).quantize(16)]
add("gif_animated.gif", "Pillow", pil_save(frames[0], "GIF", save_all=True, append_images=frames[1:]))

# APNG (Pillow's open() shows frame 0)
add("png_apng.png", "Pillow", pil_save(frames[0].convert("RGB"), "PNG", save_all=True,
                                       append_images=[f.convert("RGB") for f in frames[1:]]))
add("png_apng_rgba.png", "Pillow", pil_save(im_rgba, "PNG", save_all=True,
                                            append_images=[im_rgba.rotate(180)], disposal=1))

# BMP
for nm, im in [("rgb", im_rgb), ("l", im_l), ("1", im_1), ("p", im_p), ("rgba", im_rgba)]:
    add(f"bmp_{nm}.bmp", "Pillow", pil_save(im, "BMP"))
pal16 = [tuple(int(c) for c in rgb[0, i * 2]) for i in range(16)]
idx16 = (L // 16).astype(np.uint8)
add("bmp_rle8.bmp", "make_corpus.py", bmp_rle(W, H, 8, idx16, pal16))
add("bmp_rle8_topdown.bmp", "make_corpus.py", bmp_rle(W, H, 8, idx16, pal16, topdown=True))
add("bmp_rle4.bmp", "make_corpus.py", bmp_rle(W, H, 4, idx16, pal16))
add("bmp_rle8_delta.bmp", "make_corpus.py", bmp_rle_delta(W, H, pal16))
add("bmp_bitfields_alpha.bmp", "make_corpus.py", bmp_bitfields_alpha(rgba))
add("bmp_os2v1.bmp", "make_corpus.py", bmp_os2v1(rgb))
add("bmp_os2v2.bmp", "make_corpus.py", bmp_os2v2(rgb))
add("bmp_os2v2_p8.bmp", "make_corpus.py", bmp_os2v2(rgb, pal16, idx16))

# WebP
add("webp_lossless.webp", "Pillow", pil_save(im_rgb, "WEBP", lossless=True))
add("webp_lossless_rgba.webp", "Pillow", pil_save(im_rgba, "WEBP", lossless=True))
add("webp_lossy.webp", "Pillow", pil_save(im_rgb, "WEBP", quality=80))
add("webp_lossy_rgba.webp", "Pillow", pil_save(im_rgba, "WEBP", quality=80))
add("webp_animated.webp", "Pillow",
    pil_save(frames[0].convert("RGB"), "WEBP", save_all=True, lossless=True,
             append_images=[f.convert("RGB") for f in frames[1:]]))

# JPEG
add("jpeg_rgb.jpg", "Pillow", pil_save(im_rgb, "JPEG", quality=90))
add("jpeg_l.jpg", "Pillow", pil_save(im_l, "JPEG"))
add("jpeg_cmyk.jpg", "Pillow", pil_save(im_cmyk, "JPEG"))
add("jpeg_progressive.jpg", "Pillow", pil_save(im_rgb, "JPEG", progressive=True))
add("jpeg_444.jpg", "Pillow", pil_save(im_rgb, "JPEG", subsampling=0))
bad_exif = b"Exif\0\0" + b"II*\0" + struct.pack("<I", 0xFFFFFF00)
add("jpeg_bad_exif.jpg", "Pillow", pil_save(im_rgb, "JPEG", exif=bad_exif))

# ICO
add("ico_rgba.ico", "Pillow", pil_save(im_rgba, "ICO", sizes=[(16, 16)]))

# TIFF by Pillow
tiff_modes = [("1", im_1), ("l", im_l), ("la", im_la), ("p", im_p), ("rgb", im_rgb),
              ("rgba", im_rgba), ("cmyk", im_cmyk), ("i16", im_i16), ("i", im_i), ("f", im_f)]
for nm, im in tiff_modes:
    for comp in ("raw", "tiff_lzw", "tiff_adobe_deflate", "packbits"):
        add(f"tiff_{nm}_{comp}.tif", "Pillow", pil_save(im, "TIFF", compression=comp))
for comp in ("group3", "group4"):
    add(f"tiff_1_{comp}.tif", "Pillow", pil_save(im_1, "TIFF", compression=comp))
add("tiff_rgb_jpeg.tif", "Pillow", pil_save(im_rgb, "TIFF", compression="jpeg"))
add("tiff_l_jpeg.tif", "Pillow", pil_save(im_l, "TIFF", compression="jpeg"))
add("tiff_1_g4_orient.tif", "Pillow", pil_save(im_1, "TIFF", compression="group4",
                                                tiffinfo={274: 6}))
add("tiff_rgb_orient.tif", "Pillow", pil_save(im_rgb, "TIFF", tiffinfo={274: 3}))
add("tiff_multipage.tif", "Pillow", pil_save(im_rgb, "TIFF", save_all=True,
                                             append_images=[im_l, im_rgba]))
# TIFF by this script (depths and formats Pillow does not write)
g = L.astype(np.uint32)
for bits in (2, 4):
    vals = g * ((1 << bits) - 1) // 255
    data = b"".join(pack_bits(r, bits) for r in vals)
    add(f"tiff_grey{bits}.tif", "make_corpus.py", tiff_raw(W, H, bits, 1, 1, data))
add("tiff_rgb16.tif", "make_corpus.py", tiff_raw(W, H, 16, 3, 2, rgb16.astype("<u2").tobytes()))
add("tiff_rgba16.tif", "make_corpus.py",
    tiff_raw(W, H, 16, 4, 2, np.dstack([rgb16, alpha.astype(np.uint16) * 257]).astype("<u2").tobytes(), extra=[2]))
add("tiff_rgba_assoc.tif", "make_corpus.py",
    tiff_raw(W, H, 8, 4, 2, np.dstack([rgb * (alpha[..., None].astype(np.uint16)) // 255, alpha]).astype(np.uint8).tobytes(), extra=[1]))
add("tiff_int16.tif", "make_corpus.py",
    tiff_raw(W, H, 16, 1, 1, (g.astype(np.int16) * 3 - 200).astype("<i2").tobytes(), sampleformat=2))
add("tiff_int8.tif", "make_corpus.py",
    tiff_raw(W, H, 8, 1, 1, (g.astype(np.int16) - 128).astype(np.int8).tobytes(), sampleformat=2))
add("tiff_float32_rgb.tif", "make_corpus.py",
    tiff_raw(W, H, 32, 3, 2, (rgb.astype(np.float32) / 255).astype("<f4").tobytes(), sampleformat=3))
add("tiff_grey12.tif", "make_corpus.py",
    tiff_raw(W, H, 12, 1, 1, b"".join(pack_bits(r * 16, 12) for r in g)))
# 12-bit RGB: Pillow 13 has no mode for it (refuses), so cliplabel must refuse it too.
add("tiff_rgb12.tif", "make_corpus.py",
    tiff_raw(W, H, 12, 3, 2, b"".join(pack_bits(r.reshape(-1).astype(np.uint32) * 16, 12) for r in rgb)))
add("tiff_miniswhite.tif", "make_corpus.py", tiff_raw(W, H, 8, 1, 0, (255 - L).tobytes()))


def run_tool(args):
    subprocess.run(args, check=True, capture_output=True)


def made(name):
    return next(data for n, _, data in files if n == name)


def tiffcp_variants():
    tmp = os.path.join(OUT, "_tmp")
    os.makedirs(tmp, exist_ok=True)
    srcs = {"rgb": pil_save(im_rgb, "TIFF"), "l": pil_save(im_l, "TIFF"),
            "rgba": pil_save(im_rgba, "TIFF"), "1": pil_save(im_1, "TIFF"),
            "p": pil_save(im_p, "TIFF"), "cmyk": pil_save(im_cmyk, "TIFF"),
            "grey12": made("tiff_grey12.tif"), "grey4": made("tiff_grey4.tif"),
            "1fax": pil_save(im_fax, "TIFF")}
    variants = [
        ("planar_raw", ["-p", "separate"]),
        ("planar_lzw", ["-p", "separate", "-c", "lzw"]),
        ("planar_deflate", ["-p", "separate", "-c", "zip"]),
        ("tiled", ["-t", "-w", "16", "-l", "16"]),
        ("tiled_lzw", ["-t", "-w", "16", "-l", "16", "-c", "lzw"]),
        ("lzw", ["-c", "lzw", "-r", "7"]),
        ("bigtiff", ["-8"]),
        ("strips_lzw_pred", ["-c", "lzw:2", "-r", "7"]),
        ("jpeg_ycbcr", ["-c", "jpeg", "-r", "16"]),
        ("jpeg_rgb", ["-c", "jpeg:r", "-r", "16"]),
        ("jpeg_tiled", ["-c", "jpeg", "-t", "-w", "16", "-l", "16"]),
        ("g3", ["-c", "g3"]),
        ("g3_2d", ["-c", "g3:2d"]),
        ("g3_2d_fill", ["-c", "g3:2d:fill", "-r", "7"]),
        ("g4", ["-c", "g4"]),
        ("msb2lsb", ["-f", "lsb2msb"]),
    ]
    for sname, data in srcs.items():
        src = os.path.join(tmp, f"{sname}.tif")
        with open(src, "wb") as f:
            f.write(data)
        for vname, args in variants:
            if sname == "1fax" and not vname.startswith("g"):
                continue
            if vname.startswith("g") and sname not in ("1", "1fax"):
                continue
            if vname.startswith("jpeg") and sname not in ("rgb", "l", "cmyk"):
                continue
            if sname in ("grey12", "grey4") and vname not in ("tiled", "tiled_lzw", "lzw"):
                continue
            dst = os.path.join(tmp, f"{sname}_{vname}.tif")
            try:
                run_tool(["tiffcp", *args, src, dst])
            except subprocess.CalledProcessError:
                continue
            with open(dst, "rb") as f:
                add(f"tiffcp_{sname}_{vname}.tif", "tiffcp " + " ".join(args), f.read())
    shutil.rmtree(tmp)


if shutil.which("tiffcp"):
    tiffcp_variants()
else:
    raise SystemExit("tiffcp not found: apt-get install -y libtiff-tools")


CRASHERS = os.path.join("tests", "fixtures", "crashers")


def patch_tiff_tags(data, changes):
    """Sets the inline value of little-endian classic-TIFF tags of the first IFD."""
    b = bytearray(data)
    ifd = struct.unpack("<I", b[4:8])[0]
    for k in range(struct.unpack("<H", b[ifd:ifd + 2])[0]):
        e = ifd + 2 + 12 * k
        tag, typ = struct.unpack("<HH", b[e:e + 4])
        if tag in changes:
            b[e + 8:e + 12] = struct.pack("<H" if typ == 3 else "<I", changes[tag]).ljust(4, b"\0")
    return bytes(b)


def crashers():
    """Regression files for decoder crashes found by fuzzing (see tests/fixtures/crashers/README.md):
    corpus files with IFD values changed, written from the corpus files just made."""
    os.makedirs(CRASHERS, exist_ok=True)
    made = {name: data for name, _, data in files}
    for out, src, changes in [
        # tiff 0.11.3 panics: assertion failed: buf.len() >= layout.row_stride * ... (issue #11)
        ("tiff_row_stride_assert.tif", "tiffcp_rgb_jpeg_tiled.tif", {284: 2, 322: 40}),
        # 3 bits a sample: crashed cliplabel's own unpacking before it refused such depths
        ("tiff_3bit_grey.tif", "tiff_i16_raw.tif", {258: 3}),
    ]:
        with open(os.path.join(CRASHERS, out), "wb") as f:
            f.write(patch_tiff_tags(made[src], changes))


def main():
    crashers()
    for f in os.listdir(OUT) if os.path.isdir(OUT) else []:
        os.remove(os.path.join(OUT, f))
    os.makedirs(OUT, exist_ok=True)
    manifest = {"pillow": PIL.__version__, "files": []}
    for name, tool, data in files:
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(data)
        entry = {"file": name, "tool": tool}
        try:
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                entry.update(pillow_opens=True, mode=im.mode, size=list(im.size))
                out = np.asarray(convert_to_rgb(im), dtype=np.uint8)
            assert out.shape == (im.size[1], im.size[0], 3)
            exp = name + ".rgb"
            with open(os.path.join(OUT, exp), "wb") as f:
                f.write(out.tobytes())
            entry["expected"] = exp
        except Exception as e:  # what Pillow refuses, cliplabel must refuse too
            entry.update(pillow_opens=False, error=f"{type(e).__name__}: {e}")
        manifest["files"].append(entry)
    with open(os.path.join(OUT, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    n = sum(e["pillow_opens"] for e in manifest["files"])
    print(f"{len(files)} files, Pillow opens {n}")


main()
