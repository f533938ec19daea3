//! The CPU backends (burn-flex, burn-ndarray): the sequence op on the plain-Rust kernels of
//! [`karnna_kernels`], read from and written back to the backend's tensors, and under
//! [`Matmul::Bf16`] the dense products too ([`karnna_kernels::dense_bf16`]).

use std::sync::Arc;

use burn::backend::{Flex, NdArray};
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::TensorData;

use super::{
    burn_dense, from_float, to_f32_vec, CellBackend, CellInputs, CellKernels, Matmul,
    MatmulPrecision,
};
use crate::Cell;
use karnna_kernels::{self as cpu, Dims};

/// What the CPU kernels keep between a sequence's forward and backward: the inputs and outputs
/// of [`cpu::forward`] that [`cpu::backward`] takes.
#[derive(Clone, Debug)]
pub struct NativeCache<B: Backend> {
    cell: Cell,
    dims: Dims,
    w_hh: Arc<Vec<f32>>,
    h0: Arc<Vec<f32>>,
    /// The LSTM's `c0` (empty for the other cells).
    c0: Arc<Vec<f32>>,
    hs: Arc<Vec<f32>>,
    /// The LSTM's `c_t`, the GRU's `hp_n` of every step (empty for the RNN).
    aux: Arc<Vec<f32>>,
    /// The activated gates (the RNN's scratch).
    gates: Arc<Vec<f32>>,
    /// The bf16 path of the products under [`Matmul::Bf16`].
    bf16: Option<cpu::Bf16Path>,
    device: B::Device,
}

fn read<B: Backend>(t: FloatTensor<B>) -> Vec<f32> {
    let n = burn::tensor::TensorMetadata::shape(&t).num_elements();
    to_f32_vec(from_float::<B, 1>(B::float_reshape(t, [n].into())))
}

fn write<B: Backend>(v: Vec<f32>, shape: &[usize], device: &B::Device) -> FloatTensor<B> {
    B::float_from_data(TensorData::new(v, shape.to_vec()), device)
}

/// Runs `cell`'s sequence on the CPU kernels: `hs [T, B, H]`, the LSTM's `c_T [B, H]`, and the
/// cache for [`native_backward`] when `keep`. Its products are bf16 under [`Matmul::Bf16`].
fn native_forward<B: Backend>(
    cell: Cell,
    inputs: CellInputs<FloatTensor<B>>,
    keep: bool,
    matmul: Matmul,
) -> (
    FloatTensor<B>,
    Option<FloatTensor<B>>,
    Option<NativeCache<B>>,
) {
    let shape = burn::tensor::TensorMetadata::shape(&inputs.xp);
    let d = Dims {
        t: shape[0],
        b: shape[1],
        h: shape[2] / cell.gates(),
    };
    let device = B::float_device(&inputs.xp);
    // xz: the input projections, turned into the gates in place.
    let CellInputs {
        xp: mut xz,
        w_hh,
        b_hh,
        h0,
        c0,
    } = inputs.map(read::<B>);
    let (b_hh, c0) = (b_hh.unwrap_or_default(), c0.unwrap_or_default());
    let tbh = d.t * d.b * d.h;
    let bf16 = (matmul == Matmul::Bf16).then(cpu::Bf16Path::detect);
    let mut hs = vec![0.0; tbh];
    let mut aux = vec![0.0; if cell == Cell::Rnn { 0 } else { tbh }];
    let io = cpu::Forward {
        xz: &mut xz,
        w_hh: &w_hh,
        b_hh: &b_hh,
        h0: &h0,
        c0: &c0,
        hs: &mut hs,
        aux: &mut aux,
        bf16,
    };
    cpu::forward(cell, d, io);
    let c_t = (cell == Cell::Lstm).then(|| {
        let last = (d.t - 1) * d.b * d.h..tbh;
        write::<B>(aux[last].to_vec(), &[d.b, d.h], &device)
    });
    let shape = [d.t, d.b, d.h];
    if !keep {
        return (write::<B>(hs, &shape, &device), c_t, None);
    }
    let hs_out = write::<B>(hs.clone(), &shape, &device);
    let cache = NativeCache {
        cell,
        dims: d,
        w_hh: Arc::new(w_hh),
        h0: Arc::new(h0),
        c0: Arc::new(c0),
        hs: Arc::new(hs),
        aux: Arc::new(aux),
        gates: Arc::new(xz),
        bf16,
        device,
    };
    (hs_out, c_t, Some(cache))
}

/// The backward of [`native_forward`] from `dL/dhs`: the gradient of every input.
fn native_backward<B: Backend>(
    cache: NativeCache<B>,
    dhs: FloatTensor<B>,
) -> CellInputs<FloatTensor<B>> {
    let (cell, d) = (cache.cell, cache.dims);
    let lstm = cell == Cell::Lstm;
    let gh = cell.gates() * d.h;
    let bh = d.b * d.h;
    let dhs = read::<B>(dhs);
    // The gates (or scratch) become dL/dxp in place (the cache is normally its only owner).
    let mut dxp = Arc::try_unwrap(cache.gates).unwrap_or_else(|g| g.to_vec());
    let mut dw = vec![0.0; d.h * gh];
    let mut db = vec![0.0; if lstm { 0 } else { gh }];
    let mut dh0 = vec![0.0; bh];
    let mut dc0 = vec![0.0; if lstm { bh } else { 0 }];
    let io = cpu::Backward {
        w_hh: &cache.w_hh,
        h0: &cache.h0,
        c0: &cache.c0,
        hs: &cache.hs,
        aux: &cache.aux,
        gz: &mut dxp,
        dhs: &dhs,
        dw_hh: &mut dw,
        db_hh: &mut db,
        dh0: &mut dh0,
        dc0: &mut dc0,
        bf16: cache.bf16,
    };
    cpu::backward(cell, d, io);
    let dev = &cache.device;
    CellInputs {
        xp: write::<B>(dxp, &[d.t, d.b, gh], dev),
        w_hh: write::<B>(dw, &[d.h, gh], dev),
        b_hh: (!lstm).then(|| write::<B>(db, &[gh], dev)),
        h0: write::<B>(dh0, &[d.b, d.h], dev),
        c0: lstm.then(|| write::<B>(dc0, &[d.b, d.h], dev)),
    }
}

/// `x [N, K] · w [K, M] (+ b [M])` in bf16 with f32 sums ([`cpu::dense_bf16`]), reading the
/// operands through `view` where it can see them in place, else through a row-major copy.
fn native_dense_bf16<B: Backend>(
    x: FloatTensor<B>,
    w: FloatTensor<B>,
    b: Option<FloatTensor<B>>,
    view: for<'a> fn(&'a FloatTensor<B>) -> Option<cpu::Strided<'a>>,
) -> FloatTensor<B> {
    let device = B::float_device(&x);
    let ([n, k], [_, m]) = (dims2::<B>(&x), dims2::<B>(&w));
    let mut out = match (view(&x), view(&w)) {
        (Some(xs), Some(ws)) => cpu::dense_bf16(xs, ws),
        _ => {
            let (x, w) = (read::<B>(x), read::<B>(w));
            let xs = cpu::Strided::with_strides(&x, (n, k), (k, 1)).expect("[n, k]");
            let ws = cpu::Strided::with_strides(&w, (k, m), (m, 1)).expect("[k, m]");
            cpu::dense_bf16(xs, ws)
        }
    };
    if let Some(b) = b {
        let b = read::<B>(b);
        for row in out.chunks_exact_mut(m.max(1)) {
            for (o, &v) in row.iter_mut().zip(&b) {
                *o += v;
            }
        }
    }
    write::<B>(out, &[n, m], &device)
}

/// A 2-D f32 burn-flex tensor's values in place: its storage read through its strides (a
/// transposed view included), without a copy.
fn flex_view(t: &FloatTensor<Flex>) -> Option<cpu::Strided<'_>> {
    let layout = t.layout();
    let (shape, strides) = (layout.shape(), layout.strides());
    if t.dtype() != burn::tensor::DType::F32 || shape.num_dims() != 2 {
        return None;
    }
    let stride = |i: usize| usize::try_from(strides[i]).ok();
    let data = t.storage::<f32>().get(layout.start_offset()..)?;
    cpu::Strided::with_strides(data, (shape[0], shape[1]), (stride(0)?, stride(1)?))
}

/// No view in place: burn-ndarray's tensors are read through a copy.
fn no_view(_: &FloatTensor<NdArray>) -> Option<cpu::Strided<'_>> {
    None
}

/// The shape of a 2-D tensor.
fn dims2<B: Backend>(t: &FloatTensor<B>) -> [usize; 2] {
    let shape = burn::tensor::TensorMetadata::shape(t);
    [shape[0], shape[1]]
}

macro_rules! native_backend {
    ($backend:ty, $view:expr) => {
        impl CellBackend for $backend {
            fn sequence(
                cell: Cell,
                inputs: CellInputs<FloatTensor<Self>>,
                matmul: Matmul,
            ) -> (FloatTensor<Self>, Option<FloatTensor<Self>>) {
                let (hs, c, _) = native_forward::<Self>(cell, inputs, false, matmul);
                (hs, c)
            }

            fn matmul_precision(_: &burn::tensor::Device<Self>, matmul: Matmul) -> MatmulPrecision {
                match matmul {
                    Matmul::Bf16 => MatmulPrecision::Bf16,
                    Matmul::Tf32 | Matmul::F32 => MatmulPrecision::F32,
                }
            }

            fn dense(
                x: FloatTensor<Self>,
                w: FloatTensor<Self>,
                b: Option<FloatTensor<Self>>,
                matmul: Matmul,
            ) -> FloatTensor<Self> {
                match matmul {
                    Matmul::Bf16 => native_dense_bf16::<Self>(x, w, b, $view),
                    Matmul::Tf32 | Matmul::F32 => burn_dense::<Self>(x, w, b),
                }
            }
        }

        impl CellKernels for $backend {
            type Cache = NativeCache<Self>;

            fn forward_train(
                cell: Cell,
                inputs: CellInputs<FloatTensor<Self>>,
                matmul: Matmul,
            ) -> (FloatTensor<Self>, Option<FloatTensor<Self>>, Self::Cache) {
                let (hs, c, cache) = native_forward::<Self>(cell, inputs, true, matmul);
                (hs, c, cache.expect("cache kept"))
            }

            fn backward(
                cache: Self::Cache,
                dhs: FloatTensor<Self>,
            ) -> CellInputs<FloatTensor<Self>> {
                native_backward::<Self>(cache, dhs)
            }
        }
    };
}

native_backend!(Flex, flex_view);
native_backend!(NdArray, no_view);
