//! The checkpoint layer: problems are reported together and by name before anything runs;
//! modules save back to safetensors and load again to the same outputs.

use std::path::PathBuf;

use burn::prelude::*;
use burn::tensor::DType;
use perceptio_models::llm::{LlmFamily, Qwen2Config, llm_key_table, load_causal_lm};
use perceptio_models::weights::{
    Checkpoint, KeyProblem, KeyTable, LoadOptions, WeightsError, load_module, save_module, write_tensors,
};

fn qwen2_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qwen2/f32")
}

/// Copies the tiny Qwen2 checkpoint into `dir`, passing each tensor through `edit`
/// (None drops it).
fn edited_copy(dir: &std::path::Path, edit: impl Fn(&str, TensorData) -> Option<TensorData>) {
    std::fs::copy(qwen2_dir().join("config.json"), dir.join("config.json")).unwrap();
    let ck = Checkpoint::open(qwen2_dir()).unwrap();
    let tensors = ck
        .entries()
        .filter_map(|e| edit(&e.key, ck.read(&e.key, DType::F32).unwrap()).map(|d| (e.key.clone(), d)))
        .collect();
    write_tensors(dir.join("model.safetensors"), tensors).unwrap();
}

#[test]
fn missing_key_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    edited_copy(tmp.path(), |k, d| (k != "model.layers.1.mlp.up_proj.weight").then_some(d));
    let err = load_causal_lm(tmp.path(), &Device::default()).unwrap_err();
    let msg = err.to_string();
    println!("{msg}");
    assert!(msg.contains("missing key `model.layers.1.mlp.up_proj.weight`"), "{msg}");
}

#[test]
fn wrong_shape_is_named_and_all_problems_are_reported_together() {
    let tmp = tempfile::tempdir().unwrap();
    edited_copy(tmp.path(), |k, d| match k {
        "model.layers.0.self_attn.k_proj.weight" => {
            let v = d.try_into_vec::<f32>().unwrap();
            Some(TensorData::new(v[..v.len() / 2].to_vec(), [16, 64]))
        }
        "model.norm.weight" => None,
        _ => Some(d),
    });
    let err = load_causal_lm(tmp.path(), &Device::default()).unwrap_err();
    let msg = err.to_string();
    println!("{msg}");
    assert!(
        msg.contains("shape mismatch for `model.layers.0.self_attn.k_proj.weight`")
            && msg.contains("expects [32, 64]")
            && msg.contains("has [16, 64]"),
        "{msg}"
    );
    assert!(msg.contains("missing key `model.norm.weight`"), "{msg}");
}

#[test]
fn unexpected_key_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    edited_copy(tmp.path(), |_, d| Some(d));
    // add a stray tensor
    let ck = Checkpoint::open(tmp.path()).unwrap();
    let mut all: Vec<_> = ck.entries().map(|e| (e.key.clone(), ck.read(&e.key, DType::F32).unwrap())).collect();
    drop(ck);
    all.push(("model.layers.7.extra.weight".into(), TensorData::new(vec![0f32; 4], [4])));
    write_tensors(tmp.path().join("model.safetensors"), all).unwrap();
    let mut model = Qwen2Config::tiny().init(&Device::default());
    let ck = Checkpoint::open(tmp.path()).unwrap();
    let table = llm_key_table(LlmFamily::Qwen2, &Qwen2Config::tiny()).unwrap();
    match load_module(&mut model, &ck, &table, &LoadOptions::default()) {
        Err(WeightsError::Mismatch { problems, .. }) => {
            assert_eq!(
                problems,
                vec![KeyProblem::Unexpected {
                    key: "model.layers.7.extra.weight".into(),
                    checkpoint_key: "model.layers.7.extra.weight".into()
                }]
            );
        }
        other => panic!("expected a mismatch, got {other:?}"),
    }
    // tolerated when asked
    let opts = LoadOptions { allow_unexpected: true, ..Default::default() };
    let report = load_module(&mut model, &ck, &table, &opts).unwrap();
    assert_eq!(report.skipped, vec!["model.layers.7.extra.weight".to_string()]);
}

#[test]
fn save_then_load_gives_the_same_logits() {
    let dev = Device::default();
    let llm = load_causal_lm(qwen2_dir(), &dev).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(qwen2_dir().join("config.json"), tmp.path().join("config.json")).unwrap();
    let n = save_module(&llm.model, tmp.path().join("model.safetensors"), &KeyTable::identity()).unwrap();
    assert_eq!(n, Checkpoint::open(qwen2_dir()).unwrap().len());
    // the saved file has the same keys and shapes as the transformers checkpoint
    let a = Checkpoint::open(qwen2_dir()).unwrap();
    let b = Checkpoint::open(tmp.path()).unwrap();
    for e in a.entries() {
        assert_eq!(b.entry(&e.key).map(|x| x.shape.clone()), Some(e.shape.clone()), "{}", e.key);
    }
    let again = load_causal_lm(tmp.path(), &dev).unwrap();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(vec![3i64, 17, 42, 9], [1, 4]), &dev);
    let x = llm.model.forward(ids.clone()).into_data().try_into_vec::<f32>().unwrap();
    let y = again.model.forward(ids).into_data().try_into_vec::<f32>().unwrap();
    assert_eq!(x, y);
}
