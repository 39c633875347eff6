//! The commands' work over many images: the labelling job shared by `label` and `predict`
//! ([`label`]), its output and failure files ([`writers`]), `--organize` ([`organize`]), the
//! embedding cache ([`cache`]) and sharded runs on a cluster ([`cluster`]).

pub mod cache;
pub mod cluster;
pub mod exports;
pub mod label;
pub mod organize;
pub mod rows;
pub mod writers;
