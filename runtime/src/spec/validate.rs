//! Validation of a dataflow before anything starts: kinds, ids, ports, edges, cycles, port schemas, params and
//! devices. Every problem is reported (not just the first) with file, line where known, node, port and field.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use perceptio_schemas::port::PortSchema;

use super::{DataflowSpec, DeviceSpec, SourceMap};
use crate::edge::EdgeCapacity;
use crate::kind::{NodeKind, NodePorts, PortContext, Registry};

/// One validation problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    pub file: String,
    pub line: Option<usize>,
    pub node: Option<String>,
    pub port: Option<String>,
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        f.write_str(":")?;
        let mut parts = Vec::new();
        if let Some(node) = &self.node {
            parts.push(format!("node `{node}`"));
        }
        if let Some(port) = &self.port {
            parts.push(format!("port `{port}`"));
        }
        if let Some(field) = &self.field {
            parts.push(format!("field `{field}`"));
        }
        if !parts.is_empty() {
            write!(f, " {}:", parts.join(", "))?;
        }
        write!(f, " {}", self.message)
    }
}

/// All problems found in one dataflow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationErrors(pub Vec<ValidationError>);

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ValidationErrors {}

/// One edge of a validated graph.
#[derive(Debug, Clone)]
pub struct EdgeDecl {
    pub from_node: usize,
    pub from_port: String,
    pub to_node: usize,
    pub to_port: String,
    pub capacity: EdgeCapacity,
}

/// One node of a validated graph.
#[derive(Clone)]
pub struct ValidatedNode {
    pub id: String,
    pub kind: Arc<dyn NodeKind>,
    pub params: serde_json::Value,
    pub device: DeviceSpec,
    pub ports: NodePorts,
    /// Schemas arriving on each connected input port.
    pub input_schemas: BTreeMap<String, PortSchema>,
}

/// A dataflow that passed validation: nodes in topological order and their edges.
#[derive(Clone)]
pub struct ValidatedGraph {
    pub name: String,
    pub nodes: Vec<ValidatedNode>,
    pub edges: Vec<EdgeDecl>,
}

struct Ctx<'a> {
    map: &'a SourceMap,
    errors: Vec<ValidationError>,
}

impl Ctx<'_> {
    fn push(&mut self, line: Option<usize>, node: Option<&str>, port: Option<&str>, field: Option<&str>, msg: String) {
        self.errors.push(ValidationError {
            file: self.map.file().to_string(),
            line,
            node: node.map(str::to_string),
            port: port.map(str::to_string),
            field: field.map(str::to_string),
            message: msg,
        });
    }
}

fn capacity_of(spec: Option<&super::CapacitySpec>, default: EdgeCapacity) -> Result<EdgeCapacity, (String, String)> {
    let mut cap = default;
    if let Some(c) = spec {
        if let Some(rows) = c.rows {
            if rows == 0 {
                return Err(("rows".into(), "capacity rows must be at least 1".into()));
            }
            cap.rows = rows;
        }
        if let Some(bytes) = &c.bytes {
            let b = bytes.to_bytes().map_err(|m| ("bytes".to_string(), m))?;
            if b == 0 {
                return Err(("bytes".into(), "capacity bytes must be at least 1".into()));
            }
            cap.bytes = usize::try_from(b).unwrap_or(usize::MAX);
        }
    }
    Ok(cap)
}

/// Validates a parsed dataflow against the registry.
pub fn validate(spec: &DataflowSpec, map: &SourceMap, registry: &Registry) -> Result<ValidatedGraph, ValidationErrors> {
    let mut cx = Ctx { map, errors: Vec::new() };

    // Graph-wide defaults.
    let default_capacity = match capacity_of(spec.defaults.capacity.as_ref(), EdgeCapacity::default()) {
        Ok(c) => c,
        Err((field, msg)) => {
            cx.push(None, None, None, Some(&format!("defaults.capacity.{field}")), msg);
            EdgeCapacity::default()
        }
    };
    let default_device = match spec.defaults.device.as_deref().map(str::parse::<DeviceSpec>) {
        None => DeviceSpec::Cpu,
        Some(Ok(d)) => d,
        Some(Err(m)) => {
            cx.push(None, None, None, Some("defaults.device"), m);
            DeviceSpec::Cpu
        }
    };

    // Ids: unique and well-formed.
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut seen_count: HashMap<&str, usize> = HashMap::new();
    for (i, node) in spec.nodes.iter().enumerate() {
        let nth = seen_count.entry(node.id.as_str()).or_insert(0);
        let line = map.node_line(&node.id, *nth);
        *nth += 1;
        if node.id.is_empty() || !node.id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            cx.push(line, Some(&node.id), None, Some("id"), "node ids use letters, digits, `-` and `_`".into());
        }
        if let Some(&first) = index.get(node.id.as_str()) {
            let first_line = map.node_line(&node.id, 0).map(|l| format!(" at line {l}")).unwrap_or_default();
            let _ = first;
            cx.push(line, Some(&node.id), None, Some("id"), format!("duplicate node id (first defined{first_line})"));
        } else {
            index.insert(node.id.as_str(), i);
        }
    }

    // Kinds.
    let kinds: Vec<Option<Arc<dyn NodeKind>>> = spec
        .nodes
        .iter()
        .map(|node| {
            let kind = registry.get(&node.kind).cloned();
            if kind.is_none() {
                let known: Vec<&str> = registry.names().collect();
                cx.push(
                    map.key_line(&node.id, "kind"),
                    Some(&node.id),
                    None,
                    Some("kind"),
                    format!("unknown node kind `{}` (known kinds: {})", node.kind, known.join(", ")),
                );
            }
            kind
        })
        .collect();

    // Edges: references resolve to existing nodes; capacities are valid.
    let mut edges: Vec<EdgeDecl> = Vec::new();
    for (to, node) in spec.nodes.iter().enumerate() {
        for (port, input) in &node.inputs {
            let line = map.key_line(&node.id, port);
            let Some((from_id, from_port)) = input.source().split_once('/') else {
                cx.push(
                    line,
                    Some(&node.id),
                    Some(port),
                    None,
                    format!("input `{}` must be written `node/port`", input.source()),
                );
                continue;
            };
            let Some(&from) = index.get(from_id) else {
                cx.push(line, Some(&node.id), Some(port), None, format!("reads from unknown node `{from_id}`"));
                continue;
            };
            let capacity = match capacity_of(input.capacity(), default_capacity) {
                Ok(c) => c,
                Err((field, msg)) => {
                    cx.push(line, Some(&node.id), Some(port), Some(&format!("capacity.{field}")), msg);
                    default_capacity
                }
            };
            edges.push(EdgeDecl {
                from_node: from,
                from_port: from_port.to_string(),
                to_node: to,
                to_port: port.clone(),
                capacity,
            });
        }
    }

    // Order: topological, or a cycle.
    let order = match topological_order(spec.nodes.len(), &edges) {
        Ok(order) => Some(order),
        Err(cycle) => {
            let path: Vec<&str> = cycle.iter().map(|&i| spec.nodes[i].id.as_str()).collect();
            let first = &spec.nodes[cycle[0]].id;
            cx.push(map.node_line(first, 0), Some(first), None, None, format!("cycle: {}", path.join(" -> ")));
            None
        }
    };

    // Ports, params and schemas, in topological order so producers' schemas are known.
    let mut ports: Vec<Option<NodePorts>> = vec![None; spec.nodes.len()];
    let mut input_schemas: Vec<BTreeMap<String, PortSchema>> = vec![BTreeMap::new(); spec.nodes.len()];
    let mut devices = vec![default_device; spec.nodes.len()];
    if let Some(order) = &order {
        for &i in order {
            let node = &spec.nodes[i];
            if let Some(d) = &node.device {
                match d.parse::<DeviceSpec>() {
                    Ok(dev) => devices[i] = dev,
                    Err(m) => cx.push(map.key_line(&node.id, "device"), Some(&node.id), None, Some("device"), m),
                }
            }
            if let Err(m) = devices[i].check_available() {
                let line = map.key_line(&node.id, "device").or_else(|| map.node_line(&node.id, 0));
                cx.push(line, Some(&node.id), None, Some("device"), m);
            }
            let Some(kind) = &kinds[i] else { continue };
            // Schemas arriving on this node's inputs (from producers already resolved).
            for edge in edges.iter().filter(|e| e.to_node == i) {
                let producer = &spec.nodes[edge.from_node];
                let line = map.key_line(&node.id, &edge.to_port);
                let Some(producer_ports) = &ports[edge.from_node] else { continue };
                match producer_ports.outputs.iter().find(|p| p.name == edge.from_port) {
                    Some(out) => {
                        input_schemas[i].insert(edge.to_port.clone(), out.schema.clone());
                    }
                    None => {
                        let names: Vec<&str> = producer_ports.outputs.iter().map(|p| p.name.as_str()).collect();
                        cx.push(
                            line,
                            Some(&node.id),
                            Some(&edge.to_port),
                            None,
                            format!(
                                "node `{}` ({}) has no output port `{}` (outputs: {})",
                                producer.id,
                                producer.kind,
                                edge.from_port,
                                if names.is_empty() { "none".to_string() } else { names.join(", ") }
                            ),
                        );
                    }
                }
            }
            let params = node.params.clone().unwrap_or_else(|| serde_json::Value::Object(Default::default()));
            let pctx = PortContext { node_id: &node.id, params: &params, inputs: &input_schemas[i] };
            match kind.ports(&pctx) {
                Ok(p) => {
                    check_inputs(&mut cx, node, &p, &input_schemas[i], &edges, i, &spec.nodes);
                    ports[i] = Some(p);
                }
                Err(e) => {
                    let line = e
                        .field
                        .as_deref()
                        .and_then(|f| map.key_line(&node.id, f.rsplit(['.', '[']).next().unwrap_or(f)))
                        .or_else(|| map.key_line(&node.id, "params"));
                    cx.push(line, Some(&node.id), None, e.field.as_deref(), format!("bad params: {}", e.message));
                }
            }
        }
    }

    if !cx.errors.is_empty() {
        return Err(ValidationErrors(cx.errors));
    }
    let order = order.expect("no errors implies an order");
    let mut position = vec![0; spec.nodes.len()];
    for (pos, &i) in order.iter().enumerate() {
        position[i] = pos;
    }
    let nodes = order
        .iter()
        .map(|&i| ValidatedNode {
            id: spec.nodes[i].id.clone(),
            kind: kinds[i].clone().expect("no errors implies known kinds"),
            params: spec.nodes[i].params.clone().unwrap_or_else(|| serde_json::Value::Object(Default::default())),
            device: devices[i],
            ports: ports[i].clone().expect("no errors implies resolved ports"),
            input_schemas: input_schemas[i].clone(),
        })
        .collect();
    let edges = edges
        .into_iter()
        .map(|e| EdgeDecl { from_node: position[e.from_node], to_node: position[e.to_node], ..e })
        .collect();
    Ok(ValidatedGraph { name: spec.name.clone().unwrap_or_else(|| "dataflow".into()), nodes, edges })
}

fn check_inputs(
    cx: &mut Ctx<'_>,
    node: &super::NodeSpec,
    ports: &NodePorts,
    arriving: &BTreeMap<String, PortSchema>,
    edges: &[EdgeDecl],
    me: usize,
    all: &[super::NodeSpec],
) {
    let declared: Vec<&str> = ports.inputs.iter().map(|p| p.name.as_str()).collect();
    for port in node.inputs.keys() {
        if !declared.contains(&port.as_str()) {
            cx.push(
                cx.map.key_line(&node.id, port),
                Some(&node.id),
                Some(port),
                None,
                format!(
                    "unknown input port (kind `{}` has inputs: {})",
                    node.kind,
                    if declared.is_empty() { "none".to_string() } else { declared.join(", ") }
                ),
            );
        }
    }
    for decl in &ports.inputs {
        if decl.required && !node.inputs.contains_key(&decl.name) {
            let line = cx.map.key_line(&node.id, "inputs").or_else(|| cx.map.node_line(&node.id, 0));
            cx.push(line, Some(&node.id), Some(&decl.name), None, "required input is not connected".into());
        }
        if let Some(schema) = arriving.get(&decl.name) {
            if let Err(mismatches) = schema.satisfies(&decl.schema) {
                let from = edges
                    .iter()
                    .find(|e| e.to_node == me && e.to_port == decl.name)
                    .map(|e| format!("{}/{}", all[e.from_node].id, e.from_port))
                    .unwrap_or_default();
                for m in mismatches {
                    let field = match &m {
                        perceptio_schemas::SchemaMismatch::MissingField { field }
                        | perceptio_schemas::SchemaMismatch::FieldType { field, .. } => field.clone(),
                        perceptio_schemas::SchemaMismatch::MissingTensor { tensor }
                        | perceptio_schemas::SchemaMismatch::TensorType { tensor, .. } => tensor.clone(),
                    };
                    cx.push(
                        cx.map.key_line(&node.id, &decl.name),
                        Some(&node.id),
                        Some(&decl.name),
                        Some(&field),
                        format!("schema mismatch with `{from}`: {m}"),
                    );
                }
            }
        }
    }
}

/// Kahn's algorithm. On a cycle, returns one cycle's node indices (first node repeated at the end).
fn topological_order(n: usize, edges: &[EdgeDecl]) -> Result<Vec<usize>, Vec<usize>> {
    let mut indegree = vec![0usize; n];
    let mut succ: Vec<Vec<usize>> = vec![Vec::new(); n];
    for e in edges {
        indegree[e.to_node] += 1;
        succ[e.from_node].push(e.to_node);
    }
    let mut ready: std::collections::VecDeque<usize> = (0..n).filter(|&i| indegree[i] == 0).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(i) = ready.pop_front() {
        order.push(i);
        for &j in &succ[i] {
            indegree[j] -= 1;
            if indegree[j] == 0 {
                ready.push_back(j);
            }
        }
    }
    if order.len() == n {
        return Ok(order);
    }
    // Every node left over has a predecessor that is also left over: walking predecessors must repeat a node,
    // and the repeated stretch, reversed, is a cycle.
    let left = |i: usize| indegree[i] > 0;
    let start = (0..n).find(|&i| left(i)).expect("some node is left");
    let mut path = vec![start];
    let mut current = start;
    loop {
        let prev = edges
            .iter()
            .find(|e| e.to_node == current && left(e.from_node))
            .map(|e| e.from_node)
            .expect("a left-over node has a left-over predecessor");
        if let Some(pos) = path.iter().position(|&p| p == prev) {
            let mut cycle: Vec<usize> = path[pos..].to_vec();
            cycle.reverse();
            cycle.insert(0, prev);
            return Err(cycle);
        }
        path.push(prev);
        current = prev;
    }
}
