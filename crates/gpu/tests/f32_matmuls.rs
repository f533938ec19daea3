//! `gpu_matmul = "f32"` on burn-wgpu (llvmpipe in CI): karnna's own f32 product against the
//! CPU's, and the checks of `karnna_gpu::check` with every product of the model in it.
//!
//! Its own test binary: [`force_f32_matmuls`] is process-wide, and the other GPU tests run
//! with Burn's products.
#![cfg(feature = "wgpu")]

use burn::backend::Flex;
use burn::tensor::{Tensor, TensorData};
use karnna_gpu::{check, wgpu};
use karnna_model::ops::{dense, force_f32_matmuls};
use karnna_model::{to_f32_vec, Cell, CellBackend, MatmulPrecision};
use rand::{Rng, SeedableRng};

/// The wgpu device with the f32 products on, or `None` (test skipped) outside CI when there is
/// no device.
fn device() -> Option<burn::backend::wgpu::WgpuDevice> {
    force_f32_matmuls(true);
    wgpu::test_device()
}

fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
}

#[test]
fn the_f32_product_is_the_cpus_for_any_shape_bias_and_transpose() {
    let Some(device) = device() else { return };
    type W = wgpu::Backend;
    assert_eq!(W::matmul_precision(&device), MatmulPrecision::F32);
    // Sizes that are not multiples of the 16x16 tiles, and one smaller than a tile.
    for (m, k, n) in [(37, 29, 45), (3, 5, 2), (16, 40, 16)] {
        let (a, b, bias) = (random(m * k, 1), random(k * n, 2), random(n, 3));
        for with_bias in [false, true] {
            let gpu = dense::<W>(
                Tensor::from_data(TensorData::new(a.clone(), [m, k]), &device),
                // A transposed view, made contiguous by the product.
                Tensor::<W, 2>::from_data(TensorData::new(b.clone(), [k, n]), &device)
                    .transpose()
                    .transpose(),
                with_bias.then(|| Tensor::from_data(TensorData::new(bias.clone(), [n]), &device)),
            );
            let cpu_device = Default::default();
            let cpu = Tensor::<Flex, 2>::from_data(TensorData::new(a.clone(), [m, k]), &cpu_device)
                .matmul(Tensor::from_data(
                    TensorData::new(b.clone(), [k, n]),
                    &cpu_device,
                ));
            let cpu = if with_bias {
                cpu + Tensor::<Flex, 1>::from_data(TensorData::new(bias.clone(), [n]), &cpu_device)
                    .unsqueeze_dim(0)
            } else {
                cpu
            };
            let (gpu, cpu) = (to_f32_vec(gpu), to_f32_vec(cpu));
            let worst = gpu
                .iter()
                .zip(&cpu)
                .map(|(g, c)| (g - c).abs())
                .fold(0.0, f32::max);
            // k terms of size below 1, summed in f32 in different orders.
            let bound = check::gamma(k + 1, f32::EPSILON / 2.0) * (k + 1) as f32 * 2.0;
            assert!(
                worst <= bound,
                "{m}x{k}x{n}, bias {with_bias}: {worst:e} > {bound:e}"
            );
        }
    }
}

#[test]
fn the_checks_pass_with_f32_products_on_wgpu() {
    let Some(device) = device() else { return };
    for cell in Cell::ALL {
        check::fused_op::<wgpu::Backend>(&device, cell).unwrap();
        let (cpu, gpu) = check::training::<wgpu::Backend>(&device, cell).unwrap();
        eprintln!("{cell}, f32 products: losses cpu {cpu:?}\nlosses wgpu {gpu:?}");
        check::stepping::<wgpu::Backend>(&device, cell).unwrap();
    }
}

/// Under autodiff the f32 product is a graph node of its own; its gradients against the
/// formulas, computed on the CPU: `dx = r·wᵀ`, `dw = xᵀ·r`, `db = Σ_rows r` for the loss
/// `Σ (x·w + b) ⊙ r`.
#[test]
fn the_f32_products_gradients_are_the_formulas() {
    let Some(device) = device() else { return };
    type A = burn::backend::Autodiff<wgpu::Backend>;
    let (m, k, n) = (7, 19, 5);
    let (x, w, b, r) = (
        random(m * k, 4),
        random(k * n, 5),
        random(n, 6),
        random(m * n, 7),
    );
    let leaf = |v: &[f32], shape: [usize; 2]| {
        Tensor::<A, 2>::from_data(TensorData::new(v.to_vec(), shape), &device).require_grad()
    };
    let (xt, wt) = (leaf(&x, [m, k]), leaf(&w, [k, n]));
    let bt = Tensor::<A, 1>::from_data(TensorData::new(b.clone(), [n]), &device).require_grad();
    let rt = Tensor::<A, 2>::from_data(TensorData::new(r.clone(), [m, n]), &device);
    let grads = (dense(xt.clone(), wt.clone(), Some(bt.clone())) * rt)
        .sum()
        .backward();
    let got = [
        to_f32_vec(xt.grad(&grads).expect("dx")),
        to_f32_vec(wt.grad(&grads).expect("dw")),
        to_f32_vec(bt.grad(&grads).expect("db")),
    ];
    let cpu = |v: &[f32], shape: [usize; 2]| {
        Tensor::<Flex, 2>::from_data(TensorData::new(v.to_vec(), shape), &Default::default())
    };
    let want = [
        to_f32_vec(cpu(&r, [m, n]).matmul(cpu(&w, [k, n]).transpose())),
        to_f32_vec(cpu(&x, [m, k]).transpose().matmul(cpu(&r, [m, n]))),
        to_f32_vec(cpu(&r, [m, n]).sum_dim(0)),
    ];
    for (name, (g, c)) in ["dx", "dw", "db"].iter().zip(got.iter().zip(&want)) {
        assert_eq!(g.len(), c.len(), "{name}");
        let worst = g
            .iter()
            .zip(c)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(worst < 1e-5, "{name}: {worst:e}");
    }
}
