//! Depth Anything V2 (the offline depth teacher): DINOv2 backbone + DPT neck + relative-depth head,
//! configured from a transformers `config.json`, S/B/L presets, loading from a transformers
//! `DepthAnythingForDepthEstimation` checkpoint, and ImageNet preprocessing to a multiple of 14.

use std::path::Path;

use burn::config::Config;
use burn::module::Module;
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use burn::tensor::{Device, Tensor};

use super::dinov2::{Dinov2, Dinov2Config};
use super::dpt::{DepthHead, DptNeck};
use super::error::DepthError;
use crate::weights::{Checkpoint, KeyTable, LoadOptions, LoadReport, load_module};

/// ImageNet mean, as the Depth Anything image processor uses.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet std.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// A transformers `DepthAnythingConfig` (unused fields are ignored).
#[derive(Config, Debug)]
pub struct DepthAnythingConfig {
    #[config(default = "Dinov2Config::new()")]
    pub backbone_config: Dinov2Config,
    #[config(default = 14)]
    pub patch_size: usize,
    #[config(default = 384)]
    pub reassemble_hidden_size: usize,
    #[config(default = "vec![4.0, 2.0, 1.0, 0.5]")]
    pub reassemble_factors: Vec<f64>,
    #[config(default = "vec![48, 96, 192, 384]")]
    pub neck_hidden_sizes: Vec<usize>,
    #[config(default = 64)]
    pub fusion_hidden_size: usize,
    #[config(default = 32)]
    pub head_hidden_size: usize,
    #[config(default = "\"relative\".to_string()")]
    pub depth_estimation_type: String,
    #[config(default = "Some(1.0)")]
    pub max_depth: Option<f64>,
}

impl DepthAnythingConfig {
    /// Depth Anything V2 Small: ViT-S/14 (384 wide, 6 heads), DPT features 64.
    pub fn small() -> Self {
        Self::preset(384, 6, 12, vec![3, 6, 9, 12], vec![48, 96, 192, 384], 64)
    }

    /// Depth Anything V2 Base: ViT-B/14 (768 wide, 12 heads), DPT features 128.
    pub fn base() -> Self {
        Self::preset(768, 12, 12, vec![3, 6, 9, 12], vec![96, 192, 384, 768], 128)
    }

    /// Depth Anything V2 Large: ViT-L/14 (1024 wide, 16 heads, 24 layers), DPT features 256.
    pub fn large() -> Self {
        Self::preset(1024, 16, 24, vec![5, 12, 18, 24], vec![256, 512, 1024, 1024], 256)
    }

    fn preset(width: usize, heads: usize, layers: usize, out: Vec<usize>, neck: Vec<usize>, fusion: usize) -> Self {
        Self::new()
            .with_backbone_config(
                Dinov2Config::new()
                    .with_hidden_size(width)
                    .with_num_attention_heads(heads)
                    .with_num_hidden_layers(layers)
                    .with_out_indices(out),
            )
            .with_reassemble_hidden_size(width)
            .with_neck_hidden_sizes(neck)
            .with_fusion_hidden_size(fusion)
    }

    /// Reads a transformers `config.json`.
    pub fn from_json_file(path: &Path) -> Result<Self, DepthError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| DepthError::Io { path: path.to_path_buf(), source })?;
        let cfg: Self = serde_json::from_str(&text)
            .map_err(|e| DepthError::File { path: path.to_path_buf(), reason: e.to_string() })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the combinations the model relies on.
    pub fn validate(&self) -> Result<(), DepthError> {
        let b = &self.backbone_config;
        let err = |field: &'static str, reason: String| Err(DepthError::Config { field, reason });
        if b.num_attention_heads == 0 || !b.hidden_size.is_multiple_of(b.num_attention_heads) {
            return err(
                "backbone_config.num_attention_heads",
                format!("{} does not divide hidden_size {}", b.num_attention_heads, b.hidden_size),
            );
        }
        if let Some(&i) = b.out_indices.iter().find(|&&i| i > b.num_hidden_layers) {
            return err("backbone_config.out_indices", format!("{i} > num_hidden_layers {}", b.num_hidden_layers));
        }
        let n = self.neck_hidden_sizes.len();
        if b.out_indices.len() != n || self.reassemble_factors.len() != n || n == 0 {
            return err(
                "neck_hidden_sizes",
                format!(
                    "{n} levels, {} reassemble factors, {} backbone outputs",
                    self.reassemble_factors.len(),
                    b.out_indices.len()
                ),
            );
        }
        if self.reassemble_hidden_size != b.hidden_size {
            return err(
                "reassemble_hidden_size",
                format!("{} != backbone hidden_size {}", self.reassemble_hidden_size, b.hidden_size),
            );
        }
        if b.use_swiglu_ffn || b.hidden_act != "gelu" {
            return err(
                "backbone_config.use_swiglu_ffn/hidden_act",
                "only the GELU MLP of Depth Anything V2 is supported".into(),
            );
        }
        if !matches!(self.depth_estimation_type.as_str(), "relative" | "metric") {
            return err(
                "depth_estimation_type",
                format!("`{}` is neither relative nor metric", self.depth_estimation_type),
            );
        }
        if self.reassemble_factors.iter().any(|f| *f <= 0.0) {
            return err("reassemble_factors", "factors must be positive".into());
        }
        Ok(())
    }

    /// Builds the model with fresh weights.
    pub fn init(&self, device: &Device) -> Result<DepthAnything, DepthError> {
        self.validate()?;
        Ok(DepthAnything {
            backbone: self.backbone_config.init(device),
            neck: DptNeck::new(
                self.reassemble_hidden_size,
                &self.neck_hidden_sizes,
                &self.reassemble_factors,
                self.fusion_hidden_size,
                device,
            ),
            head: DepthHead::new(
                self.fusion_hidden_size,
                self.head_hidden_size,
                self.patch_size,
                self.depth_estimation_type == "metric",
                self.max_depth.unwrap_or(1.0),
                device,
            ),
            patch_size: self.patch_size,
        })
    }
}

/// `DepthAnythingForDepthEstimation`.
#[derive(Module, Debug)]
pub struct DepthAnything {
    pub backbone: Dinov2,
    pub neck: DptNeck,
    pub head: DepthHead,
    pub patch_size: usize,
}

impl DepthAnything {
    /// Normalised pixels `[B, 3, H, W]` (H, W multiples of the patch size) -> relative depth
    /// (disparity-like: larger = closer) `[B, H, W]`.
    pub fn forward(&self, pixels: Tensor<4>) -> Result<Tensor<3>, DepthError> {
        let [_, c, height, width] = pixels.dims();
        let p = self.patch_size;
        if c != 3 || height % p != 0 || width % p != 0 || height == 0 || width == 0 {
            return Err(DepthError::Shape {
                what: "pixel values",
                expected: format!("[B, 3, 14k, 14m] (patch {p})"),
                got: format!("{:?}", pixels.dims()),
            });
        }
        let (h, w) = (height / p, width / p);
        let states = self.backbone.forward(pixels); // 4 x [B, 1 + h*w, d]
        let fused = self.neck.forward(states, h, w); // coarse..fine
        let finest = fused
            .into_iter()
            .last()
            .ok_or(DepthError::Config { field: "neck_hidden_sizes", reason: "no levels".into() })?;
        Ok(self.head.forward(finest, h, w)) // [B, H, W]
    }

    /// Key table from a transformers checkpoint to this module: the checkpoint names match the
    /// fields except for the reassemble resize layers, whose module paths carry the variant.
    pub fn key_table(&self) -> Result<KeyTable, DepthError> {
        let mut table = KeyTable::identity().ignore(r"^backbone\.embeddings\.mask_token$").map_err(weights_err)?;
        for (i, layer) in self.neck.reassemble_stage.layers.iter().enumerate() {
            let variant = match (&layer.resize_up, &layer.resize_down) {
                (Some(_), _) => "resize_up",
                (None, Some(_)) => "resize_down",
                (None, None) => continue,
            };
            table = table
                .rename(
                    &format!(r"^neck\.reassemble_stage\.layers\.{i}\.resize\."),
                    &format!("neck.reassemble_stage.layers.{i}.{variant}."),
                )
                .map_err(weights_err)?;
        }
        Ok(table)
    }

    /// Loads `config.json` + safetensors from a checkpoint directory.
    pub fn from_checkpoint(dir: &Path, device: &Device) -> Result<(Self, LoadReport), DepthError> {
        let cfg = DepthAnythingConfig::from_json_file(&dir.join("config.json"))?;
        let mut model = cfg.init(device)?;
        let ckpt = Checkpoint::open(dir).map_err(weights_err)?;
        let table = model.key_table()?;
        let report = load_module(&mut model, &ckpt, &table, &LoadOptions::default()).map_err(weights_err)?;
        Ok((model, report))
    }
}

fn weights_err(e: crate::weights::WeightsError) -> DepthError {
    DepthError::Weights(e.to_string())
}

/// Image preprocessing of the Depth Anything processor: resize (bicubic) so that both sides are
/// multiples of `patch` and the shorter side is at least `target` (aspect kept), scale to [0, 1]
/// and normalise with ImageNet statistics. `rgb` is `[3, H, W]` in [0, 1]. Returns `[1, 3, H', W']`.
pub fn preprocess(rgb: Tensor<3>, target: usize, patch: usize) -> Tensor<4> {
    let [_, h, w] = rgb.dims();
    let scale = (target as f64 / h as f64).max(target as f64 / w as f64);
    let fit = |side: usize| {
        let want = side as f64 * scale;
        (((want / patch as f64).round() as usize).max(1)) * patch
    };
    let (nh, nw) = (fit(h), fit(w));
    let device = rgb.device();
    let x = interpolate(
        rgb.unsqueeze_dim::<4>(0),
        InterpolateOptions::new(InterpolateMode::Bicubic).with_output_size([nh, nw]).with_align_corners(false),
    ); // [1, 3, nh, nw]
    let mean = Tensor::<1>::from_data(IMAGENET_MEAN.as_slice(), &device).reshape([1, 3, 1, 1]);
    let std = Tensor::<1>::from_data(IMAGENET_STD.as_slice(), &device).reshape([1, 3, 1, 1]);
    (x - mean) / std // [1, 3, nh, nw]
}

/// Relative depth of one image at image resolution.
#[derive(Debug, Clone)]
pub struct DepthMap {
    pub width: usize,
    pub height: usize,
    /// `[H, W]`, larger = closer.
    pub values: Vec<f32>,
    /// Network output resolution `[h, w]` and values.
    pub raw_size: [usize; 2],
    pub raw: Vec<f32>,
}

/// Loads a transformers `DepthAnythingForDepthEstimation` checkpoint on the CPU.
pub fn load_cpu(dir: &Path) -> Result<DepthAnything, DepthError> {
    Ok(DepthAnything::from_checkpoint(dir, &Device::flex())?.0)
}

/// Runs the teacher on an RGB image (network input: shorter side `size`, multiple of the patch),
/// then resizes the prediction bicubically to the image, as the transformers post-processing does.
pub fn estimate(model: &DepthAnything, image: &super::image::RgbImage, size: usize) -> Result<DepthMap, DepthError> {
    let device = model.backbone.layernorm.gamma.device();
    let (w, h) = (image.width, image.height);
    if w == 0 || h == 0 || image.pixels.len() != 3 * w * h {
        return Err(DepthError::Shape {
            what: "image",
            expected: "a non-empty RGB image".into(),
            got: format!("{w}x{h} with {} bytes", image.pixels.len()),
        });
    }
    let mut planar = vec![0f32; 3 * w * h];
    for (i, px) in image.pixels.chunks(3).enumerate() {
        for c in 0..3 {
            planar[c * w * h + i] = px[c] as f32 / 255.0;
        }
    }
    let rgb = Tensor::<1>::from_data(planar.as_slice(), &device).reshape([3, h, w]); // [3, H, W]
    let depth = model.forward(preprocess(rgb, size, model.patch_size))?; // [1, h', w']
    let [_, dh, dw] = depth.dims();
    let full = interpolate(
        depth.clone().reshape([1, 1, dh, dw]),
        InterpolateOptions::new(InterpolateMode::Bicubic).with_output_size([h, w]).with_align_corners(false),
    ); // [1, 1, H, W]
    let read = |t: Tensor<4>| t.try_into_vec_as::<f32>().map_err(|e| DepthError::Weights(e.to_string()));
    Ok(DepthMap {
        width: w,
        height: h,
        values: read(full)?,
        raw_size: [dh, dw],
        raw: read(depth.reshape([1, 1, dh, dw]))?,
    })
}
