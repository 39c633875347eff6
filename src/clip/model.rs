//! The CLIP model: the text and vision transformers, built from a checked [`Checkpoint`].
//!
//! The architecture follows transformers' `CLIPModel` and reads every size from `config.json`.
//! Before any tensor is built, every expected tensor's name and shape is checked against the
//! safetensors headers ([`crate::clip::checkpoint`]), so a checkpoint of the wrong kind fails
//! with the file and tensor named.

use std::path::Path;

use candle_core::{Device, Module, Tensor};
use candle_nn::{LayerNorm, Linear};

use crate::clip::checkpoint::{expected_tensors, Checkpoint};
use crate::clip::config::{Activation, ClipConfig, TowerConfig};
use crate::clip::kernels::attention::{FusedAttention, Queries};
use crate::clip::kernels::gemm::{Epilogue, PackedWeight};
use crate::clip::kernels::gemm_bf16::PackedBf16;
use crate::clip::kernels::gemm_int8::PackedInt8;
use crate::clip::kernels::precision::{self, LinearOp, Precision};
use crate::clip::kernels::simd::Isa;
use crate::error::{ModelInputError, Result};

/// Which matrix multiply (and attention) the model's linear layers use on the CPU
/// (`CLIPLABEL_KERNELS=auto|avx512|avx2|candle` for the binary).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Kernels {
    /// The best this CPU has: cliplabel's packed AVX-512 kernels, else its AVX2 + FMA kernels,
    /// else candle's matmul.
    #[default]
    Auto,
    /// cliplabel's packed AVX-512 kernels (fp32, bf16, int8).
    Avx512,
    /// cliplabel's packed AVX2 + FMA kernels (fp32; int8 with AVX-VNNI; bf16 needs AVX-512
    /// and falls back to fp32 with a note).
    Avx2,
    /// candle's matmul and attention everywhere; the baseline the packed kernels are tested
    /// against.
    Candle,
}

impl Kernels {
    /// Every choice, in the order `Auto` tries the paths after itself.
    pub const ALL: [Kernels; 4] = [
        Kernels::Auto,
        Kernels::Avx512,
        Kernels::Avx2,
        Kernels::Candle,
    ];

    /// The name `CLIPLABEL_KERNELS` takes.
    pub fn name(self) -> &'static str {
        match self {
            Kernels::Auto => "auto",
            Kernels::Avx512 => "avx512",
            Kernels::Avx2 => "avx2",
            Kernels::Candle => "candle",
        }
    }

    /// The path `self` takes on this CPU (never `Auto`), and a one-line note when that is not
    /// the path asked for: a forced path the CPU lacks falls back to the next one (AVX-512 to
    /// AVX2 to candle).
    pub fn resolve(self) -> (Kernels, Option<String>) {
        self.resolve_for(Isa::Avx512.available(), Isa::Avx2.available())
    }

    /// [`Kernels::resolve`] on a CPU with AVX-512F (`avx512`) and AVX2 + FMA (`avx2`) or not.
    fn resolve_for(self, avx512: bool, avx2: bool) -> (Kernels, Option<String>) {
        let next = |from_avx512: bool| {
            if from_avx512 && avx2 {
                Kernels::Avx2
            } else {
                Kernels::Candle
            }
        };
        match self {
            Kernels::Auto if avx512 => (Kernels::Avx512, None),
            Kernels::Auto => (next(true), None),
            Kernels::Candle => (Kernels::Candle, None),
            Kernels::Avx512 if avx512 => (Kernels::Avx512, None),
            Kernels::Avx2 if avx2 => (Kernels::Avx2, None),
            Kernels::Avx512 | Kernels::Avx2 => {
                let (got, isa) = if self == Kernels::Avx512 {
                    (next(true), "AVX-512F")
                } else {
                    (next(false), "AVX2 and FMA")
                };
                let note = format!(
                    "kernels {self} need {isa}, which this CPU lacks: using {got}",
                    self = self.name(),
                    got = got.name()
                );
                (got, Some(note))
            }
        }
    }

    /// Whether precision `p` runs as asked, without falling back, on the path `self` takes on
    /// this CPU (see [`precision::resolve`]).
    pub fn runs_natively(self, p: Precision) -> bool {
        p.native_with(self.resolve().0.isa())
    }

    /// The packed kernels' instruction set for a resolved path (`None`: candle's).
    fn isa(self) -> Option<Isa> {
        match self {
            Kernels::Avx512 => Some(Isa::Avx512),
            Kernels::Avx2 => Some(Isa::Avx2),
            Kernels::Auto | Kernels::Candle => None,
        }
    }
}

impl std::fmt::Display for Kernels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Kernels {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Kernels::ALL
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| format!("unknown kernels {s:?} (expected auto, avx512, avx2 or candle)"))
    }
}

/// A linear layer `x · Wᵀ + b`: packed for cliplabel's kernels, or candle's.
enum Dense {
    Candle(Linear),
    Packed(PackedWeight),
    Bf16(PackedBf16),
    Int8(PackedInt8),
}

impl Dense {
    /// Packed for `isa`'s kernels (`None`: candle's matmul). `precision` must be one
    /// [`precision::resolve`] allows with `isa`.
    fn new(
        weight: Tensor,
        bias: Option<Tensor>,
        isa: Option<Isa>,
        precision: Precision,
    ) -> Result<Self> {
        let Some(isa) = isa else {
            return Ok(Dense::Candle(Linear::new(weight, bias)));
        };
        let (n, k) = weight.dims2()?;
        let w = weight.flatten_all()?.to_vec1::<f32>()?;
        let b = bias.map(|b| b.to_vec1::<f32>()).transpose()?;
        let b = b.as_deref();
        Ok(match precision {
            Precision::Fp32 => Dense::Packed(PackedWeight::new_for(isa, &w, b, n, k)),
            Precision::Bf16 => Dense::Bf16(PackedBf16::new(&w, b, n, k)),
            Precision::Int8 => Dense::Int8(PackedInt8::new_for(isa, &w, b, n, k)),
        })
    }

    /// `x · Wᵀ + b`, then `epilogue` (which candle's matmul leaves to the caller).
    fn apply(&self, x: &Tensor, epilogue: Epilogue) -> Result<Tensor> {
        Ok(match self {
            Dense::Candle(l) => l.forward(x)?,
            Dense::Packed(p) => x.contiguous()?.apply_op1_no_bwd(&p.op(epilogue))?,
            Dense::Bf16(weight) => x
                .contiguous()?
                .apply_op1_no_bwd(&LinearOp { weight, epilogue })?,
            Dense::Int8(weight) => x
                .contiguous()?
                .apply_op1_no_bwd(&LinearOp { weight, epilogue })?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.apply(x, Epilogue::None)
    }

    /// `act(x · Wᵀ + b)`, with `quick_gelu` fused into the packed kernels' stores.
    fn forward_act(&self, x: &Tensor, act: Activation) -> Result<Tensor> {
        match (self, act) {
            (Dense::Candle(_), _)
            | (_, Activation::Gelu | Activation::GeluTanh | Activation::Relu) => {
                activate(&self.forward(x)?, act)
            }
            (_, Activation::QuickGelu) => self.apply(x, Epilogue::QuickGelu),
        }
    }
}

struct Loader<'a> {
    ckpt: &'a Checkpoint,
    device: &'a Device,
    /// The instruction set the linear layers are packed for (`None`: candle's matmul).
    isa: Option<Isa>,
    /// The arithmetic of the encoder layers' matrix multiplies (already resolved).
    precision: Precision,
}

impl Loader<'_> {
    fn get(&self, name: &str) -> Result<Tensor> {
        self.ckpt.load(name, self.device)
    }
    fn tensors(&self, prefix: &str, bias: bool) -> Result<(Tensor, Option<Tensor>)> {
        let w = self.get(&format!("{prefix}.weight"))?;
        let b = if bias {
            Some(self.get(&format!("{prefix}.bias"))?)
        } else {
            None
        };
        Ok((w, b))
    }
    /// An encoder layer's linear map, in the model's precision.
    fn linear(&self, prefix: &str, bias: bool) -> Result<Dense> {
        let (w, b) = self.tensors(prefix, bias)?;
        Dense::new(w, b, self.isa, self.precision)
    }
    /// A linear map kept in fp32 whatever the precision (embedding, final projections).
    fn linear_fp32(&self, prefix: &str, bias: bool) -> Result<Dense> {
        let (w, b) = self.tensors(prefix, bias)?;
        Dense::new(w, b, self.isa, Precision::Fp32)
    }
    fn layer_norm(&self, prefix: &str, eps: f64) -> Result<LayerNorm> {
        Ok(LayerNorm::new(
            self.get(&format!("{prefix}.weight"))?,
            self.get(&format!("{prefix}.bias"))?,
            eps,
        ))
    }
}

struct Attention {
    qkv: Dense,
    out: Dense,
    heads: usize,
    head_dim: usize,
    scale: f64,
    /// The vector loops of the fused CPU attention (with the packed kernels); `None`:
    /// candle's composition.
    fused: Option<Isa>,
}

impl Attention {
    fn load(l: &Loader, prefix: &str, t: &TowerConfig) -> Result<Self> {
        // Fuse the three projections into one matrix multiply.
        let (qw, qb) = l.tensors(&format!("{prefix}.q_proj"), true)?;
        let (kw, kb) = l.tensors(&format!("{prefix}.k_proj"), true)?;
        let (vw, vb) = l.tensors(&format!("{prefix}.v_proj"), true)?;
        let w = Tensor::cat(&[qw, kw, vw], 0)?;
        let b = match (qb, kb, vb) {
            (Some(a), Some(b), Some(c)) => Some(Tensor::cat(&[a, b, c], 0)?),
            _ => None,
        };
        let head_dim = t.hidden_size / t.num_attention_heads;
        Ok(Attention {
            qkv: Dense::new(w, b, l.isa, l.precision)?,
            out: l.linear(&format!("{prefix}.out_proj"), true)?,
            heads: t.num_attention_heads,
            head_dim,
            scale: (head_dim as f64).powf(-0.5),
            fused: l.isa,
        })
    }

    /// Attention for the query rows `queries` of a QKV projection `[b, s, 3d]`, with keys and
    /// values from every row; `causal` hides keys after each query's position. Returns
    /// `[b, queries.per_sequence(s), d]`.
    fn attend(&self, qkv: &Tensor, queries: &Queries, causal: bool) -> Result<Tensor> {
        if let Some(isa) = self.fused {
            let op = FusedAttention {
                heads: self.heads,
                scale: self.scale as f32,
                causal,
                queries: queries.clone(),
                isa: Some(isa),
            };
            return Ok(qkv.contiguous()?.apply_op1_no_bwd(&op)?);
        }
        let (b, s, d3) = qkv.dims3()?;
        let (d, device) = (d3 / 3, qkv.device());
        let nq = queries.per_sequence(s);
        let q = match queries {
            Queries::All => qkv.narrow(2, 0, d)?,
            Queries::From(p) => qkv.narrow(1, *p, s - p)?.narrow(2, 0, d)?,
            Queries::Rows(r) => qkv
                .reshape((b * s, d3))?
                .index_select(&row_index(r, s, device)?, 0)?
                .narrow(1, 0, d)?
                .reshape((b, 1, d))?,
        };
        let q = q
            .reshape((b, nq, self.heads, self.head_dim))?
            .transpose(1, 2)?;
        let q = (q.contiguous()? * self.scale)?; // (b, h, nq, hd)
        let kv = qkv
            .reshape((b, s, 3, self.heads, self.head_dim))?
            .permute((2, 0, 3, 1, 4))?; // (3, b, h, s, hd)
        let k = kv.get(1)?.contiguous()?;
        let v = kv.get(2)?.contiguous()?;
        let mut att = q.matmul(&k.t()?)?; // (b, h, nq, s)
        if causal {
            let positions: Vec<Vec<usize>> = match queries {
                Queries::All => vec![(0..s).collect()],
                Queries::From(p) => vec![(*p..s).collect()],
                Queries::Rows(r) => r.iter().map(|&p| vec![p]).collect(),
            };
            let m: Vec<f32> = positions
                .iter()
                .flatten()
                .flat_map(|&p| (0..s).map(move |j| if j > p { f32::NEG_INFINITY } else { 0.0 }))
                .collect();
            let mask = Tensor::from_vec(m, (positions.len(), 1, nq, s), device)?;
            att = att.broadcast_add(&mask)?;
        }
        let att = candle_nn::ops::softmax_last_dim(&att)?;
        let y = att.matmul(&v)?; // (b, h, nq, hd)
        Ok(y.transpose(1, 2)?.contiguous()?.reshape((b, nq, d))?)
    }
}

fn activate(x: &Tensor, act: Activation) -> Result<Tensor> {
    Ok(match act {
        Activation::QuickGelu => crate::clip::kernels::ops::quick_gelu(x)?,
        Activation::Gelu => x.gelu_erf()?,
        Activation::GeluTanh => x.gelu()?,
        Activation::Relu => x.relu()?,
    })
}

struct Layer {
    ln1: LayerNorm,
    attn: Attention,
    ln2: LayerNorm,
    fc1: Dense,
    fc2: Dense,
    act: Activation,
}

impl Layer {
    /// Runs the layer on `x` (`[b, s, d]`), optionally after `prefix`, the QKV projection
    /// (`[1, p, 3d]`) of tokens shared by every sequence and placed before `x`.
    ///
    /// `queries` count positions from the start of the prefix and must lie in `x` (with a
    /// prefix of `p` tokens: `From(p)` or `Rows` at or after `p`). Returns the output at the
    /// queried rows and the QKV projection of `x`.
    fn run(
        &self,
        x: &Tensor,
        prefix: Option<&Tensor>,
        queries: &Queries,
        causal: bool,
    ) -> Result<(Tensor, Tensor)> {
        let (b, s, d) = x.dims3()?;
        let qkv = self.attn.qkv.forward(&self.ln1.forward(x)?)?;
        let (all, offset) = match prefix {
            Some(p) => {
                let (_, pl, d3) = p.dims3()?;
                let p = p.broadcast_as((b, pl, d3))?;
                (Tensor::cat(&[&p, &qkv], 1)?, pl)
            }
            None => (qkv.clone(), 0),
        };
        let h = self
            .attn
            .out
            .forward(&self.attn.attend(&all, queries, causal)?)?;
        let queried = match queries {
            Queries::All if offset == 0 => x.clone(),
            Queries::From(p) if *p >= offset => x.narrow(1, p - offset, s + offset - p)?,
            Queries::Rows(r) if r.iter().all(|&p| p >= offset) => {
                let rel: Vec<usize> = r.iter().map(|&p| p - offset).collect();
                x.reshape((b * s, d))?
                    .index_select(&row_index(&rel, s, x.device())?, 0)?
                    .reshape((b, 1, d))?
            }
            _ => {
                return Err(ModelInputError::QueriesInPrefix {
                    queries: format!("{queries:?}"),
                    prefix: offset,
                }
                .into())
            }
        };
        let x = (queried + h)?;
        let h = self.fc1.forward_act(&self.ln2.forward(&x)?, self.act)?;
        let h = self.fc2.forward(&h)?;
        Ok(((x + h)?, qkv))
    }
}

struct Encoder {
    layers: Vec<Layer>,
}

impl Encoder {
    fn load(l: &Loader, prefix: &str, t: &TowerConfig) -> Result<Self> {
        let layers = (0..t.num_hidden_layers)
            .map(|i| {
                let p = format!("{prefix}.layers.{i}");
                Ok(Layer {
                    ln1: l.layer_norm(&format!("{p}.layer_norm1"), t.layer_norm_eps)?,
                    attn: Attention::load(l, &format!("{p}.self_attn"), t)?,
                    ln2: l.layer_norm(&format!("{p}.layer_norm2"), t.layer_norm_eps)?,
                    fc1: l.linear(&format!("{p}.mlp.fc1"), true)?,
                    fc2: l.linear(&format!("{p}.mlp.fc2"), true)?,
                    act: t.hidden_act,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Encoder { layers })
    }

    /// The last layer's output at one row per sequence, `rows[i]` of sequence `i`, as `[b, d]`.
    ///
    /// Every layer but the last runs on all rows; the last computes keys and values for all rows
    /// but everything else only for the pooled rows (for ViT-B/32, about 7% of the work saved).
    fn forward_pooled(&self, x: &Tensor, causal: bool, rows: &[usize]) -> Result<Tensor> {
        let (b, s, d) = x.dims3()?;
        let Some((last, init)) = self.layers.split_last() else {
            let idx = row_index(rows, s, x.device())?;
            return Ok(x.reshape((b * s, d))?.index_select(&idx, 0)?);
        };
        let mut x = x.clone();
        for l in init {
            x = l.run(&x, None, &Queries::All, causal)?.0;
        }
        let pooled = last.run(&x, None, &Queries::Rows(rows.to_vec()), causal)?.0;
        Ok(pooled.reshape((b, d))?)
    }

    /// [`Encoder::forward_pooled`] for causal sequences that all start with the same tokens:
    /// `prefix` (`[1, p, d]`) is run once, and only `x` (`[b, s, d]`, the rest of each
    /// sequence) per sequence, attending to the prefix's keys and values. `rows` count from the
    /// start of the prefix and must lie in `x`.
    fn forward_pooled_prefixed(
        &self,
        prefix: &Tensor,
        x: &Tensor,
        rows: &[usize],
    ) -> Result<Tensor> {
        let (b, _, d) = x.dims3()?;
        let p = prefix.dim(1)?;
        let (mut prefix, mut x) = (prefix.clone(), x.clone());
        for (i, l) in self.layers.iter().enumerate() {
            let (next_prefix, prefix_qkv) = l.run(&prefix, None, &Queries::All, true)?;
            let queries = if i + 1 == self.layers.len() {
                Queries::Rows(rows.to_vec())
            } else {
                Queries::From(p)
            };
            x = l.run(&x, Some(&prefix_qkv), &queries, true)?.0;
            prefix = next_prefix;
        }
        Ok(x.reshape((b, d))?)
    }
}

/// A loaded CLIP model: both towers, their projections and the logit scale.
pub struct ClipModel {
    /// The configuration the model was built from.
    pub config: ClipConfig,
    token_embedding: Tensor,
    text_positions: Tensor,
    text_encoder: Encoder,
    final_ln: LayerNorm,
    text_projection: Dense,
    class_embedding: Tensor,
    patch_embedding: Dense,
    vision_positions: Tensor,
    pre_ln: LayerNorm,
    vision_encoder: Encoder,
    post_ln: LayerNorm,
    visual_projection: Dense,
    logit_scale: f32,
    device: Device,
    precision: Precision,
    precision_note: Option<String>,
    kernels: Kernels,
    kernels_note: Option<String>,
}

impl ClipModel {
    /// Builds the model from a checkpoint after validating every tensor against `config`.
    pub fn load(config: ClipConfig, ckpt: &Checkpoint, device: &Device) -> Result<Self> {
        Self::load_with(config, ckpt, device, Kernels::Auto)
    }

    /// As [`ClipModel::load`], choosing the linear layers' matrix multiply.
    pub fn load_with(
        config: ClipConfig,
        ckpt: &Checkpoint,
        device: &Device,
        kernels: Kernels,
    ) -> Result<Self> {
        Self::load_with_precision(config, ckpt, device, kernels, Precision::Fp32)
    }

    /// As [`ClipModel::load_with`], with the encoder layers' matrix multiplies in `precision`
    /// where the CPU and kernels allow it, else the next lower precision (see
    /// [`ClipModel::precision_note`]).
    pub fn load_with_precision(
        config: ClipConfig,
        ckpt: &Checkpoint,
        device: &Device,
        kernels: Kernels,
        precision: Precision,
    ) -> Result<Self> {
        for (name, shape) in expected_tensors(&config) {
            ckpt.check(&name, &shape)?;
        }
        let (kernels, kernels_note) = if device.is_cpu() {
            kernels.resolve()
        } else {
            let note = matches!(kernels, Kernels::Avx512 | Kernels::Avx2)
                .then(|| format!("kernels {kernels} apply to the CPU only: using candle"));
            (Kernels::Candle, note)
        };
        let isa = kernels.isa();
        let (precision, precision_note) =
            precision::resolve(precision, isa, precision::Caps::detect());
        let l = Loader {
            ckpt,
            device,
            isa,
            precision,
        };
        let vc = &config.vision;
        let vh = vc.tower.hidden_size;
        let patch_weight = l
            .get("vision_model.embeddings.patch_embedding.weight")?
            .reshape((vh, vc.num_channels * vc.patch_size * vc.patch_size))?;
        let logit_scale = l.get("logit_scale")?.to_scalar::<f32>()?;
        Ok(ClipModel {
            token_embedding: l.get("text_model.embeddings.token_embedding.weight")?,
            text_positions: l.get("text_model.embeddings.position_embedding.weight")?,
            text_encoder: Encoder::load(&l, "text_model.encoder", &config.text.tower)?,
            final_ln: l.layer_norm(
                "text_model.final_layer_norm",
                config.text.tower.layer_norm_eps,
            )?,
            text_projection: l.linear_fp32("text_projection", false)?,
            class_embedding: l.get("vision_model.embeddings.class_embedding")?,
            patch_embedding: Dense::new(patch_weight, None, isa, Precision::Fp32)?,
            vision_positions: l.get("vision_model.embeddings.position_embedding.weight")?,
            pre_ln: l.layer_norm("vision_model.pre_layrnorm", vc.tower.layer_norm_eps)?,
            vision_encoder: Encoder::load(&l, "vision_model.encoder", &vc.tower)?,
            post_ln: l.layer_norm("vision_model.post_layernorm", vc.tower.layer_norm_eps)?,
            visual_projection: l.linear_fp32("visual_projection", false)?,
            logit_scale,
            device: device.clone(),
            config,
            precision,
            precision_note,
            kernels,
            kernels_note,
        })
    }

    /// The kernels the linear layers and attention run on (never [`Kernels::Auto`]).
    pub fn kernels(&self) -> Kernels {
        self.kernels
    }

    /// Why the kernels differ from the ones requested (one line), if they do.
    pub fn kernels_note(&self) -> Option<&str> {
        self.kernels_note.as_deref()
    }

    /// The precision the encoder layers run in.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Why the precision differs from the one requested (one line), if it does.
    pub fn precision_note(&self) -> Option<&str> {
        self.precision_note.as_deref()
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// `exp(logit_scale)`: the temperature that multiplies cosine similarities (100 for OpenAI's models).
    pub fn logit_scale(&self) -> f32 {
        self.logit_scale.exp()
    }

    /// Text features for a batch of token ids `[batch, seq]` (u32), pooled at `eos_positions`
    /// and projected, as `get_text_features` returns them.
    pub fn text_features(&self, ids: &Tensor, eos_positions: &[usize]) -> Result<Tensor> {
        self.text_projection
            .forward(&self.text_pooled(ids, eos_positions)?)
    }

    /// The text tower's pooled output (after the final layer norm, before the projection).
    pub fn text_pooled(&self, ids: &Tensor, eos_positions: &[usize]) -> Result<Tensor> {
        let (b, s) = ids.dims2()?;
        if eos_positions.len() != b {
            return Err(ModelInputError::EosCount {
                positions: eos_positions.len(),
                batch: b,
            }
            .into());
        }
        let x = self.embed_tokens(ids, 0)?;
        let rows: Vec<usize> = eos_positions.iter().map(|&p| p.min(s - 1)).collect();
        let x = self.text_encoder.forward_pooled(&x, true, &rows)?;
        Ok(self.final_ln.forward(&x)?)
    }

    /// [`ClipModel::text_features`] for sequences that all begin with the tokens `prefix`:
    /// `suffix` (`[batch, seq]`) holds the rest of each sequence, and `eos_positions` count
    /// from the start of the prefix. The prefix is computed once for the whole batch; the
    /// result equals `text_features` on the concatenated ids (up to float rounding).
    pub fn text_features_with_prefix(
        &self,
        prefix: &[u32],
        suffix: &Tensor,
        eos_positions: &[usize],
    ) -> Result<Tensor> {
        let (b, s) = suffix.dims2()?;
        let p = prefix.len();
        if p == 0 {
            return self.text_features(suffix, eos_positions);
        }
        if eos_positions.len() != b || eos_positions.iter().any(|&e| e < p || e >= p + s) {
            return Err(ModelInputError::EosOutOfRange {
                positions: eos_positions.to_vec(),
                prefix: p,
                tokens: s,
            }
            .into());
        }
        let prefix_ids = Tensor::new(prefix, &self.device)?.reshape((1, p))?;
        let prefix_x = self.embed_tokens(&prefix_ids, 0)?;
        let x = self.embed_tokens(suffix, p)?;
        let pooled = if self.text_encoder.layers.is_empty() {
            let rel: Vec<usize> = eos_positions.iter().map(|&e| e - p).collect();
            let d = self.config.text.tower.hidden_size;
            x.reshape((b * s, d))?
                .index_select(&row_index(&rel, s, &self.device)?, 0)?
        } else {
            self.text_encoder
                .forward_pooled_prefixed(&prefix_x, &x, eos_positions)?
        };
        self.text_projection
            .forward(&self.final_ln.forward(&pooled)?)
    }

    /// Token plus position embeddings for `ids` (`[b, s]`) placed at positions `start..start+s`.
    fn embed_tokens(&self, ids: &Tensor, start: usize) -> Result<Tensor> {
        let (b, s) = ids.dims2()?;
        let ctx = self.config.text.max_position_embeddings;
        if start + s > ctx {
            return Err(ModelInputError::ContextLength {
                tokens: start + s,
                context: ctx,
            }
            .into());
        }
        let d = self.config.text.tower.hidden_size;
        let tok = self
            .token_embedding
            .embedding(&ids.flatten_all()?)?
            .reshape((b, s, d))?;
        Ok(tok.broadcast_add(&self.text_positions.narrow(0, start, s)?)?)
    }

    /// Image features for normalised pixels `[batch, 3, size, size]`, as `get_image_features` returns them.
    pub fn image_features(&self, pixels: &Tensor) -> Result<Tensor> {
        self.visual_projection.forward(&self.image_pooled(pixels)?)
    }

    /// The vision tower's pooled output (class token after `post_layernorm`, before the projection).
    pub fn image_pooled(&self, pixels: &Tensor) -> Result<Tensor> {
        let vc = &self.config.vision;
        let (b, c, h, w) = pixels.dims4()?;
        if (c, h, w) != (vc.num_channels, vc.image_size, vc.image_size) {
            return Err(ModelInputError::PixelShape {
                found: [c, h, w],
                expected: [vc.num_channels, vc.image_size, vc.image_size],
            }
            .into());
        }
        let (p, g, d) = (vc.patch_size, vc.grid(), vc.tower.hidden_size);
        // Patch embedding as one matrix multiply: (b*g*g, c*p*p) x (c*p*p, d).
        let patches = pixels
            .reshape((b, c, g, p, g, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((b * g * g, c * p * p))?;
        let x = self
            .patch_embedding
            .forward(&patches)?
            .reshape((b, g * g, d))?;
        let cls = self
            .class_embedding
            .reshape((1, 1, d))?
            .broadcast_as((b, 1, d))?;
        let x = Tensor::cat(&[&cls, &x], 1)?.broadcast_add(&self.vision_positions)?;
        let x = self.pre_ln.forward(&x)?;
        let x = self.vision_encoder.forward_pooled(&x, false, &vec![0; b])?;
        Ok(self.post_ln.forward(&x)?)
    }
}

/// Indices into the flattened `[rows.len() * s]` rows: `i * s + rows[i]`.
fn row_index(rows: &[usize], s: usize, device: &Device) -> Result<Tensor> {
    let idx: Vec<u32> = rows
        .iter()
        .enumerate()
        .map(|(i, &p)| (i * s + p) as u32)
        .collect();
    Ok(Tensor::new(idx.as_slice(), device)?)
}

/// Returns the file name part of a path for messages.
pub fn display_name(p: &Path) -> String {
    p.file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use std::path::PathBuf;

    fn load(dir: &str, kernels: Kernels) -> ClipModel {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
        let config = ClipConfig::from_file(&dir.join("config.json")).unwrap();
        let mut weights: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                let name = display_name(p);
                name.starts_with("model") && name.ends_with(".safetensors")
            })
            .collect();
        weights.sort();
        let ckpt = Checkpoint::open(&weights).unwrap();
        ClipModel::load_with(config, &ckpt, &Device::Cpu, kernels).unwrap()
    }

    fn max_abs(t: &Tensor) -> f32 {
        t.abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// Largest difference, relative to the largest magnitude in `b` where that exceeds 1.
    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        max_abs(&(a - b).unwrap()) / max_abs(b).max(1.0)
    }

    /// The packed paths this CPU has, each forced.
    fn packed_paths() -> Vec<Kernels> {
        let paths: Vec<Kernels> = [Kernels::Avx512, Kernels::Avx2]
            .into_iter()
            .filter(|k| k.resolve().0 == *k)
            .collect();
        if paths.len() < 2 {
            crate::util::testing::skipped(&format!(
                "this CPU runs only {paths:?} of the packed paths: the others against candle"
            ));
        }
        paths
    }

    /// Each packed path (AVX-512, AVX2, where this CPU has them, and `Auto`) gives candle's
    /// features, so the fallback path used on other CPUs is checked here too.
    #[test]
    fn packed_and_candle_kernels_agree() {
        let mut paths = packed_paths();
        paths.push(Kernels::Auto);
        for (dir, kernels) in [
            "tests/fixtures/tiny-clip",
            "tests/fixtures/tiny-clip-gelu-f16",
        ]
        .into_iter()
        .flat_map(|d| paths.iter().map(move |&k| (d, k)))
        {
            let auto = load(dir, kernels);
            assert_eq!(auto.kernels(), kernels.resolve().0);
            assert_eq!(auto.kernels_note(), None);
            let candle = load(dir, Kernels::Candle);
            assert_eq!(candle.kernels(), Kernels::Candle);
            let s = auto.config.vision.image_size;
            let values: Vec<f32> = (0..3 * 3 * s * s)
                .map(|i| (i as f32 * 0.37).sin() * 1.5)
                .collect();
            let pixels = Tensor::from_vec(values, (3, 3, s, s), &Device::Cpu).unwrap();
            let d = max_diff(
                &auto.image_features(&pixels).unwrap(),
                &candle.image_features(&pixels).unwrap(),
            );
            assert!(
                d < 1e-5,
                "{dir} {kernels}: image features differ by {d} (relative)"
            );
            let ids = Tensor::new(
                &[
                    [49406u32, 320, 1125, 539, 49407, 49407],
                    [49406, 320, 49407, 49407, 49407, 49407],
                ],
                &Device::Cpu,
            )
            .unwrap();
            let d = max_diff(
                &auto.text_features(&ids, &[4, 2]).unwrap(),
                &candle.text_features(&ids, &[4, 2]).unwrap(),
            );
            assert!(
                d < 1e-5,
                "{dir} {kernels}: text features differ by {d} (relative)"
            );
        }
    }

    /// Sharing a prefix gives the features of the whole sequences, on both kernel paths.
    #[test]
    fn shared_prefix_gives_the_same_text_features() {
        for dir in [
            "tests/fixtures/tiny-clip",
            "tests/fixtures/tiny-clip-gelu-f16",
        ] {
            for kernels in Kernels::ALL {
                let m = load(dir, kernels);
                // "<sot> a photo of a" then three different endings, padded with <eot>.
                let prefix = [49406u32, 320, 1125, 539, 320];
                let rest = [
                    [2368u32, 269, 49407, 49407],
                    [1929, 2368, 269, 49407],
                    [269, 49407, 49407, 49407],
                ];
                let eos = [7usize, 8, 6];
                let whole: Vec<u32> = rest
                    .iter()
                    .flat_map(|r| prefix.iter().chain(r).copied())
                    .collect();
                let whole = Tensor::from_vec(whole, (3, 9), &Device::Cpu).unwrap();
                let want = m.text_features(&whole, &eos).unwrap();
                let suffix = Tensor::new(&rest, &Device::Cpu).unwrap();
                let got = m.text_features_with_prefix(&prefix, &suffix, &eos).unwrap();
                let d = max_diff(&got, &want);
                assert!(d < 1e-5, "{dir} {kernels:?}: differ by {d} (relative)");
                // End-of-text inside the prefix is refused.
                let bad = m.text_features_with_prefix(&prefix, &suffix, &[4, 8, 6]);
                assert!(
                    matches!(
                        &bad,
                        Err(Error::ModelInput(ModelInputError::EosOutOfRange {
                            prefix: 5,
                            tokens: 4,
                            ..
                        }))
                    ),
                    "{dir}"
                );
            }
        }
    }

    #[test]
    fn kernels_parse_and_fall_back_one_step_with_a_note() {
        for k in Kernels::ALL {
            assert_eq!(k.name().parse::<Kernels>(), Ok(k));
            assert_eq!(k.to_string(), k.name());
        }
        assert_eq!("AVX2".parse::<Kernels>(), Ok(Kernels::Avx2));
        let err = "avx".parse::<Kernels>().unwrap_err();
        assert!(
            err.contains("\"avx\"") && err.contains("avx512, avx2 or candle"),
            "{err}"
        );
        // (avx512, avx2) present
        let cpus = [(true, true), (false, true), (false, false)];
        let want = |k: Kernels, cpu: (bool, bool)| match (k, cpu) {
            (Kernels::Candle, _) => Kernels::Candle,
            (Kernels::Auto | Kernels::Avx512, (true, _)) => Kernels::Avx512,
            (Kernels::Auto | Kernels::Avx512 | Kernels::Avx2, (false, true)) => Kernels::Avx2,
            (Kernels::Avx2, (true, true)) => Kernels::Avx2,
            _ => Kernels::Candle,
        };
        for cpu in cpus {
            for k in Kernels::ALL {
                let (got, note) = k.resolve_for(cpu.0, cpu.1);
                assert_eq!(got, want(k, cpu), "{k} on {cpu:?}");
                // A note exactly where a forced path is missing.
                let forced_missing =
                    (k == Kernels::Avx512 && !cpu.0) || (k == Kernels::Avx2 && !cpu.1);
                assert_eq!(note.is_some(), forced_missing, "{k} on {cpu:?}: {note:?}");
                if let Some(note) = note {
                    assert!(
                        note.contains(k.name())
                            && note.ends_with(got.name())
                            && !note.contains('\n'),
                        "{note}"
                    );
                }
            }
        }
    }

    /// Under candle's path bf16 and int8 fall back to fp32 with a note; under the AVX2 kernels
    /// bf16 does too, and int8 runs where the CPU has AVX-VNNI (else falls back); under forced
    /// AVX-512 both run where the CPU has them.
    #[test]
    fn low_precision_needs_the_packed_kernels_with_its_instructions() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-clip");
        let config = ClipConfig::from_file(&dir.join("config.json")).unwrap();
        let ckpt = Checkpoint::open(&[dir.join("model.safetensors")]).unwrap();
        let caps = precision::Caps::detect();
        let load = |kernels, p| {
            ClipModel::load_with_precision(config.clone(), &ckpt, &Device::Cpu, kernels, p).unwrap()
        };
        for p in [Precision::Bf16, Precision::Int8] {
            let m = load(Kernels::Candle, p);
            assert_eq!(m.precision(), Precision::Fp32, "candle {p}");
            let note = m.precision_note().unwrap();
            assert!(
                note.contains("packed kernels") && note.contains("running fp32"),
                "{note}"
            );
        }
        if Kernels::Avx2.resolve().0 == Kernels::Avx2 {
            let m = load(Kernels::Avx2, Precision::Bf16);
            assert_eq!(m.precision(), Precision::Fp32);
            let note = m.precision_note().unwrap();
            assert!(note.contains("AVX2 kernels are in use"), "{note}");
            let m = load(Kernels::Avx2, Precision::Int8);
            if caps.avx_vnni {
                assert_eq!((m.precision(), m.precision_note()), (Precision::Int8, None));
            } else {
                crate::util::testing::skipped("no AVX-VNNI: int8 on the AVX2 kernels falls back");
                assert_eq!(m.precision(), Precision::Fp32);
                assert!(m.precision_note().unwrap().contains("AVX-VNNI"));
            }
        }
        if Kernels::Avx512.resolve().0 == Kernels::Avx512 {
            for p in Precision::ALL
                .into_iter()
                .filter(|p| p.native_with(Some(Isa::Avx512)))
            {
                let m = load(Kernels::Avx512, p);
                assert_eq!((m.precision(), m.kernels()), (p, Kernels::Avx512));
            }
        }
    }

    /// int8 on the AVX2 kernels (AVX-VNNI) gives the AVX-512 kernels' int8 features: the
    /// matrix multiplies are bit-identical, only the fp32 attention's sums run 8 lanes wide.
    #[test]
    fn int8_features_agree_across_the_packed_paths() {
        let int8 = |k: Kernels| Precision::Int8.native_with(k.isa()) && k.resolve().0 == k;
        if !(int8(Kernels::Avx512) && int8(Kernels::Avx2)) {
            crate::util::testing::skipped("this CPU runs int8 on fewer than two packed paths");
            return;
        }
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-clip");
        let config = ClipConfig::from_file(&dir.join("config.json")).unwrap();
        let ckpt = Checkpoint::open(&[dir.join("model.safetensors")]).unwrap();
        let models: Vec<ClipModel> = [Kernels::Avx512, Kernels::Avx2]
            .into_iter()
            .map(|k| {
                let m = ClipModel::load_with_precision(
                    config.clone(),
                    &ckpt,
                    &Device::Cpu,
                    k,
                    Precision::Int8,
                )
                .unwrap();
                assert_eq!((m.kernels(), m.precision()), (k, Precision::Int8));
                m
            })
            .collect();
        let s = config.vision.image_size;
        let values: Vec<f32> = (0..3 * 3 * s * s)
            .map(|i| (i as f32 * 0.37).sin() * 1.5)
            .collect();
        let pixels = Tensor::from_vec(values, (3, 3, s, s), &Device::Cpu).unwrap();
        let d = max_diff(
            &models[0].image_features(&pixels).unwrap(),
            &models[1].image_features(&pixels).unwrap(),
        );
        assert!(d < 1e-5, "int8 image features differ by {d} (relative)");
        let ids = Tensor::new(&[[49406u32, 320, 1125, 539, 49407, 49407]], &Device::Cpu).unwrap();
        let d = max_diff(
            &models[0].text_features(&ids, &[4]).unwrap(),
            &models[1].text_features(&ids, &[4]).unwrap(),
        );
        assert!(d < 1e-5, "int8 text features differ by {d} (relative)");
    }

    #[test]
    fn wrong_number_of_end_positions_is_an_error() {
        let m = load("tests/fixtures/tiny-clip", Kernels::Auto);
        let ids = Tensor::new(&[[49406u32, 49407]], &Device::Cpu).unwrap();
        assert!(matches!(
            m.text_features(&ids, &[1, 1]),
            Err(Error::ModelInput(ModelInputError::EosCount {
                positions: 2,
                batch: 1
            }))
        ));
    }
}
