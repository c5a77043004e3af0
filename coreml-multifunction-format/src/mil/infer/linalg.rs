//! Rules for the ops that contract: `linear`, `matmul`,
//! `scaled_dot_product_attention`, the convolutions and the pools.

use super::elementwise::broadcast;
use super::{unify, Dim, Inputs, Operand, TensorType};
use crate::mil::shapes::{self, sliding_window};

pub(super) fn linear(inputs: &Inputs<'_>) -> Result<Operand, String> {
    let x = inputs.tensor("x")?;
    let weight = inputs.tensor("weight")?;
    if weight.rank() != 2 || x.rank() == 0 {
        return Err(format!(
            "x of type {} and weight of type {} are not [..., in] and [out, in]",
            x.describe(),
            weight.describe()
        ));
    }
    unify(x.shape[x.rank() - 1], weight.shape[1], || {
        format!(
            "x of type {} has not the {} input features weight {} takes",
            x.describe(),
            super::shape_text(&weight.shape[1..]),
            weight.describe()
        )
    })?;
    let mut shape = x.shape.clone();
    *shape.last_mut().expect("rank checked") = weight.shape[0];
    Ok(Operand::tensor(TensorType {
        dtype: x.dtype,
        shape,
    }))
}

pub(super) fn matmul(inputs: &Inputs<'_>) -> Result<Operand, String> {
    let x = inputs.tensor("x")?;
    let y = inputs.tensor("y")?;
    let mut xs = x.shape.clone();
    let mut ys = y.shape.clone();
    if xs.is_empty() || ys.is_empty() {
        return Err("matmul does not take scalars".to_string());
    }
    // numpy's rules: a vector x is a row, a vector y a column, and the
    // added axis is dropped from the result.
    let (x_vector, y_vector) = (xs.len() == 1, ys.len() == 1);
    if x_vector {
        xs.insert(0, Some(1));
    }
    if y_vector {
        ys.push(Some(1));
    }
    let (xr, yr) = (xs.len(), ys.len());
    if inputs.opt_bool("transpose_x")?.unwrap_or(false) {
        xs.swap(xr - 2, xr - 1);
    }
    if inputs.opt_bool("transpose_y")?.unwrap_or(false) {
        ys.swap(yr - 2, yr - 1);
    }
    unify(xs[xr - 1], ys[yr - 2], || {
        format!(
            "x of type {} and y of type {} do not multiply",
            x.describe(),
            y.describe()
        )
    })?;
    let mut shape = broadcast(&xs[..xr - 2], &ys[..yr - 2])?;
    if !x_vector {
        shape.push(xs[xr - 2]);
    }
    if !y_vector {
        shape.push(ys[yr - 1]);
    }
    Ok(Operand::tensor(TensorType {
        dtype: x.dtype,
        shape,
    }))
}

pub(super) fn attention(inputs: &Inputs<'_>) -> Result<Operand, String> {
    let q = inputs.tensor("query")?;
    let k = inputs.tensor("key")?;
    let v = inputs.tensor("value")?;
    if q.rank() < 3 || k.rank() != q.rank() || v.rank() != q.rank() {
        return Err(format!(
            "query {}, key {} and value {} are not [..., L, E], [..., S, E] and [..., S, Ev]",
            q.describe(),
            k.describe(),
            v.describe()
        ));
    }
    let r = q.rank();
    let mismatch = || {
        format!(
            "query {}, key {} and value {} do not fit together",
            q.describe(),
            k.describe(),
            v.describe()
        )
    };
    unify(q.shape[r - 1], k.shape[r - 1], mismatch)?;
    unify(k.shape[r - 2], v.shape[r - 2], mismatch)?;
    let batch = broadcast(
        &q.shape[..r - 2],
        &broadcast(&k.shape[..r - 2], &v.shape[..r - 2])?,
    )?;
    let mut shape = batch;
    shape.push(q.shape[r - 2]);
    shape.push(v.shape[r - 1]);
    Ok(Operand::tensor(TensorType {
        dtype: q.dtype,
        shape,
    }))
}

/// One positive number per spatial axis, from parameter `name` (or
/// `default` for each).
fn per_axis(
    inputs: &Inputs<'_>,
    name: &str,
    spatial: usize,
    default: i64,
) -> Result<Vec<usize>, String> {
    shapes::per_axis(name, inputs.opt_i64_vec(name)?, spatial, default)
}

/// The spatial output extents of a window over `input` (each known or
/// not), as the interpreter computes them for the known ones.
fn window_output(
    inputs: &Inputs<'_>,
    input: &[Dim],
    kernel: &[usize],
    dilations: &[usize],
    ceil_mode: bool,
) -> Result<Vec<Dim>, String> {
    let spatial = input.len();
    let strides = per_axis(inputs, "strides", spatial, 1)?;
    let pad_type = inputs.opt_str("pad_type")?.unwrap_or("valid");
    let pad = inputs
        .opt_i64_vec("pad")?
        .unwrap_or_else(|| vec![0; 2 * spatial]);
    (0..spatial)
        .map(|d| {
            let Some(size) = input[d] else {
                return Ok(None);
            };
            let pad_d = if pad_type == "custom" {
                pad.get(2 * d..2 * d + 2)
                    .ok_or_else(|| format!("pad {pad:?} must be {} numbers", 2 * spatial))?
                    .to_vec()
            } else {
                vec![0, 0]
            };
            let geometry = sliding_window(
                &[size as usize],
                &kernel[d..=d],
                &strides[d..=d],
                &dilations[d..=d],
                pad_type,
                &pad_d,
                ceil_mode,
            )
            .map_err(|e| format!("spatial axis {d}: {e}"))?;
            Ok(Some(geometry.output[0] as u64))
        })
        .collect()
}

fn kernel_of(weight: &TensorType) -> Result<Vec<usize>, String> {
    weight.shape[2..]
        .iter()
        .map(|d| {
            d.map(|d| d as usize).ok_or_else(|| {
                format!(
                    "the weight of type {} has no known kernel size",
                    weight.describe()
                )
            })
        })
        .collect()
}

pub(super) fn conv(inputs: &Inputs<'_>) -> Result<Operand, String> {
    let x = inputs.tensor("x")?;
    let weight = inputs.tensor("weight")?;
    if x.rank() < 3 || weight.rank() != x.rank() {
        return Err(format!(
            "x of type {} and weight of type {} are not a convolution's [N, C_in, *D] and \
             [C_out, C_in/groups, *K]",
            x.describe(),
            weight.describe()
        ));
    }
    let spatial = x.rank() - 2;
    let groups = inputs.opt_i64("groups")?.unwrap_or(1).max(1) as u64;
    if let (Some(c), Some(wc)) = (x.shape[1], weight.shape[1]) {
        if c != wc * groups {
            return Err(format!(
                "x of type {} has {c} channels, not the {} that weight {} in {groups} groups takes",
                x.describe(),
                wc * groups,
                weight.describe()
            ));
        }
    }
    let dilations = per_axis(inputs, "dilations", spatial, 1)?;
    let kernel = kernel_of(weight)?;
    let mut shape = vec![x.shape[0], weight.shape[0]];
    shape.extend(window_output(
        inputs,
        &x.shape[2..],
        &kernel,
        &dilations,
        false,
    )?);
    Ok(Operand::tensor(TensorType {
        dtype: x.dtype,
        shape,
    }))
}

pub(super) fn conv_transpose(inputs: &Inputs<'_>) -> Result<Operand, String> {
    let x = inputs.tensor("x")?;
    let weight = inputs.tensor("weight")?;
    if x.rank() < 3 || weight.rank() != x.rank() {
        return Err(format!(
            "x of type {} and weight of type {} are not a transposed convolution's \
             [N, C_in, *D] and [C_in, C_out/groups, *K]",
            x.describe(),
            weight.describe()
        ));
    }
    let spatial = x.rank() - 2;
    let groups = inputs.opt_i64("groups")?.unwrap_or(1).max(1) as u64;
    unify(x.shape[1], weight.shape[0], || {
        format!(
            "x of type {} has not the input channels of weight {}",
            x.describe(),
            weight.describe()
        )
    })?;
    let strides = per_axis(inputs, "strides", spatial, 1)?;
    let dilations = per_axis(inputs, "dilations", spatial, 1)?;
    let kernel = kernel_of(weight)?;
    let pad_type = inputs.opt_str("pad_type")?.unwrap_or("valid");
    let pad = inputs
        .opt_i64_vec("pad")?
        .unwrap_or_else(|| vec![0; 2 * spatial]);
    let mut shape = vec![x.shape[0], weight.shape[1].map(|c| c * groups)];
    for d in 0..spatial {
        let Some(input) = x.shape[2 + d] else {
            shape.push(None);
            continue;
        };
        let input = input as usize;
        let full = (input.max(1) - 1) * strides[d] + (kernel[d] - 1) * dilations[d] + 1;
        shape.push(Some(match pad_type {
            "valid" => full as u64,
            "same" => (strides[d] * input) as u64,
            "custom" => {
                let (b, a) = match pad.get(2 * d..2 * d + 2) {
                    Some(&[b, a]) if b >= 0 && a >= 0 => (b as usize, a as usize),
                    _ => {
                        return Err(format!(
                            "pad {pad:?} must be {} non-negative numbers",
                            2 * spatial
                        ))
                    }
                };
                if b + a >= full {
                    return Err(format!(
                        "pad {pad:?} crops away all {full} positions of spatial axis {d}"
                    ));
                }
                (full - b - a) as u64
            }
            other => {
                return Err(format!(
                    "unknown pad_type {other:?} (expected valid, same or custom)"
                ))
            }
        }));
    }
    if let Some(declared) = inputs.opt_i64_vec("output_shape")? {
        // coremltools declares the given output shape as the result's.
        if declared.len() == shape.len() {
            shape = declared.iter().map(|&d| u64::try_from(d).ok()).collect();
        } else if declared.len() == spatial {
            for d in 0..spatial {
                shape[2 + d] = u64::try_from(declared[d]).ok();
            }
        }
    }
    Ok(Operand::tensor(TensorType {
        dtype: x.dtype,
        shape,
    }))
}

pub(super) fn pool(inputs: &Inputs<'_>) -> Result<Operand, String> {
    let x = inputs.tensor("x")?;
    if x.rank() < 3 {
        return Err(format!(
            "x of type {} is not [N, C, *D] with at least one spatial axis",
            x.describe()
        ));
    }
    let spatial = x.rank() - 2;
    let kernel = per_axis(inputs, "kernel_sizes", spatial, 0)?;
    let ceil_mode = inputs.opt_bool("ceil_mode")?.unwrap_or(false);
    let mut shape = x.shape[..2].to_vec();
    shape.extend(window_output(
        inputs,
        &x.shape[2..],
        &kernel,
        &vec![1; spatial],
        ceil_mode,
    )?);
    Ok(Operand::tensor(TensorType {
        dtype: x.dtype,
        shape,
    }))
}
