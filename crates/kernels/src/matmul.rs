//! Matrix products: `gemm` on strided operands, and a right-hand matrix packed once for `gemm`'s
//! own microkernels ([`Packed`]) for the per-step products of a sequence; and a tiled transpose.

use gemm::{gemm, Parallelism};

use super::simd::Simd;

/// A matrix operand: pointer, row stride, column stride (in elements).
type Mat<P> = (P, usize, usize);

/// `dst [m, n] = (acc ? dst : 0) + lhs [m, k] · rhs [k, n]`, through `gemm`, on the thread pool
/// when `threaded` and the product is large enough.
///
/// # Safety
///
/// Every operand must be valid for its shape and strides; `dst` must not overlap the others.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: Mat<*mut f32>,
    acc: bool,
    lhs: Mat<*const f32>,
    rhs: Mat<*const f32>,
    threaded: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    // Tiny products are not worth waking the pool for (gemm also applies its own threshold).
    let par = if threaded && m * n * k >= 1 << 17 {
        Parallelism::Rayon(0)
    } else {
        Parallelism::None
    };
    // gemm computes dst := alpha·dst + beta·lhs·rhs (alpha is ignored when read_dst is false).
    gemm(
        m,
        n,
        k,
        dst.0,
        dst.2 as isize,
        dst.1 as isize,
        acc,
        lhs.0,
        lhs.2 as isize,
        lhs.1 as isize,
        rhs.0,
        rhs.2 as isize,
        rhs.1 as isize,
        1.0,
        1.0,
        false,
        false,
        false,
        par,
    );
}

/// A `gemm` microkernel: `dst [m, n] = (acc ? dst : 0) + lhs [m, k] · rhs [k, n]` for `m` up to
/// its panel height and `n` up to its width, with `gemm`'s argument order (the type of
/// `gemm_common::microkernel::MicroKernelFn<f32>`).
type MicroKernel = unsafe fn(
    usize,
    usize,
    usize,
    *mut f32,
    *const f32,
    *const f32,
    isize,
    isize,
    isize,
    isize,
    isize,
    f32,
    f32,
    u8,
    bool,
    bool,
    bool,
    *const f32,
);

/// The microkernels of one instruction set: `ukr[p - 1][q - 1]` takes `p` vectors of `lanes` rows
/// and `q` columns.
#[derive(Clone, Copy)]
struct MicroKernels {
    ukr: &'static [[MicroKernel; 6]],
    lanes: usize,
}

impl MicroKernels {
    /// The microkernels for `simd`, or `None` where `gemm` has none to call directly.
    fn new(simd: Simd) -> Option<Self> {
        match simd {
            #[cfg(target_arch = "x86_64")]
            Simd::Avx512 => Some(Self {
                ukr: &gemm_f32::microkernel::avx512f::f32::UKR,
                lanes: 16,
            }),
            #[cfg(target_arch = "x86_64")]
            Simd::Avx2 => Some(Self {
                ukr: &gemm_f32::microkernel::fma::f32::UKR,
                lanes: 8,
            }),
            Simd::Base => None,
        }
    }

    /// Rows of a panel.
    fn mr(&self) -> usize {
        self.ukr.len() * self.lanes
    }
}

/// A row-major `[k, n]` right-hand matrix packed once for the microkernels: panel `p` holds, for
/// each of the `k` rows, its `mr` columns from `p·mr` (zero-padded), contiguous.
///
/// `gemm` packs the weights again at every call, that is at every step of the recurrence (a
/// measurable part of a training step); or, below its size threshold, reads them unpacked with a stride of a whole
/// row per `k`, which is slower still. Packed once per sequence, every step streams them in order.
pub(super) struct Packed {
    kernels: MicroKernels,
    k: usize,
    n: usize,
    data: Vec<f32>,
}

impl Packed {
    fn new(kernels: MicroKernels, k: usize, n: usize, w: &[f32]) -> Self {
        let mr = kernels.mr();
        let panels = n.div_ceil(mr);
        let mut data = vec![0.0; panels * k * mr];
        for (p, panel) in data.chunks_exact_mut(k * mr).enumerate() {
            let cols = p * mr..(p * mr + mr).min(n);
            for (row, out) in panel.chunks_exact_mut(mr).enumerate() {
                out[..cols.len()].copy_from_slice(&w[row * n..][cols.clone()]);
            }
        }
        Self {
            kernels,
            k,
            n,
            data,
        }
    }

    /// `dst [rows, n] = (acc ? dst : 0) + a [rows, k] · w`, on this thread.
    pub(super) fn matmul(&self, dst: &mut [f32], acc: bool, a: &[f32]) {
        let (k, n, mr) = (self.k, self.n, self.kernels.mr());
        let rows = a.len() / k;
        assert_eq!(a.len(), rows * k, "a must be [rows, k]");
        assert_eq!(dst.len(), rows * n, "dst must be [rows, n]");
        let lanes = self.kernels.lanes;
        for (p, panel) in self.data.chunks_exact(k * mr).enumerate() {
            let m = mr.min(n - p * mr);
            let ukr_row = &self.kernels.ukr[m.div_ceil(lanes) - 1];
            for j0 in (0..rows).step_by(6) {
                let q = 6.min(rows - j0);
                // In the microkernel's terms this is dstᵀ = panelᵀ · aᵀ: its `m` runs along our
                // columns (stride 1), its `n` along our rows (stride n), and `a`'s rows are its
                // right-hand columns (stride k).
                // SAFETY: the microkernel reads the panel at `i·mr + c` (i < k, c < m ≤ mr),
                // inside its `k·mr` values; `a` at `(j0 + j)·k + i` (j < q), inside `a`'s
                // `rows·k` as j0 + q ≤ rows; and writes `dst` at `(j0 + j)·n + p·mr + c`, inside
                // `dst`'s `rows·n` as p·mr + m ≤ n (both lengths asserted above). Its last
                // argument (a prefetch hint) points into the panel. The microkernels are those
                // of an instruction set this CPU has (`MicroKernels::new` takes `simd_level`'s).
                unsafe {
                    ukr_row[q - 1](
                        m,
                        q,
                        k,
                        dst.as_mut_ptr().add(j0 * n + p * mr),
                        panel.as_ptr(),
                        a.as_ptr().add(j0 * k),
                        n as isize,
                        1,
                        mr as isize,
                        1,
                        k as isize,
                        1.0,
                        1.0,
                        acc as u8,
                        false,
                        false,
                        false,
                        panel.as_ptr(),
                    );
                }
            }
        }
    }
}

/// `w [k, n]` packed for the per-step products of a batch of `b` rows, when this CPU has
/// microkernels to call directly and the batch has more than one row (one row takes
/// [`vec_mat`]).
///
/// [`vec_mat`]: super::vecmat::vec_mat
pub(super) fn packed_weights(
    simd: Simd,
    b: usize,
    k: usize,
    n: usize,
    w: &[f32],
) -> Option<Packed> {
    if b < 2 {
        return None;
    }
    MicroKernels::new(simd).map(|kernels| Packed::new(kernels, k, n, w))
}

/// The transpose `[cols, rows]` of the row-major `[rows, cols]` matrix `a`, in cache-sized tiles.
pub fn transpose(rows: usize, cols: usize, a: &[f32]) -> Vec<f32> {
    const TILE: usize = 32;
    let mut out = vec![0.0; rows * cols];
    for r0 in (0..rows).step_by(TILE) {
        for c0 in (0..cols).step_by(TILE) {
            for r in r0..(r0 + TILE).min(rows) {
                for c in c0..(c0 + TILE).min(cols) {
                    out[c * rows + r] = a[r * cols + c];
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{assert_close, instruction_sets, product_f64, Lcg};

    #[test]
    fn transpose_moves_each_element_to_its_mirror() {
        let m = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]; // [2, 3]
        assert_eq!(transpose(2, 3, &m), [1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
        // Across and within its tiles: twice is the identity, and each element is where it goes.
        let (rows, cols) = (37, 70);
        let a = Lcg(5).vec(rows * cols, 1.0);
        let t = transpose(rows, cols, &a);
        assert!((0..rows).all(|r| (0..cols).all(|c| t[c * rows + r] == a[r * cols + c])));
        assert_eq!(transpose(cols, rows, &t), a);
    }

    #[test]
    fn packed_products_match_a_plain_product() {
        let sets: Vec<_> = instruction_sets()
            .into_iter()
            .filter_map(MicroKernels::new)
            .collect();
        let mut rng = Lcg(11);
        // Full and partial panels and column blocks, for both instruction sets' panel heights.
        for (rows, k, n) in [(7, 13, 37), (12, 5, 64), (2, 40, 130), (13, 64, 16)] {
            let (a, w) = (rng.vec(rows * k, 1.0), rng.vec(k * n, 1.0));
            let dst0 = rng.vec(rows * n, 1.0);
            let want = |acc: bool| {
                let add = if acc { &dst0[..] } else { &[] };
                product_f64(&a, &w, (k, n), (n, 1), add)
            };
            for &kernels in &sets {
                let packed = Packed::new(kernels, k, n, &w);
                for acc in [false, true] {
                    let mut dst = dst0.clone();
                    packed.matmul(&mut dst, acc, &a);
                    let name = format!("{rows}x{k}x{n} lanes {} acc {acc}", kernels.lanes);
                    assert_close(&name, &dst, &want(acc), 1e-4);
                }
            }
        }
    }
}
