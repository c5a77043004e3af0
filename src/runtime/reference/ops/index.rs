//! Ops that address elements by computed indices: `gather_nd`, the
//! `scatter` family, `topk`, `argsort`, `cumsum`, `one_hot`.
//!
//! Indices may be negative (counted from the end, as coremltools allows);
//! one out of range is an error naming it, never a wrapped read.

use ndarray::{ArcArray, ArrayD, Axis, IxDyn};

use super::linalg::unravel;
use super::{any_tensor, axis, Args};
use crate::runtime::reference::value::{OpResult, Value};

/// Resolves index `index` into an axis of length `length`.
fn resolve(index: i64, length: usize, what: &str) -> OpResult<usize> {
    let resolved = if index < 0 {
        index + length as i64
    } else {
        index
    };
    if resolved < 0 || resolved >= length as i64 {
        return Err(format!(
            "{what} index {index} is out of range for an axis of length {length}"
        ));
    }
    Ok(resolved as usize)
}

/// Row-major strides of `shape`.
fn strides_of(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1usize; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        strides[d] = strides[d + 1] * shape[d + 1];
    }
    strides
}

/// The flat offsets into `shape` that the `[..., K]` index tuples of
/// `indices` address (each the start of a block of `shape[K..]`), after
/// `batch_dims` leading axes shared by both.
fn tuple_offsets(
    indices: &ArcArray<i32, IxDyn>,
    shape: &[usize],
    batch_dims: usize,
) -> OpResult<(Vec<usize>, usize)> {
    let is = indices.shape();
    let Some(&depth) = is.last() else {
        return Err("indices must have rank at least 1".to_string());
    };
    if is.len() <= batch_dims
        || batch_dims + depth > shape.len()
        || is[..batch_dims] != shape[..batch_dims]
    {
        return Err(format!(
            "indices of shape {is:?} do not address a tensor of shape {shape:?} with batch_dims {batch_dims}"
        ));
    }
    let strides = strides_of(shape);
    let block: usize = shape[batch_dims + depth..].iter().product();
    let indices = indices.as_standard_layout();
    let flat = indices
        .as_slice()
        .ok_or("indices are not contiguous (interpreter bug)")?;
    let tuples: usize = is[..is.len() - 1].iter().product();
    let per_batch = tuples / is[..batch_dims].iter().product::<usize>().max(1);
    let mut offsets = Vec::with_capacity(tuples);
    for t in 0..tuples {
        let batch_position = unravel(t / per_batch.max(1), &is[..batch_dims]);
        let mut offset: usize = batch_position
            .iter()
            .zip(&strides)
            .map(|(p, s)| p * s)
            .sum();
        for k in 0..depth {
            let axis = batch_dims + k;
            offset +=
                resolve(i64::from(flat[t * depth + k]), shape[axis], "gather_nd")? * strides[axis];
        }
        offsets.push(offset);
    }
    Ok((offsets, block))
}

fn gather_nd_array<T: Copy>(
    x: &ArcArray<T, IxDyn>,
    indices: &ArcArray<i32, IxDyn>,
    batch_dims: usize,
) -> OpResult<ArcArray<T, IxDyn>> {
    let shape = x.shape();
    let (offsets, block) = tuple_offsets(indices, shape, batch_dims)?;
    let depth = *indices.shape().last().unwrap_or(&0);
    let x = x.as_standard_layout();
    let data = x
        .as_slice()
        .ok_or("x is not contiguous (interpreter bug)")?;
    let mut out = Vec::with_capacity(offsets.len() * block);
    for offset in offsets {
        out.extend_from_slice(&data[offset..offset + block]);
    }
    let is = indices.shape();
    let out_shape = [&is[..is.len() - 1], &shape[batch_dims + depth..]].concat();
    ArrayD::from_shape_vec(IxDyn(&out_shape), out)
        .map(ArrayD::into_shared)
        .map_err(|e| e.to_string())
}

/// `gather_nd`: the slices of `x` at the index tuples in the last axis of
/// `indices`.
pub(super) fn gather_nd(args: &Args<'_>) -> OpResult<Value> {
    let indices = args.required("indices")?.to_int()?;
    let batch_dims = args.opt_i64("batch_dims")?.unwrap_or(0).max(0) as usize;
    Ok(any_tensor!(args.required("x")?, x => gather_nd_array(x, &indices, batch_dims)))
}

/// How a scatter combines an update with the element it lands on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Update,
    Add,
    Sub,
    Mul,
    Div,
    Max,
    Min,
}

impl Mode {
    fn parse(args: &Args<'_>) -> OpResult<Mode> {
        Ok(match args.opt_str("mode")?.unwrap_or("add") {
            "update" => Mode::Update,
            "add" => Mode::Add,
            "sub" => Mode::Sub,
            "mul" => Mode::Mul,
            "div" => Mode::Div,
            "max" => Mode::Max,
            "min" => Mode::Min,
            other => {
                return Err(format!(
                    "mode {other:?} is not one of update, add, sub, mul, div, max, min"
                ))
            }
        })
    }
}

/// Element types a scatter can combine.
trait Combine: Copy {
    fn combine(self, update: Self, mode: Mode) -> Self;
}

impl Combine for f32 {
    fn combine(self, u: f32, mode: Mode) -> f32 {
        match mode {
            Mode::Update => u,
            Mode::Add => self + u,
            Mode::Sub => self - u,
            Mode::Mul => self * u,
            Mode::Div => self / u,
            Mode::Max => self.max(u),
            Mode::Min => self.min(u),
        }
    }
}

impl Combine for i32 {
    fn combine(self, u: i32, mode: Mode) -> i32 {
        match mode {
            Mode::Update => u,
            Mode::Add => self.wrapping_add(u),
            Mode::Sub => self.wrapping_sub(u),
            Mode::Mul => self.wrapping_mul(u),
            Mode::Div => self.checked_div(u).unwrap_or(0),
            Mode::Max => self.max(u),
            Mode::Min => self.min(u),
        }
    }
}

/// Applies `updates` (a row-major block per entry of `targets`) at the
/// flat offsets `targets` of a copy of `data`, in order.
fn scatter_blocks<T: Combine>(
    data: &ArcArray<T, IxDyn>,
    targets: &[usize],
    updates: &ArcArray<T, IxDyn>,
    block: usize,
    mode: Mode,
) -> OpResult<ArcArray<T, IxDyn>> {
    if updates.len() != targets.len() * block {
        return Err(format!(
            "updates of shape {:?} do not hold {} blocks of {block}",
            updates.shape(),
            targets.len()
        ));
    }
    let mut out = data.as_standard_layout().into_owned();
    let out_data = out
        .as_slice_mut()
        .ok_or("data is not contiguous (interpreter bug)")?;
    let updates = updates.as_standard_layout();
    let updates = updates
        .as_slice()
        .ok_or("updates are not contiguous (interpreter bug)")?;
    for (t, &offset) in targets.iter().enumerate() {
        for (slot, &u) in out_data[offset..offset + block]
            .iter_mut()
            .zip(&updates[t * block..(t + 1) * block])
        {
            *slot = slot.combine(u, mode);
        }
    }
    Ok(out.into_shared())
}

/// Runs `$body` over data and updates of one element type, float or int.
macro_rules! scatter_typed {
    ($data:expr, $updates:expr, |$d:ident, $u:ident| $body:expr) => {
        match $data {
            Value::Int($d) => {
                let $u = $updates.to_int()?;
                Value::Int($body?)
            }
            other => {
                let $d = &other.to_float()?;
                let $u = $updates.to_float()?;
                Value::Float($body?)
            }
        }
    };
}

/// The parameters every scatter op shares.
struct Scatter<'a> {
    data: &'a Value,
    indices: ArcArray<i32, IxDyn>,
    updates: &'a Value,
    mode: Mode,
}

impl<'a> Scatter<'a> {
    fn parse(args: &Args<'a>) -> OpResult<Scatter<'a>> {
        Ok(Scatter {
            data: args.required("data")?,
            indices: args.required("indices")?.to_int()?,
            updates: args.required("updates")?,
            mode: Mode::parse(args)?,
        })
    }

    /// `data` with the `block`-long runs of `updates` combined at the flat
    /// offsets `targets`.
    fn apply(&self, targets: &[usize], block: usize) -> OpResult<Value> {
        let mode = self.mode;
        Ok(scatter_typed!(self.data, self.updates, |d, u| {
            scatter_blocks(d, targets, &u, block, mode)
        }))
    }
}

/// `scatter`: `updates[..., i, ...]` combined into
/// `data[..., indices[i], ...]` along `axis`.
pub(super) fn scatter(args: &Args<'_>) -> OpResult<Value> {
    let scatter = Scatter::parse(args)?;
    let (indices, updates) = (&scatter.indices, scatter.updates);
    let shape = scatter.data.shape();
    let along = axis(args.opt_i64("axis")?.unwrap_or(0), shape.len())?;
    if indices.ndim() != 1 {
        return Err(format!(
            "indices of shape {:?} are not a vector",
            indices.shape()
        ));
    }
    let expected = [&shape[..along], indices.shape(), &shape[along + 1..]].concat();
    if updates.shape() != expected {
        return Err(format!(
            "updates have shape {:?}; scattering {} indices along axis {along} of shape {shape:?} takes {expected:?}",
            updates.shape(),
            indices.len()
        ));
    }
    // Each (outer position, index) pair addresses one block of the axes
    // after `along`.
    let outer: usize = shape[..along].iter().product();
    let block: usize = shape[along + 1..].iter().product();
    let mut targets = Vec::with_capacity(outer * indices.len());
    for o in 0..outer {
        for &i in indices.iter() {
            let i = resolve(i64::from(i), shape[along], "scatter")?;
            targets.push((o * shape[along] + i) * block);
        }
    }
    scatter.apply(&targets, block)
}

/// `scatter_nd`: each `updates` block combined at the index tuple in the
/// last axis of `indices`.
pub(super) fn scatter_nd(args: &Args<'_>) -> OpResult<Value> {
    let scatter = Scatter::parse(args)?;
    let (targets, block) = tuple_offsets(&scatter.indices, &scatter.data.shape(), 0)?;
    scatter.apply(&targets, block)
}

/// `scatter_along_axis`: each element of `updates` combined at the same
/// position of `data`, except along `axis`, where `indices` says where.
pub(super) fn scatter_along_axis(args: &Args<'_>) -> OpResult<Value> {
    let scatter = Scatter::parse(args)?;
    let (indices, updates) = (&scatter.indices, scatter.updates);
    let shape = scatter.data.shape();
    let along = axis(args.opt_i64("axis")?.unwrap_or(0), shape.len())?;
    let is = indices.shape().to_vec();
    if is != updates.shape()
        || is.len() != shape.len()
        || (0..shape.len()).any(|d| d != along && is[d] != shape[d])
    {
        return Err(format!(
            "indices of shape {is:?} and updates of shape {:?} do not match data of shape {shape:?} off axis {along}",
            updates.shape()
        ));
    }
    let strides = strides_of(&shape);
    let indices = indices.as_standard_layout();
    let mut targets = Vec::with_capacity(indices.len());
    for (n, &i) in indices.iter().enumerate() {
        let mut position = unravel(n, &is);
        position[along] = resolve(i64::from(i), shape[along], "scatter_along_axis")?;
        targets.push(position.iter().zip(&strides).map(|(p, s)| p * s).sum());
    }
    scatter.apply(&targets, 1)
}

/// The order of the entries of each lane along `axis`: `(lane, position)`
/// pairs sorted by value, descending unless `ascending`, ties in position
/// order (a stable sort, as torch's).
fn sorted_lanes(x: &ArcArray<f32, IxDyn>, along: usize, ascending: bool) -> Vec<Vec<(f32, usize)>> {
    x.lanes(Axis(along))
        .into_iter()
        .map(|lane| {
            let mut entries: Vec<(f32, usize)> = lane.iter().copied().zip(0..lane.len()).collect();
            entries.sort_by(|a, b| {
                let order = a.0.partial_cmp(&b.0).unwrap_or_else(|| {
                    // NaN sorts as the largest value, as in torch.
                    a.0.is_nan().cmp(&b.0.is_nan())
                });
                if ascending {
                    order
                } else {
                    order.reverse()
                }
            });
            entries
        })
        .collect()
}

/// Builds an array of `shape` whose lanes along `along` are `lanes` (in
/// the row-major order of the other axes, as `lanes()` visits them).
fn from_lanes<T: Copy + Default>(
    shape: &[usize],
    along: usize,
    lanes: impl Iterator<Item = Vec<T>>,
) -> ArcArray<T, IxDyn> {
    let mut out = ArrayD::<T>::default(IxDyn(shape));
    for (mut target, lane) in out.lanes_mut(Axis(along)).into_iter().zip(lanes) {
        for (slot, v) in target.iter_mut().zip(lane) {
            *slot = v;
        }
    }
    out.into_shared()
}

/// `topk`: the `k` largest (or smallest) entries along `axis` and their
/// indices.
pub(super) fn topk(args: &Args<'_>) -> OpResult<Vec<Value>> {
    let x = args.required("x")?;
    let shape = x.shape();
    let along = axis(args.opt_i64("axis")?.unwrap_or(-1), shape.len())?;
    let k = args.opt_i64("k")?.unwrap_or(1);
    if k < 0 || k as usize > shape[along] {
        return Err(format!(
            "k {k} is not within the {} entries of axis {along}",
            shape[along]
        ));
    }
    let k = k as usize;
    let ascending = args.opt_bool("ascending")?.unwrap_or(false);
    let return_indices = args.opt_bool("return_indices")?.unwrap_or(true);
    let floats = x.to_float()?;
    let lanes = sorted_lanes(&floats, along, ascending);
    let mut out_shape = shape.clone();
    out_shape[along] = k;
    let index_lanes = lanes
        .iter()
        .map(|lane| lane[..k].iter().map(|&(_, i)| i as i32).collect());
    let indices = from_lanes(&out_shape, along, index_lanes);
    // Values are taken from x itself, so an integer tensor stays exact.
    let values = any_tensor!(x, a => Ok::<_, String>({
        let lanes = a.lanes(Axis(along)).into_iter().zip(&lanes).map(|(lane, order)| {
            order[..k].iter().map(|&(_, i)| lane[i]).collect::<Vec<_>>()
        });
        from_lanes(&out_shape, along, lanes)
    }));
    let mut results = vec![values];
    if return_indices {
        results.push(Value::Int(indices));
    }
    Ok(results)
}

/// `argsort`: the indices that sort each lane along `axis`.
pub(super) fn argsort(args: &Args<'_>) -> OpResult<Value> {
    let x = args.float("x")?;
    let along = axis(args.opt_i64("axis")?.unwrap_or(-1), x.ndim())?;
    let ascending = args.opt_bool("ascending")?.unwrap_or(false);
    let lanes = sorted_lanes(&x, along, ascending);
    let index_lanes = lanes
        .into_iter()
        .map(|lane| lane.into_iter().map(|(_, i)| i as i32).collect());
    Ok(Value::Int(from_lanes(x.shape(), along, index_lanes)))
}

fn cumulative<T: Copy + std::ops::Add<Output = T> + Default>(
    x: &ArcArray<T, IxDyn>,
    along: usize,
    exclusive: bool,
    reverse: bool,
) -> ArcArray<T, IxDyn> {
    let mut out = x.to_owned();
    for mut lane in out.lanes_mut(Axis(along)) {
        let n = lane.len();
        let mut total = T::default();
        for step in 0..n {
            let i = if reverse { n - 1 - step } else { step };
            let v = lane[i];
            if exclusive {
                lane[i] = total;
                total = total + v;
            } else {
                total = total + v;
                lane[i] = total;
            }
        }
    }
    out.into_shared()
}

/// `cumsum` along `axis`, optionally exclusive and from the end.
pub(super) fn cumsum(args: &Args<'_>) -> OpResult<Value> {
    let x = args.required("x")?;
    let along = axis(args.opt_i64("axis")?.unwrap_or(0), x.shape().len())?;
    let exclusive = args.opt_bool("exclusive")?.unwrap_or(false);
    let reverse = args.opt_bool("reverse")?.unwrap_or(false);
    Ok(match x {
        Value::Int(a) => Value::Int(cumulative(a, along, exclusive, reverse)),
        other => Value::Float(cumulative(&other.to_float()?, along, exclusive, reverse)),
    })
}

/// `one_hot`: a new axis of `one_hot_vector_size` entries, `on_value` at
/// each index and `off_value` elsewhere (an index out of range gives an
/// all-off vector, as in Core ML and TensorFlow).
pub(super) fn one_hot(args: &Args<'_>) -> OpResult<Value> {
    let indices = args.required("indices")?.to_int()?;
    let size = args.opt_i64("one_hot_vector_size")?.unwrap_or(0);
    let size =
        usize::try_from(size).map_err(|_| format!("one_hot_vector_size {size} is negative"))?;
    let rank = indices.ndim() + 1;
    let along = axis(args.opt_i64("axis")?.unwrap_or(-1), rank)?;
    let mut shape = indices.shape().to_vec();
    shape.insert(along, size);
    super::created_count(&shape)?;
    let inner: usize = indices.shape()[along..].iter().product();
    let indices = indices.as_standard_layout();
    let hot = |n: usize| -> Option<usize> {
        // Output element n's position: (outer, position on the new axis,
        // inner); it is on where the index at (outer, inner) says so.
        let (outer, rest) = (n / (size * inner), n % (size * inner));
        let (position, inner_at) = (rest / inner, rest % inner);
        let index = indices.as_slice()?[outer * inner + inner_at];
        (i64::from(index) == position as i64).then_some(n)
    };
    let count: usize = shape.iter().product();
    let on = args.get("on_value")?;
    let off = args.get("off_value")?;
    match (on, off) {
        (Some(Value::Float(_)), _) | (_, Some(Value::Float(_))) => {
            let on = on.map(Value::to_f32_scalar).transpose()?.unwrap_or(1.0);
            let off = off.map(Value::to_f32_scalar).transpose()?.unwrap_or(0.0);
            let data = (0..count).map(|n| if hot(n).is_some() { on } else { off });
            Value::float(shape, data.collect())
        }
        _ => {
            let on = on.map(Value::to_i64_scalar).transpose()?.unwrap_or(1) as i32;
            let off = off.map(Value::to_i64_scalar).transpose()?.unwrap_or(0) as i32;
            let data = (0..count).map(|n| if hot(n).is_some() { on } else { off });
            Value::int(shape, data.collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ints(shape: &[usize], data: Vec<i32>) -> ArcArray<i32, IxDyn> {
        ArrayD::from_shape_vec(IxDyn(shape), data)
            .unwrap()
            .into_shared()
    }

    #[test]
    fn gather_nd_reads_slices_and_negative_indices() {
        let x = ints(&[2, 3], vec![0, 1, 2, 10, 11, 12]);
        // Whole rows, then single elements.
        let rows = gather_nd_array(&x, &ints(&[2, 1], vec![1, -2]), 0).unwrap();
        assert_eq!(rows.shape(), [2, 3]);
        assert_eq!(
            rows.iter().copied().collect::<Vec<_>>(),
            [10, 11, 12, 0, 1, 2]
        );
        let points = gather_nd_array(&x, &ints(&[2, 2], vec![1, 2, 0, -1]), 0).unwrap();
        assert_eq!(points.iter().copied().collect::<Vec<_>>(), [12, 2]);
        assert!(gather_nd_array(&x, &ints(&[1, 1], vec![2]), 0).is_err());
        // batch_dims 1: row b's own index.
        let batched = gather_nd_array(&x, &ints(&[2, 1], vec![2, 0]), 1).unwrap();
        assert_eq!(batched.iter().copied().collect::<Vec<_>>(), [2, 10]);
    }

    #[test]
    fn scatter_blocks_apply_in_order() {
        let data = ints(&[4], vec![1, 1, 1, 1]);
        let updates = ints(&[3], vec![5, 7, 2]);
        let added = scatter_blocks(&data, &[0, 0, 3], &updates, 1, Mode::Add).unwrap();
        assert_eq!(added.iter().copied().collect::<Vec<_>>(), [13, 1, 1, 3]);
        let replaced = scatter_blocks(&data, &[0, 0, 3], &updates, 1, Mode::Update).unwrap();
        assert_eq!(replaced.iter().copied().collect::<Vec<_>>(), [7, 1, 1, 2]);
    }

    #[test]
    fn cumulative_sums_every_way() {
        let x = ints(&[4], vec![1, 2, 3, 4]);
        let run = |exclusive, reverse| {
            cumulative(&x, 0, exclusive, reverse)
                .iter()
                .copied()
                .collect::<Vec<_>>()
        };
        assert_eq!(run(false, false), [1, 3, 6, 10]);
        assert_eq!(run(true, false), [0, 1, 3, 6]);
        assert_eq!(run(false, true), [10, 9, 7, 4]);
        assert_eq!(run(true, true), [9, 7, 4, 0]);
    }

    #[test]
    fn sorting_is_stable_and_puts_nan_first_when_descending() {
        let x = ArrayD::from_shape_vec(IxDyn(&[5]), vec![1.0, f32::NAN, 3.0, 1.0, -2.0])
            .unwrap()
            .into_shared();
        let order = |ascending| {
            sorted_lanes(&x, 0, ascending)[0]
                .iter()
                .map(|&(_, i)| i)
                .collect::<Vec<_>>()
        };
        assert_eq!(order(false), [1, 2, 0, 3, 4]);
        assert_eq!(order(true), [4, 0, 3, 2, 1]);
    }
}
