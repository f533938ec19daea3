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
//! Under autodiff ([`Autodiff`]) the whole sequence is one node of the graph whose backward
//! ([`CellKernels::backward`]) does per step only elementwise work and `dhp_t·W_hhᵀ`, then
//! `dW_hh` (and `db_hh`) as one large product over all steps. No gradient flows back from `c_T`
//! (it is the carried state, detached by truncated BPTT); gradients do reach every input.
//!
//! CPU backends run the recurrence with the plain-Rust kernels of [`crate::kernel`]; the GPU
//! backends (burn-cuda and burn-wgpu, each behind its cargo feature) share one set of CubeCL
//! kernels (`crate::cube`: one launch per layer and time step, forward and backward). The same
//! maths in Burn tensor ops ([`tensor_forward`], [`tensor_backward`]) runs on any backend and
//! is the tests' reference.

use std::fmt::Debug;
use std::marker::PhantomData;
use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::{Autodiff, Flex, NdArray};
use burn::tensor::activation::sigmoid;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::module::embedding;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Int, Shape, Tensor, TensorData, TensorPrimitive};

use crate::kernel::{self, Dims};
use crate::Cell;

/// The arithmetic of a backend's matrix products.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatmulPrecision {
    /// IEEE single precision throughout (unit roundoff 2⁻²⁴ ≈ 6.0e-8).
    F32,
    /// Inputs rounded to TF32 (a 10-bit mantissa, unit roundoff 2⁻¹¹ ≈ 4.9e-4) for tensor
    /// cores, sums in f32: what Burn's matmul does for f32 inputs on a CUDA card that has TF32.
    Tf32,
}

impl MatmulPrecision {
    /// Its name in output (`f32`, `tf32`).
    pub fn name(self) -> &'static str {
        match self {
            MatmulPrecision::F32 => "f32",
            MatmulPrecision::Tf32 => "tf32",
        }
    }

    /// The unit roundoff of the products' inputs.
    pub fn unit_roundoff(self) -> f32 {
        match self {
            MatmulPrecision::F32 => f32::EPSILON / 2.0,
            MatmulPrecision::Tf32 => 2f32.powi(-11),
        }
    }
}

/// The arithmetic of the model's dense matrix products on a GPU (the input projection of the
/// layers above the first, the output layer, their gradients and `dW_hh`). The recurrence
/// kernels and sampling compute in f32 whatever this says; the CPU backends always do. A
/// property of each model ([`crate::CharRnn::gpu_matmul`]), not of the process.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum GpuMatmul {
    /// Burn's matmul: TF32 tensor cores where the card has them (inputs rounded to a 10-bit
    /// mantissa, sums in f32), which is much faster; f32 on cards without them.
    #[default]
    #[value(help = "TF32 tensor cores where the card has them, f32 elsewhere (default, fast)")]
    Tf32,
    /// karnna's own f32 product for every matmul of the model: IEEE f32 throughout, slower.
    #[value(help = "f32 throughout (karnna's own product; slower)")]
    F32,
}

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
    /// `dW_hh` in the backward (the recurrence itself is f32 everywhere).
    fn sequence(
        cell: Cell,
        inputs: CellInputs<FloatTensor<Self>>,
        matmul: GpuMatmul,
    ) -> (FloatTensor<Self>, Option<FloatTensor<Self>>);

    /// A dropout mask of `shape` on `device`: [`kernel::dropout_mask`] of `seed` and
    /// `keep_prob`, element `i` of the row-major order being element `i` of that mask, bit for
    /// bit. By default it is drawn on the host and uploaded; the GPU backends draw it on the
    /// device with the same hash (`crate::cube`).
    fn dropout_mask(
        seed: u64,
        keep_prob: f64,
        shape: Shape,
        device: &burn::tensor::Device<Self>,
    ) -> FloatTensor<Self> {
        let mut mask = vec![0.0; shape.num_elements()];
        kernel::dropout_mask(seed, keep_prob, &mut mask);
        Self::float_from_data(TensorData::new(mask, shape), device)
    }

    /// The precision of the matrix products this backend runs on `device` for a model whose
    /// products are `matmul`, outside the sequence op (`dW_hh`, the input and output layers);
    /// the sequence op itself computes in f32 on every backend. By default f32 (the CPU
    /// backends' `gemm`).
    fn matmul_precision(device: &burn::tensor::Device<Self>, matmul: GpuMatmul) -> MatmulPrecision {
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
        matmul: GpuMatmul,
    ) -> FloatTensor<Self> {
        Self::dense(x, w, b, matmul)
    }

    /// `x·w (+ b)` for the model's dense products (`x [N, K]`, `w [K, M]`, `b [M]`): the input
    /// projection of the layers above the first (no bias) and the output layer. By default
    /// Burn's `matmul` (no bias) or `linear`; with `matmul` [`GpuMatmul::F32`] the GPU
    /// backends run their own f32 product, and so does autodiff for the gradients.
    fn dense(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        b: Option<FloatTensor<Self>>,
        matmul: GpuMatmul,
    ) -> FloatTensor<Self> {
        let _ = matmul;
        burn_dense::<Self>(x, w, b)
    }
}

/// [`CellBackend::dense`] in Burn's own ops: `matmul` without a bias, `linear` with one (what
/// the model ran before the hook, so the CPU backends' bits stay the same).
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
    matmul: GpuMatmul,
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
        matmul: GpuMatmul,
    ) -> (FloatTensor<Self>, Option<FloatTensor<Self>>, Self::Cache);

    /// Given `dL/dhs [T, B, H]`, returns the gradient of every input of the forward.
    fn backward(cache: Self::Cache, dhs: FloatTensor<Self>) -> CellInputs<FloatTensor<Self>>;
}

/// The inputs of a sequence op as tensors ([`sequence`], [`tensor_forward`]), or, from
/// [`tensor_backward`], the gradient of each input in its place.
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
    matmul: GpuMatmul,
) -> (Tensor<B, 3>, Option<Tensor<B, 2>>) {
    inputs.check(cell);
    let (hs, c) = B::sequence(cell, inputs.into_primitives(), matmul);
    (from_float(hs), c.map(from_float))
}

fn float<B: Backend, const D: usize>(t: Tensor<B, D>) -> FloatTensor<B> {
    t.into_primitive().tensor()
}

fn from_float<B: Backend, const D: usize>(p: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(p))
}

// ---------------------------------------------------------------------------------------------
// One character for sampling ([`crate::CharRnn::step`]).

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
    /// The model's products ([`crate::CharRnn::gpu_matmul`]), for the input projection.
    pub matmul: GpuMatmul,
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

// ---------------------------------------------------------------------------------------------
// Autodiff: the whole sequence is one graph node with a hand-written backward.

/// The backward of the sequence op: takes `dL/dhs` from the node, runs the backend's
/// hand-written backward on what the forward kept, and hands each of the four inputs' gradients
/// to the inputs that track one.
#[derive(Debug)]
struct SequenceBackward<B>(PhantomData<B>);

impl<B: CellKernels> Backward<B, 4> for SequenceBackward<B> {
    type State = B::Cache;

    fn backward(self, ops: Ops<Self::State, 4>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dhs = grads.consume::<B>(&ops.node);
        let input_grads = B::backward(ops.state, dhs).present();
        for (parent, grad) in ops.parents.into_iter().zip(input_grads) {
            if let Some(parent) = parent {
                grads.register::<B>(parent.id, grad);
            }
        }
    }
}

/// The op under autodiff is one graph node: its parents are the four inputs present (in the
/// order of [`CellInputs`]), its output `hs`; `c_T` is a constant of the graph (truncated
/// BPTT). The forward keeps the cache for [`SequenceBackward`] when a gradient is wanted.
impl<B: CellKernels, C: CheckpointStrategy> CellBackend for Autodiff<B, C> {
    fn sequence(
        cell: Cell,
        inputs: CellInputs<FloatTensor<Self>>,
        matmul: GpuMatmul,
    ) -> (FloatTensor<Self>, Option<FloatTensor<Self>>) {
        let nodes = inputs.as_ref().present().map(|t| t.node.clone());
        let inner = inputs.map(|t| t.primitive);
        let untracked = |c: Option<FloatTensor<B>>| c.map(<Self as AutodiffBackend>::from_inner);
        match SequenceBackward::<B>(PhantomData)
            .prepare::<C>(nodes)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (hs, c, cache) = B::forward_train(cell, inner, matmul);
                (prep.finish(cache, hs), untracked(c))
            }
            OpsKind::UnTracked(prep) => {
                let (hs, c) = B::sequence(cell, inner, matmul);
                (prep.finish(hs), untracked(c))
            }
        }
    }

    fn dropout_mask(
        seed: u64,
        keep_prob: f64,
        shape: Shape,
        device: &burn::tensor::Device<Self>,
    ) -> FloatTensor<Self> {
        // A constant of the graph: no gradient flows into the mask.
        <Self as AutodiffBackend>::from_inner(B::dropout_mask(seed, keep_prob, shape, device))
    }

    fn matmul_precision(device: &burn::tensor::Device<Self>, matmul: GpuMatmul) -> MatmulPrecision {
        B::matmul_precision(device, matmul)
    }

    /// Burn's own ops and their autodiff, unless `matmul` is [`GpuMatmul::F32`]: then the
    /// product is one graph node ([`DenseBackward`]) whose forward and gradients are the inner
    /// backend's [`CellBackend::dense`] in f32, and the bias is added by Burn.
    fn dense(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        b: Option<FloatTensor<Self>>,
        matmul: GpuMatmul,
    ) -> FloatTensor<Self> {
        if matmul != GpuMatmul::F32 {
            return burn_dense::<Self>(x, w, b);
        }
        let nodes = [x.node.clone(), w.node.clone()];
        let (x_inner, w_inner) = (x.primitive, w.primitive);
        let product = match DenseBackward::<B>(PhantomData)
            .prepare::<C>(nodes)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let out = B::dense(x_inner.clone(), w_inner.clone(), None, GpuMatmul::F32);
                prep.finish((x_inner, w_inner), out)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::dense(x_inner, w_inner, None, GpuMatmul::F32))
            }
        };
        match b {
            None => product,
            Some(b) => {
                float(from_float::<Self, 2>(product) + from_float::<Self, 1>(b).unsqueeze_dim(0))
            }
        }
    }
}

/// The backward of [`CellBackend::dense`]'s product under autodiff with [`GpuMatmul::F32`]:
/// `dx = dy·wᵀ` and `dw = xᵀ·dy`, each the inner backend's [`CellBackend::dense`] in f32.
#[derive(Debug)]
struct DenseBackward<B>(PhantomData<B>);

impl<B: CellBackend> Backward<B, 2> for DenseBackward<B> {
    type State = (FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = grads.consume::<B>(&ops.node);
        let (x, w) = ops.state;
        let [node_x, node_w] = ops.parents;
        if let Some(node) = node_x {
            let dx = B::dense(dy.clone(), B::float_transpose(w), None, GpuMatmul::F32);
            grads.register::<B>(node.id, dx);
        }
        if let Some(node) = node_w {
            let dw = B::dense(B::float_transpose(x), dy, None, GpuMatmul::F32);
            grads.register::<B>(node.id, dw);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// CPU backends: the plain-Rust kernels.

/// What the CPU kernels keep between a sequence's forward and backward: the inputs and outputs
/// of [`kernel::forward`] that [`kernel::backward`] takes.
#[derive(Clone, Debug)]
pub struct NativeCache<B: Backend> {
    cell: Cell,
    dims: Dims,
    w_hh: Arc<Vec<f32>>,
    h0: Arc<Vec<f32>>,
    /// The LSTM's `c0` (empty for the other cells).
    c0: Arc<Vec<f32>>,
    hs: Arc<Vec<f32>>,
    /// The LSTM's `c_t`, the GRU's `hp_n` of every step (empty for the RNN).
    aux: Arc<Vec<f32>>,
    /// The activated gates (the RNN's scratch).
    gates: Arc<Vec<f32>>,
    device: B::Device,
}

/// The values of a float tensor as a row-major `Vec<f32>` (read back to the host).
pub fn to_f32_vec<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .expect("f32 tensor data")
}

fn read<B: Backend>(t: FloatTensor<B>) -> Vec<f32> {
    let n = burn::tensor::TensorMetadata::shape(&t).num_elements();
    to_f32_vec(from_float::<B, 1>(B::float_reshape(t, [n].into())))
}

fn write<B: Backend>(v: Vec<f32>, shape: &[usize], device: &B::Device) -> FloatTensor<B> {
    B::float_from_data(TensorData::new(v, shape.to_vec()), device)
}

/// Runs `cell`'s sequence on the CPU kernels: `hs [T, B, H]`, the LSTM's `c_T [B, H]`, and the
/// cache for [`native_backward`] when `keep`.
fn native_forward<B: Backend>(
    cell: Cell,
    inputs: CellInputs<FloatTensor<B>>,
    keep: bool,
) -> (
    FloatTensor<B>,
    Option<FloatTensor<B>>,
    Option<NativeCache<B>>,
) {
    let shape = burn::tensor::TensorMetadata::shape(&inputs.xp);
    let d = Dims {
        t: shape[0],
        b: shape[1],
        h: shape[2] / cell.gates(),
    };
    let device = B::float_device(&inputs.xp);
    // xz: the input projections, turned into the gates in place.
    let CellInputs {
        xp: mut xz,
        w_hh,
        b_hh,
        h0,
        c0,
    } = inputs.map(read::<B>);
    let (b_hh, c0) = (b_hh.unwrap_or_default(), c0.unwrap_or_default());
    let tbh = d.t * d.b * d.h;
    let mut hs = vec![0.0; tbh];
    let mut aux = vec![0.0; if cell == Cell::Rnn { 0 } else { tbh }];
    let io = kernel::Forward {
        xz: &mut xz,
        w_hh: &w_hh,
        b_hh: &b_hh,
        h0: &h0,
        c0: &c0,
        hs: &mut hs,
        aux: &mut aux,
    };
    kernel::forward(cell, d, io);
    let c_t = (cell == Cell::Lstm).then(|| {
        let last = (d.t - 1) * d.b * d.h..tbh;
        write::<B>(aux[last].to_vec(), &[d.b, d.h], &device)
    });
    let shape = [d.t, d.b, d.h];
    if !keep {
        return (write::<B>(hs, &shape, &device), c_t, None);
    }
    let hs_out = write::<B>(hs.clone(), &shape, &device);
    let cache = NativeCache {
        cell,
        dims: d,
        w_hh: Arc::new(w_hh),
        h0: Arc::new(h0),
        c0: Arc::new(c0),
        hs: Arc::new(hs),
        aux: Arc::new(aux),
        gates: Arc::new(xz),
        device,
    };
    (hs_out, c_t, Some(cache))
}

/// The backward of [`native_forward`] from `dL/dhs`: the gradient of every input.
fn native_backward<B: Backend>(
    cache: NativeCache<B>,
    dhs: FloatTensor<B>,
) -> CellInputs<FloatTensor<B>> {
    let (cell, d) = (cache.cell, cache.dims);
    let lstm = cell == Cell::Lstm;
    let gh = cell.gates() * d.h;
    let bh = d.b * d.h;
    let dhs = read::<B>(dhs);
    // The gates (or scratch) become dL/dxp in place (the cache is normally its only owner).
    let mut dxp = Arc::try_unwrap(cache.gates).unwrap_or_else(|g| g.to_vec());
    let mut dw = vec![0.0; d.h * gh];
    let mut db = vec![0.0; if lstm { 0 } else { gh }];
    let mut dh0 = vec![0.0; bh];
    let mut dc0 = vec![0.0; if lstm { bh } else { 0 }];
    let io = kernel::Backward {
        w_hh: &cache.w_hh,
        h0: &cache.h0,
        c0: &cache.c0,
        hs: &cache.hs,
        aux: &cache.aux,
        gz: &mut dxp,
        dhs: &dhs,
        dw_hh: &mut dw,
        db_hh: &mut db,
        dh0: &mut dh0,
        dc0: &mut dc0,
    };
    kernel::backward(cell, d, io);
    let dev = &cache.device;
    CellInputs {
        xp: write::<B>(dxp, &[d.t, d.b, gh], dev),
        w_hh: write::<B>(dw, &[d.h, gh], dev),
        b_hh: (!lstm).then(|| write::<B>(db, &[gh], dev)),
        h0: write::<B>(dh0, &[d.b, d.h], dev),
        c0: lstm.then(|| write::<B>(dc0, &[d.b, d.h], dev)),
    }
}

macro_rules! native_backend {
    ($backend:ty) => {
        impl CellBackend for $backend {
            fn sequence(
                cell: Cell,
                inputs: CellInputs<FloatTensor<Self>>,
                _: GpuMatmul,
            ) -> (FloatTensor<Self>, Option<FloatTensor<Self>>) {
                let (hs, c, _) = native_forward::<Self>(cell, inputs, false);
                (hs, c)
            }
        }

        impl CellKernels for $backend {
            type Cache = NativeCache<Self>;

            fn forward_train(
                cell: Cell,
                inputs: CellInputs<FloatTensor<Self>>,
                _: GpuMatmul,
            ) -> (FloatTensor<Self>, Option<FloatTensor<Self>>, Self::Cache) {
                let (hs, c, cache) = native_forward::<Self>(cell, inputs, true);
                (hs, c, cache.expect("cache kept"))
            }

            fn backward(
                cache: Self::Cache,
                dhs: FloatTensor<Self>,
            ) -> CellInputs<FloatTensor<Self>> {
                native_backward::<Self>(cache, dhs)
            }
        }
    };
}

native_backend!(Flex);
native_backend!(NdArray);

// ---------------------------------------------------------------------------------------------
// Any backend: the same recurrence in Burn tensor ops (the test reference).

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
    let block = |x: &Tensor<B, 2>, k: usize| x.clone().narrow(1, k * h, h);
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
                let (i, f) = (block(&gate, 0), block(&gate, 1));
                let (g, o) = (block(&gate, 2), block(&gate, 3));
                let cs = aux.as_ref().expect("the LSTM's c_t");
                let c_prev = match s {
                    0 => c0.clone().expect("the LSTM's c0"),
                    _ => step(cs, s - 1),
                };
                let tc = step(cs, s).tanh();
                let dc = dh.clone() * o.clone() * (tc.clone().powi_scalar(2).neg() + 1.0) + dc_next;
                let dz_o = dh * tc * o.clone() * (o.neg() + 1.0);
                let dz_i = dc.clone() * g.clone() * i.clone() * (i.clone().neg() + 1.0);
                let dz_f = dc.clone() * c_prev * f.clone() * (f.clone().neg() + 1.0);
                let dz_g = dc.clone() * i * (g.powi_scalar(2).neg() + 1.0);
                dc_next = dc * f;
                let dz = Tensor::cat(vec![dz_i, dz_f, dz_g, dz_o], 1);
                (dz.clone(), dz, None)
            }
            Cell::Gru => {
                let gate = gate.expect("the GRU's gates");
                let (r, z, n) = (block(&gate, 0), block(&gate, 1), block(&gate, 2));
                let h_prev = if s == 0 { h0.clone() } else { step(&hs, s - 1) };
                let hn = step(aux.as_ref().expect("the GRU's hp_n"), s);
                let dn =
                    dh.clone() * (z.clone().neg() + 1.0) * (n.clone().powi_scalar(2).neg() + 1.0);
                let dz = dh.clone() * (h_prev - n) * z.clone() * (z.clone().neg() + 1.0);
                let dr = dn.clone() * hn * r.clone() * (r.clone().neg() + 1.0);
                let dxp = Tensor::cat(vec![dr.clone(), dz.clone(), dn.clone()], 1);
                let dhp = Tensor::cat(vec![dr, dz, dn * r], 1);
                (dxp, dhp, Some(dh * z))
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
