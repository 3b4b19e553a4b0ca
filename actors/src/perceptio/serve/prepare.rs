//! `serve-prepare`: the request check at the head of the serving graph. Decodes each request's image (PNG or raw
//! RGB), tokenises its prompt, and resizes the image for both encoders (`pixels` for InternViT, `sam_pixels` for
//! SAM2). A request that cannot be answered (a malformed image, an over-long prompt, more tokens asked for than
//! `max_new_tokens`) becomes an error record on `errors`, naming the reason; the rest of its frame goes on.

use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{ArrayRef, ListBuilder, RecordBatch, StringArray, UInt32Array, UInt32Builder, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema};
use burn::prelude::*;
use perceptio_models::perceptio::image::encoder_input;
use perceptio_models::perceptio::predict::{Query, TextSide};
use perceptio_runtime::node::error_port_schema;
use perceptio_runtime::schemas::PortSchema;
use perceptio_runtime::schemas::port::{TensorKind, TensorSpec};
use perceptio_runtime::{
    BuildContext, ERROR_PORT, Frame, Node, NodeError, NodeImpl, NodeKind, NodePorts, Outputs, ParamError, PortContext,
    PortDecl, parse_params,
};
use schemars::JsonSchema;
use serde::Deserialize;

use super::requests::request_port_schema;
use super::{ImageInput, ModelDir, id_field, read_requests, request_keys};
use crate::perceptio::common::column;

/// Params of `serve-prepare`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServePrepareParams {
    /// The model directory (its config and tokenizer are read here; no weights).
    pub model: PathBuf,
    /// Most tokens a request may ask for; a request asking for more fails.
    #[serde(default = "default_max_new")]
    pub max_new_tokens: usize,
}

fn default_max_new() -> usize {
    512
}

fn checked(params: &serde_json::Value) -> Result<ServePrepareParams, ParamError> {
    let p: ServePrepareParams = parse_params(params)?;
    if p.max_new_tokens == 0 {
        return Err(ParamError::new("max_new_tokens", "must be at least 1"));
    }
    Ok(p)
}

/// The columns of a prepared-request frame.
pub fn prepared_schema() -> Schema {
    let list = DataType::List(Arc::new(Field::new("item", DataType::UInt32, true)));
    Schema::new(vec![
        id_field(),
        Field::new("prompt", list, false),
        Field::new("max_new_tokens", DataType::UInt32, false),
        Field::new("submitted_ns", DataType::UInt64, false),
    ])
}

/// Prepared requests: [`prepared_schema`] rows with `pixels` `[B, 3, p, p]` and `sam_pixels` `[B, 3, S, S]`.
pub fn prepared_port_schema() -> PortSchema {
    PortSchema::from_arrow(&prepared_schema())
        .with_tensor(TensorSpec::new("pixels", TensorKind::Float, 4))
        .with_tensor(TensorSpec::new("sam_pixels", TensorKind::Float, 4))
}

/// A query from a request's image and question; the error is the request's failure message.
pub fn query_of(image: ImageInput, question: String) -> Result<Query, String> {
    match image {
        ImageInput::Png(bytes) => Query::from_png(&bytes, question).map_err(|e| e.to_string()),
        ImageInput::Rgb8 { width, height, pixels } => {
            if width == 0 || height == 0 {
                return Err(format!("image: empty image ({width}x{height})"));
            }
            let plane = width.checked_mul(height).filter(|n| n.checked_mul(3) == Some(pixels.len()));
            let Some(plane) = plane else {
                return Err(format!("image: {} bytes for a {width}x{height} RGB image", pixels.len()));
            };
            let mut rgb = vec![0f32; 3 * plane];
            for (i, px) in pixels.chunks_exact(3).enumerate() {
                for c in 0..3 {
                    rgb[c * plane + i] = px[c] as f32 / 255.0;
                }
            }
            Ok(Query { rgb, height, width, question })
        }
    }
}

/// One prepared request, read back from a frame (without its tensors).
#[derive(Debug, Clone, PartialEq)]
pub struct PreparedRow {
    pub key: u64,
    pub prompt: Vec<u32>,
    pub max_new_tokens: usize,
    pub submitted_ns: u64,
}

/// Reads the rows of a prepared frame. A missing column or an id that is not a request number fails the frame.
pub fn read_prepared(frame: &Frame) -> Result<Vec<PreparedRow>, NodeError> {
    let b = frame.batch();
    let keys = request_keys(frame)?;
    let prompt = column::<arrow::array::ListArray>(b, "prompt")?;
    let max_new = column::<UInt32Array>(b, "max_new_tokens")?;
    let submitted = column::<UInt64Array>(b, "submitted_ns")?;
    (0..b.num_rows())
        .map(|r| {
            let key = keys[r];
            let ids = prompt.value(r);
            let ids = ids
                .as_any()
                .downcast_ref::<UInt32Array>()
                .ok_or_else(|| NodeError::msg("column `prompt` does not hold u32 lists"))?;
            Ok(PreparedRow {
                key,
                prompt: ids.values().to_vec(),
                max_new_tokens: max_new.value(r) as usize,
                submitted_ns: submitted.value(r),
            })
        })
        .collect()
}

pub struct ServePrepareKind;

impl NodeKind for ServePrepareKind {
    fn name(&self) -> &'static str {
        "serve-prepare"
    }

    fn about(&self) -> &'static str {
        "serving: check requests, tokenise prompts, decode and resize images for both encoders; bad requests -> errors"
    }

    fn params_schema(&self) -> schemars::schema::RootSchema {
        schemars::schema_for!(ServePrepareParams)
    }

    fn ports(&self, ctx: &PortContext<'_>) -> Result<NodePorts, ParamError> {
        checked(ctx.params)?;
        Ok(NodePorts {
            inputs: vec![PortDecl::required("in", request_port_schema())],
            outputs: vec![
                PortDecl::required("out", prepared_port_schema()),
                PortDecl::required(ERROR_PORT, error_port_schema()),
            ],
        })
    }

    fn build(&self, ctx: &BuildContext<'_>) -> Result<NodeImpl, ParamError> {
        let p = checked(ctx.params)?;
        let dir = ModelDir::open(&p.model)?;
        Ok(NodeImpl::Node(Box::new(PrepareNode {
            text: dir.text()?,
            vision_size: dir.cfg.vlm.vision.image_size,
            sam_size: dir.cfg.sam2.image_size(),
            max_new_tokens: p.max_new_tokens,
            device: ctx.device.clone().without_autodiff(),
        })))
    }
}

struct PrepareNode {
    text: TextSide,
    vision_size: usize,
    sam_size: usize,
    max_new_tokens: usize,
    device: Device,
}

/// A request that passed the checks.
struct Admitted {
    id: String,
    prompt: Vec<u32>,
    max_new: u32,
    submitted_ns: u64,
    pixels: Vec<f32>,
    sam_pixels: Vec<f32>,
}

impl PrepareNode {
    fn admit(&self, row: super::RequestRow) -> Result<Admitted, (String, String)> {
        let fail = |m: String| (row.id.clone(), m);
        if row.id.parse::<u64>().is_err() {
            return Err(fail("the id is not a request number".into()));
        }
        if row.max_new_tokens == 0 || row.max_new_tokens > self.max_new_tokens {
            return Err(fail(format!(
                "max_new_tokens {} is outside 1..={} (this server's limit)",
                row.max_new_tokens, self.max_new_tokens
            )));
        }
        let query = query_of(row.image, row.question).map_err(fail)?;
        query.check().map_err(|e| fail(e.to_string()))?;
        let prompt = self.text.prompt(&query.question).map_err(|e| fail(e.to_string()))?;
        let (h, w) = (query.height, query.width);
        Ok(Admitted {
            id: row.id.clone(),
            prompt,
            max_new: row.max_new_tokens as u32,
            submitted_ns: row.submitted_ns,
            pixels: encoder_input(&query.rgb, h, w, self.vision_size),
            sam_pixels: encoder_input(&query.rgb, h, w, self.sam_size),
        })
    }

    fn frame(&self, rows: Vec<Admitted>) -> Result<Frame, NodeError> {
        let n = rows.len();
        let mut prompts = ListBuilder::new(UInt32Builder::new());
        for r in &rows {
            prompts.values().append_slice(&r.prompt);
            prompts.append(true);
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.id.as_str()))),
            Arc::new(prompts.finish()),
            Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.max_new))),
            Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.submitted_ns))),
        ];
        let batch = RecordBatch::try_new(Arc::new(prepared_schema()), columns)?;
        let (p, s) = (self.vision_size, self.sam_size);
        let pixels: Vec<f32> = rows.iter().flat_map(|r| r.pixels.iter().copied()).collect();
        let sam: Vec<f32> = rows.into_iter().flat_map(|r| r.sam_pixels).collect();
        let pixels = Tensor::<4>::from_data(TensorData::new(pixels, [n, 3, p, p]), &self.device); // [B, 3, p, p]
        let sam = Tensor::<4>::from_data(TensorData::new(sam, [n, 3, s, s]), &self.device); // [B, 3, S, S]
        Ok(Frame::new(batch).with_tensor("pixels", pixels)?.with_tensor("sam_pixels", sam)?)
    }
}

impl Node for PrepareNode {
    fn process(&mut self, _port: &str, frame: Frame, out: &mut Outputs) -> Result<(), NodeError> {
        let (mut good, mut bad_ids, mut reasons) = (Vec::new(), Vec::new(), Vec::new());
        for row in read_requests(&frame)? {
            match self.admit(row) {
                Ok(a) => good.push(a),
                Err((id, reason)) => {
                    bad_ids.push(id);
                    reasons.push(reason);
                }
            }
        }
        if !bad_ids.is_empty() {
            out.reject(bad_ids, reasons)?;
        }
        if !good.is_empty() {
            let frame = self.frame(good)?;
            out.emit("out", frame)?;
        }
        Ok(())
    }
}
