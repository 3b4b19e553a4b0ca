//! `AnyTensor`: a burn tensor of any kind (float, int, bool) and rank 1..=6 with its type erased, so a
//! frame can carry named attachments of different shapes. Conversion back to a typed tensor is checked.

use burn::tensor::{Bool, DType, Device, Int, Shape, Tensor};
use perceptio_schemas::port::TensorKind;

macro_rules! any_tensor {
    ($($variant:ident => ($rank:literal, $kind:ty, $tk:expr)),* $(,)?) => {
        /// A type-erased burn tensor (first dimension = rows when attached to a frame).
        #[derive(Debug, Clone)]
        pub enum AnyTensor {
            $($variant(Tensor<$rank, $kind>),)*
        }

        impl AnyTensor {
            pub fn shape(&self) -> Shape {
                match self { $(AnyTensor::$variant(t) => t.shape(),)* }
            }

            pub fn dtype(&self) -> DType {
                match self { $(AnyTensor::$variant(t) => t.dtype(),)* }
            }

            pub fn device(&self) -> Device {
                match self { $(AnyTensor::$variant(t) => t.device(),)* }
            }

            pub fn rank(&self) -> usize {
                match self { $(AnyTensor::$variant(_) => $rank,)* }
            }

            pub fn kind(&self) -> TensorKind {
                match self { $(AnyTensor::$variant(_) => $tk,)* }
            }

            /// Moves the tensor to `device` (a no-op when it is already there).
            pub fn to_device(self, device: &Device) -> Self {
                match self { $(AnyTensor::$variant(t) => AnyTensor::$variant(t.to_device(device)),)* }
            }

            /// Reads the tensor back to host memory (used only where a frame leaves the process).
            pub fn to_data(&self) -> burn::tensor::TensorData {
                match self { $(AnyTensor::$variant(t) => t.to_data(),)* }
            }
        }

        $(
            impl From<Tensor<$rank, $kind>> for AnyTensor {
                fn from(t: Tensor<$rank, $kind>) -> Self {
                    AnyTensor::$variant(t)
                }
            }

            impl TypedTensor for Tensor<$rank, $kind> {
                const KIND: TensorKind = $tk;
                const RANK: usize = $rank;
                fn from_any(any: AnyTensor) -> Result<Self, AnyTensor> {
                    match any {
                        AnyTensor::$variant(t) => Ok(t),
                        other => Err(other),
                    }
                }
            }
        )*
    };
}

any_tensor! {
    F1 => (1, burn::tensor::Float, TensorKind::Float),
    F2 => (2, burn::tensor::Float, TensorKind::Float),
    F3 => (3, burn::tensor::Float, TensorKind::Float),
    F4 => (4, burn::tensor::Float, TensorKind::Float),
    F5 => (5, burn::tensor::Float, TensorKind::Float),
    F6 => (6, burn::tensor::Float, TensorKind::Float),
    I1 => (1, Int, TensorKind::Int),
    I2 => (2, Int, TensorKind::Int),
    I3 => (3, Int, TensorKind::Int),
    I4 => (4, Int, TensorKind::Int),
    I5 => (5, Int, TensorKind::Int),
    I6 => (6, Int, TensorKind::Int),
    B1 => (1, Bool, TensorKind::Bool),
    B2 => (2, Bool, TensorKind::Bool),
    B3 => (3, Bool, TensorKind::Bool),
    B4 => (4, Bool, TensorKind::Bool),
    B5 => (5, Bool, TensorKind::Bool),
    B6 => (6, Bool, TensorKind::Bool),
}

/// A concrete tensor type that can be recovered from an [`AnyTensor`].
pub trait TypedTensor: Sized + Into<AnyTensor> {
    const KIND: TensorKind;
    const RANK: usize;
    /// Returns the tensor, or gives the value back when its kind or rank differs.
    fn from_any(any: AnyTensor) -> Result<Self, AnyTensor>;
}

impl AnyTensor {
    /// Number of bytes the tensor's elements occupy (used for edge byte budgets).
    pub fn byte_size(&self) -> usize {
        let elems = self.shape().num_elements();
        elems * self.dtype().size()
    }

    /// Rows = the first dimension.
    pub fn rows(&self) -> usize {
        self.shape().as_slice().first().copied().unwrap_or(0)
    }

    /// Builds a tensor of the given kind from host data (rank taken from the data's shape), keeping its dtype.
    pub fn from_data(data: burn::tensor::TensorData, kind: TensorKind, device: &Device) -> Result<Self, String> {
        let dtype = data.dtype();
        let rank = data.shape().num_dims();
        let opts = (device, dtype);
        macro_rules! build {
            ($k:ty, $($r:literal => $v:ident),*) => {
                match rank {
                    $($r => Ok(AnyTensor::$v(Tensor::<$r, $k>::from_data(data, opts))),)*
                    other => Err(format!("tensor rank {other} is not supported (1..=6)")),
                }
            };
        }
        match kind {
            TensorKind::Float => build!(burn::tensor::Float, 1 => F1, 2 => F2, 3 => F3, 4 => F4, 5 => F5, 6 => F6),
            TensorKind::Int => build!(Int, 1 => I1, 2 => I2, 3 => I3, 4 => I4, 5 => I5, 6 => I6),
            TensorKind::Bool => build!(Bool, 1 => B1, 2 => B2, 3 => B3, 4 => B4, 5 => B5, 6 => B6),
        }
    }
}
