//! Measuring classifiers on labelled images: labelled sets ([`dataset`]), accuracy, F1 and
//! confusion matrices ([`metrics`]), the zero-shot-versus-heads experiment of `compare`
//! ([`compare`]) and its report ([`report`]), and the dataset audit of `audit` ([`audit`]).

pub mod audit;
pub mod compare;
pub mod dataset;
pub mod metrics;
pub mod report;
