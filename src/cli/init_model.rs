//! `perceptio init-model`: writes the model directory a training run starts from (tiny preset): a word-level
//! tokenizer built from the dataset's questions and answers, the trained depth VQ-VAE, and every other part
//! freshly initialised from a seed.

use std::path::PathBuf;

use anyhow::Context;
use perceptio_actors::perceptio::init::{dataset_texts, init_tiny_model_with};
use perceptio_models::perceptio::PerceptioConfig;

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
    /// Patch side of the InternViT in pixels (default 14).
    #[arg(long)]
    pub patch_size: Option<usize>,
    /// Width of the InternViT (default 64; its MLP is twice as wide).
    #[arg(long)]
    pub vision_width: Option<usize>,
    /// Layers of the InternViT (default 2).
    #[arg(long)]
    pub vision_layers: Option<usize>,
    /// Channels of a convolutional stem before the InternViT's patch projection, comma-separated (default none):
    /// 3x3 convolutions with GELU, each halving the resolution while the patch side left is even (a hybrid ViT;
    /// e.g. `--patch-size 16 --conv-stem 32,64,64,64,64`).
    #[arg(long, value_delimiter = ',')]
    pub conv_stem: Option<Vec<usize>>,
    /// Prompts put the image after the question (InternVL puts it first).
    #[arg(long)]
    pub image_last: bool,
    /// The layout `perceptio demo` uses: one image token per depth code, RoPE base 10000 and the image after
    /// the question (the sizes above, when given, apply after it).
    #[arg(long)]
    pub align_depth_grid: bool,
    /// Add the grounding map to the mask decoder (the `[SEG]` state scored against the image-token states, added
    /// to SAM2's mask logits), as `perceptio demo` does.
    #[arg(long)]
    pub seg_grounding: bool,
    /// Point answers state each marked point's depth level before the letter ("A 12, B 7, C 15. (C)"); the
    /// vocabulary gets the chain's words (docs/points.md, section 8).
    #[arg(long)]
    pub point_reasoning: bool,
    /// Each depth code takes the RoPE position of the image token of its cell, and the answer after the span sits
    /// as close to the image as it would without one (needs one image token per code: `--align-depth-grid`).
    #[arg(long)]
    pub span_at_image_positions: bool,
    /// SAM2's mask decoder upscales its mask without the backbone's high-resolution maps
    /// (`use_high_res_features: false`): trained from scratch, it then follows its prompt instead of marking every
    /// object (docs/referring.md).
    #[arg(long)]
    pub no_high_res_features: bool,
    /// SAM2 also gets a positive point prompt at the grounding map's soft arg-max (needs `--seg-grounding`;
    /// docs/referring.md).
    #[arg(long, requires = "seg_grounding")]
    pub seg_point_from_map: bool,
}

impl InitModelArgs {
    /// Applies the size overrides to a tiny-preset config.
    fn adjust(&self, cfg: &mut PerceptioConfig) {
        if self.align_depth_grid {
            cfg.align_image_with_depth_grid();
        }
        cfg.seg_grounding |= self.seg_grounding;
        cfg.point_reasoning |= self.point_reasoning;
        cfg.span_at_image_positions |= self.span_at_image_positions;
        cfg.seg_point_from_map |= self.seg_point_from_map;
        if self.no_high_res_features {
            cfg.sam2.mask_decoder_config.use_high_res_features = false;
        }
        if let Some(size) = self.image_size {
            cfg.vlm.vision.image_size = size;
        }
        if let Some(shuffle) = self.pixel_shuffle {
            cfg.vlm.shuffle = shuffle;
        }
        if let Some(patch) = self.patch_size {
            cfg.vlm.vision.patch_size = patch;
        }
        if let Some(width) = self.vision_width {
            cfg.vlm.vision.hidden_size = width;
            cfg.vlm.vision.intermediate_size = 2 * width;
        }
        if let Some(layers) = self.vision_layers {
            cfg.vlm.vision.num_hidden_layers = layers;
        }
        if let Some(stem) = &self.conv_stem {
            cfg.vlm.vision.conv_stem = stem.clone();
        }
        if let Some(theta) = self.rope_theta {
            cfg.vlm.text.rope_theta = theta;
        }
        cfg.image_last |= self.image_last;
    }
}

/// Runs `perceptio init-model`.
pub fn run(args: &InitModelArgs) -> anyhow::Result<()> {
    // sizes that cannot be built are refused before the dataset is read (the vocabulary does not matter here)
    let mut probe = PerceptioConfig::tiny(2, 1);
    args.adjust(&mut probe);
    probe.validate().context("the size overrides")?;
    let files = super::rows::parquet_files(&args.data).context("--data")?;
    let texts = dataset_texts(&files)?;
    let (cfg, _) = init_tiny_model_with(&texts, &args.vqvae, &args.out, args.seed, &|cfg| args.adjust(cfg))?;
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
