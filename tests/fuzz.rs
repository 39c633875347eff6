//! A bounded, deterministic fuzz of the library's decode + preprocess entry: seeded mutations
//! of every file of tests/fixtures/corpus/ (truncations, bit flips, byte runs, header-sized
//! fields set to 0/1/0xFFFF/0x7FFFFFFF/0xFFFFFFFF in both byte orders). Each case runs under
//! `catch_unwind` (a panic escaping the library fails the test, naming the case) and under a
//! watchdog (a case running over `CASE_LIMIT` fails the test, naming it). Also decodes the
//! committed crashers in tests/fixtures/crashers/, which must give clean errors.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use candle_core::Device;
use cliplabel::clip::config::PreprocessConfig;
use cliplabel::clip::engine::{Engine, EngineOptions};
use cliplabel::images::decode::{decode_rgb, DecodeLimits, CRASH_PREFIX};
use cliplabel::images::preprocess::preprocess;

const CASE_LIMIT: Duration = Duration::from_secs(10);
const WORKERS: usize = 2;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

/// SplitMix64: a fixed seed gives the same cases on every run.
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

struct Case {
    name: String,
    bytes: Vec<u8>,
}

fn mutations(name: &str, data: &[u8], rng: &mut Rng) -> Vec<Case> {
    let mut out = Vec::new();
    let n = data.len();
    // Truncations: fixed fractions plus random offsets, and the header region byte by byte.
    let mut cuts: Vec<usize> = (1..8).map(|i| n * i / 8).collect();
    cuts.extend((0..4).map(|_| rng.below(n)));
    cuts.extend([1, 4, 8, 12, 16, 24, 33].into_iter().filter(|&c| c < n));
    for c in cuts {
        out.push(Case {
            name: format!("{name} truncated at {c}"),
            bytes: data[..c].to_vec(),
        });
    }
    // Bit flips (1 and 8 at a time).
    for k in 0..6 {
        let mut b = data.to_vec();
        let flips = if k % 2 == 0 { 1 } else { 8 };
        let mut at = Vec::new();
        for _ in 0..flips {
            let i = rng.below(n);
            b[i] ^= 1 << rng.below(8);
            at.push(i);
        }
        out.push(Case {
            name: format!("{name} bits flipped at {at:?}"),
            bytes: b,
        });
    }
    // Byte runs.
    for _ in 0..3 {
        let mut b = data.to_vec();
        let i = rng.below(n);
        let len = 1 + rng.below(64);
        let v = [0u8, 0xFF, 0x80][rng.below(3)];
        for x in b.iter_mut().skip(i).take(len) {
            *x = v;
        }
        out.push(Case {
            name: format!("{name} run of {len} x {v:#04x} at {i}"),
            bytes: b,
        });
    }
    // Header fields (widths, heights, offsets, counts, depths live in the first bytes).
    const EXTREMES: [u32; 5] = [0, 1, 0xFFFF, 0x7FFF_FFFF, 0xFFFF_FFFF];
    for _ in 0..8 {
        let mut b = data.to_vec();
        let head = n.min(160);
        let i = rng.below(head.saturating_sub(4));
        let v = EXTREMES[rng.below(5)];
        let wide = rng.below(2) == 0;
        let be = rng.below(2) == 0;
        let bytes: Vec<u8> = match (wide, be) {
            (true, true) => v.to_be_bytes().to_vec(),
            (true, false) => v.to_le_bytes().to_vec(),
            (false, true) => (v as u16).to_be_bytes().to_vec(),
            (false, false) => (v as u16).to_le_bytes().to_vec(),
        };
        for (k, x) in bytes.iter().enumerate() {
            if let Some(d) = b.get_mut(i + k) {
                *d = *x;
            }
        }
        out.push(Case {
            name: format!(
                "{name} field at {i} set to {v:#x} ({} bits, {})",
                if wide { 32 } else { 16 },
                if be { "BE" } else { "LE" }
            ),
            bytes: b,
        });
    }
    // TIFF IFD entries (little-endian classic TIFF): counts and values set to small and
    // boundary numbers, the mutation that found the committed crashers.
    if data.starts_with(b"II*\0") && n >= 8 {
        let ifd = u32::from_le_bytes(data[4..8].try_into().unwrap()) as usize;
        let count = data
            .get(ifd..ifd + 2)
            .map_or(0, |c| u16::from_le_bytes([c[0], c[1]]) as usize);
        const VALUES: [u32; 16] = [
            0,
            1,
            2,
            3,
            4,
            5,
            7,
            8,
            12,
            16,
            17,
            31,
            40,
            64,
            0xFFFF,
            0xFFFF_FFFF,
        ];
        for _ in 0..12 {
            if count == 0 || ifd + 2 + 12 * count > n {
                break;
            }
            let mut b = data.to_vec();
            let e = ifd + 2 + 12 * rng.below(count);
            let v = VALUES[rng.below(VALUES.len())];
            let tag = u16::from_le_bytes([b[e], b[e + 1]]);
            let (what, at, bytes) = match rng.below(3) {
                0 => ("count", e + 4, v.to_le_bytes().to_vec()),
                1 => ("value (16 bits)", e + 8, (v as u16).to_le_bytes().to_vec()),
                _ => ("value (32 bits)", e + 8, v.to_le_bytes().to_vec()),
            };
            b[at..at + bytes.len()].copy_from_slice(&bytes);
            out.push(Case {
                name: format!("{name} IFD tag {tag} {what} set to {v:#x}"),
                bytes: b,
            });
        }
    }
    out
}

/// Runs one case; `Err` names a panic that escaped the library.
fn run_case(case: &Case, cfg: &PreprocessConfig, limits: &DecodeLimits) -> Result<Outcome, String> {
    let path = Path::new(&case.name);
    catch_unwind(AssertUnwindSafe(|| {
        match decode_rgb(&case.bytes, path, limits) {
            Ok(img) => {
                let px = preprocess(&img, cfg);
                assert_eq!(px.data.len(), 3 * px.height * px.width);
                Outcome::Decoded
            }
            Err(e) if e.to_string().contains(CRASH_PREFIX) => Outcome::Crashed(e.to_string()),
            Err(_) => Outcome::Refused,
        }
    }))
    .map_err(|_| format!("panic escaped the library on case: {}", case.name))
}

/// What a worker is running: the case index and when it started (for the watchdog).
type Slot = Mutex<Option<(usize, Instant)>>;

enum Outcome {
    Decoded,
    Refused,
    Crashed(String),
}

#[test]
fn mutated_corpus_never_panics_or_hangs() {
    let dir = root().join("tests/fixtures/corpus");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".rgb") && !n.ends_with(".json"))
        .collect();
    names.sort();
    assert!(names.len() >= 100, "corpus too small");
    let mut rng = Rng(0x5EED_C11B);
    let mut cases = Vec::new();
    for n in &names {
        let data = std::fs::read(dir.join(n)).unwrap();
        cases.extend(mutations(n, &data, &mut rng));
    }
    assert!(cases.len() >= 5000, "only {} cases", cases.len());
    let model = root().join("tests/fixtures/tiny-clip");
    let cfg = Engine::try_new(EngineOptions::new(model.to_str().unwrap()).device(Device::Cpu))
        .unwrap()
        .preprocess_config()
        .clone();
    let limits = DecodeLimits::default();
    let cases = Arc::new(cases);
    let next = Arc::new(AtomicUsize::new(0));
    let slots: Arc<Vec<Slot>> = Arc::new((0..WORKERS).map(|_| Mutex::new(None)).collect());
    let results = Arc::new(Mutex::new((
        0usize,
        0usize,
        Vec::<String>::new(),
        Vec::<String>::new(),
    )));
    let done = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    for w in 0..WORKERS {
        let (cases, next, slots, results, done, cfg) = (
            cases.clone(),
            next.clone(),
            slots.clone(),
            results.clone(),
            done.clone(),
            cfg.clone(),
        );
        handles.push(std::thread::spawn(move || loop {
            let i = next.fetch_add(1, Ordering::SeqCst);
            if i >= cases.len() {
                *slots[w].lock().unwrap() = None;
                done.fetch_add(1, Ordering::SeqCst);
                return;
            }
            *slots[w].lock().unwrap() = Some((i, Instant::now()));
            let r = run_case(&cases[i], &cfg, &limits);
            let mut res = results.lock().unwrap();
            match r {
                Ok(Outcome::Decoded) => res.0 += 1,
                Ok(Outcome::Refused) => res.1 += 1,
                Ok(Outcome::Crashed(msg)) => {
                    res.1 += 1;
                    res.2.push(format!("{}: {msg}", cases[i].name));
                }
                Err(e) => res.3.push(e),
            }
        }));
    }
    let start = Instant::now();
    while done.load(Ordering::SeqCst) < WORKERS {
        std::thread::sleep(Duration::from_millis(50));
        for s in slots.iter() {
            if let Some((i, t)) = *s.lock().unwrap() {
                assert!(
                    t.elapsed() < CASE_LIMIT,
                    "case ran over {CASE_LIMIT:?} (hang): {}",
                    cases[i].name
                );
            }
        }
    }
    for h in handles {
        h.join().unwrap();
    }
    let res = results.lock().unwrap();
    println!(
        "fuzz: {} cases from {} files in {:.1} s: decoded {}, refused {} (of which decoder crashes caught: {})",
        cases.len(),
        names.len(),
        start.elapsed().as_secs_f64(),
        res.0,
        res.1,
        res.2.len()
    );
    for c in res.2.iter().take(20) {
        println!("caught crash: {c}");
    }
    assert!(res.3.is_empty(), "panics escaped:\n{}", res.3.join("\n"));
}

#[test]
fn committed_crashers_give_clean_errors() {
    let dir = root().join("tests/fixtures/crashers");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "md") {
            continue;
        }
        let bytes = std::fs::read(&p).unwrap();
        let r = catch_unwind(|| decode_rgb(&bytes, &p, &DecodeLimits::default()));
        let r = r.unwrap_or_else(|_| panic!("panic escaped on {}", p.display()));
        let err = r.expect_err(&format!("{} decoded; expected a clean error", p.display()));
        println!("{}: {err}", p.display());
        if p.file_name()
            .is_some_and(|f| f == "tiff_row_stride_assert.tif")
        {
            // The tiff crate panics on this file: the decode entry must report the crash.
            assert!(
                err.to_string().contains(CRASH_PREFIX),
                "expected a caught decoder crash, got: {err}"
            );
        }
        n += 1;
    }
    assert!(n >= 1, "no crasher fixtures in {}", dir.display());
}
