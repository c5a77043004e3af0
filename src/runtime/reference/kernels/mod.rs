//! The reference backend's compute kernels, and the weights they read as
//! stored.
//!
//! A `linear` weight stored as fp16 in the package stays fp16 in memory
//! ([`StoredWeight`], prepared once when the function loads, `program`
//! deciding which weights only `linear` reads) and is widened to f32 in
//! registers as the kernel reads it: F16C on x86-64, `fcvtl` on aarch64,
//! `half` elsewhere. That halves the bytes a matrix-vector product streams,
//! and matrix-vector products (a token, a decode step, the guide's one-row
//! LoRA model) are bound by memory bandwidth.
//!
//! - A few rows ([`MATVEC_ROWS`]) are matrix-vector products: each output
//!   is one dot product of a weight row ([`dot`]), the weight rows split
//!   over the cores, each row read from memory once for every input row.
//! - More rows are one matrix product on [`gemm`]'s kernel, the weight
//!   widened to f32 a panel at a time as the product packs it.
//!
//! The instruction set is chosen at run time ([`Isa::detect`]), with a
//! portable path for every other CPU; tests run every path this machine
//! has. Each output element is computed by one thread in a fixed order, so
//! results do not depend on the thread count.

mod dot;
mod gemm;
mod parallel;

use std::sync::{Arc, OnceLock};

use half::f16;

use ndarray::{ArcArray, IxDyn};

pub(crate) use gemm::{gemm, gemm_many, Epilogue, PackB, PackedA, Product, Strided, NR};
pub(crate) use parallel::cores;

use dot::{dots, Element};

/// Below this many input rows, `linear` runs matrix-vector products (which
/// read the weight once for all rows); from it on, matrix products.
pub(crate) const MATVEC_ROWS: usize = 8;

/// Below this many weight bytes, a product runs on one thread: starting
/// threads would cost more than it saves.
const PARALLEL_BYTES: usize = 1 << 20;

/// The instruction set a kernel runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Isa {
    /// x86-64 with AVX2, FMA and F16C.
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// aarch64's Advanced SIMD.
    #[cfg(target_arch = "aarch64")]
    Neon,
    /// Plain Rust, for every other CPU.
    Portable,
}

impl Isa {
    /// The best instruction set this CPU has, detected once.
    pub(crate) fn detect() -> Isa {
        static DETECTED: OnceLock<Isa> = OnceLock::new();
        *DETECTED.get_or_init(|| Isa::available().into_iter().next().unwrap_or(Isa::Portable))
    }

    /// Every instruction set this CPU runs, best first (the tests run each).
    pub(crate) fn available() -> Vec<Isa> {
        let mut isas = Vec::new();
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
        {
            isas.push(Isa::Avx2);
        }
        #[cfg(target_arch = "aarch64")]
        if std::arch::is_aarch64_feature_detected!("neon") {
            isas.push(Isa::Neon);
        }
        isas.push(Isa::Portable);
        isas
    }
}

/// How a weight's elements are held.
#[derive(Debug)]
enum Storage {
    /// fp16, as stored in the package: IEEE 754 bits, row-major.
    F16(Vec<f16>),
}

/// A `[outputs, inputs]` weight kept as the package stores it, in the
/// row-major layout the kernels read.
#[derive(Debug)]
pub(crate) struct StoredWeight {
    outputs: usize,
    inputs: usize,
    storage: Storage,
}

impl StoredWeight {
    /// An fp16 weight of `shape` (rank 2) from its row-major elements.
    pub(crate) fn f16(shape: &[usize], bits: Vec<f16>) -> Result<StoredWeight, String> {
        let &[outputs, inputs] = shape else {
            return Err(format!(
                "a weight kept as stored has rank 2, not shape {shape:?}"
            ));
        };
        if outputs.checked_mul(inputs) != Some(bits.len()) {
            return Err(format!(
                "{} elements do not make a weight of shape {shape:?}",
                bits.len()
            ));
        }
        Ok(StoredWeight {
            outputs,
            inputs,
            storage: Storage::F16(bits),
        })
    }

    /// The weight's shape, `[outputs, inputs]`.
    pub(crate) fn shape(&self) -> Vec<usize> {
        vec![self.outputs, self.inputs]
    }

    /// The weight widened to f32, for an op that reads it as a tensor.
    pub(crate) fn to_array(&self) -> ArcArray<f32, IxDyn> {
        let data: Vec<f32> = match &self.storage {
            Storage::F16(bits) => {
                let mut data = vec![0.0; bits.len()];
                f16::widen_slice(bits, &mut data);
                data
            }
        };
        ArcArray::from_shape_vec(IxDyn(&[self.outputs, self.inputs]), data)
            .unwrap_or_else(|_| unreachable!("the shape holds the elements (checked when made)"))
    }

    /// The bytes the weight occupies.
    #[cfg(test)]
    pub(crate) fn stored_bytes(&self) -> usize {
        match &self.storage {
            Storage::F16(bits) => bits.len() * 2,
        }
    }
}

/// `out = x · weightᵀ` for `rows` rows of `x` (`rows × inputs`, row-major),
/// into `out` (`rows × outputs`), on the best instruction set.
pub(crate) fn linear(weight: &Arc<StoredWeight>, x: &[f32], rows: usize, out: &mut [f32]) {
    linear_on(Isa::detect(), weight, x, rows, out);
}

/// [`linear`] on instruction set `isa`.
fn linear_on(isa: Isa, weight: &StoredWeight, x: &[f32], rows: usize, out: &mut [f32]) {
    debug_assert_eq!(x.len(), rows * weight.inputs);
    debug_assert_eq!(out.len(), rows * weight.outputs);
    if weight.inputs == 0 {
        // Empty sums.
        out.fill(0.0);
        return;
    }
    match &weight.storage {
        Storage::F16(bits) => {
            let view = Rows {
                data: bits,
                outputs: weight.outputs,
                inputs: weight.inputs,
            };
            if rows < MATVEC_ROWS {
                mat_vec(isa, &view, x, rows, out);
            } else {
                gemm::linear_rows(&view, x, rows, out);
            }
        }
    }
}

/// A row-major `[outputs, inputs]` weight of element type `W`.
struct Rows<'a, W> {
    data: &'a [W],
    outputs: usize,
    inputs: usize,
}

impl<W: Element> Rows<'_, W> {
    fn row(&self, n: usize) -> &[W] {
        &self.data[n * self.inputs..(n + 1) * self.inputs]
    }

    /// How many threads a product over it splits into.
    fn threads(&self) -> usize {
        if std::mem::size_of_val(self.data) < PARALLEL_BYTES {
            1
        } else {
            cores().min(self.outputs.max(1))
        }
    }
}

/// Matrix-vector products: `out[r][n] = weight[n] · x[r]`, the weight rows
/// split over the cores; each weight row is read once for all rows of `x`
/// (two at a time in registers).
fn mat_vec<W: Element>(isa: Isa, weight: &Rows<'_, W>, x: &[f32], rows: usize, out: &mut [f32]) {
    let (outputs, inputs) = (weight.outputs, weight.inputs);
    let x_rows: Vec<&[f32]> = x.chunks_exact(inputs.max(1)).take(rows).collect();
    // Each part computes outputs `range` for every row, into its own buffer
    // (`rows × range`), copied into `out` afterwards.
    let compute = |range: std::ops::Range<usize>| -> Vec<f32> {
        let width = range.len();
        let mut part = vec![0.0f32; rows * width];
        for (i, n) in range.enumerate() {
            let w = weight.row(n);
            let mut r = 0;
            while r + 1 < rows {
                let [a, b] = dots(isa, w, [x_rows[r], x_rows[r + 1]]);
                part[r * width + i] = a;
                part[(r + 1) * width + i] = b;
                r += 2;
            }
            if r < rows {
                let [a] = dots(isa, w, [x_rows[r]]);
                part[r * width + i] = a;
            }
        }
        part
    };
    let threads = weight.threads();
    let chunk = outputs.div_ceil(threads).max(1);
    let ranges: Vec<_> = (0..outputs)
        .step_by(chunk)
        .map(|start| start..(start + chunk).min(outputs))
        .collect();
    let parts = parallel::map(&ranges, |range| compute(range.clone()));
    for (range, part) in ranges.iter().zip(parts) {
        let width = range.len();
        for r in 0..rows {
            out[r * outputs + range.start..r * outputs + range.end]
                .copy_from_slice(&part[r * width..(r + 1) * width]);
        }
    }
}

#[cfg(test)]
mod tests;
