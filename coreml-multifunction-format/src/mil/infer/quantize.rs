//! Rules for the quantization ops: `quantize` and `dequantize` (iOS 17),
//! which move activations between floats and int8 / uint8, and
//! `conv_quantized`, a convolution over linearly quantized weights.

use super::{axis, dtype_name, Inputs, Operand, TensorType};
use crate::proto::mil_spec::DataType;

/// Checks `scale` (and `zero_point`) against `input` as coremltools'
/// `_check_scale_zp_shapes` does: both scalars (no `axis`), or both
/// vectors as long as `input`'s `axis`.
fn check_scale(inputs: &Inputs<'_>, input: &TensorType) -> Result<(), String> {
    let scale = inputs.tensor("scale")?;
    let zero_point = inputs.get("zero_point")?.map(|z| &z.ty);
    let axis_value = inputs.opt_i64("axis")?;
    match scale.rank() {
        0 => {
            if axis_value.is_some() {
                return Err("axis is given, but scale is a scalar (per-tensor)".to_string());
            }
            if zero_point.is_some_and(|z| z.rank() != 0) {
                return Err("zero_point is not a scalar, but scale is".to_string());
            }
        }
        1 => {
            let a = axis_value.ok_or("scale is a vector, but no axis is given")?;
            let a = axis(a, input.rank())?;
            for (name, param) in [("scale", Some(scale)), ("zero_point", zero_point)] {
                let Some(param) = param else { continue };
                if param.rank() != 1 {
                    return Err(format!("{name} is not a vector, but scale is"));
                }
                if let (Some(n), Some(d)) = (param.shape[0], input.shape[a]) {
                    if n != d {
                        return Err(format!(
                            "{name} has {n} elements, but axis {a} of input {} has {d}",
                            input.describe()
                        ));
                    }
                }
            }
        }
        _ => {
            return Err(format!(
                "scale of type {} is neither a scalar nor a vector",
                scale.describe()
            ))
        }
    }
    Ok(())
}

pub(super) fn quantize(inputs: &Inputs<'_>) -> Result<Operand, String> {
    let input = inputs.tensor("input")?;
    let name = inputs
        .opt_str("output_dtype")?
        .ok_or("lacks its required input \"output_dtype\"")?;
    let dtype = match name {
        "int8" => DataType::Int8,
        "uint8" => DataType::Uint8,
        other => return Err(format!("output_dtype {other:?} is not int8 or uint8")),
    };
    if let Some(zero_point) = inputs.get("zero_point")? {
        if zero_point.ty.dtype != dtype {
            return Err(format!(
                "zero_point is {}, output_dtype {name}",
                dtype_name(zero_point.ty.dtype)
            ));
        }
    }
    if let Some(scale) = inputs.get("scale")?.and_then(|s| s.value.as_ref()) {
        if scale
            .to_floats()
            .is_some_and(|v| v.iter().all(|&s| s == 0.0))
        {
            return Err("scale is 0".to_string());
        }
    }
    check_scale(inputs, input)?;
    Ok(Operand::tensor(input.with_dtype(dtype)))
}

pub(super) fn dequantize(inputs: &Inputs<'_>) -> Result<Operand, String> {
    let input = inputs.tensor("input")?;
    check_scale(inputs, input)?;
    let scale = inputs.tensor("scale")?;
    Ok(Operand::tensor(input.with_dtype(scale.dtype)))
}

pub(super) fn conv_quantized(inputs: &Inputs<'_>) -> Result<Operand, String> {
    match inputs.opt_str("quantization_type")? {
        Some("linear" | "lut") => {}
        Some(other) => return Err(format!("quantization_type {other:?} is not linear or lut")),
        None => return Err("lacks its required input \"quantization_type\"".to_string()),
    }
    super::linalg::conv(inputs)
}
