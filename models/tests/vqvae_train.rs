//! The tokenizer trainer: a short run on procedural depth lowers the reconstruction error, writes
//! an atomic checkpoint that loads back to the same codes, and the preview PNG.

use burn::tensor::Device;
use perceptio_models::depth::train::{PREVIEW_FILE, STATE_FILE, WEIGHTS_FILE, load_checkpoint, validate};
use perceptio_models::depth::{ProceduralDepth, TrainEvent, TrainVqVaeConfig, VqVaeConfig, train_vqvae};

#[test]
fn short_run_learns_and_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    // A smaller tokenizer than `tiny` (40x40, x4 down) keeps the test quick.
    let model_cfg = VqVaeConfig::new(40, vec![8, 16], 16).with_num_codes(32);
    let cfg = TrainVqVaeConfig::new()
        .with_steps(60)
        .with_batch_size(8)
        .with_learning_rate(2e-3)
        .with_val_every(30)
        .with_order_pairs(200);
    let val = {
        let mut g = ProceduralDepth::new(40, 99);
        (0..16).map(|_| g.sample()).collect::<Vec<_>>()
    };
    let mut source = ProceduralDepth::new(40, 1);
    let mut recon = Vec::new();
    let mut vals = Vec::new();
    let mut checkpoints = 0;
    let (model, state) = train_vqvae(&model_cfg, &cfg, &mut source, &val, dir.path(), false, &mut |e| match e {
        TrainEvent::Step { recon: r, .. } => recon.push(*r),
        TrainEvent::Validation { metrics, .. } => vals.push(*metrics),
        TrainEvent::Checkpoint { .. } => checkpoints += 1,
    })
    .unwrap();
    assert_eq!(state.step, 60);
    assert_eq!(recon.len(), 60);
    assert_eq!(vals.len(), 2);
    assert_eq!(checkpoints, 2);
    let first: f64 = recon[..10].iter().sum::<f64>() / 10.0;
    let last: f64 = recon[50..].iter().sum::<f64>() / 10.0;
    assert!(last < 0.7 * first, "reconstruction error did not drop: {first} -> {last}");
    let m = vals[1];
    assert!(m.mse.is_finite() && m.mse > 0.0);
    assert!((0.0..=1.0).contains(&m.order_accuracy));
    assert!(m.perplexity >= 1.0 && m.perplexity <= 32.0 + 1e-9);
    assert!(m.codes_used >= 1 && m.codes_used <= 32);
    for f in [WEIGHTS_FILE, STATE_FILE, PREVIEW_FILE, "config.json"] {
        assert!(dir.path().join(f).exists(), "{f} missing");
    }
    // No temp files are left behind.
    assert!(
        std::fs::read_dir(dir.path()).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().ends_with(".tmp"))
    );
    // The checkpoint reproduces the trained model's validation numbers exactly.
    let device = Device::flex();
    let (loaded, _) = load_checkpoint(dir.path(), &device).unwrap();
    let (again, _) = validate(&loaded, &val, &cfg, &device).unwrap();
    let (direct, _) = validate(&model, &val, &cfg, &device).unwrap();
    assert!((again.mse - direct.mse).abs() < 1e-9, "{again:?} vs {direct:?}");
    assert_eq!(again.codes_used, direct.codes_used);
}

#[test]
fn mismatched_source_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut source = ProceduralDepth::new(64, 1);
    let err =
        train_vqvae(&VqVaeConfig::tiny(), &TrainVqVaeConfig::new(), &mut source, &[], dir.path(), false, &mut |_| {});
    assert!(err.is_err());
}
