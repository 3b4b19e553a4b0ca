//! `token-router`: splits the LLM's outputs by token type and hands each to its head: the whole micro-batch
//! (logits and token layout) to `text` for the token losses, the `[SEG]` hidden states with their rows'
//! image-token states and target masks to `seg`, and the depth-span code logits with their target depth maps to
//! `depth`. Every output gets one frame per micro-batch (possibly with no rows), so the heads and the aggregator
//! stay in step.

use std::sync::Arc;

use arrow::array::{RecordBatch, UInt32Array};
use arrow::datatypes::{DataType, Field, Schema};
use burn::tensor::Tensor;
use perceptio_models::perceptio::heads::{image_hidden, seg_hidden};
use perceptio_models::perceptio::loss::span_code_logits;
use perceptio_models::perceptio::step::select_rows;
use perceptio_models::perceptio::{SpecialTokens, TokenBatch};
use perceptio_runtime::schemas::port::{TensorKind, TensorSpec};
use perceptio_runtime::schemas::{FieldSpec, PortSchema};
use perceptio_runtime::{
    BuildContext, Frame, Node, NodeError, NodeImpl, NodeKind, NodePorts, Outputs, ParamError, PortContext, PortDecl,
    autodiff_guard, parse_params,
};

use super::common::{StepInfo, read_sequences};
use super::image_encoder::PartParams;
use super::llm::llm_output_schema;

pub struct TokenRouterKind;

fn rows_schema(tensors: &[(&str, usize)]) -> PortSchema {
    let mut s = PortSchema::default().with_field(FieldSpec::any("row"));
    for (name, rank) in tensors {
        s.tensors.push(TensorSpec::new(*name, TensorKind::Float, *rank));
    }
    s
}

/// Schema of the `seg` output: `row` + `seg_hidden` `[B', d]` + `image_hidden` `[B', T, d]` (the rows'
/// image-token states, for the grounding map; absent when the rows have no image tokens) + `masks` `[B', S, S]`.
pub fn seg_schema() -> PortSchema {
    rows_schema(&[("seg_hidden", 2), ("image_hidden", 3), ("masks", 3)])
}

/// Schema of the `depth` output: `row` + `span_logits` `[B'', N, K]` + `depth` `[B'', 1, D, D]`.
pub fn depth_schema() -> PortSchema {
    rows_schema(&[("span_logits", 3), ("depth", 4)])
}

impl NodeKind for TokenRouterKind {
    fn name(&self) -> &'static str {
        "token-router"
    }

    fn about(&self) -> &'static str {
        "route LLM outputs: everything -> `text`, [SEG] hidden states -> `seg`, depth-span code logits -> `depth`"
    }

    fn params_schema(&self) -> schemars::schema::RootSchema {
        schemars::schema_for!(PartParams)
    }

    fn ports(&self, ctx: &PortContext<'_>) -> Result<NodePorts, ParamError> {
        let _: PartParams = parse_params(ctx.params)?;
        Ok(NodePorts {
            inputs: vec![PortDecl::required("in", llm_output_schema())],
            outputs: vec![
                PortDecl::required("text", llm_output_schema()),
                PortDecl::optional("seg", seg_schema()),
                PortDecl::optional("depth", depth_schema()),
            ],
        })
    }

    fn build(&self, ctx: &BuildContext<'_>) -> Result<NodeImpl, ParamError> {
        let p: PartParams = parse_params(ctx.params)?;
        let err = |e: String| ParamError::general(e);
        let dir = p.train.start_dir().map_err(|e| err(e.to_string()))?;
        let (specials, span_len) = model_specials(&dir).map_err(err)?;
        Ok(NodeImpl::Node(Box::new(TokenRouter { specials, span_len })))
    }
}

/// The special-token ids and span length N of a model directory.
pub fn model_specials(dir: &std::path::Path) -> Result<(SpecialTokens, usize), String> {
    use perceptio_models::perceptio::checkpoint::{TOKENIZER_FILE, read_config};
    let cfg = read_config(dir).map_err(|e| e.to_string())?;
    let tok =
        perceptio_models::tokenizer::TextTokenizer::from_file(dir.join(TOKENIZER_FILE)).map_err(|e| e.to_string())?;
    let sp = perceptio_models::perceptio::tokens::special_tokens(&tok, cfg.num_codes()).map_err(|e| e.to_string())?;
    Ok((sp, cfg.sequence_config().span_len))
}

struct TokenRouter {
    specials: SpecialTokens,
    span_len: usize,
}

/// A frame of `rows` (their batch indices in a `row` column) with the micro-batch header and `frame`'s requests.
fn rows_frame(info: StepInfo, rows: &[usize], from: &Frame) -> Result<Frame, NodeError> {
    let col = Arc::new(UInt32Array::from(rows.iter().map(|&r| r as u32).collect::<Vec<_>>()));
    let batch =
        RecordBatch::try_new(Arc::new(Schema::new(vec![Field::new("row", DataType::UInt32, false)])), vec![col])?;
    let mut f = Frame::new(info.stamp(batch)?);
    f.inherit_grad_requests(from);
    Ok(f)
}

impl Node for TokenRouter {
    fn process(&mut self, _port: &str, frame: Frame, out: &mut Outputs) -> Result<(), NodeError> {
        let info = StepInfo::of(&frame)?;
        let tokens = TokenBatch::new(read_sequences(frame.batch())?, self.specials.pad);
        let guard = autodiff_guard();
        let mut seg = None;
        let mut depth = None;
        if out.is_connected("seg") {
            let all: Tensor<3> = frame.tensor("hidden")?;
            let f = match seg_hidden(all.clone(), &tokens) {
                Some((hidden, rows)) => {
                    let f = rows_frame(info, &rows, &frame)?
                        .with_tensor("seg_hidden", hidden)?
                        .with_tensor("masks", select_rows(frame.tensor::<Tensor<3>>("masks")?, &rows))?;
                    match image_hidden(all, &tokens.ids, &rows, self.specials.image_context) {
                        Some(image) => f.with_tensor("image_hidden", image)?, // [B', T, d]
                        None => f,
                    }
                }
                None => rows_frame(info, &[], &frame)?,
            };
            seg = Some(f);
        }
        if out.is_connected("depth") {
            let logits: Tensor<3> = frame.tensor("logits")?;
            let f = match span_code_logits(logits, &tokens, &self.specials, self.span_len) {
                Some((span, rows)) => rows_frame(info, &rows, &frame)?
                    .with_tensor("span_logits", span)?
                    .with_tensor("depth", select_rows(frame.tensor::<Tensor<4>>("depth")?, &rows))?,
                None => rows_frame(info, &[], &frame)?,
            };
            depth = Some(f);
        }
        drop(guard); // emits may block on full edges
        if let Some(f) = seg {
            out.emit("seg", f)?;
        }
        if let Some(f) = depth {
            out.emit("depth", f)?;
        }
        out.emit("text", frame)
    }
}
