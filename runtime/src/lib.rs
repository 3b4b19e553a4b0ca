//! perceptio's dataflow engine: frames, bounded edges with lossless backpressure, in-band signals, dataflow files
//! and their validation, node kinds, and execution (one ractor actor per node under a graph supervisor, node
//! work on dedicated threads). It knows nothing about models.

pub mod dot;
pub mod edge;
pub mod exec;
pub mod frame;
pub mod kind;
pub mod message;
pub mod metrics;
pub mod node;
pub mod spec;
pub mod train;

pub use edge::{EdgeCapacity, EdgeStats};
pub use exec::{Graph, RunError, RunHandle, RunOptions, RunResult};
pub use frame::{AnyTensor, Frame, FrameError, TypedTensor};
pub use kind::{BuildContext, NodeKind, NodePorts, ParamError, PortContext, PortDecl, Registry, parse_params};
pub use message::{Message, Signal};
pub use metrics::{GraphStats, RunSummary};
pub use node::{ERROR_PORT, Node, NodeError, NodeImpl, Outputs, Source, SourceState};
pub use perceptio_schemas as schemas;
pub use train::{GradRequest, GradTicket, StepGrads, autodiff_guard, grad_request};
