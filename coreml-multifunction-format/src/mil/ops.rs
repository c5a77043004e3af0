//! The op table: every MIL op this crate understands, its kind, and its
//! interface (the parameters it requires and accepts, how many results it
//! has).
//!
//! One table serves everything that reads a program op by op: the
//! reference interpreter (in the runtime crate) dispatches its kernels on
//! [`Kind`], and shape inference ([`super::infer`]) its type rules. An op
//! is in the table when both exist for it.
//!
//! Interfaces follow coremltools' op definitions
//! (`coremltools/converters/mil/mil/ops/defs/iOS15..iOS18`): the union of
//! the parameters of every opset version.

macro_rules! named_ops {
    ($(#[$doc:meta])* $name:ident { $($variant:ident = $op:literal),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name {
            $($variant),*
        }

        impl $name {
            /// Every op of this family.
            pub const ALL: &'static [$name] = &[$($name::$variant),*];

            /// The op of type `op_type`, if it belongs to this family.
            pub fn from_op(op_type: &str) -> Option<$name> {
                match op_type {
                    $($op => Some($name::$variant),)*
                    _ => None,
                }
            }

            /// The op type.
            pub fn name(self) -> &'static str {
                match self {
                    $($name::$variant => $op),*
                }
            }
        }
    };
}

named_ops!(
    /// Binary elementwise ops.
    Binary {
        Add = "add",
        Sub = "sub",
        Mul = "mul",
        RealDiv = "real_div",
        Pow = "pow",
        FloorDiv = "floor_div",
        Mod = "mod",
        Maximum = "maximum",
        Minimum = "minimum",
        Equal = "equal",
        NotEqual = "not_equal",
        Less = "less",
        LessEqual = "less_equal",
        Greater = "greater",
        GreaterEqual = "greater_equal",
        LogicalAnd = "logical_and",
        LogicalOr = "logical_or",
        LogicalXor = "logical_xor",
    }
);

named_ops!(
    /// Unary elementwise ops without parameters.
    Unary {
        Relu = "relu",
        Relu6 = "relu6",
        Sigmoid = "sigmoid",
        Silu = "silu",
        Softplus = "softplus",
        Softsign = "softsign",
        Tanh = "tanh",
        Exp = "exp",
        Exp2 = "exp2",
        Sqrt = "sqrt",
        Abs = "abs",
        Square = "square",
        Sign = "sign",
        Erf = "erf",
        Sin = "sin",
        Cos = "cos",
        Tan = "tan",
        Asin = "asin",
        Acos = "acos",
        Atan = "atan",
        Sinh = "sinh",
        Cosh = "cosh",
        Atanh = "atanh",
        Floor = "floor",
        Ceil = "ceil",
        Round = "round",
        LogicalNot = "logical_not",
    }
);

/// Reductions over a set of axes (`reduce_*`, with `axes` and `keep_dims`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reduce {
    Sum,
    Mean,
    Max,
    Min,
    Prod,
    L1Norm,
    L2Norm,
    LogSum,
    LogSumExp,
    SumSquare,
}

impl Reduce {
    /// Every reduction.
    pub const ALL: &'static [Reduce] = &[
        Reduce::Sum,
        Reduce::Mean,
        Reduce::Max,
        Reduce::Min,
        Reduce::Prod,
        Reduce::L1Norm,
        Reduce::L2Norm,
        Reduce::LogSum,
        Reduce::LogSumExp,
        Reduce::SumSquare,
    ];

    /// The op type.
    pub fn name(self) -> &'static str {
        match self {
            Reduce::Sum => "reduce_sum",
            Reduce::Mean => "reduce_mean",
            Reduce::Max => "reduce_max",
            Reduce::Min => "reduce_min",
            Reduce::Prod => "reduce_prod",
            Reduce::L1Norm => "reduce_l1_norm",
            Reduce::L2Norm => "reduce_l2_norm",
            Reduce::LogSum => "reduce_log_sum",
            Reduce::LogSumExp => "reduce_log_sum_exp",
            Reduce::SumSquare => "reduce_sum_square",
        }
    }

    /// The reduction of op type `op_type`, if it is one.
    pub fn from_op(op_type: &str) -> Option<Reduce> {
        Reduce::ALL.iter().copied().find(|r| r.name() == op_type)
    }
}

/// The pooling ops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pool {
    Max,
    Average,
    L2,
}

/// The ops that move elements between the channel and spatial axes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rearrange {
    PixelShuffle,
    PixelUnshuffle,
    DepthToSpace,
    SpaceToDepth,
}

/// The `constexpr_*` ops: compressed weights, decompressed at load time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Constexpr {
    AffineDequantize,
    BlockwiseShiftScale,
    LutToDense,
    SparseToDense,
    Cast,
    LutToSparse,
    SparseBlockwiseShiftScale,
}

// issue 23 (opsmisc): the random ops.
/// The ops that draw random values (`random_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Random {
    Bernoulli,
    Categorical,
    Normal,
    Uniform,
}

/// What a step computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Const,
    Constexpr(Constexpr),
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
    // Quantized activations and weights, sampling grids, detection
    // (issue 23, opsvq).
    Quantize,
    Dequantize,
    ConvQuantized,
    Resample,
    Affine,
    CropResize,
    Resize,
    NonMaximumSuppression,
    // issue 23 (opsmisc)
    Einsum,
    Gru,
    BatchToSpace,
    SpaceToBatch,
    Flatten2d,
    ReshapeLike,
    SlidingWindows,
    Random(Random),
    // Issue 23, opsvalues: the classifier's output op and the tensor lists.
    Classify,
    MakeList,
    ListRead,
    ListWrite,
    ListGather,
    ListScatter,
    ListLength,
}

/// An op's interface: what it computes, the parameters it requires and
/// accepts, and how many outputs it has (`None`: variable, as `split`).
#[derive(Debug, Clone, Copy)]
pub struct Spec {
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
/// `resample`'s parameters, all required (`affine` takes the same sampling
/// parameters, with a transform and an output size for the coordinates).
const RESAMPLE: &[&str] = &[
    "x",
    "coordinates",
    "sampling_mode",
    "padding_mode",
    "padding_value",
    "coordinates_mode",
    "align_corners",
];
const AFFINE: &[&str] = &[
    "x",
    "transform_matrix",
    "output_height",
    "output_width",
    "sampling_mode",
    "padding_mode",
    "padding_value",
    "coordinates_mode",
    "align_corners",
];

/// Every op the backend implements beyond the elementwise and reduction
/// families (which [`Binary`], [`Unary`] and [`Reduce`] list): its type,
/// and its interface as coremltools' op definitions give it (the union of
/// the parameters of every opset version).
const TABLE: &[(&str, Spec)] = {
    use Constexpr as C;
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
        // Quantized activations and weights, sampling grids, detection
        // (issue 23, opsvq).
        op(
            "quantize",
            K::Quantize,
            &["input", "scale", "output_dtype"],
            &["zero_point", "axis"],
        ),
        op(
            "dequantize",
            K::Dequantize,
            &["input", "scale"],
            &["zero_point", "axis"],
        ),
        op(
            "conv_quantized",
            K::ConvQuantized,
            &[
                "x",
                "weight",
                "quantization_type",
                "quant_scale",
                "quant_bias",
            ],
            &[
                "bias",
                "nbits",
                "strides",
                "pad_type",
                "pad",
                "dilations",
                "groups",
            ],
        ),
        op("resample", K::Resample, RESAMPLE, NONE),
        op("affine", K::Affine, AFFINE, NONE),
        // iOS 15/16 take `roi` ([N, 1, 4 or 5, 1, 1]), iOS 17 `boxes` and
        // `box_indices`; the rule and the kernel require one of the two.
        op(
            "crop_resize",
            K::CropResize,
            X,
            &[
                "roi",
                "boxes",
                "box_indices",
                "target_height",
                "target_width",
                "normalized_coordinates",
                "spatial_scale",
                "box_coordinate_mode",
                "sampling_mode",
                "pad_value",
            ],
        ),
        op(
            "resize",
            K::Resize,
            &["x", "shape", "resized_dims"],
            &["interpolation_mode", "sampling_mode"],
        ),
        // iOS 15 (with `score_threshold`): four results; iOS 17: three.
        op_with_outputs(
            "non_maximum_suppression",
            K::NonMaximumSuppression,
            &["boxes", "scores", "iou_threshold", "max_boxes"],
            &["score_threshold", "per_class_suppression"],
            None,
        ),
        // issue 23 (opsmisc): einsum, gru, the batch/space moves, flatten2d,
        // reshape_like, sliding_windows and the random ops.
        op("einsum", K::Einsum, &["values", "equation"], NONE),
        op_with_outputs(
            "gru",
            K::Gru,
            &["x", "initial_h", "weight_ih", "weight_hh"],
            &[
                "bias",
                "direction",
                "output_sequence",
                "recurrent_activation",
                "activation",
                "reset_after",
                "input_bias",
            ],
            Some(2),
        ),
        op(
            "batch_to_space",
            K::BatchToSpace,
            &["x", "block_shape", "crops"],
            NONE,
        ),
        op(
            "space_to_batch",
            K::SpaceToBatch,
            &["x", "block_shape", "paddings"],
            NONE,
        ),
        op("flatten2d", K::Flatten2d, X, &["axis"]),
        op(
            "reshape_like",
            K::ReshapeLike,
            &["x", "ref_tensors", "begins", "ends", "end_masks"],
            NONE,
        ),
        op(
            "sliding_windows",
            K::SlidingWindows,
            &["x", "axis", "size"],
            &["stride"],
        ),
        op(
            "random_bernoulli",
            K::Random(Random::Bernoulli),
            &["shape"],
            &["prob", "seed"],
        ),
        op(
            "random_categorical",
            K::Random(Random::Categorical),
            X,
            &["mode", "size", "seed"],
        ),
        op(
            "random_normal",
            K::Random(Random::Normal),
            &["shape"],
            &["mean", "stddev", "seed"],
        ),
        op(
            "random_uniform",
            K::Random(Random::Uniform),
            &["shape"],
            &["low", "high", "seed"],
        ),
        // Issue 23, opsvalues: `classify` (iOS 15) and the list ops
        // (iOS 15 control_flow.py), whose interfaces no later opset changes.
        op_with_outputs(
            "classify",
            K::Classify,
            &["probabilities", "classes"],
            NONE,
            Some(2),
        ),
        op(
            "make_list",
            K::MakeList,
            &["elem_shape"],
            &["init_length", "dynamic_length", "dtype"],
        ),
        op("list_read", K::ListRead, &["ls", "index"], NONE),
        op("list_write", K::ListWrite, &["ls", "index", "value"], NONE),
        op("list_gather", K::ListGather, &["ls", "indices"], NONE),
        op(
            "list_scatter",
            K::ListScatter,
            &["ls", "indices", "value"],
            NONE,
        ),
        op("list_length", K::ListLength, &["ls"], NONE),
    ]
};

/// The interface of op type `op_type`, if it is one of ours.
pub fn spec(op_type: &str) -> Option<Spec> {
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

/// Every op type in the table, sorted.
pub fn supported() -> Vec<&'static str> {
    let mut all: Vec<&'static str> = TABLE.iter().map(|(name, _)| *name).collect();
    all.extend(Binary::ALL.iter().map(|b| b.name()));
    all.extend(Unary::ALL.iter().map(|u| u.name()));
    all.extend(Reduce::ALL.iter().map(|r| r.name()));
    all.sort_unstable();
    all
}
