//! `perceptio init-model`: writes the model directory a training run starts from (tiny preset): a word-level
//! tokenizer built from the dataset's questions and answers, the trained depth VQ-VAE, and every other part
//! freshly initialised from a seed.

use std::path::PathBuf;

use anyhow::{Context, bail};
use perceptio_actors::perceptio::init::{dataset_texts, init_tiny_model_with};

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
    /// Image side the InternViT takes (default 112 px: 8x8 patches of 14 px).
    #[arg(long)]
    pub image_size: Option<usize>,
    /// Pixel-shuffle factor between the InternViT and the LLM (default 2: a quarter as many image tokens as
    /// patches; 1 keeps one token per patch).
    #[arg(long)]
    pub pixel_shuffle: Option<usize>,
    /// RoPE base of the LLM (default 1000000, Qwen2's).
    #[arg(long)]
    pub rope_theta: Option<f64>,
    /// Prompts put the image after the question (InternVL puts it first).
    #[arg(long)]
    pub image_last: bool,
}

impl InitModelArgs {
    /// Checks the size overrides against a 14 px patch.
    fn check_sizes(&self) -> anyhow::Result<()> {
        let shuffle = self.pixel_shuffle.unwrap_or(2);
        if shuffle == 0 {
            bail!("--pixel-shuffle must be at least 1");
        }
        if let Some(size) = self.image_size {
            let unit = 14 * shuffle;
            if size == 0 || size % unit != 0 {
                bail!(
                    "--image-size {size} is not a positive multiple of 14 px patches times the pixel shuffle ({unit})"
                );
            }
        }
        if let Some(theta) = self.rope_theta
            && !(theta.is_finite() && theta > 1.0)
        {
            bail!("--rope-theta {theta} is not a number above 1");
        }
        Ok(())
    }
}

/// Runs `perceptio init-model`.
pub fn run(args: &InitModelArgs) -> anyhow::Result<()> {
    args.check_sizes()?;
    let mut files: Vec<PathBuf> = glob::glob(&args.data)
        .with_context(|| format!("bad --data pattern `{}`", args.data))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("listing `{}`", args.data))?;
    files.sort();
    if files.is_empty() {
        bail!("--data `{}` matches no file", args.data);
    }
    let texts = dataset_texts(&files)?;
    let adjust = |cfg: &mut perceptio_models::perceptio::PerceptioConfig| {
        if let Some(size) = args.image_size {
            cfg.vlm.vision.image_size = size;
        }
        if let Some(shuffle) = args.pixel_shuffle {
            cfg.vlm.shuffle = shuffle;
        }
        if let Some(theta) = args.rope_theta {
            cfg.vlm.text.rope_theta = theta;
        }
        cfg.image_last = args.image_last;
    };
    let (cfg, _) = init_tiny_model_with(&texts, &args.vqvae, &args.out, args.seed, &adjust)?;
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
