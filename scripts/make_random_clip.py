"""A random CLIP checkpoint at the full size of an OpenAI architecture, with numpy only.

For speed and fidelity checks where the real weights cannot be downloaded and torch is not
installed (scripts/bench_vs_python.py makes its own with transformers). The sizes are those of
the released checkpoints' config.json files (openai/clip-vit-base-patch32, -base-patch16,
-large-patch14-336); weights are normal with CLIP-like initialisation scales, seed 1234; the
tokenizer files come from tests/fixtures/tiny-clip, the preprocessor config is that fixture's
with the architecture's image size. Run from the repository root:

    python3 scripts/make_random_clip.py                # b32 -> scratch/full-vit-b32
    python3 scripts/make_random_clip.py --arch b16     # scratch/full-vit-b16
    python3 scripts/make_random_clip.py --arch l14-336 # scratch/full-vit-l14-336 (1.7 GB)
"""

import argparse
import json
import os
import shutil
import struct

import numpy as np

# (text width, text layers, text heads, vision width, vision layers, vision heads, patch,
#  image size, projection dim); MLPs are 4x the width.
ARCHS = {
    "b32": (512, 12, 8, 768, 12, 12, 32, 224, 512),
    "b16": (512, 12, 8, 768, 12, 12, 16, 224, 512),
    "l14-336": (768, 12, 12, 1024, 24, 16, 14, 336, 768),
}
FIXTURE = "tests/fixtures/tiny-clip"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", choices=sorted(ARCHS), default="b32")
    ap.add_argument("--out", help="directory (default scratch/full-vit-ARCH)")
    args = ap.parse_args()
    tw, tl, th, vw, vl, vh, patch, size, proj = ARCHS[args.arch]
    out = args.out or f"scratch/full-vit-{args.arch}"
    os.makedirs(out, exist_ok=True)

    cfg = json.load(open(f"{FIXTURE}/config.json"))
    cfg["projection_dim"] = proj
    cfg["initializer_factor"] = 1.0
    cfg["text_config"].update(
        hidden_size=tw, intermediate_size=4 * tw, num_attention_heads=th,
        num_hidden_layers=tl, projection_dim=proj, initializer_factor=1.0,
    )
    cfg["vision_config"].update(
        hidden_size=vw, intermediate_size=4 * vw, num_attention_heads=vh,
        num_hidden_layers=vl, projection_dim=proj, initializer_factor=1.0,
        patch_size=patch, image_size=size,
    )
    json.dump(cfg, open(f"{out}/config.json", "w"), indent=2)
    for f in ["tokenizer.json", "tokenizer_config.json"]:
        shutil.copy(f"{FIXTURE}/{f}", out)
    pre = json.load(open(f"{FIXTURE}/preprocessor_config.json"))
    pre["crop_size"] = {"height": size, "width": size}
    pre["size"] = {"shortest_edge": size}
    json.dump(pre, open(f"{out}/preprocessor_config.json", "w"), indent=2)

    rng = np.random.default_rng(1234)
    t = {}

    def normal(shape, std):
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(std)

    def ones(n):
        return np.ones(n, np.float32)

    def tower(prefix, width, layers):
        ff = 4 * width
        attn_in = width**-0.5 * (2 * layers) ** -0.5
        for i in range(layers):
            q = f"{prefix}.encoder.layers.{i}"
            for nm in ["layer_norm1", "layer_norm2"]:
                t[f"{q}.{nm}.weight"] = ones(width)
                t[f"{q}.{nm}.bias"] = normal(width, 0.02)
            for nm in ["q_proj", "k_proj", "v_proj"]:
                t[f"{q}.self_attn.{nm}.weight"] = normal((width, width), attn_in)
                t[f"{q}.self_attn.{nm}.bias"] = normal(width, 0.02)
            t[f"{q}.self_attn.out_proj.weight"] = normal((width, width), width**-0.5)
            t[f"{q}.self_attn.out_proj.bias"] = normal(width, 0.02)
            t[f"{q}.mlp.fc1.weight"] = normal((ff, width), (2 * width) ** -0.5)
            t[f"{q}.mlp.fc1.bias"] = normal(ff, 0.02)
            t[f"{q}.mlp.fc2.weight"] = normal((width, ff), attn_in)
            t[f"{q}.mlp.fc2.bias"] = normal(width, 0.02)

    t["logit_scale"] = np.array(2.6592, dtype=np.float32)
    tower("text_model", tw, tl)
    tower("vision_model", vw, vl)
    t["text_model.embeddings.position_embedding.weight"] = normal((77, tw), 0.01)
    t["text_model.embeddings.token_embedding.weight"] = normal((49408, tw), 0.02)
    t["text_model.final_layer_norm.weight"] = ones(tw)
    t["text_model.final_layer_norm.bias"] = np.zeros(tw, np.float32)
    t["text_projection.weight"] = normal((proj, tw), tw**-0.5)
    tokens = (size // patch) ** 2 + 1
    t["vision_model.embeddings.class_embedding"] = normal(vw, vw**-0.5)
    t["vision_model.embeddings.patch_embedding.weight"] = normal((vw, 3, patch, patch), 0.02)
    t["vision_model.embeddings.position_embedding.weight"] = normal((tokens, vw), 0.02)
    for nm in ["pre_layrnorm", "post_layernorm"]:
        t[f"vision_model.{nm}.weight"] = ones(vw)
        t[f"vision_model.{nm}.bias"] = np.zeros(vw, np.float32)
    t["visual_projection.weight"] = normal((proj, vw), vw**-0.5)

    header, offset = {}, 0
    for k, v in t.items():
        header[k] = {"dtype": "F32", "shape": list(v.shape), "data_offsets": [offset, offset + v.nbytes]}
        offset += v.nbytes
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(f"{out}/model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for v in t.values():
            f.write(np.ascontiguousarray(v).tobytes())
    print(f"{out}: {args.arch}, {offset / 1e6:.0f} MB of weights, {tokens} image tokens")


if __name__ == "__main__":
    main()
