//! The fused recurrent sequences as single operations: forward, hand-written backward, and the
//! backends that run them. The LSTM is one op ([`lstm_sequence`]); the GRU and the plain RNN,
//! whose whole state is `h`, share another ([`hcell_sequence`], see [the h-cells](#the-h-cells)).
//!
//! # The operation
//! For a layer with `H` units over `T` steps of a batch of `B` rows, with the input projection of
//! every step already computed (`xp = x·W_ih + b`, one big matmul or, for one-hot input, a row
//! lookup), the recurrence is, for `t = 0..T`, with `h_{-1} = h0` and `c_{-1} = c0`:
//!
//! ```text
//! z_t = xp[t] + h_{t-1}·W_hh                      [B, 4H], gate blocks in the order i, f, g, o
//! i = σ(z_i)   f = σ(z_f)   g = tanh(z_g)   o = σ(z_o)
//! c_t = f⊙c_{t-1} + i⊙g          h_t = o⊙tanh(c_t)
//! ```
//!
//! # Shapes
//! `xp: [T, B, 4H]` (time-major, so each step is one contiguous block), `w_hh: [H, 4H]`,
//! `h0, c0: [B, H]`; out: `hs: [T, B, H]` (every `h_t`) and `c_T: [B, H]`.
//!
//! Under autodiff ([`Autodiff`]) the whole sequence is one node of the graph whose backward
//! ([`CellKernels::lstm_backward`]) does per step only elementwise work and `dz_t·W_hhᵀ`, then
//! `dW_hh` as one large matmul over all steps; `dxp` is `dz` itself. No gradient flows back from
//! `c_T` (it is the carried state, detached by truncated BPTT); gradients do reach `h0` and `c0`.
//!
//! # The h-cells
//! The GRU and the RNN take `b_hh` into the op, because the GRU needs it inside the reset
//! product (PyTorch's `nn.GRU`): with `xp = x·W_ih + b_ih` (`[T, B, G·H]`, `G` = 3 or 1) and
//! `hp_t = h_{t-1}·W_hh + b_hh`,
//!
//! ```text
//! GRU: r = σ(xp_r + hp_r)   z = σ(xp_z + hp_z)   n = tanh(xp_n + r⊙hp_n)
//!      h_t = (1 − z)⊙n + z⊙h_{t-1}
//! RNN: h_t = tanh(xp + hp)
//! ```
//!
//! Out: `hs [T, B, H]`; gradients reach `xp`, `W_hh`, `b_hh` and `h0`.
//!
//! CPU backends run the recurrence with the plain-Rust kernels of [`crate::kernel`]; the GPU
//! backends (burn-cuda and burn-wgpu, each behind its cargo feature) share one set of CubeCL
//! kernels (`crate::cube`: one launch per layer and time step, forward and backward). The same
//! maths in Burn tensor ops ([`tensor_forward`], [`tensor_backward`], [`tensor_hcell_forward`],
//! [`tensor_hcell_backward`]) runs on any backend and is the tests' reference.

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
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Shape, Tensor, TensorData, TensorPrimitive};

use crate::kernel::{self, Dims};
use crate::Cell;

/// A cell whose whole state is `h`, run by [`hcell_sequence`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HCell {
    /// The GRU: gate blocks r, z, n (`G` = 3).
    Gru,
    /// The plain tanh RNN (`G` = 1).
    Rnn,
}

impl Cell {
    /// The fused op's name for a cell whose whole state is `h`; `None` for the LSTM.
    pub fn hcell(self) -> Option<HCell> {
        match self {
            Cell::Lstm => None,
            Cell::Gru => Some(HCell::Gru),
            Cell::Rnn => Some(HCell::Rnn),
        }
    }
}

impl HCell {
    /// Gate blocks of the cell's weights.
    pub fn gates(self) -> usize {
        match self {
            HCell::Gru => 3,
            HCell::Rnn => 1,
        }
    }
}

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

/// A backend that runs the fused recurrent sequences (see the module docs for the maths and
/// shapes).
pub trait CellBackend: Backend {
    /// Runs the LSTM recurrence over all steps; returns `(hs [T, B, H], c_T [B, H])`.
    fn lstm_sequence(
        xp: FloatTensor<Self>,
        w_hh: FloatTensor<Self>,
        h0: FloatTensor<Self>,
        c0: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// Runs an h-cell's recurrence over all steps (`xp [T, B, G·H]`, `w_hh [H, G·H]`,
    /// `b_hh [G·H]`, `h0 [B, H]`); returns `hs [T, B, H]`.
    fn hcell_sequence(
        cell: HCell,
        xp: FloatTensor<Self>,
        w_hh: FloatTensor<Self>,
        b_hh: FloatTensor<Self>,
        h0: FloatTensor<Self>,
    ) -> FloatTensor<Self>;

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

    /// The precision of the matrix products this backend runs for the model on `device`
    /// outside the sequence ops (`dW_hh`, the input and output layers); the sequence ops
    /// themselves compute in f32 on every backend. By default f32 (the CPU backends' `gemm`).
    fn matmul_precision(device: &burn::tensor::Device<Self>) -> MatmulPrecision {
        let _ = device;
        MatmulPrecision::F32
    }
}

/// What a backend needs besides [`CellBackend`] for `Autodiff<Self>` to train through the ops: a
/// forward that keeps what the backward needs, and the backward itself, for each op.
pub trait CellKernels: CellBackend {
    /// What the forward keeps for the backward (activated gates, every `c_t` and `h_t`, ...).
    type LstmCache: Clone + Send + Sync + Debug + 'static;

    /// [`CellBackend::lstm_sequence`], also returning the cache for [`Self::lstm_backward`].
    fn lstm_forward_train(
        xp: FloatTensor<Self>,
        w_hh: FloatTensor<Self>,
        h0: FloatTensor<Self>,
        c0: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, Self::LstmCache);

    /// Given `dL/dhs [T, B, H]`, returns `[dxp, dW_hh, dh0, dc0]`.
    fn lstm_backward(cache: Self::LstmCache, dhs: FloatTensor<Self>) -> [FloatTensor<Self>; 4];

    /// What the h-cells' forward keeps for the backward.
    type HCellCache: Clone + Send + Sync + Debug + 'static;

    /// [`CellBackend::hcell_sequence`], also returning the cache for [`Self::hcell_backward`].
    fn hcell_forward_train(
        cell: HCell,
        xp: FloatTensor<Self>,
        w_hh: FloatTensor<Self>,
        b_hh: FloatTensor<Self>,
        h0: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, Self::HCellCache);

    /// Given `dL/dhs [T, B, H]`, returns `[dxp, dW_hh, db_hh, dh0]`.
    fn hcell_backward(cache: Self::HCellCache, dhs: FloatTensor<Self>) -> [FloatTensor<Self>; 4];
}

/// Runs the fused LSTM sequence on tensors: `(hs [T, B, H], c_T [B, H])`.
pub fn lstm_sequence<B: CellBackend>(
    xp: Tensor<B, 3>,
    w_hh: Tensor<B, 2>,
    h0: Tensor<B, 2>,
    c0: Tensor<B, 2>,
) -> (Tensor<B, 3>, Tensor<B, 2>) {
    let (hs, c) = B::lstm_sequence(float(xp), float(w_hh), float(h0), float(c0));
    (from_float(hs), from_float(c))
}

/// Runs the fused h-cell sequence (GRU or RNN) on tensors: `hs [T, B, H]`.
pub fn hcell_sequence<B: CellBackend>(
    cell: HCell,
    xp: Tensor<B, 3>,
    w_hh: Tensor<B, 2>,
    b_hh: Tensor<B, 1>,
    h0: Tensor<B, 2>,
) -> Tensor<B, 3> {
    from_float(B::hcell_sequence(
        cell,
        float(xp),
        float(w_hh),
        float(b_hh),
        float(h0),
    ))
}

fn float<B: Backend, const D: usize>(t: Tensor<B, D>) -> FloatTensor<B> {
    t.into_primitive().tensor()
}

fn from_float<B: Backend, const D: usize>(p: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(p))
}

// ---------------------------------------------------------------------------------------------
// Autodiff: the whole sequence is one graph node with a hand-written backward.

/// What a sequence op's forward kept for its backward.
#[derive(Clone, Debug)]
enum SequenceCache<B: CellKernels> {
    Lstm(B::LstmCache),
    HCell(B::HCellCache),
}

/// The backward of a sequence op: takes `dL/dhs` from the node, runs the backend's hand-written
/// backward on what the forward kept, and hands each of the four inputs' gradients to the inputs
/// that track one.
#[derive(Debug)]
struct SequenceBackward<B>(PhantomData<B>);

impl<B: CellKernels> Backward<B, 4> for SequenceBackward<B> {
    type State = SequenceCache<B>;

    fn backward(self, ops: Ops<Self::State, 4>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dhs = grads.consume::<B>(&ops.node);
        let input_grads = match ops.state {
            SequenceCache::Lstm(cache) => B::lstm_backward(cache, dhs),
            SequenceCache::HCell(cache) => B::hcell_backward(cache, dhs),
        };
        for (parent, grad) in ops.parents.into_iter().zip(input_grads) {
            if let Some(parent) = parent {
                grads.register::<B>(parent.id, grad);
            }
        }
    }
}

/// The inner backend's outputs of a sequence op: `hs`, the LSTM's `c_T`, and the cache when the
/// forward kept one.
type Outputs<B> = (
    FloatTensor<B>,
    Option<FloatTensor<B>>,
    Option<SequenceCache<B>>,
);

/// Runs a sequence op of four inputs under autodiff as one graph node: `forward(inputs, true)`
/// keeps the cache for [`SequenceBackward`] when a gradient is wanted. `hs` is the node's output;
/// `c_T` is a constant of the graph (truncated BPTT).
#[allow(clippy::type_complexity)]
fn autodiff_sequence<B: CellKernels, C: CheckpointStrategy>(
    inputs: [FloatTensor<Autodiff<B, C>>; 4],
    forward: impl FnOnce([FloatTensor<B>; 4], bool) -> Outputs<B>,
) -> (
    FloatTensor<Autodiff<B, C>>,
    Option<FloatTensor<Autodiff<B, C>>>,
) {
    let nodes = inputs.each_ref().map(|t| t.node.clone());
    let inputs = inputs.map(|t| t.primitive);
    let untracked =
        |c: Option<FloatTensor<B>>| c.map(<Autodiff<B, C> as AutodiffBackend>::from_inner);
    match SequenceBackward::<B>(PhantomData)
        .prepare::<C>(nodes)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let (hs, c, cache) = forward(inputs, true);
            (prep.finish(cache.expect("cache kept"), hs), untracked(c))
        }
        OpsKind::UnTracked(prep) => {
            let (hs, c, _) = forward(inputs, false);
            (prep.finish(hs), untracked(c))
        }
    }
}

impl<B: CellKernels, C: CheckpointStrategy> CellBackend for Autodiff<B, C> {
    fn lstm_sequence(
        xp: FloatTensor<Self>,
        w_hh: FloatTensor<Self>,
        h0: FloatTensor<Self>,
        c0: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (hs, c) = autodiff_sequence::<B, C>([xp, w_hh, h0, c0], |[xp, w_hh, h0, c0], keep| {
            if keep {
                let (hs, c, cache) = B::lstm_forward_train(xp, w_hh, h0, c0);
                (hs, Some(c), Some(SequenceCache::Lstm(cache)))
            } else {
                let (hs, c) = B::lstm_sequence(xp, w_hh, h0, c0);
                (hs, Some(c), None)
            }
        });
        (hs, c.expect("the LSTM's c_T"))
    }

    fn hcell_sequence(
        cell: HCell,
        xp: FloatTensor<Self>,
        w_hh: FloatTensor<Self>,
        b_hh: FloatTensor<Self>,
        h0: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let inputs = [xp, w_hh, b_hh, h0];
        let (hs, _) = autodiff_sequence::<B, C>(inputs, |[xp, w_hh, b_hh, h0], keep| {
            if keep {
                let (hs, cache) = B::hcell_forward_train(cell, xp, w_hh, b_hh, h0);
                (hs, None, Some(SequenceCache::HCell(cache)))
            } else {
                (B::hcell_sequence(cell, xp, w_hh, b_hh, h0), None, None)
            }
        });
        hs
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

    fn matmul_precision(device: &burn::tensor::Device<Self>) -> MatmulPrecision {
        B::matmul_precision(device)
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

fn read<B: Backend>(t: FloatTensor<B>) -> Vec<f32> {
    let n = burn::tensor::TensorMetadata::shape(&t).num_elements();
    crate::to_f32_vec(from_float::<B, 1>(B::float_reshape(t, [n].into())))
}

fn write<B: Backend>(v: Vec<f32>, shape: &[usize], device: &B::Device) -> FloatTensor<B> {
    B::float_from_data(TensorData::new(v, shape.to_vec()), device)
}

/// Runs `cell`'s sequence on the CPU kernels: `hs [T, B, H]`, the LSTM's `c_T [B, H]`, and the
/// cache for [`native_backward`] when `keep`. `b_hh` is the GRU's and the RNN's, `c0` the LSTM's.
fn native_forward<B: Backend>(
    cell: Cell,
    xp: FloatTensor<B>,
    w_hh: FloatTensor<B>,
    b_hh: Option<FloatTensor<B>>,
    h0: FloatTensor<B>,
    c0: Option<FloatTensor<B>>,
    keep: bool,
) -> (
    FloatTensor<B>,
    Option<FloatTensor<B>>,
    Option<NativeCache<B>>,
) {
    let shape = burn::tensor::TensorMetadata::shape(&xp);
    let d = Dims {
        t: shape[0],
        b: shape[1],
        h: shape[2] / cell.gates(),
    };
    let device = B::float_device(&xp);
    // xz: the input projections, turned into the gates in place.
    let (mut xz, w_hh, h0) = (read::<B>(xp), read::<B>(w_hh), read::<B>(h0));
    let (b_hh, c0) = (
        b_hh.map_or(Vec::new(), read::<B>),
        c0.map_or(Vec::new(), read::<B>),
    );
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

/// The backward of [`native_forward`] from `dL/dhs`: `[dxp, dW_hh, db_hh or dh0, dh0 or dc0]`
/// (the order of the cell's op: the LSTM's inputs are `xp, w_hh, h0, c0`, the others'
/// `xp, w_hh, b_hh, h0`).
fn native_backward<B: Backend>(cache: NativeCache<B>, dhs: FloatTensor<B>) -> [FloatTensor<B>; 4] {
    let (cell, d) = (cache.cell, cache.dims);
    let gh = cell.gates() * d.h;
    let bh = d.b * d.h;
    let dhs = read::<B>(dhs);
    // The gates (or scratch) become dL/dxp in place (the cache is normally its only owner).
    let mut dxp = Arc::try_unwrap(cache.gates).unwrap_or_else(|g| g.to_vec());
    let mut dw = vec![0.0; d.h * gh];
    let mut db = vec![0.0; if cell == Cell::Lstm { 0 } else { gh }];
    let mut dh0 = vec![0.0; bh];
    let mut dc0 = vec![0.0; if cell == Cell::Lstm { bh } else { 0 }];
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
    let dxp = write::<B>(dxp, &[d.t, d.b, gh], dev);
    let dw = write::<B>(dw, &[d.h, gh], dev);
    let dh0 = write::<B>(dh0, &[d.b, d.h], dev);
    match cell {
        Cell::Lstm => [dxp, dw, dh0, write::<B>(dc0, &[d.b, d.h], dev)],
        Cell::Gru | Cell::Rnn => [dxp, dw, write::<B>(db, &[gh], dev), dh0],
    }
}

/// The cell of an h-cell op.
fn cell_of(cell: HCell) -> Cell {
    match cell {
        HCell::Gru => Cell::Gru,
        HCell::Rnn => Cell::Rnn,
    }
}

macro_rules! native_backend {
    ($backend:ty) => {
        impl CellBackend for $backend {
            fn lstm_sequence(
                xp: FloatTensor<Self>,
                w_hh: FloatTensor<Self>,
                h0: FloatTensor<Self>,
                c0: FloatTensor<Self>,
            ) -> (FloatTensor<Self>, FloatTensor<Self>) {
                let (hs, c, _) =
                    native_forward::<Self>(Cell::Lstm, xp, w_hh, None, h0, Some(c0), false);
                (hs, c.expect("the LSTM's c_T"))
            }

            fn hcell_sequence(
                cell: HCell,
                xp: FloatTensor<Self>,
                w_hh: FloatTensor<Self>,
                b_hh: FloatTensor<Self>,
                h0: FloatTensor<Self>,
            ) -> FloatTensor<Self> {
                let cell = cell_of(cell);
                native_forward::<Self>(cell, xp, w_hh, Some(b_hh), h0, None, false).0
            }
        }

        impl CellKernels for $backend {
            type LstmCache = NativeCache<Self>;

            fn lstm_forward_train(
                xp: FloatTensor<Self>,
                w_hh: FloatTensor<Self>,
                h0: FloatTensor<Self>,
                c0: FloatTensor<Self>,
            ) -> (FloatTensor<Self>, FloatTensor<Self>, Self::LstmCache) {
                let (hs, c, cache) =
                    native_forward::<Self>(Cell::Lstm, xp, w_hh, None, h0, Some(c0), true);
                (hs, c.expect("the LSTM's c_T"), cache.expect("cache kept"))
            }

            fn lstm_backward(
                cache: Self::LstmCache,
                dhs: FloatTensor<Self>,
            ) -> [FloatTensor<Self>; 4] {
                native_backward::<Self>(cache, dhs)
            }

            type HCellCache = NativeCache<Self>;

            fn hcell_forward_train(
                cell: HCell,
                xp: FloatTensor<Self>,
                w_hh: FloatTensor<Self>,
                b_hh: FloatTensor<Self>,
                h0: FloatTensor<Self>,
            ) -> (FloatTensor<Self>, Self::HCellCache) {
                let cell = cell_of(cell);
                let (hs, _, cache) =
                    native_forward::<Self>(cell, xp, w_hh, Some(b_hh), h0, None, true);
                (hs, cache.expect("cache kept"))
            }

            fn hcell_backward(
                cache: Self::HCellCache,
                dhs: FloatTensor<Self>,
            ) -> [FloatTensor<Self>; 4] {
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
    w_hh: Tensor<B, 2>,
    h0: Tensor<B, 2>,
    c0: Tensor<B, 2>,
    hs: Tensor<B, 3>,
    cs: Tensor<B, 3>,
    gates: Tensor<B, 3>,
}

/// The recurrence step by step in Burn tensor ops: `(hs [T, B, H], c_T [B, H], cache)`.
///
/// On an autodiff backend this is the plain step-by-step reference that the fused op is tested
/// against (Burn differentiates it op by op).
pub fn tensor_forward<B: Backend>(
    xp: Tensor<B, 3>,
    w_hh: Tensor<B, 2>,
    h0: Tensor<B, 2>,
    c0: Tensor<B, 2>,
) -> (Tensor<B, 3>, Tensor<B, 2>, TensorCache<B>) {
    let [t, b, h4] = xp.dims();
    let h = h4 / 4;
    let (mut h_prev, mut c_prev) = (h0.clone(), c0.clone());
    let (mut hs, mut cs, mut gates) = (Vec::new(), Vec::new(), Vec::new());
    for step in 0..t {
        let z = xp.clone().narrow(0, step, 1).reshape([b, h4]) + h_prev.matmul(w_hh.clone());
        let i = sigmoid(z.clone().narrow(1, 0, h));
        let f = sigmoid(z.clone().narrow(1, h, h));
        let g = z.clone().narrow(1, 2 * h, h).tanh();
        let o = sigmoid(z.narrow(1, 3 * h, h));
        let c = f.clone() * c_prev + i.clone() * g.clone();
        let h_t = o.clone() * c.clone().tanh();
        gates.push(Tensor::cat(vec![i, f, g, o], 1));
        hs.push(h_t.clone());
        cs.push(c.clone());
        (h_prev, c_prev) = (h_t, c);
    }
    let hs = Tensor::stack(hs, 0);
    let cs = Tensor::stack(cs, 0);
    let gates = Tensor::stack(gates, 0);
    let cache = TensorCache {
        w_hh,
        h0,
        c0,
        hs: hs.clone(),
        cs,
        gates,
    };
    (hs, c_prev, cache)
}

/// The hand-written backward in Burn tensor ops: `(dxp, dW_hh, dh0, dc0)` from `dL/dhs`.
pub fn tensor_backward<B: Backend>(
    cache: TensorCache<B>,
    dhs: Tensor<B, 3>,
) -> (Tensor<B, 3>, Tensor<B, 2>, Tensor<B, 2>, Tensor<B, 2>) {
    let TensorCache {
        w_hh,
        h0,
        c0,
        hs,
        cs,
        gates,
    } = cache;
    let [t, b, h] = hs.dims();
    let step = |x: &Tensor<B, 3>, s: usize| x.clone().narrow(0, s, 1).reshape([b, x.dims()[2]]);
    let w_hh_t = w_hh.transpose();
    let mut dh_next = h0.zeros_like();
    let mut dc_next = c0.zeros_like();
    let mut dzs = Vec::with_capacity(t);
    for s in (0..t).rev() {
        let gate = step(&gates, s);
        let i = gate.clone().narrow(1, 0, h);
        let f = gate.clone().narrow(1, h, h);
        let g = gate.clone().narrow(1, 2 * h, h);
        let o = gate.narrow(1, 3 * h, h);
        let c_prev = if s == 0 { c0.clone() } else { step(&cs, s - 1) };
        let tc = step(&cs, s).tanh();
        let dh = step(&dhs, s) + dh_next;
        let dc = dh.clone() * o.clone() * (tc.clone().powi_scalar(2).neg() + 1.0) + dc_next;
        let dz_o = dh * tc * o.clone() * (o.neg() + 1.0);
        let dz_i = dc.clone() * g.clone() * i.clone() * (i.clone().neg() + 1.0);
        let dz_f = dc.clone() * c_prev * f.clone() * (f.clone().neg() + 1.0);
        let dz_g = dc.clone() * i * (g.powi_scalar(2).neg() + 1.0);
        let dz = Tensor::cat(vec![dz_i, dz_f, dz_g, dz_o], 1);
        dh_next = dz.clone().matmul(w_hh_t.clone());
        dc_next = dc * f;
        dzs.push(dz);
    }
    dzs.reverse();
    let dz = Tensor::stack::<3>(dzs, 0);
    let dw = weight_grad(h0, hs, dz.clone());
    (dz, dw, dh_next, dc_next)
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

/// What [`tensor_hcell_forward`] keeps for [`tensor_hcell_backward`].
#[derive(Clone, Debug)]
pub struct TensorHCache<B: Backend> {
    cell: HCell,
    w_hh: Tensor<B, 2>,
    h0: Tensor<B, 2>,
    hs: Tensor<B, 3>,
    /// The GRU's activated gates r, z, n `[T, B, 3H]` and `hp_n` `[T, B, H]`.
    gru: Option<(Tensor<B, 3>, Tensor<B, 3>)>,
}

/// An h-cell's recurrence step by step in Burn tensor ops: `(hs [T, B, H], cache)`; the
/// reference of the fused op under autodiff.
pub fn tensor_hcell_forward<B: Backend>(
    cell: HCell,
    xp: Tensor<B, 3>,
    w_hh: Tensor<B, 2>,
    b_hh: Tensor<B, 1>,
    h0: Tensor<B, 2>,
) -> (Tensor<B, 3>, TensorHCache<B>) {
    let [t, b, gh] = xp.dims();
    let h = gh / cell.gates();
    let b_hh = b_hh.reshape([1, gh]);
    let mut h_prev = h0.clone();
    let (mut hs, mut gates, mut hns) = (Vec::new(), Vec::new(), Vec::new());
    for step in 0..t {
        let a = xp.clone().narrow(0, step, 1).reshape([b, gh]);
        let hp = h_prev.clone().matmul(w_hh.clone()) + b_hh.clone();
        let h_t = match cell {
            HCell::Rnn => (a + hp).tanh(),
            HCell::Gru => {
                let block = |x: &Tensor<B, 2>, k: usize| x.clone().narrow(1, k * h, h);
                let r = sigmoid(block(&a, 0) + block(&hp, 0));
                let z = sigmoid(block(&a, 1) + block(&hp, 1));
                let hn = block(&hp, 2);
                let n = (block(&a, 2) + r.clone() * hn.clone()).tanh();
                let h_t = (z.clone().neg() + 1.0) * n.clone() + z.clone() * h_prev;
                gates.push(Tensor::cat(vec![r, z, n], 1));
                hns.push(hn);
                h_t
            }
        };
        hs.push(h_t.clone());
        h_prev = h_t;
    }
    let hs = Tensor::stack(hs, 0);
    let gru = (cell == HCell::Gru).then(|| (Tensor::stack(gates, 0), Tensor::stack(hns, 0)));
    let cache = TensorHCache {
        cell,
        w_hh,
        h0,
        hs: hs.clone(),
        gru,
    };
    (hs, cache)
}

/// The h-cells' hand-written backward in Burn tensor ops: `(dxp, dW_hh, db_hh, dh0)` from
/// `dL/dhs`.
pub fn tensor_hcell_backward<B: Backend>(
    cache: TensorHCache<B>,
    dhs: Tensor<B, 3>,
) -> (Tensor<B, 3>, Tensor<B, 2>, Tensor<B, 1>, Tensor<B, 2>) {
    let TensorHCache {
        cell,
        w_hh,
        h0,
        hs,
        gru,
    } = cache;
    let [t, b, h] = hs.dims();
    let gh = cell.gates() * h;
    let step = |x: &Tensor<B, 3>, s: usize| x.clone().narrow(0, s, 1).reshape([b, x.dims()[2]]);
    let w_hh_t = w_hh.transpose();
    let mut dh_next = h0.zeros_like();
    let (mut dxps, mut dhps) = (Vec::with_capacity(t), Vec::with_capacity(t));
    for s in (0..t).rev() {
        let dh = step(&dhs, s) + dh_next;
        // dL/dxp_t, dL/dhp_t, and the part of dL/dh_{t-1} that does not pass through W_hh.
        let (dxp, dhp, direct) = match &gru {
            None => {
                let h_t = step(&hs, s);
                let dpre = dh * (h_t.powi_scalar(2).neg() + 1.0);
                (dpre.clone(), dpre, None)
            }
            Some((gates, hn)) => {
                let gate = step(gates, s);
                let r = gate.clone().narrow(1, 0, h);
                let z = gate.clone().narrow(1, h, h);
                let n = gate.narrow(1, 2 * h, h);
                let h_prev = if s == 0 { h0.clone() } else { step(&hs, s - 1) };
                let dn =
                    dh.clone() * (z.clone().neg() + 1.0) * (n.clone().powi_scalar(2).neg() + 1.0);
                let dz = dh.clone() * (h_prev - n) * z.clone() * (z.clone().neg() + 1.0);
                let dr = dn.clone() * step(hn, s) * r.clone() * (r.clone().neg() + 1.0);
                let dxp = Tensor::cat(vec![dr.clone(), dz.clone(), dn.clone()], 1);
                let dhp = Tensor::cat(vec![dr, dz.clone(), dn * r], 1);
                (dxp, dhp, Some(dh * z))
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
    let db = dhp.clone().reshape([t * b, gh]).sum_dim(0).reshape([gh]);
    let dw = weight_grad(h0, hs, dhp);
    (Tensor::stack(dxps, 0), dw, db, dh_next)
}
