//! What every Perceptio node shares: the micro-batch header carried in each frame's schema metadata (step,
//! whether it ends an accumulation window, rows consumed so far), the token layout as Arrow columns, the
//! training params block, the in-order join of several inputs, and the trainable-part wrapper that answers
//! gradient requests and checkpoints its part.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Int32Array, ListArray, RecordBatch, UInt32Array};
use arrow::datatypes::{DataType, Field, Schema, UInt32Type};
use burn::module::Module;
use burn_store::ModuleSnapshot;
use perceptio_models::perceptio::checkpoint::{Part, save_part};
use perceptio_models::perceptio::optim::{OptimConfig, PartOptimizer, clip_scale};
use perceptio_models::perceptio::{Sequence, TokenBatch};
use perceptio_runtime::{Frame, GradTicket, NodeError, Outputs, autodiff_guard, grad_request};
use schemars::JsonSchema;
use serde::Deserialize;

/// Schema-metadata keys of the micro-batch header.
const STEP_KEY: &str = "perceptio.step";
const APPLY_KEY: &str = "perceptio.apply";
const CONSUMED_KEY: &str = "perceptio.rows_consumed";

/// The header of a micro-batch: which one it is, whether it closes an accumulation window, and how many dataset
/// rows the batcher had consumed once it was formed (the resume position).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepInfo {
    pub step: u64,
    pub apply: bool,
    pub rows_consumed: u64,
}

impl StepInfo {
    /// Reads the header of a frame; the error names the missing key.
    pub fn of(frame: &Frame) -> Result<Self, NodeError> {
        let schema = frame.batch().schema();
        let meta = schema.metadata();
        let get = |k: &str| {
            meta.get(k).ok_or_else(|| NodeError::msg(format!("frame has no `{k}` header (not from perceptio-batch?)")))
        };
        let num = |k: &str| -> Result<u64, NodeError> {
            get(k)?.parse().map_err(|_| NodeError::msg(format!("frame header `{k}` is not a number")))
        };
        Ok(Self { step: num(STEP_KEY)?, apply: get(APPLY_KEY)? == "true", rows_consumed: num(CONSUMED_KEY)? })
    }

    /// `batch` with this header in its schema metadata.
    pub fn stamp(&self, batch: RecordBatch) -> Result<RecordBatch, NodeError> {
        let mut meta = batch.schema().metadata().clone();
        meta.insert(STEP_KEY.to_string(), self.step.to_string());
        meta.insert(APPLY_KEY.to_string(), self.apply.to_string());
        meta.insert(CONSUMED_KEY.to_string(), self.rows_consumed.to_string());
        let schema = Arc::new(Schema::new_with_metadata(batch.schema().fields().clone(), meta));
        Ok(batch.with_schema(schema)?)
    }

    /// A frame with no columns and `rows` rows carrying this header.
    pub fn empty_frame(&self, rows: usize) -> Result<Frame, NodeError> {
        let batch = Frame::empty(rows).batch().clone();
        Ok(Frame::new(self.stamp(batch)?))
    }
}

/// Appends the token layout of `seqs` as columns: `ids` List<UInt32>, `prompt_len` UInt32, `seg_pos`,
/// `depth_start`, `depth_end` Int32 (null = absent).
pub fn layout_columns(seqs: &[Sequence]) -> Vec<(Field, ArrayRef)> {
    let ids = ListArray::from_iter_primitive::<UInt32Type, _, _>(
        seqs.iter().map(|s| Some(s.ids.iter().map(|&t| Some(t)).collect::<Vec<_>>())),
    );
    let opt = |f: fn(&Sequence) -> Option<usize>| -> ArrayRef {
        Arc::new(Int32Array::from(seqs.iter().map(|s| f(s).map(|v| v as i32)).collect::<Vec<_>>()))
    };
    vec![
        (Field::new("ids", ids.data_type().clone(), false), Arc::new(ids) as ArrayRef),
        (
            Field::new("prompt_len", DataType::UInt32, false),
            Arc::new(UInt32Array::from(seqs.iter().map(|s| s.prompt_len as u32).collect::<Vec<_>>())),
        ),
        (Field::new("seg_pos", DataType::Int32, true), opt(|s| s.seg_pos)),
        (Field::new("depth_start", DataType::Int32, true), opt(|s| s.depth_start)),
        (Field::new("depth_end", DataType::Int32, true), opt(|s| s.depth_end)),
    ]
}

/// A column of `batch` by name, downcast to `T`; the error names the column.
pub fn column<'a, T: 'static>(batch: &'a RecordBatch, name: &str) -> Result<&'a T, NodeError> {
    batch
        .column_by_name(name)
        .ok_or_else(|| NodeError::msg(format!("column `{name}` is missing")))?
        .as_any()
        .downcast_ref::<T>()
        .ok_or_else(|| NodeError::msg(format!("column `{name}` has the wrong type")))
}

/// Reads the token layout back from a frame's columns.
pub fn read_sequences(batch: &RecordBatch) -> Result<Vec<Sequence>, NodeError> {
    let ids = column::<ListArray>(batch, "ids")?;
    let prompt = column::<UInt32Array>(batch, "prompt_len")?;
    let pos = |name: &str| -> Result<Vec<Option<usize>>, NodeError> {
        let a = column::<Int32Array>(batch, name)?;
        Ok((0..a.len()).map(|i| (!a.is_null(i)).then(|| a.value(i) as usize)).collect())
    };
    let (seg, ds, de) = (pos("seg_pos")?, pos("depth_start")?, pos("depth_end")?);
    (0..batch.num_rows())
        .map(|r| {
            let row = ids.value(r);
            let row = row
                .as_any()
                .downcast_ref::<UInt32Array>()
                .ok_or_else(|| NodeError::msg("column `ids` is not a list of uint32"))?;
            Ok(Sequence {
                ids: row.values().to_vec(),
                prompt_len: prompt.value(r) as usize,
                seg_pos: seg[r],
                depth_start: ds[r],
                depth_end: de[r],
            })
        })
        .collect()
}

/// The padded token batch of a frame.
pub fn read_token_batch(frame: &Frame, pad: u32) -> Result<TokenBatch, NodeError> {
    Ok(TokenBatch::new(read_sequences(frame.batch())?, pad))
}

/// Optimiser settings as they appear in a dataflow file (see `OptimConfig`).
#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OptimParams {
    #[serde(default = "d_lr")]
    pub lr: f64,
    #[serde(default)]
    pub weight_decay: f64,
    /// Optimiser steps of the whole run (the schedule's length).
    pub total_steps: usize,
    #[serde(default = "d_warmup")]
    pub warmup_fraction: f64,
    #[serde(default = "d_clip")]
    pub clip_norm: f64,
    #[serde(default = "d_one")]
    pub accumulation: usize,
    /// AdamW's epsilon.
    #[serde(default = "d_eps")]
    pub eps: f64,
}

fn d_eps() -> f64 {
    1e-8
}

fn d_lr() -> f64 {
    1e-3
}
fn d_warmup() -> f64 {
    0.05
}
fn d_clip() -> f64 {
    1.0
}
fn d_one() -> usize {
    1
}

impl OptimParams {
    pub fn config(&self) -> OptimConfig {
        OptimConfig::new()
            .with_lr(self.lr)
            .with_weight_decay(self.weight_decay)
            .with_total_steps(self.total_steps)
            .with_warmup_fraction(self.warmup_fraction)
            .with_clip_norm(self.clip_norm)
            .with_accumulation(self.accumulation)
            .with_eps(self.eps)
    }
}

/// The block every training node of one run shares (write it once in the dataflow file with a YAML anchor).
#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TrainParams {
    /// The model directory training starts from (`perceptio init-model` writes one).
    pub model: PathBuf,
    /// Where checkpoints go: `{out}/step-{n}/` (each a complete model directory) and `{out}/latest`.
    pub out: PathBuf,
    pub optim: OptimParams,
    /// Continue from `{out}/latest` (weights, optimiser state, data position) instead of `model`.
    #[serde(default)]
    pub resume: bool,
}

impl TrainParams {
    /// The directory the parts load from: the latest checkpoint when resuming, else the initial model.
    pub fn start_dir(&self) -> Result<PathBuf, NodeError> {
        if !self.resume {
            return Ok(self.model.clone());
        }
        latest_checkpoint(&self.out)?.ok_or_else(|| {
            NodeError::msg(format!("resume: no checkpoint under {} (no `latest` file)", self.out.display()))
        })
    }
}

/// Where a model node starts: its params, the model directory (the latest checkpoint when resuming) and config.
pub struct NodeStart {
    pub params: super::image_encoder::PartParams,
    pub dir: PathBuf,
    pub cfg: perceptio_models::perceptio::PerceptioConfig,
}

/// A build-time error from any displayable cause.
pub fn param_err(e: impl std::fmt::Display) -> perceptio_runtime::ParamError {
    perceptio_runtime::ParamError::general(e.to_string())
}

impl NodeStart {
    pub fn read(ctx: &perceptio_runtime::BuildContext<'_>) -> Result<Self, perceptio_runtime::ParamError> {
        let params: super::image_encoder::PartParams = perceptio_runtime::parse_params(ctx.params)?;
        let dir = params.train.start_dir().map_err(param_err)?;
        let cfg = perceptio_models::perceptio::checkpoint::read_config(&dir).map_err(param_err)?;
        Ok(Self { params, dir, cfg })
    }

    /// `part`'s weights from the start directory, loaded into `fresh`.
    pub fn load<M: burn::module::Module + burn_store::ModuleSnapshot>(
        &self,
        part: Part,
        fresh: M,
    ) -> Result<M, perceptio_runtime::ParamError> {
        perceptio_models::perceptio::checkpoint::load_part(&self.dir, part, fresh).map_err(param_err)
    }
}

/// The directory named by `{out}/latest`, if there is one.
pub fn latest_checkpoint(out: &Path) -> Result<Option<PathBuf>, NodeError> {
    let path = out.join("latest");
    match std::fs::read_to_string(&path) {
        Ok(name) => Ok(Some(out.join(name.trim()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(NodeError::io(format!("reading {}", path.display()), e)),
    }
}

/// The directory a checkpoint with barrier id `id` is assembled in, before the aggregator publishes it.
pub fn partial_dir(out: &Path, id: u64) -> PathBuf {
    out.join(format!("step-{id}.partial"))
}

/// File of a part's optimiser state inside a checkpoint directory.
pub fn optim_file(part: Part) -> String {
    part.file().replace(".safetensors", ".optim.safetensors")
}

/// Pairs frames arriving on several inputs in order: one frame from each input makes one micro-batch.
#[derive(Debug)]
pub struct Join {
    queues: HashMap<String, VecDeque<Frame>>,
}

impl Join {
    pub fn new(ports: impl IntoIterator<Item = String>) -> Self {
        Self { queues: ports.into_iter().map(|p| (p, VecDeque::new())).collect() }
    }

    /// Queues a frame; returns one frame per input once every input has one (checked to be the same step).
    pub fn push(&mut self, port: &str, frame: Frame) -> Result<Option<HashMap<String, Frame>>, NodeError> {
        self.queues.get_mut(port).ok_or_else(|| NodeError::UnknownPort(port.to_string()))?.push_back(frame);
        if self.queues.values().any(VecDeque::is_empty) {
            return Ok(None);
        }
        let mut out = HashMap::new();
        for (port, q) in &mut self.queues {
            out.insert(port.clone(), q.pop_front().expect("checked non-empty"));
        }
        let steps: Vec<(String, u64)> =
            out.iter().map(|(p, f)| StepInfo::of(f).map(|s| (p.clone(), s.step))).collect::<Result<_, _>>()?;
        if steps.iter().any(|(_, s)| *s != steps[0].1) {
            return Err(NodeError::msg(format!("inputs out of step: {steps:?}")));
        }
        Ok(Some(out))
    }

    /// Frames still waiting for a partner (reported at end of data: they never formed a micro-batch).
    pub fn leftover(&self) -> usize {
        self.queues.values().map(VecDeque::len).sum()
    }
}

/// A trainable part owned by one node: the module, its optimiser state, and the pending gradient request.
pub struct TrainablePart<M> {
    pub module: M,
    pub opt: PartOptimizer,
    pub optim: OptimConfig,
    pub part: Part,
    pub out: PathBuf,
    pending: Option<GradTicket>,
}

impl<M: Module + ModuleSnapshot> TrainablePart<M> {
    /// Wraps `module`; with `resume_from` the optimiser state is read from that checkpoint directory.
    pub fn new(module: M, part: Part, params: &TrainParams, resume_from: Option<&Path>) -> Result<Self, NodeError> {
        let opt = match resume_from {
            Some(dir) => PartOptimizer::load(&dir.join(optim_file(part)), &module)
                .map_err(|e| NodeError::msg(format!("resume: {e}")))?,
            None => PartOptimizer::new(),
        };
        Ok(Self { module, opt, optim: params.optim.config(), part, out: params.out.clone(), pending: None })
    }

    /// Attaches a gradient request for this part to the frame about to be emitted.
    pub fn request(&mut self, frame: &mut Frame, node: &str) {
        let (req, ticket) = grad_request(node);
        frame.add_grad_request(req);
        self.pending = Some(ticket);
    }

    /// Waits for the aggregator's answer to the pending request, accumulates this part's gradients and, at the
    /// end of an accumulation window, agrees on the global norm with the other parts and steps.
    pub fn settle(&mut self, out: &Outputs) -> Result<(), NodeError> {
        let Some(ticket) = self.pending.take() else { return Ok(()) };
        let cancelled = || out.is_cancelled();
        let Some(answer) = ticket.wait(&cancelled)? else {
            tracing::warn!(node = out.node_id(), "gradient request dropped unanswered (its frame failed downstream)");
            return Ok(());
        };
        let module = &self.module;
        let opt = &mut self.opt;
        let sq = {
            let _autodiff = autodiff_guard();
            answer.with_grads(|g| opt.accumulate(module, g));
            answer.apply.then(|| opt.grad_sq_norm(module))
        };
        if let Some(sq) = sq {
            // the barrier waits for the other parts: no autodiff guard held here
            let norm = answer.global_norm(sq, &cancelled)?;
            let scale = clip_scale(norm, self.optim.clip_norm);
            let _autodiff = autodiff_guard();
            self.module = self.opt.apply(self.module.clone(), &self.optim, scale);
        }
        Ok(())
    }

    /// A trainable node's signal handling: a checkpoint barrier writes the part (see [`TrainablePart::checkpoint`]).
    pub fn on_signal(&self, signal: &perceptio_runtime::Signal) -> Result<(), NodeError> {
        match signal {
            perceptio_runtime::Signal::Checkpoint { id } => self.checkpoint(*id),
            _ => Ok(()),
        }
    }

    /// Writes the part and its optimiser state into the partial checkpoint directory of barrier `id`.
    pub fn checkpoint(&self, id: u64) -> Result<(), NodeError> {
        let dir = partial_dir(&self.out, id);
        std::fs::create_dir_all(&dir).map_err(|e| NodeError::io(format!("creating {}", dir.display()), e))?;
        save_part(&dir, self.part, &self.module).map_err(|e| NodeError::msg(e.to_string()))?;
        self.opt.save(&dir.join(optim_file(self.part))).map_err(|e| NodeError::msg(e.to_string()))
    }
}
