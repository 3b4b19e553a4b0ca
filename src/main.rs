//! The `perceptio` command line.

mod cli;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use cli::{
    ask, dataflow, demo, depth, eval, generate, init_model, pretrain_appearance, pretrain_image, pretrain_markers,
    pretrain_recall, pretrain_sam2, pretrain_tied_markers, segment, synth, train_vqvae,
};

/// perceptio trains and serves perception-enhanced vision-language models as a backpressured actor dataflow.
#[derive(Parser, Debug)]
#[command(name = "perceptio", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a dataflow file, with a progress bar and a summary at the end.
    Run(dataflow::RunArgs),
    /// Check dataflow files without running them.
    Validate(dataflow::ValidateArgs),
    /// Print a dataflow's graph (outline, or Graphviz with --dot).
    Graph(dataflow::GraphArgs),
    /// List the node kinds a dataflow may use.
    Kinds,
    /// Print the JSON Schema of dataflow files.
    Schema(dataflow::SchemaArgs),
    /// The main job on the embedded default: render the synthetic world, replay it through the graph, report.
    Demo(demo::DemoArgs),
    /// Write the synthetic spatial world as parquet (or contact sheets with --preview).
    Synth(synth::SynthArgs),
    /// Run an InternVL or Qwen2 checkpoint folder on a prompt (and optionally an image).
    Generate(generate::GenerateArgs),
    /// Segment an image with a SAM2 checkpoint from point or box prompts.
    Segment(segment::SegmentArgs),
    /// Predict a depth map with a Depth Anything V2 checkpoint.
    Depth(depth::DepthArgs),
    /// Train the depth VQ-VAE tokenizer.
    TrainVqvae(train_vqvae::TrainVqvaeArgs),
    /// Write a fresh tiny Perceptio model directory (tokenizer from a dataset, trained VQ-VAE) to train from.
    InitModel(init_model::InitModelArgs),
    /// Pretrain a model directory's image encoder (InternViT + projector) on a dataset's depth maps.
    PretrainImage(pretrain_image::PretrainImageArgs),
    /// Teach a model directory's image encoder the shapes and colours of the synthetic world's objects (fresh
    /// scenes every step).
    PretrainAppearance(pretrain_appearance::PretrainAppearanceArgs),
    /// Teach a model directory's image encoder to read point-marker letters (drawn on a dataset's scenes).
    PretrainMarkers(pretrain_markers::PretrainMarkersArgs),
    /// Pretrain a model directory's LLM to look a value up by its key: text-only point questions whose points
    /// are told as "letter level" pairs (needs a model made with --point-reasoning).
    PretrainRecall(pretrain_recall::PretrainRecallArgs),
    /// Teach a model directory's image encoder to name, in the LLM's own word embeddings, each token's marked
    /// letter and depth level (run after pretrain-recall).
    PretrainTiedMarkers(pretrain_tied_markers::PretrainTiedMarkersArgs),
    /// Pretrain a model directory's SAM2 on a dataset's masks (point prompts) before Perceptio training.
    PretrainSam2(pretrain_sam2::PretrainSam2Args),
    /// Evaluate a trained Perceptio on a dataset split (dataflows/eval.yaml) and print the results table.
    Eval(eval::EvalArgs),
    /// Ask a trained Perceptio a question about a PNG image; writes mask.png and depth.png.
    Ask(ask::AskArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo and eval show progress bars with each node's status line and print their own summaries (eval its
    // table, which the score node would log a second time), so node logs would only interleave with the bars or
    // repeat what is printed: warnings and errors only, unless RUST_LOG says otherwise.
    let default_level = if matches!(cli.command, Command::Demo(_) | Command::Eval(_)) { "warn" } else { "info" };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default_level.parse().expect("valid")),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match &cli.command {
        Command::Run(args) => tokio_main(dataflow::run(args)),
        Command::Validate(args) => dataflow::validate(args),
        Command::Graph(args) => dataflow::graph(args),
        Command::Kinds => dataflow::kinds(),
        Command::Schema(args) => dataflow::schema(args),
        Command::Demo(args) => tokio_main(demo::run(args)),
        Command::Synth(args) => synth::run(args),
        Command::Generate(args) => generate::run(args),
        Command::Segment(args) => segment::run(args),
        Command::Depth(args) => depth::run(args),
        Command::TrainVqvae(args) => train_vqvae::run(args).map(|_| ()),
        Command::InitModel(args) => init_model::run(args),
        Command::PretrainImage(args) => pretrain_image::run(args),
        Command::PretrainAppearance(args) => pretrain_appearance::run(args),
        Command::PretrainMarkers(args) => pretrain_markers::run(args),
        Command::PretrainRecall(args) => pretrain_recall::run(args),
        Command::PretrainTiedMarkers(args) => pretrain_tied_markers::run(args),
        Command::PretrainSam2(args) => pretrain_sam2::run(args),
        Command::Eval(args) => tokio_main(eval::run(args)),
        Command::Ask(args) => ask::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => match e.downcast_ref::<dataflow::Reported>() {
            Some(r) => {
                if r.code != 2 || !matches!(cli.command, Command::Validate(_)) {
                    eprintln!("error: {}", r.message);
                }
                ExitCode::from(r.code)
            }
            None => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn tokio_main(fut: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(fut)
}
