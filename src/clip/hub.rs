//! Resolving `--model`: a local Hugging Face model directory, or a hub id through the
//! standard Hugging Face cache (downloading with hf-hub when online).

use std::path::{Path, PathBuf};

use crate::clip::config::{read_json, ModelFiles};
use crate::error::{Error, Result};

const OPTIONAL_FILES: [&str; 2] = ["preprocessor_config.json", "tokenizer_config.json"];

fn weight_files_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        return shards_of_index(&index, |name| Ok(dir.join(name)));
    }
    let hint = if dir.join("pytorch_model.bin").exists() {
        " (found pytorch_model.bin: only safetensors weights are supported; convert it with transformers' `save_pretrained(..., safe_serialization=True)`)"
    } else {
        ""
    };
    Err(Error::MissingModelFile {
        dir: dir.to_path_buf(),
        file: "model.safetensors (or model.safetensors.index.json)".into(),
        hint: hint.into(),
    })
}

/// Lists the distinct shard files named by a `model.safetensors.index.json`, in first-seen order.
fn shards_of_index(
    index: &Path,
    mut fetch: impl FnMut(&str) -> Result<PathBuf>,
) -> Result<Vec<PathBuf>> {
    let v = read_json(index)?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::config(index, "weight_map", "missing or not an object"))?;
    let mut names: Vec<&str> = Vec::new();
    for (tensor, file) in map {
        let file = file.as_str().ok_or_else(|| {
            Error::config(
                index,
                &format!("weight_map.{tensor}"),
                "expected a file name",
            )
        })?;
        if file.contains('/') || file.contains('\\') || file.contains("..") {
            return Err(Error::config(
                index,
                &format!("weight_map.{tensor}"),
                format!("unsafe shard name `{file}`"),
            ));
        }
        if !names.contains(&file) {
            names.push(file);
        }
    }
    names.sort_unstable();
    let mut out = Vec::with_capacity(names.len());
    for n in names {
        let p = fetch(n)?;
        if !p.is_file() {
            return Err(Error::MissingModelFile {
                dir: index.parent().unwrap_or(Path::new(".")).to_path_buf(),
                file: n.to_string(),
                hint: format!(" (named by {})", index.display()),
            });
        }
        out.push(p);
    }
    Ok(out)
}

/// Describes a local model directory's files, checking that the required ones exist.
pub fn local_model_files(dir: &Path) -> Result<ModelFiles> {
    if !dir.is_dir() {
        return Err(Error::ModelNotADirectory {
            path: dir.to_path_buf(),
        });
    }
    let need = |name: &str| -> Result<PathBuf> {
        let p = dir.join(name);
        if p.is_file() {
            Ok(p)
        } else {
            Err(Error::MissingModelFile {
                dir: dir.to_path_buf(),
                file: name.to_string(),
                hint: String::new(),
            })
        }
    };
    let config = need("config.json")?;
    let tokenizer = need("tokenizer.json")?;
    let weights = weight_files_in(dir)?;
    let opt = |name: &str| Some(dir.join(name)).filter(|p| p.is_file());
    Ok(ModelFiles {
        source: dir.display().to_string(),
        config,
        tokenizer,
        tokenizer_config: opt(OPTIONAL_FILES[1]),
        preprocessor: opt(OPTIONAL_FILES[0]),
        weights,
    })
}

/// Whether `spec` looks like a hub id (`owner/name`) rather than a path.
pub fn looks_like_hub_id(spec: &str) -> bool {
    let parts: Vec<&str> = spec.split('/').collect();
    parts.len() == 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && p != &"."
                && p != &".."
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
}

fn hub_files(id: &str, cache: &hf_hub::Cache, offline: bool) -> Result<ModelFiles> {
    let cached = cache.model(id.to_string());
    let local_hint = format!(
        "pass a local Hugging Face model directory instead, e.g. `--model ./clip-vit-base-patch32` after downloading {id} \
         (config.json, model.safetensors, tokenizer.json, preprocessor_config.json) on a machine with network access"
    );
    let api = if offline {
        None
    } else {
        hf_hub::api::sync::ApiBuilder::from_cache(cache.clone())
            .with_progress(false)
            .build()
            .ok()
    };
    let repo = api.as_ref().map(|a| a.model(id.to_string()));
    let get = |name: &str, required: bool| -> Result<Option<PathBuf>> {
        if let Some(p) = cached.get(name) {
            return Ok(Some(p));
        }
        match &repo {
            Some(r) => match r.get(name) {
                Ok(p) => Ok(Some(p)),
                Err(e) if required => Err(Error::Hub(format!(
                    "model `{id}`: {name} is not in the Hugging Face cache ({}) and could not be downloaded: {e}; {local_hint}",
                    cache.path().display()
                ))),
                Err(_) => Ok(None),
            },
            None if required => Err(Error::Hub(format!(
                "model `{id}`: {name} is not in the Hugging Face cache ({}) and downloads are off (offline); {local_hint}",
                cache.path().display()
            ))),
            None => Ok(None),
        }
    };
    let config = get("config.json", true)?.unwrap_or_default();
    let tokenizer = get("tokenizer.json", true)?.unwrap_or_default();
    let weights = match get("model.safetensors", false)? {
        Some(p) => vec![p],
        None => {
            let index = get("model.safetensors.index.json", true)?.unwrap_or_default();
            shards_of_index(&index, |n| get(n, true).map(Option::unwrap_or_default))?
        }
    };
    Ok(ModelFiles {
        source: id.to_string(),
        config,
        tokenizer,
        tokenizer_config: get(OPTIONAL_FILES[1], false)?,
        preprocessor: get(OPTIONAL_FILES[0], false)?,
        weights,
    })
}

/// Where hub ids are looked up: the Hugging Face cache directory (the binary takes it from
/// `HF_HOME` / `HF_HUB_CACHE`) and whether downloads are forbidden (`HF_HUB_OFFLINE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubOptions {
    /// The hub cache directory (`~/.cache/huggingface/hub` by default).
    pub cache_dir: PathBuf,
    /// Look only in the cache; never download.
    pub offline: bool,
}

/// Resolves `--model`: an existing path is a local directory; otherwise `owner/name` is a hub id,
/// looked up in the cache of `hub` and downloaded unless it is offline. Without `hub`, only
/// local directories are accepted.
pub fn resolve_model(spec: &str, hub: Option<&HubOptions>) -> Result<ModelFiles> {
    match hub {
        Some(h) => resolve_model_in(spec, &hf_hub::Cache::new(h.cache_dir.clone()), h.offline),
        None if !Path::new(spec).exists() && looks_like_hub_id(spec) => Err(Error::Hub(format!(
            "model `{spec}`: not a local directory, and no Hugging Face cache was given to look it up in"
        ))),
        None => resolve_model_in(spec, &hf_hub::Cache::new(PathBuf::new()), true),
    }
}

/// Resolves `--model` with an explicit cache and offline flag.
pub fn resolve_model_in(spec: &str, cache: &hf_hub::Cache, offline: bool) -> Result<ModelFiles> {
    let path = Path::new(spec);
    if path.exists() {
        return local_model_files(path);
    }
    if looks_like_hub_id(spec) {
        return hub_files(spec, cache, offline);
    }
    Err(Error::ModelNotFound {
        spec: spec.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids() {
        assert!(looks_like_hub_id("openai/clip-vit-base-patch32"));
        assert!(!looks_like_hub_id("models/a/b"));
        assert!(!looks_like_hub_id("../x"));
        assert!(!looks_like_hub_id("plain"));
    }

    #[test]
    fn offline_without_cache_says_how_to_pass_a_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = hf_hub::Cache::new(tmp.path().to_path_buf());
        let e = resolve_model_in("openai/clip-vit-base-patch32", &cache, true)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("local Hugging Face model directory") && e.contains("config.json"),
            "{e}"
        );
    }

    #[test]
    fn cached_snapshot_resolves_offline() {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-clip");
        if !fixture.is_dir() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let snap = tmp.path().join("models--acme--tiny/snapshots/abc123");
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::create_dir_all(tmp.path().join("models--acme--tiny/refs")).unwrap();
        std::fs::write(tmp.path().join("models--acme--tiny/refs/main"), "abc123").unwrap();
        for f in std::fs::read_dir(&fixture).unwrap() {
            let f = f.unwrap().path();
            if f.is_file() {
                std::fs::copy(&f, snap.join(f.file_name().unwrap())).unwrap();
            }
        }
        let cache = hf_hub::Cache::new(tmp.path().to_path_buf());
        let files = resolve_model_in("acme/tiny", &cache, true).unwrap();
        assert!(files.config.starts_with(&snap));
        assert_eq!(files.weights.len(), 1);
    }
}
