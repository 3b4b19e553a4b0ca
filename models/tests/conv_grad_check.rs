//! Backend check: the autodiff gradient of a strided conv (the patch embedding's shape: kernel = stride) matches
//! finite differences.

use burn::module::Param;
use burn::nn::conv::Conv2dConfig;
use burn::prelude::*;

#[test]
fn patch_conv_weight_gradient_matches_finite_differences() {
    let device = Device::flex().autodiff();
    device.seed(1);
    let (c, d, p, g) = (3, 4, 6, 3);
    let mut conv = Conv2dConfig::new([c, d], [p, p]).with_stride([p, p]).init(&device);
    let x = Tensor::<4>::random([2, c, p * g, p * g], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
    let r = Tensor::<4>::random([2, d, g, g], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
    let w0: Vec<f32> = conv.weight.val().into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
    let loss_at = |w: Vec<f32>, conv: &mut burn::nn::conv::Conv2d| {
        conv.weight =
            Param::from_tensor(Tensor::<4>::from_data(TensorData::new(w, [d, c, p, p]), &device).require_grad());
        (conv.forward(x.clone()) * r.clone()).sum()
    };
    let loss = loss_at(w0.clone(), &mut conv);
    let grads = loss.backward();
    let g_w: Vec<f32> = conv.weight.grad(&grads).unwrap().into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
    let mut worst = 0f32;
    for i in (0..w0.len()).step_by(7) {
        let eps = 1e-2;
        let mut plus = w0.clone();
        plus[i] += eps;
        let mut minus = w0.clone();
        minus[i] -= eps;
        let lp = loss_at(plus, &mut conv).into_scalar::<f32>();
        let lm = loss_at(minus, &mut conv).into_scalar::<f32>();
        let fd = (lp - lm) / (2.0 * eps);
        worst = worst.max((fd - g_w[i]).abs() / fd.abs().max(1.0));
    }
    assert!(worst < 1e-2, "worst relative gradient error {worst}");
}
