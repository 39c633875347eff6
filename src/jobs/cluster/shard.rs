//! Splitting one run over many tasks: a Slurm array job or a Kubernetes Indexed Job runs one
//! shard per task, and [`crate::jobs::cluster::merge`] joins the shard outputs afterwards.
//!
//! Every task lists the same inputs and keeps the images whose *key* hashes to its shard, so
//! tasks need not talk to each other. The key is an image's path relative to the input root it
//! was found under (for an image named directly: its file name), with `/` separators, so two
//! machines that mount the data at different places split it identically.
//!
//! The hash is FNV-1a 64 of the key, finished with MurmurHash3's 64-bit mixer and mapped to a
//! shard by multiply-shift: `((mix(fnv1a(key)) as u128 * N) >> 64)`. It is part of the file
//! format (shards of one run must agree) and must never change.
//!
//! Besides its output (`OUT.shard-I-of-N.csv`, …), each shard writes a manifest
//! (`OUT.shard-I-of-N.csv.shard.json`, see [`ShardManifest`]) listing the images it was given,
//! with their positions in the full input list. Merging checks the outputs against the manifests
//! and orders rows by those positions, so it can prove that every input was processed exactly
//! once and restore the single-process order without listing the inputs again.

use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::util::atomic::write_atomic;
use crate::util::hash::{fnv1a, FNV_START};

/// One shard of a run: `index` of `count`, 0-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Shard {
    /// Which shard, `0..count`.
    pub index: usize,
    /// How many shards the run has.
    pub count: usize,
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// Why a task's shard could not be worked out: a bad `--shard`/`--shard-count` value or a
/// scheduler environment that does not describe a regular array of tasks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardError {
    /// `name` (a flag or an environment variable) is not a non-negative integer.
    #[error("{name}: expected a non-negative integer, got `{value}`")]
    NotANumber { name: String, value: String },
    /// `name`'s value does not fit in a `usize`.
    #[error("{name}: `{value}` is too large")]
    TooLarge { name: String, value: String },
    /// A shard count of 0.
    #[error("the shard count must be at least 1")]
    ZeroCount,
    /// `index >= count`.
    #[error("shard index {index} is out of range for {count} shards (indices are 0-based: 0..={})", .count - 1)]
    IndexOutOfRange { index: usize, count: usize },
    /// `--shard` is not of the form `I/N`.
    #[error("--shard: expected I/N such as 0/4 (shard I of N, 0-based), got `{value}`")]
    NotIOfN { value: String },
    /// `--shard` with `--shard-from-env` or `--shard-count`.
    #[error("--shard I/N cannot be combined with --shard-from-env or --shard-count")]
    Conflicting,
    /// `--shard-count 0`.
    #[error("--shard-count must be at least 1")]
    ZeroShardCount,
    /// Kubernetes' completion index does not fit `--shard-count`.
    #[error("JOB_COMPLETION_INDEX={index} but --shard-count is {count}: set --shard-count to the Job's spec.completions")]
    CompletionIndexBeyondCount { index: usize, count: usize },
    /// A Slurm array id does not fit `--shard-count`.
    #[error("SLURM_ARRAY_TASK_ID={index} but --shard-count is {count}: with --shard-count the array ids are the shard indices; submit the array as --array=0-{}", .count - 1)]
    ArrayIdBeyondCount { index: usize, count: usize },
    /// `--shard-count` outside a scheduler.
    #[error("--shard-count needs JOB_COMPLETION_INDEX (a Kubernetes Indexed Job) or SLURM_ARRAY_TASK_ID (a Slurm array task) in the environment; neither is set")]
    NoTaskIndex,
    /// `--shard-from-env` in a Kubernetes Indexed Job, which does not export its size.
    #[error("JOB_COMPLETION_INDEX is set (a Kubernetes Indexed Job), which does not say how many shards there are: pass --shard-count N (the Job's spec.completions)")]
    IndexedJobNeedsCount,
    /// `--shard-from-env` outside a scheduler.
    #[error("--shard-from-env: neither SLURM_ARRAY_TASK_ID (Slurm array job) nor JOB_COMPLETION_INDEX (Kubernetes Indexed Job) is set; use --shard I/N outside a scheduler")]
    NoScheduler,
    /// `SLURM_ARRAY_TASK_ID` is missing.
    #[error("SLURM_ARRAY_TASK_ID is not set")]
    NoArrayTaskId,
    /// `SLURM_ARRAY_TASK_MAX < SLURM_ARRAY_TASK_MIN`.
    #[error("SLURM_ARRAY_TASK_MAX={max} is below SLURM_ARRAY_TASK_MIN={min}")]
    ArrayMaxBelowMin { max: usize, min: usize },
    /// The array's count and its range disagree (an array such as `--array=1,5,9`).
    #[error("the Slurm array is not a regular range (SLURM_ARRAY_TASK_COUNT={count}, but MIN..MAX step {step} holds {in_range} ids): submit it as --array=0-{} or pass --shard I/N", .count.saturating_sub(1))]
    IrregularArray {
        count: usize,
        step: usize,
        in_range: usize,
    },
    /// Neither the array's count nor its maximum is set.
    #[error("SLURM_ARRAY_TASK_ID is set but neither SLURM_ARRAY_TASK_COUNT nor SLURM_ARRAY_TASK_MAX is: cannot tell how many shards there are")]
    ArraySizeUnknown,
    /// The array id is not `MIN + k * STEP`.
    #[error("SLURM_ARRAY_TASK_ID={id} is not in the array MIN={min} step {step}: submit the array as --array=0-{} or pass --shard I/N", .count.saturating_sub(1))]
    IdNotInArray {
        id: usize,
        min: usize,
        step: usize,
        count: usize,
    },
    /// The array id lies beyond the array's count.
    #[error("SLURM_ARRAY_TASK_ID={id} does not fit an array of {count} tasks from {min}: submit it as --array=0-{} or pass --shard I/N", .count.saturating_sub(1))]
    IdBeyondArray { id: usize, count: usize, min: usize },
}

fn parse_count(what: &str, s: &str) -> std::result::Result<usize, ShardError> {
    let t = s.trim();
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ShardError::NotANumber {
            name: what.into(),
            value: s.into(),
        });
    }
    t.parse().map_err(|_| ShardError::TooLarge {
        name: what.into(),
        value: s.into(),
    })
}

impl Shard {
    /// Shard `index` of `count`; errors when `count` is 0 or `index >= count`.
    pub fn new(index: usize, count: usize) -> Result<Self> {
        if count == 0 {
            return Err(ShardError::ZeroCount.into());
        }
        if index >= count {
            return Err(ShardError::IndexOutOfRange { index, count }.into());
        }
        Ok(Shard { index, count })
    }

    /// Parses `I/N` (0-based `I`), e.g. `0/4` … `3/4`.
    pub fn parse(s: &str) -> Result<Self> {
        let (i, n) = s
            .split_once('/')
            .ok_or_else(|| ShardError::NotIOfN { value: s.into() })?;
        Shard::new(parse_count("--shard", i)?, parse_count("--shard", n)?)
    }

    /// The shard of this task from its scheduler's environment, read through `env` (pass
    /// `|k| std::env::var(k).ok()` for the process environment).
    ///
    /// - `explicit` (`--shard I/N`) wins and may not be combined with the other two.
    /// - `shard_count` (`--shard-count N`) takes the index from Kubernetes'
    ///   `JOB_COMPLETION_INDEX` (an Indexed Job does not export its completion count), or
    ///   from `SLURM_ARRAY_TASK_ID` itself, which must then be `0..N`: the array ids are the
    ///   shard indices, so one task can be resubmitted alone (`sbatch --array=5`).
    /// - `from_env` (`--shard-from-env`) reads a Slurm array: index
    ///   `(SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN) / SLURM_ARRAY_TASK_STEP`, count
    ///   `SLURM_ARRAY_TASK_COUNT` or `(MAX - MIN) / STEP + 1` (both must agree when both are
    ///   set: arrays such as `--array=1,5,9` cannot be mapped to shards).
    ///
    /// Returns `None` when none of the three is given: the task processes every input.
    pub fn resolve(
        explicit: Option<Shard>,
        from_env: bool,
        shard_count: Option<usize>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Shard>> {
        if let Some(s) = explicit {
            if from_env || shard_count.is_some() {
                return Err(ShardError::Conflicting.into());
            }
            return Ok(Some(s));
        }
        let get = |k: &str| env(k).filter(|v| !v.trim().is_empty());
        if let Some(n) = shard_count {
            if n == 0 {
                return Err(ShardError::ZeroShardCount.into());
            }
            if let Some(v) = get("JOB_COMPLETION_INDEX") {
                let i = parse_count("JOB_COMPLETION_INDEX", &v)?;
                return Shard::new(i, n).map(Some).map_err(|_| {
                    ShardError::CompletionIndexBeyondCount { index: i, count: n }.into()
                });
            }
            if let Some(v) = get("SLURM_ARRAY_TASK_ID") {
                let i = parse_count("SLURM_ARRAY_TASK_ID", &v)?;
                return Shard::new(i, n)
                    .map(Some)
                    .map_err(|_| ShardError::ArrayIdBeyondCount { index: i, count: n }.into());
            }
            return Err(ShardError::NoTaskIndex.into());
        }
        if from_env {
            if get("SLURM_ARRAY_TASK_ID").is_some() {
                return slurm_shard(&get).map(Some);
            }
            if get("JOB_COMPLETION_INDEX").is_some() {
                return Err(ShardError::IndexedJobNeedsCount.into());
            }
            return Err(ShardError::NoScheduler.into());
        }
        Ok(None)
    }

    /// Whether `key` (see [`shard_key`]) belongs to this shard.
    pub fn contains_key(&self, key: &[u8]) -> bool {
        shard_of_key(key, self.count) == self.index
    }

    /// The paths of this shard, in their input order. `roots` are the files and directories
    /// the paths were collected from ([`crate::images::inputs::collect_images`]'s arguments).
    pub fn select(&self, paths: &[PathBuf], roots: &[PathBuf]) -> Vec<PathBuf> {
        paths
            .iter()
            .filter(|p| self.contains_key(&shard_key(p, roots)))
            .cloned()
            .collect()
    }

    /// Where this shard writes the output of a run whose output is `out`:
    /// `dir/labels.csv` → `dir/labels.shard-2-of-8.csv` (the extension stays last).
    pub fn output_path(&self, out: &Path) -> PathBuf {
        let stem = out
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tag = format!("shard-{}-of-{}", self.index, self.count);
        let name = match out.extension() {
            Some(ext) => format!("{stem}.{tag}.{}", ext.to_string_lossy()),
            None => format!("{stem}.{tag}"),
        };
        out.with_file_name(name)
    }
}

impl FromStr for Shard {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Shard::parse(s)
    }
}

fn slurm_shard(get: &dyn Fn(&str) -> Option<String>) -> Result<Shard> {
    let num = |k: &str| -> std::result::Result<Option<usize>, ShardError> {
        get(k).map(|v| parse_count(k, &v)).transpose()
    };
    let id = num("SLURM_ARRAY_TASK_ID")?.ok_or(ShardError::NoArrayTaskId)?;
    let min = num("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
    let step = num("SLURM_ARRAY_TASK_STEP")?.unwrap_or(1).max(1);
    let from_range = num("SLURM_ARRAY_TASK_MAX")?
        .map(|max| {
            if max < min {
                Err(ShardError::ArrayMaxBelowMin { max, min })
            } else {
                Ok((max - min) / step + 1)
            }
        })
        .transpose()?;
    let count = match (num("SLURM_ARRAY_TASK_COUNT")?, from_range) {
        (Some(c), Some(r)) if c != r => {
            return Err(ShardError::IrregularArray {
                count: c,
                step,
                in_range: r,
            }
            .into())
        }
        (Some(c), _) => c,
        (None, Some(r)) => r,
        (None, None) => return Err(ShardError::ArraySizeUnknown.into()),
    };
    if id < min || (id - min) % step != 0 {
        return Err(ShardError::IdNotInArray {
            id,
            min,
            step,
            count,
        }
        .into());
    }
    Shard::new((id - min) / step, count)
        .map_err(|_| ShardError::IdBeyondArray { id, count, min }.into())
}

/// A note for a task that runs unsharded inside an array job (and so processes every input),
/// read through `env`; `None` outside one.
pub fn unsharded_note(env: impl Fn(&str) -> Option<String>) -> Option<String> {
    let multi = env("SLURM_ARRAY_TASK_COUNT")
        .and_then(|v| v.trim().parse::<usize>().ok())
        .is_some_and(|n| n > 1);
    if multi {
        return Some("note: this is a Slurm array task, but without --shard-from-env it processes every input; pass --shard-from-env or --shard-count N to split the inputs over the array".into());
    }
    if env("JOB_COMPLETION_INDEX").is_some() {
        return Some("note: this is a Kubernetes Indexed Job pod, but without --shard-count N it processes every input; pass --shard-count N (the Job's completions) to split the inputs".into());
    }
    None
}

fn push_components(key: &mut Vec<u8>, rel: &Path) {
    for c in rel.components() {
        if let Component::Normal(s) = c {
            if !key.is_empty() {
                key.push(b'/');
            }
            key.extend_from_slice(s.as_encoded_bytes());
        }
    }
}

/// The root among `roots` that `path` was collected from: the longest one that is `path` itself
/// or a directory above it.
pub fn root_of<'a>(path: &Path, roots: &'a [PathBuf]) -> Option<&'a Path> {
    roots
        .iter()
        .filter(|r| path.starts_with(r))
        .max_by_key(|r| r.components().count())
        .map(PathBuf::as_path)
}

/// The machine-independent key of `path`: its path relative to the root it was collected from
/// (its file name when it is a root itself), components joined by `/`.
pub fn shard_key(path: &Path, roots: &[PathBuf]) -> Vec<u8> {
    let mut key = Vec::new();
    match root_of(path, roots) {
        Some(r) if path.components().count() > r.components().count() => {
            push_components(&mut key, path.strip_prefix(r).unwrap_or(path));
        }
        _ => match path.file_name() {
            Some(n) => key.extend_from_slice(n.as_encoded_bytes()),
            None => push_components(&mut key, path),
        },
    }
    key
}

fn mix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The shard (of `count`) that `key` belongs to. Part of the format: never change it.
pub fn shard_of_key(key: &[u8], count: usize) -> usize {
    let h = mix64(fnv1a(key, FNV_START));
    ((h as u128 * count.max(1) as u128) >> 64) as usize
}

/// A digest of the whole input list (keys in order), equal on every machine that sees the same
/// images under its roots.
pub fn inputs_digest(paths: &[PathBuf], roots: &[PathBuf]) -> String {
    let mut h = FNV_START;
    for p in paths {
        h = fnv1a(&shard_key(p, roots), h);
        h = fnv1a(b"\n", h);
    }
    format!("{h:016x}")
}

/// One image of a shard and its position in the full input list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestItem {
    /// Position in the full (unsharded) input list.
    pub i: usize,
    /// The path as written in the output.
    pub path: String,
}

/// What a shard was asked to do, written beside its output as `<shard output>.shard.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardManifest {
    /// Manifest format version.
    pub version: u32,
    /// This shard's index.
    pub index: usize,
    /// How many shards the run has.
    pub count: usize,
    /// Images in the full input list (all shards).
    pub total: usize,
    /// [`inputs_digest`] of the full input list.
    pub inputs_digest: String,
    /// The input files and directories as given to this task.
    pub roots: Vec<String>,
    /// This shard's images, in input order.
    pub items: Vec<ManifestItem>,
}

/// The manifest path of a shard output: `OUT.shard-I-of-N.csv` → `OUT.shard-I-of-N.csv.shard.json`.
pub fn manifest_path(shard_out: &Path) -> PathBuf {
    let name = shard_out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    shard_out.with_file_name(format!("{name}.shard.json"))
}

/// A task's share of a run: its images, its output path and its manifest.
#[derive(Debug, Clone)]
pub struct ShardPlan {
    /// The shard.
    pub shard: Shard,
    /// The images of this shard, in input order.
    pub paths: Vec<PathBuf>,
    /// The shard's output path ([`Shard::output_path`]).
    pub out: PathBuf,
    /// What the manifest will say.
    pub manifest: ShardManifest,
}

impl ShardPlan {
    /// Selects `shard`'s images out of all of them (`all`, collected from `roots`) for a run
    /// whose merged output will be `out`.
    pub fn new(shard: Shard, roots: &[PathBuf], all: &[PathBuf], out: &Path) -> Self {
        let mut paths = Vec::new();
        let mut items = Vec::new();
        for (i, p) in all.iter().enumerate() {
            if shard.contains_key(&shard_key(p, roots)) {
                items.push(ManifestItem {
                    i,
                    path: crate::util::pathtext::path_text(p),
                });
                paths.push(p.clone());
            }
        }
        let out = shard.output_path(out);
        ShardPlan {
            shard,
            paths,
            manifest: ShardManifest {
                version: 1,
                index: shard.index,
                count: shard.count,
                total: all.len(),
                inputs_digest: inputs_digest(all, roots),
                roots: roots.iter().map(|r| r.display().to_string()).collect(),
                items,
            },
            out,
        }
    }

    /// Writes the manifest beside the shard's output (atomically).
    pub fn write_manifest(&self) -> Result<()> {
        let path = manifest_path(&self.out);
        let json = serde_json::to_vec(&self.manifest).map_err(|source| Error::Serialize {
            path: path.clone(),
            source,
        })?;
        write_atomic(&path, &json).map_err(|e| Error::io(&path, e))
    }
}

/// What a task was asked about sharding (`--shard`, `--shard-from-env`, `--shard-count`,
/// `--no-shard`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardRequest {
    /// `--shard I/N`.
    pub shard: Option<Shard>,
    /// `--shard-from-env`.
    pub from_env: bool,
    /// `--shard-count N`.
    pub count: Option<usize>,
    /// `--no-shard`: process every input even inside an array job.
    pub no_shard: bool,
}

/// A task's inputs after sharding: its images and output path, and what to tell the user.
#[derive(Debug, Clone)]
pub struct Selection {
    /// The images this task processes, in input order.
    pub paths: Vec<PathBuf>,
    /// Where it writes (the shard's output path when sharded).
    pub out: PathBuf,
    /// The shard, when sharded.
    pub shard: Option<Shard>,
    /// How many images there were before sharding.
    pub total: usize,
    /// Notes to show even in quiet mode: a shard taken from the Slurm array without being
    /// asked for, or an array task that processes every input.
    pub notes: Vec<String>,
}

impl ShardRequest {
    /// Whether any of `--shard`, `--shard-from-env`, `--shard-count` was given.
    pub fn is_set(&self) -> bool {
        self.shard.is_some() || self.from_env || self.count.is_some()
    }

    /// Narrows `paths` (collected from `roots`) to this task's shard and writes the shard's
    /// manifest; unchanged when not sharded. The scheduler's variables are read through `env`.
    ///
    /// The policy: without any sharding option, a task of a Slurm array with more than one
    /// task takes its shard from `SLURM_ARRAY_TASK_ID` as `--shard-from-env` does, with a note
    /// saying so; `--no-shard` turns that off. An unsharded task inside an array job gets a
    /// note that it processes every input.
    pub fn select(
        &self,
        env: impl Fn(&str) -> Option<String>,
        roots: &[PathBuf],
        paths: Vec<PathBuf>,
        out: &Path,
    ) -> Result<Selection> {
        let mut notes = Vec::new();
        let in_slurm_array = env("SLURM_ARRAY_TASK_ID").is_some_and(|v| !v.trim().is_empty())
            && unsharded_note(&env).is_some();
        let auto = !self.no_shard && !self.is_set() && in_slurm_array;
        let shard = if auto {
            let s = Shard::resolve(None, true, None, &env)?;
            if let Some(s) = s {
                notes.push(format!(
                    "note: shard {s} taken from the Slurm array (SLURM_ARRAY_TASK_ID); pass --no-shard to process every input"
                ));
            }
            s
        } else if self.no_shard {
            None
        } else {
            Shard::resolve(self.shard, self.from_env, self.count, &env)?
        };
        let total = paths.len();
        let Some(shard) = shard else {
            if !self.no_shard {
                notes.extend(unsharded_note(&env));
            }
            return Ok(Selection {
                paths,
                out: out.to_path_buf(),
                shard: None,
                total,
                notes,
            });
        };
        let plan = ShardPlan::new(shard, roots, &paths, out);
        plan.write_manifest()?;
        Ok(Selection {
            paths: plan.paths,
            out: plan.out,
            shard: Some(shard),
            total,
            notes,
        })
    }
}

/// Reads a shard manifest.
pub fn read_manifest(path: &Path) -> Result<ShardManifest> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_slice(&bytes).map_err(|source| Error::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// Parses a shard output's file name against the merged output `out`: `Some(shard)` when
/// `name` is `STEM.shard-I-of-N.EXT` for `out = STEM.EXT`.
pub fn parse_output_name(out: &Path, name: &str) -> Option<Shard> {
    let stem = out.file_stem()?.to_string_lossy().into_owned();
    let rest = name.strip_prefix(&stem)?.strip_prefix(".shard-")?;
    let mid = match out.extension() {
        Some(ext) => rest.strip_suffix(&format!(".{}", ext.to_string_lossy()))?,
        None => rest,
    };
    let (i, n) = mid.split_once("-of-")?;
    let canonical = |s: &str| {
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'))
    };
    if !canonical(i) || !canonical(n) {
        return None;
    }
    Shard::new(i.parse().ok()?, n.parse().ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn shard_errors_carry_the_values_behind_them() {
        let e = Shard::parse("3/x").unwrap_err();
        assert!(
            matches!(&e, Error::Shard(ShardError::NotANumber { name, value }) if name == "--shard" && value == "x"),
            "{e:?}"
        );
        let e = Shard::parse("4/4").unwrap_err();
        assert!(matches!(
            e,
            Error::Shard(ShardError::IndexOutOfRange { index: 4, count: 4 })
        ));
        assert_eq!(
            e.to_string(),
            "shard index 4 is out of range for 4 shards (indices are 0-based: 0..=3)"
        );
        let env = env_of(&[
            ("SLURM_ARRAY_TASK_ID", "5"),
            ("SLURM_ARRAY_TASK_MIN", "1"),
            ("SLURM_ARRAY_TASK_MAX", "9"),
            ("SLURM_ARRAY_TASK_STEP", "4"),
            ("SLURM_ARRAY_TASK_COUNT", "5"),
        ]);
        let e = Shard::resolve(None, true, None, env).unwrap_err();
        assert!(
            matches!(
                e,
                Error::Shard(ShardError::IrregularArray {
                    count: 5,
                    step: 4,
                    in_range: 3
                })
            ),
            "{e:?}"
        );
        assert_eq!(e.kind(), crate::ErrorKind::Input);
    }

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn parses_i_of_n() {
        assert_eq!(Shard::parse("0/1").unwrap(), Shard { index: 0, count: 1 });
        assert_eq!(
            "3/4".parse::<Shard>().unwrap(),
            Shard { index: 3, count: 4 }
        );
        assert_eq!(
            Shard::parse(" 2 / 5 ").unwrap(),
            Shard { index: 2, count: 5 }
        );
        for bad in [
            "4/4", "5/4", "0/0", "1", "a/b", "-1/3", "1/", "/3", "", "1/3/5", "1.0/3",
        ] {
            let e = Shard::parse(bad).unwrap_err().to_string();
            assert!(!e.is_empty(), "{bad}");
        }
        assert!(Shard::parse("4/4")
            .unwrap_err()
            .to_string()
            .contains("0-based"));
        assert_eq!(Shard::new(1, 3).unwrap().to_string(), "1/3");
    }

    /// A small deterministic generator for the property tests.
    fn lcg(state: &mut u64) -> u64 {
        *state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        *state >> 33
    }

    fn random_paths(seed: u64, n: usize) -> Vec<PathBuf> {
        let mut s = seed;
        let names = ["cat", "dog", "IMG_", "photo", "a b", "été", "x"];
        let exts = ["jpg", "png", "JPEG", "webp"];
        (0..n)
            .map(|_| {
                let depth = lcg(&mut s) % 4;
                let mut p = PathBuf::from("/data/root");
                for _ in 0..depth {
                    p.push(format!("d{}", lcg(&mut s) % 5));
                }
                let name = names[(lcg(&mut s) % names.len() as u64) as usize];
                let ext = exts[(lcg(&mut s) % exts.len() as u64) as usize];
                p.push(format!("{name}{}.{ext}", lcg(&mut s) % 100_000));
                p
            })
            .collect()
    }

    #[test]
    fn every_path_is_in_exactly_one_shard() {
        let roots = vec![PathBuf::from("/data/root")];
        for seed in 0..20u64 {
            let paths = random_paths(seed, 500);
            let n = 1 + (seed as usize * 7) % 13;
            let mut seen = vec![0usize; paths.len()];
            let mut union = Vec::new();
            for i in 0..n {
                let shard = Shard::new(i, n).unwrap();
                let sel = shard.select(&paths, &roots);
                for (j, p) in paths.iter().enumerate() {
                    if shard.contains_key(&shard_key(p, &roots)) {
                        seen[j] += 1;
                    }
                }
                union.extend(sel);
            }
            assert!(seen.iter().all(|&c| c == 1), "seed {seed}, n {n}");
            assert_eq!(union.len(), paths.len());
            // The plan agrees with select and numbers items by input position.
            let plans: Vec<ShardPlan> = (0..n)
                .map(|i| {
                    ShardPlan::new(
                        Shard::new(i, n).unwrap(),
                        &roots,
                        &paths,
                        Path::new("o.csv"),
                    )
                })
                .collect();
            let mut all_i: Vec<usize> = plans
                .iter()
                .flat_map(|p| p.manifest.items.iter().map(|it| it.i))
                .collect();
            for p in &plans {
                // Input order is kept within a shard.
                assert!(p.manifest.items.windows(2).all(|w| w[0].i < w[1].i));
                assert_eq!(p.paths, p.shard.select(&paths, &roots));
            }
            all_i.sort_unstable();
            assert_eq!(all_i, (0..paths.len()).collect::<Vec<_>>());
        }
    }

    #[test]
    fn shards_are_balanced() {
        let roots = vec![PathBuf::from("imgs")];
        let paths: Vec<PathBuf> = (0..30_000)
            .map(|i| PathBuf::from(format!("imgs/IMG_{i:05}.jpg")))
            .collect();
        for n in [2usize, 3, 8] {
            let mut sizes = vec![0usize; n];
            for p in &paths {
                sizes[shard_of_key(&shard_key(p, &roots), n)] += 1;
            }
            let expect = paths.len() / n;
            for s in &sizes {
                assert!(
                    (*s as f64 - expect as f64).abs() < 0.05 * expect as f64,
                    "{n} shards: {sizes:?}"
                );
            }
        }
    }

    #[test]
    fn split_is_stable_and_independent_of_the_mount_point() {
        // These values are part of the format: a change would split old runs differently.
        // (Computed independently by a Python transcription of the documented function.)
        let cases: [(&str, usize, usize); 9] = [
            ("cat.jpg", 3, 0),
            ("dog.png", 3, 0),
            ("a/b/IMG_0001.JPG", 3, 1),
            ("a/b/IMG_0002.JPG", 3, 0),
            ("a/b/IMG_0003.JPG", 3, 2),
            ("cat.jpg", 8, 0),
            ("été/x y.webp", 5, 3),
            ("x.png", 2, 1),
            ("z/z.tif", 7, 4),
        ];
        for (key, n, want) in cases {
            assert_eq!(shard_of_key(key.as_bytes(), n), want, "{key} of {n}");
            for mount in ["/mnt/data/imgs", "imgs", "./imgs", "/srv/nfs/imgs/"] {
                let roots = vec![PathBuf::from(mount)];
                let p = Path::new(mount).join(key);
                assert_eq!(shard_key(&p, &roots), key.as_bytes(), "{mount}");
                assert!(Shard::new(want, n)
                    .unwrap()
                    .contains_key(&shard_key(&p, &roots)));
            }
        }
        // Images named directly are keyed by their file name.
        let roots = vec![PathBuf::from("/x/y/cat.jpg"), PathBuf::from("/z")];
        assert_eq!(shard_key(Path::new("/x/y/cat.jpg"), &roots), b"cat.jpg");
        assert_eq!(shard_key(Path::new("/z/q/cat.jpg"), &roots), b"q/cat.jpg");
        // The most specific root wins when roots nest.
        let roots = vec![PathBuf::from("/d"), PathBuf::from("/d/sub")];
        assert_eq!(shard_key(Path::new("/d/sub/a.jpg"), &roots), b"a.jpg");
        assert_eq!(shard_key(Path::new("/d/b.jpg"), &roots), b"b.jpg");
        // The digest depends on keys, not mount points.
        let a: Vec<PathBuf> = ["1.jpg", "s/2.jpg"]
            .iter()
            .map(|k| Path::new("/m1/imgs").join(k))
            .collect();
        let b: Vec<PathBuf> = ["1.jpg", "s/2.jpg"]
            .iter()
            .map(|k| Path::new("data").join(k))
            .collect();
        assert_eq!(
            inputs_digest(&a, &[PathBuf::from("/m1/imgs")]),
            inputs_digest(&b, &[PathBuf::from("data")])
        );
        assert_ne!(
            inputs_digest(&a, &[PathBuf::from("/m1/imgs")]),
            inputs_digest(&a[..1], &[PathBuf::from("/m1/imgs")])
        );
    }

    #[test]
    fn output_names_round_trip() {
        let s = Shard::new(2, 8).unwrap();
        assert_eq!(
            s.output_path(Path::new("out/labels.csv")),
            Path::new("out/labels.shard-2-of-8.csv")
        );
        assert_eq!(
            s.output_path(Path::new("e.v1.safetensors")),
            Path::new("e.v1.shard-2-of-8.safetensors")
        );
        assert_eq!(
            s.output_path(Path::new("noext")),
            Path::new("noext.shard-2-of-8")
        );
        for out in ["out/labels.csv", "e.v1.safetensors", "noext", "l.jsonl"] {
            let out = Path::new(out);
            let name = s.output_path(out);
            let name = name.file_name().unwrap().to_str().unwrap();
            assert_eq!(parse_output_name(out, name), Some(s), "{name}");
        }
        let out = Path::new("labels.csv");
        for bad in [
            "labels.csv",
            "labels.shard-2-of-8.jsonl",
            "labels.shard-02-of-8.csv",
            "labels.shard-8-of-8.csv",
            "labels.shard-2-of-8.csv.run.json",
            "labels.shard-2-of-8.csv.shard.json",
            "xlabels.shard-2-of-8.csv",
        ] {
            assert_eq!(parse_output_name(out, bad), None, "{bad}");
        }
        assert_eq!(
            manifest_path(Path::new("d/l.shard-0-of-2.csv")),
            Path::new("d/l.shard-0-of-2.csv.shard.json")
        );
    }

    #[test]
    fn reads_slurm_and_kubernetes_environments() {
        let none = env_of(&[]);
        assert_eq!(Shard::resolve(None, false, None, &none).unwrap(), None);
        let explicit = Shard::new(1, 2).unwrap();
        assert_eq!(
            Shard::resolve(Some(explicit), false, None, &none).unwrap(),
            Some(explicit)
        );
        assert!(Shard::resolve(Some(explicit), true, None, &none).is_err());
        assert!(Shard::resolve(Some(explicit), false, Some(2), &none).is_err());

        // Slurm with COUNT and MIN, ids starting at 1.
        let e = env_of(&[
            ("SLURM_ARRAY_TASK_ID", "3"),
            ("SLURM_ARRAY_TASK_MIN", "1"),
            ("SLURM_ARRAY_TASK_MAX", "4"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
            ("SLURM_ARRAY_TASK_STEP", "1"),
        ]);
        assert_eq!(
            Shard::resolve(None, true, None, &e).unwrap(),
            Some(Shard { index: 2, count: 4 })
        );
        // Without the env flag, Slurm's variables are ignored (and only noted).
        assert_eq!(Shard::resolve(None, false, None, &e).unwrap(), None);
        assert!(unsharded_note(&e).unwrap().contains("--shard-from-env"));
        assert!(unsharded_note(&none).is_none());
        // With --shard-count, the array id is the index, whatever the array's size: a task
        // resubmitted alone (--array=3, so MIN=MAX=3, COUNT=1) is still shard 3 of 4.
        assert_eq!(
            Shard::resolve(None, false, Some(4), &e).unwrap(),
            Some(Shard { index: 3, count: 4 })
        );
        let alone = env_of(&[
            ("SLURM_ARRAY_TASK_ID", "3"),
            ("SLURM_ARRAY_TASK_MIN", "3"),
            ("SLURM_ARRAY_TASK_MAX", "3"),
            ("SLURM_ARRAY_TASK_COUNT", "1"),
        ]);
        assert_eq!(
            Shard::resolve(None, true, Some(4), &alone).unwrap(),
            Some(Shard { index: 3, count: 4 })
        );
        assert_eq!(
            Shard::resolve(None, true, None, &alone).unwrap(),
            Some(Shard { index: 0, count: 1 })
        );
        assert!(Shard::resolve(None, false, Some(3), &e)
            .unwrap_err()
            .to_string()
            .contains("--array=0-2"));
        // Only MIN/MAX (no COUNT), with a step: --array=10-30:10.
        let e = env_of(&[
            ("SLURM_ARRAY_TASK_ID", "20"),
            ("SLURM_ARRAY_TASK_MIN", "10"),
            ("SLURM_ARRAY_TASK_MAX", "30"),
            ("SLURM_ARRAY_TASK_STEP", "10"),
        ]);
        assert_eq!(
            Shard::resolve(None, true, None, &e).unwrap(),
            Some(Shard { index: 1, count: 3 })
        );
        // Only ID and COUNT: MIN defaults to 0.
        let e = env_of(&[
            ("SLURM_ARRAY_TASK_ID", "0"),
            ("SLURM_ARRAY_TASK_COUNT", "3"),
        ]);
        assert_eq!(
            Shard::resolve(None, true, None, &e).unwrap(),
            Some(Shard { index: 0, count: 3 })
        );
        // An irregular array (--array=1,5,9) is refused.
        let e = env_of(&[
            ("SLURM_ARRAY_TASK_ID", "5"),
            ("SLURM_ARRAY_TASK_MIN", "1"),
            ("SLURM_ARRAY_TASK_MAX", "9"),
            ("SLURM_ARRAY_TASK_COUNT", "3"),
            ("SLURM_ARRAY_TASK_STEP", "1"),
        ]);
        assert!(Shard::resolve(None, true, None, &e)
            .unwrap_err()
            .to_string()
            .contains("not a regular range"));
        // No count at all, junk values, and ids out of range.
        for bad in [
            vec![("SLURM_ARRAY_TASK_ID", "1")],
            vec![
                ("SLURM_ARRAY_TASK_ID", "x"),
                ("SLURM_ARRAY_TASK_COUNT", "3"),
            ],
            vec![
                ("SLURM_ARRAY_TASK_ID", "3"),
                ("SLURM_ARRAY_TASK_COUNT", "3"),
            ],
            vec![
                ("SLURM_ARRAY_TASK_ID", "0"),
                ("SLURM_ARRAY_TASK_MIN", "1"),
                ("SLURM_ARRAY_TASK_COUNT", "3"),
            ],
            vec![
                ("SLURM_ARRAY_TASK_ID", "1"),
                ("SLURM_ARRAY_TASK_COUNT", "0"),
            ],
        ] {
            assert!(
                Shard::resolve(None, true, None, env_of(&bad)).is_err(),
                "{bad:?}"
            );
        }

        // Kubernetes: the index from the environment, the count from the flag.
        let k = env_of(&[("JOB_COMPLETION_INDEX", "4")]);
        assert_eq!(
            Shard::resolve(None, false, Some(5), &k).unwrap(),
            Some(Shard { index: 4, count: 5 })
        );
        assert_eq!(
            Shard::resolve(None, true, Some(5), &k).unwrap(),
            Some(Shard { index: 4, count: 5 })
        );
        assert!(Shard::resolve(None, false, Some(4), &k)
            .unwrap_err()
            .to_string()
            .contains("spec.completions"));
        assert!(Shard::resolve(None, true, None, &k)
            .unwrap_err()
            .to_string()
            .contains("--shard-count"));
        assert!(Shard::resolve(None, false, Some(0), &k).is_err());
        assert!(Shard::resolve(
            None,
            false,
            Some(3),
            env_of(&[("JOB_COMPLETION_INDEX", "-1")])
        )
        .is_err());
        assert!(unsharded_note(&k).unwrap().contains("--shard-count"));
        // Asking for the environment outside a scheduler is an error, not a silent full run.
        assert!(Shard::resolve(None, true, None, &none).is_err());
        assert!(Shard::resolve(None, false, Some(3), &none).is_err());
    }
}
