//! The text-only recall task: a point question whose marked points are told instead of drawn. The "letter
//! level" pairs stand, in a random order, where the image would be ("<img>C 3, A 12, B 7</img>"), and the answer
//! is the point chain of thought in letter order, then the letter of the nearest point ("A 12, B 7, C 3. (A)").
//! To state a letter's level the LLM must look the value up by its key, the hop a from-scratch LLM does not learn
//! from image tokens (docs/points.md, section 9); in text it does, after enough sequences. This module makes the
//! samples; `recall_pretrain` trains and measures on them.

use rand::Rng;
use rand::seq::SliceRandom;

use super::layout::SpecialTokens;
use super::sequence::{POINT_LEVELS, PointLevel, point_chain};
use crate::tokenizer::{IMG_CONTEXT, TextTokenizer, chat_prompt_with};

/// The marker letters, in order.
pub const LETTERS: [&str; 5] = ["A", "B", "C", "D", "E"];

/// Fewest and most marked points of a question (HardBLINK's 3, 4 and 5).
pub const MIN_POINTS: usize = 3;
pub const MAX_POINTS: usize = 5;

/// Errors making the task from a model's tokenizer.
#[derive(Debug, thiserror::Error)]
pub enum RecallError {
    #[error("the tokenizer has no single token for `{0}` (was the model made with --point-reasoning?)")]
    MissingWord(String),
    #[error("tokenizing `{text}`: {reason}")]
    Tokenize { text: String, reason: String },
    #[error("the tokenizer does not split `{text}` into one token per word: {reason}")]
    Split { text: String, reason: String },
    #[error("a recall question: {0}")]
    Question(String),
}

/// One recall question, tokenised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecallSample {
    /// Prompt, answer and `<|im_end|>`.
    pub ids: Vec<u32>,
    /// Index of the first target in `ids` (every later token is one): the answer's first token, or with a span the
    /// chain's first (the span's random codes are not targets).
    pub answer_start: usize,
    /// Each stated level in the chain: its index in `ids` and the level.
    pub levels: Vec<(usize, u32)>,
    /// Index of the answer letter in `ids`.
    pub letter_at: usize,
    /// The nearest point: `0` for A.
    pub nearest: usize,
    /// Number of marked points.
    pub points: usize,
}

/// The task for one tokenizer and question text.
#[derive(Debug, Clone)]
pub struct RecallTask {
    tok: TextTokenizer,
    question: String,
    image_last: bool,
    sp: SpecialTokens,
    /// Token of each level `0..POINT_LEVELS`.
    level_ids: Vec<u32>,
    /// Token of each letter.
    letter_ids: Vec<u32>,
    /// Codes in a span, and the share of questions that get one (0: none).
    span: (usize, f64),
}

impl RecallTask {
    /// The task for `question` (a point question's text, or "" for none), laid out like the model's prompts
    /// (`image_last`). Every letter and level must be one token of `tok`.
    pub fn new(tok: &TextTokenizer, sp: &SpecialTokens, question: &str, image_last: bool) -> Result<Self, RecallError> {
        let one = |word: &str| tok.token_id(word).ok_or_else(|| RecallError::MissingWord(word.to_string()));
        let level_ids = (0..POINT_LEVELS).map(|l| one(&l.to_string())).collect::<Result<Vec<_>, _>>()?;
        let letter_ids = LETTERS.iter().map(|l| one(l)).collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            tok: tok.clone(),
            question: question.to_string(),
            image_last,
            sp: *sp,
            level_ids,
            letter_ids,
            span: (0, 0.0),
        })
    }

    /// The task where a share `share` (in [0, 1]) of the questions answer with a span of `len` random depth codes
    /// before the chain, as the full model does: the chain then looks its levels up across the span, as far back
    /// as the full model's chain must reach for its image.
    pub fn with_span(mut self, len: usize, share: f64) -> Self {
        self.span = (len, share.clamp(0.0, 1.0));
        self
    }

    /// The token of level `l` (None past the last level).
    pub fn level_id(&self, l: u32) -> Option<u32> {
        self.level_ids.get(l as usize).copied()
    }

    /// The tokens of the levels, in order.
    pub fn level_ids(&self) -> &[u32] {
        &self.level_ids
    }

    /// The tokens of the letters, in order.
    pub fn letter_ids(&self) -> &[u32] {
        &self.letter_ids
    }

    fn encode(&self, text: &str) -> Result<Vec<u32>, RecallError> {
        self.tok.encode(text).map_err(|e| RecallError::Tokenize { text: text.to_string(), reason: e.to_string() })
    }

    /// A fresh question: 3 to 5 points with distinct random levels, told in a random order.
    pub fn sample(&self, rng: &mut impl Rng) -> Result<RecallSample, RecallError> {
        let n = rng.random_range(MIN_POINTS..=MAX_POINTS);
        let mut levels: Vec<u32> = (0..POINT_LEVELS).collect();
        levels.shuffle(rng);
        levels.truncate(n);
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(rng);
        let (len, share) = self.span;
        let num_codes = self.sp.num_codes;
        let codes: Vec<usize> = if len > 0 && num_codes > 0 && rng.random_bool(share) {
            (0..len).map(|_| rng.random_range(0..num_codes)).collect()
        } else {
            Vec::new()
        };
        self.sample_with(&levels, &order, &codes)
    }

    /// [`Self::sample_of`] with a span of the depth codes `codes` before the chain (none when empty).
    pub fn sample_with(&self, levels: &[u32], order: &[usize], codes: &[usize]) -> Result<RecallSample, RecallError> {
        let mut s = self.sample_of(levels, order)?;
        if codes.is_empty() {
            return Ok(s);
        }
        let sp = &self.sp;
        if let Some(k) = codes.iter().find(|&&k| k >= sp.num_codes) {
            return Err(RecallError::Question(format!("depth code {k} is not one of the {} codes", sp.num_codes)));
        }
        let mut span = Vec::with_capacity(codes.len() + 2);
        span.push(sp.d_start);
        span.extend(codes.iter().map(|&k| sp.code(k)));
        span.push(sp.d_end);
        let shift = span.len();
        s.ids.splice(s.answer_start..s.answer_start, span);
        s.answer_start += shift;
        s.levels.iter_mut().for_each(|(at, _)| *at += shift);
        s.letter_at += shift;
        Ok(s)
    }

    /// The question whose point `i` (letter `LETTERS[i]`) has level `levels[i]`, told in the order `order`.
    pub fn sample_of(&self, levels: &[u32], order: &[usize]) -> Result<RecallSample, RecallError> {
        let n = levels.len();
        if !(1..=LETTERS.len()).contains(&n) {
            return Err(RecallError::Question(format!("{n} points, not 1 to {}", LETTERS.len())));
        }
        if let Some(l) = levels.iter().find(|&&l| l >= POINT_LEVELS) {
            return Err(RecallError::Question(format!("level {l} is not below {POINT_LEVELS}")));
        }
        let mut sorted = order.to_vec();
        sorted.sort_unstable();
        if sorted.iter().copied().ne(0..n) {
            return Err(RecallError::Question(format!("the order {order:?} is not a permutation of the {n} points")));
        }
        let points: Vec<PointLevel> =
            levels.iter().zip(LETTERS).map(|(&level, label)| PointLevel { label, level }).collect();
        let told: Vec<String> = order.iter().map(|&i| format!("{} {}", LETTERS[i], levels[i])).collect();
        // the model's own prompt with one image token, whose place the told pairs take
        let prompt =
            chat_prompt_with(&self.question, 1, None, self.image_last).replacen(IMG_CONTEXT, &told.join(", "), 1);
        let nearest = (0..levels.len()).max_by_key(|&i| levels[i]).unwrap_or(0);
        let chain = point_chain(&points);
        let letter = format!(" ({})", LETTERS[nearest]); // the space is a token of the word tokenizer

        let mut ids = self.encode(&prompt)?;
        let answer_start = ids.len();
        let chain_ids = self.encode(&chain)?;
        let stated: Vec<(usize, u32)> = chain_ids
            .iter()
            .enumerate()
            .filter_map(|(k, t)| self.level_ids.iter().position(|l| l == t).map(|l| (answer_start + k, l as u32)))
            .collect();
        if stated.iter().map(|&(_, l)| l).ne(levels.iter().copied()) {
            return Err(RecallError::Split { text: chain, reason: format!("levels found at {stated:?}") });
        }
        ids.extend(chain_ids);
        let letter_ids = self.encode(&letter)?;
        let Some(k) = letter_ids.iter().position(|&t| t == self.letter_ids[nearest]) else {
            return Err(RecallError::Split { text: letter, reason: format!("no letter token in {letter_ids:?}") });
        };
        let letter_at = ids.len() + k;
        ids.extend(letter_ids);
        ids.push(self.sp.im_end);
        Ok(RecallSample { ids, answer_start, levels: stated, letter_at, nearest, points: levels.len() })
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;
    use crate::perceptio::sequence::point_chain_vocabulary;
    use crate::perceptio::tokens::{build_word_tokenizer, special_tokens};

    const QUESTION: &str = "Which point is the closest to the camera?";

    fn task() -> RecallTask {
        let chain = point_chain_vocabulary();
        let tok = build_word_tokenizer([QUESTION, chain.as_str(), "(A) (B) (C) (D) (E)"], 8, 1).unwrap();
        let sp = special_tokens(&tok, 8).unwrap();
        RecallTask::new(&tok, &sp, QUESTION, true).unwrap()
    }

    #[test]
    fn a_sample_tells_the_pairs_where_the_image_goes_and_answers_with_the_chain() {
        let task = task();
        let s = task.sample_of(&[4, 17, 9], &[2, 0, 1]).unwrap();
        let text = task.tok.decode(&s.ids, false).unwrap();
        let compact: String = text.split_whitespace().collect();
        assert!(compact.contains("camera?<img>C9,A4,B17</img><|im_end|>"), "{text}");
        let answer = task.tok.decode(&s.ids[s.answer_start..], false).unwrap();
        assert_eq!(answer.split_whitespace().collect::<String>(), "A4,B17,C9.(B)<|im_end|>", "{answer}");
        assert_eq!(s.nearest, 1);
        assert_eq!(s.points, 3);
        let levels: Vec<u32> = s.levels.iter().map(|&(_, l)| l).collect();
        assert_eq!(levels, vec![4, 17, 9]);
        for &(at, l) in &s.levels {
            assert_eq!(Some(s.ids[at]), task.level_id(l));
        }
        assert_eq!(s.ids[s.letter_at], task.letter_ids()[1]);
        // the separately encoded pieces are what the whole answer encodes to
        let whole = task
            .tok
            .encode(&format!(
                "{} (B)",
                point_chain(&[
                    PointLevel { label: "A", level: 4 },
                    PointLevel { label: "B", level: 17 },
                    PointLevel { label: "C", level: 9 },
                ])
            ))
            .unwrap();
        assert_eq!(&s.ids[s.answer_start..s.ids.len() - 1], &whole[..]);
    }

    #[test]
    fn a_span_of_codes_goes_between_the_prompt_and_the_chain() {
        let task = task();
        let plain = task.sample_of(&[4, 17, 9], &[2, 0, 1]).unwrap();
        let spanned = task.sample_with(&[4, 17, 9], &[2, 0, 1], &[3, 0, 7]).unwrap();
        let text = task.tok.decode(&spanned.ids, false).unwrap().split_whitespace().collect::<String>();
        assert!(text.contains("assistant<d_start><d_3><d_0><d_7><d_end>A4,B17,C9.(B)<|im_end|>"), "{text}");
        assert_eq!(spanned.answer_start, plain.answer_start + 5);
        assert_eq!(spanned.letter_at, plain.letter_at + 5);
        for (&(at, l), &(at0, l0)) in spanned.levels.iter().zip(&plain.levels) {
            assert_eq!((at, l), (at0 + 5, l0));
            assert_eq!(Some(spanned.ids[at]), task.level_id(l));
        }
        // half of fresh questions carry a span of 4 codes
        let task = task.with_span(4, 0.5);
        let mut rng = StdRng::seed_from_u64(1);
        let spans = (0..400)
            .filter(|_| {
                let s = task.sample(&mut rng).unwrap();
                s.ids[s.answer_start - 1] == task.sp.d_end
            })
            .count();
        assert!((160..240).contains(&spans), "{spans} of 400");
    }

    #[test]
    fn fresh_samples_have_three_to_five_distinct_levels() {
        let task = task();
        let mut rng = StdRng::seed_from_u64(3);
        let mut counts = [0usize; MAX_POINTS + 1];
        for _ in 0..300 {
            let s = task.sample(&mut rng).unwrap();
            counts[s.points] += 1;
            let mut levels: Vec<u32> = s.levels.iter().map(|&(_, l)| l).collect();
            let top = *levels.iter().max().unwrap();
            assert_eq!(levels[s.nearest], top);
            levels.sort_unstable();
            levels.dedup();
            assert_eq!(levels.len(), s.points, "distinct levels");
        }
        assert_eq!(counts[..MIN_POINTS].iter().sum::<usize>(), 0);
        assert!(counts[MIN_POINTS..].iter().all(|&c| c > 70), "{counts:?}");
    }

    #[test]
    fn malformed_questions_are_refused() {
        let task = task();
        let err = |r: Result<RecallSample, RecallError>| r.unwrap_err().to_string();
        assert!(err(task.sample_of(&[1, 2, 3, 4, 5, 6], &[0, 1, 2, 3, 4, 5])).contains("6 points, not 1 to 5"));
        assert!(err(task.sample_of(&[1, 20], &[0, 1])).contains("level 20 is not below 20"));
        assert!(err(task.sample_of(&[1, 2], &[0, 0])).contains("not a permutation of the 2 points"));
        assert!(err(task.sample_with(&[1, 2], &[1, 0], &[8])).contains("depth code 8 is not one of the 8 codes"));
        assert_eq!(task.level_id(20), None);
    }

    #[test]
    fn a_tokenizer_without_the_chain_words_is_refused() {
        let tok = build_word_tokenizer([QUESTION], 8, 1).unwrap();
        let sp = special_tokens(&tok, 8).unwrap();
        let err = RecallTask::new(&tok, &sp, QUESTION, true).unwrap_err().to_string();
        assert!(err.contains("no single token for `0`") && err.contains("--point-reasoning"), "{err}");
    }
}
