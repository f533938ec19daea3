//! The reference: the same recurrence as the fused op, step by step in Burn tensor ops, on any
//! backend. Under autodiff Burn differentiates it op by op, which is what the fused op and its
//! hand-written backward are tested against ([`crate::Recurrence::Tensor`] runs the model on
//! it); [`tensor_backward`] writes that backward out in tensor ops as a second check. Nothing
//! in training or sampling runs it.

use burn::tensor::activation::sigmoid;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use super::SequenceInputs;
use crate::Cell;

/// What [`tensor_forward`] keeps for [`tensor_backward`].
#[derive(Clone, Debug)]
pub struct TensorCache<B: Backend> {
    cell: Cell,
    /// `h_t` of every step `[T, B, H]`.
    hs: Tensor<B, 3>,
    /// The activated gates of every step `[T, B, G·H]` (LSTM: i, f, g, o; GRU: r, z, n; none
    /// for the RNN).
    gates: Option<Tensor<B, 3>>,
    /// `[T, B, H]`: the LSTM's `c_t`, the GRU's `hp_n`; none for the RNN.
    aux: Option<Tensor<B, 3>>,
    /// The inputs that the backward needs again.
    w_hh: Tensor<B, 2>,
    h0: Tensor<B, 2>,
    c0: Option<Tensor<B, 2>>,
}

/// `cell`'s recurrence step by step in Burn tensor ops: `(hs [T, B, H], the LSTM's c_T [B, H],
/// cache)`.
///
/// On an autodiff backend this is the plain step-by-step reference that the fused op is tested
/// against (Burn differentiates it op by op).
///
/// # Panics
/// Panics if `b_hh` and `c0` are not those of `cell`.
pub fn tensor_forward<B: Backend>(
    cell: Cell,
    inputs: SequenceInputs<B>,
) -> (Tensor<B, 3>, Option<Tensor<B, 2>>, TensorCache<B>) {
    inputs.check(cell);
    let SequenceInputs {
        xp,
        w_hh,
        b_hh,
        h0,
        c0,
    } = inputs;
    let [t, b, gh] = xp.dims();
    let h = gh / cell.gates();
    let b_hh = b_hh.map(|b_hh| b_hh.reshape([1, gh]));
    let block = |x: &Tensor<B, 2>, k: usize| x.clone().narrow(1, k * h, h);
    let mut h_prev = h0.clone();
    let mut c_prev = c0.clone();
    let (mut hs, mut gates, mut aux) = (Vec::new(), Vec::new(), Vec::new());
    for step in 0..t {
        let a = xp.clone().narrow(0, step, 1).reshape([b, gh]);
        let hp = h_prev.clone().matmul(w_hh.clone());
        let hp = match &b_hh {
            Some(b_hh) => hp + b_hh.clone(),
            None => hp,
        };
        let h_t = match cell {
            Cell::Lstm => {
                let z = a + hp;
                let i = sigmoid(block(&z, 0));
                let f = sigmoid(block(&z, 1));
                let g = block(&z, 2).tanh();
                let o = sigmoid(block(&z, 3));
                let c = f.clone() * c_prev.expect("the LSTM's c0") + i.clone() * g.clone();
                gates.push(Tensor::cat(vec![i, f, g, o.clone()], 1));
                aux.push(c.clone());
                c_prev = Some(c.clone());
                o * c.tanh()
            }
            Cell::Gru => {
                let r = sigmoid(block(&a, 0) + block(&hp, 0));
                let z = sigmoid(block(&a, 1) + block(&hp, 1));
                let hn = block(&hp, 2);
                let n = (block(&a, 2) + r.clone() * hn.clone()).tanh();
                gates.push(Tensor::cat(vec![r, z.clone(), n.clone()], 1));
                aux.push(hn);
                (z.clone().neg() + 1.0) * n + z * h_prev
            }
            Cell::Rnn => (a + hp).tanh(),
        };
        hs.push(h_t.clone());
        h_prev = h_t;
    }
    let hs = Tensor::stack(hs, 0);
    let stacked = |v: Vec<Tensor<B, 2>>| (!v.is_empty()).then(|| Tensor::stack(v, 0));
    let cache = TensorCache {
        cell,
        hs: hs.clone(),
        gates: stacked(gates),
        aux: stacked(aux),
        w_hh,
        h0,
        c0,
    };
    (hs, c_prev, cache)
}

/// The hand-written backward in Burn tensor ops: the gradient of every input of
/// [`tensor_forward`] from `dL/dhs`.
pub fn tensor_backward<B: Backend>(cache: TensorCache<B>, dhs: Tensor<B, 3>) -> SequenceInputs<B> {
    let TensorCache {
        cell,
        hs,
        gates,
        aux,
        w_hh,
        h0,
        c0,
    } = cache;
    let [t, b, h] = hs.dims();
    let gh = cell.gates() * h;
    let step = |x: &Tensor<B, 3>, s: usize| x.clone().narrow(0, s, 1).reshape([b, x.dims()[2]]);
    let w_hh_t = w_hh.transpose();
    let mut dh_next = h0.zeros_like();
    // The LSTM's dL/dc_t ⊙ f_t, carried back a step.
    let mut dc_next = h0.zeros_like();
    let (mut dxps, mut dhps) = (Vec::with_capacity(t), Vec::with_capacity(t));
    for s in (0..t).rev() {
        let dh = step(&dhs, s) + dh_next;
        let gate = gates.as_ref().map(|g| step(g, s));
        // dL/dxp_s, dL/dhp_s, and the part of dL/dh_{s-1} that does not pass through W_hh.
        let (dxp, dhp, direct) = match cell {
            Cell::Lstm => {
                let gate = gate.expect("the LSTM's gates");
                let cs = aux.as_ref().expect("the LSTM's c_t");
                let c_prev = match s {
                    0 => c0.clone().expect("the LSTM's c0"),
                    _ => step(cs, s - 1),
                };
                let dz;
                (dz, dc_next) = lstm_step(h, dh, gate, (c_prev, step(cs, s)), dc_next);
                (dz.clone(), dz, None)
            }
            Cell::Gru => {
                let gate = gate.expect("the GRU's gates");
                let h_prev = if s == 0 { h0.clone() } else { step(&hs, s - 1) };
                let hn = step(aux.as_ref().expect("the GRU's hp_n"), s);
                gru_step(h, dh, gate, h_prev, hn)
            }
            Cell::Rnn => {
                let dpre = dh * (step(&hs, s).powi_scalar(2).neg() + 1.0);
                (dpre.clone(), dpre, None)
            }
        };
        let through = dhp.clone().matmul(w_hh_t.clone());
        dh_next = match direct {
            Some(direct) => direct + through,
            None => through,
        };
        dxps.push(dxp);
        dhps.push(dhp);
    }
    dxps.reverse();
    dhps.reverse();
    let dhp = Tensor::stack::<3>(dhps, 0);
    let lstm = cell == Cell::Lstm;
    let db = (!lstm).then(|| dhp.clone().reshape([t * b, gh]).sum_dim(0).reshape([gh]));
    SequenceInputs {
        xp: Tensor::stack(dxps, 0),
        w_hh: weight_grad(h0, hs, dhp),
        b_hh: db,
        h0: dh_next,
        c0: lstm.then_some(dc_next),
    }
}

/// Gate block `k` (of `h` columns) of `x`.
fn block<B: Backend>(x: &Tensor<B, 2>, k: usize, h: usize) -> Tensor<B, 2> {
    x.clone().narrow(1, k * h, h)
}

/// One LSTM step back: `dL/dz_s` (i, f, g, o) and the `dL/dc_{s-1}` carried on, from `dh` =
/// `dL/dh_s`, the step's gates, `(c_{s-1}, c_s)` and `dc_next` = `dL/dc_s ⊙ f_{s+1}`.
fn lstm_step<B: Backend>(
    h: usize,
    dh: Tensor<B, 2>,
    gate: Tensor<B, 2>,
    (c_prev, c): (Tensor<B, 2>, Tensor<B, 2>),
    dc_next: Tensor<B, 2>,
) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let (i, f) = (block(&gate, 0, h), block(&gate, 1, h));
    let (g, o) = (block(&gate, 2, h), block(&gate, 3, h));
    let tc = c.tanh();
    let dc = dh.clone() * o.clone() * (tc.clone().powi_scalar(2).neg() + 1.0) + dc_next;
    let dz_o = dh * tc * o.clone() * (o.neg() + 1.0);
    let dz_i = dc.clone() * g.clone() * i.clone() * (i.clone().neg() + 1.0);
    let dz_f = dc.clone() * c_prev * f.clone() * (f.clone().neg() + 1.0);
    let dz_g = dc.clone() * i * (g.powi_scalar(2).neg() + 1.0);
    (Tensor::cat(vec![dz_i, dz_f, dz_g, dz_o], 1), dc * f)
}

/// One GRU step back: `dL/dxp_s`, `dL/dhp_s` and the part of `dL/dh_{s-1}` that does not pass
/// through `W_hh`, from `dh` = `dL/dh_s`, the step's gates (r, z, n), `h_{s-1}` and `hp_n`.
fn gru_step<B: Backend>(
    h: usize,
    dh: Tensor<B, 2>,
    gate: Tensor<B, 2>,
    h_prev: Tensor<B, 2>,
    hn: Tensor<B, 2>,
) -> (Tensor<B, 2>, Tensor<B, 2>, Option<Tensor<B, 2>>) {
    let (r, z, n) = (block(&gate, 0, h), block(&gate, 1, h), block(&gate, 2, h));
    let dn = dh.clone() * (z.clone().neg() + 1.0) * (n.clone().powi_scalar(2).neg() + 1.0);
    let dz = dh.clone() * (h_prev - n) * z.clone() * (z.clone().neg() + 1.0);
    let dr = dn.clone() * hn * r.clone() * (r.clone().neg() + 1.0);
    let dxp = Tensor::cat(vec![dr.clone(), dz.clone(), dn.clone()], 1);
    let dhp = Tensor::cat(vec![dr, dz, dn * r], 1);
    (dxp, dhp, Some(dh * z))
}

/// `dW_hh = Σ_t h_{t-1}ᵀ · dhp_t` as one product over all steps (`h_{-1}` = `h0`).
fn weight_grad<B: Backend>(h0: Tensor<B, 2>, hs: Tensor<B, 3>, dhp: Tensor<B, 3>) -> Tensor<B, 2> {
    let [t, b, h] = hs.dims();
    let gh = dhp.dims()[2];
    let h_prev = if t > 1 {
        Tensor::cat(vec![h0.unsqueeze_dim::<3>(0), hs.narrow(0, 0, t - 1)], 0)
    } else {
        h0.unsqueeze_dim::<3>(0)
    };
    h_prev
        .reshape([t * b, h])
        .transpose()
        .matmul(dhp.reshape([t * b, gh]))
}
