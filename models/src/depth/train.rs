//! Training the depth tokenizer: Adam on MSE reconstruction + commitment loss, an EMA codebook step
//! after every optimiser step, periodic validation (reconstruction MSE, relative-order accuracy of
//! pixel pairs, codebook usage and perplexity), atomic checkpoints and a PNG of inputs vs
//! reconstructions. Data comes from any [`DepthSource`] (the procedural generator, the synthetic
//! world, a parquet dataset adapter).

use std::path::{Path, PathBuf};

use burn::config::Config;
use burn::module::Module;
use burn::tensor::{Device, Tensor};
use burn_optim::{AdamConfig, GradientsParams};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::error::DepthError;
use super::image::{write_atomic, write_grid};
use super::procedural::ProceduralDepth;
use super::vqvae::{VqVae, VqVaeConfig};
use crate::weights::{Checkpoint, KeyTable, LoadOptions, load_module, save_module};

/// A stream of square depth maps normalised to [-1, 1] (row-major, `side * side` values each).
pub trait DepthSource {
    /// Side of the maps.
    fn side(&self) -> usize;
    /// The next `n` maps.
    fn next_batch(&mut self, n: usize) -> Result<Vec<Vec<f32>>, DepthError>;
}

impl DepthSource for ProceduralDepth {
    fn side(&self) -> usize {
        self.size()
    }

    fn next_batch(&mut self, n: usize) -> Result<Vec<Vec<f32>>, DepthError> {
        Ok((0..n).map(|_| self.sample()).collect())
    }
}

/// Optimisation and bookkeeping settings.
#[derive(Config, Debug)]
pub struct TrainVqVaeConfig {
    #[config(default = 3000)]
    pub steps: usize,
    #[config(default = 16)]
    pub batch_size: usize,
    #[config(default = 3e-4)]
    pub learning_rate: f64,
    /// Validate (and checkpoint) every this many steps, and at the end.
    #[config(default = 250)]
    pub val_every: usize,
    /// Random pixel pairs per validation map for the relative-order accuracy.
    #[config(default = 2000)]
    pub order_pairs: usize,
    /// Pairs whose target difference is below this (normalised units) are ambiguous and skipped.
    #[config(default = 0.02)]
    pub order_margin: f64,
    /// Maps shown in the reconstruction PNG.
    #[config(default = 8)]
    pub preview_maps: usize,
    #[config(default = 0)]
    pub seed: u64,
}

/// Validation numbers.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ValMetrics {
    /// Mean squared reconstruction error in normalised units ([-1, 1] maps).
    pub mse: f64,
    /// Fraction of (unambiguous) random pixel pairs whose order the reconstruction keeps.
    pub order_accuracy: f64,
    /// exp(entropy) of the code histogram over the validation set.
    pub perplexity: f64,
    /// Distinct codes used on the validation set.
    pub codes_used: usize,
}

/// Progress reports.
#[derive(Debug, Clone)]
pub enum TrainEvent {
    Step { step: usize, loss: f64, recon: f64, reseeded: usize },
    Validation { step: usize, metrics: ValMetrics },
    Checkpoint { step: usize, dir: PathBuf },
}

/// What a run ends with.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TrainState {
    pub step: usize,
    pub metrics: Option<ValMetrics>,
}

/// File names inside a tokenizer checkpoint directory.
pub const WEIGHTS_FILE: &str = "vqvae.safetensors";
pub const CONFIG_FILE: &str = "config.json";
pub const STATE_FILE: &str = "train_state.json";
pub const PREVIEW_FILE: &str = "reconstructions.png";

fn weights_err(e: crate::weights::WeightsError) -> DepthError {
    DepthError::Weights(e.to_string())
}

/// Saves config, weights and state into `dir` (each file atomically; weights last but one, state
/// last, so a state file always describes complete weights).
pub fn save_checkpoint(model: &VqVae, config: &VqVaeConfig, state: &TrainState, dir: &Path) -> Result<(), DepthError> {
    std::fs::create_dir_all(dir).map_err(|source| DepthError::Io { path: dir.to_path_buf(), source })?;
    let json = serde_json::to_string_pretty(config)
        .map_err(|e| DepthError::File { path: dir.join(CONFIG_FILE), reason: e.to_string() })?;
    write_atomic(&dir.join(CONFIG_FILE), |w| w.write_all(json.as_bytes()).map_err(|e| e.to_string()))?;
    save_module(model, dir.join(WEIGHTS_FILE), &KeyTable::identity()).map_err(weights_err)?;
    let json = serde_json::to_string_pretty(state)
        .map_err(|e| DepthError::File { path: dir.join(STATE_FILE), reason: e.to_string() })?;
    write_atomic(&dir.join(STATE_FILE), |w| w.write_all(json.as_bytes()).map_err(|e| e.to_string()))
}

/// Loads a tokenizer checkpoint written by [`save_checkpoint`].
pub fn load_checkpoint(dir: &Path, device: &Device) -> Result<(VqVae, VqVaeConfig), DepthError> {
    let path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path).map_err(|source| DepthError::Io { path: path.clone(), source })?;
    let config: VqVaeConfig =
        serde_json::from_str(&text).map_err(|e| DepthError::File { path, reason: e.to_string() })?;
    let mut model = config.init(device)?;
    let ckpt = Checkpoint::open(dir.join(WEIGHTS_FILE)).map_err(weights_err)?;
    load_module(&mut model, &ckpt, &KeyTable::identity(), &LoadOptions::default()).map_err(weights_err)?;
    Ok((model, config))
}

fn to_tensor(maps: &[Vec<f32>], side: usize, device: &Device) -> Tensor<4> {
    let flat: Vec<f32> = maps.iter().flatten().copied().collect();
    Tensor::<1>::from_data(flat.as_slice(), device).reshape([maps.len(), 1, side, side]) // [B, 1, S, S]
}

/// Validation of `model` on `maps` (batched by `batch`); also returns the first reconstructions.
pub fn validate(
    model: &VqVae,
    maps: &[Vec<f32>],
    cfg: &TrainVqVaeConfig,
    device: &Device,
) -> Result<(ValMetrics, Vec<Vec<f32>>), DepthError> {
    let side = model.input_size;
    let k = model.num_codes();
    let mut hist = vec![0usize; k];
    let mut sq = 0.0f64;
    let mut count = 0usize;
    let (mut agree, mut pairs) = (0usize, 0usize);
    let mut rng = StdRng::seed_from_u64(cfg.seed ^ 0x5eed);
    let mut recons = Vec::new();
    for chunk in maps.chunks(cfg.batch_size.max(1)) {
        let x = to_tensor(chunk, side, device);
        let ids = model.encode(x)?; // [B, N]
        let ids_host: Vec<i64> =
            ids.clone().try_into_vec_as::<i64>().map_err(|e| DepthError::Weights(e.to_string()))?;
        for id in ids_host {
            hist[id as usize] += 1;
        }
        let rec: Vec<f32> =
            model.decode(ids)?.try_into_vec_as::<f32>().map_err(|e| DepthError::Weights(e.to_string()))?;
        for (i, target) in chunk.iter().enumerate() {
            let pred = &rec[i * side * side..(i + 1) * side * side];
            for (p, t) in pred.iter().zip(target) {
                sq += ((p - t) as f64).powi(2);
            }
            count += target.len();
            for _ in 0..cfg.order_pairs {
                let a = rng.random_range(0..target.len());
                let b = rng.random_range(0..target.len());
                let dt = (target[a] - target[b]) as f64;
                if dt.abs() < cfg.order_margin {
                    continue;
                }
                pairs += 1;
                if (pred[a] - pred[b]) as f64 * dt > 0.0 {
                    agree += 1;
                }
            }
            if recons.len() < cfg.preview_maps {
                recons.push(pred.to_vec());
            }
        }
    }
    let total: usize = hist.iter().sum();
    let entropy: f64 = hist
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / total as f64;
            -p * p.ln()
        })
        .sum();
    Ok((
        ValMetrics {
            mse: sq / count.max(1) as f64,
            order_accuracy: agree as f64 / pairs.max(1) as f64,
            perplexity: entropy.exp(),
            codes_used: hist.iter().filter(|&&c| c > 0).count(),
        },
        recons,
    ))
}

/// Trains a tokenizer from scratch (or from `resume`, a checkpoint directory) on `source`,
/// validating on `val`, checkpointing into `out_dir`. Returns the trained model and final state.
pub fn train_vqvae(
    model_cfg: &VqVaeConfig,
    cfg: &TrainVqVaeConfig,
    source: &mut dyn DepthSource,
    val: &[Vec<f32>],
    out_dir: &Path,
    resume: bool,
    on_event: &mut dyn FnMut(&TrainEvent),
) -> Result<(VqVae, TrainState), DepthError> {
    model_cfg.validate()?;
    if source.side() != model_cfg.input_size {
        return Err(DepthError::Config {
            field: "input_size",
            reason: format!(
                "the data source yields {}x{} maps, the model takes {}",
                source.side(),
                source.side(),
                model_cfg.input_size
            ),
        });
    }
    if cfg.batch_size == 0 || cfg.val_every == 0 {
        return Err(DepthError::Config { field: "batch_size/val_every", reason: "must be positive".into() });
    }
    let plain = Device::flex();
    let device = plain.clone().autodiff();
    let mut start = 0;
    let mut model = if resume && out_dir.join(STATE_FILE).exists() {
        let (m, _) = load_checkpoint(out_dir, &device)?;
        let path = out_dir.join(STATE_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| DepthError::Io { path: path.clone(), source })?;
        let state: TrainState =
            serde_json::from_str(&text).map_err(|e| DepthError::File { path, reason: e.to_string() })?;
        start = state.step;
        m
    } else {
        model_cfg.init(&device)?
    };
    let mut optim = AdamConfig::new().init();
    let side = model_cfg.input_size;
    let mut last = None;
    let mut step = start;
    while step < cfg.steps {
        step += 1;
        let maps = source.next_batch(cfg.batch_size)?;
        let x = to_tensor(&maps, side, &device); // [B, 1, S, S]
        let out = model.forward(x.clone())?;
        let recon = (out.reconstruction - x).square().mean(); // [1]
        let loss = recon.clone() + out.commitment_loss; // [1]
        let loss_v = loss.clone().into_scalar::<f32>() as f64;
        let recon_v = recon.into_scalar::<f32>() as f64;
        if !loss_v.is_finite() {
            return Err(DepthError::Config {
                field: "learning_rate",
                reason: format!("loss became {loss_v} at step {step}"),
            });
        }
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(cfg.learning_rate, model, grads);
        let (updated, reseeded) = model.ema_update(&out.ema);
        model = updated;
        on_event(&TrainEvent::Step { step, loss: loss_v, recon: recon_v, reseeded });
        if step % cfg.val_every == 0 || step == cfg.steps {
            let eval = model.valid();
            let (metrics, recons) = validate(&eval, val, cfg, &plain)?;
            on_event(&TrainEvent::Validation { step, metrics });
            let state = TrainState { step, metrics: Some(metrics) };
            save_checkpoint(&eval, model_cfg, &state, out_dir)?;
            let inputs: Vec<Vec<f32>> = val.iter().take(recons.len()).cloned().collect();
            write_grid(&out_dir.join(PREVIEW_FILE), side, &[inputs, recons])?;
            on_event(&TrainEvent::Checkpoint { step, dir: out_dir.to_path_buf() });
            last = Some(metrics);
        }
    }
    Ok((model.valid(), TrainState { step, metrics: last }))
}
