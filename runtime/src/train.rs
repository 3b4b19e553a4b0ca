//! Training through the graph: the hand-off of gradients from the loss aggregator back to the trainable nodes.
//!
//! A trainable node attaches a [`GradRequest`] to the frame it emits and keeps the matching [`GradTicket`]. The
//! request travels in-band with the frame (every node that derives a frame from it carries it along) to the
//! aggregator, which runs backward once per micro-batch and answers every distinct request with the same
//! [`StepGrads`]. Each node takes its own parameters' gradients out of it, and on the last micro-batch of an
//! accumulation window all nodes agree on the global gradient norm through [`StepGrads::global_norm`] before each
//! applies its optimiser step. A request whose frame is dropped (the row failed) closes its ticket: the node
//! sees "no gradients" instead of waiting forever.
//!
//! [`autodiff_guard`] serialises autodiff work across node threads (see its docs).

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use burn::tensor::Gradients;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::node::NodeError;

/// burn 0.22.1's autodiff keeps one global registry of graphs and sweeps unused nodes at the end of every backward
/// pass; with several threads building and consuming graphs at once, nodes of a graph still being built get reclaimed
/// (tracel-ai/burn#5573, fixed upstream after 0.22.1). In a training graph every node builds autodiff tensors on its
/// own thread, and the race surfaced as "graph tape has already been consumed" after a few dozen steps; a
/// reader-writer split (building shared, backward exclusive) still failed, so all autodiff work is serialised by
/// this one lock. Frozen work (the SAM2 encoder) runs on the plain backend outside it, so the pipeline still
/// overlaps it with the trainable chain. Never hold the guard while blocking on an edge or a gradient ticket.
static AUTODIFF: Mutex<()> = Mutex::new(());

/// Guard for any work that builds or consumes autodiff graphs (forward passes, backward, optimiser updates).
pub fn autodiff_guard() -> MutexGuard<'static, ()> {
    AUTODIFF.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The aggregator's answer for one micro-batch.
pub struct StepGrads {
    /// Micro-batch counter (from the batch's `step` column).
    pub step: u64,
    /// Whether this micro-batch ends an accumulation window (the nodes apply their optimiser step).
    pub apply: bool,
    grads: Mutex<Option<Gradients>>,
    norm: NormBarrier,
}

struct NormBarrier {
    expected: usize,
    state: Mutex<(usize, f64)>,
    ready: Condvar,
}

impl std::fmt::Debug for StepGrads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepGrads").field("step", &self.step).field("apply", &self.apply).finish()
    }
}

impl StepGrads {
    /// `grads` = None when the micro-batch had no loss term (nothing to accumulate). `participants` = the number
    /// of distinct requests answered (every one of them takes part in the norm agreement when `apply`).
    pub fn new(step: u64, apply: bool, grads: Option<Gradients>, participants: usize) -> Self {
        Self {
            step,
            apply,
            grads: Mutex::new(grads),
            norm: NormBarrier { expected: participants, state: Mutex::new((0, 0.0)), ready: Condvar::new() },
        }
    }

    /// Runs `f` on the gradients (one node at a time); None when there are none.
    pub fn with_grads<R>(&self, f: impl FnOnce(&mut Gradients) -> R) -> Option<R> {
        let mut guard = self.grads.lock().unwrap_or_else(|p| p.into_inner());
        guard.as_mut().map(f)
    }

    /// Adds this node's squared gradient norm and waits until every participant has: returns the global norm.
    /// Gives up with `Cancelled` when `cancelled()` turns true (the graph is stopping).
    pub fn global_norm(&self, sq_norm: f64, cancelled: &dyn Fn() -> bool) -> Result<f64, NodeError> {
        let b = &self.norm;
        let mut st = b.state.lock().unwrap_or_else(|p| p.into_inner());
        st.0 += 1;
        st.1 += sq_norm;
        if st.0 >= b.expected {
            b.ready.notify_all();
        }
        while st.0 < b.expected {
            if cancelled() {
                return Err(NodeError::Cancelled);
            }
            st = b.ready.wait_timeout(st, Duration::from_millis(50)).unwrap_or_else(|p| p.into_inner()).0;
        }
        Ok(st.1.sqrt())
    }
}

/// A trainable node's claim on the gradients of the frame it emitted.
#[derive(Debug)]
pub struct GradRequest {
    /// The node that asked.
    pub node: String,
    tx: Sender<Arc<StepGrads>>,
}

impl GradRequest {
    /// Answers the request (a request whose node is gone is ignored).
    pub fn fulfil(&self, grads: Arc<StepGrads>) {
        let _ = self.tx.send(grads);
    }
}

/// The node's side of a [`GradRequest`].
#[derive(Debug)]
pub struct GradTicket {
    rx: Receiver<Arc<StepGrads>>,
}

/// A new request (to attach to the emitted frame) and its ticket (kept by the node).
pub fn grad_request(node: &str) -> (Arc<GradRequest>, GradTicket) {
    let (tx, rx) = crossbeam_channel::bounded(1);
    (Arc::new(GradRequest { node: node.to_string(), tx }), GradTicket { rx })
}

impl GradTicket {
    /// Waits for the aggregator's answer. `Ok(None)`: the request was dropped unanswered (its frame failed
    /// downstream). `Err(Cancelled)` when the graph stops first.
    pub fn wait(self, cancelled: &dyn Fn() -> bool) -> Result<Option<Arc<StepGrads>>, NodeError> {
        loop {
            match self.rx.recv_timeout(Duration::from_millis(50)) {
                Ok(g) => return Ok(Some(g)),
                Err(RecvTimeoutError::Disconnected) => return Ok(None),
                Err(RecvTimeoutError::Timeout) if cancelled() => return Err(NodeError::Cancelled),
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
    }
}

/// Distinct requests (by identity) among `requests`, in first-seen order.
pub fn distinct_requests<'a>(requests: impl IntoIterator<Item = &'a Arc<GradRequest>>) -> Vec<Arc<GradRequest>> {
    let mut out: Vec<Arc<GradRequest>> = Vec::new();
    for r in requests {
        if !out.iter().any(|o| Arc::ptr_eq(o, r)) {
            out.push(r.clone());
        }
    }
    out
}
