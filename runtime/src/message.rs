//! What travels on an edge: data frames and in-band signals, ordered with the data.

use crate::frame::Frame;

/// In-band control signals. They travel in order with the frames of the same edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    /// Emit anything buffered (a partial batch, a pending row group) before continuing.
    Flush,
    /// A checkpoint barrier: everything before it belongs to checkpoint `id`.
    Checkpoint { id: u64 },
    /// No more data will follow on this edge.
    EndOfData,
}

/// One item on an edge.
#[derive(Debug, Clone)]
pub enum Message {
    Data(Frame),
    Signal(Signal),
}

impl Message {
    /// Rows this message holds (signals hold none).
    pub fn rows(&self) -> usize {
        match self {
            Message::Data(f) => f.rows(),
            Message::Signal(_) => 0,
        }
    }

    /// Bytes charged against an edge's byte budget.
    pub fn byte_size(&self) -> usize {
        match self {
            Message::Data(f) => f.byte_size(),
            Message::Signal(_) => 0,
        }
    }
}
