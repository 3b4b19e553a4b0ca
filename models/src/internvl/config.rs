//! InternVL configuration: vision + projector + LLM, presets and parsing of both
//! `config.json` flavours (transformers-native `text_config`, original `llm_config`).

use burn::config::Config;

use crate::llm::{ConfigError, LlmFamily, Qwen2Config};
use crate::vision::InternVitConfig;

/// InternVL2.5 with a Qwen2 (or InternLM2) decoder.
#[derive(Config, Debug, PartialEq)]
pub struct InternVlConfig {
    pub vision: InternVitConfig,
    pub text: Qwen2Config,
    /// Id of `<IMG_CONTEXT>`.
    #[config(default = 151_667)]
    pub image_token_id: usize,
    /// Inverse of the pixel-shuffle ratio (2 for 0.5).
    #[config(default = 2)]
    pub shuffle: usize,
    /// Vision layer whose output is used (-1 = last).
    #[config(default = -1)]
    pub select_layer: i64,
}

/// The checkpoint layout a config came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InternVlLayout {
    /// transformers' `InternVLForConditionalGeneration`.
    Transformers,
    /// Original InternVL / Sa2VA (`vision_model.*`, `mlp1.*`, `language_model.*`).
    Original,
}

impl InternVlConfig {
    /// Image tokens per 448 (or configured) tile after pixel shuffle.
    pub fn tokens_per_tile(&self) -> usize {
        let g = self.vision.grid() / self.shuffle;
        g * g
    }

    /// Parses an InternVL `config.json`; returns the config, the LLM family and the layout.
    pub fn from_hf_value(
        value: &serde_json::Value,
        what: &str,
    ) -> Result<(Self, LlmFamily, InternVlLayout), ConfigError> {
        let field =
            |f: &'static str| ConfigError::Field { what: what.to_string(), field: f, message: "missing".into() };
        let vision = value.get("vision_config").ok_or_else(|| field("vision_config"))?;
        let (text, layout) = match (value.get("text_config"), value.get("llm_config")) {
            (Some(t), _) => (t, InternVlLayout::Transformers),
            (None, Some(t)) => (t, InternVlLayout::Original),
            _ => return Err(field("text_config")),
        };
        let vision = InternVitConfig::from_hf_value(vision, &format!("{what}: vision_config"))?;
        let (mut text_cfg, family) = Qwen2Config::from_hf_value(text, &format!("{what}: text config"))?;
        if let Some(t) = value.get("tie_word_embeddings").and_then(|v| v.as_bool())
            && text.get("tie_word_embeddings").is_none()
        {
            text_cfg.tie_word_embeddings = t;
        }
        let ratio = value.get("downsample_ratio").and_then(|v| v.as_f64()).unwrap_or(0.5);
        let shuffle = (1.0 / ratio).round() as usize;
        let select =
            value.get("vision_feature_layer").or(value.get("select_layer")).and_then(|v| v.as_i64()).unwrap_or(-1);
        let mut cfg = InternVlConfig::new(vision, text_cfg).with_shuffle(shuffle).with_select_layer(select);
        if let Some(id) = value.get("image_token_id").and_then(|v| v.as_u64()) {
            cfg.image_token_id = id as usize;
        } else if let Some(id) = value.get("img_context_token_id").and_then(|v| v.as_u64()) {
            cfg.image_token_id = id as usize;
        }
        Ok((cfg, family, layout))
    }

    /// Tiny model for tests and the demo (56 px tiles, 4 image tokens per tile).
    pub fn tiny() -> Self {
        let mut text = Qwen2Config::tiny();
        text.vocab_size = 300;
        Self::new(InternVitConfig::tiny(), text).with_image_token_id(299)
    }

    /// InternVL2.5-1B: InternViT-300M + Qwen2.5-0.5B.
    pub fn internvl2_5_1b() -> Self {
        // InternVL2.5 unties the head of the Qwen2.5 LLMs (0.94 B parameters in all)
        Self::new(InternVitConfig::internvit_300m(), Qwen2Config::qwen2_5_0_5b().with_tie_word_embeddings(false))
    }

    /// InternVL2.5-4B: InternViT-300M + Qwen2.5-3B.
    pub fn internvl2_5_4b() -> Self {
        Self::new(InternVitConfig::internvit_300m(), Qwen2Config::qwen2_5_3b().with_tie_word_embeddings(false))
    }

    /// InternVL2.5-8B: InternViT-300M + InternLM2.5-7B.
    pub fn internvl2_5_8b() -> Self {
        Self::new(InternVitConfig::internvit_300m(), Qwen2Config::internlm2_5_7b()).with_image_token_id(92_546)
    }

    /// Number of parameters (vision + projector + LLM).
    pub fn num_params(&self) -> usize {
        let d_in = self.vision.hidden_size * self.shuffle * self.shuffle;
        let d = self.text.hidden_size;
        let projector = 2 * d_in + d_in * d + d + d * d + d;
        self.vision.num_params() + projector + self.text.num_params()
    }
}
