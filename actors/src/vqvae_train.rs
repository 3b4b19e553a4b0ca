//! `vqvae-train`: a sink that trains the depth tokenizer on the depth maps of the rows it receives (the shared
//! `perceptio_models::depth::VqVaeTrainer`: Adam + EMA codebook, validation, atomic checkpoints with optimizer
//! state, the inputs-vs-reconstructions PNG). The first `val_rows` usable rows are held out for validation;
//! the rest are batched into `steps` optimiser steps (rows arriving after the last step are counted and
//! ignored). Validation + checkpoint every `val_every` steps and at the end; a checkpoint also on every
//! `Checkpoint` signal. Rows without usable depth go to `errors`; a row whose depth PNG repeats the previous
//! row's (the samples of one scene share it) is used once.
//!
//! Also the tokenizer's data sources over the synthetic world ([`SynthDepth`]) and synth-schema parquet
//! datasets ([`ParquetDepth`]) that `perceptio train-vqvae` uses.

use std::collections::VecDeque;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use perceptio_models::depth::train::DepthSource;
use perceptio_models::depth::{DepthError, TrainVqVaeConfig, VqVaeConfig, VqVaeTrainer, depth_target_from_png};
use perceptio_runtime::node::error_port_schema;
use perceptio_runtime::schemas::{FieldSpec, PortSchema};
use perceptio_runtime::{
    BuildContext, ERROR_PORT, Frame, Node, NodeError, NodeImpl, NodeKind, NodePorts, Outputs, ParamError, PortContext,
    PortDecl, Signal, parse_params,
};
use perceptio_synth::{Split, SynthConfig, codec, generate_scene, split_range};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::depth_encode::{DepthColumns, default_depth, default_id, default_scale};

/// Params of `vqvae-train`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VqVaeTrainParams {
    /// Checkpoint directory (created; `config.json`, `vqvae.safetensors`, `optimizer.bpk`, `train_state.json`,
    /// `reconstructions.png`).
    pub out: String,
    /// Model size: `tiny` (80x80, x8 down) or `reference` (320x320, x32 down); both give 10x10 codes.
    #[serde(default = "default_preset")]
    pub preset: String,
    /// A full model config (as in a checkpoint's `config.json`); replaces `preset` when given.
    #[serde(default)]
    #[schemars(with = "Option<serde_json::Value>")]
    pub model: Option<serde_json::Value>,
    /// Optimiser steps.
    #[serde(default = "default_steps")]
    pub steps: usize,
    /// Maps per step.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Adam learning rate.
    #[serde(default = "default_lr")]
    pub lr: f64,
    /// Validate and checkpoint every this many steps (and at the end).
    #[serde(default = "default_val_every")]
    pub val_every: usize,
    /// The first this many usable rows are held out for validation.
    #[serde(default = "default_val_rows")]
    pub val_rows: usize,
    /// Seeds the initialisation and the EMA re-seeding.
    #[serde(default)]
    pub seed: u64,
    /// Continue the run checkpointed in `out` (weights, Adam state, step). The first `maps_seen` training rows
    /// after the validation rows are skipped, so an upstream replayed from its start continues where the run
    /// stopped.
    #[serde(default)]
    pub resume: bool,
    /// The depth PNG column.
    #[serde(default = "default_depth")]
    pub depth_column: String,
    /// The metres-per-unit column.
    #[serde(default = "default_scale")]
    pub scale_column: String,
    /// Column holding row ids for error records.
    #[serde(default = "default_id")]
    pub id_column: String,
}

fn default_preset() -> String {
    "tiny".into()
}
fn default_steps() -> usize {
    3000
}
fn default_batch_size() -> usize {
    16
}
fn default_lr() -> f64 {
    3e-4
}
fn default_val_every() -> usize {
    250
}
fn default_val_rows() -> usize {
    128
}

/// The model config named by `preset` (`tiny` or `reference`).
pub fn preset_config(preset: &str) -> Option<VqVaeConfig> {
    match preset {
        "tiny" => Some(VqVaeConfig::tiny()),
        "reference" => Some(VqVaeConfig::reference()),
        _ => None,
    }
}

fn checked(params: &serde_json::Value) -> Result<(VqVaeTrainParams, VqVaeConfig, TrainVqVaeConfig), ParamError> {
    let p: VqVaeTrainParams = parse_params(params)?;
    let model = match &p.model {
        Some(v) => serde_json::from_value::<VqVaeConfig>(v.clone())
            .map_err(|e| ParamError::new("model", format!("not a tokenizer config: {e}")))?,
        None => preset_config(&p.preset)
            .ok_or_else(|| ParamError::new("preset", format!("unknown preset `{}` (tiny or reference)", p.preset)))?,
    };
    model.validate().map_err(|e| ParamError::new("model", e.to_string()))?;
    for (field, v) in [("steps", p.steps), ("batch_size", p.batch_size), ("val_every", p.val_every)] {
        if v == 0 {
            return Err(ParamError::new(field, "must be at least 1"));
        }
    }
    if p.val_rows == 0 {
        return Err(ParamError::new("val_rows", "must be at least 1 (validation needs held-out rows)"));
    }
    if p.out.trim().is_empty() {
        return Err(ParamError::new("out", "name a checkpoint directory"));
    }
    let cfg = TrainVqVaeConfig::new()
        .with_steps(p.steps)
        .with_batch_size(p.batch_size)
        .with_learning_rate(p.lr)
        .with_val_every(p.val_every)
        .with_seed(p.seed);
    cfg.check().map_err(|e| ParamError::new("lr", e.to_string()))?;
    Ok((p, model, cfg))
}

pub struct VqVaeTrainKind;

impl NodeKind for VqVaeTrainKind {
    fn name(&self) -> &'static str {
        "vqvae-train"
    }

    fn about(&self) -> &'static str {
        "train the depth tokenizer (VQ-VAE) on the rows' depth maps; validation, atomic checkpoints, preview PNG"
    }

    fn params_schema(&self) -> schemars::schema::RootSchema {
        schemars::schema_for!(VqVaeTrainParams)
    }

    fn ports(&self, ctx: &PortContext<'_>) -> Result<NodePorts, ParamError> {
        let (p, _, _) = checked(ctx.params)?;
        let input = PortSchema::default()
            .with_field(FieldSpec::any(p.depth_column.clone()))
            .with_field(FieldSpec::any(p.scale_column.clone()));
        Ok(NodePorts {
            inputs: vec![PortDecl::required("in", input)],
            outputs: vec![PortDecl::required(ERROR_PORT, error_port_schema())],
        })
    }

    fn build(&self, ctx: &BuildContext<'_>) -> Result<NodeImpl, ParamError> {
        let (params, model, cfg) = checked(ctx.params)?;
        let trainer = VqVaeTrainer::open(&model, &cfg, Path::new(&params.out), params.resume, &ctx.device)
            .map_err(|e| ParamError::new(if params.resume { "resume" } else { "model" }, e.to_string()))?;
        let skip = trainer.state().maps_seen;
        Ok(NodeImpl::Node(Box::new(VqVaeTrain {
            params,
            trainer,
            val: Vec::new(),
            pending: Vec::new(),
            skip,
            last_png: None,
            duplicates: 0,
            ignored: 0,
        })))
    }
}

/// The running node.
pub struct VqVaeTrain {
    params: VqVaeTrainParams,
    trainer: VqVaeTrainer,
    val: Vec<Vec<f32>>,
    pending: Vec<Vec<f32>>,
    /// Training rows still to skip (resume).
    skip: u64,
    /// The previous usable row's depth PNG (consecutive duplicates are used once).
    last_png: Option<Vec<u8>>,
    duplicates: u64,
    ignored: u64,
}

fn train_err(e: DepthError) -> NodeError {
    NodeError::msg(format!("tokenizer training: {e}"))
}

impl VqVaeTrain {
    fn train_pending(&mut self) -> Result<(), NodeError> {
        let batch = std::mem::take(&mut self.pending);
        let s = self.trainer.step(&batch).map_err(train_err)?;
        tracing::debug!(step = s.step, loss = s.loss, recon = s.recon, reseeded = s.reseeded, "vqvae-train step");
        if self.trainer.is_validation_step() {
            self.validate()?;
        }
        Ok(())
    }

    fn validate(&mut self) -> Result<(), NodeError> {
        let m = self.trainer.validate_and_checkpoint(&self.val).map_err(train_err)?;
        tracing::info!(
            step = self.trainer.state().step,
            mse = m.mse,
            order_accuracy = m.order_accuracy,
            perplexity = m.perplexity,
            codes_used = m.codes_used,
            "vqvae-train validation and checkpoint in {}",
            self.trainer.out_dir().display()
        );
        Ok(())
    }

    /// Routes one usable map: validation set, skipped (resume), training batch, or ignored (done).
    fn take(&mut self, map: Vec<f32>) -> Result<(), NodeError> {
        if self.val.len() < self.params.val_rows {
            self.val.push(map);
        } else if self.skip > 0 {
            self.skip -= 1;
        } else if self.trainer.is_done() {
            self.ignored += 1;
        } else {
            self.pending.push(map);
            if self.pending.len() == self.params.batch_size {
                self.train_pending()?;
            }
        }
        Ok(())
    }
}

impl Node for VqVaeTrain {
    fn process(&mut self, _port: &str, frame: Frame, out: &mut Outputs) -> Result<(), NodeError> {
        let p = &self.params;
        let cols = DepthColumns::from_batch(frame.batch(), &p.depth_column, &p.scale_column, &p.id_column)
            .map_err(NodeError::msg)?;
        let side = self.trainer.side();
        let (mut bad_ids, mut reasons) = (Vec::new(), Vec::new());
        for row in 0..frame.rows() {
            if let Ok(png) = cols.png(row)
                && self.last_png.as_deref() == Some(png)
            {
                self.duplicates += 1;
                continue;
            }
            match cols.target(row, side) {
                Ok(map) => {
                    self.last_png = cols.png(row).ok().map(<[u8]>::to_vec);
                    self.take(map)?;
                }
                Err(reason) => {
                    bad_ids.push(cols.id(row));
                    reasons.push(reason);
                }
            }
        }
        if !bad_ids.is_empty() {
            out.reject(bad_ids, reasons)?;
        }
        Ok(())
    }

    fn on_signal(&mut self, signal: &Signal, _out: &mut Outputs) -> Result<(), NodeError> {
        if let Signal::Checkpoint { id } = signal {
            self.trainer.checkpoint().map_err(train_err)?;
            tracing::info!(checkpoint = id, step = self.trainer.state().step, "vqvae-train checkpoint");
        }
        Ok(())
    }

    fn finish(&mut self, _out: &mut Outputs) -> Result<(), NodeError> {
        if !self.pending.is_empty() && !self.trainer.is_done() {
            // The last, smaller batch.
            self.train_pending()?;
        }
        let step = self.trainer.state().step;
        if step == 0 {
            return Err(NodeError::msg(format!(
                "no training step: {} usable rows arrived, {} held out for validation and none left to train on",
                self.val.len(),
                self.params.val_rows
            )));
        }
        if !self.trainer.is_validation_step() {
            // The last step was not validated and checkpointed yet.
            self.validate()?;
        }
        if self.ignored > 0 || self.duplicates > 0 {
            tracing::info!(
                ignored_after_last_step = self.ignored,
                repeated_depth_maps = self.duplicates,
                "vqvae-train rows not trained on"
            );
        }
        Ok(())
    }
}

/// Depth maps from the synthetic world: scene `i` of a split is drawn and rendered, its metric depth
/// PNG-encoded exactly as in the dataset rows, and turned into a tokenizer target. Scenes are taken in index
/// order and wrap around; [`DepthSource::skip`] seeks without rendering.
pub struct SynthDepth {
    config: SynthConfig,
    seed: u64,
    scenes: Range<u64>,
    next: u64,
    side: usize,
}

impl SynthDepth {
    /// The scenes of `split` of the world `(config, seed)`, as `side x side` targets.
    pub fn new(config: SynthConfig, seed: u64, split: Split, side: usize) -> Result<Self, DepthError> {
        config.validate().map_err(|e| DepthError::Config { field: "synth", reason: e.to_string() })?;
        let scenes = split_range(&config, split);
        if scenes.is_empty() {
            return Err(DepthError::Config { field: "synth", reason: format!("split {} has no scenes", split.name()) });
        }
        Ok(Self { config, seed, scenes, next: 0, side })
    }

    /// The target of the `k`-th scene of the split (wrapping).
    pub fn map(&self, k: u64) -> Result<Vec<f32>, DepthError> {
        let len = self.scenes.end - self.scenes.start;
        let index = self.scenes.start + k % len;
        let rec = generate_scene(&self.config, self.seed, index);
        let r = &rec.rendered;
        let (png, scale) = codec::encode_depth(&r.depth, r.width, r.height)
            .map_err(|e| DepthError::Config { field: "synth", reason: format!("scene {index}: {e}") })?;
        depth_target_from_png(&png, scale, self.side)
    }
}

impl DepthSource for SynthDepth {
    fn side(&self) -> usize {
        self.side
    }

    /// Renders the batch's scenes on up to `threads` threads (the world's setting; 0 = all cores).
    fn next_batch(&mut self, n: usize) -> Result<Vec<Vec<f32>>, DepthError> {
        let first = self.next;
        self.next += n as u64;
        let threads = match self.config.threads {
            0 => std::thread::available_parallelism().map_or(1, |t| t.get()),
            t => t,
        }
        .clamp(1, n.max(1));
        let this = &*self;
        let per = n.div_ceil(threads);
        let parts: Vec<Result<Vec<Vec<f32>>, DepthError>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let ks = (t * per).min(n)..((t + 1) * per).min(n);
                    s.spawn(move || ks.map(|k| this.map(first + k as u64)).collect::<Result<Vec<_>, _>>())
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(DepthError::Config { field: "synth", reason: "a rendering thread panicked".into() })
                    })
                })
                .collect()
        });
        let mut maps = Vec::with_capacity(n);
        for part in parts {
            maps.extend(part?);
        }
        Ok(maps)
    }

    fn skip(&mut self, n: u64) -> Result<(), DepthError> {
        self.next += n;
        Ok(())
    }
}

/// Depth maps from synth-schema parquet files (`depth` + `depth_scale` columns), read one row group at a time
/// in file order, over and over (epochs). The first `held_out` usable maps of the data are reserved for
/// validation ([`ParquetDepth::held_out`]) and skipped by the training stream in every epoch. Consecutive rows
/// with the same depth PNG (the samples of one scene) count once; rows without usable depth are skipped,
/// counted ([`ParquetDepth::rejected`]) and the first few logged with their ids.
pub struct ParquetDepth {
    files: Vec<PathBuf>,
    side: usize,
    held_out: usize,
    /// Next (file, row group) to read.
    cursor: (usize, usize),
    buffer: VecDeque<Vec<f32>>,
    /// Usable maps seen in this epoch (held-out ones included).
    seen_in_epoch: u64,
    trained_in_epoch: u64,
    last_png: Option<Vec<u8>>,
    rejected: u64,
}

fn file_err(path: &Path, reason: impl ToString) -> DepthError {
    DepthError::File { path: path.to_path_buf(), reason: reason.to_string() }
}

impl ParquetDepth {
    /// The files matching `patterns` (globs, read in sorted order) as `side x side` targets, holding out the
    /// first `held_out` usable maps.
    pub fn open(patterns: &[String], side: usize, held_out: usize) -> Result<Self, DepthError> {
        let mut files = std::collections::BTreeSet::new();
        for pattern in patterns {
            let matches = glob::glob(pattern)
                .map_err(|e| DepthError::Config { field: "data", reason: format!("bad glob `{pattern}`: {e}") })?;
            let before = files.len();
            files.extend(matches.filter_map(Result::ok).filter(|p| p.is_file()));
            if files.len() == before {
                return Err(DepthError::Config { field: "data", reason: format!("no file matches `{pattern}`") });
            }
        }
        Ok(Self::from_files(files.into_iter().collect(), side, held_out))
    }

    fn from_files(files: Vec<PathBuf>, side: usize, held_out: usize) -> Self {
        Self {
            files,
            side,
            held_out,
            cursor: (0, 0),
            buffer: VecDeque::new(),
            seen_in_epoch: 0,
            trained_in_epoch: 0,
            last_png: None,
            rejected: 0,
        }
    }

    /// The held-out validation maps (the first `held_out` usable maps of the data).
    pub fn held_out(&self) -> Result<Vec<Vec<f32>>, DepthError> {
        let mut probe = Self::from_files(self.files.clone(), self.side, 0);
        let mut maps = Vec::with_capacity(self.held_out);
        while maps.len() < self.held_out {
            if !probe.fill()? {
                break;
            }
            while maps.len() < self.held_out
                && let Some(m) = probe.buffer.pop_front()
            {
                maps.push(m);
            }
        }
        Ok(maps)
    }

    /// Rows skipped for lack of usable depth so far.
    pub fn rejected(&self) -> u64 {
        self.rejected
    }

    /// Reads the next row group into the buffer; false at the end of an epoch (the cursor wraps).
    fn fill(&mut self) -> Result<bool, DepthError> {
        loop {
            let (f, rg) = self.cursor;
            let Some(path) = self.files.get(f).cloned() else {
                self.cursor = (0, 0);
                self.last_png = None;
                return Ok(false);
            };
            let file = File::open(&path).map_err(|source| DepthError::Io { path: path.clone(), source })?;
            let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| file_err(&path, e))?;
            if rg >= builder.metadata().num_row_groups() {
                self.cursor = (f + 1, 0);
                continue;
            }
            let schema = builder.parquet_schema();
            let wanted = [default_depth(), default_scale(), default_id()];
            let roots: Vec<usize> = (0..schema.root_schema().get_fields().len())
                .filter(|&i| wanted.iter().any(|w| w == schema.root_schema().get_fields()[i].name()))
                .collect();
            let mask = ProjectionMask::roots(schema, roots);
            let reader = builder
                .with_projection(mask)
                .with_row_groups(vec![rg])
                .with_batch_size(4096)
                .build()
                .map_err(|e| file_err(&path, e))?;
            for batch in reader {
                let batch = batch.map_err(|e| file_err(&path, format!("row group {rg}: {e}")))?;
                let cols = DepthColumns::from_batch(&batch, &default_depth(), &default_scale(), &default_id())
                    .map_err(|e| file_err(&path, e))?;
                for row in 0..batch.num_rows() {
                    if let Ok(png) = cols.png(row)
                        && self.last_png.as_deref() == Some(png)
                    {
                        continue;
                    }
                    match cols.target(row, self.side) {
                        Ok(map) => {
                            self.last_png = cols.png(row).ok().map(<[u8]>::to_vec);
                            self.buffer.push_back(map);
                        }
                        Err(reason) => {
                            self.rejected += 1;
                            if self.rejected <= 5 {
                                let (row, file) = (cols.id(row), path.display());
                                tracing::warn!(%row, %file, "no usable depth: {reason}");
                            }
                        }
                    }
                }
            }
            self.cursor = (f, rg + 1);
            return Ok(true);
        }
    }
}

impl DepthSource for ParquetDepth {
    fn side(&self) -> usize {
        self.side
    }

    fn next_batch(&mut self, n: usize) -> Result<Vec<Vec<f32>>, DepthError> {
        let mut maps = Vec::with_capacity(n);
        while maps.len() < n {
            match self.buffer.pop_front() {
                Some(m) => {
                    self.seen_in_epoch += 1;
                    if self.seen_in_epoch > self.held_out as u64 {
                        self.trained_in_epoch += 1;
                        maps.push(m);
                    }
                }
                None => {
                    if !self.fill()? {
                        if self.trained_in_epoch == 0 {
                            return Err(DepthError::Config {
                                field: "data",
                                reason: format!(
                                    "no usable depth maps beyond the {} held out for validation ({} rows rejected)",
                                    self.held_out, self.rejected
                                ),
                            });
                        }
                        self.seen_in_epoch = 0;
                        self.trained_in_epoch = 0;
                    }
                }
            }
        }
        Ok(maps)
    }
}
