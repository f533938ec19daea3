//! The CPU backends (burn-flex, burn-ndarray): the sequence op on the plain-Rust kernels of
//! [`crate::cpu`], read from and written back to the backend's tensors.

use std::sync::Arc;

use burn::backend::{Flex, NdArray};
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::TensorData;

use super::{from_float, to_f32_vec, CellBackend, CellInputs, CellKernels, GpuMatmul};
use crate::cpu::{self, Dims};
use crate::Cell;

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
/// cache for [`native_backward`] when `keep`.
fn native_forward<B: Backend>(
    cell: Cell,
    inputs: CellInputs<FloatTensor<B>>,
    keep: bool,
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

macro_rules! native_backend {
    ($backend:ty) => {
        impl CellBackend for $backend {
            fn sequence(
                cell: Cell,
                inputs: CellInputs<FloatTensor<Self>>,
                _: GpuMatmul,
            ) -> (FloatTensor<Self>, Option<FloatTensor<Self>>) {
                let (hs, c, _) = native_forward::<Self>(cell, inputs, false);
                (hs, c)
            }
        }

        impl CellKernels for $backend {
            type Cache = NativeCache<Self>;

            fn forward_train(
                cell: Cell,
                inputs: CellInputs<FloatTensor<Self>>,
                _: GpuMatmul,
            ) -> (FloatTensor<Self>, Option<FloatTensor<Self>>, Self::Cache) {
                let (hs, c, cache) = native_forward::<Self>(cell, inputs, true);
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

native_backend!(Flex);
native_backend!(NdArray);
