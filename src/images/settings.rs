//! The image preprocessing settings: resize target and filter, centre crop, rescale,
//! normalisation, RGB conversion. `images/` owns them because it is the layer that applies them
//! ([`crate::images::preprocess`], [`crate::images::resize`]); `clip/config.rs` fills them from a
//! model's `preprocessor_config.json`. So `clip/` uses `images/`, never the other way round.

/// Resampling filters of the image processor (`resample`, PIL's numbering).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resample {
    /// PIL.Image.BILINEAR (2).
    Bilinear,
    /// PIL.Image.BICUBIC (3), the CLIP default.
    Bicubic,
    /// PIL.Image.LANCZOS (1).
    Lanczos,
}

/// How the image processor resizes before cropping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResizeTo {
    /// Scale so the shorter side has this length, keeping the aspect ratio.
    ShortestEdge(usize),
    /// Scale to exactly this height and width.
    Exact { height: usize, width: usize },
}

/// The image processor settings (`preprocessor_config.json`).
#[derive(Debug, Clone, PartialEq)]
pub struct PreprocessConfig {
    /// Resize target, or `None` when `do_resize` is false.
    pub resize: Option<ResizeTo>,
    /// Resampling filter for the resize.
    pub resample: Resample,
    /// Centre-crop size `(height, width)`, or `None` when `do_center_crop` is false.
    pub crop: Option<(usize, usize)>,
    /// Rescale factor (1/255), or `None` when `do_rescale` is false.
    pub rescale: Option<f64>,
    /// Per-channel mean and std, or `None` when `do_normalize` is false.
    pub normalize: Option<([f32; 3], [f32; 3])>,
    /// Whether to convert to RGB (compositing transparency onto white).
    pub convert_rgb: bool,
}

/// The CLIP mean used by OpenAI and transformers.
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// The CLIP standard deviation used by OpenAI and transformers.
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];

impl PreprocessConfig {
    /// The CLIP defaults for a model whose vision tower takes `image_size` pixels.
    pub fn clip_default(image_size: usize) -> Self {
        PreprocessConfig {
            resize: Some(ResizeTo::ShortestEdge(image_size)),
            resample: Resample::Bicubic,
            crop: Some((image_size, image_size)),
            rescale: Some(1.0 / 255.0),
            normalize: Some((CLIP_MEAN, CLIP_STD)),
            convert_rgb: true,
        }
    }

    /// The `(height, width)` of the pixel tensor this configuration produces.
    pub fn output_size(&self) -> Option<(usize, usize)> {
        match (self.crop, self.resize) {
            (Some(c), _) => Some(c),
            (None, Some(ResizeTo::Exact { height, width })) => Some((height, width)),
            _ => None,
        }
    }
}
