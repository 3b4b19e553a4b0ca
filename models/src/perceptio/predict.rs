//! Answering with a trained Perceptio model: a batch of (image, question) queries goes through constrained greedy
//! generation; then the heads read what was generated: the `[SEG]` hidden state through the projection into the
//! SAM2 mask decoder (a mask), the depth span's codes through the VQ-VAE decoder (a depth map). Used by the
//! `ask` and `eval` commands, the serving runtime and the demo.

use std::path::Path;
use std::time::{Duration, Instant};

use burn::prelude::*;

use super::checkpoint::{CheckpointError, TOKENIZER_FILE, load_model};
use super::decode::{DecodeEvent, generate_streaming};
use super::image::{decode_png_planar, encoder_input};
use super::layout::SpecialTokens;
use super::model::{ModelError, Perceptio, PerceptioConfig};
use super::sequence::{SequenceConfig, SequenceError, parse_answer, prompt_ids};
use super::stepper::Stepper;
use super::tokens::{TokensError, special_tokens};
use crate::depth::DepthError;
use crate::tokenizer::TextTokenizer;

/// Why a query could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum PredictError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Depth(#[from] DepthError),
    #[error(transparent)]
    Tokens(#[from] TokensError),
    #[error("{path}: {message}")]
    Tokenizer { path: String, message: String },
    #[error("prompt: {0}")]
    Prompt(#[from] SequenceError),
    #[error("image: {0}")]
    Image(String),
    #[error("reading tensor data: {0}")]
    Data(String),
}

/// One question about one image.
#[derive(Debug, Clone)]
pub struct Query {
    /// Channel-major RGB `[3, height, width]` in [0, 1].
    pub rgb: Vec<f32>,
    pub height: usize,
    pub width: usize,
    pub question: String,
}

impl Query {
    /// A query from PNG bytes.
    pub fn from_png(png: &[u8], question: impl Into<String>) -> Result<Self, PredictError> {
        let (rgb, height, width) = decode_png_planar(png).map_err(PredictError::Image)?;
        Ok(Self { rgb, height, width, question: question.into() })
    }

    /// Checks the image shape.
    pub fn check(&self) -> Result<(), PredictError> {
        if self.height == 0 || self.width == 0 {
            return Err(PredictError::Image(format!("empty image ({}x{})", self.width, self.height)));
        }
        if self.rgb.len() != 3 * self.height * self.width {
            return Err(PredictError::Image(format!(
                "{} values for a 3x{}x{} image",
                self.rgb.len(),
                self.height,
                self.width
            )));
        }
        Ok(())
    }
}

/// Generation limits.
#[derive(Debug, Clone, Copy)]
pub struct AskOptions {
    /// Most tokens generated per answer (a full answer is `[SEG]` + 102 span tokens + text).
    pub max_new_tokens: usize,
}

impl Default for AskOptions {
    fn default() -> Self {
        Self { max_new_tokens: 160 }
    }
}

/// A decoded mask: probabilities in [0, 1], row-major `size x size` (the SAM2 input resolution).
#[derive(Debug, Clone)]
pub struct MaskMap {
    pub size: usize,
    pub probs: Vec<f32>,
}

impl MaskMap {
    /// The binary mask (probability > 0.5).
    pub fn binary(&self) -> Vec<bool> {
        self.probs.iter().map(|&p| p > 0.5).collect()
    }
}

/// A decoded depth map in the tokenizer's units: per-map normalised disparity in [-1, 1] (+1 = nearest; see
/// `depth::target`), row-major `size x size`.
#[derive(Debug, Clone)]
pub struct DepthMap {
    pub size: usize,
    pub values: Vec<f32>,
}

/// The answer to one query.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Every generated id (up to and including `<|im_end|>` when reached).
    pub ids: Vec<u32>,
    /// The text after the perception tokens.
    pub text: String,
    /// Whether `[SEG]` was generated.
    pub seg: bool,
    /// The mask `[SEG]` prompted (None without `[SEG]`).
    pub mask: Option<MaskMap>,
    /// The code indices of the depth span (None without one); a span always holds exactly N codes unless
    /// generation was cut short.
    pub depth_codes: Option<Vec<u32>>,
    /// The decoded depth map (None without a complete span).
    pub depth: Option<DepthMap>,
    pub timings: Timings,
}

/// Where the time of a batch went (shared by its answers).
#[derive(Debug, Clone, Copy, Default)]
pub struct Timings {
    /// Image encoding, prompt prefill and decoding.
    pub generate: Duration,
    /// SAM2 encoding and mask decoding.
    pub mask: Duration,
    /// VQ-VAE decoding.
    pub depth: Duration,
}

/// What [`Predictor::answer_streaming`] reports while it works.
#[derive(Debug, Clone)]
pub enum PredictEvent {
    /// Query `row` generated `id` (`text` is its decoded piece; empty for special tokens).
    Token { row: usize, id: u32, text: String },
}

/// The text side of a model directory, without weights: tokenizer, special-token layout and sequence limits.
/// What the serving graph's request checks and token router need.
pub struct TextSide {
    pub tokenizer: TextTokenizer,
    pub specials: SpecialTokens,
    pub sequence: SequenceConfig,
}

impl TextSide {
    /// Reads the tokenizer of model directory `dir` whose config is `cfg`.
    pub fn load(dir: &Path, cfg: &PerceptioConfig) -> Result<Self, PredictError> {
        let path = dir.join(TOKENIZER_FILE);
        let tokenizer = TextTokenizer::from_file(&path)
            .map_err(|e| PredictError::Tokenizer { path: path.display().to_string(), message: e.to_string() })?;
        let specials = special_tokens(&tokenizer, cfg.num_codes())?;
        Ok(Self { tokenizer, specials, sequence: cfg.sequence_config() })
    }

    /// The tokenised prompt of `question`; errors on a prompt longer than the model's limit.
    pub fn prompt(&self, question: &str) -> Result<Vec<u32>, PredictError> {
        let ids = prompt_ids(&self.tokenizer, &self.specials, &self.sequence, question)?;
        if ids.len() >= self.sequence.max_len {
            return Err(PredictError::Prompt(SequenceError::TooLong {
                id: "(prompt)".into(),
                len: ids.len(),
                max_len: self.sequence.max_len,
            }));
        }
        Ok(ids)
    }

    /// The text of one generated id: its decoded piece, empty for the perception tokens (`[SEG]`, the span
    /// markers, codes).
    pub fn piece(&self, id: u32) -> String {
        let sp = &self.specials;
        if sp.is_code(id) || id == sp.seg || id == sp.d_start || id == sp.d_end {
            String::new()
        } else {
            self.tokenizer.decode(&[id], true).unwrap_or_default()
        }
    }
}

/// A trained model ready to answer, with its tokenizer and token layout.
pub struct Predictor {
    pub cfg: PerceptioConfig,
    pub model: Perceptio,
    pub text: TextSide,
    device: Device,
}

impl Predictor {
    /// Loads a model directory (as `perceptio init-model` or training writes it) onto `device` (a plain device:
    /// inference needs no autodiff).
    pub fn load(dir: &Path, device: &Device) -> Result<Self, PredictError> {
        let device = device.clone().without_autodiff();
        let (cfg, model) = load_model(dir, &device)?;
        let text = TextSide::load(dir, &cfg)?;
        Ok(Self { cfg, model, text, device })
    }

    /// N, the codes in a depth span.
    pub fn span_len(&self) -> usize {
        self.text.sequence.span_len
    }

    /// The tokenised prompt of `question`; errors on a prompt longer than the model's limit.
    pub fn prompt(&self, question: &str) -> Result<Vec<u32>, PredictError> {
        self.text.prompt(question)
    }

    /// Checks a query without running the model: the image shape and the prompt.
    pub fn check(&self, query: &Query) -> Result<(), PredictError> {
        query.check()?;
        self.prompt(&query.question).map(|_| ())
    }

    /// Answers a batch of queries together.
    pub fn answer(&self, queries: &[Query], opts: &AskOptions) -> Result<Vec<Answer>, PredictError> {
        self.answer_streaming(queries, opts, &mut |_| true)
    }

    /// [`Predictor::answer`], reporting tokens as they are decoded; `on_event` returning false stops that query's
    /// generation (its answer then holds what was generated so far).
    pub fn answer_streaming(
        &self,
        queries: &[Query],
        opts: &AskOptions,
        on_event: &mut dyn FnMut(PredictEvent) -> bool,
    ) -> Result<Vec<Answer>, PredictError> {
        if queries.is_empty() {
            return Ok(Vec::new());
        }
        let b = queries.len();
        let prompts = queries
            .iter()
            .map(|q| {
                q.check()?;
                self.prompt(&q.question)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let started = Instant::now();
        let p = self.cfg.vlm.vision.image_size;
        let pixels: Vec<f32> = queries.iter().flat_map(|q| encoder_input(&q.rgb, q.height, q.width, p)).collect();
        let pixels = Tensor::<4>::from_data(TensorData::new(pixels, [b, 3, p, p]), &self.device); // [B, 3, p, p]
        let sp = self.text.specials;
        let tok = &self.text.tokenizer;
        let generated = generate_streaming(
            &self.model.image,
            &self.model.llm,
            &prompts,
            Some(pixels),
            Stepper::new(sp, self.span_len()).keeping_image_states(self.cfg.seg_grounding),
            opts.max_new_tokens,
            &mut |event| match event {
                DecodeEvent::Token { row, id } => on_event(PredictEvent::Token { row, id, text: self.text.piece(id) }),
                DecodeEvent::SegHidden { .. } => true,
            },
        )?;
        let t_generate = started.elapsed();

        // masks: the rows that produced [SEG]
        let started = Instant::now();
        let seg_rows: Vec<usize> = (0..b).filter(|&i| generated[i].seg_hidden.is_some()).collect();
        let mut masks: Vec<Option<MaskMap>> = vec![None; b];
        if !seg_rows.is_empty() {
            let s = self.cfg.sam2.image_size();
            let sam: Vec<f32> = seg_rows
                .iter()
                .flat_map(|&i| encoder_input(&queries[i].rgb, queries[i].height, queries[i].width, s))
                .collect();
            let sam = Tensor::<4>::from_data(TensorData::new(sam, [seg_rows.len(), 3, s, s]), &self.device); // [B', 3, S, S]
            let hidden: Vec<Tensor<2>> = seg_rows
                .iter()
                .map(|&i| generated[i].seg_hidden.clone().expect("filtered").unsqueeze_dim(0)) // [1, d]
                .collect();
            let hidden = Tensor::cat(hidden, 0); // [B', d]
            let image: Option<Vec<Tensor<2>>> = seg_rows.iter().map(|&i| generated[i].image_hidden.clone()).collect();
            let image = image.map(|v| Tensor::stack::<3>(v, 0)); // [B', T, d]
            let levels = self.model.seg.encode(sam)?;
            let probs = self.model.seg.mask_probs(hidden, image, levels, s)?; // [B', S, S]
            let probs = to_vec(probs)?;
            for (k, &i) in seg_rows.iter().enumerate() {
                masks[i] = Some(MaskMap { size: s, probs: probs[k * s * s..(k + 1) * s * s].to_vec() });
            }
        }
        let t_mask = started.elapsed();

        // depth: the rows with a complete span
        let started = Instant::now();
        let parsed: Vec<_> = generated.iter().map(|g| parse_answer(tok, &sp, &g.ids)).collect();
        let n = self.span_len();
        let depth_rows: Vec<usize> =
            (0..b).filter(|&i| parsed[i].codes.as_ref().is_some_and(|c| c.len() == n)).collect();
        let mut depths: Vec<Option<DepthMap>> = vec![None; b];
        if !depth_rows.is_empty() {
            let ids: Vec<i64> = depth_rows
                .iter()
                .flat_map(|&i| parsed[i].codes.as_ref().expect("filtered").iter().map(|&c| c as i64))
                .collect();
            let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [depth_rows.len(), n]), &self.device); // [B'', N]
            let maps = self.model.vqvae.decode(ids)?; // [B'', 1, D, D]
            let d = maps.dims()[2];
            let values = to_vec(maps)?;
            for (k, &i) in depth_rows.iter().enumerate() {
                depths[i] = Some(DepthMap { size: d, values: values[k * d * d..(k + 1) * d * d].to_vec() });
            }
        }
        let timings = Timings { generate: t_generate, mask: t_mask, depth: started.elapsed() };

        Ok(generated
            .into_iter()
            .zip(parsed)
            .zip(masks.into_iter().zip(depths))
            .map(|((g, p), (mask, depth))| Answer {
                seg: p.seg.is_some(),
                ids: g.ids,
                text: p.text,
                mask,
                depth_codes: p.codes,
                depth,
                timings,
            })
            .collect())
    }
}

fn to_vec<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>, PredictError> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().map_err(|e| PredictError::Data(format!("{e:?}")))
}
