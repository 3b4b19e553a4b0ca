//! SAM2's FPN neck: 1x1 lateral convs to the FPN width (deepest stage first in the checkpoint) with
//! nearest top-down fusion on the configured levels. Field names follow `vision_encoder.neck.*`.

use burn::module::Module;
use burn::nn::PaddingConfig2d;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use burn::tensor::{Device, Tensor};

use super::config::Sam2VisionConfig;

/// `vision_encoder.neck`.
#[derive(Module, Debug)]
pub struct FpnNeck {
    /// `convs[j]` takes stage `n - j` (deepest first).
    pub convs: Vec<Conv2d>,
    pub fpn_top_down_levels: Vec<usize>,
}

impl FpnNeck {
    /// Builds the neck from the vision config.
    pub fn new(cfg: &Sam2VisionConfig, device: &Device) -> Self {
        let (k, p) = (cfg.fpn_kernel_size, cfg.fpn_padding);
        Self {
            convs: cfg
                .backbone_channel_list
                .iter()
                .map(|&c| {
                    Conv2dConfig::new([c, cfg.fpn_hidden_size], [k, k])
                        .with_stride([cfg.fpn_stride, cfg.fpn_stride])
                        .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
                        .init(device)
                })
                .collect(),
            fpn_top_down_levels: cfg.fpn_top_down_levels.clone(),
        }
    }

    /// Stage outputs `[B, H_i, W_i, C_i]` (finest first) -> FPN maps `[B, F, H_i, W_i]`, finest first.
    pub fn forward(&self, stages: Vec<Tensor<4>>) -> Vec<Tensor<4>> {
        let n = self.convs.len() - 1;
        let mut out: Vec<Tensor<4>> = Vec::with_capacity(n + 1);
        let mut prev: Option<Tensor<4>> = None;
        for i in (0..=n).rev() {
            let lateral = self.convs[n - i].forward(stages[i].clone().permute([0, 3, 1, 2])); // [B, F, H_i, W_i]
            let features = match prev.take() {
                Some(p) if self.fpn_top_down_levels.contains(&i) && i != n => {
                    let [_, _, h, w] = lateral.dims();
                    let up = interpolate(p, InterpolateOptions::new(InterpolateMode::Nearest).with_output_size([h, w])); // [B, F, H_i, W_i]
                    lateral + up
                }
                _ => lateral,
            };
            prev = Some(features.clone());
            out.push(features);
        }
        out.reverse();
        out
    }
}
