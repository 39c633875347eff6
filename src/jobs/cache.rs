//! The embedding cache: image embeddings computed once per model and reused by `fit`,
//! `predict` and `compare`. Entries are keyed by each file's absolute path, size and
//! modification time, so a changed file is encoded again.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::clip::engine::{Engine, Features};
use crate::error::{Error, Result};
use crate::jobs::pipeline::embed_images;
use crate::jobs::writers::Failure;
use crate::util::atomic::write_atomic;
use crate::util::safetensors_io::{write_f32, F32Tensor, SafetensorsFile};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Entry {
    path: String,
    size: u64,
    mtime_ns: u128,
}

#[derive(Debug, Serialize, Deserialize)]
struct Index {
    model_fingerprint: String,
    features: Features,
    dim: usize,
    entries: Vec<Entry>,
}

/// What [`EmbeddingCache::embed`] returns.
pub struct Embeddings {
    /// The embedding of each requested path, `None` where the image failed.
    pub rows: Vec<Option<Vec<f32>>>,
    /// The images that failed, with reasons.
    pub failures: Vec<Failure>,
    /// How many images were encoded (the rest came from the cache).
    pub encoded: usize,
}

/// Cached image embeddings of one model and feature kind.
pub struct EmbeddingCache {
    files: Option<(PathBuf, PathBuf)>,
    fingerprint: String,
    features: Features,
    dim: usize,
    entries: Vec<Entry>,
    rows: Vec<f32>,
    by_path: HashMap<String, usize>,
    dirty: bool,
}

fn stat(path: &Path) -> std::io::Result<(String, u64, u128)> {
    let canon = std::fs::canonicalize(path)?;
    let meta = std::fs::metadata(&canon)?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    Ok((crate::util::pathtext::path_text(&canon), meta.len(), mtime))
}

impl EmbeddingCache {
    /// Opens (or starts) the cache for `engine`'s model under `dir`; `None` keeps it in memory only.
    /// An unreadable or inconsistent cache file is ignored and rebuilt.
    pub fn open(dir: Option<&Path>, engine: &Engine, features: Features) -> Result<Self> {
        let dim = engine.dim(features, true);
        let mut c = EmbeddingCache {
            files: None,
            fingerprint: engine.run_fingerprint.clone(),
            features,
            dim,
            entries: Vec::new(),
            rows: Vec::new(),
            by_path: HashMap::new(),
            dirty: false,
        };
        let Some(dir) = dir else { return Ok(c) };
        let stem = format!("embeddings-{}-{}", engine.run_fingerprint, features);
        let data = dir.join(format!("{stem}.safetensors"));
        let index = dir.join(format!("{stem}.json"));
        c.files = Some((data.clone(), index.clone()));
        if let (Ok(ib), Ok(db)) = (std::fs::read(&index), std::fs::read(&data)) {
            if let Ok(ix) = serde_json::from_slice::<Index>(&ib) {
                let tensor =
                    SafetensorsFile::from_bytes(&data, db).and_then(|f| f.f32_tensor("embeddings"));
                if let Ok((shape, rows)) = tensor {
                    if ix.dim == dim
                        && ix.model_fingerprint == c.fingerprint
                        && shape == [ix.entries.len(), dim]
                    {
                        c.rows = rows;
                        c.by_path = ix
                            .entries
                            .iter()
                            .enumerate()
                            .map(|(i, e)| (e.path.clone(), i))
                            .collect();
                        c.entries = ix.entries;
                    }
                }
            }
        }
        Ok(c)
    }

    /// Number of cached embeddings.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn lookup(&self, path: &Path) -> Option<usize> {
        let (key, size, mtime) = stat(path).ok()?;
        let &i = self.by_path.get(&key)?;
        let e = &self.entries[i];
        (e.size == size && e.mtime_ns == mtime).then_some(i)
    }

    /// The cached embedding of `path`, if present and the file is unchanged.
    pub fn get(&self, path: &Path) -> Option<&[f32]> {
        self.lookup(path)
            .map(|i| &self.rows[i * self.dim..(i + 1) * self.dim])
    }

    /// Adds or replaces the embedding of `path` (ignored if the file cannot be read).
    pub fn insert(&mut self, path: &Path, row: &[f32]) {
        let Ok((key, size, mtime_ns)) = stat(path) else {
            return;
        };
        let entry = Entry {
            path: key.clone(),
            size,
            mtime_ns,
        };
        match self.by_path.get(&key) {
            Some(&i) => {
                self.entries[i] = entry;
                self.rows[i * self.dim..(i + 1) * self.dim].copy_from_slice(row);
            }
            None => {
                self.by_path.insert(key, self.entries.len());
                self.entries.push(entry);
                self.rows.extend_from_slice(row);
            }
        }
        self.dirty = true;
    }

    /// Returns the embedding of every path, encoding only those that are missing or changed,
    /// then saves the cache.
    pub fn embed(
        &mut self,
        engine: &Engine,
        paths: &[PathBuf],
        batch_size: usize,
    ) -> Result<Embeddings> {
        let missing: Vec<PathBuf> = paths
            .iter()
            .filter(|p| self.lookup(p).is_none())
            .cloned()
            .collect();
        let mut failures = Vec::new();
        let mut failed_set = std::collections::HashSet::new();
        let encoded = missing.len();
        let dim = self.dim;
        let mut seen = 0usize;
        let run = embed_images(engine, missing, batch_size, self.features, |b| {
            seen += b.ok.len() + b.failed.len();
            if let Some(t) = &b.embeddings {
                let v: Vec<f32> = t.flatten_all()?.to_vec1()?;
                for (p, row) in b.ok.iter().zip(v.chunks_exact(dim)) {
                    self.insert(p, row);
                }
            }
            for (p, e) in b.failed {
                failed_set.insert(p.clone());
                failures.push(Failure {
                    path: crate::util::pathtext::path_text(&p),
                    error: e,
                });
            }
            Ok(())
        });
        if let Err(e) = run {
            // What was embedded is kept in the cache, so a rerun starts from there.
            let _ = self.save();
            let done = paths.len() - encoded + seen;
            return Err(crate::jobs::tally::stopped(done, paths.len(), e));
        }
        self.save()?;
        let out: Vec<Option<Vec<f32>>> = paths
            .iter()
            .map(|p| {
                if failed_set.contains(p) {
                    return None;
                }
                self.lookup(p)
                    .map(|i| self.rows[i * dim..(i + 1) * dim].to_vec())
            })
            .collect();
        // An image embedded but not found again (changed or removed during the run) is a
        // failure too, never a silent gap.
        for (p, r) in paths.iter().zip(&out) {
            if r.is_none() && !failed_set.contains(p) {
                failures.push(Failure {
                    path: crate::util::pathtext::path_text(p),
                    error: "changed or removed while it was being embedded".into(),
                });
            }
        }
        Ok(Embeddings {
            rows: out,
            failures,
            encoded: encoded - failed_set.len(),
        })
    }

    /// Writes the cache if it changed (atomically; data first, then the index).
    pub fn save(&mut self) -> Result<()> {
        let Some((data, index)) = &self.files else {
            return Ok(());
        };
        if !self.dirty {
            return Ok(());
        }
        if let Some(dir) = data.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let ix = Index {
            model_fingerprint: self.fingerprint.clone(),
            features: self.features,
            dim: self.dim,
            entries: self.entries.clone(),
        };
        let json = serde_json::to_vec(&ix).map_err(|source| Error::Serialize {
            path: index.clone(),
            source,
        })?;
        let tensor = F32Tensor {
            name: "embeddings",
            shape: vec![self.entries.len(), self.dim],
            values: &self.rows,
        };
        write_f32(data, &[tensor], &BTreeMap::new())?;
        write_atomic(index, &json).map_err(|e| Error::io(index, e))?;
        self.dirty = false;
        Ok(())
    }
}
