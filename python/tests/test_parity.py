"""The Python package gives the CLI's results: embeddings bit for bit, labels and scores, the
same failures with the same reasons, the same error messages."""

from __future__ import annotations

import json
import math
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

import cliplabel
from conftest import BAD, CRASHERS, IMAGES, MODEL, REPO, cli_error, read_jsonl, run_cli

# Inputs mixing good images with corrupt ones (empty, truncated, not an image, a decompression
# bomb) and a decoder crasher, as the CLI takes them: relative to the repository root.
INPUTS = ["images", "tests/fixtures/bad", "tests/fixtures/crashers"]


def test_embed_images_is_bit_identical_to_cli_embed(cli, engine, tmp_path):
    out = tmp_path / "emb.safetensors"
    run_cli(cli, "embed", "--model", "models/shapes-clip", "-q", "--out", str(out), *INPUTS)
    want = load_file(str(out))["embeddings"]
    sidecar = json.loads((tmp_path / "emb.json").read_text())

    got = engine.embed_images(INPUTS)

    assert got.embeddings.dtype == np.float32
    assert got.embeddings.shape == want.shape == (len(sidecar["items"]), engine.dim)
    assert np.array_equal(got.embeddings, want)
    assert got.paths == sidecar["items"]
    assert got.failed == [(f["path"], f["error"]) for f in sidecar["failed"]]
    # Every input accounted for: the corrupt files are the failures, the images the rows.
    n_images = len([p for p in os.listdir(IMAGES) if p.endswith((".png", ".jpg"))])
    assert len(got.paths) >= n_images
    assert len(got) == len(got.paths)


def test_corrupt_images_land_in_failed_with_the_cli_reason(cli, engine, tmp_path):
    bad = sorted(str(p.relative_to(REPO)) for p in BAD.iterdir())
    crasher = "tests/fixtures/crashers/tiled_planar_rgb8.tif"
    good = "images/img_000.png"
    inputs = [bad[0], good, *bad[1:], crasher]
    out = tmp_path / "labels.jsonl"
    run_cli(
        cli, "label", "--model", "models/shapes-clip", "--classes", "images/classes.txt",
        "--no-cache", "-q", "--out", str(out), *inputs,
    )
    cli_failed = [(f["path"], f["error"]) for f in read_jsonl(tmp_path / "labels.jsonl.failed.jsonl")]

    res = engine.embed_images(inputs)
    assert res.paths == [good]
    assert sorted(res.failed) == sorted(cli_failed)
    assert {p for p, _ in res.failed} == set(bad) | {crasher}
    assert all(reason for _, reason in res.failed)
    assert any(r.startswith("decoder crashed: ") for p, r in res.failed if p == crasher)

    zs = cliplabel.ZeroShot(engine, "images/classes.txt")
    run = zs.label(inputs)
    labels = list(run)
    assert [r.path for r in labels] == [good]
    assert sorted(run.failed) == sorted(cli_failed)
    s = run.summary()
    assert (s["total"], s["labelled"], s["failed"], s["finished"]) == (len(inputs), 1, len(inputs) - 1, True)


@pytest.mark.parametrize("min_score", [None, 0.6])
def test_zero_shot_labels_equal_cli_label(cli, engine, tmp_path, min_score):
    out = tmp_path / "labels.jsonl"
    extra = [] if min_score is None else ["--min-score", str(min_score)]
    run_cli(
        cli, "label", "--model", "models/shapes-clip", "--classes", "images/classes.txt",
        "--templates", "shapes", "--top-k", "3", "--no-cache", "-q", "--out", str(out),
        *extra, *INPUTS,
    )
    want = read_jsonl(out)
    want_failed = [(f["path"], f["error"]) for f in read_jsonl(tmp_path / "labels.jsonl.failed.jsonl")]

    zs = cliplabel.ZeroShot(engine, "images/classes.txt", templates="shapes")
    run = zs.label(INPUTS, top_k=3, min_score=min_score)
    got = list(run)

    assert len(got) == len(want) > 0
    for g, w in zip(got, want):
        assert g.path == w["path"]
        assert g.label == w["label"]
        assert g.abstained == w["abstained"]
        assert g.predicted == w["predicted"]
        # JSON holds the shortest text of each f32: equal as f32 means bit-identical.
        assert np.float32(g.score) == np.float32(w["score"])
        assert np.float32(g.cosine) == np.float32(w["cosine"])
        assert [(l, np.float32(s)) for l, s in g.top_k] == [
            (t["label"], np.float32(t["score"])) for t in w["top"]
        ]
    assert run.failed == want_failed
    if min_score is not None:
        # The threshold splits this set: both branches are exercised.
        assert any(g.abstained for g in got) and not all(g.abstained for g in got)
        assert all(g.label == "unknown" for g in got if g.abstained)


def test_labels_equal_the_readme_quickstart_csv(cli, engine, tmp_path):
    import csv

    out = tmp_path / "labels.csv"
    run_cli(
        cli, "label", "--model", "models/shapes-clip", "--classes", "images/classes.txt",
        "--templates", "shapes", "--top-k", "3", "--force", "--no-cache", "-q",
        "--out", str(out), "images/",
    )
    rows = list(csv.DictReader(out.open()))
    got = list(cliplabel.ZeroShot(engine, "images/classes.txt", templates="shapes").label("images/", top_k=3))
    assert [r.path for r in got] == [r["path"] for r in rows]
    for g, r in zip(got, rows):
        assert (g.label, f"{g.score:.6f}") == (r["label"], r["score"])
        assert [(l, f"{s:.6f}") for l, s in g.top_k[1:]] == [
            (r["label2"], r["score2"]), (r["label3"], r["score3"])
        ]


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_precision_embeddings_equal_cli_embed_with_that_precision(cli, engine, tmp_path, precision):
    out = tmp_path / "emb.safetensors"
    run_cli(cli, "embed", "--model", "models/shapes-clip", "--precision", precision, "-q",
            "--out", str(out), "images")
    want = load_file(str(out))["embeddings"]
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the note on a CPU that runs it slowly or falls back
        low = cliplabel.Engine(str(MODEL), precision=precision)
    got = low.embed_images("images").embeddings
    assert np.array_equal(got, want)
    if low.precision == precision:
        # Approximate arithmetic: not the fp32 numbers (so the option did reach the engine).
        assert not np.array_equal(got, engine.embed_images("images").embeddings)
    with pytest.raises(ValueError, match="unknown precision"):
        cliplabel.Engine(str(MODEL), precision="fp16")


def test_scores_of_embeddings_equal_the_labels(engine):
    zs = cliplabel.ZeroShot(engine, "images/classes.txt", templates="shapes")
    emb = engine.embed_images("images")
    probs = zs.scores(emb.embeddings)
    assert probs.shape == (len(emb.paths), len(zs.classes)) and probs.dtype == np.float32
    labels = list(zs.label("images"))
    for row, lab in zip(probs, labels):
        assert zs.classes[int(np.argmax(row))] == lab.predicted
        assert np.float32(row.max()) == np.float32(lab.score)


def test_embed_texts_equal_cli_text_embeddings(cli, engine, tmp_path):
    prompts = ["a red circle.", "a photo of a blue star.", "yellow ring"]
    (tmp_path / "p.txt").write_text("\n".join(prompts) + "\n")
    out = tmp_path / "t.safetensors"
    run_cli(cli, "embed", "--model", "models/shapes-clip", "-q", "--out", str(out),
            "--text-file", str(tmp_path / "p.txt"))
    want = load_file(str(out))["embeddings"]
    got = engine.embed_texts(prompts)
    assert got.dtype == np.float32 and np.array_equal(got, want)
    assert np.array_equal(engine.embed_texts(prompts[0]), want[:1])


def test_embed_pixels_of_decoded_file_equals_embed_images(engine):
    files = ["images/img_000.png", "images/img_002.jpg"]
    for f in files:
        rgb = cliplabel.load_rgb(f)
        assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
        assert np.array_equal(engine.embed_pixels(rgb), engine.embed_images([f]).embeddings)
    # A stack of images is one batch, as embed_images batches files.
    rgb = cliplabel.load_rgb(files[0])
    assert np.array_equal(
        engine.embed_pixels(np.stack([rgb, rgb])),
        engine.embed_images([files[0], files[0]]).embeddings,
    )
    # Pillow's pixels (PIL.Image -> numpy) are cliplabel's, so they embed the same.
    Image = pytest.importorskip("PIL.Image", reason="Pillow is not installed")
    for f in files:
        with Image.open(f) as im:
            arr = np.asarray(im.convert("RGB"))
        assert np.array_equal(arr, cliplabel.load_rgb(f))
        assert np.array_equal(engine.embed_pixels(arr), engine.embed_images([f]).embeddings)


def test_embed_pixels_refuses_other_dtypes_and_shapes(engine):
    with pytest.raises(TypeError, match="uint8"):
        engine.embed_pixels(np.zeros((8, 8, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        engine.embed_pixels(np.zeros((8, 8, 4), dtype=np.uint8))


def test_an_invalid_model_directory_raises_model_error_with_the_cli_message(cli, tmp_path):
    bad = tmp_path / "not-a-model"
    bad.mkdir()
    (bad / "config.json").write_text("{}")
    msg = cli_error(run_cli(cli, "embed", "--model", str(bad), "-q", "--out",
                            str(tmp_path / "e.safetensors"), "images/img_000.png", ok=False))
    with pytest.raises(cliplabel.ModelError) as e:
        cliplabel.Engine(str(bad))
    assert str(e.value) == msg
    assert e.value.kind == "model"
    assert isinstance(e.value, cliplabel.CliplabelError)
    assert not isinstance(e.value, (cliplabel.InputError, cliplabel.OutputError))


def test_hub_ids_honour_hf_home_and_hf_hub_offline_as_the_cli(cli, tmp_path, monkeypatch):
    import subprocess

    hub_home = tmp_path / "hf"
    env = dict(os.environ, HF_HOME=str(hub_home), HF_HUB_OFFLINE="1")
    p = subprocess.run(
        [str(cli), "embed", "--model", "openai/clip-vit-base-patch32", "-q", "--out",
         str(tmp_path / "e.safetensors"), "images/img_000.png"],
        cwd=REPO, env=env, capture_output=True, text=True,
    )
    msg = cli_error(p)
    assert str(hub_home) in msg
    monkeypatch.setenv("HF_HOME", str(hub_home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(cliplabel.ModelError) as e:
        cliplabel.Engine("openai/clip-vit-base-patch32")
    assert str(e.value) == msg
    # The same, given as arguments instead of the environment.
    monkeypatch.delenv("HF_HOME")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(cliplabel.ModelError) as e:
        cliplabel.Engine("openai/clip-vit-base-patch32", hub_cache=str(hub_home / "hub"), offline=True)
    assert str(e.value) == msg


def test_input_and_io_errors_carry_the_cli_message(cli, engine, tmp_path):
    missing = "images/no-such-image.png"
    msg = cli_error(run_cli(cli, "embed", "--model", "models/shapes-clip", "-q", "--out",
                            str(tmp_path / "e.safetensors"), missing, ok=False))
    with pytest.raises(cliplabel.InputError) as e:
        engine.embed_images([missing])
    assert str(e.value) == msg

    head = str(tmp_path / "no-such-head.safetensors")
    msg = cli_error(run_cli(cli, "predict", "--model", "models/shapes-clip", "--head", head,
                            "-q", "--out", str(tmp_path / "p.csv"), "images/", ok=False))
    with pytest.raises(cliplabel.IoError) as e:
        cliplabel.Head.load(head)
    # The message names its cause once, in the CLI as in the exception.
    assert str(e.value) == msg
    assert str(e.value).endswith(e.value.strerror)
    assert msg.count(e.value.strerror) == 1
    assert isinstance(e.value, OSError) and e.value.errno == 2
    assert e.value.filename == head


def test_progress_callback_is_called_after_each_batch(engine):
    n = len(engine.embed_images("images").paths)
    small = cliplabel.Engine(str(MODEL), batch_size=16)
    calls = []
    small.embed_images("images", progress=lambda done, total: calls.append((done, total)))
    assert calls == [(min(i * 16, n), n) for i in range(1, math.ceil(n / 16) + 1)]

    calls.clear()
    run = cliplabel.ZeroShot(small, "images/classes.txt").label(
        "images", progress=lambda d, t: calls.append((d, t))
    )
    assert len(list(run)) == n
    assert calls == [(min(i * 16, n), n) for i in range(1, math.ceil(n / 16) + 1)]


def test_progress_true_draws_a_tqdm_bar(engine, capsys):
    pytest.importorskip("tqdm", reason="tqdm is not installed")
    n = len(engine.embed_images("images", progress=True).paths)
    err = capsys.readouterr().err
    assert "embedding" in err and f"{n}/{n}" in err


def test_a_label_iterator_dropped_early_stops_its_run(engine):
    zs = cliplabel.ZeroShot(engine, "images/classes.txt")
    it = zs.label(["images"] * 20)
    first = next(it)
    assert first.path == "images/img_000.png" and it.summary()["finished"] is False
    del it
    # The engine is free for the next run.
    assert len(list(zs.label("images"))) == len(engine.embed_images("images").paths)


def test_an_exception_in_the_progress_callback_stops_the_run(engine):
    def boom(done, total):
        raise KeyError("stop here")

    with pytest.raises(KeyError, match="stop here"):
        engine.embed_images("images", progress=boom)


def test_the_gil_is_released_while_rust_works(engine):
    ticks = 0
    done = threading.Event()

    def work():
        engine.embed_images(["images"] * 4)
        done.set()

    t = threading.Thread(target=work)
    t.start()
    while not done.is_set():
        ticks += 1
        time.sleep(0.001)
    t.join()
    # With the GIL held for the whole call, this loop could not run while it worked.
    assert ticks >= 20, ticks


def test_fit_and_predict_equal_cli_fit_and_predict(cli, engine, tmp_path):
    train = tmp_path / "train"
    pngs = sorted(p for p in IMAGES.iterdir() if p.suffix == ".png")
    for i, p in enumerate(pngs):
        d = train / ("alpha" if i % 2 == 0 else "beta")
        d.mkdir(parents=True, exist_ok=True)
        (d / p.name).write_bytes(p.read_bytes())
    (train / "alpha" / "empty.png").write_bytes(b"")
    cli_head = tmp_path / "cli_head.safetensors"
    run_cli(cli, "fit", "--model", "models/shapes-clip", "--train", str(train), "--cv", "2",
            "--no-cache", "-q", "--out", str(cli_head))

    py_head_path = tmp_path / "py_head.safetensors"
    head = cliplabel.Head.fit(engine, str(train), out=str(py_head_path), folds=2)
    assert head.classes == ["alpha", "beta"]
    assert head.failed == [(str(train / "alpha" / "empty.png"), head.failed[0][1])]
    a, b = load_file(str(cli_head)), load_file(str(py_head_path))
    assert np.array_equal(a["weight"], b["weight"]) and np.array_equal(a["bias"], b["bias"])
    # In memory, from (path, label) pairs, the same head.
    pairs = [(str(p), p.parent.name) for p in sorted(train.glob("*/*.png"))]
    mem = cliplabel.Head.fit(engine, pairs, folds=2)
    assert mem.path is None and mem.meta["c"] == head.meta["c"]

    out = tmp_path / "pred.jsonl"
    run_cli(cli, "predict", "--model", "models/shapes-clip", "--head", str(cli_head),
            "--top-k", "2", "--no-cache", "-q", "--out", str(out), *INPUTS)
    want = read_jsonl(out)
    loaded = cliplabel.Head.load(str(cli_head))
    run = loaded.predict(engine, INPUTS, top_k=2)
    got = list(run)
    assert [(g.path, g.label, np.float32(g.score)) for g in got] == [
        (w["path"], w["label"], np.float32(w["score"])) for w in want
    ]
    assert all(g.cosine is None for g in got)
    assert run.failed == [(f["path"], f["error"]) for f in read_jsonl(tmp_path / "pred.jsonl.failed.jsonl")]
    probs = loaded.scores(engine.embed_images("images").embeddings)
    assert probs.shape[1] == 2


def test_compare_returns_the_cli_results_as_a_dict(cli, engine, tmp_path):
    sets = {}
    pngs = sorted(p for p in IMAGES.iterdir() if p.suffix in (".png", ".jpg"))
    for name, part in (("train", pngs[0::2]), ("test", pngs[1::2])):
        for i, p in enumerate(part):
            d = tmp_path / name / ("alpha" if i % 2 == 0 else "beta")
            d.mkdir(parents=True, exist_ok=True)
            (d / p.name).write_bytes(p.read_bytes())
        sets[name] = str(tmp_path / name)
    run_cli(cli, "compare", "--model", "models/shapes-clip", "--train", sets["train"],
            "--test", sets["test"], "--shots", "1,all", "--seeds", "2", "--cv", "2",
            "--no-cache", "-q", "--report", str(tmp_path / "cli_report"))
    want = json.loads((tmp_path / "cli_report" / "results.json").read_text())
    messages = []
    got = cliplabel.compare(engine, sets["train"], sets["test"], shots=[1, "all"], seeds=2,
                            cv=2, log=messages.append)
    assert got.pop("failed") == []
    want["model"] = got["model"]  # given as models/shapes-clip vs. an absolute path
    assert got == want
    assert messages


def test_help_shows_the_rust_docstrings():
    doc = cliplabel.Engine.__doc__
    assert "CLIP model" in doc and "ModelError" in doc
    assert "EmbedResult" in cliplabel.Engine.embed_images.__doc__
    assert "uint8" in cliplabel.Engine.embed_pixels.__doc__
    assert cliplabel.ZeroShot.label.__doc__ and cliplabel.Head.fit.__doc__
    assert "shapes" in cliplabel.template_sets()
