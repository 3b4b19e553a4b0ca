//! InternViT configuration: presets and parsing of HF `vision_config` / original InternVL
//! `vision_config` JSON.

use burn::config::Config;
use serde::Deserialize;

use crate::llm::ConfigError;

/// Shape and numerics of an InternViT image encoder.
#[derive(Config, Debug, PartialEq)]
pub struct InternVitConfig {
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[config(default = 448)]
    pub image_size: usize,
    #[config(default = 14)]
    pub patch_size: usize,
    #[config(default = 3)]
    pub num_channels: usize,
    #[config(default = 1e-6)]
    pub layer_norm_eps: f64,
    /// RMSNorm instead of LayerNorm (InternViT-6B).
    #[config(default = false)]
    pub rms_norm: bool,
    #[config(default = false)]
    pub use_qk_norm: bool,
    #[config(default = true)]
    pub attention_bias: bool,
    #[config(default = 0.1)]
    pub layer_scale_init_value: f64,
    /// No final LayerNorm when true (InternVL's setting).
    #[config(default = true)]
    pub use_mean_pooling: bool,
    /// Channels of a convolutional stem before the patch projection (empty, the default, for InternViT
    /// checkpoints): 3x3 convolutions each followed by GELU. Each halves the resolution (stride 2) while the patch
    /// side left to cover is even, and keeps it after that, so the projection then covers the rest: a 16 px patch
    /// after five layers is four halvings and a 1x1 projection, a 14 px patch after two is one halving and a 7x7
    /// one. Not an InternVL feature: an option for encoders trained from scratch (a hybrid ViT; Xiao et al. 2021,
    /// "Early Convolutions Help Transformers See Better"), see docs/points.md.
    #[config(default = "Vec::new()")]
    pub conv_stem: Vec<usize>,
}

#[derive(Deserialize)]
struct HfVision {
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    image_size: Option<serde_json::Value>,
    patch_size: Option<serde_json::Value>,
    num_channels: Option<usize>,
    layer_norm_eps: Option<f64>,
    norm_type: Option<String>,
    use_qk_norm: Option<bool>,
    qk_normalization: Option<bool>,
    attention_bias: Option<bool>,
    qkv_bias: Option<bool>,
    layer_scale_init_value: Option<f64>,
    initializer_factor: Option<f64>,
    use_mean_pooling: Option<bool>,
}

fn first_usize(v: &Option<serde_json::Value>, default: usize) -> usize {
    match v {
        Some(serde_json::Value::Number(n)) => n.as_u64().map_or(default, |x| x as usize),
        Some(serde_json::Value::Array(a)) => a.first().and_then(|x| x.as_u64()).map_or(default, |x| x as usize),
        _ => default,
    }
}

impl InternVitConfig {
    /// Patches per side at the configured image size.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Parses a vision config (transformers-native or original InternVL naming).
    pub fn from_hf_value(value: &serde_json::Value, what: &str) -> Result<Self, ConfigError> {
        let hf: HfVision = serde_json::from_value(value.clone())
            .map_err(|e| ConfigError::Json { what: what.to_string(), message: e.to_string() })?;
        if hf.num_attention_heads == 0 || hf.hidden_size % hf.num_attention_heads != 0 {
            return Err(ConfigError::Field {
                what: what.to_string(),
                field: "num_attention_heads",
                message: format!("does not divide hidden_size {}", hf.hidden_size),
            });
        }
        Ok(Self::new(hf.hidden_size, hf.num_hidden_layers, hf.num_attention_heads, hf.intermediate_size)
            .with_image_size(first_usize(&hf.image_size, 448))
            .with_patch_size(first_usize(&hf.patch_size, 14))
            .with_num_channels(hf.num_channels.unwrap_or(3))
            .with_layer_norm_eps(hf.layer_norm_eps.unwrap_or(1e-6))
            .with_rms_norm(hf.norm_type.as_deref() == Some("rms_norm"))
            .with_use_qk_norm(hf.use_qk_norm.or(hf.qk_normalization).unwrap_or(false))
            .with_attention_bias(hf.attention_bias.or(hf.qkv_bias).unwrap_or(true))
            .with_layer_scale_init_value(hf.layer_scale_init_value.or(hf.initializer_factor).unwrap_or(0.1))
            .with_use_mean_pooling(hf.use_mean_pooling.unwrap_or(true)))
    }

    /// Tiny encoder for tests.
    pub fn tiny() -> Self {
        Self::new(32, 2, 4, 64).with_image_size(56)
    }

    /// InternViT-300M-448px (InternVL2.5 1B/4B/8B).
    pub fn internvit_300m() -> Self {
        Self::new(1024, 24, 16, 4096)
    }

    /// The stride of each stem layer: 2 while the patch side left is even, then 1.
    pub fn stem_strides(&self) -> Vec<usize> {
        let mut left = self.patch_size;
        self.conv_stem
            .iter()
            .map(|_| {
                if left > 0 && left % 2 == 0 {
                    left /= 2;
                    2
                } else {
                    1
                }
            })
            .collect()
    }

    /// Side of the patch projection's kernel: the patch side left after the stem's halvings.
    pub fn projection_kernel(&self) -> usize {
        self.patch_size >> self.stem_strides().iter().filter(|&&s| s == 2).count()
    }

    /// Channels entering the patch projection: the image's, or the last stem layer's.
    pub fn projection_channels(&self) -> usize {
        self.conv_stem.last().copied().unwrap_or(self.num_channels)
    }

    /// Number of parameters.
    pub fn num_params(&self) -> usize {
        let d = self.hidden_size;
        let n = self.grid() * self.grid();
        let k = self.projection_kernel();
        let mut stem = 0;
        let mut c_in = self.num_channels;
        for &c in &self.conv_stem {
            stem += c * c_in * 9 + c;
            c_in = c;
        }
        let embed = d + (n + 1) * d + d * self.projection_channels() * k * k + d + stem;
        let attn = 4 * d * d + 4 * d;
        let mlp = 2 * d * self.intermediate_size + self.intermediate_size + d;
        let qk = if self.use_qk_norm { 2 * d } else { 0 };
        let norms = if self.rms_norm { 2 * d } else { 4 * d };
        let layer = attn + mlp + qk + norms + 2 * d;
        embed + self.num_hidden_layers * layer
    }
}
