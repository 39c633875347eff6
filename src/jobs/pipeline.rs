//! The bounded embedding pipeline: image files are decoded and preprocessed on rayon workers
//! while the model runs on the previous batch (at most two batches of pixels wait), and each
//! batch's embeddings and failures go to a callback in input order.

use std::path::PathBuf;
use std::sync::mpsc;

use candle_core::Tensor;
use rayon::prelude::*;

use crate::clip::engine::{Engine, Features};
use crate::error::{Error, Result};
use crate::images::preprocess::Pixels;

/// One batch of results from [`embed_images`].
pub struct ImageBatch {
    /// The paths that were embedded, in input order.
    pub ok: Vec<PathBuf>,
    /// Their embeddings, one row per entry of `ok` (`None` when every image of the batch failed).
    pub embeddings: Option<Tensor>,
    /// Paths that failed, with the reason.
    pub failed: Vec<(PathBuf, String)>,
}

/// Embeds images in batches, decoding and preprocessing the next batch on rayon workers while
/// the model runs on the current one (a bounded pipeline: at most two batches of pixels wait).
/// `on_batch` sees the batches in input order; returning an error stops the run.
pub fn embed_images<I, F>(
    engine: &Engine,
    paths: I,
    batch_size: usize,
    features: Features,
    mut on_batch: F,
) -> Result<()>
where
    I: IntoIterator<Item = PathBuf>,
    I::IntoIter: Send,
    F: FnMut(ImageBatch) -> Result<()>,
{
    let batch_size = batch_size.max(1);
    let iter = paths.into_iter();
    let (tx, rx) = mpsc::sync_channel::<Vec<(PathBuf, Result<Pixels>)>>(1);
    std::thread::scope(|scope| {
        let producer = scope.spawn(move || {
            let mut iter = iter;
            loop {
                let chunk: Vec<PathBuf> = iter.by_ref().take(batch_size).collect();
                if chunk.is_empty() {
                    break;
                }
                let done: Vec<(PathBuf, Result<Pixels>)> = chunk
                    .into_par_iter()
                    .map(|p| {
                        // A decoder panic fails this image only (see util::isolate).
                        let r = crate::util::isolate::isolated(&p, || {
                            crate::images::inputs::check_input(&p)?;
                            engine.load_pixels(&p)
                        });
                        (p, r)
                    })
                    .collect();
                if tx.send(done).is_err() {
                    break;
                }
            }
        });
        let mut result = Ok(());
        for batch in rx.iter() {
            let mut ok = Vec::with_capacity(batch.len());
            let mut pixels = Vec::with_capacity(batch.len());
            let mut failed = Vec::new();
            for (p, r) in batch {
                match r {
                    Ok(px) => {
                        ok.push(p);
                        pixels.push(px);
                    }
                    Err(e) => failed.push((p, error_reason(&e))),
                }
            }
            let embeddings = if pixels.is_empty() {
                None
            } else {
                match engine.embed_pixels(&pixels, features) {
                    Ok(t) => Some(t),
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            };
            drop(pixels);
            if let Err(e) = on_batch(ImageBatch {
                ok,
                embeddings,
                failed,
            }) {
                result = Err(e);
                break;
            }
        }
        drop(rx);
        if let Err(payload) = producer.join() {
            if result.is_ok() {
                result = Err(Error::ReaderCrashed {
                    message: crate::util::isolate::panic_message(payload.as_ref()),
                });
            }
        }
        result
    })
}

/// The reason text of a per-image failure, without the path (which is reported beside it).
pub fn error_reason(e: &Error) -> String {
    match e {
        Error::Image { message, .. } => message.clone(),
        Error::Io { source, .. } => source.to_string(),
        other => other.to_string(),
    }
}
