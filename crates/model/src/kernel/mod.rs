//! The LSTM, GRU and plain RNN recurrences over a whole sequence on plain `f32` slices: forward,
//! backward (truncated BPTT) and the cell alone for the sampler, tuned for a small x86_64 CPU.
//!
//! All arrays are row-major and contiguous. The gate axis (`4H`) holds four blocks of `H` columns in
//! the order **i, f, g, o** (input, forget, cell candidate, output). For step `t = 0..T`, with
//! `h_{-1} = h0` and `c_{-1} = c0`:
//!
//! ```text
//! z_t = xp[t] + h_{t-1} · w_hh
//! i = σ(z_i), f = σ(z_f), g = tanh(z_g), o = σ(z_o)
//! c_t = f ⊙ c_{t-1} + i ⊙ g
//! h_t = o ⊙ tanh(c_t)
//! ```
//!
//! The rows of a batch are independent sequences, so [`lstm_forward`] and [`lstm_backward`] split
//! them into one block per thread and run each block's whole recurrence on its own thread, with
//! no synchronization between steps; only `dW_hh`, which sums over rows and steps, is one threaded
//! product at the end. At batch 32 this beat splitting each step's product between the two
//! threads by about a fifth. Each step of a block does one matrix product and one fused
//! elementwise pass. The product calls `gemm`'s own microkernels on the recurrent weights packed
//! once per sequence (`Packed`; `gemm` itself would pack them again at every step, 12% of a
//! 2x512 training step); on a CPU without AVX2 it calls `gemm`. The elementwise passes use
//! branch-free rational approximations of `tanh` and `σ` (absolute error below 1e-6), are compiled
//! for AVX-512 and AVX2+FMA besides the baseline and picked at run time, and work in 16-lane
//! blocks. At batch 1 the product is a plain row-AXPY loop split by columns over the threads,
//! faster than a `gemm` call there. The backward pass multiplies by a transposed copy of `w_hh`.
//!
//! `gemm` picks its AVX-512 kernels only when built with its `x86-v4` feature; on an AVX-512 CPU
//! that roughly halves the time of both passes.
//!
//! The GRU ([`gru_forward`], [`gru_backward`], [`gru_cell`]; PyTorch's `nn.GRU`, gate blocks r, z,
//! n) and the plain tanh RNN ([`rnn_forward`], [`rnn_backward`], [`rnn_cell`]; PyTorch's
//! `nn.RNN`) run the same way on the same pieces: one row block per thread, one product per step
//! with the recurrent weights packed once per sequence, one fused pointwise pass per step, and
//! `dW_hh` as one product over all steps at the end. Unlike the LSTM's, their recurrent products
//! carry a bias `b_hh` (the GRU's `hp_n` is multiplied by `r`, so that bias cannot be folded into
//! the input projection), whose gradient the backward passes also return.
//!
//! One concern per file; all but `lstm` and `cell` know nothing of the LSTM, and all but `gru`,
//! `rnn` and `hcell` nothing of the GRU and the RNN, for other recurrent cells to share:
//!
//! - `lstm`: the sequence passes [`lstm_forward`] and [`lstm_backward`], and [`Dims`];
//! - `gru`: the GRU sequence passes [`gru_forward`] and [`gru_backward`];
//! - `rnn`: the plain RNN sequence passes [`rnn_forward`] and [`rnn_backward`];
//! - `schedule`: the row blocks, one per thread, and running them on the pool;
//! - `step`: for the GRU and the RNN, the per-step product with the recurrent weights (packed,
//!   batch-1, or `gemm`, whichever fits) and the weight gradient over all steps;
//! - `matmul`: the `gemm` calls, the weights packed for `gemm`'s microkernels, the transpose;
//! - `simd`: the instruction set chosen at run time, the `dispatch!` macro and the lane count;
//! - `activation`: the fast `tanh` and `σ`;
//! - `cell`: the LSTM cell's pointwise passes, forward and backward, and [`lstm_cell`];
//! - `hcell`: the GRU's and the RNN's pointwise passes, forward and backward, and [`gru_cell`]
//!   and [`rnn_cell`];
//! - `vecmat`: the batch-1 product;
//! - `dropout`: [`dropout_mask`].

mod activation;
mod cell;
mod dropout;
mod gru;
mod hcell;
mod lstm;
mod matmul;
mod rnn;
mod schedule;
mod simd;
mod step;
#[cfg(test)]
mod test_support;
mod vecmat;

pub use cell::lstm_cell;
pub use dropout::dropout_mask;
pub use gru::{gru_backward, gru_forward};
pub use hcell::{gru_cell, rnn_cell};
pub use lstm::{lstm_backward, lstm_forward, Dims};
pub use rnn::{rnn_backward, rnn_forward};
