//! Perceptio: the InternVL backbone with `[SEG]` and depth-span tokens, the heads that turn them into a mask
//! and a depth map, the losses and the training step.
//!
//! - `layout`: added-token ids and the per-sample token layout (shared by every part).
//! - `tokens`: the tiny word-level tokenizer and vocabulary extension.
//! - `sequence`: prompt/answer templates per task, depth chain-of-thought, batching.
//! - `loss`: every loss term as a function with hand-checked tests.
//! - `model`: the parts (image encoder, LLM with added-token rows, SAM2 + `[SEG]` head, VQ-VAE) and presets.
//! - `heads`: the `[SEG]` projection and the gather of `[SEG]` hidden states.
//! - `positions`: the tokens' RoPE positions (a depth span at its image cells' positions, when configured).
//! - `optim`: AdamW, warm-up + cosine schedule, accumulation, global-norm clipping, saved state.
//! - `decode`: constrained decoding of the depth span and greedy generation keeping the `[SEG]` state.
//! - `stepper`: the same decoding one step at a time, for a batch that requests join and leave (serving).
//! - `image`: resizing and normalisation of encoder inputs.
//! - `predict`: answering questions with a trained model (generation, then the mask and depth heads).
//! - `recall`, `recall_pretrain`: the text-only recall task (told letter-level pairs, then the point chain) and
//!   pretraining the LLM on it.
//! - `checkpoint`: the model directory (config, tokenizer, one weights file per part).
//! - `step`: one training step of the whole model as a single function.

pub mod appearance_pretrain;
pub mod checkpoint;
pub mod decode;
pub mod heads;
pub mod image;
pub mod image_pretrain;
pub mod layout;
pub mod loss;
pub mod marker_pretrain;
pub mod model;
pub mod optim;
pub mod positions;
pub mod predict;
pub mod recall;
pub mod recall_pretrain;
pub mod sequence;
pub mod step;
pub mod stepper;
pub mod tied_marker_pretrain;
pub mod token_classes;
pub mod tokens;

pub use layout::{Sequence, SpecialTokens, TokenBatch};
pub use model::{ImageEncoderPart, LlmPart, ModelError, Perceptio, PerceptioConfig, SegPart, TrainableConfig};
pub use optim::{OptimConfig, PartOptimizer};
pub use step::{PerceptioOptimizer, TrainBatch, forward_terms, train_micro_step};
