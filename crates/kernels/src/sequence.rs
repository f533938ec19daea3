//! The sequence driver, one for every cell: [`forward`] and [`backward`] over a whole sequence,
//! one row block per thread, each step one product with the recurrent weights and one fused
//! pointwise pass of the cell ([`CellMath`], in `cell_math`), and `dW_hh` as one product over
//! all steps at the end.

use rayon::prelude::*;

use super::bf16::Bf16Path;
use super::cell_math::{backward_rows, forward_rows, BwdRows, CellMath, FwdRows};
use super::gru::Gru;
use super::lstm::Lstm;
use super::products::{sum_parts, weight_grad, StepWeights};
use super::rnn::Rnn;
use super::schedule::{blocks, blocks_mut, on_worker, row_bounds, run_blocks};
use super::simd::{simd_level, Simd};
use crate::Cell;

/// Sizes of one recurrent layer's sequence: `t` steps, `b` rows (batch), `h` hidden units.
///
/// # Shapes
///
/// With `G` the cell's gate blocks ([`Cell::gates`]: LSTM 4, GRU 3, RNN 1), the arrays of
/// [`forward`] and [`backward`] are `[t, b, G·h]` (gate pre-activations and their gradients),
/// `[t, b, h]` (hidden states, the cell's second array and their gradients), `[h, G·h]` (the
/// recurrent weights), `[G·h]` (their bias) and `[b, h]` (initial states).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    /// Number of time steps `T`.
    pub t: usize,
    /// Number of rows (batch size) `B`.
    pub b: usize,
    /// Number of hidden units `H`.
    pub h: usize,
}

/// The arrays of a sequence's forward pass (`G` = [`Cell::gates`]).
pub struct Forward<'a> {
    /// `[T, B, G·H]` (read and written): the input projection of every step (`x · w_ih` plus the
    /// biases the op does not take) in; the activated gates, which [`backward`] needs, out (the
    /// plain RNN: scratch). Working in place spares a buffer of the sequence's largest size.
    pub xz: &'a mut [f32],
    /// `[H, G·H]`.
    pub w_hh: &'a [f32],
    /// `[G·H]`: the recurrent bias of the GRU and the RNN; empty for the LSTM.
    pub b_hh: &'a [f32],
    /// `[B, H]`.
    pub h0: &'a [f32],
    /// `[B, H]`: the LSTM's `c0`; empty for the other cells.
    pub c0: &'a [f32],
    /// `[T, B, H]` (written): `h_t`.
    pub hs: &'a mut [f32],
    /// `[T, B, H]` (written): the LSTM's `c_t`, the GRU's `hp_n = h_{t-1} · w_hn + b_hn`; empty
    /// for the plain RNN.
    pub aux: &'a mut [f32],
    /// The path of the products with `w_hh` when they take bf16 operands (f32 sums); `None`:
    /// f32.
    pub bf16: Option<Bf16Path>,
}

/// The arrays of a sequence's backward pass (truncated BPTT: no gradient arrives for the last
/// state beyond `dhs`). The gradients are overwritten, not accumulated into.
pub struct Backward<'a> {
    /// `w_hh`, `h0` and `c0` as [`forward`] took them.
    pub w_hh: &'a [f32],
    pub h0: &'a [f32],
    pub c0: &'a [f32],
    /// `hs` and `aux` as [`forward`] wrote them.
    pub hs: &'a [f32],
    pub aux: &'a [f32],
    /// `[T, B, G·H]` (read and written): the gates [`forward`] left in `xz` in (the plain RNN:
    /// anything), `dL/dxp` out.
    pub gz: &'a mut [f32],
    /// `[T, B, H]`: `dL/dh_t` for every `t`.
    pub dhs: &'a [f32],
    /// `[H, G·H]` (written): `Σ_t h_{t-1}ᵀ · dhp_t`.
    pub dw_hh: &'a mut [f32],
    /// `[G·H]` (written): `dhp_t` summed over steps and rows; empty for the LSTM.
    pub db_hh: &'a mut [f32],
    /// `[B, H]` (written).
    pub dh0: &'a mut [f32],
    /// `[B, H]` (written): the LSTM's `dc0`; empty for the other cells.
    pub dc0: &'a mut [f32],
    /// The path of the products (with `w_hhᵀ`, and `dW_hh`'s) when they take bf16 operands
    /// (f32 sums); `None`: f32.
    pub bf16: Option<Bf16Path>,
}

/// Runs `cell`'s recurrence forward over the whole sequence from `h0` (and `c0`), writing every
/// step's hidden state (and second array): see [`Forward`] for the arrays.
///
/// # Panics
///
/// Panics if a slice's length does not match `d` and the cell.
pub fn forward(cell: Cell, d: Dims, io: Forward) {
    match cell {
        Cell::Lstm => run_forward::<Lstm>(d, io),
        Cell::Gru => run_forward::<Gru>(d, io),
        Cell::Rnn => run_forward::<Rnn>(d, io),
    }
}

/// Runs `cell`'s recurrence backward over the whole sequence: see [`Backward`] for the arrays.
///
/// # Panics
///
/// Panics if a slice's length does not match `d` and the cell.
pub fn backward(cell: Cell, d: Dims, io: Backward) {
    match cell {
        Cell::Lstm => run_backward::<Lstm>(d, io),
        Cell::Gru => run_backward::<Gru>(d, io),
        Cell::Rnn => run_backward::<Rnn>(d, io),
    }
}

/// The expected lengths of a cell's arrays for `d`, by name.
struct Lens {
    h: usize,
    bh: usize,
    tbh: usize,
    g: usize,
    tbg: usize,
    bias: usize,
    c: usize,
    aux: usize,
}

impl Lens {
    fn of<C: CellMath>(d: Dims) -> Self {
        let (bh, g) = (d.b * d.h, C::GATES * d.h);
        let tbh = d.t * bh;
        Lens {
            h: d.h,
            bh,
            tbh,
            g,
            tbg: d.t * d.b * g,
            bias: if C::BIAS { g } else { 0 },
            c: if C::CARRY_C { bh } else { 0 },
            aux: if C::AUX { tbh } else { 0 },
        }
    }

    /// Panics unless the arrays that [`forward`] and [`backward`] both take have these lengths.
    fn check_common(&self, w_hh: &[f32], h0: &[f32], c0: &[f32], hs: &[f32], aux: &[f32]) {
        assert_eq!(w_hh.len(), self.h * self.g, "w_hh must be [h, G·h]");
        assert_eq!(h0.len(), self.bh, "h0 must be [b, h]");
        assert_eq!(c0.len(), self.c, "c0 must be [b, h] (LSTM) or empty");
        assert_eq!(hs.len(), self.tbh, "hs must be [t, b, h]");
        assert_eq!(
            aux.len(),
            self.aux,
            "aux must be [t, b, h] (LSTM, GRU) or empty"
        );
    }

    /// Panics unless the arrays of [`forward`] have these lengths.
    fn check_forward(&self, io: &Forward) {
        self.check_common(io.w_hh, io.h0, io.c0, io.hs, io.aux);
        assert_eq!(io.xz.len(), self.tbg, "xz must be [t, b, G·h]");
        assert_eq!(
            io.b_hh.len(),
            self.bias,
            "b_hh must be [G·h] (GRU, RNN) or empty"
        );
    }

    /// Panics unless the arrays of [`backward`] have these lengths.
    fn check_backward(&self, io: &Backward) {
        self.check_common(io.w_hh, io.h0, io.c0, io.hs, io.aux);
        assert_eq!(io.gz.len(), self.tbg, "gz must be [t, b, G·h]");
        assert_eq!(io.dhs.len(), self.tbh, "dhs must be [t, b, h]");
        assert_eq!(io.dw_hh.len(), self.h * self.g, "dw_hh must be [h, G·h]");
        assert_eq!(
            io.db_hh.len(),
            self.bias,
            "db_hh must be [G·h] (GRU, RNN) or empty"
        );
        assert_eq!(io.dh0.len(), self.bh, "dh0 must be [b, h]");
        assert_eq!(io.dc0.len(), self.c, "dc0 must be [b, h] (LSTM) or empty");
    }
}

fn run_forward<C: CellMath>(d: Dims, io: Forward) {
    let n = Lens::of::<C>(d);
    n.check_forward(&io);
    let (b, h, g) = (d.b, d.h, n.g);
    if n.tbh == 0 {
        return;
    }
    on_worker(|| {
        let bounds = row_bounds(b);
        let simd = simd_level();
        let w = StepWeights::forward(simd, b, h, g, io.w_hh, io.bf16);
        let mut xz = blocks_mut(io.xz, b, g, &bounds).into_iter();
        let mut h0 = blocks(io.h0, b, h, &bounds).into_iter();
        let mut c0 = blocks(io.c0, b, h, &bounds).into_iter();
        let mut hs = blocks_mut(io.hs, b, h, &bounds).into_iter();
        let mut aux = blocks_mut(io.aux, b, h, &bounds).into_iter();
        let parts: Vec<_> = (1..bounds.len())
            .map(|_| FwdPart {
                xz: xz.next().expect("a block"),
                h0: first(h0.next()),
                c0: first(c0.next()),
                hs: hs.next().expect("a block"),
                aux: aux.next().expect("a block"),
            })
            .collect();
        run_blocks(parts, |p, threaded| {
            forward_part::<C>(simd, h, &w, io.b_hh, p, threaded)
        });
    })
}

/// The first step's slice of a block, or an empty one (an array the cell does not take).
fn first(block: Option<Vec<&[f32]>>) -> &[f32] {
    block.and_then(|b| b.first().copied()).unwrap_or(&[])
}

/// The first step's slice of a mutable block, or an empty one.
fn first_mut(block: Option<Vec<&mut [f32]>>) -> &mut [f32] {
    block.and_then(|b| b.into_iter().next()).unwrap_or_default()
}

/// One block of rows of a sequence for [`forward_part`]: per-step slices of the arrays of
/// [`Forward`], restricted to the block's rows (empty vectors and slices for arrays the cell
/// does not take).
struct FwdPart<'a> {
    xz: Vec<&'a mut [f32]>,
    h0: &'a [f32],
    c0: &'a [f32],
    hs: Vec<&'a mut [f32]>,
    aux: Vec<&'a mut [f32]>,
}

/// The forward recurrence of one block of rows; `threaded` lets its products use the thread pool
/// (when the block is the whole batch).
fn forward_part<C: CellMath>(
    simd: Simd,
    h: usize,
    w: &StepWeights,
    b_hh: &[f32],
    p: FwdPart,
    threaded: bool,
) {
    let FwdPart {
        mut xz,
        h0,
        c0,
        mut hs,
        mut aux,
    } = p;
    let rows = h0.len() / h;
    let mut hh = vec![0.0; if C::HP_APART { rows * C::GATES * h } else { 0 }];
    for t in 0..xz.len() {
        let (hs_done, hs_rest) = hs.split_at_mut(t);
        let h_prev: &[f32] = if t == 0 { h0 } else { hs_done[t - 1] };
        let done = t.min(aux.len());
        let (aux_done, aux_rest) = aux.split_at_mut(done);
        let aux_prev: &[f32] = match (C::CARRY_C, t) {
            (false, _) => &[],
            (true, 0) => c0,
            (true, _) => aux_done[t - 1],
        };
        if C::HP_APART {
            // hh [rows, G·H] = h_prev [rows, H] · w_hh [H, G·H]; the pointwise pass adds b_hh.
            w.product(&mut hh, false, h_prev, threaded);
        } else {
            // xz[t] [rows, G·H] += h_prev [rows, H] · w_hh [H, G·H]
            w.product(xz[t], true, h_prev, threaded);
        }
        forward_rows::<C>(
            simd,
            h,
            FwdRows {
                z: &mut *xz[t],
                hh: &hh,
                b_hh,
                h_prev,
                aux_prev,
                h_out: &mut *hs_rest[0],
                aux_out: aux_rest.first_mut().map(|a| &mut **a).unwrap_or_default(),
            },
        );
    }
}

fn run_backward<C: CellMath>(d: Dims, mut io: Backward) {
    let n = Lens::of::<C>(d);
    n.check_backward(&io);
    let (t_len, b, h, g) = (d.t, d.b, d.h, n.g);

    // dh0 and dc0 carry dL/dh_{t-1} and dL/dc_{t-1} from step to step; after step 0 they are the
    // answer.
    io.dh0.fill(0.0);
    io.dc0.fill(0.0);
    if n.tbh == 0 {
        io.dw_hh.fill(0.0);
        io.db_hh.fill(0.0);
        return;
    }
    on_worker(|| {
        let simd = simd_level();
        let bounds = row_bounds(b);
        let n_parts = bounds.len() - 1;
        let w = StepWeights::backward(simd, b, n_parts, h, g, io.w_hh, io.bf16);
        // The last gate block of dL/dxp of every step while gz holds dhp_t (HP_APART).
        let mut dn = vec![0.0; if C::HP_APART { n.tbh } else { 0 }];
        let mut db = vec![0.0; n_parts * n.bias];
        let scratch = (&mut dn[..], &mut db[..]);
        run_blocks(
            backward_parts(&mut io, scratch, (h, g), &bounds),
            |p, threaded| backward_part::<C>(simd, h, &w, p, threaded),
        );
        weight_grad(t_len, b, h, g, io.h0, io.hs, io.gz, io.dw_hh, io.bf16);
        sum_parts(&db, io.db_hh);
        if C::HP_APART {
            io.gz
                .par_chunks_exact_mut(g)
                .zip(dn.par_chunks_exact(h))
                .with_min_len(64)
                .for_each(|(gz, dn)| gz[g - h..].copy_from_slice(dn));
        }
    })
}

/// `io`'s per-step arrays split by rows into one [`BwdPart`] per block between `bounds` (`h`
/// units, `g` gate columns), each with its slices of the scratch `dn` (the GRU's) and `db` (the
/// blocks' partial `db_hh`, one run of `G·h` per block, or empty).
fn backward_parts<'a>(
    io: &'a mut Backward<'_>,
    (dn, db): (&'a mut [f32], &'a mut [f32]),
    (h, g): (usize, usize),
    bounds: &[usize],
) -> Vec<BwdPart<'a>> {
    let (b, n_parts) = (bounds[bounds.len() - 1], bounds.len() - 1);
    let mut gz = blocks_mut(&mut *io.gz, b, g, bounds).into_iter();
    let mut dn = blocks_mut(dn, b, h, bounds).into_iter();
    let mut hs = blocks(io.hs, b, h, bounds).into_iter();
    let mut aux = blocks(io.aux, b, h, bounds).into_iter();
    let mut h0 = blocks(io.h0, b, h, bounds).into_iter();
    let mut c0 = blocks(io.c0, b, h, bounds).into_iter();
    let mut dhs = blocks(io.dhs, b, h, bounds).into_iter();
    let mut dh0 = blocks_mut(&mut *io.dh0, b, h, bounds).into_iter();
    let mut dc0 = blocks_mut(&mut *io.dc0, b, h, bounds).into_iter();
    let mut db = db.chunks_mut((db.len() / n_parts).max(1));
    (0..n_parts)
        .map(|_| BwdPart {
            gz: gz.next().expect("a block"),
            dn: dn.next().expect("a block"),
            hs: hs.next().expect("a block"),
            aux: aux.next().expect("a block"),
            h0: first(h0.next()),
            c0: first(c0.next()),
            dhs: dhs.next().expect("a block"),
            dh0: first_mut(dh0.next()),
            dc0: first_mut(dc0.next()),
            db: db.next().unwrap_or_default(),
        })
        .collect()
}

/// One block of rows of a sequence for [`backward_part`]: per-step slices of the arrays of
/// [`Backward`], restricted to the block's rows, and the block's partial `db_hh`.
struct BwdPart<'a> {
    gz: Vec<&'a mut [f32]>,
    dn: Vec<&'a mut [f32]>,
    hs: Vec<&'a [f32]>,
    aux: Vec<&'a [f32]>,
    h0: &'a [f32],
    c0: &'a [f32],
    dhs: Vec<&'a [f32]>,
    dh0: &'a mut [f32],
    dc0: &'a mut [f32],
    db: &'a mut [f32],
}

/// The backward recurrence of one block of rows (everything but `dw_hh`, which mixes rows, and
/// the final last gate blocks of `gz`).
fn backward_part<C: CellMath>(simd: Simd, h: usize, w: &StepWeights, p: BwdPart, threaded: bool) {
    let BwdPart {
        mut gz,
        mut dn,
        hs,
        aux,
        h0,
        c0,
        dhs,
        dh0,
        dc0,
        db,
    } = p;
    for t in (0..gz.len()).rev() {
        let (h_prev, aux_prev): (&[f32], &[f32]) = match (C::CARRY_C, t) {
            (_, 0) => (h0, c0),
            (true, _) => (hs[t - 1], aux[t - 1]),
            (false, _) => (hs[t - 1], &[]),
        };
        backward_rows::<C>(
            simd,
            h,
            BwdRows {
                gz: &mut *gz[t],
                dn: dn.get_mut(t).map(|d| &mut **d).unwrap_or_default(),
                h_prev,
                h_t: hs[t],
                aux_prev,
                aux_t: aux.get(t).copied().unwrap_or(&[]),
                dh_loss: dhs[t],
                dh: &mut *dh0,
                dc: &mut *dc0,
                db: &mut *db,
            },
        );
        // dh_{t-1} [rows, H] (+)= dhp_t [rows, G·H] · w_hhᵀ [G·H, H]
        w.product(dh0, C::HP_APART, gz[t], threaded);
    }
}
