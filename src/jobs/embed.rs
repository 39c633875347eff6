//! The `embed` command: image files or prompts to one f32 tensor `embeddings` (`[rows, dim]`)
//! in a safetensors file and a JSON sidecar with the model, the row items in order and the
//! failed images. Both files appear only when complete.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::clip::engine::{Engine, Features};
use crate::error::{Error, Result};
use crate::images::inputs::read_lines;
use crate::jobs::pipeline::embed_images;
use crate::jobs::tally::{stopped, Tally};
use crate::jobs::writers::Failure;
use crate::util::atomic::write_atomic;
use crate::util::math::l2_normalize_rows_f32_sum;
use crate::util::pathtext::path_text;
use crate::util::safetensors_io::{write_f32, F32Tensor, SafetensorsFile};

/// What the rows of an embeddings file embed (`kind` in the sidecar and the file's metadata).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EmbeddingKind {
    /// Image files.
    Image,
    /// Prompts.
    Text,
}

impl EmbeddingKind {
    /// `image` or `text`, as written to the files.
    pub fn as_str(self) -> &'static str {
        match self {
            EmbeddingKind::Image => "image",
            EmbeddingKind::Text => "text",
        }
    }
}

/// Options of an `embed` run.
#[derive(Debug, Clone)]
pub struct EmbedOptions {
    /// The safetensors file to write (its sidecar goes beside it, see [`sidecar_path`]).
    pub out: PathBuf,
    /// Images per model batch (prompts are batched eight times as many).
    pub batch_size: usize,
    /// Which features to take.
    pub features: Features,
    /// L2-normalise each row.
    pub normalize: bool,
}

/// What an image `embed` run reports as it goes.
#[derive(Debug)]
pub enum EmbedEvent<'a> {
    /// An image could not be embedded (it is listed in the sidecar).
    Failed(&'a Failure),
    /// A batch is done: `done` of `total` images so far.
    Embedded {
        /// Images done (embedded or failed).
        done: usize,
        /// Images in the run.
        total: usize,
    },
}

/// The outcome of an `embed` run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbedSummary {
    /// Rows written.
    pub rows: usize,
    /// Images that failed.
    pub failed: usize,
    /// What the rows embed.
    pub kind: EmbeddingKind,
}

/// Image embeddings in memory: the rows of the images that were embedded, in input order,
/// and the images that failed with the reason; every input is in one of the two.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImageEmbeddings {
    /// `paths.len() * dim` values, one row per entry of `paths`.
    pub rows: Vec<f32>,
    /// The images embedded, in input order.
    pub paths: Vec<PathBuf>,
    /// The images that failed, with the reason (without the path).
    pub failed: Vec<(PathBuf, String)>,
}

/// Embeds image files in batches into memory (the `embed` command's work before writing, also
/// what the Python package's `Engine.embed_images` calls), checking that every input is in
/// `paths` or `failed`. `progress` sees each failure as it is found and each finished batch.
pub fn embed_image_rows(
    engine: &Engine,
    paths: Vec<PathBuf>,
    batch_size: usize,
    features: Features,
    progress: &mut dyn FnMut(EmbedEvent<'_>) -> Result<()>,
) -> Result<ImageEmbeddings> {
    let total = paths.len();
    let mut out = ImageEmbeddings::default();
    let mut done = 0usize;
    let run = embed_images(engine, paths, batch_size, features, |b| {
        done += b.ok.len() + b.failed.len();
        if let Some(t) = &b.embeddings {
            out.rows.extend(t.flatten_all()?.to_vec1::<f32>()?);
        }
        out.paths.extend(b.ok);
        for (p, e) in b.failed {
            let f = Failure {
                path: path_text(&p),
                error: e,
            };
            progress(EmbedEvent::Failed(&f))?;
            out.failed.push((p, f.error));
        }
        progress(EmbedEvent::Embedded { done, total })
    });
    if let Err(e) = run {
        // Nothing is returned: every image of this run is left undone.
        return Err(stopped(done, total, e));
    }
    Tally {
        inputs: total,
        done: out.paths.len(),
        failed: out.failed.len(),
        ..Tally::default()
    }
    .check("embed")?;
    Ok(out)
}

/// Embeds image files in batches and writes them (with the failures) to `opts.out`.
pub fn embed_image_files(
    engine: &Engine,
    paths: Vec<PathBuf>,
    opts: &EmbedOptions,
    progress: &mut dyn FnMut(EmbedEvent<'_>),
) -> Result<EmbedSummary> {
    let e = embed_image_rows(engine, paths, opts.batch_size, opts.features, &mut |ev| {
        progress(ev);
        Ok(())
    })?;
    let items = e.paths.iter().map(|p| path_text(p)).collect();
    let failed = e
        .failed
        .into_iter()
        .map(|(p, error)| Failure {
            path: path_text(&p),
            error,
        })
        .collect();
    finish(engine, opts, e.rows, items, failed, EmbeddingKind::Image)
}

/// Embeds the prompts of `text_file` (one per line) and writes them to `opts.out`.
pub fn embed_text_file(
    engine: &Engine,
    text_file: &Path,
    opts: &EmbedOptions,
) -> Result<EmbedSummary> {
    if opts.features == Features::Pooled {
        return Err(crate::error::OptionError::PooledText.into());
    }
    let prompts = read_lines(text_file)?;
    if prompts.is_empty() {
        return Err(Error::NoPrompts {
            path: text_file.to_path_buf(),
        });
    }
    let t = engine.embed_texts(&prompts, opts.batch_size.max(1) * 8)?;
    let rows: Vec<f32> = t.flatten_all()?.to_vec1()?;
    finish(engine, opts, rows, prompts, Vec::new(), EmbeddingKind::Text)
}

fn finish(
    engine: &Engine,
    opts: &EmbedOptions,
    mut rows: Vec<f32>,
    items: Vec<String>,
    failed: Vec<Failure>,
    kind: EmbeddingKind,
) -> Result<EmbedSummary> {
    let dim = engine.dim(opts.features, kind == EmbeddingKind::Image);
    if opts.normalize {
        l2_normalize_rows_f32_sum(&mut rows, dim);
    }
    let summary = EmbedSummary {
        rows: items.len(),
        failed: failed.len(),
        kind,
    };
    let sidecar = EmbeddingsSidecar {
        model: engine.source.clone(),
        model_fingerprint: engine.run_fingerprint.clone(),
        kind,
        dim,
        normalized: opts.normalize,
        features: opts.features,
        items,
        failed,
    };
    write_embeddings(&opts.out, &rows, &sidecar)?;
    Ok(summary)
}

/// The JSON sidecar written next to an embeddings file.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct EmbeddingsSidecar {
    /// The model as given on the command line.
    pub model: String,
    /// A fingerprint of the model files.
    pub model_fingerprint: String,
    /// `image` or `text`.
    pub kind: EmbeddingKind,
    /// Width of each row.
    pub dim: usize,
    /// Whether rows are L2-normalised.
    pub normalized: bool,
    /// `projected` or `pooled`.
    pub features: Features,
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
        return Err(Error::EmbeddingValues {
            path: out.to_path_buf(),
            values: rows.len(),
            rows: n,
            dim: sidecar.dim,
        });
    }
    let json = serde_json::to_vec_pretty(sidecar).map_err(|source| Error::Serialize {
        path: sidecar_path(out),
        source,
    })?;
    // The sidecar goes first so that a complete OUT always has its matching sidecar.
    let side = sidecar_path(out);
    write_atomic(&side, &json).map_err(|e| Error::io(&side, e))?;
    let meta = BTreeMap::from([
        ("model".to_string(), sidecar.model.clone()),
        ("kind".to_string(), sidecar.kind.as_str().to_string()),
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
            kind: EmbeddingKind::Image,
            dim: 2,
            normalized: false,
            features: Features::Projected,
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
