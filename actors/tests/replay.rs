//! parquet-replay and parquet-sink through real graphs: determinism, resume, bad rows, and the HuggingFace
//! `datasets` layout read as it is.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BinaryBuilder, Int64Array, ListBuilder, RecordBatch, StringArray, StringBuilder, StructArray,
};
use arrow::datatypes::{DataType, Field, Fields, Schema};
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;
use perceptio_runtime::{Graph, RunOptions, RunSummary};

#[path = "support/parquet_io.rs"]
mod parquet_io;
use parquet_io::read_all;

/// A 2x2 RGB PNG, made with the png crate.
fn tiny_png(seed: u8) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, 2, 2);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header().unwrap();
        let data: Vec<u8> = (0..12).map(|i| seed.wrapping_mul(7).wrapping_add(i)).collect();
        w.write_image_data(&data).unwrap();
    }
    out
}

/// Writes `rows` rows in the layout HuggingFace `datasets` produces: `image` as struct {bytes, path}, a list of
/// strings, a string and an int column, and the `huggingface` schema metadata. Rows in `bad_images` get bytes
/// that are not an image; rows in `null_text` get a null `text`.
fn write_hf_parquet(path: &Path, rows: usize, row_group: usize, bad_images: &[usize], null_text: &[usize]) {
    let image_fields =
        Fields::from(vec![Field::new("bytes", DataType::Binary, true), Field::new("path", DataType::Utf8, true)]);
    let mut meta = std::collections::HashMap::new();
    meta.insert(
        "huggingface".to_string(),
        r#"{"info": {"features": {"id": {"dtype": "string", "_type": "Value"}, "image": {"_type": "Image"}}}}"#
            .to_string(),
    );
    let schema = Arc::new(Schema::new_with_metadata(
        vec![
            Field::new("id", DataType::Utf8, true),
            Field::new("image", DataType::Struct(image_fields.clone()), true),
            Field::new("tags", DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))), true),
            Field::new("text", DataType::Utf8, true),
            Field::new("n", DataType::Int64, true),
        ],
        meta,
    ));
    let props = WriterProperties::builder().set_max_row_group_row_count(Some(row_group)).build();
    let mut writer = ArrowWriter::try_new(File::create(path).unwrap(), schema.clone(), Some(props)).unwrap();
    let ids: Vec<String> = (0..rows).map(|i| format!("sample-{i:04}")).collect();
    let mut bytes = BinaryBuilder::new();
    let mut paths = StringBuilder::new();
    let mut tags = ListBuilder::new(StringBuilder::new());
    for i in 0..rows {
        if bad_images.contains(&i) {
            bytes.append_value(b"definitely not a png");
        } else {
            bytes.append_value(tiny_png(i as u8));
        }
        paths.append_value(format!("img_{i}.png"));
        for t in 0..(i % 3) {
            tags.values().append_value(format!("tag{t}"));
        }
        tags.append(true);
    }
    let image =
        StructArray::new(image_fields, vec![Arc::new(bytes.finish()) as ArrayRef, Arc::new(paths.finish())], None);
    let text: StringArray =
        (0..rows).map(|i| if null_text.contains(&i) { None } else { Some(format!("caption {i}")) }).collect();
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(ids)),
            Arc::new(image),
            Arc::new(tags.finish()),
            Arc::new(text),
            Arc::new(Int64Array::from((0..rows as i64).collect::<Vec<_>>())),
        ],
    )
    .unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}

fn ids(batch: &RecordBatch) -> Vec<String> {
    let col = batch.column_by_name("id").unwrap().as_any().downcast_ref::<StringArray>().unwrap();
    (0..col.len()).map(|i| col.value(i).to_string()).collect()
}

fn run_replay(dir: &Path, data: &str, replay_params: &str, out: &str) -> RunSummary {
    let yaml = format!(
        r#"
name: replay-test
nodes:
  - id: replay
    kind: parquet-replay
    params: {{ paths: ["{data}"], {replay_params} }}
  - id: sink
    kind: parquet-sink
    params: {{ path: "{out}", row_group_rows: 16 }}
    inputs:
      in: {{ from: replay/out, capacity: {{ rows: 8 }} }}
  - id: errors
    kind: parquet-sink
    params: {{ path: "{out}.errors.parquet" }}
    inputs:
      in: replay/errors
"#,
        data = dir.join(data).display(),
        out = dir.join("out").join(out).display(),
    );
    let graph =
        Graph::from_yaml("replay-test.yaml", &yaml, &perceptio_actors::registry()).unwrap_or_else(|e| panic!("{e}"));
    graph.run_blocking(RunOptions::default()).unwrap()
}

#[test]
fn same_seed_gives_the_same_order_and_a_different_seed_another() {
    let dir = tempfile::tempdir().unwrap();
    write_hf_parquet(&dir.path().join("a.parquet"), 100, 16, &[], &[]);
    write_hf_parquet(&dir.path().join("b.parquet"), 37, 10, &[], &[]);
    let params = "batch_rows: 5, shuffle: true, seed: 7";
    run_replay(dir.path(), "*.parquet", params, "one.parquet");
    run_replay(dir.path(), "*.parquet", params, "two.parquet");
    run_replay(dir.path(), "*.parquet", "batch_rows: 5, shuffle: true, seed: 8", "three.parquet");
    run_replay(dir.path(), "*.parquet", "batch_rows: 5", "plain.parquet");
    let one = ids(&read_all(&dir.path().join("out/one.parquet")));
    let two = ids(&read_all(&dir.path().join("out/two.parquet")));
    let three = ids(&read_all(&dir.path().join("out/three.parquet")));
    let plain = ids(&read_all(&dir.path().join("out/plain.parquet")));
    assert_eq!(one.len(), 137);
    assert_eq!(one, two, "same seed, same order");
    assert_ne!(one, three, "another seed, another order");
    assert_ne!(one, plain, "shuffled");
    let mut sorted = one.clone();
    sorted.sort();
    let mut plain_sorted = plain.clone();
    plain_sorted.sort();
    assert_eq!(sorted, plain_sorted, "a permutation of the same rows");
}

#[test]
fn resuming_from_position_k_replays_exactly_the_tail() {
    let dir = tempfile::tempdir().unwrap();
    write_hf_parquet(&dir.path().join("d.parquet"), 60, 8, &[], &[]);
    let base = "batch_rows: 4, shuffle: true, seed: 3, epochs: 2";
    let full = run_replay(dir.path(), "d.parquet", base, "full.parquet");
    assert_eq!(full.read, 120);
    let all = ids(&read_all(&dir.path().join("out/full.parquet")));
    assert_eq!(all.len(), 120);
    assert_ne!(all[..60], all[60..], "each epoch is reshuffled");
    for k in [0usize, 1, 7, 8, 59, 60, 61, 119] {
        let out = format!("tail-{k}.parquet");
        let summary = run_replay(dir.path(), "d.parquet", &format!("{base}, start: {k}"), &out);
        let tail = ids(&read_all(&dir.path().join("out").join(&out)));
        assert_eq!(tail, all[k..], "resume from {k}");
        assert_eq!(summary.read as usize, 120 - k);
    }
}

#[test]
fn corrupt_rows_go_to_the_error_output_and_every_good_row_is_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let bad_images = [3usize, 17, 18];
    let null_text = [5usize, 17];
    write_hf_parquet(&dir.path().join("c.parquet"), 40, 16, &bad_images, &null_text);
    let summary =
        run_replay(dir.path(), "c.parquet", "batch_rows: 6, require: [text], images: [image]", "good.parquet");
    let bad: Vec<usize> = vec![3, 5, 17, 18];
    assert_eq!(summary.read, 40);
    assert_eq!(summary.failed, 4);
    assert_eq!(summary.processed, 36);
    assert!(summary.balanced);
    let good = ids(&read_all(&dir.path().join("out/good.parquet")));
    let expected: Vec<String> = (0..40).filter(|i| !bad.contains(i)).map(|i| format!("sample-{i:04}")).collect();
    assert_eq!(good, expected);
    let errors = read_all(&dir.path().join("out/good.parquet.errors.parquet"));
    let error_ids = ids(&errors);
    assert_eq!(error_ids, vec!["sample-0003", "sample-0005", "sample-0017", "sample-0018"]);
    let reasons = errors.column_by_name("error").unwrap().as_any().downcast_ref::<StringArray>().unwrap();
    assert_eq!(reasons.value(0), "column `image`: bytes are neither PNG nor JPEG");
    assert_eq!(reasons.value(1), "column `text` is null");
    assert_eq!(reasons.value(2), "column `text` is null", "the first failing check is reported");
    let nodes = errors.column_by_name("node").unwrap().as_any().downcast_ref::<StringArray>().unwrap();
    assert_eq!(nodes.value(0), "replay");
}

#[test]
fn the_huggingface_datasets_layout_is_read_as_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("hf.parquet");
    write_hf_parquet(&src, 25, 10, &[], &[]);
    run_replay(dir.path(), "hf.parquet", "batch_rows: 7", "copy.parquet");
    let original = read_all(&src);
    let copy = read_all(&dir.path().join("out/copy.parquet"));
    assert_eq!(copy.schema().fields(), original.schema().fields(), "struct, list and string columns keep their types");
    assert_eq!(copy.columns(), original.columns(), "values unchanged");
    // Projection keeps only the named columns.
    run_replay(dir.path(), "hf.parquet", "columns: [id, tags]", "proj.parquet");
    let proj = read_all(&dir.path().join("out/proj.parquet"));
    let names: Vec<String> = proj.schema().fields().iter().map(|f| f.name().clone()).collect();
    assert_eq!(names, vec!["id", "tags"]);
}

#[test]
fn image_decode_turns_png_bytes_into_a_pixel_tensor_and_rejects_bad_images() {
    let dir = tempfile::tempdir().unwrap();
    write_hf_parquet(&dir.path().join("i.parquet"), 12, 12, &[4], &[]);
    let yaml = format!(
        r#"
nodes:
  - id: replay
    kind: parquet-replay
    params: {{ paths: ["{data}"], batch_rows: 5 }}
  - id: decode
    kind: image-decode
    params: {{ size: 4 }}
    inputs: {{ in: replay/out }}
  - id: sink
    kind: parquet-sink
    params: {{ path: "{out}" }}
    inputs: {{ in: decode/out }}
"#,
        data = dir.path().join("i.parquet").display(),
        out = dir.path().join("px.parquet").display(),
    );
    let graph = Graph::from_yaml("decode.yaml", &yaml, &perceptio_actors::registry()).unwrap_or_else(|e| panic!("{e}"));
    let summary = graph.run_blocking(RunOptions::default()).unwrap();
    assert_eq!((summary.read, summary.processed, summary.failed), (12, 11, 1));
    let out = read_all(&dir.path().join("px.parquet"));
    let field = out.schema().field_with_name("pixels").unwrap().clone();
    assert_eq!(field.metadata().get("ARROW:extension:name").map(String::as_str), Some("arrow.fixed_shape_tensor"));
    assert_eq!(out.num_rows(), 11);
    // Row 0's image: 2x2 RGB bytes (0..12) upsampled to 4x4; the top-left output pixel equals the top-left input.
    let frame = perceptio_runtime::frame::arrow_io::frame_from_arrow(&out, &burn::tensor::Device::flex()).unwrap();
    let px: burn::tensor::Tensor<4> = frame.tensor("pixels").unwrap();
    assert_eq!(px.dims(), [11, 3, 4, 4]);
    let v = px.to_data().try_to_vec::<f32>().unwrap();
    assert!((v[0] - 0.0).abs() < 1e-6 && (v[16] - 1.0 / 255.0).abs() < 1e-6, "R and G of pixel (0,0) of sample 0");
}

#[test]
fn the_synth_node_streams_the_same_rows_the_synth_command_writes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = perceptio_synth::SynthConfig { scenes: 20, ..Default::default() };
    perceptio_synth::write_dataset(dir.path(), &cfg, 5, |_| {}).unwrap();
    let written = read_all(&perceptio_synth::write::split_path(dir.path(), perceptio_synth::Split::Train));
    let yaml = format!(
        "nodes:\n  - id: world\n    kind: synth\n    params: {{ seed: 5, split: train, config: {{ scenes: 20 }} }}\n  - id: sink\n    kind: parquet-sink\n    params: {{ path: \"{}\" }}\n    inputs: {{ in: world/out }}\n",
        dir.path().join("streamed.parquet").display()
    );
    let graph = Graph::from_yaml("synth.yaml", &yaml, &perceptio_actors::registry()).unwrap_or_else(|e| panic!("{e}"));
    let summary = graph.run_blocking(RunOptions::default()).unwrap();
    let streamed = read_all(&dir.path().join("streamed.parquet"));
    assert_eq!(summary.read as usize, written.num_rows());
    assert!(written.num_rows() > 0);
    assert_eq!(streamed.columns(), written.columns(), "same rows, same order, same bytes");
}
