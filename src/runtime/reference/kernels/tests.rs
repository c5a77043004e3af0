//! Every kernel against a naive implementation, on every instruction set
//! this CPU runs, on random shapes including tiny and odd ones.

use super::dot::{reduce32, LANES};
use super::*;

/// A small deterministic generator (xorshift), uniform in [-1, 1); the
/// GEMM's tests use it too.
pub(super) struct Random(pub(super) u64);

impl Random {
    pub(super) fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    pub(super) fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.next()).collect()
    }
}

/// `x · wᵀ` in f64, and the bound on an f32 result's error: the sum of
/// `|w x|` times the steps of rounding (a sum of `inputs` terms).
fn naive(w: &[f32], x: &[f32], rows: usize, outputs: usize, inputs: usize) -> Vec<(f64, f64)> {
    let mut out = Vec::with_capacity(rows * outputs);
    for r in 0..rows {
        for n in 0..outputs {
            let (mut sum, mut magnitude) = (0.0f64, 0.0f64);
            for k in 0..inputs {
                let p = f64::from(w[n * inputs + k]) * f64::from(x[r * inputs + k]);
                sum += p;
                magnitude += p.abs();
            }
            let bound = magnitude * f64::from(f32::EPSILON) * (inputs as f64 + 2.0);
            out.push((sum, bound));
        }
    }
    out
}

fn f16_weight(random: &mut Random, outputs: usize, inputs: usize) -> (StoredWeight, Vec<f32>) {
    let halves: Vec<f16> = random
        .vec(outputs * inputs)
        .into_iter()
        .map(f16::from_f32)
        .collect();
    let widened = halves.iter().map(|h| h.to_f32()).collect();
    (
        StoredWeight::f16(&[outputs, inputs], halves).unwrap(),
        widened,
    )
}

const SHAPES: &[(usize, usize, usize)] = &[
    // (rows, outputs, inputs)
    (1, 1, 1),
    (1, 3, 7),
    (2, 5, 31),
    (3, 4, 32),
    (1, 9, 33),
    (7, 17, 65),
    (5, 2, 200),
    (8, 3, 5),
    (9, 13, 64),
    (13, 37, 77),
    (20, 600, 33),
    // Whole panels of sixteen rows, depths of a multiple of 8: the
    // transposing pack; the last panel partial.
    (10, 48, 264),
    (12, 35, 520),
    (1, 0, 4),
    (3, 4, 0),
    // Over PARALLEL_BYTES: split over the cores.
    (1, 700, 1000),
    (3, 513, 1031),
    (16, 1100, 500),
];

#[test]
fn linear_matches_a_naive_product_on_every_instruction_set() {
    let mut random = Random(0x2545_f491_4f6c_dd1d);
    for isa in Isa::available() {
        for &(rows, outputs, inputs) in SHAPES {
            let (weight, widened) = f16_weight(&mut random, outputs, inputs);
            let x = random.vec(rows * inputs);
            // A bias on every other shape, matrix-vector and matrix paths.
            let bias = (outputs % 2 == 1).then(|| random.vec(outputs));
            let mut out = vec![f32::NAN; rows * outputs];
            linear_on(isa, &weight, &x, rows, bias.as_deref(), &mut out);
            for (i, (&got, (want, bound))) in out
                .iter()
                .zip(naive(&widened, &x, rows, outputs, inputs))
                .enumerate()
            {
                let want = want + bias.as_ref().map_or(0.0, |b| f64::from(b[i % outputs]));
                assert!(
                    (f64::from(got) - want).abs() <= bound + 1e-6,
                    "{isa:?}, {rows}×{inputs} by {outputs}: element {i} is {got}, not {want} (±{bound})"
                );
            }
        }
    }
}

#[test]
fn simd_dot_products_sum_in_the_documented_order() {
    // The SIMD paths: lane k % 32, one rounding per multiply-add, then
    // `reduce32`. Emulated here with `mul_add`, they must agree bit for bit.
    let mut random = Random(77);
    for isa in Isa::available() {
        if isa == Isa::Portable {
            continue;
        }
        for n in [1, 8, 31, 32, 33, 95, 100, 1000] {
            let w: Vec<f16> = random.vec(n).into_iter().map(f16::from_f32).collect();
            let (x0, x1) = (random.vec(n), random.vec(n));
            let emulate = |x: &[f32]| {
                let mut lanes = [0.0f32; LANES];
                for (k, (&w, &x)) in w.iter().zip(x).enumerate() {
                    lanes[k % LANES] = w.to_f32().mul_add(x, lanes[k % LANES]);
                }
                reduce32(&lanes)
            };
            let [a, b] = dot::dots(isa, &w, [&x0, &x1]);
            let [c] = dot::dots(isa, &w, [&x1]);
            assert_eq!(a.to_bits(), emulate(&x0).to_bits(), "{isa:?}, n = {n}");
            assert_eq!(b.to_bits(), emulate(&x1).to_bits(), "{isa:?}, n = {n}");
            assert_eq!(c, b, "{isa:?}: one row or two give the same sums");
        }
    }
}

#[test]
fn a_stored_weight_widens_to_its_values() {
    let halves = [1.5, -2.0, 0.25, 65504.0, 1e-7, 3.0].map(f16::from_f32);
    let weight = StoredWeight::f16(&[2, 3], halves.to_vec()).unwrap();
    assert_eq!(weight.shape(), [2, 3]);
    assert_eq!(weight.stored_bytes(), 12);
    let array = weight.to_array();
    assert_eq!(array.shape(), [2, 3]);
    assert_eq!(array[[1, 0]], 65504.0);
    assert_eq!(array[[1, 1]], f16::from_f32(1e-7).to_f32());
    assert!(StoredWeight::f16(&[2, 2], halves.to_vec()).is_err());
    assert!(StoredWeight::f16(&[6], halves.to_vec()).is_err());
}

/// A blockwise weight and the values its decompression gives, computed
/// here as `constexpr_blockwise_shift_scale` defines them.
fn blockwise_weight(
    random: &mut Random,
    outputs: usize,
    inputs: usize,
    block: usize,
    range: (i32, i32),
    offset: bool,
    fp16: bool,
) -> (StoredWeight, Vec<f32>) {
    let span = (range.1 - range.0 + 1) as f32;
    let data: Vec<i32> = (0..outputs * inputs)
        .map(|_| range.0 + (((random.next() + 1.0) / 2.0 * span) as i32).min(range.1 - range.0))
        .collect();
    let blocks = inputs / block;
    let scale: Vec<f32> = random
        .vec(outputs * blocks)
        .into_iter()
        .map(|s| f16::from_f32(s * 0.1).to_f32())
        .collect();
    let offsets: Option<Vec<f32>> =
        offset.then(|| (0..outputs * blocks).map(|i| (i % 3) as f32).collect());
    let mut dense = vec![0.0f32; outputs * inputs];
    for n in 0..outputs {
        for k in 0..inputs {
            let p = n * blocks + k / block;
            let o = offsets.as_ref().map_or(0.0, |o| o[p]);
            let v = (data[n * inputs + k] as f32 - o) * scale[p];
            dense[n * inputs + k] = if fp16 { f16::from_f32(v).to_f32() } else { v };
        }
    }
    let weight = StoredWeight::blockwise(
        &[outputs, inputs],
        &data,
        &[outputs, blocks],
        scale,
        offsets,
        fp16,
    )
    .unwrap();
    (weight, dense)
}

#[test]
fn blockwise_weights_decompress_and_multiply_as_their_dense_values() {
    let mut random = Random(31);
    let cases = [
        // (rows, outputs, inputs, block, range, offset, fp16, bits)
        (1, 3, 64, 32, (-8, 7), false, true, Bits::I4),
        (2, 5, 96, 32, (0, 15), true, true, Bits::U4),
        (3, 4, 15, 5, (-8, 7), true, false, Bits::I4),
        (1, 7, 40, 8, (-128, 127), false, true, Bits::I8),
        (9, 6, 48, 16, (0, 255), true, false, Bits::U8),
        (1, 600, 1024, 32, (-8, 7), false, true, Bits::I4),
        (12, 300, 256, 32, (-8, 7), true, true, Bits::I4),
        // Matrix products over more than one block of depth (256): blocks
        // met in pieces, one wider than the depth block (per channel) and
        // one of an odd size, whose pieces start on a nibble.
        (9, 20, 520, 520, (-128, 127), true, true, Bits::I8),
        (8, 33, 560, 16, (-8, 7), false, true, Bits::I4),
        (8, 5, 265, 5, (-8, 7), true, false, Bits::I4),
        // The fused dot product's paths: fp16 and f32 tables over blocks
        // of several chunks of 32, and eight codes at a time for blocks
        // under 32 and for bytes.
        (1, 3, 128, 64, (0, 15), true, true, Bits::U4),
        (1, 5, 128, 64, (-8, 7), true, false, Bits::I4),
        (1, 4, 96, 32, (0, 15), false, false, Bits::U4),
        // Blocks of exactly 32 (their own AVX-512 loop), for each of fp16
        // and f32 with and without offsets, over a number of blocks that
        // is not a multiple of four.
        (1, 3, 224, 32, (-8, 7), false, true, Bits::I4),
        (1, 3, 224, 32, (0, 15), true, true, Bits::U4),
        (1, 3, 224, 32, (-8, 7), false, false, Bits::I4),
        (1, 3, 224, 32, (0, 15), true, false, Bits::U4),
        (1, 6, 96, 16, (-8, 7), true, true, Bits::I4),
        (1, 5, 64, 8, (-128, 127), true, true, Bits::I8),
        (1, 5, 64, 32, (0, 255), false, false, Bits::U8),
    ];
    for isa in Isa::available() {
        for &(rows, outputs, inputs, block, range, offset, fp16, bits) in &cases {
            let (weight, dense) =
                blockwise_weight(&mut random, outputs, inputs, block, range, offset, fp16);
            let Storage::Blockwise(q) = &weight.storage else {
                panic!("not blockwise");
            };
            assert_eq!(q.bits, bits);
            assert_eq!(weight.to_array().as_slice().unwrap(), dense.as_slice());
            // Every path dequantizes a row, and any segment of it (as the
            // matrix product reads them), to the same values.
            let mut row = vec![f32::NAN; inputs];
            for n in 0..outputs {
                q.segment_on(isa, n, inputs, 0, &mut row);
                assert_eq!(row, dense[n * inputs..(n + 1) * inputs], "{isa:?}, row {n}");
                for (k0, len) in [(8, 24), (3, 17), (inputs / 2, inputs / 2), (inputs - 1, 1)] {
                    if k0 + len <= inputs {
                        let mut segment = vec![f32::NAN; len];
                        q.segment_on(isa, n, inputs, k0, &mut segment);
                        let want = &dense[n * inputs + k0..n * inputs + k0 + len];
                        assert_eq!(segment, want, "{isa:?}, row {n} from {k0}");
                    }
                }
            }
            let x = random.vec(rows * inputs);
            // A fused dot product gives the bits of dequantizing the row
            // and taking the dot product of it.
            let source = Dequantized { q, inputs, isa };
            // The fused kernels' conditions (x86-64 only): dequantizing in
            // registers for blocks of 8k, two rows at a time for four-bit
            // blocks of 32, and runs of rows by one call for those on
            // AVX-512.
            let fused = x86_kernels(isa).0 && inputs % 32 == 0;
            let taken = (
                fused && block % 8 == 0,
                fused && block == 32 && bits.width() == 4 && outputs > 1,
                x86_kernels(isa).1 && block == 32 && bits.width() == 4,
            );
            let what = format!("{isa:?}, {bits:?} {rows}×{inputs} by {outputs}, block {block}");
            assert_fused_as_dense(isa, &source, &dense, &x[..inputs], taken, &what);
            assert_linear_as_naive(isa, &weight, &dense, &x, rows, &what);
        }
    }
    // Integers wider than 8 bits, or parameters not one per row and block,
    // are not kept so.
    assert!(StoredWeight::blockwise(&[1, 2], &[300, 0], &[1, 1], vec![1.0], None, false).is_none());
    assert!(StoredWeight::blockwise(&[2, 2], &[0; 4], &[1, 1], vec![1.0], None, false).is_none());
}

#[test]
fn palettized_weights_look_up_and_multiply_as_their_dense_values() {
    let mut random = Random(47);
    let cases = [
        // (rows, outputs, inputs, row groups, column groups, entries)
        // One palette for the tensor; per grouped channel (coremltools'
        // `per_grouped_channel`); by columns too.
        (1, 6, 64, 1, 1, 16),
        (1, 8, 128, 4, 1, 16),
        (1, 6, 128, 2, 4, 16),
        // Fewer entries (2-bit indices), and more (6- and 8-bit), whose
        // codes are a byte each.
        (2, 5, 96, 5, 1, 4),
        (1, 3, 64, 1, 2, 64),
        (1, 4, 40, 2, 5, 256),
        // Column groups narrower than 32 and odd widths: looked up row by
        // row, not fused.
        (1, 3, 48, 1, 3, 16),
        (3, 3, 7, 3, 1, 16),
        // Matrix products (8 rows or more), over more than one depth block.
        (9, 20, 520, 4, 2, 16),
        (12, 33, 300, 1, 1, 16),
    ];
    for isa in Isa::available() {
        for &(rows, outputs, inputs, row_groups, column_groups, entries) in &cases {
            let indices: Vec<i32> = (0..outputs * inputs)
                .map(|_| {
                    (((random.next() + 1.0) / 2.0 * entries as f32) as i32).min(entries as i32 - 1)
                })
                .collect();
            let tables = random.vec(row_groups * column_groups * entries);
            let weight = StoredWeight::palettized(
                &[outputs, inputs],
                &indices,
                &[row_groups, column_groups, entries],
                &tables,
            )
            .unwrap();
            let dense: Vec<f32> = (0..outputs * inputs)
                .map(|i| {
                    let (n, k) = (i / inputs, i % inputs);
                    let table =
                        n / (outputs / row_groups) * column_groups + k / (inputs / column_groups);
                    tables[table * entries + indices[i] as usize]
                })
                .collect();
            assert_eq!(weight.to_array().as_slice().unwrap(), dense.as_slice());
            let Storage::Palettized(p) = &weight.storage else {
                panic!("not palettized");
            };
            assert_eq!(p.bits, if entries <= 16 { Bits::U4 } else { Bits::U8 });
            // Four-bit codes take half a byte each.
            if entries <= 16 {
                assert_eq!(p.codes.len(), outputs * inputs.div_ceil(2));
            }
            for n in 0..outputs {
                for (k0, len) in [(0, inputs), (3, inputs / 2), (inputs - 1, 1)] {
                    let mut segment = vec![f32::NAN; len];
                    p.segment(n, inputs, k0, &mut segment);
                    let want = &dense[n * inputs + k0..n * inputs + k0 + len];
                    assert_eq!(segment, want, "row {n} from {k0}");
                }
            }
            let x = random.vec(rows * inputs);
            let source = LookedUp { p, inputs, isa };
            // The fused kernels' conditions (x86-64 only): four-bit codes
            // in column groups of 32k, two rows at a time and runs of rows
            // by one call on AVX-512.
            let fused = x86_kernels(isa).0 && entries <= 16 && (inputs / column_groups) % 32 == 0;
            let avx512 = fused && x86_kernels(isa).1;
            let taken = (fused, avx512 && outputs > 1, avx512);
            let what = format!("{isa:?}, {rows}×{inputs} by {outputs}, {entries} entries");
            assert_fused_as_dense(isa, &source, &dense, &x[..inputs], taken, &what);
            assert_linear_as_naive(isa, &weight, &dense, &x, rows, &what);
        }
    }
    // Groups that do not divide the weight, an index outside its table, or
    // more than 256 entries are not kept so.
    assert!(StoredWeight::palettized(&[3, 2], &[0; 6], &[2, 1, 2], &[0.0; 4]).is_none());
    assert!(StoredWeight::palettized(&[1, 2], &[0, 2], &[1, 1, 2], &[0.0; 2]).is_none());
    assert!(StoredWeight::palettized(&[1, 2], &[0, -1], &[1, 1, 2], &[0.0; 2]).is_none());
    assert!(StoredWeight::palettized(&[1, 1], &[0], &[1, 1, 257], &[0.0; 257]).is_none());
}

/// Whether `isa` runs the AVX2 kernels, and whether it is AVX-512 (both
/// false off x86-64, where no kernel fuses).
fn x86_kernels(isa: Isa) -> (bool, bool) {
    #[cfg(target_arch = "x86_64")]
    return (isa.has_avx2(), isa == Isa::Avx512);
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = isa;
        (false, false)
    }
}

/// Asserts that `source`'s fused dot products with `x` (one row), a row
/// and two rows at a time, and in runs from every row (of one, two, three
/// and all the rows left), give the bits of the dense dot product of the
/// rows of `dense` (as the kernels would take it on `isa`), and that the
/// fused kernels are taken, for one row, for two and for runs, as `taken`
/// says.
fn assert_fused_as_dense<S: RowSource>(
    isa: Isa,
    source: &S,
    dense: &[f32],
    x: &[f32],
    taken: (bool, bool, bool),
    what: &str,
) {
    let inputs = x.len();
    let outputs = dense.len() / inputs.max(1);
    let input = FusedInput::new(isa, x);
    let unfused = |n: usize| {
        let [dot] = dot::dots(isa, &dense[n * inputs..(n + 1) * inputs], [x]);
        dot.to_bits()
    };
    if taken.0 {
        assert!(source.fused_dot(0, &input).is_some(), "{what}: not fused");
    }
    if taken.1 {
        assert!(
            source.fused_dot_pair(0, &input).is_some(),
            "{what}: not paired"
        );
    }
    for n in 0..outputs {
        if let Some(fused) = source.fused_dot(n, &input) {
            assert_eq!(fused.to_bits(), unfused(n), "{what}, row {n}");
        }
        // Two rows at once: each the bits of one.
        if n + 1 < outputs {
            if let Some(pair) = source.fused_dot_pair(n, &input) {
                let want = [unfused(n), unfused(n + 1)];
                assert_eq!(
                    pair.map(f32::to_bits),
                    want,
                    "{what}, rows {n} and {}",
                    n + 1
                );
            }
        }
    }
    // Runs of rows by one call: each the bits of one.
    let mut ran = false;
    for first in 0..outputs {
        for len in [1, 2, 3, outputs - first] {
            if first + len > outputs {
                continue;
            }
            let mut out = vec![f32::NAN; len];
            if source.fused_dots(first, &input, &mut out) {
                ran = true;
                let want: Vec<u32> = (first..first + len).map(unfused).collect();
                let got: Vec<u32> = out.iter().map(|v| v.to_bits()).collect();
                assert_eq!(got, want, "{what}, rows {first}..{}", first + len);
            }
        }
    }
    assert_eq!(ran, taken.2 && outputs > 0, "{what}: runs taken");
}

/// Asserts that `linear` of `weight` (whose values are `dense`) over the
/// `rows` rows of `x` is within the rounding bound of the naive product.
fn assert_linear_as_naive(
    isa: Isa,
    weight: &StoredWeight,
    dense: &[f32],
    x: &[f32],
    rows: usize,
    what: &str,
) {
    let (outputs, inputs) = (weight.outputs, weight.inputs);
    let mut out = vec![f32::NAN; rows * outputs];
    linear_on(isa, weight, x, rows, None, &mut out);
    for (i, (&got, (want, bound))) in out
        .iter()
        .zip(naive(dense, x, rows, outputs, inputs))
        .enumerate()
    {
        assert!(
            (f64::from(got) - want).abs() <= bound,
            "{what}: element {i} is {got}, not {want}"
        );
    }
}

#[test]
fn guided_parts_cover_the_rows_in_shrinking_even_parts() {
    for (outputs, threads) in [(1024, 2), (2816, 2), (1, 2), (63, 3), (6000, 8), (129, 2)] {
        let parts = guided_parts(outputs, threads);
        assert_eq!(parts.first().map(|p| p.start), Some(0), "{outputs} rows");
        assert_eq!(parts.last().map(|p| p.end), Some(outputs), "{outputs} rows");
        for pair in parts.windows(2) {
            let (part, next) = (&pair[0], &pair[1]);
            assert_eq!(part.end, next.start, "{outputs} rows: {parts:?}");
            assert!(part.len() >= next.len(), "{outputs} rows: {parts:?}");
            assert!(part.len() >= SMALLEST_PART, "{outputs} rows: {parts:?}");
            assert!(part.len().is_multiple_of(2), "{outputs} rows: {parts:?}");
        }
    }
    // One thread takes every row at once.
    let one = guided_parts(1000, 1);
    assert!(one.len() == 1 && one[0] == (0..1000), "{one:?}");
    // A quarter of the rows, then less: the last part is the smallest.
    let parts = guided_parts(1024, 4);
    assert_eq!(parts[0], 0..256);
    assert!(parts.last().is_some_and(|p| p.len() <= SMALLEST_PART));
}
