//! The GRU sequence passes (PyTorch's `nn.GRU` maths): [`gru_forward`] and [`gru_backward`] over a
//! whole sequence, one row block per thread, like the LSTM's.
//!
//! Gate blocks r, z, n lie side by side along the last axis (`3H`). For `t = 0..T` with
//! `h_{-1} = h0`:
//!
//! ```text
//! a_t  = xp[t]                      (x · w_ih + b_ih, computed by the caller)
//! hp_t = h_{t-1} · w_hh + b_hh
//! r = σ(a_r + hp_r), z = σ(a_z + hp_z), n = tanh(a_n + r ⊙ hp_n)
//! h_t = (1 − z) ⊙ n + z ⊙ h_{t-1}
//! ```

use rayon::prelude::*;

use super::hcell::{gru_backward_rows, gru_forward_rows};
use super::lstm::Dims;
use super::schedule::{blocks, blocks_mut, on_worker, row_bounds, run_blocks};
use super::simd::{simd_level, Simd};
use super::step::{sum_parts, weight_grad, StepWeights};

/// GRU forward over a sequence.
///
/// Runs the recurrence for `d.t` steps from `h0`, writing every step's hidden state. `xz` holds
/// the input projection `a_t` of every step on entry and the activated gates `(r, z, n)`, which
/// [`gru_backward`] needs, on return; `hn` receives `hp_n = h_{t-1} · w_hn + b_hn` of every step,
/// which it needs too.
///
/// Each step of a block of rows computes `h_{t-1} · w_hh` in a scratch `[rows, 3H]` (one product
/// with `w_hh` packed once per sequence) and runs one fused pointwise pass, which adds `b_hh`.
///
/// # Shapes
///
/// - `xz` (read and written): `[T, B, 3H]`, `x · w_ih + b_ih` of every step, then the gates;
/// - `w_hh`: `[H, 3H]`; `b_hh`: `[3H]`;
/// - `h0`: `[B, H]`;
/// - `hs` (written): `[T, B, H]`, `h_t`;
/// - `hn` (written): `[T, B, H]`, `hp_n` of every step.
///
/// # Panics
///
/// Panics if a slice's length does not match `d`.
pub fn gru_forward(
    d: Dims,
    xz: &mut [f32],
    w_hh: &[f32],
    b_hh: &[f32],
    h0: &[f32],
    hs: &mut [f32],
    hn: &mut [f32],
) {
    let (t_len, b, h) = (d.t, d.b, d.h);
    let (bh, g) = (b * h, 3 * h);
    assert_eq!(xz.len(), t_len * b * g, "xz must be [t, b, 3h]");
    assert_eq!(w_hh.len(), h * g, "w_hh must be [h, 3h]");
    assert_eq!(b_hh.len(), g, "b_hh must be [3h]");
    assert_eq!(h0.len(), bh, "h0 must be [b, h]");
    assert_eq!(hs.len(), t_len * bh, "hs must be [t, b, h]");
    assert_eq!(hn.len(), t_len * bh, "hn must be [t, b, h]");
    if t_len == 0 || bh == 0 {
        return;
    }
    on_worker(|| {
        let bounds = row_bounds(b);
        let simd = simd_level();
        let w = StepWeights::forward(simd, b, h, g, w_hh);
        let xz = blocks_mut(xz, b, g, &bounds);
        let h0 = blocks(h0, b, h, &bounds);
        let hs = blocks_mut(hs, b, h, &bounds);
        let hn = blocks_mut(hn, b, h, &bounds);
        let parts: Vec<_> = xz
            .into_iter()
            .zip(h0)
            .zip(hs)
            .zip(hn)
            .map(|(((xz, h0), hs), hn)| FwdPart {
                xz,
                h0: h0[0],
                hs,
                hn,
            })
            .collect();
        run_blocks(parts, |p, threaded| {
            forward_part(simd, h, &w, b_hh, p, threaded)
        });
    })
}

/// One block of rows of a sequence for [`forward_part`]: per-step slices of the arrays of
/// [`gru_forward`], restricted to the block's rows.
struct FwdPart<'a> {
    xz: Vec<&'a mut [f32]>,
    h0: &'a [f32],
    hs: Vec<&'a mut [f32]>,
    hn: Vec<&'a mut [f32]>,
}

/// The forward recurrence of one block of rows; `threaded` lets its products use the thread pool
/// (when the block is the whole batch).
fn forward_part(simd: Simd, h: usize, w: &StepWeights, b_hh: &[f32], p: FwdPart, threaded: bool) {
    let FwdPart {
        mut xz,
        h0,
        mut hs,
        mut hn,
    } = p;
    let rows = h0.len() / h;
    let mut hh = vec![0.0; rows * 3 * h];
    for t in 0..xz.len() {
        let (hs_done, hs_rest) = hs.split_at_mut(t);
        let h_prev: &[f32] = if t == 0 { h0 } else { hs_done[t - 1] };
        // hh [rows, 3H] = h_prev [rows, H] · w_hh [H, 3H]; the pointwise pass adds b_hh.
        w.product(&mut hh, false, h_prev, threaded);
        gru_forward_rows(simd, h, xz[t], &hh, b_hh, h_prev, hs_rest[0], hn[t]);
    }
}

/// GRU backward over a sequence (truncated BPTT: no gradient arrives for `h_T` beyond `dhs`).
///
/// Takes what [`gru_forward`] took and wrote and the gradient of the loss with respect to every
/// `h_t`, and overwrites (does not accumulate into) the gradients of the input projections (in
/// place of the gates), of `w_hh`, `b_hh` and of `h0`.
///
/// Each step of a block of rows runs one fused pointwise pass, which leaves `dhp_t` (the
/// gradient of `hp_t`) in `gz[t]`, and one product `dh_{t-1} += dhp_t · w_hhᵀ` with a transposed
/// copy of `w_hh` packed once per sequence. `dw_hh` is one threaded product over all steps at the
/// end, `db_hh` the sum of per-block column sums taken in the pointwise pass; finally the n
/// blocks of `gz` change from `dhp_n = dn ⊙ r` to `dn`, kept aside meanwhile.
///
/// # Shapes
///
/// - `w_hh`: `[H, 3H]`; `h0`: `[B, H]`;
/// - `hs`, `hn`: `[T, B, H]`, as written by [`gru_forward`];
/// - `gz` (read and written): `[T, B, 3H]`, the gates [`gru_forward`] left in `xz`, then `dL/dxp`;
/// - `dhs`: `[T, B, H]`, `dL/dh_t` for every `t`;
/// - `dw_hh` (written): `[H, 3H]`, `Σ_t h_{t-1}ᵀ · dhp_t`;
/// - `db_hh` (written): `[3H]`, `dhp_t` summed over steps and rows;
/// - `dh0` (written): `[B, H]`.
///
/// # Panics
///
/// Panics if a slice's length does not match `d`.
#[allow(clippy::too_many_arguments)]
pub fn gru_backward(
    d: Dims,
    w_hh: &[f32],
    h0: &[f32],
    hs: &[f32],
    hn: &[f32],
    gz: &mut [f32],
    dhs: &[f32],
    dw_hh: &mut [f32],
    db_hh: &mut [f32],
    dh0: &mut [f32],
) {
    let (t_len, b, h) = (d.t, d.b, d.h);
    let (bh, g) = (b * h, 3 * h);
    assert_eq!(w_hh.len(), h * g, "w_hh must be [h, 3h]");
    assert_eq!(h0.len(), bh, "h0 must be [b, h]");
    assert_eq!(hs.len(), t_len * bh, "hs must be [t, b, h]");
    assert_eq!(hn.len(), t_len * bh, "hn must be [t, b, h]");
    assert_eq!(gz.len(), t_len * b * g, "gz must be [t, b, 3h]");
    assert_eq!(dhs.len(), t_len * bh, "dhs must be [t, b, h]");
    assert_eq!(dw_hh.len(), h * g, "dw_hh must be [h, 3h]");
    assert_eq!(db_hh.len(), g, "db_hh must be [3h]");
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
        let w = StepWeights::backward(simd, b, n_parts, h, g, w_hh);
        // dn of every step (the n block of dL/dxp) while gz holds dhp_t.
        let mut dn = vec![0.0; t_len * bh];
        let mut db = vec![0.0; n_parts * g];
        {
            let gz = blocks_mut(gz, b, g, &bounds);
            let dn = blocks_mut(&mut dn, b, h, &bounds);
            let hs = blocks(hs, b, h, &bounds);
            let hn = blocks(hn, b, h, &bounds);
            let h0 = blocks(h0, b, h, &bounds);
            let dhs = blocks(dhs, b, h, &bounds);
            let dh0 = blocks_mut(dh0, b, h, &bounds);
            let parts: Vec<_> = gz
                .into_iter()
                .zip(dn)
                .zip(hs)
                .zip(hn)
                .zip(h0)
                .zip(dhs)
                .zip(dh0)
                .zip(db.chunks_exact_mut(g))
                .map(
                    |(((((((gz, dn), hs), hn), h0), dhs), mut dh0), db)| BwdPart {
                        gz,
                        dn,
                        hs,
                        hn,
                        h0: h0[0],
                        dhs,
                        dh0: dh0.pop().expect("one step"),
                        db,
                    },
                )
                .collect();
            run_blocks(parts, |p, threaded| backward_part(simd, h, &w, p, threaded));
        }
        weight_grad(t_len, b, h, g, h0, hs, gz, dw_hh);
        sum_parts(&db, db_hh);
        gz.par_chunks_exact_mut(g)
            .zip(dn.par_chunks_exact(h))
            .with_min_len(64)
            .for_each(|(gz, dn)| gz[2 * h..].copy_from_slice(dn));
    })
}

/// One block of rows of a sequence for [`backward_part`]: per-step slices of the arrays of
/// [`gru_backward`], restricted to the block's rows, and the block's partial `db_hh`.
struct BwdPart<'a> {
    gz: Vec<&'a mut [f32]>,
    dn: Vec<&'a mut [f32]>,
    hs: Vec<&'a [f32]>,
    hn: Vec<&'a [f32]>,
    h0: &'a [f32],
    dhs: Vec<&'a [f32]>,
    dh0: &'a mut [f32],
    db: &'a mut [f32],
}

/// The backward recurrence of one block of rows (everything but `dw_hh`, which mixes rows, and
/// the final n blocks of `gz`).
fn backward_part(simd: Simd, h: usize, w: &StepWeights, p: BwdPart, threaded: bool) {
    let BwdPart {
        mut gz,
        mut dn,
        hs,
        hn,
        h0,
        dhs,
        dh0,
        db,
    } = p;
    for t in (0..gz.len()).rev() {
        let h_prev = if t == 0 { h0 } else { hs[t - 1] };
        let dhp = &mut *gz[t];
        // dh0 becomes dh ⊙ z, then dh_{t-1} [rows, H] += dhp_t [rows, 3H] · w_hhᵀ [3H, H].
        gru_backward_rows(simd, h, dhp, dn[t], hn[t], h_prev, dhs[t], dh0, db);
        w.product(dh0, true, dhp, threaded);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::gru_cell;
    use crate::kernel::test_support::{
        assert_close, batch_one_cases, check_finite_differences, check_grid, check_large, f64s,
        row_product, sig64, Case, KernelCell, Outputs, Tol,
    };

    /// The f64 forward of the reference: hs, gates, hp_n.
    struct RefFwd {
        hs: Vec<f64>,
        gates: Vec<f64>,
        hn: Vec<f64>,
    }

    /// Naive f64 forward.
    fn ref_forward(d: Dims, xp: &[f32], w: &[f32], bias: &[f32], h0: &[f32]) -> RefFwd {
        let (tn, b, h) = (d.t, d.b, d.h);
        let g = 3 * h;
        let mut out = RefFwd {
            hs: vec![0.0; tn * b * h],
            gates: vec![0.0; tn * b * g],
            hn: vec![0.0; tn * b * h],
        };
        let mut hp: Vec<f64> = h0.iter().map(|&v| v as f64).collect();
        for t in 0..tn {
            for r in 0..b {
                let hpr: Vec<f64> = (0..g)
                    .map(|n| {
                        bias[n] as f64
                            + (0..h)
                                .map(|k| hp[r * h + k] * w[k * g + n] as f64)
                                .sum::<f64>()
                    })
                    .collect();
                let a = &xp[(t * b + r) * g..][..g];
                for j in 0..h {
                    let rg = sig64(a[j] as f64 + hpr[j]);
                    let zg = sig64(a[h + j] as f64 + hpr[h + j]);
                    let ng = (a[2 * h + j] as f64 + rg * hpr[2 * h + j]).tanh();
                    let base = (t * b + r) * g;
                    out.gates[base + j] = rg;
                    out.gates[base + h + j] = zg;
                    out.gates[base + 2 * h + j] = ng;
                    out.hn[(t * b + r) * h + j] = hpr[2 * h + j];
                    out.hs[(t * b + r) * h + j] = (1.0 - zg) * ng + zg * hp[r * h + j];
                }
            }
            hp.copy_from_slice(&out.hs[t * b * h..(t + 1) * b * h]);
        }
        out
    }

    /// Naive f64 backward from the f64 forward: (dxp, dw_hh, db_hh, dh0).
    fn ref_backward(
        d: Dims,
        w: &[f32],
        h0: &[f32],
        f: &RefFwd,
        dhs: &[f32],
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
        let (tn, b, h) = (d.t, d.b, d.h);
        let g = 3 * h;
        let mut dxp = vec![0.0; tn * b * g];
        let mut dw = vec![0.0; h * g];
        let mut db = vec![0.0; g];
        let mut dhn = vec![0.0f64; b * h];
        for t in (0..tn).rev() {
            let mut dh_prev = vec![0.0f64; b * h];
            for r in 0..b {
                let base = (t * b + r) * g;
                let hprev = |k: usize| {
                    if t == 0 {
                        h0[r * h + k] as f64
                    } else {
                        f.hs[((t - 1) * b + r) * h + k]
                    }
                };
                let mut dhp = vec![0.0f64; g];
                for j in 0..h {
                    let (rg, zg, ng) = (
                        f.gates[base + j],
                        f.gates[base + h + j],
                        f.gates[base + 2 * h + j],
                    );
                    let dh = dhs[(t * b + r) * h + j] as f64 + dhn[r * h + j];
                    let dn = dh * (1.0 - zg) * (1.0 - ng * ng);
                    let dz = dh * (hprev(j) - ng) * zg * (1.0 - zg);
                    let dr = dn * f.hn[(t * b + r) * h + j] * rg * (1.0 - rg);
                    dxp[base + j] = dr;
                    dxp[base + h + j] = dz;
                    dxp[base + 2 * h + j] = dn;
                    dhp[j] = dr;
                    dhp[h + j] = dz;
                    dhp[2 * h + j] = dn * rg;
                    dh_prev[r * h + j] += dh * zg;
                }
                for k in 0..h {
                    for n in 0..g {
                        dh_prev[r * h + k] += dhp[n] * w[k * g + n] as f64;
                        dw[k * g + n] += hprev(k) * dhp[n];
                    }
                }
                for n in 0..g {
                    db[n] += dhp[n];
                }
            }
            dhn = dh_prev;
        }
        (dxp, dw, db, dhn)
    }

    /// The GRU for the shared tests; its own inputs are `b_hh` and `h0`.
    struct Gru;

    impl KernelCell for Gru {
        const GATES: usize = 3;
        const XP_SCALE: f32 = 2.0;

        fn other_inputs(d: Dims) -> [(&'static str, usize, f32); 2] {
            [("b_hh", 3 * d.h, 1.0), ("h0", d.b * d.h, 0.9)]
        }

        fn reference(c: &Case) -> Outputs<f64> {
            let (d, [xp, w, bias, h0]) = (c.d, &c.ins);
            let f = ref_forward(d, xp, w, bias, h0);
            let (dxp, dw, db, dh0) = ref_backward(d, w, h0, &f, &c.dhs);
            Outputs {
                fwd: vec![("hs", f.hs), ("gates", f.gates), ("hn", f.hn)],
                grads: [dxp, dw, db, dh0],
            }
        }

        fn kernel(c: &Case) -> Outputs<f32> {
            let (d, [xp, w, bias, h0]) = (c.d, &c.ins);
            let bh = d.t * d.b * d.h;
            let (mut hs, mut hn, mut gates) = (vec![0.0; bh], vec![0.0; bh], xp.clone());
            gru_forward(d, &mut gates, w, bias, h0, &mut hs, &mut hn);
            let mut dxp = gates.clone();
            let mut dw = vec![f32::NAN; 3 * d.h * d.h];
            let mut db = vec![f32::NAN; 3 * d.h];
            let mut dh0 = vec![f32::NAN; d.b * d.h];
            gru_backward(
                d, w, h0, &hs, &hn, &mut dxp, &c.dhs, &mut dw, &mut db, &mut dh0,
            );
            Outputs {
                fwd: vec![("hs", hs), ("gates", gates), ("hn", hn)],
                grads: [dxp, dw, db, dh0],
            }
        }
    }

    #[test]
    fn gru_forward_and_backward_match_reference() {
        check_grid::<Gru>();
    }

    #[test]
    fn gru_large_parallel_shape_matches_reference() {
        check_large::<Gru>(Tol {
            fwd: 1e-4,
            bwd: 1e-3,
            dw_hh: 1e-3,
        });
    }

    #[test]
    fn gru_backward_matches_finite_differences() {
        check_finite_differences::<Gru>();
    }

    #[test]
    fn gru_cell_equals_forward_at_batch_one() {
        for c in batch_one_cases::<Gru>() {
            let (h, [xp, w, bias, h0]) = (c.d.h, &c.ins);
            let (mut hs, mut hn) = (vec![0.0; h], vec![0.0; h]);
            let mut gates = xp.clone();
            gru_forward(c.d, &mut gates, w, bias, h0, &mut hs, &mut hn);
            // hp = b_hh + h0 · w_hh, summed in f64.
            let hp = row_product(h0, w, &[bias]);
            let (mut a, mut h_state) = (xp.clone(), h0.clone());
            gru_cell(h, &mut a, &hp, &mut h_state);
            assert_close(&format!("h, h={h}"), &h_state, &f64s(&hs), 1e-5);
            let f = ref_forward(c.d, xp, w, bias, h0);
            assert_close("h vs reference", &h_state, &f.hs, 1e-5);
            assert_close("gates vs reference", &a, &f.gates, 1e-5);
        }
    }

    #[test]
    fn gru_empty_shapes_are_fine() {
        let d = Dims { t: 0, b: 2, h: 3 };
        let (w, bias, h0) = (vec![0.5; 27], vec![0.5; 9], vec![1.0; 6]);
        gru_forward(d, &mut [], &w, &bias, &h0, &mut [], &mut []);
        let (mut dw, mut db, mut dh0) = (vec![1.0; 27], vec![1.0; 9], vec![1.0; 6]);
        gru_backward(
            d,
            &w,
            &h0,
            &[],
            &[],
            &mut [],
            &[],
            &mut dw,
            &mut db,
            &mut dh0,
        );
        assert!(dw.iter().chain(&db).chain(&dh0).all(|&v| v == 0.0));
        let d = Dims { t: 2, b: 0, h: 3 };
        gru_forward(d, &mut [], &w, &bias, &[], &mut [], &mut []);
        let (mut dw, mut db) = (vec![1.0; 27], vec![1.0; 9]);
        gru_backward(
            d,
            &w,
            &[],
            &[],
            &[],
            &mut [],
            &[],
            &mut dw,
            &mut db,
            &mut [],
        );
        assert!(dw.iter().chain(&db).all(|&v| v == 0.0));
    }
}
