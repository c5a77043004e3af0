//! `conv` and `conv_transpose`, as matrix products on ndarray's GEMM
//! (`matrixmultiply`).
//!
//! `conv` lowers each group to one product `weight · columns` (im2col):
//! row `(c, k)` of `columns` holds what kernel position `k` of input channel
//! `c` sees at every output position. For 1-D and 2-D convolutions the rows
//! are filled a whole output row at a time (a copy per row when the stride
//! is 1); a pointwise convolution (1×1 kernel, stride 1, no padding) uses
//! the input itself as its columns. Higher ranks read through a table of
//! source positions.
//!
//! A large convolution is split over the machine's cores: by output rows
//! when it has one group (each thread builds the columns of its rows and
//! multiplies them), by groups otherwise (depthwise convolutions).

use ndarray::linalg::general_mat_mul;
use ndarray::{s, Array2, ArrayD, ArrayView2, ArrayViewMut2, ArrayViewMut3, Axis, IxDyn};

use super::linalg::{cores, unravel};
use super::window::{per_axis, Source, Window};
use super::Args;
use crate::runtime::reference::value::{OpResult, Value};

/// Below this many multiply-adds per thread, starting a thread costs more
/// than it saves.
const WORK_PER_THREAD: usize = 1 << 20;

/// How many threads `work` multiply-adds split into.
fn threads_for(work: usize) -> usize {
    cores().min(work / WORK_PER_THREAD).max(1)
}

/// Runs `work(index, part)` for every part on a thread of its own, and
/// returns the first error (a panicking thread is one too).
fn in_parallel<P: Send>(
    parts: impl Iterator<Item = P>,
    work: impl Fn(usize, P) -> OpResult<()> + Sync,
) -> OpResult<()> {
    let work = &work;
    std::thread::scope(|scope| {
        let handles: Vec<_> = parts
            .enumerate()
            .map(|(index, part)| scope.spawn(move || work(index, part)))
            .collect();
        handles.into_iter().try_for_each(|handle| {
            handle
                .join()
                .unwrap_or_else(|_| Err("a convolution thread panicked".to_string()))
        })
    })
}

/// The `groups` parameter: positive, 1 when absent.
fn groups(args: &Args<'_>) -> OpResult<usize> {
    let groups = args.opt_i64("groups")?.unwrap_or(1);
    usize::try_from(groups)
        .ok()
        .filter(|&g| g > 0)
        .ok_or_else(|| format!("groups must be positive, not {groups}"))
}

/// Adds the optional `bias` (one value per output channel) to `out`
/// (`[N, C_out, positions]`).
fn add_bias(args: &Args<'_>, out: &mut ArrayViewMut3<'_, f32>) -> OpResult<()> {
    let Some(bias) = args.get("bias")? else {
        return Ok(());
    };
    let bias = bias.to_float()?;
    let out_channels = out.shape()[1];
    if bias.shape() != [out_channels] {
        return Err(format!(
            "the bias has shape {:?}, the convolution {out_channels} output channels",
            bias.shape()
        ));
    }
    for mut sample in out.outer_iter_mut() {
        for (mut channel, &b) in sample.outer_iter_mut().zip(bias.iter()) {
            channel.mapv_inplace(|v| v + b);
        }
    }
    Ok(())
}

/// Where the rows of the im2col matrix read.
enum Columns {
    /// A 1-D or 2-D window (1-D as a height of 1).
    Planar(Planar),
    /// A pointwise convolution: the input plane is the columns.
    Identity,
    /// Any rank: `source[k * out_size + o]`, None in the padding.
    Table(Vec<Option<usize>>),
}

/// A 2-D window's geometry, in input and output rows and columns.
struct Planar {
    in_h: usize,
    in_w: usize,
    out_w: usize,
    kernel: [usize; 2],
    strides: [usize; 2],
    dilations: [usize; 2],
    pad: [usize; 2],
}

impl Planar {
    fn of(window: &Window) -> Option<Planar> {
        let two = |v: &[usize], fill: usize| match *v {
            [w] => Some([fill, w]),
            [h, w] => Some([h, w]),
            _ => None,
        };
        let input = two(&window.input, 1)?;
        let output = two(&window.output, 1)?;
        Some(Planar {
            in_h: input[0],
            in_w: input[1],
            out_w: output[1],
            kernel: two(&window.kernel, 1)?,
            strides: two(&window.strides, 1)?,
            dilations: two(&window.dilations, 1)?,
            pad: two(&window.before, 0)?,
        })
    }

    /// Fills `row` (output rows `rows`, each `out_w` long) with what kernel
    /// position (kh, kw) sees of `plane`.
    fn fill(
        &self,
        row: &mut [f32],
        plane: &[f32],
        kh: usize,
        kw: usize,
        rows: std::ops::Range<usize>,
    ) {
        let [sh, sw] = self.strides;
        let [dh, dw] = self.dilations;
        let [ph, pw] = self.pad;
        // The output columns whose input column lies inside the plane:
        // ow·sw + kw·dw - pw in [0, in_w).
        let offset = (kw * dw) as isize - pw as isize;
        let first = if offset >= 0 {
            0
        } else {
            ((-offset) as usize).div_ceil(sw)
        };
        let end = if (self.in_w as isize) <= offset {
            0
        } else {
            ((self.in_w as isize - offset) as usize).div_ceil(sw)
        }
        .min(self.out_w);
        for (segment, oh) in row.chunks_exact_mut(self.out_w).zip(rows) {
            let ih = (oh * sh + kh * dh) as isize - ph as isize;
            if ih < 0 || ih as usize >= self.in_h || first >= end {
                segment.fill(0.0);
                continue;
            }
            let input_row = &plane[ih as usize * self.in_w..(ih as usize + 1) * self.in_w];
            segment[..first].fill(0.0);
            segment[end..].fill(0.0);
            let start = (first as isize * sw as isize + offset) as usize;
            if sw == 1 {
                segment[first..end].copy_from_slice(&input_row[start..start + (end - first)]);
            } else {
                for (value, at) in segment[first..end].iter_mut().zip((start..).step_by(sw)) {
                    *value = input_row[at];
                }
            }
        }
    }
}

/// One convolution's shapes, shared by the threads computing it.
struct Conv<'a> {
    columns: Columns,
    weight: ArrayView2<'a, f32>,
    group_channels: usize,
    group_out: usize,
    /// Positions in the kernel.
    kernel_size: usize,
    plane: usize,
    out_size: usize,
    /// Output positions per output row (the last spatial axis).
    row_len: usize,
}

impl Conv<'_> {
    /// Computes output channels of group `g` at output rows `rows` of
    /// sample `input` (all its channels) into `target` (`group_out` ×
    /// the rows' positions).
    fn group(
        &self,
        input: &[f32],
        g: usize,
        rows: std::ops::Range<usize>,
        target: &mut ArrayViewMut2<'_, f32>,
    ) -> OpResult<()> {
        let kernel_size = self.kernel_size;
        let (first, end) = (rows.start * self.row_len, rows.end * self.row_len);
        let width = end - first;
        let group_input = &input
            [g * self.group_channels * self.plane..(g + 1) * self.group_channels * self.plane];
        let wg = self
            .weight
            .slice(s![g * self.group_out..(g + 1) * self.group_out, ..]);
        if let Columns::Identity = self.columns {
            let planes = ArrayView2::from_shape((self.group_channels, self.plane), group_input)
                .map_err(|e| e.to_string())?;
            general_mat_mul(1.0, &wg, &planes.slice(s![.., first..end]), 0.0, target);
            return Ok(());
        }
        let mut columns = Array2::<f32>::zeros((self.group_channels * kernel_size, width));
        let data = columns
            .as_slice_mut()
            .ok_or("the columns are not contiguous (interpreter bug)")?;
        for (c, rows_of_channel) in data.chunks_exact_mut(kernel_size * width).enumerate() {
            let plane = &group_input[c * self.plane..(c + 1) * self.plane];
            for (k, row) in rows_of_channel.chunks_exact_mut(width).enumerate() {
                match &self.columns {
                    Columns::Planar(planar) => {
                        let kw = planar.kernel[1];
                        planar.fill(row, plane, k / kw, k % kw, rows.clone());
                    }
                    Columns::Table(source) => {
                        let sources = &source[k * self.out_size + first..k * self.out_size + end];
                        for (value, from) in row.iter_mut().zip(sources) {
                            *value = from.map_or(0.0, |i| plane[i]);
                        }
                    }
                    Columns::Identity => unreachable!("handled above"),
                }
            }
        }
        general_mat_mul(1.0, &wg, &columns, 0.0, target);
        Ok(())
    }
}

pub(super) fn conv(args: &Args<'_>) -> OpResult<Value> {
    let x = args.float("x")?;
    let weight = args.float("weight")?;
    let (xs, ws) = (x.shape().to_vec(), weight.shape().to_vec());
    if xs.len() < 3 || ws.len() != xs.len() {
        return Err(format!(
            "x of shape {xs:?} and weight of shape {ws:?} are not a convolution's [N, C, *D] and [C_out, C_in/groups, *K]"
        ));
    }
    if ws[2..].contains(&0) {
        return Err(format!("the weight of shape {ws:?} has an empty kernel"));
    }
    let spatial = xs.len() - 2;
    let (batch, channels) = (xs[0], xs[1]);
    let (out_channels, group_channels) = (ws[0], ws[1]);
    let groups = groups(args)?;
    if group_channels * groups != channels || out_channels % groups != 0 {
        return Err(format!(
            "{channels} input channels and a weight of shape {ws:?} do not make {groups} groups"
        ));
    }
    let dilations = per_axis(args, "dilations", spatial, 1)?;
    let window = Window::of(args, &xs[2..], &ws[2..], dilations, false)?;
    let out_size = window.output_size();
    let pointwise = window.kernel.iter().all(|&k| k == 1)
        && window.strides.iter().all(|&s| s == 1)
        && window.before.iter().chain(&window.after).all(|&p| p == 0);
    let columns = if pointwise {
        Columns::Identity
    } else if let Some(planar) = Planar::of(&window) {
        Columns::Planar(planar)
    } else {
        Columns::Table(
            window
                .sources()
                .into_iter()
                .map(|s| match s {
                    Source::Input(i) => Some(i),
                    Source::Padding | Source::Beyond => None,
                })
                .collect(),
        )
    };

    let x = x.as_standard_layout();
    let data = x
        .as_slice()
        .ok_or("x is not contiguous (interpreter bug)")?;
    let weight = weight.as_standard_layout();
    let kernel_size = window.kernel_size();
    let conv = Conv {
        columns,
        weight: weight
            .view()
            .into_shape_with_order((out_channels, group_channels * kernel_size))
            .map_err(|e| e.to_string())?,
        group_channels,
        group_out: out_channels / groups,
        kernel_size,
        plane: window.input.iter().product(),
        out_size,
        row_len: *window.output.last().unwrap_or(&1),
    };
    let out_rows = out_size / conv.row_len.max(1);
    let mut out = ArrayD::<f32>::zeros(IxDyn(
        &[&[batch, out_channels][..], &window.output].concat(),
    ));
    let mut out3 = out
        .view_mut()
        .into_shape_with_order((batch, out_channels, out_size))
        .map_err(|e| e.to_string())?;
    let plane_elements = channels * conv.plane;
    let work_per_sample = out_channels * group_channels * kernel_size * out_size;
    let threads = threads_for(work_per_sample);
    for (n, mut out_n) in out3.outer_iter_mut().enumerate() {
        let input = &data[n * plane_elements..(n + 1) * plane_elements];
        let conv = &conv;
        if threads == 1 {
            for (g, mut target) in out_n
                .axis_chunks_iter_mut(Axis(0), conv.group_out)
                .enumerate()
            {
                conv.group(input, g, 0..out_rows, &mut target)?;
            }
        } else if groups == 1 {
            // Split the output rows.
            let rows_per_thread = out_rows.div_ceil(threads);
            in_parallel(
                out_n.axis_chunks_iter_mut(Axis(1), rows_per_thread * conv.row_len),
                |t, mut target| {
                    let rows = t * rows_per_thread..((t + 1) * rows_per_thread).min(out_rows);
                    conv.group(input, 0, rows, &mut target)
                },
            )?;
        } else {
            // Split the groups.
            let groups_per_thread = groups.div_ceil(threads);
            in_parallel(
                out_n.axis_chunks_iter_mut(Axis(0), groups_per_thread * conv.group_out),
                |t, mut part| {
                    for (i, mut target) in part
                        .axis_chunks_iter_mut(Axis(0), conv.group_out)
                        .enumerate()
                    {
                        conv.group(input, t * groups_per_thread + i, 0..out_rows, &mut target)?;
                    }
                    Ok(())
                },
            )?;
        }
    }
    add_bias(args, &mut out3)?;
    Ok(Value::Float(out.into_shared()))
}

/// `conv_transpose`: each input position scatters the kernel, scaled by
/// its value, into the output. Computed as one matrix product per group
/// (`weightᵀ · x`, every input position's contribution at every kernel
/// position) followed by a scatter-add of those columns (col2im).
pub(super) fn conv_transpose(args: &Args<'_>) -> OpResult<Value> {
    let x = args.float("x")?;
    let weight = args.float("weight")?;
    let (xs, ws) = (x.shape().to_vec(), weight.shape().to_vec());
    if xs.len() < 3 || ws.len() != xs.len() {
        return Err(format!(
            "x of shape {xs:?} and weight of shape {ws:?} are not a transposed convolution's [N, C_in, *D] and [C_in, C_out/groups, *K]"
        ));
    }
    if xs[2..].contains(&0) {
        return Err(format!("x of shape {xs:?} has an empty spatial axis"));
    }
    if ws[2..].contains(&0) {
        return Err(format!("the weight of shape {ws:?} has an empty kernel"));
    }
    let spatial = xs.len() - 2;
    let (batch, channels) = (xs[0], xs[1]);
    let groups = groups(args)?;
    if ws[0] != channels || channels % groups != 0 {
        return Err(format!(
            "{channels} input channels and a weight of shape {ws:?} do not make {groups} groups"
        ));
    }
    let group_in = channels / groups;
    let group_out = ws[1];
    let out_channels = group_out * groups;
    let strides = per_axis(args, "strides", spatial, 1)?;
    let dilations = per_axis(args, "dilations", spatial, 1)?;
    let input = &xs[2..];
    let kernel = &ws[2..];
    let full: Vec<usize> = (0..spatial)
        .map(|d| (input[d] - 1) * strides[d] + (kernel[d] - 1) * dilations[d] + 1)
        .collect();
    // Padding crops the full result; `same` crops it to stride × input, as
    // coremltools' type inference declares.
    let pad_type = args.opt_str("pad_type")?.unwrap_or("valid");
    let mut before = vec![0usize; spatial];
    let mut out_dims = full.clone();
    match pad_type {
        "valid" => {}
        "custom" => {
            let pad = args
                .opt_i64_vec("pad")?
                .unwrap_or_else(|| vec![0; 2 * spatial]);
            if pad.len() != 2 * spatial || pad.iter().any(|&p| p < 0) {
                return Err(format!(
                    "pad {pad:?} must be {} non-negative numbers",
                    2 * spatial
                ));
            }
            for d in 0..spatial {
                let (b, a) = (pad[2 * d] as usize, pad[2 * d + 1] as usize);
                if b + a >= full[d] {
                    return Err(format!(
                        "pad {pad:?} crops away all {} positions of spatial axis {d}",
                        full[d]
                    ));
                }
                before[d] = b;
                out_dims[d] = full[d] - b - a;
            }
        }
        "same" => {
            for d in 0..spatial {
                out_dims[d] = strides[d] * input[d];
                before[d] = full[d].saturating_sub(out_dims[d]) / 2;
            }
        }
        other => {
            return Err(format!(
                "unknown pad_type {other:?} (expected valid, same or custom)"
            ))
        }
    }
    if let Some(shape) = args.opt_i64_vec("output_shape")? {
        let declared: Vec<usize> = shape.iter().map(|&d| d.max(0) as usize).collect();
        if declared.len() != xs.len()
            || declared[0] != batch
            || declared[1] != out_channels
            || (0..spatial).any(|d| declared[2 + d] + before[d] > full[d])
        {
            return Err(format!(
                "output_shape {shape:?} does not fit the transposed convolution's result"
            ));
        }
        out_dims.copy_from_slice(&declared[2..]);
    }

    let plane: usize = input.iter().product();
    let kernel_size: usize = kernel.iter().product();
    let out_size: usize = out_dims.iter().product();
    let mut out_strides = vec![1usize; spatial];
    for d in (0..spatial.saturating_sub(1)).rev() {
        out_strides[d] = out_strides[d + 1] * out_dims[d + 1];
    }
    // Where each (kernel position, input position) lands in an output
    // plane, or None where padding cropped it.
    let mut target: Vec<Option<usize>> = Vec::with_capacity(kernel_size * plane);
    for k in 0..kernel_size {
        let kp = unravel(k, kernel);
        for i in 0..plane {
            let ip = unravel(i, input);
            let mut flat = 0usize;
            let mut inside = true;
            for d in 0..spatial {
                let at = (ip[d] * strides[d] + kp[d] * dilations[d]) as isize - before[d] as isize;
                if at < 0 || at as usize >= out_dims[d] {
                    inside = false;
                    break;
                }
                flat += at as usize * out_strides[d];
            }
            target.push(inside.then_some(flat));
        }
    }

    let x = x.as_standard_layout();
    let x3 = x
        .view()
        .into_shape_with_order((batch, channels, plane))
        .map_err(|e| e.to_string())?;
    let weight = weight.as_standard_layout();
    // [C_in, C_out/groups · K]: row c holds input channel c's kernels.
    let w2 = weight
        .view()
        .into_shape_with_order((channels, group_out * kernel_size))
        .map_err(|e| e.to_string())?;
    let mut out = ArrayD::<f32>::zeros(IxDyn(&[&[batch, out_channels][..], &out_dims].concat()));
    let mut out3 = out
        .view_mut()
        .into_shape_with_order((batch, out_channels, out_size))
        .map_err(|e| e.to_string())?;
    let mut columns = Array2::<f32>::zeros((group_out * kernel_size, plane));
    for n in 0..batch {
        for g in 0..groups {
            let wg = w2.slice(s![g * group_in..(g + 1) * group_in, ..]);
            let xg = x3.slice(s![n, g * group_in..(g + 1) * group_in, ..]);
            general_mat_mul(1.0, &wg.t(), &xg, 0.0, &mut columns);
            for c in 0..group_out {
                let mut plane_out = out3.slice_mut(s![n, g * group_out + c, ..]);
                let plane_out = plane_out
                    .as_slice_mut()
                    .ok_or("the output is not contiguous (interpreter bug)")?;
                for k in 0..kernel_size {
                    let row = columns.row(c * kernel_size + k);
                    let targets = &target[k * plane..(k + 1) * plane];
                    for (&value, to) in row.iter().zip(targets) {
                        if let Some(to) = to {
                            plane_out[*to] += value;
                        }
                    }
                }
            }
        }
    }
    add_bias(args, &mut out3)?;
    Ok(Value::Float(out.into_shared()))
}

#[cfg(test)]
mod tests {
    use super::super::tests::run_op;
    use super::*;

    /// A direct 2-D convolution, one multiply-add at a time.
    #[allow(clippy::too_many_arguments)]
    fn direct(
        x: &ArrayD<f32>,
        w: &ArrayD<f32>,
        groups: usize,
        stride: [usize; 2],
        dilation: [usize; 2],
        pad: [usize; 4],
    ) -> ArrayD<f32> {
        let (n, h, wd) = (x.shape()[0], x.shape()[2], x.shape()[3]);
        let (co, cg, kh, kw) = (w.shape()[0], w.shape()[1], w.shape()[2], w.shape()[3]);
        let oh = (h + pad[0] + pad[1] - (kh - 1) * dilation[0] - 1) / stride[0] + 1;
        let ow = (wd + pad[2] + pad[3] - (kw - 1) * dilation[1] - 1) / stride[1] + 1;
        let go = co / groups;
        ArrayD::from_shape_fn(IxDyn(&[n, co, oh, ow]), |p| {
            let (b, o, y, xx) = (p[0], p[1], p[2], p[3]);
            let g = o / go;
            let mut sum = 0.0;
            for ci in 0..cg {
                for i in 0..kh {
                    for j in 0..kw {
                        let iy = (y * stride[0] + i * dilation[0]) as isize - pad[0] as isize;
                        let ix = (xx * stride[1] + j * dilation[1]) as isize - pad[2] as isize;
                        if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < wd {
                            sum += x[[b, g * cg + ci, iy as usize, ix as usize]] * w[[o, ci, i, j]];
                        }
                    }
                }
            }
            sum
        })
    }

    fn seeded(shape: &[usize], seed: u32) -> ArrayD<f32> {
        let mut state = seed;
        ArrayD::from_shape_fn(IxDyn(shape), |_| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        })
    }

    #[test]
    fn empty_inputs_are_errors_not_panics() {
        let zeros = |shape: &[usize]| Value::Float(ArrayD::zeros(IxDyn(shape)).into_shared());
        for op in ["conv", "conv_transpose"] {
            let result = run_op(
                op,
                vec![
                    ("x", zeros(&[1, 2, 0, 3])),
                    ("weight", zeros(&[2, 2, 1, 1])),
                ],
                1,
            );
            assert!(result.is_err(), "{op}: {result:?}");
        }
    }

    /// Large enough to be split over threads on a machine with several
    /// cores, by rows (one group) and by groups; checked against the
    /// direct convolution either way.
    #[test]
    fn split_and_planar_convolutions_match_the_direct_sum() {
        let i = |v: &[i32]| Value::int(vec![v.len()], v.to_vec()).unwrap();
        let s = |t: &str| Value::Str(vec![t.to_string()]);
        for (name, x_shape, w_shape, groups, stride, dilation, pad) in [
            (
                "3x3 padded",
                [2, 16, 24, 23],
                [32, 16, 3, 3],
                1,
                [1, 1],
                [1, 1],
                [1, 1, 1, 1],
            ),
            (
                "strided dilated",
                [1, 16, 40, 40],
                [24, 16, 3, 5],
                1,
                [2, 3],
                [2, 1],
                [2, 0, 1, 3],
            ),
            (
                "grouped",
                [1, 32, 24, 24],
                [64, 8, 3, 3],
                4,
                [1, 1],
                [1, 1],
                [1, 1, 1, 1],
            ),
            (
                "depthwise",
                [1, 64, 30, 30],
                [64, 1, 3, 3],
                64,
                [2, 2],
                [1, 1],
                [1, 1, 1, 1],
            ),
            (
                "pointwise",
                [1, 64, 20, 20],
                [96, 64, 1, 1],
                1,
                [1, 1],
                [1, 1],
                [0, 0, 0, 0],
            ),
        ] {
            let x = seeded(&x_shape, 1);
            let w = seeded(&w_shape, 2);
            let expected = direct(&x, &w, groups, stride, dilation, pad);
            let got = run_op(
                "conv",
                vec![
                    ("x", Value::Float(x.into_shared())),
                    ("weight", Value::Float(w.into_shared())),
                    ("strides", i(&[stride[0] as i32, stride[1] as i32])),
                    ("dilations", i(&[dilation[0] as i32, dilation[1] as i32])),
                    ("pad_type", s("custom")),
                    ("pad", i(&pad.map(|p| p as i32))),
                    ("groups", Value::int(vec![], vec![groups as i32]).unwrap()),
                ],
                1,
            )
            .unwrap();
            let Value::Float(got) = &got[0] else {
                panic!("{name}: not a float tensor")
            };
            assert_eq!(got.shape(), expected.shape(), "{name}");
            for (k, (a, b)) in got.iter().zip(expected.iter()).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-4 + 1e-4 * b.abs(),
                    "{name}[{k}]: {a} vs {b}"
                );
            }
        }
    }
}
