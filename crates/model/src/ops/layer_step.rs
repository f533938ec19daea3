//! What one step of one layer for sampling ([`crate::CharRnn::step`]) takes:
//! [`LayerStep`] and its input, [`StepInput`]. The hook ([`super::CellBackend::layer_step`])
//! and its default in Burn tensor ops ([`super::tensor_layer_step`]) are beside the op.

use super::precision::Matmul;

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
    /// The model's products ([`crate::CharRnn::matmul`]), for the input projection.
    pub matmul: Matmul,
}
