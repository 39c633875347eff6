//! Turning embeddings into labels: class lists ([`classes`]) and prompt templates
//! ([`templates`]), the zero-shot classifier built from them ([`zeroshot`]), the linear head
//! trained by `fit` ([`head`]) on embedded examples ([`embedded`]), what every classifier's
//! output becomes ([`scores`]: the [`scores::Scorer`] trait, top-k and abstention), calibration
//! ([`calibration`]) and the run identity it is checked against ([`run`]).

pub mod calibration;
pub mod classes;
pub mod embedded;
pub mod head;
pub mod run;
pub mod scores;
pub mod templates;
pub mod zeroshot;
