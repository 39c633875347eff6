//! The report of `cliplabel compare`: `results.json`, `report.md`, and the few-shot plot
//! (`shots.svg`, `shots.png`), plus the compact table printed to the terminal.
//!
//! Every number that `report.md` and the terminal table show is computed once, by
//! [`summarize`], rounded with [`round_pct`] (percent, two decimals), stored in
//! `results.json`'s `summary`, and printed with two decimals, so the three always agree.
//!
//! The plot is drawn with plotters' SVG backend and rasterised with resvg. Both use the DejaVu
//! Sans font embedded in the binary (`assets/DejaVuSans.ttf`): plotters measures text with it
//! and resvg draws with it, so the PNG looks the same on any machine, with or without fonts.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

use crate::eval::metrics::{mean_std, Metrics};
use crate::util::atomic::write_atomic;

mod markdown;
mod plot;

use markdown::*;
pub use markdown::{details_text, summary_table};
use plot::*;
pub mod calibration;

/// `MethodRun::family` of zero-shot (prompt) classifiers.
pub const FAMILY_ZERO_SHOT: &str = "zero-shot";
/// `MethodRun::family` of the linear probe.
pub const FAMILY_PROBE: &str = "probe";
/// `MethodRun::family` of the probe initialised from, and regularised toward, zero-shot.
pub const FAMILY_ZERO_SHOT_INIT: &str = "zero-shot-init";
/// `MethodRun::family` of the interpolation of zero-shot and probe logits.
pub const FAMILY_INTERPOLATION: &str = "interpolation";

/// Confusion matrices are shown in `report.md` only up to this many classes.
pub const MAX_CONFUSION_CLASSES: usize = 30;

/// Everything `compare` measured: the inputs' description and every method's metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompareResults {
    /// The model as given on the command line.
    pub model: String,
    /// Class names, in label order.
    pub classes: Vec<String>,
    /// Number of training images (all of them, before k-shot sampling).
    pub n_train: usize,
    /// Number of test images.
    pub n_test: usize,
    /// Number of seeds each sampled run was repeated with.
    pub seeds: usize,
    /// The evaluated runs, in the order the report lists them.
    pub runs: Vec<MethodRun>,
    /// Requested shot counts that were run differently or skipped, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// One method at one setting (one shot count), evaluated once per seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MethodRun {
    /// Display name, e.g. `zero-shot: photo`, `zero-shot: ensemble`, `linear probe`,
    /// `zero-shot init`, `interpolation`. Runs of one method at several shot counts share it.
    pub method: String,
    /// [`FAMILY_ZERO_SHOT`], [`FAMILY_PROBE`], [`FAMILY_ZERO_SHOT_INIT`] or [`FAMILY_INTERPOLATION`].
    pub family: String,
    /// Labelled training examples per class; `None` means all of them (or, for zero-shot, none).
    pub shots: Option<usize>,
    /// Metrics on the test set, one per seed (one entry for deterministic methods).
    pub per_seed: Vec<Metrics>,
    /// Method-specific choices, e.g. `{"C": 0.316}` or `{"alpha": 0.4}`.
    pub details: serde_json::Value,
}

impl MethodRun {
    /// Whether this is a prompt-only run (drawn as a horizontal line, not against shots).
    pub fn is_zero_shot(&self) -> bool {
        self.family == FAMILY_ZERO_SHOT
    }

    /// Mean and sample std over seeds of the top-1 accuracy (fractions).
    pub fn top1_mean_std(&self) -> (f64, f64) {
        mean_std(&self.per_seed.iter().map(|m| m.top1).collect::<Vec<_>>())
    }

    /// Mean and sample std over seeds of the top-5 accuracy; `None` with fewer than 5 classes.
    pub fn top5_mean_std(&self) -> Option<(f64, f64)> {
        let xs: Option<Vec<f64>> = self.per_seed.iter().map(|m| m.top5).collect();
        xs.filter(|xs| !xs.is_empty()).map(|xs| mean_std(&xs))
    }

    /// Mean and sample std over seeds of the macro-F1 (fractions).
    pub fn macro_f1_mean_std(&self) -> (f64, f64) {
        mean_std(&self.per_seed.iter().map(|m| m.macro_f1).collect::<Vec<_>>())
    }

    /// Per-class accuracy averaged over seeds; `None` for classes absent from the test set.
    pub fn per_class_accuracy_mean(&self) -> Vec<Option<f64>> {
        let n_classes = self
            .per_seed
            .first()
            .map_or(0, |m| m.per_class_accuracy.len());
        (0..n_classes)
            .map(|c| {
                let xs: Option<Vec<f64>> = self
                    .per_seed
                    .iter()
                    .map(|m| m.per_class_accuracy.get(c).copied().flatten())
                    .collect();
                xs.map(|xs| mean_std(&xs).0)
            })
            .collect()
    }

    /// The confusion matrices of all seeds added together (`[true][predicted]`).
    pub fn confusion_total(&self) -> Vec<Vec<usize>> {
        let mut total: Vec<Vec<usize>> = Vec::new();
        for m in &self.per_seed {
            if total.is_empty() {
                total = m.confusion.clone();
                continue;
            }
            for (t, row) in total.iter_mut().zip(&m.confusion) {
                for (a, b) in t.iter_mut().zip(row) {
                    *a += b;
                }
            }
        }
        total
    }

    /// The shot count as shown in tables: `0` for zero-shot, `all`, or the number.
    pub fn shots_label(&self) -> String {
        match (self.is_zero_shot(), self.shots) {
            (true, _) => "0".into(),
            (false, None) => "all".into(),
            (false, Some(k)) => k.to_string(),
        }
    }

    /// The run's name with its shot count, e.g. `linear probe (16 shots)`.
    pub fn label(&self) -> String {
        match (self.is_zero_shot(), self.shots) {
            (true, _) => self.method.clone(),
            (false, None) => format!("{} (all)", self.method),
            (false, Some(1)) => format!("{} (1 shot)", self.method),
            (false, Some(k)) => format!("{} ({k} shots)", self.method),
        }
    }
}

/// Rounds a fraction to a percentage with two decimals (0.123456 → 12.35). Every number in
/// `report.md`, the terminal table and `results.json`'s `summary` goes through this.
pub fn round_pct(fraction: f64) -> f64 {
    (fraction * 10_000.0).round() / 100.0
}

/// A mean and sample standard deviation over seeds, in percent, rounded by [`round_pct`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Stat {
    pub mean: f64,
    pub std: f64,
}

impl Stat {
    fn from_fractions((mean, std): (f64, f64)) -> Self {
        Stat {
            mean: round_pct(mean),
            std: round_pct(std),
        }
    }

    /// `76.25` for one seed, `76.25 ± 1.10` for several.
    pub fn display(&self, seeds: usize) -> String {
        if seeds > 1 {
            format!("{:.2} ± {:.2}", self.mean, self.std)
        } else {
            format!("{:.2}", self.mean)
        }
    }
}

/// The rounded numbers the report shows for one run (`results.json`'s `summary[i]` describes
/// `runs[i]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    pub method: String,
    pub family: String,
    pub shots: Option<usize>,
    /// Number of seeds (metrics) behind the means.
    pub seeds: usize,
    /// Top-1 accuracy, percent.
    pub top1_pct: Stat,
    /// Top-5 accuracy, percent; absent with fewer than 5 classes.
    pub top5_pct: Option<Stat>,
    /// Macro-F1, percent.
    pub macro_f1_pct: Stat,
    /// Whether this run has the highest mean top-1 of its family (the first one on ties);
    /// `report.md` details these runs.
    pub best_in_family: bool,
    /// The run's `details`, shortened as `report.md` shows them (see [`details_text`]).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
    /// For the best run of each family: per-class accuracy in percent, mean over seeds
    /// (`null` for classes with no test images).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_class_accuracy_pct: Option<Vec<Option<f64>>>,
    /// For the best run of each family: the confusion counts summed over seeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confusion_total: Option<Vec<Vec<usize>>>,
}

/// The contents of `results.json`: the results, plus the rounded summary that `report.md` shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultsFile {
    #[serde(flatten)]
    pub results: CompareResults,
    /// Mean number of training images per class: where "all" sits on the plot's x-axis.
    pub mean_train_per_class: f64,
    /// One entry per run, in the same order.
    pub summary: Vec<RunSummary>,
}

impl ResultsFile {
    /// The contents of `results.json` for `r` (what [`write_report`] writes; the Python
    /// package's `compare` returns it as a dict).
    pub fn new(r: &CompareResults) -> Self {
        ResultsFile {
            results: r.clone(),
            mean_train_per_class: mean_train_per_class(r),
            summary: summarize(r),
        }
    }
}

/// Index of the best run (highest mean top-1, first on ties) of each family, in order of first
/// appearance.
fn best_per_family(r: &CompareResults) -> Vec<usize> {
    let mut best: Vec<usize> = Vec::new();
    for (i, run) in r.runs.iter().enumerate() {
        match best.iter_mut().find(|b| r.runs[**b].family == run.family) {
            Some(b) => {
                if run.top1_mean_std().0 > r.runs[*b].top1_mean_std().0 {
                    *b = i;
                }
            }
            None => best.push(i),
        }
    }
    best
}

/// Mean training images per class, rounded to two decimals.
fn mean_train_per_class(r: &CompareResults) -> f64 {
    let per_class = r.n_train as f64 / r.classes.len().max(1) as f64;
    (per_class * 100.0).round() / 100.0
}

/// The rounded summary of every run, in order.
pub fn summarize(r: &CompareResults) -> Vec<RunSummary> {
    let best = best_per_family(r);
    r.runs
        .iter()
        .enumerate()
        .map(|(i, run)| {
            let is_best = best.contains(&i);
            RunSummary {
                method: run.method.clone(),
                family: run.family.clone(),
                shots: run.shots,
                seeds: run.per_seed.len(),
                top1_pct: Stat::from_fractions(run.top1_mean_std()),
                top5_pct: run.top5_mean_std().map(Stat::from_fractions),
                macro_f1_pct: Stat::from_fractions(run.macro_f1_mean_std()),
                best_in_family: is_best,
                details: details_text(&run.details),
                per_class_accuracy_pct: is_best.then(|| {
                    run.per_class_accuracy_mean()
                        .into_iter()
                        .map(|a| a.map(round_pct))
                        .collect()
                }),
                confusion_total: is_best.then(|| run.confusion_total()),
            }
        })
        .collect()
}

/// A failure to write the report, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The report directory could not be created.
    #[error("{path}: cannot create the report directory: {source}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A report file could not be written.
    #[error("{path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The results could not be serialised.
    #[error("{path}: cannot serialise the results: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// The plot could not be drawn.
    #[error("{path}: cannot draw the plot: {message}")]
    Plot { path: PathBuf, message: String },
    /// The plot could not be rasterised to PNG.
    #[error("{path}: cannot render the plot as PNG: {message}")]
    Render { path: PathBuf, message: String },
}

/// Writes `dir/results.json`, `dir/report.md`, `dir/shots.svg` and `dir/shots.png`, creating
/// `dir` if needed. Everything is rendered before anything is written, and each file is written
/// atomically.
pub fn write_report(dir: &Path, r: &CompareResults) -> Result<(), ReportError> {
    std::fs::create_dir_all(dir).map_err(|source| ReportError::CreateDir {
        path: dir.to_path_buf(),
        source,
    })?;
    let json_path = dir.join("results.json");
    let svg_path = dir.join("shots.svg");
    let png_path = dir.join("shots.png");

    let file = ResultsFile::new(r);
    let json = to_json_pretty(&file).map_err(|source| ReportError::Json {
        path: json_path.clone(),
        source,
    })?;
    let md = markdown(&file);
    let svg = plot_svg(&file).map_err(|message| ReportError::Plot {
        path: svg_path.clone(),
        message,
    })?;
    let png = svg_to_png(&svg, PNG_SCALE).map_err(|message| ReportError::Render {
        path: png_path.clone(),
        message,
    })?;

    let write = |path: PathBuf, bytes: &[u8]| {
        write_atomic(&path, bytes).map_err(|source| ReportError::Write { path, source })
    };
    write(json_path, json.as_bytes())?;
    write(dir.join("report.md"), md.as_bytes())?;
    write(svg_path, svg.as_bytes())?;
    write(png_path, &png)
}

/// Pretty JSON (two-space indent) with arrays of plain values (numbers, strings, null) on one
/// line, so confusion matrices read as matrices, and small flat objects such as
/// `{"mean": 76.25, "std": 1.1}` on one line too.
fn to_json_pretty<T: Serialize>(value: &T) -> Result<String, serde_json::Error> {
    let pretty = serde_json::to_string_pretty(value)?;
    // serde_json puts every element and member on its own line and escapes newlines inside
    // strings, so a line ending in `[` or `{` opens a container, and a line starting with `]`
    // or `}` closes one.
    let arrays = collapse(&pretty, '[', ']', |items| {
        items.iter().all(|l| !l.starts_with(['[', '{']))
    });
    Ok(collapse(&arrays, '{', '}', |members| {
        members.len() <= 4
            && members.iter().map(|m| m.len()).sum::<usize>() <= 80
            && members.iter().all(|m| {
                // `"key": value` where value is no container; a key is a JSON string, so the
                // first `": ` after its closing quote separates it from the value.
                json_member_value(m).is_some_and(|v| !v.starts_with(['[', '{']))
            })
    }))
}

/// Joins each container opened by a line ending in `open` onto that line when `flat(elements)`
/// accepts its (trimmed) element lines.
fn collapse(text: &str, open: char, close: char, flat: impl Fn(&[&str]) -> bool) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if line.ends_with(open) {
            // The first line at the opener's indentation closes it.
            let indent = line.len() - line.trim_start().len();
            let end = (i + 1..lines.len()).find(|&j| {
                let t = lines[j].trim_start();
                lines[j].len() - t.len() == indent && t.starts_with(close)
            });
            if let Some(j) = end {
                let items: Vec<&str> = lines[i + 1..j].iter().map(|l| l.trim()).collect();
                if flat(&items) {
                    out.push_str(line);
                    out.push_str(&items.join(" "));
                    out.push_str(lines[j].trim_start());
                    out.push('\n');
                    i = j + 1;
                    continue;
                }
            }
        }
        out.push_str(line);
        out.push('\n');
        i += 1;
    }
    out
}

/// The value part of a pretty-printed object member line `"key": value`.
fn json_member_value(line: &str) -> Option<&str> {
    let rest = line.strip_prefix('"')?;
    let mut escaped = false;
    for (k, ch) in rest.char_indices() {
        match (escaped, ch) {
            (false, '\\') => escaped = true,
            (false, '"') => return rest[k + 1..].strip_prefix(": "),
            _ => escaped = false,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::metrics::evaluate;

    /// Metrics of a classifier that gets `correct[c]` of the `per_class` test images of class
    /// `c` right and mistakes the rest for the next class.
    fn metrics(n_classes: usize, per_class: usize, correct: &[usize]) -> Metrics {
        let mut scores = Vec::new();
        let mut labels = Vec::new();
        for (c, &right) in correct.iter().enumerate().take(n_classes) {
            for i in 0..per_class {
                let p = if i < right { c } else { (c + 1) % n_classes };
                let mut row: Vec<f32> = (0..n_classes).map(|j| j as f32 * 0.01).collect();
                row[p] = 1.0;
                scores.push(row);
                labels.push(c);
            }
        }
        evaluate(&scores, &labels, n_classes)
    }

    /// A run whose seed `s` gets `base + s` (capped) of each class's `per_class` images right,
    /// varying a little by class.
    fn run(
        method: &str,
        family: &str,
        shots: Option<usize>,
        seeds: usize,
        base: usize,
        n_classes: usize,
        per_class: usize,
    ) -> MethodRun {
        MethodRun {
            method: method.into(),
            family: family.into(),
            shots,
            per_seed: (0..seeds)
                .map(|s| {
                    let correct: Vec<usize> = (0..n_classes)
                        .map(|c| (base + s + c % 3).min(per_class))
                        .collect();
                    metrics(n_classes, per_class, &correct)
                })
                .collect(),
            details: if family == FAMILY_PROBE {
                serde_json::json!({ "C": 0.316, "cv_accuracy": 0.71 })
            } else {
                serde_json::Value::Null
            },
        }
    }

    /// `a == b`, except that floats may differ in the last bit: serde_json's default float
    /// parser (without its `float_roundtrip` feature) is not always correctly rounded.
    fn assert_same_results(a: &CompareResults, b: &CompareResults) {
        let close = |x: f64, y: f64| (x - y).abs() <= 1e-15 * x.abs().max(1.0);
        assert_eq!(
            (&a.model, &a.classes, a.n_train, a.n_test, a.seeds),
            (&b.model, &b.classes, b.n_train, b.n_test, b.seeds)
        );
        assert_eq!(a.runs.len(), b.runs.len());
        for (ra, rb) in a.runs.iter().zip(&b.runs) {
            assert_eq!(
                (&ra.method, &ra.family, ra.shots, &ra.details),
                (&rb.method, &rb.family, rb.shots, &rb.details)
            );
            assert_eq!(ra.per_seed.len(), rb.per_seed.len());
            for (ma, mb) in ra.per_seed.iter().zip(&rb.per_seed) {
                assert_eq!((&ma.confusion, ma.n), (&mb.confusion, mb.n));
                assert!(close(ma.top1, mb.top1) && close(ma.macro_f1, mb.macro_f1));
                assert_eq!(ma.top5.is_some(), mb.top5.is_some());
                assert!(close(ma.top5.unwrap_or(0.0), mb.top5.unwrap_or(0.0)));
                for (pa, pb) in ma.per_class_accuracy.iter().zip(&mb.per_class_accuracy) {
                    assert_eq!(pa.is_some(), pb.is_some());
                    assert!(close(pa.unwrap_or(0.0), pb.unwrap_or(0.0)));
                }
            }
        }
    }

    fn synthetic(n_classes: usize) -> CompareResults {
        let per_class = 20;
        let mut runs = vec![
            run(
                "zero-shot: photo",
                FAMILY_ZERO_SHOT,
                None,
                1,
                11,
                n_classes,
                per_class,
            ),
            run(
                "zero-shot: ensemble",
                FAMILY_ZERO_SHOT,
                None,
                1,
                13,
                n_classes,
                per_class,
            ),
        ];
        for (shots, base) in [
            (Some(1), 4),
            (Some(2), 7),
            (Some(4), 10),
            (Some(8), 13),
            (Some(16), 15),
            (None, 16),
        ] {
            runs.push(run(
                "linear probe",
                FAMILY_PROBE,
                shots,
                3,
                base,
                n_classes,
                per_class,
            ));
        }
        for (shots, base) in [(Some(1), 13), (Some(4), 14), (Some(16), 16), (None, 17)] {
            runs.push(run(
                "zero-shot init",
                FAMILY_ZERO_SHOT_INIT,
                shots,
                3,
                base,
                n_classes,
                per_class,
            ));
        }
        for (shots, base) in [(Some(1), 12), (Some(4), 13), (Some(16), 15), (None, 16)] {
            runs.push(run(
                "interpolation",
                FAMILY_INTERPOLATION,
                shots,
                3,
                base,
                n_classes,
                per_class,
            ));
        }
        CompareResults {
            model: "openai/clip-vit-base-patch32".into(),
            classes: (0..n_classes).map(|c| format!("class {c}")).collect(),
            n_train: n_classes * 50 + 3,
            n_test: n_classes * per_class,
            seeds: 3,
            runs,
            notes: Vec::new(),
        }
    }

    #[test]
    fn write_report_produces_consistent_files() {
        let r = synthetic(6);
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("report");
        write_report(&out, &r).unwrap();
        for name in ["results.json", "report.md", "shots.svg", "shots.png"] {
            assert!(out.join(name).is_file(), "{name} missing");
        }

        // The PNG decodes, has the expected size, and is neither blank nor monochrome.
        let png = image::open(out.join("shots.png")).unwrap().to_rgb8();
        let scale = f64::from(PNG_SCALE);
        assert_eq!(png.width(), (f64::from(WIDTH) * scale).round() as u32);
        assert_eq!(png.height(), (f64::from(HEIGHT) * scale).round() as u32);
        let non_white = png.pixels().filter(|p| p.0 != [255, 255, 255]).count();
        let frac = non_white as f64 / (png.width() * png.height()) as f64;
        assert!(frac > 0.02 && frac < 0.6, "non-white fraction {frac}");
        let blue = png
            .pixels()
            .filter(|p| p.0[2] > 150 && p.0[0] < 80 && p.0[1] < 160)
            .count();
        assert!(blue > 100, "no probe line in the PNG");
        let red = png
            .pixels()
            .filter(|p| p.0[0] > 180 && p.0[1] < 80 && p.0[2] < 80)
            .count();
        assert!(red > 100, "no zero-shot line in the PNG");

        let svg = std::fs::read_to_string(out.join("shots.svg")).unwrap();
        for m in [
            "zero-shot: photo",
            "zero-shot: ensemble",
            "linear probe",
            "zero-shot init",
        ] {
            assert!(svg.contains(m), "SVG lacks {m}");
        }
        assert!(svg.contains("font-family=\"DejaVu Sans, sans-serif\""));

        // results.json holds the input unchanged, plus a summary.
        let json = std::fs::read_to_string(out.join("results.json")).unwrap();
        let file: ResultsFile = serde_json::from_str(&json).unwrap();
        assert_same_results(&file.results, &r);
        assert_same_results(&serde_json::from_str::<CompareResults>(&json).unwrap(), &r);
        assert_eq!(file.summary.len(), r.runs.len());

        // Every summary row of report.md shows exactly results.json's numbers.
        let md = std::fs::read_to_string(out.join("report.md")).unwrap();
        let rows: Vec<Vec<String>> = md
            .lines()
            .skip_while(|l| !l.starts_with("## Results"))
            .filter(|l| l.starts_with("| ") && !l.starts_with("| Method"))
            .take_while(|l| !l.starts_with("| #"))
            .map(|l| {
                l.split(" | ")
                    .map(|c| c.trim_matches(['|', ' ']).to_string())
                    .collect()
            })
            .collect();
        assert_eq!(rows.len(), r.runs.len());
        let raw: serde_json::Value = serde_json::from_str(&json).unwrap();
        for (row, s) in rows.iter().zip(raw["summary"].as_array().unwrap()) {
            let stat = |v: &serde_json::Value| {
                let (m, sd) = (v["mean"].as_f64().unwrap(), v["std"].as_f64().unwrap());
                if s["seeds"].as_u64().unwrap() > 1 {
                    format!("{m:.2} ± {sd:.2}")
                } else {
                    format!("{m:.2}")
                }
            };
            assert_eq!(row[0], s["method"].as_str().unwrap());
            assert_eq!(row[3], stat(&s["top1_pct"]));
            assert_eq!(row[4], stat(&s["top5_pct"]));
            assert_eq!(row[5], stat(&s["macro_f1_pct"]));
        }
        // And the summary is the rounded metrics.
        for (s, run) in file.summary.iter().zip(&r.runs) {
            assert_eq!(s.top1_pct.mean, round_pct(run.top1_mean_std().0));
            assert_eq!(s.top1_pct.std, round_pct(run.top1_mean_std().1));
        }
        // One best run per family, detailed in the report.
        let best: Vec<&RunSummary> = file.summary.iter().filter(|s| s.best_in_family).collect();
        assert_eq!(best.len(), 4);
        assert!(md.contains("## Per-class accuracy") && md.contains("| true \\ predicted |"));
        assert!(md.contains("| 0 class 0 |"));
        // The terminal table agrees too.
        let table = summary_table(&r);
        assert!(
            table.contains(&file.summary[3].top1_pct.display(3)),
            "{table}"
        );
    }

    #[test]
    fn zero_shot_only_and_few_classes() {
        let mut r = synthetic(3);
        r.runs.retain(|run| run.is_zero_shot());
        r.seeds = 1;
        let dir = tempfile::tempdir().unwrap();
        write_report(dir.path(), &r).unwrap();
        let md = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
        assert!(md.contains("no top-5"));
        assert!(!md.contains('±'));
        let png = image::open(dir.path().join("shots.png")).unwrap();
        assert!(png.width() > 0);
        let table = summary_table(&r);
        assert_eq!(table.lines().count(), 4, "{table}");
    }

    #[test]
    fn many_classes_list_top_confusions() {
        let r = synthetic(40);
        let dir = tempfile::tempdir().unwrap();
        write_report(dir.path(), &r).unwrap();
        let md = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
        assert!(md.contains("most frequent confusions"));
        assert!(!md.contains("| true \\ predicted |"));
        assert!(md.contains("| True class | Predicted as | Count |"));
    }

    #[test]
    fn json_keeps_scalar_arrays_on_one_line() {
        let v = serde_json::json!({
            "a": [1, 2, 3],
            "m": [[1, 0], [0, 1]],
            "s": ["x [", "]", "{"],
            "e": [],
            "o": [{"k": [0.5, null]}],
            "stat": {"mean": 1.5, "std": 0.25},
            "nested": {"a\\\": [": {"b": 1}, "c": 2},
        });
        let s = to_json_pretty(&v).unwrap();
        assert!(s.contains("\"a\": [1, 2, 3]"), "{s}");
        assert!(s.contains("    [1, 0],\n    [0, 1]\n"), "{s}");
        assert!(s.contains("\"s\": [\"x [\", \"]\", \"{\"]"), "{s}");
        assert!(s.contains("      \"k\": [0.5, null]\n"), "{s}");
        assert!(
            s.contains("\"stat\": {\"mean\": 1.5, \"std\": 0.25}"),
            "{s}"
        );
        assert!(s.contains("\"b\": 1}"), "{s}");
        assert!(!s.contains("\"c\": 2}"), "{s}");
        assert_eq!(serde_json::from_str::<serde_json::Value>(&s).unwrap(), v);
    }

    #[test]
    fn markdown_cells_are_escaped_and_errors_name_the_file() {
        let mut r = synthetic(3);
        r.classes[1] = "a|b".into();
        let dir = tempfile::tempdir().unwrap();
        write_report(dir.path(), &r).unwrap();
        let md = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
        assert!(md.contains("a\\|b"));

        // A file where the directory should be.
        let blocked = dir.path().join("results.json").join("sub");
        let err = write_report(&blocked, &r).unwrap_err();
        assert!(err.to_string().contains("sub"), "{err}");
    }

    #[test]
    fn details_are_shortened() {
        use serde_json::json;
        assert_eq!(details_text(&json!(null)), "");
        assert_eq!(details_text(&json!({"templates": 18})), "templates=18");
        let per_seed = json!([
            {"seed": 0, "c": 0.31622776601683794, "cv_accuracy": 0.7083333333333334, "alpha": null, "train_examples": 96},
            {"seed": 1, "c": 1.0, "cv_accuracy": 0.7, "alpha": null, "train_examples": 96},
            {"seed": 2, "c": 3.1622776601683795e-5, "cv_accuracy": 0.72, "alpha": null, "train_examples": 96},
        ]);
        assert_eq!(
            details_text(&per_seed),
            "c=0.316/1/3.16e-5, cv_accuracy=0.708/0.7/0.72, train_examples=96"
        );
        assert_eq!(short_number(1234.5678), "1235");
        assert_eq!(short_number(31.62), "31.6");
        assert_eq!(short_number(-0.5), "-0.5");
        assert_eq!(short_number(0.001234), "0.00123");
    }

    #[test]
    fn ticks_place_all_at_the_mean_count() {
        let r = synthetic(6);
        let f = ResultsFile {
            mean_train_per_class: mean_train_per_class(&r),
            summary: summarize(&r),
            results: r,
        };
        let (_, curves) = plot_series(&f);
        let ticks = x_ticks(&f, &curves);
        let labels: Vec<&str> = ticks.iter().map(|t| t.1.as_str()).collect();
        assert_eq!(labels, ["1", "2", "4", "8", "16", "all (≈50.5)"]);
        assert!((ticks[5].0 - 50.5f64.log2()).abs() < 1e-12);
    }
}
