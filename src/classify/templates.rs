//! Prompt templates: sets of templates such as `a photo of a {}.`, from a file, the
//! command line or a set shipped in the binary, filled with class names to make prompts.
//!
//! One template per line, each containing exactly one `{}`, which is replaced by a prompt name.
//! Comments, blank lines, trimming, BOM and CRLF as for class lists. A template repeated in a set
//! (ignoring case and whitespace runs) is an error rather than silently dropped: a duplicate would
//! otherwise double that template's weight in the ensemble average.
//!
//! The sets in the repository's `prompts/` directory are compiled in ([`SHIPPED`]), so
//! [`Templates::resolve`] finds them by name wherever the binary is installed.

// `PromptError` is larger than clippy's `result_large_err` threshold; see `classes.rs`.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::path::Path;

use crate::classify::classes::{
    content_lines, decode, norm_key, read_file, ClassList, Location, PromptError, Result,
};

/// Template sets shipped with cliplabel, as `(name, file contents)`, compiled into the binary.
pub const SHIPPED: &[(&str, &str)] = &[
    ("photo", include_str!("../../prompts/photo.txt")),
    ("imagenet80", include_str!("../../prompts/imagenet80.txt")),
    ("imagenet7", include_str!("../../prompts/imagenet7.txt")),
    ("satellite", include_str!("../../prompts/satellite.txt")),
    ("textures", include_str!("../../prompts/textures.txt")),
    ("food", include_str!("../../prompts/food.txt")),
    ("pets", include_str!("../../prompts/pets.txt")),
    ("flowers", include_str!("../../prompts/flowers.txt")),
    ("cars", include_str!("../../prompts/cars.txt")),
    ("aircraft", include_str!("../../prompts/aircraft.txt")),
    ("cifar", include_str!("../../prompts/cifar.txt")),
    ("shapes", include_str!("../../prompts/shapes.txt")),
];

/// An ordered set of prompt templates, each with exactly one `{}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Templates {
    /// The templates, trimmed, in file order.
    pub templates: Vec<String>,
    /// Where they came from: a file path, `shipped set 'NAME'`, or `--template`.
    pub source: String,
}

/// Checks one template's placeholder count.
fn check_template(t: &str, at: &Location) -> Result<()> {
    let count = t.matches("{}").count();
    if count != 1 {
        return Err(PromptError::Placeholder {
            at: at.clone(),
            template: t.to_string(),
            count,
        });
    }
    Ok(())
}

impl Templates {
    /// Parses a template file's text; `source` names the file in error messages.
    pub fn parse(text: &str, source: &Path) -> Result<Self> {
        let origin = source.display().to_string();
        Self::parse_origin(text, &origin, origin.clone())
    }

    fn parse_origin(text: &str, origin: &str, source: String) -> Result<Self> {
        let entries = content_lines(text)
            .map(|(line, l)| (Location::line(origin, line), l.to_string()))
            .collect();
        Self::build(entries, origin, source)
    }

    /// Checks placeholders, duplicates and emptiness.
    fn build(entries: Vec<(Location, String)>, origin: &str, source: String) -> Result<Self> {
        let mut seen: HashMap<String, usize> = HashMap::new();
        for (i, (at, t)) in entries.iter().enumerate() {
            check_template(t, at)?;
            if let Some(&j) = seen.get(&norm_key(t)) {
                return Err(PromptError::DuplicateTemplate {
                    at: at.clone(),
                    template: t.clone(),
                    first: entries[j].0.clone(),
                });
            }
            seen.insert(norm_key(t), i);
        }
        if entries.is_empty() {
            return Err(PromptError::NoTemplates {
                origin: origin.to_string(),
            });
        }
        Ok(Templates {
            templates: entries.into_iter().map(|(_, t)| t).collect(),
            source,
        })
    }

    /// Reads and parses a template file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = read_file(path)?;
        let text = decode(&bytes, &path.display().to_string())?;
        Self::parse(text, path)
    }

    /// A set of one template given on the command line (`--template "a photo of a {}."`).
    pub fn from_single(template: &str) -> Result<Self> {
        Self::from_strings(&[template.to_string()])
    }

    /// A set from several `--template` values (trimmed; no comments). Errors name `--template #N`.
    pub fn from_strings(templates: &[String]) -> Result<Self> {
        let entries = templates
            .iter()
            .enumerate()
            .map(|(i, t)| (Location::arg("--template", i + 1), t.trim().to_string()))
            .collect();
        Self::build(entries, "--template", "--template".to_string())
    }

    /// The shipped set called `name` (see [`SHIPPED`]), or `None` if there is none.
    pub fn shipped(name: &str) -> Option<Self> {
        let (name, text) = SHIPPED.iter().find(|(n, _)| *n == name)?;
        let origin = format!("prompts/{name}.txt");
        // The shipped sets are checked by this module's tests, so this cannot fail.
        Some(
            Self::parse_origin(text, &origin, format!("shipped set '{name}'"))
                .expect("shipped template sets are valid"),
        )
    }

    /// Names of the shipped sets, in [`SHIPPED`] order.
    pub fn shipped_names() -> Vec<&'static str> {
        SHIPPED.iter().map(|(n, _)| *n).collect()
    }

    /// Resolves `--templates SPEC`: an existing file at path `SPEC` wins; otherwise `SPEC` must be
    /// the name of a shipped set (`photo`, `imagenet80`, ...).
    pub fn resolve(spec: &str) -> Result<Self> {
        let path = Path::new(spec);
        if path.is_file() {
            return Self::from_file(path);
        }
        Self::shipped(spec).ok_or_else(|| PromptError::UnknownTemplates {
            spec: spec.to_string(),
            shipped: Self::shipped_names().join(", "),
        })
    }

    /// Number of templates.
    pub fn len(&self) -> usize {
        self.templates.len()
    }

    /// True when there are no templates (never the case for a parsed set).
    pub fn is_empty(&self) -> bool {
        self.templates.is_empty()
    }

    /// Every template with its `{}` replaced by `name`, in template order.
    pub fn fill(&self, name: &str) -> Vec<String> {
        self.templates
            .iter()
            .map(|t| t.replacen("{}", name, 1))
            .collect()
    }

    /// All `(class index, prompt)` pairs for `classes`: class by class, then synonym by synonym,
    /// then template by template (`len() * total synonyms` pairs).
    pub fn prompts(&self, classes: &ClassList) -> Vec<(usize, String)> {
        classes
            .classes
            .iter()
            .enumerate()
            .flat_map(|(i, c)| {
                c.synonyms
                    .iter()
                    .flat_map(move |s| self.fill(s))
                    .map(move |p| (i, p))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> &Path {
        Path::new(s)
    }

    fn err_msg(r: Result<impl std::fmt::Debug>) -> String {
        r.expect_err("expected an error").to_string()
    }

    fn classes(text: &str) -> Result<ClassList> {
        ClassList::parse(text, p("classes.txt"))
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    // ---- templates ----

    fn templates(text: &str) -> Result<Templates> {
        Templates::parse(text, p("t.txt"))
    }

    #[test]
    fn templates_parse_with_comments_bom_crlf() {
        let t = templates("\u{feff}# source: me\r\n\r\n  a photo of a {}.  \r\n# mid comment\r\nart of the {}.\r\n").unwrap();
        assert_eq!(t.templates, vec!["a photo of a {}.", "art of the {}."]);
        assert_eq!(t.source, "t.txt");
        assert_eq!(t.len(), 2);
        assert!(!t.is_empty());
    }

    #[test]
    fn template_placeholder_count_errors() {
        let m = err_msg(templates("# c\na photo of a {}.\na photo of a cat.\n"));
        assert_eq!(
            m,
            "t.txt:3: template \"a photo of a cat.\" must contain exactly one `{}`, found 0"
        );
        let e = templates("a {} and a {}.\n").unwrap_err();
        assert!(
            matches!(e, PromptError::Placeholder { count: 2, .. }),
            "{e}"
        );
        assert!(e.to_string().starts_with("t.txt:1: "), "{e}");
        // other braces are not placeholders
        assert!(matches!(
            templates("a photo of a {name}.").unwrap_err(),
            PromptError::Placeholder { count: 0, .. }
        ));
    }

    #[test]
    fn empty_template_set() {
        assert_eq!(
            err_msg(templates("# nothing here\n\n")),
            "t.txt: no templates (only comments and blank lines)"
        );
        assert!(matches!(
            templates("").unwrap_err(),
            PromptError::NoTemplates { .. }
        ));
        assert!(matches!(
            Templates::from_strings(&[]).unwrap_err(),
            PromptError::NoTemplates { .. }
        ));
    }

    #[test]
    fn duplicate_templates_are_errors() {
        let m = err_msg(templates(
            "a photo of a {}.\nart of a {}.\nA photo of  a {}.\n",
        ));
        assert!(
            m.starts_with("t.txt:3: duplicate template \"A photo of  a {}.\": same as line 1"),
            "{m}"
        );
    }

    #[test]
    fn single_and_command_line_templates() {
        let t = Templates::from_single(" a photo of a {}. ").unwrap();
        assert_eq!(t.templates, vec!["a photo of a {}."]);
        assert_eq!(t.source, "--template");
        assert_eq!(
            err_msg(Templates::from_single("a photo")),
            "--template #1: template \"a photo\" must contain exactly one `{}`, found 0"
        );
        let t = Templates::from_strings(&strings(&["a {}.", "the {}."])).unwrap();
        assert_eq!(t.len(), 2);
        assert!(
            err_msg(Templates::from_strings(&strings(&["a {}.", "{} {}"])))
                .starts_with("--template #2: ")
        );
        assert!(matches!(
            Templates::from_strings(&strings(&["a {}.", "a {}."])).unwrap_err(),
            PromptError::DuplicateTemplate { .. }
        ));
    }

    #[test]
    fn fill_and_prompt_pairs() {
        let t = templates("a photo of a {}.\n{} art\n").unwrap();
        assert_eq!(
            t.fill("red circle"),
            vec!["a photo of a red circle.", "red circle art"]
        );
        // a name containing {} is inserted literally
        assert_eq!(t.fill("{}"), vec!["a photo of a {}.", "{} art"]);
        let c = classes("cat: kitty | tabby\ndog\n").unwrap();
        let pairs = t.prompts(&c);
        assert_eq!(
            pairs,
            vec![
                (0, "a photo of a kitty.".to_string()),
                (0, "kitty art".to_string()),
                (0, "a photo of a tabby.".to_string()),
                (0, "tabby art".to_string()),
                (1, "a photo of a dog.".to_string()),
                (1, "dog art".to_string()),
            ]
        );
    }

    #[test]
    fn template_files_and_resolve() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("mine.txt");
        std::fs::write(&f, "# mine\nan image of a {}.\n").unwrap();
        let t = Templates::resolve(f.to_str().unwrap()).unwrap();
        assert_eq!(t.templates, vec!["an image of a {}."]);
        assert_eq!(t.source, f.display().to_string());

        // a file that exists wins over a shipped name
        let photo = dir.path().join("photo");
        std::fs::write(&photo, "my {}\n").unwrap();
        assert_eq!(
            Templates::resolve(photo.to_str().unwrap())
                .unwrap()
                .templates,
            vec!["my {}"]
        );

        let t = Templates::resolve("imagenet7").unwrap();
        assert_eq!(t.len(), 7);
        assert_eq!(t.source, "shipped set 'imagenet7'");

        let m = err_msg(Templates::resolve("nosuchset"));
        assert!(
            m.starts_with("'nosuchset' is neither a template file nor a shipped template set"),
            "{m}"
        );
        for name in Templates::shipped_names() {
            assert!(m.contains(name), "{m} lacks {name}");
        }
        // a directory is not a template file
        assert!(matches!(
            Templates::resolve(dir.path().to_str().unwrap()).unwrap_err(),
            PromptError::UnknownTemplates { .. }
        ));

        let bad = dir.path().join("bad.txt");
        std::fs::write(&bad, "a {}\nb\n").unwrap();
        let m = err_msg(Templates::resolve(bad.to_str().unwrap()));
        assert!(
            m.starts_with(&format!("{}:2: template \"b\"", bad.display())),
            "{m}"
        );
        let bin = dir.path().join("bin.txt");
        std::fs::write(&bin, b"a {}\n\xff{}\n").unwrap();
        assert_eq!(
            err_msg(Templates::from_file(&bin)),
            format!(
                "{}:2: not valid UTF-8 (save the file as UTF-8)",
                bin.display()
            )
        );
        assert!(matches!(
            Templates::from_file(&dir.path().join("none.txt")).unwrap_err(),
            PromptError::Io { .. }
        ));
    }

    #[test]
    fn shipped_sets_are_valid_with_expected_counts() {
        let expected = [
            ("photo", 1),
            ("imagenet80", 80),
            ("imagenet7", 7),
            ("satellite", 21),
            ("textures", 8),
            ("food", 1),
            ("pets", 1),
            ("flowers", 1),
            ("cars", 8),
            ("aircraft", 2),
            ("cifar", 18),
            ("shapes", 5),
        ];
        assert_eq!(
            Templates::shipped_names(),
            expected.iter().map(|(n, _)| *n).collect::<Vec<_>>()
        );
        for (name, count) in expected {
            let (_, text) = SHIPPED.iter().find(|(n, _)| *n == name).unwrap();
            let t =
                Templates::parse(text, Path::new(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(t.len(), count, "{name}");
            assert!(
                t.templates.iter().all(|t| t.matches("{}").count() == 1),
                "{name}"
            );
            assert!(text.starts_with('#'), "{name} lacks a source comment");
            assert_eq!(Templates::shipped(name).unwrap().templates, t.templates);
        }
        assert_eq!(
            Templates::shipped("photo").unwrap().templates,
            vec!["a photo of a {}."]
        );
        let i80 = Templates::shipped("imagenet80").unwrap();
        assert_eq!(i80.templates[0], "a bad photo of a {}.");
        assert_eq!(i80.templates[79], "a tattoo of the {}.");
        // the 7 are a subset of the 80
        for t in Templates::shipped("imagenet7").unwrap().templates {
            assert!(i80.templates.contains(&t), "{t}");
        }
        assert!(Templates::shipped("nope").is_none());
    }
}
