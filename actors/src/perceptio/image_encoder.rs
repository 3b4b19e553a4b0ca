//! `image-encoder`: InternViT + pixel shuffle + projector over each micro-batch's `pixels`, attaching the image
//! tokens `image_tokens` `[B, T, d]`. Trainable (the projector, and the encoder when the config says so): it asks
//! for its gradients, steps its optimiser once they come back, and checkpoints its part on the barrier.

use burn::tensor::Tensor;
use perceptio_models::perceptio::ImageEncoderPart;
use perceptio_models::perceptio::checkpoint::Part;
use perceptio_runtime::schemas::port::{TensorKind, TensorSpec};
use perceptio_runtime::{
    BuildContext, Frame, Node, NodeError, NodeImpl, NodeKind, NodePorts, Outputs, ParamError, PortContext, PortDecl,
    Signal, autodiff_guard, parse_params,
};
use schemars::JsonSchema;
use serde::Deserialize;

use super::batch::batch_schema;
use super::common::{NodeStart, TrainParams, TrainablePart, param_err};

/// Params of a trainable model node.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PartParams {
    pub train: TrainParams,
}

pub struct ImageEncoderKind;

impl NodeKind for ImageEncoderKind {
    fn name(&self) -> &'static str {
        "image-encoder"
    }

    fn about(&self) -> &'static str {
        "InternViT + projector: micro-batch `pixels` -> `image_tokens` [B, T, d] (trainable part `image`)"
    }

    fn params_schema(&self) -> schemars::schema::RootSchema {
        schemars::schema_for!(PartParams)
    }

    fn ports(&self, ctx: &PortContext<'_>) -> Result<NodePorts, ParamError> {
        let _: PartParams = parse_params(ctx.params)?;
        let mut out = ctx.inputs.get("in").cloned().unwrap_or_else(batch_schema);
        out.tensors.push(TensorSpec::new("image_tokens", TensorKind::Float, 3));
        Ok(NodePorts {
            inputs: vec![PortDecl::required("in", batch_schema())],
            outputs: vec![PortDecl::required("out", out)],
        })
    }

    fn build(&self, ctx: &BuildContext<'_>) -> Result<NodeImpl, ParamError> {
        let start = NodeStart::read(ctx)?;
        let (p, dir, cfg) = (&start.params, &start.dir, &start.cfg);
        let device = ctx.device.clone().autodiff();
        let module = start.load(Part::Image, cfg.init_image(&device))?;
        let module = if cfg.trainable.vision_encoder {
            module
        } else {
            ImageEncoderPart { vision_tower: burn::module::Module::no_grad(module.vision_tower), ..module }
        };
        let resume = p.train.resume.then_some(dir.as_path());
        let part = TrainablePart::new(module, Part::Image, &p.train, resume).map_err(param_err)?;
        Ok(NodeImpl::Node(Box::new(ImageEncoderNode { part, node: ctx.node_id.to_string() })))
    }
}

struct ImageEncoderNode {
    part: TrainablePart<ImageEncoderPart>,
    node: String,
}

impl Node for ImageEncoderNode {
    fn process(&mut self, _port: &str, frame: Frame, out: &mut Outputs) -> Result<(), NodeError> {
        let mut frame = {
            let _autodiff = autodiff_guard();
            let pixels: Tensor<4> = frame.tensor("pixels")?;
            let tokens = self.part.module.forward(pixels); // [B, T, d]
            frame.with_tensor("image_tokens", tokens)?
        };
        self.part.request(&mut frame, &self.node);
        out.emit("out", frame)?;
        self.part.settle(out)
    }

    fn on_signal(&mut self, signal: &Signal, _out: &mut Outputs) -> Result<(), NodeError> {
        self.part.on_signal(signal)
    }
}
