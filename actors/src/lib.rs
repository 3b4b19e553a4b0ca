//! perceptio's node kinds: thin adapters between frames and the outside world (parquet replay and sink,
//! preprocessing), and later the model nodes. [`registry`] returns every kind a dataflow file may use.

pub mod image_decode;
pub mod parquet_replay;
pub mod parquet_sink;
pub mod synth_source;

use perceptio_runtime::Registry;

/// Every node kind shipped with perceptio.
pub fn registry() -> Registry {
    let mut r = Registry::new();
    r.register(parquet_replay::ParquetReplayKind);
    r.register(parquet_sink::ParquetSinkKind);
    r.register(image_decode::ImageDecodeKind);
    r.register(synth_source::SynthKind);
    r
}
