//! The products of the sequence driver, independent of the cell: the per-step product with the
//! recurrent weights ([`StepWeights`]: packed once per sequence, the batch-1 product at one row,
//! `gemm` on a CPU without AVX2), the weight gradient summed over all steps at the end
//! ([`weight_grad`]), and the bias gradient's per-block sums ([`sum_parts`]).

use super::bf16::{self, Bf16Path, PackedA, PackedB, Strided};
use super::matmul::{matmul, packed_weights, transpose, Packed};
use super::simd::Simd;
use super::vecmat::vec_mat;

/// A recurrent weight matrix ready for a sequence's per-step products
/// `dst [rows, n] (+)= a [rows, k] · w [k, n]`: `w_hh [H, G·H]` itself (forward) or its transpose
/// (backward).
pub(super) struct StepWeights<'a> {
    simd: Simd,
    k: usize,
    n: usize,
    /// The row-major `[k, n]` matrix when there is one: `w_hh` itself, or its transposed copy.
    dense: Option<&'a [f32]>,
    /// The transposed copy `w_hhᵀ` the backward pass made (owned here).
    copy: Option<Vec<f32>>,
    /// `w_hh` itself.
    w_hh: &'a [f32],
    /// `dense` packed for the microkernels (products of two rows or more, AVX2 and up).
    packed: Option<Packed>,
    /// Whether a one-row product may take [`vec_mat`] (the forward pass).
    vec_mat: bool,
    /// The matrix in bf16, when the products take bf16 operands (every other way is then
    /// unused).
    bf16: Option<(Bf16Path, PackedB)>,
}

impl<'a> StepWeights<'a> {
    /// `w_hh [k, n]` for the forward products `h_{t-1} [rows, k] · w_hh` of a batch of `b` rows,
    /// in bf16 on the path `bf16` gives, if it gives one.
    ///
    /// # Panics
    ///
    /// Panics if `w_hh` is not `[k, n]`.
    pub(super) fn forward(
        simd: Simd,
        b: usize,
        k: usize,
        n: usize,
        w_hh: &'a [f32],
        bf16: Option<Bf16Path>,
    ) -> Self {
        assert_eq!(w_hh.len(), k * n, "w_hh must be [k, n]");
        if let Some(path) = bf16 {
            return Self::packed_bf16(simd, k, n, w_hh, (path, Strided::rows(w_hh, k, n)));
        }
        Self {
            simd,
            k,
            n,
            dense: Some(w_hh),
            copy: None,
            w_hh,
            packed: packed_weights(simd, b, k, n, w_hh),
            vec_mat: true,
            bf16: None,
        }
    }

    /// `w [k, n]` (`w_hh` or its transpose) packed in bf16 only, for products on `path`.
    fn packed_bf16(
        simd: Simd,
        k: usize,
        n: usize,
        w_hh: &'a [f32],
        (path, w): (Bf16Path, Strided),
    ) -> Self {
        Self {
            simd,
            k,
            n,
            dense: None,
            copy: None,
            w_hh,
            packed: None,
            vec_mat: false,
            bf16: Some((path, PackedB::new(w))),
        }
    }

    /// `w_hhᵀ [g, h]` (`w_hh` is `[h, g]`) for the backward products `dhp [rows, g] · w_hhᵀ` of a
    /// batch of `b` rows split into `parts` blocks.
    ///
    /// `gemm` multiplies by `w_hhᵀ` about twice as fast from a row-major copy as through
    /// transposed strides, which repays the copy many times over, unless every block is a single
    /// row (a matrix-vector product either way).
    ///
    /// # Panics
    ///
    /// Panics if `w_hh` is not `[h, g]`.
    pub(super) fn backward(
        simd: Simd,
        b: usize,
        parts: usize,
        h: usize,
        g: usize,
        w_hh: &'a [f32],
        bf16: Option<Bf16Path>,
    ) -> Self {
        assert_eq!(w_hh.len(), h * g, "w_hh must be [h, g]");
        if let Some(path) = bf16 {
            let w_t = Strided::transposed(w_hh, h, g);
            return Self::packed_bf16(simd, g, h, w_hh, (path, w_t));
        }
        let copy = (b > parts).then(|| transpose(h, g, w_hh));
        let packed = copy
            .as_ref()
            .and_then(|w_t| packed_weights(simd, b, g, h, w_t));
        Self {
            simd,
            k: g,
            n: h,
            dense: None,
            copy,
            w_hh,
            packed,
            vec_mat: false,
            bf16: None,
        }
    }

    /// `dst [rows, n] = (acc ? dst : 0) + a [rows, k] · w`; `threaded` lets a `gemm` or batch-1
    /// product use the thread pool (when the block is the whole batch).
    ///
    /// # Panics
    ///
    /// Panics if `a` is not `[rows, k]` or `dst` not `[rows, n]`.
    pub(super) fn product(&self, dst: &mut [f32], acc: bool, a: &[f32], threaded: bool) {
        let (k, n) = (self.k, self.n);
        let rows = a.len() / k;
        assert_eq!(a.len(), rows * k, "a must be [rows, k]");
        assert_eq!(dst.len(), rows * n, "dst must be [rows, n]");
        if let Some((path, w)) = &self.bf16 {
            let a = PackedA::new(Strided::rows(a, rows, k));
            return bf16::product(*path, dst, acc, &a, w, threaded);
        }
        if let (true, Some(w)) = (rows == 1 && self.vec_mat, self.dense) {
            if !acc {
                dst.fill(0.0);
            }
            return vec_mat(self.simd, k, a, w, dst, threaded);
        }
        if let Some(packed) = &self.packed {
            return packed.matmul(dst, acc, a);
        }
        let w = match (self.dense, &self.copy) {
            (Some(w), _) => (w, n, 1),
            (None, Some(w_t)) => (&w_t[..], n, 1),
            // w_hh [n, k] read through transposed strides.
            (None, None) => (self.w_hh, 1, k),
        };
        // SAFETY: `gemm` reads `a` at `r·k + i` (r < rows, i < k), `w` at `i·w.1 + j·w.2`
        // (j < n) and writes `dst` at `r·n + j`: inside `a` and `dst` by the asserts above, and
        // inside `w`, which `forward` and `backward` checked to be `k·n` long (a row-major
        // `[k, n]`, or `w_hh [n, k]` read through transposed strides, `j·k + i < n·k`). The
        // three do not overlap (`dst` is borrowed mutably). No instruction set is assumed:
        // `gemm` chooses its own at run time.
        unsafe {
            matmul(
                rows,
                n,
                k,
                (dst.as_mut_ptr(), n, 1),
                acc,
                (a.as_ptr(), k, 1),
                (w.0.as_ptr(), w.1, w.2),
                threaded,
            );
        }
    }
}

/// `dw [k, n] = Σ_t h_{t-1}ᵀ · g_t` over a sequence of `t` steps of `b` rows, with `h_{-1} = h0`:
/// one threaded product over all steps at once; in bf16 on the path given, if one is.
///
/// # Shapes
///
/// `h0` `[b, k]`, `hs` `[t, b, k]`, `g` `[t, b, n]`, `dw` `[k, n]` (written).
///
/// # Panics
///
/// Panics if a slice's length does not match.
#[allow(clippy::too_many_arguments)]
pub(super) fn weight_grad(
    t: usize,
    b: usize,
    k: usize,
    n: usize,
    h0: &[f32],
    hs: &[f32],
    g: &[f32],
    dw: &mut [f32],
    bf16: Option<Bf16Path>,
) {
    assert_eq!(h0.len(), b * k, "h0 must be [b, k]");
    assert_eq!(hs.len(), t * b * k, "hs must be [t, b, k]");
    assert_eq!(g.len(), t * b * n, "g must be [t, b, n]");
    assert_eq!(dw.len(), k * n, "dw must be [k, n]");
    if t == 0 {
        return dw.fill(0.0);
    }
    if let Some(path) = bf16 {
        let first = (
            Strided::transposed(h0, b, k),
            Strided::rows(&g[..b * n], b, n),
        );
        bf16::matmul_bf16(path, dw, false, first.0, first.1, true);
        if t > 1 {
            let rows = (t - 1) * b;
            let rest = Strided::transposed(&hs[..rows * k], rows, k);
            let g_rest = Strided::rows(&g[b * n..], rows, n);
            bf16::matmul_bf16(path, dw, true, rest, g_rest, true);
        }
        return;
    }
    // dw [k, n] = h0ᵀ [k, b] · g_0 [b, n] + hs[0..t-1]ᵀ [k, (t-1)b] · g[1..t] [(t-1)b, n]
    // SAFETY: the first product reads `h0` at `j·k + i` (`[b, k]` read as `h0ᵀ [k, b]`),
    // `g` at `j·n + c` (j < b) and writes `dw` at `i·n + c` (i < k, c < n); the second reads
    // `hs` at `j·k + i` for j < (t-1)·b and `g` from row `b` on, `(t-1)·b` rows of `n`: all
    // inside by the asserts above. `dw` is borrowed mutably, so nothing overlaps it. `gemm`
    // chooses its own instruction set at run time.
    unsafe {
        matmul(
            k,
            n,
            b,
            (dw.as_mut_ptr(), n, 1),
            false,
            (h0.as_ptr(), 1, k),
            (g.as_ptr(), n, 1),
            true,
        );
        if t > 1 {
            matmul(
                k,
                n,
                (t - 1) * b,
                (dw.as_mut_ptr(), n, 1),
                true,
                (hs.as_ptr(), 1, k),
                (g[b * n..].as_ptr(), n, 1),
                true,
            );
        }
    }
}

/// `out = Σ_p parts[p]`, the per-block partial sums of a bias gradient, in block order.
///
/// # Panics
///
/// Panics if `parts.len()` is not a multiple of `out.len()` (for a non-empty `out`).
pub(super) fn sum_parts(parts: &[f32], out: &mut [f32]) {
    out.fill(0.0);
    if out.is_empty() {
        return;
    }
    assert_eq!(parts.len() % out.len(), 0, "parts must be [p, n]");
    for part in parts.chunks_exact(out.len()) {
        for (o, &v) in out.iter_mut().zip(part) {
            *o += v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simd::simd_level;
    use crate::test_support::{assert_close, product_f64, Lcg};

    /// Every way of taking the per-step products (the batch-1 product, packed weights, `gemm` on
    /// `w_hh`, on its transposed copy and through transposed strides), on this CPU's instruction
    /// set and on the baseline, which has no packed path.
    #[test]
    fn step_products_match_a_plain_product() {
        let mut rng = Lcg(3);
        let (h, g) = (13, 39);
        let w_hh = rng.vec(h * g, 1.0);
        for simd in [Simd::Base, simd_level()] {
            for (b, parts, rows) in [(1, 1, 1), (2, 2, 1), (3, 1, 3), (5, 2, 2), (5, 2, 3)] {
                for acc in [false, true] {
                    // Forward: dst [rows, g] (+)= a [rows, h] · w_hh.
                    let w = StepWeights::forward(simd, b, h, g, &w_hh, None);
                    let (a, dst0) = (rng.vec(rows * h, 1.0), rng.vec(rows * g, 1.0));
                    let mut dst = dst0.clone();
                    w.product(&mut dst, acc, &a, true);
                    let add = if acc { &dst0[..] } else { &[] };
                    let want = product_f64(&a, &w_hh, (h, g), (g, 1), add);
                    let name = format!("{simd:?} b={b} rows={rows} acc={acc}");
                    assert_close(&format!("forward {name}"), &dst, &want, 1e-5);

                    // Backward: dst [rows, h] (+)= a [rows, g] · w_hhᵀ.
                    let w = StepWeights::backward(simd, b, parts, h, g, &w_hh, None);
                    let (a, dst0) = (rng.vec(rows * g, 1.0), rng.vec(rows * h, 1.0));
                    let mut dst = dst0.clone();
                    w.product(&mut dst, acc, &a, true);
                    let add = if acc { &dst0[..] } else { &[] };
                    let want = product_f64(&a, &w_hh, (g, h), (1, g), add);
                    assert_close(&format!("backward {name}"), &dst, &want, 1e-5);
                }
            }
        }
    }

    #[test]
    fn weight_grad_sums_over_steps() {
        let mut rng = Lcg(4);
        let (b, k, n) = (3, 5, 7);
        for t in [0, 1, 4] {
            let (h0, hs, g) = (
                rng.vec(b * k, 1.0),
                rng.vec(t * b * k, 1.0),
                rng.vec(t * b * n, 1.0),
            );
            let mut dw = vec![f32::NAN; k * n];
            weight_grad(t, b, k, n, &h0, &hs, &g, &mut dw, None);
            let want: Vec<f64> = (0..k * n)
                .map(|ij| {
                    let (i, j) = (ij / n, ij % n);
                    (0..t * b)
                        .map(|s| {
                            let prev = if s < b {
                                h0[s * k + i]
                            } else {
                                hs[(s - b) * k + i]
                            };
                            prev as f64 * g[s * n + j] as f64
                        })
                        .sum()
                })
                .collect();
            assert_close(&format!("t={t}"), &dw, &want, 1e-5);
        }
    }
}
