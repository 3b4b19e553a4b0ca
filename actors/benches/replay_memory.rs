//! Peak memory of replaying a dataset through a slow sink: 1x rows vs 10x rows. With bounded edges and one row
//! group in memory at a time, peak RSS must not grow with the dataset (goal: 10x within 10% of 1x).
//!
//! Run: `cargo bench -p perceptio-actors --bench replay_memory` (`-- --rows N` sets the 1x size).
//! Each replay runs in a child process (this same binary) so its peak RSS (VmHWM) is its own.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, BinaryArray, RecordBatch, StringArray};
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;
use perceptio_runtime::schemas::PortSchema;
use perceptio_runtime::{
    BuildContext, Frame, Graph, Node, NodeError, NodeImpl, NodeKind, NodePorts, Outputs, ParamError, PortContext,
    PortDecl, RunOptions,
};

const PAYLOAD: usize = 4096;

fn write_dataset(path: &Path, rows: usize) {
    let chunk = 10_000;
    let props = WriterProperties::builder().set_max_row_group_row_count(Some(1000)).build();
    let schema = Arc::new(arrow::datatypes::Schema::new(vec![
        arrow::datatypes::Field::new("id", arrow::datatypes::DataType::Utf8, false),
        arrow::datatypes::Field::new("payload", arrow::datatypes::DataType::Binary, false),
    ]));
    let mut w = ArrowWriter::try_new(File::create(path).expect("create"), schema.clone(), Some(props)).expect("writer");
    let mut start = 0;
    while start < rows {
        let n = chunk.min(rows - start);
        let ids: Vec<String> = (start..start + n).map(|i| format!("row-{i}")).collect();
        let payloads: Vec<Vec<u8>> = (start..start + n).map(|i| vec![(i % 251) as u8; PAYLOAD]).collect();
        let cols: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(ids)),
            Arc::new(BinaryArray::from_iter_values(payloads.iter().map(|p| p.as_slice()))),
        ];
        w.write(&RecordBatch::try_new(schema.clone(), cols).expect("batch")).expect("write");
        start += n;
    }
    w.close().expect("close");
}

struct SlowKind;
struct Slow;
impl NodeKind for SlowKind {
    fn name(&self) -> &'static str {
        "slow-discard"
    }
    fn about(&self) -> &'static str {
        ""
    }
    fn params_schema(&self) -> schemars::schema::RootSchema {
        Default::default()
    }
    fn ports(&self, _: &PortContext<'_>) -> Result<NodePorts, ParamError> {
        Ok(NodePorts { inputs: vec![PortDecl::required("in", PortSchema::any())], outputs: vec![] })
    }
    fn build(&self, _: &BuildContext<'_>) -> Result<NodeImpl, ParamError> {
        Ok(NodeImpl::Node(Box::new(Slow)))
    }
}
impl Node for Slow {
    fn process(&mut self, _: &str, _frame: Frame, _: &mut Outputs) -> Result<(), NodeError> {
        std::thread::sleep(Duration::from_micros(200));
        Ok(())
    }
}

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn child(path: &str) {
    let mut registry = perceptio_actors::registry();
    registry.register(SlowKind);
    let yaml = format!(
        "nodes:\n  - id: replay\n    kind: parquet-replay\n    params: {{ paths: [\"{path}\"], batch_rows: 64 }}\n  - id: sink\n    kind: slow-discard\n    inputs:\n      in: {{ from: replay/out, capacity: {{ rows: 256 }} }}\n"
    );
    let graph = Graph::from_yaml("bench.yaml", &yaml, &registry).expect("valid");
    let summary = graph.run_blocking(RunOptions::default()).expect("runs");
    println!("{} {}", summary.processed, peak_rss_kib());
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--child") {
        child(&args[i + 1]);
        return;
    }
    let rows = args
        .iter()
        .position(|a| a == "--rows")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000usize);
    let dir = tempfile::tempdir().expect("tempdir");
    let me = std::env::current_exe().expect("own path");
    let mut results = Vec::new();
    for scale in [1usize, 10] {
        let path = dir.path().join(format!("x{scale}.parquet"));
        write_dataset(&path, rows * scale);
        let out = std::process::Command::new(&me).arg("--child").arg(&path).output().expect("child runs");
        let text = String::from_utf8_lossy(&out.stdout);
        let mut it = text.split_whitespace();
        let processed: usize = it.next().and_then(|v| v.parse().ok()).expect("child prints rows");
        let kib: u64 = it.next().and_then(|v| v.parse().ok()).expect("child prints RSS");
        assert_eq!(processed, rows * scale);
        println!("{scale:>3}x: {:>8} rows of {PAYLOAD} B, peak RSS {:>8.1} MiB", rows * scale, kib as f64 / 1024.0);
        results.push(kib as f64);
    }
    println!("peak RSS ratio 10x/1x = {:.3} (goal <= 1.10)", results[1] / results[0]);
}
