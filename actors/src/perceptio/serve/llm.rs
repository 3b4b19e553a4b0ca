//! `serve-llm`: the serving graph's LLM. Batches prepared requests (up to `max_batch`, or what it holds when a
//! `Flush` arrives) and decodes each batch greedily with a KV cache under the depth-span constraint. Emits the
//! generation stream as it goes: after every decode step a frame of `token` rows (one per request still
//! generating), a `seg` frame carrying the `[SEG]` hidden state `hidden` `[n, d]` as soon as it is known, and one
//! `end` row per request the moment it stops (at `<|im_end|>`, at its token limit, on cancellation, or with the
//! batch's error). Every request it receives gets exactly one `end` row: the router and the mask decoder rely on it.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch, StringArray, UInt32Array, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema};
use burn::prelude::*;
use perceptio_models::perceptio::checkpoint::Part;
use perceptio_models::perceptio::decode::{DecodeEvent, generate_from_image_tokens};
use perceptio_models::perceptio::predict::TextSide;
use perceptio_models::perceptio::{LlmPart, SpecialTokens};
use perceptio_runtime::schemas::PortSchema;
use perceptio_runtime::{
    BuildContext, Frame, Node, NodeError, NodeImpl, NodeKind, NodePorts, Outputs, ParamError, PortContext, PortDecl,
    Signal, parse_params,
};
use schemars::JsonSchema;
use serde::Deserialize;

use super::encoders::{image_port_schema, load_serving_part};
use super::prepare::{PreparedRow, read_prepared};
use super::{ServeHub, ServeModelParams, clock_ns};
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
        Field::new("id", DataType::Utf8, false),
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
    let id = column::<StringArray>(b, "id")?;
    let kind = column::<StringArray>(b, "kind")?;
    let token = column::<UInt32Array>(b, "token")?;
    let submitted = column::<UInt64Array>(b, "submitted_ns")?;
    let queue = column::<UInt64Array>(b, "queue_ns")?;
    let generate = column::<UInt64Array>(b, "generate_ns")?;
    let size = column::<UInt32Array>(b, "batch_size")?;
    let error = column::<StringArray>(b, "error")?;
    (0..b.num_rows())
        .map(|r| {
            let bad = |what: &str| NodeError::msg(format!("generation row {r} (request {}): {what}", id.value(r)));
            let key = id.value(r).parse().map_err(|_| bad("the id is not a request number"))?;
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
        let device = ctx.device.clone().without_autodiff();
        let part = ServeModelParams { model: p.model.clone() };
        let (cfg, llm) = load_serving_part(
            &part,
            Part::Llm,
            |cfg, d| cfg.init_llm(d).map_err(|e| ParamError::new("model", e.to_string())),
            &device,
        )?;
        let text = TextSide::load(&p.model, &cfg)
            .map_err(|e| ParamError::new("model", format!("{}: {e}", p.model.display())))?;
        Ok(NodeImpl::Node(Box::new(LlmNode {
            llm,
            specials: text.specials,
            span_len: text.sequence.span_len,
            max_batch: p.max_batch,
            hub: self.hub.clone(),
            pending: Vec::new(),
        })))
    }
}

/// A request waiting for its batch: its row and image tokens `[T, d]`.
struct Pending {
    row: PreparedRow,
    image: Tensor<2>,
}

struct LlmNode {
    llm: LlmPart,
    specials: SpecialTokens,
    span_len: usize,
    max_batch: usize,
    hub: Option<Arc<dyn ServeHub>>,
    pending: Vec<Pending>,
}

fn emit_rows(out: &mut Outputs, rows: &mut Vec<GenRow>) -> Result<(), NodeError> {
    if rows.is_empty() {
        return Ok(());
    }
    let frame = generation_frame(rows)?;
    rows.clear();
    out.emit("out", frame)
}

impl LlmNode {
    fn cancelled(&self, key: u64) -> bool {
        self.hub.as_ref().is_some_and(|h| h.is_cancelled(key))
    }

    fn run_pending(&mut self, out: &mut Outputs) -> Result<(), NodeError> {
        while !self.pending.is_empty() {
            let n = self.pending.len().min(self.max_batch);
            let batch: Vec<Pending> = self.pending.drain(..n).collect();
            self.run_batch(batch, out)?;
        }
        Ok(())
    }

    /// Decodes one batch, streaming its rows.
    fn run_batch(&mut self, batch: Vec<Pending>, out: &mut Outputs) -> Result<(), NodeError> {
        let started = clock_ns();
        let (live, gone): (Vec<Pending>, Vec<Pending>) = batch.into_iter().partition(|p| !self.cancelled(p.row.key));
        let size = live.len() as u32;
        let end = |p: &PreparedRow, error: Option<String>| GenRow {
            key: p.key,
            submitted_ns: p.submitted_ns,
            kind: GenKind::End {
                queue_ns: started.saturating_sub(p.submitted_ns),
                generate_ns: clock_ns().saturating_sub(started),
                batch_size: size,
                error,
            },
        };
        let mut rows: Vec<GenRow> = gone.iter().map(|p| end(&p.row, None)).collect();
        emit_rows(out, &mut rows)?;
        if live.is_empty() {
            return Ok(());
        }
        let b = live.len();
        let prompts: Vec<Vec<u32>> = live.iter().map(|p| p.row.prompt.clone()).collect();
        let image = Tensor::stack::<3>(live.iter().map(|p| p.image.clone()).collect(), 0); // [B, T, d]
        let max_new = live.iter().map(|p| p.row.max_new_tokens).max().unwrap_or(1);
        let im_end = self.specials.im_end;
        let mut counts = vec![0usize; b];
        // rows still generating (mirrors the generator's bookkeeping, to know the last row of each step)
        let mut active = vec![true; b];
        let mut ended = vec![false; b];
        let mut failure: Option<NodeError> = None;
        let hub = self.hub.clone();
        let cancelled = |key: u64| hub.as_ref().is_some_and(|h| h.is_cancelled(key));
        let result = generate_from_image_tokens(
            &self.llm,
            &prompts,
            Some(image),
            &self.specials,
            self.span_len,
            max_new,
            &mut |event| {
                if failure.is_some() {
                    return false;
                }
                let sent = match event {
                    DecodeEvent::Token { row, id } => {
                        let last = (0..b).rev().find(|&i| active[i]);
                        counts[row] += 1;
                        let p = &live[row].row;
                        let go_on = counts[row] < p.max_new_tokens && !cancelled(p.key);
                        rows.push(GenRow { key: p.key, submitted_ns: p.submitted_ns, kind: GenKind::Token(id) });
                        if id == im_end || !go_on {
                            active[row] = false;
                            ended[row] = true;
                            rows.push(end(p, None));
                        }
                        let sent = if last == Some(row) { emit_rows(out, &mut rows) } else { Ok(()) };
                        sent.map(|_| go_on)
                    }
                    DecodeEvent::SegHidden { row, hidden } => {
                        if ended[row] {
                            return false;
                        }
                        let p = &live[row].row;
                        let d = hidden.dims()[0];
                        let seg = GenRow { key: p.key, submitted_ns: p.submitted_ns, kind: GenKind::Seg };
                        let frame = generation_frame(&[seg])
                            .and_then(|f| Ok(f.with_tensor("hidden", hidden.clone().reshape([1, d]))?)); // [1, d]
                        let go_on = !cancelled(p.key);
                        frame.and_then(|f| out.emit("out", f)).and_then(|_| {
                            if !go_on {
                                active[row] = false;
                                ended[row] = true;
                                rows.push(end(p, None));
                                emit_rows(out, &mut rows)?;
                            }
                            Ok(go_on)
                        })
                    }
                };
                sent.unwrap_or_else(|e| {
                    failure = Some(e);
                    false
                })
            },
        );
        if let Some(e) = failure {
            return Err(e);
        }
        emit_rows(out, &mut rows)?;
        let error = result.err().map(|e| format!("answering its batch of {b}: {e}"));
        let rest: Vec<GenRow> =
            live.iter().zip(&ended).filter(|(_, e)| !**e).map(|(p, _)| end(&p.row, error.clone())).collect();
        rows.extend(rest);
        emit_rows(out, &mut rows)
    }
}

impl Node for LlmNode {
    fn process(&mut self, _port: &str, frame: Frame, out: &mut Outputs) -> Result<(), NodeError> {
        let rows = read_prepared(&frame)?;
        let image: Tensor<3> = frame.tensor("image_tokens")?; // [B, T, d]
        let [_, t, d] = image.dims();
        for (i, row) in rows.into_iter().enumerate() {
            let image = image.clone().slice([i..i + 1, 0..t, 0..d]).reshape([t, d]); // [T, d]
            self.pending.push(Pending { row, image });
        }
        while self.pending.len() >= self.max_batch {
            let batch: Vec<Pending> = self.pending.drain(..self.max_batch).collect();
            self.run_batch(batch, out)?;
        }
        Ok(())
    }

    fn on_signal(&mut self, signal: &Signal, out: &mut Outputs) -> Result<(), NodeError> {
        if *signal == Signal::Flush {
            self.run_pending(out)?;
        }
        Ok(())
    }

    fn finish(&mut self, out: &mut Outputs) -> Result<(), NodeError> {
        self.run_pending(out)
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
