//! Key tables of the InternVL checkpoint layouts and loading a model folder.
//!
//! Module paths are transformers' on-disk keys (`vision_tower.*`, `multi_modal_projector.*`,
//! `language_model.model.*`, `language_model.lm_head.*`); the `model.`-prefixed variant of
//! newer transformers and the original InternVL / Sa2VA layout are mapped onto them.

use std::path::Path;

use burn::prelude::*;

use super::config::{InternVlConfig, InternVlLayout};
use super::model::InternVl;
use crate::llm::{LlmFamily, LoadError, llm_key_table, read_config_json};
use crate::weights::{Checkpoint, KeyTable, LoadOptions, LoadReport, Split, WeightsError, load_module};

/// Key table for an InternVL checkpoint of `layout` whose LLM is of `family`.
pub fn internvl_key_table(
    layout: InternVlLayout,
    family: LlmFamily,
    cfg: &InternVlConfig,
) -> Result<KeyTable, WeightsError> {
    let t = KeyTable::identity()
        // transformers >= 4.52 in-memory / some saved copies
        .rename(r"^model\.vision_tower\.", "vision_tower.")?
        .rename(r"^model\.multi_modal_projector\.", "multi_modal_projector.")?
        .rename(r"^model\.language_model\.", "language_model.model.")?
        .rename(r"^lm_head\.", "language_model.lm_head.")?;
    let t = match layout {
        InternVlLayout::Transformers => t,
        InternVlLayout::Original => t
            .rename(r"^vision_model\.", "vision_tower.")?
            .rename(r"\.embeddings\.class_embedding$", ".embeddings.cls_token")?
            .rename(r"\.embeddings\.position_embedding$", ".embeddings.position_embeddings")?
            .rename(r"\.embeddings\.patch_embedding\.", ".embeddings.patch_embeddings.projection.")?
            .rename(r"\.encoder\.layers\.", ".encoder.layer.")?
            .rename(r"\.attn\.proj\.", ".attention.projection_layer.")?
            .rename(r"\.attn\.q_norm\.", ".attention.q_norm.")?
            .rename(r"\.attn\.k_norm\.", ".attention.k_norm.")?
            .rename(r"\.norm1\.", ".layernorm_before.")?
            .rename(r"\.norm2\.", ".layernorm_after.")?
            .rename(r"\.ls1$", ".lambda_1")?
            .rename(r"\.ls2$", ".lambda_2")?
            .rename(r"^mlp1\.0\.", "multi_modal_projector.layer_norm.")?
            .rename(r"^mlp1\.1\.", "multi_modal_projector.linear_1.")?
            .rename(r"^mlp1\.3\.", "multi_modal_projector.linear_2.")?
            .split(
                r"\.attn\.qkv\.(weight|bias)$",
                Split::equal(&[".attention.q_proj.$1", ".attention.k_proj.$1", ".attention.v_proj.$1"]),
            )?,
    };
    Ok(t.then(llm_key_table(family, &cfg.text)?))
}

/// An InternVL model loaded from a folder.
#[derive(Debug)]
pub struct LoadedInternVl {
    pub model: InternVl,
    pub config: InternVlConfig,
    pub family: LlmFamily,
    pub layout: InternVlLayout,
    pub report: LoadReport,
}

/// Loads an InternVL folder (either layout; single or sharded safetensors; f32/f16/bf16).
pub fn load_internvl(dir: impl AsRef<Path>, device: &Device) -> Result<LoadedInternVl, LoadError> {
    let dir = dir.as_ref();
    let json = read_config_json(dir)?;
    let what = dir.join("config.json").display().to_string();
    let (config, family, layout) = InternVlConfig::from_hf_value(&json, &what)?;
    let checkpoint = Checkpoint::open(dir)?;
    let mut model = config.init(device);
    let table = internvl_key_table(layout, family, &config)?;
    let report = load_module(&mut model, &checkpoint, &table, &LoadOptions::default())?;
    Ok(LoadedInternVl { model, config, family, layout, report })
}
