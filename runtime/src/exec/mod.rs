//! Running a validated graph: build every node, wire bounded edges, start the supervisor and its node actors,
//! and hand back a [`RunHandle`] for metrics queries, graceful stop and the final summary.

pub mod node_actor;
pub mod supervisor;
pub mod worker;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorRef};
use tokio::sync::oneshot;

use crate::edge::{EdgeSender, edge};
use crate::kind::{BuildContext, Registry};
use crate::metrics::{GraphStats, NodeMetrics, RunSummary};
use crate::node::{ERROR_PORT, Outputs, RunFlags};
use crate::spec::{ValidatedGraph, ValidationErrors, load_file, parse_str, validate};
use node_actor::NodeArguments;
use supervisor::{GraphArguments, GraphInfo, GraphMsg, GraphSupervisor};
use worker::WorkerInput;

/// Why a run did not complete.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Invalid(#[from] ValidationErrors),
    #[error("node `{node}` could not be built: {message}")]
    Build { node: String, message: String },
    #[error("node `{node}` ({kind}) failed: {cause}")]
    NodeFailed { node: String, kind: String, cause: String },
    #[error("run aborted: {0}")]
    Aborted(String),
    #[error("nodes still running after the stop deadline: {}", nodes.join(", "))]
    StopTimeout { nodes: Vec<String> },
    #[error("control plane: {0}")]
    ControlPlane(String),
}

pub type RunResult = Result<RunSummary, RunError>;

/// Options of one run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// After a failure or abort, how long nodes get to stop before the run ends without them.
    pub stop_deadline: Duration,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self { stop_deadline: Duration::from_secs(10) }
    }
}

/// A validated dataflow, ready to run.
#[derive(Clone)]
pub struct Graph {
    validated: ValidatedGraph,
}

impl Graph {
    pub fn from_file(path: &Path, registry: &Registry) -> Result<Self, ValidationErrors> {
        let (spec, map) = load_file(path)?;
        Ok(Self { validated: validate(&spec, &map, registry)? })
    }

    pub fn from_yaml(file: &str, text: &str, registry: &Registry) -> Result<Self, ValidationErrors> {
        let (spec, map) = parse_str(file, text)?;
        Ok(Self { validated: validate(&spec, &map, registry)? })
    }

    /// Like [`Graph::from_yaml`], with `${VAR}` values from `lookup` instead of the environment.
    pub fn from_yaml_with(
        file: &str,
        text: &str,
        registry: &Registry,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ValidationErrors> {
        let (spec, map) = crate::spec::parse_str_with(file, text, lookup)?;
        Ok(Self { validated: validate(&spec, &map, registry)? })
    }

    pub fn validated(&self) -> &ValidatedGraph {
        &self.validated
    }

    /// Builds every node and starts the graph. Must be called inside a tokio runtime.
    pub async fn start(self, options: RunOptions) -> Result<RunHandle, RunError> {
        let g = self.validated;
        let flags = Arc::new(RunFlags::default());
        let metrics: Vec<Arc<NodeMetrics>> = g.nodes.iter().map(|_| Arc::new(NodeMetrics::default())).collect();

        // Edges.
        let mut senders: Vec<Vec<(String, Vec<EdgeSender>)>> =
            g.nodes.iter().map(|n| n.ports.outputs.iter().map(|p| (p.name.clone(), Vec::new())).collect()).collect();
        let mut inputs: Vec<Vec<WorkerInput>> = g.nodes.iter().map(|_| Vec::new()).collect();
        let mut edge_info = Vec::new();
        for e in &g.edges {
            let (tx, rx, gauge) = edge(e.capacity);
            let port = senders[e.from_node]
                .iter_mut()
                .find(|(p, _)| *p == e.from_port)
                .expect("validation checked the producer's port");
            port.1.push(tx);
            inputs[e.to_node].push(WorkerInput {
                port: e.to_port.clone(),
                receiver: rx,
                from_error_port: e.from_port == ERROR_PORT,
            });
            edge_info.push((
                format!("{}/{}", g.nodes[e.from_node].id, e.from_port),
                format!("{}/{}", g.nodes[e.to_node].id, e.to_port),
                gauge,
            ));
        }

        // Nodes.
        let mut node_args = Vec::new();
        for (i, ((node, outs), ins)) in g.nodes.iter().zip(senders).zip(inputs).enumerate() {
            let device = node.device.device().map_err(|message| RunError::Build { node: node.id.clone(), message })?;
            let ctx = BuildContext { node_id: &node.id, params: &node.params, inputs: &node.input_schemas, device };
            let built =
                node.kind.build(&ctx).map_err(|e| RunError::Build { node: node.id.clone(), message: e.to_string() })?;
            node_args.push(NodeArguments {
                id: node.id.clone(),
                node: built,
                inputs: ins,
                outputs: Outputs::new(node.id.clone(), outs, metrics[i].clone(), flags.clone()),
                metrics: metrics[i].clone(),
                flags: flags.clone(),
            });
        }

        // Terminal nodes: no data edge leaves them.
        let terminal = (0..g.nodes.len())
            .filter(|&i| !g.edges.iter().any(|e| e.from_node == i && e.from_port != ERROR_PORT))
            .filter(|&i| !g.nodes[i].ports.inputs.is_empty())
            .collect();
        let info = GraphInfo {
            name: g.name.clone(),
            nodes: g
                .nodes
                .iter()
                .zip(&metrics)
                .map(|(n, m)| (n.id.clone(), n.kind.name().to_string(), m.clone()))
                .collect(),
            terminal,
            edges: edge_info,
        };
        let (done_tx, done_rx) = oneshot::channel();
        let args =
            GraphArguments { info, nodes: node_args, flags, stop_deadline: options.stop_deadline, done: done_tx };
        let (supervisor, join) = Actor::spawn(None, GraphSupervisor, args)
            .await
            .map_err(|e| RunError::ControlPlane(format!("cannot start the graph supervisor: {e}")))?;
        Ok(RunHandle { supervisor, done: done_rx, join })
    }

    /// Starts the graph and waits for the end.
    pub async fn run(self, options: RunOptions) -> RunResult {
        self.start(options).await?.wait().await
    }

    /// Runs the graph to the end on a private tokio runtime (for callers that have none).
    pub fn run_blocking(self, options: RunOptions) -> RunResult {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| RunError::ControlPlane(format!("cannot start a tokio runtime: {e}")))?;
        rt.block_on(self.run(options))
    }
}

/// A running graph.
pub struct RunHandle {
    supervisor: ActorRef<GraphMsg>,
    done: oneshot::Receiver<RunResult>,
    join: tokio::task::JoinHandle<()>,
}

impl RunHandle {
    /// Current counters (None once the graph has ended).
    pub async fn stats(&self) -> Option<GraphStats> {
        ractor::call!(self.supervisor, GraphMsg::Stats).ok()
    }

    /// Graceful stop: sources stop reading, data in flight drains, the run ends normally.
    pub fn drain(&self) {
        let _ = self.supervisor.send_message(GraphMsg::Drain);
    }

    /// Stops now; the run ends with [`RunError::Aborted`].
    pub fn abort(&self, reason: impl Into<String>) {
        let _ = self.supervisor.send_message(GraphMsg::Abort(reason.into()));
    }

    /// Whether the run has ended.
    pub fn is_finished(&self) -> bool {
        self.join.is_finished()
    }

    /// Waits for the end of the run.
    pub async fn wait(self) -> RunResult {
        let result = self
            .done
            .await
            .unwrap_or_else(|_| Err(RunError::ControlPlane("the graph supervisor stopped without a result".into())));
        let _ = self.join.await;
        result
    }
}
