//! Frame <-> pure Arrow. Tensor attachments become `arrow.fixed_shape_tensor` extension columns (one
//! fixed-size list per row, shape = the tensor's dimensions after the first). Used where a frame leaves the
//! process (IPC) or reaches disk (parquet); in-process edges never call this.
//!
//! Arrow has no bfloat16 type: bf16 tensors are stored as `UInt16` bit patterns and the field metadata key
//! `perceptio.dtype = bf16` says so. Every tensor column also records `perceptio.kind` (float/int/bool).

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, FixedSizeListArray, RecordBatch, make_array};
use arrow::buffer::Buffer;
use arrow::datatypes::{DataType, Field, Schema};
use burn::tensor::{DType, Device, TensorData};
use perceptio_schemas::port::TensorKind;

use super::{AnyTensor, Frame, FrameError};

const KIND_KEY: &str = "perceptio.kind";
const DTYPE_KEY: &str = "perceptio.dtype";
const EXTENSION_NAME_KEY: &str = "ARROW:extension:name";
const EXTENSION_METADATA_KEY: &str = "ARROW:extension:metadata";
const FIXED_SHAPE_TENSOR: &str = "arrow.fixed_shape_tensor";

/// The parts of `arrow.fixed_shape_tensor` metadata this reader supports.
#[derive(serde::Deserialize)]
struct TensorMetadata {
    shape: Vec<usize>,
    #[serde(default)]
    permutation: Option<Vec<usize>>,
}

fn arrow_type(dtype: DType) -> Option<DataType> {
    Some(match dtype {
        DType::F64 => DataType::Float64,
        DType::F32 | DType::Flex32 => DataType::Float32,
        DType::F16 => DataType::Float16,
        DType::BF16 => DataType::UInt16,
        DType::I64 => DataType::Int64,
        DType::I32 => DataType::Int32,
        DType::I16 => DataType::Int16,
        DType::I8 => DataType::Int8,
        DType::U64 => DataType::UInt64,
        DType::U32 => DataType::UInt32,
        DType::U16 => DataType::UInt16,
        DType::U8 => DataType::UInt8,
        DType::Bool(_) => DataType::Boolean,
        DType::QFloat(_) => return None,
    })
}

fn burn_dtype(data_type: &DataType, bf16: bool) -> Option<DType> {
    Some(match data_type {
        DataType::Float64 => DType::F64,
        DataType::Float32 => DType::F32,
        DataType::Float16 => DType::F16,
        DataType::UInt16 if bf16 => DType::BF16,
        DataType::Int64 => DType::I64,
        DataType::Int32 => DType::I32,
        DataType::Int16 => DType::I16,
        DataType::Int8 => DType::I8,
        DataType::UInt64 => DType::U64,
        DataType::UInt32 => DType::U32,
        DataType::UInt16 => DType::U16,
        DataType::UInt8 => DType::U8,
        DataType::Boolean => DType::Bool(burn::tensor::BoolStore::Native),
        _ => return None,
    })
}

fn kind_name(kind: TensorKind) -> &'static str {
    match kind {
        TensorKind::Float => "float",
        TensorKind::Int => "int",
        TensorKind::Bool => "bool",
    }
}

/// Converts a frame to a pure Arrow batch: its columns, then one extension column per tensor attachment.
/// This reads every tensor back to host memory.
pub fn frame_to_arrow(frame: &Frame) -> Result<RecordBatch, FrameError> {
    let batch = frame.batch();
    let mut fields: Vec<Arc<Field>> = batch.schema().fields().iter().cloned().collect();
    let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
    for name in frame.tensor_names() {
        let tensor = frame.any_tensor(name).expect("name comes from the frame's own list");
        let (field, column) = tensor_to_column(name, tensor)?;
        fields.push(Arc::new(field));
        columns.push(column);
    }
    let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(frame.rows()));
    Ok(RecordBatch::try_new_with_options(Arc::new(Schema::new(fields)), columns, &options)?)
}

fn tensor_to_column(name: &str, tensor: &AnyTensor) -> Result<(Field, ArrayRef), FrameError> {
    let err = |message: String| FrameError::TensorColumn { column: name.to_string(), message };
    let data = tensor.to_data();
    let dims = data.shape().to_vec();
    let rows = dims[0];
    let inner: Vec<usize> = dims[1..].to_vec();
    let list_size: usize = inner.iter().product();
    let dtype = data.dtype();
    let value_type = arrow_type(dtype).ok_or_else(|| err(format!("dtype {dtype:?} cannot be written to Arrow")))?;
    let values: ArrayRef = match dtype {
        DType::Bool(_) => Arc::new(BooleanArray::from(data.iter::<bool>().collect::<Vec<bool>>())),
        _ => {
            let bytes = data.into_bytes();
            let array_data = arrow::array::ArrayData::builder(value_type.clone())
                .len(rows * list_size)
                .add_buffer(Buffer::from_vec(bytes.to_vec()))
                .build()
                .map_err(|e| err(e.to_string()))?;
            make_array(array_data)
        }
    };
    let item = Arc::new(Field::new("item", value_type.clone(), false));
    let list_len = i32::try_from(list_size).map_err(|_| err(format!("{list_size} elements per row is too many")))?;
    let column = FixedSizeListArray::try_new(item, list_len, values, None)?;
    // The extension metadata is written by hand: `{"shape": [...]}` with the optional keys left out, as the
    // canonical definition allows (arrow-rs 60 writes explicit nulls that its own reader then rejects).
    let mut field = Field::new(name, column.data_type().clone(), false);
    let mut metadata = field.metadata().clone();
    metadata.insert(EXTENSION_NAME_KEY.to_string(), FIXED_SHAPE_TENSOR.to_string());
    metadata.insert(EXTENSION_METADATA_KEY.to_string(), serde_json::json!({ "shape": inner }).to_string());
    metadata.insert(KIND_KEY.to_string(), kind_name(tensor.kind()).to_string());
    if dtype == DType::BF16 {
        metadata.insert(DTYPE_KEY.to_string(), "bf16".to_string());
    }
    field.set_metadata(metadata);
    Ok((field, Arc::new(column)))
}

/// Converts a pure Arrow batch back to a frame: every `arrow.fixed_shape_tensor` column becomes a tensor
/// attachment on `device` (dtype preserved exactly); all other columns stay Arrow columns.
pub fn frame_from_arrow(batch: &RecordBatch, device: &Device) -> Result<Frame, FrameError> {
    let schema = batch.schema();
    let mut keep_fields = Vec::new();
    let mut keep_columns = Vec::new();
    let mut tensors = Vec::new();
    for (field, column) in schema.fields().iter().zip(batch.columns()) {
        if field.metadata().get(EXTENSION_NAME_KEY).map(String::as_str) == Some(FIXED_SHAPE_TENSOR) {
            tensors.push((field.name().clone(), column_to_tensor(field, column, device)?));
        } else {
            keep_fields.push(field.clone());
            keep_columns.push(column.clone());
        }
    }
    let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    let kept = RecordBatch::try_new_with_options(
        Arc::new(Schema::new_with_metadata(keep_fields, schema.metadata().clone())),
        keep_columns,
        &options,
    )?;
    let mut frame = Frame::new(kept);
    for (name, tensor) in tensors {
        frame.attach(name, tensor)?;
    }
    Ok(frame)
}

fn column_to_tensor(field: &Field, column: &ArrayRef, device: &Device) -> Result<AnyTensor, FrameError> {
    let name = field.name();
    let err = |message: String| FrameError::TensorColumn { column: name.clone(), message };
    let raw = field.metadata().get(EXTENSION_METADATA_KEY).ok_or_else(|| err("no extension metadata".into()))?;
    let extension: TensorMetadata =
        serde_json::from_str(raw).map_err(|e| err(format!("bad fixed_shape_tensor metadata `{raw}`: {e}")))?;
    if extension.permutation.as_ref().is_some_and(|p| p.iter().enumerate().any(|(i, &v)| i != v)) {
        return Err(err("permuted fixed_shape_tensor columns are not supported".into()));
    }
    let list = column
        .as_any()
        .downcast_ref::<FixedSizeListArray>()
        .ok_or_else(|| err(format!("expected a fixed-size list, found {}", column.data_type())))?;
    if list.null_count() > 0 {
        return Err(err(format!("{} null rows; tensors cannot hold nulls", list.null_count())));
    }
    let metadata = field.metadata();
    let bf16 = metadata.get(DTYPE_KEY).map(String::as_str) == Some("bf16");
    let values = list.values();
    let dtype = burn_dtype(values.data_type(), bf16)
        .ok_or_else(|| err(format!("value type {} has no tensor dtype", values.data_type())))?;
    let kind = match metadata.get(KIND_KEY).map(String::as_str) {
        Some("float") => TensorKind::Float,
        Some("int") => TensorKind::Int,
        Some("bool") => TensorKind::Bool,
        Some(other) => return Err(err(format!("unknown {KIND_KEY} `{other}`"))),
        None => match dtype {
            DType::F64 | DType::F32 | DType::F16 | DType::BF16 | DType::Flex32 => TensorKind::Float,
            DType::Bool(_) => TensorKind::Bool,
            _ => TensorKind::Int,
        },
    };
    let mut shape = vec![list.len()];
    shape.extend_from_slice(&extension.shape);
    let list_size: usize = extension.shape.iter().product();
    if list.value_length() as usize != list_size {
        return Err(err(format!(
            "shape {:?} needs {list_size} values per row, the column has {}",
            extension.shape,
            list.value_length()
        )));
    }
    let data = match dtype {
        DType::Bool(_) => {
            let bools = values.as_any().downcast_ref::<BooleanArray>().ok_or_else(|| err("not boolean".into()))?;
            TensorData::new(bools.iter().map(|b| b.unwrap_or(false)).collect::<Vec<bool>>(), shape)
        }
        _ => {
            let data = values.to_data();
            let width = dtype.size();
            let start = data.offset() * width;
            let bytes = &data.buffers()[0].as_slice()[start..start + data.len() * width];
            TensorData::from_bytes_vec(bytes.to_vec(), shape, dtype)
        }
    };
    AnyTensor::from_data(data, kind, device).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int32Array, StringArray};
    use burn::tensor::{Int, Tensor};

    fn base_batch(rows: usize) -> RecordBatch {
        let ids: Vec<String> = (0..rows).map(|i| format!("row-{i}")).collect();
        let n: Vec<i32> = (0..rows as i32).collect();
        RecordBatch::try_from_iter([
            ("id", Arc::new(StringArray::from(ids)) as ArrayRef),
            ("n", Arc::new(Int32Array::from(n)) as ArrayRef),
        ])
        .unwrap()
    }

    fn roundtrip(frame: &Frame) -> Frame {
        let arrow = frame_to_arrow(frame).unwrap();
        // Through IPC bytes too, as a frame leaving the process would.
        let mut buf = Vec::new();
        {
            let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut buf, &arrow.schema()).unwrap();
            w.write(&arrow).unwrap();
            w.finish().unwrap();
        }
        let mut r = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(buf), None).unwrap();
        let back = r.next().unwrap().unwrap();
        frame_from_arrow(&back, &Device::flex()).unwrap()
    }

    #[test]
    fn float_tensors_round_trip_exactly_in_every_float_dtype() {
        let device = Device::flex();
        let values: Vec<f32> = (0..3 * 2 * 4).map(|i| (i as f32 - 7.3) * 0.173).collect();
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            let data = TensorData::new(values.clone(), [3, 2, 4]).convert_dtype(dtype);
            let t = Tensor::<3>::from_data(data.clone(), (&device, dtype));
            assert_eq!(t.dtype(), dtype);
            let frame = Frame::new(base_batch(3)).with_tensor("x", t).unwrap();
            let back = roundtrip(&frame);
            let t2: Tensor<3> = back.tensor("x").unwrap();
            assert_eq!(t2.dtype(), dtype, "dtype preserved");
            assert_eq!(t2.to_data(), data, "values preserved bit for bit for {dtype:?}");
            assert_eq!(back.batch().num_columns(), 2, "the plain columns stay columns");
        }
    }

    #[test]
    fn int_and_bool_tensors_round_trip_exactly() {
        let device = Device::flex();
        let ints = TensorData::new(vec![i64::MIN, -1, 0, 1, 42, i64::MAX], [2, 3]);
        let t = Tensor::<2, Int>::from_data(ints.clone(), (&device, DType::I64));
        let bools = Tensor::<1, burn::tensor::Bool>::from_data(TensorData::new(vec![true, false], [2]), &device);
        let frame = Frame::new(base_batch(2)).with_tensor("ids", t).unwrap().with_tensor("mask", bools).unwrap();
        let back = roundtrip(&frame);
        let t2: Tensor<2, Int> = back.tensor("ids").unwrap();
        assert_eq!(t2.to_data(), ints);
        let b2: Tensor<1, burn::tensor::Bool> = back.tensor("mask").unwrap();
        assert_eq!(b2.to_data().iter::<bool>().collect::<Vec<_>>(), vec![true, false]);
    }

    #[test]
    fn sliced_frames_convert_only_their_rows() {
        let device = Device::flex();
        let t = Tensor::<2>::from_data(TensorData::new((0..8).map(|v| v as f32).collect::<Vec<_>>(), [4, 2]), &device);
        let frame = Frame::new(base_batch(4)).with_tensor("x", t).unwrap().slice(1, 2);
        let back = roundtrip(&frame);
        let t2: Tensor<2> = back.tensor("x").unwrap();
        assert_eq!(t2.to_data().try_to_vec::<f32>().unwrap(), vec![2.0, 3.0, 4.0, 5.0]);
        let ids = back.batch().column(0).as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(ids.value(0), "row-1");
    }

    #[test]
    fn wrong_rank_access_is_a_clear_error() {
        let device = Device::flex();
        let t = Tensor::<2>::zeros([2, 3], &device);
        let frame = Frame::new(base_batch(2)).with_tensor("x", t).unwrap();
        let err = frame.tensor::<Tensor<3>>("x").unwrap_err().to_string();
        assert_eq!(err, "tensor `x` is float rank 2, asked for float rank 3");
        let err = frame.tensor::<Tensor<2>>("y").unwrap_err().to_string();
        assert_eq!(err, "tensor `y` is not attached (attached: x)");
        let bad = Tensor::<2>::zeros([5, 3], &device);
        assert!(Frame::new(base_batch(2)).with_tensor("z", bad).is_err());
    }
}
