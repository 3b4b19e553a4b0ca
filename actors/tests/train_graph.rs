//! Training Perceptio through the dataflow graph: one optimisation step through the graph equals the same step as
//! one plain function (same weights, batch and seed), and an interrupted run resumed from its checkpoint equals
//! the run done straight.

use std::path::Path;

use arrow::array::{Array, Float64Array};
use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Device, Tensor};
use perceptio_actors::perceptio::batch::{Preparer, prepare_frame};
use perceptio_actors::perceptio::common::{StepInfo, read_sequences};
use perceptio_models::perceptio::checkpoint::load_model;
use perceptio_models::perceptio::loss::LossConfig;
use perceptio_models::perceptio::{OptimConfig, PerceptioOptimizer, TokenBatch, TrainBatch, train_micro_step};
use perceptio_runtime::{Graph, RunOptions};

#[path = "support/perceptio_fixture.rs"]
mod perceptio_fixture;
use perceptio_fixture::{fixture, read_parquet};

/// The training dataflow over `data`, as the shipped dataflows/train.yaml wires it.
fn train_yaml(
    data: &Path,
    model: &Path,
    out: &Path,
    total: usize,
    stop_after: usize,
    resume: bool,
    batch: usize,
) -> String {
    format!(
        r#"
name: train-test
defaults: {{ capacity: {{ rows: 64, bytes: 256MiB }}, device: cpu }}
nodes:
  - id: replay
    kind: parquet-replay
    params: {{ paths: ["{data}"], batch_rows: 16, epochs: 20 }}
  - id: batch
    kind: perceptio-batch
    params:
      train: &train
        model: {model}
        out: {out}
        optim: {{ lr: 0.002, total_steps: {total}, warmup_fraction: 0.0, clip_norm: 0.5, eps: 1.0e-6 }}
        resume: {resume}
      batch_size: {batch}
      stop_after: {stop_after}
    inputs: {{ in: replay/out }}
  - id: image
    kind: image-encoder
    params: {{ train: *train }}
    inputs: {{ in: batch/out }}
  - id: sam2
    kind: sam2-encoder
    params: {{ train: *train }}
    inputs: {{ in: batch/out }}
  - id: llm
    kind: llm
    params: {{ train: *train }}
    inputs: {{ in: image/out }}
  - id: router
    kind: token-router
    params: {{ train: *train }}
    inputs: {{ in: llm/out }}
  - id: mask
    kind: mask-decoder
    params: {{ train: *train }}
    inputs: {{ seg: router/seg, features: sam2/out }}
  - id: depth
    kind: depth-decoder
    params: {{ train: *train }}
    inputs: {{ in: router/depth }}
  - id: loss
    kind: loss-aggregator
    params: {{ train: *train }}
    inputs: {{ text: router/text, seg: mask/loss, depth: depth/loss }}
  - id: metrics
    kind: parquet-sink
    params: {{ path: "{out}/metrics.parquet" }}
    inputs: {{ in: loss/metrics }}
"#,
        data = data.display(),
        model = model.display(),
        out = out.display(),
    )
}

fn run_graph(yaml: &str) {
    let graph =
        Graph::from_yaml("train-test.yaml", yaml, &perceptio_actors::registry()).unwrap_or_else(|e| panic!("{e}"));
    let summary = graph.run_blocking(RunOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    // the batcher folds rows into micro-batches and leaves rows after the last step unused, so the
    // read = processed + failed balance of row-wise graphs does not apply here
    let _ = summary;
}

/// Every float parameter of a module, by path.
fn params<M: Module>(m: &M) -> Vec<(String, Vec<f32>)> {
    struct V {
        path: Vec<String>,
        out: Vec<(String, Vec<f32>)>,
    }
    impl ModuleVisitor for V {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            self.out.push((self.path.join("."), p.val().to_data().convert::<f32>().try_to_vec::<f32>().unwrap()));
        }
    }
    let mut v = V { path: Vec::new(), out: Vec::new() };
    m.visit(&mut v);
    v.out
}

/// Largest |a - b| over two parameter lists (which must have the same names and sizes).
fn max_diff(a: &[(String, Vec<f32>)], b: &[(String, Vec<f32>)]) -> f32 {
    assert_eq!(a.len(), b.len());
    let mut worst = 0f32;
    for ((na, va), (nb, vb)) in a.iter().zip(b) {
        assert_eq!(na, nb);
        assert_eq!(va.len(), vb.len(), "{na}");
        for (x, y) in va.iter().zip(vb) {
            worst = worst.max((x - y).abs());
        }
    }
    worst
}

fn all_params(dir: &Path) -> Vec<(String, Vec<f32>)> {
    let (_, m) = load_model(dir, &Device::flex()).unwrap();
    let mut p = params(&m.image);
    p.extend(params(&m.llm));
    p.extend(params(&m.seg));
    p
}

#[test]
fn one_step_through_the_graph_equals_the_plain_function() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, model_dir) = fixture(tmp.path(), 4);
    let out = tmp.path().join("run");
    let batch_size = 4;
    run_graph(&train_yaml(&data, &model_dir, &out, 1, 0, false, batch_size));

    // the same step as one function, on the same first usable rows
    let device = Device::flex().autodiff();
    let (cfg, mut model) = load_model(&model_dir, &device).unwrap();
    let (prep, _) = Preparer::from_model_dir(&model_dir, true, true, 512).unwrap();
    let rows = read_parquet(&data).remove(0);
    let frame =
        prepare_frame(&prep, &rows.slice(0, 16), StepInfo { step: 0, apply: true, rows_consumed: 0 }, &device).unwrap();
    let frame = frame.slice(0, batch_size);
    let tokens = TokenBatch::new(read_sequences(frame.batch()).unwrap(), prep.specials.pad);
    let batch = TrainBatch {
        tokens,
        pixels: frame.tensor("pixels").unwrap(),
        sam_pixels: frame.tensor("sam_pixels").unwrap(),
        masks: frame.tensor("masks").unwrap(),
        depth: frame.tensor("depth").unwrap(),
    };
    let loss_cfg = LossConfig::new().with_span_len(100);
    // eps 1e-6 on both sides: AdamW's first step is ~lr * sign(g), so with eps 1e-8 a gradient at float-noise size
    // (a few 1e-9, which differs between thread schedules) can move a parameter by up to lr either way
    let optim = OptimConfig::new()
        .with_lr(0.002)
        .with_total_steps(1)
        .with_warmup_fraction(0.0)
        .with_clip_norm(0.5)
        .with_eps(1e-6);
    let mut opt = PerceptioOptimizer::default();
    let values =
        train_micro_step(&mut model, &mut opt, &batch, &prep.specials, &loss_cfg, &optim, cfg.depth_temperature, true)
            .unwrap()
            .expect("the batch has loss terms");
    assert!(values.seg_bce.is_some() && values.rec.is_some() && values.count.is_some(), "{values:?}");

    let metrics = read_parquet(&out.join("metrics.parquet"));
    let total = metrics[0].column_by_name("total").unwrap().as_any().downcast_ref::<Float64Array>().unwrap().value(0);
    assert!(
        (total - values.total).abs() <= 1e-5 * values.total.abs().max(1.0),
        "graph {total} vs plain {}",
        values.total
    );

    let graph_params = all_params(&out.join("step-1"));
    let mut plain = params(&model.image);
    plain.extend(params(&model.llm));
    plain.extend(params(&model.seg));
    let before = all_params(&model_dir);
    assert!(max_diff(&before, &plain) > 1e-4, "the step changed nothing");
    let d = max_diff(&graph_params, &plain);
    assert!(d <= 1e-5, "graph and plain parameters differ by {d}");
}

#[test]
fn resumed_training_equals_training_straight() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, model_dir) = fixture(tmp.path(), 4);
    let (n, k, b) = (3, 1, 2);
    let straight = tmp.path().join("straight");
    run_graph(&train_yaml(&data, &model_dir, &straight, n, 0, false, b));
    let resumed = tmp.path().join("resumed");
    run_graph(&train_yaml(&data, &model_dir, &resumed, n, k, false, b));
    assert_eq!(std::fs::read_to_string(resumed.join("latest")).unwrap(), format!("step-{k}"));
    run_graph(&train_yaml(&data, &model_dir, &resumed, n, 0, true, b));
    assert_eq!(std::fs::read_to_string(resumed.join("latest")).unwrap(), format!("step-{n}"));
    let d = max_diff(&all_params(&straight.join(format!("step-{n}"))), &all_params(&resumed.join(format!("step-{n}"))));
    assert!(d <= 1e-6, "resumed and straight parameters differ by {d}");
    let before = all_params(&model_dir);
    assert!(max_diff(&before, &all_params(&straight.join(format!("step-{n}")))) > 1e-4);
}
