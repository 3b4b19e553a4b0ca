//! Node kinds used only by the engine's tests: a counting source, a pass-through, a recording sink that can be
//! slow, and nodes that fail on a chosen row.

#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::{ArrayRef, RecordBatch, UInt64Array};
use arrow::datatypes::DataType;
use perceptio_runtime::schemas::{FieldSpec, PortSchema};
use perceptio_runtime::{
    BuildContext, Frame, Node, NodeError, NodeImpl, NodeKind, NodePorts, Outputs, ParamError, PortContext, PortDecl,
    Registry, Signal, Source, SourceState, parse_params,
};
use serde::Deserialize;

pub fn seq_schema() -> PortSchema {
    PortSchema::default().with_field(FieldSpec::new("seq", DataType::UInt64))
}

pub fn seq_frame(start: u64, n: u64) -> Frame {
    let col: ArrayRef = Arc::new(UInt64Array::from((start..start + n).collect::<Vec<_>>()));
    Frame::new(RecordBatch::try_from_iter([("seq", col)]).unwrap())
}

pub fn seqs(frame: &Frame) -> Vec<u64> {
    frame.batch().column(0).as_any().downcast_ref::<UInt64Array>().unwrap().values().to_vec()
}

/// What a recording sink saw, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Seen {
    Rows(Vec<u64>),
    Signal(Signal),
    Finished,
}

pub type Log = Arc<Mutex<Vec<Seen>>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CountParams {
    rows: u64,
    #[serde(default = "one")]
    batch: u64,
    /// Emit a checkpoint barrier after every this many frames (0 = never).
    #[serde(default)]
    checkpoint_every: u64,
}

fn one() -> u64 {
    1
}

pub struct CountKind;
struct Count {
    p: CountParams,
    next: u64,
    frames: u64,
}

impl NodeKind for CountKind {
    fn name(&self) -> &'static str {
        "count"
    }
    fn about(&self) -> &'static str {
        "test source"
    }
    fn params_schema(&self) -> schemars::schema::RootSchema {
        schemars::schema::RootSchema::default()
    }
    fn ports(&self, ctx: &PortContext<'_>) -> Result<NodePorts, ParamError> {
        let p: CountParams = parse_params(ctx.params)?;
        if p.batch == 0 {
            return Err(ParamError::new("batch", "must be at least 1"));
        }
        Ok(NodePorts { inputs: vec![], outputs: vec![PortDecl::required("out", seq_schema())] })
    }
    fn build(&self, ctx: &BuildContext<'_>) -> Result<NodeImpl, ParamError> {
        Ok(NodeImpl::Source(Box::new(Count { p: parse_params(ctx.params)?, next: 0, frames: 0 })))
    }
}

impl Source for Count {
    fn next(&mut self, out: &mut Outputs) -> Result<SourceState, NodeError> {
        if self.next >= self.p.rows {
            return Ok(SourceState::Done);
        }
        let n = self.p.batch.min(self.p.rows - self.next);
        out.count_read(n as usize);
        out.emit("out", seq_frame(self.next, n))?;
        self.next += n;
        self.frames += 1;
        if self.p.checkpoint_every > 0 && self.frames % self.p.checkpoint_every == 0 {
            out.signal(Signal::Checkpoint { id: self.frames / self.p.checkpoint_every })?;
        }
        Ok(SourceState::More)
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct MapParams {
    /// Panic when this seq value arrives.
    #[serde(default)]
    panic_at: Option<u64>,
    /// Return an error when this seq value arrives.
    #[serde(default)]
    fail_at: Option<u64>,
    /// Reject (as a bad row) every seq divisible by this.
    #[serde(default)]
    reject_every: Option<u64>,
    /// Microseconds of work per frame.
    #[serde(default)]
    delay_us: u64,
}

/// Pass-through with optional failures; inputs `in` (and optional `in2`).
pub struct MapKind;
struct Map {
    p: MapParams,
}

impl NodeKind for MapKind {
    fn name(&self) -> &'static str {
        "map"
    }
    fn about(&self) -> &'static str {
        "test pass-through"
    }
    fn params_schema(&self) -> schemars::schema::RootSchema {
        schemars::schema::RootSchema::default()
    }
    fn ports(&self, ctx: &PortContext<'_>) -> Result<NodePorts, ParamError> {
        let _: MapParams = parse_params(ctx.params)?;
        Ok(NodePorts {
            inputs: vec![PortDecl::required("in", seq_schema()), PortDecl::optional("in2", seq_schema())],
            outputs: vec![
                PortDecl::required("out", seq_schema()),
                PortDecl::required("errors", perceptio_runtime::node::error_port_schema()),
            ],
        })
    }
    fn build(&self, ctx: &BuildContext<'_>) -> Result<NodeImpl, ParamError> {
        Ok(NodeImpl::Node(Box::new(Map { p: parse_params(ctx.params)? })))
    }
}

impl Node for Map {
    fn process(&mut self, _port: &str, frame: Frame, out: &mut Outputs) -> Result<(), NodeError> {
        if self.p.delay_us > 0 {
            std::thread::sleep(Duration::from_micros(self.p.delay_us));
        }
        let values = seqs(&frame);
        if let Some(at) = self.p.panic_at {
            if values.contains(&at) {
                panic!("row {at} is cursed");
            }
        }
        if let Some(at) = self.p.fail_at {
            if values.contains(&at) {
                return Err(NodeError::msg(format!("cannot handle row {at}")));
            }
        }
        if let Some(k) = self.p.reject_every {
            let (bad, good): (Vec<u64>, Vec<u64>) = values.iter().partition(|v| *v % k == 0);
            if !bad.is_empty() {
                out.reject(
                    bad.iter().map(|v| format!("seq-{v}")).collect(),
                    bad.iter().map(|v| format!("{v} is divisible by {k}")).collect(),
                )?;
            }
            if !good.is_empty() {
                let col: ArrayRef = Arc::new(UInt64Array::from(good));
                out.emit("out", Frame::new(RecordBatch::try_from_iter([("seq", col)]).unwrap()))?;
            }
            return Ok(());
        }
        out.emit("out", frame)
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SinkParams {
    #[serde(default)]
    delay_us: u64,
}

/// Records everything it sees into the kind's shared log.
pub struct RecordKind {
    pub log: Log,
}
struct Record {
    p: SinkParams,
    log: Log,
}

impl NodeKind for RecordKind {
    fn name(&self) -> &'static str {
        "record"
    }
    fn about(&self) -> &'static str {
        "test sink"
    }
    fn params_schema(&self) -> schemars::schema::RootSchema {
        schemars::schema::RootSchema::default()
    }
    fn ports(&self, ctx: &PortContext<'_>) -> Result<NodePorts, ParamError> {
        let _: SinkParams = parse_params(ctx.params)?;
        Ok(NodePorts { inputs: vec![PortDecl::required("in", seq_schema())], outputs: vec![] })
    }
    fn build(&self, ctx: &BuildContext<'_>) -> Result<NodeImpl, ParamError> {
        Ok(NodeImpl::Node(Box::new(Record { p: parse_params(ctx.params)?, log: self.log.clone() })))
    }
}

impl Node for Record {
    fn process(&mut self, _port: &str, frame: Frame, _out: &mut Outputs) -> Result<(), NodeError> {
        if self.p.delay_us > 0 {
            std::thread::sleep(Duration::from_micros(self.p.delay_us));
        }
        self.log.lock().unwrap().push(Seen::Rows(seqs(&frame)));
        Ok(())
    }
    fn on_signal(&mut self, signal: &Signal, _out: &mut Outputs) -> Result<(), NodeError> {
        self.log.lock().unwrap().push(Seen::Signal(signal.clone()));
        Ok(())
    }
    fn finish(&mut self, _out: &mut Outputs) -> Result<(), NodeError> {
        self.log.lock().unwrap().push(Seen::Finished);
        Ok(())
    }
}

/// Accepts anything (its input schema is open); counts rows.
pub struct DiscardKind;
struct Discard;

impl NodeKind for DiscardKind {
    fn name(&self) -> &'static str {
        "discard"
    }
    fn about(&self) -> &'static str {
        "test sink accepting any schema"
    }
    fn params_schema(&self) -> schemars::schema::RootSchema {
        schemars::schema::RootSchema::default()
    }
    fn ports(&self, _ctx: &PortContext<'_>) -> Result<NodePorts, ParamError> {
        Ok(NodePorts { inputs: vec![PortDecl::required("in", PortSchema::any())], outputs: vec![] })
    }
    fn build(&self, _ctx: &BuildContext<'_>) -> Result<NodeImpl, ParamError> {
        Ok(NodeImpl::Node(Box::new(Discard)))
    }
}

impl Node for Discard {
    fn process(&mut self, _port: &str, _frame: Frame, _out: &mut Outputs) -> Result<(), NodeError> {
        Ok(())
    }
}

/// Needs a `text` column (which `count` does not produce): for schema-mismatch tests.
pub struct NeedsTextKind;

impl NodeKind for NeedsTextKind {
    fn name(&self) -> &'static str {
        "needs-text"
    }
    fn about(&self) -> &'static str {
        "test consumer with a required column"
    }
    fn params_schema(&self) -> schemars::schema::RootSchema {
        schemars::schema::RootSchema::default()
    }
    fn ports(&self, _ctx: &PortContext<'_>) -> Result<NodePorts, ParamError> {
        let schema = PortSchema::default()
            .with_field(FieldSpec::new("seq", DataType::Int32))
            .with_field(FieldSpec::new("text", DataType::Utf8));
        Ok(NodePorts { inputs: vec![PortDecl::required("in", schema)], outputs: vec![] })
    }
    fn build(&self, _ctx: &BuildContext<'_>) -> Result<NodeImpl, ParamError> {
        Ok(NodeImpl::Node(Box::new(Discard)))
    }
}

pub fn registry(log: &Log) -> Registry {
    let mut r = Registry::new();
    r.register(CountKind)
        .register(MapKind)
        .register(RecordKind { log: log.clone() })
        .register(DiscardKind)
        .register(NeedsTextKind);
    r
}
