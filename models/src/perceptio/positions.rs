//! Position ids of the LLM's tokens. By default every token takes the next position (Qwen2's 1D RoPE). With the
//! config's `span_at_image_positions`, the k-th code of a depth span takes the position of the prompt's k-th image
//! token: the span describes the image cell by cell, so each code sits where its cell sits, and the text after the
//! span (`<d_end>` on) goes on from the position after `<d_start>`. The answer then lies as close to the image as it
//! does without a span. Training, prefill and every decoding step place tokens through one [`PositionCounter`].

/// The tokens the rule looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpanPositions {
    /// `<IMG_CONTEXT>`.
    pub image_token: u32,
    /// `<d_start>`.
    pub d_start: u32,
    /// `<d_0>`; code `k` is `code0 + k`.
    pub code0: u32,
    /// K, the codebook size.
    pub num_codes: usize,
}

impl SpanPositions {
    fn is_code(&self, t: u32) -> bool {
        t >= self.code0 && ((t - self.code0) as usize) < self.num_codes
    }
}

/// Places one sequence's tokens, one at a time, under a rule (None: one position after another).
#[derive(Clone, Debug, Default)]
pub struct PositionCounter {
    rule: Option<SpanPositions>,
    /// The next free position.
    next: usize,
    /// Positions of the image tokens seen so far.
    image: Vec<usize>,
    /// Codes placed in the open span (None outside a span).
    in_span: Option<usize>,
}

impl PositionCounter {
    pub fn new(rule: Option<SpanPositions>) -> Self {
        Self { rule, ..Self::default() }
    }

    /// The position of `token`, the next token of the sequence.
    pub fn place(&mut self, token: u32) -> usize {
        if let Some(rule) = self.rule {
            if let Some(k) = self.in_span.take() {
                if rule.is_code(token) {
                    self.in_span = Some(k + 1);
                    // a span longer than the image block goes on at the next free position
                    if let Some(&p) = self.image.get(k) {
                        return p;
                    }
                }
            }
            if token == rule.image_token {
                self.image.push(self.next);
            } else if token == rule.d_start {
                self.in_span = Some(0);
            }
        }
        let p = self.next;
        self.next += 1;
        p
    }

    /// The positions of a whole sequence.
    pub fn positions(rule: Option<SpanPositions>, ids: &[u32]) -> Vec<usize> {
        let mut c = Self::new(rule);
        ids.iter().map(|&t| c.place(t)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULE: SpanPositions = SpanPositions { image_token: 5, d_start: 11, code0: 20, num_codes: 4 };

    #[test]
    fn codes_take_their_image_tokens_positions_and_the_text_after_the_span_follows_d_start() {
        // q q <img> I I I </img> A <d_start> c c c <d_end> t t
        let ids = [1, 2, 3, 5, 5, 5, 4, 9, 11, 21, 20, 23, 12, 7, 8];
        let got = PositionCounter::positions(Some(RULE), &ids);
        assert_eq!(got, vec![0, 1, 2, 3, 4, 5, 6, 7, 8, 3, 4, 5, 9, 10, 11]);
        // without the rule: one after another
        assert_eq!(PositionCounter::positions(None, &ids), (0..ids.len()).collect::<Vec<_>>());
    }

    #[test]
    fn a_span_longer_than_the_image_goes_on_at_the_next_position_and_text_ends_a_span() {
        let ids = [5, 5, 11, 20, 21, 22, 12, 7];
        assert_eq!(PositionCounter::positions(Some(RULE), &ids), vec![0, 1, 2, 0, 1, 3, 4, 5]);
        // a text token inside a span closes it: a code after it is placed as text
        let ids = [5, 11, 20, 7, 21];
        assert_eq!(PositionCounter::positions(Some(RULE), &ids), vec![0, 1, 0, 2, 3]);
        // no image: the codes are placed as text
        let ids = [11, 20, 21, 12];
        assert_eq!(PositionCounter::positions(Some(RULE), &ids), vec![0, 1, 2, 3]);
    }

    #[test]
    fn placing_one_token_at_a_time_gives_the_whole_sequences_positions() {
        let ids = [1, 5, 5, 5, 9, 11, 22, 21, 20, 12, 7];
        let whole = PositionCounter::positions(Some(RULE), &ids);
        let mut c = PositionCounter::new(Some(RULE));
        let prompt: Vec<usize> = ids[..6].iter().map(|&t| c.place(t)).collect();
        let rest: Vec<usize> = ids[6..].iter().map(|&t| c.place(t)).collect();
        assert_eq!([prompt, rest].concat(), whole);
    }
}
