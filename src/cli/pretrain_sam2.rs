//! `perceptio pretrain-sam2`: pretrains the SAM2 of a Perceptio model directory on the masks of a synth-schema
//! dataset (one positive point prompt per mask, every SAM2 weight trained), before Perceptio training freezes
//! its image encoder; writes `seg.safetensors` back atomically. Rows are prepared exactly as the training
//! batcher does (PNG -> bilinear resize + ImageNet normalisation; mask -> nearest resize to the SAM2 size).
//! `--val` measures the point-prompted mask IoU on held-out rows before and after.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use arrow::array::{Array, RecordBatch};
use burn::tensor::Device;
use perceptio_actors::image_decode::{decode_png_rgb, image_bytes};
use perceptio_models::perceptio::checkpoint::{Part, load_part, read_config, save_part};
use perceptio_models::perceptio::image::encoder_input;
use perceptio_models::sam2::Sam2;
use perceptio_models::sam2::pretrain::{MaskBatch, Sam2PretrainConfig, evaluate_points, pretrain_sam2};

use super::rows::{Shuffled, StepProgress, first_and_last_means, read_rows, row_png};

/// Arguments of `perceptio pretrain-sam2`.
#[derive(clap::Args, Debug)]
pub struct PretrainSam2Args {
    /// Perceptio model directory (perceptio.json, seg.safetensors, ...); seg.safetensors is replaced.
    #[arg(long)]
    pub model: PathBuf,
    /// Training parquet files (glob); every row with a `mask` is used.
    #[arg(long)]
    pub data: String,
    #[arg(long, default_value_t = 300)]
    pub steps: usize,
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Weight of the Dice term next to the BCE term.
    #[arg(long, default_value_t = 4.0)]
    pub dice_weight: f64,
    /// Held-out parquet files (glob): report the point-prompted mean IoU before and after pretraining.
    #[arg(long)]
    pub val: Option<String>,
    /// Held-out rows measured (in file order).
    #[arg(long, default_value_t = 256)]
    pub val_size: usize,
}

/// What a pretraining run reports. The first/last values are means over the first/last `window` steps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PretrainSummary {
    pub first_loss: f64,
    pub last_loss: f64,
    pub first_iou: f64,
    pub last_iou: f64,
    /// Steps averaged at each end.
    pub window: usize,
    pub secs: f64,
}

/// Runs `perceptio pretrain-sam2`.
pub fn run(args: &PretrainSam2Args) -> anyhow::Result<()> {
    if let Some(val) = &args.val {
        let v = evaluate(&args.model, val, args.val_size, args.seed)?;
        println!(
            "held-out point-prompt IoU before: {:.4} (single-mask token {:.4}; {} masks)",
            v.configured, v.single_token, v.masks
        );
    }
    let cfg = Sam2PretrainConfig::new()
        .with_steps(args.steps)
        .with_batch_size(args.batch_size)
        .with_lr(args.lr)
        .with_seed(args.seed)
        .with_warmup((args.steps / 10).min(50))
        .with_dice_weight(args.dice_weight);
    let s = pretrain_with(&args.model, &args.data, &cfg)?;
    println!(
        "pretrained SAM2 for {} steps in {:.1}s: loss {:.4} -> {:.4}, IoU {:.4} -> {:.4} (means of the first/last {} \
         steps); wrote {}",
        args.steps,
        s.secs,
        s.first_loss,
        s.last_loss,
        s.first_iou,
        s.last_iou,
        s.window,
        args.model.join(Part::Seg.file()).display()
    );
    if let Some(val) = &args.val {
        let v = evaluate(&args.model, val, args.val_size, args.seed)?;
        println!(
            "held-out point-prompt IoU after: {:.4} (single-mask token {:.4}; {} masks)",
            v.configured, v.single_token, v.masks
        );
    }
    Ok(())
}

/// Pretrains the SAM2 of the model in `model_dir` on the masked rows of `data_glob` and writes the segmentation
/// part back (atomically); `perceptio pretrain-sam2` and the demo's segmenter stage.
pub fn pretrain_with(model_dir: &Path, data_glob: &str, pcfg: &Sam2PretrainConfig) -> anyhow::Result<PretrainSummary> {
    let start = Instant::now();
    let steps = pcfg.steps;
    let cfg = read_config(model_dir).with_context(|| format!("reading {}", model_dir.display()))?;
    let data = MaskSet::read(data_glob, cfg.sam2.image_size(), None)?;
    let device = Device::flex().autodiff();
    let seg = cfg.init_seg(&device).context("building the segmentation part")?;
    let mut seg = load_part(model_dir, Part::Seg, seg)?;
    let seed = pcfg.seed;

    let progress = StepProgress::new(steps)?;
    let mut order = Shuffled::new(data.len(), seed);
    let (mut losses, mut ious) = (Vec::with_capacity(steps), Vec::with_capacity(steps));
    let mut ema: Option<(f64, f64)> = None;
    seg.sam2 = pretrain_sam2(seg.sam2, pcfg, &mut |n| data.batch(&order.take(n)), &mut |step, loss, iou| {
        losses.push(loss);
        ious.push(iou);
        let (l, i) = ema.map_or((loss, iou), |(l, i)| (0.95 * l + 0.05 * loss, 0.95 * i + 0.05 * iou));
        ema = Some((l, i));
        progress.step(step, format!("loss {l:.4} IoU {i:.3} (running means)"));
    })
    .context("pretraining SAM2")?;
    progress.finish();
    save_part(model_dir, Part::Seg, &seg)?;

    let (first_loss, last_loss, window) = first_and_last_means(&losses, steps);
    let (first_iou, last_iou, _) = first_and_last_means(&ious, steps);
    Ok(PretrainSummary { first_loss, last_loss, first_iou, last_iou, window, secs: start.elapsed().as_secs_f64() })
}

/// Held-out point-prompted mean IoUs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PointIou {
    /// With the decoder as configured (stability-selected single mask, what Perceptio's `SegPart` uses).
    pub configured: f64,
    /// With the single-mask token's output always (the token pretraining trains).
    pub single_token: f64,
    /// Masks measured.
    pub masks: usize,
}

/// Point-prompted mean IoU of the SAM2 in `model_dir` on the masked rows of `data_glob` (the first `limit`).
pub fn evaluate(model_dir: &Path, data_glob: &str, limit: usize, seed: u64) -> anyhow::Result<PointIou> {
    let cfg = read_config(model_dir).with_context(|| format!("reading {}", model_dir.display()))?;
    let set = MaskSet::read(data_glob, cfg.sam2.image_size(), Some(limit))?;
    let seg = cfg.init_seg(&Device::flex()).context("building the segmentation part")?;
    let mut sam2 = load_part(model_dir, Part::Seg, seg)?.sam2;
    let configured = evaluate_set(&sam2, &set, seed)?;
    sam2.mask_decoder.dynamic_multimask_via_stability = false;
    let single_token = evaluate_set(&sam2, &set, seed)?;
    Ok(PointIou { configured, single_token, masks: set.len() })
}

/// Mean IoU over every mask of `set`, in batches of 16 (points drawn from `seed`, one stream per batch).
fn evaluate_set(sam2: &Sam2, set: &MaskSet, seed: u64) -> anyhow::Result<f64> {
    let idx: Vec<usize> = (0..set.len()).collect();
    let mut ious = Vec::with_capacity(set.len());
    for (k, chunk) in idx.chunks(16).enumerate() {
        let batch = set.batch(chunk)?;
        ious.extend(evaluate_points(sam2, &batch, seed.wrapping_add(1_000_003 * (k as u64 + 1)))?);
    }
    Ok(ious.iter().sum::<f64>() / ious.len().max(1) as f64)
}

/// One masked row: the PNG bytes of the image and the mask at the SAM2 size (0/1).
struct MaskRow {
    id: String,
    png: Vec<u8>,
    mask: Vec<u8>,
}

/// Every masked row of a dataset, images kept encoded and decoded per batch.
struct MaskSet {
    size: usize,
    rows: Vec<MaskRow>,
}

impl MaskSet {
    /// The rows of `glob` with a non-empty mask (at most `limit`, in sorted file order).
    fn read(glob: &str, size: usize, limit: Option<usize>) -> anyhow::Result<Self> {
        let rows = read_rows(glob, limit, &mut |batch, r| mask_row(batch, r, size))?;
        if rows.is_empty() {
            bail!("`{glob}` has no row with a non-empty mask");
        }
        Ok(Self { size, rows })
    }

    fn len(&self) -> usize {
        self.rows.len()
    }

    /// The rows `idx` prepared as a batch.
    fn batch(&self, idx: &[usize]) -> anyhow::Result<MaskBatch> {
        let s = self.size;
        let mut pixels = Vec::with_capacity(idx.len() * 3 * s * s);
        let mut masks = Vec::with_capacity(idx.len() * s * s);
        for &i in idx {
            let row = &self.rows[i];
            let (rgb, h, w) = decode_png_rgb(&row.png).map_err(|e| anyhow::anyhow!("sample {}: image: {e}", row.id))?;
            pixels.extend(encoder_input(&rgb, h, w, s));
            masks.extend(row.mask.iter().map(|&v| v as f32));
        }
        Ok(MaskBatch { size: s, pixels, masks })
    }
}

/// Row `r` when it has a mask that stays non-empty at `size`.
fn mask_row(batch: &RecordBatch, r: usize, size: usize) -> anyhow::Result<Option<MaskRow>> {
    let Some(mask_col) = batch.column_by_name("mask") else { return Ok(None) };
    if mask_col.is_null(r) {
        return Ok(None);
    }
    let id = batch
        .column_by_name("sample_id")
        .and_then(|c| c.as_any().downcast_ref::<arrow::array::StringArray>().map(|a| a.value(r).to_string()))
        .unwrap_or_else(|| format!("row {r}"));
    let bytes = image_bytes(mask_col, r).map_err(|e| anyhow::anyhow!("sample {id}: mask: {e}"))?;
    let (m, mw, mh) =
        perceptio_synth::codec::decode_mask(bytes).map_err(|e| anyhow::anyhow!("sample {id}: mask: {e}"))?;
    let mask = resize_nearest(&m, mh as usize, mw as usize, size);
    if !mask.contains(&1) {
        return Ok(None);
    }
    let png = row_png(batch, "image", r, &id)?.to_vec();
    Ok(Some(MaskRow { id, png, mask }))
}

/// Nearest-neighbour resize of an `h x w` mask to `size x size` (pixel centres), as the training batcher does.
fn resize_nearest(m: &[bool], h: usize, w: usize, size: usize) -> Vec<u8> {
    let mut out = vec![0u8; size * size];
    if h == 0 || w == 0 {
        return out;
    }
    for y in 0..size {
        let sy = (((y as f32 + 0.5) * h as f32 / size as f32) as usize).min(h - 1);
        for x in 0..size {
            let sx = (((x as f32 + 0.5) * w as f32 / size as f32) as usize).min(w - 1);
            out[y * size + x] = u8::from(m[sy * w + sx]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_resize_doubles_and_halves() {
        let m = [true, false, false, true];
        assert_eq!(resize_nearest(&m, 2, 2, 4), vec![1, 1, 0, 0, 1, 1, 0, 0, 0, 0, 1, 1, 0, 0, 1, 1]);
        assert_eq!(
            resize_nearest(&resize_nearest(&m, 2, 2, 4).iter().map(|&v| v == 1).collect::<Vec<_>>(), 4, 4, 2),
            vec![1, 0, 0, 1]
        );
    }
}
