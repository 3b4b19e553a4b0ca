//! The Perceptio model as four parts, each owned by one dataflow node in training and serving:
//! the image encoder (InternViT + pixel shuffle + projector), the LLM (Qwen2 decoder with the added-token rows
//! kept as their own trainable tables), the segmentation part (SAM2 with the `[SEG]` projection) and the frozen
//! depth VQ-VAE. [`PerceptioConfig`] builds all of them; presets are constructors.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::prelude::*;
use burn::tensor::activation::softmax;

use super::heads::{SegGrounding, SegGroundingConfig, SegProjection, SegProjectionConfig};
use super::positions::{PositionCounter, SpanPositions};
use crate::depth::{DepthError, VqVae, VqVaeConfig};
use crate::internvl::InternVlConfig;
use crate::llm::{LoraConfig, LoraError, Qwen2ForCausalLM, ids_tensor};
use crate::sam2::{ImageEmbeddings, Prompts, Sam2, Sam2Config, Sam2Error, upsample_masks};
use crate::vision::{InternVisionModel, Projector, pixel_shuffle};

/// How the LLM is fine-tuned.
#[derive(Config, Debug, PartialEq)]
pub struct TrainableConfig {
    /// `lora` (the paper: adapters on every projection, base frozen) or `full` (every LLM weight trains; the
    /// only sensible choice for a model trained from scratch, such as the tiny demo model).
    #[config(default = "\"lora\".to_string()")]
    pub llm: String,
    #[config(default = 8)]
    pub lora_rank: usize,
    #[config(default = 16.0)]
    pub lora_alpha: f64,
    /// Train the InternViT encoder too (frozen in the paper; trained when starting from scratch).
    #[config(default = false)]
    pub vision_encoder: bool,
}

/// Every size of a Perceptio model.
#[derive(Config, Debug)]
pub struct PerceptioConfig {
    /// InternVL backbone. `text.vocab_size` is the base vocabulary (without the added tokens).
    pub vlm: InternVlConfig,
    pub sam2: Sam2Config,
    pub vqvae: VqVaeConfig,
    /// Added tokens: `[SEG]`, `<d_start>`, `<d_end>`, `<d_0>`..`<d_{K-1}>`, ids from `vlm.text.vocab_size` on.
    #[config(default = 131)]
    pub added_tokens: usize,
    /// Temperature of the soft depth reconstruction's softmax over the K code logits.
    #[config(default = 0.8)]
    pub depth_temperature: f64,
    #[config(default = "TrainableConfig::new()")]
    pub trainable: TrainableConfig,
    /// Prompts put the image after the question (InternVL's template puts it before), so that the image tokens
    /// sit at one distance from the answer whatever the question.
    #[config(default = false)]
    pub image_last: bool,
    /// Add the grounding map to SAM2's mask logits: the `[SEG]` state scored against the row's image-token
    /// states and against SAM2's finest FPN map (`SegPart::seg_grounding`). Off in the paper's architecture, whose SAM2
    /// comes pretrained; on for models whose SAM2 starts from scratch, such as the demo's.
    #[config(default = false)]
    pub seg_grounding: bool,
    /// Point answers state each marked point's depth level before the letter (`SequenceConfig::point_reasoning`);
    /// the tokenizer must hold the chain's words (`sequence::point_chain_vocabulary`).
    #[config(default = false)]
    pub point_reasoning: bool,
    /// The k-th code of a depth span takes the RoPE position of the k-th image token, the image cell it describes
    /// (`positions`), and the text after the span goes on from the position after `<d_start>`: the answer sits as
    /// close to the image as it would without the span. Off in the paper's architecture (one position per
    /// token); needs one image token per code.
    #[config(default = false)]
    pub span_at_image_positions: bool,
    /// Also prompt SAM2 with a positive point where the grounding map puts the object: the map's soft arg-max
    /// (the mean of the cell centres weighted by the map's softmax), so the mask decoder, pretrained on point
    /// prompts, draws the object there (`SegPart::forward_with_map`). Needs `seg_grounding`.
    #[config(default = false)]
    pub seg_point_from_map: bool,
}

/// Errors of building or running the model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("config field `{field}`: {reason}")]
    Config { field: &'static str, reason: String },
    #[error(transparent)]
    Sam2(#[from] Sam2Error),
    #[error(transparent)]
    Depth(#[from] DepthError),
    #[error(transparent)]
    Lora(#[from] LoraError),
    #[error("{what}: expected {expected}, got {got}")]
    Shape { what: &'static str, expected: String, got: String },
}

impl PerceptioConfig {
    /// The tiny model of the tests and the demo, for a tokenizer with `base_vocab` ids before the added tokens
    /// and `<IMG_CONTEXT>` at `image_token_id`: 112 px images (16 image tokens), a 4-layer d=128 LLM trained in
    /// full, SAM2 tiny (128 px), the tiny depth VQ-VAE (80 px, 10x10 codes, K = 128).
    pub fn tiny(base_vocab: usize, image_token_id: usize) -> Self {
        let vision = crate::vision::InternVitConfig::new(64, 2, 4, 128).with_image_size(112);
        let text = crate::llm::Qwen2Config::new(base_vocab, 128, 256, 4, 4, 2);
        let vlm = InternVlConfig::new(vision, text).with_image_token_id(image_token_id);
        let vqvae = VqVaeConfig::tiny();
        Self::new(vlm, Sam2Config::tiny(), vqvae)
            .with_trainable(TrainableConfig::new().with_llm("full".into()).with_vision_encoder(true))
    }

    /// Lays the image out so that the tiny LLM can read depth from it: one image token per depth code (the image
    /// side is the code grid times the patch, with no pixel shuffle), a RoPE base of 10^4 instead of Qwen2's
    /// 10^6 so that nearby offsets are told apart, and the image block after the question, so that every image
    /// token sits at the same distance from its depth code whatever the question's length.
    ///
    /// Measured on the demo's world (depth MSE of the decoded answer against 0.0409 for the best map that ignores
    /// the image, issue 8): the tiny preset learns only the image-blind prior (0.050); the grid alignment and
    /// RoPE base read the image on depth questions alone (0.030); the image placed last keeps that reading
    /// through the full task mixture (0.0225, where the image placed first drops back to 0.069).
    pub fn align_image_with_depth_grid(&mut self) {
        let grid = self.vqvae.grid_size();
        self.vlm.vision.image_size = grid * self.vlm.vision.patch_size;
        self.vlm.shuffle = 1;
        self.vlm.text.rope_theta = 1e4;
        self.image_last = true;
    }

    /// How this model's prompts and answers are laid out: its image tokens, a span of one code per cell of the
    /// depth-code grid, and the image's place in the prompt. Training, inference and serving all start from it.
    pub fn sequence_config(&self) -> super::sequence::SequenceConfig {
        super::sequence::SequenceConfig::new(self.image_tokens())
            .with_span_len(self.vqvae.num_tokens())
            .with_image_last(self.image_last)
            .with_point_reasoning(self.point_reasoning)
    }

    /// Number of K depth codes (the VQ-VAE codebook size).
    pub fn num_codes(&self) -> usize {
        self.vqvae.num_codes
    }

    /// Image tokens the LLM sees per image (one tile).
    pub fn image_tokens(&self) -> usize {
        self.vlm.tokens_per_tile()
    }

    /// Checks the combinations the parts rely on.
    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |field, reason: String| Err(ModelError::Config { field, reason });
        if self.added_tokens != self.num_codes() + 3 {
            return bad("added_tokens", format!("{} but K + 3 = {}", self.added_tokens, self.num_codes() + 3));
        }
        if self.vlm.image_token_id >= self.vlm.text.vocab_size {
            return bad("vlm.image_token_id", format!("{} is outside the base vocabulary", self.vlm.image_token_id));
        }
        let (size, patch, shuffle) = (self.vlm.vision.image_size, self.vlm.vision.patch_size, self.vlm.shuffle);
        if shuffle == 0 {
            return bad("vlm.shuffle", "the pixel-shuffle factor must be at least 1".into());
        }
        if patch == 0 || size == 0 || size % (patch * shuffle) != 0 {
            return bad(
                "vlm.vision.image_size",
                format!(
                    "{size} px is not a positive multiple of the {patch} px patch times the pixel shuffle {shuffle}"
                ),
            );
        }
        let v = &self.vlm.vision;
        if v.num_hidden_layers == 0 {
            return bad("vlm.vision.num_hidden_layers", "the InternViT needs at least one layer".into());
        }
        if v.num_attention_heads == 0 || v.hidden_size == 0 || v.hidden_size % v.num_attention_heads != 0 {
            return bad(
                "vlm.vision.hidden_size",
                format!(
                    "{} is not a positive multiple of the {} attention heads",
                    v.hidden_size, v.num_attention_heads
                ),
            );
        }
        if v.conv_stem.contains(&0) {
            return bad(
                "vlm.vision.conv_stem",
                format!("{:?}: every stem layer needs at least one channel", v.conv_stem),
            );
        }
        let theta = self.vlm.text.rope_theta;
        if !(theta.is_finite() && theta > 1.0) {
            return bad("vlm.text.rope_theta", format!("{theta} is not a number above 1"));
        }
        if !matches!(self.trainable.llm.as_str(), "lora" | "full") {
            return bad("trainable.llm", format!("`{}` (expected `lora` or `full`)", self.trainable.llm));
        }
        if !(self.depth_temperature > 0.0) {
            return bad("depth_temperature", format!("{} is not positive", self.depth_temperature));
        }
        if self.span_at_image_positions && self.image_tokens() != self.vqvae.num_tokens() {
            return bad(
                "span_at_image_positions",
                format!(
                    "needs one image token per depth code, but the image gives {} tokens and the span holds {} \
                     codes (`align_image_with_depth_grid` lays the image out so)",
                    self.image_tokens(),
                    self.vqvae.num_tokens()
                ),
            );
        }
        if self.seg_point_from_map && !self.seg_grounding {
            return bad("seg_point_from_map", "needs `seg_grounding`: the point is read off the grounding map".into());
        }
        self.vqvae.validate()?;
        Ok(())
    }

    /// Builds every part with fresh weights and the freezing the config asks for.
    pub fn init(&self, device: &Device) -> Result<Perceptio, ModelError> {
        self.validate()?;
        Ok(Perceptio {
            image: self.init_image(device),
            llm: self.init_llm(device)?,
            seg: self.init_seg(device)?,
            vqvae: self.init_vqvae(device)?,
        })
    }

    /// The image encoder part (InternViT frozen unless `trainable.vision_encoder`; projector trainable).
    pub fn init_image(&self, device: &Device) -> ImageEncoderPart {
        let d_in = self.vlm.vision.hidden_size * self.vlm.shuffle * self.vlm.shuffle;
        let vision_tower = self.vlm.vision.init(device);
        ImageEncoderPart {
            vision_tower: if self.trainable.vision_encoder { vision_tower } else { vision_tower.no_grad() },
            multi_modal_projector: Projector::init(d_in, self.vlm.text.hidden_size, device),
            shuffle: self.vlm.shuffle,
        }
    }

    /// The LLM part (LoRA or full, per `trainable.llm`) with fresh added-token rows (N(0, 0.02)).
    pub fn init_llm(&self, device: &Device) -> Result<LlmPart, ModelError> {
        let d = self.vlm.text.hidden_size;
        let mut language_model = self.vlm.text.init(device);
        if self.trainable.llm == "lora" {
            let lora = LoraConfig::all(self.trainable.lora_rank, self.trainable.lora_alpha);
            language_model = lora.apply(language_model, device)?;
        }
        let dist = burn::tensor::Distribution::Normal(0.0, 0.02);
        Ok(LlmPart {
            language_model,
            new_embed: Param::from_tensor(Tensor::random([self.added_tokens, d], dist, device)),
            new_head: Param::from_tensor(Tensor::random([self.added_tokens, d], dist, device)),
            image_token_id: self.vlm.image_token_id,
            positions: self.span_positions(),
        })
    }

    /// The position rule of the LLM's tokens: Some when `span_at_image_positions` is on. The added tokens follow
    /// the base vocabulary in `tokens::added_tokens` order (as `LlmPart::embed` reads them).
    pub fn span_positions(&self) -> Option<SpanPositions> {
        let added = super::tokens::added_tokens(self.num_codes());
        let id = |token: &str| {
            let at = added.iter().position(|t| t == token).expect("added_tokens holds every Perceptio token");
            (self.vlm.text.vocab_size + at) as u32
        };
        self.span_at_image_positions.then(|| SpanPositions {
            image_token: self.vlm.image_token_id as u32,
            d_start: id(super::tokens::D_START),
            code0: id(&super::tokens::code_token(0)),
            num_codes: self.num_codes(),
        })
    }

    /// SAM2 (image encoder frozen) with the `[SEG]` projection.
    pub fn init_seg(&self, device: &Device) -> Result<SegPart, ModelError> {
        let mut sam2 = self.sam2.init(device)?;
        sam2.vision_encoder = sam2.vision_encoder.no_grad();
        let c = self.sam2.mask_decoder_config.hidden_size;
        let d = self.vlm.text.hidden_size;
        Ok(SegPart {
            sam2,
            text_hidden_fcs: SegProjectionConfig::new(d, c).init(device),
            seg_grounding: self
                .seg_grounding
                .then(|| SegGroundingConfig::new(d, d, self.sam2.vision_config.fpn_hidden_size).init(device)),
            point_from_map: self.seg_point_from_map,
        })
    }

    /// The frozen depth VQ-VAE.
    pub fn init_vqvae(&self, device: &Device) -> Result<VqVae, ModelError> {
        Ok(self.vqvae.init(device)?.no_grad())
    }
}

/// The soft arg-max of score maps `[B, 1, h, w]`: the centres of the cells weighted by the maps' softmax, in the
/// pixels (0..`size`) of a `size`-pixel image the map covers -> point coordinates `(x, y)` `[B, 1, 1, 2]`.
pub fn soft_argmax_point(map: Tensor<4>, size: usize) -> Tensor<4> {
    let [b, _, h, w] = map.dims();
    let device = map.device();
    let p = softmax(map.reshape([b, h * w]), 1); // [B, hw]
    let centre = |k: usize, n: usize| (k as f32 + 0.5) * size as f32 / n as f32 - 0.5;
    let xs: Vec<f32> = (0..h * w).map(|k| centre(k % w, w)).collect();
    let ys: Vec<f32> = (0..h * w).map(|k| centre(k / w, h)).collect();
    let grid = Tensor::<2>::from_data(TensorData::new([xs, ys].concat(), [2, h * w]), &device); // [2, hw]
    p.matmul(grid.transpose()).reshape([b, 1, 1, 2]) // [B, 1, 1, 2]
}

/// InternViT + pixel shuffle + projector: one image per row -> image tokens for the LLM.
#[derive(Module, Debug)]
pub struct ImageEncoderPart {
    pub vision_tower: InternVisionModel,
    pub multi_modal_projector: Projector,
    pub shuffle: usize,
}

impl ImageEncoderPart {
    /// Normalised pixels `[B, 3, H, W]` -> image tokens `[B, T, d]` (CLS dropped).
    pub fn forward(&self, pixels: Tensor<4>) -> Tensor<3> {
        let x = self.vision_tower.forward(pixels); // [B, 1+p, dv]
        let [b, p1, dv] = x.dims();
        let x = x.slice([0..b, 1..p1, 0..dv]); // [B, p, dv]
        let x = pixel_shuffle(x, self.shuffle); // [B, p/4, 4dv]
        self.multi_modal_projector.forward(x) // [B, T, d]
    }
}

/// The decoder with the added tokens' embedding rows and head rows as separate tables, so they train even when
/// the base vocabulary is frozen (LoRA): ids `>= base vocab` read `new_embed`, and the logits of the added tokens
/// come from `new_head`.
#[derive(Module, Debug)]
pub struct LlmPart {
    pub language_model: Qwen2ForCausalLM,
    /// `[A, d]`
    pub new_embed: Param<Tensor<2>>,
    /// `[A, d]`
    pub new_head: Param<Tensor<2>>,
    pub image_token_id: usize,
    /// Where the tokens sit (None: one position after another); from the config, not saved with the weights.
    #[module(skip)]
    pub positions: Option<SpanPositions>,
}

/// What the LLM part returns for a teacher-forced batch.
#[derive(Debug, Clone)]
pub struct LlmOutput {
    /// Last hidden states `[B, S, d]` (after the final norm).
    pub hidden: Tensor<3>,
    /// Logits over base + added vocabulary `[B, S, V + A]`.
    pub logits: Tensor<3>,
}

impl LlmPart {
    /// Base vocabulary size.
    pub fn base_vocab(&self) -> usize {
        self.language_model.vocab_size()
    }

    /// Full vocabulary size (base + added).
    pub fn vocab_size(&self) -> usize {
        self.base_vocab() + self.new_embed.dims()[0]
    }

    /// Token embeddings of ids `[B][S]` over the extended table, with the `<IMG_CONTEXT>` positions (row-major)
    /// replaced by `image` `[B, T, d]` (each row's T tokens fill that row's image positions).
    pub fn embed(&self, ids: &[Vec<u32>], image: Option<Tensor<3>>) -> Result<Tensor<3>, ModelError> {
        let base = self.language_model.model.embed_tokens.weight.val(); // [V, d]
        let device = base.device();
        let [v, d] = base.dims();
        let b = ids.len();
        let s = ids.first().map_or(0, Vec::len);
        let mut table = vec![base, self.new_embed.val()]; // [V, d], [A, d]
        let mut index: Vec<i64> = ids.iter().flatten().map(|&t| t as i64).collect();
        let limit = self.vocab_size() as i64;
        if let Some(bad) = index.iter().find(|&&t| t >= limit) {
            return Err(ModelError::Config { field: "ids", reason: format!("token id {bad} >= vocabulary {limit}") });
        }
        if let Some(image) = image {
            let [ib, t, id] = image.dims();
            let slots: Vec<usize> = (0..b * s).filter(|&i| index[i] == self.image_token_id as i64).collect();
            if ib != b || id != d || slots.len() != b * t {
                return Err(ModelError::Shape {
                    what: "image tokens",
                    expected: format!(
                        "[{b}, {}, {d}] ({} <IMG_CONTEXT> positions)",
                        slots.len() / b.max(1),
                        slots.len()
                    ),
                    got: format!("{:?}", image.dims()),
                });
            }
            let first_image = (v + self.new_embed.dims()[0]) as i64;
            for (k, &i) in slots.iter().enumerate() {
                index[i] = first_image + k as i64;
            }
            table.push(image.reshape([b * t, d])); // [B*T, d]
        }
        let table = Tensor::cat(table, 0); // [V + A (+ B*T), d]
        let index = Tensor::<1, Int>::from_data(TensorData::new(index, [b * s]), &device); // [B*S]
        Ok(table.select(0, index).reshape([b, s, d])) // [B, S, d]
    }

    /// Logits over the extended vocabulary for hidden states `[B, S, d]` -> `[B, S, V + A]`.
    pub fn logits(&self, hidden: Tensor<3>) -> Tensor<3> {
        let base = self.language_model.logits(hidden.clone()); // [B, S, V]
        let added = crate::llm::matmul_rows_t(hidden, self.new_head.val()); // [B, S, A]
        Tensor::cat(vec![base, added], 2) // [B, S, V + A]
    }

    /// Teacher-forced forward over a right-padded batch (causal attention; padding only follows real tokens).
    pub fn forward(&self, ids: &[Vec<u32>], image: Option<Tensor<3>>) -> Result<LlmOutput, ModelError> {
        let x = self.embed(ids, image)?; // [B, S, d]
        let placed = self
            .positions
            .map(|rule| ids.iter().map(|row| PositionCounter::positions(Some(rule), row)).collect::<Vec<_>>());
        let hidden = self.language_model.model.forward_embeds_at(x, None, None, placed.as_deref()); // [B, S, d]
        let logits = self.logits(hidden.clone()); // [B, S, V + A]
        Ok(LlmOutput { hidden, logits })
    }

    /// Ids `[B][S]` as an int tensor on this part's device.
    pub fn ids_tensor(&self, ids: &[Vec<u32>]) -> Tensor<2, Int> {
        ids_tensor(ids, &self.new_embed.device())
    }
}

/// SAM2 (image encoder frozen; prompt encoder and mask decoder trainable) with the `[SEG]` projection.
#[derive(Module, Debug)]
pub struct SegPart {
    pub sam2: Sam2,
    pub text_hidden_fcs: SegProjection,
    /// Present when the config's `seg_grounding` is on.
    pub seg_grounding: Option<SegGrounding>,
    /// The config's `seg_point_from_map`: SAM2 also gets a point prompt at the grounding map's soft arg-max.
    pub point_from_map: bool,
}

impl SegPart {
    /// The frozen encoder's FPN maps for SAM2-normalised pixels `[B, 3, S, S]`.
    pub fn encode(&self, pixels: Tensor<4>) -> Result<[Tensor<4>; 3], ModelError> {
        Ok(self.sam2.fpn_levels(pixels)?)
    }

    /// `[SEG]` hidden states `[B', d]` + the FPN maps of the same rows -> mask logits `[B', 4e, 4e]` (single mask).
    /// `image_hidden` `[B', T, d]` are the rows' image-token states, which the grounding map needs (ignored
    /// without one).
    pub fn forward(
        &self,
        seg_hidden: Tensor<2>,
        image_hidden: Option<Tensor<3>>,
        levels: [Tensor<4>; 3],
    ) -> Result<Tensor<3>, ModelError> {
        Ok(self.forward_with_map(seg_hidden, image_hidden, levels)?.0)
    }

    /// [`SegPart::forward`] that also returns the grounding map `[B', 1, 4e, 4e]` it added (None without one),
    /// for its own loss term.
    pub fn forward_with_map(
        &self,
        seg_hidden: Tensor<2>,
        image_hidden: Option<Tensor<3>>,
        levels: [Tensor<4>; 3],
    ) -> Result<(Tensor<3>, Option<Tensor<4>>), ModelError> {
        let [b, _] = seg_hidden.dims();
        let fine = levels[0].clone(); // [B', C, 4e, 4e]
        let image: ImageEmbeddings = self.sam2.embeddings_from_levels(levels);
        let side = self.sam2.mask_side();
        let prompt = self.text_hidden_fcs.forward(seg_hidden.clone()); // [B', C]
        let c = prompt.dims()[1];
        let mut prompts = Prompts { sparse: Some(prompt.reshape([b, 1, 1, c])), ..Prompts::default() };
        let map = match &self.seg_grounding {
            Some(grounding) => Some(self.grounding_map(grounding, seg_hidden, image_hidden, fine, [side, side])?),
            None => None,
        }; // [B', 1, 4e, 4e]
        if let (Some(map), true) = (&map, self.point_from_map) {
            let coords = soft_argmax_point(map.clone(), self.sam2.image_size); // [B', 1, 1, 2]
            let labels = Tensor::<3>::ones([b, 1, 1], &coords.device()); // [B', 1, 1]
            prompts.points = Some((coords, labels));
        }
        let out = self.sam2.predict(&image, &prompts, false)?;
        let [_, _, _, h, w] = out.masks.dims();
        let logits = out.masks.reshape([b, h, w]); // [B', 4e, 4e]
        Ok(match map {
            Some(map) => (logits + map.clone().reshape([b, h, w]), Some(map)), // [B', 4e, 4e]
            None => (logits, None),
        })
    }

    /// The grounding map `[B', 1, h, w]` of `[SEG]` states `[B', d]` against the rows' image-token states and
    /// SAM2's finest FPN map `fine` `[B', C, H0, W0]`, at the mask-logit size `[h, w]`.
    fn grounding_map(
        &self,
        grounding: &SegGrounding,
        seg_hidden: Tensor<2>,
        image_hidden: Option<Tensor<3>>,
        fine: Tensor<4>,
        [h, w]: [usize; 2],
    ) -> Result<Tensor<4>, ModelError> {
        let [b, _] = seg_hidden.dims();
        let Some(image_hidden) = image_hidden else {
            return Err(ModelError::Shape {
                what: "image-token states for the grounding map",
                expected: format!("[{b}, T, d]"),
                got: "none (a [SEG] without an image?)".into(),
            });
        };
        if image_hidden.dims()[0] != b {
            return Err(ModelError::Shape {
                what: "image-token states for the grounding map",
                expected: format!("[{b}, T, d]"),
                got: format!("{:?}", image_hidden.dims()),
            });
        }
        // the image-token states are read, not trained, by the map: the LLM's image tokens carry the depth the span
        // is read from, and the mask losses pulling them cost depth MSE (docs/referring.md)
        let tokens = grounding.token_map(seg_hidden.clone(), image_hidden.detach()); // [B', 1, g, g]
        let tokens = upsample_masks(tokens, [h, w]); // [B', 1, h, w]
        let pixels = grounding.pixel_map(seg_hidden, fine); // [B', 1, H0, W0]
        let same = pixels.dims()[2..] == [h, w];
        let pixels = if same { pixels } else { upsample_masks(pixels, [h, w]) }; // [B', 1, h, w]
        Ok(tokens + pixels) // [B', 1, h, w]
    }

    /// `[SEG]` hidden states `[B', d]` + FPN maps -> mask probabilities `[B', S, S]` at the SAM2 input size
    /// (logits upsampled bilinearly, then the sigmoid; > 0.5 is the binary mask).
    pub fn mask_probs(
        &self,
        seg_hidden: Tensor<2>,
        image_hidden: Option<Tensor<3>>,
        levels: [Tensor<4>; 3],
        size: usize,
    ) -> Result<Tensor<3>, ModelError> {
        let logits = self.forward(seg_hidden, image_hidden, levels)?; // [B', h, w]
        Ok(burn::tensor::activation::sigmoid(self.upsample(logits, [size, size]))) // [B', S, S]
    }

    /// Mask logits `[B', h, w]` bilinearly upsampled to `size` -> `[B', H, W]`.
    pub fn upsample(&self, logits: Tensor<3>, size: [usize; 2]) -> Tensor<3> {
        let [b, h, w] = logits.dims();
        upsample_masks(logits.reshape([b, 1, h, w]), size).reshape([b, size[0], size[1]]) // [B', H, W]
    }
}

/// Every part of a Perceptio model.
#[derive(Debug, Clone)]
pub struct Perceptio {
    pub image: ImageEncoderPart,
    pub llm: LlmPart,
    pub seg: SegPart,
    /// Frozen depth tokenizer (its decoder turns code probabilities into depth).
    pub vqvae: VqVae,
}
