//! SAM2's mask decoder: object-score, IoU and mask tokens plus the sparse prompt tokens run through a
//! two-way transformer against the image embedding; the image side is upscaled x4 with the
//! high-resolution skip features (unless `use_high_res_features` is off); hypernetwork MLPs turn mask
//! tokens into per-pixel mask logits; IoU and object-score heads; multimask or (stability-selected)
//! single-mask output. Field names follow `mask_decoder.*`.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig, ConvTranspose2d, ConvTranspose2dConfig};
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::{gelu, softmax};
use burn::tensor::{Device, Tensor};

use super::config::MaskDecoderConfig;
use super::mlp::FeedForward;
use super::prompt::layer_norm_2d;

/// Multi-head attention with an internal width (`q_proj`, `k_proj`, `v_proj`, `o_proj`).
#[derive(Module, Debug)]
pub struct Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    pub num_heads: usize,
}

impl Attention {
    fn new(hidden: usize, internal: usize, heads: usize, device: &Device) -> Self {
        Self {
            q_proj: LinearConfig::new(hidden, internal).init(device),
            k_proj: LinearConfig::new(hidden, internal).init(device),
            v_proj: LinearConfig::new(hidden, internal).init(device),
            o_proj: LinearConfig::new(internal, hidden).init(device),
            num_heads: heads,
        }
    }

    /// `q [B, Nq, C]`, `k`, `v [B, Nk, C]` -> `[B, Nq, C]`.
    fn forward(&self, q: Tensor<3>, k: Tensor<3>, v: Tensor<3>) -> Tensor<3> {
        let [b, nq, _] = q.dims();
        let nk = k.dims()[1];
        let q = self.q_proj.forward(q); // [B, Nq, I]
        let i = q.dims()[2];
        let h = self.num_heads;
        let hd = i / h;
        let q = q.reshape([b, nq, h, hd]).swap_dims(1, 2); // [B, h, Nq, hd]
        let k = self.k_proj.forward(k).reshape([b, nk, h, hd]).swap_dims(1, 2); // [B, h, Nk, hd]
        let v = self.v_proj.forward(v).reshape([b, nk, h, hd]).swap_dims(1, 2); // [B, h, Nk, hd]
        let att = softmax(q.matmul(k.swap_dims(2, 3)).mul_scalar((hd as f64).powf(-0.5)), 3); // [B, h, Nq, Nk]
        let out = att.matmul(v).swap_dims(1, 2).reshape([b, nq, i]); // [B, Nq, I]
        self.o_proj.forward(out) // [B, Nq, C]
    }
}

/// `transformer.layers.N`.
#[derive(Module, Debug)]
pub struct TwoWayBlock {
    pub self_attn: Attention,
    pub layer_norm1: LayerNorm,
    pub cross_attn_token_to_image: Attention,
    pub layer_norm2: LayerNorm,
    pub mlp: FeedForward,
    pub layer_norm3: LayerNorm,
    pub layer_norm4: LayerNorm,
    pub cross_attn_image_to_token: Attention,
    pub skip_first_layer_pe: bool,
}

impl TwoWayBlock {
    fn forward(&self, queries: Tensor<3>, keys: Tensor<3>, qpe: Tensor<3>, kpe: Tensor<3>) -> (Tensor<3>, Tensor<3>) {
        let queries = if self.skip_first_layer_pe {
            self.self_attn.forward(queries.clone(), queries.clone(), queries)
        } else {
            let q = queries.clone() + qpe.clone();
            queries.clone() + self.self_attn.forward(q.clone(), q, queries)
        }; // [B, T, C]
        let queries = self.layer_norm1.forward(queries);
        let q = queries.clone() + qpe.clone();
        let k = keys.clone() + kpe.clone();
        let queries = self.layer_norm2.forward(queries + self.cross_attn_token_to_image.forward(q, k, keys.clone())); // [B, T, C]
        let queries = self.layer_norm3.forward(queries.clone() + self.mlp.forward(queries)); // [B, T, C]
        let q = queries.clone() + qpe;
        let k = keys.clone() + kpe;
        let keys = self.layer_norm4.forward(keys + self.cross_attn_image_to_token.forward(k, q, queries.clone())); // [B, HW, C]
        (queries, keys)
    }
}

/// `transformer`.
#[derive(Module, Debug)]
pub struct TwoWayTransformer {
    pub layers: Vec<TwoWayBlock>,
    pub final_attn_token_to_image: Attention,
    pub layer_norm_final_attn: LayerNorm,
}

/// `mask_decoder`.
#[derive(Module, Debug)]
pub struct MaskDecoder {
    pub iou_token: Embedding,
    pub mask_tokens: Embedding,
    pub obj_score_token: Embedding,
    pub transformer: TwoWayTransformer,
    pub upscale_conv1: ConvTranspose2d,
    pub upscale_conv2: ConvTranspose2d,
    pub upscale_layer_norm: LayerNorm,
    pub output_hypernetworks_mlps: Vec<FeedForward>,
    pub iou_prediction_head: FeedForward,
    pub conv_s0: Conv2d,
    pub conv_s1: Conv2d,
    pub pred_obj_score_head: FeedForward,
    pub dynamic_multimask_via_stability: bool,
    pub stability_delta: f64,
    pub stability_thresh: f64,
    /// Whether `conv_s0`/`conv_s1` of the backbone's fine maps join the upscaling (`use_high_res_features`; the
    /// two convolutions stay in the module either way, so every checkpoint has one layout).
    pub use_high_res_features: bool,
}

/// The backbone's fine maps projected for the mask decoder's upscaling (SAM2's high-resolution features).
#[derive(Debug, Clone)]
pub struct HighResFeatures {
    /// `conv_s0(fpn_0)` `[B, C/8, 4e, 4e]`.
    pub feat_s0: Tensor<4>,
    /// `conv_s1(fpn_1)` `[B, C/4, 2e, 2e]`.
    pub feat_s1: Tensor<4>,
}

/// Mask decoder output for `B` images x `P` prompts.
#[derive(Debug, Clone)]
pub struct MaskOutput {
    /// Low-resolution mask logits `[B, P, M, 4e, 4e]` (M = 3 multimask, else 1).
    pub masks: Tensor<5>,
    /// Predicted IoU `[B, P, M]`.
    pub iou_scores: Tensor<3>,
    /// Object-presence logit `[B, P, 1]`.
    pub object_score_logits: Tensor<3>,
}

impl MaskDecoder {
    pub fn new(cfg: &MaskDecoderConfig, device: &Device) -> Self {
        let c = cfg.hidden_size;
        let internal = c / cfg.attention_downsample_rate;
        let heads = cfg.num_attention_heads;
        let ln = |d| LayerNormConfig::new(d).init(device); // torch default eps 1e-5
        let m = cfg.num_multimask_outputs + 1;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| TwoWayBlock {
                self_attn: Attention::new(c, c, heads, device),
                layer_norm1: ln(c),
                cross_attn_token_to_image: Attention::new(c, internal, heads, device),
                layer_norm2: ln(c),
                mlp: FeedForward::new(c, cfg.mlp_dim, c, cfg.num_hidden_layers, false, false, device),
                layer_norm3: ln(c),
                layer_norm4: ln(c),
                cross_attn_image_to_token: Attention::new(c, internal, heads, device),
                skip_first_layer_pe: i == 0,
            })
            .collect();
        let up = |i, o| ConvTranspose2dConfig::new([i, o], [2, 2]).with_stride([2, 2]).init(device);
        Self {
            iou_token: EmbeddingConfig::new(1, c).init(device),
            mask_tokens: EmbeddingConfig::new(m, c).init(device),
            obj_score_token: EmbeddingConfig::new(1, c).init(device),
            transformer: TwoWayTransformer {
                layers,
                final_attn_token_to_image: Attention::new(c, internal, heads, device),
                layer_norm_final_attn: ln(c),
            },
            upscale_conv1: up(c, c / 4),
            upscale_conv2: up(c / 4, c / 8),
            upscale_layer_norm: LayerNormConfig::new(c / 4).with_epsilon(1e-6).init(device),
            output_hypernetworks_mlps: (0..m).map(|_| FeedForward::new(c, c, c / 8, 3, false, false, device)).collect(),
            iou_prediction_head: FeedForward::new(
                c,
                cfg.iou_head_hidden_dim,
                m,
                cfg.iou_head_depth,
                false,
                true,
                device,
            ),
            conv_s0: Conv2dConfig::new([c, c / 8], [1, 1]).init(device),
            conv_s1: Conv2dConfig::new([c, c / 4], [1, 1]).init(device),
            pred_obj_score_head: FeedForward::new(c, c, 1, 3, false, false, device),
            dynamic_multimask_via_stability: cfg.dynamic_multimask_via_stability,
            use_high_res_features: cfg.use_high_res_features,
            stability_delta: cfg.dynamic_multimask_stability_delta,
            stability_thresh: cfg.dynamic_multimask_stability_thresh,
        }
    }

    /// Runs the decoder.
    ///
    /// - `image` `[B, C, e, e]`: image embedding (with the no-memory embedding added),
    /// - `image_pe` `[1, C, e, e]`: image-wide positional embedding,
    /// - `sparse` `[B, P, T, C]` (None: no sparse tokens, one prompt per image),
    /// - `dense` `[B, C, e, e]`,
    /// - `high_res`: the fine maps added while upscaling (None: upscaled from the image side alone, as with
    ///   `use_high_res_features` off).
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        image: Tensor<4>,
        image_pe: Tensor<4>,
        sparse: Option<Tensor<4>>,
        dense: Tensor<4>,
        high_res: Option<&HighResFeatures>,
        multimask: bool,
    ) -> MaskOutput {
        let [b, c, h, w] = image.dims();
        let device = image.device();
        let p = sparse.as_ref().map_or(1, |s| s.dims()[1]);
        let bp = b * p;
        let out_tokens = Tensor::cat(
            vec![self.obj_score_token.weight.val(), self.iou_token.weight.val(), self.mask_tokens.weight.val()],
            0,
        ); // [2+M, C]
        let m = self.mask_tokens.weight.dims()[0];
        let out_tokens = out_tokens.reshape([1, 2 + m, c]).expand([bp, 2 + m, c]); // [BP, 2+M, C]
        let tokens = match sparse {
            Some(s) => {
                let t = s.dims()[2];
                Tensor::cat(vec![out_tokens, s.reshape([bp, t, c])], 1)
            }
            None => out_tokens,
        }; // [BP, T', C]
        let repeat = |x: Tensor<4>| -> Tensor<4> {
            let [bb, cc, hh, ww] = x.dims();
            x.reshape([bb, 1, cc, hh, ww]).expand([bb, p, cc, hh, ww]).reshape([bb * p, cc, hh, ww])
        };
        let src = repeat(image + dense); // [BP, C, e, e]
        let pos = image_pe.expand([bp, c, h, w]); // [BP, C, e, e]
        let keys = src.reshape([bp, c, h * w]).swap_dims(1, 2); // [BP, HW, C]
        let kpe = pos.reshape([bp, c, h * w]).swap_dims(1, 2); // [BP, HW, C]

        let mut queries = tokens.clone();
        let mut keys = keys;
        for layer in &self.transformer.layers {
            (queries, keys) = layer.forward(queries, keys, tokens.clone(), kpe.clone());
        }
        let q = queries.clone() + tokens;
        let k = keys.clone() + kpe;
        let queries = self
            .transformer
            .layer_norm_final_attn
            .forward(queries + self.transformer.final_attn_token_to_image.forward(q, k, keys.clone())); // [BP, T', C]

        let iou_token = queries.clone().narrow(1, 1, 1).reshape([bp, c]); // [BP, C]
        let obj_token = queries.clone().narrow(1, 0, 1).reshape([bp, c]); // [BP, C]
        let image = keys.swap_dims(1, 2).reshape([bp, c, h, w]); // [BP, C, e, e]
        let up = self.upscale_conv1.forward(image); // [BP, C/4, 2e, 2e]
        let up = match high_res {
            Some(f) => up + repeat(f.feat_s1.clone()),
            None => up,
        };
        let up = self.upscale_conv2.forward(gelu(layer_norm_2d(&self.upscale_layer_norm, up))); // [BP, C/8, 4e, 4e]
        let up = gelu(match high_res {
            Some(f) => up + repeat(f.feat_s0.clone()),
            None => up,
        });
        let [_, c8, hh, ww] = up.dims();
        let hyper: Vec<Tensor<3>> = self
            .output_hypernetworks_mlps
            .iter()
            .enumerate()
            .map(|(i, mlp)| mlp.forward(queries.clone().narrow(1, 2 + i, 1))) // [BP, 1, C/8]
            .collect();
        let hyper = Tensor::cat(hyper, 1); // [BP, M, C/8]
        let masks = hyper.matmul(up.reshape([bp, c8, hh * ww])).reshape([bp, m, hh, ww]); // [BP, M, 4e, 4e]
        let iou = self.iou_prediction_head.forward(iou_token); // [BP, M]
        let obj = self.pred_obj_score_head.forward(obj_token); // [BP, 1]

        let (masks, iou) = if multimask {
            (masks.narrow(1, 1, m - 1), iou.narrow(1, 1, m - 1))
        } else if self.dynamic_multimask_via_stability {
            self.select_stable(masks, iou)
        } else {
            (masks.narrow(1, 0, 1), iou.narrow(1, 0, 1))
        };
        let mo = masks.dims()[1];
        let _ = device;
        MaskOutput {
            masks: masks.reshape([b, p, mo, hh, ww]),
            iou_scores: iou.reshape([b, p, mo]),
            object_score_logits: obj.reshape([b, p, 1]),
        }
    }

    /// Single-mask output: the single-mask token's mask when it is stable (IoU of its thresholds at
    /// +-delta >= thresh), else the best-scoring multimask output.
    fn select_stable(&self, masks: Tensor<4>, iou: Tensor<2>) -> (Tensor<4>, Tensor<2>) {
        let [bp, m, hh, ww] = masks.dims();
        let multi = masks.clone().narrow(1, 1, m - 1); // [BP, M-1, H, W]
        let multi_iou = iou.clone().narrow(1, 1, m - 1); // [BP, M-1]
        let best = multi_iou.clone().argmax(1); // [BP, 1]
        let best_iou = multi_iou.gather(1, best.clone()); // [BP, 1]
        let best_mask = multi.gather(1, best.reshape([bp, 1, 1, 1]).expand([bp, 1, hh, ww])); // [BP, 1, H, W]
        let single = masks.narrow(1, 0, 1); // [BP, 1, H, W]
        let single_iou = iou.narrow(1, 0, 1); // [BP, 1]
        let flat = single.clone().reshape([bp, hh * ww]);
        let area_i = flat.clone().greater_elem(self.stability_delta).float().sum_dim(1); // [BP, 1]
        let area_u = flat.greater_elem(-self.stability_delta).float().sum_dim(1); // [BP, 1]
        let score = area_i.div(area_u.clone().clamp_min(1.0)); // [BP, 1]
        let score = score.mask_fill(area_u.lower_equal_elem(0.0), 1.0);
        let stable = score.greater_equal_elem(self.stability_thresh); // [BP, 1]
        let mask = best_mask.mask_where(stable.clone().reshape([bp, 1, 1, 1]).expand([bp, 1, hh, ww]), single);
        let iou = best_iou.mask_where(stable, single_iou);
        (mask, iou)
    }
}
