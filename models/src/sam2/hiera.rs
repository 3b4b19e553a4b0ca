//! Hiera image trunk of SAM2: 7x7/4 patch embedding, position embedding (bicubic background +
//! tiled window embedding), multi-scale blocks with windowed or global attention and max-pooled
//! queries at stage transitions, and the per-stage outputs. Field names follow the transformers
//! checkpoint (`vision_encoder.backbone.*`).

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::softmax;
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use burn::tensor::{Device, Tensor};

use super::config::HieraConfig;
use super::mlp::FeedForward;

/// `patch_embed`.
#[derive(Module, Debug)]
pub struct PatchEmbed {
    pub projection: Conv2d,
}

/// `blocks.N.attn`.
#[derive(Module, Debug)]
pub struct MultiScaleAttention {
    pub qkv: Linear,
    pub proj: Linear,
    pub num_heads: usize,
    pub query_stride: usize,
}

/// `blocks.N`.
#[derive(Module, Debug)]
pub struct MultiScaleBlock {
    pub layer_norm1: LayerNorm,
    pub attn: MultiScaleAttention,
    pub layer_norm2: LayerNorm,
    pub mlp: FeedForward,
    /// Projection of the residual when the width changes (first block of a stage).
    pub proj: Option<Linear>,
    /// 0 = global attention.
    pub window_size: usize,
    /// 0 = no query pooling.
    pub query_stride: usize,
}

/// `vision_encoder.backbone`.
#[derive(Module, Debug)]
pub struct Hiera {
    pub patch_embed: PatchEmbed,
    pub pos_embed: Param<Tensor<4>>,
    pub pos_embed_window: Param<Tensor<4>>,
    pub blocks: Vec<MultiScaleBlock>,
    /// Index of the last block of each stage.
    pub stage_ends: Vec<usize>,
}

impl HieraConfig {
    /// Builds the trunk with fresh weights (the config is assumed validated).
    pub fn init(&self, device: &Device) -> Hiera {
        let c = self.hidden_size;
        let bg = &self.window_positional_embedding_background_size;
        let w0 = self.window_size_per_stage[0];
        let mut blocks = Vec::new();
        let mut stage_ends = Vec::new();
        let mut total = 0;
        for (stage, &n) in self.blocks_per_stage.iter().enumerate() {
            for b in 0..n {
                let first = stage > 0 && b == 0;
                let dim = if first { self.embed_dim_per_stage[stage - 1] } else { self.embed_dim_per_stage[stage] };
                let dim_out = self.embed_dim_per_stage[stage];
                let window =
                    if first { self.window_size_per_stage[stage - 1] } else { self.window_size_per_stage[stage] };
                let window = if self.global_attention_blocks.contains(&total) { 0 } else { window };
                let query_stride = if first && stage <= self.num_query_pool_stages { self.query_stride[0] } else { 0 };
                let ln = |d| LayerNormConfig::new(d).with_epsilon(self.layer_norm_eps).init(device);
                blocks.push(MultiScaleBlock {
                    layer_norm1: ln(dim),
                    attn: MultiScaleAttention {
                        qkv: LinearConfig::new(dim, 3 * dim_out).init(device),
                        proj: LinearConfig::new(dim_out, dim_out).init(device),
                        num_heads: self.num_attention_heads_per_stage[stage],
                        query_stride,
                    },
                    layer_norm2: ln(dim_out),
                    mlp: FeedForward::new(
                        dim_out,
                        (dim_out as f64 * self.mlp_ratio) as usize,
                        dim_out,
                        2,
                        true,
                        false,
                        device,
                    ),
                    proj: (dim != dim_out).then(|| LinearConfig::new(dim, dim_out).init(device)),
                    window_size: window,
                    query_stride,
                });
                total += 1;
            }
            stage_ends.push(total - 1);
        }
        let k = self.patch_kernel_size[0];
        let p = self.patch_padding[0];
        Hiera {
            patch_embed: PatchEmbed {
                projection: Conv2dConfig::new([self.num_channels, c], [k, k])
                    .with_stride([self.patch_stride[0], self.patch_stride[0]])
                    .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
                    .init(device),
            },
            pos_embed: Param::from_tensor(Tensor::zeros([1, c, bg[0], bg[1]], device)),
            pos_embed_window: Param::from_tensor(Tensor::zeros([1, c, w0, w0], device)),
            blocks,
            stage_ends,
        }
    }
}

/// Max-pools `[B, H, W, C]` by `s` (floor mode), channels last.
fn pool(x: Tensor<4>, s: usize) -> Tensor<4> {
    if s <= 1 {
        return x;
    }
    let [b, h, w, c] = x.dims();
    let (ho, wo) = (h / s, w / s);
    let x = x.narrow(1, 0, ho * s).narrow(2, 0, wo * s); // [B, ho*s, wo*s, C]
    x.reshape([b, ho, s, wo, s, c])
        .max_dim(4)
        .max_dim(2) // [B, ho, 1, wo, 1, C]
        .reshape([b, ho, wo, c])
}

/// Pads `[B, H, W, C]` with zeros to multiples of `ws` and cuts it into `[B*nh*nw, ws, ws, C]`.
fn window_partition(x: Tensor<4>, ws: usize) -> (Tensor<4>, [usize; 2]) {
    let [b, h, w, c] = x.dims();
    let (hp, wp) = (h.div_ceil(ws) * ws, w.div_ceil(ws) * ws);
    let device = x.device();
    let mut x = x;
    if hp > h {
        x = Tensor::cat(vec![x, Tensor::zeros([b, hp - h, w, c], &device)], 1); // [B, hp, W, C]
    }
    if wp > w {
        x = Tensor::cat(vec![x, Tensor::zeros([b, hp, wp - w, c], &device)], 2); // [B, hp, wp, C]
    }
    let (nh, nw) = (hp / ws, wp / ws);
    let windows = x.reshape([b, nh, ws, nw, ws, c]).permute([0, 1, 3, 2, 4, 5]).reshape([b * nh * nw, ws, ws, c]); // [B*nh*nw, ws, ws, C]
    (windows, [hp, wp])
}

/// Inverse of [`window_partition`], cropping the padding: `[B*nh*nw, ws, ws, C]` -> `[B, H, W, C]`.
fn window_unpartition(windows: Tensor<4>, ws: usize, padded: [usize; 2], size: [usize; 2]) -> Tensor<4> {
    let [n, _, _, c] = windows.dims();
    let (nh, nw) = (padded[0] / ws, padded[1] / ws);
    let b = n / (nh * nw);
    windows
        .reshape([b, nh, nw, ws, ws, c])
        .permute([0, 1, 3, 2, 4, 5])
        .reshape([b, padded[0], padded[1], c])
        .narrow(1, 0, size[0])
        .narrow(2, 0, size[1]) // [B, H, W, C]
}

impl MultiScaleAttention {
    /// `[B, H, W, dim]` -> `[B, H/s, W/s, dim_out]` (s = query stride, or 1).
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [b, h, w, _] = x.dims();
        let qkv = self.qkv.forward(x); // [B, H, W, 3*D]
        let d = qkv.dims()[3] / 3;
        let heads = self.num_heads;
        let hd = d / heads;
        let qkv = qkv.reshape([b, h * w, 3, heads, hd]); // [B, HW, 3, heads, hd]
        let take = |i: usize| qkv.clone().narrow(2, i, 1).reshape([b, h * w, heads, hd]);
        let (mut q, k, v) = (take(0), take(1), take(2)); // [B, HW, heads, hd]
        let (mut ho, mut wo) = (h, w);
        if self.query_stride > 1 {
            let pooled = pool(q.reshape([b, h, w, d]), self.query_stride); // [B, h', w', D]
            [_, ho, wo, _] = pooled.dims();
            q = pooled.reshape([b, ho * wo, heads, hd]);
        }
        let q = q.swap_dims(1, 2); // [B, heads, N', hd]
        let k = k.swap_dims(1, 2); // [B, heads, N, hd]
        let v = v.swap_dims(1, 2); // [B, heads, N, hd]
        let att = softmax(q.matmul(k.swap_dims(2, 3)).mul_scalar((hd as f64).powf(-0.5)), 3); // [B, heads, N', N]
        let out = att.matmul(v).swap_dims(1, 2).reshape([b, ho, wo, d]); // [B, h', w', D]
        self.proj.forward(out) // [B, h', w', D]
    }
}

impl MultiScaleBlock {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let normed = self.layer_norm1.forward(x.clone()); // [B, H, W, dim]
        let residual = match &self.proj {
            Some(proj) => pool(proj.forward(normed.clone()), self.query_stride), // [B, H', W', dim_out]
            None => x,
        };
        let [_, h, w, _] = normed.dims();
        let mut out = if self.window_size > 0 {
            let (windows, padded) = window_partition(normed, self.window_size); // [B*n, ws, ws, dim]
            (self.attn.forward(windows), Some(padded))
        } else {
            (self.attn.forward(normed), None)
        };
        let (mut ws, mut size) = (self.window_size, [h, w]);
        if self.query_stride > 1 {
            ws = self.window_size / self.query_stride;
            let [_, rh, rw, _] = residual.dims();
            size = [rh, rw];
            if ws > 0 {
                out.1 = Some([rh.div_ceil(ws) * ws, rw.div_ceil(ws) * ws]);
            }
        }
        let attn = match out.1 {
            Some(padded) if ws > 0 => window_unpartition(out.0, ws, padded, size),
            _ => out.0,
        }; // [B, H', W', dim_out]
        let x = residual + attn; // [B, H', W', dim_out]
        x.clone() + self.mlp.forward(self.layer_norm2.forward(x)) // [B, H', W', dim_out]
    }
}

impl Hiera {
    /// Position embedding for an `h x w` map `[1, h, w, C]`.
    fn position(&self, h: usize, w: usize) -> Tensor<4> {
        let bg = interpolate(
            self.pos_embed.val(),
            InterpolateOptions::new(InterpolateMode::Bicubic).with_output_size([h, w]).with_align_corners(false),
        ); // [1, C, h, w]
        let win = self.pos_embed_window.val(); // [1, C, ws, ws]
        let [_, _, wh, ww] = win.dims();
        let tiled = win.repeat(&[1, 1, h / wh, w / ww]); // [1, C, h, w]
        (bg + tiled).permute([0, 2, 3, 1]) // [1, h, w, C]
    }

    /// Pixels `[B, 3, S, S]` -> the output of every stage `[B, H_i, W_i, C_i]`, finest first.
    pub fn forward(&self, pixels: Tensor<4>) -> Vec<Tensor<4>> {
        let x = self.patch_embed.projection.forward(pixels).permute([0, 2, 3, 1]); // [B, H, W, C]
        let [_, h, w, _] = x.dims();
        let mut x = x + self.position(h, w); // [B, H, W, C]
        let mut outs = Vec::with_capacity(self.stage_ends.len());
        for (i, block) in self.blocks.iter().enumerate() {
            x = block.forward(x); // [B, H_i, W_i, C_i]
            if self.stage_ends.contains(&i) {
                outs.push(x.clone());
            }
        }
        outs
    }
}
