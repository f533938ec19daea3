//! The fused recurrence on the GPU: kernels written once in CubeCL (`#[cube]`), which
//! burn-wgpu and burn-cuda both compile from this one source, behind [`CellBackend`] and
//! [`CellKernels`] for every `CubeBackend<R, f32, ..>` (`Wgpu` and `Cuda` without Burn's
//! `fusion`, as this workspace builds them). One forward and one backward kernel serve every
//! cell: the [`Cell`] is a comptime argument, so each cell's variant is compiled with only its
//! own maths and accumulators.
//!
//! # Launches
//! The input projection stays outside (one large matmul, or the one-hot row lookup). Per layer
//! and time step there is **one** launch:
//! - forward ([`forward_step()`]): one thread per (tile of up to `ROW_TILE` batch rows, unit
//!   `j`) computes `h_{t-1}·W_hh` for its unit in every gate block and each of its rows
//!   (reading `W_hh [H, G·H]` along `j`, so neighbouring threads read neighbouring words, and
//!   each word once for the tile's rows) and the whole gate and cell update, and writes the
//!   step's `h` (and the LSTM's `c`, and the activations the backward needs);
//! - backward ([`backward_step()`]): one thread per (tile of rows, `j`) forms
//!   `dh = dhs[t] + dhp_{t+1}·W_hhᵀ` (from a transposed copy of `W_hh`, again read along `j`)
//!   and the pointwise backward, giving `dhp_t` (and what the cell carries back besides `W_hh`:
//!   the LSTM's `dc`, the GRU's `dh ⊙ z`).
//!
//! After the backward loop, `dh0` is one more launch ([`through_weights()`]), and `dW_hh =
//! H_prevᵀ·dHP` and `db_hh = Σ dHP` are one Burn matmul and one Burn sum over all steps. A layer
//! of `T` steps thus takes about `T + 3` launches forward and `T + 5` backward, against about
//! 60 per step in Burn tensor ops ([`crate::ops::reference::tensor_forward`], which stays the tests'
//! reference).
//!
//! The states are kept with room for `h0` (and `c0`) in front, `[T + 1, B, H]`, which the step
//! at `t = 0` (the kernel's `first` variant, which reads `h0` instead of slot 0) copies in:
//! step `t` reads slot `t` and writes slot `t + 1`, and the backward's `H_prev` is slots
//! `0..T` with no copy.
//!
//! # Bounds
//! The kernels are launched without CubeCL's bounds checks (`launch_unchecked`), which would
//! add a compare and branch to every load of the inner loops. Every index is in bounds by
//! construction: the host allocates each tensor contiguous with the shape the kernel's
//! doc comment gives (inputs go through `into_contiguous`), a thread returns at once unless its
//! position is below its launch's count (`⌈B / tile⌉·H`, `B·H`, or the mask's length), and
//! every index is then a row, a unit and a step each below the shape's bound: a tile's rows
//! past the batch are read as the last row (`tile_row`) and never written. A tensor that a cell's variant does not use (the
//! LSTM's `b_hh`, the RNN's gates) is a placeholder which that variant never indexes.
//!
//! # Precision
//! The kernels compute in full f32 (IEEE single, unit roundoff 2⁻²⁴ ≈ 6e-8): their products are
//! plain f32 multiply-adds, never TF32 or tensor cores; `σ(x) = 1 / (1 + e^{-x})` and `tanh`
//! are the runtime's f32 functions. The remaining matmuls (`dW_hh`, and the model's input and
//! output layers) are Burn's, which on a CUDA card with tensor cores run in TF32 (10-bit
//! mantissa, unit roundoff 2⁻¹¹ ≈ 4.9e-4) for f32 inputs; see [`matmul_precision`].
//!
//! Dropout masks are drawn here too ([`dropout_mask_kernel()`]), with the counter-based hash of
//! [`karnna_kernels::dropout_mask`], bit for bit: a seed gives the same mask on the CPU and on
//! any GPU, and no mask crosses from the host.
//!
//! Sampling's one-character step has kernels of its own (`step.rs`: one launch per layer and
//! one for the logits, shaped for a few rows), behind [`CellBackend::layer_step`] and
//! [`CellBackend::linear_step`].
//!
//! No kernel synchronizes across thread blocks: a persistent kernel that walks all steps would
//! need a grid-wide barrier, which CubeCL lacks and which would hang on a runtime that runs the
//! blocks one after another (llvmpipe).

mod matmul;
mod sampling;

use burn::tensor::{DType, Shape, Tensor as BurnTensor, TensorPrimitive};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, IntElement};
use cubecl::prelude::*;

use crate::ops::LayerStep;
use crate::ops::{burn_dense, CellBackend, CellInputs, CellKernels, Matmul, MatmulPrecision};
use crate::Cell;

/// Threads per cube (thread block) of every launch here.
const CUBE_DIM: u32 = 128;

#[cube]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// This thread's batch row and unit `j` in a launch over `[rows, h]` (its position is
/// `row·h + j`); a thread past the end stops here.
#[cube]
fn row_and_unit(rows: usize, h: usize) -> (usize, usize) {
    if ABSOLUTE_POS >= rows * h {
        terminate!();
    }
    (ABSOLUTE_POS / h, ABSOLUTE_POS % h)
}

/// Row `first + r` of a tile, or the last row when that is past the end: a thread of the last
/// tile reads the last row's values in place of missing rows and discards what it computes for
/// them, so the inner loops run without a branch.
#[cube]
fn tile_row(first: usize, r: usize, rows: usize) -> usize {
    let row = first + r;
    select(row < rows, row, rows - 1)
}

/// One step `t` of `cell`'s recurrence, one thread per (tile of `tile` batch rows, unit `j`):
/// each weight read serves the tile's rows.
///
/// `xp` is `[T, B, G·H]`, `w` = `W_hh` `[H, G·H]`, `b` = `b_hh` `[G·H]` (GRU, RNN), `h0` and
/// `c0` `[B, H]` (`c0` the LSTM's); a tensor the cell does not use may be any tensor. `hs` is
/// `[T + 1, B, H]`: slot `t` is `h_{t-1}` (read from `h0` when `first`, which also copies
/// `h0` into slot 0), and the step writes slot `t + 1`. `aux` is `[T + 1, B, H]` for the LSTM
/// (its `c`, slot 0 copied from `c0` when `first`) and for the GRU when `keep` (its
/// `hp_n = (h_{t-1}·W_hh + b_hh)_n` in slot `t + 1`). When `keep`, `gates[t]` `[T, B, G·H]`
/// gets the activated gates (LSTM: `i, f, g, o`; GRU: `r, z, n`).
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub fn forward_step(
    xp: &Tensor<f32>,
    w: &Tensor<f32>,
    b: &Tensor<f32>,
    h0: &Tensor<f32>,
    c0: &Tensor<f32>,
    hs: &mut Tensor<f32>,
    aux: &mut Tensor<f32>,
    gates: &mut Tensor<f32>,
    t: usize,
    #[comptime] cell: Cell,
    #[comptime] first: bool,
    #[comptime] keep: bool,
    #[comptime] tile: usize,
) {
    let (rows, h, gh) = (hs.shape(1), hs.shape(2), w.shape(1));
    let (group, j) = row_and_unit(rows.div_ceil(tile), h);
    let first_row = group * tile;
    // Gate block k's running sum for row r of the tile in acc[4r + k], started from xp (the
    // LSTM, whose xp holds both biases; the RNN, plus b_hh) or from b_hh alone (the GRU, which
    // needs h_{t-1}·W_hh + b_hh apart).
    let mut acc = Array::<f32>::new(comptime!(4 * tile));
    #[unroll]
    for r in 0..tile {
        let x = t * rows * gh + tile_row(first_row, r, rows) * gh + j;
        acc[4 * r + 1] = 0.0;
        acc[4 * r + 2] = 0.0;
        acc[4 * r + 3] = 0.0;
        if comptime!(cell == Cell::Lstm) {
            acc[4 * r] = xp[x];
            acc[4 * r + 1] = xp[x + h];
            acc[4 * r + 2] = xp[x + 2 * h];
            acc[4 * r + 3] = xp[x + 3 * h];
        } else if comptime!(cell == Cell::Gru) {
            acc[4 * r] = b[j];
            acc[4 * r + 1] = b[j + h];
            acc[4 * r + 2] = b[j + 2 * h];
        } else {
            acc[4 * r] = xp[x] + b[j];
        }
    }
    // h_{t-1}·W_hh for unit j of every gate block, reading W_hh along j, once for the tile.
    for k in 0..h {
        let wk = k * gh + j;
        let w0 = w[wk];
        let mut w1 = 0.0;
        let mut w2 = 0.0;
        let mut w3 = 0.0;
        if comptime!(cell != Cell::Rnn) {
            w1 = w[wk + h];
            w2 = w[wk + 2 * h];
        }
        if comptime!(cell == Cell::Lstm) {
            w3 = w[wk + 3 * h];
        }
        #[unroll]
        for r in 0..tile {
            let at = tile_row(first_row, r, rows) * h + k;
            let hk = if first { h0[at] } else { hs[t * rows * h + at] };
            acc[4 * r] += hk * w0;
            if comptime!(cell != Cell::Rnn) {
                acc[4 * r + 1] += hk * w1;
                acc[4 * r + 2] += hk * w2;
            }
            if comptime!(cell == Cell::Lstm) {
                acc[4 * r + 3] += hk * w3;
            }
        }
    }
    #[unroll]
    for r in 0..tile {
        let row = first_row + r;
        if row < rows {
            let (a0, a1, a2, a3) = (acc[4 * r], acc[4 * r + 1], acc[4 * r + 2], acc[4 * r + 3]);
            forward_cell(
                xp, h0, c0, hs, aux, gates, t, row, j, a0, a1, a2, a3, cell, first, keep,
            );
        }
    }
}

/// The gate and cell update of [`forward_step`] for one row and unit, from its gate blocks'
/// sums.
#[cube]
#[allow(clippy::too_many_arguments)]
fn forward_cell(
    xp: &Tensor<f32>,
    h0: &Tensor<f32>,
    c0: &Tensor<f32>,
    hs: &mut Tensor<f32>,
    aux: &mut Tensor<f32>,
    gates: &mut Tensor<f32>,
    t: usize,
    row: usize,
    j: usize,
    a0: f32,
    a1: f32,
    a2: f32,
    a3: f32,
    #[comptime] cell: Cell,
    #[comptime] first: bool,
    #[comptime] keep: bool,
) {
    let (rows, h) = (hs.shape(1), hs.shape(2));
    let gh = xp.shape(2);
    let (bh, pos) = (rows * h, row * h + j);
    let x = t * rows * gh + row * gh + j;
    if first {
        hs[pos] = h0[pos];
    }
    let out = (t + 1) * bh + pos;
    if comptime!(cell == Cell::Lstm) {
        let c_prev = if first { c0[pos] } else { aux[t * bh + pos] };
        let i = sigmoid(a0);
        let f = sigmoid(a1);
        let g = a2.tanh();
        let o = sigmoid(a3);
        let c = f * c_prev + i * g;
        if first {
            aux[pos] = c_prev;
        }
        aux[out] = c;
        hs[out] = o * c.tanh();
        if keep {
            gates[x] = i;
            gates[x + h] = f;
            gates[x + 2 * h] = g;
            gates[x + 3 * h] = o;
        }
    } else if comptime!(cell == Cell::Gru) {
        let h_prev = if first { h0[pos] } else { hs[t * bh + pos] };
        let r = sigmoid(xp[x] + a0);
        let z = sigmoid(xp[x + h] + a1);
        let n = (xp[x + 2 * h] + r * a2).tanh();
        hs[out] = (1.0 - z) * n + z * h_prev;
        if keep {
            gates[x] = r;
            gates[x + h] = z;
            gates[x + 2 * h] = n;
            aux[out] = a2;
        }
    } else {
        hs[out] = a0.tanh();
    }
}

/// One backward step `s` of `steps` of `cell`'s recurrence, one thread per (tile of `tile`
/// rows, unit `j`): each weight read serves the tile's rows.
///
/// Forms `dh = dhs[s] + dhp[s + 1]·W_hhᵀ` (the product when `s + 1 < steps`; `wt` = `W_hhᵀ`
/// `[G·H, H]`, read along `j`) and the pointwise backward, writing `dhp[s]` `[T, B, G·H]`, the
/// gradient of the step's hidden projection (for the LSTM and the RNN also `dL/dxp[s]`; the
/// GRU's differs in its n block and goes to `dxp`). `carry` `[B, H]` is what passes back a
/// step besides `W_hh` (read when `s + 1 < steps`, then overwritten): the LSTM's
/// `dL/dc_s ⊙ f_s`, the GRU's `dh ⊙ z`. `hs`, `aux` and `gates` are as [`forward_step()`] left
/// them; tensors the cell does not use may be any tensor.
#[cube(launch_unchecked)]
// A comptime test and a runtime one stay two `if`s: CubeCL cannot join them with `&&`.
#[allow(clippy::too_many_arguments, clippy::collapsible_if)]
pub fn backward_step(
    gates: &Tensor<f32>,
    aux: &Tensor<f32>,
    hs: &Tensor<f32>,
    dhs: &Tensor<f32>,
    wt: &Tensor<f32>,
    dxp: &mut Tensor<f32>,
    dhp: &mut Tensor<f32>,
    carry: &mut Tensor<f32>,
    s: usize,
    steps: usize,
    #[comptime] cell: Cell,
    #[comptime] tile: usize,
) {
    let (rows, h, gh) = (dhs.shape(1), wt.shape(1), wt.shape(0));
    let (group, j) = row_and_unit(rows.div_ceil(tile), h);
    let first_row = group * tile;
    let later = s + 1 < steps;
    // dh for row r of the tile: dhs (and the GRU's carried dh ⊙ z), then the products.
    let mut acc = Array::<f32>::new(tile);
    #[unroll]
    for r in 0..tile {
        let pos = tile_row(first_row, r, rows) * h + j;
        let mut dh = dhs[s * rows * h + pos];
        if comptime!(cell == Cell::Gru) {
            if later {
                dh += carry[pos];
            }
        }
        acc[r] = dh;
    }
    if later {
        let next = (s + 1) * rows * gh;
        for m in 0..gh {
            let wm = wt[m * h + j];
            #[unroll]
            for r in 0..tile {
                acc[r] += dhp[next + tile_row(first_row, r, rows) * gh + m] * wm;
            }
        }
    }
    #[unroll]
    for r in 0..tile {
        let row = first_row + r;
        if row < rows {
            backward_cell(
                gates, aux, hs, dxp, dhp, carry, s, later, row, j, acc[r], cell,
            );
        }
    }
}

/// The pointwise backward of [`backward_step`] for one row and unit, from its `dh`.
#[cube]
#[allow(clippy::too_many_arguments)]
fn backward_cell(
    gates: &Tensor<f32>,
    aux: &Tensor<f32>,
    hs: &Tensor<f32>,
    dxp: &mut Tensor<f32>,
    dhp: &mut Tensor<f32>,
    carry: &mut Tensor<f32>,
    s: usize,
    later: bool,
    row: usize,
    j: usize,
    dh: f32,
    #[comptime] cell: Cell,
) {
    let (rows, h, gh) = (hs.shape(1), hs.shape(2), dhp.shape(2));
    let (bh, pos) = (rows * h, row * h + j);
    let x = s * rows * gh + row * gh + j;
    if comptime!(cell == Cell::Lstm) {
        let mut carried = 0.0;
        if later {
            carried = carry[pos];
        }
        let i = gates[x];
        let f = gates[x + h];
        let g = gates[x + 2 * h];
        let o = gates[x + 3 * h];
        let c_prev = aux[s * bh + pos];
        let tc = aux[(s + 1) * bh + pos].tanh();
        let dc = dh * o * (1.0 - tc * tc) + carried;
        dhp[x] = dc * g * i * (1.0 - i);
        dhp[x + h] = dc * c_prev * f * (1.0 - f);
        dhp[x + 2 * h] = dc * i * (1.0 - g * g);
        dhp[x + 3 * h] = dh * tc * o * (1.0 - o);
        carry[pos] = dc * f;
    } else if comptime!(cell == Cell::Gru) {
        let r = gates[x];
        let z = gates[x + h];
        let n = gates[x + 2 * h];
        let h_prev = hs[s * bh + pos];
        let dn = dh * (1.0 - z) * (1.0 - n * n);
        let dz = dh * (h_prev - n) * z * (1.0 - z);
        let dr = dn * aux[(s + 1) * bh + pos] * r * (1.0 - r);
        dxp[x] = dr;
        dxp[x + h] = dz;
        dxp[x + 2 * h] = dn;
        dhp[x] = dr;
        dhp[x + h] = dz;
        dhp[x + 2 * h] = dn * r;
        carry[pos] = dh * z;
    } else {
        let y = hs[(s + 1) * bh + pos];
        dhp[x] = dh * (1.0 - y * y);
    }
}

/// `out = dz[0]·W_hhᵀ` (`wt` = `W_hhᵀ` `[G·H, H]`, `dz [T, B, G·H]`, `out [B, H]`), plus
/// `direct` when `with_direct`: `dL/dh0` after the backward loop.
#[cube(launch_unchecked)]
pub fn through_weights(
    dz: &Tensor<f32>,
    wt: &Tensor<f32>,
    direct: &Tensor<f32>,
    out: &mut Tensor<f32>,
    #[comptime] with_direct: bool,
) {
    let (h, gh) = (out.shape(1), wt.shape(0));
    let (row, j) = row_and_unit(out.shape(0), h);
    let pos = ABSOLUTE_POS;
    let mut acc = 0.0;
    if with_direct {
        acc = direct[pos];
    }
    for m in 0..gh {
        acc += dz[row * gh + m] * wt[m * h + j];
    }
    out[pos] = acc;
}

/// `i·0x9E3779B9`, wrapping.
#[cube]
fn spread(i: u32) -> u32 {
    i * 0x9E37_79B9u32
}

#[cube]
fn fmix32(x: u32) -> u32 {
    let a = x ^ (x >> 16u32);
    let b = a * 0x85EB_CA6Bu32;
    let c = b ^ (b >> 13u32);
    let d = c * 0xC2B2_AE35u32;
    d ^ (d >> 16u32)
}

/// The dropout mask of [`karnna_kernels::dropout_mask`] on the device, bit for bit: element `i`
/// is `scale` when `fmix32(fmix32(i·0x9E3779B9 ^ seed_lo) ^ seed_hi) < threshold` (or always,
/// when `keep_all`), else 0. Multiplications wrap, as `u32::wrapping_mul` does on the host.
#[cube(launch_unchecked)]
pub fn dropout_mask_kernel(
    out: &mut Tensor<f32>,
    seed_lo: u32,
    seed_hi: u32,
    threshold: u32,
    scale: f32,
    keep_all: u32,
) {
    let i = ABSOLUTE_POS;
    if i >= out.len() {
        terminate!();
    }
    let x = fmix32(fmix32(spread(i as u32) ^ seed_lo) ^ seed_hi);
    let mut v = 0.0;
    if keep_all == 1 || x < threshold {
        v = scale;
    }
    out[i] = v;
}

// ---------------------------------------------------------------------------------------------
// The host side: allocation, launches, and the matmuls after the loops.

/// What every `CubeBackend` with f32 floats is, whatever its runtime.
type Cube<R, I, BT> = CubeBackend<R, f32, I, BT>;

/// The precision of the matmuls that Burn runs for the model on this device (the recurrence
/// kernels here are always f32): TF32 when the device offers TF32 tensor-core tiles, which
/// Burn's matmul (cubek's CMMA routine, tried first) then uses for f32 inputs, else f32 (its
/// plain routine; llvmpipe). F32 for a model whose products are [`Matmul::F32`]: they then
/// run in `matmul.rs`'s f32 kernel instead.
pub fn matmul_precision<R: CubeRuntime>(device: &R::Device, matmul: Matmul) -> MatmulPrecision {
    if matmul == Matmul::F32 {
        return MatmulPrecision::F32;
    }
    let client = R::client(device);
    let tf32 = cubecl::tf32::as_type_native_unchecked().storage_type();
    if client.properties().supports_type(tf32) {
        MatmulPrecision::Tf32
    } else {
        MatmulPrecision::F32
    }
}

/// Batch rows per thread in [`forward_step`] and [`backward_step`]: each weight a thread reads
/// serves this many rows (fewer when the batch is smaller), which divides what the step reads
/// from memory by as much.
const ROW_TILE: usize = 8;

/// The row tile for a batch of `b` rows (each value is a kernel variant of its own).
fn row_tile(b: usize) -> usize {
    ROW_TILE.min(b).max(1)
}

fn grid(n: usize) -> (CubeCount, CubeDim) {
    (
        CubeCount::new_1d(n.div_ceil(CUBE_DIM as usize) as u32),
        CubeDim::new_1d(CUBE_DIM),
    )
}

/// A new contiguous f32 tensor on `like`'s device (contents undefined).
fn empty<R: CubeRuntime>(like: &CubeTensor<R>, shape: &[usize]) -> CubeTensor<R> {
    empty_device_contiguous_dtype(
        like.client.clone(),
        like.device.clone(),
        Shape::from(shape.to_vec()),
        DType::F32,
    )
}

fn arg<R: CubeRuntime>(t: &CubeTensor<R>) -> TensorArg<R> {
    t.clone().into_tensor_arg()
}

fn dims3<R: CubeRuntime>(t: &CubeTensor<R>) -> [usize; 3] {
    let s = t.meta.shape();
    [s[0], s[1], s[2]]
}

fn tensor<R: CubeRuntime, I: IntElement, BT: BoolElement, const D: usize>(
    t: CubeTensor<R>,
) -> BurnTensor<Cube<R, I, BT>, D> {
    BurnTensor::from_primitive(TensorPrimitive::Float(t))
}

fn prim<R: CubeRuntime, I: IntElement, BT: BoolElement, const D: usize>(
    t: BurnTensor<Cube<R, I, BT>, D>,
) -> CubeTensor<R> {
    t.into_primitive().tensor()
}

/// Slots `1..=T` of a `[T + 1, B, H]` state: every step's output.
fn after_first<R: CubeRuntime, I: IntElement, BT: BoolElement>(
    ext: &CubeTensor<R>,
) -> CubeTensor<R> {
    let [t1, _, _] = dims3(ext);
    prim(tensor::<R, I, BT, 3>(ext.clone()).narrow(0, 1, t1 - 1))
}

/// `W_hhᵀ` `[G·H, H]`, contiguous, for the backward products.
fn transposed<R: CubeRuntime, I: IntElement, BT: BoolElement>(w: &CubeTensor<R>) -> CubeTensor<R> {
    into_contiguous(prim(tensor::<R, I, BT, 2>(w.clone()).transpose()))
}

/// `dW_hh = Σ_t h_{t-1}ᵀ·dhp_t` as one matmul over all steps (`hs` `[T + 1, B, H]`): Burn's,
/// or `matmul.rs`'s for [`Matmul::F32`].
fn weight_grad<R: CubeRuntime, I: IntElement, BT: BoolElement>(
    hs: &CubeTensor<R>,
    dhp: &CubeTensor<R>,
    matmul: Matmul,
) -> CubeTensor<R> {
    let [t1, b, h] = dims3(hs);
    let gh = dims3(dhp)[2];
    let h_prev = tensor::<R, I, BT, 3>(hs.clone())
        .narrow(0, 0, t1 - 1)
        .reshape([(t1 - 1) * b, h]);
    let dhp = tensor::<R, I, BT, 3>(dhp.clone()).reshape([(t1 - 1) * b, gh]);
    if matmul == Matmul::F32 {
        return matmul::matmul(prim(h_prev.transpose()), prim(dhp), None);
    }
    prim(h_prev.transpose().matmul(dhp))
}

/// `dL/dh0 = dz[0]·W_hhᵀ (+ direct)`.
fn dh0<R: CubeRuntime>(
    dz: &CubeTensor<R>,
    wt: &CubeTensor<R>,
    direct: Option<&CubeTensor<R>>,
    like: &CubeTensor<R>,
) -> CubeTensor<R> {
    let [_, b, _] = dims3(dz);
    let h = wt.meta.shape()[1];
    let out = empty(like, &[b, h]);
    let (count, dim) = grid(b * h);
    // SAFETY: every index is in bounds (module docs, "Bounds").
    unsafe {
        through_weights::launch_unchecked::<R>(
            &out.client,
            count,
            dim,
            arg(dz),
            arg(wt),
            arg(direct.unwrap_or(wt)),
            arg(&out),
            direct.is_some(),
        );
    }
    out
}

/// What the kernels' forward keeps for the backward.
#[derive(Clone, Debug)]
pub struct CubeCache<R: CubeRuntime> {
    cell: Cell,
    w_hh: CubeTensor<R>,
    /// `[T + 1, B, H]`, `h0` first.
    hs: CubeTensor<R>,
    /// `[T + 1, B, H]`: the LSTM's `c` (`c0` first), the GRU's `hp_n` (slot 0 unused); a
    /// placeholder for the RNN.
    aux: CubeTensor<R>,
    /// The activated gates of every step `[T, B, G·H]`; a placeholder for the RNN.
    gates: CubeTensor<R>,
    /// How `dW_hh` is computed.
    matmul: Matmul,
}

/// Runs `cell`'s recurrence, one [`forward_step`] launch per step: `hs [T, B, H]`, the LSTM's
/// `c_T [B, H]`, and what the backward needs (complete only when `keep`; `matmul` for its
/// `dW_hh`).
fn forward<R: CubeRuntime, I: IntElement, BT: BoolElement>(
    cell: Cell,
    inputs: CellInputs<CubeTensor<R>>,
    keep: bool,
    matmul: Matmul,
) -> (CubeTensor<R>, Option<CubeTensor<R>>, CubeCache<R>) {
    let CellInputs {
        xp,
        w_hh,
        b_hh,
        h0,
        c0,
    } = inputs.map(into_contiguous);
    let [t, b, gh] = dims3(&xp);
    let h = gh / cell.gates();
    let hs = empty(&xp, &[t + 1, b, h]);
    // What the cell does not write is a placeholder of one step.
    let aux_slots = match cell {
        Cell::Lstm => t + 1,
        Cell::Gru if keep => t + 1,
        _ => 1,
    };
    let aux = empty(&xp, &[aux_slots, b, h]);
    let gates = empty(&xp, &[if keep && cell != Cell::Rnn { t } else { 1 }, b, gh]);
    let b_hh = b_hh.unwrap_or_else(|| w_hh.clone());
    let c0 = c0.unwrap_or_else(|| h0.clone());
    let tile = row_tile(b);
    let (count, dim) = grid(b.div_ceil(tile) * h);
    for step in 0..t {
        // SAFETY: every index is in bounds (module docs, "Bounds").
        unsafe {
            forward_step::launch_unchecked::<R>(
                &xp.client,
                count.clone(),
                dim,
                arg(&xp),
                arg(&w_hh),
                arg(&b_hh),
                arg(&h0),
                arg(&c0),
                arg(&hs),
                arg(&aux),
                arg(&gates),
                step,
                cell,
                step == 0,
                keep,
                tile,
            );
        }
    }
    let out = after_first::<R, I, BT>(&hs);
    let c_t = (cell == Cell::Lstm).then(|| {
        prim(
            tensor::<R, I, BT, 3>(aux.clone())
                .narrow(0, t, 1)
                .reshape([b, h]),
        )
    });
    let cache = CubeCache {
        cell,
        w_hh,
        hs,
        aux,
        gates,
        matmul,
    };
    (out, c_t, cache)
}

/// The backward of [`forward`] from `dL/dhs`, one [`backward_step`] launch per step, then
/// `dh0`, `dW_hh` and `db_hh` over all steps: the gradient of every input.
fn backward<R: CubeRuntime, I: IntElement, BT: BoolElement>(
    cache: CubeCache<R>,
    dhs: CubeTensor<R>,
) -> CellInputs<CubeTensor<R>> {
    let cell = cache.cell;
    let dhs = into_contiguous(dhs);
    let [t, b, h] = dims3(&dhs);
    let gh = cell.gates() * h;
    let wt = transposed::<R, I, BT>(&cache.w_hh);
    let dhp = empty(&dhs, &[t, b, gh]);
    // The GRU's dL/dxp differs from dhp; the other cells' is dhp itself.
    let gru = cell == Cell::Gru;
    let dxp = empty(&dhs, &[if gru { t } else { 1 }, b, gh]);
    let carry = empty(&dhs, &[b, h]);
    let tile = row_tile(b);
    let (count, dim) = grid(b.div_ceil(tile) * h);
    for s in (0..t).rev() {
        // SAFETY: every index is in bounds (module docs, "Bounds").
        unsafe {
            backward_step::launch_unchecked::<R>(
                &dhs.client,
                count.clone(),
                dim,
                arg(&cache.gates),
                arg(&cache.aux),
                arg(&cache.hs),
                arg(&dhs),
                arg(&wt),
                arg(&dxp),
                arg(&dhp),
                arg(&carry),
                s,
                t,
                cell,
                tile,
            );
        }
    }
    let dh0 = dh0(&dhp, &wt, gru.then_some(&carry), &dhs);
    let dw = weight_grad::<R, I, BT>(&cache.hs, &dhp, cache.matmul);
    let db = (cell != Cell::Lstm).then(|| {
        prim(
            tensor::<R, I, BT, 3>(dhp.clone())
                .reshape([t * b, gh])
                .sum_dim(0)
                .reshape([gh]),
        )
    });
    CellInputs {
        xp: if gru { dxp } else { dhp },
        w_hh: dw,
        b_hh: db,
        h0: dh0,
        c0: (cell == Cell::Lstm).then_some(carry),
    }
}

impl<R: CubeRuntime, I: IntElement, BT: BoolElement> CellBackend for Cube<R, I, BT> {
    fn sequence(
        cell: Cell,
        inputs: CellInputs<CubeTensor<R>>,
        matmul: Matmul,
    ) -> (CubeTensor<R>, Option<CubeTensor<R>>) {
        let (hs, c, _) = forward::<R, I, BT>(cell, inputs, false, matmul);
        (hs, c)
    }

    fn matmul_precision(device: &R::Device, matmul: Matmul) -> MatmulPrecision {
        matmul_precision::<R>(device, matmul)
    }

    fn dense(
        x: CubeTensor<R>,
        w: CubeTensor<R>,
        b: Option<CubeTensor<R>>,
        matmul: Matmul,
    ) -> CubeTensor<R> {
        if matmul == Matmul::F32 {
            matmul::matmul(x, w, b)
        } else {
            burn_dense::<Self>(x, w, b)
        }
    }

    fn layer_step(
        cell: Cell,
        step: LayerStep<'_, CubeTensor<R>>,
    ) -> (CubeTensor<R>, Option<CubeTensor<R>>) {
        sampling::layer(cell, step)
    }

    fn linear_step(
        x: CubeTensor<R>,
        w: CubeTensor<R>,
        b: Option<CubeTensor<R>>,
        _: Matmul,
    ) -> CubeTensor<R> {
        sampling::linear(x, w, b)
    }

    fn dropout_mask(seed: u64, keep_prob: f64, shape: Shape, device: &R::Device) -> CubeTensor<R> {
        let (threshold, scale) = karnna_kernels::mask_threshold(keep_prob);
        let n = shape.num_elements();
        let out =
            empty_device_contiguous_dtype(R::client(device), device.clone(), shape, DType::F32);
        let (count, dim) = grid(n);
        // SAFETY: every index is in bounds (module docs, "Bounds").
        unsafe {
            dropout_mask_kernel::launch_unchecked::<R>(
                &out.client,
                count,
                dim,
                arg(&out),
                seed as u32,
                (seed >> 32) as u32,
                threshold,
                scale,
                u32::from(keep_prob >= 1.0),
            );
        }
        out
    }
}

impl<R: CubeRuntime, I: IntElement, BT: BoolElement> CellKernels for Cube<R, I, BT> {
    type Cache = CubeCache<R>;

    fn forward_train(
        cell: Cell,
        inputs: CellInputs<CubeTensor<R>>,
        matmul: Matmul,
    ) -> (CubeTensor<R>, Option<CubeTensor<R>>, Self::Cache) {
        forward::<R, I, BT>(cell, inputs, true, matmul)
    }

    fn backward(cache: Self::Cache, dhs: CubeTensor<R>) -> CellInputs<CubeTensor<R>> {
        backward::<R, I, BT>(cache, dhs)
    }
}
