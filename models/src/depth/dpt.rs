//! DPT neck and head of Depth Anything: reassemble (tokens -> maps at four scales), 3x3 convs to the
//! fusion width, top-down feature fusion with pre-activation residual units, and the three-conv
//! relative-depth head. Field names follow the transformers checkpoint (`neck.*`, `head.*`).

use burn::module::Module;
use burn::nn::PaddingConfig2d;
use burn::nn::conv::{Conv2d, Conv2dConfig, ConvTranspose2d, ConvTranspose2dConfig};
use burn::tensor::activation::{relu, sigmoid};
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use burn::tensor::{Device, Tensor};

/// Bilinear resize of `[B, C, H, W]` to `size`.
fn resize(x: Tensor<4>, size: [usize; 2], align_corners: bool) -> Tensor<4> {
    interpolate(
        x,
        InterpolateOptions::new(InterpolateMode::Bilinear).with_output_size(size).with_align_corners(align_corners),
    )
}

fn conv(c_in: usize, c_out: usize, k: usize, stride: usize, pad: usize, bias: bool, device: &Device) -> Conv2d {
    Conv2dConfig::new([c_in, c_out], [k, k])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
        .with_bias(bias)
        .init(device)
}

/// `neck.reassemble_stage.layers.N`. The checkpoint calls either resize layer `resize`; the key
/// table maps it to `resize_up` (factor > 1: transposed conv, kernel = stride = factor) or
/// `resize_down` (factor < 1: 3x3 conv with stride 1/factor). Factor 1 has neither.
#[derive(Module, Debug)]
pub struct ReassembleLayer {
    pub projection: Conv2d,
    pub resize_up: Option<ConvTranspose2d>,
    pub resize_down: Option<Conv2d>,
}

/// `neck.reassemble_stage`.
#[derive(Module, Debug)]
pub struct ReassembleStage {
    pub layers: Vec<ReassembleLayer>,
}

/// Pre-activation residual conv unit.
#[derive(Module, Debug)]
pub struct ResidualUnit {
    pub convolution1: Conv2d,
    pub convolution2: Conv2d,
}

/// `neck.fusion_stage.layers.N`.
#[derive(Module, Debug)]
pub struct FusionLayer {
    pub projection: Conv2d,
    pub residual_layer1: ResidualUnit,
    pub residual_layer2: ResidualUnit,
}

/// `neck.fusion_stage`.
#[derive(Module, Debug)]
pub struct FusionStage {
    pub layers: Vec<FusionLayer>,
}

/// `neck.*`.
#[derive(Module, Debug)]
pub struct DptNeck {
    pub reassemble_stage: ReassembleStage,
    pub convs: Vec<Conv2d>,
    pub fusion_stage: FusionStage,
}

/// `head.*`.
#[derive(Module, Debug)]
pub struct DepthHead {
    pub conv1: Conv2d,
    pub conv2: Conv2d,
    pub conv3: Conv2d,
    pub patch_size: usize,
    /// `true`: sigmoid * max_depth (metric); `false`: ReLU (relative).
    pub metric: bool,
    pub max_depth: f64,
}

impl DptNeck {
    /// Builds the neck: `hidden` = backbone width, `neck` = per-level widths, `factors` = per-level
    /// resize factors, `fusion` = fusion width.
    pub fn new(hidden: usize, neck: &[usize], factors: &[f64], fusion: usize, device: &Device) -> Self {
        let layers = neck
            .iter()
            .zip(factors)
            .map(|(&c, &f)| ReassembleLayer {
                projection: conv(hidden, c, 1, 1, 0, true, device),
                resize_up: (f > 1.0).then(|| {
                    let k = f.round() as usize;
                    ConvTranspose2dConfig::new([c, c], [k, k]).with_stride([k, k]).init(device)
                }),
                resize_down: (f < 1.0).then(|| conv(c, c, 3, (1.0 / f).round() as usize, 1, true, device)),
            })
            .collect();
        let unit = || ResidualUnit {
            convolution1: conv(fusion, fusion, 3, 1, 1, true, device),
            convolution2: conv(fusion, fusion, 3, 1, 1, true, device),
        };
        Self {
            reassemble_stage: ReassembleStage { layers },
            convs: neck.iter().map(|&c| conv(c, fusion, 3, 1, 1, false, device)).collect(),
            fusion_stage: FusionStage {
                layers: neck
                    .iter()
                    .map(|_| FusionLayer {
                        projection: conv(fusion, fusion, 1, 1, 0, true, device),
                        residual_layer1: unit(),
                        residual_layer2: unit(),
                    })
                    .collect(),
            },
        }
    }

    /// Backbone states `[B, 1 + h*w, d]` (one per level) -> fused maps, coarsest first; the last is
    /// the finest `[B, F, 8h, 8w]` (for the standard factors).
    pub fn forward(&self, states: Vec<Tensor<3>>, h: usize, w: usize) -> Vec<Tensor<4>> {
        let maps: Vec<Tensor<4>> = states
            .into_iter()
            .zip(&self.reassemble_stage.layers)
            .zip(&self.convs)
            .map(|((s, layer), conv)| {
                let [b, n, d] = s.dims();
                let x = s.narrow(1, 1, n - 1).reshape([b, h, w, d]).permute([0, 3, 1, 2]); // [B, d, h, w]
                let x = layer.projection.forward(x); // [B, c, h, w]
                let x = match (&layer.resize_up, &layer.resize_down) {
                    (Some(up), _) => up.forward(x),
                    (None, Some(down)) => down.forward(x),
                    (None, None) => x,
                }; // [B, c, h*f, w*f]
                conv.forward(x) // [B, F, h*f, w*f]
            })
            .collect();
        // Fuse top-down: coarsest level first.
        let rev: Vec<Tensor<4>> = maps.into_iter().rev().collect();
        let mut fused: Option<Tensor<4>> = None;
        let mut out = Vec::with_capacity(rev.len());
        for (i, (x, layer)) in rev.iter().zip(&self.fusion_stage.layers).enumerate() {
            let size = rev.get(i + 1).map(|next| {
                let [_, _, nh, nw] = next.dims();
                [nh, nw]
            });
            let y = match fused.take() {
                None => layer.forward(x.clone(), None, size),
                Some(prev) => layer.forward(prev, Some(x.clone()), size),
            }; // [B, F, h', w']
            out.push(y.clone());
            fused = Some(y);
        }
        out
    }
}

impl ResidualUnit {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let h = self.convolution1.forward(relu(x.clone())); // [B, F, h, w]
        self.convolution2.forward(relu(h)) + x // [B, F, h, w]
    }
}

impl FusionLayer {
    fn forward(&self, x: Tensor<4>, residual: Option<Tensor<4>>, size: Option<[usize; 2]>) -> Tensor<4> {
        let mut x = x; // [B, F, h, w]
        if let Some(r) = residual {
            let [_, _, h, w] = x.dims();
            let r = if r.dims()[2..] != [h, w] { resize(r, [h, w], false) } else { r };
            x = x + self.residual_layer1.forward(r); // [B, F, h, w]
        }
        x = self.residual_layer2.forward(x); // [B, F, h, w]
        let [_, _, h, w] = x.dims();
        let target = size.unwrap_or([2 * h, 2 * w]);
        self.projection.forward(resize(x, target, true)) // [B, F, h', w']
    }
}

impl DepthHead {
    /// Builds the head from the fusion width and the head width.
    pub fn new(
        fusion: usize,
        head_hidden: usize,
        patch_size: usize,
        metric: bool,
        max_depth: f64,
        device: &Device,
    ) -> Self {
        Self {
            conv1: conv(fusion, fusion / 2, 3, 1, 1, true, device),
            conv2: conv(fusion / 2, head_hidden, 3, 1, 1, true, device),
            conv3: conv(head_hidden, 1, 1, 1, 0, true, device),
            patch_size,
            metric,
            max_depth,
        }
    }

    /// Finest fused map `[B, F, H', W']` -> depth `[B, h*patch, w*patch]`.
    pub fn forward(&self, x: Tensor<4>, h: usize, w: usize) -> Tensor<3> {
        let x = self.conv1.forward(x); // [B, F/2, H', W']
        let x = resize(x, [h * self.patch_size, w * self.patch_size], true); // [B, F/2, H, W]
        let x = self.conv3.forward(relu(self.conv2.forward(x))); // [B, 1, H, W]
        let x = if self.metric { sigmoid(x).mul_scalar(self.max_depth) } else { relu(x).mul_scalar(self.max_depth) }; // [B, 1, H, W]
        x.squeeze_dim::<3>(1) // [B, H, W]
    }
}
