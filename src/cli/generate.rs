//! `perceptio generate`: runs a checkpoint folder (InternVL in either layout, or a plain
//! Qwen2 / InternLM2 causal LM) on a prompt, optionally with an image, and prints the completion;
//! `--dump-logits` writes the prompt's logits for comparison with another implementation.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use perceptio_models::internvl::{Runner, load_png};
use perceptio_models::llm::GenerateOptions;

/// Arguments of `perceptio generate`.
#[derive(clap::Args, Debug)]
pub struct GenerateArgs {
    /// Checkpoint folder: config.json + model.safetensors (or shards + index) [+ tokenizer.json].
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// PNG image (InternVL checkpoints only); tiled dynamically (448 px tiles + thumbnail).
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// The question; wrapped in the InternVL2.5 chat template unless --raw.
    pub prompt: Option<String>,
    /// Token ids instead of a text prompt (whitespace/comma separated, or a JSON array).
    #[arg(long)]
    pub input_ids: Option<PathBuf>,
    /// Write the prompt's logits (`logits` [1, len, vocab] f32 and `input_ids`) to this safetensors file.
    #[arg(long)]
    pub dump_logits: Option<PathBuf>,
    /// Use the prompt text as is (no chat template).
    #[arg(long)]
    pub raw: bool,
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Maximum number of image tiles (a thumbnail is added when there are several).
    #[arg(long, default_value_t = 12)]
    pub max_tiles: usize,
}

fn read_ids(path: &PathBuf) -> Result<Vec<u32>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let trimmed = text.trim();
    if trimmed.starts_with('[') {
        return serde_json::from_str(trimmed).with_context(|| format!("{}: not a JSON array of ids", path.display()));
    }
    trimmed
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<u32>().with_context(|| format!("{}: bad token id `{s}`", path.display())))
        .collect()
}

/// Runs `perceptio generate`.
pub fn run(args: &GenerateArgs) -> Result<()> {
    let runner = Runner::load(&args.checkpoint)?;
    let pixels = match &args.image {
        Some(path) => Some(runner.pixels(&load_png(path)?, args.max_tiles)?),
        None => None,
    };
    let ids = match (&args.input_ids, &args.prompt) {
        (Some(path), _) => read_ids(path)?,
        (None, Some(text)) => runner.prompt_ids(text, pixels.as_ref(), args.raw)?,
        (None, None) => bail!("give a prompt or --input-ids"),
    };
    if ids.is_empty() {
        bail!("empty prompt");
    }
    if let Some(out) = &args.dump_logits {
        runner.dump_logits(&ids, pixels.as_ref(), out)?;
        eprintln!("wrote the logits of {} prompt tokens to {}", ids.len(), out.display());
    }
    if args.max_new_tokens == 0 {
        return Ok(());
    }
    let opts = if args.temperature > 0.0 {
        GenerateOptions::sampled(args.max_new_tokens, args.temperature, args.top_p, args.seed)
    } else {
        GenerateOptions::greedy(args.max_new_tokens)
    };
    let new = runner.generate(&ids, pixels.as_ref(), &opts)?;
    println!("{}", runner.decode(&new)?);
    Ok(())
}
