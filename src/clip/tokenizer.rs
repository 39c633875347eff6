//! Text tokenisation identical to transformers' `CLIPTokenizerFast` for the same `tokenizer.json`.
//!
//! Prompts are truncated to the model's context length with the end token kept, as
//! `tokenizer(text, truncation=True, max_length=ctx)` does, and padded with the tokenizer's
//! padding token. Features are pooled where transformers pools them: at the first end-of-text
//! token, or at `argmax(input_ids)` for configs whose `eos_token_id` is 2.

use std::path::{Path, PathBuf};

use serde_json::Value;
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::clip::config::{read_json, TextConfig};
use crate::error::{Error, Result};

/// A CLIP tokenizer bound to a model's context length and pooling rule.
pub struct ClipTokenizer {
    inner: Tokenizer,
    path: PathBuf,
    context_length: usize,
    pad_id: u32,
    eos_id: i64,
}

fn token_content(v: &Value) -> Option<&str> {
    v.as_str()
        .or_else(|| v.get("content").and_then(Value::as_str))
}

impl ClipTokenizer {
    /// Loads `tokenizer.json` (and the pad token from `tokenizer_config.json` when present).
    pub fn load(path: &Path, tokenizer_config: Option<&Path>, text: &TextConfig) -> Result<Self> {
        let err = |message: String| Error::Tokenizer {
            path: path.to_path_buf(),
            message,
        };
        let mut inner = Tokenizer::from_file(path).map_err(|e| err(format!("cannot load: {e}")))?;
        let ctx = text.max_position_embeddings;
        inner
            .with_truncation(Some(TruncationParams {
                max_length: ctx,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| err(format!("cannot set truncation: {e}")))?;
        inner.with_padding(None);
        let mut pad: Option<u32> = None;
        if let Some(tc) = tokenizer_config {
            let v = read_json(tc)?;
            if let Some(name) = v.get("pad_token").and_then(token_content) {
                pad = Some(inner.token_to_id(name).ok_or_else(|| {
                    Error::config(
                        tc,
                        "pad_token",
                        format!(
                            "token `{name}` is not in the vocabulary of {}",
                            path.display()
                        ),
                    )
                })?);
            }
        }
        let eos_token = inner
            .token_to_id("<|endoftext|>")
            .ok_or_else(|| err("no `<|endoftext|>` token: not a CLIP tokenizer".into()))?;
        // CLIPTokenizerFast pads with `<|endoftext|>` unless tokenizer_config.json says otherwise.
        let pad_id = pad.unwrap_or(eos_token);
        if inner.get_vocab_size(true) > text.vocab_size {
            return Err(err(format!(
                "vocabulary of {} tokens exceeds the model's vocab_size {}",
                inner.get_vocab_size(true),
                text.vocab_size
            )));
        }
        Ok(ClipTokenizer {
            inner,
            path: path.to_path_buf(),
            context_length: ctx,
            pad_id,
            eos_id: text.eos_token_id,
        })
    }

    /// The model's context length.
    pub fn context_length(&self) -> usize {
        self.context_length
    }

    /// The padding token id.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// Token ids of one prompt, with start and end tokens, truncated to the context length.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, true)
            .map_err(|e| Error::Tokenizer {
                path: self.path.clone(),
                message: format!("cannot encode {text:?}: {e}"),
            })?;
        Ok(enc.get_ids().to_vec())
    }

    /// Token ids padded to `len` with the padding token.
    pub fn encode_padded(&self, text: &str, len: usize) -> Result<Vec<u32>> {
        let mut ids = self.encode(text)?;
        ids.resize(len.max(ids.len()), self.pad_id);
        Ok(ids)
    }

    /// Where transformers takes the pooled text feature for these (unpadded or padded) ids.
    pub fn pool_position(&self, ids: &[u32]) -> usize {
        if self.eos_id == 2 {
            // argmax, first maximum
            let mut best = 0;
            for (i, &t) in ids.iter().enumerate() {
                if t > ids[best] {
                    best = i;
                }
            }
            best
        } else {
            ids.iter()
                .position(|&t| t as i64 == self.eos_id)
                .unwrap_or(0)
        }
    }
}
