//! The depth VQ-VAE tokenizer: a strided-conv encoder from a normalised depth map to a `g x g` grid of
//! latents, the EMA quantiser, and the mirrored transposed-conv decoder. `encode` turns depth into
//! `g*g` code ids, `decode` turns ids back into depth, `decode_soft` decodes per-position
//! distributions over the codebook differentiably.

use burn::config::Config;
use burn::module::Module;
use burn::nn::PaddingConfig2d;
use burn::nn::conv::{Conv2d, Conv2dConfig, ConvTranspose2d, ConvTranspose2dConfig};
use burn::tensor::activation::{relu, softmax};
use burn::tensor::{Device, Int, Tensor};

use super::error::DepthError;
use super::quantizer::{EmaBatch, EmaQuantizer, QuantizerConfig};

/// Configuration of [`VqVae`]. Each entry of `channels` is one `k4 s2` conv, so the grid side is
/// `input_size / 2^channels.len()`.
#[derive(Config, Debug)]
pub struct VqVaeConfig {
    /// Side of the square input depth map.
    pub input_size: usize,
    /// Output channels of the strided encoder convs (the decoder mirrors them).
    pub channels: Vec<usize>,
    /// Residual blocks at the bottleneck (in the encoder and in the decoder).
    #[config(default = 2)]
    pub num_res_blocks: usize,
    /// Width of one code.
    pub code_dim: usize,
    /// Codebook size K.
    #[config(default = 128)]
    pub num_codes: usize,
    /// EMA decay of the codebook.
    #[config(default = 0.99)]
    pub decay: f64,
    /// Commitment weight.
    #[config(default = 0.25)]
    pub commitment: f64,
    /// EMA cluster size (vectors per batch) under which a code is re-seeded; a re-seeded code
    /// starts at 1, so at decay 0.99 it has ~70 steps to attract vectors before it moves again.
    #[config(default = 0.5)]
    pub dead_threshold: f64,
}

impl VqVaeConfig {
    /// The reference tokenizer: 320x320 depth, x32 down (16->32->64->128->256) to 10x10, K = 128
    /// codes of width 512.
    pub fn reference() -> Self {
        Self::new(320, vec![16, 32, 64, 128, 256], 512)
    }

    /// The tiny tokenizer for tests and the demo: 80x80 depth, x8 down (16->32->64) to the same 10x10
    /// grid, K = 128 codes of width 64.
    pub fn tiny() -> Self {
        Self::new(80, vec![16, 32, 64], 64)
    }

    /// Side of the code grid.
    pub fn grid_size(&self) -> usize {
        self.input_size >> self.channels.len()
    }

    /// Number of codes per depth map (`grid_size^2`).
    pub fn num_tokens(&self) -> usize {
        self.grid_size() * self.grid_size()
    }

    /// Checks that the sizes fit together.
    pub fn validate(&self) -> Result<(), DepthError> {
        let factor = 1usize << self.channels.len();
        if self.channels.is_empty() || !self.input_size.is_multiple_of(factor) || self.input_size < factor {
            return Err(DepthError::Config {
                field: "input_size",
                reason: format!(
                    "{} is not a positive multiple of 2^{} (one per entry of channels)",
                    self.input_size,
                    self.channels.len()
                ),
            });
        }
        if self.num_codes == 0 || self.code_dim == 0 {
            return Err(DepthError::Config { field: "num_codes/code_dim", reason: "must be positive".into() });
        }
        Ok(())
    }

    /// Builds the model with freshly initialised weights.
    pub fn init(&self, device: &Device) -> Result<VqVae, DepthError> {
        self.validate()?;
        let last = *self.channels.last().unwrap_or(&1);
        let mut downs = Vec::with_capacity(self.channels.len());
        let mut c_in = 1;
        for &c_out in &self.channels {
            downs.push(
                Conv2dConfig::new([c_in, c_out], [4, 4])
                    .with_stride([2, 2])
                    .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                    .init(device),
            );
            c_in = c_out;
        }
        let encoder = Encoder {
            downs,
            res_blocks: (0..self.num_res_blocks).map(|_| ResBlock::new(last, device)).collect(),
            proj: Conv2dConfig::new([last, self.code_dim], [1, 1]).init(device),
        };
        let mut ups = Vec::with_capacity(self.channels.len());
        let rev: Vec<usize> = self.channels.iter().rev().copied().collect();
        for (i, &c_in) in rev.iter().enumerate() {
            let c_out = rev.get(i + 1).copied().unwrap_or(c_in);
            ups.push(
                ConvTranspose2dConfig::new([c_in, c_out], [4, 4]).with_stride([2, 2]).with_padding([1, 1]).init(device),
            );
        }
        let first = self.channels[0];
        let decoder = Decoder {
            proj: Conv2dConfig::new([self.code_dim, last], [1, 1]).init(device),
            res_blocks: (0..self.num_res_blocks).map(|_| ResBlock::new(last, device)).collect(),
            ups,
            out: Conv2dConfig::new([first, 1], [1, 1]).init(device),
        };
        let quantizer = QuantizerConfig::new(self.num_codes, self.code_dim)
            .with_decay(self.decay)
            .with_commitment(self.commitment)
            .with_dead_threshold(self.dead_threshold)
            .init(device);
        Ok(VqVae { encoder, quantizer, decoder, grid_size: self.grid_size(), input_size: self.input_size })
    }
}

/// `x + conv1x1(relu(conv3x3(relu(x))))`.
#[derive(Module, Debug)]
pub struct ResBlock {
    pub conv1: Conv2d,
    pub conv2: Conv2d,
}

impl ResBlock {
    fn new(channels: usize, device: &Device) -> Self {
        Self {
            conv1: Conv2dConfig::new([channels, channels], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(device),
            conv2: Conv2dConfig::new([channels, channels], [1, 1]).init(device),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let h = self.conv1.forward(relu(x.clone())); // [B, C, h, w]
        x + self.conv2.forward(relu(h)) // [B, C, h, w]
    }
}

/// Strided convs + residual blocks + 1x1 projection to the code width.
#[derive(Module, Debug)]
pub struct Encoder {
    pub downs: Vec<Conv2d>,
    pub res_blocks: Vec<ResBlock>,
    pub proj: Conv2d,
}

impl Encoder {
    fn forward(&self, depth: Tensor<4>) -> Tensor<4> {
        let mut x = depth; // [B, 1, H, W]
        for conv in &self.downs {
            x = relu(conv.forward(x)); // [B, C_i, H/2^i, W/2^i]
        }
        for block in &self.res_blocks {
            x = block.forward(x); // [B, C, g, g]
        }
        self.proj.forward(relu(x)) // [B, D, g, g]
    }
}

/// 1x1 projection from the code width + residual blocks + transposed convs + 1x1 conv to one channel.
#[derive(Module, Debug)]
pub struct Decoder {
    pub proj: Conv2d,
    pub res_blocks: Vec<ResBlock>,
    pub ups: Vec<ConvTranspose2d>,
    pub out: Conv2d,
}

impl Decoder {
    fn forward(&self, latents: Tensor<4>) -> Tensor<4> {
        let mut x = self.proj.forward(latents); // [B, C, g, g]
        for block in &self.res_blocks {
            x = block.forward(x); // [B, C, g, g]
        }
        x = relu(x);
        for conv in &self.ups {
            x = relu(conv.forward(x)); // [B, C_i, 2h, 2w]
        }
        self.out.forward(x) // [B, 1, H, W]
    }
}

/// Per-position scores over the codebook for [`VqVae::decode_soft`].
#[derive(Debug, Clone)]
pub enum CodeScores {
    /// Probabilities `[B, N, K]` (rows sum to one).
    Probs(Tensor<3>),
    /// Unnormalised logits `[B, N, K]`; softmax(logits / temperature) is applied.
    Logits(Tensor<3>),
}

/// What one training forward pass produces.
#[derive(Debug, Clone)]
pub struct VqVaeOutput {
    /// Reconstructed depth `[B, 1, H, W]`.
    pub reconstruction: Tensor<4>,
    /// Code ids `[B, N]`.
    pub ids: Tensor<2, Int>,
    /// Commitment loss `[1]`.
    pub commitment_loss: Tensor<1>,
    /// Detached encoder outputs and their ids, for the EMA step.
    pub ema: EmaBatch,
}

/// The depth tokenizer.
#[derive(Module, Debug)]
pub struct VqVae {
    pub encoder: Encoder,
    pub quantizer: EmaQuantizer,
    pub decoder: Decoder,
    pub grid_size: usize,
    pub input_size: usize,
}

impl VqVae {
    /// Codes per depth map.
    pub fn num_tokens(&self) -> usize {
        self.grid_size * self.grid_size
    }

    /// Codebook size K.
    pub fn num_codes(&self) -> usize {
        self.quantizer.num_codes()
    }

    fn check_depth(&self, depth: &Tensor<4>) -> Result<(), DepthError> {
        let [_, c, h, w] = depth.dims();
        if c != 1 || h != self.input_size || w != self.input_size {
            return Err(DepthError::Shape {
                what: "depth",
                expected: format!("[B, 1, {0}, {0}]", self.input_size),
                got: format!("{:?}", depth.dims()),
            });
        }
        Ok(())
    }

    /// Encoder latents `[B, D, g, g]` -> rows `[B*N, D]` in row-major grid order.
    fn latents_to_rows(latents: Tensor<4>) -> Tensor<2> {
        let [b, d, g, _] = latents.dims();
        latents.permute([0, 2, 3, 1]).reshape([b * g * g, d]) // [B*N, D]
    }

    /// Rows `[B*N, D]` -> latents `[B, D, g, g]`.
    fn rows_to_latents(&self, rows: Tensor<2>, batch: usize) -> Tensor<4> {
        let [_, d] = rows.dims();
        let g = self.grid_size;
        rows.reshape([batch, g, g, d]).permute([0, 3, 1, 2]) // [B, D, g, g]
    }

    /// Depth `[B, 1, H, W]` in [-1, 1] -> code ids `[B, N]`.
    pub fn encode(&self, depth: Tensor<4>) -> Result<Tensor<2, Int>, DepthError> {
        self.check_depth(&depth)?;
        let b = depth.dims()[0];
        let rows = Self::latents_to_rows(self.encoder.forward(depth)); // [B*N, D]
        Ok(self.quantizer.nearest(rows).reshape([b, self.num_tokens()])) // [B, N]
    }

    /// Code ids `[B, N]` -> depth `[B, 1, H, W]`.
    pub fn decode(&self, ids: Tensor<2, Int>) -> Result<Tensor<4>, DepthError> {
        let [b, n] = ids.dims();
        self.check_tokens(n)?;
        let max = ids.clone().max().into_scalar::<i64>();
        let min = ids.clone().min().into_scalar::<i64>();
        if min < 0 || max >= self.num_codes() as i64 {
            return Err(DepthError::CodeOutOfRange { min, max, num_codes: self.num_codes() });
        }
        let rows = self.quantizer.lookup(ids.reshape([b * n])); // [B*N, D]
        Ok(self.decoder.forward(self.rows_to_latents(rows, b))) // [B, 1, H, W]
    }

    /// Per-position scores `[B, N, K]` -> expected code embedding -> depth `[B, 1, H, W]`.
    /// Differentiable in the scores; `temperature` divides logits (ignored for probabilities).
    pub fn decode_soft(&self, scores: CodeScores, temperature: f64) -> Result<Tensor<4>, DepthError> {
        let probs = match scores {
            CodeScores::Probs(p) => p,
            CodeScores::Logits(l) => {
                if temperature.is_nan() || temperature <= 0.0 {
                    return Err(DepthError::Config {
                        field: "temperature",
                        reason: format!("{temperature} is not positive"),
                    });
                }
                softmax(l.div_scalar(temperature), 2)
            }
        }; // [B, N, K]
        let [b, n, k] = probs.dims();
        self.check_tokens(n)?;
        if k != self.num_codes() {
            return Err(DepthError::Shape {
                what: "code scores",
                expected: format!("[B, {n}, {}]", self.num_codes()),
                got: format!("{:?}", [b, n, k]),
            });
        }
        let rows = self.quantizer.expected(probs.reshape([b * n, k])); // [B*N, D]
        Ok(self.decoder.forward(self.rows_to_latents(rows, b))) // [B, 1, H, W]
    }

    fn check_tokens(&self, n: usize) -> Result<(), DepthError> {
        if n != self.num_tokens() {
            return Err(DepthError::Shape {
                what: "code ids",
                expected: format!("[B, {}]", self.num_tokens()),
                got: format!("[B, {n}]"),
            });
        }
        Ok(())
    }

    /// Training pass: encode, quantise with the straight-through estimator, decode.
    pub fn forward(&self, depth: Tensor<4>) -> Result<VqVaeOutput, DepthError> {
        self.check_depth(&depth)?;
        let b = depth.dims()[0];
        let rows = Self::latents_to_rows(self.encoder.forward(depth)); // [B*N, D]
        let q = self.quantizer.forward(rows.clone());
        let reconstruction = self.decoder.forward(self.rows_to_latents(q.quantized, b)); // [B, 1, H, W]
        Ok(VqVaeOutput {
            reconstruction,
            ids: q.ids.clone().reshape([b, self.num_tokens()]),
            commitment_loss: q.commitment_loss,
            ema: EmaBatch { inputs: rows.detach(), ids: q.ids },
        })
    }

    /// Applies one EMA codebook step (see [`EmaQuantizer::ema_update`]); returns the re-seeded count.
    pub fn ema_update(self, batch: &EmaBatch) -> (Self, usize) {
        let (quantizer, reseeded) = self.quantizer.ema_update(batch);
        (Self { quantizer, ..self }, reseeded)
    }

    /// [`VqVae::ema_update`] drawing the re-seeding rows from `rng` (reproducible training).
    pub fn ema_update_with(self, batch: &EmaBatch, rng: &mut impl rand::Rng) -> (Self, usize) {
        let (quantizer, reseeded) = self.quantizer.ema_update_with(batch, rng);
        (Self { quantizer, ..self }, reseeded)
    }
}
