//! InternViT image encoder (patch 14, CLS, interpolated position embeddings, pre-norm blocks
//! with qkv bias, layer scale, optional qk-norm, GELU MLP), pixel shuffle and the MLP
//! projector into the LLM.

mod bicubic;
mod config;
mod embeddings;
mod layer;
mod model;
mod norm;
mod projector;

pub use bicubic::bicubic_matrix;
pub use config::InternVitConfig;
pub use embeddings::{PatchEmbeddings, VisionEmbeddings};
pub use layer::{VisionAttention, VisionLayer, VisionMlp};
pub use model::{InternVisionModel, VisionEncoder};
pub use norm::VisionNorm;
pub use projector::{Projector, pixel_shuffle};
