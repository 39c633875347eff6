//! Laying labelled images out as `DIR/<label>/<file>` (the ImageFolder convention) by copy,
//! symlink or hardlink, never overwriting anything and never writing outside `DIR`.

use std::path::{Path, PathBuf};

use crate::classify::classes::safe_dir_name;
use crate::error::{Error, Result};
use crate::util::hash::{fnv1a, FNV_START};

/// How an image is placed into its label folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LinkMode {
    /// Copy the file's bytes.
    #[default]
    Copy,
    /// A symbolic link to the original's absolute path.
    Symlink,
    /// A hard link (same file system only).
    Hardlink,
}

fn same_placement(src: &Path, dest: &Path, mode: LinkMode) -> bool {
    match mode {
        LinkMode::Symlink => match (std::fs::read_link(dest), std::fs::canonicalize(src)) {
            (Ok(t), Ok(s)) => t == s,
            _ => false,
        },
        LinkMode::Hardlink => {
            #[cfg(unix)]
            {
                use std::os::unix::fs::MetadataExt;
                match (std::fs::metadata(src), std::fs::symlink_metadata(dest)) {
                    (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
                    _ => false,
                }
            }
            #[cfg(not(unix))]
            false
        }
        LinkMode::Copy => match (std::fs::read(src), std::fs::symlink_metadata(dest)) {
            (Ok(a), Ok(m)) if m.is_file() && m.len() == a.len() as u64 => {
                std::fs::read(dest).is_ok_and(|b| b == a)
            }
            _ => false,
        },
    }
}

/// The name used when `file_name` is already taken by another file: a suffix derived from the
/// source path, so the same source always gets the same name.
fn suffixed(file_name: &str, src: &Path, attempt: u32) -> String {
    let canon = std::fs::canonicalize(src).unwrap_or_else(|_| src.to_path_buf());
    let h = fnv1a(
        &attempt.to_le_bytes(),
        fnv1a(canon.to_string_lossy().as_bytes(), FNV_START),
    );
    let tag = format!("{:08x}", h as u32);
    match file_name.rfind('.') {
        Some(i) if i > 0 => format!("{}~{tag}{}", &file_name[..i], &file_name[i..]),
        _ => format!("{file_name}~{tag}"),
    }
}

fn place_one(src: &Path, dest: &Path, mode: LinkMode) -> std::io::Result<()> {
    match mode {
        LinkMode::Copy => {
            // Copy to a temporary name, then hard-link into place so an existing file is never replaced.
            let tmp = crate::util::atomic::temp_path(dest);
            std::fs::copy(src, &tmp)?;
            let r = std::fs::hard_link(&tmp, dest);
            let _ = std::fs::remove_file(&tmp);
            r
        }
        LinkMode::Hardlink => std::fs::hard_link(src, dest),
        LinkMode::Symlink => {
            let target = std::fs::canonicalize(src)?;
            #[cfg(unix)]
            {
                std::os::unix::fs::symlink(target, dest)
            }
            #[cfg(not(unix))]
            {
                let _ = target;
                Err(std::io::Error::other("symlinks are only supported on Unix"))
            }
        }
    }
}

/// Places `src` into `dir/<safe label>/`, returning where it went. A destination holding the
/// same placement already (a rerun) is reused; a clash with another file gets a stable suffix.
pub fn place(src: &Path, dir: &Path, label: &str, mode: LinkMode) -> Result<PathBuf> {
    let folder = dir.join(safe_dir_name(label));
    std::fs::create_dir_all(&folder).map_err(|e| Error::io(&folder, e))?;
    let name = src
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| Error::NoFileName {
            path: src.to_path_buf(),
        })?;
    let name = safe_dir_name(&name);
    for attempt in 0..16u32 {
        let candidate = if attempt == 0 {
            name.clone()
        } else {
            suffixed(&name, src, attempt)
        };
        let dest = folder.join(&candidate);
        if std::fs::symlink_metadata(&dest).is_ok() {
            if same_placement(src, &dest, mode) {
                return Ok(dest);
            }
            continue;
        }
        match place_one(src, &dest, mode) {
            Ok(()) => return Ok(dest),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::io(&dest, e)),
        }
    }
    Err(Error::NameClashes {
        path: folder.join(name),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clashes_get_stable_suffixes_and_reruns_reuse() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        std::fs::write(a.join("x.png"), b"one").unwrap();
        std::fs::write(b.join("x.png"), b"two").unwrap();
        let out = d.path().join("out");
        for mode in [LinkMode::Copy, LinkMode::Symlink, LinkMode::Hardlink] {
            let out = out.join(format!("{mode:?}"));
            let p1 = place(&a.join("x.png"), &out, "cat", mode).unwrap();
            let p2 = place(&b.join("x.png"), &out, "cat", mode).unwrap();
            assert_ne!(p1, p2);
            assert_eq!(std::fs::read(&p1).unwrap(), b"one");
            assert_eq!(std::fs::read(&p2).unwrap(), b"two");
            assert_eq!(
                place(&b.join("x.png"), &out, "cat", mode).unwrap(),
                p2,
                "{mode:?} rerun"
            );
            assert_eq!(std::fs::read_dir(out.join("cat")).unwrap().count(), 2);
        }
    }

    #[test]
    fn hostile_labels_stay_inside() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("x.png"), b"1").unwrap();
        let out = d.path().join("out");
        for label in ["../../etc", "/abs", "a/../../b", ".."] {
            let p = place(&d.path().join("x.png"), &out, label, LinkMode::Copy).unwrap();
            assert_eq!(p.parent().unwrap().parent().unwrap(), out, "{label}");
        }
    }
}
