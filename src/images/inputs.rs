//! Expanding the command line's images and directories into a deterministic list of files.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// File extensions (lower case) treated as images when walking directories.
pub const IMAGE_EXTENSIONS: [&str; 9] = [
    "jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "jpe",
];

/// Whether `path` has one of [`IMAGE_EXTENSIONS`], in any case.
pub fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

/// Walks a directory recursively, returning image files in sorted path order.
pub fn walk_images(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in walkdir::WalkDir::new(dir)
        .follow_links(true)
        .sort_by_file_name()
    {
        let entry = entry.map_err(|e| {
            let p = e.path().unwrap_or(dir).to_path_buf();
            let msg = e.to_string();
            Error::io(
                p,
                e.into_io_error()
                    .unwrap_or_else(|| std::io::Error::other(msg)),
            )
        })?;
        if entry.file_type().is_file() && has_image_extension(entry.path()) {
            out.push(entry.into_path());
        }
    }
    Ok(out)
}

/// Expands files and directories into the list of images to process.
///
/// Files named explicitly are kept whatever their extension (a non-image then fails to decode
/// and is reported); directories are walked for image extensions. A path that does not exist
/// is an error, and so is an empty result.
pub fn collect_images(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    if inputs.is_empty() {
        return Err(Error::Input(
            "no images given: pass image files or directories".into(),
        ));
    }
    let mut out = Vec::new();
    for p in inputs {
        let meta =
            std::fs::metadata(p).map_err(|e| Error::Input(format!("{}: {e}", p.display())))?;
        if meta.is_dir() {
            out.extend(walk_images(p)?);
        } else {
            out.push(p.clone());
        }
    }
    if out.is_empty() {
        let list: Vec<String> = inputs.iter().map(|p| p.display().to_string()).collect();
        return Err(Error::Input(format!(
            "no images found in {} (looked for {})",
            list.join(", "),
            IMAGE_EXTENSIONS.join("/")
        )));
    }
    Ok(out)
}

/// Reads a text file of prompts, one per line (a trailing newline does not add an empty prompt).
pub fn read_lines(path: &Path) -> Result<Vec<String>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        Error::Input(format!(
            "{}: not valid UTF-8 (byte {})",
            path.display(),
            e.utf8_error().valid_up_to()
        ))
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    Ok(text
        .lines()
        .map(|l| l.strip_suffix('\r').unwrap_or(l).to_string())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_sorted_and_filters_extensions() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("b")).unwrap();
        for f in ["b/z.PNG", "a.jpg", "c.txt", "b/a.JpEg"] {
            std::fs::write(d.path().join(f), b"x").unwrap();
        }
        let got = collect_images(&[d.path().to_path_buf()]).unwrap();
        let rel: Vec<_> = got
            .iter()
            .map(|p| {
                p.strip_prefix(d.path())
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        assert_eq!(rel, ["a.jpg", "b/a.JpEg", "b/z.PNG"]);
    }

    #[test]
    fn missing_and_empty_inputs_are_errors() {
        let d = tempfile::tempdir().unwrap();
        assert!(collect_images(&[d.path().join("nope")])
            .unwrap_err()
            .to_string()
            .contains("nope"));
        assert!(collect_images(&[d.path().to_path_buf()])
            .unwrap_err()
            .to_string()
            .contains("no images found"));
        assert!(collect_images(&[]).is_err());
    }
}
