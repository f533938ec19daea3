//! One character step of the whole model, for sampling: [`CharRnn::step`] reads one character
//! for each of a few rows and returns the next character's logits, carrying a [`StepState`].
//! No autodiff, no dropout, no time axis.
//!
//! Each layer is one [`CellBackend::layer_step`] and the logits one
//! [`CellBackend::linear_step`]. By default these are Burn tensor ops around the fused sequence
//! op over one step ([`crate::ops::tensor_layer_step`]: the ops of [`CharRnn::forward`], in
//! the same order, so the logits are `forward`'s over one character bit for bit); the GPU
//! backends fuse each into one kernel launch (`crate::gpu::step`).

use burn::prelude::*;
use burn::tensor::ops::FloatTensor;
use burn::tensor::TensorPrimitive;

use crate::ops::{CellBackend, LayerStep, StepInput};
use crate::{Cell, CharRnn};

/// The recurrent state carried between [`CharRnn::step`]s: each layer's `h` and (the LSTM's)
/// `c`, `[rows, H]` each, on the model's device.
#[derive(Clone, Debug)]
pub struct StepState<B: Backend> {
    h: Vec<FloatTensor<B>>,
    c: Vec<Option<FloatTensor<B>>>,
    rows: usize,
}

impl<B: Backend> StepState<B> {
    /// The zero state of `model` for `rows` rows (the start of sampling).
    pub fn zeros(model: &CharRnn<B>, rows: usize) -> Self {
        let device = model.layers[0].w_hh.device();
        let zero = || float(Tensor::<B, 2>::zeros([rows, model.lstm_size()], &device));
        let lstm = model.cell() == Cell::Lstm;
        let layers = model.layers.len();
        Self {
            h: (0..layers).map(|_| zero()).collect(),
            c: (0..layers).map(|_| lstm.then(zero)).collect(),
            rows,
        }
    }

    /// Rows stepped side by side.
    pub fn rows(&self) -> usize {
        self.rows
    }
}

impl<B: CellBackend> CharRnn<B> {
    /// Feeds one character to each row of `state` (`ids[r]` to row `r`) and returns the logits
    /// of the next character, `[rows, vocab]`; `state` moves past the character. The logits
    /// are those of [`CharRnn::forward`] over the same character from the same state: bit for
    /// bit on the CPU backends, to f32 rounding on a GPU (whose kernels sum in another order).
    ///
    /// # Panics
    /// Panics if `ids.len()` is not `state.rows()`, or an id is outside the vocabulary (the
    /// GPU kernels index `W_ih` with it unchecked).
    pub fn step(&self, ids: &[u32], state: &mut StepState<B>) -> Tensor<B, 2> {
        assert_eq!(ids.len(), state.rows, "one id per row of the state");
        let vocab = self.layers[0].w_ih.dims()[0];
        assert!(
            ids.iter().all(|&id| (id as usize) < vocab),
            "an id outside the vocabulary of {vocab}"
        );
        let cell = self.cell();
        let mut x: Option<FloatTensor<B>> = None;
        for (l, layer) in self.layers.iter().enumerate() {
            let input = match x.take() {
                None => StepInput::Ids(ids),
                Some(x) => StepInput::Hidden(x),
            };
            let (h, c) = B::layer_step(
                cell,
                LayerStep {
                    input,
                    w_ih: float(layer.w_ih.val()),
                    w_hh: float(layer.w_hh.val()),
                    b_ih: float(layer.b_ih.val()),
                    b_hh: float(layer.b_hh.val()),
                    h: state.h[l].clone(),
                    c: state.c[l].take(),
                    matmul: self.matmul,
                },
            );
            state.h[l] = h.clone();
            state.c[l] = c;
            x = Some(h);
        }
        let x = x.expect("at least one layer");
        let bias = self.output.bias.as_ref().map(|b| float(b.val()));
        let w = float(self.output.weight.val());
        from_float(B::linear_step(x, w, bias, self.matmul))
    }
}

fn float<B: Backend, const D: usize>(t: Tensor<B, D>) -> FloatTensor<B> {
    t.into_primitive().tensor()
}

fn from_float<B: Backend, const D: usize>(p: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(p))
}
