//! Dequantizing a row of a blockwise-quantized weight with AVX2: eight
//! codes widened to f32 lanes at a time, shifted, scaled and (for an fp16
//! weight) rounded to fp16 in registers. The values are those of the
//! portable `Blockwise::row`: `(q - offset) * scale` in f32, then F16C's
//! round to nearest even, as `half` rounds.

use std::arch::x86_64::{
    _mm256_and_si256, _mm256_cvtepi32_ps, _mm256_cvtepi8_epi32, _mm256_cvtepu8_epi32,
    _mm256_cvtph_ps, _mm256_cvtps_ph, _mm256_mul_ps, _mm256_set1_epi32, _mm256_set1_ps,
    _mm256_setr_epi32, _mm256_srlv_epi32, _mm256_storeu_ps, _mm256_sub_epi32, _mm256_sub_ps,
    _mm256_xor_si256, _mm_loadl_epi64, _MM_FROUND_TO_NEAREST_INT,
};

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
    let shifts = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
    let nibble = _mm256_set1_epi32(0xF);
    let eight = _mm256_set1_epi32(8);
    for (b, (&s, &o)) in scale.iter().zip(offset).enumerate() {
        let (s, o) = (_mm256_set1_ps(s), _mm256_set1_ps(o));
        for g in (b * block..(b + 1) * block).step_by(8) {
            // Eight codes as eight i32 lanes.
            // SAFETY: codes g..g+8 lie in `codes` (the caller): 4 bytes
            // from g/2 (4 bits, g a multiple of 8) or 8 from g (8 bits).
            let q = unsafe {
                match bits {
                    Bits::I4 | Bits::U4 => {
                        let word = i32::from_le_bytes(
                            codes[g / 2..g / 2 + 4].try_into().unwrap_or_default(),
                        );
                        let v = _mm256_and_si256(
                            _mm256_srlv_epi32(_mm256_set1_epi32(word), shifts),
                            nibble,
                        );
                        if bits == Bits::I4 {
                            // Sign-extend four bits: (v ^ 8) - 8.
                            _mm256_sub_epi32(_mm256_xor_si256(v, eight), eight)
                        } else {
                            v
                        }
                    }
                    Bits::I8 => {
                        _mm256_cvtepi8_epi32(_mm_loadl_epi64(codes[g..g + 8].as_ptr().cast()))
                    }
                    Bits::U8 => {
                        _mm256_cvtepu8_epi32(_mm_loadl_epi64(codes[g..g + 8].as_ptr().cast()))
                    }
                }
            };
            let mut v = _mm256_mul_ps(_mm256_sub_ps(_mm256_cvtepi32_ps(q), o), s);
            if fp16 {
                v = _mm256_cvtph_ps(_mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v));
            }
            let target = &mut out[g..g + 8];
            // SAFETY: `target` holds eight f32s.
            unsafe { _mm256_storeu_ps(target.as_mut_ptr(), v) };
        }
    }
}
