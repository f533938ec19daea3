//! The LSTM sequence passes: [`lstm_forward`] and [`lstm_backward`] over a whole sequence, one row
//! block per thread, and the sizes ([`Dims`]) they take.

use super::cell::{backward_rows, forward_rows};
use super::matmul::{matmul, packed_weights, transpose, Packed};
use super::schedule::{blocks, blocks_mut, on_worker, row_bounds, run_blocks};
use super::simd::{simd_level, Simd};
use super::vecmat::vec_mat;

/// Sizes of one recurrent layer's sequence (LSTM, GRU or plain RNN): `t` steps, `b` rows (batch),
/// `h` hidden units.
///
/// # Shapes
///
/// The arrays of [`lstm_forward`] and [`lstm_backward`] are `[t, b, 4h]` (gate pre-activations and
/// their gradients), `[t, b, h]` (hidden and cell states and their gradients), `[h, 4h]` (the
/// recurrent weights) and `[b, h]` (initial states); the GRU's and the RNN's take `3h` and `h`
/// gate columns in place of `4h`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    /// Number of time steps `T`.
    pub t: usize,
    /// Number of rows (batch size) `B`.
    pub b: usize,
    /// Number of hidden units `H`.
    pub h: usize,
}

impl Dims {
    /// Elements of one step's `[B, H]` block.
    fn bh(&self) -> usize {
        self.b * self.h
    }

    /// Elements of one step's `[B, 4H]` block.
    fn bg(&self) -> usize {
        self.b * 4 * self.h
    }
}

/// Forward over the whole sequence.
///
/// Runs the recurrence for `d.t` steps from `(h0, c0)`, writing every step's hidden and cell
/// state. `xz` holds the input projection of every step on entry and the activated gates
/// `(σ(z_i), σ(z_f), tanh(z_g), σ(z_o))`, which [`lstm_backward`] needs, on return: working in
/// place spares a buffer of the sequence's largest size, and a copy into it.
///
/// # Shapes
///
/// - `xz` (read and written): `[T, B, 4H]`, the input projection of every step with all biases
///   already added, then the gates;
/// - `w_hh`: `[H, 4H]`;
/// - `h0`, `c0`: `[B, H]`;
/// - `hs`, `cs` (written): `[T, B, H]`, `h_t` and `c_t`.
///
/// # Panics
///
/// Panics if a slice's length does not match `d`.
#[allow(clippy::too_many_arguments)]
pub fn lstm_forward(
    d: Dims,
    xz: &mut [f32],
    w_hh: &[f32],
    h0: &[f32],
    c0: &[f32],
    hs: &mut [f32],
    cs: &mut [f32],
) {
    let (t_len, b, h) = (d.t, d.b, d.h);
    let (bh, bg) = (d.bh(), d.bg());
    assert_eq!(xz.len(), t_len * bg, "xz must be [t, b, 4h]");
    assert_eq!(w_hh.len(), h * 4 * h, "w_hh must be [h, 4h]");
    assert_eq!(h0.len(), bh, "h0 must be [b, h]");
    assert_eq!(c0.len(), bh, "c0 must be [b, h]");
    assert_eq!(hs.len(), t_len * bh, "hs must be [t, b, h]");
    assert_eq!(cs.len(), t_len * bh, "cs must be [t, b, h]");
    if t_len == 0 || bh == 0 {
        return;
    }
    on_worker(|| {
        let bounds = row_bounds(b);
        let simd = simd_level();
        let packed = packed_weights(simd, b, h, 4 * h, w_hh);
        let xz = blocks_mut(xz, b, 4 * h, &bounds);
        let h0 = blocks(h0, b, h, &bounds);
        let c0 = blocks(c0, b, h, &bounds);
        let hs = blocks_mut(hs, b, h, &bounds);
        let cs = blocks_mut(cs, b, h, &bounds);
        let parts: Vec<_> = xz
            .into_iter()
            .zip(h0)
            .zip(c0)
            .zip(hs)
            .zip(cs)
            .map(|((((xz, h0), c0), hs), cs)| FwdPart {
                xz,
                h0: h0[0],
                c0: c0[0],
                hs,
                cs,
            })
            .collect();
        run_blocks(parts, |p, threaded| {
            forward_part(simd, h, w_hh, packed.as_ref(), p, threaded)
        });
    })
}

/// One block of rows of a sequence for [`forward_part`]: per-step slices of the arrays of
/// [`lstm_forward`], restricted to the block's rows.
struct FwdPart<'a> {
    xz: Vec<&'a mut [f32]>,
    h0: &'a [f32],
    c0: &'a [f32],
    hs: Vec<&'a mut [f32]>,
    cs: Vec<&'a mut [f32]>,
}

/// The forward recurrence of one block of rows; `threaded` lets its `gemm` products use the
/// thread pool (when the block is the whole batch).
///
/// `packed`, when given, is `w_hh` packed for the microkernels, used for products of two rows or
/// more.
fn forward_part(
    simd: Simd,
    h: usize,
    w_hh: &[f32],
    packed: Option<&Packed>,
    p: FwdPart,
    threaded: bool,
) {
    let FwdPart {
        mut xz,
        h0,
        c0,
        mut hs,
        mut cs,
    } = p;
    let rows = h0.len() / h;
    // xz[t] becomes the pre-activations of step t, then its activated gates.
    for t in 0..xz.len() {
        let z = &mut *xz[t];
        let (hs_done, hs_rest) = hs.split_at_mut(t);
        let (cs_done, cs_rest) = cs.split_at_mut(t);
        let (h_prev, c_prev): (&[f32], &[f32]) = match t {
            0 => (h0, c0),
            _ => (hs_done[t - 1], cs_done[t - 1]),
        };
        if rows == 1 {
            vec_mat(simd, h, h_prev, w_hh, z, threaded);
        } else if let Some(packed) = packed {
            packed.matmul(z, true, h_prev);
        } else {
            // z [rows, 4H] += h_prev [rows, H] · w_hh [H, 4H]
            // SAFETY: the blocks have these shapes; the three matrices do not overlap.
            unsafe {
                matmul(
                    rows,
                    4 * h,
                    h,
                    (z.as_mut_ptr(), 4 * h, 1),
                    true,
                    (h_prev.as_ptr(), h, 1),
                    (w_hh.as_ptr(), 4 * h, 1),
                    threaded,
                );
            }
        }
        let (h_out, c_out) = (&mut *hs_rest[0], &mut *cs_rest[0]);
        forward_rows(simd, h, z, c_prev, h_out, c_out);
    }
}

/// Backward over the whole sequence (truncated BPTT: no gradient arrives for `c_T`).
///
/// Takes what [`lstm_forward`] took and wrote and the gradient of the loss with respect to every
/// `h_t`, and overwrites (does not accumulate into) the gradients of the pre-activations (in
/// place of the gates), of `w_hh` and of the initial states.
///
/// # Shapes
///
/// - `w_hh`: `[H, 4H]`; `h0`, `c0`: `[B, H]`;
/// - `hs`, `cs`: `[T, B, H]`, as written by [`lstm_forward`];
/// - `gz` (read and written): `[T, B, 4H]`, the gates [`lstm_forward`] left in `xz`, then
///   `dL/dz_t`, which is exactly `dL/dxp`;
/// - `dhs`: `[T, B, H]`, `dL/dh_t` for every `t`;
/// - `dw_hh` (written): `[H, 4H]`, `Σ_t h_{t-1}ᵀ · dz_t`;
/// - `dh0`, `dc0` (written): `[B, H]`.
///
/// # Panics
///
/// Panics if a slice's length does not match `d`.
#[allow(clippy::too_many_arguments)]
pub fn lstm_backward(
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
    let (t_len, b, h) = (d.t, d.b, d.h);
    let (bh, bg) = (d.bh(), d.bg());
    assert_eq!(w_hh.len(), h * 4 * h, "w_hh must be [h, 4h]");
    assert_eq!(h0.len(), bh, "h0 must be [b, h]");
    assert_eq!(c0.len(), bh, "c0 must be [b, h]");
    assert_eq!(hs.len(), t_len * bh, "hs must be [t, b, h]");
    assert_eq!(cs.len(), t_len * bh, "cs must be [t, b, h]");
    assert_eq!(gz.len(), t_len * bg, "gz must be [t, b, 4h]");
    assert_eq!(dhs.len(), t_len * bh, "dhs must be [t, b, h]");
    assert_eq!(dw_hh.len(), h * 4 * h, "dw_hh must be [h, 4h]");
    assert_eq!(dh0.len(), bh, "dh0 must be [b, h]");
    assert_eq!(dc0.len(), bh, "dc0 must be [b, h]");

    // dh0 and dc0 carry dL/dh_{t-1} and dL/dc_{t-1} from step to step; after step 0 they are the
    // answer.
    dh0.fill(0.0);
    dc0.fill(0.0);
    if t_len == 0 || bh == 0 {
        dw_hh.fill(0.0);
        return;
    }
    on_worker(|| {
        let simd = simd_level();
        let bounds = row_bounds(b);
        // gemm multiplies by w_hhᵀ about twice as fast from a row-major copy of it as through
        // transposed strides, which repays the copy (one pass over w_hh) many times over; a
        // single row is a matrix-vector product either way.
        let w_t = (b > bounds.len() - 1).then(|| transpose(h, 4 * h, w_hh));
        let packed = w_t
            .as_ref()
            .and_then(|w_t| packed_weights(simd, b, 4 * h, h, w_t));
        let w_t = match &w_t {
            Some(w_t) => (&w_t[..], h, 1),
            None => (w_hh, 1, 4 * h),
        };
        let gz_b = blocks_mut(gz, b, 4 * h, &bounds);
        let cs_b = blocks(cs, b, h, &bounds);
        let c0 = blocks(c0, b, h, &bounds);
        let dhs = blocks(dhs, b, h, &bounds);
        let dh0 = blocks_mut(dh0, b, h, &bounds);
        let dc0 = blocks_mut(dc0, b, h, &bounds);
        let parts: Vec<_> = gz_b
            .into_iter()
            .zip(cs_b)
            .zip(c0)
            .zip(dhs)
            .zip(dh0)
            .zip(dc0)
            .map(|(((((gz, cs), c0), dhs), mut dh0), mut dc0)| BwdPart {
                gz,
                cs,
                c0: c0[0],
                dhs,
                dh0: dh0.pop().expect("one step"),
                dc0: dc0.pop().expect("one step"),
            })
            .collect();
        run_blocks(parts, |p, threaded| {
            backward_part(simd, h, w_t, packed.as_ref(), p, threaded)
        });

        // dw_hh [H, 4H] = h0ᵀ [H, B] · dz_0 [B, 4H] + hs[0..T-1]ᵀ [H, (T-1)B] · dz[1..T] [(T-1)B, 4H]
        // SAFETY: the lengths were checked above; the three matrices do not overlap.
        unsafe {
            matmul(
                h,
                4 * h,
                b,
                (dw_hh.as_mut_ptr(), 4 * h, 1),
                false,
                (h0.as_ptr(), 1, h),
                (gz.as_ptr(), 4 * h, 1),
                true,
            );
            if t_len > 1 {
                matmul(
                    h,
                    4 * h,
                    (t_len - 1) * b,
                    (dw_hh.as_mut_ptr(), 4 * h, 1),
                    true,
                    (hs.as_ptr(), 1, h),
                    (gz[bg..].as_ptr(), 4 * h, 1),
                    true,
                );
            }
        }
    })
}

/// One block of rows of a sequence for [`backward_part`]: per-step slices of the arrays of
/// [`lstm_backward`], restricted to the block's rows.
struct BwdPart<'a> {
    gz: Vec<&'a mut [f32]>,
    cs: Vec<&'a [f32]>,
    c0: &'a [f32],
    dhs: Vec<&'a [f32]>,
    dh0: &'a mut [f32],
    dc0: &'a mut [f32],
}

/// The backward recurrence of one block of rows (everything but `dw_hh`, which mixes rows);
/// `w_t` is `w_hhᵀ` as a matrix operand (slice, row stride, column stride).
/// `packed`, when given, is `w_t` packed for the microkernels.
fn backward_part(
    simd: Simd,
    h: usize,
    w_t: (&[f32], usize, usize),
    packed: Option<&Packed>,
    p: BwdPart,
    threaded: bool,
) {
    let BwdPart {
        mut gz,
        cs,
        c0,
        dhs,
        dh0,
        dc0,
    } = p;
    let rows = c0.len() / h;
    for t in (0..gz.len()).rev() {
        let c_prev = if t == 0 { c0 } else { cs[t - 1] };
        let dz = &mut *gz[t];
        backward_rows(simd, h, cs[t], c_prev, dhs[t], dh0, dc0, dz);
        // dh_{t-1} [rows, H] = dz_t [rows, 4H] · w_hhᵀ [4H, H]
        if let Some(packed) = packed {
            packed.matmul(dh0, false, dz);
            continue;
        }
        // SAFETY: the blocks have these shapes; the three matrices do not overlap.
        unsafe {
            matmul(
                rows,
                h,
                4 * h,
                (dh0.as_mut_ptr(), h, 1),
                false,
                (dz.as_ptr(), 4 * h, 1),
                (w_t.0.as_ptr(), w_t.1, w_t.2),
                threaded,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::lstm_cell;
    use crate::kernel::test_support::{
        assert_close, batch_one_cases, check_finite_differences, check_grid, check_large, f64s,
        row_product, sig64, Case, KernelCell, Outputs, Tol,
    };

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
