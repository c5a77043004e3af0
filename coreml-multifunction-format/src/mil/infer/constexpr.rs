//! The `constexpr_*` ops: a decompressed weight's type, from its
//! compressed parts (coremltools' iOS 16 and iOS 18 definitions).

use super::{dtype_from_name, Elements, Inputs, Operand, RuleResult, TensorType};
use crate::mil::ops::Constexpr;
use crate::proto::mil_spec::DataType;

/// The shape a `shape` parameter (iOS 16 forms) gives.
fn shape_parameter(inputs: &Inputs<'_>) -> Result<Option<Vec<u64>>, String> {
    inputs
        .opt_i64_vec("shape")?
        .map(|v| {
            v.into_iter()
                .map(|d| u64::try_from(d).map_err(|_| format!("shape has a negative entry {d}")))
                .collect()
        })
        .transpose()
}

/// Checks that `indices` have the bits to address every entry of each
/// palette of `lut` (`[..., 2^bits, vector_size]`).
fn check_index_bits(indices: &TensorType, lut: &TensorType) -> Result<(), String> {
    let bits = match indices.dtype {
        DataType::Uint1 => 1,
        DataType::Uint2 => 2,
        DataType::Uint3 => 3,
        DataType::Uint4 => 4,
        DataType::Uint6 => 6,
        DataType::Uint8 => 8,
        _ => return Ok(()),
    };
    let entries = lut.shape.len().checked_sub(2).and_then(|i| lut.shape[i]);
    match entries {
        Some(n) if n != 1 << bits => Err(format!(
            "lut {} has {n} entries per palette, which {} indices of {bits} bits do not address",
            lut.describe(),
            indices.describe()
        )),
        _ => Ok(()),
    }
}

/// `shape` with dimension `vector_axis` multiplied by the vector size of
/// `lut` (its last dimension), as vector palettization expands it.
fn expand_vector_axis(
    shape: &TensorType,
    lut: &TensorType,
    inputs: &Inputs<'_>,
) -> Result<TensorType, String> {
    let mut out = shape.clone();
    let vector_size = lut.shape.last().copied().flatten().unwrap_or(1);
    if vector_size > 1 {
        let axis = inputs
            .opt_i64("vector_axis")?
            .ok_or("a vector palette (lut's last dimension > 1) needs vector_axis")?;
        let axis = super::axis(axis, out.rank())?;
        out.shape[axis] = out.shape[axis].map(|d| d * vector_size);
    }
    Ok(out)
}

/// Checks that each dimension of `data` is a whole number of blocks of
/// `scale` (the blockwise ops: one scale per block).
fn check_blocks(data: &TensorType, scale: &TensorType) -> Result<(), String> {
    if scale.rank() != data.rank() {
        return Err(format!(
            "scale {} and data {} differ in rank",
            scale.describe(),
            data.describe()
        ));
    }
    for (axis, (&d, &s)) in data.shape.iter().zip(&scale.shape).enumerate() {
        if let (Some(d), Some(s)) = (d, s) {
            if s == 0 || d % s != 0 {
                return Err(format!(
                    "axis {axis} of data {} is not a whole number of blocks of scale {}",
                    data.describe(),
                    scale.describe()
                ));
            }
        }
    }
    Ok(())
}

/// Checks, where the mask is known, that it has one 1 per nonzero value.
fn check_mask_count(inputs: &Inputs<'_>, mask: &str, nonzero: &str) -> Result<(), String> {
    let ones = match inputs.get(mask)?.and_then(|m| m.value.as_ref()) {
        Some(Elements::Int(bits)) => bits.iter().filter(|b| **b != Some(0)).count() as u64,
        Some(Elements::Bool(bits)) => bits.iter().filter(|b| **b).count() as u64,
        _ => return Ok(()),
    };
    match inputs.tensor(nonzero)?.element_count() {
        Some(count) if count != ones => Err(format!(
            "{mask} has {ones} ones but {nonzero} has {count} values"
        )),
        _ => Ok(()),
    }
}

pub(super) fn infer(op: Constexpr, inputs: &Inputs<'_>) -> RuleResult {
    let tensor = |ty: TensorType| Ok(vec![Operand::tensor(ty)]);
    match op {
        Constexpr::AffineDequantize => {
            let data = inputs.tensor("quantized_data")?;
            let axis = super::axis(inputs.i64("axis")?, data.rank())?;
            for param in ["scale", "zero_point"] {
                let values = inputs.tensor(param)?;
                let length = values.element_count();
                if values.rank() == 1 && length != Some(1) && length != data.shape[axis] {
                    return Err(format!(
                        "{param} {} has not one value per element of axis {axis} of {}",
                        values.describe(),
                        data.describe()
                    ));
                }
            }
            tensor(data.with_dtype(inputs.tensor("scale")?.dtype))
        }
        Constexpr::BlockwiseShiftScale => {
            let data = inputs.tensor("data")?;
            let scale = inputs.tensor("scale")?;
            check_blocks(data, scale)?;
            tensor(data.with_dtype(scale.dtype))
        }
        Constexpr::LutToDense => {
            let lut = inputs.tensor("lut")?;
            match shape_parameter(inputs)? {
                Some(shape) => tensor(TensorType::known(lut.dtype, &shape)),
                None => {
                    let indices = inputs.tensor("indices")?;
                    check_index_bits(indices, lut)?;
                    let out = expand_vector_axis(indices, lut, inputs)?;
                    tensor(out.with_dtype(lut.dtype))
                }
            }
        }
        Constexpr::SparseToDense => {
            let data = inputs.tensor("nonzero_data")?;
            match shape_parameter(inputs)? {
                Some(shape) => tensor(TensorType::known(data.dtype, &shape)),
                None => {
                    check_mask_count(inputs, "mask", "nonzero_data")?;
                    tensor(inputs.tensor("mask")?.with_dtype(data.dtype))
                }
            }
        }
        Constexpr::Cast => {
            let source = inputs.tensor("source_val")?;
            let name = inputs
                .opt_str("output_dtype")?
                .ok_or("lacks its required input \"output_dtype\"")?;
            let dtype = dtype_from_name(name)
                .ok_or_else(|| format!("output_dtype {name:?} is not a type"))?;
            tensor(source.with_dtype(dtype))
        }
        Constexpr::LutToSparse => {
            let mask = inputs.tensor("indices_mask")?;
            let nonzero = inputs.tensor("indices_nonzero_data")?;
            let lut = inputs.tensor("lut")?;
            check_mask_count(inputs, "indices_mask", "indices_nonzero_data")?;
            check_index_bits(nonzero, lut)?;
            let vector_size = lut.shape.last().copied().flatten().unwrap_or(1);
            let out_mask = expand_vector_axis(mask, lut, inputs)?;
            let out_data = TensorType {
                dtype: lut.dtype,
                shape: nonzero
                    .shape
                    .iter()
                    .map(|d| d.map(|d| d * vector_size))
                    .collect(),
            };
            Ok(vec![Operand::tensor(out_mask), Operand::tensor(out_data)])
        }
        Constexpr::SparseBlockwiseShiftScale => {
            let mask = inputs.tensor("data_mask")?;
            let nonzero = inputs.tensor("nonzero_data")?;
            let scale = inputs.tensor("scale")?;
            check_blocks(mask, scale)?;
            check_mask_count(inputs, "data_mask", "nonzero_data")?;
            Ok(vec![
                Operand::tensor(mask.clone()),
                Operand::tensor(nonzero.with_dtype(scale.dtype)),
            ])
        }
    }
}
