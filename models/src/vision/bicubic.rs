//! Bicubic resampling weights matching PyTorch's `interpolate(mode="bicubic",
//! align_corners=False)` (cubic convolution, A = -0.75, clamped borders, no antialias).

/// Dense weight matrix `[out, in]` resampling one axis of length `input` to `output`.
pub fn bicubic_matrix(input: usize, output: usize) -> Vec<f32> {
    const A: f64 = -0.75;
    let near = |x: f64| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let far = |x: f64| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    let scale = input as f64 / output as f64;
    let mut m = vec![0f32; output * input];
    for o in 0..output {
        let src = (o as f64 + 0.5) * scale - 0.5;
        let i0 = src.floor();
        let t = src - i0;
        let coeffs = [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)];
        for (k, c) in coeffs.iter().enumerate() {
            let idx = (i0 as i64 - 1 + k as i64).clamp(0, input as i64 - 1) as usize;
            m[o * input + idx] += *c as f32;
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_when_sizes_match() {
        let m = bicubic_matrix(4, 4);
        for o in 0..4 {
            for i in 0..4 {
                let want = if o == i { 1.0 } else { 0.0 };
                assert!((m[o * 4 + i] - want).abs() < 1e-6);
            }
        }
    }

    #[test]
    fn rows_sum_to_one() {
        let m = bicubic_matrix(5, 9);
        for o in 0..9 {
            let s: f32 = m[o * 5..(o + 1) * 5].iter().sum();
            assert!((s - 1.0).abs() < 1e-5);
        }
    }
}
