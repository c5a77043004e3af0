//! Rules for the resampling ops: upsampling by scale factors, resizing to
//! a target size, and the depth/space rearrangements.

use super::{Inputs, Operand, TensorType};
use crate::mil::ops::Rearrange;

fn spatial(inputs: &Inputs<'_>) -> Result<TensorType, String> {
    let x = inputs.tensor("x")?;
    if x.rank() < 3 {
        return Err(format!("x of type {} has not rank 3 or more", x.describe()));
    }
    Ok(x.clone())
}

pub(super) fn upsample(inputs: &Inputs<'_>) -> Result<Operand, String> {
    let mut ty = spatial(inputs)?;
    let rank = ty.rank();
    for (param, axis) in [
        ("scale_factor_height", rank - 2),
        ("scale_factor_width", rank - 1),
    ] {
        let scale = inputs.opt_f64(param)?.unwrap_or(1.0) as f32;
        if scale.is_nan() || scale <= 0.0 {
            return Err(format!("{param} {scale} is not positive"));
        }
        // In fp32, as coremltools computes it (numpy's float32 times an int).
        ty.shape[axis] = ty.shape[axis].map(|d| (d as f32 * scale).floor() as u64);
        if ty.shape[axis] == Some(0) {
            return Err(format!(
                "{param} {scale} leaves axis {axis} of {} empty",
                ty.describe()
            ));
        }
    }
    Ok(Operand::tensor(ty))
}

pub(super) fn resize(inputs: &Inputs<'_>) -> Result<Operand, String> {
    let mut ty = spatial(inputs)?;
    let rank = ty.rank();
    for (param, axis) in [
        ("target_size_height", rank - 2),
        ("target_size_width", rank - 1),
    ] {
        let size = inputs.opt_i64(param)?.unwrap_or(1);
        let size = u64::try_from(size)
            .ok()
            .filter(|&s| s > 0)
            .ok_or_else(|| format!("{param} {size} is not positive"))?;
        ty.shape[axis] = Some(size);
    }
    Ok(Operand::tensor(ty))
}

pub(super) fn rearrange(op: Rearrange, inputs: &Inputs<'_>) -> Result<Operand, String> {
    let (param, to_space) = match op {
        Rearrange::PixelShuffle => ("upscale_factor", true),
        Rearrange::PixelUnshuffle => ("downscale_factor", false),
        Rearrange::DepthToSpace => ("block_size", true),
        Rearrange::SpaceToDepth => ("block_size", false),
    };
    let x = inputs.tensor("x")?;
    if x.rank() != 4 {
        return Err(format!("x of type {} is not [N, C, H, W]", x.describe()));
    }
    let factor = inputs
        .opt_i64(param)?
        .ok_or_else(|| format!("lacks its required input {param:?}"))?;
    let f = u64::try_from(factor)
        .ok()
        .filter(|&f| f > 0)
        .ok_or_else(|| format!("{param} {factor} is not positive"))?;
    let mut shape = x.shape.clone();
    if to_space {
        if shape[1].is_some_and(|c| c % (f * f) != 0) {
            return Err(format!(
                "the channels of {} do not divide by {param}² = {}",
                x.describe(),
                f * f
            ));
        }
        shape[1] = shape[1].map(|c| c / (f * f));
        shape[2] = shape[2].map(|h| h * f);
        shape[3] = shape[3].map(|w| w * f);
    } else {
        if shape[2].is_some_and(|h| h % f != 0) || shape[3].is_some_and(|w| w % f != 0) {
            return Err(format!(
                "the height and width of {} do not divide by {param} {f}",
                x.describe()
            ));
        }
        shape[1] = shape[1].map(|c| c * f * f);
        shape[2] = shape[2].map(|h| h / f);
        shape[3] = shape[3].map(|w| w / f);
    }
    Ok(Operand::tensor(TensorType {
        dtype: x.dtype,
        shape,
    }))
}
