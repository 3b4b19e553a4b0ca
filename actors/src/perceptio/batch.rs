//! `perceptio-batch`: turns dataset rows (the synthetic world's schema plus `depth_codes` from `depth-encode`)
//! into training micro-batches: the token sequence of each row (templates, `[SEG]`, depth span), the image for
//! InternViT and for SAM2, the target mask and the target depth map, stamped with the micro-batch header (step,
//! end of accumulation window, rows consumed). Emits a checkpoint barrier every `checkpoint_every` optimiser steps
//! and at the end. Rows that cannot be used go to `errors` with their id; rows an ablation leaves out are counted.

use std::collections::VecDeque;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, Float32Array, Int32Array, ListArray, RecordBatch, StringArray};
use arrow::datatypes::{Field, Schema};
use burn::tensor::{Device, Tensor, TensorData};
use perceptio_models::depth::target::depth_target_from_png;
use perceptio_models::perceptio::checkpoint::{TOKENIZER_FILE, read_config};
use perceptio_models::perceptio::sequence::{
    PointLevel, SampleText, SequenceConfig, Task, build_sequence, point_level,
};
use perceptio_models::perceptio::tokens::special_tokens;
use perceptio_models::perceptio::{PerceptioConfig, Sequence, SpecialTokens};
use perceptio_models::tokenizer::TextTokenizer;
use perceptio_runtime::node::error_port_schema;
use perceptio_runtime::schemas::port::{TensorKind, TensorSpec};
use perceptio_runtime::schemas::{FieldSpec, PortSchema};
use perceptio_runtime::{
    BuildContext, ERROR_PORT, Frame, Node, NodeError, NodeImpl, NodeKind, NodePorts, Outputs, ParamError, PortContext,
    PortDecl, Signal, autodiff_guard, parse_params,
};
use schemars::JsonSchema;
use serde::Deserialize;

use super::common::{StepInfo, TrainParams, latest_checkpoint, layout_columns};
use super::score::{map_cell, marked_points};
use super::state::TrainerState;
use crate::image_decode::{decode_png_rgb, image_bytes};
use perceptio_models::perceptio::image::encoder_input;

/// Params of `perceptio-batch`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchParams {
    pub train: TrainParams,
    /// Rows per micro-batch.
    #[serde(default = "d_batch")]
    pub batch_size: usize,
    /// false: the "no depth tokens" ablation (no depth spans; depth questions left out).
    #[serde(default = "d_true")]
    pub depth_tokens: bool,
    /// false: the "no segmentation" ablation (referring rows left out).
    #[serde(default = "d_true")]
    pub seg_tokens: bool,
    #[serde(default = "d_max_len")]
    pub max_len: usize,
    /// Checkpoint every this many optimiser steps (0: only at the end).
    #[serde(default)]
    pub checkpoint_every: usize,
    /// Stop (with a checkpoint) after this many optimiser steps of the run even though the schedule is longer;
    /// `resume: true` continues from there. 0: run the whole schedule.
    #[serde(default)]
    pub stop_after: usize,
    /// The task mixture: relative weight per task (`referring`, `points`, `depth`, `vqa`; a task not named
    /// weighs 1). A row of task t is kept with probability w_t / max(w), decided by a hash of the seed and its
    /// `sample_id`, so the same rows are kept on every run and across resume. Weight 0 leaves a task out.
    #[serde(default)]
    pub task_weights: std::collections::BTreeMap<String, f64>,
    /// Seed of the mixture's keep/skip decisions.
    #[serde(default)]
    pub mixture_seed: u64,
}

impl BatchParams {
    /// Whether the mixture keeps row `id` of `task`.
    pub fn keeps(&self, task: &str, id: &str) -> bool {
        let max = self.task_weights.values().copied().fold(1.0f64, f64::max);
        let w = self.task_weights.get(task).copied().unwrap_or(1.0);
        if w >= max {
            return true;
        }
        // FNV-1a over the seed and the id, then mixed: a stable uniform draw in [0, 1)
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self.mixture_seed.to_le_bytes().iter().chain(id.as_bytes()) {
            h ^= *b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // splitmix64 finaliser: FNV alone leaves the high bits of similar ids correlated
        h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        h ^= h >> 31;
        ((h >> 11) as f64 / (1u64 << 53) as f64) < w / max
    }
}

fn d_batch() -> usize {
    8
}
fn d_true() -> bool {
    true
}
fn d_max_len() -> usize {
    512
}

pub struct PerceptioBatchKind;

fn checked(params: &serde_json::Value) -> Result<BatchParams, ParamError> {
    let p: BatchParams = parse_params(params)?;
    if p.batch_size == 0 {
        return Err(ParamError::new("batch_size", "must be at least 1"));
    }
    if p.train.optim.accumulation == 0 {
        return Err(ParamError::new("train.optim.accumulation", "must be at least 1"));
    }
    if p.train.optim.total_steps == 0 {
        return Err(ParamError::new("train.optim.total_steps", "must be at least 1"));
    }
    for (task, w) in &p.task_weights {
        if task.parse::<Task>().is_err() {
            return Err(ParamError::new(
                "task_weights",
                format!("unknown task `{task}` (expected referring, points, depth or vqa)"),
            ));
        }
        if !(w.is_finite() && *w >= 0.0) {
            return Err(ParamError::new("task_weights", format!("`{task}`: {w} is not a weight >= 0")));
        }
    }
    Ok(p)
}

/// The columns the batcher reads.
pub const INPUT_COLUMNS: [&str; 11] = [
    "sample_id",
    "task",
    "question",
    "answer",
    "expression",
    "depth_dependent",
    "image",
    "mask",
    "depth",
    "depth_scale",
    "depth_codes",
];

/// The port schema of a micro-batch frame.
pub fn batch_schema() -> PortSchema {
    let mut s = PortSchema::default()
        .with_field(FieldSpec::any("sample_id"))
        .with_field(FieldSpec::any("task"))
        .with_field(FieldSpec::any("ids"));
    for (name, rank) in [("pixels", 4), ("sam_pixels", 4), ("masks", 3), ("depth", 4)] {
        s.tensors.push(TensorSpec::new(name, TensorKind::Float, rank));
    }
    s
}

impl NodeKind for PerceptioBatchKind {
    fn name(&self) -> &'static str {
        "perceptio-batch"
    }

    fn about(&self) -> &'static str {
        "dataset rows -> Perceptio training micro-batches (token layout, images, target mask and depth)"
    }

    fn params_schema(&self) -> schemars::schema::RootSchema {
        schemars::schema_for!(BatchParams)
    }

    fn ports(&self, ctx: &PortContext<'_>) -> Result<NodePorts, ParamError> {
        checked(ctx.params)?;
        let mut input = PortSchema::default();
        for c in INPUT_COLUMNS {
            input = input.with_field(FieldSpec::any(c));
        }
        Ok(NodePorts {
            inputs: vec![PortDecl::required("in", input)],
            outputs: vec![
                PortDecl::required("out", batch_schema()),
                PortDecl::optional(ERROR_PORT, error_port_schema()),
            ],
        })
    }

    fn build(&self, ctx: &BuildContext<'_>) -> Result<NodeImpl, ParamError> {
        let p = checked(ctx.params)?;
        let node = Batcher::new(p, ctx.device.clone().autodiff()).map_err(|e| ParamError::general(e.to_string()))?;
        Ok(NodeImpl::Node(Box::new(node)))
    }
}

/// One usable row, prepared on the host.
struct Prepared {
    id: String,
    task: String,
    seq: Sequence,
    pixels: Vec<f32>,
    sam: Vec<f32>,
    mask: Vec<f32>,
    depth: Vec<f32>,
}

/// Everything needed to prepare rows (also used outside a graph, e.g. by tests and the plain trainer).
pub struct Preparer {
    pub tokenizer: TextTokenizer,
    pub specials: SpecialTokens,
    pub sequence: SequenceConfig,
    pub image_size: usize,
    pub sam_size: usize,
    pub depth_size: usize,
}

impl Preparer {
    /// From a model directory and the ablation switches.
    pub fn from_model_dir(
        dir: &std::path::Path,
        depth_tokens: bool,
        seg_tokens: bool,
        max_len: usize,
    ) -> Result<(Self, PerceptioConfig), NodeError> {
        let cfg = read_config(dir).map_err(|e| NodeError::msg(e.to_string()))?;
        let tokenizer =
            TextTokenizer::from_file(dir.join(TOKENIZER_FILE)).map_err(|e| NodeError::msg(e.to_string()))?;
        let specials = special_tokens(&tokenizer, cfg.num_codes()).map_err(|e| NodeError::msg(e.to_string()))?;
        let sequence =
            cfg.sequence_config().with_depth_tokens(depth_tokens).with_seg_tokens(seg_tokens).with_max_len(max_len);
        let prep = Preparer {
            tokenizer,
            specials,
            sequence,
            image_size: cfg.vlm.vision.image_size,
            sam_size: cfg.sam2.image_size(),
            depth_size: cfg.vqvae.input_size,
        };
        Ok((prep, cfg))
    }

    /// Prepares row `r` of `batch`: Ok(None) when the ablation leaves it out, Err(reason) when it is unusable.
    fn row(&self, batch: &RecordBatch, r: usize) -> Result<Option<Prepared>, String> {
        let text = |name: &str| -> Result<Option<&str>, String> {
            let c = batch.column_by_name(name).ok_or_else(|| format!("column `{name}` is missing"))?;
            let a = c.as_any().downcast_ref::<StringArray>().ok_or_else(|| format!("column `{name}` is not utf8"))?;
            Ok((!a.is_null(r)).then(|| a.value(r)))
        };
        let id = text("sample_id")?.unwrap_or("?").to_string();
        let task_s = text("task")?.ok_or("task is null")?;
        let task: Task = task_s.parse().map_err(|e| format!("{e}"))?;
        let dd = batch
            .column_by_name("depth_dependent")
            .and_then(|c| c.as_any().downcast_ref::<BooleanArray>())
            .ok_or("column `depth_dependent` is missing or not boolean")?;
        let codes = depth_codes(batch, r)?;
        let depth_map = || -> Result<Vec<f32>, String> {
            let depth_col = batch.column_by_name("depth").ok_or("column `depth` is missing")?;
            let scale = batch
                .column_by_name("depth_scale")
                .and_then(|c| c.as_any().downcast_ref::<Float32Array>())
                .ok_or("column `depth_scale` is missing or not float32")?
                .value(r);
            let png = image_bytes(depth_col, r).map_err(|e| format!("depth: {e}"))?;
            depth_target_from_png(png, scale, self.depth_size).map_err(|e| format!("depth: {e}"))
        };
        // the point chain of thought states the target map's level at each marked point
        let mut target = None;
        let marks = if task == Task::Points && self.sequence.point_reasoning {
            let m = marked_points(batch, r)?;
            let map = target.insert(depth_map()?);
            let side = self.depth_size as i64;
            let levels: Vec<u32> =
                m.points.iter().map(|&(x, y)| point_level(map[map_cell(x, y, m.width, m.height, side)])).collect();
            Some((m.labels, levels))
        } else {
            None
        };
        let points: Option<Vec<PointLevel>> = marks.as_ref().map(|(labels, levels)| {
            labels.iter().zip(levels).map(|(label, &level)| PointLevel { label, level }).collect()
        });
        let sample = SampleText {
            id: &id,
            task,
            question: text("question")?.ok_or("question is null")?,
            answer: text("answer")?.unwrap_or(""),
            expression: text("expression")?,
            depth_dependent: dd.value(r),
            depth_codes: codes.as_deref(),
            points: points.as_deref(),
        };
        let Some(seq) =
            build_sequence(&self.tokenizer, &self.specials, &self.sequence, &sample).map_err(|e| e.to_string())?
        else {
            return Ok(None);
        };
        let image_col = batch.column_by_name("image").ok_or("column `image` is missing")?;
        let (rgb, h, w) = image_bytes(image_col, r).and_then(decode_png_rgb).map_err(|e| format!("image: {e}"))?;
        let pixels = encoder_input(&rgb, h, w, self.image_size);
        let sam = encoder_input(&rgb, h, w, self.sam_size);
        let mask = match batch.column_by_name("mask") {
            Some(c) if !c.is_null(r) => {
                let bytes = image_bytes(c, r).map_err(|e| format!("mask: {e}"))?;
                let (m, mw, mh) = perceptio_synth::codec::decode_mask(bytes).map_err(|e| format!("mask: {e}"))?;
                resize_nearest(&m, mh as usize, mw as usize, self.sam_size)
            }
            _ => vec![0.0; self.sam_size * self.sam_size],
        };
        if seq.seg_pos.is_some() && !mask.iter().any(|&v| v > 0.5) {
            return Err("the answer has [SEG] but the row has no (or an empty) target mask".into());
        }
        let depth = if seq.depth_start.is_some() {
            match target {
                Some(map) => map,
                None => depth_map()?,
            }
        } else {
            vec![0.0; self.depth_size * self.depth_size]
        };
        Ok(Some(Prepared { id, task: task_s.to_string(), seq, pixels, sam, mask, depth }))
    }
}

/// The row's `depth_codes` (None when the column is absent or the cell is null).
fn depth_codes(batch: &RecordBatch, r: usize) -> Result<Option<Vec<u32>>, String> {
    let Some(c) = batch.column_by_name("depth_codes") else { return Ok(None) };
    let list = c.as_any().downcast_ref::<ListArray>().ok_or("column `depth_codes` is not a list")?;
    if list.is_null(r) {
        return Ok(None);
    }
    let values = list.value(r);
    let ints = values.as_any().downcast_ref::<Int32Array>().ok_or("column `depth_codes` is not a list of int32")?;
    ints.values()
        .iter()
        .map(|&v| u32::try_from(v).map_err(|_| format!("depth code {v} is negative")))
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

fn resize_nearest(m: &[bool], h: usize, w: usize, size: usize) -> Vec<f32> {
    let mut out = vec![0f32; size * size];
    for y in 0..size {
        let sy = ((y as f32 + 0.5) * h as f32 / size as f32) as usize;
        for x in 0..size {
            let sx = ((x as f32 + 0.5) * w as f32 / size as f32) as usize;
            out[y * size + x] = if m[sy.min(h - 1) * w + sx.min(w - 1)] { 1.0 } else { 0.0 };
        }
    }
    out
}

/// A batch of prepared rows as a frame (columns + tensors on `device`), stamped with `info`.
fn to_frame(rows: Vec<Prepared>, prep: &Preparer, info: StepInfo, device: &Device) -> Result<Frame, NodeError> {
    let n = rows.len();
    let (p, s, d) = (prep.image_size, prep.sam_size, prep.depth_size);
    let seqs: Vec<Sequence> = rows.iter().map(|r| r.seq.clone()).collect();
    let mut fields = vec![
        Field::new("sample_id", arrow::datatypes::DataType::Utf8, false),
        Field::new("task", arrow::datatypes::DataType::Utf8, false),
    ];
    let mut cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(rows.iter().map(|r| r.id.as_str()).collect::<Vec<_>>())),
        Arc::new(StringArray::from(rows.iter().map(|r| r.task.as_str()).collect::<Vec<_>>())),
    ];
    for (f, c) in layout_columns(&seqs) {
        fields.push(f);
        cols.push(c);
    }
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)?;
    let flat = |f: fn(&Prepared) -> &Vec<f32>| rows.iter().flat_map(|r| f(r).iter().copied()).collect::<Vec<f32>>();
    let pixels = Tensor::<4>::from_data(TensorData::new(flat(|r| &r.pixels), [n, 3, p, p]), device); // [B, 3, p, p]
    let sam = Tensor::<4>::from_data(TensorData::new(flat(|r| &r.sam), [n, 3, s, s]), device); // [B, 3, S, S]
    let masks = Tensor::<3>::from_data(TensorData::new(flat(|r| &r.mask), [n, s, s]), device); // [B, S, S]
    let depth = Tensor::<4>::from_data(TensorData::new(flat(|r| &r.depth), [n, 1, d, d]), device); // [B, 1, D, D]
    Ok(Frame::new(info.stamp(batch)?)
        .with_tensor("pixels", pixels)?
        .with_tensor("sam_pixels", sam)?
        .with_tensor("masks", masks)?
        .with_tensor("depth", depth)?)
}

struct Batcher {
    p: BatchParams,
    prep: Preparer,
    device: Device,
    /// Prepared rows not yet in a micro-batch.
    rows: VecDeque<Prepared>,
    /// A formed micro-batch held back one step, so the last one of the run can be marked as closing a window.
    held: Option<(Vec<Prepared>, u64)>,
    /// Micro-batches emitted so far (the next one's `step`).
    micro: u64,
    /// Rows received (including skipped and failed ones): the resume position.
    consumed: u64,
    /// Rows still to skip when resuming.
    skip: u64,
    left_out: u64,
    /// Rows the task mixture skipped.
    mixed_out: u64,
    /// Micro-batches the run may emit (total optimiser steps x accumulation).
    max_micro: u64,
    unused: u64,
}

impl Batcher {
    fn new(p: BatchParams, device: Device) -> Result<Self, NodeError> {
        let (prep, _) = Preparer::from_model_dir(&p.train.model, p.depth_tokens, p.seg_tokens, p.max_len)?;
        let (mut micro, mut consumed) = (0, 0);
        if p.train.resume {
            let dir = latest_checkpoint(&p.train.out)?
                .ok_or_else(|| NodeError::msg(format!("resume: no checkpoint under {}", p.train.out.display())))?;
            let st = TrainerState::read(&dir)?;
            micro = st.micro_steps;
            consumed = st.rows_consumed;
        }
        let steps = match p.stop_after {
            0 => p.train.optim.total_steps,
            n => n.min(p.train.optim.total_steps),
        };
        let max_micro = (steps * p.train.optim.accumulation) as u64;
        Ok(Self {
            prep,
            device,
            rows: VecDeque::new(),
            held: None,
            micro,
            consumed,
            skip: consumed,
            left_out: 0,
            mixed_out: 0,
            max_micro,
            unused: 0,
            p,
        })
    }

    fn accumulation(&self) -> u64 {
        self.p.train.optim.accumulation as u64
    }

    /// Emits the held micro-batch (`last` marks the final one of the run: it closes its window).
    fn release(&mut self, last: bool, out: &mut Outputs) -> Result<(), NodeError> {
        let Some((rows, consumed)) = self.held.take() else { return Ok(()) };
        let step = self.micro;
        let apply = last || (step + 1) % self.accumulation() == 0;
        let info = StepInfo { step, apply, rows_consumed: consumed };
        let frame = {
            let _autodiff = autodiff_guard();
            to_frame(rows, &self.prep, info, &self.device)?
        };
        out.emit("out", frame)?;
        self.micro += 1;
        if apply {
            let opt_step = self.micro.div_ceil(self.accumulation());
            let every = self.p.checkpoint_every as u64;
            if last || (every > 0 && opt_step % every == 0) {
                out.signal(Signal::Checkpoint { id: opt_step })?;
            }
        }
        Ok(())
    }

    /// Micro-batches formed so far (emitted or held).
    fn formed(&self) -> u64 {
        self.micro + u64::from(self.held.is_some())
    }

    /// Forms micro-batches from the queued rows, keeping one held back (the run's final one is released at once).
    fn form(&mut self, out: &mut Outputs) -> Result<(), NodeError> {
        let b = self.p.batch_size;
        while self.rows.len() >= b && self.formed() < self.max_micro {
            let rows: Vec<Prepared> = self.rows.drain(..b).collect();
            self.release(false, out)?;
            // resume position: every row before the first one still queued
            self.held = Some((rows, self.consumed - self.rows.len() as u64));
            if self.micro + 1 == self.max_micro {
                self.release(true, out)?;
            }
        }
        Ok(())
    }
}

impl Node for Batcher {
    fn process(&mut self, _port: &str, frame: Frame, out: &mut Outputs) -> Result<(), NodeError> {
        let batch = frame.batch();
        let (mut bad_ids, mut reasons) = (Vec::new(), Vec::new());
        for r in 0..batch.num_rows() {
            if self.skip > 0 {
                // resuming: these rows were consumed before the checkpoint (already counted)
                self.skip -= 1;
                continue;
            }
            self.consumed += 1;
            if self.formed() >= self.max_micro {
                self.unused += 1;
                continue;
            }
            if !self.p.task_weights.is_empty() {
                let cell = |name: &str| {
                    batch
                        .column_by_name(name)
                        .and_then(|c| c.as_any().downcast_ref::<StringArray>())
                        .map(|a| a.value(r).to_string())
                };
                if let (Some(task), Some(id)) = (cell("task"), cell("sample_id"))
                    && !self.p.keeps(&task, &id)
                {
                    self.mixed_out += 1;
                    continue;
                }
            }
            match self.prep.row(batch, r) {
                Ok(Some(row)) => self.rows.push_back(row),
                Ok(None) => self.left_out += 1,
                Err(reason) => {
                    let id = batch
                        .column_by_name("sample_id")
                        .and_then(|c| arrow::util::display::array_value_to_string(c, r).ok())
                        .unwrap_or_else(|| format!("row {r} of frame"));
                    bad_ids.push(id);
                    reasons.push(reason);
                }
            }
        }
        if !bad_ids.is_empty() {
            out.reject(bad_ids, reasons)?;
        }
        self.form(out)?;
        if self.formed() >= self.max_micro && !out.should_drain() {
            // every training step has its rows: stop the replay instead of reading epochs nobody uses
            tracing::debug!(node = out.node_id(), "last micro-batch formed; draining the sources");
            out.request_drain();
        }
        Ok(())
    }

    fn finish(&mut self, out: &mut Outputs) -> Result<(), NodeError> {
        // a final partial micro-batch still trains (it closes the last window)
        if !self.rows.is_empty() && self.formed() < self.max_micro {
            let rows: Vec<Prepared> = self.rows.drain(..).collect();
            self.release(false, out)?;
            self.held = Some((rows, self.consumed));
        }
        self.release(true, out)?;
        if self.mixed_out > 0 {
            tracing::info!(node = out.node_id(), rows = self.mixed_out, "rows skipped by the task mixture");
        }
        if self.left_out > 0 {
            tracing::info!(node = out.node_id(), rows = self.left_out, "rows left out by the ablation switches");
        }
        if self.unused > 0 {
            tracing::info!(node = out.node_id(), rows = self.unused, "rows after the last training step not used");
        }
        Ok(())
    }
}

/// Exposed for the plain trainer and tests: prepare `batch`'s rows and stack them into one micro-batch frame.
pub fn prepare_frame(
    prep: &Preparer,
    batch: &RecordBatch,
    info: StepInfo,
    device: &Device,
) -> Result<Frame, NodeError> {
    let mut rows = Vec::new();
    for r in 0..batch.num_rows() {
        match prep.row(batch, r) {
            Ok(Some(row)) => rows.push(row),
            Ok(None) => {}
            Err(reason) => return Err(NodeError::msg(format!("row {r}: {reason}"))),
        }
    }
    to_frame(rows, prep, info, device)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(task_weights: serde_json::Value) -> Result<BatchParams, ParamError> {
        checked(&serde_json::json!({
            "train": { "model": "m", "out": "o", "optim": { "total_steps": 1 } },
            "task_weights": task_weights
        }))
    }

    #[test]
    fn the_mixture_keeps_rows_in_proportion_and_deterministically() {
        let p = params(serde_json::json!({ "points": 2.0, "vqa": 0.5, "depth": 0.0 })).unwrap();
        let kept = |task: &str| (0..4000).filter(|i| p.keeps(task, &format!("s{i}"))).count() as f64 / 4000.0;
        assert_eq!(kept("points"), 1.0);
        assert!((kept("referring") - 0.5).abs() < 0.03, "{}", kept("referring"));
        assert!((kept("vqa") - 0.25).abs() < 0.03, "{}", kept("vqa"));
        assert_eq!(kept("depth"), 0.0);
        let again = params(serde_json::json!({ "points": 2.0, "vqa": 0.5, "depth": 0.0 })).unwrap();
        assert!((0..500).all(|i| p.keeps("vqa", &format!("s{i}")) == again.keeps("vqa", &format!("s{i}"))));
    }

    #[test]
    fn bad_weights_name_the_task() {
        let e = params(serde_json::json!({ "pointz": 1.0 })).unwrap_err();
        assert!(e.message.contains("pointz") && e.field.as_deref() == Some("task_weights"), "{e:?}");
        let e = params(serde_json::json!({ "vqa": -1.0 })).unwrap_err();
        assert!(e.message.contains("vqa") && e.field.as_deref() == Some("task_weights"), "{e:?}");
    }
}
