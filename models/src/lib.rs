//! burn modules of the Perceptio model family. Pure model code: no actors, no dataflow.
//!
//! - `vision`: InternViT image encoder, pixel shuffle and MLP projector.
//! - `llm`: Qwen2-style decoder (KV cache, LoRA, vocabulary extension).
//! - `weights`: safetensors loading/saving and checkpoint key tables.
//! - `sam2`: SAM2 image encoder, prompt encoder, mask decoder.
//! - `depth`: depth VQ-VAE tokenizer and the Depth Anything V2 teacher.
//! - `config_json`: defaults for config fields that older files lack.
//! - `perceptio`: the assembled Perceptio model: added tokens, sequences, heads, losses, training step.

pub mod config_json;
pub mod depth;
pub mod internvl;
pub mod llm;
pub mod perceptio;
pub mod sam2;
pub mod tokenizer;
pub mod vision;
pub mod weights;
