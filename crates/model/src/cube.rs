//! The fused recurrences on the GPU: kernels written once in CubeCL (`#[cube]`), which
//! burn-wgpu and burn-cuda both compile from this one source, behind [`CellBackend`] and
//! [`CellKernels`] for every `CubeBackend<R, f32, ..>` (`Wgpu` and `Cuda` without Burn's
//! `fusion`, as this workspace builds them).
//!
//! # Launches
//! The input projection stays outside (one large matmul, or the one-hot row lookup). Per layer
//! and time step there is **one** launch:
//! - forward ([`lstm_forward_step`], [`gru_forward_step`], [`rnn_forward_step`]): one thread per
//!   (batch row, unit `j`) computes `h_{t-1}·W_hh` for its unit in every gate block (reading
//!   `W_hh [H, G·H]` along `j`, so neighbouring threads read neighbouring words) and the whole
//!   gate and cell update, and writes the step's `h` (and `c`, and the activations the backward
//!   needs);
//! - backward ([`lstm_backward_step`], [`gru_backward_step`], [`rnn_backward_step`]): one
//!   thread per (row, `j`) forms `dh = dhs[t] + dz_{t+1}·W_hhᵀ` (from a transposed copy of
//!   `W_hh`, again read along `j`) and the pointwise backward, giving `dz_t` (and the carried
//!   `dc`).
//!
//! After the backward loop, `dh0` is one more launch ([`through_weights`]), and `dW_hh =
//! H_prevᵀ·dZ` and `db_hh = Σ dZ` are one Burn matmul and one Burn sum over all steps. A layer
//! of `T` steps thus takes about `T + 3` launches forward and `T + 5` backward, against about
//! 60 per step in Burn tensor ops ([`crate::ops::tensor_forward`], which stays the tests'
//! reference).
//!
//! The states are kept with room for `h0` (and `c0`) in front, `[T + 1, B, H]`, which the step
//! at `t = 0` copies in: step `t` reads slot `t` and writes slot `t + 1`, and the backward's
//! `H_prev` is slots `0..T` with no copy.
//!
//! # Bounds
//! The kernels are launched without CubeCL's bounds checks (`launch_unchecked`), which would
//! add a compare and branch to every load of the inner loops. Every index is in bounds by
//! construction: the host allocates each tensor contiguous with the shape the kernel's
//! doc comment gives (inputs go through `into_contiguous`), a thread returns at once unless its
//! position is below `B·H` (or the mask's length), and every index is then a row, a unit and
//! a step each below the shape's bound.
//!
//! # Precision
//! The kernels compute in full f32 (IEEE single, unit roundoff 2⁻²⁴ ≈ 6e-8): their products are
//! plain f32 multiply-adds, never TF32 or tensor cores; `σ(x) = 1 / (1 + e^{-x})` and `tanh`
//! are the runtime's f32 functions. The remaining matmuls (`dW_hh`, and the model's input and
//! output layers) are Burn's, which on a CUDA card with tensor cores run in TF32 (10-bit
//! mantissa, unit roundoff 2⁻¹¹ ≈ 4.9e-4) for f32 inputs; see [`matmul_precision`].
//!
//! Dropout masks are drawn here too ([`dropout_mask_kernel`]), with the counter-based hash of
//! [`crate::kernel::dropout_mask`], bit for bit: a seed gives the same mask on the CPU and on
//! any GPU, and no mask crosses from the host.
//!
//! No kernel synchronizes across thread blocks: a persistent kernel that walks all steps would
//! need a grid-wide barrier, which CubeCL lacks and which would hang on a runtime that runs the
//! blocks one after another (llvmpipe).

use burn::tensor::{DType, Shape, Tensor as BurnTensor, TensorPrimitive};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, IntElement};
use cubecl::prelude::*;

use crate::ops::{CellBackend, CellKernels, HCell, MatmulPrecision};

/// Threads per cube (thread block) of every launch here.
const CUBE_DIM: u32 = 128;

#[cube]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// One LSTM step `t`: `hs`, `cs` are `[T + 1, B, H]` (slot `t` is `h_{t-1}`, `c_{t-1}`; at
/// `t = 0` it is taken from `h0`, `c0` and copied in), `xp` and `gates` `[T, B, 4H]`, `w`
/// `[H, 4H]`. Writes slot `t + 1` of `hs` and `cs`, and `i, f, g, o` into `gates[t]` when
/// `keep`.
#[cube(launch_unchecked)]
pub fn lstm_forward_step(
    xp: &Tensor<f32>,
    w: &Tensor<f32>,
    h0: &Tensor<f32>,
    c0: &Tensor<f32>,
    hs: &mut Tensor<f32>,
    cs: &mut Tensor<f32>,
    gates: &mut Tensor<f32>,
    t: usize,
    #[comptime] keep: bool,
) {
    let h = hs.shape(2);
    let bh = hs.shape(1) * h;
    let pos = ABSOLUTE_POS;
    if pos >= bh {
        terminate!();
    }
    let row = pos / h;
    let j = pos % h;
    let g4 = 4 * h;
    let x = t * hs.shape(1) * g4 + row * g4 + j;
    let mut zi = xp[x];
    let mut zf = xp[x + h];
    let mut zg = xp[x + 2 * h];
    let mut zo = xp[x + 3 * h];
    let mut c_prev = c0[pos];
    if t == 0 {
        for k in 0..h {
            let hk = h0[row * h + k];
            let wk = k * g4 + j;
            zi += hk * w[wk];
            zf += hk * w[wk + h];
            zg += hk * w[wk + 2 * h];
            zo += hk * w[wk + 3 * h];
        }
        hs[pos] = h0[pos];
        cs[pos] = c_prev;
    } else {
        let base = t * bh + row * h;
        for k in 0..h {
            let hk = hs[base + k];
            let wk = k * g4 + j;
            zi += hk * w[wk];
            zf += hk * w[wk + h];
            zg += hk * w[wk + 2 * h];
            zo += hk * w[wk + 3 * h];
        }
        c_prev = cs[t * bh + pos];
    }
    let i = sigmoid(zi);
    let f = sigmoid(zf);
    let g = zg.tanh();
    let o = sigmoid(zo);
    let c = f * c_prev + i * g;
    let out = (t + 1) * bh + pos;
    cs[out] = c;
    hs[out] = o * c.tanh();
    if keep {
        gates[x] = i;
        gates[x + h] = f;
        gates[x + 2 * h] = g;
        gates[x + 3 * h] = o;
    }
}

/// One LSTM backward step `s` of `steps`: `dz` `[T, B, 4H]` (reads `dz[s + 1]`, writes
/// `dz[s]`), `wt` = `W_hhᵀ` `[4H, H]`, `dc` `[B, H]` the carried `dL/dc_s ⊙ f_s` (read when
/// `s + 1 < steps`, then overwritten), `gates` and `cs` as the forward left them.
#[cube(launch_unchecked)]
pub fn lstm_backward_step(
    gates: &Tensor<f32>,
    cs: &Tensor<f32>,
    dhs: &Tensor<f32>,
    wt: &Tensor<f32>,
    dz: &mut Tensor<f32>,
    dc: &mut Tensor<f32>,
    s: usize,
    steps: usize,
) {
    let h = dc.shape(1);
    let rows = dc.shape(0);
    let bh = rows * h;
    let pos = ABSOLUTE_POS;
    if pos >= bh {
        terminate!();
    }
    let row = pos / h;
    let j = pos % h;
    let g4 = 4 * h;
    let mut dh = dhs[s * bh + pos];
    let mut dc_next = 0.0;
    if s + 1 < steps {
        let next = (s + 1) * rows * g4 + row * g4;
        for m in 0..g4 {
            dh += dz[next + m] * wt[m * h + j];
        }
        dc_next = dc[pos];
    }
    let x = s * rows * g4 + row * g4 + j;
    let i = gates[x];
    let f = gates[x + h];
    let g = gates[x + 2 * h];
    let o = gates[x + 3 * h];
    let c_prev = cs[s * bh + pos];
    let tc = cs[(s + 1) * bh + pos].tanh();
    let dcs = dh * o * (1.0 - tc * tc) + dc_next;
    dz[x] = dcs * g * i * (1.0 - i);
    dz[x + h] = dcs * c_prev * f * (1.0 - f);
    dz[x + 2 * h] = dcs * i * (1.0 - g * g);
    dz[x + 3 * h] = dh * tc * o * (1.0 - o);
    dc[pos] = dcs * f;
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
    let h = out.shape(1);
    let pos = ABSOLUTE_POS;
    if pos >= out.shape(0) * h {
        terminate!();
    }
    let row = pos / h;
    let j = pos % h;
    let gh = wt.shape(0);
    let mut acc = 0.0;
    if with_direct {
        acc = direct[pos];
    }
    for m in 0..gh {
        acc += dz[row * gh + m] * wt[m * h + j];
    }
    out[pos] = acc;
}

/// One GRU step `t` (gate blocks r, z, n; `b` = `b_hh [3H]` inside the reset product):
/// `hs [T + 1, B, H]` as in [`lstm_forward_step`], `gates [T, B, 3H]` gets `r, z, n` and
/// `hn [T, B, H]` gets `hp_n = (h_{t-1}·W_hh + b_hh)_n` when `keep`.
#[cube(launch_unchecked)]
pub fn gru_forward_step(
    xp: &Tensor<f32>,
    w: &Tensor<f32>,
    b: &Tensor<f32>,
    h0: &Tensor<f32>,
    hs: &mut Tensor<f32>,
    gates: &mut Tensor<f32>,
    hn: &mut Tensor<f32>,
    t: usize,
    #[comptime] keep: bool,
) {
    let h = hs.shape(2);
    let bh = hs.shape(1) * h;
    let pos = ABSOLUTE_POS;
    if pos >= bh {
        terminate!();
    }
    let row = pos / h;
    let j = pos % h;
    let g3 = 3 * h;
    let mut pr = b[j];
    let mut pz = b[j + h];
    let mut pn = b[j + 2 * h];
    let mut h_prev = h0[pos];
    if t == 0 {
        for k in 0..h {
            let hk = h0[row * h + k];
            let wk = k * g3 + j;
            pr += hk * w[wk];
            pz += hk * w[wk + h];
            pn += hk * w[wk + 2 * h];
        }
        hs[pos] = h_prev;
    } else {
        let base = t * bh + row * h;
        for k in 0..h {
            let hk = hs[base + k];
            let wk = k * g3 + j;
            pr += hk * w[wk];
            pz += hk * w[wk + h];
            pn += hk * w[wk + 2 * h];
        }
        h_prev = hs[t * bh + pos];
    }
    let x = t * hs.shape(1) * g3 + row * g3 + j;
    let r = sigmoid(xp[x] + pr);
    let z = sigmoid(xp[x + h] + pz);
    let n = (xp[x + 2 * h] + r * pn).tanh();
    hs[(t + 1) * bh + pos] = (1.0 - z) * n + z * h_prev;
    if keep {
        gates[x] = r;
        gates[x + h] = z;
        gates[x + 2 * h] = n;
        hn[t * bh + pos] = pn;
    }
}

/// One GRU backward step `s` of `steps`: `dh = dhs[s] + direct + dhp[s + 1]·W_hhᵀ` (the last
/// two when `s + 1 < steps`), then `dxp[s] = [dr, dz, dn]`, `dhp[s] = [dr, dz, dn ⊙ r]` and
/// `direct = dh ⊙ z` (the part of `dL/dh_{s-1}` that skips `W_hh`).
#[cube(launch_unchecked)]
pub fn gru_backward_step(
    gates: &Tensor<f32>,
    hn: &Tensor<f32>,
    hs: &Tensor<f32>,
    dhs: &Tensor<f32>,
    wt: &Tensor<f32>,
    dxp: &mut Tensor<f32>,
    dhp: &mut Tensor<f32>,
    direct: &mut Tensor<f32>,
    s: usize,
    steps: usize,
) {
    let h = direct.shape(1);
    let rows = direct.shape(0);
    let bh = rows * h;
    let pos = ABSOLUTE_POS;
    if pos >= bh {
        terminate!();
    }
    let row = pos / h;
    let j = pos % h;
    let g3 = 3 * h;
    let mut dh = dhs[s * bh + pos];
    if s + 1 < steps {
        dh += direct[pos];
        let next = (s + 1) * rows * g3 + row * g3;
        for m in 0..g3 {
            dh += dhp[next + m] * wt[m * h + j];
        }
    }
    let x = s * rows * g3 + row * g3 + j;
    let r = gates[x];
    let z = gates[x + h];
    let n = gates[x + 2 * h];
    let h_prev = hs[s * bh + pos];
    let dn = dh * (1.0 - z) * (1.0 - n * n);
    let dzz = dh * (h_prev - n) * z * (1.0 - z);
    let dr = dn * hn[s * bh + pos] * r * (1.0 - r);
    dxp[x] = dr;
    dxp[x + h] = dzz;
    dxp[x + 2 * h] = dn;
    dhp[x] = dr;
    dhp[x + h] = dzz;
    dhp[x + 2 * h] = dn * r;
    direct[pos] = dh * z;
}

/// One tanh-RNN step `t`: `hs [T + 1, B, H]` as in [`lstm_forward_step`],
/// `h_t = tanh(xp[t] + h_{t-1}·W_hh + b_hh)`.
#[cube(launch_unchecked)]
pub fn rnn_forward_step(
    xp: &Tensor<f32>,
    w: &Tensor<f32>,
    b: &Tensor<f32>,
    h0: &Tensor<f32>,
    hs: &mut Tensor<f32>,
    t: usize,
) {
    let h = hs.shape(2);
    let bh = hs.shape(1) * h;
    let pos = ABSOLUTE_POS;
    if pos >= bh {
        terminate!();
    }
    let row = pos / h;
    let j = pos % h;
    let mut a = xp[t * bh + pos] + b[j];
    if t == 0 {
        for k in 0..h {
            a += h0[row * h + k] * w[k * h + j];
        }
        hs[pos] = h0[pos];
    } else {
        let base = t * bh + row * h;
        for k in 0..h {
            a += hs[base + k] * w[k * h + j];
        }
    }
    hs[(t + 1) * bh + pos] = a.tanh();
}

/// One tanh-RNN backward step `s` of `steps`: `dh = dhs[s] + dhp[s + 1]·W_hhᵀ` (the product
/// when `s + 1 < steps`), `dhp[s] = dh ⊙ (1 − h_s²)` (also `dL/dxp[s]`).
#[cube(launch_unchecked)]
pub fn rnn_backward_step(
    hs: &Tensor<f32>,
    dhs: &Tensor<f32>,
    wt: &Tensor<f32>,
    dhp: &mut Tensor<f32>,
    s: usize,
    steps: usize,
) {
    let h = wt.shape(1);
    let rows = dhs.shape(1);
    let bh = rows * h;
    let pos = ABSOLUTE_POS;
    if pos >= bh {
        terminate!();
    }
    let row = pos / h;
    let j = pos % h;
    let mut dh = dhs[s * bh + pos];
    if s + 1 < steps {
        let next = (s + 1) * bh + row * h;
        for m in 0..h {
            dh += dhp[next + m] * wt[m * h + j];
        }
    }
    let y = hs[(s + 1) * bh + pos];
    dhp[s * bh + pos] = dh * (1.0 - y * y);
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

/// The dropout mask of [`crate::kernel::dropout_mask`] on the device, bit for bit: element `i`
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
/// plain routine; llvmpipe).
pub fn matmul_precision<R: CubeRuntime>(device: &R::Device) -> MatmulPrecision {
    let client = R::client(device);
    let tf32 = cubecl::tf32::as_type_native_unchecked().storage_type();
    if client.properties().supports_type(tf32) {
        MatmulPrecision::Tf32
    } else {
        MatmulPrecision::F32
    }
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

/// `dW_hh = Σ_t h_{t-1}ᵀ·dhp_t` as one Burn matmul over all steps (`hs` `[T + 1, B, H]`).
fn weight_grad<R: CubeRuntime, I: IntElement, BT: BoolElement>(
    hs: &CubeTensor<R>,
    dhp: &CubeTensor<R>,
) -> CubeTensor<R> {
    let [t1, b, h] = dims3(hs);
    let gh = dims3(dhp)[2];
    let h_prev = tensor::<R, I, BT, 3>(hs.clone())
        .narrow(0, 0, t1 - 1)
        .reshape([(t1 - 1) * b, h]);
    let dhp = tensor::<R, I, BT, 3>(dhp.clone()).reshape([(t1 - 1) * b, gh]);
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

/// What the LSTM kernels' forward keeps for the backward.
#[derive(Clone, Debug)]
pub struct CubeLstmCache<R: CubeRuntime> {
    w_hh: CubeTensor<R>,
    /// `[T + 1, B, H]`, `h0` first.
    hs: CubeTensor<R>,
    /// `[T + 1, B, H]`, `c0` first.
    cs: CubeTensor<R>,
    /// `i, f, g, o` of every step, `[T, B, 4H]`.
    gates: CubeTensor<R>,
}

fn lstm_forward<R: CubeRuntime, I: IntElement, BT: BoolElement>(
    xp: CubeTensor<R>,
    w_hh: CubeTensor<R>,
    h0: CubeTensor<R>,
    c0: CubeTensor<R>,
    keep: bool,
) -> (CubeTensor<R>, CubeTensor<R>, CubeLstmCache<R>) {
    let (xp, w_hh) = (into_contiguous(xp), into_contiguous(w_hh));
    let (h0, c0) = (into_contiguous(h0), into_contiguous(c0));
    let [t, b, g4] = dims3(&xp);
    let h = g4 / 4;
    let hs = empty(&xp, &[t + 1, b, h]);
    let cs = empty(&xp, &[t + 1, b, h]);
    let gates = empty(&xp, &[if keep { t } else { 1 }, b, g4]);
    let (count, dim) = grid(b * h);
    for step in 0..t {
        // SAFETY: every index is in bounds (module docs, "Bounds").
        unsafe {
            lstm_forward_step::launch_unchecked::<R>(
                &xp.client,
                count.clone(),
                dim,
                arg(&xp),
                arg(&w_hh),
                arg(&h0),
                arg(&c0),
                arg(&hs),
                arg(&cs),
                arg(&gates),
                step,
                keep,
            );
        }
    }
    let out = after_first::<R, I, BT>(&hs);
    let c_t = prim(
        tensor::<R, I, BT, 3>(cs.clone())
            .narrow(0, t, 1)
            .reshape([b, h]),
    );
    let cache = CubeLstmCache {
        w_hh,
        hs,
        cs,
        gates,
    };
    (out, c_t, cache)
}

fn lstm_backward<R: CubeRuntime, I: IntElement, BT: BoolElement>(
    cache: CubeLstmCache<R>,
    dhs: CubeTensor<R>,
) -> [CubeTensor<R>; 4] {
    let dhs = into_contiguous(dhs);
    let [t, b, h] = dims3(&dhs);
    let wt = transposed::<R, I, BT>(&cache.w_hh);
    let dz = empty(&dhs, &[t, b, 4 * h]);
    let dc = empty(&dhs, &[b, h]);
    let (count, dim) = grid(b * h);
    for s in (0..t).rev() {
        // SAFETY: every index is in bounds (module docs, "Bounds").
        unsafe {
            lstm_backward_step::launch_unchecked::<R>(
                &dhs.client,
                count.clone(),
                dim,
                arg(&cache.gates),
                arg(&cache.cs),
                arg(&dhs),
                arg(&wt),
                arg(&dz),
                arg(&dc),
                s,
                t,
            );
        }
    }
    let dh0 = dh0(&dz, &wt, None, &dhs);
    let dw = weight_grad::<R, I, BT>(&cache.hs, &dz);
    [dz, dw, dh0, dc]
}

/// What the h-cell kernels' forward keeps for the backward.
#[derive(Clone, Debug)]
pub struct CubeHCellCache<R: CubeRuntime> {
    cell: HCell,
    w_hh: CubeTensor<R>,
    /// `[T + 1, B, H]`, `h0` first.
    hs: CubeTensor<R>,
    /// The GRU's `r, z, n` `[T, B, 3H]` and `hp_n` `[T, B, H]`.
    gru: Option<(CubeTensor<R>, CubeTensor<R>)>,
}

fn hcell_forward<R: CubeRuntime, I: IntElement, BT: BoolElement>(
    cell: HCell,
    xp: CubeTensor<R>,
    w_hh: CubeTensor<R>,
    b_hh: CubeTensor<R>,
    h0: CubeTensor<R>,
    keep: bool,
) -> (CubeTensor<R>, CubeHCellCache<R>) {
    let (xp, w_hh) = (into_contiguous(xp), into_contiguous(w_hh));
    let (b_hh, h0) = (into_contiguous(b_hh), into_contiguous(h0));
    let [t, b, gh] = dims3(&xp);
    let h = gh / cell.gates();
    let hs = empty(&xp, &[t + 1, b, h]);
    let (count, dim) = grid(b * h);
    let gru = match cell {
        HCell::Gru => {
            let kept = if keep { t } else { 1 };
            let gates = empty(&xp, &[kept, b, gh]);
            let hn = empty(&xp, &[kept, b, h]);
            for step in 0..t {
                // SAFETY: every index is in bounds (module docs, "Bounds").
                unsafe {
                    gru_forward_step::launch_unchecked::<R>(
                        &xp.client,
                        count.clone(),
                        dim,
                        arg(&xp),
                        arg(&w_hh),
                        arg(&b_hh),
                        arg(&h0),
                        arg(&hs),
                        arg(&gates),
                        arg(&hn),
                        step,
                        keep,
                    );
                }
            }
            Some((gates, hn))
        }
        HCell::Rnn => {
            for step in 0..t {
                // SAFETY: every index is in bounds (module docs, "Bounds").
                unsafe {
                    rnn_forward_step::launch_unchecked::<R>(
                        &xp.client,
                        count.clone(),
                        dim,
                        arg(&xp),
                        arg(&w_hh),
                        arg(&b_hh),
                        arg(&h0),
                        arg(&hs),
                        step,
                    );
                }
            }
            None
        }
    };
    let out = after_first::<R, I, BT>(&hs);
    let cache = CubeHCellCache {
        cell,
        w_hh,
        hs,
        gru,
    };
    (out, cache)
}

fn hcell_backward<R: CubeRuntime, I: IntElement, BT: BoolElement>(
    cache: CubeHCellCache<R>,
    dhs: CubeTensor<R>,
) -> [CubeTensor<R>; 4] {
    let dhs = into_contiguous(dhs);
    let [t, b, h] = dims3(&dhs);
    let gh = cache.cell.gates() * h;
    let wt = transposed::<R, I, BT>(&cache.w_hh);
    let dhp = empty(&dhs, &[t, b, gh]);
    let (count, dim) = grid(b * h);
    let (dxp, dh0) = match &cache.gru {
        Some((gates, hn)) => {
            let dxp = empty(&dhs, &[t, b, gh]);
            let direct = empty(&dhs, &[b, h]);
            for s in (0..t).rev() {
                // SAFETY: every index is in bounds (module docs, "Bounds").
                unsafe {
                    gru_backward_step::launch_unchecked::<R>(
                        &dhs.client,
                        count.clone(),
                        dim,
                        arg(gates),
                        arg(hn),
                        arg(&cache.hs),
                        arg(&dhs),
                        arg(&wt),
                        arg(&dxp),
                        arg(&dhp),
                        arg(&direct),
                        s,
                        t,
                    );
                }
            }
            let dh0 = dh0(&dhp, &wt, Some(&direct), &dhs);
            (dxp, dh0)
        }
        None => {
            for s in (0..t).rev() {
                // SAFETY: every index is in bounds (module docs, "Bounds").
                unsafe {
                    rnn_backward_step::launch_unchecked::<R>(
                        &dhs.client,
                        count.clone(),
                        dim,
                        arg(&cache.hs),
                        arg(&dhs),
                        arg(&wt),
                        arg(&dhp),
                        s,
                        t,
                    );
                }
            }
            let dh0 = dh0(&dhp, &wt, None, &dhs);
            (dhp.clone(), dh0)
        }
    };
    let db = prim(
        tensor::<R, I, BT, 3>(dhp.clone())
            .reshape([t * b, gh])
            .sum_dim(0)
            .reshape([gh]),
    );
    let dw = weight_grad::<R, I, BT>(&cache.hs, &dhp);
    [dxp, dw, db, dh0]
}

impl<R: CubeRuntime, I: IntElement, BT: BoolElement> CellBackend for Cube<R, I, BT> {
    fn lstm_sequence(
        xp: CubeTensor<R>,
        w_hh: CubeTensor<R>,
        h0: CubeTensor<R>,
        c0: CubeTensor<R>,
    ) -> (CubeTensor<R>, CubeTensor<R>) {
        let (hs, c, _) = lstm_forward::<R, I, BT>(xp, w_hh, h0, c0, false);
        (hs, c)
    }

    fn hcell_sequence(
        cell: HCell,
        xp: CubeTensor<R>,
        w_hh: CubeTensor<R>,
        b_hh: CubeTensor<R>,
        h0: CubeTensor<R>,
    ) -> CubeTensor<R> {
        hcell_forward::<R, I, BT>(cell, xp, w_hh, b_hh, h0, false).0
    }

    fn matmul_precision(device: &R::Device) -> MatmulPrecision {
        matmul_precision::<R>(device)
    }

    fn dropout_mask(seed: u64, keep_prob: f64, shape: Shape, device: &R::Device) -> CubeTensor<R> {
        // The threshold and scale as `kernel::dropout_mask` computes them.
        let threshold = (keep_prob.clamp(0.0, 1.0) * 4_294_967_296.0).min(u32::MAX as f64) as u32;
        let scale = if keep_prob > 0.0 {
            (1.0 / keep_prob) as f32
        } else {
            0.0
        };
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
    type LstmCache = CubeLstmCache<R>;

    fn lstm_forward_train(
        xp: CubeTensor<R>,
        w_hh: CubeTensor<R>,
        h0: CubeTensor<R>,
        c0: CubeTensor<R>,
    ) -> (CubeTensor<R>, CubeTensor<R>, Self::LstmCache) {
        lstm_forward::<R, I, BT>(xp, w_hh, h0, c0, true)
    }

    fn lstm_backward(cache: Self::LstmCache, dhs: CubeTensor<R>) -> [CubeTensor<R>; 4] {
        lstm_backward::<R, I, BT>(cache, dhs)
    }

    type HCellCache = CubeHCellCache<R>;

    fn hcell_forward_train(
        cell: HCell,
        xp: CubeTensor<R>,
        w_hh: CubeTensor<R>,
        b_hh: CubeTensor<R>,
        h0: CubeTensor<R>,
    ) -> (CubeTensor<R>, Self::HCellCache) {
        hcell_forward::<R, I, BT>(cell, xp, w_hh, b_hh, h0, true)
    }

    fn hcell_backward(cache: Self::HCellCache, dhs: CubeTensor<R>) -> [CubeTensor<R>; 4] {
        hcell_backward::<R, I, BT>(cache, dhs)
    }
}
