//! Patch embedding (conv, stride = patch), CLS token and position embeddings, interpolated
//! bicubically when the input grid differs from the trained one.

use burn::module::Param;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::prelude::*;

use super::bicubic::bicubic_matrix;
use super::config::InternVitConfig;

/// `embeddings.patch_embeddings`
#[derive(Module, Debug)]
pub struct PatchEmbeddings {
    pub projection: Conv2d,
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
            patch_embeddings: PatchEmbeddings {
                projection: Conv2dConfig::new([cfg.num_channels, d], [p, p]).with_stride([p, p]).init(device),
            },
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
        let x = self.patch_embeddings.projection.forward(pixels); // [b, d, gh, gw]
        let d = x.dims()[1];
        let x = x.reshape([b, d, gh * gw]).swap_dims(1, 2); // [b, gh*gw, d]
        let pos = self.position_embeddings.val(); // [1, n+1, d]
        let cls = self.cls_token.val() + pos.slice([0..1, 0..1, 0..d]); // [1, 1, d]
        let x = x + self.patch_positions(gh, gw); // [b, gh*gw, d]
        Tensor::cat(vec![cls.expand([b, 1, d]), x], 1) // [b, 1+gh*gw, d]
    }
}
