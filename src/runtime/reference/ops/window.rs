//! Sliding windows over the spatial axes of `[N, C, *D]` tensors: the
//! geometry `conv` and the pooling ops share (strides, dilations, the four
//! pad types, pooling's ceil mode), and the table of where each window
//! position reads.
//!
//! The output size follows coremltools' `spatial_dimensions_out_shape`:
//! `floor((in + pad - effective_kernel) / stride) + 1`, or with ceil mode
//! `floor((in + pad - effective_kernel + stride - 1) / stride) + 1`, less
//! one when that last window would start in the right padding.

use super::linalg::unravel;
use super::Args;
use crate::runtime::reference::value::OpResult;

/// Where a sliding window goes over the spatial axes of one input plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Window {
    /// The spatial input extent.
    pub input: Vec<usize>,
    /// The kernel extent (before dilation).
    pub kernel: Vec<usize>,
    pub strides: Vec<usize>,
    pub dilations: Vec<usize>,
    /// Padding before and after each spatial axis.
    pub before: Vec<usize>,
    pub after: Vec<usize>,
    /// The spatial output extent.
    pub output: Vec<usize>,
}

/// Reads `name` as one positive number per spatial axis, `default` for each
/// when absent.
pub(super) fn per_axis(
    args: &Args<'_>,
    name: &str,
    spatial: usize,
    default: i64,
) -> OpResult<Vec<usize>> {
    let values = args
        .opt_i64_vec(name)?
        .unwrap_or_else(|| vec![default; spatial]);
    if values.len() != spatial || values.iter().any(|&v| v < 1) {
        return Err(format!(
            "{name} {values:?} must be {spatial} positive numbers"
        ));
    }
    Ok(values.into_iter().map(|v| v as usize).collect())
}

impl Window {
    /// The window of `kernel` over `input` that the op's `strides`,
    /// `pad_type` and `pad` parameters describe.
    pub(super) fn of(
        args: &Args<'_>,
        input: &[usize],
        kernel: &[usize],
        dilations: Vec<usize>,
        ceil_mode: bool,
    ) -> OpResult<Window> {
        let spatial = input.len();
        let strides = per_axis(args, "strides", spatial, 1)?;
        let pad_type = args.opt_str("pad_type")?.unwrap_or("valid");
        let custom = args
            .opt_i64_vec("pad")?
            .unwrap_or_else(|| vec![0; 2 * spatial]);
        let mut before = vec![0; spatial];
        let mut after = vec![0; spatial];
        let mut output = vec![0; spatial];
        for d in 0..spatial {
            let effective = (kernel[d] - 1) * dilations[d] + 1;
            let (b, a) = match pad_type {
                "valid" => (0, 0),
                "custom" => {
                    if custom.len() != 2 * spatial || custom.iter().any(|&p| p < 0) {
                        return Err(format!(
                            "pad {custom:?} must be {} non-negative numbers",
                            2 * spatial
                        ));
                    }
                    (custom[2 * d] as usize, custom[2 * d + 1] as usize)
                }
                "same" | "same_lower" => {
                    let total = (input[d].div_ceil(strides[d]).max(1) - 1) * strides[d] + effective;
                    let total = total.saturating_sub(input[d]);
                    let small = total / 2;
                    if pad_type == "same" {
                        (small, total - small)
                    } else {
                        (total - small, small)
                    }
                }
                other => {
                    return Err(format!(
                        "unknown pad_type {other:?} (expected valid, same, same_lower or custom)"
                    ))
                }
            };
            let padded = input[d] + b + a;
            if padded < effective {
                return Err(format!(
                    "the padded input ({padded}) is smaller than the kernel ({effective}) along spatial axis {d}"
                ));
            }
            let mut out = if ceil_mode {
                (padded - effective).div_ceil(strides[d]) + 1
            } else {
                (padded - effective) / strides[d] + 1
            };
            // A last window starting in the right padding reads nothing of
            // the input: coremltools (and torch) drop it.
            if ceil_mode && b + a > 0 && (out - 1) * strides[d] >= input[d] + b {
                out -= 1;
            }
            before[d] = b;
            after[d] = a;
            output[d] = out;
        }
        Ok(Window {
            input: input.to_vec(),
            kernel: kernel.to_vec(),
            strides,
            dilations,
            before,
            after,
            output,
        })
    }

    /// Positions in the kernel.
    pub(super) fn kernel_size(&self) -> usize {
        self.kernel.iter().product()
    }

    /// Positions in the output plane.
    pub(super) fn output_size(&self) -> usize {
        self.output.iter().product()
    }

    /// Where each (kernel position, output position) pair reads in a
    /// row-major input plane, kernel-major: `Source::Padding` inside the
    /// declared padding, `Source::Beyond` past it (a ceil-mode window's
    /// overhang, which averages never count).
    pub(super) fn sources(&self) -> Vec<Source> {
        let spatial = self.input.len();
        let mut in_strides = vec![1usize; spatial];
        for d in (0..spatial.saturating_sub(1)).rev() {
            in_strides[d] = in_strides[d + 1] * self.input[d + 1];
        }
        let kernel_positions: Vec<Vec<usize>> = (0..self.kernel_size())
            .map(|i| unravel(i, &self.kernel))
            .collect();
        let out_positions: Vec<Vec<usize>> = (0..self.output_size())
            .map(|i| unravel(i, &self.output))
            .collect();
        let mut sources = Vec::with_capacity(kernel_positions.len() * out_positions.len());
        for k in &kernel_positions {
            for o in &out_positions {
                let mut flat = 0usize;
                let mut source = None;
                for d in 0..spatial {
                    let at = (o[d] * self.strides[d] + k[d] * self.dilations[d]) as isize
                        - self.before[d] as isize;
                    if at >= (self.input[d] + self.after[d]) as isize {
                        source = Some(Source::Beyond);
                        break;
                    }
                    if at < 0 || at as usize >= self.input[d] {
                        source = Some(Source::Padding);
                    } else {
                        flat += at as usize * in_strides[d];
                    }
                }
                sources.push(source.unwrap_or(Source::Input(flat)));
            }
        }
        sources
    }
}

/// What one window position reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Source {
    /// This element of the input plane.
    Input(usize),
    /// The declared padding.
    Padding,
    /// Past the padding (ceil mode only).
    Beyond,
}
