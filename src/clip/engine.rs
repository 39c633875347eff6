//! The engine: a loaded CLIP model with its tokenizer and image processor, which embeds prompts
//! (batched, with shared prompt prefixes computed once) and preprocessed images. Batching over
//! many image files is [`crate::jobs::pipeline`]'s.

use std::path::Path;

use candle_core::{Device, Tensor};

use crate::clip::checkpoint::Checkpoint;
use crate::clip::config::{ClipConfig, ModelFiles, PreprocessConfig};
use crate::clip::hub::{resolve_model, HubOptions};
use crate::clip::kernels::precision::Precision;
use crate::clip::model::ClipModel;
use crate::clip::model::Kernels;
use crate::clip::tokenizer::ClipTokenizer;
use crate::error::{Error, Result};
use crate::images::limits::DEFAULT_MAX_PIXELS;
use crate::images::preprocess::{self, Pixels};
use crate::util::hash::{fnv1a, FNV_START};

/// Which features to take from a tower (`projected` or `pooled` in the files that record it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Features {
    /// The projected embedding (`get_image_features` / `get_text_features`).
    #[default]
    Projected,
    /// The pooled output before the projection (what the CLIP paper's linear probe used).
    Pooled,
}

/// How to build an [`Engine`]: the model and every setting, read once at the edge (the
/// binary takes them from flags and the environment) and passed in here.
///
/// ```no_run
/// use cliplabel::{Engine, EngineOptions};
/// let engine = Engine::try_new(EngineOptions::new("models/shapes-clip").threads(Some(4)))?;
/// # Ok::<(), cliplabel::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct EngineOptions {
    model: String,
    device: Device,
    threads: Option<usize>,
    kernels: Kernels,
    max_pixels: u64,
    hub: Option<HubOptions>,
    precision: Precision,
}

impl EngineOptions {
    /// A local model directory, or a hub id (looked up only with [`EngineOptions::hub`]); CPU
    /// (or the first CUDA GPU with the `cuda` feature), every core, automatic kernels, Pillow's
    /// decompression-bomb limit.
    pub fn new(model: impl Into<String>) -> Self {
        EngineOptions {
            model: model.into(),
            device: crate::default_device(),
            threads: None,
            kernels: Kernels::Auto,
            max_pixels: DEFAULT_MAX_PIXELS,
            hub: None,
            precision: Precision::Fp32,
        }
    }

    /// The device to compute on.
    pub fn device(mut self, device: Device) -> Self {
        self.device = device;
        self
    }

    /// Worker threads for decoding and the model (`None`: every core). A count builds rayon's
    /// global pool, once per process. candle's CPU kernels size their work by the
    /// `RAYON_NUM_THREADS` environment variable, which the library does not set: a program that
    /// passes a count should set that variable to it too, before starting any thread (as the
    /// `cliplabel` binary does).
    pub fn threads(mut self, threads: Option<usize>) -> Self {
        self.threads = threads;
        self
    }

    /// Which matrix multiply the linear layers use on the CPU.
    pub fn kernels(mut self, kernels: Kernels) -> Self {
        self.kernels = kernels;
        self
    }

    /// Refuse images whose header declares more pixels than this, before decoding them.
    pub fn max_pixels(mut self, max_pixels: u64) -> Self {
        self.max_pixels = max_pixels;
        self
    }

    /// The arithmetic of the encoders' linear layers (fp32 by default, exact). bf16 and int8
    /// are faster and approximate; where the CPU lacks their instructions the engine falls
    /// back to the next precision and [`Engine::precision_note`] says why.
    pub fn precision(mut self, precision: Precision) -> Self {
        self.precision = precision;
        self
    }

    /// Look hub ids (`owner/name`) up in this Hugging Face cache, downloading unless offline.
    pub fn hub(mut self, hub: HubOptions) -> Self {
        self.hub = Some(hub);
        self
    }

    /// The model as given.
    pub fn model(&self) -> &str {
        &self.model
    }
}

impl std::fmt::Display for Features {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Features::Projected => "projected",
            Features::Pooled => "pooled",
        })
    }
}

/// A CLIP model ready to embed text and images, with the settings its checkpoint ships.
/// Built by [`Engine::try_new`]; its settings do not change afterwards.
pub struct Engine {
    /// The network.
    pub(crate) model: ClipModel,
    /// The tokenizer bound to the model's context length.
    pub(crate) tokenizer: ClipTokenizer,
    /// The image processor settings.
    pub(crate) preprocess: PreprocessConfig,
    /// Where the model came from (`--model` as given).
    pub(crate) source: String,
    /// A fingerprint of the model files (heads are checked against it).
    pub(crate) fingerprint: String,
    /// The fingerprint of the numbers this engine computes: the model's, with the precision
    /// appended unless fp32, so that caches, resumes and merges never mix precisions.
    pub(crate) run_fingerprint: String,
    /// Images with more pixels than this are refused before decoding.
    pub(crate) max_pixels: u64,
}

/// A content fingerprint of a model: its config and, for each weight file, the size and the
/// first and last MiB. Copies of the same model agree; a different checkpoint differs.
fn fingerprint(files: &ModelFiles) -> Result<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut h = fnv1a(
        &std::fs::read(&files.config).map_err(|e| Error::io(&files.config, e))?,
        FNV_START,
    );
    const SAMPLE: u64 = 1 << 20;
    for w in &files.weights {
        let mut f = std::fs::File::open(w).map_err(|e| Error::io(w, e))?;
        let len = f.metadata().map_err(|e| Error::io(w, e))?.len();
        h = fnv1a(&len.to_le_bytes(), h);
        let mut buf = Vec::new();
        (&mut f)
            .take(SAMPLE)
            .read_to_end(&mut buf)
            .map_err(|e| Error::io(w, e))?;
        if len > 2 * SAMPLE {
            f.seek(SeekFrom::Start(len - SAMPLE))
                .map_err(|e| Error::io(w, e))?;
            f.take(SAMPLE)
                .read_to_end(&mut buf)
                .map_err(|e| Error::io(w, e))?;
        }
        h = fnv1a(&buf, h);
    }
    Ok(format!("{h:016x}"))
}

/// Fewest prompts worth computing a shared prefix once for.
const MIN_PREFIX_GROUP: usize = 16;
/// Shortest shared prefix (start token included) worth computing once.
const MIN_PREFIX_TOKENS: usize = 3;

/// Splits token sequences into groups that share a prefix: `(prefix length, members)`.
///
/// Each sequence gets the longest prefix it shares with at least `min_group - 1` others
/// (found among its neighbours in sorted order); sequences with the same such prefix form a
/// group. Inputs with fewer than `min_group` sequences form one group with prefix length 0.
fn prefix_groups(encoded: &[Vec<u32>], min_group: usize) -> Vec<(usize, Vec<usize>)> {
    let n = encoded.len();
    if n < min_group.max(2) {
        return vec![(0, (0..n).collect())];
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| encoded[a].cmp(&encoded[b]).then(a.cmp(&b)));
    let lcp = |a: &[u32], b: &[u32]| a.iter().zip(b).take_while(|(x, y)| x == y).count();
    // common[r] = prefix shared by sorted entries r - 1 and r.
    let common: Vec<usize> = (0..n)
        .map(|r| {
            if r == 0 {
                0
            } else {
                lcp(&encoded[order[r - 1]], &encoded[order[r]])
            }
        })
        .collect();
    // Shared prefix of each window of `min_group` consecutive sorted entries.
    let windows: Vec<usize> = (0..=n - min_group)
        .map(|a| {
            common[a + 1..a + min_group]
                .iter()
                .copied()
                .min()
                .unwrap_or(0)
        })
        .collect();
    let mut groups: std::collections::BTreeMap<(usize, usize), (usize, Vec<usize>)> =
        std::collections::BTreeMap::new();
    let mut keys: std::collections::HashMap<&[u32], usize> = std::collections::HashMap::new();
    for (r, &i) in order.iter().enumerate() {
        let first = r.saturating_sub(min_group - 1);
        let last = r.min(n - min_group);
        let p = windows[first..=last].iter().copied().max().unwrap_or(0);
        let next = keys.len();
        let id = *keys.entry(&encoded[i][..p]).or_insert(next);
        groups.entry((id, p)).or_insert((p, Vec::new())).1.push(i);
    }
    groups.into_values().collect()
}

/// Builds rayon's global pool with `n` threads (decoding and cliplabel's kernels run on it).
/// A pool already built with `n` threads is accepted; another count is an error.
fn configure_threads(n: usize) -> Result<()> {
    if n == 0 {
        return Err(crate::error::OptionError::ThreadsZero.into());
    }
    match rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global()
    {
        Ok(()) => Ok(()),
        Err(_) if rayon::current_num_threads() == n => Ok(()),
        Err(e) => Err(crate::error::OptionError::ThreadPool {
            threads: n,
            message: e.to_string(),
        }
        .into()),
    }
}

impl Engine {
    /// Resolves the model (a directory or hub id), configures the threads and loads everything.
    pub fn try_new(opts: EngineOptions) -> Result<Self> {
        if let Some(n) = opts.threads {
            configure_threads(n)?;
        }
        let files = resolve_model(&opts.model, opts.hub.as_ref())?;
        Self::from_files(&files, &opts)
    }

    /// Loads a model from resolved files.
    fn from_files(files: &ModelFiles, opts: &EngineOptions) -> Result<Self> {
        let config = ClipConfig::from_file(&files.config)?;
        let preprocess = match &files.preprocessor {
            Some(p) => PreprocessConfig::from_value(
                &crate::clip::config::read_json(p)?,
                p,
                config.vision.image_size,
            )?,
            None => PreprocessConfig::clip_default(config.vision.image_size),
        };
        let size = config.vision.image_size;
        if preprocess.output_size() != Some((size, size)) {
            let path = files
                .preprocessor
                .clone()
                .unwrap_or_else(|| files.config.clone());
            return Err(Error::config(
                path,
                "crop_size",
                format!(
                    "the processor produces {:?} but the vision model takes {size}x{size} images",
                    preprocess.output_size()
                ),
            ));
        }
        let tokenizer = ClipTokenizer::load(
            &files.tokenizer,
            files.tokenizer_config.as_deref(),
            &config.text,
        )?;
        let ckpt = Checkpoint::open(&files.weights)?;
        let model = ClipModel::load_with_precision(
            config,
            &ckpt,
            &opts.device,
            opts.kernels,
            opts.precision,
        )?;
        let precision = model.precision();
        let model_fingerprint = fingerprint(files)?;
        Ok(Engine {
            model,
            tokenizer,
            preprocess,
            source: files.source.clone(),
            run_fingerprint: match precision {
                Precision::Fp32 => model_fingerprint.clone(),
                p => format!("{model_fingerprint}-{p}"),
            },
            fingerprint: model_fingerprint,
            max_pixels: opts.max_pixels,
        })
    }

    /// The network.
    pub fn model(&self) -> &ClipModel {
        &self.model
    }

    /// The tokenizer bound to the model's context length.
    pub fn tokenizer(&self) -> &ClipTokenizer {
        &self.tokenizer
    }

    /// The image processor settings.
    pub fn preprocess_config(&self) -> &PreprocessConfig {
        &self.preprocess
    }

    /// Where the model came from (the model as given to [`EngineOptions::new`]).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// A fingerprint of the model files (their config and samples of each weight file), for
    /// caches and for checking that a head or a shard belongs to this model.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// [`Engine::fingerprint`] with the precision appended unless fp32: the key of cached and
    /// resumed embeddings, which differ between precisions.
    pub fn run_fingerprint(&self) -> &str {
        &self.run_fingerprint
    }

    /// Images with more pixels than this are refused before decoding.
    pub fn max_pixels(&self) -> u64 {
        self.max_pixels
    }

    /// The precision the encoders' linear layers run in (the one asked for, or the next
    /// lower one this CPU supports).
    pub fn precision(&self) -> Precision {
        self.model.precision()
    }

    /// One line saying why the precision differs from the one asked for, or that it runs
    /// slower than fp32 on this CPU; `None` when there is nothing to say.
    pub fn precision_note(&self) -> Option<&str> {
        self.model.precision_note()
    }

    /// Width of the embeddings for `features`.
    pub fn dim(&self, features: Features, image: bool) -> usize {
        let c = &self.model.config;
        match (features, image) {
            (Features::Projected, _) => c.projection_dim,
            (Features::Pooled, true) => c.vision.tower.hidden_size,
            (Features::Pooled, false) => c.text.tower.hidden_size,
        }
    }

    /// Embeds prompts in batches; rows come back in the input order.
    ///
    /// Prompts that share their first tokens with many others (as a template's prompts do
    /// across class names) are batched together and their shared tokens are computed once
    /// per batch, which the causal text transformer allows; the rest are sorted by length and
    /// each batch is padded only to its longest prompt.
    pub fn embed_texts(&self, prompts: &[String], batch_size: usize) -> Result<Tensor> {
        let dev = self.model.device();
        if prompts.is_empty() {
            return Ok(Tensor::zeros(
                (0, self.model.config.projection_dim),
                candle_core::DType::F32,
                dev,
            )?);
        }
        let encoded: Vec<Vec<u32>> = prompts
            .iter()
            .map(|p| self.tokenizer.encode(p))
            .collect::<Result<_>>()?;
        let pools: Vec<usize> = encoded
            .iter()
            .map(|e| self.tokenizer.pool_position(e))
            .collect();
        let batch_size = batch_size.max(1);
        let mut rows: Vec<Option<Tensor>> = vec![None; prompts.len()];
        // Groups whose shared prefix is too short to pay go together, with no prefix.
        let mut groups: Vec<(usize, Vec<usize>)> = vec![(0, Vec::new())];
        for (p, members) in prefix_groups(&encoded, MIN_PREFIX_GROUP) {
            // The pooled token must come after the prefix, and every prompt keep one token.
            let p = members
                .iter()
                .map(|&i| pools[i].min(encoded[i].len() - 1))
                .fold(p, usize::min);
            if p < MIN_PREFIX_TOKENS {
                groups[0].1.extend(members);
            } else {
                groups.push((p, members));
            }
        }
        for (p, mut members) in groups {
            let Some(&first) = members.first() else {
                continue;
            };
            members.sort_by_key(|&i| (encoded[i].len(), i));
            let prefix = &encoded[first][..p];
            for chunk in members.chunks(batch_size) {
                let len = chunk
                    .iter()
                    .map(|&i| encoded[i].len() - p)
                    .max()
                    .unwrap_or(1);
                let mut ids = Vec::with_capacity(chunk.len() * len);
                for &i in chunk {
                    let mut e = encoded[i][p..].to_vec();
                    e.resize(len, self.tokenizer.pad_id());
                    ids.extend(e);
                }
                let ids = Tensor::from_vec(ids, (chunk.len(), len), dev)?;
                let eos: Vec<usize> = chunk.iter().map(|&i| pools[i]).collect();
                let feats = self.model.text_features_with_prefix(prefix, &ids, &eos)?;
                for (j, &i) in chunk.iter().enumerate() {
                    rows[i] = Some(feats.get(j)?);
                }
            }
        }
        let rows: Vec<Tensor> = rows.into_iter().flatten().collect();
        Ok(Tensor::stack(&rows, 0)?)
    }

    /// Embeds a batch of preprocessed images.
    pub fn embed_pixels(&self, pixels: &[Pixels], features: Features) -> Result<Tensor> {
        let size = self.model.config.vision.image_size;
        let mut flat = Vec::with_capacity(pixels.len() * 3 * size * size);
        for p in pixels {
            flat.extend_from_slice(&p.data);
        }
        let t = Tensor::from_vec(flat, (pixels.len(), 3, size, size), self.model.device())?;
        match features {
            Features::Projected => self.model.image_features(&t),
            Features::Pooled => self.model.image_pooled(&t),
        }
    }

    /// Reads, decodes and preprocesses one image file.
    pub fn load_pixels(&self, path: &Path) -> Result<Pixels> {
        preprocess::preprocess_file(path, &self.preprocess, self.max_pixels)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_groups_find_shared_starts() {
        // 20 sequences "1 2 3 x" and 20 "1 5 x y", plus 3 loners.
        let mut seqs: Vec<Vec<u32>> = (0..20).map(|x| vec![1, 2, 3, 100 + x]).collect();
        seqs.extend((0..20).map(|x| vec![1, 5, 200 + x, 7]));
        seqs.extend([vec![1, 9], vec![1, 9, 9], vec![1, 8, 8, 8]]);
        let groups = prefix_groups(&seqs, 16);
        let mut seen: Vec<usize> = groups.iter().flat_map(|(_, m)| m.clone()).collect();
        seen.sort();
        assert_eq!(
            seen,
            (0..seqs.len()).collect::<Vec<_>>(),
            "every sequence once"
        );
        for (p, members) in &groups {
            let head = &seqs[members[0]][..*p];
            assert!(members.iter().all(|&i| seqs[i].starts_with(head)));
        }
        let p_of = |i: usize| groups.iter().find(|(_, m)| m.contains(&i)).map(|g| g.0);
        assert_eq!(p_of(0), Some(3));
        assert_eq!(p_of(25), Some(2));
        assert!(p_of(40).unwrap() <= 2);
        assert_eq!(
            prefix_groups(&seqs[..5], 16),
            vec![(0, vec![0, 1, 2, 3, 4])]
        );
    }

    /// Batches that share a prefix give what each prompt gives on its own.
    #[test]
    fn shared_prefixes_do_not_change_text_embeddings() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-clip");
        let engine =
            Engine::try_new(EngineOptions::new(dir.to_str().unwrap()).device(Device::Cpu)).unwrap();
        let classes = [
            "cat",
            "dog",
            "tabby cat",
            "golden retriever",
            "car",
            "red car",
            "truck",
            "bird",
            "blue jay",
            "fish",
            "great white shark",
            "tiger shark",
            "hen",
            "rooster",
            "ostrich",
            "goldfinch",
            "house finch",
            "junco",
            "indigo bunting",
            "robin",
        ];
        let mut prompts: Vec<String> = Vec::new();
        for t in [
            "a photo of a {}.",
            "a blurry photo of the {}.",
            "{} in the wild",
        ] {
            prompts.extend(classes.iter().map(|c| t.replace("{}", c)));
        }
        prompts.extend(["hello".to_string(), "".to_string(), "a".to_string()]);
        let encoded: Vec<Vec<u32>> = prompts
            .iter()
            .map(|p| engine.tokenizer.encode(p).unwrap())
            .collect();
        let groups = prefix_groups(&encoded, MIN_PREFIX_GROUP);
        assert!(
            groups.iter().any(|(p, m)| *p >= 5 && m.len() >= 20),
            "the templates form prefix groups: {groups:?}"
        );
        let together = engine.embed_texts(&prompts, 7).unwrap();
        for (i, p) in prompts.iter().enumerate() {
            let alone = engine.embed_texts(std::slice::from_ref(p), 1).unwrap();
            let d = (together.get(i).unwrap() - alone.get(0).unwrap())
                .unwrap()
                .abs()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(d < 1e-5, "{p:?}: {d}");
        }
    }
}
