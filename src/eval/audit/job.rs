//! The `audit` command as one library call ([`audit_dataset`]): checks the options, lines the
//! data set's classes up with a class file when zero-shot probabilities are wanted, embeds
//! through the cache, runs the audit, writes the report and, when there are likely mislabels,
//! the review page for them; then checks that every image was audited or listed as failed.
//!
//! It lives beside the audit rather than in `jobs/` because it calls the audit and the review
//! page, which sit above `jobs/` (they use its cache and row readers).

use std::path::PathBuf;

use crate::classify::classes::ClassList;
use crate::classify::templates::Templates;
use crate::classify::zeroshot::ZeroShotClassifier;
use crate::clip::engine::{Engine, Features};
use crate::error::Result;
use crate::eval::audit::report::{write_report, AuditSummary};
use crate::eval::audit::{run_audit, AuditError, AuditOptions, AuditProgress, AuditSources};
use crate::eval::dataset::LabelledSet;
use crate::jobs::cache::EmbeddingCache;
use crate::jobs::tally::Tally;
use crate::jobs::writers::Failure;
use crate::review::{write_review, ReviewOptions, ReviewSummary};

/// What to audit and where the results go.
#[derive(Debug, Clone)]
pub struct AuditRequest {
    /// The labelled set (`--data` or `--data-csv`).
    pub train: LabelledSet,
    /// A held-out set checked for leakage (`--test`).
    pub test: Option<LabelledSet>,
    /// Blend zero-shot probabilities into the head's, with these class names (`--classes`;
    /// the set is re-indexed to follow the file) or, when `None` but `templates` is given, the
    /// set's own class names.
    pub classes: Option<ClassList>,
    /// Prompt templates for the zero-shot probabilities (`None`: the built-in `photo` set);
    /// zero-shot is used when this or `classes` is given.
    pub templates: Option<Templates>,
    /// The audit's settings.
    pub options: AuditOptions,
    /// The embedding cache folder (`None`: no cache).
    pub cache_dir: Option<PathBuf>,
    /// Images per batch of the encoder.
    pub batch_size: usize,
    /// The report folder (`--out`).
    pub out: PathBuf,
    /// Relative image paths in the report are relative to this folder (the review page's
    /// thumbnails are found through it).
    pub base_dir: PathBuf,
}

/// What an audit found and wrote.
#[derive(Debug)]
pub struct AuditOutcome {
    /// Counts and files of the report.
    pub summary: AuditSummary,
    /// Images that could not be audited, with the reason (also in `failures.csv`).
    pub failures: Vec<Failure>,
    /// The review page of the likely mislabels, when there are any.
    pub review: Option<ReviewSummary>,
    /// Images given (train + test).
    pub total: usize,
}

impl AuditOptions {
    /// Refuses settings the audit cannot run with (a duplicate threshold outside (0, 1],
    /// fewer than 2 folds); [`audit_dataset`] calls it, and a caller may call it before
    /// loading anything.
    pub fn check(&self) -> Result<()> {
        let t = self.duplicate_threshold;
        if !(t > 0.0 && t <= 1.0) {
            return Err(AuditError::BadOption {
                option: "duplicate_threshold",
                message: format!("must be in (0, 1], got {t}"),
            }
            .into());
        }
        if self.folds < 2 {
            return Err(AuditError::BadOption {
                option: "folds",
                message: format!("must be at least 2, got {}", self.folds),
            }
            .into());
        }
        Ok(())
    }
}

/// Runs the `audit` command (see the module documentation); `progress` is told each stage.
pub fn audit_dataset(
    engine: &Engine,
    req: AuditRequest,
    progress: impl FnMut(AuditProgress),
) -> Result<AuditOutcome> {
    let AuditRequest {
        mut train,
        test,
        classes,
        templates,
        options,
        cache_dir,
        batch_size,
        out,
        base_dir,
    } = req;
    options.check()?;
    let zero_shot = if classes.is_some() || templates.is_some() {
        let list = match classes {
            Some(list) => {
                let names: Vec<String> = list.names().iter().map(|s| s.to_string()).collect();
                // The zero-shot columns follow the class file; re-index the set to match.
                train.labels = train.align_to(&names, "the data set")?;
                train.classes = names;
                list
            }
            None => ClassList::from_names(&train.classes)?,
        };
        let templates = match templates {
            Some(t) => t,
            None => Templates::resolve("photo")?,
        };
        Some(ZeroShotClassifier::build(engine, &list, &templates)?)
    } else {
        None
    };
    let total = train.paths.len() + test.as_ref().map_or(0, |t| t.paths.len());
    let mut cache = EmbeddingCache::open(cache_dir.as_deref(), engine, Features::Projected)?;
    let result = run_audit(
        engine,
        &mut cache,
        AuditSources {
            train: &train,
            test: test.as_ref(),
            zero_shot: zero_shot.as_ref(),
            batch_size,
        },
        &options,
        progress,
    )?;
    let summary = write_report(&out, &result)?;
    // The likely mislabels open on the review page, where each can be accepted (the suggested
    // class), corrected or kept, and exported as a path,label CSV for `fit --train-csv`.
    let review = if summary.mislabels > 0 {
        let opts = ReviewOptions {
            base_dir,
            classes: Some(result.classes.clone()),
            title: "cliplabel audit: likely mislabels".into(),
            max_pixels: engine.max_pixels(),
            ..ReviewOptions::default()
        };
        Some(write_review(
            &out.join("mislabels.review.csv"),
            &out.join("review"),
            &opts,
            &|_, _| {},
        )?)
    } else {
        None
    };
    Tally {
        inputs: total,
        done: summary.train_images + summary.test_images,
        failed: summary.failed,
        ..Tally::default()
    }
    .check("audit")?;
    Ok(AuditOutcome {
        summary,
        failures: result.failures,
        review,
        total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_outside_their_range_are_refused_by_name() {
        assert!(AuditOptions::default().check().is_ok());
        for (opts, name) in [
            (
                AuditOptions {
                    duplicate_threshold: 0.0,
                    ..AuditOptions::default()
                },
                "duplicate_threshold",
            ),
            (
                AuditOptions {
                    duplicate_threshold: f32::NAN,
                    ..AuditOptions::default()
                },
                "duplicate_threshold",
            ),
            (
                AuditOptions {
                    folds: 1,
                    ..AuditOptions::default()
                },
                "folds",
            ),
        ] {
            let e = opts.check().unwrap_err().to_string();
            assert!(e.contains(name), "{e}");
        }
    }
}
