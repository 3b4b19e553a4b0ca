//! The crate's error type: every variant names what failed (file, field, split, sample).

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error("invalid config field `{field}`: {message}")]
    Config { field: &'static str, message: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parquet {path}: {source}")]
    Parquet {
        path: PathBuf,
        #[source]
        source: parquet::errors::ParquetError,
    },
    #[error("building arrow batch ({what}): {source}")]
    Arrow {
        what: String,
        #[source]
        source: arrow::error::ArrowError,
    },
    #[error("png encoding of {what}: {source}")]
    PngEncode {
        what: String,
        #[source]
        source: png::EncodingError,
    },
    #[error("png decoding of {what}: {source}")]
    PngDecode {
        what: String,
        #[source]
        source: png::DecodingError,
    },
    #[error("{what}: {message}")]
    Invalid { what: String, message: String },
}
