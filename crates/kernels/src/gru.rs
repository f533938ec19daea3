//! The GRU cell's maths (PyTorch's `nn.GRU`): the forward and backward pointwise passes of a step
//! over a block of rows, side by side, in blocks of 16 lanes and compiled per instruction set;
//! [`gru_cell`], the forward cell alone for the sampler; and its tests against a naive `f64`
//! reference.
//!
//! Gate blocks r, z, n lie side by side along the last axis (`3H`). For `t = 0..T` with
//! `h_{-1} = h0`:
//!
//! ```text
//! a_t  = xp[t]                      [B, 3H]  (x · w_ih + b_ih, computed by the caller)
//! hp_t = h_{t-1} · w_hh + b_hh      [B, 3H]
//! r = σ(a_r + hp_r), z = σ(a_z + hp_z), n = tanh(a_n + r ⊙ hp_n)    [B, H] each
//! h_t = (1 − z) ⊙ n + z ⊙ h_{t-1}   [B, H]
//! ```
//!
//! Backward, with `dh = dL/dh_t` (from the loss and from step `t+1`):
//!
//! ```text
//! dn = dh ⊙ (1 − z) ⊙ (1 − n²)     dz = dh ⊙ (h_{t-1} − n) ⊙ z(1 − z)
//! dr = dn ⊙ hp_n ⊙ r(1 − r)
//! dL/dxp_t = (dr, dz, dn)          dhp_t = (dr, dz, dn ⊙ r)
//! dh_{t-1} = dh ⊙ z + dhp_t · w_hhᵀ
//! ```
//!
//! `hp_n` cannot fold into the input projection (it is multiplied by `r`), so the driver keeps the
//! recurrent product apart ([`CellMath::HP_APART`]) and the forward saves `hp_n` of every step.

use super::activation::{madd, sigmoid_fast, tanh_fast};
use super::cell_math::{BwdRows, CellMath, FwdRows};
use super::simd::{dispatch, lanes, simd_level};
use crate::Cell;

/// The GRU for the sequence driver: three gate blocks, `b_hh` inside the op, `hp_n` of every step
/// as the second array.
pub(super) struct Gru;

impl CellMath for Gru {
    const CELL: Cell = Cell::Gru;

    /// The GRU forward pointwise pass over a block of rows: `xz` `[rows, 3H]` holds the input
    /// projections in and the gates out; `hh` `[rows, 3H]` is `h_{t-1} · w_hh`, to which it adds
    /// `b_hh` `[3H]` (so the product need not start from the bias); writes `h_t` to `h_out` and
    /// `hp_n = hh_n + b_hn` to `hn_out` (both `[rows, H]`).
    #[inline(always)]
    fn forward_rows<const FMA: bool>(h: usize, r: FwdRows) {
        let FwdRows {
            z: xz,
            hh,
            b_hh,
            h_prev,
            h_out,
            aux_out: hn_out,
            ..
        } = r;
        let (br, rest) = b_hh.split_at(h);
        let (bz, bn) = rest.split_at(h);
        for ((((a, hh), h_prev), h_out), hn_out) in xz
            .chunks_exact_mut(3 * h)
            .zip(hh.chunks_exact(3 * h))
            .zip(h_prev.chunks_exact(h))
            .zip(h_out.chunks_exact_mut(h))
            .zip(hn_out.chunks_exact_mut(h))
        {
            let [ar, az, an] = split3(a, h);
            let (hr, rest) = hh.split_at(h);
            let (hz, hn) = rest.split_at(h);
            lanes(
                h,
                [hr, hz, hn, br, bz, bn, h_prev],
                [ar, az, an],
                [h_out, hn_out],
                |[hr, hz, hn, br, bz, bn, hprev], [ar, az, an]| {
                    let hp_n = hn + bn;
                    let (g, ht) = gru::<FMA>([ar, az, an], [hr + br, hz + bz, hp_n], hprev);
                    (g, [ht, hp_n])
                },
            );
        }
    }

    /// The GRU backward pointwise pass over a block of rows.
    ///
    /// `gz` `[rows, 3H]` holds the gates `(r, z, n)` in and `dhp_t = (dr, dz, dn ⊙ r)`, the gradient
    /// of `h_{t-1} · w_hh + b_hh`, out; `dn` `[rows, H]` receives `dn` (the n block of `dL/dxp`);
    /// `hn` is `hp_n`; `dh_next` holds the gradient reaching `h_t` from step `t+1` in and `dh ⊙ z`
    /// out (the rest of the gradient reaching `h_{t-1}` is `dhp_t · w_hhᵀ`); `db` `[3H]` accumulates
    /// `dhp_t` summed over the rows.
    #[inline(always)]
    fn backward_rows<const FMA: bool>(h: usize, r: BwdRows) {
        let BwdRows {
            gz,
            dn,
            aux_t: hn,
            h_prev,
            dh_loss,
            dh: dh_next,
            db,
            ..
        } = r;
        let [dbr, dbz, dbn] = split3(db, h);
        for (((((gz, dn), hn), h_prev), dh_loss), dh_next) in gz
            .chunks_exact_mut(3 * h)
            .zip(dn.chunks_exact_mut(h))
            .zip(hn.chunks_exact(h))
            .zip(h_prev.chunks_exact(h))
            .zip(dh_loss.chunks_exact(h))
            .zip(dh_next.chunks_exact_mut(h))
        {
            let [gr, gzz, gn] = split3(gz, h);
            lanes(
                h,
                [hn, h_prev, dh_loss],
                [gr, gzz, gn, dh_next, &mut *dbr, &mut *dbz, &mut *dbn],
                [dn],
                |[hp_n, h_prev, dh_loss], [r, z, n, dh_next, br, bz, bn]| {
                    let ([dr, dz, dn], dh_prev) =
                        gru_backward::<FMA>([r, z, n], hp_n, h_prev, dh_loss + dh_next);
                    let dnr = dn * r;
                    ([dr, dz, dnr, dh_prev, br + dr, bz + dz, bn + dnr], [dn])
                },
            );
        }
    }
}

/// The GRU cell of one row, for callers that compute `hp` themselves (the sampler).
///
/// `a` holds the input projection `x · w_ih + b_ih` on entry and is scratch on return (the
/// activated gates r, z, n); `hp` holds `h_{t-1} · w_hh + b_hh`; `h_state` holds `h_{t-1}` on
/// entry and `h_t` on return. Same fast `σ`/`tanh` and instruction-set choice as
/// the sequence [`forward`](super::forward).
///
/// # Shapes
///
/// - `a` (read and written): `[3H]`, gate blocks r, z, n;
/// - `hp`: `[3H]`, gate blocks r, z, n;
/// - `h_state` (read and written): `[H]`.
///
/// # Panics
///
/// Panics if a slice's length does not match `h`.
pub fn gru_cell(h: usize, a: &mut [f32], hp: &[f32], h_state: &mut [f32]) {
    assert_eq!(a.len(), 3 * h, "a must be [3h]");
    assert_eq!(hp.len(), 3 * h, "hp must be [3h]");
    assert_eq!(h_state.len(), h, "h_state must be [h]");
    gru_forward_row(simd_level(), h, a, hp, h_state);
}

/// The three gate blocks of a `[3H]` row.
#[inline(always)]
fn split3(row: &mut [f32], h: usize) -> [&mut [f32]; 3] {
    let (r, rest) = row.split_at_mut(h);
    let (z, n) = rest.split_at_mut(h);
    [r, z, n]
}

/// One element of the GRU forward cell: from `a = (a_r, a_z, a_n)`, `hp = (hp_r, hp_z, hp_n)` and
/// `h_{t-1}`, the gates `(r, z, n)` and `h_t`.
#[inline(always)]
fn gru<const FMA: bool>(a: [f32; 3], hp: [f32; 3], h_prev: f32) -> ([f32; 3], f32) {
    let r = sigmoid_fast::<FMA>(a[0] + hp[0]);
    let z = sigmoid_fast::<FMA>(a[1] + hp[1]);
    let n = tanh_fast::<FMA>(madd::<FMA>(r, hp[2], a[2]));
    // (1 − z)·n + z·h_{t-1} = n + z·(h_{t-1} − n)
    ([r, z, n], madd::<FMA>(z, h_prev - n, n))
}

dispatch! {
    /// One row of the GRU forward pass with `h` updated in place ([`gru_forward_row_impl`]).
    fn gru_forward_row => gru_forward_row_impl(
        h: usize, a: &mut [f32], hp: &[f32], h_state: &mut [f32],
    )
}

/// One row of the GRU forward pass: `a` `[3H]` holds the input projection in and the gates
/// out, `hp` `[3H]` is `h_{t-1} · w_hh + b_hh`, `h_state` `[H]` holds `h_{t-1}` in and `h_t` out.
#[inline(always)]
fn gru_forward_row_impl<const FMA: bool>(h: usize, a: &mut [f32], hp: &[f32], h_state: &mut [f32]) {
    let [ar, az, an] = split3(a, h);
    let (hpr, rest) = hp.split_at(h);
    let (hpz, hpn) = rest.split_at(h);
    lanes(
        h,
        [hpr, hpz, hpn],
        [ar, az, an, h_state],
        [],
        |[hr, hz, hn], [ar, az, an, hprev]| {
            let ([r, z, n], ht) = gru::<FMA>([ar, az, an], [hr, hz, hn], hprev);
            ([r, z, n, ht], [])
        },
    );
}

/// One element of the GRU backward cell: from the gates `(r, z, n)`, `hp_n`, `h_{t-1}` and the
/// total gradient `dh` reaching `h_t`, the gradients `(dr, dz, dn)` of the pre-activations and the
/// part `dh ⊙ z` of the gradient reaching `h_{t-1}` directly.
#[inline(always)]
fn gru_backward<const FMA: bool>(g: [f32; 3], hp_n: f32, h_prev: f32, dh: f32) -> ([f32; 3], f32) {
    let [r, z, n] = g;
    let dn = dh * (1.0 - z) * madd::<FMA>(-n, n, 1.0);
    let dz = dh * (h_prev - n) * (z - z * z);
    let dr = dn * hp_n * (r - r * r);
    ([dr, dz, dn], dh * z)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::*;
    use crate::Dims;

    shared_cell_tests!(Gru);

    /// The GRU's kernels for the shared tests.
    impl KernelCell for Gru {
        fn reference(c: &Case) -> Outputs<f64> {
            let (d, [xp, w, bias, h0]) = (c.d, &c.ins);
            let f = ref_forward(d, xp, w, bias, h0);
            Outputs {
                grads: ref_backward(d, w, h0, &f, &c.dhs),
                fwd: vec![("hs", f.hs), ("gates", f.gates), ("hn", f.hn)],
            }
        }

        fn cell_step(c: &Case) -> Vec<(&'static str, Vec<f32>)> {
            let (h, [xp, w, bias, h0]) = (c.d.h, &c.ins);
            // hp = b_hh + h0 · w_hh, summed in f64.
            let hp = row_product(h0, w, &[bias]);
            let (mut a, mut h_state) = (xp.clone(), h0.clone());
            gru_cell(h, &mut a, &hp, &mut h_state);
            vec![("hs", h_state), ("gates", a)]
        }

        const OWN: [(Input, f32); 2] = [(Input::BHh, 1.0), (Input::H0, 0.9)];
        const XP_SCALE: f32 = 2.0;
        const AUX_NAME: Option<&'static str> = Some("hn");
        const LARGE: Tol = Tol::new(1e-4, 1e-3, 1e-3);
    }

    /// The f64 forward of the reference: hs, gates, hp_n.
    struct RefFwd {
        hs: Vec<f64>,
        gates: Vec<f64>,
        hn: Vec<f64>,
    }

    /// Naive f64 forward.
    fn ref_forward(d: Dims, xp: &[f32], w: &[f32], bias: &[f32], h0: &[f32]) -> RefFwd {
        let (tbh, h, g) = (d.t * d.b * d.h, d.h, 3 * d.h);
        let mut out = RefFwd {
            hs: vec![0.0; tbh],
            gates: vec![0.0; 3 * tbh],
            hn: vec![0.0; tbh],
        };
        for t in 0..d.t {
            for r in 0..d.b {
                let row = t * d.b + r;
                let h_prev = ref_prev(h0, &out.hs, d, t, r);
                let hw = ref_product(&h_prev, w);
                let hp = |j: usize| hw[j] + bias[j] as f64;
                let a = |j: usize| xp[row * g + j] as f64;
                for (j, &h_prev) in h_prev.iter().enumerate() {
                    let rg = sig64(a(j) + hp(j));
                    let zg = sig64(a(h + j) + hp(h + j));
                    let ng = (a(2 * h + j) + rg * hp(2 * h + j)).tanh();
                    for (q, v) in [rg, zg, ng].into_iter().enumerate() {
                        out.gates[row * g + q * h + j] = v;
                    }
                    out.hn[row * h + j] = hp(2 * h + j);
                    out.hs[row * h + j] = (1.0 - zg) * ng + zg * h_prev;
                }
            }
        }
        out
    }

    /// Naive f64 backward from the f64 forward: (dxp, dw_hh, db_hh, dh0).
    fn ref_backward(d: Dims, w: &[f32], h0: &[f32], f: &RefFwd, dhs: &[f32]) -> [Vec<f64>; 4] {
        let (h, g) = (d.h, 3 * d.h);
        let mut dxp = vec![0.0; d.t * d.b * g];
        let (mut dw, mut db) = (vec![0.0; h * g], vec![0.0; g]);
        let dh0 = ref_bptt(d, (h0, &f.hs), (w, &mut dw), dhs, |t, r, dh, dh_prev| {
            let row = t * d.b + r;
            let h_prev = ref_prev(h0, &f.hs, d, t, r);
            let mut dhp = vec![0.0f64; g];
            for j in 0..h {
                let gate = |q: usize| f.gates[row * g + q * h + j];
                let (rg, zg, ng) = (gate(0), gate(1), gate(2));
                let dn = dh[j] * (1.0 - zg) * (1.0 - ng * ng);
                let dz = dh[j] * (h_prev[j] - ng) * zg * (1.0 - zg);
                let dr = dn * f.hn[row * h + j] * rg * (1.0 - rg);
                for (q, v) in [dr, dz, dn].into_iter().enumerate() {
                    dxp[row * g + q * h + j] = v;
                }
                (dhp[j], dhp[h + j], dhp[2 * h + j]) = (dr, dz, dn * rg);
                dh_prev[j] += dh[j] * zg;
            }
            for (db, d) in db.iter_mut().zip(&dhp) {
                *db += d;
            }
            dhp
        });
        [dxp, dw, db, dh0]
    }
}
