//! Depth Anything V2 parity with transformers' DepthAnythingForDepthEstimation on the tiny random
//! fixture made by scripts/fixtures/make_depth_anything.py (4x5 patches, so the position embeddings
//! are interpolated; random layer scales).

use std::path::PathBuf;

use burn::tensor::{DType, Device, Tensor};
use perceptio_models::depth::{DepthAnything, DepthAnythingConfig};
use perceptio_models::weights::Checkpoint;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/depth_anything")
}

fn load<const D: usize>(io: &Checkpoint, key: &str, device: &Device) -> Tensor<D> {
    Tensor::from_data(io.read(key, DType::F32).unwrap(), device)
}

/// max |a - b| / max |b|.
fn rel_err<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f64 {
    assert_eq!(a.dims(), b.dims());
    let scale = b.clone().abs().max().into_scalar::<f32>() as f64;
    let diff = (a - b).abs().max().into_scalar::<f32>() as f64;
    diff / scale.max(1e-12)
}

#[test]
fn config_json_round_trips() {
    let cfg = DepthAnythingConfig::from_json_file(&fixture().join("config.json")).unwrap();
    assert_eq!(cfg.backbone_config.hidden_size, 32);
    assert_eq!(cfg.backbone_config.out_indices, vec![1, 2, 3, 4]);
    assert_eq!(cfg.reassemble_factors, vec![4.0, 2.0, 1.0, 0.5]);
    assert_eq!(cfg.neck_hidden_sizes, vec![8, 16, 24, 32]);
    for preset in [DepthAnythingConfig::small(), DepthAnythingConfig::base(), DepthAnythingConfig::large()] {
        preset.validate().unwrap();
    }
    assert_eq!(DepthAnythingConfig::large().backbone_config.hidden_size, 1024);
    assert_eq!(DepthAnythingConfig::base().fusion_hidden_size, 128);
}

#[test]
fn predicted_depth_matches_transformers() {
    let device = Device::flex();
    let (model, report) = DepthAnything::from_checkpoint(&fixture(), &device).unwrap();
    assert!(report.applied > 50, "only {} tensors applied", report.applied);
    let io = Checkpoint::open(fixture().join("io.safetensors")).unwrap();
    let pixels: Tensor<4> = load(&io, "pixel_values", &device);

    // Backbone: every hidden state (embeddings + 4 layers).
    let want: Tensor<4> = load(&io, "hidden_states", &device); // [5, 1, 1+h*w, d]
    let got = model.backbone.hidden_states(pixels.clone());
    assert_eq!(got.len(), 5);
    for (i, g) in got.into_iter().enumerate() {
        let w = want.clone().narrow(0, i, 1).squeeze_dim::<3>(0);
        let e = rel_err(g, w);
        assert!(e < 1e-4, "hidden state {i}: relative error {e:.2e}");
    }

    let depth = model.forward(pixels).unwrap(); // [1, 56, 70]
    let want: Tensor<3> = load(&io, "predicted_depth", &device);
    assert_eq!(depth.dims(), [1, 56, 70]);
    let e = rel_err(depth, want);
    assert!(e < 1e-4, "predicted depth: relative error {e:.2e}");
}

#[test]
fn wrong_input_shape_is_an_error() {
    let device = Device::flex();
    let model = DepthAnythingConfig::from_json_file(&fixture().join("config.json")).unwrap().init(&device).unwrap();
    assert!(model.forward(Tensor::zeros([1, 3, 50, 56], &device)).is_err());
    assert!(model.forward(Tensor::zeros([1, 1, 56, 56], &device)).is_err());
}
