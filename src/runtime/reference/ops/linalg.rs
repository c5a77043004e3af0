//! `linear`, `matmul` and `scaled_dot_product_attention`, on the kernels'
//! matrix products (`kernels`), and ndarray's matrix-vector product for a
//! few rows of a weight that is not kept as stored.

use std::borrow::Cow;

use ndarray::linalg::general_mat_vec_mul;
use ndarray::{
    Array2, ArrayD, ArrayView1, ArrayView2, ArrayViewD, ArrayViewMut1, Axis, Ix2, IxDyn,
};

use super::elementwise::{broadcast_shape, zip_with};
use super::reduce::softmax_lanes;
use super::Args;
use crate::runtime::reference::buffers;
use crate::runtime::reference::kernels::{self, Epilogue, PackedA, Product, Strided, MATVEC_ROWS};
use crate::runtime::reference::value::{OpResult, Value};

pub(super) fn linear(args: &Args<'_>) -> OpResult<Value> {
    let x = args.float("x")?;
    let weight = args.required("weight")?;
    let (outputs, inputs) = match weight.shape().as_slice() {
        &[outputs, inputs] => (outputs, inputs),
        other => return Err(format!("the weight must have rank 2, not {}", other.len())),
    };
    let shape = x.shape().to_vec();
    if shape.last() != Some(&inputs) {
        return Err(format!(
            "x of shape {shape:?} does not end in the weight's {inputs} inputs"
        ));
    }
    let rows = x.len().checked_div(inputs).unwrap_or(0);
    let x = x.as_standard_layout();
    let x2 = x
        .view()
        .into_shape_with_order((rows, inputs))
        .map_err(|e| e.to_string())?;
    // The bias, added to each row's sums as the kernels store them.
    let bias_array = match args.get("bias")? {
        None => None,
        Some(bias) => {
            let bias = bias.to_float()?;
            if bias.shape() != [outputs] {
                return Err(format!(
                    "the bias has shape {:?}, the weight {outputs} outputs",
                    bias.shape()
                ));
            }
            Some(bias)
        }
    };
    // Read in place (a constant is contiguous): collecting it element by
    // element through a dynamic-rank iterator, at every call, cost 0.3 ms
    // of the int4 decoder's 4.4 ms step (coremltools gives every linear
    // a bias, zeros when the layer has none).
    let bias: Option<Cow<'_, [f32]>> = bias_array.as_ref().map(|bias| {
        bias.as_slice()
            .map_or_else(|| Cow::Owned(bias.iter().copied().collect()), Cow::Borrowed)
    });
    let mut out = Array2::from_shape_vec((rows, outputs), buffers::zeroed(rows * outputs))
        .map_err(|e| e.to_string())?;
    match weight {
        // Kept as stored (fp16): the kernels widen it as they read it.
        Value::Weight(stored) => {
            let x = x2
                .as_slice()
                .ok_or("x is not contiguous (interpreter bug)")?;
            let target = out
                .as_slice_mut()
                .ok_or("the output is not contiguous (interpreter bug)")?;
            kernels::linear(stored, x, rows, bias.as_deref(), target);
        }
        other => {
            let weight = other.to_float()?;
            let w = weight
                .view()
                .into_dimensionality::<Ix2>()
                .map_err(|e| e.to_string())?;
            if rows < MATVEC_ROWS {
                for (row, mut result) in x2.outer_iter().zip(out.outer_iter_mut()) {
                    mat_vec(&w, &row, &mut result);
                    if let Some(bias) = &bias {
                        result
                            .iter_mut()
                            .zip(bias.iter())
                            .for_each(|(o, b)| *o += b);
                    }
                }
            } else {
                let (x, w) = (x2.as_slice(), w.as_standard_layout());
                let (Some(x), Some(w_data)) = (x, w.as_slice()) else {
                    return Err("linear's operands are not contiguous (interpreter bug)".into());
                };
                let (Some(x), Some(w)) = (
                    Strided::row_major(x, rows, inputs),
                    Strided::row_major(w_data, outputs, inputs),
                ) else {
                    return Err(
                        "linear's operands do not hold their shapes (interpreter bug)".into(),
                    );
                };
                let target = out
                    .as_slice_mut()
                    .ok_or("the output is not contiguous (interpreter bug)")?;
                let epilogue = Epilogue {
                    col_bias: bias.as_deref(),
                    ..Epilogue::default()
                };
                kernels::gemm(&PackedA::new(x), &w.t(), target, outputs, epilogue);
            }
        }
    }
    let mut out_shape = shape;
    if let Some(last) = out_shape.last_mut() {
        *last = outputs;
    }
    let out = out
        .into_shape_with_order(IxDyn(&out_shape))
        .map_err(|e| e.to_string())?;
    Ok(Value::Float(out.into_shared()))
}

/// The cores an op may split its work over.
pub(super) use crate::runtime::reference::kernels::cores;

/// `y = W x`. A large `W` is split by rows over the machine's cores: a
/// matrix-vector product reads every weight once, so it is bound by memory
/// bandwidth, which one core does not saturate.
fn mat_vec(w: &ArrayView2<'_, f32>, x: &ArrayView1<'_, f32>, y: &mut ArrayViewMut1<'_, f32>) {
    /// Below this many weights, handing parts to the pool costs more than
    /// it saves.
    const PARALLEL_WEIGHTS: usize = 1 << 20;
    let threads = cores();
    if threads < 2 || w.len() < PARALLEL_WEIGHTS {
        general_mat_vec_mul(1.0, w, x, 0.0, y);
        return;
    }
    let chunk = w.nrows().div_ceil(threads);
    let parts: Vec<_> = w
        .axis_chunks_iter(Axis(0), chunk)
        .zip(y.axis_chunks_iter_mut(Axis(0), chunk))
        .collect();
    kernels::for_each_in_parallel(parts, |(part, mut result)| {
        general_mat_vec_mul(1.0, &part, x, 0.0, &mut result)
    });
}

/// numpy's `matmul` of two tensors of rank at least 2: the last two axes
/// multiply, the others broadcast.
pub(crate) fn batched_matmul(
    a: ArrayViewD<'_, f32>,
    b: ArrayViewD<'_, f32>,
) -> OpResult<ArrayD<f32>> {
    let (ra, rb) = (a.ndim(), b.ndim());
    if ra < 2 || rb < 2 {
        return Err("matmul operands must have rank 2 or more here".to_string());
    }
    let (m, k) = (a.shape()[ra - 2], a.shape()[ra - 1]);
    let (k2, n) = (b.shape()[rb - 2], b.shape()[rb - 1]);
    if k != k2 {
        return Err(format!(
            "cannot multiply shapes {:?} and {:?}: inner dimensions {k} and {k2} differ",
            a.shape(),
            b.shape()
        ));
    }
    let batch = broadcast_shape(&a.shape()[..ra - 2], &b.shape()[..rb - 2])?;
    let with = |tail: [usize; 2]| {
        let mut s = batch.clone();
        s.extend(tail);
        IxDyn(&s)
    };
    if a.broadcast(with([m, k])).is_none() || b.broadcast(with([k, n])).is_none() {
        return Err(format!(
            "the batch dimensions of {:?} and {:?} do not broadcast",
            a.shape(),
            b.shape()
        ));
    };
    let count: usize = batch.iter().product();
    let mut out = buffers::zeroed(count * m * n);
    if m * n > 0 {
        let (a, b) = (a.as_standard_layout(), b.as_standard_layout());
        let a_data = a
            .as_slice()
            .ok_or("x is not contiguous (interpreter bug)")?;
        let b_data = b
            .as_slice()
            .ok_or("y is not contiguous (interpreter bug)")?;
        // Where product `index` of the batch starts in an operand whose
        // batch axes are `dims` (right-aligned, broadcast where 1): the
        // index's row-major digits over `batch`, from the last axis, without
        // making the multi-index (a decode step's attention has a product
        // per head, each a few hundred multiply-adds).
        let offset = |index: usize, dims: &[usize], matrix: usize| {
            let skipped = batch.len() - dims.len();
            let (mut rest, mut stride, mut at) = (index, matrix, 0);
            for (axis, &extent) in batch.iter().enumerate().rev() {
                let position = rest % extent.max(1);
                rest /= extent.max(1);
                if let Some(&dim) = axis.checked_sub(skipped).map(|d| &dims[d]) {
                    if dim > 1 {
                        at += position * stride;
                    }
                    stride *= dim;
                }
            }
            at
        };
        let products = out
            .chunks_exact_mut(m * n)
            .enumerate()
            .map(|(index, out)| {
                let left = &a_data[offset(index, &a.shape()[..ra - 2], m * k)..];
                let right = &b_data[offset(index, &b.shape()[..rb - 2], k * n)..];
                match (
                    Strided::row_major(left, m, k),
                    Strided::row_major(right, k, n),
                ) {
                    (Some(a), Some(b)) => Ok(Product { a, b, out }),
                    _ => Err("a matmul operand does not hold its shape (interpreter bug)"),
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        kernels::gemm_many(products);
    }
    ArrayD::from_shape_vec(with([m, n]), out).map_err(|e| e.to_string())
}

/// The multi-index of flat row-major `index` in `dims`.
pub(crate) fn unravel(mut index: usize, dims: &[usize]) -> Vec<usize> {
    let mut position = vec![0; dims.len()];
    for (p, &d) in position.iter_mut().zip(dims).rev() {
        if d > 0 {
            *p = index % d;
            index /= d;
        }
    }
    position
}

pub(super) fn matmul(args: &Args<'_>) -> OpResult<Value> {
    let x = args.float("x")?;
    let y = args.float("y")?;
    let transpose_x = args.opt_bool("transpose_x")?.unwrap_or(false);
    let transpose_y = args.opt_bool("transpose_y")?.unwrap_or(false);
    let mut a = x.view();
    let mut b = y.view();
    if a.ndim() == 0 || b.ndim() == 0 {
        return Err("matmul operands must have rank 1 or more".to_string());
    }
    // numpy: a vector operand gains an axis, removed from the result.
    let (squeeze_m, squeeze_n) = (a.ndim() == 1, b.ndim() == 1);
    if squeeze_m {
        a = a.insert_axis(Axis(0));
    }
    if squeeze_n {
        b = b.insert_axis(Axis(1));
    }
    if transpose_x && squeeze_m {
        return Err("x is a vector, so transpose_x cannot be true".to_string());
    }
    if transpose_x {
        let r = a.ndim();
        a.swap_axes(r - 2, r - 1);
    }
    if transpose_y && !squeeze_n {
        let r = b.ndim();
        b.swap_axes(r - 2, r - 1);
    }
    let mut out = batched_matmul(a, b)?;
    if squeeze_n {
        let r = out.ndim();
        out = out.index_axis_move(Axis(r - 1), 0);
    }
    if squeeze_m {
        // The m axis is second to last, or last once n is gone.
        let r = out.ndim();
        let m_axis = if squeeze_n { r - 1 } else { r - 2 };
        out = out.index_axis_move(Axis(m_axis), 0);
    }
    Ok(Value::Float(out.into_shared()))
}

pub(super) fn attention(args: &Args<'_>) -> OpResult<Value> {
    let query = args.float("query")?;
    let key = args.float("key")?;
    let value = args.float("value")?;
    if query.ndim() < 2 || key.ndim() < 2 || value.ndim() < 2 {
        return Err("query, key and value must have rank 2 or more".to_string());
    }
    let embedding = *query.shape().last().unwrap_or(&1);
    let mut key_t = key.view();
    let r = key_t.ndim();
    key_t.swap_axes(r - 2, r - 1);
    let scale = 1.0 / (embedding as f32).sqrt();
    let mut scores = batched_matmul(query.view(), key_t)?;
    scores.mapv_inplace(|v| v * scale);
    let mut scores = scores.into_shared();
    if let Some(mask) = args.get("attn_mask")? {
        // A bool mask keeps where true; a float mask is added.
        let additive = match mask {
            Value::Bool(m) => m
                .mapv(|keep| if keep { 0.0 } else { f32::NEG_INFINITY })
                .into_shared(),
            other => other.to_float()?,
        };
        scores = zip_with(&scores, &additive, |s, m| s + m)?;
    }
    let mut scores = scores.into_owned();
    let last = scores.ndim() - 1;
    softmax_lanes(&mut scores, last);
    let out = batched_matmul(scores.view(), value.view())?;
    Ok(Value::Float(out.into_shared()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::ArrayD;

    #[test]
    fn batched_matmul_broadcasts_batches() {
        let a = ArrayD::from_shape_vec(IxDyn(&[2, 1, 2]), vec![1.0, 2.0, 3.0, 4.0]).unwrap();
        let b = ArrayD::from_shape_vec(IxDyn(&[2, 1]), vec![10.0, 100.0]).unwrap();
        let out = batched_matmul(a.view(), b.view()).unwrap();
        assert_eq!(out.shape(), &[2, 1, 1]);
        assert_eq!(out.as_slice().unwrap(), &[210.0, 430.0]);
        let bad = ArrayD::<f32>::zeros(IxDyn(&[3, 1]));
        assert!(batched_matmul(a.view(), bad.view()).is_err());
    }

    #[test]
    fn batched_matmul_broadcasts_batch_axes_of_both_operands() {
        // a: [2, 1, 2, 3], b: [3, 3, 2]: batch [2, 3], product (b0, b1) is
        // a[b0, 0] · b[b1].
        let a_data: Vec<f32> = (0..12).map(|v| v as f32 - 5.0).collect();
        let b_data: Vec<f32> = (0..18).map(|v| (v as f32) * 0.5 - 3.0).collect();
        let a = ArrayD::from_shape_vec(IxDyn(&[2, 1, 2, 3]), a_data.clone()).unwrap();
        let b = ArrayD::from_shape_vec(IxDyn(&[3, 3, 2]), b_data.clone()).unwrap();
        let out = batched_matmul(a.view(), b.view()).unwrap();
        assert_eq!(out.shape(), &[2, 3, 2, 2]);
        for (b0, b1, i, j) in (0..2).flat_map(|b0| {
            (0..3).flat_map(move |b1| (0..2).flat_map(move |i| (0..2).map(move |j| (b0, b1, i, j))))
        }) {
            let want: f32 = (0..3)
                .map(|k| a_data[b0 * 6 + i * 3 + k] * b_data[b1 * 6 + k * 2 + j])
                .sum();
            assert_eq!(
                out[[b0, b1, i, j]],
                want,
                "product ({b0}, {b1}), element ({i}, {j})"
            );
        }
    }

    #[test]
    fn unravel_is_row_major() {
        assert_eq!(unravel(5, &[2, 3]), vec![1, 2]);
        assert_eq!(unravel(0, &[]), Vec::<usize>::new());
    }
}
