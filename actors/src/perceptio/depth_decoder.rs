//! `depth-decoder`: the soft depth reconstruction. For the rows whose depth span has exactly N codes, the span's
//! code logits go through a softmax (with the model's temperature), the expected codebook embedding and the
//! frozen VQ-VAE decoder; emits the reconstruction MSE against the target depth as a one-row loss frame.

use burn::tensor::Tensor;
use perceptio_models::depth::{CodeScores, VqVae};
use perceptio_models::perceptio::checkpoint::Part;
use perceptio_models::perceptio::loss::depth_mse;
use perceptio_runtime::{
    BuildContext, Frame, Node, NodeError, NodeImpl, NodeKind, NodePorts, Outputs, ParamError, PortContext, PortDecl,
    autodiff_guard, parse_params,
};

use super::common::{NodeStart, StepInfo, param_err};
use super::image_encoder::PartParams;
use super::mask_decoder::{loss_schema, rows_of};
use super::router::depth_schema;

pub struct DepthDecoderKind;

impl NodeKind for DepthDecoderKind {
    fn name(&self) -> &'static str {
        "depth-decoder"
    }

    fn about(&self) -> &'static str {
        "soft depth reconstruction through the frozen VQ-VAE decoder -> reconstruction loss term"
    }

    fn params_schema(&self) -> schemars::schema::RootSchema {
        schemars::schema_for!(PartParams)
    }

    fn ports(&self, ctx: &PortContext<'_>) -> Result<NodePorts, ParamError> {
        let _: PartParams = parse_params(ctx.params)?;
        Ok(NodePorts {
            inputs: vec![PortDecl::required("in", depth_schema())],
            outputs: vec![PortDecl::required("loss", loss_schema())],
        })
    }

    fn build(&self, ctx: &BuildContext<'_>) -> Result<NodeImpl, ParamError> {
        let start = NodeStart::read(ctx)?;
        let cfg = &start.cfg;
        let device = ctx.device.clone().autodiff();
        let fresh = cfg.init_vqvae(&device).map_err(param_err)?;
        let vqvae = burn::module::Module::no_grad(start.load(Part::VqVae, fresh)?);
        Ok(NodeImpl::Node(Box::new(DepthDecoderNode { vqvae, temperature: cfg.depth_temperature })))
    }
}

struct DepthDecoderNode {
    vqvae: VqVae,
    temperature: f64,
}

impl Node for DepthDecoderNode {
    fn process(&mut self, _port: &str, frame: Frame, out: &mut Outputs) -> Result<(), NodeError> {
        let info = StepInfo::of(&frame)?;
        let mut loss = info.empty_frame(1)?;
        loss.inherit_grad_requests(&frame);
        let guard = autodiff_guard();
        if !rows_of(&frame)?.is_empty() {
            let span: Tensor<3> = frame.tensor("span_logits")?;
            let target: Tensor<4> = frame.tensor("depth")?;
            let pred = self
                .vqvae
                .decode_soft(CodeScores::Logits(span), self.temperature)
                .map_err(|e| NodeError::msg(e.to_string()))?; // [B'', 1, D, D]
            loss = loss.with_tensor("rec", depth_mse(pred, target))?;
        }
        drop(guard);
        out.emit("loss", loss)
    }
}
