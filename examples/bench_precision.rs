//! GFLOP/s of the packed matrix multiply in each precision (fp32, bf16, int8) at ViT-B/32's
//! linear-layer shapes, on the AVX-512 kernels and on the AVX2 ones (fp32 with FMA, int8 with
//! AVX-VNNI), interleaved within each repeat so that a noisy, shared machine disturbs them
//! alike. Int8 counts its multiply-adds as two operations, like fp32.
//!
//! `cargo run --release --example bench_precision -- [rows] [repeats]` (rows default 1600: 32
//! images of 50 tokens). Prints the load average before and after, then per shape and precision
//! the median and best GFLOP/s over the repeats, and the relative error to fp32.

use std::time::Instant;

use cliplabel::clip::kernels::gemm::{self, Epilogue, PackedWeight};
use cliplabel::clip::kernels::gemm_bf16::{self, PackedBf16};
use cliplabel::clip::kernels::gemm_int8::{self, PackedInt8};
use cliplabel::clip::kernels::simd::Isa;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn values(len: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed;
    (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5) * scale
        })
        .collect()
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let m: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(1600);
    let reps: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(5);
    anyhow::ensure!(
        gemm::available(),
        "this CPU has no AVX-512: nothing to compare"
    );
    let bf16 = gemm_bf16::available();
    let int8 = gemm_int8::available_for(Isa::Avx512);
    let (fp32_avx2, int8_avx2) = (Isa::Avx2.available(), gemm_int8::available_for(Isa::Avx2));
    println!(
        "rows {m}, threads {}, repeats {reps}, load average {}",
        rayon::current_num_threads(),
        load_average()
    );
    for (name, n, k) in [
        ("qkv", 2304, 768),
        ("out", 768, 768),
        ("fc1", 3072, 768),
        ("fc2", 768, 3072),
    ] {
        let w = values(n * k, 1, 0.07);
        let b = values(n, 2, 0.04);
        let x = values(m * k, 3, 3.4);
        let f = PackedWeight::new_for(Isa::Avx512, &w, Some(&b), n, k);
        let h = PackedBf16::new(&w, Some(&b), n, k);
        let q = PackedInt8::new_for(Isa::Avx512, &w, Some(&b), n, k);
        let f2 = PackedWeight::new_for(Isa::Avx2, &w, Some(&b), n, k);
        let q2 = PackedInt8::new_for(Isa::Avx2, &w, Some(&b), n, k);
        let mut outs = vec![vec![0f32; m * n]; 5];
        let mut times: Vec<Vec<f64>> = vec![Vec::new(); 5];
        for _ in 0..reps {
            for (i, out) in outs.iter_mut().enumerate() {
                let t = Instant::now();
                match i {
                    0 => f.matmul(&x, m, out),
                    1 if bf16 => h.matmul(&x, m, out, Epilogue::None),
                    2 if int8 => q.matmul(&x, m, out, Epilogue::None),
                    3 if fp32_avx2 => f2.matmul(&x, m, out),
                    4 if int8_avx2 => q2.matmul(&x, m, out, Epilogue::None),
                    _ => continue,
                }
                times[i].push(t.elapsed().as_secs_f64());
            }
        }
        let flops = 2.0 * (m * n * k) as f64;
        let mut line = format!("{name:4} {n:5}x{k:5}:");
        for (i, label) in ["fp32", "bf16", "int8", "fp32-avx2", "int8-avx2"]
            .iter()
            .enumerate()
        {
            let t = &mut times[i];
            if t.is_empty() {
                line += &format!("  {label} n/a");
                continue;
            }
            t.sort_by(f64::total_cmp);
            let err = (outs[i].iter().zip(&outs[0]))
                .map(|(a, b)| ((a - b) as f64).powi(2))
                .sum::<f64>()
                .sqrt()
                / outs[0]
                    .iter()
                    .map(|v| (*v as f64).powi(2))
                    .sum::<f64>()
                    .sqrt();
            line += &format!(
                "\n  {label:9} {:6.1} (best {:6.1}) GFLOP/s rel.err {err:.1e}",
                flops / t[t.len() / 2] / 1e9,
                flops / t[0] / 1e9
            );
        }
        println!("{line}");
    }
    println!("load average after: {}", load_average());
    Ok(())
}
