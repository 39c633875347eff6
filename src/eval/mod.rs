//! Measuring classifiers on labelled images: accuracy, F1 and confusion matrices
//! ([`metrics`]), the zero-shot-versus-heads experiment of `compare` ([`compare`]) and its
//! report ([`report`]), the `calibrate` job and its report ([`calibrate`]), and the dataset
//! audit of `audit` ([`audit`]). Labelled sets ([`dataset`]) are `images/`'s.
//!
//! `eval/` sits above `jobs/`: its commands run on the jobs' machinery (the embedding
//! pipeline and cache, the tally, failure lists, run identities), while `jobs/` never computes
//! a metric or writes an evaluation report, so nothing in `jobs/` imports `eval`.

pub mod audit;
pub mod calibrate;
pub mod compare;
/// Labelled sets live in `images/` (listing inputs, below `jobs/`); kept here under their old
/// path for library users.
pub use crate::images::dataset;
pub mod metrics;
pub mod report;
