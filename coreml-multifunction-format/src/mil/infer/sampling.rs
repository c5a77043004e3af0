//! Rules for the ops that sample an image at computed points: `resample`
//! (torch's `grid_sample`), `affine`, `crop_resize`, iOS 17's `resize`,
//! and `non_maximum_suppression`, which picks boxes.

use super::{unify, Dim, Inputs, Operand, RuleResult, TensorType};
use crate::proto::mil_spec::DataType;

/// Required tensor `name` of rank `rank`, else an error naming `layout`.
fn of_rank<'a>(
    inputs: &Inputs<'a>,
    name: &str,
    rank: usize,
    layout: &str,
) -> Result<&'a TensorType, String> {
    let t = inputs.tensor(name)?;
    if t.rank() != rank {
        return Err(format!("{name} of type {} is not {layout}", t.describe()));
    }
    Ok(t)
}

/// A positive size parameter (`default` when absent).
fn size(inputs: &Inputs<'_>, name: &str, default: Option<i64>) -> Result<Dim, String> {
    let value = match (inputs.opt_i64(name)?, default) {
        (Some(v), _) | (None, Some(v)) => v,
        (None, None) => return Err(format!("lacks its required input {name:?}")),
    };
    u64::try_from(value)
        .ok()
        .filter(|&v| v > 0)
        .map(Some)
        .ok_or_else(|| format!("{name} {value} is not a positive size"))
}

/// Checks string parameter `name` against `allowed`, when given.
fn one_of(inputs: &Inputs<'_>, name: &str, allowed: &[&str]) -> Result<(), String> {
    match inputs.opt_str(name)? {
        Some(v) if !allowed.contains(&v) => {
            Err(format!("{name} {v:?} is not one of {}", allowed.join(", ")))
        }
        _ => Ok(()),
    }
}

/// The sampling modes of `crop_resize` and `resize` (`resize_bilinear`'s).
pub(crate) const SAMPLING_MODES: &[&str] = &[
    "STRICT_ALIGN_CORNERS",
    "ALIGN_CORNERS",
    "UNALIGN_CORNERS",
    "DEFAULT",
    "OFFSET_CORNERS",
];

pub(super) fn resample(inputs: &Inputs<'_>) -> Result<Operand, String> {
    let x = of_rank(inputs, "x", 4, "[B, C, H, W]")?;
    let coordinates = of_rank(inputs, "coordinates", 4, "[B, H_out, W_out, 2]")?;
    let mismatch = || {
        format!(
            "x of type {} and coordinates of type {} differ in batch",
            x.describe(),
            coordinates.describe()
        )
    };
    let batch = unify(x.shape[0], coordinates.shape[0], mismatch)?;
    if coordinates.shape[3].is_some_and(|d| d != 2) {
        return Err(format!(
            "coordinates of type {} has not 2 (x, y) in its last axis",
            coordinates.describe()
        ));
    }
    Ok(Operand::tensor(TensorType {
        dtype: x.dtype,
        shape: vec![
            batch,
            x.shape[1],
            coordinates.shape[1],
            coordinates.shape[2],
        ],
    }))
}

pub(super) fn affine(inputs: &Inputs<'_>) -> Result<Operand, String> {
    let x = of_rank(inputs, "x", 4, "[B, C, H, W]")?;
    let matrix = of_rank(inputs, "transform_matrix", 2, "[B or 1, 6]")?;
    if matrix.shape[1].is_some_and(|d| d != 6) {
        return Err(format!(
            "transform_matrix of type {} has not 6 [a0, a1, a2, b0, b1, b2] per row",
            matrix.describe()
        ));
    }
    let (h, w) = (
        size(inputs, "output_height", None)?,
        size(inputs, "output_width", None)?,
    );
    Ok(Operand::tensor(TensorType {
        dtype: x.dtype,
        shape: vec![x.shape[0], x.shape[1], h, w],
    }))
}

pub(super) fn crop_resize(inputs: &Inputs<'_>) -> Result<Operand, String> {
    let x = of_rank(inputs, "x", 4, "[B, C, H, W]")?;
    one_of(
        inputs,
        "box_coordinate_mode",
        &[
            "CORNERS_HEIGHT_FIRST",
            "CORNERS_WIDTH_FIRST",
            "CENTER_SIZE_HEIGHT_FIRST",
            "CENTER_SIZE_WIDTH_FIRST",
        ],
    )?;
    one_of(inputs, "sampling_mode", SAMPLING_MODES)?;
    let (h, w) = (
        size(inputs, "target_height", Some(1))?,
        size(inputs, "target_width", Some(1))?,
    );
    let shape = if inputs.get("boxes")?.is_some() {
        // iOS 17: boxes [N, 4], box_indices [N]; the result [N, C, h, w].
        let boxes = of_rank(inputs, "boxes", 2, "[N, 4]")?;
        if boxes.shape[1].is_some_and(|d| d != 4) {
            return Err(format!("boxes of type {} is not [N, 4]", boxes.describe()));
        }
        if inputs.get("box_indices")?.is_some() {
            let indices = of_rank(inputs, "box_indices", 1, "[N]")?;
            unify(indices.shape[0], boxes.shape[0], || {
                format!(
                    "box_indices of type {} has not one index per box of {}",
                    indices.describe(),
                    boxes.describe()
                )
            })?;
        }
        vec![boxes.shape[0], x.shape[1], h, w]
    } else {
        // iOS 15 / 16: roi [N, 1, 4 or 5, 1, 1]; the result [N, B, C, h, w].
        let roi = inputs
            .get("roi")?
            .ok_or("has neither roi (iOS 15, 16) nor boxes (iOS 17)")?;
        if roi.ty.rank() != 5 {
            return Err(format!(
                "roi of type {} is not [N, 1, 4 or 5, 1, 1]",
                roi.ty.describe()
            ));
        }
        vec![roi.ty.shape[0], x.shape[0], x.shape[1], h, w]
    };
    Ok(Operand::tensor(TensorType {
        dtype: x.dtype,
        shape,
    }))
}

pub(super) fn resize(inputs: &Inputs<'_>) -> Result<Operand, String> {
    let x = inputs.tensor("x")?;
    let shape = of_rank(inputs, "shape", 1, "a vector")?;
    one_of(
        inputs,
        "interpolation_mode",
        &["LINEAR", "NEAREST_NEIGHBOR"],
    )?;
    one_of(inputs, "sampling_mode", SAMPLING_MODES)?;
    let resized = inputs.i64("resized_dims")?;
    let count = shape.shape[0].ok_or("the length of shape is not known")?;
    let resized = u64::try_from(resized)
        .ok()
        .filter(|&r| r <= count)
        .ok_or_else(|| format!("resized_dims {resized} is not between 0 and shape's {count}"))?;
    if count > x.rank() as u64 {
        return Err(format!(
            "shape has {count} elements, more than x of type {} has axes",
            x.describe()
        ));
    }
    let (resized, count) = (resized as usize, count as usize);
    let target = inputs.get("shape")?.and_then(|s| match &s.value {
        Some(v) => v.to_ints(),
        None => None,
    });
    let mut out = x.shape.clone();
    let first = x.rank() - resized;
    for i in 0..resized {
        out[first + i] = match target.as_ref().map(|t| t[count - resized + i]) {
            Some(Some(0)) => x.shape[first + i],
            Some(Some(d)) => {
                Some(u64::try_from(d).map_err(|_| format!("shape asks for a size of {d}"))?)
            }
            _ => None,
        };
    }
    Ok(Operand::tensor(TensorType {
        dtype: x.dtype,
        shape: out,
    }))
}

/// iOS 15's (given `score_threshold`): boxes `[n, B, 4]`, scores
/// `[n, B, K]`; four results, the last the count kept per batch. iOS 17's:
/// boxes `[n, 4, B]`, scores `[n, K, B]`; three results.
pub(super) fn non_maximum_suppression(inputs: &Inputs<'_>) -> RuleResult {
    let boxes = of_rank(inputs, "boxes", 3, "[n, B, 4] or [n, 4, B]")?;
    let scores = of_rank(inputs, "scores", 3, "[n, B, K] or [n, K, B]")?;
    let max_boxes = size(inputs, "max_boxes", None)?;
    let ios15 = inputs.get("score_threshold")?.is_some();
    let (n, classes) = if ios15 {
        (scores.shape[0], scores.shape[2])
    } else {
        (scores.shape[0], scores.shape[1])
    };
    let box_axis = if ios15 { 2 } else { 1 };
    if boxes.shape[box_axis].is_some_and(|d| d != 4) {
        return Err(format!(
            "boxes of type {} has not 4 coordinates in axis {box_axis}",
            boxes.describe()
        ));
    }
    let tensor = |dtype, shape| Operand::tensor(TensorType { dtype, shape });
    Ok(if ios15 {
        vec![
            tensor(boxes.dtype, vec![n, max_boxes, Some(4)]),
            tensor(scores.dtype, vec![n, max_boxes, classes]),
            tensor(DataType::Int32, vec![n, max_boxes]),
            tensor(DataType::Int32, vec![n]),
        ]
    } else {
        vec![
            tensor(boxes.dtype, vec![n, Some(4), max_boxes]),
            tensor(scores.dtype, vec![n, classes, max_boxes]),
            tensor(DataType::Int32, vec![n, max_boxes]),
        ]
    })
}
