//! A plain f32 matrix product on the GPU, for when the model's products must not use TF32
//! ([`crate::ops::Matmul::F32`]): Burn's matmul tries tensor cores first, which on a
//! CUDA card round f32 inputs to TF32.
//!
//! The kernel is the textbook tiled product: a cube computes a [`TILE`]x[`TILE`] block of the
//! output, one element a thread, walking the inner dimension one tile at a time through shared
//! memory, so each input element is read from memory once per cube that needs it. Each output
//! is one f32 sum in order of the inner index, with unfused multiply-adds where the runtime
//! keeps them apart. It is far slower than tensor cores; it is there for precision, not speed.

use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;

use super::{arg, empty};

/// Rows and columns of the output block a cube computes.
const TILE: usize = 16;

/// `out = a·b (+ bias)`: `a [M, K]`, `b [K, N]`, `bias [N]` (added when `with_bias`),
/// `out [M, N]`, all contiguous; cube `(x, y)` computes rows `y·TILE ..` and columns
/// `x·TILE ..` of `out`. Every read is guarded, so any `M`, `K`, `N` is in bounds.
#[cube(launch_unchecked)]
pub fn matmul_kernel(
    a: &Tensor<f32>,
    b: &Tensor<f32>,
    bias: &Tensor<f32>,
    out: &mut Tensor<f32>,
    #[comptime] with_bias: bool,
) {
    let (m, k, n) = (a.shape(0), a.shape(1), b.shape(1));
    let (ty, tx) = (UNIT_POS_Y as usize, UNIT_POS_X as usize);
    let row = CUBE_POS_Y as usize * TILE + ty;
    let col = CUBE_POS_X as usize * TILE + tx;
    let mut tile_a = SharedMemory::<f32>::new(TILE * TILE);
    let mut tile_b = SharedMemory::<f32>::new(TILE * TILE);
    let mut acc = 0.0;
    for t in 0..k.div_ceil(TILE) {
        let (ka, kb) = (t * TILE + tx, t * TILE + ty);
        let mut va = 0.0;
        if row < m && ka < k {
            va = a[row * k + ka];
        }
        let mut vb = 0.0;
        if kb < k && col < n {
            vb = b[kb * n + col];
        }
        tile_a[ty * TILE + tx] = va;
        tile_b[ty * TILE + tx] = vb;
        sync_cube();
        for i in 0..TILE {
            acc += tile_a[ty * TILE + i] * tile_b[i * TILE + tx];
        }
        sync_cube();
    }
    if row < m && col < n {
        if with_bias {
            acc += bias[col];
        }
        out[row * n + col] = acc;
    }
}

/// `a·b (+ bias)` in f32 ([`matmul_kernel`]); `a` and `b` may be views (transposes), which are
/// made contiguous first.
pub(super) fn matmul<R: CubeRuntime>(
    a: CubeTensor<R>,
    b: CubeTensor<R>,
    bias: Option<CubeTensor<R>>,
) -> CubeTensor<R> {
    let (a, b) = (into_contiguous(a), into_contiguous(b));
    let bias = bias.map(into_contiguous);
    let (m, n) = (a.meta.shape()[0], b.meta.shape()[1]);
    let out = empty(&a, &[m, n]);
    let count = CubeCount::new_2d(n.div_ceil(TILE) as u32, m.div_ceil(TILE) as u32);
    let dim = CubeDim::new_2d(TILE as u32, TILE as u32);
    // SAFETY: every read is guarded by its bounds and every write by the output's.
    unsafe {
        matmul_kernel::launch_unchecked::<R>(
            &a.client,
            count,
            dim,
            arg(&a),
            arg(&b),
            arg(bias.as_ref().unwrap_or(&a)),
            arg(&out),
            bias.is_some(),
        );
    }
    out
}
