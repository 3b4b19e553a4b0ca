//! Decoder configuration: presets and parsing of HF `config.json` (Qwen2 and InternLM2).

use burn::config::Config;
use serde::Deserialize;

/// Shape and numerics of a Qwen2-style decoder (also InternLM2, which is the same block without
/// q/k/v biases).
#[derive(Config, Debug, PartialEq)]
pub struct Qwen2Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    #[config(default = 1_000_000.0)]
    pub rope_theta: f64,
    #[config(default = 1e-6)]
    pub rms_norm_eps: f64,
    #[config(default = false)]
    pub tie_word_embeddings: bool,
    /// q/k/v projections carry a bias (Qwen2: true, InternLM2: false).
    #[config(default = true)]
    pub attention_bias: bool,
    #[config(default = 32768)]
    pub max_position_embeddings: usize,
}

/// Which checkpoint family a decoder config came from (decides the key table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LlmFamily {
    Qwen2,
    InternLm2,
}

/// Errors reading a decoder config.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{what}: invalid config JSON: {message}")]
    Json { what: String, message: String },
    #[error("{what}: field `{field}`: {message}")]
    Field { what: String, field: &'static str, message: String },
}

#[derive(Deserialize)]
struct RopeParameters {
    rope_theta: Option<f64>,
}

#[derive(Deserialize)]
struct HfText {
    model_type: Option<String>,
    #[serde(default)]
    architectures: Vec<String>,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    rope_theta: Option<f64>,
    rope_parameters: Option<RopeParameters>,
    rms_norm_eps: Option<f64>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    bias: Option<bool>,
    max_position_embeddings: Option<usize>,
    head_dim: Option<usize>,
}

impl Qwen2Config {
    /// Head width.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Parses a text-model `config.json` value (Qwen2/Qwen2.5 or InternLM2/2.5).
    pub fn from_hf_value(value: &serde_json::Value, what: &str) -> Result<(Self, LlmFamily), ConfigError> {
        let hf: HfText = serde_json::from_value(value.clone())
            .map_err(|e| ConfigError::Json { what: what.to_string(), message: e.to_string() })?;
        let family = if hf.model_type.as_deref() == Some("internlm2")
            || hf.architectures.iter().any(|a| a.starts_with("InternLM2"))
        {
            LlmFamily::InternLm2
        } else {
            LlmFamily::Qwen2
        };
        let heads = hf.num_attention_heads;
        let kv = hf.num_key_value_heads.unwrap_or(heads);
        let field =
            |field: &'static str, message: String| ConfigError::Field { what: what.to_string(), field, message };
        if heads == 0 || hf.hidden_size % heads != 0 {
            return Err(field(
                "num_attention_heads",
                format!("{heads} does not divide hidden_size {}", hf.hidden_size),
            ));
        }
        if kv == 0 || heads % kv != 0 {
            return Err(field("num_key_value_heads", format!("{kv} does not divide num_attention_heads {heads}")));
        }
        if let Some(hd) = hf.head_dim
            && hd != hf.hidden_size / heads
        {
            return Err(field(
                "head_dim",
                format!("{hd} != hidden_size / heads (only the standard head width is supported)"),
            ));
        }
        let theta = hf.rope_theta.or(hf.rope_parameters.and_then(|r| r.rope_theta)).unwrap_or(match family {
            LlmFamily::Qwen2 => 1_000_000.0,
            LlmFamily::InternLm2 => 10_000.0,
        });
        let bias = match family {
            LlmFamily::Qwen2 => hf.attention_bias.unwrap_or(true),
            LlmFamily::InternLm2 => hf.bias.unwrap_or(false),
        };
        let cfg =
            Qwen2Config::new(hf.vocab_size, hf.hidden_size, hf.intermediate_size, hf.num_hidden_layers, heads, kv)
                .with_rope_theta(theta)
                .with_rms_norm_eps(hf.rms_norm_eps.unwrap_or(1e-6))
                .with_tie_word_embeddings(hf.tie_word_embeddings.unwrap_or(false))
                .with_attention_bias(bias)
                .with_max_position_embeddings(hf.max_position_embeddings.unwrap_or(32768));
        Ok((cfg, family))
    }

    /// Tiny decoder for tests and the demo.
    pub fn tiny() -> Self {
        Self::new(256, 64, 128, 2, 4, 2)
    }

    /// Qwen2.5-0.5B (the LLM of InternVL2.5-1B).
    pub fn qwen2_5_0_5b() -> Self {
        Self::new(151_674, 896, 4864, 24, 14, 2).with_tie_word_embeddings(true)
    }

    /// Qwen2.5-3B (the LLM of InternVL2.5-4B).
    pub fn qwen2_5_3b() -> Self {
        Self::new(151_674, 2048, 11008, 36, 16, 2).with_tie_word_embeddings(true)
    }

    /// InternLM2.5-7B (the LLM of InternVL2.5-8B): no q/k/v bias, RoPE theta 1e6.
    pub fn internlm2_5_7b() -> Self {
        Self::new(92_553, 4096, 14336, 32, 32, 8).with_attention_bias(false)
    }

    /// Number of parameters (embedding, layers, norm, head when untied).
    pub fn num_params(&self) -> usize {
        let d = self.hidden_size;
        let kvd = self.num_key_value_heads * self.head_dim();
        let bias = if self.attention_bias { d + 2 * kvd } else { 0 };
        let attn = d * d + 2 * d * kvd + bias + d * d;
        let mlp = 3 * d * self.intermediate_size;
        let layer = attn + mlp + 2 * d;
        let head = if self.tie_word_embeddings { 0 } else { self.vocab_size * d };
        self.vocab_size * d + self.num_hidden_layers * layer + d + head
    }
}
