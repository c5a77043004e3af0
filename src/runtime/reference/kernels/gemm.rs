//! A register-blocked f32 matrix product, `C = A · B` (+ bias, ReLU), for
//! the compute-bound ops: convolutions, `linear` over many rows and
//! `matmul` of two tensors.
//!
//! The layout is the classic one of GotoBLAS / BLIS:
//!
//! - `A` (`m × k`) is packed once per product ([`PackedA`]) into panels of
//!   [`MR`] rows, each `KC` columns deep, so the microkernel reads it
//!   sequentially; a convolution's `A` is its weight.
//! - `B` (`k × n`) is packed a block at a time (`KC × NC`) into panels of
//!   [`NR`] columns by a [`PackB`] source. The source may be a strided
//!   matrix (a transpose costs nothing) or a convolution's im2col columns,
//!   computed straight into the panel (no full im2col copy).
//! - The microkernel computes an `MR × NR` tile in registers: 6 × 16 is
//!   twelve AVX2 registers or twenty-four NEON ones of accumulators. With
//!   AVX-512 it computes four tiles at once (two panels of `A` by two of
//!   `B`, 12 × 32): twenty-four 512-bit accumulators, so that each load of
//!   `B` feeds more multiply-adds.
//!
//! # The summation order
//!
//! Element `C[i][j]` is `Σ_k A[i][k] B[k][j]` summed in order of `k` within
//! each block of `KC` (fused multiply-adds on AVX2, AVX-512 and NEON, the
//! same bits on each; a multiply then an add on the portable path, which
//! may differ in the last bits), the
//! blocks' partial sums added in order of `k`, then the bias added, then
//! ReLU. Threads split `m` and `n`, never `k`, so results do not depend on
//! the thread count.

use std::ops::Range;

use super::parallel::{self, threads_for};
use super::Isa;

/// Rows of a microkernel tile.
pub(crate) const MR: usize = 6;
/// Columns of a microkernel tile.
pub(crate) const NR: usize = 16;
/// The most panels of `A`, and of `B`, one microkernel call takes.
const PANELS: usize = 2;
/// Depth of a packed block: a `KC × NR` panel of `B` (16 KiB) stays in L1.
const KC: usize = 256;
/// Rows of `A` per pass over a `B` panel: `MC × KC` of `A` (96 KiB) stays
/// in L2.
const MC: usize = 16 * MR;
/// Columns of a packed block of `B`: `KC × NC` (256 KiB) stays in L2 while
/// every row of `A` passes over it.
const NC: usize = 16 * NR;

/// A read-only f32 matrix with arbitrary strides (a transpose is a swap of
/// strides).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Strided<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a> Strided<'a> {
    /// `rows × cols` elements, element `(r, c)` at `data[r * row_stride +
    /// c * col_stride]`; None when that leaves `data`.
    pub(crate) fn new(
        data: &'a [f32],
        rows: usize,
        cols: usize,
        row_stride: usize,
        col_stride: usize,
    ) -> Option<Strided<'a>> {
        if rows > 0 && cols > 0 {
            let last = (rows - 1)
                .checked_mul(row_stride)?
                .checked_add((cols - 1).checked_mul(col_stride)?)?;
            if last >= data.len() {
                return None;
            }
        }
        Some(Strided {
            data,
            rows,
            cols,
            row_stride,
            col_stride,
        })
    }

    /// A row-major `rows × cols` matrix.
    pub(crate) fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Option<Strided<'a>> {
        Strided::new(data, rows, cols, cols, 1)
    }

    /// The transpose.
    pub(crate) fn t(self) -> Strided<'a> {
        Strided {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }

    fn at(&self, r: usize, c: usize) -> f32 {
        self.data[r * self.row_stride + c * self.col_stride]
    }
}

/// Where a product's `B` comes from: it writes any block of itself into
/// the packed layout the microkernel reads.
pub(crate) trait PackB: Sync {
    /// `k`, `B`'s rows.
    fn rows(&self) -> usize;
    /// `n`, `B`'s columns.
    fn cols(&self) -> usize;
    /// Writes rows `k0..k0 + kc` and columns `cols` of `B` into `out`
    /// (`cols.len().div_ceil(NR) * kc * NR` long, zeroed by the caller) as
    /// panels of [`NR`] columns: `out[(p * kc + k) * NR + j] = B[k0 + k][cols.start
    /// + p * NR + j]`, the columns past `cols.end` left zero.
    fn pack(&self, k0: usize, kc: usize, cols: Range<usize>, out: &mut [f32]);
}

impl PackB for Strided<'_> {
    fn rows(&self) -> usize {
        self.rows
    }

    fn cols(&self) -> usize {
        self.cols
    }

    fn pack(&self, k0: usize, kc: usize, cols: Range<usize>, out: &mut [f32]) {
        for (p, panel) in out.chunks_exact_mut(kc * NR).enumerate() {
            let first = cols.start + p * NR;
            let width = NR.min(cols.end - first);
            if self.row_stride == 1 && self.col_stride != 1 {
                // A transpose of a row-major matrix: read its rows along.
                for j in 0..width {
                    let start = (first + j) * self.col_stride + k0;
                    for (k, &value) in self.data[start..start + kc].iter().enumerate() {
                        panel[k * NR + j] = value;
                    }
                }
                continue;
            }
            for (k, row) in panel.chunks_exact_mut(NR).enumerate() {
                let r = k0 + k;
                if self.col_stride == 1 {
                    let start = r * self.row_stride + first;
                    row[..width].copy_from_slice(&self.data[start..start + width]);
                } else {
                    for (j, value) in row[..width].iter_mut().enumerate() {
                        *value = self.at(r, first + j);
                    }
                }
            }
        }
    }
}

/// `A` packed into panels of [`MR`] rows, block by block of [`KC`] columns:
/// block `k0` starts at `m_padded * k0`, its panel `p` at `p * MR * kc`
/// after that, holding `a[p * MR + i][k0 + k]` at `k * MR + i` (zero past
/// the last row).
#[derive(Debug)]
pub(crate) struct PackedA {
    rows: usize,
    depth: usize,
    m_padded: usize,
    data: Vec<f32>,
}

impl PackedA {
    /// Packs `a`.
    pub(crate) fn new(a: Strided<'_>) -> PackedA {
        let (rows, depth) = (a.rows, a.cols);
        let m_padded = rows.div_ceil(MR) * MR;
        let mut data = vec![0.0f32; m_padded * depth];
        let mut at = 0;
        for k0 in (0..depth).step_by(KC) {
            let kc = KC.min(depth - k0);
            for p in 0..m_padded / MR {
                let panel = &mut data[at..at + MR * kc];
                for i in 0..MR.min(rows - p * MR) {
                    let r = p * MR + i;
                    if a.col_stride == 1 {
                        // A row-major `A`: read the row along.
                        let start = r * a.row_stride + k0;
                        for (k, &value) in a.data[start..start + kc].iter().enumerate() {
                            panel[k * MR + i] = value;
                        }
                    } else {
                        for k in 0..kc {
                            panel[k * MR + i] = a.at(r, k0 + k);
                        }
                    }
                }
                at += MR * kc;
            }
        }
        PackedA {
            rows,
            depth,
            m_padded,
            data,
        }
    }

    fn panel(&self, k0: usize, kc: usize, p: usize) -> &[f32] {
        let start = self.m_padded * k0 + p * MR * kc;
        &self.data[start..start + MR * kc]
    }
}

/// What is applied to each element of the product as it is stored.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Epilogue<'a> {
    /// Added to every element of row `i` (a convolution's bias).
    pub(crate) row_bias: Option<&'a [f32]>,
    /// Added to every element of column `j` (`linear`'s bias).
    pub(crate) col_bias: Option<&'a [f32]>,
    /// `max(0, ·)` after the bias.
    pub(crate) relu: bool,
}

/// The output: `rows × cols` elements, row `i` at `data[i * stride..]`.
struct Out {
    data: *mut f32,
    stride: usize,
}

// SAFETY: `Out` is only shared between the threads of one `gemm_on` call,
// each of which writes a region of rows and columns no other thread
// touches (see `gemm_on`), while the `&mut [f32]` it came from is borrowed.
unsafe impl Sync for Out {}

/// `out = a · b` with `epilogue`, `out` row-major with rows `out_stride`
/// apart, on the best instruction set, split over the cores.
pub(crate) fn gemm(
    a: &PackedA,
    b: &dyn PackB,
    out: &mut [f32],
    out_stride: usize,
    epilogue: Epilogue<'_>,
) {
    let threads = threads_for(a.rows * a.depth * b.cols());
    gemm_on(Isa::detect(), threads, a, b, out, out_stride, epilogue);
}

/// [`gemm`] on instruction set `isa`, on at most `threads` threads.
///
/// # Panics
/// When the shapes disagree or `out` is too short (a caller's bug).
pub(crate) fn gemm_on(
    isa: Isa,
    threads: usize,
    a: &PackedA,
    b: &dyn PackB,
    out: &mut [f32],
    out_stride: usize,
    epilogue: Epilogue<'_>,
) {
    let (m, n) = (a.rows, b.cols());
    assert_eq!(a.depth, b.rows(), "the product's depths differ");
    if m == 0 || n == 0 {
        return;
    }
    assert!(out_stride >= n && out.len() >= (m - 1) * out_stride + n);
    assert!(epilogue.row_bias.is_none_or(|bias| bias.len() >= m));
    assert!(epilogue.col_bias.is_none_or(|bias| bias.len() >= n));
    // Split the longer side, in whole tiles, over the threads.
    let (row_parts, col_parts) = if n.div_ceil(NR) >= m.div_ceil(MR) {
        (1, threads.min(n.div_ceil(NR)))
    } else {
        (threads.min(m.div_ceil(MR)), 1)
    };
    let rows_each = m.div_ceil(MR).div_ceil(row_parts) * MR;
    let cols_each = n.div_ceil(NR).div_ceil(col_parts) * NR;
    let regions: Vec<(Range<usize>, Range<usize>)> = (0..m)
        .step_by(rows_each)
        .flat_map(|r| {
            (0..n)
                .step_by(cols_each)
                .map(move |c| (r..(r + rows_each).min(m), c..(c + cols_each).min(n)))
        })
        .collect();
    let target = Out {
        data: out.as_mut_ptr(),
        stride: out_stride,
    };
    let target = &target;
    parallel::for_each(regions, |(rows, cols)| {
        region(isa, a, b, target, rows, cols, epilogue);
    });
}

/// Computes the output rows `rows` (starting at a multiple of [`MR`]) and
/// columns `cols` into `out`.
fn region(
    isa: Isa,
    a: &PackedA,
    b: &dyn PackB,
    out: &Out,
    rows: Range<usize>,
    cols: Range<usize>,
    epilogue: Epilogue<'_>,
) {
    let depth = a.depth;
    let tile = [0.0f32; MR * NR];
    if depth == 0 {
        // Empty sums: only the epilogue.
        for r in rows.clone().step_by(MR) {
            for c in cols.clone().step_by(NR) {
                let (mr, nr) = (MR.min(rows.end - r), NR.min(cols.end - c));
                store(out, &tile, r, c, mr, nr, true, true, epilogue);
            }
        }
        return;
    }
    let mut packed = vec![0.0f32; NC.min(cols.len()).div_ceil(NR) * NR * KC.min(depth)];
    // The microkernel computes up to `PANELS × PANELS` tiles at a time: up
    // to `across_a` panels of `A` by `across_b` of `B`.
    let (across_a, across_b) = isa.tiles_at_once();
    let mut tiles = [[0.0f32; MR * NR]; PANELS * PANELS];
    for c0 in cols.clone().step_by(NC) {
        let nc = NC.min(cols.end - c0);
        let panels = nc.div_ceil(NR);
        for k0 in (0..depth).step_by(KC) {
            let kc = KC.min(depth - k0);
            let block = &mut packed[..panels * kc * NR];
            block.fill(0.0);
            b.pack(k0, kc, c0..c0 + nc, block);
            let (first, last) = (k0 == 0, k0 + kc == depth);
            let b_panels: Vec<&[f32]> = block.chunks_exact(kc * NR).collect();
            for r0 in rows.clone().step_by(MC) {
                let r_end = (r0 + MC).min(rows.end);
                for p in (0..panels).step_by(across_b) {
                    let b_here = &b_panels[p..(p + across_b).min(panels)];
                    for r in (r0..r_end).step_by(MR * across_a) {
                        let a_count = across_a.min((r_end - r).div_ceil(MR));
                        let mut a_here: [&[f32]; PANELS] = [&[]; PANELS];
                        for (i, panel) in a_here.iter_mut().take(a_count).enumerate() {
                            *panel = a.panel(k0, kc, r / MR + i);
                        }
                        microkernel(isa, kc, &a_here[..a_count], b_here, &mut tiles);
                        for i in 0..a_count {
                            let r = r + i * MR;
                            let mr = MR.min(r_end - r);
                            for j in 0..b_here.len() {
                                let c = c0 + (p + j) * NR;
                                let nr = NR.min(c0 + nc - c);
                                let tile = &tiles[i * PANELS + j];
                                store(out, tile, r, c, mr, nr, first, last, epilogue);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Stores the top-left `mr × nr` of `tile` at row `r`, column `c` of `out`:
/// replacing what is there on the first block of `k`, adding to it on the
/// others, and applying the epilogue on the last.
#[allow(clippy::too_many_arguments)]
fn store(
    out: &Out,
    tile: &[f32; MR * NR],
    r: usize,
    c: usize,
    mr: usize,
    nr: usize,
    first: bool,
    last: bool,
    epilogue: Epilogue<'_>,
) {
    for i in 0..mr {
        // SAFETY: row `r + i` < m and columns `c..c + nr` ≤ n lie inside the
        // output `gemm_on` checked (`(m - 1) * stride + n ≤ len`), and only
        // this thread's region holds them (`gemm_on` splits the output into
        // disjoint regions of rows and columns), so no other reference to
        // these elements exists while this one lives.
        let row =
            unsafe { std::slice::from_raw_parts_mut(out.data.add((r + i) * out.stride + c), nr) };
        let values = &tile[i * NR..i * NR + nr];
        let row_bias = epilogue.row_bias.filter(|_| last).map(|bias| bias[r + i]);
        let col_bias = epilogue
            .col_bias
            .filter(|_| last)
            .map(|bias| &bias[c..c + nr]);
        let relu = last && epilogue.relu;
        let epilogue = RowEpilogue {
            row_bias,
            col_bias,
            relu,
        };
        if let (Ok(row), Ok(values)) = (
            <&mut [f32; NR]>::try_from(&mut *row),
            <&[f32; NR]>::try_from(values),
        ) {
            // A whole tile row: inlined with a constant length, each loop
            // becomes a few vector operations.
            store_row(row, values, first, epilogue);
        } else {
            store_row(row, values, first, epilogue);
        }
    }
}

/// What the last block's store applies to one row.
#[derive(Clone, Copy)]
struct RowEpilogue<'a> {
    row_bias: Option<f32>,
    col_bias: Option<&'a [f32]>,
    relu: bool,
}

/// `values` stored into `row` (replacing it on the first block of `k`,
/// added to it after), then the row's bias, the columns' biases and ReLU,
/// each element in that order.
#[inline(always)]
fn store_row(row: &mut [f32], values: &[f32], first: bool, epilogue: RowEpilogue<'_>) {
    if first {
        row.copy_from_slice(values);
    } else {
        row.iter_mut().zip(values).for_each(|(o, v)| *o += v);
    }
    if let Some(bias) = epilogue.row_bias {
        row.iter_mut().for_each(|o| *o += bias);
    }
    if let Some(bias) = epilogue.col_bias {
        row.iter_mut().zip(bias).for_each(|(o, b)| *o += b);
    }
    if epilogue.relu {
        row.iter_mut().for_each(|o| *o = o.max(0.0));
    }
}

/// `tiles[i * PANELS + j] = a[i] · b[j]` over `kc` steps (each `a[i]` a
/// `kc × MR` panel and each `b[j]` a `kc × NR` panel, as packed), on `isa`:
/// as many panels as [`Isa::tiles_at_once`] allows.
fn microkernel(
    isa: Isa,
    kc: usize,
    a: &[&[f32]],
    b: &[&[f32]],
    tiles: &mut [[f32; MR * NR]; PANELS * PANELS],
) {
    assert!(a.len() <= PANELS && b.len() <= PANELS);
    assert!(a.iter().all(|a| a.len() >= kc * MR) && b.iter().all(|b| b.len() >= kc * NR));
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 {
        // SAFETY: `Isa::Avx512` is only chosen (`Isa::detect`, and the
        // tests through `Isa::available`) when the CPU has AVX-512F; the
        // panels' counts and lengths were checked above.
        unsafe {
            match (a.len(), b.len()) {
                (2, 2) => avx512::kernel::<2, 2>(kc, [a[0], a[1]], [b[0], b[1]], tiles),
                (2, 1) => avx512::kernel::<2, 1>(kc, [a[0], a[1]], [b[0]], tiles),
                (1, 2) => avx512::kernel::<1, 2>(kc, [a[0]], [b[0], b[1]], tiles),
                _ => avx512::kernel::<1, 1>(kc, [a[0]], [b[0]], tiles),
            }
        }
        return;
    }
    for (i, a) in a.iter().enumerate() {
        for (j, b) in b.iter().enumerate() {
            let tile = &mut tiles[i * PANELS + j];
            match isa {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `Isa::Avx2` and `Isa::Avx512` are only chosen
                // (`Isa::detect`, and the tests through `Isa::available`)
                // when the CPU has AVX2 and FMA; the panels' lengths were
                // checked above.
                Isa::Avx2 | Isa::Avx512 => unsafe { avx2::kernel(kc, a, b, tile) },
                #[cfg(target_arch = "aarch64")]
                // SAFETY: `Isa::Neon` is only chosen when the CPU has NEON;
                // the panels' lengths were checked above.
                Isa::Neon => unsafe { neon::kernel(kc, a, b, tile) },
                Isa::Portable => portable(kc, a, b, tile),
            }
        }
    }
}

/// The microkernel in plain Rust (a multiply, then an add).
fn portable(kc: usize, a: &[f32], b: &[f32], tile: &mut [f32; MR * NR]) {
    let mut sums = [[0.0f32; NR]; MR];
    for (ak, bk) in a.chunks_exact(MR).zip(b.chunks_exact(NR)).take(kc) {
        for (row, &ai) in sums.iter_mut().zip(ak) {
            for (s, &bj) in row.iter_mut().zip(bk) {
                *s += ai * bj;
            }
        }
    }
    for (out, row) in tile.chunks_exact_mut(NR).zip(&sums) {
        out.copy_from_slice(row);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{MR, NR};
    use std::arch::x86_64::{
        __m256, _mm256_broadcast_ss, _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_setzero_ps,
        _mm256_storeu_ps,
    };

    /// The 6 × 16 microkernel: twelve accumulators, two loads of `B` and
    /// six broadcasts of `A` per step.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA, `a` hold `kc * MR` elements and `b`
    /// `kc * NR`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn kernel(kc: usize, a: &[f32], b: &[f32], tile: &mut [f32; MR * NR]) {
        let mut sums: [[__m256; 2]; MR] = [[_mm256_setzero_ps(); 2]; MR];
        let (a, b) = (a.as_ptr(), b.as_ptr());
        for k in 0..kc {
            // SAFETY: step `k < kc` reads `b[k * NR..(k + 1) * NR]` and
            // `a[k * MR..(k + 1) * MR]`, inside the panels (the caller);
            // the loads are unaligned.
            unsafe {
                let b0 = _mm256_loadu_ps(b.add(k * NR));
                let b1 = _mm256_loadu_ps(b.add(k * NR + 8));
                for (i, row) in sums.iter_mut().enumerate() {
                    let ai = _mm256_broadcast_ss(&*a.add(k * MR + i));
                    row[0] = _mm256_fmadd_ps(ai, b0, row[0]);
                    row[1] = _mm256_fmadd_ps(ai, b1, row[1]);
                }
            }
        }
        for (i, row) in sums.iter().enumerate() {
            // SAFETY: `tile` holds MR × NR elements; row `i` is
            // `tile[i * NR..(i + 1) * NR]`, two stores of eight.
            unsafe {
                _mm256_storeu_ps(tile.as_mut_ptr().add(i * NR), row[0]);
                _mm256_storeu_ps(tile.as_mut_ptr().add(i * NR + 8), row[1]);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{MR, NR, PANELS};
    use std::arch::x86_64::{
        __m512, _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_set1_ps, _mm512_setzero_ps,
        _mm512_storeu_ps,
    };

    /// `A` panels `a` by `B` panels `b`: up to 12 × 32, twenty-four
    /// accumulators, two loads of `B` and twelve broadcasts of `A` per
    /// step. Each element is summed in the order the AVX2 kernel sums it.
    ///
    /// # Safety
    /// The CPU must have AVX-512F, each `a[i]` hold `kc * MR` elements and
    /// each `b[j]` `kc * NR`; `A` and `B` at most [`PANELS`] panels.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn kernel<const A: usize, const B: usize>(
        kc: usize,
        a: [&[f32]; A],
        b: [&[f32]; B],
        tiles: &mut [[f32; MR * NR]; PANELS * PANELS],
    ) {
        let mut sums: [[[__m512; B]; MR]; A] = [[[_mm512_setzero_ps(); B]; MR]; A];
        let a = a.map(<[f32]>::as_ptr);
        let b = b.map(<[f32]>::as_ptr);
        for k in 0..kc {
            // SAFETY: step `k < kc` reads `b[j][k * NR..(k + 1) * NR]` and
            // `a[i][k * MR..(k + 1) * MR]`, inside the panels (the caller);
            // the loads are unaligned.
            unsafe {
                let bk: [__m512; B] = std::array::from_fn(|j| _mm512_loadu_ps(b[j].add(k * NR)));
                for (panel, sums) in a.iter().zip(sums.iter_mut()) {
                    for (i, row) in sums.iter_mut().enumerate() {
                        let ai = _mm512_set1_ps(*panel.add(k * MR + i));
                        for (s, &bj) in row.iter_mut().zip(&bk) {
                            *s = _mm512_fmadd_ps(ai, bj, *s);
                        }
                    }
                }
            }
        }
        for (p, sums) in sums.iter().enumerate() {
            for (i, row) in sums.iter().enumerate() {
                for (j, &s) in row.iter().enumerate() {
                    // SAFETY: tile `p * PANELS + j` holds MR × NR elements;
                    // row `i` is its `[i * NR..(i + 1) * NR]`, one store.
                    unsafe { _mm512_storeu_ps(tiles[p * PANELS + j].as_mut_ptr().add(i * NR), s) };
                }
            }
        }
    }
}

#[cfg(target_arch = "aarch64")]
mod neon {
    use super::{MR, NR};
    use std::arch::aarch64::{float32x4_t, vdupq_n_f32, vfmaq_n_f32, vld1q_f32, vst1q_f32};

    /// The 6 × 16 microkernel: twenty-four accumulators, four loads of `B`
    /// per step.
    ///
    /// # Safety
    /// The CPU must have NEON, `a` hold `kc * MR` elements and `b`
    /// `kc * NR`.
    #[target_feature(enable = "neon")]
    pub(super) unsafe fn kernel(kc: usize, a: &[f32], b: &[f32], tile: &mut [f32; MR * NR]) {
        let mut sums: [[float32x4_t; 4]; MR] = [[vdupq_n_f32(0.0); 4]; MR];
        let (a, b) = (a.as_ptr(), b.as_ptr());
        for k in 0..kc {
            // SAFETY: step `k < kc` reads `b[k * NR..(k + 1) * NR]` and
            // `a[k * MR..(k + 1) * MR]`, inside the panels (the caller).
            unsafe {
                let bk = [
                    vld1q_f32(b.add(k * NR)),
                    vld1q_f32(b.add(k * NR + 4)),
                    vld1q_f32(b.add(k * NR + 8)),
                    vld1q_f32(b.add(k * NR + 12)),
                ];
                for (i, row) in sums.iter_mut().enumerate() {
                    let ai = *a.add(k * MR + i);
                    for (s, &bj) in row.iter_mut().zip(&bk) {
                        *s = vfmaq_n_f32(*s, bj, ai);
                    }
                }
            }
        }
        for (i, row) in sums.iter().enumerate() {
            for (j, &s) in row.iter().enumerate() {
                // SAFETY: `tile` holds MR × NR elements; this is
                // `tile[i * NR + 4 * j..][..4]`.
                unsafe { vst1q_f32(tile.as_mut_ptr().add(i * NR + 4 * j), s) };
            }
        }
    }
}

/// One product of [`gemm_many`]: `out = a · b` (`out` row-major, `b`'s
/// columns wide).
pub(crate) struct Product<'a> {
    pub(crate) a: Strided<'a>,
    pub(crate) b: Strided<'a>,
    pub(crate) out: &'a mut [f32],
}

/// Many independent products (a batched `matmul`): split over the cores
/// by product when there are enough of them, each product's own work split
/// otherwise. Either way each element is summed as [`gemm`] sums it.
pub(crate) fn gemm_many(products: Vec<Product<'_>>) {
    let isa = Isa::detect();
    let work: usize = products
        .iter()
        .map(|p| p.a.rows * p.a.cols * p.b.cols)
        .sum();
    if work < DIRECT_WORK {
        for p in products {
            direct(isa, p);
        }
        return;
    }
    let threads = threads_for(work);
    let count = products.len();
    let run = |p: Product<'_>, threads: usize| {
        let n = p.b.cols;
        gemm_on(
            isa,
            threads,
            &PackedA::new(p.a),
            &p.b,
            p.out,
            n,
            Epilogue::default(),
        );
    };
    if count >= threads {
        let per_thread = count.div_ceil(threads);
        let mut parts: Vec<Vec<Product<'_>>> = Vec::new();
        for (i, p) in products.into_iter().enumerate() {
            if i % per_thread == 0 {
                parts.push(Vec::new());
            }
            if let Some(part) = parts.last_mut() {
                part.push(p);
            }
        }
        parallel::for_each(parts, |part| part.into_iter().for_each(|p| run(p, 1)));
    } else {
        for p in products {
            run(p, threads);
        }
    }
}

/// Below this many multiply-adds in all, [`gemm_many`] sums each element
/// directly ([`direct`]): packing `A` and `B` into panels of whole tiles
/// costs more than such products (a decode step's attention of one token
/// multiplies 1 × 64 by 64 × 1 per head).
const DIRECT_WORK: usize = 1 << 14;

/// `p.out = p.a · p.b`, each element summed as [`gemm`] sums it: in order
/// of `k` within each block of `KC` from zero (by fused multiply-adds where
/// the microkernels use them, by a multiply and an add on the portable
/// path), the first block's sum stored, the later ones added.
fn direct(isa: Isa, p: Product<'_>) {
    #[cfg(target_arch = "x86_64")]
    if isa.has_avx2() {
        // SAFETY: `has_avx2` holds only on CPUs with FMA.
        unsafe { direct_fma(p) };
        return;
    }
    #[cfg(target_arch = "aarch64")]
    if isa == Isa::Neon {
        // aarch64's scalar `mul_add` is one fused instruction.
        direct_with(p, f32::mul_add);
        return;
    }
    let _ = isa;
    direct_with(p, |a, b, sum| sum + a * b);
}

/// [`direct`] with the CPU's fused multiply-add.
///
/// # Safety
/// The CPU must have FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
unsafe fn direct_fma(p: Product<'_>) {
    direct_with(p, f32::mul_add);
}

/// [`direct`] with `step(a, b, sum)` adding one product to a sum.
#[inline(always)]
fn direct_with(p: Product<'_>, step: impl Fn(f32, f32, f32) -> f32) {
    let Product { a, b, out } = p;
    let (depth, n) = (a.cols, b.cols);
    for (i, row) in out.chunks_exact_mut(n.max(1)).take(a.rows).enumerate() {
        for (j, element) in row.iter_mut().enumerate() {
            let block = |k0: usize| {
                (k0..(k0 + KC).min(depth)).fold(0.0, |sum, k| step(a.at(i, k), b.at(k, j), sum))
            };
            // The first block's sum (zero for an empty one), then the rest
            // added in order.
            let mut sum = block(0);
            for k0 in (KC..depth).step_by(KC) {
                sum += block(k0);
            }
            *element = sum;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::Random;
    use super::*;

    /// `a · b` (row-major) in f64, with the bound on an f32 result's error.
    fn naive(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<(f64, f64)> {
        let mut out = Vec::with_capacity(m * n);
        for i in 0..m {
            for j in 0..n {
                let (mut sum, mut magnitude) = (0.0f64, 0.0f64);
                for p in 0..k {
                    let v = f64::from(a[i * k + p]) * f64::from(b[p * n + j]);
                    sum += v;
                    magnitude += v.abs();
                }
                let bound = (magnitude + 1.0) * f64::from(f32::EPSILON) * (k as f64 + 4.0);
                out.push((sum, bound));
            }
        }
        out
    }

    /// Shapes from the tiny and odd to past every block size.
    const SHAPES: [(usize, usize, usize); 12] = [
        (1, 1, 1),
        (1, 0, 5),
        (3, 0, 1),
        (7, 13, 17),
        (6, 16, 16),
        (5, 1, 31),
        (13, 257, 3),
        (31, 300, 47),
        (97, 29, 1030),
        (2, 513, 2),
        (101, 263, 67),
        (64, 64, 1041),
    ];

    #[test]
    fn every_instruction_set_matches_the_naive_product() {
        let mut random = Random(0x9e37_79b9_7f4a_7c15);
        for isa in Isa::available() {
            for threads in [1, 3] {
                for (m, k, n) in SHAPES {
                    let a = random.vec(m * k);
                    let b = random.vec(k * n);
                    let row_bias = random.vec(m);
                    let col_bias = random.vec(n);
                    let relu = (m + n) % 2 == 0;
                    let stride = n + 3;
                    let mut out = vec![f32::NAN; m * stride];
                    let packed = PackedA::new(Strided::row_major(&a, m, k).unwrap());
                    let epilogue = Epilogue {
                        row_bias: Some(&row_bias),
                        col_bias: Some(&col_bias),
                        relu,
                    };
                    let b_matrix = Strided::row_major(&b, k, n).unwrap();
                    gemm_on(isa, threads, &packed, &b_matrix, &mut out, stride, epilogue);
                    for (index, (sum, bound)) in naive(&a, &b, m, k, n).into_iter().enumerate() {
                        let (i, j) = (index / n, index % n);
                        let mut expected = sum + f64::from(row_bias[i]) + f64::from(col_bias[j]);
                        if relu {
                            expected = expected.max(0.0);
                        }
                        let got = f64::from(out[i * stride + j]);
                        assert!(
                            (got - expected).abs() <= bound,
                            "{isa:?} {threads} threads {m}×{k}×{n} [{i}][{j}]: {got} vs {expected}"
                        );
                    }
                    // The padding between rows is never written.
                    for i in 0..m {
                        assert!(out[i * stride + n..(i + 1) * stride]
                            .iter()
                            .all(|v| v.is_nan()));
                    }
                }
            }
        }
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let mut random = Random(7);
        let (m, k, n) = (37, 531, 211);
        let (a, b) = (random.vec(m * k), random.vec(k * n));
        let packed = PackedA::new(Strided::row_major(&a, m, k).unwrap());
        let b = Strided::row_major(&b, k, n).unwrap();
        for isa in Isa::available() {
            let run = |threads| {
                let mut out = vec![0.0; m * n];
                gemm_on(isa, threads, &packed, &b, &mut out, n, Epilogue::default());
                out
            };
            let one = run(1);
            for threads in [2, 3, 5] {
                assert_eq!(run(threads), one, "{isa:?}, {threads} threads");
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_512_bit_kernel_sums_as_the_256_bit_one_does() {
        // Both take one fused multiply-add per step of `k`, in order, so the
        // wider tiles change the speed only; every tile shape and edge here.
        if !Isa::available().contains(&Isa::Avx512) {
            eprintln!("no AVX-512 on this CPU: the 512-bit kernel is not run");
            return;
        }
        let mut random = Random(3);
        for (m, k, n) in [
            (12, 300, 32),
            (13, 7, 33),
            (6, 1, 16),
            (25, 513, 70),
            (5, 64, 100),
        ] {
            let (a, b) = (random.vec(m * k), random.vec(k * n));
            let packed = PackedA::new(Strided::row_major(&a, m, k).unwrap());
            let b = Strided::row_major(&b, k, n).unwrap();
            let run = |isa| {
                let mut out = vec![0.0; m * n];
                gemm_on(isa, 2, &packed, &b, &mut out, n, Epilogue::default());
                out
            };
            let (wide, narrow) = (run(Isa::Avx512), run(Isa::Avx2));
            assert!(
                wide.iter()
                    .zip(&narrow)
                    .all(|(w, n)| w.to_bits() == n.to_bits()),
                "{m}×{k}×{n}"
            );
        }
    }

    #[test]
    fn transposed_operands_and_batches_match_the_naive_product() {
        let mut random = Random(11);
        let (m, k, n) = (19, 70, 23);
        // Column-major a and b: their transposes as row-major.
        let (at, bt) = (random.vec(k * m), random.vec(n * k));
        let a: Vec<f32> = (0..m * k).map(|x| at[(x % k) * m + x / k]).collect();
        let b: Vec<f32> = (0..k * n).map(|x| bt[(x % n) * k + x / n]).collect();
        let expected = naive(&a, &b, m, k, n);
        let mut outs = vec![vec![0.0; m * n]; 5];
        let products = outs
            .iter_mut()
            .map(|out| Product {
                a: Strided::row_major(&at, k, m).unwrap().t(),
                b: Strided::row_major(&bt, n, k).unwrap().t(),
                out,
            })
            .collect();
        gemm_many(products);
        for out in &outs {
            for (got, (sum, bound)) in out.iter().zip(&expected) {
                assert!((f64::from(*got) - sum).abs() <= *bound, "{got} vs {sum}");
            }
        }
    }

    #[test]
    fn small_products_summed_directly_give_the_packed_products_bits() {
        // Every instruction set, with transposed operands, depths past one
        // block of KC, a single step, an empty sum and signed zeros.
        let mut random = Random(17);
        for (m, k, n) in [(1, 64, 1), (1, 1, 64), (3, 300, 5), (2, 0, 3), (4, 7, 4)] {
            let mut a = random.vec(m * k);
            let bt = random.vec(n * k);
            if let Some(first) = a.first_mut() {
                *first = -0.0;
            }
            let a = Strided::row_major(&a, m, k).unwrap();
            let b = Strided::new(&bt, k, n, 1, k.max(1)).unwrap();
            for isa in Isa::available() {
                let mut packed = vec![f32::NAN; m * n];
                gemm_on(
                    isa,
                    1,
                    &PackedA::new(a),
                    &b,
                    &mut packed,
                    n,
                    Epilogue::default(),
                );
                let mut summed = vec![f32::NAN; m * n];
                direct(
                    isa,
                    Product {
                        a,
                        b,
                        out: &mut summed,
                    },
                );
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&summed), bits(&packed), "{isa:?}, {m}×{k}×{n}");
            }
        }
    }

    #[test]
    fn strided_views_outside_their_data_are_refused() {
        let data = [0.0f32; 6];
        assert!(Strided::new(&data, 2, 3, 3, 1).is_some());
        assert!(Strided::new(&data, 2, 4, 3, 1).is_none());
        assert!(Strided::new(&data, 0, 4, 3, 1).is_some());
        assert!(Strided::new(&data, 2, 2, usize::MAX, 1).is_none());
    }
}
