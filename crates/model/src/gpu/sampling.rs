//! One character step of the model on the GPU, for sampling: each layer is **one** launch
//! ([`layer_step`]: its input projection, `h·W_hh`, both biases and the whole cell update), and
//! the logits one more ([`linear_step`]). Burn's ops took 14 launches for a character of a
//! two-layer LSTM (a lookup or matmul, bias adds, the fused op, the output matmul and its bias,
//! the state's slices and stacks), 12 for the GRU and the RNN.
//!
//! # Shape of a launch
//! Sampling runs few rows (one, or `--num-samples`), so one thread per (row, unit), as the
//! training kernels have, would leave most of the GPU idle with each thread walking a whole
//! weight column. Here a cube is [`UNITS`] neighbouring units of one row (along x) times
//! [`SLICES`] slices of the sum (along y): the thread at `(u, s)` sums its slice of the
//! products for its unit in every gate block, reading the weights along the units, so
//! neighbouring threads read neighbouring words; the slices' partial sums meet in shared
//! memory, and the slice-0 thread adds them in order and applies the cell. The order of each
//! sum is fixed by the shape, so a step gives the same bits every time; it differs from the
//! training kernels' order, so sampled logits agree with [`crate::CharRnn::forward`]'s to
//! f32 rounding, not bit for bit.
//!
//! # Bounds
//! As in the training kernels (the parent module's "Bounds"), launches are unchecked: the host
//! allocates every tensor contiguous with the shape the kernel's doc comment gives, and a
//! thread whose unit is past the layer's width computes nothing (it still meets the barrier;
//! it never indexes).

use burn::tensor::{DType, Shape};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;

use super::{arg, empty, sigmoid};
use crate::ops::{LayerStep, StepInput};
use crate::Cell;

/// Neighbouring units per cube (x).
const UNITS: usize = 32;
/// Slices of each sum per unit (y): `UNITS · SLICES` threads a cube.
const SLICES: usize = 8;
/// Partial sums a unit keeps: the LSTM's four gates, or the GRU's `r`, `z`, input `n` and
/// recurrent `n`.
const SUMS: usize = 4;

/// This thread's part `lo..hi` of a sum over `n` terms: slice `UNIT_POS_Y` of [`SLICES`].
#[cube]
fn slice_of(n: usize) -> (usize, usize) {
    let chunk = n.div_ceil(SLICES);
    let lo = UNIT_POS_Y as usize * chunk;
    let mut hi = lo + chunk;
    if hi > n {
        hi = n;
    }
    (lo, hi)
}

/// `Σ_{k ∈ slice} x[base + k] · w[k, col]` over this thread's slice of `0..n` (`w` `[n, width]`).
#[cube]
fn partial_dot(x: &Tensor<f32>, base: usize, w: &Tensor<f32>, col: usize, n: usize) -> f32 {
    let width = w.shape(1);
    let (lo, hi) = slice_of(n);
    let mut acc = 0.0;
    for k in lo..hi {
        acc += x[base + k] * w[k * width + col];
    }
    acc
}

/// Sum `q`'s partial sums over the slices, in slice order, for this thread's unit.
#[cube]
fn total(partials: &SharedMemory<f32>, q: usize) -> f32 {
    let mut acc = 0.0;
    for s in 0..SLICES {
        acc += partials[(q * SLICES + s) * UNITS + UNIT_POS_X as usize];
    }
    acc
}

/// Stores this thread's partial sum `v` of quantity `q`.
#[cube]
fn put(partials: &mut SharedMemory<f32>, q: usize, v: f32) {
    partials[(q * SLICES + UNIT_POS_Y as usize) * UNITS + UNIT_POS_X as usize] = v;
}

/// This thread's slice of unit `j`'s sums for `row` in [`layer_step`] (zeros past the layer's
/// width): gate block `k`'s
/// `h0·W_hh` (and, unless `lookup`, `x·W_ih`) in the `k`-th value. The LSTM and the RNN take the
/// input and recurrent products together; the GRU keeps its n block's apart (`r` multiplies
/// the recurrent one): recurrent n third, input n fourth.
#[cube]
#[allow(clippy::too_many_arguments)]
fn partial_sums(
    x: &Tensor<f32>,
    w_ih: &Tensor<f32>,
    w_hh: &Tensor<f32>,
    h0: &Tensor<f32>,
    row: usize,
    j: usize,
    #[comptime] cell: Cell,
    #[comptime] lookup: bool,
) -> (f32, f32, f32, f32) {
    let width = h0.shape(1);
    let mut a0 = 0.0;
    let mut a1 = 0.0;
    let mut a2 = 0.0;
    let mut a3 = 0.0;
    if j < width {
        let hb = row * width;
        a0 = partial_dot(h0, hb, w_hh, j, width);
        if comptime!(cell != Cell::Rnn) {
            a1 = partial_dot(h0, hb, w_hh, j + width, width);
            a2 = partial_dot(h0, hb, w_hh, j + 2 * width, width);
        }
        if comptime!(cell == Cell::Lstm) {
            a3 = partial_dot(h0, hb, w_hh, j + 3 * width, width);
        }
        if !lookup {
            let inputs = w_ih.shape(0);
            let xb = row * inputs;
            a0 += partial_dot(x, xb, w_ih, j, inputs);
            if comptime!(cell != Cell::Rnn) {
                a1 += partial_dot(x, xb, w_ih, j + width, inputs);
            }
            if comptime!(cell == Cell::Lstm) {
                a2 += partial_dot(x, xb, w_ih, j + 2 * width, inputs);
                a3 += partial_dot(x, xb, w_ih, j + 3 * width, inputs);
            } else if comptime!(cell == Cell::Gru) {
                a3 = partial_dot(x, xb, w_ih, j + 2 * width, inputs);
            }
        }
    }
    (a0, a1, a2, a3)
}

/// One step of one layer of `cell` for `B` rows: cube `(x, row)` covers units
/// `x·UNITS ..` of `row`.
///
/// The input is row `ids[row]` of `w_ih` when `lookup` (the first layer's one-hot input; `ids`
/// `[B]`), else `x [B, I]` times `w_ih [I, G·H]`. `w_hh` is `[H, G·H]`, `b_ih` and `b_hh`
/// `[G·H]`, `h0` and `c0` (the LSTM's) `[B, H]`; writes `h` and the LSTM's `c` `[B, H]`. A
/// tensor the variant does not use may be any tensor.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub fn layer_step(
    ids: &Tensor<u32>,
    x: &Tensor<f32>,
    w_ih: &Tensor<f32>,
    w_hh: &Tensor<f32>,
    b_ih: &Tensor<f32>,
    b_hh: &Tensor<f32>,
    h0: &Tensor<f32>,
    c0: &Tensor<f32>,
    h: &mut Tensor<f32>,
    c: &mut Tensor<f32>,
    #[comptime] cell: Cell,
    #[comptime] lookup: bool,
) {
    let width = h.shape(1);
    let gh = w_hh.shape(1);
    let row = CUBE_POS_Y as usize;
    let j = CUBE_POS_X as usize * UNITS + UNIT_POS_X as usize;
    let live = j < width;
    let mut partials = SharedMemory::<f32>::new(SUMS * SLICES * UNITS);
    let (a0, a1, a2, a3) = partial_sums(x, w_ih, w_hh, h0, row, j, cell, lookup);
    put(&mut partials, 0, a0);
    put(&mut partials, 1, a1);
    put(&mut partials, 2, a2);
    put(&mut partials, 3, a3);
    sync_cube();
    if live && UNIT_POS_Y == 0 {
        let mut s0 = total(&partials, 0);
        let mut s1 = total(&partials, 1);
        let mut s2 = total(&partials, 2);
        let mut s3 = total(&partials, 3);
        let pos = row * width + j;
        // The one-hot input's product is one row of W_ih; the GRU's n row goes with its input n.
        let mut x_n = 0.0;
        if lookup {
            let r = ids[row] as usize * gh;
            s0 += w_ih[r + j];
            if comptime!(cell == Cell::Lstm) {
                s1 += w_ih[r + j + width];
                s2 += w_ih[r + j + 2 * width];
                s3 += w_ih[r + j + 3 * width];
            } else if comptime!(cell == Cell::Gru) {
                s1 += w_ih[r + j + width];
                x_n = w_ih[r + j + 2 * width];
            }
        }
        if comptime!(cell == Cell::Lstm) {
            let i = sigmoid(s0 + b_ih[j] + b_hh[j]);
            let f = sigmoid(s1 + b_ih[j + width] + b_hh[j + width]);
            let g = (s2 + b_ih[j + 2 * width] + b_hh[j + 2 * width]).tanh();
            let o = sigmoid(s3 + b_ih[j + 3 * width] + b_hh[j + 3 * width]);
            let c_new = f * c0[pos] + i * g;
            c[pos] = c_new;
            h[pos] = o * c_new.tanh();
        } else if comptime!(cell == Cell::Gru) {
            let r = sigmoid(s0 + b_ih[j] + b_hh[j]);
            let z = sigmoid(s1 + b_ih[j + width] + b_hh[j + width]);
            let n = (s3 + x_n + b_ih[j + 2 * width] + r * (s2 + b_hh[j + 2 * width])).tanh();
            h[pos] = (1.0 - z) * n + z * h0[pos];
        } else {
            h[pos] = (s0 + b_ih[j] + b_hh[j]).tanh();
        }
    }
}

/// `out = x·w + b` for the step's logits: `x [B, I]`, `w [I, O]`, `b [O]` (added when
/// `bias`), `out [B, O]`; cube `(x, row)` covers outputs `x·UNITS ..` of `row`.
#[cube(launch_unchecked)]
pub fn linear_step(
    x: &Tensor<f32>,
    w: &Tensor<f32>,
    b: &Tensor<f32>,
    out: &mut Tensor<f32>,
    #[comptime] bias: bool,
) {
    let (inputs, width) = (w.shape(0), w.shape(1));
    let row = CUBE_POS_Y as usize;
    let j = CUBE_POS_X as usize * UNITS + UNIT_POS_X as usize;
    let live = j < width;
    let mut partials = SharedMemory::<f32>::new(SLICES * UNITS);
    let mut a = 0.0;
    if live {
        a = partial_dot(x, row * inputs, w, j, inputs);
    }
    put(&mut partials, 0, a);
    sync_cube();
    if live && UNIT_POS_Y == 0 {
        let mut s = total(&partials, 0);
        if bias {
            s += b[j];
        }
        out[row * width + j] = s;
    }
}

/// The cubes of a launch over `width` outputs of each of `rows` rows.
fn grid(rows: usize, width: usize) -> (CubeCount, CubeDim) {
    (
        CubeCount::new_2d(width.div_ceil(UNITS) as u32, rows as u32),
        CubeDim::new_2d(UNITS as u32, SLICES as u32),
    )
}

/// [`layer_step`] on the host: the new `h` and the LSTM's new `c`.
pub(super) fn layer<R: CubeRuntime>(
    cell: Cell,
    step: LayerStep<'_, CubeTensor<R>>,
) -> (CubeTensor<R>, Option<CubeTensor<R>>) {
    let (w_ih, w_hh) = (into_contiguous(step.w_ih), into_contiguous(step.w_hh));
    let (b_ih, b_hh) = (into_contiguous(step.b_ih), into_contiguous(step.b_hh));
    let h0 = into_contiguous(step.h);
    let [rows, width] = [h0.meta.shape()[0], h0.meta.shape()[1]];
    // The first layer's ids cross to the device; above it the ids are a placeholder (the
    // layer's input, never read as ids), so nothing crosses.
    let (ids, x, lookup) = match step.input {
        StepInput::Ids(ids) => (upload_ids(&h0, ids), h0.clone(), true),
        StepInput::Hidden(x) => {
            let x = into_contiguous(x);
            (x.clone(), x, false)
        }
    };
    let lstm = cell == Cell::Lstm;
    let c0 = step.c.map(into_contiguous);
    let h = empty(&h0, &[rows, width]);
    let c = lstm.then(|| empty(&h0, &[rows, width]));
    let (count, dim) = grid(rows, width);
    // SAFETY: every index is in bounds (module docs, "Bounds").
    unsafe {
        layer_step::launch_unchecked::<R>(
            &h0.client,
            count,
            dim,
            arg(&ids),
            arg(&x),
            arg(&w_ih),
            arg(&w_hh),
            arg(&b_ih),
            arg(&b_hh),
            arg(&h0),
            arg(c0.as_ref().unwrap_or(&h0)),
            arg(&h),
            arg(c.as_ref().unwrap_or(&h0)),
            cell,
            lookup,
        );
    }
    (h, c)
}

/// [`linear_step`] on the host.
pub(super) fn linear<R: CubeRuntime>(
    x: CubeTensor<R>,
    w: CubeTensor<R>,
    b: Option<CubeTensor<R>>,
) -> CubeTensor<R> {
    let (x, w) = (into_contiguous(x), into_contiguous(w));
    let b = b.map(into_contiguous);
    let rows = x.meta.shape()[0];
    let width = w.meta.shape()[1];
    let out = empty(&x, &[rows, width]);
    let (count, dim) = grid(rows, width);
    // SAFETY: every index is in bounds (module docs, "Bounds").
    unsafe {
        linear_step::launch_unchecked::<R>(
            &x.client,
            count,
            dim,
            arg(&x),
            arg(&w),
            arg(b.as_ref().unwrap_or(&w)),
            arg(&out),
            b.is_some(),
        );
    }
    out
}

/// The ids as a `u32` tensor on `like`'s device (a copy, no launch).
fn upload_ids<R: CubeRuntime>(like: &CubeTensor<R>, ids: &[u32]) -> CubeTensor<R> {
    let handle = like.client.create_from_slice(u32::as_bytes(ids));
    CubeTensor::new_contiguous(
        like.client.clone(),
        like.device.clone(),
        Shape::from(vec![ids.len()]),
        handle,
        DType::U32,
    )
}
