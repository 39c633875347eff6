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
///
/// An entry the walk cannot follow (a symbolic link loop, an unreadable folder, a link to an
/// image that is gone) does not stop the walk: its path is returned among the images, so that
/// it is listed as failed with the reason [`check_input`] gives. Dangling links without an
/// image extension are not images and are left out.
pub fn walk_images(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in walkdir::WalkDir::new(dir)
        .follow_links(true)
        .sort_by_file_name()
    {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => match e.path() {
                Some(p)
                    if e.loop_ancestor().is_some() || !is_dangling(p) || has_image_extension(p) =>
                {
                    out.push(p.to_path_buf());
                    continue;
                }
                Some(_) => continue,
                None => {
                    let msg = e.to_string();
                    return Err(Error::io(
                        dir,
                        e.into_io_error()
                            .unwrap_or_else(|| std::io::Error::other(msg)),
                    ));
                }
            },
        };
        if entry.file_type().is_file() && has_image_extension(entry.path()) {
            out.push(entry.into_path());
        }
    }
    Ok(out)
}

/// The OS error number for "too many levels of symbolic links".
#[cfg(target_os = "linux")]
const ELOOP: i32 = 40;
#[cfg(not(target_os = "linux"))]
const ELOOP: i32 = 62;

/// Whether `path` is a symbolic link whose target does not exist.
fn is_dangling(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
        && std::fs::metadata(path).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound)
}

/// Checks, before decoding, that an input is a file that can be followed, and says why not:
/// a symbolic link loop (to a folder above it, or links that point at each other), or a folder.
pub fn check_input(path: &Path) -> Result<()> {
    let fail = |message: String| Error::Image {
        path: path.to_path_buf(),
        message,
    };
    match std::fs::metadata(path) {
        Err(e) if e.raw_os_error() == Some(ELOOP) => {
            Err(fail(format!("symbolic link loop ({e}); not followed")))
        }
        Err(e) => Err(Error::io(path, e)),
        Ok(m) if m.is_dir() => {
            let is_link = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
            let target = std::fs::canonicalize(path).ok();
            let parent = path.parent().and_then(|p| std::fs::canonicalize(p).ok());
            match (target, parent) {
                (Some(t), Some(p)) if is_link && p.starts_with(&t) => Err(fail(format!(
                    "symbolic link loop: links to {}, a folder above it; not followed",
                    t.display()
                ))),
                _ => Err(fail("is a folder, not an image file".into())),
            }
        }
        Ok(_) => Ok(()),
    }
}

/// Expands files and directories into the list of images to process.
///
/// Files named explicitly are kept whatever their extension (a non-image then fails to decode
/// and is reported); directories are walked for image extensions. A path that does not exist
/// is an error, and so is an empty result.
pub fn collect_images(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    if inputs.is_empty() {
        return Err(Error::NoInputs);
    }
    let mut out = Vec::new();
    for p in inputs {
        let meta = std::fs::metadata(p).map_err(|source| Error::InputNotFound {
            path: p.clone(),
            source,
        })?;
        if meta.is_dir() {
            out.extend(walk_images(p)?);
        } else {
            out.push(p.clone());
        }
    }
    if out.is_empty() {
        return Err(Error::NoImages {
            roots: inputs.to_vec(),
            extensions: IMAGE_EXTENSIONS.iter().map(|e| e.to_string()).collect(),
        });
    }
    Ok(out)
}

/// Reads a text file of prompts, one per line (a trailing newline does not add an empty prompt).
pub fn read_lines(path: &Path) -> Result<Vec<String>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let text = String::from_utf8(bytes).map_err(|e| Error::NotUtf8 {
        path: path.to_path_buf(),
        byte: e.utf8_error().valid_up_to(),
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

    #[cfg(unix)]
    #[test]
    fn symlink_loops_are_listed_not_fatal() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("a/b")).unwrap();
        std::fs::write(d.path().join("a/b/x.png"), b"x").unwrap();
        std::fs::write(d.path().join("z.png"), b"x").unwrap();
        std::os::unix::fs::symlink("..", d.path().join("a/b/up")).unwrap();
        std::os::unix::fs::symlink("p2.png", d.path().join("p1.png")).unwrap();
        std::os::unix::fs::symlink("p1.png", d.path().join("p2.png")).unwrap();
        std::os::unix::fs::symlink("gone", d.path().join("dangling.txt")).unwrap();
        let got = collect_images(&[d.path().to_path_buf()]).unwrap();
        let rel: Vec<_> = got
            .iter()
            .map(|p| {
                p.strip_prefix(d.path())
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(rel, ["a/b/up", "a/b/x.png", "p1.png", "p2.png", "z.png"]);
        let up = check_input(&got[0]).unwrap_err().to_string();
        assert!(up.contains("symbolic link loop: links to"), "{up}");
        let p1 = check_input(&got[2]).unwrap_err().to_string();
        assert!(p1.contains("symbolic link loop"), "{p1}");
        check_input(&got[1]).unwrap();
        let dir = check_input(&d.path().join("a")).unwrap_err().to_string();
        assert!(dir.contains("is a folder"), "{dir}");
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
