//! Arrow schemas of every edge and every dataset row, and the rules that say when a producer's schema
//! satisfies a consumer's. No burn dependency: anything that reads or writes perceptio data can use it.

pub mod dataset;
pub mod port;

pub use port::{FieldSpec, PortSchema, SchemaMismatch, TensorSpec};
