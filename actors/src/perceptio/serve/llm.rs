//! `serve-llm`: the serving graph's LLM, batching continuously. Requests join the running batch between decode
//! steps (up to `max_batch` running) and leave it the moment they stop; when nothing runs, they gather until a
//! full batch waits or the batch window's `Flush` comes. Decoding is greedy with a KV cache under the depth-span
//! constraint. Emits the generation stream as it goes: after every decode step a frame of `token` rows (one per
//! running request), a `seg` frame carrying the `[SEG]` hidden state `hidden` `[n, d]` as soon as it is known,
//! and one `end` row per request the moment it stops (at `<|im_end|>`, at its token limit, on cancellation, or
//! with its batch's error). Every request it receives gets exactly one `end` row: the router and the SAM2 encoder
//! rely on it.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch, StringArray, UInt32Array, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema};
use burn::prelude::*;
use perceptio_models::perceptio::checkpoint::Part;
use perceptio_models::perceptio::decode::DecodeEvent;
use perceptio_models::perceptio::stepper::Stepper;
use perceptio_models::perceptio::{LlmPart, PerceptioConfig};
use perceptio_runtime::schemas::PortSchema;
use perceptio_runtime::{
    BuildContext, Frame, Node, NodeError, NodeImpl, NodeKind, NodePorts, Outputs, ParamError, PortContext, PortDecl,
    Signal, parse_params,
};
use schemars::JsonSchema;
use serde::Deserialize;

use super::encoders::image_port_schema;
use super::prepare::{PreparedRow, read_prepared};
use super::{ModelDir, ServeHub, clock_ns, id_field, request_keys};
use crate::perceptio::common::column;

/// Params of `serve-llm`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServeLlmParams {
    /// The model directory.
    pub model: std::path::PathBuf,
    /// Most requests decoded together.
    #[serde(default = "default_batch")]
    pub max_batch: usize,
}

fn default_batch() -> usize {
    8
}

fn checked(params: &serde_json::Value) -> Result<ServeLlmParams, ParamError> {
    let p: ServeLlmParams = parse_params(params)?;
    if p.max_batch == 0 || p.max_batch > 1024 {
        return Err(ParamError::new("max_batch", "must be between 1 and 1024"));
    }
    Ok(p)
}

/// What a generation-stream row reports.
#[derive(Debug, Clone, PartialEq)]
pub enum GenKind {
    /// The request generated `token`.
    Token(u32),
    /// The request's `[SEG]` hidden state is known: a `seg` frame holds only such rows, with their states as
    /// the rows of its `hidden` tensor `[n, d]`.
    Seg,
    /// The request stopped; `error` when its batch failed.
    End { queue_ns: u64, generate_ns: u64, batch_size: u32, error: Option<String> },
}

/// One row of the generation stream.
#[derive(Debug, Clone, PartialEq)]
pub struct GenRow {
    pub key: u64,
    pub submitted_ns: u64,
    pub kind: GenKind,
}

/// The columns of the generation stream.
pub fn generation_schema() -> Schema {
    Schema::new(vec![
        id_field(),
        Field::new("kind", DataType::Utf8, false),
        Field::new("token", DataType::UInt32, true),
        Field::new("submitted_ns", DataType::UInt64, false),
        Field::new("queue_ns", DataType::UInt64, true),
        Field::new("generate_ns", DataType::UInt64, true),
        Field::new("batch_size", DataType::UInt32, true),
        Field::new("error", DataType::Utf8, true),
    ])
}

/// Rows of the generation stream as a frame ([`generation_schema`]); a `seg` frame also carries `hidden`.
pub fn generation_frame(rows: &[GenRow]) -> Result<Frame, NodeError> {
    let mut kind = Vec::with_capacity(rows.len());
    let (mut token, mut queue, mut generate, mut size, mut error) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for r in rows {
        let (k, t, q, g, b, e) = match &r.kind {
            GenKind::Token(id) => ("token", Some(*id), None, None, None, None),
            GenKind::Seg => ("seg", None, None, None, None, None),
            GenKind::End { queue_ns, generate_ns, batch_size, error } => {
                ("end", None, Some(*queue_ns), Some(*generate_ns), Some(*batch_size), error.as_deref())
            }
        };
        kind.push(k);
        token.push(t);
        queue.push(q);
        generate.push(g);
        size.push(b);
        error.push(e);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.key.to_string()))),
        Arc::new(StringArray::from(kind)),
        Arc::new(UInt32Array::from(token)),
        Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.submitted_ns))),
        Arc::new(UInt64Array::from(queue)),
        Arc::new(UInt64Array::from(generate)),
        Arc::new(UInt32Array::from(size)),
        Arc::new(StringArray::from(error)),
    ];
    Ok(Frame::new(RecordBatch::try_new(Arc::new(generation_schema()), columns)?))
}

/// Reads the rows of a generation-stream frame; a malformed row fails the frame, naming it.
pub fn read_generation(frame: &Frame) -> Result<Vec<GenRow>, NodeError> {
    let b = frame.batch();
    let keys = request_keys(frame)?;
    let kind = column::<StringArray>(b, "kind")?;
    let token = column::<UInt32Array>(b, "token")?;
    let submitted = column::<UInt64Array>(b, "submitted_ns")?;
    let queue = column::<UInt64Array>(b, "queue_ns")?;
    let generate = column::<UInt64Array>(b, "generate_ns")?;
    let size = column::<UInt32Array>(b, "batch_size")?;
    let error = column::<StringArray>(b, "error")?;
    (0..b.num_rows())
        .map(|r| {
            let key = keys[r];
            let bad = |what: &str| NodeError::msg(format!("generation row {r} (request {key}): {what}"));
            let kind = match kind.value(r) {
                "token" => GenKind::Token((!token.is_null(r)).then(|| token.value(r)).ok_or_else(|| bad("no token"))?),
                "seg" => GenKind::Seg,
                "end" => GenKind::End {
                    queue_ns: if queue.is_null(r) { 0 } else { queue.value(r) },
                    generate_ns: if generate.is_null(r) { 0 } else { generate.value(r) },
                    batch_size: if size.is_null(r) { 0 } else { size.value(r) },
                    error: (!error.is_null(r)).then(|| error.value(r).to_string()),
                },
                other => return Err(bad(&format!("unknown kind `{other}`"))),
            };
            Ok(GenRow { key, submitted_ns: submitted.value(r), kind })
        })
        .collect()
}

/// The generation stream's port schema (`seg` frames also carry `hidden` `[n, d]`, not declared: other frames
/// have none).
pub fn generation_port_schema() -> PortSchema {
    PortSchema::from_arrow(&generation_schema())
}

/// The `serve-llm` kind. With a hub it stops work on cancelled requests.
pub struct ServeLlmKind {
    pub hub: Option<Arc<dyn ServeHub>>,
}

impl NodeKind for ServeLlmKind {
    fn name(&self) -> &'static str {
        "serve-llm"
    }

    fn about(&self) -> &'static str {
        "serving: batch requests, decode with KV cache and the depth-span constraint; streams tokens, [SEG] states, ends"
    }

    fn params_schema(&self) -> schemars::schema::RootSchema {
        schemars::schema_for!(ServeLlmParams)
    }

    fn ports(&self, ctx: &PortContext<'_>) -> Result<NodePorts, ParamError> {
        checked(ctx.params)?;
        Ok(NodePorts {
            inputs: vec![PortDecl::required("in", image_port_schema())],
            outputs: vec![PortDecl::required("out", generation_port_schema())],
        })
    }

    fn build(&self, ctx: &BuildContext<'_>) -> Result<NodeImpl, ParamError> {
        let p = checked(ctx.params)?;
        let dir = ModelDir::open(&p.model)?;
        let llm = dir.load(Part::Llm, PerceptioConfig::init_llm, &ctx.device.clone().without_autodiff())?;
        let text = dir.text()?;
        Ok(NodeImpl::Node(Box::new(LlmNode {
            llm,
            max_batch: p.max_batch,
            hub: self.hub.clone(),
            pending: VecDeque::new(),
            flushed: false,
            stepper: Stepper::new(text.specials, text.sequence.span_len).keeping_image_states(dir.cfg.seg_grounding),
            running: HashMap::new(),
            next_tag: 0,
        })))
    }
}

/// A request waiting to join the batch: its row and image tokens `[T, d]`.
struct Pending {
    row: PreparedRow,
    image: Tensor<2>,
}

/// A request in the running batch.
struct Running {
    row: PreparedRow,
    admitted_ns: u64,
    /// Requests in the batch right after it joined (itself included).
    batch_size: u32,
    generated: usize,
}

struct LlmNode {
    llm: LlmPart,
    max_batch: usize,
    hub: Option<Arc<dyn ServeHub>>,
    pending: VecDeque<Pending>,
    /// A `Flush` came: admit what is pending without waiting for a full batch.
    flushed: bool,
    stepper: Stepper,
    /// The running requests by their stepper tag.
    running: HashMap<usize, Running>,
    next_tag: usize,
}

fn emit_rows(out: &mut Outputs, rows: &mut Vec<GenRow>) -> Result<(), NodeError> {
    if rows.is_empty() {
        return Ok(());
    }
    let frame = generation_frame(rows)?;
    rows.clear();
    out.emit("out", frame)
}

fn end_row(row: &PreparedRow, admitted_ns: u64, batch_size: u32, error: Option<String>) -> GenRow {
    GenRow {
        key: row.key,
        submitted_ns: row.submitted_ns,
        kind: GenKind::End {
            queue_ns: admitted_ns.saturating_sub(row.submitted_ns),
            generate_ns: clock_ns().saturating_sub(admitted_ns),
            batch_size,
            error,
        },
    }
}

/// Whether the hub (when there is one) has cancelled request `key`.
fn is_cancelled(hub: &Option<Arc<dyn ServeHub>>, key: u64) -> bool {
    hub.as_ref().is_some_and(|h| h.is_cancelled(key))
}

impl LlmNode {
    /// Whether pending requests may join now: a batch is running (they join between its steps), a `Flush` came
    /// (the batch window closed), or a full batch is waiting.
    fn may_admit(&self) -> bool {
        !self.pending.is_empty()
            && self.stepper.len() < self.max_batch
            && (self.flushed || !self.stepper.is_empty() || self.pending.len() >= self.max_batch)
    }

    /// Moves pending requests into the running batch, up to `max_batch` running.
    fn admit(&mut self, out: &mut Outputs) -> Result<(), NodeError> {
        if !self.may_admit() {
            return Ok(());
        }
        let now = clock_ns();
        let mut joining = Vec::new();
        let mut ends = Vec::new();
        while joining.len() + self.stepper.len() < self.max_batch
            && let Some(p) = self.pending.pop_front()
        {
            if is_cancelled(&self.hub, p.row.key) {
                ends.push(end_row(&p.row, now, 0, None));
            } else {
                joining.push(p);
            }
        }
        if self.pending.is_empty() {
            self.flushed = false;
        }
        emit_rows(out, &mut ends)?;
        if joining.is_empty() {
            return Ok(());
        }
        let prompts: Vec<Vec<u32>> = joining.iter().map(|p| p.row.prompt.clone()).collect();
        let image = Tensor::stack::<3>(joining.iter().map(|p| p.image.clone()).collect(), 0); // [n, T, d]
        let tags: Vec<usize> = (self.next_tag..self.next_tag + joining.len()).collect();
        self.next_tag += joining.len();
        if let Err(e) = self.stepper.admit(&self.llm, &prompts, Some(image), &tags) {
            let message = format!("prefilling {} requests: {e}", joining.len());
            let mut ends: Vec<GenRow> =
                joining.iter().map(|p| end_row(&p.row, now, 0, Some(message.clone()))).collect();
            return emit_rows(out, &mut ends);
        }
        let batch_size = self.stepper.len() as u32;
        for (tag, p) in tags.into_iter().zip(joining) {
            self.running.insert(tag, Running { row: p.row, admitted_ns: now, batch_size, generated: 0 });
        }
        Ok(())
    }

    /// One decode step of the running batch, streaming its rows: tokens, then `[SEG]` states, then ends.
    fn decode_step(&mut self, out: &mut Outputs) -> Result<(), NodeError> {
        let mut tokens: Vec<GenRow> = Vec::new();
        let mut segs: Vec<(usize, Tensor<1>, Option<Tensor<2>>)> = Vec::new();
        let hub = &self.hub;
        let running = &mut self.running;
        let result = self.stepper.step(&self.llm, &mut |event| match event {
            DecodeEvent::Token { row, id } => {
                let Some(r) = running.get_mut(&row) else { return false };
                r.generated += 1;
                tokens.push(GenRow { key: r.row.key, submitted_ns: r.row.submitted_ns, kind: GenKind::Token(id) });
                r.generated < r.row.max_new_tokens && !is_cancelled(hub, r.row.key)
            }
            DecodeEvent::SegHidden { row, hidden, image } => {
                segs.push((row, hidden.clone(), image.cloned()));
                running.get(&row).is_some_and(|r| !is_cancelled(hub, r.row.key))
            }
        });
        emit_rows(out, &mut tokens)?;
        let mut seg_rows: Vec<GenRow> = Vec::new();
        let mut hidden: Vec<Tensor<1>> = Vec::new();
        let mut images: Vec<Option<Tensor<2>>> = Vec::new();
        for (tag, h, image) in segs {
            let Some(r) = self.running.get(&tag) else { continue };
            seg_rows.push(GenRow { key: r.row.key, submitted_ns: r.row.submitted_ns, kind: GenKind::Seg });
            hidden.push(h);
            images.push(image);
        }
        if !seg_rows.is_empty() {
            let hidden = Tensor::stack::<2>(hidden, 0); // [n, d]
            let mut frame = generation_frame(&seg_rows)?.with_tensor("hidden", hidden)?;
            // every serving prompt holds the image, so each row has its image-token states
            if let Some(images) = images.into_iter().collect::<Option<Vec<_>>>() {
                frame = frame.with_tensor("image_hidden", Tensor::stack::<3>(images, 0))?; // [n, T, d]
            }
            out.emit("out", frame)?;
        }
        let (finished, error) = match result {
            Ok(finished) => (finished.into_iter().map(|(tag, _)| tag).collect::<Vec<_>>(), None),
            Err(e) => {
                // the batch's state is lost: every running request fails with it
                self.stepper.drain();
                let n = self.running.len();
                (self.running.keys().copied().collect(), Some(format!("decoding its batch of {n}: {e}")))
            }
        };
        let mut ends: Vec<GenRow> = finished
            .into_iter()
            .filter_map(|tag| self.running.remove(&tag))
            .map(|r| end_row(&r.row, r.admitted_ns, r.batch_size, error.clone()))
            .collect();
        emit_rows(out, &mut ends)
    }
}

impl Node for LlmNode {
    fn process(&mut self, _port: &str, frame: Frame, _out: &mut Outputs) -> Result<(), NodeError> {
        let rows = read_prepared(&frame)?;
        let image: Tensor<3> = frame.tensor("image_tokens")?; // [B, T, d]
        let [_, t, d] = image.dims();
        for (i, row) in rows.into_iter().enumerate() {
            let image = image.clone().slice([i..i + 1, 0..t, 0..d]).reshape([t, d]); // [T, d]
            self.pending.push_back(Pending { row, image });
        }
        Ok(())
    }

    fn on_signal(&mut self, signal: &Signal, _out: &mut Outputs) -> Result<(), NodeError> {
        if *signal == Signal::Flush && !self.pending.is_empty() {
            self.flushed = true;
        }
        Ok(())
    }

    /// Between frames: let waiting requests join, then decode one step.
    fn step(&mut self, out: &mut Outputs) -> Result<bool, NodeError> {
        self.admit(out)?;
        if !self.stepper.is_empty() {
            self.decode_step(out)?;
        }
        Ok(!self.stepper.is_empty() || self.may_admit())
    }

    fn finish(&mut self, out: &mut Outputs) -> Result<(), NodeError> {
        self.flushed = true;
        while self.step(out)? {}
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_rows_round_trip_through_a_frame() {
        let rows = vec![
            GenRow { key: 4, submitted_ns: 9, kind: GenKind::Token(17) },
            GenRow { key: 5, submitted_ns: 10, kind: GenKind::Seg },
            GenRow {
                key: 4,
                submitted_ns: 9,
                kind: GenKind::End { queue_ns: 3, generate_ns: 70, batch_size: 2, error: None },
            },
            GenRow {
                key: 5,
                submitted_ns: 10,
                kind: GenKind::End { queue_ns: 2, generate_ns: 71, batch_size: 2, error: Some("boom".into()) },
            },
        ];
        assert_eq!(read_generation(&generation_frame(&rows).unwrap()).unwrap(), rows);
    }
}
