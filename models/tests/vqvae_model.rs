//! Depth VQ-VAE: shapes, decode_soft vs decode, gradients through decode_soft, the EMA step on a
//! hand-sized example, dead-code re-seeding, straight-through gradients.

use burn::module::Param;
use burn::tensor::{Device, Distribution, Int, Tensor};
use perceptio_models::depth::{CodeScores, EmaBatch, EmaQuantizer, ProceduralDepth, QuantizerConfig, VqVaeConfig};

fn device() -> Device {
    Device::flex()
}

fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.try_into_vec_as::<f32>().unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn presets_give_100_codes() {
    let dev = device();
    for cfg in [VqVaeConfig::tiny(), VqVaeConfig::reference()] {
        assert_eq!(cfg.grid_size(), 10);
        assert_eq!(cfg.num_tokens(), 100);
        assert_eq!(cfg.num_codes, 128);
        let model = cfg.init(&dev).unwrap();
        let depth = ProceduralDepth::new(cfg.input_size, 1).batch(2, &dev);
        let ids = model.encode(depth).unwrap();
        assert_eq!(ids.dims(), [2, 100]);
        let v: Vec<i64> = ids.clone().try_into_vec_as::<i64>().unwrap();
        assert!(v.iter().all(|&i| (0..128).contains(&i)));
        let out = model.decode(ids).unwrap();
        assert_eq!(out.dims(), [2, 1, cfg.input_size, cfg.input_size]);
    }
}

#[test]
fn bad_shapes_and_ids_are_errors() {
    let dev = device();
    let model = VqVaeConfig::tiny().init(&dev).unwrap();
    assert!(model.encode(Tensor::zeros([1, 1, 64, 64], &dev)).is_err());
    assert!(model.decode(Tensor::<2, Int>::zeros([1, 99], &dev)).is_err());
    let ids = Tensor::<2, Int>::full([1, 100], 128, &dev);
    assert!(model.decode(ids).is_err());
    let bad = VqVaeConfig::new(90, vec![16, 32, 64], 8);
    assert!(bad.init(&dev).is_err());
    let logits = Tensor::<3>::zeros([1, 100, 128], &dev);
    assert!(model.decode_soft(CodeScores::Logits(logits), 0.0).is_err());
}

#[test]
fn decode_soft_with_one_hot_equals_decode() {
    let dev = device();
    let model = VqVaeConfig::tiny().init(&dev).unwrap();
    let ids = Tensor::<2>::random([2, 100], Distribution::Uniform(0.0, 128.0), &dev).int(); // [2, 100]
    let hard = host(model.decode(ids.clone()).unwrap());
    let one_hot: Tensor<3> = ids.clone().one_hot::<3>(128).float(); // [2, 100, 128]
    let soft = host(model.decode_soft(CodeScores::Probs(one_hot.clone()), 1.0).unwrap());
    let scale = hard.iter().fold(0.0f32, |m, x| m.max(x.abs())).max(1e-6);
    assert!(max_abs_diff(&hard, &soft) <= 1e-5 * scale.max(1.0), "probs path differs");
    // Very peaked logits at temperature 0.8 are one-hot after the softmax.
    let logits = one_hot.mul_scalar(200.0);
    let soft = host(model.decode_soft(CodeScores::Logits(logits), 0.8).unwrap());
    assert!(max_abs_diff(&hard, &soft) <= 1e-5 * scale.max(1.0), "logits path differs");
}

#[test]
fn decode_soft_is_not_argmax() {
    // A uniform distribution decodes the mean code, which differs from any single code's decoding.
    let dev = device();
    let model = VqVaeConfig::tiny().init(&dev).unwrap();
    let uniform = Tensor::<3>::ones([1, 100, 128], &dev).div_scalar(128.0);
    let mean = host(model.decode_soft(CodeScores::Probs(uniform), 1.0).unwrap());
    let code0 = host(model.decode(Tensor::<2, Int>::zeros([1, 100], &dev)).unwrap());
    assert!(max_abs_diff(&mean, &code0) > 1e-6);
}

#[test]
fn gradients_reach_logits_through_decode_soft() {
    let dev = device().autodiff();
    let model = VqVaeConfig::tiny().init(&dev).unwrap();
    let logits = Tensor::<3>::random([1, 100, 128], Distribution::Normal(0.0, 1.0), &dev).require_grad(); // [1, 100, 128]
    let target = Tensor::<4>::random([1, 1, 80, 80], Distribution::Uniform(-1.0, 1.0), &dev);
    let depth = model.decode_soft(CodeScores::Logits(logits.clone()), 0.8).unwrap();
    let loss = (depth - target).square().mean();
    let grads = loss.backward();
    let g = host(logits.grad(&grads).expect("logits receive a gradient"));
    assert_eq!(g.len(), 100 * 128);
    assert!(g.iter().all(|x| x.is_finite()));
    let norm: f32 = g.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!(norm > 1e-8, "gradient is zero");
    // Softmax gradients sum to zero over the code axis at every position.
    for row in g.chunks(128) {
        let s: f32 = row.iter().sum();
        let m = row.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        assert!(s.abs() <= 1e-4 * m.max(1e-12) * 128.0 + 1e-9, "row sum {s}");
    }
}

fn hand_quantizer(dev: &Device, embed: &[f32], sizes: &[f32], k: usize, d: usize) -> EmaQuantizer {
    let base = QuantizerConfig::new(k, d).with_decay(0.5).with_epsilon(0.0).init(dev);
    let e = Tensor::<1>::from_data(embed, dev).reshape([k, d]);
    // embed_avg = embed * cluster_size keeps the stored codebook consistent with its statistics.
    let s = Tensor::<1>::from_data(sizes, dev);
    EmaQuantizer {
        embed: Param::from_tensor(e.clone()).set_require_grad(false),
        cluster_size: Param::from_tensor(s.clone()).set_require_grad(false),
        embed_avg: Param::from_tensor(e * s.unsqueeze_dim::<2>(1)).set_require_grad(false),
        ..base
    }
}

#[test]
fn ema_update_on_a_hand_sized_example() {
    let dev = device();
    // K = 2 codes in 2-D at (0,0) and (10,10), each with cluster size 1; decay 0.5, no smoothing.
    let q = hand_quantizer(&dev, &[0.0, 0.0, 10.0, 10.0], &[1.0, 1.0], 2, 2);
    let z = Tensor::<1>::from_data([1.0f32, 1.0, 3.0, 3.0, 9.0, 9.0].as_slice(), &dev).reshape([3, 2]);
    let ids = q.nearest(z.clone());
    let ids_v: Vec<i64> = ids.clone().try_into_vec_as::<i64>().unwrap();
    assert_eq!(ids_v, vec![0, 0, 1]);
    let (q, reseeded) = q.ema_update(&EmaBatch { inputs: z, ids });
    assert_eq!(reseeded, 0);
    // counts [2, 1], sums [(4,4), (9,9)]
    // cluster_size = 0.5*[1,1] + 0.5*[2,1] = [1.5, 1.0]
    // embed_avg    = 0.5*[(0,0),(10,10)] + 0.5*[(4,4),(9,9)] = [(2,2), (9.5,9.5)]
    // embed        = embed_avg / cluster_size = [(4/3,4/3), (9.5,9.5)]
    let cs = host(q.cluster_size.val());
    let ea = host(q.embed_avg.val());
    let e = host(q.embed.val());
    assert!(max_abs_diff(&cs, &[1.5, 1.0]) < 1e-6, "{cs:?}");
    assert!(max_abs_diff(&ea, &[2.0, 2.0, 9.5, 9.5]) < 1e-6, "{ea:?}");
    assert!(max_abs_diff(&e, &[4.0 / 3.0, 4.0 / 3.0, 9.5, 9.5]) < 1e-5, "{e:?}");
}

#[test]
fn laplace_smoothing_matches_formula() {
    let dev = device();
    let mut q = hand_quantizer(&dev, &[0.0, 0.0, 10.0, 10.0], &[1.0, 1.0], 2, 2);
    q.epsilon = 0.1;
    let z = Tensor::<1>::from_data([1.0f32, 1.0, 3.0, 3.0, 9.0, 9.0].as_slice(), &dev).reshape([3, 2]);
    let ids = q.nearest(z.clone());
    let (q, _) = q.ema_update(&EmaBatch { inputs: z, ids });
    // n = 2.5; smoothed_k = (cs_k + 0.1) / (2.5 + 0.2) * 2.5
    let s0 = (1.5 + 0.1) / 2.7 * 2.5;
    let s1 = (1.0 + 0.1) / 2.7 * 2.5;
    let e = host(q.embed.val());
    let want = [2.0 / s0, 2.0 / s0, 9.5 / s1, 9.5 / s1];
    assert!(max_abs_diff(&e, &want) < 1e-5, "{e:?} vs {want:?}");
}

#[test]
fn dead_codes_are_reseeded_from_encoder_outputs() {
    let dev = device();
    // Code 2 sits far away with a tiny cluster size: after one step it is below the threshold.
    let q = hand_quantizer(&dev, &[0.0, 0.0, 10.0, 10.0, 500.0, 500.0], &[1.0, 1.0, 0.001], 3, 2);
    let rows = [1.0f32, 1.0, 3.0, 3.0, 9.0, 9.0];
    let z = Tensor::<1>::from_data(rows.as_slice(), &dev).reshape([3, 2]);
    let ids = q.nearest(z.clone());
    let (q, reseeded) = q.ema_update(&EmaBatch { inputs: z, ids });
    assert_eq!(reseeded, 1);
    let e = host(q.embed.val());
    let code2 = &e[4..6];
    assert!(rows.chunks(2).any(|r| max_abs_diff(r, code2) < 1e-6), "code 2 = {code2:?} is not one of the batch rows");
    let cs = host(q.cluster_size.val());
    assert!((cs[2] - 1.0).abs() < 1e-6);
    // Live codes keep their EMA values.
    assert!(max_abs_diff(&cs[..2], &[1.5, 1.0]) < 1e-6);
}

#[test]
fn straight_through_and_commitment() {
    let dev = device().autodiff();
    let q = hand_quantizer(&dev, &[0.0, 0.0, 10.0, 10.0], &[1.0, 1.0], 2, 2);
    let z = Tensor::<1>::from_data([1.0f32, 2.0, 9.0, 8.0].as_slice(), &dev).reshape([2, 2]).require_grad();
    let out = q.forward(z.clone());
    // Forward values are the codebook rows.
    assert!(max_abs_diff(&host(out.quantized.clone()), &[0.0, 0.0, 10.0, 10.0]) < 1e-6);
    // commitment = 0.25 * mean((z - q)^2) = 0.25 * (1 + 4 + 1 + 4) / 4
    let c = host(out.commitment_loss.clone())[0];
    assert!((c - 0.625).abs() < 1e-6, "{c}");
    // d/dz sum(3 * quantized) = 3 (identity through the estimator); commitment adds 0.25*2*(z-q)/4.
    let loss = out.quantized.mul_scalar(3.0).sum() + out.commitment_loss;
    let g = host(z.grad(&loss.backward()).unwrap());
    let want: Vec<f32> = [1.0f32, 2.0, -1.0, -2.0].iter().map(|d| 3.0 + 0.25 * 2.0 * d / 4.0).collect();
    assert!(max_abs_diff(&g, &want) < 1e-5, "{g:?} vs {want:?}");
}
