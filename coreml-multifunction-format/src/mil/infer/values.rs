//! Values that are not tensors (issue 23): `classify`'s label and
//! dictionary, and the tensor lists of `make_list`, `list_read`,
//! `list_write`, `list_gather`, `list_scatter` and `list_length`, as
//! coremltools' iOS 15 definitions (`classify.py`, `control_flow.py`)
//! type them.

use super::{dtype_from_name, dtype_name, Container, Dim, Elements, Inputs, Operand, TensorType};
use crate::proto::mil_spec::DataType;

/// `classify`: the label (a string or int64 scalar, the type of the
/// classes) and the dictionary from class to probability (fp64 values).
/// The probabilities must be fp32 and, when their shape is known, hold one
/// element per class.
pub(super) fn classify(inputs: &Inputs<'_>) -> Result<Vec<Operand>, String> {
    let probabilities = inputs.tensor("probabilities")?;
    if probabilities.dtype != DataType::Float32 {
        return Err(format!(
            "input \"probabilities\" must be fp32, not {}",
            dtype_name(probabilities.dtype)
        ));
    }
    let classes = inputs.required("classes")?;
    if classes.list_length().is_err() {
        return Err("input \"classes\" is not a list".to_string());
    }
    let key = classes.ty.dtype;
    if !matches!(key, DataType::String | DataType::Int64) {
        return Err(format!(
            "the classes must be strings or int64, not {}",
            dtype_name(key)
        ));
    }
    let count = classes
        .value
        .as_ref()
        .map(|v| v.len() as u64)
        .or(classes.list_length()?);
    if let (Some(count), Some(size)) = (count, probabilities.element_count()) {
        if count != size {
            return Err(format!(
                "there are {count} classes for {size} probabilities; the counts must be equal"
            ));
        }
    }
    Ok(vec![
        Operand::tensor(TensorType::known(key, &[])),
        Operand::dictionary(key, TensorType::known(DataType::Float64, &[])),
    ])
}

/// `make_list`: a list of `init_length` (default 1) elements of `dtype`
/// (default fp32) and `elem_shape` (each element a constant integer, or a
/// string naming a dimension not known until run time).
pub(super) fn make_list(inputs: &Inputs<'_>) -> Result<Operand, String> {
    let dtype = match inputs.opt_str("dtype")? {
        None => DataType::Float32,
        Some(name) => dtype_from_name(name)
            .filter(|d| {
                matches!(
                    d,
                    DataType::Bool | DataType::Float16 | DataType::Float32 | DataType::Int32
                )
            })
            .ok_or_else(|| {
                format!("dtype {name:?} is not an element type of a list (bool, fp16, fp32, int32)")
            })?,
    };
    let mut shape: Vec<Dim> = Vec::new();
    for (index, dim) in inputs.list("elem_shape").into_iter().enumerate() {
        match &dim.value {
            Some(Elements::Str(names)) => shape.extend(names.iter().map(|_| None)),
            Some(value) => {
                for d in value.to_ints().unwrap_or_default() {
                    shape.push(match d {
                        Some(d) if d >= 0 => Some(d as u64),
                        Some(d) => {
                            return Err(format!("elem_shape element {index} is {d}, below zero"))
                        }
                        None => None,
                    });
                }
            }
            None => {
                return Err(format!(
                    "elem_shape element {index} is not a constant, so the elements' shape \
                     cannot be inferred"
                ))
            }
        }
    }
    let length = match inputs.get("init_length")? {
        None => Some(1),
        Some(_) => inputs
            .opt_i64("init_length")
            .ok()
            .flatten()
            .map(|n| u64::try_from(n).map_err(|_| format!("init_length is {n}, below zero")))
            .transpose()?,
    };
    inputs.opt_bool("dynamic_length")?;
    Ok(Operand::list(TensorType { dtype, shape }, length))
}

/// The list operand bound to `ls`.
fn list<'a>(inputs: &Inputs<'a>) -> Result<&'a Operand, String> {
    let ls = inputs.required("ls")?;
    match ls.container {
        Some(Container::List { .. }) => Ok(ls),
        _ => Err("input \"ls\" is not a list".to_string()),
    }
}

/// An integer tensor parameter (`index`, `indices`).
fn int_tensor<'a>(inputs: &Inputs<'a>, name: &str) -> Result<&'a TensorType, String> {
    let ty = inputs.tensor(name)?;
    if super::is_float(ty.dtype) || ty.dtype == DataType::Bool || ty.dtype == DataType::String {
        return Err(format!(
            "input {name:?} must be int32, not {}",
            dtype_name(ty.dtype)
        ));
    }
    Ok(ty)
}

/// Whether a value of type `value` fits elements of type `element` (the
/// same dtype and rank, no known dimension contradicting another).
fn fits(value: &TensorType, element: &TensorType) -> Result<(), String> {
    let agrees = value.dtype == element.dtype
        && value.rank() == element.rank()
        && value
            .shape
            .iter()
            .zip(&element.shape)
            .all(|(a, b)| a.zip(*b).is_none_or(|(a, b)| a == b));
    if agrees {
        Ok(())
    } else {
        Err(format!(
            "a value of type {} does not fit the list's elements of type {}",
            value.describe(),
            element.describe()
        ))
    }
}

/// `list_read`: one element.
pub(super) fn list_read(inputs: &Inputs<'_>) -> Result<Operand, String> {
    let ls = list(inputs)?;
    int_tensor(inputs, "index")?;
    Ok(Operand::tensor(ls.ty.clone()))
}

/// `list_write`: the list, `value` written at `index`.
pub(super) fn list_write(inputs: &Inputs<'_>) -> Result<Operand, String> {
    let ls = list(inputs)?;
    int_tensor(inputs, "index")?;
    fits(inputs.tensor("value")?, &ls.ty)?;
    Ok(Operand::list(ls.ty.clone(), ls.list_length()?))
}

/// `list_gather`: the elements at `indices`, stacked on a new first axis.
pub(super) fn list_gather(inputs: &Inputs<'_>) -> Result<Operand, String> {
    let ls = list(inputs)?;
    let indices = int_tensor(inputs, "indices")?;
    let Some(&count) = indices.shape.first() else {
        return Err("input \"indices\" is a scalar, it must be a vector".to_string());
    };
    let mut shape = vec![count];
    shape.extend(&ls.ty.shape);
    Ok(Operand::tensor(TensorType {
        dtype: ls.ty.dtype,
        shape,
    }))
}

/// `list_scatter`: the list, `value`'s rows written at `indices`.
pub(super) fn list_scatter(inputs: &Inputs<'_>) -> Result<Operand, String> {
    let ls = list(inputs)?;
    let indices = int_tensor(inputs, "indices")?;
    let value = inputs.tensor("value")?;
    let (Some(&count), Some(&rows)) = (indices.shape.first(), value.shape.first()) else {
        return Err("inputs \"indices\" and \"value\" must have a first axis".to_string());
    };
    if let (Some(count), Some(rows)) = (count, rows) {
        if count != rows {
            return Err(format!("cannot scatter {rows} values to {count} indices"));
        }
    }
    let row = TensorType {
        dtype: value.dtype,
        shape: value.shape[1..].to_vec(),
    };
    fits(&row, &ls.ty)?;
    Ok(Operand::list(ls.ty.clone(), ls.list_length()?))
}

/// `list_length`: an int32 scalar.
pub(super) fn list_length(inputs: &Inputs<'_>) -> Result<Operand, String> {
    list(inputs)?;
    Ok(Operand::tensor(TensorType::known(DataType::Int32, &[])))
}
