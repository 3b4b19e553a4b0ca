//! `serve-router`: the serving graph's token router. Reads the LLM's generation stream and hands each output to
//! its consumer as soon as it exists: every token as a `Token` event (text decoded) on `out`; each `[SEG]` hidden
//! state to the mask decoder on `seg`; a depth span's codes to the depth decoder on `codes` the moment `<d_end>`
//! closes it with exactly N codes; and, when a request ends, its `Done` event on `out`, marked with the head
//! events still to come (the events node holds it until they arrive). A request that ended without `[SEG]` gets a
//! release row on `seg` (`seg` = false), so the mask decoder drops the SAM2 features it keeps for it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, BooleanArray, ListBuilder, RecordBatch, StringArray, UInt32Builder};
use arrow::datatypes::{DataType, Field, Schema};
use burn::prelude::*;
use perceptio_models::perceptio::predict::TextSide;
use perceptio_models::perceptio::sequence::parse_answer;
use perceptio_runtime::schemas::PortSchema;
use perceptio_runtime::{
    BuildContext, Frame, Node, NodeError, NodeImpl, NodeKind, NodePorts, Outputs, ParamError, PortContext, PortDecl,
    parse_params,
};

use super::event_port_schema;
use super::llm::{GenKind, generation_port_schema, read_generation};
use super::{
    EventExtra, FOLLOWS_DEPTH, FOLLOWS_MASK, ModelDir, ServeAnswer, ServeEvent, ServeModelParams, ServeTimings,
    clock_ns, event_frame_with, id_field,
};

/// The columns of the `seg` output: a request and whether this row carries its `[SEG]` state (frames of such
/// rows carry `hidden` `[n, d]` and, when the prompts hold an image, `image_hidden` `[n, T, d]`) or releases it
/// (`seg` = false: it ended without one).
pub fn seg_request_schema() -> Schema {
    Schema::new(vec![id_field(), Field::new("seg", DataType::Boolean, false)])
}

/// The columns of the `codes` output: a request and the N code indices of its depth span.
pub fn codes_schema() -> Schema {
    let list = DataType::List(Arc::new(Field::new("item", DataType::UInt32, true)));
    Schema::new(vec![id_field(), Field::new("codes", list, false)])
}

pub struct ServeRouterKind;

impl NodeKind for ServeRouterKind {
    fn name(&self) -> &'static str {
        "serve-router"
    }

    fn about(&self) -> &'static str {
        "serving: route generated tokens: text -> token events, [SEG] states -> `seg`, closed depth spans -> `codes`"
    }

    fn params_schema(&self) -> schemars::schema::RootSchema {
        schemars::schema_for!(ServeModelParams)
    }

    fn ports(&self, ctx: &PortContext<'_>) -> Result<NodePorts, ParamError> {
        let _: ServeModelParams = parse_params(ctx.params)?;
        Ok(NodePorts {
            inputs: vec![PortDecl::required("in", generation_port_schema())],
            outputs: vec![
                PortDecl::required("out", event_port_schema()),
                PortDecl::required("seg", PortSchema::from_arrow(&seg_request_schema())),
                PortDecl::required("codes", PortSchema::from_arrow(&codes_schema())),
            ],
        })
    }

    fn build(&self, ctx: &BuildContext<'_>) -> Result<NodeImpl, ParamError> {
        let p: ServeModelParams = parse_params(ctx.params)?;
        let text = ModelDir::open(&p.model)?.text()?;
        Ok(NodeImpl::Node(Box::new(RouterNode { text, requests: HashMap::new() })))
    }
}

/// What the router knows of a request that is generating.
#[derive(Default)]
struct Generating {
    ids: Vec<u32>,
    seg_sent: bool,
    codes_sent: bool,
}

struct RouterNode {
    text: TextSide,
    requests: HashMap<u64, Generating>,
}

fn codes_frame(rows: &[(u64, Vec<u32>)]) -> Result<Frame, NodeError> {
    let mut codes = ListBuilder::new(UInt32Builder::new());
    for (_, c) in rows {
        codes.values().append_slice(c);
        codes.append(true);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(rows.iter().map(|(k, _)| k.to_string()))),
        Arc::new(codes.finish()),
    ];
    Ok(Frame::new(RecordBatch::try_new(Arc::new(codes_schema()), columns)?))
}

fn seg_frame(keys: &[u64], seg: bool) -> Result<Frame, NodeError> {
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(keys.iter().map(u64::to_string))),
        Arc::new(BooleanArray::from(vec![seg; keys.len()])),
    ];
    Ok(Frame::new(RecordBatch::try_new(Arc::new(seg_request_schema()), columns)?))
}

impl Node for RouterNode {
    fn process(&mut self, _port: &str, frame: Frame, out: &mut Outputs) -> Result<(), NodeError> {
        let rows = read_generation(&frame)?;
        let (mut events, mut extras) = (Vec::new(), Vec::new());
        let (mut seg_keys, mut released, mut spans) = (Vec::new(), Vec::new(), Vec::new());
        for row in rows {
            let key = row.key;
            match row.kind {
                GenKind::Token(id) => {
                    let r = self.requests.entry(key).or_default();
                    r.ids.push(id);
                    if id == self.text.specials.d_end && !r.codes_sent {
                        // the span just closed: on with its codes when it holds exactly N
                        let parsed = parse_answer(&self.text.tokenizer, &self.text.specials, &r.ids);
                        if let Some(codes) = parsed.codes.filter(|c| c.len() == self.text.sequence.span_len) {
                            r.codes_sent = true;
                            spans.push((key, codes));
                        }
                    }
                    events.push((key, ServeEvent::Token { text: self.text.piece(id), id }));
                    extras.push(EventExtra::default());
                }
                GenKind::Seg => {
                    let r = self.requests.entry(key).or_default();
                    if r.seg_sent {
                        return Err(NodeError::msg(format!("request {key}: a second [SEG] state")));
                    }
                    r.seg_sent = true;
                    seg_keys.push(key);
                }
                GenKind::End { queue_ns, generate_ns, batch_size, error } => {
                    let r = self.requests.remove(&key).unwrap_or_default();
                    if !r.seg_sent {
                        released.push(key);
                    }
                    if let Some(message) = error {
                        events.push((key, ServeEvent::Error { message }));
                        extras.push(EventExtra::default());
                        continue;
                    }
                    let parsed = parse_answer(&self.text.tokenizer, &self.text.specials, &r.ids);
                    let follows =
                        if r.seg_sent { FOLLOWS_MASK } else { 0 } | if r.codes_sent { FOLLOWS_DEPTH } else { 0 };
                    let timings = ServeTimings {
                        queue: Duration::from_nanos(queue_ns),
                        generate: Duration::from_nanos(generate_ns),
                        mask: Duration::ZERO,
                        depth: Duration::ZERO,
                        total: Duration::from_nanos(clock_ns().saturating_sub(row.submitted_ns)),
                    };
                    let answer = ServeAnswer {
                        text: parsed.text,
                        ids: r.ids,
                        seg: parsed.seg.is_some(),
                        depth_codes: parsed.codes,
                        batch_size: batch_size as usize,
                    };
                    events.push((key, ServeEvent::Done { answer, timings }));
                    extras.push(EventExtra { follows, ..EventExtra::default() });
                }
            }
        }
        // the heads first: their work overlaps with the delivery of the events
        if !seg_keys.is_empty() {
            let hidden: Tensor<2> = frame.tensor("hidden")?; // [n, d]
            if hidden.dims()[0] != seg_keys.len() {
                return Err(NodeError::msg(format!(
                    "a seg frame with {} rows carries {} hidden states",
                    seg_keys.len(),
                    hidden.dims()[0]
                )));
            }
            let mut f = seg_frame(&seg_keys, true)?.with_tensor("hidden", hidden)?;
            if let Some(image) = frame.optional_tensor::<Tensor<3>>("image_hidden")? {
                f = f.with_tensor("image_hidden", image)?; // [n, T, d]
            }
            out.emit("seg", f)?;
        }
        if !released.is_empty() {
            out.emit("seg", seg_frame(&released, false)?)?;
        }
        if !spans.is_empty() {
            out.emit("codes", codes_frame(&spans)?)?;
        }
        if !events.is_empty() {
            out.emit("out", event_frame_with(&events, &extras)?)?;
        }
        Ok(())
    }
}
