//! `cliplabel review`: a self-contained static page for checking and correcting label rows.
//!
//! [`write_review`] reads a `label`/`predict` output (CSV or JSONL, with the optional prediction
//! set; see [`crate::jobs::rows`]) and writes:
//!
//! ```text
//! OUT/index.html   the page (assets/index.html)
//! OUT/review.css   its style (assets/review.css)
//! OUT/review.js    its behaviour (assets/review.js): sorting, filtering, pagination, keys,
//!                  localStorage, undo, CSV export
//! OUT/data.js      the rows as `window.CLIPLABEL_REVIEW = {...}` (a script, not fetched JSON,
//!                  so the page works from file:// where browsers refuse fetch)
//! OUT/thumbs/      one JPEG thumbnail per image that could be read
//! ```
//!
//! No server, no CDN. The page renders one page of cards at a time (48), thumbnails load lazily,
//! so 20,000 rows cost one data file and 48 DOM cards. Every row gets a card: an image whose
//! thumbnail cannot be made is listed in [`ReviewSummary::thumb_failures`] and its card says why.
//! Thumbnails use cliplabel's own decoders and Pillow-exact resizer (Lanczos), so the page
//! shows what the model saw before cropping. The export is `path,label` with absolute paths
//! (relative row paths resolved against [`ReviewOptions::base_dir`]), which `cliplabel fit
//! --train-csv` reads from wherever the file is saved; "not any class" decisions are left out.

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::images::limits::DEFAULT_MAX_PIXELS;
use crate::images::preprocess::load_rgb;
use crate::images::resize::resize;
use crate::images::settings::Resample;
use crate::jobs::rows::{read_label_rows, LabelRecord};
use crate::jobs::writers::Failure;
use crate::util::atomic::write_atomic;

const INDEX_HTML: &str = include_str!("assets/index.html");
const REVIEW_CSS: &str = include_str!("assets/review.css");
const REVIEW_JS: &str = include_str!("assets/review.js");

/// Options of [`write_review`].
#[derive(Debug, Clone, PartialEq)]
pub struct ReviewOptions {
    /// Longest side of a thumbnail, in pixels.
    pub thumb_size: u32,
    /// JPEG quality of thumbnails (1-100).
    pub jpeg_quality: u8,
    /// Images with more pixels are not decoded (no thumbnail; the card still shows).
    pub max_pixels: u64,
    /// Relative row paths are relative to this directory (the CLI passes its working directory).
    pub base_dir: PathBuf,
    /// Class names offered when correcting (the run's classes); `None`: every class named in
    /// the rows.
    pub classes: Option<Vec<String>>,
    /// Title shown in the page footer.
    pub title: String,
}

impl Default for ReviewOptions {
    fn default() -> Self {
        ReviewOptions {
            thumb_size: 256,
            jpeg_quality: 85,
            max_pixels: DEFAULT_MAX_PIXELS,
            base_dir: PathBuf::from("."),
            classes: None,
            title: "cliplabel review".into(),
        }
    }
}

/// What [`write_review`] wrote.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ReviewSummary {
    /// Cards on the page (every row).
    pub cards: usize,
    /// Of those, rows labelled `unknown`.
    pub abstained: usize,
    /// Thumbnails written.
    pub thumbnails: usize,
    /// Rows whose thumbnail could not be made, with the reason (their cards still show).
    pub thumb_failures: Vec<Failure>,
    /// The page.
    pub index: PathBuf,
}

#[derive(Serialize)]
struct PageItem<'a> {
    id: usize,
    path: &'a str,
    /// The path written to the export (absolute when it could be resolved).
    file: String,
    label: &'a str,
    score: Option<f32>,
    top: &'a [(String, f32)],
    set: Option<&'a [String]>,
    abstained: bool,
    thumb: Option<String>,
    thumb_error: Option<String>,
}

#[derive(Serialize)]
struct PageData<'a> {
    title: &'a str,
    /// Distinguishes this run's decisions in localStorage.
    key: String,
    classes: Vec<String>,
    items: Vec<PageItem<'a>>,
}

fn classes_of(rows: &[LabelRecord]) -> Vec<String> {
    let mut seen: Vec<String> = Vec::new();
    let mut add = |s: &str| {
        if s != crate::jobs::writers::UNKNOWN && !seen.iter().any(|c| c == s) {
            seen.push(s.to_string());
        }
    };
    for r in rows {
        add(&r.label);
        for (l, _) in &r.top {
            add(l);
        }
        for l in r.set.iter().flatten() {
            add(l);
        }
    }
    seen.sort();
    seen
}

fn make_thumb(src: &Path, dst: &Path, opts: &ReviewOptions) -> std::result::Result<(), String> {
    let img =
        load_rgb(src, opts.max_pixels).map_err(|e| crate::jobs::pipeline::error_reason(&e))?;
    let side = opts.thumb_size.max(16) as f64;
    let scale = (side / img.width.max(img.height) as f64).min(1.0);
    let (w, h) = (
        ((img.width as f64 * scale).round() as usize).max(1),
        ((img.height as f64 * scale).round() as usize).max(1),
    );
    let small = if (w, h) == (img.width, img.height) {
        img
    } else {
        resize(&img, w, h, Resample::Lanczos)
    };
    let mut bytes = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, opts.jpeg_quality.clamp(1, 100))
        .encode(
            &small.data,
            w as u32,
            h as u32,
            image::ExtendedColorType::Rgb8,
        )
        .map_err(|e| format!("cannot encode thumbnail: {e}"))?;
    write_atomic(dst, &bytes).map_err(|e| e.to_string())
}

/// Writes the review page for the label rows in `rows_path` into `out_dir` (created if needed).
/// `progress(done, total)` is called as thumbnails are made, from worker threads.
pub fn write_review(
    rows_path: &Path,
    out_dir: &Path,
    opts: &ReviewOptions,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<ReviewSummary> {
    let rows = read_label_rows(rows_path)?;
    if rows.is_empty() {
        return Err(Error::NoRowsToReview {
            path: rows_path.to_path_buf(),
        });
    }
    let thumbs = out_dir.join("thumbs");
    std::fs::create_dir_all(&thumbs).map_err(|e| Error::io(&thumbs, e))?;
    let total = rows.len();
    let done = std::sync::atomic::AtomicUsize::new(0);
    let resolved: Vec<PathBuf> = rows
        .iter()
        .map(|r| {
            let p = Path::new(&r.path);
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                opts.base_dir.join(p)
            }
        })
        .collect();
    let results: Vec<std::result::Result<String, String>> = resolved
        .par_iter()
        .enumerate()
        .map(|(i, src)| {
            let name = format!("{:06}.jpg", i + 1);
            let r = make_thumb(src, &thumbs.join(&name), opts).map(|_| format!("thumbs/{name}"));
            progress(
                done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1,
                total,
            );
            r
        })
        .collect();

    let mut summary = ReviewSummary {
        cards: total,
        index: out_dir.join("index.html"),
        ..Default::default()
    };
    let items: Vec<PageItem> = rows
        .iter()
        .zip(&resolved)
        .zip(&results)
        .enumerate()
        .map(|(i, ((r, abs), res))| {
            summary.abstained += usize::from(r.abstained);
            let (thumb, thumb_error) = match res {
                Ok(t) => {
                    summary.thumbnails += 1;
                    (Some(t.clone()), None)
                }
                Err(e) => {
                    summary.thumb_failures.push(Failure {
                        path: r.path.clone(),
                        error: e.clone(),
                    });
                    (None, Some(e.clone()))
                }
            };
            let file = std::fs::canonicalize(abs)
                .unwrap_or_else(|_| abs.clone())
                .to_string_lossy()
                .into_owned();
            PageItem {
                id: i,
                path: &r.path,
                file,
                label: &r.label,
                score: r.score,
                top: &r.top,
                set: r.set.as_deref(),
                abstained: r.abstained,
                thumb,
                thumb_error,
            }
        })
        .collect();
    let canon = std::fs::canonicalize(rows_path).unwrap_or_else(|_| rows_path.to_path_buf());
    let key = format!(
        "{:016x}-{total}",
        crate::util::hash::fnv1a(canon.to_string_lossy().as_bytes(), 0xcbf2_9ce4_8422_2325)
    );
    let data = PageData {
        title: &opts.title,
        key,
        classes: opts.classes.clone().unwrap_or_else(|| classes_of(&rows)),
        items,
    };
    let json = serde_json::to_string(&data).map_err(|source| Error::Serialize {
        path: out_dir.join("data.js"),
        source,
    })?;
    // `</script>` cannot occur in JSON strings once `/` after `<` is escaped.
    let js = format!(
        "window.CLIPLABEL_REVIEW = {};\n",
        json.replace("</", "<\\/")
    );
    let p = out_dir.join("data.js");
    write_atomic(&p, js.as_bytes()).map_err(|e| Error::io(&p, e))?;
    let p = out_dir.join("review.css");
    write_atomic(&p, REVIEW_CSS.as_bytes()).map_err(|e| Error::io(&p, e))?;
    let p = out_dir.join("review.js");
    write_atomic(&p, REVIEW_JS.as_bytes()).map_err(|e| Error::io(&p, e))?;
    write_atomic(&summary.index, INDEX_HTML.as_bytes())
        .map_err(|e| Error::io(&summary.index, e))?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
    }

    #[test]
    fn writes_page_data_and_thumbnails_and_accounts_for_every_row() {
        let d = tempfile::tempdir().unwrap();
        let rows = d.path().join("labels.csv");
        let img = repo().join("images/img_000.png");
        let jpg = repo().join("images/img_002.jpg");
        let bad = d.path().join("broken.png");
        std::fs::write(&bad, b"not an image").unwrap();
        std::fs::write(
            &rows,
            format!(
                "path,label,score,label2,score2,predicted,cosine,set\n{},cat,0.9,dog,0.1,cat,,cat\n{},unknown,0.4,dog,0.35,cat,,cat|dog\nbroken.png,dog,0.7,cat,0.3,dog,,\n",
                img.display(),
                jpg.display()
            ),
        )
        .unwrap();
        let out = d.path().join("review");
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let opts = ReviewOptions {
            base_dir: d.path().to_path_buf(),
            ..Default::default()
        };
        let s = write_review(&rows, &out, &opts, &|_, total| {
            assert_eq!(total, 3);
            calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        })
        .unwrap();
        assert_eq!(calls.into_inner(), 3);
        assert_eq!((s.cards, s.abstained, s.thumbnails), (3, 1, 2));
        assert_eq!(s.thumb_failures.len(), 1);
        assert_eq!(s.thumb_failures[0].path, "broken.png");
        for f in ["index.html", "review.css", "review.js", "data.js"] {
            assert!(out.join(f).is_file(), "{f}");
        }
        let t = image::open(out.join("thumbs/000001.jpg")).unwrap();
        assert!(t.width().max(t.height()) <= 256);
        assert!(!out.join("thumbs/000003.jpg").exists());
        let js = std::fs::read_to_string(out.join("data.js")).unwrap();
        let json = js
            .trim()
            .strip_prefix("window.CLIPLABEL_REVIEW = ")
            .unwrap()
            .strip_suffix(';')
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        let items = v["items"].as_array().unwrap();
        assert_eq!(items.len(), 3);
        assert_eq!(items[1]["abstained"], true);
        assert_eq!(items[1]["set"], serde_json::json!(["cat", "dog"]));
        assert_eq!(items[2]["thumb"], serde_json::Value::Null);
        assert!(items[2]["thumb_error"].as_str().unwrap().len() > 3);
        // The export path is absolute, resolved against base_dir.
        assert!(Path::new(items[2]["file"].as_str().unwrap()).is_absolute());
        assert_eq!(v["classes"], serde_json::json!(["cat", "dog"]));
        // The page loads only local files.
        let html = std::fs::read_to_string(out.join("index.html")).unwrap();
        assert!(!html.contains("http://") && !html.contains("https://"));
    }

    #[test]
    fn empty_or_missing_rows_are_errors() {
        let d = tempfile::tempdir().unwrap();
        let rows = d.path().join("labels.csv");
        std::fs::write(&rows, "path,label\n").unwrap();
        let e = write_review(
            &rows,
            &d.path().join("r"),
            &ReviewOptions::default(),
            &|_, _| {},
        )
        .unwrap_err();
        assert!(e.to_string().contains("no rows"), "{e}");
        let e = write_review(
            &d.path().join("nope.csv"),
            &d.path().join("r"),
            &ReviewOptions::default(),
            &|_, _| {},
        )
        .unwrap_err();
        assert!(e.to_string().contains("nope.csv"), "{e}");
    }
}
