"""Build the test fixtures that cliplabel's Rust tests compare against (development only).

What it makes (all under tests/fixtures/, committed; the Rust tests read them without Python):

  clip-tokenizer/            vocab.json + merges.txt derived from OpenAI's bpe_simple_vocab_16e6.txt.gz
                             (see scripts/clip_vocab.py), shared with other scripts
  tokens.json                the prompt corpus: [{"text", "ids", "attention_mask", "ids_ctx32",
                             "attention_mask_ctx32"}] from transformers' fast CLIP tokenizer,
                             padding="max_length", truncation=True, max_length 77 (and 32)
  images/                    good test images in many formats/modes, made here with fixed seeds
  bad/                       broken files for error tests (empty, truncated, not an image, PNG bomb header)
  tiny-clip/                 random CLIP, ViT 224/32, width 32, quick_gelu, f32, one model.safetensors
  tiny-clip-gelu-f16/        random CLIP, ViT 64/16, widths 48/40, exact gelu, eps 1e-6, context 32,
                             float16 weights in >= 2 shards, preprocessor 72 -> crop 64, mean/std 0.5
  <model>/reference.safetensors   reference outputs of transformers (PIL image processor); see NAMING
  manifest.json              library versions, processor class, images (size, mode), bad files,
                             the Pillow conversion rules the reference follows (checked each run)

The random models use initializer_factor 3 (the default init makes every input's features nearly
identical) and random biases / LayerNorm weights (the default 0 / 1 would hide a port that drops
them); logit_scale is set in the weights (ln 50, ln 20) while config.json keeps the default
logit_scale_init_value, so a port must read it from the weights.

With --full it also writes a full-size randomly initialised ViT-B/32 (CLIPConfig() defaults) with
its tokenizer, preprocessor config and reference.safetensors into scratch/full-vit-b32/ (gitignored).

Run (from the repository root):

    /work/pyenv/bin/python scripts/make_fixtures.py           # tests/fixtures/
    /work/pyenv/bin/python scripts/make_fixtures.py --full    # also scratch/full-vit-b32/

Needs torch, transformers 5.x, safetensors, Pillow, numpy (the versions used are recorded in
tests/fixtures/manifest.json; made with torch 2.15.0, transformers 5.24.0, Pillow 13.0.0,
numpy 2.4.6, tokenizers 0.23.3, safetensors 0.8.0) and NO torchvision (so that transformers'
image processors are the PIL ones). The first run needs open-clip-torch's wheel or package for
the BPE vocabulary (see clip_vocab.py); later runs use tests/fixtures/clip-tokenizer/.
Nothing is downloaded. The output is deterministic: running it twice gives byte-identical files.

NAMING in reference.safetensors (NAME = image file name with "." replaced by "_", e.g. rgb_png):
  crop_u8.NAME         uint8 [H, W, 3]   RGB after convert_to_rgb + resize + centre crop, before
                                         rescale/normalise (every good image)
  pixel_values.NAME    f32 [3, H, W]     the processor's pixel_values (PIXEL_VALUE_IMAGES only)
  image_features.NAME  f32 [proj_dim]    model.get_image_features(pixel_values).pooler_output, batch of 1
  text_features        f32 [N, proj_dim] get_text_features(...).pooler_output for tokens.json, in order,
                                         padded to max_length = the model's context, truncation=True
  logit_scale          f32 []            the raw parameter (log of the scale), as in model.safetensors
  logit_scale_exp      f32 []            exp(logit_scale)
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import os
import shutil
import struct
import sys
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.dont_write_bytecode = True  # no scripts/__pycache__ in the work tree
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402
import PIL  # noqa: E402
from PIL import Image, ImageDraw, ImageFilter  # noqa: E402

import clip_vocab  # noqa: E402

FIX = os.path.join(REPO, "tests", "fixtures")
IMG_DIR = os.path.join(FIX, "images")
BAD_DIR = os.path.join(FIX, "bad")
SEED = 20240601

PIXEL_VALUE_IMAGES = ["rgb.png", "small_7x13.png", "photo_500x375.jpg"]


# ----------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------


def photo(w: int, h: int, seed: int, noise: float = 6.0, shapes: int = 6) -> np.ndarray:
    """Photographic-ish uint8 RGB [h, w, 3]: smooth colour gradients, a few hard-edged and
    soft shapes, fine texture and noise (so resampling differences show)."""
    rng = np.random.default_rng(seed)
    y = np.linspace(0.0, 1.0, h, dtype=np.float64)[:, None]
    x = np.linspace(0.0, 1.0, w, dtype=np.float64)[None, :]
    img = np.zeros((h, w, 3), dtype=np.float64)
    for c in range(3):
        a, b, p, q = rng.uniform(0.5, 3.0, 4)
        ph = rng.uniform(0, 2 * np.pi, 2)
        img[..., c] = (
            110
            + 60 * np.sin(2 * np.pi * a * x + ph[0]) * np.cos(2 * np.pi * b * y + ph[1])
            + 40 * (p * x - q * y)
        )
    # fine texture: a high-frequency pattern that aliases if resampled wrongly
    img += 12 * np.sin(2 * np.pi * (x * w / 3.7 + y * h / 5.3))[..., None]
    im = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(im)
    s = min(w, h)
    for i in range(shapes):
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        r = rng.uniform(0.05, 0.3) * s
        col = tuple(int(v) for v in rng.integers(0, 256, 3))
        box = [cx - r, cy - r * rng.uniform(0.5, 1.5), cx + r, cy + r * rng.uniform(0.5, 1.5)]
        if i % 3 == 0:
            draw.ellipse(box, fill=col)
        elif i % 3 == 1:
            draw.rectangle(box, fill=col)
        else:
            draw.line([box[0], box[1], box[2], box[3]], fill=col, width=max(1, int(s / 40)))
    if s >= 40:
        # a soft blob
        blob = Image.new("L", (w, h), 0)
        ImageDraw.Draw(blob).ellipse([w * 0.6, h * 0.1, w * 0.95, h * 0.5], fill=255)
        blob = blob.filter(ImageFilter.GaussianBlur(radius=max(1.0, s / 30)))
        im = Image.composite(Image.new("RGB", (w, h), (250, 240, 200)), im, blob)
    arr = np.asarray(im).astype(np.float64)
    arr += rng.normal(0.0, noise, arr.shape)
    return np.clip(np.round(arr), 0, 255).astype(np.uint8)


def png_bytes_raw(width: int, height: int, bit_depth: int, color_type: int, idat: bytes) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def png16_rgb(arr: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG (Pillow cannot write one): filter 0 rows, zlib level 9."""
    h, w, _ = arr.shape
    be = arr.astype(">u2")
    raw = b"".join(b"\x00" + be[r].tobytes() for r in range(h))
    return png_bytes_raw(w, h, 16, 2, zlib.compress(raw, 9))


def write_bytes(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def make_images() -> list[str]:
    """Writes tests/fixtures/images/*; returns the file names in order."""
    if os.path.isdir(IMG_DIR):
        shutil.rmtree(IMG_DIR)
    os.makedirs(IMG_DIR)
    names: list[str] = []

    def save(name: str, im: Image.Image, **kw) -> None:
        im.save(os.path.join(IMG_DIR, name), **kw)
        names.append(name)

    # RGB PNG
    save("rgb.png", Image.fromarray(photo(320, 240, SEED + 1)))

    # grayscale L PNG
    save("gray.png", Image.fromarray(photo(300, 200, SEED + 2)).convert("L"))

    # LA PNG: grey + alpha (radial alpha ramp, fully transparent corner)
    g = np.asarray(Image.fromarray(photo(256, 192, SEED + 3)).convert("L"))
    yy, xx = np.mgrid[0:192, 0:256]
    alpha = np.clip(255 - np.hypot(xx - 100, yy - 90) * 2.0, 0, 255).astype(np.uint8)
    save("la.png", Image.fromarray(np.dstack([g, alpha]), "LA"))

    # palette P PNG (median-cut quantised, no transparency)
    base = Image.fromarray(photo(240, 180, SEED + 4))
    pal = base.quantize(colors=200, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.FLOYDSTEINBERG)
    save("palette.png", pal)

    # palette PNG with tRNS: index 254 half transparent, index 255 fully transparent
    base = Image.fromarray(photo(240, 180, SEED + 5))
    pal = base.quantize(colors=254, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    idx = np.array(pal)
    p = pal.getpalette()[: 254 * 3] + [0, 200, 0] + [200, 0, 200]
    idx[20:90, 30:120] = 255  # fully transparent rectangle
    yy, xx = np.mgrid[0:180, 0:240]
    idx[np.hypot(xx - 170, yy - 120) < 40] = 254  # half transparent disc
    pal_t = Image.fromarray(idx, "P")
    pal_t.putpalette(p)
    trns = bytes([255] * 254 + [128, 0])
    save("palette_trns.png", pal_t, transparency=trns)

    # RGBA PNG with partial transparency
    rgb = photo(300, 220, SEED + 6)
    yy, xx = np.mgrid[0:220, 0:300]
    a = np.clip(xx * 255.0 / 299.0, 0, 255)
    a[yy < 40] = 255
    a[(yy > 180)] = 0
    a = np.round(a).astype(np.uint8)
    save("rgba.png", Image.fromarray(np.dstack([rgb, a]), "RGBA"))

    # RGB PNG with a tRNS transparent colour (pure green patches must become white)
    rgb = photo(200, 160, SEED + 7)
    rgb[30:90, 40:110] = (0, 255, 0)
    rgb[120:150, 150:190] = (0, 255, 0)
    save("rgb_trns.png", Image.fromarray(rgb), transparency=(0, 255, 0))

    # 16-bit grayscale PNG (Pillow mode I;16) using the full 0..65535 range
    # (top half: full 0..65535 range as in a real 16-bit photo; bottom half: values 0..~306, so
    # that Pillow's I;16 -> RGB rule, a clamp to 255 rather than a rescale, shows as detail)
    g16 = photo(160, 120, SEED + 8).astype(np.float64).mean(axis=2)
    g16[:60] = g16[:60] * 257.0 + np.linspace(0, 200, 160)[None, :]
    g16[60:] = g16[60:] * 1.2
    g16 = np.clip(np.round(g16), 0, 65535).astype(np.uint16)
    im16 = Image.fromarray(g16)
    assert im16.mode == "I;16", im16.mode
    save("gray16.png", im16)

    # 16-bit RGB PNG (written by hand: Pillow can't write it)
    rgb16 = photo(160, 120, SEED + 9).astype(np.uint16) * 257
    rgb16 = (rgb16 + np.random.default_rng(SEED + 90).integers(0, 257, rgb16.shape)).astype(np.uint16)
    write_bytes(os.path.join(IMG_DIR, "rgb16.png"), png16_rgb(rgb16))
    names.append("rgb16.png")

    # JPEGs
    ph = Image.fromarray(photo(400, 300, SEED + 10))
    save("baseline_420.jpg", ph, quality=90, subsampling=2)
    save("q444.jpg", Image.fromarray(photo(400, 300, SEED + 11)), quality=92, subsampling=0)
    save("progressive.jpg", Image.fromarray(photo(400, 300, SEED + 12)), quality=88, progressive=True)
    save("gray.jpg", Image.fromarray(photo(320, 240, SEED + 13)).convert("L"), quality=90)
    # CMYK JPEG with real K (Pillow's own RGB->CMYK conversion leaves K = 0); Pillow writes an
    # Adobe APP14 marker and inverted CMYK, as Photoshop does
    cmy = 255 - photo(320, 240, SEED + 14).astype(np.int32)
    k = photo(320, 240, SEED + 140).astype(np.int32).mean(axis=2, keepdims=True).astype(np.int32) // 2
    cmyk = np.concatenate([np.clip(cmy - k, 0, 255), k], axis=2).astype(np.uint8)
    save("cmyk.jpg", Image.fromarray(cmyk, "CMYK"), quality=90)

    # EXIF orientation 6 (rotate 90 CW to display). The reference pipeline (PIL image passed to
    # the processor) does NOT apply it.
    exif = Image.Exif()
    exif[0x0112] = 6
    save("exif_orient6.jpg", Image.fromarray(photo(240, 160, SEED + 15)), quality=90, exif=exif.tobytes())

    # 1x1 PNG
    save("one_px.png", Image.new("RGB", (1, 1), (200, 30, 90)))

    # 4000x3000 JPEG: smooth content so it stays small
    save("big_4000x3000.jpg", Image.fromarray(photo(4000, 3000, SEED + 16, noise=1.5, shapes=12)), quality=70)

    # extreme aspect ratios and upscaling
    save("wide_1000x10.png", Image.fromarray(photo(1000, 10, SEED + 17)))
    save("tall_10x1000.png", Image.fromarray(photo(10, 1000, SEED + 18)))
    save("small_7x13.png", Image.fromarray(photo(7, 13, SEED + 19, noise=20)))

    # ordinary photo-sized JPEG
    save("photo_500x375.jpg", Image.fromarray(photo(500, 375, SEED + 20)), quality=85)

    # GIF (palette) with a transparent index
    gif = Image.fromarray(photo(200, 150, SEED + 21)).quantize(colors=255, method=Image.Quantize.MEDIANCUT)
    gi = np.array(gif)
    gi[40:80, 60:140] = 255
    gp = gif.getpalette()[: 255 * 3] + [1, 2, 3]
    gif_t = Image.fromarray(gi, "P")
    gif_t.putpalette(gp)
    save("anim_frame.gif", gif_t, transparency=255)

    # BMP (24-bit), lossless WEBP, TIFF (LZW)
    save("rgb.bmp", Image.fromarray(photo(180, 120, SEED + 22)))
    save("lossless.webp", Image.fromarray(photo(200, 150, SEED + 23)), lossless=True, quality=100, method=4, exact=True)
    save("rgb.tiff", Image.fromarray(photo(200, 150, SEED + 24)), compression="tiff_lzw")

    # a PNG named .jpg: decoders must sniff the content, not trust the extension
    buf = io.BytesIO()
    Image.fromarray(photo(64, 48, SEED + 25)).save(buf, format="PNG")
    write_bytes(os.path.join(IMG_DIR, "png_named_as.jpg"), buf.getvalue())
    names.append("png_named_as.jpg")
    return names


def make_bad_files() -> dict:
    if os.path.isdir(BAD_DIR):
        shutil.rmtree(BAD_DIR)
    os.makedirs(BAD_DIR)
    write_bytes(os.path.join(BAD_DIR, "empty.jpg"), b"")
    with open(os.path.join(IMG_DIR, "photo_500x375.jpg"), "rb") as f:
        jpg = f.read()
    write_bytes(os.path.join(BAD_DIR, "truncated.jpg"), jpg[: len(jpg) // 2])
    write_bytes(
        os.path.join(BAD_DIR, "not_an_image.png"),
        b"This is a text file, not a PNG image.\nIt only has a .png name.\n",
    )
    # IHDR declares 20000 x 20000 RGB 8-bit (1.2 GB decoded); the IDAT holds just 4 rows.
    rows = b"".join(b"\x00" + bytes(20000 * 3) for _ in range(4))
    write_bytes(os.path.join(BAD_DIR, "bomb_20000x20000.png"), png_bytes_raw(20000, 20000, 8, 2, zlib.compress(rows, 9)))

    report = {}
    for name in sorted(os.listdir(BAD_DIR)):
        path = os.path.join(BAD_DIR, name)
        try:
            with Image.open(path) as im:
                im.load()
            report[name] = {"pillow": "opened", "bytes": os.path.getsize(path)}
        except Exception as e:  # noqa: BLE001 - we record what Pillow does
            msg = f"{type(e).__name__}: {e}".replace(REPO + os.sep, "")
            report[name] = {"pillow": msg, "bytes": os.path.getsize(path)}
        assert report[name]["pillow"] != "opened", name
    return report


# ----------------------------------------------------------------------------------------------
# Prompt corpus
# ----------------------------------------------------------------------------------------------

CORPUS = [
    "a photo of a cat.",
    "a photo of a dog",
    "A PHOTO OF A CAT.",
    "a photo of a café",
    "naïve résumé",
    "Ångström",
    "CAFÉ Ünïcödé",
    "東京の夜景の写真",
    "一只猫的照片",
    "고양이 사진",
    "صورة قطة على الأريكة",
    "🐶",
    "a photo of 👩‍👩‍👧 at the beach 👍🏽",
    "wow!!! ...?!?! --- ### ((()))",
    "it's a cat, isn't it? they'LL say we'd've",
    "1234567",
    "3.14 and 2,718",
    "   leading and trailing spaces   ",
    "tabs\tand\nnewlines\r\nmixed",
    "multiple     spaces   between",
    "non\u00a0breaking\u00a0space",
    "ideographic\u3000space",
    "zero\u200bwidth space",
    "control\u0007char",
    "",
    "<|startoftext|>a photo of a cat",
    "a photo<|endoftext|> of a cat",
    "salt &amp; pepper",
    "caf\u00e9 latte",  # NFC
    "cafe\u0301 latte",  # NFD: same after NFC normalisation
    "Ｆｕｌｌｗｉｄｔｈ ﬁne ligature",
    "a_b-c/d\\e",
    "x",
    "a " * 75,  # exactly 77 tokens with <|startoftext|> and <|endoftext|>
    "a " * 76,  # one token too many for 77
    "a " * 30,  # exactly 32 tokens
    (
        "a very long caption that goes on and on about a photograph of a small brown dog "
        "sitting on a red couch next to a window, while outside the rain falls on a grey city "
        "street full of yellow taxis, people with umbrellas, shop signs, bicycles, puddles, "
        "pigeons, trees without leaves and a distant church tower under heavy clouds at dusk; "
        "in the foreground a cup of coffee, a folded newspaper, a pair of glasses, a phone with "
        "a cracked screen and a small plant in a blue pot catch the last light of the evening"
    ),  # 110 tokens: far over 77
]


def tokens_corpus(tok) -> list[dict]:
    out = []
    for text in CORPUS:
        e77 = tok(text, padding="max_length", truncation=True, max_length=77)
        e32 = tok(text, padding="max_length", truncation=True, max_length=32)
        for e, n in ((e77, 77), (e32, 32)):
            assert len(e["input_ids"]) == n
            assert e["input_ids"][0] == clip_vocab.BOS_ID
            real = sum(e["attention_mask"])
            assert e["attention_mask"] == [1] * real + [0] * (n - real)
            assert e["input_ids"][real - 1] == clip_vocab.EOS_ID  # truncation keeps the end token
            assert all(i == clip_vocab.EOS_ID for i in e["input_ids"][real:])  # padded with it
        out.append(
            {
                "text": text,
                "ids": e77["input_ids"],
                "attention_mask": e77["attention_mask"],
                "ids_ctx32": e32["input_ids"],
                "attention_mask_ctx32": e32["attention_mask"],
            }
        )
    # known facts
    assert out[0]["ids"][:8] == [49406, 320, 1125, 539, 320, 2368, 269, 49407]
    nfc = next(o for o in out if o["text"] == "caf\u00e9 latte")
    nfd = next(o for o in out if o["text"] == "cafe\u0301 latte")
    assert nfc["ids"] == nfd["ids"]
    assert len(tok(CORPUS[-1])["input_ids"]) > 100
    exact = next(o for o in out if o["text"] == "a " * 75)
    assert exact["ids"][-1] == clip_vocab.EOS_ID and exact["attention_mask"] == [1] * 77
    return out


# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------


def perturb_affine(model, seed: int) -> None:
    """CLIP's init sets every bias to 0 and every LayerNorm to (1, 0): a port that forgot a bias
    or swapped a LayerNorm's weight and bias would still match. Give them random values."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
            elif "layer_norm" in name or "layrnorm" in name or name.endswith("norm.weight"):
                if name.endswith(".weight"):
                    p.copy_(1.0 + torch.randn(p.shape, generator=g) * 0.1)


# CLIP's default init gives nearly identical features for every input at these sizes (mean image
# cosine 0.89-0.93). A larger init (valid CLIPConfig field) makes them vary and makes the models
# sensitive to preprocessing errors. NB transformers 5.24 reads the factor from the *sub*-configs
# for most weights, so it is set in all three.
INIT_FACTOR = 3.0


def tiny_configs():
    from transformers import CLIPConfig

    tiny = CLIPConfig(
        text_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            hidden_act="quick_gelu",
            projection_dim=16,
            initializer_factor=INIT_FACTOR,
        ),
        vision_config=dict(
            image_size=224,
            patch_size=32,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            hidden_act="quick_gelu",
            projection_dim=16,
            initializer_factor=INIT_FACTOR,
        ),
        projection_dim=16,
        initializer_factor=INIT_FACTOR,
    )
    gelu = CLIPConfig(
        text_config=dict(
            hidden_size=40,
            intermediate_size=80,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=32,
            hidden_act="gelu",
            layer_norm_eps=1e-6,
            projection_dim=24,
            initializer_factor=INIT_FACTOR,
        ),
        vision_config=dict(
            image_size=64,
            patch_size=16,
            hidden_size=48,
            intermediate_size=96,
            num_hidden_layers=3,
            num_attention_heads=3,
            hidden_act="gelu",
            layer_norm_eps=1e-6,
            projection_dim=24,
            initializer_factor=INIT_FACTOR,
        ),
        projection_dim=24,
        initializer_factor=INIT_FACTOR,
    )
    return tiny, gelu


MODELS = {
    # name: (config index, seed, logit_scale, dtype, max_shard_size, processor kwargs)
    "tiny-clip": dict(seed=SEED + 100, logit_scale=math.log(50.0), dtype="float32", shard=None, proc={}),
    "tiny-clip-gelu-f16": dict(
        seed=SEED + 200,
        logit_scale=math.log(20.0),
        dtype="float16",
        shard="1MB",
        proc=dict(
            size={"shortest_edge": 72},
            crop_size={"height": 64, "width": 64},
            image_mean=[0.5, 0.5, 0.5],
            image_std=[0.5, 0.5, 0.5],
        ),
    ),
}


def build_model(out_dir: str, config, seed: int, logit_scale: float, dtype: str, shard, proc_kwargs: dict):
    import torch
    from transformers import CLIPModel
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    if os.path.isdir(out_dir):
        shutil.rmtree(out_dir)
    os.makedirs(out_dir)
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    perturb_affine(model, seed + 1)
    with torch.no_grad():
        model.logit_scale.fill_(logit_scale)
    if dtype == "float16":
        model = model.to(torch.float16)
    kw = {} if shard is None else {"max_shard_size": shard}
    model.save_pretrained(out_dir, **kw)
    ctx = config.text_config.max_position_embeddings
    clip_vocab.build_clip_tokenizer(out_dir, model_max_length=ctx)
    CLIPImageProcessorPil(**proc_kwargs).save_pretrained(out_dir)


# ----------------------------------------------------------------------------------------------
# Reference outputs
# ----------------------------------------------------------------------------------------------


def rgb_like_transformers(im: Image.Image) -> Image.Image:
    """transformers 5.x convert_to_rgb for PIL input, restated: if the image has an alpha band or
    a `transparency` entry in im.info, convert to RGBA, alpha-composite over opaque white, convert
    to RGB; otherwise plain im.convert("RGB")."""
    if "A" in im.getbands() or im.info.get("transparency") is not None:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


def crop_u8(im: Image.Image, shortest_edge: int, crop_h: int, crop_w: int) -> np.ndarray:
    """The processor's steps up to the centre crop, written out: RGB conversion, resize so the
    short side is `shortest_edge` (long side int(shortest_edge * long / short)) with PIL BICUBIC,
    centre crop with top = (h - crop_h) // 2, left = (w - crop_w) // 2."""
    rgb = rgb_like_transformers(im)
    w, h = rgb.size
    if w <= h:
        nw, nh = shortest_edge, int(shortest_edge * h / w)
    else:
        nw, nh = int(shortest_edge * w / h), shortest_edge
    r = np.asarray(rgb.resize((nw, nh), resample=Image.Resampling.BICUBIC))
    assert nh >= crop_h and nw >= crop_w, "padding case not covered"
    top, left = (nh - crop_h) // 2, (nw - crop_w) // 2
    return np.ascontiguousarray(r[top : top + crop_h, left : left + crop_w])


def load_processor(model_dir: str):
    from transformers import AutoImageProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    proc = CLIPImageProcessorPil.from_pretrained(model_dir)
    auto = AutoImageProcessor.from_pretrained(model_dir)
    assert type(auto).__name__ == "CLIPImageProcessorPil", type(auto)  # no torchvision here
    assert proc.backend == "pil"
    return proc


def reference(model_dir: str, images: list[str], corpus: list[dict], ctx_key: str, strict: bool = True) -> dict:
    import torch
    from safetensors.numpy import save_file
    from transformers import AutoTokenizer, CLIPModel

    proc = load_processor(model_dir)
    model = CLIPModel.from_pretrained(model_dir, dtype=torch.float32).eval()
    for p in model.parameters():
        assert p.dtype == torch.float32
    # the model computes with exactly the stored weights (f16 ones upcast to f32)
    from safetensors import safe_open

    stored = {}
    for fn in sorted(os.listdir(model_dir)):
        if fn.startswith("model") and fn.endswith(".safetensors"):
            with safe_open(os.path.join(model_dir, fn), "pt") as f:
                for k in f.keys():
                    stored[k] = f.get_tensor(k)
    sd = model.state_dict()
    assert set(stored) <= set(sd), set(stored) - set(sd)
    assert {k for k in sd if k not in stored} <= {"text_model.embeddings.position_ids", "vision_model.embeddings.position_ids"}
    for k, v in stored.items():
        assert torch.equal(v.float(), sd[k]), k
    tok = AutoTokenizer.from_pretrained(model_dir)
    ctx = model.config.text_config.max_position_embeddings
    se = proc.size["shortest_edge"]
    ch, cw = proc.crop_size["height"], proc.crop_size["width"]
    mean = np.asarray(proc.image_mean, dtype=np.float64)
    std = np.asarray(proc.image_std, dtype=np.float64)

    tensors: dict[str, np.ndarray] = {}
    feats_single = []
    pvs = []
    with torch.no_grad():
        for name in images:
            key = name.replace(".", "_")
            with Image.open(os.path.join(IMG_DIR, name)) as im:
                im.load()
                pv = proc(images=im, return_tensors="np")["pixel_values"][0]
                crop = crop_u8(im, se, ch, cw)
            assert pv.dtype == np.float32 and pv.shape == (3, ch, cw), (pv.dtype, pv.shape)
            mine = ((crop.astype(np.float64) / 255.0 - mean) / std).transpose(2, 0, 1)
            err = np.abs(mine - pv).max()
            assert err < 1e-6, (name, err)
            tensors[f"crop_u8.{key}"] = crop
            if name in PIXEL_VALUE_IMAGES:
                tensors[f"pixel_values.{key}"] = np.ascontiguousarray(pv)
            out = model.get_image_features(pixel_values=torch.from_numpy(pv[None]))
            f = out.pooler_output[0].numpy().astype(np.float32)
            assert f.shape == (model.config.projection_dim,)
            tensors[f"image_features.{key}"] = f
            feats_single.append(f)
            pvs.append(pv)
        # batching the images must not change the features
        batch = model.get_image_features(pixel_values=torch.from_numpy(np.stack(pvs))).pooler_output.numpy()
        assert np.abs(batch - np.stack(feats_single)).max() < 1e-5

        texts = [c["text"] for c in corpus]
        enc = tok(texts, padding="max_length", truncation=True, max_length=ctx, return_tensors="pt")
        ids_key = "ids" if ctx == 77 else f"ids_ctx{ctx}"
        assert ids_key == ctx_key
        assert enc["input_ids"].tolist() == [c[ctx_key] for c in corpus]
        tf = model.get_text_features(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).pooler_output
        tf = tf.numpy().astype(np.float32)
        # without the attention mask (padding sits after the first end token; causal mask)
        tf_nomask = model.get_text_features(input_ids=enc["input_ids"]).pooler_output.numpy()
        assert np.abs(tf - tf_nomask).max() < 1e-5
        # padding="longest" must give the same features
        enc_l = tok(texts, padding="longest", truncation=True, max_length=ctx, return_tensors="pt")
        tf_l = model.get_text_features(**enc_l).pooler_output.numpy()
        assert np.abs(tf - tf_l).max() < 1e-5, np.abs(tf - tf_l).max()
        # one prompt at a time, unpadded
        for i in (0, 4, len(texts) - 1):
            e1 = tok([texts[i]], truncation=True, max_length=ctx, return_tensors="pt")
            t1 = model.get_text_features(**e1).pooler_output.numpy()[0]
            assert np.abs(t1 - tf[i]).max() < 1e-5

    tensors["text_features"] = np.ascontiguousarray(tf)
    ls = np.asarray(model.logit_scale.detach().numpy(), dtype=np.float32).reshape(())
    assert ls.shape == ()
    tensors["logit_scale"] = ls
    tensors["logit_scale_exp"] = np.asarray(np.exp(ls), dtype=np.float32).reshape(())

    check_variation(np.stack(feats_single), tf, images, texts, strict)
    save_file(tensors, os.path.join(model_dir, "reference.safetensors"))
    return {
        "processor_class": type(proc).__name__,
        "context_length": ctx,
        "projection_dim": int(model.config.projection_dim),
        "logit_scale_param": float(ls),
    }


def cos_matrix(x: np.ndarray) -> np.ndarray:
    n = x / np.linalg.norm(x, axis=1, keepdims=True)
    return n @ n.T


def check_variation(img: np.ndarray, txt: np.ndarray, images: list[str], texts: list[str], strict: bool) -> None:
    """Features of different inputs must not be near-identical."""
    ci = cos_matrix(img.astype(np.float64))
    ct = cos_matrix(txt.astype(np.float64))
    iu = np.triu_indices(len(images), 1)
    tu = np.triu_indices(len(texts), 1)
    print(
        f"    image cos: mean {ci[iu].mean():.3f} max {ci[iu].max():.4f};"
        f"  text cos: mean {ct[tu].mean():.3f} max {ct[tu].max():.4f}"
    )
    if not strict:
        return
    assert ci[iu].mean() < 0.9, "image features barely vary"
    assert ct[tu].mean() < 0.9, "text features barely vary"


# ----------------------------------------------------------------------------------------------


def check_pillow_rules() -> dict:
    """The integer rules that the reference RGB conversion follows, checked exhaustively or on the
    fixture images with the installed Pillow. A port must follow these to get identical pixels."""
    rules = {}
    # alpha over opaque white (RGBA, LA, palette/tRNS, RGB/tRNS all go through this)
    c, a = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")
    src = np.stack([c, c, c, a], -1).astype(np.uint8)
    white = Image.new("RGBA", (256, 256), (255, 255, 255, 255))
    out = np.asarray(Image.alpha_composite(white, Image.fromarray(src, "RGBA")).convert("RGB"))[..., 0]
    assert (out == np.round((c * a + 255 * (255 - a)) / 255.0)).all()
    rules["alpha_over_white"] = "v' = round((v*a + 255*(255-a)) / 255), for every v, a in 0..255"
    # CMYK -> RGB (Pillow's cmyk2rgb): nk = 255-k; r = nk - MULDIV255(c, nk), MULDIV255(x, y) =
    # (t + (t >> 8)) >> 8 with t = x*y + 128
    cc, kk = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")
    cmyk = np.stack([cc, cc, cc, kk], -1).astype(np.uint8)
    rgb = np.asarray(Image.fromarray(cmyk, "CMYK").convert("RGB"))[..., 0].astype(np.int64)
    nk = 255 - kk
    t = cc * nk + 128
    assert (rgb == nk - ((t + (t >> 8)) >> 8)).all()
    rules["CMYK"] = (
        "PIL's C,M,Y,K (Adobe-inverted JPEG data already un-inverted by Pillow): nk = 255-k, "
        "r = nk - ((t + (t>>8)) >> 8) with t = c*nk + 128 (likewise g from m, b from y); "
        "equals round((255-c)*(255-k)/255)"
    )
    # 16-bit grayscale (I;16) -> RGB: clamp, not rescale
    g = np.array([[0, 1, 254, 255, 256, 1000, 65535]], dtype=np.uint16)
    r = np.asarray(Image.fromarray(g).convert("RGB"))[..., 0]
    assert r.tolist() == [[0, 1, 254, 255, 255, 255, 255]]
    rules["I;16"] = "16-bit grey opens as mode I;16; convert('RGB') gives min(v, 255) in every channel"
    # 16-bit RGB PNG: Pillow opens it as mode RGB keeping the high byte
    probe = np.array([[[0x12FF, 0xAB00, 0xFFFF], [0x0080, 0x7F7F, 0x0001]]], dtype=np.uint16)
    with Image.open(io.BytesIO(png16_rgb(probe))) as im:
        assert im.mode == "RGB"
        assert (np.asarray(im) == (probe >> 8)).all()
    rules["16-bit RGB PNG"] = "opens as mode RGB with v >> 8 (high byte, no rounding)"
    rules["L, P"] = "convert('RGB'): L replicated to 3 channels; P looked up in the palette"
    return rules


def image_info(images: list[str]) -> list[dict]:
    out = []
    for name in images:
        path = os.path.join(IMG_DIR, name)
        with Image.open(path) as im:
            im.load()
            exif = im.getexif()
            info = {
                "file": name,
                "key": name.replace(".", "_"),
                "format": im.format,
                "size": list(im.size),  # [width, height] as PIL reports it
                "mode": im.mode,
                "bands": list(im.getbands()),
                "has_transparency_info": im.info.get("transparency") is not None,
                "exif_orientation": exif.get(0x0112),
                "bytes": os.path.getsize(path),
            }
            # transformers' load_image(path) (what the processor does when given a path string)
            # applies EXIF orientation and a plain convert("RGB") without white compositing.
            from PIL import ImageOps

            a = np.asarray(rgb_like_transformers(im))
            b = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
            info["load_image_path_differs"] = bool(a.shape != b.shape or (a != b).any())
        out.append(info)
    return out


def versions() -> dict:
    import safetensors
    import tokenizers
    import torch
    import transformers

    try:
        import torchvision  # noqa: F401

        tv = torchvision.__version__
    except ImportError:
        tv = None
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "safetensors": safetensors.__version__,
        "Pillow": PIL.__version__,
        "numpy": np.__version__,
        "torchvision": tv,
    }


def sha256_tree(root: str) -> dict:
    out = {}
    for d, _, files in os.walk(root):
        for f in sorted(files):
            p = os.path.join(d, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = hashlib.sha256(fh.read()).hexdigest()
    return dict(sorted(out.items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--full", action="store_true", help="also write scratch/full-vit-b32/ (random ViT-B/32)")
    ap.add_argument("--skip-tiny", action="store_true", help="with --full: leave tests/fixtures/ alone")
    args = ap.parse_args()

    import torch
    import transformers

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    transformers.logging.set_verbosity_error()
    vers = versions()
    assert vers["torchvision"] is None, "uninstall torchvision: transformers must use its PIL image processor"
    assert int(transformers.__version__.split(".")[0]) >= 5

    os.makedirs(FIX, exist_ok=True)
    if not args.skip_tiny:
        print("tokenizer")
        tok = clip_vocab.build_clip_tokenizer(None)
        corpus = tokens_corpus(tok)
        with open(os.path.join(FIX, "tokens.json"), "w", encoding="utf-8") as f:
            json.dump(corpus, f, ensure_ascii=False, indent=1)
            f.write("\n")

        print("images")
        images = make_images()
        bad = make_bad_files()

        tiny_cfg, gelu_cfg = tiny_configs()
        cfgs = {"tiny-clip": tiny_cfg, "tiny-clip-gelu-f16": gelu_cfg}
        models = {}
        for name, m in MODELS.items():
            print(name)
            d = os.path.join(FIX, name)
            build_model(d, cfgs[name], m["seed"], m["logit_scale"], m["dtype"], m["shard"], m["proc"])
            ctx = cfgs[name].text_config.max_position_embeddings
            r = reference(d, images, corpus, "ids" if ctx == 77 else f"ids_ctx{ctx}")
            with open(os.path.join(d, "config.json")) as f:
                cj = json.load(f)
            models[name] = {
                **r,
                "weights_dtype": m["dtype"],
                "sharded": os.path.exists(os.path.join(d, "model.safetensors.index.json")),
                "logit_scale_requested": m["logit_scale"],
                "seed": m["seed"],
                "config_dtype": cj.get("dtype", cj.get("torch_dtype")),
                "reference_computed_in": "float32 (weights loaded with dtype=torch.float32)",
            }
        assert models["tiny-clip-gelu-f16"]["sharded"] and not models["tiny-clip"]["sharded"]

        manifest = {
            "generator": "scripts/make_fixtures.py",
            "versions": vers,
            "processor_class": "transformers.models.clip.image_processing_pil_clip.CLIPImageProcessorPil",
            "processor_input": "PIL.Image.open(path) passed as a PIL image (no EXIF transpose)",
            "tokenizer_class": type(tok).__module__ + "." + type(tok).__name__,
            "tokens_json": (
                "list of {text, ids, attention_mask (max_length 77), ids_ctx32, attention_mask_ctx32 "
                "(max_length 32)}; padding='max_length' with <|endoftext|>, truncation=True"
            ),
            "pixel_value_images": PIXEL_VALUE_IMAGES,
            "naming": {
                "crop_u8.NAME": "uint8 [H,W,3] after convert_to_rgb + resize + centre crop",
                "pixel_values.NAME": "f32 [3,H,W] processor output (pixel_value_images only)",
                "image_features.NAME": "f32 [projection_dim]",
                "text_features": "f32 [N_prompts, projection_dim], tokens.json order",
                "logit_scale": "f32 [] raw parameter (log)",
                "logit_scale_exp": "f32 []",
                "NAME": "image file name with '.' replaced by '_'",
            },
            "convert_to_rgb": (
                "transformers.image_transforms.convert_to_rgb (5.x), PIL input: if 'A' in "
                "image.getbands() or image.info.get('transparency') is not None: "
                "image.convert('RGBA'), alpha_composite over opaque white, convert('RGB'); else "
                "image.convert('RGB'). No EXIF orientation is applied."
            ),
            "pillow_rules": check_pillow_rules(),
            "resize": (
                "short side -> size.shortest_edge, long side -> int(shortest_edge * long / short); "
                "PIL Image.resize(BICUBIC) on the uint8 RGB image (reducing_gap None); centre crop "
                "top = (h - crop_h) // 2, left = (w - crop_w) // 2; then float32(float64(x) * "
                "(1/255)), then (x - mean) / std in float32"
            ),
            "init": (
                f"torch.manual_seed(model seed); CLIPModel(config) with initializer_factor {INIT_FACTOR}; "
                "then every bias ~ N(0, 0.05^2) and every LayerNorm weight ~ 1 + N(0, 0.1^2) "
                "(default init would leave them 0 and 1); logit_scale parameter set (config's "
                "logit_scale_init_value left at its default)"
            ),
            "models": models,
            "images": image_info(images),
            "bad_files": bad,
            "n_prompts": len(corpus),
        }
        with open(os.path.join(FIX, "manifest.json"), "w", encoding="utf-8") as f:
            json.dump(manifest, f, ensure_ascii=False, indent=1)
            f.write("\n")

    if args.full:
        from transformers import CLIPConfig

        print("full ViT-B/32 (slow)")
        d = os.path.join(REPO, "scratch", "full-vit-b32")
        with open(os.path.join(FIX, "tokens.json"), encoding="utf-8") as f:
            corpus = json.load(f)
        images = [i["file"] for i in json.load(open(os.path.join(FIX, "manifest.json")))["images"]]
        torch.set_num_threads(os.cpu_count() or 1)
        # ViT-B/32 architecture (CLIPConfig() defaults); only the init scale changed, as for the
        # tiny models (with the default init every image's features have cosine ~0.91-0.99)
        cfg = CLIPConfig(
            initializer_factor=INIT_FACTOR,
            text_config=dict(initializer_factor=INIT_FACTOR),
            vision_config=dict(initializer_factor=INIT_FACTOR),
        )
        build_model(d, cfg, SEED + 300, math.log(100.0), "float32", None, {})
        r = reference(d, images, corpus, "ids")
        print("   ", r, "->", d)

    if not args.skip_tiny:
        total = sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(FIX) for f in fs)
        print(f"tests/fixtures: {total / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
