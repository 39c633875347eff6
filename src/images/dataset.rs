//! Labelled image sets: the ImageFolder layout (`DIR/<class>/<image>`) or a `path,label` CSV.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::images::inputs::walk_images;

/// Why a labelled set cannot be read, naming the folder or the CSV file and line.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// An ImageFolder directory without class sub-folders.
    #[error("{path}: no class folders (expected the ImageFolder layout DIR/<class>/<image>)")]
    NoClassFolders { path: PathBuf },
    /// A class folder without images.
    #[error("{path}: class folder has no images")]
    EmptyClassFolder { path: PathBuf },
    /// The CSV file cannot be opened or its header read.
    #[error("{path}: {source}")]
    Csv {
        path: PathBuf,
        #[source]
        source: csv::Error,
    },
    /// The CSV header lacks a column.
    #[error("{path}: no `{column}` column in the header")]
    MissingColumn { path: PathBuf, column: String },
    /// A CSV row (`line`, 1-based, the header being line 1) cannot be read.
    #[error("{path}:{line}: {source}")]
    BadRow {
        path: PathBuf,
        line: usize,
        #[source]
        source: csv::Error,
    },
    /// A CSV row lacks its path or label.
    #[error("{path}:{line}: missing path or label")]
    MissingField { path: PathBuf, line: usize },
    /// A CSV row has an empty path or label.
    #[error("{path}:{line}: empty path or label")]
    EmptyField { path: PathBuf, line: usize },
    /// The CSV has a header but no rows.
    #[error("{path}: no rows")]
    NoRows { path: PathBuf },
    /// A set (`what`: e.g. "the test set") has a class the training set lacks.
    #[error("{what} has class `{class}`, which the training set does not have")]
    UnknownClass { what: String, class: String },
}

/// Images with their class indices.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelledSet {
    /// Class names, sorted (ImageFolder) or in first-seen order (CSV).
    pub classes: Vec<String>,
    /// Image paths.
    pub paths: Vec<PathBuf>,
    /// Class index of each path.
    pub labels: Vec<usize>,
}

impl LabelledSet {
    /// Reads an ImageFolder directory: each sub-directory is a class, its images (recursively)
    /// are the examples. An empty class folder is an error naming it.
    pub fn from_image_folder(dir: &Path) -> Result<Self> {
        let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
        let mut class_dirs: Vec<PathBuf> = Vec::new();
        for e in rd {
            let e = e.map_err(|e| Error::io(dir, e))?;
            let p = e.path();
            if p.is_dir() && !e.file_name().to_string_lossy().starts_with('.') {
                class_dirs.push(p);
            }
        }
        class_dirs.sort();
        if class_dirs.is_empty() {
            return Err(DatasetError::NoClassFolders {
                path: dir.to_path_buf(),
            }
            .into());
        }
        let mut set = LabelledSet {
            classes: Vec::new(),
            paths: Vec::new(),
            labels: Vec::new(),
        };
        for (i, cd) in class_dirs.iter().enumerate() {
            let imgs = walk_images(cd)?;
            if imgs.is_empty() {
                return Err(DatasetError::EmptyClassFolder { path: cd.clone() }.into());
            }
            set.classes.push(
                cd.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            );
            set.labels.extend(std::iter::repeat_n(i, imgs.len()));
            set.paths.extend(imgs);
        }
        Ok(set)
    }

    /// Reads a CSV with a header containing `path` and `label` columns; relative paths are
    /// resolved against the CSV's directory.
    pub fn from_csv(file: &Path) -> Result<Self> {
        let csv_err = |source: csv::Error| DatasetError::Csv {
            path: file.to_path_buf(),
            source,
        };
        let mut rdr = csv::Reader::from_path(file).map_err(csv_err)?;
        let headers = rdr.headers().map_err(csv_err)?.clone();
        let col = |name: &str| {
            headers
                .iter()
                .position(|h| h.trim() == name)
                .ok_or_else(|| DatasetError::MissingColumn {
                    path: file.to_path_buf(),
                    column: name.to_string(),
                })
        };
        let (pc, lc) = (col("path")?, col("label")?);
        let base = file.parent().unwrap_or(Path::new("."));
        let mut set = LabelledSet {
            classes: Vec::new(),
            paths: Vec::new(),
            labels: Vec::new(),
        };
        for (i, rec) in rdr.records().enumerate() {
            let line = i + 2;
            let rec = rec.map_err(|source| DatasetError::BadRow {
                path: file.to_path_buf(),
                line,
                source,
            })?;
            let (Some(p), Some(l)) = (rec.get(pc), rec.get(lc)) else {
                return Err(DatasetError::MissingField {
                    path: file.to_path_buf(),
                    line,
                }
                .into());
            };
            let l = l.trim();
            if p.trim().is_empty() || l.is_empty() {
                return Err(DatasetError::EmptyField {
                    path: file.to_path_buf(),
                    line,
                }
                .into());
            }
            let idx = match set.classes.iter().position(|c| c == l) {
                Some(i) => i,
                None => {
                    set.classes.push(l.to_string());
                    set.classes.len() - 1
                }
            };
            // Paths as cliplabel writes them (see util::pathtext) read back to the same file.
            let p = crate::util::pathtext::text_path(p.trim());
            set.paths
                .push(if p.is_absolute() { p } else { base.join(p) });
            set.labels.push(idx);
        }
        if set.paths.is_empty() {
            return Err(DatasetError::NoRows {
                path: file.to_path_buf(),
            }
            .into());
        }
        Ok(set)
    }

    /// Number of examples of each class.
    pub fn counts(&self) -> Vec<usize> {
        let mut c = vec![0; self.classes.len()];
        for &l in &self.labels {
            c[l] += 1;
        }
        c
    }

    /// Re-indexes this set's labels against `classes` (e.g. a test set against the training
    /// classes); a class unknown to `classes` is an error.
    pub fn align_to(&self, classes: &[String], what: &str) -> Result<Vec<usize>> {
        let map: Vec<usize> = self
            .classes
            .iter()
            .map(|c| {
                classes.iter().position(|k| k == c).ok_or_else(|| {
                    Error::from(DatasetError::UnknownClass {
                        what: what.to_string(),
                        class: c.clone(),
                    })
                })
            })
            .collect::<Result<_>>()?;
        Ok(self.labels.iter().map(|&l| map[l]).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_folder_and_csv() {
        let d = tempfile::tempdir().unwrap();
        for f in ["train/cat/a.png", "train/cat/b.jpg", "train/dog/x/c.png"] {
            let p = d.path().join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, b"x").unwrap();
        }
        let s = LabelledSet::from_image_folder(&d.path().join("train")).unwrap();
        assert_eq!(s.classes, ["cat", "dog"]);
        assert_eq!(s.labels, [0, 0, 1]);
        std::fs::create_dir_all(d.path().join("train/empty")).unwrap();
        let e = LabelledSet::from_image_folder(&d.path().join("train"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("empty") && e.contains("no images"), "{e}");
        let csv = d.path().join("l.csv");
        std::fs::write(&csv, "path,label\ntrain/cat/a.png,cat\n/abs/b.png,dog\n").unwrap();
        let s = LabelledSet::from_csv(&csv).unwrap();
        assert_eq!(s.paths[0], d.path().join("train/cat/a.png"));
        assert_eq!(
            s.align_to(&["dog".into(), "cat".into()], "test").unwrap(),
            [1, 0]
        );
        std::fs::write(&csv, "file,label\nx,y\n").unwrap();
        assert!(LabelledSet::from_csv(&csv)
            .unwrap_err()
            .to_string()
            .contains("`path`"));
    }

    #[test]
    fn csv_errors_name_the_file_and_line() {
        let d = tempfile::tempdir().unwrap();
        let csv = d.path().join("l.csv");
        std::fs::write(&csv, "path,label\na.png,cat\nb.png, \n").unwrap();
        let e = LabelledSet::from_csv(&csv).unwrap_err();
        match &e {
            Error::Dataset(DatasetError::EmptyField { path, line }) => {
                assert_eq!((path.as_path(), *line), (csv.as_path(), 3));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            e.to_string(),
            format!("{}:3: empty path or label", csv.display())
        );
        assert_eq!(e.kind(), crate::ErrorKind::Input);
        std::fs::write(&csv, "path,label\n").unwrap();
        assert!(matches!(
            LabelledSet::from_csv(&csv),
            Err(Error::Dataset(DatasetError::NoRows { .. }))
        ));
        let e = LabelledSet {
            classes: vec!["bird".into()],
            paths: vec!["x.png".into()],
            labels: vec![0],
        }
        .align_to(&["cat".into()], "the test set")
        .unwrap_err();
        assert!(
            matches!(&e, Error::Dataset(DatasetError::UnknownClass { what, class }) if what == "the test set" && class == "bird"),
            "{e:?}"
        );
    }
}
