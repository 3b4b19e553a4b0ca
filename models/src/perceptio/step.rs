//! One training step of the whole model as a single function: forward through every part, every loss term,
//! one backward, gradient accumulation, global-norm clipping and an AdamW step per part. The dataflow nodes run
//! the same pieces spread over threads; a test shows both give the same loss and parameters.

use burn::prelude::*;

use super::heads::{image_hidden, seg_hidden};
use super::layout::{SpecialTokens, TokenBatch};
use super::loss::{
    LossConfig, LossTerms, LossValues, code_ce, count_penalty, depth_mse, marker_ce, seg_bce, seg_dice, seg_ground,
    span_code_logits, text_ce,
};
use super::model::{ModelError, Perceptio};
use super::optim::{OptimConfig, PartOptimizer, clip_scale};
use crate::depth::CodeScores;

/// One micro-batch as tensors on the training device.
#[derive(Debug, Clone)]
pub struct TrainBatch {
    pub tokens: TokenBatch,
    /// InternViT-normalised images `[B, 3, h, w]`.
    pub pixels: Tensor<4>,
    /// SAM2-normalised images `[B, 3, S, S]`.
    pub sam_pixels: Tensor<4>,
    /// Target masks `[B, H, W]` in {0, 1} (rows without `[SEG]` are ignored).
    pub masks: Tensor<3>,
    /// Target depth `[B, 1, Dz, Dz]` in [-1, 1] at the VQ-VAE's input size.
    pub depth: Tensor<4>,
}

/// Rows `rows` of a tensor (first dimension).
pub fn select_rows<const D: usize>(x: Tensor<D>, rows: &[usize]) -> Tensor<D> {
    let device = x.device();
    let idx: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
    x.select(0, Tensor::<1, Int>::from_data(TensorData::new(idx, [rows.len()]), &device))
}

/// The LLM's text-side terms (next-token, marker, code, count) of a batch's logits.
pub fn token_terms(logits: Tensor<3>, tokens: &TokenBatch, sp: &SpecialTokens, cfg: &LossConfig) -> LossTerms {
    let on = |w: f64| w != 0.0;
    LossTerms {
        llm: if on(cfg.llm) { text_ce(logits.clone(), tokens, sp) } else { None },
        marker: if on(cfg.marker) { marker_ce(logits.clone(), tokens, sp) } else { None },
        token: if on(cfg.token) { code_ce(logits.clone(), tokens, sp) } else { None },
        count: if on(cfg.count) { count_penalty(logits, tokens, sp, cfg.span_len) } else { None },
        ..LossTerms::default()
    }
}

/// Segmentation terms for mask logits `[B', H, W]` (and the grounding map `[B', 1, g, g]`, when the model has one)
/// against their targets.
pub fn seg_terms(mask_logits: Tensor<3>, map: Option<Tensor<4>>, targets: Tensor<3>, cfg: &LossConfig) -> LossTerms {
    LossTerms {
        seg_bce: Some(seg_bce(mask_logits.clone(), targets.clone())),
        seg_ground: map.map(|m| seg_ground(m, targets.clone())),
        seg_dice: Some(seg_dice(mask_logits, targets)),
        ..LossTerms::default()
    }
    .only_if(cfg.seg != 0.0)
}

impl LossTerms {
    /// Every term of `self` and `other` (a term present in both is an error of the caller; `other` wins).
    pub fn merged(self, other: LossTerms) -> LossTerms {
        LossTerms {
            llm: other.llm.or(self.llm),
            seg_bce: other.seg_bce.or(self.seg_bce),
            seg_dice: other.seg_dice.or(self.seg_dice),
            seg_ground: other.seg_ground.or(self.seg_ground),
            marker: other.marker.or(self.marker),
            token: other.token.or(self.token),
            count: other.count.or(self.count),
            rec: other.rec.or(self.rec),
        }
    }

    fn only_if(self, keep: bool) -> LossTerms {
        if keep { self } else { LossTerms::default() }
    }
}

/// Forward of every part and every loss term for one micro-batch.
pub fn forward_terms(
    model: &Perceptio,
    batch: &TrainBatch,
    sp: &SpecialTokens,
    cfg: &LossConfig,
    temperature: f64,
) -> Result<LossTerms, ModelError> {
    let image = model.image.forward(batch.pixels.clone()); // [B, T, d]
    let out = model.llm.forward(&batch.tokens.ids, Some(image))?;
    let mut terms = token_terms(out.logits.clone(), &batch.tokens, sp, cfg);
    if cfg.seg != 0.0
        && let Some((hidden, rows)) = seg_hidden(out.hidden.clone(), &batch.tokens)
    {
        let image = image_hidden(out.hidden, &batch.tokens.ids, &rows, model.llm.image_token_id as u32); // [B', T, d]
        let levels = model.seg.encode(batch.sam_pixels.clone())?;
        let levels = levels.map(|l| select_rows(l, &rows));
        let (logits, map) = model.seg.forward_with_map(hidden, image, levels)?; // [B', h, w], [B', 1, g, g]
        let [_, mh, mw] = batch.masks.dims();
        let logits = model.seg.upsample(logits, [mh, mw]); // [B', H, W]
        terms = terms.merged(seg_terms(logits, map, select_rows(batch.masks.clone(), &rows), cfg));
    }
    if cfg.rec != 0.0
        && let Some((span, rows)) = span_code_logits(out.logits, &batch.tokens, sp, cfg.span_len)
    {
        let pred = model.vqvae.decode_soft(CodeScores::Logits(span), temperature)?; // [B'', 1, Dz, Dz]
        terms.rec = Some(depth_mse(pred, select_rows(batch.depth.clone(), &rows)));
    }
    Ok(terms)
}

/// The optimiser state of the three trainable parts.
#[derive(Debug, Default)]
pub struct PerceptioOptimizer {
    pub image: PartOptimizer,
    pub llm: PartOptimizer,
    pub seg: PartOptimizer,
}

#[allow(clippy::too_many_arguments)]
/// One micro-batch of training as a single function: forward, backward, accumulate, and on `apply` a clipped
/// AdamW step of every part. Returns the loss values (None when the batch had no term at all).
pub fn train_micro_step(
    model: &mut Perceptio,
    opt: &mut PerceptioOptimizer,
    batch: &TrainBatch,
    sp: &SpecialTokens,
    loss_cfg: &LossConfig,
    optim_cfg: &OptimConfig,
    temperature: f64,
    apply: bool,
) -> Result<Option<LossValues>, ModelError> {
    let terms = forward_terms(model, batch, sp, loss_cfg, temperature)?;
    let total = terms.total(loss_cfg);
    let values = total.as_ref().map(|_| terms.values(loss_cfg));
    if let Some(total) = total {
        let mut grads = total.backward();
        opt.image.accumulate(&model.image, &mut grads);
        opt.llm.accumulate(&model.llm, &mut grads);
        opt.seg.accumulate(&model.seg, &mut grads);
    }
    if apply {
        let sq =
            opt.image.grad_sq_norm(&model.image) + opt.llm.grad_sq_norm(&model.llm) + opt.seg.grad_sq_norm(&model.seg);
        let scale = clip_scale(sq.sqrt(), optim_cfg.clip_norm);
        model.image = opt.image.apply(model.image.clone(), optim_cfg, scale);
        model.llm = opt.llm.apply(model.llm.clone(), optim_cfg, scale);
        model.seg = opt.seg.apply(model.seg.clone(), optim_cfg, scale);
    }
    Ok(values)
}
