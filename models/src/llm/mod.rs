//! Qwen2-style decoder LLM: config and presets, RoPE, grouped-query attention with KV cache,
//! SwiGLU MLP, tied or untied head, LoRA, vocabulary extension, generation, and the key
//! tables of the Qwen2 and InternLM2 checkpoint layouts.

mod attention;
mod cache;
mod config;
mod layer;
mod linear;
mod mlp;
mod model;
mod rope;

pub use attention::Qwen2Attention;
pub use cache::KvCache;
pub use config::{ConfigError, LlmFamily, Qwen2Config};
pub use layer::Qwen2DecoderLayer;
pub use linear::{Linear, LinearConfig};
pub use mlp::Qwen2Mlp;
pub use model::{Qwen2ForCausalLM, Qwen2Model, matmul_rows_t};
pub use rope::{Rope, inv_freq};

mod checkpoint;
pub use checkpoint::{LoadError, LoadedLlm, llm_key_table, load_causal_lm, read_config_json};

mod generate;
pub use generate::{GenerateOptions, argmax, generate, generate_from_embeds, ids_tensor, left_pad, sample};

mod lora;
pub use lora::{LORA_TARGETS, LoraConfig, LoraError, extend_vocab, merge_lora};
