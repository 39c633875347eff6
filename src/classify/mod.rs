//! Turning embeddings into labels: class lists and prompt templates ([`classes`]), the
//! zero-shot classifier built from them ([`zeroshot`]) and the linear head trained by `fit`
//! ([`head`]).

pub mod calibration;
pub mod classes;
pub mod head;
pub mod zeroshot;
