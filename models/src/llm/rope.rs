//! Rotary position embeddings (rotate-half form, as Qwen2/Llama/InternLM2).

use burn::prelude::*;

/// cos/sin tables for one forward pass: `[batch, 1, seq, head_dim]` each.
#[derive(Debug, Clone)]
pub struct Rope {
    pub cos: Tensor<4>,
    pub sin: Tensor<4>,
}

/// Inverse frequencies `1 / theta^(2i/d)`, computed like transformers (f32 exponent).
pub fn inv_freq(head_dim: usize, theta: f64) -> Vec<f32> {
    (0..head_dim / 2)
        .map(|i| {
            let e = (2 * i) as f32 / head_dim as f32;
            1.0 / (theta as f32).powf(e)
        })
        .collect()
}

impl Rope {
    /// Tables for integer positions `[batch, seq]`.
    pub fn new(positions: &[Vec<usize>], head_dim: usize, theta: f64, device: &Device) -> Self {
        let freqs = inv_freq(head_dim, theta);
        let b = positions.len();
        let s = positions.first().map_or(0, |p| p.len());
        let half = head_dim / 2;
        let mut cos = Vec::with_capacity(b * s * head_dim);
        let mut sin = Vec::with_capacity(b * s * head_dim);
        for row in positions {
            for &p in row {
                for _ in 0..2 {
                    for f in &freqs[..half] {
                        let a = p as f32 * f;
                        cos.push(a.cos());
                        sin.push(a.sin());
                    }
                }
            }
        }
        let cos = Tensor::<4>::from_data(TensorData::new(cos, [b, 1, s, head_dim]), device); // [b, 1, s, hd]
        let sin = Tensor::<4>::from_data(TensorData::new(sin, [b, 1, s, head_dim]), device); // [b, 1, s, hd]
        Self { cos, sin }
    }

    /// Casts the tables to the activations' dtype.
    pub fn cast(self, dtype: burn::tensor::DType) -> Self {
        Self { cos: self.cos.cast(dtype), sin: self.sin.cast(dtype) }
    }

    /// Rotates `[batch, heads, seq, head_dim]`.
    pub fn apply(&self, x: Tensor<4>) -> Tensor<4> {
        let [b, h, s, d] = x.dims();
        let half = d / 2;
        let x1 = x.clone().slice([0..b, 0..h, 0..s, 0..half]); // [b, h, s, d/2]
        let x2 = x.clone().slice([0..b, 0..h, 0..s, half..d]); // [b, h, s, d/2]
        let rotated = Tensor::cat(vec![x2.neg(), x1], 3); // [b, h, s, d]
        x * self.cos.clone() + rotated * self.sin.clone() // [b, h, s, d]
    }
}
