//! SwiGLU feed-forward (`down(silu(gate(x)) * up(x))`).

use burn::prelude::*;
use burn::tensor::activation::silu;

use super::config::Qwen2Config;
use super::linear::{Linear, LinearConfig};

/// `mlp` of a decoder layer (`gate_proj`, `up_proj`, `down_proj`).
#[derive(Module, Debug)]
pub struct Qwen2Mlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

impl Qwen2Mlp {
    pub fn init(cfg: &Qwen2Config, device: &Device) -> Self {
        let (d, f) = (cfg.hidden_size, cfg.intermediate_size);
        Self {
            gate_proj: LinearConfig::new(d, f).with_bias(false).init(device),
            up_proj: LinearConfig::new(d, f).with_bias(false).init(device),
            down_proj: LinearConfig::new(f, d).with_bias(false).init(device),
        }
    }

    /// `[b, s, d] -> [b, s, d]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let gate = silu(self.gate_proj.forward(x.clone())); // [b, s, f]
        let up = self.up_proj.forward(x); // [b, s, f]
        self.down_proj.forward(gate * up) // [b, s, d]
    }
}
