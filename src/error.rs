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

    /// A JSON file of the user's (a sidecar, a manifest, a run-info file) could not be parsed.
    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    /// A JSON file of the model directory (`config.json`, `preprocessor_config.json`,
    /// `tokenizer_config.json`, a checkpoint index) could not be parsed.
    #[error("{path}: invalid JSON: {source}")]
    ModelJson {
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

    /// `--model` names a path that exists but is not a directory.
    #[error("{path}: not a directory")]
    ModelNotADirectory { path: PathBuf },

    /// `--model` is neither a directory nor a hub id.
    #[error(
        "--model {spec}: no such directory, and not a Hugging Face hub id of the form owner/name"
    )]
    ModelNotFound { spec: String },

    /// A batch handed to the model's transformers does not fit the model (see `clip::model`).
    #[error(transparent)]
    ModelInput(#[from] ModelInputError),

    /// An image could not be read, decoded or preprocessed.
    #[error("{path}: {message}")]
    Image { path: PathBuf, message: String },

    /// No image paths were given at all.
    #[error("no images given: pass image files or directories")]
    NoInputs,

    /// An input path given by the user cannot be read (usually: it does not exist).
    #[error("{path}: {source}")]
    InputNotFound {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The inputs were listed, but none of them is an image.
    #[error("no images found in {} (looked for {})", display_paths(.roots), .extensions.join("/"))]
    NoImages {
        roots: Vec<PathBuf>,
        extensions: Vec<String>,
    },

    /// A text file (prompts, a list) is not UTF-8; `byte` is where the first bad byte is.
    #[error("{path}: not valid UTF-8 (byte {byte})")]
    NotUtf8 { path: PathBuf, byte: usize },

    /// A prompt file has no prompts.
    #[error("{path}: no prompts (the file is empty)")]
    NoPrompts { path: PathBuf },

    /// A file to be read as labels is neither `.csv` nor `.jsonl`.
    #[error("{path}: not a label output: use a .csv or .jsonl file")]
    NotALabelFile { path: PathBuf },

    /// A CSV file could not be opened or read as CSV.
    #[error("{path}: {source}")]
    Csv {
        path: PathBuf,
        #[source]
        source: csv::Error,
    },

    /// A row of a CSV (or a line of a JSON lines) file is malformed; `line` is 1-based.
    #[error("{path}:{line}: {message}")]
    CsvRow {
        path: PathBuf,
        line: usize,
        message: String,
    },

    /// A label is not one of the classes it is checked against.
    #[error("{path}: label `{label}` is not in the class list")]
    LabelNotInClasses { path: String, label: String },

    /// A class is named like the abstention label while abstention is on.
    #[error("a class is named `{name}`, which is also the abstention label: rename it or drop --min-score/--min-margin/--calibration")]
    ClassIsAbstentionLabel { name: String },

    /// An image has no file name to organise it under.
    #[error("{path}: no file name")]
    NoFileName { path: PathBuf },

    /// A label file holds no rows to show on the review page.
    #[error("{path}: no rows to review")]
    NoRowsToReview { path: PathBuf },

    /// `--export` names an unknown format.
    #[error("unknown export format `{value}`: use labelstudio, cvat or fiftyone")]
    UnknownExportFormat { value: String },

    /// An option is outside its range, or options that do not go together were combined.
    #[error(transparent)]
    Option(#[from] OptionError),

    /// A sharded run could not tell which shard it is (see `jobs::cluster::shard`).
    #[error(transparent)]
    Shard(#[from] crate::jobs::cluster::shard::ShardError),

    /// A labelled data set could not be read (see `eval::dataset`).
    #[error(transparent)]
    Dataset(#[from] crate::images::dataset::DatasetError),

    /// A linear head cannot be trained on these examples or with these settings.
    #[error(transparent)]
    Fit(#[from] crate::classify::head::FitError),

    /// A trained head does not belong to `--model`.
    #[error("{path}: this head was trained for model `{}` (fingerprint {}, {} {}-dimensional embeddings), but --model is `{}` (fingerprint {}, {} dimensions); train a head for this model with `cliplabel fit`",
        .trained.model, .trained.fingerprint, .trained.features, .trained.dim,
        .given.model, .given.fingerprint, .given.dim)]
    HeadModelMismatch {
        path: PathBuf,
        /// The model the head was trained for (from its metadata).
        trained: Box<ModelIdentity>,
        /// `--model`, with the width of the features the head takes.
        given: Box<ModelIdentity>,
    },

    /// `compare` found no image of the test set usable.
    #[error("the test set has no usable images")]
    NoUsableTestImages,

    /// `compare` was given no template set.
    #[error("give at least one template set")]
    NoTemplateSets,

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

    /// An output file exists and neither `--force` nor (where offered) `--resume` was given.
    #[error("{path}: already exists{}", .remedy.text())]
    OutputExists { path: PathBuf, remedy: Remedy },

    /// `--out` names a directory where a file is wanted.
    #[error("{path}: is a directory; --out takes a file such as {example}")]
    OutputIsDirectory { path: PathBuf, example: String },

    /// The directory an output would be written in does not exist.
    #[error("{path}: directory {} does not exist", .dir.display())]
    OutputDirMissing { path: PathBuf, dir: PathBuf },

    /// An output file name has an extension cliplabel cannot write.
    #[error("{path}: unknown output format: use a .csv or .jsonl file name")]
    OutputFormat { path: PathBuf },

    /// No free name was found for an organised copy of an image.
    #[error("{path}: too many name clashes")]
    NameClashes { path: PathBuf },

    /// A CSV output could not be written.
    #[error("{path}: {source}")]
    CsvWrite {
        path: PathBuf,
        #[source]
        source: csv::Error,
    },

    /// An existing output cannot be resumed (see `jobs::writers`).
    #[error(transparent)]
    Resume(#[from] crate::jobs::writers::ResumeError),

    /// Shard outputs cannot be merged (see `jobs::cluster::merge`).
    #[error(transparent)]
    Merge(#[from] crate::jobs::cluster::merge::MergeError),

    /// A value could not be serialised to JSON for the file at `path` (a bug: cliplabel's own
    /// structures always serialise).
    #[error("{path}: {source}")]
    Serialize {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    /// A scorer returned a different number of results than it was given images (a bug in
    /// the scorer).
    #[error("the scorer returned {results} results for {images} images")]
    ScorerCount { results: usize, images: usize },

    /// An embeddings file was asked to hold a number of values that is not rows × width (a bug).
    #[error("{path}: internal: {values} values for {rows} rows of {dim}")]
    EmbeddingValues {
        path: PathBuf,
        values: usize,
        rows: usize,
        dim: usize,
    },

    /// The caller stopped a run (a progress callback asked to stop, or the consumer of the
    /// results went away); `reason` says which.
    #[error("stopped: {reason}")]
    Cancelled { reason: &'static str },

    /// A worker thread of a run ended without reporting (it panicked outside any image).
    #[error("the {what} thread stopped unexpectedly")]
    WorkerLost { what: &'static str },

    /// The thread that reads and preprocesses images panicked outside any single image.
    #[error("the image reading thread crashed: {message}")]
    ReaderCrashed { message: String },

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

/// A model as a head file or an engine identifies it ([`Error::HeadModelMismatch`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelIdentity {
    /// The model as given (a directory or a hub id).
    pub model: String,
    /// Fingerprint of the model files.
    pub fingerprint: String,
    /// Which features the embeddings are.
    pub features: crate::clip::engine::Features,
    /// Embedding width.
    pub dim: usize,
}

/// What to pass instead when an output exists ([`Error::OutputExists`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Remedy {
    /// `--resume` to continue it, or `--force` to overwrite it (`label`, `predict`).
    ResumeOrForce,
    /// `--force` to overwrite it (`fit`).
    Force,
    /// `--force` to overwrite it with the merge (`merge`).
    ForceMerge,
}

impl Remedy {
    fn text(self) -> &'static str {
        match self {
            Remedy::ResumeOrForce => ": pass --resume to continue it, or --force to overwrite it",
            Remedy::Force => " (pass --force to overwrite it)",
            Remedy::ForceMerge => ": pass --force to overwrite it with the merge",
        }
    }
}

/// An option out of range, or options that do not go together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionError {
    /// `--top-k 0`.
    #[error("--top-k must be at least 1")]
    TopKZero,
    /// `--threads 0`.
    #[error("--threads must be at least 1")]
    ThreadsZero,
    /// The thread pool could not be built (it was already built with another size).
    #[error("cannot configure {threads} threads: {message}")]
    ThreadPool { threads: usize, message: String },
    /// `--features pooled` asked of text embeddings.
    #[error("--features pooled is only available for images")]
    PooledText,
    /// `--features pooled` with a head method that uses the zero-shot weights.
    #[error("--features pooled works only with the plain linear probe (zero-shot weights live in the projected space)")]
    PooledWithZeroShot,
}

/// A batch the transformers cannot take: a caller's mistake, caught before any computation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelInputError {
    /// Queried positions (`queries`, as the model's `Queries` prints them) fall inside a
    /// shared prompt prefix of `prefix` tokens.
    #[error("queries {queries} reach into the {prefix}-token shared prefix")]
    QueriesInPrefix { queries: String, prefix: usize },
    /// One end-of-text position per sequence is needed.
    #[error("{positions} end-of-text positions for a batch of {batch} sequences")]
    EosCount { positions: usize, batch: usize },
    /// End-of-text positions outside the tokens after the shared prefix.
    #[error("end-of-text positions {positions:?} must follow the {prefix}-token prefix and lie within the {tokens} tokens after it")]
    EosOutOfRange {
        positions: Vec<usize>,
        prefix: usize,
        tokens: usize,
    },
    /// A token sequence longer than the model's context.
    #[error("token sequence of {tokens} exceeds the model's context length {context}")]
    ContextLength { tokens: usize, context: usize },
    /// A pixel tensor of the wrong shape (channels, height, width).
    #[error("pixel tensor {}x{}x{} does not match the model's input {}x{}x{}", .found[0], .found[1], .found[2], .expected[0], .expected[1], .expected[2])]
    PixelShape {
        found: [usize; 3],
        expected: [usize; 3],
    },
}

fn display_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
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
            | Error::Hub(_)
            | Error::ModelJson { .. }
            | Error::ModelNotADirectory { .. }
            | Error::ModelNotFound { .. } => ErrorKind::Model,
            Error::Json { .. }
            | Error::Image { .. }
            | Error::NoInputs
            | Error::InputNotFound { .. }
            | Error::NoImages { .. }
            | Error::NotUtf8 { .. }
            | Error::NoPrompts { .. }
            | Error::NotALabelFile { .. }
            | Error::Csv { .. }
            | Error::CsvRow { .. }
            | Error::LabelNotInClasses { .. }
            | Error::ClassIsAbstentionLabel { .. }
            | Error::NoFileName { .. }
            | Error::NoRowsToReview { .. }
            | Error::UnknownExportFormat { .. }
            | Error::Option(_)
            | Error::Shard(_)
            | Error::Dataset(_)
            | Error::Fit(_)
            | Error::HeadModelMismatch { .. }
            | Error::NoUsableTestImages
            | Error::NoTemplateSets
            | Error::Prompt(_)
            | Error::Head(_)
            | Error::Calibration(_)
            | Error::Audit(_) => ErrorKind::Input,
            Error::OutputExists { .. }
            | Error::OutputIsDirectory { .. }
            | Error::OutputDirMissing { .. }
            | Error::OutputFormat { .. }
            | Error::NameClashes { .. }
            | Error::CsvWrite { .. }
            | Error::Resume(_)
            | Error::Merge(_)
            | Error::Report(_) => ErrorKind::Output,
            Error::Unaccounted { .. }
            | Error::Candle(_)
            | Error::ModelInput(_)
            | Error::Serialize { .. }
            | Error::ScorerCount { .. }
            | Error::EmbeddingValues { .. }
            | Error::ReaderCrashed { .. }
            | Error::WorkerLost { .. } => ErrorKind::Internal,
            Error::Cancelled { .. } => ErrorKind::Input,
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
            cause: Box::new(Error::OutputExists {
                path: "out.csv".into(),
                remedy: Remedy::Force,
            }),
        };
        assert_eq!(stopped.kind(), ErrorKind::Output);
        assert_eq!(
            Error::io("a.png", std::io::Error::other("x")).kind(),
            ErrorKind::Io
        );
        assert_eq!(Error::NoInputs.kind(), ErrorKind::Input);
    }

    #[test]
    fn model_files_and_user_files_are_told_apart() {
        let bad = || serde_json::from_str::<serde_json::Value>("{").unwrap_err();
        let model = Error::ModelJson {
            path: "m/config.json".into(),
            source: bad(),
        };
        let user = Error::Json {
            path: "out.safetensors.json".into(),
            source: bad(),
        };
        assert_eq!(model.kind(), ErrorKind::Model);
        assert_eq!(user.kind(), ErrorKind::Input);
        assert!(model
            .to_string()
            .starts_with("m/config.json: invalid JSON: "));
        let spec = Error::ModelNotFound {
            spec: "nowhere".into(),
        };
        assert_eq!(spec.kind(), ErrorKind::Model);
    }

    #[test]
    fn messages_keep_their_wording() {
        let e = Error::OutputExists {
            path: "labels.csv".into(),
            remedy: Remedy::ResumeOrForce,
        };
        assert_eq!(
            e.to_string(),
            "labels.csv: already exists: pass --resume to continue it, or --force to overwrite it"
        );
        let e = Error::NoImages {
            roots: vec!["a".into(), "b/c".into()],
            extensions: vec!["jpg".into(), "png".into()],
        };
        assert_eq!(
            e.to_string(),
            "no images found in a, b/c (looked for jpg/png)"
        );
        let e = Error::CsvRow {
            path: "rows.csv".into(),
            line: 7,
            message: "column `score`: `x` is not a number".into(),
        };
        assert_eq!(
            e.to_string(),
            "rows.csv:7: column `score`: `x` is not a number"
        );
        let e = Error::from(ModelInputError::PixelShape {
            found: [3, 64, 64],
            expected: [3, 224, 224],
        });
        assert_eq!(
            e.to_string(),
            "pixel tensor 3x64x64 does not match the model's input 3x224x224"
        );
        assert_eq!(e.kind(), ErrorKind::Internal);
    }
}
