//! Linear layer with optional LoRA adapter (`y = x W + b + scale * (x A) B`).
//!
//! Named `Linear` and storing `weight` as `[in, out]` like burn's, so the checkpoint layer's
//! PyTorch adapters transpose it on load/save. LoRA factors `lora_a` `[in, r]` and `lora_b`
//! `[r, out]` exist only after [`Linear::add_lora`]; [`Linear::merge_lora`] folds them in.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::Initializer;
use burn::prelude::*;

/// Configuration of a [`Linear`].
#[derive(Config, Debug)]
pub struct LinearConfig {
    pub d_input: usize,
    pub d_output: usize,
    #[config(default = true)]
    pub bias: bool,
}

/// A linear layer (see the module doc).
#[derive(Module, Debug)]
pub struct Linear {
    /// `[d_input, d_output]`
    pub weight: Param<Tensor<2>>,
    /// `[d_output]`
    pub bias: Option<Param<Tensor<1>>>,
    /// `[d_input, rank]`
    pub lora_a: Option<Param<Tensor<2>>>,
    /// `[rank, d_output]`
    pub lora_b: Option<Param<Tensor<2>>>,
    /// `alpha / rank`
    pub lora_scale: f64,
}

impl LinearConfig {
    /// Initialises weights uniformly in `±1/sqrt(d_input)` (PyTorch's default).
    pub fn init(&self, device: &Device) -> Linear {
        let init = Initializer::KaimingUniform { gain: 1.0 / 3.0f64.sqrt(), fan_out_only: false };
        let weight = init.init_with([self.d_input, self.d_output], Some(self.d_input), Some(self.d_output), device);
        let bias = self.bias.then(|| init.init_with([self.d_output], Some(self.d_input), Some(self.d_output), device));
        Linear { weight, bias, lora_a: None, lora_b: None, lora_scale: 0.0 }
    }
}

impl Linear {
    /// `[..., d_input] -> [..., d_output]`
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let base = burn::tensor::module::linear(x.clone(), self.weight.val(), self.bias.as_ref().map(|b| b.val())); // [..., d_out]
        match (&self.lora_a, &self.lora_b) {
            (Some(a), Some(b)) => {
                let low = burn::tensor::module::linear(x, a.val(), None); // [..., r]
                base + burn::tensor::module::linear(low, b.val(), None).mul_scalar(self.lora_scale)
            }
            _ => base,
        }
    }

    /// Input width.
    pub fn d_input(&self) -> usize {
        self.weight.shape().dims::<2>()[0]
    }

    /// Output width.
    pub fn d_output(&self) -> usize {
        self.weight.shape().dims::<2>()[1]
    }

    /// Attaches a LoRA adapter: `A ~ U(±1/sqrt(in))`, `B = 0` (so the output is unchanged),
    /// scale `alpha / rank`. The base weight and bias are frozen (no gradient).
    pub fn add_lora(self, rank: usize, alpha: f64, device: &Device) -> Self {
        let (d_in, d_out) = (self.d_input(), self.d_output());
        let a = Initializer::KaimingUniform { gain: 1.0 / 3.0f64.sqrt(), fan_out_only: false }.init_with(
            [d_in, rank],
            Some(d_in),
            Some(rank),
            device,
        );
        let b = Initializer::Zeros.init_with([rank, d_out], Some(rank), Some(d_out), device);
        Linear {
            weight: self.weight.set_require_grad(false),
            bias: self.bias.map(|b| b.set_require_grad(false)),
            lora_a: Some(a),
            lora_b: Some(b),
            lora_scale: alpha / rank as f64,
        }
    }

    /// Folds the adapter into the weight (`W += scale * A B`) and removes it.
    pub fn merge_lora(self) -> Self {
        match (self.lora_a, self.lora_b) {
            (Some(a), Some(b)) => {
                let delta = a.val().matmul(b.val()).mul_scalar(self.lora_scale); // [in, out]
                let merged = self.weight.val() + delta; // [in, out]
                Linear {
                    weight: Param::from_tensor(merged.detach()),
                    bias: self.bias,
                    lora_a: None,
                    lora_b: None,
                    lora_scale: 0.0,
                }
            }
            (a, b) => {
                Linear { weight: self.weight, bias: self.bias, lora_a: a, lora_b: b, lora_scale: self.lora_scale }
            }
        }
    }

    /// Whether a LoRA adapter is attached.
    pub fn has_lora(&self) -> bool {
        self.lora_a.is_some()
    }
}
