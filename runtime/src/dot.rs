//! Printing a validated graph: a text outline for terminals and Graphviz DOT.

use std::fmt::Write;

use crate::spec::ValidatedGraph;

/// A readable outline: nodes in execution order with their inputs and outputs.
pub fn outline(g: &ValidatedGraph) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{} ({} nodes, {} edges)", g.name, g.nodes.len(), g.edges.len());
    for (i, node) in g.nodes.iter().enumerate() {
        let _ = writeln!(s, "  {} [{}] on {}", node.id, node.kind.name(), node.device);
        for e in g.edges.iter().filter(|e| e.to_node == i) {
            let _ = writeln!(
                s,
                "    <- {}: {}/{}  (capacity {} rows, {} bytes)",
                e.to_port, g.nodes[e.from_node].id, e.from_port, e.capacity.rows, e.capacity.bytes
            );
        }
        let outs: Vec<&str> = node.ports.outputs.iter().map(|p| p.name.as_str()).collect();
        if !outs.is_empty() {
            let _ = writeln!(s, "    -> {}", outs.join(", "));
        }
    }
    s
}

/// Graphviz DOT.
pub fn dot(g: &ValidatedGraph) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "digraph \"{}\" {{", g.name.replace('"', "'"));
    let _ = writeln!(s, "  rankdir=LR;\n  node [shape=box, fontname=\"Helvetica\"];");
    for node in &g.nodes {
        let _ = writeln!(s, "  \"{}\" [label=\"{}\\n{}\"];", node.id, node.id, node.kind.name());
    }
    for e in &g.edges {
        let style = if e.from_port == crate::node::ERROR_PORT { ", style=dashed, color=red" } else { "" };
        let _ = writeln!(
            s,
            "  \"{}\" -> \"{}\" [label=\"{} -> {}\\n{} rows\"{}];",
            g.nodes[e.from_node].id, g.nodes[e.to_node].id, e.from_port, e.to_port, e.capacity.rows, style
        );
    }
    s.push_str("}\n");
    s
}
