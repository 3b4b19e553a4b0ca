//! Running any checkpoint folder end to end (what `perceptio generate` does): InternVL in either
//! layout or a plain Qwen2 / InternLM2 causal LM, its tokenizer, image tiling, generation and the
//! prompt's logits.

use std::path::{Path, PathBuf};

use burn::prelude::*;

use super::checkpoint::load_internvl;
use super::model::{InternVl, InternVlError};
use super::tiling::{ImageError, RgbImage, TilingConfig, tile_image};
use crate::llm::{GenerateOptions, LoadError, Qwen2ForCausalLM, generate, load_causal_lm, read_config_json};
use crate::tokenizer::{TextTokenizer, TokenizerError, chat_prompt};
use crate::weights::{WeightsError, write_tensors};

/// Errors of [`Runner`].
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Model(#[from] InternVlError),
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error("{path}: {message}")]
    Usage { path: PathBuf, message: String },
}

enum Model {
    Vlm(Box<InternVl>, usize),
    Llm(Box<Qwen2ForCausalLM>),
}

/// Image tiles ready for the encoder, `[tiles, 3, tile, tile]`.
#[derive(Debug, Clone)]
pub struct Pixels(Tensor<4>);

impl Pixels {
    /// Number of tiles.
    pub fn tiles(&self) -> usize {
        self.0.dims()[0]
    }
}

/// A loaded checkpoint folder.
pub struct Runner {
    dir: PathBuf,
    model: Model,
    tokenizer: Option<TextTokenizer>,
    device: Device,
}

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner").field("dir", &self.dir).finish()
    }
}

impl Runner {
    /// Loads `dir` (InternVL if `config.json` has a `vision_config`, else a causal LM) and its
    /// `tokenizer.json` when present, on the default device.
    pub fn load(dir: impl AsRef<Path>) -> Result<Self, RunError> {
        let dir = dir.as_ref().to_path_buf();
        let device = Device::default();
        let json = read_config_json(&dir)?;
        let model = if json.get("vision_config").is_some() {
            let loaded = load_internvl(&dir, &device)?;
            let tpt = loaded.config.tokens_per_tile();
            let mut model = loaded.model;
            let tokenizer = TextTokenizer::from_file(&dir).ok();
            if json.get("image_token_id").is_none()
                && let Some(id) = tokenizer.as_ref().and_then(|t| t.token_id(crate::tokenizer::IMG_CONTEXT))
            {
                model.image_token_id = id as usize;
            }
            Model::Vlm(Box::new(model), tpt)
        } else {
            Model::Llm(Box::new(load_causal_lm(&dir, &device)?.model))
        };
        let tokenizer = if dir.join("tokenizer.json").exists() { Some(TextTokenizer::from_file(&dir)?) } else { None };
        Ok(Self { dir, model, tokenizer, device })
    }

    /// Whether the checkpoint has an image encoder.
    pub fn is_vision_language(&self) -> bool {
        matches!(self.model, Model::Vlm(..))
    }

    /// Tiles an image for the encoder (tile side from the checkpoint's position embeddings).
    pub fn pixels(&self, img: &RgbImage, max_tiles: usize) -> Result<Pixels, RunError> {
        let Model::Vlm(m, _) = &self.model else {
            return Err(RunError::Usage {
                path: self.dir.clone(),
                message: "an image needs an InternVL checkpoint (this one has no vision_config)".into(),
            });
        };
        let emb = &m.vision_tower.embeddings;
        let n1 = emb.position_embeddings.val().dims()[1];
        let side = (((n1 - 1) as f64).sqrt().round() as usize) * emb.patch_size;
        let cfg = TilingConfig { tile: side, max_tiles, ..Default::default() };
        let (data, n) = tile_image(img, &cfg);
        Ok(Pixels(Tensor::from_data(TensorData::new(data, [n, 3, side, side]), &self.device)))
    }

    /// Ids of a prompt: the InternVL2.5 chat template around `text` (with the image block for
    /// `pixels`) unless `raw`.
    pub fn prompt_ids(&self, text: &str, pixels: Option<&Pixels>, raw: bool) -> Result<Vec<u32>, RunError> {
        let tok = self.tokenizer.as_ref().ok_or_else(|| RunError::Usage {
            path: self.dir.clone(),
            message: "no tokenizer.json in the checkpoint folder (give token ids instead)".into(),
        })?;
        let image_tokens = match (&self.model, pixels) {
            (Model::Vlm(_, tpt), Some(p)) => p.tiles() * tpt,
            _ => 0,
        };
        let text = if raw { text.to_string() } else { chat_prompt(text, image_tokens, None) };
        Ok(tok.encode(&text)?)
    }

    /// Writes the logits `[1, len, vocab]` (f32) of the prompt's forward pass and the ids.
    pub fn dump_logits(&self, ids: &[u32], pixels: Option<&Pixels>, out: &Path) -> Result<(), RunError> {
        let logits = match &self.model {
            Model::Vlm(m, _) => m.forward(&[ids.to_vec()], pixels.map(|p| p.0.clone()))?,
            Model::Llm(m) => m.forward(crate::llm::ids_tensor(&[ids.to_vec()], &self.device)),
        };
        let ids_data = TensorData::new(ids.iter().map(|&x| x as i64).collect(), [1, ids.len()]);
        write_tensors(
            out,
            vec![("logits".into(), logits.into_data().convert::<f32>()), ("input_ids".into(), ids_data)],
        )?;
        Ok(())
    }

    /// Generates a continuation (stopping at `<|im_end|>` / `<|endoftext|>` when the tokenizer has them).
    pub fn generate(&self, ids: &[u32], pixels: Option<&Pixels>, opts: &GenerateOptions) -> Result<Vec<u32>, RunError> {
        let mut opts = opts.clone();
        if let Some(tok) = &self.tokenizer {
            let stops: Vec<u32> = ["<|im_end|>", "<|endoftext|>"].iter().filter_map(|s| tok.token_id(s)).collect();
            opts = opts.with_stop_tokens(&stops);
        }
        let out = match &self.model {
            Model::Vlm(m, _) => m.generate(&[ids.to_vec()], pixels.map(|p| p.0.clone()), &opts)?,
            Model::Llm(m) => generate(m, &[ids.to_vec()], &opts, &self.device),
        };
        Ok(out.into_iter().next().unwrap_or_default())
    }

    /// Text of generated ids (special tokens dropped), or the ids when there is no tokenizer.
    pub fn decode(&self, ids: &[u32]) -> Result<String, RunError> {
        Ok(match &self.tokenizer {
            Some(tok) => tok.decode(ids, true)?,
            None => ids.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(" "),
        })
    }
}
