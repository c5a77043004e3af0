//! Rules for `einsum`, `space_to_batch`, `batch_to_space`, `flatten2d`,
//! `reshape_like`, `sliding_windows` and the random ops (issue 23), as
//! coremltools 9.0's type inference gives them. The parameter checks the
//! interpreter shares are [`crate::mil::op_rules`].

use super::{unify, Dim, Elements, Inputs, Operand, TensorType};
use crate::mil::op_rules::{
    block_params, einsum_rank, flatten2d_split, python_slice, window_count,
};
use crate::mil::ops::Random;
use crate::proto::mil_spec::DataType;

/// Two dimensions that broadcast (one of them 1): the other; unknown when
/// either is.
fn broadcast(a: Dim, b: Dim, what: &str) -> Result<Dim, String> {
    match (a, b) {
        (Some(1), other) | (other, Some(1)) => Ok(other),
        (Some(x), Some(y)) if x != y => Err(format!("{what}: {x} and {y} do not broadcast")),
        (Some(x), Some(_)) => Ok(Some(x)),
        _ => Ok(None),
    }
}

pub(super) fn einsum(inputs: &Inputs<'_>) -> Result<Operand, String> {
    let values = inputs.list("values");
    let [x, y] = values.as_slice() else {
        return Err(format!(
            "values holds {} tensors; einsum takes two",
            values.len()
        ));
    };
    let equation = inputs
        .opt_str("equation")?
        .ok_or("lacks its required input \"equation\"")?;
    let rank = einsum_rank(equation)?;
    let (x, y) = (&x.ty, &y.ty);
    if x.rank() != rank || y.rank() != rank {
        return Err(format!(
            "equation {equation:?} takes two rank-{rank} tensors, not {} and {}",
            x.describe(),
            y.describe()
        ));
    }
    // [B,] C, H, W1 times [B,] W1, H, W2: W1 contracts, B and H broadcast.
    let last = rank - 1;
    unify(x.shape[last], y.shape[last - 2], || {
        format!(
            "the contracted axes of {} and {} differ",
            x.describe(),
            y.describe()
        )
    })?;
    let mut shape = vec![
        x.shape[last - 2],
        broadcast(x.shape[last - 1], y.shape[last - 1], "einsum's H")?,
        y.shape[last],
    ];
    if rank == 4 {
        shape.insert(0, broadcast(x.shape[0], y.shape[0], "einsum's batch")?);
    }
    Ok(Operand::tensor(TensorType {
        dtype: x.dtype,
        shape,
    }))
}

/// `space_to_batch` (`to_batch`) or `batch_to_space`.
pub(super) fn batch_space(inputs: &Inputs<'_>, to_batch: bool) -> Result<Operand, String> {
    let x = inputs.tensor("x")?;
    if x.rank() != 4 {
        return Err(format!("x of type {} is not [N, C, H, W]", x.describe()));
    }
    let amounts_name = if to_batch { "paddings" } else { "crops" };
    let (block, amounts) = block_params(
        &inputs.i64_vec("block_shape")?,
        &inputs.i64_vec(amounts_name)?,
        amounts_name,
    )?;
    let blocks = (block[0] * block[1]) as u64;
    let mut shape = x.shape.clone();
    if to_batch {
        shape[0] = shape[0].map(|n| n * blocks);
        for k in 0..2 {
            let (b, [before, after]) = (block[k] as u64, amounts[k]);
            shape[2 + k] = match shape[2 + k] {
                Some(d) if !(d + (before + after) as u64).is_multiple_of(b) => {
                    return Err(format!(
                        "spatial axis {k} of {} padded by {:?} does not divide by {b}",
                        x.describe(),
                        amounts[k]
                    ))
                }
                d => d.map(|d| (d + (before + after) as u64) / b),
            };
        }
    } else {
        shape[0] = match shape[0] {
            Some(n) if !n.is_multiple_of(blocks) => {
                return Err(format!(
                    "the batch of {} does not divide by the block's {blocks} elements",
                    x.describe()
                ))
            }
            n => n.map(|n| n / blocks),
        };
        for k in 0..2 {
            let (b, crop) = (block[k] as u64, (amounts[k][0] + amounts[k][1]) as u64);
            shape[2 + k] = match shape[2 + k] {
                Some(d) if d * b < crop => {
                    return Err(format!(
                        "crops {:?} remove more than spatial axis {k} of {} holds",
                        amounts[k],
                        x.describe()
                    ))
                }
                d => d.map(|d| d * b - crop),
            };
        }
    }
    Ok(Operand::tensor(TensorType {
        dtype: x.dtype,
        shape,
    }))
}

/// The product of `dims`, unknown when one is.
fn product(dims: &[Dim]) -> Dim {
    dims.iter()
        .try_fold(1u64, |n, d| d.and_then(|d| n.checked_mul(d)))
}

pub(super) fn flatten2d(inputs: &Inputs<'_>) -> Result<Operand, String> {
    let x = inputs.required("x")?;
    let split = flatten2d_split(inputs.opt_i64("axis")?.unwrap_or(1), x.ty.rank())?;
    let ty = TensorType {
        dtype: x.ty.dtype,
        shape: vec![product(&x.ty.shape[..split]), product(&x.ty.shape[split..])],
    };
    Ok(Operand::maybe(ty, x.value.clone()))
}

/// The constant scalar each operand of tuple parameter `name` holds.
fn scalars<'a>(inputs: &Inputs<'a>, name: &str) -> Result<Vec<&'a Elements>, String> {
    inputs
        .list(name)
        .into_iter()
        .map(|o| match &o.value {
            Some(v) if v.len() == 1 => Ok(v),
            _ => Err(format!("{name} must hold constant scalars")),
        })
        .collect()
}

pub(super) fn reshape_like(inputs: &Inputs<'_>) -> Result<Operand, String> {
    let x = inputs.required("x")?;
    let refs = inputs.list("ref_tensors");
    let (begins, ends, masks) = (
        scalars(inputs, "begins")?,
        scalars(inputs, "ends")?,
        scalars(inputs, "end_masks")?,
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
    let int = |e: &Elements| match e.to_ints().as_deref() {
        Some([Some(v)]) => Ok(*v),
        _ => Err("begins and ends must be integers".to_string()),
    };
    let mut shape = Vec::new();
    for (((r, &b), &e), &m) in refs.iter().zip(&begins).zip(&ends).zip(&masks) {
        let Elements::Bool(mask) = m else {
            return Err("end_masks must be bools".to_string());
        };
        let dims = &r.ty.shape;
        let (begin, end) = (int(b)?, if mask[0] { dims.len() as i64 } else { int(e)? });
        shape.extend_from_slice(python_slice(dims, begin, end));
    }
    if shape.iter().any(Option::is_none) {
        return Err(format!(
            "the result's shape {} is not known: reshape_like takes a known shape",
            super::shape_text(&shape)
        ));
    }
    let ty = TensorType {
        dtype: x.ty.dtype,
        shape,
    };
    if let (Some(a), Some(b)) = (x.ty.element_count(), ty.element_count()) {
        if a != b {
            return Err(format!(
                "cannot reshape {} ({a} elements) like {} ({b} elements)",
                x.ty.describe(),
                ty.describe()
            ));
        }
    }
    Ok(Operand::maybe(ty, x.value.clone()))
}

pub(super) fn sliding_windows(inputs: &Inputs<'_>) -> Result<Operand, String> {
    let x = inputs.tensor("x")?;
    let axis = super::axis(inputs.i64("axis")?, x.rank())?;
    let size = inputs.i64("size")?;
    let stride = inputs.opt_i64("stride")?.unwrap_or(1);
    let mut shape = x.shape.clone();
    shape[axis] = match shape[axis] {
        Some(d) => Some(window_count(d, size, stride)?),
        None => {
            window_count(u64::MAX, size, stride)?;
            None
        }
    };
    shape.insert(axis + 1, Some(size as u64));
    Ok(Operand::tensor(TensorType {
        dtype: x.dtype,
        shape,
    }))
}

/// The element type of the optional parameter `name`: fp32 (coremltools'
/// default is a Python float) when absent.
fn dtype_of(inputs: &Inputs<'_>, name: &str) -> Result<DataType, String> {
    Ok(inputs.get(name)?.map_or(DataType::Float32, |o| o.ty.dtype))
}

pub(super) fn random(op: Random, inputs: &Inputs<'_>) -> Result<Operand, String> {
    if op == Random::Categorical {
        let x = inputs.tensor("x")?;
        let size = inputs.opt_i64("size")?.unwrap_or(1);
        let size = u64::try_from(size)
            .ok()
            .filter(|&s| s > 0)
            .ok_or_else(|| format!("size {size} is not positive"))?;
        if x.rank() == 0 {
            return Err("x is a scalar, not a tensor of probabilities".to_string());
        }
        let mut shape = x.shape[..x.rank() - 1].to_vec();
        shape.push(Some(size));
        return Ok(Operand::tensor(TensorType {
            dtype: x.dtype,
            shape,
        }));
    }
    // The parameters fixing the element type, which must agree.
    let (first, second) = match op {
        Random::Bernoulli => ("prob", None),
        Random::Normal => ("mean", Some("stddev")),
        _ => ("low", Some("high")),
    };
    let dtype = dtype_of(inputs, first)?;
    if let Some(second) = second {
        if dtype_of(inputs, second)? != dtype {
            return Err(format!("{first} and {second} differ in element type"));
        }
    }
    let shape_param = inputs.required("shape")?;
    let shape = match &shape_param.value {
        Some(v) => v
            .to_ints()
            .ok_or("shape is not integers")?
            .into_iter()
            .map(|d| match d {
                Some(d) if d < 0 => Err(format!("shape has a negative entry {d}")),
                d => Ok(d.map(|d| d as u64)),
            })
            .collect::<Result<Vec<Dim>, String>>()?,
        None => {
            let length = match shape_param.ty.shape.as_slice() {
                [Some(n)] => *n,
                _ => return Err("the shape parameter's length is not known".to_string()),
            };
            if length > 64 {
                return Err(format!("the shape parameter has {length} entries"));
            }
            vec![None; length as usize]
        }
    };
    Ok(Operand::tensor(TensorType { dtype, shape }))
}
