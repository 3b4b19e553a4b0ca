//! `perceptio demo`: the main job on the embedded default. Today it renders the synthetic world, replays its
//! training split through `dataflows/replay.yaml` (parquet replay -> image decoding -> parquet sink, bad rows to
//! error files) and writes a report. Training and evaluating Perceptio join it as those stages land.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use perceptio::runtime::{Graph, RunOptions, RunSummary};
use perceptio_synth::SynthConfig;

/// The replay dataflow, embedded so the demo runs from any directory.
const REPLAY_FLOW: &str = include_str!("../../dataflows/replay.yaml");

/// `perceptio demo`
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Output folder (data, replay output and report.md).
    #[arg(long, default_value = "runs/demo")]
    pub out: PathBuf,
    /// A smaller run (fewer scenes).
    #[arg(long)]
    pub quick: bool,
    /// Scenes to render (default 600, or 120 with --quick).
    #[arg(long)]
    pub scenes: Option<usize>,
    /// World seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

fn bar(len: u64, prefix: &str) -> ProgressBar {
    let b = ProgressBar::new(len);
    b.set_style(
        ProgressStyle::with_template("{prefix:>8} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}").expect("valid"),
    );
    b.set_prefix(prefix.to_string());
    b
}

pub async fn run(args: &DemoArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let scenes = args.scenes.unwrap_or(if args.quick { 120 } else { 600 });
    let cfg = SynthConfig { scenes, ..SynthConfig::default() };
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;

    // 1. The synthetic world.
    let t = Instant::now();
    let pb = bar(scenes as u64, "world");
    let out = args.out.clone();
    let seed = args.seed;
    let synth_cfg = cfg.clone();
    let pb2 = pb.clone();
    let dataset = tokio::task::spawn_blocking(move || {
        perceptio_synth::write::write_dataset(&out, &synth_cfg, seed, |p| {
            pb2.set_position(p.scenes_done);
            pb2.set_message(format!("{} rows", p.rows_written));
        })
    })
    .await??;
    pb.finish_and_clear();
    let synth_secs = t.elapsed().as_secs_f64();
    println!("world: {scenes} scenes rendered in {synth_secs:.1}s -> {}", args.out.join("data").display());

    // 2. Replay the training split through the dataflow.
    let data = args.out.join("data").display().to_string();
    let replay_out = args.out.join("replay").display().to_string();
    let lookup = move |name: &str| match name {
        "PERCEPTIO_DATA" => Some(data.clone()),
        "PERCEPTIO_OUT" => Some(replay_out.clone()),
        _ => std::env::var(name).ok(),
    };
    let graph = Graph::from_yaml_with("dataflows/replay.yaml", REPLAY_FLOW, &perceptio::registry(), &lookup)?;
    let handle = graph.start(RunOptions::default()).await?;
    let pb = bar(0, "replay");
    while !handle.is_finished() {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if let Some(stats) = handle.stats().await {
            pb.set_length(stats.expected());
            pb.set_position(stats.read());
        }
    }
    pb.finish_and_clear();
    let summary = handle.wait().await?;
    print!("{summary}");

    // 3. The report.
    let report = report(args, &cfg, &dataset, &summary, synth_secs, started.elapsed().as_secs_f64());
    let path = args.out.join("report.md");
    let tmp = args.out.join(".report.md.tmp");
    std::fs::write(&tmp, report).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    println!("report: {}", path.display());
    Ok(())
}

fn report(
    args: &DemoArgs,
    cfg: &SynthConfig,
    dataset: &perceptio_synth::write::DatasetSummary,
    summary: &RunSummary,
    synth_secs: f64,
    total_secs: f64,
) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# perceptio demo\n");
    let _ = writeln!(
        s,
        "Command: `perceptio demo{}` (seed {}), {:.1} s in total.\n",
        if args.quick { " --quick" } else { "" },
        args.seed,
        total_secs
    );
    let _ = writeln!(
        s,
        "## Synthetic world\n\n{} scenes of {}x{} pixels, rendered in {:.1} s.\n",
        cfg.scenes, cfg.size, cfg.size, synth_secs
    );
    let _ = writeln!(s, "| split | file | rows | scenes |\n|---|---|---|---|");
    for (split, path, rows, scenes) in &dataset.files {
        let _ = writeln!(s, "| {} | `{}` | {rows} | {scenes} |", split.name(), path.display());
    }
    let _ = writeln!(s, "\n## Replay (`dataflows/replay.yaml`)\n\n```\n{summary}```\n");
    let _ = writeln!(
        s,
        "Training Perceptio through the graph and evaluating it (referring cIoU, point questions with and without \
         depth tokens) are not part of the demo yet."
    );
    s
}
