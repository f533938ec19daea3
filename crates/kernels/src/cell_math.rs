//! What a cell gives the sequence driver (`sequence`): [`CellMath`], its facts and its pointwise
//! passes over a block of rows ([`FwdRows`], [`BwdRows`]), and the one dispatch of those passes
//! per instruction set. The cells (`lstm`, `gru`, `rnn`) implement it and the driver calls it,
//! so neither imports the other for it.

use super::simd::dispatch;
use crate::Cell;

/// One step of a block of `rows` rows as a cell's forward pointwise pass sees it: the arrays it
/// reads, then those it writes.
#[derive(Default)]
pub(super) struct FwdRows<'a> {
    /// `[rows, G·H]`: `h_{t-1} · w_hh` when [`CellMath::HP_APART`], else empty.
    pub(super) hh: &'a [f32],
    /// `[G·H]`: `b_hh` when [`CellMath::BIAS`], else empty.
    pub(super) b_hh: &'a [f32],
    /// `[rows, H]`: `h_{t-1}`.
    pub(super) h_prev: &'a [f32],
    /// `[rows, H]`: `c_{t-1}` when [`CellMath::CARRY_C`], else empty.
    pub(super) aux_prev: &'a [f32],
    /// `[rows, G·H]`: the input projection (plus `h_{t-1} · w_hh` unless [`CellMath::HP_APART`])
    /// in, the activated gates out (scratch for the RNN).
    pub(super) z: &'a mut [f32],
    /// `[rows, H]` (written): `h_t`.
    pub(super) h_out: &'a mut [f32],
    /// `[rows, H]` (written): the cell's second array when [`CellMath::AUX`] (the LSTM's `c_t`,
    /// the GRU's `hp_n`), else empty.
    pub(super) aux_out: &'a mut [f32],
}

/// One step `t` of a block of `rows` rows as a cell's backward pointwise pass sees it: the arrays
/// it writes (or updates), then those it only reads.
#[derive(Default)]
pub(super) struct BwdRows<'a> {
    /// `[rows, G·H]`: the activated gates in, `dhp_t`, the gradient of `h_{t-1} · w_hh (+ b_hh)`,
    /// out (which is `dL/dxp` but for what [`Self::dn`] holds).
    pub(super) gz: &'a mut [f32],
    /// `[rows, H]` (written): when [`CellMath::HP_APART`], the last gate block of `dL/dxp`, which
    /// differs from `dhp`'s; else empty.
    pub(super) dn: &'a mut [f32],
    /// `[rows, H]`: the gradient reaching `h_t` from step `t+1` in; when [`CellMath::HP_APART`]
    /// the part of the gradient reaching `h_{t-1}` that bypasses `w_hh` out, else unchanged.
    pub(super) dh: &'a mut [f32],
    /// `[rows, H]`: when [`CellMath::CARRY_C`], the gradient reaching `c_t` from step `t+1` in
    /// and the one reaching `c_{t-1}` out; else empty.
    pub(super) dc: &'a mut [f32],
    /// `[G·H]`: when [`CellMath::BIAS`], accumulates `dhp_t` summed over the rows; else empty.
    pub(super) db: &'a mut [f32],
    /// `[rows, H]`: `h_{t-1}` and `h_t`.
    pub(super) h_prev: &'a [f32],
    pub(super) h_t: &'a [f32],
    /// `[rows, H]`: the second array of steps `t-1` (when [`CellMath::CARRY_C`]) and `t` (when
    /// [`CellMath::AUX`]), else empty.
    pub(super) aux_prev: &'a [f32],
    pub(super) aux_t: &'a [f32],
    /// `[rows, H]`: `dL/dh_t` from the loss.
    pub(super) dh_loss: &'a [f32],
}

/// A recurrent cell's maths as the sequence driver runs it: its shape and its pointwise passes
/// over a block of rows, compiled per instruction set.
pub(super) trait CellMath {
    /// The cell; the driver's facts about it below follow from it.
    const CELL: Cell;
    /// Gate blocks of the cell's weights (`G`): LSTM 4, GRU 3, RNN 1.
    const GATES: usize = match Self::CELL {
        Cell::Lstm => 4,
        Cell::Gru => 3,
        Cell::Rnn => 1,
    };
    /// Whether the cell's recurrent product carries a bias `b_hh` (the GRU and the RNN; the LSTM's
    /// caller folds it into the input projection).
    const BIAS: bool = !matches!(Self::CELL, Cell::Lstm);
    /// Whether the cell carries `c` besides `h` (the LSTM): `c0` in, `dc0` out.
    const CARRY_C: bool = matches!(Self::CELL, Cell::Lstm);
    /// Whether the forward writes a second per-step array that the backward reads (the LSTM's
    /// `c_t`, the GRU's `hp_n`).
    const AUX: bool = !matches!(Self::CELL, Cell::Rnn);
    /// Whether the cell needs `hp = h_{t-1} · w_hh + b_hh` apart from the input projection (the
    /// GRU, whose reset gate multiplies part of it): the forward product goes to a scratch, and
    /// the backward's product adds to the part of `dh_{t-1}` that bypasses `w_hh`.
    const HP_APART: bool = matches!(Self::CELL, Cell::Gru);

    /// The forward pointwise pass of one step over a block of rows, `#[inline(always)]` so that
    /// [`forward_rows`] compiles it for each instruction set (`FMA`: whether it has fused
    /// multiply-adds).
    fn forward_rows<const FMA: bool>(h: usize, r: FwdRows);

    /// The backward pointwise pass of one step over a block of rows, compiled as
    /// [`CellMath::forward_rows`] is.
    fn backward_rows<const FMA: bool>(h: usize, r: BwdRows);
}

dispatch! {
    /// Cell `C`'s [`CellMath::forward_rows`] compiled for `simd`.
    pub(super) fn forward_rows<C: CellMath> => C::forward_rows(h: usize, r: FwdRows)
}

dispatch! {
    /// Cell `C`'s [`CellMath::backward_rows`] compiled for `simd`.
    pub(super) fn backward_rows<C: CellMath> => C::backward_rows(h: usize, r: BwdRows)
}
