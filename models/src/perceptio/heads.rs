//! The `[SEG]` head: the projection Linear(d, d) - ReLU - Linear(d, C) that turns the `[SEG]` token's last hidden
//! state into a SAM2 sparse prompt (Sa2VA's `text_hidden_fcs`), the optional grounding map (the `[SEG]` state
//! scored against the row's image-token states), and the router's gathers of those hidden states.

use burn::config::Config;
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::relu;

use super::layout::TokenBatch;

/// Sizes of the `[SEG]` projection.
#[derive(Config, Debug)]
pub struct SegProjectionConfig {
    /// LLM width d.
    pub d_model: usize,
    /// SAM2 prompt width C (256 in the real models).
    pub d_prompt: usize,
}

/// `text_hidden_fcs`: `fc1` is Sa2VA's `text_hidden_fcs.0`, `fc2` its `text_hidden_fcs.2`.
#[derive(Module, Debug)]
pub struct SegProjection {
    pub fc1: Linear,
    pub fc2: Linear,
}

impl SegProjectionConfig {
    pub fn init(&self, device: &Device) -> SegProjection {
        SegProjection {
            fc1: LinearConfig::new(self.d_model, self.d_model).init(device),
            fc2: LinearConfig::new(self.d_model, self.d_prompt).init(device),
        }
    }
}

impl SegProjection {
    /// `[N, d]` -> `[N, C]`
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let x = relu(self.fc1.forward(x)); // [N, d]
        self.fc2.forward(x) // [N, C]
    }
}

/// Sizes of the grounding map.
#[derive(Config, Debug)]
pub struct SegGroundingConfig {
    /// LLM width d.
    pub d_model: usize,
    /// Width of the query and key projections.
    pub d_key: usize,
    /// Channels of SAM2's finest FPN map (the pixel keys).
    pub d_pixel: usize,
}

/// `seg_grounding`: scores a row's image against its `[SEG]` state twice, each a scaled dot product of a query
/// made from the `[SEG]` state and keys made from the image: the token map (`query`, `key`) scores the LLM's
/// image-token states on the image-token grid; the pixel map (`pixel_query`, `pixel_key`) scores SAM2's finest
/// FPN map, pixel by pixel. Their sum (the token map upsampled) is added to SAM2's mask logits, so the LLM
/// places the mask and SAM2 draws its outline. With SAM2's high-resolution skips, training its prompt path from
/// scratch does not get going in our budgets (scripts/experiments/sam2_point_probe.py); these routes give the mask
/// loss a direct path to the LLM. Without the skips SAM2 learns to follow a point, and `seg_point_from_map` also
/// hands it the map's soft arg-max as one (docs/referring.md).
/// The sizes are `d_model -> d_key` for both queries and the token keys, `d_pixel -> d_key` for the pixel keys.
#[derive(Module, Debug)]
pub struct SegGrounding {
    pub query: Linear,
    pub key: Linear,
    pub pixel_query: Linear,
    pub pixel_key: Linear,
}

impl SegGroundingConfig {
    pub fn init(&self, device: &Device) -> SegGrounding {
        SegGrounding {
            query: LinearConfig::new(self.d_model, self.d_key).init(device),
            key: LinearConfig::new(self.d_model, self.d_key).init(device),
            pixel_query: LinearConfig::new(self.d_model, self.d_key).init(device),
            pixel_key: LinearConfig::new(self.d_pixel, self.d_key).init(device),
        }
    }
}

impl SegGrounding {
    /// `[SEG]` states `[B', d]` + image-token states `[B', T, d]` (a square grid, row-major) -> score maps
    /// `[B', 1, g, g]` with `g * g = T`.
    pub fn token_map(&self, seg: Tensor<2>, image: Tensor<3>) -> Tensor<4> {
        let [b, t, _] = image.dims();
        let g = t.isqrt();
        let scores = scaled_scores(self.query.forward(seg), self.key.forward(image)); // [B', T, 1]
        scores.reshape([b, 1, g, g]) // [B', 1, g, g]
    }

    /// `[SEG]` states `[B', d]` + SAM2's finest FPN map `[B', C, H, W]` -> pixel score maps `[B', 1, H, W]`.
    pub fn pixel_map(&self, seg: Tensor<2>, fine: Tensor<4>) -> Tensor<4> {
        let [b, c, h, w] = fine.dims();
        let keys = self.pixel_key.forward(fine.reshape([b, c, h * w]).swap_dims(1, 2)); // [B', HW, k]
        let scores = scaled_scores(self.pixel_query.forward(seg), keys); // [B', HW, 1]
        scores.reshape([b, 1, h, w]) // [B', 1, H, W]
    }
}

/// Scaled dot products of one query per row with that row's keys: `q` `[B, k]`, `keys` `[B, N, k]` -> `[B, N, 1]`.
fn scaled_scores(q: Tensor<2>, keys: Tensor<3>) -> Tensor<3> {
    let [b, k] = q.dims();
    keys.matmul(q.reshape([b, k, 1])).mul_scalar((k as f64).powf(-0.5)) // [B, N, 1]
}

/// Hidden states `[B, S, d]` at flat positions `b * S + t` -> `[N, d]`.
fn gather_positions(hidden: Tensor<3>, index: Vec<i64>) -> Tensor<2> {
    let [b, s, d] = hidden.dims();
    let n = index.len();
    let index = Tensor::<1, Int>::from_data(TensorData::new(index, [n]), &hidden.device()); // [N]
    hidden.reshape([b * s, d]).select(0, index) // [N, d]
}

/// The image-token states of rows `rows` of the batch `ids`: the last hidden states at each row's `image_token`
/// positions `[B', T, d]`. None when `rows` is empty or the rows do not all hold the same, non-zero number of
/// image tokens (text-only prompts).
pub fn image_hidden(hidden: Tensor<3>, ids: &[Vec<u32>], rows: &[usize], image_token: u32) -> Option<Tensor<3>> {
    let [_, s, d] = hidden.dims();
    let mut index: Vec<i64> = Vec::new();
    let mut t = None;
    for &r in rows {
        let before = index.len();
        let row = ids.get(r)?;
        index.extend(row.iter().enumerate().filter(|&(_, &id)| id == image_token).map(|(p, _)| (r * s + p) as i64));
        let n = index.len() - before;
        if n == 0 || *t.get_or_insert(n) != n {
            return None;
        }
    }
    let t = t?;
    Some(gather_positions(hidden, index).reshape([rows.len(), t, d])) // [B', T, d]
}

/// The rows of `batch` that contain `[SEG]` and the last hidden state at that position: `[B', d]` plus the batch
/// indices of those rows (in order). None when no row has one.
pub fn seg_hidden(hidden: Tensor<3>, batch: &TokenBatch) -> Option<(Tensor<2>, Vec<usize>)> {
    let s = hidden.dims()[1];
    let rows: Vec<(usize, usize)> =
        batch.seqs.iter().enumerate().filter_map(|(i, q)| q.seg_pos.map(|p| (i, p))).collect();
    if rows.is_empty() {
        return None;
    }
    let index: Vec<i64> = rows.iter().map(|&(i, p)| (i * s + p) as i64).collect();
    let picked = gather_positions(hidden, index); // [B', d]
    Some((picked, rows.into_iter().map(|(i, _)| i).collect()))
}

#[cfg(test)]
mod tests {
    use burn::tensor::Distribution;
    use burn_optim::{AdamConfig, GradientsParams};

    use super::*;

    #[test]
    fn image_states_are_gathered_at_each_rows_image_slots() {
        let device = Device::flex();
        let (b, s, d) = (3, 6, 2);
        let values: Vec<f32> = (0..b * s * d).map(|v| v as f32).collect();
        let hidden = Tensor::<3>::from_data(TensorData::new(values, [b, s, d]), &device);
        const IMG: u32 = 9;
        let ids = vec![vec![1, IMG, IMG, 2, 0, 0], vec![0, 0, 1, 2, IMG, IMG], vec![1, 2, 3, 4, 5, 6]];
        let got = image_hidden(hidden.clone(), &ids, &[1, 0], IMG).expect("both rows hold two image slots");
        assert_eq!(got.dims(), [2, 2, d]);
        let got = got.into_data().try_to_vec::<f32>().unwrap();
        // row 1's positions 4, 5, then row 0's positions 1, 2 (value = (row * s + pos) * d + channel)
        let want: Vec<f32> = [(1, 4), (1, 5), (0, 1), (0, 2)]
            .iter()
            .flat_map(|&(r, p)| (0..d).map(move |c| ((r * s + p) * d + c) as f32))
            .collect();
        assert_eq!(got, want);
        assert!(image_hidden(hidden.clone(), &ids, &[0, 2], IMG).is_none(), "a row without image slots");
        assert!(image_hidden(hidden, &ids, &[], IMG).is_none(), "no rows");
    }

    /// The map must be learnable from the mask's side alone: `[SEG]` states that copy (noisily) one image token's
    /// state must come to score that token highest, on held-out rows.
    #[test]
    fn the_grounding_map_learns_to_point_at_the_token_the_seg_state_names() {
        let device = Device::flex().autodiff();
        device.seed(5);
        let (t, d) = (16, 16);
        let draw = |b: usize, seed: u64| {
            let image = Tensor::<3>::random([b, t, d], Distribution::Normal(0.0, 1.0), &device); // [B, T, d]
            let target: Vec<i64> = (0..b as u64).map(|i| ((i * 7 + seed * 3) % t as u64) as i64).collect();
            let index = Tensor::<1, Int>::from_data(TensorData::new(target.clone(), [b]), &device);
            let rows: Vec<Tensor<2>> = (0..b)
                .map(|i| {
                    let one = image.clone().narrow(0, i, 1).reshape([t, d]); // [T, d]
                    one.select(0, index.clone().narrow(0, i, 1)) // [1, d]
                })
                .collect();
            let noise = Tensor::<2>::random([b, d], Distribution::Normal(0.0, 0.3), &device);
            (Tensor::cat(rows, 0) + noise, image, target) // [B, d], [B, T, d]
        };
        let mut head = SegGroundingConfig::new(d, d, 4).init(&device);
        let mut optim = AdamConfig::new().init();
        for step in 0..150u64 {
            let (seg, image, target) = draw(16, step);
            let scores = head.token_map(seg, image).reshape([16, t]); // [B, T]
            let target = Tensor::<1, Int>::from_data(TensorData::new(target, [16]), &device);
            let logp = burn::tensor::activation::log_softmax(scores, 1);
            let loss = logp.gather(1, target.reshape([16, 1])).mean().neg();
            let grads = GradientsParams::from_grads(loss.backward(), &head);
            head = optim.step(1e-2, head, grads);
        }
        let (seg, image, target) = draw(64, 1000);
        let map = head.token_map(seg, image); // [64, 1, 4, 4]
        assert_eq!(map.dims(), [64, 1, 4, 4]);
        let best = map.reshape([64, t]).argmax(1).into_data().convert::<i64>().try_to_vec::<i64>().unwrap();
        let hits = best.iter().zip(&target).filter(|(a, b)| a == b).count();
        assert!(hits >= 58, "{hits}/64 held-out rows point at their token");
    }
}
