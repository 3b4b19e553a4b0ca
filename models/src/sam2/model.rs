//! The SAM2 model: Hiera + FPN image encoder, prompt encoder and mask decoder (`Sam2Model` in
//! transformers); image embeddings with the high-resolution skip features, prompted mask prediction,
//! preprocessing (resize to the model size, ImageNet normalisation) and mask upsampling; loading
//! from transformers-native or original (Sa2VA `grounding_encoder.sam2_model.*`) checkpoints.

use std::path::Path;

use burn::module::{Module, Param};
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use burn::tensor::{Device, Tensor};

use super::config::Sam2Config;
use super::decoder::{HighResFeatures, MaskDecoder, MaskOutput};
use super::error::Sam2Error;
use super::hiera::Hiera;
use super::keys;
use super::neck::FpnNeck;
use super::prompt::{PositionalEmbedding, PromptEncoder, Prompts};
use crate::weights::{Checkpoint, LoadReport, load_module};

/// ImageNet mean (SAM2 preprocessing).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet std.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// `vision_encoder`.
#[derive(Module, Debug)]
pub struct VisionEncoder {
    pub backbone: Hiera,
    pub neck: FpnNeck,
}

/// `Sam2Model`.
#[derive(Module, Debug)]
pub struct Sam2 {
    pub shared_image_embedding: PositionalEmbedding,
    pub vision_encoder: VisionEncoder,
    pub prompt_encoder: PromptEncoder,
    pub mask_decoder: MaskDecoder,
    pub no_memory_embedding: Param<Tensor<3>>,
    pub image_size: usize,
}

/// Image features the decoder needs, computed once per image.
#[derive(Debug, Clone)]
pub struct ImageEmbeddings {
    /// The fine maps for the upscaling; None when the decoder's `use_high_res_features` is off.
    pub high_res: Option<HighResFeatures>,
    /// `fpn_2 + no_memory_embedding` `[B, C, e, e]`.
    pub embedding: Tensor<4>,
}

impl Sam2Config {
    /// Builds the model with fresh weights.
    pub fn init(&self, device: &Device) -> Result<Sam2, Sam2Error> {
        self.validate()?;
        let c = self.mask_decoder_config.hidden_size;
        let shared_image_embedding = PositionalEmbedding::new(c, self.prompt_encoder_config.scale, device);
        let mut prompt_encoder = PromptEncoder::new(&self.prompt_encoder_config, device);
        // Tied as in the reference (`prompt_encoder.shared_embedding` is `shared_image_embedding`): with two
        // independent matrices a point's embedding lives in another Fourier basis than the image positions.
        prompt_encoder.shared_embedding = shared_image_embedding.same_matrix();
        Ok(Sam2 {
            shared_image_embedding,
            vision_encoder: VisionEncoder {
                backbone: self.vision_config.backbone_config.init(device),
                neck: FpnNeck::new(&self.vision_config, device),
            },
            prompt_encoder,
            mask_decoder: MaskDecoder::new(&self.mask_decoder_config, device),
            no_memory_embedding: Param::from_tensor(Tensor::zeros([1, 1, c], device)),
            image_size: self.image_size(),
        })
    }
}

impl Sam2 {
    /// Hiera stage outputs `[B, H_i, W_i, C_i]` and the three finest FPN maps `[B, C, H_i, W_i]` (finest first,
    /// levels), for inspection and parity tests.
    pub fn multi_scale(&self, pixels: Tensor<4>) -> (Vec<Tensor<4>>, Vec<Tensor<4>>) {
        let stages = self.vision_encoder.backbone.forward(pixels);
        let fpn = self.vision_encoder.neck.forward(stages.clone());
        (stages, fpn.into_iter().take(3).collect())
    }

    /// Normalised pixels `[B, 3, S, S]` -> image embeddings.
    pub fn image_embeddings(&self, pixels: Tensor<4>) -> Result<ImageEmbeddings, Sam2Error> {
        let levels = self.fpn_levels(pixels)?;
        Ok(self.embeddings_from_levels(levels))
    }

    /// Normalised pixels `[B, 3, S, S]` -> the three finest FPN maps (finest first), the output of the frozen
    /// image encoder alone: `[B, C, 4e, 4e]`, `[B, C, 2e, 2e]`, `[B, C, e, e]`.
    pub fn fpn_levels(&self, pixels: Tensor<4>) -> Result<[Tensor<4>; 3], Sam2Error> {
        let [_, ch, h, w] = pixels.dims();
        if ch != 3 || h != self.image_size || w != self.image_size {
            return Err(Sam2Error::Shape {
                what: "pixel values",
                expected: format!("[B, 3, {0}, {0}]", self.image_size),
                got: format!("{:?}", pixels.dims()),
            });
        }
        let (_, fpn) = self.multi_scale(pixels);
        let mut it = fpn.into_iter();
        match (it.next(), it.next(), it.next()) {
            (Some(a), Some(b), Some(c)) => Ok([a, b, c]),
            _ => Err(Sam2Error::Config {
                field: "vision_config.backbone_channel_list",
                reason: "fewer than three FPN levels".into(),
            }),
        }
    }

    /// FPN maps -> decoder inputs: the mask decoder's high-resolution projections (`conv_s0`, `conv_s1`, part of
    /// the decoder and so trainable with it; only when it uses them) and the lowest level plus the no-memory
    /// embedding.
    pub fn embeddings_from_levels(&self, levels: [Tensor<4>; 3]) -> ImageEmbeddings {
        let [f0, f1, f2] = levels;
        let c = f2.dims()[1];
        let no_mem = self.no_memory_embedding.val().reshape([1, c, 1, 1]); // [1, C, 1, 1]
        let decoder = &self.mask_decoder;
        ImageEmbeddings {
            high_res: decoder.use_high_res_features.then(|| HighResFeatures {
                feat_s0: decoder.conv_s0.forward(f0), // [B, C/8, 4e, 4e]
                feat_s1: decoder.conv_s1.forward(f1), // [B, C/4, 2e, 2e]
            }),
            embedding: f2 + no_mem, // [B, C, e, e]
        }
    }

    /// Side of the mask logits, `4e` (four times the image embedding's side).
    pub fn mask_side(&self) -> usize {
        4 * self.prompt_encoder.embedding_size
    }

    /// Dense positional embedding of the image grid `[1, C, e, e]`.
    pub fn image_positional_embeddings(&self) -> Tensor<4> {
        let e = self.prompt_encoder.embedding_size;
        let device = self.no_memory_embedding.device();
        let coords: Vec<f32> = (0..e)
            .flat_map(|y| (0..e).flat_map(move |x| [(x as f32 + 0.5) / e as f32, (y as f32 + 0.5) / e as f32]))
            .collect();
        let grid = Tensor::<1>::from_data(coords.as_slice(), &device).reshape([e, e, 2]); // [e, e, 2]
        let pe = self.shared_image_embedding.forward(grid); // [e, e, C]
        let c = pe.dims()[2];
        pe.permute([2, 0, 1]).reshape([1, c, e, e]) // [1, C, e, e]
    }

    /// Prompted masks for precomputed image embeddings. With no point, box or external sparse
    /// prompt, a single not-a-point is used (as transformers does).
    pub fn predict(
        &self,
        image: &ImageEmbeddings,
        prompts: &Prompts,
        multimask: bool,
    ) -> Result<MaskOutput, Sam2Error> {
        let b = image.embedding.dims()[0];
        let device = image.embedding.device();
        let mut prompts = prompts.clone();
        if prompts.points.is_none() && prompts.boxes.is_none() && prompts.sparse.is_none() {
            prompts.points = Some((Tensor::zeros([b, 1, 1, 2], &device), Tensor::full([b, 1, 1], -1.0, &device)));
        }
        let e = self.prompt_encoder.embedding_size;
        if let Some(m) = &prompts.masks
            && m.dims()[1..] != [1, 4 * e, 4 * e]
        {
            return Err(Sam2Error::Shape {
                what: "mask prompt",
                expected: format!("[B, 1, {0}, {0}]", 4 * e),
                got: format!("{:?}", m.dims()),
            });
        }
        let (sparse, dense) = self.prompt_encoder.forward(&prompts, b);
        if let Some(s) = &sparse
            && (s.dims()[0] != b || s.dims()[3] != self.prompt_encoder.hidden_size)
        {
            return Err(Sam2Error::Shape {
                what: "sparse prompt",
                expected: format!("[{b}, P, T, {}]", self.prompt_encoder.hidden_size),
                got: format!("{:?}", s.dims()),
            });
        }
        Ok(self.mask_decoder.forward(
            image.embedding.clone(),
            self.image_positional_embeddings(),
            sparse,
            dense,
            image.high_res.as_ref(),
            multimask,
        ))
    }

    /// Loads `config.json` + safetensors from a transformers `Sam2Model` checkpoint directory, or
    /// an original-layout SAM2 checkpoint (optionally under a prefix such as Sa2VA's
    /// `grounding_encoder.sam2_model.`) given its config.
    pub fn from_checkpoint(dir: &Path, device: &Device) -> Result<(Self, LoadReport), Sam2Error> {
        let cfg = Sam2Config::from_json_file(&dir.join("config.json"))?;
        let ckpt = Checkpoint::open(dir).map_err(weights_err)?;
        Self::load(&cfg, &ckpt, device)
    }

    /// Loads weights from an opened checkpoint, detecting its layout.
    pub fn load(cfg: &Sam2Config, ckpt: &Checkpoint, device: &Device) -> Result<(Self, LoadReport), Sam2Error> {
        let mut model = cfg.init(device)?;
        let (table, options) = keys::table_for(ckpt, cfg)?;
        let report = load_module(&mut model, ckpt, &table, &options).map_err(weights_err)?;
        if let keys::Layout::Original { prefix } = keys::detect(ckpt)? {
            model = keys::patch_original(model, ckpt, &prefix)?;
        }
        Ok((model, report))
    }
}

pub(crate) fn weights_err(e: crate::weights::WeightsError) -> Sam2Error {
    Sam2Error::Weights(e.to_string())
}

/// SAM2 preprocessing: `[3, H, W]` RGB in [0, 1] -> bilinear resize to `size x size` -> ImageNet
/// normalisation -> `[1, 3, size, size]`.
pub fn preprocess(rgb: Tensor<3>, size: usize) -> Tensor<4> {
    let device = rgb.device();
    let x = interpolate(
        rgb.unsqueeze_dim::<4>(0),
        InterpolateOptions::new(InterpolateMode::Bilinear).with_output_size([size, size]).with_align_corners(false),
    ); // [1, 3, S, S]
    let mean = Tensor::<1>::from_data(IMAGENET_MEAN.as_slice(), &device).reshape([1, 3, 1, 1]);
    let std = Tensor::<1>::from_data(IMAGENET_STD.as_slice(), &device).reshape([1, 3, 1, 1]);
    (x - mean) / std
}

/// Bilinear upsampling of low-resolution mask logits `[B, M, h, w]` to `[B, M, H, W]`.
pub fn upsample_masks(masks: Tensor<4>, size: [usize; 2]) -> Tensor<4> {
    interpolate(
        masks,
        InterpolateOptions::new(InterpolateMode::Bilinear).with_output_size(size).with_align_corners(false),
    )
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, Tensor};

    use super::super::config::Sam2Config;
    use super::super::decoder::HighResFeatures;
    use super::super::prompt::Prompts;
    use super::ImageEmbeddings;

    fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
    }

    /// A point at the centre of image-embedding cell (x, y) gets exactly the image positional embedding of that
    /// cell, and the embedding of a point elsewhere differs: the prompt side and the image side share one basis.
    #[test]
    fn a_fresh_model_embeds_points_in_the_image_positional_basis() {
        let device = Device::flex();
        let sam = Sam2Config::tiny().init(&device).unwrap();
        let e = sam.prompt_encoder.embedding_size;
        let image_pe = sam.image_positional_embeddings(); // [1, C, e, e]
        let c = image_pe.dims()[1];
        let (x, y) = (5usize, 2usize);
        let cell = host(image_pe.clone().slice([0..1, 0..c, y..y + 1, x..x + 1]));
        let coords = |cx: f32, cy: f32| {
            Tensor::<1>::from_data([(cx + 0.5) / e as f32, (cy + 0.5) / e as f32].as_slice(), &device).reshape([1, 2])
        };
        let point = host(sam.prompt_encoder.shared_embedding.forward(coords(x as f32, y as f32)));
        let max_diff = cell.iter().zip(&point).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(max_diff < 1e-5, "point and image embeddings differ by {max_diff}");
        let other = host(sam.prompt_encoder.shared_embedding.forward(coords(1.0, 6.0)));
        let far = cell.iter().zip(&other).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(far > 0.1, "a point three cells away embeds like this cell ({far})");
    }

    /// With `use_high_res_features` off, the fine maps are not projected and the mask comes from the prompted image
    /// embedding alone. With it on (SAM2's default), zeroing them moves the mask.
    #[test]
    fn without_high_res_features_the_fine_maps_do_not_reach_the_mask() {
        let device = Device::flex();
        let pixels = Tensor::<4>::random([1, 3, 128, 128], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
        let coords = Tensor::<4>::from_data([[[[40.0f32, 70.0]]]], &device); // [1, 1, 1, 2]
        let prompts = Prompts { points: Some((coords, Tensor::<3>::ones([1, 1, 1], &device))), ..Prompts::default() };
        let mut cfg = Sam2Config::tiny();
        device.seed(11);
        let sam = cfg.init(&device).unwrap();
        let image = sam.image_embeddings(pixels.clone()).unwrap();
        let fine = image.high_res.clone().expect("on by default");
        let zeroed = ImageEmbeddings {
            high_res: Some(HighResFeatures { feat_s0: fine.feat_s0.zeros_like(), feat_s1: fine.feat_s1.zeros_like() }),
            embedding: image.embedding.clone(),
        };
        let a = host(sam.predict(&image, &prompts, false).unwrap().masks); // [1, 1, 1, 32, 32]
        let b = host(sam.predict(&zeroed, &prompts, false).unwrap().masks);
        let change = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        assert!(change > 1e-4, "the fine maps did not reach the mask (max change {change})");
        assert_eq!(a.len(), sam.mask_side() * sam.mask_side());

        cfg.mask_decoder_config.use_high_res_features = false;
        device.seed(11);
        let sam = cfg.init(&device).unwrap();
        let image = sam.image_embeddings(pixels).unwrap();
        assert!(image.high_res.is_none(), "the fine maps are not projected when the decoder does not use them");
        let masks = host(sam.predict(&image, &prompts, false).unwrap().masks);
        assert_eq!(masks.len(), sam.mask_side() * sam.mask_side());
        assert!(masks.iter().all(|v| v.is_finite()));
    }

    /// The Fourier matrix is a fixed buffer: a loss through both embeddings leaves it without a gradient.
    #[test]
    fn the_fourier_matrix_gets_no_gradient() {
        let device = Device::flex().autodiff();
        let sam = Sam2Config::tiny().init(&device).unwrap();
        let coords = Tensor::<2>::from_data([[0.3f32, 0.7]], &device);
        let loss = sam.prompt_encoder.shared_embedding.forward(coords).sum() + sam.image_positional_embeddings().sum();
        let grads = loss.backward();
        assert!(sam.shared_image_embedding.positional_embedding.grad(&grads).is_none());
        assert!(sam.prompt_encoder.shared_embedding.positional_embedding.grad(&grads).is_none());
    }

    /// `prompt_encoder_config.scale` (transformers' field) sets the spread of a fresh Fourier matrix.
    #[test]
    fn the_fourier_scale_comes_from_the_config() {
        let device = Device::flex();
        let std_of = |scale: f64| {
            let mut cfg = Sam2Config::tiny();
            cfg.prompt_encoder_config.scale = scale;
            let v = host(cfg.init(&device).unwrap().shared_image_embedding.positional_embedding.val());
            (v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32).sqrt()
        };
        let (one, four) = (std_of(1.0), std_of(4.0));
        assert!((0.6..1.5).contains(&one), "scale 1 gave std {one}");
        assert!((2.4..6.0).contains(&four), "scale 4 gave std {four}");
        let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/sam2/config.json");
        let cfg = Sam2Config::from_json_file(std::path::Path::new(fixture)).unwrap();
        assert_eq!(cfg.prompt_encoder_config.scale, 1.0, "transformers' config.json (with `scale`) parses");
        let mut bad = Sam2Config::tiny();
        bad.prompt_encoder_config.scale = 0.0;
        assert!(bad.init(&device).is_err(), "a zero scale is a config error");
    }
}
