//! Files that appear only when complete: written to a temporary name in the same directory,
//! synced, then renamed into place, so a reader never sees half a file.

use std::io::Write;
use std::path::{Path, PathBuf};

/// The temporary name a file is written under before it is renamed into place.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, synced, then renamed.
///
/// The error does not name `path`; callers add it (see [`crate::Error::io`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.is_dir() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("directory {} does not exist", dir.display()),
            ));
        }
    }
    let tmp = temp_path(path);
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_leaves_no_temp_and_refuses_a_missing_directory() {
        let d = tempfile::tempdir().unwrap();
        write_atomic(&d.path().join("x"), b"1").unwrap();
        write_atomic(&d.path().join("x"), b"22").unwrap();
        assert_eq!(std::fs::read(d.path().join("x")).unwrap(), b"22");
        let names: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        assert!(write_atomic(&d.path().join("no/such/dir/x"), b"1").is_err());
    }
}
