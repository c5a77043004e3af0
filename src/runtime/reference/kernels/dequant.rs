//! Dequantizing a row of a blockwise-quantized weight with AVX2: eight
//! codes widened to f32 lanes at a time, shifted, scaled and (for an fp16
//! weight) rounded to fp16 in registers. The values are those of the
//! portable `Blockwise::row`: `(q - offset) * scale` in f32, then F16C's
//! round to nearest even, as `half` rounds.

use std::arch::x86_64::{
    __m256, _mm256_and_si256, _mm256_cvtepi32_ps, _mm256_cvtepi8_epi32, _mm256_cvtepu8_epi32,
    _mm256_cvtph_ps, _mm256_cvtps_ph, _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_mul_ps,
    _mm256_set1_epi32, _mm256_set1_ps, _mm256_setr_epi32, _mm256_setzero_ps, _mm256_srlv_epi32,
    _mm256_storeu_ps, _mm256_sub_epi32, _mm256_sub_ps, _mm256_xor_si256, _mm_loadl_epi64,
    _MM_FROUND_TO_NEAREST_INT,
};

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
    let mut acc = [_mm256_setzero_ps(); 4];
    for (b, (&s, &o)) in scale.iter().zip(offset).enumerate() {
        let (s, o) = (_mm256_set1_ps(s), _mm256_set1_ps(o));
        for g in (b * block..(b + 1) * block).step_by(8) {
            let v = eight(bits, codes, g, s, o, fp16);
            let lane = (g / 8) % 4;
            let xs = &x[g..g + 8];
            // SAFETY: `xs` holds eight f32s.
            let xv = unsafe { _mm256_loadu_ps(xs.as_ptr()) };
            acc[lane] = _mm256_fmadd_ps(v, xv, acc[lane]);
        }
    }
    let mut lanes = [0.0f32; LANES];
    for (j, a) in acc.iter().enumerate() {
        // SAFETY: lanes 8j..8j+8 are inside the 32 of `lanes`.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr().add(8 * j), *a) };
    }
    reduce32(&lanes)
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
    let v = _mm256_mul_ps(_mm256_sub_ps(_mm256_cvtepi32_ps(q), o), s);
    if fp16 {
        _mm256_cvtph_ps(_mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v))
    } else {
        v
    }
}
