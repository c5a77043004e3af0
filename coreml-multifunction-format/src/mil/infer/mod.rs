//! Shape inference: the type of every op's results from the types (and,
//! for parameters, the values) of its inputs, one rule per op of the op
//! table ([`super::ops`]), as coremltools' type inference gives them.
//!
//! Values are followed too, where they are small and computable from
//! constants: the results of `shape`, and the slicing, concatenation,
//! casts and arithmetic that compute shapes from it. A fixed-shape function
//! folds those into constants ([`super::materialize`]). Integer values may
//! be partly known (`None` for an element that depends on a flexible
//! dimension), as a flexible shape's value is.
//!
//! Pure: no I/O, and no error is a panic. A rule that cannot determine a
//! result type says why, naming the parameter; the caller names the op.

mod constexpr;
mod elementwise;
mod index;
mod linalg;
mod misc;
mod quantize;
mod recurrent;
mod reduce;
mod resample;
mod sampling;
mod shape;
#[cfg(test)]
mod tests;
// Issue 23, opsvalues.
mod values;

use std::collections::BTreeMap;

use super::ops::Kind;
use crate::proto::mil_spec::DataType;

/// One dimension: its size, or `None` where it is not known (a flexible
/// dimension not fixed, or one that depends on data).
pub type Dim = Option<u64>;

/// The type of a tensor: element type and shape (the rank is always
/// known).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorType {
    /// The element type.
    pub dtype: DataType,
    /// The dimensions.
    pub shape: Vec<Dim>,
}

impl TensorType {
    /// A tensor of `dtype` and fully known `shape`.
    pub fn known(dtype: DataType, shape: &[u64]) -> TensorType {
        TensorType {
            dtype,
            shape: shape.iter().map(|&d| Some(d)).collect(),
        }
    }

    /// The rank.
    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// The shape, if every dimension is known.
    pub fn known_shape(&self) -> Option<Vec<u64>> {
        self.shape.iter().copied().collect()
    }

    /// The element count, if every dimension is known.
    pub fn element_count(&self) -> Option<u64> {
        self.shape
            .iter()
            .try_fold(1u64, |n, d| d.and_then(|d| n.checked_mul(d)))
    }

    fn with_dtype(&self, dtype: DataType) -> TensorType {
        TensorType {
            dtype,
            shape: self.shape.clone(),
        }
    }

    /// `[1, ?, 64] fp32`, for messages.
    pub fn describe(&self) -> String {
        format!("{} {}", shape_text(&self.shape), dtype_name(self.dtype))
    }
}

/// `[1, ?, 64]`.
pub fn shape_text(shape: &[Dim]) -> String {
    let dims: Vec<String> = shape
        .iter()
        .map(|d| d.map_or("?".to_string(), |d| d.to_string()))
        .collect();
    format!("[{}]", dims.join(", "))
}

/// The name MIL gives a data type (`fp32`, `int32`, `bool`).
pub use crate::package::blob::mil_type_name as dtype_name;

/// The data type coremltools names `name` (`cast`'s `dtype`, the
/// `output_dtype` parameters).
pub fn dtype_from_name(name: &str) -> Option<DataType> {
    Some(match name {
        "bool" => DataType::Bool,
        "fp16" => DataType::Float16,
        "fp32" => DataType::Float32,
        "fp64" => DataType::Float64,
        "bf16" => DataType::Bfloat16,
        "int8" => DataType::Int8,
        "int16" => DataType::Int16,
        "int32" => DataType::Int32,
        "int64" => DataType::Int64,
        "uint8" => DataType::Uint8,
        "uint16" => DataType::Uint16,
        "uint32" => DataType::Uint32,
        "uint64" => DataType::Uint64,
        "int4" => DataType::Int4,
        "uint4" => DataType::Uint4,
        "str" | "string" => DataType::String,
        _ => return None,
    })
}

/// Whether `dtype` is a floating-point type.
pub fn is_float(dtype: DataType) -> bool {
    matches!(
        dtype,
        DataType::Float16
            | DataType::Float32
            | DataType::Float64
            | DataType::Bfloat16
            | DataType::Float8e4m3fn
            | DataType::Float8e5m2
    )
}

/// The elements of a small tensor, row-major.
#[derive(Debug, Clone, PartialEq)]
pub enum Elements {
    /// Integers; `None` for an element not known (a flexible dimension).
    Int(Vec<Option<i64>>),
    /// Floating-point numbers.
    Float(Vec<f64>),
    /// Booleans.
    Bool(Vec<bool>),
    /// Strings.
    Str(Vec<String>),
}

impl Elements {
    /// Known integers.
    pub fn ints(values: impl IntoIterator<Item = i64>) -> Elements {
        Elements::Int(values.into_iter().map(Some).collect())
    }

    /// The element count.
    pub fn len(&self) -> usize {
        match self {
            Elements::Int(v) => v.len(),
            Elements::Float(v) => v.len(),
            Elements::Bool(v) => v.len(),
            Elements::Str(v) => v.len(),
        }
    }

    /// Whether there is no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether every element is known.
    pub fn is_known(&self) -> bool {
        match self {
            Elements::Int(v) => v.iter().all(Option::is_some),
            _ => true,
        }
    }

    /// The elements as integers (floats truncated, as numpy's `astype`),
    /// `None` where not known; strings are not numbers.
    fn to_ints(&self) -> Option<Vec<Option<i64>>> {
        Some(match self {
            Elements::Int(v) => v.clone(),
            Elements::Float(v) => v
                .iter()
                .map(|&f| f.is_finite().then_some(f as i64))
                .collect(),
            Elements::Bool(v) => v.iter().map(|&b| Some(b as i64)).collect(),
            Elements::Str(_) => return None,
        })
    }

    /// The elements as floats, if all are known numbers.
    fn to_floats(&self) -> Option<Vec<f64>> {
        match self {
            Elements::Int(v) => v.iter().map(|i| i.map(|i| i as f64)).collect(),
            Elements::Float(v) => Some(v.clone()),
            Elements::Bool(v) => Some(v.iter().map(|&b| b as u8 as f64).collect()),
            Elements::Str(_) => None,
        }
    }

    /// The elements of `parts` one after another, as elements of `dtype`
    /// (`None` when one cannot be: strings, or an unknown float).
    fn joined(dtype: DataType, parts: &[&Elements]) -> Option<Elements> {
        Some(if dtype == DataType::Bool {
            let bools: Option<Vec<Vec<bool>>> = parts
                .iter()
                .map(|e| match e {
                    Elements::Bool(b) => Some(b.clone()),
                    _ => None,
                })
                .collect();
            Elements::Bool(bools?.concat())
        } else if is_float(dtype) {
            let floats: Option<Vec<Vec<f64>>> = parts.iter().map(|e| e.to_floats()).collect();
            Elements::Float(floats?.concat())
        } else if dtype == DataType::String {
            return None;
        } else {
            let ints: Option<Vec<Vec<Option<i64>>>> = parts.iter().map(|e| e.to_ints()).collect();
            Elements::Int(ints?.concat())
        })
    }

    /// The elements at `indices` (each in bounds).
    fn pick(&self, indices: &[usize]) -> Elements {
        fn at<T: Clone>(v: &[T], indices: &[usize]) -> Vec<T> {
            indices.iter().map(|&i| v[i].clone()).collect()
        }
        match self {
            Elements::Int(v) => Elements::Int(at(v, indices)),
            Elements::Float(v) => Elements::Float(at(v, indices)),
            Elements::Bool(v) => Elements::Bool(at(v, indices)),
            Elements::Str(v) => Elements::Str(at(v, indices)),
        }
    }

    /// The elements converted to `dtype`, as `cast` converts them.
    fn cast(&self, dtype: DataType) -> Option<Elements> {
        Some(if dtype == DataType::Bool {
            match self {
                Elements::Bool(v) => Elements::Bool(v.clone()),
                other => Elements::Bool(other.to_floats()?.iter().map(|&f| f != 0.0).collect()),
            }
        } else if is_float(dtype) {
            let floats = self.to_floats()?;
            Elements::Float(if dtype == DataType::Float16 {
                floats.iter().map(|&f| round_to_f16(f)).collect()
            } else if dtype == DataType::Float32 {
                floats.iter().map(|&f| f as f32 as f64).collect()
            } else {
                floats
            })
        } else if dtype == DataType::String {
            return None;
        } else {
            Elements::Int(self.to_ints()?)
        })
    }
}

/// `f` rounded to the nearest fp16 value (ties to even), as a cast to fp16
/// stores it.
fn round_to_f16(f: f64) -> f64 {
    let f = f as f32;
    if !f.is_finite() || f == 0.0 {
        return f as f64;
    }
    let exponent = f.abs().log2().floor().max(-14.0);
    let quantum = (2.0f32).powf(exponent - 10.0);
    let rounded = (f / quantum).round_ties_even() * quantum;
    if rounded.abs() > 65504.0 {
        return f64::from(f32::INFINITY.copysign(f));
    }
    rounded as f64
}

/// A value an op reads: its type, whether it is a state (what
/// `read_state` and `write_state` take), and its elements where known.
#[derive(Debug, Clone, PartialEq)]
pub struct Operand {
    /// The type (of the tensor a state holds, for a state; of a list's
    /// elements, for a list; of a dictionary's values, for a dictionary).
    pub ty: TensorType,
    /// Whether it is a state.
    pub state: bool,
    /// The elements, where known and small (see [`MAX_FOLDED`]).
    pub value: Option<Elements>,
    /// Whether it is a list or a dictionary rather than a tensor.
    pub container: Option<Container>,
}

/// The values that are not tensors: `make_list`'s lists and `classify`'s
/// dictionary. An [`Operand`]'s `ty` is then the type of the elements (of
/// the values, for a dictionary).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Container {
    /// A list of tensors, `length` long when known (coremltools types a
    /// list by `make_list`'s `init_length`).
    List {
        /// The length, when known.
        length: Option<u64>,
    },
    /// A dictionary from `key` (string or int64) to values.
    Dictionary {
        /// The key type.
        key: DataType,
    },
}

/// The most elements a value is followed for. Shapes and the masks built
/// from them stay under it; weights, which are never computed, need not.
pub const MAX_FOLDED: usize = 4096;

impl Operand {
    /// A tensor whose value is not known.
    pub fn tensor(ty: TensorType) -> Operand {
        Operand {
            ty,
            state: false,
            value: None,
            container: None,
        }
    }

    /// A list of elements of type `element`.
    pub fn list(element: TensorType, length: Option<u64>) -> Operand {
        Operand {
            container: Some(Container::List { length }),
            ..Operand::tensor(element)
        }
    }

    /// A dictionary from `key` to values of type `value`.
    pub fn dictionary(key: DataType, value: TensorType) -> Operand {
        Operand {
            container: Some(Container::Dictionary { key }),
            ..Operand::tensor(value)
        }
    }

    /// The length of a list operand (`Ok(None)`: not known); an error for
    /// anything else.
    pub fn list_length(&self) -> Result<Option<u64>, String> {
        match self.container {
            Some(Container::List { length }) => Ok(length),
            _ => Err("is not a list".to_string()),
        }
    }

    /// A tensor with known elements (followed only when small).
    pub fn with_value(ty: TensorType, value: Elements) -> Operand {
        let small = value.len() <= MAX_FOLDED;
        Operand {
            value: small.then_some(value),
            ..Operand::tensor(ty)
        }
    }

    /// A tensor with elements that may not be small or may be missing.
    fn maybe(ty: TensorType, value: Option<Elements>) -> Operand {
        match value {
            Some(v) => Operand::with_value(ty, v),
            None => Operand::tensor(ty),
        }
    }
}

/// The result of a rule: one operand per result.
pub type RuleResult = Result<Vec<Operand>, String>;

/// The inputs of one op, by parameter name (a tuple parameter, as
/// `concat`'s `values`, has several), with typed readers. The readers
/// mirror the interpreter's, by name: a parameter the interpreter reads
/// with `opt_i64` is read here with `opt_i64`, and must be a constant.
pub struct Inputs<'a> {
    args: &'a BTreeMap<String, Vec<Operand>>,
}

impl<'a> Inputs<'a> {
    /// The inputs `args`.
    pub fn new(args: &'a BTreeMap<String, Vec<Operand>>) -> Inputs<'a> {
        Inputs { args }
    }

    /// The operand bound to `name`, if given.
    pub fn get(&self, name: &str) -> Result<Option<&'a Operand>, String> {
        match self.args.get(name).map(Vec::as_slice) {
            None | Some([]) => Ok(None),
            Some([one]) => Ok(Some(one)),
            Some(many) => Err(format!(
                "parameter {name:?} is bound to {} values, it takes one",
                many.len()
            )),
        }
    }

    /// The operand bound to required parameter `name`.
    pub fn required(&self, name: &str) -> Result<&'a Operand, String> {
        self.get(name)?
            .ok_or_else(|| format!("lacks its required input {name:?}"))
    }

    /// The type of required tensor parameter `name`.
    pub fn tensor(&self, name: &str) -> Result<&'a TensorType, String> {
        let operand = self.required(name)?;
        if operand.state {
            return Err(format!("input {name:?} is a state, not a tensor"));
        }
        if operand.container.is_some() {
            return Err(format!(
                "input {name:?} is a list or dictionary, not a tensor"
            ));
        }
        Ok(&operand.ty)
    }

    /// Every operand bound to tuple parameter `name`.
    pub fn list(&self, name: &str) -> Vec<&'a Operand> {
        self.args
            .get(name)
            .map(|v| v.iter().collect())
            .unwrap_or_default()
    }

    /// The elements of parameter `name`, which must be a constant when
    /// given.
    fn constant(&self, name: &str) -> Result<Option<&'a Elements>, String> {
        match self.get(name)? {
            None => Ok(None),
            Some(Operand { value: Some(v), .. }) => Ok(Some(v)),
            Some(_) => Err(format!(
                "parameter {name:?} is not a constant here, so the result's shape cannot \
                 be inferred"
            )),
        }
    }

    /// Optional integer-vector parameter `name`, every element known.
    pub fn opt_i64_vec(&self, name: &str) -> Result<Option<Vec<i64>>, String> {
        let Some(value) = self.constant(name)? else {
            return Ok(None);
        };
        value
            .to_ints()
            .and_then(|v| v.into_iter().collect::<Option<Vec<i64>>>())
            .map(Some)
            .ok_or_else(|| {
                format!("parameter {name:?} is not a known integer vector, so the result's shape cannot be inferred")
            })
    }

    /// Required integer-vector parameter `name`.
    pub fn i64_vec(&self, name: &str) -> Result<Vec<i64>, String> {
        self.opt_i64_vec(name)?
            .ok_or_else(|| format!("lacks its required input {name:?}"))
    }

    /// Optional integer parameter `name` (a scalar or one element).
    pub fn opt_i64(&self, name: &str) -> Result<Option<i64>, String> {
        match self.opt_i64_vec(name)? {
            None => Ok(None),
            Some(v) if v.len() == 1 => Ok(Some(v[0])),
            Some(v) => Err(format!("parameter {name:?} is {v:?}, not one integer")),
        }
    }

    /// Required integer parameter `name`.
    pub fn i64(&self, name: &str) -> Result<i64, String> {
        self.opt_i64(name)?
            .ok_or_else(|| format!("lacks its required input {name:?}"))
    }

    /// Optional bool parameter `name`.
    pub fn opt_bool(&self, name: &str) -> Result<Option<bool>, String> {
        match self.constant(name)? {
            None => Ok(None),
            Some(Elements::Bool(v)) if v.len() == 1 => Ok(Some(v[0])),
            Some(other) => Err(format!("parameter {name:?} is {other:?}, not one bool")),
        }
    }

    /// Optional bool-vector parameter `name`.
    pub fn opt_bool_vec(&self, name: &str) -> Result<Option<Vec<bool>>, String> {
        match self.constant(name)? {
            None => Ok(None),
            Some(Elements::Bool(v)) => Ok(Some(v.clone())),
            Some(other) => Err(format!("parameter {name:?} is {other:?}, not bools")),
        }
    }

    /// Optional float parameter `name`.
    pub fn opt_f64(&self, name: &str) -> Result<Option<f64>, String> {
        match self.constant(name)?.map(Elements::to_floats) {
            None => Ok(None),
            Some(Some(v)) if v.len() == 1 => Ok(Some(v[0])),
            Some(_) => Err(format!("parameter {name:?} is not one number")),
        }
    }

    /// Optional string parameter `name`.
    pub fn opt_str(&self, name: &str) -> Result<Option<&'a str>, String> {
        match self.constant(name)? {
            None => Ok(None),
            Some(Elements::Str(v)) if v.len() == 1 => Ok(Some(v[0].as_str())),
            Some(other) => Err(format!("parameter {name:?} is {other:?}, not a string")),
        }
    }
}

/// The results of an op of kind `kind` on `inputs`: one operand per
/// result, its value computed where the inputs' values allow and it is
/// small.
///
/// `const` and the control-flow ops are not rules of their own: a
/// constant's type is its value's, and a nested block's results are those
/// of its ops ([`super::materialize`] walks them).
pub fn infer(kind: Kind, inputs: &Inputs<'_>) -> RuleResult {
    use Kind as K;
    let one = |r: Result<Operand, String>| r.map(|o| vec![o]);
    match kind {
        K::Const | K::WhileLoop | K::Cond => Err(
            "a constant or control-flow op has no shape rule of its own (inference bug)"
                .to_string(),
        ),
        K::Constexpr(op) => constexpr::infer(op, inputs),
        K::ReadState => {
            let state = inputs.required("input")?;
            if !state.state {
                return Err("input \"input\" is not a state".to_string());
            }
            Ok(vec![Operand::tensor(state.ty.clone())])
        }
        K::WriteState => {
            let state = inputs.required("input")?;
            let data = inputs.tensor("data")?;
            if !state.state {
                return Err("input \"input\" is not a state".to_string());
            }
            shape::same_shape(&state.ty, data, "the state", "data")?;
            Ok(vec![])
        }
        K::Binary(op) => one(elementwise::binary(op, inputs)),
        K::Unary(op) => one(elementwise::unary(op, inputs)),
        K::Gelu
        | K::Rsqrt
        | K::Log
        | K::Inverse
        | K::LeakyRelu
        | K::Elu
        | K::ClampedRelu
        | K::Clip
        | K::ThresholdedRelu
        | K::Threshold
        | K::SigmoidHard
        | K::ScaledTanh
        | K::LinearActivation
        | K::SoftplusParametric
        | K::Softmax
        | K::L2Norm
        | K::LocalResponseNorm
        | K::InstanceNorm
        | K::BatchNorm
        | K::LayerNorm
        | K::Prelu
        | K::Reverse
        | K::BandPart => one(elementwise::same_as_x(kind, inputs)),
        K::Select => one(elementwise::select(inputs)),
        K::Cast => one(elementwise::cast(inputs)),
        K::Identity => Ok(vec![inputs.required("x")?.clone()]),
        K::Reduce(op) => one(reduce::reduce(op, inputs)),
        K::ArgMax | K::ArgMin => one(reduce::arg_reduce(inputs)),
        K::Linear => one(linalg::linear(inputs)),
        K::Matmul => one(linalg::matmul(inputs)),
        K::Attention => one(linalg::attention(inputs)),
        K::Conv => one(linalg::conv(inputs)),
        K::ConvTranspose => one(linalg::conv_transpose(inputs)),
        K::Pool(_) => one(linalg::pool(inputs)),
        K::Reshape => one(shape::reshape(inputs)),
        K::Transpose => one(shape::transpose(inputs)),
        K::ExpandDims => one(shape::expand_dims(inputs)),
        K::Squeeze => one(shape::squeeze(inputs)),
        K::Concat => one(shape::concat(inputs)),
        K::Split => shape::split(inputs),
        K::Stack => one(shape::stack(inputs)),
        K::SliceByIndex => one(shape::slice_by_index(inputs)),
        K::SliceBySize => one(shape::slice_by_size(inputs)),
        K::SliceUpdate => one(shape::slice_update(inputs)),
        K::Tile => one(shape::tile(inputs)),
        K::Pad => one(shape::pad(inputs)),
        K::Crop => one(shape::crop(inputs)),
        K::Fill => one(shape::fill(inputs)),
        K::FillLike => one(shape::fill_like(inputs)),
        K::Shape => one(shape::shape_of(inputs)),
        K::Range1d => one(shape::range_1d(inputs)),
        K::Gather => one(index::gather(inputs)),
        K::GatherAlongAxis => one(index::gather_along_axis(inputs)),
        K::GatherNd => one(index::gather_nd(inputs)),
        K::Scatter | K::ScatterAlongAxis | K::ScatterNd => one(index::scatter(inputs)),
        K::TopK => index::topk(inputs),
        K::ArgSort => one(index::argsort(inputs)),
        K::CumSum => one(index::cumsum(inputs)),
        K::OneHot => one(index::one_hot(inputs)),
        K::NonZero => one(index::non_zero(inputs)),
        K::ReverseSequence => one(elementwise::same_as_x(kind, inputs)),
        K::UpsampleNearest | K::UpsampleBilinear => one(resample::upsample(inputs)),
        K::ResizeNearest | K::ResizeBilinear => one(resample::resize(inputs)),
        K::Rearrange(op) => one(resample::rearrange(op, inputs)),
        K::Lstm => recurrent::lstm(inputs),
        K::Rnn => recurrent::rnn(inputs),
        // Issue 23 (opsvq): quantization, sampling grids, detection.
        K::Quantize => one(quantize::quantize(inputs)),
        K::Dequantize => one(quantize::dequantize(inputs)),
        K::ConvQuantized => one(quantize::conv_quantized(inputs)),
        K::Resample => one(sampling::resample(inputs)),
        K::Affine => one(sampling::affine(inputs)),
        K::CropResize => one(sampling::crop_resize(inputs)),
        K::Resize => one(sampling::resize(inputs)),
        K::NonMaximumSuppression => sampling::non_maximum_suppression(inputs),
        // issue 23 (opsmisc)
        K::Gru => recurrent::gru(inputs),
        K::Einsum => one(misc::einsum(inputs)),
        K::SpaceToBatch => one(misc::batch_space(inputs, true)),
        K::BatchToSpace => one(misc::batch_space(inputs, false)),
        K::Flatten2d => one(misc::flatten2d(inputs)),
        K::ReshapeLike => one(misc::reshape_like(inputs)),
        K::SlidingWindows => one(misc::sliding_windows(inputs)),
        K::Random(op) => one(misc::random(op, inputs)),
        // Issue 23, opsvalues.
        K::Classify => values::classify(inputs),
        K::MakeList => one(values::make_list(inputs)),
        K::ListRead => one(values::list_read(inputs)),
        K::ListWrite => one(values::list_write(inputs)),
        K::ListGather => one(values::list_gather(inputs)),
        K::ListScatter => one(values::list_scatter(inputs)),
        K::ListLength => one(values::list_length(inputs)),
    }
}

/// Normalizes a possibly negative axis (the interpreter's rule).
fn axis(axis: i64, rank: usize) -> Result<usize, String> {
    super::shapes::axis(axis, rank)
}

/// Two dimensions that must be equal: the known one where one is unknown.
fn unify(a: Dim, b: Dim, what: impl FnOnce() -> String) -> Result<Dim, String> {
    match (a, b) {
        (Some(x), Some(y)) if x != y => Err(what()),
        (Some(x), _) | (_, Some(x)) => Ok(Some(x)),
        (None, None) => Ok(None),
    }
}
