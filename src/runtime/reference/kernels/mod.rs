//! The reference backend's compute kernels, and the weights they read as
//! stored.
//!
//! A `linear` weight stored as fp16 in the package stays fp16 in memory
//! ([`StoredWeight`], prepared once when the function loads, `program`
//! deciding which weights only `linear` reads) and is widened to f32 in
//! registers as the kernel reads it: F16C on x86-64, `fcvtl` on aarch64,
//! `half` elsewhere. That halves the bytes a matrix-vector product streams,
//! and matrix-vector products (a token, a decode step, the guide's one-row
//! LoRA model) are bound by memory bandwidth. A weight quantized by blocks
//! (`constexpr_blockwise_shift_scale`) keeps its 4- or 8-bit codes and
//! parameters, and a palettized one (iOS 18's `constexpr_lut_to_dense`
//! with scalar palettes) its indices and tables; each is expanded a row
//! segment at a time as a kernel reads it, or, for four-bit codes in a
//! matrix-vector product, looked up in registers without being expanded.
//!
//! - A few rows ([`MATVEC_ROWS`]) are matrix-vector products: each output
//!   is one dot product of a weight row ([`dot`]), the weight rows split
//!   over the cores, each row read from memory once for every input row.
//! - More rows are a matrix product (`gemm.rs`): `x` is packed once, and
//!   the weight's rows, `B`'s columns, are widened or dequantized straight
//!   into its packed panels a segment at a time (a transpose of eight by
//!   eight in registers on AVX2), so no f32 copy of the weight is made.
//!
//! Streaming kernels prefetch the weight well ahead of the row they read
//! (into L2): one core's outstanding misses do not saturate the memory
//! bandwidth otherwise.
//!
//! The instruction set is chosen at run time ([`Isa::detect`]), with a
//! portable path for every other CPU; tests run every path this machine
//! has. Each output element is computed by one thread in a fixed order, so
//! results do not depend on the thread count.

#[cfg(target_arch = "x86_64")]
mod dequant;
mod dot;
mod gemm;
mod parallel;

use std::sync::{Arc, OnceLock};

use half::f16;

use ndarray::{ArcArray, IxDyn};

pub(crate) use gemm::{gemm, gemm_many, Epilogue, PackB, PackedA, Product, Strided, NR};
pub(crate) use parallel::{
    cores, for_each as for_each_in_parallel, threads_for, with_threads, PARALLEL_ELEMENTS,
    WORK_PER_THREAD,
};

use dot::{dots, Element};

/// Below this many input rows, `linear` runs matrix-vector products (which
/// read the weight once for all rows); from it on, matrix products.
pub(crate) const MATVEC_ROWS: usize = 8;

/// Below this many weight bytes, a product runs on one thread: starting
/// threads would cost more than it saves.
const PARALLEL_BYTES: usize = 1 << 20;

/// The fewest rows of a part of a matrix-vector product split over the
/// cores ([`guided_parts`]).
const SMALLEST_PART: usize = 64;

/// The instruction set a kernel runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Isa {
    /// x86-64 with AVX2, FMA and F16C.
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// x86-64 with AVX-512F besides AVX2, FMA and F16C: the matrix
    /// product's microkernel and the four-bit lookup run on 512-bit
    /// registers, every other kernel on the AVX2 paths.
    #[cfg(target_arch = "x86_64")]
    Avx512,
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
            if is_x86_feature_detected!("avx512f") {
                isas.push(Isa::Avx512);
            }
            isas.push(Isa::Avx2);
        }
        #[cfg(target_arch = "aarch64")]
        if std::arch::is_aarch64_feature_detected!("neon") {
            isas.push(Isa::Neon);
        }
        isas.push(Isa::Portable);
        isas
    }

    /// How many panels of `A`, and of `B`, the matrix product's
    /// microkernel takes at once: 2 × 2 (a 12 × 32 tile) in 512-bit
    /// registers, one of each otherwise.
    fn tiles_at_once(self) -> (usize, usize) {
        #[cfg(target_arch = "x86_64")]
        if self == Isa::Avx512 {
            return (2, 2);
        }
        (1, 1)
    }

    /// Whether the CPU runs the AVX2 kernels (AVX2, FMA and F16C).
    #[cfg(target_arch = "x86_64")]
    pub(crate) fn has_avx2(self) -> bool {
        matches!(self, Isa::Avx2 | Isa::Avx512)
    }
}

/// `out[i] = f(values[i])`, compiled for AVX2 where the CPU has it: `f` is
/// inlined into a loop the compiler vectorizes for the wider registers
/// (the crate's baseline is SSE2). The compiler never fuses a multiply and
/// an add on its own, so every path computes the same bits.
pub(crate) fn map_slice(values: &[f32], out: &mut [f32], f: impl Fn(f32) -> f32) {
    #[cfg(target_arch = "x86_64")]
    if Isa::detect().has_avx2() {
        /// # Safety
        /// The CPU must have AVX2 and FMA.
        #[target_feature(enable = "avx2,fma")]
        unsafe fn wide(values: &[f32], out: &mut [f32], f: impl Fn(f32) -> f32) {
            for (o, &v) in out.iter_mut().zip(values) {
                *o = f(v);
            }
        }
        // SAFETY: `has_avx2` holds only on CPUs with AVX2, FMA and F16C.
        unsafe { wide(values, out, f) };
        return;
    }
    for (o, &v) in out.iter_mut().zip(values) {
        *o = f(v);
    }
}

/// How a weight's elements are held.
#[derive(Debug)]
enum Storage {
    /// fp16, as stored in the package, row-major.
    F16(Vec<f16>),
    /// 4- or 8-bit integers with a scale per block of a row.
    Blockwise(Blockwise),
    /// Indices into tables of values (a palette per group of rows and
    /// columns).
    Palettized(Palettized),
}

/// A weight quantized by blocks along its rows, as
/// `constexpr_blockwise_shift_scale` stores it: element `k` of row `n` is
/// `(q - offset) * scale` (in f32), with one scale and offset per row and
/// block of `block` elements, rounded to fp16 when the program declares the
/// weight fp16: the values the decompressed weight would hold, computed a
/// row at a time as the kernel reaches it.
#[derive(Debug)]
struct Blockwise {
    /// The integers, each row starting on a byte: one a byte (8 bits), or
    /// two, the first in the low nibble (4 bits).
    codes: Vec<u8>,
    bits: Bits,
    block: usize,
    /// `outputs × inputs / block`, row-major.
    scale: Vec<f32>,
    /// The same, when the weight has offsets.
    offset: Option<Vec<f32>>,
    /// Whether the weight is declared fp16 (each value rounded to fp16).
    fp16: bool,
}

/// The width and signedness of [`Blockwise`] codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bits {
    I4,
    U4,
    I8,
    U8,
}

impl Bits {
    /// The narrowest width holding every value of `data`.
    fn fitting(data: &[i32]) -> Option<Bits> {
        let (low, high) = data.iter().fold((0, 0), |(l, h), &v| (v.min(l), v.max(h)));
        [
            (Bits::I4, -8, 7),
            (Bits::U4, 0, 15),
            (Bits::I8, -128, 127),
            (Bits::U8, 0, 255),
        ]
        .into_iter()
        .find(|&(_, l, h)| l <= low && high <= h)
        .map(|(bits, _, _)| bits)
    }

    /// Bits per code.
    fn width(self) -> usize {
        match self {
            Bits::I4 | Bits::U4 => 4,
            Bits::I8 | Bits::U8 => 8,
        }
    }

    fn row_bytes(self, inputs: usize) -> usize {
        match self {
            Bits::I4 | Bits::U4 => inputs.div_ceil(2),
            Bits::I8 | Bits::U8 => inputs,
        }
    }

    /// `values` (which fit), rows of `inputs`, packed: each row starting on
    /// a byte, two codes a byte (the first in the low nibble) for 4 bits.
    fn pack(self, values: &[i32], inputs: usize) -> Vec<u8> {
        let row_bytes = self.row_bytes(inputs);
        let mut codes = vec![0u8; values.len() / inputs.max(1) * row_bytes];
        for (row, codes) in values
            .chunks_exact(inputs.max(1))
            .zip(codes.chunks_exact_mut(row_bytes.max(1)))
        {
            match self {
                Bits::I8 | Bits::U8 => {
                    for (c, &v) in codes.iter_mut().zip(row) {
                        *c = self.encode(v);
                    }
                }
                Bits::I4 | Bits::U4 => {
                    for (k, &v) in row.iter().enumerate() {
                        codes[k / 2] |= self.encode(v) << (4 * (k % 2));
                    }
                }
            }
        }
        codes
    }

    /// Row `n` of `codes` packed by [`Bits::pack`] with rows of `inputs`.
    fn row(self, codes: &[u8], n: usize, inputs: usize) -> &[u8] {
        let row_bytes = self.row_bytes(inputs);
        &codes[n * row_bytes..(n + 1) * row_bytes]
    }

    /// Code `v` (which fits) as its stored bits.
    fn encode(self, v: i32) -> u8 {
        match self {
            Bits::I4 | Bits::U4 => (v & 0xF) as u8,
            Bits::I8 | Bits::U8 => v as u8,
        }
    }

    /// The value of stored bits `b` (a nibble for 4 bits).
    fn decode(self, b: u8) -> f32 {
        match self {
            Bits::I4 => f32::from(((b << 4) as i8) >> 4),
            Bits::U4 => f32::from(b & 0xF),
            Bits::I8 => f32::from(b as i8),
            Bits::U8 => f32::from(b),
        }
    }
}

impl Blockwise {
    /// Row `n`'s codes, in a weight of `inputs` columns.
    fn row_codes(&self, n: usize, inputs: usize) -> &[u8] {
        self.bits.row(&self.codes, n, inputs)
    }

    /// Row `n`'s scales and offsets (if any), one per block, in a weight of
    /// `inputs` columns.
    // Only the x86-64 kernels read a row's parameters at once.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    fn row_parameters(&self, n: usize, inputs: usize) -> (&[f32], Option<&[f32]>) {
        let blocks = inputs / self.block;
        let row = n * blocks..(n + 1) * blocks;
        (
            &self.scale[row.clone()],
            self.offset.as_ref().map(|o| &o[row]),
        )
    }

    /// Elements `k0..k0 + out.len()` of row `n` of a weight of `inputs`
    /// columns, dequantized into `out`, on instruction set `isa` (every
    /// path computes the same values). A matrix product reads a row a
    /// segment at a time; a whole row is the segment from 0.
    fn segment_on(&self, isa: Isa, n: usize, inputs: usize, k0: usize, out: &mut [f32]) {
        let blocks = inputs / self.block;
        let codes = self.row_codes(n, inputs);
        let end = k0 + out.len();
        let mut k = k0;
        // One piece per block the segment meets: one scale and offset each.
        while k < end {
            let b = k / self.block;
            let piece_end = ((b + 1) * self.block).min(end);
            let param = n * blocks + b;
            let s = self.scale[param];
            let o = self.offset.as_ref().map_or(0.0, |o| o[param]);
            let piece = &mut out[k - k0..piece_end - k0];
            #[cfg(target_arch = "x86_64")]
            if isa.has_avx2() && k.is_multiple_of(8) && piece.len().is_multiple_of(8) {
                // SAFETY: `has_avx2` holds only on CPUs with AVX2, FMA and
                // F16C; the piece is one block's (one scale and offset),
                // of a multiple of 8 elements, and its codes start at
                // element `k`, on a byte (`k` is a multiple of 8).
                unsafe {
                    dequant::avx2(
                        self.bits,
                        piece.len(),
                        &codes[k * self.bits.width() / 8..],
                        &[s],
                        Some(&[o]),
                        self.fp16,
                        piece,
                    )
                };
                k = piece_end;
                continue;
            }
            self.piece(codes, k, s, o, piece);
            k = piece_end;
        }
        let _ = isa;
    }

    /// Elements `k..k + out.len()` of a row whose codes are `codes`, all in
    /// one block of scale `s` and offset `o`, dequantized in plain Rust.
    fn piece(&self, codes: &[u8], k: usize, s: f32, o: f32, out: &mut [f32]) {
        let bits = self.bits;
        match bits {
            Bits::I8 | Bits::U8 => {
                for (v, &c) in out.iter_mut().zip(&codes[k..]) {
                    *v = (bits.decode(c) - o) * s;
                }
            }
            Bits::I4 | Bits::U4 if k.is_multiple_of(2) && out.len().is_multiple_of(2) => {
                // Two codes a byte.
                for (pair, &c) in out.chunks_exact_mut(2).zip(&codes[k / 2..]) {
                    pair[0] = (bits.decode(c) - o) * s;
                    pair[1] = (bits.decode(c >> 4) - o) * s;
                }
            }
            Bits::I4 | Bits::U4 => {
                for (i, v) in out.iter_mut().enumerate() {
                    let c = codes[(k + i) / 2] >> (4 * ((k + i) % 2));
                    *v = (bits.decode(c) - o) * s;
                }
            }
        }
        if self.fp16 {
            round_to_f16(out);
        }
    }
}

/// A weight palettized as iOS 18's `constexpr_lut_to_dense` stores it:
/// element `k` of row `n` is entry `index` of the table of row group `n /
/// rows_per_table` and column group `k / columns_per_table`, each table a
/// list of scalars (a palette of vectors is widened at load instead). The
/// values are the table's, exactly, so no rounding is needed.
#[derive(Debug)]
struct Palettized {
    /// The indices, each row starting on a byte: two a byte, the first in
    /// the low nibble, for tables of at most sixteen entries
    /// ([`Bits::U4`]); one a byte for larger ones ([`Bits::U8`]).
    codes: Vec<u8>,
    bits: Bits,
    /// Entries per table: 16 for four-bit indices (smaller tables padded
    /// with zeros, which no index reads), else the palette's own count.
    entries: usize,
    /// Row groups × column groups × `entries` values, row-major.
    tables: Vec<f32>,
    rows_per_table: usize,
    columns_per_table: usize,
}

impl Palettized {
    /// Row `n`'s codes, in a weight of `inputs` columns.
    fn row_codes(&self, n: usize, inputs: usize) -> &[u8] {
        self.bits.row(&self.codes, n, inputs)
    }

    /// Elements `k0..k0 + out.len()` of row `n` of a weight of `inputs`
    /// columns, looked up into `out`.
    fn segment(&self, n: usize, inputs: usize, k0: usize, out: &mut [f32]) {
        let codes = self.row_codes(n, inputs);
        let column_tables = inputs / self.columns_per_table;
        let first_table = n / self.rows_per_table * column_tables;
        for (k, value) in (k0..).zip(out.iter_mut()) {
            let table = first_table + k / self.columns_per_table;
            let index = match self.bits {
                Bits::U4 => (codes[k / 2] >> (4 * (k % 2))) & 0xF,
                _ => codes[k],
            };
            *value = self.tables[table * self.entries + usize::from(index)];
        }
    }

    /// Row `n`'s tables, one per column group, `entries` values each.
    // Only the x86-64 kernels look up in registers.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    fn row_tables(&self, n: usize, inputs: usize) -> &[f32] {
        let per_row = inputs / self.columns_per_table * self.entries;
        let first = n / self.rows_per_table * per_row;
        &self.tables[first..first + per_row]
    }
}

/// Rounds every value to the nearest fp16 (ties to even), as the
/// decompressed weight's `materialize` does, through `half`'s slice
/// conversions (F16C or NEON where the CPU has them).
fn round_to_f16(values: &mut [f32]) {
    use half::slice::HalfFloatSliceExt;
    let mut halves = [f16::ZERO; 256];
    for chunk in values.chunks_mut(halves.len()) {
        let halves = &mut halves[..chunk.len()];
        halves.convert_from_f32_slice(chunk);
        halves.convert_to_f32_slice(chunk);
    }
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

    /// A weight of `shape` (`[outputs, inputs]`) quantized by blocks along
    /// its rows: integers `data` (row-major), `scale` and the optional
    /// `offset` of shape `[outputs, inputs / block]`; `fp16` when the
    /// program declares the weight fp16. None when the integers do not fit
    /// 8 bits or the parameters are not one per row and block.
    pub(crate) fn blockwise(
        shape: &[usize],
        data: &[i32],
        parameters: &[usize],
        scale: Vec<f32>,
        offset: Option<Vec<f32>>,
        fp16: bool,
    ) -> Option<StoredWeight> {
        let (&[outputs, inputs], &[rows, blocks]) = (shape, parameters) else {
            return None;
        };
        if rows != outputs
            || blocks == 0
            || inputs % blocks != 0
            || data.len() != outputs * inputs
            || scale.len() != outputs * blocks
            || offset.as_ref().is_some_and(|o| o.len() != scale.len())
        {
            return None;
        }
        let bits = Bits::fitting(data)?;
        let codes = bits.pack(data, inputs);
        Some(StoredWeight {
            outputs,
            inputs,
            storage: Storage::Blockwise(Blockwise {
                codes,
                bits,
                block: inputs / blocks,
                scale,
                offset,
                fp16,
            }),
        })
    }

    /// A weight of `shape` (`[outputs, inputs]`) palettized: `indices`
    /// (row-major) into `tables`, of shape `[row groups, column groups,
    /// entries]` (row-major; each group count dividing its axis). None
    /// when the shapes do not fit, a table has more than 256 entries or an
    /// index is outside its table.
    pub(crate) fn palettized(
        shape: &[usize],
        indices: &[i32],
        table_shape: &[usize],
        tables: &[f32],
    ) -> Option<StoredWeight> {
        let (&[outputs, inputs], &[row_groups, column_groups, entries]) = (shape, table_shape)
        else {
            return None;
        };
        if row_groups == 0
            || column_groups == 0
            || outputs % row_groups != 0
            || inputs % column_groups != 0
            || !(1..=256).contains(&entries)
            || indices.len() != outputs * inputs
            || tables.len() != row_groups * column_groups * entries
            || indices
                .iter()
                .any(|&i| usize::try_from(i).map_or(true, |i| i >= entries))
        {
            return None;
        }
        let (bits, padded) = if entries <= 16 {
            (Bits::U4, 16)
        } else {
            (Bits::U8, entries)
        };
        let mut padded_tables = vec![0.0f32; row_groups * column_groups * padded];
        for (to, from) in padded_tables
            .chunks_exact_mut(padded)
            .zip(tables.chunks_exact(entries))
        {
            to[..entries].copy_from_slice(from);
        }
        let codes = bits.pack(indices, inputs);
        Some(StoredWeight {
            outputs,
            inputs,
            storage: Storage::Palettized(Palettized {
                codes,
                bits,
                entries: padded,
                tables: padded_tables,
                rows_per_table: outputs / row_groups,
                columns_per_table: inputs / column_groups,
            }),
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
            Storage::Blockwise(q) => {
                let mut data = vec![0.0; self.outputs * self.inputs];
                for (n, row) in data.chunks_exact_mut(self.inputs.max(1)).enumerate() {
                    q.segment_on(Isa::detect(), n, self.inputs, 0, row);
                }
                data
            }
            Storage::Palettized(p) => {
                let mut data = vec![0.0; self.outputs * self.inputs];
                for (n, row) in data.chunks_exact_mut(self.inputs.max(1)).enumerate() {
                    p.segment(n, self.inputs, 0, row);
                }
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
            Storage::Blockwise(q) => {
                q.codes.len() + 4 * q.scale.len() + q.offset.as_ref().map_or(0, |o| 4 * o.len())
            }
            Storage::Palettized(p) => p.codes.len() + 4 * p.tables.len(),
        }
    }
}

/// `out = x · weightᵀ + bias` for `rows` rows of `x` (`rows × inputs`,
/// row-major), into `out` (`rows × outputs`), on the best instruction set;
/// `bias` (`outputs` long) is added to each row's sums.
pub(crate) fn linear(
    weight: &Arc<StoredWeight>,
    x: &[f32],
    rows: usize,
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    linear_on(Isa::detect(), weight, x, rows, bias, out);
}

/// [`linear`] on instruction set `isa`.
fn linear_on(
    isa: Isa,
    weight: &StoredWeight,
    x: &[f32],
    rows: usize,
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    debug_assert_eq!(x.len(), rows * weight.inputs);
    debug_assert_eq!(out.len(), rows * weight.outputs);
    debug_assert!(bias.is_none_or(|b| b.len() == weight.outputs));
    match &weight.storage {
        Storage::F16(data) => product(
            isa,
            &Stored {
                data,
                inputs: weight.inputs,
                isa,
            },
            weight,
            x,
            rows,
            bias,
            out,
        ),
        Storage::Blockwise(q) => product(
            isa,
            &Dequantized {
                q,
                inputs: weight.inputs,
                isa,
            },
            weight,
            x,
            rows,
            bias,
            out,
        ),
        Storage::Palettized(p) => product(
            isa,
            &LookedUp {
                p,
                inputs: weight.inputs,
                isa,
            },
            weight,
            x,
            rows,
            bias,
            out,
        ),
    }
}

/// [`linear`] over rows from `source`: matrix-vector products for a few
/// rows, the bias added after; a matrix product for more, the bias added
/// as it stores.
#[allow(clippy::too_many_arguments)]
fn product<S: RowSource>(
    isa: Isa,
    source: &S,
    weight: &StoredWeight,
    x: &[f32],
    rows: usize,
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    if weight.inputs > 0 && rows >= MATVEC_ROWS {
        many_rows(isa, source, weight, x, rows, bias, out);
        return;
    }
    if weight.inputs == 0 {
        // Empty sums.
        out.fill(0.0);
    } else {
        mat_vec(isa, source, weight, x, rows, out);
    }
    if let Some(bias) = bias {
        for row in out.chunks_exact_mut(weight.outputs.max(1)) {
            row.iter_mut().zip(bias).for_each(|(o, b)| *o += b);
        }
    }
}

/// Where a kernel reads weight rows from.
trait RowSource: Sync {
    /// The element type the rows come in.
    type Element: Element;

    /// Row `n`: in place, or made in `scratch` (a buffer of the thread
    /// reading it, reused from row to row).
    fn row<'a>(&'a self, n: usize, scratch: &'a mut Scratch) -> &'a [Self::Element];

    /// Elements `k0..k0 + out.len()` of row `n`, as f32, into `out`.
    fn segment(&self, n: usize, k0: usize, out: &mut [f32]);

    /// Rows `first..first + width` (at most [`NR`]), elements `k0..k0 +
    /// kc`, into a packed panel of the matrix product's `B`: `panel[k * NR
    /// + j] = row(first + j)[k0 + k]`, the rest of `panel` left as it is.
    fn pack_panel(&self, first: usize, width: usize, k0: usize, panel: &mut [f32]) {
        pack_by_segments(self, first, width, k0, panel);
    }

    /// The bytes the whole weight occupies (what a product streams).
    fn bytes(&self) -> usize;

    /// `row(n) · x` computed without making the row, when a kernel can:
    /// the same bits as making it and calling `dots`.
    fn fused_dot(&self, _n: usize, _x: &FusedInput) -> Option<f32> {
        None
    }

    /// Rows `n` and `n + 1` dotted with `x` at once, when a kernel can:
    /// for each, the bits of [`RowSource::fused_dot`].
    fn fused_dot_pair(&self, _n: usize, _x: &FusedInput) -> Option<[f32; 2]> {
        None
    }

    /// Rows `first..first + out.len()` dotted with `x` into `out` by one
    /// kernel call, when a kernel can: for each, the bits of
    /// [`RowSource::fused_dot`]. Whether it could.
    fn fused_dots(&self, _first: usize, _x: &FusedInput, _out: &mut [f32]) -> bool {
        false
    }
}

/// [`RowSource::pack_panel`] a row segment at a time: each made, then
/// written down its column of the panel.
fn pack_by_segments<S: RowSource + ?Sized>(
    source: &S,
    first: usize,
    width: usize,
    k0: usize,
    panel: &mut [f32],
) {
    let kc = panel.len() / NR;
    let mut segment = vec![0.0f32; kc];
    for j in 0..width {
        source.segment(first + j, k0, &mut segment);
        for (k, &value) in segment.iter().enumerate() {
            panel[k * NR + j] = value;
        }
    }
}

/// The one row of `x` a matrix-vector product's fused dot products read,
/// in the layouts they read it in, made once per product.
struct FusedInput<'a> {
    // Only the x86-64 kernels fuse (the rest read rows as made).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    x: &'a [f32],
    /// `x` as the AVX-512 four-bit lookup reads it (`dequant::split_lanes`),
    /// on CPUs that run it.
    #[cfg(target_arch = "x86_64")]
    split: Option<Vec<f32>>,
}

impl<'a> FusedInput<'a> {
    fn new(isa: Isa, x: &'a [f32]) -> FusedInput<'a> {
        #[cfg(target_arch = "x86_64")]
        let split = (isa == Isa::Avx512 && x.len().is_multiple_of(dot::LANES))
            .then(|| dequant::split_lanes(x));
        let _ = isa;
        FusedInput {
            x,
            #[cfg(target_arch = "x86_64")]
            split,
        }
    }
}

/// A thread's buffers for rows made as they are read.
#[derive(Default)]
struct Scratch {
    f32: Vec<f32>,
}

impl Scratch {
    /// Row `n` (of `inputs` elements) of `source`, made from its segments.
    fn made_row<S: RowSource + ?Sized>(&mut self, source: &S, n: usize, inputs: usize) -> &[f32] {
        self.f32.resize(inputs, 0.0);
        source.segment(n, 0, &mut self.f32);
        &self.f32
    }
}

/// Rows held as stored.
struct Stored<'a, W> {
    data: &'a [W],
    inputs: usize,
    /// The instruction set the panel pack runs on (only x86-64 has a
    /// transposing one).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    isa: Isa,
}

impl<W: Element> RowSource for Stored<'_, W> {
    type Element = W;

    fn row<'a>(&'a self, n: usize, _: &'a mut Scratch) -> &'a [W] {
        &self.data[n * self.inputs..(n + 1) * self.inputs]
    }

    fn segment(&self, n: usize, k0: usize, out: &mut [f32]) {
        let start = n * self.inputs + k0;
        W::widen_slice(&self.data[start..start + out.len()], out);
    }

    fn pack_panel(&self, first: usize, width: usize, k0: usize, panel: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if self.isa.has_avx2() && width == NR && (panel.len() / NR).is_multiple_of(8) {
            let kc = panel.len() / NR;
            let rows: [&[W]; NR] = std::array::from_fn(|j| {
                let n = first + j;
                &self.data[n * self.inputs..(n + 1) * self.inputs]
            });
            // SAFETY: `has_avx2` holds only on CPUs with AVX2, FMA and
            // F16C; `kc` is a multiple of 8, `panel` holds `kc * NR`
            // elements and each row `k0 + kc` (the product's bounds).
            unsafe { dot::pack_panel_avx2(rows, k0, kc, panel) };
            return;
        }
        pack_by_segments(self, first, width, k0, panel);
    }

    fn bytes(&self) -> usize {
        std::mem::size_of_val(self.data)
    }
}

/// Rows of a [`Blockwise`] weight, dequantized one at a time.
struct Dequantized<'a> {
    q: &'a Blockwise,
    inputs: usize,
    isa: Isa,
}

impl RowSource for Dequantized<'_> {
    type Element = f32;

    fn row<'a>(&'a self, n: usize, scratch: &'a mut Scratch) -> &'a [f32] {
        scratch.made_row(self, n, self.inputs)
    }

    fn segment(&self, n: usize, k0: usize, out: &mut [f32]) {
        self.q.segment_on(self.isa, n, self.inputs, k0, out);
    }

    fn bytes(&self) -> usize {
        // Dequantizing costs about what streaming f32 would.
        self.q.codes.len() * 4 * 8 / self.q.bits.width()
    }

    fn fused_dot(&self, n: usize, input: &FusedInput) -> Option<f32> {
        #[cfg(target_arch = "x86_64")]
        if self.isa.has_avx2()
            && self.q.block.is_multiple_of(8)
            && self.inputs.is_multiple_of(dot::LANES)
        {
            let (bits, block, fp16) = (self.q.bits, self.q.block, self.q.fp16);
            let codes = self.q.row_codes(n, self.inputs);
            let (scale, offset) = self.q.row_parameters(n, self.inputs);
            if let (Some(x_split), Bits::I4 | Bits::U4, true) =
                (&input.split, bits, block.is_multiple_of(dot::LANES))
            {
                // SAFETY: `split` is made only for `Isa::Avx512`, chosen
                // only on CPUs with AVX-512F, AVX2, FMA and F16C; 4-bit
                // codes in blocks of a multiple of 32; the codes and
                // parameters are row `n`'s, `x_split` as long as the row.
                return Some(unsafe {
                    dequant::dot_by_table_avx512(bits, block, codes, scale, offset, fp16, x_split)
                });
            }
            // SAFETY: `has_avx2` holds only on CPUs with AVX2, FMA and
            // F16C; the codes and parameters are row `n`'s, `x` a row of
            // `inputs` elements, a multiple of 32 and of the block of 8k.
            return Some(unsafe {
                dequant::dot_avx2(bits, block, codes, scale, offset, fp16, input.x)
            });
        }
        let _ = (n, input);
        None
    }

    fn fused_dot_pair(&self, n: usize, input: &FusedInput) -> Option<[f32; 2]> {
        #[cfg(target_arch = "x86_64")]
        if self.isa.has_avx2()
            && matches!(self.q.bits, Bits::I4 | Bits::U4)
            && self.q.block == dot::LANES
            && self.inputs.is_multiple_of(dot::LANES)
        {
            let (bits, fp16) = (self.q.bits, self.q.fp16);
            let codes = [n, n + 1].map(|n| self.q.row_codes(n, self.inputs));
            let [(scale, offset), (next_scale, next_offset)] =
                [n, n + 1].map(|n| self.q.row_parameters(n, self.inputs));
            let scale = [scale, next_scale];
            let offset = offset.zip(next_offset).map(|(o, next)| [o, next]);
            // SAFETY: `split` is made only for `Isa::Avx512`, chosen only on
            // CPUs with AVX-512F, AVX2, FMA and F16C, and `has_avx2` holds
            // only on CPUs with AVX2, FMA and F16C; 4-bit codes in blocks of
            // 32; the codes and parameters are rows `n` and `n + 1`'s, `x`
            // (and `x_split`) as long as a row.
            return Some(unsafe {
                match &input.split {
                    Some(x_split) => dequant::dot_rows_by_table32_avx512(
                        bits, codes, scale, offset, fp16, x_split,
                    ),
                    None => {
                        dequant::dot_rows_by_table32_avx2(bits, codes, scale, offset, fp16, input.x)
                    }
                }
            });
        }
        let _ = (n, input);
        None
    }

    fn fused_dots(&self, first: usize, input: &FusedInput, out: &mut [f32]) -> bool {
        #[cfg(target_arch = "x86_64")]
        if let (Some(x_split), Bits::I4 | Bits::U4, true) = (
            &input.split,
            self.q.bits,
            self.q.block == dot::LANES && self.inputs.is_multiple_of(dot::LANES),
        ) {
            let rows = first..first + out.len();
            let blocks = self.inputs / self.q.block;
            let parameters = rows.start * blocks..rows.end * blocks;
            let row_bytes = self.q.bits.row_bytes(self.inputs);
            let codes = &self.q.codes[rows.start * row_bytes..rows.end * row_bytes];
            let scale = &self.q.scale[parameters.clone()];
            let offset = self.q.offset.as_ref().map(|o| &o[parameters]);
            // SAFETY: `split` is made only for `Isa::Avx512`, chosen only on
            // CPUs with AVX-512F, AVX2, FMA and F16C; 4-bit codes in blocks
            // of 32; the codes and parameters are those of rows `rows`, one
            // row after another, `x_split` as long as a row.
            unsafe {
                dequant::dots_by_table32_avx512(
                    self.q.bits,
                    codes,
                    scale,
                    offset,
                    self.q.fp16,
                    x_split,
                    out,
                )
            };
            return true;
        }
        let _ = (first, input, out);
        false
    }
}

/// Rows of a [`Palettized`] weight, looked up one at a time.
struct LookedUp<'a> {
    p: &'a Palettized,
    inputs: usize,
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    isa: Isa,
}

impl RowSource for LookedUp<'_> {
    type Element = f32;

    fn row<'a>(&'a self, n: usize, scratch: &'a mut Scratch) -> &'a [f32] {
        scratch.made_row(self, n, self.inputs)
    }

    fn segment(&self, n: usize, k0: usize, out: &mut [f32]) {
        self.p.segment(n, self.inputs, k0, out);
    }

    fn bytes(&self) -> usize {
        // Looking up costs about what streaming f32 would.
        self.p.codes.len() * 4 * 8 / self.p.bits.width()
    }

    fn fused_dot(&self, n: usize, input: &FusedInput) -> Option<f32> {
        #[cfg(target_arch = "x86_64")]
        if self.isa.has_avx2()
            && self.p.bits == Bits::U4
            && self.p.columns_per_table.is_multiple_of(dot::LANES)
        {
            let codes = self.p.row_codes(n, self.inputs);
            let tables = self.p.row_tables(n, self.inputs);
            let block = self.p.columns_per_table;
            // SAFETY: four-bit codes; the column groups (the blocks) are a
            // multiple of 32 wide, each with its sixteen values in
            // `tables`; `codes` holds row `n`'s, and `x` (and `split`) are
            // as long as the row. `split` is made only for `Isa::Avx512`,
            // chosen only on CPUs with AVX-512F, AVX2, FMA and F16C;
            // `has_avx2` holds only on CPUs with AVX2, FMA and F16C.
            return Some(unsafe {
                match &input.split {
                    Some(x_split) => {
                        let [dot] =
                            dequant::dot_rows_by_palette_avx512(block, [codes], [tables], x_split);
                        dot
                    }
                    None => dequant::dot_by_palette_avx2(block, codes, tables, input.x),
                }
            });
        }
        let _ = (n, input);
        None
    }

    fn fused_dot_pair(&self, n: usize, input: &FusedInput) -> Option<[f32; 2]> {
        #[cfg(target_arch = "x86_64")]
        if let (Some(x_split), Bits::U4, true) = (
            &input.split,
            self.p.bits,
            self.p.columns_per_table.is_multiple_of(dot::LANES),
        ) {
            let codes = [n, n + 1].map(|n| self.p.row_codes(n, self.inputs));
            let tables = [n, n + 1].map(|n| self.p.row_tables(n, self.inputs));
            // SAFETY: as in `fused_dot`, for rows `n` and `n + 1`.
            return Some(unsafe {
                dequant::dot_rows_by_palette_avx512(
                    self.p.columns_per_table,
                    codes,
                    tables,
                    x_split,
                )
            });
        }
        let _ = (n, input);
        None
    }

    fn fused_dots(&self, first: usize, input: &FusedInput, out: &mut [f32]) -> bool {
        #[cfg(target_arch = "x86_64")]
        if let (Some(x_split), Bits::U4, true) = (
            &input.split,
            self.p.bits,
            self.p.columns_per_table.is_multiple_of(dot::LANES),
        ) {
            let row = |n: usize| {
                (
                    self.p.row_codes(first + n, self.inputs),
                    self.p.row_tables(first + n, self.inputs),
                )
            };
            // SAFETY: as in `fused_dot`, for each row of `first..first +
            // out.len()`.
            unsafe { dequant::dots_by_palette_avx512(self.p.columns_per_table, row, x_split, out) };
            return true;
        }
        let _ = (first, input, out);
        false
    }
}

/// Matrix-vector products: `out[r][n] = weight[n] · x[r]`, the weight rows
/// split over `threads`; each weight row is read once for all rows of `x`
/// (two at a time in registers).
fn mat_vec<S: RowSource>(
    isa: Isa,
    source: &S,
    weight: &StoredWeight,
    x: &[f32],
    rows: usize,
    out: &mut [f32],
) {
    let threads = if source.bytes() < PARALLEL_BYTES {
        1
    } else {
        cores().min(weight.outputs.max(1))
    };
    let (outputs, inputs) = (weight.outputs, weight.inputs);
    let x_rows: Vec<&[f32]> = x.chunks_exact(inputs).take(rows).collect();
    let fused = (rows == 1).then(|| FusedInput::new(isa, x_rows[0]));
    // Each part computes outputs `range` for every row, into its own buffer
    // (`rows × range`), copied into `out` afterwards.
    let compute = |range: std::ops::Range<usize>| -> Vec<f32> {
        let width = range.len();
        let mut part = vec![0.0f32; rows * width];
        if fused
            .as_ref()
            .is_some_and(|input| source.fused_dots(range.start, input, &mut part))
        {
            return part;
        }
        let mut scratch = Scratch::default();
        let mut skip = false;
        for (i, n) in range.clone().enumerate() {
            if std::mem::take(&mut skip) {
                // Computed with the row before it.
                continue;
            }
            if let Some(input) = &fused {
                if n + 1 < range.end {
                    if let Some([y, next]) = source.fused_dot_pair(n, input) {
                        part[i] = y;
                        part[i + 1] = next;
                        skip = true;
                        continue;
                    }
                }
                if let Some(y) = source.fused_dot(n, input) {
                    part[i] = y;
                    continue;
                }
            }
            let w = source.row(n, &mut scratch);
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
    // One part when on one thread.
    let ranges = guided_parts(outputs, threads);
    let parts = parallel::map(&ranges, |range| compute(range.clone()));
    for (range, part) in ranges.iter().zip(parts) {
        let width = range.len();
        for r in 0..rows {
            out[r * outputs + range.start..r * outputs + range.end]
                .copy_from_slice(&part[r * width..(r + 1) * width]);
        }
    }
}

/// The parts a matrix-vector product of `outputs` rows splits into for
/// `threads` threads, claimed as threads come free: each a share
/// (`1 / threads`) of the rows the parts before it leave, down to
/// [`SMALLEST_PART`] rows (OpenMP's guided schedule). The parts claimed
/// last are small, so the threads finish close together, and a core
/// slowed by another process (or by memory) takes fewer of them without
/// holding up the rest.
fn guided_parts(outputs: usize, threads: usize) -> Vec<std::ops::Range<usize>> {
    let mut parts = Vec::new();
    let mut start = 0;
    while start < outputs {
        let left = outputs - start;
        // Even, so that the two-row kernels take every row of a part.
        let size = (left / threads).max(SMALLEST_PART).next_multiple_of(2);
        let end = (start + size).min(outputs);
        parts.push(start..end);
        start = end;
    }
    parts
}

/// `out = x · weightᵀ + bias` on the matrix product of `gemm.rs`: `x` is packed
/// once, and the weight's rows are `B`'s columns, widened (or
/// dequantized) straight into its packed panels a segment at a time as the
/// product reaches them, so the weight stays as stored. The product splits
/// its output over the cores and sums each element in order of `k`, so
/// splitting does not change the result.
fn many_rows<S: RowSource>(
    isa: Isa,
    source: &S,
    weight: &StoredWeight,
    x: &[f32],
    rows: usize,
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    let (outputs, inputs) = (weight.outputs, weight.inputs);
    let Some(x) = Strided::row_major(x, rows, inputs) else {
        unreachable!("x holds rows × inputs elements (the caller)");
    };
    let columns = WeightColumns {
        source,
        outputs,
        inputs,
    };
    let threads = threads_for(rows * inputs * outputs);
    gemm::gemm_on(
        isa,
        threads,
        &PackedA::new(x),
        &columns,
        out,
        outputs,
        Epilogue {
            col_bias: bias,
            ..Epilogue::default()
        },
    );
}

/// A weight read as `B = weightᵀ` (`inputs × outputs`) by the matrix
/// product: column `j` of `B` is row `j` of the weight.
struct WeightColumns<'a, S> {
    source: &'a S,
    outputs: usize,
    inputs: usize,
}

impl<S: RowSource> PackB for WeightColumns<'_, S> {
    fn rows(&self) -> usize {
        self.inputs
    }

    fn cols(&self) -> usize {
        self.outputs
    }

    fn pack(&self, k0: usize, kc: usize, cols: std::ops::Range<usize>, out: &mut [f32]) {
        for (p, panel) in out.chunks_exact_mut(kc * NR).enumerate() {
            let first = cols.start + p * NR;
            self.source
                .pack_panel(first, NR.min(cols.end - first), k0, panel);
        }
    }
}

#[cfg(test)]
mod tests;
