//! Turning embeddings into labels: class lists ([`classes`]) and prompt templates
//! ([`templates`]), the zero-shot classifier built from them ([`zeroshot`]), the linear head
//! trained by `fit` ([`head`]), and what every classifier's output becomes ([`scores`]: the
//! [`scores::Scorer`] trait, top-k and abstention).

pub mod calibration;
pub mod classes;
pub mod head;
pub mod scores;
pub mod templates;
pub mod zeroshot;
