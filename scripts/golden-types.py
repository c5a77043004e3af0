"""Golden cases for MIL shape inference: for each op the reference backend
implements, the output dtypes and shapes (and, for small constant results,
the values) that coremltools 9.0's own type and value inference gives.

Each case builds one op with the MIL builder in an iOS18 function, whose
runtime inputs are placeholders (`mb.TensorSpec`, some with symbolic
dimensions from `get_new_symbol`) and whose parameters are Python / numpy
constants, and records what coremltools infers for the op's outputs. Cases
that coremltools rejects record the first line of its error instead.

Run it from the repository's root:

    /work/venv/bin/python scripts/golden-types.py > coreml-multifunction-format/tests/data/op_types.json

(a venv with coremltools 9.0 and numpy 2.3, as tests/fixtures/requirements.txt
pins). It fails, listing them on stderr, if some op of the list below has no
case, if a case meant to succeed raises or one meant to fail does not.

The JSON: {"generator", "coremltools", "cases": [...]}, each case
{"name", "op", "inputs", "outputs"} or {"name", "op", "inputs", "error"}.
- "inputs" holds only the inputs the case passes (the op's defaults are
  not filled in), each {"dtype", "shape"} plus, for a constant of at most
  64 elements, "value": its elements flattened row-major, always a list.
  A runtime (placeholder) input has no "value". A tuple parameter (concat's
  and stack's `values`) is a list of such objects.
- "outputs" lists every output of the op: {"dtype", "shape"} plus "value"
  when coremltools' value inference computed one of at most 64 elements.
- dtypes are spelled as `types.builtin_to_string` prints them (fp16, fp32,
  int32, uint16, int8, uint8, int4, uint1, bool, str, ...).
- A symbolic (unknown) dimension is a string: the symbol as coremltools
  prints it ("B", "is12", "2*B", ...); any string means unknown. An
  integer output whose value coremltools knows only in part (`shape` of an
  input with an unknown dimension: ["B", 3, 4]; a concat of a runtime and
  a constant vector) has a "value" with strings for the unknown elements.
- fp16 / fp32 values are written exactly (the double of the fp16 / fp32
  value), so parsing them as f32 gives back the same bits.

Output is deterministic (fixed seeds, sorted keys): running it twice gives
identical bytes.
"""
import json
import logging
import os
import sys
import warnings

# coremltools' error messages print sets (of dtypes, ...): a fixed hash seed
# makes their order, and so the output, the same on every run.
if os.environ.get("PYTHONHASHSEED") != "0":
    os.environ["PYTHONHASHSEED"] = "0"
    os.execv(sys.executable, [sys.executable] + sys.argv)

warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)

import numpy as np

# coremltools prints its missing native-library notices on stdout at import.
_stdout, sys.stdout = sys.stdout, sys.stderr
try:
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import Function, get_new_symbol, types
    from coremltools.converters.mil.mil.types.symbolic import is_symbolic
    from coremltools.converters.mil.mil.operation import mil_list
finally:
    sys.stdout = _stdout

# Every op of the reference backend's table (src/runtime/reference/ops/
# mod.rs) and of its Binary, Unary and Reduce families, less const,
# read_state, write_state, while_loop and cond (tested elsewhere).
OPS = """
constexpr_affine_dequantize constexpr_blockwise_shift_scale constexpr_lut_to_dense
constexpr_sparse_to_dense constexpr_cast constexpr_lut_to_sparse
constexpr_sparse_blockwise_shift_scale linear matmul conv conv_transpose
scaled_dot_product_attention max_pool avg_pool l2_pool gelu rsqrt log inverse
leaky_relu elu clamped_relu clip thresholded_relu threshold sigmoid_hard scaled_tanh
linear_activation prelu softplus_parametric softmax layer_norm batch_norm
instance_norm l2_norm local_response_norm reduce_argmax reduce_argmin reshape
transpose expand_dims squeeze concat split stack slice_by_index slice_by_size
slice_update tile pad reverse crop non_zero reverse_sequence gather
gather_along_axis gather_nd scatter scatter_along_axis scatter_nd topk argsort
cumsum one_hot upsample_nearest_neighbor resize_nearest_neighbor upsample_bilinear
resize_bilinear pixel_shuffle pixel_unshuffle depth_to_space space_to_depth select
fill fill_like shape band_part range_1d cast identity lstm rnn
quantize dequantize conv_quantized resample affine crop_resize resize
non_maximum_suppression
einsum gru batch_to_space space_to_batch flatten2d reshape_like sliding_windows
random_bernoulli random_categorical random_normal random_uniform
add sub mul real_div pow floor_div mod maximum minimum equal not_equal less
less_equal greater greater_equal logical_and logical_or logical_xor
relu relu6 sigmoid silu softplus softsign tanh exp exp2 sqrt abs square sign erf
sin cos tan asin acos atan sinh cosh atanh floor ceil round logical_not
reduce_sum reduce_mean reduce_max reduce_min reduce_prod reduce_l1_norm
reduce_l2_norm reduce_log_sum reduce_log_sum_exp reduce_sum_square
classify make_list list_read list_write list_gather list_scatter list_length
""".split()

MAX_VALUE = 64  # values are recorded for tensors of at most this many elements
TUPLE_PARAMS = {"values", "ref_tensors", "begins", "ends", "end_masks", "elem_shape"}  # parameters that take a list of values

rng = np.random.default_rng(20240607)


class R:
    """A runtime input: a placeholder of `shape` (a str is a symbolic
    dimension; equal strings are one symbol) and `dtype`."""

    def __init__(self, *shape, dtype="fp32"):
        self.shape = shape
        self.dtype = dtype


class L:
    """A list input (issue 23): the list `mb.make_list(**kwargs)` makes in
    the case's function."""

    def __init__(self, **kwargs):
        self.kwargs = kwargs


class Classes:
    """classify's classes: a constant list, as coremltools' converter
    makes it (`mb.const(val=mil_list(...))`)."""

    def __init__(self, *values):
        self.values = list(values)


def f32(*shape, lo=-2.0, hi=2.0):
    return rng.uniform(lo, hi, size=shape).astype(np.float32)


def f16(*shape):
    return f32(*shape).astype(np.float16)


def i32(*values):
    return np.array(values, np.int32)


def fa(*values):
    return np.array(values, np.float32)


def ba(*values):
    return np.array(values, bool)


def ri(*shape, lo=0, hi=4, dtype=np.int32):
    return rng.integers(lo, hi, size=shape).astype(dtype)


CASES = []


def case(name, op, **inputs):
    CASES.append((name, op, inputs, False))


def error(name, op, **inputs):
    """A case coremltools must reject."""
    CASES.append((name, op, inputs, True))


# ---------------------------------------------------------------- elementwise binary
ARITH = ["add", "sub", "mul", "real_div", "pow", "floor_div", "mod", "maximum", "minimum"]
COMPARE = ["equal", "not_equal", "less", "less_equal", "greater", "greater_equal"]
LOGICAL = ["logical_and", "logical_or", "logical_xor"]
for op in ARITH + COMPARE:
    case(f"{op}_broadcast_fp32", op, x=R(2, 3, 4), y=R(3, 1))
for op in ["add", "real_div", "pow", "floor_div", "mod", "greater_equal"]:
    case(f"{op}_int32_scalar_const", op, x=R(4, 5, dtype="int32"), y=np.int32(3))
for op in ["add", "mul", "real_div", "maximum", "less", "equal"]:
    case(f"{op}_fp16_rank_up", op, x=R(5, dtype="fp16"), y=R(2, 1, 5, dtype="fp16"))
for op in ["add", "sub", "mul", "greater"]:
    case(f"{op}_symbolic", op, x=R("B", 1, 4), y=R(3, 1))
case("add_symbolic_same", "add", x=R("B", "T"), y=R("B", "T"))
case("mul_symbolic_vs_known", "mul", x=R("B", 4), y=R(6, 4))
case("maximum_symbolic_vs_one", "maximum", x=R("B", 1), y=R(1, "T"))
# Constant folding: shape arithmetic on int32 and a few float results.
for op in ARITH + COMPARE:
    # (numpy, which folds them, refuses negative integer powers)
    case(f"{op}_const_int32", op, x=i32(7, -7, 12, 5), y=i32(2, 3, 0, 1) if op == "pow" else i32(2, 3, -5, 5))
case("add_const_scalars", "add", x=np.int32(2), y=np.int32(40))
case("mul_const_scalar_tensor", "mul", x=i32(2, 3, 4), y=np.int32(2))
case("real_div_const_float", "real_div", x=fa(1, 2, 3), y=fa(4, 8, 0.5))
case("sub_const_broadcast", "sub", x=fa(1, 2), y=np.array([[1], [2], [3]], np.float32))
case("pow_const_float", "pow", x=fa(2, 3, 0.5), y=np.float32(2))
case("floor_div_const_float", "floor_div", x=fa(7, -7, 2.5), y=fa(2, 2, 0.5))
case("mod_const_float", "mod", x=fa(7, -7, 2.5), y=fa(3, 3, -1))
case("less_const_scalar", "less", x=np.float32(1.5), y=np.float32(2.5))
case("equal_const_fp16", "equal", x=np.array([1, 2], np.float16), y=np.array([1, 3], np.float16))
for op in LOGICAL:
    case(f"{op}_broadcast", op, x=R(2, 3, dtype="bool"), y=R(3, dtype="bool"))
    case(f"{op}_const", op, x=ba(True, True, False, False), y=ba(True, False, True, False))
case("logical_and_symbolic", "logical_and", x=R("B", 1, dtype="bool"), y=R(1, 5, dtype="bool"))
error("add_mismatched_broadcast", "add", x=R(2, 3), y=R(4, 3))
error("add_mixed_dtypes", "add", x=R(2, 3), y=R(2, 3, dtype="int32"))
error("logical_or_float", "logical_or", x=R(2), y=R(2))
error("less_mismatched_broadcast", "less", x=R(2, 3), y=R(2))

# ---------------------------------------------------------------- elementwise unary
UNARY_FLOAT = ["relu", "relu6", "sigmoid", "silu", "softplus", "softsign", "tanh", "exp",
               "sqrt", "erf", "sin", "cos", "tan", "asin", "acos", "atan", "sinh", "cosh",
               "atanh", "floor", "ceil", "round"]
UNARY_INT = ["exp2", "abs", "square", "sign"]
for op in UNARY_FLOAT + UNARY_INT:
    case(f"{op}_fp32", op, x=R(2, 3, 4))
for op in ["sigmoid", "sqrt", "abs", "exp2"]:
    case(f"{op}_fp16", op, x=R(3, 5, dtype="fp16"))
for op in UNARY_INT:
    case(f"{op}_int32", op, x=R(4, dtype="int32"))
for op in ["relu", "square", "exp2"]:
    case(f"{op}_symbolic", op, x=R("B", "T", 8))
# Value folding of constants.
for op, x in [("abs", i32(-3, 0, 4)), ("square", i32(-3, 2)), ("sign", fa(-2, 0, 3)),
              ("floor", fa(-1.5, 0.5, 2.0)), ("ceil", fa(-1.5, 0.5, 2.0)),
              ("round", fa(-2.5, -0.5, 0.5, 1.5, 2.6)), ("relu", fa(-1, 0, 2)),
              ("sqrt", fa(4, 9, 0.25)), ("exp2", fa(0, 1, 3)),
              ("floor", np.float32(2.7)), ("abs", np.int32(-5))]:
    case(f"{op}_const_{'scalar' if np.ndim(x) == 0 else 'vector'}_{types.builtin_to_string(types.numpy_type_to_builtin_type(np.asarray(x).dtype))}", op, x=x)
case("logical_not", "logical_not", x=R(2, 3, dtype="bool"))
case("logical_not_symbolic", "logical_not", x=R("B", dtype="bool"))
case("logical_not_const", "logical_not", x=ba(True, False))
case("relu_rank0_placeholder", "relu", x=R())
error("relu_int32", "relu", x=R(3, dtype="int32"))
error("logical_not_fp32", "logical_not", x=R(3))

# ---------------------------------------------------------------- activations with parameters
X4 = (1, 3, 4, 5)
for mode in [None, "EXACT", "TANH_APPROXIMATION", "SIGMOID_APPROXIMATION"]:
    kw = {} if mode is None else {"mode": mode}
    case(f"gelu_{(mode or 'default').lower()}", "gelu", x=R(2, 6), **kw)
case("gelu_fp16_symbolic", "gelu", x=R("B", 6, dtype="fp16"))
for op, eps in [("rsqrt", 1e-6), ("log", 1e-12), ("inverse", 1e-4)]:
    case(f"{op}_default", op, x=R(3, 4))
    case(f"{op}_epsilon", op, x=R(3, 4), epsilon=np.float32(eps))
    case(f"{op}_fp16_x_fp32_epsilon", op, x=R(2, "T", dtype="fp16"), epsilon=np.float32(eps))
case("rsqrt_const", "rsqrt", x=fa(4, 16), epsilon=np.float32(0))
case("log_const", "log", x=fa(1, 1), epsilon=np.float32(0))
case("inverse_const", "inverse", x=fa(2, 4), epsilon=np.float32(0))
case("leaky_relu_alpha", "leaky_relu", x=R(*X4), alpha=np.float32(0.2))
case("leaky_relu_fp16", "leaky_relu", x=R(4, dtype="fp16"), alpha=np.float16(0.1))
case("elu_alpha_fp16_x", "elu", x=R("B", 3, dtype="fp16"), alpha=np.float32(0.5))
case("clamped_relu", "clamped_relu", x=R(*X4), alpha=np.float32(0.1), beta=np.float32(6))
case("clamped_relu_fp16", "clamped_relu", x=R(5, dtype="fp16"), alpha=np.float16(0.1), beta=np.float16(6))
case("clip", "clip", x=R(*X4), alpha=np.float32(-1), beta=np.float32(1))
case("clip_symbolic", "clip", x=R("B", 7), alpha=np.float32(0), beta=np.float32(6))
case("clip_const", "clip", x=fa(-3, 0.5, 9), alpha=np.float32(-1), beta=np.float32(1))
case("thresholded_relu_alpha", "thresholded_relu", x=R(2, 3, dtype="fp16"), alpha=np.float32(0.5))
case("threshold", "threshold", x=R(*X4), alpha=np.float32(0.3))
case("threshold_int32", "threshold", x=R(3, 4, dtype="int32"), alpha=np.int32(2))
case("threshold_const", "threshold", x=fa(-1, 0.5, 2), alpha=np.float32(1))
case("sigmoid_hard", "sigmoid_hard", x=R(3, 4), alpha=np.float32(1 / 6), beta=np.float32(0.5))
case("scaled_tanh", "scaled_tanh", x=R("B", 4, dtype="fp16"), alpha=np.float32(1.7), beta=np.float32(0.66))
case("linear_activation", "linear_activation", x=R(3, 4), alpha=np.float32(2), beta=np.float32(-1))
case("linear_activation_const", "linear_activation", x=fa(1, 2), alpha=np.float32(2), beta=np.float32(-1))
case("prelu_rank4", "prelu", x=R(*X4), alpha=f32(3))
# Rank 3 (and 5) only with one alpha value repeated.
case("prelu_rank3", "prelu", x=R(2, 5, 7), alpha=np.full(5, 0.25, np.float32))
error("prelu_rank3_distinct_alphas", "prelu", x=R(2, 5, 7), alpha=f32(5))
case("prelu_fp16_symbolic", "prelu", x=R("B", 3, "T", 2, dtype="fp16"), alpha=f16(3))
case("softplus_parametric", "softplus_parametric", x=R(*X4), alpha=f32(3), beta=f32(3))
case("softplus_parametric_rank3", "softplus_parametric", x=R(2, 4, 6, dtype="fp16"), alpha=f16(4), beta=f16(4))
error("prelu_wrong_alpha", "prelu", x=R(*X4), alpha=f32(4))
error("prelu_rank2", "prelu", x=R(3, 4), alpha=f32(3))

# ---------------------------------------------------------------- softmax and normalizations
case("softmax_default", "softmax", x=R(2, 3, 4))
case("softmax_axis1", "softmax", x=R(2, 3, 4), axis=np.int32(1))
case("softmax_fp16_symbolic", "softmax", x=R("B", "T", dtype="fp16"), axis=np.int32(-2))
case("softmax_const", "softmax", x=fa(0, 0, 0, 0))
case("layer_norm_last", "layer_norm", x=R(2, 3, 4), axes=i32(-1), gamma=f32(4), beta=f32(4), epsilon=np.float32(1e-5))
case("layer_norm_two_axes", "layer_norm", x=R("B", 3, 4), axes=i32(1, 2), gamma=f32(3, 4))
case("layer_norm_fp16", "layer_norm", x=R(2, 8, dtype="fp16"), axes=i32(-1), gamma=f16(8), beta=f16(8), epsilon=np.float16(1e-3))
case("batch_norm_rank4", "batch_norm", x=R(*X4), mean=f32(3), variance=f32(3))
case("batch_norm_rank3_all", "batch_norm", x=R(2, 3, 6), mean=f32(3), variance=f32(3), gamma=f32(3), beta=f32(3), epsilon=np.float32(1e-3))
case("batch_norm_rank5_fp16", "batch_norm", x=R(1, 3, 2, 4, 4, dtype="fp16"), mean=f16(3), variance=f16(3))
case("batch_norm_symbolic", "batch_norm", x=R("B", 3, "H", "W"), mean=f32(3), variance=f32(3))
case("instance_norm", "instance_norm", x=R(*X4))
case("instance_norm_all", "instance_norm", x=R(2, 3, 5), gamma=f32(3), beta=f32(3), epsilon=np.float32(1e-3))
case("instance_norm_fp16", "instance_norm", x=R("B", 3, 4, 4, dtype="fp16"), gamma=f16(3), beta=f16(3))
case("l2_norm", "l2_norm", x=R(2, 3, 4))
error("l2_norm_rank1", "l2_norm", x=R(8), epsilon=np.float32(1e-6))
case("l2_norm_fp16_symbolic", "l2_norm", x=R("B", 2, 8, dtype="fp16"))
case("local_response_norm", "local_response_norm", x=R(*X4), size=np.int32(3))
case("local_response_norm_all", "local_response_norm", x=R(1, 8, 5, dtype="fp16"), size=np.int32(5), alpha=np.float32(1e-4), beta=np.float32(0.75), k=np.float32(2))
error("layer_norm_gamma_mismatch", "layer_norm", x=R(2, 3, 4), axes=i32(-1), gamma=f32(3))

# ---------------------------------------------------------------- reductions
REDUCE = ["reduce_sum", "reduce_mean", "reduce_max", "reduce_min", "reduce_prod", "reduce_l1_norm",
          "reduce_l2_norm", "reduce_log_sum", "reduce_log_sum_exp", "reduce_sum_square"]
for op in REDUCE:
    case(f"{op}_all", op, x=R(2, 3, 4))
    case(f"{op}_axes_keep", op, x=R(2, 3, 4), axes=i32(0, -1), keep_dims=True)
for op in ["reduce_sum", "reduce_mean", "reduce_log_sum_exp"]:
    case(f"{op}_axis1", op, x=R(2, 3, 4), axes=i32(1))
case("reduce_sum_all_keep", "reduce_sum", x=R(2, 3, 4), keep_dims=True)
case("reduce_mean_int32", "reduce_mean", x=R(3, 4, dtype="int32"), axes=i32(1))
case("reduce_sum_int32", "reduce_sum", x=R(3, 4, dtype="int32"), axes=i32(0))
case("reduce_max_fp16", "reduce_max", x=R(3, 4, dtype="fp16"), axes=i32(-1), keep_dims=True)
case("reduce_l2_norm_int32", "reduce_l2_norm", x=R(3, 4, dtype="int32"), axes=i32(1))
case("reduce_sum_symbolic", "reduce_sum", x=R("B", "T", 4), axes=i32(1))
case("reduce_mean_symbolic_keep", "reduce_mean", x=R("B", "T", 4), axes=i32(-1), keep_dims=True)
case("reduce_max_symbolic_all", "reduce_max", x=R("B", 4))
case("reduce_prod_const", "reduce_prod", x=i32(2, 3, 4))
case("reduce_sum_const_axes", "reduce_sum", x=np.arange(6, dtype=np.int32).reshape(2, 3), axes=i32(0))
case("reduce_max_const_keep", "reduce_max", x=fa(1, 5, 3), axes=i32(0), keep_dims=True)
case("reduce_mean_const_float", "reduce_mean", x=np.arange(6, dtype=np.float32).reshape(3, 2), axes=i32(1))
case("reduce_sum_empty_axes", "reduce_sum", x=R(2, 3), axes=np.zeros((0,), np.int32))
error("reduce_sum_axis_out_of_range", "reduce_sum", x=R(2, 3), axes=i32(2))
for op in ["reduce_argmax", "reduce_argmin"]:
    case(f"{op}_default", op, x=R(2, 3, 4))
    case(f"{op}_axis1_keep", op, x=R(2, 3, 4), axis=np.int32(1), keep_dims=True)
    case(f"{op}_uint16", op, x=R(2, 3, 4), axis=np.int32(0), output_dtype="uint16")
    case(f"{op}_int32_input", op, x=R(5, 6, dtype="int32"), axis=np.int32(-1))
    case(f"{op}_symbolic", op, x=R("B", "T"), axis=np.int32(-1))
    case(f"{op}_const", op, x=np.array([[1, 5, 3], [7, 0, 2]], np.float32), axis=np.int32(1))
case("reduce_argmax_fp16_output_int32", "reduce_argmax", x=R(3, dtype="fp16"), output_dtype="int32")
error("reduce_argmax_axis_out_of_range", "reduce_argmax", x=R(2, 3), axis=np.int32(3))

# ---------------------------------------------------------------- matmul, linear, attention
case("matmul_2d", "matmul", x=R(2, 3), y=R(3, 4))
case("matmul_transpose_x", "matmul", x=R(3, 2), y=R(3, 4), transpose_x=True)
case("matmul_transpose_both", "matmul", x=R(3, 2), y=R(4, 3), transpose_x=True, transpose_y=True)
case("matmul_batched_broadcast", "matmul", x=R(2, 1, 2, 3), y=R(5, 3, 4))
case("matmul_batched_const_y", "matmul", x=R(4, 2, 3), y=f32(3, 6))
case("matmul_vector_x", "matmul", x=R(3), y=R(2, 3, 4))
error("matmul_vector_y", "matmul", x=R(2, 5, 3), y=R(3))
error("matmul_vector_vector", "matmul", x=R(3), y=R(3))
case("matmul_fp16", "matmul", x=R(2, 8, dtype="fp16"), y=R(8, 3, dtype="fp16"))
case("matmul_int32", "matmul", x=R(2, 3, dtype="int32"), y=R(3, 2, dtype="int32"))
case("matmul_fp16_x_fp32_const_y", "matmul", x=R(2, 3, dtype="fp16"), y=f32(3, 4))
case("matmul_symbolic", "matmul", x=R("B", "T", 8), y=R(8, 16))
case("matmul_symbolic_inner", "matmul", x=R(2, "K"), y=R("K", 5))
case("matmul_symbolic_batch_broadcast", "matmul", x=R("B", 1, 4, 8), y=R(1, "H", 8, 2))
case("matmul_const", "matmul", x=fa(1, 2, 3, 4).reshape(2, 2), y=fa(1, 0, 0, 1).reshape(2, 2))
error("matmul_inner_mismatch", "matmul", x=R(2, 3), y=R(4, 5))
error("matmul_batch_mismatch", "matmul", x=R(2, 2, 3), y=R(3, 3, 4))
case("linear_2d_bias", "linear", x=R(4, 5), weight=f32(3, 5), bias=f32(3))
case("linear_rank1", "linear", x=R(5), weight=f32(3, 5))
case("linear_rank3", "linear", x=R(2, 6, 5), weight=f32(7, 5), bias=f32(7))
case("linear_fp16", "linear", x=R(2, 5, dtype="fp16"), weight=f16(3, 5), bias=f16(3))
case("linear_symbolic", "linear", x=R("B", "T", 5), weight=f32(4, 5))
case("linear_const", "linear", x=fa(1, 2), weight=fa(1, 1, 2, -1).reshape(2, 2), bias=fa(0.5, 0))
error("linear_weight_mismatch", "linear", x=R(4, 5), weight=f32(3, 6))
case("sdpa_4d", "scaled_dot_product_attention", query=R(1, 2, 3, 8), key=R(1, 2, 5, 8), value=R(1, 2, 5, 6))
case("sdpa_3d", "scaled_dot_product_attention", query=R(4, 3, 8), key=R(4, 5, 8), value=R(4, 5, 8))
case("sdpa_bool_mask", "scaled_dot_product_attention", query=R(2, 3, 4), key=R(2, 5, 4), value=R(2, 5, 2), attn_mask=R(3, 5, dtype="bool"))
case("sdpa_float_mask_broadcast", "scaled_dot_product_attention", query=R(2, 4, 3, 8), key=R(2, 4, 5, 8), value=R(2, 4, 5, 8), attn_mask=R(1, 1, 3, 5))
case("sdpa_fp16", "scaled_dot_product_attention", query=R(1, 4, 8, dtype="fp16"), key=R(1, 6, 8, dtype="fp16"), value=R(1, 6, 2, dtype="fp16"))
case("sdpa_symbolic", "scaled_dot_product_attention", query=R("B", 8, "T", 16), key=R("B", 8, "S", 16), value=R("B", 8, "S", 16))
case("sdpa_rank5", "scaled_dot_product_attention", query=R(2, 2, 2, 3, 4), key=R(2, 2, 2, 5, 4), value=R(2, 2, 2, 5, 4))
error("sdpa_embedding_mismatch", "scaled_dot_product_attention", query=R(2, 3, 4), key=R(2, 5, 6), value=R(2, 5, 2))
error("sdpa_rank2", "scaled_dot_product_attention", query=R(3, 4), key=R(5, 4), value=R(5, 2))

# ---------------------------------------------------------------- conv, conv_transpose
def W(*shape, dt=np.float32):
    return f32(*shape).astype(dt)


case("conv_2d_default", "conv", x=R(1, 3, 8, 8), weight=W(4, 3, 3, 3))
case("conv_2d_strided_valid", "conv", x=R(1, 3, 8, 8), weight=W(4, 3, 3, 3), strides=i32(2, 2), pad_type="valid")
case("conv_2d_same", "conv", x=R(1, 3, 7, 9), weight=W(4, 3, 3, 3), strides=i32(2, 2), pad_type="same")
case("conv_2d_same_lower", "conv", x=R(1, 3, 7, 9), weight=W(4, 3, 2, 4), strides=i32(2, 3), pad_type="same_lower")
case("conv_2d_custom", "conv", x=R(2, 4, 7, 6), weight=W(6, 2, 3, 3), bias=W(6), strides=i32(2, 1), pad_type="custom", pad=i32(1, 1, 0, 2), dilations=i32(1, 2), groups=np.int32(2))
case("conv_2d_dilated", "conv", x=R(1, 2, 10, 10), weight=W(3, 2, 3, 3), dilations=i32(2, 3))
case("conv_2d_same_dilated", "conv", x=R(1, 2, 10, 11), weight=W(3, 2, 3, 3), pad_type="same", dilations=i32(2, 2), strides=i32(3, 2))
case("conv_2d_depthwise", "conv", x=R(1, 8, 6, 6), weight=W(8, 1, 3, 3), groups=np.int32(8), pad_type="same")
case("conv_2d_pointwise_fp16", "conv", x=R(1, 8, 5, 5, dtype="fp16"), weight=W(4, 8, 1, 1, dt=np.float16), bias=W(4, dt=np.float16))
case("conv_1d", "conv", x=R(2, 3, 9), weight=W(4, 3, 3), strides=i32(2))
case("conv_1d_same", "conv", x=R(2, 3, 9), weight=W(4, 3, 4), pad_type="same", strides=i32(2))
case("conv_1d_custom", "conv", x=R(1, 3, 9), weight=W(2, 3, 5), pad_type="custom", pad=i32(2, 1), dilations=i32(2))
case("conv_3d", "conv", x=R(1, 2, 5, 6, 7), weight=W(3, 2, 2, 3, 3))
case("conv_3d_strided_same", "conv", x=R(1, 2, 5, 6, 7), weight=W(3, 2, 3, 3, 3), strides=i32(2, 2, 3), pad_type="same")
case("conv_3d_custom", "conv", x=R(1, 4, 4, 4, 4), weight=W(2, 2, 2, 2, 2), pad_type="custom", pad=i32(1, 0, 0, 1, 2, 2), groups=np.int32(2))
case("conv_dynamic_weight", "conv", x=R(1, 3, 8, 8), weight=R(4, 3, 3, 3), pad_type="same")
case("conv_symbolic_batch", "conv", x=R("B", 3, 8, 8), weight=W(4, 3, 3, 3), strides=i32(2, 2))
case("conv_symbolic_spatial", "conv", x=R(1, 3, "H", "W"), weight=W(4, 3, 3, 3), pad_type="same")
case("conv_symbolic_spatial_valid", "conv", x=R("B", 3, "H", 8), weight=W(4, 3, 3, 3))
case("conv_symbolic_channels", "conv", x=R(1, "C", 6, 6), weight=W(4, 3, 3, 3))
case("conv_kernel_covers_input", "conv", x=R(1, 1, 3, 3), weight=W(1, 1, 3, 3))
error("conv_wrong_channels", "conv", x=R(1, 4, 8, 8), weight=W(2, 3, 3, 3))
error("conv_groups_not_divisor", "conv", x=R(1, 6, 8, 8), weight=W(4, 3, 3, 3), groups=np.int32(4))
error("conv_bias_mismatch", "conv", x=R(1, 3, 8, 8), weight=W(4, 3, 3, 3), bias=W(5))
error("conv_output_empty", "conv", x=R(1, 3, 2, 2), weight=W(4, 3, 3, 3))
error("conv_dynamic_weight_dilated", "conv", x=R(1, 3, 8, 8), weight=R(4, 3, 3, 3), dilations=i32(2, 2))
error("conv_same_lower_custom_len", "conv", x=R(1, 3, 8, 8), weight=W(4, 3, 3, 3), pad_type="custom", pad=i32(1, 1))
case("conv_transpose_2d_default", "conv_transpose", x=R(1, 4, 3, 4), weight=W(4, 2, 3, 3))
case("conv_transpose_2d_strided", "conv_transpose", x=R(1, 4, 3, 4), weight=W(4, 2, 3, 3), strides=i32(2, 2))
case("conv_transpose_2d_same", "conv_transpose", x=R(1, 4, 3, 4), weight=W(4, 2, 3, 3), strides=i32(2, 3), pad_type="same")
case("conv_transpose_2d_custom", "conv_transpose", x=R(1, 4, 3, 4), weight=W(4, 3, 3, 2), bias=W(6), strides=i32(2, 3), pad_type="custom", pad=i32(1, 1, 0, 1), dilations=i32(1, 2), groups=np.int32(2))
case("conv_transpose_output_shape", "conv_transpose", x=R(1, 4, 3, 4), weight=W(4, 2, 3, 3), strides=i32(2, 2), pad_type="same", output_shape=i32(1, 2, 7, 8))
case("conv_transpose_1d", "conv_transpose", x=R(2, 3, 5), weight=W(3, 2, 4), strides=i32(2))
case("conv_transpose_1d_fp16", "conv_transpose", x=R(2, 3, 5, dtype="fp16"), weight=W(3, 2, 4, dt=np.float16), pad_type="same", strides=i32(3))
case("conv_transpose_3d", "conv_transpose", x=R(1, 2, 2, 3, 4), weight=W(2, 3, 2, 2, 2), strides=i32(2, 2, 2))
case("conv_transpose_symbolic_batch", "conv_transpose", x=R("B", 4, 3, 4), weight=W(4, 2, 3, 3), strides=i32(2, 2))
case("conv_transpose_symbolic_spatial", "conv_transpose", x=R(1, 4, "H", 4), weight=W(4, 2, 3, 3), strides=i32(2, 2))
case("conv_transpose_dynamic_weight", "conv_transpose", x=R(1, 4, 3, 3), weight=R(4, 2, 3, 3))
error("conv_transpose_bias_mismatch", "conv_transpose", x=R(1, 4, 3, 4), weight=W(4, 2, 3, 3), bias=W(4))

# ---------------------------------------------------------------- pools
for op in ["max_pool", "avg_pool", "l2_pool"]:
    case(f"{op}_2d_valid", op, x=R(1, 3, 8, 8), kernel_sizes=i32(2, 2), strides=i32(2, 2), pad_type="valid")
    case(f"{op}_2d_same", op, x=R(1, 3, 7, 9), kernel_sizes=i32(3, 3), strides=i32(2, 2), pad_type="same")
    case(f"{op}_2d_custom_ceil", op, x=R(1, 2, 5, 6), kernel_sizes=i32(3, 2), strides=i32(2, 2), pad_type="custom", pad=i32(1, 1, 0, 0), ceil_mode=True)
    case(f"{op}_1d_default_strides", op, x=R(2, 3, 7), kernel_sizes=i32(2), pad_type="valid")
    (error if op == "l2_pool" else case)(f"{op}_3d_same_lower", op, x=R(1, 2, 5, 6, 7), kernel_sizes=i32(2, 3, 2), strides=i32(2, 2, 3), pad_type="same_lower")
    case(f"{op}_symbolic", op, x=R("B", 3, "H", 8), kernel_sizes=i32(2, 2), strides=i32(2, 2), pad_type="valid")
case("max_pool_ceil_valid", "max_pool", x=R(1, 1, 7, 7), kernel_sizes=i32(2, 2), strides=i32(2, 2), pad_type="valid", ceil_mode=True)
error("max_pool_ceil_asymmetric_pad", "max_pool", x=R(1, 1, 6, 6), kernel_sizes=i32(3, 3), strides=i32(2, 2), pad_type="custom", pad=i32(0, 2, 2, 0), ceil_mode=True)
case("max_pool_ceil_drop_last", "max_pool", x=R(1, 1, 5, 5), kernel_sizes=i32(2, 2), strides=i32(2, 2), pad_type="custom", pad=i32(1, 1, 1, 1), ceil_mode=True)
case("max_pool_floor_custom", "max_pool", x=R(1, 1, 5, 5), kernel_sizes=i32(2, 2), strides=i32(2, 2), pad_type="custom", pad=i32(1, 1, 1, 1))
error("max_pool_fp16_rank3_unbatched", "max_pool", x=R(3, 8, 8, dtype="fp16"), kernel_sizes=i32(2, 2), strides=i32(2, 2), pad_type="valid")
case("avg_pool_exclude_padding", "avg_pool", x=R(1, 2, 6, 6), kernel_sizes=i32(3, 3), strides=i32(1, 2), pad_type="custom", pad=i32(1, 1, 1, 1), exclude_padding_from_average=True)
error("avg_pool_ceil_same", "avg_pool", x=R(1, 2, 7, 7), kernel_sizes=i32(3, 3), strides=i32(2, 2), pad_type="same", ceil_mode=True)
case("avg_pool_global", "avg_pool", x=R(2, 16, 7, 7, dtype="fp16"), kernel_sizes=i32(7, 7), pad_type="valid")
error("max_pool_kernel_too_large", "max_pool", x=R(1, 1, 3, 3), kernel_sizes=i32(4, 4), pad_type="valid")
error("avg_pool_int32", "avg_pool", x=R(1, 1, 4, 4, dtype="int32"), kernel_sizes=i32(2, 2), pad_type="valid")

# ---------------------------------------------------------------- reshape, transpose, expand/squeeze
case("reshape_neg1", "reshape", x=R(2, 3, 4), shape=i32(-1, 4))
case("reshape_zero_and_neg1", "reshape", x=R(2, 3, 4), shape=i32(0, -1, 2))
case("reshape_to_scalar", "reshape", x=R(1, 1), shape=np.zeros((0,), np.int32))
case("reshape_from_scalar", "reshape", x=R(), shape=i32(1, 1, 1))
case("reshape_int32", "reshape", x=R(6, dtype="int32"), shape=i32(3, 2))
case("reshape_bool", "reshape", x=R(6, dtype="bool"), shape=i32(2, 1, 3))
case("reshape_fp16_flatten", "reshape", x=R(2, 3, 4, dtype="fp16"), shape=i32(-1))
case("reshape_symbolic_neg1", "reshape", x=R("B", 3, 4), shape=i32(-1, 12))
case("reshape_symbolic_to_flat", "reshape", x=R(2, "T"), shape=i32(-1))
case("reshape_runtime_shape", "reshape", x=R(2, 3, 4), shape=R(3, dtype="int32"))
case("reshape_const", "reshape", x=i32(1, 2, 3, 4, 5, 6), shape=i32(3, 2))
# iOS17+ reshape aligns the 0s of `shape` to x's dimensions from the right
# (iOS15: from the left), and a 0 left of x's rank copies 1.
case("reshape_zero_right_aligned", "reshape", x=R(2, 3, 4), shape=i32(0, -1))
case("reshape_zero_rank_up", "reshape", x=R(2, 3), shape=i32(0, 1, 0, 0))
case("reshape_const_zero_right_aligned", "reshape", x=np.arange(6, dtype=np.float32).reshape(2, 3), shape=i32(0, -1))
error("reshape_const_zero_rank_up_count", "reshape", x=np.arange(6, dtype=np.float32).reshape(2, 3), shape=i32(0, 3, 1))
error("reshape_wrong_count", "reshape", x=R(2, 3, 4), shape=i32(5, 5))
error("reshape_two_neg1", "reshape", x=R(2, 3, 4), shape=i32(-1, -1))
case("transpose_3d", "transpose", x=R(2, 3, 4), perm=i32(2, 0, 1))
case("transpose_negative_perm", "transpose", x=R(2, 3, 4), perm=i32(-1, -3, -2))
case("transpose_int32_symbolic", "transpose", x=R("B", 5, dtype="int32"), perm=i32(1, 0))
case("transpose_const", "transpose", x=np.arange(6, dtype=np.int32).reshape(2, 3), perm=i32(1, 0))
case("transpose_rank0_perm_empty", "transpose", x=np.float32(3), perm=np.zeros((0,), np.int32))
error("transpose_perm_length", "transpose", x=R(2, 3, 4), perm=i32(1, 0))
case("expand_dims_front_back", "expand_dims", x=R(2, 3), axes=i32(0, -1))
case("expand_dims_middle", "expand_dims", x=R(2, 3), axes=i32(1))
case("expand_dims_several", "expand_dims", x=R(2, 3), axes=i32(0, 2, 4))
case("expand_dims_negatives", "expand_dims", x=R(2, 3), axes=i32(-1, -3))
case("expand_dims_scalar", "expand_dims", x=R(), axes=i32(0))
case("expand_dims_symbolic_bool", "expand_dims", x=R("B", 3, dtype="bool"), axes=i32(1))
case("expand_dims_const", "expand_dims", x=i32(4, 5), axes=i32(0))
case("expand_dims_const_scalar", "expand_dims", x=np.int32(7), axes=i32(0))
error("expand_dims_axis_out_of_range", "expand_dims", x=R(2, 3), axes=i32(4))
case("squeeze_axes", "squeeze", x=R(1, 3, 1, 2), axes=i32(0, -2))
case("squeeze_all", "squeeze", x=R(1, 3, 1, 2))
case("squeeze_to_scalar", "squeeze", x=R(1, 1))
case("squeeze_symbolic_all", "squeeze", x=R("B", 1, 4, 1))
case("squeeze_symbolic_axes", "squeeze", x=R("B", 1, "T"), axes=i32(1))
case("squeeze_int32", "squeeze", x=R(1, 4, dtype="int32"), axes=i32(0))
case("squeeze_const", "squeeze", x=i32(5).reshape(1, 1), axes=i32(0))
case("squeeze_const_to_scalar", "squeeze", x=i32(5).reshape(1, 1))
case("squeeze_not_one", "squeeze", x=R(2, 3), axes=i32(0))

# ---------------------------------------------------------------- concat, split, stack
case("concat_last", "concat", values=[R(2, 3, 4), R(2, 3, 1)], axis=np.int32(-1))
case("concat_axis0_three", "concat", values=[R(1, 3), R(2, 3), R(4, 3)], axis=np.int32(0))
case("concat_with_const", "concat", values=[R(2, 3), f32(2, 2)], axis=np.int32(1))
case("concat_interleave", "concat", values=[R(2, 2), R(2, 2)], axis=np.int32(0), interleave=True)
case("concat_interleave_three", "concat", values=[R(3, 2, 4), R(3, 2, 4), R(3, 2, 4)], axis=np.int32(1), interleave=True)
case("concat_single", "concat", values=[R(2, 3)], axis=np.int32(0))
case("concat_fp16", "concat", values=[R(2, 3, dtype="fp16"), R(2, 5, dtype="fp16")], axis=np.int32(1))
case("concat_bool", "concat", values=[R(2, dtype="bool"), R(3, dtype="bool")], axis=np.int32(0))
case("concat_symbolic_other_axis", "concat", values=[R("B", 3), R("B", 5)], axis=np.int32(1))
case("concat_symbolic_concat_axis", "concat", values=[R("T", 4), R(2, 4)], axis=np.int32(0))
case("concat_symbolic_both", "concat", values=[R("T", 4), R("S", 4)], axis=np.int32(0))
case("concat_const_int32", "concat", values=[i32(1, 2), i32(3), i32(4, 5, 6)], axis=np.int32(0))
case("concat_const_2d", "concat", values=[np.ones((2, 1), np.float32), np.zeros((2, 2), np.float32)], axis=np.int32(1))
# (No constant interleaved concat: coremltools' value inference ignores
# `interleave`, folding [1, 2] and [3, 4] to [1, 2, 3, 4].)
case("concat_int32_runtime_and_const", "concat", values=[R(2, dtype="int32"), i32(3)], axis=np.int32(0))
case("concat_const_empty_part", "concat", values=[np.zeros((0,), np.int32), i32(7, 8)], axis=np.int32(0))
error("concat_shape_mismatch", "concat", values=[R(2, 3), R(3, 3)], axis=np.int32(1))
error("concat_axis_out_of_range", "concat", values=[R(2, 3), R(2, 3)], axis=np.int32(2))
error("concat_rank_mismatch", "concat", values=[R(2, 3), R(3)], axis=np.int32(0))
case("split_num_splits", "split", x=R(2, 6, 4), num_splits=np.int32(3), axis=np.int32(1))
case("split_split_sizes", "split", x=R(2, 6, 4), split_sizes=i32(1, 2, 3), axis=np.int32(1))
case("split_negative_axis", "split", x=R(2, 3, 4), num_splits=np.int32(2), axis=np.int32(-1))
error("split_num_splits_uneven", "split", x=R(7, 2), num_splits=np.int32(3), axis=np.int32(0))
case("split_one", "split", x=R(4, 2), num_splits=np.int32(1), axis=np.int32(0))
case("split_fp16_int", "split", x=R(4, 6, dtype="int32"), split_sizes=i32(4, 2), axis=np.int32(1))
case("split_symbolic_other_axis", "split", x=R("B", 8), num_splits=np.int32(2), axis=np.int32(1))
case("split_symbolic_axis", "split", x=R("B", 8), num_splits=np.int32(2), axis=np.int32(0))
case("split_symbolic_axis_sizes", "split", x=R("T", 8), split_sizes=i32(3, 5), axis=np.int32(1))
case("split_const", "split", x=i32(1, 2, 3, 4, 5, 6), num_splits=np.int32(3), axis=np.int32(0))
case("split_const_sizes", "split", x=np.arange(6, dtype=np.float32).reshape(2, 3), split_sizes=i32(1, 2), axis=np.int32(1))
case("split_sizes_wrong_sum", "split", x=R(2, 6), split_sizes=i32(1, 2), axis=np.int32(1))
case("stack_axis0", "stack", values=[R(2, 3), R(2, 3)], axis=np.int32(0))
case("stack_axis_last", "stack", values=[R(2, 3), R(2, 3), R(2, 3)], axis=np.int32(2))
case("stack_negative_axis", "stack", values=[R(2, 3), R(2, 3)], axis=np.int32(-1))
case("stack_scalars", "stack", values=[R(), R()], axis=np.int32(0))
case("stack_int32_symbolic", "stack", values=[R("B", dtype="int32"), R("B", dtype="int32")], axis=np.int32(1))
case("stack_const", "stack", values=[np.int32(2), np.int32(3), np.int32(4)], axis=np.int32(0))
case("stack_const_2d", "stack", values=[i32(1, 2), i32(3, 4)], axis=np.int32(1))
error("stack_shape_mismatch", "stack", values=[R(2, 3), R(3, 2)], axis=np.int32(0))

# ---------------------------------------------------------------- slicing
case("slice_by_index_basic", "slice_by_index", x=R(2, 6, 5), begin=i32(0, 1, 1), end=i32(2, 5, 4))
case("slice_by_index_negative_stride", "slice_by_index", x=R(2, 6, 5), begin=i32(0, 5, 1), end=i32(2, 0, -1), stride=i32(1, -2, 2))
case("slice_by_index_masks", "slice_by_index", x=R(2, 6, 5), begin=i32(1, 2, 0), end=i32(0, 4, 3), begin_mask=ba(False, False, True), end_mask=ba(True, False, False))
case("slice_by_index_squeeze", "slice_by_index", x=R(2, 6, 5), begin=i32(1, 0, 2), end=i32(2, 6, 3), squeeze_mask=ba(True, False, True))
case("slice_by_index_squeeze_all", "slice_by_index", x=R(2, 6), begin=i32(1, 3), end=i32(2, 4), squeeze_mask=ba(True, True))
case("slice_by_index_negative_indices", "slice_by_index", x=R(8, 4), begin=i32(-3, 0), end=i32(-1, -1))
case("slice_by_index_out_of_range_clamped", "slice_by_index", x=R(8, 4), begin=i32(2, -10), end=i32(100, 10))
error("slice_by_index_empty", "slice_by_index", x=R(8, 4), begin=i32(5, 0), end=i32(2, 4))
case("slice_by_index_reverse_all", "slice_by_index", x=R(5, 4), begin=i32(0, 0), end=i32(0, 0), stride=i32(-1, 1), begin_mask=ba(True, True), end_mask=ba(True, True))
case("slice_by_index_stride3", "slice_by_index", x=R(10,), begin=i32(1), end=i32(10), stride=i32(3))
case("slice_by_index_fp16_bool", "slice_by_index", x=R(4, 4, dtype="bool"), begin=i32(1, 1), end=i32(3, 4))
case("slice_by_index_symbolic_kept", "slice_by_index", x=R("B", 6), begin=i32(0, 1), end=i32(0, 4), end_mask=ba(True, False))
case("slice_by_index_symbolic_sliced", "slice_by_index", x=R("T", 6), begin=i32(1, 0), end=i32(3, 6))
case("slice_by_index_symbolic_from_end", "slice_by_index", x=R("T", 6), begin=i32(-2, 0), end=i32(0, 6), end_mask=ba(True, False))
case("slice_by_index_runtime_begin", "slice_by_index", x=R(4, 6), begin=R(2, dtype="int32"), end=i32(4, 6))
case("slice_by_index_const", "slice_by_index", x=i32(10, 11, 12, 13, 14), begin=i32(1), end=i32(4))
case("slice_by_index_const_squeeze", "slice_by_index", x=i32(10, 11, 12, 13, 14), begin=i32(-1), end=i32(0), squeeze_mask=ba(True))
case("slice_by_index_const_reverse", "slice_by_index", x=np.arange(12, dtype=np.float32).reshape(3, 4), begin=i32(2, 3), end=i32(0, 0), stride=i32(-1, -2), end_mask=ba(True, True))
error("slice_by_index_length_mismatch", "slice_by_index", x=R(2, 6), begin=i32(0), end=i32(2, 6))
case("slice_by_size_basic", "slice_by_size", x=R(2, 6, 5), begin=i32(0, 2, 1), size=i32(2, 3, 4))
case("slice_by_size_minus_one", "slice_by_size", x=R(2, 6, 5), begin=i32(1, 2, 0), size=i32(-1, 3, -1))
case("slice_by_size_negative_begin", "slice_by_size", x=R(2, 6, 5), begin=i32(1, 2, -3), size=i32(-1, 3, 2))
case("slice_by_size_int32", "slice_by_size", x=R(8, dtype="int32"), begin=i32(2), size=i32(3))
case("slice_by_size_symbolic", "slice_by_size", x=R("B", 6), begin=i32(0, 1), size=i32(-1, 4))
case("slice_by_size_runtime_begin", "slice_by_size", x=R(4, 6), begin=R(2, dtype="int32"), size=i32(2, 3))
case("slice_by_size_runtime_begin_minus_one", "slice_by_size", x=R(4, 6), begin=R(2, dtype="int32"), size=i32(-1, 3))
case("slice_by_size_const", "slice_by_size", x=i32(1, 2, 3, 4, 5), begin=i32(1), size=i32(3))
case("slice_by_size_past_end_unchecked", "slice_by_size", x=R(4, 6), begin=i32(2, 0), size=i32(3, 6))
case("slice_update_basic", "slice_update", x=R(2, 6, 5), update=R(2, 3, 2), begin=i32(0, 5, 1), end=i32(2, 0, -1), stride=i32(1, -2, 2))
case("slice_update_squeeze", "slice_update", x=R(2, 6, 5), update=R(6), begin=i32(1, 0, 2), end=i32(2, 6, 3), squeeze_mask=ba(True, False, True))
case("slice_update_masks_fp16", "slice_update", x=R(4, 4, dtype="fp16"), update=R(4, 2, dtype="fp16"), begin=i32(0, 2), end=i32(0, 0), begin_mask=ba(True, False), end_mask=ba(True, True))
case("slice_update_int32", "slice_update", x=R(5, dtype="int32"), update=R(2, dtype="int32"), begin=i32(1), end=i32(3))
case("slice_update_symbolic", "slice_update", x=R("B", 6), update=R("B", 2), begin=i32(0, 2), end=i32(0, 4), begin_mask=ba(True, False), end_mask=ba(True, False))
case("slice_update_const", "slice_update", x=i32(1, 2, 3, 4), update=i32(9, 9), begin=i32(1), end=i32(3))
error("slice_update_wrong_update_shape", "slice_update", x=R(2, 6), update=R(2, 3), begin=i32(0, 0), end=i32(2, 2))

# ---------------------------------------------------------------- tile, pad, reverse, crop, ...
case("tile", "tile", x=R(2, 1, 3), reps=i32(1, 3, 2))
case("tile_ones", "tile", x=R(2, 3), reps=i32(1, 1))
case("tile_int32_bool", "tile", x=R(2, dtype="bool"), reps=i32(4))
case("tile_symbolic", "tile", x=R("B", 3), reps=i32(2, 2))
case("tile_runtime_reps", "tile", x=R(2, 3), reps=R(2, dtype="int32"))
case("tile_const", "tile", x=i32(1, 2), reps=i32(3))
error("tile_reps_length", "tile", x=R(2, 3), reps=i32(2))
case("pad_constant", "pad", x=R(2, 3, 4), pad=i32(1, 0, 2, 1), mode="constant", constant_val=np.float32(-3))
case("pad_default", "pad", x=R(2, 3, 4), pad=i32(1, 2))
case("pad_all_dims", "pad", x=R(2, 3, 4), pad=i32(1, 1, 0, 2, 3, 0))
case("pad_reflect", "pad", x=R(2, 3, 4), pad=i32(2, 1, 3, 2), mode="reflect")
case("pad_replicate", "pad", x=R(1, 2, 3, 4), pad=i32(1, 2, 3, 1), mode="replicate")
case("pad_fp16", "pad", x=R(3, 4, dtype="fp16"), pad=i32(0, 1, 1, 0), constant_val=np.float16(1))
case("pad_symbolic", "pad", x=R("B", 3, "T"), pad=i32(1, 1, 2, 2))
case("pad_runtime_pad", "pad", x=R(2, 3), pad=R(4, dtype="int32"))
case("pad_const", "pad", x=fa(1, 2), pad=i32(1, 2), constant_val=np.float32(0))
error("pad_odd_length", "pad", x=R(2, 3), pad=i32(1, 2, 3))
case("pad_reflect_wider_than_input_unchecked", "pad", x=R(2, 3), pad=i32(3, 3), mode="reflect")
case("reverse_axes", "reverse", x=R(2, 3, 4), axes=i32(0, -1))
case("reverse_all", "reverse", x=R(2, 3, 4))
case("reverse_bool_symbolic", "reverse", x=R("B", 3, dtype="bool"), axes=i32(1))
case("reverse_const", "reverse", x=i32(1, 2, 3))
case("crop", "crop", x=R(1, 2, 5, 6), crop_height=i32(1, 2), crop_width=i32(0, 3))
case("crop_rank3", "crop", x=R(3, 8, 8, dtype="fp16"), crop_height=i32(2, 2), crop_width=i32(1, 1))
case("crop_symbolic", "crop", x=R("B", 2, 8, 8), crop_height=i32(1, 1), crop_width=i32(0, 0))
case("non_zero_runtime", "non_zero", x=R(2, 3))
case("non_zero_rank3_int32", "non_zero", x=R(2, 3, 4, dtype="int32"))
case("non_zero_bool_symbolic", "non_zero", x=R("B", dtype="bool"))
case("non_zero_const", "non_zero", x=np.array([[0, 1.5, 0], [-2, 0, 3]], np.float32))
case("non_zero_const_int_1d", "non_zero", x=i32(0, 3, 0, 4))
case("reverse_sequence", "reverse_sequence", x=R(3, 4, 2), lengths=i32(2, 4, 1), seq_axis=np.int32(1), batch_axis=np.int32(0))
case("reverse_sequence_default_axes", "reverse_sequence", x=R(4, 3, 2), lengths=i32(1, 2, 3, 4))
case("reverse_sequence_runtime_lengths", "reverse_sequence", x=R(5, 3, dtype="int32"), lengths=R(3, dtype="int32"), seq_axis=np.int32(0), batch_axis=np.int32(1))
case("reverse_sequence_symbolic", "reverse_sequence", x=R("B", "T", 8), lengths=R("B", dtype="int32"), seq_axis=np.int32(1), batch_axis=np.int32(0))

# ---------------------------------------------------------------- gather, scatter
case("gather_axis0", "gather", x=R(5, 3), indices=i32(0, 4, 2, 2))
case("gather_axis1_matrix_indices", "gather", x=R(2, 3, 4), indices=np.array([[2, 0], [-1, 1]], np.int32), axis=np.int32(1))
case("gather_scalar_index", "gather", x=R(2, 3, 4), indices=np.int32(1), axis=np.int32(-1))
case("gather_batch_dims", "gather", x=R(2, 3, 4), indices=np.array([[3, 0], [1, 2]], np.int32), axis=np.int32(2), batch_dims=np.int32(1))
case("gather_batch_dims_2", "gather", x=R(2, 3, 4, 5), indices=ri(2, 3, 6), axis=np.int32(3), batch_dims=np.int32(2))
case("gather_runtime_indices", "gather", x=R(10, 4), indices=R(2, 3, dtype="int32"), axis=np.int32(0))
case("gather_int16_indices", "gather", x=R(10, 4), indices=np.array([1, 2], np.int16), axis=np.int32(0))
case("gather_uint16_indices_fp16", "gather", x=R(10, 4, dtype="fp16"), indices=np.array([1, 2, 3], np.uint16), axis=np.int32(1))
case("gather_int8_indices", "gather", x=R(10, 4, dtype="int32"), indices=np.array([1, 2], np.int8))
case("gather_uint8_data", "gather", x=R(4, 4, dtype="uint8"), indices=i32(1), axis=np.int32(0))
case("gather_symbolic_data", "gather", x=R("V", 16), indices=R("B", "T", dtype="int32"))
case("gather_symbolic_other_axis", "gather", x=R("B", 16), indices=i32(0, 5), axis=np.int32(1))
case("gather_validate", "gather", x=R(5, 3), indices=i32(0, 1), validate_indices=True)
case("gather_const", "gather", x=i32(10, 20, 30, 40), indices=i32(3, 0, -1))
case("gather_const_scalar_index", "gather", x=i32(10, 20, 30, 40), indices=np.int32(2))
case("gather_const_2d_axis1", "gather", x=np.arange(6, dtype=np.float32).reshape(2, 3), indices=i32(2, 0), axis=np.int32(1))
error("gather_axis_out_of_range", "gather", x=R(2, 3), indices=i32(0), axis=np.int32(2))
error("gather_float_indices", "gather", x=R(2, 3), indices=fa(0))
case("gather_along_axis", "gather_along_axis", x=R(2, 3, 4), indices=ri(2, 1, 4, hi=3), axis=np.int32(1))
case("gather_along_axis_default_axis", "gather_along_axis", x=R(3, 4), indices=ri(5, 4, hi=3))
case("gather_along_axis_negative_axis", "gather_along_axis", x=R(3, 4, dtype="int32"), indices=ri(3, 2), axis=np.int32(-1))
case("gather_along_axis_runtime_indices", "gather_along_axis", x=R(3, 4), indices=R(3, 7, dtype="int32"), axis=np.int32(1))
case("gather_along_axis_symbolic", "gather_along_axis", x=R("B", 10), indices=R("B", "K", dtype="int32"), axis=np.int32(1))
case("gather_along_axis_const", "gather_along_axis", x=np.arange(6, dtype=np.int32).reshape(2, 3), indices=np.array([[1, 0, 1]], np.int32), axis=np.int32(0))
error("gather_along_axis_rank_mismatch", "gather_along_axis", x=R(3, 4), indices=ri(3), axis=np.int32(0))
case("gather_nd_full", "gather_nd", x=R(2, 3, 4), indices=np.array([[[1, 2], [0, 0]], [[1, 0], [0, 1]]], np.int32))
case("gather_nd_partial", "gather_nd", x=R(2, 3, 4), indices=ri(5, 1, hi=2))
case("gather_nd_all_dims", "gather_nd", x=R(2, 3, 4), indices=np.array([[1, 2, 3], [0, 0, 0]], np.int32))
case("gather_nd_batch_dims", "gather_nd", x=R(2, 3, 4), indices=ri(2, 2, 1, hi=3), batch_dims=np.int32(1))
case("gather_nd_runtime_indices", "gather_nd", x=R(4, 5, 6, dtype="fp16"), indices=R(3, 2, dtype="int32"))
case("gather_nd_symbolic", "gather_nd", x=R("B", 5, 6), indices=R("N", 2, dtype="int32"))
case("gather_nd_uint16", "gather_nd", x=R(4, 5, dtype="int32"), indices=np.array([[1], [3]], np.uint16))
error("gather_nd_too_deep", "gather_nd", x=R(2, 3), indices=ri(4, 3, hi=2))
case("scatter_axis0_add", "scatter", data=R(4, 3), indices=i32(1, 3, 1), updates=R(3, 3), axis=np.int32(0), mode="add")
case("scatter_axis1_update", "scatter", data=R(4, 3), indices=i32(2, 0), updates=R(4, 2), axis=np.int32(1), mode="update")
case("scatter_default", "scatter", data=R(5, 2, dtype="int32"), indices=i32(0), updates=R(1, 2, dtype="int32"))
case("scatter_runtime_indices", "scatter", data=R(6, 4), indices=R(2, dtype="int32"), updates=R(2, 4), mode="max")
case("scatter_symbolic", "scatter", data=R("V", 8), indices=R("N", dtype="int32"), updates=R("N", 8), mode="mul")
error("scatter_updates_mismatch", "scatter", data=R(4, 3), indices=i32(1, 2), updates=R(3, 3))
case("scatter_along_axis", "scatter_along_axis", data=R(4, 3), indices=ri(2, 3, hi=4), updates=R(2, 3), axis=np.int32(0), mode="update")
case("scatter_along_axis_default", "scatter_along_axis", data=R(4, 3, dtype="fp16"), indices=ri(4, 3, hi=4), updates=R(4, 3, dtype="fp16"))
case("scatter_along_axis_symbolic", "scatter_along_axis", data=R("B", 10), indices=R("B", 3, dtype="int32"), updates=R("B", 3), axis=np.int32(1), mode="add")
error("scatter_along_axis_mismatch", "scatter_along_axis", data=R(4, 3), indices=ri(2, 3, hi=4), updates=R(2, 2), axis=np.int32(0))
case("scatter_nd_rows", "scatter_nd", data=R(4, 3), indices=np.array([[1], [3]], np.int32), updates=R(2, 3), mode="mul")
case("scatter_nd_points", "scatter_nd", data=R(3, 4, dtype="int32"), indices=np.array([[0, 1], [2, 3], [0, 1]], np.int32), updates=R(3, dtype="int32"), mode="add")
case("scatter_nd_default", "scatter_nd", data=R(2, 3, 4), indices=ri(5, 2, hi=2), updates=R(5, 4))
case("scatter_nd_symbolic", "scatter_nd", data=R("B", 16), indices=R("N", 1, dtype="int32"), updates=R("N", 16), mode="update")
error("scatter_nd_updates_mismatch", "scatter_nd", data=R(4, 3), indices=np.array([[1], [3]], np.int32), updates=R(2, 4))

# ---------------------------------------------------------------- topk, argsort, cumsum, one_hot
case("topk_default", "topk", x=R(3, 10))
case("topk_k3_axis1", "topk", x=R(2, 5, 4), k=np.int32(3), axis=np.int32(1))
case("topk_ascending_no_sort", "topk", x=R(2, 5), k=np.int32(2), ascending=True, sort=False)
case("topk_no_indices", "topk", x=R(2, 5), k=np.int32(2), return_indices=False)
case("topk_uint16_indices", "topk", x=R(4, 6, dtype="fp16"), k=np.int32(4), output_indices_dtype="uint16")
case("topk_int32_x", "topk", x=R(8, dtype="int32"), k=np.int32(8))
case("topk_symbolic_batch", "topk", x=R("B", 10), k=np.int32(4))
case("topk_symbolic_axis", "topk", x=R(2, "T"), k=np.int32(4))
case("topk_const", "topk", x=fa(3, 1, 4, 1, 5, 9), k=np.int32(3))
error("topk_k_too_large", "topk", x=R(3, 4), k=np.int32(5))
error("topk_bad_indices_dtype", "topk", x=R(3, 4), k=np.int32(2), output_indices_dtype="int16")
case("argsort_default", "argsort", x=R(2, 3, 5))
case("argsort_axis_ascending", "argsort", x=R(2, 3, 5, dtype="fp16"), axis=np.int32(1), ascending=True)
case("argsort_int32_symbolic", "argsort", x=R("B", 7, dtype="int32"))
case("argsort_const", "argsort", x=fa(3, 1, 2))
case("cumsum_default", "cumsum", x=R(2, 3))
case("cumsum_all", "cumsum", x=R(2, 3, 5, dtype="int32"), axis=np.int32(2), exclusive=True, reverse=True)
case("cumsum_symbolic", "cumsum", x=R("B", "T", dtype="fp16"), axis=np.int32(1))
case("cumsum_const", "cumsum", x=i32(1, 2, 3, 4))
error("cumsum_axis_out_of_range", "cumsum", x=R(2, 3), axis=np.int32(2))
case("one_hot_default", "one_hot", indices=R(2, 3, dtype="int32"), one_hot_vector_size=np.int32(4))
case("one_hot_axis0_float", "one_hot", indices=R(3, dtype="int32"), one_hot_vector_size=np.int32(5), axis=np.int32(0), on_value=np.float32(2), off_value=np.float32(-1))
case("one_hot_axis1", "one_hot", indices=R(2, 3, dtype="int32"), one_hot_vector_size=np.int32(4), axis=np.int32(1))
case("one_hot_bool_values", "one_hot", indices=R(4, dtype="int32"), one_hot_vector_size=np.int32(3), on_value=True, off_value=False)
case("one_hot_fp16_values", "one_hot", indices=R(4, dtype="int32"), one_hot_vector_size=np.int32(3), on_value=np.float16(1), off_value=np.float16(0))
case("one_hot_runtime_size", "one_hot", indices=R(4, dtype="int32"), one_hot_vector_size=R(dtype="int32"))
case("one_hot_symbolic", "one_hot", indices=R("B", dtype="int32"), one_hot_vector_size=np.int32(10), axis=np.int32(0))
case("one_hot_const", "one_hot", indices=i32(1, 0, 2), one_hot_vector_size=np.int32(3))
case("one_hot_scalar_index", "one_hot", indices=np.int32(2), one_hot_vector_size=np.int32(4))
error("one_hot_float_indices", "one_hot", indices=R(4), one_hot_vector_size=np.int32(3))

# ---------------------------------------------------------------- resampling, rearrangements
case("upsample_nearest_default", "upsample_nearest_neighbor", x=R(1, 2, 3, 4))
case("upsample_nearest_int", "upsample_nearest_neighbor", x=R(1, 2, 3, 4), scale_factor_height=np.int32(2), scale_factor_width=np.int32(3))
case("upsample_nearest_float", "upsample_nearest_neighbor", x=R(1, 2, 3, 4), scale_factor_height=np.float32(1.5), scale_factor_width=np.float32(2.5))
case("upsample_nearest_float_floor", "upsample_nearest_neighbor", x=R(1, 2, 5, 5), scale_factor_height=np.float32(1.3), scale_factor_width=np.float32(0.5))
case("upsample_nearest_rank3_fp16", "upsample_nearest_neighbor", x=R(2, 3, 4, dtype="fp16"), scale_factor_height=np.int32(2), scale_factor_width=np.int32(2))
case("upsample_nearest_rank5", "upsample_nearest_neighbor", x=R(2, 1, 2, 3, 4), scale_factor_height=np.int32(2), scale_factor_width=np.int32(1))
case("upsample_nearest_symbolic", "upsample_nearest_neighbor", x=R("B", 3, "H", 4), scale_factor_height=np.int32(2), scale_factor_width=np.int32(2))
case("resize_nearest", "resize_nearest_neighbor", x=R(1, 2, 3, 4), target_size_height=np.int32(5), target_size_width=np.int32(7))
case("resize_nearest_rank3_fp16", "resize_nearest_neighbor", x=R(2, 3, 4, dtype="fp16"), target_size_height=np.int32(1), target_size_width=np.int32(2))
case("resize_nearest_symbolic", "resize_nearest_neighbor", x=R("B", 3, "H", "W"), target_size_height=np.int32(8), target_size_width=np.int32(8))
case("upsample_bilinear_default", "upsample_bilinear", x=R(1, 2, 3, 4))
case("upsample_bilinear_align", "upsample_bilinear", x=R(1, 2, 3, 4), scale_factor_height=np.int32(2), scale_factor_width=np.int32(2), align_corners=True)
case("upsample_bilinear_half_pixel", "upsample_bilinear", x=R(1, 2, 3, 4), scale_factor_height=np.float32(2.0), scale_factor_width=np.float32(3.0), align_corners=False, half_pixel_centers=True)
case("upsample_bilinear_fractional", "upsample_bilinear", x=R(2, 5, 5, dtype="fp16"), scale_factor_height=np.float32(1.5), scale_factor_width=np.float32(0.6))
case("upsample_bilinear_symbolic", "upsample_bilinear", x=R("B", 2, "H", 4), scale_factor_height=np.int32(2), scale_factor_width=np.int32(2))
case("resize_bilinear_default", "resize_bilinear", x=R(1, 2, 3, 4))
case("resize_bilinear_mode_default", "resize_bilinear", x=R(1, 2, 3, 4), target_size_height=np.int32(5), target_size_width=np.int32(7), sampling_mode="DEFAULT")
for mode in ["STRICT_ALIGN_CORNERS", "ALIGN_CORNERS", "OFFSET_CORNERS", "UNALIGN_CORNERS"]:
    case(f"resize_bilinear_{mode.lower()}", "resize_bilinear", x=R(1, 2, 3, 4), target_size_height=np.int32(5), target_size_width=np.int32(7), sampling_mode=mode)
case("resize_bilinear_rank3_fp16", "resize_bilinear", x=R(2, 4, 4, dtype="fp16"), target_size_height=np.int32(2), target_size_width=np.int32(8))
case("resize_bilinear_symbolic", "resize_bilinear", x=R("B", 2, "H", "W"), target_size_height=np.int32(6), target_size_width=np.int32(6))
error("resize_bilinear_bad_mode", "resize_bilinear", x=R(1, 2, 3, 4), target_size_height=np.int32(5), target_size_width=np.int32(7), sampling_mode="NEAREST")
error("upsample_nearest_rank2", "upsample_nearest_neighbor", x=R(3, 4), scale_factor_height=np.int32(2), scale_factor_width=np.int32(2))
case("pixel_shuffle", "pixel_shuffle", x=R(1, 8, 2, 3), upscale_factor=np.int32(2))
case("pixel_shuffle_fp16_batch", "pixel_shuffle", x=R(2, 18, 2, 2, dtype="fp16"), upscale_factor=np.int32(3))
case("pixel_shuffle_symbolic", "pixel_shuffle", x=R("B", 4, "H", 5), upscale_factor=np.int32(2))
case("pixel_unshuffle", "pixel_unshuffle", x=R(1, 2, 4, 6), downscale_factor=np.uint32(2))
case("pixel_unshuffle_3", "pixel_unshuffle", x=R(2, 1, 6, 9, dtype="fp16"), downscale_factor=np.uint32(3))
case("pixel_unshuffle_symbolic", "pixel_unshuffle", x=R("B", 3, 4, 4), downscale_factor=np.uint32(2))
case("depth_to_space", "depth_to_space", x=R(1, 8, 2, 3), block_size=np.int32(2))
case("depth_to_space_fp16", "depth_to_space", x=R(2, 18, 1, 2, dtype="fp16"), block_size=np.int32(3))
case("depth_to_space_symbolic", "depth_to_space", x=R("B", 4, "H", "W"), block_size=np.int32(2))
case("space_to_depth", "space_to_depth", x=R(1, 2, 4, 6), block_size=np.int32(2))
case("space_to_depth_fp16", "space_to_depth", x=R(1, 1, 6, 3, dtype="fp16"), block_size=np.int32(3))
case("space_to_depth_symbolic", "space_to_depth", x=R("B", 2, "H", 4), block_size=np.int32(2))

# ---------------------------------------------------------------- select, fill, shape, range, cast, ...
case("select_broadcast", "select", cond=R(2, 1, dtype="bool"), a=R(2, 3), b=R(3))
case("select_same", "select", cond=R(4, dtype="bool"), a=R(4, dtype="int32"), b=R(4, dtype="int32"))
case("select_const_branches", "select", cond=R(2, 3, dtype="bool"), a=np.float32(1), b=f32(3))
case("select_fp16", "select", cond=R(3, dtype="bool"), a=R(2, 3, dtype="fp16"), b=R(1, 1, dtype="fp16"))
case("select_bool_values", "select", cond=R(3, dtype="bool"), a=R(3, dtype="bool"), b=R(3, dtype="bool"))
case("select_symbolic", "select", cond=R("B", 1, dtype="bool"), a=R("B", 4), b=R(1, 4))
case("select_const", "select", cond=ba(True, False, True), a=i32(1, 2, 3), b=i32(-1, -2, -3))
error("select_branch_dtypes", "select", cond=R(2, dtype="bool"), a=R(2), b=R(2, dtype="int32"))
case("fill_const_shape", "fill", shape=i32(2, 3), value=np.float32(-1))
case("fill_default_value", "fill", shape=i32(4))
case("fill_int32", "fill", shape=i32(2, 2), value=np.int32(7))
case("fill_bool", "fill", shape=i32(3), value=True)
case("fill_fp16", "fill", shape=i32(2, 1), value=np.float16(0.5))
case("fill_large", "fill", shape=i32(10, 10), value=np.float32(0))
case("fill_empty_shape_scalar", "fill", shape=np.zeros((0,), np.int32), value=np.float32(3))
case("fill_runtime_shape", "fill", shape=R(3, dtype="int32"), value=np.float32(1))
case("fill_runtime_shape_int", "fill", shape=R(2, dtype="int32"), value=np.int32(0))
case("fill_like", "fill_like", ref_tensor=R(2, 3, 4), value=np.float32(2.5))
case("fill_like_default", "fill_like", ref_tensor=R(2, 3))
case("fill_like_int_ref_default", "fill_like", ref_tensor=R(2, 3, dtype="int32"))
case("fill_like_int_ref_float_value", "fill_like", ref_tensor=R(4, dtype="int32"), value=np.float32(1))
case("fill_like_bool_value", "fill_like", ref_tensor=R(2, 2, dtype="fp16"), value=True)
case("fill_like_symbolic", "fill_like", ref_tensor=R("B", 3), value=np.int32(5))
case("fill_like_const", "fill_like", ref_tensor=fa(1, 2, 3), value=np.float32(0))
case("shape_known", "shape", x=R(2, 3, 4))
case("shape_symbolic", "shape", x=R("B", 3, "T"))
case("shape_rank0", "shape", x=R())
case("shape_int32_input", "shape", x=R(5, dtype="int32"))
case("shape_bool_input", "shape", x=R(1, 1, 2, dtype="bool"))
case("shape_const", "shape", x=np.zeros((3, 2), np.float32))
case("band_part_default", "band_part", x=R(4, 4))
case("band_part", "band_part", x=R(2, 4, 5), lower=np.int32(1), upper=np.int32(-1))
case("band_part_int_symbolic", "band_part", x=R("B", 4, 4, dtype="int32"), lower=np.int32(0), upper=np.int32(0))
case("band_part_const", "band_part", x=np.ones((3, 3), np.float32), lower=np.int32(0), upper=np.int32(1))
case("range_1d_int", "range_1d", end=np.int32(10), start=np.int32(0), step=np.int32(3))
case("range_1d_negative_step", "range_1d", end=np.int32(-7), start=np.int32(3), step=np.int32(-3))
case("range_1d_float", "range_1d", end=np.float32(2.0), start=np.float32(-1.0), step=np.float32(0.7))
case("range_1d_fp16", "range_1d", end=np.float16(1.0), start=np.float16(0.0), step=np.float16(0.25))
case("range_1d_large", "range_1d", end=np.int32(100), start=np.int32(0), step=np.int32(1))
case("range_1d_runtime_end", "range_1d", end=R(dtype="int32"), start=np.int32(0), step=np.int32(1))
case("range_1d_runtime_all_float", "range_1d", end=R(), start=R(), step=R())
error("range_1d_mixed_dtypes", "range_1d", end=np.float32(4), start=np.int32(0), step=np.int32(1))
error("range_1d_zero_step", "range_1d", end=np.int32(4), start=np.int32(0), step=np.int32(0))
for dt in ["fp16", "fp32", "int32", "int16", "int8", "uint8", "uint16", "bool"]:
    case(f"cast_fp32_to_{dt}", "cast", x=R(2, 3), dtype=dt)
for src in ["fp16", "int32", "bool", "int8", "uint16"]:
    case(f"cast_{src}_to_fp32", "cast", x=R(4, dtype=src), dtype="fp32")
case("cast_symbolic", "cast", x=R("B", 3, dtype="int32"), dtype="fp16")
case("cast_rank0", "cast", x=R(), dtype="int32")
case("cast_const_to_int32", "cast", x=fa(-1.7, 2.5, 300.0, -0.2), dtype="int32")
case("cast_const_to_fp16", "cast", x=fa(0.1, 1 / 3, 65504.0), dtype="fp16")
case("cast_const_to_bool", "cast", x=i32(0, 2, -1), dtype="bool")
case("cast_const_to_uint8", "cast", x=i32(1, 255), dtype="uint8")
case("cast_const_scalar", "cast", x=np.float32(3.9), dtype="int32")
error("cast_unknown_dtype", "cast", x=R(2), dtype="fp64")
error("cast_int4", "cast", x=R(2), dtype="int4")
case("identity", "identity", x=R(2, 3))
case("identity_int32_symbolic", "identity", x=R("B", dtype="int32"))
case("identity_bool", "identity", x=R(1, dtype="bool"))
case("identity_const", "identity", x=i32(4, 5))

# ---------------------------------------------------------------- issue 23 (opsvq): quantization, sampling, detection
case("quantize_per_tensor_int8", "quantize", input=R(2, 3), scale=np.float32(0.1), zero_point=np.int8(3), output_dtype="int8")
case("quantize_per_tensor_uint8_no_zp", "quantize", input=R(1, 4, dtype="fp16"), scale=np.float16(0.5), output_dtype="uint8")
case("quantize_per_axis", "quantize", input=R(2, 3, 4), scale=fa(0.1, 0.2, 0.3), zero_point=np.array([0, 1, -1], np.int8), axis=np.int32(1), output_dtype="int8")
case("quantize_per_axis_negative", "quantize", input=R("B", 4), scale=fa(1, 2, 3, 4), axis=np.int32(-1), output_dtype="uint8")
case("quantize_const", "quantize", input=fa(-1.0, 0.25, 0.35, 100.0), scale=np.float32(0.1), zero_point=np.int8(0), output_dtype="int8")
error("quantize_zero_point_dtype", "quantize", input=R(2, 3), scale=np.float32(0.1), zero_point=np.uint8(3), output_dtype="int8")
error("quantize_bad_dtype", "quantize", input=R(2, 3), scale=np.float32(0.1), output_dtype="int16")
error("quantize_vector_without_axis", "quantize", input=R(2, 3), scale=fa(0.1, 0.2, 0.3), output_dtype="int8")
error("quantize_axis_length", "quantize", input=R(2, 3), scale=fa(0.1, 0.2), axis=np.int32(1), output_dtype="int8")
error("quantize_zero_scale", "quantize", input=R(2, 3), scale=np.float32(0), output_dtype="int8")
case("dequantize_int8", "dequantize", input=R(2, 3, dtype="int8"), scale=np.float32(0.1), zero_point=np.int8(3))
case("dequantize_uint8_fp16", "dequantize", input=R(4, dtype="uint8"), scale=np.float16(0.5))
case("dequantize_per_axis", "dequantize", input=R(3, "B", dtype="int8"), scale=fa(0.1, 0.2, 0.3), zero_point=np.array([0, 1, -1], np.int8), axis=np.int32(0))
case("dequantize_const", "dequantize", input=np.array([-128, 0, 5, 127], np.int8), scale=np.float32(0.5), zero_point=np.int8(1))
error("dequantize_axis_with_scalar", "dequantize", input=R(2, 3, dtype="int8"), scale=np.float32(0.1), axis=np.int32(0))
case("conv_quantized", "conv_quantized", x=R(1, 2, 5, 5), weight=ri(3, 2, 3, 3, hi=255, dtype=np.uint8), quantization_type="linear", quant_scale=fa(0.1, 0.2, 0.3), quant_bias=fa(-1, 0, 1))
case("conv_quantized_strided", "conv_quantized", x=R("B", 4, 8, 8), weight=ri(2, 2, 3, 3, hi=255, dtype=np.uint8), quantization_type="linear", quant_scale=np.float32(0.1), quant_bias=np.float32(0.0), strides=i32(2, 2), pad_type="same", groups=np.int32(2))
case("resample_bilinear", "resample", x=R(2, 3, 5, 6), coordinates=R(2, 4, 7, 2), sampling_mode="bilinear", padding_mode="constant", padding_value=np.float32(0), coordinates_mode="normalized_minus_one_to_one", align_corners=False)
case("resample_nearest_fp16", "resample", x=R(1, 2, 5, 6, dtype="fp16"), coordinates=R(1, 3, 3, 2, dtype="fp16"), sampling_mode="nearest", padding_mode="border", padding_value=np.float16(0), coordinates_mode="unnormalized", align_corners=True)
case("resample_symbolic", "resample", x=R("B", 3, "H", "W"), coordinates=R("B", 8, 8, 2), sampling_mode="bilinear", padding_mode="reflection", padding_value=np.float32(0), coordinates_mode="normalized_zero_to_one", align_corners=True)
error("resample_batch", "resample", x=R(2, 3, 5, 6), coordinates=R(3, 4, 7, 2), sampling_mode="bilinear", padding_mode="constant", padding_value=np.float32(0), coordinates_mode="normalized_minus_one_to_one", align_corners=False)
error("resample_last_axis", "resample", x=R(2, 3, 5, 6), coordinates=R(2, 4, 7, 3), sampling_mode="bilinear", padding_mode="constant", padding_value=np.float32(0), coordinates_mode="normalized_minus_one_to_one", align_corners=False)
case("affine", "affine", x=R(2, 3, 5, 6), transform_matrix=R(2, 6), output_height=np.int32(4), output_width=np.int32(7), sampling_mode="bilinear", padding_mode="constant", padding_value=np.float32(0), coordinates_mode="normalized_minus_one_to_one", align_corners=True)
case("affine_one_matrix", "affine", x=R("B", 1, 5, 6), transform_matrix=f32(1, 6), output_height=np.int32(3), output_width=np.int32(3), sampling_mode="bilinear", padding_mode="constant", padding_value=np.float32(0), coordinates_mode="normalized_minus_one_to_one", align_corners=False)
error("affine_matrix_width", "affine", x=R(2, 3, 5, 6), transform_matrix=R(2, 4), output_height=np.int32(4), output_width=np.int32(7), sampling_mode="bilinear", padding_mode="constant", padding_value=np.float32(0), coordinates_mode="normalized_minus_one_to_one", align_corners=True)
case("crop_resize", "crop_resize", x=R(2, 3, 8, 8), boxes=R(5, 4), box_indices=R(5, dtype="int32"), target_height=np.int32(4), target_width=np.int32(3))
case("crop_resize_defaults", "crop_resize", x=R(4, 3, 8, 8), boxes=R(2, 4))
case("crop_resize_modes", "crop_resize", x=R(1, 2, 8, 8, dtype="fp16"), boxes=R(3, 4, dtype="fp16"), box_indices=R(3, dtype="int32"), target_height=np.int32(2), target_width=np.int32(2), normalized_coordinates=True, spatial_scale=np.float32(0.5), box_coordinate_mode="CENTER_SIZE_WIDTH_FIRST", sampling_mode="OFFSET_CORNERS", pad_value=np.float16(1.0))
error("crop_resize_boxes_shape", "crop_resize", x=R(1, 3, 8, 8), boxes=R(2, 5), box_indices=R(2, dtype="int32"))
error("crop_resize_bad_mode", "crop_resize", x=R(1, 3, 8, 8), boxes=R(2, 4), box_indices=R(2, dtype="int32"), sampling_mode="NEAREST")
case("resize_const_shape", "resize", x=R(1, 2, 3, 4), shape=i32(1, 6, 8), resized_dims=np.uint32(2))
case("resize_inherit", "resize", x=R(1, 2, 3, "W"), shape=i32(1, 5, 0), resized_dims=np.uint32(2), interpolation_mode="NEAREST_NEIGHBOR")
case("resize_runtime_shape", "resize", x=R(1, 2, 3, 4), shape=R(2, dtype="int32"), resized_dims=np.uint32(2), sampling_mode="ALIGN_CORNERS")
case("resize_one_axis_int", "resize", x=R(2, 5, dtype="int32"), shape=i32(9), resized_dims=np.uint32(1), interpolation_mode="NEAREST_NEIGHBOR")
error("resize_too_many_dims", "resize", x=R(1, 2, 3, 4), shape=i32(6, 8), resized_dims=np.uint32(3))
error("resize_bad_mode", "resize", x=R(1, 2, 3, 4), shape=i32(6, 8), resized_dims=np.uint32(2), interpolation_mode="CUBIC")
case("nms", "non_maximum_suppression", boxes=R(1, 4, 10), scores=R(1, 3, 10), iou_threshold=np.float32(0.5), max_boxes=np.int32(5))
case("nms_per_class_fp16", "non_maximum_suppression", boxes=R(2, 4, 7, dtype="fp16"), scores=R(2, 1, 7, dtype="fp16"), iou_threshold=np.float16(0.3), max_boxes=np.int32(7), per_class_suppression=True)

# ---------------------------------------------------------------- lstm, rnn
H, I = 4, 3


def lstm_inputs(T=5, B=2, bidir=False, seq=None, dt=np.float32, sym=None, **extra):
    d = dict(
        x=R(sym or T, B, I, dtype="fp16" if dt == np.float16 else "fp32"),
        initial_h=R(B, H * (2 if bidir else 1), dtype="fp16" if dt == np.float16 else "fp32"),
        initial_c=R(B, H * (2 if bidir else 1), dtype="fp16" if dt == np.float16 else "fp32"),
        weight_ih=W(4 * H, I, dt=dt), weight_hh=W(4 * H, H, dt=dt))
    if bidir:
        d.update(weight_ih_back=W(4 * H, I, dt=dt), weight_hh_back=W(4 * H, H, dt=dt), direction="bidirectional")
    if seq is not None:
        d["output_sequence"] = seq
    d.update(extra)
    return d


case("lstm_default", "lstm", **lstm_inputs())
case("lstm_output_sequence", "lstm", **lstm_inputs(seq=True, bias=W(4 * H)))
case("lstm_reverse", "lstm", **lstm_inputs(seq=True, direction="reverse"))
case("lstm_bidirectional", "lstm", **lstm_inputs(bidir=True))
case("lstm_bidirectional_sequence", "lstm", **lstm_inputs(bidir=True, seq=True, bias=W(4 * H), bias_back=W(4 * H)))
case("lstm_peephole_clip", "lstm", **lstm_inputs(seq=True, peephole=W(3 * H), clip=np.float32(5), recurrent_activation="hard_sigmoid", cell_activation="tanh", activation="relu"))
case("lstm_fp16", "lstm", **lstm_inputs(dt=np.float16, seq=True))
case("lstm_symbolic_seq", "lstm", **lstm_inputs(sym="T", seq=True))
case("lstm_symbolic_seq_last", "lstm", **lstm_inputs(sym="T"))
error("lstm_bad_weight_shape", "lstm", **lstm_inputs(weight_hh=W(4 * H, H + 1)))


def rnn_inputs(T=5, B=2, seq=None, sym=None, dt="fp32", **extra):
    npdt = np.float16 if dt == "fp16" else np.float32
    d = dict(x=R(sym or T, B, I, dtype=dt), initial_h=R(B, H, dtype=dt),
             weight_ih=W(H, I, dt=npdt), weight_hh=W(H, H, dt=npdt))
    if seq is not None:
        d["output_sequence"] = seq
    d.update(extra)
    return d


case("rnn_default", "rnn", **rnn_inputs())
case("rnn_output_sequence", "rnn", **rnn_inputs(seq=True, bias=W(H), activation="relu"))
case("rnn_reverse", "rnn", **rnn_inputs(seq=False, direction="reverse", activation="sigmoid"))
case("rnn_fp16", "rnn", **rnn_inputs(seq=True, dt="fp16"))
case("rnn_symbolic_seq", "rnn", **rnn_inputs(sym="T", seq=True))
error("rnn_bidirectional", "rnn", **rnn_inputs(direction="bidirectional"))

# ---------------------------------------------------------------- constexpr
def typed(values, dtype):
    """A numpy array that coremltools reads as `dtype` (sub-byte types too)."""
    return np.array(values).astype(types.nptype_from_builtin(types.string_to_builtin(dtype)))


case("constexpr_affine_dequantize_scalar", "constexpr_affine_dequantize", quantized_data=ri(2, 3, lo=0, hi=255, dtype=np.uint8), zero_point=np.uint8(128), scale=np.float32(0.1), axis=np.int32(0))
case("constexpr_affine_dequantize_per_channel", "constexpr_affine_dequantize", quantized_data=ri(4, 3, 2, lo=-128, hi=127, dtype=np.int8), zero_point=np.zeros(4, np.int8), scale=f32(4), axis=np.int32(0))
case("constexpr_affine_dequantize_fp16_axis1", "constexpr_affine_dequantize", quantized_data=ri(2, 5, lo=0, hi=255, dtype=np.uint8), zero_point=np.float32(3), scale=f16(5), axis=np.int32(-1))
error("constexpr_affine_dequantize_axis", "constexpr_affine_dequantize", quantized_data=ri(2, 3, dtype=np.int8), zero_point=np.int8(0), scale=np.float32(1), axis=np.int32(2))
error("constexpr_affine_dequantize_scale_size", "constexpr_affine_dequantize", quantized_data=ri(2, 3, dtype=np.int8), zero_point=np.int8(0), scale=f32(3), axis=np.int32(0))
case("constexpr_blockwise_shift_scale_int8", "constexpr_blockwise_shift_scale", data=ri(4, 6, lo=-8, hi=8, dtype=np.int8), scale=f32(4, 2))
case("constexpr_blockwise_shift_scale_int4_offset", "constexpr_blockwise_shift_scale", data=typed(ri(2, 8, lo=-8, hi=8), "int4"), scale=f16(2, 2), offset=typed(ri(2, 2, lo=-2, hi=2), "int4"))
case("constexpr_blockwise_shift_scale_uint4_float_offset", "constexpr_blockwise_shift_scale", data=typed(ri(3, 4, 2, lo=0, hi=16), "uint4"), scale=f32(1, 4, 1), offset=f32(1, 4, 1))
case("constexpr_blockwise_shift_scale_uint8_large", "constexpr_blockwise_shift_scale", data=ri(16, 8, lo=0, hi=255, dtype=np.uint8), scale=f16(16, 1), offset=ri(16, 1, lo=0, hi=255, dtype=np.uint8))
case("constexpr_blockwise_shift_scale_fp16_data", "constexpr_blockwise_shift_scale", data=f16(2, 4), scale=f32(1, 1))
error("constexpr_blockwise_shift_scale_block", "constexpr_blockwise_shift_scale", data=ri(4, 6, dtype=np.int8), scale=f32(3, 2))
error("constexpr_blockwise_shift_scale_rank", "constexpr_blockwise_shift_scale", data=ri(4, 6, dtype=np.int8), scale=f32(4))
case("constexpr_lut_to_dense_uint2", "constexpr_lut_to_dense", indices=typed(ri(6, 2), "uint2"), lut=f16(2, 1, 4, 1))
case("constexpr_lut_to_dense_uint1_vector_axis1", "constexpr_lut_to_dense", indices=typed(ri(2, 2, 2, hi=2), "uint1"), lut=ri(1, 1, 1, 2, 3, lo=-5, hi=5, dtype=np.int8), vector_axis=np.int32(1))
case("constexpr_lut_to_dense_uint1_vector_axis_last", "constexpr_lut_to_dense", indices=typed(ri(2, 2, 2, hi=2), "uint1"), lut=f32(1, 1, 1, 2, 3), vector_axis=np.int32(-1))
case("constexpr_lut_to_dense_uint4_large", "constexpr_lut_to_dense", indices=typed(ri(16, 8, hi=16), "uint4"), lut=f32(4, 1, 16, 1))
case("constexpr_lut_to_dense_uint8", "constexpr_lut_to_dense", indices=ri(2, 3, hi=256, dtype=np.uint8), lut=f16(1, 1, 256, 1))
case("constexpr_lut_to_dense_uint3_uint8_lut", "constexpr_lut_to_dense", indices=typed(ri(4, hi=8), "uint3"), lut=ri(2, 8, 1, lo=0, hi=255, dtype=np.uint8))
error("constexpr_lut_to_dense_bits_mismatch", "constexpr_lut_to_dense", indices=typed(ri(6, 2), "uint2"), lut=f16(1, 1, 8, 1))
error("constexpr_lut_to_dense_vector_without_axis", "constexpr_lut_to_dense", indices=typed(ri(4, 2, hi=2), "uint1"), lut=f16(1, 1, 2, 2))
mask = typed(np.array([[1, 0, 0, 1], [0, 1, 1, 0], [0, 0, 0, 1]]), "uint1")
case("constexpr_sparse_to_dense_fp16", "constexpr_sparse_to_dense", nonzero_data=f16(5), mask=mask)
case("constexpr_sparse_to_dense_int4", "constexpr_sparse_to_dense", nonzero_data=typed(ri(5, lo=-8, hi=8), "int4"), mask=mask)
case("constexpr_sparse_to_dense_uint8_rank1", "constexpr_sparse_to_dense", nonzero_data=ri(3, hi=200, dtype=np.uint8), mask=typed([0, 1, 1, 0, 1], "uint1"))
case("constexpr_sparse_to_dense_large", "constexpr_sparse_to_dense", nonzero_data=f32(int((big := (rng.uniform(size=(12, 10)) < 0.6).astype(np.int64)).sum())), mask=typed(big, "uint1"))
error("constexpr_sparse_to_dense_count", "constexpr_sparse_to_dense", nonzero_data=f16(4), mask=mask)
case("constexpr_cast", "constexpr_cast", source_val=f16(2, 3), output_dtype="fp32")
case("constexpr_cast_large", "constexpr_cast", source_val=f16(8, 16), output_dtype="fp32")
error("constexpr_cast_to_int32", "constexpr_cast", source_val=f16(2, 3), output_dtype="int32")
case("constexpr_lut_to_sparse_scalar", "constexpr_lut_to_sparse", indices_mask=mask, indices_nonzero_data=typed(ri(5, hi=2), "uint1"), lut=f16(1, 1, 2, 1))
case("constexpr_lut_to_sparse_vector", "constexpr_lut_to_sparse", indices_mask=mask, indices_nonzero_data=typed(ri(5, hi=4), "uint2"), lut=f32(1, 1, 4, 2), vector_axis=np.int32(0))
case("constexpr_lut_to_sparse_vector_axis1", "constexpr_lut_to_sparse", indices_mask=mask, indices_nonzero_data=typed(ri(5, hi=2), "uint1"), lut=ri(1, 2, 2, 3, lo=-3, hi=3, dtype=np.int8), vector_axis=np.int32(1))
error("constexpr_lut_to_sparse_count", "constexpr_lut_to_sparse", indices_mask=mask, indices_nonzero_data=typed(ri(4, hi=2), "uint1"), lut=f16(1, 1, 2, 1))
case("constexpr_sparse_blockwise_shift_scale", "constexpr_sparse_blockwise_shift_scale", data_mask=mask, nonzero_data=ri(5, lo=-8, hi=8, dtype=np.int8), scale=f32(1, 4))
case("constexpr_sparse_blockwise_shift_scale_int4_offset", "constexpr_sparse_blockwise_shift_scale", data_mask=mask, nonzero_data=typed(ri(5, lo=-8, hi=8), "int4"), scale=f16(3, 2), offset=typed(ri(3, 2, lo=-1, hi=1), "int4"))
case("constexpr_sparse_blockwise_shift_scale_uint4_float_offset", "constexpr_sparse_blockwise_shift_scale", data_mask=mask, nonzero_data=typed(ri(5, hi=16), "uint4"), scale=f32(3, 1), offset=f16(3, 1))
error("constexpr_sparse_blockwise_shift_scale_block", "constexpr_sparse_blockwise_shift_scale", data_mask=mask, nonzero_data=ri(5, dtype=np.int8), scale=f32(2, 4))


# ---------------------------------------------------------------- more unknown dimensions
case("real_div_symbolic_broadcast", "real_div", x=R("B", "T", 1), y=R("T", 5))
case("equal_symbolic_int32", "equal", x=R("B", dtype="int32"), y=np.int32(0))
case("tanh_symbolic_fp16", "tanh", x=R("B", 3, dtype="fp16"))
case("matmul_symbolic_transpose_y", "matmul", x=R("B", "T", 8), y=R("B", "S", 8), transpose_y=True)
case("linear_symbolic_rank2_bias", "linear", x=R("B", 5), weight=f32(3, 5), bias=f32(3))
case("layer_norm_symbolic_last", "layer_norm", x=R("B", "T", 8), axes=i32(-1), gamma=f32(8), beta=f32(8))
case("reshape_symbolic_merge", "reshape", x=R("B", "T", 4), shape=i32(-1, 4))
case("reshape_symbolic_split", "reshape", x=R("B", 6), shape=i32(-1, 2, 3))
case("expand_dims_symbolic_negative", "expand_dims", x=R("B", "T"), axes=i32(-1))
case("gather_symbolic_scalar_index", "gather", x=R("B", "T", 8), indices=np.int32(0), axis=np.int32(1))
case("topk_symbolic_axis_ascending", "topk", x=R("B", "T"), k=np.int32(2), axis=np.int32(0), ascending=True)
case("conv_transpose_symbolic_same", "conv_transpose", x=R("B", 4, "H", "W"), weight=W(4, 2, 3, 3), strides=i32(2, 2), pad_type="same")
case("max_pool_symbolic_same", "max_pool", x=R(1, 3, "H", "W"), kernel_sizes=i32(3, 3), strides=i32(2, 2), pad_type="same")
case("upsample_nearest_symbolic_float", "upsample_nearest_neighbor", x=R(1, 3, "H", "W"), scale_factor_height=np.float32(1.5), scale_factor_width=np.float32(2))
case("pad_symbolic_reflect", "pad", x=R(1, 3, "H", "W"), pad=i32(1, 1, 2, 2), mode="reflect")
case("tile_symbolic_rep_one", "tile", x=R("B", 3), reps=i32(1, 4))
case("split_symbolic_sizes_other_axis", "split", x=R("B", 6), split_sizes=i32(2, 4), axis=np.int32(1))
case("stack_symbolic", "stack", values=[R("B", 4), R("B", 4)], axis=np.int32(0))
case("slice_by_size_symbolic_axis_sized", "slice_by_size", x=R("T", 6), begin=i32(1, 0), size=i32(2, -1))
case("cumsum_symbolic_reverse", "cumsum", x=R("B", 5), axis=np.int32(0), reverse=True)
case("one_hot_symbolic_last_axis", "one_hot", indices=R("B", "T", dtype="int32"), one_hot_vector_size=np.int32(6))
case("band_part_symbolic_fp16", "band_part", x=R("T", "T", dtype="fp16"), lower=np.int32(-1), upper=np.int32(0))
case("select_symbolic_both", "select", cond=R(1, "T", dtype="bool"), a=R("B", 1), b=np.float32(0))
case("sdpa_symbolic_mask", "scaled_dot_product_attention", query=R("B", "T", 8), key=R("B", "S", 8), value=R("B", "S", 4), attn_mask=R("T", "S", dtype="bool"))
case("crop_symbolic_spatial", "crop", x=R(1, 2, "H", 8), crop_height=i32(1, 1), crop_width=i32(2, 0))
case("space_to_depth_symbolic_channels", "space_to_depth", x=R(1, "C", 4, 4), block_size=np.int32(2))
case("reduce_argmax_symbolic_keep", "reduce_argmax", x=R("B", "T", 5), axis=np.int32(1), keep_dims=True)
case("lstm_symbolic_batch", "lstm", **dict(lstm_inputs(seq=True), x=R(5, "B", I), initial_h=R("B", H), initial_c=R("B", H)))
case("fill_like_symbolic_bool", "fill_like", ref_tensor=R("T", dtype="bool"), value=np.float32(1))
case("scatter_nd_symbolic_points", "scatter_nd", data=R("B", "T"), indices=R(3, 2, dtype="int32"), updates=R(3), mode="max")


# ---------------------------------------------------------------- issue 23 (opsmisc)
case("einsum_rank4", "einsum", values=[R(2, 3, 4, 5), R(2, 5, 4, 6)], equation="nchw,nwhu->nchu")
case("einsum_rank4_broadcast", "einsum", values=[R(1, 3, 4, 5), R(2, 5, 1, 6)], equation="bcij,bjik->bcik")
case("einsum_rank3_fp16", "einsum", values=[R(3, 4, 5, dtype="fp16"), R(5, 4, 2, dtype="fp16")], equation="chw,whr->chr")
case("einsum_symbolic", "einsum", values=[R("B", 3, "H", 5), R(1, 5, "H", 6)], equation="nchw,nwhu->nchu")
error("einsum_unsupported", "einsum", values=[R(2, 3, 4, 5), R(2, 5, 4, 6)], equation="abcd,adbe->abce")
error("einsum_contraction_mismatch", "einsum", values=[R(2, 3, 4, 5), R(2, 6, 4, 6)], equation="nchw,nwhu->nchu")


def gru_inputs(T=5, B=2, seq=None, sym=None, dt="fp32", **extra):
    npdt = np.float16 if dt == "fp16" else np.float32
    d = dict(x=R(sym or T, B, I, dtype=dt), initial_h=R(B, H, dtype=dt),
             weight_ih=W(3 * H, I, dt=npdt), weight_hh=W(3 * H, H, dt=npdt))
    if seq is not None:
        d["output_sequence"] = seq
    d.update(extra)
    return d


case("gru_default", "gru", **gru_inputs())
case("gru_output_sequence", "gru", **gru_inputs(seq=True, bias=W(3 * H), activation="relu"))
case("gru_reverse", "gru", **gru_inputs(seq=False, direction="reverse", recurrent_activation="hard_sigmoid"))
case("gru_fp16", "gru", **gru_inputs(seq=True, dt="fp16"))
case("gru_symbolic_seq", "gru", **gru_inputs(sym="T", seq=True))
case("gru_reset_after", "gru", **gru_inputs(seq=True, bias=W(3 * H), input_bias=W(3 * H), reset_after=True))
error("gru_bidirectional", "gru", **gru_inputs(direction="bidirectional"))
error("gru_bad_weight_shape", "gru", **gru_inputs(weight_hh=W(3 * H, H + 1)))

case("space_to_batch", "space_to_batch", x=R(2, 3, 4, 5), block_shape=i32(2, 3), paddings=np.array([[0, 0], [1, 0]], np.int32))
case("space_to_batch_fp16", "space_to_batch", x=R(1, 2, 6, 6, dtype="fp16"), block_shape=i32(2, 2), paddings=np.array([[1, 1], [0, 2]], np.int32))
error("space_to_batch_rank3", "space_to_batch", x=R(2, 4, 4), block_shape=i32(2, 2), paddings=np.zeros((2, 2), np.int32))
case("batch_to_space", "batch_to_space", x=R(12, 3, 2, 2), block_shape=i32(2, 3), crops=np.array([[1, 0], [0, 2]], np.int32))
case("batch_to_space_no_crop", "batch_to_space", x=R(4, 2, 3, 3, dtype="fp16"), block_shape=i32(2, 2), crops=np.zeros((2, 2), np.int32))
error("batch_to_space_batch", "batch_to_space", x=R(3, 2, 2, 2), block_shape=i32(2, 2), crops=np.zeros((2, 2), np.int32))

case("flatten2d_default", "flatten2d", x=R(2, 3, 4))
case("flatten2d_negative", "flatten2d", x=R(2, 3, 2, dtype="int32"), axis=np.int32(-1))
case("flatten2d_zero", "flatten2d", x=R(2, 3, dtype="bool"), axis=np.int32(0))
case("flatten2d_symbolic", "flatten2d", x=R("B", 3, 4), axis=np.int32(2))
case("flatten2d_const", "flatten2d", x=f32(2, 3, 2), axis=np.int32(1))

case("reshape_like", "reshape_like", x=R(2, 3, 4), ref_tensors=[R(2, 2, 1), R(1, 3, 2)], begins=[np.int32(0), np.int32(1)],
     ends=[np.int32(2), np.int32(0)], end_masks=[False, True])
case("reshape_like_int32_negative", "reshape_like", x=R(6, dtype="int32"), ref_tensors=[R(4, 2, 3)], begins=[np.int32(-2)],
     ends=[np.int32(0)], end_masks=[True])
case("reshape_like_symbolic_x", "reshape_like", x=R("B", 4), ref_tensors=[R(2, 4)], begins=[np.int32(0)], ends=[np.int32(2)],
     end_masks=[False])
error("reshape_like_count", "reshape_like", x=R(2, 3), ref_tensors=[R(2, 2)], begins=[np.int32(0)], ends=[np.int32(2)],
      end_masks=[False])
error("reshape_like_symbolic_ref", "reshape_like", x=R(2, 3), ref_tensors=[R("B", 3)], begins=[np.int32(0)], ends=[np.int32(2)],
      end_masks=[False])

case("sliding_windows", "sliding_windows", x=R(2, 7, 3), axis=np.int32(1), size=np.int32(3), stride=np.int32(2))
case("sliding_windows_default_stride_negative_axis", "sliding_windows", x=R(5, 4, dtype="int32"), axis=np.int32(-1), size=np.int32(2))
case("sliding_windows_fp16_first_axis", "sliding_windows", x=R(8, 2, dtype="fp16"), axis=np.int32(0), size=np.int32(4), stride=np.int32(3))

case("random_uniform", "random_uniform", shape=i32(2, 3))
case("random_uniform_fp16", "random_uniform", shape=i32(4), low=np.float16(-1), high=np.float16(1), seed=np.int32(7))
case("random_uniform_runtime_shape", "random_uniform", shape=R(3, dtype="int32"))
error("random_uniform_mixed_dtypes", "random_uniform", shape=i32(2), low=np.float16(0), high=np.float32(1))
case("random_normal", "random_normal", shape=i32(1, 2, 3), mean=np.float32(1), stddev=np.float32(2), seed=np.int32(3))
case("random_normal_fp16", "random_normal", shape=i32(5), mean=np.float16(0), stddev=np.float16(1))
error("random_normal_fp16_mean_only", "random_normal", shape=i32(5), mean=np.float16(0))
case("random_bernoulli", "random_bernoulli", shape=i32(3, 3), prob=np.float32(0.25))
case("random_bernoulli_fp16_runtime_shape", "random_bernoulli", shape=R(2, dtype="int32"), prob=np.float16(0.5), seed=np.int32(1))
case("random_categorical", "random_categorical", x=R(2, 5))
case("random_categorical_probs_size", "random_categorical", x=R(3, 2, 4, dtype="fp16"), mode="probs", size=np.int32(6), seed=np.int32(9))
case("random_categorical_symbolic", "random_categorical", x=R("B", 10), size=np.int32(3))


# ================================================================= recording
def dtype_name(t):
    name = types.builtin_to_string(t)
    return "str" if name == "string" else name


def dims(shape):
    return [str(d) if is_symbolic(d) else int(d) for d in shape]


def scalar(x, dtype):
    if is_symbolic(x):
        return str(x)
    if dtype == "str":
        return str(x)
    if dtype == "bool":
        return bool(x)
    if dtype.startswith(("int", "uint")):
        return int(x)
    f = float({"fp16": np.float16, "fp32": np.float32}.get(dtype, np.float64)(x))
    if not np.isfinite(f):
        raise ValueError(f"non-finite value {f}")
    return f  # exactly the fp16 / fp32 value


def values(val, dtype):
    if isinstance(val, (np.ndarray, list, tuple)):
        flat = list(np.asarray(val, dtype=object).reshape(-1))
    else:
        flat = [val]
    return [scalar(x, dtype) for x in flat]


# ---------------------------------------------------------------- issue 23: classify and lists
case("classify_str", "classify", probabilities=R(1, 3), classes=Classes("cat", "dog", "bird"))
case("classify_int64", "classify", probabilities=R(4), classes=Classes(np.int64(7), np.int64(3), np.int64(11), np.int64(5)))
case("classify_symbolic", "classify", probabilities=R("B", 3), classes=Classes("a", "b", "c"))
error("classify_count_mismatch", "classify", probabilities=R(1, 4), classes=Classes("a", "b"))
error("classify_fp16", "classify", probabilities=R(1, 2, dtype="fp16"), classes=Classes("a", "b"))
case("make_list_default", "make_list", elem_shape=[np.int32(2), np.int32(3)])
case("make_list_fp16_fixed", "make_list", init_length=np.int32(4), dynamic_length=False, elem_shape=[np.int32(1), np.int32(5)],
     dtype="fp16")
case("make_list_symbolic_int32", "make_list", init_length=np.int32(0), elem_shape=["S", np.int32(4)], dtype="int32")
error("make_list_bad_dtype", "make_list", elem_shape=[np.int32(2)], dtype="complex")
LIST_14 = dict(init_length=np.int32(3), dynamic_length=False, elem_shape=[1, 4], dtype="fp32")
case("list_read", "list_read", ls=L(**LIST_14), index=np.int32(1))
case("list_read_runtime_index", "list_read", ls=L(**LIST_14), index=R(dtype="int32"))
case("list_write", "list_write", ls=L(**LIST_14), index=np.int32(0), value=R(1, 4))
error("list_write_wrong_shape", "list_write", ls=L(**LIST_14), index=np.int32(0), value=R(2, 4))
case("list_gather", "list_gather", ls=L(**LIST_14), indices=i32(2, 0))
case("list_gather_runtime", "list_gather", ls=L(**LIST_14), indices=R("K", dtype="int32"))
case("list_scatter", "list_scatter", ls=L(**LIST_14), indices=i32(0, 2), value=R(2, 1, 4))
error("list_scatter_count_mismatch", "list_scatter", ls=L(**LIST_14), indices=i32(0, 2), value=R(3, 1, 4))
case("list_length", "list_length", ls=L(**LIST_14))
case("list_length_dynamic", "list_length", ls=L(init_length=np.int32(2), elem_shape=[3], dtype="int32"))


def describe_var(var, with_value):
    t = var.sym_type
    if types.is_list(t):
        # Issue 23: a list by its elements' type, its length and, for a
        # constant list (classify's classes), its elements.
        elem = t.T[0]
        out = {"dtype": dtype_name(elem.get_primitive()) if types.is_tensor(elem) else dtype_name(elem),
               "shape": dims(elem.get_shape()) if types.is_tensor(elem) else [],
               "list": {"length": dims([t.T[1]])[0] if t.T[1] is not None else None}}
        if with_value and var.val is not None:
            out["value"] = [v.item() if hasattr(v, "item") else v for v in var.val]
        return out
    if types.is_dict(t):
        return {"dtype": dtype_name(t.T[1]), "shape": [], "dict": dtype_name(t.T[0])}
    if types.is_tensor(t):
        dtype, shape = dtype_name(t.get_primitive()), dims(t.get_shape())
    else:
        dtype, shape = dtype_name(t), []
    out = {"dtype": dtype, "shape": shape}
    if with_value:
        v = var.val
        if v is None and var.sym_val is not None and dtype.startswith(("int", "uint")):
            # A partially known integer value (shape arithmetic): kept when
            # some element is known.
            flat = np.asarray(var.sym_val, dtype=object).reshape(-1)
            if any(not is_symbolic(e) for e in flat):
                v = var.sym_val
        if v is not None:
            n = int(np.prod([d for d in shape if isinstance(d, int)])) if shape else 1
            if all(isinstance(d, int) for d in shape) and n <= MAX_VALUE:
                try:
                    vals = values(v, dtype)
                except ValueError:
                    vals = None
                if vals is not None:
                    if len(vals) != n:
                        raise AssertionError(f"value of {len(vals)} elements for shape {shape}")
                    out["value"] = vals
    return out


SYMBOLS = {}  # coremltools allows one Symbol per name: shared by the cases


def make_symbol(name):
    if name not in SYMBOLS:
        SYMBOLS[name] = get_new_symbol(name)
    return SYMBOLS[name]


def run(name, op, inputs):
    specs = {}  # placeholder name -> Placeholder

    def spec_of(r, key):
        shape = [make_symbol(d) if isinstance(d, str) else d for d in r.shape]
        return mb.placeholder(shape=shape, dtype=types.string_to_builtin(r.dtype),
                              allow_rank0_input=True, name=key)

    for k, v in inputs.items():
        if k in TUPLE_PARAMS:
            for i, item in enumerate(v):
                if isinstance(item, R):
                    specs[f"{k}_{i}"] = spec_of(item, f"{k}_{i}")
        elif isinstance(v, R):
            specs[k] = spec_of(v, k)
    record = {}
    outputs = None
    err = None
    with Function(specs, ct.target.iOS18) as func:
        # The constants as coremltools types them (built apart from the op,
        # so that a rejected op still has its inputs described).
        made = {}  # L inputs: the lists made in the function
        for k, v in inputs.items():
            if isinstance(v, L):
                made[k] = mb.make_list(**v.kwargs)
            elif isinstance(v, Classes):
                made[k] = mb.const(val=mil_list(v.values))
        for k, v in inputs.items():
            if k in made:
                record[k] = describe_var(made[k], True)
            elif k in TUPLE_PARAMS:
                items = []
                for i, item in enumerate(v):
                    if isinstance(item, R):
                        items.append(describe_var(func.inputs[f"{k}_{i}"], False))
                    else:
                        items.append(describe_var(mb.const(val=item), True))
                record[k] = items
            elif isinstance(v, R):
                record[k] = describe_var(func.inputs[k], False)
            else:
                record[k] = describe_var(mb.const(val=v), True)
        kw = {}
        for k, v in inputs.items():
            if k in made:
                kw[k] = made[k]
            elif k in TUPLE_PARAMS:
                kw[k] = [func.inputs[f"{k}_{i}"] if isinstance(item, R) else item for i, item in enumerate(v)]
            elif isinstance(v, R):
                kw[k] = func.inputs[k]
            else:
                kw[k] = v
        try:
            result = getattr(mb, op)(**kw)
        except Exception as e:  # coremltools raises many kinds
            lines = str(e).strip().splitlines()
            err = lines[0] if lines else type(e).__name__
        else:
            first = result[0] if isinstance(result, (list, tuple)) else result
            built = first.op
            assert built.op_type == op, (built.op_type, op)
            # The recorded constant inputs are what the op saw.
            for k in inputs:
                seen = built.inputs[k]
                if isinstance(seen, (list, tuple)):
                    seen = [describe_var(s, False) for s in seen]
                    mine = [{kk: vv for kk, vv in d.items() if kk != "value"} for d in record[k]]
                else:
                    seen = describe_var(seen, False)
                    mine = {kk: vv for kk, vv in record[k].items() if kk != "value"}
                if seen != mine:
                    raise AssertionError(f"{name}: input {k} recorded {mine}, the op saw {seen}")
            outputs = [describe_var(o, True) for o in built.outputs]
            func.set_outputs(list(built.outputs))
    c = {"name": name, "op": op, "inputs": record}
    if err is not None:
        c["error"] = err
    else:
        c["outputs"] = outputs
    return c


def main():
    if ct.__version__ != "9.0":
        sys.exit(f"coremltools {ct.__version__}: the goldens are for coremltools 9.0")
    names = set()
    cases, problems = [], []
    for name, op, inputs, expect_error in CASES:
        if name in names:
            problems.append(f"{name}: duplicate case name")
        names.add(name)
        try:
            c = run(name, op, inputs)
        except Exception as e:
            problems.append(f"{name}: the script failed: {type(e).__name__}: {e}")
            continue
        if expect_error and "error" not in c:
            problems.append(f"{name}: expected coremltools to reject it, it gave {c['outputs']}")
        elif not expect_error and "error" in c:
            problems.append(f"{name}: coremltools rejected it: {c['error']}")
        cases.append(c)
    covered = {c["op"] for c in cases}
    missing = [op for op in OPS if op not in covered]
    extra = sorted(covered - set(OPS))
    succeeding = {c["op"] for c in cases if "error" not in c}
    for op in OPS:
        if op in covered and op not in succeeding:
            problems.append(f"op {op} has only error cases")
    for op in missing:
        problems.append(f"op {op} has no case")
    for op in extra:
        problems.append(f"op {op} is not in the op list")
    if problems:
        print("\n".join(problems), file=sys.stderr)
        sys.exit(1)
    doc = {"generator": "scripts/golden-types.py", "coremltools": ct.__version__, "cases": cases}
    sys.stdout.write(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    print(f"{len(cases)} cases, {sum('error' in c for c in cases)} of them errors, "
          f"{len(covered)} ops", file=sys.stderr)


if __name__ == "__main__":
    main()
