//! Rules for the ops that move elements around, and for the shape
//! arithmetic a flexible program does (`shape`, slices, concatenation,
//! `fill`, `range_1d`), whose values are followed so that they fold.

use super::{is_float, unify, Dim, Elements, Inputs, Operand, RuleResult, TensorType, MAX_FOLDED};
use crate::mil::shapes::{resolve_slices, AxisSlice};
use crate::proto::mil_spec::DataType;

/// The most dimensions a shape parameter computed at run time may have
/// (MIL tensors have at most a handful; a larger count is a damaged model,
/// refused rather than allocated).
const MAX_RANK: u64 = 64;

/// The most results `split` may have.
const MAX_SPLITS: u64 = 1 << 16;

/// Checks that `a` and `b` have the same shape (where known).
pub(super) fn same_shape(a: &TensorType, b: &TensorType, an: &str, bn: &str) -> Result<(), String> {
    let mismatch = || {
        format!(
            "{an} of type {} and {bn} of type {} differ in shape",
            a.describe(),
            b.describe()
        )
    };
    if a.rank() != b.rank() {
        return Err(mismatch());
    }
    for (&x, &y) in a.shape.iter().zip(&b.shape) {
        unify(x, y, mismatch)?;
    }
    Ok(())
}

/// The index, in a row-major tensor of `shape`, of each element at the
/// positions `select` gives per axis (the cartesian product, in order).
fn gather_positions(shape: &[u64], select: &[Vec<usize>]) -> Vec<usize> {
    let mut strides = vec![1usize; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1] as usize;
    }
    let mut out = vec![0usize];
    for (axis, positions) in select.iter().enumerate() {
        let mut next = Vec::with_capacity(out.len() * positions.len());
        for &base in &out {
            for &p in positions {
                next.push(base + p * strides[axis]);
            }
        }
        out = next;
    }
    out
}

/// The entries of a `shape` parameter (`reshape`'s, `fill`'s), `None`
/// where not known; all unknown when it is computed at run time, its
/// length then giving the rank.
fn shape_entries(shape_param: &Operand) -> Result<Vec<Option<i64>>, String> {
    if let Some(v) = &shape_param.value {
        return v
            .to_ints()
            .ok_or_else(|| "shape is not integers".to_string());
    }
    let length = shape_param
        .ty
        .shape
        .first()
        .copied()
        .flatten()
        .ok_or("the shape parameter's length is not known")?;
    if length > MAX_RANK {
        return Err(format!("the shape parameter has {length} entries"));
    }
    Ok(vec![None; length as usize])
}

pub(super) fn reshape(inputs: &Inputs<'_>) -> Result<Operand, String> {
    let x = inputs.required("x")?;
    let shape_param = inputs.required("shape")?;
    let target = shape_entries(shape_param)?;
    let current = &x.ty.shape;
    let mut dims: Vec<Dim> = Vec::with_capacity(target.len());
    for (i, &t) in target.iter().enumerate() {
        dims.push(match t {
            // iOS 17: a 0 copies x's dimension at the same place counted
            // from the right, 1 where x has none (`shapes::reshape_target`).
            Some(0) => (i + current.len())
                .checked_sub(target.len())
                .map_or(Some(1), |j| current[j]),
            Some(-1) | None => None,
            Some(d) if d < 0 => return Err(format!("shape {target:?} has a negative entry")),
            Some(d) => Some(d as u64),
        });
    }
    // One unknown dimension follows from the element count.
    let unknown: Vec<usize> = (0..dims.len()).filter(|&i| dims[i].is_none()).collect();
    if let (Some(total), [i]) = (x.ty.element_count(), unknown.as_slice()) {
        let known: u64 = dims.iter().flatten().product();
        if known == 0 || total % known != 0 {
            return Err(format!("cannot reshape {} to {target:?}", x.ty.describe()));
        }
        dims[*i] = Some(total / known);
    }
    if target.iter().filter(|t| **t == Some(-1)).count() > 1 {
        return Err(format!("shape {target:?} has more than one -1"));
    }
    let ty = TensorType {
        dtype: x.ty.dtype,
        shape: dims,
    };
    if let (Some(a), Some(b)) = (x.ty.element_count(), ty.element_count()) {
        if a != b {
            return Err(format!(
                "cannot reshape {} ({a} elements) to {} ({b} elements)",
                x.ty.describe(),
                shape_text_of(&ty)
            ));
        }
    }
    Ok(Operand::maybe(ty, x.value.clone()))
}

fn shape_text_of(ty: &TensorType) -> String {
    super::shape_text(&ty.shape)
}

pub(super) fn transpose(inputs: &Inputs<'_>) -> Result<Operand, String> {
    let x = inputs.required("x")?;
    let rank = x.ty.rank();
    let perm = inputs
        .i64_vec("perm")?
        .into_iter()
        .map(|p| super::axis(p, rank))
        .collect::<Result<Vec<usize>, String>>()?;
    let mut seen = vec![false; rank];
    if perm.len() != rank || perm.iter().any(|&p| std::mem::replace(&mut seen[p], true)) {
        return Err(format!("perm {perm:?} is not a permutation of {rank} axes"));
    }
    let ty = TensorType {
        dtype: x.ty.dtype,
        shape: perm.iter().map(|&p| x.ty.shape[p]).collect(),
    };
    let value = (|| {
        let v = x.value.as_ref()?;
        let shape = x.ty.known_shape()?;
        // Element (i_0..i_r) of the result is x[i_perm...].
        let out_shape = ty.known_shape()?;
        let mut strides = vec![1usize; rank];
        for i in (0..rank.saturating_sub(1)).rev() {
            strides[i] = strides[i + 1] * shape[i + 1] as usize;
        }
        let count: u64 = out_shape.iter().product();
        let mut position = vec![0u64; rank];
        let mut indices = Vec::with_capacity(count as usize);
        for _ in 0..count {
            indices.push(
                (0..rank)
                    .map(|k| position[k] as usize * strides[perm[k]])
                    .sum(),
            );
            for axis in (0..rank).rev() {
                position[axis] += 1;
                if position[axis] < out_shape[axis] {
                    break;
                }
                position[axis] = 0;
            }
        }
        Some(v.pick(&indices))
    })();
    Ok(Operand::maybe(ty, value))
}

pub(super) fn expand_dims(inputs: &Inputs<'_>) -> Result<Operand, String> {
    let x = inputs.required("x")?;
    let axes = inputs.i64_vec("axes")?;
    let rank = x.ty.rank() + axes.len();
    let mut normalized = axes
        .iter()
        .map(|&a| super::axis(a, rank))
        .collect::<Result<Vec<usize>, String>>()?;
    normalized.sort_unstable();
    if normalized.windows(2).any(|w| w[0] == w[1]) {
        return Err(format!("axes {axes:?} repeat an axis"));
    }
    let mut shape = x.ty.shape.clone();
    for &a in &normalized {
        shape.insert(a, Some(1));
    }
    let ty = TensorType {
        dtype: x.ty.dtype,
        shape,
    };
    Ok(Operand::maybe(ty, x.value.clone()))
}

pub(super) fn squeeze(inputs: &Inputs<'_>) -> Result<Operand, String> {
    let x = inputs.required("x")?;
    let rank = x.ty.rank();
    let axes: Vec<usize> = match inputs.opt_i64_vec("axes")? {
        Some(axes) => {
            let axes = axes
                .iter()
                .map(|&a| super::axis(a, rank))
                .collect::<Result<Vec<usize>, String>>()?;
            for &a in &axes {
                if x.ty.shape[a].is_some_and(|d| d != 1) {
                    return Err(format!("axis {a} of {} is not of size 1", x.ty.describe()));
                }
            }
            axes
        }
        // Every axis of size 1; an unknown dimension is taken not to be
        // 1, as coremltools takes it.
        None => (0..rank).filter(|&a| x.ty.shape[a] == Some(1)).collect(),
    };
    let ty = TensorType {
        dtype: x.ty.dtype,
        shape: (0..rank)
            .filter(|a| !axes.contains(a))
            .map(|a| x.ty.shape[a])
            .collect(),
    };
    Ok(Operand::maybe(ty, x.value.clone()))
}

/// Joins known element lists along `axis` of tensors of known shapes,
/// as elements of `dtype`.
fn join(dtype: DataType, parts: &[(&Elements, Vec<u64>)], axis: usize) -> Option<Elements> {
    let elements: Vec<&Elements> = parts.iter().map(|(e, _)| *e).collect();
    let all = Elements::joined(dtype, &elements)?;
    let outer: usize = parts.first()?.1[..axis].iter().product::<u64>() as usize;
    let mut positions = Vec::with_capacity(all.len());
    for o in 0..outer {
        let mut offset = 0;
        for (part, shape) in parts {
            let inner: usize = shape[axis..].iter().product::<u64>() as usize;
            positions.extend((0..inner).map(|i| offset + o * inner + i));
            offset += part.len();
        }
    }
    Some(all.pick(&positions))
}

pub(super) fn concat(inputs: &Inputs<'_>) -> Result<Operand, String> {
    let given = inputs.list("values");
    // Scalars join as vectors of one (coremltools writes such concats for
    // shapes built from single dimensions).
    let as_vectors: Vec<Operand> = given
        .iter()
        .map(|v| {
            let mut v = (*v).clone();
            if v.ty.rank() == 0 {
                v.ty.shape = vec![Some(1)];
            }
            v
        })
        .collect();
    let values: Vec<&Operand> = if given.iter().all(|v| v.ty.rank() == 0) {
        as_vectors.iter().collect()
    } else {
        given
    };
    let first = values.first().ok_or("concat has no values")?;
    let rank = first.ty.rank();
    let axis = super::axis(inputs.i64("axis")?, rank)?;
    if inputs.opt_bool("interleave")?.unwrap_or(false) && values.len() > 1 {
        // Interleaving needs equal shapes; the axis grows by the count.
        let mut shape = first.ty.shape.clone();
        for v in &values[1..] {
            same_shape(&first.ty, &v.ty, "values[0]", "another value")?;
        }
        shape[axis] = shape[axis].map(|d| d * values.len() as u64);
        return Ok(Operand::tensor(TensorType {
            dtype: first.ty.dtype,
            shape,
        }));
    }
    let mut shape = first.ty.shape.clone();
    let mut dtype = first.ty.dtype;
    for (n, v) in values.iter().enumerate().skip(1) {
        if v.ty.rank() != rank {
            return Err(format!(
                "values[{n}] of type {} differs in rank from values[0] of type {}",
                v.ty.describe(),
                first.ty.describe()
            ));
        }
        if is_float(v.ty.dtype) && !is_float(dtype) {
            dtype = v.ty.dtype;
        }
        for (i, (&d, s)) in v.ty.shape.iter().zip(shape.iter_mut()).enumerate() {
            if i == axis {
                *s = match (*s, d) {
                    (Some(a), Some(b)) => Some(a + b),
                    _ => None,
                };
            } else {
                *s = unify(*s, d, || {
                    format!(
                        "values[{n}] of type {} does not fit values[0] of type {} along axis {i}",
                        v.ty.describe(),
                        first.ty.describe()
                    )
                })?;
            }
        }
    }
    let ty = TensorType { dtype, shape };
    let value = (|| {
        // An integer part computed at run time joins as unknown elements,
        // so that a shape built from one stays partly known.
        let unknown: Vec<Elements> = values
            .iter()
            .map(|v| {
                let count = v.ty.element_count().filter(|&n| n <= MAX_FOLDED as u64)?;
                Some(Elements::Int(vec![None; count as usize]))
            })
            .collect::<Option<_>>()?;
        let any_known = values.iter().any(|v| v.value.is_some());
        let parts: Vec<(&Elements, Vec<u64>)> = values
            .iter()
            .zip(&unknown)
            .map(|(v, u)| {
                let elements = match &v.value {
                    Some(e) => e,
                    None if any_known && !is_float(v.ty.dtype) && v.ty.dtype != DataType::Bool => u,
                    None => return None,
                };
                Some((elements, v.ty.known_shape()?))
            })
            .collect::<Option<_>>()?;
        join(ty.dtype, &parts, axis)
    })();
    Ok(Operand::maybe(ty, value))
}

pub(super) fn stack(inputs: &Inputs<'_>) -> Result<Operand, String> {
    let values = inputs.list("values");
    let first = values.first().ok_or("stack has no values")?;
    let axis = super::axis(inputs.i64("axis")?, first.ty.rank() + 1)?;
    let mut shape = first.ty.shape.clone();
    for v in &values[1..] {
        same_shape(&first.ty, &v.ty, "values[0]", "another value")?;
        for (s, &d) in shape.iter_mut().zip(&v.ty.shape) {
            *s = s.or(d);
        }
    }
    shape.insert(axis, Some(values.len() as u64));
    let ty = TensorType {
        dtype: first.ty.dtype,
        shape,
    };
    let value = (|| {
        let mut known_shape = first.ty.known_shape()?;
        known_shape.insert(axis, 1);
        let parts: Vec<(&Elements, Vec<u64>)> = values
            .iter()
            .map(|v| Some((v.value.as_ref()?, known_shape.clone())))
            .collect::<Option<_>>()?;
        join(ty.dtype, &parts, axis)
    })();
    Ok(Operand::maybe(ty, value))
}

pub(super) fn split(inputs: &Inputs<'_>) -> RuleResult {
    let x = inputs.tensor("x")?;
    let axis = super::axis(inputs.i64("axis")?, x.rank())?;
    let sizes: Vec<Dim> = match (
        inputs.opt_i64_vec("split_sizes")?,
        inputs.opt_i64("num_splits")?,
    ) {
        (Some(sizes), _) => {
            let sizes: Vec<Dim> = sizes
                .iter()
                .map(|&s| {
                    u64::try_from(s)
                        .map(Some)
                        .map_err(|_| format!("split_sizes {sizes:?} has a negative entry"))
                })
                .collect::<Result<_, _>>()?;
            if let Some(d) = x.shape[axis] {
                let total: u64 = sizes.iter().flatten().sum();
                if total != d {
                    return Err(format!(
                        "split_sizes add up to {total}, not the size {d} of axis {axis} of {}",
                        x.describe()
                    ));
                }
            }
            sizes
        }
        (None, Some(n)) if n > 0 => {
            let n = n as u64;
            if n > MAX_SPLITS || x.shape[axis].is_some_and(|d| n > d.max(1)) {
                return Err(format!(
                    "num_splits {n} does not fit axis {axis} of {}",
                    x.describe()
                ));
            }
            match x.shape[axis] {
                Some(d) if d % n != 0 => {
                    return Err(format!(
                        "axis {axis} of {} does not split into {n} equal parts",
                        x.describe()
                    ))
                }
                Some(d) => vec![Some(d / n); n as usize],
                None => vec![None; n as usize],
            }
        }
        _ => return Err("needs num_splits or split_sizes".to_string()),
    };
    Ok(sizes
        .into_iter()
        .map(|size| {
            let mut shape = x.shape.clone();
            shape[axis] = size;
            Operand::tensor(TensorType {
                dtype: x.dtype,
                shape,
            })
        })
        .collect())
}

/// The slices `slice_by_index` or `slice_update` takes, on known axes; an
/// unknown axis gives `None` (its length is not known unless squeezed).
fn slices(inputs: &Inputs<'_>, x: &TensorType) -> Result<Vec<Option<AxisSlice>>, String> {
    let stride = inputs.opt_i64_vec("stride")?;
    let begin_mask = inputs.opt_bool_vec("begin_mask")?;
    let end_mask = inputs.opt_bool_vec("end_mask")?;
    let squeeze_mask = inputs.opt_bool_vec("squeeze_mask")?;
    let rank = x.rank();
    let runtime = |name: &str| -> Result<bool, String> {
        Ok(!inputs
            .required(name)?
            .value
            .as_ref()
            .is_some_and(Elements::is_known))
    };
    if runtime("begin")? || runtime("end")? {
        // Bounds computed at run time: each axis's length is unknown, but
        // which axes are squeezed is.
        return Ok((0..rank)
            .map(|i| {
                squeeze_mask
                    .as_ref()
                    .is_some_and(|m| m.get(i) == Some(&true))
                    .then_some(AxisSlice {
                        start: 0,
                        step: 1,
                        len: 1,
                        squeeze: true,
                    })
            })
            .collect());
    }
    let begin = inputs.i64_vec("begin")?;
    let end = inputs.i64_vec("end")?;
    // Resolve each axis on its own, so an unknown axis does not stop the
    // others.
    (0..rank)
        .map(|i| {
            let one = |v: &Option<Vec<bool>>| -> Result<Option<Vec<bool>>, String> {
                match v {
                    None => Ok(None),
                    Some(m) if m.len() == rank => Ok(Some(vec![m[i]])),
                    Some(m) => Err(format!("a mask {m:?} has not {rank} entries")),
                }
            };
            if begin.len() != rank
                || end.len() != rank
                || stride.as_ref().is_some_and(|s| s.len() != rank)
            {
                return Err(format!(
                    "begin {begin:?}, end {end:?} and stride must each have {rank} entries for {}",
                    x.describe()
                ));
            }
            let squeezed = squeeze_mask
                .as_ref()
                .is_some_and(|m| m.get(i) == Some(&true));
            match x.shape[i] {
                None if squeezed => Ok(Some(AxisSlice {
                    start: 0,
                    step: 1,
                    len: 1,
                    squeeze: true,
                })),
                None => Ok(None),
                Some(d) => resolve_slices(
                    &[d as usize],
                    &[begin[i]],
                    &[end[i]],
                    stride.as_ref().map(|s| vec![s[i]]).as_deref(),
                    one(&begin_mask)?.as_deref(),
                    one(&end_mask)?.as_deref(),
                    one(&squeeze_mask)?.as_deref(),
                )
                .map(|mut s| s.pop()),
            }
        })
        .collect()
}

/// The type of `x` sliced by `slices`.
fn sliced(x: &TensorType, slices: &[Option<AxisSlice>]) -> TensorType {
    TensorType {
        dtype: x.dtype,
        shape: slices
            .iter()
            .filter(|s| !s.is_some_and(|s| s.squeeze))
            .map(|s| s.map(|s| s.len as u64))
            .collect(),
    }
}

/// The elements of `x` (of known `shape`) that `slices` take.
fn take(value: &Elements, shape: &[u64], slices: &[AxisSlice]) -> Elements {
    let select: Vec<Vec<usize>> = slices
        .iter()
        .map(|s| {
            (0..s.len)
                .map(|k| (s.start + k as isize * s.step) as usize)
                .collect()
        })
        .collect();
    value.pick(&gather_positions(shape, &select))
}

pub(super) fn slice_by_index(inputs: &Inputs<'_>) -> Result<Operand, String> {
    let x = inputs.required("x")?;
    let slices = slices(inputs, &x.ty)?;
    let ty = sliced(&x.ty, &slices);
    let value = (|| {
        let all: Vec<AxisSlice> = slices.iter().copied().collect::<Option<_>>()?;
        Some(take(x.value.as_ref()?, &x.ty.known_shape()?, &all))
    })();
    Ok(Operand::maybe(ty, value))
}

pub(super) fn slice_by_size(inputs: &Inputs<'_>) -> Result<Operand, String> {
    let x = inputs.required("x")?;
    let rank = x.ty.rank();
    let begin = inputs.required("begin")?;
    let size_operand = inputs.required("size")?;
    if size_operand.value.is_none() && size_operand.ty.shape == [Some(rank as u64)] {
        // A size computed at run time (a count of kept boxes): every extent
        // depends on data, as coremltools' symbols say.
        return Ok(Operand::tensor(TensorType {
            dtype: x.ty.dtype,
            shape: vec![None; rank],
        }));
    }
    let size = inputs.i64_vec("size")?;
    if size.len() != rank {
        return Err(format!("size {size:?} must have {rank} entries"));
    }
    let begin: Option<Vec<i64>> = match &begin.value {
        Some(v) => v.to_ints().and_then(|v| v.into_iter().collect()),
        None => None,
    };
    let mut slices = Vec::with_capacity(rank);
    let mut shape = Vec::with_capacity(rank);
    for i in 0..rank {
        let dim = x.ty.shape[i];
        let start = begin.as_ref().map(|b| b[i]);
        let (len, slice) = match (size[i], dim, start) {
            (-1, Some(d), Some(s)) => {
                let s = if s < 0 { s + d as i64 } else { s };
                (Some((d as i64 - s).max(0) as u64), Some((s, d as i64 - s)))
            }
            (-1, _, _) => (None, None),
            (n, _, s) if n >= 0 => (Some(n as u64), s.map(|s| (s, n))),
            (n, _, _) => return Err(format!("size {n} on axis {i} is negative")),
        };
        if let (Some((s, n)), Some(d)) = (slice, dim) {
            let s = if s < 0 { s + d as i64 } else { s };
            if s < 0 || n < 0 || s + n > d as i64 {
                return Err(format!(
                    "begin {s} and size {n} do not fit axis {i} of {}",
                    x.ty.describe()
                ));
            }
        }
        shape.push(len);
        slices.push(slice.map(|(s, n)| AxisSlice {
            start: s as isize,
            step: 1,
            len: n as usize,
            squeeze: false,
        }));
    }
    let ty = TensorType {
        dtype: x.ty.dtype,
        shape,
    };
    let value = (|| {
        let all: Vec<AxisSlice> = slices.iter().copied().collect::<Option<_>>()?;
        Some(take(x.value.as_ref()?, &x.ty.known_shape()?, &all))
    })();
    Ok(Operand::maybe(ty, value))
}

pub(super) fn slice_update(inputs: &Inputs<'_>) -> Result<Operand, String> {
    let x = inputs.tensor("x")?;
    let update = inputs.tensor("update")?;
    let slices = slices(inputs, x)?;
    let region = sliced(x, &slices);
    let fits = region
        .element_count()
        .zip(update.element_count())
        .is_none_or(|(a, b)| a == b);
    if !fits {
        return Err(format!(
            "the update of type {} does not fill the slice {}",
            update.describe(),
            super::shape_text(&region.shape)
        ));
    }
    Ok(Operand::tensor(x.clone()))
}

pub(super) fn tile(inputs: &Inputs<'_>) -> Result<Operand, String> {
    let x = inputs.required("x")?;
    if inputs.required("reps")?.value.is_none() {
        // Repetitions computed at run time: every dimension is unknown.
        return Ok(Operand::tensor(TensorType {
            dtype: x.ty.dtype,
            shape: vec![None; x.ty.rank()],
        }));
    }
    let reps = inputs.i64_vec("reps")?;
    if reps.len() != x.ty.rank() {
        return Err(format!(
            "reps {reps:?} must have one entry per axis of {}",
            x.ty.describe()
        ));
    }
    let shape = x
        .ty
        .shape
        .iter()
        .zip(&reps)
        .map(|(&d, &r)| {
            let r = u64::try_from(r).map_err(|_| format!("reps {reps:?} has a negative entry"))?;
            Ok(d.map(|d| d * r))
        })
        .collect::<Result<Vec<Dim>, String>>()?;
    let ty = TensorType {
        dtype: x.ty.dtype,
        shape,
    };
    let value = (|| {
        let v = x.value.as_ref()?;
        let in_shape = x.ty.known_shape()?;
        let out_shape = ty.known_shape()?;
        if out_shape.iter().product::<u64>() > MAX_FOLDED as u64 {
            return None;
        }
        let select: Vec<Vec<usize>> = out_shape
            .iter()
            .zip(&in_shape)
            .map(|(&o, &i)| (0..o as usize).map(|k| k % i as usize).collect())
            .collect();
        Some(v.pick(&gather_positions(&in_shape, &select)))
    })();
    Ok(Operand::maybe(ty, value))
}

pub(super) fn pad(inputs: &Inputs<'_>) -> Result<Operand, String> {
    let x = inputs.tensor("x")?;
    let rank = x.rank();
    let pad_operand = inputs.required("pad")?;
    if pad_operand.value.is_none() {
        // Padding computed at run time: the padded axes are unknown.
        let padded = pad_operand
            .ty
            .shape
            .first()
            .copied()
            .flatten()
            .unwrap_or(2 * rank as u64) as usize
            / 2;
        let mut shape = x.shape.clone();
        for d in shape.iter_mut().skip(rank.saturating_sub(padded)) {
            *d = None;
        }
        return Ok(Operand::tensor(TensorType {
            dtype: x.dtype,
            shape,
        }));
    }
    let pad = inputs.i64_vec("pad")?;
    if pad.len() % 2 != 0 || pad.len() / 2 > rank {
        return Err(format!(
            "pad {pad:?} must hold a (before, after) pair for at most {rank} trailing axes"
        ));
    }
    let padded = pad.len() / 2;
    let mut shape = x.shape.clone();
    for k in 0..padded {
        let axis = rank - padded + k;
        let (before, after) = (pad[2 * k], pad[2 * k + 1]);
        if before < 0 || after < 0 {
            return Err(format!("pad {pad:?} has a negative entry"));
        }
        shape[axis] = shape[axis].map(|d| d + before as u64 + after as u64);
    }
    Ok(Operand::tensor(TensorType {
        dtype: x.dtype,
        shape,
    }))
}

pub(super) fn crop(inputs: &Inputs<'_>) -> Result<Operand, String> {
    let x = inputs.tensor("x")?;
    let rank = x.rank();
    if rank < 2 {
        return Err(format!(
            "x of type {} has no height and width",
            x.describe()
        ));
    }
    let mut shape = x.shape.clone();
    for (param, axis) in [("crop_height", rank - 2), ("crop_width", rank - 1)] {
        let crop = inputs.i64_vec(param)?;
        let [a, b] = crop[..] else {
            return Err(format!("{param} {crop:?} is not two numbers"));
        };
        if let Some(d) = shape[axis] {
            let left = d as i64 - a - b;
            if a < 0 || b < 0 || left < 0 {
                return Err(format!("{param} {crop:?} does not fit {}", x.describe()));
            }
            shape[axis] = Some(left as u64);
        }
    }
    Ok(Operand::tensor(TensorType {
        dtype: x.dtype,
        shape,
    }))
}

/// The type of a fill value: its own, fp32 by default.
fn fill_value(inputs: &Inputs<'_>) -> Result<(DataType, Option<Elements>), String> {
    match inputs.get("value")? {
        None => Ok((DataType::Float32, Some(Elements::Float(vec![0.0])))),
        Some(v) => Ok((v.ty.dtype, v.value.clone())),
    }
}

/// `count` copies of the single element of `value`.
fn repeated(value: &Elements, count: u64) -> Option<Elements> {
    if value.len() != 1 || count > MAX_FOLDED as u64 {
        return None;
    }
    Some(value.pick(&vec![0; count as usize]))
}

pub(super) fn fill(inputs: &Inputs<'_>) -> Result<Operand, String> {
    let shape_param = inputs.required("shape")?;
    let shape: Vec<Dim> = shape_entries(shape_param)?
        .into_iter()
        .map(|d| match d {
            Some(d) if d < 0 => Err(format!("shape has a negative entry {d}")),
            d => Ok(d.map(|d| d as u64)),
        })
        .collect::<Result<_, _>>()?;
    let (dtype, value) = fill_value(inputs)?;
    let ty = TensorType { dtype, shape };
    let folded = value.and_then(|v| repeated(&v, ty.element_count()?));
    Ok(Operand::maybe(ty, folded))
}

pub(super) fn fill_like(inputs: &Inputs<'_>) -> Result<Operand, String> {
    let reference = inputs.tensor("ref_tensor")?;
    let (dtype, value) = fill_value(inputs)?;
    let ty = reference.with_dtype(dtype);
    let folded = value.and_then(|v| repeated(&v, ty.element_count()?));
    Ok(Operand::maybe(ty, folded))
}

pub(super) fn shape_of(inputs: &Inputs<'_>) -> Result<Operand, String> {
    let x = inputs.required("x")?;
    let dims: Vec<Option<i64>> = x.ty.shape.iter().map(|d| d.map(|d| d as i64)).collect();
    Ok(Operand::with_value(
        TensorType::known(DataType::Int32, &[dims.len() as u64]),
        Elements::Int(dims),
    ))
}

pub(super) fn range_1d(inputs: &Inputs<'_>) -> Result<Operand, String> {
    let (start, end, step) = (
        inputs.required("start")?,
        inputs.required("end")?,
        inputs.required("step")?,
    );
    // The inputs' type (coremltools requires one for all three).
    let dtype = [start, end, step]
        .iter()
        .map(|o| o.ty.dtype)
        .find(|&d| is_float(d))
        .unwrap_or(start.ty.dtype);
    let scalar = |o: &Operand| {
        o.value
            .as_ref()
            .and_then(Elements::to_floats)
            .filter(|v| v.len() == 1)
            .map(|v| v[0])
    };
    let (Some(s), Some(e), Some(d)) = (scalar(start), scalar(end), scalar(step)) else {
        return Ok(Operand::tensor(TensorType {
            dtype,
            shape: vec![None],
        }));
    };
    if d == 0.0 {
        return Err("step is 0".to_string());
    }
    let count = ((e - s) / d).ceil().max(0.0) as u64;
    let ty = TensorType::known(dtype, &[count]);
    let value = (count <= MAX_FOLDED as u64).then(|| {
        if dtype == DataType::Int32 {
            Elements::ints((0..count).map(|k| (s + k as f64 * d) as i64))
        } else {
            Elements::Float(
                (0..count)
                    .map(|k| (s + k as f64 * d) as f32 as f64)
                    .collect(),
            )
        }
    });
    Ok(Operand::maybe(ty, value))
}
