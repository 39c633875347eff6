//! Test support: a skip that shows. libtest captures `eprintln!` output of passing tests, so a
//! test that cannot run a case on this machine (a missing instruction set, root privileges)
//! says so through [`skipped`], which writes to the process's standard error directly and so
//! appears in every `cargo test` run, not only with `--nocapture`.

use std::io::Write;

/// Prints `SKIPPED: <what>` on standard error, past the test harness's capture.
pub(crate) fn skipped(what: &str) {
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED: {what}");
}
