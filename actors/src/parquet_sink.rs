//! `parquet-sink`: writes every frame it receives to one parquet file (tensor attachments become
//! `arrow.fixed_shape_tensor` columns). Row groups are written as they fill; `flush` and checkpoint signals close
//! the current row group. The file is written under a temporary name and renamed into place only after it is
//! complete and synced, so a half-written file never looks complete; an aborted run leaves no file behind.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use perceptio_runtime::frame::arrow_io::frame_to_arrow;
use perceptio_runtime::schemas::PortSchema;
use perceptio_runtime::{
    BuildContext, Frame, Node, NodeError, NodeImpl, NodeKind, NodePorts, Outputs, ParamError, PortContext, PortDecl,
    Signal, parse_params,
};
use schemars::JsonSchema;
use serde::Deserialize;

/// Params of `parquet-sink`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SinkParams {
    /// The parquet file to write (its folder is created).
    pub path: String,
    /// Rows per row group.
    #[serde(default = "default_row_group_rows")]
    pub row_group_rows: usize,
    /// `zstd` (default), `snappy` or `none`.
    #[serde(default = "default_compression")]
    pub compression: String,
    /// Replace an existing file at `path` (default true). With false, an existing file is an error.
    #[serde(default = "default_true")]
    pub overwrite: bool,
    /// Write only these columns, in this order (default: every column). A listed column that a frame lacks is an
    /// error naming it and the columns the frame has.
    #[serde(default)]
    pub columns: Option<Vec<String>>,
}

fn default_row_group_rows() -> usize {
    1024
}

fn default_compression() -> String {
    "zstd".into()
}

fn default_true() -> bool {
    true
}

fn compression(name: &str) -> Result<Compression, ParamError> {
    match name {
        "zstd" => Ok(Compression::ZSTD(ZstdLevel::default())),
        "snappy" => Ok(Compression::SNAPPY),
        "none" => Ok(Compression::UNCOMPRESSED),
        other => Err(ParamError::new("compression", format!("unknown compression `{other}` (zstd, snappy, none)"))),
    }
}

fn checked(params: &serde_json::Value) -> Result<SinkParams, ParamError> {
    let p: SinkParams = parse_params(params)?;
    compression(&p.compression)?;
    if p.row_group_rows == 0 {
        return Err(ParamError::new("row_group_rows", "must be at least 1"));
    }
    if let Some(columns) = &p.columns {
        if columns.is_empty() {
            return Err(ParamError::new("columns", "lists no column (leave it out to write every column)"));
        }
        if let Some(dup) = columns.iter().enumerate().find_map(|(i, c)| columns[..i].contains(c).then_some(c)) {
            return Err(ParamError::new("columns", format!("`{dup}` is listed twice")));
        }
    }
    if !p.overwrite && Path::new(&p.path).exists() {
        return Err(ParamError::new("path", format!("`{}` exists and overwrite is false", p.path)));
    }
    Ok(p)
}

pub struct ParquetSinkKind;

impl NodeKind for ParquetSinkKind {
    fn name(&self) -> &'static str {
        "parquet-sink"
    }

    fn about(&self) -> &'static str {
        "write frames to a parquet file (row groups as they fill, atomic finalisation)"
    }

    fn params_schema(&self) -> schemars::schema::RootSchema {
        schemars::schema_for!(SinkParams)
    }

    fn ports(&self, ctx: &PortContext<'_>) -> Result<NodePorts, ParamError> {
        checked(ctx.params)?;
        Ok(NodePorts { inputs: vec![PortDecl::required("in", PortSchema::any())], outputs: vec![] })
    }

    fn build(&self, ctx: &BuildContext<'_>) -> Result<NodeImpl, ParamError> {
        let params = checked(ctx.params)?;
        Ok(NodeImpl::Node(Box::new(ParquetSink::new(params))))
    }
}

/// The running sink.
pub struct ParquetSink {
    params: SinkParams,
    final_path: PathBuf,
    temp_path: PathBuf,
    writer: Option<ArrowWriter<File>>,
    schema: Option<SchemaRef>,
    finalised: bool,
}

impl ParquetSink {
    pub fn new(params: SinkParams) -> Self {
        let final_path = PathBuf::from(&params.path);
        let name = final_path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "out".into());
        let temp_path = final_path.with_file_name(format!(".{name}.partial-{}", std::process::id()));
        Self { params, final_path, temp_path, writer: None, schema: None, finalised: false }
    }

    fn open(&mut self, schema: SchemaRef) -> Result<(), NodeError> {
        if let Some(dir) = self.final_path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| NodeError::io(format!("creating {}", dir.display()), e))?;
        }
        let file = File::create(&self.temp_path)
            .map_err(|e| NodeError::io(format!("creating {}", self.temp_path.display()), e))?;
        let props = WriterProperties::builder()
            .set_compression(compression(&self.params.compression).map_err(|e| NodeError::msg(e.to_string()))?)
            .set_max_row_group_row_count(Some(self.params.row_group_rows))
            .build();
        self.writer = Some(ArrowWriter::try_new(file, schema.clone(), Some(props))?);
        self.schema = Some(schema);
        Ok(())
    }

    /// The configured columns of `batch`, in the configured order.
    fn select(&self, batch: RecordBatch) -> Result<RecordBatch, NodeError> {
        let Some(columns) = &self.params.columns else { return Ok(batch) };
        let schema = batch.schema();
        let indices = columns
            .iter()
            .map(|name| {
                schema.index_of(name).map_err(|_| {
                    let have: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                    NodeError::msg(format!(
                        "param columns: the frame has no column `{name}` (it has {})",
                        have.join(", ")
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(batch.project(&indices)?)
    }

    fn finalise(&mut self) -> Result<(), NodeError> {
        if self.writer.is_none() {
            // No rows arrived: still produce a (valid, empty) file so downstream steps find one.
            self.open(Arc::new(Schema::empty()))?;
        }
        let writer = self.writer.take().expect("opened above");
        let file = writer.into_inner()?;
        file.sync_all().map_err(|e| NodeError::io(format!("syncing {}", self.temp_path.display()), e))?;
        std::fs::rename(&self.temp_path, &self.final_path).map_err(|e| {
            NodeError::io(format!("renaming {} to {}", self.temp_path.display(), self.final_path.display()), e)
        })?;
        self.finalised = true;
        Ok(())
    }
}

impl Node for ParquetSink {
    fn process(&mut self, _port: &str, frame: Frame, _out: &mut Outputs) -> Result<(), NodeError> {
        let batch = self.select(frame_to_arrow(&frame)?)?;
        match &self.schema {
            None => self.open(batch.schema())?,
            Some(s) if s.fields() != batch.schema().fields() => {
                let want: Vec<String> = s.fields().iter().map(|f| format!("{}: {}", f.name(), f.data_type())).collect();
                let got: Vec<String> =
                    batch.schema().fields().iter().map(|f| format!("{}: {}", f.name(), f.data_type())).collect();
                return Err(NodeError::msg(format!(
                    "frame columns changed mid-stream: expected [{}], got [{}]",
                    want.join(", "),
                    got.join(", ")
                )));
            }
            Some(_) => {}
        }
        let writer = self.writer.as_mut().expect("opened above");
        writer.write(&batch)?;
        Ok(())
    }

    fn on_signal(&mut self, signal: &Signal, _out: &mut Outputs) -> Result<(), NodeError> {
        if let (Signal::Flush | Signal::Checkpoint { .. }, Some(writer)) = (signal, self.writer.as_mut()) {
            writer.flush()?;
        }
        Ok(())
    }

    fn finish(&mut self, _out: &mut Outputs) -> Result<(), NodeError> {
        self.finalise()
    }
}

impl Drop for ParquetSink {
    fn drop(&mut self) {
        if !self.finalised {
            self.writer = None;
            let _ = std::fs::remove_file(&self.temp_path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ArrayRef, Int32Array};

    fn sink_at(path: &Path) -> ParquetSink {
        ParquetSink::new(SinkParams {
            path: path.display().to_string(),
            row_group_rows: 2,
            compression: "zstd".into(),
            overwrite: true,
            columns: None,
        })
    }

    fn frame(n: i32) -> Frame {
        let col: ArrayRef = Arc::new(Int32Array::from((0..n).collect::<Vec<_>>()));
        Frame::new(RecordBatch::try_from_iter([("x", col)]).unwrap())
    }

    fn outputs() -> Outputs {
        Outputs::detached("sink")
    }

    #[test]
    fn an_unfinished_sink_leaves_no_file_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.parquet");
        let mut sink = sink_at(&path);
        let mut out = outputs();
        sink.process("in", frame(5), &mut out).unwrap();
        sink.on_signal(&Signal::Flush, &mut out).unwrap();
        assert!(!path.exists(), "nothing at the final path before the end");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "only the temporary file");
        drop(sink); // the run was aborted
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "the partial file is removed");
    }

    #[test]
    fn a_finished_sink_renames_a_complete_file_into_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.parquet");
        let mut sink = sink_at(&path);
        let mut out = outputs();
        sink.process("in", frame(5), &mut out).unwrap();
        sink.process("in", frame(3), &mut out).unwrap();
        sink.finish(&mut out).unwrap();
        let reader =
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(File::open(&path).unwrap()).unwrap();
        assert_eq!(reader.metadata().file_metadata().num_rows(), 8);
        assert_eq!(reader.metadata().num_row_groups(), 4, "row groups of 2 rows were written as they filled");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_schema_change_mid_stream_is_an_error_naming_the_columns() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = sink_at(&dir.path().join("out.parquet"));
        let mut out = outputs();
        sink.process("in", frame(2), &mut out).unwrap();
        let col: ArrayRef = Arc::new(Int32Array::from(vec![1]));
        let other = Frame::new(RecordBatch::try_from_iter([("y", col)]).unwrap());
        let err = sink.process("in", other, &mut out).unwrap_err().to_string();
        assert_eq!(err, "frame columns changed mid-stream: expected [x: Int32], got [y: Int32]");
    }

    #[test]
    fn listed_columns_are_written_in_their_order_and_a_missing_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.parquet");
        let mut sink = sink_at(&path);
        sink.params.columns = Some(vec!["z".into(), "x".into()]);
        let mut out = outputs();
        let cols: Vec<(&str, ArrayRef)> = ["x", "y", "z"]
            .iter()
            .enumerate()
            .map(|(k, &name)| (name, Arc::new(Int32Array::from(vec![k as i32; 2])) as ArrayRef))
            .collect();
        sink.process("in", Frame::new(RecordBatch::try_from_iter(cols).unwrap()), &mut out).unwrap();
        let err = sink.process("in", frame(1), &mut out).unwrap_err().to_string();
        assert_eq!(err, "param columns: the frame has no column `z` (it has x)");
        sink.finish(&mut out).unwrap();
        let batches: Vec<RecordBatch> =
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(File::open(&path).unwrap())
                .unwrap()
                .build()
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
        let names: Vec<String> = batches[0].schema().fields().iter().map(|f| f.name().clone()).collect();
        assert_eq!(names, ["z", "x"]);
        let z = batches[0].column(0).as_any().downcast_ref::<Int32Array>().unwrap();
        assert_eq!(z.values(), &[2, 2]);
    }

    #[test]
    fn empty_or_repeated_column_lists_are_refused() {
        let params =
            |cols: serde_json::Value| serde_json::json!({ "path": "/tmp/never-written.parquet", "columns": cols });
        let err = checked(&params(serde_json::json!([]))).unwrap_err().to_string();
        assert!(err.contains("lists no column"), "{err}");
        let err = checked(&params(serde_json::json!(["a", "b", "a"]))).unwrap_err().to_string();
        assert!(err.contains("`a` is listed twice"), "{err}");
    }
}
