//! `depth-encode`: turns each row's metric depth map (a 16-bit grey PNG in `depth` with `depth_scale` metres per
//! unit, as in the synthetic world's rows) into depth-tokenizer codes with a trained VQ-VAE checkpoint: the
//! tokenizer target (`perceptio_models::depth::depth_target_from_png` at the model's input size) is encoded to
//! `grid^2` code ids, appended as a `List<Int32>` column `depth_codes`. Rows with `depth_scale` 0 (no depth), a
//! null or undecodable depth PNG go to `errors` with their id and the reason; the others continue in order.
//!
//! Also the row-level helpers the depth nodes share ([`DepthColumns`]).

use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BinaryArray, Float32Array, Float64Array, Int32Builder, LargeBinaryArray, ListBuilder, RecordBatch,
    StructArray,
};
use arrow::datatypes::{DataType, Field, Metadata, Schema};
use burn::tensor::{Device, Tensor};
use perceptio_models::depth::train::load_checkpoint;
use perceptio_models::depth::{VqVae, depth_target_from_png};
use perceptio_runtime::node::error_port_schema;
use perceptio_runtime::schemas::{FieldSpec, PortSchema};
use perceptio_runtime::{
    BuildContext, ERROR_PORT, Frame, Node, NodeError, NodeImpl, NodeKind, NodePorts, Outputs, ParamError, PortContext,
    PortDecl, parse_params,
};
use schemars::JsonSchema;
use serde::Deserialize;

/// Params of `depth-encode`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DepthEncodeParams {
    /// A tokenizer checkpoint directory (`config.json` + `vqvae.safetensors`) written by `perceptio train-vqvae`
    /// or the `vqvae-train` node.
    pub checkpoint: String,
    /// Depth maps per encoder pass.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// The depth PNG column (HF `{bytes, path}` struct or binary).
    #[serde(default = "default_depth")]
    pub depth_column: String,
    /// Metres per PNG unit (Float32 or Float64; 0 = the row has no depth).
    #[serde(default = "default_scale")]
    pub scale_column: String,
    /// Column holding row ids for error records.
    #[serde(default = "default_id")]
    pub id_column: String,
    /// The output column of code ids.
    #[serde(default = "default_output")]
    pub output: String,
}

fn default_batch_size() -> usize {
    32
}
pub(crate) fn default_depth() -> String {
    "depth".into()
}
pub(crate) fn default_scale() -> String {
    "depth_scale".into()
}
pub(crate) fn default_id() -> String {
    "sample_id".into()
}
fn default_output() -> String {
    "depth_codes".into()
}

/// The type of the `depth_codes` column.
pub fn codes_type() -> DataType {
    DataType::List(Arc::new(Field::new_list_field(DataType::Int32, true)))
}

/// The depth, scale and id columns of a batch, and the per-row conversion to tokenizer targets.
pub struct DepthColumns {
    depth: ArrayRef,
    scale: ArrayRef,
    ids: Option<ArrayRef>,
}

impl DepthColumns {
    /// Finds the columns; a missing depth or scale column is an error naming it (a missing id column is not:
    /// rows are then named by their position).
    pub fn from_batch(batch: &RecordBatch, depth: &str, scale: &str, id: &str) -> Result<Self, String> {
        let col = |name: &str| batch.column_by_name(name).cloned();
        Ok(Self {
            depth: col(depth).ok_or_else(|| format!("column `{depth}` is missing"))?,
            scale: col(scale).ok_or_else(|| format!("column `{scale}` is missing"))?,
            ids: col(id),
        })
    }

    /// The PNG bytes of a row's depth map.
    pub fn png(&self, row: usize) -> Result<&[u8], String> {
        binary_value(&self.depth, row)
    }

    /// A row's metres-per-unit scale.
    pub fn scale(&self, row: usize) -> Result<f32, String> {
        if self.scale.is_null(row) {
            return Err("depth_scale is null".into());
        }
        if let Some(a) = self.scale.as_any().downcast_ref::<Float32Array>() {
            Ok(a.value(row))
        } else if let Some(a) = self.scale.as_any().downcast_ref::<Float64Array>() {
            Ok(a.value(row) as f32)
        } else {
            Err(format!("depth scale column has type {}, expected Float32", self.scale.data_type()))
        }
    }

    /// A row's tokenizer target (`side * side` values in [-1, 1]), or why it has none.
    pub fn target(&self, row: usize, side: usize) -> Result<Vec<f32>, String> {
        let scale = self.scale(row)?;
        let png = self.png(row)?;
        depth_target_from_png(png, scale, side).map_err(|e| e.to_string())
    }

    /// A row's id (its position in the frame when there is no id column).
    pub fn id(&self, row: usize) -> String {
        self.ids
            .as_ref()
            .and_then(|c| arrow::util::display::array_value_to_string(c, row).ok())
            .unwrap_or_else(|| format!("row {row} of frame"))
    }
}

fn binary_value(col: &ArrayRef, row: usize) -> Result<&[u8], String> {
    if col.is_null(row) {
        return Err("depth is null".into());
    }
    match col.data_type() {
        DataType::Struct(_) => {
            let s = col.as_any().downcast_ref::<StructArray>().ok_or("depth is not a struct")?;
            let b = s.column_by_name("bytes").ok_or("depth struct has no `bytes` field")?;
            binary_value(b, row)
        }
        DataType::Binary => Ok(col.as_any().downcast_ref::<BinaryArray>().ok_or("depth is not binary")?.value(row)),
        DataType::LargeBinary => {
            Ok(col.as_any().downcast_ref::<LargeBinaryArray>().ok_or("depth is not binary")?.value(row))
        }
        other => Err(format!("depth column has type {other}, expected an image struct or binary")),
    }
}

pub struct DepthEncodeKind;

fn checked(params: &serde_json::Value) -> Result<DepthEncodeParams, ParamError> {
    let p: DepthEncodeParams = parse_params(params)?;
    if p.batch_size == 0 {
        return Err(ParamError::new("batch_size", "must be at least 1"));
    }
    if p.checkpoint.trim().is_empty() {
        return Err(ParamError::new("checkpoint", "name a tokenizer checkpoint directory"));
    }
    Ok(p)
}

impl NodeKind for DepthEncodeKind {
    fn name(&self) -> &'static str {
        "depth-encode"
    }

    fn about(&self) -> &'static str {
        "append the depth tokenizer's codes of each row's depth PNG (`depth_codes`); rows without depth to `errors`"
    }

    fn params_schema(&self) -> schemars::schema::RootSchema {
        schemars::schema_for!(DepthEncodeParams)
    }

    fn ports(&self, ctx: &PortContext<'_>) -> Result<NodePorts, ParamError> {
        let p = checked(ctx.params)?;
        let input = PortSchema::default()
            .with_field(FieldSpec::any(p.depth_column.clone()))
            .with_field(FieldSpec::any(p.scale_column.clone()));
        let output = ctx
            .inputs
            .get("in")
            .cloned()
            .unwrap_or_default()
            .with_field_set(FieldSpec::new(p.output.clone(), codes_type()));
        Ok(NodePorts {
            inputs: vec![PortDecl::required("in", input)],
            outputs: vec![PortDecl::required("out", output), PortDecl::required(ERROR_PORT, error_port_schema())],
        })
    }

    fn build(&self, ctx: &BuildContext<'_>) -> Result<NodeImpl, ParamError> {
        let params = checked(ctx.params)?;
        let dir = PathBuf::from(&params.checkpoint);
        let (model, _) =
            load_checkpoint(&dir, &ctx.device).map_err(|e| ParamError::new("checkpoint", e.to_string()))?;
        Ok(NodeImpl::Node(Box::new(DepthEncode { params, model, device: ctx.device.clone() })))
    }
}

/// The running node.
pub struct DepthEncode {
    params: DepthEncodeParams,
    model: VqVae,
    device: Device,
}

impl DepthEncode {
    /// Code ids of `maps` (each `side * side`), `grid^2` per map, encoded `batch_size` maps at a time.
    fn encode(&self, maps: &[Vec<f32>]) -> Result<Vec<i32>, NodeError> {
        let side = self.model.input_size;
        let mut codes = Vec::with_capacity(maps.len() * self.model.num_tokens());
        for chunk in maps.chunks(self.params.batch_size) {
            let flat: Vec<f32> = chunk.iter().flatten().copied().collect();
            let x = Tensor::<1>::from_data(flat.as_slice(), &self.device); // [b*s*s]
            let x = x.reshape([chunk.len(), 1, side, side]); // [b, 1, s, s]
            let ids = self.model.encode(x).map_err(|e| NodeError::msg(format!("encoding depth: {e}")))?; // [b, N]
            let ids: Vec<i64> = ids.try_into_vec_as::<i64>().map_err(|e| NodeError::msg(format!("code ids: {e}")))?;
            codes.extend(ids.into_iter().map(|v| v as i32));
        }
        Ok(codes)
    }
}

impl Node for DepthEncode {
    fn process(&mut self, _port: &str, frame: Frame, out: &mut Outputs) -> Result<(), NodeError> {
        let p = &self.params;
        let cols = DepthColumns::from_batch(frame.batch(), &p.depth_column, &p.scale_column, &p.id_column)
            .map_err(NodeError::msg)?;
        let side = self.model.input_size;
        let mut maps = Vec::with_capacity(frame.rows());
        let mut keep = Vec::with_capacity(frame.rows());
        let (mut bad_ids, mut reasons) = (Vec::new(), Vec::new());
        for row in 0..frame.rows() {
            match cols.target(row, side) {
                Ok(map) => {
                    maps.push(map);
                    keep.push(row as u32);
                }
                Err(reason) => {
                    bad_ids.push(cols.id(row));
                    reasons.push(reason);
                }
            }
        }
        if !bad_ids.is_empty() {
            out.reject(bad_ids, reasons)?;
        }
        if keep.is_empty() {
            return Ok(());
        }
        let codes = self.encode(&maps)?;
        let n = self.model.num_tokens();
        let mut list = ListBuilder::new(Int32Builder::with_capacity(codes.len()));
        for row_codes in codes.chunks(n) {
            list.values().append_slice(row_codes);
            list.append(true);
        }
        let good = if keep.len() == frame.rows() { frame } else { frame.take_rows(&keep)? };
        let batch = good.batch();
        let schema = batch.schema();
        let mut fields: Vec<Arc<Field>> = Vec::with_capacity(schema.fields().len() + 1);
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(fields.capacity());
        for (f, c) in schema.fields().iter().zip(batch.columns()) {
            if f.name() != &p.output {
                fields.push(f.clone());
                columns.push(c.clone());
            }
        }
        fields.push(Arc::new(Field::new(&p.output, codes_type(), false)));
        columns.push(Arc::new(list.finish()));
        let schema = Arc::new(Schema::new_with_metadata(fields, with_hf_feature(schema.metadata(), &p.output)));
        let batch = RecordBatch::try_new(schema, columns)?;
        out.emit("out", good.with_batch(batch)?)
    }
}

/// The schema metadata with the HuggingFace features JSON (key `huggingface`, when present) extended by
/// `name` as a sequence of int32, so `datasets` loads the cached column with the rest.
fn with_hf_feature(metadata: &Metadata, name: &str) -> Metadata {
    let mut out = metadata.clone();
    let Some(text) = metadata.get("huggingface") else { return out };
    let Ok(mut json) = serde_json::from_str::<serde_json::Value>(text) else { return out };
    if let Some(features) = json.pointer_mut("/info/features").and_then(|f| f.as_object_mut()) {
        features.insert(
            name.to_string(),
            serde_json::json!({"feature": {"dtype": "int32", "_type": "Value"}, "_type": "Sequence"}),
        );
        out.insert("huggingface", json.to_string());
    }
    out
}
