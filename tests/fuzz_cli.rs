//! A bounded CLI-level fuzz (issue #11): `cliplabel label` on a folder of a few hundred seeded
//! mutations of tests/fixtures/images/* (truncations, bit flips, header fields set to extremes,
//! zeroed runs). Every input must be labelled or listed as failed with a reason, the run must
//! exit 0 (failures are not errors), and it must finish within a bounded time.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use cliplabel::path_text;
use common::*;

/// SplitMix64: the mutations are the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One seeded mutation of `b`: the kind cycles with `i`.
fn mutate(b: &[u8], i: usize, rng: &mut Rng) -> Vec<u8> {
    let mut m = b.to_vec();
    match i % 4 {
        0 => m.truncate(rng.below(b.len())),
        1 => {
            for _ in 0..1 + rng.below(8) {
                let at = rng.below(m.len());
                m[at] ^= 1 << rng.below(8);
            }
        }
        2 => {
            // A header field (in the first 64 bytes) set to an extreme.
            let at = rng.below(m.len().min(64).saturating_sub(4));
            let v: [u8; 4] = match rng.below(4) {
                0 => [0; 4],
                1 => [0xff; 4],
                2 => [0x7f, 0xff, 0xff, 0xff],
                _ => [0xff, 0xff, 0xff, 0x7f],
            };
            let n = if rng.below(2) == 0 { 2 } else { 4 };
            let end = (at + n).min(m.len());
            m[at..end].copy_from_slice(&v[..end - at]);
        }
        _ => {
            let at = rng.below(m.len());
            let end = (at + 16).min(m.len());
            m[at..end].fill(0);
        }
    }
    m
}

#[test]
fn label_accounts_for_every_mutated_file_in_bounded_time() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("fuzz");
    std::fs::create_dir_all(&dir).unwrap();
    let mut seeds: Vec<_> = std::fs::read_dir(fixtures().join("images"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with("big_"))
        .collect();
    seeds.sort();
    seeds.push(fixtures().join("crashers/tiled_planar_rgb8.tif"));
    let mut rng = Rng(2026);
    let mut inputs = BTreeSet::new();
    const PER_SEED: usize = 12;
    for s in &seeds {
        let bytes = std::fs::read(s).unwrap();
        let name = s.file_name().unwrap().to_string_lossy();
        for i in 0..PER_SEED {
            let p = dir.join(format!("m{i:02}_{name}"));
            std::fs::write(&p, mutate(&bytes, i, &mut rng)).unwrap();
            inputs.insert(path_text(&p));
        }
    }
    assert!(inputs.len() >= 300, "{} files", inputs.len());
    let out = tmp.path().join("o.csv");
    let start = Instant::now();
    let o = run(cliplabel(&tmp.path().join("cache"))
        .arg("label")
        .arg("--model")
        .arg(tiny_model())
        .args(["--class", "cat", "--class", "dog", "--batch-size", "16"])
        // Decoding limits are issue #11 part 2; a low pixel limit keeps this test's time bounded.
        .args(["--max-pixels", "4000000"])
        .arg("--out")
        .arg(&out)
        .arg(&dir));
    let took = start.elapsed();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let rows: Vec<String> = read_csv(&out)[1..].iter().map(|r| r[0].clone()).collect();
    let failed_path = cliplabel::jobs::writers::failed_path(&out);
    let mut failed = Vec::new();
    if failed_path.exists() {
        for line in std::fs::read_to_string(&failed_path).unwrap().lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert!(!v["error"].as_str().unwrap().is_empty());
            failed.push(v["path"].as_str().unwrap().to_string());
        }
    }
    let mut seen: BTreeSet<String> = BTreeSet::new();
    for p in rows.iter().chain(&failed) {
        assert!(seen.insert(p.clone()), "{p} appears twice");
    }
    assert_eq!(seen, inputs, "labelled + failed differ from the inputs");
    assert!(
        err.contains(&format!(
            "labelled {}, abstained 0, failed {}",
            rows.len(),
            failed.len()
        )),
        "{err}"
    );
    eprintln!(
        "fuzz: {} files, {} labelled, {} failed, {:.1} s",
        inputs.len(),
        rows.len(),
        failed.len(),
        took.as_secs_f64()
    );
    assert!(
        took < Duration::from_secs(60),
        "took {:.1} s (bound 60 s in release)",
        took.as_secs_f64()
    );
}
