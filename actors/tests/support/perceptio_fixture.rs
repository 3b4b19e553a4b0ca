//! Shared by the training tests and the training-throughput benchmark: a small synthetic world whose rows carry
//! `depth_codes` from a random tiny VQ-VAE, and a tiny Perceptio model directory initialised from it.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Int32Builder, ListBuilder, RecordBatch};
use arrow::datatypes::{Field, Schema};
use burn::tensor::{Device, Tensor};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use perceptio_actors::image_decode::image_bytes;
use perceptio_actors::perceptio::init::{dataset_texts, init_tiny_model, write_untrained_vqvae};
use perceptio_models::depth::target::depth_target_from_png;
use perceptio_synth::SynthConfig;

pub fn read_parquet(path: &Path) -> Vec<RecordBatch> {
    let file = File::open(path).unwrap();
    ParquetRecordBatchReaderBuilder::try_new(file).unwrap().build().unwrap().map(|b| b.unwrap()).collect()
}

/// A small synthetic world with `depth_codes` from a random tiny VQ-VAE, a model directory initialised from it,
/// all under `dir`. Returns (codes parquet, model dir).
pub fn fixture(dir: &Path, scenes: usize) -> (PathBuf, PathBuf) {
    let cfg = SynthConfig { scenes, val_fraction: 0.0, test_fraction: 0.0, ..SynthConfig::default() };
    perceptio_synth::write::write_dataset(&dir.join("world"), &cfg, 7, |_| {}).unwrap();
    let train = dir.join("world/data/train-00000-of-00001.parquet");
    // depth tokenizer: random weights are enough for equality tests
    let device = Device::flex();
    let vq_dir = dir.join("vqvae");
    let vq = write_untrained_vqvae(&vq_dir, 3).unwrap();
    // cache the codes as the `depth-encode` node would
    let batches = read_parquet(&train);
    let codes_path = dir.join("codes.parquet");
    let mut writer: Option<ArrowWriter<File>> = None;
    for batch in batches {
        let mut codes = ListBuilder::new(Int32Builder::new());
        let depth = batch.column_by_name("depth").unwrap();
        let scale = batch.column_by_name("depth_scale").unwrap();
        let scale = scale.as_any().downcast_ref::<arrow::array::Float32Array>().unwrap();
        for r in 0..batch.num_rows() {
            let target = depth_target_from_png(image_bytes(depth, r).unwrap(), scale.value(r), 80).unwrap();
            let x = Tensor::<1>::from_data(target.as_slice(), &device).reshape([1, 1, 80, 80]);
            let ids: Vec<i64> = vq.encode(x).unwrap().try_into_vec_as::<i64>().unwrap();
            codes.append_value(ids.into_iter().map(|v| Some(v as i32)));
        }
        let codes: ArrayRef = Arc::new(codes.finish());
        let mut fields: Vec<Field> = batch.schema().fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.push(Field::new("depth_codes", codes.data_type().clone(), true));
        let mut cols = batch.columns().to_vec();
        cols.push(codes);
        let out = RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).unwrap();
        let w = writer.get_or_insert_with(|| {
            ArrowWriter::try_new(File::create(&codes_path).unwrap(), out.schema(), None).unwrap()
        });
        w.write(&out).unwrap();
    }
    writer.unwrap().close().unwrap();
    let texts = dataset_texts(&[codes_path.clone()]).unwrap();
    let model = dir.join("model");
    init_tiny_model(&texts, &vq_dir, &model, 11).unwrap();
    (codes_path, model)
}
