//! End-to-end behaviour of the engine: backpressure, ordering, failure handling, signals, summaries.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Log, Seen, registry};
use perceptio_runtime::{Graph, RunError, RunOptions, Signal};

fn graph(log: &Log, yaml: &str) -> Graph {
    Graph::from_yaml("test.yaml", yaml, &registry(log)).unwrap_or_else(|e| panic!("invalid test graph:\n{e}"))
}

async fn run(g: Graph) -> perceptio_runtime::RunResult {
    tokio::time::timeout(Duration::from_secs(60), g.run(RunOptions { stop_deadline: Duration::from_secs(5) }))
        .await
        .expect("the run must end; it hung")
}

fn rows(log: &Log) -> Vec<u64> {
    log.lock()
        .unwrap()
        .iter()
        .filter_map(|s| if let Seen::Rows(r) = s { Some(r.clone()) } else { None })
        .flatten()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backpressure_bounds_rows_in_flight_and_delivers_everything_in_order() {
    let log: Log = Arc::new(Mutex::new(Vec::new()));
    // A fast source, a pass-through, a slow sink; the last edge holds at most 8 rows.
    let g = graph(
        &log,
        r#"
name: backpressure
nodes:
  - id: src
    kind: count
    params: { rows: 600, batch: 2 }
  - id: mid
    kind: map
    inputs: { in: src/out }
  - id: sink
    kind: record
    params: { delay_us: 300 }
    inputs:
      in: { from: mid/out, capacity: { rows: 8 } }
"#,
    );
    let summary = run(g).await.unwrap();
    let got = rows(&log);
    assert_eq!(got, (0..600).collect::<Vec<u64>>(), "every row exactly once, in order");
    let edge = summary.stats.edges.iter().find(|(_, to, _)| to == "sink/in").unwrap();
    assert!(edge.2.max_rows_in_flight <= 8, "at most 8 rows in flight, saw {}", edge.2.max_rows_in_flight);
    assert_eq!(edge.2.max_rows_in_flight, 8, "the slow sink lets the edge fill up to its capacity");
    assert!(edge.2.producer_blocked_ms > 0.0, "the producer was blocked by the full edge");
    assert_eq!(edge.2.rows_total, 600);
    assert_eq!((summary.read, summary.processed, summary.failed), (600, 600, 0));
    assert!(summary.balanced);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_node_stops_the_graph_with_an_error_naming_it() {
    let log: Log = Arc::new(Mutex::new(Vec::new()));
    let g = graph(
        &log,
        r#"
nodes:
  - id: src
    kind: count
    params: { rows: 1000000, batch: 1 }
  - id: boom
    kind: map
    params: { panic_at: 50 }
    inputs: { in: src/out }
  - id: sink
    kind: record
    inputs: { in: boom/out }
"#,
    );
    let started = std::time::Instant::now();
    let err = run(g).await.unwrap_err();
    match &err {
        RunError::NodeFailed { node, kind, cause } => {
            assert_eq!(node, "boom");
            assert_eq!(kind, "map");
            assert_eq!(cause, "panicked: row 50 is cursed");
        }
        other => panic!("expected NodeFailed, got {other:?}"),
    }
    assert_eq!(err.to_string(), "node `boom` (map) failed: panicked: row 50 is cursed");
    assert!(started.elapsed() < Duration::from_secs(5), "stopped well within the deadline");
    // The sink never finished: no end-of-data went through a failed graph.
    assert!(!log.lock().unwrap().contains(&Seen::Finished));
    assert!(rows(&log).len() <= 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erroring_consumer_unblocks_a_producer_stuck_on_a_full_edge() {
    let log: Log = Arc::new(Mutex::new(Vec::new()));
    let g = graph(
        &log,
        r#"
nodes:
  - id: src
    kind: count
    params: { rows: 100000, batch: 1 }
  - id: bad
    kind: map
    params: { fail_at: 3, delay_us: 2000 }
    inputs:
      in: { from: src/out, capacity: { rows: 2 } }
  - id: sink
    kind: record
    inputs: { in: bad/out }
"#,
    );
    let err = run(g).await.unwrap_err();
    assert_eq!(err.to_string(), "node `bad` (map) failed: cannot handle row 3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_rows_are_counted_and_the_summary_balances() {
    let log: Log = Arc::new(Mutex::new(Vec::new()));
    let errors: Log = log.clone();
    let g = graph(
        &errors,
        r#"
nodes:
  - id: src
    kind: count
    params: { rows: 100, batch: 7 }
  - id: filter
    kind: map
    params: { reject_every: 10 }
    inputs: { in: src/out }
  - id: sink
    kind: record
    inputs: { in: filter/out }
  - id: error-sink
    kind: discard
    inputs: { in: filter/errors }
"#,
    );
    let summary = run(g).await.unwrap();
    assert_eq!(summary.read, 100);
    assert_eq!(summary.failed, 10);
    assert_eq!(summary.processed, 90);
    assert!(summary.balanced);
    let errors_in = summary.stats.nodes.iter().find(|(id, _, _)| id == "error-sink").unwrap().2.error_rows_in;
    assert_eq!(errors_in, 10, "every rejected row reached the error output");
    assert_eq!(rows(&log).len(), 90);
    assert!(summary.to_string().contains("failure: seq-0: 0 is divisible by 10"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_travel_in_order_with_the_data_and_align_across_inputs() {
    let log: Log = Arc::new(Mutex::new(Vec::new()));
    // Two sources join in one node; each emits a checkpoint barrier after every 2 frames. The barrier must be
    // handled once, after both inputs delivered it, and reach the sink after the rows that preceded it.
    let g = graph(
        &log,
        r#"
nodes:
  - id: a
    kind: count
    params: { rows: 6, batch: 1, checkpoint_every: 2 }
  - id: b
    kind: count
    params: { rows: 6, batch: 1, checkpoint_every: 2 }
  - id: join
    kind: map
    inputs: { in: a/out, in2: b/out }
  - id: sink
    kind: record
    inputs: { in: join/out }
"#,
    );
    run(g).await.unwrap();
    let seen = log.lock().unwrap().clone();
    let checkpoints: Vec<usize> = seen
        .iter()
        .enumerate()
        .filter(|(_, s)| matches!(s, Seen::Signal(Signal::Checkpoint { .. })))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(checkpoints.len(), 3, "each barrier id is handled exactly once: {seen:?}");
    let ids: Vec<u64> = seen
        .iter()
        .filter_map(|s| if let Seen::Signal(Signal::Checkpoint { id }) = s { Some(*id) } else { None })
        .collect();
    assert_eq!(ids, vec![1, 2, 3]);
    // Before barrier k the sink has seen exactly the 2k rows of each source that precede it.
    for (k, &pos) in checkpoints.iter().enumerate() {
        let before: usize = seen[..pos].iter().map(|s| if let Seen::Rows(r) = s { r.len() } else { 0 }).sum();
        assert_eq!(before, 4 * (k + 1), "rows before barrier {}", k + 1);
    }
    assert_eq!(seen.last(), Some(&Seen::Finished));
    assert_eq!(rows(&log).len(), 12);
}

#[test]
fn run_blocking_works_without_a_runtime() {
    let log: Log = Arc::new(Mutex::new(Vec::new()));
    let g = graph(
        &log,
        "nodes:\n  - id: s\n    kind: count\n    params: { rows: 10, batch: 3 }\n  - id: r\n    kind: record\n    inputs: { in: s/out }\n",
    );
    let summary = g.run_blocking(RunOptions::default()).unwrap();
    assert_eq!(summary.processed, 10);
    assert_eq!(rows(&log), (0..10).collect::<Vec<_>>());
}
