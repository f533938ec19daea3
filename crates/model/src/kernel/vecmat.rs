//! The batch-1 product `z += x · w` as AXPYs over the rows of `w`, its columns split between
//! threads when that pays (faster than a `gemm` call at one row).

use rayon::prelude::*;

use super::activation::madd;
use super::simd::{dispatch, Simd};

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
