//! Per-node and per-edge counters (atomics, readable while the graph runs) and the run summary.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use crate::edge::EdgeStats;

/// Live counters of one node.
#[derive(Debug, Default)]
pub struct NodeMetrics {
    /// Rows received on data inputs (not on inputs fed by an `errors` port).
    pub rows_in: AtomicU64,
    /// Rows received on inputs fed by an `errors` port.
    pub error_rows_in: AtomicU64,
    pub rows_out: AtomicU64,
    /// Rows a source expects to read in total (0 = unknown), for progress bars.
    pub rows_expected: AtomicU64,
    /// Rows read from outside the graph (sources only).
    pub rows_read: AtomicU64,
    /// Rows that failed in this node (written to its error output or counted here when it has none).
    pub rows_failed: AtomicU64,
    pub frames_in: AtomicU64,
    pub busy_ns: AtomicU64,
    pub errors: AtomicU64,
    /// The first few failure reasons, for the summary.
    pub sample_failures: Mutex<Vec<String>>,
    /// A short line the node publishes about its progress (a trainer's step and loss terms), shown by progress
    /// bars; empty when the node says nothing.
    pub status: Mutex<String>,
}

/// How many failure reasons a node keeps for the summary.
pub const MAX_SAMPLE_FAILURES: usize = 5;

impl NodeMetrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn record_failure(&self, reason: String) {
        let mut samples = self.sample_failures.lock().unwrap_or_else(|p| p.into_inner());
        if samples.len() < MAX_SAMPLE_FAILURES {
            samples.push(reason);
        }
    }

    pub fn snapshot(&self) -> NodeStats {
        NodeStats {
            rows_in: self.rows_in.load(Ordering::Relaxed),
            error_rows_in: self.error_rows_in.load(Ordering::Relaxed),
            rows_expected: self.rows_expected.load(Ordering::Relaxed),
            rows_out: self.rows_out.load(Ordering::Relaxed),
            rows_read: self.rows_read.load(Ordering::Relaxed),
            rows_failed: self.rows_failed.load(Ordering::Relaxed),
            frames_in: self.frames_in.load(Ordering::Relaxed),
            busy_ms: self.busy_ns.load(Ordering::Relaxed) as f64 / 1e6,
            errors: self.errors.load(Ordering::Relaxed),
            sample_failures: self.sample_failures.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            status: self.status.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        }
    }
}

/// A point-in-time copy of a node's counters.
#[derive(Debug, Clone, Default, Serialize)]
pub struct NodeStats {
    pub rows_in: u64,
    pub error_rows_in: u64,
    pub rows_expected: u64,
    pub rows_out: u64,
    pub rows_read: u64,
    pub rows_failed: u64,
    pub frames_in: u64,
    pub busy_ms: f64,
    pub errors: u64,
    pub sample_failures: Vec<String>,
    pub status: String,
}

/// Counters of the whole graph at one moment.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GraphStats {
    pub nodes: Vec<(String, String, NodeStats)>,
    pub edges: Vec<(String, String, EdgeStats)>,
    pub elapsed_s: f64,
}

impl GraphStats {
    /// Rows read by every source.
    pub fn read(&self) -> u64 {
        self.nodes.iter().map(|(_, _, n)| n.rows_read).sum()
    }

    /// Rows all sources expect to read (0 when any source cannot tell).
    pub fn expected(&self) -> u64 {
        let sources: Vec<&NodeStats> =
            self.nodes.iter().map(|(_, _, n)| n).filter(|n| n.rows_read > 0 || n.rows_expected > 0).collect();
        if sources.iter().any(|n| n.rows_expected == 0) { 0 } else { sources.iter().map(|n| n.rows_expected).sum() }
    }

    /// Every node's non-empty status line, as `node: status`, joined by `; `.
    pub fn statuses(&self) -> String {
        let parts: Vec<String> = self
            .nodes
            .iter()
            .filter(|(_, _, n)| !n.status.is_empty())
            .map(|(id, _, n)| format!("{id}: {}", n.status))
            .collect();
        parts.join("; ")
    }

    /// Rows that failed anywhere.
    pub fn failed(&self) -> u64 {
        self.nodes.iter().map(|(_, _, n)| n.rows_failed).sum()
    }
}

/// The end-of-run account. `processed + failed == read` holds for graphs in which every row read reaches a
/// sink exactly once (no fan-out, no filtering); `balanced` says whether it held.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub graph: String,
    pub read: u64,
    pub processed: u64,
    pub failed: u64,
    pub balanced: bool,
    pub stats: GraphStats,
}

impl std::fmt::Display for RunSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{}: read {} rows, processed {}, failed {} in {:.2}s{}",
            self.graph,
            self.read,
            self.processed,
            self.failed,
            self.stats.elapsed_s,
            if self.balanced { "" } else { " (processed + failed != read: the graph fans out or filters)" }
        )?;
        writeln!(f, "  {:<20} {:>10} {:>10} {:>8} {:>10}", "node", "rows in", "rows out", "failed", "busy s")?;
        for (id, kind, n) in &self.stats.nodes {
            let label = format!("{id} ({kind})");
            writeln!(
                f,
                "  {:<20} {:>10} {:>10} {:>8} {:>10.2}",
                label,
                n.rows_in.max(n.rows_read),
                n.rows_out,
                n.rows_failed,
                n.busy_ms / 1e3
            )?;
            for reason in &n.sample_failures {
                writeln!(f, "      failure: {reason}")?;
            }
        }
        writeln!(f, "  {:<28} {:>10} {:>14} {:>12}", "edge", "rows", "max in flight", "blocked s")?;
        for (from, to, e) in &self.stats.edges {
            writeln!(
                f,
                "  {:<28} {:>10} {:>14} {:>12.2}",
                format!("{from} -> {to}"),
                e.rows_total,
                e.max_rows_in_flight,
                e.producer_blocked_ms / 1e3
            )?;
        }
        Ok(())
    }
}
