//! The graph supervisor: a ractor actor that spawns one linked actor per node, answers metrics queries, and
//! reacts to its children's supervision events. The first failure aborts the graph: every edge is closed so
//! blocked producers wake, every node sees the cancel flag, and the run ends with an error naming the node.
//! If nodes are still running when the stop deadline passes, the run ends anyway, naming them.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tokio::sync::oneshot;

use super::node_actor::{NodeActor, NodeArguments, NodeFailure};
use super::{RunError, RunResult};
use crate::edge::EdgeGauge;
use crate::metrics::{GraphStats, NodeMetrics, RunSummary};
use crate::node::RunFlags;

pub struct GraphSupervisor;

pub enum GraphMsg {
    /// Current counters of every node and edge.
    Stats(RpcReplyPort<GraphStats>),
    /// Graceful stop: sources stop reading; what is in flight drains.
    Drain,
    /// Stop now.
    Abort(String),
    /// The stop deadline after a failure or abort has passed.
    Deadline,
}

/// Static facts about the graph, for stats and the summary.
pub struct GraphInfo {
    pub name: String,
    pub nodes: Vec<(String, String, Arc<NodeMetrics>)>,
    /// Indices of nodes whose data inputs count as "processed" (terminal nodes).
    pub terminal: Vec<usize>,
    pub edges: Vec<(String, String, Arc<EdgeGauge>)>,
}

pub struct GraphArguments {
    pub info: GraphInfo,
    pub nodes: Vec<NodeArguments>,
    pub flags: Arc<RunFlags>,
    pub stop_deadline: Duration,
    pub done: oneshot::Sender<RunResult>,
}

pub struct GraphState {
    info: GraphInfo,
    flags: Arc<RunFlags>,
    running: HashMap<ActorId, String>,
    failure: Option<RunError>,
    /// Nodes that stopped because the graph was stopping (not failures of their own).
    cancelled: Vec<String>,
    stop_deadline: Duration,
    started: Instant,
    done: Option<oneshot::Sender<RunResult>>,
}

impl GraphState {
    fn stats(&self) -> GraphStats {
        GraphStats {
            nodes: self.info.nodes.iter().map(|(id, kind, m)| (id.clone(), kind.clone(), m.snapshot())).collect(),
            edges: self.info.edges.iter().map(|(a, b, g)| (a.clone(), b.clone(), g.stats())).collect(),
            elapsed_s: self.started.elapsed().as_secs_f64(),
        }
    }

    fn abort(&mut self, myself: &ActorRef<GraphMsg>, error: RunError) {
        if self.failure.is_none() {
            tracing::error!("{error}; stopping the graph");
            self.failure = Some(error);
        }
        self.flags.cancel.store(true, Ordering::Relaxed);
        for (_, _, gauge) in &self.info.edges {
            gauge.close();
        }
        myself.send_after(self.stop_deadline, || GraphMsg::Deadline);
    }

    fn finish(&mut self, myself: &ActorRef<GraphMsg>) {
        let stats = self.stats();
        if self.failure.is_none() && !self.cancelled.is_empty() {
            self.cancelled.sort();
            let nodes = self.cancelled.join(", ");
            self.failure = Some(RunError::Aborted(format!("nodes stopped before the end of their input: {nodes}")));
        }
        let result = match self.failure.take() {
            Some(e) => Err(e),
            None => {
                let read = stats.read();
                let failed = stats.failed();
                let processed: u64 = self.info.terminal.iter().map(|&i| stats.nodes[i].2.rows_in).sum();
                Ok(RunSummary {
                    graph: self.info.name.clone(),
                    read,
                    processed,
                    failed,
                    balanced: processed + failed == read,
                    stats,
                })
            }
        };
        if let Some(done) = self.done.take() {
            let _ = done.send(result);
        }
        myself.stop(None);
    }
}

impl Actor for GraphSupervisor {
    type Msg = GraphMsg;
    type State = GraphState;
    type Arguments = GraphArguments;

    async fn pre_start(
        &self,
        myself: ActorRef<GraphMsg>,
        args: GraphArguments,
    ) -> Result<GraphState, ActorProcessingErr> {
        let GraphArguments { info, nodes, flags, stop_deadline, done } = args;
        let mut state = GraphState {
            info,
            flags,
            running: HashMap::new(),
            failure: None,
            cancelled: Vec::new(),
            stop_deadline,
            started: Instant::now(),
            done: Some(done),
        };
        for args in nodes {
            let id = args.id.clone();
            let (actor, _) = Actor::spawn_linked(None, NodeActor, args, myself.get_cell()).await?;
            state.running.insert(actor.get_id(), id);
        }
        if state.running.is_empty() {
            state.finish(&myself);
        }
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<GraphMsg>,
        message: GraphMsg,
        state: &mut GraphState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            GraphMsg::Stats(reply) => {
                let _ = reply.send(state.stats());
            }
            GraphMsg::Drain => state.flags.drain.store(true, Ordering::Relaxed),
            GraphMsg::Abort(reason) => state.abort(&myself, RunError::Aborted(reason)),
            GraphMsg::Deadline => {
                if !state.running.is_empty() {
                    let mut stuck: Vec<String> = state.running.values().cloned().collect();
                    stuck.sort();
                    tracing::error!("nodes still running after the stop deadline: {}", stuck.join(", "));
                    if state.failure.is_none() {
                        state.failure = Some(RunError::StopTimeout { nodes: stuck });
                    }
                    state.running.clear();
                    state.finish(&myself);
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<GraphMsg>,
        event: SupervisionEvent,
        state: &mut GraphState,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                if let Some(id) = state.running.remove(&cell.get_id()) {
                    tracing::debug!(node = %id, reason = ?reason, "node stopped");
                    if reason.as_deref() == Some("cancelled") {
                        // A node stops as cancelled when a neighbour failed; that failure's own event may
                        // still be on its way, so the cause is decided when the run ends.
                        state.cancelled.push(id);
                    }
                }
            }
            SupervisionEvent::ActorFailed(cell, error) => {
                if let Some(id) = state.running.remove(&cell.get_id()) {
                    let (node, cause) = match error.downcast_ref::<NodeFailure>() {
                        Some(f) => (f.node.clone(), f.cause.clone()),
                        None => (id, error.to_string()),
                    };
                    let kind = state
                        .info
                        .nodes
                        .iter()
                        .find(|(n, _, _)| *n == node)
                        .map(|(_, k, _)| k.clone())
                        .unwrap_or_default();
                    state.abort(&myself, RunError::NodeFailed { node, kind, cause });
                }
            }
            SupervisionEvent::ActorStarted(_) | SupervisionEvent::ProcessGroupChanged(_) => {}
        }
        if state.running.is_empty() && state.done.is_some() {
            state.finish(&myself);
        }
        Ok(())
    }
}
