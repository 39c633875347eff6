//! `--format labelstudio|cvat|fiftyone`: label rows (or review decisions) in the formats of the
//! annotation tools people already use, each following the tool's documented import format:
//!
//! - [`labelstudio`]: Label Studio task JSON with `predictions` (or `annotations` for reviewed
//!   decisions) and the matching labelling config
//!   (<https://labelstud.io/guide/predictions>, <https://labelstud.io/guide/tasks>,
//!   <https://labelstud.io/tags/choices>).
//! - [`cvat`]: "CVAT for images 1.1" XML with one `<tag>` per image
//!   (<https://docs.cvat.ai/docs/other/xml_format/>).
//! - [`fiftyone`]: `FiftyOneImageClassificationDataset`, `data/` + `labels.json`
//!   (<https://docs.voxel51.com/user_guide/export_datasets.html#fiftyoneimageclassificationdataset>).
//!
//! Every file is written atomically. Rows labelled `unknown` are exported unlabelled (no
//! prediction, no tag, a `null` target), so no tool shows an abstention as a label. An image
//! that cannot be read where the format needs it (CVAT's width/height, FiftyOne's copy) is
//! listed in [`ExportSummary::failed`] with the reason; the caller decides the exit status.
//!
//! XML is written by hand (a fixed, small structure; [`xml_escape`] covers the five XML
//! entities), rather than through an XML writer crate.

pub mod cvat;
pub mod fiftyone;
pub mod labelstudio;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::jobs::rows::LabelRecord;
use crate::jobs::writers::Failure;

/// An export format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExportFormat {
    /// Label Studio tasks + labelling config.
    LabelStudio,
    /// CVAT for images 1.1 XML.
    Cvat,
    /// FiftyOne image classification dataset.
    FiftyOne,
}

impl std::str::FromStr for ExportFormat {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "labelstudio" | "label-studio" => Ok(ExportFormat::LabelStudio),
            "cvat" => Ok(ExportFormat::Cvat),
            "fiftyone" => Ok(ExportFormat::FiftyOne),
            _ => Err(Error::UnknownExportFormat {
                value: s.to_string(),
            }),
        }
    }
}

/// Where the labels come from: a model run (predictions) or a person (reviewed decisions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// `label`/`predict` output: Label Studio `predictions`, CVAT `source="auto"`.
    Model,
    /// Review decisions: Label Studio `annotations`, CVAT `source="manual"`.
    Review,
}

/// Options of [`export`].
#[derive(Debug, Clone, PartialEq)]
pub struct ExportOptions {
    /// The class list, in order (the run's classes); `None`: classes named in the rows, sorted.
    pub classes: Option<Vec<String>>,
    /// Label Studio `model_version` (e.g. the model and scorer key).
    pub model_version: String,
    /// Relative row paths are relative to this directory (the CLI passes its working directory).
    pub base_dir: PathBuf,
    /// Label Studio: prefix of `data.image` URLs; the row path (as written) is appended. E.g.
    /// `/data/local-files/?d=` for Label Studio's local files storage. `None`: the path alone.
    pub image_url_prefix: Option<String>,
    /// CVAT task name.
    pub task_name: String,
    /// Who made the labels.
    pub origin: Origin,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions {
            classes: None,
            model_version: "cliplabel".into(),
            base_dir: PathBuf::from("."),
            image_url_prefix: None,
            task_name: "cliplabel".into(),
            origin: Origin::Model,
        }
    }
}

/// What [`export`] wrote.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ExportSummary {
    /// Files written.
    pub files: Vec<PathBuf>,
    /// Rows exported.
    pub exported: usize,
    /// Of those, exported without a label (`unknown`).
    pub unlabelled: usize,
    /// Rows that could not be exported, with the reason.
    pub failed: Vec<Failure>,
}

/// Exports `rows` in `format` into the directory `out` (created if needed).
pub fn export(
    rows: &[LabelRecord],
    format: ExportFormat,
    out: &Path,
    opts: &ExportOptions,
) -> Result<ExportSummary> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let classes = opts.classes.clone().unwrap_or_else(|| classes_of(rows));
    for r in rows {
        if let Some(c) = r.class() {
            if !classes.iter().any(|k| k == c) {
                return Err(Error::LabelNotInClasses {
                    path: r.path.clone(),
                    label: c.to_string(),
                });
            }
        }
    }
    match format {
        ExportFormat::LabelStudio => labelstudio::write(rows, &classes, out, opts),
        ExportFormat::Cvat => cvat::write(rows, &classes, out, opts),
        ExportFormat::FiftyOne => fiftyone::write(rows, &classes, out, opts),
    }
}

/// Class labels named by the rows' labels (not `unknown`), sorted.
pub fn classes_of(rows: &[LabelRecord]) -> Vec<String> {
    let mut v: Vec<String> = rows
        .iter()
        .filter_map(|r| r.class().map(str::to_string))
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Escapes the five XML entities.
pub fn xml_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            c => o.push(c),
        }
    }
    o
}

pub(crate) fn resolve(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

#[cfg(test)]
pub(crate) mod test_rows {
    use super::*;

    /// Three rows over repository images: two labelled, one abstained.
    pub fn rows() -> Vec<LabelRecord> {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let p = |f: &str| root.join("images").join(f).display().to_string();
        vec![
            LabelRecord {
                path: p("img_000.png"),
                label: "yellow triangle".into(),
                score: Some(0.91),
                top: vec![("yellow triangle".into(), 0.91), ("red star".into(), 0.05)],
                abstained: false,
                set: None,
            },
            LabelRecord {
                path: p("img_002.jpg"),
                label: "black circle".into(),
                score: Some(0.8),
                top: vec![("black circle".into(), 0.8)],
                abstained: false,
                set: None,
            },
            LabelRecord {
                path: p("img_003.png"),
                label: "unknown".into(),
                score: Some(0.3),
                top: vec![("blue triangle".into(), 0.3)],
                abstained: true,
                set: None,
            },
        ]
    }

    #[test]
    fn formats_parse_and_labels_must_be_classes() {
        assert_eq!(
            "labelstudio".parse::<ExportFormat>().unwrap(),
            ExportFormat::LabelStudio
        );
        assert_eq!("CVAT".parse::<ExportFormat>().unwrap(), ExportFormat::Cvat);
        assert!("coco".parse::<ExportFormat>().is_err());
        let d = tempfile::tempdir().unwrap();
        let opts = ExportOptions {
            classes: Some(vec!["yellow triangle".into()]),
            ..Default::default()
        };
        let e = export(&rows(), ExportFormat::Cvat, d.path(), &opts).unwrap_err();
        assert!(e.to_string().contains("black circle"), "{e}");
        assert_eq!(
            xml_escape("a<b & \"c\"'"),
            "a&lt;b &amp; &quot;c&quot;&apos;"
        );
    }
}
