//! Depth models: the VQ-VAE depth tokenizer (depth map <-> 100 codes) that we train ourselves, its
//! trainer and procedural training data, and the Depth Anything V2 teacher (DINOv2 + DPT).

pub mod depth_anything;
pub mod dinov2;
pub mod dpt;
pub mod dump;
pub mod error;
pub mod image;
pub mod procedural;
pub mod quantizer;
pub mod train;
pub mod vqvae;

pub use depth_anything::{DepthAnything, DepthAnythingConfig};
pub use error::DepthError;
pub use procedural::ProceduralDepth;
pub use quantizer::{EmaBatch, EmaQuantizer, Quantized, QuantizerConfig};
pub use train::{DepthSource, TrainEvent, TrainState, TrainVqVaeConfig, ValMetrics, train_vqvae};
pub use vqvae::{CodeScores, VqVae, VqVaeConfig, VqVaeOutput};
