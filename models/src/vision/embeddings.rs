//! Patch embedding (conv, stride = patch, after an optional convolutional stem), CLS token and position
//! embeddings, interpolated bicubically when the input grid differs from the trained one.

use burn::module::Param;
use burn::nn::PaddingConfig2d;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::prelude::*;
use burn::tensor::activation::gelu;

use super::bicubic::bicubic_matrix;
use super::config::InternVitConfig;

/// `embeddings.patch_embeddings`
#[derive(Module, Debug)]
pub struct PatchEmbeddings {
    /// `stem.{i}`: 3x3 convolutions, each followed by GELU, halving the resolution while the patch side left is
    /// even (none in InternViT checkpoints; see [`InternVitConfig::conv_stem`]).
    pub stem: Vec<Conv2d>,
    pub projection: Conv2d,
}

impl PatchEmbeddings {
    fn init(cfg: &InternVitConfig, device: &Device) -> Self {
        let mut c_in = cfg.num_channels;
        let stem = cfg
            .conv_stem
            .iter()
            .zip(cfg.stem_strides())
            .map(|(&c, stride)| {
                let conv = Conv2dConfig::new([c_in, c], [3, 3])
                    .with_stride([stride, stride])
                    .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                    .init(device);
                c_in = c;
                conv
            })
            .collect();
        let k = cfg.projection_kernel();
        let projection =
            Conv2dConfig::new([cfg.projection_channels(), cfg.hidden_size], [k, k]).with_stride([k, k]).init(device);
        Self { stem, projection }
    }

    /// Pixels `[b, c, h, w]` -> patch features `[b, d, h/p, w/p]`.
    pub fn forward(&self, pixels: Tensor<4>) -> Tensor<4> {
        let mut x = pixels; // [b, c, h, w]
        for conv in &self.stem {
            x = gelu(conv.forward(x)); // [b, c_i, h/s_i, w/s_i]
        }
        self.projection.forward(x) // [b, d, h/p, w/p]
    }
}

/// `embeddings`
#[derive(Module, Debug)]
pub struct VisionEmbeddings {
    /// `[1, 1, d]`
    pub cls_token: Param<Tensor<3>>,
    pub patch_embeddings: PatchEmbeddings,
    /// `[1, grid^2 + 1, d]`
    pub position_embeddings: Param<Tensor<3>>,
    pub patch_size: usize,
}

impl VisionEmbeddings {
    pub fn init(cfg: &InternVitConfig, device: &Device) -> Self {
        let d = cfg.hidden_size;
        let n = cfg.grid() * cfg.grid();
        let p = cfg.patch_size;
        Self {
            cls_token: Param::from_tensor(Tensor::random(
                [1, 1, d],
                burn::tensor::Distribution::Normal(0.0, 0.02),
                device,
            )),
            patch_embeddings: PatchEmbeddings::init(cfg, device),
            position_embeddings: Param::from_tensor(Tensor::random(
                [1, n + 1, d],
                burn::tensor::Distribution::Normal(0.0, 0.02),
                device,
            )),
            patch_size: p,
        }
    }

    /// Position embeddings of the patches for a `gh x gw` grid: `[1, gh*gw, d]`.
    fn patch_positions(&self, gh: usize, gw: usize) -> Tensor<3> {
        let pos = self.position_embeddings.val(); // [1, n+1, d]
        let [_, n1, d] = pos.dims();
        let side = ((n1 - 1) as f64).sqrt().round() as usize;
        let patches = pos.slice([0..1, 1..n1, 0..d]); // [1, n, d]
        if gh == side && gw == side {
            return patches;
        }
        let device = patches.device();
        let dtype = patches.dtype();
        let mh = Tensor::<2>::from_data(TensorData::new(bicubic_matrix(side, gh), [gh, side]), &device).cast(dtype); // [gh, side]
        let mw = Tensor::<2>::from_data(TensorData::new(bicubic_matrix(side, gw), [gw, side]), &device).cast(dtype); // [gw, side]
        let grid = patches.reshape([side, side * d]); // [side, side*d]
        let rows = mh.matmul(grid).reshape([gh, side, d]); // [gh, side, d]
        let rows = rows.swap_dims(0, 1).reshape([side, gh * d]); // [side, gh*d]
        let out = mw.matmul(rows).reshape([gw, gh, d]); // [gw, gh, d]
        out.swap_dims(0, 1).reshape([1, gh * gw, d]) // [1, gh*gw, d]
    }

    /// Pixels `[b, c, h, w]` -> tokens `[b, 1 + (h/p)*(w/p), d]` (CLS first).
    pub fn forward(&self, pixels: Tensor<4>) -> Tensor<3> {
        let [b, _, h, w] = pixels.dims();
        let (gh, gw) = (h / self.patch_size, w / self.patch_size);
        let x = self.patch_embeddings.forward(pixels); // [b, d, gh, gw]
        let d = x.dims()[1];
        let x = x.reshape([b, d, gh * gw]).swap_dims(1, 2); // [b, gh*gw, d]
        let pos = self.position_embeddings.val(); // [1, n+1, d]
        let cls = self.cls_token.val() + pos.slice([0..1, 0..1, 0..d]); // [1, 1, d]
        let x = x + self.patch_positions(gh, gw); // [b, gh*gw, d]
        Tensor::cat(vec![cls.expand([b, 1, d]), x], 1) // [b, 1+gh*gw, d]
    }
}

#[cfg(test)]
mod tests {
    use crate::vision::InternVitConfig;
    use crate::weights::expected_keys;
    use burn::prelude::*;

    #[test]
    fn a_conv_stem_halves_while_the_patch_left_is_even() {
        let cfg = |patch: usize, stem: Vec<usize>| InternVitConfig::tiny().with_patch_size(patch).with_conv_stem(stem);
        let c = cfg(16, vec![4, 8, 8, 8, 8]);
        assert_eq!((c.stem_strides(), c.projection_kernel(), c.projection_channels()), (vec![2, 2, 2, 2, 1], 1, 8));
        let c = cfg(14, vec![4, 8]);
        assert_eq!((c.stem_strides(), c.projection_kernel(), c.projection_channels()), (vec![2, 1], 7, 8));
        let c = cfg(14, vec![]);
        assert_eq!((c.stem_strides(), c.projection_kernel(), c.projection_channels()), (vec![], 14, 3));
        let c = cfg(12, vec![4, 4, 4, 4]);
        assert_eq!((c.stem_strides(), c.projection_kernel()), (vec![2, 2, 1, 1], 3));
    }

    #[test]
    fn a_hybrid_encoder_makes_one_token_per_patch_under_its_checkpoint_keys() {
        let device = Device::flex();
        let cfg = InternVitConfig::new(16, 1, 2, 32)
            .with_image_size(64)
            .with_patch_size(16)
            .with_conv_stem(vec![4, 8, 8, 8, 8]);
        let model = cfg.init(&device);
        let keys = expected_keys(&model);
        let shape = |k: &str| keys.get(k).unwrap_or_else(|| panic!("no key {k}")).0.clone();
        assert_eq!(shape("embeddings.patch_embeddings.stem.0.weight"), [4, 3, 3, 3]);
        assert_eq!(shape("embeddings.patch_embeddings.stem.4.weight"), [8, 8, 3, 3]);
        assert_eq!(shape("embeddings.patch_embeddings.projection.weight"), [16, 8, 1, 1]);
        let count: usize = keys.values().map(|(s, _)| s.iter().product::<usize>()).sum();
        assert_eq!(count, cfg.num_params());
        let pixels = Tensor::<4>::random([2, 3, 64, 64], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
        let out = model.forward(pixels.clone()); // [2, 1 + 16, 16]
        assert_eq!(out.dims(), [2, 17, 16]);
        // the stem sees beyond its patch (five 3x3 layers reach 31 px each way) but not across the image: blanking
        // the top-left 8x8 pixels moves the first token and leaves the last one (its view starts at pixel 17)
        let stem = |p: Tensor<4>| model.embeddings.patch_embeddings.forward(p); // [2, 16, 4, 4]
        let before = stem(pixels.clone());
        let changed = pixels.clone().slice_assign([0..2, 0..3, 0..8, 0..8], Tensor::zeros([2, 3, 8, 8], &device));
        let after = stem(changed);
        let diff = |a: Tensor<4>, b: Tensor<4>, y: usize, x: usize| {
            (a.slice([0..2, 0..16, y..y + 1, x..x + 1]) - b.slice([0..2, 0..16, y..y + 1, x..x + 1]))
                .abs()
                .max()
                .into_scalar::<f32>()
        };
        assert!(diff(before.clone(), after.clone(), 0, 0) > 1e-4, "the changed patch moves");
        assert_eq!(diff(before, after, 3, 3), 0.0, "a token out of the stem's reach stays");
    }
}
