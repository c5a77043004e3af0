//! The values flowing through the interpreter, and their conversions.
//!
//! Every floating-point tensor is held as f32 whatever its declared type
//! (fp16, bf16, fp32, fp64): the interpreter computes in f32. Integer tensors
//! of every width are held as i32 (MIL programs index and count in int32;
//! wider constants are range-checked when decoded), and masks as bool.
//! Arrays are reference-counted (`ArcArray`), so passing a weight to an op,
//! or sharing it between functions, never copies it.

use std::sync::Arc;

use half::f16;
use ndarray::{ArcArray, ArrayD, IxDyn};

use coreml_multifunction_format::proto::mil_spec::{self, value_type, DataType};

use super::kernels::StoredWeight;
pub(crate) use crate::runtime::value::Dictionary;

/// A float tensor (any declared float type, computed in f32).
pub(crate) type FloatArray = ArcArray<f32, IxDyn>;
/// An integer tensor (any declared integer type).
pub(crate) type IntArray = ArcArray<i32, IxDyn>;
/// A bool tensor.
pub(crate) type BoolArray = ArcArray<bool, IxDyn>;

/// What an op failed with, before the executor names the op and function.
pub(crate) type OpResult<T> = std::result::Result<T, String>;

/// One value of a program.
#[derive(Debug, Clone)]
pub(crate) enum Value {
    /// A float tensor.
    Float(FloatArray),
    /// An integer tensor.
    Int(IntArray),
    /// A bool tensor.
    Bool(BoolArray),
    /// String elements (op parameters such as `dtype` or `pad_type`).
    Str(Vec<String>),
    /// A function's state input: the index of the state in the function.
    State(usize),
    /// A tensor list (`make_list` and the `list_*` ops).
    List(List),
    /// A dictionary (`classify`'s class → probability).
    Dict(Dictionary),
    /// A float weight kept as the package stores it, for the kernels that
    /// read it so (`linear`); any other reader gets it widened to f32.
    Weight(Arc<StoredWeight>),
}

/// A tensor list as `make_list` makes it and the `list_*` ops use it.
///
/// An element never written is `None`: reading it gives zeros of the
/// element shape when `make_list` fixed that shape, and is an error
/// otherwise (coremltools does not define the value of an unwritten
/// element; Core ML's is not documented, so this is the reference
/// backend's choice). Elements are shared arrays, so a write copies the
/// element pointers, never the tensors.
#[derive(Debug, Clone)]
pub(crate) struct List {
    /// The elements, in order.
    pub elements: Vec<Option<Value>>,
    /// The element type `make_list` declares.
    pub dtype: DataType,
    /// The element shape, when `make_list` fixed every dimension.
    pub elem_shape: Option<Vec<usize>>,
    /// Whether writes past the end grow the list (`dynamic_length`).
    pub dynamic: bool,
}

impl Value {
    /// A float tensor from a shape and row-major data.
    pub(crate) fn float(shape: Vec<usize>, data: Vec<f32>) -> OpResult<Value> {
        ArrayD::from_shape_vec(IxDyn(&shape), data)
            .map(|a| Value::Float(a.into_shared()))
            .map_err(|e| format!("a tensor of shape {shape:?}: {e}"))
    }

    /// An integer tensor from a shape and row-major data.
    pub(crate) fn int(shape: Vec<usize>, data: Vec<i32>) -> OpResult<Value> {
        ArrayD::from_shape_vec(IxDyn(&shape), data)
            .map(|a| Value::Int(a.into_shared()))
            .map_err(|e| format!("a tensor of shape {shape:?}: {e}"))
    }

    /// A bool tensor from a shape and row-major data.
    pub(crate) fn bool(shape: Vec<usize>, data: Vec<bool>) -> OpResult<Value> {
        ArrayD::from_shape_vec(IxDyn(&shape), data)
            .map(|a| Value::Bool(a.into_shared()))
            .map_err(|e| format!("a tensor of shape {shape:?}: {e}"))
    }

    /// What kind of value this is, for messages.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Value::Float(_) => "a float tensor",
            Value::Int(_) => "an integer tensor",
            Value::Bool(_) => "a bool tensor",
            Value::Str(_) => "a string",
            Value::State(_) => "a state",
            Value::List(_) => "a list",
            Value::Dict(_) => "a dictionary",
            Value::Weight(_) => "a float tensor",
        }
    }

    /// The shape of a tensor value (strings count as vectors).
    pub(crate) fn shape(&self) -> Vec<usize> {
        match self {
            Value::Float(a) => a.shape().to_vec(),
            Value::Int(a) => a.shape().to_vec(),
            Value::Bool(a) => a.shape().to_vec(),
            Value::Str(s) if s.len() == 1 => Vec::new(),
            Value::Str(s) => vec![s.len()],
            Value::State(_) | Value::List(_) | Value::Dict(_) => Vec::new(),
            Value::Weight(w) => w.shape(),
        }
    }

    /// The value as floats (integers and bools converted).
    pub(crate) fn to_float(&self) -> OpResult<FloatArray> {
        match self {
            Value::Float(a) => Ok(a.clone()),
            Value::Weight(w) => Ok(w.to_array()),
            Value::Int(a) => Ok(a.mapv(|v| v as f32).into_shared()),
            Value::Bool(a) => Ok(a.mapv(|v| if v { 1.0 } else { 0.0 }).into_shared()),
            other => Err(format!("expected a tensor, found {}", other.kind())),
        }
    }

    /// The value as integers (floats truncated toward zero, as numpy's
    /// `astype` does; bools as 0 and 1).
    pub(crate) fn to_int(&self) -> OpResult<IntArray> {
        match self {
            Value::Int(a) => Ok(a.clone()),
            Value::Float(a) => Ok(a.mapv(float_to_i32).into_shared()),
            Value::Weight(w) => Ok(w.to_array().mapv(float_to_i32).into_shared()),
            Value::Bool(a) => Ok(a.mapv(i32::from).into_shared()),
            other => Err(format!("expected a tensor, found {}", other.kind())),
        }
    }

    /// The value as bools (non-zero is true).
    pub(crate) fn to_bool(&self) -> OpResult<BoolArray> {
        match self {
            Value::Bool(a) => Ok(a.clone()),
            Value::Int(a) => Ok(a.mapv(|v| v != 0).into_shared()),
            Value::Float(a) => Ok(a.mapv(|v| v != 0.0).into_shared()),
            Value::Weight(w) => Ok(w.to_array().mapv(|v| v != 0.0).into_shared()),
            other => Err(format!("expected a tensor, found {}", other.kind())),
        }
    }

    /// Every element as an i64 (for integer parameters such as axes).
    pub(crate) fn to_i64_vec(&self) -> OpResult<Vec<i64>> {
        match self {
            Value::Int(a) => Ok(a.iter().map(|&v| i64::from(v)).collect()),
            Value::Bool(a) => Ok(a.iter().map(|&v| i64::from(v)).collect()),
            Value::Float(a) => a
                .iter()
                .map(|&v| {
                    if v.fract() == 0.0 && v.abs() < 9.0e15 {
                        Ok(v as i64)
                    } else {
                        Err(format!("expected integers, found {v}"))
                    }
                })
                .collect(),
            other => Err(format!("expected integers, found {}", other.kind())),
        }
    }

    /// The single element of an integer parameter.
    pub(crate) fn to_i64_scalar(&self) -> OpResult<i64> {
        let values = self.to_i64_vec()?;
        match values.as_slice() {
            [v] => Ok(*v),
            _ => Err(format!(
                "expected one integer, found {} values",
                values.len()
            )),
        }
    }

    /// Every element as a bool (for masks given as parameters).
    pub(crate) fn to_bool_vec(&self) -> OpResult<Vec<bool>> {
        Ok(self.to_bool()?.iter().copied().collect())
    }

    /// The single element of a bool parameter.
    pub(crate) fn to_bool_scalar(&self) -> OpResult<bool> {
        match self.to_bool_vec()?.as_slice() {
            [v] => Ok(*v),
            other => Err(format!("expected one bool, found {} values", other.len())),
        }
    }

    /// The single element of a float parameter.
    pub(crate) fn to_f32_scalar(&self) -> OpResult<f32> {
        let values = self.to_float()?;
        match values.len() {
            1 => Ok(values.iter().copied().next().unwrap_or_default()),
            n => Err(format!("expected one number, found {n} values")),
        }
    }

    /// The single string of a string parameter.
    pub(crate) fn to_str(&self) -> OpResult<&str> {
        match self {
            Value::Str(strings) if strings.len() == 1 => Ok(&strings[0]),
            Value::Str(strings) => Err(format!(
                "expected one string, found {} strings",
                strings.len()
            )),
            other => Err(format!("expected a string, found {}", other.kind())),
        }
    }
}

/// Float to int32 as numpy's `astype(int32)` does for values in range:
/// truncation toward zero. Out-of-range values saturate, NaN becomes 0.
pub(crate) fn float_to_i32(v: f32) -> i32 {
    v as i32
}

/// The broad category of a MIL element type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Category {
    Float,
    Int,
    Bool,
    Str,
}

/// The category holding elements of `data_type`, if the interpreter has one.
pub(crate) fn category(data_type: DataType) -> Option<Category> {
    use DataType as D;
    match data_type {
        D::Float16 | D::Float32 | D::Float64 | D::Bfloat16 | D::Float8e4m3fn | D::Float8e5m2 => {
            Some(Category::Float)
        }
        D::Int8
        | D::Int16
        | D::Int32
        | D::Int64
        | D::Int4
        | D::Uint8
        | D::Uint16
        | D::Uint32
        | D::Uint64
        | D::Uint4
        | D::Uint2
        | D::Uint1
        | D::Uint6
        | D::Uint3 => Some(Category::Int),
        D::Bool => Some(Category::Bool),
        D::String => Some(Category::Str),
        D::UnusedType => None,
    }
}

/// The type a program declares for a value: element type and shape (each
/// dimension known or not; `None` for an unknown rank). For a list, the
/// type and shape of its elements; for a dictionary, of its values.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Declared {
    pub data_type: DataType,
    pub dims: Option<Vec<Option<usize>>>,
    /// What holds the elements: a tensor, a list or a dictionary.
    pub holder: Holder,
}

/// The kind of value a [`Declared`] type is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Holder {
    Tensor,
    List,
    Dictionary,
}

impl Declared {
    /// The declared tensor type of `value_type`, if it is a tensor.
    pub(crate) fn of(value_type: Option<&mil_spec::ValueType>) -> Option<Declared> {
        match value_type?.r#type.as_ref()? {
            value_type::Type::TensorType(tensor) => Some(Declared::of_tensor(tensor)),
            value_type::Type::ListType(list) => Some(Declared {
                holder: Holder::List,
                ..Declared::of(list.r#type.as_deref())?
            }),
            value_type::Type::DictionaryType(dict) => Some(Declared {
                holder: Holder::Dictionary,
                ..Declared::of(dict.value_type.as_deref())?
            }),
            _ => None,
        }
    }

    /// The declared type of a tensor type.
    pub(crate) fn of_tensor(tensor: &mil_spec::TensorType) -> Declared {
        use mil_spec::dimension::Dimension as D;
        let data_type = DataType::try_from(tensor.data_type).unwrap_or(DataType::UnusedType);
        let dims = (tensor.rank >= 0).then(|| {
            tensor
                .dimensions
                .iter()
                .map(|d| match d.dimension {
                    Some(D::Constant(c)) => usize::try_from(c.size).ok(),
                    _ => None,
                })
                .collect()
        });
        Declared {
            data_type,
            dims,
            holder: Holder::Tensor,
        }
    }

    /// The shape, when every dimension is known.
    pub(crate) fn static_shape(&self) -> Option<Vec<usize>> {
        self.dims.as_ref()?.iter().copied().collect()
    }

    /// Whether `shape` agrees with the declaration.
    pub(crate) fn admits(&self, shape: &[usize]) -> bool {
        match &self.dims {
            None => true,
            Some(dims) => {
                dims.len() == shape.len()
                    && dims
                        .iter()
                        .zip(shape)
                        .all(|(d, s)| d.is_none_or(|d| d == *s))
            }
        }
    }
}

/// Rounds every element to the precision of `data_type` (fp16 and bf16
/// round to nearest even; wider types are left alone).
pub(crate) fn round_float(array: FloatArray, data_type: DataType) -> FloatArray {
    match data_type {
        DataType::Float16 => array.mapv(|v| f16::from_f32(v).to_f32()).into_shared(),
        DataType::Bfloat16 => array
            .mapv(|v| half::bf16::from_f32(v).to_f32())
            .into_shared(),
        _ => array,
    }
}

/// Rounds every element of `array` to the nearest fp16 value (ties to
/// even, overflow to infinity), in place: the device's rounding of an fp16
/// op result. Idempotent: an fp16 value widened to f32 rounds to itself.
/// An array shared with another slot is copied first (`ArcArray`).
pub(crate) fn round_fp16_in_place(array: &mut FloatArray) {
    array.mapv_inplace(|v| f16::from_f32(v).to_f32());
}

/// Wraps an integer into the range of `data_type`, as a C cast (numpy's
/// `astype`) does.
pub(crate) fn wrap_int(v: i64, data_type: DataType) -> i32 {
    match data_type {
        DataType::Int8 => v as i8 as i32,
        DataType::Uint8 => v as u8 as i32,
        DataType::Int16 => v as i16 as i32,
        DataType::Uint16 => v as u16 as i32,
        DataType::Int4 => ((v as i32) << 28) >> 28,
        DataType::Uint4 => (v & 0xF) as i32,
        DataType::Uint2 => (v & 0x3) as i32,
        DataType::Uint1 => (v & 0x1) as i32,
        DataType::Uint3 => (v & 0x7) as i32,
        DataType::Uint6 => (v & 0x3F) as i32,
        _ => v as i32,
    }
}

/// Converts `value` to the category of `declared` (the type the program
/// says an op returns): integer results of float arithmetic are truncated,
/// numbers become bools by comparing with zero. Float values keep their
/// f32 precision.
pub(crate) fn conform(value: Value, data_type: DataType) -> OpResult<Value> {
    let Some(wanted) = category(data_type) else {
        return Err(format!(
            "the program declares the unsupported element type {}",
            coreml_multifunction_format::package::blob::mil_type_name(data_type)
        ));
    };
    Ok(match (wanted, value) {
        (_, Value::State(i)) => Value::State(i),
        (_, v @ (Value::List(_) | Value::Dict(_))) => v,
        (Category::Float, v @ (Value::Float(_) | Value::Weight(_))) => v,
        (Category::Int, v @ Value::Int(_)) => v,
        (Category::Bool, v @ Value::Bool(_)) => v,
        (Category::Str, v @ Value::Str(_)) => v,
        (Category::Float, v) => Value::Float(v.to_float()?),
        (Category::Int, v) => Value::Int(v.to_int()?),
        (Category::Bool, v) => Value::Bool(v.to_bool()?),
        (Category::Str, v) => {
            return Err(format!("expected a string, found {}", v.kind()));
        }
    })
}

/// `value` as a value of the declared type `declared`: a tensor converted
/// to the declared element category (see [`conform`]); a list or a
/// dictionary where one is declared, and nowhere else.
pub(crate) fn conform_declared(value: Value, declared: &Declared) -> OpResult<Value> {
    match (declared.holder, &value) {
        (Holder::List, Value::List(list)) => {
            if category(list.dtype) != category(declared.data_type) {
                return Err(format!(
                    "a list of {} elements, where the program declares {}",
                    coreml_multifunction_format::package::blob::mil_type_name(list.dtype),
                    coreml_multifunction_format::package::blob::mil_type_name(declared.data_type)
                ));
            }
            Ok(value)
        }
        (Holder::Dictionary, Value::Dict(_)) => Ok(value),
        (Holder::Tensor, Value::List(_) | Value::Dict(_))
        | (Holder::List | Holder::Dictionary, _) => Err(format!(
            "{}, where the program declares {}",
            value.kind(),
            match declared.holder {
                Holder::Tensor => "a tensor",
                Holder::List => "a list",
                Holder::Dictionary => "a dictionary",
            }
        )),
        (Holder::Tensor, _) => conform(value, declared.data_type),
    }
}

/// Casts `value` to `data_type` as the `cast` op does: floats round to the
/// target precision, integers truncate toward zero and wrap to the target
/// width, bools compare with zero.
pub(crate) fn cast(value: &Value, data_type: DataType) -> OpResult<Value> {
    match category(data_type) {
        Some(Category::Float) => Ok(Value::Float(round_float(value.to_float()?, data_type))),
        Some(Category::Int) => {
            let wide: ArrayD<i64> = match value {
                Value::Float(a) => a.mapv(|v| v as i64),
                Value::Int(a) => a.mapv(i64::from),
                Value::Bool(a) => a.mapv(i64::from),
                other => return Err(format!("cannot cast {}", other.kind())),
            };
            Ok(Value::Int(
                wide.mapv(|v| wrap_int(v, data_type)).into_shared(),
            ))
        }
        Some(Category::Bool) => Ok(Value::Bool(value.to_bool()?)),
        _ => Err(format!(
            "cannot cast to {}",
            coreml_multifunction_format::package::blob::mil_type_name(data_type)
        )),
    }
}

/// The MIL element type named by a `dtype` string parameter ("fp16", ...):
/// shape inference's reading, so both give a cast the same type.
pub(crate) use coreml_multifunction_format::mil::infer::dtype_from_name;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn casts_follow_numpy() {
        let v = Value::float(vec![4], vec![-1.7, 2.5, 300.0, 0.1]).unwrap();
        let Value::Int(i) = cast(&v, DataType::Int32).unwrap() else {
            panic!()
        };
        assert_eq!(i.as_slice().unwrap(), &[-1, 2, 300, 0]);
        let Value::Int(i) = cast(&v, DataType::Int8).unwrap() else {
            panic!()
        };
        // 300 wraps to 44 in int8, as a C cast does.
        assert_eq!(i.as_slice().unwrap(), &[-1, 2, 44, 0]);
        let Value::Float(f) = cast(&v, DataType::Float16).unwrap() else {
            panic!()
        };
        assert_eq!(f[[3]], f16::from_f32(0.1).to_f32());
        assert_ne!(f[[3]], 0.1);
        let Value::Bool(b) = cast(&v, DataType::Bool).unwrap() else {
            panic!()
        };
        assert_eq!(b.as_slice().unwrap(), &[true, true, true, true]);
    }

    #[test]
    fn sub_byte_wrapping_sign_extends_int4() {
        assert_eq!(wrap_int(0xF, DataType::Int4), -1);
        assert_eq!(wrap_int(7, DataType::Int4), 7);
        assert_eq!(wrap_int(8, DataType::Int4), -8);
        assert_eq!(wrap_int(0x1F, DataType::Uint4), 15);
    }

    #[test]
    fn conform_converts_to_the_declared_category() {
        let v = Value::float(vec![2], vec![1.9, -0.0]).unwrap();
        assert!(matches!(
            conform(v.clone(), DataType::Float16),
            Ok(Value::Float(_))
        ));
        let Ok(Value::Bool(b)) = conform(v, DataType::Bool) else {
            panic!()
        };
        assert_eq!(b.as_slice().unwrap(), &[true, false]);
        assert!(conform(Value::Str(vec!["x".into()]), DataType::Float32).is_err());
    }
}
