//! The `embed` command's files: one f32 tensor `embeddings` (`[rows, dim]`) in a safetensors
//! file and a JSON sidecar with the model, the row items in order and the failed images.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::jobs::writers::Failure;
use crate::util::atomic::write_atomic;
use crate::util::safetensors_io::{write_f32, F32Tensor, SafetensorsFile};

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
    let json = serde_json::to_vec_pretty(sidecar).map_err(|e| Error::Output {
        path: sidecar_path(out),
        message: e.to_string(),
    })?;
    // The sidecar goes first so that a complete OUT always has its matching sidecar.
    let side = sidecar_path(out);
    write_atomic(&side, &json).map_err(|e| Error::io(&side, e))?;
    let meta = BTreeMap::from([
        ("model".to_string(), sidecar.model.clone()),
        ("kind".to_string(), sidecar.kind.clone()),
    ]);
    let tensor = F32Tensor {
        name: "embeddings",
        shape: vec![n, sidecar.dim],
        values: rows,
    };
    write_f32(out, &[tensor], &meta)?;
    Ok(())
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
        return Err(Error::from(file.error(format!(
            "`embeddings` is {shape:?}, sidecar says {} x {}",
            sidecar.items.len(),
            sidecar.dim
        ))));
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
