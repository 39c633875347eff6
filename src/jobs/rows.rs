//! Reading label outputs back: the CSV or JSONL that `label`/`predict` write (see
//! [`crate::jobs::writers`]), optionally with a prediction-set column, and the `path,label`
//! decision CSVs that the review page exports. `review` and the exports read rows through here.
//!
//! The prediction set is the optional CSV column `set` (class names joined by
//! [`SET_SEPARATOR`]) or the optional JSONL field `set` (an array of class names).

use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::jobs::writers::UNKNOWN;

/// Joins class names in the CSV `set` column.
pub const SET_SEPARATOR: &str = "|";

/// One row of a label output or decision file.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelRecord {
    /// The image path as written (relative paths are relative to where the run was started).
    pub path: String,
    /// The label, or `unknown`.
    pub label: String,
    /// Probability of the top-1 class (`None` in a decision CSV).
    pub score: Option<f32>,
    /// Top-k classes with probabilities, best first (empty in a decision CSV).
    pub top: Vec<(String, f32)>,
    /// Whether the run abstained (`label` is `unknown`).
    pub abstained: bool,
    /// The prediction set, when the run had one.
    pub set: Option<Vec<String>>,
}

impl LabelRecord {
    /// The label if it is a class (not `unknown`).
    pub fn class(&self) -> Option<&str> {
        (!self.abstained && self.label != UNKNOWN).then_some(self.label.as_str())
    }
}

/// Formats a prediction set for the CSV `set` column.
pub fn format_set(names: &[String]) -> String {
    names.join(SET_SEPARATOR)
}

#[derive(Deserialize)]
struct JsonTop {
    label: String,
    score: f32,
}

#[derive(Deserialize)]
struct JsonRow {
    path: String,
    label: String,
    #[serde(default)]
    score: Option<f32>,
    #[serde(default)]
    top: Vec<JsonTop>,
    #[serde(default)]
    abstained: Option<bool>,
    #[serde(default)]
    set: Option<Vec<String>>,
}

fn input(path: &Path, line: usize, message: impl std::fmt::Display) -> Error {
    Error::CsvRow {
        path: path.to_path_buf(),
        line,
        message: message.to_string(),
    }
}

fn parse_score(path: &Path, line: usize, col: &str, v: &str) -> Result<Option<f32>> {
    if v.trim().is_empty() {
        return Ok(None);
    }
    v.trim()
        .parse::<f32>()
        .map(Some)
        .map_err(|_| input(path, line, format!("column `{col}`: `{v}` is not a number")))
}

/// Reads a label output (`.csv`, `.jsonl`/`.ndjson`) or a `path,label` CSV.
pub fn read_label_rows(path: &Path) -> Result<Vec<LabelRecord>> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("csv") => read_csv(path),
        Some("jsonl") | Some("ndjson") => read_jsonl(path),
        _ => Err(Error::NotALabelFile {
            path: path.to_path_buf(),
        }),
    }
}

fn read_jsonl(path: &Path) -> Result<Vec<LabelRecord>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let r: JsonRow = serde_json::from_str(line).map_err(|e| input(path, i + 1, e))?;
        let abstained = r.abstained.unwrap_or(r.label == UNKNOWN);
        out.push(LabelRecord {
            score: r.score,
            top: r.top.into_iter().map(|t| (t.label, t.score)).collect(),
            abstained,
            path: r.path,
            label: r.label,
            set: r.set,
        });
    }
    Ok(out)
}

fn read_csv(path: &Path) -> Result<Vec<LabelRecord>> {
    let mut rdr = csv::ReaderBuilder::new()
        .flexible(false)
        .from_path(path)
        .map_err(|source| Error::Csv {
            path: path.to_path_buf(),
            source,
        })?;
    let headers = rdr
        .headers()
        .map_err(|e| input(path, 1, e))?
        .iter()
        .map(|h| h.trim().to_string())
        .collect::<Vec<_>>();
    let col = |name: &str| headers.iter().position(|h| h == name);
    let (Some(pc), Some(lc)) = (col("path"), col("label")) else {
        return Err(input(
            path,
            1,
            "the header needs `path` and `label` columns (a cliplabel output or a path,label CSV)",
        ));
    };
    let sc = col("score");
    let pred = col("predicted");
    let set_col = col("set");
    // label2/score2, label3/score3, ... in order.
    let mut extra = Vec::new();
    for i in 2.. {
        match (col(&format!("label{i}")), col(&format!("score{i}"))) {
            (Some(l), Some(s)) => extra.push((l, s, i)),
            _ => break,
        }
    }
    let mut out = Vec::new();
    for (i, rec) in rdr.records().enumerate() {
        let line = i + 2;
        let rec = rec.map_err(|e| input(path, line, e))?;
        let get = |c: usize| rec.get(c).unwrap_or("");
        let p = get(pc).to_string();
        let label = get(lc).trim().to_string();
        if p.trim().is_empty() || label.is_empty() {
            return Err(input(path, line, "empty path or label"));
        }
        let score = match sc {
            Some(c) => parse_score(path, line, "score", get(c))?,
            None => None,
        };
        let mut top = Vec::new();
        if let (Some(pcol), Some(s)) = (pred, score) {
            let predicted = get(pcol).trim();
            if !predicted.is_empty() {
                top.push((predicted.to_string(), s));
            }
        }
        for &(l, s, k) in &extra {
            let name = get(l).trim();
            if name.is_empty() {
                continue;
            }
            let v = parse_score(path, line, &format!("score{k}"), get(s))?
                .ok_or_else(|| input(path, line, format!("`label{k}` without `score{k}`")))?;
            top.push((name.to_string(), v));
        }
        let set = set_col
            .map(|c| get(c).trim())
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.split(SET_SEPARATOR)
                    .map(|x| x.trim().to_string())
                    .collect()
            });
        out.push(LabelRecord {
            abstained: label == UNKNOWN,
            path: p,
            label,
            score,
            top,
            set,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::writers::{LabelRow, LabelWriter};

    fn row(p: &str, label: &str, abstained: bool) -> LabelRow {
        LabelRow {
            path: p.into(),
            label: label.into(),
            score: 0.6,
            top: vec![
                ("cat".into(), 0.6),
                ("dog".into(), 0.3),
                ("fox".into(), 0.1),
            ],
            cosine: Some(0.3),
            abstained,
            set: None,
        }
    }

    #[test]
    fn reads_back_what_the_writer_wrote() {
        for ext in ["csv", "jsonl"] {
            let d = tempfile::tempdir().unwrap();
            let out = d.path().join(format!("o.{ext}"));
            let (mut w, _) = LabelWriter::open(&out, 3, false, false).unwrap();
            w.write_batch(&[row("a,b.png", "cat", false), row("c.png", UNKNOWN, true)])
                .unwrap();
            drop(w);
            let rows = read_label_rows(&out).unwrap();
            assert_eq!(rows.len(), 2, "{ext}");
            assert_eq!(rows[0].path, "a,b.png");
            assert_eq!(rows[0].class(), Some("cat"));
            assert_eq!(rows[0].top.len(), 3);
            assert_eq!(rows[0].top[1].0, "dog");
            assert!((rows[0].top[2].1 - 0.1).abs() < 1e-6);
            assert!(rows[1].abstained && rows[1].class().is_none());
            assert_eq!(rows[1].top[0].0, "cat", "{ext}: predicted class kept");
            assert_eq!(rows[1].score, Some(0.6));
            assert!(rows[0].set.is_none());
        }
    }

    #[test]
    fn optional_set_and_decision_csv() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s.csv");
        std::fs::write(
            &p,
            "path,label,score,predicted,cosine,set\na.png,cat,0.9,cat,,cat|dog\nb.png,unknown,0.2,dog,,\n",
        )
        .unwrap();
        let rows = read_label_rows(&p).unwrap();
        assert_eq!(
            rows[0].set.as_deref(),
            Some(&["cat".to_string(), "dog".into()][..])
        );
        assert!(rows[1].set.is_none() && rows[1].abstained);
        let j = d.path().join("s.jsonl");
        std::fs::write(
            &j,
            "{\"path\":\"a.png\",\"label\":\"cat\",\"score\":0.9,\"top\":[{\"label\":\"cat\",\"score\":0.9}],\"predicted\":\"cat\",\"abstained\":false,\"set\":[\"cat\",\"dog\"]}\n",
        )
        .unwrap();
        assert_eq!(
            read_label_rows(&j).unwrap()[0].set.as_ref().unwrap().len(),
            2
        );
        let dec = d.path().join("decisions.csv");
        std::fs::write(&dec, "path,label\nx.png,dog\n").unwrap();
        let rows = read_label_rows(&dec).unwrap();
        assert_eq!(rows[0].class(), Some("dog"));
        assert!(rows[0].score.is_none() && rows[0].top.is_empty());
    }

    #[test]
    fn errors_name_file_and_line() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("bad.csv");
        std::fs::write(&p, "path,label,score\na.png,cat,high\n").unwrap();
        let err = read_label_rows(&p).unwrap_err();
        match &err {
            Error::CsvRow { path, line, .. } => assert_eq!((path, *line), (&p, 2)),
            other => panic!("{other:?}"),
        }
        let e = err.to_string();
        assert!(e.contains("bad.csv:2") && e.contains("not a number"), "{e}");
        std::fs::write(&p, "file,class\n").unwrap();
        let e = read_label_rows(&p).unwrap_err().to_string();
        assert!(e.contains("`path` and `label`"), "{e}");
        let txt = d.path().join("labels.txt");
        assert!(matches!(
            read_label_rows(&txt),
            Err(Error::NotALabelFile { path }) if path == txt
        ));
        let j = d.path().join("bad.jsonl");
        std::fs::write(&j, "{}\n").unwrap();
        assert!(read_label_rows(&j)
            .unwrap_err()
            .to_string()
            .contains("bad.jsonl:1"));
    }
}
