//! The assembled Perceptio parts at the tiny size: shapes through every part, image tokens in their slots, the
//! SAM2 tiny preset equal to the parity fixture's config, and every loss term present and differentiable on a
//! hand-built batch.

use burn::tensor::{Device, Distribution, Tensor};
use perceptio_models::perceptio::loss::LossConfig;
use perceptio_models::perceptio::step::{TrainBatch, forward_terms};
use perceptio_models::perceptio::{PerceptioConfig, Sequence, SpecialTokens, TokenBatch};
use perceptio_models::sam2::Sam2Config;

const BASE: usize = 40;
const IMG: u32 = 5;

fn specials() -> SpecialTokens {
    SpecialTokens {
        seg: BASE as u32,
        d_start: BASE as u32 + 1,
        d_end: BASE as u32 + 2,
        code0: BASE as u32 + 3,
        num_codes: 128,
        im_end: 2,
        pad: 0,
        image_context: IMG,
    }
}

/// prompt: 3 text ids, 16 image ids, 2 text ids; answer per `kind`.
fn sequence(sp: &SpecialTokens, seg: bool, codes: usize) -> Sequence {
    let mut ids = vec![1, 7, 8];
    ids.extend(std::iter::repeat_n(IMG, 16));
    ids.extend([9, 10]);
    let prompt_len = ids.len();
    let mut seg_pos = None;
    if seg {
        seg_pos = Some(ids.len());
        ids.push(sp.seg);
    }
    let depth_start = Some(ids.len());
    ids.push(sp.d_start);
    ids.extend((0..codes).map(|k| sp.code(k % 128)));
    let depth_end = Some(ids.len());
    ids.push(sp.d_end);
    ids.extend([11, 12, sp.im_end]);
    Sequence { ids, prompt_len, seg_pos, depth_start, depth_end }
}

#[test]
fn sam2_tiny_preset_matches_the_fixture_config() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sam2/config.json");
    let fixture = Sam2Config::from_json_file(&path).unwrap();
    let tiny = Sam2Config::tiny();
    assert_eq!(serde_json::to_value(&tiny).unwrap(), serde_json::to_value(&fixture).unwrap());
}

#[test]
fn tiny_parts_have_the_documented_shapes_and_every_term_trains() {
    let device = Device::flex().autodiff();
    device.seed(1);
    let mut cfg = PerceptioConfig::tiny(BASE, IMG as usize);
    cfg.seg_grounding = true;
    assert_eq!(cfg.image_tokens(), 16);
    let model = cfg.init(&device).unwrap();
    let sp = specials();
    let seqs = vec![sequence(&sp, true, 100), sequence(&sp, false, 100)];
    let tokens = TokenBatch::new(seqs, sp.pad);
    let b = 2;
    let pixels = Tensor::<4>::random([b, 3, 112, 112], Distribution::Normal(0.0, 1.0), &device);
    let image = model.image.forward(pixels.clone()); // [2, 16, 128]
    assert_eq!(image.dims(), [b, 16, 128]);
    let out = model.llm.forward(&tokens.ids, Some(image.clone())).unwrap();
    assert_eq!(out.logits.dims(), [b, tokens.seq_len(), BASE + 131]);
    // a prompt with the wrong number of image slots is refused with the counts
    let mut bad = tokens.ids.clone();
    bad[0][3] = 1;
    let err = model.llm.forward(&bad, Some(image)).unwrap_err().to_string();
    assert!(err.contains("image tokens"), "{err}");

    let masks = Tensor::<3>::random([b, 128, 128], Distribution::Bernoulli(0.3), &device);
    let batch = TrainBatch {
        tokens,
        pixels,
        sam_pixels: Tensor::<4>::random([b, 3, 128, 128], Distribution::Normal(0.0, 1.0), &device),
        masks,
        depth: Tensor::<4>::random([b, 1, 80, 80], Distribution::Uniform(-1.0, 1.0), &device),
    };
    let loss_cfg = LossConfig::new();
    let terms = forward_terms(&model, &batch, &sp, &loss_cfg, cfg.depth_temperature).unwrap();
    let v = terms.values(&loss_cfg);
    for (name, x) in v.terms() {
        let x = x.unwrap_or_else(|| panic!("{name} missing"));
        assert!(x.is_finite() && x >= 0.0, "{name} = {x}");
    }
    let grads = terms.total(&loss_cfg).unwrap().backward();
    let g = model.llm.new_head.val().grad(&grads).expect("added-token head rows get a gradient");
    assert!(g.abs().sum().into_scalar::<f32>() > 0.0);
    let g = model.seg.text_hidden_fcs.fc1.weight.val().grad(&grads).expect("[SEG] projection gets a gradient");
    assert!(g.abs().sum().into_scalar::<f32>() > 0.0);
    let grounding = model.seg.seg_grounding.as_ref().expect("the config asks for the grounding map");
    for (name, w) in [("key", &grounding.key.weight), ("pixel_key", &grounding.pixel_key.weight)] {
        let g = w.val().grad(&grads).unwrap_or_else(|| panic!("the grounding map's {name} gets no gradient"));
        assert!(g.abs().sum().into_scalar::<f32>() > 0.0, "{name}");
    }
    // a grounding model refuses a [SEG] state without its image-token states
    let levels = model.seg.encode(batch.sam_pixels.clone()).unwrap();
    let err = model.seg.forward(Tensor::<2>::zeros([b, 128], &device), None, levels).unwrap_err().to_string();
    assert!(err.contains("image-token states"), "{err}");
    // the frozen SAM2 encoder and VQ-VAE get none
    assert!(model.seg.sam2.vision_encoder.neck.convs[0].weight.val().grad(&grads).is_none());
}

#[test]
fn aligned_image_gives_one_token_per_depth_code() {
    let device = Device::flex();
    let mut cfg = PerceptioConfig::tiny(BASE, IMG as usize);
    cfg.align_image_with_depth_grid();
    cfg.validate().unwrap();
    let grid = cfg.vqvae.grid_size();
    assert_eq!(cfg.image_tokens(), cfg.vqvae.num_tokens());
    assert_eq!(cfg.vlm.vision.image_size, grid * 14);
    assert_eq!((cfg.vlm.shuffle, cfg.vlm.text.rope_theta, cfg.image_last), (1, 1e4, true));
    // the image part yields that many tokens
    let part = cfg.init_image(&device);
    let side = cfg.vlm.vision.image_size;
    let pixels = Tensor::<4>::random([1, 3, side, side], Distribution::Normal(0.0, 1.0), &device);
    assert_eq!(part.forward(pixels).dims(), [1, grid * grid, 128]);
}

#[test]
fn the_span_at_its_image_cells_needs_one_image_token_per_code() {
    let mut cfg = PerceptioConfig::tiny(BASE, IMG as usize);
    cfg.span_at_image_positions = true;
    // the tiny preset's 16 image tokens against a 100-code span
    let err = cfg.validate().unwrap_err().to_string();
    assert!(err.contains("`span_at_image_positions`") && err.contains("16 tokens") && err.contains("100"), "{err}");
    assert!(cfg.span_positions().is_some());
    cfg.align_image_with_depth_grid();
    cfg.validate().unwrap();
    let rule = cfg.span_positions().unwrap();
    assert_eq!(
        (rule.image_token, rule.d_start, rule.code0, rule.num_codes),
        (IMG, BASE as u32 + 1, BASE as u32 + 3, 128)
    );
    cfg.span_at_image_positions = false;
    assert!(cfg.span_positions().is_none(), "off by default: one position per token");
}

#[test]
fn the_soft_argmax_point_is_the_weighted_mean_of_the_cell_centres() {
    use perceptio_models::perceptio::model::soft_argmax_point;
    let device = Device::flex();
    // 4 x 4 cells over a 128 px image (32 px each): a map peaked at column 2, row 1 -> that cell's centre
    let mut peak = vec![-30.0f32; 16];
    peak[4 + 2] = 30.0;
    let uniform = vec![0.0f32; 16];
    // half the mass on cell (0, 0), half on cell (3, 3) -> the midpoint of their centres
    let mut two = vec![-30.0f32; 16];
    two[0] = 5.0;
    two[15] = 5.0;
    let maps =
        Tensor::<4>::from_data(burn::tensor::TensorData::new([peak, uniform, two].concat(), [3, 1, 4, 4]), &device);
    let p = soft_argmax_point(maps, 128).into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
    let want = [2.5 * 32.0 - 0.5, 1.5 * 32.0 - 0.5, 63.5, 63.5, 63.5, 63.5];
    for (got, want) in p.iter().zip(want) {
        assert!((got - want).abs() < 1e-3, "{p:?}");
    }
}

#[test]
fn the_point_from_the_map_needs_the_map_and_reaches_the_mask() {
    let mut cfg = PerceptioConfig::tiny(BASE, IMG as usize);
    cfg.seg_point_from_map = true;
    let err = cfg.validate().unwrap_err().to_string();
    assert!(err.contains("`seg_point_from_map`") && err.contains("seg_grounding"), "{err}");
    cfg.seg_grounding = true;
    cfg.validate().unwrap();
    let device = Device::flex();
    device.seed(4);
    let mut seg = cfg.init_seg(&device).unwrap();
    assert!(seg.point_from_map);
    let pixels = Tensor::<4>::random([2, 3, 128, 128], Distribution::Normal(0.0, 1.0), &device);
    let seg_hidden = Tensor::<2>::random([2, 128], Distribution::Normal(0.0, 1.0), &device);
    let image_hidden = Tensor::<3>::random([2, 16, 128], Distribution::Normal(0.0, 1.0), &device);
    let run = |seg: &perceptio_models::perceptio::SegPart| {
        let levels = seg.encode(pixels.clone()).unwrap();
        let (logits, map) = seg.forward_with_map(seg_hidden.clone(), Some(image_hidden.clone()), levels).unwrap();
        let host = |t: Tensor<3>| t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
        (host(logits), host(map.unwrap().reshape([2, 32, 32])))
    };
    let (with_point, map_a) = run(&seg);
    seg.point_from_map = false;
    let (without, map_b) = run(&seg);
    assert_eq!(map_a, map_b, "the map does not depend on the point");
    let change = with_point.iter().zip(&without).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(change > 1e-4, "the point prompt did not reach the mask (max change {change})");
    // the point is the map's soft arg-max in SAM2 input pixels: SAM2 prompted by hand with the [SEG] projection
    // and that point, plus the map, gives the same logits
    use perceptio_models::perceptio::model::soft_argmax_point;
    use perceptio_models::sam2::Prompts;
    let map = Tensor::<4>::from_data(burn::tensor::TensorData::new(map_a.clone(), [2, 1, 32, 32]), &device);
    let point = soft_argmax_point(map.clone(), 128); // [2, 1, 1, 2]
    let sparse = seg.text_hidden_fcs.forward(seg_hidden.clone()); // [2, C]
    let c = sparse.dims()[1];
    let sparse = sparse.reshape([2, 1, 1, c]);
    let prompts = Prompts {
        points: Some((point, Tensor::<3>::ones([2, 1, 1], &device))),
        sparse: Some(sparse),
        ..Prompts::default()
    };
    let image = seg.sam2.embeddings_from_levels(seg.encode(pixels.clone()).unwrap());
    let by_hand =
        seg.sam2.predict(&image, &prompts, false).unwrap().masks.reshape([2, 32, 32]) + map.reshape([2, 32, 32]);
    let by_hand = by_hand.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
    let off = with_point.iter().zip(&by_hand).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(off < 1e-4, "the mask differs from SAM2 prompted at the map's soft arg-max by {off}");
}
