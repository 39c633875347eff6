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
    label_at(tmp, kernels, "fp32")
}

/// [`label`] at `--precision precision`.
fn label_at(tmp: &Path, kernels: &str, precision: &str) -> (Vec<Vec<String>>, String) {
    let out = tmp.join(format!("{kernels}-{precision}.csv"));
    let mut c = cliplabel(&tmp.join(format!("cache-{kernels}-{precision}")));
    c.current_dir(repo())
        .env("CLIPLABEL_KERNELS", kernels)
        .args(["label", "--model", "models/shapes-clip"])
        .args(["--precision", precision])
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
            "avx512vnni" => f!("avx512vnni"),
            "avxvnni" => f!("avxvnni"),
            _ => true,
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        !matches!(kernels, "avx512" | "avx2" | "avx512vnni" | "avxvnni")
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

/// int8 on the AVX2 kernels (AVX-VNNI) labels the samples as on the AVX-512 kernels (AVX512-
/// VNNI). Their matrix multiplies are bit-identical (a unit test), but the fp32 attention sums
/// 8 lanes at a time instead of 16, and a last-bit difference at a quantiser's input can move
/// a code by one step; so the scores agree to well within int8's own error against fp32
/// (measured: 0.0007 against 0.021 for the score, 0.0003 against 0.0032 for the cosine).
#[test]
fn int8_on_the_avx2_kernels_gives_the_labels_of_avx512() {
    if !(has("avx512") && has("avx2") && has("avx512vnni") && has("avxvnni")) {
        skipped("int8 needs AVX512-VNNI and AVX-VNNI to compare the two paths here");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (fp32, _) = label_at(tmp.path(), "avx512", "fp32");
    let (wide, err) = label_at(tmp.path(), "avx512", "int8");
    assert!(!err.contains("precision int8"), "{err}");
    let (narrow, err) = label_at(tmp.path(), "avx2", "int8");
    assert!(
        !err.contains("precision int8"),
        "no fallback expected: {err}"
    );
    assert_eq!(narrow.len(), 55);
    assert_eq!((narrow.len(), wide.len()), (fp32.len(), fp32.len()));
    let value = |r: &[String], i: usize| r[i].parse::<f64>().unwrap();
    for i in [2, 4] {
        let (mut paths, mut quantised) = (0f64, 0f64);
        for ((r, a), f) in narrow.iter().zip(&wide).zip(&fp32).skip(1) {
            assert_eq!((&r[0], &r[1], &r[3]), (&a[0], &a[1], &a[3]));
            assert_eq!(r[0], f[0]);
            paths = paths.max((value(r, i) - value(a, i)).abs());
            quantised = quantised.max((value(a, i) - value(f, i)).abs());
        }
        assert!(
            paths <= quantised / 4.0,
            "column {i}: the int8 paths differ by up to {paths}, int8 from fp32 by {quantised}"
        );
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
