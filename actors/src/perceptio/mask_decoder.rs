//! `mask-decoder`: the `[SEG]` projection, SAM2 prompt encoder and mask decoder over the rows that have a
//! `[SEG]` token, on the frozen SAM2 features of the same micro-batch (plus the grounding map over the rows'
//! image-token states, when the model has one); emits the segmentation loss terms (sigmoid cross-entropy, Dice,
//! and the grounding cross-entropy with a map) as a one-row loss frame. Trainable part `seg`.

use arrow::array::UInt32Array;
use burn::tensor::Tensor;
use perceptio_models::perceptio::SegPart;
use perceptio_models::perceptio::checkpoint::Part;
use perceptio_models::perceptio::loss::LossConfig;
use perceptio_models::perceptio::step::{seg_terms, select_rows};
use perceptio_runtime::schemas::PortSchema;
use perceptio_runtime::{
    BuildContext, Frame, Node, NodeError, NodeImpl, NodeKind, NodePorts, Outputs, ParamError, PortContext, PortDecl,
    Signal, autodiff_guard, parse_params,
};

use super::common::{Join, NodeStart, StepInfo, TrainablePart, param_err};
use super::image_encoder::PartParams;
use super::router::seg_schema;
use super::sam2_encoder::features_schema;

pub struct MaskDecoderKind;

/// Schema of a one-row loss frame (the terms are optional `[1]` tensors).
pub fn loss_schema() -> PortSchema {
    PortSchema::default()
}

impl NodeKind for MaskDecoderKind {
    fn name(&self) -> &'static str {
        "mask-decoder"
    }

    fn about(&self) -> &'static str {
        "[SEG] projection + SAM2 mask decoder on frozen SAM2 features -> segmentation loss terms (trainable part `seg`)"
    }

    fn params_schema(&self) -> schemars::schema::RootSchema {
        schemars::schema_for!(PartParams)
    }

    fn ports(&self, ctx: &PortContext<'_>) -> Result<NodePorts, ParamError> {
        let _: PartParams = parse_params(ctx.params)?;
        Ok(NodePorts {
            inputs: vec![PortDecl::required("seg", seg_schema()), PortDecl::required("features", features_schema())],
            outputs: vec![PortDecl::required("loss", loss_schema())],
        })
    }

    fn build(&self, ctx: &BuildContext<'_>) -> Result<NodeImpl, ParamError> {
        let start = NodeStart::read(ctx)?;
        let (p, dir, cfg) = (&start.params, &start.dir, &start.cfg);
        let device = ctx.device.clone().autodiff();
        let fresh = cfg.init_seg(&device).map_err(param_err)?;
        let mut module = start.load(Part::Seg, fresh)?;
        module.sam2.vision_encoder = burn::module::Module::no_grad(module.sam2.vision_encoder);
        let resume = p.train.resume.then_some(dir.as_path());
        let part = TrainablePart::new(module, Part::Seg, &p.train, resume).map_err(param_err)?;
        let join = Join::new(["seg".to_string(), "features".to_string()]);
        Ok(NodeImpl::Node(Box::new(MaskDecoderNode { part, join, node: ctx.node_id.to_string() })))
    }
}

struct MaskDecoderNode {
    part: TrainablePart<SegPart>,
    join: Join,
    node: String,
}

/// The `row` column of a routed frame.
pub fn rows_of(frame: &Frame) -> Result<Vec<usize>, NodeError> {
    let col = frame
        .batch()
        .column_by_name("row")
        .and_then(|c| c.as_any().downcast_ref::<UInt32Array>())
        .ok_or_else(|| NodeError::msg("routed frame has no uint32 `row` column"))?;
    Ok(col.values().iter().map(|&r| r as usize).collect())
}

impl Node for MaskDecoderNode {
    fn process(&mut self, port: &str, frame: Frame, out: &mut Outputs) -> Result<(), NodeError> {
        let Some(mut pair) = self.join.push(port, frame)? else { return Ok(()) };
        let seg = pair.remove("seg").expect("joined");
        let features = pair.remove("features").expect("joined");
        let info = StepInfo::of(&seg)?;
        let rows = rows_of(&seg)?;
        let mut loss = info.empty_frame(1)?;
        loss.inherit_grad_requests(&seg);
        let guard = autodiff_guard();
        if !rows.is_empty() {
            let levels =
                ["fpn0", "fpn1", "fpn2"].map(|n| features.tensor::<Tensor<4>>(n).map(|t| select_rows(t, &rows)));
            let [f0, f1, f2] = levels;
            let hidden: Tensor<2> = seg.tensor("seg_hidden")?;
            let image: Option<Tensor<3>> = seg.optional_tensor("image_hidden")?;
            let masks: Tensor<3> = seg.tensor("masks")?;
            let (logits, map) = self
                .part
                .module
                .forward_with_map(hidden, image, [f0?, f1?, f2?])
                .map_err(|e| NodeError::msg(e.to_string()))?;
            let [_, h, w] = masks.dims();
            let logits = self.part.module.upsample(logits, [h, w]); // [B', H, W]
            let terms = seg_terms(logits, map, masks, &LossConfig::new());
            if let (Some(bce), Some(dice)) = (terms.seg_bce, terms.seg_dice) {
                loss = loss.with_tensor("seg_bce", bce)?.with_tensor("seg_dice", dice)?;
            }
            if let Some(ground) = terms.seg_ground {
                loss = loss.with_tensor("seg_ground", ground)?;
            }
        }
        drop((seg, features));
        drop(guard);
        self.part.request(&mut loss, &self.node);
        out.emit("loss", loss)?;
        self.part.settle(out)
    }

    fn on_signal(&mut self, signal: &Signal, _out: &mut Outputs) -> Result<(), NodeError> {
        self.part.on_signal(signal)
    }

    fn finish(&mut self, out: &mut Outputs) -> Result<(), NodeError> {
        if self.join.leftover() > 0 {
            return Err(NodeError::msg(format!(
                "{} frames never met their partner (the `seg` and `features` inputs disagree on the micro-batches)",
                self.join.leftover()
            )));
        }
        let _ = out;
        Ok(())
    }
}
