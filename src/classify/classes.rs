//! Class lists and folder-safe label names for zero-shot labelling, and the parsing rules and
//! errors shared with prompt templates ([`crate::classify::templates`]).
//!
//! # Class list files
//!
//! One class per line. A line `name` makes a class prompted by its name alone; a line
//! `name: synonym one | synonym two` makes a class labelled `name` in every output whose prompts
//! use exactly the listed synonyms (the name itself is *not* prompted unless it is listed too, so a
//! label can be a code such as `n02123045: tabby cat | tabby`). Embeddings of all a class's prompts
//! are averaged. The line is split at its first `:`; synonyms are separated by `|`.
//!
//! Lines whose first non-blank character is `#` are comments and blank lines are ignored; a `#`
//! later in a line is part of the name (`C# code` is a class), so there are no trailing comments.
//! Names and synonyms are trimmed; a UTF-8 byte-order mark and CRLF line ends are accepted.
//! Names, and synonyms within a class, are compared ignoring case and runs of whitespace, because
//! CLIP's tokenizer lower-cases and collapses whitespace (so `Cat` and `cat` would be the same
//! prompt) and many file systems ignore case (so `Cat/` and `cat/` would be the same folder).

// `PromptError` carries locations and names for its messages, so it is larger than clippy's
// `result_large_err` threshold; it is built at most once per run, so boxing would buy nothing.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// Longest folder name, in bytes, that [`safe_dir_name`] returns.
pub const MAX_DIR_NAME_BYTES: usize = 200;

/// Where an entry came from, for error messages: a line of a file, or a command-line value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A line of a file.
    Line {
        /// The file's path (or another description of the text), as displayed.
        origin: String,
        /// 1-based line number.
        line: usize,
    },
    /// A value given on the command line.
    Arg {
        /// The flag, e.g. `--class`.
        flag: String,
        /// 1-based position among that flag's values.
        index: usize,
    },
}

impl Location {
    pub(crate) fn line(origin: &str, line: usize) -> Self {
        Location::Line {
            origin: origin.to_string(),
            line,
        }
    }

    pub(crate) fn arg(flag: &str, index: usize) -> Self {
        Location::Arg {
            flag: flag.to_string(),
            index,
        }
    }

    /// A short reference to this location from another one in the same source ("line 3").
    pub fn short(&self) -> String {
        match self {
            Location::Line { line, .. } => format!("line {line}"),
            Location::Arg { flag, index } => format!("{flag} #{index}"),
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Line { origin, line } => write!(f, "{origin}:{line}"),
            Location::Arg { flag, index } => write!(f, "{flag} #{index}"),
        }
    }
}

/// Errors in class lists and template sets; every message names the file (or flag) and line.
///
/// Each variant's fields are the values its message shows.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
#[allow(missing_docs)]
pub enum PromptError {
    /// The file could not be read.
    #[error("cannot read {}: {err}", path.display())]
    Io { path: PathBuf, err: std::io::Error },
    /// The file is not UTF-8; `line` is where the first invalid byte is.
    #[error("{origin}:{line}: not valid UTF-8 (save the file as UTF-8)")]
    InvalidUtf8 { origin: String, line: usize },
    /// A class line with nothing before its `:` (or an empty `--class` value).
    #[error("{at}: empty class name")]
    EmptyClassName { at: Location },
    /// A class line with an empty synonym (`a: x || y`, `a:`, `a: x |`).
    #[error(
        "{at}: class '{class}' has an empty synonym (look for `||`, or nothing after `:` or `|`)"
    )]
    EmptySynonym { at: Location, class: String },
    /// The same synonym twice in one class.
    #[error("{at}: class '{class}' lists the synonym '{synonym}' twice (compared ignoring case and repeated spaces)")]
    DuplicateSynonym {
        at: Location,
        class: String,
        synonym: String,
    },
    /// A class name already used by an earlier class.
    #[error("{at}: duplicate class name '{name}': same as '{first_name}' on {} (class names are compared ignoring case and repeated spaces)", first.short())]
    DuplicateClass {
        at: Location,
        name: String,
        first_name: String,
        first: Location,
    },
    /// Two classes prompted with the same names, which CLIP could never tell apart.
    #[error("{at}: class '{class}' is prompted with exactly the same names as class '{other}' on {}, so the two could never be told apart", other_at.short())]
    SamePrompts {
        at: Location,
        class: String,
        other: String,
        other_at: Location,
    },
    /// Two classes whose folder names (see [`safe_dir_name`]) would be the same.
    #[error("{at}: classes '{class}' and '{other}' (on {}) would share the folder name '{dir}'", other_at.short())]
    DirNameClash {
        at: Location,
        class: String,
        other: String,
        other_at: Location,
        dir: String,
    },
    /// Fewer than two classes.
    #[error("{origin}: zero-shot labelling needs at least two classes, found {found}")]
    TooFewClasses { origin: String, found: usize },
    /// A template without exactly one `{}`.
    #[error("{at}: template {template:?} must contain exactly one `{{}}`, found {count}")]
    Placeholder {
        at: Location,
        template: String,
        count: usize,
    },
    /// A template repeated within a set.
    #[error("{at}: duplicate template {template:?}: same as {} (compared ignoring case and repeated spaces; a repeat would double its weight)", first.short())]
    DuplicateTemplate {
        at: Location,
        template: String,
        first: Location,
    },
    /// A template file with no templates.
    #[error("{origin}: no templates (only comments and blank lines)")]
    NoTemplates { origin: String },
    /// `--templates SPEC` names neither a file nor a shipped set.
    #[error(
        "'{spec}' is neither a template file nor a shipped template set (shipped sets: {shipped})"
    )]
    UnknownTemplates { spec: String, shipped: String },
}

/// Result type of this module.
pub type Result<T, E = PromptError> = std::result::Result<T, E>;

/// One class: the label written in outputs, and the names its prompts are built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassSpec {
    /// The label written to outputs and used (via [`safe_dir_name`]) as a folder name.
    pub name: String,
    /// The prompt names, each filled into every template: `[name]` for a plain line, exactly the
    /// listed synonyms for a `name: synonym | synonym` line.
    pub synonyms: Vec<String>,
}

/// An ordered list of at least two distinct classes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassList {
    /// The classes, in file (or command-line) order; class indices refer to this order.
    pub classes: Vec<ClassSpec>,
}

/// Case- and whitespace-insensitive comparison key, mirroring what CLIP's tokenizer ignores.
pub(crate) fn norm_key(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// Decodes file bytes as UTF-8, reporting the line of the first invalid byte.
pub(crate) fn decode<'a>(bytes: &'a [u8], origin: &str) -> Result<&'a str> {
    std::str::from_utf8(bytes).map_err(|e| {
        let line = bytes[..e.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1;
        PromptError::InvalidUtf8 {
            origin: origin.to_string(),
            line,
        }
    })
}

pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|err| PromptError::Io {
        path: path.to_path_buf(),
        err,
    })
}

/// The non-blank, non-comment lines of `text`, trimmed, with their 1-based line numbers.
pub(crate) fn content_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    text.lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
}

/// Parses one class entry (`name` or `name: syn | syn`).
fn parse_class(entry: &str, at: &Location) -> Result<ClassSpec> {
    let entry = entry.trim();
    let Some((name, rest)) = entry.split_once(':') else {
        if entry.is_empty() {
            return Err(PromptError::EmptyClassName { at: at.clone() });
        }
        return Ok(ClassSpec {
            name: entry.to_string(),
            synonyms: vec![entry.to_string()],
        });
    };
    let name = name.trim();
    if name.is_empty() {
        return Err(PromptError::EmptyClassName { at: at.clone() });
    }
    let mut synonyms: Vec<String> = Vec::new();
    let mut seen: Vec<String> = Vec::new();
    for syn in rest.split('|').map(str::trim) {
        if syn.is_empty() {
            return Err(PromptError::EmptySynonym {
                at: at.clone(),
                class: name.to_string(),
            });
        }
        let key = norm_key(syn);
        if seen.contains(&key) {
            return Err(PromptError::DuplicateSynonym {
                at: at.clone(),
                class: name.to_string(),
                synonym: syn.to_string(),
            });
        }
        seen.push(key);
        synonyms.push(syn.to_string());
    }
    Ok(ClassSpec {
        name: name.to_string(),
        synonyms,
    })
}

impl ClassList {
    /// Parses a class list; `source` names the file in error messages.
    pub fn parse(text: &str, source: &Path) -> Result<Self> {
        let origin = source.display().to_string();
        let entries = content_lines(text)
            .map(|(line, l)| {
                let at = Location::line(&origin, line);
                parse_class(l, &at).map(|spec| (at, spec))
            })
            .collect::<Result<Vec<_>>>()?;
        Self::build(entries, &origin)
    }

    /// Reads and parses a class-list file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = read_file(path)?;
        let text = decode(&bytes, &path.display().to_string())?;
        Self::parse(text, path)
    }

    /// Builds a list from `--class` values; each value is one entry and may use the
    /// `name: synonym | synonym` form (no comments). Errors name the value as `--class #N`.
    pub fn from_names(names: &[String]) -> Result<Self> {
        let entries = names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let at = Location::arg("--class", i + 1);
                parse_class(n, &at).map(|spec| (at, spec))
            })
            .collect::<Result<Vec<_>>>()?;
        Self::build(entries, "--class")
    }

    /// Checks the cross-class rules: distinct names, distinct prompt sets, distinct folders, ≥ 2.
    fn build(entries: Vec<(Location, ClassSpec)>, origin: &str) -> Result<Self> {
        let mut by_name: HashMap<String, usize> = HashMap::new();
        let mut by_prompts: HashMap<String, usize> = HashMap::new();
        let mut by_dir: HashMap<String, usize> = HashMap::new();
        for (i, (at, spec)) in entries.iter().enumerate() {
            if let Some(&j) = by_name.get(&norm_key(&spec.name)) {
                return Err(PromptError::DuplicateClass {
                    at: at.clone(),
                    name: spec.name.clone(),
                    first_name: entries[j].1.name.clone(),
                    first: entries[j].0.clone(),
                });
            }
            by_name.insert(norm_key(&spec.name), i);

            let mut keys: Vec<String> = spec.synonyms.iter().map(|s| norm_key(s)).collect();
            keys.sort();
            let prompts_key = keys.join("\n");
            if let Some(&j) = by_prompts.get(&prompts_key) {
                return Err(PromptError::SamePrompts {
                    at: at.clone(),
                    class: spec.name.clone(),
                    other: entries[j].1.name.clone(),
                    other_at: entries[j].0.clone(),
                });
            }
            by_prompts.insert(prompts_key, i);

            let dir = safe_dir_name(&spec.name);
            let dir_key = dir.to_lowercase();
            if let Some(&j) = by_dir.get(&dir_key) {
                return Err(PromptError::DirNameClash {
                    at: at.clone(),
                    class: spec.name.clone(),
                    other: entries[j].1.name.clone(),
                    other_at: entries[j].0.clone(),
                    dir,
                });
            }
            by_dir.insert(dir_key, i);
        }
        if entries.len() < 2 {
            return Err(PromptError::TooFewClasses {
                origin: origin.to_string(),
                found: entries.len(),
            });
        }
        Ok(ClassList {
            classes: entries.into_iter().map(|(_, spec)| spec).collect(),
        })
    }

    /// Number of classes.
    pub fn len(&self) -> usize {
        self.classes.len()
    }

    /// True when there are no classes (never the case for a parsed list).
    pub fn is_empty(&self) -> bool {
        self.classes.is_empty()
    }

    /// The class labels, in order.
    pub fn names(&self) -> Vec<&str> {
        self.classes.iter().map(|c| c.name.as_str()).collect()
    }

    /// Index of the class whose name equals `name`, ignoring case and repeated spaces (e.g. to
    /// reject a class that clashes with the abstention label `unknown`).
    pub fn position(&self, name: &str) -> Option<usize> {
        let key = norm_key(name);
        self.classes.iter().position(|c| norm_key(&c.name) == key)
    }
}

/// Characters escaped anywhere in a folder name: path separators, characters Windows forbids,
/// control characters (NUL included) and invisible or direction-changing format characters.
fn must_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '/' | '\\' | '<' | '>' | ':' | '"' | '|' | '?' | '*')
        || matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
}

fn percent(c: char, out: &mut String) {
    let mut buf = [0u8; 4];
    for b in c.encode_utf8(&mut buf).bytes() {
        out.push_str(&format!("%{b:02X}"));
    }
}

/// True for Windows device names (`CON`, `nul.txt`, `COM1`, ...), which cannot be folders there.
fn is_windows_reserved(name: &str) -> bool {
    let stem = name
        .split('.')
        .next()
        .unwrap_or("")
        .trim_end_matches(' ')
        .to_ascii_uppercase();
    matches!(stem.as_str(), "CON" | "PRN" | "AUX" | "NUL")
        || (stem.len() == 4
            && (stem.starts_with("COM") || stem.starts_with("LPT"))
            && matches!(stem.as_bytes()[3], b'1'..=b'9'))
}

/// 64-bit FNV-1a of a label: a hash that is stable across platforms and Rust versions.
fn fnv1a64(s: &str) -> u64 {
    crate::util::hash::fnv1a(s.as_bytes(), crate::util::hash::FNV_START)
}

/// Makes a class label safe to use as one folder name on Linux, macOS and Windows.
///
/// Characters that are unsafe anywhere (`/`, `\`, control characters and NUL, Windows' `<>:"|?*`,
/// invisible/bidi format characters), and a leading or trailing `.` or space (which covers `.`,
/// `..` and hidden names), are percent-encoded as their UTF-8 bytes (`AC/DC` → `AC%2FDC`,
/// `..` → `%2E%2E`); Windows device names get their first letter encoded (`CON` → `%43ON`);
/// the empty label becomes `_`. Names over [`MAX_DIR_NAME_BYTES`] are cut on a character
/// boundary and end in `~` plus 8 hex digits of a stable hash of the whole label.
///
/// The result is never empty, `.` or `..` and never contains a separator, so it is always a
/// single path component. The function is idempotent (a safe name maps to itself), which means
/// `%` is kept as is; so distinct labels map to distinct names except when a label already
/// contains the escape another label's character gets (`a%2Fb` vs `a/b`), `""` vs `_`, or long
/// labels sharing their first ~190 bytes and a 32-bit hash. [`ClassList`] rejects class lists
/// with such a clash, or with names equal ignoring case, so class folders never collide.
pub fn safe_dir_name(label: &str) -> String {
    if label.is_empty() {
        return "_".to_string();
    }
    let last = label.chars().count() - 1;
    // Build the name as units (one per input char) so truncation never splits an escape.
    let mut units: Vec<String> = Vec::with_capacity(label.len());
    for (i, c) in label.chars().enumerate() {
        let edge = (i == 0 || i == last) && (c == '.' || c == ' ');
        let mut unit = String::new();
        if edge || must_escape(c) {
            percent(c, &mut unit);
        } else {
            unit.push(c);
        }
        units.push(unit);
    }
    if is_windows_reserved(label) {
        let first = label.chars().next().expect("label is not empty");
        units[0].clear();
        percent(first, &mut units[0]);
    }
    let total: usize = units.iter().map(String::len).sum();
    if total <= MAX_DIR_NAME_BYTES {
        return units.concat();
    }
    let suffix = format!("~{:08x}", fnv1a64(label) as u32);
    let budget = MAX_DIR_NAME_BYTES - suffix.len();
    let mut out = String::with_capacity(MAX_DIR_NAME_BYTES);
    for unit in &units {
        if out.len() + unit.len() > budget {
            break;
        }
        out.push_str(unit);
    }
    out.push_str(&suffix);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Component;

    fn p(s: &str) -> &Path {
        Path::new(s)
    }

    fn classes(text: &str) -> Result<ClassList> {
        ClassList::parse(text, p("classes.txt"))
    }

    fn err_msg(r: Result<impl std::fmt::Debug>) -> String {
        r.expect_err("expected an error").to_string()
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    // ---- class lists: accepted forms ----

    #[test]
    fn plain_names_comments_blank_lines_and_trimming() {
        let text = "# my classes\n\n  cat  \n\t# indented comment\ndog\n   \nred circle\n";
        let c = classes(text).unwrap();
        assert_eq!(c.names(), vec!["cat", "dog", "red circle"]);
        assert_eq!(c.classes[0].synonyms, vec!["cat"]);
        assert_eq!(c.len(), 3);
        assert!(!c.is_empty());
    }

    #[test]
    fn hash_inside_a_line_is_part_of_the_name() {
        let c = classes("C# code\nF# code # not a comment\n").unwrap();
        assert_eq!(c.names(), vec!["C# code", "F# code # not a comment"]);
    }

    #[test]
    fn bom_and_crlf_are_tolerated() {
        let c = classes("\u{feff}cat\r\ndog: puppy | hound\r\n\r\n").unwrap();
        assert_eq!(c.names(), vec!["cat", "dog"]);
        assert_eq!(c.classes[1].synonyms, vec!["puppy", "hound"]);
        // a BOM-only line before a comment
        let c = classes("\u{feff}# header\r\na\r\nb").unwrap();
        assert_eq!(c.names(), vec!["a", "b"]);
    }

    #[test]
    fn synonyms_replace_the_name_in_prompts() {
        let c = classes("cat: kitty |  house cat \ndog\n").unwrap();
        assert_eq!(
            c.classes[0],
            ClassSpec {
                name: "cat".into(),
                synonyms: strings(&["kitty", "house cat"])
            }
        );
        assert_eq!(
            c.classes[1],
            ClassSpec {
                name: "dog".into(),
                synonyms: strings(&["dog"])
            }
        );
        // split at the first colon only; the name itself can be listed as a synonym
        let c = classes("emotion: the emotion: joy | joy\njoy: joy | happiness\n").unwrap();
        assert_eq!(c.classes[0].synonyms, vec!["the emotion: joy", "joy"]);
        assert_eq!(c.classes[1].synonyms, vec!["joy", "happiness"]);
    }

    #[test]
    fn position_ignores_case_and_spacing() {
        let c = classes("Red  Circle\nunknown\n").unwrap();
        assert_eq!(c.position("red circle"), Some(0));
        assert_eq!(c.position("UNKNOWN"), Some(1));
        assert_eq!(c.position("square"), None);
    }

    // ---- class lists: errors ----

    #[test]
    fn duplicate_class_names_the_earlier_line() {
        let m = err_msg(classes("# x\ncat\ndog\n\ncat\n"));
        assert!(
            m.starts_with("classes.txt:5: duplicate class name 'cat'"),
            "{m}"
        );
        assert!(m.contains("on line 2"), "{m}");
        // compared ignoring case and whitespace runs, and through synonym syntax
        let m = err_msg(classes("Red Circle\nsquare\nred   circle: a red disc\n"));
        assert!(
            m.starts_with("classes.txt:3: duplicate class name 'red   circle'"),
            "{m}"
        );
        assert!(m.contains("same as 'Red Circle' on line 1"), "{m}");
    }

    #[test]
    fn empty_class_name() {
        let m = err_msg(classes("cat\n: foo\ndog\n"));
        assert_eq!(m, "classes.txt:2: empty class name");
        let e = classes("cat\n  :  \n").unwrap_err();
        assert!(matches!(e, PromptError::EmptyClassName { .. }), "{e}");
    }

    #[test]
    fn empty_synonyms() {
        for (text, line) in [
            ("a: x || y\nb", 1),
            ("b\na:\n", 2),
            ("b\nc\na: x |\n", 3),
            ("a: | x\nb", 1),
        ] {
            let e = classes(text).unwrap_err();
            assert!(
                matches!(e, PromptError::EmptySynonym { .. }),
                "{text:?}: {e}"
            );
            assert!(
                e.to_string().starts_with(&format!(
                    "classes.txt:{line}: class 'a' has an empty synonym"
                )),
                "{e}"
            );
        }
    }

    #[test]
    fn duplicate_synonym_in_a_class() {
        let m = err_msg(classes("a\nb: x | y | X\n"));
        assert!(
            m.starts_with("classes.txt:2: class 'b' lists the synonym 'X' twice"),
            "{m}"
        );
    }

    #[test]
    fn classes_with_the_same_prompts() {
        let m = err_msg(classes("cat: kitty | tabby\ndog\nfeline: Tabby | kitty\n"));
        assert!(m.starts_with("classes.txt:3: class 'feline' is prompted with exactly the same names as class 'cat' on line 1"), "{m}");
        // a shared synonym alone is fine
        classes("cat: kitty | tabby\nlion: kitty | big cat\n").unwrap();
    }

    #[test]
    fn classes_whose_folders_would_clash() {
        let m = err_msg(classes("a/b\nc\na%2Fb: ab\n"));
        assert!(m.starts_with("classes.txt:3: classes 'a%2Fb' and 'a/b' (on line 1) would share the folder name 'a%2Fb'"), "{m}");
    }

    #[test]
    fn fewer_than_two_classes() {
        assert_eq!(
            err_msg(classes("# only one\ncat\n")),
            "classes.txt: zero-shot labelling needs at least two classes, found 1"
        );
        assert!(matches!(
            classes("# nothing\n\n").unwrap_err(),
            PromptError::TooFewClasses { found: 0, .. }
        ));
        assert!(matches!(
            classes("").unwrap_err(),
            PromptError::TooFewClasses { found: 0, .. }
        ));
    }

    #[test]
    fn entry_errors_come_before_the_count_error() {
        assert!(matches!(
            classes(": x\n").unwrap_err(),
            PromptError::EmptyClassName { .. }
        ));
    }

    #[test]
    fn class_files_read_and_fail_with_path_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.txt");
        std::fs::write(
            &good,
            "\u{feff}# shapes\r\nred circle\r\nblue square: a blue square | a blue box\r\n",
        )
        .unwrap();
        let c = ClassList::from_file(&good).unwrap();
        assert_eq!(c.names(), vec!["red circle", "blue square"]);

        let bad = dir.path().join("bad.txt");
        std::fs::write(&bad, b"cat\ndog\nna\xefve\n").unwrap();
        let m = err_msg(ClassList::from_file(&bad));
        assert_eq!(
            m,
            format!(
                "{}:3: not valid UTF-8 (save the file as UTF-8)",
                bad.display()
            )
        );

        let dup = dir.path().join("dup.txt");
        std::fs::write(&dup, "cat\ndog\ncat\n").unwrap();
        let m = err_msg(ClassList::from_file(&dup));
        assert!(
            m.starts_with(&format!("{}:3: duplicate class name 'cat'", dup.display())),
            "{m}"
        );

        let missing = dir.path().join("missing.txt");
        let e = ClassList::from_file(&missing).unwrap_err();
        assert!(matches!(e, PromptError::Io { .. }));
        assert!(
            e.to_string()
                .starts_with(&format!("cannot read {}: ", missing.display())),
            "{e}"
        );
        // a directory is unreadable as a file too
        assert!(matches!(
            ClassList::from_file(dir.path()).unwrap_err(),
            PromptError::Io { .. }
        ));
    }

    #[test]
    fn from_names_uses_the_same_rules() {
        let c = ClassList::from_names(&strings(&["cat", " dog : puppy|hound ", "#1"])).unwrap();
        assert_eq!(c.names(), vec!["cat", "dog", "#1"]);
        assert_eq!(c.classes[1].synonyms, vec!["puppy", "hound"]);
        assert_eq!(
            err_msg(ClassList::from_names(&strings(&["cat", ""]))),
            "--class #2: empty class name"
        );
        let m = err_msg(ClassList::from_names(&strings(&["cat", "dog", "CAT"])));
        assert!(
            m.starts_with("--class #3: duplicate class name 'CAT': same as 'cat' on --class #1"),
            "{m}"
        );
        assert_eq!(
            err_msg(ClassList::from_names(&strings(&["cat"]))),
            "--class: zero-shot labelling needs at least two classes, found 1"
        );
        assert!(matches!(
            ClassList::from_names(&[]).unwrap_err(),
            PromptError::TooFewClasses { found: 0, .. }
        ));
    }

    // ---- safe_dir_name ----

    const TRICKY: &[&str] = &[
        "",
        "_",
        ".",
        "..",
        "...",
        " ",
        "  ",
        ". .",
        ".hidden",
        "trailing.",
        "trailing ",
        " lead",
        "a/b",
        "a\\b",
        "../../etc/passwd",
        "..\\..\\win",
        "a\0b",
        "tab\there",
        "new\nline",
        "\u{7f}del",
        "\u{85}nel",
        "C:drive",
        "what?",
        "star*",
        "pipe|",
        "<tag>",
        "\"quoted\"",
        "CON",
        "con",
        "con.txt",
        "Nul",
        "COM1",
        "lpt9.log",
        "COM0",
        "CONSOLE",
        "AUX ",
        "rtl\u{202E}gnp.exe",
        "zero\u{200B}width",
        "bom\u{FEFF}",
        "a%2Fb",
        "100%",
        "red circle",
        "ünïcödé 日本",
        "emoji 🐱",
        "a.b.c",
    ];

    fn assert_single_component(name: &str) {
        assert!(!name.is_empty());
        assert!(name != "." && name != "..");
        assert!(
            !name.contains('/') && !name.contains('\\') && !name.contains('\0'),
            "{name:?}"
        );
        assert!(!name.chars().any(|c| c.is_control()), "{name:?}");
        assert!(
            !name.starts_with(['.', ' ']) && !name.ends_with(['.', ' ']),
            "{name:?}"
        );
        assert!(name.len() <= MAX_DIR_NAME_BYTES, "{name:?}");
        assert!(!is_windows_reserved(name), "{name:?}");
        let comps: Vec<_> = Path::new(name).components().collect();
        assert_eq!(comps.len(), 1, "{name:?}");
        assert!(matches!(comps[0], Component::Normal(_)), "{name:?}");
    }

    #[test]
    fn safe_dir_name_examples() {
        assert_eq!(safe_dir_name("red circle"), "red circle");
        assert_eq!(safe_dir_name("ünïcödé 日本"), "ünïcödé 日本");
        assert_eq!(safe_dir_name("a.b.c"), "a.b.c");
        assert_eq!(safe_dir_name("AC/DC"), "AC%2FDC");
        assert_eq!(safe_dir_name("a\\b"), "a%5Cb");
        assert_eq!(safe_dir_name("."), "%2E");
        assert_eq!(safe_dir_name(".."), "%2E%2E");
        assert_eq!(safe_dir_name("../x"), "%2E.%2Fx");
        assert_eq!(safe_dir_name(".hidden"), "%2Ehidden");
        assert_eq!(safe_dir_name("end."), "end%2E");
        assert_eq!(safe_dir_name(" x "), "%20x%20");
        assert_eq!(safe_dir_name("a b"), "a b");
        assert_eq!(safe_dir_name("a\0b"), "a%00b");
        assert_eq!(safe_dir_name("a\nb"), "a%0Ab");
        assert_eq!(safe_dir_name("\u{85}"), "%C2%85");
        assert_eq!(safe_dir_name("what?"), "what%3F");
        assert_eq!(safe_dir_name("x:y"), "x%3Ay");
        assert_eq!(safe_dir_name("rtl\u{202E}x"), "rtl%E2%80%AEx");
        assert_eq!(safe_dir_name("CON"), "%43ON");
        assert_eq!(safe_dir_name("nul.txt"), "%6Eul.txt");
        assert_eq!(safe_dir_name("COM1"), "%43OM1");
        assert_eq!(safe_dir_name("COM0"), "COM0");
        assert_eq!(safe_dir_name("CONSOLE"), "CONSOLE");
        assert_eq!(safe_dir_name(""), "_");
        assert_eq!(safe_dir_name("100%"), "100%");
    }

    #[test]
    fn safe_dir_name_is_one_safe_component_and_idempotent() {
        let long_ascii = "x".repeat(500);
        let long_multi = "é".repeat(150) + &"日".repeat(50);
        let long_escapes = "/".repeat(100);
        let long_dots = ".".repeat(300);
        let mut inputs: Vec<String> = TRICKY.iter().map(|s| s.to_string()).collect();
        inputs.extend([
            long_ascii,
            long_multi,
            long_escapes,
            long_dots,
            "x".repeat(200),
            "x".repeat(201),
        ]);
        for s in &inputs {
            let once = safe_dir_name(s);
            assert_single_component(&once);
            assert_eq!(safe_dir_name(&once), once, "not idempotent for {s:?}");
        }
    }

    #[test]
    fn safe_dir_name_caps_length_on_a_char_boundary() {
        assert_eq!(safe_dir_name(&"x".repeat(200)), "x".repeat(200));
        let cut = safe_dir_name(&"x".repeat(201));
        assert_eq!(cut.len(), MAX_DIR_NAME_BYTES);
        assert!(
            cut.starts_with(&"x".repeat(191)) && cut.as_bytes()[191] == b'~',
            "{cut}"
        );
        let multi = safe_dir_name(&"日".repeat(100)); // 300 bytes
        assert!(multi.len() <= MAX_DIR_NAME_BYTES);
        assert!(multi
            .trim_end_matches(|c: char| c.is_ascii_hexdigit())
            .trim_end_matches('~')
            .chars()
            .all(|c| c == '日'));
        // escapes are never split
        let esc = safe_dir_name(&"/".repeat(100));
        let body = esc.split('~').next().unwrap();
        assert_eq!(body.len() % 3, 0);
        assert!(body.len() <= 191);
        // long names differing only at the end stay distinct
        let a = safe_dir_name(&("x".repeat(300) + "a"));
        let b = safe_dir_name(&("x".repeat(300) + "b"));
        assert_ne!(a, b);
        assert_eq!(a.len(), b.len());
    }

    #[test]
    fn safe_dir_name_keeps_distinct_labels_distinct() {
        let mut seen: HashMap<String, &str> = HashMap::new();
        // TRICKY minus the documented collisions ("" vs "_", "a%2Fb" vs "a/b")
        for s in TRICKY.iter().filter(|s| !s.is_empty() && **s != "a%2Fb") {
            let d = safe_dir_name(s);
            if let Some(prev) = seen.insert(d.clone(), s) {
                panic!("{prev:?} and {s:?} both map to {d:?}");
            }
        }
        assert_ne!(safe_dir_name("a/b"), safe_dir_name("a_b"));
        assert_ne!(safe_dir_name("a/b"), safe_dir_name("a\\b"));
        assert_ne!(safe_dir_name("."), safe_dir_name(".."));
        // documented collision
        assert_eq!(safe_dir_name("a/b"), safe_dir_name("a%2Fb"));
    }

    #[test]
    fn hash_is_stable() {
        // FNV-1a 64 reference values, so folder names never change between versions.
        assert_eq!(fnv1a64(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64("a"), 0xaf63_dc4c_8601_ec8c);
    }
}
