//! The tokenizer against the independent tiktoken encoding of the real Qwen vocabulary
//! (fixtures from scripts/fixtures/make_tokenizer.py): the committed sample tokenizer always, the
//! full 151,674-token tokenizer.json when the script has produced it (it is ~18 MB, not committed).

use std::path::PathBuf;

use perceptio_models::tokenizer::{TextTokenizer, chat_prompt};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn reference() -> Vec<(String, Vec<u32>)> {
    let text = std::fs::read_to_string(root().join("tests/fixtures/tokenizer/reference.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["strings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let ids = s["ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
            (s["text"].as_str().unwrap().to_string(), ids)
        })
        .collect()
}

fn check(tok: &TextTokenizer) -> usize {
    let refs = reference();
    for (text, ids) in &refs {
        assert_eq!(&tok.encode(text).unwrap(), ids, "encode {text:?}");
        assert_eq!(&tok.decode(ids, false).unwrap(), text, "decode {text:?}");
    }
    refs.len()
}

#[test]
fn sample_tokenizer_matches_tiktoken() {
    let tok = TextTokenizer::from_file(root().join("tests/fixtures/tokenizer/qwen2_sample")).unwrap();
    let n = check(&tok);
    assert!(n >= 10);
    assert_eq!(tok.token_id("<IMG_CONTEXT>"), Some(151_667));
    assert_eq!(tok.token_id("<|im_end|>"), Some(151_645));
}

#[test]
fn full_tokenizer_matches_tiktoken_when_generated() {
    let path = root().join("../target/perceptio-fixtures/qwen2_5_internvl/tokenizer.json");
    if !path.exists() {
        eprintln!("skipped: {} not generated (run scripts/fixtures/make_tokenizer.py)", path.display());
        return;
    }
    let tok = TextTokenizer::from_file(&path).unwrap();
    assert_eq!(tok.vocab_size(), 151_674);
    check(&tok);
}

#[test]
fn chat_template_is_internvl2_5_qwen() {
    let p = chat_prompt("Describe the image.", 2 * 4, None);
    assert_eq!(
        p,
        format!(
            "<|im_start|>user\n<img>{}</img>\nDescribe the image.<|im_end|>\n<|im_start|>assistant\n",
            "<IMG_CONTEXT>".repeat(8)
        )
    );
    // the template string is one of the reference strings: same ids as tiktoken
    let tok = TextTokenizer::from_file(root().join("tests/fixtures/tokenizer/qwen2_sample")).unwrap();
    let (_, ids) = reference().into_iter().find(|(t, _)| *t == p).unwrap();
    assert_eq!(tok.encode(&p).unwrap(), ids);
    assert_eq!(ids.iter().filter(|&&i| i == 151_667).count(), 8);
}
