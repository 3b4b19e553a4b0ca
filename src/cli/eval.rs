//! `perceptio eval`: evaluates a trained Perceptio on a dataset split through the embedded `dataflows/eval.yaml`
//! (parquet replay -> `perceptio-infer` -> `perceptio-score`), with a progress bar, prints the results table and
//! keeps every row's answer in a predictions file.
//! [`evaluate`] is the same run for other commands (the demo).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use perceptio::runtime::{Graph, RunOptions};
use perceptio_actors::perceptio::score::EvalTable;

const EVAL_FLOW: &str = include_str!("../../dataflows/eval.yaml");

/// `perceptio eval`
#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// A model directory (perceptio.json, tokenizer.json, weights), or a training output folder with a `latest` file.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// A dataset folder (`{split}-*.parquet` in it or in its `data/`), a parquet file, or a glob.
    #[arg(long)]
    pub data: String,
    /// The split to read from a dataset folder.
    #[arg(long, default_value = "test")]
    pub split: String,
    /// Evaluate at most this many rows (in file order).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Write the table as JSON here (default: eval-{split}.json in the model directory); the per-row answers go
    /// beside it as `{stem}-predictions.parquet`.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// The model directory `checkpoint` names: itself, or the checkpoint its `latest` file names.
pub fn resolve_checkpoint(checkpoint: &Path) -> anyhow::Result<PathBuf> {
    if !checkpoint.is_dir() {
        bail!("{}: not a directory (expected a model directory or a training output folder)", checkpoint.display());
    }
    let latest = checkpoint.join("latest");
    if latest.is_file() && !checkpoint.join("perceptio.json").is_file() {
        let name = std::fs::read_to_string(&latest).with_context(|| format!("reading {}", latest.display()))?;
        let dir = checkpoint.join(name.trim());
        if !dir.is_dir() {
            bail!("{} names {}, which is not a directory", latest.display(), dir.display());
        }
        return Ok(dir);
    }
    Ok(checkpoint.to_path_buf())
}

/// A path beside the table `json_out` of an evaluation: `{stem}-{suffix}` in its folder.
fn beside(json_out: &Path, suffix: &str) -> PathBuf {
    let dir = json_out.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let stem = json_out.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| "eval".into());
    dir.join(format!("{stem}-{suffix}"))
}

/// Where the per-row answers of an evaluation whose table goes to `json_out` are written:
/// `{stem}-predictions.parquet` beside it (the error files go to `{stem}-errors/`).
pub fn predictions_path(json_out: &Path) -> PathBuf {
    beside(json_out, "predictions.parquet")
}

/// The parquet glob for `data`: a folder holding `{split}-*.parquet` (directly or under `data/`), else `data` as
/// given (a file or a glob).
pub fn data_glob(data: &str, split: &str) -> anyhow::Result<String> {
    let path = Path::new(data);
    if !path.is_dir() {
        return Ok(data.to_string());
    }
    for dir in [path.to_path_buf(), path.join("data")] {
        let pattern = dir.join(format!("{split}-*.parquet")).display().to_string();
        if glob::glob(&pattern).map(|mut m| m.next().is_some()).unwrap_or(false) {
            return Ok(pattern);
        }
    }
    bail!("{data}: no {split}-*.parquet in it or in its data/ folder")
}

/// Evaluates the model at `checkpoint` (resolved as by `--checkpoint`) on the rows of `data_glob` (at most
/// `limit`), writes the table to `json_out` (error files beside it) and returns it.
pub async fn evaluate(
    checkpoint: &Path,
    data_glob: &str,
    limit: Option<usize>,
    json_out: &Path,
) -> anyhow::Result<EvalTable> {
    run_eval(checkpoint, data_glob, limit, json_out, false).await
}

async fn run_eval(
    checkpoint: &Path,
    data_glob: &str,
    limit: Option<usize>,
    json_out: &Path,
    quiet: bool,
) -> anyhow::Result<EvalTable> {
    let model = resolve_checkpoint(checkpoint)?;
    let errors_dir = beside(json_out, "errors");
    if json_out.exists() {
        std::fs::remove_file(json_out).with_context(|| format!("removing the old {}", json_out.display()))?;
    }
    let predictions = predictions_path(json_out);
    let vars: Vec<(&str, String)> = vec![
        ("PERCEPTIO_MODEL", model.display().to_string()),
        ("PERCEPTIO_PREDICTIONS", predictions.display().to_string()),
        ("PERCEPTIO_DATA", data_glob.to_string()),
        ("PERCEPTIO_OUT", errors_dir.display().to_string()),
        ("PERCEPTIO_EVAL_JSON", json_out.display().to_string()),
        ("PERCEPTIO_LIMIT", limit.unwrap_or(0).to_string()),
    ];
    let lookup = move |name: &str| {
        vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.clone()).or_else(|| std::env::var(name).ok())
    };
    let graph = Graph::from_yaml_with("dataflows/eval.yaml", EVAL_FLOW, &perceptio::registry(), &lookup)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let started = Instant::now();
    let handle = graph.start(RunOptions::default()).await?;
    let bar = if quiet { ProgressBar::hidden() } else { ProgressBar::new(0) };
    bar.set_style(
        ProgressStyle::with_template("{prefix:>9} [{elapsed_precise}] {wide_bar} {pos}/{len} rows {msg}")
            .expect("a valid template"),
    );
    bar.set_prefix("eval");
    while !handle.is_finished() {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if let Some(stats) = handle.stats().await {
            let expected = stats.expected();
            let total = match limit {
                Some(n) if expected == 0 || (n as u64) < expected => n as u64,
                _ => expected,
            };
            bar.set_length(total);
            if let Some((_, _, n)) = stats.nodes.iter().find(|(id, _, _)| id == "infer") {
                bar.set_position(n.rows_out + n.rows_failed);
            }
            let failed = stats.failed();
            bar.set_message(if failed > 0 { format!("({failed} failed)") } else { String::new() });
        }
    }
    bar.finish_and_clear();
    let summary = handle.wait().await.context("running dataflows/eval.yaml")?;
    if summary.failed > 0 {
        eprintln!("eval: {} rows failed (see {})", summary.failed, errors_dir.display());
    }
    let table = EvalTable::read_json(json_out)?;
    tracing::debug!(secs = started.elapsed().as_secs_f64(), rows = table.rows, "evaluation finished");
    Ok(table)
}

/// Runs `perceptio eval`.
pub async fn run(args: &EvalArgs) -> anyhow::Result<()> {
    let model = resolve_checkpoint(&args.checkpoint)?;
    let glob = data_glob(&args.data, &args.split)?;
    let json = args.out.clone().unwrap_or_else(|| model.join(format!("eval-{}.json", args.split)));
    let started = Instant::now();
    let table = run_eval(&model, &glob, args.limit, &json, args.quiet).await?;
    let secs = started.elapsed().as_secs_f64();
    println!("{} on {glob}: {} rows in {secs:.1}s\n", model.display(), table.rows);
    print!("{}", table.markdown());
    println!("\ntable: {}\nanswers per row: {}", json.display(), predictions_path(&json).display());
    Ok(())
}
