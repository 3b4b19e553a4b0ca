//! EMA vector quantiser of the depth tokenizer: nearest-code lookup, commitment loss, straight-through
//! gradients, exponential-moving-average codebook updates and dead-code re-seeding.
//!
//! The codebook and its EMA statistics are parameters (so they are saved with the model) that never
//! receive gradients: they change only through [`EmaQuantizer::ema_update`].

use burn::config::Config;
use burn::module::{Module, Param};
use burn::tensor::{Device, Distribution, Int, Tensor};
use rand::Rng;

/// Configuration of [`EmaQuantizer`].
#[derive(Config, Debug)]
pub struct QuantizerConfig {
    /// Number of codebook entries K.
    pub num_codes: usize,
    /// Width of one code.
    pub code_dim: usize,
    /// EMA decay of the cluster sizes and sums.
    #[config(default = 0.99)]
    pub decay: f64,
    /// Weight of the commitment term `||z - sg(q)||^2`.
    #[config(default = 0.25)]
    pub commitment: f64,
    /// Laplace smoothing of the cluster sizes.
    #[config(default = 1e-5)]
    pub epsilon: f64,
    /// A code whose EMA cluster size falls below this is re-seeded from an encoder output.
    #[config(default = 0.01)]
    pub dead_threshold: f64,
}

/// Nearest-neighbour quantiser with an EMA-updated codebook.
#[derive(Module, Debug)]
pub struct EmaQuantizer {
    /// Codebook `[K, D]`.
    pub embed: Param<Tensor<2>>,
    /// EMA of the number of vectors assigned to each code `[K]`.
    pub cluster_size: Param<Tensor<1>>,
    /// EMA of the sum of the vectors assigned to each code `[K, D]`.
    pub embed_avg: Param<Tensor<2>>,
    pub decay: f64,
    pub commitment: f64,
    pub epsilon: f64,
    pub dead_threshold: f64,
}

/// Result of quantising a batch of encoder outputs.
#[derive(Debug, Clone)]
pub struct Quantized {
    /// Straight-through quantised vectors `[N, D]`: the codebook values forward, identity backward.
    pub quantized: Tensor<2>,
    /// Nearest code ids `[N]`.
    pub ids: Tensor<1, Int>,
    /// `commitment * mean((z - sg(q))^2)` (a scalar `[1]`).
    pub commitment_loss: Tensor<1>,
}

/// Statistics for one EMA step, computed without gradients from a batch of encoder outputs.
#[derive(Debug, Clone)]
pub struct EmaBatch {
    /// Encoder outputs `[N, D]` (detached).
    pub inputs: Tensor<2>,
    /// Their nearest code ids `[N]`.
    pub ids: Tensor<1, Int>,
}

impl QuantizerConfig {
    /// A codebook drawn uniformly in `[-1/K, 1/K]`, with empty EMA statistics.
    pub fn init(&self, device: &Device) -> EmaQuantizer {
        let bound = 1.0 / self.num_codes as f64;
        let embed = Tensor::<2>::random([self.num_codes, self.code_dim], Distribution::Uniform(-bound, bound), device); // [K, D]
        // Empty statistics: the first EMA step re-seeds every code the batch does not use from
        // encoder outputs (data-dependent initialisation).
        let cluster_size = Tensor::<1>::zeros([self.num_codes], device); // [K]
        let embed_avg = Tensor::<2>::zeros([self.num_codes, self.code_dim], device); // [K, D]
        EmaQuantizer {
            embed: Param::from_tensor(embed).set_require_grad(false),
            cluster_size: Param::from_tensor(cluster_size).set_require_grad(false),
            embed_avg: Param::from_tensor(embed_avg).set_require_grad(false),
            decay: self.decay,
            commitment: self.commitment,
            epsilon: self.epsilon,
            dead_threshold: self.dead_threshold,
        }
    }
}

impl EmaQuantizer {
    /// Number of codes K.
    pub fn num_codes(&self) -> usize {
        self.embed.dims()[0]
    }

    /// Width of one code.
    pub fn code_dim(&self) -> usize {
        self.embed.dims()[1]
    }

    /// The codebook without gradient tracking `[K, D]`.
    pub fn codebook(&self) -> Tensor<2> {
        self.embed.val().detach()
    }

    /// Nearest code id of each row of `z` `[N, D]` -> `[N]`.
    pub fn nearest(&self, z: Tensor<2>) -> Tensor<1, Int> {
        let embed = self.codebook(); // [K, D]
        let z = z.detach(); // [N, D]
        let z_sq = z.clone().square().sum_dim(1); // [N, 1]
        let e_sq = embed.clone().square().sum_dim(1).transpose(); // [1, K]
        let cross = z.matmul(embed.transpose()); // [N, K]
        let dist = z_sq + e_sq - cross.mul_scalar(2.0); // [N, K]
        dist.argmin(1).squeeze_dim(1) // [N]
    }

    /// Codebook rows for `ids` `[N]` -> `[N, D]`.
    pub fn lookup(&self, ids: Tensor<1, Int>) -> Tensor<2> {
        self.codebook().select(0, ids) // [N, D]
    }

    /// Expected code embedding under per-position probabilities `[N, K]` -> `[N, D]` (differentiable in
    /// `probs`).
    pub fn expected(&self, probs: Tensor<2>) -> Tensor<2> {
        probs.matmul(self.codebook()) // [N, D]
    }

    /// Quantises encoder outputs `z` `[N, D]` with the straight-through estimator.
    pub fn forward(&self, z: Tensor<2>) -> Quantized {
        let ids = self.nearest(z.clone()); // [N]
        let q = self.lookup(ids.clone()); // [N, D]
        let commitment_loss = (z.clone() - q.clone()).square().mean().mul_scalar(self.commitment); // [1]
        let quantized = z.clone() + (q - z).detach(); // [N, D]
        Quantized { quantized, ids, commitment_loss }
    }

    /// One EMA step: cluster sizes and sums decay towards the batch's assignment counts and sums, the
    /// codebook becomes their (Laplace-smoothed) ratio, then codes whose EMA cluster size is below
    /// `dead_threshold` are re-seeded from randomly chosen rows of the batch. Returns the updated
    /// quantiser and the number of re-seeded codes. Draws the re-seeding rows from the thread RNG; use
    /// [`EmaQuantizer::ema_update_with`] for a reproducible step.
    pub fn ema_update(self, batch: &EmaBatch) -> (Self, usize) {
        self.ema_update_with(batch, &mut rand::rng())
    }

    /// [`EmaQuantizer::ema_update`] with the re-seeding rows drawn from `rng` (the trainer passes a
    /// per-step seeded RNG so that a resumed run repeats the same steps).
    pub fn ema_update_with(self, batch: &EmaBatch, rng: &mut impl Rng) -> (Self, usize) {
        let k = self.num_codes();
        let inputs = batch.inputs.clone().detach(); // [N, D]
        let n = inputs.dims()[0];
        let device = inputs.device();
        let onehot: Tensor<2> = batch.ids.clone().one_hot(k).float(); // [N, K]
        let counts = onehot.clone().sum_dim(0).squeeze_dim::<1>(0); // [K]
        let sums = onehot.transpose().matmul(inputs.clone()); // [K, D]

        let decay = self.decay;
        let cluster_size = self.cluster_size.val().detach().mul_scalar(decay) + counts.mul_scalar(1.0 - decay); // [K]
        let embed_avg = self.embed_avg.val().detach().mul_scalar(decay) + sums.mul_scalar(1.0 - decay); // [K, D]
        let total = cluster_size.clone().sum(); // [1]
        let smoothed = (cluster_size.clone().add_scalar(self.epsilon))
            .div(total.clone().add_scalar(k as f64 * self.epsilon))
            .mul(total); // [K]
        let mut embed = embed_avg.clone().div(smoothed.unsqueeze_dim::<2>(1)); // [K, D]

        // Dead codes: re-seed from random batch rows, with a unit cluster size. K is small, so this
        // bookkeeping runs on host vectors.
        let mut sizes: Vec<f32> = host_vec(&cluster_size);
        let dead: Vec<usize> = (0..k).filter(|&i| (sizes[i] as f64) < self.dead_threshold).collect();
        let mut cluster_size = cluster_size;
        let mut embed_avg = embed_avg;
        if !dead.is_empty() && n > 0 {
            let d = self.code_dim();
            let rows: Vec<f32> = host_vec(&inputs);
            let mut codes: Vec<f32> = host_vec(&embed);
            let mut avgs: Vec<f32> = host_vec(&embed_avg);
            for &code in &dead {
                let pick = rng.random_range(0..n);
                let seed = &rows[pick * d..(pick + 1) * d];
                codes[code * d..(code + 1) * d].copy_from_slice(seed);
                avgs[code * d..(code + 1) * d].copy_from_slice(seed);
                sizes[code] = 1.0;
            }
            embed = Tensor::<1>::from_data(codes.as_slice(), &device).reshape([k, d]); // [K, D]
            embed_avg = Tensor::<1>::from_data(avgs.as_slice(), &device).reshape([k, d]); // [K, D]
            cluster_size = Tensor::<1>::from_data(sizes.as_slice(), &device); // [K]
        }

        let updated = Self {
            embed: self.embed.map(|_| embed),
            cluster_size: self.cluster_size.map(|_| cluster_size),
            embed_avg: self.embed_avg.map(|_| embed_avg),
            ..self
        };
        (updated, dead.len())
    }
}

/// Host copy of a float tensor (f32).
fn host_vec<const D: usize>(t: &Tensor<D>) -> Vec<f32> {
    t.try_to_vec_as::<f32>().expect("a float tensor converts to f32")
}
