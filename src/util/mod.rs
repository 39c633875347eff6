//! Small leaves the rest builds on, depending on nothing else in the crate: files that appear
//! only when complete ([`atomic`]).

pub mod atomic;
pub mod isolate;
pub mod pathtext;
