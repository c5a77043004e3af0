//! Pooling: `max_pool`, `avg_pool` and `l2_pool` over the spatial axes of
//! `[N, C, *D]`.
//!
//! Padding never wins a max. An average counts the declared padding unless
//! `exclude_padding_from_average`, and never counts a ceil-mode window's
//! overhang past it (torch's `count_include_pad` rule).

use ndarray::{ArrayD, IxDyn};

use super::window::{Source, Window};
use super::{Args, Pool};
use crate::runtime::reference::value::{OpResult, Value};
use crate::runtime::reference::{buffers, kernels};

pub(super) fn pool(op: Pool, args: &Args<'_>) -> OpResult<Value> {
    let x = args.float("x")?;
    let shape = x.shape().to_vec();
    if shape.len() < 3 {
        return Err(format!(
            "x of shape {shape:?} is not [N, C, *D] with at least one spatial axis"
        ));
    }
    let spatial = shape.len() - 2;
    let kernel = args.i64_vec("kernel_sizes")?;
    if kernel.len() != spatial || kernel.iter().any(|&k| k < 1) {
        return Err(format!(
            "kernel_sizes {kernel:?} must be {spatial} positive numbers"
        ));
    }
    let kernel: Vec<usize> = kernel.into_iter().map(|k| k as usize).collect();
    let ceil_mode = args.opt_bool("ceil_mode")?.unwrap_or(false);
    let window = Window::of(args, &shape[2..], &kernel, vec![1; spatial], ceil_mode)?;
    let exclude_padding = op == Pool::Average
        && args
            .opt_bool("exclude_padding_from_average")?
            .unwrap_or(false);

    let plane: usize = window.input.iter().product();
    let x = x.as_standard_layout();
    let data = x
        .as_slice()
        .ok_or("x is not contiguous (interpreter bug)")?;
    let planes = shape[0] * shape[1];
    let out_size = window.output_size();
    let out_shape = [&shape[..2], &window.output[..]].concat();
    if planes * out_size == 0 {
        // No planes (`Window::of` rejects a window wider than its padded
        // input): nothing to pool, and no chunks of zero length to split.
        return Ok(Value::Float(ArrayD::zeros(IxDyn(&out_shape)).into_shared()));
    }
    let mut out = buffers::zeroed(planes * out_size);
    // A 2-D max pool (a CNN's stem) by rows and columns; any other from
    // the table of each output's reads.
    let rows_and_columns = op == Pool::Max && spatial == 2;
    let positions = if rows_and_columns {
        Vec::new()
    } else {
        positions(&window)
    };
    let pool_plane = |input: &[f32], target: &mut [f32]| {
        if rows_and_columns {
            max_plane_2d(&window, input, target);
            return;
        }
        for (slot, (reads, count)) in target.iter_mut().zip(&positions) {
            let count = if exclude_padding { reads.len() } else { *count };
            *slot = match op {
                // NaN propagates, as in torch.
                Pool::Max => reads.iter().fold(f32::NEG_INFINITY, |acc, &i| {
                    let v = input[i];
                    if v > acc || v.is_nan() {
                        v
                    } else {
                        acc
                    }
                }),
                Pool::Average => reads.iter().map(|&i| input[i]).sum::<f32>() / count.max(1) as f32,
                Pool::L2 => reads
                    .iter()
                    .map(|&i| input[i] * input[i])
                    .sum::<f32>()
                    .sqrt(),
            };
        }
    };
    // Each plane's outputs depend on that plane alone, so splitting the
    // planes over the pool changes no result.
    let threads = kernels::cores();
    let reads = out.len() * window.kernel_size();
    let planes_per_part = if threads > 1 && reads >= kernels::PARALLEL_ELEMENTS {
        planes.div_ceil(threads)
    } else {
        planes
    };
    let parts: Vec<_> = data
        .chunks(planes_per_part.max(1) * plane)
        .zip(out.chunks_mut(planes_per_part.max(1) * out_size))
        .collect();
    kernels::for_each_in_parallel(parts, |(inputs, targets)| {
        for (input, target) in inputs
            .chunks_exact(plane)
            .zip(targets.chunks_exact_mut(out_size))
        {
            pool_plane(input, target);
        }
    });
    ArrayD::from_shape_vec(IxDyn(&out_shape), out)
        .map(|a| Value::Float(a.into_shared()))
        .map_err(|e| e.to_string())
}

/// One plane of a 2-D max pool: each output the maximum of its window's
/// positions inside the input, read row by row as the general path reads
/// them (so NaN propagates alike), the padding skipped.
fn max_plane_2d(window: &Window, input: &[f32], target: &mut [f32]) {
    // The input positions along axis `d` output `o`'s window covers.
    let covered = |o: usize, d: usize| {
        let start = (o * window.strides[d]) as isize - window.before[d] as isize;
        let end = start + window.kernel[d] as isize;
        let clip = |at: isize| at.clamp(0, window.input[d] as isize) as usize;
        clip(start)..clip(end)
    };
    let width = window.input[1];
    let columns: Vec<_> = (0..window.output[1]).map(|o| covered(o, 1)).collect();
    for (o_row, out_row) in target.chunks_exact_mut(window.output[1]).enumerate() {
        let rows = covered(o_row, 0);
        for (slot, columns) in out_row.iter_mut().zip(&columns) {
            let mut max = f32::NEG_INFINITY;
            for row in rows.clone() {
                for &v in &input[row * width + columns.start..row * width + columns.end] {
                    if v > max || v.is_nan() {
                        max = v;
                    }
                }
            }
            *slot = max;
        }
    }
}

/// For each output position: the input positions its window reads (in
/// kernel order), and how many positions an average that counts padding
/// divides by (the window within the declared padding).
fn positions(window: &Window) -> Vec<(Vec<usize>, usize)> {
    let sources = window.sources();
    let kernel_size = window.kernel_size();
    let out_size = window.output_size();
    (0..out_size)
        .map(|o| {
            let mut reads = Vec::with_capacity(kernel_size);
            let mut count = 0;
            for k in 0..kernel_size {
                match sources[k * out_size + o] {
                    Source::Input(i) => {
                        reads.push(i);
                        count += 1;
                    }
                    Source::Padding => count += 1,
                    Source::Beyond => {}
                }
            }
            (reads, count)
        })
        .collect()
}
