//! `perceptio segment`: runs a SAM2 checkpoint (transformers `Sam2Model` layout) on a PNG with point
//! or box prompts and writes the mask PNG; `--dump` also writes the raw mask logits and IoU scores.

use std::path::PathBuf;

use anyhow::{Context, bail};
use perceptio_models::depth::dump::{DumpTensor, write_f32_safetensors};
use perceptio_models::depth::image::{read_rgb_png, write_gray8};
use perceptio_models::sam2::run::{SegmentRequest, load_cpu, segment};

/// Arguments of `perceptio segment`.
#[derive(clap::Args, Debug)]
pub struct SegmentArgs {
    /// Checkpoint directory (config.json + model.safetensors or shards).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Input image (PNG).
    #[arg(long)]
    pub image: PathBuf,
    /// Positive point `X,Y` in image pixels (repeatable).
    #[arg(long = "point")]
    pub points: Vec<String>,
    /// Negative point `X,Y` in image pixels (repeatable).
    #[arg(long = "negative")]
    pub negatives: Vec<String>,
    /// Box `X0,Y0,X1,Y1` in image pixels.
    #[arg(long = "box")]
    pub bbox: Option<String>,
    /// Output mask PNG (default: `<image>.mask.png`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Also write the raw low-res and full-res mask logits, IoU and object scores here.
    #[arg(long)]
    pub dump: Option<PathBuf>,
    /// Return one mask (stability-selected) instead of the best of three.
    #[arg(long)]
    pub single_mask: bool,
}

fn parse_floats<const N: usize>(s: &str, what: &str) -> anyhow::Result<[f32; N]> {
    let v: Vec<f32> = s
        .split(',')
        .map(|p| p.trim().parse::<f32>())
        .collect::<Result<_, _>>()
        .with_context(|| format!("--{what} `{s}`: expected {N} comma-separated numbers"))?;
    match <[f32; N]>::try_from(v) {
        Ok(a) if a.iter().all(|x| x.is_finite()) => Ok(a),
        _ => bail!("--{what} `{s}`: expected {N} comma-separated finite numbers"),
    }
}

/// Runs `perceptio segment`.
pub fn run(args: &SegmentArgs) -> anyhow::Result<()> {
    if args.points.is_empty() && args.negatives.is_empty() && args.bbox.is_none() {
        bail!("give at least one --point, --negative or --box");
    }
    let mut request = SegmentRequest { multimask: !args.single_mask, ..SegmentRequest::default() };
    for p in &args.points {
        request.points.push((parse_floats::<2>(p, "point")?, true));
    }
    for p in &args.negatives {
        request.points.push((parse_floats::<2>(p, "negative")?, false));
    }
    if let Some(b) = &args.bbox {
        request.bbox = Some(parse_floats::<4>(b, "box")?);
    }
    let sam = load_cpu(&args.checkpoint).with_context(|| format!("loading SAM2 from {}", args.checkpoint.display()))?;
    let image = read_rgb_png(&args.image).with_context(|| format!("reading {}", args.image.display()))?;
    let r = segment(&sam, &image, &request)?;
    let (w, h) = (r.width, r.height);
    let mask: Vec<f32> =
        r.logits[r.best * w * h..(r.best + 1) * w * h].iter().map(|&v| if v > 0.0 { 1.0 } else { 0.0 }).collect();
    let out_path = args.out.clone().unwrap_or_else(|| args.image.with_extension("mask.png"));
    write_gray8(&out_path, w, h, &mask, 0.0, 1.0)?;
    println!(
        "mask {} ({} of {} pixels); IoU scores {:?}; chose mask {}",
        out_path.display(),
        mask.iter().filter(|&&v| v > 0.0).count(),
        w * h,
        r.iou_scores,
        r.best
    );
    if let Some(dump) = &args.dump {
        let m = r.num_masks;
        write_f32_safetensors(
            dump,
            &[
                DumpTensor {
                    name: "low_res_mask_logits".into(),
                    shape: vec![1, m, r.low_res[0], r.low_res[1]],
                    values: r.low_res_logits,
                },
                DumpTensor { name: "mask_logits".into(), shape: vec![1, m, h, w], values: r.logits },
                DumpTensor { name: "iou_scores".into(), shape: vec![1, m], values: r.iou_scores },
                DumpTensor {
                    name: "object_score_logits".into(),
                    shape: vec![1, 1],
                    values: vec![r.object_score_logit],
                },
            ],
        )?;
        println!("raw outputs {}", dump.display());
    }
    Ok(())
}
