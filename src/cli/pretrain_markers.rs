//! `perceptio pretrain-markers`: pretrains the image encoder part (InternViT + projector) of a Perceptio model
//! directory to read the point markers of a synth-schema dataset's point questions (each image token says which
//! marked point's letter lies in its patch, through a throw-away linear head), then writes `image.safetensors`
//! back atomically. Training draws fresh markers on the scenes' plain images every step (a few hundred point
//! questions are too few: the encoder memorises them). `--val` reads the markers of held-out point questions and
//! reports how many marked tokens get their letter and how many unmarked ones get "none". `--probe` trains a
//! fresh head alone on the encoder as it is (a linear probe of what any model's image tokens say about the
//! markers) and leaves the model directory untouched. Measurements: docs/points.md.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use arrow::array::RecordBatch;
use burn::module::Module;
use burn::tensor::Device;
use perceptio_actors::image_decode::decode_png_rgb;
use perceptio_actors::perceptio::score::marked_points;
use perceptio_models::internvl::decode_png_rgb as decode_png_rgb8;
use perceptio_models::perceptio::checkpoint::{Part, load_part, read_config, save_part};
use perceptio_models::perceptio::image::{encoder_input, planar_from_rgb8};
use perceptio_models::perceptio::image_pretrain::{ImagePretrainConfig, token_grid};
use perceptio_models::perceptio::marker_pretrain::{
    EncoderWithMarkerHead, MarkerAccuracy, MarkerBatch, TokenMarkerHead, letter_class, marker_accuracy,
    pretrain_marker_reading, token_classes,
};
use perceptio_synth::draw::{Canvas, MarkerStyle, draw_random_markers};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::rows::{Shuffled, StepProgress, first_and_last_means, read_rows, row_png, row_text, unseen_plain_scene};

/// Arguments of `perceptio pretrain-markers`.
#[derive(clap::Args, Debug)]
pub struct PretrainMarkersArgs {
    /// Perceptio model directory (perceptio.json, image.safetensors, ...); image.safetensors is replaced.
    #[arg(long)]
    pub model: PathBuf,
    /// Training parquet files (glob): one plain image per scene, on which fresh markers are drawn every step.
    #[arg(long)]
    pub data: String,
    /// Optimiser steps (800 read 83% of the demo world's held-out letters, in about 110 s on 2 cores).
    #[arg(long, default_value_t = 800)]
    pub steps: usize,
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 3e-3)]
    pub lr: f64,
    /// Loss weight of a token with a marker against one without (there are about 25 times fewer).
    #[arg(long, default_value_t = 10.0)]
    pub marker_weight: f32,
    /// Which token carries a marker's letter.
    #[arg(long, value_enum, default_value_t = LabelAt::Letter)]
    pub label_at: LabelAt,
    /// Letter size of the drawn markers, a multiple of the 5x7 font (0: one step per 128 px of image, the
    /// synth default); match the dataset's `marker_scale`.
    #[arg(long, default_value_t = 0)]
    pub marker_scale: u32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Train a fresh head alone on the encoder as it is and report what its tokens say about the markers
    /// (a linear probe): image.safetensors is left untouched. Needs --val.
    #[arg(long, requires = "val")]
    pub probe: bool,
    /// Held-out parquet files (glob): report how well their markers are read after pretraining.
    #[arg(long)]
    pub val: Option<String>,
}

/// Which image token carries a marker's letter.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LabelAt {
    /// The token over the centre of the letter box (what the encoder sees in place).
    Letter,
    /// The token over the marked point (the encoder must carry the letter from the box above to it).
    Point,
}

impl LabelAt {
    /// The pixel whose token carries the letter of a marker at `point` of a `w x h` image.
    pub(super) fn token_pixel(self, style: &MarkerStyle, point: (u32, u32), w: u32, h: u32) -> (u32, u32) {
        match self {
            LabelAt::Point => point,
            LabelAt::Letter => {
                let (x, y) = style.letter_centre(point.0 as i32, point.1 as i32);
                // a dataset's marker may sit at the border with its box cut off: keep the pixel in the image
                (x.clamp(0, w as i32 - 1) as u32, y.clamp(0, h as i32 - 1) as u32)
            }
        }
    }
}

/// How the token classes are made: where the letter goes and the letter size of the markers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Labels {
    pub at: LabelAt,
    /// Letter size, a multiple of the 5x7 font (0: one step per 128 px of image).
    pub marker_scale: u32,
}

impl Labels {
    /// The marker style of a `w x h` image.
    pub(super) fn style(&self, w: u32, h: u32) -> MarkerStyle {
        MarkerStyle::with_letter_scale(w.min(h), self.marker_scale)
    }

    /// The `grid x grid` token classes of a `w x h` image whose markers sit at `points`, with their classes.
    pub(super) fn classes(
        &self,
        points: &[((u32, u32), i64)],
        w: u32,
        h: u32,
        grid: usize,
    ) -> Result<Vec<i64>, String> {
        let style = self.style(w, h);
        let at: Vec<(u32, u32, i64)> = points
            .iter()
            .map(|&(p, class)| {
                let (x, y) = self.at.token_pixel(&style, p, w, h);
                (x, y, class)
            })
            .collect();
        token_classes(&at, w, h, grid)
    }
}

/// What a marker pretraining run reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MarkerPretrainSummary {
    /// Mean loss of the first and last `window` steps.
    pub first_loss: f64,
    pub last_loss: f64,
    pub window: usize,
    /// Training images (one per scene).
    pub images: usize,
    pub secs: f64,
}

impl MarkerPretrainSummary {
    /// The summary of a run of `steps` steps on `images` images, begun at `start`, with its loss `history`.
    pub(super) fn of_run(history: &[f64], steps: usize, images: usize, start: Instant) -> Self {
        let (first_loss, last_loss, window) = first_and_last_means(history, steps);
        Self { first_loss, last_loss, window, images, secs: start.elapsed().as_secs_f64() }
    }
}

/// Runs `perceptio pretrain-markers`.
pub fn run(args: &PretrainMarkersArgs) -> anyhow::Result<()> {
    let cfg = ImagePretrainConfig::new().with_steps(args.steps).with_batch_size(args.batch_size).with_lr(args.lr);
    let how = MarkerTraining {
        labels: Labels { at: args.label_at, marker_scale: args.marker_scale },
        marker_weight: args.marker_weight,
        probe: args.probe,
    };
    let (s, held) = pretrain_with(&args.model, &args.data, args.val.as_deref(), &cfg, how, args.seed)?;
    let what = if args.probe { "probed the image encoder's tokens" } else { "pretrained the image encoder" };
    let wrote = if args.probe {
        "the model is unchanged".to_string()
    } else {
        format!("wrote {}", args.model.join(Part::Image.file()).display())
    };
    println!(
        "{what} for point markers ({} steps on {} images, {:.1}s): loss {:.4} -> {:.4} (means of the first/last {} \
         steps); {wrote}",
        args.steps, s.images, s.secs, s.first_loss, s.last_loss, s.window,
    );
    if let Some(a) = held {
        println!("{}", held_out_line(&a));
    }
    Ok(())
}

/// "held-out markers: 412/520 marked tokens read right (79.2%; 31 read as unmarked), 99.1% of 15480 unmarked
/// tokens left unmarked".
pub fn held_out_line(a: &MarkerAccuracy) -> String {
    format!(
        "held-out markers: {}/{} marked tokens read right ({:.1}%; {} read as unmarked), {:.1}% of {} unmarked \
         tokens left unmarked",
        a.marked_right,
        a.marked,
        100.0 * a.marked_rate(),
        a.marked_missed,
        100.0 * a.unmarked_rate(),
        a.unmarked
    )
}

/// How a marker run trains.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MarkerTraining {
    pub labels: Labels,
    /// Loss weight of a marked token against an unmarked one.
    pub marker_weight: f32,
    /// Train the head alone and leave the model directory untouched.
    pub probe: bool,
}

/// Pretrains the image encoder part of the model in `model_dir` to read markers drawn on `data_glob`'s scenes and
/// writes it back (atomically), or with `how.probe` trains a head alone on it; with `val_glob`, measures the
/// result on those point questions.
pub fn pretrain_with(
    model_dir: &Path,
    data_glob: &str,
    val_glob: Option<&str>,
    pcfg: &ImagePretrainConfig,
    how: MarkerTraining,
    seed: u64,
) -> anyhow::Result<(MarkerPretrainSummary, Option<MarkerAccuracy>)> {
    let labels = how.labels;
    let start = Instant::now();
    let cfg = read_config(model_dir).with_context(|| format!("reading {}", model_dir.display()))?;
    let device = Device::flex().autodiff();
    device.seed(seed);
    let part = load_part(model_dir, Part::Image, cfg.init_image(&device))?;
    let size = cfg.vlm.vision.image_size;
    let grid = token_grid(&part, size);
    let model = EncoderWithMarkerHead { part, head: TokenMarkerHead::init(cfg.vlm.text.hidden_size, &device) };
    let mut data = SceneImages::read(data_glob, size, grid, labels, seed)?;

    let steps = pcfg.steps;
    let progress = StepProgress::new(steps)?;
    let mut order = Shuffled::new(data.len(), seed);
    let mut history = Vec::with_capacity(steps);
    let (weight, probe) = (how.marker_weight, how.probe);
    let model =
        pretrain_marker_reading(model, pcfg, weight, probe, &mut |n| data.batch(&order.take(n)), &mut |step, loss| {
            history.push(loss);
            progress.step(step, format!("loss {loss:.4}"));
        })
        .context("training on point markers")?;
    progress.finish();
    if !probe {
        save_part(model_dir, Part::Image, &model.part)?;
    }

    let summary = MarkerPretrainSummary::of_run(&history, steps, data.len(), start);
    let held = match val_glob {
        None => None,
        Some(glob) => Some(PointQuestions::read(glob, size, grid, labels)?.accuracy(&model.valid())?),
    };
    Ok((summary, held))
}

/// Encoder input and token classes of one image.
struct MarkerRow {
    pixels: Vec<f32>,
    classes: Vec<i64>,
}

/// Stacks rows into a batch.
fn stack<'a>(rows: impl Iterator<Item = &'a MarkerRow>, size: usize, grid: usize) -> MarkerBatch {
    let (mut pixels, mut classes) = (Vec::new(), Vec::new());
    for row in rows {
        pixels.extend_from_slice(&row.pixels);
        classes.extend_from_slice(&row.classes);
    }
    MarkerBatch { image_size: size, grid, pixels, classes }
}

/// Attempts per marker to find a free spot on a training image.
const PLACEMENT_ATTEMPTS: usize = 64;

/// The training images: one plain render per scene, on which each batch draws fresh markers (3 to 5, labelled A,
/// B, ... at random free spots, in the point questions' style), so the encoder sees new layouts every step
/// instead of memorising the dataset's few hundred point questions.
struct SceneImages {
    size: usize,
    grid: usize,
    /// (RGB8, height, width) per scene.
    images: Vec<(Vec<u8>, usize, usize)>,
    labels: Labels,
    rng: ChaCha8Rng,
}

impl SceneImages {
    /// The first non-point row of every scene of `glob` (sorted file order).
    fn read(glob: &str, size: usize, grid: usize, labels: Labels, seed: u64) -> anyhow::Result<Self> {
        let mut seen = HashSet::new();
        let images = read_rows(glob, None, &mut |batch, r| scene_image(batch, r, &mut seen))?;
        if images.is_empty() {
            bail!("`{glob}` has no row with a plain scene image (a task other than points)");
        }
        Ok(Self { size, grid, images, labels, rng: ChaCha8Rng::seed_from_u64(seed ^ 0x3A7C_E125) })
    }

    fn len(&self) -> usize {
        self.images.len()
    }

    /// Images `idx` with fresh markers.
    fn batch(&mut self, idx: &[usize]) -> anyhow::Result<MarkerBatch> {
        let mut rows = Vec::with_capacity(idx.len());
        for &i in idx {
            let (rgb, h, w) = self.images.get(i).with_context(|| format!("no scene {i}"))?;
            let (rgb, points) =
                with_fresh_markers(rgb, *h, *w, self.labels, &mut self.rng).with_context(|| format!("scene {i}"))?;
            let (wu, hu) = (*w as u32, *h as u32);
            // drawn in letter order: A is class 1
            let points: Vec<_> = points.into_iter().zip(1..).collect();
            let classes = self.labels.classes(&points, wu, hu, self.grid).map_err(|e| anyhow::anyhow!(e))?;
            rows.push(MarkerRow { pixels: encoder_input(&planar_from_rgb8(&rgb, *h, *w), *h, *w, self.size), classes });
        }
        Ok(stack(rows.iter(), self.size, self.grid))
    }
}

/// A copy of the `w x h` RGB8 image `rgb` with 3 to 5 markers drawn at random free spots in `labels`' style, and
/// their points in letter order (A first).
pub(super) fn with_fresh_markers(
    rgb: &[u8],
    h: usize,
    w: usize,
    labels: Labels,
    rng: &mut ChaCha8Rng,
) -> anyhow::Result<(Vec<u8>, Vec<(u32, u32)>)> {
    let mut rgb = rgb.to_vec();
    let n = rng.random_range(3..=5);
    let (wu, hu) = (w as u32, h as u32);
    let mut canvas = Canvas { rgb: &mut rgb, width: wu, height: hu };
    let points = draw_random_markers(&mut canvas, &labels.style(wu, hu), n, PLACEMENT_ATTEMPTS, rng)
        .with_context(|| format!("no room for {n} markers on a {w}x{h} image"))?;
    Ok((rgb, points))
}

/// The plain image of row `r`, when it is the first non-point row of a scene not seen yet.
pub(super) fn scene_image(
    batch: &RecordBatch,
    r: usize,
    seen: &mut HashSet<String>,
) -> anyhow::Result<Option<(Vec<u8>, usize, usize)>> {
    let Some((scene, id)) = unseen_plain_scene(batch, r, seen)? else { return Ok(None) };
    let image =
        decode_png_rgb8(row_png(batch, "image", r, &id)?).map_err(|e| anyhow::anyhow!("sample {id}: image: {e}"))?;
    seen.insert(scene);
    Ok(Some((image.data, image.height, image.width)))
}

/// The point-question rows of a dataset with the markers they carry (the held-out measure).
struct PointQuestions {
    size: usize,
    grid: usize,
    rows: Vec<MarkerRow>,
}

impl PointQuestions {
    /// Every point-question row of `glob` (sorted file order), at encoder size `size` with `grid x grid` tokens.
    fn read(glob: &str, size: usize, grid: usize, labels: Labels) -> anyhow::Result<Self> {
        let rows = read_rows(glob, None, &mut |batch, r| point_question(batch, r, size, grid, labels))?;
        if rows.is_empty() {
            bail!("`{glob}` has no point-question row");
        }
        Ok(Self { size, grid, rows })
    }

    /// How well `model` reads them.
    fn accuracy(&self, model: &EncoderWithMarkerHead) -> anyhow::Result<MarkerAccuracy> {
        let mut acc = MarkerAccuracy::default();
        for chunk in self.rows.chunks(32) {
            let batch = stack(chunk.iter(), self.size, self.grid);
            acc.add(marker_accuracy(model, &batch).context("measuring the held-out markers")?);
        }
        Ok(acc)
    }
}

/// Row `r` prepared, when it is a point question.
fn point_question(
    batch: &RecordBatch,
    r: usize,
    size: usize,
    grid: usize,
    labels: Labels,
) -> anyhow::Result<Option<MarkerRow>> {
    if row_text(batch, "task", r)? != "points" {
        return Ok(None);
    }
    let id = row_text(batch, "sample_id", r)?;
    let marked = marked_points(batch, r).map_err(|e| anyhow::anyhow!("sample {id}: {e}"))?;
    // marked_points keeps every point inside the image, so the casts below are exact
    let mut points = Vec::with_capacity(marked.points.len());
    for (&(x, y), label) in marked.points.iter().zip(&marked.labels) {
        points.push(((x as u32, y as u32), letter_class(label).map_err(|e| anyhow::anyhow!("sample {id}: {e}"))?));
    }
    let classes = labels
        .classes(&points, marked.width as u32, marked.height as u32, grid)
        .map_err(|e| anyhow::anyhow!("sample {id}: {e}"))?;
    let (rgb, h, w) =
        decode_png_rgb(row_png(batch, "image", r, &id)?).map_err(|e| anyhow::anyhow!("sample {id}: image: {e}"))?;
    Ok(Some(MarkerRow { pixels: encoder_input(&rgb, h, w, size), classes }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_letter_goes_to_the_box_or_the_point() {
        let style = MarkerStyle::for_size(128);
        assert_eq!(LabelAt::Point.token_pixel(&style, (64, 64), 128, 128), (64, 64));
        let (bx, by) = LabelAt::Letter.token_pixel(&style, (64, 64), 128, 128);
        assert!(style.label_box(64, 64).contains(bx as i32, by as i32), "({bx}, {by})");
        // on a 10x10 token grid the point at (64, 64) is token (5, 5) and its letter box's centre one row above
        let at = |at| Labels { at, marker_scale: 0 }.classes(&[((64, 64), 2)], 128, 128, 10).unwrap();
        assert_eq!(at(LabelAt::Point).iter().position(|&c| c == 2), Some(5 * 10 + 5));
        assert_eq!(at(LabelAt::Letter).iter().position(|&c| c == 2), Some(4 * 10 + 5));
        // a point near the top edge (its box cut off) still labels a token inside the image
        assert_eq!(LabelAt::Letter.token_pixel(&style, (5, 2), 128, 128).1, 0);
    }
}
