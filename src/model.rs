//! The CLIP model: checkpoint loading with validation, and the text and vision transformers.
//!
//! The architecture follows transformers' `CLIPModel` and reads every size from `config.json`.
//! Before any tensor is built, every expected tensor's name and shape is checked against the
//! safetensors headers, so a checkpoint of the wrong kind fails with the file and tensor named.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{LayerNorm, Linear};

use crate::config::{Activation, ClipConfig, TowerConfig};
use crate::error::{Error, Result};

/// Where each tensor of a (possibly sharded) checkpoint lives, with its shape and dtype.
pub struct Checkpoint {
    files: Vec<(PathBuf, MmapedSafetensors)>,
    index: HashMap<String, (usize, Vec<usize>, safetensors::Dtype)>,
}

impl Checkpoint {
    /// Memory-maps the safetensors files and reads their headers.
    pub fn open(paths: &[PathBuf]) -> Result<Self> {
        let mut files = Vec::with_capacity(paths.len());
        let mut index = HashMap::new();
        for (i, p) in paths.iter().enumerate() {
            // SAFETY: the file is mapped read-only; cliplabel does not modify model files while running.
            let st = unsafe { MmapedSafetensors::new(p) }.map_err(|e| Error::Safetensors {
                path: p.clone(),
                message: e.to_string(),
            })?;
            for (name, view) in st.tensors() {
                index.insert(name, (i, view.shape().to_vec(), view.dtype()));
            }
            files.push((p.clone(), st));
        }
        Ok(Checkpoint { files, index })
    }

    fn describe_file(&self) -> PathBuf {
        match self.files.as_slice() {
            [(p, _)] => p.clone(),
            [(p, _), ..] => p
                .parent()
                .map(|d| d.join("model.safetensors.index.json"))
                .unwrap_or_else(|| p.clone()),
            [] => PathBuf::from("(no weight files)"),
        }
    }

    /// Checks that `name` exists with `shape` and a loadable dtype.
    pub fn check(&self, name: &str, shape: &[usize]) -> Result<()> {
        use safetensors::Dtype as S;
        let Some((i, found, dtype)) = self.index.get(name) else {
            return Err(Error::MissingTensor {
                path: self.describe_file(),
                tensor: name.to_string(),
            });
        };
        let path = self.files[*i].0.clone();
        if found.as_slice() != shape {
            return Err(Error::TensorShape {
                path,
                tensor: name.to_string(),
                expected: shape.to_vec(),
                found: found.clone(),
            });
        }
        if !matches!(dtype, S::F32 | S::F16 | S::BF16 | S::F64) {
            return Err(Error::TensorDtype {
                path,
                tensor: name.to_string(),
                dtype: format!("{dtype:?}"),
            });
        }
        Ok(())
    }

    /// Loads a checked tensor as f32 on `device`.
    pub fn load(&self, name: &str, device: &Device) -> Result<Tensor> {
        let (i, _, _) = self.index.get(name).ok_or_else(|| Error::MissingTensor {
            path: self.describe_file(),
            tensor: name.to_string(),
        })?;
        let (path, st) = &self.files[*i];
        let t = st.load(name, device).map_err(|e| Error::Safetensors {
            path: path.clone(),
            message: format!("tensor `{name}`: {e}"),
        })?;
        Ok(t.to_dtype(DType::F32)?)
    }

    /// Whether the checkpoint stores any tensor in half precision.
    pub fn has_half_precision(&self) -> bool {
        use safetensors::Dtype as S;
        self.index
            .values()
            .any(|(_, _, d)| matches!(d, S::F16 | S::BF16))
    }
}

/// The list of `(tensor name, shape)` a CLIP checkpoint must contain for `cfg`.
pub fn expected_tensors(cfg: &ClipConfig) -> Vec<(String, Vec<usize>)> {
    let mut v: Vec<(String, Vec<usize>)> = Vec::new();
    let t = &cfg.text;
    let vi = &cfg.vision;
    let (th, vh) = (t.tower.hidden_size, vi.tower.hidden_size);
    v.push((
        "text_model.embeddings.token_embedding.weight".into(),
        vec![t.vocab_size, th],
    ));
    v.push((
        "text_model.embeddings.position_embedding.weight".into(),
        vec![t.max_position_embeddings, th],
    ));
    tower_tensors(&mut v, "text_model.encoder", &t.tower);
    v.push(("text_model.final_layer_norm.weight".into(), vec![th]));
    v.push(("text_model.final_layer_norm.bias".into(), vec![th]));
    let p = vi.patch_size;
    v.push(("vision_model.embeddings.class_embedding".into(), vec![vh]));
    v.push((
        "vision_model.embeddings.patch_embedding.weight".into(),
        vec![vh, vi.num_channels, p, p],
    ));
    v.push((
        "vision_model.embeddings.position_embedding.weight".into(),
        vec![vi.grid() * vi.grid() + 1, vh],
    ));
    v.push(("vision_model.pre_layrnorm.weight".into(), vec![vh]));
    v.push(("vision_model.pre_layrnorm.bias".into(), vec![vh]));
    tower_tensors(&mut v, "vision_model.encoder", &vi.tower);
    v.push(("vision_model.post_layernorm.weight".into(), vec![vh]));
    v.push(("vision_model.post_layernorm.bias".into(), vec![vh]));
    v.push((
        "visual_projection.weight".into(),
        vec![cfg.projection_dim, vh],
    ));
    v.push((
        "text_projection.weight".into(),
        vec![cfg.projection_dim, th],
    ));
    v.push(("logit_scale".into(), vec![]));
    v
}

fn tower_tensors(v: &mut Vec<(String, Vec<usize>)>, prefix: &str, t: &TowerConfig) {
    let (h, m) = (t.hidden_size, t.intermediate_size);
    for l in 0..t.num_hidden_layers {
        let pre = format!("{prefix}.layers.{l}");
        for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            v.push((format!("{pre}.self_attn.{proj}.weight"), vec![h, h]));
            v.push((format!("{pre}.self_attn.{proj}.bias"), vec![h]));
        }
        for ln in ["layer_norm1", "layer_norm2"] {
            v.push((format!("{pre}.{ln}.weight"), vec![h]));
            v.push((format!("{pre}.{ln}.bias"), vec![h]));
        }
        v.push((format!("{pre}.mlp.fc1.weight"), vec![m, h]));
        v.push((format!("{pre}.mlp.fc1.bias"), vec![m]));
        v.push((format!("{pre}.mlp.fc2.weight"), vec![h, m]));
        v.push((format!("{pre}.mlp.fc2.bias"), vec![h]));
    }
}

struct Loader<'a> {
    ckpt: &'a Checkpoint,
    device: &'a Device,
}

impl Loader<'_> {
    fn get(&self, name: &str) -> Result<Tensor> {
        self.ckpt.load(name, self.device)
    }
    fn linear(&self, prefix: &str, bias: bool) -> Result<Linear> {
        let w = self.get(&format!("{prefix}.weight"))?;
        let b = if bias {
            Some(self.get(&format!("{prefix}.bias"))?)
        } else {
            None
        };
        Ok(Linear::new(w, b))
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
    qkv: Linear,
    out: Linear,
    heads: usize,
    head_dim: usize,
    scale: f64,
}

impl Attention {
    fn load(l: &Loader, prefix: &str, t: &TowerConfig) -> Result<Self> {
        // Fuse the three projections into one matrix multiply.
        let q = l.linear(&format!("{prefix}.q_proj"), true)?;
        let k = l.linear(&format!("{prefix}.k_proj"), true)?;
        let v = l.linear(&format!("{prefix}.v_proj"), true)?;
        let w = Tensor::cat(&[q.weight(), k.weight(), v.weight()], 0)?;
        let b = match (q.bias(), k.bias(), v.bias()) {
            (Some(a), Some(b), Some(c)) => Some(Tensor::cat(&[a, b, c], 0)?),
            _ => None,
        };
        let head_dim = t.hidden_size / t.num_attention_heads;
        Ok(Attention {
            qkv: Linear::new(w, b),
            out: l.linear(&format!("{prefix}.out_proj"), true)?,
            heads: t.num_attention_heads,
            head_dim,
            scale: (head_dim as f64).powf(-0.5),
        })
    }

    fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let (b, s, d) = x.dims3()?;
        let qkv = self
            .qkv
            .forward(x)?
            .reshape((b, s, 3, self.heads, self.head_dim))?;
        let qkv = qkv.permute((2, 0, 3, 1, 4))?; // (3, b, h, s, hd)
        let q = (qkv.get(0)?.contiguous()? * self.scale)?;
        let k = qkv.get(1)?.contiguous()?;
        let v = qkv.get(2)?.contiguous()?;
        let mut att = q.matmul(&k.t()?)?;
        if let Some(m) = mask {
            att = att.broadcast_add(m)?;
        }
        let att = candle_nn::ops::softmax_last_dim(&att)?;
        let y = att.matmul(&v)?; // (b, h, s, hd)
        let y = y.transpose(1, 2)?.contiguous()?.reshape((b, s, d))?;
        Ok(self.out.forward(&y)?)
    }
}

fn activate(x: &Tensor, act: Activation) -> Result<Tensor> {
    Ok(match act {
        Activation::QuickGelu => crate::ops::quick_gelu(x)?,
        Activation::Gelu => x.gelu_erf()?,
        Activation::GeluTanh => x.gelu()?,
        Activation::Relu => x.relu()?,
    })
}

struct Layer {
    ln1: LayerNorm,
    attn: Attention,
    ln2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    act: Activation,
}

impl Layer {
    fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let h = self.attn.forward(&self.ln1.forward(x)?, mask)?;
        let x = (x + h)?;
        let h = self.fc1.forward(&self.ln2.forward(&x)?)?;
        let h = self.fc2.forward(&activate(&h, self.act)?)?;
        Ok((x + h)?)
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

    fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let mut x = x.clone();
        for l in &self.layers {
            x = l.forward(&x, mask)?;
        }
        Ok(x)
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
    text_projection: Linear,
    class_embedding: Tensor,
    patch_weight: Tensor,
    vision_positions: Tensor,
    pre_ln: LayerNorm,
    vision_encoder: Encoder,
    post_ln: LayerNorm,
    visual_projection: Linear,
    logit_scale: f32,
    device: Device,
}

impl ClipModel {
    /// Builds the model from a checkpoint after validating every tensor against `config`.
    pub fn load(config: ClipConfig, ckpt: &Checkpoint, device: &Device) -> Result<Self> {
        for (name, shape) in expected_tensors(&config) {
            ckpt.check(&name, &shape)?;
        }
        let l = Loader { ckpt, device };
        let vc = &config.vision;
        let vh = vc.tower.hidden_size;
        let patch_weight = l
            .get("vision_model.embeddings.patch_embedding.weight")?
            .reshape((vh, vc.num_channels * vc.patch_size * vc.patch_size))?
            .t()?
            .contiguous()?;
        let logit_scale = l.get("logit_scale")?.to_scalar::<f32>()?;
        Ok(ClipModel {
            token_embedding: l.get("text_model.embeddings.token_embedding.weight")?,
            text_positions: l.get("text_model.embeddings.position_embedding.weight")?,
            text_encoder: Encoder::load(&l, "text_model.encoder", &config.text.tower)?,
            final_ln: l.layer_norm(
                "text_model.final_layer_norm",
                config.text.tower.layer_norm_eps,
            )?,
            text_projection: l.linear("text_projection", false)?,
            class_embedding: l.get("vision_model.embeddings.class_embedding")?,
            patch_weight,
            vision_positions: l.get("vision_model.embeddings.position_embedding.weight")?,
            pre_ln: l.layer_norm("vision_model.pre_layrnorm", vc.tower.layer_norm_eps)?,
            vision_encoder: Encoder::load(&l, "vision_model.encoder", &vc.tower)?,
            post_ln: l.layer_norm("vision_model.post_layernorm", vc.tower.layer_norm_eps)?,
            visual_projection: l.linear("visual_projection", false)?,
            logit_scale,
            device: device.clone(),
            config,
        })
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
        Ok(self
            .text_projection
            .forward(&self.text_pooled(ids, eos_positions)?)?)
    }

    /// The text tower's pooled output (after the final layer norm, before the projection).
    pub fn text_pooled(&self, ids: &Tensor, eos_positions: &[usize]) -> Result<Tensor> {
        let (b, s) = ids.dims2()?;
        let ctx = self.config.text.max_position_embeddings;
        if s > ctx {
            return Err(Error::Input(format!(
                "token sequence of {s} exceeds the model's context length {ctx}"
            )));
        }
        let d = self.config.text.tower.hidden_size;
        let tok = self
            .token_embedding
            .embedding(&ids.flatten_all()?)?
            .reshape((b, s, d))?;
        let x = tok.broadcast_add(&self.text_positions.narrow(0, 0, s)?)?;
        let mask = causal_mask(s, &self.device)?;
        let x = self.text_encoder.forward(&x, Some(&mask))?;
        let x = self.final_ln.forward(&x)?;
        let idx: Vec<u32> = eos_positions
            .iter()
            .enumerate()
            .map(|(i, &p)| (i * s + p.min(s - 1)) as u32)
            .collect();
        let idx = Tensor::new(idx.as_slice(), &self.device)?;
        Ok(x.reshape((b * s, d))?.index_select(&idx, 0)?)
    }

    /// Image features for normalised pixels `[batch, 3, size, size]`, as `get_image_features` returns them.
    pub fn image_features(&self, pixels: &Tensor) -> Result<Tensor> {
        Ok(self
            .visual_projection
            .forward(&self.image_pooled(pixels)?)?)
    }

    /// The vision tower's pooled output (class token after `post_layernorm`, before the projection).
    pub fn image_pooled(&self, pixels: &Tensor) -> Result<Tensor> {
        let vc = &self.config.vision;
        let (b, c, h, w) = pixels.dims4()?;
        if (c, h, w) != (vc.num_channels, vc.image_size, vc.image_size) {
            return Err(Error::Input(format!(
                "pixel tensor {c}x{h}x{w} does not match the model's input {}x{}x{}",
                vc.num_channels, vc.image_size, vc.image_size
            )));
        }
        let (p, g, d) = (vc.patch_size, vc.grid(), vc.tower.hidden_size);
        // Patch embedding as one matrix multiply: (b*g*g, c*p*p) x (c*p*p, d).
        let patches = pixels
            .reshape((b, c, g, p, g, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((b * g * g, c * p * p))?;
        let x = patches.matmul(&self.patch_weight)?.reshape((b, g * g, d))?;
        let cls = self
            .class_embedding
            .reshape((1, 1, d))?
            .broadcast_as((b, 1, d))?;
        let x = Tensor::cat(&[&cls, &x], 1)?.broadcast_add(&self.vision_positions)?;
        let x = self.pre_ln.forward(&x)?;
        let x = self.vision_encoder.forward(&x, None)?;
        let x = x.narrow(1, 0, 1)?.squeeze(1)?;
        Ok(self.post_ln.forward(&x)?)
    }
}

fn causal_mask(s: usize, device: &Device) -> Result<Tensor> {
    let m: Vec<f32> = (0..s)
        .flat_map(|i| (0..s).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Ok(Tensor::from_vec(m, (s, s), device)?)
}

/// L2-normalises each row of a `[n, d]` tensor.
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let n = x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?;
    Ok(x.broadcast_div(&n)?)
}

/// Reads `config.json` and the checkpoint of a resolved model directory.
pub fn load_model(files: &crate::config::ModelFiles, device: &Device) -> Result<ClipModel> {
    let config = ClipConfig::from_file(&files.config)?;
    let ckpt = Checkpoint::open(&files.weights)?;
    ClipModel::load(config, &ckpt, device)
}

/// Returns the file name part of a path for messages.
pub fn display_name(p: &Path) -> String {
    p.file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.display().to_string())
}
