//! The LSTM recurrence over a whole sequence on plain `f32` slices: forward, backward (truncated
//! BPTT) and the cell alone for the sampler, tuned for a small x86_64 CPU.
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

use gemm::{gemm, Parallelism};
use rayon::prelude::*;

/// Sizes of one LSTM layer's sequence: `t` steps, `b` rows (batch), `h` hidden units.
///
/// # Shapes
///
/// The arrays of [`lstm_forward`] and [`lstm_backward`] are `[t, b, 4h]` (gate pre-activations and
/// their gradients), `[t, b, h]` (hidden and cell states and their gradients), `[h, 4h]` (the
/// recurrent weights) and `[b, h]` (initial states).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    /// Number of time steps `T`.
    pub t: usize,
    /// Number of rows (batch size) `B`.
    pub b: usize,
    /// Number of hidden units `H`.
    pub h: usize,
}

impl Dims {
    /// Elements of one step's `[B, H]` block.
    fn bh(&self) -> usize {
        self.b * self.h
    }

    /// Elements of one step's `[B, 4H]` block.
    fn bg(&self) -> usize {
        self.b * 4 * self.h
    }
}

/// Forward over the whole sequence.
///
/// Runs the recurrence for `d.t` steps from `(h0, c0)`, writing every step's hidden and cell
/// state. `xz` holds the input projection of every step on entry and the activated gates
/// `(σ(z_i), σ(z_f), tanh(z_g), σ(z_o))`, which [`lstm_backward`] needs, on return: working in
/// place spares a buffer of the sequence's largest size, and a copy into it.
///
/// # Shapes
///
/// - `xz` (read and written): `[T, B, 4H]`, the input projection of every step with all biases
///   already added, then the gates;
/// - `w_hh`: `[H, 4H]`;
/// - `h0`, `c0`: `[B, H]`;
/// - `hs`, `cs` (written): `[T, B, H]`, `h_t` and `c_t`.
///
/// # Panics
///
/// Panics if a slice's length does not match `d`.
#[allow(clippy::too_many_arguments)]
pub fn lstm_forward(
    d: Dims,
    xz: &mut [f32],
    w_hh: &[f32],
    h0: &[f32],
    c0: &[f32],
    hs: &mut [f32],
    cs: &mut [f32],
) {
    let (t_len, b, h) = (d.t, d.b, d.h);
    let (bh, bg) = (d.bh(), d.bg());
    assert_eq!(xz.len(), t_len * bg, "xz must be [t, b, 4h]");
    assert_eq!(w_hh.len(), h * 4 * h, "w_hh must be [h, 4h]");
    assert_eq!(h0.len(), bh, "h0 must be [b, h]");
    assert_eq!(c0.len(), bh, "c0 must be [b, h]");
    assert_eq!(hs.len(), t_len * bh, "hs must be [t, b, h]");
    assert_eq!(cs.len(), t_len * bh, "cs must be [t, b, h]");
    if t_len == 0 || bh == 0 {
        return;
    }
    on_worker(|| {
        let bounds = row_bounds(b);
        let simd = simd_level();
        let packed = packed_weights(simd, b, h, 4 * h, w_hh);
        let xz = blocks_mut(xz, b, 4 * h, &bounds);
        let h0 = blocks(h0, b, h, &bounds);
        let c0 = blocks(c0, b, h, &bounds);
        let hs = blocks_mut(hs, b, h, &bounds);
        let cs = blocks_mut(cs, b, h, &bounds);
        let parts: Vec<_> = xz
            .into_iter()
            .zip(h0)
            .zip(c0)
            .zip(hs)
            .zip(cs)
            .map(|((((xz, h0), c0), hs), cs)| FwdPart {
                xz,
                h0: h0[0],
                c0: c0[0],
                hs,
                cs,
            })
            .collect();
        run_blocks(parts, |p, threaded| {
            forward_part(simd, h, w_hh, packed.as_ref(), p, threaded)
        });
    })
}

/// One block of rows of a sequence for [`forward_part`]: per-step slices of the arrays of
/// [`lstm_forward`], restricted to the block's rows.
struct FwdPart<'a> {
    xz: Vec<&'a mut [f32]>,
    h0: &'a [f32],
    c0: &'a [f32],
    hs: Vec<&'a mut [f32]>,
    cs: Vec<&'a mut [f32]>,
}

/// The forward recurrence of one block of rows; `threaded` lets its `gemm` products use the
/// thread pool (when the block is the whole batch).
///
/// `packed`, when given, is `w_hh` packed for the microkernels, used for products of two rows or
/// more.
fn forward_part(
    simd: Simd,
    h: usize,
    w_hh: &[f32],
    packed: Option<&Packed>,
    p: FwdPart,
    threaded: bool,
) {
    let FwdPart {
        mut xz,
        h0,
        c0,
        mut hs,
        mut cs,
    } = p;
    let rows = h0.len() / h;
    // xz[t] becomes the pre-activations of step t, then its activated gates.
    for t in 0..xz.len() {
        let z = &mut *xz[t];
        let (hs_done, hs_rest) = hs.split_at_mut(t);
        let (cs_done, cs_rest) = cs.split_at_mut(t);
        let (h_prev, c_prev): (&[f32], &[f32]) = match t {
            0 => (h0, c0),
            _ => (hs_done[t - 1], cs_done[t - 1]),
        };
        if rows == 1 {
            vec_mat(simd, h, h_prev, w_hh, z, threaded);
        } else if let Some(packed) = packed {
            packed.matmul(z, true, h_prev);
        } else {
            // z [rows, 4H] += h_prev [rows, H] · w_hh [H, 4H]
            // SAFETY: the blocks have these shapes; the three matrices do not overlap.
            unsafe {
                matmul(
                    rows,
                    4 * h,
                    h,
                    (z.as_mut_ptr(), 4 * h, 1),
                    true,
                    (h_prev.as_ptr(), h, 1),
                    (w_hh.as_ptr(), 4 * h, 1),
                    threaded,
                );
            }
        }
        let (h_out, c_out) = (&mut *hs_rest[0], &mut *cs_rest[0]);
        forward_rows(simd, h, z, c_prev, h_out, c_out);
    }
}

/// Backward over the whole sequence (truncated BPTT: no gradient arrives for `c_T`).
///
/// Takes what [`lstm_forward`] took and wrote and the gradient of the loss with respect to every
/// `h_t`, and overwrites (does not accumulate into) the gradients of the pre-activations (in
/// place of the gates), of `w_hh` and of the initial states.
///
/// # Shapes
///
/// - `w_hh`: `[H, 4H]`; `h0`, `c0`: `[B, H]`;
/// - `hs`, `cs`: `[T, B, H]`, as written by [`lstm_forward`];
/// - `gz` (read and written): `[T, B, 4H]`, the gates [`lstm_forward`] left in `xz`, then
///   `dL/dz_t`, which is exactly `dL/dxp`;
/// - `dhs`: `[T, B, H]`, `dL/dh_t` for every `t`;
/// - `dw_hh` (written): `[H, 4H]`, `Σ_t h_{t-1}ᵀ · dz_t`;
/// - `dh0`, `dc0` (written): `[B, H]`.
///
/// # Panics
///
/// Panics if a slice's length does not match `d`.
#[allow(clippy::too_many_arguments)]
pub fn lstm_backward(
    d: Dims,
    w_hh: &[f32],
    h0: &[f32],
    c0: &[f32],
    hs: &[f32],
    cs: &[f32],
    gz: &mut [f32],
    dhs: &[f32],
    dw_hh: &mut [f32],
    dh0: &mut [f32],
    dc0: &mut [f32],
) {
    let (t_len, b, h) = (d.t, d.b, d.h);
    let (bh, bg) = (d.bh(), d.bg());
    assert_eq!(w_hh.len(), h * 4 * h, "w_hh must be [h, 4h]");
    assert_eq!(h0.len(), bh, "h0 must be [b, h]");
    assert_eq!(c0.len(), bh, "c0 must be [b, h]");
    assert_eq!(hs.len(), t_len * bh, "hs must be [t, b, h]");
    assert_eq!(cs.len(), t_len * bh, "cs must be [t, b, h]");
    assert_eq!(gz.len(), t_len * bg, "gz must be [t, b, 4h]");
    assert_eq!(dhs.len(), t_len * bh, "dhs must be [t, b, h]");
    assert_eq!(dw_hh.len(), h * 4 * h, "dw_hh must be [h, 4h]");
    assert_eq!(dh0.len(), bh, "dh0 must be [b, h]");
    assert_eq!(dc0.len(), bh, "dc0 must be [b, h]");

    // dh0 and dc0 carry dL/dh_{t-1} and dL/dc_{t-1} from step to step; after step 0 they are the
    // answer.
    dh0.fill(0.0);
    dc0.fill(0.0);
    if t_len == 0 || bh == 0 {
        dw_hh.fill(0.0);
        return;
    }
    on_worker(|| {
        let simd = simd_level();
        let bounds = row_bounds(b);
        // gemm multiplies by w_hhᵀ about twice as fast from a row-major copy of it as through
        // transposed strides, which repays the copy (one pass over w_hh) many times over; a
        // single row is a matrix-vector product either way.
        let w_t = (b > bounds.len() - 1).then(|| transpose(h, 4 * h, w_hh));
        let packed = w_t
            .as_ref()
            .and_then(|w_t| packed_weights(simd, b, 4 * h, h, w_t));
        let w_t = match &w_t {
            Some(w_t) => (&w_t[..], h, 1),
            None => (w_hh, 1, 4 * h),
        };
        let gz_b = blocks_mut(gz, b, 4 * h, &bounds);
        let cs_b = blocks(cs, b, h, &bounds);
        let c0 = blocks(c0, b, h, &bounds);
        let dhs = blocks(dhs, b, h, &bounds);
        let dh0 = blocks_mut(dh0, b, h, &bounds);
        let dc0 = blocks_mut(dc0, b, h, &bounds);
        let parts: Vec<_> = gz_b
            .into_iter()
            .zip(cs_b)
            .zip(c0)
            .zip(dhs)
            .zip(dh0)
            .zip(dc0)
            .map(|(((((gz, cs), c0), dhs), mut dh0), mut dc0)| BwdPart {
                gz,
                cs,
                c0: c0[0],
                dhs,
                dh0: dh0.pop().expect("one step"),
                dc0: dc0.pop().expect("one step"),
            })
            .collect();
        run_blocks(parts, |p, threaded| {
            backward_part(simd, h, w_t, packed.as_ref(), p, threaded)
        });

        // dw_hh [H, 4H] = h0ᵀ [H, B] · dz_0 [B, 4H] + hs[0..T-1]ᵀ [H, (T-1)B] · dz[1..T] [(T-1)B, 4H]
        // SAFETY: the lengths were checked above; the three matrices do not overlap.
        unsafe {
            matmul(
                h,
                4 * h,
                b,
                (dw_hh.as_mut_ptr(), 4 * h, 1),
                false,
                (h0.as_ptr(), 1, h),
                (gz.as_ptr(), 4 * h, 1),
                true,
            );
            if t_len > 1 {
                matmul(
                    h,
                    4 * h,
                    (t_len - 1) * b,
                    (dw_hh.as_mut_ptr(), 4 * h, 1),
                    true,
                    (hs.as_ptr(), 1, h),
                    (gz[bg..].as_ptr(), 4 * h, 1),
                    true,
                );
            }
        }
    })
}

/// One block of rows of a sequence for [`backward_part`]: per-step slices of the arrays of
/// [`lstm_backward`], restricted to the block's rows.
struct BwdPart<'a> {
    gz: Vec<&'a mut [f32]>,
    cs: Vec<&'a [f32]>,
    c0: &'a [f32],
    dhs: Vec<&'a [f32]>,
    dh0: &'a mut [f32],
    dc0: &'a mut [f32],
}

/// The backward recurrence of one block of rows (everything but `dw_hh`, which mixes rows);
/// `w_t` is `w_hhᵀ` as a matrix operand (slice, row stride, column stride).
/// `packed`, when given, is `w_t` packed for the microkernels.
fn backward_part(
    simd: Simd,
    h: usize,
    w_t: (&[f32], usize, usize),
    packed: Option<&Packed>,
    p: BwdPart,
    threaded: bool,
) {
    let BwdPart {
        mut gz,
        cs,
        c0,
        dhs,
        dh0,
        dc0,
    } = p;
    let rows = c0.len() / h;
    for t in (0..gz.len()).rev() {
        let c_prev = if t == 0 { c0 } else { cs[t - 1] };
        let dz = &mut *gz[t];
        backward_rows(simd, h, cs[t], c_prev, dhs[t], dh0, dc0, dz);
        // dh_{t-1} [rows, H] = dz_t [rows, 4H] · w_hhᵀ [4H, H]
        if let Some(packed) = packed {
            packed.matmul(dh0, false, dz);
            continue;
        }
        // SAFETY: the blocks have these shapes; the three matrices do not overlap.
        unsafe {
            matmul(
                rows,
                h,
                4 * h,
                (dh0.as_mut_ptr(), h, 1),
                false,
                (dz.as_ptr(), 4 * h, 1),
                (w_t.0.as_ptr(), w_t.1, w_t.2),
                threaded,
            );
        }
    }
}

/// Runs `part(block, threaded)` on every row block: one block per thread of the pool, or, when
/// there is a single block, on this thread with `threaded` set so that its products may use the
/// pool.
fn run_blocks<P: Send>(blocks: Vec<P>, part: impl Fn(P, bool) + Sync) {
    if blocks.len() == 1 {
        blocks.into_iter().for_each(|p| part(p, true));
    } else {
        blocks.into_par_iter().for_each(|p| part(p, false));
    }
}

/// Row boundaries splitting `b` rows into one block per thread of the pool (one block when
/// there is one row or one thread). The rows of an LSTM are independent sequences, so each block
/// runs its whole recurrence on one thread, with no synchronization between steps: at small
/// batches that beats splitting each step's product between threads.
fn row_bounds(b: usize) -> Vec<usize> {
    let parts = rayon::current_num_threads().min(b).max(1);
    (0..=parts).map(|p| p * b / parts).collect()
}

/// The row blocks `bounds` of every step of a `[T, B, width]` array: `out[p][t]`.
fn blocks<'a>(a: &'a [f32], b: usize, width: usize, bounds: &[usize]) -> Vec<Vec<&'a [f32]>> {
    let mut out: Vec<Vec<&[f32]>> = vec![Vec::new(); bounds.len() - 1];
    for step in a.chunks_exact(b * width) {
        for (p, r) in bounds.windows(2).enumerate() {
            out[p].push(&step[r[0] * width..r[1] * width]);
        }
    }
    out
}

/// [`blocks`] of a mutable array.
fn blocks_mut<'a>(
    a: &'a mut [f32],
    b: usize,
    width: usize,
    bounds: &[usize],
) -> Vec<Vec<&'a mut [f32]>> {
    let mut out: Vec<Vec<&mut [f32]>> = (0..bounds.len() - 1).map(|_| Vec::new()).collect();
    for mut step in a.chunks_exact_mut(b * width) {
        for (p, r) in bounds.windows(2).enumerate() {
            let (block, rest) = step.split_at_mut((r[1] - r[0]) * width);
            out[p].push(block);
            step = rest;
        }
    }
    out
}

/// The LSTM cell of one row, given its gate pre-activations: the pointwise part of a step, for
/// callers that compute `z` themselves (the sampler, whose layers are split across cores).
///
/// On return `z` holds the activated gates, `c` holds `c_t` (it held `c_{t-1}`) and `h_out`
/// holds `h_t`. Same fast `σ`/`tanh` and instruction-set choice as [`lstm_forward`].
///
/// # Shapes
///
/// - `z` (read and written): `[4H]`, gate blocks i, f, g, o;
/// - `h_out` (written): `[H]`;
/// - `c` (read and written): `[H]`.
///
/// # Panics
///
/// Panics if a slice's length does not match `h`.
pub fn lstm_cell(h: usize, z: &mut [f32], h_out: &mut [f32], c: &mut [f32]) {
    assert_eq!(z.len(), 4 * h, "z must be [4h]");
    assert_eq!(h_out.len(), h, "h_out must be [h]");
    assert_eq!(c.len(), h, "c must be [h]");
    // The pointwise pass reads c_{t-1}[j] before writing c_t[j] and never reads h, so `c` is
    // updated in place and `h_out` only written.
    forward_pointwise_inplace(simd_level(), h, z, h_out, c);
}

/// Runs `f` on a rayon worker thread.
///
/// A parallel `gemm` called from outside the pool injects its work and puts the caller to sleep
/// until a worker finishes it: a futex round trip for each of the sequence's steps. Called from a
/// worker it forks and joins in the pool, whose idle threads are still spinning between steps.
fn on_worker<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        f()
    } else {
        rayon::scope(|_| f())
    }
}

// ---------------------------------------------------------------------------------------------
// Matrix products.
// ---------------------------------------------------------------------------------------------

/// A matrix operand: pointer, row stride, column stride (in elements).
type Mat<P> = (P, usize, usize);

/// `dst [m, n] = (acc ? dst : 0) + lhs [m, k] · rhs [k, n]`, through `gemm`, on the thread pool
/// when `threaded` and the product is large enough.
///
/// # Safety
///
/// Every operand must be valid for its shape and strides; `dst` must not overlap the others.
#[allow(clippy::too_many_arguments)]
unsafe fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: Mat<*mut f32>,
    acc: bool,
    lhs: Mat<*const f32>,
    rhs: Mat<*const f32>,
    threaded: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    // Tiny products are not worth waking the pool for (gemm also applies its own threshold).
    let par = if threaded && m * n * k >= 1 << 17 {
        Parallelism::Rayon(0)
    } else {
        Parallelism::None
    };
    // gemm computes dst := alpha·dst + beta·lhs·rhs (alpha is ignored when read_dst is false).
    gemm(
        m,
        n,
        k,
        dst.0,
        dst.2 as isize,
        dst.1 as isize,
        acc,
        lhs.0,
        lhs.2 as isize,
        lhs.1 as isize,
        rhs.0,
        rhs.2 as isize,
        rhs.1 as isize,
        1.0,
        1.0,
        false,
        false,
        false,
        par,
    );
}

/// A `gemm` microkernel: `dst [m, n] = (acc ? dst : 0) + lhs [m, k] · rhs [k, n]` for `m` up to
/// its panel height and `n` up to its width, with `gemm`'s argument order (the type of
/// `gemm_common::microkernel::MicroKernelFn<f32>`).
type MicroKernel = unsafe fn(
    usize,
    usize,
    usize,
    *mut f32,
    *const f32,
    *const f32,
    isize,
    isize,
    isize,
    isize,
    isize,
    f32,
    f32,
    u8,
    bool,
    bool,
    bool,
    *const f32,
);

/// The microkernels of one instruction set: `ukr[p - 1][q - 1]` takes `p` vectors of `lanes` rows
/// and `q` columns.
#[derive(Clone, Copy)]
struct MicroKernels {
    ukr: &'static [[MicroKernel; 6]],
    lanes: usize,
}

impl MicroKernels {
    /// The microkernels for `simd`, or `None` where `gemm` has none to call directly.
    fn new(simd: Simd) -> Option<Self> {
        match simd {
            #[cfg(target_arch = "x86_64")]
            Simd::Avx512 => Some(Self {
                ukr: &gemm_f32::microkernel::avx512f::f32::UKR,
                lanes: 16,
            }),
            #[cfg(target_arch = "x86_64")]
            Simd::Avx2 => Some(Self {
                ukr: &gemm_f32::microkernel::fma::f32::UKR,
                lanes: 8,
            }),
            Simd::Base => None,
        }
    }

    /// Rows of a panel.
    fn mr(&self) -> usize {
        self.ukr.len() * self.lanes
    }
}

/// A row-major `[k, n]` right-hand matrix packed once for the microkernels: panel `p` holds, for
/// each of the `k` rows, its `mr` columns from `p·mr` (zero-padded), contiguous.
///
/// `gemm` packs the weights again at every call, that is at every step of the recurrence (12% of a
/// 2x512 training step); or, below its size threshold, reads them unpacked with a stride of a whole
/// row per `k`, which is slower still. Packed once per sequence, every step streams them in order.
struct Packed {
    kernels: MicroKernels,
    k: usize,
    n: usize,
    data: Vec<f32>,
}

impl Packed {
    fn new(kernels: MicroKernels, k: usize, n: usize, w: &[f32]) -> Self {
        let mr = kernels.mr();
        let panels = n.div_ceil(mr);
        let mut data = vec![0.0; panels * k * mr];
        for (p, panel) in data.chunks_exact_mut(k * mr).enumerate() {
            let cols = p * mr..(p * mr + mr).min(n);
            for (row, out) in panel.chunks_exact_mut(mr).enumerate() {
                out[..cols.len()].copy_from_slice(&w[row * n..][cols.clone()]);
            }
        }
        Self {
            kernels,
            k,
            n,
            data,
        }
    }

    /// `dst [rows, n] = (acc ? dst : 0) + a [rows, k] · w`, on this thread.
    fn matmul(&self, dst: &mut [f32], acc: bool, a: &[f32]) {
        let (k, n, mr) = (self.k, self.n, self.kernels.mr());
        let rows = a.len() / k;
        assert_eq!(a.len(), rows * k, "a must be [rows, k]");
        assert_eq!(dst.len(), rows * n, "dst must be [rows, n]");
        let lanes = self.kernels.lanes;
        for (p, panel) in self.data.chunks_exact(k * mr).enumerate() {
            let m = mr.min(n - p * mr);
            let ukr_row = &self.kernels.ukr[m.div_ceil(lanes) - 1];
            for j0 in (0..rows).step_by(6) {
                let q = 6.min(rows - j0);
                // In the microkernel's terms this is dstᵀ = panelᵀ · aᵀ: its `m` runs along our
                // columns (stride 1), its `n` along our rows (stride n), and `a`'s rows are its
                // right-hand columns (stride k).
                // SAFETY: the panel holds k·mr values, `a` rows j0..j0+q have k each, and dst
                // rows j0..j0+q have n ≥ p·mr + m each (checked above); the instruction set was
                // detected at run time (MicroKernels::new).
                unsafe {
                    ukr_row[q - 1](
                        m,
                        q,
                        k,
                        dst.as_mut_ptr().add(j0 * n + p * mr),
                        panel.as_ptr(),
                        a.as_ptr().add(j0 * k),
                        n as isize,
                        1,
                        mr as isize,
                        1,
                        k as isize,
                        1.0,
                        1.0,
                        acc as u8,
                        false,
                        false,
                        false,
                        panel.as_ptr(),
                    );
                }
            }
        }
    }
}

/// `w [k, n]` packed for the per-step products of a batch of `b` rows, when this CPU has
/// microkernels to call directly and the batch has more than one row (one row takes
/// [`vec_mat`]).
fn packed_weights(simd: Simd, b: usize, k: usize, n: usize, w: &[f32]) -> Option<Packed> {
    if b < 2 {
        return None;
    }
    MicroKernels::new(simd).map(|kernels| Packed::new(kernels, k, n, w))
}

/// The transpose `[cols, rows]` of the row-major `[rows, cols]` matrix `a`, in cache-sized tiles.
fn transpose(rows: usize, cols: usize, a: &[f32]) -> Vec<f32> {
    const TILE: usize = 32;
    let mut out = vec![0.0; rows * cols];
    for r0 in (0..rows).step_by(TILE) {
        for c0 in (0..cols).step_by(TILE) {
            for r in r0..(r0 + TILE).min(rows) {
                for c in c0..(c0 + TILE).min(cols) {
                    out[c * rows + r] = a[r * cols + c];
                }
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Fast transcendental functions.
// ---------------------------------------------------------------------------------------------

/// `a·b + c`, fused when the caller is compiled with FMA (`mul_add` without hardware FMA is a slow
/// library call).
#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// Branch-free `tanh`: a [13/6] rational approximation on `[-7.9, 7.9]` (Eigen's), clamped
/// outside, absolute error below 1e-6; NaN propagates.
#[inline(always)]
fn tanh_fast<const FMA: bool>(x: f32) -> f32 {
    const CLAMP: f32 = 7.905_311;
    let x = if x > CLAMP { CLAMP } else { x };
    let x = if x < -CLAMP { -CLAMP } else { x };
    let x2 = x * x;
    let mut p = madd::<FMA>(x2, -2.760_768_5e-16, 2.000_188e-13);
    p = madd::<FMA>(x2, p, -8.604_672e-11);
    p = madd::<FMA>(x2, p, 5.122_297e-8);
    p = madd::<FMA>(x2, p, 1.485_722_4e-5);
    p = madd::<FMA>(x2, p, 6.372_619_3e-4);
    p = madd::<FMA>(x2, p, 4.893_524_6e-3);
    p *= x;
    let mut q = madd::<FMA>(x2, 1.198_258_4e-6, 1.185_347_1e-4);
    q = madd::<FMA>(x2, q, 2.268_434_6e-3);
    q = madd::<FMA>(x2, q, 4.893_525e-3);
    p / q
}

/// Branch-free logistic sigmoid, `0.5·tanh(0.5·x) + 0.5`, absolute error below 1e-6.
#[inline(always)]
fn sigmoid_fast<const FMA: bool>(x: f32) -> f32 {
    madd::<FMA>(0.5, tanh_fast::<FMA>(0.5 * x), 0.5)
}

// ---------------------------------------------------------------------------------------------
// Elementwise passes, compiled per instruction set and dispatched at run time.
// ---------------------------------------------------------------------------------------------

/// The widest vector instruction set the elementwise loops may use on this CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Simd {
    /// The target's baseline.
    Base,
    /// AVX2 with FMA.
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// AVX-512 (F and VL) with FMA.
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

fn simd_level() -> Simd {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
        {
            return Simd::Avx512;
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return Simd::Avx2;
        }
    }
    Simd::Base
}

/// Defines `$name(simd, args..)`, which runs the `#[inline(always)]` generic `$body::<FMA>(args..)`
/// compiled for the instruction set `simd` names.
macro_rules! dispatch {
    ($(#[$doc:meta])* fn $name:ident => $body:ident ( $($arg:ident : $ty:ty),* $(,)? )) => {
        $(#[$doc])*
        #[allow(clippy::too_many_arguments)]
        fn $name(simd: Simd, $($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
            #[allow(clippy::too_many_arguments)]
            unsafe fn avx512($($arg: $ty),*) {
                $body::<true>($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            #[allow(clippy::too_many_arguments)]
            unsafe fn avx2($($arg: $ty),*) {
                $body::<true>($($arg),*)
            }
            match simd {
                // SAFETY: simd_level only reports instruction sets this CPU has.
                #[cfg(target_arch = "x86_64")]
                Simd::Avx512 => unsafe { avx512($($arg),*) },
                // SAFETY: as above.
                #[cfg(target_arch = "x86_64")]
                Simd::Avx2 => unsafe { avx2($($arg),*) },
                Simd::Base => $body::<false>($($arg),*),
            }
        }
    };
}

dispatch! {
    /// The forward pointwise pass over `[rows, ·]` blocks ([`forward_rows_impl`]): activates `z` in
    /// place and writes `h_t` and `c_t`.
    fn forward_rows => forward_rows_impl(
        h: usize, z: &mut [f32], c_prev: &[f32], h_out: &mut [f32], c_out: &mut [f32],
    )
}

#[inline(always)]
fn forward_rows_impl<const FMA: bool>(
    h: usize,
    z: &mut [f32],
    c_prev: &[f32],
    h_out: &mut [f32],
    c_out: &mut [f32],
) {
    for (((z, c_prev), h_out), c_out) in z
        .chunks_exact_mut(4 * h)
        .zip(c_prev.chunks_exact(h))
        .zip(h_out.chunks_exact_mut(h))
        .zip(c_out.chunks_exact_mut(h))
    {
        // The row works in place: c_out starts as c_{t-1}.
        c_out.copy_from_slice(c_prev);
        forward_inplace_impl::<FMA>(h, z, h_out, c_out);
    }
}

/// Lanes per block of the elementwise passes: one AVX-512 register of `f32`.
const LANES: usize = 16;

/// One element of the forward cell: from the pre-activations `z = (z_i, z_f, z_g, z_o)` and
/// `c_{t-1}`, the activated gates, `c_t` and `h_t`.
#[inline(always)]
fn cell<const FMA: bool>(z: [f32; 4], c_prev: f32) -> ([f32; 4], f32, f32) {
    let i = sigmoid_fast::<FMA>(z[0]);
    let f = sigmoid_fast::<FMA>(z[1]);
    let g = tanh_fast::<FMA>(z[2]);
    let o = sigmoid_fast::<FMA>(z[3]);
    let c = madd::<FMA>(f, c_prev, i * g);
    ([i, f, g, o], c, o * tanh_fast::<FMA>(c))
}

/// [`cell`] over one block of [`LANES`] elements: `z` holds the pre-activations in and the
/// activated gates out, `c` holds `c_{t-1}` in and `c_t` out, `hv` receives `h_t`.
///
/// The rows work on blocks copied to local arrays: with seven separate slices LLVM would need
/// more run-time overlap checks than it is willing to emit and falls back to scalar code (it did,
/// at ~12% of a small training step).
#[inline(always)]
fn cell_block<const FMA: bool>(
    z: &mut [[f32; LANES]; 4],
    c: &mut [f32; LANES],
    hv: &mut [f32; LANES],
) {
    for k in 0..LANES {
        let (a, ck, hk) = cell::<FMA>([z[0][k], z[1][k], z[2][k], z[3][k]], c[k]);
        (z[0][k], z[1][k], z[2][k], z[3][k]) = (a[0], a[1], a[2], a[3]);
        (c[k], hv[k]) = (ck, hk);
    }
}

/// The gate pre-activations of block `r` of one row, as local arrays.
#[inline(always)]
fn load_gates(z: [&[f32]; 4], r: std::ops::Range<usize>) -> [[f32; LANES]; 4] {
    let mut out = [[0.0f32; LANES]; 4];
    for (out, z) in out.iter_mut().zip(z) {
        out.copy_from_slice(&z[r.clone()]);
    }
    out
}

dispatch! {
    /// One row of the forward pointwise pass with `h` and `c` updated in place.
    fn forward_pointwise_inplace => forward_inplace_impl(
        h: usize, z: &mut [f32], h_state: &mut [f32], c_state: &mut [f32],
    )
}

#[inline(always)]
fn forward_inplace_impl<const FMA: bool>(
    h: usize,
    z: &mut [f32],
    h_state: &mut [f32],
    c_state: &mut [f32],
) {
    let (zi, rest) = z.split_at_mut(h);
    let (zf, rest) = rest.split_at_mut(h);
    let (zg, zo) = rest.split_at_mut(h);
    forward_row::<FMA>(zi, zf, zg, zo, h_state, c_state);
}

/// One row of the forward pointwise pass: activates the gate blocks `zi`..`zo` in place, reads
/// `c_{t-1}` from and writes `c_t` to `c_state`, writes `h_t` to `h_state`.
#[inline(always)]
fn forward_row<const FMA: bool>(
    zi: &mut [f32],
    zf: &mut [f32],
    zg: &mut [f32],
    zo: &mut [f32],
    h_state: &mut [f32],
    c_state: &mut [f32],
) {
    let h = zi.len();
    let (zf, zg, zo) = (&mut zf[..h], &mut zg[..h], &mut zo[..h]);
    let (h_state, c_state) = (&mut h_state[..h], &mut c_state[..h]);
    let blocks = h / LANES * LANES;
    for j0 in (0..blocks).step_by(LANES) {
        let r = j0..j0 + LANES;
        let mut z = load_gates([zi, zf, zg, zo], r.clone());
        let mut c = [0.0f32; LANES];
        c.copy_from_slice(&c_state[r.clone()]);
        let mut hv = [0.0f32; LANES];
        cell_block::<FMA>(&mut z, &mut c, &mut hv);
        for (dst, src) in [&mut *zi, &mut *zf, &mut *zg, &mut *zo].into_iter().zip(&z) {
            dst[r.clone()].copy_from_slice(src);
        }
        c_state[r.clone()].copy_from_slice(&c);
        h_state[r].copy_from_slice(&hv);
    }
    for j in blocks..h {
        let (a, c, hv) = cell::<FMA>([zi[j], zf[j], zg[j], zo[j]], c_state[j]);
        (zi[j], zf[j], zg[j], zo[j]) = (a[0], a[1], a[2], a[3]);
        (c_state[j], h_state[j]) = (c, hv);
    }
}

dispatch! {
    /// The backward pointwise pass over `[rows, ·]` blocks of step `t` ([`backward_rows_impl`]).
    ///
    /// Reads `c_t`, `c_{t-1}` and `dh_t` from the loss; `dh_next` holds the gradient reaching
    /// `h_t` from step `t+1` and `dc_next`, in and out, the gradient reaching `c_t` from step
    /// `t+1`, replaced by the one reaching `c_{t-1}`; `gz` holds the activated gates in and
    /// `dz_t` out.
    fn backward_rows => backward_rows_impl(
        h: usize,
        c: &[f32],
        c_prev: &[f32],
        dh_loss: &[f32],
        dh_next: &[f32],
        dc_next: &mut [f32],
        gz: &mut [f32],
    )
}

#[inline(always)]
fn backward_rows_impl<const FMA: bool>(
    h: usize,
    c: &[f32],
    c_prev: &[f32],
    dh_loss: &[f32],
    dh_next: &[f32],
    dc_next: &mut [f32],
    gz: &mut [f32],
) {
    for (((((c, c_prev), dh_loss), dh_next), dc_next), gz) in c
        .chunks_exact(h)
        .zip(c_prev.chunks_exact(h))
        .zip(dh_loss.chunks_exact(h))
        .zip(dh_next.chunks_exact(h))
        .zip(dc_next.chunks_exact_mut(h))
        .zip(gz.chunks_exact_mut(4 * h))
    {
        let (gi, rest) = gz.split_at_mut(h);
        let (gf, rest) = rest.split_at_mut(h);
        let (gg, go) = rest.split_at_mut(h);
        backward_row::<FMA>([gi, gf, gg, go], [c, c_prev, dh_loss, dh_next], dc_next);
    }
}

/// One element of the backward cell: from the activated gates `(i, f, g, o)`, `c_t`, `c_{t-1}`,
/// the two gradients reaching `h_t` and the one reaching `c_t`, the gradients of the four
/// pre-activations and the one reaching `c_{t-1}`.
#[inline(always)]
fn cell_backward<const FMA: bool>(gate: [f32; 4], v: [f32; 4], dc_next: f32) -> ([f32; 4], f32) {
    let [i, f, g, o] = gate;
    let [c, c_prev, dh_loss, dh_next] = v;
    let dh = dh_loss + dh_next;
    let tc = tanh_fast::<FMA>(c);
    let dho = dh * o;
    let dc = madd::<FMA>(dho, madd::<FMA>(-tc, tc, 1.0), dc_next);
    let dz = [
        dc * g * i * (1.0 - i),
        dc * c_prev * f * (1.0 - f),
        dc * i * madd::<FMA>(-g, g, 1.0),
        dho * tc * (1.0 - o),
    ];
    (dz, dc * f)
}

/// One row of the backward pointwise pass: `gz` (gate blocks i, f, g, o) holds the activated
/// gates in and their pre-activations' gradients out; `v` is `[c_t, c_{t-1}, dh_loss, dh_next]`.
/// Works in blocks of [`LANES`] like [`forward_row`].
#[inline(always)]
fn backward_row<const FMA: bool>(gz: [&mut [f32]; 4], v: [&[f32]; 4], dc_next: &mut [f32]) {
    let h = dc_next.len();
    let [gi, gf, gg, go] = gz;
    let (gi, gf, gg, go) = (&mut gi[..h], &mut gf[..h], &mut gg[..h], &mut go[..h]);
    let v = v.map(|v| &v[..h]);
    let blocks = h / LANES * LANES;
    for j0 in (0..blocks).step_by(LANES) {
        let r = j0..j0 + LANES;
        let mut g = load_gates([gi, gf, gg, go], r.clone());
        let mut vb = [[0.0f32; LANES]; 4];
        for (vb, v) in vb.iter_mut().zip(v) {
            vb.copy_from_slice(&v[r.clone()]);
        }
        let mut dc = [0.0f32; LANES];
        dc.copy_from_slice(&dc_next[r.clone()]);
        for k in 0..LANES {
            let gate = [g[0][k], g[1][k], g[2][k], g[3][k]];
            let (dz, dck) =
                cell_backward::<FMA>(gate, [vb[0][k], vb[1][k], vb[2][k], vb[3][k]], dc[k]);
            (g[0][k], g[1][k], g[2][k], g[3][k]) = (dz[0], dz[1], dz[2], dz[3]);
            dc[k] = dck;
        }
        for (dst, src) in [&mut *gi, &mut *gf, &mut *gg, &mut *go].into_iter().zip(&g) {
            dst[r.clone()].copy_from_slice(src);
        }
        dc_next[r].copy_from_slice(&dc);
    }
    for j in blocks..h {
        let gate = [gi[j], gf[j], gg[j], go[j]];
        let (dz, dc) = cell_backward::<FMA>(gate, [v[0][j], v[1][j], v[2][j], v[3][j]], dc_next[j]);
        (gi[j], gf[j], gg[j], go[j]) = (dz[0], dz[1], dz[2], dz[3]);
        dc_next[j] = dc;
    }
}

/// A dropout mask: each element is `1 / keep_prob` with probability `keep_prob`, else `0`.
///
/// Element `i` is decided by a counter-based hash of `(seed, i)` (two rounds of MurmurHash3's
/// 32-bit finalizer), so the mask depends only on the seed and the length and the loop has no
/// carried state: it runs 16 lanes wide on AVX-512.
pub fn dropout_mask(seed: u64, keep_prob: f64, out: &mut [f32]) {
    let threshold = (keep_prob.clamp(0.0, 1.0) * 4_294_967_296.0).min(u32::MAX as f64) as u32;
    let scale = if keep_prob > 0.0 {
        (1.0 / keep_prob) as f32
    } else {
        0.0
    };
    // keep_prob 1 would need threshold 2^32.
    if keep_prob >= 1.0 {
        return out.fill(scale);
    }
    mask_fill(
        simd_level(),
        [seed as u32, (seed >> 32) as u32],
        threshold,
        scale,
        out,
    );
}

dispatch! {
    /// [`mask_impl`] for `simd`.
    fn mask_fill => mask_impl(seed: [u32; 2], threshold: u32, scale: f32, out: &mut [f32])
}

#[inline(always)]
fn mask_impl<const FMA: bool>(seed: [u32; 2], threshold: u32, scale: f32, out: &mut [f32]) {
    #[inline(always)]
    fn fmix32(mut x: u32) -> u32 {
        x ^= x >> 16;
        x = x.wrapping_mul(0x85EB_CA6B);
        x ^= x >> 13;
        x = x.wrapping_mul(0xC2B2_AE35);
        x ^ (x >> 16)
    }
    for (i, m) in out.iter_mut().enumerate() {
        let x = fmix32(fmix32((i as u32).wrapping_mul(0x9E37_79B9) ^ seed[0]) ^ seed[1]);
        *m = if x < threshold { scale } else { 0.0 };
    }
}

/// Elements of `w_hh` below which the batch-1 product stays on one thread.
const PAR_MIN_WEIGHTS: usize = 1 << 18;

/// `z [4H] += x [H] · w_hh [H, 4H]` at batch 1, as AXPYs over the contiguous rows of `w_hh`; the
/// columns are split between threads when that pays.
fn vec_mat(simd: Simd, h: usize, x: &[f32], w_hh: &[f32], z: &mut [f32], threaded: bool) {
    let n = 4 * h;
    let threads = rayon::current_num_threads();
    if !threaded || threads < 2 || h * n < PAR_MIN_WEIGHTS {
        return axpy_block(simd, &x[..h], w_hh, n, &mut z[..n]);
    }
    // Whole 64-byte lines per thread.
    let cols = n.div_ceil(threads).next_multiple_of(16);
    z[..n]
        .par_chunks_mut(cols)
        .enumerate()
        .for_each(|(blk, z)| axpy_block(simd, &x[..h], &w_hh[blk * cols..], n, z));
}

dispatch! {
    /// [`axpy_block_impl`] for `simd`.
    fn axpy_block => axpy_block_impl(x: &[f32], w: &[f32], ld: usize, z: &mut [f32])
}

/// `z [n] += Σ_k x[k] · w[k·ld .. k·ld + n]`.
#[inline(always)]
fn axpy_block_impl<const FMA: bool>(x: &[f32], w: &[f32], ld: usize, z: &mut [f32]) {
    let n = z.len();
    let mut k = 0;
    // Four rows per pass over z, to cut its loads and stores fourfold.
    while k + 4 <= x.len() {
        let r0 = &w[k * ld..][..n];
        let r1 = &w[(k + 1) * ld..][..n];
        let r2 = &w[(k + 2) * ld..][..n];
        let r3 = &w[(k + 3) * ld..][..n];
        let (a0, a1, a2, a3) = (x[k], x[k + 1], x[k + 2], x[k + 3]);
        for j in 0..n {
            let s = madd::<FMA>(a1, r1[j], a0 * r0[j]);
            let s = madd::<FMA>(a2, r2[j], s);
            let s = madd::<FMA>(a3, r3[j], s);
            z[j] += s;
        }
        k += 4;
    }
    while k < x.len() {
        let (row, a) = (&w[k * ld..][..n], x[k]);
        for j in 0..n {
            z[j] = madd::<FMA>(a, row[j], z[j]);
        }
        k += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny deterministic LCG (Knuth's MMIX constants) giving floats in [-1, 1).
    struct Lcg(u64);

    impl Lcg {
        fn next(&mut self) -> f32 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        }

        fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
            (0..n).map(|_| self.next() * scale).collect()
        }
    }

    fn sig64(x: f64) -> f64 {
        1.0 / (1.0 + (-x).exp())
    }

    /// Naive f64 forward: returns (hs, cs, activated gates).
    fn ref_forward(
        d: Dims,
        xp: &[f32],
        w: &[f32],
        h0: &[f32],
        c0: &[f32],
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let (tn, b, h) = (d.t, d.b, d.h);
        let g4 = 4 * h;
        let mut hs = vec![0.0; tn * b * h];
        let mut cs = vec![0.0; tn * b * h];
        let mut gs = vec![0.0; tn * b * g4];
        let mut hp: Vec<f64> = h0.iter().map(|&v| v as f64).collect();
        let mut cp: Vec<f64> = c0.iter().map(|&v| v as f64).collect();
        for t in 0..tn {
            for r in 0..b {
                let mut z = vec![0.0f64; g4];
                for (n, zn) in z.iter_mut().enumerate() {
                    *zn = xp[(t * b + r) * g4 + n] as f64;
                    for k in 0..h {
                        *zn += hp[r * h + k] * w[k * g4 + n] as f64;
                    }
                }
                for j in 0..h {
                    let i = sig64(z[j]);
                    let f = sig64(z[h + j]);
                    let g = z[2 * h + j].tanh();
                    let o = sig64(z[3 * h + j]);
                    let c = f * cp[r * h + j] + i * g;
                    let base = (t * b + r) * g4;
                    gs[base + j] = i;
                    gs[base + h + j] = f;
                    gs[base + 2 * h + j] = g;
                    gs[base + 3 * h + j] = o;
                    cs[(t * b + r) * h + j] = c;
                    hs[(t * b + r) * h + j] = o * c.tanh();
                }
            }
            hp.copy_from_slice(&hs[t * b * h..(t + 1) * b * h]);
            cp.copy_from_slice(&cs[t * b * h..(t + 1) * b * h]);
        }
        (hs, cs, gs)
    }

    /// Naive f64 backward from the f64 forward: returns (dxp, dw_hh, dh0, dc0).
    #[allow(clippy::too_many_arguments)]
    fn ref_backward(
        d: Dims,
        w: &[f32],
        h0: &[f32],
        c0: &[f32],
        hs: &[f64],
        cs: &[f64],
        gs: &[f64],
        dhs: &[f32],
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
        let (tn, b, h) = (d.t, d.b, d.h);
        let g4 = 4 * h;
        let mut dxp = vec![0.0; tn * b * g4];
        let mut dw = vec![0.0; h * g4];
        let mut dhn = vec![0.0f64; b * h];
        let mut dcn = vec![0.0f64; b * h];
        for t in (0..tn).rev() {
            let mut dh_prev = vec![0.0f64; b * h];
            for r in 0..b {
                let base = (t * b + r) * g4;
                let mut dz = vec![0.0f64; g4];
                for j in 0..h {
                    let (i, f, g, o) = (
                        gs[base + j],
                        gs[base + h + j],
                        gs[base + 2 * h + j],
                        gs[base + 3 * h + j],
                    );
                    let c = cs[(t * b + r) * h + j];
                    let cp = if t == 0 {
                        c0[r * h + j] as f64
                    } else {
                        cs[((t - 1) * b + r) * h + j]
                    };
                    let dh = dhs[(t * b + r) * h + j] as f64 + dhn[r * h + j];
                    let tc = c.tanh();
                    let dc = dh * o * (1.0 - tc * tc) + dcn[r * h + j];
                    dz[3 * h + j] = dh * tc * o * (1.0 - o);
                    dz[j] = dc * g * i * (1.0 - i);
                    dz[h + j] = dc * cp * f * (1.0 - f);
                    dz[2 * h + j] = dc * i * (1.0 - g * g);
                    dcn[r * h + j] = dc * f;
                }
                for k in 0..h {
                    let hp = if t == 0 {
                        h0[r * h + k] as f64
                    } else {
                        hs[((t - 1) * b + r) * h + k]
                    };
                    for n in 0..g4 {
                        dh_prev[r * h + k] += dz[n] * w[k * g4 + n] as f64;
                        dw[k * g4 + n] += hp * dz[n];
                    }
                }
                dxp[base..base + g4].copy_from_slice(&dz);
            }
            dhn = dh_prev;
        }
        (dxp, dw, dhn, dcn)
    }

    fn assert_close(name: &str, got: &[f32], want: &[f64], tol: f64) {
        assert_eq!(got.len(), want.len(), "{name}: length");
        for (k, (&g, &w)) in got.iter().zip(want).enumerate() {
            let err = (g as f64 - w).abs();
            assert!(
                err <= tol * (1.0 + w.abs()),
                "{name}[{k}]: got {g}, want {w}"
            );
        }
    }

    struct Case {
        d: Dims,
        xp: Vec<f32>,
        w: Vec<f32>,
        h0: Vec<f32>,
        c0: Vec<f32>,
        dhs: Vec<f32>,
    }

    fn case(d: Dims, seed: u64) -> Case {
        let mut rng = Lcg(seed);
        let (t, b, h) = (d.t, d.b, d.h);
        Case {
            d,
            xp: rng.vec(t * b * 4 * h, 2.0),
            w: rng.vec(h * 4 * h, 1.0 / (h as f32).sqrt()),
            h0: rng.vec(b * h, 0.9),
            c0: rng.vec(b * h, 1.5),
            dhs: rng.vec(t * b * h, 1.0),
        }
    }

    /// Runs the kernel forward and backward: (hs, cs, gates, dxp, dw_hh, dh0, dc0).
    #[allow(clippy::type_complexity)]
    fn run(
        c: &Case,
    ) -> (
        Vec<f32>,
        Vec<f32>,
        Vec<f32>,
        Vec<f32>,
        Vec<f32>,
        Vec<f32>,
        Vec<f32>,
    ) {
        let d = c.d;
        let (bh, bg) = (d.t * d.b * d.h, d.t * d.b * 4 * d.h);
        let (mut hs, mut cs, mut gs) = (vec![0.0; bh], vec![0.0; bh], c.xp.clone());
        assert_eq!(gs.len(), bg);
        lstm_forward(d, &mut gs, &c.w, &c.h0, &c.c0, &mut hs, &mut cs);
        let mut dxp = gs.clone();
        let mut dw = vec![f32::NAN; d.h * 4 * d.h];
        let mut dh0 = vec![f32::NAN; d.b * d.h];
        let mut dc0 = vec![f32::NAN; d.b * d.h];
        lstm_backward(
            d, &c.w, &c.h0, &c.c0, &hs, &cs, &mut dxp, &c.dhs, &mut dw, &mut dh0, &mut dc0,
        );
        (hs, cs, gs, dxp, dw, dh0, dc0)
    }

    #[test]
    fn fast_math_matches_f64() {
        let mut worst = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
        for k in 0..=400_000 {
            let x = -20.0 + 40.0 * k as f32 / 400_000.0;
            let (t, s) = ((x as f64).tanh(), sig64(x as f64));
            worst.0 = worst.0.max((tanh_fast::<false>(x) as f64 - t).abs());
            worst.1 = worst.1.max((tanh_fast::<true>(x) as f64 - t).abs());
            worst.2 = worst.2.max((sigmoid_fast::<false>(x) as f64 - s).abs());
            worst.3 = worst.3.max((sigmoid_fast::<true>(x) as f64 - s).abs());
        }
        eprintln!("fast math worst absolute errors: {worst:?}");
        assert!(worst.0 < 1e-6 && worst.1 < 1e-6, "tanh error {worst:?}");
        assert!(worst.2 < 1e-6 && worst.3 < 1e-6, "sigmoid error {worst:?}");
        assert!(tanh_fast::<false>(f32::NAN).is_nan() && sigmoid_fast::<true>(f32::NAN).is_nan());
        assert_eq!(tanh_fast::<true>(f32::INFINITY), tanh_fast::<true>(100.0));
        assert_eq!(tanh_fast::<true>(0.0), 0.0);
    }

    #[test]
    fn forward_and_backward_match_reference() {
        let mut seed = 1;
        for &t in &[1, 3, 7] {
            for &b in &[1, 2, 5] {
                for &h in &[1, 4, 9, 20] {
                    let c = case(Dims { t, b, h }, seed);
                    seed += 1;
                    let (hs, cs, gs, dxp, dw, dh0, dc0) = run(&c);
                    let (rhs, rcs, rgs) = ref_forward(c.d, &c.xp, &c.w, &c.h0, &c.c0);
                    let name = format!("t={t} b={b} h={h}");
                    assert_close(&format!("{name} hs"), &hs, &rhs, 1e-5);
                    assert_close(&format!("{name} cs"), &cs, &rcs, 1e-5);
                    assert_close(&format!("{name} gates"), &gs, &rgs, 1e-5);
                    let (rdxp, rdw, rdh0, rdc0) =
                        ref_backward(c.d, &c.w, &c.h0, &c.c0, &rhs, &rcs, &rgs, &c.dhs);
                    assert_close(&format!("{name} dxp"), &dxp, &rdxp, 1e-4);
                    assert_close(&format!("{name} dw_hh"), &dw, &rdw, 1e-4);
                    assert_close(&format!("{name} dh0"), &dh0, &rdh0, 1e-4);
                    assert_close(&format!("{name} dc0"), &dc0, &rdc0, 1e-4);
                }
            }
        }
    }

    #[test]
    fn large_parallel_shape_matches_reference() {
        // Big enough for the rayon split of the pointwise passes and a threaded gemm.
        let c = case(
            Dims {
                t: 2,
                b: 40,
                h: 450,
            },
            99,
        );
        let (hs, cs, gs, dxp, dw, dh0, dc0) = run(&c);
        let (rhs, rcs, rgs) = ref_forward(c.d, &c.xp, &c.w, &c.h0, &c.c0);
        assert_close("hs", &hs, &rhs, 1e-4);
        assert_close("cs", &cs, &rcs, 1e-4);
        let (rdxp, rdw, rdh0, rdc0) =
            ref_backward(c.d, &c.w, &c.h0, &c.c0, &rhs, &rcs, &rgs, &c.dhs);
        assert_close("gates", &gs, &rgs, 1e-4);
        assert_close("dxp", &dxp, &rdxp, 1e-4);
        assert_close("dw_hh", &dw, &rdw, 1e-3);
        assert_close("dh0", &dh0, &rdh0, 1e-4);
        assert_close("dc0", &dc0, &rdc0, 1e-4);
    }

    #[test]
    fn backward_matches_finite_differences() {
        let d = Dims { t: 3, b: 2, h: 3 };
        let c = case(d, 7);
        // L = Σ hs ⊙ dhs, so dL/dhs = dhs.
        let loss = |xp: &[f32], w: &[f32], h0: &[f32], c0: &[f32]| -> f64 {
            let (hs, _, _) = ref_forward(d, xp, w, h0, c0);
            hs.iter().zip(&c.dhs).map(|(&h, &g)| h * g as f64).sum()
        };
        let (_, _, _, dxp, dw, dh0, dc0) = run(&c);
        let eps = 1e-3f32;
        let check = |name: &str, which: usize, grad: &[f32]| {
            for k in 0..grad.len() {
                let mut ins = [c.xp.clone(), c.w.clone(), c.h0.clone(), c.c0.clone()];
                ins[which][k] += eps;
                let up = loss(&ins[0], &ins[1], &ins[2], &ins[3]);
                ins[which][k] -= 2.0 * eps;
                let down = loss(&ins[0], &ins[1], &ins[2], &ins[3]);
                let fd = (up - down) / (2.0 * eps as f64);
                let err = (grad[k] as f64 - fd).abs();
                assert!(
                    err <= 1e-3 * (1.0 + fd.abs()),
                    "{name}[{k}]: got {}, fd {fd}",
                    grad[k]
                );
            }
        };
        check("dxp", 0, &dxp);
        check("dw_hh", 1, &dw);
        check("dh0", 2, &dh0);
        check("dc0", 3, &dc0);
    }

    #[test]
    fn cell_equals_forward_at_batch_one() {
        for &h in &[1, 4, 9, 64, 300] {
            let c = case(Dims { t: 1, b: 1, h }, 40 + h as u64);
            let (mut hs, mut cs) = (vec![0.0; h], vec![0.0; h]);
            lstm_forward(c.d, &mut c.xp.clone(), &c.w, &c.h0, &c.c0, &mut hs, &mut cs);
            // z = xp + h0 · w_hh, summed in f64.
            let mut z: Vec<f32> = (0..4 * h)
                .map(|j| {
                    let dot: f64 = (0..h)
                        .map(|k| c.h0[k] as f64 * c.w[k * 4 * h + j] as f64)
                        .sum();
                    (c.xp[j] as f64 + dot) as f32
                })
                .collect();
            let (mut h_out, mut c_state) = (vec![0.0; h], c.c0.clone());
            lstm_cell(h, &mut z, &mut h_out, &mut c_state);
            let f64s = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
            assert_close(&format!("h, h={h}"), &h_out, &f64s(&hs), 1e-5);
            assert_close(&format!("c, h={h}"), &c_state, &f64s(&cs), 1e-5);
            let (rhs, rcs, rgs) = ref_forward(c.d, &c.xp, &c.w, &c.h0, &c.c0);
            assert_close("h vs reference", &h_out, &rhs, 1e-5);
            assert_close("c vs reference", &c_state, &rcs, 1e-5);
            assert_close("gates vs reference", &z, &rgs, 1e-5);
        }
    }

    #[test]
    fn every_instruction_set_agrees() {
        let h = 37;
        let mut rng = Lcg(5);
        let z0 = rng.vec(3 * 4 * h, 4.0);
        let c_prev = rng.vec(3 * h, 2.0);
        let w = rng.vec(h * 4 * h, 0.3);
        let levels: Vec<Simd> = {
            let mut v = vec![Simd::Base];
            #[cfg(target_arch = "x86_64")]
            {
                if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                    v.push(Simd::Avx2);
                }
                if simd_level() == Simd::Avx512 {
                    v.push(Simd::Avx512);
                }
            }
            v
        };
        let mut outs = Vec::new();
        for &s in &levels {
            let mut z = z0.clone();
            let (mut ho, mut co) = (vec![0.0; 3 * h], vec![0.0; 3 * h]);
            forward_rows(s, h, &mut z, &c_prev, &mut ho, &mut co);
            let mut dcn = c_prev.clone();
            let mut dz = z.clone();
            backward_rows(s, h, &co, &c_prev, &ho, &c_prev, &mut dcn, &mut dz);
            let mut acc = z0[..4 * h].to_vec();
            axpy_block(s, &c_prev[..h], &w, 4 * h, &mut acc);
            outs.push([z, ho, co, dcn, dz, acc].concat());
        }
        for (s, o) in levels.iter().zip(&outs) {
            for (k, (&a, &b)) in o.iter().zip(&outs[0]).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                    "{s:?}[{k}]: {a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn packed_products_match_a_plain_product() {
        let mut sets = vec![];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                sets.extend(MicroKernels::new(Simd::Avx2));
            }
            if simd_level() == Simd::Avx512 {
                sets.extend(MicroKernels::new(Simd::Avx512));
            }
        }
        let mut rng = Lcg(11);
        // Full and partial panels and column blocks, for both instruction sets' panel heights.
        for (rows, k, n) in [(7, 13, 37), (12, 5, 64), (2, 40, 130), (13, 64, 16)] {
            let (a, w) = (rng.vec(rows * k, 1.0), rng.vec(k * n, 1.0));
            let dst0 = rng.vec(rows * n, 1.0);
            let want = |acc: bool| -> Vec<f64> {
                (0..rows * n)
                    .map(|ij| {
                        let (i, j) = (ij / n, ij % n);
                        let dot: f64 = (0..k)
                            .map(|l| a[i * k + l] as f64 * w[l * n + j] as f64)
                            .sum();
                        dot + if acc { dst0[ij] as f64 } else { 0.0 }
                    })
                    .collect()
            };
            for &kernels in &sets {
                let packed = Packed::new(kernels, k, n, &w);
                for acc in [false, true] {
                    let mut dst = dst0.clone();
                    packed.matmul(&mut dst, acc, &a);
                    let name = format!("{rows}x{k}x{n} lanes {} acc {acc}", kernels.lanes);
                    assert_close(&name, &dst, &want(acc), 1e-4);
                }
            }
        }
    }

    #[test]
    fn empty_shapes_are_fine() {
        let d = Dims { t: 0, b: 2, h: 3 };
        let (w, h0, c0) = (vec![0.5; 36], vec![1.0; 6], vec![1.0; 6]);
        lstm_forward(d, &mut [], &w, &h0, &c0, &mut [], &mut []);
        let (mut dw, mut dh0, mut dc0) = (vec![1.0; 36], vec![1.0; 6], vec![1.0; 6]);
        lstm_backward(
            d,
            &w,
            &h0,
            &c0,
            &[],
            &[],
            &mut [],
            &[],
            &mut dw,
            &mut dh0,
            &mut dc0,
        );
        assert!(dw.iter().chain(&dh0).chain(&dc0).all(|&v| v == 0.0));
        let d = Dims { t: 2, b: 0, h: 3 };
        lstm_forward(d, &mut [], &w, &[], &[], &mut [], &mut []);
    }
}
