//! Pooling: `max_pool`, `avg_pool` and `l2_pool` over the spatial axes of
//! `[N, C, *D]`.
//!
//! Padding never wins a max. An average counts the declared padding unless
//! `exclude_padding_from_average`, and never counts a ceil-mode window's
//! overhang past it (torch's `count_include_pad` rule).

use ndarray::{ArrayD, IxDyn};

use super::window::{Source, Window};
use super::Args;
use crate::runtime::reference::value::{OpResult, Value};

/// The pooling ops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pool {
    Max,
    Average,
    L2,
}

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

    let sources = window.sources();
    let kernel_size = window.kernel_size();
    let out_size = window.output_size();
    // The divisor of each output position's average.
    let counts: Vec<f32> = (0..out_size)
        .map(|o| {
            (0..kernel_size)
                .filter(|k| match sources[k * out_size + o] {
                    Source::Input(_) => true,
                    Source::Padding => !exclude_padding,
                    Source::Beyond => false,
                })
                .count()
                .max(1) as f32
        })
        .collect();

    let plane: usize = window.input.iter().product();
    let x = x.as_standard_layout();
    let data = x
        .as_slice()
        .ok_or("x is not contiguous (interpreter bug)")?;
    let planes = shape[0] * shape[1];
    let mut out = Vec::with_capacity(planes * out_size);
    let mut accumulator = vec![0f32; out_size];
    for p in 0..planes {
        let input = &data[p * plane..(p + 1) * plane];
        accumulator.fill(match op {
            Pool::Max => f32::NEG_INFINITY,
            Pool::Average | Pool::L2 => 0.0,
        });
        for k in 0..kernel_size {
            let row = &sources[k * out_size..(k + 1) * out_size];
            for (acc, source) in accumulator.iter_mut().zip(row) {
                let Source::Input(i) = *source else {
                    continue;
                };
                let v = input[i];
                match op {
                    // NaN propagates, as in torch.
                    Pool::Max => {
                        if v > *acc || v.is_nan() {
                            *acc = v
                        }
                    }
                    Pool::Average => *acc += v,
                    Pool::L2 => *acc += v * v,
                }
            }
        }
        match op {
            Pool::Max => out.extend_from_slice(&accumulator),
            Pool::Average => out.extend(accumulator.iter().zip(&counts).map(|(s, c)| s / c)),
            Pool::L2 => out.extend(accumulator.iter().map(|s| s.sqrt())),
        }
    }
    let out_shape = [&shape[..2], &window.output[..]].concat();
    ArrayD::from_shape_vec(IxDyn(&out_shape), out)
        .map(|a| Value::Float(a.into_shared()))
        .map_err(|e| e.to_string())
}
