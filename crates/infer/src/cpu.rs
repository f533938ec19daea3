//! The dedicated CPU inference path: the model's weights read out of the Burn module into plain
//! arrays, and a fused step (one row lookup, one vector-matrix product per weight matrix, the
//! LSTM cell from `karnna_model::kernel`) with no autodiff and no per-op dispatch.

use burn::prelude::*;
use karnna_model::kernel::lstm_step;
use karnna_model::CharRnn;

use crate::generate::CharStepper;

struct Layer {
    w_ih: Vec<f32>, // [input, 4H]
    w_hh: Vec<f32>, // [H, 4H]
    bias: Vec<f32>, // [4H], b_ih + b_hh
    hc: Vec<f32>,   // [2, H]: h then c
}

/// A [`CharRnn`] for batch-1 sampling on the CPU.
pub struct CpuCharRnn {
    h: usize,
    vocab: usize,
    layers: Vec<Layer>,
    out_w: Vec<f32>, // [H, V]
    out_b: Vec<f32>, // [V]
    xp: Vec<f32>,
    scratch: Vec<f32>,
    logits: Vec<f32>,
}

fn floats<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().into_vec::<f32>().expect("f32 weights")
}

/// `out += x · w` for `x: [k]`, `w: [k, n]` (row-major), `out: [n]`: one contiguous row of `w`
/// per element of `x`, which the compiler vectorises.
fn vec_mat_acc(x: &[f32], w: &[f32], out: &mut [f32]) {
    let n = out.len();
    for (k, &xk) in x.iter().enumerate() {
        for (o, &wv) in out.iter_mut().zip(&w[k * n..(k + 1) * n]) {
            *o += xk * wv;
        }
    }
}

impl CpuCharRnn {
    /// Copies the weights out of `model` (any backend).
    pub fn new<B: Backend>(model: &CharRnn<B>) -> Self {
        let h = model.lstm_size();
        let layers = model
            .layers
            .iter()
            .map(|l| Layer {
                w_ih: floats(l.w_ih.val()),
                w_hh: floats(l.w_hh.val()),
                bias: floats(l.b_ih.val() + l.b_hh.val()),
                hc: vec![0.0; 2 * h],
            })
            .collect();
        let out_w = floats(model.output.weight.val());
        let out_b = match &model.output.bias {
            Some(b) => floats(b.val()),
            None => vec![0.0; out_w.len() / h],
        };
        let vocab = out_b.len();
        Self { h, vocab, layers, out_w, out_b, xp: vec![0.0; 4 * h], scratch: vec![0.0; 4 * h], logits: vec![0.0; vocab] }
    }
}

impl CharStepper for CpuCharRnn {
    fn reset(&mut self) {
        for l in &mut self.layers {
            l.hc.fill(0.0);
        }
    }

    fn step(&mut self, id: u32) -> &[f32] {
        let (h, g) = (self.h, 4 * self.h);
        for i in 0..self.layers.len() {
            let (below, rest) = self.layers.split_at_mut(i);
            let layer = &mut rest[0];
            self.xp.copy_from_slice(&layer.bias);
            match below.last() {
                // One-hot input: a row of W_ih.
                None => {
                    let row = &layer.w_ih[id as usize * g..(id as usize + 1) * g];
                    self.xp.iter_mut().zip(row).for_each(|(x, w)| *x += w);
                }
                Some(prev) => vec_mat_acc(&prev.hc[..h], &layer.w_ih, &mut self.xp),
            }
            lstm_step(h, &self.xp, &layer.w_hh, &mut layer.hc, &mut self.scratch);
        }
        self.logits.copy_from_slice(&self.out_b);
        let top = &self.layers.last().expect("a layer").hc[..h];
        vec_mat_acc(top, &self.out_w, &mut self.logits);
        &self.logits
    }

    fn vocab_size(&self) -> usize {
        self.vocab
    }
}
