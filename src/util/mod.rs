//! Small leaves the rest builds on, depending on nothing else in the crate but its error type:
//! the one stable hash ([`hash`]), the one seeded generator ([`rng`]), files that appear only
//! when complete ([`atomic`]), the reader and writer of small safetensors files
//! ([`safetensors_io`]) and the shared vector maths ([`math`]: L2 normalisation, softmax).

pub mod atomic;
pub mod hash;
pub mod isolate;
pub mod math;
pub mod pathtext;
pub mod rng;
pub mod safetensors_io;
#[cfg(test)]
pub(crate) mod testing;
