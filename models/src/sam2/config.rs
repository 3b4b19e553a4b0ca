//! SAM2 configuration, deserialisable from a transformers `Sam2Model` `config.json`, with presets
//! for the Hiera tiny/small/base+/large image encoders.

use burn::config::Config;

use super::error::Sam2Error;
use crate::config_json::fill_missing;

/// `vision_config.backbone_config`: the Hiera trunk.
#[derive(Config, Debug)]
pub struct HieraConfig {
    #[config(default = 96)]
    pub hidden_size: usize,
    #[config(default = 3)]
    pub num_channels: usize,
    #[config(default = "vec![1024, 1024]")]
    pub image_size: Vec<usize>,
    #[config(default = "vec![7, 7]")]
    pub patch_kernel_size: Vec<usize>,
    #[config(default = "vec![4, 4]")]
    pub patch_stride: Vec<usize>,
    #[config(default = "vec![3, 3]")]
    pub patch_padding: Vec<usize>,
    #[config(default = "vec![2, 2]")]
    pub query_stride: Vec<usize>,
    #[config(default = "vec![7, 7]")]
    pub window_positional_embedding_background_size: Vec<usize>,
    #[config(default = 3)]
    pub num_query_pool_stages: usize,
    #[config(default = "vec![1, 2, 7, 2]")]
    pub blocks_per_stage: Vec<usize>,
    #[config(default = "vec![96, 192, 384, 768]")]
    pub embed_dim_per_stage: Vec<usize>,
    #[config(default = "vec![1, 2, 4, 8]")]
    pub num_attention_heads_per_stage: Vec<usize>,
    #[config(default = "vec![8, 4, 14, 7]")]
    pub window_size_per_stage: Vec<usize>,
    #[config(default = "vec![5, 7, 9]")]
    pub global_attention_blocks: Vec<usize>,
    #[config(default = 4.0)]
    pub mlp_ratio: f64,
    #[config(default = 1e-6)]
    pub layer_norm_eps: f64,
}

/// `vision_config`: trunk + FPN neck.
#[derive(Config, Debug)]
pub struct Sam2VisionConfig {
    #[config(default = "HieraConfig::new()")]
    pub backbone_config: HieraConfig,
    /// Trunk widths, deepest first.
    #[config(default = "vec![768, 384, 192, 96]")]
    pub backbone_channel_list: Vec<usize>,
    /// Sizes of the three feature levels the decoder uses, finest first.
    #[config(default = "vec![vec![256, 256], vec![128, 128], vec![64, 64]]")]
    pub backbone_feature_sizes: Vec<Vec<usize>>,
    #[config(default = 256)]
    pub fpn_hidden_size: usize,
    #[config(default = 1)]
    pub fpn_kernel_size: usize,
    #[config(default = 1)]
    pub fpn_stride: usize,
    #[config(default = 0)]
    pub fpn_padding: usize,
    #[config(default = "vec![2, 3]")]
    pub fpn_top_down_levels: Vec<usize>,
    #[config(default = 3)]
    pub num_feature_levels: usize,
}

/// `prompt_encoder_config`.
#[derive(Config, Debug)]
pub struct PromptEncoderConfig {
    #[config(default = 256)]
    pub hidden_size: usize,
    #[config(default = 1024)]
    pub image_size: usize,
    #[config(default = 16)]
    pub patch_size: usize,
    #[config(default = 16)]
    pub mask_input_channels: usize,
    #[config(default = 4)]
    pub num_point_embeddings: usize,
    #[config(default = 1e-6)]
    pub layer_norm_eps: f64,
    /// Standard deviation of the random Fourier matrix at initialisation (transformers' `scale`). Checkpoints
    /// carry the matrix itself; this only shapes a fresh model: the larger, the finer the positions a point
    /// prompt can tell apart.
    #[config(default = 1.0)]
    pub scale: f64,
}

/// `mask_decoder_config`.
#[derive(Config, Debug)]
pub struct MaskDecoderConfig {
    #[config(default = 256)]
    pub hidden_size: usize,
    #[config(default = 2048)]
    pub mlp_dim: usize,
    #[config(default = 2)]
    pub num_hidden_layers: usize,
    #[config(default = 8)]
    pub num_attention_heads: usize,
    #[config(default = 2)]
    pub attention_downsample_rate: usize,
    #[config(default = 3)]
    pub num_multimask_outputs: usize,
    #[config(default = 3)]
    pub iou_head_depth: usize,
    #[config(default = 256)]
    pub iou_head_hidden_dim: usize,
    #[config(default = true)]
    pub dynamic_multimask_via_stability: bool,
    #[config(default = 0.05)]
    pub dynamic_multimask_stability_delta: f64,
    #[config(default = 0.98)]
    pub dynamic_multimask_stability_thresh: f64,
    /// Add the backbone's stride-4 and stride-8 maps (`conv_s0`, `conv_s1`) while upscaling the mask, as SAM2
    /// does (its `use_high_res_features_in_sam`; not a transformers field, so checkpoints load with it on). Off,
    /// the mask is upscaled from the prompted image embedding alone. A tiny SAM2 trained from scratch with them
    /// learns the mask of every object and ignores its prompt; without them it learns to follow the prompt
    /// (docs/referring.md).
    #[config(default = true)]
    pub use_high_res_features: bool,
}

/// A transformers `Sam2Config`.
#[derive(Config, Debug)]
pub struct Sam2Config {
    #[config(default = "Sam2VisionConfig::new()")]
    pub vision_config: Sam2VisionConfig,
    #[config(default = "PromptEncoderConfig::new()")]
    pub prompt_encoder_config: PromptEncoderConfig,
    #[config(default = "MaskDecoderConfig::new()")]
    pub mask_decoder_config: MaskDecoderConfig,
}

impl Sam2Config {
    /// A tiny SAM2 for tests and the demo: 128 px input (8x8 embedding, 32x32 mask logits), Hiera embed 16 with
    /// stages [1, 2, 2, 1], width 32 in the neck, prompt encoder and mask decoder (the shape of the parity fixture).
    pub fn tiny() -> Self {
        let trunk = HieraConfig::new()
            .with_hidden_size(16)
            .with_image_size(vec![128, 128])
            .with_blocks_per_stage(vec![1, 2, 2, 1])
            .with_embed_dim_per_stage(vec![16, 32, 64, 128])
            .with_num_attention_heads_per_stage(vec![1, 1, 2, 2])
            .with_global_attention_blocks(vec![4])
            .with_window_size_per_stage(vec![8, 4, 6, 3])
            .with_window_positional_embedding_background_size(vec![4, 4]);
        let vision = Sam2VisionConfig::new()
            .with_backbone_config(trunk)
            .with_backbone_channel_list(vec![128, 64, 32, 16])
            .with_backbone_feature_sizes(vec![vec![32, 32], vec![16, 16], vec![8, 8]])
            .with_fpn_hidden_size(32);
        Self::new()
            .with_vision_config(vision)
            .with_prompt_encoder_config(PromptEncoderConfig::new().with_hidden_size(32).with_image_size(128))
            .with_mask_decoder_config(
                MaskDecoderConfig::new()
                    .with_hidden_size(32)
                    .with_mlp_dim(64)
                    .with_num_attention_heads(2)
                    .with_iou_head_hidden_dim(32),
            )
    }

    /// SAM2.1 Hiera-tiny: embed 96, heads 1, stages [1,2,7,2], global blocks [5,7,9].
    pub fn hiera_tiny() -> Self {
        Self::preset(96, 1, vec![1, 2, 7, 2], vec![5, 7, 9], vec![8, 4, 14, 7], vec![7, 7])
    }

    /// SAM2.1 Hiera-small: embed 96, heads 1, stages [1,2,11,2], global blocks [7,10,13].
    pub fn hiera_small() -> Self {
        Self::preset(96, 1, vec![1, 2, 11, 2], vec![7, 10, 13], vec![8, 4, 14, 7], vec![7, 7])
    }

    /// SAM2.1 Hiera-base+: embed 112, heads 2, stages [2,3,16,3], global blocks [12,16,20].
    pub fn hiera_base_plus() -> Self {
        Self::preset(112, 2, vec![2, 3, 16, 3], vec![12, 16, 20], vec![8, 4, 14, 7], vec![14, 14])
    }

    /// SAM2.1 Hiera-large: embed 144, heads 2, stages [2,6,36,4], global blocks [23,33,43].
    pub fn hiera_large() -> Self {
        Self::preset(144, 2, vec![2, 6, 36, 4], vec![23, 33, 43], vec![8, 4, 16, 8], vec![7, 7])
    }

    fn preset(
        embed: usize,
        heads: usize,
        stages: Vec<usize>,
        global: Vec<usize>,
        windows: Vec<usize>,
        background: Vec<usize>,
    ) -> Self {
        let dims: Vec<usize> = (0..4).map(|i| embed << i).collect();
        let trunk = HieraConfig::new()
            .with_hidden_size(embed)
            .with_blocks_per_stage(stages)
            .with_embed_dim_per_stage(dims.clone())
            .with_num_attention_heads_per_stage((0..4).map(|i| heads << i).collect())
            .with_global_attention_blocks(global)
            .with_window_size_per_stage(windows)
            .with_window_positional_embedding_background_size(background);
        Self::new().with_vision_config(
            Sam2VisionConfig::new()
                .with_backbone_config(trunk)
                .with_backbone_channel_list(dims.into_iter().rev().collect()),
        )
    }

    /// Reads a transformers `config.json`.
    pub fn from_json_file(path: &std::path::Path) -> Result<Self, Sam2Error> {
        let text =
            std::fs::read_to_string(path).map_err(|source| Sam2Error::Io { path: path.to_path_buf(), source })?;
        let bad = |e: serde_json::Error| Sam2Error::File { path: path.to_path_buf(), reason: e.to_string() };
        let mut value: serde_json::Value = serde_json::from_str(&text).map_err(bad)?;
        // not a transformers field: their configs mean SAM2's default
        fill_missing(&mut value, "mask_decoder_config.use_high_res_features", true.into());
        let cfg: Self = serde_json::from_value(value).map_err(bad)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Side of the (square) model input.
    pub fn image_size(&self) -> usize {
        self.prompt_encoder_config.image_size
    }

    /// Checks the combinations the model relies on.
    pub fn validate(&self) -> Result<(), Sam2Error> {
        let t = &self.vision_config.backbone_config;
        let err = |field: &'static str, reason: String| Err(Sam2Error::Config { field, reason });
        let scale = self.prompt_encoder_config.scale;
        if !(scale.is_finite() && scale > 0.0) {
            return err("prompt_encoder_config.scale", format!("{scale} is not a positive number"));
        }
        let stages = t.blocks_per_stage.len();
        if stages == 0
            || t.embed_dim_per_stage.len() != stages
            || t.num_attention_heads_per_stage.len() != stages
            || t.window_size_per_stage.len() != stages
        {
            return err("backbone_config.blocks_per_stage", "per-stage lists must have one entry per stage".into());
        }
        if t.blocks_per_stage.contains(&0) {
            return err("backbone_config.blocks_per_stage", "a stage has no block".into());
        }
        for (d, h) in t.embed_dim_per_stage.iter().zip(&t.num_attention_heads_per_stage) {
            if *h == 0 || d % h != 0 {
                return err(
                    "backbone_config.num_attention_heads_per_stage",
                    format!("{h} heads do not divide width {d}"),
                );
            }
        }
        for v in [&t.patch_kernel_size, &t.patch_stride, &t.patch_padding, &t.query_stride] {
            if v.len() != 2 || v[0] != v[1] || v[0] == 0 && !std::ptr::eq(v, &t.patch_padding) {
                return err(
                    "backbone_config.patch_*/query_stride",
                    format!("{v:?}: only square, positive values are supported"),
                );
            }
        }
        if t.window_positional_embedding_background_size.len() != 2 {
            return err("backbone_config.window_positional_embedding_background_size", "needs two values".into());
        }
        let v = &self.vision_config;
        if v.backbone_channel_list.len() != stages || v.num_feature_levels != 3 || v.backbone_feature_sizes.len() != 3 {
            return err(
                "vision_config.backbone_channel_list/num_feature_levels",
                "expected one channel entry per stage and three feature levels".into(),
            );
        }
        let d = &self.mask_decoder_config;
        if d.hidden_size != v.fpn_hidden_size || self.prompt_encoder_config.hidden_size != d.hidden_size {
            return err(
                "mask_decoder_config.hidden_size",
                "mask decoder, prompt encoder and FPN widths must agree".into(),
            );
        }
        let internal = d.hidden_size / d.attention_downsample_rate.max(1);
        if d.num_attention_heads == 0
            || !internal.is_multiple_of(d.num_attention_heads)
            || !d.hidden_size.is_multiple_of(8)
        {
            return err(
                "mask_decoder_config.num_attention_heads",
                "heads must divide the (downsampled) width, and the width must be a multiple of 8".into(),
            );
        }
        if d.iou_head_depth < 2 || d.num_hidden_layers < 2 {
            return err("mask_decoder_config.iou_head_depth", "MLPs need at least two layers".into());
        }
        let p = &self.prompt_encoder_config;
        if p.num_point_embeddings < 4 || p.patch_size == 0 || !p.mask_input_channels.is_multiple_of(4) {
            return err(
                "prompt_encoder_config",
                "needs >= 4 point embeddings, a patch size and mask channels divisible by 4".into(),
            );
        }
        Ok(())
    }
}
