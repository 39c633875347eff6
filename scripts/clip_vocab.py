"""Build OpenAI CLIP's tokenizer files from the real BPE vocabulary (development only).

OpenAI's `bpe_simple_vocab_16e6.txt.gz` ships inside the PyPI package
`open-clip-torch` (as `open_clip/bpe_simple_vocab_16e6.txt.gz`). Get it with

    /work/pyenv/bin/pip install --no-deps open-clip-torch      # or
    pip download --no-deps open-clip-torch                     # a wheel = zip

This module turns it into `vocab.json` + `merges.txt` exactly as OpenAI's
`SimpleTokenizer` (and transformers' `CLIPTokenizer`) define the vocabulary:

    ids 0..255       the 256 byte characters of `bytes_to_unicode()`, in its order
    ids 256..511     the same characters + "</w>"
    ids 512..49405   one token per merge, merges = lines[1 : 49152 - 256 - 2 + 1]
    49406            <|startoftext|>
    49407            <|endoftext|>          (49408 tokens in all)

and builds a transformers fast tokenizer (`tokenizer.json`) from them, with
bos `<|startoftext|>`, eos = pad = unk = `<|endoftext|>`.

Usage from another script:

    sys.path.insert(0, "scripts"); from clip_vocab import build_clip_tokenizer
    tok = build_clip_tokenizer("some/model/dir")          # writes tokenizer.json & co

Nothing here downloads anything.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import importlib.util
import io
import json
import os
import zipfile

# sha256 of open_clip's bpe_simple_vocab_16e6.txt.gz (identical to OpenAI's CLIP repo copy).
BPE_GZ_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
BPE_MEMBER = "open_clip/bpe_simple_vocab_16e6.txt.gz"

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
BOS_ID = 49406
EOS_ID = 49407
VOCAB_SIZE = 49408

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
# The derived vocab.json / merges.txt are committed here, so later runs (and other
# scripts) need neither open-clip-torch nor the wheel.
SHARED_DIR = os.path.join(REPO, "tests", "fixtures", "clip-tokenizer")


def bytes_to_unicode() -> dict[int, str]:
    """OpenAI's byte -> printable unicode character table (same order as theirs)."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def _read_bpe_gz_bytes(path: str | None = None) -> bytes:
    """Find bpe_simple_vocab_16e6.txt.gz: explicit path (.gz or .whl), $CLIP_BPE_PATH,
    an installed `open_clip` package, or an open_clip_torch wheel in /tmp/pd or ./."""
    candidates = []
    if path:
        candidates.append(path)
    if os.environ.get("CLIP_BPE_PATH"):
        candidates.append(os.environ["CLIP_BPE_PATH"])
    spec = importlib.util.find_spec("open_clip")  # does not import the package
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            candidates.append(os.path.join(loc, "bpe_simple_vocab_16e6.txt.gz"))
    for d in ("/tmp/pd", os.getcwd(), os.path.join(REPO, ".whl")):
        candidates += sorted(glob.glob(os.path.join(d, "open_clip_torch-*.whl")))
    for c in candidates:
        if not os.path.exists(c):
            continue
        if c.endswith(".whl"):
            with zipfile.ZipFile(c) as z:
                data = z.read(BPE_MEMBER)
        else:
            with open(c, "rb") as f:
                data = f.read()
        digest = hashlib.sha256(data).hexdigest()
        if digest != BPE_GZ_SHA256:
            raise ValueError(f"{c}: unexpected sha256 {digest} of the BPE vocabulary")
        return data
    raise FileNotFoundError(
        "bpe_simple_vocab_16e6.txt.gz not found: `pip install --no-deps open-clip-torch` "
        "or set CLIP_BPE_PATH to the .gz or to an open_clip_torch wheel"
    )


def vocab_and_merges(bpe_gz: bytes) -> tuple[dict[str, int], list[str]]:
    lines = gzip.open(io.BytesIO(bpe_gz)).read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    pairs = [tuple(m.split()) for m in merges]
    assert all(len(p) == 2 for p in pairs)
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(p) for p in pairs]
    vocab += [BOS, EOS]
    encoder = {tok: i for i, tok in enumerate(vocab)}
    assert len(vocab) == len(encoder) == VOCAB_SIZE, (len(vocab), len(encoder))
    return encoder, [" ".join(p) for p in pairs]


def write_vocab_files(out_dir: str, bpe_path: str | None = None) -> tuple[str, str]:
    """Write vocab.json and merges.txt (transformers' CLIP layout) into out_dir."""
    encoder, merges = vocab_and_merges(_read_bpe_gz_bytes(bpe_path))
    os.makedirs(out_dir, exist_ok=True)
    vocab_file = os.path.join(out_dir, "vocab.json")
    merges_file = os.path.join(out_dir, "merges.txt")
    with open(vocab_file, "w", encoding="utf-8") as f:
        json.dump(encoder, f, ensure_ascii=False)
        f.write("\n")
    with open(merges_file, "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for m in merges:
            f.write(m + "\n")
    return vocab_file, merges_file


def shared_vocab_files(bpe_path: str | None = None) -> tuple[str, str]:
    """vocab.json + merges.txt in tests/fixtures/clip-tokenizer/, created on first use."""
    v = os.path.join(SHARED_DIR, "vocab.json")
    m = os.path.join(SHARED_DIR, "merges.txt")
    if not (os.path.exists(v) and os.path.exists(m)):
        v, m = write_vocab_files(SHARED_DIR, bpe_path)
    return v, m


def check_tokenizer(tok) -> None:
    """A few ids known from OpenAI's CLIP."""
    ids = tok("a photo of a cat.")["input_ids"]
    assert ids == [49406, 320, 1125, 539, 320, 2368, 269, 49407], ids
    assert tok.bos_token_id == BOS_ID and tok.eos_token_id == EOS_ID, (tok.bos_token_id, tok.eos_token_id)
    assert tok.pad_token_id == EOS_ID and tok.unk_token_id == EOS_ID
    assert len(tok) == VOCAB_SIZE, len(tok)


def build_clip_tokenizer(out_dir: str | None = None, model_max_length: int = 77, bpe_path: str | None = None):
    """Build transformers' CLIPTokenizerFast from the real vocabulary, check it, and
    (if out_dir is given) `save_pretrained` it there (tokenizer.json,
    tokenizer_config.json, special_tokens_map.json where the version writes one).
    Returns the tokenizer."""
    import transformers

    # transformers 5.x: CLIPTokenizer is the tokenizers-backed ("fast") class and takes the
    # vocabulary and merges themselves; CLIPTokenizerFast is an alias of it.
    cls = transformers.CLIPTokenizer
    vocab_file, merges_file = shared_vocab_files(bpe_path)
    with open(vocab_file, encoding="utf-8") as f:
        vocab = json.load(f)
    with open(merges_file, encoding="utf-8") as f:
        merges = [tuple(line.split()) for line in f.read().split("\n")[1:] if line]
    tok = cls(
        vocab=vocab,
        merges=merges,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=EOS,
        unk_token=EOS,
        model_max_length=model_max_length,
    )
    check_tokenizer(tok)
    if out_dir is not None:
        os.makedirs(out_dir, exist_ok=True)
        tok.save_pretrained(out_dir)
        # The same tokenizer.json, written without pretty-printing (1.7 MB instead of 3.6 MB).
        tok.backend_tokenizer.save(os.path.join(out_dir, "tokenizer.json"), pretty=False)
        # Only tokenizer.json is needed next to a model; the vocab files live once in SHARED_DIR.
        for name in ("vocab.json", "merges.txt"):
            p = os.path.join(out_dir, name)
            if os.path.exists(p) and os.path.abspath(out_dir) != os.path.abspath(SHARED_DIR):
                os.remove(p)
        reloaded = transformers.AutoTokenizer.from_pretrained(out_dir)
        check_tokenizer(reloaded)
    return tok


if __name__ == "__main__":
    import sys

    out = sys.argv[1] if len(sys.argv) > 1 else SHARED_DIR
    t = build_clip_tokenizer(out)
    print(type(t).__name__, len(t), "->", out)
