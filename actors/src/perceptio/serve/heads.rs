//! `serve-mask-decoder` and `serve-depth-decoder`: the serving graph's two heads. The mask decoder turns a
//! request's `[SEG]` state and SAM2 maps (joined by the SAM2 encoder) into its `Mask` event; the depth decoder turns
//! a closed span's codes into the `Depth` event. Both tag their events with the token they answer (`[SEG]`, `<d_end>`) and how long they took; a model
//! failure becomes that request's `Error` event.

use std::time::Instant;

use arrow::array::{ListArray, UInt32Array};
use burn::prelude::*;
use perceptio_models::depth::VqVae;
use perceptio_models::perceptio::SegPart;
use perceptio_models::perceptio::checkpoint::{Part, read_config};
use perceptio_models::perceptio::tokens::special_tokens;
use perceptio_models::tokenizer::TextTokenizer;
use perceptio_runtime::schemas::PortSchema;
use perceptio_runtime::{
    BuildContext, Frame, Node, NodeError, NodeImpl, NodeKind, NodePorts, Outputs, ParamError, PortContext, PortDecl,
    parse_params,
};

use super::encoders::load_serving_part;
use super::event_port_schema;
use super::router::codes_schema;
use super::sam2::seg_features_port_schema;
use super::{EventExtra, ServeEvent, ServeModelParams, event_frame_with, request_keys};
use crate::perceptio::common::column;

/// The id of a special token of the model directory's tokenizer (`[SEG]` or `<d_end>`).
fn special_id(
    p: &ServeModelParams,
    pick: impl Fn(&perceptio_models::perceptio::SpecialTokens) -> u32,
) -> Result<u32, ParamError> {
    let at = |e: &dyn std::fmt::Display| ParamError::new("model", format!("{}: {e}", p.model.display()));
    let cfg = read_config(&p.model).map_err(|e| at(&e))?;
    let path = p.model.join(perceptio_models::perceptio::checkpoint::TOKENIZER_FILE);
    let tok = TextTokenizer::from_file(&path).map_err(|e| at(&e))?;
    Ok(pick(&special_tokens(&tok, cfg.num_codes()).map_err(|e| at(&e))?))
}

fn error_events(keys: &[u64], what: &str, e: impl std::fmt::Display) -> Vec<(u64, ServeEvent)> {
    keys.iter().map(|&k| (k, ServeEvent::Error { message: format!("{what}: {e}") })).collect()
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
        let device = ctx.device.clone().without_autodiff();
        let init = |cfg: &perceptio_models::perceptio::PerceptioConfig, d: &Device| {
            cfg.init_seg(d).map_err(|e| ParamError::new("model", e.to_string()))
        };
        let (cfg, seg) = load_serving_part(&p, Part::Seg, init, &device)?;
        Ok(NodeImpl::Node(Box::new(MaskNode {
            seg,
            size: cfg.sam2.image_size(),
            seg_token: special_id(&p, |sp| sp.seg)?,
        })))
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
        let levels: [Tensor<4>; 3] = [frame.tensor("fpn0")?, frame.tensor("fpn1")?, frame.tensor("fpn2")?]; // [n, C, H, W]
        let s = self.size;
        let probs = self
            .seg
            .mask_probs(hidden, levels, s) // [n, S, S]
            .map_err(|e| e.to_string())
            .and_then(|p| p.into_data().convert::<f32>().try_into_vec::<f32>().map_err(|e| format!("{e:?}")));
        let events = match probs {
            Ok(v) => keys
                .iter()
                .enumerate()
                .map(|(i, &k)| (k, ServeEvent::Mask { probs: v[i * s * s..(i + 1) * s * s].to_vec(), size: s }))
                .collect(),
            Err(e) => error_events(&keys, "mask decoder", e),
        };
        let took = started.elapsed().as_nanos() as u64;
        let extras: Vec<EventExtra> = events
            .iter()
            .map(|_| EventExtra { token: Some(self.seg_token), decode_ns: Some(took), ..EventExtra::default() })
            .collect();
        out.emit("out", event_frame_with(&events, &extras)?)
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
        let device = ctx.device.clone().without_autodiff();
        let init = |cfg: &perceptio_models::perceptio::PerceptioConfig, d: &Device| {
            cfg.init_vqvae(d).map_err(|e| ParamError::new("model", e.to_string()))
        };
        let (_, vqvae) = load_serving_part(&p, Part::VqVae, init, &device)?;
        Ok(NodeImpl::Node(Box::new(DepthNode { vqvae, d_end: special_id(&p, |sp| sp.d_end)?, device })))
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
            if *n.get_or_insert(row.len()) != row.len() {
                return Err(NodeError::msg(format!("row {r}: {} codes where row 0 has {n:?}", row.len())));
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
                m.into_data().convert::<f32>().try_into_vec::<f32>().map(|v| (d, v)).map_err(|e| format!("{e:?}"))
            });
        let events = match maps {
            Ok((d, v)) => keys
                .iter()
                .enumerate()
                .map(|(i, &k)| (k, ServeEvent::Depth { values: v[i * d * d..(i + 1) * d * d].to_vec(), size: d }))
                .collect(),
            Err(e) => error_events(&keys, "depth decoder", e),
        };
        let took = started.elapsed().as_nanos() as u64;
        let extras: Vec<EventExtra> = events
            .iter()
            .map(|_| EventExtra { token: Some(self.d_end), decode_ns: Some(took), ..EventExtra::default() })
            .collect();
        out.emit("out", event_frame_with(&events, &extras)?)
    }
}
