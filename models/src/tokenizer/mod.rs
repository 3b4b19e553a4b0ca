//! Text tokenizer (`tokenizer.json` through the `tokenizers` crate) and the InternVL2.5 chat
//! template (Qwen variant).

use std::path::{Path, PathBuf};

/// Errors of the tokenizer.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("{path}: cannot load tokenizer: {message}")]
    Load { path: PathBuf, message: String },
    #[error("encoding {text:?}: {message}")]
    Encode { text: String, message: String },
    #[error("decoding {n} ids: {message}")]
    Decode { n: usize, message: String },
    #[error("{path}: cannot save tokenizer: {message}")]
    Save { path: PathBuf, message: String },
}

/// A HuggingFace `tokenizer.json` tokenizer.
#[derive(Clone)]
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer").field("vocab_size", &self.inner.get_vocab_size(true)).finish()
    }
}

/// Image start / context / end markers of InternVL.
pub const IMG_START: &str = "<img>";
pub const IMG_CONTEXT: &str = "<IMG_CONTEXT>";
pub const IMG_END: &str = "</img>";
/// End of a chat turn (the stop token of generation).
pub const IM_END: &str = "<|im_end|>";

impl TextTokenizer {
    /// Loads a `tokenizer.json` file, or the one in a checkpoint folder.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, TokenizerError> {
        let mut path = path.as_ref().to_path_buf();
        if path.is_dir() {
            path = path.join("tokenizer.json");
        }
        let inner = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| TokenizerError::Load { path: path.clone(), message: e.to_string() })?;
        Ok(Self { inner })
    }

    /// Wraps an already built `tokenizers` tokenizer.
    pub fn from_tokenizer(inner: tokenizers::Tokenizer) -> Self {
        Self { inner }
    }

    /// The wrapped `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Writes `tokenizer.json` to `path` (a file, or a folder that gets `tokenizer.json`) atomically: the JSON
    /// goes to a temporary file next to the target, which is then renamed over it.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), TokenizerError> {
        let mut path = path.as_ref().to_path_buf();
        if path.is_dir() {
            path = path.join("tokenizer.json");
        }
        let err = |message: String| TokenizerError::Save { path: path.clone(), message };
        let json = self.inner.to_string(false).map_err(|e| err(e.to_string()))?;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let tmp = path.with_file_name(format!(".{name}.tmp{}", std::process::id()));
        std::fs::write(&tmp, json).map_err(|e| err(e.to_string()))?;
        std::fs::rename(&tmp, &path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            err(e.to_string())
        })
    }

    /// Ids of `text` (special tokens in the text are recognised; nothing is added).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        self.inner
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| TokenizerError::Encode { text: text.chars().take(80).collect(), message: e.to_string() })
    }

    /// Text of `ids`.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, TokenizerError> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| TokenizerError::Decode { n: ids.len(), message: e.to_string() })
    }

    /// Id of a token (including added/special tokens).
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

/// InternVL2.5 chat prompt (Qwen variant), one user turn:
/// `<|im_start|>user\n<img>` + `<IMG_CONTEXT>` x `image_tokens` + `</img>\n{question}<|im_end|>\n<|im_start|>assistant\n`.
/// With `image_tokens = 0` the image block is left out; `system` adds a system turn first.
pub fn chat_prompt(question: &str, image_tokens: usize, system: Option<&str>) -> String {
    chat_prompt_with(question, image_tokens, system, false)
}

/// [`chat_prompt`] with the image block after the question instead of before it (`<|im_start|>user\n{question}\n
/// <img>...</img><|im_end|>...`) when `image_last`: the image tokens then sit at the same distance from the answer
/// whatever the question's length.
pub fn chat_prompt_with(question: &str, image_tokens: usize, system: Option<&str>, image_last: bool) -> String {
    let mut s = String::new();
    if let Some(sys) = system {
        s.push_str(&format!("<|im_start|>system\n{sys}<|im_end|>\n"));
    }
    s.push_str("<|im_start|>user\n");
    let image = |s: &mut String| {
        s.push_str(IMG_START);
        s.push_str(&IMG_CONTEXT.repeat(image_tokens));
        s.push_str(IMG_END);
    };
    if image_tokens > 0 && !image_last {
        image(&mut s);
        s.push('\n');
    }
    s.push_str(question);
    if image_tokens > 0 && image_last {
        s.push('\n');
        image(&mut s);
    }
    s.push_str("<|im_end|>\n<|im_start|>assistant\n");
    s
}
