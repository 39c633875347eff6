//! Per-image isolation: decoding and preprocessing one image runs under `catch_unwind`, so a
//! decoder that panics on a crafted or corrupt file fails that image (with a reason starting
//! `decoder crashed: `) instead of ending the run.
//!
//! The library installs no panic hook. A thread-local flag says whether the current thread is
//! inside [`isolated`]; the binary's hook asks [`in_isolation`] to stay quiet for panics that
//! are caught here, and still prints every other one.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use crate::error::{Error, Result};

thread_local! {
    static INSIDE: Cell<bool> = const { Cell::new(false) };
}

/// The prefix of the reason given for an image whose decoder panicked.
pub const CRASH_PREFIX: &str = "decoder crashed: ";

/// Whether the current thread is running inside [`isolated`] (a panic now will be caught and
/// reported as that image's failure). For the binary's panic hook.
pub fn in_isolation() -> bool {
    INSIDE.with(Cell::get)
}

/// Restores the flag when leaving, whether by return or by unwinding.
struct Guard(bool);

impl Drop for Guard {
    fn drop(&mut self) {
        INSIDE.with(|f| f.set(self.0));
    }
}

/// Runs `work` for the image at `path`; a panic inside becomes [`Error::Image`] for that path
/// with the reason `decoder crashed: <panic message>`.
pub fn isolated<T>(path: &Path, work: impl FnOnce() -> Result<T>) -> Result<T> {
    let result = {
        let _guard = Guard(INSIDE.with(|f| f.replace(true)));
        catch_unwind(AssertUnwindSafe(work))
    };
    result.unwrap_or_else(|payload| {
        Err(Error::Image {
            path: path.to_path_buf(),
            message: format!("{CRASH_PREFIX}{}", panic_message(payload.as_ref())),
        })
    })
}

/// The text of a panic payload (`panic!` with a message gives `&str` or `String`).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-text payload".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_that_images_error() {
        let p = Path::new("x.tif");
        let e = isolated::<()>(p, || panic!("assertion failed: buf.len() >= 3")).unwrap_err();
        match e {
            Error::Image { path, message } => {
                assert_eq!(path, p);
                assert_eq!(message, "decoder crashed: assertion failed: buf.len() >= 3");
            }
            other => panic!("unexpected {other:?}"),
        }
        let n = 7;
        let e = isolated::<()>(p, || panic!("index {n} out of range")).unwrap_err();
        assert!(e
            .to_string()
            .ends_with("decoder crashed: index 7 out of range"));
        assert!(!in_isolation(), "the flag is cleared after a caught panic");
    }

    #[test]
    fn results_pass_through_and_the_flag_is_scoped() {
        assert!(!in_isolation());
        assert!(isolated(Path::new("a"), || Ok(in_isolation())).unwrap());
        assert!(!in_isolation());
        let e = isolated::<()>(Path::new("a"), || Err(Error::NoInputs)).unwrap_err();
        assert!(matches!(e, Error::NoInputs), "{e:?}");
        // Nested use keeps the outer flag set.
        isolated(Path::new("a"), || {
            let _ = isolated::<()>(Path::new("b"), || panic!("inner"));
            assert!(in_isolation());
            Ok(())
        })
        .unwrap();
        assert!(!in_isolation());
    }
}
