//! Throughput of a 4-node graph (source -> work -> work -> sink) against the same work done in a plain loop on
//! one thread. Prints rows/s of both and their ratio (goal: graph/loop >= 0.95).
//!
//! Run: `cargo bench -p perceptio-runtime --bench graph_throughput` (add `-- --rows N --work W` to change the
//! load: W is the number of multiply-adds per row in each work stage).

use std::sync::Arc;
use std::time::Instant;

use arrow::array::{ArrayRef, Float32Array, RecordBatch};
use arrow::datatypes::DataType;
use perceptio_runtime::schemas::{FieldSpec, PortSchema};
use perceptio_runtime::{
    BuildContext, Frame, Graph, Node, NodeError, NodeImpl, NodeKind, NodePorts, Outputs, ParamError, PortContext,
    PortDecl, Registry, RunOptions, Source, SourceState,
};

const WIDTH: usize = 64;

fn schema() -> PortSchema {
    PortSchema::default().with_field(FieldSpec::new("x", DataType::Float32))
}

/// Deterministic input rows: `batch` rows of WIDTH values, flattened in one column.
fn make_frame(start: usize, batch: usize) -> Frame {
    let values: Vec<f32> = (0..batch * WIDTH).map(|i| ((start * WIDTH + i) % 97) as f32 * 0.01).collect();
    let col: ArrayRef = Arc::new(Float32Array::from(values));
    let _ = start;
    Frame::new(RecordBatch::try_from_iter([("x", col)]).expect("one column"))
}

/// The work of one stage on one frame: `work` rounds of a multiply-add over every value.
fn stage(frame: &Frame, work: usize) -> Frame {
    let x = frame.batch().column(0).as_any().downcast_ref::<Float32Array>().expect("f32");
    let out: Vec<f32> = x
        .values()
        .iter()
        .map(|&v| {
            let mut acc = v;
            for k in 0..work {
                acc = acc * 0.999_9 + (k as f32) * 1e-6;
            }
            acc
        })
        .collect();
    let col: ArrayRef = Arc::new(Float32Array::from(out));
    Frame::new(RecordBatch::try_from_iter([("x", col)]).expect("one column"))
}

fn checksum(frame: &Frame) -> f64 {
    let x = frame.batch().column(0).as_any().downcast_ref::<Float32Array>().expect("f32");
    x.values().iter().map(|&v| v as f64).sum()
}

struct Params {
    frames: usize,
    batch: usize,
    work: usize,
}

struct SrcKind(Arc<Params>);
struct Src(Arc<Params>, usize);
struct WorkKind(Arc<Params>);
struct Work(usize);
struct SinkKind(Arc<std::sync::Mutex<f64>>);
struct Sink(Arc<std::sync::Mutex<f64>>, f64);

impl NodeKind for SrcKind {
    fn name(&self) -> &'static str {
        "bench-src"
    }
    fn about(&self) -> &'static str {
        ""
    }
    fn params_schema(&self) -> schemars::schema::RootSchema {
        Default::default()
    }
    fn ports(&self, _: &PortContext<'_>) -> Result<NodePorts, ParamError> {
        Ok(NodePorts { inputs: vec![], outputs: vec![PortDecl::required("out", schema())] })
    }
    fn build(&self, _: &BuildContext<'_>) -> Result<NodeImpl, ParamError> {
        Ok(NodeImpl::Source(Box::new(Src(self.0.clone(), 0))))
    }
}
impl Source for Src {
    fn next(&mut self, out: &mut Outputs) -> Result<SourceState, NodeError> {
        if self.1 == self.0.frames {
            return Ok(SourceState::Done);
        }
        out.count_read(self.0.batch * WIDTH);
        out.emit("out", make_frame(self.1 * self.0.batch, self.0.batch))?;
        self.1 += 1;
        Ok(SourceState::More)
    }
}
impl NodeKind for WorkKind {
    fn name(&self) -> &'static str {
        "bench-work"
    }
    fn about(&self) -> &'static str {
        ""
    }
    fn params_schema(&self) -> schemars::schema::RootSchema {
        Default::default()
    }
    fn ports(&self, _: &PortContext<'_>) -> Result<NodePorts, ParamError> {
        Ok(NodePorts {
            inputs: vec![PortDecl::required("in", schema())],
            outputs: vec![PortDecl::required("out", schema())],
        })
    }
    fn build(&self, _: &BuildContext<'_>) -> Result<NodeImpl, ParamError> {
        Ok(NodeImpl::Node(Box::new(Work(self.0.work))))
    }
}
impl Node for Work {
    fn process(&mut self, _: &str, frame: Frame, out: &mut Outputs) -> Result<(), NodeError> {
        out.emit("out", stage(&frame, self.0))
    }
}
impl NodeKind for SinkKind {
    fn name(&self) -> &'static str {
        "bench-sink"
    }
    fn about(&self) -> &'static str {
        ""
    }
    fn params_schema(&self) -> schemars::schema::RootSchema {
        Default::default()
    }
    fn ports(&self, _: &PortContext<'_>) -> Result<NodePorts, ParamError> {
        Ok(NodePorts { inputs: vec![PortDecl::required("in", schema())], outputs: vec![] })
    }
    fn build(&self, _: &BuildContext<'_>) -> Result<NodeImpl, ParamError> {
        Ok(NodeImpl::Node(Box::new(Sink(self.0.clone(), 0.0))))
    }
}
impl Node for Sink {
    fn process(&mut self, _: &str, frame: Frame, _: &mut Outputs) -> Result<(), NodeError> {
        self.1 += checksum(&frame);
        Ok(())
    }
    fn finish(&mut self, _: &mut Outputs) -> Result<(), NodeError> {
        *self.0.lock().expect("not poisoned") = self.1;
        Ok(())
    }
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    let rows = arg("--rows", 200_000);
    let batch = arg("--batch", 256);
    let work = arg("--work", 64);
    let p = Arc::new(Params { frames: rows / batch, batch, work });
    let rows = p.frames * p.batch;
    println!("graph_throughput: {rows} rows x {WIDTH} values, batch {batch}, {work} multiply-adds per value per stage");

    // Plain loop: the same four steps, one thread.
    let mut loop_secs = f64::MAX;
    let mut loop_sum = 0.0;
    let mut graph_secs = f64::MAX;
    let mut graph_sum = 0.0;
    for _ in 0..3 {
        let t = Instant::now();
        let mut sum = 0.0;
        for f in 0..p.frames {
            let frame = make_frame(f * batch, batch);
            let a = stage(&frame, work);
            let b = stage(&a, work);
            sum += checksum(&b);
        }
        loop_secs = loop_secs.min(t.elapsed().as_secs_f64());
        loop_sum = sum;

        let result = Arc::new(std::sync::Mutex::new(0.0));
        let mut registry = Registry::new();
        registry.register(SrcKind(p.clone())).register(WorkKind(p.clone())).register(SinkKind(result.clone()));
        let yaml = "name: bench\nnodes:\n  - {id: src, kind: bench-src}\n  - {id: a, kind: bench-work, inputs: {in: src/out}}\n  - {id: b, kind: bench-work, inputs: {in: a/out}}\n  - {id: sink, kind: bench-sink, inputs: {in: b/out}}\n";
        let graph = Graph::from_yaml("bench.yaml", yaml, &registry).expect("valid bench graph");
        let t = Instant::now();
        let summary = graph.run_blocking(RunOptions::default()).expect("bench graph runs");
        graph_secs = graph_secs.min(t.elapsed().as_secs_f64());
        assert_eq!(summary.processed as usize, rows * WIDTH);
        graph_sum = *result.lock().expect("not poisoned");
    }
    assert!((graph_sum - loop_sum).abs() <= 1e-6 * loop_sum.abs().max(1.0), "same results: {graph_sum} vs {loop_sum}");
    let loop_rate = rows as f64 / loop_secs;
    let graph_rate = rows as f64 / graph_secs;
    println!("plain loop : {loop_rate:>12.0} rows/s ({loop_secs:.3} s, best of 3)");
    println!("4-node graph: {graph_rate:>12.0} rows/s ({graph_secs:.3} s, best of 3)");
    println!("ratio graph/loop = {:.3} (goal >= 0.95)", graph_rate / loop_rate);
}
