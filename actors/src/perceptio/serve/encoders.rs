//! `serve-image-encoder`: InternViT + projector over each prepared frame's `pixels`, handing the requests on to
//! the LLM with their image tokens. Also the loader the serving nodes share for their model part.

use burn::prelude::*;
use perceptio_models::perceptio::ImageEncoderPart;
use perceptio_models::perceptio::checkpoint::{Part, load_part, read_config};
use perceptio_runtime::schemas::PortSchema;
use perceptio_runtime::schemas::port::{TensorKind, TensorSpec};
use perceptio_runtime::{
    BuildContext, Frame, Node, NodeError, NodeImpl, NodeKind, NodePorts, Outputs, ParamError, PortContext, PortDecl,
    parse_params,
};

use super::ServeModelParams;
use super::prepare::{prepared_port_schema, prepared_schema};

/// Prepared requests with their image tokens `image_tokens` `[B, T, d]` (what the LLM reads).
pub fn image_port_schema() -> PortSchema {
    PortSchema::from_arrow(&prepared_schema()).with_tensor(TensorSpec::new("image_tokens", TensorKind::Float, 3))
}

/// Loads one part of a model directory onto the node's plain (inference) device.
pub fn load_serving_part<M: burn::module::Module + burn_store::ModuleSnapshot>(
    params: &ServeModelParams,
    part: Part,
    init: impl FnOnce(&perceptio_models::perceptio::PerceptioConfig, &Device) -> Result<M, ParamError>,
    device: &Device,
) -> Result<(perceptio_models::perceptio::PerceptioConfig, M), ParamError> {
    let at = |e: &dyn std::fmt::Display| ParamError::new("model", format!("{}: {e}", params.model.display()));
    let cfg = read_config(&params.model).map_err(|e| at(&e))?;
    let fresh = init(&cfg, device)?;
    let module = load_part(&params.model, part, fresh).map_err(|e| at(&e))?;
    Ok((cfg, module))
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
        let (_, image) = load_serving_part(&p, Part::Image, |cfg, d| Ok(cfg.init_image(d)), &device)?;
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
