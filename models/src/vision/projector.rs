//! Pixel shuffle (0.5: 2x2 neighbouring patches concatenated) and the MLP projector
//! (LayerNorm -> Linear -> GELU -> Linear) into the LLM's width.

use burn::nn::{LayerNorm, LayerNormConfig};
use burn::prelude::*;
use burn::tensor::activation::gelu;

use crate::llm::{Linear, LinearConfig};

/// InternVL's pixel shuffle with scale 1/`factor` (transformers' `pixel_shuffle`, the
/// original `ps_version = "v2"`): `[b, n, c]` with `n = s*s` -> `[b, n/f^2, c*f^2]`.
pub fn pixel_shuffle(x: Tensor<3>, factor: usize) -> Tensor<3> {
    let [b, n, c] = x.dims();
    let s = (n as f64).sqrt().round() as usize;
    let x = x.reshape([b, s, s / factor, c * factor]); // [b, W, H/f, c*f]
    let x = x.swap_dims(1, 2); // [b, H/f, W, c*f]
    let x = x.reshape([b, s / factor, s / factor, c * factor * factor]); // [b, H/f, W/f, c*f^2]
    let x = x.swap_dims(1, 2); // [b, W/f, H/f, c*f^2]
    x.reshape([b, n / (factor * factor), c * factor * factor]) // [b, n/f^2, c*f^2]
}

/// `multi_modal_projector`
#[derive(Module, Debug)]
pub struct Projector {
    pub layer_norm: LayerNorm,
    pub linear_1: Linear,
    pub linear_2: Linear,
}

impl Projector {
    /// `d_in` = vision width * 4 (after pixel shuffle), `d_out` = LLM width.
    pub fn init(d_in: usize, d_out: usize, device: &Device) -> Self {
        Self {
            layer_norm: LayerNormConfig::new(d_in).init(device),
            linear_1: LinearConfig::new(d_in, d_out).init(device),
            linear_2: LinearConfig::new(d_out, d_out).init(device),
        }
    }

    /// `[b, n, d_in] -> [b, n, d_out]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let x = self.layer_norm.forward(x); // [b, n, d_in]
        let x = gelu(self.linear_1.forward(x)); // [b, n, d_out]
        self.linear_2.forward(x) // [b, n, d_out]
    }
}
