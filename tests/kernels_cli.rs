//! `CLIPLABEL_KERNELS` through the CLI: every path this CPU has labels the sample images
//! (`images/`, the demo model `models/shapes-clip`) exactly as `auto` does, and an unknown
//! value is named in a warning rather than silently ignored.

mod common;

use std::path::{Path, PathBuf};

use common::*;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `cliplabel label` on the sample images with `CLIPLABEL_KERNELS=kernels`; the CSV's rows
/// (path, label, score, predicted, cosine) and stderr.
fn label(tmp: &Path, kernels: &str) -> (Vec<Vec<String>>, String) {
    let out = tmp.join(format!("{kernels}.csv"));
    let mut c = cliplabel(&tmp.join(format!("cache-{kernels}")));
    c.current_dir(repo())
        .env("CLIPLABEL_KERNELS", kernels)
        .args(["label", "--model", "models/shapes-clip"])
        .args(["--classes", "images/classes.txt", "--threads", "2"])
        .arg("--out")
        .arg(&out)
        .arg("images");
    let o = run(&mut c);
    assert!(o.status.success(), "{kernels}: {}", stderr(&o));
    (read_csv(&out), stderr(&o))
}

/// Whether this CPU has the instructions of a forced path (a forced path it lacks falls back,
/// with a note, and is covered by the library's unit tests).
fn has(kernels: &str) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as f;
        match kernels {
            "avx512" => f!("avx512f"),
            "avx2" => f!("avx2") && f!("fma"),
            _ => true,
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        !matches!(kernels, "avx512" | "avx2")
    }
}

#[test]
fn every_kernel_path_gives_the_labels_of_auto() {
    let tmp = tempfile::tempdir().unwrap();
    let (auto, _) = label(tmp.path(), "auto");
    // 54 images (classes.txt and ground_truth.csv are not images).
    assert_eq!(auto.len(), 55, "{auto:?}");
    assert_eq!(auto[0], ["path", "label", "score", "predicted", "cosine"]);
    for kernels in ["avx512", "avx2", "candle"] {
        let (rows, err) = label(tmp.path(), kernels);
        if !has(kernels) {
            assert!(err.contains("which this CPU lacks"), "{kernels}: {err}");
            skipped(&format!(
                "this CPU lacks {kernels}: its labels (the fallback note is checked instead)"
            ));
            continue;
        }
        assert!(!err.contains("CLIPLABEL_KERNELS"), "{kernels}: {err}");
        assert_eq!(rows.len(), auto.len(), "{kernels}");
        for (r, a) in rows.iter().zip(&auto).skip(1) {
            assert_eq!((&r[0], &r[1], &r[3]), (&a[0], &a[1], &a[3]), "{kernels}");
            for i in [2, 4] {
                let (x, y): (f64, f64) = (r[i].parse().unwrap(), a[i].parse().unwrap());
                assert!((x - y).abs() < 1e-4, "{kernels} {}: {x} vs {y}", r[0]);
            }
        }
    }
}

#[test]
fn an_unknown_value_is_named_in_a_warning() {
    let tmp = tempfile::tempdir().unwrap();
    let (rows, err) = label(tmp.path(), "avx");
    assert!(
        err.contains("warning: CLIPLABEL_KERNELS: unknown kernels \"avx\"")
            && err.contains("using auto"),
        "{err}"
    );
    assert_eq!(rows.len(), 55);
}
