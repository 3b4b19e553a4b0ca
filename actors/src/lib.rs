//! perceptio's node kinds: thin adapters between frames and the outside world (parquet replay and sink,
//! preprocessing), and later the model nodes. [`registry`] returns every kind a dataflow file may use.

pub mod depth_encode;
pub mod image_decode;
pub mod parquet_replay;
pub mod parquet_sink;
pub mod perceptio;
pub mod synth_source;
pub mod vqvae_train;

use perceptio_runtime::Registry;

/// Every node kind shipped with perceptio.
pub fn registry() -> Registry {
    let mut r = Registry::new();
    r.register(parquet_replay::ParquetReplayKind);
    r.register(parquet_sink::ParquetSinkKind);
    r.register(image_decode::ImageDecodeKind);
    r.register(synth_source::SynthKind);
    r.register(depth_encode::DepthEncodeKind);
    r.register(vqvae_train::VqVaeTrainKind);
    r.register(perceptio::batch::PerceptioBatchKind);
    r.register(perceptio::image_encoder::ImageEncoderKind);
    r.register(perceptio::sam2_encoder::Sam2EncoderKind);
    r.register(perceptio::llm::LlmKind);
    r.register(perceptio::router::TokenRouterKind);
    r.register(perceptio::mask_decoder::MaskDecoderKind);
    r.register(perceptio::depth_decoder::DepthDecoderKind);
    r.register(perceptio::aggregator::LossAggregatorKind);
    perceptio::serve::register(&mut r, None);
    r.register(perceptio::infer::PerceptioInferKind);
    r.register(perceptio::score::PerceptioScoreKind);
    r
}
