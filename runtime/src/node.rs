//! The node contract. A transform or sink implements [`Node`] (one required method: `process`); a source
//! implements [`Source`] (one required method: `next`). Hooks for signals and end-of-data have defaults.
//! Nodes run on dedicated threads; they may block and compute as long as they need.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arrow::array::{ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use perceptio_schemas::port::{FieldSpec, PortSchema};

use crate::edge::EdgeSender;
use crate::frame::{Frame, FrameError};
use crate::message::{Message, Signal};
use crate::metrics::NodeMetrics;

/// Name of the conventional error output port.
pub const ERROR_PORT: &str = "errors";

/// A node failed. Stops the graph; the graph error names the node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{0}")]
    Failed(String),
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
    #[error("output port `{0}` is not declared by this node")]
    UnknownPort(String),
    /// Downstream is gone because the graph is stopping; not a failure of this node.
    #[error("graph is stopping")]
    Cancelled,
}

impl NodeError {
    pub fn msg(message: impl Into<String>) -> Self {
        NodeError::Failed(message.into())
    }

    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        NodeError::Io { context: context.into(), source }
    }
}

/// What a source reports after each call to `next`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceState {
    More,
    Done,
}

/// A transform or sink.
pub trait Node: Send {
    /// Processes one frame that arrived on input `port`; emits results through `out`.
    fn process(&mut self, port: &str, frame: Frame, out: &mut Outputs) -> Result<(), NodeError>;

    /// Called for every signal once it has arrived on all inputs, before the engine forwards it downstream.
    /// A sink flushes here; a trainable node checkpoints here.
    fn on_signal(&mut self, _signal: &Signal, _out: &mut Outputs) -> Result<(), NodeError> {
        Ok(())
    }

    /// Called once after end-of-data arrived on every input, before end-of-data goes downstream.
    fn finish(&mut self, _out: &mut Outputs) -> Result<(), NodeError> {
        Ok(())
    }

    /// Work the node does between frames, one short unit at a time (a decoder's next step, so requests can join
    /// between steps). The engine calls it after every frame or signal and, while it returns true, again whenever
    /// no input is waiting; returning false lets the node sleep until the next input. Default: no such work.
    fn step(&mut self, _out: &mut Outputs) -> Result<bool, NodeError> {
        Ok(false)
    }
}

/// A node with no inputs that produces frames.
pub trait Source: Send {
    /// Emits zero or more frames through `out`; returns `Done` when exhausted.
    fn next(&mut self, out: &mut Outputs) -> Result<SourceState, NodeError>;

    /// Called once after the last `next`, before end-of-data goes downstream.
    fn finish(&mut self, _out: &mut Outputs) -> Result<(), NodeError> {
        Ok(())
    }
}

/// A built node, ready to run.
pub enum NodeImpl {
    Source(Box<dyn Source>),
    Node(Box<dyn Node>),
}

/// The output side of a running node: its ports and their downstream edges.
pub struct Outputs {
    node: String,
    ports: Vec<(String, Vec<EdgeSender>)>,
    metrics: Arc<NodeMetrics>,
    flags: Arc<RunFlags>,
}

/// Graph-wide flags every node can see.
#[derive(Debug, Default)]
pub struct RunFlags {
    /// The graph is aborting (a node failed or the caller aborted): stop now.
    pub cancel: AtomicBool,
    /// The caller asked for a graceful stop: sources stop reading, everything in flight drains.
    pub drain: AtomicBool,
}

impl Outputs {
    pub(crate) fn new(
        node: String,
        ports: Vec<(String, Vec<EdgeSender>)>,
        metrics: Arc<NodeMetrics>,
        flags: Arc<RunFlags>,
    ) -> Self {
        Self { node, ports, metrics, flags }
    }

    /// Outputs with no ports and private counters: for driving a node directly (tests, benchmarks, one-off use
    /// outside a graph). Emitting on any port fails with `UnknownPort`.
    pub fn detached(node: &str) -> Self {
        Self::new(node.to_string(), Vec::new(), Arc::new(NodeMetrics::default()), Arc::new(RunFlags::default()))
    }

    /// True once a graceful stop was requested; sources should stop reading (end-of-data follows).
    pub fn should_drain(&self) -> bool {
        self.flags.drain.load(Ordering::Relaxed)
    }

    /// Asks for a graceful stop of the whole run, as a caller's drain does: sources stop reading and what is in
    /// flight drains through the graph. For a node that has all the input it will ever use (a trainer past its
    /// last step in front of a many-epoch replay); every other branch of the graph stops reading too.
    pub fn request_drain(&self) {
        self.flags.drain.store(true, Ordering::Relaxed);
    }

    /// Publishes a short progress line for progress bars (replaces the previous one).
    pub fn set_status(&self, status: impl Into<String>) {
        *self.metrics.status.lock().unwrap_or_else(|p| p.into_inner()) = status.into();
    }

    /// Tells progress reporting how many rows this source will read in total.
    pub fn set_expected_rows(&self, rows: u64) {
        self.metrics.rows_expected.store(rows, Ordering::Relaxed);
    }

    /// The id of the node these outputs belong to.
    pub fn node_id(&self) -> &str {
        &self.node
    }

    /// True once the graph is stopping; long-running nodes should return soon.
    pub fn is_cancelled(&self) -> bool {
        self.flags.cancel.load(Ordering::Relaxed)
    }

    /// Whether an output port is connected to at least one consumer.
    pub fn is_connected(&self, port: &str) -> bool {
        self.ports.iter().any(|(p, senders)| p == port && !senders.is_empty())
    }

    /// Sends a frame on `port` to every consumer (fan-out clones the frame; tensors are shared, not copied).
    /// Blocks while a downstream edge is full. An unconnected port drops the frame (counted as rows out).
    pub fn emit(&mut self, port: &str, frame: Frame) -> Result<(), NodeError> {
        let (_, senders) =
            self.ports.iter().find(|(p, _)| p == port).ok_or_else(|| NodeError::UnknownPort(port.to_string()))?;
        let rows = frame.rows() as u64;
        if let Some((last, rest)) = senders.split_last() {
            for sender in rest {
                sender.send(Message::Data(frame.clone())).map_err(|_| NodeError::Cancelled)?;
            }
            last.send(Message::Data(frame)).map_err(|_| NodeError::Cancelled)?;
        }
        if port != ERROR_PORT {
            NodeMetrics::add(&self.metrics.rows_out, rows);
        }
        Ok(())
    }

    /// Sends a signal on every output port.
    pub fn signal(&mut self, signal: Signal) -> Result<(), NodeError> {
        for (_, senders) in &self.ports {
            for sender in senders {
                sender.send(Message::Signal(signal.clone())).map_err(|_| NodeError::Cancelled)?;
            }
        }
        Ok(())
    }

    /// Records rows that could not be processed: counts them, keeps a few reasons for the summary, and writes
    /// them as error records (`id`, `node`, `error`) to the `errors` port when it is connected. Never silent:
    /// with no error consumer the rows are still counted and logged.
    pub fn reject(&mut self, ids: Vec<String>, reasons: Vec<String>) -> Result<(), NodeError> {
        debug_assert_eq!(ids.len(), reasons.len());
        NodeMetrics::add(&self.metrics.rows_failed, ids.len() as u64);
        for (id, reason) in ids.iter().zip(&reasons) {
            tracing::warn!(node = %self.node, row = %id, "row failed: {reason}");
            self.metrics.record_failure(format!("{id}: {reason}"));
        }
        if self.is_connected(ERROR_PORT) {
            let frame = error_frame(&self.node, ids, reasons)?;
            self.emit(ERROR_PORT, frame)?;
        }
        Ok(())
    }

    /// Counts rows read from outside the graph (sources call this).
    pub fn count_read(&self, rows: usize) {
        NodeMetrics::add(&self.metrics.rows_read, rows as u64);
    }
}

/// The schema of error records.
pub fn error_schema() -> Schema {
    Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("node", DataType::Utf8, false),
        Field::new("error", DataType::Utf8, false),
    ])
}

/// The port schema of an `errors` output.
pub fn error_port_schema() -> PortSchema {
    PortSchema::default()
        .with_field(FieldSpec::new("id", DataType::Utf8))
        .with_field(FieldSpec::new("node", DataType::Utf8))
        .with_field(FieldSpec::new("error", DataType::Utf8))
}

/// Builds a frame of error records.
pub fn error_frame(node: &str, ids: Vec<String>, reasons: Vec<String>) -> Result<Frame, NodeError> {
    let n = ids.len();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(ids)),
        Arc::new(StringArray::from(vec![node; n])),
        Arc::new(StringArray::from(reasons)),
    ];
    Ok(Frame::new(RecordBatch::try_new(Arc::new(error_schema()), columns)?))
}
