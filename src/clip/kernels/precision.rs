//! The arithmetic precision of the transformers' linear layers ([`Precision`]), which
//! instruction sets each one needs, the fallback when the CPU lacks them ([`resolve`]), and the
//! candle operation shared by the low-precision packed weights ([`LinearOp`]).
//!
//! Only the encoder layers' matrix multiplies change precision; layer norms, softmax,
//! attention, residuals, the patch embedding and the final projections stay in fp32.

use std::fmt;
use std::str::FromStr;

use candle_core::{CpuStorage, CustomOp1, Layout, Shape};
use serde::{Deserialize, Serialize};

use crate::clip::kernels::gemm::Epilogue;
use crate::clip::kernels::simd::Isa;

/// Arithmetic of the encoders' linear layers (`--precision`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Single precision throughout: the same numbers as transformers (the default).
    #[default]
    Fp32,
    /// Weights stored as bf16 (converted once at load), activations rounded to bf16
    /// (round-to-nearest-even) at each multiply's input, products summed in fp32
    /// (AVX512-BF16 `vdpbf16ps`).
    Bf16,
    /// Weights as int8 with one symmetric scale per output channel, activations quantised to
    /// int8 per token at each multiply's input, products summed exactly in int32
    /// (`vpdpbusd`: AVX512-VNNI with the AVX-512 kernels, AVX-VNNI with the AVX2 ones), then
    /// scaled back to fp32.
    Int8,
}

impl Precision {
    /// Every precision, fastest last.
    pub const ALL: [Precision; 3] = [Precision::Fp32, Precision::Bf16, Precision::Int8];

    /// The name used on the command line and in files.
    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
            Precision::Int8 => "int8",
        }
    }

    /// Whether this CPU runs `self` as asked with the best of cliplabel's packed CPU kernels
    /// it has (fp32: always; bf16: AVX512-BF16; int8: AVX512-VNNI, or AVX-VNNI without
    /// AVX-512), rather than falling back (see [`resolve`]).
    pub fn native(self) -> bool {
        self.native_with(Isa::best())
    }

    /// Whether `self` runs as asked with the packed kernels of `isa` (`None`: candle's path).
    pub fn native_with(self, isa: Option<Isa>) -> bool {
        resolve(self, isa, Caps::detect()).0 == self
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Precision::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown precision {s:?} (expected fp32, bf16 or int8)"))
    }
}

/// The instruction sets the packed kernels can use.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Caps {
    /// AVX512-BF16 (`vdpbf16ps`) with AVX-512F, BW and VL.
    pub bf16: bool,
    /// AVX512-VNNI (`vpdpbusd`) with AVX-512F and BW.
    pub vnni: bool,
    /// AVX-VNNI (`vpdpbusd` on 8-lane registers, VEX-encoded) with AVX2 and FMA: Intel Alder
    /// Lake and later client parts, Sierra Forest, Sapphire Rapids.
    pub avx_vnni: bool,
    /// Multiply-adds per second of `vdpbf16ps` over those of fp32 `vfmadd` (2 where the
    /// instruction runs at the FMA's rate; measured once, in about a millisecond, where
    /// `bf16` holds; 0 otherwise).
    pub bf16_rate: f64,
}

impl Caps {
    /// What this CPU has.
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            static CAPS: std::sync::OnceLock<Caps> = std::sync::OnceLock::new();
            *CAPS.get_or_init(|| {
                let f = has!("avx512f");
                let bf16 = f && has!("avx512bw") && has!("avx512vl") && has!("avx512bf16");
                Caps {
                    bf16,
                    vnni: f && has!("avx512bw") && has!("avx512vnni"),
                    avx_vnni: has!("avx2") && has!("fma") && has!("avxvnni"),
                    // SAFETY: AVX-512F and AVX512-BF16 are present.
                    bf16_rate: if bf16 {
                        unsafe { x86::bf16_rate() }
                    } else {
                        0.0
                    },
                }
            })
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            Caps {
                bf16: false,
                vnni: false,
                avx_vnni: false,
                bf16_rate: 0.0,
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;
    use std::hint::black_box;
    use std::time::Instant;

    /// Seconds for `n` rounds of 24 independent `vfmadd231ps` (`bf16` false) or `vdpbf16ps`.
    #[target_feature(enable = "avx512f,avx512bf16")]
    fn chains(n: usize, bf16: bool) -> f64 {
        let x = black_box(_mm512_set1_ps(1e-3));
        let h: __m512bh = _mm512_cvtne2ps_pbh(x, x);
        let mut acc = [_mm512_setzero_ps(); 24];
        let t = Instant::now();
        if bf16 {
            for _ in 0..n {
                for a in acc.iter_mut() {
                    *a = _mm512_dpbf16_ps(*a, h, h);
                }
            }
        } else {
            for _ in 0..n {
                for a in acc.iter_mut() {
                    *a = _mm512_fmadd_ps(x, x, *a);
                }
            }
        }
        black_box(acc);
        t.elapsed().as_secs_f64()
    }

    /// Multiply-add rate of `vdpbf16ps` (two per lane) over `vfmadd231ps` (one per lane): the
    /// best of five interleaved timings of each, about a millisecond in all.
    ///
    /// # Safety
    /// AVX-512F and AVX512-BF16 available.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn bf16_rate() -> f64 {
        let (mut f, mut b) = (f64::MAX, f64::MAX);
        for _ in 0..5 {
            f = f.min(chains(2000, false));
            b = b.min(chains(2000, true));
        }
        2.0 * f / b.max(1e-12)
    }
}

/// The precision the model will run for `requested` on the packed kernels of `isa` (`None`:
/// candle's path): itself where those kernels have a version for it and `caps` has its
/// instructions (bf16: the AVX-512 kernels with AVX512-BF16; int8: the AVX-512 kernels with
/// AVX512-VNNI, or the AVX2 kernels with AVX-VNNI), else the next lower one, with a one-line
/// note saying why. Emulating an instruction set would be slower than fp32, so never done.
pub fn resolve(requested: Precision, isa: Option<Isa>, caps: Caps) -> (Precision, Option<String>) {
    let usable = |p: Precision| match (p, isa) {
        (Precision::Fp32, _) => true,
        (Precision::Bf16, Some(Isa::Avx512)) => caps.bf16,
        (Precision::Int8, Some(Isa::Avx512)) => caps.vnni,
        (Precision::Int8, Some(Isa::Avx2)) => caps.avx_vnni,
        (Precision::Bf16, Some(Isa::Avx2)) | (_, None) => false,
    };
    if usable(requested) {
        let note = (requested == Precision::Bf16 && caps.bf16_rate < 1.0).then(|| {
            format!(
                "precision bf16 runs as asked, but this CPU's vdpbf16ps gives {:.2}x fp32's \
                 multiply-add rate: fp32 (or int8) is faster here",
                caps.bf16_rate
            )
        });
        return (requested, note);
    }
    let got = match requested {
        // Never fall back to bf16 where it is slower than fp32.
        Precision::Int8 if usable(Precision::Bf16) && caps.bf16_rate >= 1.0 => Precision::Bf16,
        _ => Precision::Fp32,
    };
    let why = match (requested, isa) {
        (_, None) => "needs cliplabel's packed kernels, which are not in use here",
        (Precision::Bf16, Some(Isa::Avx2)) => {
            "needs cliplabel's AVX-512 kernels (AVX512-BF16), and the AVX2 kernels are in use"
        }
        (Precision::Int8, Some(Isa::Avx2)) => {
            "needs AVX-VNNI with the AVX2 kernels, which this CPU lacks"
        }
        (Precision::Int8, _) => "needs AVX512-VNNI, which this CPU lacks",
        _ => "needs AVX512-BF16, which this CPU lacks",
    };
    (
        got,
        Some(format!("precision {requested} {why}: running {got}")),
    )
}

/// A packed weight matrix that multiplies contiguous f32 rows: `x · Wᵀ + b`, then `epilogue`.
pub trait PackedLinear: Sync {
    /// Input features.
    fn in_features(&self) -> usize;
    /// Output features.
    fn out_features(&self) -> usize;
    /// The `m * out_features` results for `x` of `m` rows.
    fn matmul_vec(&self, x: &[f32], m: usize, epilogue: Epilogue) -> Vec<f32>;
}

/// A [`PackedLinear`] as a candle operation on a contiguous f32 CPU tensor whose last
/// dimension is the input features.
pub struct LinearOp<'a, W: PackedLinear> {
    /// The weights.
    pub weight: &'a W,
    /// Applied to each result as it is stored.
    pub epilogue: Epilogue,
}

impl<W: PackedLinear> CustomOp1 for LinearOp<'_, W> {
    fn name(&self) -> &'static str {
        "packed-linear-lowp"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let data = crate::clip::kernels::ops::contiguous_f32(storage, layout, self.name())?;
        let dims = layout.dims();
        let k = self.weight.in_features();
        match dims.last() {
            Some(&d) if d == k => {}
            _ => candle_core::bail!(
                "{}: input {dims:?} does not end in {k} features",
                self.name()
            ),
        }
        let m = dims[..dims.len() - 1].iter().product();
        let out = self.weight.matmul_vec(data, m, self.epilogue);
        let mut shape = dims.to_vec();
        if let Some(last) = shape.last_mut() {
            *last = self.weight.out_features();
        }
        Ok((CpuStorage::F32(out), Shape::from(shape)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_serialise_alike() {
        for p in Precision::ALL {
            assert_eq!(p.name().parse::<Precision>().unwrap(), p);
            assert_eq!(serde_json::to_string(&p).unwrap(), format!("\"{p}\""));
            assert_eq!(
                serde_json::from_str::<Precision>(&format!("\"{p}\"")).unwrap(),
                p
            );
        }
        assert_eq!("BF16".parse::<Precision>().unwrap(), Precision::Bf16);
        assert!("fp16".parse::<Precision>().is_err());
        assert_eq!(Precision::default(), Precision::Fp32);
    }

    #[test]
    fn missing_instructions_fall_back_one_step_with_a_note() {
        let avx512 = Some(Isa::Avx512);
        let avx2 = Some(Isa::Avx2);
        let all = Caps {
            bf16: true,
            vnni: true,
            avx_vnni: true,
            bf16_rate: 2.0,
        };
        let none = Caps {
            bf16: false,
            vnni: false,
            avx_vnni: false,
            bf16_rate: 0.0,
        };
        let vnni_only = Caps { vnni: true, ..none };
        let bf16_only = Caps {
            bf16: true,
            bf16_rate: 2.0,
            ..none
        };
        let avx_vnni_only = Caps {
            avx_vnni: true,
            ..none
        };
        // bf16 slower than fp32 runs as asked, but says so.
        let slow = Caps {
            bf16_rate: 0.5,
            ..all
        };
        let (got, note) = resolve(Precision::Bf16, avx512, slow);
        assert_eq!(got, Precision::Bf16);
        assert!(note.unwrap().contains("0.50x"));
        assert_eq!(
            resolve(Precision::Int8, avx512, slow),
            (Precision::Int8, None)
        );
        for p in Precision::ALL {
            assert_eq!(resolve(p, avx512, all), (p, None));
        }
        for isa in [avx512, avx2, None] {
            assert_eq!(resolve(Precision::Fp32, isa, none), (Precision::Fp32, None));
        }
        let (got, note) = resolve(Precision::Int8, avx512, bf16_only);
        assert_eq!(got, Precision::Bf16);
        assert!(note.unwrap().contains("AVX512-VNNI"));
        let (got, note) = resolve(Precision::Int8, avx512, none);
        assert_eq!(got, Precision::Fp32);
        assert!(note.unwrap().contains("running fp32"));
        let (got, note) = resolve(Precision::Bf16, avx512, vnni_only);
        assert_eq!(got, Precision::Fp32);
        assert!(note.unwrap().contains("AVX512-BF16"));
        assert_eq!(
            resolve(Precision::Int8, avx512, vnni_only).0,
            Precision::Int8
        );
        // AVX-VNNI is what int8 needs on the AVX2 kernels, and it is no use to the AVX-512 ones.
        assert_eq!(resolve(Precision::Int8, avx2, all), (Precision::Int8, None));
        assert_eq!(
            resolve(Precision::Int8, avx2, avx_vnni_only),
            (Precision::Int8, None)
        );
        assert_eq!(
            resolve(Precision::Int8, avx512, avx_vnni_only).0,
            Precision::Fp32
        );
        let (got, note) = resolve(Precision::Int8, avx2, vnni_only);
        assert_eq!(got, Precision::Fp32);
        assert!(note.unwrap().contains("AVX-VNNI"));
        // The AVX2 kernels have no bf16 version, and int8 never falls back to it there.
        let (got, note) = resolve(Precision::Bf16, avx2, all);
        assert_eq!(got, Precision::Fp32);
        assert!(note.unwrap().contains("AVX2 kernels are in use"));
        assert_eq!(resolve(Precision::Int8, avx2, bf16_only).0, Precision::Fp32);
        for p in [Precision::Bf16, Precision::Int8] {
            let (got, note) = resolve(p, None, all);
            assert_eq!(got, Precision::Fp32);
            let note = note.unwrap();
            assert!(note.contains("packed") && !note.contains('\n'), "{note}");
        }
    }
}
