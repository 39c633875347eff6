//! The library's error type: every failure names the file, tensor, field or line behind it.

use std::path::PathBuf;

/// Everything that can go wrong in cliplabel, with the file or tensor that caused it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O operation on a named file failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A JSON file could not be parsed.
    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    /// A model directory lacks a file it needs.
    #[error("{dir}: not a CLIP model directory: missing {file}{hint}")]
    MissingModelFile {
        dir: PathBuf,
        file: String,
        hint: String,
    },

    /// A config field is missing, has the wrong type, or holds an unsupported value.
    #[error("{path}: field `{field}`: {message}")]
    Config {
        path: PathBuf,
        field: String,
        message: String,
    },

    /// A tensor the architecture needs is absent from the checkpoint.
    #[error(
        "{path}: missing tensor `{tensor}` (not a CLIP ViT checkpoint, or an incomplete download)"
    )]
    MissingTensor { path: PathBuf, tensor: String },

    /// A tensor exists but its shape disagrees with `config.json`.
    #[error("{path}: tensor `{tensor}` has shape {found:?}, but config.json implies {expected:?}")]
    TensorShape {
        path: PathBuf,
        tensor: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },

    /// A tensor has a dtype that cannot be loaded (only f32, f16 and bf16 are supported).
    #[error("{path}: tensor `{tensor}` has unsupported dtype {dtype}")]
    TensorDtype {
        path: PathBuf,
        tensor: String,
        dtype: String,
    },

    /// A safetensors file could not be read.
    #[error("{path}: cannot read safetensors: {message}")]
    Safetensors { path: PathBuf, message: String },

    /// The tokenizer file could not be loaded or used.
    #[error("{path}: tokenizer: {message}")]
    Tokenizer { path: PathBuf, message: String },

    /// A model id could not be resolved through the Hugging Face hub or its cache.
    #[error("{0}")]
    Hub(String),

    /// An image could not be read, decoded or preprocessed.
    #[error("{path}: {message}")]
    Image { path: PathBuf, message: String },

    /// The user's input set is unusable (no such path, nothing to process).
    #[error("{0}")]
    Input(String),

    /// A class list, template or prompt file is malformed.
    #[error(transparent)]
    Prompt(Box<crate::classify::classes::PromptError>),

    /// A linear head could not be trained, loaded or applied.
    #[error(transparent)]
    Head(#[from] crate::linear_head::HeadError),

    /// Calibration refused, or a calibration file does not fit the run.
    #[error(transparent)]
    Calibration(#[from] crate::classify::calibration::CalibrationError),

    /// A comparison report could not be written.
    #[error(transparent)]
    Report(#[from] crate::eval::report::ReportError),

    /// A dataset audit could not run.
    #[error(transparent)]
    Audit(#[from] crate::eval::audit::AuditError),

    /// An output file exists or cannot be written safely.
    #[error("{path}: {message}")]
    Output { path: PathBuf, message: String },

    /// A command's inputs do not add up: some image is neither done, failed nor skipped (or
    /// one was counted twice). See `jobs::tally`.
    #[error("{what}: {inputs} inputs, but {done} done ({abstained} of them abstained), {failed} failed and {skipped} skipped: {}", crate::jobs::tally::shortfall(*inputs, *done + *failed + *skipped))]
    Unaccounted {
        what: String,
        inputs: usize,
        done: usize,
        abstained: usize,
        failed: usize,
        skipped: usize,
    },

    /// An error stopped a run part-way: `not_done` of `total` images were not processed.
    #[error("stopped after {done} of {total} images: {cause}; {not_done} not processed")]
    Stopped {
        done: usize,
        total: usize,
        not_done: usize,
        cause: Box<Error>,
    },

    /// A tensor computation failed (a bug or an inconsistent checkpoint).
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

impl From<crate::classify::classes::PromptError> for Error {
    fn from(e: crate::classify::classes::PromptError) -> Self {
        Error::Prompt(Box::new(e))
    }
}

impl From<crate::util::safetensors_io::SafetensorsError> for Error {
    fn from(e: crate::util::safetensors_io::SafetensorsError) -> Self {
        use crate::util::safetensors_io::SafetensorsError as S;
        match e {
            S::Io { path, source } => Error::Io { path, source },
            S::Format { path, message } => Error::Safetensors { path, message },
        }
    }
}

/// The broad class of an [`Error`], for callers that react by class rather than by variant:
/// the binary's exit codes and the Python package's exception classes are chosen from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The model directory, checkpoint, tokenizer or hub id is unusable.
    Model,
    /// The user's inputs are unusable: images, prompts, labels, data sets, head files.
    Input,
    /// An output could not be written safely (exists, not writable, incomplete).
    Output,
    /// Reading or writing a named file failed at the operating-system level.
    Io,
    /// A bug: an inconsistent computation or a run whose images do not add up.
    Internal,
}

impl Error {
    /// The broad class of this error (see [`ErrorKind`]). A run stopped part-way has the
    /// kind of the error that stopped it.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Io { .. } => ErrorKind::Io,
            Error::MissingModelFile { .. }
            | Error::Config { .. }
            | Error::MissingTensor { .. }
            | Error::TensorShape { .. }
            | Error::TensorDtype { .. }
            | Error::Safetensors { .. }
            | Error::Tokenizer { .. }
            | Error::Hub(_) => ErrorKind::Model,
            Error::Json { .. }
            | Error::Image { .. }
            | Error::Input(_)
            | Error::Prompt(_)
            | Error::Head(_)
            | Error::Calibration(_)
            | Error::Audit(_) => ErrorKind::Input,
            Error::Output { .. } | Error::Report(_) => ErrorKind::Output,
            Error::Unaccounted { .. } | Error::Candle(_) => ErrorKind::Internal,
            Error::Stopped { cause, .. } => cause.kind(),
        }
    }
}

/// Shorthand for results carrying [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// A config error for `field` in the file at `path`.
    pub fn config(path: impl Into<PathBuf>, field: &str, message: impl Into<String>) -> Self {
        Error::Config {
            path: path.into(),
            field: field.to_string(),
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stopped_run_has_the_kind_of_its_cause() {
        let missing = Error::MissingTensor {
            path: "m/model.safetensors".into(),
            tensor: "logit_scale".into(),
        };
        assert_eq!(missing.kind(), ErrorKind::Model);
        let stopped = Error::Stopped {
            done: 1,
            total: 3,
            not_done: 2,
            cause: Box::new(Error::Output {
                path: "out.csv".into(),
                message: "disk full".into(),
            }),
        };
        assert_eq!(stopped.kind(), ErrorKind::Output);
        assert_eq!(
            Error::io("a.png", std::io::Error::other("x")).kind(),
            ErrorKind::Io
        );
        assert_eq!(
            Error::Input("nothing to do".into()).kind(),
            ErrorKind::Input
        );
    }
}
