"""Image encoder throughput and fidelity at every precision: cliplabel vs ONNX Runtime and OpenVINO.

Development only (cliplabel and its tests never need Python). Needs numpy, onnx, onnxruntime and
openvino from PyPI, not torch: the ONNX model is written here, node by node, from the very
safetensors file cliplabel loads, so every contender runs the same weights on the same pixels.

    pip install numpy onnx onnxruntime openvino
    python3 scripts/bench_encoders.py                    # random full-size ViT-B/32, batch 32
    python3 scripts/bench_encoders.py --arch b16         # random ViT-B/16 (197 image tokens)
    python3 scripts/bench_encoders.py --arch l14-336 --batch 8 --iters 1   # 577 tokens
    python3 scripts/bench_encoders.py --quick            # smoke test (tiny fixture model)
    python3 scripts/bench_encoders.py --model DIR --batch 8 --repeats 3 --threads 2

The model is a CLIP checkpoint directory; only its vision tower and visual projection are used.
`--arch` picks scratch/full-vit-ARCH, a random checkpoint at that architecture's full size, made
by scripts/make_random_clip.py when missing.

Contenders, each in its own process, all with --threads threads:
  * cliplabel fp32 / bf16 / int8: examples/bench_encoder.rs (`Engine::embed_pixels`,
    `--precision`), the pixels read from a file; a third part forces the kernels, e.g.
    `cliplabel_int8_avx2` (int8 on the AVX2 kernels with AVX-VNNI, as on an AVX2-only CPU);
  * ONNX Runtime fp32: the exported graph, all graph optimisations, sequential execution;
  * ONNX Runtime int8: `quantize_dynamic` (QInt8 weights, per-tensor scales by default as in the
    issue's figures; `--ort-per-channel` for per-channel) on the same graph;
  * OpenVINO f32 and bf16: the same ONNX file compiled for CPU with INFERENCE_PRECISION_HINT f32
    or bf16 and the LATENCY hint.
PyTorch is not a contender here (it is not installed on this machine); scripts/bench_vs_python.py
has the PyTorch and transformers contenders.

Every contender: one untimed pass, then --iters timed passes of one batch; images/s over the
timed passes. Repeats are interleaved (each repeat runs every contender once, in an order
rotated per repeat); the table shows medians. The fidelity column is the smallest cosine, over
the batch, between a contender's features and cliplabel fp32's on the same pixels; cliplabel
fp32 against ONNX Runtime fp32 first checks that the exported graph is the same model.

Output: a Markdown table on stdout and in scratch/bench-encoders-MODEL.md, the raw runs and the
machine (CPU, load average before and after, versions) in scratch/bench-encoders-MODEL.json.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRATCH = os.path.join(REPO, "scratch")


# ---------------------------------------------------------------------------------------------
# The checkpoint and the ONNX graph


def read_safetensors(path: str) -> dict:
    import numpy as np

    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        base = 8 + n
        out = {}
        dtypes = {"F32": np.float32, "F16": np.float16}
        for name, meta in header.items():
            if name == "__metadata__":
                continue
            a, b = meta["data_offsets"]
            f.seek(base + a)
            raw = f.read(b - a)
            if meta["dtype"] == "BF16":
                u = np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16
                arr = u.view(np.float32)
            else:
                arr = np.frombuffer(raw, dtype=dtypes[meta["dtype"]]).astype(np.float32)
            out[name] = arr.reshape(meta["shape"])
    return out


def export_onnx(model_dir: str, batch: int, out_path: str) -> None:
    """The vision tower + visual projection of transformers' CLIPModel as an ONNX graph with a
    static batch: Conv patch embedding, class token, positions, pre-LN, pre-norm encoder layers
    (q scaled by head_dim**-0.5 as transformers does, quick_gelu or gelu), post-LN of the class
    token, projection. Linear layers are MatMul + Add with constant weights so that
    quantize_dynamic quantises them."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    vc = cfg["vision_config"]
    d, heads, layers = vc["hidden_size"], vc["num_attention_heads"], vc["num_hidden_layers"]
    size, patch = vc["image_size"], vc["patch_size"]
    eps = vc.get("layer_norm_eps", 1e-5)
    act = vc.get("hidden_act", "quick_gelu")
    hd = d // heads
    grid = size // patch
    tokens = grid * grid + 1
    w = read_safetensors(os.path.join(model_dir, "model.safetensors"))

    inits, nodes = [], []

    def const(name, arr):
        # (np.ascontiguousarray would turn a 0-d array into a 1-d one.)
        inits.append(numpy_helper.from_array(np.array(arr, order="C"), name))
        return name

    def shape(name, dims):
        return const(name, np.array(dims, dtype=np.int64))

    def node(op, ins, out, **kw):
        nodes.append(helper.make_node(op, ins, [out], **kw))
        return out

    def linear(x, prefix, out, bias=True, scale=None):
        wt = w[f"{prefix}.weight"].T
        b = w.get(f"{prefix}.bias") if bias else None
        if scale is not None:
            wt = wt * scale
            b = b * scale if b is not None else None
        y = node("MatMul", [x, const(f"{prefix}.wT", wt)], out + "_mm")
        if b is None:
            return node("Identity", [y], out)
        return node("Add", [y, const(f"{prefix}.b", b)], out)

    def layer_norm(x, prefix, out):
        return node(
            "LayerNormalization",
            [x, const(f"{prefix}.weight", w[f"{prefix}.weight"]), const(f"{prefix}.bias", w[f"{prefix}.bias"])],
            out,
            axis=-1,
            epsilon=eps,
        )

    vm = "vision_model"
    x = node(
        "Conv",
        ["pixel_values", const("patch_w", w[f"{vm}.embeddings.patch_embedding.weight"])],
        "patches",
        strides=[patch, patch],
    )
    x = node("Reshape", [x, shape("s_bdn", [batch, d, grid * grid])], "patches_flat")
    x = node("Transpose", [x], "patches_t", perm=[0, 2, 1])
    cls = np.broadcast_to(w[f"{vm}.embeddings.class_embedding"].reshape(1, 1, d), (batch, 1, d))
    x = node("Concat", [const("cls", cls.copy()), x], "tokens", axis=1)
    pos = w[f"{vm}.embeddings.position_embedding.weight"].reshape(1, tokens, d)
    x = node("Add", [x, const("pos", pos)], "embedded")
    x = layer_norm(x, f"{vm}.pre_layrnorm", "pre_ln")
    for i in range(layers):
        p = f"{vm}.encoder.layers.{i}"
        h = layer_norm(x, f"{p}.layer_norm1", f"l{i}_ln1")
        heads_shape = shape(f"l{i}_s_heads", [batch, tokens, heads, hd])
        q = linear(h, f"{p}.self_attn.q_proj", f"l{i}_q", scale=hd**-0.5)
        k = linear(h, f"{p}.self_attn.k_proj", f"l{i}_k")
        v = linear(h, f"{p}.self_attn.v_proj", f"l{i}_v")
        q = node("Transpose", [node("Reshape", [q, heads_shape], f"l{i}_qr")], f"l{i}_qt", perm=[0, 2, 1, 3])
        k = node("Transpose", [node("Reshape", [k, heads_shape], f"l{i}_kr")], f"l{i}_kt", perm=[0, 2, 3, 1])
        v = node("Transpose", [node("Reshape", [v, heads_shape], f"l{i}_vr")], f"l{i}_vt", perm=[0, 2, 1, 3])
        s = node("MatMul", [q, k], f"l{i}_scores")
        pr = node("Softmax", [s], f"l{i}_probs", axis=-1)
        o = node("MatMul", [pr, v], f"l{i}_ctx")
        o = node("Transpose", [o], f"l{i}_ctx_t", perm=[0, 2, 1, 3])
        o = node("Reshape", [o, shape(f"l{i}_s_merge", [batch, tokens, d])], f"l{i}_ctx_m")
        o = linear(o, f"{p}.self_attn.out_proj", f"l{i}_attn")
        x = node("Add", [x, o], f"l{i}_res1")
        h = layer_norm(x, f"{p}.layer_norm2", f"l{i}_ln2")
        h = linear(h, f"{p}.mlp.fc1", f"l{i}_fc1")
        if act == "quick_gelu":
            sg = node("Sigmoid", [node("Mul", [h, const(f"l{i}_1702", np.array(1.702, np.float32))], f"l{i}_qg_in")], f"l{i}_qg_s")
            h = node("Mul", [h, sg], f"l{i}_act")
        elif act == "gelu":
            h = node("Gelu", [h], f"l{i}_act")
        else:
            raise SystemExit(f"activation {act} not supported by this exporter")
        h = linear(h, f"{p}.mlp.fc2", f"l{i}_fc2")
        x = node("Add", [x, h], f"l{i}_out")
    c = node("Gather", [x, const("zero", np.array(0, np.int64))], "cls_out", axis=1)
    c = layer_norm(c, f"{vm}.post_layernorm", "post_ln")
    linear(c, "visual_projection", "image_embeds", bias=False)
    proj = w["visual_projection.weight"].shape[0]
    graph = helper.make_graph(
        nodes,
        "clip_vision",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, [batch, 3, size, size])],
        [helper.make_tensor_value_info("image_embeds", TensorProto.FLOAT, [batch, proj])],
        inits,
    )
    # Gelu is a standard operator from opset 20; LayerNormalization from 17.
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    m.ir_version = 9
    onnx.checker.check_model(m)
    onnx.save(m, out_path)


# ---------------------------------------------------------------------------------------------
# Contenders (each runs in a child process: `bench_encoders.py --child KIND JSON`)


def child(kind: str, a: dict) -> dict:
    import numpy as np

    x = np.fromfile(a["pixels"], dtype="<f4").reshape(a["batch"], 3, a["size"], a["size"])
    threads = a["threads"]
    if kind.startswith("ort"):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(a["onnx"], so, providers=["CPUExecutionProvider"])
        run = lambda: sess.run(None, {"pixel_values": x})[0]  # noqa: E731
    else:
        import openvino as ov

        core = ov.Core()
        hint = "bf16" if kind == "ov_bf16" else "f32"
        compiled = core.compile_model(
            a["onnx"],
            "CPU",
            {
                "INFERENCE_PRECISION_HINT": hint,
                "INFERENCE_NUM_THREADS": threads,
                "PERFORMANCE_HINT": "LATENCY",
            },
        )
        req = compiled.create_infer_request()
        out0 = compiled.outputs[0]
        run = lambda: req.infer({0: x})[out0]  # noqa: E731
    run()
    times = []
    y = None
    for _ in range(a["iters"]):
        t = time.perf_counter()
        y = np.array(run())
        times.append(time.perf_counter() - t)
    y.astype("<f4").tofile(a["dump"])
    return {"images_per_s": a["batch"] * len(times) / sum(times), "seconds_per_iter": times}


def run_contender(kind: str, a: dict, bench_bin: str) -> dict:
    env = dict(os.environ, RAYON_NUM_THREADS=str(a["threads"]), OMP_NUM_THREADS=str(a["threads"]))
    if kind.startswith("cliplabel"):
        # cliplabel_PRECISION or cliplabel_PRECISION_KERNELS (e.g. cliplabel_int8_avx2).
        parts = kind.split("_")
        cmd = [
            bench_bin, a["model"], "--batch", str(a["batch"]), "--iters", str(a["iters"]),
            "--threads", str(a["threads"]), "--precision", parts[1],
            "--pixels", a["pixels"], "--dump", a["dump"],
        ] + (["--kernels", parts[2]] if len(parts) > 2 else [])
    else:
        cmd = [sys.executable, os.path.abspath(__file__), "--child", kind, json.dumps(a)]
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    if p.returncode != 0:
        raise SystemExit(f"{kind} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    r = json.loads([l for l in p.stdout.splitlines() if l.startswith("{")][-1])
    r["wall_s"] = time.perf_counter() - t
    if p.stderr.strip():
        r["stderr"] = p.stderr.strip()[-500:]
    return r


def min_cosine(a, b) -> float:
    import numpy as np

    a = a.astype(np.float64)
    b = b.astype(np.float64)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return float(cos.min())


def loadavg() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def version(pkg: str) -> str:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2], json.loads(sys.argv[3]))))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", choices=["b32", "b16", "l14-336"], default="b32",
                    help="random full-size model scratch/full-vit-ARCH (made when missing)")
    ap.add_argument("--model", help="a CLIP checkpoint directory instead of --arch's")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--ort-per-channel", action="store_true")
    ap.add_argument("--contenders", default="cliplabel_fp32,cliplabel_bf16,cliplabel_int8,ort_fp32,ort_int8,ov_f32,ov_bf16")
    ap.add_argument("--quick", action="store_true", help="tiny fixture model, batch 4, 1 repeat")
    args = ap.parse_args()
    import numpy as np

    if args.quick:
        args.model = os.path.join(REPO, "tests/fixtures/tiny-clip")
        args.batch, args.iters, args.repeats = 4, 2, 1
    os.makedirs(SCRATCH, exist_ok=True)
    if args.model is None:
        args.model = os.path.join(SCRATCH, f"full-vit-{args.arch}")
        if not os.path.exists(os.path.join(args.model, "model.safetensors")):
            subprocess.run(
                [sys.executable, "scripts/make_random_clip.py", "--arch", args.arch], cwd=REPO, check=True
            )
    if not os.path.exists(os.path.join(args.model, "model.safetensors")):
        raise SystemExit(f"{args.model}: no model.safetensors")
    subprocess.run(
        ["cargo", "build", "--release", "--example", "bench_encoder"], cwd=REPO, check=True
    )
    bench_bin = os.path.join(REPO, "target/release/examples/bench_encoder")
    cfg = json.load(open(os.path.join(args.model, "config.json")))
    size = cfg["vision_config"]["image_size"]
    tag = "quick" if args.quick else os.path.basename(os.path.normpath(args.model))
    work = os.path.join(SCRATCH, f"bench-encoders-{tag}-b{args.batch}")
    os.makedirs(work, exist_ok=True)
    onnx_path = os.path.join(work, "vision.onnx")
    export_onnx(args.model, args.batch, onnx_path)
    a = {"model": args.model, "batch": args.batch, "size": size, "iters": args.iters, "threads": args.threads}
    # CLIP-normalised uniform random pixels, fixed seed, the same for every contender.
    rng = np.random.default_rng(7)
    mean = np.array([0.48145466, 0.4578275, 0.40821073], np.float32).reshape(1, 3, 1, 1)
    std = np.array([0.26862954, 0.26130258, 0.27577711], np.float32).reshape(1, 3, 1, 1)
    pixels = ((rng.random((args.batch, 3, size, size), dtype=np.float32) - mean) / std).astype("<f4")
    a["pixels"] = os.path.join(work, "pixels.f32")
    pixels.tofile(a["pixels"])
    kinds = args.contenders.split(",")
    onnx_for = {"ort_fp32": onnx_path, "ov_f32": onnx_path, "ov_bf16": onnx_path}
    if "ort_int8" in kinds:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        q_path = os.path.join(work, "vision-int8.onnx")
        quantize_dynamic(onnx_path, q_path, weight_type=QuantType.QInt8, per_channel=args.ort_per_channel)
        onnx_for["ort_int8"] = q_path
    runs = {k: [] for k in kinds}
    features = {}
    load_before = loadavg()
    for r in range(args.repeats):
        order = kinds[r % len(kinds):] + kinds[: r % len(kinds)]
        for k in order:
            ka = dict(a, onnx=onnx_for.get(k, ""), dump=os.path.join(work, f"{k}.f32"))
            res = run_contender(k, ka, bench_bin)
            res["load"] = loadavg()
            runs[k].append(res)
            features[k] = np.fromfile(ka["dump"], dtype="<f4").reshape(args.batch, -1)
            print(f"repeat {r + 1} {k}: {res['images_per_s']:.2f} images/s (load {res['load'][0]})", file=sys.stderr)
    load_after = loadavg()
    ref = features.get("cliplabel_fp32")
    rows = []
    for k in kinds:
        rate = statistics.median(x["images_per_s"] for x in runs[k])
        cos = min_cosine(features[k], ref) if ref is not None else float("nan")
        rows.append((k, rate, cos, [x.get("stderr", "") for x in runs[k]][-1]))
    if ref is not None and "ort_fp32" in features:
        same = min_cosine(features["ort_fp32"], ref)
        if same < 0.9999:
            raise SystemExit(f"the ONNX export is not the same model: min cosine {same} to cliplabel fp32")
    base = dict((k, r) for k, r, _, _ in rows).get("cliplabel_fp32")
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
    lines = [
        f"Image encoder, {os.path.basename(os.path.normpath(args.model))}, batch {args.batch}, {args.threads} threads, "
        f"{args.iters} timed passes, median of {args.repeats} interleaved repeats; {cpu}; "
        f"load average {load_before[0]} before, {load_after[0]} after.",
        "",
        "| contender | images/s | vs cliplabel fp32 | min cosine to cliplabel fp32 |",
        "|---|---:|---:|---:|",
    ]
    for k, rate, cos, _ in rows:
        rel = f"{rate / base:.2f}x" if base else ""
        lines.append(f"| {k} | {rate:.2f} | {rel} | {cos:.6f} |")
    notes = [f"{k}: {err}" for k, _, _, err in rows if err]
    if notes:
        lines += ["", "Notes printed by the contenders:"] + [f"- {n}" for n in notes]
    text = "\n".join(lines)
    print(text)
    out = os.path.join(SCRATCH, f"bench-encoders-{tag}")
    open(out + ".md", "w").write(text + "\n")
    json.dump(
        {
            "args": vars(args),
            "cpu": cpu,
            "load_before": load_before,
            "load_after": load_after,
            "versions": {p: version(p) for p in ["onnxruntime", "openvino", "onnx", "numpy"]},
            "runs": runs,
        },
        open(out + ".json", "w"),
        indent=1,
    )


if __name__ == "__main__":
    main()
