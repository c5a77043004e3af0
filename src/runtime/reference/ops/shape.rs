//! Ops that move elements around: reshapes, transposes, slices (numpy
//! semantics, negative strides included), concatenation, splitting,
//! tiling, gathers, fills, padding, reversal.

use ndarray::{concatenate, stack as nd_stack, ArcArray, ArrayD, ArrayView, Axis, IxDyn, Slice};

use super::{any_tensor, axis, created_count, Args};
use crate::runtime::reference::buffers::Recyclable;
use crate::runtime::reference::value::{OpResult, Value};
use coreml_multifunction_format::mil::shapes::{reshape_target, resolve_slices, AxisSlice};

fn dims(values: &[i64], what: &str) -> OpResult<Vec<usize>> {
    values
        .iter()
        .map(|&v| usize::try_from(v).map_err(|_| format!("{what} {values:?} has a negative entry")))
        .collect()
}

/// `a` with the same elements in row-major order under `shape`.
pub(super) fn reshaped<T: Recyclable>(
    a: &ArcArray<T, IxDyn>,
    shape: &[usize],
) -> OpResult<ArcArray<T, IxDyn>> {
    let count = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
    if count != Some(a.len()) {
        return Err(format!(
            "cannot reshape {} elements of shape {:?} to {shape:?}",
            a.len(),
            a.shape()
        ));
    }
    let standard = if a.is_standard_layout() {
        a.clone()
    } else {
        standard_copy(a)
    };
    standard
        .into_shape_with_order(IxDyn(shape))
        .map_err(|e| e.to_string())
}

/// `a` copied into row-major order. When its last axis is contiguous (a
/// transposed or sliced activation: attention's heads, a split of q, k and
/// v), a row of it at a time, each one copy; ndarray's general copy steps
/// through every element's index, many times slower.
fn standard_copy<T: Recyclable>(a: &ArcArray<T, IxDyn>) -> ArcArray<T, IxDyn> {
    if let Some(last) = a.ndim().checked_sub(1) {
        if a.strides()[last] == 1 && a.shape()[last] > 1 {
            let mut data = T::buffer(a.len());
            for lane in a.lanes(ndarray::Axis(last)) {
                match lane.as_slice() {
                    Some(row) => data.extend_from_slice(row),
                    None => data.extend(lane.iter().copied()),
                }
            }
            if let Ok(copied) = ArcArray::from_shape_vec(a.raw_dim(), data) {
                return copied;
            }
        }
    }
    a.as_standard_layout().into_owned().into_shared()
}

pub(super) fn reshape(args: &Args<'_>) -> OpResult<Value> {
    let x = args.required("x")?;
    let current = x.shape();
    let shape = reshape_target(&current, &args.i64_vec("shape")?)?;
    Ok(any_tensor!(x, a => reshaped(a, &shape)))
}

pub(super) fn transpose(args: &Args<'_>) -> OpResult<Value> {
    let x = args.required("x")?;
    let rank = x.shape().len();
    let perm = args
        .i64_vec("perm")?
        .into_iter()
        .map(|p| axis(p, rank))
        .collect::<OpResult<Vec<usize>>>()?;
    let mut seen = vec![false; rank];
    if perm.len() != rank || perm.iter().any(|&p| std::mem::replace(&mut seen[p], true)) {
        return Err(format!("perm {perm:?} is not a permutation of {rank} axes"));
    }
    Ok(any_tensor!(x, a => OpResult::Ok(a.clone().permuted_axes(IxDyn(&perm)))))
}

pub(super) fn expand_dims(args: &Args<'_>) -> OpResult<Value> {
    let x = args.required("x")?;
    let shape = x.shape();
    let given = args.i64_vec("axes")?;
    let rank = shape.len() + given.len();
    let mut axes = given
        .into_iter()
        .map(|a| axis(a, rank))
        .collect::<OpResult<Vec<usize>>>()?;
    axes.sort_unstable();
    if axes.windows(2).any(|w| w[0] == w[1]) {
        return Err(format!("axes {axes:?} repeat an axis"));
    }
    let mut out = shape.clone();
    for a in axes {
        out.insert(a, 1);
    }
    Ok(any_tensor!(x, a => reshaped(a, &out)))
}

pub(super) fn squeeze(args: &Args<'_>) -> OpResult<Value> {
    let x = args.required("x")?;
    let shape = x.shape();
    let out: Vec<usize> = match args.opt_i64_vec("axes")? {
        None => shape.iter().copied().filter(|&d| d != 1).collect(),
        Some(given) => {
            let axes = given
                .into_iter()
                .map(|a| axis(a, shape.len()))
                .collect::<OpResult<Vec<usize>>>()?;
            // As PyTorch: axes whose size is not 1 stay.
            shape
                .iter()
                .enumerate()
                .filter(|&(i, &d)| !(axes.contains(&i) && d == 1))
                .map(|(_, &d)| d)
                .collect()
        }
    };
    Ok(any_tensor!(x, a => reshaped(a, &out)))
}

/// The values of a tuple parameter, all of the kind of the first.
fn same_kind(values: &[&Value]) -> OpResult<Vec<Value>> {
    let first = values.first().ok_or("takes at least one value")?;
    values
        .iter()
        .map(|v| {
            Ok(match first {
                Value::Float(_) => Value::Float(v.to_float()?),
                Value::Int(_) => Value::Int(v.to_int()?),
                Value::Bool(_) => Value::Bool(v.to_bool()?),
                other => return Err(format!("cannot join {}", other.kind())),
            })
        })
        .collect()
}

macro_rules! arrays_of {
    ($values:expr, $variant:ident) => {
        $values
            .iter()
            .map(|v| match v {
                Value::$variant(a) => Ok(a.clone()),
                other => Err(format!("cannot join {}", other.kind())),
            })
            .collect::<OpResult<Vec<_>>>()?
    };
}

fn concat_arrays<T: Recyclable>(
    arrays: &[ArcArray<T, IxDyn>],
    along: i64,
    interleave: bool,
) -> OpResult<ArcArray<T, IxDyn>> {
    // Scalars concatenate as vectors of one element.
    let arrays: Vec<ArcArray<T, IxDyn>> = arrays
        .iter()
        .map(|a| {
            if a.ndim() == 0 {
                reshaped(a, &[1])
            } else {
                Ok(a.clone())
            }
        })
        .collect::<OpResult<_>>()?;
    let rank = arrays[0].ndim();
    let along = axis(along, rank)?;
    for a in &arrays {
        let compatible = a.ndim() == rank
            && (0..rank).all(|i| i == along || a.shape()[i] == arrays[0].shape()[i]);
        if !compatible || (interleave && a.shape() != arrays[0].shape()) {
            return Err(format!(
                "cannot concatenate shapes {:?} and {:?} along axis {along}",
                arrays[0].shape(),
                a.shape()
            ));
        }
    }
    let views: Vec<ArrayView<'_, T, IxDyn>> = arrays.iter().map(|a| a.view()).collect();
    if !interleave {
        return concatenate(Axis(along), &views)
            .map(ArrayD::into_shared)
            .map_err(|e| e.to_string());
    }
    // Interleaving: stack after the axis, then merge the two.
    let stacked = nd_stack(Axis(along + 1), &views).map_err(|e| e.to_string())?;
    let mut shape = arrays[0].shape().to_vec();
    shape[along] *= arrays.len();
    reshaped(&stacked.into_shared(), &shape)
}

pub(super) fn concat(args: &Args<'_>) -> OpResult<Value> {
    let values = same_kind(&args.list("values")?)?;
    let along = args
        .opt_i64("axis")?
        .ok_or("lacks its required input \"axis\"")?;
    let interleave = args.opt_bool("interleave")?.unwrap_or(false);
    Ok(match &values[0] {
        Value::Float(_) => Value::Float(concat_arrays(
            &arrays_of!(values, Float),
            along,
            interleave,
        )?),
        Value::Int(_) => Value::Int(concat_arrays(&arrays_of!(values, Int), along, interleave)?),
        _ => Value::Bool(concat_arrays(&arrays_of!(values, Bool), along, interleave)?),
    })
}

fn stack_arrays<T: Recyclable>(
    arrays: &[ArcArray<T, IxDyn>],
    along: i64,
) -> OpResult<ArcArray<T, IxDyn>> {
    let rank = arrays[0].ndim();
    let along = axis(along, rank + 1)?;
    if arrays.iter().any(|a| a.shape() != arrays[0].shape()) {
        return Err("stacks tensors of different shapes".to_string());
    }
    let views: Vec<ArrayView<'_, T, IxDyn>> = arrays.iter().map(|a| a.view()).collect();
    nd_stack(Axis(along), &views)
        .map(ArrayD::into_shared)
        .map_err(|e| e.to_string())
}

pub(super) fn stack(args: &Args<'_>) -> OpResult<Value> {
    let values = same_kind(&args.list("values")?)?;
    let along = args
        .opt_i64("axis")?
        .ok_or("lacks its required input \"axis\"")?;
    Ok(match &values[0] {
        Value::Float(_) => Value::Float(stack_arrays(&arrays_of!(values, Float), along)?),
        Value::Int(_) => Value::Int(stack_arrays(&arrays_of!(values, Int), along)?),
        _ => Value::Bool(stack_arrays(&arrays_of!(values, Bool), along)?),
    })
}

pub(super) fn split(args: &Args<'_>) -> OpResult<Vec<Value>> {
    let x = args.required("x")?;
    let shape = x.shape();
    let along = axis(
        args.opt_i64("axis")?
            .ok_or("lacks its required input \"axis\"")?,
        shape.len(),
    )?;
    let outputs = args.step.outputs.len();
    let sizes: Vec<usize> = match args.opt_i64_vec("split_sizes")? {
        Some(sizes) => dims(&sizes, "split_sizes")?,
        None => {
            let parts = args.opt_i64("num_splits")?.unwrap_or(outputs as i64);
            let parts = usize::try_from(parts)
                .ok()
                .filter(|&p| p > 0)
                .ok_or("num_splits must be positive")?;
            if shape[along] % parts != 0 {
                return Err(format!(
                    "{parts} splits do not divide axis {along} of shape {shape:?}"
                ));
            }
            vec![shape[along] / parts; parts]
        }
    };
    if sizes.len() != outputs || sizes.iter().sum::<usize>() != shape[along] {
        return Err(format!(
            "split sizes {sizes:?} do not cut axis {along} of shape {shape:?} into {outputs} outputs"
        ));
    }
    let mut start = 0;
    let mut parts = Vec::with_capacity(sizes.len());
    for size in sizes {
        let range = Slice::from(start..start + size);
        parts.push(any_tensor!(x, a => OpResult::Ok(a.slice_axis(Axis(along), range).to_shared())));
        start += size;
    }
    Ok(parts)
}

/// The same selection as an ndarray `Slice`.
fn to_slice(slice: AxisSlice) -> Slice {
    if slice.len == 0 {
        return Slice::new(0, Some(0), 1);
    }
    let last = slice.start + (slice.len as isize - 1) * slice.step;
    if slice.step > 0 {
        Slice::new(slice.start, Some(last + 1), slice.step)
    } else {
        // ndarray walks a negative step from the end of the range.
        Slice::new(last, Some(slice.start + 1), slice.step)
    }
}

fn slice_parameters(args: &Args<'_>, shape: &[usize]) -> OpResult<Vec<AxisSlice>> {
    resolve_slices(
        shape,
        &args.i64_vec("begin")?,
        &args.i64_vec("end")?,
        args.opt_i64_vec("stride")?.as_deref(),
        args.opt_bool_vec("begin_mask")?.as_deref(),
        args.opt_bool_vec("end_mask")?.as_deref(),
        args.opt_bool_vec("squeeze_mask")?.as_deref(),
    )
}

fn take<T: Recyclable>(
    a: &ArcArray<T, IxDyn>,
    slices: &[AxisSlice],
) -> OpResult<ArcArray<T, IxDyn>> {
    let view = a.slice_each_axis(|d| to_slice(slices[d.axis.index()]));
    let kept: Vec<usize> = slices
        .iter()
        .filter(|s| !s.squeeze)
        .map(|s| s.len)
        .collect();
    reshaped(&view.to_shared(), &kept)
}

pub(super) fn slice_by_index(args: &Args<'_>) -> OpResult<Value> {
    let x = args.required("x")?;
    let slices = slice_parameters(args, &x.shape())?;
    Ok(any_tensor!(x, a => take(a, &slices)))
}

pub(super) fn slice_by_size(args: &Args<'_>) -> OpResult<Value> {
    let x = args.required("x")?;
    let shape = x.shape();
    let begin = args.i64_vec("begin")?;
    let size = args.i64_vec("size")?;
    if begin.len() != shape.len() || size.len() != shape.len() {
        return Err(format!("begin and size must have {} entries", shape.len()));
    }
    let mut slices = Vec::with_capacity(shape.len());
    for i in 0..shape.len() {
        let dim = shape[i] as i64;
        let start = if begin[i] < 0 {
            begin[i] + dim
        } else {
            begin[i]
        };
        let len = if size[i] == -1 { dim - start } else { size[i] };
        if start < 0 || len < 0 || start + len > dim {
            return Err(format!(
                "begin {} and size {} do not fit axis {i} of size {dim}",
                begin[i], size[i]
            ));
        }
        slices.push(AxisSlice {
            start: start as isize,
            step: 1,
            len: len as usize,
            squeeze: false,
        });
    }
    Ok(any_tensor!(x, a => take(a, &slices)))
}

fn update<T: Recyclable>(
    a: &ArcArray<T, IxDyn>,
    slices: &[AxisSlice],
    with: &ArcArray<T, IxDyn>,
) -> OpResult<ArcArray<T, IxDyn>> {
    let region: Vec<usize> = slices.iter().map(|s| s.len).collect();
    let count: usize = region.iter().product();
    if with.len() != count {
        return Err(format!(
            "the update of shape {:?} does not fill the slice of shape {:?}",
            with.shape(),
            slices
                .iter()
                .filter(|s| !s.squeeze)
                .map(|s| s.len)
                .collect::<Vec<_>>()
        ));
    }
    let with = reshaped(with, &region)?;
    let mut out = a.to_owned();
    out.slice_each_axis_mut(|d| to_slice(slices[d.axis.index()]))
        .assign(&with);
    Ok(out.into_shared())
}

pub(super) fn slice_update(args: &Args<'_>) -> OpResult<Value> {
    let x = args.required("x")?;
    let with = args.required("update")?;
    let slices = slice_parameters(args, &x.shape())?;
    Ok(match x {
        Value::Float(a) => Value::Float(update(a, &slices, &with.to_float()?)?),
        Value::Int(a) => Value::Int(update(a, &slices, &with.to_int()?)?),
        Value::Bool(a) => Value::Bool(update(a, &slices, &with.to_bool()?)?),
        other => return Err(format!("cannot update {}", other.kind())),
    })
}

fn tile_array<T: Recyclable>(
    a: &ArcArray<T, IxDyn>,
    reps: &[usize],
) -> OpResult<ArcArray<T, IxDyn>> {
    let mut out = a.clone();
    for (along, &r) in reps.iter().enumerate() {
        if r == 1 {
            continue;
        }
        if r == 0 || out.is_empty() {
            let mut shape = out.shape().to_vec();
            shape[along] *= r;
            return Ok(ArrayD::from_shape_vec(IxDyn(&shape), Vec::new())
                .map_err(|e| e.to_string())?
                .into_shared());
        }
        let views = vec![out.view(); r];
        out = concatenate(Axis(along), &views)
            .map_err(|e| e.to_string())?
            .into_shared();
    }
    Ok(out)
}

pub(super) fn tile(args: &Args<'_>) -> OpResult<Value> {
    let x = args.required("x")?;
    let reps = dims(&args.i64_vec("reps")?, "reps")?;
    if reps.len() != x.shape().len() {
        return Err(format!(
            "reps {reps:?} must have one entry per axis of shape {:?}",
            x.shape()
        ));
    }
    let tiled: Vec<usize> = x
        .shape()
        .iter()
        .zip(&reps)
        .map(|(&d, &r)| d.saturating_mul(r))
        .collect();
    created_count(&tiled)?;
    Ok(any_tensor!(x, a => tile_array(a, &reps)))
}

fn gather_array<T: Recyclable>(
    x: &ArcArray<T, IxDyn>,
    indices: &[i64],
    index_shape: &[usize],
    along: usize,
    batch_dims: usize,
) -> OpResult<ArcArray<T, IxDyn>> {
    let shape = x.shape();
    if batch_dims > along
        || batch_dims > index_shape.len()
        || shape[..batch_dims] != index_shape[..batch_dims]
    {
        return Err(format!(
            "batch_dims {batch_dims} does not fit x of shape {shape:?}, indices of shape {index_shape:?} and axis {along}"
        ));
    }
    let batches: usize = shape[..batch_dims].iter().product();
    let outer: usize = shape[batch_dims..along].iter().product();
    let size = shape[along];
    let inner: usize = shape[along + 1..].iter().product();
    let per_batch: usize = index_shape[batch_dims..].iter().product();
    let standard = x.as_standard_layout();
    let data = standard
        .as_slice()
        .ok_or("x is not contiguous (interpreter bug)")?;
    let mut out = Vec::with_capacity(batches * outer * per_batch * inner);
    for b in 0..batches {
        for p in 0..outer {
            for i in 0..per_batch {
                let raw = indices[b * per_batch + i];
                let k = if raw < 0 { raw + size as i64 } else { raw };
                if k < 0 || k >= size as i64 {
                    return Err(format!(
                        "index {raw} is out of range for an axis of size {size}"
                    ));
                }
                let base = ((b * outer + p) * size + k as usize) * inner;
                out.extend_from_slice(&data[base..base + inner]);
            }
        }
    }
    let out_shape: Vec<usize> = shape[..along]
        .iter()
        .chain(&index_shape[batch_dims..])
        .chain(&shape[along + 1..])
        .copied()
        .collect();
    Ok(ArrayD::from_shape_vec(IxDyn(&out_shape), out)
        .map_err(|e| e.to_string())?
        .into_shared())
}

pub(super) fn gather(args: &Args<'_>) -> OpResult<Value> {
    let x = args.required("x")?;
    let indices = args.required("indices")?;
    let rank = x.shape().len();
    let along = axis(args.opt_i64("axis")?.unwrap_or(0), rank)?;
    let batch_dims = args.opt_i64("batch_dims")?.unwrap_or(0);
    let batch_dims =
        usize::try_from(batch_dims).map_err(|_| format!("batch_dims {batch_dims} is negative"))?;
    let index_shape = indices.shape();
    let flat = indices.to_i64_vec()?;
    Ok(any_tensor!(x, a => gather_array(a, &flat, &index_shape, along, batch_dims)))
}

fn gather_along<T: Recyclable>(
    x: &ArcArray<T, IxDyn>,
    indices: &[i64],
    index_shape: &[usize],
    along: usize,
) -> OpResult<ArcArray<T, IxDyn>> {
    let shape = x.shape();
    if index_shape.len() != shape.len()
        || (0..shape.len()).any(|i| i != along && index_shape[i] != shape[i])
    {
        return Err(format!(
            "indices of shape {index_shape:?} do not match x of shape {shape:?} off axis {along}"
        ));
    }
    let standard = x.as_standard_layout();
    let data = standard
        .as_slice()
        .ok_or("x is not contiguous (interpreter bug)")?;
    let mut strides = vec![1usize; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        strides[d] = strides[d + 1] * shape[d + 1];
    }
    let size = shape[along] as i64;
    let mut position = vec![0usize; index_shape.len()];
    let mut out = Vec::with_capacity(indices.len());
    for &raw in indices {
        let k = if raw < 0 { raw + size } else { raw };
        if k < 0 || k >= size {
            return Err(format!(
                "index {raw} is out of range for an axis of size {size}"
            ));
        }
        let mut flat = 0;
        for d in 0..shape.len() {
            flat += if d == along { k as usize } else { position[d] } * strides[d];
        }
        out.push(data[flat]);
        // Advance the row-major position in the indices.
        for d in (0..position.len()).rev() {
            position[d] += 1;
            if position[d] < index_shape[d] {
                break;
            }
            position[d] = 0;
        }
    }
    Ok(ArrayD::from_shape_vec(IxDyn(index_shape), out)
        .map_err(|e| e.to_string())?
        .into_shared())
}

pub(super) fn gather_along_axis(args: &Args<'_>) -> OpResult<Value> {
    let x = args.required("x")?;
    let indices = args.required("indices")?;
    let along = axis(args.opt_i64("axis")?.unwrap_or(0), x.shape().len())?;
    let index_shape = indices.shape();
    let flat = indices.to_i64_vec()?;
    Ok(any_tensor!(x, a => gather_along(a, &flat, &index_shape, along)))
}

fn filled(shape: &[usize], value: Option<&Value>) -> OpResult<Value> {
    let count = created_count(shape)?;
    Ok(match value {
        None => Value::float(shape.to_vec(), vec![0.0; count])?,
        Some(Value::Int(v)) => Value::int(shape.to_vec(), vec![scalar(v)?; count])?,
        Some(Value::Bool(v)) => Value::bool(shape.to_vec(), vec![scalar(v)?; count])?,
        Some(other) => Value::float(shape.to_vec(), vec![other.to_f32_scalar()?; count])?,
    })
}

fn scalar<T: Copy>(a: &ArcArray<T, IxDyn>) -> OpResult<T> {
    match a.len() {
        1 => a
            .iter()
            .next()
            .copied()
            .ok_or_else(|| "an empty value".to_string()),
        n => Err(format!("the fill value must be a scalar, not {n} values")),
    }
}

pub(super) fn fill(args: &Args<'_>) -> OpResult<Value> {
    let shape = dims(&args.i64_vec("shape")?, "shape")?;
    filled(&shape, args.get("value")?)
}

pub(super) fn fill_like(args: &Args<'_>) -> OpResult<Value> {
    let shape = args.required("ref_tensor")?.shape();
    filled(&shape, args.get("value")?)
}

pub(super) fn shape_of(args: &Args<'_>) -> OpResult<Value> {
    let shape = args.required("x")?.shape();
    let dims = shape
        .iter()
        .map(|&d| i32::try_from(d).map_err(|_| format!("dimension {d} exceeds int32")))
        .collect::<OpResult<Vec<i32>>>()?;
    Value::int(vec![dims.len()], dims)
}

fn band<T: Copy + Default>(
    a: &ArcArray<T, IxDyn>,
    lower: i64,
    upper: i64,
) -> OpResult<ArcArray<T, IxDyn>> {
    let rank = a.ndim();
    if rank < 2 {
        return Err("band_part needs a tensor of rank 2 or more".to_string());
    }
    let mut out = a.to_owned();
    for (index, v) in out.indexed_iter_mut() {
        let (m, n) = (index[rank - 2] as i64, index[rank - 1] as i64);
        let inside = (lower < 0 || m - n <= lower) && (upper < 0 || n - m <= upper);
        if !inside {
            *v = T::default();
        }
    }
    Ok(out.into_shared())
}

pub(super) fn band_part(args: &Args<'_>) -> OpResult<Value> {
    let x = args.required("x")?;
    let lower = args.opt_i64("lower")?.unwrap_or(-1);
    let upper = args.opt_i64("upper")?.unwrap_or(-1);
    Ok(any_tensor!(x, a => band(a, lower, upper)))
}

pub(super) fn range_1d(args: &Args<'_>) -> OpResult<Value> {
    let end = args.required("end")?;
    let start = args.required("start")?;
    let step = args.required("step")?;
    let all_int = [end, start, step]
        .iter()
        .all(|v| matches!(v, Value::Int(_)));
    if all_int {
        let (e, s, d) = (
            end.to_i64_scalar()?,
            start.to_i64_scalar()?,
            step.to_i64_scalar()?,
        );
        if d == 0 {
            return Err("step 0".to_string());
        }
        let count = if d > 0 {
            (e - s).max(0).div_euclid(d) + i64::from((e - s).max(0) % d != 0)
        } else {
            (s - e).max(0).div_euclid(-d) + i64::from((s - e).max(0) % -d != 0)
        };
        created_count(&[count as usize])?;
        let values: Vec<i32> = (0..count).map(|i| (s + i * d) as i32).collect();
        return Value::int(vec![values.len()], values);
    }
    let (e, s, d) = (
        end.to_f32_scalar()?,
        start.to_f32_scalar()?,
        step.to_f32_scalar()?,
    );
    if d == 0.0 || !d.is_finite() {
        return Err(format!("step {d}"));
    }
    let count = ((e - s) / d).ceil().max(0.0);
    if !count.is_finite() {
        return Err(format!("range from {s} to {e} by {d} is not finite"));
    }
    let count = created_count(&[count as usize])?;
    let values: Vec<f32> = (0..count).map(|i| s + i as f32 * d).collect();
    Value::float(vec![values.len()], values)
}

/// How `pad` fills the border.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PadMode {
    Constant,
    /// Mirrors without repeating the edge (numpy's `reflect`).
    Reflect,
    /// Repeats the edge.
    Replicate,
}

/// The source index along an axis of length `size` of padded position
/// `at` (`before` positions of padding first), or None for a constant.
fn pad_source(at: usize, before: usize, size: usize, mode: PadMode) -> Option<usize> {
    let offset = at as isize - before as isize;
    if (0..size as isize).contains(&offset) {
        return Some(offset as usize);
    }
    match mode {
        PadMode::Constant => None,
        PadMode::Replicate => Some(offset.clamp(0, size as isize - 1) as usize),
        PadMode::Reflect => {
            // Reflection has period 2·(size - 1).
            let period = 2 * (size as isize - 1);
            if period == 0 {
                return Some(0);
            }
            let folded = offset.rem_euclid(period);
            Some(if folded < size as isize {
                folded
            } else {
                period - folded
            } as usize)
        }
    }
}

fn pad_array<T: Recyclable>(
    a: &ArcArray<T, IxDyn>,
    widths: &[(usize, usize)],
    mode: PadMode,
    fill: T,
) -> OpResult<ArcArray<T, IxDyn>> {
    let shape = a.shape();
    let out_shape: Vec<usize> = shape
        .iter()
        .zip(widths)
        .map(|(&d, &(b, e))| d + b + e)
        .collect();
    created_count(&out_shape)?;
    // Per axis, where each output position reads.
    let sources: Vec<Vec<Option<usize>>> = (0..shape.len())
        .map(|d| {
            (0..out_shape[d])
                .map(|at| pad_source(at, widths[d].0, shape[d], mode))
                .collect()
        })
        .collect();
    let out = ArrayD::from_shape_fn(IxDyn(&out_shape), |position| {
        let mut index = Vec::with_capacity(shape.len());
        for (d, source) in sources.iter().enumerate() {
            match source[position[d]] {
                Some(i) => index.push(i),
                None => return fill,
            }
        }
        a[IxDyn(&index)]
    });
    Ok(out.into_shared())
}

/// `pad`: pads the last `pad.len() / 2` axes with a constant, a
/// reflection or the edge.
pub(super) fn pad(args: &Args<'_>) -> OpResult<Value> {
    let x = args.required("x")?;
    let shape = x.shape();
    let pad = args.i64_vec("pad")?;
    if pad.len() % 2 != 0 || pad.len() / 2 > shape.len() {
        return Err(format!(
            "pad {pad:?} must hold a (before, after) pair for at most the {} axes of x",
            shape.len()
        ));
    }
    let pad = dims(&pad, "pad")?;
    let padded_axes = pad.len() / 2;
    let mut widths = vec![(0, 0); shape.len() - padded_axes];
    widths.extend(pad.chunks(2).map(|p| (p[0], p[1])));
    let mode = match args.opt_str("mode")?.unwrap_or("constant") {
        "constant" => PadMode::Constant,
        "reflect" => PadMode::Reflect,
        "replicate" => PadMode::Replicate,
        other => {
            return Err(format!(
                "mode {other:?} is not one of constant, reflect, replicate"
            ))
        }
    };
    for (d, &(b, e)) in widths.iter().enumerate() {
        if (b > 0 || e > 0) && shape[d] == 0 && mode != PadMode::Constant {
            return Err(format!("cannot {mode:?}-pad the empty axis {d}"));
        }
        if mode == PadMode::Reflect && (b >= shape[d].max(1) || e >= shape[d].max(1)) {
            return Err(format!(
                "reflect padding ({b}, {e}) must be smaller than axis {d} of length {}",
                shape[d]
            ));
        }
    }
    let constant = args.opt_f32("constant_val")?.unwrap_or(0.0);
    Ok(match x {
        Value::Float(a) => Value::Float(pad_array(a, &widths, mode, constant)?),
        Value::Int(a) => Value::Int(pad_array(a, &widths, mode, constant as i32)?),
        Value::Bool(a) => Value::Bool(pad_array(a, &widths, mode, constant != 0.0)?),
        other => return Err(format!("cannot pad {}", other.kind())),
    })
}

/// `crop`: removes `crop_height` rows (top, bottom) and `crop_width`
/// columns (left, right) from the last two axes.
pub(super) fn crop(args: &Args<'_>) -> OpResult<Value> {
    let x = args.required("x")?;
    let shape = x.shape();
    let rank = shape.len();
    let height = dims(&args.i64_vec("crop_height")?, "crop_height")?;
    let width = dims(&args.i64_vec("crop_width")?, "crop_width")?;
    if rank < 2
        || height.len() != 2
        || width.len() != 2
        || height[0] + height[1] > shape[rank - 2]
        || width[0] + width[1] > shape[rank - 1]
    {
        return Err(format!(
            "crop_height {height:?} and crop_width {width:?} do not fit x of shape {shape:?}"
        ));
    }
    let mut slices: Vec<Slice> = vec![Slice::from(..); rank];
    slices[rank - 2] = Slice::from(height[0] as isize..(shape[rank - 2] - height[1]) as isize);
    slices[rank - 1] = Slice::from(width[0] as isize..(shape[rank - 1] - width[1]) as isize);
    Ok(any_tensor!(x, a => {
        let mut view = a.view();
        for (along, slice) in slices.iter().enumerate() {
            view.slice_axis_inplace(Axis(along), *slice);
        }
        Ok::<_, String>(view.to_owned().into_shared())
    }))
}

/// `non_zero`: the index of each nonzero element, one row each
/// (`[count, rank]`), in row-major order.
pub(super) fn non_zero(args: &Args<'_>) -> OpResult<Value> {
    let x = args.required("x")?.to_bool()?;
    let rank = x.ndim();
    let mut rows = Vec::new();
    let mut count = 0;
    for (position, &set) in x.indexed_iter() {
        if set {
            rows.extend((0..rank).map(|d| position[d] as i32));
            count += 1;
        }
    }
    Value::int(vec![count, rank], rows)
}

/// `reverse`: flips `axes` (every axis when absent).
pub(super) fn reverse(args: &Args<'_>) -> OpResult<Value> {
    let x = args.required("x")?;
    let rank = x.shape().len();
    let axes = match args.opt_i64_vec("axes")? {
        Some(axes) => axes
            .into_iter()
            .map(|a| axis(a, rank))
            .collect::<OpResult<Vec<_>>>()?,
        None => (0..rank).collect(),
    };
    Ok(any_tensor!(x, a => {
        let mut view = a.view();
        for &along in &axes {
            view.invert_axis(Axis(along));
        }
        Ok::<_, String>(view.to_owned().into_shared())
    }))
}

/// `reverse_sequence`: reverses the first `lengths[b]` entries along
/// `seq_axis` of each batch entry `b` along `batch_axis`.
pub(super) fn reverse_sequence(args: &Args<'_>) -> OpResult<Value> {
    let x = args.required("x")?;
    let shape = x.shape();
    let rank = shape.len();
    let lengths = args.i64_vec("lengths")?;
    let seq = axis(args.opt_i64("seq_axis")?.unwrap_or(0), rank)?;
    let batch = axis(args.opt_i64("batch_axis")?.unwrap_or(0), rank)?;
    if seq == batch || lengths.len() != shape[batch] {
        return Err(format!(
            "lengths {lengths:?} with seq_axis {seq} and batch_axis {batch} do not fit x of shape {shape:?}"
        ));
    }
    let lengths = dims(&lengths, "lengths")?;
    if let Some(&l) = lengths.iter().find(|&&l| l > shape[seq]) {
        return Err(format!(
            "length {l} exceeds the {} entries of seq_axis {seq}",
            shape[seq]
        ));
    }
    fn flip<T: Copy>(
        a: &ArcArray<T, IxDyn>,
        lengths: &[usize],
        seq: usize,
        batch: usize,
    ) -> OpResult<ArcArray<T, IxDyn>> {
        Ok(ArrayD::from_shape_fn(a.raw_dim(), |position| {
            let mut source = position.clone();
            let length = lengths[position[batch]];
            if position[seq] < length {
                source[seq] = length - 1 - position[seq];
            }
            a[source]
        })
        .into_shared())
    }
    Ok(any_tensor!(x, a => flip(a, &lengths, seq, batch)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn indices(shape: &[usize], slices: &[AxisSlice]) -> Vec<Vec<isize>> {
        let _ = shape;
        slices
            .iter()
            .map(|s| (0..s.len as isize).map(|i| s.start + i * s.step).collect())
            .collect()
    }

    #[test]
    fn slices_follow_python() {
        // x[1:-1:2], x[::-1], x[5:1:-2], x[-100:100] on an axis of 6.
        let cases: [(i64, i64, i64, bool, bool, Vec<isize>); 4] = [
            (1, -1, 2, false, false, vec![1, 3]),
            (0, 0, -1, true, true, vec![5, 4, 3, 2, 1, 0]),
            (5, 1, -2, false, false, vec![5, 3]),
            (-100, 100, 1, false, false, vec![0, 1, 2, 3, 4, 5]),
        ];
        for (begin, end, stride, bm, em, expected) in cases {
            let s = resolve_slices(
                &[6],
                &[begin],
                &[end],
                Some(&[stride]),
                Some(&[bm]),
                Some(&[em]),
                None,
            )
            .unwrap();
            assert_eq!(indices(&[6], &s)[0], expected, "{begin}:{end}:{stride}");
            // ndarray selects the same elements.
            let a = ArrayD::from_shape_vec(IxDyn(&[6]), (0..6).collect::<Vec<isize>>()).unwrap();
            let taken: Vec<isize> = a
                .slice_each_axis(|_| to_slice(s[0]))
                .iter()
                .copied()
                .collect();
            assert_eq!(taken, expected);
        }
        let squeezed = resolve_slices(&[4], &[-1], &[0], None, None, None, Some(&[true])).unwrap();
        assert_eq!(
            squeezed[0],
            AxisSlice {
                start: 3,
                step: 1,
                len: 1,
                squeeze: true
            }
        );
        assert!(resolve_slices(&[4], &[4], &[0], None, None, None, Some(&[true])).is_err());
        assert!(resolve_slices(&[4], &[0], &[4], Some(&[0]), None, None, None).is_err());
    }

    #[test]
    fn gather_with_batch_dims() {
        // x[b, i, :] gathered per batch: out[b, j, :] = x[b, idx[b, j], :].
        let x = ArrayD::from_shape_vec(IxDyn(&[2, 3, 2]), (0..12).collect::<Vec<i32>>())
            .unwrap()
            .into_shared();
        let out = gather_array(&x, &[2, 0, -1, 1], &[2, 2], 1, 1).unwrap();
        assert_eq!(out.shape(), &[2, 2, 2]);
        assert_eq!(
            out.iter().copied().collect::<Vec<_>>(),
            vec![4, 5, 0, 1, 10, 11, 8, 9]
        );
        assert!(gather_array(&x, &[3, 0, 0, 0], &[2, 2], 1, 1).is_err());
    }
}
