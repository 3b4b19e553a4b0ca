//! Depth models: the VQ-VAE depth tokenizer (depth map <-> 100 codes) that we train ourselves, its
//! trainer, procedural training data and tokenizer targets from metric depth PNGs, and the Depth
//! Anything V2 teacher (DINOv2 + DPT).

pub mod depth_anything;
pub mod dinov2;
pub mod dpt;
pub mod dump;
pub mod error;
pub mod image;
pub mod procedural;
pub mod quantizer;
pub mod target;
pub mod train;
pub mod vqvae;

pub use depth_anything::{DepthAnything, DepthAnythingConfig};
pub use error::DepthError;
pub use procedural::ProceduralDepth;
pub use quantizer::{EmaBatch, EmaQuantizer, Quantized, QuantizerConfig};
pub use target::{depth_target, depth_target_from_png};
pub use train::{
    DepthSource, StepStats, TrainEvent, TrainState, TrainVqVaeConfig, ValMetrics, VqVaeTrainer, train_vqvae,
};
pub use vqvae::{CodeScores, VqVae, VqVaeConfig, VqVaeOutput};
