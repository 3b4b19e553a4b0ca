//! The InternViT encoder (`vision_tower`): embeddings, blocks, optional final LayerNorm.

use burn::prelude::*;

use super::config::InternVitConfig;
use super::embeddings::VisionEmbeddings;
use super::layer::VisionLayer;
use super::norm::VisionNorm;

/// `encoder`
#[derive(Module, Debug)]
pub struct VisionEncoder {
    pub layer: Vec<VisionLayer>,
}

/// `vision_tower`
#[derive(Module, Debug)]
pub struct InternVisionModel {
    pub embeddings: VisionEmbeddings,
    pub encoder: VisionEncoder,
    pub layernorm: Option<VisionNorm>,
}

impl InternVitConfig {
    /// Builds a randomly initialised encoder.
    pub fn init(&self, device: &Device) -> InternVisionModel {
        InternVisionModel {
            embeddings: VisionEmbeddings::init(self, device),
            encoder: VisionEncoder {
                layer: (0..self.num_hidden_layers).map(|_| VisionLayer::init(self, device)).collect(),
            },
            layernorm: (!self.use_mean_pooling)
                .then(|| VisionNorm::init(self.hidden_size, self.layer_norm_eps, false, device)),
        }
    }
}

impl InternVisionModel {
    /// Pixels `[b, 3, h, w]` -> last hidden states `[b, 1 + patches, d]` (CLS first).
    pub fn forward(&self, pixels: Tensor<4>) -> Tensor<3> {
        let mut x = self.embeddings.forward(pixels); // [b, 1+n, d]
        for layer in &self.encoder.layer {
            x = layer.forward(x); // [b, 1+n, d]
        }
        match &self.layernorm {
            Some(norm) => norm.forward(x),
            None => x,
        }
    }

    /// Patch features without CLS, `[b, n, d]`.
    pub fn patch_features(&self, pixels: Tensor<4>) -> Tensor<3> {
        let x = self.forward(pixels); // [b, 1+n, d]
        let [b, n1, d] = x.dims();
        x.slice([0..b, 1..n1, 0..d]) // [b, n, d]
    }
}
