//! SAM2's prompt encoder: random-Fourier point/box embeddings with learned point-type embeddings,
//! not-a-point padding, the mask-input conv stack and the no-mask embedding; plus external sparse
//! embeddings (the projected [SEG] hidden state) appended as extra prompt tokens. Field names follow
//! `prompt_encoder.*` and `shared_image_embedding.*`.

use std::f64::consts::PI;

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig};
use burn::tensor::activation::gelu;
use burn::tensor::{Device, Tensor};

use super::config::PromptEncoderConfig;

/// Random Fourier features of 2-D coordinates (`positional_embedding` is `[2, C/2]`). The matrix is a fixed
/// random buffer in the reference: it is never trained (no gradient reaches it), and the prompt encoder's copy
/// must equal the image-side copy, or a point's embedding cannot be matched with the image positions it lies on.
#[derive(Module, Debug)]
pub struct PositionalEmbedding {
    pub positional_embedding: Param<Tensor<2>>,
}

impl PositionalEmbedding {
    /// Another embedding with the same matrix (its own parameter).
    pub fn same_matrix(&self) -> Self {
        Self { positional_embedding: Param::from_tensor(self.positional_embedding.val()) }
    }

    /// A fresh N(0, scale^2) matrix for width `hidden`.
    pub fn new(hidden: usize, scale: f64, device: &Device) -> Self {
        Self {
            positional_embedding: Param::from_tensor(Tensor::random(
                [2, hidden / 2],
                burn::tensor::Distribution::Normal(0.0, scale),
                device,
            )),
        }
    }

    /// Coordinates in [0, 1] `[..., 2]` (x, y) -> `[..., C]` = [sin, cos] of 2π (2c - 1) G.
    pub fn forward<const D: usize>(&self, coords: Tensor<D>) -> Tensor<D> {
        let g = self.positional_embedding.val().detach(); // [2, C/2]
        let dims = coords.dims();
        let rows: usize = dims[..D - 1].iter().product();
        let c = coords.mul_scalar(2.0).sub_scalar(1.0).reshape([rows, 2]); // [R, 2]
        let proj = c.matmul(g).mul_scalar(2.0 * PI); // [R, C/2]
        let half = proj.dims()[1];
        let out = Tensor::cat(vec![proj.clone().sin(), proj.cos()], 1); // [R, C]
        let mut shape = dims;
        shape[D - 1] = 2 * half;
        out.reshape(shape) // [..., C]
    }
}

/// Channels-first LayerNorm over `[B, C, H, W]`.
pub fn layer_norm_2d(norm: &LayerNorm, x: Tensor<4>) -> Tensor<4> {
    norm.forward(x.permute([0, 2, 3, 1])).permute([0, 3, 1, 2]) // [B, C, H, W]
}

/// `prompt_encoder.mask_embed`: mask logits `[B, 1, 4e, 4e]` -> dense embedding `[B, C, e, e]`.
#[derive(Module, Debug)]
pub struct MaskEmbedding {
    pub conv1: Conv2d,
    pub layer_norm1: LayerNorm,
    pub conv2: Conv2d,
    pub layer_norm2: LayerNorm,
    pub conv3: Conv2d,
}

impl MaskEmbedding {
    fn forward(&self, masks: Tensor<4>) -> Tensor<4> {
        let x = gelu(layer_norm_2d(&self.layer_norm1, self.conv1.forward(masks))); // [B, c/4, 2e, 2e]
        let x = gelu(layer_norm_2d(&self.layer_norm2, self.conv2.forward(x))); // [B, c, e, e]
        self.conv3.forward(x) // [B, C, e, e]
    }
}

/// `prompt_encoder`.
#[derive(Module, Debug)]
pub struct PromptEncoder {
    pub shared_embedding: PositionalEmbedding,
    pub mask_embed: MaskEmbedding,
    pub no_mask_embed: Embedding,
    pub point_embed: Embedding,
    pub not_a_point_embed: Embedding,
    pub image_size: usize,
    pub embedding_size: usize,
    pub hidden_size: usize,
}

/// Prompts for one image batch. Coordinates are in model-input pixels (0..image_size).
#[derive(Debug, Clone, Default)]
pub struct Prompts {
    /// Points `[B, P, N, 2]` (x, y) and labels `[B, P, N]` (1 positive, 0 negative, -1 padding,
    /// -10 ignored; 2/3 are box corners).
    pub points: Option<(Tensor<4>, Tensor<3>)>,
    /// Boxes `[B, P, 4]` (x0, y0, x1, y1).
    pub boxes: Option<Tensor<3>>,
    /// Mask logits `[B, 1, 4e, 4e]` (e = image embedding side).
    pub masks: Option<Tensor<4>>,
    /// External sparse embeddings `[B, P, n, C]` appended after the point/box tokens (e.g. the
    /// projected [SEG] hidden state, width 256 in the real models).
    pub sparse: Option<Tensor<4>>,
}

impl PromptEncoder {
    pub fn new(cfg: &PromptEncoderConfig, device: &Device) -> Self {
        let c = cfg.hidden_size;
        let m = cfg.mask_input_channels;
        let ln = |d| LayerNormConfig::new(d).with_epsilon(cfg.layer_norm_eps).init(device);
        let conv = |i, o, k| Conv2dConfig::new([i, o], [k, k]).with_stride([k, k]).init(device);
        Self {
            shared_embedding: PositionalEmbedding::new(c, cfg.scale, device),
            mask_embed: MaskEmbedding {
                conv1: conv(1, m / 4, 2),
                layer_norm1: ln(m / 4),
                conv2: conv(m / 4, m, 2),
                layer_norm2: ln(m),
                conv3: conv(m, c, 1),
            },
            no_mask_embed: EmbeddingConfig::new(1, c).init(device),
            point_embed: EmbeddingConfig::new(cfg.num_point_embeddings, c).init(device),
            not_a_point_embed: EmbeddingConfig::new(1, c).init(device),
            image_size: cfg.image_size,
            embedding_size: cfg.image_size / cfg.patch_size,
            hidden_size: c,
        }
    }

    fn row(embedding: &Embedding, i: usize) -> Tensor<1> {
        embedding.weight.val().narrow(0, i, 1).reshape([embedding.weight.dims()[1]]) // [C]
    }

    /// Points `[B, P, N, 2]`, labels `[B, P, N]` -> `[B, P, N(+1), C]`.
    fn embed_points(&self, points: Tensor<4>, labels: Tensor<3>, pad: bool) -> Tensor<4> {
        let [b, p, n, _] = points.dims();
        let device = points.device();
        let mut points = points.add_scalar(0.5); // [B, P, N, 2]
        let mut labels = labels;
        let mut n = n;
        if pad {
            points = Tensor::cat(vec![points, Tensor::zeros([b, p, 1, 2], &device)], 2); // [B, P, N+1, 2]
            labels = Tensor::cat(vec![labels, Tensor::full([b, p, 1], -1.0, &device)], 2); // [B, P, N+1]
            n += 1;
        }
        let emb = self.shared_embedding.forward(points.div_scalar(self.image_size as f64)); // [B, P, N, C]
        let c = self.hidden_size;
        let lab = labels.unsqueeze_dim::<4>(3); // [B, P, N, 1]
        let not_a_point = Self::row(&self.not_a_point_embed, 0).reshape([1, 1, 1, c]).expand([b, p, n, c]);
        let emb = emb.mask_where(lab.clone().equal_elem(-1.0).expand([b, p, n, c]), not_a_point); // [B, P, N, C]
        let emb = emb.mask_fill(lab.clone().equal_elem(-10.0).expand([b, p, n, c]), 0.0);
        // + point_embed[label] where label >= 0
        let table = self.point_embed.weight.val(); // [T, C]
        let t = table.dims()[0];
        let mut added = Tensor::<4>::zeros([b, p, n, c], &device);
        for k in 0..t {
            let sel = lab.clone().equal_elem(k as f64).float(); // [B, P, N, 1]
            added = added + sel * table.clone().narrow(0, k, 1).reshape([1, 1, 1, c]);
        }
        emb + added // [B, P, N, C]
    }

    /// Boxes `[B, P, 4]` -> corner tokens `[B, P, 3, C]` (two corners + not-a-point).
    fn embed_boxes(&self, boxes: Tensor<3>) -> Tensor<4> {
        let [b, p, _] = boxes.dims();
        let c = self.hidden_size;
        let device = boxes.device();
        let corners = boxes.add_scalar(0.5).reshape([b, p, 2, 2]).div_scalar(self.image_size as f64); // [B, P, 2, 2]
        let emb = self.shared_embedding.forward(corners); // [B, P, 2, C]
        let tl = emb.clone().narrow(2, 0, 1) + Self::row(&self.point_embed, 2).reshape([1, 1, 1, c]);
        let br = emb.narrow(2, 1, 1) + Self::row(&self.point_embed, 3).reshape([1, 1, 1, c]);
        let pad = Self::row(&self.not_a_point_embed, 0).reshape([1, 1, 1, c]).expand([b, p, 1, c]).to_device(&device);
        Tensor::cat(vec![tl, br, pad], 2) // [B, P, 3, C]
    }

    /// Prompts -> sparse `[B, P, T, C]` (None when there is no sparse prompt at all) and dense
    /// `[B, C, e, e]` embeddings.
    pub fn forward(&self, prompts: &Prompts, batch: usize) -> (Option<Tensor<4>>, Tensor<4>) {
        let mut sparse: Option<Tensor<4>> = None;
        if let Some((points, labels)) = &prompts.points {
            sparse = Some(self.embed_points(points.clone(), labels.clone(), prompts.boxes.is_none()));
        }
        if let Some(boxes) = &prompts.boxes {
            let b = self.embed_boxes(boxes.clone());
            sparse = Some(match sparse {
                Some(s) => Tensor::cat(vec![s, b], 2),
                None => b,
            });
        }
        if let Some(extra) = &prompts.sparse {
            sparse = Some(match sparse {
                Some(s) => Tensor::cat(vec![s, extra.clone()], 2),
                None => extra.clone(),
            });
        }
        let e = self.embedding_size;
        let dense = match &prompts.masks {
            Some(m) => self.mask_embed.forward(m.clone()), // [B, C, e, e]
            None => Self::row(&self.no_mask_embed, 0).reshape([1, self.hidden_size, 1, 1]).expand([
                batch,
                self.hidden_size,
                e,
                e,
            ]),
        };
        (sparse, dense)
    }
}
