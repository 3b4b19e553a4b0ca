//! `serve-requests`: the ingress of a serving graph. Reads the runtime's request channel and emits the requests
//! as soon as they arrive (one frame per burst, [`request_schema`](super::request_schema) rows), then a `Flush`
//! signal once `batch_window_ms` has passed since the first request after the previous flush: the answer node
//! runs what it holds at a flush (or as soon as it holds a full batch). Ends when the runtime closes the channel.

use std::sync::Arc;
use std::time::{Duration, Instant};

use perceptio_runtime::schemas::PortSchema;
use perceptio_runtime::{
    BuildContext, NodeError, NodeImpl, NodeKind, NodePorts, Outputs, ParamError, PortContext, PortDecl, Signal, Source,
    SourceState, parse_params,
};
use schemars::JsonSchema;
use serde::Deserialize;

use super::{ServeHub, detached, request_frame, request_schema};

/// Params of `serve-requests`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServeRequestsParams {
    /// How long requests may gather before the answer node is told to run what it holds (milliseconds).
    #[serde(default = "default_window")]
    pub batch_window_ms: u64,
    /// Most requests in one frame.
    #[serde(default = "default_rows")]
    pub max_rows: usize,
}

fn default_window() -> u64 {
    5
}
fn default_rows() -> usize {
    64
}

fn checked(params: &serde_json::Value) -> Result<ServeRequestsParams, ParamError> {
    let p: ServeRequestsParams = parse_params(params)?;
    if p.max_rows == 0 {
        return Err(ParamError::new("max_rows", "must be at least 1"));
    }
    if p.batch_window_ms > 60_000 {
        return Err(ParamError::new("batch_window_ms", "must be at most 60000 (a minute)"));
    }
    Ok(p)
}

/// The ports of request frames (producer and consumer alike).
pub fn request_port_schema() -> PortSchema {
    PortSchema::from_arrow(&request_schema())
}

/// The `serve-requests` kind; `hub: None` is the detached kind of the global registry (it does not build).
pub struct ServeRequestsKind {
    pub hub: Option<Arc<dyn ServeHub>>,
}

impl NodeKind for ServeRequestsKind {
    fn name(&self) -> &'static str {
        "serve-requests"
    }

    fn about(&self) -> &'static str {
        "serving ingress: requests submitted to the embedding runtime, as frames, with a Flush per batch window"
    }

    fn params_schema(&self) -> schemars::schema::RootSchema {
        schemars::schema_for!(ServeRequestsParams)
    }

    fn ports(&self, ctx: &PortContext<'_>) -> Result<NodePorts, ParamError> {
        checked(ctx.params)?;
        Ok(NodePorts { inputs: vec![], outputs: vec![PortDecl::required("out", request_port_schema())] })
    }

    fn build(&self, ctx: &BuildContext<'_>) -> Result<NodeImpl, ParamError> {
        let p = checked(ctx.params)?;
        let hub = self.hub.clone().ok_or_else(|| detached(self.name()))?;
        Ok(NodeImpl::Source(Box::new(RequestsSource {
            hub,
            window: Duration::from_millis(p.batch_window_ms),
            max_rows: p.max_rows,
            unflushed_since: None,
        })))
    }
}

/// How long one wait on the channel lasts at most (the engine checks for drain and cancel between calls).
const POLL: Duration = Duration::from_millis(20);

struct RequestsSource {
    hub: Arc<dyn ServeHub>,
    window: Duration,
    max_rows: usize,
    /// When the first request after the last `Flush` was emitted.
    unflushed_since: Option<Instant>,
}

impl Source for RequestsSource {
    fn next(&mut self, out: &mut Outputs) -> Result<SourceState, NodeError> {
        let timeout = match self.unflushed_since {
            Some(t) => self.window.saturating_sub(t.elapsed()).min(POLL),
            None => POLL,
        };
        match self.hub.recv_requests(timeout, self.max_rows) {
            Err(_closed) => return Ok(SourceState::Done),
            Ok(requests) if !requests.is_empty() => {
                out.count_read(requests.len());
                out.emit("out", request_frame(&requests)?)?;
                self.unflushed_since.get_or_insert_with(Instant::now);
            }
            Ok(_) => {}
        }
        if self.unflushed_since.is_some_and(|t| t.elapsed() >= self.window) {
            out.signal(Signal::Flush)?;
            self.unflushed_since = None;
        }
        Ok(SourceState::More)
    }
}
