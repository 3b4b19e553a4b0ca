//! SAM2 for image segmentation: Hiera + FPN image encoder, prompt encoder (points, boxes, mask
//! input, external sparse embeddings such as the projected [SEG] state) and the two-way mask
//! decoder, loadable from transformers `Sam2Model` checkpoints.

pub mod config;
pub mod decoder;
pub mod error;
pub mod hiera;
pub mod keys;
pub mod mlp;
pub mod model;
pub mod neck;
pub mod pretrain;
pub mod prompt;
pub mod run;

pub use config::{HieraConfig, MaskDecoderConfig, PromptEncoderConfig, Sam2Config, Sam2VisionConfig};
pub use decoder::{HighResFeatures, MaskOutput};
pub use error::Sam2Error;
pub use model::{ImageEmbeddings, Sam2, preprocess, upsample_masks};
pub use prompt::Prompts;
