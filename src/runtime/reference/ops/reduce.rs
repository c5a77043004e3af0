//! Reductions over axes, `reduce_argmax` / `reduce_argmin`, `softmax`, and
//! the normalizations: `layer_norm`, `batch_norm`, `instance_norm`,
//! `l2_norm`, `local_response_norm`.

use ndarray::{ArcArray, ArrayD, ArrayView1, ArrayViewMut1, Axis, IxDyn};

use super::elementwise::zip_with;
use super::{axis, Args, Reduce};
use crate::runtime::reference::value::{FloatArray, OpResult, Value};
use crate::runtime::reference::{buffers, kernels};

/// Normalized, sorted, distinct axes (`None`: every axis).
fn axes(given: Option<Vec<i64>>, rank: usize) -> OpResult<Vec<usize>> {
    let mut axes = match given {
        None => (0..rank).collect(),
        Some(list) => list
            .into_iter()
            .map(|a| axis(a, rank))
            .collect::<OpResult<Vec<_>>>()?,
    };
    axes.sort_unstable();
    axes.dedup();
    Ok(axes)
}

/// `f` applied to every lane of the elements of `x` over `axes`, in the
/// row-major order of the remaining axes.
fn reduce_lanes<T: Copy, R>(
    x: &ArcArray<T, IxDyn>,
    axes: &[usize],
    f: impl FnMut(ArrayView1<'_, T>) -> R,
) -> OpResult<Vec<R>> {
    let rank = x.ndim();
    let kept: Vec<usize> = (0..rank).filter(|a| !axes.contains(a)).collect();
    let outer: usize = kept.iter().map(|&a| x.shape()[a]).product();
    let inner: usize = axes.iter().map(|&a| x.shape()[a]).product();
    let order: Vec<usize> = kept.iter().chain(axes).copied().collect();
    let permuted = x.view().permuted_axes(IxDyn(&order));
    let standard = permuted.as_standard_layout();
    let rows = standard
        .view()
        .into_shape_with_order((outer, inner))
        .map_err(|e| e.to_string())?;
    Ok(rows.outer_iter().map(f).collect())
}

fn reduced_shape(shape: &[usize], axes: &[usize], keep_dims: bool) -> Vec<usize> {
    shape
        .iter()
        .enumerate()
        .filter_map(|(i, &d)| match (axes.contains(&i), keep_dims) {
            (false, _) => Some(d),
            (true, true) => Some(1),
            (true, false) => None,
        })
        .collect()
}

pub(super) fn reduce(op: Reduce, args: &Args<'_>) -> OpResult<Value> {
    let x = args.required("x")?;
    let rank = x.shape().len();
    let axes = axes(args.opt_i64_vec("axes")?, rank)?;
    let keep_dims = args.opt_bool("keep_dims")?.unwrap_or(false);
    let shape = reduced_shape(&x.shape(), &axes, keep_dims);
    let empty = || format!("cannot take the {} of no elements", op.name());
    if let Value::Int(a) = x {
        // Integer reductions stay integers (numpy, then astype(int32)).
        let lanes: Option<Vec<i32>> = match op {
            Reduce::Sum => Some(reduce_lanes(a, &axes, |l| {
                l.fold(0i32, |s, &v| s.wrapping_add(v))
            })?),
            Reduce::Prod => Some(reduce_lanes(a, &axes, |l| {
                l.fold(1i32, |s, &v| s.wrapping_mul(v))
            })?),
            Reduce::Max => reduce_lanes(a, &axes, |l| l.iter().copied().max())?
                .into_iter()
                .collect(),
            Reduce::Min => reduce_lanes(a, &axes, |l| l.iter().copied().min())?
                .into_iter()
                .collect(),
            Reduce::Mean => reduce_lanes(a, &axes, |l| {
                (!l.is_empty())
                    .then(|| (l.iter().map(|&v| f64::from(v)).sum::<f64>() / l.len() as f64) as i32)
            })?
            .into_iter()
            .collect(),
            _ => None,
        };
        if matches!(
            op,
            Reduce::Sum | Reduce::Prod | Reduce::Max | Reduce::Min | Reduce::Mean
        ) {
            let lanes = lanes.ok_or_else(empty)?;
            return Value::int(shape, lanes);
        }
    }
    let a = x.to_float()?;
    let lanes: Vec<Option<f32>> = match op {
        Reduce::Sum => reduce_lanes(&a, &axes, |l| Some(l.sum()))?,
        Reduce::Mean => reduce_lanes(&a, &axes, |l| {
            (!l.is_empty()).then(|| l.sum() / l.len() as f32)
        })?,
        Reduce::Max => reduce_lanes(&a, &axes, |l| l.iter().copied().reduce(f32::max))?,
        Reduce::Min => reduce_lanes(&a, &axes, |l| l.iter().copied().reduce(f32::min))?,
        Reduce::Prod => reduce_lanes(&a, &axes, |l| Some(l.product()))?,
        Reduce::L1Norm => reduce_lanes(&a, &axes, |l| Some(l.iter().map(|v| v.abs()).sum()))?,
        Reduce::L2Norm => reduce_lanes(&a, &axes, |l| {
            Some(l.iter().map(|v| v * v).sum::<f32>().sqrt())
        })?,
        Reduce::SumSquare => reduce_lanes(&a, &axes, |l| Some(l.iter().map(|v| v * v).sum()))?,
        Reduce::LogSum => reduce_lanes(&a, &axes, |l| Some(l.sum().ln()))?,
        Reduce::LogSumExp => reduce_lanes(&a, &axes, |l| {
            let max = l.iter().copied().reduce(f32::max)?;
            if max.is_infinite() {
                return Some(max);
            }
            Some(max + l.iter().map(|v| (v - max).exp()).sum::<f32>().ln())
        })?,
    };
    let lanes = lanes
        .into_iter()
        .collect::<Option<Vec<f32>>>()
        .ok_or_else(empty)?;
    Value::float(shape, lanes)
}

pub(super) fn arg_reduce(max: bool, args: &Args<'_>) -> OpResult<Value> {
    let x = args.float("x")?;
    let rank = x.ndim();
    let along = axis(args.opt_i64("axis")?.unwrap_or(-1), rank)?;
    let keep_dims = args.opt_bool("keep_dims")?.unwrap_or(false);
    let shape = reduced_shape(x.shape(), &[along], keep_dims);
    let lanes = reduce_lanes(&x, &[along], |lane| {
        let mut best: Option<(usize, f32)> = None;
        for (i, &v) in lane.iter().enumerate() {
            let better = match best {
                None => true,
                // numpy returns the first of equal extremes, and the first NaN.
                Some((_, b)) => !b.is_nan() && (v.is_nan() || if max { v > b } else { v < b }),
            };
            if better {
                best = Some((i, v));
            }
        }
        best.map(|(i, _)| i as i32)
    })?;
    let lanes = lanes
        .into_iter()
        .collect::<Option<Vec<i32>>>()
        .ok_or("cannot take the arg-extreme of no elements")?;
    Value::int(shape, lanes)
}

/// Softmax in place along `axis` (max-subtracted, so large inputs do not
/// overflow).
pub(crate) fn softmax_lanes(array: &mut ArrayD<f32>, axis: usize) {
    let width = array.shape().get(axis).copied().unwrap_or(0);
    let last = axis + 1 == array.ndim();
    if let Some(values) = array.as_slice_mut().filter(|_| last && width > 0) {
        // Contiguous rows: each is computed alone, so splitting the rows
        // over the pool changes no result.
        let parts = if values.len() >= kernels::PARALLEL_ELEMENTS {
            kernels::cores()
        } else {
            1
        };
        let chunk = (values.len() / width).div_ceil(parts).max(1) * width;
        let chunks: Vec<&mut [f32]> = values.chunks_mut(chunk).collect();
        kernels::for_each_in_parallel(chunks, |rows| {
            rows.chunks_exact_mut(width)
                .for_each(|row| softmax_lane(ArrayViewMut1::from(row)));
        });
        return;
    }
    for lane in array.lanes_mut(Axis(axis)) {
        softmax_lane(lane);
    }
}

/// One lane's softmax, in place: shifted by its maximum (when finite),
/// exponentiated, summed in order and divided by the sum.
fn softmax_lane(mut lane: ArrayViewMut1<'_, f32>) {
    let max = lane.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let shift = if max.is_finite() { max } else { 0.0 };
    let mut sum = 0.0;
    for v in lane.iter_mut() {
        *v = (*v - shift).exp();
        sum += *v;
    }
    for v in lane.iter_mut() {
        *v /= sum;
    }
}

pub(super) fn softmax(args: &Args<'_>) -> OpResult<Value> {
    let x = args.float("x")?;
    let along = axis(args.opt_i64("axis")?.unwrap_or(-1), x.ndim())?;
    let mut out = x.into_owned();
    softmax_lanes(&mut out, along);
    Ok(Value::Float(out.into_shared()))
}

/// `x` less its mean, over its standard deviation, along `axes`.
fn normalize(x: &FloatArray, axes: &[usize], epsilon: f32) -> OpResult<FloatArray> {
    let keep = reduced_shape(x.shape(), axes, true);
    let count: usize = axes.iter().map(|&a| x.shape()[a]).product();
    if count == 0 {
        return Err("cannot normalize over no elements".to_string());
    }
    let means = reduce_lanes(x, axes, |l| l.sum() / count as f32)?;
    let means = ArrayD::from_shape_vec(IxDyn(&keep), means)
        .map_err(|e| e.to_string())?
        .into_shared();
    let centered = zip_with(x, &means, |v, m| v - m)?;
    let variances = reduce_lanes(&centered, axes, |l| {
        l.iter().map(|v| v * v).sum::<f32>() / count as f32
    })?;
    let scales = ArrayD::from_shape_vec(
        IxDyn(&keep),
        variances
            .into_iter()
            .map(|v| 1.0 / (v + epsilon).sqrt())
            .collect(),
    )
    .map_err(|e| e.to_string())?
    .into_shared();
    zip_with(&centered, &scales, |v, s| v * s)
}

pub(super) fn layer_norm(args: &Args<'_>) -> OpResult<Value> {
    let x = args.float("x")?;
    let rank = x.ndim();
    let axes = axes(args.opt_i64_vec("axes")?, rank)?;
    let epsilon = args.opt_f32("epsilon")?.unwrap_or(1e-5);
    if let Some(out) = layer_norm_rows(&x, &axes, epsilon, args)? {
        return Ok(Value::Float(out));
    }
    let mut out = normalize(&x, &axes, epsilon)?;
    // gamma and beta have the normalized axes' shape; they broadcast over
    // the others.
    let normalized: Vec<usize> = (0..rank)
        .map(|i| if axes.contains(&i) { x.shape()[i] } else { 1 })
        .collect();
    let expected: Vec<usize> = axes.iter().map(|&a| x.shape()[a]).collect();
    for (name, add) in [("gamma", false), ("beta", true)] {
        if let Some(param) = args.get(name)? {
            let param = param.to_float()?;
            if param.shape() != expected.as_slice() {
                return Err(format!(
                    "{name} has shape {:?}, the normalized axes {expected:?}",
                    param.shape()
                ));
            }
            let param = param
                .into_shape_with_order(IxDyn(&normalized))
                .map_err(|e| e.to_string())?;
            out = if add {
                zip_with(&out, &param, |v, b| v + b)?
            } else {
                zip_with(&out, &param, |v, g| v * g)?
            };
        }
    }
    Ok(Value::Float(out))
}

/// `layer_norm` over the trailing axes of a row-major `x` (a transformer's
/// every layer), a row at a time, the rows split over the kernels' pool:
/// each row's mean, centred values, variance, scale and affine are the
/// operations `normalize` and the broadcasts after it apply, in the same
/// order, so the same bits. None when `x` or the axes are otherwise, or
/// `gamma` or `beta` do not have the normalized shape (the general path
/// reports that).
fn layer_norm_rows(
    x: &FloatArray,
    axes: &[usize],
    epsilon: f32,
    args: &Args<'_>,
) -> OpResult<Option<FloatArray>> {
    let rank = x.ndim();
    let trailing = !axes.is_empty()
        && axes
            .iter()
            .enumerate()
            .all(|(i, &a)| a == rank - axes.len() + i);
    let Some(data) = x.as_slice().filter(|_| trailing) else {
        return Ok(None);
    };
    let count: usize = x.shape()[rank - axes.len()..].iter().product();
    if count == 0 {
        return Ok(None);
    }
    let param = |name: &str| -> OpResult<Option<Option<Vec<f32>>>> {
        match args.get(name)? {
            None => Ok(Some(None)),
            Some(p) => {
                let p = p.to_float()?;
                Ok((p.shape() == &x.shape()[rank - axes.len()..])
                    .then(|| p.iter().copied().collect())
                    .map(Some))
            }
        }
    };
    let (Some(gamma), Some(beta)) = (param("gamma")?, param("beta")?) else {
        return Ok(None);
    };
    let mut out = buffers::zeroed(data.len());
    let row = |input: &[f32], out: &mut [f32]| {
        let mean = ArrayView1::from(input).sum() / count as f32;
        for (o, &v) in out.iter_mut().zip(input) {
            *o = v - mean;
        }
        let variance = out.iter().map(|v| v * v).sum::<f32>() / count as f32;
        let scale = 1.0 / (variance + epsilon).sqrt();
        out.iter_mut().for_each(|o| *o *= scale);
        if let Some(gamma) = &gamma {
            out.iter_mut().zip(gamma).for_each(|(o, g)| *o *= g);
        }
        if let Some(beta) = &beta {
            out.iter_mut().zip(beta).for_each(|(o, b)| *o += b);
        }
    };
    let threads = kernels::cores();
    let rows_per_part = if threads > 1 && data.len() >= kernels::PARALLEL_ELEMENTS {
        (data.len() / count).div_ceil(threads)
    } else {
        data.len() / count
    };
    let parts: Vec<_> = data
        .chunks(rows_per_part.max(1) * count)
        .zip(out.chunks_mut(rows_per_part.max(1) * count))
        .collect();
    kernels::for_each_in_parallel(parts, |(inputs, outs)| {
        for (input, out) in inputs.chunks_exact(count).zip(outs.chunks_exact_mut(count)) {
            row(input, out);
        }
    });
    ArrayD::from_shape_vec(x.raw_dim(), out)
        .map(|a| Some(a.into_shared()))
        .map_err(|e| e.to_string())
}

/// `x` with each channel's values (axis 1 of `[N, C, *D]`) scaled by
/// `gamma[c]` and shifted by `beta[c]`, when given.
fn per_channel_affine(
    x: FloatArray,
    args: &Args<'_>,
    scale: Option<&[f32]>,
    shift: Option<&[f32]>,
) -> OpResult<FloatArray> {
    let channels = x.shape()[1];
    let vector = |name: &str| -> OpResult<Option<Vec<f32>>> {
        let Some(param) = args.get(name)? else {
            return Ok(None);
        };
        let param = param.to_float()?;
        if param.len() != channels || param.ndim() != 1 {
            return Err(format!(
                "{name} has shape {:?}, x {channels} channels",
                param.shape()
            ));
        }
        Ok(Some(param.iter().copied().collect()))
    };
    let gamma = vector("gamma")?;
    let beta = vector("beta")?;
    let mut x = x.into_owned();
    for (c, mut lane) in x.axis_iter_mut(Axis(1)).enumerate() {
        let mut multiply = scale.map_or(1.0, |s| s[c]);
        let mut add = shift.map_or(0.0, |s| s[c]);
        if let Some(g) = &gamma {
            multiply *= g[c];
            add *= g[c];
        }
        if let Some(b) = &beta {
            add += b[c];
        }
        lane.mapv_inplace(|v| v * multiply + add);
    }
    Ok(x.into_shared())
}

/// `batch_norm`: normalizes each channel of `[N, C, *D]` with the given
/// running mean and variance.
pub(super) fn batch_norm(args: &Args<'_>) -> OpResult<Value> {
    let x = args.float("x")?;
    if x.ndim() < 2 {
        return Err(format!("x of shape {:?} has no channel axis", x.shape()));
    }
    let channels = x.shape()[1];
    let mean = args.float("mean")?;
    let variance = args.float("variance")?;
    for (name, param) in [("mean", &mean), ("variance", &variance)] {
        if param.len() != channels || param.ndim() != 1 {
            return Err(format!(
                "{name} has shape {:?}, x {channels} channels",
                param.shape()
            ));
        }
    }
    let epsilon = args.opt_f32("epsilon")?.unwrap_or(1e-5);
    let scale: Vec<f32> = variance
        .iter()
        .map(|v| 1.0 / (v + epsilon).sqrt())
        .collect();
    let shift: Vec<f32> = mean.iter().zip(&scale).map(|(m, s)| -m * s).collect();
    let out = per_channel_affine(x, args, Some(&scale), Some(&shift))?;
    Ok(Value::Float(out))
}

/// `instance_norm`: normalizes each (sample, channel) plane of
/// `[N, C, *D]` by its own mean and variance.
pub(super) fn instance_norm(args: &Args<'_>) -> OpResult<Value> {
    let x = args.float("x")?;
    if x.ndim() < 3 {
        return Err(format!(
            "x of shape {:?} is not [N, C, *D] with a spatial axis",
            x.shape()
        ));
    }
    let epsilon = args.opt_f32("epsilon")?.unwrap_or(1e-5);
    let axes: Vec<usize> = (2..x.ndim()).collect();
    let normalized = normalize(&x, &axes, epsilon)?;
    Ok(Value::Float(per_channel_affine(
        normalized, args, None, None,
    )?))
}

/// `l2_norm`: divides each group of the last three axes (all of them for
/// rank 3) by its L2 norm, `sqrt(sum(x²) + epsilon)`.
pub(super) fn l2_norm(args: &Args<'_>) -> OpResult<Value> {
    let x = args.float("x")?;
    let rank = x.ndim();
    if rank < 3 {
        return Err(format!("x of shape {:?} has rank below 3", x.shape()));
    }
    let epsilon = args.opt_f32("epsilon")?.unwrap_or(1e-6);
    let axes: Vec<usize> = (rank - 3..rank).collect();
    let keep = reduced_shape(x.shape(), &axes, true);
    let norms = reduce_lanes(&x, &axes, |l| {
        1.0 / (l.iter().map(|v| v * v).sum::<f32>() + epsilon).sqrt()
    })?;
    let norms = ArrayD::from_shape_vec(IxDyn(&keep), norms)
        .map_err(|e| e.to_string())?
        .into_shared();
    Ok(Value::Float(zip_with(&x, &norms, |v, n| v * n)?))
}

/// `local_response_norm`: `x / (k + alpha/size · Σ x²)^beta`, the sum over
/// the `size` channels centred on each (torch's and Core ML's window).
pub(super) fn local_response_norm(args: &Args<'_>) -> OpResult<Value> {
    let x = args.float("x")?;
    if x.ndim() < 3 {
        return Err(format!("x of shape {:?} has rank below 3", x.shape()));
    }
    let size = args
        .opt_i64("size")?
        .filter(|&s| s > 0)
        .ok_or("size must be a positive number")? as usize;
    let alpha = args.opt_f32("alpha")?.unwrap_or(1e-4);
    let beta = args.opt_f32("beta")?.unwrap_or(0.75);
    let k = args.opt_f32("k")?.unwrap_or(1.0);
    let channels = x.shape()[1];
    let squares = x.mapv(|v| v * v);
    let mut out = x.to_owned();
    for c in 0..channels {
        let from = c.saturating_sub((size - 1) / 2);
        let to = (c + size / 2 + 1).min(channels);
        let mut sum = squares.index_axis(Axis(1), from).to_owned();
        for other in from + 1..to {
            sum += &squares.index_axis(Axis(1), other);
        }
        let mut lane = out.index_axis_mut(Axis(1), c);
        ndarray::Zip::from(&mut lane)
            .and(&sum)
            .for_each(|v, &s| *v /= (k + alpha / size as f32 * s).powf(beta));
    }
    Ok(Value::Float(out.into_shared()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_norm_by_rows_gives_the_bits_of_the_general_path() {
        use crate::runtime::reference::ops::tests::run_op;
        // 300 rows of 301 (past the split, uneven parts), gamma and beta.
        let (rows, width) = (300, 301);
        let values: Vec<f32> = (0..rows * width)
            .map(|i| (i as f32 * 0.37).sin() * 3.0 + (i % 7) as f32)
            .collect();
        let x = ArrayD::from_shape_vec(IxDyn(&[rows, width]), values).unwrap();
        // The same values in column-major memory: not row-major, so the
        // general path (normalize, then the broadcasts) runs.
        let mut column_major = ArrayD::<f32>::zeros(IxDyn(&[width, rows]));
        column_major.assign(&x.t());
        let strided = column_major.into_shared().reversed_axes();
        assert!(!strided.is_standard_layout());
        assert_eq!(strided, x);
        let gamma: Vec<f32> = (0..width).map(|i| 0.5 + (i % 5) as f32 * 0.25).collect();
        let beta: Vec<f32> = (0..width).map(|i| (i % 3) as f32 - 1.0).collect();
        let run = |x: FloatArray| {
            let out = run_op(
                "layer_norm",
                vec![
                    ("x", Value::Float(x)),
                    ("axes", Value::Int(ArcArray::from_vec(vec![-1]).into_dyn())),
                    (
                        "gamma",
                        Value::Float(ArcArray::from_vec(gamma.clone()).into_dyn()),
                    ),
                    (
                        "beta",
                        Value::Float(ArcArray::from_vec(beta.clone()).into_dyn()),
                    ),
                    (
                        "epsilon",
                        Value::Float(ArcArray::from_elem(IxDyn(&[]), 1e-5)),
                    ),
                ],
                1,
            )
            .unwrap();
            let Value::Float(out) = &out[0] else {
                panic!("layer_norm gave no tensor");
            };
            out.iter().map(|v| v.to_bits()).collect::<Vec<u32>>()
        };
        assert_eq!(run(x.into_shared()), run(strided));
    }

    #[test]
    fn softmax_rows_split_over_the_pool_equal_lane_by_lane_softmax() {
        // 300 × 301 elements (past the split, uneven parts), and one
        // masked row (-inf but one) and one all -inf (NaN, as numpy).
        let mut values: Vec<f32> = (0..300 * 301)
            .map(|i| (i as f32 * 0.11).cos() * 8.0)
            .collect();
        values[301..602]
            .iter_mut()
            .skip(1)
            .for_each(|v| *v = f32::NEG_INFINITY);
        values[602..903]
            .iter_mut()
            .for_each(|v| *v = f32::NEG_INFINITY);
        let array = ArrayD::from_shape_vec(IxDyn(&[300, 301]), values).unwrap();
        let mut split = array.clone();
        softmax_lanes(&mut split, 1);
        // The same along axis 0 of the transpose (column-major, so not
        // split): the lane-by-lane path.
        let mut lanes = array.t().to_owned();
        softmax_lanes(&mut lanes, 0);
        for (i, (a, b)) in split.iter().zip(lanes.t().iter()).enumerate() {
            assert_eq!(a.to_bits(), b.to_bits(), "element {i}");
        }
        assert_eq!(split[[1, 0]], 1.0);
        assert!(split[[2, 0]].is_nan());
        let row_sum: f32 = split.index_axis(Axis(0), 0).sum();
        assert!((row_sum - 1.0).abs() < 1e-5, "{row_sum}");
    }
}
