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
use super::cell_math::{BwdRows, CellMath, FwdRows};
use super::simd::{dispatch, simd_level, LANES};
use crate::Cell;

/// The LSTM for the sequence driver: four gate blocks, `c` carried beside `h` (its `c_t` are the
/// second array), no recurrent bias (the caller folds `b_hh` into the input projection).
pub(super) struct Lstm;

impl CellMath for Lstm {
    const CELL: Cell = Cell::Lstm;

    /// The forward pointwise pass over a block of rows: activates `z` in place and writes `h_t`
    /// and `c_t`.
    #[inline(always)]
    fn forward_rows<const FMA: bool>(h: usize, r: FwdRows) {
        // aux_prev is c_{t-1}, aux_out c_t.
        for (((z, c_prev), h_out), c_out) in
            r.z.chunks_exact_mut(4 * h)
                .zip(r.aux_prev.chunks_exact(h))
                .zip(r.h_out.chunks_exact_mut(h))
                .zip(r.aux_out.chunks_exact_mut(h))
        {
            // The row works in place: c_out starts as c_{t-1}.
            c_out.copy_from_slice(c_prev);
            forward_inplace_impl::<FMA>(h, z, h_out, c_out);
        }
    }

    /// The backward pointwise pass over a block of rows of step `t`.
    ///
    /// Reads `c_t`, `c_{t-1}` and `dh_t` from the loss; `dh_next` holds the gradient reaching
    /// `h_t` from step `t+1` and `dc_next`, in and out, the gradient reaching `c_t` from step
    /// `t+1`, replaced by the one reaching `c_{t-1}`; `gz` holds the activated gates in and
    /// `dz_t` out.
    #[inline(always)]
    fn backward_rows<const FMA: bool>(h: usize, r: BwdRows) {
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
}

/// The LSTM cell of one row, given its gate pre-activations: the pointwise part of a step, for
/// callers that compute `z` themselves (the sampler, whose layers are split across cores).
///
/// On return `z` holds the activated gates, `c` holds `c_t` (it held `c_{t-1}`) and `h_out`
/// holds `h_t`. Same fast `σ`/`tanh` and instruction-set choice as the sequence [`forward`](super::forward).
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
pub fn lstm_cell(h: usize, z: &mut [f32], h_out: &mut [f32], c: &mut [f32]) {
    assert_eq!(z.len(), 4 * h, "z must be [4h]");
    assert_eq!(h_out.len(), h, "h_out must be [h]");
    assert_eq!(c.len(), h, "c must be [h]");
    // The pointwise pass reads c_{t-1}[j] before writing c_t[j] and never reads h, so `c` is
    // updated in place and `h_out` only written.
    forward_pointwise_inplace(simd_level(), h, z, h_out, c);
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
/// more run-time overlap checks than it is willing to emit and falls back to scalar code.
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
    use crate::test_support::*;
    use crate::Dims;

    shared_cell_tests!(Lstm);

    /// The LSTM's kernels for the shared tests.
    impl KernelCell for Lstm {
        fn cell_step(c: &Case) -> Vec<(&'static str, Vec<f32>)> {
            let (h, [xp, w, h0, c0]) = (c.d.h, &c.ins);
            // z = xp + h0 · w_hh, summed in f64.
            let mut z = row_product(h0, w, &[xp]);
            let (mut h_out, mut c_state) = (vec![0.0; h], c0.clone());
            lstm_cell(h, &mut z, &mut h_out, &mut c_state);
            vec![("hs", h_out), ("cs", c_state), ("gates", z)]
        }

        fn reference(c: &Case) -> Outputs<f64> {
            let (d, [xp, w, h0, c0]) = (c.d, &c.ins);
            let (hs, cs, gs) = ref_forward(d, xp, w, h0, c0);
            Outputs {
                grads: ref_backward(d, w, h0, c0, &hs, &cs, &gs, &c.dhs),
                fwd: vec![("hs", hs), ("cs", cs), ("gates", gs)],
            }
        }

        const OWN: [(Input, f32); 2] = [(Input::H0, 0.9), (Input::C0, 1.5)];
        const XP_SCALE: f32 = 2.0;
        const AUX_NAME: Option<&'static str> = Some("cs");
        const LARGE: Tol = Tol::new(1e-4, 1e-4, 1e-3);
    }

    /// Naive f64 forward: returns (hs, cs, activated gates).
    fn ref_forward(
        d: Dims,
        xp: &[f32],
        w: &[f32],
        h0: &[f32],
        c0: &[f32],
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let (tbh, h) = (d.t * d.b * d.h, d.h);
        let (mut hs, mut cs, mut gs) = (vec![0.0; tbh], vec![0.0; tbh], vec![0.0; 4 * tbh]);
        for t in 0..d.t {
            for r in 0..d.b {
                let row = t * d.b + r;
                let hz = ref_product(&ref_prev(h0, &hs, d, t, r), w);
                let c_prev = ref_prev(c0, &cs, d, t, r);
                let z = |j: usize| xp[row * 4 * h + j] as f64 + hz[j];
                for j in 0..h {
                    let (i, f) = (sig64(z(j)), sig64(z(h + j)));
                    let (g, o) = (z(2 * h + j).tanh(), sig64(z(3 * h + j)));
                    let c = f * c_prev[j] + i * g;
                    for (q, v) in [i, f, g, o].into_iter().enumerate() {
                        gs[row * 4 * h + q * h + j] = v;
                    }
                    cs[row * h + j] = c;
                    hs[row * h + j] = o * c.tanh();
                }
            }
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
    ) -> [Vec<f64>; 4] {
        let (h, g4) = (d.h, 4 * d.h);
        let mut dxp = vec![0.0; d.t * d.b * g4];
        let mut dw = vec![0.0; h * g4];
        // The gradient reaching c_{t-1} of each row, carried from step to step.
        let mut dcn = vec![0.0f64; d.b * h];
        let dh0 = ref_bptt(d, (h0, hs), (w, &mut dw), dhs, |t, r, dh, _| {
            let row = t * d.b + r;
            let c_prev = ref_prev(c0, cs, d, t, r);
            let dz = &mut dxp[row * g4..][..g4];
            for j in 0..h {
                let gate = |q: usize| gs[row * g4 + q * h + j];
                let (i, f, g, o) = (gate(0), gate(1), gate(2), gate(3));
                let tc = cs[row * h + j].tanh();
                let dc = dh[j] * o * (1.0 - tc * tc) + dcn[r * h + j];
                dz[j] = dc * g * i * (1.0 - i);
                dz[h + j] = dc * c_prev[j] * f * (1.0 - f);
                dz[2 * h + j] = dc * i * (1.0 - g * g);
                dz[3 * h + j] = dh[j] * tc * o * (1.0 - o);
                dcn[r * h + j] = dc * f;
            }
            dz.to_vec()
        });
        [dxp, dw, dh0, dcn]
    }
}
