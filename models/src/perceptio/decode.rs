//! Constrained decoding of Perceptio answers: after `<d_start>` only depth codes for exactly N steps, then
//! `<d_end>` is forced; codes are banned outside the span; `<d_start>` opens at most once; `[SEG]` only before the
//! span. Greedy generation with the KV cache over a left-padded batch, keeping the hidden state of each `[SEG]`
//! (the mask head's prompt).

use burn::prelude::*;

use super::layout::SpecialTokens;
use super::model::{ImageEncoderPart, LlmPart, ModelError};
use super::stepper::Stepper;

/// Where a sequence stands with respect to its depth span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanState {
    /// No `<d_start>` yet.
    Before,
    /// Inside the span with this many codes so far.
    Inside(usize),
    /// The span closed.
    After,
}

/// The decoding constraint of one sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanConstraint {
    pub state: SpanState,
    /// N, the codes a span must hold.
    pub span_len: usize,
    seg_seen: bool,
}

impl SpanConstraint {
    /// The state after the tokens already in the prompt (a prompt may end inside a span, e.g. with `<d_start>`).
    pub fn after_prompt(prompt: &[u32], sp: &SpecialTokens, span_len: usize) -> Self {
        let mut c = Self { state: SpanState::Before, span_len, seg_seen: false };
        let start = prompt.iter().rposition(|&t| t == sp.seg || t == sp.d_start || t == sp.d_end || sp.is_code(t));
        // only the answer part can hold perception tokens; replay it
        if let Some(s) = start {
            let first = prompt[..=s].iter().position(|&t| t == sp.seg || t == sp.d_start).unwrap_or(s);
            for &t in &prompt[first..] {
                c.advance(t, sp);
            }
        }
        c
    }

    /// Whether `token` may come next.
    pub fn allows(&self, token: u32, sp: &SpecialTokens) -> bool {
        let code = sp.is_code(token);
        match self.state {
            SpanState::Inside(k) if k < self.span_len => code,
            SpanState::Inside(_) => token == sp.d_end,
            SpanState::Before => !code && token != sp.d_end && !(token == sp.seg && self.seg_seen),
            SpanState::After => !code && token != sp.d_start && token != sp.d_end && token != sp.seg,
        }
    }

    /// Records `token`.
    pub fn advance(&mut self, token: u32, sp: &SpecialTokens) {
        if token == sp.seg {
            self.seg_seen = true;
        }
        self.state = match self.state {
            SpanState::Before if token == sp.d_start => SpanState::Inside(0),
            SpanState::Inside(k) if sp.is_code(token) => SpanState::Inside(k + 1),
            SpanState::Inside(_) if token == sp.d_end => SpanState::After,
            s => s,
        };
    }

    /// Sets every disallowed entry of a logits row to -inf.
    pub fn apply(&self, logits: &mut [f32], sp: &SpecialTokens) {
        for (t, l) in logits.iter_mut().enumerate() {
            if !self.allows(t as u32, sp) {
                *l = f32::NEG_INFINITY;
            }
        }
    }

    /// Which of the [`ConstraintKind::ALL`] allowed sets applies now.
    pub fn kind(&self) -> ConstraintKind {
        match self.state {
            SpanState::Before if self.seg_seen => ConstraintKind::BeforeAfterSeg,
            SpanState::Before => ConstraintKind::Before,
            SpanState::Inside(k) if k < self.span_len => ConstraintKind::InsideSpan,
            SpanState::Inside(_) => ConstraintKind::CloseSpan,
            SpanState::After => ConstraintKind::After,
        }
    }
}

/// The distinct allowed-token sets a [`SpanConstraint`] can be in: the allowed set depends only on this, so the
/// decoder keeps one additive mask per kind on the device and never copies logits to the host. The
/// discriminant is the kind's row in [`constraint_masks`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConstraintKind {
    Before = 0,
    BeforeAfterSeg = 1,
    InsideSpan = 2,
    CloseSpan = 3,
    After = 4,
}

impl ConstraintKind {
    pub const ALL: [ConstraintKind; 5] = [
        ConstraintKind::Before,
        ConstraintKind::BeforeAfterSeg,
        ConstraintKind::InsideSpan,
        ConstraintKind::CloseSpan,
        ConstraintKind::After,
    ];

    /// A constraint in this kind's state (span length 1 is enough to tell inside from closing).
    fn representative(self) -> SpanConstraint {
        let (state, seg_seen) = match self {
            ConstraintKind::Before => (SpanState::Before, false),
            ConstraintKind::BeforeAfterSeg => (SpanState::Before, true),
            ConstraintKind::InsideSpan => (SpanState::Inside(0), false),
            ConstraintKind::CloseSpan => (SpanState::Inside(1), false),
            ConstraintKind::After => (SpanState::After, false),
        };
        SpanConstraint { state, span_len: 1, seg_seen }
    }
}

/// The additive masks of every [`ConstraintKind`] over a vocabulary of `vocab` ids: `[5, V]`, 0 where the kind
/// allows the token and -inf where it does not (row order of [`ConstraintKind::ALL`]).
pub fn constraint_masks(vocab: usize, sp: &SpecialTokens, device: &Device) -> Tensor<2> {
    let mut table = vec![0f32; ConstraintKind::ALL.len() * vocab];
    for (k, kind) in ConstraintKind::ALL.iter().enumerate() {
        kind.representative().apply(&mut table[k * vocab..(k + 1) * vocab], sp);
    }
    Tensor::from_data(TensorData::new(table, [ConstraintKind::ALL.len(), vocab]), device) // [5, V]
}

/// One generated answer.
#[derive(Debug, Clone)]
pub struct Generated {
    /// Generated ids (up to and including the stop token, if reached).
    pub ids: Vec<u32>,
    /// Last hidden state at the `[SEG]` position `[d]`, when `[SEG]` was generated.
    pub seg_hidden: Option<Tensor<1>>,
    /// The prompt's image-token states `[T, d]` (last hidden states at its `<IMG_CONTEXT>` slots), which the
    /// mask decoder's grounding map reads; None for a text-only prompt.
    pub image_hidden: Option<Tensor<2>>,
}

impl Generated {
    /// Nothing generated yet, for a prompt with image-token states `image_hidden`.
    pub fn empty(image_hidden: Option<Tensor<2>>) -> Self {
        Self { ids: Vec::new(), seg_hidden: None, image_hidden }
    }
}

/// What generation reports as it goes (see [`generate_streaming`]).
#[derive(Debug)]
pub enum DecodeEvent<'a> {
    /// Row `row` generated `id`.
    Token { row: usize, id: u32 },
    /// Row `row`'s `[SEG]` hidden state `[d]` is known (right after `[SEG]` was fed back), with its prompt's
    /// image-token states `[T, d]` (None for a text-only prompt).
    SegHidden { row: usize, hidden: &'a Tensor<1>, image: Option<&'a Tensor<2>> },
}

/// Greedy constrained generation for a batch of prompts (left-padded together) whose `<IMG_CONTEXT>` slots take
/// the image tokens of `pixels` `[B, 3, p, p]` (None: text only), calling `on_event` as tokens and `[SEG]` states
/// appear. A row stops at `<|im_end|>`, after `max_new` tokens, or when `on_event` returns false for it (a
/// cancelled request); the batch goes on without it. `stepper` is an empty [`Stepper`] set up for the model (its
/// special tokens, span length, and whether rows keep their image-token states).
pub fn generate_streaming(
    image_part: &ImageEncoderPart,
    llm: &LlmPart,
    prompts: &[Vec<u32>],
    pixels: Option<Tensor<4>>,
    stepper: Stepper,
    max_new: usize,
    on_event: &mut dyn FnMut(DecodeEvent<'_>) -> bool,
) -> Result<Vec<Generated>, ModelError> {
    let image = pixels.map(|p| image_part.forward(p)); // [B, T, d]
    generate_from_image_tokens(llm, prompts, image, stepper, max_new, on_event)
}

/// [`generate_streaming`] on image tokens `[B, T, d]` already encoded (the serving graph's image encoder runs as
/// its own node).
pub fn generate_from_image_tokens(
    llm: &LlmPart,
    prompts: &[Vec<u32>],
    image: Option<Tensor<3>>,
    mut stepper: Stepper,
    max_new: usize,
    on_event: &mut dyn FnMut(DecodeEvent<'_>) -> bool,
) -> Result<Vec<Generated>, ModelError> {
    let b = prompts.len();
    let tags: Vec<usize> = (0..b).collect();
    stepper.admit(llm, prompts, image, &tags)?;
    let mut out: Vec<Option<Generated>> = vec![None; b];
    for _ in 0..max_new {
        if stepper.is_empty() {
            break;
        }
        for (tag, g) in stepper.step(llm, on_event)? {
            out[tag] = Some(g);
        }
    }
    for (tag, g) in stepper.drain() {
        out[tag] = Some(g);
    }
    Ok(out.into_iter().map(|g| g.unwrap_or_else(|| Generated::empty(None))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sp() -> SpecialTokens {
        SpecialTokens { seg: 10, d_start: 11, d_end: 12, code0: 13, num_codes: 4, im_end: 2, pad: 0, image_context: 5 }
    }

    #[test]
    fn the_state_machine_forces_exactly_n_codes() {
        let sp = sp();
        let mut c = SpanConstraint::after_prompt(&[1, 3], &sp, 3);
        assert!(c.allows(sp.seg, &sp) && c.allows(sp.d_start, &sp) && !c.allows(sp.code0, &sp));
        assert!(!c.allows(sp.d_end, &sp));
        c.advance(sp.seg, &sp);
        assert!(!c.allows(sp.seg, &sp), "[SEG] at most once");
        c.advance(sp.d_start, &sp);
        for k in 0..3 {
            assert_eq!(c.state, SpanState::Inside(k));
            assert!(c.allows(sp.code(1), &sp) && !c.allows(sp.d_end, &sp) && !c.allows(7, &sp));
            c.advance(sp.code(1), &sp);
        }
        assert!(c.allows(sp.d_end, &sp) && !c.allows(sp.code(0), &sp) && !c.allows(7, &sp));
        c.advance(sp.d_end, &sp);
        assert_eq!(c.state, SpanState::After);
        assert!(!c.allows(sp.d_start, &sp) && !c.allows(sp.code(2), &sp) && c.allows(7, &sp));
    }

    #[test]
    fn a_prompt_ending_in_the_span_resumes_it() {
        let sp = sp();
        let c = SpanConstraint::after_prompt(&[1, sp.seg, sp.d_start, sp.code(0)], &sp, 3);
        assert_eq!(c.state, SpanState::Inside(1));
        assert!(!c.allows(sp.seg, &sp));
    }

    #[test]
    fn the_device_masks_agree_with_the_state_machine_at_every_step() {
        let sp = sp();
        let vocab = 17;
        let masks = constraint_masks(vocab, &sp, &Device::flex()).into_data().try_to_vec::<f32>().expect("f32");
        let mut c = SpanConstraint::after_prompt(&[1], &sp, 3);
        let walk = [3, sp.seg, 4, sp.d_start, sp.code(0), sp.code(3), sp.code(1), sp.d_end, 7, sp.im_end];
        let mut seen = Vec::new();
        for &t in &walk {
            let row = &masks[c.kind() as usize * vocab..(c.kind() as usize + 1) * vocab];
            for (id, &m) in row.iter().enumerate() {
                assert_eq!(m == 0.0, c.allows(id as u32, &sp), "state {:?}, token {id}", c.state);
                assert!(m == 0.0 || m == f32::NEG_INFINITY);
            }
            seen.push(c.kind());
            c.advance(t, &sp);
        }
        for kind in ConstraintKind::ALL {
            assert!(seen.contains(&kind), "the walk never reached {kind:?}");
        }
    }
}
