//! The plain tanh RNN sequence passes (PyTorch's `nn.RNN(nonlinearity='tanh')` maths):
//! [`rnn_forward`] and [`rnn_backward`] over a whole sequence, one row block per thread, like the
//! LSTM's. For `t = 0..T` with `h_{-1} = h0`: `h_t = tanh(xp[t] + h_{t-1} · w_hh + b_hh)`.

use super::hcell::{rnn_backward_rows, rnn_forward_rows};
use super::lstm::Dims;
use super::schedule::{blocks, blocks_mut, on_worker, row_bounds, run_blocks};
use super::simd::{simd_level, Simd};
use super::step::{sum_parts, weight_grad, StepWeights};

/// Plain RNN forward over a sequence.
///
/// Runs the recurrence for `d.t` steps from `h0`, writing every step's hidden state. Each step of
/// a block of rows adds `h_{t-1} · w_hh` (weights packed once per sequence) to `xz[t]` in place,
/// then writes `h_t = tanh(xz[t] + b_hh)` in one pointwise pass.
///
/// # Shapes
///
/// - `xz` (read and written): `[T, B, H]`, `x · w_ih + b_ih` of every step on entry, unspecified
///   (scratch) on return;
/// - `w_hh`: `[H, H]`; `b_hh`: `[H]`;
/// - `h0`: `[B, H]`;
/// - `hs` (written): `[T, B, H]`, `h_t`.
///
/// # Panics
///
/// Panics if a slice's length does not match `d`.
pub fn rnn_forward(
    d: Dims,
    xz: &mut [f32],
    w_hh: &[f32],
    b_hh: &[f32],
    h0: &[f32],
    hs: &mut [f32],
) {
    let (t_len, b, h) = (d.t, d.b, d.h);
    let bh = b * h;
    assert_eq!(xz.len(), t_len * bh, "xz must be [t, b, h]");
    assert_eq!(w_hh.len(), h * h, "w_hh must be [h, h]");
    assert_eq!(b_hh.len(), h, "b_hh must be [h]");
    assert_eq!(h0.len(), bh, "h0 must be [b, h]");
    assert_eq!(hs.len(), t_len * bh, "hs must be [t, b, h]");
    if t_len == 0 || bh == 0 {
        return;
    }
    on_worker(|| {
        let bounds = row_bounds(b);
        let simd = simd_level();
        let w = StepWeights::forward(simd, b, h, h, w_hh);
        let xz = blocks_mut(xz, b, h, &bounds);
        let h0 = blocks(h0, b, h, &bounds);
        let hs = blocks_mut(hs, b, h, &bounds);
        let parts: Vec<_> = xz
            .into_iter()
            .zip(h0)
            .zip(hs)
            .map(|((xz, h0), hs)| FwdPart { xz, h0: h0[0], hs })
            .collect();
        run_blocks(parts, |p, threaded| {
            forward_part(simd, h, &w, b_hh, p, threaded)
        });
    })
}

/// One block of rows of a sequence for [`forward_part`]: per-step slices of the arrays of
/// [`rnn_forward`], restricted to the block's rows.
struct FwdPart<'a> {
    xz: Vec<&'a mut [f32]>,
    h0: &'a [f32],
    hs: Vec<&'a mut [f32]>,
}

/// The forward recurrence of one block of rows; `threaded` lets its products use the thread pool
/// (when the block is the whole batch).
fn forward_part(simd: Simd, h: usize, w: &StepWeights, b_hh: &[f32], p: FwdPart, threaded: bool) {
    let FwdPart { mut xz, h0, mut hs } = p;
    for t in 0..xz.len() {
        let (hs_done, hs_rest) = hs.split_at_mut(t);
        let h_prev: &[f32] = if t == 0 { h0 } else { hs_done[t - 1] };
        // xz[t] [rows, H] += h_prev [rows, H] · w_hh [H, H]
        w.product(xz[t], true, h_prev, threaded);
        rnn_forward_rows(simd, h, xz[t], b_hh, hs_rest[0]);
    }
}

/// Plain RNN backward over a sequence (truncated BPTT: no gradient arrives for `h_T` beyond
/// `dhs`).
///
/// Takes what [`rnn_forward`] took and wrote and the gradient of the loss with respect to every
/// `h_t`, and overwrites (does not accumulate into) the gradients of the input projections, of
/// `w_hh`, `b_hh` and of `h0`. Each step of a block of rows runs one pointwise pass
/// (`dz_t = dh ⊙ (1 − h_t²)`, into `gz[t]`) and one product `dh_{t-1} = dz_t · w_hhᵀ`; `dw_hh` is
/// one threaded product over all steps at the end.
///
/// # Shapes
///
/// - `w_hh`: `[H, H]`; `h0`: `[B, H]`;
/// - `hs`: `[T, B, H]`, as written by [`rnn_forward`];
/// - `gz` (read and written): `[T, B, H]`, any contents on entry (such as the scratch
///   [`rnn_forward`] left in `xz`), `dL/dxp` on return;
/// - `dhs`: `[T, B, H]`, `dL/dh_t` for every `t`;
/// - `dw_hh` (written): `[H, H]`, `Σ_t h_{t-1}ᵀ · dz_t`;
/// - `db_hh` (written): `[H]`, `dz_t` summed over steps and rows;
/// - `dh0` (written): `[B, H]`.
///
/// # Panics
///
/// Panics if a slice's length does not match `d`.
#[allow(clippy::too_many_arguments)]
pub fn rnn_backward(
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
    let (t_len, b, h) = (d.t, d.b, d.h);
    let bh = b * h;
    assert_eq!(w_hh.len(), h * h, "w_hh must be [h, h]");
    assert_eq!(h0.len(), bh, "h0 must be [b, h]");
    assert_eq!(hs.len(), t_len * bh, "hs must be [t, b, h]");
    assert_eq!(gz.len(), t_len * bh, "gz must be [t, b, h]");
    assert_eq!(dhs.len(), t_len * bh, "dhs must be [t, b, h]");
    assert_eq!(dw_hh.len(), h * h, "dw_hh must be [h, h]");
    assert_eq!(db_hh.len(), h, "db_hh must be [h]");
    assert_eq!(dh0.len(), bh, "dh0 must be [b, h]");

    // dh0 carries dL/dh_{t-1} from step to step; after step 0 it is the answer.
    dh0.fill(0.0);
    if t_len == 0 || bh == 0 {
        dw_hh.fill(0.0);
        db_hh.fill(0.0);
        return;
    }
    on_worker(|| {
        let simd = simd_level();
        let bounds = row_bounds(b);
        let n_parts = bounds.len() - 1;
        let w = StepWeights::backward(simd, b, n_parts, h, h, w_hh);
        let mut db = vec![0.0; n_parts * h];
        {
            let gz = blocks_mut(gz, b, h, &bounds);
            let hs = blocks(hs, b, h, &bounds);
            let dhs = blocks(dhs, b, h, &bounds);
            let dh0 = blocks_mut(dh0, b, h, &bounds);
            let parts: Vec<_> = gz
                .into_iter()
                .zip(hs)
                .zip(dhs)
                .zip(dh0)
                .zip(db.chunks_exact_mut(h))
                .map(|((((gz, hs), dhs), mut dh0), db)| BwdPart {
                    gz,
                    hs,
                    dhs,
                    dh0: dh0.pop().expect("one step"),
                    db,
                })
                .collect();
            run_blocks(parts, |p, threaded| backward_part(simd, h, &w, p, threaded));
        }
        weight_grad(t_len, b, h, h, h0, hs, gz, dw_hh);
        sum_parts(&db, db_hh);
    })
}

/// One block of rows of a sequence for [`backward_part`]: per-step slices of the arrays of
/// [`rnn_backward`], restricted to the block's rows, and the block's partial `db_hh`.
struct BwdPart<'a> {
    gz: Vec<&'a mut [f32]>,
    hs: Vec<&'a [f32]>,
    dhs: Vec<&'a [f32]>,
    dh0: &'a mut [f32],
    db: &'a mut [f32],
}

/// The backward recurrence of one block of rows (everything but `dw_hh`, which mixes rows).
fn backward_part(simd: Simd, h: usize, w: &StepWeights, p: BwdPart, threaded: bool) {
    let BwdPart {
        mut gz,
        hs,
        dhs,
        dh0,
        db,
    } = p;
    for t in (0..gz.len()).rev() {
        let dz = &mut *gz[t];
        rnn_backward_rows(simd, h, hs[t], dhs[t], dh0, dz, db);
        // dh_{t-1} [rows, H] = dz_t [rows, H] · w_hhᵀ [H, H]
        w.product(dh0, false, dz, threaded);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::rnn_cell;
    use crate::kernel::test_support::{
        assert_close, batch_one_cases, check_finite_differences, check_grid, check_large, f64s,
        row_product, Case, KernelCell, Outputs, Tol,
    };

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
