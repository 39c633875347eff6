//! The commands' work over many images: the bounded embedding pipeline ([`pipeline`]), the
//! labelling job shared by `label` and `predict` ([`label`]), its output and failure files
//! ([`writers`]), `--organize` ([`organize`]), the embedding cache ([`cache`]), the `embed` and
//! `fit` commands ([`embed`], [`fit`]) and sharded runs on a cluster ([`cluster`]).
//!
//! `jobs/` sits below `eval/` (which runs `compare`, `calibrate` and `audit` on this
//! machinery) and above `classify/`, `clip/`, `images/` and `util/`: it imports none of `eval`.

pub mod cache;
pub mod cluster;
pub mod embed;
pub mod exports;
pub mod fit;
pub mod label;
pub mod organize;
pub mod pipeline;
pub mod rows;
pub mod tally;
pub mod writers;
