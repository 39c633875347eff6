//! Benchmarks of the dataset audit (`cliplabel::eval::audit`).
//!
//! Near-duplicate search (exact blocked k-NN) on random unit vectors, with time and peak RSS:
//! ```text
//! cargo run --release --example bench_audit -- knn 100000 512
//! ```
//! Likely mislabels on an image folder with a share of labels flipped (seeded): writes the
//! out-of-fold probabilities, the labels and our ranked issues for
//! `scripts/bench_audit_vs_cleanlab.py`, which runs cleanlab on the same probabilities:
//! ```text
//! cargo run --release --example bench_audit -- mislabels MODEL DIR FLIP SEED OUTDIR
//! ```

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use cliplabel::clip::engine::{Engine, EngineOptions, Features};
use cliplabel::eval::audit::{
    duplicates, mislabels, run_audit, AuditOptions, AuditSources, RankBy,
};
use cliplabel::eval::dataset::LabelledSet;
use cliplabel::jobs::cache::EmbeddingCache;

/// Peak resident set size of this process (`VmHWM`), in MiB.
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

struct SplitMix(u64);
impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f32 {
        ((self.next() >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn knn(n: usize, d: usize) {
    let mut rng = SplitMix(1);
    let mut x: Vec<f32> = (0..n * d).map(|_| rng.unit()).collect();
    // 1% of the rows are near-copies of the row before them.
    for i in (1..n).step_by(100) {
        for c in 0..d {
            x[i * d + c] = x[(i - 1) * d + c] + 0.01 * rng.unit();
        }
    }
    for r in x.chunks_mut(d) {
        let s = r.iter().map(|v| v * v).sum::<f32>().sqrt();
        r.iter_mut().for_each(|v| *v /= s);
    }
    let before = peak_rss_mib();
    let opts = AuditOptions::default();
    let t = Instant::now();
    let nb = duplicates::neighbours(
        &x,
        d,
        opts.duplicate_threshold,
        opts.k,
        opts.block_rows,
        |_, _| {},
    )
    .unwrap();
    let secs = t.elapsed().as_secs_f64();
    println!(
        "knn: n={n} d={d} k={} threshold={} block_rows={} threads={} avx512={}: {secs:.1} s, {} pairs, peak RSS {:.0} MiB (embeddings alone {:.0} MiB, peak before the search {before:.0} MiB)",
        opts.k,
        opts.duplicate_threshold,
        opts.block_rows,
        rayon::current_num_threads(),
        avx512(),
        nb.pairs.len(),
        peak_rss_mib(),
        (n * d * 4) as f64 / (1 << 20) as f64
    );
}

fn mislabels_cmd(model: &str, dir: &Path, flip: f64, seed: u64, out: &Path) {
    let engine = Engine::try_new(EngineOptions::new(model.to_string())).unwrap();
    let mut set = LabelledSet::from_image_folder(dir).unwrap();
    let truth = set.labels.clone();
    let k = set.classes.len();
    let n = set.paths.len();
    let mut rng = SplitMix(seed);
    let mut flipped = vec![false; n];
    let want = (n as f64 * flip).round() as usize;
    let mut done = 0;
    while done < want {
        let i = rng.below(n);
        if !flipped[i] {
            flipped[i] = true;
            set.labels[i] = (set.labels[i] + 1 + rng.below(k - 1)) % k;
            done += 1;
        }
    }
    let mut cache = EmbeddingCache::open(None, &engine, Features::Projected).unwrap();
    let t = Instant::now();
    let r = run_audit(
        &engine,
        &mut cache,
        AuditSources {
            train: &set,
            test: None,
            zero_shot: None,
            batch_size: 64,
        },
        &AuditOptions::default(),
        |_| {},
    )
    .unwrap();
    let audit_secs = t.elapsed().as_secs_f64();
    assert!(r.failures.is_empty());
    // Confident learning alone on the probabilities, as cleanlab's call is timed.
    let reps = 20;
    let t = Instant::now();
    let mut cl = None;
    for _ in 0..reps {
        cl = Some(
            mislabels::confident_learning(&r.probs, k, &r.labels, RankBy::SelfConfidence).unwrap(),
        );
    }
    let cl_secs = t.elapsed().as_secs_f64() / reps as f64;
    let cl = cl.unwrap();
    std::fs::create_dir_all(out).unwrap();
    let mut f = std::fs::File::create(out.join("probs.csv")).unwrap();
    for row in r.probs.chunks_exact(k) {
        let line: Vec<String> = row.iter().map(|v| format!("{v:e}")).collect();
        writeln!(f, "{}", line.join(",")).unwrap();
    }
    let mut f = std::fs::File::create(out.join("labels.csv")).unwrap();
    writeln!(f, "given,true").unwrap();
    for (g, t) in r.labels.iter().zip(&truth) {
        writeln!(f, "{g},{t}").unwrap();
    }
    let mut f = std::fs::File::create(out.join("ours.csv")).unwrap();
    writeln!(f, "index,given,suggested,score").unwrap();
    for i in &cl.issues {
        writeln!(f, "{},{},{},{}", i.index, i.given, i.suggested, i.score).unwrap();
    }
    let meta = serde_json::json!({
        "images": n, "classes": k, "flipped": want,
        "c": r.cv_c, "cv_accuracy": r.cv_accuracy, "cv_log_loss": r.cv_log_loss,
        "audit_seconds": audit_secs, "confident_learning_seconds": cl_secs,
        "threads": rayon::current_num_threads(),
    });
    std::fs::write(
        out.join("meta.json"),
        serde_json::to_vec_pretty(&meta).unwrap(),
    )
    .unwrap();
    println!("{meta}");
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    match a.get(1).map(String::as_str) {
        Some("knn") => knn(
            a.get(2).map_or(100_000, |v| v.parse().unwrap()),
            a.get(3).map_or(512, |v| v.parse().unwrap()),
        ),
        Some("mislabels") if a.len() == 7 => mislabels_cmd(
            &a[2],
            Path::new(&a[3]),
            a[4].parse().unwrap(),
            a[5].parse().unwrap(),
            Path::new(&a[6]),
        ),
        _ => {
            eprintln!("usage: bench_audit knn [N] [DIM] | bench_audit mislabels MODEL DIR FLIP SEED OUTDIR");
            std::process::exit(2);
        }
    }
}

/// Whether the CPU has the AVX-512 features the packed kernel needs (it is used when so).
fn avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}
