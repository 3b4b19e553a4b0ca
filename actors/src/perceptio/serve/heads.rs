//! `serve-mask-decoder` and `serve-depth-decoder`: the serving graph's two heads. The mask decoder joins each
//! request's `[SEG]` state (from the router) with its SAM2 features (from the SAM2 encoder, which ran while the
//! LLM decoded) and emits the `Mask` event at once; the depth decoder turns a closed span's codes into the `Depth`
//! event. Both tag their events with the token they answer (`[SEG]`, `<d_end>`) and how long they took; a model
//! failure becomes that request's `Error` event.

use std::collections::HashMap;
use std::time::Instant;

use arrow::array::{Array, BooleanArray, ListArray, StringArray, UInt32Array};
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

use super::encoders::{load_serving_part, serve_features_schema};
use super::event_port_schema;
use super::router::{codes_schema, seg_request_schema};
use super::{EventExtra, ServeEvent, ServeModelParams, event_frame_with};
use crate::perceptio::common::column;

fn keys(frame: &Frame) -> Result<Vec<u64>, NodeError> {
    let id = column::<StringArray>(frame.batch(), "id")?;
    (0..id.len())
        .map(|r| {
            id.value(r)
                .parse()
                .map_err(|_| NodeError::msg(format!("row {r}: id `{}` is not a request number", id.value(r))))
        })
        .collect()
}

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
        "serving: [SEG] state + the request's SAM2 features -> its mask event, as soon as both are there"
    }

    fn params_schema(&self) -> schemars::schema::RootSchema {
        schemars::schema_for!(ServeModelParams)
    }

    fn ports(&self, ctx: &PortContext<'_>) -> Result<NodePorts, ParamError> {
        let _: ServeModelParams = parse_params(ctx.params)?;
        Ok(NodePorts {
            inputs: vec![
                PortDecl::required("seg", PortSchema::from_arrow(&seg_request_schema())),
                PortDecl::required("features", serve_features_schema()),
            ],
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
            features: HashMap::new(),
            states: HashMap::new(),
        })))
    }
}

/// One request's SAM2 maps `[1, C, H, W]` (finest first).
type Levels = [Tensor<4>; 3];

struct MaskNode {
    seg: SegPart,
    size: usize,
    seg_token: u32,
    /// Features waiting for their request's `[SEG]` state (or its release).
    features: HashMap<u64, Levels>,
    /// `[SEG]` states `[1, d]` (None: released) that arrived before their features.
    states: HashMap<u64, Option<Tensor<2>>>,
}

impl MaskNode {
    /// Decodes the masks of the requests whose state and features are both here.
    fn decode(&self, ready: Vec<(u64, Tensor<2>, Levels)>, out: &mut Outputs) -> Result<(), NodeError> {
        if ready.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let keys: Vec<u64> = ready.iter().map(|(k, _, _)| *k).collect();
        let mut hidden = Vec::with_capacity(ready.len());
        let mut levels: [Vec<Tensor<4>>; 3] = Default::default();
        for (_, h, l) in ready {
            hidden.push(h);
            for (all, one) in levels.iter_mut().zip(l) {
                all.push(one);
            }
        }
        let hidden = Tensor::cat(hidden, 0); // [n, d]
        let levels = levels.map(|l| Tensor::cat(l, 0)); // [n, C, H, W] each
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

impl Node for MaskNode {
    fn process(&mut self, port: &str, frame: Frame, out: &mut Outputs) -> Result<(), NodeError> {
        let keys = keys(&frame)?;
        let mut ready = Vec::new();
        if port == "features" {
            let maps: [Tensor<4>; 3] = [frame.tensor("fpn0")?, frame.tensor("fpn1")?, frame.tensor("fpn2")?]; // [B, C, H, W] each
            for (i, key) in keys.into_iter().enumerate() {
                let one: Levels = maps.clone().map(|m| m.narrow(0, i, 1)); // [1, C, H, W] each
                match self.states.remove(&key) {
                    Some(Some(h)) => ready.push((key, h, one)),
                    Some(None) => {} // released before its features came: nothing to decode
                    None => {
                        self.features.insert(key, one);
                    }
                }
            }
        } else {
            let seg = column::<BooleanArray>(frame.batch(), "seg")?;
            let hidden: Option<Tensor<2>> = if seg.true_count() > 0 { Some(frame.tensor("hidden")?) } else { None };
            for (i, key) in keys.into_iter().enumerate() {
                let state = if seg.value(i) {
                    let h = hidden.as_ref().ok_or_else(|| NodeError::msg("seg rows without `hidden`"))?;
                    Some(h.clone().narrow(0, i, 1)) // [1, d]
                } else {
                    None
                };
                match (self.features.remove(&key), state) {
                    (Some(levels), Some(h)) => ready.push((key, h, levels)),
                    (Some(_), None) => {} // ended without [SEG]: drop its features
                    (None, state) => {
                        self.states.insert(key, state);
                    }
                }
            }
        }
        self.decode(ready, out)
    }

    fn finish(&mut self, _out: &mut Outputs) -> Result<(), NodeError> {
        let waiting = self.states.values().filter(|s| s.is_some()).count();
        if waiting > 0 {
            tracing::warn!("{waiting} [SEG] states never met their SAM2 features (their requests failed upstream)");
        }
        Ok(())
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
        let keys = keys(&frame)?;
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
