//! Times the packed AVX-512 matrix multiply against candle's for ViT-B/32's linear layers.
//!
//! `cargo run --release --example bench_gemm -- [rows] [repeats]` (rows default 1600: 32 images
//! of 50 tokens). Prints GFLOP/s for each layer shape.

use std::time::Instant;

use candle_core::{Device, Module, Tensor};
use cliplabel::clip::kernels::gemm::{self, PackedWeight};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let m: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(1600);
    let reps: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(5);
    let dev = Device::Cpu;
    println!("rows {m}, threads {}", rayon::current_num_threads());
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
        let packed = PackedWeight::new(
            &w.flatten_all()?.to_vec1::<f32>()?,
            Some(&b.to_vec1::<f32>()?),
            n,
            k,
        );
        let flops = 2.0 * (m * n * k) as f64;
        let mut best_c = f64::MAX;
        let mut best_p = f64::MAX;
        let mut y_c = lin.forward(&x)?;
        let mut y_p = y_c.clone();
        for _ in 0..reps {
            let t = Instant::now();
            y_c = lin.forward(&x)?;
            best_c = best_c.min(t.elapsed().as_secs_f64());
            if gemm::available() {
                let t = Instant::now();
                y_p = x.apply_op1_no_bwd(&packed.op(gemm::Epilogue::None))?;
                best_p = best_p.min(t.elapsed().as_secs_f64());
            }
        }
        let diff = (&y_c - &y_p)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?;
        println!(
            "{name:4} {n:5}x{k:5}: candle {:6.1} GFLOP/s   packed {:6.1} GFLOP/s   max diff {diff:.2e}",
            flops / best_c / 1e9,
            flops / best_p / 1e9
        );
    }
    Ok(())
}
