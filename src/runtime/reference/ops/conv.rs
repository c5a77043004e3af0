//! `conv` and `conv_transpose`, as matrix products on the kernels' GEMM
//! (`kernels/gemm.rs`).
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

use ndarray::{ArrayD, IxDyn};

use super::linalg::{cores, unravel};
use super::window::{per_axis, Source, Window};
use super::{Args, Prepared};
use crate::runtime::reference::buffers;
use crate::runtime::reference::kernels::{
    self, threads_for, Epilogue, PackB, PackedA, Strided, NR, WORK_PER_THREAD,
};
use crate::runtime::reference::program::Step;
use crate::runtime::reference::value::{OpResult, Value};

/// Runs `work(index, part)` for every part, split over the kernels'
/// thread pool, and returns the first error (a panicking part is one too).
fn in_parallel<P: Send>(
    parts: impl Iterator<Item = P>,
    work: impl Fn(usize, P) -> OpResult<()> + Sync,
) -> OpResult<()> {
    let first_error = std::sync::Mutex::new(None);
    kernels::for_each_in_parallel(parts.enumerate().collect(), |(index, part)| {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(index, part)))
            .unwrap_or_else(|_| Err("a convolution part panicked".to_string()));
        if let Err(error) = outcome {
            // The error of the first part in order, whichever ends first.
            let mut first = first_error.lock().unwrap_or_else(|e| e.into_inner());
            if first.as_ref().is_none_or(|(earlier, _)| index < *earlier) {
                *first = Some((index, error));
            }
        }
    });
    match first_error.into_inner().unwrap_or_else(|e| e.into_inner()) {
        Some((_, error)) => Err(error),
        None => Ok(()),
    }
}

/// The `groups` parameter: positive, 1 when absent.
fn groups(args: &Args<'_>) -> OpResult<usize> {
    let groups = args.opt_i64("groups")?.unwrap_or(1);
    usize::try_from(groups)
        .ok()
        .filter(|&g| g > 0)
        .ok_or_else(|| format!("groups must be positive, not {groups}"))
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

    /// Calls `run(index, input_row, first, len)` for each stretch of
    /// output positions `cols` (flat, row by row; `index` counts from 0)
    /// that kernel position (kh, kw) sees inside `plane`: output `index + i`
    /// reads `input_row[first + i * stride]` for `i < len`. Positions in the
    /// padding are skipped (they read 0).
    fn runs(
        &self,
        plane: &[f32],
        kh: usize,
        kw: usize,
        cols: std::ops::Range<usize>,
        mut run: impl FnMut(usize, &[f32], usize, usize),
    ) {
        let [sh, sw] = self.strides;
        let [dh, dw] = self.dilations;
        let [ph, pw] = self.pad;
        // The output columns whose input column lies inside the plane:
        // ow·sw + kw·dw - pw in [0, in_w).
        let offset = (kw * dw) as isize - pw as isize;
        let inside_from = if offset >= 0 {
            0
        } else {
            ((-offset) as usize).div_ceil(sw)
        };
        let inside_to = if (self.in_w as isize) <= offset {
            0
        } else {
            ((self.in_w as isize - offset) as usize).div_ceil(sw)
        }
        .min(self.out_w);
        let (mut oh, mut ow) = (cols.start / self.out_w, cols.start % self.out_w);
        let mut index = 0;
        while index < cols.len() {
            // The rest of output row `oh` within `cols`: columns ow..end.
            let end = (ow + cols.len() - index).min(self.out_w);
            let ih = (oh * sh + kh * dh) as isize - ph as isize;
            let (from, to) = (inside_from.max(ow), inside_to.min(end));
            if ih >= 0 && (ih as usize) < self.in_h && from < to {
                let input_row = &plane[ih as usize * self.in_w..(ih as usize + 1) * self.in_w];
                let first = (from as isize * sw as isize + offset) as usize;
                run(index + from - ow, input_row, first, to - from);
            }
            index += end - ow;
            ow = 0;
            oh += 1;
        }
    }
}

/// One convolution's shapes, shared by the threads computing it.
struct Conv {
    columns: Columns,
    group_channels: usize,
    group_out: usize,
    /// Positions in the kernel.
    kernel_size: usize,
    plane: usize,
    out_size: usize,
}

/// The im2col matrix of one group of one sample (`group_channels ×
/// kernel_size` rows, `out_size` columns), computed block by block straight
/// into the GEMM's packed layout: no full copy of it is ever made.
struct Im2col<'a> {
    conv: &'a Conv,
    /// The group's input channels.
    input: &'a [f32],
}

impl PackB for Im2col<'_> {
    fn rows(&self) -> usize {
        self.conv.group_channels * self.conv.kernel_size
    }

    fn cols(&self) -> usize {
        self.conv.out_size
    }

    fn pack(&self, k0: usize, kc: usize, cols: std::ops::Range<usize>, out: &mut [f32]) {
        let conv = self.conv;
        for k in 0..kc {
            let (c, position) = ((k0 + k) / conv.kernel_size, (k0 + k) % conv.kernel_size);
            let plane = &self.input[c * conv.plane..(c + 1) * conv.plane];
            match &conv.columns {
                Columns::Planar(planar) => {
                    let kw = planar.kernel[1];
                    let stride = planar.strides[1];
                    let (kh, kw) = (position / kw, position % kw);
                    planar.runs(plane, kh, kw, cols.clone(), |index, row, first, len| {
                        if stride == 1 {
                            copy_into_panels(out, kc, k, index, &row[first..first + len]);
                        } else {
                            for i in 0..len {
                                let at = index + i;
                                out[((at / NR) * kc + k) * NR + at % NR] = row[first + i * stride];
                            }
                        }
                    });
                }
                Columns::Table(source) => {
                    let row = &source[position * conv.out_size..(position + 1) * conv.out_size];
                    for (index, from) in row[cols.clone()].iter().enumerate() {
                        out[((index / NR) * kc + k) * NR + index % NR] =
                            from.map_or(0.0, |i| plane[i]);
                    }
                }
                Columns::Identity => copy_into_panels(out, kc, k, 0, &plane[cols.clone()]),
            }
        }
    }
}

/// Writes `values` as columns `index..` of row `k` of packed panels `out`
/// (each `kc × NR`), a panel's share at a time.
fn copy_into_panels(out: &mut [f32], kc: usize, k: usize, mut index: usize, mut values: &[f32]) {
    while !values.is_empty() {
        let (panel, column) = (index / NR, index % NR);
        let take = (NR - column).min(values.len());
        let at = (panel * kc + k) * NR + column;
        let (to, from) = (&mut out[at..at + take], &values[..take]);
        if let (Ok(to), Ok(from)) = (
            <&mut [f32; NR]>::try_from(&mut *to),
            <&[f32; NR]>::try_from(from),
        ) {
            // A whole panel row: a copy of constant length, a few vector
            // moves rather than a call (most rows of a wide plane).
            *to = *from;
        } else {
            for (to, &from) in to.iter_mut().zip(from) {
                *to = from;
            }
        }
        values = &values[take..];
        index += take;
    }
}

/// The optional `bias`, one value per output channel.
fn bias(args: &Args<'_>, out_channels: usize) -> OpResult<Option<Vec<f32>>> {
    let Some(bias) = args.get("bias")? else {
        return Ok(None);
    };
    let bias = bias.to_float()?;
    if bias.shape() != [out_channels] {
        return Err(format!(
            "the bias has shape {:?}, the convolution {out_channels} output channels",
            bias.shape()
        ));
    }
    Ok(Some(bias.iter().copied().collect()))
}

/// One channel of a depthwise convolution, `kernel` (`kh × kw`) over
/// `plane` into `out`: each output the sum over the kernel positions in
/// order, as the GEMM's depth is (a multiply then an add, without FMA).
fn depthwise(planar: &Planar, plane: &[f32], kernel: &[f32], out: &mut [f32]) {
    out.fill(0.0);
    let (kw, stride) = (planar.kernel[1], planar.strides[1]);
    for (position, &w) in kernel.iter().enumerate() {
        planar.runs(
            plane,
            position / kw,
            position % kw,
            0..out.len(),
            |index, row, first, len| {
                let inputs = row[first..].iter().step_by(stride);
                for (o, &v) in out[index..index + len].iter_mut().zip(inputs) {
                    *o += w * v;
                }
            },
        );
    }
}

/// A convolution's constant weight, packed at load: one [`PackedA`] per
/// group.
pub(crate) struct PackedWeight {
    /// The weight's shape.
    shape: Vec<usize>,
    groups: Vec<PackedA>,
}

impl std::fmt::Debug for PackedWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PackedWeight({:?}, {} groups)",
            self.shape,
            self.groups.len()
        )
    }
}

/// Each group's rows of `weight` (`[C_out, C_in/groups, *K]`, row-major)
/// packed as the GEMM's `A`.
fn pack_groups(weight: &[f32], shape: &[usize], groups: usize) -> Option<Vec<PackedA>> {
    let group_out = shape.first()? / groups;
    let depth: usize = shape[1..].iter().product();
    weight
        .chunks_exact((group_out * depth).max(1))
        .take(groups)
        .map(|w| Strided::row_major(w, group_out, depth).map(PackedA::new))
        .collect()
}

/// Packs a `conv` step's weight at load, when it and `groups` are
/// constants (`constant` gives them by slot).
pub(super) fn prepare<'v>(
    step: &Step,
    constant: &dyn Fn(usize) -> Option<&'v Value>,
) -> Option<PackedWeight> {
    let slot = |name| match step.input(name) {
        Some(&[slot]) => Some(slot),
        _ => None,
    };
    let groups = match slot("groups") {
        None => 1,
        Some(s) => usize::try_from(constant(s)?.to_i64_scalar().ok()?).ok()?,
    };
    let Value::Float(weight) = constant(slot("weight")?)? else {
        return None;
    };
    let shape = weight.shape().to_vec();
    if shape.len() < 3 || groups == 0 || shape[0] % groups != 0 {
        // conv reports these when it runs.
        return None;
    }
    let standard = weight.as_standard_layout();
    let groups = pack_groups(standard.as_slice()?, &shape, groups)?;
    Some(PackedWeight { shape, groups })
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
    let bias = bias(args, out_channels)?;

    let x = x.as_standard_layout();
    let data = x
        .as_slice()
        .ok_or("x is not contiguous (interpreter bug)")?;
    let weight = weight.as_standard_layout();
    let weight = weight
        .as_slice()
        .ok_or("the weight is not contiguous (interpreter bug)")?;
    let kernel_size = window.kernel_size();
    let conv = Conv {
        columns,
        group_channels,
        group_out: out_channels / groups,
        kernel_size,
        plane: window.input.iter().product(),
        out_size,
    };
    let depth = group_channels * kernel_size;
    // Each group's weight: packed at load when it is a constant, else
    // now, once for every sample.
    let packed_now;
    let packed: &[PackedA] = match &args.step.prepared {
        Some(Prepared::Conv(p)) if p.shape == ws && p.groups.len() == groups => &p.groups,
        _ => {
            packed_now = pack_groups(weight, &ws, groups)
                .ok_or("the weight does not hold its shape (interpreter bug)")?;
            &packed_now
        }
    };
    // A relu fused into this step at load (`program`'s `fuse_relus`).
    let relu = args.step.relu_after;
    let mut out = buffers::zeroed(batch * out_channels * out_size);
    let group_input = group_channels * conv.plane;
    let group_output = conv.group_out * out_size;
    let work_per_group = conv.group_out * depth * out_size;
    let threads = threads_for(work_per_group * groups).min(groups);
    for (input, out_n) in data
        .chunks_exact((channels * conv.plane).max(1))
        .zip(out.chunks_exact_mut((out_channels * out_size).max(1)))
    {
        let conv = &conv;
        let group = |g: usize, target: &mut [f32]| {
            let input = &input[g * group_input..(g + 1) * group_input];
            let row_bias = bias
                .as_deref()
                .map(|b| &b[g * conv.group_out..(g + 1) * conv.group_out]);
            if let (Columns::Planar(planar), 1, 1) =
                (&conv.columns, conv.group_channels, conv.group_out)
            {
                // Depthwise: a product of one row would waste the tile.
                depthwise(planar, input, &weight[g * depth..(g + 1) * depth], target);
                if let Some(&[b]) = row_bias {
                    target.iter_mut().for_each(|v| *v += b);
                }
                if relu {
                    target.iter_mut().for_each(|v| *v = v.max(0.0));
                }
                return;
            }
            let columns = Im2col { conv, input };
            let epilogue = Epilogue {
                row_bias,
                relu,
                ..Epilogue::default()
            };
            kernels::gemm(&packed[g], &columns, target, out_size, epilogue);
        };
        if threads <= 1 || work_per_group >= WORK_PER_THREAD * cores() {
            // One group at a time, each product split over the cores.
            for (g, target) in out_n.chunks_exact_mut(group_output.max(1)).enumerate() {
                group(g, target);
            }
        } else {
            // Many small groups (depthwise convolutions): split the groups.
            let groups_per_thread = groups.div_ceil(threads);
            in_parallel(
                out_n.chunks_mut((groups_per_thread * group_output).max(1)),
                |t, part| {
                    for (i, target) in part.chunks_exact_mut(group_output.max(1)).enumerate() {
                        group(t * groups_per_thread + i, target);
                    }
                    Ok(())
                },
            )?;
        }
    }
    let out = ArrayD::from_shape_vec(
        IxDyn(&[&[batch, out_channels][..], &window.output].concat()),
        out,
    )
    .map_err(|e| e.to_string())?;
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
    let x = x
        .as_slice()
        .ok_or("x is not contiguous (interpreter bug)")?;
    let weight = weight.as_standard_layout();
    let weight = weight
        .as_slice()
        .ok_or("the weight is not contiguous (interpreter bug)")?;
    let bias = bias(args, out_channels)?;
    // [C_in, C_out/groups · K]: row c holds input channel c's kernels; a
    // group's columns are its rows' transpose times its input channels.
    let spread = group_out * kernel_size;
    let packed: Vec<PackedA> = weight
        .chunks_exact((group_in * spread).max(1))
        .take(groups)
        .map(|w| {
            Strided::row_major(w, group_in, spread)
                .map(|w| PackedA::new(w.t()))
                .ok_or("the weight does not hold its shape (interpreter bug)")
        })
        .collect::<Result<_, _>>()?;
    let mut out = vec![0.0f32; batch * out_channels * out_size];
    let mut columns = vec![0.0f32; spread * plane];
    let threads = threads_for(spread * plane).min(group_out);
    for (x_n, out_n) in x
        .chunks_exact((channels * plane).max(1))
        .zip(out.chunks_exact_mut((out_channels * out_size).max(1)))
    {
        for (g, out_g) in out_n
            .chunks_exact_mut((group_out * out_size).max(1))
            .enumerate()
        {
            let xg = Strided::row_major(&x_n[g * group_in * plane..], group_in, plane)
                .ok_or("x does not hold its shape (interpreter bug)")?;
            kernels::gemm(&packed[g], &xg, &mut columns, plane, Epilogue::default());
            // col2im, the output channels split over the cores (each
            // channel's plane is summed in the same order by one thread).
            let columns = &columns;
            let scatter = |first: usize, part: &mut [f32]| {
                for (i, plane_out) in part.chunks_exact_mut(out_size.max(1)).enumerate() {
                    let c = first + i;
                    for k in 0..kernel_size {
                        let row = &columns[(c * kernel_size + k) * plane..][..plane];
                        let targets = &target[k * plane..(k + 1) * plane];
                        for (&value, to) in row.iter().zip(targets) {
                            if let Some(to) = to {
                                plane_out[*to] += value;
                            }
                        }
                    }
                    if let Some(bias) = &bias {
                        let b = bias[g * group_out + c];
                        plane_out.iter_mut().for_each(|v| *v += b);
                    }
                }
            };
            let per_thread = group_out.div_ceil(threads.max(1));
            in_parallel(
                out_g.chunks_mut((per_thread * out_size).max(1)),
                |t, part| {
                    scatter(t * per_thread, part);
                    Ok(())
                },
            )?;
        }
    }
    let out = ArrayD::from_shape_vec(
        IxDyn(&[&[batch, out_channels][..], &out_dims].concat()),
        out,
    )
    .map_err(|e| e.to_string())?;
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
                "tiny",
                [1, 1, 1, 1],
                [1, 1, 1, 1],
                1,
                [1, 1],
                [1, 1],
                [0, 0, 0, 0],
            ),
            (
                "odd",
                [3, 5, 7, 11],
                [13, 5, 2, 3],
                1,
                [1, 2],
                [1, 1],
                [1, 0, 2, 1],
            ),
            (
                "depthwise padded",
                [2, 7, 5, 9],
                [7, 1, 3, 3],
                7,
                [1, 1],
                [2, 1],
                [2, 2, 1, 1],
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
