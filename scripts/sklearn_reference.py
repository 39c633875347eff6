#!/usr/bin/env python3
"""Reference values for the linear head's agreement test (development script).

Generates a fixed synthetic data set (Gaussian clusters with overlap: 600 train +
400 test examples, 32 dimensions, 5 classes), fits scikit-learn's multinomial
``LogisticRegression(solver="lbfgs", max_iter=1000, tol=1e-8)`` at a few values of C,
and writes ``tests/fixtures/sklearn_logreg.json`` with the data, the C values, the
coefficients, intercepts and test predictions. The Rust test
``linear_head::tests::agrees_with_sklearn`` reads that file.

Usage: python scripts/sklearn_reference.py [--out tests/fixtures/sklearn_logreg.json]
"""
import argparse
import json
import pathlib

import numpy as np
import sklearn
from sklearn.linear_model import LogisticRegression

N_TRAIN, N_TEST, DIM, N_CLASSES = 600, 400, 32, 5
C_VALUES = [0.01, 1.0, 100.0]
SEED = 20240601


def make_data(rng):
    centres = rng.normal(size=(N_CLASSES, DIM)) * 0.45
    n = N_TRAIN + N_TEST
    y = np.arange(n) % N_CLASSES
    rng.shuffle(y)
    x = centres[y] + rng.normal(size=(n, DIM))
    # Values with 4 decimals; both sides read them as f32 (via f64), as the Rust
    # side stores embeddings.
    x = np.round(x, 4)
    return x, y


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    root = pathlib.Path(__file__).resolve().parent.parent
    ap.add_argument("--out", default=str(root / "tests" / "fixtures" / "sklearn_logreg.json"))
    args = ap.parse_args()

    rng = np.random.default_rng(SEED)
    x_dec, y = make_data(rng)
    x = x_dec.astype(np.float32).astype(np.float64)  # exactly the f32 values Rust sees
    xtr, ytr = x[:N_TRAIN], y[:N_TRAIN]
    xte, yte = x[N_TRAIN:], y[N_TRAIN:]

    fits = []
    for c in C_VALUES:
        clf = LogisticRegression(C=c, solver="lbfgs", max_iter=1000, tol=1e-8)
        clf.fit(xtr, ytr)
        pred = clf.predict(xte)
        fits.append(
            {
                "c": c,
                "coef": clf.coef_.tolist(),
                "intercept": clf.intercept_.tolist(),
                "test_pred": pred.astype(int).tolist(),
                "test_accuracy": float((pred == yte).mean()),
                "n_iter": int(np.max(clf.n_iter_)),
            }
        )
        print(f"C={c:g}: n_iter={fits[-1]['n_iter']} test acc={fits[-1]['test_accuracy']:.4f}")

    out = {
        "generator": "scripts/sklearn_reference.py",
        "sklearn_version": sklearn.__version__,
        "numpy_version": np.__version__,
        "solver": "lbfgs",
        "tol": 1e-8,
        "max_iter": 1000,
        "n_classes": N_CLASSES,
        "dim": DIM,
        "x_train": [[float(v) for v in row] for row in x_dec[:N_TRAIN]],
        "y_train": ytr.astype(int).tolist(),
        "x_test": [[float(v) for v in row] for row in x_dec[N_TRAIN:]],
        "y_test": yte.astype(int).tolist(),
        "fits": fits,
    }
    path = pathlib.Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, separators=(",", ":")) + "\n")
    print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
