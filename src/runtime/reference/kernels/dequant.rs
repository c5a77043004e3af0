//! Dequantizing a row of a blockwise-quantized weight with AVX2: eight
//! codes widened to f32 lanes at a time, shifted, scaled and (for an fp16
//! weight) rounded to fp16 in registers, or, for four-bit codes, looked up
//! in the block's sixteen values computed so (with AVX-512, sixteen codes
//! a permute). The values are those of the portable `Blockwise::piece`:
//! `(q - offset) * scale` in f32, then F16C's round to nearest even, as
//! `half` rounds. A palettized weight's four-bit codes are looked up the
//! same way in their palette ([`dot_by_palette_avx2`],
//! [`dot_rows_by_palette_avx512`]). Blocks of exactly 32, the commonest, have
//! loops of their own, two rows at a time. The dot products
//! prefetch the codes and parameters [`PREFETCH_BYTES`] ahead.

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
use std::arch::x86_64::{
    __m512, _mm256_castpd_ps, _mm512_castps512_ps256, _mm512_castps_pd, _mm512_cvtepu8_epi32,
    _mm512_cvtph_ps, _mm512_cvtps_ph, _mm512_extractf64x4_pd, _mm512_fmadd_ps, _mm512_loadu_ps,
    _mm512_mul_ps, _mm512_permutex2var_ps, _mm512_permutexvar_ps, _mm512_set1_ps,
    _mm512_setr_epi32, _mm512_setr_ps, _mm512_setzero_ps, _mm512_srli_epi32, _mm512_sub_ps,
    _MM_FROUND_NO_EXC,
};

/// How far ahead of the codes a dot product reads, it asks for them (into
/// L2): far enough that a core keeps enough misses in flight to stream
/// the weight at the memory's bandwidth.
const PREFETCH_BYTES: usize = 8192;

use super::dot::{reduce32_avx2, LANES};
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
    offset: Option<&[f32]>,
    fp16: bool,
    out: &mut [f32],
) {
    debug_assert!(block.is_multiple_of(8) && out.len().is_multiple_of(block));
    debug_assert!(
        scale.len() * block == out.len() && offset.is_none_or(|o| o.len() == scale.len())
    );
    debug_assert!(codes.len() * 8 >= out.len() * bits.width());
    for (b, &s) in scale.iter().enumerate() {
        let (s, o) = (_mm256_set1_ps(s), _mm256_set1_ps(offset_of(offset, b)));
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
    offset: Option<&[f32]>,
    fp16: bool,
    x: &[f32],
) -> f32 {
    debug_assert!(block.is_multiple_of(8) && x.len().is_multiple_of(LANES));
    debug_assert!(scale.len() * block == x.len() && offset.is_none_or(|o| o.len() == scale.len()));
    debug_assert!(codes.len() * 8 >= x.len() * bits.width());
    if matches!(bits, Bits::I4 | Bits::U4) && block == LANES {
        let offset = offset.map(|o| [o]);
        // SAFETY: the caller's guarantees, with blocks of 32.
        let [dot] = unsafe { dot_rows_by_table32_avx2(bits, [codes], [scale], offset, fp16, x) };
        return dot;
    }
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
                _mm256_set1_ps(offset_of(offset, b)),
                fp16,
            );
            // SAFETY: `xs` holds 32 f32s, so 8j..8j + 8 is inside it.
            let xv = unsafe { _mm256_loadu_ps(xs.as_ptr().add(8 * j)) };
            *a = _mm256_fmadd_ps(v, xv, *a);
        }
    }
    reduce32_avx2(acc)
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
    offset: Option<&[f32]>,
    x: &[f32],
) -> f32 {
    debug_assert!(block.is_multiple_of(LANES) && codes.len() * 2 >= x.len());
    let (low_codes, high_codes) = nibble_values(bits);
    let mut acc = [_mm256_setzero_ps(); 4];
    let blocks = x.chunks_exact(block).zip(codes.chunks_exact(block / 2));
    let ahead = params_ahead(block);
    for (b, (xs, bytes)) in blocks.enumerate() {
        prefetch_block(bytes, scale, offset, b, ahead);
        let (s, o) = (
            _mm256_set1_ps(scale[b]),
            _mm256_set1_ps(offset_of(offset, b)),
        );
        // SAFETY: the CPU has the features (the caller).
        let table = unsafe {
            T::of_block(
                value(low_codes, s, o, false),
                value(high_codes, s, o, false),
            )
        };
        // SAFETY: the CPU has the features (the caller); `xs` and `bytes`
        // are one block's.
        unsafe { add_block(table, xs, bytes, &mut acc) };
    }
    reduce32_avx2(acc)
}

/// [`dot_by_table`] for blocks of exactly 32, as
/// [`dot_by_table32_avx512`] is for AVX-512: whether the weight has
/// offsets fixed at compile time, a prefetch per four blocks, no chunk
/// iterators; the same operations in the same order, so the same bits.
///
/// # Safety
/// As [`dot_by_table`], with blocks of 32 and `offset` one per block when
/// `OFFSET`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_by_table32<T: Table, const OFFSET: bool, const ROWS: usize>(
    (low_codes, high_codes): (__m256, __m256),
    codes: [&[u8]; ROWS],
    scale: [&[f32]; ROWS],
    offset: [&[f32]; ROWS],
    x: &[f32],
) -> [f32; ROWS] {
    let blocks = x.len() / LANES;
    // Checked here, in the kernel, so that the compiler drops the checks
    // per block (a helper doing it cost a tenth of the decoder step).
    for r in 0..ROWS {
        assert!(codes[r].len() >= blocks * 16 && scale[r].len() >= blocks);
        assert!(!OFFSET || offset[r].len() >= blocks);
    }
    let mut acc = [[_mm256_setzero_ps(); 4]; ROWS];
    let mut b = 0;
    while b < blocks {
        let group = (blocks - b).min(4);
        for r in 0..ROWS {
            let offset = OFFSET.then_some(offset[r]);
            prefetch_block(
                &codes[r][16 * b..],
                scale[r],
                offset,
                b,
                params_ahead(LANES),
            );
        }
        for b in b..b + group {
            // SAFETY: block `b` < `blocks` has 32 values of `x`; the CPU has
            // the features (the caller).
            let xs: [__m256; 4] = std::array::from_fn(|j| unsafe {
                _mm256_loadu_ps(x.as_ptr().add(LANES * b + 8 * j))
            });
            for r in 0..ROWS {
                let s = _mm256_set1_ps(scale[r][b]);
                // `value`'s operations (without an offset, subtracting zero
                // changes no value, so it is left out).
                let (low, high) = if OFFSET {
                    let o = _mm256_set1_ps(offset[r][b]);
                    (
                        _mm256_mul_ps(_mm256_sub_ps(low_codes, o), s),
                        _mm256_mul_ps(_mm256_sub_ps(high_codes, o), s),
                    )
                } else {
                    (_mm256_mul_ps(low_codes, s), _mm256_mul_ps(high_codes, s))
                };
                // SAFETY: the CPU has the features (the caller); block `b`
                // of each row has sixteen bytes of codes (asserted above).
                let w = unsafe { T::of_block(low, high).look_up(&codes[r][16 * b..16 * b + 16]) };
                for ((a, w), xv) in acc[r].iter_mut().zip(w).zip(xs) {
                    *a = _mm256_fmadd_ps(w, xv, *a);
                }
            }
        }
        b += group;
    }
    std::array::from_fn(|r| reduce32_avx2(acc[r]))
}

/// [`dot_avx2`] for `ROWS` rows at once (one, or two, whose blocks of `x`
/// are then read once for both), four-bit codes in blocks of exactly 32.
/// Each row's result is the bits [`dot_by_table`] gives it.
///
/// # Safety
/// As [`dot_avx2`] for each row, with 4-bit `bits` and blocks of 32.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_rows_by_table32_avx2<const ROWS: usize>(
    bits: Bits,
    codes: [&[u8]; ROWS],
    scale: [&[f32]; ROWS],
    offset: Option<[&[f32]; ROWS]>,
    fp16: bool,
    x: &[f32],
) -> [f32; ROWS] {
    let nibbles = nibble_values(bits);
    let none = [&[] as &[f32]; ROWS];
    // SAFETY: the caller's guarantees.
    unsafe {
        match (fp16, offset) {
            (true, None) => {
                dot_by_table32::<Fp16Table, false, ROWS>(nibbles, codes, scale, none, x)
            }
            (false, None) => {
                dot_by_table32::<F32Table, false, ROWS>(nibbles, codes, scale, none, x)
            }
            (true, Some(o)) => dot_by_table32::<Fp16Table, true, ROWS>(nibbles, codes, scale, o, x),
            (false, Some(o)) => dot_by_table32::<F32Table, true, ROWS>(nibbles, codes, scale, o, x),
        }
    }
}

/// Adds one block's products to the 32 partial sums of a table lookup:
/// its values looked up in `table` from `bytes` (two codes a byte), times
/// `xs`, 32 at a time, lane `k % 32` for element `k`.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C; `xs` is a multiple of 32 long
/// and `bytes` holds its codes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn add_block<T: Table>(table: T, xs: &[f32], bytes: &[u8], acc: &mut [__m256; 4]) {
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

/// The dot product of a palettized row with `x`, without making the row:
/// each block of `block` elements (a column group, a multiple of 32) looks
/// its codes up in its table, the block's sixteen values in `tables`
/// (those of the next block after them). The terms are summed in the lanes
/// and order of the f32 dot product (`dot::dots`), so the result is the
/// same bits as looking the row up and taking that dot product.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C; `block` is a multiple of 32 that
/// divides `x.len()`, `codes` holds the row's four-bit codes and `tables`
/// sixteen values per block.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_by_palette_avx2(
    block: usize,
    codes: &[u8],
    tables: &[f32],
    x: &[f32],
) -> f32 {
    debug_assert!(block.is_multiple_of(LANES) && x.len().is_multiple_of(block));
    debug_assert!(codes.len() * 2 >= x.len() && tables.len() * block >= 16 * x.len());
    let mut acc = [_mm256_setzero_ps(); 4];
    let blocks = x.chunks_exact(block).zip(codes.chunks_exact(block / 2));
    for ((xs, bytes), values) in blocks.zip(tables.chunks_exact(16)) {
        prefetch_codes(bytes);
        // SAFETY: `values` holds sixteen f32s; the CPU has the features
        // (the caller); `xs` and `bytes` are one block's.
        unsafe {
            let table = F32Table::of_block(
                _mm256_loadu_ps(values.as_ptr()),
                _mm256_loadu_ps(values.as_ptr().add(8)),
            );
            add_block(table, xs, bytes, &mut acc);
        }
    }
    reduce32_avx2(acc)
}

/// [`dot_by_table`] with AVX-512F: a block's sixteen values are one 512-bit
/// register, so one permute looks up sixteen codes (it reads the low four
/// bits of each index, so a byte's low nibble needs no mask). The codes of
/// a byte are two neighbouring elements, so the lookups give the even and
/// the odd elements of each chunk of 32 apart: `x` comes split so
/// ([`split_lanes`]), and lane `2i` of the dot product's 32 partial sums is
/// lane `i` of the even accumulator, lane `2i + 1` of the odd one. Each
/// partial sum therefore takes the same terms in the same order as in
/// [`dot_by_table`], to the same bits.
///
/// # Safety
/// The CPU must have AVX-512F, AVX2, FMA and F16C; 4-bit `bits`, `block` a
/// multiple of 32, a scale (and an offset, if any) for each block of the row, `codes`
/// holding its codes and `x_split` as long as it (a multiple of 32).
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
pub(super) unsafe fn dot_by_table_avx512(
    bits: Bits,
    block: usize,
    codes: &[u8],
    scale: &[f32],
    offset: Option<&[f32]>,
    fp16: bool,
    x_split: &[f32],
) -> f32 {
    debug_assert!(block.is_multiple_of(LANES) && codes.len() * 2 >= x_split.len());
    debug_assert!(
        scale.len() * block == x_split.len() && offset.is_none_or(|o| o.len() == scale.len())
    );
    let nibbles = nibble_table(bits);
    if block == LANES {
        let offset = offset.map(|o| [o]);
        // SAFETY: the caller's guarantees, with blocks of 32.
        let [dot] =
            unsafe { dot_rows_by_table32_avx512(bits, [codes], [scale], offset, fp16, x_split) };
        return dot;
    }
    let (mut even, mut odd) = (_mm512_setzero_ps(), _mm512_setzero_ps());
    let blocks = x_split
        .chunks_exact(block)
        .zip(codes.chunks_exact(block / 2));
    let ahead = params_ahead(block);
    for (b, (xs, bytes)) in blocks.enumerate() {
        prefetch_block(bytes, scale, offset, b, ahead);
        // The operations of `value`, sixteen lanes wide (without an
        // offset, subtracting zero changes no value, so it is left out).
        let s = _mm512_set1_ps(scale[b]);
        let mut table = match offset {
            Some(o) => _mm512_mul_ps(_mm512_sub_ps(nibbles, _mm512_set1_ps(o[b])), s),
            None => _mm512_mul_ps(nibbles, s),
        };
        if fp16 {
            table = _mm512_cvtph_ps(_mm512_cvtps_ph::<
                { _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC },
            >(table));
        }
        // SAFETY: the CPU has the features (the caller); `xs` and `bytes`
        // are one block's.
        unsafe { add_block_avx512(table, xs, bytes, &mut even, &mut odd) };
    }
    // SAFETY: the CPU has the features (the caller).
    unsafe { sum_even_and_odd(even, odd) }
}

/// [`dot_by_table_avx512`] for blocks of exactly 32, the commonest (an
/// LLM's int4 per block of 32), with whether the weight is fp16 and has
/// offsets fixed at compile time and four blocks (a cache line of codes)
/// to an iteration: the same operations on each lane in the same order,
/// so the same bits, with less of the loop's own work per block, which is
/// what bounds this kernel.
///
/// # Safety
/// As [`dot_by_table_avx512`], with blocks of 32 and `offset` one per
/// block when `OFFSET`.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn dot_by_table32_avx512<const FP16: bool, const OFFSET: bool, const ROWS: usize>(
    nibbles: __m512,
    codes: [&[u8]; ROWS],
    scale: [&[f32]; ROWS],
    offset: [&[f32]; ROWS],
    x_split: &[f32],
) -> [f32; ROWS] {
    let blocks = x_split.len() / LANES;
    // Checked here, in the kernel, so that the compiler drops the checks
    // per block (a helper doing it cost a tenth of the decoder step).
    for r in 0..ROWS {
        assert!(codes[r].len() >= blocks * 16 && scale[r].len() >= blocks);
        assert!(!OFFSET || offset[r].len() >= blocks);
    }
    let mut even = [_mm512_setzero_ps(); ROWS];
    let mut odd = [_mm512_setzero_ps(); ROWS];
    let mut b = 0;
    while b < blocks {
        let group = (blocks - b).min(4);
        for r in 0..ROWS {
            let offset = OFFSET.then_some(offset[r]);
            prefetch_block(
                &codes[r][16 * b..],
                scale[r],
                offset,
                b,
                params_ahead(LANES),
            );
        }
        for b in b..b + group {
            // SAFETY: block `b` < `blocks` has 32 values of `x_split`; the
            // CPU has the features (the caller).
            let (x_even, x_odd) = unsafe {
                let x = x_split.as_ptr().add(LANES * b);
                (_mm512_loadu_ps(x), _mm512_loadu_ps(x.add(16)))
            };
            for r in 0..ROWS {
                let s = _mm512_set1_ps(scale[r][b]);
                let mut table = if OFFSET {
                    _mm512_mul_ps(_mm512_sub_ps(nibbles, _mm512_set1_ps(offset[r][b])), s)
                } else {
                    _mm512_mul_ps(nibbles, s)
                };
                if FP16 {
                    table = _mm512_cvtph_ps(_mm512_cvtps_ph::<
                        { _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC },
                    >(table));
                }
                // SAFETY: block `b` of each row has sixteen bytes of codes
                // (asserted above); the CPU has the features (the caller).
                let low = unsafe {
                    _mm512_cvtepu8_epi32(_mm_loadu_si128(codes[r].as_ptr().add(16 * b).cast()))
                };
                let high = _mm512_srli_epi32::<4>(low);
                even[r] = _mm512_fmadd_ps(_mm512_permutexvar_ps(low, table), x_even, even[r]);
                odd[r] = _mm512_fmadd_ps(_mm512_permutexvar_ps(high, table), x_odd, odd[r]);
            }
        }
        b += group;
    }
    // SAFETY: the CPU has the features (the caller).
    std::array::from_fn(|r| unsafe { sum_even_and_odd(even[r], odd[r]) })
}

/// [`dot_by_table_avx512`] for `ROWS` rows at once (one, or two, whose
/// blocks of `x` are then read once for both, with twice the independent
/// sums in flight), in blocks of exactly 32. Each row's result is the bits
/// [`dot_by_table_avx512`] gives it.
///
/// # Safety
/// As [`dot_by_table_avx512`] for each row, with blocks of 32.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
pub(super) unsafe fn dot_rows_by_table32_avx512<const ROWS: usize>(
    bits: Bits,
    codes: [&[u8]; ROWS],
    scale: [&[f32]; ROWS],
    offset: Option<[&[f32]; ROWS]>,
    fp16: bool,
    x_split: &[f32],
) -> [f32; ROWS] {
    let nibbles = nibble_table(bits);
    let none = [&[] as &[f32]; ROWS];
    let x = x_split;
    // SAFETY: the caller's guarantees.
    unsafe {
        match (fp16, offset) {
            (true, None) => {
                dot_by_table32_avx512::<true, false, ROWS>(nibbles, codes, scale, none, x)
            }
            (false, None) => {
                dot_by_table32_avx512::<false, false, ROWS>(nibbles, codes, scale, none, x)
            }
            (true, Some(o)) => {
                dot_by_table32_avx512::<true, true, ROWS>(nibbles, codes, scale, o, x)
            }
            (false, Some(o)) => {
                dot_by_table32_avx512::<false, true, ROWS>(nibbles, codes, scale, o, x)
            }
        }
    }
}

/// [`dot_rows_by_table32_avx512`] for `out.len()` consecutive rows, two at a
/// time (the last alone when their count is odd), into `out`: one call per
/// part of a matrix-vector product, so that choosing the kernel and the
/// call itself cost once per part, not once per pair of rows (a decode
/// step's product has a few hundred pairs, each about 150 ns of work).
/// Each row's result is the bits [`dot_by_table_avx512`] gives it.
///
/// # Safety
/// As [`dot_by_table_avx512`] for each row, with blocks of 32: `codes`
/// holds the rows' codes one after another (`x_split.len() / 2` bytes
/// each), `scale` (and `offset`, if any) their parameters one after
/// another (`x_split.len() / 32` each).
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
pub(super) unsafe fn dots_by_table32_avx512(
    bits: Bits,
    codes: &[u8],
    scale: &[f32],
    offset: Option<&[f32]>,
    fp16: bool,
    x_split: &[f32],
    out: &mut [f32],
) {
    let nibbles = nibble_table(bits);
    let x = x_split;
    // SAFETY: the caller's guarantees.
    unsafe {
        match (fp16, offset) {
            (true, None) => rows_by_table32::<true, false>(nibbles, codes, scale, &[], x, out),
            (false, None) => rows_by_table32::<false, false>(nibbles, codes, scale, &[], x, out),
            (true, Some(o)) => rows_by_table32::<true, true>(nibbles, codes, scale, o, x, out),
            (false, Some(o)) => rows_by_table32::<false, true>(nibbles, codes, scale, o, x, out),
        }
    }
}

/// [`dots_by_table32_avx512`] with whether the weight is fp16 and has
/// offsets fixed at compile time.
///
/// # Safety
/// As [`dots_by_table32_avx512`], with `offset` one per block when
/// `OFFSET`.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn rows_by_table32<const FP16: bool, const OFFSET: bool>(
    nibbles: __m512,
    codes: &[u8],
    scale: &[f32],
    offset: &[f32],
    x_split: &[f32],
    out: &mut [f32],
) {
    let blocks = x_split.len() / LANES;
    let row = |n: usize| {
        let parameters = n * blocks..(n + 1) * blocks;
        (
            &codes[16 * parameters.start..16 * parameters.end],
            &scale[parameters.clone()],
            if OFFSET { &offset[parameters] } else { &[][..] },
        )
    };
    let mut n = 0;
    while n + 1 < out.len() {
        let ((c0, s0, o0), (c1, s1, o1)) = (row(n), row(n + 1));
        // SAFETY: the caller's guarantees, for rows `n` and `n + 1`.
        let [first, second] = unsafe {
            dot_by_table32_avx512::<FP16, OFFSET, 2>(nibbles, [c0, c1], [s0, s1], [o0, o1], x_split)
        };
        out[n] = first;
        out[n + 1] = second;
        n += 2;
    }
    if n < out.len() {
        let (c, s, o) = row(n);
        // SAFETY: the caller's guarantees, for row `n`.
        let [last] =
            unsafe { dot_by_table32_avx512::<FP16, OFFSET, 1>(nibbles, [c], [s], [o], x_split) };
        out[n] = last;
    }
}

/// The sixteen values four-bit codes of `bits` stand for, in one register.
#[inline]
#[target_feature(enable = "avx512f")]
fn nibble_table(bits: Bits) -> __m512 {
    if bits == Bits::I4 {
        _mm512_setr_ps(
            0., 1., 2., 3., 4., 5., 6., 7., -8., -7., -6., -5., -4., -3., -2., -1.,
        )
    } else {
        _mm512_setr_ps(
            0., 1., 2., 3., 4., 5., 6., 7., 8., 9., 10., 11., 12., 13., 14., 15.,
        )
    }
}

/// [`add_block`] with AVX-512F: one block's values looked up in `table`
/// (its sixteen values) from `bytes`, times `xs` (split into even and odd
/// lanes), added to the even and odd partial sums.
///
/// # Safety
/// The CPU must have AVX-512F; `xs` is a multiple of 32 long and `bytes`
/// holds its codes.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn add_block_avx512(
    table: __m512,
    xs: &[f32],
    bytes: &[u8],
    even: &mut __m512,
    odd: &mut __m512,
) {
    for (xs, bytes) in xs.chunks_exact(LANES).zip(bytes.chunks_exact(LANES / 2)) {
        // SAFETY: `bytes` holds the sixteen bytes the load reads, `xs` the
        // 32 f32s of the two (even, then odd elements); the CPU has the
        // features (the caller).
        unsafe {
            let low = _mm512_cvtepu8_epi32(_mm_loadu_si128(bytes.as_ptr().cast()));
            let high = _mm512_srli_epi32::<4>(low);
            let x_even = _mm512_loadu_ps(xs.as_ptr());
            let x_odd = _mm512_loadu_ps(xs.as_ptr().add(16));
            *even = _mm512_fmadd_ps(_mm512_permutexvar_ps(low, table), x_even, *even);
            *odd = _mm512_fmadd_ps(_mm512_permutexvar_ps(high, table), x_odd, *odd);
        }
    }
}

/// [`dot_by_palette_avx2`] with AVX-512F for `ROWS` rows at once (one, or
/// two, whose chunks of `x` are then read once for both), `x` split into
/// even and odd lanes as [`dot_by_table_avx512`] reads it: a chunk of 32
/// elements at a time in order (as [`add_block_avx512`] sums), so each
/// row's result is the bits of the dense dot product; the codes prefetched
/// a line (four chunks) at a time.
///
/// # Safety
/// As [`dot_by_palette_avx2`] for each row, the CPU with AVX-512F too, and
/// `x_split` as long as a row.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
pub(super) unsafe fn dot_rows_by_palette_avx512<const ROWS: usize>(
    block: usize,
    codes: [&[u8]; ROWS],
    tables: [&[f32]; ROWS],
    x_split: &[f32],
) -> [f32; ROWS] {
    assert!(block.is_multiple_of(LANES) && x_split.len().is_multiple_of(block));
    let chunks = x_split.len() / LANES;
    let per_block = block / LANES;
    for r in 0..ROWS {
        assert!(codes[r].len() >= chunks * 16 && tables[r].len() * block >= 16 * x_split.len());
    }
    let mut even = [_mm512_setzero_ps(); ROWS];
    let mut odd = [_mm512_setzero_ps(); ROWS];
    for c in 0..chunks {
        if c % 4 == 0 {
            for codes in codes {
                prefetch_codes(&codes[16 * c..]);
            }
        }
        let b = c / per_block;
        // SAFETY: chunk `c` < `chunks` has 32 values of `x_split`, sixteen
        // bytes of codes in each row, and block `b` its sixteen values in
        // each row's tables (asserted above); the CPU has the features
        // (the caller).
        unsafe {
            let x = x_split.as_ptr().add(LANES * c);
            let (x_even, x_odd) = (_mm512_loadu_ps(x), _mm512_loadu_ps(x.add(16)));
            for r in 0..ROWS {
                let table = _mm512_loadu_ps(tables[r].as_ptr().add(16 * b));
                let low =
                    _mm512_cvtepu8_epi32(_mm_loadu_si128(codes[r].as_ptr().add(16 * c).cast()));
                let high = _mm512_srli_epi32::<4>(low);
                even[r] = _mm512_fmadd_ps(_mm512_permutexvar_ps(low, table), x_even, even[r]);
                odd[r] = _mm512_fmadd_ps(_mm512_permutexvar_ps(high, table), x_odd, odd[r]);
            }
        }
    }
    // SAFETY: the CPU has the features (the caller).
    std::array::from_fn(|r| unsafe { sum_even_and_odd(even[r], odd[r]) })
}

/// [`dot_rows_by_palette_avx512`] for `out.len()` consecutive rows, two at a
/// time (the last alone when their count is odd), into `out`, row `n`'s
/// codes and tables being `row(n)`: one call per part of a matrix-vector
/// product, as [`dots_by_table32_avx512`] is for blockwise weights. Each
/// row's result is the bits of the dense dot product.
///
/// # Safety
/// As [`dot_rows_by_palette_avx512`] for each row `row` gives.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
pub(super) unsafe fn dots_by_palette_avx512<'a>(
    block: usize,
    row: impl Fn(usize) -> (&'a [u8], &'a [f32]),
    x_split: &[f32],
    out: &mut [f32],
) {
    let mut n = 0;
    while n + 1 < out.len() {
        let ((c0, t0), (c1, t1)) = (row(n), row(n + 1));
        // SAFETY: the caller's guarantees, for rows `n` and `n + 1`.
        let [first, second] =
            unsafe { dot_rows_by_palette_avx512(block, [c0, c1], [t0, t1], x_split) };
        out[n] = first;
        out[n + 1] = second;
        n += 2;
    }
    if n < out.len() {
        let (codes, tables) = row(n);
        // SAFETY: the caller's guarantees, for row `n`.
        let [last] = unsafe { dot_rows_by_palette_avx512(block, [codes], [tables], x_split) };
        out[n] = last;
    }
}

/// The sum of a lookup's 32 partial sums held as even and odd lanes.
///
/// # Safety
/// The CPU must have AVX-512F, AVX2 and FMA.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn sum_even_and_odd(even: __m512, odd: __m512) -> f32 {
    // Lanes 0..16 and 16..32 of the 32, interleaved back from the even and
    // the odd ones, then added as the AVX2 paths add theirs.
    let first = _mm512_permutex2var_ps(
        even,
        _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23),
        odd,
    );
    let second = _mm512_permutex2var_ps(
        even,
        _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31),
        odd,
    );
    // (The upper half through the f64 view: extracting f32 lanes is
    // AVX-512DQ, and this path needs only AVX-512F.)
    let upper = |v: __m512| _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
    reduce32_avx2([
        _mm512_castps512_ps256(first),
        upper(first),
        _mm512_castps512_ps256(second),
        upper(second),
    ])
}

/// `x` as [`dot_by_table_avx512`] reads it: each chunk of 32 elements as
/// its sixteen even elements, then its sixteen odd ones.
pub(super) fn split_lanes(x: &[f32]) -> Vec<f32> {
    let mut split = vec![0.0; x.len() / LANES * LANES];
    for (chunk, out) in x.chunks_exact(LANES).zip(split.chunks_exact_mut(LANES)) {
        // Fixed lengths, so that the compiler drops the bounds checks
        // (extending element by element showed up in a decode step's
        // profile).
        let (Ok(chunk), Ok(out)) = (
            <&[f32; LANES]>::try_from(chunk),
            <&mut [f32; LANES]>::try_from(out),
        ) else {
            continue;
        };
        for i in 0..LANES / 2 {
            out[i] = chunk[2 * i];
            out[LANES / 2 + i] = chunk[2 * i + 1];
        }
    }
    split
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

/// Block `b`'s offset: zero for a weight without offsets.
#[inline]
fn offset_of(offset: Option<&[f32]>, b: usize) -> f32 {
    offset.map_or(0.0, |o| o[b])
}

/// Asks for the codes and parameters [`PREFETCH_BYTES`] of codes past
/// block `b` (whose codes are `bytes`), into L2; `params_ahead` is how many
/// bytes of parameters that many codes have.
#[inline]
#[target_feature(enable = "avx2")]
fn prefetch_block(
    bytes: &[u8],
    scale: &[f32],
    offset: Option<&[f32]>,
    b: usize,
    params_ahead: usize,
) {
    let ahead = |p: *const u8, by: usize| p.wrapping_add(by).cast::<i8>();
    let params = |v: &[f32]| v.as_ptr().wrapping_add(b).cast::<u8>();
    prefetch_codes(bytes);
    // Prefetches never fault, so addresses past the row are harmless.
    _mm_prefetch::<_MM_HINT_T1>(ahead(params(scale), params_ahead));
    if let Some(offset) = offset {
        _mm_prefetch::<_MM_HINT_T1>(ahead(params(offset), params_ahead));
    }
}

/// Asks for the codes [`PREFETCH_BYTES`] past `bytes`, into L2.
#[inline]
#[target_feature(enable = "avx2")]
fn prefetch_codes(bytes: &[u8]) {
    // Prefetches never fault, so addresses past the row are harmless.
    _mm_prefetch::<_MM_HINT_T1>(bytes.as_ptr().wrapping_add(PREFETCH_BYTES).cast::<i8>());
}

/// [`prefetch_block`]'s `params_ahead` for blocks of `block` 4-bit codes:
/// four bytes of each parameter per `block / 2` bytes of codes.
fn params_ahead(block: usize) -> usize {
    PREFETCH_BYTES * 8 / block.max(1)
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
