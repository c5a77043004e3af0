//! Reductions: `reduce_*` over `axes`, `reduce_argmax` / `reduce_argmin`
//! over one `axis`.

use super::{dtype_from_name, Elements, Inputs, Operand, TensorType};
use crate::mil::ops::Reduce;
use crate::proto::mil_spec::DataType;

/// The shape left after reducing `axes` (normalized) of `shape`.
fn reduced(shape: &[super::Dim], axes: &[usize], keep_dims: bool) -> Vec<super::Dim> {
    shape
        .iter()
        .enumerate()
        .filter_map(|(i, &d)| match (axes.contains(&i), keep_dims) {
            (false, _) => Some(d),
            (true, true) => Some(Some(1)),
            (true, false) => None,
        })
        .collect()
}

pub(super) fn reduce(op: Reduce, inputs: &Inputs<'_>) -> Result<Operand, String> {
    let x = inputs.required("x")?;
    let rank = x.ty.rank();
    let axes: Vec<usize> = match inputs.opt_i64_vec("axes")? {
        None => (0..rank).collect(),
        Some(list) => list
            .into_iter()
            .map(|a| super::axis(a, rank))
            .collect::<Result<_, _>>()?,
    };
    let keep_dims = inputs.opt_bool("keep_dims")?.unwrap_or(false);
    let ty = TensorType {
        dtype: x.ty.dtype,
        shape: reduced(&x.ty.shape, &axes, keep_dims),
    };
    let value = fold(op, x, &axes, &ty);
    Ok(Operand::maybe(ty, value))
}

/// Integer sums, products, maxima and minima of known elements: the
/// element counts shape arithmetic computes.
fn fold(op: Reduce, x: &Operand, axes: &[usize], out: &TensorType) -> Option<Elements> {
    let Elements::Int(values) = x.value.as_ref()? else {
        return None;
    };
    let shape = x.ty.known_shape()?;
    let out_count = out.element_count()? as usize;
    let mut acc: Vec<Option<i64>> = vec![
        match op {
            Reduce::Sum => Some(0),
            Reduce::Prod => Some(1),
            Reduce::Max => Some(i64::MIN),
            Reduce::Min => Some(i64::MAX),
            _ => return None,
        };
        out_count
    ];
    let kept: Vec<usize> = (0..shape.len()).filter(|i| !axes.contains(i)).collect();
    let mut position = vec![0u64; shape.len()];
    for value in values {
        let mut index = 0usize;
        for &k in &kept {
            index = index * shape[k] as usize + position[k] as usize;
        }
        acc[index] = match (acc[index], value) {
            (Some(a), Some(v)) => match op {
                Reduce::Sum => a.checked_add(*v),
                Reduce::Prod => a.checked_mul(*v),
                Reduce::Max => Some(a.max(*v)),
                _ => Some(a.min(*v)),
            },
            _ => None,
        };
        for axis in (0..shape.len()).rev() {
            position[axis] += 1;
            if position[axis] < shape[axis] {
                break;
            }
            position[axis] = 0;
        }
    }
    Some(Elements::Int(acc))
}

pub(super) fn arg_reduce(inputs: &Inputs<'_>) -> Result<Operand, String> {
    let x = inputs.tensor("x")?;
    let axis = super::axis(inputs.opt_i64("axis")?.unwrap_or(-1), x.rank())?;
    let keep_dims = inputs.opt_bool("keep_dims")?.unwrap_or(false);
    let dtype = match inputs.opt_str("output_dtype")? {
        None => DataType::Int32,
        Some(name) => dtype_from_name(&name.to_lowercase())
            .ok_or_else(|| format!("output_dtype {name:?} is not a type"))?,
    };
    Ok(Operand::tensor(TensorType {
        dtype,
        shape: reduced(&x.shape, &[axis], keep_dims),
    }))
}
