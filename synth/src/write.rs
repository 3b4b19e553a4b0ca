//! `write_dataset`: the train/validation/test parquet files in the HuggingFace `datasets` layout
//! (`data/{split}-00000-of-00001.parquet`), a dataset card (README.md with the split config) and the generator
//! config (`synth_config.json`). Every file is written to a temporary name and renamed into place.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;
use perceptio_schemas::dataset as ds;

use crate::config::SynthConfig;
use crate::error::SynthError;
use crate::pipeline::Split;
use crate::stream::SynthStream;

/// Progress reported after every batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    pub split: Split,
    /// Scenes rendered so far, over all splits.
    pub scenes_done: u64,
    pub scenes_total: u64,
    /// Rows written so far, over all splits.
    pub rows_written: u64,
}

/// What was written.
#[derive(Clone, Debug, PartialEq)]
pub struct DatasetSummary {
    /// (split, file, rows, scenes) per split.
    pub files: Vec<(Split, PathBuf, u64, u64)>,
    pub card: PathBuf,
}

/// The parquet file of `split` under `out_dir`.
pub fn split_path(out_dir: &Path, split: Split) -> PathBuf {
    out_dir.join("data").join(format!("{}-00000-of-00001.parquet", split.name()))
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SynthError + '_ {
    move |source| SynthError::Io { path: path.to_path_buf(), source }
}

fn tmp_of(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp"))
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), SynthError> {
    let tmp = tmp_of(path);
    fs::write(&tmp, bytes).map_err(io(&tmp))?;
    fs::rename(&tmp, path).map_err(io(path))
}

fn writer_properties() -> WriterProperties {
    // PNG bytes do not compress further; text columns do.
    let mut b = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).expect("3 is a valid zstd level")))
        .set_max_row_group_row_count(Some(512))
        .set_created_by("perceptio-synth".to_string());
    // the features JSON also goes to the file's own key-value metadata, where `datasets` looks for it
    let kv: Vec<KeyValue> =
        ds::synth_schema().metadata().iter().map(|(k, v)| KeyValue::new(k.clone(), v.clone())).collect();
    b = b.set_key_value_metadata(Some(kv));
    for col in [ds::IMAGE, ds::MASK, ds::DEPTH] {
        b = b.set_column_compression(
            ColumnPath::from(vec![col.to_string(), ds::IMAGE_BYTES.to_string()]),
            Compression::UNCOMPRESSED,
        );
        b = b
            .set_column_dictionary_enabled(ColumnPath::from(vec![col.to_string(), ds::IMAGE_BYTES.to_string()]), false);
    }
    b.build()
}

fn card(cfg: &SynthConfig, seed: u64, counts: &[(Split, PathBuf, u64, u64)]) -> String {
    let mut s = String::from("---\nconfigs:\n- config_name: default\n  data_files:\n");
    for (split, _, _, _) in counts {
        s += &format!("  - split: {}\n    path: data/{}-*.parquet\n", split.name(), split.name());
    }
    s += "---\n\n# perceptio synthetic spatial world\n\n";
    s += &format!(
        "Procedurally rendered scenes with exact depth and instance masks (seed {seed}, {} scenes, {}x{} pixels).\n\
         Columns are documented in `schemas/src/dataset.rs` of perceptio; the generator config is in \
         `synth_config.json`.\n\n| split | rows | scenes |\n|---|---|---|\n",
        cfg.scenes, cfg.size, cfg.size
    );
    for (split, _, rows, scenes) in counts {
        s += &format!("| {} | {rows} | {scenes} |\n", split.name());
    }
    s
}

/// Write the dataset of world `(cfg, seed)` under `out_dir`; `progress` is called after every batch.
pub fn write_dataset(
    out_dir: &Path,
    cfg: &SynthConfig,
    seed: u64,
    mut progress: impl FnMut(Progress),
) -> Result<DatasetSummary, SynthError> {
    cfg.validate()?;
    let data = out_dir.join("data");
    fs::create_dir_all(&data).map_err(io(&data))?;
    let mut files = Vec::new();
    let mut scenes_before = 0u64;
    let mut rows_written = 0u64;
    for split in Split::ALL {
        let path = split_path(out_dir, split);
        let tmp = tmp_of(&path);
        let file = fs::File::create(&tmp).map_err(io(&tmp))?;
        let perr = |source| SynthError::Parquet { path: path.clone(), source };
        let mut writer =
            ArrowWriter::try_new(file, Arc::new(ds::synth_schema()), Some(writer_properties())).map_err(perr)?;
        let mut stream = SynthStream::new(cfg.clone(), seed, split)?;
        let mut rows = 0u64;
        while let Some(batch) = stream.next() {
            let batch = batch?;
            writer.write(&batch).map_err(perr)?;
            rows += batch.num_rows() as u64;
            rows_written += batch.num_rows() as u64;
            progress(Progress {
                split,
                scenes_done: scenes_before + stream.scenes_done(),
                scenes_total: cfg.scenes as u64,
                rows_written,
            });
        }
        writer.close().map_err(perr)?;
        fs::rename(&tmp, &path).map_err(io(&path))?;
        scenes_before += stream.scenes_total();
        files.push((split, path, rows, stream.scenes_total()));
    }
    let card_path = out_dir.join("README.md");
    write_atomic(&card_path, card(cfg, seed, &files).as_bytes())?;
    let cfg_json = serde_json::json!({ "seed": seed, "config": cfg });
    let cfg_path = out_dir.join("synth_config.json");
    let text = serde_json::to_string_pretty(&cfg_json)
        .map_err(|e| SynthError::Invalid { what: "synth_config.json".into(), message: e.to_string() })?;
    write_atomic(&cfg_path, text.as_bytes())?;
    Ok(DatasetSummary { files, card: card_path })
}
