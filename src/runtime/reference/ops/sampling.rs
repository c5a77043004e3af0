//! The ops that sample an image at computed points, and detection's box
//! selection, as coremltools defines them (`ops/defs/iOS15..17/
//! image_resizing.py`, `tensor_operation.py`):
//!
//! - `resample` (torch's `grid_sample`): `x` read at `coordinates`
//!   (`(x, y)` per output pixel), bilinear or nearest, padded by a
//!   constant, the border, a reflection without the edge (`reflection`) or
//!   with it (`symmetric`); the coordinate conventions are torch's
//!   (`align_corners` maps ±1 to the corner pixels' centres, else to their
//!   outer edges);
//! - `affine` (torch's `affine_grid` + `grid_sample`): `resample` at the
//!   output grid transformed by `[a0, a1, a2, b0, b1, b2]`;
//! - `crop_resize`: each box resampled bilinearly to `target_height ×
//!   target_width`, its grid by `sampling_mode` over the box as
//!   `resize_bilinear`'s is over an image (the neural-network format's
//!   `SamplingMode` in terms of `linspace`), samples outside the image
//!   `pad_value`; iOS 15/16's `roi` of four numbers crops every box from
//!   every image (`[N, B, C, h, w]`), of five (an image index first) each
//!   from its image (`[N, 1, C, h, w]`, as the op's definition says, though
//!   coremltools' type inference declares `B` there too);
//! - `resize` (iOS 17): the last `resized_dims` axes resized to `shape`,
//!   linearly (`resize_bilinear`'s grid per axis) or by nearest neighbour
//!   (`resize_nearest_neighbor`'s);
//! - `non_maximum_suppression`: per batch, boxes by descending score (the
//!   best class's), each kept unless its IoU with a kept box exceeds
//!   `iou_threshold` (within its class with `per_class_suppression`); the
//!   results padded to `max_boxes` with zeros and index -1.

use ndarray::{ArrayD, Axis, IxDyn};

use super::resample::{nearest, resize_grid};
use super::Args;
use crate::runtime::reference::value::{FloatArray, OpResult, Value};

/// How a sampler treats points outside the image.
#[derive(Clone, Copy)]
enum Padding {
    Constant(f32),
    Border,
    Reflection,
    Symmetric,
}

/// The sampling parameters `resample` and `affine` share.
struct Sampler {
    bilinear: bool,
    padding: Padding,
    align_corners: bool,
    /// `unnormalized`, `normalized_minus_one_to_one`, `normalized_zero_to_one`.
    mode: CoordinatesMode,
}

#[derive(Clone, Copy, PartialEq)]
enum CoordinatesMode {
    Unnormalized,
    MinusOneToOne,
    ZeroToOne,
}

impl Sampler {
    fn of(args: &Args<'_>) -> OpResult<Sampler> {
        let bilinear = match required_str(args, "sampling_mode")? {
            "bilinear" => true,
            "nearest" => false,
            other => {
                return Err(format!(
                    "sampling_mode {other:?} is not bilinear or nearest"
                ))
            }
        };
        let padding = match required_str(args, "padding_mode")? {
            "constant" => Padding::Constant(args.f32("padding_value")?),
            "border" => Padding::Border,
            "reflection" => Padding::Reflection,
            "symmetric" => Padding::Symmetric,
            other => {
                return Err(format!(
                    "padding_mode {other:?} is not constant, border, reflection or symmetric"
                ))
            }
        };
        let mode = match required_str(args, "coordinates_mode")? {
            "unnormalized" => CoordinatesMode::Unnormalized,
            "normalized_minus_one_to_one" => CoordinatesMode::MinusOneToOne,
            "normalized_zero_to_one" => CoordinatesMode::ZeroToOne,
            other => {
                return Err(format!(
                    "coordinates_mode {other:?} is not unnormalized, normalized_minus_one_to_one \
                     or normalized_zero_to_one"
                ))
            }
        };
        let align_corners = args
            .opt_bool("align_corners")?
            .ok_or("lacks its required input \"align_corners\"")?;
        Ok(Sampler {
            bilinear,
            padding,
            align_corners,
            mode,
        })
    }

    /// The pixel position of coordinate `c` along an axis of `size` pixels,
    /// padding applied to it (torch's `grid_sampler_compute_source_index`).
    fn source(&self, c: f32, size: usize) -> f32 {
        let n = size as f32;
        let at = match (self.mode, self.align_corners) {
            (CoordinatesMode::Unnormalized, _) => c,
            (CoordinatesMode::MinusOneToOne, true) => (c + 1.0) / 2.0 * (n - 1.0),
            (CoordinatesMode::MinusOneToOne, false) => ((c + 1.0) * n - 1.0) / 2.0,
            (CoordinatesMode::ZeroToOne, true) => c * (n - 1.0),
            (CoordinatesMode::ZeroToOne, false) => c * n - 0.5,
        };
        let clip = |v: f32| v.clamp(0.0, n - 1.0);
        match self.padding {
            Padding::Constant(_) => at,
            Padding::Border => clip(at),
            Padding::Reflection => clip(reflect(at, 0.0, 2.0 * (n - 1.0))),
            Padding::Symmetric => clip(reflect(at, -1.0, 2.0 * n - 1.0)),
        }
    }

    /// The value of `plane` (`h × w`, row-major) at pixel position `(y, x)`.
    fn read(&self, plane: &[f32], h: usize, w: usize, y: f32, x: f32) -> f32 {
        let fill = match self.padding {
            Padding::Constant(v) => v,
            _ => 0.0,
        };
        let at = |r: f32, c: f32| -> f32 {
            if r >= 0.0 && c >= 0.0 && (r as usize) < h && (c as usize) < w {
                plane[r as usize * w + c as usize]
            } else {
                fill
            }
        };
        if !(x.is_finite() && y.is_finite()) {
            return fill;
        }
        if !self.bilinear {
            // torch rounds half to even (nearbyint).
            return at(y.round_ties_even(), x.round_ties_even());
        }
        let (x0, y0) = (x.floor(), y.floor());
        let (fx, fy) = (x - x0, y - y0);
        let top = at(y0, x0) * (1.0 - fx) + at(y0, x0 + 1.0) * fx;
        let bottom = at(y0 + 1.0, x0) * (1.0 - fx) + at(y0 + 1.0, x0 + 1.0) * fx;
        top * (1.0 - fy) + bottom * fy
    }
}

/// `at` reflected into `[twice_low / 2, twice_high / 2]` (torch's
/// `reflect_coordinates`).
fn reflect(at: f32, twice_low: f32, twice_high: f32) -> f32 {
    if twice_low == twice_high {
        return 0.0;
    }
    let (low, span) = (twice_low / 2.0, (twice_high - twice_low) / 2.0);
    let at = (at - low).abs();
    let (extra, flips) = (at % span, (at / span).floor());
    if flips % 2.0 == 0.0 {
        extra + low
    } else {
        span - extra + low
    }
}

fn required_str<'a>(args: &Args<'a>, name: &str) -> OpResult<&'a str> {
    args.opt_str(name)?
        .ok_or_else(|| format!("lacks its required input {name:?}"))
}

/// `x` as `[B, C, H, W]` with a non-empty plane.
fn image(x: &FloatArray) -> OpResult<(usize, usize, usize, usize)> {
    match *x.shape() {
        [b, c, h, w] if h > 0 && w > 0 => Ok((b, c, h, w)),
        _ => Err(format!(
            "x of shape {:?} is not [B, C, H, W] with a non-empty plane",
            x.shape()
        )),
    }
}

/// Samples every channel of each batch image of `x` at the `points`
/// (`(y, x)` pixel positions, `out_h × out_w` per batch image).
fn sample_points(
    x: &FloatArray,
    sampler: &Sampler,
    out_h: usize,
    out_w: usize,
    points: impl Fn(usize, usize, usize) -> (f32, f32),
) -> OpResult<Value> {
    let (b, c, h, w) = image(x)?;
    let x = x.as_standard_layout();
    let data = x
        .as_slice()
        .ok_or("x is not contiguous (interpreter bug)")?;
    let mut out = Vec::with_capacity(b * c * out_h * out_w);
    for n in 0..b {
        let positions: Vec<(f32, f32)> = (0..out_h * out_w)
            .map(|p| points(n, p / out_w, p % out_w))
            .collect();
        for ch in 0..c {
            let plane = &data[(n * c + ch) * h * w..(n * c + ch + 1) * h * w];
            out.extend(
                positions
                    .iter()
                    .map(|&(y, xx)| sampler.read(plane, h, w, y, xx)),
            );
        }
    }
    Value::float(vec![b, c, out_h, out_w], out)
}

pub(super) fn resample(args: &Args<'_>) -> OpResult<Value> {
    let x = args.float("x")?;
    let (b, _, h, w) = image(&x)?;
    let coordinates = args.float("coordinates")?;
    let (out_h, out_w) = match *coordinates.shape() {
        [cb, oh, ow, 2] if cb == b => (oh, ow),
        _ => {
            return Err(format!(
                "coordinates of shape {:?} is not [{b}, H_out, W_out, 2]",
                coordinates.shape()
            ))
        }
    };
    let sampler = Sampler::of(args)?;
    let coordinates = coordinates.as_standard_layout();
    let grid = coordinates
        .as_slice()
        .ok_or("coordinates are not contiguous (interpreter bug)")?;
    sample_points(&x, &sampler, out_h, out_w, |n, i, j| {
        let at = ((n * out_h + i) * out_w + j) * 2;
        (sampler.source(grid[at + 1], h), sampler.source(grid[at], w))
    })
}

/// A positive size parameter.
fn positive(args: &Args<'_>, name: &str, default: Option<i64>) -> OpResult<usize> {
    let size = args
        .opt_i64(name)?
        .or(default)
        .ok_or_else(|| format!("lacks its required input {name:?}"))?;
    usize::try_from(size)
        .ok()
        .filter(|&s| s > 0)
        .ok_or_else(|| format!("{name} {size} is not a positive size"))
}

pub(super) fn affine(args: &Args<'_>) -> OpResult<Value> {
    let x = args.float("x")?;
    let (b, _, h, w) = image(&x)?;
    let matrix = args.float("transform_matrix")?;
    let rows = match *matrix.shape() {
        [d, 6] if d == b || d == 1 => d,
        _ => {
            return Err(format!(
                "transform_matrix of shape {:?} is not [{b} or 1, 6]",
                matrix.shape()
            ))
        }
    };
    let (out_h, out_w) = (
        positive(args, "output_height", None)?,
        positive(args, "output_width", None)?,
    );
    let sampler = Sampler::of(args)?;
    if sampler.mode != CoordinatesMode::MinusOneToOne {
        return Err(
            "coordinates_mode must be normalized_minus_one_to_one, the only one coremltools \
             defines for affine"
                .to_string(),
        );
    }
    let matrix: Vec<f32> = matrix.iter().copied().collect();
    // The output grid in [-1, 1] (torch's `affine_grid`).
    let base = |i: usize, n: usize| -> f32 {
        let step = if n > 1 { 2.0 / (n - 1) as f32 } else { 0.0 };
        let at = -1.0 + i as f32 * step;
        if sampler.align_corners {
            at
        } else {
            at * (n as f32 - 1.0) / n as f32
        }
    };
    sample_points(&x, &sampler, out_h, out_w, |n, i, j| {
        let m = &matrix[(n % rows) * 6..(n % rows) * 6 + 6];
        let (gx, gy) = (base(j, out_w), base(i, out_h));
        let sx = m[0] * gx + m[1] * gy + m[2];
        let sy = m[3] * gx + m[4] * gy + m[5];
        (sampler.source(sy, h), sampler.source(sx, w))
    })
}

/// The `n` sample positions of `sampling_mode` over `[start, end]`, as
/// the neural-network format's `SamplingMode` defines them with
/// `X - 1 = end - start`.
fn box_grid(start: f32, end: f32, n: usize, mode: &str) -> OpResult<Vec<f32>> {
    let extent = end - start;
    let linspace = |from: f32, to: f32| -> Vec<f32> {
        (0..n)
            .map(|i| {
                if n > 1 {
                    from + (to - from) * i as f32 / (n - 1) as f32
                } else {
                    from
                }
            })
            .collect()
    };
    Ok(match mode {
        "STRICT_ALIGN_CORNERS" => linspace(start, end),
        "ALIGN_CORNERS" if n == 1 => vec![start + extent / 2.0],
        "ALIGN_CORNERS" => linspace(start, end),
        "DEFAULT" => {
            let size = extent + 1.0;
            linspace(start, start + size - size / n as f32)
        }
        "OFFSET_CORNERS" => {
            let spacing = extent.max(1.0) / n as f32;
            linspace(
                start + spacing / 2.0,
                start + spacing / 2.0 + (n - 1) as f32 * spacing,
            )
        }
        "UNALIGN_CORNERS" => {
            let size = extent + 1.0;
            (0..n)
                .map(|i| start + (i as f32 + 0.5) * size / n as f32 - 0.5)
                .collect()
        }
        other => {
            return Err(format!(
                "sampling_mode {other:?} is not one of STRICT_ALIGN_CORNERS, ALIGN_CORNERS, \
                 DEFAULT, OFFSET_CORNERS, UNALIGN_CORNERS"
            ))
        }
    })
}

/// One box: `(h_start, w_start, h_end, w_end)` from its four numbers in
/// `mode`.
fn corners(b: [f32; 4], mode: &str) -> OpResult<[f32; 4]> {
    Ok(match mode {
        "CORNERS_HEIGHT_FIRST" => b,
        "CORNERS_WIDTH_FIRST" => [b[1], b[0], b[3], b[2]],
        "CENTER_SIZE_HEIGHT_FIRST" => [
            b[0] - b[2] / 2.0,
            b[1] - b[3] / 2.0,
            b[0] + b[2] / 2.0,
            b[1] + b[3] / 2.0,
        ],
        "CENTER_SIZE_WIDTH_FIRST" => [
            b[1] - b[3] / 2.0,
            b[0] - b[2] / 2.0,
            b[1] + b[3] / 2.0,
            b[0] + b[2] / 2.0,
        ],
        other => {
            return Err(format!(
                "box_coordinate_mode {other:?} is not one of CORNERS_HEIGHT_FIRST, \
                 CORNERS_WIDTH_FIRST, CENTER_SIZE_HEIGHT_FIRST, CENTER_SIZE_WIDTH_FIRST"
            ))
        }
    })
}

pub(super) fn crop_resize(args: &Args<'_>) -> OpResult<Value> {
    let x = args.float("x")?;
    let (b, c, h, w) = image(&x)?;
    let (th, tw) = (
        positive(args, "target_height", Some(1))?,
        positive(args, "target_width", Some(1))?,
    );
    let normalized = args.opt_bool("normalized_coordinates")?.unwrap_or(false);
    let spatial_scale = args.opt_f32("spatial_scale")?.unwrap_or(1.0);
    let box_mode = args
        .opt_str("box_coordinate_mode")?
        .unwrap_or("CORNERS_HEIGHT_FIRST");
    let sampling_mode = args.opt_str("sampling_mode")?.unwrap_or("DEFAULT");
    let pad_value = args.opt_f32("pad_value")?.unwrap_or(0.0);
    // Each crop: the image it reads and the box's four numbers; and the
    // result's leading axes.
    let mut crops: Vec<(usize, [f32; 4])> = Vec::new();
    let leading: Vec<usize>;
    if let Some(boxes) = args.get("boxes")? {
        let boxes = boxes.to_float()?;
        let n = match *boxes.shape() {
            [n, 4] => n,
            _ => return Err(format!("boxes of shape {:?} is not [N, 4]", boxes.shape())),
        };
        let indices: Vec<i64> = match args.opt_i64_vec("box_indices")? {
            Some(v) if v.len() == n => v,
            Some(v) => {
                return Err(format!(
                    "box_indices has {} entries, not one per each of the {n} boxes",
                    v.len()
                ))
            }
            None => (0..n as i64).collect(),
        };
        let flat: Vec<f32> = boxes.iter().copied().collect();
        for (i, &index) in indices.iter().enumerate() {
            let image = usize::try_from(index)
                .ok()
                .filter(|&k| k < b)
                .ok_or_else(|| format!("box_indices[{i}] = {index} is not an image of the {b}"))?;
            crops.push((
                image,
                [
                    flat[4 * i],
                    flat[4 * i + 1],
                    flat[4 * i + 2],
                    flat[4 * i + 3],
                ],
            ));
        }
        leading = vec![n];
    } else {
        let roi = args
            .get("roi")?
            .ok_or("has neither roi (iOS 15, 16) nor boxes (iOS 17)")?
            .to_float()?;
        let (n, k) = match *roi.shape() {
            [n, 1, k, 1, 1] if k == 4 || k == 5 => (n, k),
            _ => {
                return Err(format!(
                    "roi of shape {:?} is not [N, 1, 4 or 5, 1, 1]",
                    roi.shape()
                ))
            }
        };
        let flat: Vec<f32> = roi.iter().copied().collect();
        for i in 0..n {
            let r = &flat[i * k..(i + 1) * k];
            let coords = [r[k - 4], r[k - 3], r[k - 2], r[k - 1]];
            if k == 5 {
                let index = r[0];
                if !(index >= 0.0 && (index as usize) < b && index.fract() == 0.0) {
                    return Err(format!("roi {i} reads image {index}, not one of the {b}"));
                }
                crops.push((index as usize, coords));
            } else {
                crops.extend((0..b).map(|image| (image, coords)));
            }
        }
        leading = vec![n, if k == 5 { 1 } else { b }];
    }
    let xs = x.as_standard_layout();
    let data = xs
        .as_slice()
        .ok_or("x is not contiguous (interpreter bug)")?;
    let mut out = Vec::with_capacity(crops.len() * c * th * tw);
    for (image, numbers) in crops {
        let [mut y0, mut x0, mut y1, mut x1] = corners(numbers, box_mode)?;
        if normalized {
            let (hs, ws) = ((h - 1) as f32, (w - 1) as f32);
            (y0, y1, x0, x1) = (y0 * hs, y1 * hs, x0 * ws, x1 * ws);
        }
        let (y0, y1, x0, x1) = (
            y0 * spatial_scale,
            y1 * spatial_scale,
            x0 * spatial_scale,
            x1 * spatial_scale,
        );
        let rows = box_grid(y0, y1, th, sampling_mode)?;
        let cols = box_grid(x0, x1, tw, sampling_mode)?;
        for ch in 0..c {
            let plane = &data[(image * c + ch) * h * w..(image * c + ch + 1) * h * w];
            for &r in &rows {
                for &col in &cols {
                    out.push(bilinear_inside(plane, h, w, r, col, pad_value));
                }
            }
        }
    }
    let mut shape = leading;
    shape.extend([c, th, tw]);
    Value::float(shape, out)
}

/// `plane` at `(y, x)`, bilinear between the neighbouring pixels (the
/// last row or column standing in past the edge); `pad` outside
/// `[0, h - 1] × [0, w - 1]` (TensorFlow's `extrapolation_value`).
fn bilinear_inside(plane: &[f32], h: usize, w: usize, y: f32, x: f32, pad: f32) -> f32 {
    if !(y >= 0.0 && y <= (h - 1) as f32 && x >= 0.0 && x <= (w - 1) as f32) {
        return pad;
    }
    let (r0, c0) = (y.floor() as usize, x.floor() as usize);
    let (r1, c1) = ((r0 + 1).min(h - 1), (c0 + 1).min(w - 1));
    let (fy, fx) = (y - r0 as f32, x - c0 as f32);
    let top = plane[r0 * w + c0] * (1.0 - fx) + plane[r0 * w + c1] * fx;
    let bottom = plane[r1 * w + c0] * (1.0 - fx) + plane[r1 * w + c1] * fx;
    top * (1.0 - fy) + bottom * fy
}

pub(super) fn resize(args: &Args<'_>) -> OpResult<Value> {
    let x = args.required("x")?;
    let in_shape = x.shape();
    let target = args.i64_vec("shape")?;
    let resized = args
        .opt_i64("resized_dims")?
        .ok_or("lacks its required input \"resized_dims\"")?;
    let resized = usize::try_from(resized)
        .ok()
        .filter(|&r| r <= target.len())
        .ok_or_else(|| {
            format!(
                "resized_dims {resized} is not between 0 and shape's {}",
                target.len()
            )
        })?;
    if target.len() > in_shape.len() {
        return Err(format!(
            "shape {target:?} has more elements than x of shape {in_shape:?} has axes"
        ));
    }
    let first = in_shape.len() - resized;
    let mut out_shape = in_shape.clone();
    for i in 0..resized {
        let size = target[target.len() - resized + i];
        out_shape[first + i] = match size {
            0 => in_shape[first + i],
            s => usize::try_from(s)
                .ok()
                .filter(|_| in_shape[first + i] > 0)
                .ok_or_else(|| {
                    format!(
                        "shape asks axis {} of x {in_shape:?} for size {s}",
                        first + i
                    )
                })?,
        };
    }
    super::created_count(&out_shape)?;
    let mode = args.opt_str("sampling_mode")?.unwrap_or("DEFAULT");
    match args.opt_str("interpolation_mode")?.unwrap_or("LINEAR") {
        "LINEAR" => {
            let Value::Float(a) = x else {
                return Err(format!(
                    "x is {}; LINEAR interpolation takes floats (NEAREST_NEIGHBOR resizes integers)",
                    x.kind()
                ));
            };
            // The last axis first: for two axes, the arithmetic of
            // resize_bilinear (rows of columns) exactly.
            let mut a = a.to_owned();
            for ax in (first..in_shape.len()).rev() {
                let positions = resize_grid(in_shape[ax], out_shape[ax], mode)?;
                a = linear_along(&a, ax, &positions);
            }
            Ok(Value::Float(a.into_shared()))
        }
        "NEAREST_NEIGHBOR" => {
            let pick = |ax: usize| nearest(out_shape[ax], in_shape[ax]);
            Ok(super::any_tensor!(x, a => {
                let mut a = a.to_owned();
                for ax in first..in_shape.len() {
                    a = a.select(Axis(ax), &pick(ax));
                }
                OpResult::Ok(a.into_shared())
            }))
        }
        other => Err(format!(
            "interpolation_mode {other:?} is not LINEAR or NEAREST_NEIGHBOR"
        )),
    }
}

/// `a` interpolated linearly along axis `ax` at `positions` (clamped to
/// the axis).
fn linear_along(a: &ArrayD<f32>, ax: usize, positions: &[f32]) -> ArrayD<f32> {
    let size = a.shape()[ax];
    let mut shape = a.shape().to_vec();
    shape[ax] = positions.len();
    let mut out = ArrayD::zeros(IxDyn(&shape));
    for (i, &p) in positions.iter().enumerate() {
        let p = p.clamp(0.0, (size - 1) as f32);
        let low = p.floor() as usize;
        let high = (low + 1).min(size - 1);
        let f = p - low as f32;
        let (l, h) = (a.index_axis(Axis(ax), low), a.index_axis(Axis(ax), high));
        let mut slot = out.index_axis_mut(Axis(ax), i);
        ndarray::Zip::from(&mut slot)
            .and(&l)
            .and(&h)
            .for_each(|o, &l, &h| *o = l * (1.0 - f) + h * f);
    }
    out
}

/// The IoU of two `(x, y, width, height)` centre-size boxes.
fn iou(a: &[f32], b: &[f32]) -> f32 {
    let span = |c: f32, s: f32| (c - s / 2.0, c + s / 2.0);
    let ((ax0, ax1), (ay0, ay1)) = (span(a[0], a[2]), span(a[1], a[3]));
    let ((bx0, bx1), (by0, by1)) = (span(b[0], b[2]), span(b[1], b[3]));
    let iw = (ax1.min(bx1) - ax0.max(bx0)).max(0.0);
    let ih = (ay1.min(by1) - ay0.max(by0)).max(0.0);
    let inter = iw * ih;
    let union = a[2] * a[3] + b[2] * b[3] - inter;
    if union > 0.0 {
        inter / union
    } else {
        0.0
    }
}

pub(super) fn non_maximum_suppression(args: &Args<'_>) -> OpResult<Vec<Value>> {
    let boxes = args.float("boxes")?;
    let scores = args.float("scores")?;
    let iou_threshold = args.f32("iou_threshold")?;
    let score_threshold = args.opt_f32("score_threshold")?;
    let ios15 = score_threshold.is_some();
    let max_boxes = positive(args, "max_boxes", None)?;
    let per_class = args.opt_bool("per_class_suppression")?.unwrap_or(false);
    // Both layouts as [n, B, 4] and [n, B, K].
    let (boxes, scores) = if ios15 {
        (boxes.to_owned(), scores.to_owned())
    } else {
        let t = |a: &FloatArray| {
            (a.ndim() == 3).then(|| {
                a.view()
                    .permuted_axes(vec![0, 2, 1])
                    .as_standard_layout()
                    .to_owned()
            })
        };
        (
            t(&boxes)
                .ok_or_else(|| format!("boxes of shape {:?} is not [n, 4, B]", boxes.shape()))?,
            t(&scores)
                .ok_or_else(|| format!("scores of shape {:?} is not [n, K, B]", scores.shape()))?,
        )
    };
    let (n, count, classes) = match (boxes.shape(), scores.shape()) {
        (&[n, b, 4], &[sn, sb, k]) if sn == n && sb == b => (n, b, k),
        (bs, ss) => {
            return Err(format!(
                "boxes of shape {bs:?} and scores of shape {ss:?} are not {}",
                if ios15 {
                    "[n, B, 4] and [n, B, K]"
                } else {
                    "[n, 4, B] and [n, K, B]"
                }
            ))
        }
    };
    let boxes: Vec<f32> = boxes.iter().copied().collect();
    let scores: Vec<f32> = scores.iter().copied().collect();
    let mut out_boxes = vec![0f32; n * max_boxes * 4];
    let mut out_scores = vec![0f32; n * max_boxes * classes];
    let mut out_indices = vec![-1i32; n * max_boxes];
    let mut kept_counts = Vec::with_capacity(n);
    for batch in 0..n {
        let box_at = |i: usize| &boxes[(batch * count + i) * 4..(batch * count + i) * 4 + 4];
        let scores_at =
            |i: usize| &scores[(batch * count + i) * classes..(batch * count + i + 1) * classes];
        // Each box's best class and its score (the first of equals).
        let best: Vec<(usize, f32)> = (0..count)
            .map(|i| {
                scores_at(i).iter().copied().enumerate().fold(
                    (0, f32::NEG_INFINITY),
                    |m, (k, s)| if s > m.1 { (k, s) } else { m },
                )
            })
            .collect();
        let mut order: Vec<usize> = (0..count)
            .filter(|&i| score_threshold.is_none_or(|t| best[i].1 >= t))
            .collect();
        // Descending score; equal scores keep box order (a stable sort).
        order.sort_by(|&a, &b| best[b].1.total_cmp(&best[a].1));
        let mut kept: Vec<usize> = Vec::new();
        for i in order {
            if kept.len() == max_boxes {
                break;
            }
            let suppressed = kept.iter().any(|&k| {
                (!per_class || best[k].0 == best[i].0) && iou(box_at(k), box_at(i)) > iou_threshold
            });
            if !suppressed {
                kept.push(i);
            }
        }
        for (slot, &i) in kept.iter().enumerate() {
            let at = batch * max_boxes + slot;
            out_boxes[at * 4..at * 4 + 4].copy_from_slice(box_at(i));
            out_scores[at * classes..(at + 1) * classes].copy_from_slice(scores_at(i));
            out_indices[at] = i as i32;
        }
        kept_counts.push(kept.len() as i32);
    }
    let mut boxes = Value::float(vec![n, max_boxes, 4], out_boxes)?;
    let mut scores = Value::float(vec![n, max_boxes, classes], out_scores)?;
    let indices = Value::int(vec![n, max_boxes], out_indices)?;
    if ios15 {
        return Ok(vec![
            boxes,
            scores,
            indices,
            Value::int(vec![n], kept_counts)?,
        ]);
    }
    // iOS 17: boxes and scores with the box axis last.
    for v in [&mut boxes, &mut scores] {
        if let Value::Float(a) = v {
            *a = a
                .view()
                .permuted_axes(vec![0, 2, 1])
                .as_standard_layout()
                .to_owned()
                .into_shared();
        }
    }
    Ok(vec![boxes, scores, indices])
}
