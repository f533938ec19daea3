//! The fused recurrent sequence as a single operation: forward, hand-written backward, and the
//! backends that run it. One op ([`sequence`]) serves every [`Cell`]; the cell picks the maths.
//!
//! # The operation
//! For a layer with `H` units over `T` steps of a batch of `B` rows, with the input projection of
//! every step already computed (`xp = x·W_ih + b`, one big matmul or, for one-hot input, a row
//! lookup), the recurrence runs for `t = 0..T` with `h_{-1} = h0` (and the LSTM's
//! `c_{-1} = c0`). The LSTM's `xp` holds the sum of both biases; the GRU and the RNN take `b_hh`
//! into the op, because the GRU needs it inside the reset product (PyTorch's `nn.GRU`):
//!
//! ```text
//! LSTM: z_t = xp[t] + h_{t-1}·W_hh                 gate blocks in the order i, f, g, o
//!       i = σ(z_i)   f = σ(z_f)   g = tanh(z_g)   o = σ(z_o)
//!       c_t = f⊙c_{t-1} + i⊙g          h_t = o⊙tanh(c_t)
//! with hp_t = h_{t-1}·W_hh + b_hh:
//! GRU:  r = σ(xp_r + hp_r)   z = σ(xp_z + hp_z)   n = tanh(xp_n + r⊙hp_n)
//!       h_t = (1 − z)⊙n + z⊙h_{t-1}
//! RNN:  h_t = tanh(xp + hp)
//! ```
//!
//! # Shapes
//! With `G` the cell's gate blocks ([`Cell::gates`]): `xp: [T, B, G·H]` (time-major, so each
//! step is one contiguous block), `w_hh: [H, G·H]`, `b_hh: [G·H]` (GRU, RNN), `h0: [B, H]`,
//! `c0: [B, H]` (LSTM); out: `hs: [T, B, H]` (every `h_t`) and the LSTM's `c_T: [B, H]`.
//!
//! Under autodiff ([`Autodiff`](burn::backend::Autodiff)) the whole sequence is one node of the graph whose backward
//! ([`CellKernels::backward`]) does per step only elementwise work and `dhp_t·W_hhᵀ`, then
//! `dW_hh` (and `db_hh`) as one large product over all steps. No gradient flows back from `c_T`
//! (it is the carried state, detached by truncated BPTT); gradients do reach every input.
//!
//! CPU backends run the recurrence with the plain-Rust kernels of [`karnna_kernels`]; the GPU
//! backends (burn-cuda and burn-wgpu, each behind its cargo feature) share one set of CubeCL
//! kernels (`crate::gpu`: one launch per layer and time step, forward and backward). The same
//! maths in Burn tensor ops ([`reference`](mod@reference)) runs on any backend and is the tests' reference.
//!
//! One concern per file: this one holds the op's interface ([`CellBackend`], [`CellKernels`],
//! [`CellInputs`], [`sequence`]) with the hooks' defaults in Burn ops ([`burn_dense`],
//! [`tensor_layer_step`]); `precision` what the model's dense products compute in
//! ([`Matmul`], [`MatmulPrecision`]); `layer_step` the inputs of sampling's one-step hook;
//! `autodiff` the op as one graph node; `native` the CPU backends; [`reference`](mod@reference) the
//! step-by-step Burn-op reference. The files below import from this one, never the reverse
//! (but for the two leaf files of types).

use std::fmt::Debug;

use burn::tensor::backend::Backend;
use burn::tensor::module::embedding;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Int, Shape, Tensor, TensorData, TensorPrimitive};

use crate::Cell;
use karnna_kernels as cpu;

mod autodiff;
mod layer_step;
mod native;
mod precision;
pub mod reference;

pub use layer_step::{LayerStep, StepInput};
pub use precision::{Matmul, MatmulPrecision};

/// The tensors of a sequence op, one per input: the inputs themselves, or, from
/// [`CellKernels::backward`], the gradient of each input in its place.
#[derive(Clone, Debug)]
pub struct CellInputs<T> {
    /// `[T, B, G·H]`.
    pub xp: T,
    /// `[H, G·H]`.
    pub w_hh: T,
    /// `[G·H]`: the GRU's and the RNN's; `None` for the LSTM (its biases are summed into `xp`).
    pub b_hh: Option<T>,
    /// `[B, H]`.
    pub h0: T,
    /// `[B, H]`: the LSTM's; `None` for the other cells.
    pub c0: Option<T>,
}

impl<T> CellInputs<T> {
    /// The same inputs with `f` applied to each.
    pub fn map<U>(self, mut f: impl FnMut(T) -> U) -> CellInputs<U> {
        CellInputs {
            xp: f(self.xp),
            w_hh: f(self.w_hh),
            b_hh: self.b_hh.map(&mut f),
            h0: f(self.h0),
            c0: self.c0.map(f),
        }
    }

    /// References to the inputs.
    pub fn as_ref(&self) -> CellInputs<&T> {
        CellInputs {
            xp: &self.xp,
            w_hh: &self.w_hh,
            b_hh: self.b_hh.as_ref(),
            h0: &self.h0,
            c0: self.c0.as_ref(),
        }
    }

    /// The inputs present, in the order `xp, w_hh, b_hh, h0, c0`: four for every cell.
    fn present(self) -> [T; 4] {
        match (self.b_hh, self.c0) {
            (Some(b_hh), None) => [self.xp, self.w_hh, b_hh, self.h0],
            (None, Some(c0)) => [self.xp, self.w_hh, self.h0, c0],
            _ => panic!("a sequence op takes either b_hh or c0"),
        }
    }
}

/// A backend that runs the fused recurrent sequence (see the module docs for the maths and
/// shapes).
pub trait CellBackend: Backend {
    /// Runs `cell`'s recurrence over all steps; returns `hs [T, B, H]` and the LSTM's
    /// `c_T [B, H]` (`None` for the other cells). `matmul` is how the GPU backends compute
    /// `dW_hh` in the backward (their recurrence is f32), and whether the CPU backends' products,
    /// the recurrence's included, take bf16 operands ([`Matmul::Bf16`]).
    fn sequence(
        cell: Cell,
        inputs: CellInputs<FloatTensor<Self>>,
        matmul: Matmul,
    ) -> (FloatTensor<Self>, Option<FloatTensor<Self>>);

    /// A dropout mask of `shape` on `device`: [`cpu::dropout_mask`] of `seed` and
    /// `keep_prob`, element `i` of the row-major order being element `i` of that mask, bit for
    /// bit. By default it is drawn on the host and uploaded; the GPU backends draw it on the
    /// device with the same hash (`crate::gpu`).
    fn dropout_mask(
        seed: u64,
        keep_prob: f64,
        shape: Shape,
        device: &burn::tensor::Device<Self>,
    ) -> FloatTensor<Self> {
        let mut mask = vec![0.0; shape.num_elements()];
        cpu::dropout_mask(seed, keep_prob, &mut mask);
        Self::float_from_data(TensorData::new(mask, shape), device)
    }

    /// The precision of the matrix products this backend runs on `device` for a model whose
    /// products are `matmul`, outside the sequence op (`dW_hh`, the input and output layers);
    /// the sequence op itself computes in f32 on the GPU backends. By default f32; the CPU
    /// backends say bf16 for [`Matmul::Bf16`].
    fn matmul_precision(device: &burn::tensor::Device<Self>, matmul: Matmul) -> MatmulPrecision {
        let _ = (device, matmul);
        MatmulPrecision::F32
    }

    /// One step of one layer of `cell` for sampling (no autodiff): the new `h [B, H]` and the
    /// LSTM's new `c` (`None` for the other cells). By default Burn tensor ops around
    /// [`CellBackend::sequence`] over one step ([`tensor_layer_step`]); the GPU backends
    /// run it as one kernel launch.
    fn layer_step(
        cell: Cell,
        step: LayerStep<'_, FloatTensor<Self>>,
    ) -> (FloatTensor<Self>, Option<FloatTensor<Self>>) {
        tensor_layer_step::<Self>(cell, step)
    }

    /// `x·w + b` for one step's logits (`x [B, I]`, `w [I, O]`, `b [O]`). By default
    /// [`CellBackend::dense`] with `matmul`, as the model's output layer computes them; the
    /// GPU backends run it as one kernel launch (in f32).
    fn linear_step(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        b: Option<FloatTensor<Self>>,
        matmul: Matmul,
    ) -> FloatTensor<Self> {
        Self::dense(x, w, b, matmul)
    }

    /// `x·w (+ b)` for the model's dense products (`x [N, K]`, `w [K, M]`, `b [M]`): the input
    /// projection of the layers above the first (no bias) and the output layer. By default
    /// Burn's `matmul` (no bias) or `linear`; with `matmul` [`Matmul::F32`] the GPU
    /// backends run their own f32 product, and so does autodiff for the gradients.
    fn dense(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        b: Option<FloatTensor<Self>>,
        matmul: Matmul,
    ) -> FloatTensor<Self> {
        let _ = matmul;
        burn_dense::<Self>(x, w, b)
    }
}

/// [`CellBackend::dense`] in Burn's own ops: `matmul` without a bias, `linear` with one (the ops
/// the model's products have always been, so the CPU backends' bits stay the same).
pub fn burn_dense<B: Backend>(
    x: FloatTensor<B>,
    w: FloatTensor<B>,
    b: Option<FloatTensor<B>>,
) -> FloatTensor<B> {
    match b {
        None => B::float_matmul(x, w),
        Some(b) => B::linear(x, w, Some(b)),
    }
}

/// [`CellBackend::dense`] on tensors.
pub fn dense<B: CellBackend>(
    x: Tensor<B, 2>,
    w: Tensor<B, 2>,
    b: Option<Tensor<B, 1>>,
    matmul: Matmul,
) -> Tensor<B, 2> {
    from_float(B::dense(float(x), float(w), b.map(float), matmul))
}

/// What a backend needs besides [`CellBackend`] for `Autodiff<Self>` to train through the op: a
/// forward that keeps what the backward needs, and the backward itself.
pub trait CellKernels: CellBackend {
    /// What the forward keeps for the backward (activated gates, every `h_t`, the LSTM's `c_t`,
    /// ...).
    type Cache: Clone + Send + Sync + Debug + 'static;

    /// [`CellBackend::sequence`], also returning the cache for [`Self::backward`] (which
    /// keeps `matmul` for `dW_hh`).
    fn forward_train(
        cell: Cell,
        inputs: CellInputs<FloatTensor<Self>>,
        matmul: Matmul,
    ) -> (FloatTensor<Self>, Option<FloatTensor<Self>>, Self::Cache);

    /// Given `dL/dhs [T, B, H]`, returns the gradient of every input of the forward.
    fn backward(cache: Self::Cache, dhs: FloatTensor<Self>) -> CellInputs<FloatTensor<Self>>;
}

/// The inputs of a sequence op as tensors ([`sequence`], [`reference::tensor_forward`]), or,
/// from [`reference::tensor_backward`], the gradient of each input in its place.
#[derive(Clone, Debug)]
pub struct SequenceInputs<B: Backend> {
    /// `[T, B, G·H]`: the input projection of every step.
    pub xp: Tensor<B, 3>,
    /// `[H, G·H]`.
    pub w_hh: Tensor<B, 2>,
    /// `[G·H]`: the GRU's and the RNN's recurrent bias; `None` for the LSTM.
    pub b_hh: Option<Tensor<B, 1>>,
    /// `[B, H]`: the state before the first step.
    pub h0: Tensor<B, 2>,
    /// `[B, H]`: the LSTM's cell state before the first step; `None` for the other cells.
    pub c0: Option<Tensor<B, 2>>,
}

impl<B: Backend> SequenceInputs<B> {
    /// The inputs as the backend's primitives.
    fn into_primitives(self) -> CellInputs<FloatTensor<B>> {
        CellInputs {
            xp: float(self.xp),
            w_hh: float(self.w_hh),
            b_hh: self.b_hh.map(float),
            h0: float(self.h0),
            c0: self.c0.map(float),
        }
    }

    /// Panics unless the optional inputs are those of `cell`: `c0` for the LSTM, `b_hh` for the
    /// others.
    fn check(&self, cell: Cell) {
        let lstm = cell == Cell::Lstm;
        let wanted = if lstm {
            "c0 and no b_hh"
        } else {
            "b_hh and no c0"
        };
        assert!(
            self.b_hh.is_some() != lstm && self.c0.is_some() == lstm,
            "the {cell} sequence op takes {wanted}"
        );
    }
}

/// Runs `cell`'s fused sequence on tensors: `hs [T, B, H]` and the LSTM's `c_T [B, H]`;
/// `matmul` is how a GPU computes `dW_hh` ([`CellBackend::sequence`]).
///
/// # Panics
/// Panics if `b_hh` and `c0` are not those of `cell`.
pub fn sequence<B: CellBackend>(
    cell: Cell,
    inputs: SequenceInputs<B>,
    matmul: Matmul,
) -> (Tensor<B, 3>, Option<Tensor<B, 2>>) {
    inputs.check(cell);
    let (hs, c) = B::sequence(cell, inputs.into_primitives(), matmul);
    (from_float(hs), c.map(from_float))
}

pub(crate) fn float<B: Backend, const D: usize>(t: Tensor<B, D>) -> FloatTensor<B> {
    t.into_primitive().tensor()
}

pub(crate) fn from_float<B: Backend, const D: usize>(p: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(p))
}

/// The values of a float tensor as a row-major `Vec<f32>` (read back to the host).
pub fn to_f32_vec<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .expect("f32 tensor data")
}

/// [`CellBackend::layer_step`] in Burn tensor ops: the input projection and biases as
/// [`crate::CharRnn::forward`] computes them, then [`sequence`] over one step.
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
        StepInput::Hidden(x) => {
            dense(from_float(x), w_ih, None, step.matmul).reshape([1, rows, gh])
        }
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
    let (hs, c) = sequence(cell, inputs, step.matmul);
    (float(hs.reshape([rows, width])), c.map(float))
}
