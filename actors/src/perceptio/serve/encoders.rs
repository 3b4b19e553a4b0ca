//! `serve-image-encoder` and `serve-sam2-encoder`: the serving graph's two image encoders, side by side on every
//! prepared frame. The first turns `pixels` into the LLM's image tokens and passes the requests on to the LLM;
//! the second runs SAM2's frozen Hiera + FPN on `sam_pixels` while the LLM decodes, so a `[SEG]` state finds its
//! request's features already waiting at the mask decoder.

use arrow::datatypes::DataType;
use burn::prelude::*;
use perceptio_models::perceptio::checkpoint::{Part, load_part, read_config};
use perceptio_models::perceptio::{ImageEncoderPart, SegPart};
use perceptio_runtime::schemas::port::{TensorKind, TensorSpec};
use perceptio_runtime::schemas::{FieldSpec, PortSchema};
use perceptio_runtime::{
    BuildContext, Frame, Node, NodeError, NodeImpl, NodeKind, NodePorts, Outputs, ParamError, PortContext, PortDecl,
    parse_params,
};

use super::ServeModelParams;
use super::prepare::{prepared_port_schema, prepared_schema};
use crate::perceptio::sam2_encoder::features_schema;

/// Prepared requests with their image tokens `image_tokens` `[B, T, d]` (what the LLM reads).
pub fn image_port_schema() -> PortSchema {
    PortSchema::from_arrow(&prepared_schema()).with_tensor(TensorSpec::new("image_tokens", TensorKind::Float, 3))
}

/// SAM2 features of prepared requests: `id` + `fpn0..2` (finest first).
pub fn serve_features_schema() -> PortSchema {
    features_schema().with_field(FieldSpec::new("id", DataType::Utf8))
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

pub struct ServeSam2EncoderKind;

impl NodeKind for ServeSam2EncoderKind {
    fn name(&self) -> &'static str {
        "serve-sam2-encoder"
    }

    fn about(&self) -> &'static str {
        "serving: frozen SAM2 image encoder over prepared `sam_pixels` -> `id` + FPN maps `fpn0..2`"
    }

    fn params_schema(&self) -> schemars::schema::RootSchema {
        schemars::schema_for!(ServeModelParams)
    }

    fn ports(&self, ctx: &PortContext<'_>) -> Result<NodePorts, ParamError> {
        let _: ServeModelParams = parse_params(ctx.params)?;
        Ok(NodePorts {
            inputs: vec![PortDecl::required("in", prepared_port_schema())],
            outputs: vec![PortDecl::required("out", serve_features_schema())],
        })
    }

    fn build(&self, ctx: &BuildContext<'_>) -> Result<NodeImpl, ParamError> {
        let p: ServeModelParams = parse_params(ctx.params)?;
        let device = ctx.device.clone().without_autodiff();
        let (_, seg) = load_serving_part(
            &p,
            Part::Seg,
            |cfg, d| cfg.init_seg(d).map_err(|e| ParamError::new("model", e.to_string())),
            &device,
        )?;
        Ok(NodeImpl::Node(Box::new(Sam2EncoderNode { seg })))
    }
}

struct Sam2EncoderNode {
    seg: SegPart,
}

impl Node for Sam2EncoderNode {
    fn process(&mut self, _port: &str, frame: Frame, out: &mut Outputs) -> Result<(), NodeError> {
        let pixels: Tensor<4> = frame.tensor("sam_pixels")?; // [B, 3, S, S]
        let [f0, f1, f2] = self.seg.encode(pixels).map_err(|e| NodeError::msg(e.to_string()))?;
        let b = frame.batch();
        let ids = b.project(&[b.schema().index_of("id")?])?; // the `id` column only
        let features = Frame::new(ids).with_tensor("fpn0", f0)?.with_tensor("fpn1", f1)?.with_tensor("fpn2", f2)?;
        out.emit("out", features)
    }
}
