//! Parity of the Qwen2 decoder against transformers' Qwen2ForCausalLM (tiny random, committed
//! fixtures made by scripts/fixtures/make_qwen2.py): prompt logits, greedy generation with and
//! without the KV cache, left-padded batches, bf16 sharded weights, InternLM2 layout.

use std::path::PathBuf;

use burn::prelude::*;
use perceptio_models::llm::{GenerateOptions, generate, load_causal_lm};
use perceptio_models::weights::Checkpoint;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qwen2")
}

fn reference(key: &str) -> TensorData {
    Checkpoint::open(fixtures().join("reference.safetensors")).unwrap().read(key, burn::tensor::DType::F32).unwrap()
}

fn ids(key: &str) -> Vec<u32> {
    reference(key).convert::<i64>().try_into_vec::<i64>().unwrap().into_iter().map(|x| x as u32).collect()
}

/// max |a - b| / max |b|
fn rel_err(a: &TensorData, b: &TensorData) -> f32 {
    assert_eq!(a.shape(), b.shape());
    let a = a.clone().try_into_vec::<f32>().unwrap();
    let b = b.clone().try_into_vec::<f32>().unwrap();
    let scale = b.iter().fold(0f32, |m, x| m.max(x.abs()));
    let diff = a.iter().zip(&b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    diff / scale
}

fn device() -> Device {
    Device::default()
}

fn logits_of(dir: &str, key: &str) -> TensorData {
    let dev = device();
    let llm = load_causal_lm(fixtures().join(dir), &dev).unwrap();
    let ids = ids(key);
    let t = Tensor::<2, Int>::from_data(TensorData::new(ids.iter().map(|&x| x as i64).collect(), [1, ids.len()]), &dev);
    llm.model.forward(t).into_data()
}

#[test]
fn prompt_logits_match_transformers() {
    for (ids, logits) in [("ids_a", "logits_a"), ("ids_b", "logits_b")] {
        let got = logits_of("f32", ids);
        let err = rel_err(&got, &reference(logits));
        println!("{logits}: rel err {err:e}");
        assert!(err < 1e-4, "{logits}: relative error {err}");
    }
}

#[test]
fn bf16_sharded_checkpoint_matches() {
    let got = logits_of("bf16_sharded", "ids_a");
    // exact computation on the rounded weights
    let err = rel_err(&got, &reference("logits_a_bf16"));
    println!("bf16 vs bf16-weight reference: {err:e}");
    assert!(err < 1e-4, "{err}");
    // and close to the f32 model within bf16 rounding
    let err32 = rel_err(&got, &reference("logits_a"));
    println!("bf16 vs f32 reference: {err32:e}");
    assert!(err32 < 2e-2, "{err32}");
}

#[test]
fn internlm2_layout_loads_into_the_same_decoder() {
    let got = logits_of("internlm2", "ids_a");
    let err = rel_err(&got, &reference("logits_a_nobias"));
    println!("internlm2: {err:e}");
    assert!(err < 1e-4, "{err}");
}

#[test]
fn greedy_generation_matches_with_and_without_cache() {
    let dev = device();
    let llm = load_causal_lm(fixtures().join("f32"), &dev).unwrap();
    let a = ids("ids_a");
    let b = ids("ids_b");
    let ref_a = ids("gen_a");
    let ref_b = ids("gen_b");
    assert_eq!(ref_a.len(), 32);
    let opts = GenerateOptions::greedy(32);
    // batched, left-padded, with the cache
    let cached = generate(&llm.model, &[a.clone(), b.clone()], &opts, &dev);
    assert_eq!(cached[0], ref_a, "sequence a (batched, cached)");
    assert_eq!(cached[1], ref_b, "sequence b (batched, cached)");
    // without the cache: full forward each step
    let uncached = generate(&llm.model, &[a.clone()], &opts.clone().without_cache(), &dev);
    assert_eq!(uncached[0], ref_a, "sequence a (no cache)");
}
