//! `einsum`, `space_to_batch`, `batch_to_space`, `flatten2d`,
//! `reshape_like` and `sliding_windows` (issue 23), as coremltools 9.0
//! defines them; the parameter rules shape inference shares are the format
//! crate's `mil::op_rules`.
//!
//! `space_to_batch` and `batch_to_space` are TensorFlow's `SpaceToBatchND`
//! and `BatchToSpaceND` (coremltools' TensorFlow frontend emits them for
//! those, transposed to channels first): the block offset `(i, j)` of a
//! spatial position is the major part of the batch index,
//! `out[(i·B₁ + j)·N + n, c, h, w] = padded[n, c, h·B₀ + i, w·B₁ + j]`.

use ndarray::linalg::general_mat_mul;
use ndarray::{s, ArcArray, Array4, ArrayD, Axis, IxDyn, Slice};

use super::shape::reshaped;
use super::{any_tensor, axis, created_count, Args};
use crate::runtime::reference::value::{OpResult, Value};
use coreml_multifunction_format::mil::op_rules::{
    block_params, einsum_rank, flatten2d_split, python_slice, window_count,
};

/// The one dimension of two that broadcast: equal, or one of them 1.
fn broadcast(a: usize, b: usize, what: &str) -> OpResult<usize> {
    match (a, b) {
        (x, y) if x == y => Ok(x),
        (1, y) => Ok(y),
        (x, 1) => Ok(x),
        _ => Err(format!("einsum's {what} axes {a} and {b} do not broadcast")),
    }
}

/// `x` (`[B, C, H, W₁]`, or `[C, H, W₁]`) contracted with `y`
/// (`[B, W₁, H, W₂]`, or `[W₁, H, W₂]`) over `W₁`, `B` and `H`
/// broadcasting: one matrix product per batch and `H` position.
pub(super) fn einsum(args: &Args<'_>) -> OpResult<Value> {
    let values = args.list("values")?;
    let [x, y] = values.as_slice() else {
        return Err(format!(
            "values holds {} tensors; einsum takes two",
            values.len()
        ));
    };
    let equation = args
        .opt_str("equation")?
        .ok_or("lacks its required input \"equation\"")?;
    let rank = einsum_rank(equation)?;
    let as4 = |v: &Value| -> OpResult<Array4<f32>> {
        let a = v.to_float()?;
        if a.ndim() != rank {
            return Err(format!(
                "equation {equation:?} takes rank-{rank} tensors, not shape {:?}",
                a.shape()
            ));
        }
        let mut shape = a.shape().to_vec();
        if rank == 3 {
            shape.insert(0, 1);
        }
        let four: [usize; 4] = shape.try_into().map_err(|_| "rank".to_string())?;
        a.to_owned()
            .into_shape_with_order(four)
            .map_err(|e| e.to_string())
    };
    let (x, y) = (as4(x)?, as4(y)?);
    let ([bx, c, hx, w1], [by, w1y, hy, w2]) = (x.dim().into(), y.dim().into());
    if w1 != w1y {
        return Err(format!(
            "einsum contracts {w1} elements of x with {w1y} of y"
        ));
    }
    let (batch, height) = (broadcast(bx, by, "batch")?, broadcast(hx, hy, "H")?);
    created_count(&[batch, c, height, w2])?;
    let mut out = Array4::<f32>::zeros((batch, c, height, w2));
    for b in 0..batch {
        for h in 0..height {
            let xs = x.slice(s![b % bx, .., h % hx, ..]);
            let ys = y.slice(s![b % by, .., h % hy, ..]);
            general_mat_mul(1.0, &xs, &ys, 0.0, &mut out.slice_mut(s![b, .., h, ..]));
        }
    }
    let out = out.into_dyn();
    let out = if rank == 3 {
        out.index_axis_move(Axis(0), 0)
    } else {
        out
    };
    Ok(Value::Float(out.into_shared()))
}

/// `x` (`[N, C, H, W]`) as the four dimensions.
fn nchw(shape: &[usize]) -> OpResult<[usize; 4]> {
    shape
        .try_into()
        .map_err(|_| format!("x of shape {shape:?} is not [N, C, H, W]"))
}

fn space_to_batch_of<T: Copy + Default>(
    x: &ArcArray<T, IxDyn>,
    block: [usize; 2],
    pads: [[usize; 2]; 2],
) -> OpResult<ArcArray<T, IxDyn>> {
    let [n, c, h, w] = nchw(x.shape())?;
    let (ph, pw) = (h + pads[0][0] + pads[0][1], w + pads[1][0] + pads[1][1]);
    if !ph.is_multiple_of(block[0]) || !pw.is_multiple_of(block[1]) {
        return Err(format!(
            "the padded {ph}×{pw} plane does not divide into blocks of {}×{}",
            block[0], block[1]
        ));
    }
    let (oh, ow) = (ph / block[0], pw / block[1]);
    let shape = [n * block[0] * block[1], c, oh, ow];
    created_count(&shape)?;
    let mut out = ArrayD::<T>::default(IxDyn(&shape));
    for i in 0..block[0] {
        for j in 0..block[1] {
            for b in 0..n {
                let ob = (i * block[1] + j) * n + b;
                for yy in 0..oh {
                    // The row of x this output row reads, if not padding.
                    let Some(sy) = (yy * block[0] + i)
                        .checked_sub(pads[0][0])
                        .filter(|&v| v < h)
                    else {
                        continue;
                    };
                    for xx in 0..ow {
                        let Some(sx) = (xx * block[1] + j)
                            .checked_sub(pads[1][0])
                            .filter(|&v| v < w)
                        else {
                            continue;
                        };
                        for ch in 0..c {
                            out[[ob, ch, yy, xx]] = x[[b, ch, sy, sx]];
                        }
                    }
                }
            }
        }
    }
    Ok(out.into_shared())
}

fn batch_to_space_of<T: Copy + Default>(
    x: &ArcArray<T, IxDyn>,
    block: [usize; 2],
    crops: [[usize; 2]; 2],
) -> OpResult<ArcArray<T, IxDyn>> {
    let [nb, c, h, w] = nchw(x.shape())?;
    let blocks = block[0] * block[1];
    if !nb.is_multiple_of(blocks) {
        return Err(format!(
            "a batch of {nb} does not divide into blocks of {}×{}",
            block[0], block[1]
        ));
    }
    let n = nb / blocks;
    let (fh, fw) = (h * block[0], w * block[1]);
    let (oh, ow) = (
        fh.checked_sub(crops[0][0] + crops[0][1]),
        fw.checked_sub(crops[1][0] + crops[1][1]),
    );
    let (Some(oh), Some(ow)) = (oh, ow) else {
        return Err(format!(
            "crops {crops:?} remove more than the {fh}×{fw} plane holds"
        ));
    };
    let mut out = ArrayD::<T>::default(IxDyn(&[n, c, oh, ow]));
    for b in 0..n {
        for ch in 0..c {
            for yy in 0..oh {
                let fy = yy + crops[0][0];
                for xx in 0..ow {
                    let fx = xx + crops[1][0];
                    let (i, j) = (fy % block[0], fx % block[1]);
                    let ib = (i * block[1] + j) * n + b;
                    out[[b, ch, yy, xx]] = x[[ib, ch, fy / block[0], fx / block[1]]];
                }
            }
        }
    }
    Ok(out.into_shared())
}

/// The block shape and paddings (or crops) of a batch/space move.
fn block_args(args: &Args<'_>, amounts: &str) -> OpResult<([usize; 2], [[usize; 2]; 2])> {
    block_params(
        &args.i64_vec("block_shape")?,
        &args.i64_vec(amounts)?,
        amounts,
    )
}

pub(super) fn space_to_batch(args: &Args<'_>) -> OpResult<Value> {
    let (block, pads) = block_args(args, "paddings")?;
    Ok(any_tensor!(args.required("x")?, a => space_to_batch_of(a, block, pads)))
}

pub(super) fn batch_to_space(args: &Args<'_>) -> OpResult<Value> {
    let (block, crops) = block_args(args, "crops")?;
    Ok(any_tensor!(args.required("x")?, a => batch_to_space_of(a, block, crops)))
}

pub(super) fn flatten2d(args: &Args<'_>) -> OpResult<Value> {
    let x = args.required("x")?;
    let shape = x.shape();
    let split = flatten2d_split(args.opt_i64("axis")?.unwrap_or(1), shape.len())?;
    let target = [
        shape[..split].iter().product(),
        shape[split..].iter().product(),
    ];
    Ok(any_tensor!(x, a => reshaped(a, &target)))
}

pub(super) fn reshape_like(args: &Args<'_>) -> OpResult<Value> {
    let x = args.required("x")?;
    let refs = args.list("ref_tensors")?;
    let (begins, ends, masks) = (
        args.list("begins")?,
        args.list("ends")?,
        args.list("end_masks")?,
    );
    if [begins.len(), ends.len(), masks.len()] != [refs.len(); 3] {
        return Err(format!(
            "ref_tensors ({}), begins ({}), ends ({}) and end_masks ({}) differ in length",
            refs.len(),
            begins.len(),
            ends.len(),
            masks.len()
        ));
    }
    let mut target = Vec::new();
    for (((r, b), e), m) in refs.iter().zip(&begins).zip(&ends).zip(&masks) {
        let dims = r.shape();
        let end = if m.to_bool_scalar()? {
            dims.len() as i64
        } else {
            e.to_i64_scalar()?
        };
        target.extend_from_slice(python_slice(&dims, b.to_i64_scalar()?, end));
    }
    Ok(any_tensor!(x, a => reshaped(a, &target)))
}

fn windows_of<T: Copy>(
    x: &ArcArray<T, IxDyn>,
    along: usize,
    size: i64,
    stride: i64,
) -> OpResult<ArcArray<T, IxDyn>> {
    let count = window_count(x.shape()[along] as u64, size, stride)? as usize;
    let (size, stride) = (size as usize, stride as usize);
    let mut shape = x.shape().to_vec();
    shape[along] = count;
    shape.insert(along + 1, size);
    created_count(&shape)?;
    let windows: Vec<_> = (0..count)
        .map(|k| {
            x.slice_axis(Axis(along), Slice::from(k * stride..k * stride + size))
                .insert_axis(Axis(along))
        })
        .collect();
    // Each window gains an axis of 1 before its own: [.., 1, size, ..].
    let joined = ndarray::concatenate(Axis(along), &windows).map_err(|e| e.to_string())?;
    debug_assert_eq!(joined.shape(), shape.as_slice());
    Ok(joined.into_shared())
}

pub(super) fn sliding_windows(args: &Args<'_>) -> OpResult<Value> {
    let x = args.required("x")?;
    let along = axis(
        args.opt_i64("axis")?
            .ok_or("lacks its required input \"axis\"")?,
        x.shape().len(),
    )?;
    let size = args
        .opt_i64("size")?
        .ok_or("lacks its required input \"size\"")?;
    let stride = args.opt_i64("stride")?.unwrap_or(1);
    Ok(any_tensor!(x, a => windows_of(a, along, size, stride)))
}

#[cfg(test)]
mod tests {
    use super::super::tests::run_op;
    use super::*;

    fn f(shape: &[usize]) -> Value {
        let count = shape.iter().product();
        Value::float(shape.to_vec(), (0..count).map(|v| v as f32).collect()).unwrap()
    }

    fn i(shape: &[usize], data: &[i32]) -> Value {
        Value::int(shape.to_vec(), data.to_vec()).unwrap()
    }

    fn error(op: &str, inputs: Vec<(&str, Value)>) -> String {
        run_op(op, inputs, 1).unwrap_err()
    }

    #[test]
    fn malformed_misc_ops_are_refused_naming_what_is_wrong() {
        let equation = |e: &str| Value::Str(vec![e.to_string()]);
        // An equation coremltools' einsum does not take (its frontend
        // lowers it to matmuls), and one whose shapes do not contract.
        let e = error(
            "einsum",
            vec![
                ("values", f(&[2, 3, 4, 5])),
                ("values", f(&[2, 5, 4, 6])),
                ("equation", equation("abcd,adbe->abce")),
            ],
        );
        assert!(e.contains("abcd,adbe->abce"), "{e}");
        let e = error(
            "einsum",
            vec![
                ("values", f(&[2, 3, 4, 5])),
                ("values", f(&[2, 6, 4, 6])),
                ("equation", equation("nchw,nwhu->nchu")),
            ],
        );
        assert!(e.contains("contracts 5"), "{e}");
        let e = error(
            "space_to_batch",
            vec![
                ("x", f(&[1, 1, 3, 4])),
                ("block_shape", i(&[2], &[2, 2])),
                ("paddings", i(&[2, 2], &[0, 0, 0, 0])),
            ],
        );
        assert!(e.contains("3×4"), "{e}");
        let e = error(
            "batch_to_space",
            vec![
                ("x", f(&[3, 1, 2, 2])),
                ("block_shape", i(&[2], &[2, 2])),
                ("crops", i(&[2, 2], &[0, 0, 0, 0])),
            ],
        );
        assert!(e.contains("batch of 3"), "{e}");
        let e = error("flatten2d", vec![("x", f(&[2, 3])), ("axis", i(&[], &[3]))]);
        assert!(e.contains("axis 3"), "{e}");
        let e = error(
            "sliding_windows",
            vec![
                ("x", f(&[2, 3])),
                ("axis", i(&[], &[1])),
                ("size", i(&[], &[4])),
            ],
        );
        assert!(e.contains("size 4"), "{e}");
        let e = error(
            "reshape_like",
            vec![
                ("x", f(&[2, 3])),
                ("ref_tensors", f(&[2, 2])),
                ("begins", i(&[], &[0])),
                ("ends", i(&[], &[2])),
                ("end_masks", Value::bool(vec![], vec![false]).unwrap()),
            ],
        );
        assert!(e.contains("reshape 6 elements"), "{e}");
    }

    #[test]
    fn batch_to_space_undoes_space_to_batch() {
        let x = f(&[2, 3, 5, 4]);
        let moved = run_op(
            "space_to_batch",
            vec![
                ("x", x.clone()),
                ("block_shape", i(&[2], &[3, 2])),
                ("paddings", i(&[2, 2], &[1, 0, 2, 2])),
            ],
            1,
        )
        .unwrap()
        .remove(0);
        assert_eq!(moved.shape(), vec![12, 3, 2, 4]);
        let back = run_op(
            "batch_to_space",
            vec![
                ("x", moved),
                ("block_shape", i(&[2], &[3, 2])),
                ("crops", i(&[2, 2], &[1, 0, 2, 2])),
            ],
            1,
        )
        .unwrap()
        .remove(0);
        assert_eq!(back.to_float().unwrap(), x.to_float().unwrap());
    }
}
