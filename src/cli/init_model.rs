//! `perceptio init-model`: writes the model directory a training run starts from (tiny preset): a word-level
//! tokenizer built from the dataset's questions and answers, the trained depth VQ-VAE, and every other part
//! freshly initialised from a seed.

use std::path::PathBuf;

use anyhow::{Context, bail};
use perceptio_actors::perceptio::init::{dataset_texts, init_tiny_model};

/// Arguments of `perceptio init-model`.
#[derive(clap::Args, Debug)]
pub struct InitModelArgs {
    /// Parquet files (glob) whose `question`/`answer`/`expression` texts make the vocabulary.
    #[arg(long)]
    pub data: String,
    /// Depth VQ-VAE checkpoint directory (from `perceptio train-vqvae`).
    #[arg(long)]
    pub vqvae: PathBuf,
    /// Model directory to write.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// Runs `perceptio init-model`.
pub fn run(args: &InitModelArgs) -> anyhow::Result<()> {
    let mut files: Vec<PathBuf> = glob::glob(&args.data)
        .with_context(|| format!("bad --data pattern `{}`", args.data))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("listing `{}`", args.data))?;
    files.sort();
    if files.is_empty() {
        bail!("--data `{}` matches no file", args.data);
    }
    let texts = dataset_texts(&files)?;
    let (cfg, _) = init_tiny_model(&texts, &args.vqvae, &args.out, args.seed)?;
    println!(
        "wrote {} (vocabulary {} + {} added tokens, {} image tokens per image, {} texts from {} files)",
        args.out.display(),
        cfg.vlm.text.vocab_size,
        cfg.added_tokens,
        cfg.image_tokens(),
        texts.len(),
        files.len()
    );
    Ok(())
}
