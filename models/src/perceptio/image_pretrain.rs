//! Pretraining the image encoder part (InternViT + pixel shuffle + projector) on depth, the stage that stands in
//! for a pretrained InternViT when the tiny model starts from scratch: each image token the LLM will see
//! predicts, through a linear head, the block of the depth map under it (the tokenizer's target units, [-1, 1]).
//! AdamW with linear warm-up and cosine decay ([`OptimConfig`]), MSE loss, gradient-norm clipping. The head is
//! only a training device and is not part of the model; `depth_mse` measures a trained encoder on held-out maps.
//!
//! Why: trained from scratch inside Perceptio training alone, the tiny LLM learns image-blind priors (the same
//! depth span for every image) within the demo's budget; tokens that already carry local depth give it something
//! to read.

use burn::config::Config;
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Device, Tensor, TensorData};
use burn_optim::grad_clipping::GradientClippingConfig;
use burn_optim::{AdamWConfig, GradientsParams};

use super::model::ImageEncoderPart;
use super::optim::OptimConfig;

/// Optimisation settings of [`pretrain_image_encoder`].
#[derive(Config, Debug)]
pub struct ImagePretrainConfig {
    #[config(default = 600)]
    pub steps: usize,
    #[config(default = 16)]
    pub batch_size: usize,
    #[config(default = 1e-3)]
    pub lr: f64,
    /// Fraction of the steps spent warming up.
    #[config(default = 0.05)]
    pub warmup_fraction: f64,
    #[config(default = 1e-4)]
    pub weight_decay: f32,
    /// Global gradient-norm clip.
    #[config(default = 1.0)]
    pub clip_norm: f32,
}

impl ImagePretrainConfig {
    /// Checks the values a run cannot work with.
    pub fn check(&self) -> Result<(), ImagePretrainError> {
        let bad = |field, reason: String| Err(ImagePretrainError::Config { field, reason });
        if self.steps == 0 || self.batch_size == 0 {
            return bad("steps/batch_size", "must be positive".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad("lr", format!("{} is not a positive number", self.lr));
        }
        if !(0.0..1.0).contains(&self.warmup_fraction) {
            return bad("warmup_fraction", format!("{} is not in [0, 1)", self.warmup_fraction));
        }
        if !(self.clip_norm.is_finite() && self.clip_norm > 0.0) {
            return bad("clip_norm", format!("{} is not a positive number", self.clip_norm));
        }
        Ok(())
    }

    /// The learning rate of 1-based step `step` (warm-up, then cosine to zero).
    pub fn lr_at(&self, step: usize) -> f64 {
        OptimConfig::new()
            .with_lr(self.lr)
            .with_total_steps(self.steps)
            .with_warmup_fraction(self.warmup_fraction)
            .lr_at(step)
    }
}

/// Errors of pretraining or measuring the image encoder.
#[derive(Debug, thiserror::Error)]
pub enum ImagePretrainError {
    #[error("config field `{field}`: {reason}")]
    Config { field: &'static str, reason: String },
    #[error("step {step}: reading the next batch: {reason}")]
    Data { step: usize, reason: String },
    #[error("depth batch: {0}")]
    Batch(String),
    #[error("step {step}: the loss became {loss}")]
    Diverged { step: usize, loss: f64 },
}

/// Encoder-normalised images and their depth targets, on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct DepthBatch {
    /// Side of the images (the encoder's input size).
    pub image_size: usize,
    /// Side of the depth maps: image tokens per side times the head's block.
    pub depth_side: usize,
    /// `[B, 3, P, P]` row-major.
    pub pixels: Vec<f32>,
    /// `[B, D, D]` row-major, tokenizer units ([-1, 1], +1 = nearest).
    pub depth: Vec<f32>,
}

impl DepthBatch {
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.depth.len() / (self.depth_side * self.depth_side).max(1)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn check(&self, image_size: usize, depth_side: usize) -> Result<usize, ImagePretrainError> {
        let (p, d) = (self.image_size, self.depth_side);
        if p != image_size || d != depth_side {
            return Err(ImagePretrainError::Batch(format!(
                "{p} px images with {d}x{d} depth maps, but the encoder takes {image_size} px and the head makes \
                 {depth_side}x{depth_side}"
            )));
        }
        let b = self.len();
        if b == 0 || self.depth.len() != b * d * d || self.pixels.len() != b * 3 * p * p {
            return Err(ImagePretrainError::Batch(format!(
                "{} pixel values and {} depth values do not make B >= 1 samples of [3, {p}, {p}] and [{d}, {d}]",
                self.pixels.len(),
                self.depth.len()
            )));
        }
        Ok(b)
    }
}

/// The training head: one linear map per image token from its features to the `block x block` depth values
/// under it.
#[derive(Module, Debug)]
pub struct TokenDepthHead {
    pub linear: Linear,
    pub block: usize,
}

impl TokenDepthHead {
    /// A head for image tokens of width `d` predicting `block x block` values each.
    pub fn init(d: usize, block: usize, device: &Device) -> Self {
        Self { linear: LinearConfig::new(d, block * block).init(device), block }
    }

    /// Image tokens `[B, T, d]` (a row-major `g x g` grid, as pixel shuffle leaves them) -> depth `[B, g*k, g*k]`.
    pub fn forward(&self, tokens: Tensor<3>) -> Tensor<3> {
        let [b, t, _] = tokens.dims();
        let g = (t as f64).sqrt().round() as usize;
        let k = self.block;
        let x = self.linear.forward(tokens); // [B, T, k*k]
        let x = x.reshape([b, g, g, k, k]); // [B, gy, gx, ky, kx]
        let x = x.swap_dims(2, 3); // [B, gy, ky, gx, kx]
        x.reshape([b, g * k, g * k]) // [B, D, D]
    }
}

/// Image tokens per side of `part` for `image_size` px images.
pub fn token_grid(part: &ImageEncoderPart, image_size: usize) -> usize {
    image_size / part.vision_tower.embeddings.patch_size / part.shuffle.max(1)
}

/// The encoder part and the head, trained together.
#[derive(Module, Debug)]
pub struct EncoderWithHead {
    pub part: ImageEncoderPart,
    pub head: TokenDepthHead,
}

impl EncoderWithHead {
    /// Side of the depth maps this pair makes for `image_size` px images.
    pub fn depth_side(&self, image_size: usize) -> usize {
        token_grid(&self.part, image_size) * self.head.block
    }
}

/// `b` encoder-normalised `p x p` images, row-major `[B, 3, P, P]` on the host, as a tensor on `device`.
pub fn pixels_tensor(pixels: Vec<f32>, b: usize, p: usize, device: &Device) -> Tensor<4> {
    Tensor::<4>::from_data(TensorData::new(pixels, [b, 3, p, p]), device) // [B, 3, P, P]
}

/// Predicted depth `[B, D, D]` of `b` images (`[B, 3, P, P]` host pixels).
fn predict(part: &ImageEncoderPart, head: &TokenDepthHead, pixels: Vec<f32>, b: usize, p: usize) -> Tensor<3> {
    let device = head.linear.weight.device();
    head.forward(part.forward(pixels_tensor(pixels, b, p, &device))) // [B, D, D]
}

/// Per-sample MSE of the predicted depth against the batch's maps (a plain or autodiff model).
pub fn depth_mse(model: &EncoderWithHead, batch: &DepthBatch) -> Result<Vec<f64>, ImagePretrainError> {
    let device = model.head.linear.weight.device();
    let b = batch.check(batch.image_size, model.depth_side(batch.image_size))?;
    let d = batch.depth_side;
    let pred = predict(&model.part, &model.head, batch.pixels.clone(), b, batch.image_size); // [B, D, D]
    let target = Tensor::<3>::from_data(TensorData::new(batch.depth.clone(), [b, d, d]), &device); // [B, D, D]
    let per = (pred - target).powf_scalar(2.0).reshape([b, d * d]).mean_dim(1); // [B, 1]
    let per = per.into_data().convert::<f32>().try_to_vec::<f32>();
    let per = per.map_err(|e| ImagePretrainError::Batch(format!("reading the per-sample MSE: {e:?}")))?;
    Ok(per.into_iter().map(f64::from).collect())
}

/// Trains the InternViT and projector of `model.part` and the head (it must live on an autodiff device) for
/// `cfg.steps` steps on batches from `next_batch(batch_size)` of `image_size` px images with maps of the pair's
/// [`EncoderWithHead::depth_side`]; `on_step(step, loss)` after each step.
pub fn pretrain_image_encoder<E: std::fmt::Display>(
    model: EncoderWithHead,
    cfg: &ImagePretrainConfig,
    image_size: usize,
    next_batch: &mut dyn FnMut(usize) -> Result<DepthBatch, E>,
    on_step: &mut dyn FnMut(usize, f64),
) -> Result<EncoderWithHead, ImagePretrainError> {
    let side = model.depth_side(image_size);
    let loss = |model: &EncoderWithHead, batch: DepthBatch| -> Result<Tensor<1>, ImagePretrainError> {
        let b = batch.check(image_size, side)?;
        let device = model.head.linear.weight.device();
        let pred = predict(&model.part, &model.head, batch.pixels, b, image_size); // [B, D, D]
        let target = Tensor::<3>::from_data(TensorData::new(batch.depth, [b, side, side]), &device); // [B, D, D]
        Ok((pred - target).powf_scalar(2.0).mean()) // [1]
    };
    fit(model, cfg, next_batch, &loss, on_step)
}

/// The optimisation loop of the encoder pretraining stages: `cfg.steps` AdamW steps (the schedule and clipping of
/// `cfg`) on `loss(model, next_batch(batch_size))`; `on_step(step, loss)` after each. The model must live on an
/// autodiff device.
pub fn fit<M: Module, T, E: std::fmt::Display>(
    model: M,
    cfg: &ImagePretrainConfig,
    next_batch: &mut dyn FnMut(usize) -> Result<T, E>,
    loss: &dyn Fn(&M, T) -> Result<Tensor<1>, ImagePretrainError>,
    on_step: &mut dyn FnMut(usize, f64),
) -> Result<M, ImagePretrainError> {
    fit_watched(model, cfg, next_batch, loss, &mut |step, loss, _: &M| on_step(step, loss))
}

/// [`fit`], with the model after each step handed to `on_step(step, loss, model)` (to measure it on held-out
/// data as it trains).
pub fn fit_watched<M: Module, T, E: std::fmt::Display>(
    model: M,
    cfg: &ImagePretrainConfig,
    next_batch: &mut dyn FnMut(usize) -> Result<T, E>,
    loss: &dyn Fn(&M, T) -> Result<Tensor<1>, ImagePretrainError>,
    on_step: &mut dyn FnMut(usize, f64, &M),
) -> Result<M, ImagePretrainError> {
    cfg.check()?;
    let mut model = model.set_require_grad(true);
    let mut optim = AdamWConfig::new()
        .with_weight_decay(cfg.weight_decay)
        .with_grad_clipping(Some(GradientClippingConfig::Norm(cfg.clip_norm)))
        .init();
    for step in 1..=cfg.steps {
        let batch = next_batch(cfg.batch_size).map_err(|e| ImagePretrainError::Data { step, reason: e.to_string() })?;
        let loss = loss(&model, batch)?; // [1]
        let loss_v = loss.clone().into_scalar::<f32>() as f64;
        if !loss_v.is_finite() {
            return Err(ImagePretrainError::Diverged { step, loss: loss_v });
        }
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(cfg.lr_at(step), model, grads);
        on_step(step, loss_v, &model);
    }
    Ok(model)
}

#[cfg(test)]
mod tests {
    use burn::module::Param;

    use super::*;
    use crate::perceptio::PerceptioConfig;

    #[test]
    fn each_token_fills_the_block_under_it() {
        let device = Device::flex();
        // 4 tokens (a 2x2 grid) of width 1 holding 1, 2, 3, 4; blocks of 2x2 copy the token's value
        let mut head = TokenDepthHead::init(1, 2, &device);
        head.linear.weight = Param::from_tensor(Tensor::<2>::ones([1, 4], &device));
        head.linear.bias = head.linear.bias.map(|b| Param::from_tensor(b.val().zeros_like()));
        let tokens = Tensor::<3>::from_data(TensorData::new(vec![1.0f32, 2.0, 3.0, 4.0], [1, 4, 1]), &device);
        let map: Vec<f32> = head.forward(tokens).into_data().convert::<f32>().try_to_vec().unwrap();
        #[rustfmt::skip]
        let expected = vec![
            1.0, 1.0, 2.0, 2.0,
            1.0, 1.0, 2.0, 2.0,
            3.0, 3.0, 4.0, 4.0,
            3.0, 3.0, 4.0, 4.0,
        ];
        assert_eq!(map, expected);
    }

    /// Images whose left or right half is bright, with depth +1 under the bright half and -1 elsewhere.
    fn halves(cfg: &PerceptioConfig, side: usize, n: usize) -> DepthBatch {
        let p = cfg.vlm.vision.image_size;
        let (mut pixels, mut depth) = (Vec::new(), Vec::new());
        for i in 0..n {
            let left = i % 2 == 0;
            let bright = |x: usize, size: usize| (x < size / 2) == left;
            for _c in 0..3 {
                pixels.extend((0..p * p).map(|k| if bright(k % p, p) { 2.0 } else { -1.5 }));
            }
            depth.extend((0..side * side).map(|k| if bright(k % side, side) { 1.0 } else { -1.0 }));
        }
        DepthBatch { image_size: p, depth_side: side, pixels, depth }
    }

    #[test]
    fn pretraining_learns_depth_from_the_image_and_checks_batches() {
        let device = Device::flex().autodiff();
        device.seed(1);
        let cfg = PerceptioConfig::tiny(64, 5);
        let part = cfg.init_image(&device);
        let head = TokenDepthHead::init(cfg.vlm.text.hidden_size, 2, &device);
        let model = EncoderWithHead { part, head };
        let p = cfg.vlm.vision.image_size;
        let side = model.depth_side(p);
        assert_eq!(side, token_grid(&model.part, p) * 2);
        let batch = halves(&cfg, side, 4);
        let read = |m: &EncoderWithHead| -> Vec<f32> {
            m.part
                .vision_tower
                .embeddings
                .patch_embeddings
                .projection
                .weight
                .val()
                .into_data()
                .convert::<f32>()
                .try_to_vec()
                .unwrap()
        };
        let patch_before = read(&model);
        // an image-blind map scores 1 here (the per-pixel mean is 0 and every target is +-1)
        let before = depth_mse(&model, &batch).unwrap();
        let pcfg = ImagePretrainConfig::new().with_steps(40).with_batch_size(4).with_lr(3e-3);
        let mut losses = Vec::new();
        let trained =
            pretrain_image_encoder::<String>(model, &pcfg, p, &mut |_| Ok(batch.clone()), &mut |_, l| losses.push(l))
                .unwrap();
        assert_eq!(losses.len(), 40);
        let after = depth_mse(&trained.valid(), &batch).unwrap();
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        assert!(mean(&after) < 0.25 && mean(&after) < 0.5 * mean(&before), "{before:?} -> {after:?}");
        let moved = patch_before.iter().zip(read(&trained)).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(moved > 1e-4, "the InternViT trained too (max change {moved})");

        let wrong = DepthBatch { depth_side: side + 1, ..batch.clone() };
        let err = depth_mse(&trained.valid(), &wrong).unwrap_err();
        assert!(err.to_string().contains("depth maps"), "{err}");
        let bad = ImagePretrainConfig::new().with_lr(0.0);
        assert!(matches!(bad.check(), Err(ImagePretrainError::Config { field: "lr", .. })));
    }
}
