//! The decoder stack (`model.*`) and the causal LM with its head (`lm_head`).

use burn::nn::{Embedding, EmbeddingConfig, RmsNorm, RmsNormConfig};
use burn::prelude::*;

use super::cache::KvCache;
use super::config::Qwen2Config;
use super::layer::Qwen2DecoderLayer;
use super::linear::{Linear, LinearConfig};
use super::rope::Rope;

/// `model`: token embedding, decoder layers, final RMSNorm.
#[derive(Module, Debug)]
pub struct Qwen2Model {
    pub embed_tokens: Embedding,
    pub layers: Vec<Qwen2DecoderLayer>,
    pub norm: RmsNorm,
    pub head_dim: usize,
    pub rope_theta: f64,
}

impl Qwen2Model {
    pub fn init(cfg: &Qwen2Config, device: &Device) -> Self {
        Self {
            embed_tokens: EmbeddingConfig::new(cfg.vocab_size, cfg.hidden_size)
                .with_initializer(burn::nn::Initializer::Normal { mean: 0.0, std: 0.02 })
                .init(device),
            layers: (0..cfg.num_hidden_layers).map(|_| Qwen2DecoderLayer::init(cfg, device)).collect(),
            norm: RmsNormConfig::new(cfg.hidden_size).with_epsilon(cfg.rms_norm_eps).init(device),
            head_dim: cfg.head_dim(),
            rope_theta: cfg.rope_theta,
        }
    }

    /// Token ids `[b, s]` -> embeddings `[b, s, d]`.
    pub fn embed(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        self.embed_tokens.forward(ids) // [b, s, d]
    }

    /// Runs the layers on embeddings `[b, s, d]` and returns the normed hidden states.
    ///
    /// Without a cache the batch is taken as unpadded and causal. With one, `pad` (`[b][s]`)
    /// marks padding among the new tokens (left padding) and the cache grows by `s` slots.
    pub fn forward_embeds(&self, x: Tensor<3>, pad: Option<&[Vec<bool>]>, cache: Option<&mut KvCache>) -> Tensor<3> {
        self.forward_embeds_at(x, pad, cache, None)
    }

    /// [`Self::forward_embeds`] with the tokens' position ids given (`[b][s]`; None: counted, one per real token).
    pub fn forward_embeds_at(
        &self,
        x: Tensor<3>,
        pad: Option<&[Vec<bool>]>,
        cache: Option<&mut KvCache>,
        positions: Option<&[Vec<usize>]>,
    ) -> Tensor<3> {
        let [b, s, _] = x.dims();
        let device = x.device();
        let dtype = x.dtype();
        let no_pad = vec![vec![false; s]; b];
        let pad = pad.unwrap_or(&no_pad);
        let mut scratch;
        let cache = match cache {
            Some(c) => c,
            None => {
                scratch = KvCache::new(0, b);
                &mut scratch
            }
        };
        let use_cache = !cache.layers.is_empty();
        let (positions, bias) = cache.advance(pad, positions, &device);
        let bias = bias.cast(dtype); // [b, 1, s, t]
        let rope = Rope::new(&positions, self.head_dim, self.rope_theta, &device).cast(dtype);
        let mut x = x;
        for (i, layer) in self.layers.iter().enumerate() {
            let c = if use_cache { Some((&mut *cache, i)) } else { None };
            x = layer.forward(x, &rope, &bias, c); // [b, s, d]
        }
        self.norm.forward(x) // [b, s, d]
    }
}

/// `Qwen2ForCausalLM`: decoder + head (`lm_head`, absent when tied to `embed_tokens`).
#[derive(Module, Debug)]
pub struct Qwen2ForCausalLM {
    pub model: Qwen2Model,
    pub lm_head: Option<Linear>,
}

impl Qwen2Config {
    /// Builds a randomly initialised causal LM.
    pub fn init(&self, device: &Device) -> Qwen2ForCausalLM {
        Qwen2ForCausalLM {
            model: Qwen2Model::init(self, device),
            lm_head: (!self.tie_word_embeddings)
                .then(|| LinearConfig::new(self.hidden_size, self.vocab_size).with_bias(false).init(device)),
        }
    }
}

impl Qwen2ForCausalLM {
    /// Hidden states `[b, s, d]` -> logits `[b, s, vocab]`.
    pub fn logits(&self, hidden: Tensor<3>) -> Tensor<3> {
        match &self.lm_head {
            Some(head) => head.forward(hidden),                                  // [b, s, v]
            None => matmul_rows_t(hidden, self.model.embed_tokens.weight.val()), // [b, s, v]
        }
    }

    /// Unpadded, uncached forward: ids `[b, s]` -> logits `[b, s, vocab]`.
    pub fn forward(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        let x = self.model.embed(ids); // [b, s, d]
        self.logits(self.model.forward_embeds(x, None, None)) // [b, s, v]
    }

    /// Cached step on embeddings `[b, s, d]` (left padding in `pad`); returns the logits of the
    /// last position `[b, vocab]`.
    pub fn step_embeds(&self, x: Tensor<3>, pad: &[Vec<bool>], cache: &mut KvCache) -> Tensor<2> {
        let [b, s, d] = x.dims();
        let h = self.model.forward_embeds(x, Some(pad), Some(cache)); // [b, s, d]
        let last = h.slice([0..b, s - 1..s, 0..d]); // [b, 1, d]
        self.logits(last).squeeze_dim(1) // [b, v]
    }

    /// A fresh cache sized for this model.
    pub fn new_cache(&self, batch: usize) -> KvCache {
        KvCache::new(self.model.layers.len(), batch)
    }

    /// Vocabulary size (rows of the head).
    pub fn vocab_size(&self) -> usize {
        self.model.embed_tokens.weight.shape().dims::<2>()[0]
    }
}

/// `x · wᵀ` for `x` `[b, s, d]` and a row-major table `w` `[n, d]` (a tied head, added-token rows): `[b, s, n]`.
/// Done as one 2-D matmul on a transposed view: burn-flex's batched matmul path with a transposed right-hand side
/// is about 15x slower (measured for the Qwen2.5-0.5B head: 1.3 s against 0.07-0.1 s per decode step).
pub fn matmul_rows_t(x: Tensor<3>, w: Tensor<2>) -> Tensor<3> {
    let [b, s, d] = x.dims();
    let n = w.dims()[0];
    x.reshape([b * s, d]).matmul(w.transpose()).reshape([b, s, n]) // [b, s, n]
}
