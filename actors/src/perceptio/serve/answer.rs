//! `perceptio-answer`: answers serving requests with a trained Perceptio model. It batches: requests gather until
//! it holds `max_batch` of them or a `Flush` arrives (the ingress sends one per batch window), and each batch runs
//! through the whole [`Predictor`] at once (this one node is encoder, LLM, router and both heads). Tokens leave as
//! event frames after every decode step; masks, depth maps and the final answers after the batch's generation.
//!
//! A request whose image cannot be decoded, whose prompt is too long, or that asks for more than
//! `max_new_tokens` fails alone: an error record with its id on `errors`, while the rest of its batch runs.
//! Requests cancelled while queued are skipped; cancelled while generating, their row stops at the next token.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use perceptio_models::perceptio::predict::{AskOptions, PredictEvent, Predictor, Query};
use perceptio_runtime::node::error_port_schema;
use perceptio_runtime::schemas::PortSchema;
use perceptio_runtime::{
    BuildContext, ERROR_PORT, Frame, Node, NodeError, NodeImpl, NodeKind, NodePorts, Outputs, ParamError, PortContext,
    PortDecl, Signal, parse_params,
};
use schemars::JsonSchema;
use serde::Deserialize;

use super::requests::request_port_schema;
use super::{
    ImageInput, RequestRow, ServeAnswer, ServeEvent, ServeHub, ServeTimings, clock_ns, event_frame, event_schema,
    read_requests,
};

/// Params of `perceptio-answer`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PerceptioAnswerParams {
    /// The model directory (as `perceptio init-model` or training writes it).
    pub model: PathBuf,
    /// Most requests answered together.
    #[serde(default = "default_batch")]
    pub max_batch: usize,
    /// Most tokens a request may ask for; a request asking for more fails.
    #[serde(default = "default_max_new")]
    pub max_new_tokens: usize,
}

fn default_batch() -> usize {
    8
}
fn default_max_new() -> usize {
    512
}

fn checked(params: &serde_json::Value) -> Result<PerceptioAnswerParams, ParamError> {
    let p: PerceptioAnswerParams = parse_params(params)?;
    if p.max_batch == 0 || p.max_batch > 1024 {
        return Err(ParamError::new("max_batch", "must be between 1 and 1024"));
    }
    if p.max_new_tokens == 0 {
        return Err(ParamError::new("max_new_tokens", "must be at least 1"));
    }
    Ok(p)
}

/// The ports of event frames (producer and consumer alike).
pub fn event_port_schema() -> PortSchema {
    PortSchema::from_arrow(&event_schema())
}

/// The `perceptio-answer` kind. With a hub it stops work on cancelled requests; without one (the global
/// registry) it answers every request it receives.
pub struct PerceptioAnswerKind {
    pub hub: Option<Arc<dyn ServeHub>>,
}

impl NodeKind for PerceptioAnswerKind {
    fn name(&self) -> &'static str {
        "perceptio-answer"
    }

    fn about(&self) -> &'static str {
        "serving: batch requests and answer them with a Perceptio model; streams token, mask, depth, done events"
    }

    fn params_schema(&self) -> schemars::schema::RootSchema {
        schemars::schema_for!(PerceptioAnswerParams)
    }

    fn ports(&self, ctx: &PortContext<'_>) -> Result<NodePorts, ParamError> {
        checked(ctx.params)?;
        Ok(NodePorts {
            inputs: vec![PortDecl::required("in", request_port_schema())],
            outputs: vec![
                PortDecl::required("out", event_port_schema()),
                PortDecl::required(ERROR_PORT, error_port_schema()),
            ],
        })
    }

    fn build(&self, ctx: &BuildContext<'_>) -> Result<NodeImpl, ParamError> {
        let p = checked(ctx.params)?;
        let predictor = Predictor::load(&p.model, &ctx.device)
            .map_err(|e| ParamError::new("model", format!("{}: {e}", p.model.display())))?;
        Ok(NodeImpl::Node(Box::new(AnswerNode {
            predictor,
            max_batch: p.max_batch,
            max_new_tokens: p.max_new_tokens,
            hub: self.hub.clone(),
            pending: Vec::new(),
        })))
    }
}

/// A checked request waiting for its batch.
struct Pending {
    key: u64,
    query: Query,
    max_new: usize,
    submitted_ns: u64,
}

struct AnswerNode {
    predictor: Predictor,
    max_batch: usize,
    max_new_tokens: usize,
    hub: Option<Arc<dyn ServeHub>>,
    pending: Vec<Pending>,
}

/// A query from a request's image and question; the error is the request's failure message.
pub fn query_of(image: ImageInput, question: String) -> Result<Query, String> {
    match image {
        ImageInput::Png(bytes) => Query::from_png(&bytes, question).map_err(|e| e.to_string()),
        ImageInput::Rgb8 { width, height, pixels } => {
            if width == 0 || height == 0 {
                return Err(format!("image: empty image ({width}x{height})"));
            }
            let plane = width.checked_mul(height).filter(|n| n.checked_mul(3) == Some(pixels.len()));
            let Some(plane) = plane else {
                return Err(format!("image: {} bytes for a {width}x{height} RGB image", pixels.len()));
            };
            let mut rgb = vec![0f32; 3 * plane];
            for (i, px) in pixels.chunks_exact(3).enumerate() {
                for c in 0..3 {
                    rgb[c * plane + i] = px[c] as f32 / 255.0;
                }
            }
            Ok(Query { rgb, height, width, question })
        }
    }
}

fn cancelled(hub: &Option<Arc<dyn ServeHub>>, key: u64) -> bool {
    hub.as_ref().is_some_and(|h| h.is_cancelled(key))
}

/// Emits buffered events as one frame and clears the buffer.
fn emit_events(out: &mut Outputs, events: &mut Vec<(u64, ServeEvent)>) -> Result<(), NodeError> {
    if events.is_empty() {
        return Ok(());
    }
    let frame = event_frame(events)?;
    events.clear();
    out.emit("out", frame)
}

fn since(start_ns: u64, end_ns: u64) -> Duration {
    Duration::from_nanos(end_ns.saturating_sub(start_ns))
}

impl AnswerNode {
    /// Checks one request row; `Err` is `(id, reason)` for an error record.
    fn admit(&self, row: RequestRow) -> Result<Pending, (String, String)> {
        let fail = |m: String| (row.id.clone(), m);
        let key: u64 = row.id.parse().map_err(|_| fail("the id is not a request number".into()))?;
        if row.max_new_tokens == 0 || row.max_new_tokens > self.max_new_tokens {
            return Err(fail(format!(
                "max_new_tokens {} is outside 1..={} (this server's limit)",
                row.max_new_tokens, self.max_new_tokens
            )));
        }
        let query = query_of(row.image, row.question).map_err(fail)?;
        self.predictor.check(&query).map_err(|e| fail(e.to_string()))?;
        Ok(Pending { key, query, max_new: row.max_new_tokens, submitted_ns: row.submitted_ns })
    }

    /// Runs everything pending, in batches of at most `max_batch`.
    fn run_pending(&mut self, out: &mut Outputs) -> Result<(), NodeError> {
        while !self.pending.is_empty() {
            let n = self.pending.len().min(self.max_batch);
            let batch: Vec<Pending> = self.pending.drain(..n).collect();
            self.run_batch(batch, out)?;
        }
        Ok(())
    }

    /// Answers one batch, streaming its events.
    fn run_batch(&mut self, batch: Vec<Pending>, out: &mut Outputs) -> Result<(), NodeError> {
        let hub = &self.hub;
        let live: Vec<Pending> = batch.into_iter().filter(|p| !cancelled(hub, p.key)).collect();
        if live.is_empty() {
            return Ok(());
        }
        let started_ns = clock_ns();
        let b = live.len();
        let queries: Vec<Query> = live.iter().map(|p| p.query.clone()).collect();
        let opts = AskOptions { max_new_tokens: live.iter().map(|p| p.max_new).max().unwrap_or(1) };
        let im_end = self.predictor.specials.im_end;
        let mut counts = vec![0usize; b];
        // Rows still generating: mirrors the generator's own bookkeeping, to know the last row of each step.
        let mut active = vec![true; b];
        let mut step: Vec<(u64, ServeEvent)> = Vec::new();
        let mut failure: Option<NodeError> = None;
        let result = self.predictor.answer_streaming(&queries, &opts, &mut |event| {
            if failure.is_some() {
                return false;
            }
            match event {
                PredictEvent::Token { row, id, text } => {
                    let last = (0..b).rev().find(|&i| active[i]);
                    counts[row] += 1;
                    let go_on = counts[row] < live[row].max_new && !cancelled(hub, live[row].key);
                    if id == im_end || !go_on {
                        active[row] = false;
                    }
                    step.push((live[row].key, ServeEvent::Token { text, id }));
                    if last == Some(row)
                        && let Err(e) = emit_events(out, &mut step)
                    {
                        failure = Some(e);
                        return false;
                    }
                    go_on
                }
                PredictEvent::Seg { row } => {
                    let go_on = !cancelled(hub, live[row].key);
                    if !go_on {
                        active[row] = false;
                    }
                    go_on
                }
            }
        });
        if let Some(e) = failure {
            return Err(e);
        }
        emit_events(out, &mut step)?;
        let answers = match result {
            Ok(a) => a,
            Err(e) => {
                let message = format!("answering its batch of {b}: {e}");
                let ids: Vec<String> = live.iter().map(|p| p.key.to_string()).collect();
                let reasons = vec![message; ids.len()];
                return out.reject(ids, reasons);
            }
        };
        let done_ns = clock_ns();
        let mut events = Vec::new();
        for (p, a) in live.iter().zip(answers) {
            if cancelled(hub, p.key) {
                continue;
            }
            if let Some(m) = a.mask {
                events.push((p.key, ServeEvent::Mask { probs: m.probs, size: m.size }));
            }
            if let Some(d) = a.depth {
                events.push((p.key, ServeEvent::Depth { values: d.values, size: d.size }));
            }
            let timings = ServeTimings {
                queue: since(p.submitted_ns, started_ns),
                generate: a.timings.generate,
                mask: a.timings.mask,
                depth: a.timings.depth,
                total: since(p.submitted_ns, done_ns),
            };
            let answer = ServeAnswer { text: a.text, ids: a.ids, seg: a.seg, depth_codes: a.depth_codes };
            events.push((p.key, ServeEvent::Done { answer, timings }));
        }
        emit_events(out, &mut events)
    }
}

impl Node for AnswerNode {
    fn process(&mut self, _port: &str, frame: Frame, out: &mut Outputs) -> Result<(), NodeError> {
        let (mut bad_ids, mut reasons) = (Vec::new(), Vec::new());
        for row in read_requests(&frame)? {
            match self.admit(row) {
                Ok(p) => self.pending.push(p),
                Err((id, reason)) => {
                    bad_ids.push(id);
                    reasons.push(reason);
                }
            }
        }
        if !bad_ids.is_empty() {
            out.reject(bad_ids, reasons)?;
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
