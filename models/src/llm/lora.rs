//! LoRA on chosen linear layers of the decoder (rank, alpha, target names), with every other
//! parameter frozen, and merging back into the base weights; vocabulary extension.

use burn::module::{Module, Param};
use burn::prelude::*;

use super::attention::Qwen2Attention;
use super::layer::Qwen2DecoderLayer;
use super::linear::Linear;
use super::mlp::Qwen2Mlp;
use super::model::Qwen2ForCausalLM;

/// The linear layers LoRA can target (transformers / PEFT names).
pub const LORA_TARGETS: [&str; 7] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

/// Which layers get an adapter and how big.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f64,
    /// Subset of [`LORA_TARGETS`].
    pub targets: Vec<String>,
}

/// Invalid LoRA settings.
#[derive(Debug, thiserror::Error)]
pub enum LoraError {
    #[error("unknown LoRA target `{0}` (known: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)")]
    UnknownTarget(String),
    #[error("LoRA rank must be > 0")]
    ZeroRank,
}

impl LoraConfig {
    /// Adapter on every attention and MLP projection.
    pub fn all(rank: usize, alpha: f64) -> Self {
        Self { rank, alpha, targets: LORA_TARGETS.iter().map(|s| s.to_string()).collect() }
    }

    /// Freezes the whole model and attaches adapters (the only trainable parameters) to the
    /// targeted projections of every layer. The model's outputs are unchanged (B = 0).
    pub fn apply(&self, model: Qwen2ForCausalLM, device: &Device) -> Result<Qwen2ForCausalLM, LoraError> {
        if self.rank == 0 {
            return Err(LoraError::ZeroRank);
        }
        if let Some(bad) = self.targets.iter().find(|t| !LORA_TARGETS.contains(&t.as_str())) {
            return Err(LoraError::UnknownTarget(bad.clone()));
        }
        let wants = |name: &str| self.targets.iter().any(|t| t == name);
        let wrap = |lin: Linear, name: &str| {
            if wants(name) { lin.add_lora(self.rank, self.alpha, device) } else { lin }
        };
        Ok(map_linears(model.no_grad(), wrap))
    }
}

/// Rebuilds every layer with `f(linear, name)` applied to its seven projections.
fn map_linears(mut model: Qwen2ForCausalLM, f: impl Fn(Linear, &str) -> Linear) -> Qwen2ForCausalLM {
    model.model.layers = model
        .model
        .layers
        .into_iter()
        .map(|l| {
            let a = l.self_attn;
            let m = l.mlp;
            Qwen2DecoderLayer {
                self_attn: Qwen2Attention {
                    q_proj: f(a.q_proj, "q_proj"),
                    k_proj: f(a.k_proj, "k_proj"),
                    v_proj: f(a.v_proj, "v_proj"),
                    o_proj: f(a.o_proj, "o_proj"),
                    ..a
                },
                mlp: Qwen2Mlp {
                    gate_proj: f(m.gate_proj, "gate_proj"),
                    up_proj: f(m.up_proj, "up_proj"),
                    down_proj: f(m.down_proj, "down_proj"),
                },
                ..l
            }
        })
        .collect();
    model
}

/// Folds every adapter into its base weight (`W += alpha/r * A B`) and removes it.
pub fn merge_lora(model: Qwen2ForCausalLM) -> Qwen2ForCausalLM {
    map_linears(model, |lin, _| lin.merge_lora())
}

/// Adds `n` rows to the token embedding and the (untied) head, initialised to the mean of the
/// existing rows (so new tokens start neutral). Existing logits are unchanged.
pub fn extend_vocab(mut model: Qwen2ForCausalLM, n: usize) -> Qwen2ForCausalLM {
    if n == 0 {
        return model;
    }
    let emb = model.model.embed_tokens.weight.val(); // [v, d]
    let [_, d] = emb.dims();
    let mean = emb.clone().mean_dim(0); // [1, d]
    let rows = mean.expand([n, d]); // [n, d]
    model.model.embed_tokens.weight = Param::from_tensor(Tensor::cat(vec![emb, rows], 0)); // [v+n, d]
    if let Some(head) = model.lm_head.take() {
        let w = head.weight.val(); // [d, v]
        let cols = w.clone().mean_dim(1).expand([d, n]); // [d, n]
        let weight = Param::from_tensor(Tensor::cat(vec![w, cols], 1)); // [d, v+n]
        let bias = head.bias.map(|b| {
            let b = b.val(); // [v]
            let m = b.clone().mean().reshape([1]).expand([n]); // [n]
            Param::from_tensor(Tensor::cat(vec![b, m], 0)) // [v+n]
        });
        model.lm_head =
            Some(Linear { weight, bias, lora_a: head.lora_a, lora_b: head.lora_b, lora_scale: head.lora_scale });
    }
    model
}
