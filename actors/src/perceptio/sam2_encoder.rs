//! `sam2-encoder`: the frozen SAM2 image encoder (Hiera + FPN) over each micro-batch's `sam_pixels`; emits the
//! three FPN maps `fpn0`, `fpn1`, `fpn2` (finest first) for the mask decoder. Inference only: its outputs carry no
//! gradient and it could be replaced by replaying cached features.

use burn::tensor::Tensor;
use perceptio_models::perceptio::SegPart;
use perceptio_models::perceptio::checkpoint::Part;
use perceptio_runtime::schemas::PortSchema;
use perceptio_runtime::schemas::port::{TensorKind, TensorSpec};
use perceptio_runtime::{
    BuildContext, Frame, Node, NodeError, NodeImpl, NodeKind, NodePorts, Outputs, ParamError, PortContext, PortDecl,
    autodiff_guard, parse_params,
};

use super::batch::batch_schema;
use super::common::{NodeStart, StepInfo, param_err};
use super::image_encoder::PartParams;

pub struct Sam2EncoderKind;

/// The port schema of SAM2 features.
pub fn features_schema() -> PortSchema {
    let mut s = PortSchema::default();
    for name in ["fpn0", "fpn1", "fpn2"] {
        s.tensors.push(TensorSpec::new(name, TensorKind::Float, 4));
    }
    s
}

impl NodeKind for Sam2EncoderKind {
    fn name(&self) -> &'static str {
        "sam2-encoder"
    }

    fn about(&self) -> &'static str {
        "frozen SAM2 image encoder: micro-batch `sam_pixels` -> FPN maps `fpn0..2`"
    }

    fn params_schema(&self) -> schemars::schema::RootSchema {
        schemars::schema_for!(PartParams)
    }

    fn ports(&self, ctx: &PortContext<'_>) -> Result<NodePorts, ParamError> {
        let _: PartParams = parse_params(ctx.params)?;
        Ok(NodePorts {
            inputs: vec![PortDecl::required("in", batch_schema())],
            outputs: vec![PortDecl::required("out", features_schema())],
        })
    }

    fn build(&self, ctx: &BuildContext<'_>) -> Result<NodeImpl, ParamError> {
        let start = NodeStart::read(ctx)?;
        let cfg = &start.cfg;
        // frozen and inference only: the plain backend (its outputs are lifted to autodiff tensors)
        let device = ctx.device.clone().without_autodiff();
        let seg = cfg.init_seg(&device).map_err(param_err)?;
        let seg = start.load(Part::Seg, seg)?;
        Ok(NodeImpl::Node(Box::new(Sam2EncoderNode { seg })))
    }
}

struct Sam2EncoderNode {
    seg: SegPart,
}

impl Node for Sam2EncoderNode {
    fn process(&mut self, _port: &str, frame: Frame, out: &mut Outputs) -> Result<(), NodeError> {
        let info = StepInfo::of(&frame)?;
        // frozen: encode on the plain backend, outside the autodiff lock (overlaps with the trainable chain)
        let pixels: Tensor<4> = {
            let _autodiff = autodiff_guard();
            frame.tensor::<Tensor<4>>("sam_pixels")?.inner() // [B, 3, S, S]
        };
        let levels = self.seg.encode(pixels).map_err(|e| NodeError::msg(e.to_string()))?;
        let features = {
            let _autodiff = autodiff_guard();
            let [f0, f1, f2] = levels.map(Tensor::from_inner);
            info.empty_frame(frame.rows())?.with_tensor("fpn0", f0)?.with_tensor("fpn1", f1)?.with_tensor("fpn2", f2)?
        };
        out.emit("out", features)
    }
}
