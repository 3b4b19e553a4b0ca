//! The token layout every Perceptio part agrees on: the ids of the added tokens (`[SEG]`, `<d_start>`,
//! `<d_end>`, `<d_0>`..`<d_{K-1}>`) and the per-sample record of where the prompt ends, where `[SEG]` sits and
//! where the depth span opens and closes. Sequences are built by `sequence`, consumed by `loss` and the heads.

/// Ids of the tokens Perceptio adds to (or needs from) the vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SpecialTokens {
    /// `[SEG]`.
    pub seg: u32,
    /// `<d_start>`.
    pub d_start: u32,
    /// `<d_end>`.
    pub d_end: u32,
    /// `<d_0>`; code `k` is `code0 + k`.
    pub code0: u32,
    /// K, the depth codebook size.
    pub num_codes: usize,
    /// `<|im_end|>`: ends the answer (and generation).
    pub im_end: u32,
    /// Padding id (right padding in training batches; never a loss target).
    pub pad: u32,
    /// `<IMG_CONTEXT>`: replaced by image features.
    pub image_context: u32,
}

impl SpecialTokens {
    /// Id of depth code `k`.
    pub fn code(&self, k: usize) -> u32 {
        debug_assert!(k < self.num_codes);
        self.code0 + k as u32
    }

    /// The code index of a token id, if it is a depth code.
    pub fn code_index(&self, id: u32) -> Option<usize> {
        (id >= self.code0 && ((id - self.code0) as usize) < self.num_codes).then(|| (id - self.code0) as usize)
    }

    pub fn is_code(&self, id: u32) -> bool {
        self.code_index(id).is_some()
    }
}

/// One tokenised sample: `prompt ++ answer ++ <|im_end|>`, and where its parts sit.
///
/// Logits at position `t` predict `ids[t + 1]`; the answer (every position `>= prompt_len`) is what the
/// losses supervise.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Sequence {
    pub ids: Vec<u32>,
    /// Number of prompt tokens (the chat template up to and including `<|im_start|>assistant\n`).
    pub prompt_len: usize,
    /// Index in `ids` of the `[SEG]` token, if the answer has one.
    pub seg_pos: Option<usize>,
    /// Index in `ids` of `<d_start>`, if present.
    pub depth_start: Option<usize>,
    /// Index in `ids` of `<d_end>`, if present (a truncated span has a start and no end).
    pub depth_end: Option<usize>,
}

impl Sequence {
    /// Indices of the depth-span interior (the code positions): after `<d_start>` up to `<d_end>`, or up to the
    /// end of the sequence when the span never closes. Empty without a span.
    pub fn depth_interior(&self) -> std::ops::Range<usize> {
        match (self.depth_start, self.depth_end) {
            (Some(s), Some(e)) => s + 1..e,
            (Some(s), None) => s + 1..self.ids.len(),
            _ => 0..0,
        }
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// A right-padded batch of sequences.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenBatch {
    /// `[B][S]` ids, right-padded with `SpecialTokens::pad` to the longest sequence.
    pub ids: Vec<Vec<u32>>,
    /// The unpadded sequences, in batch order.
    pub seqs: Vec<Sequence>,
}

impl TokenBatch {
    /// Pads `seqs` to a common length.
    pub fn new(seqs: Vec<Sequence>, pad: u32) -> Self {
        let s = seqs.iter().map(Sequence::len).max().unwrap_or(0);
        let ids = seqs
            .iter()
            .map(|q| {
                let mut row = q.ids.clone();
                row.resize(s, pad);
                row
            })
            .collect();
        Self { ids, seqs }
    }

    pub fn batch_size(&self) -> usize {
        self.seqs.len()
    }

    /// Padded length S.
    pub fn seq_len(&self) -> usize {
        self.ids.first().map_or(0, Vec::len)
    }
}
