//! `image-decode`: decodes an image column (HF `{bytes, path}` struct or binary, PNG) into a float tensor
//! attachment `pixels` of shape [rows, 3, size, size] (bilinear resize, values in [0, 1] or ImageNet-normalised).
//! Rows whose image cannot be decoded go to `errors` with their id; the others continue.

use arrow::array::{Array, ArrayRef, BinaryArray, LargeBinaryArray, RecordBatch, StructArray};
use arrow::datatypes::DataType;
use burn::tensor::{Device, Tensor, TensorData};
use perceptio_runtime::node::error_port_schema;
use perceptio_runtime::schemas::port::{TensorKind, TensorSpec};
use perceptio_runtime::schemas::{FieldSpec, PortSchema};
use perceptio_runtime::{
    BuildContext, ERROR_PORT, Frame, Node, NodeError, NodeImpl, NodeKind, NodePorts, Outputs, ParamError, PortContext,
    PortDecl, parse_params,
};
use schemars::JsonSchema;
use serde::Deserialize;

/// Params of `image-decode`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageDecodeParams {
    /// The image column.
    #[serde(default = "default_column")]
    pub column: String,
    /// Output side length (square, bilinear resize).
    pub size: usize,
    /// `unit` ([0, 1]) or `imagenet` (mean/std normalised).
    #[serde(default = "default_normalize")]
    pub normalize: String,
    /// Column holding row ids for error records.
    #[serde(default = "default_id")]
    pub id_column: String,
}

fn default_column() -> String {
    "image".into()
}
fn default_normalize() -> String {
    "unit".into()
}
fn default_id() -> String {
    "id".into()
}

pub struct ImageDecodeKind;

fn checked(params: &serde_json::Value) -> Result<ImageDecodeParams, ParamError> {
    let p: ImageDecodeParams = parse_params(params)?;
    if p.size == 0 || p.size > 4096 {
        return Err(ParamError::new("size", "must be between 1 and 4096"));
    }
    if p.normalize != "unit" && p.normalize != "imagenet" {
        return Err(ParamError::new("normalize", format!("`{}` is not `unit` or `imagenet`", p.normalize)));
    }
    Ok(p)
}

impl NodeKind for ImageDecodeKind {
    fn name(&self) -> &'static str {
        "image-decode"
    }

    fn about(&self) -> &'static str {
        "decode a PNG image column into a [rows, 3, size, size] float tensor `pixels`; bad images to `errors`"
    }

    fn params_schema(&self) -> schemars::schema::RootSchema {
        schemars::schema_for!(ImageDecodeParams)
    }

    fn ports(&self, ctx: &PortContext<'_>) -> Result<NodePorts, ParamError> {
        let p = checked(ctx.params)?;
        let input = PortSchema::default().with_field(FieldSpec::any(p.column.clone()));
        let mut output = ctx.inputs.get("in").cloned().unwrap_or_default();
        output.tensors.push(TensorSpec::new("pixels", TensorKind::Float, 4));
        Ok(NodePorts {
            inputs: vec![PortDecl::required("in", input)],
            outputs: vec![PortDecl::required("out", output), PortDecl::required(ERROR_PORT, error_port_schema())],
        })
    }

    fn build(&self, ctx: &BuildContext<'_>) -> Result<NodeImpl, ParamError> {
        Ok(NodeImpl::Node(Box::new(ImageDecode { params: checked(ctx.params)?, device: ctx.device.clone() })))
    }
}

struct ImageDecode {
    params: ImageDecodeParams,
    device: Device,
}

/// The bytes of an image cell: a HF `{bytes, path}` struct or a binary column.
pub fn image_bytes(col: &ArrayRef, row: usize) -> Result<&[u8], String> {
    if col.is_null(row) {
        return Err("image is null".into());
    }
    match col.data_type() {
        DataType::Struct(_) => {
            let s = col.as_any().downcast_ref::<StructArray>().ok_or("not a struct")?;
            let b = s.column_by_name("bytes").ok_or("image struct has no `bytes` field")?;
            image_bytes(b, row)
        }
        DataType::Binary => Ok(col.as_any().downcast_ref::<BinaryArray>().ok_or("not binary")?.value(row)),
        DataType::LargeBinary => Ok(col.as_any().downcast_ref::<LargeBinaryArray>().ok_or("not binary")?.value(row)),
        other => Err(format!("type {other} is not an image column")),
    }
}

pub use perceptio_models::perceptio::image::decode_png_planar as decode_png_rgb;

use perceptio_models::perceptio::image::encoder_input;
pub use perceptio_models::perceptio::image::resize_bilinear;

impl Node for ImageDecode {
    fn process(&mut self, _port: &str, frame: Frame, out: &mut Outputs) -> Result<(), NodeError> {
        let p = &self.params;
        let batch: &RecordBatch = frame.batch();
        let col = batch
            .column_by_name(&p.column)
            .ok_or_else(|| NodeError::msg(format!("column `{}` is missing", p.column)))?
            .clone();
        let ids = batch.column_by_name(&p.id_column).cloned();
        let size = p.size;
        let mut pixels = Vec::with_capacity(frame.rows() * 3 * size * size);
        let mut keep = Vec::new();
        let (mut bad_ids, mut reasons) = (Vec::new(), Vec::new());
        for row in 0..frame.rows() {
            match image_bytes(&col, row).and_then(decode_png_rgb) {
                Ok((img, h, w)) => {
                    let img = match p.normalize.as_str() {
                        "imagenet" => encoder_input(&img, h, w, size),
                        _ => resize_bilinear(&img, h, w, size),
                    };
                    pixels.extend_from_slice(&img);
                    keep.push(row as u32);
                }
                Err(m) => {
                    let id = ids
                        .as_ref()
                        .and_then(|c| arrow::util::display::array_value_to_string(c, row).ok())
                        .unwrap_or_else(|| format!("row {row} of frame"));
                    bad_ids.push(id);
                    reasons.push(m);
                }
            }
        }
        if !bad_ids.is_empty() {
            out.reject(bad_ids, reasons)?;
        }
        if keep.is_empty() {
            return Ok(());
        }
        let n = keep.len();
        let good = if n == frame.rows() { frame } else { frame.take_rows(&keep)? };
        let tensor = Tensor::<4>::from_data(TensorData::new(pixels, [n, 3, size, size]), &self.device); // [n, 3, s, s]
        out.emit("out", good.with_tensor("pixels", tensor)?)
    }
}
