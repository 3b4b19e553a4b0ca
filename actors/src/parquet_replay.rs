//! `parquet-replay`: streams rows of parquet files (files or globs) as frames: column projection, batch size,
//! epochs, a seeded deterministic shuffle (row-group order, then rows within each row group), and a start
//! position to resume from. Reads the HuggingFace `datasets` layout as it is (struct image columns, lists,
//! strings). Rows that fail the configured checks, or whose row group cannot be decoded, go to the `errors`
//! port with their id; every other row is delivered.
//!
//! Memory: one row group at a time plus the bounded edges, whatever the dataset size.

use std::collections::BTreeSet;
use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BinaryArray, LargeBinaryArray, RecordBatch, StructArray, UInt32Array};
use arrow::compute::{concat_batches, take_record_batch};
use arrow::datatypes::{DataType, SchemaRef};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use perceptio_runtime::node::error_port_schema;
use perceptio_runtime::schemas::PortSchema;
use perceptio_runtime::{
    BuildContext, ERROR_PORT, Frame, NodeError, NodeImpl, NodeKind, NodePorts, Outputs, ParamError, PortContext,
    PortDecl, Source, SourceState, parse_params,
};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use schemars::JsonSchema;
use serde::Deserialize;

/// Params of `parquet-replay`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayParams {
    /// Files or glob patterns (`data/train-*.parquet`), read in sorted order.
    pub paths: Vec<String>,
    /// Columns to read (default: all).
    #[serde(default)]
    pub columns: Option<Vec<String>>,
    /// Rows per frame.
    #[serde(default = "default_batch_rows")]
    pub batch_rows: usize,
    /// Shuffle row groups and the rows within each, deterministically from `seed` (reshuffled every epoch).
    #[serde(default)]
    pub shuffle: bool,
    #[serde(default)]
    pub seed: u64,
    /// Passes over the data.
    #[serde(default = "default_epochs")]
    pub epochs: usize,
    /// Rows of the stream to skip (resume position; counts across epochs).
    #[serde(default)]
    pub start: u64,
    /// Column holding row ids for error records (default: `id`, else `sample_id`, else `file#row`).
    #[serde(default)]
    pub id_column: Option<String>,
    /// Columns that must not be null; a row with a null there is rejected.
    #[serde(default)]
    pub require: Vec<String>,
    /// Image columns (HF `{bytes, path}` structs or binary) whose bytes must be a decodable PNG or JPEG header.
    #[serde(default)]
    pub images: Vec<String>,
}

fn default_batch_rows() -> usize {
    64
}

fn default_epochs() -> usize {
    1
}

pub struct ParquetReplayKind;

/// A row group of one file, and its row count.
#[derive(Debug, Clone)]
struct Unit {
    file: usize,
    row_group: usize,
    rows: usize,
    /// Stream index of the unit's first row within an epoch (unshuffled order).
    first_row: u64,
}

struct Plan {
    params: ReplayParams,
    files: Vec<PathBuf>,
    units: Vec<Unit>,
    schema: SchemaRef,
    total_rows: u64,
}

fn expand(paths: &[String]) -> Result<Vec<PathBuf>, ParamError> {
    let mut files = BTreeSet::new();
    for (i, pattern) in paths.iter().enumerate() {
        let matches = glob::glob(pattern)
            .map_err(|e| ParamError::new(format!("paths[{i}]"), format!("bad glob `{pattern}`: {e}")))?;
        let mut n = 0;
        for m in matches {
            let p = m.map_err(|e| ParamError::new(format!("paths[{i}]"), e.to_string()))?;
            if p.is_file() {
                files.insert(p);
                n += 1;
            }
        }
        if n == 0 {
            return Err(ParamError::new(format!("paths[{i}]"), format!("no file matches `{pattern}`")));
        }
    }
    Ok(files.into_iter().collect())
}

fn plan(params: &serde_json::Value) -> Result<Plan, ParamError> {
    let params: ReplayParams = parse_params(params)?;
    if params.batch_rows == 0 {
        return Err(ParamError::new("batch_rows", "must be at least 1"));
    }
    if params.paths.is_empty() {
        return Err(ParamError::new("paths", "name at least one file or glob"));
    }
    let files = expand(&params.paths)?;
    let mut units = Vec::new();
    let mut schema: Option<SchemaRef> = None;
    let mut first_row = 0u64;
    for (fi, path) in files.iter().enumerate() {
        let file = File::open(path).map_err(|e| ParamError::new("paths", format!("{}: {e}", path.display())))?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file)
            .map_err(|e| ParamError::new("paths", format!("{}: not a readable parquet file: {e}", path.display())))?;
        let projected = project_schema(builder.schema(), params.columns.as_deref())
            .map_err(|m| ParamError::new("columns", format!("{}: {m}", path.display())))?;
        match &schema {
            None => schema = Some(projected),
            Some(s) if s.fields() != projected.fields() => {
                return Err(ParamError::new(
                    "paths",
                    format!("{}: its columns differ from {}'s", path.display(), files[0].display()),
                ));
            }
            Some(_) => {}
        }
        for (rg, meta) in builder.metadata().row_groups().iter().enumerate() {
            let rows = meta.num_rows() as usize;
            units.push(Unit { file: fi, row_group: rg, rows, first_row });
            first_row += rows as u64;
        }
    }
    let schema = schema.expect("at least one file");
    for (field, cols) in [("require", &params.require), ("images", &params.images)] {
        for c in cols {
            if schema.field_with_name(c).is_err() {
                return Err(ParamError::new(field, format!("column `{c}` is not in the data")));
            }
        }
    }
    if let Some(id) = &params.id_column {
        if schema.field_with_name(id).is_err() {
            return Err(ParamError::new("id_column", format!("column `{id}` is not in the data")));
        }
    }
    Ok(Plan { total_rows: first_row, params, files, units, schema })
}

fn project_schema(schema: &SchemaRef, columns: Option<&[String]>) -> Result<SchemaRef, String> {
    match columns {
        None => Ok(schema.clone()),
        Some(cols) => {
            let mut idx = Vec::new();
            for c in cols {
                let i = schema.index_of(c).map_err(|_| format!("column `{c}` is not in the file"))?;
                idx.push(i);
            }
            idx.sort_unstable();
            Ok(Arc::new(schema.project(&idx).map_err(|e| e.to_string())?))
        }
    }
}

impl NodeKind for ParquetReplayKind {
    fn name(&self) -> &'static str {
        "parquet-replay"
    }

    fn about(&self) -> &'static str {
        "stream rows of parquet files (globs, projection, shuffle, epochs, resume); bad rows to `errors`"
    }

    fn params_schema(&self) -> schemars::schema::RootSchema {
        schemars::schema_for!(ReplayParams)
    }

    fn ports(&self, ctx: &PortContext<'_>) -> Result<NodePorts, ParamError> {
        let plan = plan(ctx.params)?;
        Ok(NodePorts {
            inputs: vec![],
            outputs: vec![
                PortDecl::required("out", PortSchema::from_arrow(&plan.schema)),
                PortDecl::required(ERROR_PORT, error_port_schema()),
            ],
        })
    }

    fn build(&self, ctx: &BuildContext<'_>) -> Result<NodeImpl, ParamError> {
        Ok(NodeImpl::Source(Box::new(ParquetReplay::new(plan(ctx.params)?))))
    }
}

struct Pending {
    unit: Unit,
    batch: RecordBatch,
    rows: Vec<u32>,
    offset: usize,
}

/// The running replay source.
pub struct ParquetReplay {
    plan: Plan,
    /// Next unit to read: (epoch, index into that epoch's unit order).
    epoch: usize,
    cursor: usize,
    order: Vec<usize>,
    /// Rows of the stream already passed (emitted, rejected or skipped).
    position: u64,
    /// The unit in hand: its rows (in epoch order), each row's index within the row group, and how many
    /// rows of it have been passed.
    pending: Option<Pending>,
    id_column: Option<String>,
    announced: bool,
}

impl ParquetReplay {
    fn new(plan: Plan) -> Self {
        let id_column = plan.params.id_column.clone().or_else(|| {
            ["id", "sample_id"].iter().find(|c| plan.schema.field_with_name(c).is_ok()).map(|c| c.to_string())
        });
        let mut me = Self {
            order: Vec::new(),
            plan,
            epoch: 0,
            cursor: 0,
            position: 0,
            pending: None,
            id_column,
            announced: false,
        };
        me.order = me.epoch_order(0);
        me
    }

    fn epoch_seed(&self, epoch: usize) -> u64 {
        self.plan.params.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }

    fn epoch_order(&self, epoch: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.plan.units.len()).collect();
        if self.plan.params.shuffle {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(self.epoch_seed(epoch));
            order.shuffle(&mut rng);
        }
        order
    }

    /// Reads one row group (projected), in the epoch's row order.
    fn read_unit(&self, unit: &Unit, unit_seed: u64) -> Result<(RecordBatch, Vec<u32>), String> {
        let path = &self.plan.files[unit.file];
        let file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| e.to_string())?;
        let mask = match &self.plan.params.columns {
            None => ProjectionMask::all(),
            Some(cols) => {
                let full = builder.schema();
                let idx: Vec<usize> = cols.iter().filter_map(|c| full.index_of(c).ok()).collect();
                ProjectionMask::roots(builder.parquet_schema(), idx)
            }
        };
        let reader = builder
            .with_row_groups(vec![unit.row_group])
            .with_projection(mask)
            .with_batch_size(unit.rows.max(1))
            .build()
            .map_err(|e| e.to_string())?;
        let batches: Vec<RecordBatch> = reader.collect::<Result<_, _>>().map_err(|e| e.to_string())?;
        let batch = concat_batches(&self.plan.schema, &batches).map_err(|e| e.to_string())?;
        if batch.num_rows() != unit.rows {
            return Err(format!("row group has {} rows, its metadata says {}", batch.num_rows(), unit.rows));
        }
        let mut rows: Vec<u32> = (0..unit.rows as u32).collect();
        if !self.plan.params.shuffle {
            return Ok((batch, rows));
        }
        rows.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(unit_seed));
        let shuffled = take_record_batch(&batch, &UInt32Array::from(rows.clone())).map_err(|e| e.to_string())?;
        Ok((shuffled, rows))
    }

    /// The id of `row` of a chunk: the id column's value, else `file#row` (row index within the file).
    fn row_id(&self, chunk: &RecordBatch, row: usize, unit: &Unit, row_in_group: u32) -> String {
        if let Some(col) = self.id_column.as_ref().and_then(|c| chunk.column_by_name(c)) {
            if let Ok(id) = arrow::util::display::array_value_to_string(col, row) {
                return id;
            }
        }
        format!("{}#{}", self.plan.files[unit.file].display(), unit.first_row + row_in_group as u64)
    }

    /// Splits a chunk into good rows (returned) and rejected rows (sent to `errors` with their ids).
    fn check_rows(
        &self,
        chunk: RecordBatch,
        unit: &Unit,
        rows: &[u32],
        out: &mut Outputs,
    ) -> Result<RecordBatch, NodeError> {
        let p = &self.plan.params;
        if p.require.is_empty() && p.images.is_empty() {
            return Ok(chunk);
        }
        let mut keep = Vec::with_capacity(chunk.num_rows());
        let mut bad_ids = Vec::new();
        let mut reasons = Vec::new();
        for row in 0..chunk.num_rows() {
            let null = p.require.iter().find(|c| chunk.column_by_name(c).is_some_and(|col| col.is_null(row)));
            let problem = match null {
                Some(c) => Some(format!("column `{c}` is null")),
                None => p.images.iter().find_map(|c| {
                    let col = chunk.column_by_name(c)?;
                    check_image(col, row).err().map(|m| format!("column `{c}`: {m}"))
                }),
            };
            match problem {
                None => keep.push(row as u32),
                Some(m) => {
                    bad_ids.push(self.row_id(&chunk, row, unit, rows[row]));
                    reasons.push(m);
                }
            }
        }
        if !bad_ids.is_empty() {
            out.reject(bad_ids, reasons)?;
        }
        if keep.len() == chunk.num_rows() {
            return Ok(chunk);
        }
        Ok(take_record_batch(&chunk, &UInt32Array::from(keep))?)
    }
}

/// Image bytes must start a PNG whose header decodes, or a JPEG (SOI marker).
fn check_image(col: &ArrayRef, row: usize) -> Result<(), String> {
    if col.is_null(row) {
        return Err("image is null".into());
    }
    let bytes: &[u8] = match col.data_type() {
        DataType::Struct(_) => {
            let s = col.as_any().downcast_ref::<StructArray>().ok_or("not a struct")?;
            let b = s.column_by_name("bytes").ok_or("image struct has no `bytes` field")?;
            if b.is_null(row) {
                return Err("image bytes are null".into());
            }
            return check_image(b, row);
        }
        DataType::Binary => col.as_any().downcast_ref::<BinaryArray>().ok_or("not binary")?.value(row),
        DataType::LargeBinary => col.as_any().downcast_ref::<LargeBinaryArray>().ok_or("not binary")?.value(row),
        other => return Err(format!("type {other} is not an image column")),
    };
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        return Ok(());
    }
    if !bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        return Err("bytes are neither PNG nor JPEG".into());
    }
    png::Decoder::new(std::io::Cursor::new(bytes)).read_info().map(|_| ()).map_err(|e| format!("undecodable PNG: {e}"))
}

impl Source for ParquetReplay {
    fn next(&mut self, out: &mut Outputs) -> Result<SourceState, NodeError> {
        if !self.announced {
            self.announced = true;
            let stream = self.plan.total_rows * self.plan.params.epochs as u64;
            out.set_expected_rows(stream - self.plan.params.start.min(stream));
        }
        let batch_rows = self.plan.params.batch_rows;
        // Emit from the unit in hand.
        if let Some(mut pending) = self.pending.take() {
            let total = pending.batch.num_rows();
            let n = (total - pending.offset).min(batch_rows);
            let chunk = pending.batch.slice(pending.offset, n);
            out.count_read(n);
            self.position += n as u64;
            let rows = &pending.rows[pending.offset..pending.offset + n];
            let good = self.check_rows(chunk, &pending.unit, rows, out)?;
            if good.num_rows() > 0 {
                out.emit("out", Frame::new(good))?;
            }
            pending.offset += n;
            if pending.offset < total {
                self.pending = Some(pending);
            }
            return Ok(SourceState::More);
        }
        // Next unit (or next epoch).
        if self.cursor == self.order.len() {
            self.epoch += 1;
            if self.epoch >= self.plan.params.epochs {
                return Ok(SourceState::Done);
            }
            self.cursor = 0;
            self.order = self.epoch_order(self.epoch);
        }
        let unit = self.plan.units[self.order[self.cursor]].clone();
        self.cursor += 1;
        let start = self.plan.params.start;
        // Skip whole units before the resume position without reading them.
        if self.position + unit.rows as u64 <= start {
            self.position += unit.rows as u64;
            return Ok(SourceState::More);
        }
        let skip = start.saturating_sub(self.position) as usize;
        let unit_seed = self.epoch_seed(self.epoch) ^ (unit.file as u64) << 32 ^ unit.row_group as u64;
        match self.read_unit(&unit, unit_seed) {
            Ok((batch, rows)) => {
                self.position += skip as u64;
                if skip < unit.rows {
                    self.pending = Some(Pending { unit, batch, rows, offset: skip });
                }
            }
            Err(cause) => {
                // The row group cannot be decoded: every row of it is an error record; the rest continues.
                let path = self.plan.files[unit.file].display().to_string();
                let rows = unit.rows - skip;
                let ids: Vec<String> =
                    (skip..unit.rows).map(|i| format!("{path}#{}", unit.first_row + i as u64)).collect();
                let reasons = vec![format!("row group {} unreadable: {cause}", unit.row_group); rows];
                out.count_read(rows);
                self.position += unit.rows as u64;
                out.reject(ids, reasons)?;
            }
        }
        Ok(SourceState::More)
    }
}
