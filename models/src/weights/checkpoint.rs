//! A safetensors checkpoint as users have it: one file, a folder with `model.safetensors`, or a
//! folder of shards listed by `model.safetensors.index.json`. Files are memory-mapped; tensor
//! data is read (and converted) only when asked for.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::tensor::{DType, TensorData};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use super::error::WeightsError;

/// Element type of a stored tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredDType {
    F32,
    F16,
    BF16,
    F64,
    I64,
    I32,
    U8,
    Bool,
}

impl StoredDType {
    fn from_safetensors(d: Dtype) -> Option<Self> {
        Some(match d {
            Dtype::F32 => Self::F32,
            Dtype::F16 => Self::F16,
            Dtype::BF16 => Self::BF16,
            Dtype::F64 => Self::F64,
            Dtype::I64 => Self::I64,
            Dtype::I32 => Self::I32,
            Dtype::U8 => Self::U8,
            Dtype::BOOL => Self::Bool,
            _ => return None,
        })
    }

    /// The burn dtype of the stored bytes.
    pub fn burn(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::F16 => DType::F16,
            Self::BF16 => DType::BF16,
            Self::F64 => DType::F64,
            Self::I64 => DType::I64,
            Self::I32 => DType::I32,
            Self::U8 => DType::U8,
            Self::Bool => DType::Bool(burn::tensor::BoolStore::Native),
        }
    }

    /// Whether this is a floating-point type.
    pub fn is_float(self) -> bool {
        matches!(self, Self::F32 | Self::F16 | Self::BF16 | Self::F64)
    }
}

/// One tensor of a checkpoint: where it lives and what it is.
#[derive(Debug, Clone)]
pub struct Entry {
    pub key: String,
    pub dtype: StoredDType,
    pub shape: Vec<usize>,
    file: usize,
    range: (usize, usize),
}

pub(crate) struct Shard {
    path: PathBuf,
    map: Mmap,
    data_start: usize,
}

/// A set of memory-mapped safetensors files seen as one key -> tensor map.
#[derive(Clone)]
pub struct Checkpoint {
    root: PathBuf,
    shards: Arc<Vec<Shard>>,
    entries: BTreeMap<String, Entry>,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("root", &self.root)
            .field("files", &self.shards.len())
            .field("tensors", &self.entries.len())
            .finish()
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> WeightsError + '_ {
    move |source| WeightsError::Io { path: path.to_path_buf(), source }
}

impl Checkpoint {
    /// Opens a `.safetensors` file or a checkpoint folder.
    ///
    /// In a folder: `model.safetensors.index.json` (sharded) wins, then `model.safetensors`,
    /// then every `*.safetensors` file in it.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, WeightsError> {
        let path = path.as_ref();
        let files = if path.is_file() {
            vec![path.to_path_buf()]
        } else if path.is_dir() {
            let index = path.join("model.safetensors.index.json");
            let single = path.join("model.safetensors");
            if index.is_file() {
                Self::shards_from_index(&index)?
            } else if single.is_file() {
                vec![single]
            } else {
                let mut all: Vec<PathBuf> = std::fs::read_dir(path)
                    .map_err(io(path))?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
                    .collect();
                all.sort();
                if all.is_empty() {
                    return Err(WeightsError::NoCheckpoint { path: path.to_path_buf() });
                }
                all
            }
        } else {
            return Err(WeightsError::NoCheckpoint { path: path.to_path_buf() });
        };
        Self::open_files(path, &files)
    }

    fn shards_from_index(index: &Path) -> Result<Vec<PathBuf>, WeightsError> {
        let text = std::fs::read_to_string(index).map_err(io(index))?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| WeightsError::Index { path: index.to_path_buf(), message: e.to_string() })?;
        let map = json.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| WeightsError::Index {
            path: index.to_path_buf(),
            message: "no `weight_map` object".into(),
        })?;
        let dir = index.parent().unwrap_or(Path::new("."));
        let mut files: Vec<PathBuf> = Vec::new();
        for (key, file) in map {
            let name = file.as_str().ok_or_else(|| WeightsError::Index {
                path: index.to_path_buf(),
                message: format!("`{key}` maps to a non-string"),
            })?;
            let p = dir.join(name);
            if !files.contains(&p) {
                files.push(p);
            }
        }
        files.sort();
        Ok(files)
    }

    fn open_files(root: &Path, files: &[PathBuf]) -> Result<Self, WeightsError> {
        let mut shards = Vec::with_capacity(files.len());
        let mut entries: BTreeMap<String, Entry> = BTreeMap::new();
        for (i, file) in files.iter().enumerate() {
            let handle = std::fs::File::open(file).map_err(io(file))?;
            // SAFETY: the file is opened read-only; checkpoints are not modified while loaded.
            let map = unsafe { Mmap::map(&handle) }.map_err(io(file))?;
            let bad = |message: String| WeightsError::Safetensors { path: file.clone(), message };
            let (header_len, meta) = SafeTensors::read_metadata(&map).map_err(|e| bad(e.to_string()))?;
            let data_start = 8 + header_len;
            for (key, info) in meta.tensors() {
                let dtype =
                    StoredDType::from_safetensors(info.dtype).ok_or_else(|| WeightsError::UnsupportedDType {
                        path: file.clone(),
                        key: key.clone(),
                        dtype: format!("{:?}", info.dtype),
                    })?;
                let (a, b) = info.data_offsets;
                if data_start + b > map.len() {
                    return Err(bad(format!("tensor `{key}` runs past the end of the file")));
                }
                if let Some(prev) = entries.get(&key) {
                    return Err(WeightsError::DuplicateKey {
                        key,
                        first: files[prev.file].clone(),
                        second: file.clone(),
                    });
                }
                entries.insert(key.clone(), Entry { key, dtype, shape: info.shape.clone(), file: i, range: (a, b) });
            }
            shards.push(Shard { path: file.clone(), map, data_start });
        }
        Ok(Self { root: root.to_path_buf(), shards: Arc::new(shards), entries })
    }

    /// The file or folder this checkpoint was opened from.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// All tensors, by key (sorted).
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values()
    }

    /// One tensor's description.
    pub fn entry(&self, key: &str) -> Option<&Entry> {
        self.entries.get(key)
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the checkpoint holds no tensor.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The dtype of the first float tensor (what the checkpoint was saved as).
    pub fn float_dtype(&self) -> Option<StoredDType> {
        self.entries.values().map(|e| e.dtype).find(|d| d.is_float())
    }

    /// Reads one tensor; float tensors are converted to `float` (ints are kept).
    pub fn read(&self, key: &str, float: DType) -> Result<TensorData, WeightsError> {
        let entry = self.entries.get(key).ok_or_else(|| WeightsError::Apply {
            key: key.to_string(),
            message: "no such key in the checkpoint".into(),
        })?;
        Ok(self.read_entry(entry, float))
    }

    pub(crate) fn read_entry(&self, entry: &Entry, float: DType) -> TensorData {
        to_data(stored_bytes(&self.shards, entry).to_vec(), entry.shape.clone(), entry.dtype, float)
    }

    /// The shared file maps (for deferred readers).
    pub(crate) fn shards(&self) -> Arc<Vec<Shard>> {
        self.shards.clone()
    }

    /// The file a tensor is stored in.
    pub fn file_of(&self, key: &str) -> Option<&Path> {
        self.entries.get(key).map(|e| self.shards[e.file].path.as_path())
    }
}

/// The raw little-endian bytes of one stored tensor.
pub(crate) fn stored_bytes<'a>(shards: &'a [Shard], entry: &Entry) -> &'a [u8] {
    let shard = &shards[entry.file];
    &shard.map[shard.data_start + entry.range.0..shard.data_start + entry.range.1]
}

/// Builds tensor data from stored bytes, converting floats to `float`.
pub(crate) fn to_data(bytes: Vec<u8>, shape: Vec<usize>, dtype: StoredDType, float: DType) -> TensorData {
    let data = TensorData::from_bytes_vec(bytes, shape, dtype.burn());
    if dtype.is_float() && dtype.burn() != float { data.convert_dtype(float) } else { data }
}
