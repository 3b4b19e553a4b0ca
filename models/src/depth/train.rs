//! Training the depth tokenizer: Adam on MSE reconstruction + commitment loss, an EMA codebook step
//! after every optimiser step, periodic validation (reconstruction MSE, relative-order accuracy of
//! pixel pairs, codebook usage and perplexity), atomic checkpoints and a PNG of inputs vs
//! reconstructions. [`VqVaeTrainer`] owns one run (model, Adam state, step counter) and is shared by
//! [`train_vqvae`] (the CLI loop over a [`DepthSource`]) and the `vqvae-train` dataflow node.
//!
//! A checkpoint directory holds `config.json`, `vqvae.safetensors`, `optimizer.bpk` (Adam moments
//! and step counts, burnpack) and `train_state.json` (step, maps consumed, last validation, the
//! parameter ids the optimizer state is keyed by), each written atomically, the state last. Resuming
//! restores all of it, so `k` steps + resume to `n` equals `n` steps straight: the EMA re-seeding draws
//! from an RNG seeded by (seed, step), and [`DepthSource::skip`] moves the data past the maps consumed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::config::Config;
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::tensor::{Device, Tensor};
use burn_optim::{AdamConfig, GradientsParams, ModuleOptimizer, OptimizerRecord};
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
    /// Skips the next `n` maps (resuming a run). The default draws and discards them; sources that
    /// can seek override it.
    fn skip(&mut self, n: u64) -> Result<(), DepthError> {
        let mut left = n;
        while left > 0 {
            let take = left.min(64) as usize;
            self.next_batch(take)?;
            left -= take as u64;
        }
        Ok(())
    }
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
    /// Seeds the weight initialisation (the backend RNG) and the per-step EMA re-seeding.
    #[config(default = 0)]
    pub seed: u64,
}

impl TrainVqVaeConfig {
    /// Checks the values a run cannot work with.
    pub fn check(&self) -> Result<(), DepthError> {
        if self.batch_size == 0 || self.val_every == 0 {
            return Err(DepthError::Config { field: "batch_size/val_every", reason: "must be positive".into() });
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return Err(DepthError::Config {
                field: "learning_rate",
                reason: format!("{} is not a positive number", self.learning_rate),
            });
        }
        Ok(())
    }
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

/// What one optimiser step reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepStats {
    /// The step just taken (1-based).
    pub step: usize,
    /// Reconstruction MSE + commitment loss.
    pub loss: f64,
    /// Reconstruction MSE alone.
    pub recon: f64,
    /// Codes re-seeded by the EMA step.
    pub reseeded: usize,
}

/// The run's bookkeeping, saved as `train_state.json`.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct TrainState {
    /// Optimiser steps taken.
    pub step: usize,
    /// The last validation.
    pub metrics: Option<ValMetrics>,
    /// Training maps consumed so far (where the data source resumes).
    #[serde(default)]
    pub maps_seen: u64,
    /// Module path -> parameter id the optimizer state in `optimizer.bpk` is keyed by.
    #[serde(default)]
    pub param_ids: BTreeMap<String, u64>,
}

/// File names inside a tokenizer checkpoint directory.
pub const WEIGHTS_FILE: &str = "vqvae.safetensors";
pub const CONFIG_FILE: &str = "config.json";
pub const STATE_FILE: &str = "train_state.json";
pub const OPTIMIZER_FILE: &str = "optimizer.bpk";
pub const PREVIEW_FILE: &str = "reconstructions.png";

fn weights_err(e: crate::weights::WeightsError) -> DepthError {
    DepthError::Weights(e.to_string())
}

fn write_json<T: serde::Serialize>(value: &T, path: &Path) -> Result<(), DepthError> {
    let json = serde_json::to_string_pretty(value)
        .map_err(|e| DepthError::File { path: path.to_path_buf(), reason: e.to_string() })?;
    write_atomic(path, |w| w.write_all(json.as_bytes()).map_err(|e| e.to_string()))
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, DepthError> {
    let text = std::fs::read_to_string(path).map_err(|source| DepthError::Io { path: path.to_path_buf(), source })?;
    serde_json::from_str(&text).map_err(|e| DepthError::File { path: path.to_path_buf(), reason: e.to_string() })
}

/// Saves config, weights and state into `dir` (each file atomically; weights last but one, state
/// last, so a state file always describes complete weights).
pub fn save_checkpoint(model: &VqVae, config: &VqVaeConfig, state: &TrainState, dir: &Path) -> Result<(), DepthError> {
    std::fs::create_dir_all(dir).map_err(|source| DepthError::Io { path: dir.to_path_buf(), source })?;
    write_json(config, &dir.join(CONFIG_FILE))?;
    save_module(model, dir.join(WEIGHTS_FILE), &KeyTable::identity()).map_err(weights_err)?;
    write_json(state, &dir.join(STATE_FILE))
}

/// Loads a tokenizer checkpoint written by [`save_checkpoint`] (or a trainer).
pub fn load_checkpoint(dir: &Path, device: &Device) -> Result<(VqVae, VqVaeConfig), DepthError> {
    let config: VqVaeConfig = read_json(&dir.join(CONFIG_FILE))?;
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

/// Module path (`encoder.downs.0.weight`) -> parameter id, in visiting order.
struct IdCollector {
    path: Vec<String>,
    ids: BTreeMap<String, u64>,
}

impl ModuleVisitor for IdCollector {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.ids.insert(self.path.join("."), param.id.val());
    }
}

/// Gives every float parameter the id recorded for its path (ids of unknown paths stay as they are).
struct IdAssigner<'a> {
    path: Vec<String>,
    ids: &'a BTreeMap<String, u64>,
}

impl ModuleMapper for IdAssigner<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (id, value, mapper) = param.consume();
        let id = self.ids.get(&self.path.join(".")).map_or(id, |&v| ParamId::from(v));
        Param::from_mapped_value(id, value, mapper)
    }
}

fn param_ids(model: &VqVae) -> BTreeMap<String, u64> {
    let mut c = IdCollector { path: Vec::new(), ids: BTreeMap::new() };
    model.visit(&mut c);
    c.ids
}

/// 64-bit mix of the run seed and a step number (SplitMix64 finaliser).
fn step_seed(seed: u64, step: usize) -> u64 {
    let mut z = seed ^ (step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// One training run of the tokenizer: the model (on an autodiff device), Adam, the step counter and
/// the checkpoint directory. Drive it with [`VqVaeTrainer::step`], [`VqVaeTrainer::validate`] and
/// [`VqVaeTrainer::checkpoint`] (or [`VqVaeTrainer::validate_and_checkpoint`]).
pub struct VqVaeTrainer {
    model_cfg: VqVaeConfig,
    cfg: TrainVqVaeConfig,
    out_dir: PathBuf,
    plain: Device,
    device: Device,
    model: VqVae,
    optim: ModuleOptimizer,
    state: TrainState,
}

impl VqVaeTrainer {
    /// A fresh run: weights initialised from `cfg.seed` (this seeds the backend RNG of `device`),
    /// checkpoints into `out_dir` (created on the first checkpoint).
    pub fn new(
        model_cfg: &VqVaeConfig,
        cfg: &TrainVqVaeConfig,
        out_dir: &Path,
        device: &Device,
    ) -> Result<Self, DepthError> {
        model_cfg.validate()?;
        cfg.check()?;
        let plain = device.clone();
        let device = plain.clone().autodiff();
        device.seed(cfg.seed);
        let model = model_cfg.init(&device)?;
        Ok(Self {
            model_cfg: model_cfg.clone(),
            cfg: cfg.clone(),
            out_dir: out_dir.to_path_buf(),
            plain,
            device,
            model,
            optim: AdamConfig::new().init(),
            state: TrainState::default(),
        })
    }

    /// Continues the run checkpointed in `out_dir`: weights, Adam state, step and maps consumed. The
    /// checkpoint's model config must equal `model_cfg`.
    pub fn resume(
        model_cfg: &VqVaeConfig,
        cfg: &TrainVqVaeConfig,
        out_dir: &Path,
        device: &Device,
    ) -> Result<Self, DepthError> {
        cfg.check()?;
        let plain = device.clone();
        let device = plain.clone().autodiff();
        let (model, saved_cfg) = load_checkpoint(out_dir, &device)?;
        let as_json = |c: &VqVaeConfig| serde_json::to_value(c).map_err(|e| DepthError::Weights(e.to_string()));
        if as_json(&saved_cfg)? != as_json(model_cfg)? {
            return Err(DepthError::Config {
                field: "model",
                reason: format!(
                    "{} holds a different model config ({}) than this run's ({})",
                    out_dir.display(),
                    as_json(&saved_cfg)?,
                    as_json(model_cfg)?
                ),
            });
        }
        let state: TrainState = read_json(&out_dir.join(STATE_FILE))?;
        let path = out_dir.join(OPTIMIZER_FILE);
        let record = OptimizerRecord::load(&path).map_err(|e| DepthError::File { path, reason: e.to_string() })?;
        if state.param_ids.is_empty() {
            return Err(DepthError::File {
                path: out_dir.join(STATE_FILE),
                reason: "no parameter ids: the optimizer state cannot be matched to the weights".into(),
            });
        }
        // The optimizer state is keyed by the ids the parameters had when it was saved.
        let model = model.map(&mut IdAssigner { path: Vec::new(), ids: &state.param_ids });
        let optim = AdamConfig::new().init().load_record(record);
        Ok(Self {
            model_cfg: model_cfg.clone(),
            cfg: cfg.clone(),
            out_dir: out_dir.to_path_buf(),
            plain,
            device,
            model,
            optim,
            state,
        })
    }

    /// [`VqVaeTrainer::resume`] when `resume` is set and `out_dir` holds a training state, else
    /// [`VqVaeTrainer::new`].
    pub fn open(
        model_cfg: &VqVaeConfig,
        cfg: &TrainVqVaeConfig,
        out_dir: &Path,
        resume: bool,
        device: &Device,
    ) -> Result<Self, DepthError> {
        if resume && out_dir.join(STATE_FILE).exists() {
            Self::resume(model_cfg, cfg, out_dir, device)
        } else {
            Self::new(model_cfg, cfg, out_dir, device)
        }
    }

    /// Side of the maps the model takes.
    pub fn side(&self) -> usize {
        self.model_cfg.input_size
    }

    /// The model's config.
    pub fn model_config(&self) -> &VqVaeConfig {
        &self.model_cfg
    }

    /// The training settings.
    pub fn config(&self) -> &TrainVqVaeConfig {
        &self.cfg
    }

    /// Steps taken, maps consumed, last validation.
    pub fn state(&self) -> &TrainState {
        &self.state
    }

    /// Whether `cfg.steps` steps have been taken.
    pub fn is_done(&self) -> bool {
        self.state.step >= self.cfg.steps
    }

    /// Whether the step just taken is a validation step (every `val_every`, and the last).
    pub fn is_validation_step(&self) -> bool {
        self.state.step > 0 && (self.state.step.is_multiple_of(self.cfg.val_every) || self.state.step == self.cfg.steps)
    }

    /// The checkpoint directory.
    pub fn out_dir(&self) -> &Path {
        &self.out_dir
    }

    /// The model without autodiff.
    pub fn model(&self) -> VqVae {
        self.model.valid()
    }

    /// One Adam step on `maps` (each `side * side` values in [-1, 1]) followed by the EMA codebook step.
    pub fn step(&mut self, maps: &[Vec<f32>]) -> Result<StepStats, DepthError> {
        let side = self.side();
        if maps.is_empty() {
            return Err(DepthError::Shape {
                what: "training batch",
                expected: "at least one map".into(),
                got: "0".into(),
            });
        }
        if let Some(bad) = maps.iter().find(|m| m.len() != side * side) {
            return Err(DepthError::Shape {
                what: "training map",
                expected: format!("{} values ({side}x{side})", side * side),
                got: bad.len().to_string(),
            });
        }
        let step = self.state.step + 1;
        let x = to_tensor(maps, side, &self.device); // [B, 1, S, S]
        let out = self.model.forward(x.clone())?;
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
        let grads = GradientsParams::from_grads(loss.backward(), &self.model);
        let model = self.optim.step(self.cfg.learning_rate, self.model.clone(), grads);
        let mut rng = StdRng::seed_from_u64(step_seed(self.cfg.seed, step));
        let (model, reseeded) = model.ema_update_with(&out.ema, &mut rng);
        self.model = model;
        self.state.step = step;
        self.state.maps_seen += maps.len() as u64;
        Ok(StepStats { step, loss: loss_v, recon: recon_v, reseeded })
    }

    /// Validation numbers of the current model on `val`, and the first reconstructions.
    pub fn validate(&self, val: &[Vec<f32>]) -> Result<(ValMetrics, Vec<Vec<f32>>), DepthError> {
        validate(&self.model.valid(), val, &self.cfg, &self.plain)
    }

    /// Writes the checkpoint (config, weights, Adam state, then the training state), each file atomically.
    pub fn checkpoint(&mut self) -> Result<(), DepthError> {
        let dir = &self.out_dir;
        std::fs::create_dir_all(dir).map_err(|source| DepthError::Io { path: dir.clone(), source })?;
        write_json(&self.model_cfg, &dir.join(CONFIG_FILE))?;
        save_module(&self.model.valid(), dir.join(WEIGHTS_FILE), &KeyTable::identity()).map_err(weights_err)?;
        let path = dir.join(OPTIMIZER_FILE);
        // burnpack writes through a scratch file and renames it into place.
        self.optim.to_record().save(&path).map_err(|e| DepthError::File { path, reason: e.to_string() })?;
        self.state.param_ids = param_ids(&self.model);
        write_json(&self.state, &dir.join(STATE_FILE))
    }

    /// Validates on `val`, records the metrics in the state, checkpoints and writes the
    /// inputs-vs-reconstructions PNG.
    pub fn validate_and_checkpoint(&mut self, val: &[Vec<f32>]) -> Result<ValMetrics, DepthError> {
        let (metrics, recons) = self.validate(val)?;
        self.state.metrics = Some(metrics);
        self.checkpoint()?;
        let inputs: Vec<Vec<f32>> = val.iter().take(recons.len()).cloned().collect();
        write_grid(&self.out_dir.join(PREVIEW_FILE), self.side(), &[inputs, recons])?;
        Ok(metrics)
    }
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
    let mut trainer = VqVaeTrainer::open(model_cfg, cfg, out_dir, resume, &Device::flex())?;
    source.skip(trainer.state().maps_seen)?;
    while !trainer.is_done() {
        let maps = source.next_batch(cfg.batch_size)?;
        let s = trainer.step(&maps)?;
        on_event(&TrainEvent::Step { step: s.step, loss: s.loss, recon: s.recon, reseeded: s.reseeded });
        if trainer.is_validation_step() {
            let metrics = trainer.validate_and_checkpoint(val)?;
            on_event(&TrainEvent::Validation { step: s.step, metrics });
            on_event(&TrainEvent::Checkpoint { step: s.step, dir: out_dir.to_path_buf() });
        }
    }
    Ok((trainer.model(), trainer.state().clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> VqVaeConfig {
        VqVaeConfig::new(16, vec![4, 8], 8).with_num_codes(16).with_num_res_blocks(1)
    }

    fn cfg(steps: usize) -> TrainVqVaeConfig {
        TrainVqVaeConfig::new()
            .with_steps(steps)
            .with_batch_size(2)
            .with_learning_rate(3e-3)
            .with_val_every(3)
            .with_order_pairs(50)
            .with_seed(5)
    }

    /// Every float parameter, by path.
    fn params(model: &VqVae) -> Vec<(String, Vec<f32>)> {
        struct Collect(Vec<String>, Vec<(String, Vec<f32>)>);
        impl ModuleVisitor for Collect {
            fn enter_module(&mut self, name: &str, _: &str) {
                self.0.push(name.to_string());
            }
            fn exit_module(&mut self, _: &str, _: &str) {
                self.0.pop();
            }
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                self.1.push((self.0.join("."), param.val().try_into_vec_as::<f32>().unwrap()));
            }
        }
        let mut c = Collect(Vec::new(), Vec::new());
        model.visit(&mut c);
        c.1
    }

    fn max_diff(a: &VqVae, b: &VqVae) -> f32 {
        let (pa, pb) = (params(a), params(b));
        assert_eq!(pa.len(), pb.len());
        let mut worst = 0f32;
        for ((na, va), (nb, vb)) in pa.iter().zip(&pb) {
            assert_eq!(na, nb);
            for (x, y) in va.iter().zip(vb) {
                worst = worst.max((x - y).abs());
            }
        }
        worst
    }

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }

    fn run(dir: &Path, steps: usize) -> (VqVae, TrainState) {
        let val: Vec<Vec<f32>> = ProceduralDepth::new(16, 99).next_batch(4).unwrap();
        let mut source = ProceduralDepth::new(16, 1);
        train_vqvae(&tiny(), &cfg(steps), &mut source, &val, dir, true, &mut |_| {}).unwrap()
    }

    #[test]
    fn resuming_after_k_steps_equals_training_straight() {
        let root = tempfile::tempdir().unwrap();
        let (a, b, c) = (root.path().join("a"), root.path().join("b"), root.path().join("c"));
        // One initialisation (step 0) shared by all runs.
        let mut init = VqVaeTrainer::new(&tiny(), &cfg(6), &a, &Device::flex()).unwrap();
        init.checkpoint().unwrap();
        copy_dir(&a, &b);
        copy_dir(&a, &c);

        let (_, mid) = run(&a, 3);
        assert_eq!((mid.step, mid.maps_seen), (3, 6));
        let (resumed, end) = run(&a, 6);
        assert_eq!((end.step, end.maps_seen), (6, 12));
        let (straight, _) = run(&b, 6);
        let diff = max_diff(&resumed, &straight);
        assert!(diff <= 1e-6, "resumed and straight runs differ by {diff}");

        // Control: the same resume without the Adam state (fresh moments) lands elsewhere, so the
        // comparison above does depend on the optimizer state being restored.
        run(&c, 3);
        let (model, saved_cfg) = load_checkpoint(&c, &Device::flex().autodiff()).unwrap();
        let mut fresh = VqVaeTrainer::new(&saved_cfg, &cfg(6), &c, &Device::flex()).unwrap();
        fresh.model = model;
        fresh.state = read_json(&c.join(STATE_FILE)).unwrap();
        let mut source = ProceduralDepth::new(16, 1);
        source.skip(fresh.state.maps_seen).unwrap();
        while !fresh.is_done() {
            let maps = source.next_batch(2).unwrap();
            fresh.step(&maps).unwrap();
        }
        let diff = max_diff(&fresh.model(), &straight);
        assert!(diff > 1e-4, "without the Adam state the run should differ, got {diff}");
    }

    #[test]
    fn a_checkpoint_holds_optimizer_state_and_parameter_ids() {
        let dir = tempfile::tempdir().unwrap();
        let (_, state) = run(dir.path(), 3);
        assert_eq!(state.step, 3);
        let saved: TrainState = read_json(&dir.path().join(STATE_FILE)).unwrap();
        assert_eq!(saved.step, 3);
        assert_eq!(saved.maps_seen, 6);
        assert!(saved.metrics.is_some());
        assert!(saved.param_ids.contains_key("encoder.downs.0.weight"), "{:?}", saved.param_ids.keys());
        let record = OptimizerRecord::load(dir.path().join(OPTIMIZER_FILE)).unwrap();
        assert!(!record.is_empty());
        // No scratch files are left behind.
        for e in std::fs::read_dir(dir.path()).unwrap() {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            assert!(!name.starts_with('.') && !name.ends_with(".tmp"), "left over: {name}");
        }
    }

    #[test]
    fn resuming_with_another_model_config_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        run(dir.path(), 3);
        let other = tiny().with_num_codes(8);
        let err = VqVaeTrainer::resume(&other, &cfg(6), dir.path(), &Device::flex()).err().unwrap().to_string();
        assert!(err.contains("different model config"), "{err}");
    }

    #[test]
    fn default_skip_draws_and_discards() {
        let mut a = ProceduralDepth::new(8, 3);
        let mut b = ProceduralDepth::new(8, 3);
        a.skip(70).unwrap();
        b.next_batch(70).unwrap();
        assert_eq!(a.next_batch(1).unwrap(), b.next_batch(1).unwrap());
    }
}
