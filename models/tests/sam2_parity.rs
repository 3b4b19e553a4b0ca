//! SAM2 parity with transformers' Sam2Model on the tiny random fixture made by
//! scripts/fixtures/make_sam2.py: Hiera stages, FPN maps, image embeddings, prompt embeddings, and
//! mask logits / IoU / object scores for point, box, point+box, mask-input, no-prompt
//! (stability-selected single mask) and external sparse ([SEG]) prompts. Tolerance: 1e-4 of the
//! reference's largest magnitude (f32).

use std::path::PathBuf;

use burn::tensor::{DType, Device, Tensor};
use perceptio_models::sam2::{Prompts, Sam2, Sam2Config, upsample_masks};
use perceptio_models::weights::Checkpoint;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sam2")
}

struct Io {
    ckpt: Checkpoint,
    device: Device,
}

impl Io {
    fn open() -> Self {
        Self { ckpt: Checkpoint::open(fixture().join("io.safetensors")).unwrap(), device: Device::flex() }
    }
    fn get<const D: usize>(&self, key: &str) -> Tensor<D> {
        Tensor::from_data(self.ckpt.read(key, DType::F32).unwrap(), &self.device)
    }
    fn has(&self, key: &str) -> bool {
        self.ckpt.entry(key).is_some()
    }
}

fn rel_err<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f64 {
    assert_eq!(a.dims(), b.dims());
    let scale = b.clone().abs().max().into_scalar::<f32>() as f64;
    let diff = (a - b).abs().max().into_scalar::<f32>() as f64;
    diff / scale.max(1e-12)
}

fn check<const D: usize>(what: &str, a: Tensor<D>, b: Tensor<D>) {
    let e = rel_err(a, b);
    assert!(e < 1e-4, "{what}: relative error {e:.2e}");
}

fn model(io: &Io) -> Sam2 {
    let (model, report) = Sam2::from_checkpoint(&fixture(), &io.device).unwrap();
    assert!(report.applied > 100, "only {} tensors applied", report.applied);
    model
}

#[test]
fn config_and_presets() {
    let cfg = Sam2Config::from_json_file(&fixture().join("config.json")).unwrap();
    assert_eq!(cfg.image_size(), 128);
    assert_eq!(cfg.vision_config.backbone_config.blocks_per_stage, vec![1, 2, 2, 1]);
    for p in
        [Sam2Config::hiera_tiny(), Sam2Config::hiera_small(), Sam2Config::hiera_base_plus(), Sam2Config::hiera_large()]
    {
        p.validate().unwrap();
        assert_eq!(p.mask_decoder_config.hidden_size, 256);
        assert_eq!(p.image_size(), 1024);
    }
    assert_eq!(Sam2Config::hiera_large().vision_config.backbone_config.hidden_size, 144);
}

#[test]
fn image_encoder_matches_transformers() {
    let io = Io::open();
    let sam = model(&io);
    let pixels: Tensor<4> = io.get("pixel_values");
    let (stages, fpn) = sam.multi_scale(pixels.clone());
    for (i, s) in stages.into_iter().enumerate() {
        check(&format!("backbone stage {i}"), s, io.get(&format!("backbone_stage{i}")));
    }
    for (i, f) in fpn.into_iter().enumerate() {
        check(&format!("fpn level {i}"), f, io.get(&format!("fpn_{i}")));
    }
    let emb = sam.image_embeddings(pixels).unwrap();
    let fine = emb.high_res.expect("transformers' SAM2 uses the high-resolution features");
    check("feat_s0", fine.feat_s0, io.get("image_embeddings_0"));
    check("feat_s1", fine.feat_s1, io.get("image_embeddings_1"));
    check("image embedding", emb.embedding, io.get("image_embeddings_2"));
    check("image positional embedding", sam.image_positional_embeddings(), io.get("image_positional_embeddings"));
}

fn prompts(io: &Io, case: &str) -> Prompts {
    let mut p = Prompts::default();
    if io.has(&format!("{case}_input_points")) {
        p.points = Some((io.get(&format!("{case}_input_points")), io.get(&format!("{case}_input_labels"))));
    }
    if io.has(&format!("{case}_input_boxes")) {
        p.boxes = Some(io.get(&format!("{case}_input_boxes")));
    }
    if io.has(&format!("{case}_input_masks")) {
        p.masks = Some(io.get(&format!("{case}_input_masks")));
    }
    p
}

#[test]
fn masks_match_transformers_for_every_prompt_kind() {
    let io = Io::open();
    let sam = model(&io);
    let emb = sam.image_embeddings(io.get("pixel_values")).unwrap();
    for (case, multimask) in [("point", true), ("box", true), ("point_box", true), ("mask", true), ("none", false)] {
        let p = prompts(&io, case);
        // Prompt encoder alone.
        let mut pe = p.clone();
        if case == "none" {
            pe.points = Some((Tensor::zeros([1, 1, 1, 2], &io.device), Tensor::full([1, 1, 1], -1.0, &io.device)));
        }
        let (sparse, dense) = sam.prompt_encoder.forward(&pe, 1);
        check(&format!("{case} sparse"), sparse.unwrap(), io.get(&format!("{case}_sparse_embeddings")));
        check(&format!("{case} dense"), dense, io.get(&format!("{case}_dense_embeddings")));
        // Full decoder.
        let out = sam.predict(&emb, &p, multimask).unwrap();
        check(&format!("{case} mask logits"), out.masks.clone(), io.get(&format!("{case}_pred_masks")));
        check(&format!("{case} iou"), out.iou_scores, io.get(&format!("{case}_iou_scores")));
        check(&format!("{case} object score"), out.object_score_logits, io.get(&format!("{case}_object_score_logits")));
        if case == "point" {
            let [b, p, m, h, w] = out.masks.dims();
            let up = upsample_masks(out.masks.reshape([b * p, m, h, w]), [128, 128]);
            check("point upsampled masks", up, io.get("point_masks_upsampled"));
        }
    }
}

#[test]
fn external_sparse_embedding_prompt_matches_transformers() {
    let io = Io::open();
    let sam = model(&io);
    let emb = sam.image_embeddings(io.get("pixel_values")).unwrap();
    let p = Prompts { sparse: Some(io.get("seg_sparse")), ..Prompts::default() };
    let out = sam.predict(&emb, &p, false).unwrap();
    check("seg mask logits", out.masks, io.get("seg_pred_masks"));
    check("seg iou", out.iou_scores, io.get("seg_iou_scores"));
    check("seg object score", out.object_score_logits, io.get("seg_object_score_logits"));
}

#[test]
fn bad_inputs_are_errors() {
    let io = Io::open();
    let sam = model(&io);
    assert!(sam.image_embeddings(Tensor::zeros([1, 3, 64, 64], &io.device)).is_err());
    let emb = sam.image_embeddings(io.get("pixel_values")).unwrap();
    let wrong_width = Prompts { sparse: Some(Tensor::zeros([1, 1, 1, 16], &io.device)), ..Prompts::default() };
    assert!(sam.predict(&emb, &wrong_width, true).is_err());
    let wrong_mask = Prompts { masks: Some(Tensor::zeros([1, 1, 16, 16], &io.device)), ..Prompts::default() };
    assert!(sam.predict(&emb, &wrong_mask, true).is_err());
}
