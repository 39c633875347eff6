//! Helpers shared by the end-to-end tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository's test fixtures.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The tiny random CLIP fixture model.
pub fn tiny_model() -> String {
    fixtures().join("tiny-clip").display().to_string()
}

/// The `cliplabel` binary with a private class-embedding cache.
pub fn cliplabel(cache: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cliplabel"));
    c.env("CLIPLABEL_CACHE", cache).env("HF_HUB_OFFLINE", "1");
    c
}

/// Runs a command, returning its output.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("cannot start cliplabel")
}

/// Stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Copies the good fixture images into `dir`, `copies` times each under distinct names.
pub fn image_folder(dir: &Path, copies: usize) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir).unwrap();
    let mut out = Vec::new();
    let mut srcs: Vec<PathBuf> = std::fs::read_dir(fixtures().join("images"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            !n.starts_with("big_") && !n.contains("1000")
        })
        .collect();
    srcs.sort();
    for i in 0..copies {
        for s in &srcs {
            let name = format!("{i:03}_{}", s.file_name().unwrap().to_string_lossy());
            let d = dir.join(name);
            std::fs::copy(s, &d).unwrap();
            out.push(d);
        }
    }
    out
}

/// Reads a CSV file into records (header included).
pub fn read_csv(path: &Path) -> Vec<Vec<String>> {
    let mut r = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_path(path)
        .unwrap();
    r.records()
        .map(|x| x.unwrap().iter().map(str::to_string).collect())
        .collect()
}

/// The shapes image generator built with the examples (`target/<profile>/examples/shapes`);
/// `cargo test --release` builds it.
pub fn shapes_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap();
    let bin = profile_dir
        .join("examples")
        .join(format!("shapes{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.is_file(),
        "{} missing: run the whole `cargo test --release` (or add `--example shapes`), which builds the examples",
        bin.display()
    );
    bin
}

/// Prints `SKIPPED: <what>` on standard error past the test harness's capture (which takes
/// `eprintln!`), so a case this machine cannot run shows in every `cargo test` run.
pub fn skipped(what: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED: {what}");
}
