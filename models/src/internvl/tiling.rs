//! Dynamic tiling of an input image as InternVL's image processor does it: pick the tile grid
//! (1..=12 tiles of 448) whose aspect ratio is closest to the image's, resize the image to that
//! canvas, cut it into tiles, append a thumbnail (the whole image at one tile) when there is more
//! than one tile, then scale to [0, 1] and normalise (ImageNet mean/std).
//!
//! Resizing is bicubic with antialiasing (cubic a = -0.5 with support widened by the scale when
//! downsampling, as torchvision / PIL / `interpolate(..., antialias=True)`), rounded to 8 bits.

use std::path::Path;

/// An 8-bit RGB image, row-major `[h, w, 3]`.
#[derive(Debug, Clone, PartialEq)]
pub struct RgbImage {
    pub height: usize,
    pub width: usize,
    pub data: Vec<u8>,
}

/// Tiling and normalisation settings.
#[derive(Debug, Clone, PartialEq)]
pub struct TilingConfig {
    pub tile: usize,
    pub min_tiles: usize,
    pub max_tiles: usize,
    pub use_thumbnail: bool,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Default for TilingConfig {
    fn default() -> Self {
        Self {
            tile: 448,
            min_tiles: 1,
            max_tiles: 12,
            use_thumbnail: true,
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
        }
    }
}

/// Errors reading an image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{path}: {message}")]
    Decode { path: String, message: String },
}

/// Reads a PNG file (gray, gray+alpha, RGB, RGBA; 8 or 16 bit) as RGB.
pub fn load_png(path: impl AsRef<Path>) -> Result<RgbImage, ImageError> {
    let path = path.as_ref();
    let err = |message: String| ImageError::Decode { path: path.display().to_string(), message };
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    decode_png_rgb(&bytes).map_err(err)
}

/// Decodes PNG bytes (gray, gray+alpha, RGB, RGBA; 8 or 16 bit) to 8-bit RGB, row-major `[h, w, 3]`.
/// The one PNG reader of the model side; dataflow nodes use it too.
pub fn decode_png_rgb(bytes: &[u8]) -> Result<RgbImage, String> {
    let mut decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder.read_info().map_err(|e| format!("undecodable PNG: {e}"))?;
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).map_err(|e| format!("undecodable PNG: {e}"))?;
    let (w, h) = (info.width as usize, info.height as usize);
    let channels = match info.color_type {
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        png::ColorType::Indexed => return Err("indexed colour after expansion".into()),
    };
    let mut data = Vec::with_capacity(w * h * 3);
    for px in buf[..w * h * channels].chunks(channels) {
        match channels {
            1 | 2 => data.extend_from_slice(&[px[0], px[0], px[0]]),
            _ => data.extend_from_slice(&px[..3]),
        }
    }
    Ok(RgbImage { height: h, width: w, data })
}

/// The `(columns, rows)` tile grid for an image of `height x width` (transformers'
/// `get_optimal_tiled_canvas`, the original `find_closest_aspect_ratio`).
pub fn best_grid(height: usize, width: usize, cfg: &TilingConfig) -> (usize, usize) {
    let mut grids = Vec::new();
    for c in 1..=cfg.max_tiles {
        for r in 1..=cfg.max_tiles {
            let n = c * r;
            if n >= cfg.min_tiles && n <= cfg.max_tiles {
                grids.push((c, r));
            }
        }
    }
    grids.sort_by_key(|(c, r)| c * r); // stable, like Python's sorted
    let aspect = width as f64 / height as f64;
    let area = (width * height) as f64;
    let tile_area = (cfg.tile * cfg.tile) as f64;
    let mut best = (1, 1);
    let mut best_diff = f64::INFINITY;
    for (c, r) in grids {
        let diff = (aspect - c as f64 / r as f64).abs();
        if diff < best_diff {
            best_diff = diff;
            best = (c, r);
        } else if diff == best_diff && area > 0.5 * tile_area * (c * r) as f64 {
            best = (c, r);
        }
    }
    best
}

/// Antialiased bicubic weights for one axis: per output, (first input index, weights).
fn aa_weights(input: usize, output: usize) -> Vec<(usize, Vec<f64>)> {
    const A: f64 = -0.5;
    let cubic = |x: f64| {
        let x = x.abs();
        if x < 1.0 {
            ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
        } else if x < 2.0 {
            (((x - 5.0) * x + 8.0) * x - 4.0) * A
        } else {
            0.0
        }
    };
    let scale = input as f64 / output as f64;
    let support = if scale >= 1.0 { 2.0 * scale } else { 2.0 };
    let inv = if scale >= 1.0 { 1.0 / scale } else { 1.0 };
    (0..output)
        .map(|i| {
            let center = scale * (i as f64 + 0.5);
            let lo = ((center - support + 0.5) as i64).max(0) as usize;
            let hi = ((center + support + 0.5) as i64).min(input as i64) as usize;
            let mut w: Vec<f64> = (lo..hi).map(|j| cubic((j as f64 - center + 0.5) * inv)).collect();
            let total: f64 = w.iter().sum();
            if total != 0.0 {
                w.iter_mut().for_each(|x| *x /= total);
            }
            (lo, w)
        })
        .collect()
}

/// Resizes to `out_h x out_w` (antialiased bicubic, separable, float), rounded to 8 bits.
pub fn resize(img: &RgbImage, out_h: usize, out_w: usize) -> RgbImage {
    let (h, w) = (img.height, img.width);
    let wx = aa_weights(w, out_w);
    let wy = aa_weights(h, out_h);
    let mut tmp = vec![0f64; h * out_w * 3]; // horizontal pass
    for y in 0..h {
        for (x, (lo, ws)) in wx.iter().enumerate() {
            for c in 0..3 {
                let mut acc = 0.0;
                for (k, wk) in ws.iter().enumerate() {
                    acc += wk * img.data[(y * w + lo + k) * 3 + c] as f64;
                }
                tmp[(y * out_w + x) * 3 + c] = acc;
            }
        }
    }
    let mut data = vec![0u8; out_h * out_w * 3];
    for (y, (lo, ws)) in wy.iter().enumerate() {
        for x in 0..out_w {
            for c in 0..3 {
                let mut acc = 0.0;
                for (k, wk) in ws.iter().enumerate() {
                    acc += wk * tmp[((lo + k) * out_w + x) * 3 + c];
                }
                data[(y * out_w + x) * 3 + c] = acc.round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    RgbImage { height: out_h, width: out_w, data }
}

/// Tiles of an image, normalised, as `[tiles, 3, tile, tile]` (flat, row-major) and the count.
pub fn tile_image(img: &RgbImage, cfg: &TilingConfig) -> (Vec<f32>, usize) {
    let (cols, rows) = best_grid(img.height, img.width, cfg);
    let t = cfg.tile;
    let canvas = resize(img, rows * t, cols * t);
    let mut tiles: Vec<RgbImage> = Vec::new();
    for i in 0..cols * rows {
        let (c, r) = (i % cols, i / cols);
        let mut data = Vec::with_capacity(t * t * 3);
        for y in 0..t {
            let start = ((r * t + y) * canvas.width + c * t) * 3;
            data.extend_from_slice(&canvas.data[start..start + t * 3]);
        }
        tiles.push(RgbImage { height: t, width: t, data });
    }
    if cfg.use_thumbnail && tiles.len() != 1 {
        tiles.push(resize(img, t, t));
    }
    let n = tiles.len();
    let mut out = Vec::with_capacity(n * 3 * t * t);
    for tile in &tiles {
        for c in 0..3 {
            for p in 0..t * t {
                let v = tile.data[p * 3 + c] as f32 / 255.0;
                out.push((v - cfg.mean[c]) / cfg.std[c]);
            }
        }
    }
    (out, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_follows_aspect_ratio() {
        let cfg = TilingConfig::default();
        assert_eq!(best_grid(448, 448, &cfg), (1, 1));
        assert_eq!(best_grid(448, 896, &cfg), (2, 1));
        assert_eq!(best_grid(1000, 300, &cfg), (1, 3));
        // a large square image prefers more tiles on ties
        // ties go to more tiles while the image area exceeds half the canvas (transformers: (3, 3))
        assert_eq!(best_grid(2000, 2000, &cfg), (3, 3));
    }

    #[test]
    fn resize_keeps_a_constant_image() {
        let img = RgbImage { height: 30, width: 50, data: vec![77; 30 * 50 * 3] };
        for (h, w) in [(10, 17), (61, 90), (30, 50)] {
            let out = resize(&img, h, w);
            assert!(out.data.iter().all(|&v| v == 77));
        }
    }
}
