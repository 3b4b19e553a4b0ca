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

/// Replaces `${NAME}` and `${NAME:-default}` with environment variables, so one dataflow file can point at
/// different data or devices. An unset variable without a default is an error naming it and its line.
pub fn substitute_env(file: &str, text: &str) -> Result<String, ValidationErrors> {
    substitute_vars(file, text, &|name| std::env::var(name).ok())
}

/// [`substitute_env`] with another source of values (e.g. a map given by an embedding program).
pub fn substitute_vars(
    file: &str,
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, ValidationErrors> {
    let mut out = String::with_capacity(text.len());
    let mut errors = Vec::new();
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let mut rest = line;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let Some(len) = rest[start..].find('}') else {
                out.push_str(&rest[start..]);
                rest = "";
                break;
            };
            let inner = &rest[start + 2..start + len];
            let (name, default) = match inner.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (inner, None),
            };
            match (lookup(name), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => errors.push(ValidationError {
                    file: file.to_string(),
                    line: Some(i + 1),
                    node: None,
                    port: None,
                    field: None,
                    message: format!(
                        "environment variable `{name}` is not set (write `${{{name}:-default}}` to give a default)"
                    ),
                }),
            }
            rest = &rest[start + len + 1..];
        }
        out.push_str(rest);
    }
    if errors.is_empty() { Ok(out) } else { Err(ValidationErrors(errors)) }
}

/// Parses dataflow YAML text (after `${VAR}` substitution from the environment). `file` is used in errors.
pub fn parse_str(file: &str, text: &str) -> Result<(DataflowSpec, SourceMap), ValidationErrors> {
    parse_str_with(file, text, &|name| std::env::var(name).ok())
}

/// [`parse_str`] with `${VAR}` values from `lookup` instead of the environment.
pub fn parse_str_with(
    file: &str,
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(DataflowSpec, SourceMap), ValidationErrors> {
    let text = &substitute_vars(file, text, lookup)?;
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

    #[test]
    fn environment_variables_are_substituted_with_defaults() {
        // SAFETY: tests in this module do not read this variable concurrently.
        unsafe { std::env::set_var("PERCEPTIO_TEST_DATA", "/data") };
        let text = "a: ${PERCEPTIO_TEST_DATA}/x\nb: ${PERCEPTIO_TEST_UNSET:-fallback}\n";
        assert_eq!(substitute_env("f.yaml", text).unwrap(), "a: /data/x\nb: fallback\n");
        let err = substitute_env("f.yaml", "x: 1\ny: ${PERCEPTIO_TEST_UNSET}\n").unwrap_err().to_string();
        assert_eq!(
            err,
            "f.yaml:2: environment variable `PERCEPTIO_TEST_UNSET` is not set (write `${PERCEPTIO_TEST_UNSET:-default}` to give a default)"
        );
    }
}
