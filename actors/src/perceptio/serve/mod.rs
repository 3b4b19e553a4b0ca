//! Serving Perceptio through the graph (dataflows/serve.yaml): the model runs as one node per part, and every
//! output reaches its request's stream as soon as it exists.
//!
//! ```text
//! serve-requests -> serve-prepare -+-> serve-image-encoder -> serve-llm -> serve-router -+--------> serve-events
//!                                  |                                         seg | codes  |          ^   ^   ^
//!                                  +-----------------> serve-sam2-encoder <------+        |          |   |   |
//!                                                              |                          v          |   |   |
//!                                                      serve-mask-decoder    serve-depth-decoder ----+   |   |
//!                                                              +-----------------------------------------+   |
//!                            (serve-prepare's error records) ------------------------------------------------+
//! ```
//!
//! - `serve-requests` reads the live request channel and sends a `Flush` per batch window; `serve-prepare` checks
//!   each request (bad ones become error records) and makes the encoders' inputs.
//! - `serve-llm` batches continuously: requests join the running batch between decode steps (up to `max_batch`)
//!   and leave it when they stop. It streams tokens, `[SEG]` states and request ends. `serve-router` sends tokens
//!   to the events, `[SEG]` states to the SAM2 encoder, and each depth span to the depth decoder the moment
//!   `<d_end>` closes it.
//! - The SAM2 encoder keeps each request's image until its `[SEG]` state comes (then encodes it, or hands on the
//!   maps it encoded beside the LLM with `eager: true`) or its release (the request ended without `[SEG]`).
//! - `serve-events` delivers to each request's stream in order: tokens as decoded, the mask right after `[SEG]`,
//!   the depth map right after `<d_end>`, then `Done`.
//! - The live channel is a [`ServeHub`], implemented by the embedding runtime (`perceptio::serve::ServeRuntime`).
//!   It reaches nodes built from a file through a per-runtime registry: [`register`] with `Some(hub)` replaces the
//!   detached kinds of the global registry. Detached, `serve-requests` and `serve-events` refuse to build (there is
//!   nothing to read from or deliver to), but `perceptio validate` accepts the file.
//! - Frames are Arrow rows (requests, prepared requests, generation rows, events as [`event_schema`] rows, one per
//!   event) with tensors attached where a model part hands on activations (pixels, image tokens, SAM2 maps,
//!   `[SEG]` states), so the edges keep their row and byte budgets and the graph's metrics count requests.

pub mod encoders;
pub mod events;
pub mod heads;
pub mod llm;
pub mod prepare;
pub mod requests;
pub mod router;
pub mod sam2;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use super::common::column;
use arrow::array::{
    Array, ArrayRef, BinaryArray, BooleanArray, Float32Builder, ListArray, ListBuilder, RecordBatch, StringArray,
    UInt8Array, UInt32Array, UInt32Builder, UInt64Array,
};
use arrow::datatypes::{DataType, Field, Schema};
use perceptio_runtime::{Frame, NodeError, Registry};

/// The image of a request.
#[derive(Debug, Clone, PartialEq)]
pub enum ImageInput {
    /// PNG file bytes (decoded by the answer node; a malformed file fails that request only).
    Png(Vec<u8>),
    /// Interleaved 8-bit RGB, row-major, `3 * width * height` bytes.
    Rgb8 { width: usize, height: usize, pixels: Vec<u8> },
}

/// One request as the runtime hands it to `serve-requests`.
#[derive(Debug, Clone)]
pub struct ServeRequest {
    /// The runtime's id of the request (events are delivered by it).
    pub id: u64,
    pub image: ImageInput,
    pub question: String,
    /// Most tokens to generate for this request.
    pub max_new_tokens: usize,
    /// When it was submitted, on the [`clock_ns`] clock.
    pub submitted_ns: u64,
}

/// What a request's stream receives, in this order: tokens as they are decoded, then `Mask` (when `[SEG]` was
/// generated), `Depth` (when a complete depth span was generated), and `Done`; or `Error` at any point. `Done`
/// and `Error` end the stream.
#[derive(Debug, Clone, PartialEq)]
pub enum ServeEvent {
    /// One generated token (`text` is empty for special tokens: `[SEG]`, the depth span, `<|im_end|>`).
    Token { text: String, id: u32 },
    /// The `[SEG]` mask: probabilities in [0, 1], row-major `size x size` (see [`mask_png`]).
    Mask { probs: Vec<f32>, size: usize },
    /// The decoded depth span: normalised depth in [-1, 1] (near = -1), row-major `size x size`.
    Depth { values: Vec<f32>, size: usize },
    /// The complete answer.
    Done { answer: ServeAnswer, timings: ServeTimings },
    /// The request failed (bad image, over-long prompt, a model error, the runtime stopping).
    Error { message: String },
}

impl ServeEvent {
    /// Whether this event ends the stream.
    pub fn is_final(&self) -> bool {
        matches!(self, ServeEvent::Done { .. } | ServeEvent::Error { .. })
    }
}

/// The final answer of a request.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ServeAnswer {
    /// The text after the perception tokens.
    pub text: String,
    /// Every generated id (up to and including `<|im_end|>` when reached).
    pub ids: Vec<u32>,
    /// Whether `[SEG]` was generated.
    pub seg: bool,
    /// The code indices of the depth span (None without one).
    pub depth_codes: Option<Vec<u32>>,
    /// How many requests the LLM decoded together in this one's batch (itself included).
    pub batch_size: usize,
}

/// Where a request's time went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ServeTimings {
    /// From submission until its batch started.
    pub queue: Duration,
    /// Image encoding, prefill and decoding of its batch.
    pub generate: Duration,
    /// SAM2 encoding and mask decoding of its batch.
    pub mask: Duration,
    /// VQ-VAE decoding of its batch.
    pub depth: Duration,
    /// From submission until the answer node emitted `Done`.
    pub total: Duration,
}

/// The runtime's request channel is closed and drained: the source ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the request channel is closed")]
pub struct HubClosed;

/// The live side of a serving graph, implemented by the embedding runtime.
pub trait ServeHub: Send + Sync {
    /// Waits up to `timeout` for submitted requests and returns up to `max` of those waiting (none on timeout).
    /// `Err(HubClosed)` once the runtime stopped accepting requests and every submitted one was handed out.
    fn recv_requests(&self, timeout: Duration, max: usize) -> Result<Vec<ServeRequest>, HubClosed>;
    /// Whether the request was cancelled (or its stream dropped, or it already ended): stop working on it.
    fn is_cancelled(&self, request: u64) -> bool;
    /// Delivers one event to the request's stream (dropped when the request is gone); a final event ends it.
    fn deliver(&self, request: u64, event: ServeEvent);
}

/// Registers the serving kinds, bound to `hub` (None: the detached kinds of the global registry, for
/// validation).
pub fn register(registry: &mut Registry, hub: Option<Arc<dyn ServeHub>>) {
    registry.register(requests::ServeRequestsKind { hub: hub.clone() });
    registry.register(prepare::ServePrepareKind);
    registry.register(encoders::ServeImageEncoderKind);
    registry.register(sam2::ServeSam2EncoderKind);
    registry.register(llm::ServeLlmKind { hub: hub.clone() });
    registry.register(router::ServeRouterKind);
    registry.register(heads::ServeMaskDecoderKind);
    registry.register(heads::ServeDepthDecoderKind);
    registry.register(events::ServeEventsKind { hub });
}

/// A serving node's model directory: its config read once, the text side and weights loaded on demand, every
/// failure a `model` param error that names the directory.
pub struct ModelDir {
    pub path: std::path::PathBuf,
    pub cfg: perceptio_models::perceptio::PerceptioConfig,
}

impl ModelDir {
    pub fn open(path: &std::path::Path) -> Result<Self, perceptio_runtime::ParamError> {
        let cfg = perceptio_models::perceptio::checkpoint::read_config(path).map_err(|e| model_error(path, e))?;
        Ok(Self { path: path.to_path_buf(), cfg })
    }

    /// Tokenizer, special tokens and sequence limits.
    pub fn text(&self) -> Result<perceptio_models::perceptio::predict::TextSide, perceptio_runtime::ParamError> {
        perceptio_models::perceptio::predict::TextSide::load(&self.path, &self.cfg)
            .map_err(|e| model_error(&self.path, e))
    }

    /// One part's weights, initialised by `init` (e.g. `PerceptioConfig::init_seg`) on `device` and then loaded.
    pub fn load<M: burn::module::Module + burn_store::ModuleSnapshot>(
        &self,
        part: perceptio_models::perceptio::checkpoint::Part,
        init: impl FnOnce(
            &perceptio_models::perceptio::PerceptioConfig,
            &burn::tensor::Device,
        ) -> Result<M, perceptio_models::perceptio::ModelError>,
        device: &burn::tensor::Device,
    ) -> Result<M, perceptio_runtime::ParamError> {
        let fresh = init(&self.cfg, device).map_err(|e| model_error(&self.path, e))?;
        perceptio_models::perceptio::checkpoint::load_part(&self.path, part, fresh)
            .map_err(|e| model_error(&self.path, e))
    }
}

fn model_error(path: &std::path::Path, e: impl std::fmt::Display) -> perceptio_runtime::ParamError {
    perceptio_runtime::ParamError::new("model", format!("{}: {e}", path.display()))
}

/// The `id` column every serving frame starts with: the request number as text (read by [`request_keys`]).
pub fn id_field() -> Field {
    Field::new("id", DataType::Utf8, false)
}

/// The columns of a frame that only names requests.
pub fn id_schema() -> Schema {
    Schema::new(vec![id_field()])
}

/// Params of a serving node that loads (part of) a model directory.
#[derive(Debug, Clone, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServeModelParams {
    /// The model directory (as `perceptio init-model` or training writes it).
    pub model: std::path::PathBuf,
}

/// The request numbers of a frame's `id` column; an id that is not one fails the frame, naming its row.
pub fn request_keys(frame: &Frame) -> Result<Vec<u64>, NodeError> {
    let id = column::<StringArray>(frame.batch(), "id")?;
    (0..id.len())
        .map(|r| {
            id.value(r)
                .parse()
                .map_err(|_| NodeError::msg(format!("row {r}: id `{}` is not a request number", id.value(r))))
        })
        .collect()
}

/// The ports of event frames (producer and consumer alike).
pub fn event_port_schema() -> perceptio_runtime::schemas::PortSchema {
    perceptio_runtime::schemas::PortSchema::from_arrow(&event_schema())
}

/// Nanoseconds on a monotonic clock shared by the runtime and the nodes (zero at its first use in the process).
pub fn clock_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// The message a detached kind fails to build with.
fn detached(kind: &str) -> perceptio_runtime::ParamError {
    perceptio_runtime::ParamError::general(format!(
        "`{kind}` needs a live request channel: run this dataflow through perceptio::serve::ServeRuntime \
         (e.g. examples/http_service.rs), not `perceptio run`"
    ))
}

/// The columns of a request frame.
pub fn request_schema() -> Schema {
    Schema::new(vec![
        id_field(),
        Field::new("image", DataType::Binary, false),
        Field::new("format", DataType::Utf8, false),
        Field::new("width", DataType::UInt32, false),
        Field::new("height", DataType::UInt32, false),
        Field::new("question", DataType::Utf8, false),
        Field::new("max_new_tokens", DataType::UInt32, false),
        Field::new("submitted_ns", DataType::UInt64, false),
    ])
}

/// The image format names of the `format` column.
const PNG: &str = "png";
const RGB8: &str = "rgb8";

/// Requests as one frame ([`request_schema`]).
pub fn request_frame(requests: &[ServeRequest]) -> Result<Frame, NodeError> {
    let (format, width, height): (Vec<&str>, Vec<u32>, Vec<u32>) = requests
        .iter()
        .map(|r| match &r.image {
            ImageInput::Png(_) => (PNG, 0, 0),
            ImageInput::Rgb8 { width, height, .. } => (RGB8, *width as u32, *height as u32),
        })
        .fold((Vec::new(), Vec::new(), Vec::new()), |(mut f, mut w, mut h), (a, b, c)| {
            f.push(a);
            w.push(b);
            h.push(c);
            (f, w, h)
        });
    let bytes: Vec<&[u8]> = requests
        .iter()
        .map(|r| match &r.image {
            ImageInput::Png(b) => b.as_slice(),
            ImageInput::Rgb8 { pixels, .. } => pixels.as_slice(),
        })
        .collect();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(requests.iter().map(|r| r.id.to_string()))),
        Arc::new(BinaryArray::from_vec(bytes)),
        Arc::new(StringArray::from(format)),
        Arc::new(UInt32Array::from(width)),
        Arc::new(UInt32Array::from(height)),
        Arc::new(StringArray::from_iter_values(requests.iter().map(|r| r.question.as_str()))),
        Arc::new(UInt32Array::from_iter_values(
            requests.iter().map(|r| r.max_new_tokens.min(u32::MAX as usize) as u32),
        )),
        Arc::new(UInt64Array::from_iter_values(requests.iter().map(|r| r.submitted_ns))),
    ];
    Ok(Frame::new(RecordBatch::try_new(Arc::new(request_schema()), columns)?))
}

/// One request row read back from a frame; `Err` names the row's problem (the row fails, not the node).
#[derive(Debug, Clone, PartialEq)]
pub struct RequestRow {
    /// The `id` cell as written (for error records).
    pub id: String,
    pub image: ImageInput,
    pub question: String,
    pub max_new_tokens: usize,
    pub submitted_ns: u64,
}

/// Reads the request rows of a frame ([`request_schema`]). A missing column fails the frame.
pub fn read_requests(frame: &Frame) -> Result<Vec<RequestRow>, NodeError> {
    let b = frame.batch();
    let id = column::<StringArray>(b, "id")?;
    let image = column::<BinaryArray>(b, "image")?;
    let format = column::<StringArray>(b, "format")?;
    let width = column::<UInt32Array>(b, "width")?;
    let height = column::<UInt32Array>(b, "height")?;
    let question = column::<StringArray>(b, "question")?;
    let max_new = column::<UInt32Array>(b, "max_new_tokens")?;
    let submitted = column::<UInt64Array>(b, "submitted_ns")?;
    (0..b.num_rows())
        .map(|r| {
            let bytes = image.value(r).to_vec();
            let image = match format.value(r) {
                PNG => ImageInput::Png(bytes),
                RGB8 => {
                    ImageInput::Rgb8 { width: width.value(r) as usize, height: height.value(r) as usize, pixels: bytes }
                }
                other => return Err(NodeError::msg(format!("row {r}: unknown image format `{other}`"))),
            };
            Ok(RequestRow {
                id: id.value(r).to_string(),
                image,
                question: question.value(r).to_string(),
                max_new_tokens: max_new.value(r) as usize,
                submitted_ns: submitted.value(r),
            })
        })
        .collect()
}

/// The columns of an event frame: one row per event; the columns an event kind does not use are null.
pub fn event_schema() -> Schema {
    let list = |item: DataType| DataType::List(Arc::new(Field::new("item", item, true)));
    Schema::new(vec![
        id_field(),
        Field::new("event", DataType::Utf8, false),
        Field::new("token", DataType::UInt32, true),
        Field::new("text", DataType::Utf8, true),
        Field::new("size", DataType::UInt32, true),
        Field::new("values", list(DataType::Float32), true),
        Field::new("ids", list(DataType::UInt32), true),
        Field::new("depth_codes", list(DataType::UInt32), true),
        Field::new("seg", DataType::Boolean, true),
        Field::new("queue_ns", DataType::UInt64, true),
        Field::new("generate_ns", DataType::UInt64, true),
        Field::new("mask_ns", DataType::UInt64, true),
        Field::new("depth_ns", DataType::UInt64, true),
        Field::new("total_ns", DataType::UInt64, true),
        Field::new("batch_size", DataType::UInt32, true),
        Field::new("follows", DataType::UInt8, true),
    ])
}

/// What the graph's own nodes say about an event row beyond the [`ServeEvent`] (see [`event_frame_with`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EventExtra {
    /// On a `done` row: which events are still to come from the heads ([`FOLLOWS_MASK`], [`FOLLOWS_DEPTH`]).
    pub follows: u8,
    /// On a `mask` or `depth` row: the generated token it belongs to (`[SEG]`, `<d_end>`).
    pub token: Option<u32>,
    /// On a `mask` or `depth` row: how long the head took.
    pub decode_ns: Option<u64>,
}

/// `follows` bit: a `Mask` event for this request is on its way.
pub const FOLLOWS_MASK: u8 = 1;
/// `follows` bit: a `Depth` event for this request is on its way.
pub const FOLLOWS_DEPTH: u8 = 2;

fn ns(d: Duration) -> Option<u64> {
    Some(d.as_nanos().min(u64::MAX as u128) as u64)
}

/// Events of requests as one frame ([`event_schema`]), in order.
pub fn event_frame(events: &[(u64, ServeEvent)]) -> Result<Frame, NodeError> {
    event_frame_with(events, &vec![EventExtra::default(); events.len()])
}

/// [`event_frame`] with each row's [`EventExtra`] (`extras[i]` belongs to `events[i]`).
pub fn event_frame_with(events: &[(u64, ServeEvent)], extras: &[EventExtra]) -> Result<Frame, NodeError> {
    let n = events.len();
    if extras.len() != n {
        return Err(NodeError::msg(format!("{} event extras for {n} events", extras.len())));
    }
    let mut kind = Vec::with_capacity(n);
    let mut token = Vec::with_capacity(n);
    let mut text: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut size = Vec::with_capacity(n);
    let mut values = ListBuilder::new(Float32Builder::new());
    let mut ids = ListBuilder::new(UInt32Builder::new());
    let mut codes = ListBuilder::new(UInt32Builder::new());
    let mut seg = Vec::with_capacity(n);
    let mut times: [Vec<Option<u64>>; 5] = Default::default();
    let mut follows = Vec::with_capacity(n);
    let mut batch_size = Vec::with_capacity(n);
    for ((_, e), extra) in events.iter().zip(extras) {
        let (mut tok, mut txt, mut sz, mut vals, mut all, mut cds, mut sg, mut tm) =
            (extra.token, None, None, None, None, None, None, None);
        let decode = extra.decode_ns.map(Duration::from_nanos).unwrap_or_default();
        let name = match e {
            ServeEvent::Token { text, id } => {
                (tok, txt) = (Some(*id), Some(text.as_str()));
                "token"
            }
            ServeEvent::Mask { probs, size } => {
                (sz, vals) = (Some(*size as u32), Some(probs.as_slice()));
                if extra.decode_ns.is_some() {
                    tm = Some([Duration::ZERO, Duration::ZERO, decode, Duration::ZERO, Duration::ZERO]);
                }
                "mask"
            }
            ServeEvent::Depth { values, size } => {
                (sz, vals) = (Some(*size as u32), Some(values.as_slice()));
                if extra.decode_ns.is_some() {
                    tm = Some([Duration::ZERO, Duration::ZERO, Duration::ZERO, decode, Duration::ZERO]);
                }
                "depth"
            }
            ServeEvent::Done { answer, timings: t } => {
                (txt, all, cds, sg) = (
                    Some(answer.text.as_str()),
                    Some(answer.ids.as_slice()),
                    answer.depth_codes.as_deref(),
                    Some(answer.seg),
                );
                tm = Some([t.queue, t.generate, t.mask, t.depth, t.total]);
                "done"
            }
            ServeEvent::Error { message } => {
                txt = Some(message.as_str());
                "error"
            }
        };
        kind.push(name);
        follows.push((extra.follows != 0).then_some(extra.follows));
        batch_size.push(match e {
            ServeEvent::Done { answer, .. } => Some(answer.batch_size.min(u32::MAX as usize) as u32),
            _ => None,
        });
        token.push(tok);
        text.push(txt);
        size.push(sz);
        seg.push(sg);
        match vals {
            Some(v) => {
                values.values().append_slice(v);
                values.append(true);
            }
            None => values.append_null(),
        }
        for (builder, list) in [(&mut ids, all), (&mut codes, cds)] {
            match list {
                Some(v) => {
                    builder.values().append_slice(v);
                    builder.append(true);
                }
                None => builder.append_null(),
            }
        }
        for (k, column) in times.iter_mut().enumerate() {
            column.push(tm.and_then(|t| ns(t[k])));
        }
    }
    let [queue, generate, mask, depth, total] = times;
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(events.iter().map(|(id, _)| id.to_string()))),
        Arc::new(StringArray::from(kind)),
        Arc::new(UInt32Array::from(token)),
        Arc::new(StringArray::from(text)),
        Arc::new(UInt32Array::from(size)),
        Arc::new(values.finish()),
        Arc::new(ids.finish()),
        Arc::new(codes.finish()),
        Arc::new(BooleanArray::from(seg)),
        Arc::new(UInt64Array::from(queue)),
        Arc::new(UInt64Array::from(generate)),
        Arc::new(UInt64Array::from(mask)),
        Arc::new(UInt64Array::from(depth)),
        Arc::new(UInt64Array::from(total)),
        Arc::new(UInt32Array::from(batch_size)),
        Arc::new(UInt8Array::from(follows)),
    ];
    Ok(Frame::new(RecordBatch::try_new(Arc::new(event_schema()), columns)?))
}

fn list_values<T: arrow::datatypes::ArrowPrimitiveType>(
    list: &ListArray,
    row: usize,
    name: &str,
) -> Result<Option<Vec<T::Native>>, NodeError> {
    if list.is_null(row) {
        return Ok(None);
    }
    let v = list.value(row);
    let v = v
        .as_any()
        .downcast_ref::<arrow::array::PrimitiveArray<T>>()
        .ok_or_else(|| NodeError::msg(format!("column `{name}` has the wrong item type")))?;
    Ok(Some(v.values().to_vec()))
}

/// Reads the events of a frame ([`event_schema`]) back, with their request ids. A malformed frame (a missing
/// column, a row without the cells its kind needs, an id that is not a number) fails, naming the row.
pub fn read_events(frame: &Frame) -> Result<Vec<(u64, ServeEvent)>, NodeError> {
    use arrow::datatypes::{Float32Type, UInt32Type};
    let b = frame.batch();
    let id = column::<StringArray>(b, "id")?;
    let kind = column::<StringArray>(b, "event")?;
    let token = column::<UInt32Array>(b, "token")?;
    let text = column::<StringArray>(b, "text")?;
    let size = column::<UInt32Array>(b, "size")?;
    let values = column::<ListArray>(b, "values")?;
    let ids = column::<ListArray>(b, "ids")?;
    let codes = column::<ListArray>(b, "depth_codes")?;
    let seg = column::<BooleanArray>(b, "seg")?;
    let batch_size = column::<UInt32Array>(b, "batch_size")?;
    let times: Vec<&UInt64Array> = ["queue_ns", "generate_ns", "mask_ns", "depth_ns", "total_ns"]
        .iter()
        .map(|n| column::<UInt64Array>(b, n))
        .collect::<Result<_, _>>()?;
    let mut out = Vec::with_capacity(b.num_rows());
    for r in 0..b.num_rows() {
        let bad = |what: &str| NodeError::msg(format!("event row {r} (request {}): {what}", id.value(r)));
        let request: u64 = id.value(r).parse().map_err(|_| bad("the id is not a request number"))?;
        let text_of = || (!text.is_null(r)).then(|| text.value(r).to_string());
        let size_of = || (!size.is_null(r)).then(|| size.value(r) as usize).ok_or_else(|| bad("no size"));
        let event = match kind.value(r) {
            "token" => ServeEvent::Token {
                text: text_of().unwrap_or_default(),
                id: (!token.is_null(r)).then(|| token.value(r)).ok_or_else(|| bad("no token"))?,
            },
            "mask" => ServeEvent::Mask {
                probs: list_values::<Float32Type>(values, r, "values")?.ok_or_else(|| bad("no values"))?,
                size: size_of()?,
            },
            "depth" => ServeEvent::Depth {
                values: list_values::<Float32Type>(values, r, "values")?.ok_or_else(|| bad("no values"))?,
                size: size_of()?,
            },
            "done" => {
                let t = |k: usize| Duration::from_nanos(if times[k].is_null(r) { 0 } else { times[k].value(r) });
                ServeEvent::Done {
                    answer: ServeAnswer {
                        text: text_of().unwrap_or_default(),
                        ids: list_values::<UInt32Type>(ids, r, "ids")?.unwrap_or_default(),
                        seg: !seg.is_null(r) && seg.value(r),
                        depth_codes: list_values::<UInt32Type>(codes, r, "depth_codes")?,
                        batch_size: if batch_size.is_null(r) { 0 } else { batch_size.value(r) as usize },
                    },
                    timings: ServeTimings { queue: t(0), generate: t(1), mask: t(2), depth: t(3), total: t(4) },
                }
            }
            "error" => ServeEvent::Error { message: text_of().unwrap_or_default() },
            other => return Err(bad(&format!("unknown event `{other}`"))),
        };
        out.push((request, event));
    }
    Ok(out)
}

/// The [`EventExtra`] of each row of an event frame (in row order).
pub fn read_event_extras(frame: &Frame) -> Result<Vec<EventExtra>, NodeError> {
    let b = frame.batch();
    let kind = column::<StringArray>(b, "event")?;
    let token = column::<UInt32Array>(b, "token")?;
    let follows = column::<UInt8Array>(b, "follows")?;
    let mask = column::<UInt64Array>(b, "mask_ns")?;
    let depth = column::<UInt64Array>(b, "depth_ns")?;
    let opt32 = |a: &UInt32Array, r: usize| (!a.is_null(r)).then(|| a.value(r));
    let opt64 = |a: &UInt64Array, r: usize| (!a.is_null(r)).then(|| a.value(r));
    Ok((0..b.num_rows())
        .map(|r| EventExtra {
            follows: if follows.is_null(r) { 0 } else { follows.value(r) },
            token: match kind.value(r) {
                "mask" | "depth" => opt32(token, r),
                _ => None,
            },
            decode_ns: match kind.value(r) {
                "mask" => opt64(mask, r),
                "depth" => opt64(depth, r),
                _ => None,
            },
        })
        .collect())
}

/// A mask as an 8-bit grayscale PNG (probability 1 = white).
pub fn mask_png(probs: &[f32], size: usize) -> Result<Vec<u8>, String> {
    if probs.len() != size * size {
        return Err(format!("{} mask values for a {size}x{size} mask", probs.len()));
    }
    let pixels: Vec<u8> = probs.iter().map(|p| (p.clamp(0.0, 1.0) * 255.0).round() as u8).collect();
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, size as u32, size as u32);
        encoder.set_color(png::ColorType::Grayscale);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().map_err(|e| e.to_string())?;
        writer.write_image_data(&pixels).map_err(|e| e.to_string())?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_through_a_frame() {
        let events = vec![
            (3, ServeEvent::Token { text: "red".into(), id: 17 }),
            (4, ServeEvent::Token { text: String::new(), id: 2 }),
            (3, ServeEvent::Mask { probs: vec![0.0, 0.25, 0.5, 1.0], size: 2 }),
            (3, ServeEvent::Depth { values: vec![-1.0, 0.5, 0.25, 1.0], size: 2 }),
            (
                3,
                ServeEvent::Done {
                    answer: ServeAnswer {
                        text: "It is red.".into(),
                        ids: vec![17, 2],
                        seg: true,
                        depth_codes: Some(vec![1, 2]),
                        batch_size: 3,
                    },
                    timings: ServeTimings {
                        queue: Duration::from_nanos(5),
                        generate: Duration::from_millis(7),
                        mask: Duration::from_micros(3),
                        depth: Duration::ZERO,
                        total: Duration::from_secs(1),
                    },
                },
            ),
            (4, ServeEvent::Done { answer: ServeAnswer::default(), timings: ServeTimings::default() }),
            (5, ServeEvent::Error { message: "image: not a PNG".into() }),
        ];
        let frame = event_frame(&events).unwrap();
        assert_eq!(frame.rows(), 7);
        assert_eq!(read_events(&frame).unwrap(), events);
    }

    #[test]
    fn requests_round_trip_through_a_frame() {
        let reqs = vec![
            ServeRequest {
                id: 9,
                image: ImageInput::Png(vec![1, 2, 3]),
                question: "where?".into(),
                max_new_tokens: 8,
                submitted_ns: 11,
            },
            ServeRequest {
                id: 10,
                image: ImageInput::Rgb8 { width: 1, height: 2, pixels: vec![0; 6] },
                question: String::new(),
                max_new_tokens: 1,
                submitted_ns: 12,
            },
        ];
        let rows = read_requests(&request_frame(&reqs).unwrap()).unwrap();
        assert_eq!(rows.len(), 2);
        for (row, req) in rows.iter().zip(&reqs) {
            assert_eq!(row.id, req.id.to_string());
            assert_eq!(row.image, req.image);
            assert_eq!(
                (row.question.as_str(), row.max_new_tokens, row.submitted_ns),
                (req.question.as_str(), req.max_new_tokens, req.submitted_ns)
            );
        }
    }

    #[test]
    fn a_malformed_event_row_names_its_request() {
        let frame = event_frame(&[(7, ServeEvent::Token { text: "a".into(), id: 1 })]).unwrap();
        let batch = frame.batch();
        let mut cols = batch.columns().to_vec();
        cols[1] = Arc::new(StringArray::from(vec!["mask"]));
        let bad = Frame::new(RecordBatch::try_new(batch.schema(), cols).unwrap());
        let err = read_events(&bad).unwrap_err().to_string();
        assert!(err.contains("request 7") && err.contains("no values"), "{err}");
    }

    #[test]
    fn masks_encode_as_grayscale_png() {
        let png = mask_png(&[0.0, 1.0, 0.5, 0.2], 2).unwrap();
        let img = perceptio_models::internvl::decode_png_rgb(&png).unwrap();
        assert_eq!((img.width, img.height), (2, 2));
        assert_eq!(img.data.chunks_exact(3).map(|p| p[0]).collect::<Vec<_>>(), vec![0, 255, 128, 51]);
        assert!(mask_png(&[0.0; 3], 2).is_err());
    }
}
