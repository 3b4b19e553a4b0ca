//! KV cache for incremental decoding of a batch of sequences of different lengths.
//!
//! Convention: batches are **left-padded**. Every sequence occupies the same number of cache
//! slots; slots holding padding are recorded in `pad` and masked out as keys. Position ids
//! count only real tokens, so a padded sequence sees exactly the positions it would see alone.

use burn::prelude::*;

/// Keys and values of every layer, plus which slots are padding.
#[derive(Debug, Clone)]
pub struct KvCache {
    /// Per layer: keys and values `[batch, kv_heads, slots, head_dim]`.
    pub(crate) layers: Vec<Option<(Tensor<4>, Tensor<4>)>>,
    /// `[batch][slots]`: true where the slot holds padding.
    pub(crate) pad: Vec<Vec<bool>>,
    /// `[batch]`: real tokens seen so far (the next position id).
    pub(crate) next_pos: Vec<usize>,
}

impl KvCache {
    /// An empty cache for `batch` sequences and `num_layers` layers.
    pub fn new(num_layers: usize, batch: usize) -> Self {
        Self { layers: vec![None; num_layers], pad: vec![Vec::new(); batch], next_pos: vec![0; batch] }
    }

    /// Batch size.
    pub fn batch(&self) -> usize {
        self.pad.len()
    }

    /// Slots used per sequence (real tokens + padding).
    pub fn slots(&self) -> usize {
        self.pad.first().map_or(0, |p| p.len())
    }

    /// Real tokens cached for sequence `i`.
    pub fn seq_len(&self, i: usize) -> usize {
        self.next_pos[i]
    }

    /// Records `new_pad` (`[batch][new]`) and returns the position ids of the new tokens and
    /// the additive attention bias `[batch, 1, new, slots + new]` (0 = visible, -1e30 =
    /// masked: future slots and padding; a padding query sees itself so no row is empty).
    ///
    /// `placed` (`[batch][new]`; any other shape is a caller's bug and panics) gives the new tokens' positions
    /// instead of the count of real tokens; the next count then follows the highest real position placed.
    pub(crate) fn advance(
        &mut self,
        new_pad: &[Vec<bool>],
        placed: Option<&[Vec<usize>]>,
        device: &Device,
    ) -> (Vec<Vec<usize>>, Tensor<4>) {
        let b = self.batch();
        let s = new_pad.first().map_or(0, |p| p.len());
        assert!(
            placed.is_none_or(|rows| rows.len() == b && rows.iter().all(|row| row.len() == s)),
            "positions must be [batch][new]"
        );
        let past = self.slots();
        let t = past + s;
        let mut positions = Vec::with_capacity(b);
        let mut bias = Vec::with_capacity(b * s * t);
        for (i, pads) in new_pad.iter().enumerate() {
            let mut row_pos = Vec::with_capacity(s);
            for (j, &p) in pads.iter().enumerate() {
                let at = placed.map_or(self.next_pos[i], |rows| rows[i][j]);
                row_pos.push(at);
                if !p {
                    self.next_pos[i] = self.next_pos[i].max(at + 1);
                }
            }
            positions.push(row_pos);
            self.pad[i].extend_from_slice(pads);
            for q in 0..s {
                let qs = past + q;
                for k in 0..t {
                    let visible = k <= qs && (!self.pad[i][k] || k == qs);
                    bias.push(if visible { 0.0f32 } else { -1e30 });
                }
            }
        }
        let bias = Tensor::<4>::from_data(TensorData::new(bias, [b, 1, s, t]), device); // [b, 1, s, t]
        (positions, bias)
    }

    /// Appends this step's keys/values of `layer` and returns the full ones.
    pub(crate) fn update(&mut self, layer: usize, k: Tensor<4>, v: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
        let (k, v) = match self.layers[layer].take() {
            Some((pk, pv)) => (Tensor::cat(vec![pk, k], 2), Tensor::cat(vec![pv, v], 2)), // [b, kv, t, hd]
            None => (k, v),
        };
        self.layers[layer] = Some((k.clone(), v.clone()));
        (k, v)
    }

    /// Appends the sequences of `other` (same model, already prefilled) after this cache's, so that a running batch
    /// can take in new sequences between decode steps. The side with fewer slots is left-padded with padding slots
    /// (masked as keys): every sequence goes on seeing exactly what it saw before.
    pub fn append(&mut self, other: KvCache) {
        if self.batch() == 0 {
            *self = other;
            return;
        }
        if other.batch() == 0 {
            return;
        }
        let (mine, theirs) = (self.slots(), other.slots());
        let t = mine.max(theirs);
        let left_pad = |x: Tensor<4>, n: usize| -> Tensor<4> {
            if n == 0 {
                return x;
            }
            let [b, h, _, hd] = x.dims();
            let zeros = Tensor::<4>::zeros([b, h, n, hd], &x.device()); // [b, kv, n, hd]
            Tensor::cat(vec![zeros, x], 2) // [b, kv, n + slots, hd]
        };
        for (layer, added) in self.layers.iter_mut().zip(other.layers) {
            *layer = match (layer.take(), added) {
                (Some((k1, v1)), Some((k2, v2))) => Some((
                    Tensor::cat(vec![left_pad(k1, t - mine), left_pad(k2, t - theirs)], 0), // [b1 + b2, kv, t, hd]
                    Tensor::cat(vec![left_pad(v1, t - mine), left_pad(v2, t - theirs)], 0),
                )),
                (mine, added) => mine.or(added),
            };
        }
        for p in &mut self.pad {
            p.splice(0..0, std::iter::repeat_n(true, t - mine));
        }
        self.pad.extend(other.pad.into_iter().map(|mut p| {
            p.splice(0..0, std::iter::repeat_n(true, t - theirs));
            p
        }));
        self.next_pos.extend(other.next_pos);
    }

    /// Keeps only the sequences at `keep` (in that order), e.g. to drop finished ones.
    pub fn retain(&mut self, keep: &[usize]) {
        let idx: Vec<i64> = keep.iter().map(|&i| i as i64).collect();
        for (k, v) in self.layers.iter_mut().flatten() {
            let device = k.device();
            let index = Tensor::<1, Int>::from_data(TensorData::new(idx.clone(), [idx.len()]), &device);
            *k = k.clone().select(0, index.clone());
            *v = v.clone().select(0, index);
        }
        self.pad = keep.iter().map(|&i| self.pad[i].clone()).collect();
        self.next_pos = keep.iter().map(|&i| self.next_pos[i]).collect();
    }
}
