//! The depth nodes through real graphs: `depth-encode` adds the tokenizer's codes (equal to encoding
//! `depth_target_from_png` directly) and sends rows without depth to `errors`; `vqvae-train` trains a tiny
//! tokenizer from streamed synthetic rows into a loadable checkpoint. Also the CLI's data sources over the
//! synthetic world and parquet datasets.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Float32Array, Int32Array, ListArray, RecordBatch, StructArray};
use burn::tensor::{Device, Tensor};
use perceptio_actors::vqvae_train::{ParquetDepth, SynthDepth};
use perceptio_models::depth::train::{OPTIMIZER_FILE, PREVIEW_FILE, STATE_FILE, TrainState, load_checkpoint};
use perceptio_models::depth::{
    DepthSource, ProceduralDepth, TrainVqVaeConfig, VqVaeConfig, VqVaeTrainer, depth_target_from_png,
};
use perceptio_runtime::{Graph, RunOptions};
use perceptio_synth::{Split, SynthConfig, SynthStream, TaskKind};

#[path = "support/parquet_io.rs"]
mod parquet_io;
use parquet_io::{read_all, strings, write_parquet};

/// 16x16 input, x4 down to a 4x4 grid (16 codes per map), K = 16.
fn tiny_model() -> VqVaeConfig {
    VqVaeConfig::new(16, vec![4, 8], 8).with_num_codes(16).with_num_res_blocks(1)
}

/// A small world: 32 px images, one depth row per scene, single-threaded.
fn world(scenes: usize) -> SynthConfig {
    SynthConfig {
        size: 32,
        scenes,
        val_fraction: 0.0,
        test_fraction: 0.0,
        tasks: vec![TaskKind::Depth],
        batch_rows: 4,
        threads: 1,
        ..SynthConfig::default()
    }
}

fn synth_rows(config: SynthConfig, seed: u64) -> RecordBatch {
    let batches: Vec<RecordBatch> = SynthStream::new(config, seed, Split::Train).unwrap().map(|b| b.unwrap()).collect();
    arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap()
}

/// A tokenizer checkpoint whose codebook was re-seeded from encoder outputs (two training steps), so that
/// different maps get different codes.
fn write_checkpoint(dir: &Path) {
    let cfg = TrainVqVaeConfig::new().with_steps(2).with_batch_size(8).with_learning_rate(1e-3);
    let mut trainer = VqVaeTrainer::new(&tiny_model(), &cfg, dir, &Device::flex()).unwrap();
    let mut source = ProceduralDepth::new(16, 4);
    for _ in 0..2 {
        trainer.step(&source.next_batch(8).unwrap()).unwrap();
    }
    trainer.checkpoint().unwrap();
}

/// The rows with `depth_scale` of row `zero` set to 0.
fn without_depth(batch: &RecordBatch, zero: usize) -> RecordBatch {
    let idx = batch.schema().index_of("depth_scale").unwrap();
    let scales = batch.column(idx).as_any().downcast_ref::<Float32Array>().unwrap();
    let changed: Float32Array =
        (0..scales.len()).map(|i| Some(if i == zero { 0.0 } else { scales.value(i) })).collect();
    let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
    columns[idx] = Arc::new(changed);
    RecordBatch::try_new(batch.schema(), columns).unwrap()
}

fn depth_png(batch: &RecordBatch, row: usize) -> Vec<u8> {
    let s = batch.column_by_name("depth").unwrap().as_any().downcast_ref::<StructArray>().unwrap();
    let bytes = s.column_by_name("bytes").unwrap().as_any().downcast_ref::<arrow::array::BinaryArray>().unwrap();
    bytes.value(row).to_vec()
}

#[test]
fn depth_encode_appends_the_codes_of_each_row_and_rejects_rows_without_depth() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("vqvae");
    write_checkpoint(&ckpt);
    let rows = without_depth(&synth_rows(world(5), 3), 1);
    let ids = strings(&rows, "sample_id");
    write_parquet(&dir.path().join("rows.parquet"), &rows);
    let out = dir.path().join("out");
    let yaml = format!(
        r#"
name: depth-encode-test
nodes:
  - id: replay
    kind: parquet-replay
    params: {{ paths: ["{data}"], batch_rows: 3, id_column: sample_id }}
  - id: encode
    kind: depth-encode
    params: {{ checkpoint: "{ckpt}", batch_size: 2 }}
    inputs:
      in: replay/out
  - id: sink
    kind: parquet-sink
    params: {{ path: "{out}/codes.parquet" }}
    inputs:
      in: encode/out
  - id: errors
    kind: parquet-sink
    params: {{ path: "{out}/errors.parquet" }}
    inputs:
      in: encode/errors
"#,
        data = dir.path().join("rows.parquet").display(),
        ckpt = ckpt.display(),
        out = out.display(),
    );
    let graph =
        Graph::from_yaml("depth-encode.yaml", &yaml, &perceptio_actors::registry()).unwrap_or_else(|e| panic!("{e}"));
    graph.run_blocking(RunOptions::default()).unwrap();

    let coded = read_all(&out.join("codes.parquet"));
    let kept: Vec<String> = ids.iter().enumerate().filter(|(i, _)| *i != 1).map(|(_, id)| id.clone()).collect();
    assert_eq!(strings(&coded, "sample_id"), kept, "every row with depth, in order");
    assert_eq!(coded.num_columns(), rows.num_columns() + 1, "the row's columns plus depth_codes");

    let (model, _) = load_checkpoint(&ckpt, &Device::flex()).unwrap();
    let codes = coded.column_by_name("depth_codes").unwrap().as_any().downcast_ref::<ListArray>().unwrap();
    let scales = coded.column_by_name("depth_scale").unwrap().as_any().downcast_ref::<Float32Array>().unwrap();
    let mut all = Vec::new();
    for row in 0..coded.num_rows() {
        let got: Vec<i32> =
            codes.value(row).as_any().downcast_ref::<Int32Array>().unwrap().values().iter().copied().collect();
        assert_eq!(got.len(), 16, "a 4x4 grid of codes");
        assert!(got.iter().all(|&c| (0..16).contains(&c)), "{got:?}");
        let target = depth_target_from_png(&depth_png(&coded, row), scales.value(row), 16).unwrap();
        let x = Tensor::<1>::from_data(target.as_slice(), &Device::flex()).reshape([1, 1, 16, 16]); // [1, 1, 16, 16]
        let want: Vec<i32> =
            model.encode(x).unwrap().try_into_vec_as::<i64>().unwrap().into_iter().map(|v| v as i32).collect();
        assert_eq!(got, want, "row {row}");
        all.extend(got);
    }
    all.sort_unstable();
    all.dedup();
    assert!(all.len() > 1, "the codes vary across positions and rows");

    let errors = read_all(&out.join("errors.parquet"));
    assert_eq!(strings(&errors, "id"), vec![ids[1].clone()]);
    let reason = &strings(&errors, "error")[0];
    assert!(reason.contains("depth_scale") && reason.contains("no depth"), "{reason}");
}

#[test]
fn depth_encode_without_a_checkpoint_fails_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    write_parquet(&dir.path().join("rows.parquet"), &synth_rows(world(1), 0));
    let yaml = format!(
        r#"
nodes:
  - id: replay
    kind: parquet-replay
    params: {{ paths: ["{data}"] }}
  - id: encode
    kind: depth-encode
    params: {{ checkpoint: "{missing}" }}
    inputs:
      in: replay/out
  - id: sink
    kind: parquet-sink
    params: {{ path: "{out}" }}
    inputs:
      in: encode/out
"#,
        data = dir.path().join("rows.parquet").display(),
        missing = dir.path().join("no-such-checkpoint").display(),
        out = dir.path().join("out.parquet").display(),
    );
    let graph = Graph::from_yaml("t.yaml", &yaml, &perceptio_actors::registry()).unwrap();
    let err = graph.run_blocking(RunOptions::default()).unwrap_err().to_string();
    assert!(err.contains("encode") && err.contains("no-such-checkpoint"), "{err}");
}

#[test]
fn vqvae_train_trains_through_a_graph_into_a_loadable_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("vqvae");
    // Compact JSON is a YAML flow mapping once every `:` is followed by a space (no strings in this config).
    let model = serde_json::to_string(&tiny_model()).unwrap().replace(':', ": ");
    let yaml = format!(
        r#"
name: vqvae-train-test
nodes:
  - id: world
    kind: synth
    params:
      seed: 2
      config:
        {{ size: 32, scenes: 12, val_fraction: 0.0, test_fraction: 0.0, tasks: [depth], batch_rows: 4, threads: 1 }}
  - id: train
    kind: vqvae-train
    params: {{ out: "{out}", model: {model}, steps: 3, batch_size: 2, val_every: 2, val_rows: 2, lr: 0.003 }}
    inputs:
      in: world/out
  - id: errors
    kind: parquet-sink
    params: {{ path: "{out}/errors.parquet" }}
    inputs:
      in: train/errors
"#,
        out = out.display(),
    );
    let graph =
        Graph::from_yaml("vqvae-train.yaml", &yaml, &perceptio_actors::registry()).unwrap_or_else(|e| panic!("{e}"));
    graph.run_blocking(RunOptions::default()).unwrap();

    let state: TrainState = serde_json::from_str(&std::fs::read_to_string(out.join(STATE_FILE)).unwrap()).unwrap();
    assert_eq!(state.step, 3);
    assert_eq!(state.maps_seen, 6, "3 steps of 2 maps; 2 rows validate, the last 4 are not needed");
    let metrics = state.metrics.expect("validated at the end");
    assert!(metrics.mse.is_finite() && metrics.mse > 0.0, "{metrics:?}");
    assert!((1..=16).contains(&metrics.codes_used), "{metrics:?}");
    for f in [OPTIMIZER_FILE, PREVIEW_FILE] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let (loaded, cfg) = load_checkpoint(&out, &Device::flex()).unwrap();
    assert_eq!(cfg.input_size, 16);
    let x = Tensor::<1>::from_data(ProceduralDepth::new(16, 0).sample().as_slice(), &Device::flex())
        .reshape([1, 1, 16, 16]); // [1, 1, 16, 16]
    assert_eq!(loaded.encode(x).unwrap().dims(), [1, 16]);
    assert_eq!(read_all(&out.join("errors.parquet")).num_rows(), 0);
}

#[test]
fn synth_depth_matches_the_dataset_rows_and_seeks() {
    let cfg = world(6);
    let rows = synth_rows(cfg.clone(), 9);
    let scales = rows.column_by_name("depth_scale").unwrap().as_any().downcast_ref::<Float32Array>().unwrap();
    let mut source = SynthDepth::new(cfg.clone(), 9, Split::Train, 16).unwrap();
    let maps = source.next_batch(6).unwrap();
    for (row, map) in maps.iter().enumerate() {
        let want = depth_target_from_png(&depth_png(&rows, row), scales.value(row), 16).unwrap();
        assert_eq!(map, &want, "scene {row}");
        assert!(map.iter().any(|&v| v > 0.99) && map.iter().any(|&v| v < -0.99), "normalised to [-1, 1]");
    }
    let mut seeking = SynthDepth::new(cfg, 9, Split::Train, 16).unwrap();
    seeking.skip(4).unwrap();
    assert_eq!(seeking.next_batch(2).unwrap(), maps[4..].to_vec());
    // Past the split's end the scenes wrap around.
    assert_eq!(seeking.next_batch(1).unwrap()[0], maps[0]);
}

#[test]
fn parquet_depth_holds_out_validation_maps_and_skips_rows_without_depth() {
    let dir = tempfile::tempdir().unwrap();
    let rows = without_depth(&synth_rows(world(6), 5), 2);
    // Every row twice in a row, as the samples of one scene share its depth map.
    let doubled: Vec<u32> = (0..rows.num_rows() as u32).flat_map(|i| [i, i]).collect();
    let rows = arrow::compute::take_record_batch(&rows, &arrow::array::UInt32Array::from(doubled)).unwrap();
    write_parquet(&dir.path().join("train-00000-of-00001.parquet"), &rows);
    let pattern = vec![dir.path().join("train-*.parquet").display().to_string()];
    let scales = rows.column_by_name("depth_scale").unwrap().as_any().downcast_ref::<Float32Array>().unwrap();
    let expect = |row: usize| depth_target_from_png(&depth_png(&rows, 2 * row), scales.value(2 * row), 16).unwrap();

    let mut source = ParquetDepth::open(&pattern, 16, 2).unwrap();
    let val = source.held_out().unwrap();
    assert_eq!(val, vec![expect(0), expect(1)]);
    // Scenes 3, 4, 5 train (scene 2 has no depth); then the next epoch starts again after the held-out maps.
    let maps = source.next_batch(4).unwrap();
    assert_eq!(maps, vec![expect(3), expect(4), expect(5), expect(3)]);
    assert_eq!(source.rejected(), 4, "scene 2's two rows, read in both epochs");
    assert!(ParquetDepth::open(&[dir.path().join("nothing-*.parquet").display().to_string()], 16, 2).is_err());
}
