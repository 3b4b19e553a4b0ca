//! Key tables: how checkpoint keys become module parameter paths.
//!
//! A table is an ordered list of rules applied to every checkpoint key:
//! - `rename(pattern, replacement)`: regex substitution (`$1`-style groups), all matching rules in
//!   order, each on the result of the previous one;
//! - `ignore(pattern)`: keys that are not parameters (`rotary_emb.inv_freq`, ...), matched on the
//!   original key;
//! - `split(pattern, Split)`: a fused tensor (matched after renaming) becomes several module
//!   tensors, cut along its first dimension.

use regex::Regex;

use super::error::WeightsError;

/// How a fused tensor is cut along dimension 0.
///
/// The rows are viewed as `[groups, sum(parts) units, unit rows]`; part `i` takes `parts[i]`
/// units from every group. `groups = 1, parts = [1, 1, 1]` is an equal q/k/v split;
/// InternLM2's `wqkv` is `groups = kv_heads, parts = [heads / kv_heads, 1, 1]` with one unit
/// per head.
#[derive(Debug, Clone)]
pub struct Split {
    /// Replacement templates of the parts (applied to the matched, renamed key).
    pub targets: Vec<String>,
    /// Number of interleaved groups.
    pub groups: usize,
    /// Units per group taken by each part.
    pub parts: Vec<usize>,
}

impl Split {
    /// Equal split into `targets.len()` consecutive blocks.
    pub fn equal(targets: &[&str]) -> Self {
        Self { targets: targets.iter().map(|s| s.to_string()).collect(), groups: 1, parts: vec![1; targets.len()] }
    }

    /// Row ranges of part `index` for a tensor with `rows` rows: one `(start, len)` per group.
    pub fn row_ranges(&self, rows: usize, index: usize) -> Option<Vec<(usize, usize)>> {
        let units: usize = self.parts.iter().sum();
        if self.groups == 0 || units == 0 || rows % (self.groups * units) != 0 {
            return None;
        }
        let unit = rows / (self.groups * units);
        let offset: usize = self.parts[..index].iter().sum();
        let group_rows = units * unit;
        Some((0..self.groups).map(|g| (g * group_rows + offset * unit, self.parts[index] * unit)).collect())
    }
}

#[derive(Debug, Clone)]
enum Rule {
    Rename(Regex, String),
    Ignore(Regex),
    Split(Regex, Split),
}

/// Where one module tensor comes from.
#[derive(Debug, Clone)]
pub(crate) enum Source {
    Whole,
    Part { split: Split, index: usize },
}

/// A checkpoint key mapped to a module path.
#[derive(Debug, Clone)]
pub(crate) struct Mapped {
    pub module_key: String,
    pub checkpoint_key: String,
    pub shape: Vec<usize>,
    pub source: Source,
}

/// An ordered list of rename / ignore / split rules (see the module doc).
#[derive(Debug, Clone, Default)]
pub struct KeyTable {
    rules: Vec<Rule>,
}

fn compile(pattern: &str) -> Result<Regex, WeightsError> {
    Regex::new(pattern).map_err(|e| WeightsError::KeyTable(format!("bad pattern `{pattern}`: {e}")))
}

impl KeyTable {
    /// The identity table: checkpoint keys are module paths.
    pub fn identity() -> Self {
        Self::default()
    }

    /// Adds a regex rename.
    pub fn rename(mut self, pattern: &str, replacement: &str) -> Result<Self, WeightsError> {
        self.rules.push(Rule::Rename(compile(pattern)?, replacement.to_string()));
        Ok(self)
    }

    /// Adds a rule dropping keys that match (on the original checkpoint key).
    pub fn ignore(mut self, pattern: &str) -> Result<Self, WeightsError> {
        self.rules.push(Rule::Ignore(compile(pattern)?));
        Ok(self)
    }

    /// Adds a split of fused tensors (pattern matched after the renames).
    pub fn split(mut self, pattern: &str, split: Split) -> Result<Self, WeightsError> {
        if split.targets.len() != split.parts.len() || split.targets.is_empty() {
            return Err(WeightsError::KeyTable(format!(
                "split `{pattern}`: {} targets for {} parts",
                split.targets.len(),
                split.parts.len()
            )));
        }
        self.rules.push(Rule::Split(compile(pattern)?, split));
        Ok(self)
    }

    /// Appends the rules of `other` after these.
    pub fn then(mut self, other: KeyTable) -> Self {
        self.rules.extend(other.rules);
        self
    }

    /// Whether a checkpoint key is dropped.
    pub fn is_ignored(&self, key: &str) -> bool {
        self.rules.iter().any(|r| matches!(r, Rule::Ignore(re) if re.is_match(key)))
    }

    /// The module path of a checkpoint key (renames only; `None` if ignored).
    pub fn module_key(&self, key: &str) -> Option<String> {
        if self.is_ignored(key) {
            return None;
        }
        let mut out = key.to_string();
        for rule in &self.rules {
            if let Rule::Rename(re, rep) = rule {
                out = re.replace_all(&out, rep.as_str()).into_owned();
            }
        }
        Some(out)
    }

    /// Maps one checkpoint tensor to the module tensors it provides.
    pub(crate) fn map(&self, key: &str, shape: &[usize]) -> Result<Vec<Mapped>, WeightsError> {
        let Some(renamed) = self.module_key(key) else {
            return Ok(Vec::new());
        };
        for rule in &self.rules {
            let Rule::Split(re, split) = rule else {
                continue;
            };
            if !re.is_match(&renamed) {
                continue;
            }
            let rows = shape.first().copied().unwrap_or(0);
            let mut out = Vec::with_capacity(split.targets.len());
            for (index, target) in split.targets.iter().enumerate() {
                let ranges = split.row_ranges(rows, index).ok_or_else(|| WeightsError::Split {
                    key: key.to_string(),
                    message: format!(
                        "{rows} rows do not divide into {} groups of {:?} units",
                        split.groups, split.parts
                    ),
                })?;
                let mut part_shape = shape.to_vec();
                part_shape[0] = ranges.iter().map(|r| r.1).sum();
                out.push(Mapped {
                    module_key: re.replace(&renamed, target.as_str()).into_owned(),
                    checkpoint_key: key.to_string(),
                    shape: part_shape,
                    source: Source::Part { split: split.clone(), index },
                });
            }
            return Ok(out);
        }
        Ok(vec![Mapped {
            module_key: renamed,
            checkpoint_key: key.to_string(),
            shape: shape.to_vec(),
            source: Source::Whole,
        }])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renames_apply_in_order() {
        let t = KeyTable::identity()
            .rename(r"^language_model\.model\.", "language_model.")
            .unwrap()
            .rename(r"\.attention_norm\.", ".input_layernorm.")
            .unwrap()
            .ignore(r"inv_freq$")
            .unwrap();
        assert_eq!(
            t.module_key("language_model.model.layers.3.attention_norm.weight").as_deref(),
            Some("language_model.layers.3.input_layernorm.weight")
        );
        assert_eq!(t.module_key("x.rotary_emb.inv_freq"), None);
    }

    #[test]
    fn grouped_split_takes_interleaved_rows() {
        // 2 kv groups, 2 q heads per group, head rows 1: rows = 2 * (2 + 1 + 1) = 8
        let s = Split { targets: vec!["q".into(), "k".into(), "v".into()], groups: 2, parts: vec![2, 1, 1] };
        assert_eq!(s.row_ranges(8, 0).unwrap(), vec![(0, 2), (4, 2)]);
        assert_eq!(s.row_ranges(8, 1).unwrap(), vec![(2, 1), (6, 1)]);
        assert_eq!(s.row_ranges(8, 2).unwrap(), vec![(3, 1), (7, 1)]);
        assert!(s.row_ranges(7, 0).is_none());
    }

    #[test]
    fn split_maps_to_targets_with_shapes() {
        let t = KeyTable::identity()
            .split(r"attn\.qkv\.(weight|bias)$", Split::equal(&["q_proj.$1", "k_proj.$1", "v_proj.$1"]))
            .unwrap();
        let m = t.map("l.attn.qkv.weight", &[12, 4]).unwrap();
        let keys: Vec<_> = m.iter().map(|m| m.module_key.as_str()).collect();
        assert_eq!(keys, ["l.q_proj.weight", "l.k_proj.weight", "l.v_proj.weight"]);
        assert!(m.iter().all(|m| m.shape == vec![4, 4]));
        assert!(t.map("l.attn.qkv.weight", &[10, 4]).is_err());
    }
}
