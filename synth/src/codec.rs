//! PNG codecs for the dataset columns: RGB images, binary masks (8-bit gray, 0/255) and depth maps (16-bit gray
//! with a per-image scale: metres = value * scale). Encoding is deterministic.

use std::io::Cursor;

use crate::error::SynthError;

fn encode(
    what: &str,
    data: &[u8],
    width: u32,
    height: u32,
    color: png::ColorType,
    depth: png::BitDepth,
    compression: png::Compression,
) -> Result<Vec<u8>, SynthError> {
    let err = |source| SynthError::PngEncode { what: what.to_string(), source };
    let mut out = Vec::with_capacity(data.len() / 2 + 128);
    {
        let mut enc = png::Encoder::new(&mut out, width, height);
        enc.set_color(color);
        enc.set_depth(depth);
        enc.set_compression(compression);
        enc.set_filter(png::FilterType::Paeth);
        let mut writer = enc.write_header().map_err(err)?;
        writer.write_image_data(data).map_err(err)?;
        writer.finish().map_err(err)?;
    }
    Ok(out)
}

/// PNG bytes of an RGB8 image.
pub fn encode_rgb(rgb: &[u8], width: u32, height: u32) -> Result<Vec<u8>, SynthError> {
    encode("rgb image", rgb, width, height, png::ColorType::Rgb, png::BitDepth::Eight, png::Compression::Fast)
}

/// PNG bytes of an RGB8 image, compressed harder (pictures meant to be committed or shared).
pub fn encode_rgb_small(rgb: &[u8], width: u32, height: u32) -> Result<Vec<u8>, SynthError> {
    encode("rgb image", rgb, width, height, png::ColorType::Rgb, png::BitDepth::Eight, png::Compression::Best)
}

/// PNG bytes of a binary mask: 8-bit gray, 255 = inside.
pub fn encode_mask(mask: &[bool], width: u32, height: u32) -> Result<Vec<u8>, SynthError> {
    let data: Vec<u8> = mask.iter().map(|&m| if m { 255 } else { 0 }).collect();
    encode("mask", &data, width, height, png::ColorType::Grayscale, png::BitDepth::Eight, png::Compression::Fast)
}

/// The scale a depth map is stored with: the largest finite depth maps to 65535.
pub fn depth_scale(depth: &[f32]) -> f32 {
    let max = depth.iter().copied().filter(|d| d.is_finite()).fold(0.0f32, f32::max);
    if max > 0.0 { max / 65535.0 } else { 1.0 }
}

/// 16-bit PNG of a depth map quantised as round(depth / scale) (0 for non-finite or non-positive depth), and the
/// scale. Round-trip error is at most scale / 2.
pub fn encode_depth(depth: &[f32], width: u32, height: u32) -> Result<(Vec<u8>, f32), SynthError> {
    let scale = depth_scale(depth);
    let mut data = Vec::with_capacity(depth.len() * 2);
    for &d in depth {
        let v = if d.is_finite() && d > 0.0 { (d / scale).round().clamp(1.0, 65535.0) as u16 } else { 0 };
        data.extend_from_slice(&v.to_be_bytes());
    }
    let png = encode(
        "depth map",
        &data,
        width,
        height,
        png::ColorType::Grayscale,
        png::BitDepth::Sixteen,
        png::Compression::Fast,
    )?;
    Ok((png, scale))
}

/// A decoded PNG: width, height, channels, and samples (16-bit images yield one u16 per sample).
#[derive(Clone, Debug, PartialEq)]
pub struct Decoded {
    pub width: u32,
    pub height: u32,
    pub channels: u32,
    pub samples: Vec<u16>,
}

/// Decode any 8- or 16-bit gray/RGB/RGBA PNG (no palette expansion needed for our files).
pub fn decode(what: &str, bytes: &[u8]) -> Result<Decoded, SynthError> {
    let err = |source| SynthError::PngDecode { what: what.to_string(), source };
    let decoder = png::Decoder::new(Cursor::new(bytes));
    let mut reader = decoder.read_info().map_err(err)?;
    let mut buf = vec![0u8; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).map_err(err)?;
    let channels = info.color_type.samples() as u32;
    let n = (info.width * info.height * channels) as usize;
    let samples = match info.bit_depth {
        png::BitDepth::Eight => buf[..n].iter().map(|&b| b as u16).collect(),
        png::BitDepth::Sixteen => buf[..2 * n].chunks_exact(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect(),
        other => {
            return Err(SynthError::Invalid {
                what: what.to_string(),
                message: format!("unsupported bit depth {other:?}"),
            });
        }
    };
    Ok(Decoded { width: info.width, height: info.height, channels, samples })
}

/// Decode a depth PNG written by [`encode_depth`] back to metres (0 stays 0 = invalid).
pub fn decode_depth(bytes: &[u8], scale: f32) -> Result<(Vec<f32>, u32, u32), SynthError> {
    let d = decode("depth map", bytes)?;
    Ok((d.samples.iter().map(|&v| v as f32 * scale).collect(), d.width, d.height))
}

/// Decode a mask PNG (any non-zero gray value is inside).
pub fn decode_mask(bytes: &[u8]) -> Result<(Vec<bool>, u32, u32), SynthError> {
    let d = decode("mask", bytes)?;
    let c = d.channels as usize;
    Ok((d.samples.chunks_exact(c).map(|s| s[0] != 0).collect(), d.width, d.height))
}

/// Decode an RGB PNG to RGB8 bytes.
pub fn decode_rgb(bytes: &[u8]) -> Result<(Vec<u8>, u32, u32), SynthError> {
    let d = decode("rgb image", bytes)?;
    if d.channels < 3 {
        return Err(SynthError::Invalid { what: "rgb image".into(), message: format!("{} channels", d.channels) });
    }
    let c = d.channels as usize;
    let rgb = d.samples.chunks_exact(c).flat_map(|s| [s[0] as u8, s[1] as u8, s[2] as u8]).collect();
    Ok((rgb, d.width, d.height))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_round_trip_within_half_a_step() {
        let depth: Vec<f32> = (0..12).map(|i| 0.5 + i as f32 * 1.37).collect();
        let (png, scale) = encode_depth(&depth, 4, 3).unwrap();
        let (back, w, h) = decode_depth(&png, scale).unwrap();
        assert_eq!((w, h), (4, 3));
        for (a, b) in depth.iter().zip(&back) {
            assert!((a - b).abs() <= scale * 0.5 + 1e-6, "{a} vs {b}");
        }
        assert!((back[11] - depth[11]).abs() < 1e-5, "max maps to 65535 exactly");
    }

    #[test]
    fn mask_and_rgb_round_trip() {
        let mask = vec![true, false, false, true, true, false];
        let (m, w, h) = decode_mask(&encode_mask(&mask, 3, 2).unwrap()).unwrap();
        assert_eq!((m, w, h), (mask, 3, 2));
        let rgb: Vec<u8> = (0..18).map(|i| (i * 13) as u8).collect();
        let (r, _, _) = decode_rgb(&encode_rgb(&rgb, 3, 2).unwrap()).unwrap();
        assert_eq!(r, rgb);
    }
}
