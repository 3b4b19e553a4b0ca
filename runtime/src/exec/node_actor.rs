//! The actor of one node: control plane only. It starts the node's worker thread, and turns the thread's end
//! into the actor's end: a clean finish stops it, a failure fails it, so the graph supervisor sees the outcome
//! as a supervision event. Bulk data never passes through this mailbox.

use std::sync::Arc;
use std::thread::JoinHandle;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::worker::{WorkerExit, WorkerInput, run_worker};
use crate::metrics::NodeMetrics;
use crate::node::{NodeImpl, Outputs, RunFlags};

pub struct NodeActor;

pub enum NodeMsg {
    /// The worker thread ended.
    WorkerExited(WorkerExit),
}

pub struct NodeArguments {
    pub id: String,
    pub node: NodeImpl,
    pub inputs: Vec<WorkerInput>,
    pub outputs: Outputs,
    pub metrics: Arc<NodeMetrics>,
    pub flags: Arc<RunFlags>,
}

pub struct NodeState {
    id: String,
    thread: Option<JoinHandle<()>>,
}

/// The error a failed node's actor ends with; the supervisor reads the node and cause from it.
#[derive(Debug, thiserror::Error)]
#[error("node `{node}` failed: {cause}")]
pub struct NodeFailure {
    pub node: String,
    pub cause: String,
}

impl Actor for NodeActor {
    type Msg = NodeMsg;
    type State = NodeState;
    type Arguments = NodeArguments;

    async fn pre_start(&self, myself: ActorRef<NodeMsg>, args: NodeArguments) -> Result<NodeState, ActorProcessingErr> {
        let NodeArguments { id, node, inputs, outputs, metrics, flags } = args;
        let me = myself.clone();
        let thread = std::thread::Builder::new().name(format!("node-{id}")).spawn(move || {
            let exit = run_worker(node, inputs, outputs, metrics, flags);
            // If the actor is already gone the graph is shutting down; nothing is left to tell.
            let _ = me.send_message(NodeMsg::WorkerExited(exit));
        })?;
        Ok(NodeState { id, thread: Some(thread) })
    }

    async fn handle(
        &self,
        myself: ActorRef<NodeMsg>,
        message: NodeMsg,
        state: &mut NodeState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            NodeMsg::WorkerExited(exit) => {
                if let Some(t) = state.thread.take() {
                    // The thread sent this message as its last act, so the join returns at once.
                    let _ = t.join();
                }
                match exit {
                    WorkerExit::Finished => myself.stop(Some("finished".into())),
                    WorkerExit::Cancelled => myself.stop(Some("cancelled".into())),
                    WorkerExit::Failed(cause) => {
                        return Err(Box::new(NodeFailure { node: state.id.clone(), cause }));
                    }
                }
            }
        }
        Ok(())
    }
}
