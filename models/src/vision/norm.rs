//! The vision encoder's norm: LayerNorm or RMSNorm, parameters named `weight`/`bias` as in
//! the checkpoints.

use burn::module::Param;
use burn::prelude::*;

/// LayerNorm (weight + bias) or RMSNorm (weight only) over the last axis.
#[derive(Module, Debug)]
pub struct VisionNorm {
    pub weight: Param<Tensor<1>>,
    pub bias: Option<Param<Tensor<1>>>,
    pub eps: f64,
}

impl VisionNorm {
    /// LayerNorm (`rms = false`) or RMSNorm (`rms = true`) of width `d`.
    pub fn init(d: usize, eps: f64, rms: bool, device: &Device) -> Self {
        Self {
            weight: Param::from_tensor(Tensor::ones([d], device)),
            bias: (!rms).then(|| Param::from_tensor(Tensor::zeros([d], device))),
            eps,
        }
    }

    /// `[..., d] -> [..., d]`
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let w = self.weight.val().unsqueeze::<D>(); // [1.., d]
        match &self.bias {
            Some(b) => {
                let mean = x.clone().mean_dim(D - 1); // [..., 1]
                let centered = x - mean; // [..., d]
                let var = centered.clone().square().mean_dim(D - 1); // [..., 1]
                centered / (var + self.eps).sqrt() * w + b.val().unsqueeze::<D>() // [..., d]
            }
            None => {
                let ms = x.clone().square().mean_dim(D - 1); // [..., 1]
                x / (ms + self.eps).sqrt() * w // [..., d]
            }
        }
    }
}
