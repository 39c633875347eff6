#!/usr/bin/env python3
"""Train cliplabel's demo CLIP model on generated "colour shape" images (development only).

Needs: torch, transformers 5.x, safetensors, pillow, numpy (CPU is enough), the shapes
generator (`cargo run --release --example shapes`, or a prebuilt binary via --generator),
and the real CLIP BPE vocabulary through scripts/clip_vocab.py.

    python scripts/train_demo_clip.py train            # train, save models/shapes-clip,
                                                       # evaluate, write images/ samples
    python scripts/train_demo_clip.py eval --model models/shapes-clip
    python scripts/train_demo_clip.py samples --model models/shapes-clip --out images

What `train` does, deterministically for --seed:
  1. generates training images of the 42 seen classes (the 6 held-out colour-shape
     combinations in HOLDOUT are never generated for training) and preprocesses them once
     with transformers' PIL CLIP image processor configured to the model's image size;
  2. trains a small transformers.CLIPModel from scratch with the standard CLIP contrastive
     loss (return_loss=True) on (image, caption) pairs with varied caption wording; each
     batch holds one image of every seen class (in random order), so no batch contains two
     pairs of the same class that the loss would have to push apart;
  3. saves the model with float16 weights, the real CLIP tokenizer, the preprocessor config,
     classes.txt, holdout.txt;
  4. reloads the saved directory with transformers and measures zero-shot top-1 accuracy
     with the prompt "a photo of a {}." over all 48 classes on fresh images (another seed)
     of seen and held-out classes, and on the sample images; writes the model card.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "black", "white"]
SHAPES = ["circle", "square", "triangle", "star", "cross", "ring"]
CLASSES = [f"{c} {s}" for c in COLOURS for s in SHAPES]
# One combination per shape, six different colours: every colour and every shape is still
# seen in training, just never these pairs.
HOLDOUT = ["red star", "green triangle", "blue ring", "yellow cross", "purple circle", "white square"]
EVAL_TEMPLATE = "a photo of a {}."

# Caption wording for training. {a} is the article that fits the colour ("an orange ...");
# the first template is the evaluation prompt verbatim (it always says "a").
TEMPLATES = [
    "a photo of a {c} {s}.",
    "a photo of {a} {c} {s}.",
    "a photo of the {c} {s}.",
    "{a} {c} {s} on a {bg} background",
    "{c} {s}",
    "a drawing of a {s} that is {c}",
    "a picture of {a} {c} {s}.",
    "a {s}, coloured {c}",
    "the {s} is {c}.",
    "an image showing {a} {c} {s}.",
    "{a} {c} coloured {s}",
    "a rendering of {a} {c} {s}.",
    "there is {a} {c} {s} in the picture",
    "a close-up photo of {a} {c} {s}.",
    "a {s} in {c}",
    "{c} {s} shape",
    "a simple {c} {s} icon",
    "a {c} {s} in front of a {bg} background.",
]
BACKGROUNDS = ["plain", "gradient", "noisy", "cluttered"]


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def caption(template: str, label: str, bg: str) -> str:
    c, s = label.split(" ")
    return template.format(a=article(c), c=c, s=s, bg=bg)


# ----------------------------------------------------------------------------------------
# Generator
# ----------------------------------------------------------------------------------------


def run_generator(args, out_dir: str, per_class: int, seed: int, extra: list[str]) -> list[dict]:
    if args.generator:
        cmd = [args.generator]
    else:
        cmd = ["cargo", "run", "--quiet", "--release", "--example", "shapes", "--"]
    cmd += ["--out", out_dir, "--per-class", str(per_class), "--seed", str(seed)] + extra
    print("$", " ".join(f"'{c}'" if " " in c else c for c in cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=REPO)
    with open(os.path.join(out_dir, "captions.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


# ----------------------------------------------------------------------------------------
# Model pieces
# ----------------------------------------------------------------------------------------


def make_processor(image_size: int):
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil(
        do_resize=True,
        size={"shortest_edge": image_size},
        resample=3,  # PIL BICUBIC
        do_center_crop=True,
        crop_size={"height": image_size, "width": image_size},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
        do_convert_rgb=True,
    )


def preprocess(processor, paths: list[str], batch: int = 256):
    import torch
    from PIL import Image

    out = []
    for i in range(0, len(paths), batch):
        images = []
        for p in paths[i : i + batch]:
            with Image.open(p) as im:
                im.load()
                images.append(im.copy())
        px = processor(images=images, return_tensors="pt")["pixel_values"]
        out.append(px.to(torch.float16))
    return torch.cat(out)


def make_config(a):
    from transformers import CLIPConfig

    text = dict(
        vocab_size=49408,
        hidden_size=a.text_width,
        intermediate_size=a.text_width * 4,
        num_hidden_layers=a.text_layers,
        num_attention_heads=a.text_width // 32,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
        projection_dim=a.projection_dim,
    )
    vision = dict(
        image_size=a.image_size,
        patch_size=a.patch_size,
        num_channels=3,
        hidden_size=a.vision_width,
        intermediate_size=a.vision_width * 4,
        num_hidden_layers=a.vision_layers,
        num_attention_heads=a.vision_width // 32,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        projection_dim=a.projection_dim,
    )
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=a.projection_dim)


class CompactEmbedding(torch.nn.Module):
    """Stands in for the token embedding during training: a trainable copy of the rows of
    the token ids in use, so AdamW doesn't sweep all 49,408 rows every step."""

    def __init__(self, full: torch.nn.Embedding, used_ids: torch.Tensor):
        super().__init__()
        lookup = torch.full((full.num_embeddings,), -1, dtype=torch.long)
        lookup[used_ids] = torch.arange(len(used_ids))
        self.register_buffer("lookup", lookup, persistent=False)
        self.rows = torch.nn.Parameter(full.weight.detach()[used_ids].clone())

    def forward(self, ids):
        return torch.nn.functional.embedding(self.lookup[ids], self.rows)


def tokenize_all(tok, texts: list[str]):
    enc = tok(texts, padding=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


# ----------------------------------------------------------------------------------------
# Evaluation (from a saved directory, exactly as a user of transformers would)
# ----------------------------------------------------------------------------------------


def load_saved(model_dir: str):
    import torch
    from transformers import AutoTokenizer, CLIPImageProcessorPil, CLIPModel

    model = CLIPModel.from_pretrained(model_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    proc = CLIPImageProcessorPil.from_pretrained(model_dir)
    return model, tok, proc


def zero_shot_predict(model, tok, proc, paths: list[str], classes: list[str]) -> list[int]:
    import torch

    with torch.no_grad():
        enc = tok([EVAL_TEMPLATE.format(c) for c in classes], padding=True, return_tensors="pt")
        t = model.get_text_features(**enc).pooler_output
        t = t / t.norm(dim=-1, keepdim=True)
        preds = []
        for i in range(0, len(paths), 256):
            px = preprocess(proc, paths[i : i + 256]).float()
            v = model.get_image_features(pixel_values=px).pooler_output
            v = v / v.norm(dim=-1, keepdim=True)
            preds += (v @ t.T).argmax(dim=-1).tolist()
    return preds


def accuracy_report(preds, labels, classes, holdout):
    idx = {c: i for i, c in enumerate(classes)}
    seen_ok = seen_n = held_ok = held_n = 0
    per_class = {}
    for p, l in zip(preds, labels):
        ok = p == idx[l]
        per_class.setdefault(l, [0, 0])
        per_class[l][0] += ok
        per_class[l][1] += 1
        if l in holdout:
            held_ok += ok
            held_n += 1
        else:
            seen_ok += ok
            seen_n += 1
    return {
        "seen": seen_ok / max(seen_n, 1),
        "seen_n": seen_n,
        "heldout": held_ok / max(held_n, 1),
        "heldout_n": held_n,
        "per_class": {c: v[0] / v[1] for c, v in per_class.items()},
    }


def evaluate_dir(args, model_dir: str, work: str) -> dict:
    """Fresh test images of all 48 classes (seed --test-seed), zero-shot over all 48."""
    model, tok, proc = load_saved(model_dir)
    test_dir = os.path.join(work, f"test-{args.test_seed}")
    shutil.rmtree(test_dir, ignore_errors=True)
    recs = run_generator(
        args, test_dir, args.test_per_class, args.test_seed, ["--format", "mixed", "--max-aspect", "1.5"]
    )
    paths = [os.path.join(test_dir, r["path"]) for r in recs]
    labels = [r["label"] for r in recs]
    t0 = time.time()
    preds = zero_shot_predict(model, tok, proc, paths, CLASSES)
    rep = accuracy_report(preds, labels, CLASSES, set(HOLDOUT))
    # Most common confusions on held-out images.
    conf = {}
    for p, l in zip(preds, labels):
        if l in HOLDOUT and CLASSES[p] != l:
            conf[(l, CLASSES[p])] = conf.get((l, CLASSES[p]), 0) + 1
    rep["heldout_confusions"] = sorted(conf.items(), key=lambda kv: -kv[1])[:8]
    rep["seconds"] = time.time() - t0
    print(
        f"zero-shot top-1 on {len(paths)} fresh test images (seed {args.test_seed}): "
        f"seen {100 * rep['seen']:.1f}% (n={rep['seen_n']}), "
        f"held-out {100 * rep['heldout']:.1f}% (n={rep['heldout_n']})",
        flush=True,
    )
    for c in HOLDOUT:
        print(f"  held-out {c:15s} {100 * rep['per_class'][c]:5.1f}%")
    worst = sorted((v, c) for c, v in rep["per_class"].items() if c not in HOLDOUT)[:5]
    print("  weakest seen:", ", ".join(f"{c} {100 * v:.0f}%" for v, c in worst))
    if rep["heldout_confusions"]:
        print("  held-out confusions:", ", ".join(f"{a}->{b} x{n}" for (a, b), n in rep["heldout_confusions"]))
    return rep


# ----------------------------------------------------------------------------------------
# Samples (images/)
# ----------------------------------------------------------------------------------------


def make_samples(args, out_dir: str, work: str) -> list[tuple[str, str, bool]]:
    """args.samples_seen images of distinct seen classes + args.samples_heldout of held-out
    classes, mixed png/jpg, shuffled, named img_000.<ext> ..."""
    rng = np.random.default_rng(args.samples_seed)
    tmp = os.path.join(work, f"samples-{args.samples_seed}")
    shutil.rmtree(tmp, ignore_errors=True)
    recs = run_generator(
        args, tmp, 2, args.samples_seed, ["--format", "mixed", "--max-aspect", "1.5"]
    )
    by_class = {}
    for r in recs:
        by_class.setdefault(r["label"], []).append(r)
    seen = [c for c in CLASSES if c not in HOLDOUT]
    chosen = [by_class[c][0] for c in rng.choice(seen, size=args.samples_seen, replace=False)]
    held = [by_class[c][k] for k in range(2) for c in HOLDOUT][: args.samples_heldout]
    picks = chosen + held
    order = rng.permutation(len(picks))
    os.makedirs(out_dir, exist_ok=True)
    for name in os.listdir(out_dir):  # replace earlier samples only
        if name.startswith("img_"):
            os.remove(os.path.join(out_dir, name))
    rows = []
    for n, i in enumerate(order):
        r = picks[i]
        ext = os.path.splitext(r["path"])[1]
        name = f"img_{n:03d}{ext}"
        shutil.copyfile(os.path.join(tmp, r["path"]), os.path.join(out_dir, name))
        rows.append((name, r["label"], r["label"] in HOLDOUT))
    with open(os.path.join(out_dir, "classes.txt"), "w", encoding="utf-8") as f:
        f.write("".join(c + "\n" for c in CLASSES))
    with open(os.path.join(out_dir, "ground_truth.csv"), "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["path", "label", "heldout"])
        for name, label, h in rows:
            w.writerow([name, label, "true" if h else "false"])
    print(f"wrote {len(rows)} sample images to {out_dir} ({sum(h for *_, h in rows)} held-out)")
    return rows


def evaluate_samples(model_dir: str, samples_dir: str) -> dict:
    model, tok, proc = load_saved(model_dir)
    with open(os.path.join(samples_dir, "ground_truth.csv"), encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    with open(os.path.join(samples_dir, "classes.txt"), encoding="utf-8") as f:
        classes = [line.strip() for line in f if line.strip()]
    paths = [os.path.join(samples_dir, r["path"]) for r in rows]
    preds = zero_shot_predict(model, tok, proc, paths, classes)
    ok = [classes[p] == r["label"] for p, r in zip(preds, rows)]
    held = [r["heldout"] == "true" for r in rows]
    rep = {
        "all": sum(ok) / len(ok),
        "n": len(ok),
        "correct": sum(ok),
        "seen_correct": sum(o for o, h in zip(ok, held) if not h),
        "seen_n": sum(not h for h in held),
        "heldout_correct": sum(o for o, h in zip(ok, held) if h),
        "heldout_n": sum(held),
        "wrong": [(r["path"], r["label"], classes[p]) for p, r, o in zip(preds, rows, ok) if not o],
    }
    print(
        f"samples in {samples_dir}: {rep['correct']}/{rep['n']} correct "
        f"(seen {rep['seen_correct']}/{rep['seen_n']}, held-out {rep['heldout_correct']}/{rep['heldout_n']})"
    )
    for w in rep["wrong"]:
        print("  wrong:", *w)
    return rep


# ----------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------


def train(args):
    import torch
    from clip_vocab import build_clip_tokenizer
    from transformers import CLIPModel

    t_start = time.time()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    rng = np.random.default_rng(args.seed)
    work = args.work
    os.makedirs(work, exist_ok=True)

    # ---- data
    train_dir = os.path.join(work, f"train-{args.seed}-{args.per_class}")
    shutil.rmtree(train_dir, ignore_errors=True)
    recs = run_generator(
        args,
        train_dir,
        args.per_class,
        args.seed,
        ["--format", "mixed", "--max-aspect", "1.3", "--holdout", ",".join(HOLDOUT)],
    )
    seen = [c for c in CLASSES if c not in HOLDOUT]
    assert sorted({r["label"] for r in recs}) == sorted(seen)
    processor = make_processor(args.image_size)
    t0 = time.time()
    pixels = preprocess(processor, [os.path.join(train_dir, r["path"]) for r in recs])
    print(f"preprocessed {len(recs)} training images to {tuple(pixels.shape)} in {time.time() - t0:.0f} s")
    by_class = [np.array([i for i, r in enumerate(recs) if r["label"] == c]) for c in seen]
    bg_of = [BACKGROUNDS.index(r["background"]) for r in recs]

    tok_dir = os.path.join(work, "tokenizer")
    tok = build_clip_tokenizer(tok_dir)
    # Every caption a training step can use, tokenized once: [template][class][background].
    texts = [caption(t, c, b) for t in TEMPLATES for c in seen for b in BACKGROUNDS]
    all_ids, all_mask = tokenize_all(tok, texts)
    print(f"{len(texts)} distinct captions, padded to {all_ids.shape[1]} tokens; e.g. {texts[3 * 4 * len(seen) + 5]!r}")

    def text_index(t, c, b):
        return (t * len(seen) + c) * len(BACKGROUNDS) + b

    # ---- model
    config = make_config(args)
    model = CLIPModel(config)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e6:.2f} M parameters")
    # Only the few dozen token ids our captions use get gradients; train just those rows
    # (the rest keep their random initialisation) so AdamW doesn't sweep 49,408 rows a step.
    used_ids = torch.unique(all_ids)
    full_embedding = model.text_model.embeddings.token_embedding
    compact = CompactEmbedding(full_embedding, used_ids)
    model.text_model.embeddings.token_embedding = compact
    print(f"{len(used_ids)} token ids in use")
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "embedding" in name or "logit_scale" in name else decay).append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.98),
        eps=1e-6,
    )
    warmup = max(1, int(args.steps * 0.05))

    def lr_at(step):
        if step < warmup:
            return args.lr * (step + 1) / warmup
        progress = (step - warmup) / max(1, args.steps - warmup)
        return args.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * progress)))

    # Per-class sampling without replacement, reshuffled when a class runs out.
    cursors = [0] * len(seen)
    perms = [rng.permutation(len(ix)) for ix in by_class]

    def next_image(c):
        if cursors[c] == len(perms[c]):
            perms[c] = rng.permutation(len(by_class[c]))
            cursors[c] = 0
        i = by_class[c][perms[c][cursors[c]]]
        cursors[c] += 1
        return i

    model.train()
    t_train = time.time()
    log_loss = 0.0
    for step in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        classes = rng.permutation(len(seen))
        img_idx = [next_image(c) for c in classes]
        tmpl = rng.integers(0, len(TEMPLATES), size=len(classes))
        tix = [text_index(t, c, bg_of[i]) for t, c, i in zip(tmpl, classes, img_idx)]
        ids, mask = all_ids[tix], all_mask[tix]
        keep = int(mask.sum(dim=1).max())
        px = pixels[img_idx].float()
        if args.flip:
            flip = torch.from_numpy(rng.random(len(classes)) < 0.5)
            px = torch.where(flip[:, None, None, None], px.flip(-1), px)
        out = model(input_ids=ids[:, :keep], attention_mask=mask[:, :keep], pixel_values=px, return_loss=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        log_loss += out.loss.item()
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            el = time.time() - t_train
            print(
                f"step {step + 1}/{args.steps} loss {log_loss / args.log_every:.3f} "
                f"lr {lr_at(step):.2e} scale {model.logit_scale.exp().item():.1f} "
                f"{el:.0f}s ({el / (step + 1) * 1000:.0f} ms/step)",
                flush=True,
            )
            log_loss = 0.0
    train_seconds = time.time() - t_train

    # ---- save (float16 weights)
    out = args.out
    os.makedirs(out, exist_ok=True)
    for name in ("model.safetensors", "config.json"):
        if os.path.exists(os.path.join(out, name)):
            os.remove(os.path.join(out, name))
    model.eval()
    with torch.no_grad():
        full_embedding.weight[used_ids] = compact.rows
    model.text_model.embeddings.token_embedding = full_embedding
    model.to(torch.float16).save_pretrained(out, safe_serialization=True)
    for name in os.listdir(tok_dir):
        shutil.copyfile(os.path.join(tok_dir, name), os.path.join(out, name))
    processor.save_pretrained(out)
    with open(os.path.join(out, "classes.txt"), "w", encoding="utf-8") as f:
        f.write("".join(c + "\n" for c in CLASSES))
    with open(os.path.join(out, "holdout.txt"), "w", encoding="utf-8") as f:
        f.write("".join(c + "\n" for c in HOLDOUT))

    # ---- evaluate the saved directory
    rep = evaluate_dir(args, out, work)
    samples = None
    if args.samples_dir:
        make_samples(args, args.samples_dir, work)
        samples = evaluate_samples(out, args.samples_dir)
    total_seconds = time.time() - t_start
    logit_scale = float(model.logit_scale.detach().float().exp())
    write_card(args, out, config, n_params, len(recs), train_seconds, total_seconds, rep, samples, logit_scale)
    sizes = {n: os.path.getsize(os.path.join(out, n)) for n in sorted(os.listdir(out))}
    print("saved", out, {k: f"{v / 1e6:.2f} MB" for k, v in sizes.items()}, f"total {sum(sizes.values()) / 1e6:.2f} MB")
    print(f"training {train_seconds / 60:.1f} min, whole run {total_seconds / 60:.1f} min")


def write_card(args, out, config, n_params, n_train, train_seconds, total_seconds, rep, samples, logit_scale):
    v, t = config.vision_config, config.text_config
    cmd = "python scripts/train_demo_clip.py train " + " ".join(
        f"--{k.replace('_', '-')} {getattr(args, k)}" for k in CARD_ARGS if getattr(args, k) != DEFAULTS[k]
    )
    per_class_lines = "\n".join(
        f"| {c} | {100 * rep['per_class'][c]:.0f}% |" for c in HOLDOUT
    )
    conf = ", ".join(f"{a} → {b} ({n})" for (a, b), n in rep["heldout_confusions"][:5]) or "none"
    samples_text = (
        f"- The {samples['n']} sample images in `images/` (generator seed {args.samples_seed}): "
        f"{samples['correct']}/{samples['n']} correct "
        f"(seen {samples['seen_correct']}/{samples['seen_n']}, held-out "
        f"{samples['heldout_correct']}/{samples['heldout_n']}).\n"
        if samples
        else ""
    )
    card = f"""---
license: mit
library_name: transformers
pipeline_tag: zero-shot-image-classification
tags: [clip, toy, synthetic, cliplabel]
---

# shapes-clip: a tiny CLIP trained on generated coloured shapes

A small `CLIPModel` trained from scratch by `scripts/train_demo_clip.py` on images drawn by
cliplabel's generator (`cargo run --release --example shapes`): one shape (circle, square,
triangle, star, cross, ring) in one colour (red, green, blue, yellow, purple, orange, black,
white) on a varied background. It exists so that cliplabel's zero-shot labelling, linear
probe and comparison can be demonstrated and tested offline; it knows nothing else.
It is an ordinary Hugging Face CLIP checkpoint (loads with `CLIPModel.from_pretrained`),
weights stored as float16 (`model.safetensors`), tokenizer = OpenAI CLIP's BPE
(`tokenizer.json`, 49,408 tokens, context 77), preprocessing = the standard CLIP recipe
(`preprocessor_config.json`: shortest edge → {v.image_size}, centre crop {v.image_size}×{v.image_size}, CLIP mean/std).

## Held-out combinations

These six colour–shape pairs never appear in training (each colour and each shape on its own
does): {", ".join(HOLDOUT)} (`holdout.txt`). `classes.txt` lists all 48 classes.

## Zero-shot accuracy

Top-1 over all 48 classes with the prompt `"{EVAL_TEMPLATE}"`, measured with transformers
(float32 compute, weights loaded from this directory's float16 file) on fresh generated
images (generator seed {args.test_seed}, {args.test_per_class} per class, mixed PNG/JPEG, aspect
ratios up to 1.5; chance ≈ 2.1%):

- Seen combinations: **{100 * rep['seen']:.1f}%** ({rep['seen_n']} images)
- Held-out combinations: **{100 * rep['heldout']:.1f}%** ({rep['heldout_n']} images)
{samples_text}
| held-out class | top-1 |
|---|---|
{per_class_lines}

Most frequent held-out confusions: {conf}.

## Model

| | vision | text |
|---|---|---|
| width | {v.hidden_size} | {t.hidden_size} |
| layers | {v.num_hidden_layers} | {t.num_hidden_layers} |
| heads | {v.num_attention_heads} | {t.num_attention_heads} |
| MLP | {v.intermediate_size} | {t.intermediate_size} |
| input | {v.image_size}×{v.image_size}, patch {v.patch_size} | ≤ {t.max_position_embeddings} tokens |

Projection dim {config.projection_dim}, `hidden_act` quick_gelu, {n_params / 1e6:.2f} M parameters
(the 49,408-row token embedding is most of them; only a few dozen rows are ever trained),
learned logit scale {logit_scale:.1f}.

## Training

```
{cmd}
```

- Data: {n_train} generated images ({args.per_class} per seen class × 42 classes; generator
  seed {args.seed}, mixed PNG/JPEG, aspect ratios up to 1.3), each preprocessed once with
  transformers' PIL CLIP image processor; {"random horizontal flips; " if args.flip else ""}captions drawn per step
  from {len(TEMPLATES)} templates (e.g. "a photo of a red circle.", "a red circle on a noisy
  background", "red circle", "a drawing of a circle that is red").
- Objective: the standard CLIP contrastive loss (`return_loss=True`). Each batch holds one
  image of each of the 42 seen classes in random order (batch size 42), so the loss never
  treats a same-class pair as a negative.
- {args.steps} steps (≈ {args.steps * 42 / n_train:.1f} epochs), AdamW (lr {args.lr}, betas
  0.9/0.98, weight decay {args.weight_decay} on matrices), 5% warm-up then cosine decay,
  gradient clipping 1.0, seed {args.seed}; deterministic for a seed.
- Hardware: {platform.processor() or platform.machine()} CPU, {args.threads} threads
  ({cpu_name()}); torch {torch_version()}, transformers {transformers_version()}.
- Time: {train_seconds / 60:.1f} min training, {total_seconds / 60:.1f} min for the whole
  script (data generation, preprocessing, training, evaluation).

## Limitations

A toy: 48 classes of synthetic images at {v.image_size}×{v.image_size}. Anything outside this domain gets
arbitrary scores.
"""
    with open(os.path.join(out, "README.md"), "w", encoding="utf-8") as f:
        f.write(card)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip() + f", {os.cpu_count()} cores"
    except OSError:
        pass
    return f"{os.cpu_count()} cores"


def torch_version() -> str:
    import torch

    return torch.__version__


def transformers_version() -> str:
    import transformers

    return transformers.__version__


# ----------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------

CARD_ARGS = [
    "seed", "per_class", "steps", "lr", "weight_decay", "image_size", "patch_size",
    "vision_width", "vision_layers", "text_width", "text_layers", "projection_dim",
    "test_seed", "test_per_class", "samples_seed",
]
DEFAULTS: dict = {}


def add_common(p):
    p.add_argument("--generator", help="path to a built shapes generator binary "
                   "(default: cargo run --release --example shapes in the repository)")
    p.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "cliplabel-demo-clip"),
                   help="scratch directory for generated images (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: on a shared 2-core machine one thread ran "
                   "about 4x faster than two)")
    p.add_argument("--test-seed", type=int, default=1001)
    p.add_argument("--test-per-class", type=int, default=50)
    p.add_argument("--samples-seed", type=int, default=2024)
    p.add_argument("--samples-seen", type=int, default=32)
    p.add_argument("--samples-heldout", type=int, default=8)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    t = sub.add_parser("train", help="train, save, evaluate, write samples and the model card")
    add_common(t)
    t.add_argument("--out", default=os.path.join(REPO, "models", "shapes-clip"))
    t.add_argument("--samples-dir", default=os.path.join(REPO, "images"),
                   help="where to write the sample images ('' to skip)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--per-class", type=int, default=600)
    t.add_argument("--steps", type=int, default=1500)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--weight-decay", type=float, default=0.05)
    t.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True,
                   help="random horizontal flips (label-preserving for these shapes)")
    t.add_argument("--image-size", type=int, default=32)
    t.add_argument("--patch-size", type=int, default=8)
    t.add_argument("--vision-width", type=int, default=128)
    t.add_argument("--vision-layers", type=int, default=4)
    t.add_argument("--text-width", type=int, default=96)
    t.add_argument("--text-layers", type=int, default=3)
    t.add_argument("--projection-dim", type=int, default=64)
    t.add_argument("--log-every", type=int, default=50)

    e = sub.add_parser("eval", help="zero-shot accuracy of a saved model on fresh images")
    add_common(e)
    e.add_argument("--model", default=os.path.join(REPO, "models", "shapes-clip"))
    e.add_argument("--samples-dir", default=os.path.join(REPO, "images"),
                   help="also evaluate on these samples ('' to skip)")

    s = sub.add_parser("samples", help="write the sample images (and evaluate a model on them)")
    add_common(s)
    s.add_argument("--out", default=os.path.join(REPO, "images"))
    s.add_argument("--model", default=os.path.join(REPO, "models", "shapes-clip"))

    args = ap.parse_args()
    if args.cmd == "train":
        for k in CARD_ARGS:
            DEFAULTS[k] = t.get_default(k)
        train(args)
    elif args.cmd == "eval":
        import torch

        torch.set_num_threads(args.threads)
        os.makedirs(args.work, exist_ok=True)
        evaluate_dir(args, args.model, args.work)
        if args.samples_dir:
            evaluate_samples(args.model, args.samples_dir)
    else:
        import torch

        torch.set_num_threads(args.threads)
        os.makedirs(args.work, exist_ok=True)
        make_samples(args, args.out, args.work)
        if args.model and os.path.exists(os.path.join(args.model, "config.json")):
            evaluate_samples(args.model, args.out)


if __name__ == "__main__":
    main()
