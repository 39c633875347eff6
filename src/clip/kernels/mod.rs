//! cliplabel's own CPU kernels for the transformer: the register-blocked matrix multiply
//! ([`gemm`], with an AVX-512 and an AVX2 + FMA micro-kernel), fused attention ([`attention`]),
//! the instruction sets and vector maths they share ([`simd`]) and the candle custom ops that
//! call them ([`ops`]). They exist because candle's CPU matmul and
//! softmax leave speed on the table for CLIP's shapes (see the README's Performance section).

pub mod attention;
pub mod gemm;
mod gemm_avx2;
pub mod gemm_bf16;
pub mod gemm_int8;
pub mod ops;
pub mod precision;
pub mod simd;
