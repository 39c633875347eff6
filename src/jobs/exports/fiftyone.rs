//! FiftyOne's `FiftyOneImageClassificationDataset`: `OUT/data/<uuid>.<ext>` and
//! `OUT/labels.json`, per
//! <https://docs.voxel51.com/user_guide/export_datasets.html#fiftyoneimageclassificationdataset>.
//!
//! `labels.json` is `{"classes": [...], "labels": {"<uuid>": target}}` where, because `classes`
//! is given, a target is a class index; with a score it takes the documented confidence form
//! `{"label": index, "confidence": score}`; abstained rows have target `null` (the documented
//! value for unlabelled images). `<uuid>` is the image's file stem, made unique with a numeric
//! suffix. Images are hard-linked into `data/` when possible, else copied.

use std::collections::HashSet;
use std::path::Path;

use serde_json::{json, Map, Value};

use super::{resolve, ExportOptions, ExportSummary};
use crate::error::{Error, Result};
use crate::jobs::rows::LabelRecord;
use crate::jobs::writers::Failure;
use crate::util::atomic::write_atomic;

fn place(src: &Path, dst: &Path) -> std::result::Result<(), String> {
    if dst.exists() {
        std::fs::remove_file(dst).map_err(|e| e.to_string())?;
    }
    if std::fs::hard_link(src, dst).is_ok() {
        return Ok(());
    }
    std::fs::copy(src, dst)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Writes `OUT/data/` and `OUT/labels.json`.
pub fn write(
    rows: &[LabelRecord],
    classes: &[String],
    out: &Path,
    opts: &ExportOptions,
) -> Result<ExportSummary> {
    let data = out.join("data");
    std::fs::create_dir_all(&data).map_err(|e| Error::io(&data, e))?;
    let mut summary = ExportSummary::default();
    let mut used: HashSet<String> = HashSet::new();
    let mut labels = Map::new();
    for r in rows {
        let src = resolve(&opts.base_dir, &r.path);
        let stem = src
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "image".into());
        let ext = src
            .extension()
            .map(|e| format!(".{}", e.to_string_lossy()))
            .unwrap_or_default();
        let mut uuid = stem.clone();
        let mut k = 2;
        while used.contains(&uuid) {
            uuid = format!("{stem}-{k}");
            k += 1;
        }
        if let Err(error) = place(&src, &data.join(format!("{uuid}{ext}"))) {
            summary.failed.push(Failure {
                path: r.path.clone(),
                error,
            });
            continue;
        }
        used.insert(uuid.clone());
        let target = match r.class() {
            Some(label) => {
                let idx = classes.iter().position(|c| c == label).unwrap_or(0);
                match r.score {
                    Some(s) => json!({"label": idx, "confidence": s}),
                    None => json!(idx),
                }
            }
            None => {
                summary.unlabelled += 1;
                Value::Null
            }
        };
        labels.insert(uuid, target);
        summary.exported += 1;
    }
    let path = out.join("labels.json");
    let doc = json!({"classes": classes, "labels": labels});
    let bytes = serde_json::to_vec_pretty(&doc).map_err(|source| Error::Serialize {
        path: path.clone(),
        source,
    })?;
    write_atomic(&path, &bytes).map_err(|e| Error::io(&path, e))?;
    summary.files.push(path);
    summary.files.push(data);
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::super::{export, test_rows::rows, ExportFormat};
    use super::*;

    #[test]
    fn labels_json_and_data_follow_the_documented_layout() {
        let d = tempfile::tempdir().unwrap();
        let mut rs = rows();
        // The same file name twice gets two uuids; decisions (no score) are plain indices.
        let mut dup = rs[1].clone();
        dup.score = None;
        rs.push(dup);
        let s = export(
            &rs,
            ExportFormat::FiftyOne,
            d.path(),
            &ExportOptions::default(),
        )
        .unwrap();
        assert_eq!((s.exported, s.unlabelled, s.failed.len()), (4, 1, 0));
        let v: Value =
            serde_json::from_slice(&std::fs::read(d.path().join("labels.json")).unwrap()).unwrap();
        let classes: Vec<String> = serde_json::from_value(v["classes"].clone()).unwrap();
        assert_eq!(classes, ["black circle", "yellow triangle"]);
        let labels = v["labels"].as_object().unwrap();
        assert_eq!(labels.len(), 4);
        let t = &labels["img_000"];
        assert_eq!(
            classes[t["label"].as_u64().unwrap() as usize],
            "yellow triangle"
        );
        assert!((t["confidence"].as_f64().unwrap() - 0.91).abs() < 1e-6);
        assert_eq!(labels["img_003"], Value::Null);
        assert_eq!(labels["img_002-2"], json!(0));
        for uuid in labels.keys() {
            let n = std::fs::read_dir(d.path().join("data"))
                .unwrap()
                .filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .path()
                        .file_stem()
                        .unwrap()
                        .to_string_lossy()
                        == *uuid
                })
                .count();
            assert_eq!(n, 1, "data/{uuid}.*");
        }
    }
}
