//! `serve-mask-decoder` and `serve-depth-decoder`: the serving graph's two heads. The mask decoder turns a
//! request's `[SEG]` state and SAM2 maps (joined by the SAM2 encoder) into its `Mask` event; the depth decoder turns
//! a closed span's codes into the `Depth` event. Both tag their events with the token they answer (`[SEG]`,
//! `<d_end>`) and how long they took; a model failure becomes that request's `Error` event.

use std::time::Instant;

use arrow::array::{ListArray, UInt32Array};
use burn::prelude::*;
use perceptio_models::depth::VqVae;
use perceptio_models::perceptio::checkpoint::Part;
use perceptio_models::perceptio::{PerceptioConfig, SegPart};
use perceptio_runtime::schemas::PortSchema;
use perceptio_runtime::{
    BuildContext, Frame, Node, NodeError, NodeImpl, NodeKind, NodePorts, Outputs, ParamError, PortContext, PortDecl,
    parse_params,
};

use super::event_port_schema;
use super::router::codes_schema;
use super::sam2::seg_features_port_schema;
use super::{EventExtra, ModelDir, ServeEvent, ServeModelParams, event_frame_with, request_keys};
use crate::perceptio::common::column;

/// A tensor's values on the host, as f32.
fn host<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>, String> {
    t.into_data().convert::<f32>().try_into_vec::<f32>().map_err(|e| format!("{e:?}"))
}

/// Emits a head's events for `keys`: one `size x size` map per request (row-major, in `keys` order) made into
/// an event by `event`, or each request's `Error` when the head failed; tagged with the token they answer and
/// the time since `started`.
fn emit_head_events(
    out: &mut Outputs,
    keys: &[u64],
    maps: Result<(usize, Vec<f32>), String>,
    (what, token): (&str, u32),
    event: fn(Vec<f32>, usize) -> ServeEvent,
    started: Instant,
) -> Result<(), NodeError> {
    let events: Vec<(u64, ServeEvent)> = match maps {
        Ok((size, v)) => keys
            .iter()
            .enumerate()
            .map(|(i, &k)| (k, event(v[i * size * size..(i + 1) * size * size].to_vec(), size)))
            .collect(),
        Err(e) => keys.iter().map(|&k| (k, ServeEvent::Error { message: format!("{what}: {e}") })).collect(),
    };
    let took = started.elapsed().as_nanos() as u64;
    let extra = EventExtra { token: Some(token), decode_ns: Some(took), ..EventExtra::default() };
    out.emit("out", event_frame_with(&events, &vec![extra; events.len()])?)
}

pub struct ServeMaskDecoderKind;

impl NodeKind for ServeMaskDecoderKind {
    fn name(&self) -> &'static str {
        "serve-mask-decoder"
    }

    fn about(&self) -> &'static str {
        "serving: a request's [SEG] state + SAM2 maps -> its mask event"
    }

    fn params_schema(&self) -> schemars::schema::RootSchema {
        schemars::schema_for!(ServeModelParams)
    }

    fn ports(&self, ctx: &PortContext<'_>) -> Result<NodePorts, ParamError> {
        let _: ServeModelParams = parse_params(ctx.params)?;
        Ok(NodePorts {
            inputs: vec![PortDecl::required("in", seg_features_port_schema())],
            outputs: vec![PortDecl::required("out", event_port_schema())],
        })
    }

    fn build(&self, ctx: &BuildContext<'_>) -> Result<NodeImpl, ParamError> {
        let p: ServeModelParams = parse_params(ctx.params)?;
        let dir = ModelDir::open(&p.model)?;
        let seg = dir.load(Part::Seg, PerceptioConfig::init_seg, &ctx.device.clone().without_autodiff())?;
        let seg_token = dir.text()?.specials.seg;
        Ok(NodeImpl::Node(Box::new(MaskNode { seg, size: dir.cfg.sam2.image_size(), seg_token })))
    }
}

struct MaskNode {
    seg: SegPart,
    size: usize,
    seg_token: u32,
}

impl Node for MaskNode {
    fn process(&mut self, _port: &str, frame: Frame, out: &mut Outputs) -> Result<(), NodeError> {
        let keys = request_keys(&frame)?;
        if keys.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let hidden: Tensor<2> = frame.tensor("hidden")?; // [n, d]
        let image: Option<Tensor<3>> = frame.optional_tensor("image_hidden")?; // [n, T, d]
        let levels: [Tensor<4>; 3] = [frame.tensor("fpn0")?, frame.tensor("fpn1")?, frame.tensor("fpn2")?]; // [n, C, H, W]
        let s = self.size;
        let probs = self
            .seg
            .mask_probs(hidden, image, levels, s) // [n, S, S]
            .map_err(|e| e.to_string())
            .and_then(host);
        let mask = |probs, size| ServeEvent::Mask { probs, size };
        emit_head_events(out, &keys, probs.map(|v| (s, v)), ("mask decoder", self.seg_token), mask, started)
    }
}

pub struct ServeDepthDecoderKind;

impl NodeKind for ServeDepthDecoderKind {
    fn name(&self) -> &'static str {
        "serve-depth-decoder"
    }

    fn about(&self) -> &'static str {
        "serving: a closed depth span's codes -> the VQ-VAE decoder's depth map event"
    }

    fn params_schema(&self) -> schemars::schema::RootSchema {
        schemars::schema_for!(ServeModelParams)
    }

    fn ports(&self, ctx: &PortContext<'_>) -> Result<NodePorts, ParamError> {
        let _: ServeModelParams = parse_params(ctx.params)?;
        Ok(NodePorts {
            inputs: vec![PortDecl::required("in", PortSchema::from_arrow(&codes_schema()))],
            outputs: vec![PortDecl::required("out", event_port_schema())],
        })
    }

    fn build(&self, ctx: &BuildContext<'_>) -> Result<NodeImpl, ParamError> {
        let p: ServeModelParams = parse_params(ctx.params)?;
        let dir = ModelDir::open(&p.model)?;
        let device = ctx.device.clone().without_autodiff();
        let vqvae = dir.load(Part::VqVae, PerceptioConfig::init_vqvae, &device)?;
        Ok(NodeImpl::Node(Box::new(DepthNode { vqvae, d_end: dir.text()?.specials.d_end, device })))
    }
}

struct DepthNode {
    vqvae: VqVae,
    d_end: u32,
    device: Device,
}

impl Node for DepthNode {
    fn process(&mut self, _port: &str, frame: Frame, out: &mut Outputs) -> Result<(), NodeError> {
        let keys = request_keys(&frame)?;
        if keys.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let lists = column::<ListArray>(frame.batch(), "codes")?;
        let mut codes: Vec<i64> = Vec::new();
        let mut n = None;
        for r in 0..keys.len() {
            let row = lists.value(r);
            let row = row
                .as_any()
                .downcast_ref::<UInt32Array>()
                .ok_or_else(|| NodeError::msg("column `codes` does not hold u32 lists"))?;
            let first = *n.get_or_insert(row.len());
            if first != row.len() {
                return Err(NodeError::msg(format!("row {r}: {} codes where row 0 has {first}", row.len())));
            }
            codes.extend(row.values().iter().map(|&c| c as i64));
        }
        let (b, n) = (keys.len(), n.unwrap_or(0));
        let ids = Tensor::<2, Int>::from_data(TensorData::new(codes, [b, n]), &self.device); // [B, N]
        let maps = self
            .vqvae
            .decode(ids) // [B, 1, D, D]
            .map_err(|e| e.to_string())
            .and_then(|m| {
                let d = m.dims()[2];
                host(m).map(|v| (d, v))
            });
        let depth = |values, size| ServeEvent::Depth { values, size };
        emit_head_events(out, &keys, maps, ("depth decoder", self.d_end), depth, started)
    }
}
