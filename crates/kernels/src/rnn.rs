//! The plain tanh RNN cell's maths (PyTorch's `nn.RNN(nonlinearity='tanh')`): the forward and
//! backward pointwise passes of a step over a block of rows, side by side, compiled per
//! instruction set; [`rnn_cell`], the forward cell alone for the sampler; and its tests against a
//! naive `f64` reference.
//!
//! For `t = 0..T` with `h_{-1} = h0`:
//!
//! ```text
//! h_t = tanh(xp[t] + h_{t-1} · w_hh + b_hh)      [B, H]
//! dz_t = dh ⊙ (1 − h_t²)                          dL/dxp_t, [B, H]
//! dh_{t-1} = dz_t · w_hhᵀ
//! ```

use super::activation::{madd, tanh_fast};
use super::cell_math::{BwdRows, CellMath, FwdRows};
use super::simd::{dispatch, lanes, simd_level};
use crate::Cell;

/// The plain RNN for the sequence driver: one gate block, `b_hh` inside the op, no second array.
pub(super) struct Rnn;

impl CellMath for Rnn {
    const CELL: Cell = Cell::Rnn;

    /// The plain RNN forward pointwise pass over a block of rows: `h_out = tanh(z + b_hh)` row by row,
    /// `z` `[rows, H]` holding `xp[t] + h_{t-1} · w_hh`.
    #[inline(always)]
    fn forward_rows<const FMA: bool>(h: usize, r: FwdRows) {
        let FwdRows { z, b_hh, h_out, .. } = r;
        for (z, h_out) in z.chunks_exact(h).zip(h_out.chunks_exact_mut(h)) {
            lanes(h, [z, b_hh], [], [h_out], |[z, b], []| {
                ([], [tanh_fast::<FMA>(z + b)])
            });
        }
    }

    /// The plain RNN backward pointwise pass over a block of rows: `dz = (dh_loss + dh_next) ⊙
    /// (1 − h_t²)` (`dh_next` the gradient reaching `h_t` from step `t+1`), and `db` `[H]` accumulates
    /// `dz` summed over the rows.
    #[inline(always)]
    fn backward_rows<const FMA: bool>(h: usize, r: BwdRows) {
        let db = r.db;
        for (((h_t, dh_loss), dh_next), dz) in r
            .h_t
            .chunks_exact(h)
            .zip(r.dh_loss.chunks_exact(h))
            .zip(r.dh.chunks_exact(h))
            .zip(r.gz.chunks_exact_mut(h))
        {
            lanes(
                h,
                [h_t, dh_loss, dh_next],
                [&mut *db],
                [dz],
                |[ht, dl, dn], [b]| {
                    let d = (dl + dn) * madd::<FMA>(-ht, ht, 1.0);
                    ([b + d], [d])
                },
            );
        }
    }
}

/// The plain tanh RNN cell of one row, for callers that compute the pre-activation themselves
/// (the sampler): `h_out = tanh(z)`, with `z = x · w_ih + b_ih + h_{t-1} · w_hh + b_hh`. Same fast
/// `tanh` and instruction-set choice as the sequence [`forward`](super::forward).
///
/// # Shapes
///
/// `z`: `[H]`; `h_out` (written): `[H]`.
///
/// # Panics
///
/// Panics if the lengths differ.
pub fn rnn_cell(z: &[f32], h_out: &mut [f32]) {
    assert_eq!(h_out.len(), z.len(), "h_out must be as long as z");
    tanh_row(simd_level(), z, h_out);
}

dispatch! {
    /// `out = tanh(z)` ([`tanh_row_impl`]).
    fn tanh_row => tanh_row_impl(z: &[f32], out: &mut [f32])
}

#[inline(always)]
fn tanh_row_impl<const FMA: bool>(z: &[f32], out: &mut [f32]) {
    lanes(z.len(), [z], [], [out], |[z], []| {
        ([], [tanh_fast::<FMA>(z)])
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::*;
    use crate::Dims;

    shared_cell_tests!(Rnn);

    /// The plain RNN's kernels for the shared tests.
    impl KernelCell for Rnn {
        fn reference(c: &Case) -> Outputs<f64> {
            let [xp, w, bias, h0] = &c.ins;
            let hs = ref_forward(c.d, xp, w, bias, h0);
            let grads = ref_backward(c.d, w, h0, &hs, &c.dhs);
            let fwd = vec![("hs", hs)];
            Outputs { fwd, grads }
        }

        fn cell_step(c: &Case) -> Vec<(&'static str, Vec<f32>)> {
            let [xp, w, bias, h0] = &c.ins;
            // z = xp + b_hh + h0 · w_hh, summed in f64.
            let z = row_product(h0, w, &[xp, bias]);
            let mut h_out = vec![0.0; z.len()];
            rnn_cell(&z, &mut h_out);
            vec![("hs", h_out)]
        }

        const OWN: [(Input, f32); 2] = [(Input::BHh, 0.5), (Input::H0, 0.9)];
        const XP_SCALE: f32 = 1.5;
        const AUX_NAME: Option<&'static str> = None;
        const LARGE: Tol = Tol::new(1e-4, 1e-3, 1e-3);
    }

    /// Naive f64 forward: hs.
    fn ref_forward(d: Dims, xp: &[f32], w: &[f32], bias: &[f32], h0: &[f32]) -> Vec<f64> {
        let h = d.h;
        let mut hs = vec![0.0; d.t * d.b * h];
        for t in 0..d.t {
            for r in 0..d.b {
                let row = t * d.b + r;
                let hw = ref_product(&ref_prev(h0, &hs, d, t, r), w);
                for j in 0..h {
                    hs[row * h + j] = (xp[row * h + j] as f64 + bias[j] as f64 + hw[j]).tanh();
                }
            }
        }
        hs
    }

    /// Naive f64 backward from the f64 forward: (dxp, dw_hh, db_hh, dh0).
    fn ref_backward(d: Dims, w: &[f32], h0: &[f32], hs: &[f64], dhs: &[f32]) -> [Vec<f64>; 4] {
        let h = d.h;
        let mut dxp = vec![0.0; d.t * d.b * h];
        let (mut dw, mut db) = (vec![0.0; h * h], vec![0.0; h]);
        let dh0 = ref_bptt(d, (h0, hs), (w, &mut dw), dhs, |t, r, dh, _| {
            let base = (t * d.b + r) * h;
            let dz = &mut dxp[base..][..h];
            for j in 0..h {
                let ht = hs[base + j];
                dz[j] = dh[j] * (1.0 - ht * ht);
                db[j] += dz[j];
            }
            dz.to_vec()
        });
        [dxp, dw, db, dh0]
    }
}
