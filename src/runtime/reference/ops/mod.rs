//! The ops: which ones exist, what parameters each takes, and their
//! implementations on ndarray.
//!
//! Semantics follow coremltools' op definitions
//! (`coremltools/converters/mil/mil/ops/defs/iOS15..iOS18`): parameter
//! names, defaults, broadcasting (numpy's), negative axes, and the
//! numpy-style slicing of `slice_by_index` / `slice_update`.

pub(crate) mod constexpr;
mod conv;
mod elementwise;
mod index;
mod linalg;
mod pool;
mod recurrent;
mod reduce;
mod resample;
mod shape;
mod window;

use ndarray::{ArcArray, IxDyn};

use super::program::Step;
use super::value::{OpResult, Value};

pub(crate) use elementwise::{Binary, Unary};
pub(crate) use pool::Pool;
pub(crate) use reduce::Reduce;
pub(crate) use resample::Rearrange;

/// What a step computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Const,
    Constexpr(constexpr::Constexpr),
    Linear,
    Matmul,
    Conv,
    ConvTranspose,
    Attention,
    Pool(Pool),
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
    ThresholdedRelu,
    Threshold,
    SigmoidHard,
    ScaledTanh,
    LinearActivation,
    Prelu,
    SoftplusParametric,
    Softmax,
    LayerNorm,
    BatchNorm,
    InstanceNorm,
    L2Norm,
    LocalResponseNorm,
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
    Pad,
    Reverse,
    ReverseSequence,
    Crop,
    NonZero,
    Gather,
    GatherAlongAxis,
    GatherNd,
    Scatter,
    ScatterAlongAxis,
    ScatterNd,
    TopK,
    ArgSort,
    CumSum,
    OneHot,
    UpsampleNearest,
    ResizeNearest,
    UpsampleBilinear,
    ResizeBilinear,
    Rearrange(Rearrange),
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

/// The interface of an op with one result.
const fn single(
    kind: Kind,
    required: &'static [&'static str],
    optional: &'static [&'static str],
) -> Spec {
    Spec {
        kind,
        required,
        optional,
        outputs: Some(1),
    }
}

/// One row of the op table: an op with one result.
const fn op(
    name: &'static str,
    kind: Kind,
    required: &'static [&'static str],
    optional: &'static [&'static str],
) -> (&'static str, Spec) {
    (name, single(kind, required, optional))
}

/// `op` with `outputs` results (`None`: as many as the op computes).
const fn op_with_outputs(
    name: &'static str,
    kind: Kind,
    required: &'static [&'static str],
    optional: &'static [&'static str],
    outputs: Option<usize>,
) -> (&'static str, Spec) {
    (
        name,
        Spec {
            kind,
            required,
            optional,
            outputs,
        },
    )
}

const POOL: &[&str] = &["strides", "pad", "ceil_mode"];
const SCATTER_OPTIONAL: &[&str] = &["mode", "validate_indices"];
const UPSAMPLE: &[&str] = &["scale_factor_height", "scale_factor_width"];
const RESIZE: &[&str] = &["target_size_height", "target_size_width"];

/// Every op the backend implements beyond the elementwise and reduction
/// families (which [`Binary`], [`Unary`] and [`Reduce`] list): its type,
/// and its interface as coremltools' op definitions give it (the union of
/// the parameters of every opset version).
const TABLE: &[(&str, Spec)] = {
    use constexpr::Constexpr as C;
    use Kind as K;
    &[
        op("const", K::Const, &["val"], NONE),
        op(
            "constexpr_affine_dequantize",
            K::Constexpr(C::AffineDequantize),
            &["quantized_data", "zero_point", "scale", "axis"],
            NONE,
        ),
        op(
            "constexpr_blockwise_shift_scale",
            K::Constexpr(C::BlockwiseShiftScale),
            &["data", "scale"],
            &["offset"],
        ),
        op(
            "constexpr_lut_to_dense",
            K::Constexpr(C::LutToDense),
            &["indices", "lut"],
            &["shape", "vector_axis"],
        ),
        op(
            "constexpr_sparse_to_dense",
            K::Constexpr(C::SparseToDense),
            &["nonzero_data", "mask"],
            &["shape"],
        ),
        op(
            "constexpr_cast",
            K::Constexpr(C::Cast),
            &["source_val", "output_dtype"],
            NONE,
        ),
        op_with_outputs(
            "constexpr_lut_to_sparse",
            K::Constexpr(C::LutToSparse),
            &["indices_mask", "indices_nonzero_data", "lut"],
            &["vector_axis"],
            Some(2),
        ),
        op_with_outputs(
            "constexpr_sparse_blockwise_shift_scale",
            K::Constexpr(C::SparseBlockwiseShiftScale),
            &["data_mask", "nonzero_data", "scale"],
            &["offset"],
            Some(2),
        ),
        op("linear", K::Linear, &["x", "weight"], &["bias"]),
        op("matmul", K::Matmul, XY, &["transpose_x", "transpose_y"]),
        op(
            "conv",
            K::Conv,
            &["x", "weight"],
            &["bias", "strides", "pad_type", "pad", "dilations", "groups"],
        ),
        op(
            "conv_transpose",
            K::ConvTranspose,
            &["x", "weight"],
            &[
                "bias",
                "strides",
                "pad_type",
                "pad",
                "dilations",
                "groups",
                "output_shape",
            ],
        ),
        op(
            "scaled_dot_product_attention",
            K::Attention,
            &["query", "key", "value"],
            &["attn_mask"],
        ),
        op(
            "max_pool",
            K::Pool(Pool::Max),
            &["x", "kernel_sizes", "pad_type"],
            POOL,
        ),
        op(
            "avg_pool",
            K::Pool(Pool::Average),
            &["x", "kernel_sizes", "pad_type"],
            &[
                "strides",
                "pad",
                "ceil_mode",
                "exclude_padding_from_average",
            ],
        ),
        op(
            "l2_pool",
            K::Pool(Pool::L2),
            &["x", "kernel_sizes", "pad_type"],
            POOL,
        ),
        op("gelu", K::Gelu, X, &["mode"]),
        op("rsqrt", K::Rsqrt, X, &["epsilon"]),
        op("log", K::Log, X, &["epsilon"]),
        op("inverse", K::Inverse, X, &["epsilon"]),
        op("leaky_relu", K::LeakyRelu, X, &["alpha"]),
        op("elu", K::Elu, X, &["alpha"]),
        op(
            "clamped_relu",
            K::ClampedRelu,
            &["x", "alpha", "beta"],
            NONE,
        ),
        op("clip", K::Clip, &["x", "alpha", "beta"], NONE),
        op("thresholded_relu", K::ThresholdedRelu, X, &["alpha"]),
        op("threshold", K::Threshold, &["x", "alpha"], NONE),
        op("sigmoid_hard", K::SigmoidHard, X, &["alpha", "beta"]),
        op("scaled_tanh", K::ScaledTanh, X, &["alpha", "beta"]),
        op(
            "linear_activation",
            K::LinearActivation,
            &["x", "alpha"],
            &["beta"],
        ),
        op("prelu", K::Prelu, &["x", "alpha"], NONE),
        op(
            "softplus_parametric",
            K::SoftplusParametric,
            &["x", "alpha", "beta"],
            NONE,
        ),
        op("softmax", K::Softmax, X, &["axis"]),
        op(
            "layer_norm",
            K::LayerNorm,
            X,
            &["axes", "gamma", "beta", "epsilon"],
        ),
        op(
            "batch_norm",
            K::BatchNorm,
            &["x", "mean", "variance"],
            &["gamma", "beta", "epsilon"],
        ),
        op(
            "instance_norm",
            K::InstanceNorm,
            X,
            &["gamma", "beta", "epsilon"],
        ),
        op("l2_norm", K::L2Norm, X, &["epsilon"]),
        op(
            "local_response_norm",
            K::LocalResponseNorm,
            &["x", "size"],
            &["alpha", "beta", "k"],
        ),
        op(
            "reduce_argmax",
            K::ArgMax,
            X,
            &["axis", "keep_dims", "output_dtype"],
        ),
        op(
            "reduce_argmin",
            K::ArgMin,
            X,
            &["axis", "keep_dims", "output_dtype"],
        ),
        op("reshape", K::Reshape, &["x", "shape"], NONE),
        op("transpose", K::Transpose, &["x", "perm"], NONE),
        op("expand_dims", K::ExpandDims, &["x", "axes"], NONE),
        op("squeeze", K::Squeeze, X, &["axes"]),
        op("concat", K::Concat, &["values", "axis"], &["interleave"]),
        op_with_outputs(
            "split",
            K::Split,
            &["x", "axis"],
            &["num_splits", "split_sizes"],
            None,
        ),
        op("stack", K::Stack, &["values", "axis"], NONE),
        op(
            "slice_by_index",
            K::SliceByIndex,
            &["x", "begin", "end"],
            SLICE_OPTIONAL,
        ),
        op(
            "slice_by_size",
            K::SliceBySize,
            &["x", "begin", "size"],
            NONE,
        ),
        op(
            "slice_update",
            K::SliceUpdate,
            &["x", "update", "begin", "end"],
            SLICE_OPTIONAL,
        ),
        op("tile", K::Tile, &["x", "reps"], NONE),
        op("pad", K::Pad, &["x", "pad"], &["mode", "constant_val"]),
        op("reverse", K::Reverse, X, &["axes"]),
        op("crop", K::Crop, &["x", "crop_height", "crop_width"], NONE),
        op("non_zero", K::NonZero, X, NONE),
        op(
            "reverse_sequence",
            K::ReverseSequence,
            &["x", "lengths"],
            &["seq_axis", "batch_axis"],
        ),
        op(
            "gather",
            K::Gather,
            &["x", "indices"],
            &["axis", "batch_dims", "validate_indices"],
        ),
        op(
            "gather_along_axis",
            K::GatherAlongAxis,
            &["x", "indices"],
            &["axis", "validate_indices"],
        ),
        op(
            "gather_nd",
            K::GatherNd,
            &["x", "indices"],
            &["batch_dims", "validate_indices"],
        ),
        op(
            "scatter",
            K::Scatter,
            &["data", "indices", "updates"],
            &["axis", "mode", "validate_indices"],
        ),
        op(
            "scatter_along_axis",
            K::ScatterAlongAxis,
            &["data", "indices", "updates"],
            &["axis", "mode", "validate_indices"],
        ),
        op(
            "scatter_nd",
            K::ScatterNd,
            &["data", "indices", "updates"],
            SCATTER_OPTIONAL,
        ),
        op_with_outputs(
            "topk",
            K::TopK,
            X,
            &[
                "k",
                "axis",
                "ascending",
                "sort",
                "return_indices",
                "output_indices_dtype",
            ],
            None,
        ),
        op("argsort", K::ArgSort, X, &["axis", "ascending"]),
        op("cumsum", K::CumSum, X, &["axis", "exclusive", "reverse"]),
        op(
            "one_hot",
            K::OneHot,
            &["indices", "one_hot_vector_size"],
            &["axis", "on_value", "off_value"],
        ),
        op("upsample_nearest_neighbor", K::UpsampleNearest, X, UPSAMPLE),
        op("resize_nearest_neighbor", K::ResizeNearest, X, RESIZE),
        op(
            "upsample_bilinear",
            K::UpsampleBilinear,
            X,
            &[
                "scale_factor_height",
                "scale_factor_width",
                "align_corners",
                "half_pixel_centers",
            ],
        ),
        op(
            "resize_bilinear",
            K::ResizeBilinear,
            X,
            &["target_size_height", "target_size_width", "sampling_mode"],
        ),
        op(
            "pixel_shuffle",
            K::Rearrange(Rearrange::PixelShuffle),
            &["x", "upscale_factor"],
            NONE,
        ),
        op(
            "pixel_unshuffle",
            K::Rearrange(Rearrange::PixelUnshuffle),
            &["x", "downscale_factor"],
            NONE,
        ),
        op(
            "depth_to_space",
            K::Rearrange(Rearrange::DepthToSpace),
            &["x", "block_size"],
            NONE,
        ),
        op(
            "space_to_depth",
            K::Rearrange(Rearrange::SpaceToDepth),
            &["x", "block_size"],
            NONE,
        ),
        op("select", K::Select, &["cond", "a", "b"], NONE),
        op("fill", K::Fill, &["shape"], &["value"]),
        op("fill_like", K::FillLike, &["ref_tensor"], &["value"]),
        op("shape", K::Shape, X, NONE),
        op("band_part", K::BandPart, X, &["lower", "upper"]),
        op("range_1d", K::Range1d, &["end", "start", "step"], NONE),
        op("cast", K::Cast, &["x", "dtype"], NONE),
        op("identity", K::Identity, X, NONE),
        op("read_state", K::ReadState, &["input"], NONE),
        op_with_outputs(
            "write_state",
            K::WriteState,
            &["input", "data"],
            NONE,
            Some(0),
        ),
        op_with_outputs("while_loop", K::WhileLoop, &["loop_vars"], NONE, None),
        op_with_outputs("cond", K::Cond, &["pred"], NONE, None),
        op_with_outputs(
            "lstm",
            K::Lstm,
            &["x", "initial_h", "initial_c", "weight_ih", "weight_hh"],
            &[
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
            Some(3),
        ),
        op_with_outputs(
            "rnn",
            K::Rnn,
            &["x", "initial_h", "weight_ih", "weight_hh"],
            &["bias", "direction", "output_sequence", "activation"],
            Some(2),
        ),
    ]
};

/// The interface of op type `op_type`, if the backend implements it.
pub(crate) fn spec(op_type: &str) -> Option<Spec> {
    if let Some(binary) = Binary::from_op(op_type) {
        return Some(single(Kind::Binary(binary), XY, NONE));
    }
    if let Some(unary) = Unary::from_op(op_type) {
        return Some(single(Kind::Unary(unary), X, NONE));
    }
    if let Some(reduce) = Reduce::from_op(op_type) {
        return Some(single(Kind::Reduce(reduce), X, REDUCE_OPTIONAL));
    }
    TABLE
        .iter()
        .find(|(name, _)| *name == op_type)
        .map(|(_, spec)| *spec)
}

/// Every op type the backend implements, sorted.
#[cfg(test)]
pub(crate) fn supported() -> Vec<&'static str> {
    let mut all: Vec<&'static str> = TABLE.iter().map(|(name, _)| *name).collect();
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
        Kind::Conv => single(conv::conv(args)),
        Kind::ConvTranspose => single(conv::conv_transpose(args)),
        Kind::Attention => single(linalg::attention(args)),
        Kind::Pool(op) => single(pool::pool(op, args)),
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
        Kind::ThresholdedRelu => single(elementwise::thresholded_relu(args)),
        Kind::Threshold => single(elementwise::threshold(args)),
        Kind::SigmoidHard => single(elementwise::sigmoid_hard(args)),
        Kind::ScaledTanh => single(elementwise::scaled_tanh(args)),
        Kind::LinearActivation => single(elementwise::linear_activation(args)),
        Kind::Prelu => single(elementwise::prelu(args)),
        Kind::SoftplusParametric => single(elementwise::softplus_parametric(args)),
        Kind::Select => single(elementwise::select(args)),
        Kind::Cast => single(elementwise::cast(args)),
        Kind::Softmax => single(reduce::softmax(args)),
        Kind::LayerNorm => single(reduce::layer_norm(args)),
        Kind::BatchNorm => single(reduce::batch_norm(args)),
        Kind::InstanceNorm => single(reduce::instance_norm(args)),
        Kind::L2Norm => single(reduce::l2_norm(args)),
        Kind::LocalResponseNorm => single(reduce::local_response_norm(args)),
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
        Kind::Pad => single(shape::pad(args)),
        Kind::Reverse => single(shape::reverse(args)),
        Kind::ReverseSequence => single(shape::reverse_sequence(args)),
        Kind::Crop => single(shape::crop(args)),
        Kind::NonZero => single(shape::non_zero(args)),
        Kind::GatherNd => single(index::gather_nd(args)),
        Kind::Scatter => single(index::scatter(args)),
        Kind::ScatterAlongAxis => single(index::scatter_along_axis(args)),
        Kind::ScatterNd => single(index::scatter_nd(args)),
        Kind::TopK => index::topk(args),
        Kind::ArgSort => single(index::argsort(args)),
        Kind::CumSum => single(index::cumsum(args)),
        Kind::OneHot => single(index::one_hot(args)),
        Kind::UpsampleNearest => single(resample::upsample_nearest_neighbor(args)),
        Kind::ResizeNearest => single(resample::resize_nearest_neighbor(args)),
        Kind::UpsampleBilinear => single(resample::upsample_bilinear(args)),
        Kind::ResizeBilinear => single(resample::resize_bilinear(args)),
        Kind::Rearrange(op) => single(resample::rearrange_op(op, args)),
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
