//! Model and preprocessor configuration, read from a Hugging Face model directory.
//!
//! Every size comes from `config.json`; fields a checkpoint leaves out take the same
//! defaults as transformers' `CLIPTextConfig` and `CLIPVisionConfig`.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, Result};

/// The preprocessing settings live in `images/` (the layer that applies them); they are
/// re-exported here because `preprocessor_config.json` is parsed into them below.
pub use crate::images::settings::{PreprocessConfig, Resample, ResizeTo, CLIP_MEAN, CLIP_STD};

/// The activation used in the transformer MLPs (`hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `x * sigmoid(1.702 x)`, used by the OpenAI checkpoints.
    QuickGelu,
    /// Exact GELU with the error function.
    Gelu,
    /// GELU with the tanh approximation (`gelu_new`, `gelu_pytorch_tanh`).
    GeluTanh,
    /// Rectified linear unit.
    Relu,
}

impl Activation {
    fn parse(name: &str, path: &Path, field: &str) -> Result<Self> {
        match name {
            "quick_gelu" => Ok(Activation::QuickGelu),
            "gelu" => Ok(Activation::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Ok(Activation::GeluTanh),
            "relu" => Ok(Activation::Relu),
            other => Err(Error::config(
                path,
                field,
                format!("unsupported activation `{other}` (supported: quick_gelu, gelu, gelu_new, gelu_pytorch_tanh, relu)"),
            )),
        }
    }
}

/// Sizes of one transformer tower (text or vision).
#[derive(Debug, Clone, PartialEq)]
pub struct TowerConfig {
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP's hidden layer.
    pub intermediate_size: usize,
    /// Number of attention heads.
    pub num_attention_heads: usize,
    /// Number of transformer layers.
    pub num_hidden_layers: usize,
    /// MLP activation.
    pub hidden_act: Activation,
    /// Layer-norm epsilon.
    pub layer_norm_eps: f64,
}

/// Text tower configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct TextConfig {
    /// Transformer sizes.
    pub tower: TowerConfig,
    /// Vocabulary size of the token embedding.
    pub vocab_size: usize,
    /// Context length (`max_position_embeddings`).
    pub max_position_embeddings: usize,
    /// End-of-text token id; 2 means "pool at argmax(input_ids)" as in old configs.
    pub eos_token_id: i64,
}

/// Vision tower configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct VisionConfig {
    /// Transformer sizes.
    pub tower: TowerConfig,
    /// Side of the square input image in pixels.
    pub image_size: usize,
    /// Side of a square patch in pixels.
    pub patch_size: usize,
    /// Number of input channels (3 for RGB).
    pub num_channels: usize,
}

impl VisionConfig {
    /// Number of patches along one side.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }
}

/// A whole CLIP model configuration (`config.json`).
#[derive(Debug, Clone, PartialEq)]
pub struct ClipConfig {
    /// Text tower.
    pub text: TextConfig,
    /// Vision tower.
    pub vision: VisionConfig,
    /// Width of the shared embedding space.
    pub projection_dim: usize,
}

fn get_usize(obj: &Value, key: &str, default: usize, path: &Path, prefix: &str) -> Result<usize> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_u64()
            .filter(|&n| n > 0)
            .map(|n| n as usize)
            .ok_or_else(|| {
                Error::config(
                    path,
                    &format!("{prefix}{key}"),
                    format!("expected a positive integer, found {v}"),
                )
            }),
    }
}

fn get_f64(obj: &Value, key: &str, default: f64, path: &Path, prefix: &str) -> Result<f64> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v.as_f64().ok_or_else(|| {
            Error::config(
                path,
                &format!("{prefix}{key}"),
                format!("expected a number, found {v}"),
            )
        }),
    }
}

fn get_str<'a>(
    obj: &'a Value,
    key: &str,
    default: &'a str,
    path: &Path,
    prefix: &str,
) -> Result<&'a str> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v.as_str().ok_or_else(|| {
            Error::config(
                path,
                &format!("{prefix}{key}"),
                format!("expected a string, found {v}"),
            )
        }),
    }
}

/// Reads and parses a JSON file, naming it in any error.
pub fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|source| Error::ModelJson {
        path: path.to_path_buf(),
        source,
    })
}

#[allow(clippy::too_many_arguments)]
fn tower(
    obj: &Value,
    path: &Path,
    prefix: &str,
    hidden: usize,
    inter: usize,
    heads: usize,
    layers: usize,
) -> Result<TowerConfig> {
    let act = get_str(obj, "hidden_act", "quick_gelu", path, prefix)?;
    let tower = TowerConfig {
        hidden_size: get_usize(obj, "hidden_size", hidden, path, prefix)?,
        intermediate_size: get_usize(obj, "intermediate_size", inter, path, prefix)?,
        num_attention_heads: get_usize(obj, "num_attention_heads", heads, path, prefix)?,
        num_hidden_layers: get_usize(obj, "num_hidden_layers", layers, path, prefix)?,
        hidden_act: Activation::parse(act, path, &format!("{prefix}hidden_act"))?,
        layer_norm_eps: get_f64(obj, "layer_norm_eps", 1e-5, path, prefix)?,
    };
    if !tower.hidden_size.is_multiple_of(tower.num_attention_heads) {
        return Err(Error::config(
            path,
            &format!("{prefix}num_attention_heads"),
            format!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                tower.hidden_size, tower.num_attention_heads
            ),
        ));
    }
    Ok(tower)
}

impl ClipConfig {
    /// Parses a `config.json` value; `path` is used in error messages.
    pub fn from_value(v: &Value, path: &Path) -> Result<Self> {
        if !v.is_object() {
            return Err(Error::config(path, "(root)", "expected a JSON object"));
        }
        match v.get("model_type").and_then(Value::as_str) {
            Some("clip") => {}
            Some(other) => {
                return Err(Error::config(
                    path,
                    "model_type",
                    format!("`{other}` is not supported; cliplabel runs CLIP ViT checkpoints (model_type `clip`)"),
                ))
            }
            None => return Err(Error::config(path, "model_type", "missing; expected `clip`")),
        }
        let empty = Value::Object(Default::default());
        let t = v.get("text_config").unwrap_or(&empty);
        let vis = v.get("vision_config").unwrap_or(&empty);
        if !t.is_object() {
            return Err(Error::config(path, "text_config", "expected an object"));
        }
        if !vis.is_object() {
            return Err(Error::config(path, "vision_config", "expected an object"));
        }
        let eos_token_id = match t.get("eos_token_id") {
            None | Some(Value::Null) => 49407,
            Some(x) => x.as_i64().ok_or_else(|| {
                Error::config(path, "text_config.eos_token_id", "expected an integer")
            })?,
        };
        let text = TextConfig {
            tower: tower(t, path, "text_config.", 512, 2048, 8, 12)?,
            vocab_size: get_usize(t, "vocab_size", 49408, path, "text_config.")?,
            max_position_embeddings: get_usize(
                t,
                "max_position_embeddings",
                77,
                path,
                "text_config.",
            )?,
            eos_token_id,
        };
        let vision = VisionConfig {
            tower: tower(vis, path, "vision_config.", 768, 3072, 12, 12)?,
            image_size: get_usize(vis, "image_size", 224, path, "vision_config.")?,
            patch_size: get_usize(vis, "patch_size", 32, path, "vision_config.")?,
            num_channels: get_usize(vis, "num_channels", 3, path, "vision_config.")?,
        };
        if !vision.image_size.is_multiple_of(vision.patch_size) {
            return Err(Error::config(
                path,
                "vision_config.patch_size",
                format!(
                    "image_size {} is not a multiple of patch_size {}",
                    vision.image_size, vision.patch_size
                ),
            ));
        }
        if vision.num_channels != 3 {
            return Err(Error::config(
                path,
                "vision_config.num_channels",
                "only 3-channel (RGB) models are supported",
            ));
        }
        let projection_dim = get_usize(v, "projection_dim", 512, path, "")?;
        Ok(ClipConfig {
            text,
            vision,
            projection_dim,
        })
    }

    /// Reads `config.json` from a file.
    pub fn from_file(path: &Path) -> Result<Self> {
        Self::from_value(&read_json(path)?, path)
    }
}

fn size_pair(v: &Value, path: &Path, field: &str) -> Result<(usize, usize)> {
    if let Some(n) = v.as_u64() {
        return Ok((n as usize, n as usize));
    }
    let h = v.get("height").and_then(Value::as_u64);
    let w = v.get("width").and_then(Value::as_u64);
    match (h, w) {
        (Some(h), Some(w)) if h > 0 && w > 0 => Ok((h as usize, w as usize)),
        _ => Err(Error::config(
            path,
            field,
            format!("expected an integer or {{\"height\", \"width\"}}, found {v}"),
        )),
    }
}

fn triple(v: Option<&Value>, default: [f32; 3], path: &Path, field: &str) -> Result<[f32; 3]> {
    let Some(v) = v else { return Ok(default) };
    if let Some(x) = v.as_f64() {
        return Ok([x as f32; 3]);
    }
    let arr = v
        .as_array()
        .filter(|a| a.len() == 3)
        .ok_or_else(|| Error::config(path, field, "expected a list of three numbers"))?;
    let mut out = [0f32; 3];
    for (o, x) in out.iter_mut().zip(arr) {
        *o = x
            .as_f64()
            .ok_or_else(|| Error::config(path, field, "expected numbers"))? as f32;
    }
    Ok(out)
}

fn flag(v: &Value, key: &str, path: &Path) -> Result<bool> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(true),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(Error::config(
            path,
            key,
            format!("expected true or false, found {other}"),
        )),
    }
}

impl PreprocessConfig {
    /// Parses `preprocessor_config.json`; missing fields take the CLIP image processor's defaults.
    pub fn from_value(v: &Value, path: &Path, image_size: usize) -> Result<Self> {
        let mut cfg = Self::clip_default(image_size);
        if !v.is_object() {
            return Err(Error::config(path, "(root)", "expected a JSON object"));
        }
        cfg.resize = if flag(v, "do_resize", path)? {
            Some(match v.get("size") {
                None | Some(Value::Null) => ResizeTo::ShortestEdge(224),
                Some(s) => {
                    if let Some(e) = s.get("shortest_edge").and_then(Value::as_u64) {
                        ResizeTo::ShortestEdge(e as usize)
                    } else if let Some(n) = s.as_u64() {
                        ResizeTo::ShortestEdge(n as usize)
                    } else {
                        let (height, width) = size_pair(s, path, "size")?;
                        ResizeTo::Exact { height, width }
                    }
                }
            })
        } else {
            None
        };
        cfg.resample = match v.get("resample").and_then(Value::as_u64) {
            None | Some(3) => Resample::Bicubic,
            Some(2) => Resample::Bilinear,
            Some(1) => Resample::Lanczos,
            Some(other) => {
                return Err(Error::config(
                    path,
                    "resample",
                    format!("PIL filter {other} is not supported (supported: 1 lanczos, 2 bilinear, 3 bicubic)"),
                ))
            }
        };
        cfg.crop = if flag(v, "do_center_crop", path)? {
            Some(match v.get("crop_size") {
                None | Some(Value::Null) => (224, 224),
                Some(c) => size_pair(c, path, "crop_size")?,
            })
        } else {
            None
        };
        cfg.rescale = if flag(v, "do_rescale", path)? {
            Some(get_f64(v, "rescale_factor", 1.0 / 255.0, path, "")?)
        } else {
            None
        };
        cfg.normalize = if flag(v, "do_normalize", path)? {
            Some((
                triple(v.get("image_mean"), CLIP_MEAN, path, "image_mean")?,
                triple(v.get("image_std"), CLIP_STD, path, "image_std")?,
            ))
        } else {
            None
        };
        if let Some((_, std)) = cfg.normalize {
            if std.contains(&0.0) {
                return Err(Error::config(
                    path,
                    "image_std",
                    "a standard deviation of 0",
                ));
            }
        }
        cfg.convert_rgb = flag(v, "do_convert_rgb", path)?;
        Ok(cfg)
    }
}

/// Paths of the files in a resolved model directory.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    /// Where the files came from (a directory, or a hub id).
    pub source: String,
    /// `config.json`.
    pub config: PathBuf,
    /// `tokenizer.json`.
    pub tokenizer: PathBuf,
    /// `tokenizer_config.json`, when present.
    pub tokenizer_config: Option<PathBuf>,
    /// `preprocessor_config.json`, when present.
    pub preprocessor: Option<PathBuf>,
    /// The safetensors weight files (one, or the shards of an index).
    pub weights: Vec<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_match_transformers() {
        let c =
            ClipConfig::from_value(&json!({"model_type": "clip"}), Path::new("c.json")).unwrap();
        assert_eq!(c.text.tower.hidden_size, 512);
        assert_eq!(c.vision.tower.hidden_size, 768);
        assert_eq!(c.vision.patch_size, 32);
        assert_eq!(c.projection_dim, 512);
        assert_eq!(c.text.eos_token_id, 49407);
        assert_eq!(c.text.tower.hidden_act, Activation::QuickGelu);
    }

    #[test]
    fn sizes_come_from_config() {
        let v = json!({"model_type": "clip", "projection_dim": 768,
            "vision_config": {"hidden_size": 1024, "patch_size": 14, "image_size": 336, "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 4096},
            "text_config": {"hidden_size": 768, "num_attention_heads": 12, "hidden_act": "gelu", "eos_token_id": 2}});
        let c = ClipConfig::from_value(&v, Path::new("c.json")).unwrap();
        assert_eq!(c.vision.grid(), 24);
        assert_eq!(c.text.tower.hidden_act, Activation::Gelu);
        assert_eq!(c.text.eos_token_id, 2);
    }

    #[test]
    fn wrong_model_type_names_field() {
        let e =
            ClipConfig::from_value(&json!({"model_type": "siglip"}), Path::new("m/config.json"))
                .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("m/config.json") && msg.contains("model_type") && msg.contains("siglip"),
            "{msg}"
        );
        let e = ClipConfig::from_value(
            &json!({"model_type": "clip", "text_config": {"hidden_act": "swish"}}),
            Path::new("c.json"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("text_config.hidden_act"), "{e}");
        let e = ClipConfig::from_value(
            &json!({"model_type": "clip", "vision_config": {"hidden_size": "big"}}),
            Path::new("c.json"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("vision_config.hidden_size"), "{e}");
    }

    #[test]
    fn preprocessor_fields() {
        let v = json!({"size": {"shortest_edge": 336}, "crop_size": {"height": 336, "width": 336}, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "resample": 3});
        let p = PreprocessConfig::from_value(&v, Path::new("p.json"), 224).unwrap();
        assert_eq!(p.resize, Some(ResizeTo::ShortestEdge(336)));
        assert_eq!(p.crop, Some((336, 336)));
        assert_eq!(p.normalize.unwrap().0, [0.5; 3]);
        let old = json!({"size": 224, "crop_size": 224, "do_center_crop": true});
        let p = PreprocessConfig::from_value(&old, Path::new("p.json"), 224).unwrap();
        assert_eq!(p.resize, Some(ResizeTo::ShortestEdge(224)));
        let bad = json!({"resample": 0});
        assert!(PreprocessConfig::from_value(&bad, Path::new("p.json"), 224)
            .unwrap_err()
            .to_string()
            .contains("resample"));
    }
}
