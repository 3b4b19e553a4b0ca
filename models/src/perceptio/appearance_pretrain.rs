//! Pretraining the image encoder part to see objects: each image token the LLM will see says, through two
//! throw-away linear heads, the shape and the colour of the object covering its patch (class 0 for either: no
//! object; a token's shape may be left unasked, [`NOT_SCORED`], so that only each object's centre token is asked
//! it). Cross-entropy of both, object tokens weighted up (they are few); the optimisation loop of
//! [`super::image_pretrain::fit`]. [`appearance_accuracy`] measures a trained encoder on held-out images.
//!
//! Why: trained from scratch inside Perceptio training, the tiny encoder learns colour but not shape. With one
//! object per image and 600 VQA steps the LLM answers colour questions 92% right and shape questions at chance
//! (docs/points.md, section 6); every task that names an object by its shape (referring, VQA, the letters of the
//! point markers) needs tokens that carry it.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Device, Tensor};

use super::image_pretrain::{ImagePretrainConfig, ImagePretrainError, fit, pixels_tensor, token_grid};
use super::model::ImageEncoderPart;
use super::token_classes::{check_token_batch, token_argmax, token_log_probs, token_nll, weighted_mean};

/// The shape class of an object token whose shape is not scored.
pub const NOT_SCORED: i64 = -1;

/// Encoder-normalised images and the object classes of each image token, on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct AppearanceBatch {
    /// Side of the images (the encoder's input size).
    pub image_size: usize,
    /// Image tokens per side.
    pub grid: usize,
    /// `[B, 3, P, P]` row-major.
    pub pixels: Vec<f32>,
    /// `[B, g * g]` row-major shape classes in `0..shape_classes` (0: no object), or [`NOT_SCORED`] for an object
    /// token whose shape is not asked for (with the centre target, every object token but the object's centre).
    pub shapes: Vec<i64>,
    /// `[B, g * g]` row-major colour classes in `0..colour_classes` (0: no object).
    pub colours: Vec<i64>,
}

impl AppearanceBatch {
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.shapes.len() / (self.grid * self.grid).max(1)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The shape classes with an unscored token's [`NOT_SCORED`] read as class 0 (its loss weight is 0).
    fn shape_targets(&self) -> Vec<i64> {
        self.shapes.iter().map(|&c| if c == NOT_SCORED { 0 } else { c }).collect()
    }

    fn check(&self, image_size: usize, grid: usize, classes: (usize, usize)) -> Result<usize, ImagePretrainError> {
        let targets = self.shape_targets();
        let labels = [("shape", &targets[..], classes.0), ("colour", &self.colours[..], classes.1)];
        let b = check_token_batch((self.image_size, self.grid), (image_size, grid), self.pixels.len(), &labels)?;
        let mismatched = |i: usize| {
            let (s, c) = (self.shapes[i], self.colours[i]);
            if s == NOT_SCORED { c == 0 } else { (s == 0) != (c == 0) }
        };
        if let Some(i) = (0..self.shapes.len()).find(|&i| mismatched(i)) {
            return Err(ImagePretrainError::Batch(format!(
                "token {i} has shape class {} and colour class {}: either both name an object or both are 0 (an \
                 unscored shape, {NOT_SCORED}, needs an object's colour)",
                self.shapes[i], self.colours[i]
            )));
        }
        Ok(b)
    }
}

/// The training heads: one linear map per image token to the shape logits and one to the colour logits.
#[derive(Module, Debug)]
pub struct TokenAppearanceHeads {
    pub shape: Linear,
    pub colour: Linear,
}

impl TokenAppearanceHeads {
    /// Heads for image tokens of width `d`, with `shapes` and `colours` classes (each counting class 0).
    pub fn init(d: usize, shapes: usize, colours: usize, device: &Device) -> Self {
        Self { shape: LinearConfig::new(d, shapes).init(device), colour: LinearConfig::new(d, colours).init(device) }
    }

    /// (shape classes, colour classes), class 0 included.
    pub fn classes(&self) -> (usize, usize) {
        (self.shape.weight.dims()[1], self.colour.weight.dims()[1])
    }
}

/// The encoder part and the heads, trained together.
#[derive(Module, Debug)]
pub struct EncoderWithAppearanceHeads {
    pub part: ImageEncoderPart,
    pub heads: TokenAppearanceHeads,
}

impl EncoderWithAppearanceHeads {
    /// Shape and colour log-probabilities (`[B*T, S]`, `[B*T, C]`) of `b` images of side `p`.
    fn log_probs(&self, pixels: Vec<f32>, b: usize, p: usize) -> (Tensor<2>, Tensor<2>) {
        let device = self.heads.shape.weight.device();
        let tokens = self.part.forward(pixels_tensor(pixels, b, p, &device)); // [B, T, d]
        (token_log_probs(&self.heads.shape, tokens.clone()), token_log_probs(&self.heads.colour, tokens))
    }

    fn checked(&self, batch: &AppearanceBatch) -> Result<usize, ImagePretrainError> {
        let p = batch.image_size;
        batch.check(p, token_grid(&self.part, p), self.heads.classes())
    }
}

/// The weighted cross-entropy of the shape classes plus that of the colour classes, a token on an object
/// weighted `object_weight` times one without: `sum_i w_i * -log p_i(s_i) / sum_i w_i + sum_i w_i * -log q_i(c_i)
/// / sum_i w_i`, where the shape sums leave out the tokens whose shape is [`NOT_SCORED`].
pub fn appearance_loss(
    model: &EncoderWithAppearanceHeads,
    batch: AppearanceBatch,
    object_weight: f32,
) -> Result<Tensor<1>, ImagePretrainError> {
    let b = model.checked(&batch)?;
    let weight = |c: i64| if c == 0 { 1.0 } else { object_weight };
    let colour_w: Vec<f32> = batch.colours.iter().map(|&c| weight(c)).collect();
    let shape_w: Vec<f32> = batch.shapes.iter().map(|&c| if c == NOT_SCORED { 0.0 } else { weight(c) }).collect();
    let shapes = batch.shape_targets();
    let (shape_lp, colour_lp) = model.log_probs(batch.pixels, b, batch.image_size); // [N, S], [N, C]
    let shape = weighted_mean(token_nll(shape_lp, shapes), shape_w); // [1]
    Ok(shape + weighted_mean(token_nll(colour_lp, batch.colours), colour_w)) // [1]
}

/// How well trained heads see the objects of a batch (object tokens only: the rest is the ground).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AppearanceAccuracy {
    /// Tokens on an object, and those of them whose shape is scored.
    pub objects: usize,
    pub shape_scored: usize,
    /// Shape-scored object tokens given their shape; object tokens given their colour; shape-scored tokens given
    /// both.
    pub shape_right: usize,
    pub colour_right: usize,
    pub both_right: usize,
    /// Tokens without an object, and those the shape head calls "no object".
    pub ground: usize,
    pub ground_right: usize,
    /// Shape-scored object tokens per true shape class and per predicted one (index = class; 0 is "no object").
    pub true_shapes: Vec<usize>,
    pub predicted_shapes: Vec<usize>,
}

impl AppearanceAccuracy {
    pub fn add(&mut self, o: AppearanceAccuracy) {
        self.objects += o.objects;
        self.shape_scored += o.shape_scored;
        self.shape_right += o.shape_right;
        self.colour_right += o.colour_right;
        self.both_right += o.both_right;
        self.ground += o.ground;
        self.ground_right += o.ground_right;
        for (mine, theirs) in
            [(&mut self.true_shapes, &o.true_shapes), (&mut self.predicted_shapes, &o.predicted_shapes)]
        {
            if mine.len() < theirs.len() {
                mine.resize(theirs.len(), 0);
            }
            for (m, t) in mine.iter_mut().zip(theirs) {
                *m += t;
            }
        }
    }

    /// The share of shape-scored tokens whose shape is the commonest one: what a head that ignores the image
    /// scores.
    pub fn shape_majority_rate(&self) -> f64 {
        Self::rate(self.true_shapes.iter().copied().max().unwrap_or(0), self.shape_scored)
    }

    fn rate(right: usize, of: usize) -> f64 {
        right as f64 / of.max(1) as f64
    }

    /// Fractions of shape-scored tokens given their shape, of object tokens given their colour, and of
    /// shape-scored tokens given both (0 when there are none).
    pub fn shape_rate(&self) -> f64 {
        Self::rate(self.shape_right, self.shape_scored)
    }
    pub fn colour_rate(&self) -> f64 {
        Self::rate(self.colour_right, self.objects)
    }
    pub fn both_rate(&self) -> f64 {
        Self::rate(self.both_right, self.shape_scored)
    }
    /// Fraction of ground tokens the shape head leaves at "no object".
    pub fn ground_rate(&self) -> f64 {
        Self::rate(self.ground_right, self.ground)
    }
}

/// The arg-max classes of every token of `batch` against its labels.
pub fn appearance_accuracy(
    model: &EncoderWithAppearanceHeads,
    batch: &AppearanceBatch,
) -> Result<AppearanceAccuracy, ImagePretrainError> {
    let b = model.checked(batch)?;
    let (shape_lp, colour_lp) = model.log_probs(batch.pixels.clone(), b, batch.image_size);
    let (shapes, colours) = (token_argmax(shape_lp)?, token_argmax(colour_lp)?);
    let classes = model.heads.classes().0;
    let mut acc = AppearanceAccuracy {
        true_shapes: vec![0; classes],
        predicted_shapes: vec![0; classes],
        ..AppearanceAccuracy::default()
    };
    for i in 0..batch.shapes.len() {
        if batch.colours[i] == 0 {
            acc.ground += 1;
            acc.ground_right += usize::from(shapes[i] == 0);
            continue;
        }
        let c = colours[i] == batch.colours[i];
        acc.objects += 1;
        acc.colour_right += usize::from(c);
        if batch.shapes[i] == NOT_SCORED {
            continue;
        }
        let s = shapes[i] == batch.shapes[i];
        acc.shape_scored += 1;
        acc.true_shapes[batch.shapes[i] as usize] += 1;
        acc.predicted_shapes[shapes[i] as usize] += 1;
        acc.shape_right += usize::from(s);
        acc.both_right += usize::from(s && c);
    }
    Ok(acc)
}

/// Trains the InternViT and projector of `model.part` and the heads (on an autodiff device) on batches from
/// `next_batch(batch_size)`; `on_step(step, loss)` after each step.
pub fn pretrain_appearance<E: std::fmt::Display>(
    model: EncoderWithAppearanceHeads,
    cfg: &ImagePretrainConfig,
    object_weight: f32,
    next_batch: &mut dyn FnMut(usize) -> Result<AppearanceBatch, E>,
    on_step: &mut dyn FnMut(usize, f64),
) -> Result<EncoderWithAppearanceHeads, ImagePretrainError> {
    if !(object_weight.is_finite() && object_weight > 0.0) {
        return Err(ImagePretrainError::Config {
            field: "object_weight",
            reason: format!("{object_weight} is not a positive number"),
        });
    }
    let loss = |m: &EncoderWithAppearanceHeads, batch: AppearanceBatch| appearance_loss(m, batch, object_weight);
    fit(model, cfg, next_batch, &loss, on_step)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::perceptio::PerceptioConfig;

    /// Images with one square on a dark background: its colour channel is the colour class, and a square that
    /// fills its cell (class 1) or a small dot in its middle (class 2) is the shape class.
    fn squares(cfg: &PerceptioConfig, grid: usize, n: usize) -> AppearanceBatch {
        let p = cfg.vlm.vision.image_size;
        let cell = p / grid;
        let (mut pixels, mut shapes, mut colours) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..n {
            let (gx, gy, channel, dot) = (i % grid, (i / grid + 1) % grid, i % 3, i % 2 == 1);
            for c in 0..3 {
                pixels.extend((0..p * p).map(|k| {
                    let (x, y) = (k % p, k / p);
                    let (cx, cy) = (x % cell, y % cell);
                    let centre = cx >= cell / 3 && cx < 2 * cell / 3 && cy >= cell / 3 && cy < 2 * cell / 3;
                    let inside = x / cell == gx && y / cell == gy && (!dot || centre);
                    if inside && c == channel { 2.0 } else { -1.0 }
                }));
            }
            let (mut s, mut col) = (vec![0i64; grid * grid], vec![0i64; grid * grid]);
            s[gy * grid + gx] = if dot { 2 } else { 1 };
            col[gy * grid + gx] = channel as i64 + 1;
            shapes.extend(s);
            colours.extend(col);
        }
        AppearanceBatch { image_size: p, grid, pixels, shapes, colours }
    }

    /// The tiny preset's encoder with heads of 3 shape and 4 colour classes, seeded, and `n` squares on its grid.
    fn model_and_squares(device: &Device, seed: u64, n: usize) -> (EncoderWithAppearanceHeads, AppearanceBatch) {
        device.seed(seed);
        let cfg = PerceptioConfig::tiny(64, 5);
        let part = cfg.init_image(device);
        let grid = token_grid(&part, cfg.vlm.vision.image_size);
        let heads = TokenAppearanceHeads::init(cfg.vlm.text.hidden_size, 3, 4, device);
        (EncoderWithAppearanceHeads { part, heads }, squares(&cfg, grid, n))
    }

    #[test]
    fn pretraining_learns_shapes_and_colours_and_checks_batches() {
        let (model, batch) = model_and_squares(&Device::flex().autodiff(), 5, 6);
        let grid = batch.grid;
        let before = appearance_accuracy(&model, &batch).unwrap();
        assert_eq!((before.objects, before.ground), (6, 6 * (grid * grid - 1)));
        let pcfg = ImagePretrainConfig::new().with_steps(80).with_batch_size(6).with_lr(3e-3);
        let mut losses = Vec::new();
        let trained =
            pretrain_appearance::<String>(model, &pcfg, 8.0, &mut |_| Ok(batch.clone()), &mut |_, l| losses.push(l))
                .unwrap();
        assert_eq!(losses.len(), 80);
        assert!(losses[79] < 0.3 * losses[0], "loss {} -> {}", losses[0], losses[79]);
        let after = appearance_accuracy(&trained.valid(), &batch).unwrap();
        assert!(after.shape_rate() >= 5.0 / 6.0 && after.colour_rate() >= 5.0 / 6.0, "{before:?} -> {after:?}");
        assert!(after.both_right <= after.shape_right.min(after.colour_right));
        assert!(after.ground_rate() > 0.95, "{after:?}");
        // three full squares and three dots: the commonest shape is half the object tokens
        assert_eq!(after.true_shapes, vec![0, 3, 3]);
        assert_eq!(after.predicted_shapes.iter().sum::<usize>(), 6);
        assert!((after.shape_majority_rate() - 0.5).abs() < 1e-12);

        let trained = trained.valid();
        let wrong = AppearanceBatch { grid: grid + 1, ..batch.clone() };
        assert!(appearance_accuracy(&trained, &wrong).unwrap_err().to_string().contains("token classes"));
        let mut bad = batch.clone();
        bad.colours[0] = 4;
        bad.shapes[0] = 1;
        let err = appearance_accuracy(&trained, &bad).unwrap_err().to_string();
        assert!(err.contains("colour class 4 is not in 0..4"), "{err}");
        let mut half = batch.clone();
        let i = half.shapes.iter().position(|&s| s != 0).unwrap();
        half.colours[i] = 0;
        let err = appearance_accuracy(&trained, &half).unwrap_err().to_string();
        assert!(err.contains(&format!("token {i} has shape class")), "{err}");
    }

    #[test]
    fn unscored_shapes_leave_the_shape_loss_and_the_shape_counts() {
        let (model, batch) = model_and_squares(&Device::flex(), 3, 4);
        let p = batch.image_size;
        let all = appearance_accuracy(&model, &batch).unwrap();
        assert_eq!((all.objects, all.shape_scored), (4, 4));
        // the first two objects' shapes not asked: colour still counts all four, shape the last two
        let mut half = batch.clone();
        let objects: Vec<usize> = (0..half.shapes.len()).filter(|&i| half.shapes[i] != 0).collect();
        for &i in &objects[..2] {
            half.shapes[i] = NOT_SCORED;
        }
        let acc = appearance_accuracy(&model, &half).unwrap();
        assert_eq!((acc.objects, acc.shape_scored, acc.colour_right), (4, 2, all.colour_right));
        assert_eq!(acc.true_shapes.iter().sum::<usize>(), 2);
        assert_eq!(acc.predicted_shapes.iter().sum::<usize>(), 2);
        // the loss without those tokens' shape terms: the colour term is unchanged, the shape term is the weighted
        // mean over the rest
        let loss = |b: AppearanceBatch| appearance_loss(&model, b, 4.0).unwrap().into_scalar::<f32>();
        let (full, partial) = (loss(batch.clone()), loss(half.clone()));
        assert!(full.is_finite() && partial.is_finite() && (full - partial).abs() > 1e-6, "{full} {partial}");
        let (shape_lp, colour_lp) = model.log_probs(batch.pixels.clone(), 4, p);
        let nll =
            |lp: Tensor<2>, c: Vec<i64>| -> Vec<f32> { token_nll(lp, c).into_data().try_to_vec::<f32>().unwrap() };
        let (s_nll, c_nll) = (nll(shape_lp, batch.shapes.clone()), nll(colour_lp, batch.colours.clone()));
        let mean = |nll: &[f32], skip: &[usize]| {
            let (mut num, mut den) = (0.0f32, 0.0f32);
            for (i, v) in nll.iter().enumerate().filter(|(i, _)| !skip.contains(i)) {
                let w = if batch.colours[i] == 0 { 1.0 } else { 4.0 };
                num += w * v;
                den += w;
            }
            num / den
        };
        let expected = mean(&s_nll, &objects[..2]) + mean(&c_nll, &[]);
        assert!((partial - expected).abs() < 1e-4, "{partial} vs {expected}");
        // an unscored shape must sit on an object
        let mut bad = half.clone();
        let ground = bad.shapes.iter().position(|&c| c == 0).unwrap();
        bad.shapes[ground] = NOT_SCORED;
        let err = appearance_accuracy(&model, &bad).unwrap_err().to_string();
        assert!(err.contains(&format!("token {ground} has shape class -1")), "{err}");
    }

    #[test]
    fn a_weight_that_is_not_positive_is_refused() {
        let device = Device::flex().autodiff();
        let cfg = PerceptioConfig::tiny(64, 5);
        let heads = TokenAppearanceHeads::init(cfg.vlm.text.hidden_size, 3, 4, &device);
        let model = EncoderWithAppearanceHeads { part: cfg.init_image(&device), heads };
        let pcfg = ImagePretrainConfig::new().with_steps(1);
        let mut never = |_| -> Result<AppearanceBatch, String> { Err("not reached".into()) };
        let err = pretrain_appearance(model, &pcfg, 0.0, &mut never, &mut |_, _| {}).unwrap_err();
        assert!(matches!(err, ImagePretrainError::Config { field: "object_weight", .. }), "{err}");
    }
}
