#!/usr/bin/env python3
"""Speed benchmark: cliplabel's linear head vs scikit-learn's L-BFGS logistic regression.

Generates synthetic CLIP-like embeddings once (L2-normalised, a shared direction plus
class directions plus isotropic and low-rank "nuisance" noise, so classes overlap),
writes them as raw f32 (``x.f32``, train rows then test rows; ``y.i32``; ``meta.json``),
then on the SAME data and grid:

1. runs the Rust driver (``examples/bench_fit.rs``: stratified K-fold CV over the C grid
   with warm starts, refit at the chosen C), which also writes its fold assignment;
2. runs ``LogisticRegressionCV(solver="lbfgs")`` with those same folds
   (``PredefinedSplit``), the same C grid, tol (default 1e-6, the tolerance ``cliplabel fit``
   uses) and max_iter (it also warm-starts along the C path and refits at the chosen C), with
   ``n_jobs`` equal to the cores, so its folds run in parallel as cliplabel's do;

and prints wall time, chosen C, CV accuracy and held-out test accuracy side by side.

Usage (from the repository root):
    python scripts/bench_fit_vs_sklearn.py                 # 50,000 x 512, 100 classes, 5 folds, 8 Cs
    python scripts/bench_fit_vs_sklearn.py --n-train 5000  # quick run
Options: --rust-cmd to run a prebuilt driver, --skip-sklearn / --skip-rust.
"""
import argparse
import json
import os
import pathlib
import shlex
import subprocess
import sys
import time

import numpy as np


def make_data(n, dim, k, noise, seed):
    rng = np.random.default_rng(seed)
    common = rng.normal(size=dim)
    common /= np.linalg.norm(common)
    u = rng.normal(size=(k, dim))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    centres = 2.0 * common + u  # classes share a large common component, like CLIP
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    nuisance = rng.normal(size=(32, dim)) / np.sqrt(dim)
    y = rng.integers(0, k, size=n)
    x = centres[y] + noise * (
        rng.normal(size=(n, dim)) / np.sqrt(dim) + 0.5 * rng.normal(size=(n, 32)) @ nuisance
    )
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), y.astype(np.int32)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default="/tmp/cliplabel-bench-fit")
    ap.add_argument("--n-train", type=int, default=50_000)
    ap.add_argument("--n-test", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--noise", type=float, default=2.5)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--grid", type=float, nargs="+", default=list(np.logspace(-1, 4, 8)))
    # 1e-6 is what `cliplabel fit` uses (TrainOptions::default, src/classify/head.rs).
    ap.add_argument("--tol", type=float, default=1e-6)
    ap.add_argument("--n-jobs", type=int, default=len(os.sched_getaffinity(0)),
                    help="scikit-learn's n_jobs (default: the cores this process may use, as cliplabel)")
    ap.add_argument("--max-iter", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rust-cmd", default="cargo run --release --quiet --example bench_fit --")
    ap.add_argument("--skip-sklearn", action="store_true")
    ap.add_argument("--skip-rust", action="store_true")
    args = ap.parse_args()

    d = pathlib.Path(args.dir)
    d.mkdir(parents=True, exist_ok=True)
    grid = sorted(float(c) for c in args.grid)
    meta = {
        "n_train": args.n_train,
        "n_test": args.n_test,
        "dim": args.dim,
        "n_classes": args.classes,
        "noise": args.noise,
        "folds": args.folds,
        "c_grid": grid,
        "seed": args.seed,
        "tol": args.tol,
        "max_iter": args.max_iter,
    }
    x, y = make_data(args.n_train + args.n_test, args.dim, args.classes, args.noise, args.seed)
    x.tofile(d / "x.f32")
    y.tofile(d / "y.i32")
    (d / "meta.json").write_text(json.dumps(meta))
    xtr, ytr = x[: args.n_train], y[: args.n_train]
    xte, yte = x[args.n_train :], y[args.n_train :]
    print(
        f"data: {args.n_train} train + {args.n_test} test, {args.dim} dims, {args.classes} classes; "
        f"{args.folds}-fold CV over C = {', '.join(f'{c:.3g}' for c in grid)}; tol {args.tol}, "
        f"max_iter {args.max_iter}; {os.cpu_count()} CPUs",
        flush=True,
    )

    rows = []
    folds = None
    if not args.skip_rust:
        cmd = shlex.split(args.rust_cmd) + [str(d)]
        t = time.perf_counter()
        out = subprocess.run(cmd, check=True, capture_output=True, text=True)
        wall = time.perf_counter() - t
        r = json.loads(out.stdout.strip().splitlines()[-1])
        folds = np.fromfile(d / "folds.i32", dtype=np.int32)
        iters = sum(p["iterations"] for p in r["points"]) + r["refit_iterations"]
        rows.append(("cliplabel (Rust)", r["seconds"], r["best_c"], r["cv_accuracy"], r["test_accuracy"], iters))
        print(f"rust: {r['seconds']:.1f} s in the fit ({wall:.1f} s with process start and loading), "
              f"{r['threads']} threads; per C: "
              + ", ".join(f"{p['c']:.3g}: {p['mean_accuracy']:.4f} ({p['iterations']} it)" for p in r["points"]),
              flush=True)

    if not args.skip_sklearn:
        import sklearn
        from sklearn.linear_model import LogisticRegressionCV
        from sklearn.model_selection import PredefinedSplit, StratifiedKFold
        from threadpoolctl import threadpool_info

        cv = PredefinedSplit(folds) if folds is not None else StratifiedKFold(args.folds, shuffle=True, random_state=args.seed)
        clf = LogisticRegressionCV(
            Cs=grid,
            cv=cv,
            solver="lbfgs",
            tol=args.tol,
            max_iter=args.max_iter,
            l1_ratios=(0.0,),
            scoring="accuracy",
            use_legacy_attributes=False,
            refit=True,
            n_jobs=args.n_jobs,
        )
        t = time.perf_counter()
        clf.fit(xtr, ytr)
        secs = time.perf_counter() - t
        test_acc = float((clf.predict(xte) == yte).mean())
        scores = np.asarray(clf.scores_).reshape(args.folds, -1).mean(axis=0)
        best = int(np.argmax(scores))
        iters = int(np.asarray(clf.n_iter_).sum())
        blas = ", ".join(f"{i['internal_api']} {i.get('num_threads')} threads" for i in threadpool_info())
        rows.append((f"scikit-learn {sklearn.__version__}", secs, float(clf.C_), float(scores[best]), test_acc, iters))
        print(f"sklearn: {secs:.1f} s (n_jobs {args.n_jobs}; {blas}); per C: "
              + ", ".join(f"{c:.3g}: {s:.4f}" for c, s in zip(grid, scores)), flush=True)

    print()
    print("| implementation | fit time (CV + refit) | chosen C | CV accuracy | test accuracy | L-BFGS iterations |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, secs, c, cva, ta, it in rows:
        print(f"| {name} | {secs:.1f} s | {c:.3g} | {cva:.4f} | {ta:.4f} | {it} |")
    if len(rows) == 2:
        print(f"\nspeed-up: {rows[1][1] / rows[0][1]:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
