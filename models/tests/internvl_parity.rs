//! Parity of InternViT, pixel shuffle + projector and the full InternVL model against
//! transformers' InternVLForConditionalGeneration (tiny random, committed fixtures made by
//! scripts/fixtures/make_internvl.py), in both checkpoint layouts.

use std::path::PathBuf;

use burn::prelude::*;
use burn::tensor::DType;
use perceptio_models::internvl::{InternVlLayout, load_internvl};
use perceptio_models::llm::GenerateOptions;
use perceptio_models::weights::Checkpoint;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/internvl")
}

fn reference(key: &str) -> TensorData {
    Checkpoint::open(fixtures().join("reference.safetensors")).unwrap().read(key, DType::F32).unwrap()
}

fn tensor4(key: &str, dev: &Device) -> Tensor<4> {
    Tensor::from_data(reference(key), dev)
}

fn ids(key: &str) -> Vec<u32> {
    reference(key).convert::<i64>().try_into_vec::<i64>().unwrap().into_iter().map(|x| x as u32).collect()
}

/// max |a - b| / max |b|
fn rel_err(a: TensorData, b: TensorData) -> f32 {
    assert_eq!(a.shape(), b.shape());
    let a = a.convert::<f32>().try_into_vec::<f32>().unwrap();
    let b = b.try_into_vec::<f32>().unwrap();
    let scale = b.iter().fold(0f32, |m, x| m.max(x.abs()));
    a.iter().zip(&b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

#[test]
fn vision_projector_and_logits_match_in_both_layouts() {
    let dev = Device::default();
    for (dir, layout) in [("hf", InternVlLayout::Transformers), ("original", InternVlLayout::Original)] {
        let mut loaded = load_internvl(fixtures().join(dir), &dev).unwrap();
        assert_eq!(loaded.layout, layout);
        // the original config.json does not carry the image-context id (it comes from the tokenizer)
        loaded.model.image_token_id = 299;
        let m = &loaded.model;
        let px = tensor4("pixel_values", &dev);
        let e = rel_err(m.vision_tower.forward(px.clone()).into_data(), reference("vision_hidden"));
        println!("{dir}: vision hidden rel err {e:e}");
        assert!(e < 1e-4, "{dir} vision: {e}");
        let e = rel_err(
            m.vision_tower.forward(tensor4("pixel_values_84", &dev)).into_data(),
            reference("vision_hidden_84"),
        );
        println!("{dir}: vision hidden (84 px, interpolated positions) rel err {e:e}");
        assert!(e < 1e-4, "{dir} vision 84: {e}");
        let e = rel_err(m.image_features(px.clone()).into_data(), reference("image_features"));
        println!("{dir}: projector output rel err {e:e}");
        assert!(e < 1e-4, "{dir} projector: {e}");
        let logits = m.forward(&[ids("input_ids")], Some(px)).unwrap();
        let e = rel_err(logits.into_data(), reference("logits"));
        println!("{dir}: logits rel err {e:e}");
        assert!(e < 1e-4, "{dir} logits: {e}");
    }
}

#[test]
fn greedy_generation_with_image_matches() {
    let dev = Device::default();
    let loaded = load_internvl(fixtures().join("hf"), &dev).unwrap();
    let px = tensor4("pixel_values", &dev);
    let want = ids("gen");
    let got = loaded.model.generate(&[ids("input_ids")], Some(px.clone()), &GenerateOptions::greedy(32)).unwrap();
    assert_eq!(got[0], want, "cached");
    let got =
        loaded.model.generate(&[ids("input_ids")], Some(px), &GenerateOptions::greedy(32).without_cache()).unwrap();
    assert_eq!(got[0], want, "uncached");
}

#[test]
fn image_token_count_mismatch_is_an_error() {
    let dev = Device::default();
    let loaded = load_internvl(fixtures().join("hf"), &dev).unwrap();
    let px = tensor4("pixel_values", &dev);
    let mut prompt = ids("input_ids");
    prompt.retain(|&t| t != 299);
    prompt.push(299);
    let err = loaded.model.forward(&[prompt], Some(px)).unwrap_err();
    assert!(err.to_string().contains("1 image-context tokens but the images give 32"), "{err}");
}
