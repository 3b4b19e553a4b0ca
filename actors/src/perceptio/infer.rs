//! `perceptio-infer`: answers dataset rows with a trained Perceptio model directory (`perceptio init-model` or a
//! training checkpoint `step-N/`). Each row's `image` (PNG) and `question` become a query; the rows of a frame are
//! answered `batch_size` at a time by [`Predictor`] (constrained greedy decoding, then the mask and depth heads).
//! Every input column passes through; appended are `generated` (the answer text after the perception tokens),
//! `seg` (whether `[SEG]` was generated), `pred_mask` (the binary mask as an 8-bit grey PNG at the SAM2 input
//! size; null without `[SEG]`), `pred_depth` (the decoded depth map, `D * D` values in the tokenizer's [-1, 1]
//! units, +1 = nearest; null without a complete span) and `pred_depth_codes` (the span's code indices; null
//! without a span). Rows whose image does not decode or whose prompt is too long go to `errors` with their id.
//! `limit` caps the rows answered: later rows are counted, not answered, and the sources are asked to stop.

use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BinaryBuilder, BooleanArray, Float32Builder, Int32Builder, ListBuilder, RecordBatch, StringArray,
    StringBuilder,
};
use arrow::datatypes::{DataType, Field, Schema};
use perceptio_models::perceptio::predict::{Answer, AskOptions, Predictor, Query};
use perceptio_runtime::node::error_port_schema;
use perceptio_runtime::schemas::{FieldSpec, PortSchema};
use perceptio_runtime::{
    BuildContext, ERROR_PORT, Frame, Node, NodeError, NodeImpl, NodeKind, NodePorts, Outputs, ParamError, PortContext,
    PortDecl, parse_params,
};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::image_decode::image_bytes;

/// The answer text column.
pub const GENERATED: &str = "generated";
/// Whether `[SEG]` was generated (Boolean).
pub const SEG: &str = "seg";
/// The predicted binary mask, an 8-bit grey PNG (Binary, nullable).
pub const PRED_MASK: &str = "pred_mask";
/// The decoded depth map, row-major `D * D` values in [-1, 1] (List<Float32>, nullable).
pub const PRED_DEPTH: &str = "pred_depth";
/// The depth span's code indices (List<Int32>, nullable).
pub const PRED_DEPTH_CODES: &str = "pred_depth_codes";

/// Params of `perceptio-infer`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InferParams {
    /// A Perceptio model directory (perceptio.json, tokenizer.json and the part weights).
    pub model: PathBuf,
    /// Queries answered together (rows of one frame; a frame's last batch may be smaller).
    #[serde(default = "d_batch")]
    pub batch_size: usize,
    /// Most tokens generated per answer (`[SEG]` + the depth span of N + 2 tokens + text).
    #[serde(default = "d_max_new")]
    pub max_new_tokens: usize,
    /// Answer at most this many rows (0: all).
    #[serde(default)]
    pub limit: usize,
    /// The image column (HF `{bytes, path}` struct or binary, PNG).
    #[serde(default = "d_image")]
    pub image_column: String,
    /// The question column (utf8).
    #[serde(default = "d_question")]
    pub question_column: String,
    /// Column holding row ids for error records.
    #[serde(default = "d_id")]
    pub id_column: String,
}

fn d_batch() -> usize {
    8
}
fn d_max_new() -> usize {
    AskOptions::default().max_new_tokens
}
fn d_image() -> String {
    "image".into()
}
fn d_question() -> String {
    "question".into()
}
fn d_id() -> String {
    "sample_id".into()
}

fn checked(params: &serde_json::Value) -> Result<InferParams, ParamError> {
    let p: InferParams = parse_params(params)?;
    if p.batch_size == 0 {
        return Err(ParamError::new("batch_size", "must be at least 1"));
    }
    if p.max_new_tokens == 0 {
        return Err(ParamError::new("max_new_tokens", "must be at least 1"));
    }
    if p.model.as_os_str().is_empty() {
        return Err(ParamError::new("model", "name a Perceptio model directory"));
    }
    Ok(p)
}

/// The columns `perceptio-infer` appends, with their types.
pub fn output_fields() -> Vec<Field> {
    vec![
        Field::new(GENERATED, DataType::Utf8, false),
        Field::new(SEG, DataType::Boolean, false),
        Field::new(PRED_MASK, DataType::Binary, true),
        Field::new(PRED_DEPTH, DataType::List(Arc::new(Field::new_list_field(DataType::Float32, true))), true),
        Field::new(PRED_DEPTH_CODES, DataType::List(Arc::new(Field::new_list_field(DataType::Int32, true))), true),
    ]
}

pub struct PerceptioInferKind;

impl NodeKind for PerceptioInferKind {
    fn name(&self) -> &'static str {
        "perceptio-infer"
    }

    fn about(&self) -> &'static str {
        "answer rows (image + question) with a trained Perceptio model: text, [SEG] mask, depth span and map"
    }

    fn params_schema(&self) -> schemars::schema::RootSchema {
        schemars::schema_for!(InferParams)
    }

    fn ports(&self, ctx: &PortContext<'_>) -> Result<NodePorts, ParamError> {
        let p = checked(ctx.params)?;
        let input = PortSchema::default()
            .with_field(FieldSpec::any(p.image_column.clone()))
            .with_field(FieldSpec::new(p.question_column.clone(), DataType::Utf8));
        let output = output_fields().iter().fold(ctx.inputs.get("in").cloned().unwrap_or_default(), |s, f| {
            s.with_field_set(FieldSpec::new(f.name().clone(), f.data_type().clone()))
        });
        Ok(NodePorts {
            inputs: vec![PortDecl::required("in", input)],
            outputs: vec![PortDecl::required("out", output), PortDecl::optional(ERROR_PORT, error_port_schema())],
        })
    }

    fn build(&self, ctx: &BuildContext<'_>) -> Result<NodeImpl, ParamError> {
        let params = checked(ctx.params)?;
        let predictor =
            Predictor::load(&params.model, &ctx.device).map_err(|e| ParamError::new("model", e.to_string()))?;
        Ok(NodeImpl::Node(Box::new(PerceptioInfer::new(params, predictor))))
    }
}

/// The running node (also usable directly, outside a graph).
pub struct PerceptioInfer {
    params: InferParams,
    predictor: Predictor,
    /// Rows answered or rejected so far (what `limit` counts).
    taken: usize,
    /// Rows that arrived after the limit.
    skipped: u64,
}

impl PerceptioInfer {
    pub fn new(params: InferParams, predictor: Predictor) -> Self {
        Self { params, predictor, taken: 0, skipped: 0 }
    }

    /// The model's N (codes per depth span).
    pub fn span_len(&self) -> usize {
        self.predictor.span_len()
    }

    fn options(&self) -> AskOptions {
        AskOptions { max_new_tokens: self.params.max_new_tokens }
    }

    /// The query of row `r`, or why the row cannot be asked.
    fn query(&self, batch: &RecordBatch, r: usize) -> Result<Query, String> {
        let p = &self.params;
        let image =
            batch.column_by_name(&p.image_column).ok_or_else(|| format!("column `{}` is missing", p.image_column))?;
        let question = batch
            .column_by_name(&p.question_column)
            .and_then(|c| c.as_any().downcast_ref::<StringArray>())
            .ok_or_else(|| format!("column `{}` is missing or not utf8", p.question_column))?;
        if question.is_null(r) {
            return Err(format!("{} is null", p.question_column));
        }
        let png = image_bytes(image, r).map_err(|e| format!("{}: {e}", p.image_column))?;
        let query = Query::from_png(png, question.value(r)).map_err(|e| format!("{}: {e}", p.image_column))?;
        self.predictor.check(&query).map_err(|e| e.to_string())?;
        Ok(query)
    }

    /// Answers `queries` `batch_size` at a time; a batch that fails is retried row by row so that only the rows
    /// that cannot be answered fail (with the reason).
    fn answer_all(&self, queries: &[Query]) -> Vec<Result<Answer, String>> {
        let opts = self.options();
        let mut out = Vec::with_capacity(queries.len());
        for chunk in queries.chunks(self.params.batch_size) {
            match self.predictor.answer(chunk, &opts) {
                Ok(answers) => out.extend(answers.into_iter().map(Ok)),
                Err(_) if chunk.len() > 1 => {
                    for q in chunk {
                        out.push(
                            self.predictor
                                .answer(std::slice::from_ref(q), &opts)
                                .map_err(|e| e.to_string())
                                .and_then(|mut a| a.pop().ok_or_else(|| "no answer".to_string())),
                        );
                    }
                }
                Err(e) => out.push(Err(e.to_string())),
            }
        }
        out
    }

    fn row_id(&self, batch: &RecordBatch, r: usize) -> String {
        batch
            .column_by_name(&self.params.id_column)
            .and_then(|c| arrow::util::display::array_value_to_string(c, r).ok())
            .unwrap_or_else(|| format!("row {r} of frame"))
    }
}

/// `rows` of `input` with the answer columns appended (replacing input columns of the same names).
fn with_answers(input: &RecordBatch, answers: &[Answer]) -> Result<RecordBatch, NodeError> {
    let n = answers.len();
    let mut text = StringBuilder::with_capacity(n, 16 * n);
    let mut mask = BinaryBuilder::new();
    let mut depth = ListBuilder::new(Float32Builder::new());
    let mut codes = ListBuilder::new(Int32Builder::new());
    for a in answers {
        text.append_value(&a.text);
        match &a.mask {
            Some(m) => {
                let side = m.size as u32;
                let png = perceptio_synth::codec::encode_mask(&m.binary(), side, side)
                    .map_err(|e| NodeError::msg(format!("encoding the predicted mask: {e}")))?;
                mask.append_value(png);
            }
            None => mask.append_null(),
        }
        match &a.depth {
            Some(d) => {
                depth.values().append_slice(&d.values);
                depth.append(true);
            }
            None => depth.append(false),
        }
        match &a.depth_codes {
            Some(c) => {
                for &v in c {
                    codes.values().append_value(v as i32);
                }
                codes.append(true);
            }
            None => codes.append(false),
        }
    }
    let seg: BooleanArray = answers.iter().map(|a| Some(a.seg)).collect();
    let added: Vec<ArrayRef> = vec![
        Arc::new(text.finish()),
        Arc::new(seg),
        Arc::new(mask.finish()),
        Arc::new(depth.finish()),
        Arc::new(codes.finish()),
    ];
    let fields = output_fields();
    let schema = input.schema();
    let mut out_fields: Vec<Arc<Field>> = Vec::with_capacity(schema.fields().len() + fields.len());
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(out_fields.capacity());
    for (f, c) in schema.fields().iter().zip(input.columns()) {
        if !fields.iter().any(|a| a.name() == f.name()) {
            out_fields.push(f.clone());
            columns.push(c.clone());
        }
    }
    for (f, c) in fields.into_iter().zip(added) {
        out_fields.push(Arc::new(f));
        columns.push(c);
    }
    let schema = Arc::new(Schema::new_with_metadata(out_fields, schema.metadata().clone()));
    Ok(RecordBatch::try_new(schema, columns)?)
}

impl Node for PerceptioInfer {
    fn process(&mut self, _port: &str, frame: Frame, out: &mut Outputs) -> Result<(), NodeError> {
        let rows = frame.rows();
        let room = match self.params.limit {
            0 => rows,
            limit => limit.saturating_sub(self.taken).min(rows),
        };
        if room < rows {
            self.skipped += (rows - room) as u64;
            if !out.should_drain() {
                tracing::debug!(node = out.node_id(), limit = self.params.limit, "row limit reached; draining");
                out.request_drain();
            }
        }
        if room == 0 {
            return Ok(());
        }
        self.taken += room;
        let batch = frame.batch();
        let (mut keep, mut queries) = (Vec::with_capacity(room), Vec::with_capacity(room));
        let (mut bad_ids, mut reasons) = (Vec::new(), Vec::new());
        for r in 0..room {
            match self.query(batch, r) {
                Ok(q) => {
                    keep.push(r as u32);
                    queries.push(q);
                }
                Err(reason) => {
                    bad_ids.push(self.row_id(batch, r));
                    reasons.push(reason);
                }
            }
        }
        let mut answers = Vec::with_capacity(queries.len());
        let mut answered = Vec::with_capacity(queries.len());
        for (r, result) in keep.iter().zip(self.answer_all(&queries)) {
            match result {
                Ok(a) => {
                    answered.push(*r);
                    answers.push(a);
                }
                Err(reason) => {
                    bad_ids.push(self.row_id(batch, *r as usize));
                    reasons.push(format!("answering: {reason}"));
                }
            }
        }
        if !bad_ids.is_empty() {
            out.reject(bad_ids, reasons)?;
        }
        if answered.is_empty() {
            return Ok(());
        }
        let good = if answered.len() == rows { frame } else { frame.take_rows(&answered)? };
        let batch = with_answers(good.batch(), &answers)?;
        out.emit("out", good.with_batch(batch)?)
    }

    fn finish(&mut self, out: &mut Outputs) -> Result<(), NodeError> {
        if self.skipped > 0 {
            tracing::info!(
                node = out.node_id(),
                rows = self.skipped,
                limit = self.params.limit,
                "rows after the limit not answered"
            );
        }
        Ok(())
    }
}
