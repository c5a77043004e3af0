//! Rules for the indexing ops: gathers, scatters, `topk`, `argsort`,
//! `cumsum`, `one_hot`, `non_zero`.

use super::{dtype_from_name, unify, Dim, Elements, Inputs, Operand, RuleResult, TensorType};
use crate::proto::mil_spec::DataType;

pub(super) fn gather(inputs: &Inputs<'_>) -> Result<Operand, String> {
    let x = inputs.required("x")?;
    let indices = inputs.required("indices")?;
    let rank = x.ty.rank();
    let axis = super::axis(inputs.opt_i64("axis")?.unwrap_or(0), rank)?;
    let batch_dims = inputs.opt_i64("batch_dims")?.unwrap_or(0);
    let batch = usize::try_from(batch_dims)
        .ok()
        .filter(|&b| b <= axis && b <= indices.ty.rank())
        .ok_or_else(|| format!("batch_dims {batch_dims} does not fit axis {axis}"))?;
    for b in 0..batch {
        unify(x.ty.shape[b], indices.ty.shape[b], || {
            format!(
                "x of type {} and indices of type {} differ in batch dimension {b}",
                x.ty.describe(),
                indices.ty.describe()
            )
        })?;
    }
    let mut shape: Vec<Dim> = x.ty.shape[..axis].to_vec();
    shape.extend_from_slice(&indices.ty.shape[batch..]);
    shape.extend_from_slice(&x.ty.shape[axis + 1..]);
    let ty = TensorType {
        dtype: x.ty.dtype,
        shape,
    };
    // Gathering from known elements (from a shape, typically).
    let value = (|| {
        if batch != 0 {
            return None;
        }
        let x_shape = x.ty.known_shape()?;
        let size = x_shape[axis] as i64;
        let picks: Vec<usize> = indices
            .value
            .as_ref()?
            .to_ints()?
            .into_iter()
            .map(|i| {
                let i = i?;
                let i = if i < 0 { i + size } else { i };
                (0..size).contains(&i).then_some(i as usize)
            })
            .collect::<Option<_>>()?;
        let outer: usize = x_shape[..axis].iter().product::<u64>() as usize;
        let inner: usize = x_shape[axis + 1..].iter().product::<u64>() as usize;
        let mut positions = Vec::with_capacity(outer * picks.len() * inner);
        for o in 0..outer {
            for &p in &picks {
                for i in 0..inner {
                    positions.push((o * size as usize + p) * inner + i);
                }
            }
        }
        Some(x.value.as_ref()?.pick(&positions))
    })();
    Ok(Operand::maybe(ty, value))
}

pub(super) fn gather_along_axis(inputs: &Inputs<'_>) -> Result<Operand, String> {
    let x = inputs.tensor("x")?;
    let indices = inputs.tensor("indices")?;
    if x.rank() != indices.rank() {
        return Err(format!(
            "x of type {} and indices of type {} differ in rank",
            x.describe(),
            indices.describe()
        ));
    }
    super::axis(inputs.opt_i64("axis")?.unwrap_or(0), x.rank())?;
    Ok(Operand::tensor(indices.with_dtype(x.dtype)))
}

pub(super) fn gather_nd(inputs: &Inputs<'_>) -> Result<Operand, String> {
    let x = inputs.tensor("x")?;
    let indices = inputs.tensor("indices")?;
    let batch = inputs.opt_i64("batch_dims")?.unwrap_or(0).max(0) as usize;
    let depth = indices.shape.last().copied().flatten().ok_or_else(|| {
        format!(
            "indices of type {} has no known last dimension",
            indices.describe()
        )
    })? as usize;
    if indices.rank() == 0 || batch + depth > x.rank() {
        return Err(format!(
            "indices of type {} index deeper than x of type {}",
            indices.describe(),
            x.describe()
        ));
    }
    let mut shape = indices.shape[..indices.rank() - 1].to_vec();
    shape.extend_from_slice(&x.shape[batch + depth..]);
    Ok(Operand::tensor(TensorType {
        dtype: x.dtype,
        shape,
    }))
}

pub(super) fn scatter(inputs: &Inputs<'_>) -> Result<Operand, String> {
    let data = inputs.tensor("data")?;
    inputs.tensor("indices")?;
    inputs.tensor("updates")?;
    if let Some(axis) = inputs.opt_i64("axis")? {
        super::axis(axis, data.rank())?;
    }
    Ok(Operand::tensor(data.clone()))
}

pub(super) fn topk(inputs: &Inputs<'_>) -> RuleResult {
    let x = inputs.tensor("x")?;
    let axis = super::axis(inputs.opt_i64("axis")?.unwrap_or(-1), x.rank())?;
    let k = inputs.opt_i64("k")?.unwrap_or(1);
    let k = u64::try_from(k).map_err(|_| format!("k {k} is negative"))?;
    if x.shape[axis].is_some_and(|d| k > d) {
        return Err(format!(
            "k {k} is larger than axis {axis} of {}",
            x.describe()
        ));
    }
    let mut shape = x.shape.clone();
    shape[axis] = Some(k);
    let values = TensorType {
        dtype: x.dtype,
        shape,
    };
    if !inputs.opt_bool("return_indices")?.unwrap_or(true) {
        return Ok(vec![Operand::tensor(values)]);
    }
    let index_dtype = match inputs.opt_str("output_indices_dtype")? {
        None => DataType::Int32,
        Some(name) => dtype_from_name(name)
            .ok_or_else(|| format!("output_indices_dtype {name:?} is not a type"))?,
    };
    let indices = values.with_dtype(index_dtype);
    Ok(vec![Operand::tensor(values), Operand::tensor(indices)])
}

pub(super) fn argsort(inputs: &Inputs<'_>) -> Result<Operand, String> {
    let x = inputs.tensor("x")?;
    super::axis(inputs.opt_i64("axis")?.unwrap_or(-1), x.rank())?;
    Ok(Operand::tensor(x.with_dtype(DataType::Int32)))
}

pub(super) fn cumsum(inputs: &Inputs<'_>) -> Result<Operand, String> {
    let x = inputs.tensor("x")?;
    super::axis(inputs.opt_i64("axis")?.unwrap_or(0), x.rank())?;
    Ok(Operand::tensor(x.clone()))
}

pub(super) fn one_hot(inputs: &Inputs<'_>) -> Result<Operand, String> {
    let indices = inputs.tensor("indices")?;
    let rank = indices.rank();
    let axis = inputs.opt_i64("axis")?.unwrap_or(-1);
    let cut = if axis < 0 {
        rank as i64 + axis + 1
    } else {
        axis
    };
    if !(0..=rank as i64).contains(&cut) {
        return Err(format!(
            "axis {axis} is out of range for indices of type {}",
            indices.describe()
        ));
    }
    let size = match inputs.get("one_hot_vector_size")? {
        Some(Operand { value: Some(v), .. }) => match v.to_ints().as_deref() {
            Some([Some(n)]) if *n >= 0 => Some(*n as u64),
            _ => return Err("one_hot_vector_size is not one non-negative integer".to_string()),
        },
        _ => None,
    };
    let on = inputs.get("on_value")?;
    let off = inputs.get("off_value")?;
    let dtype = match (on, off) {
        (Some(a), Some(b)) if a.ty.dtype != b.ty.dtype => {
            return Err("on_value and off_value differ in type".to_string())
        }
        (Some(a), _) | (None, Some(a)) => a.ty.dtype,
        (None, None) => DataType::Int32,
    };
    let mut shape = indices.shape.clone();
    shape.insert(cut as usize, size);
    Ok(Operand::tensor(TensorType { dtype, shape }))
}

pub(super) fn non_zero(inputs: &Inputs<'_>) -> Result<Operand, String> {
    let x = inputs.required("x")?;
    // How many elements are nonzero depends on the data, unless it is
    // known.
    let count = x.value.as_ref().and_then(|v| match v {
        Elements::Int(i) => i
            .iter()
            .map(|e| e.map(|e| e != 0))
            .collect::<Option<Vec<bool>>>()
            .map(|b| b.iter().filter(|&&b| b).count() as u64),
        Elements::Float(f) => Some(f.iter().filter(|&&f| f != 0.0).count() as u64),
        Elements::Bool(b) => Some(b.iter().filter(|&&b| b).count() as u64),
        Elements::Str(_) => None,
    });
    Ok(Operand::tensor(TensorType {
        dtype: DataType::Int32,
        shape: vec![count, Some(x.ty.rank() as u64)],
    }))
}
