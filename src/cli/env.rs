//! The environment, read once at start-up: everything the binary takes from it is here, and
//! passed to the library as options (the library never reads the environment).

use std::collections::HashMap;
use std::path::PathBuf;

use cliplabel::clip::hub::HubOptions;
use cliplabel::clip::model::Kernels;

/// What cliplabel takes from the environment.
pub struct Env {
    /// `CLIPLABEL_KERNELS=auto|avx512|avx2|candle` forces a matrix-multiply path (unset or
    /// empty: `auto`).
    pub kernels: Kernels,
    /// The default cache directory: `$CLIPLABEL_CACHE`, else `$XDG_CACHE_HOME/cliplabel`, else
    /// `~/.cache/cliplabel`.
    pub cache_dir: Option<PathBuf>,
    /// The Hugging Face cache (`HF_HOME`, `HF_HUB_CACHE`) and `HF_HUB_OFFLINE`.
    pub hub: HubOptions,
    /// The scheduler's variables (`SLURM_ARRAY_*`, `JOB_COMPLETION_INDEX`), for sharding.
    scheduler: HashMap<String, String>,
}

impl Env {
    /// Reads the process environment.
    pub fn read() -> Self {
        let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
        let kernels = read_kernels(std::env::var("CLIPLABEL_KERNELS").ok().as_deref());
        let cache_dir = var("CLIPLABEL_CACHE")
            .map(PathBuf::from)
            .or_else(|| var("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("cliplabel")))
            .or_else(|| {
                std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").join("cliplabel"))
            });
        let offline = std::env::var("HF_HUB_OFFLINE")
            .is_ok_and(|v| !v.is_empty() && v != "0" && v.to_lowercase() != "false");
        let hub = HubOptions {
            // hf-hub's own reading of HF_HOME / HF_HUB_CACHE, so the layout stays its.
            cache_dir: hf_hub::Cache::from_env().path().clone(),
            offline,
        };
        let scheduler = std::env::vars()
            .filter(|(k, _)| k.starts_with("SLURM_ARRAY_") || k == "JOB_COMPLETION_INDEX")
            .collect();
        Env {
            kernels,
            cache_dir,
            hub,
            scheduler,
        }
    }

    /// A scheduler variable, as read at start-up.
    pub fn scheduler_var(&self, key: &str) -> Option<String> {
        self.scheduler.get(key).cloned()
    }
}

/// `CLIPLABEL_KERNELS`'s value as [`Kernels`]. An unknown value, and a forced path this CPU
/// lacks, are said on stderr (once, at start-up) and run the fallback: `auto`, or the next path.
fn read_kernels(value: Option<&str>) -> Kernels {
    let Some(v) = value.filter(|v| !v.trim().is_empty()) else {
        return Kernels::Auto;
    };
    match v.parse::<Kernels>() {
        Ok(k) => {
            if let Some(note) = k.resolve().1 {
                eprintln!("note: CLIPLABEL_KERNELS: {note}");
            }
            k
        }
        Err(e) => {
            eprintln!("warning: CLIPLABEL_KERNELS: {e}; using auto");
            Kernels::Auto
        }
    }
}
