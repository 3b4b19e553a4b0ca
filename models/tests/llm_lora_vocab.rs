//! LoRA (trainable alone, mergeable) and vocabulary extension on the tiny decoder.

use burn::module::Param;
use burn::prelude::*;
use perceptio_models::llm::{LoraConfig, Qwen2Config, extend_vocab, merge_lora};

fn ids(dev: &Device) -> Tensor<2, Int> {
    Tensor::from_data(TensorData::new(vec![5i64, 9, 200, 31, 7, 64], [2, 3]), dev)
}

fn max_abs_diff(a: Tensor<3>, b: Tensor<3>) -> f32 {
    (a - b).abs().max().into_scalar::<f32>()
}

#[test]
fn lora_starts_neutral_trains_alone_and_merges() {
    let dev = Device::default().autodiff();
    let base = Qwen2Config::tiny().init(&dev);
    let before = base.forward(ids(&dev)).detach();
    let lora = LoraConfig { rank: 4, alpha: 8.0, targets: vec!["q_proj".into(), "v_proj".into(), "down_proj".into()] };
    let mut model = lora.apply(base, &dev).unwrap();
    assert!(max_abs_diff(model.forward(ids(&dev)).detach(), before.clone()) < 1e-6);

    // gradients reach the adapters only
    let loss = model.forward(ids(&dev)).square().mean();
    let grads = loss.backward();
    let l0 = &model.model.layers[0];
    assert!(l0.self_attn.q_proj.lora_b.as_ref().unwrap().val().grad(&grads).is_some());
    assert!(l0.mlp.down_proj.lora_b.as_ref().unwrap().val().grad(&grads).is_some());
    assert!(l0.self_attn.q_proj.weight.val().grad(&grads).is_none(), "base weight must be frozen");
    assert!(l0.self_attn.k_proj.lora_a.is_none(), "k_proj is not a target");
    assert!(model.model.embed_tokens.weight.val().grad(&grads).is_none());
    assert!(model.lm_head.as_ref().unwrap().weight.val().grad(&grads).is_none());

    // give the adapters non-zero B, then merging keeps the outputs
    for l in model.model.layers.iter_mut() {
        for lin in [&mut l.self_attn.q_proj, &mut l.self_attn.v_proj, &mut l.mlp.down_proj] {
            let b = lin.lora_b.take().unwrap().val();
            let noise = Tensor::random(b.shape(), burn::tensor::Distribution::Normal(0.0, 0.1), &dev);
            lin.lora_b = Some(Param::from_tensor(noise));
        }
    }
    let adapted = model.forward(ids(&dev)).detach();
    assert!(max_abs_diff(adapted.clone(), before) > 1e-3, "adapters must change the output");
    let merged = merge_lora(model);
    assert!(!merged.model.layers[0].self_attn.q_proj.has_lora());
    let d = max_abs_diff(merged.forward(ids(&dev)).detach(), adapted);
    assert!(d < 1e-4, "merged differs by {d}");
}

#[test]
fn unknown_lora_target_is_rejected() {
    let dev = Device::default();
    let cfg = LoraConfig { rank: 2, alpha: 2.0, targets: vec!["qkv".into()] };
    let err = cfg.apply(Qwen2Config::tiny().init(&dev), &dev).unwrap_err();
    assert!(err.to_string().contains("`qkv`"));
}

#[test]
fn vocabulary_extension_keeps_old_logits() {
    let dev = Device::default();
    for tied in [false, true] {
        let model = Qwen2Config::tiny().with_tie_word_embeddings(tied).init(&dev);
        let before = model.forward(ids(&dev));
        let model = extend_vocab(model, 103);
        assert_eq!(model.vocab_size(), 256 + 103);
        let after = model.forward(ids(&dev)); // [2, 3, 359]
        assert_eq!(after.dims(), [2, 3, 359]);
        let old = after.clone().slice([0..2, 0..3, 0..256]);
        assert!(max_abs_diff(old, before) < 1e-5, "tied={tied}");
        // a new token can be fed
        let new_ids = Tensor::<2, Int>::from_data(TensorData::new(vec![300i64, 358], [1, 2]), &dev);
        assert_eq!(model.forward(new_ids).dims(), [1, 2, 359]);
    }
}
