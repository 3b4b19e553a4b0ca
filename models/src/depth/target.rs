//! Tokenizer targets from metric depth: a dataset row's 16-bit grey depth PNG and its scale (metres per
//! unit) become the square map in [-1, 1] the VQ-VAE takes.
//!
//! The recipe, shared by training (`train-vqvae --source synth|parquet`, the `vqvae-train` node) and
//! encoding (the `depth-encode` node), so both see the same maps:
//! 1. metres = PNG value * `depth_scale`; a pixel is valid when its depth is finite and positive (PNG
//!    value 0 means "no depth": sky, nothing hit, sensor drop-out);
//! 2. relative disparity 1/z; invalid pixels take the smallest valid disparity, i.e. they count as the
//!    farthest valid depth (so a sky region becomes -1, as far as the far ground);
//! 3. resize to `side x side` in disparity: exact area averaging (fractional pixel overlaps) along an
//!    axis that shrinks, bilinear (pixel centres aligned) along one that grows; a non-square map is
//!    stretched, not cropped;
//! 4. per-map min-max normalisation to [-1, 1], +1 = nearest. A constant map (all valid depths equal,
//!    up to a relative 1e-6) gives all zeros, never NaN.
//!
//! Output is row-major, `side * side` values.

use super::error::DepthError;

/// Relative spread under which a map counts as constant.
const FLAT: f32 = 1e-6;

fn input_err(field: &'static str, reason: impl Into<String>) -> DepthError {
    DepthError::Input { field, reason: reason.into() }
}

/// Decodes a 16-bit (or 8-bit) greyscale PNG into raw values, row-major; returns (values, width, height).
pub fn decode_gray_png(png: &[u8]) -> Result<(Vec<u16>, usize, usize), DepthError> {
    let mut decoder = png::Decoder::new(std::io::Cursor::new(png));
    decoder.set_transformations(png::Transformations::IDENTITY);
    let mut reader = decoder.read_info().map_err(|e| input_err("depth", format!("not a readable PNG: {e}")))?;
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).map_err(|e| input_err("depth", format!("PNG data is corrupt: {e}")))?;
    let (w, h) = (info.width as usize, info.height as usize);
    if info.color_type != png::ColorType::Grayscale {
        return Err(input_err("depth", format!("PNG is {:?}, expected 16-bit greyscale", info.color_type)));
    }
    let data = &buf[..info.buffer_size()];
    let values: Vec<u16> = match info.bit_depth {
        png::BitDepth::Sixteen => data.chunks_exact(2).map(|b| u16::from_be_bytes([b[0], b[1]])).collect(),
        png::BitDepth::Eight => data.iter().map(|&b| b as u16).collect(),
        other => return Err(input_err("depth", format!("PNG has {other:?}-bit samples, expected 16 (or 8)"))),
    };
    if w == 0 || h == 0 || values.len() != w * h {
        return Err(input_err("depth", format!("PNG holds {} samples for {w}x{h} pixels", values.len())));
    }
    Ok((values, w, h))
}

/// The tokenizer target of a depth PNG (see the module docs): `side * side` values in [-1, 1].
/// Errors name the problem: a scale that is not positive (0 = the row has no depth), a PNG that does
/// not decode or is not greyscale, a map with no valid pixel.
pub fn depth_target_from_png(png: &[u8], depth_scale: f32, side: usize) -> Result<Vec<f32>, DepthError> {
    if !(depth_scale.is_finite() && depth_scale > 0.0) {
        let why = if depth_scale == 0.0 { " (0 means the row has no depth)" } else { "" };
        return Err(input_err("depth_scale", format!("{depth_scale} is not a positive scale{why}")));
    }
    let (raw, w, h) = decode_gray_png(png)?;
    let metres: Vec<f32> = raw.iter().map(|&v| v as f32 * depth_scale).collect();
    depth_target(&metres, w, h, side)
}

/// The tokenizer target of a metric depth map `width x height` (row-major, metres; 0 or non-finite =
/// invalid): `side * side` values in [-1, 1] (see the module docs).
pub fn depth_target(metres: &[f32], width: usize, height: usize, side: usize) -> Result<Vec<f32>, DepthError> {
    if side == 0 {
        return Err(input_err("side", "the target side must be positive"));
    }
    if width == 0 || height == 0 || metres.len() != width * height {
        return Err(input_err("depth", format!("{} values for a {width}x{height} map", metres.len())));
    }
    let valid = |z: f32| z.is_finite() && z > 0.0;
    let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
    for &z in metres.iter().filter(|&&z| valid(z)) {
        let d = 1.0 / z;
        lo = lo.min(d);
        hi = hi.max(d);
    }
    if !(lo.is_finite() && hi.is_finite()) {
        return Err(input_err("depth", "no pixel has a valid (positive, finite) depth"));
    }
    if hi - lo <= FLAT * hi {
        return Ok(vec![0.0; side * side]);
    }
    let disparity: Vec<f32> = metres.iter().map(|&z| if valid(z) { (1.0 / z).max(lo) } else { lo }).collect();
    let mut out = resize(&disparity, width, height, side);
    normalise_signed(&mut out);
    Ok(out)
}

/// Per output index along one axis: the source indices and weights that make it up.
fn axis_weights(src: usize, dst: usize) -> Vec<Vec<(usize, f32)>> {
    let scale = src as f64 / dst as f64;
    (0..dst)
        .map(|o| {
            if src == dst {
                vec![(o, 1.0)]
            } else if scale > 1.0 {
                // Area: overlap of source pixel [i, i + 1) with [o * scale, (o + 1) * scale).
                let (a, b) = (o as f64 * scale, (o + 1) as f64 * scale);
                let first = a.floor() as usize;
                let last = (b.ceil() as usize).min(src);
                (first..last)
                    .map(|i| {
                        let overlap = (b.min(i as f64 + 1.0) - a.max(i as f64)).max(0.0);
                        (i, (overlap / scale) as f32)
                    })
                    .filter(|&(_, w)| w > 0.0)
                    .collect()
            } else {
                // Bilinear with pixel centres aligned.
                let f = ((o as f64 + 0.5) * scale - 0.5).clamp(0.0, (src - 1) as f64);
                let i0 = f.floor() as usize;
                let i1 = (i0 + 1).min(src - 1);
                let t = (f - i0 as f64) as f32;
                vec![(i0, 1.0 - t), (i1, t)]
            }
        })
        .collect()
}

/// Separable resize of a `width x height` map to `side x side` (area when shrinking, bilinear when growing).
fn resize(src: &[f32], width: usize, height: usize, side: usize) -> Vec<f32> {
    if width == side && height == side {
        return src.to_vec();
    }
    let wx = axis_weights(width, side);
    let wy = axis_weights(height, side);
    // Rows first: [height, side].
    let mut rows = vec![0f32; height * side];
    for y in 0..height {
        let line = &src[y * width..(y + 1) * width];
        for (x, ws) in wx.iter().enumerate() {
            rows[y * side + x] = ws.iter().map(|&(i, w)| line[i] * w).sum();
        }
    }
    let mut out = vec![0f32; side * side];
    for (y, ws) in wy.iter().enumerate() {
        for x in 0..side {
            out[y * side + x] = ws.iter().map(|&(i, w)| rows[i * side + x] * w).sum();
        }
    }
    out
}

/// Min-max normalises to [-1, 1] in place; a map flat up to a relative [`FLAT`] becomes zeros.
fn normalise_signed(values: &mut [f32]) {
    let (lo, hi) = values.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let span = hi - lo;
    // NaN-safe: a NaN span counts as flat.
    let flat = span.partial_cmp(&(FLAT * hi.abs().max(lo.abs()))) != Some(std::cmp::Ordering::Greater);
    for v in values.iter_mut() {
        *v = if flat { 0.0 } else { (2.0 * (*v - lo) / span - 1.0).clamp(-1.0, 1.0) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A greyscale PNG of `values` (16-bit unless `eight`), made with the png crate.
    fn gray_png(width: u32, height: u32, values: &[u16], eight: bool) -> Vec<u8> {
        let mut out = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut out, width, height);
            enc.set_color(png::ColorType::Grayscale);
            let data: Vec<u8> = if eight {
                enc.set_depth(png::BitDepth::Eight);
                values.iter().map(|&v| v as u8).collect()
            } else {
                enc.set_depth(png::BitDepth::Sixteen);
                values.iter().flat_map(|v| v.to_be_bytes()).collect()
            };
            let mut w = enc.write_header().unwrap();
            w.write_image_data(&data).unwrap();
        }
        out
    }

    fn close(a: &[f32], b: &[f32], tol: f32) {
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= tol, "index {i}: {x} vs {y} (all: {a:?})");
        }
    }

    #[test]
    fn disparity_is_normalised_nearest_to_plus_one() {
        // Units of 0.5 m: 2 -> 1 m, 4 -> 2 m, 8 -> 4 m. Disparities 1, 0.5, 0.25 span 0.75.
        let png = gray_png(3, 1, &[2, 4, 8], false);
        let t = depth_target_from_png(&png, 0.5, 3).unwrap();
        // (0.5 - 0.25) / 0.75 * 2 - 1 = -1/3; the single row is stretched to all three output rows.
        let row = [1.0, -1.0 / 3.0, -1.0];
        close(&t, &[row, row, row].concat(), 1e-6);
    }

    #[test]
    fn invalid_pixels_count_as_the_farthest_depth() {
        // Row-major 2x2: 1 m, no depth, 2 m, 4 m.
        let png = gray_png(2, 2, &[100, 0, 200, 400], false);
        let t = depth_target_from_png(&png, 0.01, 2).unwrap();
        // Disparities 1, (far = 0.25), 0.5, 0.25.
        close(&t, &[1.0, -1.0, -1.0 / 3.0, -1.0], 1e-6);
        assert!(t.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn a_constant_map_gives_zeros_not_nan() {
        let png = gray_png(5, 3, &[700; 15], false);
        for side in [3, 4, 8] {
            let t = depth_target_from_png(&png, 0.003, side).unwrap();
            assert_eq!(t, vec![0.0; side * side], "side {side}");
        }
        // Constant up to invalid pixels is still constant.
        let png = gray_png(2, 2, &[0, 700, 700, 0], false);
        assert_eq!(depth_target_from_png(&png, 0.003, 2).unwrap(), vec![0.0; 4]);
    }

    #[test]
    fn shrinking_averages_disparity_over_areas() {
        // 4x4 in 2x2 blocks of 1 m, 2 m (top) and 4 m, 1 m (bottom) -> block disparities 1, .5, .25, 1.
        #[rustfmt::skip]
        let units = [
            1, 1, 2, 2,
            1, 1, 2, 2,
            4, 4, 1, 1,
            4, 4, 1, 1,
        ];
        let png = gray_png(4, 4, &units, false);
        let t = depth_target_from_png(&png, 1.0, 2).unwrap();
        close(&t, &[1.0, -1.0 / 3.0, -1.0, 1.0], 1e-6);

        // A 3 -> 2 shrink overlaps pixels fractionally: out 0 = (d0 + d1 / 2) / 1.5, out 1 = (d1 / 2 + d2) / 1.5;
        // the single source row is stretched to both output rows.
        let out = resize(&[1.0, 0.5, 0.25], 3, 1, 2);
        let (a, b) = ((1.0 + 0.25) / 1.5, (0.25 + 0.25) / 1.5);
        close(&out, &[a, b, a, b], 1e-6);
        // Whole-pixel blocks along one axis.
        let png = gray_png(6, 1, &[1, 1, 2, 2, 4, 4], false);
        let t = depth_target_from_png(&png, 1.0, 3).unwrap();
        close(&t[..3], &[1.0, -1.0 / 3.0, -1.0], 1e-6);
    }

    #[test]
    fn growing_is_bilinear_and_keeps_the_extremes() {
        let png = gray_png(2, 1, &[1, 4], false);
        let t = depth_target_from_png(&png, 1.0, 4).unwrap();
        // Centres aligned: x = 0 and 3 clamp to the source pixels, x = 1, 2 sit at 1/4 and 3/4 between them.
        let row = [1.0, 0.5, -0.5, -1.0];
        close(&t[..4], &row, 1e-6);
        close(&t[12..], &row, 1e-6);
    }

    #[test]
    fn eight_bit_greyscale_is_accepted() {
        let png = gray_png(3, 1, &[2, 4, 8], true);
        close(&depth_target_from_png(&png, 0.5, 3).unwrap()[..3], &[1.0, -1.0 / 3.0, -1.0], 1e-6);
    }

    #[test]
    fn errors_name_the_problem() {
        let png = gray_png(2, 1, &[1, 2], false);
        let err = depth_target_from_png(&png, 0.0, 4).unwrap_err().to_string();
        assert_eq!(err, "depth map `depth_scale`: 0 is not a positive scale (0 means the row has no depth)");
        let err = depth_target_from_png(&png, f32::NAN, 4).unwrap_err().to_string();
        assert!(err.contains("`depth_scale`: NaN"), "{err}");
        let err = depth_target_from_png(b"not a png at all", 1.0, 4).unwrap_err().to_string();
        assert!(err.starts_with("depth map `depth`: not a readable PNG"), "{err}");
        let err = depth_target_from_png(&gray_png(2, 2, &[0; 4], false), 1.0, 4).unwrap_err().to_string();
        assert_eq!(err, "depth map `depth`: no pixel has a valid (positive, finite) depth");
        let mut rgb = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut rgb, 1, 1);
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            enc.write_header().unwrap().write_image_data(&[1, 2, 3]).unwrap();
        }
        let err = depth_target_from_png(&rgb, 1.0, 4).unwrap_err().to_string();
        assert_eq!(err, "depth map `depth`: PNG is Rgb, expected 16-bit greyscale");
        let err = depth_target_from_png(&png, 1.0, 0).unwrap_err().to_string();
        assert!(err.contains("`side`"), "{err}");
    }
}
