//! Step-wise constrained decoding of a batch that sequences join and leave between steps (continuous batching):
//! a [`Stepper`] holds the running rows, their KV cache and span constraints; `admit` prefills new prompts and
//! merges them into the running batch, `step` decodes one token for every row and drops the rows that finished.
//! Rows carry the caller's tags, and every event names its row by tag.

use burn::prelude::*;

use super::decode::{DecodeEvent, Generated, SpanConstraint, constraint_masks};
use super::heads::image_hidden;
use super::layout::SpecialTokens;
use super::model::{LlmPart, ModelError};
use super::positions::PositionCounter;
use crate::llm::{KvCache, left_pad};

/// One running sequence.
struct Row {
    tag: usize,
    constraint: SpanConstraint,
    /// Places the row's tokens (after its prompt) under the LLM's position rule.
    positions: PositionCounter,
    out: Generated,
}

/// A running batch of greedy, span-constrained generations.
pub struct Stepper {
    sp: SpecialTokens,
    span_len: usize,
    rows: Vec<Row>,
    cache: Option<KvCache>,
    /// The last hidden state of every row `[B, 1, d]`.
    last: Option<Tensor<3>>,
    /// The additive constraint masks `[5, V]` (made on the first admission).
    masks: Option<Tensor<2>>,
    /// Keep each row's image-token states (`Generated::image_hidden`): only a mask decoder with the grounding map
    /// reads them, and they cost `T x d` per running row.
    keep_image_states: bool,
}

impl Stepper {
    pub fn new(sp: SpecialTokens, span_len: usize) -> Self {
        Self { sp, span_len, rows: Vec::new(), cache: None, last: None, masks: None, keep_image_states: false }
    }

    /// Whether admitted rows keep their image-token states (off by default; on for models with `seg_grounding`).
    pub fn keeping_image_states(mut self, keep: bool) -> Self {
        self.keep_image_states = keep;
        self
    }

    /// Rows running.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The tags of the running rows, in row order.
    pub fn tags(&self) -> Vec<usize> {
        self.rows.iter().map(|r| r.tag).collect()
    }

    /// Prefills `prompts` (their `<IMG_CONTEXT>` slots take `image` `[n, T, d]`; None: text only) and adds them to
    /// the running batch under `tags`.
    pub fn admit(
        &mut self,
        llm: &LlmPart,
        prompts: &[Vec<u32>],
        image: Option<Tensor<3>>,
        tags: &[usize],
    ) -> Result<(), ModelError> {
        let n = prompts.len();
        if tags.len() != n {
            return Err(ModelError::Shape { what: "tags", expected: format!("{n}"), got: format!("{}", tags.len()) });
        }
        if n == 0 {
            return Ok(());
        }
        let (ids, pad) = left_pad(prompts, self.sp.pad);
        let x = llm.embed(&ids, image)?; // [n, S, d]
        let mut counters: Vec<PositionCounter> = prompts.iter().map(|_| PositionCounter::new(llm.positions)).collect();
        // the prompts' positions, left-padded like their ids (padding is masked; its position is never read)
        let placed: Option<Vec<Vec<usize>>> = llm.positions.map(|_| {
            prompts
                .iter()
                .zip(&mut counters)
                .zip(&pad)
                .map(|((p, c), row_pad)| {
                    let pads = row_pad.len() - p.len();
                    std::iter::repeat_n(0, pads).chain(p.iter().map(|&t| c.place(t))).collect()
                })
                .collect()
        });
        let lm = &llm.language_model;
        let mut cache = KvCache::new(lm.model.layers.len(), n);
        let h = lm.model.forward_embeds_at(x, Some(&pad), Some(&mut cache), placed.as_deref()); // [n, S, d]
        let [_, s, d] = h.dims();
        let rows: Vec<usize> = (0..n).collect();
        let images = self
            .keep_image_states
            .then(|| image_hidden(h.clone(), &ids, &rows, llm.image_token_id as u32)) // [n, T, d]
            .flatten();
        let last = h.slice([0..n, s - 1..s, 0..d]); // [n, 1, d]
        if self.masks.is_none() {
            self.masks = Some(constraint_masks(llm.vocab_size(), &self.sp, &last.device())); // [5, V]
        }
        self.last = Some(match self.last.take() {
            Some(running) => Tensor::cat(vec![running, last], 0), // [B + n, 1, d]
            None => last,
        });
        match &mut self.cache {
            Some(running) => running.append(cache),
            None => self.cache = Some(cache),
        }
        for (i, ((p, &tag), positions)) in prompts.iter().zip(tags).zip(counters).enumerate() {
            let constraint = SpanConstraint::after_prompt(p, &self.sp, self.span_len);
            let image = images.as_ref().map(|all| {
                let [_, t, d] = all.dims();
                all.clone().slice([i..i + 1, 0..t, 0..d]).reshape([t, d]) // [T, d]
            });
            self.rows.push(Row { tag, constraint, positions, out: Generated::empty(image) });
        }
        Ok(())
    }

    /// Keeps the rows at `keep` (in order) and returns the others' generations with their tags.
    fn drop_rows(&mut self, keep: &[usize]) -> Vec<(usize, Generated)> {
        if keep.len() == self.rows.len() {
            return Vec::new();
        }
        if let Some(cache) = &mut self.cache {
            cache.retain(keep);
        }
        if let Some(last) = self.last.take() {
            let idx: Vec<i64> = keep.iter().map(|&i| i as i64).collect();
            let idx = Tensor::<1, Int>::from_data(TensorData::new(idx, [keep.len()]), &last.device());
            self.last = Some(last.select(0, idx)); // [B', 1, d]
        }
        let mut kept_at = vec![false; self.rows.len()];
        for &i in keep {
            kept_at[i] = true;
        }
        let mut finished = Vec::new();
        let mut kept = Vec::with_capacity(keep.len());
        for (i, row) in std::mem::take(&mut self.rows).into_iter().enumerate() {
            if kept_at[i] {
                kept.push(row);
            } else {
                finished.push((row.tag, row.out));
            }
        }
        self.rows = kept;
        if self.rows.is_empty() {
            self.cache = None;
            self.last = None;
        }
        finished
    }

    /// Decodes one token for every row. A row finishes at `<|im_end|>`, or when `on_event` returns false for its
    /// token or its `[SEG]` state (a cancelled request); finished rows leave the batch and are returned with their
    /// tags. The others' tokens are fed back, and a `[SEG]` just fed reports its hidden state.
    pub fn step(
        &mut self,
        llm: &LlmPart,
        on_event: &mut dyn FnMut(DecodeEvent<'_>) -> bool,
    ) -> Result<Vec<(usize, Generated)>, ModelError> {
        let (Some(last), Some(masks)) = (self.last.clone(), self.masks.clone()) else { return Ok(Vec::new()) };
        let b = self.rows.len();
        let v = llm.vocab_size();
        let logits = llm.logits(last).reshape([b, v]); // [B, V]
        let kinds: Vec<i64> = self.rows.iter().map(|r| r.constraint.kind() as i64).collect();
        let kinds = Tensor::<1, Int>::from_data(TensorData::new(kinds, [b]), &logits.device()); // [B]
        let best = (logits + masks.select(0, kinds)).argmax(1); // [B, 1]
        let best: Vec<i64> = best.into_data().convert::<i64>().try_to_vec::<i64>().map_err(|e| ModelError::Shape {
            what: "argmax",
            expected: "int data".into(),
            got: format!("{e:?}"),
        })?;
        let mut keep = Vec::with_capacity(b);
        for (i, row) in self.rows.iter_mut().enumerate() {
            let next = best[i] as u32;
            row.out.ids.push(next);
            row.constraint.advance(next, &self.sp);
            let go_on = on_event(DecodeEvent::Token { row: row.tag, id: next });
            if next != self.sp.im_end && go_on {
                keep.push(i);
            }
        }
        let mut finished = self.drop_rows(&keep);
        if self.rows.is_empty() {
            return Ok(finished);
        }
        let feed: Vec<Vec<u32>> = self.rows.iter().map(|r| vec![*r.out.ids.last().expect("just pushed")]).collect();
        let x = llm.embed(&feed, None)?; // [B', 1, d]
        let step_pad: Vec<Vec<bool>> = vec![vec![false]; feed.len()];
        let placed: Option<Vec<Vec<usize>>> = llm
            .positions
            .map(|_| self.rows.iter_mut().zip(&feed).map(|(r, f)| vec![r.positions.place(f[0])]).collect());
        let cache = self.cache.as_mut().expect("rows are running");
        let last = llm.language_model.model.forward_embeds_at(x, Some(&step_pad), Some(cache), placed.as_deref()); // [B', 1, d]
        let d = last.dims()[2];
        let mut keep: Vec<usize> = Vec::with_capacity(feed.len());
        for (i, row) in self.rows.iter_mut().enumerate() {
            let mut go_on = true;
            if feed[i][0] == self.sp.seg && row.out.seg_hidden.is_none() {
                let hidden = last.clone().slice([i..i + 1, 0..1, 0..d]).reshape([d]); // [d]
                let image = row.out.image_hidden.as_ref();
                go_on = on_event(DecodeEvent::SegHidden { row: row.tag, hidden: &hidden, image });
                row.out.seg_hidden = Some(hidden);
            }
            if go_on {
                keep.push(i);
            }
        }
        self.last = Some(last);
        finished.extend(self.drop_rows(&keep));
        Ok(finished)
    }

    /// Ends every running row (e.g. at a token limit) and returns their generations with their tags.
    pub fn drain(&mut self) -> Vec<(usize, Generated)> {
        self.drop_rows(&[])
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::Distribution;

    use super::*;
    use crate::perceptio::PerceptioConfig;
    use crate::perceptio::decode::generate_from_image_tokens;

    const BASE: usize = 40;
    const IMG: u32 = 5;

    fn sp() -> SpecialTokens {
        let b = BASE as u32;
        SpecialTokens {
            seg: b,
            d_start: b + 1,
            d_end: b + 2,
            code0: b + 3,
            num_codes: 128,
            im_end: 2,
            pad: 0,
            image_context: IMG,
        }
    }

    /// A prompt with the 16 image slots of the tiny preset and `extra` text ids.
    fn prompt(extra: &[u32]) -> Vec<u32> {
        let mut p = vec![1, 7];
        p.extend(std::iter::repeat_n(IMG, 16));
        p.extend_from_slice(extra);
        p
    }

    /// The tiny LLM, with the depth span placed at the image's positions when `at_image` (its 16 image tokens
    /// then take a 16-code span).
    fn tiny_llm(device: &Device, at_image: bool) -> LlmPart {
        let mut cfg = PerceptioConfig::tiny(BASE, IMG as usize);
        cfg.span_at_image_positions = at_image;
        cfg.init_llm(device).unwrap()
    }

    #[test]
    fn sequences_that_join_a_running_batch_generate_what_they_generate_alone() {
        joined_rows_generate_what_they_generate_alone(false);
    }

    #[test]
    fn under_the_span_position_rule_joined_rows_generate_what_they_generate_alone() {
        joined_rows_generate_what_they_generate_alone(true);
    }

    fn joined_rows_generate_what_they_generate_alone(at_image: bool) {
        let device = Device::flex();
        device.seed(3);
        let llm = tiny_llm(&device, at_image);
        let sp = sp();
        // `b` is longer than `a` after its first steps (the running batch is left-padded), `c` shorter (it is);
        // `c` opens its span in the prompt
        let prompts = [prompt(&[9, 10, 11]), prompt(&[12; 14]), prompt(&[13, sp.d_start])];
        let images: Vec<Tensor<3>> =
            (0..3).map(|_| Tensor::<3>::random([1, 16, 128], Distribution::Normal(0.0, 1.0), &device)).collect();
        let limits = [40usize, 12, 9];
        let alone: Vec<Vec<u32>> = (0..3)
            .map(|i| {
                let one = [prompts[i].clone()];
                let g = generate_from_image_tokens(
                    &llm,
                    &one,
                    Some(images[i].clone()),
                    Stepper::new(sp, 16),
                    limits[i],
                    &mut |_| true,
                );
                g.unwrap().remove(0).ids
            })
            .collect();

        let mut stepper = Stepper::new(sp, 16);
        let mut got: Vec<Option<Vec<u32>>> = vec![None; 3];
        let mut counts = [0usize; 3];
        let joins = [(0usize, 0usize), (5, 1), (8, 2)]; // (step, row)
        for step in 0..60 {
            for &(at, i) in &joins {
                if at == step {
                    stepper.admit(&llm, &prompts[i..i + 1], Some(images[i].clone()), &[i]).unwrap();
                }
            }
            if step == 8 {
                assert_eq!(stepper.tags(), vec![0, 1, 2], "all three run together after the joins");
            }
            let mut on_event = |e: DecodeEvent<'_>| match e {
                DecodeEvent::Token { row, .. } => {
                    counts[row] += 1;
                    counts[row] < limits[row]
                }
                DecodeEvent::SegHidden { .. } => true,
            };
            for (tag, g) in stepper.step(&llm, &mut on_event).unwrap() {
                got[tag] = Some(g.ids);
            }
        }
        assert!(stepper.is_empty());
        for i in 0..3 {
            assert_eq!(got[i].as_ref(), Some(&alone[i]), "row {i}: joined and alone generate the same ids");
        }
    }

    #[test]
    fn under_the_span_position_rule_each_decoded_token_is_what_the_teacher_forced_pass_predicts() {
        let device = Device::flex();
        device.seed(5);
        let sp = sp();
        let llm = tiny_llm(&device, true);
        let image = Tensor::<3>::random([1, 16, 128], Distribution::Normal(0.0, 1.0), &device); // [1, 16, d]
        let p = prompt(&[9, 10, sp.d_start]);
        let one = [p.clone()];
        let ids_out =
            generate_from_image_tokens(&llm, &one, Some(image.clone()), Stepper::new(sp, 16), 24, &mut |_| true);
        let ids_out = ids_out.unwrap().remove(0).ids;
        assert_eq!(ids_out.len(), 24);
        assert!(ids_out[..16].iter().all(|&t| sp.is_code(t)) && ids_out[16] == sp.d_end, "{ids_out:?}");
        // the whole sequence in one teacher-forced pass: each generated token is the constrained arg-max there
        let ids = [[p.clone(), ids_out[..23].to_vec()].concat()];
        let v = llm.vocab_size();
        let logits = |llm: &LlmPart| -> Vec<f32> {
            let out = llm.forward(&ids, Some(image.clone())).unwrap();
            out.logits.into_data().convert::<f32>().try_to_vec::<f32>().unwrap() // [1, S, V]
        };
        let forced = logits(&llm);
        let mut c = SpanConstraint::after_prompt(&p, &sp, 16);
        for (j, &t) in ids_out.iter().enumerate() {
            let at = p.len() - 1 + j;
            let mut row = forced[at * v..(at + 1) * v].to_vec();
            c.apply(&mut row, &sp);
            let best = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            assert!(best - row[t as usize] < 1e-3, "token {j} ({t}): {} below the best {best}", row[t as usize]);
            c.advance(t, &sp);
        }
        // and the rule is what placed them: one position per token gives other logits from the first code on
        let plain = LlmPart { positions: None, ..llm.clone() };
        let sequential = logits(&plain);
        let at = p.len() * v; // the logits after the first code
        let diff = forced[at..].iter().zip(&sequential[at..]).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        let same = forced[..at].iter().zip(&sequential[..at]).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(diff > 1e-3 && same < 1e-5, "after the first code {diff}, before it {same}");
    }

    #[test]
    fn each_row_keeps_its_prompts_image_states_as_a_teacher_forced_pass_computes_them() {
        let device = Device::flex();
        device.seed(4);
        let llm = PerceptioConfig::tiny(BASE, IMG as usize).init_llm(&device).unwrap();
        // different lengths, so the shorter prompt is left-padded in the batch
        let prompts = [prompt(&[9, 10, 11, 12, 13]), prompt(&[14])];
        let images = Tensor::<3>::random([2, 16, 128], Distribution::Normal(0.0, 1.0), &device); // [2, 16, d]
        let mut stepper = Stepper::new(sp(), 100).keeping_image_states(true);
        stepper.admit(&llm, &prompts, Some(images.clone()), &[0, 1]).unwrap();
        let mut got: Vec<(usize, Generated)> = stepper.drain();
        got.sort_by_key(|(tag, _)| *tag);
        for (i, (_, g)) in got.into_iter().enumerate() {
            let kept = g.image_hidden.expect("an image prompt keeps its image states"); // [16, d]
            let one = [prompts[i].clone()];
            let out = llm.forward(&one, Some(images.clone().narrow(0, i, 1))).unwrap();
            let want = image_hidden(out.hidden, &one, &[0], IMG).unwrap().reshape([16, 128]); // [16, d]
            let diff = (kept - want).abs().max().into_scalar::<f32>();
            assert!(diff < 1e-4, "row {i}: image states differ by {diff}");
        }
        let mut text_only = Stepper::new(sp(), 100).keeping_image_states(true);
        text_only.admit(&llm, &[vec![1, 7, 9]], None, &[0]).unwrap();
        assert!(text_only.drain()[0].1.image_hidden.is_none(), "a text-only prompt has no image states");
        // by default rows keep none (models without the grounding map never read them)
        let mut plain = Stepper::new(sp(), 100);
        plain.admit(&llm, &prompts[..1], Some(images.narrow(0, 0, 1)), &[0]).unwrap();
        assert!(plain.drain()[0].1.image_hidden.is_none(), "kept without being asked for");
    }
}
