//! Creating a Perceptio model directory to train from: a word-level tokenizer built from a dataset's texts (the
//! tiny preset's vocabulary), the tiny config sized to it, the trained depth VQ-VAE copied in, and every other
//! part freshly initialised from a seed.

use std::fs::File;
use std::path::{Path, PathBuf};

use arrow::array::{Array, StringArray};
use burn::tensor::Device;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use perceptio_models::depth::train::{TrainState, load_checkpoint, save_checkpoint};
use perceptio_models::depth::{VqVae, VqVaeConfig};
use perceptio_models::perceptio::checkpoint::{TOKENIZER_FILE, save_model};
use perceptio_models::perceptio::sequence::point_chain_vocabulary;
use perceptio_models::perceptio::tokens::{base_vocab_size, build_word_tokenizer, special_tokens};
use perceptio_models::perceptio::{Perceptio, PerceptioConfig};

/// Errors of creating a model directory.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("{0}")]
    Other(String),
}

fn file_err(path: &Path, e: impl std::fmt::Display) -> InitError {
    InitError::File { path: path.to_path_buf(), reason: e.to_string() }
}

/// Writes an untrained tiny depth tokenizer (weights drawn from `seed`) as a checkpoint in `dir` and returns it:
/// the stand-in where only shapes and plumbing matter (tests, benchmarks, smoke runs of `init_tiny_model`).
pub fn write_untrained_vqvae(dir: &Path, seed: u64) -> Result<VqVae, InitError> {
    let device = Device::flex();
    device.seed(seed);
    let cfg = VqVaeConfig::tiny();
    let vq = cfg.init(&device).map_err(|e| InitError::Other(e.to_string()))?;
    save_checkpoint(&vq, &cfg, &TrainState::default(), dir).map_err(|e| file_err(dir, e))?;
    Ok(vq)
}

/// Every `question`, `answer` and `expression` string of the parquet files (the tokenizer's corpus).
pub fn dataset_texts(files: &[PathBuf]) -> Result<Vec<String>, InitError> {
    let mut texts = Vec::new();
    for path in files {
        let file = File::open(path).map_err(|e| file_err(path, e))?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| file_err(path, e))?;
        for batch in builder.build().map_err(|e| file_err(path, e))? {
            let batch = batch.map_err(|e| file_err(path, e))?;
            for name in ["question", "answer", "expression"] {
                let Some(col) = batch.column_by_name(name) else { continue };
                let col = col
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .ok_or_else(|| file_err(path, format!("column `{name}` is not utf8")))?;
                texts.extend((0..col.len()).filter(|&i| !col.is_null(i)).map(|i| col.value(i).to_string()));
            }
        }
    }
    Ok(texts)
}

/// Writes a fresh tiny model directory at `out`: tokenizer from `texts`, VQ-VAE from the `vqvae` checkpoint
/// directory (written by `perceptio train-vqvae`), other parts from `seed`. Returns the config and the model.
pub fn init_tiny_model(
    texts: &[String],
    vqvae: &Path,
    out: &Path,
    seed: u64,
) -> Result<(PerceptioConfig, Perceptio), InitError> {
    init_tiny_model_with(texts, vqvae, out, seed, &|_| {})
}

/// [`init_tiny_model`] with `adjust` applied to the tiny preset before any weight is drawn (sizes to experiment
/// with); the adjusted config is validated. When it turns on `point_reasoning`, the vocabulary also holds the
/// point chain's words.
pub fn init_tiny_model_with(
    texts: &[String],
    vqvae: &Path,
    out: &Path,
    seed: u64,
    adjust: &dyn Fn(&mut PerceptioConfig),
) -> Result<(PerceptioConfig, Perceptio), InitError> {
    let device = Device::flex();
    let (vq, vq_cfg) = load_checkpoint(vqvae, &device).map_err(|e| file_err(vqvae, e))?;
    let mut wants = PerceptioConfig::tiny(2, 1);
    adjust(&mut wants);
    let chain = wants.point_reasoning.then(point_chain_vocabulary);
    let corpus = texts.iter().map(String::as_str).chain(chain.as_deref());
    let tokenizer = build_word_tokenizer(corpus, vq_cfg.num_codes, 1).map_err(|e| InitError::Other(e.to_string()))?;
    let specials = special_tokens(&tokenizer, vq_cfg.num_codes).map_err(|e| InitError::Other(e.to_string()))?;
    let base = base_vocab_size(&tokenizer, vq_cfg.num_codes);
    let mut cfg = PerceptioConfig::tiny(base, specials.image_context as usize);
    cfg.vqvae = vq_cfg;
    cfg.added_tokens = cfg.num_codes() + 3;
    adjust(&mut cfg);
    device.seed(seed);
    let mut model = cfg.init(&device).map_err(|e| InitError::Other(e.to_string()))?;
    model.vqvae = vq;
    std::fs::create_dir_all(out).map_err(|e| file_err(out, e))?;
    tokenizer.save(out.join(TOKENIZER_FILE)).map_err(|e| file_err(&out.join(TOKENIZER_FILE), e))?;
    save_model(out, &cfg, &model).map_err(|e| InitError::Other(e.to_string()))?;
    Ok((cfg, model))
}
