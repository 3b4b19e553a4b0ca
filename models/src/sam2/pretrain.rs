//! Pretraining SAM2 on (image, mask) pairs with one positive point prompt per mask, the stage that gives the
//! tiny Perceptio model a segmenter whose frozen image encoder already produces useful features: every SAM2
//! weight trains with AdamW (linear warm-up, cosine decay to a tenth of the rate, gradient-norm clipping) on
//! sigmoid BCE + Dice (weight `dice_weight`) of the single-mask output upsampled to the input size. Also the point-prompted mask
//! IoU used to measure the result on held-out data.

use burn::config::Config;
use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use burn_optim::grad_clipping::GradientClippingConfig;
use burn_optim::{AdamWConfig, GradientsParams};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::error::Sam2Error;
use super::model::{Sam2, upsample_masks};
use super::prompt::Prompts;
use crate::perceptio::loss::{seg_bce, seg_dice};

/// Optimisation settings of [`pretrain_sam2`].
#[derive(Config, Debug)]
pub struct Sam2PretrainConfig {
    #[config(default = 300)]
    pub steps: usize,
    #[config(default = 8)]
    pub batch_size: usize,
    #[config(default = 1e-3)]
    pub lr: f64,
    /// Seeds the point prompts (one stream per step).
    #[config(default = 0)]
    pub seed: u64,
    /// Steps of linear learning-rate warm-up.
    #[config(default = 20)]
    pub warmup: usize,
    /// Weight of the Dice term next to the BCE term. The synthetic world's objects cover a few percent of the
    /// image, so with a small weight BCE wins and the single-mask output collapses to background (measured on the
    /// demo world, 300 steps: weight 1 left a training IoU of 0.02, weight 4 reached 0.19).
    #[config(default = 4.0)]
    pub dice_weight: f64,
    /// Global gradient-norm clip.
    #[config(default = 1.0)]
    pub clip_norm: f32,
}

/// A batch of SAM2-normalised images and their binary target masks, on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct MaskBatch {
    /// Side `S` of the images and masks (the SAM2 input size).
    pub size: usize,
    /// `[B, 3, S, S]` row-major.
    pub pixels: Vec<f32>,
    /// `[B, S, S]` row-major, values in {0, 1}.
    pub masks: Vec<f32>,
}

impl MaskBatch {
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.masks.len() / (self.size * self.size).max(1)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Errors of pretraining or measuring SAM2.
#[derive(Debug, thiserror::Error)]
pub enum PretrainError {
    #[error("config field `{field}`: {reason}")]
    Config { field: &'static str, reason: String },
    #[error("step {step}: reading the next batch: {reason}")]
    Data { step: usize, reason: String },
    #[error("batch sample {sample}: {reason}")]
    Batch { sample: usize, reason: String },
    #[error("step {step}: the loss became {loss}")]
    Diverged { step: usize, loss: f64 },
    #[error(transparent)]
    Sam2(#[from] Sam2Error),
}

impl Sam2PretrainConfig {
    /// Checks the values a run cannot work with.
    pub fn check(&self) -> Result<(), PretrainError> {
        let bad = |field, reason: String| Err(PretrainError::Config { field, reason });
        if self.batch_size == 0 {
            return bad("batch_size", "must be positive".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad("lr", format!("{} is not a positive number", self.lr));
        }
        if !(self.dice_weight.is_finite() && self.dice_weight >= 0.0) {
            return bad("dice_weight", format!("{} is not a non-negative number", self.dice_weight));
        }
        if !(self.clip_norm.is_finite() && self.clip_norm > 0.0) {
            return bad("clip_norm", format!("{} is not a positive number", self.clip_norm));
        }
        Ok(())
    }

    /// Learning rate of 1-based step `step`: linear warm-up, then cosine decay from `lr` to `lr / 10`.
    pub fn lr_at(&self, step: usize) -> f64 {
        if step <= self.warmup {
            return self.lr * step as f64 / self.warmup.max(1) as f64;
        }
        let span = self.steps.saturating_sub(self.warmup).max(1) as f64;
        let t = ((step - self.warmup) as f64 / span).min(1.0);
        let floor = 0.1 * self.lr;
        floor + (self.lr - floor) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
    }
}

/// Checks a batch against the model size and returns its length.
fn check_batch(batch: &MaskBatch, image_size: usize) -> Result<usize, PretrainError> {
    let s = batch.size;
    if s != image_size {
        return Err(PretrainError::Batch {
            sample: 0,
            reason: format!("side {s} but the model takes {image_size} px images"),
        });
    }
    let b = batch.len();
    if b == 0 || batch.masks.len() != b * s * s || batch.pixels.len() != b * 3 * s * s {
        return Err(PretrainError::Batch {
            sample: 0,
            reason: format!(
                "{} pixel values and {} mask values do not make B >= 1 samples of [3, {s}, {s}] and [{s}, {s}]",
                batch.pixels.len(),
                batch.masks.len()
            ),
        });
    }
    Ok(b)
}

/// One positive point `(x, y)` per mask, uniform over the mask's foreground pixels; an empty mask is an error.
pub fn sample_points(batch: &MaskBatch, rng: &mut StdRng) -> Result<Vec<[f32; 2]>, PretrainError> {
    let s = batch.size;
    batch
        .masks
        .chunks_exact(s * s)
        .enumerate()
        .map(|(i, m)| {
            let on: Vec<usize> = m.iter().enumerate().filter(|(_, v)| **v > 0.5).map(|(k, _)| k).collect();
            if on.is_empty() {
                return Err(PretrainError::Batch { sample: i, reason: "the mask is empty".into() });
            }
            let k = on[rng.random_range(0..on.len())];
            Ok([(k % s) as f32, (k / s) as f32])
        })
        .collect()
}

/// Single-mask logits `[B, S, S]` (upsampled to the input size) for a batch prompted with `points`.
pub fn point_mask_logits(sam2: &Sam2, batch: &MaskBatch, points: &[[f32; 2]]) -> Result<Tensor<3>, PretrainError> {
    let b = check_batch(batch, sam2.image_size)?;
    let s = batch.size;
    let device: Device = sam2.no_memory_embedding.device();
    let pixels = Tensor::<4>::from_data(TensorData::new(batch.pixels.clone(), [b, 3, s, s]), &device); // [B, 3, S, S]
    let coords: Vec<f32> = points.iter().flatten().copied().collect();
    let coords = Tensor::<4>::from_data(TensorData::new(coords, [b, 1, 1, 2]), &device); // [B, 1, 1, 2]
    let labels = Tensor::<3>::ones([b, 1, 1], &device); // [B, 1, 1]
    let image = sam2.image_embeddings(pixels)?;
    let prompts = Prompts { points: Some((coords, labels)), ..Prompts::default() };
    let out = sam2.predict(&image, &prompts, false)?;
    let [_, _, _, h, w] = out.masks.dims();
    let low = out.masks.reshape([b, 1, h, w]); // [B, 1, 4e, 4e]
    Ok(upsample_masks(low, [s, s]).reshape([b, s, s])) // [B, S, S]
}

/// Per-sample IoU of `logits > 0` against the targets (1 when both are empty).
pub fn mask_iou(logits: Tensor<3>, targets: Tensor<3>) -> Vec<f64> {
    let [b, h, w] = logits.dims();
    let pred = logits.greater_elem(0.0).float().reshape([b, h * w]); // [B, HW]
    let t = targets.reshape([b, h * w]); // [B, HW]
    let inter = (pred.clone() * t.clone()).sum_dim(1); // [B, 1]
    let union = (pred + t).sum_dim(1) - inter.clone(); // [B, 1]
    let read = |x: Tensor<2>| x.into_data().convert::<f32>().try_to_vec::<f32>().unwrap_or_default();
    read(inter).iter().zip(read(union)).map(|(&i, u)| if u > 0.0 { (i / u) as f64 } else { 1.0 }).collect()
}

/// Point-prompted IoU of every sample of `batch` (points drawn from `seed`), e.g. on held-out data with a plain
/// (non-autodiff) model.
pub fn evaluate_points(sam2: &Sam2, batch: &MaskBatch, seed: u64) -> Result<Vec<f64>, PretrainError> {
    let points = sample_points(batch, &mut StdRng::seed_from_u64(seed))?;
    let logits = point_mask_logits(sam2, batch, &points)?; // [B, S, S]
    let (b, s) = (batch.len(), batch.size);
    let targets = Tensor::<3>::from_data(TensorData::new(batch.masks.clone(), [b, s, s]), &logits.device());
    Ok(mask_iou(logits, targets))
}

/// The prompt stream of one step.
fn step_rng(seed: u64, step: usize) -> StdRng {
    StdRng::seed_from_u64(seed ^ (step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// Trains every weight of `sam2` (which must live on an autodiff device) for `cfg.steps` steps on batches from
/// `next_batch(batch_size)`; `on_step(step, loss, mean IoU)` after each step. The single-mask token is trained
/// directly (the stability fallback to the multimask tokens is off while training and restored at the end).
pub fn pretrain_sam2<E: std::fmt::Display>(
    sam2: Sam2,
    cfg: &Sam2PretrainConfig,
    next_batch: &mut dyn FnMut(usize) -> Result<MaskBatch, E>,
    on_step: &mut dyn FnMut(usize, f64, f64),
) -> Result<Sam2, PretrainError> {
    cfg.check()?;
    let stability = sam2.mask_decoder.dynamic_multimask_via_stability;
    let mut model = sam2.set_require_grad(true);
    model.mask_decoder.dynamic_multimask_via_stability = false;
    let mut optim = AdamWConfig::new()
        .with_weight_decay(1e-4)
        .with_grad_clipping(Some(GradientClippingConfig::Norm(cfg.clip_norm)))
        .init();
    for step in 1..=cfg.steps {
        let batch = next_batch(cfg.batch_size).map_err(|e| PretrainError::Data { step, reason: e.to_string() })?;
        let b = check_batch(&batch, model.image_size)?;
        let s = batch.size;
        let points = sample_points(&batch, &mut step_rng(cfg.seed, step))?;
        let logits = point_mask_logits(&model, &batch, &points)?; // [B, S, S]
        let device = logits.device();
        let targets = Tensor::<3>::from_data(TensorData::new(batch.masks, [b, s, s]), &device); // [B, S, S]
        let loss = seg_bce(logits.clone(), targets.clone())
            + seg_dice(logits.clone(), targets.clone()).mul_scalar(cfg.dice_weight); // [1]
        let loss_v = loss.clone().into_scalar::<f32>() as f64;
        if !loss_v.is_finite() {
            return Err(PretrainError::Diverged { step, loss: loss_v });
        }
        let ious = mask_iou(logits.detach(), targets);
        let iou = ious.iter().sum::<f64>() / ious.len().max(1) as f64;
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(cfg.lr_at(step), model, grads);
        on_step(step, loss_v, iou);
    }
    model.mask_decoder.dynamic_multimask_via_stability = stability;
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sam2::Sam2Config;

    /// `n` images of side `s`: a bright square on a dark background, the square as the mask.
    fn squares(n: usize, s: usize) -> MaskBatch {
        let mut pixels = Vec::new();
        let mut masks = Vec::new();
        for i in 0..n {
            let (x0, y0, side) = (10 + 17 * i % 50, 20 + 29 * i % 40, 40 + 7 * i % 20);
            let m: Vec<f32> = (0..s * s)
                .map(|k| {
                    let (x, y) = (k % s, k / s);
                    if (x0..x0 + side).contains(&x) && (y0..y0 + side).contains(&y) { 1.0 } else { 0.0 }
                })
                .collect();
            for c in 0..3 {
                pixels.extend(m.iter().map(|v| if *v > 0.5 { 1.5 - 0.3 * c as f32 } else { -1.0 }));
            }
            masks.extend(m);
        }
        MaskBatch { size: s, pixels, masks }
    }

    #[test]
    fn a_few_steps_on_a_fixed_batch_reduce_the_loss() {
        let device = Device::flex().autodiff();
        device.seed(3);
        let mut sam2 = Sam2Config::tiny().init(&device).unwrap();
        sam2.vision_encoder = sam2.vision_encoder.no_grad(); // as Perceptio freezes it: pretraining unfreezes it
        let patch_before = sam2.vision_encoder.backbone.patch_embed.projection.weight.val().into_data();
        let batch = squares(2, 128);
        let cfg = Sam2PretrainConfig::new().with_steps(8).with_batch_size(2).with_warmup(0).with_lr(3e-3);
        let mut losses = Vec::new();
        let mut ious = Vec::new();
        let trained = pretrain_sam2::<String>(
            sam2,
            &cfg,
            &mut |n| {
                assert_eq!(n, 2);
                Ok(batch.clone())
            },
            &mut |_, loss, iou| {
                losses.push(loss);
                ious.push(iou);
            },
        )
        .unwrap();
        assert_eq!(losses.len(), 8);
        assert!(ious.iter().all(|v| (0.0..=1.0).contains(v)));
        let (first, last) = (losses[0], losses[7]);
        assert!(last < 0.8 * first, "loss {first} -> {last}: {losses:?}");
        assert!(trained.mask_decoder.dynamic_multimask_via_stability, "the stability setting is restored");
        let patch_after = trained.vision_encoder.backbone.patch_embed.projection.weight.val().into_data();
        let moved = patch_before
            .convert::<f32>()
            .try_to_vec::<f32>()
            .unwrap()
            .iter()
            .zip(patch_after.convert::<f32>().try_to_vec::<f32>().unwrap())
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(moved > 1e-4, "the image encoder trained (max change {moved})");
    }

    #[test]
    fn points_fall_inside_their_masks_and_are_reproducible() {
        let batch = squares(4, 128);
        let a = sample_points(&batch, &mut StdRng::seed_from_u64(7)).unwrap();
        let b = sample_points(&batch, &mut StdRng::seed_from_u64(7)).unwrap();
        assert_eq!(a, b);
        for (i, [x, y]) in a.iter().enumerate() {
            assert_eq!(batch.masks[i * 128 * 128 + *y as usize * 128 + *x as usize], 1.0);
        }
        let mut empty = squares(2, 128);
        empty.masks[128 * 128..].iter_mut().for_each(|v| *v = 0.0);
        let err = sample_points(&empty, &mut StdRng::seed_from_u64(0)).unwrap_err();
        assert!(matches!(err, PretrainError::Batch { sample: 1, .. }), "{err}");
    }

    #[test]
    fn iou_of_hand_made_masks() {
        let device = Device::flex();
        // sample 0: pred {0, 1}, target {1, 2} -> 1/3; sample 1: both empty -> 1.
        let logits = Tensor::<3>::from_data(
            TensorData::new(vec![1.0f32, 2.0, -1.0, -1.0, -3.0, -2.0, -1.0, -0.5], [2, 2, 2]),
            &device,
        );
        let targets = Tensor::<3>::from_data(
            TensorData::new(vec![0.0f32, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0], [2, 2, 2]),
            &device,
        );
        let iou = mask_iou(logits, targets);
        assert!((iou[0] - 1.0 / 3.0).abs() < 1e-6 && (iou[1] - 1.0).abs() < 1e-12, "{iou:?}");
    }

    #[test]
    fn the_schedule_warms_up_then_decays_to_a_tenth() {
        let cfg = Sam2PretrainConfig::new().with_steps(110).with_warmup(10).with_lr(1e-3);
        assert!((cfg.lr_at(5) - 5e-4).abs() < 1e-12);
        assert!((cfg.lr_at(10) - 1e-3).abs() < 1e-12);
        assert!((cfg.lr_at(60) - 5.5e-4).abs() < 1e-9);
        assert!((cfg.lr_at(110) - 1e-4).abs() < 1e-12);
    }
}
