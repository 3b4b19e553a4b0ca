//! Reading dataflow files: YAML -> [`DataflowSpec`], plus a [`SourceMap`] that finds the line of a node, one of
//! its keys, or an input port, so validation errors can point at the exact place.

use std::path::Path;

use super::DataflowSpec;
use super::validate::{ValidationError, ValidationErrors};

/// Line lookup for a dataflow file's text (lines are 1-based).
#[derive(Debug, Clone, Default)]
pub struct SourceMap {
    file: String,
    lines: Vec<String>,
    /// (node id, line of its `id:` key)
    node_lines: Vec<(String, usize)>,
}

impl SourceMap {
    pub fn new(file: impl Into<String>, text: &str) -> Self {
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        let mut node_lines = Vec::new();
        for (i, line) in lines.iter().enumerate() {
            let t = line.trim_start().trim_start_matches("- ").trim_start();
            if let Some(rest) = t.strip_prefix("id:") {
                let id = rest.split('#').next().unwrap_or("").trim().trim_matches(|c| c == '"' || c == '\'');
                node_lines.push((id.to_string(), i + 1));
            }
        }
        Self { file: file.into(), lines, node_lines }
    }

    pub fn file(&self) -> &str {
        &self.file
    }

    /// Line of the `id:` of the `nth` node with this id (0 for the first; duplicates have several).
    pub fn node_line(&self, id: &str, nth: usize) -> Option<usize> {
        self.node_lines.iter().filter(|(n, _)| n == id).nth(nth).map(|(_, l)| *l)
    }

    /// The list item (`- `) line that opens the block containing `line`.
    fn item_start(&self, line: usize) -> usize {
        let mut start = line;
        while start > 1 && !self.lines[start - 1].trim_start().starts_with("- ") {
            start -= 1;
        }
        start
    }

    /// The line range `[start, end)` of a node's block: from its list item to the next node's.
    fn node_block(&self, id: &str) -> Option<(usize, usize)> {
        let start = self.item_start(self.node_line(id, 0)?);
        let end = self
            .node_lines
            .iter()
            .map(|(_, l)| self.item_start(*l))
            .filter(|s| *s > start)
            .min()
            .unwrap_or(self.lines.len() + 1);
        Some((start, end))
    }

    /// Line of `key:` inside a node's block (e.g. `kind`, `device`, an input port name, a parameter name).
    pub fn key_line(&self, id: &str, key: &str) -> Option<usize> {
        let (start, end) = self.node_block(id)?;
        let pattern = format!("{key}:");
        (start..end).find(|&l| {
            let t = self.lines[l - 1].trim_start().trim_start_matches("- ").trim_start();
            t.starts_with(&pattern) || t.starts_with(&format!("\"{key}\":"))
        })
    }
}

/// Parses dataflow YAML text. `file` is used in error messages.
pub fn parse_str(file: &str, text: &str) -> Result<(DataflowSpec, SourceMap), ValidationErrors> {
    let map = SourceMap::new(file, text);
    match serde_yaml::from_str::<DataflowSpec>(text) {
        Ok(spec) => Ok((spec, map)),
        Err(e) => {
            let line = e.location().map(|l| l.line());
            let message = e.to_string();
            // serde_yaml appends " at line X column Y"; the location is reported separately.
            let message = match message.find(" at line ") {
                Some(i) => message[..i].to_string(),
                None => message,
            };
            Err(ValidationErrors(vec![ValidationError {
                file: file.to_string(),
                line,
                node: None,
                port: None,
                field: None,
                message: format!("invalid dataflow file: {message}"),
            }]))
        }
    }
}

/// Reads and parses a dataflow file.
pub fn load_file(path: &Path) -> Result<(DataflowSpec, SourceMap), ValidationErrors> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        ValidationErrors(vec![ValidationError {
            file: file.clone(),
            line: None,
            node: None,
            port: None,
            field: None,
            message: format!("cannot read dataflow file: {e}"),
        }])
    })?;
    parse_str(&file, &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_map_finds_nodes_and_keys() {
        let text = "nodes:\n  - id: a\n    kind: k\n    params:\n      size: 3\n  - kind: j\n    id: b\n    inputs:\n      in: a/out\n";
        let map = SourceMap::new("f.yaml", text);
        assert_eq!(map.node_line("a", 0), Some(2));
        assert_eq!(map.node_line("b", 0), Some(7));
        assert_eq!(map.key_line("a", "kind"), Some(3));
        assert_eq!(map.key_line("a", "size"), Some(5));
        assert_eq!(map.key_line("b", "kind"), Some(6));
        assert_eq!(map.key_line("b", "in"), Some(9));
        assert_eq!(map.key_line("a", "in"), None);
    }
}
