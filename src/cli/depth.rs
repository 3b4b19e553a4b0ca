//! `perceptio depth`: runs a Depth Anything V2 checkpoint (transformers
//! `DepthAnythingForDepthEstimation` layout) on a PNG and writes the relative depth as a 16-bit PNG
//! and a colour-mapped PNG (brighter / warmer = closer); `--dump` writes the raw values.

use std::path::PathBuf;

use anyhow::Context;
use perceptio_models::depth::depth_anything::{estimate, load_cpu};
use perceptio_models::depth::dump::{DumpTensor, write_f32_safetensors};
use perceptio_models::depth::image::{colorize, read_rgb_png, write_gray16_minmax, write_rgb};

/// Arguments of `perceptio depth`.
#[derive(clap::Args, Debug)]
pub struct DepthArgs {
    /// Checkpoint directory (config.json + model.safetensors).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Input image (PNG).
    #[arg(long)]
    pub image: PathBuf,
    /// Output prefix: writes `<prefix>.depth16.png` and `<prefix>.depth.png` (default: the image path).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Shorter side of the network input (rounded to a multiple of the patch size).
    #[arg(long, default_value_t = 518)]
    pub size: usize,
    /// Also write the raw depth (network and image resolution) here.
    #[arg(long)]
    pub dump: Option<PathBuf>,
}

/// Runs `perceptio depth`.
pub fn run(args: &DepthArgs) -> anyhow::Result<()> {
    let model = load_cpu(&args.checkpoint)
        .with_context(|| format!("loading Depth Anything from {}", args.checkpoint.display()))?;
    let image = read_rgb_png(&args.image).with_context(|| format!("reading {}", args.image.display()))?;
    let d = estimate(&model, &image, args.size)?;
    let prefix = args.out.clone().unwrap_or_else(|| args.image.with_extension(""));
    let p16 = prefix.with_extension("depth16.png");
    let pcol = prefix.with_extension("depth.png");
    write_gray16_minmax(&p16, d.width, d.height, &d.values)?;
    write_rgb(&pcol, &colorize(d.width, d.height, &d.values))?;
    println!(
        "depth {} and {} ({}x{}, network output {}x{})",
        p16.display(),
        pcol.display(),
        d.width,
        d.height,
        d.raw_size[1],
        d.raw_size[0]
    );
    if let Some(dump) = &args.dump {
        write_f32_safetensors(
            dump,
            &[
                DumpTensor {
                    name: "predicted_depth".into(),
                    shape: vec![1, d.raw_size[0], d.raw_size[1]],
                    values: d.raw,
                },
                DumpTensor { name: "depth".into(), shape: vec![d.height, d.width], values: d.values },
            ],
        )?;
        println!("raw outputs {}", dump.display());
    }
    Ok(())
}
