//! `perceptio pretrain-tied-markers`: pretrains the image encoder part (InternViT + projector) of a Perceptio
//! model directory so that each image token names, in the LLM's own embeddings, the letter of the marked point
//! in its patch (or none) and the depth level of its cell (`perceptio_models::perceptio::tied_marker_pretrain`).
//! Fresh markers are drawn on the training scenes' plain images every step; the levels come from the scenes'
//! depth maps by the point chain's rule (the level at a marked point is the one its chain states). Then
//! `image.safetensors` is written back atomically. `--val` measures the held-out point questions' markers and
//! levels. Run it after `pretrain-recall`, so that the embeddings are the ones the recall heads look up.
//! Measurements: docs/points.md, section 10.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use arrow::array::RecordBatch;
use burn::module::Module;
use burn::tensor::Device;
use perceptio_actors::image_decode::decode_png_rgb;
use perceptio_actors::perceptio::score::{map_cell, marked_points};
use perceptio_models::perceptio::checkpoint::{Part, TOKENIZER_FILE, load_part, read_config, save_part};
use perceptio_models::perceptio::image::{encoder_input, planar_from_rgb8};
use perceptio_models::perceptio::image_pretrain::{ImagePretrainConfig, token_grid};
use perceptio_models::perceptio::marker_pretrain::letter_class;
use perceptio_models::perceptio::recall::RecallTask;
use perceptio_models::perceptio::sequence::point_level;
use perceptio_models::perceptio::tied_marker_pretrain::{
    EncoderWithTiedHeads, TiedAccuracy, TiedBatch, TiedTarget, VocabularyRows, pretrain_tied_markers, tied_accuracy,
};
use perceptio_models::perceptio::tokens::special_tokens;
use perceptio_models::tokenizer::TextTokenizer;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::pretrain_markers::{LabelAt, Labels, MarkerPretrainSummary, scene_image, with_fresh_markers};
use super::rows::{Shuffled, StepProgress, read_rows, row_depth_target, row_png, row_text};

/// The learning rate and letter weight of the stage (`pretrain-markers`' defaults).
pub const DEFAULT_LR: f64 = 3e-3;
pub const DEFAULT_MARKER_WEIGHT: f32 = 10.0;

/// Arguments of `perceptio pretrain-tied-markers`.
#[derive(clap::Args, Debug)]
pub struct PretrainTiedMarkersArgs {
    /// Perceptio model directory made with --point-reasoning; image.safetensors is replaced.
    #[arg(long)]
    pub model: PathBuf,
    /// Training parquet files (glob): one plain image and depth map per scene, on which fresh markers are drawn
    /// every step.
    #[arg(long)]
    pub data: String,
    #[arg(long, default_value_t = 800)]
    pub steps: usize,
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    #[arg(long, default_value_t = DEFAULT_LR)]
    pub lr: f64,
    /// Loss weight of a token with a marker against one without, in the letter term.
    #[arg(long, default_value_t = DEFAULT_MARKER_WEIGHT)]
    pub marker_weight: f32,
    /// Which token carries a marker's letter and its point's level: the token over the marked point, or the one
    /// over the letter's box (which the encoder reads more easily; the point's level is then carried one row up).
    #[arg(long, value_enum, default_value_t = LabelAt::Point)]
    pub label_at: LabelAt,
    /// `scores`: each token scores highest against its letter's and level's embeddings (cross-entropy, the
    /// token's other directions free); `embeddings`: each token is regressed onto the sum of those embeddings.
    #[arg(long, value_enum, default_value_t = TargetKind::Scores)]
    pub target: TargetKind,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Held-out parquet files (glob): measure their point questions' markers and levels afterwards.
    #[arg(long)]
    pub val: Option<String>,
}

/// "412/520 marked tokens name their letter (79.2%), 99.1% of 15480 unmarked tokens none; levels at the
/// marked points 31.0% exact, 70.2% within one; at every token 28.4% exact".
pub fn held_out_line(a: &TiedAccuracy) -> String {
    let pct = |k: usize, n: usize| 100.0 * k as f64 / n.max(1) as f64;
    format!(
        "{}/{} marked tokens name their letter ({:.1}%), {:.1}% of {} unmarked tokens none; levels at the \
         marked points {:.1}% exact, {:.1}% within one; at every token {:.1}% exact",
        a.letters.marked_right,
        a.letters.marked,
        100.0 * a.letters.marked_rate(),
        100.0 * a.letters.unmarked_rate(),
        a.letters.unmarked,
        pct(a.marked_levels_exact, a.letters.marked),
        pct(a.marked_levels_near, a.letters.marked),
        pct(a.levels_exact, a.tokens),
    )
}

/// Runs `perceptio pretrain-tied-markers`.
pub fn run(args: &PretrainTiedMarkersArgs) -> anyhow::Result<()> {
    let cfg = ImagePretrainConfig::new().with_steps(args.steps).with_batch_size(args.batch_size).with_lr(args.lr);
    let how = TiedTraining {
        label_at: args.label_at,
        target: args.target,
        marker_weight: args.marker_weight,
        seed: args.seed,
    };
    let (s, held) = pretrain_with(&args.model, &args.data, args.val.as_deref(), &cfg, how)?;
    println!(
        "pretrained the image encoder on tied markers and levels ({} steps on {} scenes, {:.1}s): loss {:.4} -> \
         {:.4} (means of the first/last {} steps); wrote {}",
        args.steps,
        s.images,
        s.secs,
        s.first_loss,
        s.last_loss,
        s.window,
        args.model.join(Part::Image.file()).display()
    );
    if let Some(a) = held {
        println!("held-out point questions: {}", held_out_line(&a));
    }
    Ok(())
}

/// What the stage asks of each token (`TiedTarget`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetKind {
    Scores,
    Embeddings,
}

impl TargetKind {
    fn target(self) -> TiedTarget {
        match self {
            TargetKind::Scores => TiedTarget::Scores,
            TargetKind::Embeddings => TiedTarget::Embeddings,
        }
    }
}

/// How a tied-marker run labels and weighs its tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TiedTraining {
    pub label_at: LabelAt,
    pub target: TargetKind,
    pub marker_weight: f32,
    pub seed: u64,
}

/// The LLM's embedding rows of the letters and the levels, from the model directory `dir`.
fn vocabulary_rows(dir: &Path) -> anyhow::Result<VocabularyRows> {
    let cfg = read_config(dir).with_context(|| format!("reading {}", dir.display()))?;
    let tok_path = dir.join(TOKENIZER_FILE);
    let tok = TextTokenizer::from_file(&tok_path).with_context(|| format!("reading {}", tok_path.display()))?;
    let sp = special_tokens(&tok, cfg.num_codes()).with_context(|| format!("{}", tok_path.display()))?;
    let task = RecallTask::new(&tok, &sp, "", cfg.image_last).with_context(|| format!("{}", dir.display()))?;
    let device = Device::flex();
    let llm = load_part(dir, Part::Llm, cfg.init_llm(&device)?)?;
    let embedding = llm.language_model.model.embed_tokens.weight.val(); // [V, d]
    Ok(VocabularyRows::new(embedding, task.letter_ids(), task.level_ids())?)
}

/// Pretrains the image encoder part of the model in `model_dir` on `data_glob`'s scenes with tied heads and
/// writes it back (atomically); with `val_glob`, measures it on those point questions.
pub fn pretrain_with(
    model_dir: &Path,
    data_glob: &str,
    val_glob: Option<&str>,
    pcfg: &ImagePretrainConfig,
    how: TiedTraining,
) -> anyhow::Result<(MarkerPretrainSummary, Option<TiedAccuracy>)> {
    let TiedTraining { label_at, target, marker_weight, seed } = how;
    let start = Instant::now();
    let cfg = read_config(model_dir).with_context(|| format!("reading {}", model_dir.display()))?;
    let rows = vocabulary_rows(model_dir)?;
    let device = Device::flex().autodiff();
    device.seed(seed);
    let part = load_part(model_dir, Part::Image, cfg.init_image(&device))?;
    let size = cfg.vlm.vision.image_size;
    let grid = token_grid(&part, size);
    let shape = Shape { size, grid, depth_side: cfg.vqvae.input_size, label_at };
    let model = EncoderWithTiedHeads::new(part, &device);
    let mut data = Scenes::read(data_glob, shape, seed)?;

    let steps = pcfg.steps;
    let progress = StepProgress::new(steps)?;
    let mut order = Shuffled::new(data.len(), seed);
    let mut history = Vec::with_capacity(steps);
    let model = pretrain_tied_markers(
        model,
        &rows,
        pcfg,
        target.target(),
        marker_weight,
        &mut |n| data.batch(&order.take(n)),
        &mut |step, loss| {
            history.push(loss);
            progress.step(step, format!("loss {loss:.4}"));
        },
    )
    .context("training on tied markers")?;
    progress.finish();
    save_part(model_dir, Part::Image, &model.part)?;

    let summary = MarkerPretrainSummary::of_run(&history, steps, data.len(), start);
    let held = match val_glob {
        None => None,
        Some(glob) => {
            let questions = read_rows(glob, None, &mut |batch, r| point_question(batch, r, shape))?;
            if questions.is_empty() {
                bail!("`{glob}` has no point-question row");
            }
            let plain = model.valid();
            let mut acc = TiedAccuracy::default();
            for chunk in questions.chunks(32) {
                let batch = stack(chunk, shape);
                acc.add(tied_accuracy(&plain, &rows, &batch).context("measuring the held-out markers")?);
            }
            Some(acc)
        }
    };
    Ok((summary, held))
}

/// The encoder's input size, its token grid and the side of the depth maps the chain's levels are read on.
#[derive(Debug, Clone, Copy)]
struct Shape {
    size: usize,
    grid: usize,
    depth_side: usize,
    /// The token that carries a marker's letter and its point's level.
    label_at: LabelAt,
}

impl Shape {
    /// Each token's letter class and level for markers at `points` (in letter order) of a `w x h` image with the
    /// depth target `map`.
    fn labels(&self, map: &[f32], w: i64, h: i64, points: &[(i64, i64)]) -> anyhow::Result<(Vec<i64>, Vec<i64>)> {
        let labels = Labels { at: self.label_at, marker_scale: 0 };
        let (wu, hu) = (w as u32, h as u32);
        // marked_points and the drawing keep every point inside the image, so the casts are exact
        let pixels: Vec<(u32, u32)> = points.iter().map(|&(x, y)| (x as u32, y as u32)).collect();
        let classed: Vec<((u32, u32), i64)> = pixels.iter().copied().zip(1..).collect();
        let letters = labels.classes(&classed, wu, hu, self.grid).map_err(|e| anyhow::anyhow!(e))?;
        let style = labels.style(wu, hu);
        let carriers: Vec<((i64, i64), (i64, i64))> = pixels
            .iter()
            .zip(points)
            .map(|(&p, &point)| {
                let (cx, cy) = self.label_at.token_pixel(&style, p, wu, hu);
                ((i64::from(cx), i64::from(cy)), point)
            })
            .collect();
        Ok((letters, token_levels(map, self.depth_side, w, h, self.grid, &carriers)))
    }
}

/// One image prepared: encoder input, and each token's letter class and level.
struct TiedRow {
    pixels: Vec<f32>,
    letters: Vec<i64>,
    levels: Vec<i64>,
}

fn stack(rows: &[TiedRow], shape: Shape) -> TiedBatch {
    let mut batch =
        TiedBatch { image_size: shape.size, grid: shape.grid, pixels: vec![], letters: vec![], levels: vec![] };
    for row in rows {
        batch.pixels.extend_from_slice(&row.pixels);
        batch.letters.extend_from_slice(&row.letters);
        batch.levels.extend_from_slice(&row.levels);
    }
    batch
}

/// Each token's level on `map` (the depth target, `side x side`, +1 = nearest) of a `w x h` image: the level
/// under the token's centre pixel, or, for the token over the first pixel of a `carriers` pair, the level under
/// its marked point, the second (the chain's level).
fn token_levels(
    map: &[f32],
    side: usize,
    w: i64,
    h: i64,
    grid: usize,
    carriers: &[((i64, i64), (i64, i64))],
) -> Vec<i64> {
    let (g, s) = (grid as i64, side as i64);
    let level_at = |x: i64, y: i64| i64::from(point_level(map[map_cell(x, y, w, h, s)]));
    let mut levels: Vec<i64> = (0..g * g)
        .map(|k| {
            let (row, col) = (k / g, k % g);
            level_at((2 * col + 1) * w / (2 * g), (2 * row + 1) * h / (2 * g))
        })
        .collect();
    for &((cx, cy), (x, y)) in carriers {
        levels[map_cell(cx, cy, w, h, g)] = level_at(x, y);
    }
    levels
}

/// The training scenes: one plain image and depth map each, on which every batch draws fresh markers.
struct Scenes {
    shape: Shape,
    /// (RGB8, height, width, depth map) per scene.
    scenes: Vec<(Vec<u8>, usize, usize, Vec<f32>)>,
    rng: ChaCha8Rng,
}

impl Scenes {
    fn read(glob: &str, shape: Shape, seed: u64) -> anyhow::Result<Self> {
        let mut seen = HashSet::new();
        let scenes = read_rows(glob, None, &mut |batch, r| {
            let Some((rgb, h, w)) = scene_image(batch, r, &mut seen)? else { return Ok(None) };
            let id = row_text(batch, "sample_id", r)?;
            Ok(row_depth_target(batch, r, &id, shape.depth_side)?.map(|map| (rgb, h, w, map)))
        })?;
        if scenes.is_empty() {
            bail!("`{glob}` has no row with a plain scene image (a task other than points)");
        }
        Ok(Self { shape, scenes, rng: ChaCha8Rng::seed_from_u64(seed ^ 0x71ED_3A2C) })
    }

    fn len(&self) -> usize {
        self.scenes.len()
    }

    /// Scenes `idx` with fresh markers.
    fn batch(&mut self, idx: &[usize]) -> anyhow::Result<TiedBatch> {
        let mut rows = Vec::with_capacity(idx.len());
        for &i in idx {
            let (rgb, h, w, map) = self.scenes.get(i).with_context(|| format!("no scene {i}"))?;
            let (h, w) = (*h, *w);
            let labels = Labels { at: self.shape.label_at, marker_scale: 0 };
            let (rgb, points) =
                with_fresh_markers(rgb, h, w, labels, &mut self.rng).with_context(|| format!("scene {i}"))?;
            // drawn in letter order: A is class 1
            let points: Vec<(i64, i64)> = points.iter().map(|&(x, y)| (i64::from(x), i64::from(y))).collect();
            let (letters, levels) = self.shape.labels(map, w as i64, h as i64, &points)?;
            rows.push(TiedRow {
                pixels: encoder_input(&planar_from_rgb8(&rgb, h, w), h, w, self.shape.size),
                letters,
                levels,
            });
        }
        Ok(stack(&rows, self.shape))
    }
}

/// Row `r` prepared, when it is a point question.
fn point_question(batch: &RecordBatch, r: usize, shape: Shape) -> anyhow::Result<Option<TiedRow>> {
    if row_text(batch, "task", r)? != "points" {
        return Ok(None);
    }
    let id = row_text(batch, "sample_id", r)?;
    let m = marked_points(batch, r).map_err(|e| anyhow::anyhow!("sample {id}: {e}"))?;
    // the points in letter order (A first)
    let mut ordered = Vec::with_capacity(m.points.len());
    for (&p, label) in m.points.iter().zip(&m.labels) {
        ordered.push((letter_class(label).map_err(|e| anyhow::anyhow!("sample {id}: {e}"))?, p));
    }
    ordered.sort_unstable();
    if ordered.iter().zip(1..).any(|(&(class, _), k)| class != k) {
        bail!("sample {id}: the point labels {:?} are not A, B, ... each once", m.labels);
    }
    let points: Vec<(i64, i64)> = ordered.iter().map(|&(_, p)| p).collect();
    let Some(map) = row_depth_target(batch, r, &id, shape.depth_side)? else { return Ok(None) };
    let (letters, levels) = shape.labels(&map, m.width, m.height, &points).with_context(|| format!("sample {id}"))?;
    let (rgb, h, w) =
        decode_png_rgb(row_png(batch, "image", r, &id)?).map_err(|e| anyhow::anyhow!("sample {id}: image: {e}"))?;
    Ok(Some(TiedRow { pixels: encoder_input(&rgb, h, w, shape.size), letters, levels }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_token_gets_the_level_under_its_centre_and_a_point_its_own() {
        // a 4x4 map over a 40x40 image, 2x2 tokens: nearest (+1) at the top-left map pixel, farthest elsewhere
        let mut map = vec![-1.0f32; 16];
        map[0] = 1.0;
        map[5] = 0.0; // the map pixel under (15, 15)
        // token centres (10, 10), (30, 10), (10, 30), (30, 30) fall on map pixels 5, 7, 13, 15
        let levels = token_levels(&map, 4, 40, 40, 2, &[]);
        assert_eq!(levels, vec![i64::from(point_level(0.0)), 0, 0, 0]);
        // a point at (3, 3) in token 0 gives it the level under the point (map pixel 0)
        let levels = token_levels(&map, 4, 40, 40, 2, &[((3, 3), (3, 3))]);
        assert_eq!(levels[0], 19);
        // carried by the token over (35, 35): the level of the point at (3, 3)
        let levels = token_levels(&map, 4, 40, 40, 2, &[((35, 35), (3, 3))]);
        assert_eq!(levels, vec![i64::from(point_level(0.0)), 0, 0, 19]);
        // the letters go where --label-at says, with the point's level
        let at = |label_at| Shape { size: 40, grid: 2, depth_side: 4, label_at };
        let (letters, levels) = at(LabelAt::Point).labels(&map, 40, 40, &[(3, 3), (35, 35)]).unwrap();
        assert_eq!((letters, levels), (vec![1, 0, 0, 2], vec![19, 0, 0, 0]));
        // on a 128 px image with 10x10 tokens, a point at (64, 64) is token 55 and its letter box is over token 45,
        // which then carries the point's level (map pixel 10) instead of its own cell's (map pixel 6)
        let mut map = vec![-1.0f32; 16];
        map[10] = 1.0;
        let at = |label_at| Shape { size: 128, grid: 10, depth_side: 4, label_at };
        let (letters, levels) = at(LabelAt::Point).labels(&map, 128, 128, &[(64, 64)]).unwrap();
        assert_eq!((letters[55], levels[55], levels[45]), (1, 19, 0));
        let (letters, levels) = at(LabelAt::Letter).labels(&map, 128, 128, &[(64, 64)]).unwrap();
        assert_eq!((letters[45], letters[55], levels[45]), (1, 0, 19));
    }
}
