#!/usr/bin/env python3
"""cliplabel's confident learning vs cleanlab's find_label_issues on the same out-of-fold
probabilities, in one run.

Generates a demo shapes set, flips a share of its labels (seeded) and runs
`examples/bench_audit mislabels`, which embeds it with the demo CLIP, cross-validates the
linear head as `cliplabel audit` does, and writes the out-of-fold probabilities, the labels and
its ranked issues. cleanlab then runs on exactly those probabilities:
  - filter_by="confident_learning": the off-diagonal of the confident joint, the method
    cliplabel implements (expected: the same set);
  - filter_by="prune_by_noise_rate": cleanlab's default, which prunes per class the estimated
    number of issues by margin (expected: a different, usually larger set).

  pip install cleanlab scikit-learn numpy
  cargo build --release --example shapes --example bench_audit
  python3 scripts/bench_audit_vs_cleanlab.py [--per-class 40] [--flip 0.05] [--seed 1]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--per-class", type=int, default=40)
    ap.add_argument("--flip", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--model", default="models/shapes-clip")
    ap.add_argument("--target", default="target/release/examples")
    args = ap.parse_args()

    import cleanlab
    from cleanlab.filter import find_label_issues

    tmp = tempfile.mkdtemp(prefix="bench_audit_")
    data = os.path.join(tmp, "data")
    out = os.path.join(tmp, "out")
    subprocess.run([os.path.join(args.target, "shapes"), "--out", data,
                    "--per-class", str(args.per_class), "--seed", str(args.seed),
                    "--format", "mixed"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run([os.path.join(args.target, "bench_audit"), "mislabels", args.model, data,
                    str(args.flip), str(args.seed), out], check=True)
    meta = json.load(open(os.path.join(out, "meta.json")))
    probs = np.loadtxt(os.path.join(out, "probs.csv"), delimiter=",", dtype=np.float64)
    lab = np.loadtxt(os.path.join(out, "labels.csv"), delimiter=",", skiprows=1, dtype=np.int64)
    given, true = lab[:, 0], lab[:, 1]
    ours = np.loadtxt(os.path.join(out, "ours.csv"), delimiter=",", skiprows=1, ndmin=2)
    ours_idx = ours[:, 0].astype(np.int64) if len(ours) else np.array([], dtype=np.int64)
    flipped = set(np.nonzero(given != true)[0].tolist())

    def score(name, idx, secs):
        s = set(int(i) for i in idx)
        hits = len(s & flipped)
        print(f"{name:<44} {len(s):5d} flagged  recall {hits / max(len(flipped), 1):6.1%}  "
              f"precision {hits / max(len(s), 1):6.1%}  {secs * 1000:8.2f} ms")
        return s

    print(f"cleanlab {cleanlab.__version__}, numpy {np.__version__}; {meta['images']} images, "
          f"{meta['classes']} classes, {len(flipped)} labels flipped; head C = {meta['c']:.3g} "
          f"(out-of-fold log-loss {meta['cv_log_loss']:.4f}); whole audit {meta['audit_seconds']:.1f} s "
          f"on {meta['threads']} threads; load {os.getloadavg()[0]:.1f}")
    ours_set = score("cliplabel confident_learning (Rust)", ours_idx,
                     meta["confident_learning_seconds"])
    results = {}
    for filter_by in ["confident_learning", "prune_by_noise_rate"]:
        reps = 5
        t = time.perf_counter()
        for _ in range(reps):
            idx = find_label_issues(given, probs, filter_by=filter_by,
                                    return_indices_ranked_by="self_confidence", n_jobs=1)
        secs = (time.perf_counter() - t) / reps
        results[filter_by] = score(f"cleanlab find_label_issues({filter_by})", idx, secs)

    cl = results["confident_learning"]
    only_ours, only_cl = sorted(ours_set - cl), sorted(cl - ours_set)
    print(f"\nsame set as cleanlab confident_learning: {ours_set == cl} "
          f"(only cliplabel: {only_ours}, only cleanlab: {only_cl})")
    k = probs.shape[1]
    thr = np.array([probs[given == c, c].mean() for c in range(k)])
    for i in only_ours + only_cl:
        p = probs[i]
        conf = np.nonzero(p >= thr - 1e-6)[0]
        print(f"  row {i}: given {given[i]} true {true[i]}; p[given]={p[given[i]]:.6f} "
              f"classes at threshold {conf.tolist()} (argmax {int(p.argmax())}, "
              f"thresholds {thr[conf].round(6).tolist()})")
    pr = results["prune_by_noise_rate"]
    print(f"prune_by_noise_rate vs ours: {len(pr & ours_set)} shared, {len(pr - ours_set)} only "
          f"cleanlab default, {len(ours_set - pr)} only ours")


if __name__ == "__main__":
    sys.exit(main())
