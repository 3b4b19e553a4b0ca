//! One InternViT block: pre-norm attention (qkv bias, optional qk-norm) and GELU MLP, each
//! scaled by a learned per-channel layer scale (`lambda_1`, `lambda_2`) before the residual.

use burn::module::Param;
use burn::prelude::*;
use burn::tensor::activation::{gelu, softmax};

use super::config::InternVitConfig;
use super::norm::VisionNorm;
use crate::llm::{Linear, LinearConfig};

/// `attention`
#[derive(Module, Debug)]
pub struct VisionAttention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub projection_layer: Linear,
    pub q_norm: Option<VisionNorm>,
    pub k_norm: Option<VisionNorm>,
    pub num_heads: usize,
}

/// `mlp`
#[derive(Module, Debug)]
pub struct VisionMlp {
    pub fc1: Linear,
    pub fc2: Linear,
}

/// `encoder.layer.N`
#[derive(Module, Debug)]
pub struct VisionLayer {
    pub attention: VisionAttention,
    pub mlp: VisionMlp,
    pub layernorm_before: VisionNorm,
    pub layernorm_after: VisionNorm,
    /// `[d]`
    pub lambda_1: Param<Tensor<1>>,
    /// `[d]`
    pub lambda_2: Param<Tensor<1>>,
}

impl VisionLayer {
    pub fn init(cfg: &InternVitConfig, device: &Device) -> Self {
        let d = cfg.hidden_size;
        let lin = |i, o, bias| LinearConfig::new(i, o).with_bias(bias).init(device);
        let norm = || VisionNorm::init(d, cfg.layer_norm_eps, cfg.rms_norm, device);
        let qk = || cfg.use_qk_norm.then(|| VisionNorm::init(d, cfg.layer_norm_eps, true, device));
        let scale = || Param::from_tensor(Tensor::ones([d], device).mul_scalar(cfg.layer_scale_init_value));
        Self {
            attention: VisionAttention {
                q_proj: lin(d, d, cfg.attention_bias),
                k_proj: lin(d, d, cfg.attention_bias),
                v_proj: lin(d, d, cfg.attention_bias),
                projection_layer: lin(d, d, true),
                q_norm: qk(),
                k_norm: qk(),
                num_heads: cfg.num_attention_heads,
            },
            mlp: VisionMlp { fc1: lin(d, cfg.intermediate_size, true), fc2: lin(cfg.intermediate_size, d, true) },
            layernorm_before: norm(),
            layernorm_after: norm(),
            lambda_1: scale(),
            lambda_2: scale(),
        }
    }

    /// `[b, n, d] -> [b, n, d]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let h = self.attention.forward(self.layernorm_before.forward(x.clone())); // [b, n, d]
        let x = x + h * self.lambda_1.val().unsqueeze::<3>(); // [b, n, d]
        let h = self.layernorm_after.forward(x.clone()); // [b, n, d]
        let h = self.mlp.fc2.forward(gelu(self.mlp.fc1.forward(h))); // [b, n, d]
        x + h * self.lambda_2.val().unsqueeze::<3>() // [b, n, d]
    }
}

impl VisionAttention {
    /// Full (non-causal) self-attention `[b, n, d] -> [b, n, d]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, n, d] = x.dims();
        let h = self.num_heads;
        let hd = d / h;
        let mut q = self.q_proj.forward(x.clone()); // [b, n, d]
        let mut k = self.k_proj.forward(x.clone()); // [b, n, d]
        let v = self.v_proj.forward(x); // [b, n, d]
        if let (Some(qn), Some(kn)) = (&self.q_norm, &self.k_norm) {
            q = qn.forward(q);
            k = kn.forward(k);
        }
        let q = q.reshape([b, n, h, hd]).swap_dims(1, 2); // [b, h, n, hd]
        let k = k.reshape([b, n, h, hd]).swap_dims(1, 2); // [b, h, n, hd]
        let v = v.reshape([b, n, h, hd]).swap_dims(1, 2); // [b, h, n, hd]
        let scores = q.matmul(k.swap_dims(2, 3)).mul_scalar((hd as f64).powf(-0.5)); // [b, h, n, n]
        let out = softmax(scores, 3).matmul(v); // [b, h, n, hd]
        let out = out.swap_dims(1, 2).reshape([b, n, d]); // [b, n, d]
        self.projection_layer.forward(out) // [b, n, d]
    }
}
