//! The optimiser every trainable part uses: AdamW with decoupled weight decay, a linear warm-up then cosine decay
//! to zero, gradient accumulation and clipping by the global norm over all parts. State (moments, step count) is
//! keyed by parameter path, so it saves to safetensors and resumes exactly.
//!
//! A training step over several parts (in one function or spread over dataflow nodes) is:
//! accumulate each part's gradients ([`PartOptimizer::accumulate`]); on the last micro-batch of a window sum
//! every part's [`PartOptimizer::grad_sq_norm`], take [`clip_scale`] of the global norm, and call
//! [`PartOptimizer::apply`] on each part with that scale.

use std::collections::BTreeMap;
use std::path::Path;

use burn::config::Config;
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::prelude::*;
use burn_optim::GradientsParams;

/// AdamW, schedule, accumulation and clipping settings (shared by every part of one run).
#[derive(Config, Debug, PartialEq)]
pub struct OptimConfig {
    #[config(default = 1e-3)]
    pub lr: f64,
    #[config(default = 0.9)]
    pub beta1: f64,
    #[config(default = 0.999)]
    pub beta2: f64,
    #[config(default = 1e-8)]
    pub eps: f64,
    #[config(default = 0.0)]
    pub weight_decay: f64,
    /// Optimiser steps in the whole run (the cosine reaches zero there).
    #[config(default = 1000)]
    pub total_steps: usize,
    /// Fraction of `total_steps` spent warming up linearly from 0 (the paper: 5%).
    #[config(default = 0.05)]
    pub warmup_fraction: f64,
    /// Clip the global gradient norm to this (0 = no clipping).
    #[config(default = 1.0)]
    pub clip_norm: f64,
    /// Micro-batches per optimiser step.
    #[config(default = 1)]
    pub accumulation: usize,
}

impl OptimConfig {
    /// Learning rate of optimiser step `step` (1-based): linear warm-up over `w = ceil(warmup_fraction * total)`
    /// steps (`lr * step / w`), then cosine decay `lr * (1 + cos(pi * (step - 1 - w) / (total - w))) / 2`, which
    /// starts at `lr` and would reach zero one step after the last.
    pub fn lr_at(&self, step: usize) -> f64 {
        let total = self.total_steps.max(1) as f64;
        let warm = (self.warmup_fraction * total).ceil();
        let s = step as f64;
        if warm > 0.0 && s <= warm {
            return self.lr * s / warm;
        }
        let progress = ((s - 1.0 - warm) / (total - warm).max(1.0)).clamp(0.0, 1.0);
        self.lr * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

/// Scale that clips a global norm to `max` (1 when no clipping is needed or `max` is 0).
pub fn clip_scale(global_norm: f64, max: f64) -> f64 {
    if max > 0.0 && global_norm > max { max / (global_norm + 1e-6) } else { 1.0 }
}

/// Errors of saving or loading optimiser state.
#[derive(Debug, thiserror::Error)]
pub enum OptimError {
    #[error("{path}: {reason}")]
    File { path: std::path::PathBuf, reason: String },
    #[error("optimiser state {path}: parameter `{param}` {reason}")]
    State { path: std::path::PathBuf, param: String, reason: String },
}

/// AdamW state of one part: first and second moments per parameter path, and the accumulated gradients.
#[derive(Debug, Default)]
pub struct PartOptimizer {
    /// Optimiser steps taken.
    pub step: usize,
    moments: BTreeMap<String, (Tensor<1>, Tensor<1>)>,
    accumulated: Option<GradientsParams>,
    /// Micro-batches in the current window.
    pub micro: usize,
}

impl PartOptimizer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds this micro-batch's gradients of `module`'s parameters (taken out of `grads`) to the window.
    pub fn accumulate<M: Module>(&mut self, module: &M, grads: &mut burn::tensor::Gradients) {
        let new = GradientsParams::from_module(grads, module);
        self.micro += 1;
        self.accumulated = Some(match self.accumulated.take() {
            None => new,
            Some(mut acc) => {
                let mut adder = Adder { acc: &mut acc, new };
                module.visit(&mut adder);
                acc
            }
        });
    }

    /// Squared L2 norm of the accumulated gradients (divided by the window size, as `apply` uses them).
    pub fn grad_sq_norm<M: Module>(&self, module: &M) -> f64 {
        let Some(acc) = &self.accumulated else { return 0.0 };
        let mut v = SqNorm { grads: acc, sum: 0.0 };
        module.visit(&mut v);
        v.sum / (self.micro.max(1) as f64).powi(2)
    }

    /// One AdamW step on `module` with the mean of the accumulated gradients times `scale` (the clip factor), at
    /// the scheduled learning rate. Clears the window. Parameters without a gradient are left untouched.
    pub fn apply<M: Module>(&mut self, module: M, cfg: &OptimConfig, scale: f64) -> M {
        let Some(grads) = self.accumulated.take() else {
            self.micro = 0;
            self.step += 1;
            return module;
        };
        self.step += 1;
        let t = self.step as i32;
        let mut mapper = AdamWMapper {
            cfg,
            lr: cfg.lr_at(self.step),
            scale: scale / self.micro.max(1) as f64,
            bias1: 1.0 - cfg.beta1.powi(t),
            bias2: 1.0 - cfg.beta2.powi(t),
            grads,
            moments: &mut self.moments,
            path: Vec::new(),
        };
        self.micro = 0;
        module.map(&mut mapper)
    }

    /// Writes the moments and the step count to `path` (safetensors, atomically).
    pub fn save(&self, path: &Path) -> Result<(), OptimError> {
        let err = |reason: String| OptimError::File { path: path.to_path_buf(), reason };
        let mut tensors = Vec::new();
        for (name, (m, v)) in &self.moments {
            for (suffix, t) in [("exp_avg", m), ("exp_avg_sq", v)] {
                let data: Vec<f32> =
                    t.to_data().convert::<f32>().try_to_vec::<f32>().map_err(|e| err(format!("{e:?}")))?;
                let bytes: Vec<u8> = data.iter().flat_map(|x| x.to_le_bytes()).collect();
                tensors.push((format!("{name}.{suffix}"), data.len(), bytes));
            }
        }
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
            .iter()
            .map(|(n, len, bytes)| {
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![*len], bytes)
                    .map(|v| (n.clone(), v))
                    .map_err(|e| err(e.to_string()))
            })
            .collect::<Result<_, _>>()?;
        let meta = std::collections::HashMap::from([("step".to_string(), self.step.to_string())]);
        let bytes = safetensors::serialize(views, Some(meta)).map_err(|e| err(e.to_string()))?;
        let tmp = path.with_extension("safetensors.tmp");
        std::fs::write(&tmp, bytes).map_err(|e| err(e.to_string()))?;
        std::fs::rename(&tmp, path).map_err(|e| err(e.to_string()))
    }

    /// Reads state written by [`PartOptimizer::save`]; every parameter of `module` that has moments in the file
    /// must match its size.
    pub fn load<M: Module>(path: &Path, module: &M) -> Result<Self, OptimError> {
        let err = |reason: String| OptimError::File { path: path.to_path_buf(), reason };
        let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| err(e.to_string()))?;
        let step = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get("step"))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| err("no `step` in the metadata".into()))?;
        let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| err(e.to_string()))?;
        let mut sizes = Sizes { path: Vec::new(), sizes: BTreeMap::new() };
        module.visit(&mut sizes);
        let device = first_device(module);
        let mut moments = BTreeMap::new();
        for (name, size) in sizes.sizes {
            let read = |suffix: &str| -> Result<Option<Tensor<1>>, OptimError> {
                let Ok(view) = st.tensor(&format!("{name}.{suffix}")) else { return Ok(None) };
                let values: Vec<f32> =
                    view.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
                if values.len() != size {
                    return Err(OptimError::State {
                        path: path.to_path_buf(),
                        param: name.clone(),
                        reason: format!("has {} values in the file, the model has {size}", values.len()),
                    });
                }
                Ok(Some(Tensor::<1>::from_data(values.as_slice(), &device)))
            };
            if let (Some(m), Some(v)) = (read("exp_avg")?, read("exp_avg_sq")?) {
                moments.insert(name, (m, v));
            }
        }
        Ok(Self { step, moments, accumulated: None, micro: 0 })
    }

    /// Number of parameters with optimiser state.
    pub fn tracked(&self) -> usize {
        self.moments.len()
    }
}

fn first_device<M: Module>(module: &M) -> Device {
    module.devices().into_iter().next().unwrap_or_else(Device::flex).without_autodiff()
}

struct Adder<'a> {
    acc: &'a mut GradientsParams,
    new: GradientsParams,
}

impl ModuleVisitor for Adder<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.new.remove::<D>(param.id) {
            let sum = match self.acc.remove::<D>(param.id) {
                Some(a) => a + g,
                None => g,
            };
            self.acc.register::<D>(param.id, sum);
        }
    }
}

struct SqNorm<'a> {
    grads: &'a GradientsParams,
    sum: f64,
}

impl ModuleVisitor for SqNorm<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.get::<D>(param.id) {
            self.sum += g.square().sum().into_scalar::<f32>() as f64;
        }
    }
}

struct Sizes {
    path: Vec<String>,
    sizes: BTreeMap<String, usize>,
}

impl ModuleVisitor for Sizes {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.sizes.insert(self.path.join("."), param.shape().num_elements());
    }
}

struct AdamWMapper<'a> {
    cfg: &'a OptimConfig,
    lr: f64,
    scale: f64,
    bias1: f64,
    bias2: f64,
    grads: GradientsParams,
    moments: &'a mut BTreeMap<String, (Tensor<1>, Tensor<1>)>,
    path: Vec<String>,
}

impl ModuleMapper for AdamWMapper<'_> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let id: ParamId = param.id;
        let Some(grad) = self.grads.remove::<D>(id) else { return param };
        let (id, tensor, mapper) = param.consume();
        let require_grad = tensor.is_require_grad();
        let shape = tensor.shape();
        let n = shape.num_elements();
        let x = tensor.inner(); // plain [..]
        let g = grad.mul_scalar(self.scale).reshape([n]); // [n]
        let name = self.path.join(".");
        let device = x.device();
        let (m, v) =
            self.moments.remove(&name).unwrap_or_else(|| (Tensor::zeros([n], &device), Tensor::zeros([n], &device)));
        let c = self.cfg;
        let m = m.mul_scalar(c.beta1) + g.clone().mul_scalar(1.0 - c.beta1); // [n]
        let v = v.mul_scalar(c.beta2) + g.square().mul_scalar(1.0 - c.beta2); // [n]
        let update = m.clone().div_scalar(self.bias1) / (v.clone().div_scalar(self.bias2).sqrt().add_scalar(c.eps)); // [n]
        let flat = x.reshape([n]); // [n]
        let flat = flat.clone() - (update + flat.mul_scalar(c.weight_decay)).mul_scalar(self.lr); // [n]
        self.moments.insert(name, (m, v));
        let mut updated = Tensor::from_inner(flat.reshape(shape)); // [..]
        if require_grad {
            updated = updated.require_grad();
        }
        Param::from_mapped_value(id, updated, mapper)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::{Linear, LinearConfig};

    #[test]
    fn schedule_warms_up_linearly_then_follows_the_cosine() {
        let cfg = OptimConfig::new().with_lr(1.0).with_total_steps(20).with_warmup_fraction(0.1);
        // w = ceil(0.1 * 20) = 2
        assert!((cfg.lr_at(1) - 0.5).abs() < 1e-12);
        assert!((cfg.lr_at(2) - 1.0).abs() < 1e-12);
        assert!((cfg.lr_at(3) - 1.0).abs() < 1e-12); // progress 0
        let mid = cfg.lr_at(3 + 9); // progress 9/18 = 0.5
        assert!((mid - 0.5).abs() < 1e-12, "{mid}");
        let last = cfg.lr_at(20); // progress 17/18
        assert!((last - 0.5 * (1.0 + (std::f64::consts::PI * 17.0 / 18.0).cos())).abs() < 1e-12);
        assert!(cfg.lr_at(20) < cfg.lr_at(19));
    }

    #[test]
    fn clipping_scales_only_large_norms() {
        assert_eq!(clip_scale(0.5, 1.0), 1.0);
        assert!((clip_scale(4.0, 1.0) - 0.25).abs() < 1e-6);
        assert_eq!(clip_scale(4.0, 0.0), 1.0);
    }

    /// One AdamW step on y = sum(W x) with a hand-computed gradient; then the saved state resumes to the same
    /// second step as continuing in memory.
    #[test]
    fn adamw_step_matches_the_formula_and_state_round_trips() {
        let device = Device::flex().autodiff();
        let lin: Linear = LinearConfig::new(2, 1).with_bias(false).init(&device);
        let w0: Vec<f32> = lin.weight.val().to_data().convert::<f32>().try_to_vec::<f32>().unwrap();
        let cfg =
            OptimConfig::new().with_lr(0.1).with_total_steps(10).with_warmup_fraction(0.0).with_weight_decay(0.01);
        let x = Tensor::<2>::from_data([[1.0f32, -2.0]], &device);
        let mut opt = PartOptimizer::new();
        let loss = lin.forward(x.clone()).sum(); // [1]
        opt.accumulate(&lin, &mut loss.backward());
        // d loss / d W = x^T: [1, -2]; |g|^2 = 5
        assert!((opt.grad_sq_norm(&lin) - 5.0).abs() < 1e-6);
        let lin = opt.apply(lin, &cfg, 1.0);
        let w1: Vec<f32> = lin.weight.val().to_data().convert::<f32>().try_to_vec::<f32>().unwrap();
        for (i, g) in [1.0f64, -2.0].into_iter().enumerate() {
            // first step: m_hat = g, v_hat = g^2 -> update = g / (|g| + eps)
            let upd = g / (g.abs() + 1e-8) + 0.01 * w0[i] as f64;
            let want = w0[i] as f64 - 0.1 * upd;
            assert!((w1[i] as f64 - want).abs() < 1e-6, "{i}: {} vs {want}", w1[i]);
        }
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("opt.safetensors");
        opt.save(&path).unwrap();
        let mut loaded = PartOptimizer::load(&path, &lin).unwrap();
        assert_eq!((loaded.step, loaded.tracked()), (1, 1));
        let step2 = |opt: &mut PartOptimizer, lin: Linear| {
            let loss = lin.forward(x.clone()).square().sum(); // [1]
            opt.accumulate(&lin, &mut loss.backward());
            let w: Vec<f32> =
                opt.apply(lin, &cfg, 1.0).weight.val().to_data().convert::<f32>().try_to_vec::<f32>().unwrap();
            w
        };
        let a = step2(&mut opt, lin.clone());
        let b = step2(&mut loaded, lin);
        assert_eq!(a, b);
    }
}
