//! Grouped-query self-attention with q/k/v bias, RoPE and the KV cache.

use burn::prelude::*;
use burn::tensor::activation::softmax;

use super::cache::KvCache;
use super::config::Qwen2Config;
use super::linear::{Linear, LinearConfig};
use super::rope::Rope;

/// `self_attn` of a decoder layer (`q_proj`, `k_proj`, `v_proj`, `o_proj`).
#[derive(Module, Debug)]
pub struct Qwen2Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

impl Qwen2Attention {
    pub fn init(cfg: &Qwen2Config, device: &Device) -> Self {
        let d = cfg.hidden_size;
        let hd = cfg.head_dim();
        let kvd = cfg.num_key_value_heads * hd;
        let bias = cfg.attention_bias;
        Self {
            q_proj: LinearConfig::new(d, cfg.num_attention_heads * hd).with_bias(bias).init(device),
            k_proj: LinearConfig::new(d, kvd).with_bias(bias).init(device),
            v_proj: LinearConfig::new(d, kvd).with_bias(bias).init(device),
            o_proj: LinearConfig::new(cfg.num_attention_heads * hd, d).with_bias(false).init(device),
            num_heads: cfg.num_attention_heads,
            num_kv_heads: cfg.num_key_value_heads,
            head_dim: hd,
        }
    }

    /// `x [b, s, d]`, `bias [b, 1, s, t]` (t = cached + s) -> `[b, s, d]`.
    pub fn forward(
        &self,
        x: Tensor<3>,
        rope: &Rope,
        bias: &Tensor<4>,
        cache: Option<(&mut KvCache, usize)>,
    ) -> Tensor<3> {
        let [b, s, _] = x.dims();
        let (h, kv, hd) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let g = h / kv;
        let q = self.q_proj.forward(x.clone()).reshape([b, s, h, hd]).swap_dims(1, 2); // [b, h, s, hd]
        let k = self.k_proj.forward(x.clone()).reshape([b, s, kv, hd]).swap_dims(1, 2); // [b, kv, s, hd]
        let v = self.v_proj.forward(x).reshape([b, s, kv, hd]).swap_dims(1, 2); // [b, kv, s, hd]
        let q = rope.apply(q); // [b, h, s, hd]
        let k = rope.apply(k); // [b, kv, s, hd]
        let (k, v) = match cache {
            Some((cache, layer)) => cache.update(layer, k, v), // [b, kv, t, hd]
            None => (k, v),
        };
        let t = k.dims()[2];
        // Query heads sharing a kv head are stacked along the sequence axis: no kv repeat.
        let q = q.reshape([b, kv, g * s, hd]); // [b, kv, g*s, hd]
        let scores = q.matmul(k.swap_dims(2, 3)).mul_scalar((hd as f64).powf(-0.5)); // [b, kv, g*s, t]
        let bias = if g > 1 { bias.clone().repeat_dim(2, g) } else { bias.clone() }; // [b, 1, g*s, t]
        let probs = softmax(scores + bias, 3); // [b, kv, g*s, t]
        let out = probs.matmul(v); // [b, kv, g*s, hd]
        let out = out.reshape([b, h, s, hd]).swap_dims(1, 2).reshape([b, s, h * hd]); // [b, s, h*hd]
        let _ = t;
        self.o_proj.forward(out) // [b, s, d]
    }
}
