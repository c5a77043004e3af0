//! Shape arithmetic that the interpreter and shape inference share, so
//! that an op's result has the shape its type rule promised.

/// Normalizes a possibly negative axis of a tensor of rank `rank`.
pub fn axis(axis: i64, rank: usize) -> Result<usize, String> {
    let r = rank as i64;
    if axis < -r || axis >= r {
        return Err(format!(
            "axis {axis} is out of range for a tensor of rank {rank}"
        ));
    }
    Ok(if axis < 0 { axis + r } else { axis } as usize)
}

/// The shape `a` and `b` broadcast to, numpy's rules.
pub fn broadcast_shape(a: &[usize], b: &[usize]) -> Result<Vec<usize>, String> {
    let rank = a.len().max(b.len());
    let mut shape = vec![0; rank];
    for (i, out) in shape.iter_mut().enumerate() {
        let da = if i + a.len() >= rank {
            a[i + a.len() - rank]
        } else {
            1
        };
        let db = if i + b.len() >= rank {
            b[i + b.len() - rank]
        } else {
            1
        };
        *out = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return Err(format!("shapes {a:?} and {b:?} do not broadcast")),
        };
    }
    Ok(shape)
}

/// The shape `reshape` gives a tensor of shape `current` for its `shape`
/// parameter `target`, as iOS 17 defines it: a 0 copies the dimension of
/// `current` at the same place counted from the right (1 where `current`
/// has none), and one -1 takes what the other dimensions leave.
pub fn reshape_target(current: &[usize], target: &[i64]) -> Result<Vec<usize>, String> {
    let mut target = target.to_vec();
    let (rank, length) = (current.len(), target.len());
    for (i, t) in target.iter_mut().enumerate() {
        if *t == 0 {
            *t = (i + rank)
                .checked_sub(length)
                .map_or(1, |j| current[j] as i64);
        }
    }
    let unknown: Vec<usize> = (0..target.len()).filter(|&i| target[i] == -1).collect();
    if unknown.len() > 1 {
        return Err(format!("shape {target:?} has more than one -1"));
    }
    let total: usize = current.iter().product();
    if let [i] = unknown[..] {
        let known = target
            .iter()
            .enumerate()
            .filter(|&(j, _)| j != i)
            .try_fold(1i64, |n, (_, &v)| n.checked_mul(v))
            .unwrap_or(0);
        if known <= 0 || total as i64 % known != 0 {
            return Err(format!("cannot reshape shape {current:?} to {target:?}"));
        }
        target[i] = total as i64 / known;
    }
    let shape = target
        .iter()
        .map(|&v| usize::try_from(v))
        .collect::<Result<Vec<usize>, _>>()
        .map_err(|_| format!("shape {target:?} has a negative entry"))?;
    let count = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
    if count != Some(total) {
        return Err(format!(
            "cannot reshape {total} elements of shape {current:?} to {shape:?}"
        ));
    }
    Ok(shape)
}

/// One axis of a numpy-style slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AxisSlice {
    /// The first index taken.
    pub start: isize,
    /// The step between indices taken (never 0).
    pub step: isize,
    /// How many indices are taken.
    pub len: usize,
    /// Whether the axis is indexed (and removed) rather than sliced.
    pub squeeze: bool,
}

/// Python's `slice(begin, end, stride).indices(dim)` for each axis, with
/// the masks of `slice_by_index` (a squeezed axis takes index `begin`).
#[allow(clippy::too_many_arguments)]
pub fn resolve_slices(
    shape: &[usize],
    begin: &[i64],
    end: &[i64],
    stride: Option<&[i64]>,
    begin_mask: Option<&[bool]>,
    end_mask: Option<&[bool]>,
    squeeze_mask: Option<&[bool]>,
) -> Result<Vec<AxisSlice>, String> {
    let rank = shape.len();
    let lengths_ok = begin.len() == rank
        && end.len() == rank
        && stride.is_none_or(|s| s.len() == rank)
        && begin_mask.is_none_or(|m| m.len() == rank)
        && end_mask.is_none_or(|m| m.len() == rank)
        && squeeze_mask.is_none_or(|m| m.len() == rank);
    if !lengths_ok {
        return Err(format!(
            "begin, end, stride and masks must each have {rank} entries for a tensor of shape {shape:?}"
        ));
    }
    let mut slices = Vec::with_capacity(rank);
    for i in 0..rank {
        let dim = shape[i] as isize;
        let begin_given = !begin_mask.is_some_and(|m| m[i]);
        let end_given = !end_mask.is_some_and(|m| m[i]);
        if squeeze_mask.is_some_and(|m| m[i]) {
            let mut index = if begin_given { begin[i] as isize } else { 0 };
            if index < 0 {
                index += dim;
            }
            if index < 0 || index >= dim {
                return Err(format!(
                    "index {} is out of range for axis {i} of size {dim}",
                    begin[i]
                ));
            }
            slices.push(AxisSlice {
                start: index,
                step: 1,
                len: 1,
                squeeze: true,
            });
            continue;
        }
        let step = stride.map_or(1, |s| s[i]) as isize;
        if step == 0 {
            return Err(format!("stride 0 on axis {i}"));
        }
        let (lower, upper) = if step > 0 { (0, dim) } else { (-1, dim - 1) };
        let clamp = |v: isize| {
            if v < 0 {
                (v + dim).max(lower)
            } else {
                v.min(upper)
            }
        };
        let start = if begin_given {
            clamp(begin[i] as isize)
        } else if step > 0 {
            lower
        } else {
            upper
        };
        let stop = if end_given {
            clamp(end[i] as isize)
        } else if step > 0 {
            upper
        } else {
            lower
        };
        let len = if step > 0 && stop > start {
            ((stop - start - 1) / step + 1) as usize
        } else if step < 0 && start > stop {
            ((start - stop - 1) / -step + 1) as usize
        } else {
            0
        };
        slices.push(AxisSlice {
            start,
            step,
            len,
            squeeze: false,
        });
    }
    Ok(slices)
}

/// One positive number per spatial axis from parameter `name` (`strides`,
/// `dilations`, `kernel_sizes`): `given`, or `default` for each axis when
/// absent.
pub fn per_axis(
    name: &str,
    given: Option<Vec<i64>>,
    spatial: usize,
    default: i64,
) -> Result<Vec<usize>, String> {
    let values = given.unwrap_or_else(|| vec![default; spatial]);
    if values.len() != spatial || values.iter().any(|&v| v < 1) {
        return Err(format!(
            "{name} {values:?} must be {spatial} positive numbers"
        ));
    }
    Ok(values.into_iter().map(|v| v as usize).collect())
}

/// Where a sliding window (`conv`, the pools) goes along each spatial
/// axis: the padding before and after, and the output extent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Geometry {
    /// Padding before each spatial axis.
    pub before: Vec<usize>,
    /// Padding after each spatial axis.
    pub after: Vec<usize>,
    /// The output extent of each spatial axis.
    pub output: Vec<usize>,
}

/// The geometry of a window of `kernel` (before `dilations`) moving by
/// `strides` over `input`, padded as `pad_type` says (`custom`: `pad`, a
/// before and after pair per axis).
///
/// The output size follows coremltools' `spatial_dimensions_out_shape`:
/// `floor((in + pad - effective_kernel) / stride) + 1`, or with ceil mode
/// `floor((in + pad - effective_kernel + stride - 1) / stride) + 1`, less
/// one when that last window would start in the right padding.
pub fn sliding_window(
    input: &[usize],
    kernel: &[usize],
    strides: &[usize],
    dilations: &[usize],
    pad_type: &str,
    pad: &[i64],
    ceil_mode: bool,
) -> Result<Geometry, String> {
    let spatial = input.len();
    if kernel.len() != spatial || strides.len() != spatial || dilations.len() != spatial {
        return Err(format!(
            "kernel {kernel:?}, strides {strides:?} and dilations {dilations:?} must each have \
             {spatial} entries"
        ));
    }
    if kernel.contains(&0) || strides.contains(&0) || dilations.contains(&0) {
        return Err(format!(
            "kernel {kernel:?}, strides {strides:?} and dilations {dilations:?} must be positive"
        ));
    }
    let mut geometry = Geometry {
        before: vec![0; spatial],
        after: vec![0; spatial],
        output: vec![0; spatial],
    };
    for d in 0..spatial {
        let effective = (kernel[d] - 1) * dilations[d] + 1;
        let (b, a) = match pad_type {
            "valid" => (0, 0),
            "custom" => {
                if pad.len() != 2 * spatial || pad.iter().any(|&p| p < 0) {
                    return Err(format!(
                        "pad {pad:?} must be {} non-negative numbers",
                        2 * spatial
                    ));
                }
                (pad[2 * d] as usize, pad[2 * d + 1] as usize)
            }
            "same" | "same_lower" => {
                let total = (input[d].div_ceil(strides[d]).max(1) - 1) * strides[d] + effective;
                let total = total.saturating_sub(input[d]);
                let small = total / 2;
                if pad_type == "same" {
                    (small, total - small)
                } else {
                    (total - small, small)
                }
            }
            other => {
                return Err(format!(
                    "unknown pad_type {other:?} (expected valid, same, same_lower or custom)"
                ))
            }
        };
        let padded = input[d] + b + a;
        if padded < effective {
            return Err(format!(
                "the padded input ({padded}) is smaller than the kernel ({effective}) along spatial axis {d}"
            ));
        }
        let mut out = if ceil_mode {
            (padded - effective).div_ceil(strides[d]) + 1
        } else {
            (padded - effective) / strides[d] + 1
        };
        // A last window starting in the right padding reads nothing of
        // the input: coremltools (and torch) drop it.
        if ceil_mode && b + a > 0 && (out - 1) * strides[d] >= input[d] + b {
            out -= 1;
        }
        geometry.before[d] = b;
        geometry.after[d] = a;
        geometry.output[d] = out;
    }
    Ok(geometry)
}
