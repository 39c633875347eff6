//! Small safetensors files read and written whole: heads, zero-shot classifiers, embeddings
//! and the embedding cache. One reader ([`SafetensorsFile`]) and one writer ([`write_f32`]),
//! with errors that name the file.
//!
//! The writer lays the header out itself (with the `safetensors` crate's own `TensorInfo`)
//! instead of calling `safetensors::serialize`, because that takes the metadata as a
//! `HashMap` and writes it in hash order, so a file with two metadata keys came out with
//! different bytes on each run. Here the metadata keys are written sorted: every file is a pure
//! function of its contents. The layout is the format's: an 8-byte little-endian header length,
//! the JSON header padded with spaces to a multiple of 8 bytes, then the tensors' bytes in
//! name order (what `safetensors::serialize` does for tensors of one dtype).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

use crate::util::atomic::write_atomic;

/// A small safetensors file that could not be read or written, naming it. (The crate's
/// [`crate::Error`] converts from it, keeping this module a leaf.)
#[derive(Debug, thiserror::Error)]
pub enum SafetensorsError {
    /// Reading or writing the file failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid safetensors, or lacks what the caller needs.
    #[error("{path}: cannot read safetensors: {message}")]
    Format { path: PathBuf, message: String },
}

type Result<T> = std::result::Result<T, SafetensorsError>;

/// f32 values from little-endian bytes (a trailing partial value is ignored).
pub fn f32_from_le_bytes(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// One f32 tensor to write: its name, shape and values (row-major).
pub struct F32Tensor<'a> {
    /// The tensor's name in the file.
    pub name: &'a str,
    /// Its shape (`[]` for a scalar).
    pub shape: Vec<usize>,
    /// Its values; as many as the shape's product.
    pub values: &'a [f32],
}

/// The header: `__metadata__` first when there is any, then the tensors in name order.
struct Header<'a> {
    metadata: &'a BTreeMap<String, String>,
    tensors: Vec<(&'a str, safetensors::tensor::TensorInfo)>,
}

impl Serialize for Header<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let with_meta = !self.metadata.is_empty();
        let mut map = s.serialize_map(Some(self.tensors.len() + usize::from(with_meta)))?;
        if with_meta {
            map.serialize_entry("__metadata__", self.metadata)?;
        }
        for (name, info) in &self.tensors {
            map.serialize_entry(name, info)?;
        }
        map.end()
    }
}

/// The bytes of a safetensors file holding `tensors` (f32) and `metadata` (none when empty).
pub fn serialize_f32(
    tensors: &[F32Tensor<'_>],
    metadata: &BTreeMap<String, String>,
) -> std::result::Result<Vec<u8>, String> {
    let mut order: Vec<&F32Tensor<'_>> = tensors.iter().collect();
    order.sort_by(|a, b| a.name.cmp(b.name));
    if let Some(w) = order.windows(2).find(|w| w[0].name == w[1].name) {
        return Err(format!("tensor `{}` given twice", w[0].name));
    }
    let mut offset = 0;
    let mut infos = Vec::with_capacity(order.len());
    for t in &order {
        let n: usize = t.shape.iter().product();
        if n != t.values.len() {
            return Err(format!(
                "tensor `{}`: {} values for shape {:?}",
                t.name,
                t.values.len(),
                t.shape
            ));
        }
        let info = safetensors::tensor::TensorInfo {
            dtype: safetensors::Dtype::F32,
            shape: t.shape.clone(),
            data_offsets: (offset, offset + 4 * n),
        };
        offset += 4 * n;
        infos.push((t.name, info));
    }
    let mut header = serde_json::to_vec(&Header {
        metadata,
        tensors: infos,
    })
    .map_err(|e| e.to_string())?;
    header.resize(header.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + header.len() + offset);
    out.extend((header.len() as u64).to_le_bytes());
    out.extend(header);
    for t in order {
        out.extend(t.values.iter().flat_map(|x| x.to_le_bytes()));
    }
    Ok(out)
}

/// Writes `tensors` and `metadata` to `path` as a safetensors file, atomically.
pub fn write_f32(
    path: &Path,
    tensors: &[F32Tensor<'_>],
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let bytes = serialize_f32(tensors, metadata).map_err(|message| SafetensorsError::Format {
        path: path.to_path_buf(),
        message,
    })?;
    write_atomic(path, &bytes).map_err(|source| SafetensorsError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// A small safetensors file read whole (a head, a classifier, embeddings), with errors that
/// name it.
pub struct SafetensorsFile {
    path: PathBuf,
    bytes: Vec<u8>,
    metadata: std::collections::HashMap<String, String>,
}

impl SafetensorsFile {
    /// Reads `path` and its header.
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|source| SafetensorsError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_bytes(path, bytes)
    }

    /// Parses the header of `bytes`, read from `path`.
    pub fn from_bytes(path: &Path, bytes: Vec<u8>) -> Result<Self> {
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| {
            SafetensorsError::Format {
                path: path.to_path_buf(),
                message: e.to_string(),
            }
        })?;
        let metadata = meta.metadata().clone().unwrap_or_default();
        Ok(SafetensorsFile {
            path: path.to_path_buf(),
            bytes,
            metadata,
        })
    }

    /// The header's free-form metadata entry `key`.
    pub fn meta(&self, key: &str) -> Option<&str> {
        self.metadata.get(key).map(String::as_str)
    }

    /// Tensor `name`, which must be f32: its shape and values.
    pub fn f32_tensor(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let st = safetensors::SafeTensors::deserialize(&self.bytes)
            .map_err(|e| self.error(e.to_string()))?;
        let t = st.tensor(name).map_err(|e| self.error(e.to_string()))?;
        if t.dtype() != safetensors::Dtype::F32 {
            return Err(self.error(format!("`{name}` is {:?}, not F32", t.dtype())));
        }
        Ok((t.shape().to_vec(), f32_from_le_bytes(t.data())))
    }

    /// An error about this file.
    pub fn error(&self, message: String) -> SafetensorsError {
        SafetensorsError::Format {
            path: self.path.clone(),
            message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Little-endian bytes of f32 values, as safetensors stores them.
    fn f32_to_le_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    fn view<'a>(shape: Vec<usize>, bytes: &'a [u8]) -> safetensors::tensor::TensorView<'a> {
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape, bytes).unwrap()
    }

    /// With at most one metadata key (heads, classifiers, caches), the bytes are exactly what
    /// `safetensors::serialize` writes, so files written before stay valid and identical.
    #[test]
    fn same_bytes_as_the_safetensors_crate_for_one_metadata_key() {
        let (w, b) = (vec![1.0f32, -2.5, 3.0, 0.25, 5.0, 6.0], vec![0.5f32, -0.5]);
        let (wb, bb) = (f32_to_le_bytes(&w), f32_to_le_bytes(&b));
        for meta in [
            BTreeMap::new(),
            BTreeMap::from([("k".to_string(), "{\"x\": [1]}".to_string())]),
        ] {
            let ours = serialize_f32(
                &[
                    F32Tensor {
                        name: "weight",
                        shape: vec![2, 3],
                        values: &w,
                    },
                    F32Tensor {
                        name: "bias",
                        shape: vec![2],
                        values: &b,
                    },
                ],
                &meta,
            )
            .unwrap();
            let theirs = safetensors::tensor::serialize(
                [
                    ("weight", view(vec![2, 3], &wb)),
                    ("bias", view(vec![2], &bb)),
                ],
                (!meta.is_empty()).then(|| meta.clone().into_iter().collect()),
            )
            .unwrap();
            assert_eq!(ours, theirs);
        }
    }

    /// Several metadata keys come out sorted, the same on every run, and read back.
    #[test]
    fn metadata_keys_are_written_in_sorted_order() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("e.safetensors");
        let meta = BTreeMap::from([
            ("model".to_string(), "m".to_string()),
            ("kind".to_string(), "image".to_string()),
            ("alpha".to_string(), "1".to_string()),
        ]);
        let t = [F32Tensor {
            name: "embeddings",
            shape: vec![1, 2],
            values: &[1.0, 2.0],
        }];
        write_f32(&p, &t, &meta).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        let (a, k, m) = (
            text.find("alpha").unwrap(),
            text.find("kind").unwrap(),
            text.find("model").unwrap(),
        );
        assert!(a < k && k < m, "{text}");
        assert_eq!(serialize_f32(&t, &meta).unwrap(), bytes);
        let f = SafetensorsFile::read(&p).unwrap();
        assert_eq!(f.meta("kind"), Some("image"));
        assert_eq!(
            f.f32_tensor("embeddings").unwrap(),
            (vec![1, 2], vec![1.0, 2.0])
        );
        assert!(f.f32_tensor("nope").is_err());
        assert!(serialize_f32(
            &[F32Tensor {
                name: "x",
                shape: vec![3],
                values: &[1.0]
            }],
            &meta
        )
        .is_err());
    }
}
