//! Pictures a person can look at: the turbo colour map (Google's polynomial approximation), depth maps in
//! colour, mask overlays with outlines, and captioned grids of tiles, as RGB buffers or PNG files.

use std::path::Path;

use crate::codec;
use crate::draw::{Canvas, text_width};
use crate::error::SynthError;
use crate::font::GLYPH_H;

/// Turbo colour map at `x` in [0, 1] (0 = dark blue, 0.5 = green, 1 = dark red), as RGB in [0, 1]; the
/// degree-5 polynomial fit published with the colour map.
pub fn turbo(x: f32) -> [f32; 3] {
    let x = x.clamp(0.0, 1.0);
    let v = [1.0, x, x * x, x * x * x, x * x * x * x, x * x * x * x * x];
    let r = [0.135_721_38, 4.615_392_6, -42.660_322_58, 132.131_082_34, -152.942_393_96, 59.286_379_43];
    let g = [0.091_402_61, 2.194_188_39, 4.842_966_58, -14.185_033_33, 4.277_298_57, 2.829_566_04];
    let b = [0.106_673_3, 12.641_946_08, -60.582_048_36, 110.362_767_71, -89.903_109_12, 27.348_249_73];
    let dot = |c: &[f32; 6]| c.iter().zip(&v).map(|(a, b)| a * b).sum::<f32>().clamp(0.0, 1.0);
    [dot(&r), dot(&g), dot(&b)]
}

fn to_u8(v: f32) -> u8 {
    (v.clamp(0.0, 1.0) * 255.0 + 0.5) as u8
}

/// A depth map in colour: inverse depth normalised over the image's valid (finite, > 0) pixels, near = red,
/// far = blue; invalid pixels are black.
pub fn depth_to_rgb(depth: &[f32]) -> Vec<u8> {
    let valid = |d: f32| d.is_finite() && d > 0.0;
    let (mut lo, mut hi) = (f32::INFINITY, 0.0f32);
    for &d in depth.iter().filter(|&&d| valid(d)) {
        lo = lo.min(1.0 / d);
        hi = hi.max(1.0 / d);
    }
    let span = (hi - lo).max(1e-12);
    let mut out = Vec::with_capacity(depth.len() * 3);
    for &d in depth {
        if valid(d) {
            let c = turbo((1.0 / d - lo) / span);
            out.extend_from_slice(&[to_u8(c[0]), to_u8(c[1]), to_u8(c[2])]);
        } else {
            out.extend_from_slice(&[0, 0, 0]);
        }
    }
    out
}

/// `rgb` with `mask` blended in `colour` at opacity `alpha` and a solid one-pixel outline.
pub fn overlay_mask(rgb: &[u8], width: u32, height: u32, mask: &[bool], colour: [u8; 3], alpha: f32) -> Vec<u8> {
    let (w, h) = (width as usize, height as usize);
    let mut out = rgb.to_vec();
    let inside =
        |x: i64, y: i64| x >= 0 && y >= 0 && (x as usize) < w && (y as usize) < h && mask[y as usize * w + x as usize];
    for y in 0..h {
        for x in 0..w {
            let i = y * w + x;
            if !mask[i] {
                continue;
            }
            let (xi, yi) = (x as i64, y as i64);
            let edge = !(inside(xi - 1, yi) && inside(xi + 1, yi) && inside(xi, yi - 1) && inside(xi, yi + 1));
            for c in 0..3 {
                let v = out[3 * i + c] as f32;
                out[3 * i + c] =
                    if edge { colour[c] } else { (v * (1.0 - alpha) + colour[c] as f32 * alpha).round() as u8 };
            }
        }
    }
    out
}

/// Two images side by side (same height).
pub fn side_by_side(a: &[u8], b: &[u8], width: u32, height: u32) -> Vec<u8> {
    let w = width as usize;
    let mut out = Vec::with_capacity(a.len() * 2);
    for y in 0..height as usize {
        out.extend_from_slice(&a[3 * y * w..3 * (y + 1) * w]);
        out.extend_from_slice(&b[3 * y * w..3 * (y + 1) * w]);
    }
    out
}

/// One tile of a grid: an RGB image and a caption drawn under it.
#[derive(Clone, Debug, PartialEq)]
pub struct Tile {
    pub rgb: Vec<u8>,
    pub width: u32,
    pub height: u32,
    pub caption: String,
}

/// Break `text` into lines of at most `max_chars` characters at spaces.
pub fn wrap(text: &str, max_chars: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    let mut cur = String::new();
    for word in text.split_whitespace() {
        if !cur.is_empty() && cur.len() + 1 + word.len() > max_chars {
            lines.push(std::mem::take(&mut cur));
        }
        if !cur.is_empty() {
            cur.push(' ');
        }
        cur.push_str(word);
    }
    if !cur.is_empty() {
        lines.push(cur);
    }
    lines
}

/// A grid of `cols` columns: each tile with up to `caption_lines` wrapped caption lines under it, on a dark
/// background. Returns (rgb, width, height).
pub fn grid(tiles: &[Tile], cols: usize, caption_lines: usize) -> (Vec<u8>, u32, u32) {
    let pad = 6u32;
    let line_h = GLYPH_H + 2;
    let tw = tiles.iter().map(|t| t.width).max().unwrap_or(1);
    let th = tiles.iter().map(|t| t.height).max().unwrap_or(1);
    let cols = cols.max(1).min(tiles.len().max(1));
    let rows = tiles.len().div_ceil(cols).max(1);
    let cell_w = tw + pad;
    let cell_h = th + caption_lines as u32 * line_h + pad + 2;
    let (w, h) = (cols as u32 * cell_w + pad, rows as u32 * cell_h + pad);
    let mut rgb = vec![24u8; (w * h * 3) as usize];
    let max_chars = ((tw + 1) / 6) as usize;
    for (k, t) in tiles.iter().enumerate() {
        let x0 = pad + (k % cols) as u32 * cell_w;
        let y0 = pad + (k / cols) as u32 * cell_h;
        for y in 0..t.height {
            let src = &t.rgb[(3 * y * t.width) as usize..(3 * (y + 1) * t.width) as usize];
            let dst = (3 * ((y0 + y) * w + x0)) as usize;
            rgb[dst..dst + src.len()].copy_from_slice(src);
        }
        let mut canvas = Canvas { rgb: &mut rgb, width: w, height: h };
        for (l, line) in wrap(&t.caption, max_chars).iter().take(caption_lines).enumerate() {
            debug_assert!(text_width(line, 1) <= tw + 1);
            canvas.text(x0 as i32, (y0 + t.height + 2 + l as u32 * line_h) as i32, line, 1, [235, 235, 235]);
        }
    }
    (rgb, w, h)
}

/// Write an RGB image as a well-compressed PNG (temporary file, then rename).
pub fn write_png(path: &Path, rgb: &[u8], width: u32, height: u32) -> Result<(), SynthError> {
    let bytes = codec::encode_rgb_small(rgb, width, height)?;
    let tmp = path.with_extension("png.tmp");
    std::fs::write(&tmp, &bytes).map_err(|source| SynthError::Io { path: tmp.clone(), source })?;
    std::fs::rename(&tmp, path).map_err(|source| SynthError::Io { path: path.to_path_buf(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turbo_runs_blue_green_red() {
        let lo = turbo(0.1);
        let mid = turbo(0.5);
        let hi = turbo(0.9);
        assert!(lo[2] > lo[0] && lo[2] > 0.5, "{lo:?}");
        assert!(mid[1] > 0.9 && mid[1] > mid[0] && mid[1] > mid[2], "{mid:?}");
        assert!(hi[0] > 0.65 && hi[0] > 3.0 * hi[1] && hi[0] > hi[2], "{hi:?}");
        // the published polynomial evaluated independently (Python, float64): x -> rgb
        for (x, want) in
            [(0.25f32, [0.148f32, 0.740, 0.881]), (0.5, [0.589, 0.982, 0.313]), (0.75, [1.0, 0.502, 0.114])]
        {
            let got = turbo(x);
            assert!(got.iter().zip(&want).all(|(g, w)| (g - w).abs() < 0.005), "turbo({x}) = {got:?}, want {want:?}");
        }
    }

    #[test]
    fn depth_colours_put_near_in_red_and_far_in_blue() {
        // inverse depths 1, 0.1, 0.2 -> positions 1, 0, 0.11 on the colour map
        let c = depth_to_rgb(&[1.0, 10.0, 5.0, f32::INFINITY]);
        assert!(c[0] > 2 * c[2], "near is red: {:?}", &c[0..3]);
        assert!(c[3] as u32 + c[4] as u32 + c[5] as u32 > 0 && c[3..6].iter().all(|&v| v < 70), "farthest is dark");
        assert!(c[8] > 2 * c[6], "far is blue: {:?}", &c[6..9]);
        assert_eq!(&c[9..12], &[0, 0, 0]);
    }

    #[test]
    fn overlay_outlines_and_blends() {
        let rgb = vec![100u8; 5 * 5 * 3];
        let mut mask = vec![false; 25];
        for y in 1..4 {
            for x in 1..4 {
                mask[y * 5 + x] = true;
            }
        }
        let o = overlay_mask(&rgb, 5, 5, &mask, [200, 0, 0], 0.5);
        assert_eq!(&o[3 * 12..3 * 12 + 3], &[150, 50, 50], "interior blended");
        assert_eq!(&o[3 * 6..3 * 6 + 3], &[200, 0, 0], "edge solid");
        assert_eq!(&o[0..3], &[100, 100, 100], "outside untouched");
    }

    #[test]
    fn wrap_respects_width() {
        let lines = wrap("the small red cube left of the blue sphere", 12);
        assert!(lines.iter().all(|l| l.len() <= 12), "{lines:?}");
        assert_eq!(lines.join(" "), "the small red cube left of the blue sphere");
    }
}
