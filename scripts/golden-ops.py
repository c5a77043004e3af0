"""Golden values for the reference backend's op tests
(src/runtime/reference/ops/tests.rs), from coremltools' own op definitions: each op is built with constant
inputs under the MIL builder, whose value inference computes the result
(numpy); ops that have none (conv, the pools, the resizes, ...) are
computed by torch or numpy, each case saying so.

Prints one `check(...)` line per case; they form the body of
`ops_match_coremltools` in tests.rs:

    python scripts/golden-ops.py 2>/dev/null | sed 's/check("/check(failures, "/'

With `--group vq`, the cases of the quantization, sampling and detection
ops instead (the body of `vision_quant_ops_match` in ops/vq_tests.rs).
"""
import numpy as np, torch, warnings
warnings.filterwarnings("ignore")
import coremltools as ct
from coremltools.converters.mil import Builder as mb

rng = np.random.default_rng(42)
def rnd(*shape, lo=-2.0, hi=2.0):
    return rng.uniform(lo, hi, size=shape).astype(np.float32)
def rint(*shape, lo=-5, hi=6):
    return rng.integers(lo, hi, size=shape).astype(np.int32)

cases = []
def case(name, op, inputs, outputs=1, compute=None):
    cases.append((name, op, inputs, outputs, compute))

# arithmetic with broadcasting
a, b = rnd(2, 3, 4), rnd(3, 1)
for op in ["add", "sub", "mul", "real_div", "maximum", "minimum", "floor_div", "mod"]:
    case(f"{op}_float", op, dict(x=a, y=b))
ia, ib = rint(2, 3), np.array([3, -2, 4], np.int32)
for op in ["add", "sub", "mul", "floor_div", "mod", "maximum", "minimum"]:
    case(f"{op}_int", op, dict(x=ia, y=ib))
case("pow", "pow", dict(x=rnd(2, 3, lo=0.1, hi=3.0), y=rnd(3, lo=-2, hi=2)))
for op in ["equal", "not_equal", "less", "less_equal", "greater", "greater_equal"]:
    case(f"{op}", op, dict(x=np.array([[1, 2, 3], [3, 2, 1]], np.float32), y=np.array([2, 2, 2], np.float32)))
bx, by = np.array([True, False, True, False]), np.array([True, True, False, False])
for op in ["logical_and", "logical_or", "logical_xor"]:
    case(op, op, dict(x=bx, y=by))
case("logical_not", "logical_not", dict(x=bx))

# unary and activations
u = rnd(3, 4, lo=-3, hi=3)
pos = rnd(3, 4, lo=0.05, hi=4)
for op in ["relu", "sigmoid", "tanh", "exp", "abs", "square", "erf", "silu", "softplus", "softsign", "relu6", "sign", "floor", "ceil", "sin", "cos", "atan"]:
    x = u * (3 if op == "relu6" else 1)
    # silu has no value inference in coremltools: its definition, x * sigmoid(x).
    case(op, op, dict(x=x), compute=(lambda x=x: x / (1 + np.exp(-x))) if op == "silu" else None)
case("round", "round", dict(x=np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 0.4, -0.6], np.float32)))
for op in ["sqrt", "exp2"]:
    case(op, op, dict(x=pos))
case("rsqrt", "rsqrt", dict(x=pos, epsilon=np.float32(1e-3)))
case("log", "log", dict(x=pos))
case("inverse", "inverse", dict(x=pos, epsilon=np.float32(1e-4)))
for mode in ["EXACT", "TANH_APPROXIMATION", "SIGMOID_APPROXIMATION"]:
    case(f"gelu_{mode.lower()}", "gelu", dict(x=u, mode=mode))
case("leaky_relu", "leaky_relu", dict(x=u, alpha=np.float32(0.2)))
case("elu", "elu", dict(x=u, alpha=np.float32(0.7)))
case("clamped_relu", "clamped_relu", dict(x=u, alpha=np.float32(0.1), beta=np.float32(1.5)))
case("clip", "clip", dict(x=u, alpha=np.float32(-1.0), beta=np.float32(0.5)))

# softmax, layer_norm, reductions
s = rnd(2, 3, 4, lo=-5, hi=5)
case("softmax_last", "softmax", dict(x=s))
case("softmax_axis1", "softmax", dict(x=s, axis=np.int32(1)))
case("layer_norm_last", "layer_norm", dict(x=s, axes=np.array([-1], np.int32), gamma=rnd(4), beta=rnd(4), epsilon=np.float32(1e-5)))
case("layer_norm_two_axes", "layer_norm", dict(x=s, axes=np.array([1, 2], np.int32), epsilon=np.float32(1e-3)))
for op in ["reduce_sum", "reduce_mean", "reduce_max", "reduce_min", "reduce_prod", "reduce_l2_norm", "reduce_l1_norm", "reduce_log_sum_exp", "reduce_sum_square"]:
    case(f"{op}_axes", op, dict(x=s, axes=np.array([0, -1], np.int32), keep_dims=True))
    case(f"{op}_all", op, dict(x=s * 0.5))
case("reduce_log_sum", "reduce_log_sum", dict(x=np.abs(s) + 0.1, axes=np.array([1], np.int32)))
case("reduce_sum_int", "reduce_sum", dict(x=rint(3, 4), axes=np.array([1], np.int32)))
case("reduce_max_int", "reduce_max", dict(x=rint(3, 4), axes=np.array([0], np.int32), keep_dims=True))
case("reduce_argmax", "reduce_argmax", dict(x=s, axis=np.int32(1)))
case("reduce_argmin_keep", "reduce_argmin", dict(x=s, axis=np.int32(-1), keep_dims=True))

# matmul and attention
case("matmul_2d", "matmul", dict(x=rnd(2, 3), y=rnd(3, 4)))
case("matmul_transpose", "matmul", dict(x=rnd(3, 2), y=rnd(4, 3), transpose_x=True, transpose_y=True))
case("matmul_batched", "matmul", dict(x=rnd(2, 1, 2, 3), y=rnd(3, 3, 2)))
case("matmul_vector", "matmul", dict(x=rnd(3), y=rnd(2, 3, 4)))
case("linear", "linear", dict(x=rnd(2, 3, 5), weight=rnd(4, 5), bias=rnd(4)))
case("attention", "scaled_dot_product_attention", dict(query=rnd(1, 2, 3, 4), key=rnd(1, 2, 5, 4), value=rnd(1, 2, 5, 6)))
case("attention_bool_mask", "scaled_dot_product_attention", dict(query=rnd(2, 3, 4), key=rnd(2, 5, 4), value=rnd(2, 5, 2), attn_mask=rng.integers(0, 2, size=(3, 5)).astype(bool) | np.eye(3, 5, dtype=bool)))
case("attention_float_mask", "scaled_dot_product_attention", dict(query=rnd(2, 3, 4), key=rnd(2, 5, 4), value=rnd(2, 5, 2), attn_mask=rnd(3, 5)))

# shapes
t = rnd(2, 3, 4)
case("reshape", "reshape", dict(x=t, shape=np.array([0, -1, 2], np.int32)))
case("transpose", "transpose", dict(x=t, perm=np.array([2, 0, 1], np.int32)))
case("expand_dims", "expand_dims", dict(x=t, axes=np.array([0, -1], np.int32)))
case("squeeze", "squeeze", dict(x=rnd(1, 3, 1, 2), axes=np.array([0, -2], np.int32)))
case("squeeze_all", "squeeze", dict(x=rnd(1, 3, 1, 2)))
case("concat", "concat", dict(values=(t, rnd(2, 3, 1)), axis=np.int32(-1)))
ia_, ib_ = rnd(2, 2), rnd(2, 2)
# coremltools' value inference ignores `interleave`; its docstring defines it:
# output[0::2] = values[0], output[1::2] = values[1].
case("concat_interleave", "concat", dict(values=(ia_, ib_), axis=np.int32(0), interleave=True),
     compute=lambda: np.stack([ia_, ib_], axis=1).reshape(4, 2))
case("split_even", "split", dict(x=t, num_splits=np.int32(2), axis=np.int32(2)), outputs=2)
case("split_sizes", "split", dict(x=t, split_sizes=np.array([1, 2], np.int32), axis=np.int32(1)), outputs=2)
case("stack", "stack", dict(values=(rnd(2, 3), rnd(2, 3)), axis=np.int32(1)))
x6 = np.arange(2 * 6 * 5, dtype=np.float32).reshape(2, 6, 5)
case("slice_by_index", "slice_by_index", dict(x=x6, begin=np.array([0, 5, 1], np.int32), end=np.array([2, 0, -1], np.int32), stride=np.array([1, -2, 2], np.int32)))
case("slice_by_index_masks", "slice_by_index", dict(x=x6, begin=np.array([1, 2, 0], np.int32), end=np.array([0, 4, 3], np.int32), begin_mask=np.array([False, False, True]), end_mask=np.array([True, False, False]), squeeze_mask=np.array([True, False, False])))
case("slice_by_size", "slice_by_size", dict(x=x6, begin=np.array([1, 2, -3], np.int32), size=np.array([-1, 3, 2], np.int32)))
case("slice_update", "slice_update", dict(x=x6, update=-np.ones((2, 3, 2), np.float32), begin=np.array([0, 5, 1], np.int32), end=np.array([2, 0, -1], np.int32), stride=np.array([1, -2, 2], np.int32)))
case("slice_update_squeeze", "slice_update", dict(x=x6, update=-np.ones((6,), np.float32), begin=np.array([1, 0, 2], np.int32), end=np.array([2, 6, 3], np.int32), squeeze_mask=np.array([True, False, True])))
case("tile", "tile", dict(x=rnd(2, 1, 3), reps=np.array([1, 3, 2], np.int32)))
case("gather_axis1", "gather", dict(x=t, indices=np.array([[2, 0], [-1, 1]], np.int32), axis=np.int32(1)))
case("gather_batch_dims", "gather", dict(x=t, indices=np.array([[3, 0], [1, 2]], np.int32), axis=np.int32(2), batch_dims=np.int32(1)))
case("gather_along_axis", "gather_along_axis", dict(x=t, indices=np.array([[[0, 2, 1, 0]], [[2, 2, 0, 1]]], np.int32), axis=np.int32(1)))
case("select", "select", dict(cond=np.array([[True], [False]]), a=rnd(2, 3), b=rnd(3)))
case("band_part", "band_part", dict(x=rnd(2, 4, 4), lower=np.int32(1), upper=np.int32(0)))
case("fill_like", "fill_like", dict(ref_tensor=t, value=np.float32(2.5)))
case("fill", "fill", dict(shape=np.array([2, 3], np.int32), value=np.float32(-1.0)))
case("shape", "shape", dict(x=t))
case("range_1d", "range_1d", dict(end=np.float32(2.0), start=np.float32(-1.0), step=np.float32(0.7)))
case("range_1d_int", "range_1d", dict(end=np.int32(-7), start=np.int32(3), step=np.int32(-3)))
case("cast_int32", "cast", dict(x=np.array([-1.7, 2.5, 300.0, -0.2], np.float32), dtype="int32"))
case("cast_fp16", "cast", dict(x=np.array([0.1, 1 / 3, 65504.0, 1e-5], np.float32), dtype="fp16"))

def torch_conv(x, w, b, stride, padding, dilation, groups):
    return torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b), stride=stride, padding=padding, dilation=dilation, groups=groups).numpy()
cx, cw, cb = rnd(1, 4, 7, 6), rnd(6, 2, 3, 3), rnd(6)
case("conv_custom", "conv", dict(x=cx, weight=cw, bias=cb, strides=np.array([2, 1], np.int32), pad_type="custom", pad=np.array([1, 1, 0, 2], np.int32), dilations=np.array([1, 2], np.int32), groups=np.int32(2)),
     compute=lambda: torch.nn.functional.conv2d(torch.nn.functional.pad(torch.from_numpy(cx), (0, 2, 1, 1)), torch.from_numpy(cw), torch.from_numpy(cb), stride=(2, 1), dilation=(1, 2), groups=2).numpy())
sx, sw = rnd(1, 2, 5, 5), rnd(3, 2, 2, 3)
def same(x, w, stride, lower):
    # total padding s*ceil(i/s) - i + k - s, split evenly (extra after, or before for same_lower)
    pads = []
    for i, k, s in zip(x.shape[2:], w.shape[2:], stride):
        total = max(0, s * -(-i // s) - i + k - s)
        small = total // 2
        pads.append((total - small, small) if lower else (small, total - small))
    xp = torch.nn.functional.pad(torch.from_numpy(x), (pads[1][0], pads[1][1], pads[0][0], pads[0][1]))
    return torch.nn.functional.conv2d(xp, torch.from_numpy(w), stride=stride).numpy()
case("conv_same", "conv", dict(x=sx, weight=sw, strides=np.array([2, 2], np.int32), pad_type="same"), compute=lambda: same(sx, sw, (2, 2), False))
case("conv_same_lower", "conv", dict(x=sx, weight=sw, pad_type="same_lower"), compute=lambda: same(sx, sw, (1, 1), True))
c1x, c1w = rnd(2, 3, 9), rnd(4, 3, 3)
case("conv_1d_valid", "conv", dict(x=c1x, weight=c1w, strides=np.array([2], np.int32)), compute=lambda: torch.nn.functional.conv1d(torch.from_numpy(c1x), torch.from_numpy(c1w), stride=2).numpy())

# ops added for torchvision, transformers and RNN conversions; torch
# computes those coremltools has no value inference for.
F = torch.nn.functional
T = torch.from_numpy
px = rnd(1, 2, 5, 6)
case("max_pool_ceil", "max_pool", dict(x=px, kernel_sizes=np.array([3, 2], np.int32), strides=np.array([2, 2], np.int32), pad_type="custom", pad=np.array([1, 1, 0, 0], np.int32), ceil_mode=True),
     compute=lambda: F.max_pool2d(T(px), (3, 2), (2, 2), padding=(1, 0), ceil_mode=True).numpy())
case("max_pool_same", "max_pool", dict(x=px, kernel_sizes=np.array([2, 2], np.int32), strides=np.array([2, 2], np.int32), pad_type="same"),
     compute=lambda: F.max_pool2d(F.pad(T(px), (0, 0, 0, 1), value=-np.inf), 2, 2).numpy())
case("avg_pool_include_pad", "avg_pool", dict(x=px, kernel_sizes=np.array([3, 3], np.int32), strides=np.array([2, 2], np.int32), pad_type="custom", pad=np.array([1, 1, 1, 1], np.int32), exclude_padding_from_average=False, ceil_mode=True),
     compute=lambda: F.avg_pool2d(T(px), 3, 2, padding=1, ceil_mode=True, count_include_pad=True).numpy())
case("avg_pool_exclude_pad", "avg_pool", dict(x=px, kernel_sizes=np.array([3, 3], np.int32), strides=np.array([1, 2], np.int32), pad_type="custom", pad=np.array([1, 1, 1, 1], np.int32), exclude_padding_from_average=True),
     compute=lambda: F.avg_pool2d(T(px), 3, (1, 2), padding=1, count_include_pad=False).numpy())
p1 = rnd(2, 3, 7)
case("l2_pool_1d", "l2_pool", dict(x=p1, kernel_sizes=np.array([2], np.int32), strides=np.array([2], np.int32), pad_type="valid"),
     compute=lambda: F.lp_pool1d(T(p1), 2, 2, 2).numpy())
tx, tw, tb = rnd(1, 4, 3, 4), rnd(4, 3, 3, 2), rnd(6)
case("conv_transpose_custom", "conv_transpose", dict(x=tx, weight=tw, bias=tb, strides=np.array([2, 3], np.int32), pad_type="custom", pad=np.array([1, 1, 0, 1], np.int32), dilations=np.array([1, 2], np.int32), groups=np.int32(2)),
     compute=lambda: F.conv_transpose2d(T(tx), T(tw), T(tb), stride=(2, 3), dilation=(1, 2), groups=2)[:, :, 1:-1, 0:-1].numpy())
t1x, t1w = rnd(2, 3, 5), rnd(3, 2, 4)
case("conv_transpose_1d", "conv_transpose", dict(x=t1x, weight=t1w, strides=np.array([2], np.int32)),
     compute=lambda: F.conv_transpose1d(T(t1x), T(t1w), stride=2).numpy())
nx = rnd(2, 3, 4, 5)
bm, bv, bg, bb = rnd(3), rnd(3, lo=0.1, hi=2), rnd(3), rnd(3)
case("batch_norm", "batch_norm", dict(x=nx, mean=bm, variance=bv, gamma=bg, beta=bb, epsilon=np.float32(1e-3)),
     compute=lambda: F.batch_norm(T(nx), T(bm), T(bv), T(bg), T(bb), eps=1e-3).numpy())
bn1 = rnd(4, 3, 2)
case("batch_norm_1d", "batch_norm", dict(x=bn1, mean=bm, variance=bv),
     compute=lambda: F.batch_norm(T(bn1), T(bm), T(bv), eps=1e-5).numpy())
case("instance_norm", "instance_norm", dict(x=nx, gamma=bg, beta=bb, epsilon=np.float32(1e-5)),
     compute=lambda: F.instance_norm(T(nx), weight=T(bg), bias=T(bb), eps=1e-5).numpy())
case("l2_norm", "l2_norm", dict(x=nx, epsilon=np.float32(1e-6)))
case("local_response_norm", "local_response_norm", dict(x=nx, size=np.int32(3), alpha=np.float32(1e-2), beta=np.float32(0.75), k=np.float32(1.5)),
     compute=lambda: F.local_response_norm(T(nx), 3, alpha=1e-2, beta=0.75, k=1.5).numpy())
case("threshold", "threshold", dict(x=u, alpha=np.float32(0.3)))
cx5 = rnd(1, 2, 5, 6)
case("crop", "crop", dict(x=cx5, crop_height=np.array([1, 2], np.int32), crop_width=np.array([0, 3], np.int32)),
     compute=lambda: cx5[:, :, 1:3, 0:3])
case("non_zero", "non_zero", dict(x=np.array([[0, 1.5, 0], [-2, 0, 3]], np.float32)))
case("thresholded_relu", "thresholded_relu", dict(x=u, alpha=np.float32(0.5)))
case("sigmoid_hard", "sigmoid_hard", dict(x=u, alpha=np.float32(1 / 6), beta=np.float32(0.5)))
case("scaled_tanh", "scaled_tanh", dict(x=u, alpha=np.float32(1.5), beta=np.float32(0.7)))
case("linear_activation", "linear_activation", dict(x=u, alpha=np.float32(-0.5), beta=np.float32(0.25)))
case("prelu", "prelu", dict(x=nx, alpha=rnd(3)))
case("softplus_parametric", "softplus_parametric", dict(x=nx, alpha=rnd(3, lo=0.5, hi=2), beta=rnd(3, lo=0.5, hi=2)))
case("pad_constant", "pad", dict(x=rnd(2, 3, 4), pad=np.array([1, 0, 2, 1], np.int32), mode="constant", constant_val=np.float32(-3.0)))
case("pad_reflect", "pad", dict(x=rnd(2, 3, 4), pad=np.array([2, 1, 3, 2], np.int32), mode="reflect"))
case("pad_replicate", "pad", dict(x=rnd(1, 2, 3, 4), pad=np.array([1, 2, 3, 1], np.int32), mode="replicate"))
case("reverse", "reverse", dict(x=t, axes=np.array([0, -1], np.int32)))
rs, rl = rnd(3, 4, 2), np.array([2, 4, 1], np.int32)
def reverse_sequence():
    out = rs.copy()
    for b, n in enumerate(rl):
        out[b, :n] = rs[b, :n][::-1]
    return out
case("reverse_sequence", "reverse_sequence", dict(x=rs, lengths=rl, seq_axis=np.int32(1), batch_axis=np.int32(0)), compute=reverse_sequence)
# No value inference for gather_nd, scatter*, one_hot and the pixel
# rearrangements: numpy indexing and torch compute them.
gi = np.array([[[1, 2], [0, -1]], [[1, 0], [0, 1]]], np.int32)
case("gather_nd", "gather_nd", dict(x=t, indices=gi), compute=lambda: t[gi[..., 0], gi[..., 1]])
gb = np.array([[[2], [0]], [[1], [1]]], np.int32)
case("gather_nd_batch_dims", "gather_nd", dict(x=t, indices=gb, batch_dims=np.int32(1)),
     compute=lambda: np.stack([t[b][gb[b, :, 0]] for b in range(2)]))
sd = rnd(4, 3)
su1, su2 = rnd(3, 3), rnd(4, 2)
def scatter_add():
    out = sd.copy()
    np.add.at(out, np.array([1, 3, 1]), su1)
    return out
def scatter_update_axis1():
    out = sd.copy()
    out[:, [2, 0]] = su2
    return out
case("scatter_add", "scatter", dict(data=sd, indices=np.array([1, 3, 1], np.int32), updates=su1, axis=np.int32(0), mode="add"), compute=scatter_add)
case("scatter_update_axis1", "scatter", dict(data=sd, indices=np.array([2, 0], np.int32), updates=su2, axis=np.int32(1), mode="update"), compute=scatter_update_axis1)
sa_i, sa_u = np.array([[0, 2, 1], [3, 3, 0]], np.int32), rnd(2, 3)
case("scatter_along_axis", "scatter_along_axis", dict(data=sd, indices=sa_i, updates=sa_u, axis=np.int32(0), mode="update"))
# coremltools' value inference ignores `mode` (it always replaces).
def scatter_along_axis_max():
    out = sd.copy()
    np.maximum.at(out, (sa_i, np.arange(3)[None, :].repeat(2, 0)), sa_u)
    return out
case("scatter_along_axis_max", "scatter_along_axis", dict(data=sd, indices=sa_i, updates=sa_u, axis=np.int32(0), mode="max"), compute=scatter_along_axis_max)
su3 = rnd(2, 3)
def scatter_nd_rows():
    out = sd.copy()
    out[[1, 3]] *= su3
    return out
case("scatter_nd", "scatter_nd", dict(data=sd, indices=np.array([[1], [3]], np.int32), updates=su3, mode="mul"), compute=scatter_nd_rows)
sn = rint(3, 4)
def scatter_nd_points():
    out = sn.copy()
    np.add.at(out, (np.array([0, 2, 0]), np.array([1, 3, 1])), np.array([5, 6, 7], np.int32))
    return out
case("scatter_nd_points", "scatter_nd", dict(data=sn, indices=np.array([[0, 1], [2, 3], [0, 1]], np.int32), updates=np.array([5, 6, 7], np.int32), mode="add"), compute=scatter_nd_points)
ks = rnd(2, 3, 5)
case("topk", "topk", dict(x=ks, k=np.int32(2), axis=np.int32(-1)), outputs=2)
case("topk_ascending_axis1", "topk", dict(x=ks, k=np.int32(3), axis=np.int32(1), ascending=True), outputs=2)
case("topk_int", "topk", dict(x=rint(3, 4), k=np.int32(1), axis=np.int32(0)), outputs=2)
case("argsort", "argsort", dict(x=ks, axis=np.int32(1), ascending=True))
case("cumsum", "cumsum", dict(x=ks, axis=np.int32(2)))
# coremltools' value inference fails on `exclusive` (numpy misuse); by
# definition: the sum of the entries after each one.
case("cumsum_exclusive_reverse", "cumsum", dict(x=ks, axis=np.int32(1), exclusive=True, reverse=True),
     compute=lambda: np.flip(np.cumsum(np.flip(ks, 1), 1), 1) - ks)
oh = np.array([[0, 3], [2, -1]], np.int32)
case("one_hot", "one_hot", dict(indices=oh, one_hot_vector_size=np.int32(4), axis=np.int32(1), on_value=np.float32(2.0), off_value=np.float32(-1.0)),
     compute=lambda: np.where(np.arange(4)[None, :, None] == oh[:, None, :], 2.0, -1.0).astype(np.float32))
case("one_hot_int_last", "one_hot", dict(indices=np.array([1, 0, 2], np.int32), one_hot_vector_size=np.int32(3)),
     compute=lambda: np.eye(3, dtype=np.int32)[[1, 0, 2]])
ux = rnd(1, 2, 3, 4)
case("upsample_nearest", "upsample_nearest_neighbor", dict(x=ux, scale_factor_height=np.int32(2), scale_factor_width=np.int32(3)),
     compute=lambda: F.interpolate(T(ux), scale_factor=(2, 3), mode="nearest").numpy())
case("upsample_nearest_fractional", "upsample_nearest_neighbor", dict(x=ux, scale_factor_height=np.float32(1.5), scale_factor_width=np.float32(2.5)),
     compute=lambda: F.interpolate(T(ux), scale_factor=(1.5, 2.5), mode="nearest").numpy())
case("resize_nearest", "resize_nearest_neighbor", dict(x=ux, target_size_height=np.int32(5), target_size_width=np.int32(7)),
     compute=lambda: F.interpolate(T(ux), size=(5, 7), mode="nearest").numpy())
case("upsample_bilinear_align", "upsample_bilinear", dict(x=ux, scale_factor_height=np.int32(2), scale_factor_width=np.int32(2), align_corners=True),
     compute=lambda: F.interpolate(T(ux), scale_factor=2, mode="bilinear", align_corners=True).numpy())
case("upsample_bilinear_half_pixel", "upsample_bilinear", dict(x=ux, scale_factor_height=np.float32(2.0), scale_factor_width=np.float32(3.0), align_corners=False),
     compute=lambda: F.interpolate(T(ux), scale_factor=(2, 3), mode="bilinear", align_corners=False).numpy())
case("resize_bilinear_unaligned", "resize_bilinear", dict(x=ux, target_size_height=np.int32(5), target_size_width=np.int32(7), sampling_mode="UNALIGN_CORNERS"),
     compute=lambda: F.interpolate(T(ux), size=(5, 7), mode="bilinear", align_corners=False).numpy())
case("resize_bilinear_strict", "resize_bilinear", dict(x=ux, target_size_height=np.int32(2), target_size_width=np.int32(7), sampling_mode="STRICT_ALIGN_CORNERS"),
     compute=lambda: F.interpolate(T(ux), size=(2, 7), mode="bilinear", align_corners=True).numpy())
sx8 = rnd(1, 8, 2, 3)
sx4 = rnd(1, 2, 4, 6)
case("pixel_shuffle", "pixel_shuffle", dict(x=sx8, upscale_factor=np.int32(2)), compute=lambda: F.pixel_shuffle(T(sx8), 2).numpy())
case("pixel_unshuffle", "pixel_unshuffle", dict(x=sx4, downscale_factor=np.uint32(2)), compute=lambda: F.pixel_unshuffle(T(sx4), 2).numpy())
# TensorFlow's depth_to_space / space_to_depth (DCR order), as Core ML's.
case("depth_to_space", "depth_to_space", dict(x=sx8, block_size=np.int32(2)),
     compute=lambda: sx8.reshape(1, 2, 2, 2, 2, 3).transpose(0, 3, 4, 1, 5, 2).reshape(1, 2, 4, 6))
case("space_to_depth", "space_to_depth", dict(x=sx4, block_size=np.int32(2)),
     compute=lambda: sx4.reshape(1, 2, 2, 2, 3, 2).transpose(0, 3, 5, 1, 2, 4).reshape(1, 8, 2, 3))

# ---------------------------------------------------------------- issue 23 (opsvq)
# Quantization, sampling grids and detection: printed with `--group vq`
# (the body of `vision_quant_ops_match` in ops/vq_tests.rs), from their own
# seed so that cases added above leave these values alone.
import torchvision
VQ = []
def vcase(name, op, inputs, outputs=1, compute=None):
    VQ.append((name, op, inputs, outputs, compute))
def vq_cases():
    """In a function, so that its names (and the lambdas closing over
    them) leave the module-level ones of the cases above alone."""
    vq = np.random.default_rng(23)
    def vrnd(*shape, lo=-2.0, hi=2.0):
        return vq.uniform(lo, hi, size=shape).astype(np.float32)
    ties = np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 200.0, -200.0, 0.49, -3.51], np.float32)
    vcase("quantize_ties_to_even_saturating", "quantize", dict(input=ties, scale=np.float32(1.0), zero_point=np.int8(0), output_dtype="int8"))
    qx = vrnd(2, 3, 4, lo=-3, hi=3)
    vcase("quantize_int8_per_tensor", "quantize", dict(input=qx, scale=np.float32(0.05), zero_point=np.int8(3), output_dtype="int8"))
    vcase("quantize_uint8_per_axis", "quantize", dict(input=qx, scale=np.array([0.01, 0.02, 0.05], np.float32), zero_point=np.array([128, 100, 0], np.uint8), axis=np.int32(1), output_dtype="uint8"))
    vcase("quantize_no_zero_point_negative_axis", "quantize", dict(input=qx, scale=np.array([0.1, 0.2, 0.3, 0.4], np.float32), axis=np.int32(-1), output_dtype="int8"))
    dq = vq.integers(-128, 128, size=(3, 2, 4)).astype(np.int8)
    dqs, dqz = np.array([0.1, 0.5, 2.0], np.float32), np.array([-3, 0, 7], np.int8)
    vcase("dequantize_int8_per_axis", "dequantize", dict(input=dq, scale=dqs, zero_point=dqz, axis=np.int32(0)),
          compute=lambda: (dq.astype(np.float32) - dqz.astype(np.float32)[:, None, None]) * dqs[:, None, None])
    du = vq.integers(0, 256, size=(2, 5)).astype(np.uint8)
    vcase("dequantize_uint8_per_tensor", "dequantize", dict(input=du, scale=np.float32(0.25), zero_point=np.uint8(128)),
          compute=lambda: (du.astype(np.float32) - 128.0) * np.float32(0.25))
    cqx, cqw = vrnd(1, 4, 6, 6), vq.integers(0, 256, size=(6, 2, 3, 3)).astype(np.uint8)
    cqs, cqb, cqbias = vrnd(6, lo=0.001, hi=0.01), vrnd(6, lo=-1, hi=1), vrnd(6)
    vcase("conv_quantized_linear_per_channel", "conv_quantized", dict(x=cqx, weight=cqw, bias=cqbias, quantization_type="linear", quant_scale=cqs, quant_bias=cqb, strides=np.array([2, 1], np.int32), pad_type="custom", pad=np.array([1, 1, 0, 1], np.int32), groups=np.int32(2)),
          compute=lambda: F.conv2d(F.pad(T(cqx), (0, 1, 1, 1)), T(cqw.astype(np.float32) * cqs[:, None, None, None] + cqb[:, None, None, None]), T(cqbias), stride=(2, 1), groups=2).numpy())
    vcase("conv_quantized_linear_scalar", "conv_quantized", dict(x=cqx, weight=cqw[:, :, :1, :1].repeat(2, 1), quantization_type="linear", quant_scale=np.float32(0.02), quant_bias=np.float32(-2.5)),
          compute=lambda: F.conv2d(T(cqx), T(cqw[:, :, :1, :1].repeat(2, 1).astype(np.float32) * np.float32(0.02) - np.float32(2.5))).numpy())
    rx = vrnd(2, 3, 5, 6)
    rg = vrnd(2, 4, 7, 2, lo=-1.3, hi=1.3)
    for mode, pad, align, torch_pad in [("bilinear", "constant", False, "zeros"), ("bilinear", "constant", True, "zeros"),
                                       ("bilinear", "border", True, "border"), ("bilinear", "reflection", True, "reflection"),
                                       ("bilinear", "symmetric", False, "reflection"), ("nearest", "constant", False, "zeros"),
                                       ("nearest", "border", True, "border")]:
        vcase(f"resample_{mode}_{pad}_{'aligned' if align else 'unaligned'}", "resample",
              dict(x=rx, coordinates=rg, sampling_mode=mode, padding_mode=pad, padding_value=np.float32(0), coordinates_mode="normalized_minus_one_to_one", align_corners=align),
              compute=lambda mode=mode, align=align, torch_pad=torch_pad: F.grid_sample(T(rx), T(rg), mode=mode, padding_mode=torch_pad, align_corners=align).numpy())
    # The other coordinate conventions, as the normalized ones torch takes.
    ru = np.stack([vrnd(2, 4, 7, lo=-0.5, hi=5.5), vrnd(2, 4, 7, lo=-0.5, hi=4.5)], -1).astype(np.float32)
    vcase("resample_unnormalized", "resample", dict(x=rx, coordinates=ru, sampling_mode="bilinear", padding_mode="border", padding_value=np.float32(0), coordinates_mode="unnormalized", align_corners=False),
          compute=lambda: F.grid_sample(T(rx), T(ru / np.array([5.0, 4.0], np.float32) * 2 - 1), padding_mode="border", align_corners=True).numpy())
    rz = vrnd(2, 4, 7, 2, lo=-0.1, hi=1.1)
    vcase("resample_zero_to_one_padding_value", "resample", dict(x=rx, coordinates=rz, sampling_mode="bilinear", padding_mode="constant", padding_value=np.float32(0.0), coordinates_mode="normalized_zero_to_one", align_corners=False),
          compute=lambda: F.grid_sample(T(rx), T(rz * 2 - 1), padding_mode="zeros", align_corners=False).numpy())
    theta2 = vrnd(2, 2, 3, lo=-1.2, hi=1.2)
    for align in [True, False]:
        vcase(f"affine_{'aligned' if align else 'unaligned'}", "affine",
              dict(x=rx, transform_matrix=theta2.reshape(2, 6), output_height=np.int32(4), output_width=np.int32(7), sampling_mode="bilinear", padding_mode="constant", padding_value=np.float32(0), coordinates_mode="normalized_minus_one_to_one", align_corners=align),
              compute=lambda align=align: F.grid_sample(T(rx), F.affine_grid(T(theta2), [2, 3, 4, 7], align_corners=align), align_corners=align).numpy())
    vcase("affine_one_matrix", "affine",
          dict(x=rx, transform_matrix=theta2[:1].reshape(1, 6), output_height=np.int32(3), output_width=np.int32(5), sampling_mode="bilinear", padding_mode="constant", padding_value=np.float32(0), coordinates_mode="normalized_minus_one_to_one", align_corners=True),
          compute=lambda: F.grid_sample(T(rx), F.affine_grid(T(np.repeat(theta2[:1], 2, 0)), [2, 3, 3, 5], align_corners=True), align_corners=True).numpy())
    # crop_resize: OFFSET_CORNERS is torchvision's roi_align with one sample per
    # bin (aligned=False); the other modes the neural-network format's
    # SamplingMode grids over the box, bilinear, pad_value outside (numpy).
    cx = vrnd(2, 3, 8, 10)
    cb = np.array([[1.0, 0.5, 7.5, 6.0], [0.0, 0.0, 9.0, 7.0], [2.2, 3.1, 4.9, 5.3]], np.float32)  # x1, y1, x2, y2
    ci = np.array([1, 0, 1], np.int32)
    vcase("crop_resize_offset_corners_roi_align", "crop_resize",
          dict(x=cx, boxes=cb * 2, box_indices=ci, target_height=np.int32(3), target_width=np.int32(4), spatial_scale=np.float32(0.5), box_coordinate_mode="CORNERS_WIDTH_FIRST", sampling_mode="OFFSET_CORNERS"),
          compute=lambda: torchvision.ops.roi_align(T(cx), T(np.concatenate([ci[:, None].astype(np.float32), cb * 2], 1)), (3, 4), spatial_scale=0.5, sampling_ratio=1, aligned=False).numpy())
    def np_grid(start, end, n, mode):
        ext = end - start
        if mode == "STRICT_ALIGN_CORNERS" or (mode == "ALIGN_CORNERS" and n > 1):
            return np.linspace(start, end, n) if n > 1 else np.array([start])
        if mode == "ALIGN_CORNERS":
            return np.array([start + ext / 2])
        if mode == "DEFAULT":
            return start + np.arange(n) * ((ext + 1) - (ext + 1) / n) / max(n - 1, 1)
        if mode == "OFFSET_CORNERS":
            sp = max(1.0, ext) / n
            return start + sp / 2 + np.arange(n) * sp
        return start + (np.arange(n) + 0.5) * (ext + 1) / n - 0.5
    def np_crop(img, y0, x0, y1, x1, th, tw, mode, pad):
        C, H, W = img.shape
        out = np.zeros((C, th, tw), np.float32)
        for i, y in enumerate(np_grid(y0, y1, th, mode)):
            for j, x in enumerate(np_grid(x0, x1, tw, mode)):
                if not (0 <= y <= H - 1 and 0 <= x <= W - 1):
                    out[:, i, j] = pad
                    continue
                r0, c0 = int(np.floor(y)), int(np.floor(x))
                r1, c1 = min(r0 + 1, H - 1), min(c0 + 1, W - 1)
                fy, fx = y - r0, x - c0
                out[:, i, j] = (img[:, r0, c0] * (1 - fx) + img[:, r0, c1] * fx) * (1 - fy) + (img[:, r1, c0] * (1 - fx) + img[:, r1, c1] * fx) * fy
        return out
    cn = np.array([[0.1, 0.2, 0.9, 0.6], [0.5, 0.5, 0.3, 0.4]], np.float32)  # h_center, w_center, h, w (normalized)
    for mode in ["ALIGN_CORNERS", "STRICT_ALIGN_CORNERS", "DEFAULT", "UNALIGN_CORNERS"]:
        vcase(f"crop_resize_{mode.lower()}_center_normalized", "crop_resize",
              dict(x=cx, boxes=cn, box_indices=np.array([0, 1], np.int32), target_height=np.int32(4), target_width=np.int32(3), normalized_coordinates=True, box_coordinate_mode="CENTER_SIZE_HEIGHT_FIRST", sampling_mode=mode, pad_value=np.float32(-7.0)),
              compute=lambda mode=mode: np.stack([np_crop(cx[k], (b[0] - b[2] / 2) * 7, (b[1] - b[3] / 2) * 9, (b[0] + b[2] / 2) * 7, (b[1] + b[3] / 2) * 9, 4, 3, mode, -7.0) for k, b in zip([0, 1], cn)]))
    roi = np.array([[1, 0.5, 1.0, 6.5, 8.0], [0, 2.0, 2.0, 3.0, 9.5]], np.float32).reshape(2, 1, 5, 1, 1)  # index, h0, w0, h1, w1
    vcase("crop_resize_ios15_roi_with_index", "crop_resize",
          dict(x=cx, roi=roi, target_height=np.int32(2), target_width=np.int32(5), sampling_mode="ALIGN_CORNERS"),
          compute=lambda: np.stack([np_crop(cx[int(r[0])], r[1], r[2], r[3], r[4], 2, 5, "ALIGN_CORNERS", 0.0)[None] for r in roi.reshape(2, 5)]))
    roi4 = roi.reshape(2, 5)[:, 1:].reshape(2, 1, 4, 1, 1).copy()
    vcase("crop_resize_ios15_roi_every_image", "crop_resize",
          dict(x=cx, roi=roi4, target_height=np.int32(2), target_width=np.int32(2)),
          compute=lambda: np.stack([np.stack([np_crop(cx[k], *r, 2, 2, "DEFAULT", 0.0) for k in range(2)]) for r in roi4.reshape(2, 4)]))
    zx = vrnd(1, 2, 3, 4)
    vcase("resize_linear_unaligned", "resize", dict(x=zx, shape=np.array([5, 7], np.int32), resized_dims=np.uint32(2), sampling_mode="UNALIGN_CORNERS"),
          compute=lambda: F.interpolate(T(zx), size=(5, 7), mode="bilinear", align_corners=False).numpy())
    vcase("resize_linear_strict_inherit", "resize", dict(x=zx, shape=np.array([1, 0, 7], np.int32), resized_dims=np.uint32(2), sampling_mode="STRICT_ALIGN_CORNERS"),
          compute=lambda: F.interpolate(T(zx), size=(3, 7), mode="bilinear", align_corners=True).numpy())
    vcase("resize_linear_one_axis", "resize", dict(x=zx[0], shape=np.array([9], np.int32), resized_dims=np.uint32(1), sampling_mode="UNALIGN_CORNERS"),
          compute=lambda: F.interpolate(T(zx[0]), size=9, mode="linear", align_corners=False).numpy())
    vcase("resize_nearest", "resize", dict(x=zx, shape=np.array([5, 7], np.int32), resized_dims=np.uint32(2), interpolation_mode="NEAREST_NEIGHBOR"),
          compute=lambda: F.interpolate(T(zx), size=(5, 7), mode="nearest").numpy())
    zi = vq.integers(-9, 10, size=(2, 3)).astype(np.int32)
    vcase("resize_nearest_int", "resize", dict(x=zi, shape=np.array([4, 5], np.int32), resized_dims=np.uint32(2), interpolation_mode="NEAREST_NEIGHBOR"),
          compute=lambda: F.interpolate(T(zi.astype(np.float32))[None, None], size=(4, 5), mode="nearest").numpy()[0, 0].astype(np.int32))
    # non_maximum_suppression: torchvision's nms (batched_nms per class) on
    # the corners of the centre-size boxes; results padded with 0 and -1.
    def nms_case(n, B, K, max_boxes, iou, per_class, score_threshold=None):
        centers = vrnd(n, B, 2, lo=0, hi=10)
        sizes = vrnd(n, B, 2, lo=1, hi=5)
        boxes = np.concatenate([centers, sizes], -1).astype(np.float32)  # [n, B, 4]
        scores = vrnd(n, B, K, lo=0, hi=1)
        def expected():
            ob = np.zeros((n, max_boxes, 4), np.float32)
            os_ = np.zeros((n, max_boxes, K), np.float32)
            oi = -np.ones((n, max_boxes), np.int32)
            counts = []
            for b in range(n):
                corners = np.concatenate([boxes[b, :, :2] - boxes[b, :, 2:] / 2, boxes[b, :, :2] + boxes[b, :, 2:] / 2], -1)
                best = scores[b].max(-1)
                keep_ids = np.arange(B) if score_threshold is None else np.nonzero(best >= score_threshold)[0]
                if per_class:
                    kept = torchvision.ops.batched_nms(T(corners[keep_ids]), T(best[keep_ids]), T(scores[b].argmax(-1)[keep_ids]), iou)
                else:
                    kept = torchvision.ops.nms(T(corners[keep_ids]), T(best[keep_ids]), iou)
                kept = keep_ids[kept.numpy()][:max_boxes]
                counts.append(len(kept))
                ob[b, :len(kept)] = boxes[b, kept]
                os_[b, :len(kept)] = scores[b, kept]
                oi[b, :len(kept)] = kept
            if score_threshold is not None:
                return [ob, os_, oi, np.array(counts, np.int32)]
            return [ob.transpose(0, 2, 1), os_.transpose(0, 2, 1), oi]
        if score_threshold is None:
            inputs = dict(boxes=boxes.transpose(0, 2, 1).copy(), scores=scores.transpose(0, 2, 1).copy(), iou_threshold=np.float32(iou), max_boxes=np.int32(max_boxes), per_class_suppression=per_class)
        else:
            inputs = dict(boxes=boxes, scores=scores, iou_threshold=np.float32(iou), score_threshold=np.float32(score_threshold), max_boxes=np.int32(max_boxes), per_class_suppression=per_class)
        return inputs, expected
    for name, args in [("nms_ios17", (2, 12, 3, 8, 0.3, False)), ("nms_ios17_per_class", (1, 15, 2, 15, 0.2, True)),
                       ("nms_ios15_score_threshold", (2, 10, 1, 6, 0.4, False, 0.3))]:
        inputs, expected = nms_case(*args)
        vcase(name, "non_maximum_suppression", inputs, outputs=4 if len(args) == 7 else 3, compute=expected)
vq_cases()

# ---- issue 23 (opsmisc): einsum, gru, the batch/space moves, flatten2d,
# reshape_like, sliding_windows. coremltools computes einsum and flatten2d;
# the others have no value inference and come from numpy implementations of
# their definitions (space_to_batch / batch_to_space are TensorFlow's
# SpaceToBatchND / BatchToSpaceND in NCHW, as the TensorFlow frontend that
# emits them maps them). The random ops are tested by distribution in
# src/runtime/reference/ops/random.rs, not here.
case("einsum_rank4", "einsum", dict(values=(rnd(2, 3, 4, 5), rnd(2, 5, 4, 2)), equation="nchw,nwhu->nchu"))
case("einsum_rank4_broadcast", "einsum", dict(values=(rnd(1, 3, 4, 5), rnd(2, 5, 1, 2)), equation="bcij,bjik->bcik"))
case("einsum_rank3", "einsum", dict(values=(rnd(3, 2, 4), rnd(4, 2, 5)), equation="chw,whr->chr"))
case("flatten2d_default", "flatten2d", dict(x=rnd(2, 3, 4)))
case("flatten2d_negative", "flatten2d", dict(x=rint(2, 3, 2), axis=np.int32(-1)))
m_fe = rnd(3)
# coremltools' value inference fails here (np.prod of no dimensions is a float).
case("flatten2d_end", "flatten2d", dict(x=m_fe, axis=np.int32(1)), compute=lambda: m_fe.reshape(3, 1))
m_rl = rnd(2, 3, 4)
case("reshape_like", "reshape_like", dict(x=m_rl, ref_tensors=(rnd(2, 2, 1), rnd(1, 3, 2)), begins=(np.int32(0), np.int32(1)), ends=(np.int32(2), np.int32(0)), end_masks=(False, True)),
     compute=lambda: m_rl.reshape(2, 2, 3, 2))
m_sw = rnd(2, 7, 3)
case("sliding_windows_stride", "sliding_windows", dict(x=m_sw, axis=np.int32(1), size=np.int32(3), stride=np.int32(2)),
     compute=lambda: np.stack([m_sw[:, k * 2:k * 2 + 3] for k in range(3)], axis=1))
m_swi = rint(5, 2)
case("sliding_windows_int_negative_axis", "sliding_windows", dict(x=m_swi, axis=np.int32(-2), size=np.int32(2)),
     compute=lambda: np.stack([m_swi[k:k + 2] for k in range(4)], axis=0))

def space_to_batch_np(x, block, pads):
    n, c, h, w = x.shape
    p = np.pad(x, ((0, 0), (0, 0), tuple(pads[0]), tuple(pads[1])))
    b0, b1 = block
    H, W = p.shape[2] // b0, p.shape[3] // b1
    return p.reshape(n, c, H, b0, W, b1).transpose(3, 5, 0, 1, 2, 4).reshape(b0 * b1 * n, c, H, W)

def batch_to_space_np(x, block, crops):
    nb, c, h, w = x.shape
    b0, b1 = block
    n = nb // (b0 * b1)
    full = x.reshape(b0, b1, n, c, h, w).transpose(2, 3, 4, 0, 5, 1).reshape(n, c, h * b0, w * b1)
    return full[:, :, crops[0][0]:h * b0 - crops[0][1], crops[1][0]:w * b1 - crops[1][1]]

m_sb = rnd(2, 2, 3, 5)
case("space_to_batch", "space_to_batch", dict(x=m_sb, block_shape=np.array([2, 3], np.int32), paddings=np.array([[1, 0], [0, 1]], np.int32)),
     compute=lambda: space_to_batch_np(m_sb, (2, 3), [[1, 0], [0, 1]]))
m_bs = rnd(12, 2, 2, 2)
case("batch_to_space", "batch_to_space", dict(x=m_bs, block_shape=np.array([2, 3], np.int32), crops=np.array([[1, 0], [0, 2]], np.int32)),
     compute=lambda: batch_to_space_np(m_bs, (2, 3), [[1, 0], [0, 2]]))

def sigmoid(v):
    return 1 / (1 + np.exp(-v))

def gru_np(x, h, w_ih, w_hh, bias=None, input_bias=None, direction="forward", output_sequence=False,
           recurrent_activation=sigmoid, activation=np.tanh, reset_after=False):
    """coremltools' gru: gates [r | o | z]; without reset_after the reset
    gate scales h before R_o (its iOS 15 definition), with it the product
    (iOS 18, torch's form: bias is then the recurrent bias)."""
    H = h.shape[1]
    b = np.zeros(3 * H, np.float32) if bias is None else bias
    ib = np.zeros(3 * H, np.float32) if input_bias is None else input_bias
    seq = x if direction == "forward" else x[::-1]
    out = []
    for xt in seq:
        gi = xt @ w_ih.T + ib + (0 if reset_after else b)
        r = recurrent_activation(gi[:, :H] + h @ w_hh[:H].T + (b[:H] if reset_after else 0))
        z = recurrent_activation(gi[:, 2 * H:] + h @ w_hh[2 * H:].T + (b[2 * H:] if reset_after else 0))
        if reset_after:
            o = activation(gi[:, H:2 * H] + r * (h @ w_hh[H:2 * H].T + b[H:2 * H]))
        else:
            o = activation(gi[:, H:2 * H] + (r * h) @ w_hh[H:2 * H].T)
        h = (1 - z) * o + z * h
        out.append(h)
    y = np.stack(out) if output_sequence else h[None]
    return y.astype(np.float32), h.astype(np.float32)

m_gx, m_gh, m_gw, m_gr, m_gb, m_gib = rnd(4, 2, 3), rnd(2, 5), rnd(15, 3, lo=-1, hi=1), rnd(15, 5, lo=-1, hi=1), rnd(15, lo=-0.5, hi=0.5), rnd(15, lo=-0.5, hi=0.5)
case("gru_forward_sequence", "gru", dict(x=m_gx, initial_h=m_gh, weight_ih=m_gw, weight_hh=m_gr, bias=m_gb, output_sequence=True), outputs=2,
     compute=lambda: gru_np(m_gx, m_gh, m_gw, m_gr, m_gb, output_sequence=True))
case("gru_reverse_last", "gru", dict(x=m_gx, initial_h=m_gh, weight_ih=m_gw, weight_hh=m_gr, direction="reverse", recurrent_activation="hard_sigmoid", activation="relu"), outputs=2,
     compute=lambda: gru_np(m_gx, m_gh, m_gw, m_gr, direction="reverse", recurrent_activation=lambda v: np.clip(0.2 * v + 0.5, 0, 1), activation=lambda v: np.maximum(v, 0)))
case("gru_reset_after", "gru", dict(x=m_gx, initial_h=m_gh, weight_ih=m_gw, weight_hh=m_gr, bias=m_gb, input_bias=m_gib, reset_after=True, output_sequence=True), outputs=2,
     compute=lambda: gru_np(m_gx, m_gh, m_gw, m_gr, m_gb, m_gib, output_sequence=True, reset_after=True))

def rust_value(v):
    v = np.asarray(v)
    shape = ", ".join(str(d) for d in v.shape)
    flat = v.ravel()
    if v.dtype == np.bool_:
        return f"b(&[{shape}], &[{', '.join('true' if x else 'false' for x in flat)}])"
    if np.issubdtype(v.dtype, np.integer):
        return f"i(&[{shape}], &[{', '.join(str(int(x)) for x in flat)}])"
    if v.dtype.kind in "US":
        return f's("{v.item()}")'
    # The shortest text that reads back as the same f32.
    return f"f(&[{shape}], &[{', '.join(float32_literal(x) for x in flat)}])"

def float32_literal(x):
    text = np.format_float_positional(np.float32(x), unique=True, trim="0") if abs(x) >= 1e-4 or x == 0 else np.format_float_scientific(np.float32(x), unique=True, trim="0")
    return text if any(c in text for c in ".e") else text + ".0"

import sys
out = []
missing = []  # ops coremltools cannot evaluate: give them a `compute`
for name, op, inputs, outputs, compute in (VQ if "--group" in sys.argv and "vq" in sys.argv else cases):
    if compute is not None:
        results = compute()
        results = results if isinstance(results, list) else [results]
        computed = compute()
        results = list(computed) if isinstance(computed, tuple) else [computed]
    else:
        @mb.program(input_specs=[], opset_version=ct.target.iOS18)
        def prog():
            kw = {k: (list(v) if isinstance(v, tuple) else v) for k, v in inputs.items()}
            r = getattr(mb, op)(**kw)
            return r
        ops = list(prog.functions["main"].operations)
        results = [o.val for o in prog.functions["main"].outputs]
        if any(r is None for r in results):
            missing.append(name)
            continue
    args = []
    for k, v in inputs.items():
        if isinstance(v, tuple):
            for item in v:
                args.append(f'("{k}", {rust_value(item)})')
        else:
            args.append(f'("{k}", {rust_value(v)})')
    expected = ", ".join(rust_value(np.asarray(r)) for r in results)
    out.append(f'    check("{name}", "{op}", vec![{", ".join(args)}], vec![{expected}]);')
assert not missing, f"no value inference for {missing}"
print("\n".join(out))
