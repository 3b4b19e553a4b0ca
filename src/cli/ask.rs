//! `perceptio ask`: asks a trained Perceptio one question about one PNG image. Prints the answer text and what
//! the answer held (`[SEG]`, a depth span); writes `mask.png` (the predicted mask over the image) and `depth.png`
//! (the decoded depth map in the turbo colour map, red = near) into `--out` when the answer produced them.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use burn::tensor::Device;
use perceptio_models::perceptio::predict::{AskOptions, Predictor, Query};
use perceptio_synth::pictures::{overlay_mask, turbo, write_png};

use super::eval::resolve_checkpoint;

const PNG_MAGIC: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];

/// `perceptio ask`
#[derive(clap::Args, Debug)]
pub struct AskArgs {
    /// A model directory, or a training output folder with a `latest` file.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// The image (PNG).
    #[arg(long)]
    pub image: PathBuf,
    /// The question, e.g. "Please segment the small red cube in this image."
    pub question: String,
    /// Folder for mask.png and depth.png.
    #[arg(long, default_value = ".")]
    pub out: PathBuf,
    /// Most tokens generated.
    #[arg(long, default_value_t = AskOptions::default().max_new_tokens)]
    pub max_new_tokens: usize,
}

/// Bilinear resize (pixel centres aligned) of a single-channel `w x h` map to `ow x oh`.
fn resize(src: &[f32], w: usize, h: usize, ow: usize, oh: usize) -> Vec<f32> {
    let axis = |src_n: usize, dst_n: usize, o: usize| {
        let f = ((o as f32 + 0.5) * src_n as f32 / dst_n as f32 - 0.5).clamp(0.0, (src_n - 1) as f32);
        let i0 = f.floor() as usize;
        (i0, (i0 + 1).min(src_n - 1), f - i0 as f32)
    };
    let mut out = vec![0f32; ow * oh];
    for y in 0..oh {
        let (y0, y1, ty) = axis(h, oh, y);
        for x in 0..ow {
            let (x0, x1, tx) = axis(w, ow, x);
            let top = src[y0 * w + x0] * (1.0 - tx) + src[y0 * w + x1] * tx;
            let bottom = src[y1 * w + x0] * (1.0 - tx) + src[y1 * w + x1] * tx;
            out[y * ow + x] = top * (1.0 - ty) + bottom * ty;
        }
    }
    out
}

/// Reads the PNG at `path`, with errors that say what is wrong with it.
fn read_png(path: &Path) -> anyhow::Result<Vec<u8>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!("{}: no such file", path.display()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    if !bytes.starts_with(&PNG_MAGIC) {
        bail!("{}: not a PNG file (perceptio ask reads PNG images)", path.display());
    }
    Ok(bytes)
}

/// Runs `perceptio ask`.
pub fn run(args: &AskArgs) -> anyhow::Result<()> {
    let png = read_png(&args.image)?;
    let (rgb, w, h) = perceptio_synth::codec::decode_rgb(&png).with_context(|| format!("{}", args.image.display()))?;
    let (w, h) = (w as usize, h as usize);
    let model = resolve_checkpoint(&args.checkpoint)?;
    let predictor = Predictor::load(&model, &Device::flex()).with_context(|| format!("loading {}", model.display()))?;
    let query = Query::from_png(&png, args.question.as_str()).with_context(|| format!("{}", args.image.display()))?;
    predictor.check(&query).context("the question")?;
    let opts = AskOptions { max_new_tokens: args.max_new_tokens };
    let answer = predictor.answer(std::slice::from_ref(&query), &opts)?.pop().context("the model gave no answer")?;

    println!("{}", answer.text);
    let span = match &answer.depth_codes {
        Some(c) if c.len() == predictor.span_len() => format!("a depth span of {} codes", c.len()),
        Some(c) => format!("an incomplete depth span ({} of {} codes)", c.len(), predictor.span_len()),
        None => "no depth span".to_string(),
    };
    println!(
        "[SEG]: {}; {span}; {} tokens in {:.2}s (mask {:.2}s, depth {:.2}s)",
        if answer.seg { "yes" } else { "no" },
        answer.ids.len(),
        answer.timings.generate.as_secs_f64(),
        answer.timings.mask.as_secs_f64(),
        answer.timings.depth.as_secs_f64()
    );

    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    if let Some(mask) = &answer.mask {
        let probs = resize(&mask.probs, mask.size, mask.size, w, h);
        let binary: Vec<bool> = probs.iter().map(|&p| p > 0.5).collect();
        let pixels = binary.iter().filter(|&&m| m).count();
        let path = args.out.join("mask.png");
        write_png(&path, &overlay_mask(&rgb, w as u32, h as u32, &binary, [255, 40, 40], 0.5), w as u32, h as u32)?;
        println!("mask: {} ({pixels} of {} pixels)", path.display(), w * h);
    }
    if let Some(depth) = &answer.depth {
        let values = resize(&depth.values, depth.size, depth.size, w, h);
        let mut colour = Vec::with_capacity(3 * w * h);
        for v in values {
            // +1 = nearest -> the red end of turbo
            let c = turbo((v + 1.0) / 2.0);
            colour.extend(c.iter().map(|&x| (x.clamp(0.0, 1.0) * 255.0).round() as u8));
        }
        let path = args.out.join("depth.png");
        write_png(&path, &colour, w as u32, h as u32)?;
        println!("depth: {} ({}x{} map, shown at {w}x{h})", path.display(), depth.size, depth.size);
    }
    Ok(())
}
