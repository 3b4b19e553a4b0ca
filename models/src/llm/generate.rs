//! Greedy and sampled generation (temperature, top-p, stop tokens) for a batch of prompts,
//! with or without the KV cache. Prompts of different lengths are left-padded (see
//! [`KvCache`](super::KvCache)).

use burn::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::model::Qwen2ForCausalLM;

/// Decoding settings.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    /// 0 = greedy; otherwise logits are divided by it before sampling.
    pub temperature: f32,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches `top_p`.
    pub top_p: f32,
    /// Generation of a sequence stops after emitting one of these (it is kept in the output).
    pub stop_tokens: Vec<u32>,
    pub seed: u64,
    pub use_cache: bool,
    /// Id fed for padding slots (never attended to).
    pub pad_token: u32,
}

impl GenerateOptions {
    /// Greedy decoding of `n` tokens with the cache.
    pub fn greedy(n: usize) -> Self {
        Self {
            max_new_tokens: n,
            temperature: 0.0,
            top_p: 1.0,
            stop_tokens: Vec::new(),
            seed: 0,
            use_cache: true,
            pad_token: 0,
        }
    }

    /// Sampling with temperature and top-p.
    pub fn sampled(n: usize, temperature: f32, top_p: f32, seed: u64) -> Self {
        Self { temperature, top_p, seed, ..Self::greedy(n) }
    }

    /// Recompute the whole sequence at every step instead of using the cache.
    pub fn without_cache(mut self) -> Self {
        self.use_cache = false;
        self
    }

    /// Adds stop tokens.
    pub fn with_stop_tokens(mut self, stop: &[u32]) -> Self {
        self.stop_tokens.extend_from_slice(stop);
        self
    }
}

/// Left-pads prompts to a common length: (ids `[b][s]`, padding flags `[b][s]`).
pub fn left_pad(prompts: &[Vec<u32>], pad_token: u32) -> (Vec<Vec<u32>>, Vec<Vec<bool>>) {
    let s = prompts.iter().map(|p| p.len()).max().unwrap_or(0);
    let ids = prompts
        .iter()
        .map(|p| std::iter::repeat_n(pad_token, s - p.len()).chain(p.iter().copied()).collect())
        .collect();
    let pad = prompts.iter().map(|p| (0..s).map(|i| i < s - p.len()).collect()).collect();
    (ids, pad)
}

/// Token ids `[b][s]` as an int tensor `[b, s]`.
pub fn ids_tensor(ids: &[Vec<u32>], device: &Device) -> Tensor<2, Int> {
    let b = ids.len();
    let s = ids.first().map_or(0, |r| r.len());
    let flat: Vec<i64> = ids.iter().flatten().map(|&x| x as i64).collect();
    Tensor::from_data(TensorData::new(flat, [b, s]), device) // [b, s]
}

/// Generates continuations of token prompts. Returns the new tokens of each prompt.
pub fn generate(
    model: &Qwen2ForCausalLM,
    prompts: &[Vec<u32>],
    opts: &GenerateOptions,
    device: &Device,
) -> Vec<Vec<u32>> {
    let (ids, pad) = left_pad(prompts, opts.pad_token);
    let x = model.model.embed(ids_tensor(&ids, device)); // [b, s, d]
    generate_from_embeds(model, x, pad, opts)
}

/// Picks the next token of every row of `logits` `[b, vocab]`.
fn pick(logits: Tensor<2>, opts: &GenerateOptions, rng: &mut StdRng) -> Vec<u32> {
    let [b, v] = logits.dims();
    let data = logits.into_data().convert::<f32>().try_into_vec::<f32>().unwrap_or_default();
    (0..b)
        .map(|i| {
            let row = &data[i * v..(i + 1) * v];
            if opts.temperature <= 0.0 { argmax(row) } else { sample(row, opts.temperature, opts.top_p, rng) }
        })
        .collect()
}

/// Index of the first maximum (like `torch.argmax`).
pub fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in row.iter().enumerate() {
        if x > row[best] {
            best = i;
        }
    }
    best as u32
}

/// Temperature + top-p sampling from one row of logits.
pub fn sample(row: &[f32], temperature: f32, top_p: f32, rng: &mut StdRng) -> u32 {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    let mut probs: Vec<(usize, f32)> =
        row.iter().enumerate().map(|(i, &x)| (i, ((x - max) / temperature).exp())).collect();
    let total: f32 = probs.iter().map(|p| p.1).sum();
    probs.iter_mut().for_each(|p| p.1 /= total);
    probs.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mut keep = 0;
    let mut cum = 0.0;
    for p in &probs {
        keep += 1;
        cum += p.1;
        if cum >= top_p {
            break;
        }
    }
    let kept = &probs[..keep];
    let mass: f32 = kept.iter().map(|p| p.1).sum();
    let mut u = rng.random::<f32>() * mass;
    for p in kept {
        if u < p.1 {
            return p.0 as u32;
        }
        u -= p.1;
    }
    kept[keep - 1].0 as u32
}

/// Generates from prompt embeddings `[b, s, d]` (left padding in `pad`), e.g. a prompt whose
/// image positions were filled by the vision encoder.
pub fn generate_from_embeds(
    model: &Qwen2ForCausalLM,
    prompt: Tensor<3>,
    pad: Vec<Vec<bool>>,
    opts: &GenerateOptions,
) -> Vec<Vec<u32>> {
    let [b, s, d] = prompt.dims();
    let device = prompt.device();
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let mut out: Vec<Vec<u32>> = vec![Vec::new(); b];
    let mut done = vec![false; b];
    if opts.max_new_tokens == 0 {
        return out;
    }
    let mut cache = model.new_cache(b);
    let mut full = prompt.clone(); // [b, t, d]
    let mut full_pad = pad.clone();
    let mut logits = if opts.use_cache {
        model.step_embeds(prompt, &pad, &mut cache) // [b, v]
    } else {
        let mut scratch = super::KvCache::new(0, b);
        let h = model.model.forward_embeds(full.clone(), Some(&full_pad), Some(&mut scratch)); // [b, s, d]
        model.logits(h.slice([0..b, s - 1..s, 0..d])).squeeze_dim(1) // [b, v]
    };
    for step in 0..opts.max_new_tokens {
        let next = pick(logits, opts, &mut rng);
        for i in 0..b {
            if !done[i] {
                out[i].push(next[i]);
                if opts.stop_tokens.contains(&next[i]) {
                    done[i] = true;
                }
            }
        }
        if step + 1 == opts.max_new_tokens || done.iter().all(|&x| x) {
            break;
        }
        let feed: Vec<Vec<u32>> = next.iter().map(|&t| vec![t]).collect();
        let x = model.model.embed(ids_tensor(&feed, &device)); // [b, 1, d]
        let step_pad = vec![vec![false]; b];
        logits = if opts.use_cache {
            model.step_embeds(x, &step_pad, &mut cache) // [b, v]
        } else {
            full = Tensor::cat(vec![full, x], 1); // [b, t+1, d]
            full_pad.iter_mut().for_each(|p| p.push(false));
            let t = full.dims()[1];
            let mut scratch = super::KvCache::new(0, b);
            let h = model.model.forward_embeds(full.clone(), Some(&full_pad), Some(&mut scratch)); // [b, t, d]
            model.logits(h.slice([0..b, t - 1..t, 0..d])).squeeze_dim(1) // [b, v]
        };
    }
    out
}
