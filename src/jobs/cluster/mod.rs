//! Runs split over the tasks of a cluster array job: choosing a task's shard and writing its
//! manifest ([`shard`]), and joining the shards' outputs into one ([`merge`]).

pub mod merge;
pub mod shard;
