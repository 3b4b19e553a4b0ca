//! The loop each node runs on its own OS thread: receive from inputs (select over edges), call the node,
//! align and forward signals, finish at end-of-data. Panics are caught and become failures naming the node.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::Select;

use crate::edge::EdgeReceiver;
use crate::message::{Message, Signal};
use crate::metrics::NodeMetrics;
use crate::node::{Node, NodeError, NodeImpl, Outputs, RunFlags, Source, SourceState};

/// One input of a running node.
pub struct WorkerInput {
    pub port: String,
    pub receiver: EdgeReceiver,
    /// The edge is fed by an `errors` port: its rows are failures, not work.
    pub from_error_port: bool,
}

/// How a node's thread ended.
#[derive(Debug)]
pub enum WorkerExit {
    Finished,
    /// Stopped because the graph is aborting; not this node's fault.
    Cancelled,
    Failed(String),
}

const POLL: Duration = Duration::from_millis(50);

pub fn run_worker(
    node: NodeImpl,
    inputs: Vec<WorkerInput>,
    mut out: Outputs,
    metrics: Arc<NodeMetrics>,
    flags: Arc<RunFlags>,
) -> WorkerExit {
    let result = catch_unwind(AssertUnwindSafe(|| match node {
        NodeImpl::Source(source) => run_source(source, &mut out, &metrics, &flags),
        NodeImpl::Node(node) => run_node(node, inputs, &mut out, &metrics, &flags),
    }));
    match result {
        Ok(Ok(())) => WorkerExit::Finished,
        Ok(Err(NodeError::Cancelled)) => WorkerExit::Cancelled,
        Ok(Err(e)) => {
            NodeMetrics::add(&metrics.errors, 1);
            WorkerExit::Failed(e.to_string())
        }
        Err(panic) => {
            NodeMetrics::add(&metrics.errors, 1);
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic payload".to_string());
            WorkerExit::Failed(format!("panicked: {what}"))
        }
    }
}

fn timed<T>(metrics: &NodeMetrics, f: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let r = f();
    NodeMetrics::add(&metrics.busy_ns, started.elapsed().as_nanos() as u64);
    r
}

fn run_source(
    mut source: Box<dyn Source>,
    out: &mut Outputs,
    metrics: &NodeMetrics,
    flags: &RunFlags,
) -> Result<(), NodeError> {
    loop {
        if flags.cancel.load(Ordering::Relaxed) {
            return Err(NodeError::Cancelled);
        }
        if flags.drain.load(Ordering::Relaxed) {
            break;
        }
        if timed(metrics, || source.next(out))? == SourceState::Done {
            break;
        }
    }
    timed(metrics, || source.finish(out))?;
    out.signal(Signal::EndOfData)
}

fn run_node(
    mut node: Box<dyn Node>,
    inputs: Vec<WorkerInput>,
    out: &mut Outputs,
    metrics: &NodeMetrics,
    flags: &RunFlags,
) -> Result<(), NodeError> {
    let mut open: Vec<bool> = vec![true; inputs.len()];
    // Signals waiting for alignment: a signal is handled once every open input has delivered it.
    let mut pending: Vec<(Signal, Vec<bool>)> = Vec::new();
    // The node has work between frames (see `Node::step`): poll the inputs instead of waiting on them.
    let mut busy = false;
    while open.iter().any(|o| *o) {
        if flags.cancel.load(Ordering::Relaxed) {
            return Err(NodeError::Cancelled);
        }
        let mut select = Select::new();
        let mut map = Vec::new();
        for (i, input) in inputs.iter().enumerate() {
            // An input that delivered a pending signal is paused until the signal aligns (barrier semantics).
            let paused = pending.first().is_some_and(|(_, got)| got[i]);
            if open[i] && !paused {
                select.recv(input.receiver.channel());
                map.push(i);
            }
        }
        let ready = if busy { select.try_select().ok() } else { select.select_timeout(POLL).ok() };
        let Some(op) = ready else {
            if busy {
                busy = timed(metrics, || node.step(out))?;
            }
            continue;
        };
        let i = map[op.index()];
        let input = &inputs[i];
        let item = match op.recv(input.receiver.channel()) {
            Ok(item) => item,
            // The producer vanished without end-of-data: it failed or the graph is aborting.
            Err(_) => return Err(NodeError::Cancelled),
        };
        match input.receiver.complete(item) {
            Message::Data(frame) => {
                let counter = if input.from_error_port { &metrics.error_rows_in } else { &metrics.rows_in };
                NodeMetrics::add(counter, frame.rows() as u64);
                NodeMetrics::add(&metrics.frames_in, 1);
                timed(metrics, || node.process(&input.port, frame, out))?;
            }
            Message::Signal(Signal::EndOfData) => {
                open[i] = false;
            }
            Message::Signal(signal) => match pending.iter_mut().find(|(s, _)| *s == signal) {
                Some((_, got)) => got[i] = true,
                None => {
                    let mut got = vec![false; inputs.len()];
                    got[i] = true;
                    pending.push((signal, got));
                }
            },
        }
        // Handle every signal that has now arrived on all open inputs, in arrival order.
        while let Some((_, got)) = pending.first() {
            if !got.iter().zip(&open).all(|(g, o)| *g || !*o) {
                break;
            }
            let (signal, _) = pending.remove(0);
            timed(metrics, || node.on_signal(&signal, out))?;
            out.signal(signal)?;
        }
        busy = timed(metrics, || node.step(out))?;
    }
    timed(metrics, || node.finish(out))?;
    out.signal(Signal::EndOfData)
}
