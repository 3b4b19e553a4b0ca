//! Node kinds and their registry. A kind turns a node's params (and the schemas arriving on its inputs) into
//! declared ports, and builds the running node. The runtime knows no kinds of its own: crates register theirs.

use std::collections::BTreeMap;
use std::sync::Arc;

use burn::tensor::Device;
use perceptio_schemas::port::PortSchema;
use serde::de::DeserializeOwned;

use crate::node::NodeImpl;

/// A declared port.
#[derive(Debug, Clone)]
pub struct PortDecl {
    pub name: String,
    pub schema: PortSchema,
    /// For inputs: whether the port must be connected.
    pub required: bool,
}

impl PortDecl {
    pub fn required(name: impl Into<String>, schema: PortSchema) -> Self {
        Self { name: name.into(), schema, required: true }
    }

    pub fn optional(name: impl Into<String>, schema: PortSchema) -> Self {
        Self { name: name.into(), schema, required: false }
    }
}

/// The ports of a node, given its params.
#[derive(Debug, Clone, Default)]
pub struct NodePorts {
    pub inputs: Vec<PortDecl>,
    pub outputs: Vec<PortDecl>,
}

/// A problem with a node's params, naming the field when known.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ParamError {
    pub field: Option<String>,
    pub message: String,
}

impl ParamError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: Some(field.into()), message: message.into() }
    }

    pub fn general(message: impl Into<String>) -> Self {
        Self { field: None, message: message.into() }
    }
}

/// Deserialises params into a typed struct; the error names the offending field (`a.b[2].c`).
pub fn parse_params<P: DeserializeOwned>(params: &serde_json::Value) -> Result<P, ParamError> {
    serde_path_to_error::deserialize::<_, P>(params).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        // serde reports unknown/missing fields by name in the message; keep the path when it is informative.
        let field = if path == "." { field_from_message(&inner) } else { Some(path) };
        ParamError { field, message: inner }
    })
}

fn field_from_message(message: &str) -> Option<String> {
    let start = message.find('`')? + 1;
    let end = start + message[start..].find('`')?;
    Some(message[start..end].to_string())
}

/// What a kind sees when declaring its ports.
pub struct PortContext<'a> {
    pub node_id: &'a str,
    pub params: &'a serde_json::Value,
    /// The schemas arriving on each connected input port.
    pub inputs: &'a BTreeMap<String, PortSchema>,
}

/// What a kind sees when building its node.
pub struct BuildContext<'a> {
    pub node_id: &'a str,
    pub params: &'a serde_json::Value,
    pub inputs: &'a BTreeMap<String, PortSchema>,
    pub device: Device,
}

/// A node kind: declares ports from params, builds the node.
pub trait NodeKind: Send + Sync {
    /// The `kind:` name used in dataflow files.
    fn name(&self) -> &'static str;
    /// One line for `perceptio kinds`.
    fn about(&self) -> &'static str;
    /// JSON Schema of the params.
    fn params_schema(&self) -> schemars::schema::RootSchema;
    /// The node's ports for these params and input schemas. Also the place to reject bad params.
    fn ports(&self, ctx: &PortContext<'_>) -> Result<NodePorts, ParamError>;
    /// Builds the running node.
    fn build(&self, ctx: &BuildContext<'_>) -> Result<NodeImpl, ParamError>;
}

/// The kinds a dataflow may use.
#[derive(Clone, Default)]
pub struct Registry {
    kinds: BTreeMap<&'static str, Arc<dyn NodeKind>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn register(&mut self, kind: impl NodeKind + 'static) -> &mut Self {
        self.kinds.insert(kind.name(), Arc::new(kind));
        self
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn NodeKind>> {
        self.kinds.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.kinds.keys().copied()
    }

    pub fn kinds(&self) -> impl Iterator<Item = &Arc<dyn NodeKind>> {
        self.kinds.values()
    }

    /// The dataflow JSON Schema with every registered kind's params schema attached (`if kind == K then
    /// params: schema(K)`), so editors check params too.
    pub fn dataflow_json_schema(&self) -> serde_json::Value {
        let root = crate::spec::json_schema();
        let mut schema = serde_json::to_value(&root).expect("schemars output is JSON");
        let mut rules = Vec::new();
        for kind in self.kinds.values() {
            let params = serde_json::to_value(kind.params_schema()).expect("schemars output is JSON");
            rules.push(serde_json::json!({
                "if": { "properties": { "kind": { "const": kind.name() } }, "required": ["kind"] },
                "then": { "properties": { "params": params } },
            }));
        }
        let names: Vec<&str> = self.names().collect();
        if let Some(node) = schema.pointer_mut("/definitions/NodeSpec") {
            node["allOf"] = serde_json::Value::Array(rules);
            if let Some(kind) = node.pointer_mut("/properties/kind") {
                kind["enum"] = serde_json::json!(names);
            }
        }
        schema
    }
}
