//! The ops: which ones exist, what parameters each takes, and their
//! implementations on ndarray.
//!
//! Semantics follow coremltools' op definitions
//! (`coremltools/converters/mil/mil/ops/defs/iOS15..iOS18`): parameter
//! names, defaults, broadcasting (numpy's), negative axes, and the
//! numpy-style slicing of `slice_by_index` / `slice_update`.

pub(crate) mod constexpr;
mod elementwise;
mod linalg;
mod recurrent;
mod reduce;
mod shape;

use ndarray::{ArcArray, IxDyn};

use super::program::Step;
use super::value::{OpResult, Value};

pub(crate) use elementwise::{Binary, Unary};
pub(crate) use reduce::Reduce;

/// What a step computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Const,
    Constexpr(constexpr::Constexpr),
    Linear,
    Matmul,
    Conv,
    Attention,
    Binary(Binary),
    Unary(Unary),
    Gelu,
    Rsqrt,
    Log,
    Inverse,
    LeakyRelu,
    Elu,
    ClampedRelu,
    Clip,
    Softmax,
    LayerNorm,
    Reduce(Reduce),
    ArgMax,
    ArgMin,
    Reshape,
    Transpose,
    ExpandDims,
    Squeeze,
    Concat,
    Split,
    Stack,
    SliceByIndex,
    SliceBySize,
    SliceUpdate,
    Tile,
    Gather,
    GatherAlongAxis,
    Select,
    Fill,
    FillLike,
    Shape,
    BandPart,
    Range1d,
    Cast,
    Identity,
    ReadState,
    WriteState,
    WhileLoop,
    Cond,
    Lstm,
    Rnn,
}

/// An op's interface: what it computes, the parameters it requires and
/// accepts, and how many outputs it has (`None`: variable, as `split`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Spec {
    pub kind: Kind,
    pub required: &'static [&'static str],
    pub optional: &'static [&'static str],
    pub outputs: Option<usize>,
}

const X: &[&str] = &["x"];
const XY: &[&str] = &["x", "y"];
const NONE: &[&str] = &[];
const REDUCE_OPTIONAL: &[&str] = &["axes", "keep_dims"];
const SLICE_OPTIONAL: &[&str] = &["stride", "begin_mask", "end_mask", "squeeze_mask"];

/// The interface of op type `op_type`, if the backend implements it.
pub(crate) fn spec(op_type: &str) -> Option<Spec> {
    use constexpr::Constexpr as C;
    let one = |kind, required, optional| {
        Some(Spec {
            kind,
            required,
            optional,
            outputs: Some(1),
        })
    };
    if let Some(binary) = Binary::from_op(op_type) {
        return one(Kind::Binary(binary), XY, NONE);
    }
    if let Some(unary) = Unary::from_op(op_type) {
        return one(Kind::Unary(unary), X, NONE);
    }
    if let Some(reduce) = Reduce::from_op(op_type) {
        return one(Kind::Reduce(reduce), X, REDUCE_OPTIONAL);
    }
    match op_type {
        "const" => one(Kind::Const, &["val"], NONE),
        "constexpr_affine_dequantize" => one(
            Kind::Constexpr(C::AffineDequantize),
            &["quantized_data", "zero_point", "scale", "axis"],
            NONE,
        ),
        "constexpr_blockwise_shift_scale" => one(
            Kind::Constexpr(C::BlockwiseShiftScale),
            &["data", "scale"],
            &["offset"],
        ),
        "constexpr_lut_to_dense" => one(
            Kind::Constexpr(C::LutToDense),
            &["indices", "lut"],
            &["shape", "vector_axis"],
        ),
        "constexpr_sparse_to_dense" => one(
            Kind::Constexpr(C::SparseToDense),
            &["nonzero_data", "mask"],
            &["shape"],
        ),
        "constexpr_cast" => one(
            Kind::Constexpr(C::Cast),
            &["source_val", "output_dtype"],
            NONE,
        ),
        "linear" => one(Kind::Linear, &["x", "weight"], &["bias"]),
        "matmul" => one(Kind::Matmul, XY, &["transpose_x", "transpose_y"]),
        "conv" => one(
            Kind::Conv,
            &["x", "weight"],
            &["bias", "strides", "pad_type", "pad", "dilations", "groups"],
        ),
        "scaled_dot_product_attention" => {
            one(Kind::Attention, &["query", "key", "value"], &["attn_mask"])
        }
        "gelu" => one(Kind::Gelu, X, &["mode"]),
        "rsqrt" => one(Kind::Rsqrt, X, &["epsilon"]),
        "log" => one(Kind::Log, X, &["epsilon"]),
        "inverse" => one(Kind::Inverse, X, &["epsilon"]),
        "leaky_relu" => one(Kind::LeakyRelu, X, &["alpha"]),
        "elu" => one(Kind::Elu, X, &["alpha"]),
        "clamped_relu" => one(Kind::ClampedRelu, &["x", "alpha", "beta"], NONE),
        "clip" => one(Kind::Clip, &["x", "alpha", "beta"], NONE),
        "softmax" => one(Kind::Softmax, X, &["axis"]),
        "layer_norm" => one(Kind::LayerNorm, X, &["axes", "gamma", "beta", "epsilon"]),
        "reduce_argmax" => one(Kind::ArgMax, X, &["axis", "keep_dims", "output_dtype"]),
        "reduce_argmin" => one(Kind::ArgMin, X, &["axis", "keep_dims", "output_dtype"]),
        "reshape" => one(Kind::Reshape, &["x", "shape"], NONE),
        "transpose" => one(Kind::Transpose, &["x", "perm"], NONE),
        "expand_dims" => one(Kind::ExpandDims, &["x", "axes"], NONE),
        "squeeze" => one(Kind::Squeeze, X, &["axes"]),
        "concat" => one(Kind::Concat, &["values", "axis"], &["interleave"]),
        "split" => Some(Spec {
            kind: Kind::Split,
            required: &["x", "axis"],
            optional: &["num_splits", "split_sizes"],
            outputs: None,
        }),
        "stack" => one(Kind::Stack, &["values", "axis"], NONE),
        "slice_by_index" => one(Kind::SliceByIndex, &["x", "begin", "end"], SLICE_OPTIONAL),
        "slice_by_size" => one(Kind::SliceBySize, &["x", "begin", "size"], NONE),
        "slice_update" => one(
            Kind::SliceUpdate,
            &["x", "update", "begin", "end"],
            SLICE_OPTIONAL,
        ),
        "tile" => one(Kind::Tile, &["x", "reps"], NONE),
        "gather" => one(
            Kind::Gather,
            &["x", "indices"],
            &["axis", "batch_dims", "validate_indices"],
        ),
        "gather_along_axis" => one(
            Kind::GatherAlongAxis,
            &["x", "indices"],
            &["axis", "validate_indices"],
        ),
        "select" => one(Kind::Select, &["cond", "a", "b"], NONE),
        "fill" => one(Kind::Fill, &["shape"], &["value"]),
        "fill_like" => one(Kind::FillLike, &["ref_tensor"], &["value"]),
        "shape" => one(Kind::Shape, X, NONE),
        "band_part" => one(Kind::BandPart, X, &["lower", "upper"]),
        "range_1d" => one(Kind::Range1d, &["end", "start", "step"], NONE),
        "cast" => one(Kind::Cast, &["x", "dtype"], NONE),
        "identity" => one(Kind::Identity, X, NONE),
        "read_state" => one(Kind::ReadState, &["input"], NONE),
        "write_state" => Some(Spec {
            kind: Kind::WriteState,
            required: &["input", "data"],
            optional: NONE,
            outputs: Some(0),
        }),
        "while_loop" => Some(Spec {
            kind: Kind::WhileLoop,
            required: &["loop_vars"],
            optional: NONE,
            outputs: None,
        }),
        "cond" => Some(Spec {
            kind: Kind::Cond,
            required: &["pred"],
            optional: NONE,
            outputs: None,
        }),
        "lstm" => Some(Spec {
            kind: Kind::Lstm,
            required: &["x", "initial_h", "initial_c", "weight_ih", "weight_hh"],
            optional: &[
                "bias",
                "peephole",
                "weight_ih_back",
                "weight_hh_back",
                "bias_back",
                "peephole_back",
                "direction",
                "output_sequence",
                "recurrent_activation",
                "cell_activation",
                "activation",
                "clip",
            ],
            outputs: Some(3),
        }),
        "rnn" => Some(Spec {
            kind: Kind::Rnn,
            required: &["x", "initial_h", "weight_ih", "weight_hh"],
            optional: &["bias", "direction", "output_sequence", "activation"],
            outputs: Some(2),
        }),
        _ => None,
    }
}

/// The op types the backend implements, for tests.
#[cfg(test)]
pub(crate) fn supported() -> Vec<&'static str> {
    let mut all: Vec<&'static str> = [
        "const",
        "constexpr_affine_dequantize",
        "constexpr_blockwise_shift_scale",
        "constexpr_lut_to_dense",
        "constexpr_sparse_to_dense",
        "constexpr_cast",
        "linear",
        "matmul",
        "conv",
        "scaled_dot_product_attention",
        "gelu",
        "rsqrt",
        "log",
        "inverse",
        "leaky_relu",
        "elu",
        "clamped_relu",
        "clip",
        "softmax",
        "layer_norm",
        "reduce_argmax",
        "reduce_argmin",
        "reshape",
        "transpose",
        "expand_dims",
        "squeeze",
        "concat",
        "split",
        "stack",
        "slice_by_index",
        "slice_by_size",
        "slice_update",
        "tile",
        "gather",
        "gather_along_axis",
        "select",
        "fill",
        "fill_like",
        "shape",
        "band_part",
        "range_1d",
        "cast",
        "identity",
        "read_state",
        "write_state",
        "while_loop",
        "cond",
        "lstm",
        "rnn",
    ]
    .to_vec();
    all.extend(Binary::ALL.iter().map(|b| b.name()));
    all.extend(Unary::ALL.iter().map(|u| u.name()));
    all.extend(Reduce::ALL.iter().map(|r| r.name()));
    all.sort_unstable();
    all
}

/// The values a step reads, by parameter name.
pub(crate) struct Args<'a> {
    pub step: &'a Step,
    pub env: &'a [Option<Value>],
}

impl<'a> Args<'a> {
    /// The value of parameter `name`, if given.
    pub(crate) fn get(&self, name: &str) -> OpResult<Option<&'a Value>> {
        match self.step.input(name) {
            None | Some([]) => Ok(None),
            Some([slot]) => self.slot(*slot).map(Some),
            Some(slots) => Err(format!(
                "parameter {name:?} is bound to {} values, it takes one",
                slots.len()
            )),
        }
    }

    fn slot(&self, slot: usize) -> OpResult<&'a Value> {
        self.env
            .get(slot)
            .and_then(Option::as_ref)
            .ok_or_else(|| format!("reads slot {slot}, which holds no value (interpreter bug)"))
    }

    /// The value of required parameter `name`.
    pub(crate) fn required(&self, name: &str) -> OpResult<&'a Value> {
        self.get(name)?
            .ok_or_else(|| format!("lacks its required input {name:?}"))
    }

    /// Every value bound to tuple parameter `name` (`concat`'s `values`).
    pub(crate) fn list(&self, name: &str) -> OpResult<Vec<&'a Value>> {
        self.step
            .input(name)
            .unwrap_or_default()
            .iter()
            .map(|&slot| self.slot(slot))
            .collect()
    }

    /// Required parameter `name` as floats.
    pub(crate) fn float(&self, name: &str) -> OpResult<ArcArray<f32, IxDyn>> {
        self.required(name)?
            .to_float()
            .map_err(|e| format!("input {name:?}: {e}"))
    }

    /// Optional integer parameter `name`.
    pub(crate) fn opt_i64(&self, name: &str) -> OpResult<Option<i64>> {
        self.get(name)?
            .map(|v| {
                v.to_i64_scalar()
                    .map_err(|e| format!("input {name:?}: {e}"))
            })
            .transpose()
    }

    /// Optional integer-vector parameter `name`.
    pub(crate) fn opt_i64_vec(&self, name: &str) -> OpResult<Option<Vec<i64>>> {
        self.get(name)?
            .map(|v| v.to_i64_vec().map_err(|e| format!("input {name:?}: {e}")))
            .transpose()
    }

    /// Required integer-vector parameter `name`.
    pub(crate) fn i64_vec(&self, name: &str) -> OpResult<Vec<i64>> {
        self.opt_i64_vec(name)?
            .ok_or_else(|| format!("lacks its required input {name:?}"))
    }

    /// Optional bool parameter `name`.
    pub(crate) fn opt_bool(&self, name: &str) -> OpResult<Option<bool>> {
        self.get(name)?
            .map(|v| {
                v.to_bool_scalar()
                    .map_err(|e| format!("input {name:?}: {e}"))
            })
            .transpose()
    }

    /// Optional bool-vector parameter `name`.
    pub(crate) fn opt_bool_vec(&self, name: &str) -> OpResult<Option<Vec<bool>>> {
        self.get(name)?
            .map(|v| v.to_bool_vec().map_err(|e| format!("input {name:?}: {e}")))
            .transpose()
    }

    /// Optional float parameter `name`.
    pub(crate) fn opt_f32(&self, name: &str) -> OpResult<Option<f32>> {
        self.get(name)?
            .map(|v| {
                v.to_f32_scalar()
                    .map_err(|e| format!("input {name:?}: {e}"))
            })
            .transpose()
    }

    /// Required float parameter `name`.
    pub(crate) fn f32(&self, name: &str) -> OpResult<f32> {
        self.opt_f32(name)?
            .ok_or_else(|| format!("lacks its required input {name:?}"))
    }

    /// Optional string parameter `name`.
    pub(crate) fn opt_str(&self, name: &str) -> OpResult<Option<&'a str>> {
        self.get(name)?
            .map(|v| v.to_str().map_err(|e| format!("input {name:?}: {e}")))
            .transpose()
    }
}

/// Runs every kind of step but the state and control-flow ops (which the
/// executor runs).
pub(crate) fn run(kind: Kind, args: &Args<'_>) -> OpResult<Vec<Value>> {
    let single = |v: OpResult<Value>| v.map(|v| vec![v]);
    match kind {
        Kind::Const | Kind::Constexpr(_) => {
            Err("constants are evaluated at load time (interpreter bug)".to_string())
        }
        Kind::ReadState | Kind::WriteState => {
            Err("state ops are run by the executor (interpreter bug)".to_string())
        }
        Kind::WhileLoop | Kind::Cond => {
            Err("control flow is run by the executor (interpreter bug)".to_string())
        }
        Kind::Lstm => recurrent::lstm(args),
        Kind::Rnn => recurrent::rnn(args),
        Kind::Linear => single(linalg::linear(args)),
        Kind::Matmul => single(linalg::matmul(args)),
        Kind::Conv => single(linalg::conv(args)),
        Kind::Attention => single(linalg::attention(args)),
        Kind::Binary(op) => single(elementwise::binary(op, args)),
        Kind::Unary(op) => single(elementwise::unary(op, args)),
        Kind::Gelu => single(elementwise::gelu(args)),
        Kind::Rsqrt => single(elementwise::rsqrt(args)),
        Kind::Log => single(elementwise::log(args)),
        Kind::Inverse => single(elementwise::inverse(args)),
        Kind::LeakyRelu => single(elementwise::leaky_relu(args)),
        Kind::Elu => single(elementwise::elu(args)),
        Kind::ClampedRelu => single(elementwise::clamped_relu(args)),
        Kind::Clip => single(elementwise::clip(args)),
        Kind::Select => single(elementwise::select(args)),
        Kind::Cast => single(elementwise::cast(args)),
        Kind::Softmax => single(reduce::softmax(args)),
        Kind::LayerNorm => single(reduce::layer_norm(args)),
        Kind::Reduce(op) => single(reduce::reduce(op, args)),
        Kind::ArgMax => single(reduce::arg_reduce(true, args)),
        Kind::ArgMin => single(reduce::arg_reduce(false, args)),
        Kind::Reshape => single(shape::reshape(args)),
        Kind::Transpose => single(shape::transpose(args)),
        Kind::ExpandDims => single(shape::expand_dims(args)),
        Kind::Squeeze => single(shape::squeeze(args)),
        Kind::Concat => single(shape::concat(args)),
        Kind::Split => shape::split(args),
        Kind::Stack => single(shape::stack(args)),
        Kind::SliceByIndex => single(shape::slice_by_index(args)),
        Kind::SliceBySize => single(shape::slice_by_size(args)),
        Kind::SliceUpdate => single(shape::slice_update(args)),
        Kind::Tile => single(shape::tile(args)),
        Kind::Gather => single(shape::gather(args)),
        Kind::GatherAlongAxis => single(shape::gather_along_axis(args)),
        Kind::Fill => single(shape::fill(args)),
        Kind::FillLike => single(shape::fill_like(args)),
        Kind::Shape => single(shape::shape_of(args)),
        Kind::BandPart => single(shape::band_part(args)),
        Kind::Range1d => single(shape::range_1d(args)),
        Kind::Identity => single(Ok(args.required("x")?.clone())),
    }
}

/// The most elements an op may create from its parameters alone (`fill`,
/// `tile`, `range_1d`): 2^32, 16 GiB of f32. A program asking for more is
/// refused rather than allowed to exhaust memory.
const MAX_CREATED: usize = 1 << 32;

/// The element count of `shape`, refusing overflow and sizes beyond
/// [`MAX_CREATED`].
pub(crate) fn created_count(shape: &[usize]) -> OpResult<usize> {
    shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .filter(|&n| n <= MAX_CREATED)
        .ok_or_else(|| format!("a tensor of shape {shape:?} is too large to create"))
}

/// Normalizes a possibly negative axis of a tensor of rank `rank`.
pub(crate) fn axis(axis: i64, rank: usize) -> OpResult<usize> {
    let r = rank as i64;
    if axis < -r || axis >= r {
        return Err(format!(
            "axis {axis} is out of range for a tensor of rank {rank}"
        ));
    }
    Ok(if axis < 0 { axis + r } else { axis } as usize)
}

/// Applies `$body` (an expression producing `OpResult<ArcArray<T, IxDyn>>`
/// from `$array: &ArcArray<T, IxDyn>`) to a tensor of any element type.
macro_rules! any_tensor {
    ($value:expr, $array:ident => $body:expr) => {
        match $value {
            $crate::runtime::reference::value::Value::Float($array) => {
                $crate::runtime::reference::value::Value::Float($body?)
            }
            $crate::runtime::reference::value::Value::Int($array) => {
                $crate::runtime::reference::value::Value::Int($body?)
            }
            $crate::runtime::reference::value::Value::Bool($array) => {
                $crate::runtime::reference::value::Value::Bool($body?)
            }
            other => return Err(format!("expected a tensor, found {}", other.kind())),
        }
    };
}
pub(crate) use any_tensor;

#[cfg(test)]
mod tests;
