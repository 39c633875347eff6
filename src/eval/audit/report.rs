//! The audit's files: `report.md` (counts and the top findings with thumbnails linked
//! relative to the report) and one CSV per finding type. Every file is written atomically, rows
//! in a fixed order and numbers at fixed precision, so the same audit gives the same bytes.

use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{AuditResult, Split};
use crate::error::{Error, Result};
use crate::util::atomic::write_atomic;

/// Rows of each finding type shown in `report.md` (the CSVs hold all of them).
pub const TOP: usize = 20;

/// Counts of an audit and the files written.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditSummary {
    /// Audited train images.
    pub train_images: usize,
    /// Audited test images.
    pub test_images: usize,
    /// Images that could not be audited.
    pub failed: usize,
    /// Likely mislabels.
    pub mislabels: usize,
    /// Groups of byte-identical files.
    pub exact_duplicate_groups: usize,
    /// Near-duplicate pairs.
    pub near_duplicate_pairs: usize,
    /// Near-duplicate groups.
    pub near_duplicate_groups: usize,
    /// Train/test leaking pairs.
    pub leakage: usize,
    /// Outliers.
    pub outliers: usize,
    /// Files written, in order.
    pub files: Vec<PathBuf>,
}

impl AuditResult {
    /// The counts of this result (`files` empty).
    pub fn summary(&self) -> AuditSummary {
        AuditSummary {
            train_images: self.n_train,
            test_images: self.paths.len() - self.n_train,
            failed: self.failures.len(),
            mislabels: self.mislabels.issues.len(),
            exact_duplicate_groups: self.exact_groups.len(),
            near_duplicate_pairs: self.near_pairs.len(),
            near_duplicate_groups: self.near_groups.len(),
            leakage: self.leakage.len(),
            outliers: self.outliers.len(),
            files: Vec::new(),
        }
    }
}

fn split_name(s: Split) -> &'static str {
    match s {
        Split::Train => "train",
        Split::Test => "test",
    }
}

fn csv_bytes(header: &[&str], rows: Vec<Vec<String>>, path: &Path) -> Result<Vec<u8>> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let err = |source: csv::Error| Error::CsvWrite {
        path: path.to_path_buf(),
        source,
    };
    w.write_record(header).map_err(err)?;
    for r in rows {
        w.write_record(&r).map_err(err)?;
    }
    w.into_inner().map_err(|e| Error::io(path, e.into_error()))
}

fn absolute(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    })
}

/// `target` relative to the directory `base` (both made absolute), with `/` separators.
fn relative_link(base: &Path, target: &Path) -> String {
    let (b, t) = (absolute(base), absolute(target));
    let bc: Vec<Component> = b.components().collect();
    let tc: Vec<Component> = t.components().collect();
    let common = bc.iter().zip(&tc).take_while(|(x, y)| x == y).count();
    let mut parts: Vec<String> = vec!["..".into(); bc.len() - common];
    parts.extend(
        tc[common..]
            .iter()
            .map(|c| c.as_os_str().to_string_lossy().into_owned()),
    );
    parts.join("/")
}

/// Percent-encodes what would break a link target in Markdown/HTML.
fn url_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            ' ' | '"' | '<' | '>' | '#' | '%' | '?' | '(' | ')' | '\'' => {
                let mut b = [0u8; 4];
                for byte in ch.encode_utf8(&mut b).bytes() {
                    out.push_str(&format!("%{byte:02X}"));
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// Text safe in a Markdown table cell.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// Writes `report.md` and the CSVs into `dir` (created if missing); returns the counts.
///
/// Files: `mislabels.csv` (`path,given,suggested,score`, most suspicious first),
/// `mislabels.review.csv` (the same images as label rows for `cliplabel review`),
/// `noise.csv` (per class), `leakage.csv`, `near_duplicates.csv`, `exact_duplicates.csv`,
/// `outliers.csv`, `failures.csv`, `report.md`.
pub fn write_report(dir: &Path, r: &AuditResult) -> Result<AuditSummary> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let p = |i: usize| crate::util::pathtext::path_text(&r.paths[i]);
    let class = |c: usize| r.classes[c].clone();
    let mut files = Vec::new();
    let mut put = |name: &str, header: &[&str], rows: Vec<Vec<String>>| -> Result<()> {
        let path = dir.join(name);
        let bytes = csv_bytes(header, rows, &path)?;
        write_atomic(&path, &bytes).map_err(|e| Error::io(&path, e))?;
        files.push(path);
        Ok(())
    };

    put(
        "mislabels.csv",
        &["path", "given", "suggested", "score"],
        r.mislabels
            .issues
            .iter()
            .map(|i| {
                vec![
                    p(i.index),
                    class(i.given),
                    class(i.suggested),
                    format!("{:.6}", i.score),
                ]
            })
            .collect(),
    )?;
    // The same findings as label rows (suggested class first, given class second) for the
    // review page, where each can be accepted, corrected or marked "not any class".
    let k = r.classes.len();
    let prob = |i: usize, c: usize| r.probs.get(i * k + c).copied().unwrap_or(f32::NAN);
    put(
        "mislabels.review.csv",
        &["path", "label", "score", "label2", "score2", "predicted"],
        r.mislabels
            .issues
            .iter()
            .map(|i| {
                vec![
                    p(i.index),
                    class(i.suggested),
                    format!("{:.6}", prob(i.index, i.suggested)),
                    class(i.given),
                    format!("{:.6}", prob(i.index, i.given)),
                    class(i.suggested),
                ]
            })
            .collect(),
    )?;
    let flagged_per_class = {
        let mut f = vec![0usize; r.classes.len()];
        for i in &r.mislabels.issues {
            f[i.given] += 1;
        }
        f
    };
    put(
        "noise.csv",
        &[
            "class",
            "images",
            "threshold",
            "estimated_noise_rate",
            "flagged",
        ],
        (0..r.classes.len())
            .map(|c| {
                vec![
                    class(c),
                    r.mislabels.class_counts[c].to_string(),
                    format!("{:.6}", r.mislabels.thresholds[c]),
                    format!("{:.6}", r.mislabels.noise_rate[c]),
                    flagged_per_class[c].to_string(),
                ]
            })
            .collect(),
    )?;
    put(
        "leakage.csv",
        &["train_path", "test_path", "kind", "cosine"],
        r.leakage
            .iter()
            .map(|l| {
                vec![
                    p(l.train),
                    p(l.test),
                    if l.exact { "exact" } else { "near" }.into(),
                    format!("{:.6}", l.cosine),
                ]
            })
            .collect(),
    )?;
    let group_of = {
        let mut g = vec![usize::MAX; r.paths.len()];
        for (gi, members) in r.near_groups.iter().enumerate() {
            for &m in members {
                g[m] = gi + 1;
            }
        }
        g
    };
    let mut pair_rows: Vec<(usize, usize, usize, f32)> = r
        .near_pairs
        .iter()
        .map(|q| (group_of[q.a], q.a, q.b, q.cosine))
        .collect();
    pair_rows.sort_by_key(|x| (x.0, x.1, x.2));
    put(
        "near_duplicates.csv",
        &["group", "path_a", "path_b", "split_a", "split_b", "cosine"],
        pair_rows
            .iter()
            .map(|&(g, a, b, c)| {
                vec![
                    g.to_string(),
                    p(a),
                    p(b),
                    split_name(r.splits[a]).into(),
                    split_name(r.splits[b]).into(),
                    format!("{c:.6}"),
                ]
            })
            .collect(),
    )?;
    put(
        "exact_duplicates.csv",
        &["group", "path", "split"],
        r.exact_groups
            .iter()
            .enumerate()
            .flat_map(|(g, m)| m.iter().map(move |&i| (g + 1, i)).collect::<Vec<_>>())
            .map(|(g, i)| vec![g.to_string(), p(i), split_name(r.splits[i]).into()])
            .collect(),
    )?;
    put(
        "outliers.csv",
        &[
            "path",
            "given",
            "nearest_class",
            "centroid_cosine",
            "knn_density",
            "robust_z",
        ],
        r.outliers
            .iter()
            .map(|o| {
                vec![
                    p(o.index),
                    class(r.labels[o.index]),
                    class(o.nearest_class),
                    format!("{:.6}", o.centroid_cosine),
                    format!("{:.6}", o.knn_density),
                    format!("{:.3}", o.robust_z),
                ]
            })
            .collect(),
    )?;
    put(
        "failures.csv",
        &["path", "error"],
        r.failures
            .iter()
            .map(|f| vec![f.path.clone(), f.error.clone()])
            .collect(),
    )?;

    let mut summary = r.summary();
    let md_path = dir.join("report.md");
    let md = markdown(dir, r, &summary);
    write_atomic(&md_path, md.as_bytes()).map_err(|e| Error::io(&md_path, e))?;
    files.push(md_path);
    summary.files = files;
    Ok(summary)
}

fn markdown(dir: &Path, r: &AuditResult, s: &AuditSummary) -> String {
    use std::fmt::Write;
    let thumb = |i: usize| {
        format!(
            "<img src=\"{}\" width=\"64\">",
            url_escape(&relative_link(dir, &r.paths[i]))
        )
    };
    let name = |i: usize| cell(&r.paths[i].display().to_string());
    let o = &r.options;
    let mut m = String::new();
    let _ = writeln!(m, "# Dataset audit\n");
    let _ = writeln!(
        m,
        "{} train images, {} test images, {} classes; {} could not be audited (failures.csv).\n",
        s.train_images,
        s.test_images,
        r.classes.len(),
        s.failed
    );
    let _ = writeln!(m, "| finding | count | file |\n|---|---:|---|");
    let _ = writeln!(
        m,
        "| train/test leakage (pairs) | {} | leakage.csv |",
        s.leakage
    );
    let _ = writeln!(
        m,
        "| likely mislabels | {} | mislabels.csv, noise.csv |",
        s.mislabels
    );
    let _ = writeln!(
        m,
        "| exact duplicate groups | {} | exact_duplicates.csv |",
        s.exact_duplicate_groups
    );
    let _ = writeln!(
        m,
        "| near-duplicate pairs (groups) | {} ({}) | near_duplicates.csv |",
        s.near_duplicate_pairs, s.near_duplicate_groups
    );
    let _ = writeln!(m, "| outliers | {} | outliers.csv |\n", s.outliers);
    let _ = writeln!(
        m,
        "Method: {}-fold out-of-fold probabilities of the linear head (C = {:.3e} by out-of-fold log-loss {:.4}; accuracy {:.1}% against the given labels){}; confident learning ranked by {}; near-duplicates at cosine >= {}; outliers at robust z < -{} (k = {}).\n",
        o.folds,
        r.cv_c,
        r.cv_log_loss,
        r.cv_accuracy * 100.0,
        if r.zero_shot_blended {
            format!(", blended with zero-shot at weight {}", o.zero_shot_weight)
        } else {
            String::new()
        },
        match o.rank_by {
            super::RankBy::SelfConfidence => "self-confidence",
            super::RankBy::NormalizedMargin => "normalised margin",
        },
        o.duplicate_threshold,
        o.outlier_cutoff,
        o.k
    );

    let _ = writeln!(m, "## Train/test leakage\n");
    if r.leakage.is_empty() {
        let _ = writeln!(m, "None found.\n");
    } else {
        let _ = writeln!(
            m,
            "| train | | test | | kind | cosine |\n|---|---|---|---|---|---:|"
        );
        for l in r.leakage.iter().take(TOP) {
            let _ = writeln!(
                m,
                "| {} | {} | {} | {} | {} | {:.4} |",
                thumb(l.train),
                name(l.train),
                thumb(l.test),
                name(l.test),
                if l.exact { "exact" } else { "near" },
                l.cosine
            );
        }
        let _ = writeln!(m);
    }

    let _ = writeln!(m, "## Likely mislabels\n");
    if r.mislabels.issues.is_empty() {
        let _ = writeln!(m, "None found.\n");
    } else {
        let _ = writeln!(
            m,
            "| | path | given | suggested | score |\n|---|---|---|---|---:|"
        );
        for i in r.mislabels.issues.iter().take(TOP) {
            let _ = writeln!(
                m,
                "| {} | {} | {} | {} | {:.4} |",
                thumb(i.index),
                name(i.index),
                cell(&r.classes[i.given]),
                cell(&r.classes[i.suggested]),
                i.score
            );
        }
        let _ = writeln!(m);
    }
    let mut noisy: Vec<usize> = (0..r.classes.len())
        .filter(|&c| r.mislabels.noise_rate[c] > 0.0)
        .collect();
    noisy.sort_by(|&a, &b| {
        r.mislabels.noise_rate[b]
            .total_cmp(&r.mislabels.noise_rate[a])
            .then(a.cmp(&b))
    });
    if !noisy.is_empty() {
        let _ = writeln!(
            m,
            "Estimated noise rate per class (classes above 0; all in noise.csv):\n\n| class | images | estimated noise rate |\n|---|---:|---:|"
        );
        for c in noisy.into_iter().take(TOP) {
            let _ = writeln!(
                m,
                "| {} | {} | {:.1}% |",
                cell(&r.classes[c]),
                r.mislabels.class_counts[c],
                r.mislabels.noise_rate[c] * 100.0
            );
        }
        let _ = writeln!(m);
    }

    let _ = writeln!(m, "## Exact duplicates\n");
    if r.exact_groups.is_empty() {
        let _ = writeln!(m, "None found.\n");
    } else {
        for (g, members) in r.exact_groups.iter().enumerate().take(TOP) {
            let list: Vec<String> = members
                .iter()
                .map(|&i| format!("{} ({})", name(i), split_name(r.splits[i])))
                .collect();
            let _ = writeln!(m, "{}. {} {}", g + 1, thumb(members[0]), list.join(", "));
        }
        let _ = writeln!(m);
    }

    let _ = writeln!(m, "## Near-duplicate groups\n");
    if r.near_groups.is_empty() {
        let _ = writeln!(m, "None found.\n");
    } else {
        for (g, members) in r.near_groups.iter().enumerate().take(TOP) {
            let thumbs: Vec<String> = members.iter().take(6).map(|&i| thumb(i)).collect();
            let list: Vec<String> = members
                .iter()
                .map(|&i| format!("{} ({})", name(i), split_name(r.splits[i])))
                .collect();
            let _ = writeln!(m, "{}. {} {}", g + 1, thumbs.join(" "), list.join(", "));
        }
        let _ = writeln!(m);
    }

    let _ = writeln!(m, "## Outliers\n");
    if r.outliers.is_empty() {
        let _ = writeln!(m, "None found.\n");
    } else {
        let _ = writeln!(
            m,
            "| | path | given | nearest class | centroid cosine | k-NN density |\n|---|---|---|---|---:|---:|"
        );
        for o in r.outliers.iter().take(TOP) {
            let _ = writeln!(
                m,
                "| {} | {} | {} | {} | {:.4} | {:.4} |",
                thumb(o.index),
                name(o.index),
                cell(&r.classes[r.labels[o.index]]),
                cell(&r.classes[o.nearest_class]),
                o.centroid_cosine,
                o.knn_density
            );
        }
        let _ = writeln!(m);
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_are_relative_and_escaped() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("audit");
        let img = d.path().join("data/red circle/0001.png");
        std::fs::create_dir_all(&out).unwrap();
        assert_eq!(relative_link(&out, &img), "../data/red circle/0001.png");
        assert_eq!(
            url_escape("../red circle/a#1.png"),
            "../red%20circle/a%231.png"
        );
    }
}
