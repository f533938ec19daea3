//! The vector-matrix products `z += x · w` as AXPYs over the rows of `w`:
//!
//! - [`vec_mat`], the sequence driver's batch-1 product: four rows of `w` a pass, fused
//!   multiply-adds where the CPU has them, its columns split between threads when that pays
//!   (faster than a `gemm` call at one row);
//! - the sampler's exact-order products ([`vec_mat_in_order`], [`mat_rows_in_order`] and their
//!   forms for 16-bit weights, f16 or bf16 ([`Half`])): every sum runs over the rows of `w` one at a time, in order, each product
//!   rounded before it is added (unfused), so that a step's logits, and the text sampled from
//!   them, are the same on every CPU and for one row or several. The one exception is the
//!   batch-1 f16 product on AVX-512, which fuses its multiply-adds.

use rayon::prelude::*;

use super::activation::madd;
use super::simd::{dispatch, simd_level, Simd};

/// A 16-bit float format the sampler may keep its weights in (computing in f32): IEEE half
/// precision (f16: 10-bit mantissa, range ±65504) or bfloat16 (bf16: 7-bit mantissa, f32's
/// range). Either halves the bytes a character streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Half {
    /// IEEE 754 binary16.
    F16,
    /// bfloat16: f32's upper 16 bits.
    Bf16,
}

impl Half {
    /// `v` rounded to this format (to nearest, ties to even), as bits.
    pub fn from_f32(self, v: f32) -> u16 {
        match self {
            Half::F16 => half::f16::from_f32(v).to_bits(),
            Half::Bf16 => half::bf16::from_f32(v).to_bits(),
        }
    }

    /// The value of `bits` in this format (exact).
    #[inline(always)]
    pub fn to_f32(self, bits: u16) -> f32 {
        match self {
            Half::F16 => half::f16::from_bits(bits).to_f32(),
            Half::Bf16 => f32::from_bits((bits as u32) << 16),
        }
    }
}

/// Elements of `w_hh` below which the batch-1 product stays on one thread.
const PAR_MIN_WEIGHTS: usize = 1 << 18;

/// `z [N] += x [H] · w_hh [H, N]` at batch 1, as AXPYs over the contiguous rows of `w_hh`; the
/// columns are split between threads when that pays. The width `N` is `z.len()` (`4H` for the
/// LSTM, `3H` for the GRU, `H` for the plain RNN).
pub(super) fn vec_mat(
    simd: Simd,
    h: usize,
    x: &[f32],
    w_hh: &[f32],
    z: &mut [f32],
    threaded: bool,
) {
    let n = z.len();
    let threads = rayon::current_num_threads();
    if !threaded || threads < 2 || h * n < PAR_MIN_WEIGHTS {
        return axpy_block(simd, &x[..h], w_hh, n, &mut z[..n]);
    }
    // Whole 64-byte lines per thread.
    let cols = n.div_ceil(threads).next_multiple_of(16);
    z[..n]
        .par_chunks_mut(cols)
        .enumerate()
        .for_each(|(blk, z)| axpy_block(simd, &x[..h], &w_hh[blk * cols..], n, z));
}

dispatch! {
    /// [`axpy_block_impl`] for `simd`.
    pub(super) fn axpy_block => axpy_block_impl(x: &[f32], w: &[f32], ld: usize, z: &mut [f32])
}

/// `z [n] += Σ_k x[k] · w[k·ld .. k·ld + n]`.
#[inline(always)]
fn axpy_block_impl<const FMA: bool>(x: &[f32], w: &[f32], ld: usize, z: &mut [f32]) {
    let n = z.len();
    let mut k = 0;
    // Four rows per pass over z, to cut its loads and stores fourfold.
    while k + 4 <= x.len() {
        let r0 = &w[k * ld..][..n];
        let r1 = &w[(k + 1) * ld..][..n];
        let r2 = &w[(k + 2) * ld..][..n];
        let r3 = &w[(k + 3) * ld..][..n];
        let (a0, a1, a2, a3) = (x[k], x[k + 1], x[k + 2], x[k + 3]);
        for j in 0..n {
            let s = madd::<FMA>(a1, r1[j], a0 * r0[j]);
            let s = madd::<FMA>(a2, r2[j], s);
            let s = madd::<FMA>(a3, r3[j], s);
            z[j] += s;
        }
        k += 4;
    }
    while k < x.len() {
        let (row, a) = (&w[k * ld..][..n], x[k]);
        for j in 0..n {
            z[j] = madd::<FMA>(a, row[j], z[j]);
        }
        k += 1;
    }
}

/// Rows of a batch that one pass of [`mat_rows_in_order`] covers: their slice of `out`
/// (`[16, 4·256]` f32, 64 KiB, for half of a 512-unit layer) stays in the core's L2 cache while
/// the weights stream past. More rows take further passes, each reading the weights again.
const ROW_BLOCK: usize = 16;

/// Weight rows taken together by [`mat_rows_in_order`]: each pass over a row of `out` adds four
/// products, which cuts the loads and stores of `out` fourfold.
const K_BLOCK: usize = 4;

/// `out [n] += x [k] · w [k, n]` (row-major), one row of `w` after the other and unfused: the
/// sampler's batch-1 product with f32 weights.
///
/// # Panics
///
/// Panics if `w` is shorter than `[k, n]`.
pub fn vec_mat_in_order(x: &[f32], w: &[f32], out: &mut [f32]) {
    assert!(w.len() >= x.len() * out.len(), "w must be [k, n]");
    rows_in_order(simd_level(), x, w, out)
}

dispatch! {
    /// [`rows_in_order_impl`] for `simd`.
    fn rows_in_order => rows_in_order_impl(x: &[f32], w: &[f32], out: &mut [f32])
}

/// `out += x · w`, one contiguous row of `w` per element of `x`, which the compiler vectorises
/// (the same sums on every instruction set: Rust never fuses `a * b + c`).
#[inline(always)]
fn rows_in_order_impl<const FMA: bool>(x: &[f32], w: &[f32], out: &mut [f32]) {
    let n = out.len();
    for (xk, row) in x.iter().zip(w.chunks_exact(n)) {
        for (o, &wv) in out.iter_mut().zip(row) {
            *o += xk * wv;
        }
    }
}

/// `out [n] += x [k] · w [k, n]` with `w` in `half` bits, one row of `w` after the other: the
/// sampler's batch-1 product with 16-bit weights. AVX-512 converts 16 weights at a time (and
/// fuses each f16 multiply-add, so those sums differ from the others' in the last bits); AVX2
/// converts 8 at a time (F16C for f16, a shift for bf16) and adds as the plain loop does.
///
/// # Panics
///
/// Panics if `w` is shorter than `[k, n]`.
pub fn vec_mat_in_order_half(half: Half, x: &[f32], w: &[u16], out: &mut [f32]) {
    assert!(w.len() >= x.len() * out.len(), "w must be [k, n]");
    match (simd_level(), half) {
        // SAFETY: simd_level only reports instruction sets this CPU has, and `w` holds
        // `x.len() · out.len()` values (asserted above), which is what the function reads.
        #[cfg(target_arch = "x86_64")]
        (Simd::Avx512, Half::F16) => unsafe { f16_rows_avx512(x, w, out) },
        // SAFETY: as above (the AVX2 level includes F16C).
        #[cfg(target_arch = "x86_64")]
        (Simd::Avx2, Half::F16) => unsafe { f16_rows_f16c(x, w, out) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        (Simd::Avx512, Half::Bf16) => unsafe { bf16_rows_avx512(x, w, out) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        (Simd::Avx2, Half::Bf16) => unsafe { bf16_rows_avx2(x, w, out) },
        (Simd::Base, _) => {
            let n = out.len();
            for (xk, row) in x.iter().zip(w.chunks_exact(n)) {
                for (o, &wv) in out.iter_mut().zip(row) {
                    *o += xk * half.to_f32(wv);
                }
            }
        }
    }
}

/// Defines `$name(x, w, out)`, [`vec_mat_in_order_half`] for the format `$half` compiled for
/// `$features`: for each row of `w`, the expression `$add` adds `xk ·` its `$lanes` weights at
/// `wk` (16-bit) to the `$lanes` sums at `o`, block after block; the columns left over are added
/// plainly.
macro_rules! half_rows {
    (
        $name:ident, $half:expr, $features:literal, $lanes:literal,
        |$xk:ident, $wk:ident, $o:ident| $add:expr
    ) => {
        /// `out += x · w` with `w` `[x.len(), out.len()]` in 16-bit floats.
        ///
        /// # Safety
        ///
        /// The CPU must have the instruction sets `$features` names, and `w` must hold at
        /// least `x.len() · out.len()` values.
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        unsafe fn $name(x: &[f32], w: &[u16], out: &mut [f32]) {
            use std::arch::x86_64::*;
            let n = out.len();
            let blocks = n / $lanes;
            for (k, &$xk) in x.iter().enumerate() {
                // Row k is `w[k·n .. (k + 1)·n]`, inside `w` by the contract; each block reads
                // and writes `$lanes` values at `$lanes·b`, with `$lanes·(b + 1) ≤ n`, inside
                // the row and `out`; the columns past the blocks are read at `j < n`.
                let row = w.as_ptr().add(k * n);
                for b in 0..blocks {
                    let ($wk, $o) = (row.add($lanes * b), out.as_mut_ptr().add($lanes * b));
                    $add;
                }
                for (j, o) in out.iter_mut().enumerate().skip($lanes * blocks) {
                    *o += $xk * $half.to_f32(*row.add(j));
                }
            }
        }
    };
}

// AVX-512: 16 weights converted at a time, each multiply-add fused.
half_rows!(f16_rows_avx512, Half::F16, "avx512f", 16, |xk, wk, o| {
    let wv = _mm512_cvtph_ps(_mm256_loadu_si256(wk as *const __m256i));
    _mm512_storeu_ps(
        o,
        _mm512_fmadd_ps(_mm512_set1_ps(xk), wv, _mm512_loadu_ps(o)),
    )
});

// F16C: 8 weights converted at a time; the product and the sum are separate instructions, as in
// the plain loop, so the sums are the same.
half_rows!(f16_rows_f16c, Half::F16, "avx,f16c", 8, |xk, wk, o| {
    let wv = _mm256_cvtph_ps(_mm_loadu_si128(wk as *const __m128i));
    _mm256_storeu_ps(
        o,
        _mm256_add_ps(_mm256_loadu_ps(o), _mm256_mul_ps(_mm256_set1_ps(xk), wv)),
    )
});

// bf16 with AVX-512: 16 weights widened to f32 (zero-extended, shifted into the upper half); the
// product and the sum separate, as in the plain loop, so the sums are the same on every CPU.
half_rows!(bf16_rows_avx512, Half::Bf16, "avx512f", 16, |xk, wk, o| {
    let bits = _mm512_cvtepu16_epi32(_mm256_loadu_si256(wk as *const __m256i));
    let wv = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(bits));
    _mm512_storeu_ps(
        o,
        _mm512_add_ps(_mm512_loadu_ps(o), _mm512_mul_ps(_mm512_set1_ps(xk), wv)),
    )
});

// bf16 with AVX2: 8 weights widened at a time, the product and the sum separate.
half_rows!(bf16_rows_avx2, Half::Bf16, "avx2", 8, |xk, wk, o| {
    let bits = _mm256_cvtepu16_epi32(_mm_loadu_si128(wk as *const __m128i));
    let wv = _mm256_castsi256_ps(_mm256_slli_epi32::<16>(bits));
    _mm256_storeu_ps(
        o,
        _mm256_add_ps(_mm256_loadu_ps(o), _mm256_mul_ps(_mm256_set1_ps(xk), wv)),
    )
});

/// `out[r] += x[r] · w` for each of the `rows` rows of `x` (`[rows, k]`) and `out` (`[rows, n]`),
/// `w` `[k, n]` row-major: the sampler's product for several rows with f32 weights. Blocks of
/// `K_BLOCK` rows of `w` come outermost and the rows of `x` inside, so each weight is read from
/// memory once per `ROW_BLOCK` rows; each sum still runs over `k` in order and unfused, so each
/// row gets [`vec_mat_in_order`]'s result to the last bit.
///
/// # Panics
///
/// Panics if `w` is not `[k, n]`.
pub fn mat_rows_in_order(x: &[f32], w: &[f32], out: &mut [f32], rows: usize) {
    let (k, n) = (x.len() / rows, out.len() / rows);
    assert_eq!(w.len(), k * n, "w must be [k, n]");
    let simd = simd_level();
    for (x, out) in x.chunks(ROW_BLOCK * k).zip(out.chunks_mut(ROW_BLOCK * n)) {
        for (b, w) in w.chunks(K_BLOCK * n).enumerate() {
            rows_block(simd, x, k, b * K_BLOCK, w, out, n);
        }
    }
}

/// [`mat_rows_in_order`] with `w` in `half` bits: each block of `K_BLOCK` weight rows is
/// converted to f32 in `buf` once, then serves every row of `x`. Each row gets
/// [`vec_mat_in_order_half`]'s result to the last bit, but with f16 on AVX-512, whose batch-1
/// product fuses.
///
/// # Panics
///
/// Panics if `w` is not `[k, n]`.
pub fn mat_rows_in_order_half(
    half: Half,
    x: &[f32],
    w: &[u16],
    out: &mut [f32],
    rows: usize,
    buf: &mut Vec<f32>,
) {
    let (k, n) = (x.len() / rows, out.len() / rows);
    assert_eq!(w.len(), k * n, "w must be [k, n]");
    let simd = simd_level();
    buf.resize(K_BLOCK * n, 0.0);
    for (x, out) in x.chunks(ROW_BLOCK * k).zip(out.chunks_mut(ROW_BLOCK * n)) {
        for (b, w) in w.chunks(K_BLOCK * n).enumerate() {
            let buf = &mut buf[..w.len()];
            match half {
                Half::F16 => f16_to_f32(simd, w, buf),
                Half::Bf16 => bf16_to_f32(simd, w, buf),
            }
            rows_block(simd, x, k, b * K_BLOCK, buf, out, n);
        }
    }
}

dispatch! {
    /// bf16 bits to f32 (exact), vectorized for `simd`.
    fn bf16_to_f32 => bf16_to_f32_impl(src: &[u16], dst: &mut [f32])
}

/// bf16 bits to f32: each value's bits shifted into the upper half of an f32's.
#[inline(always)]
fn bf16_to_f32_impl<const FMA: bool>(src: &[u16], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len());
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = Half::Bf16.to_f32(s);
    }
}

/// f16 bits to f32 (exact): 8 at a time with F16C where the CPU has it.
fn f16_to_f32(simd: Simd, src: &[u16], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len());
    #[cfg(target_arch = "x86_64")]
    if simd != Simd::Base {
        // SAFETY: the AVX2 and AVX-512 levels include F16C (and AVX); `dst` is as long as
        // `src` (asserted above).
        return unsafe { f16_to_f32_f16c(src, dst) };
    }
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = Half::F16.to_f32(s);
    }
}

/// [`f16_to_f32`] with F16C, 8 values at a time.
///
/// # Safety
///
/// The CPU must have AVX and F16C, and `dst` must be at least as long as `src`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,f16c")]
unsafe fn f16_to_f32_f16c(src: &[u16], dst: &mut [f32]) {
    use std::arch::x86_64::*;
    let blocks = src.len() / 8;
    // Block b reads `src[8b .. 8b + 8]` and writes `dst[8b .. 8b + 8]`, with 8b + 8 ≤ src.len()
    // ≤ dst.len().
    for b in 0..blocks {
        let v = _mm_loadu_si128(src.as_ptr().add(8 * b) as *const __m128i);
        _mm256_storeu_ps(dst.as_mut_ptr().add(8 * b), _mm256_cvtph_ps(v));
    }
    for (d, &s) in dst.iter_mut().zip(src).skip(8 * blocks) {
        *d = Half::F16.to_f32(s);
    }
}

dispatch! {
    /// [`rows_block_impl`] for `simd`.
    fn rows_block => rows_block_impl(
        x: &[f32], k: usize, k0: usize, w: &[f32], out: &mut [f32], n: usize,
    )
}

/// `out[r] += Σ_i x[r·k + k0 + i] · w[i·n .. (i + 1)·n]` for every row `r` of `out` (`[rows, n]`),
/// with `w` up to [`K_BLOCK`] weight rows. The multiply-adds are not fused, as in
/// [`rows_in_order_impl`], so both give the same sums.
#[inline(always)]
fn rows_block_impl<const FMA: bool>(
    x: &[f32],
    k: usize,
    k0: usize,
    w: &[f32],
    out: &mut [f32],
    n: usize,
) {
    for (x, out) in x.chunks_exact(k).zip(out.chunks_exact_mut(n)) {
        let x = &x[k0..];
        if w.len() == 4 * n {
            let (w0, rest) = w.split_at(n);
            let (w1, rest) = rest.split_at(n);
            let (w2, w3) = rest.split_at(n);
            let (a0, a1, a2, a3) = (x[0], x[1], x[2], x[3]);
            for ((((o, &b0), &b1), &b2), &b3) in out.iter_mut().zip(w0).zip(w1).zip(w2).zip(w3) {
                let mut s = *o;
                s += a0 * b0;
                s += a1 * b1;
                s += a2 * b2;
                s += a3 * b3;
                *o = s;
            }
        } else {
            rows_in_order_impl::<FMA>(x, w, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::Lcg;

    /// `out[r] += x[r] · w` by the plain loop, one weight row after the other.
    fn plain(x: &[f32], w: &[f32], out: &[f32], n: usize) -> Vec<u32> {
        let (k, mut out) = (w.len() / n, out.to_vec());
        for (x, out) in x.chunks(k).zip(out.chunks_mut(n)) {
            for (xk, row) in x.iter().zip(w.chunks(n)) {
                for (o, wv) in out.iter_mut().zip(row) {
                    *o += xk * wv;
                }
            }
        }
        out.iter().map(|v| v.to_bits()).collect()
    }

    /// The sampler's products give the plain loop's sums to the last bit, at one row and at
    /// several (more than a row block, `k` not a multiple of the weight-row block), with f32,
    /// f16 and bf16 weights; only the batch-1 f16 product on AVX-512 fuses, and differs in the
    /// last bits.
    #[test]
    fn in_order_products_are_the_plain_loop_bit_for_bit() {
        let mut rng = Lcg(9);
        let (rows, k, n) = (ROW_BLOCK + 3, 4 * K_BLOCK + 1, 45);
        let (x, w, out0) = (
            rng.vec(rows * k, 1.0),
            rng.vec(k * n, 1.0),
            rng.vec(rows * n, 1.0),
        );
        let bits = |v: Vec<f32>| v.iter().map(|v| v.to_bits()).collect::<Vec<u32>>();
        let one_by_one = |f: &dyn Fn(&[f32], &mut [f32])| {
            let mut out = out0.clone();
            for (x, out) in x.chunks(k).zip(out.chunks_mut(n)) {
                f(x, out);
            }
            out
        };

        let want = plain(&x, &w, &out0, n);
        let one = one_by_one(&|x, out| vec_mat_in_order(x, &w, out));
        assert_eq!(bits(one), want, "f32, one row");
        let mut batched = out0.clone();
        mat_rows_in_order(&x, &w, &mut batched, rows);
        assert_eq!(bits(batched), want, "f32, {rows} rows");

        for half in [Half::F16, Half::Bf16] {
            let w16: Vec<u16> = w.iter().map(|&v| half.from_f32(v)).collect();
            let w16_f32: Vec<f32> = w16.iter().map(|&b| half.to_f32(b)).collect();
            let want = plain(&x, &w16_f32, &out0, n);
            let mut batched = out0.clone();
            mat_rows_in_order_half(half, &x, &w16, &mut batched, rows, &mut Vec::new());
            assert_eq!(bits(batched), want, "{half:?}, {rows} rows");
            let one = one_by_one(&|x, out| vec_mat_in_order_half(half, x, &w16, out));
            if simd_level() == Simd::Avx512 && half == Half::F16 {
                for (&got, &want) in one.iter().zip(&want) {
                    let want = f32::from_bits(want);
                    assert!(
                        (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                        "{got} vs {want}"
                    );
                }
            } else {
                assert_eq!(bits(one), want, "{half:?}, one row");
            }
        }
    }

    /// bf16 rounds to nearest, ties to even, keeps f32's range, and reads back exactly.
    #[test]
    fn bf16_rounds_to_nearest_even_and_reads_back_exactly() {
        let h = Half::Bf16;
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to the even mantissa (1).
        assert_eq!(h.to_f32(h.from_f32(1.0 + 2f32.powi(-8))), 1.0);
        // 1 + 3·2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: to even (1 + 2^-6).
        assert_eq!(
            h.to_f32(h.from_f32(1.0 + 3.0 * 2f32.powi(-8))),
            1.0 + 2f32.powi(-6)
        );
        // Just above a tie rounds up.
        assert_eq!(
            h.to_f32(h.from_f32(1.0 + 2f32.powi(-8) + 2f32.powi(-20))),
            1.0 + 2f32.powi(-7)
        );
        // f32's range: 3e38 (beyond f16's 65504) stays finite, within bf16's precision.
        let big = h.to_f32(h.from_f32(3.0e38));
        assert!(
            big.is_finite() && (big - 3.0e38).abs() <= 3.0e38 * 2f32.powi(-8),
            "{big}"
        );
        let mut rng = Lcg(4);
        for v in rng.vec(1000, 100.0) {
            let r = h.to_f32(h.from_f32(v));
            assert!((r - v).abs() <= v.abs() * 2f32.powi(-8), "{v} -> {r}");
            assert_eq!(
                h.to_f32(h.from_f32(r)),
                r,
                "a bf16 value is its own rounding"
            );
        }
    }
}
