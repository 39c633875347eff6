//! Paths as text in output files (CSV, JSONL, failure lists, embedding sidecars), written
//! reversibly so that every row can be traced back to its file, even one whose name is not
//! valid UTF-8.
//!
//! The escape (Unix): a path whose bytes are valid UTF-8 and contain no backslash is written as
//! it is (so almost every path reads as before). Otherwise each byte that is not part of valid
//! UTF-8 is written `\xHH` (two lower-case hex digits) and each backslash is doubled (`\\`);
//! [`text_path`] undoes both. `bad<0xff>name.png` is written `bad\xffname.png`, and a file
//! really named `a\xff.png` (with a backslash) is written `a\\xff.png`. On other systems paths
//! are Unicode and are written as they are.
//!
//! Hand-written because the escape is a few lines and must match exactly what the readers
//! (`--resume`, `merge`, `fit --train-csv`) undo; no crate offers this reversible pair.

use std::path::{Path, PathBuf};

/// The text written for `path` in output files (see the module docs for the escape).
pub fn path_text(path: &Path) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        escape_bytes(path.as_os_str().as_bytes())
    }
    #[cfg(not(unix))]
    {
        path.display().to_string()
    }
}

/// The path a text written by [`path_text`] stands for.
pub fn text_path(text: &str) -> PathBuf {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStringExt;
        PathBuf::from(std::ffi::OsString::from_vec(unescape_bytes(text)))
    }
    #[cfg(not(unix))]
    {
        PathBuf::from(text)
    }
}

/// Escapes raw path bytes: invalid UTF-8 as `\xHH`, `\` as `\\`.
pub fn escape_bytes(mut bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    loop {
        match std::str::from_utf8(bytes) {
            Ok(s) => {
                push_escaped(&mut out, s);
                return out;
            }
            Err(e) => {
                let (good, rest) = bytes.split_at(e.valid_up_to());
                // `good` is valid UTF-8 by construction.
                push_escaped(&mut out, std::str::from_utf8(good).unwrap_or_default());
                let bad = e.error_len().unwrap_or(rest.len());
                for b in &rest[..bad] {
                    out.push_str(&format!("\\x{b:02x}"));
                }
                bytes = &rest[bad..];
            }
        }
    }
}

fn push_escaped(out: &mut String, s: &str) {
    for c in s.chars() {
        if c == '\\' {
            out.push_str("\\\\");
        } else {
            out.push(c);
        }
    }
}

/// Undoes [`escape_bytes`]. A backslash not followed by `\` or `xHH` is kept as it is (text
/// written by hand, e.g. in a training CSV, reads as typed).
pub fn unescape_bytes(text: &str) -> Vec<u8> {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            if b.get(i + 1) == Some(&b'\\') {
                out.push(b'\\');
                i += 2;
                continue;
            }
            if b.get(i + 1) == Some(&b'x') {
                let hex = b
                    .get(i + 2..i + 4)
                    .and_then(|h| std::str::from_utf8(h).ok());
                if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    out.push(v);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_paths_are_unchanged() {
        for s in ["a/b.png", "dir with space/ü.jpg", "", "x,y\"z.png"] {
            assert_eq!(escape_bytes(s.as_bytes()), s);
            assert_eq!(unescape_bytes(s), s.as_bytes());
        }
    }

    #[test]
    fn escapes_round_trip() {
        let cases: [&[u8]; 7] = [
            b"bad\xffname.png",
            b"a\\xff.png",
            b"\\",
            b"\\\\x41",
            b"\xc3",
            b"\xe2\x82",
            b"ok\xc3\xa9\xff\xfe\\",
        ];
        for c in cases {
            let t = escape_bytes(c);
            assert_eq!(unescape_bytes(&t), c, "{t}");
        }
        assert_eq!(escape_bytes(b"bad\xffname.png"), "bad\\xffname.png");
        assert_eq!(escape_bytes(b"a\\xff.png"), "a\\\\xff.png");
    }

    #[test]
    fn exhaustive_short_byte_strings_round_trip() {
        // Every 2-byte string over an alphabet with the escape's own characters.
        let alphabet = [b'\\', b'x', b'f', b'0', 0xff, 0xc3, 0xa9, b'a'];
        for &a in &alphabet {
            for &b in &alphabet {
                for &c in &alphabet {
                    let s = [a, b, c];
                    assert_eq!(unescape_bytes(&escape_bytes(&s)), s);
                }
            }
        }
    }

    #[cfg(unix)]
    #[test]
    fn os_paths_round_trip() {
        use std::os::unix::ffi::OsStrExt;
        let p = Path::new(std::ffi::OsStr::from_bytes(b"/tmp/bad\xffname.png"));
        assert_eq!(text_path(&path_text(p)), p);
    }
}
