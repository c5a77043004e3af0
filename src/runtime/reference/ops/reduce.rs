//! Reductions over axes, `reduce_argmax` / `reduce_argmin`, `softmax` and
//! `layer_norm`.

use ndarray::{ArcArray, ArrayD, ArrayView1, Axis, IxDyn};

use super::elementwise::zip_with;
use super::{axis, Args};
use crate::runtime::reference::value::{OpResult, Value};

/// Reductions over a set of axes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reduce {
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
    pub(crate) const ALL: &'static [Reduce] = &[
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
    pub(crate) fn name(self) -> &'static str {
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
    pub(crate) fn from_op(op_type: &str) -> Option<Reduce> {
        Reduce::ALL.iter().copied().find(|r| r.name() == op_type)
    }
}

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
    for mut lane in array.lanes_mut(Axis(axis)) {
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
}

pub(super) fn softmax(args: &Args<'_>) -> OpResult<Value> {
    let x = args.float("x")?;
    let along = axis(args.opt_i64("axis")?.unwrap_or(-1), x.ndim())?;
    let mut out = x.into_owned();
    softmax_lanes(&mut out, along);
    Ok(Value::Float(out.into_shared()))
}

pub(super) fn layer_norm(args: &Args<'_>) -> OpResult<Value> {
    let x = args.float("x")?;
    let rank = x.ndim();
    let axes = axes(args.opt_i64_vec("axes")?, rank)?;
    let epsilon = args.opt_f32("epsilon")?.unwrap_or(1e-5);
    let keep = reduced_shape(x.shape(), &axes, true);
    let count: usize = axes.iter().map(|&a| x.shape()[a]).product();
    if count == 0 {
        return Err("cannot normalize over no elements".to_string());
    }
    let means = reduce_lanes(&x, &axes, |l| l.sum() / count as f32)?;
    let means = ArrayD::from_shape_vec(IxDyn(&keep), means)
        .map_err(|e| e.to_string())?
        .into_shared();
    let centered = zip_with(&x, &means, |v, m| v - m)?;
    let variances = reduce_lanes(&centered, &axes, |l| {
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
    let mut out = zip_with(&centered, &scales, |v, s| v * s)?;
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
