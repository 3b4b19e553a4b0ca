//! Prompt and answer templates per task, with the enforced answer order `[SEG]` -> depth span -> text: the chat
//! prompt (shared with inference), the tokenised training [`Sequence`] and its layout record, the router's inverse
//! ([`parse_answer`]) and batching.

use std::fmt;
use std::str::FromStr;

use burn::config::Config;

use super::layout::{Sequence, SpecialTokens, TokenBatch};
use crate::tokenizer::{TextTokenizer, TokenizerError, chat_prompt_with};

/// Errors of sequence building; each names the sample.
#[derive(Debug, thiserror::Error)]
pub enum SequenceError {
    #[error("unknown task {value:?} (expected referring, points, depth or vqa)")]
    UnknownTask { value: String },
    #[error("sample {id}: {source}")]
    Tokenize {
        id: String,
        #[source]
        source: TokenizerError,
    },
    #[error("sample {id}: the {part} contains the token id {token}, which would break the token layout")]
    ForbiddenToken { id: String, part: &'static str, token: u32 },
    #[error("sample {id}: the prompt has {found} image tokens, expected {expected}")]
    ImageTokens { id: String, found: usize, expected: usize },
    #[error("sample {id}: the answer needs a depth span but the sample has no depth codes")]
    MissingCodes { id: String },
    #[error(
        "sample {id}: the point chain of thought needs the marked points' labels and depth levels, but the sample has none"
    )]
    MissingPoints { id: String },
    #[error("sample {id}: point {label} has depth level {level}, above the highest ({max})")]
    BadLevel { id: String, label: String, level: u32, max: u32 },
    #[error("sample {id}: depth code {value} at position {index} is out of range (codebook size {num_codes})")]
    BadCode { id: String, index: usize, value: u32, num_codes: usize },
    #[error("sample {id}: {len} tokens is longer than max_len {max_len}")]
    TooLong { id: String, len: usize, max_len: usize },
}

/// The dataset's `task` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Task {
    Referring,
    Points,
    Depth,
    Vqa,
}

impl Task {
    pub const ALL: [Task; 4] = [Task::Referring, Task::Points, Task::Depth, Task::Vqa];

    /// The dataset's spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            Task::Referring => "referring",
            Task::Points => "points",
            Task::Depth => "depth",
            Task::Vqa => "vqa",
        }
    }
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Task {
    type Err = SequenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Task::ALL.into_iter().find(|t| t.as_str() == s).ok_or_else(|| SequenceError::UnknownTask { value: s.into() })
    }
}

/// How samples become token sequences.
#[derive(Config, Debug, PartialEq)]
pub struct SequenceConfig {
    /// `<IMG_CONTEXT>` tokens per image (tiles * tokens per tile).
    pub image_tokens: usize,
    /// false = the "no depth tokens" ablation: no depth spans, depth samples are skipped.
    #[config(default = true)]
    pub depth_tokens: bool,
    /// false = the "no segmentation" ablation: referring samples are skipped.
    #[config(default = true)]
    pub seg_tokens: bool,
    /// N, the expected number of codes in a span (the decoder forces it; building accepts any count).
    #[config(default = 100)]
    pub span_len: usize,
    /// Longest accepted sequence (prompt + answer + `<|im_end|>`).
    #[config(default = 512)]
    pub max_len: usize,
    /// The image block after the question (see [`chat_prompt_with`]); InternVL puts it first.
    #[config(default = false)]
    pub image_last: bool,
    /// Point answers state a chain of thought before the letter: after the span (if any), each marked point's
    /// label and the depth map's level at it ([`point_chain`]).
    #[config(default = false)]
    pub point_reasoning: bool,
}

/// Depth levels of the point chain of thought: 0 is the image's farthest depth, `POINT_LEVELS - 1` its nearest.
pub const POINT_LEVELS: u32 = 20;

/// One marked point as the chain of thought states it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PointLevel<'a> {
    /// The marker's letter ("A").
    pub label: &'a str,
    /// The depth map's level at the point, `0..POINT_LEVELS` (larger = nearer).
    pub level: u32,
}

/// The level of a depth-map value `v` in the model's target units ([-1, 1], +1 = nearest).
pub fn point_level(v: f32) -> u32 {
    let top = (POINT_LEVELS - 1) as f32;
    (((v.clamp(-1.0, 1.0) + 1.0) / 2.0) * top).round() as u32
}

/// The chain of thought of a point answer: "A 12, B 7, C 15." (each point's label and depth level, in order).
/// The text answer follows it, so the letter is chosen by comparing a few numbers the model has just written.
pub fn point_chain(points: &[PointLevel]) -> String {
    let parts: Vec<String> = points.iter().map(|p| format!("{} {}", p.label, p.level)).collect();
    format!("{}.", parts.join(", "))
}

/// Every word the point chain can use (for building a word-level vocabulary that holds them).
pub fn point_chain_vocabulary() -> String {
    let labels = ["A", "B", "C", "D", "E"];
    let points: Vec<PointLevel> =
        (0..POINT_LEVELS).map(|level| PointLevel { label: labels[level as usize % labels.len()], level }).collect();
    point_chain(&points)
}

/// The text fields of one dataset row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleText<'a> {
    pub id: &'a str,
    pub task: Task,
    pub question: &'a str,
    pub answer: &'a str,
    pub expression: Option<&'a str>,
    pub depth_dependent: bool,
    /// Code indices `0..K` of the depth map (None when the row has not been encoded).
    pub depth_codes: Option<&'a [u32]>,
    /// Point questions: the marked points in letter order with their depth levels (needed only when
    /// [`SequenceConfig::point_reasoning`] is on).
    pub points: Option<&'a [PointLevel<'a>]>,
}

/// The router's view of a generated answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedAnswer {
    /// Position of the first `[SEG]` in the generated ids.
    pub seg: Option<usize>,
    /// Code indices inside the depth span; None without a span.
    pub codes: Option<Vec<u32>>,
    /// Text after the span (all of the text without one), specials removed, trimmed.
    pub text: String,
}

/// Text of a referring answer: "It is the {expression}." (a leading "the" of the expression is not repeated), or
/// "Sure." without an expression.
pub fn referring_text(expression: Option<&str>) -> String {
    match expression {
        None => "Sure.".to_string(),
        Some(e) => {
            let e = e.trim();
            let rest = match e.get(..4) {
                Some(head) if head.eq_ignore_ascii_case("the ") => e[4..].trim_start(),
                _ => e,
            };
            format!("It is the {rest}.")
        }
    }
}

fn is_perceptio(sp: &SpecialTokens, id: u32) -> bool {
    id == sp.seg || id == sp.d_start || id == sp.d_end || sp.is_code(id)
}

fn encode(tok: &TextTokenizer, text: &str, id: &str) -> Result<Vec<u32>, SequenceError> {
    tok.encode(text).map_err(|source| SequenceError::Tokenize { id: id.to_string(), source })
}

fn prompt_ids_of(
    tok: &TextTokenizer,
    sp: &SpecialTokens,
    cfg: &SequenceConfig,
    question: &str,
    id: &str,
) -> Result<Vec<u32>, SequenceError> {
    let ids = encode(tok, &chat_prompt_with(question, cfg.image_tokens, None, cfg.image_last), id)?;
    if let Some(&token) = ids.iter().find(|&&t| is_perceptio(sp, t)) {
        return Err(SequenceError::ForbiddenToken { id: id.to_string(), part: "question", token });
    }
    if ids.iter().filter(|&&t| t == sp.im_end).count() != 1 {
        return Err(SequenceError::ForbiddenToken { id: id.to_string(), part: "question", token: sp.im_end });
    }
    let found = ids.iter().filter(|&&t| t == sp.image_context).count();
    if found != cfg.image_tokens {
        return Err(SequenceError::ImageTokens { id: id.to_string(), found, expected: cfg.image_tokens });
    }
    Ok(ids)
}

/// The tokenised chat prompt for `question` (one user turn with `cfg.image_tokens` image tokens, ending with
/// `<|im_start|>assistant\n`); used for training and inference alike. Errors name the sample as
/// `(prompt)`.
pub fn prompt_ids(
    tok: &TextTokenizer,
    sp: &SpecialTokens,
    cfg: &SequenceConfig,
    question: &str,
) -> Result<Vec<u32>, SequenceError> {
    prompt_ids_of(tok, sp, cfg, question, "(prompt)")
}

/// What an answer holds, by task and ablation; None = the sample is skipped.
struct AnswerPlan {
    seg: bool,
    span: bool,
    text: String,
}

/// The text of a point answer: the letter, after the chain of thought when `cfg` asks for one.
fn points_text(cfg: &SequenceConfig, s: &SampleText) -> Result<String, SequenceError> {
    if !cfg.point_reasoning {
        return Ok(s.answer.to_string());
    }
    let points = s.points.ok_or_else(|| SequenceError::MissingPoints { id: s.id.to_string() })?;
    if let Some(p) = points.iter().find(|p| p.level >= POINT_LEVELS) {
        return Err(SequenceError::BadLevel {
            id: s.id.to_string(),
            label: p.label.to_string(),
            level: p.level,
            max: POINT_LEVELS - 1,
        });
    }
    Ok(format!("{} {}", point_chain(points), s.answer))
}

fn plan(cfg: &SequenceConfig, s: &SampleText) -> Result<Option<AnswerPlan>, SequenceError> {
    Ok(match s.task {
        Task::Referring => {
            cfg.seg_tokens.then(|| AnswerPlan { seg: true, span: cfg.depth_tokens, text: referring_text(s.expression) })
        }
        Task::Points => Some(AnswerPlan { seg: false, span: cfg.depth_tokens, text: points_text(cfg, s)? }),
        Task::Depth => cfg.depth_tokens.then(|| AnswerPlan { seg: false, span: true, text: String::new() }),
        Task::Vqa => {
            Some(AnswerPlan { seg: false, span: cfg.depth_tokens && s.depth_dependent, text: s.answer.to_string() })
        }
    })
}

/// The answer ids of a sample (everything after the prompt): `[SEG]`?, `<d_start> codes <d_end>`?, text,
/// `<|im_end|>`. `Ok(None)` when the ablation in `cfg` skips the sample.
pub fn answer_ids(
    tok: &TextTokenizer,
    sp: &SpecialTokens,
    cfg: &SequenceConfig,
    s: &SampleText,
) -> Result<Option<Vec<u32>>, SequenceError> {
    let Some(plan) = plan(cfg, s)? else { return Ok(None) };
    let mut ids = Vec::new();
    if plan.seg {
        ids.push(sp.seg);
    }
    if plan.span {
        let codes = s.depth_codes.ok_or_else(|| SequenceError::MissingCodes { id: s.id.to_string() })?;
        ids.reserve(codes.len() + 2);
        ids.push(sp.d_start);
        for (index, &value) in codes.iter().enumerate() {
            if value as usize >= sp.num_codes {
                return Err(SequenceError::BadCode { id: s.id.to_string(), index, value, num_codes: sp.num_codes });
            }
            ids.push(sp.code(value as usize));
        }
        ids.push(sp.d_end);
    }
    let text = encode(tok, &plan.text, s.id)?;
    if let Some(&token) =
        text.iter().find(|&&t| is_perceptio(sp, t) || t == sp.im_end || t == sp.image_context || t == sp.pad)
    {
        return Err(SequenceError::ForbiddenToken { id: s.id.to_string(), part: "answer", token });
    }
    ids.extend(text);
    ids.push(sp.im_end);
    Ok(Some(ids))
}

/// `prompt ++ answer ++ <|im_end|>` with its layout, or `Ok(None)` when the ablation in `cfg` skips the sample.
pub fn build_sequence(
    tok: &TextTokenizer,
    sp: &SpecialTokens,
    cfg: &SequenceConfig,
    s: &SampleText,
) -> Result<Option<Sequence>, SequenceError> {
    let Some(answer) = answer_ids(tok, sp, cfg, s)? else { return Ok(None) };
    let mut ids = prompt_ids_of(tok, sp, cfg, s.question, s.id)?;
    let prompt_len = ids.len();
    let len = prompt_len + answer.len();
    if len > cfg.max_len {
        return Err(SequenceError::TooLong { id: s.id.to_string(), len, max_len: cfg.max_len });
    }
    // the prompt and the answer text hold no Perceptio token, so each marker's first occurrence is its only one
    let find = |t: u32| answer.iter().position(|&a| a == t).map(|p| p + prompt_len);
    let (seg_pos, depth_start, depth_end) = (find(sp.seg), find(sp.d_start), find(sp.d_end));
    ids.extend_from_slice(&answer);
    Ok(Some(Sequence { ids, prompt_len, seg_pos, depth_start, depth_end }))
}

/// Splits generated answer ids (without the prompt) for the router. Generation stops at the first
/// `<|im_end|>`; the span runs from `<d_start>` to `<d_end>` (or the end when it never closes); only the code
/// ids inside it are kept. The text is what follows the span (everything without a span), decoded without
/// special tokens and trimmed; it is empty when the ids cannot be decoded.
pub fn parse_answer(tok: &TextTokenizer, sp: &SpecialTokens, generated: &[u32]) -> ParsedAnswer {
    let stop = generated.iter().position(|&t| t == sp.im_end).unwrap_or(generated.len());
    let g = &generated[..stop];
    let seg = g.iter().position(|&t| t == sp.seg);
    let (codes, text_ids) = match g.iter().position(|&t| t == sp.d_start) {
        Some(start) => {
            let end = g[start + 1..].iter().position(|&t| t == sp.d_end).map(|e| e + start + 1);
            let interior = &g[start + 1..end.unwrap_or(g.len())];
            let codes = interior.iter().filter_map(|&t| sp.code_index(t)).map(|k| k as u32).collect();
            (Some(codes), end.map_or(&g[g.len()..], |e| &g[e + 1..]))
        }
        None => (None, g),
    };
    let text = tok.decode(text_ids, true).map(|t| t.trim().to_string()).unwrap_or_default();
    ParsedAnswer { seg, codes, text }
}

/// Right-pads `seqs` with `sp.pad` into one batch.
pub fn batch(seqs: Vec<Sequence>, sp: &SpecialTokens) -> TokenBatch {
    TokenBatch::new(seqs, sp.pad)
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use proptest::prelude::*;

    use super::*;
    use crate::perceptio::tokens::{build_word_tokenizer, special_tokens};
    use crate::tokenizer::chat_prompt;

    const K: usize = 128;
    const REFER_Q: &str = "Please segment the small red cube in this image.";
    const POINTS_Q: &str = "Multiple points are circled on the image, labeled by letters beside each circle. Which \
                            point is the closest to the camera?";
    const DEPTH_Q: &str = "What is the depth map for the image?";
    const VQA_Q: &str = "Is the red cube closer to the camera than the blue sphere?";
    const VQA_Q2: &str = "What colour is the large cube?";

    fn tok() -> &'static (TextTokenizer, SpecialTokens) {
        static TOK: OnceLock<(TextTokenizer, SpecialTokens)> = OnceLock::new();
        TOK.get_or_init(|| {
            let corpus =
                [REFER_Q, "Sure, [SEG].", "the small red cube", POINTS_Q, "(A)", "(B)", "(C)", DEPTH_Q, VQA_Q, "yes"];
            let chain = point_chain_vocabulary();
            let corpus = corpus.into_iter().chain([VQA_Q2, "red", "no", chain.as_str()]);
            let tok = build_word_tokenizer(corpus, K, 1).unwrap();
            let sp = special_tokens(&tok, K).unwrap();
            (tok, sp)
        })
    }

    fn cfg() -> SequenceConfig {
        SequenceConfig::new(4)
    }

    fn sample<'a>(task: Task, codes: Option<&'a [u32]>) -> SampleText<'a> {
        let (question, answer, expression, depth_dependent) = match task {
            Task::Referring => (REFER_Q, "Sure, [SEG].", Some("the small red cube"), false),
            Task::Points => (POINTS_Q, "(B)", None, true),
            Task::Depth => (DEPTH_Q, "", None, true),
            Task::Vqa => (VQA_Q, "yes", None, true),
        };
        SampleText {
            id: "s0-0000001-x-0",
            task,
            question,
            answer,
            expression,
            depth_dependent,
            depth_codes: codes,
            points: None,
        }
    }

    fn text_ids(text: &str) -> Vec<u32> {
        tok().0.encode(text).unwrap()
    }

    #[test]
    fn task_parses_the_dataset_strings() {
        for t in Task::ALL {
            assert_eq!(t.as_str().parse::<Task>().unwrap(), t);
        }
        let err = "segmentation".parse::<Task>().unwrap_err();
        assert!(err.to_string().contains("\"segmentation\""), "{err}");
    }

    #[test]
    fn referring_text_does_not_repeat_the_article() {
        assert_eq!(referring_text(Some("the small red cube")), "It is the small red cube.");
        assert_eq!(referring_text(Some("The cube")), "It is the cube.");
        assert_eq!(referring_text(Some("red cube")), "It is the red cube.");
        assert_eq!(referring_text(Some("theatre")), "It is the theatre.");
        assert_eq!(referring_text(None), "Sure.");
    }

    #[test]
    fn prompt_has_the_image_tokens_and_ends_with_the_assistant_turn() {
        let (tok, sp) = tok();
        let ids = prompt_ids(tok, sp, &cfg(), DEPTH_Q).unwrap();
        assert_eq!(ids.iter().filter(|&&t| t == sp.image_context).count(), 4);
        assert_eq!(tok.decode(&ids, false).unwrap(), chat_prompt(DEPTH_Q, 4, None));
        // a question smuggling in layout tokens is refused
        let err = prompt_ids(tok, sp, &cfg(), "What is <d_3>?").unwrap_err();
        assert!(matches!(err, SequenceError::ForbiddenToken { token, .. } if token == sp.code(3)));
        let err = prompt_ids(tok, sp, &cfg(), "What is <IMG_CONTEXT>?").unwrap_err();
        assert!(matches!(err, SequenceError::ImageTokens { found: 5, expected: 4, .. }), "{err}");
    }

    #[test]
    fn image_last_puts_the_image_at_one_distance_from_the_answer() {
        let (tok, sp) = tok();
        let last = cfg().with_image_last(true);
        // (tokens before the first image token, tokens after the last one) of a prompt
        let around = |ids: &[u32]| {
            let first = ids.iter().position(|&t| t == sp.image_context).unwrap();
            let end = ids.iter().rposition(|&t| t == sp.image_context).unwrap();
            assert_eq!(end + 1 - first, 4, "the image tokens are contiguous");
            (first, ids.len() - 1 - end)
        };
        let (short, long) =
            (prompt_ids(tok, sp, &last, DEPTH_Q).unwrap(), prompt_ids(tok, sp, &last, REFER_Q).unwrap());
        assert_ne!(short.len(), long.len());
        assert_eq!(around(&short).1, around(&long).1, "image last: the same distance to the answer");
        assert!(around(&short).0 < around(&long).0);
        assert_eq!(tok.decode(&short, false).unwrap(), chat_prompt_with(DEPTH_Q, 4, None, true));
        // InternVL's order: the image first, at one distance from the start
        let (short, long) =
            (prompt_ids(tok, sp, &cfg(), DEPTH_Q).unwrap(), prompt_ids(tok, sp, &cfg(), REFER_Q).unwrap());
        assert_eq!(around(&short).0, around(&long).0);
        assert_ne!(around(&short).1, around(&long).1);
    }

    #[test]
    fn referring_layout_and_ablations() {
        let (tok, sp) = tok();
        let codes = [3u32, 0, 127];
        let s = sample(Task::Referring, Some(&codes));
        let seq = build_sequence(tok, sp, &cfg(), &s).unwrap().unwrap();
        let p = seq.prompt_len;
        assert_eq!(p, prompt_ids(tok, sp, &cfg(), REFER_Q).unwrap().len());
        let mut want = vec![sp.seg, sp.d_start, sp.code(3), sp.code(0), sp.code(127), sp.d_end];
        want.extend(text_ids("It is the small red cube."));
        want.push(sp.im_end);
        assert_eq!(seq.ids[p..], want);
        assert_eq!((seq.seg_pos, seq.depth_start, seq.depth_end), (Some(p), Some(p + 1), Some(p + 5)));
        assert_eq!(seq.depth_interior(), p + 2..p + 5);
        // the dataset's literal "[SEG]" is never tokenised as text: exactly one [SEG]
        assert_eq!(seq.ids.iter().filter(|&&t| t == sp.seg).count(), 1);

        let no_depth = cfg().with_depth_tokens(false);
        let seq = build_sequence(tok, sp, &no_depth, &s).unwrap().unwrap();
        let mut want = vec![sp.seg];
        want.extend(text_ids("It is the small red cube."));
        want.push(sp.im_end);
        assert_eq!(seq.ids[seq.prompt_len..], want);
        assert_eq!((seq.depth_start, seq.depth_end), (None, None));
        // without depth tokens the codes are not needed
        let s_none = sample(Task::Referring, None);
        assert!(build_sequence(tok, sp, &no_depth, &s_none).unwrap().is_some());

        let no_seg = cfg().with_seg_tokens(false);
        assert_eq!(build_sequence(tok, sp, &no_seg, &s).unwrap(), None);

        let fallback = SampleText { expression: None, ..s };
        let seq = build_sequence(tok, sp, &no_depth, &fallback).unwrap().unwrap();
        assert_eq!(seq.ids[seq.prompt_len + 1..seq.len() - 1], text_ids("Sure."));
    }

    #[test]
    fn points_depth_and_vqa_layouts() {
        let (tok, sp) = tok();
        let codes: Vec<u32> = (0..100).map(|i| (i * 7 % K) as u32).collect();
        let span: Vec<u32> =
            [sp.d_start].into_iter().chain(codes.iter().map(|&c| sp.code(c as usize))).chain([sp.d_end]).collect();
        let tail = |text: &str| -> Vec<u32> { text_ids(text).into_iter().chain([sp.im_end]).collect() };
        let answer = |c: &SequenceConfig, s: &SampleText| build_sequence(tok, sp, c, s).unwrap();
        let no_depth = cfg().with_depth_tokens(false);

        // points: span then "(B)"; without depth tokens just "(B)"
        let s = sample(Task::Points, Some(&codes));
        let q = answer(&cfg(), &s).unwrap();
        assert_eq!(q.ids[q.prompt_len..], [span.clone(), tail("(B)")].concat());
        assert_eq!((q.seg_pos, q.depth_start, q.depth_end), (None, Some(q.prompt_len), Some(q.prompt_len + 101)));
        let q = answer(&no_depth, &s).unwrap();
        assert_eq!(q.ids[q.prompt_len..], tail("(B)"));
        assert_eq!((q.seg_pos, q.depth_start, q.depth_end), (None, None, None));
        // the no-segmentation ablation leaves it alone
        assert_eq!(
            answer(&cfg().with_seg_tokens(false), &s).unwrap().ids[q.prompt_len..],
            [span.clone(), tail("(B)")].concat()
        );

        // depth: the span only; skipped without depth tokens
        let s = sample(Task::Depth, Some(&codes));
        let q = answer(&cfg(), &s).unwrap();
        assert_eq!(q.ids[q.prompt_len..], [span.clone(), vec![sp.im_end]].concat());
        assert_eq!(q.depth_interior().len(), 100);
        assert_eq!(answer(&no_depth, &s), None);

        // vqa: span only when depth dependent
        let s = sample(Task::Vqa, Some(&codes));
        let q = answer(&cfg(), &s).unwrap();
        assert_eq!(q.ids[q.prompt_len..], [span.clone(), tail("yes")].concat());
        let flat = SampleText { depth_dependent: false, question: VQA_Q2, answer: "red", ..s };
        let q = answer(&cfg(), &flat).unwrap();
        assert_eq!(q.ids[q.prompt_len..], tail("red"));
        assert_eq!(q.depth_start, None);
        // a depth-independent question needs no codes
        assert!(answer(&cfg(), &SampleText { depth_codes: None, ..flat }).is_some());
        let q = answer(&no_depth, &s).unwrap();
        assert_eq!(q.ids[q.prompt_len..], tail("yes"));
    }

    #[test]
    fn point_reasoning_states_each_level_before_the_letter() {
        let (tok, sp) = tok();
        assert_eq!((point_level(-1.0), point_level(1.0), point_level(0.0), point_level(0.04)), (0, 19, 10, 10));
        assert_eq!((point_level(-3.0), point_level(f32::INFINITY)), (0, 19));
        let points = [
            PointLevel { label: "A", level: 3 },
            PointLevel { label: "B", level: 17 },
            PointLevel { label: "C", level: 0 },
        ];
        assert_eq!(point_chain(&points), "A 3, B 17, C 0.");
        let codes: Vec<u32> = (0..100).map(|i| (i * 3 % K) as u32).collect();
        let span: Vec<u32> =
            [sp.d_start].into_iter().chain(codes.iter().map(|&c| sp.code(c as usize))).chain([sp.d_end]).collect();
        let chained = cfg().with_point_reasoning(true);
        let s = SampleText { points: Some(&points), ..sample(Task::Points, Some(&codes)) };
        let q = build_sequence(tok, sp, &chained, &s).unwrap().unwrap();
        let text: Vec<u32> = text_ids("A 3, B 17, C 0. (B)").into_iter().chain([sp.im_end]).collect();
        assert!(!text.contains(&tok.token_id("[UNK]").unwrap()), "the chain's words are in the vocabulary");
        assert_eq!(q.ids[q.prompt_len..], [span, text.clone()].concat());
        // the span keeps its place right after the prompt, so every code stays at one distance from its image token
        assert_eq!((q.depth_start, q.depth_end), (Some(q.prompt_len), Some(q.prompt_len + 101)));
        let q = build_sequence(tok, sp, &chained.clone().with_depth_tokens(false), &s).unwrap().unwrap();
        assert_eq!(q.ids[q.prompt_len..], text);
        // and the router gives the whole chain back as the answer text, whose first "(X)" is the letter
        assert_eq!(parse_answer(tok, sp, &q.ids[q.prompt_len..]).text, "A 3, B 17, C 0. (B)");
        // off by default: the plain answer
        let q = build_sequence(tok, sp, &cfg(), &s).unwrap().unwrap();
        assert_eq!(q.ids[q.prompt_len + 102..], text_ids("(B)").into_iter().chain([sp.im_end]).collect::<Vec<_>>());

        let err = build_sequence(tok, sp, &chained, &sample(Task::Points, Some(&codes))).unwrap_err();
        assert!(matches!(&err, SequenceError::MissingPoints { id } if id == s.id), "{err}");
        let high = [PointLevel { label: "D", level: POINT_LEVELS }];
        let err = build_sequence(tok, sp, &chained, &SampleText { points: Some(&high), ..s }).unwrap_err();
        assert!(err.to_string().contains("point D has depth level 20, above the highest (19)"), "{err}");
        // other tasks ignore the switch
        let v = sample(Task::Vqa, Some(&codes));
        assert_eq!(build_sequence(tok, sp, &chained, &v).unwrap(), build_sequence(tok, sp, &cfg(), &v).unwrap());
    }

    #[test]
    fn errors_name_the_sample_and_the_problem() {
        let (tok, sp) = tok();
        let s = sample(Task::Points, None);
        let err = build_sequence(tok, sp, &cfg(), &s).unwrap_err();
        assert!(matches!(&err, SequenceError::MissingCodes { id } if id == s.id));
        assert!(err.to_string().contains(s.id), "{err}");

        let bad = [1u32, 2, 128, 4];
        let s = sample(Task::Depth, Some(&bad));
        let err = build_sequence(tok, sp, &cfg(), &s).unwrap_err();
        assert!(matches!(err, SequenceError::BadCode { index: 2, value: 128, num_codes: 128, .. }), "{err}");
        assert!(err.to_string().contains(s.id) && err.to_string().contains("128"), "{err}");

        let codes = vec![5u32; 100];
        let s = sample(Task::Points, Some(&codes));
        let ok = build_sequence(tok, sp, &cfg(), &s).unwrap().unwrap();
        let tight = cfg().with_max_len(ok.len());
        assert!(build_sequence(tok, sp, &tight, &s).unwrap().is_some());
        let short = cfg().with_max_len(ok.len() - 1);
        let err = build_sequence(tok, sp, &short, &s).unwrap_err();
        let want = (ok.len(), ok.len() - 1);
        assert!(matches!(&err, SequenceError::TooLong { id, len, max_len } if id == s.id && (*len, *max_len) == want));
        assert!(err.to_string().contains(&ok.len().to_string()), "{err}");

        let s = SampleText { answer: "(B) [SEG]", ..sample(Task::Points, Some(&codes)) };
        let err = build_sequence(tok, sp, &cfg(), &s).unwrap_err();
        assert!(matches!(err, SequenceError::ForbiddenToken { part: "answer", token, .. } if token == sp.seg));
    }

    #[test]
    fn parse_answer_inverts_build_for_every_task() {
        let (tok, sp) = tok();
        let codes: Vec<u32> = (0..100).map(|i| (i * 13 % K) as u32).collect();
        let cases = [
            (Task::Referring, Some(0), true, "It is the small red cube."),
            (Task::Points, None, true, "(B)"),
            (Task::Depth, None, true, ""),
            (Task::Vqa, None, true, "yes"),
        ];
        for (task, seg, span, text) in cases {
            let s = sample(task, Some(&codes));
            let q = build_sequence(tok, sp, &cfg(), &s).unwrap().unwrap();
            let parsed = parse_answer(tok, sp, &q.ids[q.prompt_len..]);
            assert_eq!(parsed, ParsedAnswer { seg, codes: span.then(|| codes.clone()), text: text.into() }, "{task}");
        }
        // without depth tokens: no span at all
        let s = sample(Task::Points, None);
        let q = build_sequence(tok, sp, &cfg().with_depth_tokens(false), &s).unwrap().unwrap();
        let parsed = parse_answer(tok, sp, &q.ids[q.prompt_len..]);
        assert_eq!(parsed, ParsedAnswer { seg: None, codes: None, text: "(B)".into() });
    }

    #[test]
    fn parse_answer_handles_truncated_and_noisy_generations() {
        let (tok, sp) = tok();
        // an unclosed span: codes up to the end, no text
        let g = [sp.seg, sp.d_start, sp.code(1), sp.code(2)];
        assert_eq!(
            parse_answer(tok, sp, &g),
            ParsedAnswer { seg: Some(0), codes: Some(vec![1, 2]), text: String::new() }
        );
        // anything after <|im_end|> is ignored; stray specials in the text are dropped
        let mut g = vec![sp.d_start, sp.code(9), sp.d_end];
        g.extend(text_ids("(A)"));
        g.extend([sp.code(4), sp.im_end, sp.seg]);
        assert_eq!(parse_answer(tok, sp, &g), ParsedAnswer { seg: None, codes: Some(vec![9]), text: "(A)".into() });
        assert_eq!(parse_answer(tok, sp, &[]), ParsedAnswer { seg: None, codes: None, text: String::new() });
    }

    #[test]
    fn batch_pads_with_the_pad_id() {
        let (tok, sp) = tok();
        let codes = [1u32, 2];
        let a = build_sequence(tok, sp, &cfg(), &sample(Task::Depth, Some(&codes))).unwrap().unwrap();
        let b = build_sequence(tok, sp, &cfg(), &sample(Task::Points, Some(&codes))).unwrap().unwrap();
        let (la, lb) = (a.len(), b.len());
        let tb = batch(vec![a.clone(), b.clone()], sp);
        assert_eq!(tb.seq_len(), la.max(lb));
        let short = if la < lb { 0 } else { 1 };
        let n = la.min(lb);
        assert!(tb.ids[short][n..].iter().all(|&t| t == sp.pad));
        assert_eq!(tb.ids[0][..la], a.ids[..]);
        assert_eq!(tb.seqs, vec![a, b]);
    }

    proptest! {
        #[test]
        fn layout_invariants_hold(
            task in 0usize..4,
            codes in proptest::collection::vec(0u32..K as u32, 0..130),
            depth_tokens: bool,
            seg_tokens: bool,
            depth_dependent: bool,
            with_expression: bool,
        ) {
            let (tok, sp) = tok();
            let task = Task::ALL[task];
            let cfg = SequenceConfig::new(4).with_depth_tokens(depth_tokens).with_seg_tokens(seg_tokens);
            let mut s = sample(task, Some(&codes));
            s.depth_dependent = depth_dependent;
            if !with_expression {
                s.expression = None;
            }
            let built = build_sequence(tok, sp, &cfg, &s).unwrap();
            let skipped = (task == Task::Referring && !seg_tokens) || (task == Task::Depth && !depth_tokens);
            prop_assert_eq!(built.is_none(), skipped);
            let Some(q) = built else { return Ok(()) };
            prop_assert_eq!(q.prompt_len, prompt_ids(tok, sp, &cfg, s.question).unwrap().len());
            prop_assert_eq!(*q.ids.last().unwrap(), sp.im_end);
            prop_assert!(q.len() <= cfg.max_len);
            let want_span = depth_tokens && (task != Task::Vqa || depth_dependent);
            prop_assert_eq!(q.depth_start.is_some(), want_span);
            prop_assert_eq!(q.seg_pos.is_some(), task == Task::Referring);
            // the text (or the closing <|im_end|>) comes after every marker
            let text_pos = q.depth_end.map_or(q.seg_pos.map_or(q.prompt_len, |p| p + 1), |e| e + 1);
            if let Some(p) = q.seg_pos {
                prop_assert_eq!(q.ids[p], sp.seg);
                prop_assert_eq!(p, q.prompt_len);
                prop_assert!(q.depth_start.is_none_or(|d| p < d));
            }
            if let (Some(ds), Some(de)) = (q.depth_start, q.depth_end) {
                prop_assert_eq!(q.ids[ds], sp.d_start);
                prop_assert_eq!(q.ids[de], sp.d_end);
                prop_assert!(ds < de && de < text_pos);
                let interior: Vec<u32> = q.ids[q.depth_interior()].iter().map(|&t| sp.code_index(t).unwrap() as u32).collect();
                prop_assert_eq!(&interior, &codes);
            } else {
                prop_assert_eq!(q.depth_end, None);
            }
            // nothing else in the sequence is a Perceptio token
            let specials = q.ids.iter().filter(|&&t| is_perceptio(sp, t)).count();
            let expected = usize::from(q.seg_pos.is_some()) + if want_span { codes.len() + 2 } else { 0 };
            prop_assert_eq!(specials, expected);
            prop_assert!(q.ids[text_pos..q.len() - 1].iter().all(|&t| !is_perceptio(sp, t) && t != sp.im_end));
            // and the router gets it all back
            let parsed = parse_answer(tok, sp, &q.ids[q.prompt_len..]);
            prop_assert_eq!(parsed.seg, q.seg_pos.map(|p| p - q.prompt_len));
            prop_assert_eq!(parsed.codes, want_span.then(|| codes.clone()));
            prop_assert_eq!(parsed.text, tok.decode(&q.ids[text_pos..q.len() - 1], true).unwrap().trim().to_string());
        }
    }
}
