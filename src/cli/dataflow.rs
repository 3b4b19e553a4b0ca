//! `run`, `validate`, `graph`, `kinds` and `schema`: the dataflow subcommands.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use perceptio::runtime::{Graph, RunOptions, RunSummary, dot};

/// `perceptio run FILE`
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// The dataflow file (YAML).
    pub file: PathBuf,
    /// Seconds nodes get to stop after a failure before the run ends without them.
    #[arg(long, default_value_t = 10)]
    pub stop_deadline: u64,
    /// Write the run summary as JSON to this file.
    #[arg(long)]
    pub summary_json: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// `perceptio validate FILE...`
#[derive(clap::Args, Debug)]
pub struct ValidateArgs {
    /// Dataflow files to check.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

/// `perceptio graph FILE`
#[derive(clap::Args, Debug)]
pub struct GraphArgs {
    /// The dataflow file (YAML).
    pub file: PathBuf,
    /// Print Graphviz DOT instead of the outline.
    #[arg(long)]
    pub dot: bool,
}

/// `perceptio schema`
#[derive(clap::Args, Debug)]
pub struct SchemaArgs {
    /// Write to this file instead of standard output.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// A failure that already printed its own message; the exit code says which kind.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Reported {
    pub code: u8,
    pub message: String,
}

fn load(file: &std::path::Path) -> anyhow::Result<Graph> {
    Graph::from_file(file, &perceptio::registry())
        .map_err(|e| anyhow::Error::new(Reported { code: 2, message: e.to_string() }))
}

pub fn validate(args: &ValidateArgs) -> anyhow::Result<()> {
    let mut failed = Vec::new();
    for file in &args.files {
        match load(file) {
            Ok(g) => println!(
                "{}: ok ({} nodes, {} edges)",
                file.display(),
                g.validated().nodes.len(),
                g.validated().edges.len()
            ),
            Err(e) => {
                eprintln!("{e}");
                failed.push(file.display().to_string());
            }
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Reported { code: 2, message: format!("invalid: {}", failed.join(", ")) }.into())
    }
}

pub fn graph(args: &GraphArgs) -> anyhow::Result<()> {
    let g = load(&args.file)?;
    if args.dot {
        print!("{}", dot::dot(g.validated()));
    } else {
        print!("{}", dot::outline(g.validated()));
    }
    Ok(())
}

pub fn kinds() -> anyhow::Result<()> {
    let registry = perceptio::registry();
    let width = registry.kinds().map(|k| k.name().len()).max().unwrap_or(0);
    for kind in registry.kinds() {
        println!("{:<width$}  {}", kind.name(), kind.about());
    }
    Ok(())
}

pub fn schema(args: &SchemaArgs) -> anyhow::Result<()> {
    let text = schema_text();
    match &args.out {
        Some(path) => std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?,
        None => print!("{text}"),
    }
    Ok(())
}

/// The dataflow JSON Schema as checked in under dataflows/.
pub fn schema_text() -> String {
    let value = perceptio::registry().dataflow_json_schema();
    serde_json::to_string_pretty(&value).expect("a JSON value serialises") + "\n"
}

/// Runs a dataflow file with a progress bar; returns its summary.
pub async fn run_file(file: &std::path::Path, options: RunOptions, quiet: bool) -> anyhow::Result<RunSummary> {
    let graph = load(file)?;
    let name = graph.validated().name.clone();
    let handle = graph.start(options).await?;
    let bar = if quiet { ProgressBar::hidden() } else { ProgressBar::new_spinner() };
    bar.set_style(
        ProgressStyle::with_template("{spinner} {prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} rows {msg}")
            .expect("a valid template"),
    );
    bar.set_prefix(name);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    while !handle.is_finished() {
        tick.tick().await;
        if let Some(stats) = handle.stats().await {
            let expected = stats.expected();
            if expected > 0 {
                bar.set_length(expected);
            }
            bar.set_position(stats.read());
            let failed = stats.failed();
            let mut msg = if failed > 0 { format!("({failed} failed) ") } else { String::new() };
            msg.push_str(&stats.statuses());
            bar.set_message(msg);
        }
    }
    bar.finish_and_clear();
    Ok(handle.wait().await?)
}

pub async fn run(args: &RunArgs) -> anyhow::Result<()> {
    let options = RunOptions { stop_deadline: Duration::from_secs(args.stop_deadline) };
    let summary = run_file(&args.file, options, args.quiet).await?;
    print!("{summary}");
    if let Some(path) = &args.summary_json {
        let json = serde_json::to_string_pretty(&summary)?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
