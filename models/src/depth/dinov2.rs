//! DINOv2 ViT backbone of the Depth Anything teacher: patch embedding (patch 14) with a CLS token and
//! bicubically interpolated position embeddings, pre-norm blocks with layer scale, and the
//! layer-normed hidden states of the selected layers. Field names follow the transformers checkpoint
//! (`embeddings.*`, `encoder.layer.N.attention.attention.query`, `layer_scale1.lambda1`, ...).

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::{gelu, softmax};
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use burn::tensor::{Device, Tensor};

/// The `backbone_config` of a transformers `DepthAnythingConfig` (fields it does not use are ignored).
#[derive(Config, Debug)]
pub struct Dinov2Config {
    #[config(default = 384)]
    pub hidden_size: usize,
    #[config(default = 12)]
    pub num_hidden_layers: usize,
    #[config(default = 6)]
    pub num_attention_heads: usize,
    #[config(default = 4.0)]
    pub mlp_ratio: f64,
    #[config(default = 14)]
    pub patch_size: usize,
    /// Side of the image the position embeddings were trained for.
    #[config(default = 518)]
    pub image_size: usize,
    #[config(default = 3)]
    pub num_channels: usize,
    #[config(default = 1e-6)]
    pub layer_norm_eps: f64,
    #[config(default = 1.0)]
    pub layerscale_value: f64,
    #[config(default = true)]
    pub qkv_bias: bool,
    #[config(default = false)]
    pub use_swiglu_ffn: bool,
    #[config(default = true)]
    pub apply_layernorm: bool,
    /// Hidden states returned (0 = embeddings, i = after layer i).
    #[config(default = "vec![9, 10, 11, 12]")]
    pub out_indices: Vec<usize>,
    #[config(default = "\"gelu\".to_string()")]
    pub hidden_act: String,
}

/// `embeddings.*`.
#[derive(Module, Debug)]
pub struct Dinov2Embeddings {
    pub cls_token: Param<Tensor<3>>,
    pub position_embeddings: Param<Tensor<3>>,
    pub patch_embeddings: PatchEmbeddings,
}

/// `embeddings.patch_embeddings.projection`.
#[derive(Module, Debug)]
pub struct PatchEmbeddings {
    pub projection: Conv2d,
}

/// `attention.attention.{query,key,value}`.
#[derive(Module, Debug)]
pub struct SelfAttention {
    pub query: Linear,
    pub key: Linear,
    pub value: Linear,
}

/// `attention.output.dense`.
#[derive(Module, Debug)]
pub struct AttentionOutput {
    pub dense: Linear,
}

/// `attention.*`.
#[derive(Module, Debug)]
pub struct Attention {
    pub attention: SelfAttention,
    pub output: AttentionOutput,
    pub num_heads: usize,
}

/// `layer_scaleN.lambda1`.
#[derive(Module, Debug)]
pub struct LayerScale {
    pub lambda1: Param<Tensor<1>>,
}

/// `mlp.{fc1,fc2}`.
#[derive(Module, Debug)]
pub struct Mlp {
    pub fc1: Linear,
    pub fc2: Linear,
}

/// `encoder.layer.N`.
#[derive(Module, Debug)]
pub struct Dinov2Layer {
    pub norm1: LayerNorm,
    pub attention: Attention,
    pub layer_scale1: LayerScale,
    pub norm2: LayerNorm,
    pub mlp: Mlp,
    pub layer_scale2: LayerScale,
}

/// `encoder.*`.
#[derive(Module, Debug)]
pub struct Dinov2Encoder {
    pub layer: Vec<Dinov2Layer>,
}

/// The backbone (`backbone.*` in a Depth Anything checkpoint).
#[derive(Module, Debug)]
pub struct Dinov2 {
    pub embeddings: Dinov2Embeddings,
    pub encoder: Dinov2Encoder,
    pub layernorm: LayerNorm,
    pub patch_size: usize,
    pub out_indices: Vec<usize>,
    pub apply_layernorm: bool,
}

impl Dinov2Config {
    /// Number of position-embedding grid cells per side.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Builds the backbone with fresh weights.
    pub fn init(&self, device: &Device) -> Dinov2 {
        let d = self.hidden_size;
        let grid = self.grid();
        let ln = || LayerNormConfig::new(d).with_epsilon(self.layer_norm_eps).init(device);
        let lin = |i, o, bias| LinearConfig::new(i, o).with_bias(bias).init(device);
        let hidden = (d as f64 * self.mlp_ratio) as usize;
        let scale = || LayerScale {
            lambda1: Param::from_tensor(Tensor::<1>::ones([d], device).mul_scalar(self.layerscale_value)),
        };
        let layer = (0..self.num_hidden_layers)
            .map(|_| Dinov2Layer {
                norm1: ln(),
                attention: Attention {
                    attention: SelfAttention {
                        query: lin(d, d, self.qkv_bias),
                        key: lin(d, d, self.qkv_bias),
                        value: lin(d, d, self.qkv_bias),
                    },
                    output: AttentionOutput { dense: lin(d, d, true) },
                    num_heads: self.num_attention_heads,
                },
                layer_scale1: scale(),
                norm2: ln(),
                mlp: Mlp { fc1: lin(d, hidden, true), fc2: lin(hidden, d, true) },
                layer_scale2: scale(),
            })
            .collect();
        Dinov2 {
            embeddings: Dinov2Embeddings {
                cls_token: Param::from_tensor(Tensor::zeros([1, 1, d], device)),
                position_embeddings: Param::from_tensor(Tensor::zeros([1, grid * grid + 1, d], device)),
                patch_embeddings: PatchEmbeddings {
                    projection: Conv2dConfig::new([self.num_channels, d], [self.patch_size, self.patch_size])
                        .with_stride([self.patch_size, self.patch_size])
                        .init(device),
                },
            },
            encoder: Dinov2Encoder { layer },
            layernorm: ln(),
            patch_size: self.patch_size,
            out_indices: self.out_indices.clone(),
            apply_layernorm: self.apply_layernorm,
        }
    }
}

impl Dinov2Embeddings {
    /// Position embeddings for an `h x w` patch grid `[1, 1 + h*w, d]` (bicubic, as DINOv2 does,
    /// unless the grid is the trained square one).
    fn positions(&self, h: usize, w: usize) -> Tensor<3> {
        let pos = self.position_embeddings.val(); // [1, 1 + n, d]
        let [_, n1, d] = pos.dims();
        let n = n1 - 1;
        if n == h * w && h == w {
            return pos;
        }
        let side = (n as f64).sqrt().round() as usize;
        let cls = pos.clone().narrow(1, 0, 1); // [1, 1, d]
        let grid = pos.narrow(1, 1, n).reshape([1, side, side, d]).permute([0, 3, 1, 2]); // [1, d, s, s]
        let grid = interpolate(
            grid,
            InterpolateOptions::new(InterpolateMode::Bicubic).with_output_size([h, w]).with_align_corners(false),
        ); // [1, d, h, w]
        let grid = grid.permute([0, 2, 3, 1]).reshape([1, h * w, d]); // [1, h*w, d]
        Tensor::cat(vec![cls, grid], 1) // [1, 1 + h*w, d]
    }

    fn forward(&self, pixels: Tensor<4>) -> Tensor<3> {
        let patches = self.patch_embeddings.projection.forward(pixels); // [B, d, h, w]
        let [b, d, h, w] = patches.dims();
        let tokens = patches.reshape([b, d, h * w]).swap_dims(1, 2); // [B, h*w, d]
        let cls = self.cls_token.val().expand([b, 1, d]); // [B, 1, d]
        Tensor::cat(vec![cls, tokens], 1) + self.positions(h, w) // [B, 1 + h*w, d]
    }
}

impl Attention {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, n, d] = x.dims();
        let heads = self.num_heads;
        let hd = d / heads;
        let split = |t: Tensor<3>| t.reshape([b, n, heads, hd]).swap_dims(1, 2); // [B, H, n, hd]
        let q = split(self.attention.query.forward(x.clone()));
        let k = split(self.attention.key.forward(x.clone()));
        let v = split(self.attention.value.forward(x));
        let scores = q.matmul(k.swap_dims(2, 3)).mul_scalar((hd as f64).powf(-0.5)); // [B, H, n, n]
        let out = softmax(scores, 3).matmul(v); // [B, H, n, hd]
        let out = out.swap_dims(1, 2).reshape([b, n, d]); // [B, n, d]
        self.output.dense.forward(out) // [B, n, d]
    }
}

impl Dinov2Layer {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let scale1 = self.layer_scale1.lambda1.val().unsqueeze::<3>(); // [1, 1, d]
        let scale2 = self.layer_scale2.lambda1.val().unsqueeze::<3>(); // [1, 1, d]
        let x = x.clone() + self.attention.forward(self.norm1.forward(x)) * scale1; // [B, n, d]
        let h = self.mlp.fc2.forward(gelu(self.mlp.fc1.forward(self.norm2.forward(x.clone())))); // [B, n, d]
        x + h * scale2 // [B, n, d]
    }
}

impl Dinov2 {
    /// Hidden states before the final norm: index 0 is the embedding output, index i the output of
    /// layer i. Each `[B, 1 + h*w, d]`.
    pub fn hidden_states(&self, pixels: Tensor<4>) -> Vec<Tensor<3>> {
        let mut x = self.embeddings.forward(pixels); // [B, 1 + h*w, d]
        let mut states = Vec::with_capacity(self.encoder.layer.len() + 1);
        states.push(x.clone());
        for layer in &self.encoder.layer {
            x = layer.forward(x); // [B, 1 + h*w, d]
            states.push(x.clone());
        }
        states
    }

    /// The selected (`out_indices`) hidden states, layer-normed when `apply_layernorm`.
    pub fn forward(&self, pixels: Tensor<4>) -> Vec<Tensor<3>> {
        let states = self.hidden_states(pixels);
        self.out_indices
            .iter()
            .map(|&i| {
                let s = states[i.min(states.len() - 1)].clone(); // [B, 1 + h*w, d]
                if self.apply_layernorm { self.layernorm.forward(s) } else { s }
            })
            .collect()
    }
}
