//! `perceptio pretrain-image`: pretrains the image encoder part (InternViT + projector) of a Perceptio model
//! directory on the depth maps of a synth-schema dataset (each image token predicts the depth under it through a
//! throw-away linear head), then writes `image.safetensors` back atomically. One sample per scene (the rows of
//! a scene share its image; point-question rows, whose images carry markers, are skipped). `--val` reports the
//! held-out depth MSE next to the MSE of the best image-blind map.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use arrow::array::RecordBatch;
use burn::module::Module;
use burn::tensor::Device;
use perceptio_actors::image_decode::decode_png_rgb;
use perceptio_models::perceptio::checkpoint::{Part, load_part, read_config, save_part};
use perceptio_models::perceptio::image::encoder_input;
use perceptio_models::perceptio::image_pretrain::{
    DepthBatch, EncoderWithHead, ImagePretrainConfig, TokenDepthHead, depth_mse, pretrain_image_encoder, token_grid,
};
use perceptio_synth::metrics::MapMoments;

use super::rows::{
    Shuffled, StepProgress, first_and_last_means, read_rows, row_depth_target, row_png, unseen_plain_scene,
};

/// Side of the depth block each image token predicts.
const BLOCK: usize = 4;

/// Arguments of `perceptio pretrain-image`.
#[derive(clap::Args, Debug)]
pub struct PretrainImageArgs {
    /// Perceptio model directory (perceptio.json, image.safetensors, ...); image.safetensors is replaced.
    #[arg(long)]
    pub model: PathBuf,
    /// Training parquet files (glob); one row per scene is used.
    #[arg(long)]
    pub data: String,
    #[arg(long, default_value_t = 600)]
    pub steps: usize,
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Held-out parquet files (glob): report the depth MSE after pretraining and the image-blind MSE.
    #[arg(long)]
    pub val: Option<String>,
}

/// What a pretraining run reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ImagePretrainSummary {
    /// Mean loss of the first and last `window` steps.
    pub first_loss: f64,
    pub last_loss: f64,
    pub window: usize,
    /// Training images (one per scene).
    pub images: usize,
    pub secs: f64,
}

/// Held-out depth MSE of the pretrained encoder and its head, next to the best image-blind map's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HeldOutDepth {
    pub mse: f64,
    /// MSE of the per-pixel mean of the held-out maps (what an encoder that ignores its image can at best reach).
    pub blind_mse: f64,
    pub images: usize,
}

/// Runs `perceptio pretrain-image`.
pub fn run(args: &PretrainImageArgs) -> anyhow::Result<()> {
    let cfg = ImagePretrainConfig::new().with_steps(args.steps).with_batch_size(args.batch_size).with_lr(args.lr);
    let (s, held) = pretrain_with(&args.model, &args.data, args.val.as_deref(), &cfg, args.seed)?;
    println!(
        "pretrained the image encoder for {} steps on {} images in {:.1}s: depth MSE {:.4} -> {:.4} (means of the \
         first/last {} steps); wrote {}",
        args.steps,
        s.images,
        s.secs,
        s.first_loss,
        s.last_loss,
        s.window,
        args.model.join(Part::Image.file()).display()
    );
    if let Some(h) = held {
        println!("held-out depth MSE {:.4} (best image-blind map {:.4}; {} images)", h.mse, h.blind_mse, h.images);
    }
    Ok(())
}

/// Pretrains the image encoder part of the model in `model_dir` on `data_glob` and writes it back (atomically);
/// with `val_glob`, measures it on those scenes. `perceptio pretrain-image` and the demo's stage.
pub fn pretrain_with(
    model_dir: &Path,
    data_glob: &str,
    val_glob: Option<&str>,
    pcfg: &ImagePretrainConfig,
    seed: u64,
) -> anyhow::Result<(ImagePretrainSummary, Option<HeldOutDepth>)> {
    let start = Instant::now();
    let cfg = read_config(model_dir).with_context(|| format!("reading {}", model_dir.display()))?;
    let device = Device::flex().autodiff();
    device.seed(seed);
    let part = load_part(model_dir, Part::Image, cfg.init_image(&device))?;
    let size = cfg.vlm.vision.image_size;
    let head = TokenDepthHead::init(cfg.vlm.text.hidden_size, BLOCK, &device);
    let model = EncoderWithHead { part, head };
    let side = token_grid(&model.part, size) * BLOCK;
    let data = DepthSet::read(data_glob, size, side)?;

    let steps = pcfg.steps;
    let progress = StepProgress::new(steps)?;
    let mut order = Shuffled::new(data.len(), seed);
    let mut history = Vec::with_capacity(steps);
    let model = pretrain_image_encoder(model, pcfg, size, &mut |n| data.batch(&order.take(n)), &mut |step, loss| {
        history.push(loss);
        progress.step(step, format!("depth MSE {loss:.4}"));
    })
    .context("pretraining the image encoder")?;
    progress.finish();
    save_part(model_dir, Part::Image, &model.part)?;

    let (first_loss, last_loss, window) = first_and_last_means(&history, steps);
    let summary =
        ImagePretrainSummary { first_loss, last_loss, window, images: data.len(), secs: start.elapsed().as_secs_f64() };
    let held = match val_glob {
        None => None,
        Some(glob) => {
            let val = DepthSet::read(glob, size, side)?;
            let plain = model.valid();
            let mut errors = Vec::with_capacity(val.len());
            let idx: Vec<usize> = (0..val.len()).collect();
            for chunk in idx.chunks(32) {
                errors.extend(depth_mse(&plain, &val.batch(chunk)?).context("measuring the held-out depth MSE")?);
            }
            Some(HeldOutDepth {
                mse: errors.iter().sum::<f64>() / errors.len().max(1) as f64,
                blind_mse: val.blind_mse(),
                images: val.len(),
            })
        }
    };
    Ok((summary, held))
}

/// One scene: its encoder input and depth target.
struct DepthRow {
    pixels: Vec<f32>,
    depth: Vec<f32>,
}

/// One row per scene of a dataset, prepared.
struct DepthSet {
    size: usize,
    side: usize,
    rows: Vec<DepthRow>,
}

impl DepthSet {
    /// The first non-point row of every scene of `glob` (sorted file order), at encoder size `size` with
    /// `side x side` depth targets.
    fn read(glob: &str, size: usize, side: usize) -> anyhow::Result<Self> {
        let mut seen = HashSet::new();
        let rows = read_rows(glob, None, &mut |batch, r| depth_row(batch, r, size, side, &mut seen))?;
        if rows.is_empty() {
            bail!("`{glob}` has no row with an image and a depth map");
        }
        Ok(Self { size, side, rows })
    }

    fn len(&self) -> usize {
        self.rows.len()
    }

    fn batch(&self, idx: &[usize]) -> anyhow::Result<DepthBatch> {
        let mut pixels = Vec::with_capacity(idx.len() * 3 * self.size * self.size);
        let mut depth = Vec::with_capacity(idx.len() * self.side * self.side);
        for &i in idx {
            let row = self.rows.get(i).with_context(|| format!("no scene {i}"))?;
            pixels.extend_from_slice(&row.pixels);
            depth.extend_from_slice(&row.depth);
        }
        Ok(DepthBatch { image_size: self.size, depth_side: self.side, pixels, depth })
    }

    /// MSE of the per-pixel mean map against every map (their mean per-pixel variance).
    fn blind_mse(&self) -> f64 {
        let mut moments = MapMoments::default();
        self.rows.iter().for_each(|row| moments.add(&row.depth));
        moments.mean_variance().unwrap_or(0.0)
    }
}

/// Row `r` prepared, when it is the first non-point row of a scene not seen yet.
fn depth_row(
    batch: &RecordBatch,
    r: usize,
    size: usize,
    side: usize,
    seen: &mut HashSet<String>,
) -> anyhow::Result<Option<DepthRow>> {
    let Some((scene, id)) = unseen_plain_scene(batch, r, seen)? else { return Ok(None) };
    let Some(depth) = row_depth_target(batch, r, &id, side)? else { return Ok(None) };
    let (rgb, h, w) =
        decode_png_rgb(row_png(batch, "image", r, &id)?).map_err(|e| anyhow::anyhow!("sample {id}: image: {e}"))?;
    seen.insert(scene);
    Ok(Some(DepthRow { pixels: encoder_input(&rgb, h, w, size), depth }))
}
