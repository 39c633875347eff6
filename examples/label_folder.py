#!/usr/bin/env python3
"""Label a folder of images zero-shot from Python, with the demo model by default.

    pip install ./python            # builds cliplabel's Python package (Rust + maturin)
    python examples/label_folder.py [IMAGES_DIR] [--model DIR] [--classes FILE] [--templates NAME]

Prints one line per image (path, label, probability) and the images that could not be read.
"""

import argparse
import sys

import cliplabel


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("images", nargs="?", default="images/")
    ap.add_argument("--model", default="models/shapes-clip")
    ap.add_argument("--classes", default="images/classes.txt")
    ap.add_argument("--templates", default="shapes")
    ap.add_argument("--min-score", type=float, default=None)
    a = ap.parse_args()

    engine = cliplabel.Engine(a.model)
    zs = cliplabel.ZeroShot(engine, a.classes, templates=a.templates)
    run = zs.label(a.images, top_k=2, min_score=a.min_score)
    for r in run:
        second = f"  (then {r.top_k[1][0]} {r.top_k[1][1]:.3f})" if len(r.top_k) > 1 else ""
        print(f"{r.path}\t{r.label}\t{r.score:.3f}{second}")
    for path, reason in run.failed:
        print(f"failed: {path}: {reason}", file=sys.stderr)
    s = run.summary()
    print(f"labelled {s['labelled']} ({s['abstained']} unknown), failed {s['failed']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
