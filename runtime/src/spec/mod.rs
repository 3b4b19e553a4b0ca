//! The dataflow file: its types (which generate the JSON Schema under dataflows/), loading from YAML, device
//! names and validation. Nothing here starts a node.

pub mod device;
pub mod load;
pub mod validate;

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use device::DeviceSpec;
pub use load::{SourceMap, load_file, parse_str, parse_str_with, substitute_env, substitute_vars};
pub use validate::{ValidatedGraph, ValidationError, ValidationErrors, validate};

/// A dataflow: named nodes and the edges between their ports.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DataflowSpec {
    /// A short name shown in logs and summaries.
    #[serde(default)]
    pub name: Option<String>,
    /// What this dataflow does.
    #[serde(default)]
    pub description: Option<String>,
    /// Defaults applied to every node and edge that does not set its own.
    #[serde(default)]
    pub defaults: Defaults,
    /// The nodes, in any order (edges decide the order of execution).
    pub nodes: Vec<NodeSpec>,
}

/// Graph-wide defaults.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    /// Capacity of every edge that does not set its own.
    #[serde(default)]
    pub capacity: Option<CapacitySpec>,
    /// Device of every node that does not set its own (`cpu`, `wgpu`, `wgpu:N`, `cuda:N`).
    #[serde(default)]
    pub device: Option<String>,
}

/// One node.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    /// Unique id within the dataflow (letters, digits, `-`, `_`).
    pub id: String,
    /// The node kind (see `perceptio kinds`).
    pub kind: String,
    /// Kind-specific parameters.
    #[serde(default)]
    #[schemars(with = "Option<BTreeMap<String, serde_json::Value>>")]
    pub params: Option<serde_json::Value>,
    /// Input ports: `port: node/port`, or `port: {from: node/port, capacity: {...}}`.
    #[serde(default)]
    pub inputs: BTreeMap<String, InputSpec>,
    /// Device for this node's tensors: `cpu`, `wgpu`, `wgpu:N`, `cuda:N`.
    #[serde(default)]
    pub device: Option<String>,
}

/// Where an input port reads from.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum InputSpec {
    /// `node/port`
    Short(String),
    /// The producer and this edge's capacity.
    Full {
        from: String,
        #[serde(default)]
        capacity: Option<CapacitySpec>,
    },
}

impl InputSpec {
    pub fn source(&self) -> &str {
        match self {
            InputSpec::Short(s) => s,
            InputSpec::Full { from, .. } => from,
        }
    }

    pub fn capacity(&self) -> Option<&CapacitySpec> {
        match self {
            InputSpec::Short(_) => None,
            InputSpec::Full { capacity, .. } => capacity.as_ref(),
        }
    }
}

/// Bound of one edge: rows and bytes in flight. A full edge blocks its producer.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CapacitySpec {
    /// Maximum rows in flight (at least 1).
    #[serde(default)]
    pub rows: Option<usize>,
    /// Maximum bytes in flight: a number or a size such as `64MiB`, `1GB`.
    #[serde(default)]
    pub bytes: Option<ByteSize>,
}

/// A byte count written as a number or with a unit (`512KiB`, `64MiB`, `1GB`).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum ByteSize {
    Count(u64),
    Text(String),
}

impl ByteSize {
    pub fn to_bytes(&self) -> Result<u64, String> {
        match self {
            ByteSize::Count(n) => Ok(*n),
            ByteSize::Text(text) => parse_byte_size(text),
        }
    }
}

/// Parses `123`, `64KiB`, `64MiB`, `1GiB`, `10KB`, `5MB`, `1GB` (case-insensitive units).
pub fn parse_byte_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num.parse().map_err(|_| format!("`{text}` is not a byte size (e.g. 64MiB)"))?;
    let scale: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "kib" | "k" => 1024.0,
        "mib" | "m" => 1024.0 * 1024.0,
        "gib" | "g" => 1024.0 * 1024.0 * 1024.0,
        other => return Err(format!("unknown unit `{other}` in `{text}` (use B, KiB, MiB, GiB, KB, MB, GB)")),
    };
    Ok((value * scale).round() as u64)
}

/// The JSON Schema of dataflow files, generated from these types.
pub fn json_schema() -> schemars::schema::RootSchema {
    schemars::schema_for!(DataflowSpec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes_parse_with_units() {
        assert_eq!(parse_byte_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_byte_size("1GB").unwrap(), 1_000_000_000);
        assert_eq!(parse_byte_size("512").unwrap(), 512);
        assert_eq!(parse_byte_size("1.5KiB").unwrap(), 1536);
        assert!(parse_byte_size("12 parsecs").unwrap_err().contains("unknown unit"));
    }
}
