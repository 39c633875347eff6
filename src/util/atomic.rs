//! Output writers: files appear only when complete (written to a temporary name, then renamed).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, Result};

/// The temporary name a file is written under before it is renamed into place.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, synced, then renamed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.is_dir() {
            return Err(Error::Output {
                path: path.to_path_buf(),
                message: format!("directory {} does not exist", dir.display()),
            });
        }
    }
    let tmp = temp_path(path);
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

/// Little-endian bytes of f32 values, as safetensors stores them.
pub fn f32_to_le_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// f32 values from little-endian bytes (a trailing partial value is ignored).
pub fn f32_from_le_bytes(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// One image that could not be processed.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct Failure {
    /// The image path as given or found.
    pub path: String,
    /// Why it failed.
    pub error: String,
}

/// The JSON sidecar written next to an embeddings file.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct EmbeddingsSidecar {
    /// The model as given on the command line.
    pub model: String,
    /// A fingerprint of the model files.
    pub model_fingerprint: String,
    /// `image` or `text`.
    pub kind: String,
    /// Width of each row.
    pub dim: usize,
    /// Whether rows are L2-normalised.
    pub normalized: bool,
    /// `projected` or `pooled`.
    pub features: String,
    /// Paths or prompts, in row order.
    pub items: Vec<String>,
    /// Images that failed, with reasons.
    pub failed: Vec<Failure>,
}

/// The path of the sidecar for an embeddings file (`OUT.safetensors` → `OUT.json`).
pub fn sidecar_path(out: &Path) -> PathBuf {
    out.with_extension("json")
}

/// Writes `rows` (`n * dim` floats) as a safetensors file with one tensor `embeddings`, then its sidecar.
pub fn write_embeddings(out: &Path, rows: &[f32], sidecar: &EmbeddingsSidecar) -> Result<()> {
    let n = sidecar.items.len();
    if rows.len() != n * sidecar.dim {
        return Err(Error::Output {
            path: out.to_path_buf(),
            message: format!(
                "internal: {} values for {n} rows of {}",
                rows.len(),
                sidecar.dim
            ),
        });
    }
    let bytes = f32_to_le_bytes(rows);
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![n, sidecar.dim], &bytes)
            .map_err(|e| Error::Output {
                path: out.to_path_buf(),
                message: e.to_string(),
            })?;
    let meta = std::collections::HashMap::from([
        ("model".to_string(), sidecar.model.clone()),
        ("kind".to_string(), sidecar.kind.clone()),
    ]);
    let data = safetensors::tensor::serialize([("embeddings", view)], Some(meta)).map_err(|e| {
        Error::Output {
            path: out.to_path_buf(),
            message: e.to_string(),
        }
    })?;
    let json = serde_json::to_vec_pretty(sidecar).map_err(|e| Error::Output {
        path: sidecar_path(out),
        message: e.to_string(),
    })?;
    // The sidecar goes first so that a complete OUT always has its matching sidecar.
    write_atomic(&sidecar_path(out), &json)?;
    write_atomic(out, &data)
}

/// A small safetensors file read whole (a head, a classifier, embeddings), with errors that
/// name it.
pub(crate) struct SafetensorsFile {
    path: PathBuf,
    bytes: Vec<u8>,
    metadata: std::collections::HashMap<String, String>,
}

impl SafetensorsFile {
    /// Reads `path` and its header.
    pub(crate) fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let (_, meta) =
            safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| Error::Safetensors {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        let metadata = meta.metadata().clone().unwrap_or_default();
        Ok(SafetensorsFile {
            path: path.to_path_buf(),
            bytes,
            metadata,
        })
    }

    /// The header's free-form metadata entry `key`.
    pub(crate) fn meta(&self, key: &str) -> Option<&str> {
        self.metadata.get(key).map(String::as_str)
    }

    /// Tensor `name`, which must be f32: its shape and values.
    pub(crate) fn f32_tensor(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let st = safetensors::SafeTensors::deserialize(&self.bytes)
            .map_err(|e| self.error(e.to_string()))?;
        let t = st.tensor(name).map_err(|e| self.error(e.to_string()))?;
        if t.dtype() != safetensors::Dtype::F32 {
            return Err(self.error(format!("`{name}` is {:?}, not F32", t.dtype())));
        }
        Ok((t.shape().to_vec(), f32_from_le_bytes(t.data())))
    }

    /// An error about this file.
    pub(crate) fn error(&self, message: String) -> Error {
        Error::Safetensors {
            path: self.path.clone(),
            message,
        }
    }
}

/// Reads an embeddings file written by [`write_embeddings`]: `(rows, dim, sidecar)`.
pub fn read_embeddings(path: &Path) -> Result<(Vec<f32>, EmbeddingsSidecar)> {
    let side = sidecar_path(path);
    let sidecar: EmbeddingsSidecar = serde_json::from_slice(
        &std::fs::read(&side).map_err(|e| Error::io(&side, e))?,
    )
    .map_err(|source| Error::Json {
        path: side.clone(),
        source,
    })?;
    let file = SafetensorsFile::read(path)?;
    let (shape, values) = file.f32_tensor("embeddings")?;
    if shape != [sidecar.items.len(), sidecar.dim] {
        return Err(file.error(format!(
            "`embeddings` is {shape:?}, sidecar says {} x {}",
            sidecar.items.len(),
            sidecar.dim
        )));
    }
    Ok((values, sidecar))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_leaves_no_temp_and_round_trips() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("e.safetensors");
        let side = EmbeddingsSidecar {
            model: "m".into(),
            model_fingerprint: "f".into(),
            kind: "image".into(),
            dim: 2,
            normalized: false,
            features: "projected".into(),
            items: vec!["a".into(), "b".into()],
            failed: vec![],
        };
        write_embeddings(&out, &[1.0, 2.0, 3.0, 4.0], &side).unwrap();
        let (rows, s) = read_embeddings(&out).unwrap();
        assert_eq!(rows, vec![1.0, 2.0, 3.0, 4.0]);
        assert_eq!(s, side);
        let names: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(write_atomic(&d.path().join("no/such/dir/x"), b"1").is_err());
    }
}
