//! `llm`: the decoder over each micro-batch's token ids with its `image_tokens` in the `<IMG_CONTEXT>` slots,
//! teacher-forced; attaches `hidden` `[B, S, d]` and `logits` `[B, S, V + A]`. Trainable part `llm` (LoRA or full,
//! plus the added-token rows).

use burn::tensor::Tensor;
use perceptio_models::perceptio::LlmPart;
use perceptio_models::perceptio::checkpoint::Part;
use perceptio_runtime::schemas::port::{TensorKind, TensorSpec};
use perceptio_runtime::{
    BuildContext, Frame, Node, NodeError, NodeImpl, NodeKind, NodePorts, Outputs, ParamError, PortContext, PortDecl,
    Signal, autodiff_guard, parse_params,
};

use super::batch::batch_schema;
use super::common::{NodeStart, TrainablePart, param_err, read_sequences};
use super::image_encoder::PartParams;

pub struct LlmKind;

/// What the LLM node emits: the micro-batch plus `hidden` and `logits`.
pub fn llm_output_schema() -> perceptio_runtime::schemas::PortSchema {
    let mut s = batch_schema();
    s.tensors.push(TensorSpec::new("hidden", TensorKind::Float, 3));
    s.tensors.push(TensorSpec::new("logits", TensorKind::Float, 3));
    s
}

impl NodeKind for LlmKind {
    fn name(&self) -> &'static str {
        "llm"
    }

    fn about(&self) -> &'static str {
        "Qwen2 decoder, teacher-forced: ids + `image_tokens` -> `hidden`, `logits` (trainable part `llm`)"
    }

    fn params_schema(&self) -> schemars::schema::RootSchema {
        schemars::schema_for!(PartParams)
    }

    fn ports(&self, ctx: &PortContext<'_>) -> Result<NodePorts, ParamError> {
        let _: PartParams = parse_params(ctx.params)?;
        let mut input = batch_schema();
        input.tensors.push(TensorSpec::new("image_tokens", TensorKind::Float, 3));
        Ok(NodePorts {
            inputs: vec![PortDecl::required("in", input)],
            outputs: vec![PortDecl::required("out", llm_output_schema())],
        })
    }

    fn build(&self, ctx: &BuildContext<'_>) -> Result<NodeImpl, ParamError> {
        let start = NodeStart::read(ctx)?;
        let (p, dir, cfg) = (&start.params, &start.dir, &start.cfg);
        let device = ctx.device.clone().autodiff();
        let fresh = cfg.init_llm(&device).map_err(param_err)?;
        let module = start.load(Part::Llm, fresh)?;
        let resume = p.train.resume.then_some(dir.as_path());
        let part = TrainablePart::new(module, Part::Llm, &p.train, resume).map_err(param_err)?;
        let pad = read_pad(&dir).map_err(param_err)?;
        Ok(NodeImpl::Node(Box::new(LlmNode { part, pad, node: ctx.node_id.to_string() })))
    }
}

/// The padding id of a model directory's tokenizer.
pub fn read_pad(dir: &std::path::Path) -> Result<u32, String> {
    let tok = perceptio_models::tokenizer::TextTokenizer::from_file(
        dir.join(perceptio_models::perceptio::checkpoint::TOKENIZER_FILE),
    )
    .map_err(|e| e.to_string())?;
    tok.token_id("<|endoftext|>").ok_or_else(|| "tokenizer has no `<|endoftext|>` (padding) token".to_string())
}

struct LlmNode {
    part: TrainablePart<LlmPart>,
    pad: u32,
    node: String,
}

impl Node for LlmNode {
    fn process(&mut self, _port: &str, frame: Frame, out: &mut Outputs) -> Result<(), NodeError> {
        let seqs = read_sequences(frame.batch())?;
        let batch = perceptio_models::perceptio::TokenBatch::new(seqs, self.pad);
        let mut frame = {
            let _autodiff = autodiff_guard();
            let image: Tensor<3> = frame.tensor("image_tokens")?;
            let o = self.part.module.forward(&batch.ids, Some(image)).map_err(|e| NodeError::msg(e.to_string()))?;
            frame.with_tensor("hidden", o.hidden)?.with_tensor("logits", o.logits)?
        };
        self.part.request(&mut frame, &self.node);
        out.emit("out", frame)?;
        self.part.settle(out)
    }

    fn on_signal(&mut self, signal: &Signal, _out: &mut Outputs) -> Result<(), NodeError> {
        self.part.on_signal(signal)
    }
}
