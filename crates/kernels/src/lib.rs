//! karnna's CPU kernels: the LSTM, GRU and plain RNN recurrences over a whole sequence on plain
//! `f32` slices (forward, backward by truncated BPTT, and the cell alone for the sampler), the
//! sampler's exact-order products, bf16 products, the dropout mask, the recurrent cell kinds
//! ([`Cell`]) and this CPU's measured peak. Tuned for a small x86_64 CPU.
//!
//! It must not depend on Burn or on any other karnna crate: it is plain Rust over slices, so
//! `cargo test -p karnna-kernels` builds and runs in seconds, and `cargo bench -p karnna-kernels`
//! times the kernels against this CPU's peak with nothing else in the way. `karnna-model` wraps
//! these kernels in Burn operations; `karnna-infer` calls the cells and products directly.
//!
//! All arrays are row-major and contiguous. The gate axis (`G·H`) holds the cell's `G` blocks of
//! `H` columns ([`Cell::gates`]); the LSTM's four are in the order
//! **i, f, g, o** (input, forget, cell candidate, output). For the LSTM, for step `t = 0..T`,
//! with `h_{-1} = h0` and `c_{-1} = c0`:
//!
//! ```text
//! z_t = xp[t] + h_{t-1} · w_hh
//! i = σ(z_i), f = σ(z_f), g = tanh(z_g), o = σ(z_o)
//! c_t = f ⊙ c_{t-1} + i ⊙ g
//! h_t = o ⊙ tanh(c_t)
//! ```
//!
//! Every cell runs on one sequence driver (`sequence`: [`forward`] and [`backward`], keyed by
//! [`Cell`]). The rows of a batch are independent sequences, so the driver splits
//! them into one block per thread and runs each block's whole recurrence on its own thread, with
//! no synchronization between steps; only `dW_hh`, which sums over rows and steps, is one threaded
//! product at the end: at small batches that beats splitting each step's product between the
//! threads. Each step of a block does one matrix product and one fused
//! pointwise pass of the cell. The product calls `gemm`'s own microkernels on the recurrent
//! weights packed once per sequence (`Packed`; `gemm` itself would pack them again at every
//! step); on a CPU without AVX2 it calls `gemm`. The pointwise passes use
//! branch-free rational approximations of `tanh` and `σ` (absolute error below 1e-6), are
//! compiled for AVX-512 and AVX2+FMA besides the baseline and picked at run time, and work in
//! 16-lane blocks. At batch 1 the forward product is a plain row-AXPY loop split by columns over
//! the threads, faster than a `gemm` call there. The backward pass multiplies by a transposed copy
//! of `w_hh`.
//!
//! `gemm` picks its AVX-512 kernels only when built with its `x86-v4` feature.
//!
//! The GRU (PyTorch's `nn.GRU`, gate blocks r, z, n) and the plain tanh RNN (PyTorch's `nn.RNN`)
//! differ from the LSTM in that their recurrent products carry a bias `b_hh` (the GRU's `hp_n` is
//! multiplied by `r`, so that bias cannot be folded into the input projection), whose gradient
//! the backward pass also returns.
//!
//! One concern per file; only `sequence` knows every cell, and each cell's file knows nothing of
//! the others:
//!
//! - `sequence`: the driver, [`forward`] and [`backward`], their arrays ([`Forward`],
//!   [`Backward`]) and [`Dims`];
//! - `cell_math`: the `CellMath` trait a cell implements for the driver, the rows its passes
//!   see, and the one dispatch of a cell's pointwise passes per instruction set;
//! - `lstm`, `gru`, `rnn`: one cell's maths each, its pointwise passes forward and backward side
//!   by side, its cell alone for the sampler ([`lstm_cell`], [`gru_cell`], [`rnn_cell`]) and the
//!   `f64` reference its tests compare with (`test_support` holds the tests every cell shares);
//! - `schedule`: the row blocks, one per thread, and running them on the pool;
//! - `products`: the per-step product with the recurrent weights (packed, batch-1, or `gemm`,
//!   whichever fits) and the weight gradient over all steps;
//! - `matmul`: the `gemm` calls, the weights packed for `gemm`'s microkernels, the transpose;
//! - `simd`: the instruction set chosen at run time (the kernel's one choice, the sampler's
//!   products included; [`SIMD_ENV`] caps it), the `dispatch!` macro, the lane count and the 16-lane loop of the
//!   pointwise passes;
//! - `activation`: the fast `tanh` and `σ`;
//! - `vecmat`: the batch-1 product, and the sampler's exact-order products
//!   ([`vec_mat_in_order`], [`mat_rows_in_order`] and their forms for f16 and bf16 weights,
//!   [`Half`]);
//! - `bf16`: the products in bf16 with f32 sums of bf16 training (`VDPBF16PS` on AVX512_BF16,
//!   the f32 products on the rounded operands elsewhere), the per-step product's and
//!   `dW_hh`'s under [`Forward::bf16`] and the model's dense products ([`dense_bf16`]);
//! - `dropout`: [`dropout_mask`];
//! - `peak`: this CPU's measured FMA (and `VDPBF16PS`) peak, [`measure_peak`], for `bench`.

mod activation;
mod bf16;
mod cell;
mod cell_math;
mod dropout;
mod gru;
mod lstm;
mod matmul;
mod peak;
mod products;
mod rnn;
mod schedule;
mod sequence;
mod simd;
#[cfg(test)]
mod test_support;
mod vecmat;

pub use bf16::{bf16_bits, bf16_product_speed, dense_bf16, round_bf16, Bf16Path, Strided};
pub use cell::Cell;
pub use dropout::{dropout_mask, mask_threshold};
pub use gru::gru_cell;
pub use lstm::lstm_cell;
pub use matmul::transpose;
pub use peak::{measure_peak, Peak};
pub use rnn::rnn_cell;
pub use sequence::{backward, forward, Backward, Dims, Forward};
pub use simd::{bf16_dot, check_simd_env, simd_name, SIMD_ENV, SIMD_NAMES};
pub use vecmat::{
    mat_rows_in_order, mat_rows_in_order_half, vec_mat_in_order, vec_mat_in_order_half, Half,
};
