//! Checkpoint key tables for SAM2: the transformers-native `Sam2Model` layout (module fields are
//! named after it, so only the video-tracking keys are dropped) and the original facebookresearch
//! layout (`image_encoder.trunk.*`, `sam_prompt_encoder.*`, `sam_mask_decoder.*`), possibly under a
//! prefix such as Sa2VA's `grounding_encoder.sam2_model.`. Two original tensors have no one-to-one
//! module path (the four `point_embeddings.N` rows and the Fourier matrix shared by the prompt
//! encoder and the image positional embedding); [`patch_original`] sets them after the load.

use burn::module::Param;
use burn::tensor::{DType, Tensor};

use super::config::Sam2Config;
use super::error::Sam2Error;
use super::model::Sam2;
use super::model::weights_err;
use crate::weights::{Checkpoint, KeyTable, LoadOptions};

/// Keys of the video model (memory attention/encoder, object pointers) that the image model lacks.
const VIDEO_ONLY: [&str; 8] = [
    r"^memory_",
    r"^mask_downsample",
    r"^object_pointer_proj",
    r"^temporal_positional_encoding_projection_layer",
    r"^no_memory_positional_encoding",
    r"^no_object_pointer",
    r"^occlusion_spatial_embedding_parameter",
    r"^memory_temporal_positional_encoding",
];

/// The transformers-native table.
pub fn transformers_table() -> Result<KeyTable, Sam2Error> {
    let mut table = KeyTable::identity();
    for p in VIDEO_ONLY {
        table = table.ignore(p).map_err(weights_err)?;
    }
    Ok(table)
}

/// Checkpoint layouts SAM2 weights come in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// transformers `Sam2Model`.
    Transformers,
    /// facebookresearch SAM2 under `prefix` (empty, or e.g. `grounding_encoder.sam2_model.`).
    Original { prefix: String },
}

/// Detects the layout from the keys.
pub fn detect(ckpt: &Checkpoint) -> Result<Layout, Sam2Error> {
    if ckpt.entries().any(|e| e.key.starts_with("vision_encoder.backbone.")) {
        return Ok(Layout::Transformers);
    }
    let marker = "image_encoder.trunk.patch_embed.proj.weight";
    if let Some(e) = ckpt.entries().find(|e| e.key.ends_with(marker)) {
        return Ok(Layout::Original { prefix: e.key[..e.key.len() - marker.len()].to_string() });
    }
    Err(Sam2Error::File {
        path: ckpt.root().to_path_buf(),
        reason: "no SAM2 keys (neither `vision_encoder.backbone.*` nor `*image_encoder.trunk.*`)".into(),
    })
}

/// The original-layout table (see the module doc).
pub fn original_table(prefix: &str) -> Result<KeyTable, Sam2Error> {
    let p = regex_escape(prefix);
    let rules: Vec<(String, &str)> = vec![
        (format!(r"^{p}image_encoder\.trunk\.patch_embed\.proj\."), "vision_encoder.backbone.patch_embed.projection."),
        (format!(r"^{p}image_encoder\.trunk\."), "vision_encoder.backbone."),
        (format!(r"^{p}image_encoder\.neck\.convs\.(\d+)\.conv\."), "vision_encoder.neck.convs.$1."),
        (format!(r"^{p}sam_prompt_encoder\."), "prompt_encoder."),
        (format!(r"^{p}sam_mask_decoder\."), "mask_decoder."),
        (format!(r"^{p}no_mem_embed$"), "no_memory_embedding"),
        (r"^(vision_encoder\.backbone\.blocks\.\d+)\.norm(\d)\.".into(), "$1.layer_norm$2."),
        (r"^(vision_encoder\.backbone\.blocks\.\d+\.mlp)\.layers\.0\.".into(), "$1.proj_in."),
        (r"^(vision_encoder\.backbone\.blocks\.\d+\.mlp)\.layers\.1\.".into(), "$1.proj_out."),
        (r"^prompt_encoder\.mask_downscaling\.0\.".into(), "prompt_encoder.mask_embed.conv1."),
        (r"^prompt_encoder\.mask_downscaling\.1\.".into(), "prompt_encoder.mask_embed.layer_norm1."),
        (r"^prompt_encoder\.mask_downscaling\.3\.".into(), "prompt_encoder.mask_embed.conv2."),
        (r"^prompt_encoder\.mask_downscaling\.4\.".into(), "prompt_encoder.mask_embed.layer_norm2."),
        (r"^prompt_encoder\.mask_downscaling\.6\.".into(), "prompt_encoder.mask_embed.conv3."),
        (r"^(mask_decoder\.transformer\.layers\.\d+)\.norm(\d)\.".into(), "$1.layer_norm$2."),
        (r"^(mask_decoder\.transformer\.layers\.\d+\.mlp)\.layers\.0\.".into(), "$1.proj_in."),
        (r"^(mask_decoder\.transformer\.layers\.\d+\.mlp)\.layers\.1\.".into(), "$1.proj_out."),
        (r"^(mask_decoder\.transformer\..*)\.out_proj\.".into(), "$1.o_proj."),
        (r"^mask_decoder\.transformer\.norm_final_attn\.".into(), "mask_decoder.transformer.layer_norm_final_attn."),
        (r"^mask_decoder\.output_upscaling\.0\.".into(), "mask_decoder.upscale_conv1."),
        (r"^mask_decoder\.output_upscaling\.1\.".into(), "mask_decoder.upscale_layer_norm."),
        (r"^mask_decoder\.output_upscaling\.3\.".into(), "mask_decoder.upscale_conv2."),
        (
            r"^(mask_decoder\.(?:output_hypernetworks_mlps\.\d+|iou_prediction_head|pred_obj_score_head))\.layers\.0\."
                .into(),
            "$1.proj_in.",
        ),
        (
            r"^(mask_decoder\.(?:output_hypernetworks_mlps\.\d+|iou_prediction_head|pred_obj_score_head))\.layers\.2\."
                .into(),
            "$1.proj_out.",
        ),
        (
            r"^(mask_decoder\.(?:output_hypernetworks_mlps\.\d+|iou_prediction_head|pred_obj_score_head))\.layers\.1\."
                .into(),
            "$1.layers.0.",
        ),
    ];
    let mut table = KeyTable::identity()
        .ignore(&format!(r"^{p}sam_prompt_encoder\.point_embeddings\.\d+\.weight$"))
        .map_err(weights_err)?
        .ignore(&format!(r"^{p}sam_prompt_encoder\.pe_layer\.positional_encoding_gaussian_matrix$"))
        .map_err(weights_err)?;
    for (pattern, replacement) in rules {
        table = table.rename(&pattern, replacement).map_err(weights_err)?;
    }
    Ok(table)
}

fn regex_escape(s: &str) -> String {
    s.chars().flat_map(|c| if c.is_ascii_alphanumeric() || c == '_' { vec![c] } else { vec!['\\', c] }).collect()
}

/// Picks the table and load options for a checkpoint.
pub fn table_for(ckpt: &Checkpoint, _cfg: &Sam2Config) -> Result<(KeyTable, LoadOptions), Sam2Error> {
    match detect(ckpt)? {
        Layout::Transformers => Ok((transformers_table()?, LoadOptions::default())),
        Layout::Original { prefix } => Ok((
            original_table(&prefix)?,
            LoadOptions {
                // Memory modules of the video model and, in Sa2VA, the whole VLM share the file.
                allow_unexpected: true,
                optional: vec![
                    r"^prompt_encoder\.point_embed\.weight$".into(),
                    r"^prompt_encoder\.shared_embedding\.positional_embedding$".into(),
                    r"^shared_image_embedding\.positional_embedding$".into(),
                ],
            },
        )),
    }
}

/// After an original-layout load: stacks `point_embeddings.{0..3}` into `point_embed` and copies
/// the Fourier matrix into both positional embeddings.
pub fn patch_original(model: Sam2, ckpt: &Checkpoint, prefix: &str) -> Result<Sam2, Sam2Error> {
    let device = model.no_memory_embedding.device();
    let read = |key: String| -> Result<Tensor<2>, Sam2Error> {
        let data = ckpt.read(&key, DType::F32).map_err(weights_err)?;
        Ok(Tensor::<2>::from_data(data, &device))
    };
    let n = model.prompt_encoder.point_embed.weight.dims()[0];
    let rows = (0..n)
        .map(|i| read(format!("{prefix}sam_prompt_encoder.point_embeddings.{i}.weight")))
        .collect::<Result<Vec<_>, _>>()?;
    let points = Tensor::cat(rows, 0); // [n, C]
    let gauss = read(format!("{prefix}sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"))?; // [2, C/2]
    let want = model.shared_image_embedding.positional_embedding.dims();
    if gauss.dims() != want || points.dims() != model.prompt_encoder.point_embed.weight.dims() {
        return Err(Sam2Error::Shape {
            what: "original prompt-encoder tensors",
            expected: format!(
                "gaussian {want:?}, point embeddings {:?}",
                model.prompt_encoder.point_embed.weight.dims()
            ),
            got: format!("{:?}, {:?}", gauss.dims(), points.dims()),
        });
    }
    let mut model = model;
    model.prompt_encoder.point_embed.weight = Param::from_tensor(points);
    model.prompt_encoder.shared_embedding.positional_embedding = Param::from_tensor(gauss.clone());
    model.shared_image_embedding.positional_embedding = Param::from_tensor(gauss);
    Ok(model)
}
