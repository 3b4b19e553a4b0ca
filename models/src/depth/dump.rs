//! A minimal safetensors writer for raw f32 outputs (`--dump` of the segment/depth commands):
//! header length (u64 LE), JSON header, little-endian data; written atomically.

use std::path::Path;

use super::error::DepthError;
use super::image::write_atomic;

/// One named f32 tensor.
#[derive(Debug, Clone)]
pub struct DumpTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

/// Writes the tensors to a safetensors file.
pub fn write_f32_safetensors(path: &Path, tensors: &[DumpTensor]) -> Result<(), DepthError> {
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for t in tensors {
        let n: usize = t.shape.iter().product();
        if n != t.values.len() {
            return Err(DepthError::Shape {
                what: "dump tensor",
                expected: format!("{} values for `{}` {:?}", n, t.name, t.shape),
                got: t.values.len().to_string(),
            });
        }
        let end = offset + 4 * n;
        header.insert(
            t.name.clone(),
            serde_json::json!({"dtype": "F32", "shape": t.shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let mut json = serde_json::Value::Object(header).to_string().into_bytes();
    while !json.len().is_multiple_of(8) {
        json.push(b' ');
    }
    write_atomic(path, |w| {
        w.write_all(&(json.len() as u64).to_le_bytes()).map_err(|e| e.to_string())?;
        w.write_all(&json).map_err(|e| e.to_string())?;
        for t in tensors {
            for v in &t.values {
                w.write_all(&v.to_le_bytes()).map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    })
}
