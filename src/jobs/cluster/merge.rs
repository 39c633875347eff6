//! Merging the shard outputs of one run (see [`crate::jobs::cluster::shard`]) into the output a single process
//! would have written, after proving that every input was processed exactly once.
//!
//! `merge(OUT)` finds `OUT`'s shards by name (`STEM.shard-I-of-N.EXT` beside `OUT`) and checks:
//! - all shards `0..N` are present and no shard of another count lies beside them;
//! - every shard has its manifest, and the manifests describe the same input list (same size
//!   and digest) and split it without gap or overlap;
//! - every image of a shard has exactly one row (or embedding) in that shard's output, or is
//!   in its failure list, and the shard has nothing else;
//! - all shards come from the same run: identical `.run.json` for labels; the same model
//!   fingerprint, kind, width, normalisation and features for embeddings;
//! - with `inputs`, that listing those inputs now gives exactly the images the shards were run on.
//!
//! Rows are then written in input order (the positions recorded in the manifests), atomically,
//! with the merged failure list and run description beside them.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::jobs::cluster::shard::{
    inputs_digest, manifest_path, parse_output_name, read_manifest, shard_key, Shard, ShardManifest,
};
use crate::jobs::embed::{read_embeddings, sidecar_path, write_embeddings};
use crate::jobs::label::{run_info_path, RunInfo};
use crate::jobs::writers::{failed_path, write_failure_list, Failure, Format};
use crate::util::atomic::write_atomic;

/// Options of [`merge`].
#[derive(Debug, Clone, Default)]
pub struct MergeOptions {
    /// The image files and directories the shards were run on; when given, the merge also checks
    /// that they (still) hold exactly the images the shards processed.
    pub inputs: Vec<PathBuf>,
    /// Overwrite an existing merged output.
    pub force: bool,
}

/// What a merge produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MergedKind {
    /// A labels CSV or JSONL file.
    Labels,
    /// An embeddings safetensors file with its sidecar.
    Embeddings,
}

/// The result of a successful merge.
#[derive(Debug, Clone)]
pub struct MergeReport {
    /// Labels or embeddings.
    pub kind: MergedKind,
    /// How many shards were merged.
    pub shards: usize,
    /// Rows (or embeddings) written.
    pub rows: usize,
    /// Images that failed, listed in the merged failure list (labels) or sidecar (embeddings).
    pub failed: usize,
    /// Images in the run.
    pub total: usize,
    /// The merged output.
    pub out: PathBuf,
}

/// How many paths an error message lists before summarising the rest.
const LIST_MAX: usize = 10;

fn list(paths: &[String]) -> String {
    let mut s: Vec<String> = paths.iter().take(LIST_MAX).cloned().collect();
    if paths.len() > LIST_MAX {
        s.push(format!("… and {} more", paths.len() - LIST_MAX));
    }
    s.join(", ")
}

/// Why shard outputs cannot be merged, naming the merged output or the shard file at fault.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    /// The shards do not add up (missing, duplicated or stale shards, images not accounted
    /// for, runs that differ): every problem found, one per entry.
    #[error("{out}: cannot merge:\n  - {}", .problems.join("\n  - "))]
    Problems { out: PathBuf, problems: Vec<String> },
    /// No shard output lies beside `out`.
    #[error("{out}: no shard outputs to merge: expected files such as {} beside it", .example.display())]
    NoShardOutputs { out: PathBuf, example: PathBuf },
    /// A shard file is not UTF-8 (`byte`: where the first bad byte is).
    #[error("{path}: not UTF-8 at byte {byte}")]
    NotUtf8 { path: PathBuf, byte: usize },
    /// A line of a shard's JSON lines file (output or failure list) is malformed; 1-based.
    #[error("{path}: line {line}: {message}")]
    BadLine {
        path: PathBuf,
        line: usize,
        message: String,
    },
    /// A shard's CSV output is unreadable or has no header.
    #[error("{path}: {message}")]
    BadCsv { path: PathBuf, message: String },
}

fn merge_error(out: &Path, problems: Vec<String>) -> Error {
    MergeError::Problems {
        out: out.to_path_buf(),
        problems,
    }
    .into()
}

/// The shard outputs of `out` (`STEM.shard-I-of-N.EXT` beside it), one per index `0..N`, in
/// index order. Errors when there are none, when shards of different counts lie side by side, or
/// when an index is missing.
pub fn find_shards(out: &Path) -> Result<Vec<(Shard, PathBuf)>> {
    let dir = match out.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut found: Vec<(Shard, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))? {
        let entry = entry.map_err(|e| Error::io(&dir, e))?;
        let name = entry.file_name();
        if let Some(s) = name.to_str().and_then(|n| parse_output_name(out, n)) {
            found.push((s, out.with_file_name(name)));
        }
    }
    let example = Shard { index: 0, count: 3 }.output_path(out);
    if found.is_empty() {
        return Err(MergeError::NoShardOutputs {
            out: out.to_path_buf(),
            example,
        }
        .into());
    }
    found.sort_by_key(|(s, _)| (s.count, s.index));
    let counts: Vec<usize> = {
        let mut c: Vec<usize> = found.iter().map(|(s, _)| s.count).collect();
        c.dedup();
        c
    };
    if counts.len() > 1 {
        let groups: Vec<String> = counts
            .iter()
            .map(|n| {
                let names: Vec<String> = found
                    .iter()
                    .filter(|(s, _)| s.count == *n)
                    .map(|(_, p)| p.display().to_string())
                    .collect();
                format!("{n} shards ({})", list(&names))
            })
            .collect();
        return Err(merge_error(
            out,
            vec![format!(
                "shard outputs of runs with different shard counts lie side by side: {}; remove the stale ones",
                groups.join("; ")
            )],
        ));
    }
    let n = counts[0];
    let have: HashSet<usize> = found.iter().map(|(s, _)| s.index).collect();
    let missing: Vec<String> = (0..n)
        .filter(|i| !have.contains(i))
        .map(|i| {
            format!(
                "shard {i} of {n} is missing: no {} (did its task fail? rerun it, with --resume for labels, then merge again)",
                Shard { index: i, count: n }.output_path(out).display()
            )
        })
        .collect();
    if !missing.is_empty() {
        return Err(merge_error(out, missing));
    }
    Ok(found)
}

struct ShardData {
    shard: Shard,
    out: PathBuf,
    manifest: ShardManifest,
}

impl ShardData {
    fn name(&self) -> String {
        format!(
            "shard {} of {} ({})",
            self.shard.index,
            self.shard.count,
            self.out.display()
        )
    }
}

/// Reads the manifests and checks that they split one input list without gap or overlap.
fn load_manifests(out: &Path, shards: Vec<(Shard, PathBuf)>) -> Result<Vec<ShardData>> {
    let mut data = Vec::new();
    let mut problems = Vec::new();
    for (shard, path) in shards {
        let mp = manifest_path(&path);
        if !mp.exists() {
            problems.push(format!(
                "shard {shard} has no manifest {}: was {} written by `--shard`/`--shard-from-env`? (rerun that shard)",
                mp.display(),
                path.display()
            ));
            continue;
        }
        let manifest = read_manifest(&mp)?;
        if manifest.index != shard.index || manifest.count != shard.count {
            problems.push(format!(
                "{} says it is shard {}/{}, but its file name says {shard}",
                mp.display(),
                manifest.index,
                manifest.count
            ));
            continue;
        }
        data.push(ShardData {
            shard,
            out: path,
            manifest,
        });
    }
    if !problems.is_empty() {
        return Err(merge_error(out, problems));
    }
    let first = &data[0];
    for d in &data[1..] {
        if d.manifest.total != first.manifest.total
            || d.manifest.inputs_digest != first.manifest.inputs_digest
        {
            problems.push(format!(
                "{} was run on a different input list ({} images, digest {}) than {} ({} images, digest {}): the inputs changed between tasks or the tasks were given different inputs; rerun the shards on the same inputs",
                d.name(),
                d.manifest.total,
                d.manifest.inputs_digest,
                first.name(),
                first.manifest.total,
                first.manifest.inputs_digest
            ));
        }
    }
    if !problems.is_empty() {
        return Err(merge_error(out, problems));
    }
    let total = first.manifest.total;
    let mut owner: Vec<Option<usize>> = vec![None; total];
    for (k, d) in data.iter().enumerate() {
        let mut overlap = Vec::new();
        for it in &d.manifest.items {
            match owner.get(it.i) {
                None => {
                    problems.push(format!(
                        "{}: position {} of {} is beyond the input list ({total} images)",
                        d.name(),
                        it.i,
                        it.path
                    ));
                }
                Some(Some(o)) => overlap.push(format!("{} (also in {})", it.path, data[*o].name())),
                Some(None) => owner[it.i] = Some(k),
            }
        }
        if !overlap.is_empty() {
            problems.push(format!(
                "{} was given images another shard was also given: {}",
                d.name(),
                list(&overlap)
            ));
        }
    }
    let gap = owner.iter().filter(|o| o.is_none()).count();
    if gap > 0 {
        problems.push(format!(
            "{gap} of the {total} images were given to no shard (the shards disagree on the split: were they run by different cliplabel versions?)"
        ));
    }
    if !problems.is_empty() {
        return Err(merge_error(out, problems));
    }
    Ok(data)
}

/// Checks that `inputs` hold exactly the images the shards were run on.
fn check_inputs(out: &Path, data: &[ShardData], inputs: &[PathBuf]) -> Result<()> {
    let all = crate::images::inputs::collect_images(inputs)?;
    let digest = inputs_digest(&all, inputs);
    let m = &data[0].manifest;
    if all.len() == m.total && digest == m.inputs_digest {
        return Ok(());
    }
    let now: HashMap<Vec<u8>, String> = all
        .iter()
        .map(|p| (shard_key(p, inputs), crate::util::pathtext::path_text(p)))
        .collect();
    let mut ran: HashMap<Vec<u8>, String> = HashMap::new();
    for d in data {
        let roots: Vec<PathBuf> = d.manifest.roots.iter().map(PathBuf::from).collect();
        for it in &d.manifest.items {
            ran.insert(shard_key(Path::new(&it.path), &roots), it.path.clone());
        }
    }
    let mut problems = Vec::new();
    let mut unrun: Vec<String> = now
        .iter()
        .filter(|(k, _)| !ran.contains_key(*k))
        .map(|(_, p)| p.clone())
        .collect();
    unrun.sort();
    if !unrun.is_empty() {
        problems.push(format!(
            "{} images under --inputs were in no shard (added after the shards ran?): {}",
            unrun.len(),
            list(&unrun)
        ));
    }
    let mut gone: Vec<String> = ran
        .iter()
        .filter(|(k, _)| !now.contains_key(*k))
        .map(|(_, p)| p.clone())
        .collect();
    gone.sort();
    if !gone.is_empty() {
        problems.push(format!(
            "{} images the shards processed are not under --inputs (removed since, or other --inputs than the shards were given): {}",
            gone.len(),
            list(&gone)
        ));
    }
    if problems.is_empty() {
        problems.push(format!(
            "--inputs hold the same {} images as the shards, but list them in another order: give them in the order the shards were given ({})",
            all.len(),
            m.roots.join(" ")
        ));
    }
    Err(merge_error(out, problems))
}

/// Entries and failures placed at their input positions.
type Placed<T> = (Vec<(usize, T)>, Vec<(usize, Failure)>);

/// Places one shard's produced entries (path, payload) and failures at their input positions,
/// recording every gap, duplicate or stray path in `problems`.
fn place<T>(
    d: &ShardData,
    produced: Vec<(String, T)>,
    failures: Vec<Failure>,
    problems: &mut Vec<String>,
) -> Placed<T> {
    let mut positions: HashMap<&str, Vec<usize>> = HashMap::new();
    for it in &d.manifest.items {
        positions.entry(it.path.as_str()).or_default().push(it.i);
    }
    let mut by_path: HashMap<String, Vec<T>> = HashMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut stray = Vec::new();
    for (p, t) in produced {
        if !positions.contains_key(p.as_str()) {
            stray.push(p);
            continue;
        }
        let v = by_path.entry(p.clone()).or_default();
        if v.is_empty() {
            order.push(p);
        }
        v.push(t);
    }
    let mut placed = Vec::new();
    let mut twice = Vec::new();
    let mut with_row: HashSet<usize> = HashSet::new();
    for p in order {
        let rows = by_path.remove(&p).unwrap_or_default();
        let pos = &positions[p.as_str()];
        if rows.len() > pos.len() {
            twice.push(format!("{p} ({} times)", rows.len()));
            continue;
        }
        for (i, t) in pos.iter().zip(rows) {
            with_row.insert(*i);
            placed.push((*i, t));
        }
    }
    let mut failed_at = Vec::new();
    let mut failed_paths: HashSet<String> = HashSet::new();
    for f in failures {
        match positions.get(f.path.as_str()) {
            None => stray.push(format!("{} (in the failure list)", f.path)),
            Some(pos) => {
                failed_paths.insert(f.path.clone());
                failed_at.push((pos[0], f));
            }
        }
    }
    let missing: Vec<String> = d
        .manifest
        .items
        .iter()
        .filter(|it| !with_row.contains(&it.i) && !failed_paths.contains(&it.path))
        .map(|it| it.path.clone())
        .collect();
    if !stray.is_empty() {
        problems.push(format!(
            "{} has {} entries for images that are not its own (another shard's, or from an earlier run on other inputs): {}",
            d.name(),
            stray.len(),
            list(&stray)
        ));
    }
    if !twice.is_empty() {
        problems.push(format!(
            "{} has images more than once: {}",
            d.name(),
            list(&twice)
        ));
    }
    if !missing.is_empty() {
        problems.push(format!(
            "{}: {} of its {} images have neither a result nor a failure (did the task stop early? rerun it, with --resume for labels, then merge again): {}",
            d.name(),
            missing.len(),
            d.manifest.items.len(),
            list(&missing)
        ));
    }
    (placed, failed_at)
}

/// Merges the shards of `out` into `out`. See the module documentation for what is checked.
pub fn merge(out: &Path, opts: &MergeOptions) -> Result<MergeReport> {
    let is_embeddings = out
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"));
    if !is_embeddings {
        Format::from_path(out)?;
    }
    if out.exists() && !opts.force {
        return Err(Error::OutputExists {
            path: out.to_path_buf(),
            remedy: crate::error::Remedy::ForceMerge,
        });
    }
    let shards = find_shards(out)?;
    let data = load_manifests(out, shards)?;
    if !opts.inputs.is_empty() {
        check_inputs(out, &data, &opts.inputs)?;
    }
    if is_embeddings {
        merge_embeddings(out, &data)
    } else {
        merge_labels(out, &data)
    }
}

/// Reads the complete lines of a file (a partial last line, from a task killed mid-write, is
/// left out: its image then counts as missing).
fn complete_text(path: &Path) -> Result<String> {
    let mut bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let valid = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    bytes.truncate(valid);
    String::from_utf8(bytes).map_err(|e| {
        MergeError::NotUtf8 {
            path: path.to_path_buf(),
            byte: e.utf8_error().valid_up_to(),
        }
        .into()
    })
}

fn read_failures(path: &Path) -> Result<Vec<Failure>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    complete_text(path)?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(n, l)| {
            serde_json::from_str(l).map_err(|e| {
                MergeError::BadLine {
                    path: path.to_path_buf(),
                    line: n + 1,
                    message: e.to_string(),
                }
                .into()
            })
        })
        .collect()
}

/// A label file's header (CSV only) and rows as (path, raw bytes of the row).
type LabelRows = (Option<String>, Vec<(String, String)>);

fn read_label_rows(path: &Path, format: Format) -> Result<LabelRows> {
    let text = complete_text(path)?;
    let bad = |m: String| -> Error {
        MergeError::BadCsv {
            path: path.to_path_buf(),
            message: m,
        }
        .into()
    };
    let bad_line = |line: usize, m: String| -> Error {
        MergeError::BadLine {
            path: path.to_path_buf(),
            line,
            message: m,
        }
        .into()
    };
    match format {
        Format::Csv => {
            let mut rdr = csv::ReaderBuilder::new()
                .has_headers(false)
                .flexible(true)
                .from_reader(text.as_bytes());
            let mut starts = Vec::new();
            let mut paths = Vec::new();
            let mut rec = csv::StringRecord::new();
            loop {
                let start = rdr.position().byte() as usize;
                match rdr.read_record(&mut rec) {
                    Ok(true) => {
                        starts.push(start);
                        paths.push(rec.get(0).unwrap_or_default().to_string());
                    }
                    Ok(false) => break,
                    Err(e) => return Err(bad(format!("unreadable CSV row: {e}"))),
                }
            }
            if starts.is_empty() {
                return Err(bad("empty: no CSV header (the task never started?)".into()));
            }
            starts.push(text.len());
            let raw = |k: usize| text[starts[k]..starts[k + 1]].to_string();
            let header = raw(0);
            let rows = (1..paths.len())
                .map(|k| (paths[k].clone(), raw(k)))
                .collect();
            Ok((Some(header), rows))
        }
        Format::Jsonl => {
            let mut rows = Vec::new();
            for (n, line) in text.split_inclusive('\n').enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let v: serde_json::Value =
                    serde_json::from_str(line).map_err(|e| bad_line(n + 1, e.to_string()))?;
                let p = v
                    .get("path")
                    .and_then(|p| p.as_str())
                    .ok_or_else(|| bad_line(n + 1, "no `path`".into()))?;
                rows.push((p.to_string(), line.to_string()));
            }
            Ok((None, rows))
        }
    }
}

fn differing_run_fields(a: &RunInfo, b: &RunInfo) -> Vec<&'static str> {
    let mut d = Vec::new();
    if a.model != b.model {
        d.push("model");
    }
    if a.model_fingerprint != b.model_fingerprint {
        d.push("model_fingerprint");
    }
    if a.method != b.method {
        d.push("method");
    }
    if a.scorer_key != b.scorer_key {
        d.push("scorer_key (classes, prompts or head)");
    }
    if a.classes != b.classes {
        d.push("classes");
    }
    if a.top_k != b.top_k {
        d.push("top_k");
    }
    d
}

fn merge_labels(out: &Path, data: &[ShardData]) -> Result<MergeReport> {
    let format = Format::from_path(out)?;
    let mut problems = Vec::new();
    // Same run everywhere.
    let mut infos = Vec::new();
    for d in data {
        let p = run_info_path(&d.out);
        let bytes = std::fs::read(&p).map_err(|e| Error::io(&p, e))?;
        let info: RunInfo = serde_json::from_slice(&bytes).map_err(|source| Error::Json {
            path: p.clone(),
            source,
        })?;
        infos.push((bytes, info));
    }
    for (d, (_, info)) in data.iter().zip(&infos).skip(1) {
        let diff = differing_run_fields(&infos[0].1, info);
        if !diff.is_empty() {
            problems.push(format!(
                "{} is from a different run than {}: {} differ (see their .run.json)",
                d.name(),
                data[0].name(),
                diff.join(", ")
            ));
        }
    }
    if !problems.is_empty() {
        return Err(merge_error(out, problems));
    }
    let mut header: Option<String> = None;
    let mut rows: Vec<(usize, String)> = Vec::new();
    let mut failures: Vec<(usize, Failure)> = Vec::new();
    for d in data {
        if !d.out.exists() {
            problems.push(format!("{}: the output file is missing", d.name()));
            continue;
        }
        let (h, produced) = read_label_rows(&d.out, format)?;
        match (&header, h) {
            (None, h) => header = h,
            (Some(a), Some(b)) if *a != b => problems.push(format!(
                "{} has the header `{}`, {} has `{}`",
                d.name(),
                b.trim_end(),
                data[0].name(),
                a.trim_end()
            )),
            _ => {}
        }
        let f = read_failures(&failed_path(&d.out))?;
        let (placed, failed) = place(d, produced, f, &mut problems);
        rows.extend(placed);
        failures.extend(failed);
    }
    if !problems.is_empty() {
        return Err(merge_error(out, problems));
    }
    rows.sort_by_key(|(i, _)| *i);
    failures.sort_by_key(|(i, _)| *i);
    let mut body = header.unwrap_or_default();
    for (_, r) in &rows {
        body.push_str(r);
    }
    // The run description and failures first, so that a complete OUT always has its companions.
    let info_path = run_info_path(out);
    write_atomic(&info_path, &infos[0].0).map_err(|e| Error::io(&info_path, e))?;
    let failures: Vec<Failure> = failures.into_iter().map(|(_, f)| f).collect();
    write_failure_list(out, &failures)?;
    write_atomic(out, body.as_bytes()).map_err(|e| Error::io(out, e))?;
    Ok(MergeReport {
        kind: MergedKind::Labels,
        shards: data.len(),
        rows: rows.len(),
        failed: failures.len(),
        total: data[0].manifest.total,
        out: out.to_path_buf(),
    })
}

fn merge_embeddings(out: &Path, data: &[ShardData]) -> Result<MergeReport> {
    let mut problems = Vec::new();
    let mut loaded = Vec::new();
    for d in data {
        if !d.out.exists() || !sidecar_path(&d.out).exists() {
            problems.push(format!(
                "{}: the output or its sidecar {} is missing",
                d.name(),
                sidecar_path(&d.out).display()
            ));
            continue;
        }
        loaded.push(read_embeddings(&d.out)?);
    }
    if !problems.is_empty() {
        return Err(merge_error(out, problems));
    }
    let s0 = loaded[0].1.clone();
    for (d, (_, s)) in data.iter().zip(&loaded) {
        let mut diff = Vec::new();
        if s.model_fingerprint != s0.model_fingerprint {
            diff.push("model_fingerprint");
        }
        if s.kind != s0.kind {
            diff.push("kind");
        }
        if s.dim != s0.dim {
            diff.push("dim");
        }
        if s.normalized != s0.normalized {
            diff.push("normalized");
        }
        if s.features != s0.features {
            diff.push("features");
        }
        if !diff.is_empty() {
            problems.push(format!(
                "{} is from a different run than {}: {} differ (see their sidecars)",
                d.name(),
                data[0].name(),
                diff.join(", ")
            ));
        }
    }
    if !problems.is_empty() {
        return Err(merge_error(out, problems));
    }
    let dim = s0.dim;
    let mut placed_rows: Vec<(usize, (String, Vec<f32>))> = Vec::new();
    let mut failures: Vec<(usize, Failure)> = Vec::new();
    for (d, (rows, side)) in data.iter().zip(loaded) {
        let produced: Vec<(String, (String, Vec<f32>))> = side
            .items
            .iter()
            .zip(rows.chunks_exact(dim.max(1)))
            .map(|(p, r)| (p.clone(), (p.clone(), r.to_vec())))
            .collect();
        let (placed, failed) = place(d, produced, side.failed, &mut problems);
        placed_rows.extend(placed);
        failures.extend(failed);
    }
    if !problems.is_empty() {
        return Err(merge_error(out, problems));
    }
    placed_rows.sort_by_key(|(i, _)| *i);
    failures.sort_by_key(|(i, _)| *i);
    let mut rows = Vec::with_capacity(placed_rows.len() * dim);
    let mut items = Vec::with_capacity(placed_rows.len());
    for (_, (p, r)) in placed_rows {
        items.push(p);
        rows.extend(r);
    }
    let n = items.len();
    let sidecar = crate::jobs::embed::EmbeddingsSidecar {
        items,
        failed: failures.into_iter().map(|(_, f)| f).collect(),
        ..s0
    };
    let failed = sidecar.failed.len();
    write_embeddings(out, &rows, &sidecar)?;
    Ok(MergeReport {
        kind: MergedKind::Embeddings,
        shards: data.len(),
        rows: n,
        failed,
        total: data[0].manifest.total,
        out: out.to_path_buf(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::cluster::shard::ShardPlan;
    use crate::jobs::writers::{LabelRow, LabelWriter};

    fn row(p: &str) -> LabelRow {
        LabelRow {
            path: p.into(),
            label: "cat".into(),
            score: 0.75,
            top: vec![("cat".into(), 0.75), ("dog".into(), 0.25)],
            cosine: Some(0.3),
            abstained: false,
            set: None,
        }
    }

    fn info() -> RunInfo {
        RunInfo {
            model: "m".into(),
            model_fingerprint: "f".into(),
            method: crate::jobs::label::RunMethod::ZeroShot,
            scorer_key: "k".into(),
            classes: vec!["cat".into(), "dog".into()],
            top_k: 2,
        }
    }

    /// Writes a complete sharded run of `paths` (rows for all but `fail`) into `dir`.
    fn sharded_run(dir: &Path, ext: &str, n: usize, paths: &[PathBuf], fail: &str) -> PathBuf {
        let out = dir.join(format!("l.{ext}"));
        let roots = vec![dir.join("imgs")];
        for i in 0..n {
            let plan = ShardPlan::new(Shard::new(i, n).unwrap(), &roots, paths, &out);
            plan.write_manifest().unwrap();
            let (mut w, _) = LabelWriter::open(&plan.out, 2, false, false).unwrap();
            let mut fw = crate::jobs::writers::FailedWriter::new(&plan.out).unwrap();
            for p in &plan.paths {
                let s = p.display().to_string();
                if s.ends_with(fail) {
                    fw.write(&[Failure {
                        path: s,
                        error: "bad".into(),
                    }])
                    .unwrap();
                } else {
                    w.write_batch(&[row(&s)]).unwrap();
                }
            }
            write_atomic(
                &run_info_path(&plan.out),
                &serde_json::to_vec_pretty(&info()).unwrap(),
            )
            .unwrap();
        }
        out
    }

    /// Image paths in the order a directory walk lists them.
    fn paths(dir: &Path, n: usize) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = (0..n)
            .map(|i| dir.join("imgs").join(format!("d{}/img,{i:03}.jpg", i % 3)))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn merges_in_input_order_with_failures() {
        for ext in ["csv", "jsonl"] {
            let d = tempfile::tempdir().unwrap();
            let ps = paths(d.path(), 40);
            let out = sharded_run(d.path(), ext, 3, &ps, "img,007.jpg");
            let r = merge(&out, &MergeOptions::default()).unwrap();
            assert_eq!((r.rows, r.failed, r.total, r.shards), (39, 1, 40, 3));
            // Same bytes as one process writing the rows in order.
            let single = d.path().join(format!("single.{ext}"));
            let (mut w, _) = LabelWriter::open(&single, 2, false, false).unwrap();
            for p in &ps {
                let s = p.display().to_string();
                if !s.ends_with("img,007.jpg") {
                    w.write_batch(&[row(&s)]).unwrap();
                }
            }
            drop(w);
            assert_eq!(
                std::fs::read(&out).unwrap(),
                std::fs::read(&single).unwrap()
            );
            let failed = std::fs::read_to_string(failed_path(&out)).unwrap();
            assert!(failed.contains("img,007.jpg") && failed.lines().count() == 1);
            assert_eq!(
                serde_json::from_slice::<RunInfo>(&std::fs::read(run_info_path(&out)).unwrap())
                    .unwrap(),
                info()
            );
            // Existing output needs --force; --inputs is checked.
            assert!(merge(&out, &MergeOptions::default()).is_err());
            for p in &ps {
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(p, b"x").unwrap();
            }
            let opts = MergeOptions {
                inputs: vec![d.path().join("imgs")],
                force: true,
            };
            merge(&out, &opts).unwrap();
            std::fs::write(d.path().join("imgs/new.png"), b"x").unwrap();
            let e = merge(&out, &opts).unwrap_err().to_string();
            assert!(e.contains("in no shard") && e.contains("new.png"), "{e}");
        }
    }

    #[test]
    fn gaps_duplicates_and_strangers_name_the_shard() {
        let d = tempfile::tempdir().unwrap();
        let ps = paths(d.path(), 30);
        let out = sharded_run(d.path(), "csv", 3, &ps, "none");
        let s1 = Shard::new(1, 3).unwrap().output_path(&out);
        let original = std::fs::read_to_string(&s1).unwrap();
        let lines: Vec<&str> = original.lines().collect();
        // A duplicated row.
        std::fs::write(&s1, format!("{original}{}\n", lines[1])).unwrap();
        let e = merge(&out, &MergeOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("shard 1 of 3") && e.contains("more than once"),
            "{e}"
        );
        // A missing row (and a partial last row).
        let cut: String = lines[..lines.len() - 1]
            .iter()
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&s1, format!("{cut}{}", &lines[lines.len() - 1][..5])).unwrap();
        let e = merge(&out, &MergeOptions::default())
            .unwrap_err()
            .to_string();
        let m = read_manifest(&manifest_path(&s1)).unwrap();
        let lost = &m.items.last().unwrap().path;
        assert!(
            e.contains("shard 1 of 3") && e.contains("neither a result"),
            "{e}"
        );
        assert!(e.contains(lost.as_str()), "{e}");
        // A row of another shard's image.
        let s0 = Shard::new(0, 3).unwrap().output_path(&out);
        let other = std::fs::read_to_string(&s0).unwrap();
        let stranger = other.lines().nth(1).unwrap();
        std::fs::write(&s1, format!("{original}{stranger}\n")).unwrap();
        let e = merge(&out, &MergeOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("shard 1 of 3") && e.contains("not its own"),
            "{e}"
        );
        std::fs::write(&s1, &original).unwrap();
        merge(&out, &MergeOptions::default()).unwrap();
        // A different run.
        let mut other_info = info();
        other_info.classes.push("car".into());
        let rp = run_info_path(&Shard::new(2, 3).unwrap().output_path(&out));
        std::fs::write(&rp, serde_json::to_vec(&other_info).unwrap()).unwrap();
        let e = merge(
            &out,
            &MergeOptions {
                force: true,
                ..Default::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("shard 2 of 3") && e.contains("classes"), "{e}");
        std::fs::write(&rp, serde_json::to_vec(&info()).unwrap()).unwrap();
        // A missing shard, and a stale shard of another count.
        let s2 = Shard::new(2, 3).unwrap().output_path(&out);
        std::fs::rename(&s2, d.path().join("moved")).unwrap();
        let e = merge(
            &out,
            &MergeOptions {
                force: true,
                ..Default::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("shard 2 of 3 is missing"), "{e}");
        std::fs::rename(d.path().join("moved"), &s2).unwrap();
        std::fs::write(Shard::new(0, 2).unwrap().output_path(&out), "x").unwrap();
        let e = merge(
            &out,
            &MergeOptions {
                force: true,
                ..Default::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("different shard counts"), "{e}");
    }
}
