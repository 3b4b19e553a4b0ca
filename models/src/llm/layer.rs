//! One pre-norm decoder layer: RMSNorm -> attention -> residual, RMSNorm -> SwiGLU -> residual.

use burn::nn::{RmsNorm, RmsNormConfig};
use burn::prelude::*;

use super::attention::Qwen2Attention;
use super::cache::KvCache;
use super::config::Qwen2Config;
use super::mlp::Qwen2Mlp;
use super::rope::Rope;

/// `model.layers.N`
#[derive(Module, Debug)]
pub struct Qwen2DecoderLayer {
    pub self_attn: Qwen2Attention,
    pub mlp: Qwen2Mlp,
    pub input_layernorm: RmsNorm,
    pub post_attention_layernorm: RmsNorm,
}

impl Qwen2DecoderLayer {
    pub fn init(cfg: &Qwen2Config, device: &Device) -> Self {
        let norm = RmsNormConfig::new(cfg.hidden_size).with_epsilon(cfg.rms_norm_eps);
        Self {
            self_attn: Qwen2Attention::init(cfg, device),
            mlp: Qwen2Mlp::init(cfg, device),
            input_layernorm: norm.init(device),
            post_attention_layernorm: norm.init(device),
        }
    }

    /// `[b, s, d] -> [b, s, d]`
    pub fn forward(
        &self,
        x: Tensor<3>,
        rope: &Rope,
        bias: &Tensor<4>,
        cache: Option<(&mut KvCache, usize)>,
    ) -> Tensor<3> {
        let h = self.self_attn.forward(self.input_layernorm.forward(x.clone()), rope, bias, cache); // [b, s, d]
        let x = x + h; // [b, s, d]
        let h = self.mlp.forward(self.post_attention_layernorm.forward(x.clone())); // [b, s, d]
        x + h // [b, s, d]
    }
}
