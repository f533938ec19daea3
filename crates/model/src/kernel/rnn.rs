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
use super::sequence::{BwdRows, CellMath, FwdRows};
use super::simd::{dispatch, lanes, simd_level, Simd};

/// The plain RNN for the sequence driver: one gate block, `b_hh` inside the op, no second array.
pub(super) struct Rnn;

impl CellMath for Rnn {
    const GATES: usize = 1;
    const BIAS: bool = true;
    const CARRY_C: bool = false;
    const AUX: bool = false;
    const HP_APART: bool = false;

    fn forward_rows(simd: Simd, h: usize, r: FwdRows) {
        rnn_forward_rows(simd, h, r);
    }

    fn backward_rows(simd: Simd, h: usize, r: BwdRows) {
        rnn_backward_rows(simd, h, r);
    }
}

/// The plain tanh RNN cell of one row, for callers that compute the pre-activation themselves
/// (the sampler): `h_out = tanh(z)`, with `z = x · w_ih + b_ih + h_{t-1} · w_hh + b_hh`. Same fast
/// `tanh` and instruction-set choice as the sequence [`forward`].
///
/// # Shapes
///
/// `z`: `[H]`; `h_out` (written): `[H]`.
///
/// # Panics
///
/// Panics if the lengths differ.
///
/// the sequence [`forward`]: super::rnn_forward
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

dispatch! {
    /// The plain RNN forward pointwise pass over `[rows, H]` blocks of one step
    /// ([`rnn_forward_rows_impl`]).
    pub(super) fn rnn_forward_rows => rnn_forward_rows_impl(h: usize, r: FwdRows)
}

/// The plain RNN forward pointwise pass over a block of rows: `h_out = tanh(z + b_hh)` row by row,
/// `z` `[rows, H]` holding `xp[t] + h_{t-1} · w_hh`.
#[inline(always)]
fn rnn_forward_rows_impl<const FMA: bool>(h: usize, r: FwdRows) {
    let FwdRows { z, b_hh, h_out, .. } = r;
    for (z, h_out) in z.chunks_exact(h).zip(h_out.chunks_exact_mut(h)) {
        lanes(h, [z, b_hh], [], [h_out], |[z, b], []| {
            ([], [tanh_fast::<FMA>(z + b)])
        });
    }
}

dispatch! {
    /// The plain RNN backward pointwise pass over `[rows, H]` blocks of step `t`
    /// ([`rnn_backward_rows_impl`]).
    pub(super) fn rnn_backward_rows => rnn_backward_rows_impl(h: usize, r: BwdRows)
}

/// The plain RNN backward pointwise pass over a block of rows: `dz = (dh_loss + dh_next) ⊙
/// (1 − h_t²)` (`dh_next` the gradient reaching `h_t` from step `t+1`), and `db` `[H]` accumulates
/// `dz` summed over the rows.
#[inline(always)]
fn rnn_backward_rows_impl<const FMA: bool>(h: usize, r: BwdRows) {
    let BwdRows {
        h_t,
        dh_loss,
        dh: dh_next,
        gz: dz,
        db,
        ..
    } = r;
    for (((h_t, dh_loss), dh_next), dz) in h_t
        .chunks_exact(h)
        .zip(dh_loss.chunks_exact(h))
        .zip(dh_next.chunks_exact(h))
        .zip(dz.chunks_exact_mut(h))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::test_support::{
        assert_close, batch_one_cases, check_finite_differences, check_grid, check_large, f64s,
        row_product, Case, KernelCell, Outputs, Tol,
    };
    use crate::kernel::{backward, forward, Backward, Dims, Forward};
    use crate::Cell;

    /// The sequence forward of the plain RNN.
    fn rnn_forward(
        d: Dims,
        xz: &mut [f32],
        w_hh: &[f32],
        b_hh: &[f32],
        h0: &[f32],
        hs: &mut [f32],
    ) {
        let io = Forward {
            xz,
            w_hh,
            b_hh,
            h0,
            c0: &[],
            hs,
            aux: &mut [],
        };
        forward(Cell::Rnn, d, io);
    }

    /// The sequence backward of the plain RNN.
    #[allow(clippy::too_many_arguments)]
    fn rnn_backward(
        d: Dims,
        w_hh: &[f32],
        h0: &[f32],
        hs: &[f32],
        gz: &mut [f32],
        dhs: &[f32],
        dw_hh: &mut [f32],
        db_hh: &mut [f32],
        dh0: &mut [f32],
    ) {
        let io = Backward {
            w_hh,
            h0,
            c0: &[],
            hs,
            aux: &[],
            gz,
            dhs,
            dw_hh,
            db_hh,
            dh0,
            dc0: &mut [],
        };
        backward(Cell::Rnn, d, io);
    }

    /// Naive f64 forward: hs.
    fn ref_forward(d: Dims, xp: &[f32], w: &[f32], bias: &[f32], h0: &[f32]) -> Vec<f64> {
        let (tn, b, h) = (d.t, d.b, d.h);
        let mut hs = vec![0.0; tn * b * h];
        let mut hp: Vec<f64> = h0.iter().map(|&v| v as f64).collect();
        for t in 0..tn {
            for r in 0..b {
                for j in 0..h {
                    let z = xp[(t * b + r) * h + j] as f64
                        + bias[j] as f64
                        + (0..h)
                            .map(|k| hp[r * h + k] * w[k * h + j] as f64)
                            .sum::<f64>();
                    hs[(t * b + r) * h + j] = z.tanh();
                }
            }
            hp.copy_from_slice(&hs[t * b * h..(t + 1) * b * h]);
        }
        hs
    }

    /// Naive f64 backward from the f64 forward: (dxp, dw_hh, db_hh, dh0).
    fn ref_backward(
        d: Dims,
        w: &[f32],
        h0: &[f32],
        hs: &[f64],
        dhs: &[f32],
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
        let (tn, b, h) = (d.t, d.b, d.h);
        let mut dxp = vec![0.0; tn * b * h];
        let mut dw = vec![0.0; h * h];
        let mut db = vec![0.0; h];
        let mut dhn = vec![0.0f64; b * h];
        for t in (0..tn).rev() {
            let mut dh_prev = vec![0.0f64; b * h];
            for r in 0..b {
                let base = (t * b + r) * h;
                let dz: Vec<f64> = (0..h)
                    .map(|j| {
                        let ht = hs[base + j];
                        (dhs[base + j] as f64 + dhn[r * h + j]) * (1.0 - ht * ht)
                    })
                    .collect();
                for k in 0..h {
                    let hp = if t == 0 {
                        h0[r * h + k] as f64
                    } else {
                        hs[((t - 1) * b + r) * h + k]
                    };
                    for n in 0..h {
                        dh_prev[r * h + k] += dz[n] * w[k * h + n] as f64;
                        dw[k * h + n] += hp * dz[n];
                    }
                }
                for n in 0..h {
                    db[n] += dz[n];
                }
                dxp[base..base + h].copy_from_slice(&dz);
            }
            dhn = dh_prev;
        }
        (dxp, dw, db, dhn)
    }

    /// The plain RNN for the shared tests; its own inputs are `b_hh` and `h0`.
    struct Rnn;

    impl KernelCell for Rnn {
        const GATES: usize = 1;
        const XP_SCALE: f32 = 1.5;

        fn other_inputs(d: Dims) -> [(&'static str, usize, f32); 2] {
            [("b_hh", d.h, 0.5), ("h0", d.b * d.h, 0.9)]
        }

        fn reference(c: &Case) -> Outputs<f64> {
            let (d, [xp, w, bias, h0]) = (c.d, &c.ins);
            let hs = ref_forward(d, xp, w, bias, h0);
            let (dxp, dw, db, dh0) = ref_backward(d, w, h0, &hs, &c.dhs);
            Outputs {
                fwd: vec![("hs", hs)],
                grads: [dxp, dw, db, dh0],
            }
        }

        fn kernel(c: &Case) -> Outputs<f32> {
            let (d, [xp, w, bias, h0]) = (c.d, &c.ins);
            let bh = d.t * d.b * d.h;
            let (mut hs, mut xz) = (vec![0.0; bh], xp.clone());
            rnn_forward(d, &mut xz, w, bias, h0, &mut hs);
            let mut dxp = xz;
            let mut dw = vec![f32::NAN; d.h * d.h];
            let mut db = vec![f32::NAN; d.h];
            let mut dh0 = vec![f32::NAN; d.b * d.h];
            rnn_backward(d, w, h0, &hs, &mut dxp, &c.dhs, &mut dw, &mut db, &mut dh0);
            Outputs {
                fwd: vec![("hs", hs)],
                grads: [dxp, dw, db, dh0],
            }
        }
    }

    #[test]
    fn rnn_forward_and_backward_match_reference() {
        check_grid::<Rnn>();
    }

    #[test]
    fn rnn_large_parallel_shape_matches_reference() {
        check_large::<Rnn>(Tol {
            fwd: 1e-4,
            bwd: 1e-3,
            dw_hh: 1e-3,
        });
    }

    #[test]
    fn rnn_backward_matches_finite_differences() {
        check_finite_differences::<Rnn>();
    }

    #[test]
    fn rnn_cell_equals_forward_at_batch_one() {
        for c in batch_one_cases::<Rnn>() {
            let (h, [xp, w, bias, h0]) = (c.d.h, &c.ins);
            let mut hs = vec![0.0; h];
            rnn_forward(c.d, &mut xp.clone(), w, bias, h0, &mut hs);
            // z = xp + b_hh + h0 · w_hh, summed in f64.
            let z = row_product(h0, w, &[xp, bias]);
            let mut h_out = vec![0.0; h];
            rnn_cell(&z, &mut h_out);
            assert_close(&format!("h, h={h}"), &h_out, &f64s(&hs), 1e-5);
            let rhs = ref_forward(c.d, xp, w, bias, h0);
            assert_close("h vs reference", &h_out, &rhs, 1e-5);
        }
    }

    #[test]
    fn rnn_empty_shapes_are_fine() {
        let d = Dims { t: 0, b: 2, h: 3 };
        let (w, bias, h0) = (vec![0.5; 9], vec![0.5; 3], vec![1.0; 6]);
        rnn_forward(d, &mut [], &w, &bias, &h0, &mut []);
        let (mut dw, mut db, mut dh0) = (vec![1.0; 9], vec![1.0; 3], vec![1.0; 6]);
        rnn_backward(d, &w, &h0, &[], &mut [], &[], &mut dw, &mut db, &mut dh0);
        assert!(dw.iter().chain(&db).chain(&dh0).all(|&v| v == 0.0));
        let d = Dims { t: 2, b: 0, h: 3 };
        rnn_forward(d, &mut [], &w, &bias, &[], &mut []);
        let (mut dw, mut db) = (vec![1.0; 9], vec![1.0; 3]);
        rnn_backward(d, &w, &[], &[], &mut [], &[], &mut dw, &mut db, &mut []);
        assert!(dw.iter().chain(&db).all(|&v| v == 0.0));
    }
}
