//! Times the packed matrix multiplies (AVX-512 and AVX2 + FMA, each where this CPU has it)
//! against candle's for ViT-B/32's linear layers.
//!
//! `cargo run --release --features internals --example bench_gemm -- [rows] [repeats]` (rows
//! default 1600: 32 images of 50 tokens). The paths are interleaved in every repeat (the machine
//! may be shared); prints, for each layer shape, the median GFLOP/s of each path by wall-clock
//! time, the median per CPU-second (the process's threads' time on a CPU, from Linux's
//! `/proc/self/task/*/schedstat`: less sensitive to other processes taking the cores, though
//! not to their use of the caches) and its largest difference to candle's result.

use std::time::Instant;

use candle_core::{Device, Module, Tensor};
use cliplabel::clip::kernels::gemm::{Epilogue, Isa, PackedWeight};

#[path = "support/timing.rs"]
mod timing;
use timing::{cpu_ns, median};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Floating-point operations of a register-only loop of independent FMAs (24 chains of 16 lanes
/// for AVX-512, 12 of 8 for AVX2), about 0.3 s of work; `isa` must be available.
#[cfg(target_arch = "x86_64")]
fn peak(isa: Isa) -> f64 {
    use std::arch::x86_64::*;
    #[target_feature(enable = "avx512f")]
    fn p512(n: usize) -> f64 {
        let x = std::hint::black_box(_mm512_set1_ps(1e-3));
        let mut acc = [_mm512_setzero_ps(); 24];
        for _ in 0..n {
            for a in acc.iter_mut() {
                *a = _mm512_fmadd_ps(x, x, *a);
            }
        }
        std::hint::black_box(acc);
        (n * 24 * 32) as f64
    }
    #[target_feature(enable = "avx2,fma")]
    fn p256(n: usize) -> f64 {
        let x = std::hint::black_box(_mm256_set1_ps(1e-3));
        let mut acc = [_mm256_setzero_ps(); 12];
        for _ in 0..n {
            for a in acc.iter_mut() {
                *a = _mm256_fmadd_ps(x, x, *a);
            }
        }
        std::hint::black_box(acc);
        (n * 12 * 16) as f64
    }
    assert!(isa.available());
    // SAFETY: the CPU has `isa` (asserted above).
    unsafe {
        match isa {
            Isa::Avx512 => p512(2_000_000),
            Isa::Avx2 => p256(4_000_000),
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn peak(_: Isa) -> f64 {
    unreachable!("no packed kernels off x86_64")
}

/// Wall-clock and CPU seconds of `f`.
fn timed<T>(f: impl FnOnce() -> T) -> (T, f64, f64) {
    let (c, t) = (cpu_ns(), Instant::now());
    let y = f();
    let wall = t.elapsed().as_secs_f64();
    (y, wall, (cpu_ns() - c) as f64 * 1e-9)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let m: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(1600);
    let reps: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(5);
    let dev = Device::Cpu;
    let isas: Vec<Isa> = Isa::ALL.into_iter().filter(|i| i.available()).collect();
    println!(
        "rows {m}, threads {}, repeats {reps}, packed paths {:?}",
        rayon::current_num_threads(),
        isas
    );
    // The ceiling: independent FMA chains in registers, no memory.
    for &isa in &isas {
        let mut v: Vec<f64> = (0..5)
            .map(|_| {
                let (flops, _, cpu) = timed(|| peak(isa));
                flops / cpu / 1e9
            })
            .collect();
        println!(
            "{} register-only FMA loop: {:.1} GFLOP/CPU-s (median of 5)",
            isa.name(),
            median(&mut v)
        );
    }
    for (name, n, k) in [
        ("qkv", 2304, 768),
        ("out", 768, 768),
        ("fc1", 3072, 768),
        ("fc2", 768, 3072),
    ] {
        let w = Tensor::randn(0f32, 0.02, (n, k), &dev)?;
        let b = Tensor::randn(0f32, 0.02, n, &dev)?;
        let x = Tensor::randn(0f32, 1.0, (m, k), &dev)?;
        let lin = candle_nn::Linear::new(w.clone(), Some(b.clone()));
        let (wv, bv) = (w.flatten_all()?.to_vec1::<f32>()?, b.to_vec1::<f32>()?);
        let packed: Vec<PackedWeight> = isas
            .iter()
            .map(|&isa| PackedWeight::new_for(isa, &wv, Some(&bv), n, k))
            .collect();
        let flops = 2.0 * (m * n * k) as f64;
        // One warm-up of each path.
        let y_c = lin.forward(&x)?;
        let mut y_p = Vec::new();
        for p in &packed {
            y_p.push(x.apply_op1_no_bwd(&p.op(Epilogue::None))?);
        }
        // (wall, cpu) seconds of each repeat: candle's, then each packed path's.
        let mut t = vec![(Vec::new(), Vec::new()); packed.len() + 1];
        for _ in 0..reps {
            let (y, wall, cpu) = timed(|| lin.forward(&x));
            drop(y?);
            t[0].0.push(wall);
            t[0].1.push(cpu);
            for (p, times) in packed.iter().zip(&mut t[1..]) {
                let (y, wall, cpu) = timed(|| x.apply_op1_no_bwd(&p.op(Epilogue::None)));
                drop(y?);
                times.0.push(wall);
                times.1.push(cpu);
            }
        }
        let rate = |times: &mut (Vec<f64>, Vec<f64>)| {
            let cpu = median(&mut times.1);
            let per_cpu = if cpu > 0.0 {
                flops / cpu / 1e9
            } else {
                f64::NAN
            };
            format!(
                "{:6.1} ({per_cpu:5.1}/CPU-s)",
                flops / median(&mut times.0) / 1e9
            )
        };
        let mut line = format!("{name:4} {n:5}x{k:5}: candle {}", rate(&mut t[0]));
        for ((p, times), y) in packed.iter().zip(&mut t[1..]).zip(&y_p) {
            let diff = (&y_c - y)?
                .abs()?
                .flatten_all()?
                .max(0)?
                .to_scalar::<f32>()?;
            line += &format!("   {} {} diff {diff:.1e}", p.isa().name(), rate(times));
        }
        println!("{line}  GFLOP/s, median of {reps}");
    }
    Ok(())
}
