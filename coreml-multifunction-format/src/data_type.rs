//! The element types of Core ML multi-arrays, by name.
//!
//! It lives below the runtime because code generation needs the same names
//! (the build crate compiles no runtime).

use std::fmt;

/// The element types of Core ML multi-arrays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DataType {
    /// Half precision (`half::f16`).
    Float16,
    /// Single precision.
    Float32,
    /// Double precision.
    Float64,
    /// 32-bit integers.
    Int32,
    /// 8-bit integers (iOS 26 / macOS 26 and later).
    Int8,
}

impl DataType {
    /// The short name used in messages and docs (`fp16`, `int32`, ...).
    pub fn name(self) -> &'static str {
        match self {
            DataType::Float16 => "fp16",
            DataType::Float32 => "fp32",
            DataType::Float64 => "fp64",
            DataType::Int32 => "int32",
            DataType::Int8 => "int8",
        }
    }

    /// The type of a Core ML `ArrayFeatureType.ArrayDataType` code.
    pub fn from_array_data_type(code: i32) -> Option<DataType> {
        use crate::proto::specification::array_feature_type::ArrayDataType as A;
        match A::try_from(code).ok()? {
            A::Float16 => Some(DataType::Float16),
            A::Float32 => Some(DataType::Float32),
            A::Double => Some(DataType::Float64),
            A::Int32 => Some(DataType::Int32),
            A::Int8 => Some(DataType::Int8),
            A::InvalidArrayDataType => None,
        }
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
