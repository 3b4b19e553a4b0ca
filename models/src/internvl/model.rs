//! The assembled vision-language model: image features replace the `<IMG_CONTEXT>` positions
//! of the prompt's embeddings, then the decoder runs.

use burn::prelude::*;

use super::config::InternVlConfig;
use crate::llm::{GenerateOptions, KvCache, Qwen2ForCausalLM, generate_from_embeds, ids_tensor, left_pad};
use crate::vision::{InternVisionModel, Projector, pixel_shuffle};

/// `InternVLForConditionalGeneration` (module paths follow its checkpoint keys).
#[derive(Module, Debug)]
pub struct InternVl {
    pub vision_tower: InternVisionModel,
    pub multi_modal_projector: Projector,
    pub language_model: Qwen2ForCausalLM,
    pub image_token_id: usize,
    pub shuffle: usize,
    pub select_layer: i64,
}

/// Errors of the multimodal forward.
#[derive(Debug, thiserror::Error)]
pub enum InternVlError {
    #[error("prompt has {tokens} image-context tokens but the images give {features} features")]
    ImageTokenCount { tokens: usize, features: usize },
}

impl InternVlConfig {
    /// Builds a randomly initialised model.
    pub fn init(&self, device: &Device) -> InternVl {
        let d_in = self.vision.hidden_size * self.shuffle * self.shuffle;
        InternVl {
            vision_tower: self.vision.init(device),
            multi_modal_projector: Projector::init(d_in, self.text.hidden_size, device),
            language_model: self.text.init(device),
            image_token_id: self.image_token_id,
            shuffle: self.shuffle,
            select_layer: self.select_layer,
        }
    }
}

impl InternVl {
    /// Vision features of the selected layer, CLS dropped: `[tiles, patches, d_vision]`.
    pub fn vision_features(&self, pixels: Tensor<4>) -> Tensor<3> {
        let vt = &self.vision_tower;
        let n = vt.encoder.layer.len() as i64;
        let upto = if self.select_layer < 0 { n + 1 + self.select_layer } else { self.select_layer };
        let mut x = vt.embeddings.forward(pixels); // [t, 1+p, dv]
        for layer in vt.encoder.layer.iter().take(upto.max(0) as usize) {
            x = layer.forward(x); // [t, 1+p, dv]
        }
        if upto == n
            && let Some(norm) = &vt.layernorm
        {
            x = norm.forward(x);
        }
        let [t, p1, d] = x.dims();
        x.slice([0..t, 1..p1, 0..d]) // [t, p, dv]
    }

    /// Pixels `[tiles, 3, h, w]` -> image tokens for the LLM `[tiles, tokens, d_llm]`.
    pub fn image_features(&self, pixels: Tensor<4>) -> Tensor<3> {
        let x = self.vision_features(pixels); // [t, p, dv]
        let x = pixel_shuffle(x, self.shuffle); // [t, p/4, 4dv]
        self.multi_modal_projector.forward(x) // [t, p/4, d]
    }

    /// Prompt embeddings `[b, s, d]` with the image-context positions (row-major over the
    /// batch) replaced by `features` `[tiles, tokens, d]`, in order.
    pub fn merge(&self, ids: &[Vec<u32>], features: Option<Tensor<3>>) -> Result<Tensor<3>, InternVlError> {
        let lm = &self.language_model;
        let device = lm.model.embed_tokens.weight.device();
        let embeds = lm.model.embed(ids_tensor(ids, &device)); // [b, s, d]
        let [b, s, d] = embeds.dims();
        let positions: Vec<usize> = ids
            .iter()
            .flatten()
            .enumerate()
            .filter(|(_, t)| **t as usize == self.image_token_id)
            .map(|(i, _)| i)
            .collect();
        let Some(features) = features else {
            return if positions.is_empty() {
                Ok(embeds)
            } else {
                Err(InternVlError::ImageTokenCount { tokens: positions.len(), features: 0 })
            };
        };
        let [t, n, _] = features.dims();
        if positions.len() != t * n {
            return Err(InternVlError::ImageTokenCount { tokens: positions.len(), features: t * n });
        }
        // gather from [text rows ; image rows]
        let mut index: Vec<i64> = (0..(b * s) as i64).collect();
        for (k, &p) in positions.iter().enumerate() {
            index[p] = (b * s + k) as i64;
        }
        let table = Tensor::cat(vec![embeds.reshape([b * s, d]), features.reshape([t * n, d])], 0); // [b*s + t*n, d]
        let index = Tensor::<1, Int>::from_data(TensorData::new(index, [b * s]), &device); // [b*s]
        Ok(table.select(0, index).reshape([b, s, d])) // [b, s, d]
    }

    /// Full forward: ids `[b][s]` (unpadded, equal lengths) + optional pixels -> logits `[b, s, vocab]`.
    pub fn forward(&self, ids: &[Vec<u32>], pixels: Option<Tensor<4>>) -> Result<Tensor<3>, InternVlError> {
        let features = pixels.map(|p| self.image_features(p));
        let x = self.merge(ids, features)?; // [b, s, d]
        let lm = &self.language_model;
        Ok(lm.logits(lm.model.forward_embeds(x, None, None))) // [b, s, v]
    }

    /// Generates continuations of prompts (left-padded batch) with optional images whose
    /// tiles fill the image-context tokens in order.
    pub fn generate(
        &self,
        prompts: &[Vec<u32>],
        pixels: Option<Tensor<4>>,
        opts: &GenerateOptions,
    ) -> Result<Vec<Vec<u32>>, InternVlError> {
        let (ids, pad) = left_pad(prompts, opts.pad_token);
        let features = pixels.map(|p| self.image_features(p));
        let x = self.merge(&ids, features)?; // [b, s, d]
        Ok(generate_from_embeds(&self.language_model, x, pad, opts))
    }

    /// A fresh KV cache for the decoder.
    pub fn new_cache(&self, batch: usize) -> KvCache {
        self.language_model.new_cache(batch)
    }
}
