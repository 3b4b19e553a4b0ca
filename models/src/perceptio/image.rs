//! Image preparation shared by training and inference: bilinear resizing of channel-major RGB and ImageNet
//! normalisation, producing the inputs of the image encoder and the SAM2 encoder.

use crate::sam2::model::{IMAGENET_MEAN, IMAGENET_STD};

/// Decodes a PNG to channel-major RGB `[3, h, w]` in [0, 1]; returns (pixels, h, w).
pub fn decode_png_planar(png: &[u8]) -> Result<(Vec<f32>, usize, usize), String> {
    let img = crate::internvl::decode_png_rgb(png)?;
    Ok((planar_from_rgb8(&img.data, img.height, img.width), img.height, img.width))
}

/// Row-major interleaved RGB8 `[h, w, 3]` -> channel-major `[3, h, w]` in [0, 1].
pub fn planar_from_rgb8(rgb: &[u8], h: usize, w: usize) -> Vec<f32> {
    let mut out = vec![0f32; 3 * h * w];
    for (i, px) in rgb.chunks_exact(3).take(h * w).enumerate() {
        for c in 0..3 {
            out[c * h * w + i] = px[c] as f32 / 255.0;
        }
    }
    out
}

/// Bilinear resize of a `[3, h, w]` image to `[3, size, size]` (pixel centres aligned, as `align_corners=False`).
pub fn resize_bilinear(src: &[f32], h: usize, w: usize, size: usize) -> Vec<f32> {
    if h == size && w == size {
        return src.to_vec();
    }
    let mut out = vec![0f32; 3 * size * size];
    let sy = h as f32 / size as f32;
    let sx = w as f32 / size as f32;
    for y in 0..size {
        let fy = ((y as f32 + 0.5) * sy - 0.5).clamp(0.0, (h - 1) as f32);
        let (y0, ty) = (fy.floor() as usize, fy - fy.floor());
        let y1 = (y0 + 1).min(h - 1);
        for x in 0..size {
            let fx = ((x as f32 + 0.5) * sx - 0.5).clamp(0.0, (w - 1) as f32);
            let (x0, tx) = (fx.floor() as usize, fx - fx.floor());
            let x1 = (x0 + 1).min(w - 1);
            for c in 0..3 {
                let p = |yy: usize, xx: usize| src[c * h * w + yy * w + xx];
                let top = p(y0, x0) * (1.0 - tx) + p(y0, x1) * tx;
                let bottom = p(y1, x0) * (1.0 - tx) + p(y1, x1) * tx;
                out[c * size * size + y * size + x] = top * (1.0 - ty) + bottom * ty;
            }
        }
    }
    out
}

/// ImageNet normalisation of a `[3, size, size]` image in [0, 1], in place.
pub fn normalise_imagenet(mut img: Vec<f32>, size: usize) -> Vec<f32> {
    for c in 0..3 {
        for v in &mut img[c * size * size..(c + 1) * size * size] {
            *v = (*v - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
        }
    }
    img
}

/// A `[3, h, w]` RGB image in [0, 1] -> the `[3, size, size]` normalised input of an encoder.
pub fn encoder_input(rgb: &[f32], h: usize, w: usize, size: usize) -> Vec<f32> {
    normalise_imagenet(resize_bilinear(rgb, h, w, size), size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_constant_image_stays_constant_and_is_normalised_per_channel() {
        let (h, w) = (5, 7);
        let rgb: Vec<f32> = (0..3).flat_map(|c| vec![0.25 * (c + 1) as f32; h * w]).collect();
        let out = encoder_input(&rgb, h, w, 4);
        for c in 0..3 {
            let want = (0.25 * (c + 1) as f32 - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
            assert!(out[c * 16..(c + 1) * 16].iter().all(|v| (v - want).abs() < 1e-5));
        }
    }

    #[test]
    fn downscaling_by_two_averages_pixel_pairs() {
        // one channel row 0..8 -> 4 samples at the centres of pairs
        let (h, w) = (8, 8);
        let rgb: Vec<f32> = (0..3).flat_map(|_| (0..h * w).map(|i| (i % w) as f32)).collect();
        let out = resize_bilinear(&rgb, h, w, 4);
        assert_eq!(&out[0..4], &[0.5, 2.5, 4.5, 6.5]);
    }
}
