"""cliplabel vs the Python stack, side by side on this machine (development only).

Python is not needed by cliplabel or its tests; this script only measures. Run it from the
repository root with the project's Python environment (torch, transformers 5.x, Pillow, numpy,
safetensors, onnxruntime, onnx, onnxscript):

    /work/pyenv/bin/python scripts/bench_vs_python.py            # the full benchmark
    /work/pyenv/bin/python scripts/bench_vs_python.py --quick    # smoke test, tiny counts
    /work/pyenv/bin/python scripts/bench_vs_python.py --memory   # peak RSS, 2,000 vs 20,000 images
    /work/pyenv/bin/python scripts/bench_vs_python.py --memory --quick

Options worth knowing: --repeats R (default 3), --batch-sizes 8,32, --images N (default 300),
--threads N (default: the cores this process may use), --sections e2e,encoder,text,
--text-classes N (default 1000), --text-repeats N (default 3), --pad77-classes N (default 100),
--arch b32|b16|l14-336 (the model; for the large ones, e.g.
`--arch l14-336 --sections encoder --batch-sizes 8 --encoder-images 16`).

What it does
------------
Setup (cached under scratch/, which is gitignored):
  * the model: scratch/full-vit-b32/ (random full-size ViT-B/32; made by
    `scripts/make_fixtures.py --full`, or here with CLIPModel(CLIPConfig()) and a fixed seed if
    it is missing); with --arch b16 or l14-336, scratch/full-vit-ARCH/ (made by
    scripts/make_random_clip.py), its ONNX export in scratch/bench-onnx-ARCH/ and the results in
    scratch/bench-results-ARCH.{md,json};
  * --images N photographic-looking JPEGs (smooth gradients, shapes, texture, blur, sensor noise,
    quality 90) from 500x375 to 1600x1200 in scratch/bench-images/ (made once, reused);
  * the vision tower + projection exported to ONNX (opset 18) from the same weights, checked
    against PyTorch, in scratch/bench-onnx/;
  * `cargo build --release --bin cliplabel --example bench_encoder` (the binaries are then run
    directly, not through `cargo run`, so that neither time nor memory includes cargo).

Contenders, each run in its own subprocess (peak RSS = that process's ru_maxrss from wait4, the
number `/usr/bin/time -v` prints as "Maximum resident set size"), all with threads = --threads:
  (a) end-to-end, files on disk -> image embeddings, for each batch size:
      `cliplabel embed` vs transformers (CLIPImageProcessorPil, i.e. Pillow, as the PIL
      CLIPImageProcessor + CLIPModel.get_image_features under torch.inference_mode, then the
      embeddings saved). Two rates: "wall" = N / wall time of the whole process (start-up,
      imports, model load, work, output); "steady" = (N - 1) / (wall(N) - wall(1)), i.e. with
      process start-up and model load removed the same way for both (wall(1): the median over
      repeats of a 1-image run, which is repeated with every repeat). transformers' in-process loop rate is also kept in the JSON.
      A third contender runs transformers with Pillow in a torch DataLoader with --threads
      worker processes (decoding and preprocessing overlap the model, as a tuned PyTorch input
      pipeline does). Unless --no-precisions, `cliplabel embed --precision bf16` and `int8`
      run too (the same files; a lower precision only changes the encoder's linear layers).
  (b) encoder only, random normalised pixels, for each batch size: cliplabel
      (examples/bench_encoder.rs, Engine::embed_pixels) vs PyTorch (get_image_features) vs
      ONNX Runtime (intra_op_num_threads = threads, sequential, all graph optimisations).
      Lower precisions too (unless --no-precisions): cliplabel --precision bf16 and int8,
      PyTorch under torch.autocast("cpu", bfloat16), ONNX Runtime on quantize_dynamic's QInt8
      model of the same export, OpenVINO on the same ONNX file with INFERENCE_PRECISION_HINT
      f32 and bf16. Their fidelity (cosine to fp32 on the same pixels) is measured by
      scripts/bench_encoders.py, which needs no torch.
      One untimed warm-up pass, then enough passes for about --encoder-images images.
  (c) text: --text-classes class names x the 80 templates of prompts/imagenet80.txt
      (1,000 x 80 = 80,000 prompts by default) in batches of --text-batch:
      cliplabel (bench_encoder --text: Engine::embed_texts, prompts sorted by length, each batch
      padded to its longest) vs transformers with padding=True (each batch padded to its longest,
      prompts in class order, as tools do) vs transformers with padding=True on prompts sorted by
      token count (cliplabel's batching, so the ratio to it is the implementation alone, not the
      algorithm) vs transformers with padding="max_length" (77, the naive way). padding="max_length" is about 8x the work, so by default it runs on the first
      --pad77-classes classes only and its time for the full set is extrapolated (marked).
Contenders are interleaved: every repeat runs each contender once, in an order rotated per
repeat, and the tables show medians over repeats. Text is slow (tens of minutes per repeat on two
cores with the defaults), it runs in the first --text-repeats repeats (default: all 3, as medians
of at least 3 are what the README reports; lower --text-classes to save time).

Output: a Markdown table on stdout and in scratch/bench-results.md, everything (every run, raw)
in scratch/bench-results.json, with the machine (CPU model, cores, load average before and
after) and the versions (torch, transformers, onnxruntime, Pillow, rustc, candle). --quick writes
scratch/bench-results-quick.{md,json} instead, so a smoke test never replaces a real result.
Ratios are cliplabel's rate divided by the other's (above 1: cliplabel is faster).

--memory: peak RSS and wall time of `cliplabel embed` and `cliplabel label` (tiny fixture model
tests/fixtures/tiny-clip, --class a --class b, --no-cache) on 2,000 and on 20,000 small JPEGs
(hard links to eight small images in scratch/mem-images-N/; --quick: 200 and 2,000), to show
whether memory stays flat as the count grows. Writes scratch/bench-memory.{md,json}.

Timings are only meaningful on an otherwise idle machine: the load average is recorded before
and after, and a warning is printed when it was high before the benchmark started (at the end
the load average includes the benchmark's own contenders).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.metadata
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time

sys.dont_write_bytecode = True  # no scripts/__pycache__ in the work tree

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SCRATCH = os.path.join(REPO, "scratch")
MODEL_DIR = os.path.join(SCRATCH, "full-vit-b32")
IMG_DIR = os.path.join(SCRATCH, "bench-images")
ONNX_DIR = os.path.join(SCRATCH, "bench-onnx")
OUT_DIR = os.path.join(SCRATCH, "bench-out")
TINY_MODEL = os.path.join(REPO, "tests", "fixtures", "tiny-clip")
TEMPLATES = os.path.join(REPO, "prompts", "imagenet80.txt")
CLIPLABEL = os.path.join(REPO, "target", "release", "cliplabel")
BENCH_ENCODER = os.path.join(REPO, "target", "release", "examples", "bench_encoder")
IMAGE_SEED = 20240917
IMAGE_VERSION = 2  # bump when the image generator changes

# Class names for the text benchmark: 40 adjectives x 25 nouns = 1,000 two-word names (the same
# lists as the built-in fallback of examples/bench_encoder.rs; the script passes a file anyway).
ADJECTIVES = [
    "red", "small", "striped", "spotted", "giant", "wild", "golden", "black", "white", "green",
    "common", "northern", "southern", "european", "american", "african", "asian", "crested",
    "long-tailed", "short-haired", "pygmy", "great", "lesser", "desert", "mountain", "river",
    "sea", "snow", "wooden", "electric", "folding", "antique", "plastic", "steel", "paper",
    "glass", "leather", "rubber", "silver", "copper",
]
NOUNS = [
    "fox", "owl", "beetle", "salamander", "terrier", "heron", "lizard", "frog", "shark", "moth",
    "chair", "kettle", "guitar", "umbrella", "bicycle", "lantern", "clock", "basket", "bottle",
    "boot", "telescope", "canoe", "trumpet", "sofa", "tractor",
]


def class_names(n: int) -> list[str]:
    out = []
    for i in range(n):
        a = ADJECTIVES[i % len(ADJECTIVES)]
        b = NOUNS[(i // len(ADJECTIVES)) % len(NOUNS)]
        r = i // (len(ADJECTIVES) * len(NOUNS))
        out.append(f"{a} {b}" if r == 0 else f"{a} {b} {r}")
    return out


def read_templates(path: str = TEMPLATES) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [ln.strip() for ln in f if ln.strip() and not ln.lstrip().startswith("#")]


def make_prompts(n_classes: int) -> list[str]:
    templates = read_templates()
    return [t.replace("{}", c) for c in class_names(n_classes) for t in templates]


# ----------------------------------------------------------------------------------------------
# Children: each contender runs in its own process (`--child KIND --child-args JSON`) and prints
# one JSON line on stdout. Heavy imports happen only here.
# ----------------------------------------------------------------------------------------------


def _torch_setup(threads: int):
    import torch

    torch.set_num_threads(threads)
    return torch


def _load_clip(model_dir: str):
    from transformers import CLIPModel

    model = CLIPModel.from_pretrained(model_dir)
    return model.float().eval()


def _features(out):
    # transformers 5.x returns an output object whose pooler_output is the projected features.
    return out.pooler_output if hasattr(out, "pooler_output") else out


class _PilDataset:
    """One preprocessed image per item, for a torch DataLoader whose workers run Pillow."""

    def __init__(self, paths, proc):
        self.paths, self.proc = paths, proc

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        from PIL import Image

        with Image.open(self.paths[i]) as im:
            return self.proc(images=im, return_tensors="pt")["pixel_values"][0]


def child_torch_e2e(a: dict) -> dict:
    t0 = time.perf_counter()
    import numpy as np
    from PIL import Image
    from safetensors.numpy import save_file

    torch = _torch_setup(a["threads"])
    import transformers

    proc_cls = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    model = _load_clip(a["model"])
    proc = proc_cls.from_pretrained(a["model"])
    with open(a["list"], encoding="utf-8") as f:
        paths = [ln.rstrip("\n") for ln in f if ln.strip()]
    t1 = time.perf_counter()
    feats = []
    b = a["batch"]
    workers = a.get("workers", 0)
    if workers:
        # Pillow decoding and preprocessing in `workers` processes, batches prefetched, as a
        # tuned PyTorch input pipeline does; the model keeps `threads` threads.
        loader = torch.utils.data.DataLoader(_PilDataset(paths, proc), batch_size=b, num_workers=workers)
        with torch.inference_mode():
            for px in loader:
                feats.append(_features(model.get_image_features(pixel_values=px)).numpy())
    with torch.inference_mode():
        for i in range(0, len(paths) if not workers else 0, b):
            imgs = [Image.open(p) for p in paths[i : i + b]]
            px = proc(images=imgs, return_tensors="pt")["pixel_values"]
            feats.append(_features(model.get_image_features(pixel_values=px)).numpy())
            for im in imgs:
                im.close()
    t2 = time.perf_counter()
    save_file({"embeddings": np.ascontiguousarray(np.concatenate(feats))}, a["out"])
    t3 = time.perf_counter()
    return {
        "images": len(paths),
        "processor": type(proc).__name__,
        "workers": workers,
        "import_load_s": t1 - t0,
        "loop_s": t2 - t1,
        "save_s": t3 - t2,
        "loop_images_per_s": len(paths) / (t2 - t1),
    }


def _encoder_iters(a: dict) -> int:
    return max(a["min_iters"], -(-a["images"] // a["batch"]))


def child_torch_encoder(a: dict) -> dict:
    torch = _torch_setup(a["threads"])
    model = _load_clip(a["model"])
    size = model.config.vision_config.image_size
    g = torch.Generator().manual_seed(0)
    x = torch.randn(a["batch"], 3, size, size, generator=g)
    iters = _encoder_iters(a)
    per = []
    import contextlib

    # bf16: autocast runs the linear layers and matmuls in bf16 (oneDNN), the rest in fp32.
    cast = torch.autocast("cpu", dtype=torch.bfloat16) if a.get("bf16") else contextlib.nullcontext()
    with torch.inference_mode(), cast:
        _features(model.get_image_features(pixel_values=x))  # warm-up
        t0 = time.perf_counter()
        for _ in range(iters):
            t = time.perf_counter()
            _features(model.get_image_features(pixel_values=x))
            per.append(time.perf_counter() - t)
        secs = time.perf_counter() - t0
    n = a["batch"] * iters
    return {"batch": a["batch"], "iters": iters, "seconds": secs, "images_per_s": n / secs,
            "seconds_per_iter": per}


def child_ort_encoder(a: dict) -> dict:
    import numpy as np
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = a["threads"]
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(a["onnx"], so, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    size = inp.shape[-1] if isinstance(inp.shape[-1], int) else 224
    x = np.random.default_rng(0).standard_normal((a["batch"], 3, size, size), dtype=np.float32)
    iters = _encoder_iters(a)
    sess.run(None, {inp.name: x})  # warm-up
    per = []
    t0 = time.perf_counter()
    for _ in range(iters):
        t = time.perf_counter()
        sess.run(None, {inp.name: x})
        per.append(time.perf_counter() - t)
    secs = time.perf_counter() - t0
    n = a["batch"] * iters
    return {"batch": a["batch"], "iters": iters, "seconds": secs, "images_per_s": n / secs,
            "seconds_per_iter": per}


def child_ov_encoder(a: dict) -> dict:
    import numpy as np
    import openvino as ov

    core = ov.Core()
    model = core.read_model(a["onnx"])
    size = 224
    model.reshape({model.inputs[0].get_any_name(): [a["batch"], 3, size, size]})
    compiled = core.compile_model(model, "CPU", {
        "INFERENCE_PRECISION_HINT": a["precision"],
        "INFERENCE_NUM_THREADS": a["threads"],
        "PERFORMANCE_HINT": "LATENCY",
    })
    req = compiled.create_infer_request()
    x = np.random.default_rng(0).standard_normal((a["batch"], 3, size, size), dtype=np.float32)
    iters = _encoder_iters(a)
    req.infer({0: x})  # warm-up
    per = []
    t0 = time.perf_counter()
    for _ in range(iters):
        t = time.perf_counter()
        req.infer({0: x})
        per.append(time.perf_counter() - t)
    secs = time.perf_counter() - t0
    n = a["batch"] * iters
    return {"batch": a["batch"], "iters": iters, "seconds": secs, "images_per_s": n / secs,
            "seconds_per_iter": per, "precision": a["precision"]}


def child_torch_text(a: dict) -> dict:
    torch = _torch_setup(a["threads"])
    from transformers import CLIPTokenizerFast

    model = _load_clip(a["model"])
    tok = CLIPTokenizerFast.from_pretrained(a["model"])
    prompts = make_prompts(a["classes"])
    b = a["batch"]
    if a["padding"] == "max_length":
        kw = dict(padding="max_length", max_length=model.config.text_config.max_position_embeddings,
                  truncation=True)
    else:
        kw = dict(padding=True, truncation=True)
    if a["padding"] == "sorted":
        # As cliplabel does: prompts sorted by token count, so each batch pads little (the
        # sort's tokenisation is timed too, below).
        kw = dict(padding=True, truncation=True)
    tokens = 0
    with torch.inference_mode():
        enc = tok(prompts[: min(32, b)], return_tensors="pt", **kw)  # warm-up
        _features(model.get_text_features(**enc))
        t0 = time.perf_counter()
        if a["padding"] == "sorted":
            lengths = [len(ids) for ids in tok(prompts, truncation=True)["input_ids"]]
            prompts = [p for _, p in sorted(zip(lengths, prompts), key=lambda t: t[0])]
        for i in range(0, len(prompts), b):
            enc = tok(prompts[i : i + b], return_tensors="pt", **kw)
            tokens += enc["input_ids"].numel()
            _features(model.get_text_features(**enc))
        secs = time.perf_counter() - t0
    return {"prompts": len(prompts), "batch": b, "padding": a["padding"], "seconds": secs,
            "prompts_per_s": len(prompts) / secs, "mean_padded_tokens": tokens / len(prompts)}


def child_make_model(a: dict) -> dict:
    """A full-size random ViT-B/32 (CLIPConfig() defaults), if make_fixtures.py --full was not run."""
    torch = _torch_setup(a["threads"])
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizerFast

    torch.manual_seed(1234)
    d = a["model"]
    os.makedirs(d, exist_ok=True)
    model = CLIPModel(CLIPConfig()).eval()
    try:
        model.save_pretrained(d, safe_serialization=True)
    except TypeError:  # transformers versions without the argument always write safetensors
        model.save_pretrained(d)
    tok_src = None
    for cand in ("tests/fixtures/clip-tokenizer", "tests/fixtures/tiny-clip"):
        p = os.path.join(REPO, cand)
        if os.path.isdir(p):
            tok_src = p
            break
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                 "merges.txt"):
        p = os.path.join(tok_src, name)
        if os.path.exists(p):
            shutil.copy(p, d)
    if not os.path.exists(os.path.join(d, "tokenizer.json")):
        CLIPTokenizerFast.from_pretrained(tok_src).save_pretrained(d)
    CLIPImageProcessor().save_pretrained(d)
    return {"model": d}


def child_export_onnx(a: dict) -> dict:
    import numpy as np
    import onnxruntime as ort

    torch = _torch_setup(a["threads"])
    model = _load_clip(a["model"])
    size = model.config.vision_config.image_size

    class Vision(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, pixel_values):
            return _features(self.m.get_image_features(pixel_values=pixel_values))

    wrapper = Vision(model).eval()
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    path = a["onnx"]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    exporter = "dynamo"
    try:
        batch = torch.export.Dim("batch", min=1, max=1024)
        torch.onnx.export(wrapper, (x,), path, input_names=["pixel_values"],
                          output_names=["image_embeds"], opset_version=a["opset"], dynamo=True,
                          dynamic_shapes={"pixel_values": {0: batch}}, external_data=False)
    except Exception as e:  # noqa: BLE001 - fall back to the TorchScript exporter
        print(f"dynamo export failed ({type(e).__name__}: {e}); using the TorchScript exporter",
              file=sys.stderr)
        exporter = "torchscript"
        torch.onnx.export(wrapper, (x,), path, input_names=["pixel_values"],
                          output_names=["image_embeds"], opset_version=a["opset"], dynamo=False,
                          dynamic_axes={"pixel_values": {0: "batch"}, "image_embeds": {0: "batch"}})
    # Check it against PyTorch on a batch size other than the one exported with.
    xc = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ref = wrapper(xc).numpy()
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: xc.numpy()})[0]
    cos = float(np.min(np.sum(ref * got, 1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))))
    diff = float(np.max(np.abs(ref - got)))
    if cos < 0.9999:
        raise SystemExit(f"ONNX export disagrees with PyTorch: min cosine {cos}")
    return {"exporter": exporter, "opset": a["opset"], "min_cosine_vs_torch": cos, "max_abs_diff": diff}


def child_quantize_onnx(a: dict) -> dict:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(a["onnx"], a["out"], weight_type=QuantType.QInt8)
    return {"out": a["out"]}


CHILDREN = {
    "torch-e2e": child_torch_e2e,
    "torch-encoder": child_torch_encoder,
    "ort-encoder": child_ort_encoder,
    "ov-encoder": child_ov_encoder,
    "quantize-onnx": child_quantize_onnx,
    "torch-text": child_torch_text,
    "make-model": child_make_model,
    "export-onnx": child_export_onnx,
}


# ----------------------------------------------------------------------------------------------
# Running subprocesses with per-process peak RSS
# ----------------------------------------------------------------------------------------------


def loadavg() -> list[float]:
    try:
        with open("/proc/loadavg") as f:
            return [float(v) for v in f.read().split()[:3]]
    except OSError:
        return []


def run_proc(cmd: list[str], label: str, env: dict | None = None, cwd: str = REPO) -> dict:
    """Runs cmd, returns wall seconds, peak RSS (MiB), exit status, stdout and stderr."""
    os.makedirs(OUT_DIR, exist_ok=True)
    out_path = os.path.join(OUT_DIR, "last.stdout")
    err_path = os.path.join(OUT_DIR, "last.stderr")
    full_env = dict(os.environ, **(env or {}))
    la = loadavg()
    with open(out_path, "wb") as fo, open(err_path, "wb") as fe:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=fo, stderr=fe, env=full_env, cwd=cwd)
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)  # already reaped; keep Popen quiet
    with open(out_path, encoding="utf-8", errors="replace") as f:
        stdout = f.read()
    with open(err_path, encoding="utf-8", errors="replace") as f:
        stderr = f.read()
    r = {"label": label, "cmd": cmd, "rc": p.returncode, "wall_s": wall,
         "peak_rss_mib": ru.ru_maxrss / 1024.0, "user_s": ru.ru_utime, "sys_s": ru.ru_stime,
         "loadavg_before": la, "stdout": stdout, "stderr": stderr}
    if p.returncode != 0:
        sys.stderr.write(f"\n[{label}] FAILED (exit {p.returncode}): {' '.join(cmd)}\n{stderr[-4000:]}\n")
        raise SystemExit(1)
    return r


def last_json(stdout: str) -> dict:
    for ln in reversed(stdout.strip().splitlines()):
        ln = ln.strip()
        if ln.startswith("{"):
            return json.loads(ln)
    raise ValueError(f"no JSON line in output: {stdout[-500:]!r}")


def run_child(kind: str, args: dict, label: str, threads: int) -> dict:
    env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "TOKENIZERS_PARALLELISM": "false", "PYTHONDONTWRITEBYTECODE": "1"}
    r = run_proc([sys.executable, os.path.abspath(__file__), "--child", kind, "--child-args",
                  json.dumps(args)], label, env)
    r["result"] = last_json(r["stdout"])
    return r


def _child_main(kind: str, args_json: str) -> None:
    res = CHILDREN[kind](json.loads(args_json))
    print(json.dumps(res), flush=True)


# ----------------------------------------------------------------------------------------------
# Setup: images, model, ONNX, binaries
# ----------------------------------------------------------------------------------------------


def make_photo(rng, w: int, h: int):
    """A photographic-looking RGB image: smooth colour gradients, soft shapes, texture, noise."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    def field(gw, gh, scale):
        small = rng.uniform(0, 255, (gh, gw, 3)).astype(np.uint8)
        return np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC), np.float32) * scale

    # sky/ground-like gradients: a vertical ramp between two colours plus a low-frequency field
    top, bottom = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    t = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    base = (1 - t) * top + t * bottom
    base = 0.6 * base + field(int(rng.integers(2, 6)), int(rng.integers(2, 5)), 0.4)
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    # objects: soft-edged, shaded ellipses, rectangles and polygons, some translucent
    for _ in range(int(rng.integers(6, 18))):
        mask = Image.new("L", (w, h), 0)
        d = ImageDraw.Draw(mask)
        alpha = int(rng.integers(140, 256))
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        rx, ry = rng.uniform(0.03, 0.3) * w, rng.uniform(0.03, 0.3) * h
        kind = rng.integers(0, 3)
        if kind == 0:
            d.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=alpha)
        elif kind == 1:
            d.rectangle([cx - rx, cy - ry, cx + rx, cy + ry], fill=alpha)
        else:
            n = int(rng.integers(3, 8))
            ang = np.sort(rng.uniform(0, 2 * np.pi, n))
            d.polygon([(cx + rx * np.cos(a), cy + ry * np.sin(a)) for a in ang], fill=alpha)
        mask = mask.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.8, 3.0))))
        shade = 0.7 + field(int(rng.integers(2, 4)), int(rng.integers(2, 4)), 0.6 / 255)[..., :1]
        colour = np.clip(rng.uniform(0, 255, 3) * shade, 0, 255).astype(np.uint8)
        img = Image.composite(Image.fromarray(colour), img, mask)
    # texture (fine, smooth random detail), a little depth-of-field blur, then sensor noise
    small = rng.normal(0, 1, (max(2, h // 3), max(2, w // 3), 1)).astype(np.float32)
    small = np.repeat((small * 40 + 128).clip(0, 255).astype(np.uint8), 3, axis=2)
    tex = Image.fromarray(small).resize((w, h), Image.BICUBIC).filter(ImageFilter.GaussianBlur(1.5))
    arr = np.asarray(img, np.float32) + 0.5 * (np.asarray(tex, np.float32) - 128)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.2))))
    arr = np.asarray(img, np.float32) + rng.normal(0, rng.uniform(2, 6), (h, w, 1)).astype(np.float32)
    arr += rng.normal(0, 1.5, (h, w, 3)).astype(np.float32)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def image_size(rng) -> tuple[int, int]:
    """Camera-like sizes from 500x375 to 1600x1200: the long side 500..1600, aspect 4:3 mostly,
    some 3:2 and 16:9 (the short side at least 375), a quarter of them portrait."""
    long = int(rng.integers(500, 1601))
    aspect = [4 / 3, 4 / 3, 3 / 2, 16 / 9][int(rng.integers(0, 4))]
    short = max(375, round(long / aspect))
    return (short, long) if rng.uniform() < 0.25 else (long, short)


def ensure_images(n: int) -> list[str]:
    """img_0000.jpg ... in scratch/bench-images/; each from its own seed, so any prefix is stable."""
    import numpy as np

    os.makedirs(IMG_DIR, exist_ok=True)
    paths, made = [], 0
    t0 = time.perf_counter()
    for i in range(n):
        p = os.path.join(IMG_DIR, f"img_v{IMAGE_VERSION}_{i:05d}.jpg")
        if not os.path.exists(p):
            rng = np.random.default_rng(IMAGE_SEED + i)
            w, h = image_size(rng)
            tmp = p + ".tmp"
            make_photo(rng, w, h).save(tmp, "JPEG", quality=90)
            os.replace(tmp, p)
            made += 1
            if made % 25 == 0:
                print(f"  made {made} images ({time.perf_counter() - t0:.0f} s)", flush=True)
        paths.append(p)
    if made:
        print(f"  made {made} JPEGs in {IMG_DIR} ({time.perf_counter() - t0:.0f} s)")
    return paths


def describe_images(paths: list[str]) -> dict:
    from PIL import Image

    sizes = []
    for p in paths:
        with Image.open(p) as im:
            sizes.append(im.size)
    px = [w * h for w, h in sizes]
    return {"count": len(paths), "min": min(sizes, key=lambda s: s[0] * s[1]),
            "max": max(sizes, key=lambda s: s[0] * s[1]),
            "mean_megapixels": sum(px) / len(px) / 1e6,
            "mean_kib": sum(os.path.getsize(p) for p in paths) / len(paths) / 1024}


def ensure_model(threads: int, arch: str) -> dict:
    needed = ["config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json"]
    if all(os.path.exists(os.path.join(MODEL_DIR, f)) for f in needed):
        return {"model": MODEL_DIR, "made": False}
    if arch != "b32":
        print(f"  no complete {MODEL_DIR}: making a random {arch} (scripts/make_random_clip.py)")
        subprocess.run([sys.executable, os.path.join(HERE, "make_random_clip.py"), "--arch", arch,
                        "--out", MODEL_DIR], cwd=REPO, check=True)
        return {"model": MODEL_DIR, "made": True}
    print(f"  no complete {MODEL_DIR}: making a random ViT-B/32 (CLIPConfig(), seed 1234)")
    run_child("make-model", {"model": MODEL_DIR, "threads": threads}, "make-model", threads)
    return {"model": MODEL_DIR, "made": True}


def ensure_onnx(threads: int, opset: int) -> dict:
    st = os.stat(os.path.join(MODEL_DIR, "model.safetensors"))
    stamp = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "opset": opset}
    path = os.path.join(ONNX_DIR, "vision.onnx")
    stamp_path = os.path.join(ONNX_DIR, "stamp.json")
    if os.path.exists(path) and os.path.exists(stamp_path):
        with open(stamp_path) as f:
            old = json.load(f)
        if old.get("source") == stamp:
            return dict(old["export"], path=path, reused=True)
    print("  exporting the vision tower + projection to ONNX ...", flush=True)
    r = run_child("export-onnx", {"model": MODEL_DIR, "onnx": path, "opset": opset, "threads": threads},
                  "export-onnx", threads)
    with open(stamp_path, "w") as f:
        json.dump({"source": stamp, "export": r["result"]}, f)
    return dict(r["result"], path=path, reused=False)


def build_binaries() -> None:
    print("  cargo build --release --bin cliplabel --example bench_encoder", flush=True)
    subprocess.run(["cargo", "build", "--release", "--bin", "cliplabel", "--example", "bench_encoder"],
                   cwd=REPO, check=True)


def _version(pkg: str) -> str | None:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info(threads: int) -> dict:
    cpu = platform.processor() or "?"
    flags = set()
    try:
        with open("/proc/cpuinfo") as f:
            for ln in f:
                if ln.startswith("model name") and cpu in ("?", "", platform.machine()):
                    cpu = ln.split(":", 1)[1].strip()
                if ln.startswith("flags") and not flags:
                    flags = set(ln.split(":", 1)[1].split())
    except OSError:
        pass
    rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()
    candle = None
    try:
        with open(os.path.join(REPO, "Cargo.lock")) as f:
            m = re.search(r'name = "candle-core"\nversion = "([^"]+)"', f.read())
            candle = m.group(1) if m else None
    except OSError:
        pass
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "threads": threads,
        "simd": sorted(f for f in flags if f in ("avx", "avx2", "fma", "avx512f", "avx512_vnni",
                                                   "avx512_bf16", "amx_tile", "f16c")),
        "mem_total_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "torch": _version("torch"),
        "transformers": _version("transformers"),
        "onnxruntime": _version("onnxruntime"),
        "onnx": _version("onnx"),
        "pillow": _version("pillow"),
        "numpy": _version("numpy"),
        "rustc": rustc,
        "candle": candle,
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
    }


# ----------------------------------------------------------------------------------------------
# The benchmark
# ----------------------------------------------------------------------------------------------

SUMMARY_RE = re.compile(r"(\d+) images embedded, (\d+) failed")


def task_cliplabel_e2e(paths_file, n, b, t, precision="fp32"):
    def run():
        out = os.path.join(OUT_DIR, f"cliplabel-e2e-{precision}.safetensors")
        with open(paths_file) as f:
            paths = [ln.rstrip("\n") for ln in f if ln.strip()]
        r = run_proc([CLIPLABEL, "embed", "--model", MODEL_DIR, "--out", out, "--batch-size", str(b),
                      "--threads", str(t), "--precision", precision, *paths],
                     f"cliplabel e2e n={n} b={b} {precision}")
        m = SUMMARY_RE.search(r["stderr"])
        if not m or int(m.group(1)) != n or int(m.group(2)) != 0:
            raise SystemExit(f"cliplabel embed did not embed {n} images:\n{r['stderr'][-2000:]}")
        r["result"] = {"images": n, "summary": r["stderr"].strip().splitlines()[-1]}
        return r
    return run


def task_torch_e2e(paths_file, n, b, t, workers=0):
    def run():
        return run_child("torch-e2e", {"model": MODEL_DIR, "list": paths_file, "batch": b, "threads": t,
                                       "workers": workers,
                                       "out": os.path.join(OUT_DIR, "torch-e2e.safetensors")},
                         f"transformers e2e n={n} b={b} workers={workers}", t)
    return run


def task_cliplabel_encoder(b, t, images, min_iters, precision="fp32"):
    iters = max(min_iters, -(-images // b))

    def run():
        r = run_proc([BENCH_ENCODER, MODEL_DIR, "--batch", str(b), "--iters", str(iters), "--threads", str(t),
                      "--precision", precision], f"cliplabel encoder b={b} {precision}")
        r["result"] = last_json(r["stdout"])
        return r
    return run


def task_py_encoder(kind, b, t, images, min_iters, onnx_path=None, **extra):
    def run():
        return run_child(kind, {"model": MODEL_DIR, "onnx": onnx_path, "batch": b, "threads": t,
                                "images": images, "min_iters": min_iters, **extra},
                         f"{kind} b={b} {extra or ''}", t)
    return run


def ensure_onnx_int8(onnx_info: dict, threads: int) -> str:
    """ONNX Runtime's dynamic int8 quantisation of the exported graph (QInt8 weights, per-tensor
    scales, activations quantised per batch at run time), made once, in a child process: done
    here it would leave this process 1.4 GB larger, and every child forked afterwards would
    report that as its peak RSS (Linux counts the memory a child had between fork and exec)."""
    path = os.path.join(ONNX_DIR, "vision-int8.onnx")
    if not (onnx_info.get("reused") and os.path.exists(path)):
        run_child("quantize-onnx", {"onnx": onnx_info["path"], "out": path}, "quantize-onnx", threads)
    return path


def task_cliplabel_text(classes_file, n_classes, tb, t):
    def run():
        r = run_proc([BENCH_ENCODER, MODEL_DIR, "--text", "--classes", classes_file, "--num-classes",
                      str(n_classes), "--templates", TEMPLATES, "--text-batch", str(tb), "--threads", str(t)],
                     f"cliplabel text classes={n_classes}")
        r["result"] = last_json(r["stdout"])
        return r
    return run


def task_torch_text(padding, n_classes, tb, t):
    def run():
        return run_child("torch-text", {"model": MODEL_DIR, "classes": n_classes, "batch": tb,
                                        "padding": padding, "threads": t},
                         f"transformers text {padding} classes={n_classes}", t)
    return run


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, digits=1):
    if x is None:
        return "–"
    return f"{x:.{digits}f}"


def ratio(a, b):
    return a / b if a is not None and b not in (None, 0) else None


def run_benchmark(args) -> None:
    threads = args.threads
    print("setup", flush=True)
    if not args.no_build:
        build_binaries()
    model_info = ensure_model(threads, args.arch)
    paths = ensure_images(args.images)
    os.makedirs(OUT_DIR, exist_ok=True)
    paths_file = os.path.join(OUT_DIR, f"images-{args.images}.txt")
    with open(paths_file, "w") as f:
        f.write("\n".join(paths) + "\n")
    one_file = os.path.join(OUT_DIR, "images-1.txt")
    with open(one_file, "w") as f:
        f.write(paths[0] + "\n")
    classes_file = os.path.join(OUT_DIR, "classes.txt")
    with open(classes_file, "w") as f:
        f.write("\n".join(class_names(max(args.text_classes, args.pad77_classes))) + "\n")
    sections = set(args.sections.split(","))
    onnx_info = ensure_onnx(threads, args.opset) if "encoder" in sections else None
    info = machine_info(threads)
    info["loadavg_start"] = loadavg()
    n = len(paths)
    bs = args.batch_sizes

    # (section, contender, key, task, repeats)
    tasks = []
    if "e2e" in sections:
        tasks.append(("e2e", "cliplabel", "startup", task_cliplabel_e2e(one_file, 1, bs[0], threads)))
        tasks.append(("e2e", "transformers", "startup", task_torch_e2e(one_file, 1, bs[0], threads)))
        tasks.append(("e2e", "transformers-dataloader", "startup",
                      task_torch_e2e(one_file, 1, bs[0], threads, workers=threads)))
        lowp = ("bf16", "int8") if args.precisions else ()
        for p in lowp:
            tasks.append(("e2e", f"cliplabel-{p}", "startup", task_cliplabel_e2e(one_file, 1, bs[0], threads, p)))
        for b in bs:
            tasks.append(("e2e", "cliplabel", b, task_cliplabel_e2e(paths_file, n, b, threads)))
            for p in lowp:
                tasks.append(("e2e", f"cliplabel-{p}", b, task_cliplabel_e2e(paths_file, n, b, threads, p)))
            tasks.append(("e2e", "transformers", b, task_torch_e2e(paths_file, n, b, threads)))
            tasks.append(("e2e", "transformers-dataloader", b,
                          task_torch_e2e(paths_file, n, b, threads, workers=threads)))
    if "encoder" in sections:
        for b in bs:
            tasks.append(("encoder", "cliplabel", b,
                          task_cliplabel_encoder(b, threads, args.encoder_images, args.min_iters)))
            tasks.append(("encoder", "pytorch", b,
                          task_py_encoder("torch-encoder", b, threads, args.encoder_images, args.min_iters)))
            tasks.append(("encoder", "onnxruntime", b,
                          task_py_encoder("ort-encoder", b, threads, args.encoder_images, args.min_iters,
                                          onnx_info["path"])))
            if args.precisions:
                ei, mi = args.encoder_images, args.min_iters
                tasks += [
                    ("encoder", "cliplabel bf16", b, task_cliplabel_encoder(b, threads, ei, mi, "bf16")),
                    ("encoder", "cliplabel int8", b, task_cliplabel_encoder(b, threads, ei, mi, "int8")),
                    ("encoder", "pytorch bf16", b, task_py_encoder("torch-encoder", b, threads, ei, mi, bf16=True)),
                    ("encoder", "onnxruntime int8", b,
                     task_py_encoder("ort-encoder", b, threads, ei, mi, ensure_onnx_int8(onnx_info, threads))),
                    ("encoder", "openvino f32", b,
                     task_py_encoder("ov-encoder", b, threads, ei, mi, onnx_info["path"], precision="f32")),
                    ("encoder", "openvino bf16", b,
                     task_py_encoder("ov-encoder", b, threads, ei, mi, onnx_info["path"], precision="bf16")),
                ]
    text_tasks = []
    if "text" in sections:
        text_tasks = [
            ("text", "cliplabel", "shared prefixes once, sorted, pad to longest",
             task_cliplabel_text(classes_file, args.text_classes, args.text_batch, threads)),
            ("text", "transformers", "padding=True (longest)",
             task_torch_text("longest", args.text_classes, args.text_batch, threads)),
            ("text", "transformers", "padding=True, prompts sorted by length",
             task_torch_text("sorted", args.text_classes, args.text_batch, threads)),
            ("text", "transformers", "padding=max_length (77)",
             task_torch_text("max_length", args.pad77_classes, args.text_batch, threads)),
        ]

    runs = []
    t_start = time.perf_counter()
    for rep in range(args.repeats):
        todo = tasks + (text_tasks if rep < args.text_repeats else [])
        k = rep % max(1, len(todo))
        todo = todo[k:] + todo[:k]  # rotate the order each repeat
        for section, who, key, fn in todo:
            print(f"[repeat {rep + 1}/{args.repeats}] {section} {who} {key} ...", end=" ", flush=True)
            r = fn()
            r.update(section=section, contender=who, key=key, repeat=rep)
            runs.append(r)
            print(f"{r['wall_s']:.1f} s, {r['peak_rss_mib']:.0f} MiB", flush=True)
    info["loadavg_end"] = loadavg()
    info["bench_seconds"] = time.perf_counter() - t_start

    results = summarise(runs, args, n, bs)
    results.update(machine=info, model=model_info, onnx=onnx_info,
                   images=describe_images(paths),
                   settings={k: v for k, v in vars(args).items() if not k.startswith("child")})
    md = render(results, info, args)
    for r in runs:  # keep the JSON readable: only the tail of the logs, no long path lists
        if len(r["cmd"]) > 24:
            r["cmd"] = r["cmd"][:16] + [f"... ({len(r['cmd']) - 16} more arguments)"]
        r["stdout"] = r["stdout"][-2000:]
        r["stderr"] = r["stderr"][-2000:]
    results["runs"] = runs
    stem = "bench-results-quick" if args.quick else "bench-results"
    if args.arch != "b32":
        stem += f"-{args.arch}"
    with open(os.path.join(SCRATCH, stem + ".md"), "w") as f:
        f.write(md)
    with open(os.path.join(SCRATCH, stem + ".json"), "w") as f:
        json.dump(results, f, indent=1, default=str)
    print()
    print(md)
    print(f"written: scratch/{stem}.md, scratch/{stem}.json")


ENCODER_CONTENDERS = ("cliplabel", "pytorch", "onnxruntime", "cliplabel bf16", "cliplabel int8",
                      "pytorch bf16", "onnxruntime int8", "openvino f32", "openvino bf16")


def summarise(runs, args, n, bs) -> dict:
    def pick(section, who, key):
        return [r for r in runs if r["section"] == section and r["contender"] == who and r["key"] == key]

    out = {"e2e": {}, "encoder": {}, "text": {}}
    # end to end
    for who in ("cliplabel", "cliplabel-bf16", "cliplabel-int8", "transformers", "transformers-dataloader"):
        start = pick("e2e", who, "startup")
        if not start:
            continue
        rows = {}
        for b in bs:
            rs = pick("e2e", who, b)
            wall, steady, loop = [], [], []
            s1 = med([x["wall_s"] for x in start])  # start-up + load + 1 image, median of repeats
            for r in rs:
                wall.append(n / r["wall_s"])
                d = r["wall_s"] - s1
                steady.append((n - 1) / d if d and d > 0 and n > 1 else None)
                loop.append(r["result"].get("loop_images_per_s"))
            rows[b] = {"wall_images_per_s": med(wall), "steady_images_per_s": med(steady),
                       "loop_images_per_s": med(loop), "peak_rss_mib": med([r["peak_rss_mib"] for r in rs]),
                       "wall_s": med([r["wall_s"] for r in rs]), "runs": len(rs)}
        out["e2e"][who] = {"by_batch": rows,
                           "startup_wall_s": med([r["wall_s"] for r in start]),
                           "startup_rss_mib": med([r["peak_rss_mib"] for r in start])}
        best = max(rows, key=lambda b: rows[b]["steady_images_per_s"] or 0)
        out["e2e"][who]["best_batch"] = best
    # encoder
    for who in ENCODER_CONTENDERS:
        rows = {}
        for b in bs:
            rs = pick("encoder", who, b)
            if rs:
                rows[b] = {"images_per_s": med([r["result"]["images_per_s"] for r in rs]),
                           "peak_rss_mib": med([r["peak_rss_mib"] for r in rs]), "runs": len(rs)}
        if rows:
            best = max(rows, key=lambda b: rows[b]["images_per_s"])
            out["encoder"][who] = {"by_batch": rows, "best_batch": best}
    # text
    for who, key in (("cliplabel", "shared prefixes once, sorted, pad to longest"), ("transformers", "padding=True (longest)"),
                     ("transformers", "padding=True, prompts sorted by length"),
                     ("transformers", "padding=max_length (77)")):
        rs = pick("text", who, key)
        if rs:
            res = [r["result"] for r in rs]
            pps = med([x["prompts_per_s"] for x in res])
            out["text"][f"{who}: {key}"] = {
                "prompts": res[0]["prompts"], "prompts_per_s": pps,
                "seconds_for_full_set": (args.text_classes * len(read_templates())) / pps,
                "extrapolated": res[0]["prompts"] != args.text_classes * len(read_templates()),
                "mean_tokens": med([x.get("mean_padded_tokens", x.get("mean_tokens")) for x in res]),
                "peak_rss_mib": med([r["peak_rss_mib"] for r in rs]), "runs": len(rs)}
    return out


def render(res, info, args) -> str:
    L = []
    L.append(f"## cliplabel vs Python on {info['cpu']} ({info['usable_cpus']} usable cores, "
             f"threads = {info['threads']})")
    L.append("")
    L.append(f"{info['date']}; torch {info['torch']}, transformers {info['transformers']}, onnxruntime "
             f"{info['onnxruntime']}, Pillow {info['pillow']}, {info['rustc']}, candle {info['candle']}; "
             f"SIMD {', '.join(info['simd'])}; load average at start {info['loadavg_start']}, at end "
             f"{info['loadavg_end']}. Random full-size ViT-B/32, fp32. Medians of {args.repeats} "
             f"interleaved repeats (text: {min(args.text_repeats, args.repeats)}). "
             f"Ratios: cliplabel's rate / the other's.")
    # Only the load before the benchmark starts says whether something else was running: the
    # load at the end includes the benchmark's own contenders, which keep every core busy.
    la = info["loadavg_start"][:1]
    if la and max(la) > 0.5 * info["usable_cpus"]:
        L.append("")
        L.append(f"**Warning: the machine was busy before the benchmark started (load average "
                 f"{max(la):.1f} on {info['usable_cpus']} cores); these timings are disturbed.**")
    if args.quick:
        L.append("")
        L.append("**--quick: smoke-test counts, not a measurement.**")
    L.append("")
    e2e, enc, txt = res["e2e"], res["encoder"], res["text"]
    # headline
    L.append("| measure | cliplabel | PyTorch | ONNX Runtime | cliplabel/PyTorch | cliplabel/ORT |")
    L.append("|---|---:|---:|---:|---:|---:|")
    if "cliplabel" in e2e and "transformers" in e2e:
        c, p = e2e["cliplabel"], e2e["transformers"]
        cb, pb = c["by_batch"][c["best_batch"]], p["by_batch"][p["best_batch"]]
        L.append(f"| end-to-end images/s, steady (best batch: {c['best_batch']} / {p['best_batch']}) | "
                 f"{fmt(cb['steady_images_per_s'])} | {fmt(pb['steady_images_per_s'])} | | "
                 f"{fmt(ratio(cb['steady_images_per_s'], pb['steady_images_per_s']), 2)} | |")
        cw = max(c["by_batch"].values(), key=lambda r: r["wall_images_per_s"])
        pw = max(p["by_batch"].values(), key=lambda r: r["wall_images_per_s"])
        L.append(f"| end-to-end images/s, whole process ({res['images']['count']} images) | "
                 f"{fmt(cw['wall_images_per_s'])} | {fmt(pw['wall_images_per_s'])} | | "
                 f"{fmt(ratio(cw['wall_images_per_s'], pw['wall_images_per_s']), 2)} | |")
        L.append(f"| end-to-end peak RSS, MiB | {fmt(cb['peak_rss_mib'], 0)} | {fmt(pb['peak_rss_mib'], 0)} "
                 f"| | {fmt(ratio(cb['peak_rss_mib'], pb['peak_rss_mib']), 2)} | |")
    if enc:
        def best(who):
            e = enc.get(who)
            return (e["by_batch"][e["best_batch"]], e["best_batch"]) if e else (None, None)
        (c, cb), (p, pb), (o, ob) = best("cliplabel"), best("pytorch"), best("onnxruntime")
        g = lambda r, k: r[k] if r else None  # noqa: E731
        L.append(f"| encoder-only images/s (best batch: {cb} / {pb} / {ob}) | {fmt(g(c, 'images_per_s'))} | "
                 f"{fmt(g(p, 'images_per_s'))} | {fmt(g(o, 'images_per_s'))} | "
                 f"{fmt(ratio(g(c, 'images_per_s'), g(p, 'images_per_s')), 2)} | "
                 f"{fmt(ratio(g(c, 'images_per_s'), g(o, 'images_per_s')), 2)} |")
        L.append(f"| encoder-only peak RSS, MiB | {fmt(g(c, 'peak_rss_mib'), 0)} | {fmt(g(p, 'peak_rss_mib'), 0)} | "
                 f"{fmt(g(o, 'peak_rss_mib'), 0)} | | |")
    ct = txt.get("cliplabel: shared prefixes once, sorted, pad to longest")
    for key, name in (("transformers: padding=True (longest)", "padding=True"),
                      ("transformers: padding=True, prompts sorted by length", "padding=True, sorted by length"),
                      ("transformers: padding=max_length (77)", "padding=max_length")):
        pt = txt.get(key)
        if ct and pt:
            L.append(f"| text prompts/s (transformers {name}) | {fmt(ct['prompts_per_s'])} | "
                     f"{fmt(pt['prompts_per_s'])} | | {fmt(ratio(ct['prompts_per_s'], pt['prompts_per_s']), 2)} | |")
    L.append("")
    if e2e:
        L.append(f"### End to end: {res['images']['count']} JPEGs on disk -> embeddings "
                 f"({res['images']['min'][0]}x{res['images']['min'][1]} to {res['images']['max'][0]}x"
                 f"{res['images']['max'][1]}, mean {res['images']['mean_megapixels']:.2f} MP)")
        L.append("")
        L.append("| contender | batch | steady images/s | whole-process images/s | in-loop images/s | "
                 "wall s | peak RSS MiB |")
        L.append("|---|---:|---:|---:|---:|---:|---:|")
        for who, name in (("cliplabel", "cliplabel embed"),
                          ("cliplabel-bf16", "cliplabel embed --precision bf16"),
                          ("cliplabel-int8", "cliplabel embed --precision int8"),
                          ("transformers", "transformers (Pillow processor + get_image_features)"),
                          ("transformers-dataloader",
                           f"transformers, Pillow in a DataLoader with {args.threads} workers")):
            if who not in e2e:
                continue
            for b, r in e2e[who]["by_batch"].items():
                L.append(f"| {name} | {b} | {fmt(r['steady_images_per_s'])} | {fmt(r['wall_images_per_s'])} | "
                         f"{fmt(r['loop_images_per_s'])} | {fmt(r['wall_s'])} | {fmt(r['peak_rss_mib'], 0)} |")
            L.append(f"| {name}, 1 image (start-up + load) | | | | | {fmt(e2e[who]['startup_wall_s'])} | "
                     f"{fmt(e2e[who]['startup_rss_mib'], 0)} |")
        L.append("")
    if enc:
        L.append("### Encoder only (random normalised pixels, projected features)")
        L.append("")
        L.append("| batch | cliplabel | PyTorch | ONNX Runtime | cliplabel/PyTorch | cliplabel/ORT | "
                 "RSS MiB cliplabel / PyTorch / ORT |")
        L.append("|---:|---:|---:|---:|---:|---:|---|")
        for b in args.batch_sizes:
            r = {w: enc.get(w, {}).get("by_batch", {}).get(b) for w in ("cliplabel", "pytorch", "onnxruntime")}
            v = {w: (x["images_per_s"] if x else None) for w, x in r.items()}
            m = " / ".join(fmt(x["peak_rss_mib"], 0) if x else "–" for x in r.values())
            L.append(f"| {b} | {fmt(v['cliplabel'])} | {fmt(v['pytorch'])} | {fmt(v['onnxruntime'])} | "
                     f"{fmt(ratio(v['cliplabel'], v['pytorch']), 2)} | "
                     f"{fmt(ratio(v['cliplabel'], v['onnxruntime']), 2)} | {m} |")
        low = [w for w in ENCODER_CONTENDERS[3:] if w in enc]
        if low:
            base = {b: enc["cliplabel"]["by_batch"].get(b, {}).get("images_per_s") for b in args.batch_sizes} \
                if "cliplabel" in enc else {}
            L.append("")
            L.append("Lower precisions (images/s; in brackets: over cliplabel fp32 at the same batch; "
                     "fidelity: `scripts/bench_encoders.py`):")
            L.append("")
            L.append("| contender | " + " | ".join(f"batch {b}" for b in args.batch_sizes) + " |")
            L.append("|---|" + "---:|" * len(args.batch_sizes))
            for w in low:
                cells = []
                for b in args.batch_sizes:
                    x = enc[w]["by_batch"].get(b)
                    v = x["images_per_s"] if x else None
                    cells.append(f"{fmt(v)} ({fmt(ratio(v, base.get(b)), 2)}x)" if v else "–")
                L.append(f"| {w} | " + " | ".join(cells) + " |")
        if res.get("onnx"):
            o = res["onnx"]
            L.append("")
            L.append(f"ONNX: {o.get('exporter')} exporter, opset {o.get('opset')}, min cosine to PyTorch "
                     f"{o.get('min_cosine_vs_torch', 0):.6f}.")
        L.append("")
    if txt:
        n_t = len(read_templates())
        L.append(f"### Text: {args.text_classes} class names x {n_t} templates = "
                 f"{args.text_classes * n_t} prompts, batches of {args.text_batch}")
        L.append("")
        L.append("| contender | prompts timed | prompts/s | seconds for all prompts | mean tokens/prompt | "
                 "peak RSS MiB |")
        L.append("|---|---:|---:|---:|---:|---:|")
        for key, r in txt.items():
            extra = " (extrapolated)" if r["extrapolated"] else ""
            L.append(f"| {key} | {r['prompts']} | {fmt(r['prompts_per_s'])} | "
                     f"{fmt(r['seconds_for_full_set'])}{extra} | {fmt(r['mean_tokens'])} | "
                     f"{fmt(r['peak_rss_mib'], 0)} |")
        L.append("")
        L.append("(cliplabel's tokens are unpadded prompt lengths; transformers' include the padding.)")
        L.append("")
    L.append(f"Command: `{' '.join(['python', 'scripts/bench_vs_python.py'] + sys.argv[1:])}`")
    return "\n".join(L) + "\n"


# ----------------------------------------------------------------------------------------------
# --memory: peak RSS against the number of images
# ----------------------------------------------------------------------------------------------


def run_memory(args) -> None:
    import numpy as np

    counts = [200, 2000] if args.quick else [2000, 20000]
    if not args.no_build:
        build_binaries()
    src = os.path.join(SCRATCH, "mem-images-src")
    os.makedirs(src, exist_ok=True)
    sources = []
    for i in range(8):
        p = os.path.join(src, f"small_{i}.jpg")
        if not os.path.exists(p):
            rng = np.random.default_rng(IMAGE_SEED + 100000 + i)
            w, h = [(320, 240), (240, 320), (300, 200), (256, 256)][i % 4]
            make_photo(rng, w, h).save(p, "JPEG", quality=90)
        sources.append(p)
    rows = []
    info = machine_info(args.threads)
    info["loadavg_start"] = loadavg()
    for n in counts:
        d = os.path.join(SCRATCH, f"mem-images-{n}")
        os.makedirs(d, exist_ok=True)
        have = {f for f in os.listdir(d) if f.endswith(".jpg")}
        for i in range(n):
            name = f"m_{i:06d}.jpg"
            if name not in have:
                s = sources[i % len(sources)]
                try:
                    os.link(s, os.path.join(d, name))
                except OSError:
                    shutil.copy(s, os.path.join(d, name))
        for i in range(n, n + 10**9):  # remove extras from an earlier, larger run
            p = os.path.join(d, f"m_{i:06d}.jpg")
            if not os.path.exists(p):
                break
            os.remove(p)
        os.makedirs(OUT_DIR, exist_ok=True)
        emb_out = os.path.join(OUT_DIR, f"mem-{n}.safetensors")
        csv_out = os.path.join(OUT_DIR, f"mem-{n}.csv")
        for who, cmd in (
            ("cliplabel embed", [CLIPLABEL, "embed", "--model", TINY_MODEL, "--out", emb_out,
                                 "--threads", str(args.threads), "--quiet", d]),
            ("cliplabel label", [CLIPLABEL, "label", "--model", TINY_MODEL, "--class", "a", "--class", "b",
                                 "--no-cache", "--force", "--quiet", "--threads", str(args.threads),
                                 "--out", csv_out, d]),
        ):
            print(f"{who} on {n} images ...", end=" ", flush=True)
            r = run_proc(cmd, f"{who} {n}")
            print(f"{r['wall_s']:.1f} s, {r['peak_rss_mib']:.1f} MiB", flush=True)
            rows.append({"command": who, "images": n, "wall_s": r["wall_s"], "peak_rss_mib": r["peak_rss_mib"],
                         "images_per_s": n / r["wall_s"], "cmd": cmd})
    info["loadavg_end"] = loadavg()
    L = [f"## Peak RSS vs number of images (tiny fixture model, {info['cpu']}, threads = {args.threads})", "",
         "| command | images | peak RSS MiB | wall s | images/s |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        L.append(f"| {r['command']} | {r['images']} | {r['peak_rss_mib']:.1f} | {r['wall_s']:.1f} | "
                 f"{r['images_per_s']:.0f} |")
    L.append("")
    for who in ("cliplabel embed", "cliplabel label"):
        a, b = [r["peak_rss_mib"] for r in rows if r["command"] == who]
        L.append(f"{who}: peak RSS x{b / a:.2f} for x{counts[1] // counts[0]} images "
                 f"({b - a:+.1f} MiB).")
    la = info["loadavg_start"][:1]  # the end's load includes this benchmark's own processes
    if la and max(la) > 0.5 * info["usable_cpus"]:
        L.append("")
        L.append(f"**Warning: the machine was busy before the benchmark started (load average "
                 f"{max(la):.1f} on {info['usable_cpus']} cores); the wall times are disturbed "
                 "(peak RSS is not).**")
    L.append("")
    L.append(f"Load average at start {info['loadavg_start']}, at end {info['loadavg_end']}. "
             "Peak RSS is the process's ru_maxrss (what /usr/bin/time -v reports).")
    md = "\n".join(L) + "\n"
    with open(os.path.join(SCRATCH, "bench-memory.md"), "w") as f:
        f.write(md)
    with open(os.path.join(SCRATCH, "bench-memory.json"), "w") as f:
        json.dump({"machine": info, "rows": rows}, f, indent=1)
    print()
    print(md)
    print("written: scratch/bench-memory.md, scratch/bench-memory.json")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny counts for a smoke test")
    ap.add_argument("--memory", action="store_true", help="peak RSS of embed/label on 2,000 vs 20,000 images")
    ap.add_argument("--repeats", type=int, help="interleaved repeats (default 3; --quick 2)")
    ap.add_argument("--batch-sizes", help="comma-separated (default 8,32; --quick 2,4)")
    ap.add_argument("--images", type=int, help="JPEGs for the end-to-end runs (default 300; --quick 8)")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                    help="threads for every contender (default: usable cores)")
    ap.add_argument("--sections", default="e2e,encoder,text", help="which parts to run")
    ap.add_argument("--encoder-images", type=int, help="images per encoder-only measurement (default 96)")
    ap.add_argument("--min-iters", type=int, default=2, help="at least this many timed encoder passes")
    ap.add_argument("--text-classes", type=int, help="class names for the text benchmark (default 1000)")
    ap.add_argument("--text-repeats", type=int, default=3,
                    help="repeats that include text (default 3, capped at --repeats)")
    ap.add_argument("--arch", choices=["b32", "b16", "l14-336"], default="b32",
                    help="random full-size model: scratch/full-vit-ARCH (b16: 197 image tokens, "
                         "l14-336: 577; made by scripts/make_random_clip.py when missing)")
    ap.add_argument("--pad77-classes", type=int,
                    help="classes for transformers padding=max_length (default 100; extrapolated)")
    ap.add_argument("--text-batch", type=int, default=256, help="prompts per text batch (default 256)")
    ap.add_argument("--opset", type=int, default=18, help="ONNX opset (>= 17)")
    ap.add_argument("--no-precisions", dest="precisions", action="store_false",
                    help="skip the bf16/int8 contenders (cliplabel bf16/int8 end to end and encoder-only, "
                         "PyTorch bf16 autocast, ONNX Runtime int8, OpenVINO f32/bf16)")
    ap.add_argument("--no-build", action="store_true", help="do not run cargo build first")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--child-args", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child_main(args.child, args.child_args)
        return
    q = args.quick
    defaults = dict(repeats=(2, 3), batch_sizes=("2,4", "8,32"), images=(8, 300), encoder_images=(4, 96),
                    text_classes=(5, 1000), pad77_classes=(2, 100))
    for k, (quick_v, full_v) in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, quick_v if q else full_v)
    args.batch_sizes = [int(b) for b in str(args.batch_sizes).split(",") if b]
    args.text_repeats = min(args.text_repeats, args.repeats)
    if q:
        args.min_iters = 1
    args.pad77_classes = min(args.pad77_classes, args.text_classes)
    if args.opset < 17:
        ap.error("--opset must be at least 17")
    os.chdir(REPO)
    if args.arch != "b32":
        global MODEL_DIR, ONNX_DIR
        MODEL_DIR = os.path.join(SCRATCH, f"full-vit-{args.arch}")
        ONNX_DIR = os.path.join(SCRATCH, f"bench-onnx-{args.arch}")
    if args.memory:
        run_memory(args)
    else:
        run_benchmark(args)


if __name__ == "__main__":
    main()
