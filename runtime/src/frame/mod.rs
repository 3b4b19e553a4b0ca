//! Frames: the unit of data on every edge. A frame is an Arrow `RecordBatch` (row-aligned columns) plus named
//! burn tensor attachments whose first dimension is the row count. In-process edges move frames by value; a
//! frame becomes pure Arrow (see [`arrow_io`]) only where it leaves the process or reaches disk.

pub mod arrow_io;
pub mod tensor;

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::Schema;
use perceptio_schemas::port::{PortSchema, TensorSpec};

use crate::train::{GradRequest, distinct_requests};

pub use tensor::{AnyTensor, TypedTensor};

/// Errors of frame construction and access.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("tensor `{name}` has {found} rows, the frame has {expected}")]
    RowMismatch { name: String, expected: usize, found: usize },
    #[error("tensor `{name}` is not attached (attached: {attached})")]
    MissingTensor { name: String, attached: String },
    #[error("tensor `{name}` is {found_kind} rank {found_rank}, asked for {want_kind} rank {want_rank}")]
    WrongTensorType {
        name: String,
        found_kind: perceptio_schemas::port::TensorKind,
        found_rank: usize,
        want_kind: perceptio_schemas::port::TensorKind,
        want_rank: usize,
    },
    #[error("column `{0}` is missing")]
    MissingColumn(String),
    #[error("column `{column}` has type {found}, expected {expected}")]
    WrongColumnType { column: String, expected: String, found: String },
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("tensor column `{column}`: {message}")]
    TensorColumn { column: String, message: String },
}

/// Row-aligned Arrow columns plus named tensor attachments.
#[derive(Debug, Clone)]
pub struct Frame {
    batch: RecordBatch,
    tensors: Vec<(String, AnyTensor)>,
    /// Training: the gradient requests of the trainable nodes this frame's tensors came through.
    grad_requests: Vec<Arc<GradRequest>>,
}

impl Frame {
    pub fn new(batch: RecordBatch) -> Self {
        Self { batch, tensors: Vec::new(), grad_requests: Vec::new() }
    }

    /// A frame with no columns and `rows` rows (for tensor-only frames).
    pub fn empty(rows: usize) -> Self {
        let batch = RecordBatch::try_new_with_options(
            Arc::new(Schema::empty()),
            vec![],
            &arrow::array::RecordBatchOptions::new().with_row_count(Some(rows)),
        )
        .expect("an empty schema with an explicit row count is always valid");
        Self::new(batch)
    }

    pub fn rows(&self) -> usize {
        self.batch.num_rows()
    }

    pub fn batch(&self) -> &RecordBatch {
        &self.batch
    }

    pub fn into_parts(self) -> (RecordBatch, Vec<(String, AnyTensor)>) {
        (self.batch, self.tensors)
    }

    /// Replaces the Arrow columns, keeping the attachments (the row count must not change).
    pub fn with_batch(mut self, batch: RecordBatch) -> Result<Self, FrameError> {
        if let Some((name, t)) = self.tensors.iter().find(|(_, t)| t.rows() != batch.num_rows()) {
            return Err(FrameError::RowMismatch { name: name.clone(), expected: batch.num_rows(), found: t.rows() });
        }
        self.batch = batch;
        Ok(self)
    }

    /// Attaches (or replaces) a named tensor. Its first dimension must equal the row count.
    pub fn attach(&mut self, name: impl Into<String>, tensor: impl Into<AnyTensor>) -> Result<(), FrameError> {
        let name = name.into();
        let tensor = tensor.into();
        if tensor.rows() != self.rows() {
            return Err(FrameError::RowMismatch { name, expected: self.rows(), found: tensor.rows() });
        }
        match self.tensors.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = tensor,
            None => self.tensors.push((name, tensor)),
        }
        Ok(())
    }

    /// Builder form of [`Frame::attach`].
    pub fn with_tensor(mut self, name: impl Into<String>, tensor: impl Into<AnyTensor>) -> Result<Self, FrameError> {
        self.attach(name, tensor)?;
        Ok(self)
    }

    pub fn tensor_names(&self) -> impl Iterator<Item = &str> {
        self.tensors.iter().map(|(n, _)| n.as_str())
    }

    pub fn any_tensor(&self, name: &str) -> Option<&AnyTensor> {
        self.tensors.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }

    /// A typed clone of an attachment (cheap: burn tensors are reference counted).
    pub fn tensor<T: TypedTensor>(&self, name: &str) -> Result<T, FrameError> {
        let any = self.any_tensor(name).ok_or_else(|| self.missing(name))?.clone();
        T::from_any(any).map_err(|found| self.wrong_type::<T>(name, &found))
    }

    /// A typed clone of an attachment that may be absent (None), erring only on a wrong type.
    pub fn optional_tensor<T: TypedTensor>(&self, name: &str) -> Result<Option<T>, FrameError> {
        match self.any_tensor(name) {
            Some(_) => self.tensor(name).map(Some),
            None => Ok(None),
        }
    }

    /// Removes and returns a typed attachment.
    pub fn take_tensor<T: TypedTensor>(&mut self, name: &str) -> Result<T, FrameError> {
        let idx = self.tensors.iter().position(|(n, _)| n == name).ok_or_else(|| self.missing(name))?;
        let (n, any) = self.tensors.remove(idx);
        match T::from_any(any) {
            Ok(t) => Ok(t),
            Err(found) => {
                let err = self.wrong_type::<T>(name, &found);
                self.tensors.insert(idx, (n, found));
                Err(err)
            }
        }
    }

    fn missing(&self, name: &str) -> FrameError {
        let attached: Vec<&str> = self.tensor_names().collect();
        FrameError::MissingTensor {
            name: name.to_string(),
            attached: if attached.is_empty() { "none".into() } else { attached.join(", ") },
        }
    }

    fn wrong_type<T: TypedTensor>(&self, name: &str, found: &AnyTensor) -> FrameError {
        FrameError::WrongTensorType {
            name: name.to_string(),
            found_kind: found.kind(),
            found_rank: found.rank(),
            want_kind: T::KIND,
            want_rank: T::RANK,
        }
    }

    /// Approximate in-memory size: Arrow buffers plus tensor elements. Used for edge byte budgets.
    pub fn byte_size(&self) -> usize {
        self.batch.get_array_memory_size() + self.tensors.iter().map(|(_, t)| t.byte_size()).sum::<usize>()
    }

    /// The port schema this frame satisfies (columns and attachments).
    pub fn port_schema(&self) -> PortSchema {
        let mut schema = PortSchema::from_arrow(self.batch.schema().as_ref());
        schema.tensors = self.tensors.iter().map(|(n, t)| TensorSpec::new(n.clone(), t.kind(), t.rank())).collect();
        schema
    }

    /// Rows `[offset, offset + len)` of the columns and of every attachment.
    pub fn slice(&self, offset: usize, len: usize) -> Frame {
        let batch = self.batch.slice(offset, len);
        let tensors = self.tensors.iter().map(|(n, t)| (n.clone(), slice_rows(t, offset, len))).collect();
        Frame { batch, tensors, grad_requests: self.grad_requests.clone() }
    }

    /// The gradient requests travelling with this frame (training only).
    pub fn grad_requests(&self) -> &[Arc<GradRequest>] {
        &self.grad_requests
    }

    /// Adds a gradient request (a trainable node does this on the frame it emits).
    pub fn add_grad_request(&mut self, request: Arc<GradRequest>) {
        self.grad_requests = distinct_requests(self.grad_requests.iter().chain([&request]));
    }

    /// Carries over the requests of `from` (a frame this one was derived from).
    pub fn inherit_grad_requests(&mut self, from: &Frame) {
        self.grad_requests = distinct_requests(self.grad_requests.iter().chain(from.grad_requests.iter()));
    }
}

impl Frame {
    /// The rows at `indices` (in that order), of the columns and of every attachment.
    pub fn take_rows(&self, indices: &[u32]) -> Result<Frame, FrameError> {
        let idx = arrow::array::UInt32Array::from(indices.to_vec());
        let batch = arrow::compute::take_record_batch(&self.batch, &idx)?;
        let mut tensors = Vec::with_capacity(self.tensors.len());
        for (name, t) in &self.tensors {
            let device = t.device();
            let rows = burn::tensor::Tensor::<1, burn::tensor::Int>::from_data(
                burn::tensor::TensorData::new(indices.iter().map(|&i| i as i64).collect::<Vec<_>>(), [indices.len()]),
                &device,
            );
            tensors.push((name.clone(), select_rows(t, rows)));
        }
        Ok(Frame { batch, tensors, grad_requests: self.grad_requests.clone() })
    }
}

fn select_rows(t: &AnyTensor, rows: burn::tensor::Tensor<1, burn::tensor::Int>) -> AnyTensor {
    macro_rules! select {
        ($($v:ident),*) => {
            match t { $(AnyTensor::$v(x) => AnyTensor::$v(x.clone().select(0, rows)),)* }
        };
    }
    select!(F1, F2, F3, F4, F5, F6, I1, I2, I3, I4, I5, I6, B1, B2, B3, B4, B5, B6)
}

fn slice_rows(t: &AnyTensor, offset: usize, len: usize) -> AnyTensor {
    macro_rules! narrow {
        ($($v:ident),*) => {
            match t { $(AnyTensor::$v(x) => AnyTensor::$v(x.clone().narrow(0, offset, len)),)* }
        };
    }
    narrow!(F1, F2, F3, F4, F5, F6, I1, I2, I3, I4, I5, I6, B1, B2, B3, B4, B5, B6)
}
