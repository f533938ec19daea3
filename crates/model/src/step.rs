//! One character step of the whole model, for sampling: [`CharRnn::step`] reads one character
//! for each of a few rows and returns the next character's logits, carrying a [`StepState`].
//! No autodiff, no dropout, no time axis.
//!
//! Each layer is one [`CellBackend::layer_step`] and the logits one
//! [`CellBackend::linear_step`]. By default these are Burn tensor ops around the fused sequence
//! op over one step ([`tensor_layer_step`], the same ops in the same order as
//! [`CharRnn::forward`], so the logits are `forward`'s bit for bit); the GPU backends fuse each
//! into one kernel launch (`crate::cube::step`).

use burn::prelude::*;
use burn::tensor::module::{embedding, linear};
use burn::tensor::ops::FloatTensor;
use burn::tensor::{TensorData, TensorPrimitive};

use crate::ops::{sequence, CellBackend, SequenceInputs};
use crate::{Cell, CharRnn};

/// A layer's input for one step.
#[derive(Clone, Debug)]
pub enum StepInput<'a, T> {
    /// Each row's character (the first layer, whose one-hot input times `W_ih` is a row of
    /// `W_ih`).
    Ids(&'a [u32]),
    /// The layer below's new `h` `[B, I]`.
    Hidden(T),
}

/// One step of one layer: its input, its weights, and its state before the step.
#[derive(Clone, Debug)]
pub struct LayerStep<'a, T> {
    /// What the layer reads.
    pub input: StepInput<'a, T>,
    /// `[I, G·H]`.
    pub w_ih: T,
    /// `[H, G·H]`.
    pub w_hh: T,
    /// `[G·H]`.
    pub b_ih: T,
    /// `[G·H]`.
    pub b_hh: T,
    /// `[B, H]`.
    pub h: T,
    /// `[B, H]`: the LSTM's cell state; `None` for the other cells.
    pub c: Option<T>,
}

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
                },
            );
            state.h[l] = h.clone();
            state.c[l] = c;
            x = Some(h);
        }
        let x = x.expect("at least one layer");
        let bias = self.output.bias.as_ref().map(|b| float(b.val()));
        from_float(B::linear_step(x, float(self.output.weight.val()), bias))
    }
}

/// [`CellBackend::layer_step`] in Burn tensor ops: the input projection and biases as
/// [`CharRnn::forward`] computes them, then [`sequence`] over one step.
pub fn tensor_layer_step<B: CellBackend>(
    cell: Cell,
    step: LayerStep<'_, FloatTensor<B>>,
) -> (FloatTensor<B>, Option<FloatTensor<B>>) {
    let w_ih: Tensor<B, 2> = from_float(step.w_ih);
    let h0: Tensor<B, 2> = from_float(step.h);
    let [rows, width] = h0.dims();
    let gh = w_ih.dims()[1];
    let xp: Tensor<B, 3> = match step.input {
        StepInput::Ids(ids) => {
            let ids: Vec<i64> = ids.iter().map(|&id| i64::from(id)).collect();
            let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [1, rows]), &h0.device());
            embedding(w_ih, ids)
        }
        StepInput::Hidden(x) => from_float::<B, 2>(x).matmul(w_ih).reshape([1, rows, gh]),
    };
    let (b_ih, b_hh) = (from_float::<B, 1>(step.b_ih), from_float::<B, 1>(step.b_hh));
    let lstm = cell == Cell::Lstm;
    let bias = if lstm { b_ih + b_hh.clone() } else { b_ih };
    let inputs = SequenceInputs {
        xp: xp + bias.reshape([1, 1, gh]),
        w_hh: from_float(step.w_hh),
        b_hh: (!lstm).then_some(b_hh),
        h0,
        c0: step.c.map(from_float),
    };
    let (hs, c) = sequence(cell, inputs);
    (float(hs.reshape([rows, width])), c.map(float))
}

/// [`CellBackend::linear_step`] in Burn tensor ops: Burn's `linear`, which the model's output
/// layer runs.
pub fn tensor_linear_step<B: Backend>(
    x: FloatTensor<B>,
    w: FloatTensor<B>,
    b: Option<FloatTensor<B>>,
) -> FloatTensor<B> {
    float(linear::<B, 2>(
        from_float(x),
        from_float(w),
        b.map(from_float),
    ))
}

fn float<B: Backend, const D: usize>(t: Tensor<B, D>) -> FloatTensor<B> {
    t.into_primitive().tensor()
}

fn from_float<B: Backend, const D: usize>(p: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(p))
}
