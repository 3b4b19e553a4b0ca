//! Key tables of the decoder checkpoint layouts and loading a causal LM from a folder.
//!
//! Module paths follow transformers' Qwen2 names (`model.layers.N.self_attn.q_proj.weight`,
//! `lm_head.weight`). The tables work at any prefix (e.g. `language_model.`), so the InternVL
//! tables reuse them.

use std::path::{Path, PathBuf};

use burn::prelude::*;

use super::config::{ConfigError, LlmFamily, Qwen2Config};
use super::model::Qwen2ForCausalLM;
use crate::weights::{Checkpoint, KeyTable, LoadOptions, LoadReport, Split, WeightsError, load_module};

/// Errors loading a model folder.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error("{path}: {message}")]
    Unsupported { path: PathBuf, message: String },
}

/// Key table for a decoder of `family` (checkpoint keys may carry any prefix).
pub fn llm_key_table(family: LlmFamily, cfg: &Qwen2Config) -> Result<KeyTable, WeightsError> {
    let t = KeyTable::identity().ignore(r"rotary_emb\.inv_freq$")?;
    let t = match family {
        LlmFamily::Qwen2 => t,
        LlmFamily::InternLm2 => t
            .rename(r"(^|\.)tok_embeddings\.", "${1}embed_tokens.")?
            .rename(r"\.attention\.wo\.", ".self_attn.o_proj.")?
            .rename(r"\.feed_forward\.w1\.", ".mlp.gate_proj.")?
            .rename(r"\.feed_forward\.w3\.", ".mlp.up_proj.")?
            .rename(r"\.feed_forward\.w2\.", ".mlp.down_proj.")?
            .rename(r"\.attention_norm\.", ".input_layernorm.")?
            .rename(r"\.ffn_norm\.", ".post_attention_layernorm.")?
            .rename(r"^(|.*\.)output\.weight$", "${1}lm_head.weight")?
            .split(
                r"\.attention\.wqkv\.(weight|bias)$",
                Split {
                    targets: vec![
                        ".self_attn.q_proj.$1".into(),
                        ".self_attn.k_proj.$1".into(),
                        ".self_attn.v_proj.$1".into(),
                    ],
                    groups: cfg.num_key_value_heads,
                    parts: vec![cfg.num_attention_heads / cfg.num_key_value_heads, 1, 1],
                },
            )?,
    };
    Ok(if cfg.tie_word_embeddings {
        // Some tied checkpoints still store a copy of the head.
        t.ignore(r"(^|\.)lm_head\.weight$")?
    } else {
        t
    })
}

/// Reads `config.json` of a folder.
pub fn read_config_json(dir: &Path) -> Result<serde_json::Value, LoadError> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|source| LoadError::Io { path: path.clone(), source })?;
    serde_json::from_str(&text)
        .map_err(|e| LoadError::Config(ConfigError::Json { what: path.display().to_string(), message: e.to_string() }))
}

/// A causal LM loaded from a folder.
#[derive(Debug)]
pub struct LoadedLlm {
    pub model: Qwen2ForCausalLM,
    pub config: Qwen2Config,
    pub family: LlmFamily,
    pub report: LoadReport,
}

/// Loads a Qwen2 / InternLM2 causal-LM folder (`config.json` + safetensors, single or sharded,
/// f32/f16/bf16) into a model of float dtype `f32`.
pub fn load_causal_lm(dir: impl AsRef<Path>, device: &Device) -> Result<LoadedLlm, LoadError> {
    let dir = dir.as_ref();
    let json = read_config_json(dir)?;
    let (config, family) = Qwen2Config::from_hf_value(&json, &dir.join("config.json").display().to_string())?;
    let checkpoint = Checkpoint::open(dir)?;
    let mut model = config.init(device);
    let table = llm_key_table(family, &config)?;
    let report = load_module(&mut model, &checkpoint, &table, &LoadOptions::default())?;
    Ok(LoadedLlm { model, config, family, report })
}
