//! Speed benchmark driver for `cliplabel::linear_head` (run by `scripts/bench_fit_vs_sklearn.py`).
//!
//! Reads a data set written by that script from DIR (`meta.json`, `x.f32`: row-major
//! little-endian f32 embeddings, train rows first then test rows; `y.i32`: labels), runs
//! stratified K-fold cross-validation over the C grid in `meta.json`, refits at the chosen
//! C, and prints one JSON line with timings and accuracies. Writes the fold of each
//! training row to `DIR/folds.i32` so scikit-learn can use the same folds.
//!
//! Usage: cargo run --release --example bench_fit -- DIR

use cliplabel::linear_head::{accuracy, fit_cv, CvOptions, Dataset, Matrix};
use std::time::Instant;

fn read_f32(path: &std::path::Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn read_i32(path: &std::path::Path) -> Vec<i32> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    bytes
        .chunks_exact(4)
        .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn main() {
    let dir = std::path::PathBuf::from(std::env::args().nth(1).expect("usage: bench_fit DIR"));
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("meta.json")).expect("meta.json"))
            .expect("meta.json");
    let get = |k: &str| meta[k].as_u64().unwrap_or_else(|| panic!("meta.json: {k}")) as usize;
    let (n_train, n_test, dim, k) = (get("n_train"), get("n_test"), get("dim"), get("n_classes"));
    let grid: Vec<f64> = meta["c_grid"]
        .as_array()
        .expect("c_grid")
        .iter()
        .map(|v| v.as_f64().expect("c"))
        .collect();
    let opts = CvOptions {
        folds: get("folds"),
        c_grid: Some(grid),
        seed: get("seed") as u64,
        tol: meta["tol"].as_f64().expect("tol"),
        max_iter: get("max_iter"),
    };

    let x = read_f32(&dir.join("x.f32"));
    let y: Vec<usize> = read_i32(&dir.join("y.i32"))
        .iter()
        .map(|&v| v as usize)
        .collect();
    assert_eq!(x.len(), (n_train + n_test) * dim, "x.f32 size");
    assert_eq!(y.len(), n_train + n_test, "y.i32 size");
    let x_train = Matrix::new(n_train, dim, x[..n_train * dim].to_vec()).expect("train matrix");
    let x_test = Matrix::new(n_test, dim, x[n_train * dim..].to_vec()).expect("test matrix");
    let (y_train, y_test) = y.split_at(n_train);

    let t0 = Instant::now();
    let data = Dataset::new(&x_train, y_train, k).expect("data set");
    let (cv, fit) = fit_cv(&data, None, &opts, None).expect("fit");
    let seconds = t0.elapsed().as_secs_f64();
    let test_logits = fit.head.predict_logits(&x_test).expect("predict");
    let test_accuracy = accuracy(&test_logits, y_test).expect("accuracy");

    let folds: Vec<u8> = cv
        .fold_of
        .iter()
        .flat_map(|&f| (f as i32).to_le_bytes())
        .collect();
    std::fs::write(dir.join("folds.i32"), folds).expect("folds.i32");

    let points: Vec<serde_json::Value> = cv
        .points
        .iter()
        .map(|p| serde_json::json!({"c": p.c, "mean_accuracy": p.mean_accuracy, "iterations": p.iterations, "converged": p.converged}))
        .collect();
    let out = serde_json::json!({
        "seconds": seconds,
        "threads": rayon::current_num_threads(),
        "best_c": cv.best_c,
        "cv_accuracy": cv.best_accuracy,
        "test_accuracy": test_accuracy,
        "refit_iterations": fit.report.iterations,
        "refit_converged": fit.report.converged,
        "points": points,
    });
    println!("{out}");
}
