//! Pretraining the image encoder part to read HardBLINK point markers: each image token the LLM will see says,
//! through a throw-away linear head, which marked point lies in its patch (class 0: none; class k: the k-th
//! letter, A = 1). Weighted cross-entropy (marked tokens are few), the optimisation loop of
//! [`super::image_pretrain::fit`]; [`marker_accuracy`] measures a trained encoder on held-out images.
//!
//! Why: to answer a point question the LLM must find the token of "point B" before it can compare depths there.
//! Trained from scratch inside Perceptio training alone, the tiny model never learns to read the 5x7-pixel
//! letters (it memorises its training questions or stays at chance); tokens that already name their marker give
//! it something to look up.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Device, Tensor};

use super::image_pretrain::{ImagePretrainConfig, ImagePretrainError, fit, pixels_tensor, token_grid};
use super::model::ImageEncoderPart;
use super::token_classes::{check_token_batch, token_argmax, token_log_probs, token_nll, weighted_mean};

/// Classes of the head: no marker, then the letters A to E.
pub const MARKER_CLASSES: usize = 6;

/// Encoder-normalised images and the marker class of each image token, on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct MarkerBatch {
    /// Side of the images (the encoder's input size).
    pub image_size: usize,
    /// Image tokens per side.
    pub grid: usize,
    /// `[B, 3, P, P]` row-major.
    pub pixels: Vec<f32>,
    /// `[B, g * g]` row-major token classes in `0..MARKER_CLASSES`.
    pub classes: Vec<i64>,
}

impl MarkerBatch {
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.classes.len() / (self.grid * self.grid).max(1)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn check(&self, image_size: usize, grid: usize) -> Result<usize, ImagePretrainError> {
        let labels = [("token", &self.classes[..], MARKER_CLASSES)];
        check_token_batch((self.image_size, self.grid), (image_size, grid), self.pixels.len(), &labels)
    }
}

/// The class of a point labelled `label`: 1 for "A" up to 5 for "E".
pub fn letter_class(label: &str) -> Result<i64, String> {
    match label.as_bytes() {
        [c @ b'A'..=b'E'] => Ok(i64::from(c - b'A') + 1),
        _ => Err(format!("point label `{label}` is not one of the letters A to E")),
    }
}

/// The token classes of one image: the `grid x grid` tokens, each 0 or the class of the marked point whose pixel
/// centre lies in its patch (`points` as (x, y) pixels of a `width x height` image with their classes). Two
/// points in one patch: the first keeps it.
pub fn token_classes(points: &[(u32, u32, i64)], width: u32, height: u32, grid: usize) -> Result<Vec<i64>, String> {
    let g = grid as u64;
    let mut classes = vec![0i64; grid * grid];
    for &(x, y, class) in points {
        if x >= width || y >= height {
            return Err(format!("point at ({x}, {y}) is outside the {width}x{height} image"));
        }
        if !(1..MARKER_CLASSES as i64).contains(&class) {
            return Err(format!("point at ({x}, {y}) has class {class}, not a letter in 1..{MARKER_CLASSES}"));
        }
        // the token whose patch holds the pixel centre
        let col = (2 * x as u64 + 1) * g / (2 * width as u64);
        let row = (2 * y as u64 + 1) * g / (2 * height as u64);
        let slot = &mut classes[(row * g + col) as usize];
        if *slot == 0 {
            *slot = class;
        }
    }
    Ok(classes)
}

/// The training head: one linear map per image token from its features to the marker-class logits.
#[derive(Module, Debug)]
pub struct TokenMarkerHead {
    pub linear: Linear,
}

impl TokenMarkerHead {
    /// A head for image tokens of width `d`.
    pub fn init(d: usize, device: &Device) -> Self {
        Self { linear: LinearConfig::new(d, MARKER_CLASSES).init(device) }
    }
}

/// The encoder part and the marker head, trained together.
#[derive(Module, Debug)]
pub struct EncoderWithMarkerHead {
    pub part: ImageEncoderPart,
    pub head: TokenMarkerHead,
}

impl EncoderWithMarkerHead {
    /// Marker-class log-probabilities `[B*T, C]` of `b` images of side `p` (`[B, 3, P, P]` host pixels); with
    /// `probe`, no gradient flows into the encoder.
    fn log_probs(&self, pixels: Vec<f32>, b: usize, p: usize, probe: bool) -> Tensor<2> {
        let device = self.head.linear.weight.device();
        let tokens = self.part.forward(pixels_tensor(pixels, b, p, &device)); // [B, T, d]
        let tokens = if probe { tokens.detach() } else { tokens };
        token_log_probs(&self.head.linear, tokens) // [B*T, C]
    }

    fn checked(&self, batch: &MarkerBatch) -> Result<usize, ImagePretrainError> {
        let p = batch.image_size;
        batch.check(p, token_grid(&self.part, p))
    }
}

/// Cross-entropy of the token classes, marked tokens weighted `marker_weight` times an unmarked one:
/// `sum_i w_i * -log p_i(c_i) / sum_i w_i`. With `probe`, the loss reaches the head only.
pub fn marker_loss(
    model: &EncoderWithMarkerHead,
    batch: MarkerBatch,
    marker_weight: f32,
    probe: bool,
) -> Result<Tensor<1>, ImagePretrainError> {
    let b = model.checked(&batch)?;
    let w: Vec<f32> = batch.classes.iter().map(|&c| if c == 0 { 1.0 } else { marker_weight }).collect();
    let logp = model.log_probs(batch.pixels, b, batch.image_size, probe); // [N, C]
    Ok(weighted_mean(token_nll(logp, batch.classes), w)) // [1]
}

/// How well a trained head reads the markers of a batch.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MarkerAccuracy {
    /// Tokens with a marker, and those given their letter.
    pub marked: usize,
    pub marked_right: usize,
    /// Marked tokens read as "none".
    pub marked_missed: usize,
    /// Tokens without one, and those given "none".
    pub unmarked: usize,
    pub unmarked_right: usize,
}

impl MarkerAccuracy {
    pub fn add(&mut self, other: MarkerAccuracy) {
        self.marked += other.marked;
        self.marked_right += other.marked_right;
        self.marked_missed += other.marked_missed;
        self.unmarked += other.unmarked;
        self.unmarked_right += other.unmarked_right;
    }

    /// Counts one token whose true class is `want` (0: no marker) and whose read class is `got`.
    pub fn record(&mut self, want: i64, got: i64) {
        let right = usize::from(want == got);
        if want == 0 {
            self.unmarked += 1;
            self.unmarked_right += right;
        } else {
            self.marked += 1;
            self.marked_right += right;
            self.marked_missed += usize::from(got == 0);
        }
    }

    /// Fraction of marked tokens read right (0 when there are none).
    pub fn marked_rate(&self) -> f64 {
        self.marked_right as f64 / self.marked.max(1) as f64
    }

    /// Fraction of unmarked tokens read as unmarked (0 when there are none).
    pub fn unmarked_rate(&self) -> f64 {
        self.unmarked_right as f64 / self.unmarked.max(1) as f64
    }
}

/// The arg-max class of every token of `batch` against its label.
pub fn marker_accuracy(
    model: &EncoderWithMarkerHead,
    batch: &MarkerBatch,
) -> Result<MarkerAccuracy, ImagePretrainError> {
    let b = model.checked(batch)?;
    let best = token_argmax(model.log_probs(batch.pixels.clone(), b, batch.image_size, true))?;
    let mut acc = MarkerAccuracy::default();
    for (&want, &got) in batch.classes.iter().zip(&best) {
        acc.record(want, got);
    }
    Ok(acc)
}

/// Trains the InternViT and projector of `model.part` and the head (on an autodiff device) to read the markers
/// of batches from `next_batch(batch_size)`; `on_step(step, loss)` after each step. With `probe`, only the head
/// trains (a linear probe of what the encoder's tokens already say about the markers).
pub fn pretrain_marker_reading<E: std::fmt::Display>(
    model: EncoderWithMarkerHead,
    cfg: &ImagePretrainConfig,
    marker_weight: f32,
    probe: bool,
    next_batch: &mut dyn FnMut(usize) -> Result<MarkerBatch, E>,
    on_step: &mut dyn FnMut(usize, f64),
) -> Result<EncoderWithMarkerHead, ImagePretrainError> {
    if !(marker_weight.is_finite() && marker_weight > 0.0) {
        return Err(ImagePretrainError::Config {
            field: "marker_weight",
            reason: format!("{marker_weight} is not a positive number"),
        });
    }
    let loss = |m: &EncoderWithMarkerHead, batch: MarkerBatch| marker_loss(m, batch, marker_weight, probe);
    fit(model, cfg, next_batch, &loss, on_step)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::perceptio::PerceptioConfig;

    #[test]
    fn each_point_marks_the_token_over_its_pixel() {
        // a 100x50 image on a 4x4 grid: patches 25 px wide and 12.5 px high
        let classes = token_classes(&[(0, 0, 1), (99, 49, 2), (30, 13, 3)], 100, 50, 4).unwrap();
        let mut want = vec![0i64; 16];
        want[0] = 1; // A at the top-left
        want[15] = 2; // B at the bottom-right
        want[4 + 1] = 3; // C: column 30/25 = 1, row 13.5/12.5 = 1
        assert_eq!(classes, want);
        // a second point in a taken patch leaves the first one's letter
        assert_eq!(token_classes(&[(1, 1, 4), (2, 2, 5)], 100, 50, 4).unwrap()[0], 4);
        let err = token_classes(&[(100, 0, 1)], 100, 50, 4).unwrap_err();
        assert_eq!(err, "point at (100, 0) is outside the 100x50 image");
        assert!(token_classes(&[(0, 0, 6)], 100, 50, 4).unwrap_err().contains("class 6"));
        assert_eq!((letter_class("A"), letter_class("E")), (Ok(1), Ok(5)));
        assert!(letter_class("F").unwrap_err().contains("`F`"));
        assert!(letter_class("AB").is_err());
    }

    /// Images with one bright square on a dark background; the token under the square is marked with a letter
    /// that depends on the square's colour channel.
    fn squares(cfg: &PerceptioConfig, grid: usize, n: usize) -> MarkerBatch {
        let p = cfg.vlm.vision.image_size;
        let cell = p / grid;
        let (mut pixels, mut classes) = (Vec::new(), Vec::new());
        for i in 0..n {
            let (gx, gy, channel) = (i % grid, (i / grid + 1) % grid, i % 3);
            for c in 0..3 {
                pixels.extend((0..p * p).map(|k| {
                    let (x, y) = (k % p, k / p);
                    let inside = x / cell == gx && y / cell == gy;
                    if inside && c == channel { 2.0 } else { -1.0 }
                }));
            }
            let mut cls = vec![0i64; grid * grid];
            cls[gy * grid + gx] = channel as i64 + 1;
            classes.extend(cls);
        }
        MarkerBatch { image_size: p, grid, pixels, classes }
    }

    #[test]
    fn pretraining_learns_to_read_the_marks_and_checks_batches() {
        let device = Device::flex().autodiff();
        device.seed(3);
        let cfg = PerceptioConfig::tiny(64, 5);
        let part = cfg.init_image(&device);
        let p = cfg.vlm.vision.image_size;
        let grid = token_grid(&part, p);
        let model = EncoderWithMarkerHead { part, head: TokenMarkerHead::init(cfg.vlm.text.hidden_size, &device) };
        let batch = squares(&cfg, grid, 6);
        let before = marker_accuracy(&model, &batch).unwrap();
        assert_eq!((before.marked, before.unmarked), (6, 6 * (grid * grid - 1)));
        let pcfg = ImagePretrainConfig::new().with_steps(60).with_batch_size(6).with_lr(3e-3);
        let mut losses = Vec::new();
        let patch = |m: &EncoderWithMarkerHead| -> Vec<f32> {
            let w = m.part.vision_tower.embeddings.patch_embeddings.projection.weight.val();
            w.into_data().convert::<f32>().try_to_vec().unwrap()
        };
        // a probe trains the head alone: the encoder's weights stay as they were
        let probed = pretrain_marker_reading::<String>(
            model.clone(),
            &pcfg.clone().with_steps(3),
            8.0,
            true,
            &mut |_| Ok(batch.clone()),
            &mut |_, _| {},
        )
        .unwrap();
        assert_eq!(patch(&probed), patch(&model));
        assert_ne!(probed.head.linear.weight.val().into_data(), model.head.linear.weight.val().into_data());
        let trained = pretrain_marker_reading::<String>(
            model.clone(),
            &pcfg,
            8.0,
            false,
            &mut |_| Ok(batch.clone()),
            &mut |_, l| losses.push(l),
        )
        .unwrap();
        assert_ne!(patch(&trained), patch(&model));
        assert_eq!(losses.len(), 60);
        assert!(losses[59] < 0.3 * losses[0], "loss {} -> {}", losses[0], losses[59]);
        let after = marker_accuracy(&trained.valid(), &batch).unwrap();
        assert!(after.marked_rate() >= 5.0 / 6.0 && after.unmarked_rate() > 0.95, "{before:?} -> {after:?}");

        let wrong = MarkerBatch { grid: grid + 1, ..batch.clone() };
        let err = marker_accuracy(&trained.valid(), &wrong).unwrap_err();
        assert!(err.to_string().contains("token classes"), "{err}");
        let mut bad_class = batch.clone();
        bad_class.classes[0] = MARKER_CLASSES as i64;
        assert!(marker_accuracy(&trained.valid(), &bad_class).unwrap_err().to_string().contains("token class 6"));
        let plain = EncoderWithMarkerHead {
            part: cfg.init_image(&device),
            head: TokenMarkerHead::init(cfg.vlm.text.hidden_size, &device),
        };
        let err =
            pretrain_marker_reading::<String>(plain, &pcfg, 0.0, false, &mut |_| Ok(batch.clone()), &mut |_, _| {})
                .unwrap_err();
        assert!(matches!(err, ImagePretrainError::Config { field: "marker_weight", .. }), "{err}");
    }
}
