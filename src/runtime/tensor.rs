//! Tensors: a shape and row-major elements of one of the types Core ML
//! multi-arrays hold.

use std::fmt;

use half::f16;

use super::error::{Error, Result};
use coreml_multifunction_format::DataType;

mod sealed {
    pub trait Sealed {}
}

/// An element type of [`Tensor`]. Sealed: exactly the Core ML array types.
pub trait Element:
    sealed::Sealed + Copy + Default + PartialEq + fmt::Debug + Send + Sync + 'static
{
    /// The Core ML type of this element.
    const DATA_TYPE: DataType;
    /// Wraps a tensor of this element type.
    fn wrap(tensor: Tensor<Self>) -> AnyTensor;
    /// Unwraps a tensor of this element type.
    fn unwrap(tensor: AnyTensor) -> std::result::Result<Tensor<Self>, AnyTensor>;
    /// Borrows a tensor of this element type.
    fn unwrap_ref(tensor: &AnyTensor) -> Option<&Tensor<Self>>;
}

macro_rules! element {
    ($type:ty, $data_type:ident, $variant:ident) => {
        impl sealed::Sealed for $type {}
        impl Element for $type {
            const DATA_TYPE: DataType = DataType::$data_type;
            fn wrap(tensor: Tensor<Self>) -> AnyTensor {
                AnyTensor::$variant(tensor)
            }
            fn unwrap(tensor: AnyTensor) -> std::result::Result<Tensor<Self>, AnyTensor> {
                match tensor {
                    AnyTensor::$variant(t) => Ok(t),
                    other => Err(other),
                }
            }
            fn unwrap_ref(tensor: &AnyTensor) -> Option<&Tensor<Self>> {
                match tensor {
                    AnyTensor::$variant(t) => Some(t),
                    _ => None,
                }
            }
        }
    };
}

element!(f16, Float16, Float16);
element!(f32, Float32, Float32);
element!(f64, Float64, Float64);
element!(i32, Int32, Int32);
element!(i8, Int8, Int8);

/// A dense, row-major tensor.
#[derive(Clone, PartialEq)]
pub struct Tensor<T> {
    shape: Vec<usize>,
    data: Vec<T>,
}

impl<T: Element> Tensor<T> {
    /// A tensor of `shape` holding `data` in row-major order. The number of
    /// elements must match the shape.
    pub fn new(shape: impl Into<Vec<usize>>, data: impl Into<Vec<T>>) -> Result<Self> {
        let shape = shape.into();
        let data = data.into();
        let expected = element_count(&shape)?;
        if expected != data.len() {
            return Err(Error::ElementCount {
                shape,
                elements: data.len(),
            });
        }
        Ok(Tensor { shape, data })
    }

    /// A tensor of `shape` filled with zeros.
    pub fn zeros(shape: impl Into<Vec<usize>>) -> Result<Self> {
        let shape = shape.into();
        let count = element_count(&shape)?;
        Ok(Tensor {
            shape,
            data: vec![T::default(); count],
        })
    }

    /// A rank-0 tensor holding one value.
    pub fn scalar(value: T) -> Self {
        Tensor {
            shape: Vec::new(),
            data: vec![value],
        }
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The elements, row-major.
    pub fn as_slice(&self) -> &[T] {
        &self.data
    }

    /// The elements, row-major, mutably.
    pub fn as_mut_slice(&mut self) -> &mut [T] {
        &mut self.data
    }

    /// The elements.
    pub fn into_vec(self) -> Vec<T> {
        self.data
    }

    /// The shape and the elements.
    pub fn into_parts(self) -> (Vec<usize>, Vec<T>) {
        (self.shape, self.data)
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

impl<T: fmt::Debug> fmt::Debug for Tensor<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 8;
        f.debug_struct("Tensor")
            .field("shape", &self.shape)
            .field("data", &&self.data[..self.data.len().min(SHOWN)])
            .field("elements", &self.data.len())
            .finish()
    }
}

/// The number of elements of `shape`, refusing overflow.
pub(crate) fn element_count(shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |count, &dim| count.checked_mul(dim))
        .ok_or_else(|| Error::ElementCount {
            shape: shape.to_vec(),
            elements: usize::MAX,
        })
}

#[cfg(feature = "ndarray")]
mod ndarray_conversions {
    use super::*;

    impl<T: Element> Tensor<T> {
        /// Copies an `ndarray` array (any layout) into a tensor.
        pub fn from_ndarray<D: ndarray::Dimension>(array: &ndarray::ArrayRef<T, D>) -> Self {
            Tensor {
                shape: array.shape().to_vec(),
                data: array.iter().copied().collect(),
            }
        }

        /// The tensor as an `ndarray` array.
        pub fn into_ndarray(self) -> ndarray::ArrayD<T> {
            ndarray::ArrayD::from_shape_vec(self.shape, self.data)
                .expect("shape matches by construction")
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn tensors_convert_to_and_from_ndarray_in_row_major_order() {
            let tensor = Tensor::new([2, 3], vec![1i32, 2, 3, 4, 5, 6]).unwrap();
            let array = tensor.clone().into_ndarray();
            assert_eq!(array[[1, 0]], 4);
            assert_eq!(Tensor::from_ndarray(&array), tensor);
            // A transposed view is copied in its logical order.
            let transposed = array.t();
            let copied = Tensor::from_ndarray(&transposed);
            assert_eq!(copied.shape(), &[3, 2]);
            assert_eq!(copied.as_slice(), &[1, 4, 2, 5, 3, 6]);
        }
    }
}

/// A tensor of any element type.
#[derive(Debug, Clone, PartialEq)]
pub enum AnyTensor {
    /// fp16 elements.
    Float16(Tensor<f16>),
    /// fp32 elements.
    Float32(Tensor<f32>),
    /// fp64 elements.
    Float64(Tensor<f64>),
    /// int32 elements.
    Int32(Tensor<i32>),
    /// int8 elements.
    Int8(Tensor<i8>),
}

impl AnyTensor {
    /// The element type.
    pub fn data_type(&self) -> DataType {
        match self {
            AnyTensor::Float16(_) => DataType::Float16,
            AnyTensor::Float32(_) => DataType::Float32,
            AnyTensor::Float64(_) => DataType::Float64,
            AnyTensor::Int32(_) => DataType::Int32,
            AnyTensor::Int8(_) => DataType::Int8,
        }
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        match self {
            AnyTensor::Float16(t) => t.shape(),
            AnyTensor::Float32(t) => t.shape(),
            AnyTensor::Float64(t) => t.shape(),
            AnyTensor::Int32(t) => t.shape(),
            AnyTensor::Int8(t) => t.shape(),
        }
    }

    /// The tensor converted to element type `to`: floats round to the
    /// nearest representable value, integers saturate.
    pub fn cast(&self, to: DataType) -> AnyTensor {
        let shape = self.shape().to_vec();
        let as_f64: Vec<f64> = match self {
            AnyTensor::Float16(t) => t.as_slice().iter().map(|v| v.to_f64()).collect(),
            AnyTensor::Float32(t) => t.as_slice().iter().map(|&v| f64::from(v)).collect(),
            AnyTensor::Float64(t) => t.as_slice().to_vec(),
            AnyTensor::Int32(t) => t.as_slice().iter().map(|&v| f64::from(v)).collect(),
            AnyTensor::Int8(t) => t.as_slice().iter().map(|&v| f64::from(v)).collect(),
        };
        match to {
            DataType::Float16 => AnyTensor::Float16(Tensor {
                shape,
                data: as_f64.iter().map(|&v| f16::from_f64(v)).collect(),
            }),
            DataType::Float32 => AnyTensor::Float32(Tensor {
                shape,
                data: as_f64.iter().map(|&v| v as f32).collect(),
            }),
            DataType::Float64 => AnyTensor::Float64(Tensor {
                shape,
                data: as_f64,
            }),
            DataType::Int32 => AnyTensor::Int32(Tensor {
                shape,
                data: as_f64.iter().map(|&v| v as i32).collect(),
            }),
            DataType::Int8 => AnyTensor::Int8(Tensor {
                shape,
                data: as_f64.iter().map(|&v| v as i8).collect(),
            }),
        }
    }

    /// The elements converted to f32 (exact for fp16, int8 and most int32).
    pub fn to_f32(&self) -> Tensor<f32> {
        let shape = self.shape().to_vec();
        let data: Vec<f32> = match self {
            AnyTensor::Float16(t) => t.as_slice().iter().map(|v| v.to_f32()).collect(),
            AnyTensor::Float32(t) => t.as_slice().to_vec(),
            AnyTensor::Float64(t) => t.as_slice().iter().map(|&v| v as f32).collect(),
            AnyTensor::Int32(t) => t.as_slice().iter().map(|&v| v as f32).collect(),
            AnyTensor::Int8(t) => t.as_slice().iter().map(|&v| f32::from(v)).collect(),
        };
        Tensor { shape, data }
    }
}

impl<T: Element> From<Tensor<T>> for AnyTensor {
    fn from(tensor: Tensor<T>) -> Self {
        T::wrap(tensor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_must_match_the_data() {
        assert!(Tensor::<f32>::new([2, 3], vec![0.0; 6]).is_ok());
        assert!(matches!(
            Tensor::<f32>::new([2, 3], vec![0.0; 5]),
            Err(Error::ElementCount { .. })
        ));
        assert!(Tensor::<i32>::zeros([usize::MAX, 2]).is_err());
        assert_eq!(Tensor::scalar(3i32).shape(), &[] as &[usize]);
        assert_eq!(Tensor::<f16>::zeros([4, 2]).unwrap().len(), 8);
    }

    #[test]
    fn any_tensor_round_trips_and_converts() {
        let tensor = Tensor::new([2], vec![f16::from_f32(1.5), f16::from_f32(-2.0)]).unwrap();
        let any = AnyTensor::from(tensor.clone());
        assert_eq!(any.data_type(), DataType::Float16);
        assert_eq!(any.to_f32().as_slice(), &[1.5, -2.0]);
        assert_eq!(f16::unwrap(any.clone()).unwrap(), tensor);
        let widened = any.cast(DataType::Float32);
        assert_eq!(widened.data_type(), DataType::Float32);
        assert_eq!(widened.cast(DataType::Float16), any);
        let ints = AnyTensor::from(Tensor::new([2], vec![300i32, -3]).unwrap());
        assert_eq!(
            ints.cast(DataType::Int8).to_f32().as_slice(),
            &[127.0, -3.0]
        );
    }
}
