//! `cliplabel._cliplabel`: the Python extension (PyO3) over the cliplabel library, imported and
//! re-exported by the pure-Python package `cliplabel` (python/cliplabel/).
//!
//! It owns only the translation between Python and the library: arguments to the library's
//! option types, results to numpy arrays and Python objects, [`cliplabel::Error`] to the
//! exception classes of `cliplabel._errors` (chosen by [`cliplabel::Error::kind`], message =
//! the CLI's), and progress callbacks called with the GIL held. Every computation is the
//! library's, the one the CLI calls: [`cliplabel::embed_image_rows`] (embed), the pipeline +
//! [`ZeroShotClassifier`] / [`Head`] scoring + `make_row` (label / predict),
//! [`cliplabel::fit_head`], [`cliplabel::compare_sets`]. The GIL is released while Rust works.
//! Like the binary, this crate reads no environment itself: `cliplabel._env` (Python) reads
//! `HF_HOME`, `HF_HUB_OFFLINE` and `CLIPLABEL_KERNELS` at the edge and passes them in.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};

use numpy::{PyArray1, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::exceptions::{PyStopIteration, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyType};

use cliplabel::clip::hub::HubOptions;
use cliplabel::images::preprocess::{load_rgb as lib_load_rgb, preprocess};
use cliplabel::images::resize::Rgb8;
use cliplabel::jobs::label::make_row;
use cliplabel::jobs::pipeline::embed_images as pipeline_embed_images;
use cliplabel::jobs::tally::Tally;
use cliplabel::{
    collect_images, compare_sets, embed_image_rows, fit_head, write_report, Abstention, ClassList,
    CompareOptions, CompareSets, EmbedEvent, Engine as LibEngine, EngineOptions, Error, ErrorKind,
    Features, FitHeadOptions, Head as LibHead, Kernels, LabelledSet, Method, OptionError,
    Precision, Scorer, Shots, Templates, ZeroShotClassifier,
};

/// Prompts per text batch: as `cliplabel embed --text-file` (eight times the image batch).
const TEXT_BATCH_FACTOR: usize = 8;

// ---------------------------------------------------------------------------------------------
// Errors

/// The Python exception for a library error: the class of `cliplabel._errors` for its kind,
/// with the CLI's message; `kind` is set on it, and an I/O error also carries `errno` and
/// `filename` (its class is an `OSError` too).
fn py_err(py: Python<'_>, e: Error) -> PyErr {
    let class = match e.kind() {
        ErrorKind::Model => "ModelError",
        ErrorKind::Input => "InputError",
        ErrorKind::Output => "OutputError",
        ErrorKind::Io => "IoError",
        ErrorKind::Internal => "InternalError",
    };
    let kind = match e.kind() {
        ErrorKind::Model => "model",
        ErrorKind::Input => "input",
        ErrorKind::Output => "output",
        ErrorKind::Io => "io",
        ErrorKind::Internal => "internal",
    };
    let message = e.to_string();
    let build = || -> PyResult<PyErr> {
        let ty = py
            .import("cliplabel._errors")?
            .getattr(class)?
            .cast_into::<PyType>()?;
        let value = ty.call1((message.clone(),))?;
        value.setattr("kind", kind)?;
        if let Error::Io { path, source } = &e {
            if let Some(code) = source.raw_os_error() {
                value.setattr("errno", code)?;
                value.setattr("strerror", source.to_string())?;
            }
            value.setattr("filename", path.as_os_str())?;
        }
        Ok(PyErr::from_value(value))
    };
    build().unwrap_or_else(|import_failed| import_failed)
}

/// Converts a library result, mapping the error.
fn lib<T, E: Into<Error>>(py: Python<'_>, r: Result<T, E>) -> PyResult<T> {
    r.map_err(|e| py_err(py, e.into()))
}

// ---------------------------------------------------------------------------------------------
// Arguments

fn parse_features(s: &str) -> PyResult<Features> {
    match s {
        "projected" => Ok(Features::Projected),
        "pooled" => Ok(Features::Pooled),
        other => Err(PyValueError::new_err(format!(
            "features must be \"projected\" or \"pooled\", not {other:?}"
        ))),
    }
}

/// A path, or an iterable of paths, as a list (files and directories, as the CLI takes them).
fn path_list(obj: &Bound<'_, PyAny>) -> PyResult<Vec<PathBuf>> {
    let py = obj.py();
    let pathlike = py.import("os")?.getattr("PathLike")?;
    if obj.is_instance_of::<pyo3::types::PyString>()
        || obj.is_instance_of::<pyo3::types::PyBytes>()
        || obj.is_instance(&pathlike)?
    {
        return Ok(vec![obj.extract()?]);
    }
    let mut out = Vec::new();
    for item in obj.try_iter()? {
        out.push(item?.extract::<PathBuf>()?);
    }
    Ok(out)
}

/// Files and directories to the images to process (directories walked as the CLI walks them).
fn images_of(py: Python<'_>, obj: &Bound<'_, PyAny>) -> PyResult<Vec<PathBuf>> {
    let inputs = path_list(obj)?;
    py.detach(|| collect_images(&inputs))
        .map_err(|e| py_err(py, e))
}

/// A class list: a class file (a path) or class names (a list of strings).
fn class_list(py: Python<'_>, obj: &Bound<'_, PyAny>) -> PyResult<ClassList> {
    if obj.is_instance_of::<pyo3::types::PyString>() || !obj.hasattr("__iter__")? {
        let path: PathBuf = obj.extract()?;
        return lib(py, ClassList::from_file(&path));
    }
    let names: Vec<String> = obj.extract()?;
    lib(py, ClassList::from_names(&names))
}

/// Templates: a shipped set name or a template file (a string or path), or a list of
/// templates. Returns them with the text recorded in a head file.
fn templates(py: Python<'_>, obj: &Bound<'_, PyAny>) -> PyResult<(Templates, String)> {
    if obj.is_instance_of::<pyo3::types::PyString>() || !obj.hasattr("__iter__")? {
        let spec: PathBuf = obj.extract()?;
        let spec = spec.to_string_lossy().into_owned();
        return Ok((lib(py, Templates::resolve(&spec))?, spec));
    }
    let list: Vec<String> = obj.extract()?;
    Ok((lib(py, Templates::from_strings(&list))?, list.join(" | ")))
}

/// A progress callback: `None`, a callable `(done, total)`, or `True` for a tqdm bar (made by
/// `cliplabel._progress`). Returns the callable and what to call when the run ends.
fn progress_callback(
    py: Python<'_>,
    progress: Option<Bound<'_, PyAny>>,
    desc: &str,
) -> PyResult<Option<Py<PyAny>>> {
    match progress {
        None => Ok(None),
        Some(p) if p.is_none() => Ok(None),
        Some(p) if p.is_instance_of::<pyo3::types::PyBool>() => {
            if p.extract::<bool>()? {
                let cb = py
                    .import("cliplabel._progress")?
                    .getattr("tqdm_callback")?
                    .call1((desc,))?;
                // None when tqdm is not installed (the helper warns).
                Ok((!cb.is_none()).then(|| cb.unbind()))
            } else {
                Ok(None)
            }
        }
        Some(p) if p.is_callable() => Ok(Some(p.unbind())),
        Some(_) => Err(PyTypeError::new_err(
            "progress must be None, True (a tqdm bar) or a callable(done, total)",
        )),
    }
}

/// Tells a progress callback that the run ended (a tqdm bar closes), if it has `close`.
fn close_progress(py: Python<'_>, cb: &Option<Py<PyAny>>) -> PyResult<()> {
    if let Some(cb) = cb {
        let cb = cb.bind(py);
        if cb.hasattr("close")? {
            cb.call_method0("close")?;
        }
    }
    Ok(())
}

/// Embedding rows (`n * dim` values) as a float32 array `[n, dim]`.
fn rows_array<'py>(py: Python<'py>, rows: Vec<f32>, dim: usize) -> PyResult<Bound<'py, PyAny>> {
    let n = rows.len().checked_div(dim).unwrap_or(0);
    Ok(PyArray1::from_vec(py, rows).reshape([n, dim])?.into_any())
}

/// A float32 array `[n, dim]` (any layout) as rows, checking its width.
fn array_rows(obj: &Bound<'_, PyAny>, dim: usize, what: &str) -> PyResult<Vec<f32>> {
    let arr: PyReadonlyArrayDyn<'_, f32> = obj.extract().map_err(|_| {
        PyTypeError::new_err(format!(
            "{what}: expected a float32 numpy array of shape [n, {dim}] (use arr.astype(np.float32))"
        ))
    })?;
    let shape = arr.shape().to_vec();
    let ok = match shape.as_slice() {
        [_, d] => *d == dim,
        [d] => *d == dim,
        _ => false,
    };
    if !ok {
        return Err(PyValueError::new_err(format!(
            "{what}: expected shape [n, {dim}], got {shape:?}"
        )));
    }
    Ok(arr.as_array().iter().copied().collect())
}

// ---------------------------------------------------------------------------------------------
// Engine

/// A CLIP model ready to embed images and prompts: a local model directory (config.json,
/// model.safetensors, tokenizer.json) or a Hugging Face hub id looked up in the hub cache (as
/// the CLI's --model). Same numbers as the `cliplabel` CLI for the same files and settings.
///
/// - threads: worker threads for decoding and the model (default: every core); like the
///   CLI's --threads, it sizes one pool per process, so a second Engine must use the same count.
/// - batch_size: images per model batch (prompts are batched eight times as many).
/// - precision: the arithmetic of the encoders' linear layers, as the CLI's --precision:
///   "fp32" (exact, the default), "bf16" or "int8" (faster, approximate; where the CPU lacks
///   their instructions the engine falls back to the next precision, with a warning).
/// - max_pixels: images whose header declares more pixels are refused before decoding.
/// - hub_cache / offline / kernels: default to the environment, read as the CLI reads it
///   (HF_HOME, HF_HUB_OFFLINE, CLIPLABEL_KERNELS).
///
/// Raises ModelError (with the CLI's message) when the model cannot be loaded.
#[pyclass(name = "Engine", module = "cliplabel", frozen)]
struct PyEngine {
    inner: Arc<LibEngine>,
    batch_size: usize,
}

#[pymethods]
impl PyEngine {
    #[new]
    #[pyo3(signature = (model, threads=None, batch_size=32, precision="fp32", *, max_pixels=None, hub_cache=None, offline=None, kernels=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        model: PathBuf,
        threads: Option<usize>,
        batch_size: usize,
        precision: &str,
        max_pixels: Option<u64>,
        hub_cache: Option<PathBuf>,
        offline: Option<bool>,
        kernels: Option<String>,
    ) -> PyResult<Self> {
        let precision: Precision = precision.parse().map_err(PyValueError::new_err)?;
        if batch_size == 0 {
            return Err(PyValueError::new_err("batch_size must be at least 1"));
        }
        let env = py.import("cliplabel._env")?;
        let (env_cache, env_offline, env_kernels): (PathBuf, bool, String) =
            env.getattr("hub_and_kernels")?.call0()?.extract()?;
        let kernels: Kernels = kernels
            .unwrap_or(env_kernels)
            .parse()
            .map_err(PyValueError::new_err)?;
        if let Some(n) = threads.filter(|&n| n > 0) {
            // candle's CPU kernels size their work by RAYON_NUM_THREADS (as in the binary).
            env.getattr("set_threads")?.call1((n,))?;
        }
        let mut opts = EngineOptions::new(model.to_string_lossy().into_owned())
            .threads(threads)
            .kernels(kernels)
            .precision(precision)
            .hub(HubOptions {
                cache_dir: hub_cache.unwrap_or(env_cache),
                offline: offline.unwrap_or(env_offline),
            });
        if let Some(m) = max_pixels {
            opts = opts.max_pixels(m);
        }
        let engine = py
            .detach(|| LibEngine::try_new(opts))
            .map_err(|e| py_err(py, e))?;
        if let Some(note) = engine.precision_note() {
            // The CLI prints it as a note; Python shows it as a warning.
            let warnings = py.import("warnings")?;
            warnings.call_method1("warn", (note.to_string(),))?;
        }
        Ok(PyEngine {
            inner: Arc::new(engine),
            batch_size,
        })
    }

    /// The model as given.
    #[getter]
    fn model(&self) -> String {
        self.inner.source().to_string()
    }

    /// A fingerprint of the model files (as recorded in heads, caches and run files).
    #[getter]
    fn fingerprint(&self) -> String {
        self.inner.fingerprint().to_string()
    }

    /// Width of the projected embeddings (what embed_images and embed_texts return).
    #[getter]
    fn dim(&self) -> usize {
        self.inner.dim(Features::Projected, true)
    }

    /// The precision the encoders' linear layers run in: the one asked for, or the next
    /// lower one this CPU supports (a warning said why when the engine was made).
    #[getter]
    fn precision(&self) -> &'static str {
        self.inner.precision().name()
    }

    /// Images per model batch.
    #[getter]
    fn batch_size(&self) -> usize {
        self.batch_size
    }

    fn __repr__(&self) -> String {
        format!(
            "Engine({:?}, dim={}, batch_size={})",
            self.inner.source(),
            self.dim(),
            self.batch_size
        )
    }

    /// embed_images(paths, progress=None, features="projected") -> EmbedResult
    ///
    /// Embeds image files: `paths` is a file, a directory or a list of them (directories are
    /// walked recursively for jpg/jpeg/png/webp/bmp/gif/tif/tiff in sorted order, as the CLI
    /// does). Returns EmbedResult(embeddings float32 [n, dim], paths, failed): every image is
    /// in `paths` (row i of `embeddings`) or in `failed` as (path, reason), the reason the CLI
    /// gives. Bit-identical to `cliplabel embed` with the same batch size.
    ///
    /// progress: a callable(done, total) called after each batch, or True for a tqdm bar.
    /// features: "projected" (get_image_features) or "pooled" (before the projection).
    #[pyo3(signature = (paths, progress=None, features="projected"))]
    fn embed_images(
        &self,
        py: Python<'_>,
        paths: &Bound<'_, PyAny>,
        progress: Option<Bound<'_, PyAny>>,
        features: &str,
    ) -> PyResult<EmbedResult> {
        let features = parse_features(features)?;
        let paths = images_of(py, paths)?;
        let cb = progress_callback(py, progress, "embedding")?;
        let engine = self.inner.clone();
        let batch = self.batch_size;
        let mut callback_error: Option<PyErr> = None;
        let result = py.detach(|| {
            embed_image_rows(&engine, paths, batch, features, &mut |ev| {
                let EmbedEvent::Embedded { done, total } = ev else {
                    return Ok(());
                };
                Python::attach(|py| {
                    let r = py.check_signals().and_then(|()| match &cb {
                        Some(cb) => cb.call1(py, (done, total)).map(drop),
                        None => Ok(()),
                    });
                    r.map_err(|e| {
                        callback_error = Some(e);
                        Error::Cancelled {
                            reason: "the progress callback raised",
                        }
                    })
                })
            })
        });
        close_progress(py, &cb)?;
        if let Some(e) = callback_error {
            return Err(e);
        }
        let e = lib(py, result)?;
        let dim = engine.dim(features, true);
        Ok(EmbedResult {
            embeddings: rows_array(py, e.rows, dim)?.unbind(),
            paths: e.paths,
            failed: e.failed,
        })
    }

    /// embed_texts(texts) -> numpy.ndarray
    ///
    /// Embeds prompts (a string or a list of strings) with the text tower: float32
    /// [n, dim], row i for texts[i] (as `cliplabel embed --text-file`).
    fn embed_texts<'py>(
        &self,
        py: Python<'py>,
        texts: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let texts: Vec<String> = if texts.is_instance_of::<pyo3::types::PyString>() {
            vec![texts.extract()?]
        } else {
            texts.extract()?
        };
        let engine = self.inner.clone();
        let batch = self.batch_size.max(1) * TEXT_BATCH_FACTOR;
        let rows = py.detach(|| -> cliplabel::Result<Vec<f32>> {
            let t = engine.embed_texts(&texts, batch)?;
            Ok(t.flatten_all()?.to_vec1::<f32>()?)
        });
        let rows = lib(py, rows)?;
        rows_array(py, rows, self.inner.dim(Features::Projected, false))
    }

    /// embed_pixels(pixels, features="projected") -> numpy.ndarray
    ///
    /// Embeds images already in memory: a uint8 RGB array of shape [H, W, 3] (one image) or
    /// [N, H, W, 3], e.g. numpy.asarray(pil_image.convert("RGB")) or a video frame. They are
    /// resized, cropped and normalised exactly as a decoded file is, so the embedding of a
    /// file's decoded pixels equals embed_images of the file. Returns float32 [N, dim]
    /// ([1, dim] for one image).
    #[pyo3(signature = (pixels, features="projected"))]
    fn embed_pixels<'py>(
        &self,
        py: Python<'py>,
        pixels: &Bound<'py, PyAny>,
        features: &str,
    ) -> PyResult<Bound<'py, PyAny>> {
        let features = parse_features(features)?;
        let arr: PyReadonlyArrayDyn<'_, u8> = pixels.extract().map_err(|_| {
            PyTypeError::new_err(
                "pixels: expected a uint8 numpy array [H, W, 3] or [N, H, W, 3] (RGB)",
            )
        })?;
        let shape = arr.shape().to_vec();
        let (n, h, w) = match shape.as_slice() {
            [h, w, 3] => (1, *h, *w),
            [n, h, w, 3] => (*n, *h, *w),
            _ => {
                return Err(PyValueError::new_err(format!(
                    "pixels: expected shape [H, W, 3] or [N, H, W, 3] (RGB, uint8), got {shape:?}"
                )))
            }
        };
        if h == 0 || w == 0 {
            return Err(PyValueError::new_err(format!(
                "pixels: an image needs at least one pixel, got shape {shape:?}"
            )));
        }
        let bytes: Vec<u8> = arr.as_array().iter().copied().collect();
        drop(arr);
        let engine = self.inner.clone();
        let batch = self.batch_size;
        let rows = py.detach(|| -> cliplabel::Result<Vec<f32>> {
            let cfg = engine.preprocess_config();
            let plane = h * w * 3;
            let mut rows = Vec::new();
            for chunk in (0..n).collect::<Vec<_>>().chunks(batch) {
                let px: Vec<_> = chunk
                    .iter()
                    .map(|&i| {
                        let img = Rgb8 {
                            width: w,
                            height: h,
                            data: bytes[i * plane..(i + 1) * plane].to_vec(),
                        };
                        preprocess(&img, cfg)
                    })
                    .collect();
                let t = engine.embed_pixels(&px, features)?;
                rows.extend(t.flatten_all()?.to_vec1::<f32>()?);
            }
            Ok(rows)
        });
        let rows = lib(py, rows)?;
        rows_array(py, rows, self.inner.dim(features, true))
    }
}

/// The result of Engine.embed_images: `embeddings` (float32 [n, dim]) with row i for
/// `paths[i]`, and `failed`, the images that could not be embedded as (path, reason). Every
/// input image is in exactly one of `paths` and `failed`.
#[pyclass(module = "cliplabel", frozen)]
struct EmbedResult {
    embeddings: Py<PyAny>,
    paths: Vec<PathBuf>,
    failed: Vec<(PathBuf, String)>,
}

#[pymethods]
impl EmbedResult {
    /// float32 array [n, dim], row i for paths[i].
    #[getter]
    fn embeddings(&self, py: Python<'_>) -> Py<PyAny> {
        self.embeddings.clone_ref(py)
    }

    /// The images embedded, in input order (str).
    #[getter]
    fn paths<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        PyList::new(py, self.paths.iter().map(|p| p.as_os_str()))
    }

    /// The images that failed, as (path, reason).
    #[getter]
    fn failed<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        PyList::new(
            py,
            self.failed.iter().map(|(p, r)| (p.as_os_str(), r.as_str())),
        )
    }

    fn __len__(&self) -> usize {
        self.paths.len()
    }

    fn __repr__(&self) -> String {
        format!(
            "EmbedResult({} embedded, {} failed)",
            self.paths.len(),
            self.failed.len()
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Labelling

/// What labels images: a zero-shot classifier or a trained head.
#[derive(Clone)]
enum ScorerRef {
    ZeroShot(Arc<ZeroShotClassifier>),
    Head(Arc<LibHead>),
}

impl ScorerRef {
    fn scorer(&self) -> &(dyn Scorer + Send + Sync) {
        match self {
            ScorerRef::ZeroShot(z) => z.as_ref(),
            ScorerRef::Head(h) => h.as_ref(),
        }
    }

    /// Probabilities `[n, classes]` for embeddings given as a float32 array `[n, dim]`.
    fn probabilities<'py>(
        &self,
        py: Python<'py>,
        embeddings: &Bound<'py, PyAny>,
        dim: usize,
    ) -> PyResult<Bound<'py, PyAny>> {
        let rows = array_rows(embeddings, dim, "embeddings")?;
        let s = self.clone();
        let scores = py.detach(|| s.scorer().score(&rows));
        let scores = lib(py, scores)?;
        let c = self.scorer().classes().len();
        let probs: Vec<f32> = scores.into_iter().flat_map(|s| s.probs).collect();
        rows_array(py, probs, c)
    }

    /// Starts labelling `paths` on a worker thread; the returned iterator yields the labels.
    fn run(
        &self,
        py: Python<'_>,
        engine: &PyEngine,
        paths: Vec<PathBuf>,
        top_k: usize,
        abstention: Abstention,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<LabelRun> {
        if top_k == 0 {
            return Err(py_err(py, Error::Option(OptionError::TopKZero)));
        }
        let classes = self.scorer().classes().to_vec();
        let k = top_k.min(classes.len());
        let total = paths.len();
        let (tx, rx) = mpsc::sync_channel::<Message>(1);
        let (lib_engine, scorer, batch) = (engine.inner.clone(), self.clone(), engine.batch_size);
        std::thread::Builder::new()
            .name("cliplabel-label".into())
            .spawn(move || {
                let features = scorer.scorer().features();
                let dim = lib_engine.dim(features, true);
                let mut done = 0usize;
                let result = pipeline_embed_images(&lib_engine, paths, batch, features, |b| {
                    done += b.ok.len() + b.failed.len();
                    let values: Vec<f32> = match &b.embeddings {
                        Some(t) => t.flatten_all()?.to_vec1()?,
                        None => Vec::new(),
                    };
                    let scores = if b.ok.is_empty() {
                        Vec::new()
                    } else {
                        scorer.scorer().score(&values)?
                    };
                    if scores.len() != b.ok.len() || values.len() != b.ok.len() * dim {
                        return Err(Error::ScorerCount {
                            results: scores.len(),
                            images: b.ok.len(),
                        });
                    }
                    let rows =
                        b.ok.into_iter()
                            .zip(&scores)
                            .map(|(p, s)| {
                                let row = make_row(
                                    &cliplabel::path_text(&p),
                                    s,
                                    &classes,
                                    k,
                                    &abstention,
                                    None,
                                );
                                (p, row)
                            })
                            .collect();
                    tx.send(Message::Batch {
                        rows,
                        failed: b.failed,
                        done,
                    })
                    // The iterator was dropped: stop reading images.
                    .map_err(|_| Error::Cancelled {
                        reason: "the label iterator was closed",
                    })
                });
                let _ = tx.send(Message::End(
                    result.map_err(|e| cliplabel::jobs::tally::stopped(done, total, e)),
                ));
            })
            .map_err(|e| PyValueError::new_err(format!("cannot start a thread: {e}")))?;
        Ok(LabelRun {
            state: Mutex::new(RunState {
                rx: Some(rx),
                ready: VecDeque::new(),
                failed: Vec::new(),
                labelled: 0,
                abstained: 0,
                total,
                progress,
                waiting: false,
            }),
        })
    }
}

enum Message {
    Batch {
        rows: Vec<(PathBuf, cliplabel::jobs::writers::LabelRow)>,
        failed: Vec<(PathBuf, String)>,
        done: usize,
    },
    End(cliplabel::Result<()>),
}

/// One labelled image: `path`, `label` (`"unknown"` when abstained), `score` (the top-1
/// probability), `top_k` [(label, probability), ...] best first, `abstained`, `predicted`
/// (the top-1 class even when abstained) and `cosine` (zero-shot: the top-1 cosine
/// similarity; None for a head). The same values as a row of `cliplabel label -o OUT.jsonl`.
#[pyclass(module = "cliplabel", frozen, get_all)]
struct Label {
    path: Py<PyAny>,
    label: String,
    score: f32,
    top_k: Vec<(String, f32)>,
    abstained: bool,
    predicted: String,
    cosine: Option<f32>,
}

#[pymethods]
impl Label {
    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!(
            "Label(path={}, label={:?}, score={:.6}, abstained={})",
            self.path.bind(py).repr()?,
            self.label,
            self.score,
            if self.abstained { "True" } else { "False" }
        ))
    }
}

struct RunState {
    rx: Option<mpsc::Receiver<Message>>,
    ready: VecDeque<Label>,
    failed: Vec<(PathBuf, String)>,
    labelled: usize,
    abstained: usize,
    total: usize,
    progress: Option<Py<PyAny>>,
    /// A thread is waiting for the next batch (the receiver is out of `rx`).
    waiting: bool,
}

/// An iterator over the labels of a ZeroShot.label or Head.predict run, in input order,
/// computed on a worker thread a batch ahead. Images that cannot be read are not yielded:
/// they collect in `failed` as (path, reason), so that when the iterator is exhausted every
/// input is either yielded or in `failed` (checked; a gap raises InternalError). `total` is
/// the number of inputs; `summary()` gives the counts. Dropping the iterator stops the run.
#[pyclass(module = "cliplabel", frozen)]
struct LabelRun {
    state: Mutex<RunState>,
}

impl LabelRun {
    fn lock(&self) -> PyResult<std::sync::MutexGuard<'_, RunState>> {
        self.state
            .lock()
            .map_err(|_| PyValueError::new_err("the label iterator failed in another thread"))
    }
}

#[pymethods]
impl LabelRun {
    fn __iter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Label> {
        loop {
            // The receiver is taken out while this thread waits (without the GIL) for the
            // next batch, and the lock is never held across a wait or a Python call.
            let rx = {
                let mut st = self.lock()?;
                if let Some(l) = st.ready.pop_front() {
                    return Ok(l);
                }
                if st.waiting {
                    return Err(PyValueError::new_err(
                        "the label iterator is being advanced by another thread",
                    ));
                }
                match st.rx.take() {
                    Some(rx) => {
                        st.waiting = true;
                        rx
                    }
                    None => return Err(PyStopIteration::new_err(())),
                }
            };
            let (rx, msg) = py.detach(move || {
                let msg = rx.recv();
                (rx, msg)
            });
            let mut st = self.lock()?;
            st.waiting = false;
            match msg {
                Ok(Message::Batch { rows, failed, done }) => {
                    st.rx = Some(rx);
                    st.labelled += rows.len();
                    st.abstained += rows.iter().filter(|(_, r)| r.abstained).count();
                    for (p, r) in rows {
                        st.ready.push_back(Label {
                            path: p.as_os_str().into_pyobject(py)?.into_any().unbind(),
                            predicted: r.top.first().map(|t| t.0.clone()).unwrap_or_default(),
                            label: r.label,
                            score: r.score,
                            top_k: r.top,
                            abstained: r.abstained,
                            cosine: r.cosine,
                        });
                    }
                    st.failed.extend(failed);
                    let cb = st.progress.as_ref().map(|c| c.clone_ref(py));
                    let total = st.total;
                    drop(st);
                    py.check_signals()?;
                    if let Some(cb) = cb {
                        cb.call1(py, (done, total))?;
                    }
                }
                Ok(Message::End(result)) => {
                    let cb = st.progress.take();
                    let tally = Tally {
                        inputs: st.total,
                        done: st.labelled,
                        abstained: st.abstained,
                        failed: st.failed.len(),
                        ..Tally::default()
                    };
                    drop(st);
                    close_progress(py, &cb)?;
                    lib(py, result)?;
                    lib(py, tally.check("label"))?;
                }
                Err(_) => {
                    return Err(py_err(py, Error::WorkerLost { what: "labelling" }));
                }
            }
        }
    }

    /// The images that could not be labelled so far, as (path, reason).
    #[getter]
    fn failed<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let st = self.lock()?;
        PyList::new(
            py,
            st.failed.iter().map(|(p, r)| (p.as_os_str(), r.as_str())),
        )
    }

    /// Number of input images.
    #[getter]
    fn total(&self) -> PyResult<usize> {
        let st = self.lock()?;
        Ok(st.total)
    }

    /// Counts so far: {"total", "labelled", "abstained", "failed", "finished"}.
    fn summary<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let st = self.lock()?;
        let d = PyDict::new(py);
        d.set_item("total", st.total)?;
        d.set_item("labelled", st.labelled)?;
        d.set_item("abstained", st.abstained)?;
        d.set_item("failed", st.failed.len())?;
        d.set_item(
            "finished",
            st.rx.is_none() && !st.waiting && st.ready.is_empty(),
        )?;
        Ok(d)
    }
}

fn abstention(min_score: Option<f32>, min_margin: Option<f32>) -> PyResult<Abstention> {
    for (name, v) in [("min_score", min_score), ("min_margin", min_margin)] {
        if let Some(v) = v {
            if !(0.0..=1.0).contains(&v) {
                return Err(PyValueError::new_err(format!(
                    "{name} must be between 0 and 1, got {v}"
                )));
            }
        }
    }
    Ok(Abstention {
        min_score,
        min_margin,
    })
}

/// A zero-shot classifier: one prompt embedding per class, from class names and templates,
/// as `cliplabel label` builds it.
///
/// ZeroShot(engine, classes, templates="photo", *, cache_dir=None)
///
/// - classes: a list of class names, or the path of a class file (one class per line, `#`
///   comments, `name: synonym | synonym`).
/// - templates: a shipped set name (photo, imagenet80, ..., shapes), a template file, or a
///   list of templates such as ["a photo of a {}."].
/// - cache_dir: where to cache the class embeddings (default: no cache).
#[pyclass(name = "ZeroShot", module = "cliplabel", frozen)]
struct PyZeroShot {
    engine: Py<PyEngine>,
    clf: Arc<ZeroShotClassifier>,
}

#[pymethods]
impl PyZeroShot {
    #[new]
    #[pyo3(signature = (engine, classes, templates=None, *, cache_dir=None))]
    fn new(
        py: Python<'_>,
        engine: Py<PyEngine>,
        classes: &Bound<'_, PyAny>,
        templates: Option<&Bound<'_, PyAny>>,
        cache_dir: Option<PathBuf>,
    ) -> PyResult<Self> {
        let classes = class_list(py, classes)?;
        let (templates, _) = match templates {
            Some(t) => self::templates(py, t)?,
            None => (lib(py, Templates::resolve("photo"))?, "photo".into()),
        };
        let e = engine.get().inner.clone();
        let built = py.detach(|| {
            ZeroShotClassifier::load_or_build(&e, &classes, &templates, cache_dir.as_deref())
        });
        let (clf, _) = lib(py, built)?;
        Ok(PyZeroShot {
            engine,
            clf: Arc::new(clf),
        })
    }

    /// The class names, in score order.
    #[getter]
    fn classes(&self) -> Vec<String> {
        self.clf.classes.clone()
    }

    /// The engine the classifier was built with.
    #[getter]
    fn engine(&self, py: Python<'_>) -> Py<PyEngine> {
        self.engine.clone_ref(py)
    }

    /// The class embeddings: float32 [classes, dim], each row of unit length.
    #[getter]
    fn weights<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        rows_array(py, self.clf.weights.clone(), self.clf.dim)
    }

    fn __repr__(&self) -> String {
        format!("ZeroShot({} classes)", self.clf.classes.len())
    }

    /// label(paths, top_k=1, min_score=None, min_margin=None, progress=None) -> LabelRun
    ///
    /// Labels image files (a file, a directory or a list of them, as the CLI takes them) and
    /// returns an iterator of Label records in input order; images that cannot be read go to
    /// the iterator's `failed` list with the CLI's reason. min_score / min_margin: label
    /// `unknown` when the top-1 probability (or its margin over the second) is below it.
    /// progress: a callable(done, total), or True for a tqdm bar.
    #[pyo3(signature = (paths, top_k=1, min_score=None, min_margin=None, progress=None))]
    fn label(
        &self,
        py: Python<'_>,
        paths: &Bound<'_, PyAny>,
        top_k: usize,
        min_score: Option<f32>,
        min_margin: Option<f32>,
        progress: Option<Bound<'_, PyAny>>,
    ) -> PyResult<LabelRun> {
        let abst = abstention(min_score, min_margin)?;
        let paths = images_of(py, paths)?;
        let cb = progress_callback(py, progress, "labelling")?;
        ScorerRef::ZeroShot(self.clf.clone()).run(py, self.engine.get(), paths, top_k, abst, cb)
    }

    /// scores(embeddings) -> numpy.ndarray
    ///
    /// Class probabilities (softmax of the scaled cosines, as `label` computes them) for image
    /// embeddings float32 [n, dim] (e.g. EmbedResult.embeddings): float32 [n, classes].
    fn scores<'py>(
        &self,
        py: Python<'py>,
        embeddings: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        ScorerRef::ZeroShot(self.clf.clone()).probabilities(py, embeddings, self.clf.dim)
    }
}

// ---------------------------------------------------------------------------------------------
// Heads

fn parse_method(s: &str) -> PyResult<Method> {
    match s {
        "probe" => Ok(Method::Probe),
        "zero-shot-init" => Ok(Method::ZeroShotInit),
        "interpolate" => Ok(Method::Interpolate),
        other => Err(PyValueError::new_err(format!(
            "method must be \"probe\", \"zero-shot-init\" or \"interpolate\", not {other:?}"
        ))),
    }
}

/// A labelled set: an ImageFolder directory (DIR/<class>/<image>), a CSV with `path` and
/// `label` columns, or (path, label) pairs (classes in first-seen order, as from a CSV).
fn labelled_set(py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<LabelledSet> {
    let pathlike = py.import("os")?.getattr("PathLike")?;
    if data.is_instance_of::<pyo3::types::PyString>() || data.is_instance(&pathlike)? {
        let p: PathBuf = data.extract()?;
        let r = if p.is_dir() {
            LabelledSet::from_image_folder(&p)
        } else {
            LabelledSet::from_csv(&p)
        };
        return lib(py, r);
    }
    let mut set = LabelledSet {
        classes: Vec::new(),
        paths: Vec::new(),
        labels: Vec::new(),
    };
    for item in data.try_iter()? {
        let (p, l): (PathBuf, String) = item?.extract().map_err(|_| {
            PyTypeError::new_err("data: expected a directory, a CSV file or (path, label) pairs")
        })?;
        let idx = match set.classes.iter().position(|c| *c == l) {
            Some(i) => i,
            None => {
                set.classes.push(l);
                set.classes.len() - 1
            }
        };
        set.paths.push(p);
        set.labels.push(idx);
    }
    if set.paths.is_empty() {
        return Err(py_err(
            py,
            cliplabel::images::dataset::DatasetError::NoRows {
                path: "data (no (path, label) pairs)".into(),
            }
            .into(),
        ));
    }
    Ok(set)
}

/// A linear head on CLIP image embeddings, trained by Head.fit or `cliplabel fit` and loaded
/// by Head.load. `classes` and `meta` (the training metadata) describe it; `failed` lists the
/// training images that could not be read (after Head.fit).
#[pyclass(name = "Head", module = "cliplabel", frozen)]
struct PyHead {
    head: Arc<LibHead>,
    /// The file it was loaded from or saved to (None: trained in memory).
    path: Option<PathBuf>,
    failed: Vec<(String, String)>,
}

#[pymethods]
impl PyHead {
    /// Head.load(path) -> Head
    ///
    /// Loads a head file written by Head.fit or `cliplabel fit`.
    #[staticmethod]
    fn load(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        let head = lib(py, LibHead::load(&path))?;
        Ok(PyHead {
            head: Arc::new(head),
            path: Some(path),
            failed: Vec::new(),
        })
    }

    /// Head.fit(engine, data, out=None, *, method="probe", features="projected", folds=5,
    ///          c_grid=None, balanced=False, seed=0, templates="photo", cache_dir=None,
    ///          force=False) -> Head
    ///
    /// Trains a head as `cliplabel fit` does. data: an ImageFolder directory
    /// (DIR/<class>/<image>), a CSV file with `path` and `label` columns, or a list of
    /// (path, label) pairs. out: the head file to write (with OUT.failed.jsonl); None keeps it
    /// in memory only. method: "probe", "zero-shot-init" or "interpolate". Images that cannot
    /// be read are skipped and listed in `failed`.
    #[staticmethod]
    #[pyo3(signature = (engine, data, out=None, *, method="probe", features="projected", folds=5, c_grid=None, balanced=false, seed=0, templates=None, cache_dir=None, force=false))]
    #[allow(clippy::too_many_arguments)]
    fn fit(
        py: Python<'_>,
        engine: &PyEngine,
        data: &Bound<'_, PyAny>,
        out: Option<PathBuf>,
        method: &str,
        features: &str,
        folds: usize,
        c_grid: Option<Vec<f64>>,
        balanced: bool,
        seed: u64,
        templates: Option<&Bound<'_, PyAny>>,
        cache_dir: Option<PathBuf>,
        force: bool,
    ) -> PyResult<Self> {
        let set = labelled_set(py, data)?;
        let templates = match templates {
            Some(t) => self::templates(py, t)?,
            None => (lib(py, Templates::resolve("photo"))?, "photo".into()),
        };
        let scratch = match &out {
            Some(_) => None,
            None => Some(
                tempfile::tempdir().map_err(|e| py_err(py, Error::io(std::env::temp_dir(), e)))?,
            ),
        };
        let file = match (&out, &scratch) {
            (Some(o), _) => o.clone(),
            (None, Some(d)) => d.path().join("head.safetensors"),
            (None, None) => unreachable!("a scratch directory exists when out is None"),
        };
        let opts = FitHeadOptions {
            out: file.clone(),
            method: parse_method(method)?,
            features: parse_features(features)?,
            folds,
            c_grid,
            balanced,
            seed,
            templates,
            cache_dir,
            batch_size: engine.batch_size,
        };
        lib(py, opts.check(force))?;
        let e = engine.inner.clone();
        let mut failed = Vec::new();
        let trained = py.detach(|| -> cliplabel::Result<LibHead> {
            fit_head(&e, &set, &opts, &mut |f| {
                failed.push((f.path.clone(), f.error.clone()))
            })?;
            LibHead::load(&file)
        });
        let head = lib(py, trained)?;
        Ok(PyHead {
            head: Arc::new(head),
            path: out,
            failed,
        })
    }

    /// The class names, in score order.
    #[getter]
    fn classes(&self) -> Vec<String> {
        self.head.meta.classes.clone()
    }

    /// The head's training metadata (as stored in the file) as a dict.
    #[getter]
    fn meta<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let text = serde_json::to_string(&self.head.meta)
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        py.import("json")?.call_method1("loads", (text,))
    }

    /// The file the head was loaded from or written to (None when trained in memory).
    #[getter]
    fn path<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        self.path
            .as_ref()
            .map(|p| Ok(p.as_os_str().into_pyobject(py)?.into_any()))
            .transpose()
    }

    /// Training images that could not be read, as (path, reason) (Head.fit only).
    #[getter]
    fn failed(&self) -> Vec<(String, String)> {
        self.failed.clone()
    }

    fn __repr__(&self) -> String {
        format!(
            "Head({} classes, {}, dim={})",
            self.head.meta.classes.len(),
            self.head.meta.method.name(),
            self.head.meta.dim
        )
    }

    /// predict(engine, paths, top_k=1, min_score=None, min_margin=None, progress=None)
    ///     -> LabelRun
    ///
    /// Labels image files with the head, as `cliplabel predict` does (refusing a head trained
    /// for another model): an iterator of Label records, failures in its `failed`.
    #[pyo3(signature = (engine, paths, top_k=1, min_score=None, min_margin=None, progress=None))]
    #[allow(clippy::too_many_arguments)]
    fn predict(
        &self,
        py: Python<'_>,
        engine: &PyEngine,
        paths: &Bound<'_, PyAny>,
        top_k: usize,
        min_score: Option<f32>,
        min_margin: Option<f32>,
        progress: Option<Bound<'_, PyAny>>,
    ) -> PyResult<LabelRun> {
        let shown = self
            .path
            .clone()
            .unwrap_or_else(|| PathBuf::from("(head trained in memory)"));
        lib(py, self.head.check_model(&engine.inner, &shown))?;
        let abst = abstention(min_score, min_margin)?;
        let paths = images_of(py, paths)?;
        let cb = progress_callback(py, progress, "predicting")?;
        ScorerRef::Head(self.head.clone()).run(py, engine, paths, top_k, abst, cb)
    }

    /// scores(embeddings) -> numpy.ndarray
    ///
    /// Class probabilities for image embeddings float32 [n, dim] of the head's features:
    /// float32 [n, classes].
    fn scores<'py>(
        &self,
        py: Python<'py>,
        embeddings: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        ScorerRef::Head(self.head.clone()).probabilities(py, embeddings, self.head.meta.dim)
    }
}

// ---------------------------------------------------------------------------------------------
// compare, load_rgb

/// compare(engine, train, test, report=None, *, templates=("photo",), shots=(1, 2, 4, 8, 16,
///         "all"), seeds=3, cv=5, cache_dir=None, log=None) -> dict
///
/// Compares zero-shot prompts with heads trained on k images per class, as
/// `cliplabel compare` does: train and test are ImageFolder directories. Returns the results
/// (the report's results.json) as a dict, plus "failed": [(path, reason)] for images that
/// could not be read. report: a directory for report.md, results.json and the plots (None:
/// no report is written). log: a callable(str) for progress messages.
#[pyfunction]
#[pyo3(signature = (engine, train, test, report=None, *, templates=None, shots=None, seeds=3, cv=5, cache_dir=None, log=None))]
#[allow(clippy::too_many_arguments)]
fn compare<'py>(
    py: Python<'py>,
    engine: &PyEngine,
    train: PathBuf,
    test: PathBuf,
    report: Option<PathBuf>,
    templates: Option<Vec<String>>,
    shots: Option<Vec<Bound<'py, PyAny>>>,
    seeds: usize,
    cv: usize,
    cache_dir: Option<PathBuf>,
    log: Option<Py<PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let shots: Vec<Shots> = match shots {
        None => "1,2,4,8,16,all"
            .split(',')
            .map(|s| s.parse().expect("the default shots parse"))
            .collect(),
        Some(list) => list
            .iter()
            .map(|s| {
                let text = s.str()?.to_string();
                text.parse::<Shots>()
                    .map_err(|e| PyValueError::new_err(format!("shots: {e}")))
            })
            .collect::<PyResult<_>>()?,
    };
    let scratch = match &report {
        Some(_) => None,
        None => {
            Some(tempfile::tempdir().map_err(|e| py_err(py, Error::io(std::env::temp_dir(), e)))?)
        }
    };
    let report_dir = match (&report, &scratch) {
        (Some(r), _) => r.clone(),
        (None, Some(d)) => d.path().to_path_buf(),
        (None, None) => unreachable!("a scratch directory exists when report is None"),
    };
    let sets = lib(py, CompareSets::load(&train, &test, &report_dir))?;
    let opts = CompareOptions {
        templates: templates.unwrap_or_else(|| vec!["photo".into()]),
        shots,
        seeds,
        folds: cv,
    };
    let e = engine.inner.clone();
    let batch = engine.batch_size;
    let mut failed: Vec<(String, String)> = Vec::new();
    let mut log_error: Option<PyErr> = None;
    let results = py.detach(|| {
        let results = compare_sets(
            &e,
            &sets,
            &opts,
            cache_dir.as_deref(),
            batch,
            &mut |f| failed.push((f.path.clone(), f.error.clone())),
            |m| {
                if let (Some(cb), None) = (&log, &log_error) {
                    Python::attach(|py| {
                        if let Err(err) = cb.call1(py, (m,)) {
                            log_error = Some(err);
                        }
                    });
                }
            },
        )?;
        if report.is_some() {
            write_report(&report_dir, &results)?;
        }
        Ok::<_, Error>(results)
    });
    if let Some(err) = log_error {
        return Err(err);
    }
    let results = lib(py, results)?;
    let file = cliplabel::eval::report::ResultsFile::new(&results);
    let text = serde_json::to_string(&file).map_err(|e| PyValueError::new_err(e.to_string()))?;
    let dict = py.import("json")?.call_method1("loads", (text,))?;
    dict.set_item("failed", failed)?;
    Ok(dict)
}

/// load_rgb(path, max_pixels=89478485) -> numpy.ndarray
///
/// Decodes an image file to uint8 RGB [H, W, 3] with cliplabel's decoders (the pixels Pillow
/// gives, transparency composited onto white as CLIP's processor does): what Engine.embed_images
/// embeds, so Engine.embed_pixels(load_rgb(f)) equals embed_images([f]).
#[pyfunction]
#[pyo3(signature = (path, max_pixels=None))]
fn load_rgb<'py>(
    py: Python<'py>,
    path: PathBuf,
    max_pixels: Option<u64>,
) -> PyResult<Bound<'py, PyAny>> {
    let max = max_pixels.unwrap_or(cliplabel::images::limits::DEFAULT_MAX_PIXELS);
    let img = py.detach(|| lib_load_rgb(Path::new(&path), max));
    let img = lib(py, img)?;
    let (h, w) = (img.height, img.width);
    Ok(PyArray1::from_vec(py, img.data)
        .reshape([h, w, 3])?
        .into_any())
}

/// The names of the shipped template sets (for ZeroShot's `templates`).
#[pyfunction]
fn template_sets() -> Vec<&'static str> {
    Templates::shipped_names()
}

/// Panics caught per image (a decoder crash fails that image only, see the library's
/// `util::isolate`) are reported as that image's failure: as in the binary, the panic hook
/// stays silent for them and prints every other panic as before.
fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !cliplabel::in_isolation() {
                default_hook(info);
            }
        }));
    });
}

#[pymodule]
fn _cliplabel(m: &Bound<'_, PyModule>) -> PyResult<()> {
    install_panic_hook();
    m.add_class::<PyEngine>()?;
    m.add_class::<EmbedResult>()?;
    m.add_class::<PyZeroShot>()?;
    m.add_class::<LabelRun>()?;
    m.add_class::<Label>()?;
    m.add_class::<PyHead>()?;
    m.add_function(wrap_pyfunction!(compare, m)?)?;
    m.add_function(wrap_pyfunction!(load_rgb, m)?)?;
    m.add_function(wrap_pyfunction!(template_sets, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add(
        "DEFAULT_MAX_PIXELS",
        cliplabel::images::limits::DEFAULT_MAX_PIXELS,
    )?;
    Ok(())
}
