//! The `[SEG]` head: the projection Linear(d, d) - ReLU - Linear(d, C) that turns the `[SEG]` token's last hidden
//! state into a SAM2 sparse prompt (Sa2VA's `text_hidden_fcs`), and the router's gather of those hidden states.

use burn::config::Config;
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::relu;

use super::layout::TokenBatch;

/// Sizes of the `[SEG]` projection.
#[derive(Config, Debug)]
pub struct SegProjectionConfig {
    /// LLM width d.
    pub d_model: usize,
    /// SAM2 prompt width C (256 in the real models).
    pub d_prompt: usize,
}

/// `text_hidden_fcs`: `fc1` is Sa2VA's `text_hidden_fcs.0`, `fc2` its `text_hidden_fcs.2`.
#[derive(Module, Debug)]
pub struct SegProjection {
    pub fc1: Linear,
    pub fc2: Linear,
}

impl SegProjectionConfig {
    pub fn init(&self, device: &Device) -> SegProjection {
        SegProjection {
            fc1: LinearConfig::new(self.d_model, self.d_model).init(device),
            fc2: LinearConfig::new(self.d_model, self.d_prompt).init(device),
        }
    }
}

impl SegProjection {
    /// `[N, d]` -> `[N, C]`
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let x = relu(self.fc1.forward(x)); // [N, d]
        self.fc2.forward(x) // [N, C]
    }
}

/// The rows of `batch` that contain `[SEG]` and the last hidden state at that position: `[B', d]` plus the batch
/// indices of those rows (in order). None when no row has one.
pub fn seg_hidden(hidden: Tensor<3>, batch: &TokenBatch) -> Option<(Tensor<2>, Vec<usize>)> {
    let [b, s, d] = hidden.dims();
    let rows: Vec<(usize, usize)> =
        batch.seqs.iter().enumerate().filter_map(|(i, q)| q.seg_pos.map(|p| (i, p))).collect();
    if rows.is_empty() {
        return None;
    }
    let device = hidden.device();
    let index: Vec<i64> = rows.iter().map(|&(i, p)| (i * s + p) as i64).collect();
    let index = Tensor::<1, Int>::from_data(TensorData::new(index, [rows.len()]), &device); // [B']
    let picked = hidden.reshape([b * s, d]).select(0, index); // [B', d]
    Some((picked, rows.into_iter().map(|(i, _)| i).collect()))
}
