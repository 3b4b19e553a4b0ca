//! The embedded serving runtime: runs a serving dataflow (dataflows/serve.yaml, or one of your own with the same
//! node kinds) and hands out a stream of [`Event`]s per submitted request.
//!
//! ```no_run
//! # async fn demo(png: Vec<u8>) -> Result<(), Box<dyn std::error::Error>> {
//! use perceptio::serve::{Event, ImageInput, ServeConfig, ServeRuntime, SubmitOptions};
//! let runtime = ServeRuntime::new("runs/demo/model-init", ServeConfig::default()).await?;
//! let mut request = runtime.submit(ImageInput::Png(png), "where is the red cube?", SubmitOptions::default()).await?;
//! while let Some(event) = request.next().await {
//!     match event {
//!         Event::Token { text, .. } => print!("{text}"),
//!         Event::Done { answer, timings } => println!("\n{} ({:?})", answer.text, timings.total),
//!         Event::Error { message } => eprintln!("failed: {message}"),
//!         Event::Mask { .. } | Event::Depth { .. } => {}
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! - In flight: at most `max_in_flight` requests are open (submitted and not yet done, failed or cancelled).
//!   Beyond that `submit` waits for a slot ([`WhenFull::Wait`]) or fails with [`SubmitError::Busy`]
//!   ([`WhenFull::Reject`]). Cancelling a request, or dropping its handle, frees its slot at once.
//! - Batching: the LLM node decodes up to `max_batch` requests together, continuously: a request joins the running
//!   batch at the next decode step and leaves it when it stops. When nothing runs, requests that arrive within
//!   `batch_window_ms` of each other start together (or as soon as `max_batch` wait).
//! - Events: `Token` as decoded; `Mask` right after the `[SEG]` token (the SAM2 encoder encodes the request's
//!   image when its `[SEG]` state arrives, or beside the LLM with `eager: true`, then the mask decoder runs);
//!   `Depth` right after `<d_end>` closes the span; then `Done` with the answer and
//!   timings (`mask` and `depth` are the heads' decode times). A malformed image, an over-long prompt or a
//!   model failure ends that request with `Error`; the others go on.
//! - The model runs on the graph's own threads, never on the async runtime's workers.

mod hub;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use perceptio_actors::perceptio::serve::{self as nodes, ServeHub, ServeRequest, clock_ns};
use perceptio_runtime::spec::ValidationErrors;
use perceptio_runtime::{Graph, RunError, RunOptions, RunResult};
use tokio::sync::{TryAcquireError, mpsc};

pub use nodes::{ImageInput, ServeAnswer as Answer, ServeEvent as Event, ServeTimings as Timings, mask_png};

use hub::{Hub, OpenError};

/// The shipped serving dataflow (dataflows/serve.yaml), used by [`ServeRuntime::new`].
pub const SERVE_YAML: &str = include_str!("../../dataflows/serve.yaml");

/// What `submit` does when `max_in_flight` requests are open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WhenFull {
    /// Wait (asynchronously) for a slot.
    #[default]
    Wait,
    /// Fail at once with [`SubmitError::Busy`].
    Reject,
}

/// How a runtime serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeConfig {
    /// Most requests open at once.
    pub max_in_flight: usize,
    /// Most requests answered together (fills `${PERCEPTIO_MAX_BATCH}` in the dataflow).
    pub max_batch: usize,
    /// How long requests may gather into a batch, in milliseconds (fills `${PERCEPTIO_BATCH_WINDOW_MS}`).
    pub batch_window_ms: u64,
    pub when_full: WhenFull,
    /// `cpu`, `wgpu`, `wgpu:N` or `cuda:N` (fills `${PERCEPTIO_DEVICE}`).
    pub device: String,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self { max_in_flight: 64, max_batch: 8, batch_window_ms: 5, when_full: WhenFull::Wait, device: "cpu".into() }
    }
}

/// Per-request options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubmitOptions {
    /// Most tokens to generate (a full answer is `[SEG]` + the depth span + text).
    pub max_new_tokens: usize,
}

impl Default for SubmitOptions {
    fn default() -> Self {
        Self { max_new_tokens: 160 }
    }
}

/// Why a runtime could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("serve config: {field}: {message}")]
    Config { field: &'static str, message: String },
    #[error("{path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Dataflow(#[from] ValidationErrors),
    #[error("{file}: not a serving dataflow: it has no `{kind}` node")]
    NotServing { file: String, kind: &'static str },
    #[error(transparent)]
    Start(#[from] RunError),
}

/// Why a request was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error("busy: {max_in_flight} requests in flight")]
    Busy { max_in_flight: usize },
    #[error("the runtime stopped: {0}")]
    Stopped(String),
}

/// A running serving graph.
pub struct ServeRuntime {
    hub: Arc<Hub>,
    config: ServeConfig,
    /// Ends with the graph's run; stops the hub on the way.
    watcher: Option<tokio::task::JoinHandle<RunResult>>,
}

impl ServeRuntime {
    /// Serves the model directory `model_dir` with the shipped dataflows/serve.yaml. Loads the model before it
    /// returns (a bad model directory is an error here). Call inside a tokio runtime.
    pub async fn new(model_dir: impl AsRef<Path>, config: ServeConfig) -> Result<Self, ServeError> {
        let model = model_dir.as_ref().display().to_string();
        Self::start("dataflows/serve.yaml", SERVE_YAML, config, Some(model)).await
    }

    /// Serves a dataflow: `path_or_yaml` is a file path, or the YAML text itself when it spans several lines.
    /// `${PERCEPTIO_MAX_BATCH}`, `${PERCEPTIO_BATCH_WINDOW_MS}` and `${PERCEPTIO_DEVICE}` take `config`'s values;
    /// every other variable comes from the environment. The dataflow needs a `serve-requests` and a
    /// `serve-events` node. Call inside a tokio runtime.
    pub async fn from_dataflow(path_or_yaml: &str, config: ServeConfig) -> Result<Self, ServeError> {
        if path_or_yaml.contains('\n') {
            return Self::start("(yaml)", path_or_yaml, config, None).await;
        }
        let path = PathBuf::from(path_or_yaml);
        let text = std::fs::read_to_string(&path).map_err(|source| ServeError::Read { path: path.clone(), source })?;
        Self::start(path_or_yaml, &text, config, None).await
    }

    async fn start(file: &str, yaml: &str, config: ServeConfig, model: Option<String>) -> Result<Self, ServeError> {
        if config.max_in_flight == 0 {
            return Err(ServeError::Config { field: "max_in_flight", message: "must be at least 1".into() });
        }
        if config.max_batch == 0 {
            return Err(ServeError::Config { field: "max_batch", message: "must be at least 1".into() });
        }
        let hub = Arc::new(Hub::new(config.max_in_flight));
        let mut registry = crate::registry();
        nodes::register(&mut registry, Some(hub.clone() as Arc<dyn ServeHub>));
        let lookup = |name: &str| match name {
            "PERCEPTIO_MAX_BATCH" => Some(config.max_batch.to_string()),
            "PERCEPTIO_BATCH_WINDOW_MS" => Some(config.batch_window_ms.to_string()),
            "PERCEPTIO_DEVICE" => Some(config.device.clone()),
            "PERCEPTIO_MODEL" if model.is_some() => model.clone(),
            other => std::env::var(other).ok(),
        };
        let graph = Graph::from_yaml_with(file, yaml, &registry, &lookup)?;
        for kind in ["serve-requests", "serve-events"] {
            if !graph.validated().nodes.iter().any(|n| n.kind.name() == kind) {
                return Err(ServeError::NotServing { file: file.to_string(), kind });
            }
        }
        let handle = graph.start(RunOptions::default()).await?;
        let watched = hub.clone();
        let watcher = tokio::spawn(async move {
            let result = handle.wait().await;
            let reason = match &result {
                Ok(_) => "the serving runtime shut down".to_string(),
                Err(e) => format!("the serving graph stopped: {e}"),
            };
            watched.stop(reason);
            result
        });
        Ok(Self { hub, config, watcher: Some(watcher) })
    }

    /// The configuration this runtime serves with.
    pub fn config(&self) -> &ServeConfig {
        &self.config
    }

    /// Requests open now (submitted and not yet done, failed or cancelled).
    pub fn in_flight(&self) -> usize {
        self.hub.open_requests()
    }

    /// Submits a question about an image. Waits for a free slot or fails with [`SubmitError::Busy`] (see
    /// [`WhenFull`]); the image and the prompt are checked in the graph, and a bad one ends the request's stream
    /// with an `Error` event.
    pub async fn submit(
        &self,
        image: ImageInput,
        prompt: impl Into<String>,
        options: SubmitOptions,
    ) -> Result<RequestHandle, SubmitError> {
        let stopped = || SubmitError::Stopped(self.hub.stopped().unwrap_or_else(|| "shutting down".into()));
        let slot = match self.config.when_full {
            WhenFull::Wait => self.hub.slots.clone().acquire_owned().await.map_err(|_| stopped())?,
            WhenFull::Reject => self.hub.slots.clone().try_acquire_owned().map_err(|e| match e {
                TryAcquireError::NoPermits => SubmitError::Busy { max_in_flight: self.config.max_in_flight },
                TryAcquireError::Closed => stopped(),
            })?,
        };
        let request = ServeRequest {
            id: 0,
            image,
            question: prompt.into(),
            max_new_tokens: options.max_new_tokens,
            submitted_ns: clock_ns(),
        };
        let (id, events) =
            self.hub.open(request, slot).map_err(|OpenError::Stopped(reason)| SubmitError::Stopped(reason))?;
        Ok(RequestHandle { id, events, hub: self.hub.clone() })
    }

    /// Stops accepting requests, lets the graph answer the ones already submitted, and returns its run summary.
    pub async fn shutdown(mut self) -> RunResult {
        self.hub.close_intake();
        match self.watcher.take() {
            Some(w) => w.await.unwrap_or_else(|e| Err(RunError::ControlPlane(format!("runtime watcher: {e}")))),
            None => Err(RunError::ControlPlane("the runtime was already shut down".into())),
        }
    }
}

impl Drop for ServeRuntime {
    fn drop(&mut self) {
        // The graph answers what was submitted, then ends on its own threads.
        self.hub.close_intake();
    }
}

/// The event stream of one request. Dropping it cancels the request.
pub struct RequestHandle {
    id: u64,
    events: mpsc::UnboundedReceiver<Event>,
    hub: Arc<Hub>,
}

impl RequestHandle {
    /// The runtime's id of this request.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The next event; None once the stream ended (after `Done` or `Error`, or after `cancel`).
    pub async fn next(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// [`RequestHandle::next`] for code outside an async runtime (panics inside one, as tokio's `blocking_recv`).
    pub fn blocking_next(&mut self) -> Option<Event> {
        self.events.blocking_recv()
    }

    /// The underlying tokio receiver (for `select!` or stream adapters).
    pub fn receiver(&mut self) -> &mut mpsc::UnboundedReceiver<Event> {
        &mut self.events
    }

    /// Cancels the request: its slot is free at once, generation stops at its next token, and the stream ends
    /// after the events already delivered.
    pub fn cancel(&self) {
        self.hub.cancel(self.id);
    }

    /// Reads the stream to its end: the answer and timings, or the error message.
    pub async fn finish(mut self) -> Result<(Answer, Timings), String> {
        while let Some(event) = self.next().await {
            match event {
                Event::Done { answer, timings } => return Ok((answer, timings)),
                Event::Error { message } => return Err(message),
                _ => {}
            }
        }
        Err("the request was cancelled".into())
    }
}

impl Drop for RequestHandle {
    fn drop(&mut self) {
        // After `Done` or `Error` the request is already gone and this does nothing.
        self.hub.cancel(self.id);
    }
}
