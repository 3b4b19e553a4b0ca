//! Errors of the depth models (tokenizer, teacher, trainer), with the field, file or shape involved.

use std::path::PathBuf;

/// Everything that can go wrong in `depth`.
#[derive(Debug, thiserror::Error)]
pub enum DepthError {
    #[error("invalid config field `{field}`: {reason}")]
    Config { field: &'static str, reason: String },
    #[error("{what} has shape {got}, expected {expected}")]
    Shape { what: &'static str, expected: String, got: String },
    #[error("code ids span [{min}, {max}] but the codebook has {num_codes} entries")]
    CodeOutOfRange { min: i64, max: i64, num_codes: usize },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("checkpoint: {0}")]
    Weights(String),
    /// A depth map given as input (a dataset row's PNG and scale) is unusable.
    #[error("depth map `{field}`: {reason}")]
    Input { field: &'static str, reason: String },
}
