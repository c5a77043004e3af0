//! Sliding windows over the spatial axes of `[N, C, *D]` tensors: the
//! geometry `conv` and the pooling ops share (strides, dilations, the four
//! pad types, pooling's ceil mode), and the table of where each window
//! position reads.
//!
//! The padding and output size are shape inference's own
//! ([`sliding_window`]), so a result always has the shape its type
//! promised.

use super::linalg::unravel;
use super::Args;
use crate::runtime::reference::value::OpResult;
use coreml_multifunction_format::mil::shapes::{self, sliding_window, Geometry};

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
    shapes::per_axis(name, args.opt_i64_vec(name)?, spatial, default)
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
        let Geometry {
            before,
            after,
            output,
        } = sliding_window(
            input, kernel, &strides, &dilations, pad_type, &custom, ceil_mode,
        )?;
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
