//! `perceptio synth`: write the synthetic spatial world as a parquet dataset (train/validation/test in the
//! HuggingFace layout), or with `--preview` contact sheets of its samples. A thin layer over `perceptio_synth`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use perceptio_synth::{SynthConfig, TaskKind};

#[derive(clap::Args, Debug)]
pub struct SynthArgs {
    /// Output directory (the dataset goes to OUT/data/{split}-00000-of-00001.parquet).
    #[arg(long)]
    pub out: PathBuf,
    /// Scenes over all splits (10% validation, 10% test by default).
    #[arg(long)]
    pub scenes: Option<usize>,
    /// World seed: the same seed and settings give byte-identical files.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Image width and height in pixels.
    #[arg(long)]
    pub size: Option<u32>,
    /// Comma-separated tasks: referring, points, depth, vqa (default: all).
    #[arg(long, value_delimiter = ',')]
    pub tasks: Option<Vec<String>>,
    /// A JSON file with any `SynthConfig` fields; the flags above override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Rendering threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Write contact sheets (16 samples per task, OUT/synth-{task}.png) instead of the dataset.
    #[arg(long)]
    pub preview: bool,
}

fn config(args: &SynthArgs) -> anyhow::Result<SynthConfig> {
    let mut cfg: SynthConfig = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
        }
        None => SynthConfig::default(),
    };
    if let Some(n) = args.scenes {
        cfg.scenes = n;
    }
    if let Some(s) = args.size {
        cfg.size = s;
    }
    if let Some(t) = args.threads {
        cfg.threads = t;
    }
    if let Some(tasks) = &args.tasks {
        cfg.tasks = tasks.iter().map(|t| t.parse::<TaskKind>()).collect::<Result<_, _>>()?;
    }
    cfg.validate()?;
    Ok(cfg)
}

pub fn run(args: &SynthArgs) -> anyhow::Result<()> {
    let cfg = config(args)?;
    let start = Instant::now();
    if args.preview {
        let files = perceptio_synth::preview::write_contact_sheets(&args.out, &cfg, args.seed, 16)?;
        for f in files {
            println!("{}", f.display());
        }
        return Ok(());
    }
    let bar = ProgressBar::new(cfg.scenes as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} scenes  {msg}  [{elapsed_precise}]")
            .context("progress bar template")?,
    );
    let summary = perceptio_synth::write_dataset(&args.out, &cfg, args.seed, |p| {
        bar.set_position(p.scenes_done);
        bar.set_message(format!("{} rows, {}", p.rows_written, p.split.name()));
    })?;
    bar.finish();
    let secs = start.elapsed().as_secs_f64();
    for (split, path, rows, scenes) in &summary.files {
        println!("{:>10}: {rows} rows from {scenes} scenes -> {}", split.name(), path.display());
    }
    println!("card: {}", summary.card.display());
    println!("{} scenes in {secs:.2} s ({:.1} scenes/s)", cfg.scenes, cfg.scenes as f64 / secs);
    Ok(())
}
