//! SAM2's feed-forward stack (`proj_in`, `layers.N`, `proj_out`) used by the Hiera blocks, the
//! two-way transformer, the hypernetworks and the IoU / object-score heads.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::{gelu, relu, sigmoid};
use burn::tensor::{Device, Tensor};

/// `num_layers` linear layers with an activation between them.
#[derive(Module, Debug)]
pub struct FeedForward {
    pub proj_in: Linear,
    pub layers: Vec<Linear>,
    pub proj_out: Linear,
    /// GELU (Hiera) instead of ReLU (mask decoder).
    pub gelu: bool,
    pub sigmoid_output: bool,
}

impl FeedForward {
    /// `num_layers >= 2` layers: input -> hidden (-> hidden)* -> output.
    pub fn new(
        input: usize,
        hidden: usize,
        output: usize,
        num_layers: usize,
        gelu: bool,
        sigmoid_output: bool,
        device: &Device,
    ) -> Self {
        Self {
            proj_in: LinearConfig::new(input, hidden).init(device),
            layers: (0..num_layers.saturating_sub(2)).map(|_| LinearConfig::new(hidden, hidden).init(device)).collect(),
            proj_out: LinearConfig::new(hidden, output).init(device),
            gelu,
            sigmoid_output,
        }
    }

    fn act<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        if self.gelu { gelu(x) } else { relu(x) }
    }

    /// `[..., input]` -> `[..., output]`.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let mut x = self.act(self.proj_in.forward(x)); // [..., hidden]
        for layer in &self.layers {
            x = self.act(layer.forward(x)); // [..., hidden]
        }
        let x = self.proj_out.forward(x); // [..., output]
        if self.sigmoid_output { sigmoid(x) } else { x }
    }
}
