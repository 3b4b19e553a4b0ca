//! Loading a checkpoint into a module: map keys, check everything, then apply.

use std::collections::BTreeMap;

use burn::module::Module;
use burn::module::{ModuleVisitor, Param};
use burn::tensor::DType;
use burn::tensor::Tensor;
use burn_store::burn_pack::Tensor as PackTensor;
use burn_store::{ModuleSnapshot, PyTorchToBurnAdapter, bridge};

use super::checkpoint::{Checkpoint, stored_bytes, to_data};
use super::error::{KeyProblem, WeightsError};
use super::keytable::{KeyTable, Mapped, Source};

/// What a load may tolerate.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Checkpoint keys the module does not have are skipped instead of reported
    /// (e.g. loading only the language model out of a full VLM checkpoint).
    pub allow_unexpected: bool,
    /// Module parameters that match one of these regexes may be absent from the checkpoint
    /// (they keep their initial values), e.g. a tied head.
    pub optional: Vec<String>,
}

/// What a successful load did.
#[derive(Debug, Clone)]
pub struct LoadReport {
    /// Module parameters set from the checkpoint.
    pub applied: usize,
    /// Checkpoint keys skipped (ignored by the table or allowed as unexpected).
    pub skipped: Vec<String>,
    /// Optional module parameters left at their initial values.
    pub defaulted: Vec<String>,
    /// The checkpoint's float dtype.
    pub stored_dtype: Option<super::StoredDType>,
}

/// Records parameter paths and shapes without initialising lazy parameters.
#[derive(Default)]
struct ShapeVisitor {
    names: Vec<String>,
    types: Vec<String>,
    out: BTreeMap<String, (Vec<usize>, DType)>,
}

impl ModuleVisitor for ShapeVisitor {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.names.push(name.to_string());
        self.types.push(container_type.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.names.pop();
        self.types.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let mut shape = param.lazy_shape().to_vec();
        let dtype = if param.is_initialized() { param.val().dtype() } else { DType::F32 };
        let module = self
            .types
            .iter()
            .rev()
            .find(|t| t.starts_with("Struct:") || t.starts_with("Enum:"))
            .map(String::as_str)
            .unwrap_or("");
        let mut names = self.names.clone();
        if let Some(last) = names.last_mut() {
            let is_norm =
                matches!(module, "Struct:LayerNorm" | "Struct:RmsNorm" | "Struct:BatchNorm" | "Struct:GroupNorm");
            if module == "Struct:Linear" && last == "weight" && shape.len() == 2 {
                shape.reverse();
            } else if is_norm && last == "gamma" {
                *last = "weight".into();
            } else if is_norm && last == "beta" {
                *last = "bias".into();
            }
        }
        self.out.insert(names.join("."), (shape, dtype));
    }
}

/// The module's parameters in checkpoint layout: path -> (shape, dtype) (Linear weights
/// `[out, in]`, norm parameters named `weight`/`bias`). Lazy parameters stay uninitialised, so
/// this is cheap even for the 8B shapes.
pub fn expected_keys<M: Module>(module: &M) -> BTreeMap<String, (Vec<usize>, DType)> {
    let mut v = ShapeVisitor::default();
    module.visit(&mut v);
    v.out
}

/// Loads `checkpoint` into `module` through `table`.
///
/// Every problem (missing keys, unexpected keys, shape mismatches) is collected and returned
/// together as [`WeightsError::Mismatch`] before any tensor is applied; on success every float
/// tensor is cast to the module's float dtype.
pub fn load_module<M: Module + ModuleSnapshot>(
    module: &mut M,
    checkpoint: &Checkpoint,
    table: &KeyTable,
    options: &LoadOptions,
) -> Result<LoadReport, WeightsError> {
    let expected = expected_keys(module);
    let float = expected.values().map(|(_, d)| *d).find(|d| d.is_float()).unwrap_or(DType::F32);
    let optional = options
        .optional
        .iter()
        .map(|p| regex::Regex::new(p).map_err(|e| WeightsError::KeyTable(format!("bad pattern `{p}`: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;

    let mut mapped: BTreeMap<String, Mapped> = BTreeMap::new();
    let mut skipped = Vec::new();
    let mut problems = Vec::new();
    for entry in checkpoint.entries() {
        let targets = table.map(&entry.key, &entry.shape)?;
        if targets.is_empty() {
            skipped.push(entry.key.clone());
        }
        for m in targets {
            if let Some(prev) = mapped.get(&m.module_key) {
                return Err(WeightsError::KeyTable(format!(
                    "`{}` and `{}` both map to `{}`",
                    prev.checkpoint_key, m.checkpoint_key, m.module_key
                )));
            }
            mapped.insert(m.module_key.clone(), m);
        }
    }

    let mut defaulted = Vec::new();
    for (key, (shape, _)) in &expected {
        match mapped.get(key) {
            None if optional.iter().any(|re| re.is_match(key)) => defaulted.push(key.clone()),
            None => problems.push(KeyProblem::Missing { key: key.clone(), shape: shape.clone() }),
            Some(m) if &m.shape != shape => problems.push(KeyProblem::Shape {
                key: key.clone(),
                checkpoint_key: m.checkpoint_key.clone(),
                expected: shape.clone(),
                found: m.shape.clone(),
            }),
            Some(_) => {}
        }
    }
    let mut tensors = Vec::new();
    for (key, m) in mapped {
        if !expected.contains_key(&key) {
            if options.allow_unexpected {
                skipped.push(m.checkpoint_key);
            } else {
                problems.push(KeyProblem::Unexpected { key, checkpoint_key: m.checkpoint_key });
            }
            continue;
        }
        tensors.push(deferred_tensor(checkpoint, m, float));
    }
    if !problems.is_empty() {
        return Err(WeightsError::Mismatch { checkpoint: checkpoint.root().to_path_buf(), problems });
    }

    let applied = tensors.len();
    let result = module.apply(tensors, None, Some(Box::new(PyTorchToBurnAdapter)), false);
    if let Some(err) = result.errors.first() {
        return Err(WeightsError::Apply {
            key: format!("{err}"),
            message: format!("{} tensor(s) failed to apply", result.errors.len()),
        });
    }
    Ok(LoadReport { applied, skipped, defaulted, stored_dtype: checkpoint.float_dtype() })
}

/// A tensor whose bytes are read from the memory-mapped file when applied.
fn deferred_tensor(checkpoint: &Checkpoint, m: Mapped, float: DType) -> PackTensor {
    let entry = checkpoint.entry(&m.checkpoint_key).cloned().expect("mapped keys come from the checkpoint");
    let shards = checkpoint.shards();
    let out_dtype = if entry.dtype.is_float() { float } else { entry.dtype.burn() };
    let shape = m.shape.clone();
    let source = m.source.clone();
    bridge::deferred(m.module_key, out_dtype, shape.clone().into(), None, move || {
        let bytes = stored_bytes(&shards, &entry);
        let bytes = match &source {
            Source::Whole => bytes.to_vec(),
            Source::Part { split, index } => {
                let rows = entry.shape.first().copied().unwrap_or(0);
                let row_bytes = bytes.len() / rows.max(1);
                let ranges = split.row_ranges(rows, *index).expect("checked when the key was mapped");
                let mut out = Vec::with_capacity(shape[0] * row_bytes);
                for (start, len) in ranges {
                    out.extend_from_slice(&bytes[start * row_bytes..(start + len) * row_bytes]);
                }
                out
            }
        };
        Ok(to_data(bytes, shape.clone(), entry.dtype, float))
    })
}
