//! Perceptio's vocabulary: the added tokens (`[SEG]`, `<d_start>`, `<d_end>`, `<d_0>`..`<d_{K-1}>`), the tiny
//! preset's word-level tokenizer built from a corpus, the extension of a real (Qwen2) tokenizer with the added
//! tokens, and the lookup of every id Perceptio needs into [`SpecialTokens`].

use std::collections::{HashMap, HashSet};

use tokenizers::decoders::fuse::Fuse;
use tokenizers::models::wordlevel::WordLevel;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use super::layout::SpecialTokens;
use super::sequence::referring_text;
use crate::tokenizer::{IM_END, IMG_CONTEXT, IMG_END, IMG_START, TextTokenizer, chat_prompt};

/// The segmentation token.
pub const SEG: &str = "[SEG]";
/// Opens the depth span.
pub const D_START: &str = "<d_start>";
/// Closes the depth span.
pub const D_END: &str = "<d_end>";
/// End of text; the padding token.
pub const PAD: &str = "<|endoftext|>";
/// Start of a chat turn.
pub const IM_START: &str = "<|im_start|>";
/// Unknown word of the word-level tokenizer.
pub const UNK: &str = "[UNK]";

/// The word-level pre-tokenizer: words, whitespace runs and single other characters, each its own token.
const WORD_PATTERN: &str = r"\w+|\s+|[^\w\s]";

/// The special tokens at the head of the word-level vocabulary, in id order (pad first).
const CHAT_SPECIALS: [&str; 6] = [PAD, IM_START, IM_END, IMG_START, IMG_END, IMG_CONTEXT];

/// Errors of vocabulary building and id lookup.
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    #[error("the tokenizer has no `{token}` token")]
    Missing { token: String },
    #[error("Perceptio tokens are not contiguous: `{token}` has id {found}, expected {expected}")]
    NotContiguous { token: String, expected: u32, found: u32 },
    #[error("the depth codebook size must be at least 1 (got 0)")]
    NoCodes,
    #[error("building the word tokenizer: {message}")]
    Build { message: String },
}

/// Token text of depth code `k`.
pub fn code_token(k: usize) -> String {
    format!("<d_{k}>")
}

/// The tokens Perceptio adds, in id order: `[SEG]`, `<d_start>`, `<d_end>`, `<d_0>`..`<d_{K-1}>`.
pub fn added_tokens(num_codes: usize) -> Vec<String> {
    let mut v = vec![SEG.to_string(), D_START.to_string(), D_END.to_string()];
    v.extend((0..num_codes).map(code_token));
    v
}

/// Splits `text` into the word tokenizer's pre-tokens, leaving out the special tokens (`specials` matches them).
fn pre_tokens<'t>(text: &'t str, specials: &regex::Regex, words: &regex::Regex) -> Vec<&'t str> {
    specials.split(text).flat_map(|piece| words.find_iter(piece).map(|m| m.as_str())).collect()
}

/// Regex matching any of `tokens` literally.
fn literal_alternation(tokens: &[String]) -> Result<regex::Regex, TokensError> {
    let alt: Vec<String> = tokens.iter().map(|t| regex::escape(t)).collect();
    regex::Regex::new(&alt.join("|")).map_err(|e| TokensError::Build { message: e.to_string() })
}

/// The tiny preset's word-level tokenizer over `texts` (questions, answers, expressions).
///
/// Ids: 0 `<|endoftext|>` (pad), `<|im_start|>`, `<|im_end|>`, `<img>`, `</img>`, `<IMG_CONTEXT>`, `[UNK]`, then
/// the pre-tokens of the chat template and of the answer templates of `sequence`, then every other pre-token seen
/// at least `min_count` times in `texts` (count descending, then lexicographic), then last the
/// [`added_tokens`] as contiguous special added tokens. Special tokens inside `texts` are not counted as words.
/// Decoding concatenates tokens, so `decode(encode(s)) == s` for text made of known pre-tokens.
pub fn build_word_tokenizer<'a>(
    texts: impl IntoIterator<Item = &'a str>,
    num_codes: usize,
    min_count: usize,
) -> Result<TextTokenizer, TokensError> {
    if num_codes == 0 {
        return Err(TokensError::NoCodes);
    }
    let added = added_tokens(num_codes);
    let mut all_specials: Vec<String> = CHAT_SPECIALS.iter().map(|s| s.to_string()).collect();
    all_specials.extend(added.iter().cloned());
    let specials = literal_alternation(&all_specials)?;
    let words = regex::Regex::new(WORD_PATTERN).map_err(|e| TokensError::Build { message: e.to_string() })?;

    let mut vocab: Vec<String> = CHAT_SPECIALS.iter().map(|s| s.to_string()).collect();
    vocab.push(UNK.to_string());
    let mut known: HashSet<String> = vocab.iter().cloned().collect();
    let templates =
        [chat_prompt("", 1, None), chat_prompt("", 1, Some("")), referring_text(Some("")), referring_text(None)];
    for t in &templates {
        for w in pre_tokens(t, &specials, &words) {
            if known.insert(w.to_string()) {
                vocab.push(w.to_string());
            }
        }
    }

    let mut counts: HashMap<&str, usize> = HashMap::new();
    for text in texts {
        for w in pre_tokens(text, &specials, &words) {
            *counts.entry(w).or_default() += 1;
        }
    }
    let mut seen: Vec<(&str, usize)> =
        counts.into_iter().filter(|(w, c)| *c >= min_count.max(1) && !known.contains(*w)).collect();
    seen.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    vocab.extend(seen.into_iter().map(|(w, _)| w.to_string()));

    let map: serde_json::Map<String, serde_json::Value> =
        vocab.iter().enumerate().map(|(i, w)| (w.clone(), serde_json::Value::from(i as u64))).collect();
    let model_json = serde_json::json!({ "vocab": map, "unk_token": UNK });
    let model: WordLevel =
        serde_json::from_value(model_json).map_err(|e| TokensError::Build { message: e.to_string() })?;
    let split = Split::new(SplitPattern::Regex(WORD_PATTERN.to_string()), SplitDelimiterBehavior::Isolated, false)
        .map_err(|e| TokensError::Build { message: e.to_string() })?;

    let mut inner = Tokenizer::new(model);
    inner.with_pre_tokenizer(Some(split));
    inner.with_decoder(Some(Fuse::new()));
    let chat: Vec<AddedToken> = CHAT_SPECIALS.iter().map(|s| AddedToken::from(*s, true)).collect();
    inner.add_special_tokens(&chat);
    let perceptio: Vec<AddedToken> = added.iter().map(|s| AddedToken::from(s.as_str(), true)).collect();
    inner.add_special_tokens(&perceptio);

    let tok = TextTokenizer::from_tokenizer(inner);
    check_contiguous(&tok, num_codes, vocab.len() as u32)?;
    Ok(tok)
}

/// Checks that the [`added_tokens`] exist with ids `first, first + 1, ...` (first = `first`, or the id of `[SEG]`).
fn check_contiguous(tok: &TextTokenizer, num_codes: usize, first: u32) -> Result<(), TokensError> {
    for (i, t) in added_tokens(num_codes).iter().enumerate() {
        let found = tok.token_id(t).ok_or_else(|| TokensError::Missing { token: t.clone() })?;
        let expected = first + i as u32;
        if found != expected {
            return Err(TokensError::NotContiguous { token: t.clone(), expected, found });
        }
    }
    Ok(())
}

/// A real (e.g. Qwen2) tokenizer with the Perceptio tokens added as special tokens after its vocabulary, with
/// contiguous ids. Tokens that already exist keep their ids; the result is an error when they are then not
/// contiguous in [`added_tokens`] order.
pub fn extend_tokenizer(tok: &TextTokenizer, num_codes: usize) -> Result<TextTokenizer, TokensError> {
    if num_codes == 0 {
        return Err(TokensError::NoCodes);
    }
    let added = added_tokens(num_codes);
    let mut inner = tok.inner().clone();
    let tokens: Vec<AddedToken> = added.iter().map(|s| AddedToken::from(s.as_str(), true)).collect();
    inner.add_special_tokens(&tokens);
    let out = TextTokenizer::from_tokenizer(inner);
    // every token exists now; `[SEG]` anchors the block
    let first = out.token_id(SEG).ok_or_else(|| TokensError::Missing { token: SEG.to_string() })?;
    check_contiguous(&out, num_codes, first)?;
    Ok(out)
}

fn lookup(tok: &TextTokenizer, token: &str) -> Result<u32, TokensError> {
    tok.token_id(token).ok_or_else(|| TokensError::Missing { token: token.to_string() })
}

/// Every id Perceptio needs from `tok`; `<d_0>`..`<d_{K-1}>` must be contiguous.
pub fn special_tokens(tok: &TextTokenizer, num_codes: usize) -> Result<SpecialTokens, TokensError> {
    if num_codes == 0 {
        return Err(TokensError::NoCodes);
    }
    let code0 = lookup(tok, &code_token(0))?;
    for k in 1..num_codes {
        let t = code_token(k);
        let found = lookup(tok, &t)?;
        let expected = code0 + k as u32;
        if found != expected {
            return Err(TokensError::NotContiguous { token: t, expected, found });
        }
    }
    Ok(SpecialTokens {
        seg: lookup(tok, SEG)?,
        d_start: lookup(tok, D_START)?,
        d_end: lookup(tok, D_END)?,
        code0,
        num_codes,
        im_end: lookup(tok, IM_END)?,
        pad: lookup(tok, PAD)?,
        image_context: lookup(tok, IMG_CONTEXT)?,
    })
}

/// Vocabulary size before the Perceptio tokens: the smallest id among them, or the whole vocabulary when none
/// of them is present.
pub fn base_vocab_size(tok: &TextTokenizer, num_codes: usize) -> usize {
    added_tokens(num_codes).iter().filter_map(|t| tok.token_id(t)).min().map_or(tok.vocab_size(), |id| id as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CORPUS: [&str; 9] = [
        "Please segment the small red cube in this image.",
        "Sure, [SEG].",
        "Multiple points are circled on the image, labeled by letters beside each circle. Which point is the \
         closest to the camera?",
        "(B)",
        "What is the depth map for the image?",
        "Is the red cube closer to the camera than the blue sphere?",
        "How many spheres are there?",
        "What colour is the large cube?",
        "the large green cylinder left of the cone",
    ];

    fn tiny() -> TextTokenizer {
        build_word_tokenizer(CORPUS, 8, 1).unwrap()
    }

    #[test]
    fn added_tokens_are_seg_markers_then_codes() {
        assert_eq!(added_tokens(2), ["[SEG]", "<d_start>", "<d_end>", "<d_0>", "<d_1>"]);
        assert_eq!(added_tokens(128).len(), 131);
        assert_eq!(added_tokens(128)[130], "<d_127>");
    }

    #[test]
    fn round_trip_on_synthetic_text() {
        let tok = tiny();
        for s in CORPUS.iter().copied().filter(|s| !s.contains("[SEG]")).chain([
            "the cube, the sphere?",
            "It is the small red cube.",
            "Sure.",
        ]) {
            let ids = tok.encode(s).unwrap();
            assert!(!ids.contains(&tok.token_id(UNK).unwrap()), "{s:?} has unknown words");
            assert_eq!(tok.decode(&ids, false).unwrap(), s);
        }
        // one token per word, space and punctuation mark
        assert_eq!(tok.encode("the red cube.").unwrap().len(), 6);
    }

    #[test]
    fn id_order_is_fixed_head_then_corpus_by_count_then_added_last() {
        let tok = tiny();
        for (i, t) in [PAD, IM_START, IM_END, IMG_START, IMG_END, IMG_CONTEXT, UNK].iter().enumerate() {
            assert_eq!(tok.token_id(t), Some(i as u32), "{t}");
        }
        assert_eq!(tok.token_id("user"), Some(7));
        assert_eq!(tok.token_id("\n"), Some(8));
        assert_eq!(tok.token_id("assistant"), Some(9));
        let the = tok.token_id("the").unwrap();
        let closest = tok.token_id("closest").unwrap();
        let camera = tok.token_id("camera").unwrap();
        // "camera" (2x) before "closest" (1x); "closer" < "closest" lexicographically among the 1x words
        assert!(camera < closest, "{camera} {closest}");
        assert!(tok.token_id("closer").unwrap() < closest);
        assert!(the < camera);
        // no junk from the special token in "Sure, [SEG]."
        assert_eq!(tok.token_id("SEG"), None);
        let sp = special_tokens(&tok, 8).unwrap();
        let base = base_vocab_size(&tok, 8);
        assert_eq!(sp.seg as usize, base);
        assert_eq!((sp.d_start, sp.d_end, sp.code0), (sp.seg + 1, sp.seg + 2, sp.seg + 3));
        assert_eq!(tok.vocab_size(), base + 11);
        assert_eq!(sp.code(7) as usize, tok.vocab_size() - 1);
        assert_eq!((sp.pad, sp.im_end, sp.image_context), (0, 2, 5));
    }

    #[test]
    fn min_count_drops_rare_words() {
        let tok = build_word_tokenizer(CORPUS, 4, 2).unwrap();
        assert!(tok.token_id("camera").is_some());
        assert_eq!(tok.token_id("cylinder"), None);
        let unk = tok.token_id(UNK).unwrap();
        let ids = tok.encode("the cylinder").unwrap();
        assert_eq!(ids, vec![tok.token_id("the").unwrap(), tok.token_id(" ").unwrap(), unk]);
    }

    #[test]
    fn unknown_word_maps_to_unk_and_specials_are_single_tokens() {
        let tok = tiny();
        let unk = tok.token_id(UNK).unwrap();
        let ids = tok.encode("the zebra").unwrap();
        assert_eq!(ids[2], unk);
        let sp = special_tokens(&tok, 8).unwrap();
        let ids = tok.encode("cube[SEG]<d_start><d_3><d_end><|im_end|>").unwrap();
        assert_eq!(ids[1..], [sp.seg, sp.d_start, sp.code(3), sp.d_end, sp.im_end]);
    }

    #[test]
    fn chat_prompt_has_exactly_the_image_tokens() {
        let tok = tiny();
        let sp = special_tokens(&tok, 8).unwrap();
        for n in [0usize, 1, 7, 256] {
            let ids = tok.encode(&chat_prompt("What is the depth map for the image?", n, None)).unwrap();
            assert_eq!(ids.iter().filter(|&&i| i == sp.image_context).count(), n);
            assert!(!ids.contains(&tok.token_id(UNK).unwrap()));
            assert_eq!(ids[0], 1);
            assert_eq!(*ids.last().unwrap(), tok.token_id("\n").unwrap());
        }
    }

    #[test]
    fn extend_adds_a_contiguous_block_after_the_vocabulary() {
        // a "real" tokenizer without Perceptio tokens: the word model with only the chat specials added
        let base = tiny();
        let mut inner = Tokenizer::new(
            serde_json::from_value::<WordLevel>(serde_json::json!({
                "vocab": {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2, "<IMG_CONTEXT>": 3, "[UNK]": 4,
                          "a": 5},
                "unk_token": "[UNK]"
            }))
            .unwrap(),
        );
        inner.add_special_tokens(&[AddedToken::from("<|endoftext|>", true), AddedToken::from("<extra>", true)]);
        let real = TextTokenizer::from_tokenizer(inner);
        assert_eq!(real.vocab_size(), 7);
        assert_eq!(base_vocab_size(&real, 4), 7);
        assert!(matches!(special_tokens(&real, 4), Err(TokensError::Missing { token }) if token == "<d_0>"));
        let ext = extend_tokenizer(&real, 4).unwrap();
        let sp = special_tokens(&ext, 4).unwrap();
        assert_eq!((sp.seg, sp.d_start, sp.d_end, sp.code0), (7, 8, 9, 10));
        assert_eq!(ext.vocab_size(), 14);
        assert_eq!(base_vocab_size(&ext, 4), 7);
        // idempotent
        let again = extend_tokenizer(&ext, 4).unwrap();
        assert_eq!(special_tokens(&again, 4).unwrap(), sp);
        // the word tokenizer already has them
        let sp_base = special_tokens(&base, 8).unwrap();
        assert_eq!(special_tokens(&extend_tokenizer(&base, 8).unwrap(), 8).unwrap(), sp_base);
    }

    #[test]
    fn extend_rejects_pre_existing_non_contiguous_tokens() {
        let mut inner = Tokenizer::new(
            serde_json::from_value::<WordLevel>(serde_json::json!({
                "vocab": {"[UNK]": 0, "a": 1}, "unk_token": "[UNK]"
            }))
            .unwrap(),
        );
        // `<d_1>` exists before `[SEG]`: the block cannot be contiguous
        inner.add_special_tokens(&[AddedToken::from("<d_1>", true)]);
        let real = TextTokenizer::from_tokenizer(inner);
        let err = extend_tokenizer(&real, 3).unwrap_err();
        assert!(matches!(&err, TokensError::NotContiguous { token, .. } if token == "<d_1>"), "{err}");
        assert!(err.to_string().contains("<d_1>"));
    }

    #[test]
    fn special_tokens_names_the_missing_token_and_checks_codes() {
        let tok = tiny();
        let err = special_tokens(&tok, 9).unwrap_err();
        assert!(err.to_string().contains("<d_8>"), "{err}");
        assert!(matches!(special_tokens(&tok, 0), Err(TokensError::NoCodes)));
        assert!(matches!(build_word_tokenizer(CORPUS, 0, 1), Err(TokensError::NoCodes)));
    }

    #[test]
    fn save_and_reload_keeps_every_id() {
        let tok = tiny();
        let dir = tempfile::tempdir().unwrap();
        tok.save(dir.path()).unwrap();
        let back = TextTokenizer::from_file(dir.path()).unwrap();
        assert_eq!(special_tokens(&back, 8).unwrap(), special_tokens(&tok, 8).unwrap());
        let s = "Please segment the small red cube in this image.";
        assert_eq!(back.encode(s).unwrap(), tok.encode(s).unwrap());
        assert_eq!(back.vocab_size(), tok.vocab_size());
        // no temporary file left behind
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
