//! PNG in and out for the depth tools: reading RGB images, writing 8/16-bit grey and RGB PNGs
//! atomically (temp file + rename), a colour map for depth, and the input-vs-reconstruction grid.

use std::io::BufWriter;
use std::path::{Path, PathBuf};

use super::error::DepthError;

/// An 8-bit RGB image, row-major, 3 bytes per pixel.
#[derive(Debug, Clone)]
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<u8>,
}

fn file_err(path: &Path, reason: impl ToString) -> DepthError {
    DepthError::File { path: path.to_path_buf(), reason: reason.to_string() }
}

/// Reads a PNG (grey, grey+alpha, RGB, RGBA; 8 or 16 bit) as 8-bit RGB.
pub fn read_rgb_png(path: &Path) -> Result<RgbImage, DepthError> {
    let file = std::fs::File::open(path).map_err(|source| DepthError::Io { path: path.to_path_buf(), source })?;
    let mut decoder = png::Decoder::new(std::io::BufReader::new(file));
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder.read_info().map_err(|e| file_err(path, e))?;
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).map_err(|e| file_err(path, e))?;
    let (w, h) = (info.width as usize, info.height as usize);
    let data = &buf[..info.buffer_size()];
    let channels = match info.color_type {
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        png::ColorType::Indexed => return Err(file_err(path, "indexed PNG was not expanded")),
    };
    let mut pixels = Vec::with_capacity(w * h * 3);
    for px in data.chunks(channels) {
        match channels {
            1 | 2 => pixels.extend([px[0], px[0], px[0]]),
            _ => pixels.extend([px[0], px[1], px[2]]),
        }
    }
    Ok(RgbImage { width: w, height: h, pixels })
}

/// Writes `bytes` through `write` into a temp file beside `path`, then renames it over `path`.
pub fn write_atomic(
    path: &Path,
    write: impl FnOnce(&mut dyn std::io::Write) -> Result<(), String>,
) -> Result<(), DepthError> {
    let tmp = temp_path(path);
    let result = (|| {
        let file = std::fs::File::create(&tmp).map_err(|e| e.to_string())?;
        let mut w = BufWriter::new(file);
        write(&mut w)?;
        let file = w.into_inner().map_err(|e| e.to_string())?;
        file.sync_all().map_err(|e| e.to_string())
    })();
    if let Err(reason) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(file_err(path, reason));
    }
    std::fs::rename(&tmp, path).map_err(|source| DepthError::Io { path: path.to_path_buf(), source })
}

/// `dir/.name.tmp` for `dir/name`.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp"))
}

fn write_png(
    path: &Path,
    width: usize,
    height: usize,
    color: png::ColorType,
    depth: png::BitDepth,
    data: &[u8],
) -> Result<(), DepthError> {
    write_atomic(path, |w| {
        let mut enc = png::Encoder::new(w, width as u32, height as u32);
        enc.set_color(color);
        enc.set_depth(depth);
        let mut writer = enc.write_header().map_err(|e| e.to_string())?;
        writer.write_image_data(data).map_err(|e| e.to_string())?;
        writer.finish().map_err(|e| e.to_string())
    })
}

/// 8-bit grey PNG from values in [lo, hi] (clamped).
pub fn write_gray8(
    path: &Path,
    width: usize,
    height: usize,
    values: &[f32],
    lo: f32,
    hi: f32,
) -> Result<(), DepthError> {
    let span = (hi - lo).max(1e-12);
    let data: Vec<u8> = values.iter().map(|v| (((v - lo) / span).clamp(0.0, 1.0) * 255.0).round() as u8).collect();
    write_png(path, width, height, png::ColorType::Grayscale, png::BitDepth::Eight, &data)
}

/// 16-bit grey PNG, min-max scaled to the full range (values are relative).
pub fn write_gray16_minmax(path: &Path, width: usize, height: usize, values: &[f32]) -> Result<(), DepthError> {
    let (lo, hi) = min_max(values);
    let span = (hi - lo).max(1e-12);
    let mut data = Vec::with_capacity(values.len() * 2);
    for v in values {
        let q = (((v - lo) / span).clamp(0.0, 1.0) * 65535.0).round() as u16;
        data.extend(q.to_be_bytes());
    }
    write_png(path, width, height, png::ColorType::Grayscale, png::BitDepth::Sixteen, &data)
}

/// RGB PNG.
pub fn write_rgb(path: &Path, image: &RgbImage) -> Result<(), DepthError> {
    write_png(path, image.width, image.height, png::ColorType::Rgb, png::BitDepth::Eight, &image.pixels)
}

/// Min and max of a slice (0, 0 when empty).
pub fn min_max(values: &[f32]) -> (f32, f32) {
    if values.is_empty() {
        return (0.0, 0.0);
    }
    values.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)))
}

/// A perceptual dark-blue -> teal -> yellow ramp for t in [0, 1] (piecewise linear through five
/// stops; near = bright).
pub fn colormap(t: f32) -> [u8; 3] {
    const STOPS: [[f32; 3]; 5] =
        [[0.05, 0.03, 0.25], [0.23, 0.32, 0.55], [0.13, 0.57, 0.55], [0.45, 0.78, 0.33], [0.99, 0.91, 0.15]];
    let t = t.clamp(0.0, 1.0) * (STOPS.len() - 1) as f32;
    let i = (t.floor() as usize).min(STOPS.len() - 2);
    let f = t - i as f32;
    let mut out = [0u8; 3];
    for c in 0..3 {
        let v = STOPS[i][c] * (1.0 - f) + STOPS[i + 1][c] * f;
        out[c] = (v * 255.0).round() as u8;
    }
    out
}

/// Colour-mapped RGB image of values, min-max scaled.
pub fn colorize(width: usize, height: usize, values: &[f32]) -> RgbImage {
    let (lo, hi) = min_max(values);
    let span = (hi - lo).max(1e-12);
    let mut pixels = Vec::with_capacity(width * height * 3);
    for v in values {
        pixels.extend(colormap((v - lo) / span));
    }
    RgbImage { width, height, pixels }
}

/// A grid of square grey maps in [-1, 1]: one row per entry of `rows`, `side` pixels per map, a
/// 2-pixel gap. Used for the inputs-vs-reconstructions picture.
pub fn write_grid(path: &Path, side: usize, rows: &[Vec<Vec<f32>>]) -> Result<(), DepthError> {
    let gap = 2;
    let cols = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let width = cols * (side + gap) + gap;
    let height = rows.len() * (side + gap) + gap;
    let mut data = vec![255u8; width * height];
    for (r, row) in rows.iter().enumerate() {
        for (c, map) in row.iter().enumerate() {
            let (x0, y0) = (gap + c * (side + gap), gap + r * (side + gap));
            for y in 0..side {
                for x in 0..side {
                    let v = map.get(y * side + x).copied().unwrap_or(0.0);
                    data[(y0 + y) * width + x0 + x] = (((v + 1.0) * 0.5).clamp(0.0, 1.0) * 255.0).round() as u8;
                }
            }
        }
    }
    write_png(path, width, height, png::ColorType::Grayscale, png::BitDepth::Eight, &data)
}
