//! Fused CPU kernels for the transformer's element-wise work.
//!
//! candle composes `x * sigmoid(1.702 x)` from three passes over memory, each allocating; a
//! profile of ViT-B/32 found that alone costing about a fifth of the forward pass on CPU. The
//! fused kernel below makes one parallel pass.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// The values of a contiguous f32 CPU tensor, for the fused operations' `cpu_fwd`; `op` names
/// the operation in the error otherwise.
pub(crate) fn contiguous_f32<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &str,
) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("{op}: only f32 is supported")
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("{op}: input must be contiguous")
    };
    Ok(&data[start..end])
}

/// A vector of `len` values written by `fill` through a raw pointer, without zeroing them first:
/// a matrix multiply's or attention's output is tens of megabytes at ViT-B/16's batch sizes
/// (fc1: 77 MB for 32 images), and the kernels write every value anyway.
///
/// # Safety
/// `fill` must write all `len` values.
pub(crate) unsafe fn filled_by(len: usize, fill: impl FnOnce(*mut f32)) -> Vec<f32> {
    let mut out: Vec<f32> = Vec::with_capacity(len);
    fill(out.as_mut_ptr());
    // SAFETY: the caller promises `fill` wrote all `len` values.
    unsafe { out.set_len(len) };
    out
}

struct QuickGelu;

#[inline]
fn quick_gelu_scalar(x: f32) -> f32 {
    x / (1.0 + (-1.702 * x).exp())
}

impl CustomOp1 for QuickGelu {
    fn name(&self) -> &'static str {
        "quick-gelu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let src = contiguous_f32(storage, layout, self.name())?;
        let mut out = vec![0f32; src.len()];
        out.par_chunks_mut(4096)
            .zip(src.par_chunks(4096))
            .for_each(|(o, i)| {
                for (o, &x) in o.iter_mut().zip(i) {
                    *o = quick_gelu_scalar(x);
                }
            });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

/// `x * sigmoid(1.702 x)`, fused on CPU; composed from candle ops elsewhere.
pub fn quick_gelu(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 {
        x.contiguous()?.apply_op1_no_bwd(&QuickGelu)
    } else {
        x * candle_nn::ops::sigmoid(&(x * 1.702)?)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn fused_matches_composed() {
        let v: Vec<f32> = (0..10_000).map(|i| (i as f32 - 5000.0) / 300.0).collect();
        let x = Tensor::from_vec(v, (100, 100), &Device::Cpu).unwrap();
        let a: Vec<f32> = quick_gelu(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let b: Vec<f32> = (&x * candle_nn::ops::sigmoid(&(&x * 1.702).unwrap()).unwrap())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let d = a
            .iter()
            .zip(&b)
            .map(|(p, q)| (p - q).abs())
            .fold(0f32, f32::max);
        assert!(d < 1e-5, "{d}");
    }
}
