//! Under autodiff the whole sequence is one graph node with a hand-written backward
//! (`SequenceBackward`), and with [`Matmul::F32`] or [`Matmul::Bf16`] each dense product is one
//! too (`DenseBackward`).

use std::marker::PhantomData;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::Shape;

use super::{
    burn_dense, float, from_float, CellBackend, CellInputs, CellKernels, Matmul, MatmulPrecision,
};
use crate::Cell;

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
/// BPTT). The forward keeps the cache for `SequenceBackward` when a gradient is wanted.
impl<B: CellKernels, C: CheckpointStrategy> CellBackend for Autodiff<B, C> {
    fn sequence(
        cell: Cell,
        inputs: CellInputs<FloatTensor<Self>>,
        matmul: Matmul,
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

    fn matmul_precision(device: &burn::tensor::Device<Self>, matmul: Matmul) -> MatmulPrecision {
        B::matmul_precision(device, matmul)
    }

    /// Burn's own ops and their autodiff, unless `matmul` is [`Matmul::F32`] or
    /// [`Matmul::Bf16`]: then the product is one graph node (`DenseBackward`) whose forward
    /// and gradients are the inner backend's [`CellBackend::dense`] with that `matmul`, and the
    /// bias is added by Burn.
    fn dense(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        b: Option<FloatTensor<Self>>,
        matmul: Matmul,
    ) -> FloatTensor<Self> {
        if matmul == Matmul::Tf32 {
            return burn_dense::<Self>(x, w, b);
        }
        let nodes = [x.node.clone(), w.node.clone()];
        let (x_inner, w_inner) = (x.primitive, w.primitive);
        let product = match DenseBackward::<B>(matmul, PhantomData)
            .prepare::<C>(nodes)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let out = B::dense(x_inner.clone(), w_inner.clone(), None, matmul);
                prep.finish((x_inner, w_inner), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::dense(x_inner, w_inner, None, matmul)),
        };
        match b {
            None => product,
            Some(b) => {
                float(from_float::<Self, 2>(product) + from_float::<Self, 1>(b).unsqueeze_dim(0))
            }
        }
    }
}

/// The backward of [`CellBackend::dense`]'s product under autodiff with [`Matmul::F32`] or
/// [`Matmul::Bf16`]: `dx = dy·wᵀ` and `dw = xᵀ·dy`, each the inner backend's
/// [`CellBackend::dense`] with the same `matmul`.
#[derive(Debug)]
struct DenseBackward<B>(Matmul, PhantomData<B>);

impl<B: CellBackend> Backward<B, 2> for DenseBackward<B> {
    type State = (FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = grads.consume::<B>(&ops.node);
        let (x, w) = ops.state;
        let [node_x, node_w] = ops.parents;
        if let Some(node) = node_x {
            let dx = B::dense(dy.clone(), B::float_transpose(w), None, self.0);
            grads.register::<B>(node.id, dx);
        }
        if let Some(node) = node_w {
            let dw = B::dense(B::float_transpose(x), dy, None, self.0);
            grads.register::<B>(node.id, dw);
        }
    }
}
