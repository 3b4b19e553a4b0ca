//! Training throughput through the actor graph vs the same steps as one plain function.
//!
//! ```sh
//! cargo bench -p perceptio-actors --bench train_throughput            # 40 steps of batch 8
//! STEPS=100 cargo bench -p perceptio-actors --bench train_throughput
//! ```
//!
//! Both sides start from the same tiny model (random depth tokenizer, synthetic world with cached codes) and train
//! the same number of micro-batches of 8 rows with the same optimiser settings. The graph side runs the shipped
//! `dataflows/train.yaml` (replay -> batch -> image/SAM2 encoders -> LLM -> router -> mask/depth decoders -> loss,
//! every trainable node stepping its own optimiser); the plain side prepares each micro-batch and calls
//! `train_micro_step` in one loop on one thread. Row preparation is inside the timed region on both sides, model
//! loading and checkpoint writing are not on the plain side (the graph's node start-up is included in its time,
//! so the ratio is slightly pessimistic for short runs). Prints samples/s of each and graph/plain (goal >= 0.95).

use std::time::Instant;

use burn::tensor::Device;
use perceptio_actors::perceptio::batch::{Preparer, prepare_frame};
use perceptio_actors::perceptio::common::{StepInfo, read_sequences};
use perceptio_models::perceptio::checkpoint::load_model;
use perceptio_models::perceptio::loss::LossConfig;
use perceptio_models::perceptio::{OptimConfig, PerceptioOptimizer, TokenBatch, TrainBatch, train_micro_step};
use perceptio_runtime::{Graph, RunOptions};

#[path = "../tests/support/perceptio_fixture.rs"]
mod perceptio_fixture;
use perceptio_fixture::{fixture, read_parquet};

const TRAIN_FLOW: &str = include_str!("../../dataflows/train.yaml");
const BATCH: usize = 8;

fn main() {
    let steps: usize = std::env::var("STEPS").ok().and_then(|s| s.parse().ok()).unwrap_or(40);
    let tmp = tempfile::tempdir().expect("temporary directory");
    let (data, model_dir) = fixture(tmp.path(), 24);
    let rows: Vec<_> = read_parquet(&data);
    let n_rows: usize = rows.iter().map(|b| b.num_rows()).sum();
    println!("{n_rows} rows, {steps} steps of batch {BATCH}");

    // graph
    let out = tmp.path().join("graph");
    let vars = [
        ("PERCEPTIO_DATA", data.display().to_string()),
        ("PERCEPTIO_MODEL", model_dir.display().to_string()),
        ("PERCEPTIO_OUT", out.display().to_string()),
        ("PERCEPTIO_STEPS", steps.to_string()),
        ("PERCEPTIO_DEPTH_TOKENS", "true".to_string()),
        ("PERCEPTIO_RESUME", "false".to_string()),
    ];
    let lookup = |name: &str| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.clone());
    let graph = Graph::from_yaml_with("dataflows/train.yaml", TRAIN_FLOW, &perceptio_actors::registry(), &lookup)
        .unwrap_or_else(|e| panic!("{e}"));
    let t = Instant::now();
    graph.run_blocking(RunOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    let graph_secs = t.elapsed().as_secs_f64();

    // plain: the same optimiser settings as dataflows/train.yaml
    let device = Device::flex().autodiff();
    let (cfg, mut model) = load_model(&model_dir, &device).expect("model");
    let (prep, _) = Preparer::from_model_dir(&model_dir, true, true, 512).expect("preparer");
    let loss_cfg = LossConfig::new().with_span_len(prep.sequence.span_len);
    let optim =
        OptimConfig::new().with_lr(0.001).with_total_steps(steps).with_warmup_fraction(0.05).with_clip_norm(1.0);
    let mut opt = PerceptioOptimizer::default();
    let all = arrow::compute::concat_batches(&rows[0].schema(), &rows).expect("one batch");
    let t = Instant::now();
    let (mut done, mut offset) = (0, 0);
    while done < steps {
        let take = (2 * BATCH).min(all.num_rows() - offset);
        let info = StepInfo { step: done as u64, apply: true, rows_consumed: 0 };
        let frame = prepare_frame(&prep, &all.slice(offset, take), info, &device).expect("rows");
        offset = (offset + take) % all.num_rows();
        if frame.rows() < BATCH {
            continue;
        }
        let frame = frame.slice(0, BATCH);
        let batch = TrainBatch {
            tokens: TokenBatch::new(read_sequences(frame.batch()).expect("layout"), prep.specials.pad),
            pixels: frame.tensor("pixels").expect("pixels"),
            sam_pixels: frame.tensor("sam_pixels").expect("sam"),
            masks: frame.tensor("masks").expect("masks"),
            depth: frame.tensor("depth").expect("depth"),
        };
        train_micro_step(&mut model, &mut opt, &batch, &prep.specials, &loss_cfg, &optim, cfg.depth_temperature, true)
            .expect("step");
        done += 1;
    }
    let plain_secs = t.elapsed().as_secs_f64();
    let samples = (steps * BATCH) as f64;
    let (g, p) = (samples / graph_secs, samples / plain_secs);
    println!("graph: {graph_secs:.1} s, {g:.2} samples/s");
    println!("plain: {plain_secs:.1} s, {p:.2} samples/s");
    println!("graph / plain throughput: {:.3} (goal >= 0.95)", g / p);
}
