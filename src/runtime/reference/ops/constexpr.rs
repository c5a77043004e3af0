//! The `constexpr_*` ops: compressed weights, decompressed once at load
//! time (as Core ML does) and then shared like any other weight.
//!
//! - `constexpr_affine_dequantize` (iOS 16): `scale * (quantized_data -
//!   zero_point)`, scale and zero point scalars or vectors along `axis`;
//! - `constexpr_blockwise_shift_scale` (iOS 18): `scale * (data - offset)`,
//!   where scale and offset hold one value per block, the block size along
//!   each axis being `data.shape[i] / scale.shape[i]`;
//! - `constexpr_lut_to_dense`: iOS 16's packed indices into one table with
//!   an output `shape`, and iOS 18's per-block tables (`lut` of shape
//!   `[blocks..., 2^nbits, vector_size]`) with an optional `vector_axis`;
//! - `constexpr_sparse_to_dense`: iOS 16's packed bit mask with `shape`,
//!   and iOS 18's uint1 mask of the output's shape;
//! - `constexpr_cast` (fp16 to fp32);
//! - `constexpr_lut_to_sparse` and `constexpr_sparse_blockwise_shift_scale`
//!   (iOS 18's joint compression): a palette or a quantization applied to
//!   the nonzero entries of a sparse weight only, giving its mask (expanded
//!   along `vector_axis` for vector palettes) and its decompressed nonzero
//!   entries, for a `constexpr_sparse_to_dense` to place.

use std::collections::HashMap;
use std::sync::Arc;

use ndarray::{ArcArray, ArrayD, IxDyn};

use super::axis;
use super::elementwise::zip_with;
use crate::runtime::reference::kernels::StoredWeight;
use crate::runtime::reference::value::{Declared, OpResult, Value};
use coreml_multifunction_format::package::blob::unpack_sub_byte;
use coreml_multifunction_format::proto::mil_spec::DataType;

pub(crate) use coreml_multifunction_format::mil::ops::Constexpr;

fn get<'a>(args: &'a HashMap<&str, Value>, name: &str) -> OpResult<&'a Value> {
    args.get(name)
        .ok_or_else(|| format!("lacks its required input {name:?}"))
}

/// Evaluates a constexpr op on its constant inputs: one value per output
/// (two for the sparse joint-compression ops).
pub(crate) fn evaluate(op: Constexpr, args: &HashMap<&str, Value>) -> OpResult<Vec<Value>> {
    match op {
        Constexpr::LutToSparse => lut_to_sparse(args),
        Constexpr::SparseBlockwiseShiftScale => sparse_blockwise_shift_scale(args),
        single => evaluate_one(single, args).map(|v| vec![v]),
    }
}

fn evaluate_one(op: Constexpr, args: &HashMap<&str, Value>) -> OpResult<Value> {
    match op {
        Constexpr::AffineDequantize => affine_dequantize(args),
        Constexpr::BlockwiseShiftScale => blockwise_shift_scale(args),
        Constexpr::LutToDense if args.contains_key("shape") => lut_to_dense_packed(args),
        Constexpr::LutToDense => lut_to_dense(args),
        Constexpr::SparseToDense => sparse_to_dense(args),
        Constexpr::Cast => {
            let source = get(args, "source_val")?;
            let dtype = get(args, "output_dtype")?.to_str()?;
            if dtype != "fp32" {
                return Err(format!("output_dtype {dtype:?} is not fp32"));
            }
            Ok(Value::Float(source.to_float()?))
        }
        Constexpr::LutToSparse | Constexpr::SparseBlockwiseShiftScale => {
            Err("a two-output constexpr evaluated as one (interpreter bug)".to_string())
        }
    }
}

/// The entries of `dense` where `mask` is set, in row-major order.
fn masked(dense: &Value, mask: &[bool]) -> OpResult<Value> {
    fn pick<T: Copy>(a: &ArcArray<T, IxDyn>, mask: &[bool]) -> OpResult<ArcArray<T, IxDyn>> {
        let kept: Vec<T> = a
            .iter()
            .zip(mask)
            .filter_map(|(&v, &m)| m.then_some(v))
            .collect();
        let count = kept.len();
        ArrayD::from_shape_vec(IxDyn(&[count]), kept)
            .map(ArrayD::into_shared)
            .map_err(|e| e.to_string())
    }
    match dense {
        Value::Int(a) => Ok(Value::Int(pick(a, mask)?)),
        other => Ok(Value::Float(pick(&other.to_float()?, mask)?)),
    }
}

/// `constexpr_lut_to_sparse`: the palette applied to the nonzero indices
/// only. Computed as the dense form (each set mask bit's index looked up in
/// the table of its block) from which the set entries are taken again, so
/// per-block and vector palettes follow `constexpr_lut_to_dense` exactly.
fn lut_to_sparse(args: &HashMap<&str, Value>) -> OpResult<Vec<Value>> {
    let mask = get(args, "indices_mask")?;
    let dense_indices = sparse_to_dense(&HashMap::from([
        (
            "nonzero_data",
            Value::Int(get(args, "indices_nonzero_data")?.to_int()?),
        ),
        ("mask", mask.clone()),
    ]))?;
    let mut lut_args = HashMap::from([
        ("indices", dense_indices),
        ("lut", get(args, "lut")?.clone()),
    ]);
    if let Some(vector_axis) = args.get("vector_axis") {
        lut_args.insert("vector_axis", vector_axis.clone());
    }
    let dense = lut_to_dense(&lut_args)?;
    // The mask grows like the values: each bit repeated along the vector
    // axis.
    let mask_bits = mask.to_bool()?;
    let expanded_mask = if dense.shape() == mask_bits.shape() {
        mask_bits
    } else {
        let along = args
            .get("vector_axis")
            .map(Value::to_i64_scalar)
            .transpose()?
            .ok_or("vectors of more than one element need a vector_axis")?;
        let along = axis(along, mask_bits.ndim())?;
        let vector = dense.shape()[along] / mask_bits.shape()[along].max(1);
        let mut shape = mask_bits.shape().to_vec();
        shape[along] *= vector;
        ArrayD::from_shape_fn(IxDyn(&shape), |mut position| {
            position[along] /= vector;
            mask_bits[position]
        })
        .into_shared()
    };
    let bits: Vec<bool> = expanded_mask.iter().copied().collect();
    let values = masked(&dense, &bits)?;
    Ok(vec![Value::Bool(expanded_mask), values])
}

/// `constexpr_sparse_blockwise_shift_scale`: `constexpr_blockwise_shift_scale`
/// on the nonzero entries only; blocks are those of the dense layout.
fn sparse_blockwise_shift_scale(args: &HashMap<&str, Value>) -> OpResult<Vec<Value>> {
    let mask = get(args, "data_mask")?;
    let dense = sparse_to_dense(&HashMap::from([
        ("nonzero_data", get(args, "nonzero_data")?.clone()),
        ("mask", mask.clone()),
    ]))?;
    let mut shift_args = HashMap::from([("data", dense), ("scale", get(args, "scale")?.clone())]);
    if let Some(offset) = args.get("offset") {
        shift_args.insert("offset", offset.clone());
    }
    let dequantized = blockwise_shift_scale(&shift_args)?;
    let bits = mask.to_bool_vec()?;
    let values = masked(&dequantized, &bits)?;
    Ok(vec![Value::Bool(mask.to_bool()?), values])
}

fn reshape_f32(a: &ArcArray<f32, IxDyn>, shape: &[usize]) -> OpResult<ArcArray<f32, IxDyn>> {
    ArrayD::from_shape_vec(IxDyn(shape), a.iter().copied().collect())
        .map(ArrayD::into_shared)
        .map_err(|e| e.to_string())
}

fn affine_dequantize(args: &HashMap<&str, Value>) -> OpResult<Value> {
    let data = get(args, "quantized_data")?.to_float()?;
    let zero_point = get(args, "zero_point")?.to_float()?;
    let scale = get(args, "scale")?.to_float()?;
    let rank = data.ndim();
    let along = axis(get(args, "axis")?.to_i64_scalar()?, rank)?;
    // A vector parameter lies along `axis`; a scalar applies everywhere.
    let promote = |param: &ArcArray<f32, IxDyn>, name: &str| -> OpResult<ArcArray<f32, IxDyn>> {
        let mut shape = vec![1; rank];
        match param.ndim() {
            0 => {}
            1 if param.len() == data.shape()[along] => shape[along] = param.len(),
            _ => {
                return Err(format!(
                    "{name} of shape {:?} is neither a scalar nor a vector of the {} entries of axis {along}",
                    param.shape(),
                    data.shape()[along]
                ))
            }
        }
        reshape_f32(param, &shape)
    };
    let zero_point = promote(&zero_point, "zero_point")?;
    let scale = promote(&scale, "scale")?;
    let shifted = zip_with(&data, &zero_point, |q, z| q - z)?;
    Ok(Value::Float(zip_with(&shifted, &scale, |v, s| v * s)?))
}

/// Whether a weight `constexpr` makes may stay compressed for `linear`
/// (see [`as_stored`]).
pub(crate) fn keeps_stored(constexpr: Constexpr) -> bool {
    matches!(
        constexpr,
        Constexpr::BlockwiseShiftScale | Constexpr::LutToDense
    )
}

/// The weight `constexpr` makes from `args`, kept compressed for `linear`
/// ([`Value::Weight`]) when [`keeps_stored`] and its form allow;
/// None to decompress it as usual.
pub(crate) fn as_stored(
    constexpr: Constexpr,
    args: &HashMap<&str, Value>,
    declared: &Declared,
) -> OpResult<Option<Value>> {
    match constexpr {
        Constexpr::BlockwiseShiftScale => blockwise_as_stored(args, declared),
        Constexpr::LutToDense => lut_as_stored(args, declared),
        _ => Ok(None),
    }
}

/// `constexpr_blockwise_shift_scale` kept quantized, for `linear`: a
/// weight of rank 2 with integers of 8 bits or fewer and one scale (and
/// offset) per row and block of a row, as [`Value::Weight`], holding the
/// values [`blockwise_shift_scale`] and the rounding to `declared` give.
/// None for every other form (decompressed as usual).
fn blockwise_as_stored(
    args: &HashMap<&str, Value>,
    declared: &Declared,
) -> OpResult<Option<Value>> {
    let fp16 = match declared.data_type {
        DataType::Float16 => true,
        DataType::Float32 => false,
        _ => return Ok(None),
    };
    let (Value::Int(data), Some(scale)) = (get(args, "data")?, args.get("scale")) else {
        return Ok(None);
    };
    let shape = data.shape().to_vec();
    if !declared.admits(&shape) {
        return Ok(None);
    }
    let data = data.as_standard_layout();
    let Some(data) = data.as_slice() else {
        return Ok(None);
    };
    let scale = scale.to_float()?;
    let offset = args
        .get("offset")
        .map(|o| {
            o.to_float()
                .map(|o| (o.shape() == scale.shape()).then(|| o.iter().copied().collect()))
        })
        .transpose()?;
    let offset = match offset {
        Some(None) => return Ok(None),
        Some(Some(o)) => Some(o),
        None => None,
    };
    let parameters = scale.shape().to_vec();
    let scale: Vec<f32> = scale.iter().copied().collect();
    Ok(
        StoredWeight::blockwise(&shape, data, &parameters, scale, offset, fp16)
            .map(|w| Value::Weight(Arc::new(w))),
    )
}

/// iOS 18's `constexpr_lut_to_dense` kept palettized, for `linear`: a
/// weight of rank 2 whose palette holds scalars (`lut` of shape `[row
/// groups, column groups, entries, 1]`, at most 256 entries), as
/// [`Value::Weight`], holding the values [`lut_to_dense`] and the rounding
/// to `declared` give. None for every other form (iOS 16's, with `shape`;
/// vector palettes), which is decompressed as usual.
fn lut_as_stored(args: &HashMap<&str, Value>, declared: &Declared) -> OpResult<Option<Value>> {
    let fp16 = match declared.data_type {
        DataType::Float16 => true,
        DataType::Float32 => false,
        _ => return Ok(None),
    };
    if args.contains_key("shape") {
        return Ok(None);
    }
    let (Value::Int(indices), Some(lut)) = (get(args, "indices")?, args.get("lut")) else {
        return Ok(None);
    };
    let shape = indices.shape().to_vec();
    let &[row_groups, column_groups, entries, 1] = lut.shape().as_slice() else {
        return Ok(None);
    };
    if !declared.admits(&shape) || matches!(lut, Value::Int(_)) {
        return Ok(None);
    }
    let indices = indices.as_standard_layout();
    let Some(indices) = indices.as_slice() else {
        return Ok(None);
    };
    let mut tables: Vec<f32> = lut.to_float()?.iter().copied().collect();
    if fp16 {
        tables
            .iter_mut()
            .for_each(|v| *v = half::f16::from_f32(*v).to_f32());
    }
    Ok(StoredWeight::palettized(
        &shape,
        indices,
        &[row_groups, column_groups, entries],
        &tables,
    )
    .map(|w| Value::Weight(Arc::new(w))))
}

fn blockwise_shift_scale(args: &HashMap<&str, Value>) -> OpResult<Value> {
    let data = get(args, "data")?.to_float()?;
    let scale = get(args, "scale")?.to_float()?;
    let offset = args.get("offset").map(Value::to_float).transpose()?;
    let (ds, ss) = (data.shape().to_vec(), scale.shape().to_vec());
    if ds.is_empty()
        || ds.len() != ss.len()
        || ds.iter().zip(&ss).any(|(&d, &s)| s == 0 || d % s != 0)
    {
        return Err(format!(
            "scale of shape {ss:?} does not divide data of shape {ds:?} into blocks"
        ));
    }
    if let Some(offset) = &offset {
        if offset.shape() != ss.as_slice() {
            return Err(format!(
                "offset has shape {:?}, scale {ss:?}",
                offset.shape()
            ));
        }
    }
    // Split each axis into (blocks, block size); the parameters broadcast
    // over the block-size axes.
    let split: Vec<usize> = ds.iter().zip(&ss).flat_map(|(&d, &s)| [s, d / s]).collect();
    let per_block: Vec<usize> = ss.iter().flat_map(|&s| [s, 1]).collect();
    let data = reshape_f32(&data, &split)?;
    let shifted = match offset {
        Some(offset) => zip_with(&data, &reshape_f32(&offset, &per_block)?, |v, o| v - o)?,
        None => data,
    };
    let scaled = zip_with(&shifted, &reshape_f32(&scale, &per_block)?, |v, s| v * s)?;
    Ok(Value::Float(reshape_f32(&scaled, &ds)?))
}

/// iOS 16: `indices` are bytes of packed `log2(lut.len())`-bit indices.
fn lut_to_dense_packed(args: &HashMap<&str, Value>) -> OpResult<Value> {
    let indices = get(args, "indices")?;
    let lut = get(args, "lut")?;
    let shape: Vec<usize> = get(args, "shape")?
        .to_i64_vec()?
        .into_iter()
        .map(|d| usize::try_from(d).map_err(|_| format!("shape has the negative entry {d}")))
        .collect::<OpResult<_>>()?;
    if args.contains_key("vector_axis") {
        return Err("vector_axis belongs to the iOS 18 form, without shape".to_string());
    }
    let palette = lut.shape();
    let entries = match palette.as_slice() {
        [n] => *n,
        other => return Err(format!("lut must be a vector, not of shape {other:?}")),
    };
    let bits = match entries {
        2 => 1,
        4 => 2,
        16 => 4,
        64 => 6,
        256 => 8,
        n => return Err(format!("a lut of {n} entries is not 2, 4, 16, 64 or 256")),
    };
    let bytes: Vec<u8> = indices
        .to_i64_vec()?
        .into_iter()
        .map(|b| u8::try_from(b).map_err(|_| format!("index byte {b} is not a uint8")))
        .collect::<OpResult<_>>()?;
    let count: usize = shape.iter().product();
    let unpacked = unpack_sub_byte(&bytes, bits, count).ok_or_else(|| {
        format!(
            "{} bytes do not hold {count} {bits}-bit indices",
            bytes.len()
        )
    })?;
    fn pick<T: Copy>(
        table: &ArcArray<T, IxDyn>,
        at: &[u8],
        shape: &[usize],
    ) -> OpResult<ArcArray<T, IxDyn>> {
        let table: Vec<T> = table.iter().copied().collect();
        ArrayD::from_shape_vec(
            IxDyn(shape),
            at.iter().map(|&i| table[usize::from(i)]).collect(),
        )
        .map(ArrayD::into_shared)
        .map_err(|e| e.to_string())
    }
    Ok(match lut {
        Value::Int(t) => Value::Int(pick(t, &unpacked, &shape)?),
        other => Value::Float(pick(&other.to_float()?, &unpacked, &shape)?),
    })
}

/// iOS 18: one table per block, possibly of vectors.
fn lut_to_dense(args: &HashMap<&str, Value>) -> OpResult<Value> {
    let indices = get(args, "indices")?.to_int()?;
    let lut = get(args, "lut")?;
    let vector_axis = args
        .get("vector_axis")
        .map(Value::to_i64_scalar)
        .transpose()?;
    let ds = indices.shape().to_vec();
    let ls = lut.shape();
    let rank = ds.len();
    if rank == 0 || ls.len() != rank + 2 || (0..rank).any(|i| ls[i] == 0 || ds[i] % ls[i] != 0) {
        return Err(format!(
            "a lut of shape {ls:?} does not fit indices of shape {ds:?}"
        ));
    }
    let (entries, vector) = (ls[rank], ls[rank + 1]);
    let vector_axis = match (vector_axis, vector) {
        (Some(a), _) => Some(axis(a, rank)?),
        (None, 1) => None,
        (None, _) => return Err("vectors of more than one element need a vector_axis".to_string()),
    };
    let standard = indices.as_standard_layout();
    let at = standard
        .as_slice()
        .ok_or("indices are not contiguous (interpreter bug)")?;
    let blocks: Vec<usize> = (0..rank).map(|i| ds[i] / ls[i]).collect();
    let mut table_strides = vec![1usize; rank];
    for d in (0..rank.saturating_sub(1)).rev() {
        table_strides[d] = table_strides[d + 1] * ls[d + 1];
    }
    // The table each element reads, walking the elements in row-major order.
    let mut tables = Vec::with_capacity(at.len());
    let mut position = vec![0usize; rank];
    for _ in 0..at.len() {
        tables.push(
            (0..rank)
                .map(|d| position[d] / blocks[d] * table_strides[d])
                .sum::<usize>(),
        );
        for d in (0..rank).rev() {
            position[d] += 1;
            if position[d] < ds[d] {
                break;
            }
            position[d] = 0;
        }
    }
    fn expand<T: Copy>(
        lut: &ArcArray<T, IxDyn>,
        at: &[i32],
        tables: &[usize],
        entries: usize,
        vector: usize,
    ) -> OpResult<Vec<T>> {
        let standard = lut.as_standard_layout();
        let lut = standard
            .as_slice()
            .ok_or("the lut is not contiguous (interpreter bug)")?;
        let mut out = Vec::with_capacity(at.len() * vector);
        for (&index, &table) in at.iter().zip(tables) {
            let index = usize::try_from(index)
                .ok()
                .filter(|&i| i < entries)
                .ok_or_else(|| format!("index {index} is outside a table of {entries} entries"))?;
            let start = (table * entries + index) * vector;
            out.extend_from_slice(&lut[start..start + vector]);
        }
        Ok(out)
    }
    // Elements come out as [indices..., vector]; a vector spreads along
    // `vector_axis`.
    let mut expanded_shape = ds.clone();
    expanded_shape.push(vector);
    let mut out_shape = ds.clone();
    let mut order: Vec<usize> = (0..rank + 1).collect();
    if let Some(a) = vector_axis {
        out_shape[a] *= vector;
        order = (0..=a).chain([rank]).chain(a + 1..rank).collect();
    }
    fn arrange<T: Copy>(
        data: Vec<T>,
        expanded: &[usize],
        order: &[usize],
        out: &[usize],
    ) -> OpResult<ArcArray<T, IxDyn>> {
        let array = ArrayD::from_shape_vec(IxDyn(expanded), data).map_err(|e| e.to_string())?;
        let moved = array.permuted_axes(IxDyn(order));
        let data: Vec<T> = moved.iter().copied().collect();
        ArrayD::from_shape_vec(IxDyn(out), data)
            .map(ArrayD::into_shared)
            .map_err(|e| e.to_string())
    }
    Ok(match lut {
        Value::Int(t) => Value::Int(arrange(
            expand(t, at, &tables, entries, vector)?,
            &expanded_shape,
            &order,
            &out_shape,
        )?),
        other => Value::Float(arrange(
            expand(&other.to_float()?, at, &tables, entries, vector)?,
            &expanded_shape,
            &order,
            &out_shape,
        )?),
    })
}

fn sparse_to_dense(args: &HashMap<&str, Value>) -> OpResult<Value> {
    let data = get(args, "nonzero_data")?;
    let mask = get(args, "mask")?;
    let (shape, bits): (Vec<usize>, Vec<bool>) = match args.get("shape") {
        // iOS 16: mask bytes, one bit per element, LSB first.
        Some(shape) => {
            let shape: Vec<usize> = shape
                .to_i64_vec()?
                .into_iter()
                .map(|d| {
                    usize::try_from(d).map_err(|_| format!("shape has the negative entry {d}"))
                })
                .collect::<OpResult<_>>()?;
            let count: usize = shape.iter().product();
            let bytes: Vec<u8> = mask
                .to_i64_vec()?
                .into_iter()
                .map(|b| u8::try_from(b).map_err(|_| format!("mask byte {b} is not a uint8")))
                .collect::<OpResult<_>>()?;
            let bits = unpack_sub_byte(&bytes, 1, count).ok_or_else(|| {
                format!("{} mask bytes do not cover {count} elements", bytes.len())
            })?;
            (shape, bits.into_iter().map(|b| b != 0).collect())
        }
        // iOS 18: a uint1 mask of the output's shape.
        None => (mask.shape(), mask.to_bool_vec()?),
    };
    let set = bits.iter().filter(|&&b| b).count();
    if data.shape() != [set] {
        return Err(format!(
            "nonzero_data of shape {:?} does not hold the {set} elements the mask sets",
            data.shape()
        ));
    }
    fn scatter<T: Copy + Default>(
        values: &ArcArray<T, IxDyn>,
        bits: &[bool],
        shape: &[usize],
    ) -> OpResult<ArcArray<T, IxDyn>> {
        let mut next = values.iter();
        let out: Vec<T> = bits
            .iter()
            .map(|&b| {
                if b {
                    next.next().copied().unwrap_or_default()
                } else {
                    T::default()
                }
            })
            .collect();
        ArrayD::from_shape_vec(IxDyn(shape), out)
            .map(ArrayD::into_shared)
            .map_err(|e| e.to_string())
    }
    Ok(match data {
        Value::Int(values) => Value::Int(scatter(values, &bits, &shape)?),
        other => Value::Float(scatter(&other.to_float()?, &bits, &shape)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn float(shape: &[usize], data: Vec<f32>) -> Value {
        Value::float(shape.to_vec(), data).unwrap()
    }

    fn int(shape: &[usize], data: Vec<i32>) -> Value {
        Value::int(shape.to_vec(), data).unwrap()
    }

    fn floats(v: Value) -> Vec<f32> {
        match v {
            Value::Float(a) => a.iter().copied().collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn blockwise_shift_scale_applies_one_scale_per_block() {
        // 2 x 4 data, scale per row and per block of two columns.
        let args = HashMap::from([
            ("data", int(&[2, 4], vec![1, 2, 3, 4, -1, -2, -3, -4])),
            ("scale", float(&[2, 2], vec![1.0, 10.0, 0.5, 2.0])),
            ("offset", int(&[2, 2], vec![0, 1, 1, 0])),
        ]);
        let out = evaluate_one(Constexpr::BlockwiseShiftScale, &args).unwrap();
        assert_eq!(out.shape(), vec![2, 4]);
        assert_eq!(
            floats(out),
            vec![1.0, 2.0, 20.0, 30.0, -1.0, -1.5, -6.0, -8.0]
        );
    }

    #[test]
    fn affine_dequantize_broadcasts_along_its_axis() {
        let args = HashMap::from([
            ("quantized_data", int(&[2, 2], vec![1, 2, 3, 4])),
            ("zero_point", int(&[2], vec![1, 0])),
            ("scale", float(&[2], vec![2.0, 0.5])),
            ("axis", int(&[], vec![0])),
        ]);
        let out = evaluate_one(Constexpr::AffineDequantize, &args).unwrap();
        assert_eq!(floats(out), vec![0.0, 2.0, 1.5, 2.0]);
    }

    #[test]
    fn lut_to_dense_per_block_and_vector() {
        // coremltools' docstring, case 1: two tables over the rows.
        let args = HashMap::from([
            (
                "indices",
                int(&[6, 2], vec![2, 3, 3, 0, 1, 0, 3, 0, 2, 1, 0, 3]),
            ),
            (
                "lut",
                float(
                    &[2, 1, 4, 1],
                    vec![1.0, 5.0, 9.0, 13.0, 2.0, 10.0, 18.0, 26.0],
                ),
            ),
        ]);
        let out = evaluate_one(Constexpr::LutToDense, &args).unwrap();
        assert_eq!(
            floats(out),
            vec![9.0, 13.0, 13.0, 1.0, 5.0, 1.0, 26.0, 2.0, 18.0, 10.0, 2.0, 26.0]
        );
        // Case 2.2: vectors of 3 along the last axis.
        let (a, b) = ([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]);
        let args = HashMap::from([
            ("indices", int(&[2, 2, 2], vec![0, 0, 1, 0, 1, 1, 0, 0])),
            ("lut", float(&[1, 1, 1, 2, 3], [a, b].concat())),
            ("vector_axis", int(&[], vec![2])),
        ]);
        let out = evaluate_one(Constexpr::LutToDense, &args).unwrap();
        assert_eq!(out.shape(), vec![2, 2, 6]);
        let expected: Vec<f32> = [a, a, b, a, b, b, a, a].concat();
        assert_eq!(floats(out), expected);
        // Case 2.1: the same along axis 1.
        let args = HashMap::from([
            ("indices", int(&[2, 2, 2], vec![0, 0, 1, 0, 1, 1, 0, 0])),
            ("lut", float(&[1, 1, 1, 2, 3], [a, b].concat())),
            ("vector_axis", int(&[], vec![1])),
        ]);
        let out = evaluate_one(Constexpr::LutToDense, &args).unwrap();
        assert_eq!(out.shape(), vec![2, 6, 2]);
        let Value::Float(out) = out else { panic!() };
        // out[0, :, 0] = a then b (indices [0][0][0] = 0, [0][1][0] = 1).
        let column: Vec<f32> = (0..6).map(|i| out[[0, i, 0]]).collect();
        assert_eq!(column, [a, b].concat());
    }

    #[test]
    fn packed_lut_and_sparse_forms_of_ios16() {
        // 2-bit indices 1, 2, 3, 0, 1 packed LSB first: 0b00_11_10_01, 0b01.
        let args = HashMap::from([
            ("indices", int(&[2], vec![0b0011_1001, 0b01])),
            ("lut", float(&[4], vec![0.0, 1.0, 2.0, 3.0])),
            ("shape", int(&[1], vec![5])),
        ]);
        assert_eq!(
            floats(evaluate_one(Constexpr::LutToDense, &args).unwrap()),
            vec![1.0, 2.0, 3.0, 0.0, 1.0]
        );
        let args = HashMap::from([
            ("nonzero_data", float(&[2], vec![7.0, 8.0])),
            ("mask", int(&[1], vec![0b0000_1010])),
            ("shape", int(&[2], vec![2, 2])),
        ]);
        assert_eq!(
            floats(evaluate_one(Constexpr::SparseToDense, &args).unwrap()),
            vec![0.0, 7.0, 0.0, 8.0]
        );
    }

    /// coremltools' docstring example for `constexpr_lut_to_sparse`.
    #[test]
    fn lut_to_sparse_depalettizes_only_the_nonzero_entries() {
        let mask_bits = [
            1, 1, 0, 0, 0, 0, 1, 1, 0, 0, 0, 1, 0, 1, 1, 0, 1, 0, 0, 0, 0, 1, 0, 0,
        ];
        let mask = Value::bool(vec![4, 6], mask_bits.iter().map(|&b| b == 1).collect()).unwrap();
        let indices = int(&[9], vec![0, 1, 1, 0, 1, 1, 0, 0, 1]);
        let scalar = HashMap::from([
            ("indices_mask", mask.clone()),
            ("indices_nonzero_data", indices.clone()),
            ("lut", float(&[1, 1, 2, 1], vec![2.0, 3.0])),
        ]);
        let out = evaluate(Constexpr::LutToSparse, &scalar).unwrap();
        assert_eq!(out[0].shape(), [4, 6]);
        assert_eq!(
            floats(out[1].clone()),
            [2.0, 3.0, 3.0, 2.0, 3.0, 3.0, 2.0, 2.0, 3.0]
        );
        let vector = HashMap::from([
            ("indices_mask", mask),
            ("indices_nonzero_data", indices),
            ("lut", float(&[1, 1, 2, 2], vec![2.0, 2.0, 3.0, 3.0])),
            ("vector_axis", int(&[], vec![0])),
        ]);
        let out = evaluate(Constexpr::LutToSparse, &vector).unwrap();
        // Each mask row doubled; values in the dense layout's row order.
        assert_eq!(out[0].shape(), [8, 6]);
        assert_eq!(
            out[0].to_bool_vec().unwrap()[..12]
                .iter()
                .map(|&b| u8::from(b))
                .collect::<Vec<_>>(),
            [1, 1, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0]
        );
        assert_eq!(
            floats(out[1].clone()),
            [
                2.0, 3.0, 2.0, 3.0, 3.0, 2.0, 3.0, 3.0, 2.0, 3.0, 3.0, 2.0, 2.0, 3.0, 2.0, 2.0,
                3.0, 3.0
            ]
        );
    }

    #[test]
    fn sparse_blockwise_shift_scale_dequantizes_the_nonzero_entries_by_block() {
        // A [2, 4] weight, one scale per 2-column block, two entries set.
        let args = HashMap::from([
            (
                "data_mask",
                Value::bool(
                    vec![2, 4],
                    vec![true, false, false, false, false, false, false, true],
                )
                .unwrap(),
            ),
            ("nonzero_data", int(&[2], vec![3, -2])),
            ("scale", float(&[1, 2], vec![0.5, 10.0])),
            ("offset", int(&[1, 2], vec![1, 0])),
        ]);
        let out = evaluate(Constexpr::SparseBlockwiseShiftScale, &args).unwrap();
        assert_eq!(out[0].shape(), [2, 4]);
        assert_eq!(floats(out[1].clone()), [1.0, -20.0]);
    }
}
