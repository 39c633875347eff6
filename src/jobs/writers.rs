//! Label output files (CSV or JSONL): appended and flushed per batch, resumable after a crash,
//! and the list of failed images beside them.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::util::atomic::write_atomic;

/// Why an existing output cannot be continued with `--resume`. Each names the output (and, for
/// a run-info mismatch, the run-info file beside it).
#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    /// The output is not UTF-8 (`byte`: where the first bad byte is).
    #[error("{path}: not UTF-8 at byte {byte}: not a cliplabel output?")]
    NotUtf8 { path: PathBuf, byte: usize },
    /// A CSV row of the output cannot be read.
    #[error("{path}: cannot resume: unreadable CSV row: {source}")]
    CsvRow {
        path: PathBuf,
        #[source]
        source: csv::Error,
    },
    /// The CSV header is not the one this run would write.
    #[error("{path}: cannot resume: header is `{found}`, expected `{expected}` (a different --top-k or --calibration, or not a cliplabel output)")]
    Header {
        path: PathBuf,
        found: String,
        expected: String,
    },
    /// A line (1-based) of a JSON lines output cannot be read.
    #[error("{path}: cannot resume: line {line}: {source}")]
    JsonLine {
        path: PathBuf,
        line: usize,
        #[source]
        source: serde_json::Error,
    },
    /// The run-info file that ties the output to its run is missing.
    #[error("{path}: cannot resume: {} is missing, so nothing shows that this output was written by the same model, classes, prompts and --top-k; restore it, or use --force to start over", .run_info.display())]
    NoRunInfo { path: PathBuf, run_info: PathBuf },
    /// The output was written by a different run.
    #[error("{path}: cannot resume: it was written by a different run (model, classes, prompts or --top-k differ; see {}); use --force to start over", .run_info.display())]
    DifferentRun { path: PathBuf, run_info: PathBuf },
}

/// One image that could not be processed.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Failure {
    /// The image path as given or found.
    pub path: String,
    /// Why it failed.
    pub error: String,
}

/// The label written for abstentions.
pub const UNKNOWN: &str = "unknown";

/// Output format, chosen by the file extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Comma-separated values with a header row.
    Csv,
    /// One JSON object per line.
    Jsonl,
}

impl Format {
    /// The format for `path`'s extension (`.csv`, `.jsonl`/`.ndjson`).
    pub fn from_path(path: &Path) -> Result<Self> {
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("csv") => Ok(Format::Csv),
            Some("jsonl") | Some("ndjson") => Ok(Format::Jsonl),
            _ => Err(Error::OutputFormat {
                path: path.to_path_buf(),
            }),
        }
    }
}

/// One labelled image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabelRow {
    /// The image path.
    pub path: String,
    /// The top-1 class, or `unknown` when the run abstained.
    pub label: String,
    /// Probability of the top-1 class.
    pub score: f32,
    /// The top-k classes with their probabilities, best first (the first is the top-1 class).
    pub top: Vec<(String, f32)>,
    /// Cosine similarity of the image with the top-1 class's text embedding (zero-shot only).
    pub cosine: Option<f32>,
    /// Whether the label was replaced by `unknown`.
    pub abstained: bool,
    /// The calibrated prediction set (class names, most probable first), when the run was
    /// given a calibration with sets: the CSV column `set` (names joined by `|`) or the JSONL
    /// array `set`.
    pub set: Option<Vec<String>>,
}

/// The CSV header for `top_k` labels.
pub fn csv_header(top_k: usize) -> Vec<String> {
    csv_header_with(top_k, false)
}

/// The CSV header for `top_k` labels, with a final `set` column when `with_set`.
pub fn csv_header_with(top_k: usize, with_set: bool) -> Vec<String> {
    let mut h = vec!["path".to_string(), "label".into(), "score".into()];
    for i in 2..=top_k {
        h.push(format!("label{i}"));
        h.push(format!("score{i}"));
    }
    h.extend(["predicted".to_string(), "cosine".into()]);
    if with_set {
        h.push("set".into());
    }
    h
}

fn csv_record(row: &LabelRow, top_k: usize, with_set: bool) -> Vec<String> {
    let mut r = vec![
        row.path.clone(),
        row.label.clone(),
        format!("{:.6}", row.score),
    ];
    for i in 1..top_k {
        match row.top.get(i) {
            Some((l, s)) => {
                r.push(l.clone());
                r.push(format!("{s:.6}"));
            }
            None => {
                r.push(String::new());
                r.push(String::new());
            }
        }
    }
    r.push(row.top.first().map(|t| t.0.clone()).unwrap_or_default());
    r.push(row.cosine.map(|c| format!("{c:.6}")).unwrap_or_default());
    if with_set {
        r.push(
            row.set
                .as_deref()
                .map(crate::jobs::rows::format_set)
                .unwrap_or_default(),
        );
    }
    r
}

#[derive(Serialize, Deserialize)]
struct JsonRow {
    path: String,
    label: String,
    score: f32,
    top: Vec<JsonTop>,
    predicted: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    cosine: Option<f32>,
    abstained: bool,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    set: Option<Vec<String>>,
}

#[derive(Serialize, Deserialize)]
struct JsonTop {
    label: String,
    score: f32,
}

/// An append-only label file that is valid after every batch.
pub struct LabelWriter {
    file: File,
    path: PathBuf,
    format: Format,
    top_k: usize,
    with_set: bool,
}

/// Reads the paths already labelled in an existing output, dropping a final partial row
/// (a run killed mid-write). Returns the paths and the length of the valid prefix.
fn read_existing(
    path: &Path,
    format: Format,
    top_k: usize,
    with_set: bool,
) -> Result<(HashSet<String>, u64, bool)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let valid = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let text = std::str::from_utf8(&bytes[..valid]).map_err(|e| ResumeError::NotUtf8 {
        path: path.to_path_buf(),
        byte: e.valid_up_to(),
    })?;
    let mut done = HashSet::new();
    let mut has_header = false;
    match format {
        Format::Csv => {
            let mut rdr = csv::ReaderBuilder::new()
                .has_headers(false)
                .flexible(true)
                .from_reader(text.as_bytes());
            for (i, rec) in rdr.records().enumerate() {
                let rec = rec.map_err(|source| ResumeError::CsvRow {
                    path: path.to_path_buf(),
                    source,
                })?;
                if i == 0 {
                    let want = csv_header_with(top_k, with_set);
                    if rec.iter().ne(want.iter().map(String::as_str)) {
                        return Err(ResumeError::Header {
                            path: path.to_path_buf(),
                            found: rec.iter().collect::<Vec<_>>().join(","),
                            expected: want.join(","),
                        }
                        .into());
                    }
                    has_header = true;
                    continue;
                }
                if let Some(p) = rec.get(0) {
                    done.insert(p.to_string());
                }
            }
        }
        Format::Jsonl => {
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let r: JsonRow =
                    serde_json::from_str(line).map_err(|source| ResumeError::JsonLine {
                        path: path.to_path_buf(),
                        line: i + 1,
                        source,
                    })?;
                done.insert(r.path);
            }
        }
    }
    Ok((done, valid as u64, has_header))
}

impl LabelWriter {
    /// Opens `path` for a run. Without `resume`, an existing file is an error unless `force`
    /// (which starts it afresh). With `resume`, the rows already present are returned and a
    /// partial last row is cut off.
    pub fn open(
        path: &Path,
        top_k: usize,
        resume: bool,
        force: bool,
    ) -> Result<(Self, HashSet<String>)> {
        Self::open_with_set(path, top_k, resume, force, false)
    }

    /// [`LabelWriter::open`], with a prediction-set column (CSV `set`) when `with_set`.
    pub fn open_with_set(
        path: &Path,
        top_k: usize,
        resume: bool,
        force: bool,
        with_set: bool,
    ) -> Result<(Self, HashSet<String>)> {
        let format = Format::from_path(path)?;
        let exists = path.exists();
        if exists && !resume && !force {
            return Err(Error::OutputExists {
                path: path.to_path_buf(),
                remedy: crate::error::Remedy::ResumeOrForce,
            });
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.is_dir() {
                return Err(Error::OutputDirMissing {
                    path: path.to_path_buf(),
                    dir: dir.to_path_buf(),
                });
            }
        }
        let (done, valid, has_header) = if exists && resume {
            read_existing(path, format, top_k, with_set)?
        } else {
            (HashSet::new(), 0, false)
        };
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .read(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        file.set_len(valid).map_err(|e| Error::io(path, e))?;
        file.seek(SeekFrom::End(0))
            .map_err(|e| Error::io(path, e))?;
        let mut w = LabelWriter {
            file,
            path: path.to_path_buf(),
            format,
            top_k,
            with_set,
        };
        if format == Format::Csv && !has_header {
            let mut buf = csv::Writer::from_writer(Vec::new());
            buf.write_record(csv_header_with(top_k, with_set))
                .map_err(|e| w.csv_err(e))?;
            let bytes = buf.into_inner().map_err(|e| w.buf_err(e))?;
            w.append(&bytes)?;
        }
        Ok((w, done))
    }

    fn csv_err(&self, source: csv::Error) -> Error {
        Error::CsvWrite {
            path: self.path.clone(),
            source,
        }
    }

    fn buf_err(&self, e: csv::IntoInnerError<csv::Writer<Vec<u8>>>) -> Error {
        Error::io(&self.path, e.into_error())
    }

    fn append(&mut self, bytes: &[u8]) -> Result<()> {
        self.file
            .write_all(bytes)
            .map_err(|e| Error::io(&self.path, e))?;
        self.file.flush().map_err(|e| Error::io(&self.path, e))?;
        self.file.sync_data().map_err(|e| Error::io(&self.path, e))
    }

    /// Appends rows and flushes them to disk.
    pub fn write_batch(&mut self, rows: &[LabelRow]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let bytes = match self.format {
            Format::Csv => {
                let mut buf = csv::Writer::from_writer(Vec::new());
                for r in rows {
                    buf.write_record(csv_record(r, self.top_k, self.with_set))
                        .map_err(|e| self.csv_err(e))?;
                }
                buf.into_inner().map_err(|e| self.buf_err(e))?
            }
            Format::Jsonl => {
                let mut buf = Vec::new();
                for r in rows {
                    let j = JsonRow {
                        path: r.path.clone(),
                        label: r.label.clone(),
                        score: r.score,
                        top: r
                            .top
                            .iter()
                            .map(|(l, s)| JsonTop {
                                label: l.clone(),
                                score: *s,
                            })
                            .collect(),
                        predicted: r.top.first().map(|t| t.0.clone()).unwrap_or_default(),
                        cosine: r.cosine,
                        abstained: r.abstained,
                        set: if self.with_set { r.set.clone() } else { None },
                    };
                    serde_json::to_writer(&mut buf, &j).map_err(|source| Error::Serialize {
                        path: self.path.clone(),
                        source,
                    })?;
                    buf.push(b'\n');
                }
                buf
            }
        };
        self.append(&bytes)
    }
}

/// The list of failed images beside an output: `OUT.failed.jsonl`.
pub fn failed_path(out: &Path) -> PathBuf {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    out.with_file_name(format!("{name}.failed.jsonl"))
}

/// Failures as JSON lines, the format of every `*.failed.jsonl` list.
fn failures_jsonl(failures: &[Failure]) -> Vec<u8> {
    let mut buf = Vec::new();
    for f in failures {
        // Two strings always serialise.
        buf.extend(serde_json::to_vec(f).unwrap_or_default());
        buf.push(b'\n');
    }
    buf
}

/// Writes the complete failure list of `out` (`OUT.failed.jsonl`) atomically, or removes an old
/// one when there are no failures: for outputs written in one go (a head, a merged run).
pub fn write_failure_list(out: &Path, failures: &[Failure]) -> Result<()> {
    write_failures_file(&failed_path(out), failures)
}

/// Writes `failures` as JSON lines to `path` atomically, or removes an old `path` when there are
/// none.
pub fn write_failures_file(path: &Path, failures: &[Failure]) -> Result<()> {
    let path = path.to_path_buf();
    if failures.is_empty() {
        if path.exists() {
            std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
        }
        return Ok(());
    }
    write_atomic(&path, &failures_jsonl(failures)).map_err(|e| Error::io(&path, e))
}

/// An append-only JSONL list of failures, started afresh for each run (failed images are retried
/// on `--resume`, so only this run's failures are listed).
pub struct FailedWriter {
    file: Option<File>,
    path: PathBuf,
    count: usize,
}

impl FailedWriter {
    /// Prepares the failure list for `out`; the file is created at the first failure, and an
    /// old one is removed.
    pub fn new(out: &Path) -> Result<Self> {
        let path = failed_path(out);
        if path.exists() {
            std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
        }
        Ok(FailedWriter {
            file: None,
            path,
            count: 0,
        })
    }

    /// Appends failures and flushes them.
    pub fn write(&mut self, failures: &[Failure]) -> Result<()> {
        if failures.is_empty() {
            return Ok(());
        }
        if self.file.is_none() {
            self.file = Some(File::create(&self.path).map_err(|e| Error::io(&self.path, e))?);
        }
        let buf = failures_jsonl(failures);
        if let Some(file) = self.file.as_mut() {
            file.write_all(&buf).map_err(|e| Error::io(&self.path, e))?;
            file.flush().map_err(|e| Error::io(&self.path, e))?;
        }
        self.count += failures.len();
        Ok(())
    }

    /// How many failures were written.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Where the failures go.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(p: &str) -> LabelRow {
        LabelRow {
            path: p.into(),
            label: "cat".into(),
            score: 0.9,
            top: vec![("cat".into(), 0.9), ("dog".into(), 0.1)],
            cosine: Some(0.3),
            abstained: false,
            set: None,
        }
    }

    #[test]
    fn resume_drops_partial_row_and_keeps_complete_ones() {
        for ext in ["csv", "jsonl"] {
            let d = tempfile::tempdir().unwrap();
            let out = d.path().join(format!("o.{ext}"));
            let (mut w, done) = LabelWriter::open(&out, 2, false, false).unwrap();
            assert!(done.is_empty());
            w.write_batch(&[row("a,b.png"), row("c.png")]).unwrap();
            drop(w);
            // Simulate a crash mid-row.
            let mut f = OpenOptions::new().append(true).open(&out).unwrap();
            f.write_all(b"d.png,ca").unwrap();
            drop(f);
            assert!(
                matches!(
                    LabelWriter::open(&out, 2, false, false),
                    Err(Error::OutputExists { ref path, remedy: crate::error::Remedy::ResumeOrForce }) if *path == out
                ),
                "exists without --resume"
            );
            let (mut w, done) = LabelWriter::open(&out, 2, true, false).unwrap();
            assert_eq!(
                done,
                HashSet::from(["a,b.png".to_string(), "c.png".to_string()])
            );
            w.write_batch(&[row("d.png")]).unwrap();
            drop(w);
            let (_, done) = LabelWriter::open(&out, 2, true, false).unwrap();
            assert_eq!(done.len(), 3, "{ext}");
            let other_k = LabelWriter::open(&out, 3, true, false);
            if ext == "csv" {
                match other_k {
                    Err(Error::Resume(ResumeError::Header {
                        path,
                        found,
                        expected,
                    })) => {
                        assert_eq!(path, out);
                        assert_eq!(found, "path,label,score,label2,score2,predicted,cosine");
                        assert!(expected.contains("label3,score3"), "{expected}");
                    }
                    other => panic!("{:?}", other.err()),
                }
            }
        }
    }
}
