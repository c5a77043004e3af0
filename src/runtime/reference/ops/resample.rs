//! Spatial resizing of the last two axes: `upsample_nearest_neighbor`,
//! `resize_nearest_neighbor`, `upsample_bilinear`, `resize_bilinear`; and
//! the rearrangements between channels and space: `pixel_shuffle`,
//! `pixel_unshuffle`, `depth_to_space`, `space_to_depth`.
//!
//! Sampling grids follow coremltools' op definitions (its docstrings spell
//! out each mode's grid, e.g. `align_corners` for `upsample_bilinear`).

use ndarray::{ArcArray, ArrayD, IxDyn};

use super::{any_tensor, Args, Rearrange};
use crate::runtime::reference::value::{FloatArray, OpResult, Value};

/// The height and width of `[*D, H, W]`, refusing lower ranks and empty
/// planes (there is nothing to sample from).
fn spatial(shape: &[usize]) -> OpResult<(usize, usize)> {
    match shape {
        [.., h, w] if shape.len() >= 3 && *h > 0 && *w > 0 => Ok((*h, *w)),
        [.., _, _] if shape.len() >= 3 => {
            Err(format!("x of shape {shape:?} has an empty plane to resize"))
        }
        _ => Err(format!("x of shape {shape:?} has rank below 3")),
    }
}

/// A scale factor parameter (int or float), 1 when absent.
fn scale(args: &Args<'_>, name: &str) -> OpResult<f32> {
    let scale = args.opt_f32(name)?.unwrap_or(1.0);
    if !(scale > 0.0 && scale.is_finite()) {
        return Err(format!("{name} {scale} is not a positive number"));
    }
    Ok(scale)
}

/// A target size parameter, 1 when absent, refusing sizes below 1.
fn target(args: &Args<'_>, name: &str) -> OpResult<usize> {
    let size = args.opt_i64(name)?.unwrap_or(1);
    usize::try_from(size)
        .ok()
        .filter(|&s| s > 0)
        .ok_or_else(|| format!("{name} {size} is not a positive size"))
}

/// `floor(size · scale)`, refusing an empty result.
fn scaled(size: usize, scale: f32, name: &str) -> OpResult<usize> {
    let out = (size as f64 * f64::from(scale)).floor() as usize;
    if out == 0 {
        return Err(format!("{name} {scale} scales {size} to nothing"));
    }
    Ok(out)
}

/// `x` resampled to `(out_h, out_w)`, each output row and column read from
/// input coordinate `rows[i]` / `cols[j]`: nearest when the coordinates are
/// whole, else interpolated linearly between the two neighbours.
fn sample(x: &FloatArray, out_h: usize, out_w: usize, rows: &[f32], cols: &[f32]) -> FloatArray {
    let shape = x.shape();
    let (h, w) = (shape[shape.len() - 2], shape[shape.len() - 1]);
    let planes: usize = shape[..shape.len() - 2].iter().product();
    let x = x.as_standard_layout();
    let data = x.as_slice().unwrap_or_default();
    let neighbours = |at: f32, size: usize| -> (usize, usize, f32) {
        let at = at.clamp(0.0, (size - 1) as f32);
        let low = at.floor() as usize;
        let high = (low + 1).min(size - 1);
        (low, high, at - low as f32)
    };
    let row_weights: Vec<_> = rows.iter().map(|&r| neighbours(r, h)).collect();
    let col_weights: Vec<_> = cols.iter().map(|&c| neighbours(c, w)).collect();
    let mut out = Vec::with_capacity(planes * out_h * out_w);
    for p in 0..planes {
        let plane = &data[p * h * w..(p + 1) * h * w];
        for &(r0, r1, fr) in &row_weights {
            for &(c0, c1, fc) in &col_weights {
                let top = plane[r0 * w + c0] * (1.0 - fc) + plane[r0 * w + c1] * fc;
                let bottom = plane[r1 * w + c0] * (1.0 - fc) + plane[r1 * w + c1] * fc;
                out.push(top * (1.0 - fr) + bottom * fr);
            }
        }
    }
    let mut out_shape = shape.to_vec();
    let rank = out_shape.len();
    out_shape[rank - 2] = out_h;
    out_shape[rank - 1] = out_w;
    ArrayD::from_shape_vec(IxDyn(&out_shape), out)
        .expect("the sampled data fills the output shape")
        .into_shared()
}

/// Nearest-neighbour source index of each of `out` positions over `size`
/// inputs: `floor(i · size / out)`, in integers. The ratio comes from the
/// sizes, not from the scale parameter: coremltools writes a size-based
/// resize (12 from 8) as a scale nudged up (1.500013) so that
/// `floor(size · scale)` is the size, and dividing by that scale would
/// land one pixel short (3 / 1.500013 < 2).
pub(super) fn nearest(out: usize, size: usize) -> Vec<usize> {
    (0..out).map(|i| (i * size / out).min(size - 1)).collect()
}

fn pick<T: Copy>(
    x: &ArcArray<T, IxDyn>,
    rows: &[usize],
    cols: &[usize],
) -> OpResult<ArcArray<T, IxDyn>> {
    let shape = x.shape();
    let rank = shape.len();
    let (h, w) = (shape[rank - 2], shape[rank - 1]);
    let planes: usize = shape[..rank - 2].iter().product();
    let x = x.as_standard_layout();
    let data = x
        .as_slice()
        .ok_or("x is not contiguous (interpreter bug)")?;
    let mut out = Vec::with_capacity(planes * rows.len() * cols.len());
    for p in 0..planes {
        let plane = &data[p * h * w..(p + 1) * h * w];
        for &r in rows {
            out.extend(cols.iter().map(|&c| plane[r * w + c]));
        }
    }
    let mut out_shape = shape.to_vec();
    out_shape[rank - 2] = rows.len();
    out_shape[rank - 1] = cols.len();
    ArrayD::from_shape_vec(IxDyn(&out_shape), out)
        .map(ArrayD::into_shared)
        .map_err(|e| e.to_string())
}

pub(super) fn upsample_nearest_neighbor(args: &Args<'_>) -> OpResult<Value> {
    let x = args.required("x")?;
    let (h, w) = spatial(&x.shape())?;
    let (sh, sw) = (
        scale(args, "scale_factor_height")?,
        scale(args, "scale_factor_width")?,
    );
    let rows = nearest(scaled(h, sh, "scale_factor_height")?, h);
    let cols = nearest(scaled(w, sw, "scale_factor_width")?, w);
    Ok(any_tensor!(x, a => pick(a, &rows, &cols)))
}

pub(super) fn resize_nearest_neighbor(args: &Args<'_>) -> OpResult<Value> {
    let x = args.required("x")?;
    let (h, w) = spatial(&x.shape())?;
    let (out_h, out_w) = (
        target(args, "target_size_height")?,
        target(args, "target_size_width")?,
    );
    let rows = nearest(out_h, h);
    let cols = nearest(out_w, w);
    Ok(any_tensor!(x, a => pick(a, &rows, &cols)))
}

/// The grid of `upsample_bilinear`: corners aligned, half-pixel centres
/// (iOS 16's `half_pixel_centers`, by default `!align_corners`), or neither
/// (TensorFlow's legacy `i · in / out`).
fn upsample_grid(size: usize, out: usize, align_corners: bool, half_pixel: bool) -> Vec<f32> {
    (0..out)
        .map(|i| {
            let i = i as f64;
            let at = if align_corners {
                if out > 1 {
                    i * (size - 1) as f64 / (out - 1) as f64
                } else {
                    0.0
                }
            } else {
                let spacing = size as f64 / out as f64;
                if half_pixel {
                    (i + 0.5) * spacing - 0.5
                } else {
                    i * spacing
                }
            };
            at.max(0.0) as f32
        })
        .collect()
}

pub(super) fn upsample_bilinear(args: &Args<'_>) -> OpResult<Value> {
    let x = args.float("x")?;
    let (h, w) = spatial(x.shape())?;
    let (sh, sw) = (
        scale(args, "scale_factor_height")?,
        scale(args, "scale_factor_width")?,
    );
    let (out_h, out_w) = (
        scaled(h, sh, "scale_factor_height")?,
        scaled(w, sw, "scale_factor_width")?,
    );
    let align_corners = args.opt_bool("align_corners")?.unwrap_or(true);
    let half_pixel = args
        .opt_bool("half_pixel_centers")?
        .unwrap_or(!align_corners);
    let rows = upsample_grid(h, out_h, align_corners, half_pixel);
    let cols = upsample_grid(w, out_w, align_corners, half_pixel);
    Ok(Value::Float(sample(&x, out_h, out_w, &rows, &cols)))
}

/// The grid of `resize_bilinear` for each `sampling_mode`.
pub(super) fn resize_grid(size: usize, out: usize, mode: &str) -> OpResult<Vec<f32>> {
    let (n, m) = (size as f64, out as f64);
    let grid = |f: &dyn Fn(f64) -> f64| (0..out).map(|i| f(i as f64).max(0.0) as f32).collect();
    Ok(match mode {
        "STRICT_ALIGN_CORNERS" | "ALIGN_CORNERS" if out == 1 => {
            vec![if mode == "ALIGN_CORNERS" {
                ((n - 1.0) / 2.0) as f32
            } else {
                0.0
            }]
        }
        "STRICT_ALIGN_CORNERS" | "ALIGN_CORNERS" => grid(&|i| i * (n - 1.0) / (m - 1.0)),
        "DEFAULT" if out == 1 => vec![0.0],
        "DEFAULT" => grid(&|i| i * (n - n / m) / (m - 1.0)),
        "OFFSET_CORNERS" => {
            let delta = (n - 1.0).max(1.0) / m;
            grid(&|i| 0.5 * delta + i * delta)
        }
        "UNALIGN_CORNERS" => grid(&|i| (i + 0.5) * n / m - 0.5),
        other => {
            return Err(format!(
                "sampling_mode {other:?} is not one of STRICT_ALIGN_CORNERS, ALIGN_CORNERS, DEFAULT, OFFSET_CORNERS, UNALIGN_CORNERS"
            ))
        }
    })
}

pub(super) fn resize_bilinear(args: &Args<'_>) -> OpResult<Value> {
    let x = args.float("x")?;
    let (h, w) = spatial(x.shape())?;
    let (out_h, out_w) = (
        target(args, "target_size_height")?,
        target(args, "target_size_width")?,
    );
    let mode = args.opt_str("sampling_mode")?.unwrap_or("DEFAULT");
    let rows = resize_grid(h, out_h, mode)?;
    let cols = resize_grid(w, out_w, mode)?;
    Ok(Value::Float(sample(&x, out_h, out_w, &rows, &cols)))
}

/// Moves `factor × factor` blocks between the channel axis and the last two
/// axes of `[*N, C, H, W]`. `to_space`: channels `c·f² + i·f + j` become
/// pixel `(h·f + i, w·f + j)` of channel `c` (`pixel_shuffle`,
/// `depth_to_space` in its DCR order is the same with `c` last:
/// `(i·f + j)·C' + c`).
fn rearrange<T: Copy>(
    x: &ArcArray<T, IxDyn>,
    factor: usize,
    to_space: bool,
    channel_major: bool,
) -> OpResult<ArcArray<T, IxDyn>> {
    let shape = x.shape();
    let rank = shape.len();
    if rank < 3 || factor == 0 {
        return Err(format!(
            "x of shape {shape:?} and factor {factor} cannot be rearranged"
        ));
    }
    let (c, h, w) = (shape[rank - 3], shape[rank - 2], shape[rank - 1]);
    let f2 = factor * factor;
    let (out_c, out_h, out_w) = if to_space {
        if c % f2 != 0 {
            return Err(format!(
                "{c} channels do not divide into blocks of {factor}×{factor}"
            ));
        }
        (c / f2, h * factor, w * factor)
    } else {
        if h % factor != 0 || w % factor != 0 {
            return Err(format!(
                "a {h}×{w} plane does not divide into blocks of {factor}×{factor}"
            ));
        }
        (c * f2, h / factor, w / factor)
    };
    let batches: usize = shape[..rank - 3].iter().product();
    let x = x.as_standard_layout();
    let data = x
        .as_slice()
        .ok_or("x is not contiguous (interpreter bug)")?;
    // The channel of the deep side holding block position (i, j) of
    // channel k of the shallow side.
    let (shallow, deep) = if to_space { (out_c, c) } else { (c, out_c) };
    let deep_channel = |k: usize, i: usize, j: usize| {
        if channel_major {
            k * f2 + i * factor + j
        } else {
            (i * factor + j) * shallow + k
        }
    };
    let (sh, sw) = if to_space { (out_h, out_w) } else { (h, w) };
    let (dh, dw) = if to_space { (h, w) } else { (out_h, out_w) };
    let mut out = Vec::with_capacity(data.len());
    for b in 0..batches {
        let base = b * c * h * w;
        if to_space {
            for k in 0..shallow {
                for y in 0..sh {
                    for x_ in 0..sw {
                        let dc = deep_channel(k, y % factor, x_ % factor);
                        out.push(data[base + (dc * dh + y / factor) * dw + x_ / factor]);
                    }
                }
            }
        } else {
            for dc in 0..deep {
                let (k, i, j) = if channel_major {
                    (dc / f2, (dc % f2) / factor, dc % factor)
                } else {
                    (
                        dc % shallow,
                        (dc / shallow) / factor,
                        (dc / shallow) % factor,
                    )
                };
                for y in 0..dh {
                    for x_ in 0..dw {
                        out.push(data[base + (k * sh + y * factor + i) * sw + x_ * factor + j]);
                    }
                }
            }
        }
    }
    let mut out_shape = shape.to_vec();
    out_shape[rank - 3] = out_c;
    out_shape[rank - 2] = out_h;
    out_shape[rank - 1] = out_w;
    ArrayD::from_shape_vec(IxDyn(&out_shape), out)
        .map(ArrayD::into_shared)
        .map_err(|e| e.to_string())
}

pub(super) fn rearrange_op(op: Rearrange, args: &Args<'_>) -> OpResult<Value> {
    let (param, to_space, channel_major) = match op {
        Rearrange::PixelShuffle => ("upscale_factor", true, true),
        Rearrange::PixelUnshuffle => ("downscale_factor", false, true),
        Rearrange::DepthToSpace => ("block_size", true, false),
        Rearrange::SpaceToDepth => ("block_size", false, false),
    };
    let factor = args
        .opt_i64(param)?
        .ok_or_else(|| format!("lacks its required input {param:?}"))?;
    let factor = usize::try_from(factor)
        .ok()
        .filter(|&f| f > 0)
        .ok_or_else(|| format!("{param} {factor} is not positive"))?;
    Ok(any_tensor!(args.required("x")?, a => rearrange(a, factor, to_space, channel_major)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upsample_grids_match_coremltools_docs() {
        // coremltools' upsample_bilinear docstring, Xin = 2.
        let round = |v: Vec<f32>| -> Vec<f32> {
            v.into_iter().map(|x| (x * 100.0).round() / 100.0).collect()
        };
        assert_eq!(
            round(upsample_grid(2, 5, true, false)),
            [0.0, 0.25, 0.5, 0.75, 1.0]
        );
        assert_eq!(
            round(upsample_grid(2, 6, false, true)),
            [0.0, 0.0, 0.33, 0.67, 1.0, 1.33]
        );
        // resize_bilinear's DEFAULT and OFFSET_CORNERS, Xin = 2, Xout = 5.
        assert_eq!(
            round(resize_grid(2, 5, "DEFAULT").unwrap()),
            [0.0, 0.4, 0.8, 1.2, 1.6]
        );
        assert_eq!(
            round(resize_grid(2, 5, "OFFSET_CORNERS").unwrap()),
            [0.1, 0.3, 0.5, 0.7, 0.9]
        );
        assert!(resize_grid(2, 5, "BOGUS").is_err());
    }

    #[test]
    fn empty_planes_are_refused_not_sampled() {
        assert!(spatial(&[1, 3, 0, 4]).is_err());
        assert!(spatial(&[1, 3, 4, 0]).is_err());
        assert!(spatial(&[3, 4]).is_err());
        assert_eq!(spatial(&[1, 3, 2, 4]), Ok((2, 4)));
    }

    #[test]
    fn shuffle_and_unshuffle_are_inverse_and_torch_ordered() {
        // [1, 4, 1, 1] → [1, 1, 2, 2]: torch's pixel_shuffle puts channel
        // i·2 + j at pixel (i, j).
        let x = ArrayD::from_shape_vec(IxDyn(&[1, 4, 1, 2]), (0..8).collect::<Vec<i32>>())
            .unwrap()
            .into_shared();
        let shuffled = rearrange(&x, 2, true, true).unwrap();
        assert_eq!(shuffled.shape(), [1, 1, 2, 4]);
        assert_eq!(
            shuffled.iter().copied().collect::<Vec<_>>(),
            [0, 2, 1, 3, 4, 6, 5, 7]
        );
        assert_eq!(rearrange(&shuffled, 2, false, true).unwrap(), x);
        let depth = rearrange(&x, 2, true, false).unwrap();
        assert_eq!(rearrange(&depth, 2, false, false).unwrap(), x);
    }
}
