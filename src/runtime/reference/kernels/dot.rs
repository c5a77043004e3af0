//! Dot products of one weight row with up to two f32 vectors: the inner
//! loop of every matrix-vector product, for each instruction set.
//!
//! # The summation order
//!
//! Every path sums the same way, so that its results do not depend on the
//! instruction set (beyond the rounding of the product, see below): element
//! `k` of the row is accumulated into lane `k % 32` of 32 partial sums, in
//! order of `k`, and the 32 lanes are then added in the fixed tree of
//! [`reduce32`]. The AVX2 and NEON paths multiply-add with one rounding
//! (FMA), so they give the same bits; the portable path rounds the product
//! before adding it (a separate multiply and add, which every target runs
//! fast), so it may differ from them in the last bits.

use half::{f16, slice::HalfFloatSliceExt};

use super::Isa;

/// Lanes of partial sums: four AVX2 registers, eight NEON ones.
pub(super) const LANES: usize = 32;

/// An element type a weight row is stored in, widened to f32 on reading.
pub(crate) trait Element: Copy + Default + Send + Sync + 'static {
    /// The element as an f32.
    fn widen(self) -> f32;

    /// Widens `from` into `to` (as long).
    fn widen_slice(from: &[Self], to: &mut [f32]) {
        for (to, &from) in to.iter_mut().zip(from) {
            *to = from.widen();
        }
    }

    /// Eight elements from `p` on, as eight f32 lanes.
    ///
    /// # Safety
    /// `p` must point at eight readable elements, and the CPU must have
    /// AVX2 and F16C.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load8_avx2(p: *const Self) -> std::arch::x86_64::__m256;

    /// Eight elements from `p` on, as two vectors of four f32 lanes.
    ///
    /// # Safety
    /// `p` must point at eight readable elements, and the CPU must have
    /// NEON.
    #[cfg(target_arch = "aarch64")]
    unsafe fn load8_neon(p: *const Self) -> [std::arch::aarch64::float32x4_t; 2];
}

impl Element for f32 {
    fn widen(self) -> f32 {
        self
    }

    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn load8_avx2(p: *const f32) -> std::arch::x86_64::__m256 {
        // SAFETY: the caller guarantees eight readable f32s at `p`; the
        // load is unaligned.
        unsafe { std::arch::x86_64::_mm256_loadu_ps(p) }
    }

    #[cfg(target_arch = "aarch64")]
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn load8_neon(p: *const f32) -> [std::arch::aarch64::float32x4_t; 2] {
        use std::arch::aarch64::vld1q_f32;
        // SAFETY: the caller guarantees eight readable f32s at `p`.
        unsafe { [vld1q_f32(p), vld1q_f32(p.add(4))] }
    }
}

impl Element for f16 {
    fn widen(self) -> f32 {
        self.to_f32()
    }

    fn widen_slice(from: &[f16], to: &mut [f32]) {
        // `half`'s conversion uses F16C or NEON where the CPU has them.
        from.convert_to_f32_slice(to);
    }

    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn load8_avx2(p: *const f16) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::{_mm256_cvtph_ps, _mm_loadu_si128};
        // SAFETY: the caller guarantees eight readable fp16s (16 bytes) at
        // `p`; the load is unaligned; F16C widens them.
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.cast())) }
    }

    #[cfg(target_arch = "aarch64")]
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn load8_neon(p: *const f16) -> [std::arch::aarch64::float32x4_t; 2] {
        use std::arch::aarch64::{float32x4_t, vld1q_u16};
        use std::arch::asm;
        // SAFETY: the caller guarantees eight readable fp16s at `p`
        // (`f16` is a transparent `u16`).
        let halves = unsafe { vld1q_u16(p.cast()) };
        let (low, high): (float32x4_t, float32x4_t);
        // SAFETY: `fcvtl` and `fcvtl2` widen the low and the high four fp16
        // lanes of a register to f32; they touch no memory, stack or flags,
        // and every aarch64 CPU has them (base FP/SIMD).
        unsafe {
            asm!(
                "fcvtl {low:v}.4s, {src:v}.4h",
                "fcvtl2 {high:v}.4s, {src:v}.8h",
                src = in(vreg) halves,
                low = out(vreg) low,
                high = out(vreg) high,
                options(pure, nomem, nostack, preserves_flags),
            );
        }
        [low, high]
    }
}

/// Adds the 32 partial sums in a fixed tree: lane `i` of the four groups of
/// eight, then halves of the eight, then of the four, then the two. This is
/// the order the AVX2 registers reduce in.
pub(super) fn reduce32(lanes: &[f32; LANES]) -> f32 {
    let mut eight = [0.0f32; 8];
    for (i, e) in eight.iter_mut().enumerate() {
        *e = (lanes[i] + lanes[8 + i]) + (lanes[16 + i] + lanes[24 + i]);
    }
    let four: [f32; 4] = std::array::from_fn(|i| eight[i] + eight[i + 4]);
    let two: [f32; 2] = std::array::from_fn(|i| four[i] + four[i + 2]);
    two[0] + two[1]
}

/// `[w · x[0], ..., w · x[R-1]]`, each `x[r]` as long as `w`, on `isa`.
pub(super) fn dots<W: Element, const R: usize>(isa: Isa, w: &[W], x: [&[f32]; R]) -> [f32; R] {
    debug_assert!(x.iter().all(|x| x.len() == w.len()));
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2` and `Isa::Avx512` are only chosen
        // (`Isa::detect`, and the tests forcing them) when the CPU has AVX2,
        // FMA and F16C.
        Isa::Avx2 | Isa::Avx512 => unsafe { x86::dots(w, x) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: `Isa::Neon` is only chosen when the CPU has NEON (every
        // aarch64 CPU this crate targets; detected all the same).
        Isa::Neon => unsafe { arm::dots(w, x) },
        Isa::Portable => portable(w, x),
    }
}

/// The portable path: the same lanes and tree, a separate multiply and add.
fn portable<W: Element, const R: usize>(w: &[W], x: [&[f32]; R]) -> [f32; R] {
    let mut acc = [[0.0f32; LANES]; R];
    for (k, chunk) in w.chunks(LANES).enumerate() {
        let base = k * LANES;
        for (lane, &wv) in chunk.iter().enumerate() {
            let wv = wv.widen();
            for (acc, x) in acc.iter_mut().zip(&x) {
                acc[lane] += wv * x[base + lane];
            }
        }
    }
    acc.map(|lanes| reduce32(&lanes))
}

/// The tail of a row (what follows its last whole 32 elements) padded
/// with zeros to 32, for the SIMD paths (a zero product leaves a partial
/// sum as it is).
struct Tail<W, const R: usize> {
    w: [W; LANES],
    x: [[f32; LANES]; R],
}

impl<W: Element, const R: usize> Tail<W, R> {
    fn of(w: &[W], x: &[&[f32]; R], full: usize) -> Self {
        let mut tail = Tail {
            w: [W::default(); LANES],
            x: [[0.0; LANES]; R],
        };
        let n = w.len() - full;
        tail.w[..n].copy_from_slice(&w[full..]);
        for (t, x) in tail.x.iter_mut().zip(x) {
            t[..n].copy_from_slice(&x[full..]);
        }
        tail
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) use x86::reduce32_avx2;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::{
        __m256, _mm256_add_ps, _mm256_castps256_ps128, _mm256_extractf128_ps, _mm_add_ps,
        _mm_add_ss, _mm_cvtss_f32, _mm_movehl_ps, _mm_shuffle_ps,
    };
    use std::arch::x86_64::{
        _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_setzero_ps, _mm_prefetch, _MM_HINT_T1,
    };

    use super::{Element, Tail, LANES};

    /// How many bytes ahead of the row it reads a dot product asks for the
    /// weight (into L2): enough for one core to keep the misses in flight
    /// that stream it at the memory's bandwidth (measured: 8 KiB reached
    /// about half of it on the guide's fp16 base, 32 KiB all).
    const PREFETCH: usize = 32768;

    /// The 32 partial sums of four accumulators (lanes `8j..8j + 8` in
    /// `acc[j]`) added in [`reduce32`](super::reduce32)'s tree, in
    /// registers: the same additions in the same order, so the same bits.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(crate) fn reduce32_avx2(acc: [__m256; 4]) -> f32 {
        let eight = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let four = _mm_add_ps(
            _mm256_castps256_ps128(eight),
            _mm256_extractf128_ps::<1>(eight),
        );
        let two = _mm_add_ps(four, _mm_movehl_ps(four, four));
        _mm_cvtss_f32(_mm_add_ss(two, _mm_shuffle_ps::<1>(two, two)))
    }

    /// # Safety
    /// The CPU must have AVX2, FMA and F16C; every `x[r]` is as long as `w`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dots<W: Element, const R: usize>(w: &[W], x: [&[f32]; R]) -> [f32; R] {
        let n = w.len();
        let full = n - n % LANES;
        let tail = Tail::of(w, &x, full);
        let mut acc = [[_mm256_setzero_ps(); 4]; R];
        for k in (0..n).step_by(LANES) {
            // 32 elements of the row and of each vector: in place, or the
            // padded tail.
            let (wp, xp): (*const W, [*const f32; R]) = if k < full {
                // SAFETY: k < full, so k + 32 <= n: in bounds of `w` and of
                // every `x[r]`.
                unsafe {
                    (
                        w.as_ptr().add(k),
                        std::array::from_fn(|r| x[r].as_ptr().add(k)),
                    )
                }
            } else {
                (tail.w.as_ptr(), std::array::from_fn(|r| tail.x[r].as_ptr()))
            };
            // SAFETY: `wp` and every `xp[r]` point at 32 readable elements
            // (above); the CPU has the features (the caller).
            unsafe {
                _mm_prefetch::<_MM_HINT_T1>(wp.cast::<i8>().wrapping_add(PREFETCH));
                let wv = [
                    W::load8_avx2(wp),
                    W::load8_avx2(wp.add(8)),
                    W::load8_avx2(wp.add(16)),
                    W::load8_avx2(wp.add(24)),
                ];
                for (acc, xp) in acc.iter_mut().zip(xp) {
                    for (j, a) in acc.iter_mut().enumerate() {
                        *a = _mm256_fmadd_ps(wv[j], _mm256_loadu_ps(xp.add(8 * j)), *a);
                    }
                }
            }
        }
        acc.map(|acc| reduce32_avx2(acc))
    }
}

/// Rows `rows` (each at least `k0 + kc` long) widened into a packed panel
/// of the matrix product's `B`: `panel[k * 16 + j] = rows[j][k0 + k]`, for
/// sixteen rows and `kc` a multiple of 8, on the AVX2 path: eight elements
/// of each row widened, then two 8 × 8 transposes in registers.
///
/// # Safety
/// The CPU must have AVX2 and F16C; `kc` is a multiple of 8 and `panel`
/// holds `kc * 16` elements.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn pack_panel_avx2<W: Element>(
    rows: [&[W]; 16],
    k0: usize,
    kc: usize,
    panel: &mut [f32],
) {
    use std::arch::x86_64::{
        __m256, _mm256_permute2f128_ps, _mm256_shuffle_ps, _mm256_storeu_ps, _mm256_unpackhi_ps,
        _mm256_unpacklo_ps,
    };
    /// Row `t` of the result is column `t` of `r`.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
        let t: [__m256; 8] = std::array::from_fn(|i| {
            let (a, b) = (r[2 * (i / 2)], r[2 * (i / 2) + 1]);
            if i % 2 == 0 {
                _mm256_unpacklo_ps(a, b)
            } else {
                _mm256_unpackhi_ps(a, b)
            }
        });
        // u[0..4]: columns 0, 1, 2, 3 (and 4..8 in the high halves) of rows
        // 0..4; u[4..8] the same of rows 4..8.
        let u: [__m256; 8] = std::array::from_fn(|i| {
            let half = 4 * (i / 4);
            let (a, b) = match i % 4 {
                0 | 1 => (t[half], t[half + 2]),
                _ => (t[half + 1], t[half + 3]),
            };
            if i % 2 == 0 {
                _mm256_shuffle_ps::<0x44>(a, b)
            } else {
                _mm256_shuffle_ps::<0xEE>(a, b)
            }
        });
        std::array::from_fn(|c| {
            if c < 4 {
                _mm256_permute2f128_ps::<0x20>(u[c], u[c + 4])
            } else {
                _mm256_permute2f128_ps::<0x31>(u[c - 4], u[c])
            }
        })
    }
    debug_assert!(kc.is_multiple_of(8) && panel.len() >= kc * 16);
    debug_assert!(rows.iter().all(|r| r.len() >= k0 + kc));
    for k in (0..kc).step_by(8) {
        for half in 0..2 {
            // SAFETY: each row holds `k0 + kc` elements (the caller), so the
            // eight from `k0 + k` are inside it; the CPU has the features.
            let r: [__m256; 8] = std::array::from_fn(|j| unsafe {
                W::load8_avx2(rows[8 * half + j].as_ptr().add(k0 + k))
            });
            for (t, column) in transpose8(r).into_iter().enumerate() {
                // SAFETY: `(k + t) * 16 + 8 * half + 8 <= kc * 16`, inside
                // `panel` (the caller).
                unsafe {
                    _mm256_storeu_ps(panel.as_mut_ptr().add((k + t) * 16 + 8 * half), column)
                };
            }
        }
    }
}

#[cfg(target_arch = "aarch64")]
mod arm {
    use std::arch::aarch64::{vdupq_n_f32, vfmaq_f32, vld1q_f32, vst1q_f32};

    use super::{reduce32, Element, Tail, LANES};

    /// # Safety
    /// The CPU must have NEON; every `x[r]` is as long as `w`.
    #[target_feature(enable = "neon")]
    pub(super) unsafe fn dots<W: Element, const R: usize>(w: &[W], x: [&[f32]; R]) -> [f32; R] {
        let n = w.len();
        let full = n - n % LANES;
        let tail = Tail::of(w, &x, full);
        let mut acc = [[vdupq_n_f32(0.0); 8]; R];
        for k in (0..n).step_by(LANES) {
            let (wp, xp): (*const W, [*const f32; R]) = if k < full {
                // SAFETY: k < full, so k + 32 <= n: in bounds of `w` and of
                // every `x[r]`.
                unsafe {
                    (
                        w.as_ptr().add(k),
                        std::array::from_fn(|r| x[r].as_ptr().add(k)),
                    )
                }
            } else {
                (tail.w.as_ptr(), std::array::from_fn(|r| tail.x[r].as_ptr()))
            };
            // SAFETY: `wp` and every `xp[r]` point at 32 readable elements
            // (above); the CPU has NEON (the caller).
            unsafe {
                for q in 0..4 {
                    let [low, high] = W::load8_neon(wp.add(8 * q));
                    for (acc, xp) in acc.iter_mut().zip(xp) {
                        acc[2 * q] = vfmaq_f32(acc[2 * q], low, vld1q_f32(xp.add(8 * q)));
                        acc[2 * q + 1] =
                            vfmaq_f32(acc[2 * q + 1], high, vld1q_f32(xp.add(8 * q + 4)));
                    }
                }
            }
        }
        acc.map(|acc| {
            let mut lanes = [0.0f32; LANES];
            for (q, a) in acc.iter().enumerate() {
                // SAFETY: lanes 4q..4q+4 are inside the 32 of `lanes`.
                unsafe { vst1q_f32(lanes.as_mut_ptr().add(4 * q), *a) };
            }
            reduce32(&lanes)
        })
    }
}
