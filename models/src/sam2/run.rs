//! One-call segmentation of an RGB image on the CPU, for the `perceptio segment` command: image
//! preprocessing, prompt scaling to the model input, mask prediction and upsampling to the image.

use std::path::Path;

use burn::tensor::{Device, Tensor};

use super::error::Sam2Error;
use super::model::{Sam2, preprocess, upsample_masks};
use super::prompt::Prompts;
use crate::depth::image::RgbImage;

/// Prompts in image pixels.
#[derive(Debug, Clone, Default)]
pub struct SegmentRequest {
    /// Points `(x, y)` with `true` = positive, `false` = negative.
    pub points: Vec<([f32; 2], bool)>,
    /// Box `x0, y0, x1, y1`.
    pub bbox: Option<[f32; 4]>,
    /// Three candidate masks (else one, stability-selected).
    pub multimask: bool,
}

/// Masks for one image.
#[derive(Debug, Clone)]
pub struct SegmentResult {
    pub width: usize,
    pub height: usize,
    /// Number of masks M.
    pub num_masks: usize,
    /// Side of the low-resolution logits.
    pub low_res: [usize; 2],
    /// Low-resolution logits `[M, h, w]`.
    pub low_res_logits: Vec<f32>,
    /// Logits at image resolution `[M, H, W]`.
    pub logits: Vec<f32>,
    /// Predicted IoU per mask `[M]`.
    pub iou_scores: Vec<f32>,
    pub object_score_logit: f32,
    /// Index of the mask with the highest predicted IoU.
    pub best: usize,
}

/// Loads a transformers `Sam2Model` checkpoint on the CPU.
pub fn load_cpu(dir: &Path) -> Result<Sam2, Sam2Error> {
    Ok(Sam2::from_checkpoint(dir, &Device::flex())?.0)
}

fn host<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>, Sam2Error> {
    t.try_into_vec_as::<f32>().map_err(|e| Sam2Error::Weights(e.to_string()))
}

/// `[3, H, W]` tensor in [0, 1] from an RGB image.
pub fn image_tensor(image: &RgbImage, device: &Device) -> Tensor<3> {
    let (w, h) = (image.width, image.height);
    let mut planar = vec![0f32; 3 * w * h];
    for (i, px) in image.pixels.chunks(3).enumerate() {
        for c in 0..3 {
            planar[c * w * h + i] = px[c] as f32 / 255.0;
        }
    }
    Tensor::<1>::from_data(planar.as_slice(), device).reshape([3, h, w]) // [3, H, W]
}

/// Segments `image` with `request` (coordinates in image pixels).
pub fn segment(sam: &Sam2, image: &RgbImage, request: &SegmentRequest) -> Result<SegmentResult, Sam2Error> {
    let device = sam.no_memory_embedding.device();
    let (w, h) = (image.width, image.height);
    if w == 0 || h == 0 || image.pixels.len() != 3 * w * h {
        return Err(Sam2Error::Shape {
            what: "image",
            expected: "a non-empty RGB image".into(),
            got: format!("{w}x{h} with {} bytes", image.pixels.len()),
        });
    }
    let s = sam.image_size;
    let (sx, sy) = (s as f32 / w as f32, s as f32 / h as f32);
    let embeddings = sam.image_embeddings(preprocess(image_tensor(image, &device), s))?;
    let mut prompts = Prompts::default();
    if !request.points.is_empty() {
        let n = request.points.len();
        let coords: Vec<f32> = request.points.iter().flat_map(|(p, _)| [p[0] * sx, p[1] * sy]).collect();
        let labels: Vec<f32> = request.points.iter().map(|(_, pos)| if *pos { 1.0 } else { 0.0 }).collect();
        prompts.points = Some((
            Tensor::<1>::from_data(coords.as_slice(), &device).reshape([1, 1, n, 2]),
            Tensor::<1>::from_data(labels.as_slice(), &device).reshape([1, 1, n]),
        ));
    }
    if let Some(b) = request.bbox {
        let scaled = [b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy];
        prompts.boxes = Some(Tensor::<1>::from_data(scaled.as_slice(), &device).reshape([1, 1, 4]));
    }
    let out = sam.predict(&embeddings, &prompts, request.multimask)?;
    let [_, _, m, lh, lw] = out.masks.dims();
    let low = out.masks.reshape([1, m, lh, lw]); // [1, M, h, w]
    // As the transformers post-processing: to the model input size, then to the image size.
    let full = upsample_masks(upsample_masks(low.clone(), [s, s]), [h, w]); // [1, M, H, W]
    let iou_scores = host(out.iou_scores)?;
    let best = iou_scores.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i).unwrap_or(0);
    Ok(SegmentResult {
        width: w,
        height: h,
        num_masks: m,
        low_res: [lh, lw],
        low_res_logits: host(low)?,
        logits: host(full)?,
        iou_scores,
        object_score_logit: host(out.object_score_logits)?.first().copied().unwrap_or(0.0),
        best,
    })
}
