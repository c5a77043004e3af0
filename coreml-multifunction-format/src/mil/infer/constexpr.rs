//! The `constexpr_*` ops: a decompressed weight's type, from its
//! compressed parts (coremltools' iOS 16 and iOS 18 definitions).

use super::{dtype_from_name, Inputs, Operand, RuleResult, TensorType};
use crate::mil::ops::Constexpr;

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

pub(super) fn infer(op: Constexpr, inputs: &Inputs<'_>) -> RuleResult {
    let tensor = |ty: TensorType| Ok(vec![Operand::tensor(ty)]);
    match op {
        Constexpr::AffineDequantize => {
            let data = inputs.tensor("quantized_data")?;
            tensor(data.with_dtype(inputs.tensor("scale")?.dtype))
        }
        Constexpr::BlockwiseShiftScale => {
            let data = inputs.tensor("data")?;
            let scale = inputs.tensor("scale")?;
            if scale.rank() != data.rank() {
                return Err(format!(
                    "scale {} and data {} differ in rank",
                    scale.describe(),
                    data.describe()
                ));
            }
            tensor(data.with_dtype(scale.dtype))
        }
        Constexpr::LutToDense => {
            let lut = inputs.tensor("lut")?;
            match shape_parameter(inputs)? {
                Some(shape) => tensor(TensorType::known(lut.dtype, &shape)),
                None => {
                    let indices = inputs.tensor("indices")?;
                    let out = expand_vector_axis(indices, lut, inputs)?;
                    tensor(out.with_dtype(lut.dtype))
                }
            }
        }
        Constexpr::SparseToDense => {
            let data = inputs.tensor("nonzero_data")?;
            match shape_parameter(inputs)? {
                Some(shape) => tensor(TensorType::known(data.dtype, &shape)),
                None => tensor(inputs.tensor("mask")?.with_dtype(data.dtype)),
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
            Ok(vec![
                Operand::tensor(mask.clone()),
                Operand::tensor(nonzero.with_dtype(scale.dtype)),
            ])
        }
    }
}
