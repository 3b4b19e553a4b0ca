//! `serve-sam2-encoder`: SAM2's frozen Hiera + FPN in the serving graph, and the join of each request's image with
//! its `[SEG]` state. It keeps every prepared request's `sam_pixels` until the router says what became of it: a
//! `[SEG]` state sends the request's FPN maps and the state on to the mask decoder; a release (the request ended
//! without `[SEG]`) drops the image.
//!
//! By default the encoder runs only for requests that produced `[SEG]` (no work for answers without a mask). With
//! `eager: true` it encodes every request as soon as it is prepared, beside the LLM, so a mask costs only the mask
//! decoder once `[SEG]` is decoded: lower mask latency for more compute.

use std::collections::HashMap;

use arrow::array::{ArrayRef, BooleanArray, RecordBatch, StringArray};
use burn::prelude::*;
use perceptio_models::perceptio::checkpoint::Part;
use perceptio_models::perceptio::{PerceptioConfig, SegPart};
use perceptio_runtime::schemas::PortSchema;
use perceptio_runtime::schemas::port::{TensorKind, TensorSpec};
use perceptio_runtime::{
    BuildContext, Frame, Node, NodeError, NodeImpl, NodeKind, NodePorts, Outputs, ParamError, PortContext, PortDecl,
    parse_params,
};
use schemars::JsonSchema;
use serde::Deserialize;
use std::sync::Arc;

use super::prepare::prepared_port_schema;
use super::router::seg_request_schema;
use super::{ModelDir, id_schema, request_keys};
use crate::perceptio::common::column;

/// Params of `serve-sam2-encoder`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServeSam2Params {
    /// The model directory.
    pub model: std::path::PathBuf,
    /// Encode every request as soon as it is prepared (lower mask latency), instead of only those that
    /// produced `[SEG]`.
    #[serde(default)]
    pub eager: bool,
}

/// What goes to the mask decoder: a request, its `[SEG]` state `hidden` `[n, d]`, its prompt's image-token states
/// `image_hidden` `[n, T, d]` (for the grounding map) and its FPN maps `fpn0..2`.
pub fn seg_features_port_schema() -> PortSchema {
    let mut s = PortSchema::from_arrow(&id_schema())
        .with_tensor(TensorSpec::new("hidden", TensorKind::Float, 2))
        .with_tensor(TensorSpec::new("image_hidden", TensorKind::Float, 3));
    for name in ["fpn0", "fpn1", "fpn2"] {
        s = s.with_tensor(TensorSpec::new(name, TensorKind::Float, 4));
    }
    s
}

pub struct ServeSam2EncoderKind;

impl NodeKind for ServeSam2EncoderKind {
    fn name(&self) -> &'static str {
        "serve-sam2-encoder"
    }

    fn about(&self) -> &'static str {
        "serving: frozen SAM2 encoder; joins each request's image with its [SEG] state -> FPN maps + state"
    }

    fn params_schema(&self) -> schemars::schema::RootSchema {
        schemars::schema_for!(ServeSam2Params)
    }

    fn ports(&self, ctx: &PortContext<'_>) -> Result<NodePorts, ParamError> {
        let _: ServeSam2Params = parse_params(ctx.params)?;
        Ok(NodePorts {
            inputs: vec![
                PortDecl::required("in", prepared_port_schema()),
                PortDecl::required("seg", PortSchema::from_arrow(&seg_request_schema())),
            ],
            outputs: vec![PortDecl::required("out", seg_features_port_schema())],
        })
    }

    fn build(&self, ctx: &BuildContext<'_>) -> Result<NodeImpl, ParamError> {
        let p: ServeSam2Params = parse_params(ctx.params)?;
        let device = ctx.device.clone().without_autodiff();
        let seg = ModelDir::open(&p.model)?.load(Part::Seg, PerceptioConfig::init_seg, &device)?;
        Ok(NodeImpl::Node(Box::new(Sam2Node { seg, eager: p.eager, images: HashMap::new(), states: HashMap::new() })))
    }
}

/// One request's SAM2 maps `[1, C, H, W]` (finest first).
type Levels = [Tensor<4>; 3];

/// What is kept of a request's image until its `[SEG]` state (or release) comes.
enum Kept {
    /// `sam_pixels` `[1, 3, S, S]` (lazy).
    Pixels(Tensor<4>),
    /// The FPN maps (eager).
    Features(Box<Levels>),
}

/// A request's `[SEG]` state `[1, d]` and its prompt's image-token states `[1, T, d]` (when the LLM sent them).
struct SegState {
    hidden: Tensor<2>,
    image: Option<Tensor<3>>,
}

struct Sam2Node {
    seg: SegPart,
    eager: bool,
    images: HashMap<u64, Kept>,
    /// `[SEG]` states (None: released) that arrived before their image.
    states: HashMap<u64, Option<SegState>>,
}

impl Sam2Node {
    /// Per-row FPN maps of `pixels` `[B, 3, S, S]`.
    fn encode(&self, pixels: Tensor<4>) -> Result<Vec<Levels>, NodeError> {
        let b = pixels.dims()[0];
        let maps = self.seg.encode(pixels).map_err(|e| NodeError::msg(format!("SAM2 encoder: {e}")))?;
        Ok((0..b).map(|i| maps.clone().map(|m| m.narrow(0, i, 1))).collect()) // [1, C, H, W] each
    }

    /// Sends the joined requests on: their states and maps, encoding the images kept as pixels.
    fn send(&self, ready: Vec<(u64, SegState, Kept)>, out: &mut Outputs) -> Result<(), NodeError> {
        if ready.is_empty() {
            return Ok(());
        }
        let (mut keys, mut hidden, mut levels) = (Vec::new(), Vec::new(), Vec::new());
        let (mut lazy_keys, mut lazy_hidden, mut pixels) = (Vec::new(), Vec::new(), Vec::new());
        for (key, h, kept) in ready {
            match kept {
                Kept::Features(l) => {
                    keys.push(key);
                    hidden.push(h);
                    levels.push(*l);
                }
                Kept::Pixels(p) => {
                    lazy_keys.push(key);
                    lazy_hidden.push(h);
                    pixels.push(p);
                }
            }
        }
        if !pixels.is_empty() {
            levels.extend(self.encode(Tensor::cat(pixels, 0))?); // from [n, 3, S, S]
            keys.extend(lazy_keys);
            hidden.extend(lazy_hidden);
        }
        let mut per_level: [Vec<Tensor<4>>; 3] = Default::default();
        for l in levels {
            for (all, one) in per_level.iter_mut().zip(l) {
                all.push(one);
            }
        }
        let [f0, f1, f2] = per_level.map(|l| Tensor::cat(l, 0)); // [n, C, H, W] each
        let schema = Arc::new(id_schema());
        let ids: ArrayRef = Arc::new(StringArray::from_iter_values(keys.iter().map(u64::to_string)));
        let (hidden, image): (Vec<Tensor<2>>, Vec<Option<Tensor<3>>>) =
            hidden.into_iter().map(|s: SegState| (s.hidden, s.image)).unzip();
        let mut frame = Frame::new(RecordBatch::try_new(schema, vec![ids])?)
            .with_tensor("hidden", Tensor::cat(hidden, 0))? // [n, d]
            .with_tensor("fpn0", f0)?
            .with_tensor("fpn1", f1)?
            .with_tensor("fpn2", f2)?;
        if let Some(image) = image.into_iter().collect::<Option<Vec<_>>>() {
            frame = frame.with_tensor("image_hidden", Tensor::cat(image, 0))?; // [n, T, d]
        }
        out.emit("out", frame)
    }
}

impl Node for Sam2Node {
    fn process(&mut self, port: &str, frame: Frame, out: &mut Outputs) -> Result<(), NodeError> {
        let keys = request_keys(&frame)?;
        let mut ready = Vec::new();
        if port == "in" {
            let pixels: Tensor<4> = frame.tensor("sam_pixels")?; // [B, 3, S, S]
            let kept: Vec<Kept> = if self.eager {
                self.encode(pixels)?.into_iter().map(|l| Kept::Features(Box::new(l))).collect()
            } else {
                (0..keys.len()).map(|i| Kept::Pixels(pixels.clone().narrow(0, i, 1))).collect() // [1, 3, S, S]
            };
            for (key, kept) in keys.into_iter().zip(kept) {
                match self.states.remove(&key) {
                    Some(Some(h)) => ready.push((key, h, kept)),
                    Some(None) => {} // it ended without [SEG] before its image came
                    None => {
                        self.images.insert(key, kept);
                    }
                }
            }
        } else {
            let seg = column::<BooleanArray>(frame.batch(), "seg")?;
            let hidden: Option<Tensor<2>> = if seg.true_count() > 0 { Some(frame.tensor("hidden")?) } else { None };
            let image: Option<Tensor<3>> = frame.optional_tensor("image_hidden")?; // [n, T, d]
            for (i, key) in keys.into_iter().enumerate() {
                let state = match (&hidden, seg.value(i)) {
                    (Some(h), true) => Some(SegState {
                        hidden: h.clone().narrow(0, i, 1),                        // [1, d]
                        image: image.as_ref().map(|t| t.clone().narrow(0, i, 1)), // [1, T, d]
                    }),
                    (None, true) => return Err(NodeError::msg("[SEG] rows without `hidden`")),
                    (_, false) => None,
                };
                match (self.images.remove(&key), state) {
                    (Some(kept), Some(h)) => ready.push((key, h, kept)),
                    (Some(_), None) => {} // ended without [SEG]: drop its image
                    (None, state) => {
                        self.states.insert(key, state);
                    }
                }
            }
        }
        self.send(ready, out)
    }

    fn finish(&mut self, _out: &mut Outputs) -> Result<(), NodeError> {
        let waiting = self.states.values().filter(|s| s.is_some()).count();
        if waiting > 0 {
            tracing::warn!("{waiting} [SEG] states never met their images (their requests failed upstream)");
        }
        Ok(())
    }
}
