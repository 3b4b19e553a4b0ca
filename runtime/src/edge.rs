//! Bounded edges. Each edge has a budget of rows and bytes in flight (sent, not yet received). A producer whose
//! frame would exceed the budget blocks until the consumer takes enough: lossless backpressure. A frame larger
//! than the whole budget is admitted alone on an empty edge, so progress never stalls.
//!
//! Frames move by value through a crossbeam channel; the budget is a gauge (mutex + condvar) beside it, so the
//! consumer can `select` over several input edges.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::message::Message;

/// The capacity of one edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EdgeCapacity {
    pub rows: usize,
    pub bytes: usize,
}

impl Default for EdgeCapacity {
    fn default() -> Self {
        Self { rows: 1024, bytes: 256 << 20 }
    }
}

#[derive(Debug, Default)]
struct InFlight {
    rows: usize,
    bytes: usize,
    closed: bool,
}

/// Counters of one edge, readable while the graph runs.
#[derive(Debug)]
pub struct EdgeGauge {
    pub capacity: EdgeCapacity,
    in_flight: Mutex<InFlight>,
    space: Condvar,
    rows_total: AtomicU64,
    frames_total: AtomicU64,
    max_rows_in_flight: AtomicU64,
    max_bytes_in_flight: AtomicU64,
    producer_blocked_ns: AtomicU64,
}

/// A point-in-time copy of an edge's counters.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct EdgeStats {
    pub rows_in_flight: usize,
    pub bytes_in_flight: usize,
    pub rows_total: u64,
    pub frames_total: u64,
    pub max_rows_in_flight: u64,
    pub max_bytes_in_flight: u64,
    pub producer_blocked_ms: f64,
}

impl EdgeGauge {
    fn new(capacity: EdgeCapacity) -> Self {
        Self {
            capacity,
            in_flight: Mutex::new(InFlight::default()),
            space: Condvar::new(),
            rows_total: AtomicU64::new(0),
            frames_total: AtomicU64::new(0),
            max_rows_in_flight: AtomicU64::new(0),
            max_bytes_in_flight: AtomicU64::new(0),
            producer_blocked_ns: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, InFlight> {
        // A poisoned lock only means another thread panicked while holding it; the counters stay consistent
        // because every critical section is a few integer updates.
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until `rows`/`bytes` fit in the budget, then charges them. Returns false if the edge was closed.
    fn acquire(&self, rows: usize, bytes: usize) -> bool {
        let started = Instant::now();
        let mut state = self.lock();
        loop {
            if state.closed {
                return false;
            }
            let empty = state.rows == 0 && state.bytes == 0;
            let fits = state.rows + rows <= self.capacity.rows && state.bytes + bytes <= self.capacity.bytes;
            if empty || fits {
                break;
            }
            state = self.space.wait_timeout(state, Duration::from_millis(100)).unwrap_or_else(|p| p.into_inner()).0;
        }
        state.rows += rows;
        state.bytes += bytes;
        self.max_rows_in_flight.fetch_max(state.rows as u64, Ordering::Relaxed);
        self.max_bytes_in_flight.fetch_max(state.bytes as u64, Ordering::Relaxed);
        drop(state);
        let waited = started.elapsed().as_nanos() as u64;
        self.producer_blocked_ns.fetch_add(waited, Ordering::Relaxed);
        true
    }

    fn release(&self, rows: usize, bytes: usize) {
        let mut state = self.lock();
        state.rows = state.rows.saturating_sub(rows);
        state.bytes = state.bytes.saturating_sub(bytes);
        drop(state);
        self.space.notify_all();
    }

    /// Closes the edge: blocked and future sends fail. Used when the graph aborts.
    pub fn close(&self) {
        self.lock().closed = true;
        self.space.notify_all();
    }

    pub fn stats(&self) -> EdgeStats {
        let state = self.lock();
        EdgeStats {
            rows_in_flight: state.rows,
            bytes_in_flight: state.bytes,
            rows_total: self.rows_total.load(Ordering::Relaxed),
            frames_total: self.frames_total.load(Ordering::Relaxed),
            max_rows_in_flight: self.max_rows_in_flight.load(Ordering::Relaxed),
            max_bytes_in_flight: self.max_bytes_in_flight.load(Ordering::Relaxed),
            producer_blocked_ms: self.producer_blocked_ns.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }
}

/// The sending half of an edge (owned by the producer node).
#[derive(Debug)]
pub struct EdgeSender {
    tx: Sender<(Message, usize)>,
    gauge: Arc<EdgeGauge>,
}

/// The receiving half of an edge (owned by the consumer node).
#[derive(Debug)]
pub struct EdgeReceiver {
    rx: Receiver<(Message, usize)>,
    gauge: Arc<EdgeGauge>,
}

/// The edge was closed (graph aborting) or its consumer is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("edge closed")]
pub struct EdgeClosed;

/// Creates a bounded edge.
pub fn edge(capacity: EdgeCapacity) -> (EdgeSender, EdgeReceiver, Arc<EdgeGauge>) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let gauge = Arc::new(EdgeGauge::new(capacity));
    (EdgeSender { tx, gauge: gauge.clone() }, EdgeReceiver { rx, gauge: gauge.clone() }, gauge)
}

impl EdgeSender {
    /// Sends a message, blocking while the edge is over budget.
    pub fn send(&self, message: Message) -> Result<(), EdgeClosed> {
        let rows = message.rows();
        let bytes = message.byte_size();
        if !self.gauge.acquire(rows, bytes) {
            return Err(EdgeClosed);
        }
        if matches!(message, Message::Data(_)) {
            self.gauge.rows_total.fetch_add(rows as u64, Ordering::Relaxed);
            self.gauge.frames_total.fetch_add(1, Ordering::Relaxed);
        }
        self.tx.send((message, bytes)).map_err(|_| {
            self.gauge.release(rows, bytes);
            EdgeClosed
        })
    }

    pub fn gauge(&self) -> &Arc<EdgeGauge> {
        &self.gauge
    }
}

impl EdgeReceiver {
    /// The underlying channel, for `crossbeam_channel::Select`.
    pub fn channel(&self) -> &Receiver<(Message, usize)> {
        &self.rx
    }

    /// Completes a receive started through [`EdgeReceiver::channel`]: releases the budget.
    pub fn complete(&self, item: (Message, usize)) -> Message {
        let (message, bytes) = item;
        self.gauge.release(message.rows(), bytes);
        message
    }

    /// Receives with a timeout. `Ok(None)` on timeout; `Err` once the sender is gone and the edge is drained.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Option<Message>, EdgeClosed> {
        match self.rx.recv_timeout(timeout) {
            Ok(item) => Ok(Some(self.complete(item))),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => Ok(None),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => Err(EdgeClosed),
        }
    }

    pub fn gauge(&self) -> &Arc<EdgeGauge> {
        &self.gauge
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::Frame;

    #[test]
    fn producer_blocks_at_capacity_and_resumes_when_consumer_takes() {
        let (tx, rx, gauge) = edge(EdgeCapacity { rows: 4, bytes: usize::MAX });
        let producer = std::thread::spawn(move || {
            for _ in 0..10 {
                tx.send(Message::Data(Frame::empty(2))).unwrap();
            }
        });
        // two frames of two rows fill the edge; wait for them (a busy machine may start the producer late)
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while gauge.stats().rows_in_flight < 4 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(gauge.stats().rows_in_flight, 4, "the edge is full and the third frame waits");
        let mut got = 0;
        while got < 20 {
            if let Some(m) = rx.recv_timeout(Duration::from_secs(5)).unwrap() {
                got += m.rows();
            }
        }
        producer.join().unwrap();
        let stats = gauge.stats();
        assert_eq!(stats.rows_total, 20);
        assert_eq!(stats.max_rows_in_flight, 4);
        assert_eq!(stats.rows_in_flight, 0);
    }

    #[test]
    fn oversized_frame_passes_alone_and_close_unblocks_senders() {
        let (tx, rx, gauge) = edge(EdgeCapacity { rows: 2, bytes: usize::MAX });
        tx.send(Message::Data(Frame::empty(5))).unwrap();
        let t = std::thread::spawn(move || tx.send(Message::Data(Frame::empty(1))));
        std::thread::sleep(Duration::from_millis(50));
        gauge.close();
        assert_eq!(t.join().unwrap(), Err(EdgeClosed));
        assert_eq!(rx.recv_timeout(Duration::from_millis(10)).unwrap().unwrap().rows(), 5);
    }
}
