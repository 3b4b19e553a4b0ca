//! Pretraining the image encoder part so that its tokens say what they show in the LLM's own words: each image
//! token is scored against the LLM's input embeddings of the letters A to E (and a learned "no letter" score) and
//! of the point chain's depth levels, and trained to pick the letter of the marked point in its patch (or none)
//! and the depth level of its cell. The heads are the embedding rows themselves, fixed, with one learned scale
//! each: a marked point's token comes to point along its letter's and its level's embeddings, the way a told
//! "B 17" does in text. A model that has learned recall in text (`recall_pretrain`) then reads the level at a
//! letter from image tokens at once in the PyTorch probe (docs/points.md, section 9); `marker_pretrain`'s
//! throw-away head teaches the letters in a direction of its own.

use burn::module::{Module, Param};
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};

use super::image_pretrain::{ImagePretrainConfig, ImagePretrainError, fit, pixels_tensor, token_grid};
use super::marker_pretrain::{MARKER_CLASSES, MarkerAccuracy};
use super::model::ImageEncoderPart;
use super::sequence::POINT_LEVELS;
use super::token_classes::{check_token_batch, token_argmax, token_nll, weighted_mean};

/// Encoder-normalised images with each token's letter class and depth level, on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct TiedBatch {
    /// Side of the images (the encoder's input size).
    pub image_size: usize,
    /// Image tokens per side.
    pub grid: usize,
    /// `[B, 3, P, P]` row-major.
    pub pixels: Vec<f32>,
    /// `[B, g * g]`: 0 for no marked point in the token's patch, k for the k-th letter (A = 1).
    pub letters: Vec<i64>,
    /// `[B, g * g]`: the depth level `0..POINT_LEVELS` of the token's cell (at the marked point, the point's).
    pub levels: Vec<i64>,
}

impl TiedBatch {
    fn check(&self, image_size: usize, grid: usize) -> Result<usize, ImagePretrainError> {
        let labels =
            [("letter", &self.letters[..], MARKER_CLASSES), ("level", &self.levels[..], POINT_LEVELS as usize)];
        check_token_batch((self.image_size, self.grid), (image_size, grid), self.pixels.len(), &labels)
    }
}

/// The LLM's input embeddings the tokens are scored against, fixed, on the host: `[5, d]` letters A to E and
/// `[POINT_LEVELS, d]` levels, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct VocabularyRows {
    pub d: usize,
    pub letters: Vec<f32>,
    pub levels: Vec<f32>,
}

impl VocabularyRows {
    /// The rows of `embedding` `[V, d]` at the letter ids and the level ids.
    pub fn new(embedding: Tensor<2>, letter_ids: &[u32], level_ids: &[u32]) -> Result<Self, ImagePretrainError> {
        let [v, d] = embedding.dims();
        if letter_ids.len() != MARKER_CLASSES - 1 || level_ids.len() != POINT_LEVELS as usize {
            return Err(ImagePretrainError::Config {
                field: "vocabulary rows",
                reason: format!(
                    "{} letters and {} levels, not {} and {POINT_LEVELS}",
                    letter_ids.len(),
                    level_ids.len(),
                    MARKER_CLASSES - 1
                ),
            });
        }
        if let Some(bad) = letter_ids.iter().chain(level_ids).find(|&&id| id as usize >= v) {
            return Err(ImagePretrainError::Config {
                field: "vocabulary rows",
                reason: format!("token id {bad} is outside the {v}-row embedding"),
            });
        }
        let table: Vec<f32> = embedding
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .map_err(|e| ImagePretrainError::Batch(format!("reading the embedding: {e:?}")))?;
        let rows =
            |ids: &[u32]| ids.iter().flat_map(|&i| table[i as usize * d..(i as usize + 1) * d].to_vec()).collect();
        Ok(Self { d, letters: rows(letter_ids), levels: rows(level_ids) })
    }

    /// The rows as `[5, d]` and `[L, d]` tensors on `device`.
    fn tensors(&self, device: &Device) -> (Tensor<2>, Tensor<2>) {
        let t = |v: &[f32]| Tensor::<2>::from_data(TensorData::new(v.to_vec(), [v.len() / self.d, self.d]), device);
        (t(&self.letters), t(&self.levels))
    }
}

/// The encoder part with the two learned scales and the "no letter" score of the tied heads.
#[derive(Module, Debug)]
pub struct EncoderWithTiedHeads {
    pub part: ImageEncoderPart,
    /// `[2]`: the letter scores' and the level scores' scale.
    pub scale: Param<Tensor<1>>,
    /// `[1]`: the score of "no letter".
    pub none: Param<Tensor<1>>,
}

impl EncoderWithTiedHeads {
    /// The part with scales of 1 and a "no letter" score of 0.
    pub fn new(part: ImageEncoderPart, device: &Device) -> Self {
        Self {
            part,
            scale: Param::from_tensor(Tensor::<1>::ones([2], device)),
            none: Param::from_tensor(Tensor::<1>::zeros([1], device)),
        }
    }

    /// Letter log-probabilities `[B*T, 6]` (none, A..E) and level log-probabilities `[B*T, L]` of `b` images.
    fn log_probs(&self, rows: &VocabularyRows, pixels: Vec<f32>, b: usize, p: usize) -> (Tensor<2>, Tensor<2>) {
        let device = self.none.device();
        let tokens = self.part.forward(pixels_tensor(pixels, b, p, &device)); // [B, T, d]
        let [b, t, d] = tokens.dims();
        let flat = tokens.reshape([b * t, d]); // [N, d]
        let scale = self.scale.val(); // [2]
        let s_letter = scale.clone().slice([0..1]).reshape([1, 1]); // [1, 1]
        let s_level = scale.slice([1..2]).reshape([1, 1]); // [1, 1]
        let (letter_rows, level_rows) = rows.tensors(&device); // [5, d], [L, d]
        let letters = flat.clone().matmul(letter_rows.transpose()) * s_letter; // [N, 5]
        let none = self.none.val().reshape([1, 1]).expand([b * t, 1]); // [N, 1]
        let letters = log_softmax(Tensor::cat(vec![none, letters], 1), 1); // [N, 6]
        let levels = log_softmax(flat.matmul(level_rows.transpose()) * s_level, 1); // [N, L]
        (letters, levels)
    }

    fn checked(&self, batch: &TiedBatch) -> Result<usize, ImagePretrainError> {
        let p = batch.image_size;
        batch.check(p, token_grid(&self.part, p))
    }
}

/// What the tied stage asks of each token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TiedTarget {
    /// Score highest against its letter's embedding (or "no letter") and its level's: cross-entropy through the
    /// fixed rows, each with a learned scale (the token's other directions stay free).
    #[default]
    Scores,
    /// Be the sum of its level's embedding and, at a marked token, its letter's: a squared error relative to the
    /// targets' energy (the token becomes what a told "B 17" is in text, and nothing else).
    Embeddings,
}

/// Cross-entropy of the letters (marked tokens weighted `marker_weight` times an unmarked one) plus that of the
/// levels, at every token (`TiedTarget::Scores`).
pub fn tied_loss(
    model: &EncoderWithTiedHeads,
    rows: &VocabularyRows,
    batch: TiedBatch,
    marker_weight: f32,
) -> Result<Tensor<1>, ImagePretrainError> {
    let b = model.checked(&batch)?;
    let w: Vec<f32> = batch.letters.iter().map(|&c| if c == 0 { 1.0 } else { marker_weight }).collect();
    let ones = vec![1.0; batch.levels.len()];
    let (letters, levels) = model.log_probs(rows, batch.pixels, b, batch.image_size); // [N, 6], [N, L]
    let letter_loss = weighted_mean(token_nll(letters, batch.letters), w); // [1]
    let level_loss = weighted_mean(token_nll(levels, batch.levels), ones); // [1]
    Ok(letter_loss + level_loss) // [1]
}

/// `sum ||t - target||^2 / sum ||target||^2` over every token, the target being the token's level row plus, at a
/// marked token, its letter row (`TiedTarget::Embeddings`).
pub fn tied_embedding_loss(
    model: &EncoderWithTiedHeads,
    rows: &VocabularyRows,
    batch: TiedBatch,
) -> Result<Tensor<1>, ImagePretrainError> {
    let b = model.checked(&batch)?;
    let n = batch.levels.len();
    let device = model.none.device();
    let (letter_rows, level_rows) = rows.tensors(&device); // [5, d], [L, d]
    let letter_rows = Tensor::cat(vec![letter_rows.zeros_like().slice([0..1]), letter_rows], 0); // [6, d]: none = 0
    let index = |v: Vec<i64>| Tensor::<1, Int>::from_data(TensorData::new(v, [n]), &device); // [N]
    let target = level_rows.select(0, index(batch.levels)) + letter_rows.select(0, index(batch.letters)); // [N, d]
    let energy = target.clone().powi_scalar(2).sum().clamp_min(f32::MIN_POSITIVE); // [1]
    let tokens = model.part.forward(pixels_tensor(batch.pixels, b, batch.image_size, &device)); // [B, T, d]
    let tokens = tokens.reshape([n, rows.d]); // [N, d]
    Ok((tokens - target).powi_scalar(2).sum() / energy) // [1]
}

/// How well the tied heads read a batch.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TiedAccuracy {
    /// The letters, counted as `pretrain-markers` counts them.
    pub letters: MarkerAccuracy,
    /// Levels at the marked points' tokens: exactly right, and within one.
    pub marked_levels_exact: usize,
    pub marked_levels_near: usize,
    /// Levels at every token, exactly right.
    pub tokens: usize,
    pub levels_exact: usize,
}

impl TiedAccuracy {
    pub fn add(&mut self, o: TiedAccuracy) {
        self.letters.add(o.letters);
        self.marked_levels_exact += o.marked_levels_exact;
        self.marked_levels_near += o.marked_levels_near;
        self.tokens += o.tokens;
        self.levels_exact += o.levels_exact;
    }
}

/// The tied heads' arg-max letter and level of every token of `batch`, against its labels.
pub fn tied_accuracy(
    model: &EncoderWithTiedHeads,
    rows: &VocabularyRows,
    batch: &TiedBatch,
) -> Result<TiedAccuracy, ImagePretrainError> {
    let b = model.checked(batch)?;
    let (letters, levels) = model.log_probs(rows, batch.pixels.clone(), b, batch.image_size);
    let (letters, levels) = (token_argmax(letters)?, token_argmax(levels)?);
    let mut acc = TiedAccuracy { tokens: batch.levels.len(), ..TiedAccuracy::default() };
    for (i, (&truth, &guess)) in batch.letters.iter().zip(&letters).enumerate() {
        let (level, level_guess) = (batch.levels[i], levels[i]);
        acc.levels_exact += usize::from(level == level_guess);
        acc.letters.record(truth, guess);
        if truth != 0 {
            acc.marked_levels_exact += usize::from(level == level_guess);
            acc.marked_levels_near += usize::from((level - level_guess).abs() <= 1);
        }
    }
    Ok(acc)
}

/// Trains the InternViT and projector of `model.part` and the heads' scales (on an autodiff device) towards
/// `target` on batches from `next_batch(batch_size)`; `on_step(step, loss)` after each step. `rows` stay fixed.
pub fn pretrain_tied_markers<E: std::fmt::Display>(
    model: EncoderWithTiedHeads,
    rows: &VocabularyRows,
    cfg: &ImagePretrainConfig,
    target: TiedTarget,
    marker_weight: f32,
    next_batch: &mut dyn FnMut(usize) -> Result<TiedBatch, E>,
    on_step: &mut dyn FnMut(usize, f64),
) -> Result<EncoderWithTiedHeads, ImagePretrainError> {
    if !(marker_weight.is_finite() && marker_weight > 0.0) {
        return Err(ImagePretrainError::Config {
            field: "marker_weight",
            reason: format!("{marker_weight} is not a positive number"),
        });
    }
    let loss = |m: &EncoderWithTiedHeads, batch: TiedBatch| match target {
        TiedTarget::Scores => tied_loss(m, rows, batch, marker_weight),
        TiedTarget::Embeddings => tied_embedding_loss(m, rows, batch),
    };
    fit(model, cfg, next_batch, &loss, on_step)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::perceptio::PerceptioConfig;

    /// `n` images, each with one bright square at a random token (marked "B") on a background of tokens whose
    /// level is 3 in the left half and 15 in the right half, darker on the left.
    fn squares(cfg: &PerceptioConfig, grid: usize, n: usize, seed: u64) -> TiedBatch {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let p = cfg.vlm.vision.image_size;
        let patch = p / grid;
        let (mut pixels, mut letters, mut levels) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..n {
            let at = rng.random_range(0..grid * grid);
            let (ar, ac) = (at / grid, at % grid);
            for _c in 0..3 {
                pixels.extend((0..p * p).map(|k| {
                    let (y, x) = (k / p, k % p);
                    if y / patch == ar && x / patch == ac {
                        2.0
                    } else if x < p / 2 {
                        -1.5
                    } else {
                        0.0
                    }
                }));
            }
            for k in 0..grid * grid {
                letters.push(if k == at { 2 } else { 0 });
                levels.push(if k % grid < grid / 2 { 3 } else { 15 });
            }
        }
        TiedBatch { image_size: p, grid, pixels, letters, levels }
    }

    #[test]
    fn the_rows_are_the_embedding_rows_and_ids_are_checked() {
        let device = Device::flex();
        let v = 30;
        let data: Vec<f32> = (0..v * 2).map(|k| k as f32).collect();
        let emb = Tensor::<2>::from_data(TensorData::new(data, [v, 2]), &device);
        let letters = [1, 2, 3, 4, 5];
        let levels: Vec<u32> = (10..30).collect();
        let rows = VocabularyRows::new(emb.clone(), &letters, &levels).unwrap();
        assert_eq!(rows.d, 2);
        assert_eq!(&rows.letters[..4], &[2.0, 3.0, 4.0, 5.0]);
        assert_eq!(&rows.levels[..2], &[20.0, 21.0]);
        assert_eq!(rows.levels.len(), 40);
        let bad: Vec<u32> = (11..31).collect();
        let err = VocabularyRows::new(emb.clone(), &letters, &bad).unwrap_err().to_string();
        assert!(err.contains("token id 30 is outside the 30-row embedding"), "{err}");
        let err = VocabularyRows::new(emb, &letters[..4], &levels).unwrap_err().to_string();
        assert!(err.contains("4 letters and 20 levels"), "{err}");
    }

    #[test]
    fn the_embedding_target_is_the_level_row_plus_the_marked_letter_row() {
        let device = Device::flex();
        let mut cfg = PerceptioConfig::tiny(64, 3);
        cfg.align_image_with_depth_grid();
        device.seed(2);
        let part = cfg.init_image(&device);
        let grid = token_grid(&part, cfg.vlm.vision.image_size);
        let d = cfg.vlm.text.hidden_size;
        let emb = Tensor::<2>::random([40, d], burn::tensor::Distribution::Normal(0.0, 0.5), &device);
        let rows = VocabularyRows::new(emb, &[1, 2, 3, 4, 5], &(20..40).collect::<Vec<u32>>()).unwrap();
        let model = EncoderWithTiedHeads::new(part, &device);
        let batch = squares(&cfg, grid, 2, 7);
        let loss = tied_embedding_loss(&model, &rows, batch.clone()).unwrap().into_scalar::<f32>();
        // the same on the host
        let b = batch.letters.len() / (grid * grid);
        let tokens: Vec<f32> = model
            .part
            .forward(pixels_tensor(batch.pixels.clone(), b, batch.image_size, &device))
            .into_data()
            .convert::<f32>()
            .try_to_vec()
            .unwrap();
        let (mut err, mut energy) = (0f64, 0f64);
        for (i, (&letter, &level)) in batch.letters.iter().zip(&batch.levels).enumerate() {
            for k in 0..d {
                let mut t = rows.levels[level as usize * d + k];
                if letter > 0 {
                    t += rows.letters[(letter as usize - 1) * d + k];
                }
                err += f64::from(tokens[i * d + k] - t).powi(2);
                energy += f64::from(t).powi(2);
            }
        }
        let want = err / energy;
        assert!((f64::from(loss) - want).abs() < 1e-4 * want, "{loss} against {want}");
    }

    #[test]
    fn pretraining_points_the_tokens_along_the_fixed_rows() {
        let device = Device::flex().autodiff();
        let mut cfg = PerceptioConfig::tiny(64, 3);
        cfg.align_image_with_depth_grid();
        device.seed(1);
        let part = cfg.init_image(&device);
        let p = cfg.vlm.vision.image_size;
        let grid = token_grid(&part, p);
        let d = cfg.vlm.text.hidden_size;
        // fixed random rows, as an LLM's embedding would be
        let emb = Tensor::<2>::random([40, d], burn::tensor::Distribution::Normal(0.0, 0.5), &device);
        let rows = VocabularyRows::new(emb, &[1, 2, 3, 4, 5], &(20..40).collect::<Vec<u32>>()).unwrap();
        let model = EncoderWithTiedHeads::new(part, &device);
        let held = squares(&cfg, grid, 8, 99);
        let acc0 = tied_accuracy(&model.valid(), &rows, &held).unwrap();
        let pcfg = ImagePretrainConfig::new().with_steps(80).with_batch_size(4).with_lr(3e-3);
        let mut seed = 0;
        let mut losses = Vec::new();
        let trained = pretrain_tied_markers(
            model,
            &rows,
            &pcfg,
            TiedTarget::Scores,
            10.0,
            &mut |n| {
                seed += 1;
                Ok::<_, String>(squares(&cfg, grid, n, seed))
            },
            &mut |_, l| losses.push(l),
        )
        .unwrap();
        let acc = tied_accuracy(&trained.valid(), &rows, &held).unwrap();
        let letters = acc.letters;
        assert_eq!((letters.marked, letters.unmarked, acc.tokens), (8, 8 * (grid * grid - 1), 8 * grid * grid));
        assert!(letters.marked_right >= 7 && letters.unmarked_rate() >= 0.98, "{acc0:?} -> {acc:?}");
        assert!(acc.levels_exact as f64 >= 0.95 * acc.tokens as f64, "{acc0:?} -> {acc:?}");
        assert!(losses[79] < 0.2 * losses[0], "{} -> {}", losses[0], losses[79]);
        let bad = TiedBatch { levels: vec![POINT_LEVELS as i64; held.levels.len()], ..held };
        let err = tied_accuracy(&trained.valid(), &rows, &bad).unwrap_err().to_string();
        assert!(err.contains("level class 20 is not in 0..20"), "{err}");
    }
}
