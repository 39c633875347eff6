//! A CLIP checkpoint on disk: the memory-mapped safetensors files (one or sharded), the name,
//! shape and dtype of each tensor, and the list of tensors a CLIP ViT must contain for its
//! `config.json`. Every expected tensor is checked before any is built, so a checkpoint of the
//! wrong kind fails with the file and tensor named.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};

use crate::clip::config::{ClipConfig, TowerConfig};
use crate::error::{Error, Result};

/// Where each tensor of a (possibly sharded) checkpoint lives, with its shape and dtype.
///
/// The files are memory-mapped; once a tensor has been copied out, its pages are released from
/// the process (they stay in the page cache), so loading does not hold the file and the model
/// in memory at the same time.
pub struct Checkpoint {
    files: Vec<(PathBuf, memmap2::Mmap)>,
    index: HashMap<String, Entry>,
}

/// One tensor of a checkpoint: its file, shape, dtype and byte range in the file.
struct Entry {
    file: usize,
    shape: Vec<usize>,
    dtype: safetensors::Dtype,
    bytes: std::ops::Range<usize>,
}

impl Checkpoint {
    /// Memory-maps the safetensors files and reads their headers.
    pub fn open(paths: &[PathBuf]) -> Result<Self> {
        let mut files = Vec::with_capacity(paths.len());
        let mut index = HashMap::new();
        for (i, p) in paths.iter().enumerate() {
            let bad = |message: String| Error::Safetensors {
                path: p.clone(),
                message,
            };
            let file = std::fs::File::open(p).map_err(|e| Error::io(p, e))?;
            // SAFETY: the file is mapped read-only; cliplabel does not modify model files while
            // running (a file truncated by another process meanwhile would fault).
            let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(p, e))?;
            let (header, meta) = safetensors::SafeTensors::read_metadata(&mmap[..])
                .map_err(|e| bad(e.to_string()))?;
            let data_start = 8 + header;
            for (name, info) in meta.tensors() {
                let (start, end) = info.data_offsets;
                let bytes = data_start + start..data_start + end;
                if bytes.end > mmap.len() {
                    return Err(bad(format!(
                        "tensor `{name}` lies past the end of the file"
                    )));
                }
                index.insert(
                    name,
                    Entry {
                        file: i,
                        shape: info.shape.clone(),
                        dtype: info.dtype,
                        bytes,
                    },
                );
            }
            files.push((p.clone(), mmap));
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
        let Some(entry) = self.index.get(name) else {
            return Err(Error::MissingTensor {
                path: self.describe_file(),
                tensor: name.to_string(),
            });
        };
        let path = self.files[entry.file].0.clone();
        if entry.shape.as_slice() != shape {
            return Err(Error::TensorShape {
                path,
                tensor: name.to_string(),
                expected: shape.to_vec(),
                found: entry.shape.clone(),
            });
        }
        if !matches!(entry.dtype, S::F32 | S::F16 | S::BF16 | S::F64) {
            return Err(Error::TensorDtype {
                path,
                tensor: name.to_string(),
                dtype: format!("{:?}", entry.dtype),
            });
        }
        Ok(())
    }

    /// Loads a checked tensor as f32 on `device`, then releases its pages of the mapping.
    pub fn load(&self, name: &str, device: &Device) -> Result<Tensor> {
        use safetensors::Dtype as S;
        let entry = self.index.get(name).ok_or_else(|| Error::MissingTensor {
            path: self.describe_file(),
            tensor: name.to_string(),
        })?;
        let (path, mmap) = &self.files[entry.file];
        let dtype = match entry.dtype {
            S::F32 => DType::F32,
            S::F16 => DType::F16,
            S::BF16 => DType::BF16,
            S::F64 => DType::F64,
            other => {
                return Err(Error::TensorDtype {
                    path: path.clone(),
                    tensor: name.to_string(),
                    dtype: format!("{other:?}"),
                })
            }
        };
        let t = Tensor::from_raw_buffer(&mmap[entry.bytes.clone()], dtype, &entry.shape, device)
            .map_err(|e| Error::Safetensors {
                path: path.clone(),
                message: format!("tensor `{name}`: {e}"),
            })?
            .to_dtype(DType::F32)?;
        release(mmap, entry.bytes.clone());
        Ok(t)
    }

    /// Whether the checkpoint stores any tensor in half precision.
    pub fn has_half_precision(&self) -> bool {
        use safetensors::Dtype as S;
        self.index
            .values()
            .any(|e| matches!(e.dtype, S::F16 | S::BF16))
    }
}

/// Drops the pages of `bytes` from the process's resident memory. The mapping is read-only and
/// backed by the file, so a later read faults them in again; failure only costs memory.
fn release(mmap: &memmap2::Mmap, bytes: std::ops::Range<usize>) {
    #[cfg(unix)]
    {
        const PAGE: usize = 4096;
        let start = bytes.start / PAGE * PAGE;
        let end = bytes.end.div_ceil(PAGE) * PAGE;
        let end = end.min(mmap.len());
        if end > start {
            // SAFETY: DONTNEED on a private read-only file mapping discards nothing that cannot
            // be re-read from the file; no references into these pages outlive this call
            // (`load` has copied the tensor out).
            let _ = unsafe {
                mmap.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start)
            };
        }
    }
    #[cfg(not(unix))]
    let _ = (mmap, bytes);
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
