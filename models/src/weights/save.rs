//! Writing a module back to safetensors, in checkpoint (PyTorch) layout.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

use burn::module::Module;
use burn::tensor::DType;
use burn_store::{BurnToPyTorchAdapter, ModuleSnapshot, bridge};
use safetensors::{Dtype, View};

use super::error::WeightsError;
use super::keytable::KeyTable;

struct Owned {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl View for &Owned {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

fn st_dtype(d: DType) -> Option<Dtype> {
    Some(match d {
        DType::F32 => Dtype::F32,
        DType::F16 => Dtype::F16,
        DType::BF16 => Dtype::BF16,
        DType::F64 => Dtype::F64,
        DType::I64 => Dtype::I64,
        DType::I32 => Dtype::I32,
        DType::U8 => Dtype::U8,
        _ => return None,
    })
}

/// Writes named tensors to a safetensors file (atomically: temp file + rename).
pub fn write_tensors(
    path: impl AsRef<Path>,
    tensors: Vec<(String, burn::tensor::TensorData)>,
) -> Result<usize, WeightsError> {
    let path = path.as_ref();
    let werr = |message: String| WeightsError::Write { path: path.to_path_buf(), message };
    let mut owned = Vec::with_capacity(tensors.len());
    for (name, data) in tensors {
        let dtype = st_dtype(data.dtype()).ok_or_else(|| werr(format!("`{name}`: dtype {:?}", data.dtype())))?;
        let shape = data.shape().to_vec();
        owned.push((name, Owned { dtype, shape, bytes: data.into_bytes().to_vec() }));
    }
    write_owned(path, owned)
}

fn write_owned(path: &Path, owned: Vec<(String, Owned)>) -> Result<usize, WeightsError> {
    let n = owned.len();
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    let tmp = path.with_extension("safetensors.tmp");
    safetensors::serialize_to_file(owned.iter().map(|(k, v)| (k.as_str(), v)), Some(meta), &tmp)
        .map_err(|e| WeightsError::Write { path: path.to_path_buf(), message: e.to_string() })?;
    std::fs::rename(&tmp, path).map_err(|source| WeightsError::Io { path: path.to_path_buf(), source })?;
    Ok(n)
}

/// Saves `module` to `path` (atomically: temp file + rename).
///
/// Parameter paths go through `renames` (a [`KeyTable`] whose rename rules map module paths to
/// the desired checkpoint keys; use [`KeyTable::identity`] to keep module paths). Linear weights
/// are written `[out, in]` and norm parameters as `weight`/`bias`, so the file loads back
/// through the same table the module was loaded with when that table is a pure prefix rename.
pub fn save_module<M: Module + ModuleSnapshot>(
    module: &M,
    path: impl AsRef<Path>,
    renames: &KeyTable,
) -> Result<usize, WeightsError> {
    let path = path.as_ref();
    let werr = |message: String| WeightsError::Write { path: path.to_path_buf(), message };
    let mut owned: Vec<(String, Owned)> = Vec::new();
    for t in module.collect(None, Some(Box::new(BurnToPyTorchAdapter)), false) {
        let name = renames.module_key(&t.name).unwrap_or_else(|| t.name.clone());
        let dtype = st_dtype(t.dtype).ok_or_else(|| werr(format!("`{name}`: dtype {:?}", t.dtype)))?;
        let shape = t.shape.to_vec();
        let data = bridge::into_data(t).map_err(|e| werr(format!("`{name}`: {e}")))?;
        owned.push((name, Owned { dtype, shape, bytes: data.into_bytes().to_vec() }));
    }
    write_owned(path, owned)
}
