//! The LSTM cell's maths: the forward and backward pointwise passes of a step over a block of
//! rows, side by side, in blocks of 16 lanes and compiled per instruction set; [`lstm_cell`], the
//! forward cell alone for the sampler; and its tests against a naive `f64` reference.
//!
//! Gate blocks i, f, g, o (input, forget, cell candidate, output) lie side by side along the last
//! axis (`4H`). For step `t = 0..T`, with `h_{-1} = h0` and `c_{-1} = c0`:
//!
//! ```text
//! z_t = xp[t] + h_{t-1} · w_hh                      [B, 4H]
//! i = σ(z_i), f = σ(z_f), g = tanh(z_g), o = σ(z_o)  [B, H] each
//! c_t = f ⊙ c_{t-1} + i ⊙ g                          [B, H]
//! h_t = o ⊙ tanh(c_t)                                [B, H]
//! ```
//!
//! Backward, with `dh = dL/dh_t` (from the loss and from step `t+1`) and `dc_next` the gradient
//! reaching `c_t` from step `t+1`:
//!
//! ```text
//! dc = dh ⊙ o ⊙ (1 − tanh²(c_t)) + dc_next
//! dz_i = dc ⊙ g ⊙ i(1 − i)    dz_f = dc ⊙ c_{t-1} ⊙ f(1 − f)
//! dz_g = dc ⊙ i ⊙ (1 − g²)    dz_o = dh ⊙ tanh(c_t) ⊙ o(1 − o)
//! dc_{t-1} = dc ⊙ f           dh_{t-1} = dz_t · w_hhᵀ
//! ```

use super::activation::{madd, sigmoid_fast, tanh_fast};
use super::sequence::{BwdRows, CellMath, FwdRows};
use super::simd::{dispatch, simd_level, Simd, LANES};

/// The LSTM for the sequence driver: four gate blocks, `c` carried beside `h` (its `c_t` are the
/// second array), no recurrent bias (the caller folds `b_hh` into the input projection).
pub(super) struct Lstm;

impl CellMath for Lstm {
    const GATES: usize = 4;
    const BIAS: bool = false;
    const CARRY_C: bool = true;
    const AUX: bool = true;
    const HP_APART: bool = false;

    fn forward_rows(simd: Simd, h: usize, r: FwdRows) {
        lstm_forward_rows(simd, h, r);
    }

    fn backward_rows(simd: Simd, h: usize, r: BwdRows) {
        lstm_backward_rows(simd, h, r);
    }
}

/// The LSTM cell of one row, given its gate pre-activations: the pointwise part of a step, for
/// callers that compute `z` themselves (the sampler, whose layers are split across cores).
///
/// On return `z` holds the activated gates, `c` holds `c_t` (it held `c_{t-1}`) and `h_out`
/// holds `h_t`. Same fast `σ`/`tanh` and instruction-set choice as the sequence [`forward`].
///
/// # Shapes
///
/// - `z` (read and written): `[4H]`, gate blocks i, f, g, o;
/// - `h_out` (written): `[H]`;
/// - `c` (read and written): `[H]`.
///
/// # Panics
///
/// Panics if a slice's length does not match `h`.
///
/// the sequence [`forward`]: super::lstm_forward
pub fn lstm_cell(h: usize, z: &mut [f32], h_out: &mut [f32], c: &mut [f32]) {
    assert_eq!(z.len(), 4 * h, "z must be [4h]");
    assert_eq!(h_out.len(), h, "h_out must be [h]");
    assert_eq!(c.len(), h, "c must be [h]");
    // The pointwise pass reads c_{t-1}[j] before writing c_t[j] and never reads h, so `c` is
    // updated in place and `h_out` only written.
    forward_pointwise_inplace(simd_level(), h, z, h_out, c);
}

dispatch! {
    /// The forward pointwise pass over `[rows, ·]` blocks ([`forward_rows_impl`]): activates `z` in
    /// place and writes `h_t` and `c_t`.
    pub(super) fn lstm_forward_rows => forward_rows_impl(h: usize, r: FwdRows)
}

#[inline(always)]
fn forward_rows_impl<const FMA: bool>(h: usize, r: FwdRows) {
    let FwdRows {
        z,
        aux_prev: c_prev,
        h_out,
        aux_out: c_out,
        ..
    } = r;
    for (((z, c_prev), h_out), c_out) in z
        .chunks_exact_mut(4 * h)
        .zip(c_prev.chunks_exact(h))
        .zip(h_out.chunks_exact_mut(h))
        .zip(c_out.chunks_exact_mut(h))
    {
        // The row works in place: c_out starts as c_{t-1}.
        c_out.copy_from_slice(c_prev);
        forward_inplace_impl::<FMA>(h, z, h_out, c_out);
    }
}

/// One element of the forward cell: from the pre-activations `z = (z_i, z_f, z_g, z_o)` and
/// `c_{t-1}`, the activated gates, `c_t` and `h_t`.
#[inline(always)]
fn cell<const FMA: bool>(z: [f32; 4], c_prev: f32) -> ([f32; 4], f32, f32) {
    let i = sigmoid_fast::<FMA>(z[0]);
    let f = sigmoid_fast::<FMA>(z[1]);
    let g = tanh_fast::<FMA>(z[2]);
    let o = sigmoid_fast::<FMA>(z[3]);
    let c = madd::<FMA>(f, c_prev, i * g);
    ([i, f, g, o], c, o * tanh_fast::<FMA>(c))
}

/// [`cell`] over one block of [`LANES`] elements: `z` holds the pre-activations in and the
/// activated gates out, `c` holds `c_{t-1}` in and `c_t` out, `hv` receives `h_t`.
///
/// The rows work on blocks copied to local arrays: with seven separate slices LLVM would need
/// more run-time overlap checks than it is willing to emit and falls back to scalar code (it did,
/// at ~12% of a small training step).
#[inline(always)]
fn cell_block<const FMA: bool>(
    z: &mut [[f32; LANES]; 4],
    c: &mut [f32; LANES],
    hv: &mut [f32; LANES],
) {
    for k in 0..LANES {
        let (a, ck, hk) = cell::<FMA>([z[0][k], z[1][k], z[2][k], z[3][k]], c[k]);
        (z[0][k], z[1][k], z[2][k], z[3][k]) = (a[0], a[1], a[2], a[3]);
        (c[k], hv[k]) = (ck, hk);
    }
}

/// The gate pre-activations of block `r` of one row, as local arrays.
#[inline(always)]
fn load_gates(z: [&[f32]; 4], r: std::ops::Range<usize>) -> [[f32; LANES]; 4] {
    let mut out = [[0.0f32; LANES]; 4];
    for (out, z) in out.iter_mut().zip(z) {
        out.copy_from_slice(&z[r.clone()]);
    }
    out
}

dispatch! {
    /// One row of the forward pointwise pass with `h` and `c` updated in place.
    fn forward_pointwise_inplace => forward_inplace_impl(
        h: usize, z: &mut [f32], h_state: &mut [f32], c_state: &mut [f32],
    )
}

#[inline(always)]
fn forward_inplace_impl<const FMA: bool>(
    h: usize,
    z: &mut [f32],
    h_state: &mut [f32],
    c_state: &mut [f32],
) {
    let (zi, rest) = z.split_at_mut(h);
    let (zf, rest) = rest.split_at_mut(h);
    let (zg, zo) = rest.split_at_mut(h);
    forward_row::<FMA>(zi, zf, zg, zo, h_state, c_state);
}

/// One row of the forward pointwise pass: activates the gate blocks `zi`..`zo` in place, reads
/// `c_{t-1}` from and writes `c_t` to `c_state`, writes `h_t` to `h_state`.
#[inline(always)]
fn forward_row<const FMA: bool>(
    zi: &mut [f32],
    zf: &mut [f32],
    zg: &mut [f32],
    zo: &mut [f32],
    h_state: &mut [f32],
    c_state: &mut [f32],
) {
    let h = zi.len();
    let (zf, zg, zo) = (&mut zf[..h], &mut zg[..h], &mut zo[..h]);
    let (h_state, c_state) = (&mut h_state[..h], &mut c_state[..h]);
    let blocks = h / LANES * LANES;
    for j0 in (0..blocks).step_by(LANES) {
        let r = j0..j0 + LANES;
        let mut z = load_gates([zi, zf, zg, zo], r.clone());
        let mut c = [0.0f32; LANES];
        c.copy_from_slice(&c_state[r.clone()]);
        let mut hv = [0.0f32; LANES];
        cell_block::<FMA>(&mut z, &mut c, &mut hv);
        for (dst, src) in [&mut *zi, &mut *zf, &mut *zg, &mut *zo].into_iter().zip(&z) {
            dst[r.clone()].copy_from_slice(src);
        }
        c_state[r.clone()].copy_from_slice(&c);
        h_state[r].copy_from_slice(&hv);
    }
    for j in blocks..h {
        let (a, c, hv) = cell::<FMA>([zi[j], zf[j], zg[j], zo[j]], c_state[j]);
        (zi[j], zf[j], zg[j], zo[j]) = (a[0], a[1], a[2], a[3]);
        (c_state[j], h_state[j]) = (c, hv);
    }
}

dispatch! {
    /// The backward pointwise pass over `[rows, ·]` blocks of step `t` ([`backward_rows_impl`]).
    ///
    /// Reads `c_t`, `c_{t-1}` and `dh_t` from the loss; `dh_next` holds the gradient reaching
    /// `h_t` from step `t+1` and `dc_next`, in and out, the gradient reaching `c_t` from step
    /// `t+1`, replaced by the one reaching `c_{t-1}`; `gz` holds the activated gates in and
    /// `dz_t` out.
    pub(super) fn lstm_backward_rows => backward_rows_impl(h: usize, r: BwdRows)
}

#[inline(always)]
fn backward_rows_impl<const FMA: bool>(h: usize, r: BwdRows) {
    let BwdRows {
        aux_t: c,
        aux_prev: c_prev,
        dh_loss,
        dh: dh_next,
        dc: dc_next,
        gz,
        ..
    } = r;
    for (((((c, c_prev), dh_loss), dh_next), dc_next), gz) in c
        .chunks_exact(h)
        .zip(c_prev.chunks_exact(h))
        .zip(dh_loss.chunks_exact(h))
        .zip(dh_next.chunks_exact(h))
        .zip(dc_next.chunks_exact_mut(h))
        .zip(gz.chunks_exact_mut(4 * h))
    {
        let (gi, rest) = gz.split_at_mut(h);
        let (gf, rest) = rest.split_at_mut(h);
        let (gg, go) = rest.split_at_mut(h);
        backward_row::<FMA>([gi, gf, gg, go], [c, c_prev, dh_loss, dh_next], dc_next);
    }
}

/// One element of the backward cell: from the activated gates `(i, f, g, o)`, `c_t`, `c_{t-1}`,
/// the two gradients reaching `h_t` and the one reaching `c_t`, the gradients of the four
/// pre-activations and the one reaching `c_{t-1}`.
#[inline(always)]
fn cell_backward<const FMA: bool>(gate: [f32; 4], v: [f32; 4], dc_next: f32) -> ([f32; 4], f32) {
    let [i, f, g, o] = gate;
    let [c, c_prev, dh_loss, dh_next] = v;
    let dh = dh_loss + dh_next;
    let tc = tanh_fast::<FMA>(c);
    let dho = dh * o;
    let dc = madd::<FMA>(dho, madd::<FMA>(-tc, tc, 1.0), dc_next);
    let dz = [
        dc * g * i * (1.0 - i),
        dc * c_prev * f * (1.0 - f),
        dc * i * madd::<FMA>(-g, g, 1.0),
        dho * tc * (1.0 - o),
    ];
    (dz, dc * f)
}

/// One row of the backward pointwise pass: `gz` (gate blocks i, f, g, o) holds the activated
/// gates in and their pre-activations' gradients out; `v` is `[c_t, c_{t-1}, dh_loss, dh_next]`.
/// Works in blocks of [`LANES`] like [`forward_row`].
#[inline(always)]
fn backward_row<const FMA: bool>(gz: [&mut [f32]; 4], v: [&[f32]; 4], dc_next: &mut [f32]) {
    let h = dc_next.len();
    let [gi, gf, gg, go] = gz;
    let (gi, gf, gg, go) = (&mut gi[..h], &mut gf[..h], &mut gg[..h], &mut go[..h]);
    let v = v.map(|v| &v[..h]);
    let blocks = h / LANES * LANES;
    for j0 in (0..blocks).step_by(LANES) {
        let r = j0..j0 + LANES;
        let mut g = load_gates([gi, gf, gg, go], r.clone());
        let mut vb = [[0.0f32; LANES]; 4];
        for (vb, v) in vb.iter_mut().zip(v) {
            vb.copy_from_slice(&v[r.clone()]);
        }
        let mut dc = [0.0f32; LANES];
        dc.copy_from_slice(&dc_next[r.clone()]);
        for k in 0..LANES {
            let gate = [g[0][k], g[1][k], g[2][k], g[3][k]];
            let (dz, dck) =
                cell_backward::<FMA>(gate, [vb[0][k], vb[1][k], vb[2][k], vb[3][k]], dc[k]);
            (g[0][k], g[1][k], g[2][k], g[3][k]) = (dz[0], dz[1], dz[2], dz[3]);
            dc[k] = dck;
        }
        for (dst, src) in [&mut *gi, &mut *gf, &mut *gg, &mut *go].into_iter().zip(&g) {
            dst[r.clone()].copy_from_slice(src);
        }
        dc_next[r].copy_from_slice(&dc);
    }
    for j in blocks..h {
        let gate = [gi[j], gf[j], gg[j], go[j]];
        let (dz, dc) = cell_backward::<FMA>(gate, [v[0][j], v[1][j], v[2][j], v[3][j]], dc_next[j]);
        (gi[j], gf[j], gg[j], go[j]) = (dz[0], dz[1], dz[2], dz[3]);
        dc_next[j] = dc;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::test_support::{
        assert_close, batch_one_cases, check_finite_differences, check_grid, check_large, f64s,
        row_product, sig64, Case, KernelCell, Outputs, Tol,
    };
    use crate::kernel::{backward, forward, Backward, Dims, Forward};
    use crate::Cell;

    /// The sequence forward of the LSTM, `cs` its second array.
    fn lstm_forward(
        d: Dims,
        xz: &mut [f32],
        w_hh: &[f32],
        h0: &[f32],
        c0: &[f32],
        hs: &mut [f32],
        cs: &mut [f32],
    ) {
        let (b_hh, aux) = (&[][..], cs);
        let io = Forward {
            xz,
            w_hh,
            b_hh,
            h0,
            c0,
            hs,
            aux,
        };
        forward(Cell::Lstm, d, io);
    }

    /// The sequence backward of the LSTM.
    #[allow(clippy::too_many_arguments)]
    fn lstm_backward(
        d: Dims,
        w_hh: &[f32],
        h0: &[f32],
        c0: &[f32],
        hs: &[f32],
        cs: &[f32],
        gz: &mut [f32],
        dhs: &[f32],
        dw_hh: &mut [f32],
        dh0: &mut [f32],
        dc0: &mut [f32],
    ) {
        let io = Backward {
            w_hh,
            h0,
            c0,
            hs,
            aux: cs,
            gz,
            dhs,
            dw_hh,
            db_hh: &mut [],
            dh0,
            dc0,
        };
        backward(Cell::Lstm, d, io);
    }

    /// Naive f64 forward: returns (hs, cs, activated gates).
    fn ref_forward(
        d: Dims,
        xp: &[f32],
        w: &[f32],
        h0: &[f32],
        c0: &[f32],
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let (tn, b, h) = (d.t, d.b, d.h);
        let g4 = 4 * h;
        let mut hs = vec![0.0; tn * b * h];
        let mut cs = vec![0.0; tn * b * h];
        let mut gs = vec![0.0; tn * b * g4];
        let mut hp: Vec<f64> = h0.iter().map(|&v| v as f64).collect();
        let mut cp: Vec<f64> = c0.iter().map(|&v| v as f64).collect();
        for t in 0..tn {
            for r in 0..b {
                let mut z = vec![0.0f64; g4];
                for (n, zn) in z.iter_mut().enumerate() {
                    *zn = xp[(t * b + r) * g4 + n] as f64;
                    for k in 0..h {
                        *zn += hp[r * h + k] * w[k * g4 + n] as f64;
                    }
                }
                for j in 0..h {
                    let i = sig64(z[j]);
                    let f = sig64(z[h + j]);
                    let g = z[2 * h + j].tanh();
                    let o = sig64(z[3 * h + j]);
                    let c = f * cp[r * h + j] + i * g;
                    let base = (t * b + r) * g4;
                    gs[base + j] = i;
                    gs[base + h + j] = f;
                    gs[base + 2 * h + j] = g;
                    gs[base + 3 * h + j] = o;
                    cs[(t * b + r) * h + j] = c;
                    hs[(t * b + r) * h + j] = o * c.tanh();
                }
            }
            hp.copy_from_slice(&hs[t * b * h..(t + 1) * b * h]);
            cp.copy_from_slice(&cs[t * b * h..(t + 1) * b * h]);
        }
        (hs, cs, gs)
    }

    /// Naive f64 backward from the f64 forward: returns (dxp, dw_hh, dh0, dc0).
    #[allow(clippy::too_many_arguments)]
    fn ref_backward(
        d: Dims,
        w: &[f32],
        h0: &[f32],
        c0: &[f32],
        hs: &[f64],
        cs: &[f64],
        gs: &[f64],
        dhs: &[f32],
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
        let (tn, b, h) = (d.t, d.b, d.h);
        let g4 = 4 * h;
        let mut dxp = vec![0.0; tn * b * g4];
        let mut dw = vec![0.0; h * g4];
        let mut dhn = vec![0.0f64; b * h];
        let mut dcn = vec![0.0f64; b * h];
        for t in (0..tn).rev() {
            let mut dh_prev = vec![0.0f64; b * h];
            for r in 0..b {
                let base = (t * b + r) * g4;
                let mut dz = vec![0.0f64; g4];
                for j in 0..h {
                    let (i, f, g, o) = (
                        gs[base + j],
                        gs[base + h + j],
                        gs[base + 2 * h + j],
                        gs[base + 3 * h + j],
                    );
                    let c = cs[(t * b + r) * h + j];
                    let cp = if t == 0 {
                        c0[r * h + j] as f64
                    } else {
                        cs[((t - 1) * b + r) * h + j]
                    };
                    let dh = dhs[(t * b + r) * h + j] as f64 + dhn[r * h + j];
                    let tc = c.tanh();
                    let dc = dh * o * (1.0 - tc * tc) + dcn[r * h + j];
                    dz[3 * h + j] = dh * tc * o * (1.0 - o);
                    dz[j] = dc * g * i * (1.0 - i);
                    dz[h + j] = dc * cp * f * (1.0 - f);
                    dz[2 * h + j] = dc * i * (1.0 - g * g);
                    dcn[r * h + j] = dc * f;
                }
                for k in 0..h {
                    let hp = if t == 0 {
                        h0[r * h + k] as f64
                    } else {
                        hs[((t - 1) * b + r) * h + k]
                    };
                    for n in 0..g4 {
                        dh_prev[r * h + k] += dz[n] * w[k * g4 + n] as f64;
                        dw[k * g4 + n] += hp * dz[n];
                    }
                }
                dxp[base..base + g4].copy_from_slice(&dz);
            }
            dhn = dh_prev;
        }
        (dxp, dw, dhn, dcn)
    }

    /// The LSTM for the shared tests; its own inputs are `h0` and `c0`.
    struct Lstm;

    impl KernelCell for Lstm {
        const GATES: usize = 4;
        const XP_SCALE: f32 = 2.0;

        fn other_inputs(d: Dims) -> [(&'static str, usize, f32); 2] {
            [("h0", d.b * d.h, 0.9), ("c0", d.b * d.h, 1.5)]
        }

        fn reference(c: &Case) -> Outputs<f64> {
            let (d, [xp, w, h0, c0]) = (c.d, &c.ins);
            let (hs, cs, gs) = ref_forward(d, xp, w, h0, c0);
            let (dxp, dw, dh0, dc0) = ref_backward(d, w, h0, c0, &hs, &cs, &gs, &c.dhs);
            Outputs {
                fwd: vec![("hs", hs), ("cs", cs), ("gates", gs)],
                grads: [dxp, dw, dh0, dc0],
            }
        }

        fn kernel(c: &Case) -> Outputs<f32> {
            let (d, [xp, w, h0, c0]) = (c.d, &c.ins);
            let (bh, bg) = (d.t * d.b * d.h, d.t * d.b * 4 * d.h);
            let (mut hs, mut cs, mut gs) = (vec![0.0; bh], vec![0.0; bh], xp.clone());
            assert_eq!(gs.len(), bg);
            lstm_forward(d, &mut gs, w, h0, c0, &mut hs, &mut cs);
            let mut dxp = gs.clone();
            let mut dw = vec![f32::NAN; d.h * 4 * d.h];
            let mut dh0 = vec![f32::NAN; d.b * d.h];
            let mut dc0 = vec![f32::NAN; d.b * d.h];
            lstm_backward(
                d, w, h0, c0, &hs, &cs, &mut dxp, &c.dhs, &mut dw, &mut dh0, &mut dc0,
            );
            Outputs {
                fwd: vec![("hs", hs), ("cs", cs), ("gates", gs)],
                grads: [dxp, dw, dh0, dc0],
            }
        }
    }

    #[test]
    fn forward_and_backward_match_reference() {
        check_grid::<Lstm>();
    }

    #[test]
    fn large_parallel_shape_matches_reference() {
        // Big enough for the rayon split of the pointwise passes and a threaded gemm.
        check_large::<Lstm>(Tol {
            fwd: 1e-4,
            bwd: 1e-4,
            dw_hh: 1e-3,
        });
    }

    #[test]
    fn backward_matches_finite_differences() {
        check_finite_differences::<Lstm>();
    }

    #[test]
    fn cell_equals_forward_at_batch_one() {
        for c in batch_one_cases::<Lstm>() {
            let (h, [xp, w, h0, c0]) = (c.d.h, &c.ins);
            let (mut hs, mut cs) = (vec![0.0; h], vec![0.0; h]);
            lstm_forward(c.d, &mut xp.clone(), w, h0, c0, &mut hs, &mut cs);
            // z = xp + h0 · w_hh, summed in f64.
            let mut z = row_product(h0, w, &[xp]);
            let (mut h_out, mut c_state) = (vec![0.0; h], c0.clone());
            lstm_cell(h, &mut z, &mut h_out, &mut c_state);
            assert_close(&format!("h, h={h}"), &h_out, &f64s(&hs), 1e-5);
            assert_close(&format!("c, h={h}"), &c_state, &f64s(&cs), 1e-5);
            let (rhs, rcs, rgs) = ref_forward(c.d, xp, w, h0, c0);
            assert_close("h vs reference", &h_out, &rhs, 1e-5);
            assert_close("c vs reference", &c_state, &rcs, 1e-5);
            assert_close("gates vs reference", &z, &rgs, 1e-5);
        }
    }

    #[test]
    fn empty_shapes_are_fine() {
        let d = Dims { t: 0, b: 2, h: 3 };
        let (w, h0, c0) = (vec![0.5; 36], vec![1.0; 6], vec![1.0; 6]);
        lstm_forward(d, &mut [], &w, &h0, &c0, &mut [], &mut []);
        let (mut dw, mut dh0, mut dc0) = (vec![1.0; 36], vec![1.0; 6], vec![1.0; 6]);
        lstm_backward(
            d,
            &w,
            &h0,
            &c0,
            &[],
            &[],
            &mut [],
            &[],
            &mut dw,
            &mut dh0,
            &mut dc0,
        );
        assert!(dw.iter().chain(&dh0).chain(&dc0).all(|&v| v == 0.0));
        let d = Dims { t: 2, b: 0, h: 3 };
        lstm_forward(d, &mut [], &w, &[], &[], &mut [], &mut []);
    }
}
