//! Errors of the checkpoint layer, each carrying the file and key it is about.

use std::path::PathBuf;

/// One problem found while matching a checkpoint against a module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyProblem {
    /// The module has a parameter that no checkpoint key provides.
    Missing { key: String, shape: Vec<usize> },
    /// A checkpoint key (after the key table) matches no module parameter.
    Unexpected { key: String, checkpoint_key: String },
    /// Both exist but the shapes differ (checkpoint layout, `[out, in]` for Linear weights).
    Shape { key: String, checkpoint_key: String, expected: Vec<usize>, found: Vec<usize> },
}

impl std::fmt::Display for KeyProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyProblem::Missing { key, shape } => {
                write!(f, "missing key `{key}` (module expects shape {shape:?})")
            }
            KeyProblem::Unexpected { key, checkpoint_key } => {
                write!(f, "unexpected key `{checkpoint_key}` (mapped to `{key}`, which the module does not have)")
            }
            KeyProblem::Shape { key, checkpoint_key, expected, found } => write!(
                f,
                "shape mismatch for `{checkpoint_key}` (module `{key}`): module expects {expected:?}, checkpoint has {found:?}"
            ),
        }
    }
}

/// Errors while reading, matching, applying or writing checkpoints.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path}: not a safetensors checkpoint folder (no model.safetensors, no model.safetensors.index.json, no *.safetensors)"
    )]
    NoCheckpoint { path: PathBuf },
    #[error("{path}: invalid safetensors file: {message}")]
    Safetensors { path: PathBuf, message: String },
    #[error("{path}: invalid shard index: {message}")]
    Index { path: PathBuf, message: String },
    #[error("{path}: tensor `{key}` has unsupported dtype {dtype}")]
    UnsupportedDType { path: PathBuf, key: String, dtype: String },
    #[error("key `{key}` appears in both {first} and {second}")]
    DuplicateKey { key: String, first: PathBuf, second: PathBuf },
    #[error("key table: {0}")]
    KeyTable(String),
    #[error("split of `{key}`: {message}")]
    Split { key: String, message: String },
    #[error("checkpoint {checkpoint} does not match the module ({} problems):\n  {}", problems.len(), problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n  "))]
    Mismatch { checkpoint: PathBuf, problems: Vec<KeyProblem> },
    #[error("applying `{key}`: {message}")]
    Apply { key: String, message: String },
    #[error("{path}: cannot write safetensors: {message}")]
    Write { path: PathBuf, message: String },
}
