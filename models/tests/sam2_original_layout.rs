//! Loading SAM2 from the original facebookresearch layout under Sa2VA's prefix: the tiny fixture's
//! weights are renamed to the original key names (by an inverse table written here independently of
//! the loader's), written with extra unrelated keys, loaded, and must reproduce the transformers
//! outputs. (Not checked against a real Sa2VA file.)

use std::path::PathBuf;

use burn::tensor::{DType, Device, Tensor};
use perceptio_models::depth::dump::{DumpTensor, write_f32_safetensors};
use perceptio_models::sam2::{Prompts, Sam2, Sam2Config};
use perceptio_models::weights::Checkpoint;

const PREFIX: &str = "grounding_encoder.sam2_model.";

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sam2")
}

/// transformers key -> original key(s) with the row of a stacked tensor they take (None = whole).
fn to_original(key: &str) -> Vec<(String, Option<usize>)> {
    let mut k = key.to_string();
    if k.starts_with("shared_image_embedding.") {
        return vec![];
    }
    if k == "prompt_encoder.point_embed.weight" {
        return (0..4).map(|i| (format!("{PREFIX}sam_prompt_encoder.point_embeddings.{i}.weight"), Some(i))).collect();
    }
    let subs: &[(&str, &str)] = &[
        ("vision_encoder.backbone.patch_embed.projection.", "image_encoder.trunk.patch_embed.proj."),
        (".layer_norm1.", ".norm1."),
        (".layer_norm2.", ".norm2."),
        (".layer_norm3.", ".norm3."),
        (".layer_norm4.", ".norm4."),
        ("vision_encoder.backbone.", "image_encoder.trunk."),
        ("prompt_encoder.mask_embed.conv1.", "prompt_encoder.mask_downscaling.0."),
        ("prompt_encoder.mask_embed.norm1.", "prompt_encoder.mask_downscaling.1."),
        ("prompt_encoder.mask_embed.conv2.", "prompt_encoder.mask_downscaling.3."),
        ("prompt_encoder.mask_embed.norm2.", "prompt_encoder.mask_downscaling.4."),
        ("prompt_encoder.mask_embed.conv3.", "prompt_encoder.mask_downscaling.6."),
        (
            "prompt_encoder.shared_embedding.positional_embedding",
            "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",
        ),
        ("prompt_encoder.", "sam_prompt_encoder."),
        (".o_proj.", ".out_proj."),
        ("transformer.layer_norm_final_attn.", "transformer.norm_final_attn."),
        ("mask_decoder.upscale_conv1.", "mask_decoder.output_upscaling.0."),
        ("mask_decoder.upscale_layer_norm.", "mask_decoder.output_upscaling.1."),
        ("mask_decoder.upscale_conv2.", "mask_decoder.output_upscaling.3."),
        ("mask_decoder.", "sam_mask_decoder."),
        ("no_memory_embedding", "no_mem_embed"),
    ];
    for (a, b) in subs {
        k = k.replace(a, b);
    }
    if let Some(rest) = k.strip_prefix("vision_encoder.neck.convs.") {
        let (n, tail) = rest.split_once('.').unwrap();
        k = format!("image_encoder.neck.convs.{n}.conv.{tail}");
    }
    // MLPs: Hiera and two-way blocks have 2 layers, heads 3.
    let three = ["output_hypernetworks_mlps", "iou_prediction_head", "pred_obj_score_head"];
    if three.iter().any(|h| k.contains(h)) {
        k = k
            .replace(".layers.0.", ".layers.1.")
            .replace(".proj_in.", ".layers.0.")
            .replace(".proj_out.", ".layers.2.");
    } else {
        k = k.replace(".mlp.proj_in.", ".mlp.layers.0.").replace(".mlp.proj_out.", ".mlp.layers.1.");
    }
    vec![(format!("{PREFIX}{k}"), None)]
}

#[test]
fn original_sa2va_layout_loads_to_the_same_outputs() {
    let device = Device::flex();
    let src = Checkpoint::open(fixture().join("model.safetensors")).unwrap();
    let mut tensors = Vec::new();
    for e in src.entries() {
        let data = src.read(&e.key, DType::F32).unwrap();
        let values: Vec<f32> = data.convert::<f32>().try_into_vec::<f32>().unwrap();
        for (name, row) in to_original(&e.key) {
            match row {
                None => tensors.push(DumpTensor { name, shape: e.shape.clone(), values: values.clone() }),
                Some(i) => {
                    let c = e.shape[1];
                    tensors.push(DumpTensor { name, shape: vec![1, c], values: values[i * c..(i + 1) * c].to_vec() });
                }
            }
        }
    }
    // Unrelated keys of the VLM and the video memory modules.
    tensors.push(DumpTensor {
        name: "language_model.model.embed_tokens.weight".into(),
        shape: vec![2, 2],
        values: vec![0.0; 4],
    });
    tensors.push(DumpTensor {
        name: format!("{PREFIX}memory_attention.layers.0.norm1.weight"),
        shape: vec![2],
        values: vec![1.0; 2],
    });
    let dir = tempfile::tempdir().unwrap();
    write_f32_safetensors(&dir.path().join("model.safetensors"), &tensors).unwrap();

    let cfg = Sam2Config::from_json_file(&fixture().join("config.json")).unwrap();
    let ckpt = Checkpoint::open(dir.path()).unwrap();
    let (sam, _) = Sam2::load(&cfg, &ckpt, &device).unwrap();
    let (reference, _) = Sam2::from_checkpoint(&fixture(), &device).unwrap();

    let io = Checkpoint::open(fixture().join("io.safetensors")).unwrap();
    let get = |k: &str| -> Tensor<4> { Tensor::from_data(io.read(k, DType::F32).unwrap(), &device) };
    let pixels = get("pixel_values");
    let prompts = Prompts {
        points: Some((
            get("point_input_points"),
            Tensor::from_data(io.read("point_input_labels", DType::F32).unwrap(), &device),
        )),
        boxes: Some(Tensor::from_data(io.read("box_input_boxes", DType::F32).unwrap(), &device)),
        ..Prompts::default()
    };
    let a = sam.predict(&sam.image_embeddings(pixels.clone()).unwrap(), &prompts, true).unwrap();
    let b = reference.predict(&reference.image_embeddings(pixels).unwrap(), &prompts, true).unwrap();
    let diff = (a.masks - b.masks).abs().max().into_scalar::<f32>();
    assert!(diff < 1e-5, "mask logits differ by {diff}");
    let diff = (a.iou_scores - b.iou_scores).abs().max().into_scalar::<f32>();
    assert!(diff < 1e-6, "iou differs by {diff}");
}
