//! The maths of the two cells whose only state is `h`, the GRU and the plain tanh RNN: the forward
//! and backward pointwise passes of a step over a block of rows, in blocks of 16 lanes and compiled
//! per instruction set, and [`gru_cell`] and [`rnn_cell`], the forward cells alone for the sampler.
//!
//! GRU gate blocks are r, z, n (PyTorch's order): with `a = xp[t]` and `hp = h_{t-1} · w_hh + b_hh`,
//! `r = σ(a_r + hp_r)`, `z = σ(a_z + hp_z)`, `n = tanh(a_n + r ⊙ hp_n)` and
//! `h_t = (1 − z) ⊙ n + z ⊙ h_{t-1}`. The plain RNN is `h_t = tanh(xp[t] + h_{t-1} · w_hh + b_hh)`.

use super::activation::{madd, sigmoid_fast, tanh_fast};
use super::simd::{dispatch, simd_level, LANES};

/// The GRU cell of one row, for callers that compute `hp` themselves (the sampler).
///
/// `a` holds the input projection `x · w_ih + b_ih` on entry and is scratch on return (the
/// activated gates r, z, n); `hp` holds `h_{t-1} · w_hh + b_hh`; `h_state` holds `h_{t-1}` on
/// entry and `h_t` on return. Same fast `σ`/`tanh` and instruction-set choice as
/// [`gru_forward`].
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
///
/// [`gru_forward`]: super::gru_forward
pub fn gru_cell(h: usize, a: &mut [f32], hp: &[f32], h_state: &mut [f32]) {
    assert_eq!(a.len(), 3 * h, "a must be [3h]");
    assert_eq!(hp.len(), 3 * h, "hp must be [3h]");
    assert_eq!(h_state.len(), h, "h_state must be [h]");
    gru_forward_row(simd_level(), h, a, hp, h_state);
}

/// The plain tanh RNN cell of one row, for callers that compute the pre-activation themselves
/// (the sampler): `h_out = tanh(z)`, with `z = x · w_ih + b_ih + h_{t-1} · w_hh + b_hh`. Same fast
/// `tanh` and instruction-set choice as [`rnn_forward`].
///
/// # Shapes
///
/// `z`: `[H]`; `h_out` (written): `[H]`.
///
/// # Panics
///
/// Panics if the lengths differ.
///
/// [`rnn_forward`]: super::rnn_forward
pub fn rnn_cell(z: &[f32], h_out: &mut [f32]) {
    assert_eq!(h_out.len(), z.len(), "h_out must be as long as z");
    tanh_row(simd_level(), z, h_out);
}

/// Runs `f` on every element `j < n` of the slices: `f(read[·][j], rw[·][j])` returns the new
/// `rw[·][j]` and `out[·][j]`.
///
/// Works on blocks of [`LANES`] copied to local arrays: with this many separate slices LLVM would
/// need more run-time overlap checks than it is willing to emit and fall back to scalar code (see
/// the LSTM's `cell_block`); the remainder runs element by element.
///
/// # Panics
///
/// Panics if a slice is shorter than `n`.
#[inline(always)]
fn lanes<const R: usize, const W: usize, const O: usize>(
    n: usize,
    read: [&[f32]; R],
    rw: [&mut [f32]; W],
    out: [&mut [f32]; O],
    f: impl Fn([f32; R], [f32; W]) -> ([f32; W], [f32; O]),
) {
    let read = read.map(|s| &s[..n]);
    let mut rw = rw.map(|s| &mut s[..n]);
    let mut out = out.map(|s| &mut s[..n]);
    let blocks = n / LANES * LANES;
    for j0 in (0..blocks).step_by(LANES) {
        let r = j0..j0 + LANES;
        let mut x = [[0.0f32; LANES]; R];
        for (x, s) in x.iter_mut().zip(&read) {
            x.copy_from_slice(&s[r.clone()]);
        }
        let mut y = [[0.0f32; LANES]; W];
        for (y, s) in y.iter_mut().zip(&rw) {
            y.copy_from_slice(&s[r.clone()]);
        }
        let mut o = [[0.0f32; LANES]; O];
        for k in 0..LANES {
            let (yk, ok) = f(
                std::array::from_fn(|i| x[i][k]),
                std::array::from_fn(|i| y[i][k]),
            );
            for (y, v) in y.iter_mut().zip(yk) {
                y[k] = v;
            }
            for (o, v) in o.iter_mut().zip(ok) {
                o[k] = v;
            }
        }
        for (s, y) in rw.iter_mut().zip(&y) {
            s[r.clone()].copy_from_slice(y);
        }
        for (s, o) in out.iter_mut().zip(&o) {
            s[r.clone()].copy_from_slice(o);
        }
    }
    for j in blocks..n {
        let (yj, oj) = f(
            std::array::from_fn(|i| read[i][j]),
            std::array::from_fn(|i| rw[i][j]),
        );
        for (s, v) in rw.iter_mut().zip(yj) {
            s[j] = v;
        }
        for (s, v) in out.iter_mut().zip(oj) {
            s[j] = v;
        }
    }
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

dispatch! {
    /// The GRU forward pointwise pass over `[rows, ·]` blocks of one step
    /// ([`gru_forward_rows_impl`]).
    pub(super) fn gru_forward_rows => gru_forward_rows_impl(
        h: usize,
        xz: &mut [f32],
        hh: &[f32],
        b_hh: &[f32],
        h_prev: &[f32],
        h_out: &mut [f32],
        hn_out: &mut [f32],
    )
}

/// The GRU forward pointwise pass over a block of rows: `xz` `[rows, 3H]` holds the input
/// projections in and the gates out; `hh` `[rows, 3H]` is `h_{t-1} · w_hh`, to which it adds
/// `b_hh` `[3H]` (so the product need not start from the bias); writes `h_t` to `h_out` and
/// `hp_n = hh_n + b_hn` to `hn_out` (both `[rows, H]`).
#[inline(always)]
fn gru_forward_rows_impl<const FMA: bool>(
    h: usize,
    xz: &mut [f32],
    hh: &[f32],
    b_hh: &[f32],
    h_prev: &[f32],
    h_out: &mut [f32],
    hn_out: &mut [f32],
) {
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

dispatch! {
    /// The GRU backward pointwise pass over `[rows, ·]` blocks of step `t`
    /// ([`gru_backward_rows_impl`]).
    pub(super) fn gru_backward_rows => gru_backward_rows_impl(
        h: usize,
        gz: &mut [f32],
        dn: &mut [f32],
        hn: &[f32],
        h_prev: &[f32],
        dh_loss: &[f32],
        dh_next: &mut [f32],
        db: &mut [f32],
    )
}

/// The GRU backward pointwise pass over a block of rows.
///
/// `gz` `[rows, 3H]` holds the gates `(r, z, n)` in and `dhp_t = (dr, dz, dn ⊙ r)`, the gradient
/// of `h_{t-1} · w_hh + b_hh`, out; `dn` `[rows, H]` receives `dn` (the n block of `dL/dxp`);
/// `hn` is `hp_n`; `dh_next` holds the gradient reaching `h_t` from step `t+1` in and `dh ⊙ z`
/// out (the rest of the gradient reaching `h_{t-1}` is `dhp_t · w_hhᵀ`); `db` `[3H]` accumulates
/// `dhp_t` summed over the rows.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn gru_backward_rows_impl<const FMA: bool>(
    h: usize,
    gz: &mut [f32],
    dn: &mut [f32],
    hn: &[f32],
    h_prev: &[f32],
    dh_loss: &[f32],
    dh_next: &mut [f32],
    db: &mut [f32],
) {
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
    pub(super) fn rnn_forward_rows => rnn_forward_rows_impl(
        h: usize, z: &[f32], b_hh: &[f32], h_out: &mut [f32],
    )
}

/// The plain RNN forward pointwise pass over a block of rows: `h_out = tanh(z + b_hh)` row by row,
/// `z` `[rows, H]` holding `xp[t] + h_{t-1} · w_hh`.
#[inline(always)]
fn rnn_forward_rows_impl<const FMA: bool>(h: usize, z: &[f32], b_hh: &[f32], h_out: &mut [f32]) {
    for (z, h_out) in z.chunks_exact(h).zip(h_out.chunks_exact_mut(h)) {
        lanes(h, [z, b_hh], [], [h_out], |[z, b], []| {
            ([], [tanh_fast::<FMA>(z + b)])
        });
    }
}

dispatch! {
    /// The plain RNN backward pointwise pass over `[rows, H]` blocks of step `t`
    /// ([`rnn_backward_rows_impl`]).
    pub(super) fn rnn_backward_rows => rnn_backward_rows_impl(
        h: usize, h_t: &[f32], dh_loss: &[f32], dh_next: &[f32], dz: &mut [f32], db: &mut [f32],
    )
}

/// The plain RNN backward pointwise pass over a block of rows: `dz = (dh_loss + dh_next) ⊙
/// (1 − h_t²)` (`dh_next` the gradient reaching `h_t` from step `t+1`), and `db` `[H]` accumulates
/// `dz` summed over the rows.
#[inline(always)]
fn rnn_backward_rows_impl<const FMA: bool>(
    h: usize,
    h_t: &[f32],
    dh_loss: &[f32],
    dh_next: &[f32],
    dz: &mut [f32],
    db: &mut [f32],
) {
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
