//! Dequantizing a row of a blockwise-quantized weight with AVX2: eight
//! codes widened to f32 lanes at a time, shifted, scaled and (for an fp16
//! weight) rounded to fp16 in registers, or, for four-bit codes, looked up
//! in the block's sixteen values computed so. The values are those of the
//! portable `Blockwise::row`: `(q - offset) * scale` in f32, then F16C's
//! round to nearest even, as `half` rounds.

use std::arch::x86_64::{
    __m256, __m256i, _mm256_and_si256, _mm256_blendv_ps, _mm256_broadcastsi128_si256,
    _mm256_castsi256_ps, _mm256_castsi256_si128, _mm256_cvtepi32_ps, _mm256_cvtepi8_epi32,
    _mm256_cvtepu8_epi32, _mm256_cvtph_ps, _mm256_cvtps_ph, _mm256_extracti128_si256,
    _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_mul_ps, _mm256_permutevar8x32_ps, _mm256_set1_epi32,
    _mm256_set1_ps, _mm256_set_m128i, _mm256_setr_epi32, _mm256_setr_ps, _mm256_setzero_ps,
    _mm256_shuffle_epi8, _mm256_sllv_epi32, _mm256_srlv_epi32, _mm256_storeu_ps, _mm256_sub_epi32,
    _mm256_sub_ps, _mm256_unpackhi_epi8, _mm256_unpacklo_epi8, _mm256_xor_si256, _mm_and_si128,
    _mm_loadl_epi64, _mm_loadu_si128, _mm_prefetch, _mm_set1_epi8, _mm_setr_epi8, _mm_shuffle_epi8,
    _mm_srli_epi16, _mm_unpackhi_epi8, _mm_unpacklo_epi64, _mm_unpacklo_epi8,
    _MM_FROUND_TO_NEAREST_INT, _MM_HINT_T1,
};
const PREFETCH_BYTES: usize = 8192;

use super::dot::{reduce32, LANES};
use super::Bits;

/// Dequantizes one row: `codes` (its bytes), one `scale` and `offset` per
/// block of `block` elements, into `out`.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C. `block` is a multiple of 8, `out`
/// a whole number of blocks, with a scale and an offset for each, and
/// `codes` holds `out.len()` codes of `bits`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn avx2(
    bits: Bits,
    block: usize,
    codes: &[u8],
    scale: &[f32],
    offset: &[f32],
    fp16: bool,
    out: &mut [f32],
) {
    debug_assert!(block.is_multiple_of(8) && out.len().is_multiple_of(block));
    debug_assert!(scale.len() * block == out.len() && offset.len() == scale.len());
    debug_assert!(codes.len() * 8 >= out.len() * bits.width());
    for (b, (&s, &o)) in scale.iter().zip(offset).enumerate() {
        let (s, o) = (_mm256_set1_ps(s), _mm256_set1_ps(o));
        for g in (b * block..(b + 1) * block).step_by(8) {
            let v = eight(bits, codes, g, s, o, fp16);
            let target = &mut out[g..g + 8];
            // SAFETY: `target` holds eight f32s.
            unsafe { _mm256_storeu_ps(target.as_mut_ptr(), v) };
        }
    }
}

/// The dot product of one dequantized row with `x`, without storing the
/// row: the values of [`avx2`] multiplied and added in the lanes and order
/// of the f32 dot product (`dot::dots`), so the result is the same bits.
///
/// Four-bit codes in blocks of a multiple of 32 look their values up in a
/// table per block ([`dot_by_table`]: an [`Fp16Table`] for an fp16 weight,
/// an [`F32Table`] for an f32 one); the rest dequantize eight codes at a
/// time. Looking up costs about half as much as dequantizing: a block's
/// sixteen values are converted once, not each of its 32 codes.
///
/// # Safety
/// As [`avx2`], with `x` as long as the row, a multiple of 32.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_avx2(
    bits: Bits,
    block: usize,
    codes: &[u8],
    scale: &[f32],
    offset: &[f32],
    fp16: bool,
    x: &[f32],
) -> f32 {
    debug_assert!(block.is_multiple_of(8) && x.len().is_multiple_of(LANES));
    debug_assert!(scale.len() * block == x.len() && offset.len() == scale.len());
    debug_assert!(codes.len() * 8 >= x.len() * bits.width());
    if matches!(bits, Bits::I4 | Bits::U4) && block.is_multiple_of(LANES) {
        // SAFETY: the caller's guarantees, and the block is a multiple of 32.
        return unsafe {
            if fp16 {
                dot_by_table::<Fp16Table>(bits, block, codes, scale, offset, x)
            } else {
                dot_by_table::<F32Table>(bits, block, codes, scale, offset, x)
            }
        };
    }
    // Accumulator `j` takes elements 32c + 8j..32c + 8j + 8 of every chunk
    // `c` of 32: lane `k % 32` for element `k`, as `dot::dots` sums.
    let mut acc = [_mm256_setzero_ps(); 4];
    for (c, xs) in x.chunks_exact(LANES).enumerate() {
        for (j, a) in acc.iter_mut().enumerate() {
            let g = c * LANES + 8 * j;
            let b = g / block;
            let v = eight(
                bits,
                codes,
                g,
                _mm256_set1_ps(scale[b]),
                _mm256_set1_ps(offset[b]),
                fp16,
            );
            // SAFETY: `xs` holds 32 f32s, so 8j..8j + 8 is inside it.
            let xv = unsafe { _mm256_loadu_ps(xs.as_ptr().add(8 * j)) };
            *a = _mm256_fmadd_ps(v, xv, *a);
        }
    }
    sum_lanes(acc)
}

/// [`dot_avx2`] for four-bit codes in blocks of a multiple of 32. A block
/// has only sixteen distinct values, so they are computed once per block
/// (with the same operations as [`eight`], so to the same bits) into a
/// [`Table`], and each code looks its value up.
///
/// # Safety
/// As [`dot_avx2`], with 4-bit `bits` and `block` a multiple of 32.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_by_table<T: Table>(
    bits: Bits,
    block: usize,
    codes: &[u8],
    scale: &[f32],
    offset: &[f32],
    x: &[f32],
) -> f32 {
    debug_assert!(block.is_multiple_of(LANES) && codes.len() * 2 >= x.len());
    let (low_codes, high_codes) = nibble_values(bits);
    let mut acc = [_mm256_setzero_ps(); 4];
    let blocks = x.chunks_exact(block).zip(codes.chunks_exact(block / 2));
    for ((xs, bytes), (s, o)) in blocks.zip(scale.iter().zip(offset)) {
        _mm_prefetch::<_MM_HINT_T1>(bytes.as_ptr().cast::<i8>().wrapping_add(PREFETCH_BYTES));
        _mm_prefetch::<_MM_HINT_T1>(
            (s as *const f32)
                .cast::<i8>()
                .wrapping_add(PREFETCH_BYTES / 2),
        );
        _mm_prefetch::<_MM_HINT_T1>(
            (o as *const f32)
                .cast::<i8>()
                .wrapping_add(PREFETCH_BYTES / 2),
        );
        let (s, o) = (_mm256_set1_ps(*s), _mm256_set1_ps(*o));
        // SAFETY: the CPU has the features (the caller).
        let table = unsafe {
            T::of_block(
                value(low_codes, s, o, false),
                value(high_codes, s, o, false),
            )
        };
        for (xs, bytes) in xs.chunks_exact(LANES).zip(bytes.chunks_exact(LANES / 2)) {
            // SAFETY: the CPU has the features (the caller); `bytes` holds
            // sixteen bytes.
            let w = unsafe { table.look_up(bytes) };
            for (j, (a, w)) in acc.iter_mut().zip(w).enumerate() {
                // SAFETY: `xs` holds 32 f32s, so 8j..8j + 8 is inside it.
                let xv = unsafe { _mm256_loadu_ps(xs.as_ptr().add(8 * j)) };
                *a = _mm256_fmadd_ps(w, xv, *a);
            }
        }
    }
    sum_lanes(acc)
}

/// A block's sixteen values, held as a lookup of 32 codes at a time reads
/// them.
trait Table: Copy {
    /// The table of a block whose nibbles 0..8 and 8..16 dequantize to
    /// `low` and `high` (in f32).
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C.
    unsafe fn of_block(low: __m256, high: __m256) -> Self;

    /// The values of the 32 codes in `bytes` (sixteen, two codes a byte,
    /// the first in the low nibble), in four vectors of eight.
    ///
    /// # Safety
    /// As [`Table::of_block`], and `bytes` holds sixteen bytes.
    unsafe fn look_up(self, bytes: &[u8]) -> [__m256; 4];
}

/// The values of an f32 weight: the low three bits of a nibble choose a
/// lane of two tables of eight, its high bit chooses the table.
#[derive(Clone, Copy)]
struct F32Table {
    low: __m256,
    high: __m256,
}

impl Table for F32Table {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn of_block(low: __m256, high: __m256) -> Self {
        F32Table { low, high }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn look_up(self, bytes: &[u8]) -> [__m256; 4] {
        // Lane `i` of a broadcast word: nibble `i` in its low bits, and the
        // nibble's high bit in the sign bit.
        let to_low = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
        let to_sign = _mm256_setr_epi32(28, 24, 20, 16, 12, 8, 4, 0);
        std::array::from_fn(|j| {
            let word = i32::from_le_bytes([
                bytes[4 * j],
                bytes[4 * j + 1],
                bytes[4 * j + 2],
                bytes[4 * j + 3],
            ]);
            let word = _mm256_set1_epi32(word);
            let index = _mm256_srlv_epi32(word, to_low);
            let high_bit = _mm256_castsi256_ps(_mm256_sllv_epi32(word, to_sign));
            _mm256_blendv_ps(
                _mm256_permutevar8x32_ps(self.low, index),
                _mm256_permutevar8x32_ps(self.high, index),
                high_bit,
            )
        })
    }
}

/// The values of an fp16 weight, rounded to fp16 and kept so: their low
/// bytes in one table and their high bytes in another, so that a byte
/// shuffle looks up 32 codes at once; the values are then widened to f32
/// as an fp16 weight's are.
#[derive(Clone, Copy)]
struct Fp16Table {
    low_bytes: __m256i,
    high_bytes: __m256i,
}

impl Table for Fp16Table {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn of_block(low: __m256, high: __m256) -> Self {
        // Bytes 0, 2, .., 14 (the low bytes of eight fp16s) into the low
        // half, and bytes 1, 3, .., 15 (their high bytes).
        let even = _mm_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, -1, -1, -1, -1, -1, -1, -1, -1);
        let odd = _mm_setr_epi8(1, 3, 5, 7, 9, 11, 13, 15, -1, -1, -1, -1, -1, -1, -1, -1);
        let low = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(low);
        let high = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(high);
        let bytes = |order| {
            _mm256_broadcastsi128_si256(_mm_unpacklo_epi64(
                _mm_shuffle_epi8(low, order),
                _mm_shuffle_epi8(high, order),
            ))
        };
        Fp16Table {
            low_bytes: bytes(even),
            high_bytes: bytes(odd),
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn look_up(self, bytes: &[u8]) -> [__m256; 4] {
        let nibble = _mm_set1_epi8(0x0F);
        // SAFETY: `bytes` holds the sixteen bytes the load reads (the
        // caller).
        let c = unsafe { _mm_loadu_si128(bytes.as_ptr().cast()) };
        let lows = _mm_and_si128(c, nibble);
        let highs = _mm_and_si128(_mm_srli_epi16::<4>(c), nibble);
        // Codes 0..16 in the low lane, 16..32 in the high one.
        let index = _mm256_set_m128i(
            _mm_unpackhi_epi8(lows, highs),
            _mm_unpacklo_epi8(lows, highs),
        );
        let l = _mm256_shuffle_epi8(self.low_bytes, index);
        let h = _mm256_shuffle_epi8(self.high_bytes, index);
        // fp16 codes 0..8 and 16..24, then 8..16 and 24..32.
        let (a, b) = (_mm256_unpacklo_epi8(l, h), _mm256_unpackhi_epi8(l, h));
        [
            _mm256_cvtph_ps(_mm256_castsi256_si128(a)),
            _mm256_cvtph_ps(_mm256_castsi256_si128(b)),
            _mm256_cvtph_ps(_mm256_extracti128_si256::<1>(a)),
            _mm256_cvtph_ps(_mm256_extracti128_si256::<1>(b)),
        ]
    }
}

/// The values of nibbles 0..8 and of nibbles 8..16, as f32 lanes.
#[inline]
#[target_feature(enable = "avx2")]
fn nibble_values(bits: Bits) -> (__m256, __m256) {
    let low = _mm256_setr_ps(0., 1., 2., 3., 4., 5., 6., 7.);
    if bits == Bits::I4 {
        (low, _mm256_setr_ps(-8., -7., -6., -5., -4., -3., -2., -1.))
    } else {
        (low, _mm256_setr_ps(8., 9., 10., 11., 12., 13., 14., 15.))
    }
}

/// The 32 partial sums of four accumulators, added in `reduce32`'s tree.
#[inline]
#[target_feature(enable = "avx2")]
fn sum_lanes(acc: [__m256; 4]) -> f32 {
    let mut lanes = [0.0f32; LANES];
    for (j, a) in acc.iter().enumerate() {
        // SAFETY: lanes 8j..8j+8 are inside the 32 of `lanes`.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr().add(8 * j), *a) };
    }
    reduce32(&lanes)
}

/// Codes `q` (as f32) dequantized: `(q - o) * s`, rounded to fp16 with
/// `fp16`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn value(q: __m256, s: __m256, o: __m256, fp16: bool) -> __m256 {
    let v = _mm256_mul_ps(_mm256_sub_ps(q, o), s);
    if fp16 {
        _mm256_cvtph_ps(_mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v))
    } else {
        v
    }
}

/// Codes `g..g + 8` of a row dequantized: `(q - o) * s`, rounded to fp16
/// with `fp16`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn eight(bits: Bits, codes: &[u8], g: usize, s: __m256, o: __m256, fp16: bool) -> __m256 {
    let q = match bits {
        Bits::I4 | Bits::U4 => {
            let word = i32::from_le_bytes(codes[g / 2..g / 2 + 4].try_into().unwrap_or_default());
            let shifts = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
            let v = _mm256_and_si256(
                _mm256_srlv_epi32(_mm256_set1_epi32(word), shifts),
                _mm256_set1_epi32(0xF),
            );
            if bits == Bits::I4 {
                // Sign-extend four bits: (v ^ 8) - 8.
                let eight = _mm256_set1_epi32(8);
                _mm256_sub_epi32(_mm256_xor_si256(v, eight), eight)
            } else {
                v
            }
        }
        Bits::I8 | Bits::U8 => {
            let bytes = &codes[g..g + 8];
            // SAFETY: `bytes` holds the eight bytes the load reads.
            let v = unsafe { _mm_loadl_epi64(bytes.as_ptr().cast()) };
            if bits == Bits::I8 {
                _mm256_cvtepi8_epi32(v)
            } else {
                _mm256_cvtepu8_epi32(v)
            }
        }
    };
    value(_mm256_cvtepi32_ps(q), s, o, fp16)
}
