//! `perceptio train-vqvae`: trains the depth VQ-VAE tokenizer on depth maps from the synthetic world
//! (rendered in-process), a synth-schema parquet dataset, or the procedural generator, with a progress
//! bar, periodic validation, atomic checkpoints (optimizer state included, so `--resume` continues
//! exactly) and a reconstruction PNG.

use std::path::PathBuf;

use anyhow::{Context, bail};
use indicatif::ProgressBar;
use perceptio_actors::vqvae_train::{ParquetDepth, SynthDepth, preset_config};
use perceptio_models::depth::train::{PREVIEW_FILE, ValMetrics};
use perceptio_models::depth::{DepthSource, ProceduralDepth, TrainEvent, TrainVqVaeConfig, train_vqvae};
use perceptio_synth::{Split, SynthConfig, TaskKind};

/// Arguments of `perceptio train-vqvae`.
#[derive(clap::Args, Debug)]
pub struct TrainVqvaeArgs {
    /// Checkpoint directory (config.json, vqvae.safetensors, optimizer.bpk, train_state.json,
    /// reconstructions.png).
    #[arg(long)]
    pub out: PathBuf,
    /// Model size: `tiny` (80x80, x8 down) or `reference` (320x320, x32 down); both give 10x10 codes.
    #[arg(long, default_value = "tiny")]
    pub preset: String,
    /// Training data: `synth` (the synthetic world's scenes, rendered in-process; validation on its
    /// validation split), `parquet` (a synth-schema dataset given by --data; the first --val-size maps
    /// are held out) or `procedural` (ground plane + boxes/spheres ray-cast in perspective).
    #[arg(long, default_value = "synth")]
    pub source: String,
    /// Parquet files or globs for `--source parquet` (e.g. runs/demo/data/train-*.parquet).
    #[arg(long)]
    pub data: Vec<String>,
    /// Image size the synthetic world renders at before resizing to the model's input (`--source synth`;
    /// 128 is the world's default, as in `perceptio synth` datasets).
    #[arg(long, default_value_t = 128)]
    pub synth_size: u32,
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

/// Runs `perceptio train-vqvae`; returns the last validation's metrics.
pub fn run(args: &TrainVqvaeArgs) -> anyhow::Result<Option<ValMetrics>> {
    let model_cfg = preset_config(&args.preset)
        .with_context(|| format!("unknown --preset `{}` (tiny or reference)", args.preset))?;
    let side = model_cfg.input_size;
    let (mut source, val) = data(args, side)?;
    let cfg = TrainVqVaeConfig::new()
        .with_steps(args.steps)
        .with_batch_size(args.batch_size)
        .with_learning_rate(args.lr)
        .with_val_every(args.val_every)
        .with_seed(args.seed);

    let bar = super::rows::step_bar(args.steps)?;
    let mut ema_loss: Option<f64> = None;
    let (_, state) = train_vqvae(&model_cfg, &cfg, source.as_mut(), &val, &args.out, args.resume, &mut |e| match e {
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
    if let Some(m) = &state.metrics {
        println!(
            "final (step {}): val mse {:.5}  order acc {:.4}  perplexity {:.1}  codes used {}",
            state.step, m.mse, m.order_accuracy, m.perplexity, m.codes_used
        );
    }
    Ok(state.metrics)
}

/// The world `perceptio train-vqvae --source synth` draws from: the default world with depth rows only,
/// many scenes (1% for validation), rendered at `size`.
pub fn synth_world(size: u32) -> SynthConfig {
    SynthConfig {
        size,
        scenes: 1_000_000,
        val_fraction: 0.01,
        test_fraction: 0.0,
        tasks: vec![TaskKind::Depth],
        ..SynthConfig::default()
    }
}

/// A training source and its validation maps.
type Data = (Box<dyn DepthSource>, Vec<Vec<f32>>);

/// The training source and the validation maps for `--source`.
fn data(args: &TrainVqvaeArgs, side: usize) -> anyhow::Result<Data> {
    let n = args.val_size;
    Ok(match args.source.as_str() {
        "synth" => {
            let world = synth_world(args.synth_size);
            let mut held_out = SynthDepth::new(world.clone(), args.seed, Split::Validation, side)?;
            let val = held_out.next_batch(n)?;
            (Box::new(SynthDepth::new(world, args.seed, Split::Train, side)?), val)
        }
        "parquet" => {
            if args.data.is_empty() {
                bail!("--source parquet needs --data GLOB (e.g. runs/demo/data/train-*.parquet)");
            }
            let source = ParquetDepth::open(&args.data, side, n)?;
            let val = source.held_out()?;
            if val.len() < n {
                bail!(
                    "the dataset has only {} usable depth maps, --val-size {n} would hold out all of them",
                    val.len()
                );
            }
            (Box::new(source), val)
        }
        "procedural" => {
            // Validation maps come from a disjoint seed stream.
            let mut held_out = ProceduralDepth::new(side, args.seed.wrapping_add(1_000_003));
            let val: Vec<Vec<f32>> = (0..n).map(|_| held_out.sample()).collect();
            (Box::new(ProceduralDepth::new(side, args.seed)), val)
        }
        other => bail!("unknown --source `{other}` (synth, parquet or procedural)"),
    })
}
