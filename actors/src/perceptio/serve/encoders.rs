//! `serve-image-encoder`: InternViT + projector over each prepared frame's `pixels`, handing the requests on to
//! the LLM with their image tokens.

use burn::prelude::*;
use perceptio_models::perceptio::ImageEncoderPart;
use perceptio_models::perceptio::checkpoint::Part;
use perceptio_runtime::schemas::PortSchema;
use perceptio_runtime::schemas::port::{TensorKind, TensorSpec};
use perceptio_runtime::{
    BuildContext, Frame, Node, NodeError, NodeImpl, NodeKind, NodePorts, Outputs, ParamError, PortContext, PortDecl,
    parse_params,
};

use super::prepare::{prepared_port_schema, prepared_schema};
use super::{ModelDir, ServeModelParams};

/// Prepared requests with their image tokens `image_tokens` `[B, T, d]` (what the LLM reads).
pub fn image_port_schema() -> PortSchema {
    PortSchema::from_arrow(&prepared_schema()).with_tensor(TensorSpec::new("image_tokens", TensorKind::Float, 3))
}

pub struct ServeImageEncoderKind;

impl NodeKind for ServeImageEncoderKind {
    fn name(&self) -> &'static str {
        "serve-image-encoder"
    }

    fn about(&self) -> &'static str {
        "serving: InternViT + projector over prepared `pixels` -> `image_tokens` [B, T, d] for the LLM"
    }

    fn params_schema(&self) -> schemars::schema::RootSchema {
        schemars::schema_for!(ServeModelParams)
    }

    fn ports(&self, ctx: &PortContext<'_>) -> Result<NodePorts, ParamError> {
        let _: ServeModelParams = parse_params(ctx.params)?;
        Ok(NodePorts {
            inputs: vec![PortDecl::required("in", prepared_port_schema())],
            outputs: vec![PortDecl::required("out", image_port_schema())],
        })
    }

    fn build(&self, ctx: &BuildContext<'_>) -> Result<NodeImpl, ParamError> {
        let p: ServeModelParams = parse_params(ctx.params)?;
        let device = ctx.device.clone().without_autodiff();
        let image = ModelDir::open(&p.model)?.load(Part::Image, |cfg, d| Ok(cfg.init_image(d)), &device)?;
        Ok(NodeImpl::Node(Box::new(ImageEncoderNode { image })))
    }
}

struct ImageEncoderNode {
    image: ImageEncoderPart,
}

impl Node for ImageEncoderNode {
    fn process(&mut self, _port: &str, frame: Frame, out: &mut Outputs) -> Result<(), NodeError> {
        let pixels: Tensor<4> = frame.tensor("pixels")?; // [B, 3, p, p]
        let tokens = self.image.forward(pixels); // [B, T, d]
        out.emit("out", Frame::new(frame.batch().clone()).with_tensor("image_tokens", tokens)?)
    }
}
