//! `perceptio train-vqvae`: trains the depth VQ-VAE tokenizer on procedural depth maps (the
//! synthetic world and parquet datasets plug in through `perceptio_models::depth::DepthSource`),
//! with a progress bar, periodic validation, atomic checkpoints and a reconstruction PNG.

use std::path::PathBuf;

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use perceptio_models::depth::train::PREVIEW_FILE;
use perceptio_models::depth::{ProceduralDepth, TrainEvent, TrainVqVaeConfig, VqVaeConfig, train_vqvae};

/// Arguments of `perceptio train-vqvae`.
#[derive(clap::Args, Debug)]
pub struct TrainVqvaeArgs {
    /// Checkpoint directory (config.json, vqvae.safetensors, train_state.json, reconstructions.png).
    #[arg(long)]
    pub out: PathBuf,
    /// Model size: `tiny` (80x80, x8 down) or `reference` (320x320, x32 down); both give 10x10 codes.
    #[arg(long, default_value = "tiny")]
    pub preset: String,
    /// Training data: `procedural` (ground plane + boxes/spheres ray-cast in perspective).
    #[arg(long, default_value = "procedural")]
    pub source: String,
    #[arg(long, default_value_t = 3000)]
    pub steps: usize,
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 3e-4)]
    pub lr: f64,
    /// Validate and checkpoint every N steps.
    #[arg(long, default_value_t = 250)]
    pub val_every: usize,
    /// Held-out maps for validation.
    #[arg(long, default_value_t = 128)]
    pub val_size: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Continue from the checkpoint in --out.
    #[arg(long)]
    pub resume: bool,
    /// Also copy the final reconstruction PNG here (e.g. docs/vqvae/reconstructions.png).
    #[arg(long)]
    pub png: Option<PathBuf>,
}

/// Prints above the bar, or plainly when the bar is hidden (output is not a terminal).
fn say(bar: &ProgressBar, line: String) {
    if bar.is_hidden() {
        println!("{line}");
    } else {
        bar.println(line);
    }
}

/// Runs `perceptio train-vqvae`.
pub fn run(args: &TrainVqvaeArgs) -> anyhow::Result<()> {
    let model_cfg = match args.preset.as_str() {
        "tiny" => VqVaeConfig::tiny(),
        "reference" => VqVaeConfig::reference(),
        other => bail!("unknown --preset `{other}` (tiny or reference)"),
    };
    let side = model_cfg.input_size;
    let mut source = match args.source.as_str() {
        "procedural" => ProceduralDepth::new(side, args.seed),
        other => bail!("unknown --source `{other}` (procedural)"),
    };
    // Validation maps come from a disjoint seed stream.
    let mut held_out = ProceduralDepth::new(side, args.seed.wrapping_add(1_000_003));
    let val: Vec<Vec<f32>> = (0..args.val_size).map(|_| held_out.sample()).collect();
    let cfg = TrainVqVaeConfig::new()
        .with_steps(args.steps)
        .with_batch_size(args.batch_size)
        .with_learning_rate(args.lr)
        .with_val_every(args.val_every)
        .with_seed(args.seed);

    let bar = ProgressBar::new(args.steps as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}")
            .context("progress bar template")?,
    );
    let mut ema_loss: Option<f64> = None;
    let (_, state) = train_vqvae(&model_cfg, &cfg, &mut source, &val, &args.out, args.resume, &mut |e| match e {
        TrainEvent::Step { step, loss, recon, reseeded } => {
            let smoothed = ema_loss.map_or(*loss, |l| 0.98 * l + 0.02 * loss);
            ema_loss = Some(smoothed);
            bar.set_position(*step as u64);
            bar.set_message(format!("loss {smoothed:.4} recon {recon:.4} reseeded {reseeded}"));
        }
        TrainEvent::Validation { step, metrics } => say(
            &bar,
            format!(
                "step {step}: val mse {:.5}  order acc {:.4}  perplexity {:.1}  codes used {}",
                metrics.mse, metrics.order_accuracy, metrics.perplexity, metrics.codes_used
            ),
        ),
        TrainEvent::Checkpoint { step, dir } => say(&bar, format!("step {step}: checkpoint {}", dir.display())),
    })
    .with_context(|| format!("training into {}", args.out.display()))?;
    bar.finish();
    if let Some(png) = &args.png {
        if let Some(parent) = png.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::copy(args.out.join(PREVIEW_FILE), png).with_context(|| format!("copying to {}", png.display()))?;
    }
    if let Some(m) = state.metrics {
        println!(
            "final (step {}): val mse {:.5}  order acc {:.4}  perplexity {:.1}  codes used {}",
            state.step, m.mse, m.order_accuracy, m.perplexity, m.codes_used
        );
    }
    Ok(())
}
