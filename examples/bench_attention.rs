//! Times the fused attention kernel (`clip::kernels::attention`) at the image towers' shapes,
//! for every instruction set this CPU has and the portable loops, against candle's composition
//! (contiguous Q/K/V copies, batched matmul, softmax, matmul), as `CLIPLABEL_KERNELS=candle`
//! runs it.
//!
//! `cargo run --release --features internals --example bench_attention -- [repeats]` (default 5). Shapes: ViT-B/32
//! (32 images of 50 tokens, 12 heads), ViT-B/16 (32 of 197, 12 heads), ViT-L/14-336 (8 of 577,
//! 16 heads); head width 64. The paths are interleaved in every repeat (each: one untimed call,
//! then three timed); prints the median
//! GFLOP/s (4 · batch · heads · tokens² · head width per call) by wall-clock time and per
//! CPU-second (Linux's schedstat), and the largest difference to candle's result.

use std::time::Instant;

use candle_core::{Device, Tensor};
use cliplabel::clip::kernels::attention::{attention, AttentionShape, Queries};
use cliplabel::clip::kernels::simd::Isa;

#[path = "support/timing.rs"]
mod timing;
use timing::{cpu_ns, median};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// candle's composition on `qkv` (`[b, s, 3 · h · hd]`), as the model's unfused path runs it.
fn candle_attention(qkv: &[f32], s: AttentionShape, scale: f32) -> candle_core::Result<Vec<f32>> {
    let (b, n, h, hd) = (s.batch, s.seq, s.heads, s.head_dim);
    let t = Tensor::from_slice(qkv, (b, n, 3, h, hd), &Device::Cpu)?;
    let t = t.permute((2, 0, 3, 1, 4))?; // (3, b, h, n, hd)
    let q = (t.get(0)?.contiguous()? * scale as f64)?;
    let k = t.get(1)?.contiguous()?;
    let v = t.get(2)?.contiguous()?;
    let att = candle_nn::ops::softmax_last_dim(&q.matmul(&k.t()?)?)?;
    let y = att.matmul(&v)?.transpose(1, 2)?.contiguous()?;
    y.flatten_all()?.to_vec1()
}

fn main() -> anyhow::Result<()> {
    let repeats: usize = std::env::args()
        .nth(1)
        .map(|r| r.parse())
        .transpose()?
        .unwrap_or(5);
    let mut paths: Vec<(String, Option<Option<Isa>>)> = vec![("candle".into(), None)];
    for isa in Isa::ALL.into_iter().filter(|i| i.available()) {
        paths.push((isa.name().to_string(), Some(Some(isa))));
    }
    paths.push(("portable".into(), Some(None)));
    for (name, batch, seq, heads) in [
        ("ViT-B/32", 32, 50, 12),
        ("ViT-B/16", 32, 197, 12),
        ("ViT-L/14-336", 8, 577, 16),
    ] {
        let shape = AttentionShape {
            batch,
            seq,
            heads,
            head_dim: 64,
        };
        let qkv: Vec<f32> = (0..batch * seq * 3 * heads * 64)
            .map(|i| ((i * 7919 % 1000) as f32 / 250.0) - 2.0)
            .collect();
        let scale = 0.125;
        let flop = 4.0 * (batch * heads * seq * seq * 64) as f64 / 1e9;
        let want = candle_attention(&qkv, shape, scale)?;
        let mut wall = vec![vec![]; paths.len()];
        let mut cpu = vec![vec![]; paths.len()];
        let mut diff = vec![0f32; paths.len()];
        for _ in 0..repeats {
            for (i, (_, path)) in paths.iter().enumerate() {
                let run = || -> candle_core::Result<Vec<f32>> {
                    Ok(match path {
                        None => candle_attention(&qkv, shape, scale)?,
                        Some(isa) => attention(&qkv, shape, scale, false, &Queries::All, *isa),
                    })
                };
                // One untimed call (the threads wake, the output's pages are mapped), then
                // three timed back to back.
                let mut got = run()?;
                let (c0, t0) = (cpu_ns(), Instant::now());
                for _ in 0..3 {
                    got = run()?;
                }
                wall[i].push(3.0 * flop / t0.elapsed().as_secs_f64());
                cpu[i].push(3.0 * flop / ((cpu_ns() - c0) as f64 * 1e-9));
                diff[i] = got
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| (a - b).abs())
                    .fold(diff[i], f32::max);
            }
        }
        let cells: Vec<String> = paths
            .iter()
            .enumerate()
            .map(|(i, (p, _))| {
                format!(
                    "{p} {:.1} ({:.1}/CPU-s, diff {:.1e})",
                    median(&mut wall[i]),
                    median(&mut cpu[i]),
                    diff[i]
                )
            })
            .collect();
        println!(
            "{name} ({batch} x {seq} tokens, {heads} heads): {}  GFLOP/s, median of {repeats}",
            cells.join("   ")
        );
    }
    Ok(())
}
