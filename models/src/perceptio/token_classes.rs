//! The pieces every "each image token names a class" pretraining shares (the marker letters, the objects' shapes
//! and colours): checking a host batch of images with per-token labels against the encoder, the log-probabilities
//! of a linear head over the image tokens, each token's negative log-likelihood and its arg-max class.

use burn::nn::Linear;
use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor, TensorData};

use super::image_pretrain::ImagePretrainError;

/// Checks `pixels` values of `[B, 3, P, P]` images of side `found.0` with `found.1 x found.1` labels per image
/// against an encoder that takes `want.0` px and makes `want.1 x want.1` tokens; `labels` names each label
/// vector with its length and class count, each of which must hold `B * g * g` classes in `0..classes`.
/// Returns B (at least 1).
pub fn check_token_batch(
    found: (usize, usize),
    want: (usize, usize),
    pixels: usize,
    labels: &[(&str, &[i64], usize)],
) -> Result<usize, ImagePretrainError> {
    let ((p, g), (image_size, grid)) = (found, want);
    if p != image_size || g != grid {
        return Err(ImagePretrainError::Batch(format!(
            "{p} px images with {g}x{g} token classes, but the encoder takes {image_size} px and makes \
             {grid}x{grid} tokens"
        )));
    }
    let b = labels.first().map_or(0, |(_, v, _)| v.len() / (g * g).max(1));
    let n = b * g * g;
    if b == 0 || pixels != b * 3 * p * p || labels.iter().any(|(_, v, _)| v.len() != n) {
        let lens: Vec<String> = labels.iter().map(|(what, v, _)| format!("{} {what} classes", v.len())).collect();
        return Err(ImagePretrainError::Batch(format!(
            "{pixels} pixel values and {} do not make B >= 1 samples of [3, {p}, {p}] and [{g}, {g}]",
            lens.join(" and ")
        )));
    }
    for (what, values, k) in labels {
        if let Some(c) = values.iter().find(|&&c| !(0..*k as i64).contains(&c)) {
            return Err(ImagePretrainError::Batch(format!("{what} class {c} is not in 0..{k}")));
        }
    }
    Ok(b)
}

/// Class log-probabilities `[B*T, C]` of the linear `head` over image tokens `[B, T, d]`.
pub fn token_log_probs(head: &Linear, tokens: Tensor<3>) -> Tensor<2> {
    let [b, t, _] = tokens.dims();
    let c = head.weight.dims()[1];
    let logits = head.forward(tokens).reshape([b * t, c]); // [B*T, C]
    log_softmax(logits, 1) // [B*T, C]
}

/// `-log p(class)` of every token `[N, 1]`, from log-probabilities `[N, C]` and the `N` classes.
pub fn token_nll(log_probs: Tensor<2>, classes: Vec<i64>) -> Tensor<2> {
    let n = classes.len();
    let targets = Tensor::<2, Int>::from_data(TensorData::new(classes, [n, 1]), &log_probs.device()); // [N, 1]
    log_probs.gather(1, targets).neg() // [N, 1]
}

/// `sum_i w_i * nll_i / sum_i w_i` of per-token losses `[N, 1]` and their `N` weights (0 when every weight is).
pub fn weighted_mean(nll: Tensor<2>, weights: Vec<f32>) -> Tensor<1> {
    let n = weights.len();
    let total: f32 = weights.iter().sum::<f32>().max(f32::MIN_POSITIVE);
    let w = Tensor::<2>::from_data(TensorData::new(weights, [n, 1]), &nll.device()); // [N, 1]
    (nll * w).sum() / total // [1]
}

/// The arg-max class of every token of log-probabilities `[N, C]`, on the host.
pub fn token_argmax(log_probs: Tensor<2>) -> Result<Vec<i64>, ImagePretrainError> {
    log_probs
        .argmax(1) // [N, 1]
        .into_data()
        .convert::<i64>()
        .try_to_vec::<i64>()
        .map_err(|e| ImagePretrainError::Batch(format!("reading the predicted classes: {e:?}")))
}

#[cfg(test)]
mod tests {
    use burn::module::Param;
    use burn::nn::LinearConfig;
    use burn::tensor::Device;

    use super::*;

    #[test]
    fn batches_are_checked_against_the_encoder_and_their_classes() {
        let (a, b) = (vec![0i64; 8], vec![1i64; 8]);
        // two 4 px images with 2x2 tokens each
        let ok = check_token_batch((4, 2), (4, 2), 2 * 3 * 16, &[("shape", &a, 3), ("colour", &b, 2)]);
        assert_eq!(ok.unwrap(), 2);
        let err = check_token_batch((4, 3), (4, 2), 96, &[("token", &a, 3)]).unwrap_err().to_string();
        assert!(err.contains("2x2 tokens"), "{err}");
        let err = check_token_batch((4, 2), (4, 2), 95, &[("token", &a, 3)]).unwrap_err().to_string();
        assert!(err.contains("95 pixel values and 8 token classes"), "{err}");
        let err = check_token_batch((4, 2), (4, 2), 96, &[("shape", &a, 3), ("colour", &b[..4], 2)]).unwrap_err();
        assert!(err.to_string().contains("8 shape classes and 4 colour classes"), "{err}");
        let err = check_token_batch((4, 2), (4, 2), 96, &[("colour", &b, 1)]).unwrap_err().to_string();
        assert!(err.contains("colour class 1 is not in 0..1"), "{err}");
        assert!(check_token_batch((4, 2), (4, 2), 0, &[("token", &[], 3)]).is_err(), "no sample");
    }

    /// One image of two tokens of width 2: (2, 0) and (0, 3).
    fn tokens2(device: &Device) -> Tensor<3> {
        Tensor::<3>::from_data(TensorData::new(vec![2f32, 0., 0., 3.], [1, 2, 2]), device)
    }

    #[test]
    fn a_head_scores_each_token_and_picks_its_class() {
        let device = Device::flex();
        // two tokens of width 2; the identity head makes the token values the logits
        let mut head = LinearConfig::new(2, 2).init(&device);
        head.weight =
            Param::from_tensor(Tensor::<2>::from_data(TensorData::new(vec![1f32, 0., 0., 1.], [2, 2]), &device));
        head.bias = head.bias.map(|b| Param::from_tensor(b.val().zeros_like()));
        let logp = token_log_probs(&head, tokens2(&device)); // [2, 2]
        assert_eq!(token_argmax(logp.clone()).unwrap(), vec![0, 1]);
        let nll: Vec<f32> = token_nll(logp, vec![0, 0]).into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
        // -log softmax([2, 0])[0] and -log softmax([0, 3])[0]
        let want = [(1.0 + (-2f32).exp()).ln(), (1.0 + 3f32.exp()).ln()];
        assert!(nll.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-5), "{nll:?} vs {want:?}");
        // weights 3 and 1: (3 * want0 + want1) / 4
        let mean = weighted_mean(token_nll(token_log_probs(&head, tokens2(&device)), vec![0, 0]), vec![3.0, 1.0]);
        let want_mean = (3.0 * want[0] + want[1]) / 4.0;
        assert!((mean.into_scalar::<f32>() - want_mean).abs() < 1e-5);
    }
}
