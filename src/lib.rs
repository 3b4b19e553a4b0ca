//! perceptio: perception-enhanced vision-language models as a backpressured actor dataflow.
//!
//! This facade re-exports the crates a user of the library needs: the dataflow engine ([`runtime`]), the node
//! kinds ([`actors`]), the schemas ([`schemas`]), the models ([`models`]) and the synthetic world ([`synth`]).
//! [`registry`] returns every node kind a dataflow file may use; [`serve`] embeds a serving graph in a program.

pub mod serve;

pub use perceptio_actors as actors;
pub use perceptio_models as models;
pub use perceptio_runtime as runtime;
pub use perceptio_schemas as schemas;
pub use perceptio_synth as synth;

pub use perceptio_runtime::{Graph, RunError, RunOptions, RunSummary};

/// Every node kind shipped with perceptio.
pub fn registry() -> runtime::Registry {
    actors::registry()
}
