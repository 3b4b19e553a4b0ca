//! Errors of the SAM2 models, with the field, file or shape involved.

use std::path::PathBuf;

/// Everything that can go wrong in `sam2`.
#[derive(Debug, thiserror::Error)]
pub enum Sam2Error {
    #[error("invalid config field `{field}`: {reason}")]
    Config { field: &'static str, reason: String },
    #[error("{what} has shape {got}, expected {expected}")]
    Shape { what: &'static str, expected: String, got: String },
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
}
