//! `loss-aggregator`: the end of the training graph. Per micro-batch it joins the text-side frame (logits and token
//! layout: next-token, marker, code and count terms are computed here), the segmentation loss frame and the
//! depth reconstruction loss frame; weighs the terms, runs backward once and answers every trainable node's
//! gradient request with the result. Emits one metrics row per micro-batch (every term separately), and on a
//! checkpoint barrier completes the checkpoint directory the trainable nodes wrote their parts into.

use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, Float64Array, RecordBatch, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema};
use burn::tensor::Tensor;
use perceptio_models::perceptio::checkpoint::{CONFIG_FILE, Part, TOKENIZER_FILE};
use perceptio_models::perceptio::loss::{LossConfig, LossTerms, LossValues, TERM_NAMES};
use perceptio_models::perceptio::optim::OptimConfig;
use perceptio_models::perceptio::step::token_terms;
use perceptio_models::perceptio::{SpecialTokens, TokenBatch};
use perceptio_runtime::schemas::{FieldSpec, PortSchema};
use perceptio_runtime::train::distinct_requests;
use perceptio_runtime::{
    BuildContext, Frame, Node, NodeError, NodeImpl, NodeKind, NodePorts, Outputs, ParamError, PortContext, PortDecl,
    Signal, StepGrads, autodiff_guard, parse_params,
};
use schemars::JsonSchema;
use serde::Deserialize;

use super::common::{Join, StepInfo, TrainParams, partial_dir, read_sequences};
use super::llm::llm_output_schema;
use super::mask_decoder::loss_schema;
use super::router::model_specials;
use super::state::TrainerState;

/// Loss weights and ablation switches as they appear in a dataflow file.
#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LossParams {
    #[serde(default = "one")]
    pub llm: f64,
    #[serde(default = "one")]
    pub seg: f64,
    #[serde(default = "one")]
    pub seg_bce: f64,
    #[serde(default = "quarter")]
    pub seg_dice: f64,
    /// Weight of the grounding-map cross-entropy (models with `seg_grounding`).
    #[serde(default = "one")]
    pub seg_ground: f64,
    #[serde(default = "one")]
    pub marker: f64,
    #[serde(default = "one")]
    pub token: f64,
    #[serde(default = "one")]
    pub count: f64,
    #[serde(default = "one")]
    pub rec: f64,
    /// false: the "no depth-generation losses" ablation (marker, token and count weights become 0).
    #[serde(default = "yes")]
    pub depth_generation: bool,
    /// false: the "no soft reconstruction" ablation (rec weight becomes 0).
    #[serde(default = "yes")]
    pub soft_reconstruction: bool,
}

fn one() -> f64 {
    1.0
}
fn quarter() -> f64 {
    0.25
}
fn yes() -> bool {
    true
}

impl Default for LossParams {
    fn default() -> Self {
        serde_json::from_str("{}").expect("every field has a default")
    }
}

impl LossParams {
    /// The loss config for spans of `span_len` codes.
    pub fn config(&self, span_len: usize) -> LossConfig {
        let generation = if self.depth_generation { 1.0 } else { 0.0 };
        LossConfig::new()
            .with_llm(self.llm)
            .with_seg(self.seg)
            .with_seg_bce(self.seg_bce)
            .with_seg_dice(self.seg_dice)
            .with_seg_ground(self.seg_ground)
            .with_marker(self.marker * generation)
            .with_token(self.token * generation)
            .with_count(self.count * generation)
            .with_rec(if self.soft_reconstruction { self.rec } else { 0.0 })
            .with_span_len(span_len)
    }
}

/// Params of `loss-aggregator`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AggregatorParams {
    pub train: TrainParams,
    #[serde(default)]
    pub loss: LossParams,
    /// Log a line with every term every this many optimiser steps (0: never).
    #[serde(default = "d_log")]
    pub log_every: usize,
}

fn d_log() -> usize {
    10
}

/// Names of the metrics columns after `step`, `optimizer_step`, `apply`, `lr`.
pub const TERM_COLUMNS: [&str; TERM_NAMES.len() + 1] = {
    let mut columns = ["total"; TERM_NAMES.len() + 1];
    let mut i = 0;
    while i < TERM_NAMES.len() {
        columns[i + 1] = TERM_NAMES[i];
        i += 1;
    }
    columns
};

/// The metrics row schema.
pub fn metrics_schema() -> Schema {
    let mut fields = vec![
        Field::new("step", DataType::UInt64, false),
        Field::new("optimizer_step", DataType::UInt64, false),
        Field::new("apply", DataType::Boolean, false),
        Field::new("lr", DataType::Float64, false),
    ];
    fields.extend(TERM_COLUMNS.iter().map(|c| Field::new(*c, DataType::Float64, true)));
    Schema::new(fields)
}

pub struct LossAggregatorKind;

impl NodeKind for LossAggregatorKind {
    fn name(&self) -> &'static str {
        "loss-aggregator"
    }

    fn about(&self) -> &'static str {
        "weigh every loss term, run backward, hand each trainable node its gradients; metrics per micro-batch"
    }

    fn params_schema(&self) -> schemars::schema::RootSchema {
        schemars::schema_for!(AggregatorParams)
    }

    fn ports(&self, ctx: &PortContext<'_>) -> Result<NodePorts, ParamError> {
        let _: AggregatorParams = parse_params(ctx.params)?;
        let mut metrics = PortSchema::default();
        for f in metrics_schema().fields() {
            metrics = metrics.with_field(FieldSpec::new(f.name(), f.data_type().clone()));
        }
        Ok(NodePorts {
            inputs: vec![
                PortDecl::required("text", llm_output_schema()),
                PortDecl::optional("seg", loss_schema()),
                PortDecl::optional("depth", loss_schema()),
            ],
            outputs: vec![PortDecl::optional("metrics", metrics)],
        })
    }

    fn build(&self, ctx: &BuildContext<'_>) -> Result<NodeImpl, ParamError> {
        let p: AggregatorParams = parse_params(ctx.params)?;
        let err = |e: String| ParamError::general(e);
        let dir = p.train.start_dir().map_err(|e| err(e.to_string()))?;
        let (specials, span_len) = model_specials(&dir).map_err(err)?;
        let loss = p.loss.config(span_len);
        let ports: Vec<String> =
            ["text", "seg", "depth"].into_iter().filter(|p| ctx.inputs.contains_key(*p)).map(String::from).collect();
        Ok(NodeImpl::Node(Box::new(Aggregator {
            optim: p.train.optim.config(),
            loss,
            specials,
            join: Join::new(ports),
            model: p.train.model.clone(),
            out: p.train.out.clone(),
            log_every: p.log_every,
            last: None,
            first: None,
            latest: None,
        })))
    }
}

struct Aggregator {
    optim: OptimConfig,
    loss: LossConfig,
    specials: SpecialTokens,
    join: Join,
    model: PathBuf,
    out: PathBuf,
    log_every: usize,
    last: Option<StepInfo>,
    first: Option<LossValues>,
    latest: Option<LossValues>,
}

/// Scalar loss tensors of a one-row loss frame.
fn loss_tensor(frame: Option<&Frame>, name: &str) -> Result<Option<Tensor<1>>, NodeError> {
    Ok(frame.map(|f| f.optional_tensor::<Tensor<1>>(name)).transpose()?.flatten())
}

impl Aggregator {
    fn metrics_row(&self, info: StepInfo, v: &LossValues) -> Result<Frame, NodeError> {
        let opt_step = (info.step + 1).div_ceil(self.optim.accumulation as u64);
        let f = |x: Option<f64>| -> ArrayRef { Arc::new(Float64Array::from(vec![x])) };
        let mut cols: Vec<ArrayRef> = vec![
            Arc::new(UInt64Array::from(vec![info.step])),
            Arc::new(UInt64Array::from(vec![opt_step])),
            Arc::new(BooleanArray::from(vec![info.apply])),
            Arc::new(Float64Array::from(vec![self.optim.lr_at(opt_step as usize)])),
        ];
        cols.push(f(Some(v.total)));
        for (_, x) in v.terms() {
            cols.push(f(x));
        }
        Ok(Frame::new(RecordBatch::try_new(Arc::new(metrics_schema()), cols)?))
    }
}

/// One line with every present term.
pub fn describe(v: &LossValues) -> String {
    let mut s = format!("total {:.4}", v.total);
    for (name, x) in v.terms() {
        if let Some(x) = x {
            s.push_str(&format!(" {name} {x:.4}"));
        }
    }
    s
}

impl Node for Aggregator {
    fn process(&mut self, port: &str, frame: Frame, out: &mut Outputs) -> Result<(), NodeError> {
        let Some(mut parts) = self.join.push(port, frame)? else { return Ok(()) };
        let text = parts.remove("text").expect("the text input is required");
        let seg = parts.remove("seg");
        let depth = parts.remove("depth");
        let info = StepInfo::of(&text)?;
        let tokens = TokenBatch::new(read_sequences(text.batch())?, self.specials.pad);
        let requests = distinct_requests(
            text.grad_requests()
                .iter()
                .chain(seg.iter().flat_map(|f| f.grad_requests()))
                .chain(depth.iter().flat_map(|f| f.grad_requests())),
        );
        let work = autodiff_guard();
        let mut terms: LossTerms =
            token_terms(text.tensor::<Tensor<3>>("logits")?, &tokens, &self.specials, &self.loss);
        if self.loss.seg != 0.0 {
            terms.seg_bce = loss_tensor(seg.as_ref(), "seg_bce")?;
            terms.seg_dice = loss_tensor(seg.as_ref(), "seg_dice")?;
            terms.seg_ground = loss_tensor(seg.as_ref(), "seg_ground")?;
        }
        if self.loss.rec != 0.0 {
            terms.rec = loss_tensor(depth.as_ref(), "rec")?;
        }
        let total = terms.total(&self.loss);
        let values = terms.values(&self.loss);
        let grads = total.map(|t| t.backward());
        drop((terms, text, seg, depth));
        drop(work);
        let answer = Arc::new(StepGrads::new(info.step, info.apply, grads, requests.len()));
        for r in &requests {
            r.fulfil(answer.clone());
        }
        if self.first.is_none() {
            self.first = Some(values);
        }
        self.latest = Some(values);
        self.last = Some(info);
        let opt_step = (info.step + 1).div_ceil(self.optim.accumulation as u64);
        out.set_status(format!("step {opt_step}/{} {}", self.optim.total_steps, describe(&values)));
        if info.apply && self.log_every > 0 && opt_step % self.log_every as u64 == 0 {
            tracing::info!(node = out.node_id(), step = opt_step, "{}", describe(&values));
        }
        if out.is_connected("metrics") {
            let row = self.metrics_row(info, &values)?;
            out.emit("metrics", row)?;
        }
        Ok(())
    }

    fn on_signal(&mut self, signal: &Signal, out: &mut Outputs) -> Result<(), NodeError> {
        let Signal::Checkpoint { id } = signal else { return Ok(()) };
        let Some(last) = self.last else { return Ok(()) };
        let partial = partial_dir(&self.out, *id);
        std::fs::create_dir_all(&partial).map_err(|e| NodeError::io(format!("creating {}", partial.display()), e))?;
        for name in [CONFIG_FILE, TOKENIZER_FILE, Part::VqVae.file()] {
            let (from, to) = (self.model.join(name), partial.join(name));
            std::fs::copy(&from, &to).map_err(|e| NodeError::io(format!("copying {}", from.display()), e))?;
        }
        let state =
            TrainerState { micro_steps: last.step + 1, optimizer_steps: *id, rows_consumed: last.rows_consumed };
        state.write(&partial)?;
        let name = format!("step-{id}");
        let done = self.out.join(&name);
        if done.exists() {
            std::fs::remove_dir_all(&done).map_err(|e| NodeError::io(format!("replacing {}", done.display()), e))?;
        }
        std::fs::rename(&partial, &done).map_err(|e| NodeError::io(format!("publishing {}", done.display()), e))?;
        let latest = self.out.join("latest");
        let tmp = self.out.join("latest.tmp");
        std::fs::write(&tmp, &name).map_err(|e| NodeError::io(format!("writing {}", tmp.display()), e))?;
        std::fs::rename(&tmp, &latest).map_err(|e| NodeError::io(format!("writing {}", latest.display()), e))?;
        tracing::info!(node = out.node_id(), dir = %done.display(), "checkpoint written");
        Ok(())
    }

    fn finish(&mut self, out: &mut Outputs) -> Result<(), NodeError> {
        if self.join.leftover() > 0 {
            return Err(NodeError::msg(format!(
                "{} loss frames never met their partners (inputs disagree on the micro-batches)",
                self.join.leftover()
            )));
        }
        if let (Some(first), Some(last)) = (self.first, self.latest) {
            tracing::info!(node = out.node_id(), "first micro-batch: {}", describe(&first));
            tracing::info!(node = out.node_id(), "last micro-batch:  {}", describe(&last));
        }
        Ok(())
    }
}
