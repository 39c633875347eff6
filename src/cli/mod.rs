//! Binary-only wiring: the environment read once at start-up ([`env`]) and the progress display
//! of labelling runs ([`progress`]), the trust commands' flags ([`trust`]). Declared from `main.rs`, not part of the library.

pub mod env;
pub mod progress;
pub mod trust;
